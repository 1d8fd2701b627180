//! The traffic generator: an AF_XDP copy-mode TX blaster in the client container, pinned to
//! CPU 0. Every UMEM frame holds a prepared Ethernet/IPv4/UDP frame; before a frame is
//! (re)sent its source and destination ports are set to the next flow's and its UDP
//! checksum is updated incrementally (RFC 1624), so N flows cost two stores and a few adds
//! per packet. Copy-mode AF_XDP TX hands frames to the veth without a socket, qdisc or
//! routing lookup: far cheaper than a UDP socket (see [`crate::bench::measure::rate`] for how the
//! harness checks that the generator is not the bottleneck).
//!
//! Flow `i` uses source port `1024 + i % 64512` and destination port
//! `FLOOD_PORT + i / 64512`, so up to 129,024 distinct flows from one address (the link
//! opens both destination ports).
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane::afxdp::{Umem, UmemConfig, XdpPort, XdpPortConfig, enter_netns, pin_current_thread};
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, Port};
use std::net::Ipv4Addr;

use crate::bench::error::{BenchError, Result};
use crate::bench::scenario::{FIRST_SPORT, FLOOD_PORT, SPORTS};

/// CPU the generator is pinned to (the dataplane's worker takes the other one).
pub const GENERATOR_CPU: usize = 0;
/// CPU bridgewall's worker is pinned to.
pub const WORKER_CPU: usize = 1;

const FRAME_SIZE: usize = 2048;
const FRAMES: u32 = 4096;

/// What to send.
#[derive(Clone, Debug)]
pub struct Traffic {
    /// Namespace to send from.
    pub netns: String,
    /// Interface to send on.
    pub ifname: String,
    /// Source MAC and address.
    pub src: ([u8; 6], Ipv4Addr),
    /// Destination MAC and address.
    pub dst: ([u8; 6], Ipv4Addr),
    /// Ethernet frame length without FCS (60 for "64-byte" frames, 1514 for "1500").
    pub frame_len: usize,
    /// Distinct flows, cycled through.
    pub flows: usize,
    /// Packets per second to pace at; `None` sends as fast as TX takes them.
    pub rate: Option<f64>,
}

