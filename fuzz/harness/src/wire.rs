//! Target `wire_parse`: the engine's frame parser (`dataplane::wire::parse_into`, which the
//! hot loop calls on every frame, and `parse`), every accessor of the parsed record, and the
//! TCP/UDP checksum completion the engine runs on what the parser found.
//!
//! Properties, beyond "never panics":
//! - `parse_into` into a record left over from another frame gives what `parse` gives;
//! - the offsets and lengths of an `Ok` record lie inside the frame, and fields the frame's
//!   protocol does not have are zero;
//! - `PacketRecord` encoding keeps every field;
//! - completing a checksum leaves a frame that parses the same, whose checksum verifies
//!   (against a plain RFC 1071 sum written here), and completing it again changes nothing;
//! - the optimised ones'-complement sum equals the plain one, in one piece or two.
use dataplane::wire::checksum::fold;
use dataplane::wire::{
    self, Fragment, L3, Parsed, Tuple, complete_l4_checksum, ones_complement_sum,
};
use rules_wasm::abi::{FlowState, PacketRecord, RECORD_SIZE, proto};

/// Runs one input (a whole Ethernet frame).
pub fn run(data: &[u8]) {
    let parsed = wire::parse(data);
    // A record that held another frame: parse_into must not leave any of it behind.
    let mut reused = Parsed {
        dst_mac: [0xaa; 6],
        src_port: 0xdead,
        vlan: Some(7),
        tcp_flags: 0xff,
        fragment: Fragment::Later,
        frag_more: true,
        inner: Some(Tuple {
            proto: 99,
            ..Tuple::default()
        }),
        ..Parsed::default()
    };
    let again = wire::parse_into(data, &mut reused);
    assert_eq!(again, parsed.map(|_| ()), "parse_into disagrees with parse");
    sums(data);
    let Ok(p) = parsed else {
        return;
    };
    assert_eq!(reused, p, "parse_into kept fields of the previous frame");
    invariants(data, &p);
    accessors(&p);
    checksum(data, &p);
}

fn invariants(data: &[u8], p: &Parsed) {
    let l3 = usize::from(p.l3_offset);
    assert_eq!(l3, if p.vlan.is_some() { 18 } else { 14 });
    assert_eq!(p.dst_mac, data[0..6]);
    assert_eq!(p.src_mac, data[6..12]);
    if let Some(v) = p.vlan {
        assert!(v <= 0x0fff);
    }
    match p.l3 {
        L3::Ipv4 | L3::Ipv6 => {
            let (version, min) = if p.l3 == L3::Ipv4 { (4, 20) } else { (6, 40) };
            assert_eq!(p.ip_version, version);
            // Offsets are u16: only frames that fit one are held to the bounds.
            if data.len() <= usize::from(u16::MAX) {
                let l4 = usize::from(p.l4_offset);
                assert!(l4 >= l3 + min, "transport header inside the IP header");
                assert!(
                    l4 + usize::from(p.l4_len) <= data.len(),
                    "transport segment {}+{} past a {}-byte frame",
                    l4,
                    p.l4_len,
                    data.len()
                );
            }
        }
        L3::Arp | L3::Other => {
            assert_eq!(p.ip_version, 0);
            assert_eq!((p.proto, p.l4_offset, p.l4_len), (0, 0, 0));
            assert_eq!(p.fragment, Fragment::None);
        }
    }
    if p.l3 != L3::Arp {
        assert_eq!(p.arp_op, 0);
    }
    if p.l3 == L3::Other {
        assert_eq!((p.src, p.dst), ([0; 16], [0; 16]));
    }
    if !matches!(p.proto, proto::TCP | proto::UDP) || p.fragment == Fragment::Later {
        assert_eq!((p.src_port, p.dst_port), (0, 0), "ports without TCP/UDP");
    }
    if p.proto != proto::TCP || p.fragment == Fragment::Later {
        assert_eq!(p.tcp_flags, 0);
    }
    if !matches!(p.proto, proto::ICMP | proto::ICMPV6) || p.fragment == Fragment::Later {
        assert_eq!((p.icmp_type, p.icmp_code, p.icmp_id), (0, 0, 0));
        assert!(p.inner.is_none());
    }
    if p.fragment == Fragment::None {
        assert_eq!(p.frag_offset, 0);
    }
    if p.fragment == Fragment::Later {
        assert!(p.frag_offset > 0, "a later fragment at offset 0");
    }
    if p.fragment == Fragment::First {
        assert!(p.frag_more && p.frag_offset == 0);
    }
    if p.inner.is_some() {
        assert!(p.is_icmp_error(), "an embedded tuple outside an ICMP error");
    }
}

