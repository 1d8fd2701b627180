//! The engine's half of the tiered datapath (issue 9, `dataplane::offload`): upcalled frames
//! in, kernel flow-cache requests ([`OffloadOp`]) out, the kernel's activity back in.
//!
//! The simulated bridge's four hosts (gateway, parent, child: ports the kernel fast path
//! serves, [`PortRole::Tiered`]; other: a [`PortRole::Plain`] port) and an upcall port (9,
//! in a network of its own) whose frames carry the 14-byte tag naming their ingress port.
//! Covered:
//!
//! * upcalled frames are processed as received on the tagged port (egress, per-port
//!   counters, `offload.upcalls`), runs of several ports in one batch are split in order;
//!   untagged frames and tags naming an unknown or the upcall port are dropped and counted
//!   (in the totals, not as the upcall port's);
//! * a TCP flow between two tiered ports gets exactly two Forward requests (both directions,
//!   the policy generation) when the handshake's ACK confirms it, never before nor again;
//!   UDP when the reply is seen; ICMP, flows through the host and flows touching a plain
//!   port never;
//! * a flow denied by a Drop verdict gets one Drop request (not a Reject, not in audit
//!   mode); turning audit mode on removes the drop entries;
//! * Remove requests when a port is removed, a flow expires (lookup, sweep, sync) or a
//!   policy swap changes its verdict; a swap re-offloads with the new generation, at the
//!   flow's next packet or at once by `revalidate_offloaded` (audit mode included);
//! * `kernel_seen`: refreshes the flow, counts by port, rule and offload counters, counts a
//!   drop entry's packets as FlowDenied drops, disowns what the engine does not own;
//! * the request log's bound (`OffloadLog`), alone and full inside the engine.
//!
//! Deterministic: in-memory ports, a simulated clock. No root needed.

use dataplane::counters::{DropReason, Snapshot};
use dataplane::engine::{Engine, EngineConfig, PortConfig};
use dataplane::flow::{NOT_OFFLOADED, Timeouts};
use dataplane::offload::{
    KernelSeen, OffloadLog, OffloadOp, OffloadTarget, PortRole, reversed, tag,
};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{FreeList, HeapFrames, Port, PortId};
use dataplane::policy::{Action, FnPolicy, PacketRecord, Policy, VerdictRecord};
use dataplane::reject::RejectWith;
use dataplane::sim::*;
use dataplane::wire::Tuple;
use rules_wasm::abi::tcp_flags::{ACK, PSH, SYN};
use std::collections::BTreeMap;
use std::time::Duration;

/// The upcall port: in a network of its own (9), so nothing is ever flooded to it.
const UPCALL: PortId = 9;

const T_GW: OffloadTarget = OffloadTarget {
    ifindex: 100,
    peer: false,
};
const T_PARENT: OffloadTarget = OffloadTarget {
    ifindex: 101,
    peer: true,
};
const T_CHILD: OffloadTarget = OffloadTarget {
    ifindex: 102,
    peer: true,
};

const TCP: u8 = 6;
const UDP: u8 = 17;

const FRAMES: usize = 4096;
const SEC: u64 = 1_000_000_000;

/// The engine with the four hosts' ports and the upcall port.
struct Tiered {
    mem: HeapFrames,
    engine: Engine<HeapFrames>,
    ports: Vec<(PortId, MemoryPort)>,
    now: u64,
}

impl Tiered {
    fn new(policy: Box<dyn Policy>) -> Self {
        Self::with_config(EngineConfig::default(), policy)
    }

    fn with_config(config: EngineConfig, policy: Box<dyn Policy>) -> Self {
        let mut engine = Engine::new(config, policy, FreeList::full(FRAMES, FRAME_SIZE));
        let mut ports = Vec::new();
        for h in HOSTS {
            engine.add_port(host_port(h, false)).unwrap();
            ports.push((h.port, memory_port()));
        }
        engine
            .add_port(PortConfig {
                id: UPCALL,
                network: UPCALL,
                macs: vec![],
                ips: vec![],
                is_gateway: false,
                complete_checksums: false,
            })
            .unwrap();
        ports.push((UPCALL, memory_port()));
        engine.set_port_role(GW.port, PortRole::Tiered(T_GW));
        engine.set_port_role(PARENT.port, PortRole::Tiered(T_PARENT));
        engine.set_port_role(CHILD.port, PortRole::Tiered(T_CHILD));
        engine.set_port_role(UPCALL, PortRole::Upcall);
        Self {
            mem: HeapFrames::new(FRAMES, FRAME_SIZE),
            engine,
            ports,
            now: 0,
        }
    }

    fn port_mut(&mut self, port: PortId) -> &mut MemoryPort {
        &mut self.ports.iter_mut().find(|(id, _)| *id == port).unwrap().1
    }

    /// Drives the engine until nothing moves; returns what every port sent, by port.
    fn run(&mut self) -> BTreeMap<PortId, Vec<Vec<u8>>> {
        for _ in 0..100 {
            let r = self.engine.drive(self.now, &mut self.mem, &mut self.ports);
            let waiting: usize = self
                .ports
                .iter()
                .map(|(_, p)| {
                    let held = Port::<HeapFrames>::frames_held(p);
                    p.inbox_len() + held.rx + held.tx
                })
                .sum();
            if r.received == 0 && r.transmitted == 0 && waiting == 0 {
                return self
                    .ports
                    .iter_mut()
                    .map(|(id, p)| (*id, p.take_sent()))
                    .filter(|(_, got)| !got.is_empty())
                    .collect();
            }
        }
        panic!("the bridge did not settle");
    }

    /// `frame` received by `from`'s own port (the all-userspace path).
    fn direct(&mut self, from: Host, frame: &[u8]) -> BTreeMap<PortId, Vec<Vec<u8>>> {
        assert!(self.port_mut(from.port).inject(frame), "inbox full");
        self.run()
    }

    /// `frame` upcalled by the kernel from port `from`.
    fn upcall(&mut self, from: PortId, frame: &[u8]) -> BTreeMap<PortId, Vec<Vec<u8>>> {
        self.upcall_raw(&tagged(from, frame))
    }

    /// Bytes received on the upcall port as they are.
    fn upcall_raw(&mut self, bytes: &[u8]) -> BTreeMap<PortId, Vec<Vec<u8>>> {
        assert!(self.port_mut(UPCALL).inject(bytes), "inbox full");
        self.run()
    }

    /// The pending kernel requests, taken (as the worker does after a round).
    fn ops(&mut self) -> Vec<OffloadOp> {
        let log = self.engine.offload_log();
        let ops = log.pending().to_vec();
        log.clear();
        ops
    }

    fn snap(&self) -> Snapshot {
        self.engine.counters().snapshot()
    }

    fn seen(&mut self, s: KernelSeen) -> bool {
        self.engine.kernel_seen(&s, self.now)
    }

    /// Every frame is in exactly one place.
    fn assert_frames_accounted(&self) {
        let held: usize = self
            .ports
            .iter()
            .map(|(_, p)| Port::<HeapFrames>::frames_held(p).total())
            .sum();
        assert_eq!(
            self.engine.free_list().len() + self.engine.frames_queued() + held,
            FRAMES,
            "a frame was lost or counted twice"
        );
    }