/// Ones' complement sum of 16-bit big-endian words.
fn sum16(data: &[u8]) -> u32 {
    let mut s: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += u32::from(w);
    }
    s
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// An Ethernet/IPv4/UDP frame of `len` bytes (≥ 60) with valid IP and UDP checksums.
pub fn udp_frame(len: usize, src: ([u8; 6], Ipv4Addr), dst: ([u8; 6], Ipv4Addr)) -> Vec<u8> {
    let len = len.max(60);
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    {
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.1.octets());
        ip[16..20].copy_from_slice(&dst.1.octets());
        let c = !fold(sum16(ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let udp_len = ip_len - 20;
    f[34..36].copy_from_slice(&FIRST_SPORT.to_be_bytes());
    f[36..38].copy_from_slice(&FLOOD_PORT.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut s = sum16(&f[26..34]) + 17 + u32::from(udp_len);
    s += sum16(&f[34..]);
    let mut c = !fold(s);
    if c == 0 {
        c = 0xffff;
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

/// Sets the UDP ports of `frame` (built by [`udp_frame`]) and updates its checksum
/// incrementally (RFC 1624: HC' = ~(~HC + ~m + m')).
pub fn set_ports(frame: &mut [u8], sport: u16, dport: u16) {
    let old_s = u16::from_be_bytes([frame[34], frame[35]]);
    let old_d = u16::from_be_bytes([frame[36], frame[37]]);
    let hc = u16::from_be_bytes([frame[40], frame[41]]);
    let s = u32::from(!hc)
        + u32::from(!old_s)
        + u32::from(sport)
        + u32::from(!old_d)
        + u32::from(dport);
    let mut c = !fold(s);
    if c == 0 {
        c = 0xffff;
    }
    frame[34..36].copy_from_slice(&sport.to_be_bytes());
    frame[36..38].copy_from_slice(&dport.to_be_bytes());
    frame[40..42].copy_from_slice(&c.to_be_bytes());
}

/// The ports of flow `i`.
pub fn flow_ports(i: usize) -> (u16, u16) {
    (
        FIRST_SPORT + (i % SPORTS) as u16,
        FLOOD_PORT + (i / SPORTS) as u16,
    )
}

/// A running generator; stops (and its port closes, detaching its program) on drop.
pub struct Generator {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread_cpu_ns: Arc<AtomicU64>,
    handle: Option<JoinHandle<Result<()>>>,
}

/// The calling thread's CPU time (user + system), in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10_000_000
}

impl Generator {
    /// Opens the AF_XDP port in `t.netns` and starts sending; returns once the port is open.
    pub fn start(t: Traffic) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let cpu = Arc::new(AtomicU64::new(0));
        let (stop2, sent2, cpu2) = (stop.clone(), sent.clone(), cpu.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let handle = std::thread::spawn(move || -> Result<()> {
            let setup = || -> std::result::Result<_, String> {
                let back = enter_netns(&t.netns).map_err(|e| e.to_string())?;
                // Best effort: a machine with one CPU still runs the benchmark, unpinned.
                let _ = pin_current_thread(GENERATOR_CPU);
                let mut umem = Umem::new(UmemConfig {
                    frame_count: FRAMES,
                    frame_size: FRAME_SIZE as u32,
                })
                .map_err(|e| e.to_string())?;
                let port = XdpPort::open(&umem, &t.ifname, &XdpPortConfig::default(), None)
                    .map_err(|e| e.to_string())?;
                let frame = udp_frame(t.frame_len, t.src, t.dst);
                for i in 0..umem.frame_count() {
                    umem.bytes_mut((i * FRAME_SIZE) as u64, frame.len())
                        .copy_from_slice(&frame);
                }
                Ok((back, umem, port, frame.len() as u32))
            };
            let (_back, mut umem, mut port, len) = match setup() {
                Ok(v) => {
                    let _ = ready_tx.send(Ok(()));
                    v
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(BenchError::Dataplane(e));
                }
            };
            let mut free = FreeList::full(umem.frame_count(), umem.frame_size());
            let mut batch = DescBatch::default();
            let flows = t.flows.max(1);
            let mut next_flow = 0usize;
            let mut queued = 0u64;
            let t0 = Instant::now();
            let cpu0 = thread_cpu_ns();
            let mut rounds = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                port.complete(&mut free);
                let mut budget = batch.spare();
                if let Some(rate) = t.rate {
                    let allowed = (t0.elapsed().as_secs_f64() * rate) as u64;
                    let room = allowed.saturating_sub(queued) as usize;
                    if room == 0 && batch.is_empty() {
                        std::thread::sleep(Duration::from_micros(50));
                        continue;
                    }
                    budget = budget.min(room);
                }
                for _ in 0..budget {
                    let Some(addr) = free.pop() else { break };
                    if flows > 1 {
                        let (s, d) = flow_ports(next_flow);
                        next_flow = (next_flow + 1) % flows;
                        set_ports(umem.bytes_mut(addr, len as usize), s, d);
                    }
                    if batch.push(FrameDesc { addr, len }).is_err() {
                        free.push(addr);
                        break;
                    }
                    queued += 1;
                }
                port.transmit(&mut umem, &mut batch);
                sent2.store(port.counters().tx_completed, Ordering::Relaxed);
                rounds += 1;
                if rounds.is_multiple_of(1024) {
                    cpu2.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
                }
            }
            // Let queued frames go out so the final count is exact.
            for _ in 0..200 {
                port.complete(&mut free);
                if !port.has_pending_tx() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            sent2.store(port.counters().tx_completed, Ordering::Relaxed);
            cpu2.store(thread_cpu_ns() - cpu0, Ordering::Relaxed);
            Ok(())
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Generator {
                stop,
                sent,
                thread_cpu_ns: cpu,
                handle: Some(handle),
            }),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(BenchError::Dataplane(format!("generator setup: {e}")))
            }
            Err(_) => Err(BenchError::Dataplane("generator thread died".into())),
        }
    }

    /// Frames the kernel has taken so far (TX completions).
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// CPU time of the generator's thread so far (updated every 1,024 rounds), ns.
    pub fn cpu_ns(&self) -> u64 {
        self.thread_cpu_ns.load(Ordering::Relaxed)
    }

    /// Stops sending, waits for the thread; the final count of frames sent.
    pub fn stop(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r.map(|()| self.sent()),
            Some(Err(_)) => Err(BenchError::Dataplane("generator thread panicked".into())),
            None => Ok(self.sent()),
        }
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_checksum_matches_a_full_recompute() {
        let src = ([2, 0, 0, 0, 0, 1], Ipv4Addr::new(172, 17, 0, 2));
        let dst = ([2, 0, 0, 0, 0, 2], Ipv4Addr::new(172, 17, 0, 3));
        for len in [60, 61, 1514] {
            let mut f = udp_frame(len, src, dst);
            for i in [0, 1, 2, 999, 64511, 64512, 100_000, 129_023] {
                let (s, d) = flow_ports(i);
                set_ports(&mut f, s, d);
                let mut g = f.clone();
                let parsed = dataplane::wire::parse(&g).expect("valid frame");
                dataplane::wire::complete_l4_checksum(&mut g, &parsed);
                assert_eq!(f[40..42], g[40..42], "len {len} flow {i}");
            }
        }
    }

    #[test]
    fn flows_are_distinct_up_to_129k() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..2 * SPORTS {
            assert!(seen.insert(flow_ports(i)));
        }
    }
}
