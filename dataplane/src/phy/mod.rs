//! The physical layer: ports that move frames, and the frame memory they share.
//!
//! The model is AF_XDP's, so the in-memory port and the AF_XDP port are interchangeable:
//! frames live in one shared memory region (the UMEM) cut into equal frames; a frame is named
//! by a [`FrameDesc`] (offset + length), and ports pass descriptors, not bytes. A frame
//! received on one port is transmitted on another by handing over its descriptor — no copy.
//! Every frame is at all times in exactly one place: the engine's [`FreeList`], a port's
//! fill/RX/TX/completion queues, or a batch in flight; [`Port::frames_held`] lets tests and
//! metrics prove that none is lost.
pub mod lossy;
pub mod memory;
pub mod pcap;
pub mod reorder;
pub mod tap;

/// Index of a dataplane port. The wire ABI carries it as a u16.
pub type PortId = u16;

/// One frame in the shared frame memory: its offset from the start of the memory and the
/// length of the packet data in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FrameDesc {
    /// Offset of the packet's first byte in the frame memory.
    pub addr: u64,
    /// Packet length in bytes.
    pub len: u32,
}

/// The memory frames live in. Implemented by a heap buffer for tests ([`HeapFrames`]) and by
/// the mmap'd UMEM for AF_XDP.
pub trait FrameMemory {
    /// Size of one frame slot (e.g. 2048); frame slot `i` starts at `i * frame_size`.
    fn frame_size(&self) -> usize;
    /// Number of frame slots.
    fn frame_count(&self) -> usize;
    /// The `len` bytes at `addr`. Callers pass descriptors they own; an out-of-range
    /// descriptor is a bug in a port and yields an empty slice rather than a panic.
    fn bytes(&self, addr: u64, len: usize) -> &[u8];
    /// Mutable form of [`FrameMemory::bytes`]: checksum completion and flood copies write here.
    fn bytes_mut(&mut self, addr: u64, len: usize) -> &mut [u8];
    /// Copies `len` bytes from `from` to `to` (two frames the caller owns, possibly in
    /// different segments) in one pass. False when this memory cannot (the caller then
    /// copies through a buffer of its own) or a range is out of bounds.
    fn copy_frame(&mut self, from: u64, to: u64, len: usize) -> bool {
        let _ = (from, to, len);
        false
    }
}

/// Frame memory on the heap: the UMEM of the in-memory ports and of benchmarks.
pub struct HeapFrames {
    buf: Vec<u8>,
    frame_size: usize,
}

impl HeapFrames {
    /// `count` frames of `frame_size` bytes each, zeroed.
    pub fn new(count: usize, frame_size: usize) -> Self {
        Self {
            buf: vec![0; count * frame_size],
            frame_size,
        }
    }
}

impl FrameMemory for HeapFrames {
    fn frame_size(&self) -> usize {
        self.frame_size
    }

    fn frame_count(&self) -> usize {
        self.buf.len() / self.frame_size.max(1)
    }

    fn bytes(&self, addr: u64, len: usize) -> &[u8] {
        let start = addr as usize;
        self.buf
            .get(start..start.saturating_add(len))
            .unwrap_or(&[])
    }

    fn bytes_mut(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let start = addr as usize;
        self.buf
            .get_mut(start..start.saturating_add(len))
            .unwrap_or(&mut [])
    }

    fn copy_frame(&mut self, from: u64, to: u64, len: usize) -> bool {
        let (from, to) = (from as usize, to as usize);
        let fits = |a: usize| a.checked_add(len).is_some_and(|e| e <= self.buf.len());
        if !fits(from) || !fits(to) {
            return false;
        }
        self.buf.copy_within(from..from + len, to);
        true
    }
}

/// A fixed-capacity batch of descriptors, allocated once: the unit the engine and the ports
/// exchange, so nothing is allocated per packet.
pub struct DescBatch {
    descs: [FrameDesc; Self::CAPACITY],
    len: usize,
}