    /// The live flow whose original tuple is `t`.
    fn flow(&self, t: &Tuple) -> Option<dataplane::flow::FlowEntry> {
        self.engine
            .flows()
            .iter(self.now)
            .find(|e| e.original_tuple() == *t)
            .copied()
    }

    /// A TCP handshake `a` → `b` through the upcall port; the requests after each step.
    fn handshake(&mut self, a: Host, b: Host, sport: u16, dport: u16) -> [Vec<OffloadOp>; 3] {
        let syn = self.upcall(a.port, &tcp_frame(a, b, sport, dport, SYN, &[]));
        assert_eq!(syn.keys().copied().collect::<Vec<_>>(), [b.port], "SYN");
        let after_syn = self.ops();
        let synack = self.upcall(b.port, &tcp_frame(b, a, dport, sport, SYN | ACK, &[]));
        assert_eq!(
            synack.keys().copied().collect::<Vec<_>>(),
            [a.port],
            "SYN-ACK"
        );
        let after_synack = self.ops();
        let ack = self.upcall(a.port, &tcp_frame(a, b, sport, dport, ACK, &[]));
        assert_eq!(ack.keys().copied().collect::<Vec<_>>(), [b.port], "ACK");
        [after_syn, after_synack, self.ops()]
    }

    /// A UDP request `a` → `b`, its reply and a second request, through the upcall port:
    /// offloaded at the second request (a flow past its first exchange).
    fn udp_exchange(&mut self, a: Host, b: Host, sport: u16, dport: u16) -> Vec<OffloadOp> {
        let req = self.upcall(a.port, &udp(a, b, sport, dport));
        assert_eq!(req.keys().copied().collect::<Vec<_>>(), [b.port], "request");
        assert_eq!(self.ops(), [], "an unanswered datagram is not offloaded");
        let rep = self.upcall(b.port, &udp(b, a, dport, sport));
        assert_eq!(rep.keys().copied().collect::<Vec<_>>(), [a.port], "reply");
        assert_eq!(self.ops(), [], "a single request/reply is not offloaded");
        let again = self.upcall(a.port, &udp(a, b, sport, dport));
        assert_eq!(
            again.keys().copied().collect::<Vec<_>>(),
            [b.port],
            "request"
        );
        self.ops()
    }
}

fn memory_port() -> MemoryPort {
    MemoryPort::new(MemoryPortConfig {
        fill_share: 128,
        ..MemoryPortConfig::default()
    })
}

/// `frame` behind a tag naming `port`, as the kernel program upcalls it.
fn tagged(port: PortId, frame: &[u8]) -> Vec<u8> {
    let mut t = [0u8; tag::LEN];
    tag::write(&mut t, port, tag::REASON_MISS);
    [&t[..], frame].concat()
}

fn udp(a: Host, b: Host, sport: u16, dport: u16) -> Vec<u8> {
    udp_frame(a, b.mac, b.ip, sport, dport, b"hello")
}

fn tuple(a: Host, b: Host, sport: u16, dport: u16, proto: u8) -> Tuple {
    Tuple {
        src: mapped(a.ip),
        dst: mapped(b.ip),
        src_port: sport,
        dst_port: dport,
        proto,
    }
}

fn target(h: Host) -> OffloadTarget {
    match h.port {
        0 => T_GW,
        1 => T_PARENT,
        2 => T_CHILD,
        p => panic!("port {p} has no kernel fast path"),
    }
}

/// The two Forward requests of flow `t` from `a` to `b`.
fn forwards(a: Host, b: Host, t: Tuple, generation: u64) -> [OffloadOp; 2] {
    [
        OffloadOp::Forward {
            in_port: a.port,
            tuple: t,
            out: target(b),
            generation,
        },
        OffloadOp::Forward {
            in_port: b.port,
            tuple: reversed(&t),
            out: target(a),
            generation,
        },
    ]
}

/// The two Remove requests of flow `t` from `a` to `b`.
fn removes(a: Host, b: Host, t: Tuple) -> [OffloadOp; 2] {
    [
        OffloadOp::Remove {
            in_port: a.port,
            tuple: t,
        },
        OffloadOp::Remove {
            in_port: b.port,
            tuple: reversed(&t),
        },
    ]
}

/// `ops` as a sorted list, for requests whose order follows flow-table slots.
fn sorted(ops: &[OffloadOp]) -> Vec<String> {
    let mut v: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
    v.sort();
    v
}

fn accept_all(generation: u64, rule: u32) -> Box<dyn Policy> {
    Box::new(FnPolicy::new(generation, move |_: &PacketRecord| {
        accept(rule)
    }))
}

/// Parent → child TCP 22 and UDP 53 dropped (rules 3 and 5), TCP 23 rejected (rule 4),
/// ICMP dropped (rule 6), everything else accepted (rule 1).
fn denying(generation: u64) -> Box<dyn Policy> {
    Box::new(FnPolicy::new(generation, |r: &PacketRecord| {
        match (r.protocol, r.dst_port) {
            (6, 22) => drop_(3),
            (6, 23) => VerdictRecord {
                action: Action::Reject,
                rule: 4,
                reject: RejectWith::TcpReset,
            },
            (17, 53) => drop_(5),
            (1, _) => drop_(6),
            _ => accept(1),
        }
    }))
}

fn rule_traffic(s: &Snapshot, rule: u32) -> (u64, u64) {
    s.rule_traffic
        .iter()
        .find(|(r, _, _)| *r == rule)
        .map_or((0, 0), |&(_, p, b)| (p, b))
}

// ---------------------------------------------------------------------------------------
// Upcalls.

#[test]
fn roles_are_recorded_and_plain_by_default() {
    let b = Tiered::new(accept_all(1, 1));
    assert_eq!(b.engine.port_role(GW.port), PortRole::Tiered(T_GW));
    assert_eq!(b.engine.port_role(PARENT.port), PortRole::Tiered(T_PARENT));
    assert_eq!(b.engine.port_role(OTHER.port), PortRole::Plain);
    assert_eq!(b.engine.port_role(UPCALL), PortRole::Upcall);
    assert_eq!(b.engine.port_role(500), PortRole::Plain);
    assert_eq!(b.engine.port_role(u16::MAX), PortRole::Plain);
    assert_eq!(b.engine.policy_generation(), 1);
}

#[test]
fn without_tiered_ports_nothing_is_recorded() {
    let mut engine = Engine::new(
        EngineConfig::default(),
        accept_all(1, 1),
        FreeList::full(FRAMES, FRAME_SIZE),
    );
    for h in HOSTS {
        engine.add_port(host_port(h, false)).unwrap();
    }
    let mut b = Tiered {
        mem: HeapFrames::new(FRAMES, FRAME_SIZE),
        engine,
        ports: HOSTS.iter().map(|h| (h.port, memory_port())).collect(),
        now: 0,
    };
    assert!(!b.engine.offload_log().enabled());
    for (from, to, sp, dp, flags) in [
        (PARENT, CHILD, 4000, 80, SYN),
        (CHILD, PARENT, 80, 4000, SYN | ACK),
        (PARENT, CHILD, 4000, 80, ACK),
        (PARENT, CHILD, 4000, 80, PSH | ACK),
    ] {
        assert_eq!(
            b.direct(from, &tcp_frame(from, to, sp, dp, flags, b"x"))
                .len(),
            1
        );
    }
    assert_eq!(b.ops(), []);
    assert_eq!(b.engine.offload_log().overflow(), 0);
    assert_eq!(b.snap().offload.installed, 0);
}

