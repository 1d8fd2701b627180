//! A [`Port`] decorator that injects faults — loss, corruption, reordering and delay — in
//! the manner of smoltcp's `FaultInjector`: it wraps any port (an in-memory one in tests, an
//! AF_XDP one on a live host) and makes its link misbehave, reproducibly from a seed.
//!
//! Faults are configured per direction with [`Faults`]: on the receive side they act on
//! what the wire delivers before the engine sees it, on the transmit side on what the engine
//! sends before the wire carries it.
//!
//! * **drop** — the frame is lost. The decorator keeps its descriptor and hands it back to
//!   the free list at the next [`Port::complete`] or [`Port::fill`] call (the receive call
//!   has no free list), so a dropped frame is never leaked.
//! * **corrupt** — one byte at a random offset of the frame is XORed with a random non-zero
//!   value, in place in the frame memory (smoltcp flips one bit; a whole byte reaches more
//!   header states, e.g. an ethertype or a protocol number turning into another).
//! * **reorder** — every batch is shuffled (Fisher–Yates).
//! * **delay** — the frame is held back: a received frame is delivered by the
//!   `delay_calls`-th receive call after, a transmitted one is handed to the wrapped port by
//!   the `delay_calls`-th `fill` call after (the engine fills every port once per round).
//!
//! On transmit, the faults act on the batch before the wrapped port sees it; frames that port
//! then refuses (ring full) stay with the caller, as [`Port::transmit`] says, and meet the
//! faults again when they are offered next.
//!
//! Every frame held — delayed or awaiting its return to the free list — is reported by
//! [`Port::frames_held`] (delayed received frames as `rx`, delayed transmits as `tx`, dropped
//! frames as `completion`), so the frame-accounting invariant holds through the decorator.
//!
//! # Reproducibility and cost
//! One xorshift64 generator, seeded at construction, decides everything; a disabled fault
//! draws nothing, so enabling one fault does not change the decisions of a run without it,
//! and a decorator with every fault off is a pass-through. The hold queues are allocated at
//! construction with a fixed capacity: nothing is allocated, locked or logged per frame.
//! When a queue is full the fault is not injected (and counted as `unheld`).
use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

use super::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, SegmentId};
use crate::worker::WorkerPort;

/// The faults of one direction of a [`Lossy`] port. Chances are percentages (0–100).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Chance that a frame is lost.
    pub drop_pct: u8,
    /// Chance that one byte of a frame is corrupted.
    pub corrupt_pct: u8,
    /// Chance that a frame is held back for `delay_calls` calls.
    pub delay_pct: u8,
    /// How long a delayed frame is held: receive calls (receive side) or fill calls
    /// (transmit side). 0 turns delay off.
    pub delay_calls: u32,
    /// Shuffle every batch.
    pub reorder: bool,
}

impl Faults {
    /// No fault: the direction passes frames through untouched.
    pub const NONE: Faults = Faults {
        drop_pct: 0,
        corrupt_pct: 0,
        delay_pct: 0,
        delay_calls: 0,
        reorder: false,
    };

    /// Only reordering (what [`super::reorder::Reorder`] does).
    pub const REORDER: Faults = Faults {
        reorder: true,
        ..Faults::NONE
    };

    /// True when some fault may act on single frames (drop, corrupt or delay).
    pub fn touches_frames(&self) -> bool {
        self.drop_pct > 0 || self.corrupt_pct > 0 || (self.delay_pct > 0 && self.delay_calls > 0)
    }

    /// True when the direction injects no fault at all.
    pub fn is_none(&self) -> bool {
        !self.touches_frames() && !self.reorder
    }

    fn check(&self) {
        assert!(
            self.drop_pct <= 100 && self.corrupt_pct <= 100 && self.delay_pct <= 100,
            "fault chance out of range (0-100): {self:?}"
        );
    }
}

/// What a [`Lossy`] port did to the frames of one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Frames lost.
    pub dropped: u64,
    /// Frames corrupted.
    pub corrupted: u64,
    /// Frames held back.
    pub delayed: u64,
    /// Frames that left a shuffled batch at another position than they entered it.
    pub reordered: u64,
    /// Drops and delays not injected because the hold queue was full.
    pub unheld: u64,
}

/// The counters of both directions of a [`Lossy`] port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LossyCounters {
    /// Faults injected into received frames.
    pub rx: FaultCounters,
    /// Faults injected into transmitted frames.
    pub tx: FaultCounters,
}

