//! The engine: the sans-IO core that turns received frames into transmitted ones.
//!
//! Per frame: parse ([`crate::wire`]) → pick the egress ([`crate::switch`]) → look the flow up
//! ([`crate::flow`]) → forward on a hit; collect misses and ask the [`Policy`] about them in
//! one call per batch (≤ [`MAX_BATCH`]), cache the verdicts in the flow table, then forward or
//! drop — and answer a rejected packet ([`crate::reject`]) out of the port it came in by,
//! within a rate limit. ARP, IPv6 neighbour discovery and other non-IP frames are switched
//! without a policy decision, like a bridge (Docker's iptables never sees them) — but only
//! after the source guard: a container's frames must carry its own MAC, and its IP packets,
//! ARP and neighbour discovery its own addresses.
//!
//! Under a flood the work per port is bounded by the ports, not the flooder: each port is
//! received one batch at a time, and its misses are decided in that batch's policy call, so
//! a port's new flows are decided in the round they arrive whatever another port sends; the
//! flow table's eviction (see [`crate::flow`]) keeps a flooder churning its own flows.
//!
//! The engine performs no I/O: frames come in as descriptors into a [`FrameMemory`] and leave
//! through per-port transmit queues; time is the `now` argument (nanoseconds, any monotonic
//! origin). The only clocks it reads are a monotonic one around each policy call (twice per
//! batch, for the latency histogram) and, while someone watches its verdict [`events`], the
//! wall clock once per batch to stamp them. It owns the [`FreeList`] of the frames not held
//! elsewhere, so every frame is always accounted for. Everything it needs per packet is
//! allocated when it is built: processing allocates nothing, takes no lock and logs nothing.
//!
//! One engine serves every Docker bridge network of a host. Each port belongs to a network
//! ([`PortConfig::network`]), an L2 domain with its own gateway port (the port to that
//! network's kernel bridge); nothing is switched from a port of one network to a port of
//! another (see [`crate::switch`]), and everything the engine looks up by address — who owns
//! an IP (directed ARP, frames the host sends back onto a bridge), the gateway replies go back
//! through, the flow table — is looked up within the ingress port's network.
//!
//! Audit mode ([`EngineConfig::audit`], [`Engine::set_audit`]) runs the policy without
//! enforcing it: a denial is counted, emitted as an event and otherwise treated as an accept,
//! so an operator can see what a policy would break before it does.
//!
//! [`events`]: crate::events
use crate::counters::{Counters, DropReason};
use crate::events::{EVENT_RING_CAPACITY, EventProducer, EventRing, Outcome, VerdictEvent};
use crate::flow::{
    Decision, Dir, FirstPacket, FlowEntry, FlowTable, HashedKey, Timeouts, Tracking, Verdict,
    tracking,
};
use crate::frag::{FragConfig, FragDrop, FragKey, FragTable, FragVerdict, LaterOutcome, Piece};
use crate::phy::{
    DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortId, SegmentId, segment_of,
};
use crate::policy::{
    Action, FlowState, MAX_BATCH, PacketRecord, Policy, RULE_FAIL_CLOSED, RULE_NONE, VerdictRecord,
};
use crate::reject::{self, AnswerKind, MAX_ANSWER_LEN, RateLimit, RejectWith, TokenBucket};
use crate::switch::{Egress, Switch, SwitchError};
use crate::wire::{self, Fragment, L3, Malformed, Parsed, Tuple};
use rules_wasm::abi::{PORT_FLOOD, addr_bytes, proto};
use std::marker::PhantomData;
mod tiered;

use crate::offload::PortRole;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Instant;

/// A port as the controller describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortConfig {
    /// Dataplane port id (< [`EngineConfig::max_ports`]).
    pub id: PortId,
    /// The network (L2 domain: one Docker bridge network) the port belongs to. By
    /// convention the id of the network's gateway port, so it is < [`EngineConfig::max_ports`]
    /// and unique per network; in a single-network setup every port uses 0 (the gateway is
    /// port 0 there). Frames are only switched between ports of the same network; a
    /// network's gateway may come and go (at most one at a time) while its containers stay.
    pub network: PortId,
    /// MACs frames are switched to this port by (a container's MAC; the bridge's for the
    /// gateway). Unique within the network; ports of different networks may share one.
    pub macs: Vec<[u8; 6]>,
    /// The container's IPs. When non-empty (and the port is not the gateway), the port is
    /// guarded: its frames must come from one of `macs` (Ethernet source, and an ARP
    /// sender's hardware address), its IP packets from one of these addresses or from an
    /// IPv6 link-local address, its ARP from one of these or 0.0.0.0 (a probe): the policy
    /// decides by source address and ARP and neighbour discovery are switched without it,
    /// so a container must not borrow another's address or MAC.
    pub ips: Vec<IpAddr>,
    /// The network's gateway: the port to its kernel bridge, the host and the outside world
    /// (at most one per network).
    pub is_gateway: bool,
    /// Complete TCP/UDP checksums of frames received here before they leave (veth
    /// tx-checksum offload leaves them partial; AF_XDP ports on veths set this).
    pub complete_checksums: bool,
}

/// Engine-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Port ids range over `0..max_ports`; per-port state and counters are sized by it.
    pub max_ports: usize,
    /// Flow-table slots (rounded up to a power of two).
    pub flow_capacity: usize,
    /// Flow timeouts.
    pub timeouts: Timeouts,
    /// What a `Continue` at the end of the policy means. Drop by default: fail-closed.
    pub default_action: Action,
    /// Switch ethertypes other than ARP/IPv4/IPv6 without a policy decision (a Linux bridge
    /// does; Docker's iptables does not see them). When false they are dropped.
    pub switch_non_ip: bool,
    /// Learn each gateway port's MACs from its traffic (besides the configured ones), for
    /// its own network only.
    pub learn_gateway_mac: bool,
    /// Flow-table slots swept for expired flows per processed batch.
    pub sweep_budget: usize,
    /// Largest frame a flood copies (the frame size of the memory); a bigger memory frame
    /// size grows the copy buffer once, at the first flood.
    pub frame_size: usize,
    /// Fragment tracking: datagrams tracked, fragments held, timeout.
    pub fragments: FragConfig,
    /// How many rejected packets are answered (TCP RST / ICMP error), per engine: Linux's
    /// ICMP limit by default (1000/s, burst 50). Beyond it a reject is a silent drop.
    pub reject_limit: RateLimit,
    /// Audit mode at start (switched at run time by [`Engine::set_audit`]): the policy's
    /// denials are counted and reported but not enforced — the packet is forwarded and its
    /// flow admitted — so a policy can be tried on live traffic without breaking it. Off by
    /// default: the policy is enforced.
    pub audit: bool,
    /// The flow table's hash seed. `None` (the default, what the product runs): random per
    /// table, so a container cannot aim its flows at one bucket. A fixed seed gives tests a
    /// reproducible table layout (which flows share buckets, hence who evicts whom).
    pub flow_seed: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_ports: 1024,
            flow_capacity: 1 << 16,
            timeouts: Timeouts::default(),
            default_action: Action::Drop,
            switch_non_ip: true,
            learn_gateway_mac: true,
            sweep_budget: 64,
            frame_size: 2048,
            fragments: FragConfig::default(),
            reject_limit: RateLimit::default(),
            audit: false,
            flow_seed: None,
        }
    }
}

/// Configuration the engine refuses.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The port id is beyond `max_ports`.
    #[error("port id {id} is out of range (max_ports = {max})")]
    PortOutOfRange {
        /// The id.
        id: PortId,
        /// The configured bound.
        max: usize,
    },
    /// The network id is beyond `max_ports` (it names a gateway port id).
    #[error("network {network} is out of range (max_ports = {max})")]
    NetworkOutOfRange {
        /// The network id.
        network: PortId,
        /// The configured bound.
        max: usize,
    },
    /// The switch refused the port.
    #[error(transparent)]
    Switch(#[from] SwitchError),
}

/// What one [`Engine::drive`] iteration moved, so a caller can tell idle from busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DriveReport {
    /// Frames received from all ports.
    pub received: usize,
    /// Frames handed to ports for transmit.
    pub transmitted: usize,
}