#[test]
fn upcalled_frames_are_processed_as_received_on_the_tagged_port() {
    let mut b = Tiered::new(accept_all(1, 1));
    let f = udp(PARENT, CHILD, 1000, 53);
    let got = b.upcall(PARENT.port, &f);
    assert_eq!(got, BTreeMap::from([(CHILD.port, vec![f.clone()])]));
    let s = b.snap();
    assert_eq!(s.offload.upcalls, 1);
    assert_eq!(s.offload.upcalls_untagged, 0);
    assert_eq!(s.port(PARENT.port).rx_packets, 1);
    assert_eq!(s.port(PARENT.port).rx_bytes, f.len() as u64);
    assert_eq!(s.port(PARENT.port).accepted, 1);
    assert_eq!(s.port(CHILD.port).tx_packets, 1);
    assert_eq!(s.port(CHILD.port).tx_bytes, f.len() as u64);
    assert_eq!(s.port(UPCALL).accepted, 0);
    assert_eq!(s.total_drops(), 0);
    let e = b
        .flow(&tuple(PARENT, CHILD, 1000, 53, UDP))
        .expect("the flow");
    assert_eq!(e.ports, [PARENT.port, CHILD.port]);
    assert_eq!(e.offloaded, NOT_OFFLOADED);
    // A frame tagged with a plain port is that port's too.
    let f = udp(OTHER, CHILD, 1001, 53);
    assert_eq!(
        b.upcall(OTHER.port, &f),
        BTreeMap::from([(CHILD.port, vec![f.clone()])])
    );
    assert_eq!(b.snap().port(OTHER.port).rx_packets, 1);
    assert_eq!(b.snap().offload.upcalls, 2);
    b.assert_frames_accounted();
}

#[test]
fn a_batch_of_upcalls_from_several_ports_is_split_by_port_in_order() {
    let mut b = Tiered::new(accept_all(1, 1));
    let request = udp(PARENT, CHILD, 1000, 53);
    let reply = udp(CHILD, PARENT, 53, 1000);
    let to_other = udp(PARENT, OTHER, 1002, 53);
    let from_gw = udp(GW, PARENT, 1003, 53);
    for (port, f) in [
        (PARENT.port, &request),
        (CHILD.port, &reply),
        (PARENT.port, &to_other),
        (GW.port, &from_gw),
    ] {
        assert!(b.port_mut(UPCALL).inject(&tagged(port, f)));
    }
    let got = b.run();
    assert_eq!(
        got,
        BTreeMap::from([
            (PARENT.port, vec![reply.clone(), from_gw.clone()]),
            (CHILD.port, vec![request.clone()]),
            (OTHER.port, vec![to_other.clone()]),
        ])
    );
    let s = b.snap();
    assert_eq!(s.offload.upcalls, 4);
    assert_eq!(s.port(PARENT.port).rx_packets, 2);
    assert_eq!(s.port(CHILD.port).rx_packets, 1);
    assert_eq!(s.port(GW.port).rx_packets, 1);
    // The request was decided before the reply was looked up: the reply found its flow
    // (and one request/reply is not offloaded).
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().flows.entries, 3);
    b.assert_frames_accounted();
}

#[test]
fn frames_without_a_valid_tag_are_dropped_and_counted() {
    let mut b = Tiered::new(accept_all(1, 1));
    let f = udp(PARENT, CHILD, 1000, 53);
    let mut wrong_type = tagged(PARENT.port, &f);
    wrong_type[12] = 0x08;
    wrong_type[13] = 0x00;
    let mut wrong_dst = tagged(PARENT.port, &f);
    wrong_dst[0] = 0x03;
    let cases: [(&str, Vec<u8>); 6] = [
        ("untagged", f.clone()),
        ("unknown port", tagged(7, &f)),
        ("out-of-range port", tagged(u16::MAX, &f)),
        ("the upcall port itself", tagged(UPCALL, &f)),
        ("wrong ethertype", wrong_type),
        ("wrong destination", wrong_dst),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        assert_eq!(b.upcall_raw(bytes), BTreeMap::new(), "{what}");
        let s = b.snap();
        let n = i as u64 + 1;
        assert_eq!(s.offload.upcalls, n, "{what}");
        assert_eq!(s.offload.upcalls_untagged, n, "{what}");
        assert_eq!(s.drops(DropReason::UnknownPort), n, "{what}");
        // In the totals only: no container's frame.
        assert_eq!(s.port(UPCALL).dropped(), 0, "{what}");
    }
    // Shorter than a tag.
    assert_eq!(
        b.upcall_raw(&tagged(PARENT.port, &f)[..10]),
        BTreeMap::new()
    );
    let s = b.snap();
    assert_eq!(s.offload.upcalls_untagged, 7);
    assert_eq!(s.total_drops(), 7);
    assert_eq!(s.port(PARENT.port).rx_packets, 0);
    assert_eq!(s.port(CHILD.port).tx_packets, 0);
    assert_eq!(b.engine.flows().len(), 0);
    // A valid tag with nothing behind it: the tagged port's malformed frame.
    assert_eq!(b.upcall(PARENT.port, &[]), BTreeMap::new());
    let s = b.snap();
    assert_eq!(s.offload.upcalls_untagged, 7);
    assert_eq!(s.port(PARENT.port).dropped(), 1);
    b.assert_frames_accounted();
}

// ---------------------------------------------------------------------------------------
// Forward requests.

#[test]
fn a_tcp_flow_between_tiered_ports_is_offloaded_when_the_handshake_completes() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    let [syn, synack, ack] = b.handshake(PARENT, CHILD, 4000, 80);
    assert_eq!(syn, [], "nothing at the SYN");
    assert_eq!(synack, [], "nothing at the SYN-ACK");
    assert_eq!(
        ack,
        forwards(PARENT, CHILD, t, 1),
        "both directions at the ACK"
    );
    assert_eq!(b.snap().offload.installed, 1);
    assert_eq!(b.flow(&t).unwrap().offloaded, 1);
    // Later packets, either way, by upcall or directly: nothing more.
    b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"GET"),
    );
    b.upcall(
        CHILD.port,
        &tcp_frame(CHILD, PARENT, 80, 4000, PSH | ACK, b"200"),
    );
    b.direct(PARENT, &tcp_frame(PARENT, CHILD, 4000, 80, ACK, &[]));
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().offload.installed, 1);
    // To the gateway (a tiered port without a peer redirect) too.
    let t = tuple(PARENT, GW, 4001, 443, TCP);
    let [syn, synack, ack] = b.handshake(PARENT, GW, 4001, 443);
    assert_eq!((syn, synack), (vec![], vec![]));
    assert_eq!(ack, forwards(PARENT, GW, t, 1));
    b.assert_frames_accounted();
}