/// A seeded xorshift64 generator (Marsaglia's 13/7/17 triple): reproducible, no state
/// beyond one word, good enough to pick faults.
#[derive(Clone, Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// True with `pct` percent chance; draws nothing when `pct` is 0.
    fn chance(&mut self, pct: u8) -> bool {
        pct > 0 && self.next() % 100 < u64::from(pct)
    }
}

/// Frames a [`Lossy`] port holds by default per queue.
pub const DEFAULT_HOLD: usize = 1024;

/// Wraps `P`, injecting the configured [`Faults`] into what it receives and transmits.
pub struct Lossy<P> {
    inner: P,
    rng: Rng,
    rx: Faults,
    tx: Faults,
    /// Received frames held back, with the receive call that delivers them.
    rx_held: VecDeque<(FrameDesc, u64)>,
    /// Transmitted frames held back, with the fill call that sends them.
    tx_held: VecDeque<(FrameDesc, u64)>,
    /// Dropped frames, returned to the free list at the next `complete` or `fill`.
    dropped: Vec<u64>,
    hold: usize,
    rx_calls: u64,
    fill_calls: u64,
    counters: LossyCounters,
}

impl<P> Lossy<P> {
    /// Wraps `inner` with every fault off; `seed` picks the faults once they are set (any
    /// value; 0 is replaced by 1).
    pub fn new(inner: P, seed: u64) -> Self {
        Self::with_hold(inner, seed, DEFAULT_HOLD)
    }

    /// [`Lossy::new`] with room to hold `hold` frames in each of its queues (delayed
    /// received, delayed transmitted, dropped). Allocates them now, never later.
    pub fn with_hold(inner: P, seed: u64, hold: usize) -> Self {
        Self {
            inner,
            rng: Rng::new(seed),
            rx: Faults::NONE,
            tx: Faults::NONE,
            rx_held: VecDeque::with_capacity(hold),
            tx_held: VecDeque::with_capacity(hold),
            dropped: Vec::with_capacity(hold),
            hold,
            rx_calls: 0,
            fill_calls: 0,
            counters: LossyCounters::default(),
        }
    }

    /// Sets the receive side's faults (builder form of [`Lossy::set_rx`]).
    pub fn with_rx(mut self, faults: Faults) -> Self {
        self.set_rx(faults);
        self
    }

    /// Sets the transmit side's faults (builder form of [`Lossy::set_tx`]).
    pub fn with_tx(mut self, faults: Faults) -> Self {
        self.set_tx(faults);
        self
    }

    /// Sets the faults of received frames. Frames already held stay held until due.
    ///
    /// # Panics
    /// When a chance is above 100.
    pub fn set_rx(&mut self, faults: Faults) {
        faults.check();
        self.rx = faults;
    }

    /// Sets the faults of transmitted frames. Frames already held stay held until due.
    ///
    /// # Panics
    /// When a chance is above 100.
    pub fn set_tx(&mut self, faults: Faults) {
        faults.check();
        self.tx = faults;
    }

    /// The receive side's faults.
    pub fn rx_faults(&self) -> Faults {
        self.rx
    }

    /// The transmit side's faults.
    pub fn tx_faults(&self) -> Faults {
        self.tx
    }

    /// What was injected so far.
    pub fn counters(&self) -> LossyCounters {
        self.counters
    }

