//! The dataplane's counters: what passed, what was dropped and why, which rules decided.
//!
//! Why this shape: the hot loop must not lock or allocate, yet the controller reads the
//! counters while the loop runs. Every counter is an `AtomicU64` allocated up front and
//! written by exactly one thread (the worker owning the engine) with a relaxed load + store —
//! no locked read-modify-write, so a counter costs about as much as a plain add — and read by
//! any thread through an `Arc<Counters>`. [`Counters::snapshot`] copies them into plain numbers.
use crate::phy::PortId;
use crate::wire::Malformed;
use rules_wasm::abi::RULE_NONE;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why the dataplane dropped a frame; each has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The frame could not be parsed: see [`Malformed`].
    Malformed(Malformed),
    /// The frame came in on a port the engine does not know.
    UnknownPort,
    /// The destination is the ingress port itself (a frame never goes back out where it came in).
    Hairpin,
    /// The flood had no other port to go to.
    NoEgress,
    /// The policy decided Drop for this packet.
    PolicyDrop,
    /// The policy decided Reject: the frame is dropped and, where allowed and within the
    /// rate limit, answered with a TCP RST or an ICMP error (see the `reject_*` counters).
    PolicyReject,
    /// The policy said Continue and the configured default action is Drop (fail-closed).
    DefaultDrop,
    /// A cached denied flow: the policy said Drop or Reject for this flow recently (a
    /// rejected flow's packets are answered as its first was).
    FlowDenied,
    /// An IP packet from a container port with a source address not registered for it
    /// (IPv6 link-local sources aside), or an ARP packet whose sender address is neither
    /// one of the port's nor 0.0.0.0: neighbour discovery and ARP included, which the
    /// bridge switches without the policy.
    SpoofedSource,
    /// A frame from a container port whose Ethernet source, or ARP sender hardware
    /// address, is not a MAC registered for the port: a container announcing another's MAC
    /// could draw that one's traffic.
    SpoofedMac,
    /// An ethertype other than ARP/IPv4/IPv6 while the engine is configured to drop those.
    NonIpBlocked,
    /// The egress port's transmit queue was full.
    TxFull,
    /// A flood copy, or the copy into the egress port's memory segment, found no free frame
    /// of that segment to copy into.
    NoFreeFrame,
    /// A later fragment of a datagram whose first fragment was denied.
    FragmentDenied,
    /// A later fragment whose first fragment never came (held until the datagram timed out).
    FragmentOrphan,
    /// A fragment overlapping one already seen, or of a datagram with too many fragments:
    /// the whole datagram is dropped.
    FragmentOverlap,
    /// No room to track the fragment's datagram, or to hold it until its first fragment.
    FragmentTableFull,
    /// The policy admitted a new flow but the flow table refused it: every slot it could
    /// take held a confirmed connection of a port within its fair share of the table, which
    /// a newcomer must not cut (see [`crate::flow::FlowTable::decide`]). The packet is
    /// dropped because its flow's replies could not be recognised; its sender retries.
    FlowTableFull,
    /// A container's broadcast or flood that the host's bridge echoed back through the
    /// gateway port (hairpin mode): already delivered once.
    EchoedFlood,
    /// An IPv6 router advertisement or redirect from a container's port: on Docker's bridge
    /// the gateway is the router, and a container announcing itself as one would take its
    /// neighbours' traffic.
    RouterMessage,
    /// A unicast frame addressed to a MAC registered on a port of another Docker network:
    /// each network is an L2 domain of its own, and nothing crosses between two inside the
    /// dataplane (traffic between networks goes through the host, as Docker routes it).
    CrossNetwork,
}

impl DropReason {
    /// Number of distinct reasons (the size of the counter array).
    pub const COUNT: usize = Malformed::ALL.len() + 20;

    /// Every reason, in counter order.
    pub fn all() -> impl Iterator<Item = DropReason> {
        Malformed::ALL
            .iter()
            .map(|m| DropReason::Malformed(*m))
            .chain([
                DropReason::UnknownPort,
                DropReason::Hairpin,
                DropReason::NoEgress,
                DropReason::PolicyDrop,
                DropReason::PolicyReject,
                DropReason::DefaultDrop,
                DropReason::FlowDenied,
                DropReason::SpoofedSource,
                DropReason::NonIpBlocked,
                DropReason::TxFull,
                DropReason::NoFreeFrame,
                DropReason::FragmentDenied,
                DropReason::FragmentOrphan,
                DropReason::FragmentOverlap,
                DropReason::FragmentTableFull,
                DropReason::EchoedFlood,
                DropReason::FlowTableFull,
                DropReason::SpoofedMac,
                DropReason::RouterMessage,
                DropReason::CrossNetwork,
            ])
    }