#[test]
fn a_flow_seen_only_by_its_own_ports_is_offloaded_too() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(CHILD, PARENT, 5000, 8080, TCP);
    b.direct(CHILD, &tcp_frame(CHILD, PARENT, 5000, 8080, SYN, &[]));
    b.direct(
        PARENT,
        &tcp_frame(PARENT, CHILD, 8080, 5000, SYN | ACK, &[]),
    );
    assert_eq!(b.ops(), []);
    b.direct(CHILD, &tcp_frame(CHILD, PARENT, 5000, 8080, ACK, &[]));
    assert_eq!(b.ops(), forwards(CHILD, PARENT, t, 1));
}

#[test]
fn a_udp_flow_is_offloaded_at_its_second_packet_or_its_reply() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 1000, 53, UDP);
    // A lone datagram: nothing.
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
    assert_eq!(b.ops(), []);
    // Its second: a stream, offloaded although unanswered (the kernel forwards a reply).
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
    assert_eq!(b.ops(), forwards(PARENT, CHILD, t, 1));
    // A request answered at once is offloaded by its reply.
    let t2 = tuple(PARENT, CHILD, 1001, 53, UDP);
    assert_eq!(
        b.udp_exchange(PARENT, CHILD, 1001, 53),
        forwards(PARENT, CHILD, t2, 1)
    );
    for _ in 0..3 {
        b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
        b.upcall(CHILD.port, &udp(CHILD, PARENT, 53, 1000));
    }
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().offload.installed, 2);
}

#[test]
fn flows_touching_a_plain_port_or_icmp_are_never_offloaded() {
    let mut b = Tiered::new(accept_all(1, 1));
    for (a, c) in [(PARENT, OTHER), (OTHER, CHILD)] {
        let [syn, synack, ack] = b.handshake(a, c, 4000, 80);
        assert_eq!((syn, synack, ack), (vec![], vec![], vec![]));
        b.upcall(a.port, &tcp_frame(a, c, 4000, 80, PSH | ACK, b"data"));
        b.upcall(c.port, &tcp_frame(c, a, 80, 4000, PSH | ACK, b"data"));
        assert_eq!(b.udp_exchange(a, c, 1000, 53), []);
    }
    // An answered ping between two tiered ports: ICMP is always upcalled.
    assert_eq!(
        b.upcall(PARENT.port, &ping(PARENT, CHILD, 7, false)).len(),
        1
    );
    assert_eq!(b.upcall(CHILD.port, &ping(CHILD, PARENT, 7, true)).len(), 1);
    assert_eq!(
        b.upcall(PARENT.port, &ping(PARENT, CHILD, 7, false)).len(),
        1
    );
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().offload.installed, 0);
}

#[test]
fn flows_through_the_host_are_never_offloaded() {
    // The parent reaching the child through a published port: the host sends the parent's
    // packets back onto the bridge from the gateway port, and the replies go back to it.
    let via_gw = Host {
        port: GW.port,
        mac: GW.mac,
        ip: PARENT.ip,
    };
    let to_gw = Host {
        port: GW.port,
        mac: GW.mac,
        ip: PARENT.ip,
    };
    let mut b = Tiered::new(denying(1));
    for (from, frame, to) in [
        (
            GW.port,
            tcp_frame(via_gw, CHILD, 4000, 80, SYN, &[]),
            CHILD.port,
        ),
        (
            CHILD.port,
            tcp_frame(CHILD, to_gw, 80, 4000, SYN | ACK, &[]),
            GW.port,
        ),
        (
            GW.port,
            tcp_frame(via_gw, CHILD, 4000, 80, ACK, &[]),
            CHILD.port,
        ),
        (
            GW.port,
            tcp_frame(via_gw, CHILD, 4000, 80, PSH | ACK, b"x"),
            CHILD.port,
        ),
        (
            CHILD.port,
            tcp_frame(CHILD, to_gw, 80, 4000, PSH | ACK, b"y"),
            GW.port,
        ),
    ] {
        let got = b.upcall(from, &frame);
        assert_eq!(got.keys().copied().collect::<Vec<_>>(), [to]);
    }
    let e = b
        .flow(&tuple(PARENT, CHILD, 4000, 80, TCP))
        .expect("the flow");
    assert!(e.via_host);
    assert_eq!(e.ports, [PARENT.port, CHILD.port], "judged as the parent's");
    // A denial through the host: no drop entry either.
    let got = b.upcall(GW.port, &tcp_frame(via_gw, CHILD, 4001, 22, SYN, &[]));
    assert_eq!(got, BTreeMap::new());
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().offload.installed, 0);
}

// ---------------------------------------------------------------------------------------
// Drop requests and audit mode.

#[test]
fn a_flow_denied_by_a_drop_verdict_gets_one_drop_entry() {
    let mut b = Tiered::new(denying(1));
    let ssh = tuple(PARENT, CHILD, 4000, 22, TCP);
    let f = tcp_frame(PARENT, CHILD, 4000, 22, SYN, &[]);
    assert_eq!(b.upcall(PARENT.port, &f), BTreeMap::new());
    assert_eq!(
        b.ops(),
        [OffloadOp::Drop {
            in_port: PARENT.port,
            tuple: ssh,
            generation: 1
        }]
    );
    assert_eq!(b.flow(&ssh).unwrap().offloaded, 1);
    // Its retransmission is dropped by the cached denial: no second request.
    assert_eq!(b.upcall(PARENT.port, &f), BTreeMap::new());
    assert_eq!(b.ops(), []);
    let dns = tuple(PARENT, CHILD, 1000, 53, UDP);
    assert_eq!(
        b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53)),
        BTreeMap::new()
    );
    assert_eq!(
        b.ops(),
        [OffloadOp::Drop {
            in_port: PARENT.port,
            tuple: dns,
            generation: 1
        }]
    );
    assert_eq!(
        b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53)),
        BTreeMap::new()
    );
    assert_eq!(b.ops(), []);
    let s = b.snap();
    assert_eq!(s.drops(DropReason::PolicyDrop), 2);
    assert_eq!(s.drops(DropReason::FlowDenied), 2);
    assert_eq!(s.offload.installed, 0);
}

#[test]
fn rejects_icmp_and_denials_from_plain_ports_get_no_drop_entry() {
    let mut b = Tiered::new(denying(1));
    // A reject answers every packet: no drop entry, twice.
    for _ in 0..2 {
        let got = b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4000, 23, SYN, &[]));
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            [PARENT.port],
            "a RST"
        );
    }
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().reject_tcp_reset, 2);
    // ICMP is always upcalled.
    assert_eq!(
        b.upcall(PARENT.port, &ping(PARENT, CHILD, 9, false)),
        BTreeMap::new()
    );
    assert_eq!(b.ops(), []);
    // From a plain port: the kernel does not serve it.
    assert_eq!(
        b.upcall(OTHER.port, &tcp_frame(OTHER, CHILD, 4000, 22, SYN, &[])),
        BTreeMap::new()
    );
    assert_eq!(b.ops(), []);
}

