//! Hostile frames through the engine on the simulated bridge (issue 12), table-driven: each
//! frame kind has one expected outcome — forwarded unchanged to whom, held, or dropped with
//! which counted reason — and nothing the policy denies is ever delivered. No root needed.
//!
//! Covered here: IPv4 options (including options shaped like the ports a naive parser would
//! read), 802.1Q, 802.1ad and stacked tags, an unknown tag hiding IPv4, IPv6
//! extension-header chains at and past the parser's bound, atomic and header-splitting IPv6
//! fragments, tiny and zero-length first fragments that would hide the ports, overlapping
//! first fragments and fragments rewriting the transport header, spoofed IP sources, MACs
//! and ARP/neighbour-discovery claims, frames above the MTU or carrying trailing bytes,
//! and every truncation of every header layer. Elsewhere: length-field lies and per-reason
//! counting of malformed frames (`core_scenarios.rs`), a container borrowing another's
//! IPv4 address (`core_scenarios.rs`), fragment order, denial, orphans and floods
//! (`core_fragments.rs`), the parser against arbitrary bytes and every truncation of valid
//! frames at the parser level (`core_wire.rs`).
use dataplane::counters::{DropReason, Snapshot};
use dataplane::engine::EngineConfig;
use dataplane::policy::{FnPolicy, PacketRecord, VerdictRecord};
use dataplane::sim::*;
use dataplane::wire::{MAX_IPV6_EXT_HEADERS, Malformed};
use etherparse::PacketBuilder;
use rules_wasm::abi::tcp_flags::{ACK, PSH, SYN};
use std::time::Duration;

/// icc=false with a link, for IPv4 and IPv6: PARENT → CHILD TCP 80 and UDP 5000 (rule 1),
/// anything to or from the gateway (rule 2), nothing else between containers (rule 3).
fn link(r: &PacketRecord) -> VerdictRecord {
    let parent = r.src == mapped(PARENT.ip) || r.src == v6(PARENT);
    let child = r.dst == mapped(CHILD.ip) || r.dst == v6(CHILD);
    let gw = [mapped(GW.ip), v6(GW)];
    let linked = (r.protocol == 6 && r.dst_port == 80) || (r.protocol == 17 && r.dst_port == 5000);
    if parent && child && linked {
        accept(1)
    } else if gw.contains(&r.src) || gw.contains(&r.dst) {
        accept(2)
    } else {
        drop_(3)
    }
}

fn lab_with(config: EngineConfig) -> Lab {
    Lab::with(
        config,
        LabConfig::default().ports,
        4096,
        Box::new(FnPolicy::new(1, link)),
    )
}

fn lab() -> Lab {
    lab_with(EngineConfig::default())
}

// ---- Frame surgery (offsets of an untagged frame: IP at 14) ----

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

/// Recomputes the IPv4 header checksum of the header at `l3`.
fn fix_ipv4_checksum(f: &mut [u8], l3: usize) {
    let ihl = usize::from(f[l3] & 0x0f) * 4;
    f[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
    let sum = ones_complement(&f[l3..l3 + ihl]);
    f[l3 + 10..l3 + 12].copy_from_slice(&sum.to_be_bytes());
}

/// `frame` (untagged IPv4 without options) with `opts` (a multiple of 4 bytes) as options.
fn with_ipv4_options(frame: &[u8], opts: &[u8]) -> Vec<u8> {
    assert_eq!(opts.len() % 4, 0);
    let mut f = [&frame[..34], opts, &frame[34..]].concat();
    f[14] = 0x40 | ((20 + opts.len()) / 4) as u8;
    let total = u16::from_be_bytes([f[16], f[17]]) + opts.len() as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut f, 14);
    f
}

/// `frame` with a VLAN tag (`tpid`, `tci`) inserted after the MACs.
fn tagged(frame: &[u8], tpid: u16, tci: u16) -> Vec<u8> {
    [
        &frame[..12],
        &tpid.to_be_bytes()[..],
        &tci.to_be_bytes()[..],
        &frame[12..],
    ]
    .concat()
}

