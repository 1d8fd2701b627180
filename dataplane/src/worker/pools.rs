//! The shared pool of spare frames, one lock-free queue per memory segment.
//!
//! Why per segment: a port can only receive into and transmit from frames of its own UMEM
//! segment, so a worker short of frames for one segment must be able to take exactly those.
//! Segments are added at run time (a host grows past what the first segment holds), so the
//! queues sit in write-once slots read without a lock.
use std::sync::OnceLock;

use crossbeam::queue::ArrayQueue;

use crate::phy::{FreeList, SegmentId};

/// Most segments a dataplane can hold (the UMEM's limit too).
pub const MAX_SEGMENTS: usize = 1024;

/// Spare frames per segment, shared by every worker.
pub(super) struct SparePools {
    pools: Box<[OnceLock<ArrayQueue<u64>>]>,
}

impl SparePools {
    pub(super) fn new() -> Self {
        Self {
            pools: (0..MAX_SEGMENTS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Creates segment `seg`'s queue with room for all its `frames` (control path).
    /// False when `seg` is out of range or already exists.
    pub(super) fn add(&self, seg: SegmentId, frames: usize) -> bool {
        self.pools
            .get(usize::from(seg))
            .is_some_and(|slot| slot.set(ArrayQueue::new(frames.max(1))).is_ok())
    }

    /// Segment `seg`'s queue, if it exists.
    #[inline]
    pub(super) fn get(&self, seg: SegmentId) -> Option<&ArrayQueue<u64>> {
        self.pools.get(usize::from(seg))?.get()
    }

    /// Returns a frame to its segment's pool; false (the caller keeps it) if full.
    pub(super) fn give(&self, seg: SegmentId, addr: u64) -> bool {
        self.get(seg).is_some_and(|q| q.push(addr).is_ok())
    }

    /// Frames in every pool.
    pub(super) fn len(&self) -> usize {
        self.pools
            .iter()
            .filter_map(OnceLock::get)
            .map(ArrayQueue::len)
            .sum()
    }
}

/// How many free frames of each segment a worker keeps: its part of the segments its own
/// ports use (so their fill shares and the copies into them never wait), none of the others
/// (frames of other segments it frees go back to the pool at once).
#[derive(Default)]
pub(super) struct Targets {
    /// Per segment: how many of this worker's ports use it.
    users: Vec<usize>,
    /// Per segment: how many workers have ports on it.
    sharing: Vec<usize>,
    /// Per segment: its size.
    frames: Vec<usize>,
}

impl Targets {
    /// Learns segment `seg` of `frames` frames.
    pub(super) fn add_segment(&mut self, seg: SegmentId, frames: usize) {
        let i = usize::from(seg);
        if self.frames.len() <= i {
            self.users.resize(i + 1, 0);
            self.sharing.resize(i + 1, 0);
            self.frames.resize(i + 1, 0);
        }
        self.frames[i] = frames;
    }

    /// A port of this worker starts (`added`) or stops using segment `seg`.
    pub(super) fn local_port(&mut self, seg: SegmentId, added: bool) {
        if let Some(u) = self.users.get_mut(usize::from(seg)) {
            *u = if added { *u + 1 } else { u.saturating_sub(1) };
        }
    }

    /// `workers` workers now have ports on segment `seg`: each keeps that share of it.
    pub(super) fn set_sharing(&mut self, seg: SegmentId, workers: usize) {
        if let Some(s) = self.sharing.get_mut(usize::from(seg)) {
            *s = workers;
        }
    }

    /// Frames of `seg` to keep.
    #[inline]
    pub(super) fn keep(&self, seg: usize) -> usize {
        match self.users.get(seg) {
            Some(&u) if u > 0 => self.frames[seg] / self.sharing[seg].max(1),
            _ => 0,
        }
    }

    /// Number of segments known.
    pub(super) fn len(&self) -> usize {
        self.frames.len()
    }
}

/// Keeps `free` near its targets: surplus of a segment goes to the pool, shortage is taken
/// from it, with a little hysteresis so frames do not shuttle every round.
pub(super) fn rebalance(free: &mut FreeList, targets: &Targets, spare: &SparePools) {
    for seg in 0..targets.len() {
        let target = targets.keep(seg);
        let id = seg as SegmentId;
        let have = free.len_in(id);
        let slack = (target / 8).max(1);
        if have > target + slack || (target == 0 && have > 0) {
            for _ in target..have {
                let Some(a) = free.pop_in(id) else { break };
                if !spare.give(id, a) {
                    free.push(a);
                    break;
                }
            }
        } else if have + slack < target
            && let Some(q) = spare.get(id)
        {
            for _ in have..target {
                let Some(a) = q.pop() else { break };
                free.push(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phy::segment_base;

    #[test]
    fn frames_go_where_their_segment_is_used() {
        let spare = SparePools::new();
        assert!(spare.add(0, 8) && spare.add(1, 8));
        assert!(!spare.add(1, 8), "a segment is added once");
        for i in 0..8 {
            assert!(spare.give(1, segment_base(1) + i * 2048));
        }
        let mut free = FreeList::full(4, 2048);
        free.add_segment(1, 8);
        let mut targets = Targets::default();
        targets.add_segment(0, 4);
        targets.add_segment(1, 8);
        // No port of this worker uses segment 0: its frames go to the pool.
        targets.local_port(1, true);
        targets.set_sharing(1, 1);
        rebalance(&mut free, &targets, &spare);
        assert_eq!(free.len_in(0), 0);
        assert_eq!(free.len_in(1), 8, "the segment in use is taken whole");
        assert_eq!(spare.len(), 4);
        targets.set_sharing(1, 2);
        assert_eq!(targets.keep(1), 4, "two workers share the segment");
        targets.local_port(1, false);
        rebalance(&mut free, &targets, &spare);
        assert_eq!(free.len(), 0);
        assert_eq!(spare.len(), 12);
    }
}