#[test]
fn audit_mode_offloads_no_denial_and_no_audited_flow() {
    let config = EngineConfig {
        audit: true,
        ..EngineConfig::default()
    };
    let mut b = Tiered::with_config(config, denying(1));
    let [syn, synack, ack] = b.handshake(PARENT, CHILD, 4000, 22);
    assert_eq!((syn, synack, ack), (vec![], vec![], vec![]));
    b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 22, PSH | ACK, b"x"),
    );
    assert_eq!(b.udp_exchange(PARENT, CHILD, 1000, 53), []);
    assert_eq!(b.ops(), []);
    assert!(b.snap().audit_denied >= 2);
    // A flow the policy admits is offloaded in audit mode as always.
    let t = tuple(PARENT, CHILD, 4001, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4001, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
}

#[test]
fn turning_audit_on_removes_the_drop_entries() {
    let mut b = Tiered::new(denying(1));
    let ssh = tuple(PARENT, CHILD, 4000, 22, TCP);
    let dns = tuple(PARENT, CHILD, 1000, 53, UDP);
    let web = tuple(PARENT, CHILD, 4001, 80, TCP);
    b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4000, 22, SYN, &[]));
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
    assert_eq!(b.ops().len(), 2, "two drop entries");
    assert_eq!(
        b.handshake(PARENT, CHILD, 4001, 80)[2],
        forwards(PARENT, CHILD, web, 1)
    );
    b.engine.set_audit(true);
    assert_eq!(b.ops(), [], "read at the next batch");
    // Any batch: an ARP request from the gateway.
    b.direct(GW, &arp(GW, BROADCAST, PARENT, false));
    let mut want = removes(PARENT, CHILD, ssh).to_vec();
    want.extend(removes(PARENT, CHILD, dns));
    assert_eq!(
        sorted(&b.ops()),
        sorted(&want),
        "the drop entries, not the forward ones"
    );
    assert_eq!(b.flow(&web).unwrap().offloaded, 1);
    // Audit admits the denied flow now; it is not offloaded.
    let got = b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4000, 22, SYN, &[]));
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [CHILD.port]);
    assert_eq!(b.ops(), []);
    // Audit off again: no drop entries to remove.
    b.engine.set_audit(false);
    b.direct(GW, &arp(GW, BROADCAST, PARENT, false));
    assert_eq!(b.ops(), []);
}

// ---------------------------------------------------------------------------------------
// Remove requests.

#[test]
fn removing_a_port_removes_its_offloaded_flows_entries() {
    let mut b = Tiered::new(denying(1));
    let web = tuple(PARENT, CHILD, 4000, 80, TCP);
    let to_gw = tuple(PARENT, GW, 1000, 123, UDP);
    let ssh = tuple(PARENT, CHILD, 4001, 22, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, web, 1)
    );
    assert_eq!(
        b.udp_exchange(PARENT, GW, 1000, 123),
        forwards(PARENT, GW, to_gw, 1)
    );
    b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4001, 22, SYN, &[]));
    assert_eq!(b.ops().len(), 1, "a drop entry");
    // Unreplied: no entries.
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1001, 5000));
    assert_eq!(b.ops(), []);

    b.engine.remove_port(CHILD.port).unwrap();
    let at = b
        .ports
        .iter()
        .position(|(id, _)| *id == CHILD.port)
        .unwrap();
    let (_, p) = b.ports.remove(at);
    for addr in p.close() {
        b.engine.free_list_mut().push(addr);
    }
    let mut want = removes(PARENT, CHILD, web).to_vec();
    want.extend(removes(PARENT, CHILD, ssh));
    assert_eq!(sorted(&b.ops()), sorted(&want));
    // The gateway's flow stays offloaded.
    assert_eq!(b.flow(&to_gw).unwrap().offloaded, 1);
    b.assert_frames_accounted();
}

#[test]
fn an_expired_flow_found_by_lookup_removes_its_entries() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 1000, 53, UDP);
    assert_eq!(
        b.udp_exchange(PARENT, CHILD, 1000, 53),
        forwards(PARENT, CHILD, t, 1)
    );
    b.now += 119 * SEC;
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
    assert_eq!(b.ops(), [], "alive at 119 s (refreshed)");
    b.now += 121 * SEC;
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53));
    assert_eq!(
        b.ops(),
        removes(PARENT, CHILD, t),
        "expired, then new again"
    );
    assert_eq!(b.flow(&t).unwrap().offloaded, NOT_OFFLOADED);
    assert_eq!(b.snap().flows.expirations, 1);
}

#[test]
fn an_expired_flow_swept_removes_its_entries() {
    let config = EngineConfig {
        flow_capacity: 256,
        sweep_budget: 256,
        ..EngineConfig::default()
    };
    let mut b = Tiered::with_config(config, accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
    // Closed by a RST (the kernel upcalls it): 10 s to live.
    b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4000, 80, 0x04, &[]));
    assert_eq!(b.ops(), []);
    b.now += 11 * SEC;
    // Any batch sweeps.
    b.upcall(GW.port, &udp(GW, OTHER, 1000, 53));
    assert_eq!(b.ops(), removes(PARENT, CHILD, t));
    assert!(b.flow(&t).is_none());
}

#[test]
fn a_policy_swap_re_offloads_with_the_new_generation() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
    let _old = b.engine.set_policy(accept_all(2, 1));
    assert_eq!(b.engine.policy_generation(), 2);
    assert_eq!(b.ops(), [], "nothing until a packet of the flow is seen");
    // The kernel upcalls the stale entry's next packet.
    let got = b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [CHILD.port]);
    assert_eq!(
        b.ops(),
        forwards(PARENT, CHILD, t, 2),
        "same verdict: replaced"
    );
    assert_eq!(b.snap().flows.redecisions, 1);
    assert_eq!(b.flow(&t).unwrap().offloaded, 2);
    b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(b.ops(), []);
    // Noticed by the reply direction, with another accepting rule: the verdict changed,
    // so the old entries go first.
    let _old = b.engine.set_policy(accept_all(3, 7));
    let got = b.upcall(
        CHILD.port,
        &tcp_frame(CHILD, PARENT, 80, 4000, PSH | ACK, b"y"),
    );
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [PARENT.port]);
    let mut want = removes(PARENT, CHILD, t).to_vec();
    want.extend(forwards(PARENT, CHILD, t, 3));
    assert_eq!(b.ops(), want);
    assert_eq!(b.snap().offload.installed, 3);
}

#[test]
fn a_swap_to_a_denying_policy_removes_the_entries() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
    let _old = b
        .engine
        .set_policy(Box::new(FnPolicy::new(2, |_: &PacketRecord| drop_(9))));
    let got = b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(got, BTreeMap::new());
    let mut want = removes(PARENT, CHILD, t).to_vec();
    want.push(OffloadOp::Drop {
        in_port: PARENT.port,
        tuple: t,
        generation: 2,
    });
    assert_eq!(b.ops(), want, "the forward entries go, a drop entry comes");
    assert_eq!(b.snap().drops(DropReason::PolicyDrop), 1);
    b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().drops(DropReason::FlowDenied), 1);
}