    /// Position in the counter array.
    #[inline]
    pub fn index(self) -> usize {
        let m = Malformed::ALL.len();
        match self {
            DropReason::Malformed(x) => x as usize,
            DropReason::UnknownPort => m,
            DropReason::Hairpin => m + 1,
            DropReason::NoEgress => m + 2,
            DropReason::PolicyDrop => m + 3,
            DropReason::PolicyReject => m + 4,
            DropReason::DefaultDrop => m + 5,
            DropReason::FlowDenied => m + 6,
            DropReason::SpoofedSource => m + 7,
            DropReason::NonIpBlocked => m + 8,
            DropReason::TxFull => m + 9,
            DropReason::NoFreeFrame => m + 10,
            DropReason::FragmentDenied => m + 11,
            DropReason::FragmentOrphan => m + 12,
            DropReason::FragmentOverlap => m + 13,
            DropReason::FragmentTableFull => m + 14,
            DropReason::EchoedFlood => m + 15,
            DropReason::FlowTableFull => m + 16,
            DropReason::SpoofedMac => m + 17,
            DropReason::RouterMessage => m + 18,
            DropReason::CrossNetwork => m + 19,
        }
    }

    /// A stable snake_case name for metrics and tables.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed(Malformed::Truncated) => "truncated",
            DropReason::Malformed(Malformed::VlanStack) => "vlan_stack",
            DropReason::Malformed(Malformed::BadArp) => "bad_arp",
            DropReason::Malformed(Malformed::BadIpVersion) => "bad_ip_version",
            DropReason::Malformed(Malformed::BadIhl) => "bad_ihl",
            DropReason::Malformed(Malformed::BadTotalLength) => "bad_total_length",
            DropReason::Malformed(Malformed::ExtHeaderChainTooLong) => "ext_header_chain_too_long",
            DropReason::Malformed(Malformed::BadTcpHeader) => "bad_tcp_header",
            DropReason::Malformed(Malformed::BadUdpLength) => "bad_udp_length",
            DropReason::UnknownPort => "unknown_port",
            DropReason::Hairpin => "hairpin",
            DropReason::NoEgress => "no_egress",
            DropReason::PolicyDrop => "policy_drop",
            DropReason::PolicyReject => "policy_reject",
            DropReason::DefaultDrop => "default_drop",
            DropReason::FlowDenied => "flow_denied",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NonIpBlocked => "non_ip_blocked",
            DropReason::TxFull => "tx_full",
            DropReason::NoFreeFrame => "no_free_frame",
            DropReason::FragmentDenied => "fragment_denied",
            DropReason::FragmentOrphan => "fragment_orphan",
            DropReason::FragmentOverlap => "fragment_overlap",
            DropReason::FragmentTableFull => "fragment_table_full",
            DropReason::EchoedFlood => "echoed_flood",
            DropReason::FlowTableFull => "flow_table_full",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::RouterMessage => "router_message",
            DropReason::CrossNetwork => "cross_network",
        }
    }
}

impl From<Malformed> for DropReason {
    fn from(m: Malformed) -> Self {
        DropReason::Malformed(m)
    }
}

/// Rule ids with their own counter; larger ids share the overflow bucket.
pub const RULE_SLOTS: usize = 65536;

/// A counter written by one thread and read by any: relaxed load + store instead of a locked
/// add, which is correct only because the engine's thread is the single writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (single writer).
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// Subtracts `n` (single writer): the down side of a gauge kept by increments, such as a
    /// port's live flows, which the flow table adjusts as flows come and go.
    #[inline(always)]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }

    /// Sets the value (gauges such as the flow-table size).
    #[inline(always)]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    /// Reads the value from any thread.
    #[inline(always)]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Per-port traffic, drops and policy decisions: what `bridgewall stats` shows per container.
/// Drops and decisions are counted by the port a frame came in on (decisions by the port the
/// policy saw it enter by: a container's own, for a frame the host sent back onto the bridge).
#[derive(Debug)]
pub struct PortCounters {
    /// Frames received.
    pub rx_packets: Counter,
    /// Bytes received.
    pub rx_bytes: Counter,
    /// Frames queued for transmit.
    pub tx_packets: Counter,
    /// Bytes queued for transmit.
    pub tx_bytes: Counter,
    /// Times the port's receive side was short of its frame share and no free frame was
    /// left to give it: the port was starved (the kernel then drops what arrives).
    pub fill_starved: Counter,
    /// Policy decisions that admitted a flow entering here (or an ICMP error about one).
    pub accepted: Counter,
    /// Policy decisions that denied (Drop, Reject, or the default Drop) and were enforced.
    pub denied: Counter,
    /// Policy decisions that would have denied but were not enforced: audit mode forwarded
    /// the packet (see [`Counters::audit_denied`]).
    pub audit_denied: Counter,
    /// Flows in the flow table whose originator entered by this port (a gauge kept by the
    /// flow table: +1 on insert, −1 on expiry, eviction or removal; expired flows not yet
    /// swept still count, as in [`FlowCounters::entries`]).
    pub flows: Counter,
    /// Frames that came in here and were dropped, per [`DropReason::index`].
    drops: [Counter; DropReason::COUNT],
}

