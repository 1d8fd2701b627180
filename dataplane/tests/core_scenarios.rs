//! The core on a simulated bridge: four hosts (gateway, parent, child, other) on in-memory
//! ports, driven deterministically with a simulated clock.

use dataplane::counters::DropReason;
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::flow::{ConnState, Timeouts};
use dataplane::phy::memory::MemoryPortConfig;
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory};
use dataplane::policy::{Action, ConstPolicy, FlowState, FnPolicy, PacketRecord, Policy};
use dataplane::sim::*;
use dataplane::wire::{self, Malformed, Tuple};
use rules_wasm::abi::tcp_flags::{ACK, FIN, PSH, RST, SYN};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn link_policy(generation: u64) -> Box<dyn Policy> {
    Box::new(FnPolicy::new(generation, icc_false_link))
}

/// A policy that records what it was asked, deciding with `f`.
fn recording(
    generation: u64,
    f: fn(&PacketRecord) -> dataplane::policy::VerdictRecord,
) -> (Box<dyn Policy>, Arc<Mutex<Vec<PacketRecord>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let p = FnPolicy::new(generation, move |r: &PacketRecord| {
        s.lock().unwrap().push(*r);
        f(r)
    });
    (Box::new(p), seen)
}

fn flow_state(
    lab: &Lab,
    from: Host,
    to: Host,
    sport: u16,
    dport: u16,
    proto: u8,
) -> Option<ConnState> {
    let t = Tuple {
        src: mapped(from.ip),
        dst: mapped(to.ip),
        src_port: sport,
        dst_port: dport,
        proto,
    };
    let hk = lab.engine.flows().hash_tuple(&t);
    lab.engine.flows().peek(&hk, lab.now).map(|e| e.state)
}

