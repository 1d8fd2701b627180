//! What the end-to-end benchmarks share: frame building, an AF_XDP TX blaster as the
//! traffic generator, CPU and interface counters. Each bench file includes it with
//! `mod support;` (the namespace tooling and the raw forwarder come from `dataplane::sim`).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use dataplane::afxdp::{Umem, UmemConfig, XdpPort, XdpPortConfig, enter_netns, pin_current_thread};
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, Port};

/// CPU the sender is pinned to; forwarders run on the other one.
pub const SENDER_CPU: usize = 0;
/// CPU the forwarder (dataplane worker) is pinned to.
pub const FORWARDER_CPU: usize = 1;

/// Builds an Ethernet/IPv4/UDP frame of `len` bytes with valid checksums.
pub fn udp_frame(
    len: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
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
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&40000u16.to_be_bytes());
    f[36..38].copy_from_slice(&9999u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f[40..42].copy_from_slice(&[0x12, 0x34]); // non-zero: completed by the checksum helper below
    let parsed = dataplane::wire::parse(&f).expect("a valid UDP frame");
    dataplane::wire::complete_l4_checksum(&mut f, &parsed);
    f
}

pub fn mac_of(ns: &dataplane::sim::netns::Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-o", "link", "show", ifname]);
    let addr = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .with_context(|| format!("no MAC in {out}"))?;
    let mut mac = [0u8; 6];
    for (m, part) in mac.iter_mut().zip(addr.split(':')) {
        *m = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

pub fn ipv4(s: &str) -> Result<[u8; 4]> {
    Ok(s.parse::<std::net::Ipv4Addr>()?.octets())
}

/// An AF_XDP TX blaster in A: the same prepared frame in every UMEM frame, transmitted as
/// fast as copy-mode TX takes them (cheaper per packet than a UDP socket, so the paths, not
/// the sender, are what saturates).
pub struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

impl Sender {
    pub fn start(ns: &str, ifname: &str, frame: Vec<u8>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, ns, ifname) =
            (stop.clone(), sent.clone(), ns.to_owned(), ifname.to_owned());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let handle = std::thread::spawn(move || -> Result<()> {
            let setup = || -> Result<_> {
                let back = enter_netns(&ns)?;
                pin_current_thread(SENDER_CPU)?;
                let mut umem = Umem::new(UmemConfig {
                    frame_count: 4096,
                    frame_size: 2048,
                })?;
                let port = XdpPort::open(&umem, &ifname, &XdpPortConfig::default(), None)?;
                for i in 0..umem.frame_count() {
                    umem.bytes_mut((i * 2048) as u64, frame.len())
                        .copy_from_slice(&frame);
                }
                Ok((back, umem, port))
            };
            let (_back, mut umem, mut port) = match setup() {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    return Err(e);
                }
            };
            let mut free = FreeList::full(umem.frame_count(), umem.frame_size());
            let mut batch = DescBatch::default();
            let len = frame.len() as u32;
            while !stop2.load(Ordering::Relaxed) {
                port.complete(&mut free);
                while batch.spare() > 0 {
                    let Some(addr) = free.pop() else { break };
                    let _ = batch.push(FrameDesc { addr, len });
                }
                port.transmit(&mut umem, &mut batch);
                sent2.store(port.counters().tx_completed, Ordering::Relaxed);
            }
            Ok(())
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Self {
                stop,
                sent,
                handle: Some(handle),
            }),
            Ok(Err(e)) => bail!("sender setup: {e}"),
            Err(_) => bail!("sender thread died"),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn stop(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("sender thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// CPU time in jiffies (USER_HZ = 100): machine-wide from /proc/stat, and this process's
/// (sender + forwarder threads; on this kernel, without IRQ_TIME_ACCOUNTING, softirq work
/// done in their context is charged to them too).
#[derive(Clone, Copy, Default)]
pub struct CpuSample {
    pub busy: u64,
    pub softirq: u64,
    pub process: u64,
}

pub fn cpu_sample() -> Result<CpuSample> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v.get(7).copied().unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = own.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after_comm
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let process = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Ok(CpuSample {
        busy,
        softirq: v[6],
        process,
    })
}

/// RX packets of `ifname` in namespace `ns` (from its /proc/net/dev).
pub fn rx_packets(ns: &dataplane::sim::netns::Netns, ifname: &str) -> Result<u64> {
    let dev = ns.exec(&["cat", "/proc/net/dev"]);
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{ifname}:")))
        .with_context(|| format!("{ifname} not in /proc/net/dev"))?;
    let fields: Vec<&str> = line
        .split(':')
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    Ok(fields.get(1).context("short /proc/net/dev line")?.parse()?)
}
