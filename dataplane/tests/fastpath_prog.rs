//! The in-kernel fast path (`dataplane/bpf/fastpath.bpf.c`) through `BPF_PROG_TEST_RUN`, and
//! its TCX attachment on a live veth. Needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN), like
//! every `root_netns_` test: without it they fail.
//!
//! Test runs bind the skb to loopback (ifindex 1, which always exists) and register it in
//! `bw_ports`, so no namespace is needed for them and no redirect is performed (the kernel
//! only records the target during a test run). Each test loads its own program and maps.
//! The namespace test creates its own uniquely named namespace and removes it on drop.

use dataplane::afxdp::enter_netns;
use dataplane::afxdp::fastpath::{
    FastPath, FastPathConfig, FastPathError, FastPathStats, FlowKey, FlowValue, KernelFlows,
    OutMode, PROGRAM_NAME, TAG_LEN, TC_ACT_REDIRECT, TC_ACT_SHOT, TestRun, UpcallReason, UpcallTag,
    tcx_ingress_programs,
};
use dataplane::sim::netns::{Netns, veth};
use dataplane::wire::{Tuple, parse};

const LO: u32 = 1;
const PORT: u16 = 0x0102;
const UPCALL_IF: u32 = 77;
const OUT_IF: u32 = 42;
const GEN: u32 = 5;

const TCP: u8 = 6;
const UDP: u8 = 17;
const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

/// A loaded program with loopback registered as port `PORT`, generation `GEN`.
struct Rig {
    fp: FastPath,
    flows: KernelFlows,
}

fn rig() -> Rig {
    let mut fp = FastPath::load(FastPathConfig { max_flows: 1024 }).expect("load fast path");
    fp.register_port(LO, PORT, UPCALL_IF).unwrap();
    let mut flows = fp.take_flows().unwrap();
    flows.set_generation(GEN).unwrap();
    Rig { fp, flows }
}

impl Rig {
    fn run(&self, frame: &[u8]) -> TestRun {
        self.fp.test_run(frame, LO).expect("test run")
    }

    fn stats(&self) -> FastPathStats {
        self.flows.stats().unwrap()
    }

    /// Installs `value` under the key the engine would compute for `frame` (through
    /// `dataplane::wire`'s parser, so the test also checks the key ABI against `Tuple`).
    fn install_for(&mut self, frame: &[u8], value: FlowValue) -> FlowKey {
        let key = key_for(frame);
        self.flows.install(&key, &value).unwrap();
        key
    }
}

fn key_for(frame: &[u8]) -> FlowKey {
    let p = parse(frame).expect("test frame parses");
    let t = Tuple {
        src: p.src,
        dst: p.dst,
        src_port: p.src_port,
        dst_port: p.dst_port,
        proto: p.proto,
    };
    FlowKey::from_tuple(PORT, &t)
}

fn eth(dst: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn l4(proto: u8, sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    if proto == TCP {
        h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else if proto == UDP {
        h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
    } else {
        // ICMP echo request: type, code, checksum, id, seq.
        h = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    }
    h.extend((0..payload).map(|i| i as u8));
    h
}

/// Ethernet/IPv4 frame: 10.0.0.1:sport → 10.0.0.2:dport.
fn v4(proto: u8, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    v4_with(MAC_B, proto, sport, dport, flags, |_| {})
}

fn v4_with(
    dst_mac: [u8; 6],
    proto: u8,
    sport: u16,
    dport: u16,
    flags: u8,
    tweak: impl FnOnce(&mut Vec<u8>),
) -> Vec<u8> {
    let body = l4(proto, sport, dport, flags, 32);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + body.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[
        0x12, 0x34, 0x40, 0, 64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
    ]);
    tweak(&mut ip);
    let mut f = eth(dst_mac, 0x0800);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&body);
    f
}