#[test]
fn arp_goes_to_the_owner_or_floods_and_replies_are_unicast_without_policy() {
    // A policy that drops everything: ARP must not depend on it.
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Drop,
        generation: 1,
    }));
    // A request for a known container's address goes to that container alone.
    let req = arp(PARENT, BROADCAST, CHILD, false);
    let got = lab.send(PARENT, &req);
    assert_eq!(receivers(&got), vec![CHILD.port]);
    assert_eq!(got[usize::from(CHILD.port)], vec![req]);
    let rep = arp(CHILD, PARENT.mac, PARENT, true);
    let got = lab.send(CHILD, &rep);
    assert_eq!(receivers(&got), vec![PARENT.port]);
    // A request for an address no port owns is flooded, as a bridge does.
    let stranger = Host {
        port: 9,
        mac: [2, 0x42, 172, 17, 0, 99],
        ip: [172, 17, 0, 99],
    };
    let got = lab.send(PARENT, &arp(PARENT, BROADCAST, stranger, false));
    assert_eq!(receivers(&got), vec![GW.port, CHILD.port, OTHER.port]);
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.policy_batches, 0);
    assert_eq!(s.switched_without_policy, 3);
    assert_eq!((s.arp_directed, s.flood_copies), (1, 2));
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn tcp_handshake_under_icc_false_opens_only_the_linked_direction() {
    let mut lab = Lab::new(link_policy(1));
    // parent → child:80, the linked direction: the whole handshake and data pass.
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    assert_eq!(
        lab.send(PARENT, &syn)[usize::from(CHILD.port)],
        vec![syn.clone()]
    );
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpSynSent)
    );
    let synack = tcp_frame(CHILD, PARENT, 80, 40000, SYN | ACK, &[]);
    assert_eq!(receivers(&lab.send(CHILD, &synack)), vec![PARENT.port]);
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpSynRecv)
    );
    let ack = tcp_frame(PARENT, CHILD, 40000, 80, ACK, &[]);
    assert_eq!(receivers(&lab.send(PARENT, &ack)), vec![CHILD.port]);
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpEstablished)
    );
    let data = tcp_frame(
        CHILD,
        PARENT,
        80,
        40000,
        PSH | ACK,
        b"HTTP/1.0 200 OK\r\n\r\n",
    );
    assert_eq!(receivers(&lab.send(CHILD, &data)), vec![PARENT.port]);

    // child → parent: a new connection the other way is dropped by the policy.
    let back = tcp_frame(CHILD, PARENT, 40001, 80, SYN, &[]);
    assert!(receivers(&lab.send(CHILD, &back)).is_empty());
    // ... and so is a third container reaching the child's linked port.
    let other = tcp_frame(OTHER, CHILD, 40002, 80, SYN, &[]);
    assert!(receivers(&lab.send(OTHER, &other)).is_empty());
    // A reply-looking segment with no flow behind it is a new flow, dropped too.
    let stray = tcp_frame(CHILD, PARENT, 80, 40009, SYN | ACK, &[]);
    assert!(receivers(&lab.send(CHILD, &stray)).is_empty());

    let s = lab.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::PolicyDrop), 3);
    // One decision for the linked flow (rule 1), three drops by the icc rule (rule 3).
    assert_eq!(s.rules, vec![(1, 1), (3, 3)]);
    assert_eq!(s.policy_records, 4);
    assert_eq!(s.flows.hits, 3);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn fin_teardown_walks_the_close_states_then_times_out() {
    let mut lab = Lab::new(link_policy(1));
    for (from, to, sp, dp, fl) in [
        (PARENT, CHILD, 40000, 80, SYN),
        (CHILD, PARENT, 80, 40000, SYN | ACK),
        (PARENT, CHILD, 40000, 80, ACK),
    ] {
        lab.send(from, &tcp_frame(from, to, sp, dp, fl, &[]));
    }
    let steps = [
        (PARENT, CHILD, 40000, 80, FIN | ACK, ConnState::TcpFinWait),
        (CHILD, PARENT, 80, 40000, ACK, ConnState::TcpCloseWait),
        (CHILD, PARENT, 80, 40000, FIN | ACK, ConnState::TcpLastAck),
        (PARENT, CHILD, 40000, 80, ACK, ConnState::TcpTimeWait),
    ];
    for (from, to, sp, dp, fl, want) in steps {
        let got = lab.send(from, &tcp_frame(from, to, sp, dp, fl, &[]));
        assert_eq!(receivers(&got), vec![to.port]);
        assert_eq!(flow_state(&lab, PARENT, CHILD, 40000, 80, 6), Some(want));
    }
    lab.advance(Timeouts::default().tcp_time_wait - Duration::from_secs(1));
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpTimeWait)
    );
    lab.advance(Duration::from_secs(1));
    assert_eq!(flow_state(&lab, PARENT, CHILD, 40000, 80, 6), None);
    // With the flow gone, a late segment from the child is a new flow: dropped.
    let late = tcp_frame(CHILD, PARENT, 80, 40000, ACK, &[]);
    assert!(receivers(&lab.send(CHILD, &late)).is_empty());
}

#[test]
fn rst_closes_the_flow_for_ten_seconds() {
    let mut lab = Lab::new(link_policy(1));
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    let rst = tcp_frame(CHILD, PARENT, 80, 40000, RST | ACK, &[]);
    assert_eq!(receivers(&lab.send(CHILD, &rst)), vec![PARENT.port]);
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpClose)
    );
    lab.advance(Duration::from_secs(9));
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 40000, 80, 6),
        Some(ConnState::TcpClose)
    );
    lab.advance(Duration::from_secs(1));
    assert_eq!(flow_state(&lab, PARENT, CHILD, 40000, 80, 6), None);
    // A new SYN on the same tuple is decided afresh and admitted again.
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    assert_eq!(receivers(&lab.send(PARENT, &syn)), vec![CHILD.port]);
    assert_eq!(lab.engine.counters().snapshot().policy_records, 2);
}

