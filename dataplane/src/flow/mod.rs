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
//! touching an entry. Time is an argument (`now`, nanoseconds on any monotonic clock): the
//! table performs no I/O.
//!
//! When both buckets are full, one of their 16 entries gives way — the table never grows —
//! chosen so that a container flooding new flows churns its own and cannot push out the
//! connections of others (see [`FlowTable::decide`]). A flow is *confirmed* once admitted,
//! answered and past its handshake ([`FlowEntry::confirmed`]); a port's *fair share* is the
//! flows held divided by the ports holding any, the new flow's port counted. In order of
//! preference, the new flow takes the slot of:
//! 1. an expired flow;
//! 2. a cached denial, or a closed TCP connection (losing either cuts nothing: a denial is
//!    asked again, a closed connection only absorbed late segments);
//! 3. an unconfirmed flow — first those of a port over its fair share, so a flooder's own
//!    half-open flows go before a victim's;
//! 4. a confirmed flow of a port over its fair share, if the new flow's port is that port,
//!    or a *newcomer*: within its own share and holding fewer than
//!    [`NEWCOMER_UNCONFIRMED`] unconfirmed flows. So a port that hoards answered flows cannot
//!    lock the others out of a full table, while a flooder — whose half-open flows pile up
//!    at once — can take at most that many connections before it only churns its own.
//!
//! Among equals the one idle longest goes (LRU over the candidates); evictions are counted.
//! When none of the candidates may go, the new flow is refused and counted instead
//! ([`FlowStats::refused`]; the engine drops an admitted packet as `flow_table_full`, and a
//! denial is simply not cached), as Linux drops a new connection when conntrack is full
//! and finds no unassured entry to drop: an established connection is not cut for a
//! newcomer with no better claim to its slot.
mod sources;
mod state;

use sources::{NO_SLOT, SourceCounts};
use state::TimeoutTable;
pub use state::{ConnState, Dir, FinSeen, Timeouts, tcp_transition};

use crate::counters::Counters;
use crate::offload::{OffloadLog, OffloadOp, reversed};
use crate::phy::PortId;
use crate::wire::{Fragment, Parsed, Tuple};
use rules_wasm::abi::{RejectWith, proto};
use state::ConnState::{TcpClose, TcpSynRecv, TcpSynSent, TcpTimeWait};
use std::hash::BuildHasher;
use std::sync::Arc;

/// Slots per bucket; a key may occupy any slot of its two buckets, which bounds every lookup
/// and insert to `2 * BUCKET_SLOTS` slots.
pub const BUCKET_SLOTS: usize = 8;

/// A flow's key, the same for both directions: the endpoint that sorts first is side `a`.
/// It includes the network (L2 domain, see [`crate::engine::PortConfig::network`]) the flow
/// travels in: every packet of a flow enters by a port of one network (nothing is switched
/// between networks), so a flow of one network never answers for a packet of another.
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
    /// The network the flow travels in (0 in a single-network setup).
    pub network: PortId,
}

impl FlowKey {
    /// Normalises a directional tuple of `network`; the flag is true when the tuple's source
    /// is side `a`.
    #[inline]
    pub fn from_tuple(t: &Tuple, network: PortId) -> (FlowKey, bool) {
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
                network,
            }
        } else {
            FlowKey {
                a: d,
                b: s,
                a_port: t.dst_port,
                b_port: t.src_port,
                proto: t.proto,
                network,
            }
        };
        (key, src_first)
    }
}

/// See [`FlowEntry::confirmed`].
#[inline(always)]
fn confirmed(state: ConnState, replied: bool, accept: bool, one_way: bool) -> bool {
    replied
        && accept
        && !one_way
        && !matches!(state, TcpSynSent | TcpSynRecv | TcpTimeWait | TcpClose)
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
    /// A packet travelling the reply direction has passed: the other end answered. With
    /// the state, what makes a flow confirmed (see [`FlowEntry::confirmed`]), which protects
    /// it from being evicted for a newcomer.
    pub replied: bool,
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
    /// The policy generation of the kernel entries this flow has in the tiered datapath's
    /// flow cache ([`NOT_OFFLOADED`]: none), so they are removed with it and replaced when
    /// it is re-decided.
    pub offloaded: u64,
    /// The policy admitted this flow at some point (a denial since came from a re-decision,
    /// not from its first packet): its other side's packets must not take it over.
    pub was_admitted: bool,
}