fn tcp6_frame(from: Host, to: Host, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from.mac, to.mac)
        .ipv6(v6(from), v6(to), 64)
        .tcp(sport, dport, 1000, 64240)
        .syn();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// `frame` (IPv6 without extension headers) with `headers` (each an 8-byte extension
/// header whose first byte — its next header — is filled in here) after the fixed header.
fn with_ipv6_ext(frame: &[u8], kinds: &[u8], headers: &[[u8; 8]]) -> Vec<u8> {
    assert_eq!(kinds.len(), headers.len());
    let (head, rest) = frame.split_at(14 + 40);
    let mut f = head.to_vec();
    let upper = f[14 + 6];
    for (i, h) in headers.iter().enumerate() {
        let mut h = *h;
        h[0] = kinds.get(i + 1).copied().unwrap_or(upper);
        f.extend_from_slice(&h);
    }
    if let Some(&k) = kinds.first() {
        f[14 + 6] = k;
    }
    f.extend_from_slice(rest);
    let payload = (f.len() - 54) as u16;
    f[18..20].copy_from_slice(&payload.to_be_bytes());
    f
}

/// A destination-options header (next header left 0): one PadN option filling 8 bytes.
const DEST_OPTS: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
const NH_DEST_OPTS: u8 = 60;
const NH_FRAGMENT: u8 = 44;

/// A fragment header (next header left 0) at byte `offset` with more-fragments `more`.
fn frag_header(offset: u16, more: bool, id: u32) -> [u8; 8] {
    let fo = (offset & 0xfff8) | u16::from(more);
    let [a, b] = fo.to_be_bytes();
    let [c, d, e, g] = id.to_be_bytes();
    [0, 0, a, b, c, d, e, g]
}

/// An IPv4 fragment from `from` to `to` of datagram `id` carrying `payload` at byte
/// `offset` of the datagram's payload.
fn ipv4_fragment(
    from: Host,
    to: Host,
    id: u16,
    proto: u8,
    offset: u16,
    more: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + payload.len());
    f.extend_from_slice(&to.mac);
    f.extend_from_slice(&from.mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let flags = (offset / 8) | if more { 0x2000 } else { 0 };
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&flags.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&from.ip);
    f.extend_from_slice(&to.ip);
    fix_ipv4_checksum(&mut f, 14);
    f.extend_from_slice(payload);
    f
}

/// The TCP segment (header and payload) of PARENT:40000 → CHILD:`dport`, as fragments
/// carry it.
fn segment(dport: u16, payload: &[u8]) -> Vec<u8> {
    tcp_frame(PARENT, CHILD, 40_000, dport, ACK | PSH, payload)[34..].to_vec()
}

fn icmpv6(from_mac: [u8; 6], to_mac: [u8; 6], src: [u8; 16], dst: [u8; 16], ty: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(from_mac, to_mac)
        .ipv6(src, dst, 255)
        .icmpv6_raw(ty, 0, [0x20, 0, 0, 0]);
    let mut out = Vec::new();
    // The target address of a solicitation or advertisement: CHILD's.
    b.write(&mut out, &v6(CHILD)).unwrap();
    out
}

fn link_local(h: Host) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[10..16].copy_from_slice(&h.mac);
    a
}

// ---- The table ----

/// What becomes of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Delivered unchanged to this host alone.
    To(Host),
    /// Delivered unchanged to every host but the sender (broadcast, multicast).
    Flooded,
    /// Held (a fragment waiting for its first).
    Held,
    /// Dropped, counted with this reason.
    Dropped(DropReason),
}

struct Case {
    name: &'static str,
    frames: Vec<(Host, Vec<u8>, Want)>,
}

fn case(name: &'static str, frames: Vec<(Host, Vec<u8>, Want)>) -> Case {
    Case { name, frames }
}

use Want::*;

const MALFORMED_TRUNCATED: DropReason = DropReason::Malformed(Malformed::Truncated);