#[test]
fn udp_flow_times_out_unreplied_and_lives_longer_once_assured() {
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    let t = Timeouts::default();
    lab.send(
        PARENT,
        &udp_frame(PARENT, CHILD.mac, CHILD.ip, 5000, 53, b"q"),
    );
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 5000, 53, 17),
        Some(ConnState::UdpUnreplied)
    );
    lab.advance(t.udp_unreplied);
    assert_eq!(flow_state(&lab, PARENT, CHILD, 5000, 53, 17), None);

    lab.send(
        PARENT,
        &udp_frame(PARENT, CHILD.mac, CHILD.ip, 5000, 53, b"q"),
    );
    lab.send(
        CHILD,
        &udp_frame(CHILD, PARENT.mac, PARENT.ip, 53, 5000, b"a"),
    );
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 5000, 53, 17),
        Some(ConnState::UdpAssured)
    );
    lab.advance(t.udp_assured - Duration::from_secs(1));
    assert_eq!(
        flow_state(&lab, PARENT, CHILD, 5000, 53, 17),
        Some(ConnState::UdpAssured)
    );
    lab.advance(Duration::from_secs(1));
    assert_eq!(flow_state(&lab, PARENT, CHILD, 5000, 53, 17), None);
}

#[test]
fn flow_table_at_capacity_evicts_the_oldest_and_counts() {
    let config = EngineConfig {
        flow_capacity: 8,
        ..Default::default()
    };
    let accept = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let mut lab = Lab::with(config, MemoryPortConfig::default(), 1024, accept);
    for i in 0..40u16 {
        lab.now += SEC;
        let got = lab.send(
            PARENT,
            &udp_frame(PARENT, CHILD.mac, CHILD.ip, 10000 + i, 53, b"x"),
        );
        assert_eq!(receivers(&got), vec![CHILD.port]);
    }
    let s = lab.engine.counters().snapshot();
    assert_eq!(lab.engine.flows().capacity(), 8);
    assert_eq!(s.flows.entries, 8);
    assert_eq!(s.flows.inserts, 40);
    assert_eq!(s.flows.evictions, 32);
    // The newest flow survived; the oldest did not.
    assert!(flow_state(&lab, PARENT, CHILD, 10039, 53, 17).is_some());
    assert!(flow_state(&lab, PARENT, CHILD, 10000, 53, 17).is_none());
}

#[test]
fn broadcast_is_flooded_to_every_other_port_but_never_echoed() {
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    for h in HOSTS {
        let frame = udp_frame(h, BROADCAST, [255, 255, 255, 255], 68, 67, b"discover");
        let got = lab.send(h, &frame);
        let want: Vec<_> = HOSTS
            .iter()
            .filter(|o| o.port != h.port)
            .map(|o| o.port)
            .collect();
        assert_eq!(receivers(&got), want, "flood from port {}", h.port);
        for (i, v) in got.iter().enumerate() {
            if i != usize::from(h.port) {
                assert_eq!(v, &vec![frame.clone()]);
            }
        }
    }
    // The policy saw one record per broadcast, marked as flooded.
    assert_eq!(lab.engine.counters().snapshot().flood_copies, 4 * 2);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn policy_generation_change_redecides_existing_flows() {
    let allow_all: fn(&PacketRecord) -> _ = |_| accept(9);
    let (p1, _) = recording(1, allow_all);
    let mut lab = Lab::new(p1);
    // Under icc=true both flows are admitted.
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    lab.send(OTHER, &tcp_frame(OTHER, CHILD, 41000, 80, SYN, &[]));
    // The policy becomes icc=false with the link: the parent's flow stays, the other's goes.
    let (p2, seen) = recording(2, icc_false_link);
    let old = lab.engine.set_policy(p2);
    assert_eq!(old.generation(), 1);
    let reply_parent = tcp_frame(CHILD, PARENT, 80, 40000, SYN | ACK, &[]);
    assert_eq!(
        receivers(&lab.send(CHILD, &reply_parent)),
        vec![PARENT.port]
    );
    let reply_other = tcp_frame(CHILD, OTHER, 80, 41000, SYN | ACK, &[]);
    assert!(receivers(&lab.send(CHILD, &reply_other)).is_empty());
    // Both re-decisions presented the flow as its originator opened it, as Established.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[0].src, seen[0].dst),
        (mapped(PARENT.ip), mapped(CHILD.ip))
    );
    assert_eq!((seen[0].src_port, seen[0].dst_port), (40000, 80));
    assert_eq!(
        (seen[0].in_port, seen[0].out_port),
        (PARENT.port, CHILD.port)
    );
    assert_eq!(seen[1].src, mapped(OTHER.ip));
    assert!(seen.iter().all(|r| r.flow_state == FlowState::Established));
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.flows.redecisions, 2);
    // The re-admitted flow is current again: its next packet is a plain hit.
    let ack = tcp_frame(PARENT, CHILD, 40000, 80, ACK, &[]);
    assert_eq!(receivers(&lab.send(PARENT, &ack)), vec![CHILD.port]);
    assert_eq!(
        lab.engine.counters().snapshot().policy_records,
        s.policy_records
    );
}

