//! TX-only AF_XDP ports (`XdpPortConfig { receive: false, .. }`) on live veths. Needs root
//! and `ethtool`: every test builds its own uniquely named namespaces — a "host" side holding
//! the ports and a "container" side behind the veths — and removes them on drop, also when
//! it fails.
//!
//! The point of the mode: native XDP on a veth clears its peer's TSO (and caps its MTU); a
//! socket bound TX-only attaches nothing, so the container keeps its offloads, while frames
//! decided in userspace still reach it.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dataplane::afxdp::{
    AfXdpError, BindRetry, RingSizes, Umem, UmemConfig, XdpPort, XdpPortConfig, XskSocket,
    enter_netns, if_index,
};
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, Port};
use dataplane::sim::netns::{Netns, veth};

const FRAMES: u32 = 4096;
const FRAME_SIZE: u32 = 2048;

/// `ethtool -k IF` inside namespace `ns`: is `tcp-segmentation-offload` on?
fn tso_on(ns: &Netns, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-k", ifname])
        .output()
        .expect("run ethtool (apt-get install ethtool)");
    assert!(
        out.status.success(),
        "ethtool -k {ifname} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("tcp-segmentation-offload:"))
        .unwrap_or_else(|| panic!("no tcp-segmentation-offload line in:\n{text}"));
    line.split(':')
        .nth(1)
        .is_some_and(|v| v.trim().starts_with("on"))
}

/// The MAC address of `ifname` in `ns`.
fn mac(ns: &Netns, ifname: &str) -> [u8; 6] {
    let out = ns.ip(&["-o", "link", "show", "dev", ifname]);
    let hex = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in {out}"));
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(hex.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap();
    }
    m
}

/// Does `ip link show` list an XDP program on `ifname`?
fn has_xdp(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", "dev", ifname]).contains("xdp")
}

/// An Ethernet/IPv4/UDP frame (UDP checksum 0: none, valid over IPv4).
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let ip_len = 20 + 8 + payload.len();
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Copies `frame` into a free UMEM frame and returns its descriptor.
fn stage(umem: &mut Umem, free: &mut FreeList, frame: &[u8]) -> FrameDesc {
    let addr = free.pop().expect("a free frame");
    umem.bytes_mut(addr, frame.len()).copy_from_slice(frame);
    FrameDesc {
        addr,
        len: frame.len() as u32,
    }
}

fn tx_only() -> XdpPortConfig {
    XdpPortConfig {
        receive: false,
        ..XdpPortConfig::default()
    }
}

/// A TX-only port leaves the veth peer's TSO on (a receiving port turns it off), posts no
/// frame, receives nothing, registers a UMEM that a receiving port then shares, and the
/// frames it transmits arrive in the container namespace.
#[test]
fn root_netns_afxdp_tx_only_port_keeps_peer_tso_and_delivers() {
    let host = Netns::new("txh");
    let ctr = Netns::new("txc");
    veth(&host, "ta", &ctr, "tb");
    veth(&host, "na", &ctr, "nb");
    ctr.ip(&["addr", "add", "10.77.0.2/24", "dev", "tb"]);
    ctr.ip(&["addr", "add", "10.77.1.2/24", "dev", "nb"]);
    // The container reaches 10.77.0.1 / 10.77.1.1 behind ta / na without ARP.
    let (ta_mac, tb_mac, na_mac) = (mac(&host, "ta"), mac(&ctr, "tb"), mac(&host, "na"));
    let fmt = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    ctr.ip(&[
        "neigh",
        "add",
        "10.77.0.1",
        "lladdr",
        &fmt(ta_mac),
        "dev",
        "tb",
    ]);
    ctr.ip(&[
        "neigh",
        "add",
        "10.77.1.1",
        "lladdr",
        &fmt(na_mac),
        "dev",
        "nb",
    ]);
    assert!(tso_on(&ctr, "tb"), "a fresh veth has TSO on");
    assert!(tso_on(&ctr, "nb"), "a fresh veth has TSO on");

    // A receiver in the container, bound before anything is sent.
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = ctr.spawn(move || {
        let s = UdpSocket::bind("10.77.0.2:7100").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        ready_tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = s.recv(&mut buf) {
            if &buf[..n] == b"end" {
                break;
            }
            got.push(buf[..n].to_vec());
        }
        got
    });
    ready_rx.recv().unwrap();

    let _back = enter_netns(&host.name).unwrap();
    let mut umem = Umem::new(UmemConfig {
        frame_count: FRAMES,
        frame_size: FRAME_SIZE,
    })
    .unwrap();
    let mut free = FreeList::full(FRAMES as usize, FRAME_SIZE as usize);

    // The TX-only port registers the UMEM (it is the first of its segment).
    let mut tx = XdpPort::open(&umem, "ta", &tx_only(), None).unwrap();
    assert!(!tx.receives());
    assert!(!has_xdp(&host, "ta"), "a TX-only port attaches no program");
    tx.fill(&mut umem, &mut free);
    assert_eq!(tx.frames_held().fill, 0, "a TX-only port posts no frame");
    assert_eq!(tx.frames_held().total(), 0);
    assert!(!tx.fill_short());
    assert_eq!(free.len(), FRAMES as usize);
    assert!(tso_on(&ctr, "tb"), "TX-only port on ta: tb keeps TSO");

    // A receiving port shares the UMEM through the TX-only one; its peer loses TSO.
    let mut rx = XdpPort::open(&umem, "na", &XdpPortConfig::default(), Some(&tx)).unwrap();
    assert!(rx.receives());
    assert!(has_xdp(&host, "na"));
    assert!(!tso_on(&ctr, "nb"), "native XDP on na clears nb's TSO");
    assert!(tso_on(&ctr, "tb"), "…and leaves tb's alone");
    rx.fill(&mut umem, &mut free);
    assert_eq!(rx.frames_held().fill, 64);

    // Frames transmitted through the TX-only port arrive in the container.
    const N: usize = 200;
    let mut batch = DescBatch::default();
    let mut sent = 0;
    let mut payloads = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent < N || tx.has_pending_tx() {
        assert!(
            Instant::now() < deadline,
            "TX did not complete: {:?}",
            tx.counters()
        );
        while sent < N && batch.spare() > 0 {
            let payload = format!("bridgewall tx-only #{sent}").into_bytes();
            let f = udp_frame(
                tb_mac,
                ta_mac,
                [10, 77, 0, 1],
                [10, 77, 0, 2],
                7100,
                &payload,
            );
            batch.push(stage(&mut umem, &mut free, &f)).unwrap();
            payloads.push(payload);
            sent += 1;
        }
        tx.transmit(&mut umem, &mut batch);
        std::thread::sleep(Duration::from_millis(1));
        tx.complete(&mut free);
    }
    let end = udp_frame(tb_mac, ta_mac, [10, 77, 0, 1], [10, 77, 0, 2], 7100, b"end");
    batch.push(stage(&mut umem, &mut free, &end)).unwrap();
    tx.transmit(&mut umem, &mut batch);
    let got = receiver.join().unwrap();
    while tx.has_pending_tx() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
        tx.complete(&mut free);
    }
    let c = tx.counters();
    assert_eq!(c.tx_frames, N as u64 + 1);
    assert_eq!(c.tx_completed, N as u64 + 1);
    assert_eq!(c.tx_rejected, 0);
    assert_eq!(tx.statistics().unwrap().tx_invalid_descs, 0);
    assert_eq!(
        got.len(),
        N,
        "every datagram arrived (veth: no loss expected)"
    );
    assert_eq!(got, payloads, "in order and intact");
    assert_eq!(tx.frames_held().total(), 0);

    // Traffic arriving on ta goes to the host's stack, never to the TX-only port; traffic
    // arriving on na reaches the receiving port through the shared UMEM.
    let burst = |dst: &'static str| {
        ctr.spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..20 {
                s.send_to(b"towards the host", (dst, 9)).unwrap();
            }
        })
        .join()
        .unwrap();
    };
    burst("10.77.0.1");
    burst("10.77.1.1");
    let mut out = DescBatch::default();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while received < 20 && Instant::now() < deadline {
        rx.fill(&mut umem, &mut free);
        rx.receive(&mut umem, &mut out);
        received += out.len();
        for d in out.as_slice() {
            free.push(d.addr);
        }
        out.clear();
        tx.receive(&mut umem, &mut out);
        assert!(out.is_empty(), "a TX-only port received a frame");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        received, 20,
        "the receiving port shares the UMEM and receives"
    );
    assert_eq!(tx.counters().rx_frames, 0);
    assert_eq!(tx.frames_held().fill, 0);

    // Every frame comes back on close.
    let mut back = rx.close();
    back.extend(tx.close());
    for a in back {
        free.push(a);
    }
    assert_eq!(free.len(), FRAMES as usize);
    assert!(
        tso_on(&ctr, "nb"),
        "closing the receiving port gives TSO back"
    );
}

