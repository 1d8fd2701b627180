//! The flow table (connection tracking): which flows the policy has admitted or denied.
//!
//! Why: the policy decides a flow once; its other packets — and its replies — then pass on a
//! table lookup, and replies of admitted flows pass as ESTABLISHED, as conntrack lets them
//! through Docker's iptables. Each entry caches the verdict with the policy generation that
//! gave it, so a policy change re-decides old flows at their next packet.
//!
//! Shape: a fixed-capacity open-addressing table allocated once, cut into buckets of
//! [`BUCKET_SLOTS`] slots. A key may live in either of two buckets chosen by its hash and is
//! inserted into the emptier one ("two choices"), which keeps premature evictions rare even
//! at high load — an evicted live flow would cut a connection. A parallel array of 32-bit tags
//! (a hash fragment, 0 = empty) lets a lookup check a bucket in half a cache line before
//! touching an entry. When both buckets are full the entry idle the longest is evicted (an
//! LRU approximation over the 16 candidates) and counted, so the table never grows and never
//! refuses a flow. Time is an
//! argument (`now`, nanoseconds on any monotonic clock): the table performs no I/O.
mod sources;
mod state;

use sources::{NO_SLOT, SourceCounts};
use state::TimeoutTable;
pub use state::{ConnState, Dir, FinSeen, Timeouts, tcp_transition};

use crate::counters::Counters;
use crate::phy::PortId;
use crate::wire::{Fragment, Parsed, Tuple};
use rules_wasm::abi::{RejectWith, proto};
use std::hash::BuildHasher;
use std::sync::Arc;

/// Slots per bucket; a key may occupy any slot of its two buckets, which bounds every lookup
/// and insert to `2 * BUCKET_SLOTS` slots.
pub const BUCKET_SLOTS: usize = 8;

/// A flow's key, the same for both directions: the endpoint that sorts first is side `a`.
///
/// Addresses are held as big-endian numbers (`u128::from_be_bytes` of the 16-byte form) so
/// normalising, comparing and hashing are a few register operations rather than byte loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Address of side a.
    pub a: u128,
    /// Address of side b.
    pub b: u128,
    /// Port (or echo id / ICMP type-code) of side a.
    pub a_port: u16,
    /// Port of side b.
    pub b_port: u16,
    /// IP protocol.
    pub proto: u8,
}

impl FlowKey {
    /// Normalises a directional tuple; the flag is true when the tuple's source is side `a`.
    #[inline]
    pub fn from_tuple(t: &Tuple) -> (FlowKey, bool) {
        let s = u128::from_be_bytes(t.src);
        let d = u128::from_be_bytes(t.dst);
        let src_first = s < d || (s == d && t.src_port <= t.dst_port);
        let key = if src_first {
            FlowKey {
                a: s,
                b: d,
                a_port: t.src_port,
                b_port: t.dst_port,
                proto: t.proto,
            }
        } else {
            FlowKey {
                a: d,
                b: s,
                a_port: t.dst_port,
                b_port: t.src_port,
                proto: t.proto,
            }
        };
        (key, src_first)
    }
}

/// How a packet is tracked: its tuple, and whether a flow of it admits replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracking {
    /// The directional tuple.
    pub tuple: Tuple,
    /// Replies are not admitted by this flow: a packet the other way is decided on its own.
    /// True for ICMP messages other than echo (no request/reply pairing) and for non-first
    /// fragments (no ports, so no way to tell flows apart).
    pub one_way: bool,
}

/// The tuple an IP packet is tracked by: ports for TCP/UDP, the identifier for ICMP echo,
/// type and code for other ICMP messages, nothing for non-first fragments and other protocols.
#[inline]
pub fn tracking(p: &Parsed) -> Tracking {
    let mut t = Tuple {
        src: p.src,
        dst: p.dst,
        src_port: 0,
        dst_port: 0,
        proto: p.proto,
    };
    let mut one_way = false;
    if p.fragment == Fragment::Later {
        one_way = true;
    } else {
        match p.proto {
            proto::TCP | proto::UDP => {
                t.src_port = p.src_port;
                t.dst_port = p.dst_port;
            }
            proto::ICMP | proto::ICMPV6 if p.is_icmp_echo() => {
                t.src_port = p.icmp_id;
                t.dst_port = p.icmp_id;
            }
            proto::ICMP | proto::ICMPV6 => {
                t.src_port = u16::from_be_bytes([p.icmp_type, p.icmp_code]);
                one_way = true;
            }
            _ => {}
        }
    }
    Tracking { tuple: t, one_way }
}