#[test]
fn icmp_error_about_an_admitted_flow_passes_as_related() {
    let (policy, seen) = recording(1, icc_false_link);
    let mut lab = Lab::new(policy);
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    lab.send(PARENT, &syn);
    // The child answers with port unreachable quoting the SYN: RELATED, no policy call.
    let err = icmp_unreachable(CHILD, PARENT, &syn);
    assert_eq!(receivers(&lab.send(CHILD, &err)), vec![PARENT.port]);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(lab.engine.counters().snapshot().flows.related, 1);
    // The same quote sent to a bystander is no pass: it is a new ICMP packet, dropped.
    let forged = icmp_unreachable(CHILD, OTHER, &syn);
    assert!(receivers(&lab.send(CHILD, &forged)).is_empty());
    {
        let seen = seen.lock().unwrap();
        assert_eq!(
            (seen.len(), seen[1].icmp_type, seen[1].flow_state),
            (2, 3, FlowState::New)
        );
    }
    // An error about a flow that was never admitted is no pass either.
    let denied = tcp_frame(OTHER, CHILD, 41000, 22, SYN, &[]);
    lab.send(OTHER, &denied);
    let err2 = icmp_unreachable(CHILD, OTHER, &denied);
    assert!(receivers(&lab.send(CHILD, &err2)).is_empty());
    assert_eq!(lab.engine.counters().snapshot().flows.related, 1);
}

#[test]
fn ping_and_its_reply_pass_by_the_echo_identifier() {
    let mut lab = Lab::new(link_policy(1));
    let req = ping(PARENT, GW, 77, false);
    assert_eq!(receivers(&lab.send(PARENT, &req)), vec![GW.port]);
    let rep = ping(GW, PARENT, 77, true);
    assert_eq!(receivers(&lab.send(GW, &rep)), vec![PARENT.port]);
    // Container to container ping is icc: dropped.
    assert!(receivers(&lab.send(PARENT, &ping(PARENT, CHILD, 78, false))).is_empty());
    assert_eq!(lab.engine.counters().snapshot().policy_records, 2);
}

#[test]
fn denied_flows_are_cached_briefly() {
    let (policy, seen) = recording(1, icc_false_link);
    let mut lab = Lab::new(policy);
    let syn = tcp_frame(CHILD, PARENT, 40001, 22, SYN, &[]);
    for _ in 0..10 {
        assert!(receivers(&lab.send(CHILD, &syn)).is_empty());
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    let s = lab.engine.counters().snapshot();
    assert_eq!(
        (
            s.drops(DropReason::PolicyDrop),
            s.drops(DropReason::FlowDenied)
        ),
        (1, 9)
    );
    lab.advance(Timeouts::default().denied);
    lab.send(CHILD, &syn);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn continue_falls_back_to_the_configured_default() {
    let cont = || {
        Box::new(ConstPolicy {
            action: Action::Continue,
            generation: 1,
        })
    };
    let mut lab = Lab::new(cont());
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    assert!(receivers(&lab.send(PARENT, &syn)).is_empty());
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::DefaultDrop),
        1
    );
    let open = EngineConfig {
        default_action: Action::Accept,
        ..Default::default()
    };
    let mut lab = Lab::with(open, MemoryPortConfig::default(), 4096, cont());
    assert_eq!(receivers(&lab.send(PARENT, &syn)), vec![CHILD.port]);
    assert_eq!(lab.engine.counters().snapshot().policy_defaulted, 1);
}

