//! An in-memory [`Port`] that behaves like an AF_XDP socket in copy mode, for tests, the
//! simulated demo and benchmarks.
//!
//! Its "wire" side stands in for the kernel: frames a test [`MemoryPort::inject`]s wait in a
//! bounded inbox and are copied into frames from the fill queue when the engine receives —
//! with no fill frame they are dropped and counted, as the kernel does. Transmitted frames
//! are captured (or only counted, for benchmarks) and their frames come back through the
//! completion queue. All four queues are fixed-capacity rings allocated at construction, so
//! the steady state allocates nothing (captures aside, which only tests turn on).
use super::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, SegmentId};

/// A fixed-capacity FIFO ring.
#[derive(Clone, Debug)]
struct Ring<T> {
    buf: Box<[T]>,
    head: usize,
    len: usize,
}

impl<T: Copy + Default> Ring<T> {
    fn new(cap: usize) -> Self {
        Self {
            buf: vec![T::default(); cap.max(1)].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    fn room(&self) -> usize {
        self.buf.len() - self.len
    }

    fn push(&mut self, v: T) -> bool {
        if self.len == self.buf.len() {
            return false;
        }
        let i = (self.head + self.len) % self.buf.len();
        self.buf[i] = v;
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let v = self.buf[self.head];
        self.head = (self.head + 1) % self.buf.len();
        self.len -= 1;
        Some(v)
    }
}

/// Sizes and behaviour of a [`MemoryPort`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryPortConfig {
    /// Capacity of each of the fill, RX, TX and completion rings (AF_XDP's ring size).
    pub ring_size: usize,
    /// Frames the wire side can hold before the engine receives them.
    pub inbox_size: usize,
    /// Largest frame `inject` accepts (the memory's frame size); longer ones are dropped.
    pub max_frame: usize,
    /// Keep a copy of every transmitted frame for [`MemoryPort::take_sent`]. Off for
    /// benchmarks: then transmitted frames are only counted, and nothing is allocated.
    pub capture: bool,
    /// Frames the wire sends per `complete` call (`None`: all); a small value simulates a
    /// slow link so tests can fill the TX ring.
    pub wire_budget: Option<usize>,
    /// Frames the port keeps on its receive side (fill + RX rings), as an AF_XDP port's
    /// fill share: at most this many of the shared memory's frames are parked per port.
    pub fill_share: usize,
    /// The memory segment the port takes its fill frames from.
    pub segment: SegmentId,
}

impl Default for MemoryPortConfig {
    fn default() -> Self {
        Self {
            ring_size: 256,
            inbox_size: 1024,
            max_frame: 2048,
            capture: true,
            wire_budget: None,
            fill_share: 64,
            segment: 0,
        }
    }
}

/// What happened on a port's wire side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MemoryPortStats {
    /// Frames accepted by `inject`.
    pub injected: u64,
    /// Injected frames refused because the inbox was full or the frame too long.
    pub inbox_dropped: u64,
    /// Frames dropped on receive for want of a fill frame (the kernel's `rx_dropped`).
    pub rx_dropped: u64,
    /// Frames sent on the wire.
    pub sent_packets: u64,
    /// Bytes sent on the wire.
    pub sent_bytes: u64,
    /// `fill` calls that found no free frame while the port held less than its share.
    pub fill_starved: u64,
}

/// An in-memory port.
#[derive(Debug)]
pub struct MemoryPort {
    config: MemoryPortConfig,
    fill: Ring<u64>,
    rx: Ring<FrameDesc>,
    tx: Ring<FrameDesc>,
    completion: Ring<u64>,
    inbox: Box<[Vec<u8>]>,
    inbox_head: usize,
    inbox_len: usize,
    sent: Vec<Vec<u8>>,
    stats: MemoryPortStats,
}

impl MemoryPort {
    /// A port with its rings and inbox buffers allocated.
    pub fn new(config: MemoryPortConfig) -> Self {
        let inbox_size = config.inbox_size.max(1);
        Self {
            fill: Ring::new(config.ring_size),
            rx: Ring::new(config.ring_size),
            tx: Ring::new(config.ring_size),
            completion: Ring::new(config.ring_size),
            inbox: (0..inbox_size)
                .map(|_| Vec::with_capacity(config.max_frame))
                .collect(),
            inbox_head: 0,
            inbox_len: 0,
            sent: Vec::new(),
            stats: MemoryPortStats::default(),
            config,
        }
    }

    /// Puts a frame on the wire towards the dataplane. False (and counted) when the inbox is
    /// full or the frame longer than `max_frame`. Does not allocate.
    pub fn inject(&mut self, frame: &[u8]) -> bool {
        if self.inbox_len == self.inbox.len() || frame.len() > self.config.max_frame {
            self.stats.inbox_dropped += 1;
            return false;
        }
        let i = (self.inbox_head + self.inbox_len) % self.inbox.len();
        let b = &mut self.inbox[i];
        b.clear();
        b.extend_from_slice(frame);
        self.inbox_len += 1;
        self.stats.injected += 1;
        true
    }

    /// Frames injected but not yet received.
    pub fn inbox_len(&self) -> usize {
        self.inbox_len
    }