#[derive(Clone, Debug)]
struct PortState {
    /// The port's network (see [`PortConfig::network`]).
    network: PortId,
    complete_checksums: bool,
    /// A container port with addresses: its frames must come from its own MACs and
    /// addresses (see [`Engine::spoofed`]).
    guard_source: bool,
    ips: Vec<[u8; 16]>,
    macs: Vec<[u8; 6]>,
}

/// A network's gateway port and its bridge's MAC.
type Gateway = (PortId, [u8; 6]);

/// 0.0.0.0 in the 16-byte form: the sender address of an ARP probe.
const UNSPECIFIED_V4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

/// ICMPv6 neighbour-discovery types a container's port checks (RFC 4861).
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOUR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;

/// Whether an address in the 16-byte form is IPv6 link-local (fe80::/10).
#[inline]
fn is_link_local(a: &[u8; 16]) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PendingKind {
    /// A miss: the first packet of a flow (or a denied flow's reverse).
    New,
    /// A hit on a flow decided by an older policy generation.
    Redecide,
    /// An ICMP error about an admitted flow decided by an older generation.
    Related,
}

/// What to do with an ICMP error about an admitted flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Related {
    /// The flow's verdict is current: pass as RELATED.
    Pass,
    /// The flow was decided by another policy generation: the policy sees the error as
    /// RELATED and decides it (not cached: errors are not flows).
    AskPolicy,
}

/// The engine's reading of one verdict: the effective action and whether it is enforced.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    /// The policy's verdict.
    verdict: VerdictRecord,
    /// The action after the engine's default for a `Continue`.
    action: Action,
    /// The packet passes and its flow is admitted: accepted, or denied under audit.
    admit: bool,
    /// A denial audit mode does not enforce.
    audited: bool,
}

impl Resolved {
    /// How an enforced reject answers (`None` for accepts, drops and audited denials).
    #[inline]
    fn reject(&self) -> Option<RejectWith> {
        (self.action == Action::Reject && !self.audited).then_some(self.verdict.reject)
    }

    /// The drop reason of a denial.
    #[inline]
    fn denial(&self) -> DropReason {
        match (self.verdict.action, self.action) {
            (Action::Continue, _) => DropReason::DefaultDrop,
            (Action::Reject, _) => DropReason::PolicyReject,
            _ => DropReason::PolicyDrop,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    desc: FrameDesc,
    /// The port the policy and the flow table see the packet enter by: the ingress port,
    /// or for a frame the host sent back onto the bridge, its source container's port.
    from: PortId,
    parsed: Parsed,
    egress: Egress,
    kind: PendingKind,
    key: Option<HashedKey>,
    tracking: Tracking,
}

const NO_PENDING: Pending = Pending {
    desc: FrameDesc { addr: 0, len: 0 },
    from: 0,
    parsed: Parsed {
        dst_mac: [0; 6],
        src_mac: [0; 6],
        vlan: None,
        ethertype: 0,
        l3: L3::Other,
        l3_offset: 0,
        l4_offset: 0,
        l4_len: 0,
        ip_version: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        arp_op: 0,
        fragment: wire::Fragment::None,
        frag_id: 0,
        frag_offset: 0,
        frag_more: false,
        inner: None,
    },
    egress: Egress::Flood,
    kind: PendingKind::New,
    key: None,
    tracking: Tracking {
        tuple: Tuple {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
            proto: 0,
        },
        one_way: false,
    },
};

/// Frames waiting for the policy, with their records: preallocated, reused every batch.
struct Batch {
    pending: Box<[Pending]>,
    records: Box<[PacketRecord]>,
    verdicts: Box<[VerdictRecord]>,
    len: usize,
}

impl Batch {
    fn new() -> Self {
        Self {
            pending: vec![NO_PENDING; MAX_BATCH].into_boxed_slice(),
            records: vec![PacketRecord::default(); MAX_BATCH].into_boxed_slice(),
            verdicts: vec![VerdictRecord::CONTINUE; MAX_BATCH].into_boxed_slice(),
            len: 0,
        }
    }
}

/// The sans-IO switching and filtering core of a host's bridge networks (one or many, each
/// its own L2 domain: see [`PortConfig::network`]).
pub struct Engine<M: FrameMemory> {
    config: EngineConfig,
    switch: Switch,
    flows: FlowTable,
    policy: Box<dyn Policy>,
    counters: Arc<Counters>,
    free: FreeList,
    ports: Box<[Option<PortState>]>,
    tx: Box<[DescBatch]>,
    batch: Batch,
    scratch: Vec<u8>,
    /// Ports with frames in their transmit queue, so `drive` visits only those.
    dirty: Vec<PortId>,
    is_dirty: Box<[bool]>,
    /// Position of each port in the slice `drive` was given (`NOT_DRIVEN` otherwise).
    slot_of: Box<[u16]>,
    /// The memory segment each port sends from (frames of other segments are copied in).
    segment: Box<[SegmentId]>,
    /// Which port owns each registered IP address of each network, keyed by (network,
    /// address): an ARP request is sent to its owner alone, and a frame the host sends back
    /// onto a bridge with a container's source is judged as that container's — both only
    /// within the network. Changed only when ports are added or removed.
    ip_owner: std::collections::HashMap<(PortId, [u8; 16]), PortId>,
    /// Per network id: its gateway port and its bridge's MAC, where replies of flows that
    /// came through the host go back to.
    gateways: Box<[Option<Gateway>]>,
    /// Datagrams whose first fragment was decided, and later fragments awaiting theirs.
    frags: FragTable,
    /// Held fragments released by a first fragment, handled after the table lets go
    /// (capacity: every frame the table can hold, so releasing never allocates).
    released: Vec<(FrameDesc, LaterOutcome)>,
    /// How many answers to rejected packets may still be sent.
    reject_bucket: TokenBucket,
    /// Where an answer is built before it is copied into its frame (the offending frame and
    /// the answer's frame cannot be borrowed from the memory at once).
    reject_buf: Box<[u8]>,
    /// Verdict events for `monitor`: emitted only while someone subscribes.
    events: EventProducer,
    /// Audit mode, switched from any thread; read once per batch into `audit_now`.
    audit: Arc<AtomicBool>,
    /// Audit mode for the batch being processed.
    audit_now: bool,
    /// What each port is to the tiered datapath (indexed by port id).
    roles: Box<[PortRole]>,
    _memory: PhantomData<fn(&mut M)>,
}

const NOT_DRIVEN: u16 = u16::MAX;

/// The segment of a port this engine does not transmit on (another worker's): frames for it
/// are queued as they are and copied into its segment by the worker that owns it.
pub const ANY_SEGMENT: SegmentId = SegmentId::MAX;

/// The key tying a fragment to its datagram.
#[inline]
fn frag_key(p: &Parsed, in_port: PortId) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id: p.frag_id,
        proto: p.proto,
        in_port,
    }
}

fn frag_drop_reason(why: FragDrop) -> DropReason {
    match why {
        FragDrop::Denied => DropReason::FragmentDenied,
        FragDrop::Overlap => DropReason::FragmentOverlap,
        FragDrop::Full => DropReason::FragmentTableFull,
    }
}

#[inline(always)]
fn out_port(e: Egress) -> PortId {
    match e {
        Egress::Unicast(p) => p,
        _ => PORT_FLOOD,
    }
}

impl<M: FrameMemory> Engine<M> {
    /// An engine with no ports yet, deciding new flows with `policy`, owning the frames in
    /// `free` (every frame of the memory that no port holds).
    pub fn new(config: EngineConfig, policy: Box<dyn Policy>, free: FreeList) -> Self {
        let max = config.max_ports;
        let counters = Arc::new(Counters::new(max));
        counters.policy.generation.set(policy.generation());
        let mut flows = match config.flow_seed {
            Some(seed) => FlowTable::with_seed(config.flow_capacity, &config.timeouts, seed),
            None => FlowTable::new(config.flow_capacity, &config.timeouts),
        };
        flows.count_by_port(Arc::clone(&counters));
        Self {
            switch: Switch::new(config.learn_gateway_mac),
            flows,
            policy,
            counters,
            free,
            ports: (0..max).map(|_| None).collect(),
            tx: (0..max).map(|_| DescBatch::default()).collect(),
            batch: Batch::new(),
            scratch: vec![0; config.frame_size],
            dirty: Vec::with_capacity(max),
            is_dirty: vec![false; max].into_boxed_slice(),
            slot_of: vec![NOT_DRIVEN; max].into_boxed_slice(),
            segment: vec![0; max].into_boxed_slice(),
            ip_owner: std::collections::HashMap::new(),
            gateways: vec![None; max].into_boxed_slice(),
            frags: FragTable::new(config.fragments),
            released: Vec::with_capacity(config.fragments.held),
            reject_bucket: TokenBucket::new(config.reject_limit),
            reject_buf: vec![0; MAX_ANSWER_LEN].into_boxed_slice(),
            events: EventProducer::new(EVENT_RING_CAPACITY),
            audit: Arc::new(AtomicBool::new(config.audit)),
            audit_now: config.audit,
            roles: vec![PortRole::Plain; max].into_boxed_slice(),
            config,
            _memory: PhantomData,
        }
    }

