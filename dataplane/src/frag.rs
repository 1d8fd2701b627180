//! Fragment tracking: the later fragments of an IP datagram follow the verdict and the
//! egress of its first fragment, as Linux's conntrack (with `nf_defrag`) and Open vSwitch's
//! userspace `ipf` let them through, without reassembling the datagram.
//!
//! Why: only the first fragment carries the transport header, so a later fragment has no
//! ports to judge. Judging it alone either drops legitimate traffic (a link or published
//! port admits only some ports) or, worse, admits what the first fragment's ports would not.
//! Here a later fragment passes only when the first fragment of the same datagram — same
//! ingress port, addresses, protocol and identification — was admitted; it goes where the
//! first fragment went.
//!
//! The policy, written down:
//! - A first fragment is judged like any packet; its verdict (and egress) is recorded.
//! - A later fragment of an admitted datagram follows it; of a denied one it is dropped.
//! - A later fragment that arrives before its first is held (bounded: at most
//!   [`FragConfig::held`] frames in all) and released with the first fragment's verdict, or
//!   dropped when the datagram times out ([`FragConfig::timeout`], Linux's 30 s).
//! - Fairness: one ingress port may have at most a quarter of the table awaiting a first
//!   fragment, and hold at most a quarter of the held frames, so a container flooding
//!   orphan fragments cannot keep another's fragmented datagrams out.
//! - Overlapping fragments poison their datagram (RFC 5722): the fragment and every later one
//!   are dropped. So does a datagram of more than [`MAX_PIECES`] fragments.
//! - When the table or the hold is full, the fragment is dropped and counted; whole
//!   datagrams and established flows never depend on this table.
//! - A datagram whose pieces cover it entirely leaves the table at once.
//!
//! Shape: a fixed-capacity table of buckets allocated once, like the flow table; a key lives
//! in the bucket its hash picks (a full bucket refuses, counted). Held frames sit in a fixed
//! array. Time is an argument: the table performs no I/O.
use crate::phy::{FrameDesc, PortId};
use crate::switch::Egress;
use std::hash::BuildHasher;

/// Fragments one datagram may have (a 65,535-byte datagram at a 1,500-byte MTU has 45).
pub const MAX_PIECES: usize = 48;

/// Slots per bucket.
const BUCKET: usize = 8;

/// One port may use at most 1/FAIR_SHARE of the awaiting datagrams and of the held frames.
const FAIR_SHARE: usize = 4;

/// Sizes and timeout of a [`FragTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragConfig {
    /// Datagrams tracked at once (rounded up to a multiple of 8).
    pub entries: usize,
    /// Later fragments held while their first fragment is awaited, in all.
    pub held: usize,
    /// How long a datagram's verdict is kept (and its held fragments wait), in nanoseconds.
    pub timeout: u64,
}

impl Default for FragConfig {
    /// 1,024 datagrams, 256 held frames, 30 s (Linux's `ipfrag_time`).
    fn default() -> Self {
        Self {
            entries: 1024,
            held: 256,
            timeout: 30_000_000_000,
        }
    }
}

/// What ties the fragments of one datagram together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FragKey {
    /// Source address (16-byte form).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// The datagram's identification.
    pub id: u32,
    /// Transport protocol.
    pub proto: u8,
    /// The port the fragments come in on: fragments of another port never match.
    pub in_port: PortId,
}

/// The part of the datagram a fragment carries, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// First byte's offset in the datagram.
    pub offset: u32,
    /// Bytes carried.
    pub len: u32,
    /// More fragments follow (false on the last one).
    pub more: bool,
}

/// A datagram's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragVerdict {
    /// The first fragment was admitted and went to this egress.
    Admitted(Egress),
    /// The first fragment was dropped.
    Denied,
}

/// Why a fragment is dropped here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragDrop {
    /// Its datagram's first fragment was denied.
    Denied,
    /// It overlaps a fragment already seen, or its datagram has too many pieces.
    Overlap,
    /// No room in the table (or, for a fragment to hold, in the hold).
    Full,
}