/// A cached policy decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Verdict {
    /// Forward (true) or drop.
    pub accept: bool,
    /// The deciding rule, or `RULE_NONE`.
    pub rule: u32,
    /// For a denial by a reject, how it answers: the flow's later packets (a retransmitted
    /// SYN, the next datagram) are answered like its first, as iptables answers each packet
    /// its REJECT rule matches. `None` for accepts and silent drops.
    pub reject: Option<RejectWith>,
}

/// One tracked flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    /// The normalised key.
    pub key: FlowKey,
    /// The originator is side `a` of the key.
    pub orig_is_a: bool,
    /// Replies are not admitted (see [`Tracking::one_way`]); denied flows are one-way too.
    pub one_way: bool,
    /// Connection state.
    pub state: ConnState,
    /// TCP close bookkeeping.
    pub fin: FinSeen,
    /// The cached verdict.
    pub verdict: Verdict,
    /// Policy generation that gave the verdict.
    pub generation: u64,
    /// Last packet time (ns), for eviction.
    pub last_seen: u64,
    /// Expiry time (ns).
    pub expires_at: u64,
    /// Dataplane ports of the originator's packets: `[ingress, egress]` (egress may be
    /// `PORT_FLOOD`), so removing a port can remove its flows.
    pub ports: [PortId; 2],
    /// The originator's packets came back from the host (a container reaching another one
    /// through a published port, DNATed by the host's kernel): replies must go back through
    /// the host too, whose conntrack un-NATs them.
    pub via_host: bool,
    /// Admitted only because audit mode did not enforce the policy's denial: once audit mode
    /// is off the flow goes back to the policy as new, so it does not outlive the audit.
    pub audited: bool,
    /// The next and previous admitted flow of the same originator address (slots), for
    /// `-m connlimit`'s counts; `u32::MAX` at the ends.
    pub src_next: u32,
    /// See `src_next`.
    pub src_prev: u32,
}

impl FlowEntry {
    /// Direction of a packet whose tuple source is side a (`src_is_a`).
    #[inline]
    pub fn dir(&self, src_is_a: bool) -> Dir {
        if src_is_a == self.orig_is_a {
            Dir::Original
        } else {
            Dir::Reply
        }
    }

    /// The originator's tuple (as its first packet was sent).
    pub fn original_tuple(&self) -> Tuple {
        let k = &self.key;
        if self.orig_is_a {
            Tuple {
                src: k.a.to_be_bytes(),
                dst: k.b.to_be_bytes(),
                src_port: k.a_port,
                dst_port: k.b_port,
                proto: k.proto,
            }
        } else {
            Tuple {
                src: k.b.to_be_bytes(),
                dst: k.a.to_be_bytes(),
                src_port: k.b_port,
                dst_port: k.a_port,
                proto: k.proto,
            }
        }
    }
}

const EMPTY_ENTRY: FlowEntry = FlowEntry {
    key: FlowKey {
        a: 0,
        b: 0,
        a_port: 0,
        b_port: 0,
        proto: 0,
    },
    orig_is_a: true,
    one_way: false,
    state: ConnState::Other,
    fin: FinSeen {
        original: false,
        reply: false,
        first_reply: false,
    },
    verdict: Verdict {
        accept: false,
        rule: 0,
        reject: None,
    },
    generation: 0,
    last_seen: 0,
    expires_at: 0,
    ports: [0; 2],
    via_host: false,
    audited: false,
    src_next: NO_SLOT,
    src_prev: NO_SLOT,
};

/// What the table needs to create or re-decide a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The policy generation that gave it.
    pub generation: u64,
}

/// A flow's first packet, from its originator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirstPacket {
    /// Its tracking tuple.
    pub tracking: Tracking,
    /// Its TCP flags.
    pub tcp_flags: u8,
    /// `[ingress, egress]` ports.
    pub ports: [PortId; 2],
    /// It came back from the host with a container's source (see [`FlowEntry::via_host`]).
    pub via_host: bool,
}

