//! The parser and the checksum completion against an independent implementation
//! (`etherparse`'s `PacketBuilder` and checksum code), with property tests.
use dataplane::wire::{self, Fragment, L3, Malformed, Parsed, complete_l4_checksum};
use etherparse::{
    IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, PacketBuilder,
    TcpHeader,
};
use proptest::prelude::*;

/// A valid frame described by its fields: what the builder is asked to write and what the
/// parser must read back.
#[derive(Clone, Debug)]
struct Spec {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    ip: Ip,
    l4: L4,
    payload: Vec<u8>,
}

#[derive(Clone, Debug)]
enum Ip {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        options: Vec<u8>,
        more_fragments: bool,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        hop_by_hop: bool,
        dest_opts: bool,
    },
}

#[derive(Clone, Debug)]
enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Echo { id: u16, request: bool },
}

fn spec() -> impl Strategy<Value = Spec> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        0usize..=10,
        any::<bool>(),
    )
        .prop_map(|(src, dst, words, mf)| Ip::V4 {
            src,
            dst,
            // NOP options: any 4-byte multiple up to 40 bytes.
            options: vec![1; words * 4],
            more_fragments: mf,
        });
    let v6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(src, dst, hop_by_hop, dest_opts)| Ip::V6 {
            src,
            dst,
            hop_by_hop,
            dest_opts,
        });
    let l4 = prop_oneof![
        (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(sport, dport, flags)| L4::Tcp {
            sport,
            dport,
            flags
        }),
        (any::<u16>(), any::<u16>()).prop_map(|(sport, dport)| L4::Udp { sport, dport }),
        (any::<u16>(), any::<bool>()).prop_map(|(id, request)| L4::Echo { id, request }),
    ];
    (
        any::<[u8; 6]>(),
        any::<[u8; 6]>(),
        proptest::option::of(0u16..4096),
        prop_oneof![v4, v6],
        l4,
        proptest::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(src_mac, dst_mac, vlan, ip, l4, payload)| Spec {
            src_mac,
            dst_mac,
            vlan,
            ip,
            l4,
            payload,
        })
}

fn build(s: &Spec) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(s.src_mac, s.dst_mac);
    let headers = match &s.ip {
        Ip::V4 {
            src,
            dst,
            options,
            more_fragments,
        } => {
            let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, *src, *dst).unwrap();
            h.options = options.as_slice().try_into().unwrap();
            h.more_fragments = *more_fragments;
            IpHeaders::Ipv4(h, Default::default())
        }
        Ip::V6 {
            src,
            dst,
            hop_by_hop,
            dest_opts,
        } => {
            let h = Ipv6Header {
                source: *src,
                destination: *dst,
                hop_limit: 64,
                ..Default::default()
            };
            let ext =
                |on: bool| on.then(|| Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[0; 14]).unwrap());
            let exts = Ipv6Extensions {
                hop_by_hop_options: ext(*hop_by_hop),
                destination_options: ext(*dest_opts),
                ..Default::default()
            };
            IpHeaders::Ipv6(h, exts)
        }
    };
    let v6 = matches!(s.ip, Ip::V6 { .. });
    let ip = match s.vlan {
        Some(id) => eth.single_vlan(id.try_into().unwrap()).ip(headers),
        None => eth.ip(headers),
    };
    let mut out = Vec::new();
    match s.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut h = TcpHeader::new(sport, dport, 7, 1024);
            h.fin = flags & 0x01 != 0;
            h.syn = flags & 0x02 != 0;
            h.rst = flags & 0x04 != 0;
            h.psh = flags & 0x08 != 0;
            h.ack = flags & 0x10 != 0;
            h.urg = flags & 0x20 != 0;
            h.ece = flags & 0x40 != 0;
            h.cwr = flags & 0x80 != 0;
            ip.tcp_header(h).write(&mut out, &s.payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, &s.payload).unwrap(),
        L4::Echo { id, request } => match (v6, request) {
            (false, true) => ip
                .icmpv4_echo_request(id, 1)
                .write(&mut out, &s.payload)
                .unwrap(),
            (false, false) => ip
                .icmpv4_echo_reply(id, 1)
                .write(&mut out, &s.payload)
                .unwrap(),
            (true, true) => ip
                .icmpv6_echo_request(id, 1)
                .write(&mut out, &s.payload)
                .unwrap(),
            (true, false) => ip
                .icmpv6_echo_reply(id, 1)
                .write(&mut out, &s.payload)
                .unwrap(),
        },
    }
    out
}

fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

fn check(s: &Spec, frame: &[u8], p: &Parsed) {
    assert_eq!((p.src_mac, p.dst_mac), (s.src_mac, s.dst_mac));
    assert_eq!(p.vlan, s.vlan);
    let l3 = if s.vlan.is_some() { 18 } else { 14 };
    assert_eq!(usize::from(p.l3_offset), l3);
    let (l4, proto_icmp) = match &s.ip {
        Ip::V4 {
            src,
            dst,
            options,
            more_fragments,
        } => {
            assert_eq!((p.l3, p.ip_version, p.ethertype), (L3::Ipv4, 4, 0x0800));
            assert_eq!((p.src, p.dst), (mapped(*src), mapped(*dst)));
            let want = if *more_fragments {
                Fragment::First
            } else {
                Fragment::None
            };
            assert_eq!(p.fragment, want);
            (l3 + 20 + options.len(), 1)
        }
        Ip::V6 {
            src,
            dst,
            hop_by_hop,
            dest_opts,
        } => {
            assert_eq!((p.l3, p.ip_version, p.ethertype), (L3::Ipv6, 6, 0x86dd));
            assert_eq!((p.src, p.dst), (*src, *dst));
            assert_eq!(p.fragment, Fragment::None);
            (
                l3 + 40 + 16 * usize::from(*hop_by_hop) + 16 * usize::from(*dest_opts),
                58,
            )
        }
    };
    assert_eq!(usize::from(p.l4_offset), l4);
    assert_eq!(
        usize::from(p.l4_offset) + usize::from(p.l4_len),
        frame.len()
    );
    match s.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            assert_eq!(
                (p.proto, p.src_port, p.dst_port, p.tcp_flags),
                (6, sport, dport, flags)
            );
        }
        L4::Udp { sport, dport } => {
            assert_eq!(
                (p.proto, p.src_port, p.dst_port, p.tcp_flags),
                (17, sport, dport, 0)
            );
        }
        L4::Echo { id, request } => {
            let ty = match (proto_icmp, request) {
                (1, true) => 8,
                (1, false) => 0,
                (_, true) => 128,
                (_, false) => 129,
            };
            assert_eq!(
                (p.proto, p.icmp_type, p.icmp_code, p.icmp_id),
                (proto_icmp, ty, 0, id)
            );
            assert_eq!((p.src_port, p.dst_port), (0, 0));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(frame in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = wire::parse(&frame);
    }

    /// Arbitrary bytes behind a plausible Ethernet header reach the deeper layers.
    #[test]
    fn parser_never_panics_behind_a_valid_ethertype(
        ethertype in prop::sample::select(vec![0x0800u16, 0x86dd, 0x0806, 0x8100, 0x88a8]),
        version in prop::sample::select(vec![0x45u8, 0x46, 0x4f, 0x60, 0x41, 0x00]),
        body in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut frame = vec![0u8; 12];
        frame.extend_from_slice(&ethertype.to_be_bytes());
        frame.push(version);
        frame.extend_from_slice(&body);
        let _ = wire::parse(&frame);
    }

    #[test]
    fn parser_agrees_with_the_builder_on_valid_frames(s in spec()) {
        let frame = build(&s);
        let p = wire::parse(&frame).unwrap();
        check(&s, &frame, &p);
        // Parsing into a reused record (as the engine does) leaves nothing of the last frame.
        let mut reused = wire::parse(&icmp_error_frame()).unwrap();
        wire::parse_into(&frame, &mut reused).unwrap();
        prop_assert_eq!(reused, p);
        // The ABI record carries what the policy needs and nothing invented.
        let r = p.record(1, 2, Default::default());
        prop_assert_eq!((r.src, r.dst, r.protocol), (p.src, p.dst, p.proto));
    }

    #[test]
    fn every_truncation_of_a_valid_frame_is_an_error(s in spec()) {
        let frame = build(&s);
        for len in 0..frame.len() {
            prop_assert!(wire::parse(&frame[..len]).is_err(), "prefix of {} bytes parsed", len);
        }
    }

    /// Whatever the checksum field holds (a partial sum, garbage), completion restores the
    /// checksum etherparse computed when it built the frame.
    #[test]
    fn checksum_completion_matches_etherparse(s in spec(), garbage in any::<u16>()) {
        let want = build(&s);
        let p = wire::parse(&want).unwrap();
        let tcp_or_udp = matches!(s.l4, L4::Tcp { .. } | L4::Udp { .. });
        let first_fragment = matches!(s.ip, Ip::V4 { more_fragments: true, .. });
        let mut frame = want.clone();
        let field = usize::from(p.l4_offset) + if p.proto == 6 { 16 } else { 6 };
        frame[field..field + 2].copy_from_slice(&garbage.to_be_bytes());
        let done = complete_l4_checksum(&mut frame, &p);
        prop_assert_eq!(done, tcp_or_udp && !first_fragment);
        if done {
            prop_assert_eq!(frame, want);
        }
    }
}

