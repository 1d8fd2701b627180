//! REJECT that answers, through the engine on the simulated bridge: a rejected packet is
//! dropped (counted) and answered — a TCP RST or an ICMP/ICMPv6 error — out of the port it
//! came in by, as iptables' `-j REJECT --reject-with` does; errors and RSTs are never
//! answered; answers are rate-limited like the kernel's ICMP; every frame stays accounted
//! for. No root needed.

use dataplane::counters::DropReason;
use dataplane::engine::EngineConfig;
use dataplane::phy::memory::MemoryPortConfig;
use dataplane::policy::{Action, FnPolicy, PacketRecord, Policy, VerdictRecord};
use dataplane::reject::{RateLimit, RejectWith};
use dataplane::sim::*;
use etherparse::{
    Icmpv4Slice, Icmpv6Slice, LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TcpHeader,
    TcpSlice, TransportSlice,
};
use rules_wasm::abi::tcp_flags::{ACK, RST, SYN};
use std::time::Duration;

const RULE: u32 = 5;

/// A policy rejecting every packet with `with` (rule 5).
fn rejecting(with: RejectWith) -> Box<dyn Policy> {
    Box::new(FnPolicy::new(1, move |_: &PacketRecord| VerdictRecord {
        action: Action::Reject,
        rule: RULE,
        reject: with,
    }))
}

fn lab(with: RejectWith) -> Lab {
    Lab::new(rejecting(with))
}

/// The one frame `got` holds, on `port`'s side; nothing anywhere else.
fn only_answer(got: &[Vec<Vec<u8>>; 4], port: u16) -> Vec<u8> {
    assert_eq!(receivers(got), vec![port], "exactly one port answered to");
    let frames = &got[usize::from(port)];
    assert_eq!(frames.len(), 1, "exactly one answer");
    frames[0].clone()
}

fn tcp_of<'a>(s: &'a SlicedPacket<'a>) -> &'a TcpSlice<'a> {
    match &s.transport {
        Some(TransportSlice::Tcp(t)) => t,
        other => panic!("not TCP: {other:?}"),
    }
}

fn icmpv4_of<'a>(s: &'a SlicedPacket<'a>) -> &'a Icmpv4Slice<'a> {
    match &s.transport {
        Some(TransportSlice::Icmpv4(t)) => t,
        other => panic!("not ICMP: {other:?}"),
    }
}

fn icmpv6_of<'a>(s: &'a SlicedPacket<'a>) -> &'a Icmpv6Slice<'a> {
    match &s.transport {
        Some(TransportSlice::Icmpv6(t)) => t,
        other => panic!("not ICMPv6: {other:?}"),
    }
}

/// The answer comes from `from` to `to`: MACs and IPv4 addresses, TTL 64, a valid header
/// checksum.
fn check_v4_path(s: &SlicedPacket<'_>, from: Host, to: Host, proto: u8) {
    let Some(LinkSlice::Ethernet2(e)) = &s.link else {
        panic!("no Ethernet header");
    };
    assert_eq!((e.source(), e.destination()), (from.mac, to.mac));
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4");
    };
    let h = ip.header();
    assert_eq!((h.source(), h.destination()), (from.ip, to.ip));
    assert_eq!((h.ttl(), h.protocol().0), (64, proto));
    assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
}

fn check_v6_path(s: &SlicedPacket<'_>, from: Host, to: Host, next: u8) {
    let Some(LinkSlice::Ethernet2(e)) = &s.link else {
        panic!("no Ethernet header");
    };
    assert_eq!((e.source(), e.destination()), (from.mac, to.mac));
    let Some(NetSlice::Ipv6(ip)) = &s.net else {
        panic!("not IPv6");
    };
    let h = ip.header();
    assert_eq!((h.source(), h.destination()), (v6(from), v6(to)));
    assert_eq!((h.hop_limit(), h.next_header().0), (64, next));
}