/// Cumulative table activity (plain numbers; the engine publishes them as counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// Flows inserted.
    pub inserts: u64,
    /// Live flows evicted for room.
    pub evictions: u64,
    /// Flows removed because they timed out.
    pub expirations: u64,
}

/// A key with its hash, computed once per packet and reused for lookup and insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashedKey {
    /// The key.
    pub key: FlowKey,
    /// The packet's source is side `a`.
    pub src_is_a: bool,
    hash: u64,
}

/// The fixed-capacity flow table.
pub struct FlowTable {
    tags: Box<[u32]>,
    entries: Box<[FlowEntry]>,
    mask: usize,
    len: usize,
    seed: [u64; 3],
    timeouts: TimeoutTable,
    sweep_hand: usize,
    stats: FlowStats,
    /// Admitted flows held per originator address (`-m connlimit`).
    sources: SourceCounts,
    /// Where each originating port's flow gauge ([`crate::counters::PortCounters::flows`])
    /// is kept, if anywhere.
    gauges: Option<Arc<Counters>>,
}

/// Most flows of one source [`FlowTable::conns_from`] walks to count the live ones.
pub const CONNLIMIT_WALK: usize = 4096;

/// The originator's address of `e`, as [`SourceCounts`] keys it.
#[inline]
fn orig_src(e: &FlowEntry) -> u128 {
    if e.orig_is_a { e.key.a } else { e.key.b }
}

