//! What the fuzz targets (`fuzz/`, see `fuzz/README.md`) found in the dataplane, each input
//! inlined and held to the behaviour fixed after it.
use dataplane::wire::{Fragment, parse};
use rules_wasm::abi::proto;

/// `wire_parse`, finding 1 (`fuzz/regressions/wire_parse/nested-fragment-header`): an IPv6
/// first fragment (identification 0x8ae, more fragments) whose fragment header is followed by
/// a second, atomic one (identification 0x53ee86). The second header used to overwrite the
/// record: a first fragment without "more fragments", tracked under the second header's
/// identification, so the datagram's later fragments could never follow it.
#[test]
fn a_second_fragment_header_does_not_rewrite_the_first() {
    const FRAME: [u8; 82] = [
        0x02, 0x42, 0xac, 0x11, 0x00, 0x03, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, //
        0x86, 0xdd, 0x60, 0x00, 0x00, 0x00, 0x00, 0x1c, 0x2c, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x01, 0x07, 0x00, 0x07, //
        0x00, 0xac, 0x02, 0x11, 0x86, 0x14, 0xe9, 0x00, 0x00, 0x00, 0x00, 0x00, //
        0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x2c, 0x00, 0x00, 0x01, 0x00, 0x00, //
        0x08, 0xae, 0x55, 0x00, 0x00, 0x00, 0x00, 0x53, 0xee, 0x86, 0x14, 0xe9, //
        0x00, 0x35, 0x00, 0x0c, 0x00, 0x00, 0x61, 0x62, 0x63, 0x64,
    ];
    let p = parse(&FRAME).unwrap();
    assert_eq!(p.fragment, Fragment::First);
    assert!(p.frag_more, "a first fragment has more to follow");
    assert_eq!((p.frag_id, p.frag_offset), (0x08ae, 0));
    assert_eq!(p.proto, 85);
}

/// An Ethernet + IPv6 frame carrying `payload` after a header whose next header is `next`.
fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![
        0x02, 0x42, 0xac, 0x11, 0, 3, 0x02, 0x42, 0xac, 0x11, 0, 2, 0x86, 0xdd,
    ];
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
    f.extend_from_slice(payload);
    f
}

/// A fragment header: next header, fragment offset in 8-byte units, more, identification.
fn frag(next: u8, offset: u16, more: bool, id: u32) -> [u8; 8] {
    let fo = (offset << 3) | u16::from(more);
    let [a, b] = fo.to_be_bytes();
    let [c, d, e, g] = id.to_be_bytes();
    [next, 0, a, b, c, d, e, g]
}

const UDP_53: [u8; 8] = [0x14, 0xe9, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00];

/// The same family of inputs, each case: whichever fragment header comes second, the first
/// one that fragments says where the packet sits.
#[test]
fn the_first_fragmenting_header_decides() {
    // First fragment of datagram 1, then a later fragment's header of datagram 2: still the
    // first fragment of datagram 1, judged on the transport header that follows.
    let payload = [&frag(44, 0, true, 1)[..], &frag(17, 5, false, 2), &UDP_53].concat();
    let p = parse(&ipv6(44, &payload)).unwrap();
    assert_eq!(p.fragment, Fragment::First);
    assert_eq!((p.frag_id, p.frag_offset, p.frag_more), (1, 0, true));
    assert_eq!((p.proto, p.dst_port), (proto::UDP, 53));

    // An atomic fragment (offset 0, no more: a whole datagram, RFC 6946) before a real one:
    // the real one decides.
    let payload = [&frag(44, 0, false, 7)[..], &frag(17, 0, true, 8), &UDP_53].concat();
    let p = parse(&ipv6(44, &payload)).unwrap();
    assert_eq!(p.fragment, Fragment::First);
    assert_eq!((p.frag_id, p.frag_more), (8, true));

    // A later fragment stops the walk at its own header, as before.
    let payload = [&frag(44, 3, true, 9)[..], &frag(17, 0, true, 10), &UDP_53].concat();
    let p = parse(&ipv6(44, &payload)).unwrap();
    assert_eq!(p.fragment, Fragment::Later);
    assert_eq!((p.frag_id, p.frag_offset, p.frag_more), (9, 24, true));
    assert_eq!((p.src_port, p.dst_port), (0, 0));
}