fn accessors(p: &Parsed) {
    let error = p.is_icmp_error();
    let echo = p.is_icmp_echo();
    assert!(
        !(error && echo),
        "an ICMP message both an error and an echo"
    );
    if p.is_neighbour_discovery() {
        assert!(p.ip_version == 6 && !error && !echo);
    }
    if p.has_l4_checksum() {
        assert!(matches!(p.proto, proto::TCP | proto::UDP) && p.fragment == Fragment::None);
    }
    for state in [
        FlowState::New,
        FlowState::Established,
        FlowState::Related,
        FlowState::Invalid,
    ] {
        let r = p.record(3, 0xffff, state);
        let mut bytes = [0u8; RECORD_SIZE];
        r.encode(&mut bytes);
        assert_eq!(
            PacketRecord::decode(&bytes),
            r,
            "record encoding lost a field"
        );
        assert_eq!(
            (
                r.ip_version,
                r.protocol,
                r.flow_state,
                r.in_port,
                r.out_port
            ),
            (p.ip_version, p.proto, state, 3, 0xffff)
        );
    }
}

/// RFC 1071 as written: big-endian 16-bit words, an odd last byte padded with zero.
fn plain_sum(data: &[u8]) -> u64 {
    data.chunks(2)
        .map(|w| u64::from(w[0]) << 8 | w.get(1).map_or(0, |&b| u64::from(b)))
        .sum()
}

fn plain_fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn sums(data: &[u8]) {
    let want = plain_fold(plain_sum(data));
    let fast = u16::from_be_bytes(fold(ones_complement_sum(data, 0)).to_ne_bytes());
    // 0x0000 and 0xffff are the same number in ones' complement.
    let same = |a: u16, b: u16| a == b || (a | b == 0xffff && a & b == 0);
    assert!(same(fast, want), "sum {fast:#06x}, plain {want:#06x}");
    // In two pieces, the first of even length, as the checksum code sums them.
    let cut = (data.first().copied().map_or(0, usize::from) * 2).min(data.len() & !1);
    let two = ones_complement_sum(&data[cut..], ones_complement_sum(&data[..cut], 0));
    let two = u16::from_be_bytes(fold(two).to_ne_bytes());
    assert!(
        same(two, want),
        "two-piece sum {two:#06x}, plain {want:#06x}"
    );
}

fn checksum(data: &[u8], p: &Parsed) {
    let mut frame = data.to_vec();
    let done = complete_l4_checksum(&mut frame, p);
    if !p.has_l4_checksum() {
        assert!(!done, "completed a checksum the frame does not have");
        assert_eq!(frame, data);
        return;
    }
    assert!(
        done,
        "a parsed TCP/UDP frame whose checksum was not completed"
    );
    let start = usize::from(p.l4_offset);
    let len = usize::from(p.l4_len);
    let field = if p.proto == proto::TCP { 16 } else { 6 };
    // Only the two checksum bytes may change.
    for (i, (a, b)) in data.iter().zip(&frame).enumerate() {
        if a != b {
            assert!(
                i == start + field || i == start + field + 1,
                "byte {i} changed outside the checksum field"
            );
        }
    }
    assert_eq!(
        wire::parse(&frame),
        Ok(*p),
        "the completed frame parses otherwise"
    );
    let mut pseudo = Vec::new();
    if p.ip_version == 4 {
        pseudo.extend_from_slice(&p.src[12..16]);
        pseudo.extend_from_slice(&p.dst[12..16]);
        pseudo.extend_from_slice(&[0, p.proto]);
        pseudo.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        pseudo.extend_from_slice(&p.src);
        pseudo.extend_from_slice(&p.dst);
        pseudo.extend_from_slice(&(len as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, p.proto]);
    }
    let seg = &frame[start..start + len];
    let total = plain_fold(plain_sum(&pseudo) + plain_sum(seg));
    assert_eq!(total, 0xffff, "completed checksum does not verify");
    if p.proto == proto::UDP {
        assert_ne!(&seg[6..8], &[0, 0], "UDP checksum 0 means none");
    }
    let mut twice = frame.clone();
    assert!(complete_l4_checksum(&mut twice, p));
    assert_eq!(twice, frame, "completing twice changed the frame");
}