fn cases() -> Vec<Case> {
    let syn80 = tcp_frame(PARENT, CHILD, 40_000, 80, SYN, &[]);
    let syn22 = tcp_frame(PARENT, CHILD, 40_000, 22, SYN, &[]);
    let other80 = tcp_frame(OTHER, CHILD, 40_000, 80, SYN, &[]);
    let big = |from: Host| tcp_frame(from, CHILD, 40_001, 80, ACK | PSH, &[7; 1700]);
    let data = |dport: u16| tcp_frame(PARENT, CHILD, 40_002, dport, ACK | PSH, b"data");
    let syn6 = |from: Host, dport: u16| tcp6_frame(from, CHILD, 40_000, dport);
    let dest_opts = |n: usize| (vec![NH_DEST_OPTS; n], vec![DEST_OPTS; n]);
    let (k8, h8) = dest_opts(MAX_IPV6_EXT_HEADERS);
    let (k9, h9) = dest_opts(MAX_IPV6_EXT_HEADERS + 1);
    // A tiny first fragment: 8 bytes of TCP header (ports, sequence number), the flags and
    // the rest in the next fragment.
    let seg = segment(80, &[1; 32]);
    let mut arp_claim = arp(OTHER, PARENT.mac, PARENT, true);
    arp_claim[28..32].copy_from_slice(&CHILD.ip); // sender IP: CHILD's
    let mut arp_borrowed_mac = arp(OTHER, BROADCAST, CHILD, false);
    arp_borrowed_mac[22..28].copy_from_slice(&PARENT.mac); // sender MAC: PARENT's
    let mut arp_probe = arp(OTHER, BROADCAST, OTHER, false);
    arp_probe[28..32].copy_from_slice(&[0; 4]);
    let gratuitous = arp(OTHER, BROADCAST, OTHER, false);
    let mut mac_borrowed = udp_frame(OTHER, GW.mac, GW.ip, 5353, 53, b"q");
    mac_borrowed[6..12].copy_from_slice(&PARENT.mac);
    let mut v6_borrowed = tcp6_frame(OTHER, CHILD, 40_000, 80);
    v6_borrowed[22..38].copy_from_slice(&v6(PARENT));
    let mut from_link_local = tcp6_frame(OTHER, CHILD, 40_000, 80);
    from_link_local[22..38].copy_from_slice(&link_local(OTHER));
    let dad_dst = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 3];
    let mut trailing22 = data(22);
    trailing22.extend_from_slice(&[0xee; 100]);
    let mut trailing80 = data(80);
    trailing80.extend_from_slice(&[0xee; 100]);
    vec![
        case(
            "IPv4 options (IHL 6) on the linked port",
            vec![(PARENT, with_ipv4_options(&syn80, &[1, 1, 1, 0]), To(CHILD))],
        ),
        case(
            "IPv4 options shaped like port 80 where a parser ignoring IHL reads ports; real port 22",
            vec![(
                PARENT,
                with_ipv4_options(&syn22, &[1, 1, 0, 0x50]),
                Dropped(DropReason::PolicyDrop),
            )],
        ),
        case(
            "IPv4 with the most options (IHL 15)",
            vec![(PARENT, with_ipv4_options(&syn80, &[1; 40]), To(CHILD))],
        ),
        case(
            "802.1Q-tagged, linked: judged as untagged, forwarded with its tag",
            vec![(PARENT, tagged(&syn80, 0x8100, 5), To(CHILD))],
        ),
        case(
            "802.1Q-tagged from a container the policy denies",
            vec![(
                OTHER,
                tagged(&other80, 0x8100, 5),
                Dropped(DropReason::PolicyDrop),
            )],
        ),
        case(
            "802.1Q priority tag (VID 0) on a denied port",
            vec![(
                PARENT,
                tagged(&syn22, 0x8100, 0x6000),
                Dropped(DropReason::PolicyDrop),
            )],
        ),
        case(
            "802.1ad (QinQ) service tag",
            vec![(
                PARENT,
                tagged(&syn80, 0x88a8, 5),
                Dropped(DropReason::Malformed(Malformed::VlanStack)),
            )],
        ),
        case(
            "802.1ad over 802.1Q (double-tagged)",
            vec![(
                PARENT,
                tagged(&tagged(&syn80, 0x8100, 6), 0x88a8, 5),
                Dropped(DropReason::Malformed(Malformed::VlanStack)),
            )],
        ),
        case(
            "802.1Q over 802.1Q",
            vec![(
                OTHER,
                tagged(&tagged(&other80, 0x8100, 6), 0x8100, 5),
                Dropped(DropReason::Malformed(Malformed::VlanStack)),
            )],
        ),
        case(
            "IPv4 behind an unknown tag (0x9100): not IP to the bridge nor to the receiver's \
             stack, switched as non-IP (switch_non_ip; see the test below for it off)",
            vec![(OTHER, tagged(&other80, 0x9100, 5), To(CHILD))],
        ),
        case(
            "IPv6 with as many extension headers as the parser walks, linked",
            vec![(
                PARENT,
                with_ipv6_ext(&syn6(PARENT, 80), &k8, &h8),
                To(CHILD),
            )],
        ),
        case(
            "IPv6 with as many extension headers as the parser walks, denied port",
            vec![(
                PARENT,
                with_ipv6_ext(&syn6(PARENT, 22), &k8, &h8),
                Dropped(DropReason::PolicyDrop),
            )],
        ),
        case(
            "IPv6 extension-header chain one longer than the parser's bound",
            vec![(
                PARENT,
                with_ipv6_ext(&syn6(PARENT, 80), &k9, &h9),
                Dropped(DropReason::Malformed(Malformed::ExtHeaderChainTooLong)),
            )],
        ),
        case(
            "IPv6 atomic fragment (offset 0, no more fragments): a whole datagram, judged",
            vec![
                (
                    PARENT,
                    with_ipv6_ext(
                        &syn6(PARENT, 80),
                        &[NH_FRAGMENT],
                        &[frag_header(0, false, 7)],
                    ),
                    To(CHILD),
                ),
                (
                    OTHER,
                    with_ipv6_ext(
                        &syn6(OTHER, 80),
                        &[NH_FRAGMENT],
                        &[frag_header(0, false, 8)],
                    ),
                    Dropped(DropReason::PolicyDrop),
                ),
            ],
        ),
        case(
            "IPv6 first fragment whose TCP header lies beyond it (chain split across fragments)",
            vec![(
                PARENT,
                // Fragment header (first, more follow), then destination options that end
                // the fragment: the upper-layer header is not in it.
                {
                    let f = with_ipv6_ext(
                        &syn6(PARENT, 80),
                        &[NH_FRAGMENT, NH_DEST_OPTS],
                        &[frag_header(0, true, 9), DEST_OPTS],
                    );
                    let cut = f.len() - 20;
                    let mut f = f[..cut].to_vec();
                    let payload = (f.len() - 54) as u16;
                    f[18..20].copy_from_slice(&payload.to_be_bytes());
                    f
                },
                Dropped(MALFORMED_TRUNCATED),
            )],
        ),
        case(
            "tiny first fragment: 8 bytes of TCP (ports only), the flags in the next one",
            vec![
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 1, 6, 0, true, &seg[..8]),
                    Dropped(MALFORMED_TRUNCATED),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 1, 6, 8, false, &seg[8..]),
                    Held,
                ),
            ],
        ),
        case(
            "zero-length first fragment, the whole TCP header in a later one",
            vec![
                (
                    OTHER,
                    ipv4_fragment(OTHER, CHILD, 2, 6, 0, true, &[]),
                    Dropped(MALFORMED_TRUNCATED),
                ),
                (
                    OTHER,
                    ipv4_fragment(OTHER, CHILD, 2, 6, 8, false, &seg),
                    Held,
                ),
            ],
        ),
        case(
            "a second first fragment rewriting the ports (80, then 22)",
            vec![
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 3, 6, 0, true, &seg[..24]),
                    To(CHILD),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 3, 6, 0, true, &segment(22, &[1; 32])[..24]),
                    Dropped(DropReason::PolicyDrop),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 3, 6, 24, false, &seg[24..]),
                    Dropped(DropReason::FragmentOverlap),
                ),
            ],
        ),
        case(
            "a duplicate first fragment (same ports) poisons its datagram",
            vec![
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 4, 6, 0, true, &seg[..24]),
                    To(CHILD),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 4, 6, 0, true, &seg[..24]),
                    Dropped(DropReason::FragmentOverlap),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 4, 6, 24, false, &seg[24..]),
                    Dropped(DropReason::FragmentOverlap),
                ),
            ],
        ),
        case(
            "a later fragment at offset 8 rewriting the first's TCP flags (RFC 1858)",
            vec![
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 5, 6, 0, true, &seg[..24]),
                    To(CHILD),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 5, 6, 8, true, &[0xff; 16]),
                    Dropped(DropReason::FragmentOverlap),
                ),
                (
                    PARENT,
                    ipv4_fragment(PARENT, CHILD, 5, 6, 24, false, &seg[24..]),
                    Dropped(DropReason::FragmentOverlap),
                ),
            ],
        ),
        case(
            "a container borrowing another's IPv6 address",
            vec![(OTHER, v6_borrowed, Dropped(DropReason::SpoofedSource))],
        ),
        case(
            "an IPv6 link-local source passes the guard and is judged",
            vec![(OTHER, from_link_local, Dropped(DropReason::PolicyDrop))],
        ),
        case(
            "a container sending with another's MAC (its own address, an allowed flow)",
            vec![(OTHER, mac_borrowed, Dropped(DropReason::SpoofedMac))],
        ),
        case(
            "ARP reply claiming another container's address (ARP spoofing)",
            vec![(OTHER, arp_claim, Dropped(DropReason::SpoofedSource))],
        ),
        case(
            "ARP whose sender hardware address is another container's MAC",
            vec![(OTHER, arp_borrowed_mac, Dropped(DropReason::SpoofedMac))],
        ),
        case(
            "ARP probe (sender 0.0.0.0) and gratuitous ARP for its own address",
            vec![(OTHER, arp_probe, Flooded), (OTHER, gratuitous, Flooded)],
        ),
        case(
            "neighbour advertisement from another container's IPv6 address",
            vec![(
                OTHER,
                icmpv6(OTHER.mac, PARENT.mac, v6(CHILD), v6(PARENT), 136),
                Dropped(DropReason::SpoofedSource),
            )],
        ),
        case(
            "duplicate address detection (solicitation from ::) and link-local solicitation",
            vec![
                (
                    OTHER,
                    icmpv6(
                        OTHER.mac,
                        [0x33, 0x33, 0xff, 0, 0, 3],
                        [0; 16],
                        dad_dst,
                        135,
                    ),
                    Flooded,
                ),
                (
                    OTHER,
                    icmpv6(
                        OTHER.mac,
                        [0x33, 0x33, 0xff, 0, 0, 3],
                        link_local(OTHER),
                        dad_dst,
                        135,
                    ),
                    Flooded,
                ),
            ],
        ),
        case(
            "a frame above the 1,500-byte MTU: judged like any other (the egress link enforces \
             its MTU)",
            vec![
                (PARENT, big(PARENT), To(CHILD)),
                (OTHER, big(OTHER), Dropped(DropReason::PolicyDrop)),
            ],
        ),
        case(
            "bytes after the IP packet (padding, junk): judged by the IP header, kept as they are",
            vec![
                (PARENT, trailing80, To(CHILD)),
                (PARENT, trailing22, Dropped(DropReason::PolicyDrop)),
            ],
        ),
    ]
}