    /// The frames the decorator itself holds (the wrapped port's not included).
    pub fn held(&self) -> PortFrames {
        PortFrames {
            fill: 0,
            rx: self.rx_held.len(),
            tx: self.tx_held.len(),
            completion: self.dropped.len(),
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

    /// Hands every frame the decorator holds back to `free`: delayed frames are lost, as
    /// on a link taken down. The wrapped port keeps its own.
    pub fn release_held(&mut self, free: &mut FreeList) {
        for (d, _) in self.rx_held.drain(..).chain(self.tx_held.drain(..)) {
            free.push(d.addr);
        }
        for a in self.dropped.drain(..) {
            free.push(a);
        }
    }

    fn return_dropped(&mut self, free: &mut FreeList) {
        for a in self.dropped.drain(..) {
            free.push(a);
        }
    }
}

/// What becomes of one frame.
enum Fate {
    Pass,
    Drop,
    Hold,
}

/// Decides the fate of `d` under `f`, corrupting it in `mem` if so drawn. Drops and holds
/// are only chosen when their queue has room.
fn judge<M: FrameMemory>(
    f: &Faults,
    rng: &mut Rng,
    c: &mut FaultCounters,
    mem: &mut M,
    d: FrameDesc,
    can_drop: bool,
    can_hold: bool,
) -> Fate {
    if rng.chance(f.drop_pct) {
        if can_drop {
            c.dropped += 1;
            return Fate::Drop;
        }
        c.unheld += 1;
    }
    if rng.chance(f.corrupt_pct) {
        let bytes = mem.bytes_mut(d.addr, d.len as usize);
        if !bytes.is_empty() {
            let at = (rng.next() % bytes.len() as u64) as usize;
            bytes[at] ^= (rng.next() % 255) as u8 + 1;
            c.corrupted += 1;
        }
    }
    if f.delay_calls > 0 && rng.chance(f.delay_pct) {
        if can_hold {
            c.delayed += 1;
            return Fate::Hold;
        }
        c.unheld += 1;
    }
    Fate::Pass
}

/// Keeps the frames of `batch[from..]` for which `keep` says so, in order, and the frames
/// before `from` untouched; the others leave the batch (their new owner is `keep`'s
/// business).
fn sift(batch: &mut DescBatch, from: usize, mut keep: impl FnMut(FrameDesc) -> bool) {
    let len = batch.len();
    let s = batch.as_mut_slice();
    let mut w = from;
    for j in from..len {
        let d = s[j];
        if keep(d) {
            s[w] = d;
            w += 1;
        }
    }
    let removed = len - w;
    if removed > 0 {
        // The removed slots are at the tail: bring them to the front and cut them off.
        s.rotate_right(removed);
        batch.consume_front(removed);
    }
}

/// Shuffles `batch[from..]`; returns how many frames changed position.
fn shuffle(batch: &mut DescBatch, from: usize, rng: &mut Rng) -> u64 {
    let s = &mut batch.as_mut_slice()[from..];
    let n = s.len();
    if n < 2 {
        return 0;
    }
    let mut before = [FrameDesc::default(); DescBatch::CAPACITY];
    before[..n].copy_from_slice(s);
    for i in (1..n).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        s.swap(i, j);
    }
    s.iter().zip(&before[..n]).filter(|(a, b)| a != b).count() as u64
}

impl<P> Lossy<P> {
    /// Hands the transmit-side frames that are due to the wrapped port, in order; those it
    /// has no room for wait for the next call.
    fn release_tx<M: FrameMemory>(&mut self, mem: &mut M)
    where
        P: Port<M>,
    {
        while self
            .tx_held
            .front()
            .is_some_and(|&(_, due)| due <= self.fill_calls)
        {
            let mut batch = DescBatch::default();
            while batch.spare() > 0 {
                match self.tx_held.front() {
                    Some(&(d, due)) if due <= self.fill_calls => {
                        self.tx_held.pop_front();
                        let _ = batch.push(d);
                    }
                    _ => break,
                }
            }
            self.inner.transmit(mem, &mut batch);
            if !batch.is_empty() {
                // Ring full: back to the head of the queue, in order (no allocation: the
                // places were just freed).
                for &d in batch.as_slice().iter().rev() {
                    self.tx_held.push_front((d, self.fill_calls));
                }
                return;
            }
        }
    }
}

impl<M: FrameMemory, P: Port<M>> Port<M> for Lossy<P> {
    fn fill(&mut self, mem: &mut M, free: &mut FreeList) {
        self.return_dropped(free);
        self.fill_calls += 1;
        self.release_tx(mem);
        self.inner.fill(mem, free)
    }

    fn receive(&mut self, mem: &mut M, out: &mut DescBatch) {
        let start = out.len();
        self.rx_calls += 1;
        while out.spare() > 0 {
            match self.rx_held.front() {
                Some(&(d, due)) if due <= self.rx_calls => {
                    self.rx_held.pop_front();
                    let _ = out.push(d);
                }
                _ => break,
            }
        }
        let fresh = out.len();
        self.inner.receive(mem, out);
        let f = self.rx;
        if f.touches_frames() && out.len() > fresh {
            let Self {
                rng,
                rx_held,
                dropped,
                hold,
                rx_calls,
                counters,
                ..
            } = self;
            let due = *rx_calls + u64::from(f.delay_calls);
            sift(out, fresh, |d| {
                let can_drop = dropped.len() < *hold;
                let can_hold = rx_held.len() < *hold;
                match judge(&f, rng, &mut counters.rx, mem, d, can_drop, can_hold) {
                    Fate::Pass => true,
                    Fate::Drop => {
                        dropped.push(d.addr);
                        false
                    }
                    Fate::Hold => {
                        rx_held.push_back((d, due));
                        false
                    }
                }
            });
        }
        if f.reorder {
            self.counters.rx.reordered += shuffle(out, start, &mut self.rng);
        }
    }