/// Ethernet/IPv6 frame: fd00::1 → fd00::2, next header `next` directly after the fixed header
/// (or `ext` first when given: a hop-by-hop options header).
fn v6(proto: u8, sport: u16, dport: u16, flags: u8, ext: bool) -> Vec<u8> {
    let mut body = l4(proto, sport, dport, flags, 32);
    let mut next = proto;
    if ext {
        let mut hbh = vec![proto, 0, 1, 4, 0, 0, 0, 0]; // PadN
        hbh.extend_from_slice(&body);
        body = hbh;
        next = 0;
    }
    let mut f = eth(MAC_B, 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(body.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = 1;
    f.extend_from_slice(&a);
    a[15] = 2;
    f.extend_from_slice(&a);
    f.extend_from_slice(&body);
    f
}

#[track_caller]
fn assert_upcall(run: &TestRun, frame: &[u8], reason: UpcallReason) {
    assert_eq!(run.retval, TC_ACT_REDIRECT, "upcall must redirect");
    assert_eq!(
        run.data.len(),
        frame.len() + TAG_LEN,
        "tag + original frame"
    );
    let (tag, rest) = UpcallTag::parse(&run.data).expect("a well-formed tag");
    assert_eq!(tag, UpcallTag { port: PORT, reason });
    assert_eq!(
        &run.data[..TAG_LEN],
        &[
            0x02,
            0x62,
            0x77,
            0x75,
            0x70,
            0x00,
            0x01,
            0x02,
            reason as u8,
            0,
            0,
            0,
            0x88,
            0xb5
        ]
    );
    assert_eq!(
        rest, frame,
        "the original frame follows the tag byte for byte"
    );
}

#[track_caller]
fn assert_forwarded(run: &TestRun, frame: &[u8]) {
    assert_eq!(run.retval, TC_ACT_REDIRECT);
    assert_eq!(run.data, frame, "a forwarded frame is not modified");
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn root_netns_fastpath_forward_hit_via_peer_updates_the_entry() {
    let mut r = rig();
    let ack = v4(TCP, 40000, 80, ACK);
    let key = r.install_for(&ack, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    assert_eq!(
        (key.port, key.proto, key.sport, key.dport),
        (PORT, TCP, 40000, 80)
    );
    assert_eq!(&key.src[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

    let before = monotonic_ns();
    assert_forwarded(&r.run(&ack), &ack);
    let psh = v4(TCP, 40000, 80, PSH | ACK);
    assert_forwarded(&r.run(&psh), &psh);
    let after = monotonic_ns();

    let e = r.flows.get(&key).unwrap().expect("entry still there");
    assert_eq!(e.packets(), 2);
    assert_eq!(e.bytes(), (ack.len() + psh.len()) as u64);
    assert!(
        (before..=after).contains(&e.last_seen_ns()),
        "last_seen {} not in [{before}, {after}]",
        e.last_seen_ns()
    );
    assert_eq!(e.tcp_flags(), u32::from(PSH | ACK));
    assert_eq!(
        (e.out_ifindex, e.out_mode(), e.generation),
        (OUT_IF, Some(OutMode::Peer), GEN)
    );
    let s = r.stats();
    assert_eq!(s.forwarded, 2);
    assert_eq!(s.forwarded_bytes, (ack.len() + psh.len()) as u64);
    assert_eq!(
        s.upcall_miss + s.upcall_flags + s.dropped + s.redirect_failed,
        0
    );
}

#[test]
fn root_netns_fastpath_forward_hit_via_egress() {
    let mut r = rig();
    let udp = v4(UDP, 5353, 53, 0);
    let key = r.install_for(&udp, FlowValue::forward(OUT_IF, OutMode::Egress, GEN));
    for _ in 0..3 {
        assert_forwarded(&r.run(&udp), &udp);
    }
    let e = r.flows.get(&key).unwrap().unwrap();
    assert_eq!(
        (e.packets(), e.bytes(), e.tcp_flags()),
        (3, 3 * udp.len() as u64, 0)
    );
    assert!(e.last_seen_ns() > 0);
    assert_eq!(r.stats().forwarded, 3);
}

#[test]
fn root_netns_fastpath_miss_upcalls_with_the_tag() {
    let r = rig();
    let ack = v4(TCP, 40000, 80, ACK);
    assert_upcall(&r.run(&ack), &ack, UpcallReason::Miss);
    // The reverse direction and another port are different keys.
    let udp = v4(UDP, 1, 2, 0);
    assert_upcall(&r.run(&udp), &udp, UpcallReason::Miss);
    let s = r.stats();
    assert_eq!((s.upcall_miss, s.forwarded, s.upcall_failed), (2, 0, 0));
}

#[test]
fn root_netns_fastpath_drop_entry_drops_even_a_syn() {
    let mut r = rig();
    let ack = v4(TCP, 40000, 22, ACK);
    let key = r.install_for(&ack, FlowValue::drop(GEN));
    assert_eq!(r.run(&ack).retval, TC_ACT_SHOT);
    let syn = v4(TCP, 40000, 22, SYN);
    assert_eq!(r.run(&syn).retval, TC_ACT_SHOT);
    let e = r.flows.get(&key).unwrap().unwrap();
    assert_eq!(e.packets(), 2);
    assert_eq!(e.tcp_flags(), u32::from(ACK | SYN));
    let s = r.stats();
    assert_eq!((s.dropped, s.forwarded, s.upcall_flags), (2, 0, 0));
}

#[test]
fn root_netns_fastpath_stale_generation_upcalls() {
    let mut r = rig();
    let ack = v4(TCP, 40000, 80, ACK);
    let key = r.install_for(&ack, FlowValue::forward(OUT_IF, OutMode::Peer, GEN - 1));
    assert_upcall(&r.run(&ack), &ack, UpcallReason::Stale);
    // A stale DROP entry is not trusted either.
    r.flows.install(&key, &FlowValue::drop(GEN + 1)).unwrap();
    assert_upcall(&r.run(&ack), &ack, UpcallReason::Stale);
    assert_eq!(
        r.flows.get(&key).unwrap().unwrap().packets(),
        0,
        "stale hits are not counted"
    );
    // Moving the generation to the entry's makes it current.
    r.flows.set_generation(GEN + 1).unwrap();
    assert_eq!(r.flows.generation().unwrap(), GEN + 1);
    assert_eq!(r.run(&ack).retval, TC_ACT_SHOT);
    let s = r.stats();
    assert_eq!((s.upcall_stale, s.dropped), (2, 1));
}

#[test]
fn root_netns_fastpath_syn_fin_rst_on_a_forward_entry_upcall() {
    let mut r = rig();
    let ack = v4(TCP, 40000, 80, ACK);
    let key = r.install_for(&ack, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    for flags in [SYN, SYN | ACK, FIN | ACK, RST, RST | ACK] {
        let f = v4(TCP, 40000, 80, flags);
        assert_upcall(&r.run(&f), &f, UpcallReason::TcpFlags);
    }
    assert_eq!(r.flows.get(&key).unwrap().unwrap().packets(), 0);
    assert_eq!(r.stats().upcall_flags, 5);
}

#[test]
fn root_netns_fastpath_ipv6_tcp_and_udp_hit_and_miss() {
    let mut r = rig();
    let tcp = v6(TCP, 40000, 443, ACK, false);
    let udp = v6(UDP, 5000, 6000, 0, false);
    assert_upcall(&r.run(&tcp), &tcp, UpcallReason::Miss);
    assert_upcall(&r.run(&udp), &udp, UpcallReason::Miss);
    let kt = r.install_for(&tcp, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    let ku = r.install_for(&udp, FlowValue::forward(OUT_IF, OutMode::Egress, GEN));
    assert_eq!(kt.src[0], 0xfd);
    assert_forwarded(&r.run(&tcp), &tcp);
    assert_forwarded(&r.run(&udp), &udp);
    assert_eq!(r.flows.get(&kt).unwrap().unwrap().packets(), 1);
    assert_eq!(r.flows.get(&ku).unwrap().unwrap().packets(), 1);
    let s = r.stats();
    assert_eq!((s.upcall_miss, s.forwarded), (2, 2));
}

#[test]
fn root_netns_fastpath_not_fast_path_material_upcalls_unparsed() {
    let mut r = rig();
    // Install entries for every TCP/UDP tuple below, so a wrong fast-path hit would show.
    let ack = v4(TCP, 40000, 80, ACK);
    r.install_for(&ack, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    let tcp6 = v6(TCP, 40000, 443, ACK, false);
    r.install_for(&tcp6, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    // 802.1Q and 802.1ad tags in front of an IPv4/TCP hit.
    for tpid in [0x8100u16, 0x88a8] {
        let mut f = eth(MAC_B, tpid);
        f.extend_from_slice(&[0, 10]);
        f.extend_from_slice(&ack[12..]);
        cases.push(("vlan", f));
    }
    // IPv4 fragments: MF set, and a non-zero offset.
    cases.push(("mf", v4_with(MAC_B, TCP, 40000, 80, ACK, |ip| ip[6] = 0x20)));
    cases.push((
        "offset",
        v4_with(MAC_B, TCP, 40000, 80, ACK, |ip| {
            ip[6] = 0;
            ip[7] = 8
        }),
    ));
    // IPv4 with options (ihl 6: a NOP option word).
    cases.push((
        "options",
        v4_with(MAC_B, TCP, 40000, 80, ACK, |ip| {
            ip[0] = 0x46;
            ip.extend_from_slice(&[1, 1, 1, 0]);
        }),
    ));
    // Version other than 4 under the IPv4 ethertype.
    cases.push((
        "ipv4 version",
        v4_with(MAC_B, TCP, 40000, 80, ACK, |ip| ip[0] = 0x65),
    ));
    // IPv6 with a hop-by-hop header before TCP.
    cases.push(("ipv6 ext", v6(TCP, 40000, 443, ACK, true)));
    // ARP request (broadcast) and an ARP reply (unicast).
    let mut arp = eth([0xff; 6], 0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&[0u8; 20]);
    cases.push(("arp broadcast", arp.clone()));
    arp[..6].copy_from_slice(&MAC_B);
    cases.push(("arp unicast", arp));
    // IPv4/TCP to a broadcast and a multicast MAC.
    cases.push(("broadcast", v4_with([0xff; 6], TCP, 40000, 80, ACK, |_| {})));
    cases.push((
        "multicast",
        v4_with([0x01, 0x00, 0x5e, 0, 0, 1], TCP, 40000, 80, ACK, |_| {}),
    ));
    // ICMP and ICMPv6 (58).
    cases.push(("icmp", v4(1, 0, 0, 0)));
    cases.push(("icmpv6", v6(58, 0, 0, 0, false)));
    // Other transports (SCTP).
    cases.push(("sctp", v4(132, 1, 2, 0)));
    for (what, f) in &cases {
        let run = r.run(f);
        assert_eq!(run.retval, TC_ACT_REDIRECT, "{what}");
        assert_upcall(&run, f, UpcallReason::Unparsed);
    }
    let s = r.stats();
    assert_eq!(s.upcall_unparsed, cases.len() as u64);
    assert_eq!((s.forwarded, s.upcall_miss), (0, 0));
}

#[test]
fn root_netns_fastpath_truncated_frames_upcall_and_never_read_past_the_end() {
    let mut r = rig();
    let ack = v4(TCP, 40000, 80, ACK);
    r.install_for(&ack, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    let udp = v4(UDP, 5000, 6000, 0);
    r.install_for(&udp, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    let udp6 = v6(UDP, 5000, 6000, 0, false);
    r.install_for(&udp6, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));
    let tcp6 = v6(TCP, 40000, 443, ACK, false);
    r.install_for(&tcp6, FlowValue::forward(OUT_IF, OutMode::Peer, GEN));

    // A bare Ethernet header (the shortest frame a test run takes): not IP, so unparsed.
    let mut bare = ack[..14].to_vec();
    bare[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_upcall(&r.run(&bare), &bare, UpcallReason::Unparsed);

    // The kernel's test run refuses IPv4/IPv6 frames whose IP header is cut (it reads the
    // header itself before running the program), so the program's own checks for those
    // cases are covered by the verifier's bounds proof, not by a run.
    for f in [&ack[..14], &ack[..24], &ack[..33], &udp6[..40], &udp6[..53]] {
        match r.fp.test_run(f, LO) {
            Err(FastPathError::TestRun(e)) => assert_eq!(e.errno(), Some(libc::EINVAL)),
            other => panic!(
                "{} bytes: expected the kernel to refuse, got {other:?}",
                f.len()
            ),
        }
    }

    let named = [
        ("cut TCP header", ack[..44].to_vec()),
        ("IPv4 header only", ack[..34].to_vec()),
        ("cut UDP header", udp[..38].to_vec()),
        ("cut IPv6 TCP header", tcp6[..70].to_vec()),
        ("cut IPv6 UDP header", udp6[..58].to_vec()),
    ];
    for (what, f) in &named {
        let run = r.run(f);
        assert_eq!(run.retval, TC_ACT_REDIRECT, "{what}");
        assert_upcall(&run, f, UpcallReason::Truncated);
    }
    assert_eq!(r.stats().upcall_truncated, named.len() as u64);
    // Every prefix the kernel accepts: a truncated upcall until the L4 header is whole, then
    // a forward (the program does not look past the ports and flags).
    for (full, ip_end, l4_end) in [
        (&ack, 14 + 20, 14 + 20 + 20),
        (&udp, 14 + 20, 14 + 20 + 8),
        (&tcp6, 14 + 40, 14 + 40 + 20),
        (&udp6, 14 + 40, 14 + 40 + 8),
    ] {
        for len in ip_end..=full.len() {
            let f = &full[..len];
            let run = r.run(f);
            if len < l4_end {
                assert_upcall(&run, f, UpcallReason::Truncated);
            } else {
                assert_forwarded(&run, f);
            }
        }
    }
}

#[test]
fn root_netns_fastpath_unknown_ingress_device_is_dropped() {
    let mut fp = FastPath::load(FastPathConfig::default()).unwrap();
    let flows = fp.take_flows().unwrap();
    let ack = v4(TCP, 40000, 80, ACK);
    let run = fp.test_run(&ack, LO).unwrap();
    assert_eq!(run.retval, TC_ACT_SHOT);
    assert_eq!(flows.stats().unwrap().unknown_port, 1);
    // Registered, then removed again: unknown once more.
    fp.register_port(LO, PORT, UPCALL_IF).unwrap();
    assert_upcall(&fp.test_run(&ack, LO).unwrap(), &ack, UpcallReason::Miss);
    assert!(fp.unregister_port(LO).unwrap());
    assert!(!fp.unregister_port(LO).unwrap());
    assert_eq!(fp.test_run(&ack, LO).unwrap().retval, TC_ACT_SHOT);
    assert_eq!(flows.stats().unwrap().unknown_port, 2);
    assert!(matches!(fp.take_flows(), Err(FastPathError::FlowsTaken)));
}

#[test]
fn root_netns_fastpath_flow_table_bookkeeping() {
    let mut fp = FastPath::load(FastPathConfig { max_flows: 2 }).unwrap();
    let mut flows = fp.take_flows().unwrap();
    assert_eq!(flows.capacity(), 2);
    let k = |sport| key_for(&v4(TCP, sport, 80, ACK));
    flows
        .install(&k(1), &FlowValue::forward(OUT_IF, OutMode::Peer, 1))
        .unwrap();
    flows.install(&k(2), &FlowValue::drop(1)).unwrap();
    // Update in place: not a new entry, not "full".
    flows.install(&k(2), &FlowValue::drop(2)).unwrap();
    assert_eq!(flows.len(), 2);
    assert_eq!(flows.get(&k(2)).unwrap().unwrap().generation, 2);
    match flows.install(&k(3), &FlowValue::drop(1)) {
        Err(FastPathError::FlowTableFull { max_flows: 2 }) => {}
        other => panic!("expected FlowTableFull, got {other:?}"),
    }
    let mut seen = Vec::new();
    flows
        .for_each(|key, v| seen.push((key.sport, v.is_forward())))
        .unwrap();
    seen.sort();
    assert_eq!(seen, [(1, true), (2, false)]);
    assert!(flows.remove(&k(1)).unwrap());
    assert!(!flows.remove(&k(1)).unwrap());
    assert_eq!(flows.len(), 1);
    assert_eq!(flows.get(&k(1)).unwrap(), None);
    flows.install(&k(3), &FlowValue::drop(1)).unwrap();
    assert_eq!(flows.len(), 2);
    assert!(matches!(
        FastPath::load(FastPathConfig { max_flows: 0 }),
        Err(FastPathError::Config(_))
    ));
}

#[test]
fn root_netns_fastpath_flow_table_is_walked_in_slices_every_entry_once() {
    const N: u32 = 3000;
    let mut fp = FastPath::load(FastPathConfig { max_flows: 4096 }).unwrap();
    let mut flows = fp.take_flows().unwrap();
    for i in 0..N {
        let key = FlowKey {
            port: 1,
            proto: UDP,
            sport: (i & 0xffff) as u16,
            dport: 53,
            ..FlowKey::default()
        };
        flows
            .install(&key, &FlowValue::forward(OUT_IF, OutMode::Peer, i))
            .unwrap();
    }
    for walk in 0..2 {
        let mut seen = std::collections::BTreeMap::new();
        let mut slices = 0;
        loop {
            slices += 1;
            assert!(slices <= 1000, "the walk never ends");
            let done = flows
                .walk_slice(|k, v| {
                    *seen.entry(k.sport).or_insert(0u32) += 1;
                    assert_eq!(
                        u32::from(k.sport),
                        v.generation,
                        "key and value belong together"
                    );
                })
                .unwrap();
            if done {
                break;
            }
        }
        assert_eq!(seen.len(), N as usize, "walk {walk}: every entry");
        assert!(seen.values().all(|&n| n == 1), "walk {walk}: each once");
        // Slices of at most 256 entries: the walk took several.
        assert!(
            slices >= (N as usize).div_ceil(256),
            "walk {walk}: {slices} slices"
        );
    }
}

#[test]
fn root_netns_fastpath_tcx_attach_and_detach_on_drop() {
    let ns = Netns::new("fastpath");
    let peer = Netns::new("fpeer");
    veth(&ns, "fpa", &peer, "fpb");
    ns.ip(&[
        "link", "add", "fpup0", "type", "veth", "peer", "name", "fpup1",
    ]);
    let name = ns.name.clone();
    std::thread::spawn(move || {
        let _back = enter_netns(&name).unwrap();
        let upcall = dataplane::afxdp::if_index("fpup0").unwrap();
        assert!(tcx_ingress_programs("fpa").unwrap().is_empty());
        let mut fp = FastPath::load(FastPathConfig::default()).unwrap();
        let ifindex = fp.attach("fpa", 9, upcall).unwrap();
        assert_eq!(fp.attached(), 1);
        assert_eq!(fp.attachments().collect::<Vec<_>>(), [(ifindex, "fpa")]);
        assert_eq!(tcx_ingress_programs("fpa").unwrap(), [PROGRAM_NAME]);
        assert!(matches!(
            fp.attach("fpa", 9, upcall),
            Err(FastPathError::AlreadyAttached { .. })
        ));
        assert!(matches!(
            fp.attach("nosuchdev", 9, upcall),
            Err(FastPathError::Interface(_))
        ));
        // The port entry is there: a test run on the device upcalls with its port id.
        let ack = v4(TCP, 40000, 80, ACK);
        let run = fp.test_run(&ack, ifindex).unwrap();
        assert_eq!(UpcallTag::parse(&run.data).unwrap().0.port, 9);

        // detach() drops the link and the port entry.
        assert!(fp.detach(ifindex).unwrap());
        assert!(!fp.detach(ifindex).unwrap());
        assert!(tcx_ingress_programs("fpa").unwrap().is_empty());
        assert_eq!(fp.test_run(&ack, ifindex).unwrap().retval, TC_ACT_SHOT);

        // Attached again, then the whole object dropped: nothing stays attached.
        let flows = fp.take_flows().unwrap();
        fp.attach("fpa", 9, upcall).unwrap();
        fp.attach("fpup1", 10, upcall).unwrap();
        assert_eq!(fp.attached(), 2);
        assert_eq!(tcx_ingress_programs("fpup1").unwrap(), [PROGRAM_NAME]);
        drop(fp);
        assert!(tcx_ingress_programs("fpa").unwrap().is_empty());
        assert!(tcx_ingress_programs("fpup1").unwrap().is_empty());
        // The worker's maps outlive the program.
        assert!(flows.stats().is_ok());
    })
    .join()
    .unwrap();
}

/// A child process killed (by its own id) and reaped on drop, also when the test fails.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Live traffic through the attached program: `A:va — M:pa`, `B:vb — M:pb`, the program on
/// pa and pb, upcalls to M's veth up0 (captured on its peer up1). A UDP flow with entries
/// both ways is forwarded by the kernel (bpf_redirect_peer) with nothing else in M; a
/// datagram of another flow arrives tagged on up1.
#[test]
fn root_netns_fastpath_live_forward_and_upcall() {
    use std::io::Read;
    use std::net::UdpSocket;
    use std::process::{Command, Stdio};
    use std::time::Duration;

    let a = Netns::new("fla");
    let b = Netns::new("flb");
    let m = Netns::new("flm");
    veth(&a, "va", &m, "pa");
    veth(&b, "vb", &m, "pb");
    m.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    m.ip(&["link", "set", "up0", "up"]);
    m.ip(&["link", "set", "up1", "up"]);
    let (mac_a, mac_b) = ("02:00:00:77:00:0a", "02:00:00:77:00:0b");
    a.ip(&["link", "set", "va", "address", mac_a]);
    b.ip(&["link", "set", "vb", "address", mac_b]);
    a.ip(&["addr", "add", "10.77.0.1/24", "dev", "va"]);
    b.ip(&["addr", "add", "10.77.0.2/24", "dev", "vb"]);
    // No ARP through the fast path (it upcalls ARP and nothing answers here).
    a.ip(&["neigh", "add", "10.77.0.2", "lladdr", mac_b, "dev", "va"]);
    b.ip(&["neigh", "add", "10.77.0.1", "lladdr", mac_a, "dev", "vb"]);

    let v4 = |x: u8| {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 77, 0, x]);
        a
    };
    let (fp, flows) = m
        .spawn(move || {
            let mut fp = FastPath::load(FastPathConfig::default()).unwrap();
            let up0 = dataplane::afxdp::if_index("up0").unwrap();
            let pa = fp.attach("pa", 1, up0).unwrap();
            let pb = fp.attach("pb", 2, up0).unwrap();
            let mut flows = fp.take_flows().unwrap();
            flows.set_generation(1).unwrap();
            let there = Tuple {
                src: v4(1),
                dst: v4(2),
                src_port: 7001,
                dst_port: 7000,
                proto: UDP,
            };
            let back = Tuple {
                src: v4(2),
                dst: v4(1),
                src_port: 7000,
                dst_port: 7001,
                proto: UDP,
            };
            let fwd = |i| FlowValue::forward(i, OutMode::Peer, 1);
            flows
                .install(&FlowKey::from_tuple(1, &there), &fwd(pb))
                .unwrap();
            flows
                .install(&FlowKey::from_tuple(2, &back), &fwd(pa))
                .unwrap();
            (fp, flows)
        })
        .join()
        .unwrap();

    let server = b.spawn(|| {
        let s = UdpSocket::bind("10.77.0.2:7000").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 2048];
        let mut n_echoed = 0;
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if &buf[..n] == b"end" {
                break;
            }
            s.send_to(&buf[..n], from).unwrap();
            n_echoed += 1;
        }
        n_echoed
    });
    std::thread::sleep(Duration::from_millis(100));
    let echoed = a
        .spawn(|| {
            let s = UdpSocket::bind("10.77.0.1:7001").unwrap();
            s.connect("10.77.0.2:7000").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut ok = 0;
            for i in 0..20u32 {
                let msg: Vec<u8> = (0..(100 + i * 50)).map(|j| (i + j) as u8).collect();
                s.send(&msg).unwrap();
                if let Ok(n) = s.recv(&mut buf) {
                    assert_eq!(&buf[..n], &msg[..], "datagram {i} came back altered");
                    ok += 1;
                }
            }
            s.send(b"end").unwrap();
            ok
        })
        .join()
        .unwrap();
    assert_eq!(server.join().unwrap(), 20);
    assert_eq!(
        echoed, 20,
        "every datagram came back through the kernel path"
    );
    let s = flows.stats().unwrap();
    // 20 each way, plus "end".
    assert_eq!(s.forwarded, 41, "{s:?}");
    assert_eq!(
        (s.upcall_failed, s.redirect_failed, s.unknown_port),
        (0, 0, 0)
    );

    // A miss: the datagram arrives on up1 behind the tag.
    const CAPTURE: &str = r#"
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("up1", 0))
s.settimeout(5)
print("ready", flush=True)
while True:
    d = s.recv(65535)
    if d[12:14] == b"\x88\xb5":
        print(d.hex(), flush=True)
        break
"#;
    let mut child = ChildGuard(Some(
        Command::new("ip")
            .args(["netns", "exec", &m.name, "python3", "-c", CAPTURE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the capture"),
    ));
    let mut out = child.0.as_mut().unwrap().stdout.take().unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).unwrap();
    assert_eq!(&ready, b"ready\n");
    a.spawn(|| {
        let s = UdpSocket::bind("10.77.0.1:7002").unwrap();
        s.send_to(b"upcall me", "10.77.0.2:7999").unwrap();
    })
    .join()
    .unwrap();
    let mut hex = String::new();
    out.read_to_string(&mut hex).unwrap();
    let frame: Vec<u8> = (0..hex.trim().len() / 2)
        .map(|i| u8::from_str_radix(&hex.trim()[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let (tag, inner) = UpcallTag::parse(&frame).expect("a tagged frame on up1");
    assert_eq!(
        tag,
        UpcallTag {
            port: 1,
            reason: UpcallReason::Miss
        }
    );
    assert_eq!(
        &inner[..6],
        &[0x02, 0, 0, 0x77, 0, 0x0b],
        "original dst MAC"
    );
    let p = parse(inner).expect("the original frame parses");
    assert_eq!((p.proto, p.src_port, p.dst_port), (UDP, 7002, 7999));
    assert!(inner.ends_with(b"upcall me"));
    assert!(flows.stats().unwrap().upcall_miss >= 1);
    drop(fp);
}

/// The GSO question of the upcall path: a UDP GSO send (4,000 bytes in 1,000-byte segments)
/// that misses is upcalled; with native XDP on up1 (as the AF_XDP socket needs), up0 has no
/// GSO, so whatever is still a GSO skb is segmented in software after the tag was added.
/// Every segment must arrive as tag + a complete Ethernet/IPv4/UDP frame, payload in order.
#[test]
fn root_netns_fastpath_gso_upcall_is_segmented_behind_the_tag() {
    use dataplane::afxdp::{RedirectProgram, XdpLink, XdpMode, XskMap};
    use std::io::Read;
    use std::process::{Command, Stdio};

    let a = Netns::new("fga");
    let b = Netns::new("fgb");
    let m = Netns::new("fgm");
    veth(&a, "va", &m, "pa");
    veth(&b, "vb", &m, "pb");
    m.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    m.ip(&["link", "set", "up0", "up"]);
    m.ip(&["link", "set", "up1", "up"]);
    a.ip(&["addr", "add", "10.78.0.1/24", "dev", "va"]);
    a.ip(&[
        "neigh",
        "add",
        "10.78.0.2",
        "lladdr",
        "02:00:00:78:00:0b",
        "dev",
        "va",
    ]);

    let (fp, _xdp) = m
        .spawn(|| {
            let up0 = dataplane::afxdp::if_index("up0").unwrap();
            let up1 = dataplane::afxdp::if_index("up1").unwrap();
            let map = XskMap::new(1).unwrap();
            let prog = RedirectProgram::load(&map).unwrap();
            let link = XdpLink::attach(&prog, "up1", up1, XdpMode::Native).unwrap();
            let mut fp = FastPath::load(FastPathConfig::default()).unwrap();
            fp.attach("pa", 1, up0).unwrap();
            (fp, (map, prog, link))
        })
        .join()
        .unwrap();

    const CAPTURE: &str = r#"
import socket
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("up1", 0))
s.settimeout(3)
print("ready", flush=True)
try:
    while True:
        d = s.recv(65535)
        if d[12:14] == b"\x88\xb5":
            print(d.hex(), flush=True)
except socket.timeout:
    pass
"#;
    const SEND_GSO: &str = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(17, 103, 1000)  # SOL_UDP, UDP_SEGMENT
s.sendto(bytes(i % 251 for i in range(4000)), ("10.78.0.2", 7999))
"#;
    let mut child = ChildGuard(Some(
        Command::new("ip")
            .args(["netns", "exec", &m.name, "python3", "-c", CAPTURE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the capture"),
    ));
    let mut out = child.0.as_mut().unwrap().stdout.take().unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).unwrap();
    a.exec(&["python3", "-c", SEND_GSO]);
    let mut hex = String::new();
    out.read_to_string(&mut hex).unwrap();
    let frames: Vec<Vec<u8>> = hex
        .lines()
        .map(|l| {
            (0..l.len() / 2)
                .map(|i| u8::from_str_radix(&l[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    assert_eq!(frames.len(), 4, "4 segments of 1,000 bytes");
    let mut payload = Vec::new();
    for f in &frames {
        let (tag, inner) = UpcallTag::parse(f).expect("tagged");
        assert_eq!(tag.reason, UpcallReason::Miss);
        let p = parse(inner).expect("a whole Ethernet/IPv4/UDP frame");
        assert_eq!((p.proto, p.dst_port), (UDP, 7999));
        assert_eq!(inner.len(), 14 + 20 + 8 + 1000);
        payload.extend_from_slice(&inner[42..]);
    }
    let sent: Vec<u8> = (0..4000).map(|i| (i % 251) as u8).collect();
    assert_eq!(payload, sent);
    drop(fp);
}

/// A process that attached the fast path and is killed with SIGKILL leaves nothing attached
/// (the links are unpinned: they go with the last descriptor). The test re-runs itself as
/// the holder, identified by environment variables.
#[test]
fn root_netns_fastpath_kill9_leaves_no_link() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    if let Ok(ns) = std::env::var("BWT_FASTPATH_HOLD_NS") {
        let _back = enter_netns(&ns).unwrap();
        let mut fp = FastPath::load(FastPathConfig::default()).unwrap();
        fp.attach("ka", 1, 1).unwrap();
        println!("HOLDING");
        std::io::stdout().flush().unwrap();
        loop {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
    let m = Netns::new("fk9m");
    let p = Netns::new("fk9p");
    veth(&m, "ka", &p, "kb");
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "root_netns_fastpath_kill9_leaves_no_link",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BWT_FASTPATH_HOLD_NS", &m.name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(Some(child));
    let stdout = child.0.as_mut().unwrap().stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("HOLDING") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("child never attached");
    let name = m.name.clone();
    let attached = move || {
        let name = name.clone();
        std::thread::spawn(move || {
            let _back = enter_netns(&name).unwrap();
            tcx_ingress_programs("ka").unwrap().len()
        })
        .join()
        .unwrap()
    };
    assert_eq!(attached(), 1, "child's program not attached");
    if let Some(mut c) = child.0.take() {
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while attached() != 0 {
        assert!(
            Instant::now() < deadline,
            "TCX program still attached 5 s after kill -9"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