impl Default for DescBatch {
    fn default() -> Self {
        Self {
            descs: [FrameDesc::default(); Self::CAPACITY],
            len: 0,
        }
    }
}

impl DescBatch {
    /// Largest batch: one policy batch, one AF_XDP ring burst.
    pub const CAPACITY: usize = 64;

    /// Number of descriptors held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Room left.
    pub fn spare(&self) -> usize {
        Self::CAPACITY - self.len
    }

    /// Appends `d`; returns it back when full so the caller keeps ownership of the frame.
    pub fn push(&mut self, d: FrameDesc) -> Result<(), FrameDesc> {
        if self.len == Self::CAPACITY {
            return Err(d);
        }
        self.descs[self.len] = d;
        self.len += 1;
        Ok(())
    }

    /// The held descriptors.
    pub fn as_slice(&self) -> &[FrameDesc] {
        &self.descs[..self.len]
    }

    /// The held descriptors, to reorder them (decorators, tests).
    pub fn as_mut_slice(&mut self) -> &mut [FrameDesc] {
        &mut self.descs[..self.len]
    }

    /// Removes the first `n` descriptors (those a port accepted), keeping the rest in order.
    pub fn consume_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.descs.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Empties the batch (the caller has taken ownership of every frame in it).
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Bits of a frame address below its segment number: a frame address is
/// `segment << SEGMENT_SHIFT | offset`, so one `u64` names the frame and the memory region
/// (UMEM segment) it lives in.
///
/// Why segments: the kernel gives every AF_XDP socket its own buffer pool with a ~128-byte
/// head for *every* frame of the UMEM it is bound to, so one UMEM shared by N ports costs
/// N × frames × 128 bytes of kernel memory — quadratic in the number of ports (2 MB per
/// port for 16 Ki frames, measured). Ports are therefore grouped into segments of bounded
/// size, each a UMEM of its own; frames move between ports of one segment as descriptors
/// and are copied once between segments.
pub const SEGMENT_SHIFT: u32 = 32;

/// Index of a frame memory segment.
pub type SegmentId = u16;

/// The segment a frame address belongs to.
#[inline(always)]
pub fn segment_of(addr: u64) -> SegmentId {
    (addr >> SEGMENT_SHIFT) as SegmentId
}

/// The address of the first byte of segment `seg`.
#[inline(always)]
pub fn segment_base(seg: SegmentId) -> u64 {
    u64::from(seg) << SEGMENT_SHIFT
}

/// Frame slots not held by any port or batch, one stack per memory segment, each allocated
/// with room for every frame of its segment when the segment is added, so returning a
/// frame never allocates.
pub struct FreeList {
    segments: Vec<Vec<u64>>,
    len: usize,
}

impl FreeList {
    /// A free list holding every slot of a one-segment memory of `count` frames of
    /// `frame_size` bytes.
    pub fn full(count: usize, frame_size: usize) -> Self {
        let mut free = Self::with_capacity(count);
        free.fill_segment(0, count, frame_size);
        free
    }