fn tcp6_frame(from: Host, to: Host, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    h.syn = flags & SYN != 0;
    h.ack = flags & ACK != 0;
    h.rst = flags & RST != 0;
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv6(v6(from), v6(to), 64)
        .tcp_header(h);
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

#[test]
fn a_rejected_syn_gets_one_reset_on_its_ingress_port_and_so_does_its_retransmission() {
    let mut lab = lab(RejectWith::TcpReset);
    // tcp_frame's segments carry seq 1000.
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    let rst = only_answer(&lab.send(PARENT, &syn), PARENT.port);
    let s = SlicedPacket::from_ethernet(&rst).unwrap();
    check_v4_path(&s, CHILD, PARENT, 6);
    let t = tcp_of(&s);
    assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
    assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
    assert!(t.rst() && t.ack() && !t.syn() && !t.fin());
    assert_eq!(
        t.calc_checksum_ipv4(CHILD.ip, PARENT.ip).unwrap(),
        t.checksum()
    );
    let c = lab.engine.counters().snapshot();
    assert_eq!(c.drops(DropReason::PolicyReject), 1);
    assert_eq!((c.reject_tcp_reset, c.reject_icmp), (1, 0));
    assert_eq!(c.port(PARENT.port).tx_packets, 1);
    assert_eq!(lab.engine.counters().rule_hits(RULE), 1);

    // The SYN retransmitted a second later: the flow's cached reject answers again, without
    // asking the policy.
    lab.advance(Duration::from_secs(1));
    let again = only_answer(&lab.send(PARENT, &syn), PARENT.port);
    assert_eq!(again, rst, "the same reset");
    let c = lab.engine.counters().snapshot();
    assert_eq!(
        c.policy_records, 1,
        "decided once, from the flow table after"
    );
    assert_eq!(c.drops(DropReason::FlowDenied), 1);
    assert_eq!(c.reject_tcp_reset, 2);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn a_segment_with_ack_gets_a_reset_at_its_ack_number() {
    let mut lab = lab(RejectWith::TcpReset);
    // tcp_frame's ACK segments acknowledge 1.
    let seg = tcp_frame(PARENT, CHILD, 40000, 80, ACK, b"data");
    let rst = only_answer(&lab.send(PARENT, &seg), PARENT.port);
    let s = SlicedPacket::from_ethernet(&rst).unwrap();
    let t = tcp_of(&s);
    assert_eq!((t.sequence_number(), t.acknowledgment_number()), (1, 0));
    assert!(t.rst() && !t.ack());
}

#[test]
fn an_ipv6_syn_gets_an_ipv6_reset() {
    let mut lab = lab(RejectWith::TcpReset);
    let syn = tcp6_frame(PARENT, CHILD, 40000, 443, SYN);
    let rst = only_answer(&lab.send(PARENT, &syn), PARENT.port);
    let s = SlicedPacket::from_ethernet(&rst).unwrap();
    check_v6_path(&s, CHILD, PARENT, 6);
    let t = tcp_of(&s);
    assert_eq!((t.source_port(), t.destination_port()), (443, 40000));
    assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
    assert_eq!(
        t.calc_checksum_ipv6(v6(CHILD), v6(PARENT)).unwrap(),
        t.checksum()
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn a_rejected_udp_datagram_gets_port_unreachable_quoting_it() {
    // The default kind, as a module writing a plain 3 gets; TcpReset on UDP answers the same.
    for with in [RejectWith::PortUnreachable, RejectWith::TcpReset] {
        let mut lab = lab(with);
        let dgram = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 53, b"query");
        let ans = only_answer(&lab.send(PARENT, &dgram), PARENT.port);
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        check_v4_path(&s, CHILD, PARENT, 1);
        let icmp = icmpv4_of(&s);
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 3), "{with:?}");
        assert_eq!(icmp.payload(), &dgram[14..], "the offending IP packet");
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
        let c = lab.engine.counters().snapshot();
        assert_eq!((c.reject_icmp, c.reject_tcp_reset), (1, 0));
        assert_eq!(lab.frames_accounted(), lab.total_frames);
    }
}

#[test]
fn ipv6_udp_gets_icmpv6_port_unreachable_quoting_it() {
    let mut lab = lab(RejectWith::PortUnreachable);
    let dgram = udp6_frame(PARENT, CHILD, 40000, 53, b"query");
    let ans = only_answer(&lab.send(PARENT, &dgram), PARENT.port);
    let s = SlicedPacket::from_ethernet(&ans).unwrap();
    check_v6_path(&s, CHILD, PARENT, 58);
    let icmp = icmpv6_of(&s);
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 4));
    assert_eq!(icmp.payload(), &dgram[14..]);
    assert!(icmp.is_checksum_valid(v6(CHILD), v6(PARENT)));
}

