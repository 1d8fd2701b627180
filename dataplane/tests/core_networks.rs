//! One engine, two Docker bridge networks (issue 13): network A (id 0, the default bridge:
//! gateway port 0, containers on ports 1–3) and network B (id 5, a user-defined `br-…`:
//! gateway port 5, containers on ports 6–8). Ports 3 and 8 are one multi-homed container,
//! with a different MAC and address in each network. Each network is its own L2 domain: no
//! frame is ever switched from a port of one to a port of the other. Deterministic: in-memory
//! ports, a simulated clock. No root needed.

use dataplane::counters::DropReason;
use dataplane::engine::{Engine, EngineConfig, EngineError, PortConfig};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{FreeList, HeapFrames, Port, PortId};
use dataplane::policy::{Action, ConstPolicy, FnPolicy, PacketRecord, Policy, VerdictRecord};
use dataplane::sim::*;
use dataplane::switch::SwitchError;
use rules_wasm::abi::tcp_flags::{ACK, SYN};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

/// Network A: Docker's default bridge, 172.17.0.0/16; its id is its gateway's port, 0.
const NET_A: PortId = 0;
/// Network B: a user-defined bridge, 172.18.0.0/16; its id is its gateway's port, 5.
const NET_B: PortId = 5;

const GW_A: Host = Host {
    port: 0,
    mac: [2, 0x42, 0xaa, 0, 0, 1],
    ip: [172, 17, 0, 1],
};
const A1: Host = Host {
    port: 1,
    mac: [2, 0x42, 172, 17, 0, 2],
    ip: [172, 17, 0, 2],
};
const A2: Host = Host {
    port: 2,
    mac: [2, 0x42, 172, 17, 0, 3],
    ip: [172, 17, 0, 3],
};
/// The multi-homed container's interface in network A.
const MA: Host = Host {
    port: 3,
    mac: [2, 0x42, 172, 17, 0, 4],
    ip: [172, 17, 0, 4],
};
const GW_B: Host = Host {
    port: 5,
    mac: [2, 0x42, 0xbb, 0, 0, 1],
    ip: [172, 18, 0, 1],
};
const B1: Host = Host {
    port: 6,
    mac: [2, 0x42, 172, 18, 0, 2],
    ip: [172, 18, 0, 2],
};
const B2: Host = Host {
    port: 7,
    mac: [2, 0x42, 172, 18, 0, 3],
    ip: [172, 18, 0, 3],
};
/// The multi-homed container's interface in network B.
const MB: Host = Host {
    port: 8,
    mac: [2, 0x42, 172, 18, 0, 4],
    ip: [172, 18, 0, 4],
};

const NETWORK_A: [Host; 4] = [GW_A, A1, A2, MA];
const NETWORK_B: [Host; 4] = [GW_B, B1, B2, MB];

const FRAMES: usize = 4096;

fn ports_of(hosts: &[Host]) -> Vec<PortId> {
    hosts.iter().map(|h| h.port).collect()
}

fn config(h: Host, network: PortId, is_gateway: bool) -> PortConfig {
    PortConfig {
        id: h.port,
        network,
        macs: vec![h.mac],
        ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip))],
        is_gateway,
        complete_checksums: false,
    }
}

/// The engine with its in-memory ports, which come and go like containers and networks.
struct Bridge {
    mem: HeapFrames,
    engine: Engine<HeapFrames>,
    ports: Vec<(PortId, MemoryPort)>,
    now: u64,
}

impl Bridge {
    /// An engine with no ports.
    fn empty(policy: Box<dyn Policy>) -> Self {
        Self {
            mem: HeapFrames::new(FRAMES, FRAME_SIZE),
            engine: Engine::new(
                EngineConfig::default(),
                policy,
                FreeList::full(FRAMES, FRAME_SIZE),
            ),
            ports: Vec::new(),
            now: 0,
        }
    }

    /// Both networks, every port present.
    fn new(policy: Box<dyn Policy>) -> Self {
        let mut b = Self::empty(policy);
        b.add_network(NET_A, &NETWORK_A);
        b.add_network(NET_B, &NETWORK_B);
        b
    }

    fn accept_all() -> Self {
        Self::new(Box::new(ConstPolicy {
            action: Action::Accept,
            generation: 1,
        }))
    }

    /// `hosts[0]` is the gateway.
    fn add_network(&mut self, network: PortId, hosts: &[Host]) {
        for (i, h) in hosts.iter().enumerate() {
            self.add(*h, network, i == 0).unwrap();
        }
    }