/// [`FlowEntry::offloaded`] of a flow with no kernel entries.
pub const NOT_OFFLOADED: u64 = u64::MAX;

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

    /// Confirmed: an admitted, two-way flow whose other end has answered and which is not
    /// mid-handshake or closed — a TCP connection past its handshake, an assured UDP flow, an
    /// answered ICMP echo or other protocol. What a flood of new flows cannot evict: a bare
    /// SYN, an unanswered datagram, a SYN answered by a SYN-ACK that was never acknowledged
    /// (a SYN flood at a listening server) and a mid-stream pickup not yet answered are not.
    #[inline]
    pub fn confirmed(&self) -> bool {
        confirmed(self.state, self.replied, self.verdict.accept, self.one_way)
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
        network: 0,
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
    replied: false,
    via_host: false,
    audited: false,
    src_next: NO_SLOT,
    src_prev: NO_SLOT,
    offloaded: NOT_OFFLOADED,
    was_admitted: false,
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
    /// New flows not inserted because no candidate slot could give way: each held a
    /// confirmed flow that the new flow's port may not take (see [`FlowTable::decide`]).
    pub refused: u64,
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
    /// Flows held per originating port (`ports[0]`), indexed by every possible [`PortId`]
    /// so no lookup can miss: a port's share of the table, for eviction.
    held: Box<[Holding]>,
    /// Ports holding at least one flow: the fair share is `len / holders`.
    holders: u32,
    /// Requests to the kernel flow cache (tiered datapath): removals are recorded here as
    /// flows with kernel entries leave.
    offload: OffloadLog,
}

/// Entries of [`FlowTable::held`]: one per possible port id.
const PORT_IDS: usize = PortId::MAX as usize + 1;

/// What one port holds of the table.
#[derive(Clone, Copy, Debug, Default)]
struct Holding {
    /// Flows it originated.
    flows: u32,
    /// Of those, the ones not confirmed ([`FlowEntry::confirmed`]).
    unconfirmed: u32,
}

/// Most unconfirmed flows a port may hold and still take a slot from a confirmed flow of a
/// port over its fair share (see [`FlowTable::decide`]): enough for a container opening a
/// few connections at once into a table full of others' connections, while a flooder —
/// whose half-open flows pile up — loses the right after its first few and churns its own.
pub const NEWCOMER_UNCONFIRMED: u32 = 2 * BUCKET_SLOTS as u32;

