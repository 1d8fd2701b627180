//! Shared helpers of the core tests: a simulated bridge (engine + in-memory ports) and frame
//! builders. Frames are built with `etherparse`'s `PacketBuilder`, an implementation
//! independent of the parser under test.
#![allow(dead_code)]

use dataplane::engine::{Engine, EngineConfig, PortConfig};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{FreeList, HeapFrames, Port, PortId};
use dataplane::policy::{Action, PacketRecord, Policy, VerdictRecord};
use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder, TcpHeader};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

pub(crate) const FRAME_SIZE: usize = 2048;
pub(crate) const SEC: u64 = 1_000_000_000;

/// A simulated container (or the gateway) on the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Host {
    pub port: PortId,
    pub mac: [u8; 6],
    pub ip: [u8; 4],
}

pub(crate) const GW: Host = Host {
    port: 0,
    mac: [2, 0x42, 0, 0, 0, 1],
    ip: [172, 17, 0, 1],
};
pub(crate) const PARENT: Host = Host {
    port: 1,
    mac: [2, 0x42, 172, 17, 0, 2],
    ip: [172, 17, 0, 2],
};
pub(crate) const CHILD: Host = Host {
    port: 2,
    mac: [2, 0x42, 172, 17, 0, 3],
    ip: [172, 17, 0, 3],
};
pub(crate) const OTHER: Host = Host {
    port: 3,
    mac: [2, 0x42, 172, 17, 0, 4],
    ip: [172, 17, 0, 4],
};
pub(crate) const HOSTS: [Host; 4] = [GW, PARENT, CHILD, OTHER];
pub(crate) const BROADCAST: [u8; 6] = [0xff; 6];

pub(crate) fn mapped(ip: [u8; 4]) -> [u8; 16] {
    rules_wasm::abi::addr_bytes(IpAddr::V4(Ipv4Addr::from(ip)))
}

pub(crate) fn accept(rule: u32) -> VerdictRecord {
    VerdictRecord::new(Action::Accept, rule)
}

pub(crate) fn drop_(rule: u32) -> VerdictRecord {
    VerdictRecord::new(Action::Drop, rule)
}

/// Docker's icc=false with `--link child:alias` from the parent, exposing TCP 80, as a
/// plain-Rust reference policy: parent → child TCP dport 80 (rule 1) and anything to or from
/// the gateway (rule 2) are accepted, every other container-to-container packet dropped
/// (rule 3). It states no reply rule: replies must pass by the flow table.
pub(crate) fn icc_false_link(r: &PacketRecord) -> VerdictRecord {
    let (p, c, g) = (mapped(PARENT.ip), mapped(CHILD.ip), mapped(GW.ip));
    if r.src == p && r.dst == c && r.protocol == 6 && r.dst_port == 80 {
        accept(1)
    } else if r.src == g || r.dst == g {
        accept(2)
    } else {
        drop_(3)
    }
}

/// The port configuration of host `h`: its MAC, its IPv4 and IPv6 (`v6`) addresses, the
/// gateway flag.
pub(crate) fn host_port(h: Host, complete_checksums: bool) -> PortConfig {
    PortConfig {
        id: h.port,
        macs: vec![h.mac],
        ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip)), IpAddr::V6(v6(h).into())],
        is_gateway: h == GW,
        complete_checksums,
    }
}

/// The simulated bridge: one engine, one in-memory port per host, a shared frame memory.
pub(crate) struct Lab {
    pub mem: HeapFrames,
    pub engine: Engine<HeapFrames>,
    pub ports: Vec<MemoryPort>,
    pub now: u64,
    pub total_frames: usize,
}

impl Lab {
    pub(crate) fn new(policy: Box<dyn Policy>) -> Self {
        Self::with(
            EngineConfig::default(),
            // Scenarios inject up to a few hundred frames before the engine runs: each port
            // keeps a whole ring of fill frames (4 ports × 256 of the 4,096).
            MemoryPortConfig {
                fill_share: 256,
                ..MemoryPortConfig::default()
            },
            4096,
            policy,
        )
    }

    pub(crate) fn with(
        config: EngineConfig,
        port_config: MemoryPortConfig,
        frames: usize,
        policy: Box<dyn Policy>,
    ) -> Self {
        let mem = HeapFrames::new(frames, FRAME_SIZE);
        let free = FreeList::full(frames, FRAME_SIZE);
        let mut engine = Engine::new(config, policy, free);
        let mut ports = Vec::new();
        for h in HOSTS {
            engine.add_port(host_port(h, false)).unwrap();
            ports.push(MemoryPort::new(port_config));
        }
        Self {
            mem,
            engine,
            ports,
            now: 0,
            total_frames: frames,
        }
    }

    pub(crate) fn advance(&mut self, d: Duration) {
        self.now += d.as_nanos() as u64;
    }

    pub(crate) fn inject(&mut self, from: Host, frame: &[u8]) {
        assert!(
            self.ports[usize::from(from.port)].inject(frame),
            "inbox full"
        );
    }

    /// Drives the engine until nothing moves.
    pub(crate) fn run(&mut self) {
        for _ in 0..1000 {
            let mut set: Vec<(PortId, &mut MemoryPort)> = self
                .ports
                .iter_mut()
                .enumerate()
                .map(|(i, p)| (i as PortId, p))
                .collect();
            let r = self.engine.drive(self.now, &mut self.mem, &mut set);
            let inbox: usize = self.ports.iter().map(MemoryPort::inbox_len).sum();
            let queued = self.engine.frames_queued() - self.engine.fragments_held();
            let in_tx: usize = self
                .ports
                .iter()
                .map(|p| Port::<HeapFrames>::frames_held(p).tx)
                .sum();
            if r.received == 0 && r.transmitted == 0 && inbox == 0 && queued == 0 && in_tx == 0 {
                return;
            }
        }
        panic!("the lab did not settle");
    }