impl Default for PortCounters {
    fn default() -> Self {
        Self {
            rx_packets: Counter::default(),
            rx_bytes: Counter::default(),
            tx_packets: Counter::default(),
            tx_bytes: Counter::default(),
            fill_starved: Counter::default(),
            accepted: Counter::default(),
            denied: Counter::default(),
            audit_denied: Counter::default(),
            flows: Counter::default(),
            drops: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl PortCounters {
    /// Counts one frame that came in on this port and was dropped for `reason`.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].add(1);
    }

    /// Frames that came in on this port and were dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].get()
    }

    fn snapshot(&self, port: PortId) -> PortSnapshot {
        PortSnapshot {
            port,
            rx_packets: self.rx_packets.get(),
            rx_bytes: self.rx_bytes.get(),
            tx_packets: self.tx_packets.get(),
            tx_bytes: self.tx_bytes.get(),
            fill_starved: self.fill_starved.get(),
            accepted: self.accepted.get(),
            denied: self.denied.get(),
            audit_denied: self.audit_denied.get(),
            flows: self.flows.get(),
            drops: std::array::from_fn(|i| self.drops[i].get()),
        }
    }
}

/// The tiered datapath's activity (see [`crate::offload`]): what crossed the upcall port,
/// what the kernel flow cache was asked for, and what it forwarded or dropped itself (read
/// back at each sync).
#[derive(Debug, Default)]
pub struct OffloadCounters {
    /// Frames received on the upcall port.
    pub upcalls: Counter,
    /// Of those, frames without a valid tag (dropped).
    pub upcalls_untagged: Counter,
    /// Flows given kernel entries (both directions).
    pub installed: Counter,
    /// Requests the kernel carried out.
    pub applied: Counter,
    /// Requests refused because the kernel's flow map was full (the flow stays in userspace).
    pub refused_full: Counter,
    /// Requests that failed otherwise.
    pub failed: Counter,
    /// Kernel entries removed at a sync because the engine no longer owned them.
    pub reconciled: Counter,
    /// Packets the kernel forwarded for offloaded flows.
    pub kernel_forwarded: Counter,
    /// Their bytes.
    pub kernel_forwarded_bytes: Counter,
    /// Packets the kernel dropped by drop entries (denied flows).
    pub kernel_dropped: Counter,
    /// The kernel program's own counters at the last sync (gauges of its running totals).
    pub kernel: KernelPathCounters,
}

/// [`crate::offload::KernelPathStats`] as the worker last read them.
#[derive(Debug, Default)]
pub struct KernelPathCounters {
    /// See [`crate::offload::KernelPathStats::upcall_miss`].
    pub upcall_miss: Counter,
    /// See [`crate::offload::KernelPathStats::upcall_unparsed`].
    pub upcall_unparsed: Counter,
    /// See [`crate::offload::KernelPathStats::upcall_flags`].
    pub upcall_flags: Counter,
    /// See [`crate::offload::KernelPathStats::upcall_stale`].
    pub upcall_stale: Counter,
    /// See [`crate::offload::KernelPathStats::upcall_truncated`].
    pub upcall_truncated: Counter,
    /// See [`crate::offload::KernelPathStats::upcall_failed`].
    pub upcall_failed: Counter,
    /// See [`crate::offload::KernelPathStats::redirect_failed`].
    pub redirect_failed: Counter,
    /// See [`crate::offload::KernelPathStats::unknown_port`].
    pub unknown_port: Counter,
}

impl KernelPathCounters {
    /// Stores the kernel program's counters read at a sync.
    pub fn store(&self, s: &crate::offload::KernelPathStats) {
        self.upcall_miss.set(s.upcall_miss);
        self.upcall_unparsed.set(s.upcall_unparsed);
        self.upcall_flags.set(s.upcall_flags);
        self.upcall_stale.set(s.upcall_stale);
        self.upcall_truncated.set(s.upcall_truncated);
        self.upcall_failed.set(s.upcall_failed);
        self.redirect_failed.set(s.redirect_failed);
        self.unknown_port.set(s.unknown_port);
    }

    fn snapshot(&self) -> crate::offload::KernelPathStats {
        crate::offload::KernelPathStats {
            upcall_miss: self.upcall_miss.get(),
            upcall_unparsed: self.upcall_unparsed.get(),
            upcall_flags: self.upcall_flags.get(),
            upcall_stale: self.upcall_stale.get(),
            upcall_truncated: self.upcall_truncated.get(),
            upcall_failed: self.upcall_failed.get(),
            redirect_failed: self.redirect_failed.get(),
            unknown_port: self.unknown_port.get(),
        }
    }
}

/// [`OffloadCounters`] at snapshot time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OffloadSnapshot {
    /// See [`OffloadCounters::upcalls`].
    pub upcalls: u64,
    /// See [`OffloadCounters::upcalls_untagged`].
    pub upcalls_untagged: u64,
    /// See [`OffloadCounters::installed`].
    pub installed: u64,
    /// See [`OffloadCounters::applied`].
    pub applied: u64,
    /// See [`OffloadCounters::refused_full`].
    pub refused_full: u64,
    /// See [`OffloadCounters::failed`].
    pub failed: u64,
    /// See [`OffloadCounters::reconciled`].
    pub reconciled: u64,
    /// See [`OffloadCounters::kernel_forwarded`].
    pub kernel_forwarded: u64,
    /// See [`OffloadCounters::kernel_forwarded_bytes`].
    pub kernel_forwarded_bytes: u64,
    /// See [`OffloadCounters::kernel_dropped`].
    pub kernel_dropped: u64,
    /// See [`OffloadCounters::kernel`].
    pub kernel: crate::offload::KernelPathStats,
}