#[test]
fn revalidation_after_a_swap_updates_or_removes_every_offloaded_flows_entries() {
    let mut b = Tiered::new(denying(1));
    let web = tuple(PARENT, CHILD, 4000, 80, TCP);
    let dns = tuple(CHILD, PARENT, 1000, 5353, UDP);
    let ssh = tuple(PARENT, CHILD, 4001, 22, TCP);
    let unreplied = tuple(PARENT, CHILD, 1001, 5000, UDP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, web, 1)
    );
    assert_eq!(
        b.udp_exchange(CHILD, PARENT, 1000, 5353),
        forwards(CHILD, PARENT, dns, 1)
    );
    b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4001, 22, SYN, &[]));
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1001, 5000));
    assert_eq!(b.ops().len(), 1, "the drop entry");
    let redecisions = b.snap().flows.redecisions;

    // Generation 2 admits everything it admitted (same rules): the entries are renewed.
    let _old = b.engine.set_policy(denying(2));
    b.engine.revalidate_offloaded(b.now);
    let mut want = forwards(PARENT, CHILD, web, 2).to_vec();
    want.extend(forwards(CHILD, PARENT, dns, 2));
    want.extend(removes(PARENT, CHILD, ssh));
    assert_eq!(sorted(&b.ops()), sorted(&want));
    assert_eq!(
        b.snap().flows.redecisions,
        redecisions + 2,
        "the two offloaded flows"
    );
    assert_eq!(
        b.flow(&web).map(|e| (e.generation, e.offloaded)),
        Some((2, 2))
    );
    assert_eq!(
        b.flow(&unreplied).unwrap().generation,
        1,
        "not offloaded: untouched"
    );
    // Their packets are not re-decided again.
    b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(b.ops(), []);
    assert_eq!(b.snap().flows.redecisions, redecisions + 2);
    // Called again: nothing to do.
    b.engine.revalidate_offloaded(b.now);
    assert_eq!(b.ops(), []);

    // Generation 3 denies the web flow and admits the other by another rule.
    let (p, c) = (mapped(PARENT.ip), mapped(CHILD.ip));
    let _old = b
        .engine
        .set_policy(Box::new(FnPolicy::new(3, move |r: &PacketRecord| {
            if r.src == p && r.dst == c && r.dst_port == 80 {
                drop_(3)
            } else {
                accept(8)
            }
        })));
    b.engine.revalidate_offloaded(b.now);
    let mut want = removes(PARENT, CHILD, web).to_vec();
    // The denied flow's originator gets a drop entry: its packets stay in the kernel.
    want.push(OffloadOp::Drop {
        in_port: PARENT.port,
        tuple: web,
        generation: 3,
    });
    want.extend(removes(CHILD, PARENT, dns));
    want.extend(forwards(CHILD, PARENT, dns, 3));
    assert_eq!(sorted(&b.ops()), sorted(&want));
    assert_eq!(
        b.flow(&web).map(|e| (e.verdict.accept, e.offloaded)),
        Some((false, 3))
    );
    // The denied flow's next packet is dropped by the engine.
    let got = b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(got, BTreeMap::new());
    assert_eq!(b.snap().drops(DropReason::FlowDenied), 1);
}

#[test]
fn revalidation_decides_more_flows_than_a_policy_batch() {
    let mut b = Tiered::new(accept_all(1, 1));
    const FLOWS: u16 = 150;
    // In runs of a batch: an in-memory port holds no more frames than its fill share.
    for start in (0..FLOWS).step_by(64) {
        let end = (start + 64).min(FLOWS);
        for i in start..end {
            assert!(
                b.port_mut(PARENT.port)
                    .inject(&udp(PARENT, CHILD, 20_000 + i, 53))
            );
        }
        b.run();
        for i in start..end {
            assert!(
                b.port_mut(CHILD.port)
                    .inject(&udp(CHILD, PARENT, 53, 20_000 + i))
            );
        }
        b.run();
        // A second request each: past the first exchange, offloaded.
        for i in start..end {
            assert!(
                b.port_mut(PARENT.port)
                    .inject(&udp(PARENT, CHILD, 20_000 + i, 53))
            );
        }
        b.run();
    }
    assert_eq!(b.ops().len(), 2 * usize::from(FLOWS));
    // Generation 2 denies the odd source ports.
    let _old = b
        .engine
        .set_policy(Box::new(FnPolicy::new(2, |r: &PacketRecord| {
            if r.src_port % 2 == 1 {
                drop_(3)
            } else {
                accept(1)
            }
        })));
    b.engine.revalidate_offloaded(b.now);
    let ops = b.ops();
    let mut want = Vec::new();
    for i in 0..FLOWS {
        let sport = 20_000 + i;
        let t = tuple(PARENT, CHILD, sport, 53, UDP);
        if sport % 2 == 1 {
            want.extend(removes(PARENT, CHILD, t));
            want.push(OffloadOp::Drop {
                in_port: PARENT.port,
                tuple: t,
                generation: 2,
            });
        } else {
            want.extend(forwards(PARENT, CHILD, t, 2));
        }
    }
    assert_eq!(sorted(&ops), sorted(&want));
    assert_eq!(b.snap().flows.redecisions, u64::from(FLOWS));
}

#[test]
fn revalidation_under_audit_removes_what_only_audit_admits() {
    let mut b = Tiered::new(accept_all(1, 1));
    let web = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, web, 1)
    );
    b.engine.set_audit(true);
    b.direct(GW, &arp(GW, BROADCAST, PARENT, false));
    assert_eq!(b.ops(), []);
    let _old = b
        .engine
        .set_policy(Box::new(FnPolicy::new(2, |_: &PacketRecord| drop_(9))));
    b.engine.revalidate_offloaded(b.now);
    assert_eq!(b.ops(), removes(PARENT, CHILD, web));
    let e = b.flow(&web).unwrap();
    assert!(e.verdict.accept && e.audited);
    // Audit admits its packets; it is not offloaded again.
    let got = b.upcall(
        PARENT.port,
        &tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x"),
    );
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [CHILD.port]);
    assert_eq!(b.ops(), []);
}

/// Generation 2 of [`reply_direction_denial`]: the parent may no longer reach the child's
/// port 80; the child may open anything.
fn no_parent_to_child_80(generation: u64) -> Box<dyn Policy> {
    let (p, c) = (mapped(PARENT.ip), mapped(CHILD.ip));
    Box::new(FnPolicy::new(generation, move |r: &PacketRecord| {
        if r.src == p && r.dst == c && r.dst_port == 80 {
            drop_(3)
        } else {
            accept(1)
        }
    }))
}

