//! A [`Port`] decorator that copies the frames a port sees to a capture started from another
//! thread: `bridgewall capture` on a running dataplane.
//!
//! In the running dataplane a port belongs to one worker thread, which alone calls its ring
//! operations, while captures are started and read on the control thread. [`Tap`] wraps the
//! worker's port and [`TapControl`], shared through an [`Arc`], is the control thread's
//! handle on it.
//!
//! # Cost on the hot path
//! A tap that is not armed costs one relaxed atomic load per `receive`/`transmit` call and
//! nothing else, so every port can carry one. An armed tap copies each frame into a buffer
//! preallocated by [`TapControl::arm`] and taken from a lock-free queue, then hands it back
//! through another: no allocation, lock or logging per frame. The worker reads the clock once
//! per call, not per frame.
//!
//! # Handing a capture to the worker
//! The armed state is one `u64`: 0 when no capture runs, otherwise the capture's generation.
//! `arm` first puts the new capture's buffers in a one-place mailbox, then publishes its
//! generation (release); the worker, seeing a generation it does not hold yet, takes the
//! capture from the mailbox (acquire fence) and from then on compares a single load against
//! the generation it holds. A capture the worker completes turns itself off with a
//! compare-and-swap on its own generation, so it can never turn off a newer one.
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

use super::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, SegmentId};
use crate::worker::WorkerPort;

/// Largest number of bytes kept of a frame: a larger snaplen is lowered to it, since no frame
/// of the frame memory is longer and a larger buffer would only waste memory.
pub const MAX_SNAPLEN: usize = 65_535;

/// Most memory one capture may preallocate (its buffers plus their queue places), so a
/// request cannot make the dataplane abort for want of memory.
pub const MAX_CAPTURE_BYTES: usize = 256 << 20;

/// Memory a capture needs per frame beyond the buffer itself: the buffer's place in the free
/// and the filled queue. Counted against [`MAX_CAPTURE_BYTES`] so a tiny snaplen cannot
/// request an enormous count.
const SLOT_OVERHEAD: usize =
    size_of::<Vec<u8>>() + size_of::<CapturedFrame>() + 2 * size_of::<usize>();

/// Which way a captured frame went, seen from the dataplane.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Received from the port: what the container (or the host, for the gateway) sent.
    In,
    /// Transmitted to the port: what the dataplane delivered to the container.
    Out,
}

impl Direction {
    /// `"in"` or `"out"`: the name the control API and its clients use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "in",
            Self::Out => "out",
        }
    }
}

/// One frame a tap copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedFrame {
    /// Received from the port or transmitted to it.
    pub direction: Direction,
    /// Wall-clock time of the receive or transmit call that saw the frame, ns since the epoch.
    pub at_unix_ns: u64,
    /// The frame's full length, which `data` may be shorter than (snaplen).
    pub orig_len: u32,
    /// The frame's first bytes, up to the capture's snaplen: the preallocated buffer itself,
    /// handed over rather than copied again.
    pub data: Vec<u8>,
}

/// Why a capture could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TapError {
    /// A capture already runs on this port: one at a time per port, since the worker keeps
    /// one capture's buffers.
    #[error("a capture is already running on this port")]
    Busy,
    /// A count or snaplen of 0 would capture nothing.
    #[error("a capture needs a count and a snaplen of at least 1")]
    Empty,
    /// The buffers would exceed [`MAX_CAPTURE_BYTES`].
    #[error(
        "{count} frames of {snaplen} bytes exceed the capture memory limit of {MAX_CAPTURE_BYTES} bytes"
    )]
    TooLarge {
        /// Frames asked for.
        count: usize,
        /// Bytes per frame asked for (after lowering to [`MAX_SNAPLEN`]).
        snaplen: usize,
    },
    /// The buffers could not be allocated.
    #[error("not enough memory for the capture buffers")]
    NoMemory,
    /// The port was removed (its tap dropped or closed): nothing would ever be captured.
    #[error("the port is gone")]
    Detached,
}