    fn transmit(&mut self, mem: &mut M, batch: &mut DescBatch) {
        self.release_tx(mem);
        let f = self.tx;
        if f.reorder {
            self.counters.tx.reordered += shuffle(batch, 0, &mut self.rng);
        }
        if f.touches_frames() {
            let Self {
                rng,
                tx_held,
                dropped,
                hold,
                fill_calls,
                counters,
                ..
            } = self;
            let due = *fill_calls + u64::from(f.delay_calls);
            sift(batch, 0, |d| {
                let can_drop = dropped.len() < *hold;
                let can_hold = tx_held.len() < *hold;
                match judge(&f, rng, &mut counters.tx, mem, d, can_drop, can_hold) {
                    Fate::Pass => true,
                    Fate::Drop => {
                        dropped.push(d.addr);
                        false
                    }
                    Fate::Hold => {
                        tx_held.push_back((d, due));
                        false
                    }
                }
            });
        }
        self.inner.transmit(mem, batch)
    }

    fn complete(&mut self, free: &mut FreeList) {
        self.inner.complete(free);
        self.return_dropped(free);
    }

    fn frames_held(&self) -> PortFrames {
        let inner = self.inner.frames_held();
        let own = self.held();
        PortFrames {
            fill: inner.fill,
            rx: inner.rx + own.rx,
            tx: inner.tx + own.tx,
            completion: inner.completion + own.completion,
        }
    }

    fn segment(&self) -> SegmentId {
        self.inner.segment()
    }
}

impl<M: FrameMemory, P: WorkerPort<M>> WorkerPort<M> for Lossy<P> {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.wait_fd()
    }

    fn needs_visit(&self) -> bool {
        self.inner.needs_visit()
            || !self.rx_held.is_empty()
            || !self.tx_held.is_empty()
            || !self.dropped.is_empty()
    }

    fn starved(&self) -> u64 {
        self.inner.starved()
    }

