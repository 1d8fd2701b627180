//! Ethernet frames as hosts send them, built with `etherparse`'s `PacketBuilder` — an
//! implementation independent of the parser under test — and IP fragmenters.
use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder, TcpHeader};

use super::hosts::{Host, v6};

/// A TCP/IPv4 frame from `from` to `to` with `flags` (the ABI's `tcp_flags` bits: FIN,
/// SYN, RST, PSH, ACK), sequence number 1000 and, with ACK, acknowledgment number 1.
pub fn tcp_frame(
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
    b.write(&mut out, payload).expect("a valid TCP frame");
    out
}

/// A UDP/IPv4 frame from `from` to any MAC and address (broadcasts, unknown hosts).
pub fn udp_frame(
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
    b.write(&mut out, payload).expect("a valid UDP frame");
    out
}

/// A UDP/IPv6 frame between two hosts' [`v6`] addresses.
pub fn udp6_frame(from: Host, to: Host, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv6(v6(from), v6(to), 64)
        .udp(sport, dport);
    let mut out = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut out, payload).expect("a valid UDP/IPv6 frame");
    out
}

/// An ICMP echo request (or, with `reply`, echo reply) with identifier `id`, sequence 1
/// and 32 bytes of payload.
pub fn ping(from: Host, to: Host, id: u16, reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to.mac).ipv4(from.ip, to.ip, 64);
    let b = if reply {
        b.icmpv4_echo_reply(id, 1)
    } else {
        b.icmpv4_echo_request(id, 1)
    };
    let mut out = Vec::new();
    b.write(&mut out, &[0xab; 32]).expect("a valid ICMP frame");
    out
}

/// An ARP request for `target`'s address sent to `to_mac` (usually [`BROADCAST`]), or with
/// `reply` the answer giving `target`'s MAC.
///
/// [`BROADCAST`]: super::hosts::BROADCAST
pub fn arp(from: Host, to_mac: [u8; 6], target: Host, reply: bool) -> Vec<u8> {
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
    b.write(&mut out).expect("a valid ARP frame");
    out
}

/// An ICMP port-unreachable from `from` to `to` quoting the first bytes of `quoted` (an
/// Ethernet frame from `to`), as a host or router sends it.
pub fn icmp_unreachable(from: Host, to: Host, quoted: &[u8]) -> Vec<u8> {
    let ip_and_8 = &quoted[14..(14 + 28).min(quoted.len())];
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv4(from.ip, to.ip, 64)
        .icmpv4_raw(3, 3, [0; 4]);
    let mut out = Vec::new();
    b.write(&mut out, ip_and_8)
        .expect("a valid ICMP error frame");
    out
}

/// Splits a whole IPv4 frame's payload into fragments of at most `mtu` bytes of IP packet,
/// as the sender's kernel does for a datagram bigger than the MTU.
pub fn fragments(frame: &[u8], mtu: usize) -> Vec<Vec<u8>> {
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
pub fn fragments_v6(frame: &[u8], mtu: usize, id: u32) -> Vec<Vec<u8>> {
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

/// The Internet checksum of `b` (an IPv4 header), computed here rather than by the code
/// under test.
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