impl OffloadCounters {
    fn snapshot(&self) -> OffloadSnapshot {
        OffloadSnapshot {
            upcalls: self.upcalls.get(),
            upcalls_untagged: self.upcalls_untagged.get(),
            installed: self.installed.get(),
            applied: self.applied.get(),
            refused_full: self.refused_full.get(),
            failed: self.failed.get(),
            reconciled: self.reconciled.get(),
            kernel_forwarded: self.kernel_forwarded.get(),
            kernel_forwarded_bytes: self.kernel_forwarded_bytes.get(),
            kernel_dropped: self.kernel_dropped.get(),
            kernel: self.kernel.snapshot(),
        }
    }
}

/// Flow-table activity.
#[derive(Debug, Default)]
pub struct FlowCounters {
    /// Entries in the table now (a gauge).
    pub entries: Counter,
    /// Packets that found their flow.
    pub hits: Counter,
    /// Packets that found no (live) flow.
    pub misses: Counter,
    /// Flows inserted.
    pub inserts: Counter,
    /// Live flows pushed out to make room (the table was full in their probe window).
    pub evictions: Counter,
    /// Flows that timed out.
    pub expirations: Counter,
    /// New flows the full table refused rather than evict a confirmed connection of a port
    /// within its fair share (a gauge of the table's cumulative count): an admitted packet
    /// is then dropped as [`DropReason::FlowTableFull`], a denial is not cached.
    pub refused: Counter,
    /// Flows re-decided because the policy generation changed.
    pub redecisions: Counter,
    /// ICMP errors admitted as RELATED to a flow.
    pub related: Counter,
}

/// Upper bounds of the policy-latency buckets are `2^LATENCY_FIRST_SHIFT` ..
/// `2^LATENCY_LAST_SHIFT` nanoseconds (64 ns .. ~16.8 ms), then +Inf: log2 steps cover
/// a compiled policy's microseconds and a slow module's milliseconds in 20 counters.
const LATENCY_FIRST_SHIFT: u32 = 6;
const LATENCY_LAST_SHIFT: u32 = 24;

/// Number of policy-latency buckets, the last one +Inf.
pub const LATENCY_BUCKETS: usize = (LATENCY_LAST_SHIFT - LATENCY_FIRST_SHIFT) as usize + 2;

/// The bucket of a `Policy::decide` call that took `ns` nanoseconds: the first whose upper
/// bound (inclusive) is ≥ `ns`. A few instructions: no loop, no float.
#[inline]
fn latency_bucket(ns: u64) -> usize {
    // ceil(log2(ns)) for ns ≥ 2; 0 and 1 land in the first bucket with everything ≤ 64.
    let bits = 64 - ns.saturating_sub(1).leading_zeros();
    (bits.saturating_sub(LATENCY_FIRST_SHIFT) as usize).min(LATENCY_BUCKETS - 1)
}

/// The inclusive upper bound of latency bucket `i` in nanoseconds; `u64::MAX` for +Inf.
fn latency_bound(i: usize) -> u64 {
    if i + 1 >= LATENCY_BUCKETS {
        u64::MAX
    } else {
        1 << (LATENCY_FIRST_SHIFT + i as u32)
    }
}

/// Policy-stage activity.
#[derive(Debug, Default)]
pub struct PolicyCounters {
    /// `Policy::decide` calls.
    pub batches: Counter,
    /// Records decided.
    pub records: Counter,
    /// Decisions that fell through to the engine's default action.
    pub defaulted: Counter,
    /// The generation of the policy the engine judges with now (a gauge), so the control
    /// thread can tell when a swap has taken effect.
    pub generation: Counter,
    /// `Policy::decide` calls per duration bucket (see [`LATENCY_BUCKETS`]): how long a
    /// batch of new flows waits for its verdicts, for a latency histogram in the metrics.
    latency: [Counter; LATENCY_BUCKETS],
    /// Total nanoseconds spent in `Policy::decide` (the histogram's sum).
    latency_sum_ns: Counter,
}

impl PolicyCounters {
    /// Records one `Policy::decide` call that took `ns` nanoseconds (once per batch).
    #[inline]
    pub fn observe_latency(&self, ns: u64) {
        self.latency[latency_bucket(ns)].add(1);
        self.latency_sum_ns.add(ns);
    }