    /// Takes the frames transmitted so far (with `capture` on).
    pub fn take_sent(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.sent)
    }

    /// Wire-side statistics.
    pub fn stats(&self) -> MemoryPortStats {
        self.stats
    }

    /// The kernel's part of receiving: copy inbox frames into fill frames, onto the RX ring.
    fn deliver<M: FrameMemory>(&mut self, mem: &mut M) {
        while self.inbox_len > 0 && self.rx.room() > 0 {
            let i = self.inbox_head;
            self.inbox_head = (self.inbox_head + 1) % self.inbox.len();
            self.inbox_len -= 1;
            let Some(addr) = self.fill.pop() else {
                self.stats.rx_dropped += 1;
                continue;
            };
            let frame = &self.inbox[i];
            let dst = mem.bytes_mut(addr, frame.len());
            if dst.len() != frame.len() {
                // Longer than a frame slot: the kernel would drop it too. Keep the frame.
                self.stats.rx_dropped += 1;
                self.fill.push(addr);
                continue;
            }
            dst.copy_from_slice(frame);
            self.rx.push(FrameDesc {
                addr,
                len: frame.len() as u32,
            });
        }
    }
}

impl<M: FrameMemory> Port<M> for MemoryPort {
    fn fill(&mut self, _mem: &mut M, free: &mut FreeList) {
        let held = self.fill.len + self.rx.len;
        let want = self.config.fill_share.saturating_sub(held);
        for _ in 0..want.min(self.fill.room()) {
            let Some(addr) = free.pop_in(self.config.segment) else {
                self.stats.fill_starved += 1;
                break;
            };
            self.fill.push(addr);
        }
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        self.deliver(mem);
        while out.spare() > 0 {
            let Some(d) = self.rx.pop() else { break };
            if let Err(d) = out.push(d) {
                // Unreachable given the spare() check; keep the frame rather than lose it.
                self.rx.push(d);
                break;
            }
        }
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        let n = batch.len().min(self.tx.room());
        for d in &batch.as_slice()[..n] {
            if self.config.capture {
                self.sent.push(mem.bytes(d.addr, d.len as usize).to_vec());
            }
            self.tx.push(*d);
        }
        batch.consume_front(n);
    }

    fn complete(&mut self, free: &mut FreeList) {
        let budget = self.config.wire_budget.unwrap_or(usize::MAX);
        let mut sent = 0;
        while sent < budget && self.completion.room() > 0 {
            let Some(d) = self.tx.pop() else { break };
            self.stats.sent_packets += 1;
            self.stats.sent_bytes += u64::from(d.len);
            self.completion.push(d.addr);
            sent += 1;
        }
        while let Some(addr) = self.completion.pop() {
            free.push(addr);
        }
    }

    fn frames_held(&self) -> PortFrames {
        PortFrames {
            fill: self.fill.len,
            rx: self.rx.len,
            tx: self.tx.len,
            completion: self.completion.len,
        }
    }

    fn segment(&self) -> SegmentId {
        self.config.segment
    }
}

impl MemoryPort {
    /// Closes the port and hands back every frame it held (fill, RX, TX and completion
    /// queues): what a removed port returns to the pool.
    pub fn close(mut self) -> Vec<u64> {
        self.drain_frames()
    }

    /// Takes every frame out of the port's queues (for a port shared with a test thread,
    /// which cannot be consumed by [`MemoryPort::close`]).
    pub fn drain_frames(&mut self) -> Vec<u64> {
        let mut frames = Vec::with_capacity(Port::<super::HeapFrames>::frames_held(&self).total());
        frames.extend(std::iter::from_fn(|| self.fill.pop()));
        frames.extend(std::iter::from_fn(|| self.rx.pop().map(|d| d.addr)));
        frames.extend(std::iter::from_fn(|| self.tx.pop().map(|d| d.addr)));
        frames.extend(std::iter::from_fn(|| self.completion.pop()));
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::HeapFrames;

    #[test]
    fn frames_flow_through_and_are_accounted() {
        let mut mem = HeapFrames::new(8, 2048);
        let mut free = FreeList::full(8, 2048);
        let mut port = MemoryPort::new(MemoryPortConfig {
            ring_size: 4,
            ..Default::default()
        });
        Port::<HeapFrames>::fill(&mut port, &mut mem, &mut free);
        assert_eq!(free.len(), 4);
        for i in 0..6u8 {
            port.inject(&[i; 60]);
        }
        let mut batch = DescBatch::default();
        port.receive(&mut mem, &mut batch);
        assert_eq!(batch.len(), 4);
        assert_eq!(port.inbox_len(), 2, "a full RX ring holds the rest back");
        // The fill ring is empty now: the other two are dropped like the kernel does.
        port.receive(&mut mem, &mut batch);
        assert_eq!(batch.len(), 4);
        assert_eq!(port.stats().rx_dropped, 2);
        assert_eq!(mem.bytes(batch.as_slice()[1].addr, 60), &[1u8; 60][..]);
        port.transmit(&mut mem, &mut batch);
        assert!(batch.is_empty());
        assert_eq!(Port::<HeapFrames>::frames_held(&port).tx, 4);
        Port::<HeapFrames>::complete(&mut port, &mut free);
        assert_eq!(free.len(), 8);
        let sent = port.take_sent();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[3], vec![3u8; 60]);
    }

    #[test]
    fn full_inbox_and_oversized_frames_are_refused() {
        let mut port = MemoryPort::new(MemoryPortConfig {
            inbox_size: 1,
            max_frame: 100,
            ..Default::default()
        });
        assert!(port.inject(&[0; 60]));
        assert!(!port.inject(&[0; 60]));
        let mut port2 = MemoryPort::new(MemoryPortConfig {
            max_frame: 100,
            ..Default::default()
        });
        assert!(!port2.inject(&[0; 101]));
        assert_eq!(port.stats().inbox_dropped + port2.stats().inbox_dropped, 2);
    }
}