    fn add(&mut self, h: Host, network: PortId, is_gateway: bool) -> Result<(), EngineError> {
        self.engine.add_port(config(h, network, is_gateway))?;
        self.ports.push((
            h.port,
            MemoryPort::new(MemoryPortConfig {
                fill_share: 128,
                ..MemoryPortConfig::default()
            }),
        ));
        Ok(())
    }

    /// Removes a port as a worker does: from the engine, then its frames back to the pool.
    fn remove(&mut self, port: PortId) {
        self.engine.remove_port(port).unwrap();
        let at = self.ports.iter().position(|(id, _)| *id == port).unwrap();
        let (_, p) = self.ports.remove(at);
        for addr in p.close() {
            self.engine.free_list_mut().push(addr);
        }
    }

    fn port_mut(&mut self, port: PortId) -> &mut MemoryPort {
        &mut self.ports.iter_mut().find(|(id, _)| *id == port).unwrap().1
    }

    /// Drives the engine until nothing moves.
    fn run(&mut self) {
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
                return;
            }
        }
        panic!("the bridge did not settle");
    }

    /// Sends `frame` from `from`'s port and returns what every port received, by port.
    fn send(&mut self, from: Host, frame: &[u8]) -> BTreeMap<PortId, Vec<Vec<u8>>> {
        assert!(self.port_mut(from.port).inject(frame), "inbox full");
        self.run();
        self.ports
            .iter_mut()
            .map(|(id, p)| (*id, p.take_sent()))
            .filter(|(_, got)| !got.is_empty())
            .collect()
    }

    /// The ports that received `frame` sent from `from`.
    fn receivers(&mut self, from: Host, frame: &[u8]) -> Vec<PortId> {
        self.send(from, frame).into_keys().collect()
    }

    fn cross_network_drops(&self) -> u64 {
        self.engine
            .counters()
            .snapshot()
            .drops(DropReason::CrossNetwork)
    }

    /// Every frame is in exactly one place: free, held by a port, or queued.
    fn assert_accounted(&self) {
        let held: usize = self
            .ports
            .iter()
            .map(|(_, p)| Port::<HeapFrames>::frames_held(p).total())
            .sum();
        assert_eq!(
            self.engine.free_list().len() + self.engine.frames_queued() + held,
            FRAMES,
            "every frame in exactly one place"
        );
    }
}

fn broadcast(from: Host) -> Vec<u8> {
    udp_frame(from, BROADCAST, [255; 4], 68, 67, b"discover")
}

/// A frame as the host sends it back onto a bridge after DNAT: from that bridge's gateway
/// port and MAC, with `src`'s address and `to`'s MAC and address.
fn hairpinned(gw: Host, src: Host, to: Host, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = tcp_frame(src, to, sport, dport, flags, &[]);
    f[6..12].copy_from_slice(&gw.mac);
    f
}

/// A policy that records every record it is asked about and accepts.
fn recording() -> (Box<dyn Policy>, Arc<Mutex<Vec<PacketRecord>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let p = FnPolicy::new(1, move |r: &PacketRecord| {
        s.lock().unwrap().push(*r);
        accept(1)
    });
    (Box::new(p), seen)
}

#[test]
fn broadcasts_reach_only_their_own_network() {
    let mut b = Bridge::accept_all();
    // A container of A: every other port of A, never one of B (nor B's gateway).
    assert_eq!(b.receivers(A1, &broadcast(A1)), vec![0, 2, 3]);
    // A container of B: every other port of B.
    assert_eq!(b.receivers(B1, &broadcast(B1)), vec![5, 7, 8]);
    // The multi-homed container: each of its interfaces in its own network.
    assert_eq!(b.receivers(MA, &broadcast(MA)), vec![0, 1, 2]);
    assert_eq!(b.receivers(MB, &broadcast(MB)), vec![5, 6, 7]);
    // The host's side of each bridge floods into its own network only.
    assert_eq!(b.receivers(GW_A, &broadcast(GW_A)), vec![1, 2, 3]);
    assert_eq!(b.receivers(GW_B, &broadcast(GW_B)), vec![6, 7, 8]);
    // Unknown unicast floods like a broadcast: within the network.
    let stranger = udp_frame(B2, [2, 0x42, 9, 9, 9, 9], [172, 18, 9, 9], 1, 2, b"?");
    assert_eq!(b.receivers(B2, &stranger), vec![5, 6, 8]);
    // A container's broadcast echoed back by its bridge is still dropped, per gateway.
    assert!(b.receivers(GW_B, &broadcast(B1)).is_empty());
    let s = b.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::EchoedFlood), 1);
    assert_eq!(s.flood_copies, 7 * 2);
    assert_eq!(b.cross_network_drops(), 0);
    b.assert_accounted();
}