    /// The latency histogram: (inclusive upper bound in ns, `u64::MAX` for +Inf; calls in
    /// that bucket, not cumulative).
    pub fn latency_buckets(&self) -> Vec<(u64, u64)> {
        self.latency
            .iter()
            .enumerate()
            .map(|(i, c)| (latency_bound(i), c.get()))
            .collect()
    }
}

/// The traffic slot of rule `rule` (see `Counters::rule_traffic`).
#[inline]
fn traffic_slot(rule: u32) -> usize {
    if rule == RULE_NONE {
        RULE_SLOTS + 1
    } else {
        (rule as usize).min(RULE_SLOTS)
    }
}

/// The rule id a traffic slot reports.
fn slot_rule(slot: usize) -> u32 {
    if slot == RULE_SLOTS + 1 {
        RULE_NONE
    } else {
        slot as u32
    }
}

/// All counters of one engine. Share it with `Arc` to read while the engine runs.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
    drops: Box<[Counter]>,
    rules: Box<[Counter]>,
    rule_default: Counter,
    rule_overflow: Counter,
    /// Per rule: packets and bytes that got its verdict, interleaved (`2i`, `2i + 1`);
    /// slot `RULE_SLOTS` is the overflow, `RULE_SLOTS + 1` the default.
    rule_traffic: Box<[Counter]>,
    /// Flow-table activity.
    pub flows: FlowCounters,
    /// Tiered-datapath activity.
    pub offload: OffloadCounters,
    /// Policy-stage activity.
    pub policy: PolicyCounters,
    /// Frames forwarded without a policy decision because they are ARP, IPv6 neighbour
    /// discovery or another non-IP ethertype (switched like a bridge does).
    pub switched_without_policy: Counter,
    /// Flood copies made.
    pub flood_copies: Counter,
    /// Frames copied into the egress port's memory segment (ports of different UMEM
    /// segments cannot pass descriptors).
    pub segment_copies: Counter,
    /// ARP requests sent to the port owning the target address instead of flooded.
    pub arp_directed: Counter,
    /// Later fragments forwarded after their datagram's first fragment.
    pub fragments_forwarded: Counter,
    /// Later fragments held until their first fragment arrived.
    pub fragments_held: Counter,
    /// Replies sent back through the host because their flow came through it (a container
    /// reaching another by a published port).
    pub via_host: Counter,
    /// Rejected packets answered with a TCP RST.
    pub reject_tcp_reset: Counter,
    /// Rejected packets answered with an ICMP or ICMPv6 destination unreachable.
    pub reject_icmp: Counter,
    /// Rejected packets not answered because answers were over their rate limit.
    pub reject_rate_limited: Counter,
    /// Rejected packets that must not be answered: ICMP errors, RSTs, non-first fragments,
    /// broadcast/multicast/unspecified addresses, non-IP frames.
    pub reject_not_answerable: Counter,
    /// Rejected packets not answered because no free frame was left to build the answer in.
    pub reject_no_free_frame: Counter,
    /// Nanoseconds the worker owning this engine slept waiting for frames: with the time
    /// it has run, how busy it is (`stats`' busy share).
    pub sleep_ns: Counter,
    /// Policy decisions other than Accept that audit mode did not enforce: the packet was
    /// forwarded and its flow admitted, so an operator can try a policy without breaking
    /// traffic and see what it would deny.
    pub audit_denied: Counter,
}

impl Counters {
    /// Counters for ports `0..max_ports`, all zero.
    pub fn new(max_ports: usize) -> Self {
        Self {
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            drops: (0..DropReason::COUNT).map(|_| Counter::default()).collect(),
            rules: (0..RULE_SLOTS).map(|_| Counter::default()).collect(),
            rule_traffic: (0..2 * (RULE_SLOTS + 2))
                .map(|_| Counter::default())
                .collect(),
            rule_default: Counter::default(),
            rule_overflow: Counter::default(),
            flows: FlowCounters::default(),
            offload: OffloadCounters::default(),
            policy: PolicyCounters::default(),
            switched_without_policy: Counter::default(),
            flood_copies: Counter::default(),
            segment_copies: Counter::default(),
            arp_directed: Counter::default(),
            fragments_forwarded: Counter::default(),
            fragments_held: Counter::default(),
            via_host: Counter::default(),
            reject_tcp_reset: Counter::default(),
            reject_icmp: Counter::default(),
            reject_rate_limited: Counter::default(),
            reject_not_answerable: Counter::default(),
            reject_no_free_frame: Counter::default(),
            sleep_ns: Counter::default(),
            audit_denied: Counter::default(),
        }
    }

    /// Number of ports these counters cover.
    pub fn max_ports(&self) -> usize {
        self.ports.len()
    }

    /// The counters of `port`, if in range.
    #[inline]
    pub fn port(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(usize::from(port))
    }

