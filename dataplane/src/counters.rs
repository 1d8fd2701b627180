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
    /// An IP packet from a container port with a source address not registered for it.
    SpoofedSource,
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
    /// A container's broadcast or flood that the host's bridge echoed back through the
    /// gateway port (hairpin mode): already delivered once.
    EchoedFlood,
}

impl DropReason {
    /// Number of distinct reasons (the size of the counter array).
    pub const COUNT: usize = Malformed::ALL.len() + 16;

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

/// Per-port traffic.
#[derive(Debug, Default)]
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
    /// Flows re-decided because the policy generation changed.
    pub redecisions: Counter,
    /// ICMP errors admitted as RELATED to a flow.
    pub related: Counter,
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
}

/// All counters of one engine. Share it with `Arc` to read while the engine runs.
#[derive(Debug)]
pub struct Counters {
    ports: Box<[PortCounters]>,
    drops: Box<[Counter]>,
    rules: Box<[Counter]>,
    rule_default: Counter,
    rule_overflow: Counter,
    /// Flow-table activity.
    pub flows: FlowCounters,
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
}

impl Counters {
    /// Counters for ports `0..max_ports`, all zero.
    pub fn new(max_ports: usize) -> Self {
        Self {
            ports: (0..max_ports).map(|_| PortCounters::default()).collect(),
            drops: (0..DropReason::COUNT).map(|_| Counter::default()).collect(),
            rules: (0..RULE_SLOTS).map(|_| Counter::default()).collect(),
            rule_default: Counter::default(),
            rule_overflow: Counter::default(),
            flows: FlowCounters::default(),
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

    /// Counts one dropped frame.
    #[inline]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason.index()].add(1);
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
                .filter_map(|(i, p)| {
                    let s = PortSnapshot {
                        port: i as PortId,
                        rx_packets: p.rx_packets.get(),
                        rx_bytes: p.rx_bytes.get(),
                        tx_packets: p.tx_packets.get(),
                        tx_bytes: p.tx_bytes.get(),
                        fill_starved: p.fill_starved.get(),
                    };
                    (s.rx_packets | s.tx_packets | s.fill_starved != 0).then_some(s)
                })
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
            flows: FlowSnapshot {
                entries: self.flows.entries.get(),
                hits: self.flows.hits.get(),
                misses: self.flows.misses.get(),
                inserts: self.flows.inserts.get(),
                evictions: self.flows.evictions.get(),
                expirations: self.flows.expirations.get(),
                redecisions: self.flows.redecisions.get(),
                related: self.flows.related.get(),
            },
            policy_batches: self.policy.batches.get(),
            policy_records: self.policy.records.get(),
            policy_defaulted: self.policy.defaulted.get(),
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
        }
    }
}

/// One port's traffic at snapshot time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
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
    /// Flow-table activity.
    pub flows: FlowSnapshot,
    /// `Policy::decide` calls.
    pub policy_batches: u64,
    /// Records decided.
    pub policy_records: u64,
    /// Decisions resolved by the default action.
    pub policy_defaulted: u64,
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
}