#[test]
fn arp_is_directed_to_an_owner_of_the_same_network_only() {
    let mut b = Bridge::accept_all();
    // For an address of the asker's network: to its owner alone.
    assert_eq!(b.receivers(A1, &arp(A1, BROADCAST, A2, false)), vec![2]);
    assert_eq!(b.receivers(A1, &arp(A1, BROADCAST, GW_A, false)), vec![0]);
    assert_eq!(b.receivers(B1, &arp(B1, BROADCAST, MB, false)), vec![8]);
    assert_eq!(b.receivers(MA, &arp(MA, BROADCAST, GW_A, false)), vec![0]);
    assert_eq!(b.receivers(MB, &arp(MB, BROADCAST, GW_B, false)), vec![5]);
    assert_eq!(b.engine.counters().snapshot().arp_directed, 5);
    // For an address owned in the other network: unknown here, flooded within A, never
    // sent to its owner in B.
    assert_eq!(
        b.receivers(A1, &arp(A1, BROADCAST, B1, false)),
        vec![0, 2, 3]
    );
    assert_eq!(
        b.receivers(A1, &arp(A1, BROADCAST, MB, false)),
        vec![0, 2, 3]
    );
    assert_eq!(
        b.receivers(B2, &arp(B2, BROADCAST, GW_A, false)),
        vec![5, 6, 8]
    );
    assert_eq!(b.engine.counters().snapshot().arp_directed, 5);
    // The reply is unicast within the network; a reply aimed at a MAC of the other network
    // is dropped like any frame.
    assert_eq!(b.receivers(A2, &arp(A2, A1.mac, A1, true)), vec![1]);
    assert!(b.receivers(A2, &arp(A2, B1.mac, B1, true)).is_empty());
    assert_eq!(b.cross_network_drops(), 1);
    b.assert_accounted();
}

#[test]
fn unicast_to_a_mac_of_another_network_is_dropped_and_counted() {
    let mut b = Bridge::accept_all();
    // Container to container, to the other gateway, and between the multi-homed
    // container's own two interfaces.
    let tries = [
        (A1, tcp_frame(A1, B1, 40000, 80, SYN, &[])),
        (A1, udp_frame(A1, GW_B.mac, GW_B.ip, 40000, 53, b"q")),
        (B2, tcp_frame(B2, A2, 40000, 80, SYN, &[])),
        (MA, tcp_frame(MA, MB, 40000, 80, SYN, &[])),
        (MB, ping(MB, MA, 7, false)),
        (B1, ping(B1, GW_A, 7, false)),
    ];
    for (from, frame) in &tries {
        assert!(
            b.receivers(*from, frame).is_empty(),
            "from port {}: nothing crosses networks",
            from.port
        );
    }
    let s = b.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::CrossNetwork), tries.len() as u64);
    assert_eq!(s.port(A1.port).drops(DropReason::CrossNetwork), 2);
    assert_eq!(s.port(MB.port).drops(DropReason::CrossNetwork), 1);
    assert_eq!(
        s.policy_records, 0,
        "dropped by the switch, before the policy"
    );
    assert_eq!(DropReason::CrossNetwork.name(), "cross_network");
    assert!(DropReason::all().any(|r| r == DropReason::CrossNetwork));
    // Within each network the same containers reach each other.
    assert_eq!(
        b.receivers(A1, &tcp_frame(A1, MA, 40000, 80, SYN, &[])),
        vec![3]
    );
    assert_eq!(
        b.receivers(B1, &tcp_frame(B1, MB, 40000, 80, SYN, &[])),
        vec![8]
    );
    b.assert_accounted();
}