    /// Counts one dropped frame whose ingress port is not known (a frame handed over by
    /// another worker): in the totals only. See [`Counters::count_drop_at`].
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].add(1);
    }

    /// Counts `n` frames that came in on `port` and were dropped for `reason` elsewhere (by
    /// the kernel fast path's drop entries), as [`Counters::count_drop_at`] does one.
    #[inline]
    pub fn count_drops_at(&self, reason: DropReason, port: PortId, n: u64) {
        self.drops[reason.index()].add(n);
        if let Some(p) = self.port(port) {
            p.drops[reason.index()].add(n);
        }
    }

    /// Counts one dropped frame that came in on `port`: in the totals and in the port's
    /// counters (a port out of range counts in the totals only).
    #[inline]
    pub fn count_drop_at(&self, reason: DropReason, port: PortId) {
        self.count_drop(reason);
        if let Some(p) = self.port(port) {
            p.count_drop(reason);
        }
    }

    /// Frames dropped for `reason` so far.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()].get()
    }

    /// Counts one policy decision made by rule `rule` ([`RULE_NONE`]: a default decided).
    #[inline]
    pub fn rule(&self, rule: u32) {
        self.rule_counter(rule).add(1);
    }

    /// Decisions made by rule `rule`; ids ≥ [`RULE_SLOTS`] share one overflow bucket.
    pub fn rule_hits(&self, rule: u32) -> u64 {
        self.rule_counter(rule).get()
    }

    /// Counts `packets` packets of `bytes` bytes in all that got rule `rule`'s verdict (the
    /// kernel fast path forwarded them by their flow's entry).
    #[inline]
    pub fn rule_traffic_n(&self, rule: u32, packets: u64, bytes: u64) {
        let slot = traffic_slot(rule);
        self.rule_traffic[2 * slot].add(packets);
        self.rule_traffic[2 * slot + 1].add(bytes);
    }

    /// Counts one packet of `bytes` that got rule `rule`'s verdict: the first of its flow,
    /// or a later one by its flow's cached verdict (what `iptables -L -v` counts per rule).
    #[inline]
    pub fn rule_traffic(&self, rule: u32, bytes: u64) {
        let slot = traffic_slot(rule);
        self.rule_traffic[2 * slot].add(1);
        self.rule_traffic[2 * slot + 1].add(bytes);
    }

    #[inline]
    fn rule_counter(&self, rule: u32) -> &Counter {
        if rule == RULE_NONE {
            &self.rule_default
        } else {
            self.rules.get(rule as usize).unwrap_or(&self.rule_overflow)
        }
    }

    /// Copies every counter into plain numbers (non-zero rules and ports only).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            ports: self
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| p.snapshot(i as PortId))
                .filter(PortSnapshot::active)
                .collect(),
            drops: DropReason::all()
                .map(|r| (r, self.drops(r)))
                .filter(|(_, n)| *n != 0)
                .collect(),
            rules: self
                .rules
                .iter()
                .enumerate()
                .filter(|(_, c)| c.get() != 0)
                .map(|(i, c)| (i as u32, c.get()))
                .collect(),
            rule_default: self.rule_default.get(),
            rule_overflow: self.rule_overflow.get(),
            rule_traffic: self
                .rule_traffic
                .chunks_exact(2)
                .enumerate()
                .filter(|(_, c)| c[0].get() != 0)
                .map(|(i, c)| (slot_rule(i), c[0].get(), c[1].get()))
                .collect(),
            offload: self.offload.snapshot(),
            flows: FlowSnapshot {
                entries: self.flows.entries.get(),
                hits: self.flows.hits.get(),
                misses: self.flows.misses.get(),
                inserts: self.flows.inserts.get(),
                evictions: self.flows.evictions.get(),
                expirations: self.flows.expirations.get(),
                refused: self.flows.refused.get(),
                redecisions: self.flows.redecisions.get(),
                related: self.flows.related.get(),
            },
            policy_batches: self.policy.batches.get(),
            policy_records: self.policy.records.get(),
            policy_defaulted: self.policy.defaulted.get(),
            policy_latency_buckets: self.policy.latency_buckets(),
            policy_latency_sum_ns: self.policy.latency_sum_ns.get(),
            switched_without_policy: self.switched_without_policy.get(),
            flood_copies: self.flood_copies.get(),
            segment_copies: self.segment_copies.get(),
            arp_directed: self.arp_directed.get(),
            fragments_forwarded: self.fragments_forwarded.get(),
            fragments_held: self.fragments_held.get(),
            via_host: self.via_host.get(),
            reject_tcp_reset: self.reject_tcp_reset.get(),
            reject_icmp: self.reject_icmp.get(),
            reject_rate_limited: self.reject_rate_limited.get(),
            reject_not_answerable: self.reject_not_answerable.get(),
            reject_no_free_frame: self.reject_no_free_frame.get(),
            sleep_ns: self.sleep_ns.get(),
            audit_denied: self.audit_denied.get(),
        }
    }
}