    fn close(self) -> Vec<u64> {
        let Self {
            inner,
            rx_held,
            tx_held,
            dropped,
            ..
        } = self;
        let mut frames = inner.close();
        frames.extend(rx_held.iter().chain(&tx_held).map(|(d, _)| d.addr));
        frames.extend(dropped);
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::HeapFrames;
    use crate::phy::memory::{MemoryPort, MemoryPortConfig};

    const FRAMES: usize = 256;

    struct Rig {
        mem: HeapFrames,
        free: FreeList,
        port: Lossy<MemoryPort>,
    }

    impl Rig {
        fn new(seed: u64, rx: Faults, tx: Faults) -> Self {
            Self::with_hold(seed, rx, tx, DEFAULT_HOLD)
        }

        fn with_hold(seed: u64, rx: Faults, tx: Faults, hold: usize) -> Self {
            let mut mem = HeapFrames::new(FRAMES, 2048);
            let mut free = FreeList::full(FRAMES, 2048);
            let inner = MemoryPort::new(MemoryPortConfig {
                fill_share: 128,
                ..MemoryPortConfig::default()
            });
            let mut port = Lossy::with_hold(inner, seed, hold).with_rx(rx).with_tx(tx);
            port.fill(&mut mem, &mut free);
            Self { mem, free, port }
        }

        /// Injects `n` frames numbered by their first byte.
        fn inject(&mut self, n: u8) {
            for i in 0..n {
                assert!(self.port.inner_mut().inject(&[i; 60]));
            }
        }

        fn receive(&mut self) -> DescBatch {
            let mut b = DescBatch::default();
            self.port.receive(&mut self.mem, &mut b);
            b
        }

        fn firsts(&self, b: &DescBatch) -> Vec<u8> {
            b.as_slice()
                .iter()
                .map(|d| self.mem.bytes(d.addr, 1)[0])
                .collect()
        }

        /// Free + held by the port + `in_hand` (a batch the test holds) = every frame.
        fn assert_accounted(&self, in_hand: usize) {
            assert_eq!(
                self.free.len() + Port::<HeapFrames>::frames_held(&self.port).total() + in_hand,
                FRAMES,
                "held {:?}",
                Port::<HeapFrames>::frames_held(&self.port)
            );
        }

        fn give_back(&mut self, b: &mut DescBatch) {
            for d in b.as_slice() {
                self.free.push(d.addr);
            }
            b.clear();
        }
    }

    #[test]
    fn without_faults_it_passes_everything_through_in_order() {
        let mut r = Rig::new(7, Faults::NONE, Faults::NONE);
        r.inject(40);
        let b = r.receive();
        assert_eq!(r.firsts(&b), (0..40).collect::<Vec<u8>>());
        assert_eq!(r.port.counters(), LossyCounters::default());
        r.assert_accounted(b.len());
    }

    #[test]
    fn dropped_frames_are_held_then_returned_to_the_free_list() {
        let rx = Faults {
            drop_pct: 100,
            ..Faults::NONE
        };
        let mut r = Rig::new(7, rx, Faults::NONE);
        r.inject(30);
        let b = r.receive();
        assert!(b.is_empty());
        assert_eq!(r.port.counters().rx.dropped, 30);
        assert_eq!(Port::<HeapFrames>::frames_held(&r.port).completion, 30);
        r.assert_accounted(0);
        Port::<HeapFrames>::complete(&mut r.port, &mut r.free);
        assert_eq!(r.port.held(), PortFrames::default());
        r.assert_accounted(0);
        // Also `fill`, the other call with a free list, returns them.
        r.inject(5);
        r.receive();
        r.port.fill(&mut r.mem, &mut r.free);
        assert_eq!(r.port.held().completion, 0);
        r.assert_accounted(0);
    }

    #[test]
    fn a_corrupted_frame_differs_in_exactly_one_byte() {
        let rx = Faults {
            corrupt_pct: 100,
            ..Faults::NONE
        };
        let mut r = Rig::new(99, rx, Faults::NONE);
        r.inject(50);
        let b = r.receive();
        assert_eq!(b.len(), 50);
        for (i, d) in b.as_slice().iter().enumerate() {
            let got = r.mem.bytes(d.addr, d.len as usize);
            let diff = got.iter().filter(|&&x| x != i as u8).count();
            assert_eq!(diff, 1, "frame {i}: {got:?}");
        }
        assert_eq!(r.port.counters().rx.corrupted, 50);
    }

    #[test]
    fn delayed_frames_come_later_and_stay_accounted() {
        let rx = Faults {
            delay_pct: 100,
            delay_calls: 3,
            ..Faults::NONE
        };
        let mut r = Rig::new(5, rx, Faults::NONE);
        r.inject(10);
        for call in 1..=3 {
            let b = r.receive();
            assert!(b.is_empty(), "call {call}");
            assert_eq!(Port::<HeapFrames>::frames_held(&r.port).rx, 10);
            r.assert_accounted(0);
        }
        let mut b = r.receive();
        assert_eq!(r.firsts(&b), (0..10).collect::<Vec<u8>>(), "in order");
        assert_eq!(r.port.counters().rx.delayed, 10);
        r.assert_accounted(b.len());
        r.give_back(&mut b);
        r.assert_accounted(0);
    }

    #[test]
    fn released_frames_respect_a_nearly_full_batch() {
        let rx = Faults {
            delay_pct: 100,
            delay_calls: 1,
            ..Faults::NONE
        };
        let mut r = Rig::new(5, rx, Faults::NONE);
        r.inject(10);
        assert!(r.receive().is_empty());
        let mut b = DescBatch::default();
        for _ in 0..DescBatch::CAPACITY - 4 {
            b.push(FrameDesc { addr: 0, len: 0 }).unwrap();
        }
        r.port.receive(&mut r.mem, &mut b);
        assert_eq!(b.len(), DescBatch::CAPACITY);
        assert_eq!(r.port.held().rx, 6, "the rest waits");
    }

    #[test]
    fn reordering_shuffles_a_batch_and_keeps_every_frame() {
        let mut r = Rig::new(42, Faults::REORDER, Faults::NONE);
        r.inject(20);
        let b = r.receive();
        let firsts = r.firsts(&b);
        let mut sorted = firsts.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..20).collect::<Vec<u8>>());
        assert_ne!(firsts, sorted);
        let moved = firsts
            .iter()
            .enumerate()
            .filter(|(i, f)| *i as u8 != **f)
            .count();
        assert_eq!(r.port.counters().rx.reordered, moved as u64);
    }

    #[test]
    fn the_same_seed_makes_the_same_faults() {
        let rx = Faults {
            drop_pct: 20,
            corrupt_pct: 20,
            delay_pct: 20,
            delay_calls: 1,
            reorder: true,
        };
        let run = |seed| {
            let mut r = Rig::new(seed, rx, Faults::NONE);
            r.inject(60);
            let mut out = Vec::new();
            for _ in 0..3 {
                let b = r.receive();
                out.extend(
                    b.as_slice()
                        .iter()
                        .map(|d| r.mem.bytes(d.addr, d.len as usize).to_vec()),
                );
            }
            (out, r.port.counters())
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        let (_, c) = run(3);
        assert!(c.rx.dropped > 0 && c.rx.corrupted > 0 && c.rx.delayed > 0);
    }

    #[test]
    fn transmit_faults_drop_corrupt_and_delay() {
        let tx = Faults {
            drop_pct: 30,
            corrupt_pct: 30,
            delay_pct: 30,
            delay_calls: 2,
            reorder: true,
        };
        let mut r = Rig::new(11, Faults::NONE, tx);
        r.inject(60);
        let mut b = r.receive();
        assert_eq!(b.len(), 60);
        r.port.transmit(&mut r.mem, &mut b);
        assert!(b.is_empty(), "every frame taken: sent, dropped or held");
        let c = r.port.counters().tx;
        assert!(c.dropped > 0 && c.delayed > 0 && c.corrupted > 0, "{c:?}");
        assert_eq!(r.port.held().tx as u64, c.delayed);
        r.assert_accounted(0);
        Port::<HeapFrames>::complete(&mut r.port, &mut r.free);
        r.assert_accounted(0);
        for _ in 0..2 {
            r.port.fill(&mut r.mem, &mut r.free);
        }
        assert_eq!(r.port.held().tx, 0, "released by the second fill");
        Port::<HeapFrames>::complete(&mut r.port, &mut r.free);
        r.assert_accounted(0);
        let sent = r.port.inner_mut().take_sent();
        assert_eq!(sent.len() as u64, 60 - c.dropped);
        assert_eq!(
            r.free.len() + Port::<HeapFrames>::frames_held(&r.port).total(),
            FRAMES
        );
    }

    #[test]
    fn a_full_hold_queue_lets_frames_through_and_counts_it() {
        let rx = Faults {
            drop_pct: 100,
            ..Faults::NONE
        };
        let mut r = Rig::with_hold(1, rx, Faults::NONE, 4);
        r.inject(10);
        let b = r.receive();
        assert_eq!(b.len(), 6);
        assert_eq!(r.port.counters().rx.dropped, 4);
        assert_eq!(r.port.counters().rx.unheld, 6);
        r.assert_accounted(b.len());
    }

    #[test]
    fn closing_returns_the_held_frames_too() {
        let rx = Faults {
            drop_pct: 50,
            delay_pct: 100,
            delay_calls: 5,
            ..Faults::NONE
        };
        let mut r = Rig::new(8, rx, Faults::NONE);
        r.inject(20);
        assert!(r.receive().is_empty());
        assert!(WorkerPort::<HeapFrames>::needs_visit(&r.port));
        let held = Port::<HeapFrames>::frames_held(&r.port).total();
        let Rig { free, port, .. } = r;
        let frames = WorkerPort::<HeapFrames>::close(port);
        assert_eq!(frames.len(), held);
        assert_eq!(free.len() + frames.len(), FRAMES);
    }

    #[test]
    fn release_held_frees_everything_the_decorator_holds() {
        let rx = Faults {
            drop_pct: 50,
            delay_pct: 100,
            delay_calls: 5,
            ..Faults::NONE
        };
        let mut r = Rig::new(8, rx, Faults::NONE);
        r.inject(20);
        r.receive();
        r.port.release_held(&mut r.free);
        assert_eq!(r.port.held(), PortFrames::default());
        r.assert_accounted(0);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_chance_above_100_is_refused() {
        let _ = Lossy::new((), 1).with_rx(Faults {
            drop_pct: 101,
            ..Faults::NONE
        });
    }
}
