//! A [`Port`] decorator that delivers what it receives out of order, in smoltcp's manner of
//! wrapping any device: for tests of everything that must not depend on arrival order
//! (fragments that come before their first, replies that overtake their requests).
//!
//! The shuffle is a seeded xorshift over each received batch, so a failing order is
//! reproducible from its seed. It is the reordering fault of [`Lossy`] alone.
use super::lossy::{Faults, Lossy};
use super::{DescBatch, FrameMemory, FreeList, Port, PortFrames, SegmentId};

/// Wraps `P`, shuffling the frames of every batch it receives.
pub struct Reorder<P>(Lossy<P>);

impl<P> Reorder<P> {
    /// Wraps `inner`; `seed` picks the orders (any value; 0 is replaced by 1).
    pub fn new(inner: P, seed: u64) -> Self {
        Self(Lossy::with_hold(inner, seed, 0).with_rx(Faults::REORDER))
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        self.0.inner()
    }

    /// The wrapped port, mutably (to inject frames into an in-memory port).
    pub fn inner_mut(&mut self) -> &mut P {
        self.0.inner_mut()
    }
}

impl<M: FrameMemory, P: Port<M>> Port<M> for Reorder<P> {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        self.0.fill(mem, free)
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        self.0.receive(mem, out)
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        self.0.transmit(mem, batch)
    }

    fn complete(&mut self, free: &mut FreeList) {
        self.0.complete(free)
    }

    fn frames_held(&self) -> PortFrames {
        self.0.frames_held()
    }

    fn segment(&self) -> SegmentId {
        self.0.segment()
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