/// A denial noticed by a packet of the reply direction: the engine treats that direction's
/// next packets as new (a denied flow is one-way, its replies are misses), so a kernel
/// drop entry for it would drop what the engine would ask the policy about — and admit.
/// `reply`: the child's packet that notices the swap.
/// `original`: a packet of the parent's direction, which must stay denied.
fn reply_direction_denial(b: &mut Tiered, reply: &[u8], original: &[u8]) {
    let _old = b.engine.set_policy(no_parent_to_child_80(2));
    // As the worker does right after a swap (nothing to do for a flow not offloaded).
    b.engine.revalidate_offloaded(b.now);
    assert_eq!(
        b.upcall(CHILD.port, reply),
        BTreeMap::new(),
        "re-decided: denied"
    );
    let ops = b.ops();
    // The engine admits the child's next packet as a flow of its own...
    let got = b.upcall(CHILD.port, reply);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [PARENT.port]);
    // ...but does not take the denied flow over: the parent's packets stay denied (they
    // would pass as replies of an admitted flow).
    let parent = b.upcall(PARENT.port, original);
    assert_eq!(parent, BTreeMap::new(), "the parent's packets stay denied");
    // ...which a drop entry for the child's direction would have dropped in the kernel
    // (until the denial expires, 5 s later).
    assert!(
        !ops.iter()
            .any(|o| matches!(o, OffloadOp::Drop { in_port, .. } if *in_port == CHILD.port)),
        "a drop entry for the reply direction: {ops:?}"
    );
}

#[test]
fn a_denial_noticed_by_an_unoffloaded_flows_reply_drops_nothing_the_engine_would_admit() {
    // A datagram admitted by generation 1, its reply arriving after the swap.
    let mut b = Tiered::new(accept_all(1, 1));
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 4000, 80));
    assert_eq!(b.ops(), []);
    reply_direction_denial(
        &mut b,
        &udp(CHILD, PARENT, 80, 4000),
        &udp(PARENT, CHILD, 4000, 80),
    );
}