#[test]
fn a_frame_from_one_gateway_to_a_container_of_the_other_network_is_dropped() {
    let mut b = Bridge::accept_all();
    assert!(
        b.receivers(GW_A, &tcp_frame(GW_A, B1, 443, 40000, SYN | ACK, &[]))
            .is_empty()
    );
    assert!(b.receivers(GW_B, &ping(GW_B, A2, 9, false)).is_empty());
    assert!(b.receivers(GW_B, &ping(GW_B, GW_A, 9, false)).is_empty());
    assert_eq!(b.cross_network_drops(), 3);
    // Each gateway reaches its own containers.
    assert_eq!(b.receivers(GW_B, &ping(GW_B, B1, 9, false)), vec![6]);
    assert_eq!(b.receivers(GW_A, &ping(GW_A, A2, 9, false)), vec![2]);
    // A MAC learned on B's gateway (an outside host behind bridge B) means nothing in A.
    let outside = Host {
        port: 99,
        mac: [2, 0xee, 0, 0, 0, 1],
        ip: [172, 18, 200, 1],
    };
    let from_outside = ping(outside, B1, 3, false);
    assert_eq!(b.receivers(GW_B, &from_outside), vec![6]);
    assert_eq!(
        b.engine.switch().lookup(NET_B, &outside.mac),
        Some(GW_B.port)
    );
    assert_eq!(b.engine.switch().lookup(NET_A, &outside.mac), None);
    assert_eq!(b.receivers(B1, &ping(B1, outside, 3, true)), vec![5]);
    let to_outside_from_a = ping(A1, outside, 4, false);
    assert_eq!(
        b.receivers(A1, &to_outside_from_a),
        vec![0, 2, 3],
        "unknown in A"
    );
    b.assert_accounted();
}

#[test]
fn replies_through_the_host_go_back_to_their_own_networks_gateway() {
    let (policy, seen) = recording();
    let mut b = Bridge::new(policy);
    // In each network a container reaches another through a published port: the host
    // DNATs and sends the packet back onto that network's bridge with the source kept.
    let syn_b = hairpinned(GW_B, B2, B1, 40000, 80, SYN);
    assert_eq!(b.receivers(GW_B, &syn_b), vec![B1.port]);
    let syn_a = hairpinned(GW_A, A2, A1, 40000, 80, SYN);
    assert_eq!(b.receivers(GW_A, &syn_a), vec![A1.port]);
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0].in_port, B2.port,
            "judged as B2's, its own network's"
        );
        assert_eq!(seen[1].in_port, A2.port, "judged as A2's");
    }
    // The answers go back through the host of their own network, addressed to that bridge.
    let synack_b = tcp_frame(B1, B2, 80, 40000, SYN | ACK, &[]);
    let got = b.send(B1, &synack_b);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![GW_B.port]);
    assert_eq!(&got[&GW_B.port][0][0..6], &GW_B.mac);
    let synack_a = tcp_frame(A1, A2, 80, 40000, SYN | ACK, &[]);
    let got = b.send(A1, &synack_a);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![GW_A.port]);
    assert_eq!(&got[&GW_A.port][0][0..6], &GW_A.mac);
    assert_eq!(b.engine.counters().snapshot().via_host, 2);
    // A packet the host routed from network A into network B (A1's address kept) is not
    // A1's in network B: the policy sees B's gateway, and its reply is switched as usual.
    let routed = hairpinned(GW_B, A1, B1, 41000, 80, SYN);
    assert_eq!(b.receivers(GW_B, &routed), vec![B1.port]);
    assert_eq!(seen.lock().unwrap()[2].in_port, GW_B.port);
    let mut reply = tcp_frame(B1, A1, 80, 41000, SYN | ACK, &[]);
    reply[0..6].copy_from_slice(&GW_B.mac);
    let got = b.send(B1, &reply);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![GW_B.port]);
    assert_eq!(got[&GW_B.port][0], reply, "not a via-host reply: unchanged");
    assert_eq!(b.engine.counters().snapshot().via_host, 2);
    b.assert_accounted();
}

#[test]
fn a_flow_of_one_network_does_not_pass_packets_of_another() {
    // The policy admits anything except what A1's port sends.
    let deny_a1 = |r: &PacketRecord| -> VerdictRecord {
        if r.in_port == A1.port {
            drop_(1)
        } else {
            accept(2)
        }
    };
    let mut b = Bridge::new(Box::new(FnPolicy::new(1, deny_a1)));
    // The host routes A1 → B1:80 into network B (source kept): admitted there.
    let routed = hairpinned(GW_B, A1, B1, 42000, 80, SYN);
    assert_eq!(b.receivers(GW_B, &routed), vec![B1.port]);
    // The same tuple sent by A1 on its own network (to its gateway, the router) is a new
    // flow of network A, asked about and denied — not a hit on network B's flow.
    let direct = {
        let mut f = tcp_frame(A1, B1, 42000, 80, SYN, &[]);
        f[0..6].copy_from_slice(&GW_A.mac);
        f
    };
    assert!(b.receivers(A1, &direct).is_empty());
    let s = b.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::PolicyDrop), 1);
    assert_eq!(s.flows.entries, 2, "one flow per network");
    let t = dataplane::wire::Tuple {
        src: mapped(A1.ip),
        dst: mapped(B1.ip),
        src_port: 42000,
        dst_port: 80,
        proto: 6,
    };
    let flows = b.engine.flows();
    let in_b = flows.peek(&flows.hash_tuple_in(&t, NET_B), b.now).unwrap();
    let in_a = flows.peek(&flows.hash_tuple_in(&t, NET_A), b.now).unwrap();
    assert!(in_b.verdict.accept && !in_a.verdict.accept);
    b.assert_accounted();
}