/// One capture: its buffers and what the worker reports about it.
struct Session {
    /// The generation that arms it (never 0).
    generation: u64,
    /// Frames to capture before it turns itself off.
    count: usize,
    /// Bytes kept of each frame; every buffer has this capacity.
    snaplen: usize,
    /// Empty buffers the worker fills.
    free: ArrayQueue<Vec<u8>>,
    /// Captured frames the control thread drains.
    filled: ArrayQueue<CapturedFrame>,
    /// Frames captured so far (written by the worker only).
    captured: AtomicU64,
    /// Frames seen while armed for which no buffer was free (written by the worker only).
    missed: AtomicU64,
}

/// The control thread's side of a capture, under [`TapControl`]'s lock.
#[derive(Default)]
struct ControlState {
    /// The current (or last) capture, kept for draining and counters.
    current: Option<Arc<Session>>,
    /// The last generation handed out.
    last_generation: u64,
    /// The tap is gone: arming would wait forever.
    detached: bool,
}

/// The control thread's handle on a [`Tap`]: starts and stops captures and collects what
/// they captured, while the worker thread that owns the port keeps running.
pub struct TapControl {
    /// Generation of the armed capture, 0 when none: the one word the hot path reads.
    state: AtomicU64,
    /// The newest capture, waiting for the worker to pick it up.
    mailbox: ArrayQueue<Arc<Session>>,
    /// Serialises the control thread's operations (never taken per frame).
    control: Mutex<ControlState>,
}