#[test]
fn admin_prohibited_answers_3_13_and_1_1() {
    let mut lab = lab(RejectWith::AdminProhibited);
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    let ans = only_answer(&lab.send(PARENT, &syn), PARENT.port);
    let s = SlicedPacket::from_ethernet(&ans).unwrap();
    let icmp = icmpv4_of(&s);
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 13));
    assert_eq!(icmp.payload(), &syn[14..]);
    let syn6 = tcp6_frame(PARENT, CHILD, 40000, 80, SYN);
    let ans = only_answer(&lab.send(PARENT, &syn6), PARENT.port);
    let s = SlicedPacket::from_ethernet(&ans).unwrap();
    let icmp = icmpv6_of(&s);
    assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 1));
    assert!(icmp.is_checksum_valid(v6(CHILD), v6(PARENT)));
    let c = lab.engine.counters().snapshot();
    assert_eq!(c.reject_icmp, 2);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn icmp_errors_and_resets_are_never_answered() {
    for with in [RejectWith::TcpReset, RejectWith::PortUnreachable] {
        let mut lab = lab(with);
        let quoted = udp_frame(CHILD, PARENT.mac, PARENT.ip, 53, 40000, b"x");
        let error = icmp_unreachable(PARENT, CHILD, &quoted);
        let rst = tcp_frame(PARENT, CHILD, 40000, 80, RST, &[]);
        let rst_ack = tcp_frame(PARENT, CHILD, 40001, 80, RST | ACK, &[]);
        let rst6 = tcp6_frame(PARENT, CHILD, 40000, 80, RST);
        for f in [&error, &rst, &rst_ack, &rst6] {
            assert!(receivers(&lab.send(PARENT, f)).is_empty(), "{with:?}");
        }
        // And again from the flow table (the RSTs' flows are cached rejects now).
        assert!(receivers(&lab.send(PARENT, &rst)).is_empty());
        let c = lab.engine.counters().snapshot();
        assert_eq!(c.reject_not_answerable, 5);
        assert_eq!(c.reject_tcp_reset + c.reject_icmp, 0);
        assert_eq!(
            c.drops(DropReason::PolicyReject) + c.drops(DropReason::FlowDenied),
            5,
            "still dropped"
        );
        assert_eq!(lab.frames_accounted(), lab.total_frames);
    }
}

#[test]
fn a_broadcast_is_never_answered() {
    let mut lab = lab(RejectWith::PortUnreachable);
    let discover = udp_frame(PARENT, BROADCAST, [255; 4], 68, 67, b"discover");
    assert!(receivers(&lab.send(PARENT, &discover)).is_empty());
    assert_eq!(lab.engine.counters().snapshot().reject_not_answerable, 1);
}