#[inline(always)]
fn mix(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

impl FlowTable {
    /// A table of at least `capacity` slots (rounded up to a power of two, at least
    /// [`BUCKET_SLOTS`]), all allocated now. Keys are hashed with a per-table random seed so
    /// a container cannot aim its flows at one window.
    pub fn new(capacity: usize, timeouts: &Timeouts) -> Self {
        let rs = std::collections::hash_map::RandomState::new();
        Self::with_seed(capacity, timeouts, rs.hash_one(0x5eed_u32))
    }

    /// [`FlowTable::new`] with a chosen hash seed: reproducible layouts for tests.
    pub fn with_seed(capacity: usize, timeouts: &Timeouts, seed: u64) -> Self {
        let cap = capacity.max(BUCKET_SLOTS).next_power_of_two();
        let seed = [
            mix(seed, 0x9e37_79b9_7f4a_7c15) | 1,
            mix(seed ^ 0x2545_f491_4f6c_dd1d, 0xbf58_476d_1ce4_e5b9) | 1,
            mix(seed ^ 0x94d0_49bb_1331_11eb, 0x2545_f491_4f6c_dd1d) | 1,
        ];
        Self {
            tags: vec![0; cap].into_boxed_slice(),
            entries: vec![EMPTY_ENTRY; cap].into_boxed_slice(),
            mask: cap - 1,
            len: 0,
            seed,
            timeouts: TimeoutTable::new(timeouts),
            sweep_hand: 0,
            stats: FlowStats::default(),
            sources: SourceCounts::new(cap, seed[2]),
            gauges: None,
        }
    }

    /// Keeps each port's live-flow gauge in `counters` (`PortCounters::flows`, by the port
    /// the flow's originator entered by) as flows are inserted, replaced, expire, are evicted
    /// or removed, so `stats` can show flows per container without scanning the table. The
    /// flows already held are counted now. The table's thread must be the counters' writer.
    pub fn count_by_port(&mut self, counters: Arc<Counters>) {
        self.gauges = Some(counters);
        for s in 0..self.capacity() {
            if self.tags[s] != 0 {
                self.gauge(s, true);
            }
        }
    }

    /// Moves the gauge of slot `s`'s originating port up (a flow arrived) or down (it left).
    #[inline(always)]
    fn gauge(&self, s: usize, up: bool) {
        if let Some(c) = &self.gauges
            && let Some(p) = c.port(self.entries[s].ports[0])
        {
            if up {
                p.flows.add(1);
            } else {
                p.flows.sub(1);
            }
        }
    }

    /// Marks the flow in `slot` as admitted by audit mode (or not): see
    /// [`FlowEntry::audited`]. The engine calls it after each [`FlowTable::decide`].
    #[inline]
    pub fn mark_audited(&mut self, slot: usize, audited: bool) {
        self.entries[slot].audited = audited;
    }

    /// Live admitted flows whose originator is `src` (a record's 16-byte address), closed TCP
    /// connections (time-wait, reset) left out, saturating: what `-m connlimit` counts. The source's flows are walked (at most
    /// [`CONNLIMIT_WALK`] of them) and the expired ones forgotten on the way, so a source whose
    /// connections ended is not held to them; past the walk the rest count as live.
    pub fn conns_from(&mut self, src: &[u8; 16], now: u64) -> u16 {
        let addr = u128::from_be_bytes(*src);
        let (count, mut s) = self.sources.get(addr);
        if count == 0 {
            return 0;
        }
        let mut live = 0u32;
        let mut walked = 0;
        while s != NO_SLOT && walked < CONNLIMIT_WALK {
            let e = &self.entries[s as usize];
            let next = e.src_next;
            if e.expires_at <= now {
                self.remove_slot(s as usize);
                self.stats.expirations += 1;
            } else if !matches!(e.state, ConnState::TcpTimeWait | ConnState::TcpClose) {
                // A TCP connection closed in order or reset is held only to absorb late
                // segments: Linux's connlimit does not count it either.
                live += 1;
            }
            s = next;
            walked += 1;
        }
        let n = if s == NO_SLOT {
            live
        } else {
            self.sources.get(addr).0
        };
        u16::try_from(n).unwrap_or(u16::MAX)
    }

    /// Slots in the table.
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// Flows held (including expired ones not yet swept).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Cumulative activity.
    pub fn stats(&self) -> FlowStats {
        self.stats
    }

    /// Replaces the timeouts (applies to flows as they are next refreshed).
    pub fn set_timeouts(&mut self, t: &Timeouts) {
        self.timeouts = TimeoutTable::new(t);
    }

    /// Normalises and hashes a tuple.
    #[inline]
    pub fn hash_tuple(&self, t: &Tuple) -> HashedKey {
        let (key, src_is_a) = FlowKey::from_tuple(t);
        let ports =
            (u64::from(key.a_port) << 32) | (u64::from(key.b_port) << 16) | u64::from(key.proto);
        let h = mix(
            (key.a >> 64) as u64 ^ self.seed[0],
            key.a as u64 ^ self.seed[1],
        ) ^ mix(
            (key.b >> 64) as u64 ^ self.seed[2],
            key.b as u64 ^ self.seed[0],
        );
        let hash = mix(h ^ ports, self.seed[1]);
        HashedKey {
            key,
            src_is_a,
            hash,
        }
    }

    #[inline(always)]
    fn tag(hash: u64) -> u32 {
        ((hash >> 20) as u32) | 1
    }

    /// First slots of the key's two buckets.
    #[inline(always)]
    fn buckets(&self, hash: u64) -> [usize; 2] {
        let bmask = self.mask & !(BUCKET_SLOTS - 1);
        [
            (hash as usize).wrapping_mul(BUCKET_SLOTS) & bmask,
            ((hash >> 40) as usize).wrapping_mul(BUCKET_SLOTS) & bmask,
        ]
    }

    #[inline(always)]
    fn find(&self, k: &HashedKey) -> Option<usize> {
        let tag = Self::tag(k.hash);
        for b in self.buckets(k.hash) {
            for s in b..b + BUCKET_SLOTS {
                if self.tags[s] == tag && self.entries[s].key == k.key {
                    return Some(s);
                }
            }
        }
        None
    }

    #[inline(always)]
    fn remove_slot(&mut self, s: usize) {
        self.gauge(s, false);
        self.uncount(s);
        self.tags[s] = 0;
        self.len -= 1;
    }

    /// Takes slot `s`'s flow out of its source's list and count, if it was admitted.
    #[inline]
    fn uncount(&mut self, s: usize) {
        let e = self.entries[s];
        if !e.verdict.accept {
            return;
        }
        if e.src_prev != NO_SLOT {
            self.entries[e.src_prev as usize].src_next = e.src_next;
        }
        if e.src_next != NO_SLOT {
            self.entries[e.src_next as usize].src_prev = e.src_prev;
        }
        let new_head = (e.src_prev == NO_SLOT).then_some(e.src_next);
        self.sources.remove(orig_src(&e), new_head);
        let e = &mut self.entries[s];
        e.src_next = NO_SLOT;
        e.src_prev = NO_SLOT;
    }

    /// Puts slot `s`'s flow at the head of its source's list, if it is admitted.
    #[inline]
    fn count(&mut self, s: usize) {
        if !self.entries[s].verdict.accept {
            return;
        }
        let next = self.sources.add(orig_src(&self.entries[s]), s as u32);
        if next != NO_SLOT {
            self.entries[next as usize].src_prev = s as u32;
        }
        let e = &mut self.entries[s];
        e.src_next = next;
        e.src_prev = NO_SLOT;
    }

    /// Finds the live flow of `k`; an expired one is removed and reported as a miss.
    #[inline]
    pub fn lookup(&mut self, k: &HashedKey, now: u64) -> Option<usize> {
        let s = self.find(k)?;
        if self.entries[s].expires_at <= now {
            self.remove_slot(s);
            self.stats.expirations += 1;
            return None;
        }
        Some(s)
    }

    /// Looks a flow up without touching it (tests, metrics, RELATED checks).
    pub fn peek(&self, k: &HashedKey, now: u64) -> Option<&FlowEntry> {
        self.find(k)
            .map(|s| &self.entries[s])
            .filter(|e| e.expires_at > now)
    }

    /// The entry in slot `slot` (from [`FlowTable::lookup`] or an insert).
    #[inline]
    pub fn entry(&self, slot: usize) -> &FlowEntry {
        &self.entries[slot]
    }

    /// Accounts a packet travelling `dir` to an admitted flow: advances its state and
    /// refreshes its timeout. Denied flows are not refreshed, so their verdict ages out.
    #[inline]
    pub fn on_packet(&mut self, slot: usize, dir: Dir, tcp_flags: u8, now: u64) {
        let e = &mut self.entries[slot];
        e.last_seen = now;
        if !e.verdict.accept {
            return;
        }
        e.state = match e.state {
            s if s.is_tcp() => tcp_transition(s, &mut e.fin, dir, tcp_flags),
            ConnState::UdpUnreplied if dir == Dir::Reply => ConnState::UdpAssured,
            s => s,
        };
        e.expires_at = now.saturating_add(self.timeouts.of(e.state));
    }

    /// Stores a decision about the flow of `k`, whose packet travelling `src_is_a` led to it.
    ///
    /// - `first`: the packet is the first of a new flow (a miss): the flow is created, or an
    ///   existing entry is taken over with this packet's sender as originator — unless it was
    ///   created earlier in the same batch by the same originator, in which case this packet
    ///   just advances it.
    /// - otherwise (a re-decision after a policy change) the entry keeps its originator and
    ///   state, takes the new verdict, and the packet advances it; if the entry vanished in
    ///   the meantime it is created as in the first case.
    ///
    /// Returns the slot.
    pub fn decide(
        &mut self,
        k: &HashedKey,
        pkt: &FirstPacket,
        d: Decision,
        first: bool,
        now: u64,
    ) -> usize {
        if let Some(s) = self.find(k).filter(|&s| self.entries[s].expires_at > now) {
            let e = &self.entries[s];
            let same_orig = e.orig_is_a == k.src_is_a;
            let just_created = e.generation == d.generation && e.verdict == d.verdict;
            if !first || (same_orig && just_created && d.verdict.accept) {
                let dir = e.dir(k.src_is_a);
                self.uncount(s);
                let e = &mut self.entries[s];
                e.verdict = d.verdict;
                e.generation = d.generation;
                if d.verdict.accept {
                    self.on_packet(s, dir, pkt.tcp_flags, now);
                } else {
                    e.one_way = true;
                    e.last_seen = now;
                    e.expires_at = now.saturating_add(self.timeouts.denied);
                }
                self.count(s);
                return s;
            }
            self.gauge(s, false);
            self.uncount(s);
            self.entries[s] = self.new_entry(k, pkt, d, now);
            self.count(s);
            self.gauge(s, true);
            return s;
        }
        let s = self.free_slot(k, now);
        self.entries[s] = self.new_entry(k, pkt, d, now);
        self.count(s);
        self.gauge(s, true);
        self.tags[s] = Self::tag(k.hash);
        self.len += 1;
        self.stats.inserts += 1;
        s
    }

    fn new_entry(&self, k: &HashedKey, pkt: &FirstPacket, d: Decision, now: u64) -> FlowEntry {
        let state = match k.key.proto {
            proto::TCP if !pkt.tracking.one_way => ConnState::initial_tcp(pkt.tcp_flags),
            proto::UDP if !pkt.tracking.one_way => ConnState::UdpUnreplied,
            proto::ICMP | proto::ICMPV6 => ConnState::Icmp,
            _ => ConnState::Other,
        };
        let ttl = if d.verdict.accept {
            self.timeouts.of(state)
        } else {
            self.timeouts.denied
        };
        FlowEntry {
            key: k.key,
            orig_is_a: k.src_is_a,
            one_way: pkt.tracking.one_way || !d.verdict.accept,
            state,
            fin: FinSeen::default(),
            verdict: d.verdict,
            generation: d.generation,
            last_seen: now,
            expires_at: now.saturating_add(ttl),
            ports: pkt.ports,
            via_host: pkt.via_host,
            audited: false,
            src_next: NO_SLOT,
            src_prev: NO_SLOT,
        }
    }

    /// A slot for a new key: an empty one in the emptier of its two buckets, else an expired
    /// one, else the least recently used of both buckets (evicted and counted).
    fn free_slot(&mut self, k: &HashedKey, now: u64) -> usize {
        let buckets = self.buckets(k.hash);
        let mut best: Option<(usize, usize)> = None; // (free slots, first free slot)
        for b in buckets {
            let free = self.tags[b..b + BUCKET_SLOTS]
                .iter()
                .filter(|&&t| t == 0)
                .count();
            if free > best.map_or(0, |(n, _)| n)
                && let Some(j) = self.tags[b..b + BUCKET_SLOTS].iter().position(|&t| t == 0)
            {
                best = Some((free, b + j));
            }
        }
        if let Some((_, s)) = best {
            return s;
        }
        let mut victim = buckets[0];
        let mut oldest = u64::MAX;
        for b in buckets {
            for s in b..b + BUCKET_SLOTS {
                let e = &self.entries[s];
                if e.expires_at <= now {
                    self.remove_slot(s);
                    self.stats.expirations += 1;
                    return s;
                }
                if e.last_seen < oldest {
                    oldest = e.last_seen;
                    victim = s;
                }
            }
        }
        self.remove_slot(victim);
        self.stats.evictions += 1;
        victim
    }

    /// Removes expired flows from the next `budget` slots (a clock hand), so the table's size
    /// reflects live flows without a full scan on the hot path.
    pub fn sweep(&mut self, now: u64, budget: usize) {
        for _ in 0..budget.min(self.capacity()) {
            let s = self.sweep_hand;
            self.sweep_hand = (s + 1) & self.mask;
            if self.tags[s] != 0 && self.entries[s].expires_at <= now {
                self.remove_slot(s);
                self.stats.expirations += 1;
            }
        }
    }

    /// Removes every flow whose originator entered or left by `port` (a container went away:
    /// its flows must not outlive it, nor admit a successor that reuses its address).
    /// Returns how many were removed. Scans the whole table: configuration time only.
    pub fn remove_port(&mut self, port: PortId) -> usize {
        let mut n = 0;
        for s in 0..self.capacity() {
            if self.tags[s] != 0 && self.entries[s].ports.contains(&port) {
                self.remove_slot(s);
                n += 1;
            }
        }
        n
    }

    /// Removes every flow (e.g. a full policy reload that must not trust cached verdicts).
    pub fn clear(&mut self) {
        for s in 0..self.capacity() {
            if self.tags[s] != 0 {
                self.gauge(s, false);
            }
        }
        self.tags.fill(0);
        self.len = 0;
        self.sources.clear();
    }

    /// Live flows, for tests and diagnostics (a full scan).
    pub fn iter(&self, now: u64) -> impl Iterator<Item = &FlowEntry> {
        self.tags
            .iter()
            .zip(self.entries.iter())
            .filter(move |(t, e)| **t != 0 && e.expires_at > now)
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rules_wasm::abi::{RULE_NONE, tcp_flags};

    fn tuple(i: u32, sport: u16, dport: u16) -> Tuple {
        let mut src = [0u8; 16];
        src[10] = 0xff;
        src[11] = 0xff;
        src[12..16].copy_from_slice(&i.to_be_bytes());
        let mut dst = src;
        dst[15] ^= 0x80;
        Tuple {
            src,
            dst,
            src_port: sport,
            dst_port: dport,
            proto: proto::TCP,
        }
    }

    fn reverse(t: &Tuple) -> Tuple {
        Tuple {
            src: t.dst,
            dst: t.src,
            src_port: t.dst_port,
            dst_port: t.src_port,
            proto: t.proto,
        }
    }

    const ACCEPT: Decision = Decision {
        verdict: Verdict {
            accept: true,
            rule: RULE_NONE,
            reject: None,
        },
        generation: 1,
    };

    fn first(t: Tuple, flags: u8) -> FirstPacket {
        FirstPacket {
            tracking: Tracking {
                tuple: t,
                one_way: false,
            },
            tcp_flags: flags,
            ports: [1, 2],
            via_host: false,
        }
    }

    #[test]
    fn both_directions_hit_one_entry() {
        let mut ft = FlowTable::new(64, &Timeouts::default());
        let t = tuple(1, 40000, 80);
        let k = ft.hash_tuple(&t);
        let s = ft.decide(&k, &first(t, tcp_flags::SYN), ACCEPT, true, 0);
        let r = ft.hash_tuple(&reverse(&t));
        assert_eq!(r.key, k.key);
        assert_eq!(ft.lookup(&r, 1), Some(s));
        assert_eq!(ft.entry(s).dir(r.src_is_a), Dir::Reply);
        assert_eq!(ft.entry(s).dir(k.src_is_a), Dir::Original);
        assert_eq!(ft.entry(s).original_tuple(), t);
    }

    #[test]
    fn full_buckets_evict_least_recently_used() {
        // Capacity = one bucket: every key shares it.
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        let keys: Vec<_> = (0..BUCKET_SLOTS as u32 + 1)
            .map(|i| tuple(i, 1000, 80))
            .collect();
        for (i, t) in keys.iter().take(BUCKET_SLOTS).enumerate() {
            ft.decide(
                &ft.hash_tuple(t),
                &first(*t, tcp_flags::SYN),
                ACCEPT,
                true,
                i as u64 + 1,
            );
        }
        // Touch key 0 so key 1 is the oldest.
        let k0 = ft.hash_tuple(&keys[0]);
        let s0 = ft.lookup(&k0, 100).unwrap();
        ft.on_packet(s0, Dir::Original, tcp_flags::ACK, 100);
        let last = keys[BUCKET_SLOTS];
        ft.decide(
            &ft.hash_tuple(&last),
            &first(last, tcp_flags::SYN),
            ACCEPT,
            true,
            101,
        );
        assert_eq!(ft.len(), BUCKET_SLOTS);
        assert_eq!(ft.stats().evictions, 1);
        assert!(ft.lookup(&ft.hash_tuple(&keys[1]), 102).is_none());
        assert!(ft.lookup(&ft.hash_tuple(&keys[0]), 102).is_some());
        assert!(ft.lookup(&ft.hash_tuple(&last), 102).is_some());
    }

    #[test]
    fn two_choices_keep_evictions_away_below_high_load() {
        // At half load (a table sized at twice the flows, as the engine's default suggests),
        // single-choice windows of 8 evicted ~0.1 % of live flows; two choices evict none.
        let cap = 1 << 16;
        for seed in [1u64, 2, 3] {
            let mut ft = FlowTable::with_seed(cap, &Timeouts::default(), seed);
            for i in 0..(cap as u32 / 2) {
                let t = tuple(i, (i >> 16) as u16, 80);
                ft.decide(
                    &ft.hash_tuple(&t),
                    &first(t, tcp_flags::SYN),
                    ACCEPT,
                    true,
                    1,
                );
            }
            assert_eq!(ft.stats().evictions, 0, "seed {seed}");
            assert_eq!(ft.len(), cap / 2);
        }
    }

    #[test]
    fn expired_flows_miss_and_sweep_removes_them() {
        let t = Timeouts::default();
        let mut ft = FlowTable::new(64, &t);
        let a = tuple(1, 1, 2);
        let b = tuple(2, 1, 2);
        ft.decide(
            &ft.hash_tuple(&a),
            &first(a, tcp_flags::SYN),
            ACCEPT,
            true,
            0,
        );
        ft.decide(
            &ft.hash_tuple(&b),
            &first(b, tcp_flags::SYN),
            ACCEPT,
            true,
            0,
        );
        let syn_sent = t.tcp_syn_sent.as_nanos() as u64;
        assert!(ft.lookup(&ft.hash_tuple(&a), syn_sent - 1).is_some());
        assert!(ft.lookup(&ft.hash_tuple(&a), syn_sent).is_none());
        assert_eq!(ft.len(), 1);
        ft.sweep(syn_sent, 64);
        assert_eq!(ft.len(), 0);
        assert_eq!(ft.stats().expirations, 2);
    }

    #[test]
    fn remove_port_drops_its_flows() {
        let mut ft = FlowTable::new(64, &Timeouts::default());
        let a = tuple(1, 1, 2);
        let mut pa = first(a, tcp_flags::SYN);
        pa.ports = [3, 4];
        ft.decide(&ft.hash_tuple(&a), &pa, ACCEPT, true, 0);
        let b = tuple(2, 1, 2);
        ft.decide(
            &ft.hash_tuple(&b),
            &first(b, tcp_flags::SYN),
            ACCEPT,
            true,
            0,
        );
        assert_eq!(ft.remove_port(4), 1);
        assert_eq!(ft.len(), 1);
        assert!(ft.peek(&ft.hash_tuple(&a), 1).is_none());
    }

    #[test]
    fn port_gauges_follow_flows_in_and_out() {
        let counters = Arc::new(Counters::new(8));
        let flows_of = |port: PortId| counters.port(port).unwrap().flows.get();
        let t = Timeouts::default();
        let mut ft = FlowTable::new(64, &t);
        let a = tuple(1, 1, 2);
        ft.decide(
            &ft.hash_tuple(&a),
            &first(a, tcp_flags::SYN),
            ACCEPT,
            true,
            0,
        );
        // Flows held before the gauges were attached are counted then.
        ft.count_by_port(Arc::clone(&counters));
        assert_eq!(flows_of(1), 1);
        let b = tuple(2, 1, 2);
        let mut pb = first(b, tcp_flags::SYN);
        pb.ports = [3, 4];
        ft.decide(&ft.hash_tuple(&b), &pb, ACCEPT, true, 0);
        assert_eq!((flows_of(1), flows_of(3), flows_of(4)), (1, 1, 0));
        // The reply's side takes the flow over as a new one: the gauge moves with it.
        let r = reverse(&b);
        let mut pr = first(r, tcp_flags::SYN);
        pr.ports = [4, 3];
        let deny = Decision {
            verdict: Verdict {
                accept: false,
                rule: 9,
                reject: None,
            },
            generation: 2,
        };
        ft.decide(&ft.hash_tuple(&r), &pr, deny, true, 1);
        assert_eq!((flows_of(3), flows_of(4)), (0, 1));
        // Expiry, removal of a port's flows, and clearing all bring the gauges down.
        assert_eq!(ft.remove_port(3), 1);
        assert_eq!(flows_of(4), 0);
        let syn_sent = t.tcp_syn_sent.as_nanos() as u64;
        ft.sweep(syn_sent, 64);
        assert_eq!(flows_of(1), 0);
        ft.decide(
            &ft.hash_tuple(&a),
            &first(a, tcp_flags::SYN),
            ACCEPT,
            true,
            0,
        );
        assert_eq!(flows_of(1), 1);
        ft.clear();
        assert_eq!(flows_of(1), 0);
    }

    #[test]
    fn audited_marks_stick_until_redecided() {
        let mut ft = FlowTable::new(64, &Timeouts::default());
        let a = tuple(1, 1, 2);
        let k = ft.hash_tuple(&a);
        let s = ft.decide(&k, &first(a, tcp_flags::SYN), ACCEPT, true, 0);
        assert!(!ft.entry(s).audited);
        ft.mark_audited(s, true);
        assert!(ft.peek(&k, 1).unwrap().audited);
        let s = ft.decide(&k, &first(a, tcp_flags::SYN), ACCEPT, false, 1);
        assert!(ft.entry(s).audited, "decide leaves the mark to the engine");
        ft.mark_audited(s, false);
        assert!(!ft.entry(s).audited);
    }
}
