//! Ports benchmark (issue 15): one busy pair of ports with 0, 8, 98 and 998 idle ports
//! attached beside it (1, 10, 100 and 1,000 container ports in all), through the product's
//! path — UMEM segments of 16 ports, per-port fill shares, the epoll-driven worker. For each
//! count: the busy pair's forwarding rate and the machine's CPU per packet, the worker's
//! CPU while everything is idle, and memory per port (process RSS, UMEM, and the kernel's
//! unreclaimable slab, where each AF_XDP socket's buffer pool lives).
//!
//! Runs as root; builds (and removes) its own namespaces. Settings by environment:
//! `BW_PORTS_COUNTS` (default `1,10,100,1000`), `BW_PORTS_SECS` (seconds per rate run,
//! default 3), `BW_PORTS_ROUNDS` (default 3).
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane::afxdp::{PollConfig, Umem, UmemConfig, UmemShare, XdpPort, XdpPortConfig};
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::phy::SegmentId;
use dataplane::policy::{Action, ConstPolicy};
use dataplane::sim::netns::Trio;
use dataplane::worker::{Dataplane, DataplaneConfig};
use support::{FORWARDER_CPU, Sender, cpu_sample, ipv4, mac_of, rx_packets, udp_frame};

const PORTS_PER_SEGMENT: usize = 16;
const SEGMENT_FRAMES: u32 = 16 * 64 + 1024;

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn status_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// One measurement at one port count.
#[derive(Default, Debug)]
struct Sample {
    kpps: f64,
    cpu_ns_per_pkt: f64,
    idle_cpu_pct: f64,
    rss_kb_per_port: f64,
    slab_kb_per_port: f64,
    umem_kb_per_port: f64,
}

