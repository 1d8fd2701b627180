//! Hundreds of ports on one engine, the way a busy Docker host has them: every port gets its
//! share of a frame memory far smaller than ports × ring size, so the last port receives as
//! well as the first (before the frame budget, the first ports' fill rings took every frame
//! and a 16th port starved). Driven through [`Engine::drive_active`], the worker's path,
//! with only the ports that need it visited. No root needed.

use dataplane::engine::{Engine, EngineConfig, PortConfig};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{FreeList, HeapFrames, Port, PortId};
use dataplane::policy::{Action, ConstPolicy};
use dataplane::sim::*;
use std::net::{IpAddr, Ipv4Addr};

const PORTS: usize = 300;

fn host(i: usize) -> Host {
    let (hi, lo) = ((i >> 8) as u8, i as u8);
    Host {
        port: i as PortId,
        mac: [2, 0x42, 172, 17, hi, lo],
        ip: [172, 17, hi, lo.max(1)],
    }
}

fn hosts() -> Vec<Host> {
    // Port 0 is the gateway (172.17.0.1); containers from 172.17.0.2 on.
    (0..PORTS)
        .map(|i| {
            let n = i + 1;
            Host {
                port: i as PortId,
                mac: host(n).mac,
                ip: [172, 17, (n >> 8) as u8, n as u8],
            }
        })
        .collect()
}

struct Bridge {
    mem: HeapFrames,
    engine: Engine<HeapFrames>,
    ports: Vec<(PortId, MemoryPort)>,
    total: usize,
}

impl Bridge {
    fn new(frames: usize) -> Self {
        let hs = hosts();
        let mut engine = Engine::new(
            EngineConfig::default(),
            Box::new(ConstPolicy {
                action: Action::Accept,
                generation: 1,
            }),
            FreeList::full(frames, FRAME_SIZE),
        );
        let mut ports = Vec::new();
        for h in &hs {
            engine
                .add_port(PortConfig {
                    id: h.port,
                    network: 0,
                    macs: vec![h.mac],
                    ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip))],
                    is_gateway: h.port == 0,
                    complete_checksums: false,
                })
                .unwrap();
            // A whole AF_XDP-sized ring per port, as the product opens them: only the fill
            // share, not the ring, may be parked.
            let port = MemoryPort::new(MemoryPortConfig {
                ring_size: 1024,
                inbox_size: 16,
                ..MemoryPortConfig::default()
            });
            ports.push((h.port, port));
        }
        engine.bind_slots(ports.iter().map(|(id, _)| *id));
        Self {
            mem: HeapFrames::new(frames, FRAME_SIZE),
            engine,
            ports,
            total: frames,
        }
    }

    fn run(&mut self, active: &[usize]) {
        let mut sent = Vec::new();
        for _ in 0..3 {
            sent.clear();
            self.engine
                .drive_active(0, &mut self.mem, &mut self.ports, active, &mut |slot| {
                    sent.push(slot)
                });
            for &i in &sent {
                Port::<HeapFrames>::complete(&mut self.ports[i].1, self.engine.free_list_mut());
            }
        }
    }

    fn accounted(&self) -> usize {
        self.engine.free_list().len()
            + self.engine.frames_queued()
            + self
                .ports
                .iter()
                .map(|(_, p)| Port::<HeapFrames>::frames_held(p).total())
                .sum::<usize>()
    }
}

#[test]
fn three_hundred_ports_share_a_small_memory_and_all_receive() {
    // Room for every port's 64-frame share plus 2,048 in flight — a quarter of what 300
    // rings of 256 would park.
    let mut b = Bridge::new(PORTS * 64 + 2048);
    let all: Vec<usize> = (0..PORTS).collect();
    b.run(&all);
    for (id, p) in &b.ports {
        let held = Port::<HeapFrames>::frames_held(p);
        assert_eq!(held.fill, 64, "port {id} holds its share, not its ring");
    }
    let hs = hosts();
    let gw = hs[0];
    // Every container sends to the gateway at once, as after a host restart.
    for h in &hs[1..] {
        assert!(
            b.ports[usize::from(h.port)]
                .1
                .inject(&udp_frame(*h, gw.mac, gw.ip, 1000, 53, b"q"))
        );
    }
    b.run(&all);
    let got = b.ports[0].1.take_sent();
    assert_eq!(got.len(), PORTS - 1, "the gateway heard every container");
    let starved: u64 = b.ports.iter().map(|(_, p)| p.stats().rx_dropped).sum();
    assert_eq!(starved, 0, "no port lacked a frame to receive into");
    // The gateway answers the last one: the last port receives too.
    let last = hs[PORTS - 1];
    assert!(
        b.ports[0]
            .1
            .inject(&udp_frame(gw, last.mac, last.ip, 53, 1000, b"a"))
    );
    b.run(&[0]);
    assert_eq!(b.ports[PORTS - 1].1.take_sent().len(), 1);
    assert_eq!(b.accounted(), b.total, "every frame in exactly one place");
}

#[test]
fn an_arp_request_goes_to_the_owner_only_and_idle_ports_are_not_visited() {
    let mut b = Bridge::new(PORTS * 64 + 2048);
    let all: Vec<usize> = (0..PORTS).collect();
    b.run(&all);
    let hs = hosts();
    let (asker, gw) = (hs[PORTS - 1], hs[0]);
    assert!(
        b.ports[PORTS - 1]
            .1
            .inject(&arp(asker, BROADCAST, gw, false))
    );
    // Only the asking port is visited: the request still reaches the gateway's port,
    // which the engine transmits on without visiting it.
    b.run(&[PORTS - 1]);
    assert_eq!(
        b.ports[0].1.take_sent().len(),
        1,
        "the owner got the request"
    );
    let others: usize = b.ports[1..]
        .iter_mut()
        .map(|(_, p)| p.take_sent().len())
        .sum();
    assert_eq!(others, 0, "no other container saw it");
    let s = b.engine.counters().snapshot();
    assert_eq!((s.arp_directed, s.flood_copies), (1, 0));
    // A gratuitous ARP (sender = target) is still flooded, as a bridge does.
    assert!(
        b.ports[PORTS - 1]
            .1
            .inject(&arp(asker, BROADCAST, asker, false))
    );
    b.run(&[PORTS - 1]);
    let heard = b
        .ports
        .iter_mut()
        .map(|(_, p)| p.take_sent().len())
        .filter(|&n| n > 0)
        .count();
    assert_eq!(heard, PORTS - 1);
    b.run(&all);
    assert_eq!(b.accounted(), b.total);
}