/// One port's traffic, drops and decisions at snapshot time (see [`PortCounters`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSnapshot {
    /// The port.
    pub port: PortId,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames queued for transmit.
    pub tx_packets: u64,
    /// Bytes queued for transmit.
    pub tx_bytes: u64,
    /// Times the port was starved of receive frames.
    pub fill_starved: u64,
    /// Policy decisions that admitted a flow entering here.
    pub accepted: u64,
    /// Enforced policy denials of packets entering here.
    pub denied: u64,
    /// Denials audit mode did not enforce.
    pub audit_denied: u64,
    /// Flows in the table originated by this port (a gauge).
    pub flows: u64,
    /// Frames that came in here and were dropped, per [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
}

impl Default for PortSnapshot {
    fn default() -> Self {
        Self {
            port: 0,
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            fill_starved: 0,
            accepted: 0,
            denied: 0,
            audit_denied: 0,
            flows: 0,
            drops: [0; DropReason::COUNT],
        }
    }
}

impl PortSnapshot {
    /// Frames that came in on the port and were dropped, for any reason.
    pub fn dropped(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Frames that came in on the port and were dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason.index()]
    }

    /// The non-zero drop counters, by reason (for tables and labelled metrics).
    pub fn drop_reasons(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::all()
            .map(|r| (r, self.drops(r)))
            .filter(|(_, n)| *n != 0)
    }

    /// Whether the port saw anything at all: snapshots leave idle ports out.
    fn active(&self) -> bool {
        self.rx_packets
            | self.tx_packets
            | self.fill_starved
            | self.accepted
            | self.denied
            | self.audit_denied
            | self.flows
            != 0
            || self.drops.iter().any(|&n| n != 0)
    }
}

/// Flow-table activity at snapshot time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowSnapshot {
    /// Entries in the table.
    pub entries: u64,
    /// Lookups that found their flow.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Flows inserted.
    pub inserts: u64,
    /// Live flows evicted for room.
    pub evictions: u64,
    /// Flows timed out.
    pub expirations: u64,
    /// New flows refused by the full table (see [`FlowCounters::refused`]).
    pub refused: u64,
    /// Flows re-decided after a policy change.
    pub redecisions: u64,
    /// ICMP errors admitted as RELATED.
    pub related: u64,
}

/// Plain-number copy of [`Counters`], for metrics and tests.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Ports with traffic.
    pub ports: Vec<PortSnapshot>,
    /// Non-zero drop counters.
    pub drops: Vec<(DropReason, u64)>,
    /// Non-zero per-rule decision counters (rule id, decisions).
    pub rules: Vec<(u32, u64)>,
    /// Decisions made with no rule ([`RULE_NONE`]).
    pub rule_default: u64,
    /// Decisions by rules with ids ≥ [`RULE_SLOTS`].
    pub rule_overflow: u64,
    /// Non-zero per-rule traffic: (rule id, packets, bytes) of every packet that got the
    /// rule's verdict, flow-table hits included; ids ≥ [`RULE_SLOTS`] are reported as
    /// `RULE_SLOTS`, the default as [`RULE_NONE`].
    pub rule_traffic: Vec<(u32, u64, u64)>,
    /// Flow-table activity.
    pub flows: FlowSnapshot,
    /// Tiered-datapath activity.
    pub offload: OffloadSnapshot,
    /// `Policy::decide` calls.
    pub policy_batches: u64,
    /// Records decided.
    pub policy_records: u64,
    /// Decisions resolved by the default action.
    pub policy_defaulted: u64,
    /// `Policy::decide` durations: (inclusive upper bound in ns, `u64::MAX` for +Inf; calls
    /// in that bucket, not cumulative), in increasing bound order.
    pub policy_latency_buckets: Vec<(u64, u64)>,
    /// Total nanoseconds spent in `Policy::decide`.
    pub policy_latency_sum_ns: u64,
    /// Frames switched without a policy decision (ARP, ND, other ethertypes).
    pub switched_without_policy: u64,
    /// Flood copies made.
    pub flood_copies: u64,
    /// Frames copied between memory segments.
    pub segment_copies: u64,
    /// ARP requests sent to their target's port alone.
    pub arp_directed: u64,
    /// Later fragments forwarded after their first fragment.
    pub fragments_forwarded: u64,
    /// Later fragments held for their first fragment.
    pub fragments_held: u64,
    /// Replies sent back through the host.
    pub via_host: u64,
    /// Rejects answered with a TCP RST.
    pub reject_tcp_reset: u64,
    /// Rejects answered with an ICMP/ICMPv6 error.
    pub reject_icmp: u64,
    /// Reject answers suppressed by the rate limit.
    pub reject_rate_limited: u64,
    /// Rejects of packets that must not be answered.
    pub reject_not_answerable: u64,
    /// Reject answers not sent for want of a free frame.
    pub reject_no_free_frame: u64,
    /// Nanoseconds the worker slept waiting for frames.
    pub sleep_ns: u64,
    /// Policy denials audit mode did not enforce.
    pub audit_denied: u64,
}

impl Snapshot {
    /// Drops for `reason` (0 when none).
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// The traffic of `port` (zeros when none).
    pub fn port(&self, port: PortId) -> PortSnapshot {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .copied()
            .unwrap_or(PortSnapshot {
                port,
                ..Default::default()
            })
    }