#[test]
fn a_packet_from_the_host_is_answered_back_to_the_host() {
    // From outside through the gateway: the answer goes back out of the gateway port, to
    // the bridge's MAC, from the container's address the packet was sent to.
    let mut lab = lab(RejectWith::TcpReset);
    let outside = Host {
        port: GW.port,
        mac: GW.mac,
        ip: [198, 51, 100, 7],
    };
    let syn = tcp_frame(outside, CHILD, 50000, 22, SYN, &[]);
    let rst = only_answer(&lab.send(GW, &syn), GW.port);
    let s = SlicedPacket::from_ethernet(&rst).unwrap();
    check_v4_path(&s, CHILD, outside, 6);
    // A container reaching another through a published port, sent back onto the bridge by
    // the host (source kept, from the bridge's MAC): judged as the container's, answered to
    // the host, whose conntrack un-NATs the answer on to the container.
    let mut hairpinned = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    hairpinned[6..12].copy_from_slice(&GW.mac);
    let rst = only_answer(&lab.send(GW, &hairpinned), GW.port);
    assert_eq!(&rst[0..6], &GW.mac, "to the host");
    let s = SlicedPacket::from_ethernet(&rst).unwrap();
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not IPv4");
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (CHILD.ip, PARENT.ip)
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn a_flood_of_rejected_syns_is_answered_within_the_rate_limit() {
    let mut lab = lab(RejectWith::TcpReset);
    let (mut answers, mut sent) = (0usize, 0usize);
    // 10,000 SYNs of distinct flows over one simulated second: 100 every 10 ms.
    for round in 0..100u16 {
        lab.now = u64::from(round) * 10 * 1_000_000;
        for i in 0..100u16 {
            let syn = tcp_frame(PARENT, CHILD, 1024 + round * 100 + i, 80, SYN, &[]);
            lab.inject(PARENT, &syn);
            sent += 1;
        }
        lab.run();
        let got = lab.take_all();
        assert_eq!(
            receivers(&got)
                .iter()
                .filter(|&&p| p != PARENT.port)
                .count(),
            0
        );
        answers += got[usize::from(PARENT.port)].len();
    }
    assert_eq!(sent, 10_000);
    let c = lab.engine.counters().snapshot();
    // The burst of 50 at once, then one per millisecond: 50 + 99 rounds × 10.
    assert!(answers <= 50 + 1000, "{answers} answers");
    assert_eq!(answers, 50 + 990);
    assert_eq!(c.reject_tcp_reset as usize, answers);
    assert_eq!(c.reject_tcp_reset + c.reject_rate_limited, 10_000);
    assert_eq!(c.drops(DropReason::PolicyReject), 10_000);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
    // A quiet second later the bucket is full again.
    lab.advance(Duration::from_secs(1));
    for i in 0..60u16 {
        lab.inject(PARENT, &tcp_frame(PARENT, CHILD, 60000 + i, 80, SYN, &[]));
    }
    lab.run();
    assert_eq!(lab.take_all()[usize::from(PARENT.port)].len(), 50);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn the_rate_limit_is_configurable_and_zero_silences_rejects() {
    let config = EngineConfig {
        reject_limit: RateLimit {
            per_sec: 0,
            burst: 0,
        },
        ..EngineConfig::default()
    };
    let port_config = MemoryPortConfig {
        fill_share: 256,
        ..MemoryPortConfig::default()
    };
    let mut lab = Lab::with(config, port_config, 4096, rejecting(RejectWith::TcpReset));
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    assert!(receivers(&lab.send(PARENT, &syn)).is_empty());
    let c = lab.engine.counters().snapshot();
    assert_eq!((c.reject_rate_limited, c.reject_tcp_reset), (1, 0));
    assert_eq!(c.drops(DropReason::PolicyReject), 1);
}

#[test]
fn without_a_free_frame_the_reject_is_a_counted_silent_drop() {
    // 64 frames, all parked in the four ports' fill shares: nothing left to answer in.
    let port_config = MemoryPortConfig {
        fill_share: 16,
        ..MemoryPortConfig::default()
    };
    let mut lab = Lab::with(
        EngineConfig::default(),
        port_config,
        64,
        rejecting(RejectWith::TcpReset),
    );
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    assert!(receivers(&lab.send(PARENT, &syn)).is_empty());
    let c = lab.engine.counters().snapshot();
    assert_eq!((c.reject_no_free_frame, c.reject_tcp_reset), (1, 0));
    assert_eq!(c.drops(DropReason::PolicyReject), 1);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn reject_counters_have_stable_names() {
    let mut lab = lab(RejectWith::TcpReset);
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    let names = lab.engine.counters().snapshot().reject_answers();
    assert_eq!(
        names,
        [
            ("reject_tcp_reset", 1),
            ("reject_icmp", 0),
            ("reject_rate_limited", 0),
            ("reject_not_answerable", 0),
            ("reject_no_free_frame", 0),
        ]
    );
}