    /// An empty free list able to hold `capacity` frames of segment 0 (a worker's share of
    /// a one-segment memory).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            segments: vec![Vec::with_capacity(capacity)],
            len: 0,
        }
    }

    /// Makes room for `capacity` frames of segment `seg` (a segment added at run time).
    /// Allocates: call it on the control path, never per packet.
    pub fn add_segment(&mut self, seg: SegmentId, capacity: usize) {
        let i = usize::from(seg);
        if self.segments.len() <= i {
            self.segments.resize_with(i + 1, Vec::new);
        }
        let s = &mut self.segments[i];
        s.reserve(capacity.saturating_sub(s.capacity()));
    }

    /// Adds every slot of segment `seg` (`count` frames of `frame_size` bytes) as free.
    pub fn fill_segment(&mut self, seg: SegmentId, count: usize, frame_size: usize) {
        self.add_segment(seg, count);
        let base = segment_base(seg);
        let s = &mut self.segments[usize::from(seg)];
        s.extend(
            (0..count as u64)
                .rev()
                .map(|i| base + i * frame_size as u64),
        );
        self.len += count;
    }

    /// Takes a free frame slot (its start address) of segment 0, the only segment of a
    /// one-segment memory.
    pub fn pop(&mut self) -> Option<u64> {
        self.pop_in(0)
    }

    /// Takes a free frame slot of segment `seg`.
    #[inline]
    pub fn pop_in(&mut self, seg: SegmentId) -> Option<u64> {
        let a = self.segments.get_mut(usize::from(seg))?.pop()?;
        self.len -= 1;
        Some(a)
    }

    /// Returns a frame slot to its segment's stack. `addr` may point inside the slot
    /// (headroom); callers pass the slot start or any address within it, and ports
    /// normalise as they need.
    #[inline]
    pub fn push(&mut self, addr: u64) {
        let seg = usize::from(segment_of(addr));
        if seg >= self.segments.len() {
            // A segment this list was never told about: growing here would allocate on the
            // hot path, so the slot is a bug in the caller (counted as lost by the
            // frame-accounting invariant, which tests check).
            debug_assert!(false, "frame {addr:#x} of an unknown segment {seg}");
            return;
        }
        let s = &mut self.segments[seg];
        debug_assert!(
            s.len() < s.capacity(),
            "free list overflow: a frame was freed twice"
        );
        s.push(addr);
        self.len += 1;
    }

    /// Number of free frames, every segment together.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Number of free frames of segment `seg`.
    pub fn len_in(&self, seg: SegmentId) -> usize {
        self.segments.get(usize::from(seg)).map_or(0, Vec::len)
    }

    /// Number of segments this list has room for.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// True when no frame is free.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Where a port's frames are, for the frame-accounting invariant and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortFrames {
    /// Given to the receive side, not yet filled (AF_XDP fill ring + kernel).
    pub fill: usize,
    /// Received, not yet taken by the engine.
    pub rx: usize,
    /// Queued for transmit, not yet sent.
    pub tx: usize,
    /// Sent, not yet returned to the free list (completion ring).
    pub completion: usize,
}

impl PortFrames {
    /// Total frames the port holds.
    pub fn total(&self) -> usize {
        self.fill + self.rx + self.tx + self.completion
    }
}

/// A port of the dataplane: one container veth, the gateway, or an in-memory stand-in.
///
/// The four calls map one-to-one onto AF_XDP's four rings. None of them blocks; a port that
/// needs a syscall to make progress (a TX kick) does it inside `transmit`/`complete`.
pub trait Port<M: FrameMemory> {
    /// Hands free frames to the receive side, up to what the port wants (its fill ring's room).
    fn fill(&mut self, mem: &mut M, free: &mut FreeList);
    /// Moves received frames into `out`, up to `out.spare()`.
    fn receive(&mut self, mem: &mut M, out: &mut DescBatch);
    /// Queues `batch` for transmit; the frames the port accepted are removed from the front of
    /// `batch` (ring full leaves the rest, still owned by the caller).
    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch);
    /// Returns transmitted frames to `free`.
    fn complete(&mut self, free: &mut FreeList);
    /// Where this port's frames are.
    fn frames_held(&self) -> PortFrames;
    /// The memory segment this port's rings use: `fill` takes frames of it, and frames
    /// queued for `transmit` must be of it (the engine copies others in).
    fn segment(&self) -> SegmentId {
        0
    }
}

/// A borrowed port is a port: callers that keep their ports elsewhere hand the engine
/// `(id, &mut port)` pairs, while a worker that owns its ports hands them by value.
impl<M: FrameMemory, P: Port<M> + ?Sized> Port<M> for &mut P {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        (**self).fill(mem, free)
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        (**self).receive(mem, out)
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        (**self).transmit(mem, batch)
    }

    fn complete(&mut self, free: &mut FreeList) {
        (**self).complete(free)
    }

    fn frames_held(&self) -> PortFrames {
        (**self).frames_held()
    }

    fn segment(&self) -> SegmentId {
        (**self).segment()
    }
}