#[test]
fn a_denial_noticed_by_a_stale_entrys_reply_drops_nothing_the_engine_would_admit() {
    // An offloaded flow whose stale entry upcalls the reply first (without the worker's
    // revalidation, which re-decides it by its originator's record).
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
    let _old = b.engine.set_policy(no_parent_to_child_80(2));
    let reply = tcp_frame(CHILD, PARENT, 80, 4000, PSH | ACK, b"y");
    assert_eq!(
        b.upcall(CHILD.port, &reply),
        BTreeMap::new(),
        "re-decided: denied"
    );
    let ops = b.ops();
    assert_eq!(&ops[..2], removes(PARENT, CHILD, t));
    let got = b.upcall(CHILD.port, &reply);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), [PARENT.port]);
    // The child's packets pass one by one; the parent's stay denied.
    let data = tcp_frame(PARENT, CHILD, 4000, 80, PSH | ACK, b"x");
    assert_eq!(b.upcall(PARENT.port, &data), BTreeMap::new());
    assert!(
        b.ops()
            .iter()
            .all(|o| !matches!(o, OffloadOp::Forward { .. }))
    );
    assert!(
        !ops.iter()
            .any(|o| matches!(o, OffloadOp::Drop { in_port, .. } if *in_port == CHILD.port)),
        "a drop entry for the reply direction: {ops:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The kernel's activity read back.

#[test]
fn kernel_seen_refreshes_and_counts_an_offloaded_flow() {
    let mut b = Tiered::new(accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 1000, 53, UDP);
    assert_eq!(
        b.udp_exchange(PARENT, CHILD, 1000, 53),
        forwards(PARENT, CHILD, t, 1)
    );
    let before = b.snap();
    // Assured at 0: expires at 120 s unless the kernel's traffic refreshes it.
    b.now = 100 * SEC;
    assert!(b.seen(KernelSeen {
        in_port: PARENT.port,
        tuple: t,
        packets: 10,
        bytes: 1000,
        last_seen: Some(90 * SEC),
        dropped: false,
    }));
    assert!(b.seen(KernelSeen {
        in_port: CHILD.port,
        tuple: reversed(&t),
        packets: 4,
        bytes: 400,
        last_seen: None,
        dropped: false,
    }));
    assert_eq!(b.ops(), []);
    let s = b.snap();
    let (p, c) = (s.port(PARENT.port), s.port(CHILD.port));
    let (p0, c0) = (before.port(PARENT.port), before.port(CHILD.port));
    assert_eq!(
        (p.rx_packets - p0.rx_packets, p.rx_bytes - p0.rx_bytes),
        (10, 1000)
    );
    assert_eq!(
        (p.tx_packets - p0.tx_packets, p.tx_bytes - p0.tx_bytes),
        (4, 400)
    );
    assert_eq!(
        (c.rx_packets - c0.rx_packets, c.rx_bytes - c0.rx_bytes),
        (4, 400)
    );
    assert_eq!(
        (c.tx_packets - c0.tx_packets, c.tx_bytes - c0.tx_bytes),
        (10, 1000)
    );
    assert_eq!(s.offload.kernel_forwarded, 14);
    assert_eq!(s.offload.kernel_forwarded_bytes, 1400);
    assert_eq!(s.offload.kernel_dropped, 0);
    let (rp, rb) = rule_traffic(&s, 1);
    let (rp0, rb0) = rule_traffic(&before, 1);
    assert_eq!((rp - rp0, rb - rb0), (14, 1400));
    // Refreshed at 100 s (the later stamp): alive at 200 s, gone after 220 s.
    b.now = 200 * SEC;
    assert_eq!(
        b.flow(&t).map(|e| e.offloaded),
        Some(1),
        "refreshed by the kernel"
    );
    assert!(b.seen(KernelSeen {
        in_port: PARENT.port,
        tuple: t,
        packets: 0,
        bytes: 0,
        last_seen: None,
        dropped: false,
    }));
    assert_eq!(
        b.snap().offload.kernel_forwarded,
        14,
        "an idle entry counts nothing"
    );
    b.now = 221 * SEC;
    assert!(!b.seen(KernelSeen {
        in_port: PARENT.port,
        tuple: t,
        packets: 0,
        bytes: 0,
        last_seen: None,
        dropped: false,
    }));
    assert_eq!(b.ops(), removes(PARENT, CHILD, t), "expired when looked up");
}

#[test]
fn kernel_seen_keeps_an_established_tcp_flow_established() {
    let config = EngineConfig {
        timeouts: Timeouts {
            tcp_established: Duration::from_secs(60),
            ..Timeouts::default()
        },
        ..EngineConfig::default()
    };
    let mut b = Tiered::with_config(config, accept_all(1, 1));
    let t = tuple(PARENT, CHILD, 4000, 80, TCP);
    assert_eq!(
        b.handshake(PARENT, CHILD, 4000, 80)[2],
        forwards(PARENT, CHILD, t, 1)
    );
    for i in 1..=5u64 {
        b.now = i * 50 * SEC;
        let (in_port, tuple) = if i % 2 == 0 {
            (CHILD.port, reversed(&t))
        } else {
            (PARENT.port, t)
        };
        assert!(b.seen(KernelSeen {
            in_port,
            tuple,
            packets: 1,
            bytes: 60,
            last_seen: Some(b.now),
            dropped: false,
        }));
    }
    b.now = 300 * SEC;
    let e = b.flow(&t).expect("kept alive by the kernel's traffic");
    assert_eq!(e.state, dataplane::flow::ConnState::TcpEstablished);
    assert_eq!(e.offloaded, 1);
    assert_eq!(b.ops(), []);
}

#[test]
fn kernel_seen_disowns_what_the_engine_does_not_own() {
    let mut b = Tiered::new(accept_all(1, 1));
    let offloaded = tuple(PARENT, CHILD, 1000, 53, UDP);
    assert_eq!(
        b.udp_exchange(PARENT, CHILD, 1000, 53),
        forwards(PARENT, CHILD, offloaded, 1)
    );
    let plain = tuple(PARENT, OTHER, 1001, 53, UDP);
    assert_eq!(b.udp_exchange(PARENT, OTHER, 1001, 53), []);
    let unreplied = tuple(PARENT, CHILD, 1002, 53, UDP);
    b.upcall(PARENT.port, &udp(PARENT, CHILD, 1002, 53));
    assert_eq!(b.ops(), []);
    let before = b.snap();
    let seen = |in_port, tuple| KernelSeen {
        in_port,
        tuple,
        packets: 3,
        bytes: 300,
        last_seen: None,
        dropped: false,
    };
    for (what, s) in [
        (
            "unknown tuple",
            seen(PARENT.port, tuple(PARENT, CHILD, 9, 9, UDP)),
        ),
        ("not offloaded: a plain port", seen(PARENT.port, plain)),
        ("not offloaded: unreplied", seen(PARENT.port, unreplied)),
        ("another port", seen(OTHER.port, offloaded)),
        ("unknown port", seen(50, offloaded)),
        ("out-of-range port", seen(u16::MAX, offloaded)),
    ] {
        assert!(!b.seen(s), "{what}");
    }
    assert_eq!(b.ops(), []);
    let s = b.snap();
    assert_eq!(s.offload, before.offload);
    assert_eq!(s.ports, before.ports);
    assert_eq!(s.rule_traffic, before.rule_traffic);
}

#[test]
fn kernel_seen_counts_a_drop_entrys_packets_as_flow_denied() {
    let mut b = Tiered::new(denying(1));
    let ssh = tuple(PARENT, CHILD, 4000, 22, TCP);
    b.upcall(PARENT.port, &tcp_frame(PARENT, CHILD, 4000, 22, SYN, &[]));
    assert_eq!(b.ops().len(), 1);
    let before = b.snap();
    b.now = 2 * SEC;
    assert!(b.seen(KernelSeen {
        in_port: PARENT.port,
        tuple: ssh,
        packets: 5,
        bytes: 300,
        last_seen: Some(2 * SEC),
        dropped: true,
    }));
    let s = b.snap();
    assert_eq!(s.drops(DropReason::FlowDenied), 5);
    assert_eq!(s.port(PARENT.port).drops(DropReason::FlowDenied), 5);
    assert_eq!(s.offload.kernel_dropped, 5);
    assert_eq!(s.offload.kernel_forwarded, 0);
    assert_eq!(
        s.port(PARENT.port).rx_packets,
        before.port(PARENT.port).rx_packets
    );
    assert_eq!(
        s.port(CHILD.port).tx_packets,
        before.port(CHILD.port).tx_packets
    );
    // A denial is not refreshed: it ages out after 5 s and its entry goes, so the policy
    // is asked again.
    b.now = 6 * SEC;
    assert!(!b.seen(KernelSeen {
        in_port: PARENT.port,
        tuple: ssh,
        packets: 1,
        bytes: 60,
        last_seen: Some(6 * SEC),
        dropped: true,
    }));
    assert_eq!(b.ops(), removes(PARENT, CHILD, ssh));
}

// ---------------------------------------------------------------------------------------
// The request log's bound.

#[test]
fn the_offload_log_is_bounded_and_counts_what_did_not_fit() {
    let op = OffloadOp::Remove {
        in_port: 1,
        tuple: tuple(PARENT, CHILD, 1, 2, UDP),
    };
    let mut off = OffloadLog::with_capacity(0);
    assert!(!off.enabled());
    assert!(!off.push(op));
    assert_eq!((off.pending().len(), off.overflow()), (0, 1));

    let mut log = OffloadLog::with_capacity(3);
    assert!(log.enabled());
    assert!(log.has_room(3) && !log.has_room(4));
    let ops: Vec<OffloadOp> = (0..4u16)
        .map(|i| OffloadOp::Remove {
            in_port: i,
            tuple: tuple(PARENT, CHILD, i, 2, UDP),
        })
        .collect();
    let pushed: Vec<bool> = ops.iter().map(|o| log.push(*o)).collect();
    assert_eq!(pushed, [true, true, true, false]);
    assert_eq!(
        log.pending(),
        &ops[..3],
        "oldest first, the last one dropped"
    );
    assert_eq!(log.overflow(), 1);
    assert!(!log.has_room(1));
    log.clear();
    assert!(log.has_room(3));
    assert_eq!(log.overflow(), 1, "the overflow count survives a drain");
    assert!(log.push(ops[3]));
}

#[test]
fn a_full_log_defers_an_install_to_the_flows_next_packet() {
    let mut b = Tiered::new(accept_all(1, 1));
    // 8192 requests fit: 4096 flows of two entries each.
    const FLOWS: u16 = 4096;
    for chunk in 0..FLOWS / 64 {
        for i in 0..64 {
            let sport = 10_000 + chunk * 64 + i;
            assert!(
                b.port_mut(PARENT.port)
                    .inject(&udp(PARENT, CHILD, sport, 53))
            );
        }
        b.run();
        for i in 0..64 {
            let sport = 10_000 + chunk * 64 + i;
            assert!(
                b.port_mut(CHILD.port)
                    .inject(&udp(CHILD, PARENT, 53, sport))
            );
        }
        b.run();
        for i in 0..64 {
            let sport = 10_000 + chunk * 64 + i;
            assert!(
                b.port_mut(PARENT.port)
                    .inject(&udp(PARENT, CHILD, sport, 53))
            );
        }
        b.run();
    }
    assert_eq!(
        b.engine.offload_log().pending().len(),
        2 * usize::from(FLOWS)
    );
    assert_eq!(b.engine.offload_log().overflow(), 0);
    assert_eq!(b.snap().offload.installed, u64::from(FLOWS));
    // One more flow: no room for its entries.
    let t = tuple(PARENT, CHILD, 9000, 53, UDP);
    b.direct(PARENT, &udp(PARENT, CHILD, 9000, 53));
    b.direct(CHILD, &udp(CHILD, PARENT, 53, 9000));
    b.direct(PARENT, &udp(PARENT, CHILD, 9000, 53));
    assert!(b.engine.offload_log().overflow() >= 1);
    assert_eq!(b.snap().offload.installed, u64::from(FLOWS));
    assert_eq!(b.flow(&t).unwrap().offloaded, NOT_OFFLOADED);
    let ops = b.ops();
    assert_eq!(
        ops.len(),
        2 * usize::from(FLOWS),
        "nothing of the flow got in"
    );
    // Drained: its next packet asks again.
    b.direct(PARENT, &udp(PARENT, CHILD, 9000, 53));
    assert_eq!(b.ops(), forwards(PARENT, CHILD, t, 1));
    assert_eq!(b.flow(&t).unwrap().offloaded, 1);
    b.assert_frames_accounted();
}