/// Every frame the engine received was forwarded or dropped with a counted reason.
fn nothing_vanished(s: &Snapshot, held: u64) {
    let received: u64 = s.ports.iter().map(|p| p.rx_packets).sum();
    let transmitted: u64 = s.ports.iter().map(|p| p.tx_packets).sum();
    assert_eq!(
        received,
        s.total_drops() + transmitted - s.flood_copies + held,
        "{:?}",
        s.drops
    );
}

#[test]
fn every_hostile_frame_has_its_one_outcome() {
    for c in cases() {
        let mut lab = lab();
        for (from, frame, _) in &c.frames {
            lab.inject(*from, frame);
        }
        lab.run();
        let got = lab.take_all();
        let mut want_at: [Vec<&Vec<u8>>; 4] = Default::default();
        let mut want_drops: Vec<(DropReason, u64)> = Vec::new();
        let mut held = 0;
        for (from, frame, want) in &c.frames {
            match want {
                To(h) => want_at[usize::from(h.port)].push(frame),
                Flooded => {
                    for h in HOSTS.iter().filter(|h| h.port != from.port) {
                        want_at[usize::from(h.port)].push(frame);
                    }
                }
                Held => held += 1,
                Dropped(r) => match want_drops.iter_mut().find(|(x, _)| x == r) {
                    Some((_, n)) => *n += 1,
                    None => want_drops.push((*r, 1)),
                },
            }
        }
        for port in 0..4 {
            let got: Vec<&Vec<u8>> = got[port].iter().collect();
            assert_eq!(got, want_at[port], "{}: what port {port} received", c.name);
        }
        let s = lab.engine.counters().snapshot();
        let mut drops = s.drops.clone();
        drops.sort_by_key(|(r, _)| r.index());
        want_drops.sort_by_key(|(r, _)| r.index());
        assert_eq!(drops, want_drops, "{}: drops", c.name);
        assert_eq!(lab.engine.fragments_held(), held as usize, "{}", c.name);
        nothing_vanished(&s, held);
        assert_eq!(lab.frames_accounted(), lab.total_frames, "{}", c.name);
    }
}