/// What to do with a later fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaterOutcome {
    /// Its datagram was admitted: send it where the first fragment went.
    Forward(Egress),
    /// Held until its first fragment arrives (the table owns the frame now).
    Held,
    /// Drop it.
    Drop(FragDrop),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Later fragments seen, first fragment not yet.
    Awaiting,
    Decided(FragVerdict),
    /// Overlapping or too many pieces: everything of this datagram is dropped.
    Poisoned,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FragKey,
    state: State,
    expires: u64,
    pieces: [(u32, u32); MAX_PIECES],
    count: u8,
    /// The datagram's length, once its last fragment was seen.
    total: Option<u32>,
}

const FREE: Entry = Entry {
    key: FragKey {
        src: [0; 16],
        dst: [0; 16],
        id: 0,
        proto: 0,
        in_port: 0,
    },
    state: State::Free,
    expires: 0,
    pieces: [(0, 0); MAX_PIECES],
    count: 0,
    total: None,
};

#[derive(Clone, Copy, Debug)]
struct Held {
    desc: FrameDesc,
    entry: u32,
}

/// The fragment table of one engine.
pub struct FragTable {
    entries: Box<[Entry]>,
    held: Box<[Option<Held>]>,
    held_len: usize,
    live: usize,
    config: FragConfig,
    hasher: std::collections::hash_map::RandomState,
    sweep_hand: usize,
}

impl FragTable {
    /// A table sized by `config`, all allocated now. Keys are hashed with a random seed so
    /// a container cannot aim its datagrams at one bucket.
    pub fn new(config: FragConfig) -> Self {
        let n = config.entries.max(BUCKET).div_ceil(BUCKET) * BUCKET;
        Self {
            entries: vec![FREE; n].into_boxed_slice(),
            held: vec![None; config.held].into_boxed_slice(),
            held_len: 0,
            live: 0,
            config,
            hasher: std::collections::hash_map::RandomState::new(),
            sweep_hand: 0,
        }
    }

    /// Datagrams tracked now.
    pub fn len(&self) -> usize {
        self.live
    }

    /// True when no datagram is tracked.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// True when the datagram of `key` is tracked (its first fragment decided, or later
    /// fragments awaiting it).
    pub fn contains(&self, key: &FragKey) -> bool {
        let b = self.bucket(key);
        self.entries[b..b + BUCKET]
            .iter()
            .any(|e| e.state != State::Free && e.key == *key)
    }

    /// Frames held now (part of the frame-accounting invariant).
    pub fn held(&self) -> usize {
        self.held_len
    }

    /// Datagrams of ingress port `port` awaiting their first fragment. A scan, only on the
    /// path of a later fragment that starts a new datagram (an orphan, so cheap enough).
    fn awaiting_of(&self, port: PortId) -> usize {
        self.entries
            .iter()
            .filter(|e| e.state == State::Awaiting && e.key.in_port == port)
            .count()
    }

    /// Frames held for datagrams of ingress port `port`.
    fn held_of(&self, port: PortId) -> usize {
        self.held
            .iter()
            .flatten()
            .filter(|h| self.entries[h.entry as usize].key.in_port == port)
            .count()
    }

    fn bucket(&self, k: &FragKey) -> usize {
        let h = self
            .hasher
            .hash_one((k.src, k.dst, k.id, k.proto, k.in_port));
        (h as usize % (self.entries.len() / BUCKET)) * BUCKET
    }

    /// The slot of `k`, existing or (with `create`) new. `None`: absent, or its bucket full.
    fn slot(&mut self, k: &FragKey, now: u64, create: bool) -> Option<usize> {
        let b = self.bucket(k);
        let mut free = None;
        for i in b..b + BUCKET {
            let e = &self.entries[i];
            if e.state == State::Free {
                free = free.or(Some(i));
            } else if e.key == *k {
                return Some(i);
            }
        }
        let i = free.filter(|_| create)?;
        self.entries[i] = Entry {
            key: *k,
            state: State::Awaiting,
            expires: now.saturating_add(self.config.timeout),
            ..FREE
        };
        self.live += 1;
        Some(i)
    }

    /// Records `piece` in entry `i`; false (and the datagram poisoned) when it overlaps a
    /// piece already seen or the datagram has too many pieces.
    fn add_piece(&mut self, i: usize, piece: Piece) -> bool {
        let e = &mut self.entries[i];
        let (start, end) = (piece.offset, piece.offset.saturating_add(piece.len));
        let n = usize::from(e.count);
        let overlaps = e.pieces[..n].iter().any(|&(s, t)| start < t && s < end);
        if overlaps || n == MAX_PIECES {
            e.state = State::Poisoned;
            return false;
        }
        e.pieces[n] = (start, end);
        e.count += 1;
        if !piece.more {
            e.total = Some(end);
        }
        true
    }