#[test]
fn a_network_and_its_gateway_come_and_go_at_run_time() {
    let mut b = Bridge::empty(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    b.add_network(NET_A, &NETWORK_A);
    b.run();
    assert_eq!(b.receivers(A1, &broadcast(A1)), vec![0, 2, 3]);
    // `docker network create`: B's gateway and containers arrive while A runs.
    b.add_network(NET_B, &NETWORK_B);
    b.run();
    assert_eq!(b.engine.gateway(NET_B), Some((GW_B.port, GW_B.mac)));
    assert_eq!(b.engine.gateway(NET_A), Some((GW_A.port, GW_A.mac)));
    assert_eq!(b.receivers(B1, &broadcast(B1)), vec![5, 7, 8]);
    assert_eq!(b.receivers(A1, &broadcast(A1)), vec![0, 2, 3]);
    assert_eq!(b.receivers(B1, &ping(B1, GW_B, 1, false)), vec![5]);
    assert_eq!(b.receivers(GW_B, &ping(GW_B, B1, 1, true)), vec![6]);
    // One gateway per network; a network id must name a port id.
    let second = Host {
        port: 9,
        mac: [2, 0x42, 0xbb, 0, 0, 2],
        ip: [172, 18, 0, 254],
    };
    assert!(matches!(
        b.engine.add_port(config(second, NET_B, true)),
        Err(EngineError::Switch(SwitchError::SecondGateway {
            network: NET_B,
            existing: 5
        }))
    ));
    assert!(matches!(
        b.engine.add_port(config(second, 5000, false)),
        Err(EngineError::NetworkOutOfRange { network: 5000, .. })
    ));
    // B's gateway goes (its bridge is being torn down, its containers not yet): B's
    // containers still reach each other, and nothing leaks into A.
    b.remove(GW_B.port);
    assert_eq!(b.engine.gateway(NET_B), None);
    assert_eq!(b.engine.switch().gateway(NET_B), None);
    assert_eq!(b.receivers(B1, &broadcast(B1)), vec![7, 8]);
    assert_eq!(b.receivers(B1, &ping(B1, GW_B, 2, false)), vec![7, 8]);
    assert_eq!(b.receivers(B1, &ping(B1, B2, 2, false)), vec![7]);
    assert_eq!(b.receivers(A1, &broadcast(A1)), vec![0, 2, 3]);
    // It comes back (another port, another MAC): B is whole again.
    b.add(second, NET_B, true).unwrap();
    assert_eq!(b.engine.gateway(NET_B), Some((second.port, second.mac)));
    assert_eq!(b.receivers(B1, &broadcast(B1)), vec![7, 8, 9]);
    assert_eq!(b.receivers(B1, &ping(B1, second, 3, false)), vec![9]);
    assert_eq!(b.receivers(B2, &arp(B2, BROADCAST, second, false)), vec![9]);
    // `docker network rm`: every port of B goes; A is untouched.
    for port in [second.port, B1.port, B2.port, MB.port] {
        b.remove(port);
    }
    assert_eq!(
        b.engine.switch().networks().collect::<Vec<_>>(),
        vec![NET_A]
    );
    assert_eq!(b.engine.switch().ports(), &ports_of(&NETWORK_A)[..]);
    assert_eq!(b.receivers(A1, &broadcast(A1)), vec![0, 2, 3]);
    // B1's MAC is registered nowhere now: unknown unicast, flooded within A.
    assert_eq!(b.receivers(A1, &ping(A1, B1, 4, false)), vec![0, 2, 3]);
    assert_eq!(b.cross_network_drops(), 0);
    b.assert_accounted();
}

#[test]
fn a_single_network_behaves_as_before() {
    // The lab: four hosts, all in network 0, gateway port 0.
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    assert_eq!(
        receivers(&lab.send(PARENT, &broadcast(PARENT))),
        vec![0, 2, 3]
    );
    assert_eq!(
        receivers(&lab.send(PARENT, &arp(PARENT, BROADCAST, GW, false))),
        vec![0]
    );
    assert_eq!(lab.engine.switch().networks().collect::<Vec<_>>(), vec![0]);
    assert_eq!(lab.engine.gateway(0), Some((GW.port, GW.mac)));
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::CrossNetwork),
        0
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}