#[test]
fn checksum_agrees_with_etherparse_calculation_directly() {
    let payload: Vec<u8> = (0..1000u32).map(|i| (i * 13) as u8).collect();
    let h = TcpHeader::new(40000, 80, 1, 100);
    let b = PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp_header(h.clone());
    let mut frame = Vec::new();
    b.write(&mut frame, &payload).unwrap();
    let want = h
        .calc_checksum_ipv4_raw([10, 0, 0, 1], [10, 0, 0, 2], &payload)
        .unwrap();
    let p = wire::parse(&frame).unwrap();
    frame[50..52].copy_from_slice(&[0, 0]);
    assert!(complete_l4_checksum(&mut frame, &p));
    assert_eq!(u16::from_be_bytes([frame[50], frame[51]]), want);
}

#[test]
fn arp_is_parsed() {
    let pkt = etherparse::ArpEthIpv4Packet {
        operation: etherparse::ArpOperation::REQUEST,
        sender_mac: [2, 0, 0, 0, 0, 1],
        sender_ipv4: [172, 17, 0, 2],
        target_mac: [0; 6],
        target_ipv4: [172, 17, 0, 3],
    };
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [0xff; 6])
        .arp(pkt.to_arp_packet())
        .write(&mut frame)
        .unwrap();
    let p = wire::parse(&frame).unwrap();
    assert_eq!((p.l3, p.arp_op, p.ip_version), (L3::Arp, 1, 0));
    assert_eq!(
        (p.src, p.dst),
        (mapped([172, 17, 0, 2]), mapped([172, 17, 0, 3]))
    );
    let mut bad = frame.clone();
    bad[14 + 5] = 16; // protocol address length 16: not IPv4
    assert_eq!(wire::parse(&bad), Err(Malformed::BadArp));
}

/// A VLAN-tagged ICMP error with a quoted tuple: a record with most fields set.
fn icmp_error_frame() -> Vec<u8> {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5353, 53)
        .write(&mut quoted, b"query")
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .single_vlan(7u16.try_into().unwrap())
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut frame, &quoted[..28])
        .unwrap();
    frame
}

#[test]
fn icmp_error_carries_the_quoted_tuple() {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(5353, 53)
        .write(&mut quoted, b"query")
        .unwrap();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut frame, &quoted[..28])
        .unwrap();
    let p = wire::parse(&frame).unwrap();
    assert!(p.is_icmp_error());
    let t = p.inner.unwrap();
    assert_eq!(
        (t.src, t.dst, t.src_port, t.dst_port, t.proto),
        (mapped([10, 0, 0, 1]), mapped([10, 0, 0, 2]), 5353, 53, 17)
    );
    // A quote too short to hold ports yields no tuple, but the error still parses.
    let mut short = Vec::new();
    PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([10, 0, 0, 2], [10, 0, 0, 1], 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut short, &quoted[..22])
        .unwrap();
    assert_eq!(wire::parse(&short).unwrap().inner, None);
}