#[test]
fn fragments_held_for_a_first_that_was_dropped_time_out_counted() {
    let mut lab = lab();
    let seg = segment(80, &[1; 32]);
    lab.inject(
        PARENT,
        &ipv4_fragment(PARENT, CHILD, 1, 6, 0, true, &seg[..8]),
    );
    lab.inject(
        PARENT,
        &ipv4_fragment(PARENT, CHILD, 1, 6, 8, false, &seg[8..]),
    );
    lab.run();
    assert_eq!(lab.engine.fragments_held(), 1);
    lab.advance(Duration::from_secs(31));
    // Each batch sweeps a budget of fragment slots: a few batches reach the datagram.
    for id in 0..40 {
        lab.send(PARENT, &ping(PARENT, GW, id, false));
    }
    assert_eq!(lab.engine.fragments_held(), 0);
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::FragmentOrphan), 1);
    assert_eq!(s.drops(MALFORMED_TRUNCATED), 1);
    assert!(lab.take_all()[usize::from(CHILD.port)].is_empty());
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn non_ip_frames_are_dropped_counted_when_non_ip_switching_is_off() {
    let mut lab = lab_with(EngineConfig {
        switch_non_ip: false,
        ..EngineConfig::default()
    });
    let hidden = tagged(&tcp_frame(OTHER, CHILD, 40_000, 80, SYN, &[]), 0x9100, 5);
    assert!(receivers(&lab.send(OTHER, &hidden)).is_empty());
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::NonIpBlocked),
        1
    );
}