    /// Registers a port (a container's veth or a network's gateway) whose frames live in
    /// memory segment 0. A new network needs nothing more than its ports: its gateway is
    /// added like any port (with `is_gateway`, at run time too), and each network has at
    /// most one gateway at a time.
    pub fn add_port(&mut self, cfg: PortConfig) -> Result<(), EngineError> {
        self.add_port_in_segment(cfg, 0)
    }

    /// Registers a port that sends and receives frames of memory segment `seg` (its
    /// [`Port::segment`]): frames forwarded to it from another segment are copied in.
    pub fn add_port_in_segment(
        &mut self,
        cfg: PortConfig,
        seg: SegmentId,
    ) -> Result<(), EngineError> {
        let idx = usize::from(cfg.id);
        if idx >= self.config.max_ports {
            return Err(EngineError::PortOutOfRange {
                id: cfg.id,
                max: self.config.max_ports,
            });
        }
        let net = usize::from(cfg.network);
        if net >= self.config.max_ports {
            return Err(EngineError::NetworkOutOfRange {
                network: cfg.network,
                max: self.config.max_ports,
            });
        }
        self.switch
            .add_port(cfg.id, cfg.network, &cfg.macs, cfg.is_gateway)?;
        self.segment[idx] = seg;
        for ip in &cfg.ips {
            self.ip_owner.insert((cfg.network, addr_bytes(*ip)), cfg.id);
        }
        if cfg.is_gateway {
            self.gateways[net] = cfg.macs.first().map(|mac| (cfg.id, *mac));
        }
        self.ports[idx] = Some(PortState {
            network: cfg.network,
            complete_checksums: cfg.complete_checksums,
            guard_source: !cfg.is_gateway && !cfg.ips.is_empty(),
            ips: cfg.ips.iter().map(|ip| addr_bytes(*ip)).collect(),
            macs: cfg.macs.clone(),
        });
        Ok(())
    }

    /// Unregisters a port: its MACs leave the switch, its flows leave the table, and the
    /// frames queued for it return to the free list. The caller stops driving the port and
    /// reclaims the frames the port itself holds. A network's gateway is removed like any
    /// port: its network keeps its other ports and may get a gateway again later.
    pub fn remove_port(&mut self, id: PortId) -> Result<(), EngineError> {
        self.switch.remove_port(id)?;
        let idx = usize::from(id);
        if let Some(state) = self.ports.get_mut(idx).and_then(Option::take)
            && let Some(gw) = self.gateways.get_mut(usize::from(state.network))
            && gw.is_some_and(|(g, _)| g == id)
        {
            *gw = None;
        }
        self.ip_owner.retain(|_, owner| *owner != id);
        if let Some(role) = self.roles.get_mut(idx) {
            *role = PortRole::Plain;
        }
        let (frags, free, counters) = (&mut self.frags, &mut self.free, &self.counters);
        frags.remove_port(id, |d, port| {
            counters.count_drop_at(DropReason::FragmentOrphan, port);
            free.push(d.addr);
        });
        self.flows.remove_port(id);
        let q = &mut self.tx[idx];
        for d in q.as_slice() {
            self.free.push(d.addr);
        }
        q.clear();
        self.is_dirty[idx] = false;
        self.dirty.retain(|&p| p != id);
        self.publish_flow_stats();
        Ok(())
    }

    /// Installs a new policy and returns the old one, so the caller can drop it off the hot
    /// thread (dropping a Wasm instance can take ~300 µs). Flows decided by another
    /// generation are re-decided at their next packet.
    pub fn set_policy(&mut self, policy: Box<dyn Policy>) -> Box<dyn Policy> {
        self.counters.policy.generation.set(policy.generation());
        std::mem::replace(&mut self.policy, policy)
    }

    /// The counters, shareable with a metrics thread.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The engine's verdict events, for `monitor`: subscribe on the control thread and drain.
    pub fn events(&self) -> Arc<EventRing> {
        Arc::clone(self.events.ring())
    }

    /// Switches audit mode (see [`EngineConfig::audit`]) from any thread; the engine reads
    /// it at its next batch. Switching it off sends the flows audit admitted back to the
    /// policy at their next packet, so none outlives the audit.
    pub fn set_audit(&self, on: bool) {
        self.audit.store(on, Relaxed);
    }

    /// Whether audit mode is on.
    pub fn audit(&self) -> bool {
        self.audit.load(Relaxed)
    }