#[test]
fn a_container_cannot_borrow_another_containers_address() {
    let mut lab = Lab::new(link_policy(1));
    // OTHER pretends to be PARENT to use the link.
    let mut forged = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    forged[6..12].copy_from_slice(&OTHER.mac);
    assert!(receivers(&lab.send(OTHER, &forged)).is_empty());
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::SpoofedSource),
        1
    );
}

#[test]
fn ipv6_neighbour_solicitation_is_switched_without_policy() {
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Drop,
        generation: 1,
    }));
    let src = [
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x42, 0xac, 0xff, 0xfe, 0x11, 0, 2,
    ];
    let dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0x11, 0, 3];
    let b = etherparse::PacketBuilder::ethernet2(PARENT.mac, [0x33, 0x33, 0xff, 0x11, 0, 3])
        .ipv6(src, dst, 255)
        .icmpv6_raw(135, 0, [0; 4]);
    let mut ns = Vec::new();
    b.write(&mut ns, &[0; 16]).unwrap();
    assert_eq!(
        receivers(&lab.send(PARENT, &ns)),
        vec![GW.port, CHILD.port, OTHER.port]
    );
    assert_eq!(lab.engine.counters().snapshot().policy_batches, 0);
}

#[test]
fn malformed_frames_are_counted_per_reason() {
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    let good = tcp_frame(PARENT, CHILD, 1, 2, SYN, &[]);
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44;
    let mut bad_len = good.clone();
    bad_len[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let mut bad_tcp = good.clone();
    bad_tcp[14 + 20 + 12] = 0x40;
    let mut bad_version = good.clone();
    bad_version[14] = 0x65;
    let mut stacked = good[..12].to_vec();
    stacked.extend_from_slice(&[0x81, 0, 0, 1, 0x81, 0, 0, 2]);
    stacked.extend_from_slice(&good[12..]);
    let mut bad_udp = udp_frame(PARENT, CHILD.mac, CHILD.ip, 1, 2, b"abc");
    bad_udp[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&4u16.to_be_bytes());
    let cases: [(&[u8], Malformed); 7] = [
        (&good[..20], Malformed::Truncated),
        (&bad_ihl, Malformed::BadIhl),
        (&bad_len, Malformed::BadTotalLength),
        (&bad_tcp, Malformed::BadTcpHeader),
        (&bad_version, Malformed::BadIpVersion),
        (&stacked, Malformed::VlanStack),
        (&bad_udp, Malformed::BadUdpLength),
    ];
    for (frame, _) in &cases {
        lab.inject(PARENT, frame);
    }
    lab.run();
    assert!(receivers(&lab.take_all()).is_empty());
    let s = lab.engine.counters().snapshot();
    for (_, reason) in &cases {
        assert_eq!(s.drops(DropReason::Malformed(*reason)), 1, "{reason:?}");
    }
    assert_eq!(s.port(PARENT.port).rx_packets, 7);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn checksums_are_completed_for_ports_that_ask() {
    let accept = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let mut lab = Lab::new(accept);
    // Make the parent's port an offloading veth.
    lab.engine.remove_port(PARENT.port).unwrap();
    lab.engine
        .add_port(PortConfig {
            id: PARENT.port,
            network: 0,
            macs: vec![PARENT.mac],
            ips: vec![IpAddr::V4(Ipv4Addr::from(PARENT.ip))],
            is_gateway: false,
            complete_checksums: true,
        })
        .unwrap();
    for payload_len in [0usize, 1, 100, 1400] {
        let payload: Vec<u8> = (0..payload_len).map(|i| (i * 31) as u8).collect();
        for mut frame in [
            tcp_frame(PARENT, CHILD, 40000, 80, SYN, &payload),
            udp_frame(PARENT, CHILD.mac, CHILD.ip, 5000, 53, &payload),
        ] {
            let want = frame.clone();
            let p = wire::parse(&frame).unwrap();
            let field = usize::from(p.l4_offset) + if p.proto == 6 { 16 } else { 6 };
            // What a veth with tx-checksum offload hands over: the folded pseudo-header sum.
            let partial = partial_pseudo_sum(&frame, &p);
            frame[field..field + 2].copy_from_slice(&partial.to_be_bytes());
            assert_ne!(frame, want);
            let got = lab.send(PARENT, &frame);
            assert_eq!(
                got[usize::from(CHILD.port)],
                vec![want.clone()],
                "len {payload_len}"
            );
            // The same frame from a port that does not complete checksums is left as it is.
            let mut from_gw = frame.clone();
            from_gw[6..12].copy_from_slice(&GW.mac);
            from_gw[14 + 12..14 + 16].copy_from_slice(&GW.ip);
            let p = wire::parse(&from_gw).unwrap();
            let partial = partial_pseudo_sum(&from_gw, &p);
            from_gw[field..field + 2].copy_from_slice(&partial.to_be_bytes());
            let got = lab.send(GW, &from_gw);
            assert_eq!(got[usize::from(CHILD.port)], vec![from_gw]);
        }
    }
}

/// The pseudo-header sum, folded and not complemented, as Linux leaves it for offload.
fn partial_pseudo_sum(frame: &[u8], p: &wire::Parsed) -> u16 {
    let mut sum: u32 = 0;
    for w in frame[26..34].chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    sum += u32::from(p.proto) + u32::from(p.l4_len);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[test]
fn remove_port_drops_its_flows_and_queued_frames() {
    let mut lab = Lab::new(link_policy(1));
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    assert_eq!(lab.engine.flows().len(), 1);
    lab.engine.remove_port(CHILD.port).unwrap();
    assert_eq!(lab.engine.flows().len(), 0);
    // Frames to the removed child's MAC are now unknown unicast: flooded to the rest.
    let syn = tcp_frame(PARENT, CHILD, 40001, 80, SYN, &[]);
    lab.inject(PARENT, &syn);
    let mut set: Vec<(u16, &mut dataplane::phy::memory::MemoryPort)> = lab
        .ports
        .iter_mut()
        .filter(|(id, _)| *id != CHILD.port)
        .map(|(id, p)| (*id, p))
        .collect();
    lab.engine.drive(lab.now, &mut lab.mem, &mut set);
    let got = lab.take_all();
    assert!(got[usize::from(CHILD.port)].is_empty());
}

#[test]
fn frames_from_an_unknown_port_are_dropped() {
    let mut lab = Lab::new(link_policy(1));
    let addr = lab.engine.free_list_mut().pop().unwrap();
    let frame = tcp_frame(PARENT, CHILD, 1, 80, SYN, &[]);
    lab.mem.bytes_mut(addr, frame.len()).copy_from_slice(&frame);
    let mut rx = DescBatch::default();
    rx.push(FrameDesc {
        addr,
        len: frame.len() as u32,
    })
    .unwrap();
    lab.engine.process(0, 99, &mut lab.mem, &mut rx);
    assert!(rx.is_empty());
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::UnknownPort),
        1
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn every_frame_is_accounted_for_under_load() {
    // Small rings and a slow wire on the child so transmit queues fill and overflow.
    let ports = MemoryPortConfig {
        ring_size: 32,
        inbox_size: 4096,
        wire_budget: Some(8),
        ..Default::default()
    };
    let accept_some: fn(&PacketRecord) -> _ = |r| {
        if r.src_port % 3 == 0 {
            drop_(1)
        } else {
            accept(2)
        }
    };
    let (policy, _) = recording(1, accept_some);
    let mut lab = Lab::with(EngineConfig::default(), ports, 512, policy);
    for round in 0..20u16 {
        for i in 0..100u16 {
            let sport = 1000 + (round * 7 + i) % 300;
            lab.inject(PARENT, &tcp_frame(PARENT, CHILD, sport, 80, ACK, &[0; 64]));
            if i % 10 == 0 {
                lab.inject(OTHER, &udp_frame(OTHER, BROADCAST, [255; 4], 68, 67, b"x"));
                lab.inject(PARENT, &tcp_frame(PARENT, CHILD, 1, 80, SYN, &[])[..30]);
            }
        }
        lab.run();
        assert_eq!(lab.frames_accounted(), lab.total_frames, "round {round}");
        lab.take_all();
    }
    let s = lab.engine.counters().snapshot();
    assert!(s.total_drops() > 0);
    assert!(s.port(CHILD.port).tx_packets > 0);
}

#[test]
fn process_handles_batches_larger_than_the_policy_batch() {
    // 64 misses per batch from one port and 64 from another in the same drive call.
    let (policy, seen) = recording(1, |_| accept(1));
    let mut lab = Lab::new(policy);
    for i in 0..200u16 {
        lab.inject(
            PARENT,
            &udp_frame(PARENT, CHILD.mac, CHILD.ip, 2000 + i, 53, b"x"),
        );
        lab.inject(
            OTHER,
            &udp_frame(OTHER, CHILD.mac, CHILD.ip, 2000 + i, 53, b"y"),
        );
    }
    lab.run();
    let got = lab.take_all();
    assert_eq!(got[usize::from(CHILD.port)].len(), 400);
    assert_eq!(seen.lock().unwrap().len(), 400);
    let s = lab.engine.counters().snapshot();
    assert!(s.policy_batches >= 400 / 64);
    assert!(s.policy_records == 400);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

/// A frame as the host sends it back onto the bridge after DNAT (userland proxy off): from
/// the gateway port and the bridge's MAC, with `src`'s address and `to`'s MAC and address.
fn hairpinned(src: Host, to: Host, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = tcp_frame(src, to, sport, dport, flags, &[]);
    f[6..12].copy_from_slice(&GW.mac);
    f
}

#[test]
fn a_container_reaching_another_through_the_host_is_judged_as_that_container() {
    // icc=false with PARENT linked to CHILD:80. OTHER is not linked: its connection through
    // a published port of CHILD (the host DNATs 172.17.0.1:8080 to CHILD:80 and sends it
    // back with OTHER's address) is container-to-container traffic, dropped as Docker's
    // `-i docker0 -o docker0` rule drops it — not "outside to a published port".
    let (policy, seen) = recording(1, icc_false_link);
    let mut lab = Lab::new(policy);
    let got = lab.send(GW, &hairpinned(OTHER, CHILD, 40000, 80, SYN));
    assert!(receivers(&got).is_empty(), "dropped: {got:?}");
    let r = seen.lock().unwrap()[0];
    assert_eq!(
        (r.in_port, r.src),
        (OTHER.port, mapped(OTHER.ip)),
        "the policy sees the source container's port"
    );
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn replies_of_a_flow_that_came_through_the_host_go_back_through_it() {
    // PARENT reaches CHILD:80 through the host (linked, so admitted). CHILD answers PARENT
    // directly (same subnet, PARENT's MAC); that answer must go back to the host, addressed
    // to the bridge's MAC, so the host's conntrack un-NATs it (the source becomes
    // 172.17.0.1:8080 again) before PARENT sees it.
    let mut lab = Lab::new(link_policy(1));
    let syn = hairpinned(PARENT, CHILD, 40000, 80, SYN);
    assert_eq!(receivers(&lab.send(GW, &syn)), vec![CHILD.port]);
    let synack = tcp_frame(CHILD, PARENT, 80, 40000, SYN | ACK, &[]);
    let got = lab.send(CHILD, &synack);
    assert_eq!(receivers(&got), vec![GW.port], "not straight to PARENT");
    let back = &got[usize::from(GW.port)][0];
    assert_eq!(&back[0..6], &GW.mac, "addressed to the host");
    assert_eq!(&back[6..], &synack[6..], "otherwise unchanged");
    // A direct connection between the same two containers is switched as before.
    let direct = tcp_frame(PARENT, CHILD, 40001, 80, SYN, &[]);
    assert_eq!(receivers(&lab.send(PARENT, &direct)), vec![CHILD.port]);
    let reply = tcp_frame(CHILD, PARENT, 80, 40001, SYN | ACK, &[]);
    assert_eq!(receivers(&lab.send(CHILD, &reply)), vec![PARENT.port]);
    assert_eq!(lab.engine.counters().snapshot().via_host, 1);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}
