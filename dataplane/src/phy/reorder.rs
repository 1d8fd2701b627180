//! A [`Port`] decorator that delivers what it receives out of order, in smoltcp's manner of
//! wrapping any device: for tests of everything that must not depend on arrival order
//! (fragments that come before their first, replies that overtake their requests).
//!
//! The shuffle is a seeded xorshift over each received batch, so a failing order is
//! reproducible from its seed.
use super::{DescBatch, FrameMemory, FreeList, Port, PortFrames, SegmentId};

/// Wraps `P`, shuffling the frames of every batch it receives.
pub struct Reorder<P> {
    inner: P,
    state: u64,
}

impl<P> Reorder<P> {
    /// Wraps `inner`; `seed` picks the orders (any value; 0 is replaced by 1).
    pub fn new(inner: P, seed: u64) -> Self {
        Self {
            inner,
            state: seed.max(1),
        }
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped port, mutably (to inject frames into an in-memory port).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

impl<M: FrameMemory, P: Port<M>> Port<M> for Reorder<P> {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        self.inner.fill(mem, free)
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        let start = out.len();
        self.inner.receive(mem, out);
        let n = out.len() - start;
        if n < 2 {
            return;
        }
        // Fisher–Yates over the frames this call added.
        for i in (1..n).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            out.as_mut_slice()[start..].swap(i, j);
        }
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        self.inner.transmit(mem, batch)
    }

    fn complete(&mut self, free: &mut FreeList) {
        self.inner.complete(free)
    }

    fn frames_held(&self) -> PortFrames {
        self.inner.frames_held()
    }

    fn segment(&self) -> SegmentId {
        self.inner.segment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::HeapFrames;
    use crate::phy::memory::{MemoryPort, MemoryPortConfig};

    #[test]
    fn a_batch_comes_out_shuffled_and_whole() {
        let mut mem = HeapFrames::new(64, 2048);
        let mut free = FreeList::full(64, 2048);
        let mut port = Reorder::new(MemoryPort::new(MemoryPortConfig::default()), 42);
        port.fill(&mut mem, &mut free);
        for i in 0..20u8 {
            assert!(port.inner_mut().inject(&[i; 60]));
        }
        let mut batch = DescBatch::default();
        port.receive(&mut mem, &mut batch);
        let firsts: Vec<u8> = batch
            .as_slice()
            .iter()
            .map(|d| mem.bytes(d.addr, 1)[0])
            .collect();
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<u8>>(), "every frame, once");
        assert_ne!(firsts, sorted, "not in arrival order");
    }
}