impl TapControl {
    fn new() -> Self {
        Self {
            state: AtomicU64::new(0),
            mailbox: ArrayQueue::new(1),
            control: Mutex::new(ControlState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        // The state stays consistent whatever panicked while holding it: every field is
        // assigned whole.
        self.control.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts capturing the next `count` frames of the port, keeping the first `snaplen`
    /// bytes of each (lowered to [`MAX_SNAPLEN`]). All buffers are allocated here, on the
    /// calling thread, so the worker never allocates. Frames a previous capture left
    /// undrained are dropped. The capture turns itself off after `count` frames
    /// ([`TapControl::is_armed`] turns false); [`TapControl::disarm`] stops it earlier.
    pub fn arm(&self, count: usize, snaplen: usize) -> Result<(), TapError> {
        if count == 0 || snaplen == 0 {
            return Err(TapError::Empty);
        }
        let snaplen = snaplen.min(MAX_SNAPLEN);
        let bytes = count.checked_mul(snaplen + SLOT_OVERHEAD);
        if bytes.is_none_or(|b| b > MAX_CAPTURE_BYTES) {
            return Err(TapError::TooLarge { count, snaplen });
        }
        // Cheap refusal before allocating; checked again under the lock.
        if self.is_armed() {
            return Err(TapError::Busy);
        }
        let free = ArrayQueue::new(count);
        for _ in 0..count {
            let mut slot = Vec::new();
            slot.try_reserve_exact(snaplen)
                .map_err(|_| TapError::NoMemory)?;
            // Cannot fail: the queue has room for `count`.
            let _ = free.push(slot);
        }
        let filled = ArrayQueue::new(count);

        let mut st = self.lock();
        if st.detached {
            return Err(TapError::Detached);
        }
        if self.state.load(Ordering::Acquire) != 0 {
            return Err(TapError::Busy);
        }
        st.last_generation += 1;
        let generation = st.last_generation;
        let session = Arc::new(Session {
            generation,
            count,
            snaplen,
            free,
            filled,
            captured: AtomicU64::new(0),
            missed: AtomicU64::new(0),
        });
        // Replaces a capture the worker never picked up (armed and disarmed in between).
        drop(self.mailbox.force_push(Arc::clone(&session)));
        // The previous capture, if the worker no longer holds it, is freed here.
        st.current = Some(session);
        // Publishes the mailbox's content with the generation.
        self.state.store(generation, Ordering::Release);
        Ok(())
    }

    /// Stops the capture. Frames it captured stay available to [`TapControl::drain`] until
    /// the next [`TapControl::arm`]; a frame the worker was copying as this ran may still
    /// arrive after it.
    pub fn disarm(&self) {
        let _st = self.lock();
        self.state.store(0, Ordering::Release);
    }

    /// Moves the frames captured so far into `out`, oldest first, and returns how many. Once
    /// [`TapControl::is_armed`] has returned false, one more drain gets every frame of a
    /// completed capture.
    pub fn drain(&self, out: &mut Vec<CapturedFrame>) -> usize {
        let st = self.lock();
        let Some(s) = &st.current else { return 0 };
        let before = out.len();
        out.extend(std::iter::from_fn(|| s.filled.pop()));
        out.len() - before
    }

    /// True while a capture runs: false before the first, after `count` frames were captured,
    /// after [`TapControl::disarm`] and once the port is gone.
    pub fn is_armed(&self) -> bool {
        self.state.load(Ordering::Acquire) != 0
    }

    /// True once the port is gone (its [`Tap`] dropped, closed or unwrapped), so a caller can
    /// tell a capture that will never complete.
    pub fn is_detached(&self) -> bool {
        self.lock().detached
    }

    /// Frames the current (or last) capture has captured so far.
    pub fn captured(&self) -> u64 {
        self.lock()
            .current
            .as_ref()
            .map_or(0, |s| s.captured.load(Ordering::Relaxed))
    }

    /// Frames the current (or last) capture saw but had no free buffer for.
    pub fn missed(&self) -> u64 {
        self.lock()
            .current
            .as_ref()
            .map_or(0, |s| s.missed.load(Ordering::Relaxed))
    }

    /// Marks the tap gone and stops its capture, under the lock so that no `arm` can slip in
    /// after.
    fn detach(&self) {
        let mut st = self.lock();
        st.detached = true;
        self.state.store(0, Ordering::Release);
    }
}

/// Detaches the tap's control when the tap goes away, however it goes: a field rather than a
/// `Drop` on [`Tap`] so that [`Tap::into_inner`] can still move the port out.
struct Detach(Arc<TapControl>);

impl Drop for Detach {
    fn drop(&mut self) {
        self.0.detach();
    }
}

/// Wraps a port so that its frames can be captured while a worker thread owns it; see the
/// [module documentation](self).
pub struct Tap<P> {
    inner: P,
    control: Detach,
    /// The capture the worker picked up last.
    session: Option<Arc<Session>>,
    /// Frames it still has to capture.
    remaining: usize,
    /// Its counters, kept here and published to the session by plain stores.
    captured: u64,
    missed: u64,
}

impl<P> Tap<P> {
    /// Wraps `inner`, not capturing until [`TapControl::arm`]. Take the control handle with
    /// [`Tap::control`] before handing the tap to its worker.
    pub fn new(inner: P) -> Self {
        Self {
            inner,
            control: Detach(Arc::new(TapControl::new())),
            session: None,
            remaining: 0,
            captured: 0,
            missed: 0,
        }
    }

    /// The handle through which the control thread starts, stops and reads captures.
    pub fn control(&self) -> Arc<TapControl> {
        Arc::clone(&self.control.0)
    }

    /// The wrapped port.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The wrapped port, mutably (to inject frames into an in-memory port).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }

    /// Unwraps the port; the control handle then reports the tap gone.
    pub fn into_inner(self) -> P {
        let Self { inner, .. } = self;
        inner
    }

    /// Makes the capture of `generation` the tap's current one, taking it from the mailbox
    /// if it is new; false when it is not there (yet).
    #[inline]
    fn adopt(&mut self, generation: u64) -> bool {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            return true;
        }
        // Pairs with the release store of `generation`: the mailbox push before it is seen.
        fence(Ordering::Acquire);
        while let Some(s) = self.control.0.mailbox.pop() {
            self.remaining = s.count;
            self.captured = 0;
            self.missed = 0;
            self.session = Some(s);
        }
        self.session
            .as_ref()
            .is_some_and(|s| s.generation == generation)
    }

    /// Copies `descs` (frames in `mem`) into the capture of `generation`; called only when
    /// a capture is armed.
    #[cold]
    fn capture<M: FrameMemory>(
        &mut self,
        generation: u64,
        direction: Direction,
        mem: &M,
        descs: &[FrameDesc],
    ) {
        if descs.is_empty() || !self.adopt(generation) {
            return;
        }
        let Some(s) = &self.session else { return };
        let at_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        for d in descs {
            if self.remaining == 0 {
                break;
            }
            let Some(mut slot) = s.free.pop() else {
                self.missed += 1;
                continue;
            };
            let bytes = mem.bytes(d.addr, d.len as usize);
            slot.clear();
            // Within the buffer's capacity: no allocation.
            slot.extend_from_slice(&bytes[..bytes.len().min(s.snaplen)]);
            let frame = CapturedFrame {
                direction,
                at_unix_ns,
                orig_len: d.len,
                data: slot,
            };
            match s.filled.push(frame) {
                Ok(()) => {
                    self.remaining -= 1;
                    self.captured += 1;
                }
                Err(frame) => {
                    // Cannot happen (as many places as buffers); keep the buffer.
                    let _ = s.free.push(frame.data);
                    self.missed += 1;
                }
            }
        }
        s.captured.store(self.captured, Ordering::Relaxed);
        s.missed.store(self.missed, Ordering::Relaxed);
        if self.remaining == 0 {
            // Release: the frames pushed above are seen by whoever sees the capture off.
            // Fails harmlessly when the control thread disarmed (and perhaps re-armed) since.
            let _ = self.control.0.state.compare_exchange(
                generation,
                0,
                Ordering::Release,
                Ordering::Relaxed,
            );
        }
    }
}

impl<M: FrameMemory, P: Port<M>> Port<M> for Tap<P> {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        self.inner.fill(mem, free)
    }

    #[inline]
    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        let start = out.len();
        self.inner.receive(mem, out);
        let generation = self.control.0.state.load(Ordering::Relaxed);
        if generation != 0 {
            let descs = out.as_slice().get(start..).unwrap_or(&[]);
            self.capture(generation, Direction::In, mem, descs);
        }
    }