#[test]
fn a_frame_larger_than_a_frame_slot_never_reaches_the_engine() {
    let mut lab = lab();
    let huge = tcp_frame(PARENT, CHILD, 40_000, 80, ACK | PSH, &[0; FRAME_SIZE]);
    // The port cannot place it in a frame (AF_XDP: the kernel drops it, counted there).
    assert!(!lab.port_mut(PARENT).wire_mut().inject(&huge));
    lab.run();
    assert!(receivers(&lab.take_all()).is_empty());
    assert_eq!(lab.engine.counters().snapshot().ports.len(), 0);
}

/// A valid frame without payload: cutting it anywhere cuts one of its headers.
struct Layered {
    name: &'static str,
    from: Host,
    frame: Vec<u8>,
    /// Where the IP header starts and how its length field is kept consistent with a cut
    /// (IPv4 total length or IPv6 payload length), if there is one.
    ip: Option<(usize, u8)>,
}

#[test]
fn a_header_truncated_at_any_byte_of_any_layer_is_dropped_counted_never_delivered() {
    let syn80 = tcp_frame(PARENT, CHILD, 40_000, 80, SYN, &[]);
    let (k2, h2) = (vec![NH_DEST_OPTS; 2], vec![DEST_OPTS; 2]);
    let frames = vec![
        Layered {
            name: "TCP/IPv4",
            from: PARENT,
            frame: syn80.clone(),
            ip: Some((14, 4)),
        },
        Layered {
            name: "TCP/IPv4 with options",
            from: PARENT,
            frame: with_ipv4_options(&syn80, &[1; 8]),
            ip: Some((14, 4)),
        },
        Layered {
            name: "802.1Q TCP/IPv4",
            from: PARENT,
            frame: tagged(&syn80, 0x8100, 5),
            ip: Some((18, 4)),
        },
        Layered {
            name: "UDP/IPv4",
            from: PARENT,
            frame: udp_frame(PARENT, CHILD.mac, CHILD.ip, 40_000, 5000, &[]),
            ip: Some((14, 4)),
        },
        Layered {
            name: "ICMP echo",
            from: PARENT,
            frame: {
                let b = PacketBuilder::ethernet2(PARENT.mac, GW.mac)
                    .ipv4(PARENT.ip, GW.ip, 64)
                    .icmpv4_echo_request(1, 1);
                let mut out = Vec::new();
                b.write(&mut out, &[]).unwrap();
                out
            },
            ip: Some((14, 4)),
        },
        Layered {
            name: "TCP/IPv6 with two extension headers",
            from: PARENT,
            frame: with_ipv6_ext(&tcp6_frame(PARENT, CHILD, 40_000, 80), &k2, &h2),
            ip: Some((14, 6)),
        },
        Layered {
            name: "ARP",
            from: PARENT,
            frame: arp(PARENT, BROADCAST, CHILD, false),
            ip: None,
        },
    ];
    for l in frames {
        for fix_lengths in [false, true] {
            if fix_lengths && l.ip.is_none() {
                continue;
            }
            let mut lab = lab();
            let n = l.frame.len();
            for cut in 0..n {
                let mut f = l.frame[..cut].to_vec();
                if let Some((at, version)) = l.ip.filter(|_| fix_lengths) {
                    // Keep the IP length field true to what is left, so the cut shows as the
                    // header it falls in, not as a length lie.
                    match version {
                        4 if cut >= at + 4 => {
                            let total = (cut - at) as u16;
                            f[at + 2..at + 4].copy_from_slice(&total.to_be_bytes());
                        }
                        6 if cut >= at + 6 => {
                            let payload = cut.saturating_sub(at + 40) as u16;
                            f[at + 4..at + 6].copy_from_slice(&payload.to_be_bytes());
                        }
                        _ => {}
                    }
                }
                lab.inject(l.from, &f);
                lab.run();
            }
            let got = lab.take_all();
            assert!(
                receivers(&got).is_empty(),
                "{} (lengths fixed: {fix_lengths}): a truncated frame was delivered",
                l.name
            );
            let s = lab.engine.counters().snapshot();
            let malformed: u64 = s
                .drops
                .iter()
                .filter(|(r, _)| matches!(r, DropReason::Malformed(_)))
                .map(|(_, n)| n)
                .sum();
            assert_eq!(
                malformed, n as u64,
                "{} (lengths fixed: {fix_lengths}): {:?}",
                l.name, s.drops
            );
            assert_eq!(
                s.policy_records, 0,
                "{}: no truncated frame reaches the policy",
                l.name
            );
            if fix_lengths {
                // With honest lengths every cut is a truncated header.
                assert_eq!(
                    s.drops(MALFORMED_TRUNCATED),
                    n as u64,
                    "{}: {:?}",
                    l.name,
                    s.drops
                );
            }
            assert_eq!(lab.frames_accounted(), lab.total_frames);
        }
    }
}

/// The policy the table relies on admits what the cases expect, so a failing case above is
/// the engine's and not the policy's.
#[test]
fn the_tables_policy_admits_the_linked_pair_and_nothing_else() {
    let rec = |src: [u8; 16], dst: [u8; 16], proto: u8, dport: u16| PacketRecord {
        src,
        dst,
        protocol: proto,
        dst_port: dport,
        ..PacketRecord::default()
    };
    let ports: [(u16, bool); 4] = [
        (80, true),
        (22, false),
        (5000, false), // TCP 5000 is not linked, UDP 5000 is
        (443, false),
    ];
    for (dport, want) in ports {
        let v = link(&rec(mapped(PARENT.ip), mapped(CHILD.ip), 6, dport));
        assert_eq!(v == accept(1), want, "tcp {dport}");
    }
    assert_eq!(link(&rec(v6(PARENT), v6(CHILD), 17, 5000)), accept(1));
    assert_eq!(
        link(&rec(mapped(OTHER.ip), mapped(CHILD.ip), 6, 80)),
        drop_(3)
    );
}