    /// True when the pieces of entry `i` cover the whole datagram.
    fn complete(&self, i: usize) -> bool {
        let e = &self.entries[i];
        let Some(total) = e.total else {
            return false;
        };
        let covered: u64 = e.pieces[..usize::from(e.count)]
            .iter()
            .map(|&(s, t)| u64::from(t - s))
            .sum();
        covered == u64::from(total)
    }

    fn free_entry(&mut self, i: usize) {
        if self.entries[i].state != State::Free {
            self.entries[i].state = State::Free;
            self.live -= 1;
        }
    }

    /// A first fragment was decided. Records its piece and verdict, then hands every later
    /// fragment held for it to `release` with what to do with it. Returns false when the
    /// first fragment itself must be dropped although admitted (it overlaps, or no room
    /// for its datagram — later fragments could then never follow it).
    pub fn first(
        &mut self,
        key: &FragKey,
        piece: Piece,
        verdict: FragVerdict,
        now: u64,
        mut release: impl FnMut(FrameDesc, LaterOutcome),
    ) -> bool {
        let Some(i) = self.slot(key, now, true) else {
            return false;
        };
        let ok = self.add_piece(i, piece);
        if ok {
            self.entries[i].state = State::Decided(verdict);
        }
        let outcome = match self.entries[i].state {
            State::Decided(FragVerdict::Admitted(e)) => LaterOutcome::Forward(e),
            State::Decided(FragVerdict::Denied) => LaterOutcome::Drop(FragDrop::Denied),
            _ => LaterOutcome::Drop(FragDrop::Overlap),
        };
        for slot in self.held.iter_mut() {
            if let Some(h) = *slot
                && h.entry as usize == i
            {
                *slot = None;
                self.held_len -= 1;
                release(h.desc, outcome);
            }
        }
        if self.complete(i) {
            self.free_entry(i);
        }
        ok
    }

    /// What to do with a later fragment `desc` of the datagram `key`. On
    /// [`LaterOutcome::Held`] the table keeps the frame until the first fragment or the
    /// timeout.
    pub fn later(
        &mut self,
        key: &FragKey,
        piece: Piece,
        desc: FrameDesc,
        now: u64,
    ) -> LaterOutcome {
        // A new datagram awaiting its first fragment: within the port's share only.
        if self.slot(key, now, false).is_none()
            && self.awaiting_of(key.in_port) >= self.entries.len() / FAIR_SHARE
        {
            return LaterOutcome::Drop(FragDrop::Full);
        }
        let Some(i) = self.slot(key, now, true) else {
            return LaterOutcome::Drop(FragDrop::Full);
        };
        match self.entries[i].state {
            State::Poisoned => return LaterOutcome::Drop(FragDrop::Overlap),
            State::Decided(FragVerdict::Denied) => {
                return LaterOutcome::Drop(FragDrop::Denied);
            }
            _ => {}
        }
        if self.entries[i].state == State::Awaiting
            && (self.held_len == self.held.len()
                || self.held_of(key.in_port) >= (self.held.len() / FAIR_SHARE).max(1))
        {
            return LaterOutcome::Drop(FragDrop::Full);
        }
        if !self.add_piece(i, piece) {
            return LaterOutcome::Drop(FragDrop::Overlap);
        }
        match self.entries[i].state {
            State::Decided(FragVerdict::Admitted(e)) => {
                if self.complete(i) {
                    self.free_entry(i);
                }
                LaterOutcome::Forward(e)
            }
            _ => {
                if let Some(slot) = self.held.iter_mut().find(|s| s.is_none()) {
                    *slot = Some(Held {
                        desc,
                        entry: i as u32,
                    });
                    self.held_len += 1;
                }
                LaterOutcome::Held
            }
        }
    }