    #[inline]
    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        let generation = self.control.0.state.load(Ordering::Relaxed);
        if generation == 0 {
            return self.inner.transmit(mem, batch);
        }
        // The port takes frames from the front; remember them to copy those it accepted
        // (their bytes stay in place until their completion).
        let mut queued = [FrameDesc::default(); DescBatch::CAPACITY];
        let n = batch.len();
        queued[..n].copy_from_slice(batch.as_slice());
        self.inner.transmit(mem, batch);
        let accepted = n.saturating_sub(batch.len());
        self.capture(generation, Direction::Out, mem, &queued[..accepted]);
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

impl<M: FrameMemory, P: WorkerPort<M>> WorkerPort<M> for Tap<P> {
    fn wait_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.inner.wait_fd()
    }

    fn needs_visit(&self) -> bool {
        self.inner.needs_visit()
    }

    fn starved(&self) -> u64 {
        self.inner.starved()
    }

    fn close(self) -> Vec<u64> {
        self.into_inner().close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::HeapFrames;
    use crate::phy::memory::{MemoryPort, MemoryPortConfig};

    struct Rig {
        mem: HeapFrames,
        free: FreeList,
        tap: Tap<MemoryPort>,
        control: Arc<TapControl>,
    }

    fn rig(config: MemoryPortConfig) -> Rig {
        let tap = Tap::new(MemoryPort::new(config));
        let control = tap.control();
        Rig {
            mem: HeapFrames::new(64, 2048),
            free: FreeList::full(64, 2048),
            tap,
            control,
        }
    }

    impl Rig {
        /// Injects `frames` and receives them through the tap.
        fn receive(&mut self, frames: &[&[u8]]) -> DescBatch {
            self.tap.fill(&mut self.mem, &mut self.free);
            for f in frames {
                assert!(self.tap.inner_mut().inject(f));
            }
            let mut batch = DescBatch::default();
            self.tap.receive(&mut self.mem, &mut batch);
            assert_eq!(batch.len(), frames.len());
            batch
        }

        fn drain(&self) -> Vec<CapturedFrame> {
            let mut out = Vec::new();
            self.control.drain(&mut out);
            out
        }
    }

    #[test]
    fn a_disarmed_tap_captures_nothing_and_passes_frames_through() {
        let mut r = rig(MemoryPortConfig::default());
        let mut batch = r.receive(&[&[1; 60], &[2; 60]]);
        r.tap.transmit(&mut r.mem, &mut batch);
        assert!(batch.is_empty());
        assert_eq!(
            r.tap.inner_mut().take_sent(),
            vec![vec![1; 60], vec![2; 60]]
        );
        assert!(!r.control.is_armed());
        assert!(r.drain().is_empty());
        assert_eq!((r.control.captured(), r.control.missed()), (0, 0));
    }

    #[test]
    fn an_armed_tap_captures_count_frames_then_disarms_itself() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(3, 2048).unwrap();
        assert!(r.control.is_armed());
        r.receive(&[&[1; 60], &[2; 61], &[3; 62], &[4; 63], &[5; 64]]);
        assert!(!r.control.is_armed(), "complete after 3 frames");
        let got = r.drain();
        assert_eq!(got.len(), 3);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.direction, Direction::In);
            assert_eq!(f.orig_len, 60 + i as u32);
            assert_eq!(f.data, vec![i as u8 + 1; 60 + i]);
            assert!(f.at_unix_ns > 0);
        }
        assert_eq!((r.control.captured(), r.control.missed()), (3, 0));
        // Nothing more once complete.
        r.receive(&[&[6; 60]]);
        assert!(r.drain().is_empty());
        assert_eq!(r.control.captured(), 3);
    }

    #[test]
    fn both_directions_are_captured_in_order() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(4, 2048).unwrap();
        let mut batch = r.receive(&[&[1; 60], &[2; 60]]);
        batch.as_mut_slice().swap(0, 1);
        r.tap.transmit(&mut r.mem, &mut batch);
        let got: Vec<(Direction, u8)> =
            r.drain().iter().map(|f| (f.direction, f.data[0])).collect();
        assert_eq!(
            got,
            [
                (Direction::In, 1),
                (Direction::In, 2),
                (Direction::Out, 2),
                (Direction::Out, 1)
            ]
        );
        assert!(!r.control.is_armed());
    }

    #[test]
    fn only_frames_the_port_accepted_for_transmit_are_captured() {
        let mut r = rig(MemoryPortConfig {
            ring_size: 2,
            fill_share: 2,
            ..Default::default()
        });
        let mut batch = r.receive(&[&[1; 60], &[2; 60]]);
        // A third frame, written straight into the memory.
        let addr = r.free.pop().unwrap();
        r.mem.bytes_mut(addr, 60).fill(3);
        batch.push(FrameDesc { addr, len: 60 }).unwrap();
        batch.as_mut_slice().rotate_right(1); // 3, 1, 2
        r.control.arm(10, 2048).unwrap();
        r.tap.transmit(&mut r.mem, &mut batch);
        assert_eq!(batch.len(), 1, "a TX ring of 2 takes two");
        let got: Vec<(Direction, u8)> =
            r.drain().iter().map(|f| (f.direction, f.data[0])).collect();
        assert_eq!(got, [(Direction::Out, 3), (Direction::Out, 1)]);
        assert!(r.control.is_armed(), "7 more to go");
        r.control.disarm();
        assert!(!r.control.is_armed());
    }

    #[test]
    fn frames_are_cut_to_the_snaplen_keeping_their_length() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(1, 16).unwrap();
        let frame: Vec<u8> = (0..100).collect();
        r.receive(&[&frame]);
        let got = r.drain();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].orig_len, 100);
        assert_eq!(got[0].data, &frame[..16]);
    }

    #[test]
    fn frames_without_a_free_buffer_are_missed() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(4, 2048).unwrap();
        // Take three of the four buffers away, as if they were still in use.
        let session = r.control.lock().current.clone().unwrap();
        for _ in 0..3 {
            session.free.pop().unwrap();
        }
        r.receive(&[&[1; 60], &[2; 60], &[3; 60]]);
        assert_eq!((r.control.captured(), r.control.missed()), (1, 2));
        assert!(r.control.is_armed(), "3 frames short of the count");
        assert_eq!(r.drain().len(), 1);
    }

    #[test]
    fn one_capture_at_a_time() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(2, 64).unwrap();
        assert_eq!(r.control.arm(2, 64), Err(TapError::Busy));
        r.control.disarm();
        r.control.arm(1, 64).unwrap();
        r.receive(&[&[7; 60], &[8; 60]]);
        // A completed capture frees the tap; its frames stay until the next arm.
        r.control.arm(1, 64).unwrap();
        assert!(
            r.drain().is_empty(),
            "the previous capture's frames are dropped"
        );
        r.receive(&[&[9; 60]]);
        let got = r.drain();
        assert_eq!((got.len(), got[0].data[0]), (1, 9));
        assert_eq!(r.control.captured(), 1);
    }

    #[test]
    fn frames_captured_before_a_disarm_can_still_be_drained() {
        let mut r = rig(MemoryPortConfig::default());
        r.control.arm(10, 64).unwrap();
        r.receive(&[&[1; 60], &[2; 60]]);
        r.control.disarm();
        r.receive(&[&[3; 60]]);
        let got: Vec<u8> = r.drain().iter().map(|f| f.data[0]).collect();
        assert_eq!(got, [1, 2]);
        assert_eq!(r.control.captured(), 2);
    }

    #[test]
    fn bad_requests_are_refused() {
        let r = rig(MemoryPortConfig::default());
        assert_eq!(r.control.arm(0, 64), Err(TapError::Empty));
        assert_eq!(r.control.arm(1, 0), Err(TapError::Empty));
        assert_eq!(
            r.control.arm(100_000, 65_535),
            Err(TapError::TooLarge {
                count: 100_000,
                snaplen: 65_535
            })
        );
        assert!(matches!(
            r.control.arm(usize::MAX, 1 << 20),
            Err(TapError::TooLarge {
                snaplen: MAX_SNAPLEN,
                ..
            })
        ));
        assert!(!r.control.is_armed());
    }

    #[test]
    fn a_gone_port_stops_its_capture() {
        let r = rig(MemoryPortConfig::default());
        r.control.arm(5, 64).unwrap();
        let port = r.tap.into_inner();
        assert!(!r.control.is_armed());
        assert!(r.control.is_detached());
        assert_eq!(r.control.arm(5, 64), Err(TapError::Detached));
        let frames = WorkerPort::<HeapFrames>::close(Tap::new(port));
        assert!(frames.is_empty());
    }

    /// The dataplane's arrangement: a worker thread owns the port, the test thread arms,
    /// waits for completion and drains.
    #[test]
    fn a_capture_armed_from_another_thread_completes() {
        fn worker_port<P: WorkerPort<HeapFrames>>(_: &P) {}
        let Rig {
            mut mem,
            mut free,
            mut tap,
            control,
        } = rig(MemoryPortConfig::default());
        worker_port(&tap);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let worker = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut i = 0u8;
                let mut batch = DescBatch::default();
                while !stop.load(Ordering::Relaxed) {
                    tap.fill(&mut mem, &mut free);
                    tap.inner_mut().inject(&[i; 60]);
                    i = i.wrapping_add(1);
                    tap.receive(&mut mem, &mut batch);
                    tap.transmit(&mut mem, &mut batch);
                    Port::<HeapFrames>::complete(&mut tap, &mut free);
                    std::thread::yield_now();
                }
                tap
            })
        };
        for round in 0..3 {
            control.arm(50, 64).unwrap();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while control.is_armed() {
                assert!(std::time::Instant::now() < deadline, "round {round} stuck");
                std::thread::yield_now();
            }
            let mut got = Vec::new();
            control.drain(&mut got);
            assert_eq!(got.len(), 50, "round {round}");
            assert_eq!(control.captured(), 50);
            let ins = got.iter().filter(|f| f.direction == Direction::In).count();
            assert!((24..=26).contains(&ins), "received then sent: {ins} in");
        }
        stop.store(true, Ordering::Relaxed);
        let tap = worker.join().unwrap();
        drop(tap);
        assert!(control.is_detached());
    }
}