    /// Total frames dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }

    /// The reject-answer counters by their stable snake_case names, for metrics and tables
    /// (a reject is counted once as a `policy_reject` or `flow_denied` drop, and once here by
    /// what became of its answer).
    pub fn reject_answers(&self) -> [(&'static str, u64); 5] {
        [
            ("reject_tcp_reset", self.reject_tcp_reset),
            ("reject_icmp", self.reject_icmp),
            ("reject_rate_limited", self.reject_rate_limited),
            ("reject_not_answerable", self.reject_not_answerable),
            ("reject_no_free_frame", self.reject_no_free_frame),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_indices_are_dense_and_distinct() {
        let idx: Vec<usize> = DropReason::all().map(DropReason::index).collect();
        assert_eq!(idx, (0..DropReason::COUNT).collect::<Vec<_>>());
    }

    #[test]
    fn rule_traffic_counts_packets_and_bytes_by_rule() {
        let c = Counters::new(2);
        c.rule_traffic(3, 100);
        c.rule_traffic(3, 60);
        c.rule_traffic(RULE_NONE, 42);
        c.rule_traffic(RULE_SLOTS as u32 + 9, 1);
        let s = c.snapshot();
        assert_eq!(
            s.rule_traffic,
            vec![(3, 2, 160), (RULE_SLOTS as u32, 1, 1), (RULE_NONE, 1, 42)]
        );
    }

    #[test]
    fn rule_ids_beyond_slots_share_overflow() {
        let c = Counters::new(4);
        c.rule(7);
        c.rule(RULE_SLOTS as u32 + 5);
        c.rule(RULE_NONE);
        let s = c.snapshot();
        assert_eq!(s.rules, vec![(7, 1)]);
        assert_eq!((s.rule_overflow, s.rule_default), (1, 1));
    }

    #[test]
    fn counters_are_readable_from_another_thread() {
        let c = std::sync::Arc::new(Counters::new(2));
        c.port(1).unwrap().rx_packets.add(3);
        let r = std::sync::Arc::clone(&c);
        let seen = std::thread::spawn(move || r.snapshot().port(1).rx_packets)
            .join()
            .unwrap();
        assert_eq!(seen, 3);
    }

    #[test]
    fn latency_buckets_are_log2_with_inclusive_bounds() {
        assert_eq!(LATENCY_BUCKETS, 20);
        for (ns, bucket) in [
            (0, 0),
            (1, 0),
            (64, 0),
            (65, 1),
            (128, 1),
            (129, 2),
            (1 << 24, 18),
            ((1 << 24) + 1, 19),
            (u64::MAX, 19),
        ] {
            assert_eq!(latency_bucket(ns), bucket, "{ns} ns");
            assert!(
                ns <= latency_bound(bucket),
                "{ns} ns above its bucket's bound"
            );
        }
        let c = Counters::new(1);
        for ns in [10, 100, 100, 1 << 30] {
            c.policy.observe_latency(ns);
        }
        let s = c.snapshot();
        assert_eq!(s.policy_latency_buckets.len(), LATENCY_BUCKETS);
        assert_eq!(s.policy_latency_buckets[0], (64, 1));
        assert_eq!(s.policy_latency_buckets[1], (128, 2));
        assert_eq!(s.policy_latency_buckets[19], (u64::MAX, 1));
        assert_eq!(s.policy_latency_sum_ns, 210 + (1 << 30));
    }

    #[test]
    fn drops_are_counted_per_port_and_in_the_totals() {
        let c = Counters::new(4);
        c.count_drop_at(DropReason::SpoofedSource, 2);
        c.count_drop_at(DropReason::PolicyDrop, 2);
        c.count_drop_at(DropReason::PolicyDrop, 9); // out of range: totals only
        c.count_drop(DropReason::TxFull); // unknown ingress: totals only
        let s = c.snapshot();
        assert_eq!(s.total_drops(), 4);
        assert_eq!(s.drops(DropReason::PolicyDrop), 2);
        // Only the port with activity is listed, though it received nothing.
        assert_eq!(s.ports.iter().map(|p| p.port).collect::<Vec<_>>(), vec![2]);
        let p = s.port(2);
        assert_eq!(p.dropped(), 2);
        assert_eq!(p.drops(DropReason::SpoofedSource), 1);
        assert_eq!(
            p.drop_reasons().collect::<Vec<_>>(),
            vec![(DropReason::PolicyDrop, 1), (DropReason::SpoofedSource, 1)]
        );
        assert_eq!(
            s.port(3),
            PortSnapshot {
                port: 3,
                ..PortSnapshot::default()
            }
        );
    }

    #[test]
    fn a_gauge_goes_down_with_sub() {
        let c = Counters::new(2);
        let flows = &c.port(1).unwrap().flows;
        flows.add(3);
        flows.sub(2);
        assert_eq!(c.snapshot().port(1).flows, 1);
        flows.sub(1);
        assert!(
            c.snapshot().ports.is_empty(),
            "an idle port is left out again"
        );
    }
}