    /// Frees up to `budget` expired datagrams, handing their held fragments (which never met
    /// their first) to `orphan`, with the port they came in on (drops are counted by it).
    pub fn sweep(&mut self, now: u64, budget: usize, mut orphan: impl FnMut(FrameDesc, PortId)) {
        if self.live == 0 {
            return;
        }
        for _ in 0..budget.min(self.entries.len()) {
            let i = self.sweep_hand;
            self.sweep_hand = (i + 1) % self.entries.len();
            if self.entries[i].state != State::Free && self.entries[i].expires <= now {
                self.drop_held(i, &mut orphan);
                self.free_entry(i);
            }
        }
    }

    /// Forgets every datagram that came in on `port` or was admitted to it (the port went
    /// away), handing their held fragments to `orphan` with the port they came in on. Scans
    /// the table: control path only.
    pub fn remove_port(&mut self, port: PortId, mut orphan: impl FnMut(FrameDesc, PortId)) {
        for i in 0..self.entries.len() {
            let e = &self.entries[i];
            let to_port = matches!(
                e.state,
                State::Decided(FragVerdict::Admitted(Egress::Unicast(p))) if p == port
            );
            if e.state != State::Free && (e.key.in_port == port || to_port) {
                self.drop_held(i, &mut orphan);
                self.free_entry(i);
            }
        }
    }