    /// The audit switch itself, for a caller that switches engines it no longer holds (a
    /// worker's engine runs on its thread).
    pub fn audit_switch(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.audit)
    }

    /// The flow table (inspection).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// The switch (inspection).
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The gateway port of `network` and its bridge's MAC, if the network has one.
    pub fn gateway(&self, network: PortId) -> Option<(PortId, [u8; 6])> {
        self.gateways.get(usize::from(network)).copied().flatten()
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Frames not held by any port or queue.
    pub fn free_list(&self) -> &FreeList {
        &self.free
    }

    /// Mutable access to the free list, for a caller that drives ports itself.
    pub fn free_list_mut(&mut self) -> &mut FreeList {
        &mut self.free
    }

    /// Frames waiting to be transmitted on `port` (a caller driving ports itself hands this
    /// to [`Port::transmit`]).
    pub fn tx_queue(&mut self, port: PortId) -> Option<&mut DescBatch> {
        self.tx.get_mut(usize::from(port))
    }

    /// Fragments held until their datagram's first fragment arrives (part of
    /// [`Engine::frames_queued`]).
    pub fn fragments_held(&self) -> usize {
        self.frags.held()
    }

    /// Frames the engine holds in transmit queues and the fragment hold (for the
    /// frame-accounting invariant).
    pub fn frames_queued(&self) -> usize {
        self.tx.iter().map(DescBatch::len).sum::<usize>() + self.frags.held()
    }

    /// Drops a frame that came in on `from`, counted by reason in the totals and the port's.
    #[inline(always)]
    fn drop_frame(&mut self, d: FrameDesc, reason: DropReason, from: PortId) {
        self.drop_frame_from(d, reason, Some(from));
    }

    /// [`Engine::drop_frame`] for a frame whose ingress may be unknown here (`None`: handed
    /// over by another worker), counted in the totals only then.
    #[inline(always)]
    fn drop_frame_from(&mut self, d: FrameDesc, reason: DropReason, from: Option<PortId>) {
        match from {
            Some(port) => self.counters.count_drop_at(reason, port),
            None => self.counters.count_drop(reason),
        }
        self.free.push(d.addr);
    }

    /// Processes the frames received on `in_port`, leaving `rx` empty: each frame is queued
    /// for transmit or returned to the free list.
    pub fn process(&mut self, now: u64, in_port: PortId, mem: &mut M, rx: &mut DescBatch) {
        let idx = usize::from(in_port);
        if self.roles.get(idx) == Some(&PortRole::Upcall) {
            self.process_upcalls(now, mem, rx);
            return;
        }
        let Some((complete, guard, net)) = self
            .ports
            .get(idx)
            .and_then(Option::as_ref)
            .map(|p| (p.complete_checksums, p.guard_source, p.network))
        else {
            for &d in rx.as_slice() {
                self.drop_frame(d, DropReason::UnknownPort, in_port);
            }
            rx.clear();
            return;
        };
        self.begin_batch();
        let generation = self.policy.generation();
        let mut bytes = 0u64;
        let (mut hits, mut misses) = (0u64, 0u64);
        let mut parsed = Parsed::default();
        for &d in rx.as_slice() {
            bytes += u64::from(d.len);
            if let Err(m) = wire::parse_into(mem.bytes(d.addr, d.len as usize), &mut parsed) {
                self.drop_frame(d, m.into(), in_port);
                continue;
            }
            let egress = match self
                .switch
                .egress(in_port, &parsed.src_mac, &parsed.dst_mac)
            {
                Egress::Drop(r) => {
                    self.drop_frame(d, r, in_port);
                    continue;
                }
                e => e,
            };
            // Before anything is switched without the policy: ARP and neighbour discovery
            // from a container must not claim another's addresses either.
            if guard
                && let Some(reason) = self.spoofed(idx, &parsed, mem.bytes(d.addr, d.len as usize))
            {
                self.drop_frame(d, reason, in_port);
                if matches!(parsed.l3, L3::Ipv4 | L3::Ipv6) {
                    let outcome = Outcome {
                        action: Action::Drop,
                        rule: RULE_NONE,
                        generation,
                        reason: Some(reason),
                        audit: false,
                    };
                    self.emit_unasked(now, &parsed, (in_port, out_port(egress)), outcome);
                }
                continue;
            }
            let switched = match parsed.l3 {
                L3::Arp => true,
                L3::Other if self.config.switch_non_ip => true,
                L3::Other => {
                    self.drop_frame(d, DropReason::NonIpBlocked, in_port);
                    continue;
                }
                L3::Ipv4 | L3::Ipv6 => parsed.is_neighbour_discovery(),
            };
            if switched {
                self.counters.switched_without_policy.add(1);
                let egress = self.direct_arp(&parsed, in_port, net, egress);
                self.forward(mem, in_port, d, &parsed, egress, false);
                continue;
            }
            if parsed.fragment == Fragment::Later {
                // Its first fragment is usually right before it in this batch, waiting for
                // the policy: decide the batch now rather than hold the rest of the datagram.
                if self.batch.len > 0 && !self.frags.contains(&frag_key(&parsed, in_port)) {
                    self.flush(now, mem, in_port);
                }
                self.later_fragment(mem, in_port, d, &parsed, now);
                continue;
            }
            if parsed.is_icmp_error()
                && let Some(inner) = parsed.inner
                && let Some(kind) = self.related(&parsed, &inner, net, guard, generation, now)
            {
                match kind {
                    Related::AskPolicy => self.enqueue_pending(
                        now,
                        mem,
                        (in_port, self.policy_ingress(in_port, net, &parsed.src)),
                        d,
                        parsed,
                        egress,
                        PendingKind::Related,
                        None,
                    ),
                    Related::Pass => {
                        self.counters.flows.related.add(1);
                        self.forward(mem, in_port, d, &parsed, egress, complete);
                    }
                }
                continue;
            }
            let tr = tracking(&parsed);
            let hk = self.flows.hash_tuple_in(&tr.tuple, net);
            // A one-way or denied flow says nothing about the other direction: such a reply
            // is a miss like an unknown flow.
            let known = self.flows.lookup(&hk, now).filter(|&slot| {
                let e = self.flows.entry(slot);
                !(e.one_way && e.dir(hk.src_is_a) == Dir::Reply)
            });
            let Some(slot) = known else {
                misses += 1;
                self.enqueue_pending(
                    now,
                    mem,
                    (in_port, self.policy_ingress(in_port, net, &parsed.src)),
                    d,
                    parsed,
                    egress,
                    PendingKind::New,
                    Some((hk, tr)),
                );
                continue;
            };
            let e = self.flows.entry(slot);
            let dir = e.dir(hk.src_is_a);
            let (accept, audited) = (e.verdict.accept, e.audited);
            let revisit = e.generation != generation || self.audit_revisits(accept, audited);
            let egress = if e.via_host && dir == Dir::Reply {
                self.back_through_host(mem, d, net, egress)
            } else {
                egress
            };
            hits += 1;
            if revisit {
                // A stale denial is no admitted flow, nor is a flow only audit mode admitted:
                // their packets are simply new again.
                let kind = if accept && !audited {
                    PendingKind::Redecide
                } else {
                    PendingKind::New
                };
                let ports = (in_port, self.policy_ingress(in_port, net, &parsed.src));
                self.enqueue_pending(now, mem, ports, d, parsed, egress, kind, Some((hk, tr)));
                continue;
            }
            let state_before = self.flows.entry(slot).state;
            self.flows.on_packet(slot, dir, parsed.tcp_flags, now);
            self.counters
                .rule_traffic(self.flows.entry(slot).verdict.rule, u64::from(d.len));
            let tracked = self.first_fragment(in_port, &parsed, egress, accept, now);
            if accept && let Err(reason) = tracked {
                self.drop_frame(d, reason, in_port);
            } else if accept {
                self.forward(mem, in_port, d, &parsed, egress, complete);
                self.maybe_offload(slot, Some((state_before, dir)));
            } else {
                let entry = *self.flows.entry(slot);
                self.deny_cached(mem, in_port, d, &parsed, &entry, now);
                self.offload_drop(slot, in_port, &tr.tuple);
            }
            self.send_released(mem, in_port);
        }
        if let Some(pc) = self.counters.port(in_port) {
            pc.rx_packets.add(rx.len() as u64);
            pc.rx_bytes.add(bytes);
        }
        rx.clear();
        self.flush(now, mem, in_port);
        self.counters.flows.hits.add(hits);
        self.counters.flows.misses.add(misses);
        self.flows.sweep(now, self.config.sweep_budget);
        let (frags, free, counters) = (&mut self.frags, &mut self.free, &self.counters);
        frags.sweep(now, self.config.sweep_budget, |d, port| {
            counters.count_drop_at(DropReason::FragmentOrphan, port);
            free.push(d.addr);
        });
        self.publish_flow_stats();
    }

    /// Reads what holds for a whole batch: whether anyone watches events, and audit mode.
    #[inline(always)]
    fn begin_batch(&mut self) {
        self.events.begin();
        let audit = self.audit.load(Relaxed);
        if audit != self.audit_now && self.flows.offload_enabled() {
            self.audit_flipped();
        }
        self.audit_now = audit;
    }

    /// Whether a packet of a cached flow must go back to the policy because audit mode
    /// changes what its entry means: a denial while audit is on (audit admits it), or a flow
    /// only audit admitted while audit is off (enforcement resumes).
    #[inline(always)]
    fn audit_revisits(&self, accept: bool, audited: bool) -> bool {
        if self.audit_now { !accept } else { audited }
    }

    /// A packet of a flow the policy denied earlier (the cached `entry`): answered as the
    /// first was if it was rejected, dropped, and reported to `monitor`.
    fn deny_cached(
        &mut self,
        mem: &mut M,
        in_port: PortId,
        d: FrameDesc,
        p: &Parsed,
        entry: &FlowEntry,
        now: u64,
    ) {
        if let Some(with) = entry.verdict.reject {
            self.answer_reject(mem, in_port, d, p, with, now);
        }
        self.drop_frame(d, DropReason::FlowDenied, in_port);
        let outcome = Outcome {
            action: if entry.verdict.reject.is_some() {
                Action::Reject
            } else {
                Action::Drop
            },
            rule: entry.verdict.rule,
            generation: entry.generation,
            reason: Some(DropReason::FlowDenied),
            audit: false,
        };
        // A denied flow is one-way: the packet travels as its originator's did.
        self.emit_unasked(now, p, (entry.ports[0], entry.ports[1]), outcome);
    }

    /// Reports a packet dropped without asking the policy (`ports`: the ports the policy
    /// would have seen) to `monitor`, if anyone watches.
    #[inline]
    fn emit_unasked(&mut self, now: u64, p: &Parsed, ports: (PortId, PortId), outcome: Outcome) {
        if self.events.on() {
            let record = p.record(ports.0, ports.1, FlowState::New);
            self.events.emit(now, || VerdictEvent::of(&record, outcome));
        }
    }

    /// A non-first fragment: it follows its datagram's first fragment (see [`crate::frag`]).
    fn later_fragment(&mut self, mem: &mut M, in_port: PortId, d: FrameDesc, p: &Parsed, now: u64) {
        let piece = Piece {
            offset: p.frag_offset,
            len: u32::from(p.l4_len),
            more: p.frag_more,
        };
        match self.frags.later(&frag_key(p, in_port), piece, d, now) {
            LaterOutcome::Forward(egress) => {
                self.counters.fragments_forwarded.add(1);
                self.send(mem, in_port, d, egress);
            }
            LaterOutcome::Held => self.counters.fragments_held.add(1),
            LaterOutcome::Drop(why) => self.drop_frame(d, frag_drop_reason(why), in_port),
        }
    }

    /// Records a first fragment's verdict so the rest of its datagram follows it, and
    /// queues the fragments that came before it for [`Engine::send_released`]. Returns why
    /// an admitted first fragment must be dropped after all: its datagram cannot be tracked
    /// — it overlaps a fragment already seen (a second first fragment: the datagram is
    /// poisoned, [`DropReason::FragmentOverlap`]) or there is no room
    /// ([`DropReason::FragmentTableFull`]) — so its later fragments could never follow.
    /// A denied one is only recorded (`Ok`): the caller drops it for its denial.
    #[inline]
    fn first_fragment(
        &mut self,
        in_port: PortId,
        p: &Parsed,
        egress: Egress,
        accept: bool,
        now: u64,
    ) -> Result<(), DropReason> {
        if p.fragment != Fragment::First {
            return Ok(());
        }
        let verdict = if accept {
            FragVerdict::Admitted(egress)
        } else {
            FragVerdict::Denied
        };
        let piece = Piece {
            offset: 0,
            len: u32::from(p.l4_len),
            more: true,
        };
        let released = &mut self.released;
        let key = frag_key(p, in_port);
        let tracked = self
            .frags
            .first(&key, piece, verdict, now, |d, o| released.push((d, o)));
        if tracked || !accept {
            Ok(())
        } else if self.frags.contains(&key) {
            Err(DropReason::FragmentOverlap)
        } else {
            Err(DropReason::FragmentTableFull)
        }
    }

    /// Sends on (or drops) the fragments a first fragment released, after the first itself
    /// went, so a datagram's fragments leave in the order they make sense to the receiver.
    fn send_released(&mut self, mem: &mut M, in_port: PortId) {
        if self.released.is_empty() {
            return;
        }
        let mut released = std::mem::take(&mut self.released);
        for (d, outcome) in released.drain(..) {
            match outcome {
                LaterOutcome::Forward(e) => {
                    self.counters.fragments_forwarded.add(1);
                    self.send(mem, in_port, d, e);
                }
                LaterOutcome::Drop(why) => self.drop_frame(d, frag_drop_reason(why), in_port),
                LaterOutcome::Held => self.drop_frame(d, DropReason::FragmentOrphan, in_port),
            }
        }
        self.released = released;
    }

    /// Sends `d` to `egress` as it is (no checksum work: fragments carry none to complete).
    fn send(&mut self, mem: &mut M, in_port: PortId, d: FrameDesc, egress: Egress) {
        match egress {
            Egress::Unicast(port) => {
                self.enqueue(mem, Some(in_port), port, d);
            }
            Egress::Flood => self.flood(mem, in_port, d),
            Egress::Drop(r) => self.drop_frame(d, r, in_port),
        }
    }

    /// An ARP request for an address a known port owns goes to that port alone instead of
    /// every port: only the owner answers anyway, and on a host with hundreds of containers a
    /// flood per request would cost hundreds of frame copies (each container asks for the
    /// gateway when it starts). Gratuitous ARP and unknown targets are flooded as a bridge
    /// does. Only an owner in the asker's network `net` counts: an address owned in another
    /// network is unknown here, and the request floods within the network.
    #[inline]
    fn direct_arp(&self, p: &Parsed, in_port: PortId, net: PortId, egress: Egress) -> Egress {
        if p.l3 != L3::Arp || p.arp_op != 1 || p.src == p.dst || egress != Egress::Flood {
            return egress;
        }
        match self.ip_owner.get(&(net, p.dst)) {
            Some(&port) if port != in_port => {
                self.counters.arp_directed.add(1);
                Egress::Unicast(port)
            }
            _ => egress,
        }
    }

    /// The ingress port the policy and the flow table see: `in_port`, except for a frame
    /// from the gateway port of `in_port`'s network `net` whose source is a container of
    /// that same network — the host sent it back onto the bridge (a container reaching
    /// another through a published port, DNATed by the host's kernel with the source kept) —
    /// which is that container's. Docker judges such traffic by its FORWARD rules for
    /// `-i docker0 -o docker0`, i.e. as container-to-container traffic (icc, links), and so
    /// does the policy here. A source of another network (routed between bridges by the
    /// host) stays the gateway's. Looked up only for packets the policy decides (misses),
    /// never for flow-table hits.
    #[inline]
    fn policy_ingress(&self, in_port: PortId, net: PortId, src: &[u8; 16]) -> PortId {
        match self.gateway(net) {
            Some((gw, _)) if gw == in_port => self
                .ip_owner
                .get(&(net, *src))
                .copied()
                .filter(|&p| p != gw)
                .unwrap_or(in_port),
            _ => in_port,
        }
    }

    /// Sends a reply of a flow that came through the host back to the host (the gateway
    /// port of the reply's network `net`, addressed to that bridge's MAC), whose conntrack
    /// un-NATs it and routes it on to the container that opened the flow — as a kernel
    /// bridge with br_netfilter does. Without a gateway (removed meanwhile) the reply goes
    /// where the switch sent it.
    fn back_through_host(
        &mut self,
        mem: &mut M,
        d: FrameDesc,
        net: PortId,
        egress: Egress,
    ) -> Egress {
        let Some((gw, mac)) = self.gateway(net) else {
            return egress;
        };
        let dst = mem.bytes_mut(d.addr, 6);
        if dst.len() == 6 {
            dst.copy_from_slice(&mac);
        }
        self.counters.via_host.add(1);
        Egress::Unicast(gw)
    }

    fn publish_flow_stats(&self) {
        let s = self.flows.stats();
        let f = &self.counters.flows;
        f.entries.set(self.flows.len() as u64);
        f.inserts.set(s.inserts);
        f.evictions.set(s.evictions);
        f.expirations.set(s.expirations);
        f.refused.set(s.refused);
    }

    /// Why a frame from the guarded container port `idx` (whose bytes are `frame`) is
    /// spoofed, if it is: an Ethernet source — or an ARP sender hardware address — that is
    /// not one of the port's MACs ([`DropReason::SpoofedMac`]); an ARP sender address, or
    /// an IP source, that is not one of the port's addresses ([`DropReason::SpoofedSource`]).
    /// IPv6 link-local sources are allowed (neighbour discovery and router solicitations
    /// use them), and so are the unspecified sources of address probes (ARP probes, the
    /// neighbour solicitations of duplicate address detection). Why: the policy decides by
    /// address and the bridge switches ARP and neighbour discovery without it, so a
    /// container claiming another's MAC or address could otherwise take over that one's
    /// traffic or its policy.
    #[inline]
    fn spoofed(&self, idx: usize, p: &Parsed, frame: &[u8]) -> Option<DropReason> {
        let port = self.ports.get(idx)?.as_ref()?;
        if !port.macs.contains(&p.src_mac) {
            return Some(DropReason::SpoofedMac);
        }
        let src_ok = match p.l3 {
            L3::Other => return None,
            L3::Arp => {
                let sha = usize::from(p.l3_offset) + 8;
                let sender_mac_ok = frame
                    .get(sha..sha + 6)
                    .is_some_and(|m| port.macs.iter().any(|own| own[..] == *m));
                if !sender_mac_ok {
                    return Some(DropReason::SpoofedMac);
                }
                p.src == UNSPECIFIED_V4 || port.ips.contains(&p.src)
            }
            L3::Ipv4 | L3::Ipv6 => {
                if p.is_neighbour_discovery()
                    && let Some(reason) = Self::nd_claim(port, p, frame)
                {
                    return Some(reason);
                }
                is_link_local(&p.src)
                    || port.ips.contains(&p.src)
                    || (p.src == [0; 16] && p.is_neighbour_discovery())
            }
        };
        (!src_ok).then_some(DropReason::SpoofedSource)
    }

    /// What a container's neighbour-discovery message must not claim: to be a router
    /// (advertisements, redirects), or another's address (a neighbour advertisement's
    /// target must be one of the port's addresses, or link-local, which is not registered).
    fn nd_claim(port: &PortState, p: &Parsed, frame: &[u8]) -> Option<DropReason> {
        match p.icmp_type {
            ND_ROUTER_ADVERT | ND_REDIRECT => Some(DropReason::RouterMessage),
            ND_NEIGHBOUR_ADVERT => {
                let at = usize::from(p.l4_offset) + 8;
                let Some(target) = frame
                    .get(at..at + 16)
                    .and_then(|t| <[u8; 16]>::try_from(t).ok())
                else {
                    return Some(DropReason::Malformed(Malformed::Truncated));
                };
                (!is_link_local(&target) && !port.ips.contains(&target))
                    .then_some(DropReason::SpoofedSource)
            }
            _ => None,
        }
    }

    /// Is this ICMP error about an admitted flow of network `net` (the ingress port's)? `None`
    /// when it relates to no admitted flow. `from_container`: it came in on a container's
    /// (source-guarded) port.
    #[inline]
    fn related(
        &mut self,
        p: &Parsed,
        inner: &Tuple,
        net: PortId,
        from_container: bool,
        generation: u64,
        now: u64,
    ) -> Option<Related> {
        // An error travels back to the quoted packet's sender; one addressed elsewhere is
        // someone using a flow's tuple as a pass.
        if inner.src != p.dst {
            return None;
        }
        // Behind a container's port there is no router: only the quoted packet's destination
        // can have an error to say about it. A third container that guessed a flow's ports
        // is judged by the policy like any packet (the gateway's side has routers, whose
        // errors come from their own addresses).
        if from_container && p.src != inner.dst {
            return None;
        }
        let hk = self.flows.hash_tuple_in(inner, net);
        let slot = self.flows.lookup(&hk, now)?;
        let e = self.flows.entry(slot);
        if !e.verdict.accept || (e.audited && !self.audit_now) {
            return None;
        }
        Some(if e.generation == generation {
            Related::Pass
        } else {
            Related::AskPolicy
        })
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn enqueue_pending(
        &mut self,
        now: u64,
        mem: &mut M,
        (in_port, from): (PortId, PortId),
        desc: FrameDesc,
        parsed: Parsed,
        egress: Egress,
        kind: PendingKind,
        key: Option<(HashedKey, Tracking)>,
    ) {
        let i = self.batch.len;
        let out = out_port(egress);
        let record = match (kind, key) {
            (PendingKind::Related, _) => parsed.record(from, out, FlowState::Related),
            (PendingKind::Redecide, Some((hk, _))) => {
                self.redecide_record(&hk, &parsed, from, out, now)
            }
            _ => parsed.record(from, out, FlowState::New),
        };
        // `-m connlimit` counts the connections held from the source, this one included by
        // the rule: a re-decided flow that is admitted is already among them. Only for a
        // policy that reads the count: it walks the source's flows.
        let record = if self.policy.counts_source_conns() {
            let held = kind == PendingKind::Redecide
                && key.is_some_and(|(hk, _)| {
                    self.flows.peek(&hk, now).is_some_and(|e| e.verdict.accept)
                });
            PacketRecord {
                src_conns: self
                    .flows
                    .conns_from(&record.src, now)
                    .saturating_sub(u16::from(held)),
                ..record
            }
        } else {
            record
        };
        let (key, tracking) = match key {
            Some((k, t)) => (Some(k), t),
            None => (None, NO_PENDING.tracking),
        };
        self.batch.records[i] = record;
        self.batch.pending[i] = Pending {
            desc,
            from,
            parsed,
            egress,
            kind,
            key,
            tracking,
        };
        self.batch.len += 1;
        if self.batch.len == MAX_BATCH {
            self.flush(now, mem, in_port);
        }
    }

    /// The record a re-decision presents: the flow as its originator opened it, marked
    /// Established, whichever direction the packet that noticed the change travels.
    fn redecide_record(
        &self,
        hk: &HashedKey,
        p: &Parsed,
        in_port: PortId,
        out: PortId,
        now: u64,
    ) -> PacketRecord {
        let Some(e) = self.flows.peek(hk, now) else {
            return p.record(in_port, out, FlowState::Established);
        };
        if e.dir(hk.src_is_a) == Dir::Original {
            return p.record(in_port, out, FlowState::Established);
        }
        let t = e.original_tuple();
        let (src_port, dst_port, icmp_type) = match t.proto {
            proto::TCP | proto::UDP => (t.src_port, t.dst_port, 0),
            // Only echo flows admit replies, so the originator sent the request.
            proto::ICMP => (0, 0, 8),
            proto::ICMPV6 => (0, 0, 128),
            _ => (0, 0, 0),
        };
        PacketRecord {
            src: t.src,
            dst: t.dst,
            src_port,
            dst_port,
            ip_version: p.ip_version,
            protocol: t.proto,
            tcp_flags: 0,
            flow_state: FlowState::Established,
            in_port: e.ports[0],
            out_port: e.ports[1],
            icmp_type,
            icmp_code: 0,
            src_conns: 0,
        }
    }

    /// Asks the policy about the pending frames in one call, caches the verdicts, and
    /// forwards or drops each frame.
    fn flush(&mut self, now: u64, mem: &mut M, in_port: PortId) {
        let n = self.batch.len;
        if n == 0 {
            return;
        }
        self.decide_timed(n);
        let generation = self.policy.generation();
        let complete = self
            .ports
            .get(usize::from(in_port))
            .and_then(Option::as_ref)
            .is_some_and(|p| p.complete_checksums);
        for i in 0..n {
            let p = self.batch.pending[i];
            let r = self.resolve(self.batch.verdicts[i], p.from);
            self.counters
                .rule_traffic(r.verdict.rule, u64::from(p.desc.len));
            let tracked = self.cache_decision(&p, &r, generation, in_port, now);
            let dropped = self.deliver(mem, in_port, &p, &r, tracked, complete, now);
            if self.events.on() {
                let outcome = Outcome {
                    action: r.action,
                    rule: r.verdict.rule,
                    generation,
                    // An audited denial reports what would have dropped the packet.
                    reason: dropped.or(r.audited.then(|| r.denial())),
                    audit: r.audited,
                };
                let record = self.batch.records[i];
                self.events.emit(now, || VerdictEvent::of(&record, outcome));
            }
            self.send_released(mem, in_port);
        }
        self.batch.len = 0;
    }

    /// Asks the policy about the first `n` pending records, timing the call for the
    /// latency histogram (two clock reads per batch, none per packet).
    #[inline]
    fn decide_timed(&mut self, n: usize) {
        let start = Instant::now();
        self.policy
            .decide(&self.batch.records[..n], &mut self.batch.verdicts[..n]);
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let c = &self.counters.policy;
        c.observe_latency(ns);
        c.batches.add(1);
        c.records.add(n as u64);
    }

    /// Reads verdict `v` on a record that entered by `from`: the engine's default for a
    /// `Continue`, audit mode for a denial; counts the decision by rule and by port.
    #[inline]
    fn resolve(&self, v: VerdictRecord, from: PortId) -> Resolved {
        let c = &self.counters;
        c.rule(v.rule);
        let action = match v.action {
            Action::Continue => {
                c.policy.defaulted.add(1);
                self.config.default_action
            }
            a => a,
        };
        let accept = action == Action::Accept;
        let audited = !accept && self.audit_now;
        if audited {
            c.audit_denied.add(1);
        }
        if let Some(pc) = c.port(from) {
            match (accept, audited) {
                (true, _) => pc.accepted.add(1),
                (false, true) => pc.audit_denied.add(1),
                (false, false) => pc.denied.add(1),
            }
        }
        Resolved {
            verdict: v,
            action,
            admit: accept || audited,
            audited,
        }
    }

    /// Caches a decision about `p`'s flow in the flow table (an ICMP error, which has no
    /// flow, is only counted when it passes as RELATED). Returns false when the full table
    /// refused the flow (no slot it may take without cutting another port's connection;
    /// see [`FlowTable::decide`]): an admitted packet must then be dropped, since its flow's
    /// other packets and replies could not be recognised; a denial is merely not cached.
    #[inline]
    fn cache_decision(
        &mut self,
        p: &Pending,
        r: &Resolved,
        generation: u64,
        in_port: PortId,
        now: u64,
    ) -> bool {
        let Some(hk) = p.key else {
            if r.admit {
                self.counters.flows.related.add(1);
            }
            return true;
        };
        // A module that failed answered its whole batch fail-closed: the packet is dropped,
        // but the flow is not marked denied (a flow admitted before keeps its verdict), so one
        // hostile packet cannot cut off the innocent flows judged beside it.
        if !r.admit && r.verdict.rule == RULE_FAIL_CLOSED {
            return true;
        }
        // The other side of a connection the policy has since denied (admitted, then a new
        // rule cut it): its packets are judged one by one — Linux's conntrack keeps the
        // connection, and a DOCKER-USER rule drops only the originator's packets — and must
        // not take the flow over, or the originator's packets would pass as replies of an
        // admitted flow. (A flow denied at its first packet was never a connection: the other
        // side's packet opens one of its own, as in Linux.)
        if p.kind == PendingKind::New
            && self.flows.peek(&hk, now).is_some_and(|e| {
                !e.verdict.accept && e.was_admitted && e.dir(hk.src_is_a) == Dir::Reply
            })
        {
            return true;
        }
        let first = FirstPacket {
            tracking: p.tracking,
            tcp_flags: p.parsed.tcp_flags,
            ports: [p.from, out_port(p.egress)],
            via_host: p.from != in_port,
        };
        let d = Decision {
            verdict: Verdict {
                accept: r.admit,
                rule: r.verdict.rule,
                reject: r.reject(),
            },
            generation,
        };
        if p.kind == PendingKind::Redecide {
            self.counters.flows.redecisions.add(1);
        }
        let Some(slot) = self
            .flows
            .decide(&hk, &first, d, p.kind == PendingKind::New, now)
        else {
            return false;
        };
        self.flows.mark_audited(slot, r.audited);
        if r.admit {
            self.maybe_offload(slot, None);
        } else {
            self.offload_denial(slot, p, r, in_port);
        }
        true
    }

    /// Forwards a decided frame, or answers (a reject) and drops it; returns why it was
    /// dropped, `None` when it was forwarded. `flow_tracked`: the flow table holds the
    /// decision (see [`Engine::cache_decision`]); an admitted packet of a refused flow is
    /// dropped, and a first fragment's datagram is then recorded as denied so its later
    /// fragments cannot pass without it.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn deliver(
        &mut self,
        mem: &mut M,
        in_port: PortId,
        p: &Pending,
        r: &Resolved,
        flow_tracked: bool,
        complete: bool,
        now: u64,
    ) -> Option<DropReason> {
        let admit = r.admit && flow_tracked;
        let tracked = self.first_fragment(in_port, &p.parsed, p.egress, admit, now);
        let reason = match tracked {
            _ if !r.admit => r.denial(),
            _ if !flow_tracked => DropReason::FlowTableFull,
            Err(reason) => reason,
            Ok(()) => {
                self.forward(mem, in_port, p.desc, &p.parsed, p.egress, complete);
                return None;
            }
        };
        if let Some(with) = r.reject() {
            self.answer_reject(mem, in_port, p.desc, &p.parsed, with, now);
        }
        self.drop_frame(p.desc, reason, in_port);
        Some(reason)
    }

    /// Sends an admitted frame on its way: completes its checksum if its port asked for it,
    /// then queues it for one port or copies it to every other port.
    #[inline]
    fn forward(
        &mut self,
        mem: &mut M,
        in_port: PortId,
        d: FrameDesc,
        p: &Parsed,
        egress: Egress,
        complete: bool,
    ) {
        let len = d.len as usize;
        if complete && p.has_l4_checksum() {
            wire::complete_l4_checksum(mem.bytes_mut(d.addr, len), p);
        }
        self.send(mem, in_port, d, egress);
    }

    /// Copies `d` to every other port of `in_port`'s network (never beyond it).
    fn flood(&mut self, mem: &mut M, in_port: PortId, d: FrameDesc) {
        let len = d.len as usize;
        let n = self.switch.flood_ports(in_port).len();
        let others = self
            .switch
            .flood_ports(in_port)
            .iter()
            .filter(|&&p| p != in_port)
            .count();
        if others == 0 {
            self.drop_frame(d, DropReason::NoEgress, in_port);
            return;
        }
        if others > 1 {
            if self.scratch.len() < len {
                // Only when the memory's frames are larger than configured: once.
                self.scratch.resize(len, 0);
            }
            self.scratch[..len].copy_from_slice(mem.bytes(d.addr, len));
        }
        let mut left = others;
        for i in 0..n {
            let port = self.switch.flood_ports(in_port)[i];
            if port == in_port {
                continue;
            }
            left -= 1;
            if left == 0 {
                // The last recipient gets the original frame (copied into its segment if
                // need be): one copy fewer.
                self.enqueue(mem, Some(in_port), port, d);
                break;
            }
            let seg = match self.segment[usize::from(port)] {
                // Another worker's port: copy within the frame's own segment, that worker
                // moves it into the port's segment.
                ANY_SEGMENT => segment_of(d.addr),
                seg => seg,
            };
            let Some(addr) = self.free.pop_in(seg) else {
                self.counters
                    .count_drop_at(DropReason::NoFreeFrame, in_port);
                continue;
            };
            let dst = mem.bytes_mut(addr, len);
            if dst.len() != len {
                self.drop_frame(
                    FrameDesc { addr, len: d.len },
                    DropReason::NoFreeFrame,
                    in_port,
                );
                continue;
            }
            dst.copy_from_slice(&self.scratch[..len]);
            self.counters.flood_copies.add(1);
            self.enqueue(mem, Some(in_port), port, FrameDesc { addr, len: d.len });
        }
    }

    /// Queues `d`, which came in on `from`, for `port` (copied into the port's segment if
    /// need be) and counts it; false (the frame dropped and counted) when it could not be
    /// queued.
    #[inline(always)]
    fn enqueue(&mut self, mem: &mut M, from: Option<PortId>, port: PortId, d: FrameDesc) -> bool {
        let Some(d) = self.in_segment_of(mem, from, port, d) else {
            return false;
        };
        let queued = self.queue_for_transmit(from, port, d);
        if queued && let Some(pc) = self.counters.port(port) {
            pc.tx_packets.add(1);
            pc.tx_bytes.add(u64::from(d.len));
        }
        queued
    }

    /// Answers a rejected packet (`d`, described by `p`, received on `in_port`) as `with`
    /// says, before the caller drops it: unless it must not be answered or answers are over
    /// their rate limit, the answer is built in a free frame of the port's memory segment and
    /// queued back out of `in_port` — for a frame the host sent onto the bridge, back to the
    /// host, which routes it on. Every outcome is counted; nothing is allocated.
    fn answer_reject(
        &mut self,
        mem: &mut M,
        in_port: PortId,
        d: FrameDesc,
        p: &Parsed,
        with: RejectWith,
        now: u64,
    ) {
        let c = &self.counters;
        let Some(kind) = reject::kind(p, with) else {
            c.reject_not_answerable.add(1);
            return;
        };
        if !self.reject_bucket.allow(now) {
            c.reject_rate_limited.add(1);
            return;
        }
        let room = self.reject_buf.len().min(mem.frame_size());
        let frame = mem.bytes(d.addr, d.len as usize);
        let Some(len) = reject::answer(frame, p, with, &mut self.reject_buf[..room]) else {
            c.reject_not_answerable.add(1);
            return;
        };
        let Some(addr) = self.answer_frame(mem, in_port, d, len) else {
            self.counters.reject_no_free_frame.add(1);
            return;
        };
        let answer = FrameDesc {
            addr,
            len: len as u32,
        };
        if self.enqueue(mem, Some(in_port), in_port, answer) {
            match kind {
                AnswerKind::TcpReset => self.counters.reject_tcp_reset.add(1),
                AnswerKind::Icmp => self.counters.reject_icmp.add(1),
            }
        }
    }

    /// Takes a free frame of `port`'s memory segment (of the offending frame `d`'s when the
    /// port is another worker's) and copies the built answer (`len` bytes of `reject_buf`)
    /// into it. `None` when the segment has no free frame.
    fn answer_frame(&mut self, mem: &mut M, port: PortId, d: FrameDesc, len: usize) -> Option<u64> {
        let seg = match self.segment.get(usize::from(port)).copied() {
            Some(ANY_SEGMENT) | None => segment_of(d.addr),
            Some(seg) => seg,
        };
        let addr = self.free.pop_in(seg)?;
        let dst = mem.bytes_mut(addr, len);
        if dst.len() != len {
            self.free.push(addr);
            return None;
        }
        dst.copy_from_slice(&self.reject_buf[..len]);
        Some(addr)
    }

    /// Copies `d` into a free frame of segment `seg` and frees `d`: ports of different UMEM
    /// segments cannot hand each other descriptors. `None` (counted, by `from`, the port
    /// `d` came in on, if known) when the segment has no free frame.
    fn copy_to_segment(
        &mut self,
        mem: &mut M,
        from: Option<PortId>,
        seg: SegmentId,
        d: FrameDesc,
    ) -> Option<FrameDesc> {
        let Some(addr) = self.free.pop_in(seg) else {
            self.drop_frame_from(d, DropReason::NoFreeFrame, from);
            return None;
        };
        let len = d.len as usize;
        if !mem.copy_frame(d.addr, addr, len) {
            if self.scratch.len() < len {
                self.scratch.resize(len, 0);
            }
            let src = mem.bytes(d.addr, len);
            let n = src.len();
            self.scratch[..n].copy_from_slice(src);
            let dst = mem.bytes_mut(addr, len);
            if n != len || dst.len() != len {
                self.free.push(addr);
                self.drop_frame_from(d, DropReason::NoFreeFrame, from);
                return None;
            }
            dst.copy_from_slice(&self.scratch[..len]);
        }
        self.free.push(d.addr);
        self.counters.segment_copies.add(1);
        Some(FrameDesc { addr, len: d.len })
    }

    /// Queues a frame that another worker's engine already switched (and counted) for
    /// `port`, which this engine drives: the receiving half of a cross-worker hand-off. A
    /// frame of another memory segment is copied into the port's segment here, on the
    /// worker that owns the port (and so stocks that segment's frames). A full queue, an
    /// unknown port or no free frame drops the frame back into the free list, counted (in
    /// the totals only: its ingress port is the other worker's to know).
    pub fn enqueue_handed_over(&mut self, mem: &mut M, port: PortId, d: FrameDesc) {
        if let Some(d) = self.in_segment_of(mem, None, port, d) {
            self.queue_for_transmit(None, port, d);
        }
    }

    /// `d` as `port` can send it: itself when it lives in the port's memory segment (or the
    /// port is another worker's, which copies it), else a copy in that segment. `None`
    /// (counted, by `from` if known) when the segment has no free frame.
    #[inline(always)]
    fn in_segment_of(
        &mut self,
        mem: &mut M,
        from: Option<PortId>,
        port: PortId,
        d: FrameDesc,
    ) -> Option<FrameDesc> {
        let seg = self.segment.get(usize::from(port)).copied().unwrap_or(0);
        if segment_of(d.addr) == seg || seg == ANY_SEGMENT {
            Some(d)
        } else {
            self.copy_to_segment(mem, from, seg, d)
        }
    }

    /// Ports with frames in their transmit queue (a worker hands those of other workers'
    /// ports over).
    pub fn dirty_ports(&self) -> &[PortId] {
        &self.dirty
    }

    /// Tells the engine where each port sits in the slice later given to
    /// [`Engine::drive_active`] (control path: after ports are added or removed).
    pub fn bind_slots(&mut self, ids: impl Iterator<Item = PortId>) {
        self.slot_of.fill(NOT_DRIVEN);
        for (i, id) in ids.enumerate() {
            if let Some(s) = self.slot_of.get_mut(usize::from(id)) {
                *s = i as u16;
            }
        }
    }

    /// One iteration over the ports at positions `active` of `ports` (a slice bound with
    /// [`Engine::bind_slots`]): reclaim, refill, receive and process a batch from each, and
    /// hand every bound port — active or not — the frames queued for it. `transmitted` is
    /// called with the position of every port handed frames (possibly more than once), so
    /// the caller revisits them for their completions. Its cost follows the active ports, not the bound ones: this is how
    /// a worker with a thousand idle ports and one busy pair stays as fast as with two.
    pub fn drive_active<P: Port<M>>(
        &mut self,
        now: u64,
        mem: &mut M,
        ports: &mut [(PortId, P)],
        active: &[usize],
        transmitted: &mut impl FnMut(usize),
    ) -> DriveReport {
        let mut report = DriveReport::default();
        for &i in active {
            if let Some((_, p)) = ports.get_mut(i) {
                p.complete(&mut self.free);
                p.fill(mem, &mut self.free);
            }
        }
        let mut rx = DescBatch::default();
        for &i in active {
            let Some((id, p)) = ports.get_mut(i) else {
                continue;
            };
            let id = *id;
            p.receive(mem, &mut rx);
            report.received += rx.len();
            if !rx.is_empty() {
                self.process(now, id, mem, &mut rx);
                report.transmitted += self.transmit_queued(mem, ports, transmitted);
            }
        }
        report.transmitted += self.transmit_queued(mem, ports, transmitted);
        for &i in active {
            if let Some((_, p)) = ports.get_mut(i) {
                p.complete(&mut self.free);
                p.fill(mem, &mut self.free);
            }
        }
        report
    }

    /// Puts `d` on `port`'s transmit queue and marks the queue for the next transmit pass;
    /// a drop is counted by `from`, the port `d` came in on, if known.
    #[inline(always)]
    fn queue_for_transmit(&mut self, from: Option<PortId>, port: PortId, d: FrameDesc) -> bool {
        let Some(q) = self.tx.get_mut(usize::from(port)) else {
            self.drop_frame_from(d, DropReason::UnknownPort, from);
            return false;
        };
        if q.push(d).is_err() {
            self.drop_frame_from(d, DropReason::TxFull, from);
            return false;
        }
        let idx = usize::from(port);
        if !self.is_dirty[idx] {
            // `dirty` has room for every port: no allocation.
            self.is_dirty[idx] = true;
            self.dirty.push(port);
        }
        true
    }

    /// One iteration over a set of ports: reclaim completed frames and refill every port,
    /// then receive and process one batch from each, handing every port the frames queued
    /// for it after each batch (so one egress can take a full batch from every ingress), and
    /// reclaim again. One loop calling this drives any number of ports of any backend sharing
    /// `mem`. Frames queued for ports not in `ports` wait for a call that includes them.
    pub fn drive<P: Port<M>>(
        &mut self,
        now: u64,
        mem: &mut M,
        ports: &mut [(PortId, P)],
    ) -> DriveReport {
        let mut report = DriveReport::default();
        for (i, (id, p)) in ports.iter_mut().enumerate() {
            if let Some(s) = self.slot_of.get_mut(usize::from(*id)) {
                *s = i as u16;
            }
            p.complete(&mut self.free);
            p.fill(mem, &mut self.free);
        }
        let mut rx = DescBatch::default();
        for i in 0..ports.len() {
            let (id, p) = &mut ports[i];
            let id = *id;
            p.receive(mem, &mut rx);
            report.received += rx.len();
            if !rx.is_empty() {
                self.process(now, id, mem, &mut rx);
                report.transmitted += self.transmit_queued(mem, ports, &mut |_| {});
            }
        }
        report.transmitted += self.transmit_queued(mem, ports, &mut |_| {});
        for (id, p) in ports.iter_mut() {
            p.complete(&mut self.free);
            if let Some(s) = self.slot_of.get_mut(usize::from(*id)) {
                *s = NOT_DRIVEN;
            }
        }
        report
    }

    /// Hands each driven port its queued frames; returns how many the ports took.
    fn transmit_queued<P: Port<M>>(
        &mut self,
        mem: &mut M,
        ports: &mut [(PortId, P)],
        on_transmit: &mut impl FnMut(usize),
    ) -> usize {
        let mut sent = 0;
        let mut i = 0;
        while i < self.dirty.len() {
            let idx = usize::from(self.dirty[i]);
            let slot = usize::from(self.slot_of[idx]);
            if let Some((_, p)) = ports.get_mut(slot) {
                let q = &mut self.tx[idx];
                let before = q.len();
                p.transmit(mem, q);
                sent += before - q.len();
                on_transmit(slot);
            }
            if self.tx[idx].is_empty() {
                self.is_dirty[idx] = false;
                self.dirty.swap_remove(i);
            } else {
                i += 1;
            }
        }
        sent
    }
}