fn run_count(ports: usize, secs: u64) -> Result<Sample> {
    let trio = Trio::new();
    // Idle container ports: veth pairs whose far end is up in M itself.
    let idle = ports.saturating_sub(2);
    if idle > 0 {
        let mut batch = String::new();
        for i in 0..idle {
            batch.push_str(&format!(
                "link add i{i} type veth peer name j{i}\nlink set i{i} up\nlink set j{i} up\n"
            ));
        }
        let path = std::env::temp_dir().join(format!("bw-ports-{}.batch", std::process::id()));
        std::fs::write(&path, batch)?;
        dataplane::sim::netns::ip(&["-n", &trio.m.name, "-batch", &path.to_string_lossy()]);
        let _ = std::fs::remove_file(&path);
    }
    let (mac_a, mac_b) = (mac_of(&trio.a, "va")?, mac_of(&trio.b, "vb")?);
    let slab_before = meminfo_kb("SUnreclaim:");
    let rss_before = status_kb("VmRSS:");
    let umem = Umem::new(UmemConfig {
        frame_count: SEGMENT_FRAMES,
        frame_size: 2048,
    })?;
    let mut dp: Dataplane<Umem, XdpPort> = Dataplane::start(
        DataplaneConfig {
            workers: 1,
            engine: EngineConfig {
                max_ports: ports + 2,
                ..EngineConfig::default()
            },
            poll: PollConfig::default(),
            cpus: vec![FORWARDER_CPU],
            ..DataplaneConfig::default()
        },
        umem.clone(),
        |_| {
            Box::new(ConstPolicy {
                action: Action::Accept,
                generation: 1,
            })
        },
    )?;
    let names: Vec<String> = ["pa".to_string(), "pb".to_string()]
        .into_iter()
        .chain((0..idle).map(|i| format!("i{i}")))
        .collect();
    let xdp = XdpPortConfig::default();
    let mut shares: HashMap<SegmentId, UmemShare> = HashMap::new();
    let opened: Vec<XdpPort> = {
        let _back = dataplane::afxdp::enter_netns(&trio.m.name)?;
        let mut v = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let seg = (i / PORTS_PER_SEGMENT) as SegmentId;
            let port = match shares.get(&seg) {
                Some(share) => XdpPort::open_shared(&umem, name, &xdp, share)?,
                None => {
                    let seg = if seg == 0 {
                        0
                    } else {
                        let s = umem.add_segment(SEGMENT_FRAMES)?;
                        dp.add_segment(s, SEGMENT_FRAMES as usize)?;
                        s
                    };
                    let p = XdpPort::open_in_segment(&umem, seg, name, &xdp)?;
                    shares.insert(seg, p.umem_share()?);
                    p
                }
            };
            v.push(port);
        }
        v
    };
    for (i, port) in opened.into_iter().enumerate() {
        let macs = match i {
            0 => vec![mac_a],
            1 => vec![mac_b],
            _ => vec![[2, 0x42, 10, (i >> 16) as u8, (i >> 8) as u8, i as u8]],
        };
        let cfg = PortConfig {
            id: i as u16,
            network: 0,
            macs,
            ips: Vec::new(),
            is_gateway: false,
            complete_checksums: true,
        };
        dp.add_port(cfg, port, 0)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let segments = shares.len().max(1);
    let per = |kb: u64| kb as f64 / ports as f64;
    let mut s = Sample {
        rss_kb_per_port: per(status_kb("VmRSS:").saturating_sub(rss_before)),
        slab_kb_per_port: per(meminfo_kb("SUnreclaim:").saturating_sub(slab_before)),
        umem_kb_per_port: per(segments as u64 * u64::from(SEGMENT_FRAMES) * 2),
        ..Sample::default()
    };
    // Idle: every port attached, nothing moving.
    let c0 = cpu_sample()?;
    std::thread::sleep(Duration::from_secs(4));
    let c1 = cpu_sample()?;
    s.idle_cpu_pct = (c1.process - c0.process) as f64 / 4.0; // jiffies/s at USER_HZ 100 = %
    // Busy pair: A → B, 64-byte UDP.
    let frame = udp_frame(60, mac_a, mac_b, ipv4(&trio.ip_a)?, ipv4(&trio.ip_b)?);
    let mut sender = Sender::start(&trio.a.name, "va", frame)?;
    std::thread::sleep(Duration::from_millis(300));
    let (r0, c0, t0) = (rx_packets(&trio.b, "vb")?, cpu_sample()?, Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (r1, c1, t1) = (rx_packets(&trio.b, "vb")?, cpu_sample()?, Instant::now());
    sender.stop()?;
    let got = r1.saturating_sub(r0);
    s.kpps = got as f64 / (t1 - t0).as_secs_f64() / 1e3;
    // jiffies are 10 ms.
    s.cpu_ns_per_pkt = (c1.busy - c0.busy) as f64 * 1e7 / got.max(1) as f64;
    let account = dp.frames().context("frame account")?;
    anyhow::ensure!(account.balanced(), "frames lost: {account:?}");
    drop(dp.stop());
    drop(shares);
    Ok(s)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return Ok(());
    }
    let counts: Vec<usize> = std::env::var("BW_PORTS_COUNTS")
        .unwrap_or_else(|_| "1,10,100,1000".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let secs = env_or("BW_PORTS_SECS", 3u64);
    let rounds = env_or("BW_PORTS_ROUNDS", 3usize);
    let mut results: Vec<(usize, Vec<Sample>)> = counts.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..rounds {
        for (count, samples) in &mut results {
            let s = run_count((*count).max(2), secs)
                .with_context(|| format!("{count} ports, round {round}"))?;
            eprintln!("round {round}, {count} ports: {s:?}");
            samples.push(s);
        }
    }
    println!(
        "| ports | kpps (median, min–max) | CPU ns/pkt | idle CPU % of a core | RSS KiB/port | kernel slab KiB/port | UMEM KiB/port |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (count, samples) in &results {
        let col = |f: fn(&Sample) -> f64| -> (f64, f64, f64) {
            let mut v: Vec<f64> = samples.iter().map(f).collect();
            let m = median(&mut v);
            (m, v[0], v[v.len() - 1])
        };
        let k = col(|s| s.kpps);
        let c = col(|s| s.cpu_ns_per_pkt);
        let i = col(|s| s.idle_cpu_pct);
        let r = col(|s| s.rss_kb_per_port);
        let sl = col(|s| s.slab_kb_per_port);
        let u = col(|s| s.umem_kb_per_port);
        println!(
            "| {} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2} ({:.2}–{:.2}) | {:.0} | {:.0} | {:.0} |",
            (*count).max(2),
            k.0,
            k.1,
            k.2,
            c.0,
            c.1,
            c.2,
            i.0,
            i.1,
            i.2,
            r.0,
            sl.0,
            u.0
        );
    }
    Ok(())
}