/// How readily a candidate gives way to a new flow (higher first); see the module docs.
const RANK_DISPOSABLE: u8 = 4;
const RANK_UNCONFIRMED_OVER_SHARE: u8 = 3;
const RANK_UNCONFIRMED: u8 = 2;
const RANK_CONFIRMED_OVER_SHARE: u8 = 1;

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
            held: vec![Holding::default(); PORT_IDS].into_boxed_slice(),
            holders: 0,
            offload: OffloadLog::with_capacity(0),
        }
    }

    /// Turns on the kernel flow cache's request log (the tiered datapath), with room for
    /// `capacity` requests between two drains. Allocates: configuration time.
    pub fn enable_offload(&mut self, capacity: usize) {
        if self.offload.pending().is_empty() && capacity > 0 {
            self.offload = OffloadLog::with_capacity(capacity);
        }
    }

    /// True when flows are offloaded at all (a tiered port exists): the engine's offload
    /// checks stop here in the AF_XDP datapath, before reading the entry.
    #[inline(always)]
    pub fn offload_enabled(&self) -> bool {
        self.offload.enabled()
    }

    /// The kernel flow cache's pending requests.
    pub fn offload_log(&mut self) -> &mut OffloadLog {
        &mut self.offload
    }

    /// Gives slot `s`'s flow a new verdict from a re-decision made without a packet (the
    /// tiered datapath re-decides its offloaded flows when the policy changes): as
    /// [`FlowTable::decide`] does for a re-decided packet, without advancing the state.
    /// Kernel entries of another verdict are removed.
    pub fn redecide_slot(&mut self, s: usize, verdict: Verdict, generation: u64, now: u64) {
        let was = self.entries[s].confirmed();
        if self.entries[s].verdict != verdict {
            self.unoffload(s);
        }
        self.uncount(s);
        let denied = self.timeouts.denied;
        let e = &mut self.entries[s];
        e.verdict = verdict;
        e.generation = generation;
        e.was_admitted |= verdict.accept;
        if !verdict.accept {
            e.one_way = true;
            e.last_seen = now;
            e.expires_at = now.saturating_add(denied);
        }
        self.count(s);
        self.reclassify(s, was);
    }

    /// True when slot `s` holds a flow (live or expired but not yet swept).
    pub fn slot_live(&self, s: usize) -> bool {
        self.tags.get(s).is_some_and(|&t| t != 0)
    }

    /// Records that slot `s`'s flow has kernel entries of `generation`.
    pub fn mark_offloaded(&mut self, s: usize, generation: u64) {
        self.entries[s].offloaded = generation;
    }

    /// Removes slot `s`'s kernel entries (both directions), if it has any; false when the
    /// request log had no room (the entries are then reconciled by the next sync).
    pub fn unoffload(&mut self, s: usize) -> bool {
        let e = &mut self.entries[s];
        if e.offloaded == NOT_OFFLOADED {
            return true;
        }
        e.offloaded = NOT_OFFLOADED;
        let orig = e.original_tuple();
        let [a, b] = e.ports;
        let ok = self.offload.push(OffloadOp::Remove {
            in_port: a,
            tuple: orig,
        });
        ok & self.offload.push(OffloadOp::Remove {
            in_port: b,
            tuple: reversed(&orig),
        })
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

    /// Counts slot `s`'s flow in (a flow arrived) or out of (it left) its originating port's
    /// holding and gauge.
    #[inline(always)]
    fn hold(&mut self, s: usize, up: bool) {
        let e = &self.entries[s];
        let unconfirmed = u32::from(!e.confirmed());
        if let Some(h) = self.held.get_mut(usize::from(e.ports[0])) {
            if up {
                self.holders += u32::from(h.flows == 0);
                h.flows += 1;
                h.unconfirmed += unconfirmed;
            } else if h.flows > 0 {
                h.flows -= 1;
                h.unconfirmed = h.unconfirmed.saturating_sub(unconfirmed);
                self.holders -= u32::from(h.flows == 0);
            }
        }
        self.gauge(s, up);
    }

    /// Moves slot `s`'s flow between its port's confirmed and unconfirmed flows after its
    /// state, reply or verdict changed (`was`: whether it was confirmed before).
    #[inline]
    fn reclassify(&mut self, s: usize, was: bool) {
        let e = &self.entries[s];
        let is = e.confirmed();
        if is != was
            && let Some(h) = self.held.get_mut(usize::from(e.ports[0]))
        {
            if is {
                h.unconfirmed = h.unconfirmed.saturating_sub(1);
            } else {
                h.unconfirmed += 1;
            }
        }
    }

    /// Whether `port` holds more than its fair share of the flows: more than the flows held
    /// divided by `holders`, the ports holding any — counting the port of the flow being
    /// inserted, so a newcomer is entitled to a share of a table another port fills.
    #[inline]
    fn over_share(&self, port: PortId, holders: u32) -> bool {
        let n = self.held.get(usize::from(port)).map_or(0, |h| h.flows);
        u64::from(n) * u64::from(holders) > self.len as u64
    }

    /// Flows held whose originator entered by `port` that are not confirmed
    /// ([`FlowEntry::confirmed`]): half-open, unanswered, closed or denied.
    pub fn unconfirmed_by(&self, port: PortId) -> usize {
        self.held
            .get(usize::from(port))
            .map_or(0, |h| h.unconfirmed as usize)
    }

    /// Flows held whose originator entered by `port` (the table's own count, which
    /// [`FlowTable::count_by_port`]'s gauges mirror).
    pub fn held_by(&self, port: PortId) -> usize {
        self.held
            .get(usize::from(port))
            .map_or(0, |h| h.flows as usize)
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

    /// Normalises and hashes a tuple of network 0 (the single-network setup); see
    /// [`FlowTable::hash_tuple_in`].
    #[inline]
    pub fn hash_tuple(&self, t: &Tuple) -> HashedKey {
        self.hash_tuple_in(t, 0)
    }

    /// Normalises and hashes a tuple travelling in `network` (see [`FlowKey`]).
    #[inline]
    pub fn hash_tuple_in(&self, t: &Tuple, network: PortId) -> HashedKey {
        let (key, src_is_a) = FlowKey::from_tuple(t, network);
        let ports = (u64::from(key.network) << 48)
            | (u64::from(key.a_port) << 32)
            | (u64::from(key.b_port) << 16)
            | u64::from(key.proto);
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
        self.unoffload(s);
        self.hold(s, false);
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
        let e = &self.entries[slot];
        let before = (e.state, e.replied);
        self.advance(slot, dir, tcp_flags, now);
        let e = &self.entries[slot];
        if (e.state, e.replied) != before {
            let was = confirmed(before.0, before.1, e.verdict.accept, e.one_way);
            self.reclassify(slot, was);
        }
    }

    /// [`FlowTable::on_packet`] without the holdings' bookkeeping.
    #[inline(always)]
    fn advance(&mut self, slot: usize, dir: Dir, tcp_flags: u8, now: u64) {
        let e = &mut self.entries[slot];
        e.last_seen = now;
        if !e.verdict.accept {
            return;
        }
        e.replied |= dir == Dir::Reply;
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
    /// A flow that needs a new slot when its two buckets are full evicts a candidate as the
    /// module docs say, or is refused when no candidate may go.
    ///
    /// Returns the slot, or `None` when the flow was refused ([`FlowStats::refused`]): the
    /// caller must not admit a packet whose flow is not tracked.
    pub fn decide(
        &mut self,
        k: &HashedKey,
        pkt: &FirstPacket,
        d: Decision,
        first: bool,
        now: u64,
    ) -> Option<usize> {
        if let Some(s) = self.find(k).filter(|&s| self.entries[s].expires_at > now) {
            let e = &self.entries[s];
            let same_orig = e.orig_is_a == k.src_is_a;
            let just_created = e.generation == d.generation && e.verdict == d.verdict;
            if !first || (same_orig && just_created && d.verdict.accept) {
                let dir = e.dir(k.src_is_a);
                let was = e.confirmed();
                if e.verdict != d.verdict {
                    // Kernel entries of another verdict must not outlive it.
                    self.unoffload(s);
                }
                self.uncount(s);
                let e = &mut self.entries[s];
                e.verdict = d.verdict;
                e.generation = d.generation;
                e.was_admitted |= d.verdict.accept;
                if d.verdict.accept {
                    self.advance(s, dir, pkt.tcp_flags, now);
                } else {
                    e.one_way = true;
                    e.last_seen = now;
                    e.expires_at = now.saturating_add(self.timeouts.denied);
                }
                self.count(s);
                self.reclassify(s, was);
                return Some(s);
            }
            self.unoffload(s);
            self.hold(s, false);
            self.uncount(s);
            self.entries[s] = self.new_entry(k, pkt, d, now);
            self.count(s);
            self.hold(s, true);
            return Some(s);
        }
        let Some(s) = self.free_slot(k, pkt.ports[0], now) else {
            self.stats.refused += 1;
            return None;
        };
        self.entries[s] = self.new_entry(k, pkt, d, now);
        self.tags[s] = Self::tag(k.hash);
        self.len += 1;
        self.count(s);
        self.hold(s, true);
        self.stats.inserts += 1;
        Some(s)
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
            replied: false,
            via_host: pkt.via_host,
            audited: false,
            src_next: NO_SLOT,
            src_prev: NO_SLOT,
            offloaded: NOT_OFFLOADED,
            was_admitted: d.verdict.accept,
        }
    }

    /// A slot for a new key of port `inserter`: an empty one in the emptier of its two
    /// buckets, else an expired one, else the candidate of both buckets that gives way most
    /// readily (evicted and counted; see [`FlowTable::eviction_rank`]). `None` when no
    /// candidate may give way.
    fn free_slot(&mut self, k: &HashedKey, inserter: PortId, now: u64) -> Option<usize> {
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
            return Some(s);
        }
        let holders = self.holders + u32::from(self.held_by(inserter) == 0);
        // The victim so far: (rank, last seen, slot); a higher rank, then an older flow, wins.
        let mut victim: Option<(u8, u64, usize)> = None;
        for b in buckets {
            for s in b..b + BUCKET_SLOTS {
                let e = &self.entries[s];
                if e.expires_at <= now {
                    self.remove_slot(s);
                    self.stats.expirations += 1;
                    return Some(s);
                }
                let last_seen = e.last_seen;
                if let Some(rank) = self.eviction_rank(s, inserter, holders)
                    && victim.is_none_or(|(r, t, _)| rank > r || (rank == r && last_seen < t))
                {
                    victim = Some((rank, last_seen, s));
                }
            }
        }
        let (_, _, s) = victim?;
        self.remove_slot(s);
        self.stats.evictions += 1;
        Some(s)
    }

    /// How readily the live flow in slot `s` gives way to a new flow of port `inserter`
    /// (higher first), or `None` when it must not: a confirmed flow of a port within its
    /// fair share; of a port over it, unless the inserter is that port or a newcomer —
    /// within its own share and holding fewer than [`NEWCOMER_UNCONFIRMED`] unconfirmed
    /// flows. `holders`: the ports sharing the table, the inserter's included.
    #[inline]
    fn eviction_rank(&self, s: usize, inserter: PortId, holders: u32) -> Option<u8> {
        let e = &self.entries[s];
        if !e.verdict.accept || matches!(e.state, TcpTimeWait | TcpClose) {
            return Some(RANK_DISPOSABLE);
        }
        let holder = e.ports[0];
        let over = self.over_share(holder, holders);
        if !e.confirmed() {
            return Some(if over {
                RANK_UNCONFIRMED_OVER_SHARE
            } else {
                RANK_UNCONFIRMED
            });
        }
        let newcomer = !self.over_share(inserter, holders)
            && self.unconfirmed_by(inserter) < NEWCOMER_UNCONFIRMED as usize;
        (over && (holder == inserter || newcomer)).then_some(RANK_CONFIRMED_OVER_SHARE)
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
                self.unoffload(s);
                self.hold(s, false);
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
    fn the_same_tuple_in_two_networks_is_two_flows() {
        let mut ft = FlowTable::new(64, &Timeouts::default());
        let t = tuple(1, 40000, 80);
        let k0 = ft.hash_tuple_in(&t, 0);
        assert_eq!(
            k0,
            ft.hash_tuple(&t),
            "network 0 is the single-network default"
        );
        let k5 = ft.hash_tuple_in(&t, 5);
        assert_ne!(k0.key, k5.key);
        let s = ft
            .decide(&k5, &first(t, tcp_flags::SYN), ACCEPT, true, 0)
            .unwrap();
        // Network 5's flow answers for network 5's packets, both ways, and for no other.
        assert_eq!(ft.lookup(&k5, 1), Some(s));
        assert_eq!(ft.lookup(&ft.hash_tuple_in(&reverse(&t), 5), 1), Some(s));
        assert_eq!(ft.lookup(&k0, 1), None);
        assert_eq!(ft.lookup(&ft.hash_tuple_in(&reverse(&t), 0), 1), None);
        assert_eq!(ft.entry(s).key.network, 5);
    }

    #[test]
    fn both_directions_hit_one_entry() {
        let mut ft = FlowTable::new(64, &Timeouts::default());
        let t = tuple(1, 40000, 80);
        let k = ft.hash_tuple(&t);
        let s = ft
            .decide(&k, &first(t, tcp_flags::SYN), ACCEPT, true, 0)
            .unwrap();
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
        let s = ft
            .decide(&k, &first(a, tcp_flags::SYN), ACCEPT, true, 0)
            .unwrap();
        assert!(!ft.entry(s).audited);
        ft.mark_audited(s, true);
        assert!(ft.peek(&k, 1).unwrap().audited);
        let s = ft
            .decide(&k, &first(a, tcp_flags::SYN), ACCEPT, false, 1)
            .unwrap();
        assert!(ft.entry(s).audited, "decide leaves the mark to the engine");
        ft.mark_audited(s, false);
        assert!(!ft.entry(s).audited);
    }

    /// A first packet of port `port` for tuple `t`.
    fn from_port(t: Tuple, flags: u8, port: PortId) -> FirstPacket {
        FirstPacket {
            ports: [port, 0],
            ..first(t, flags)
        }
    }

    /// Opens a TCP connection of `port` through its handshake: a confirmed flow.
    fn establish(ft: &mut FlowTable, t: Tuple, port: PortId, now: u64) -> usize {
        let k = ft.hash_tuple(&t);
        let s = ft
            .decide(&k, &from_port(t, tcp_flags::SYN, port), ACCEPT, true, now)
            .unwrap();
        ft.on_packet(s, Dir::Reply, tcp_flags::SYN | tcp_flags::ACK, now);
        assert!(
            !ft.entry(s).confirmed(),
            "a SYN answered is still half-open"
        );
        ft.on_packet(s, Dir::Original, tcp_flags::ACK, now);
        assert!(ft.entry(s).confirmed());
        s
    }

    fn alive(ft: &FlowTable, t: &Tuple, now: u64) -> bool {
        ft.peek(&ft.hash_tuple(t), now).is_some()
    }

    #[test]
    fn a_flood_of_new_flows_evicts_its_own_not_anothers_connections() {
        // One bucket: every key competes for the same 8 slots.
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        let victim: Vec<_> = (0..3).map(|i| tuple(i, 1000, 80)).collect();
        for t in &victim {
            establish(&mut ft, *t, 1, 1);
        }
        // Port 2 floods bare SYNs, later than the victim's last packets: LRU alone would
        // evict the victim's idle connections first.
        for i in 0..100 {
            let t = tuple(100 + i, 2000, 80);
            let k = ft.hash_tuple(&t);
            let got = ft.decide(
                &k,
                &from_port(t, tcp_flags::SYN, 2),
                ACCEPT,
                true,
                10 + u64::from(i),
            );
            assert!(got.is_some(), "the flooder churns its own flows");
            assert!(ft.len() <= ft.capacity());
        }
        for t in &victim {
            assert!(alive(&ft, t, 200), "victim's connection evicted");
        }
        assert_eq!(ft.held_by(1), 3);
        assert_eq!(ft.held_by(2), BUCKET_SLOTS - 3);
        assert_eq!(ft.stats().evictions, 100 - (BUCKET_SLOTS as u64 - 3));
        assert_eq!(ft.stats().refused, 0);
    }

    #[test]
    fn a_light_port_evicts_the_heaviest_ports_half_open_flows_before_its_own() {
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        // Port 1 holds one half-open flow, port 2 (the flooder) the other seven, all older.
        let mine = tuple(1, 1000, 80);
        ft.decide(
            &ft.hash_tuple(&mine),
            &from_port(mine, tcp_flags::SYN, 1),
            ACCEPT,
            true,
            1,
        );
        for i in 0..7 {
            let t = tuple(100 + i, 2000, 80);
            ft.decide(
                &ft.hash_tuple(&t),
                &from_port(t, tcp_flags::SYN, 2),
                ACCEPT,
                true,
                2,
            );
        }
        // Port 1's next new flow takes a flooder's slot although its own is the oldest.
        let next = tuple(2, 1000, 80);
        let k = ft.hash_tuple(&next);
        assert!(
            ft.decide(&k, &from_port(next, tcp_flags::SYN, 1), ACCEPT, true, 3)
                .is_some()
        );
        assert!(alive(&ft, &mine, 4) && alive(&ft, &next, 4));
        assert_eq!((ft.held_by(1), ft.held_by(2)), (2, 6));
    }

    #[test]
    fn denials_and_closed_connections_go_first() {
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        let deny = Decision {
            verdict: Verdict {
                accept: false,
                rule: 3,
                reject: None,
            },
            generation: 1,
        };
        let denied = tuple(1, 1, 1);
        ft.decide(
            &ft.hash_tuple(&denied),
            &from_port(denied, tcp_flags::SYN, 1),
            deny,
            true,
            50,
        );
        let closed = tuple(2, 1, 1);
        let s = establish(&mut ft, closed, 1, 40);
        ft.on_packet(s, Dir::Original, tcp_flags::RST, 40);
        for i in 0..6 {
            establish(&mut ft, tuple(10 + i, 1, 1), 1, 1);
        }
        // The newest entries, the denial and the reset connection, go before six idle
        // confirmed connections.
        for (i, now) in [(20u32, 60u64), (21, 61)] {
            let t = tuple(i, 1, 1);
            assert!(
                ft.decide(
                    &ft.hash_tuple(&t),
                    &from_port(t, tcp_flags::SYN, 1),
                    ACCEPT,
                    true,
                    now
                )
                .is_some()
            );
        }
        assert!(!alive(&ft, &denied, 62) && !alive(&ft, &closed, 62));
        assert!((0..6).all(|i| alive(&ft, &tuple(10 + i, 1, 1), 62)));
    }

    #[test]
    fn a_full_table_refuses_a_port_at_its_share_but_makes_room_for_a_newcomer() {
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        // Four ports hold two confirmed connections each: everyone at the fair share.
        for i in 0..8u32 {
            establish(
                &mut ft,
                tuple(i, 1, 1),
                1 + (i % 4) as PortId,
                1 + u64::from(i),
            );
        }
        // One of them wants a third: no connection of a port within its share may go.
        let t = tuple(100, 1, 1);
        let k = ft.hash_tuple(&t);
        assert_eq!(
            ft.decide(&k, &from_port(t, tcp_flags::SYN, 1), ACCEPT, true, 20),
            None
        );
        assert_eq!(ft.stats().refused, 1);
        assert_eq!(ft.stats().evictions, 0);
        assert_eq!(ft.len(), 8);
        assert!(ft.peek(&k, 21).is_none());
        // A fifth port holding nothing is entitled to a share of a five-way table: the
        // idlest connection of a port now over it gives way.
        assert!(
            ft.decide(&k, &from_port(t, tcp_flags::SYN, 5), ACCEPT, true, 20)
                .is_some()
        );
        assert_eq!(ft.stats().evictions, 1);
        assert!(!alive(&ft, &tuple(0, 1, 1), 21), "the idlest went");
        assert_eq!((ft.held_by(1), ft.held_by(5)), (1, 1));
        assert_eq!(ft.unconfirmed_by(5), 1);
    }

    #[test]
    fn a_port_over_its_share_loses_confirmed_flows_to_one_within_its_share() {
        let mut ft = FlowTable::new(BUCKET_SLOTS, &Timeouts::default());
        // Port 2 holds six answered flows, port 1 two: port 2 is over its share (8 / 2).
        for i in 0..2u32 {
            establish(&mut ft, tuple(i, 1, 1), 1, 5);
        }
        for i in 0..6u32 {
            establish(&mut ft, tuple(10 + i, 1, 1), 2, 1 + u64::from(i));
        }
        // Port 2's newcomer may not cut port 1's connections (port 2 is over its share), but
        // it may give up its own oldest one.
        let t = tuple(100, 1, 1);
        establish(&mut ft, t, 2, 6);
        assert_eq!((ft.held_by(1), ft.held_by(2)), (2, 6));
        assert!(!alive(&ft, &tuple(10, 1, 1), 7));
        // Port 1, within its share, takes one of port 2's confirmed flows (the oldest left).
        let u = tuple(101, 1, 1);
        establish(&mut ft, u, 1, 7);
        assert_eq!((ft.held_by(1), ft.held_by(2)), (3, 5));
        assert!(!alive(&ft, &tuple(11, 1, 1), 8));
        assert!(alive(&ft, &tuple(0, 1, 1), 8) && alive(&ft, &tuple(1, 1, 1), 8));
        assert!(alive(&ft, &t, 8) && alive(&ft, &u, 8));
        assert_eq!(ft.stats().refused, 0);
    }

    #[test]
    fn a_flood_into_a_table_full_of_connections_takes_a_bounded_few_then_churns_itself() {
        // A table full of one port's connections: the flooder, a newcomer, is entitled to
        // a share and may take the idlest of them — until it holds NEWCOMER_UNCONFIRMED
        // half-open flows. From then on it churns those (and is refused where none of its
        // own is among the candidates): the connections lost are bounded by that quota,
        // however long the flood.
        let cap = 1 << 12;
        let mut ft = FlowTable::with_seed(cap, &Timeouts::default(), 7);
        let mut held = 0;
        for i in 0..cap as u32 {
            let t = tuple(i, 1000, 80);
            let k = ft.hash_tuple(&t);
            if let Some(s) = ft.decide(&k, &from_port(t, tcp_flags::SYN, 1), ACCEPT, true, 1) {
                ft.on_packet(s, Dir::Reply, tcp_flags::SYN | tcp_flags::ACK, 1);
                ft.on_packet(s, Dir::Original, tcp_flags::ACK, 1);
                held += 1;
            }
        }
        assert_eq!(ft.held_by(1), held);
        assert_eq!(ft.unconfirmed_by(1), 0);
        let refused_filling = ft.stats().refused;
        let mut lost_by_round = Vec::new();
        let mut admitted = 0;
        for round in 0..10u32 {
            for i in 0..cap as u32 {
                let t = tuple(1_000_000 + round * cap as u32 + i, 2000, 443);
                let k = ft.hash_tuple(&t);
                let got = ft.decide(&k, &from_port(t, tcp_flags::SYN, 3), ACCEPT, true, 2);
                admitted += usize::from(got.is_some());
            }
            lost_by_round.push(held - ft.held_by(1));
        }
        let s = ft.stats();
        println!(
            "table {cap}, {held} connections of one port, flood of 10 x {cap} new flows: \
             connections lost after each turnover {lost_by_round:?}; flood flows admitted \
             {admitted}, refused {}",
            s.refused - refused_filling
        );
        assert!(
            lost_by_round[9] <= NEWCOMER_UNCONFIRMED as usize,
            "{lost_by_round:?}"
        );
        assert_eq!(ft.unconfirmed_by(3), ft.held_by(3));
        assert_eq!(admitted + (s.refused - refused_filling) as usize, 10 * cap);
    }

    /// The holdings as a full scan finds them: (port, flows, unconfirmed), sorted.
    fn scanned_holdings(ft: &FlowTable) -> Vec<(PortId, usize, usize)> {
        let mut by_port = std::collections::BTreeMap::<PortId, (usize, usize)>::new();
        for (s, &tag) in ft.tags.iter().enumerate() {
            if tag != 0 {
                let e = &ft.entries[s];
                let h = by_port.entry(e.ports[0]).or_default();
                h.0 += 1;
                h.1 += usize::from(!e.confirmed());
            }
        }
        by_port.into_iter().map(|(p, (f, u))| (p, f, u)).collect()
    }

    fn kept_holdings(ft: &FlowTable) -> Vec<(PortId, usize, usize)> {
        (0..=8)
            .filter(|&p| ft.held_by(p) > 0)
            .map(|p| (p, ft.held_by(p), ft.unconfirmed_by(p)))
            .collect()
    }

    #[test]
    fn holdings_follow_every_change_of_a_flow() {
        // Random inserts, packets both ways with every TCP flag mix, re-decisions that deny
        // or admit, expiry, sweeps and port removal on a small table: the per-port counts
        // kept incrementally always equal a full scan.
        let t = Timeouts::default();
        let mut ft = FlowTable::with_seed(64, &t, 3);
        let mut x = 0x2545_f491u32;
        let mut rnd = |n: u32| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x % n
        };
        let deny = Decision {
            verdict: Verdict {
                accept: false,
                rule: 3,
                reject: None,
            },
            generation: 2,
        };
        let flags = [
            tcp_flags::SYN,
            tcp_flags::SYN | tcp_flags::ACK,
            tcp_flags::ACK,
            tcp_flags::FIN | tcp_flags::ACK,
            tcp_flags::RST,
        ];
        let mut now = 0;
        for step in 0..20_000u32 {
            now += u64::from(rnd(3)) * 1_000_000_000;
            let tup = tuple(rnd(200), 1000, 80);
            let dir_tuple = if rnd(2) == 0 { tup } else { reverse(&tup) };
            let k = ft.hash_tuple(&dir_tuple);
            let f = flags[rnd(flags.len() as u32) as usize];
            match rnd(6) {
                0 | 1 => {
                    let d = if rnd(4) == 0 { deny } else { ACCEPT };
                    let pkt = from_port(dir_tuple, f, rnd(8) as PortId);
                    ft.decide(&k, &pkt, d, rnd(3) != 0, now);
                }
                2 | 3 => {
                    if let Some(s) = ft.lookup(&k, now) {
                        let dir = ft.entry(s).dir(k.src_is_a);
                        ft.on_packet(s, dir, f, now);
                    }
                }
                4 => ft.sweep(now, 16),
                _ if step % 500 == 0 => {
                    ft.remove_port(rnd(8) as PortId);
                }
                _ => {}
            }
            assert_eq!(kept_holdings(&ft), scanned_holdings(&ft), "step {step}");
            let holders = (0..=8).filter(|&p| ft.held_by(p) > 0).count();
            assert_eq!(ft.holders as usize, holders, "step {step}");
        }
        ft.clear();
        assert_eq!((ft.holders, kept_holdings(&ft).len()), (0, 0));
    }
}