/// What the kernel accepts for the rings of a TX-only socket: no RX ring at all, a fill
/// ring of one entry (it wants one per socket with its own UMEM binding). Zero-sized rings
/// are refused before reaching the kernel.
#[test]
fn root_netns_afxdp_tx_only_socket_rings() {
    let host = Netns::new("txr");
    let ctr = Netns::new("txs");
    veth(&host, "ra", &ctr, "rb");
    let _back = enter_netns(&host.name).unwrap();
    let umem = Umem::new(UmemConfig {
        frame_count: 256,
        frame_size: FRAME_SIZE,
    })
    .unwrap();
    let ifindex = if_index("ra").unwrap();
    let sizes = RingSizes::default().tx_only();
    assert_eq!((sizes.fill, sizes.rx), (1, 0));
    let sock = XskSocket::bind(&umem, "ra", ifindex, 0, sizes, None, BindRetry::default()).unwrap();
    assert!(!sock.has_rx_ring());
    drop(sock);
    for bad in [
        RingSizes {
            fill: 0,
            ..RingSizes::default()
        },
        RingSizes {
            rx: 3,
            ..RingSizes::default()
        },
    ] {
        let err = XskSocket::bind(&umem, "ra", ifindex, 0, bad, None, BindRetry::default())
            .err()
            .expect("refused");
        assert!(matches!(err, AfXdpError::Config(_)), "{err}");
    }
}