    /// Sends `frame` from `from`, runs, and returns what every host received.
    pub(crate) fn send(&mut self, from: Host, frame: &[u8]) -> [Vec<Vec<u8>>; 4] {
        self.inject(from, frame);
        self.run();
        self.take_all()
    }

    pub(crate) fn take_all(&mut self) -> [Vec<Vec<u8>>; 4] {
        std::array::from_fn(|i| self.ports[i].take_sent())
    }

    /// Every frame is somewhere: free list, a port, or an engine transmit queue.
    pub(crate) fn frames_accounted(&self) -> usize {
        self.engine.free_list().len()
            + self
                .ports
                .iter()
                .map(|p| Port::<HeapFrames>::frames_held(p).total())
                .sum::<usize>()
            + self.engine.frames_queued()
    }
}

/// Splits a whole IPv4 frame's payload into fragments of at most `mtu` bytes of IP packet,
/// as the sender's kernel does for a datagram bigger than the MTU.
pub(crate) fn fragments(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let (header, payload) = ip.split_at(ihl);
    let step = (mtu - ihl) / 8 * 8;
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut h = header.to_vec();
            h[2..4].copy_from_slice(&((ihl + chunk.len()) as u16).to_be_bytes());
            let off = (i * step / 8) as u16 | if i + 1 < n { 0x2000 } else { 0 };
            h[6..8].copy_from_slice(&off.to_be_bytes());
            h[10..12].copy_from_slice(&[0, 0]);
            let sum = ones_complement(&h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            [eth, &h, chunk].concat()
        })
        .collect()
}

/// Splits a whole IPv6 frame (no extension headers) into fragments of at most `mtu` bytes
/// of IP packet, inserting a fragment header with identification `id`.
pub(crate) fn fragments_v6(frame: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let (header, payload) = ip.split_at(40);
    let step = (mtu - 48) / 8 * 8;
    let chunks: Vec<&[u8]> = payload.chunks(step).collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut h = header.to_vec();
            let next = h[6];
            h[6] = 44;
            h[4..6].copy_from_slice(&((8 + chunk.len()) as u16).to_be_bytes());
            let off = (i * step) as u16 | u16::from(i + 1 < n);
            let mut fh = vec![next, 0];
            fh.extend_from_slice(&off.to_be_bytes());
            fh.extend_from_slice(&id.to_be_bytes());
            [eth, &h, &fh, chunk].concat()
        })
        .collect()
}

fn ones_complement(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP/IPv6 frame between two hosts' link-local-free addresses (`fd00::<last ip byte>`).
pub(crate) fn udp6_frame(from: Host, to: Host, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv6(v6(from), v6(to), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

/// The IPv6 address tests give a host: `fd00::` plus its IPv4 address.
pub(crate) fn v6(h: Host) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[12..16].copy_from_slice(&h.ip);
    a
}

/// Who got a frame, as port numbers.
pub(crate) fn receivers(got: &[Vec<Vec<u8>>; 4]) -> Vec<PortId> {
    got.iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, _)| i as PortId)
        .collect()
}

pub(crate) fn tcp_frame(
    from: Host,
    to: Host,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    h.fin = flags & 0x01 != 0;
    h.syn = flags & 0x02 != 0;
    h.rst = flags & 0x04 != 0;
    h.psh = flags & 0x08 != 0;
    h.ack = flags & 0x10 != 0;
    if h.ack {
        h.acknowledgment_number = 1;
    }
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv4(from.ip, to.ip, 64)
        .tcp_header(h);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

pub(crate) fn udp_frame(
    from: Host,
    to_mac: [u8; 6],
    to_ip: [u8; 4],
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to_mac)
        .ipv4(from.ip, to_ip, 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).unwrap();
    out
}

pub(crate) fn ping(from: Host, to: Host, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to.mac).ipv4(from.ip, to.ip, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, &[0xab; 32]).unwrap();
    out
}

pub(crate) fn arp(from: Host, to_mac: [u8; 6], target: Host, reply: bool) -> Vec<u8> {
    let pkt = ArpEthIpv4Packet {
        operation: if reply {
            ArpOperation::REPLY
        } else {
            ArpOperation::REQUEST
        },
        sender_mac: from.mac,
        sender_ipv4: from.ip,
        target_mac: if reply { target.mac } else { [0; 6] },
        target_ipv4: target.ip,
    };
    let b = PacketBuilder::ethernet2(from.mac, to_mac).arp(pkt.to_arp_packet());
    let mut out = Vec::new();
    b.write(&mut out).unwrap();
    out
}

/// An ICMP port-unreachable from `from` to `to` quoting the first bytes of `quoted` (an
/// Ethernet frame from `to`), as a host or router sends it.
pub(crate) fn icmp_unreachable(from: Host, to: Host, quoted: &[u8]) -> Vec<u8> {
    let ip_and_8 = &quoted[14..(14 + 28).min(quoted.len())];
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv4(from.ip, to.ip, 64)
        .icmpv4_raw(3, 3, [0; 4]);
    let mut out = Vec::new();
    b.write(&mut out, ip_and_8).unwrap();
    out
}