    fn drop_held(&mut self, i: usize, orphan: &mut impl FnMut(FrameDesc, PortId)) {
        let in_port = self.entries[i].key.in_port;
        for slot in self.held.iter_mut() {
            if let Some(h) = *slot
                && h.entry as usize == i
            {
                *slot = None;
                self.held_len -= 1;
                orphan(h.desc, in_port);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: u32) -> FragKey {
        FragKey {
            src: [1; 16],
            dst: [2; 16],
            id,
            proto: 17,
            in_port: 3,
        }
    }

    fn piece(offset: u32, len: u32, more: bool) -> Piece {
        Piece { offset, len, more }
    }

    fn desc(addr: u64) -> FrameDesc {
        FrameDesc { addr, len: 100 }
    }

    const TO_4: FragVerdict = FragVerdict::Admitted(Egress::Unicast(4));

    #[test]
    fn later_fragments_follow_the_first_and_the_datagram_leaves_when_complete() {
        let mut t = FragTable::new(FragConfig::default());
        assert!(t.first(&key(1), piece(0, 1480, true), TO_4, 0, |_, _| panic!()));
        assert_eq!(t.len(), 1);
        assert_eq!(
            t.later(&key(1), piece(1480, 1480, true), desc(1), 0),
            LaterOutcome::Forward(Egress::Unicast(4))
        );
        assert_eq!(
            t.later(&key(1), piece(2960, 48, false), desc(2), 0),
            LaterOutcome::Forward(Egress::Unicast(4))
        );
        assert!(t.is_empty(), "a complete datagram leaves the table");
    }

    #[test]
    fn early_fragments_are_held_then_released_with_the_first_verdict() {
        let mut t = FragTable::new(FragConfig::default());
        assert_eq!(
            t.later(&key(2), piece(2960, 48, false), desc(7), 0),
            LaterOutcome::Held
        );
        assert_eq!(
            t.later(&key(2), piece(1480, 1480, true), desc(8), 0),
            LaterOutcome::Held
        );
        assert_eq!(t.held(), 2);
        let mut released = Vec::new();
        assert!(t.first(&key(2), piece(0, 1480, true), TO_4, 1, |d, o| {
            released.push((d.addr, o))
        }));
        released.sort_by_key(|r| r.0);
        let fwd = LaterOutcome::Forward(Egress::Unicast(4));
        assert_eq!(released, vec![(7, fwd), (8, fwd)]);
        assert_eq!((t.held(), t.len()), (0, 0));
        // A denied datagram releases its held fragments to be dropped.
        t.later(&key(3), piece(8, 8, true), desc(9), 0);
        let mut out = Vec::new();
        t.first(
            &key(3),
            piece(0, 8, true),
            FragVerdict::Denied,
            0,
            |d, o| out.push((d.addr, o)),
        );
        assert_eq!(out, vec![(9, LaterOutcome::Drop(FragDrop::Denied))]);
        assert_eq!(
            t.later(&key(3), piece(16, 8, false), desc(10), 0),
            LaterOutcome::Drop(FragDrop::Denied)
        );
    }

    #[test]
    fn overlaps_poison_the_datagram_and_other_ports_never_match() {
        let mut t = FragTable::new(FragConfig::default());
        t.first(&key(4), piece(0, 1480, true), TO_4, 0, |_, _| {});
        assert_eq!(
            t.later(&key(4), piece(1000, 1480, true), desc(1), 0),
            LaterOutcome::Drop(FragDrop::Overlap)
        );
        assert_eq!(
            t.later(&key(4), piece(2960, 8, false), desc(2), 0),
            LaterOutcome::Drop(FragDrop::Overlap),
            "the rest of a poisoned datagram is dropped too"
        );
        // The same datagram id from another port is another datagram: held, not admitted.
        let other = FragKey {
            in_port: 9,
            ..key(5)
        };
        t.first(&key(5), piece(0, 1480, true), TO_4, 0, |_, _| {});
        assert_eq!(
            t.later(&other, piece(1480, 8, false), desc(3), 0),
            LaterOutcome::Held
        );
    }

    #[test]
    fn orphans_expire_and_the_hold_and_table_are_bounded() {
        // A port's share of the hold is a quarter of it: 2 of 8.
        let mut t = FragTable::new(FragConfig {
            entries: 8,
            held: 8,
            timeout: 10,
        });
        assert_eq!(
            t.later(&key(6), piece(8, 8, true), desc(1), 0),
            LaterOutcome::Held
        );
        assert_eq!(
            t.later(&key(6), piece(16, 8, true), desc(2), 0),
            LaterOutcome::Held
        );
        assert_eq!(
            t.later(&key(6), piece(24, 8, true), desc(3), 0),
            LaterOutcome::Drop(FragDrop::Full),
            "the port's share of the hold is full"
        );
        let mut orphans = Vec::new();
        t.sweep(5, 64, |d, _| orphans.push(d.addr));
        assert!(orphans.is_empty(), "not expired yet");
        t.sweep(10, 64, |d, _| orphans.push(d.addr));
        orphans.sort_unstable();
        assert_eq!(orphans, vec![1, 2]);
        assert_eq!((t.held(), t.len()), (0, 0));
        // One bucket of 8: the ninth datagram finds no room.
        let mut full = 0;
        for id in 100..109 {
            if !t.first(&key(id), piece(0, 8, true), TO_4, 20, |_, _| {}) {
                full += 1;
            }
        }
        assert_eq!(full, 1);
    }

    #[test]
    fn a_removed_port_takes_its_datagrams_and_held_fragments() {
        let mut t = FragTable::new(FragConfig::default());
        t.later(&key(7), piece(8, 8, false), desc(1), 0);
        t.first(&key(8), piece(0, 8, true), TO_4, 0, |_, _| {});
        let mut orphans = Vec::new();
        t.remove_port(4, |d, port| orphans.push((d.addr, port)));
        assert_eq!(t.len(), 1, "the datagram admitted to port 4 is gone");
        t.remove_port(3, |d, port| orphans.push((d.addr, port)));
        assert_eq!(
            orphans,
            vec![(1, 3)],
            "orphans come with the port they came in on"
        );
        assert!(t.is_empty());
    }

    #[test]
    fn an_orphan_flood_from_one_port_leaves_room_for_anothers_datagrams() {
        let mut t = FragTable::new(FragConfig::default());
        let flood = |id: u32| FragKey {
            in_port: 9,
            ..key(id)
        };
        let mut refused = 0;
        for id in 0..3000u32 {
            if t.later(&flood(id), piece(8, 8, true), desc(u64::from(id)), 0)
                == LaterOutcome::Drop(FragDrop::Full)
            {
                refused += 1;
            }
        }
        assert!(
            refused >= 3000 - 256,
            "the flooder keeps at most its share: {refused}"
        );
        assert!(t.held() <= 64, "and at most its share of the hold");
        // Port 3's datagrams, first fragments and out-of-order later ones, all get through.
        for id in 10_000..10_020u32 {
            assert_eq!(
                t.later(&key(id), piece(1480, 8, false), desc(1), 0),
                LaterOutcome::Held,
                "an early later fragment of datagram {id}"
            );
            let mut released = Vec::new();
            assert!(t.first(&key(id), piece(0, 1480, true), TO_4, 0, |_, o| {
                released.push(o)
            }));
            assert_eq!(released, vec![LaterOutcome::Forward(Egress::Unicast(4))]);
        }
    }
}
