//! End-to-end forwarding benchmark: UDP from namespace A to namespace B through a middle
//! namespace M, by each forwarding [`Path`] in turn (alternating, several rounds), at each
//! [`Workload`] size. Measures the rate B's interface receives and the CPU the whole machine
//! spends per packet (softirq included, from /proc/stat), prints a table and writes JSON.
//!
//! Runs as root; builds (and removes) its own namespaces. Settings by environment:
//! `BW_E2E_SECS` (seconds per run, default 3), `BW_E2E_ROUNDS` (default 3),
//! `BW_E2E_OUT` (JSON path, default `$CARGO_TARGET_DIR/e2e/results.json` or
//! `target/e2e/results.json`).
//!
//! Paths: the kernel bridge (baseline), the raw AF_XDP forwarder (the socket layer alone) and
//! bridgewall (the engine and the compiled policy on the same ports). Grows by adding a
//! `Path` (a bridge with iptables rule sets) or a `Workload` (TCP, latency) — the loop,
//! sampling and output stay.
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dataplane::afxdp::{PollConfig, Umem, UmemConfig, XdpPort, XdpPortConfig, enter_netns};
use dataplane::engine::PortConfig;
use dataplane::policy::{Action, ConstPolicy, Policy};
use dataplane::sim::forwarder::{Forwarder, ForwarderOptions};
use dataplane::sim::netns::Trio;
use dataplane::wasm::{PolicyChain, WasmConfig, WasmRuntime};
use dataplane::worker::{Dataplane, DataplaneConfig};
use rules_wasm::compiler::compile;
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, HostNetworks, docker_ruleset};
use serde_json::json;

use support::{FORWARDER_CPU, SENDER_CPU, Sender, cpu_sample, ipv4, mac_of, rx_packets, udp_frame};

/// A way of carrying frames from M's `pa` to M's `pb`.
trait Path {
    /// Short name for tables and JSON.
    fn name(&self) -> &'static str;
    /// What exactly is measured.
    fn description(&self) -> &'static str;
    /// The namespaces this path forwards between.
    fn trio(&self) -> &Trio;
    /// Path-specific numbers for the last run (e.g. frames the forwarder saw).
    fn run_stats(&mut self) -> serde_json::Value {
        json!({})
    }
}

/// The kernel's bridge in M, `bridge-nf-call-iptables` off: the baseline.
struct LinuxBridge {
    trio: Trio,
}

impl LinuxBridge {
    fn new() -> Result<Self> {
        let trio = Trio::new();
        trio.m.ip(&["link", "add", "br0", "type", "bridge"]);
        trio.m.ip(&["link", "set", "pa", "master", "br0"]);
        trio.m.ip(&["link", "set", "pb", "master", "br0"]);
        trio.m.ip(&["link", "set", "br0", "up"]);
        // br_netfilter's knobs are per namespace here; absent when it is not loaded.
        let _ = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &trio.m.name,
                "sysctl",
                "-qw",
                "net.bridge.bridge-nf-call-iptables=0",
            ])
            .output();
        Ok(Self { trio })
    }
}

impl Path for LinuxBridge {
    fn name(&self) -> &'static str {
        "linux-bridge"
    }
    fn description(&self) -> &'static str {
        "kernel bridge in M, bridge-nf-call-iptables=0"
    }
    fn trio(&self) -> &Trio {
        &self.trio
    }
}

/// bridgewall's AF_XDP ports as a raw port-to-port forwarder: shared UMEM, descriptors
/// handed over without a copy, TCP/UDP checksum completion, no switch/flow/policy engine.
struct AfXdpRaw {
    fwd: Option<Forwarder>,
    last: u64,
    trio: Trio,
}

impl AfXdpRaw {
    fn new() -> Result<Self> {
        let trio = Trio::new();
        let opts = ForwarderOptions {
            cpu: Some(FORWARDER_CPU),
            umem: UmemConfig {
                frame_count: 16 * 1024,
                frame_size: 2048,
            },
            poll: PollConfig::default(),
            ..ForwarderOptions::default()
        };
        let fwd = Forwarder::start(&trio.m.name, "pa", "pb", opts).map_err(anyhow::Error::msg)?;
        Ok(Self {
            fwd: Some(fwd),
            last: 0,
            trio,
        })
    }
}

impl Path for AfXdpRaw {
    fn name(&self) -> &'static str {
        "afxdp-raw"
    }
    fn description(&self) -> &'static str {
        "raw AF_XDP forwarder (native XDP, copy mode, shared UMEM, no engine/policy yet)"
    }
    fn trio(&self) -> &Trio {
        &self.trio
    }
    fn run_stats(&mut self) -> serde_json::Value {
        let now = self.fwd.as_ref().map_or(0, |f| f.forwarded());
        let d = now - self.last;
        self.last = now;
        json!({ "forwarder_frames": d })
    }
}

impl Drop for AfXdpRaw {
    fn drop(&mut self) {
        if let Some(mut f) = self.fwd.take()
            && let Some(r) = f.stop_and_report()
        {
            eprintln!(
                "afxdp-raw forwarder: {} frames, {} dropped (tx full), accounting violations {}, free {} + held {} of {}",
                r.forwarded,
                r.dropped_tx_full,
                r.accounting_violations,
                r.free,
                r.held.iter().map(|h| h.total()).sum::<usize>(),
                r.total_frames
            );
        }
    }
}

/// bridgewall's dataplane proper: the same AF_XDP ports, owned by a worker thread that runs
/// the engine (parse, L2 switch by the containers' MACs, flow table, TCP/UDP checksum
/// completion) with the compiled Docker policy (icc=true, A and B as two containers) in
/// wasmtime deciding new flows.
struct AfXdpEngine {
    dp: Option<Dataplane<Umem, XdpPort>>,
    last: u64,
    trio: Trio,
}

const PORT_A: u16 = 1;
const PORT_B: u16 = 2;

impl AfXdpEngine {
    fn new() -> Result<Self> {
        let trio = Trio::new();
        let (mac_a, mac_b) = (mac_of(&trio.a, "va")?, mac_of(&trio.b, "vb")?);
        let (ip_a, ip_b) = (
            std::net::IpAddr::from(ipv4(&trio.ip_a)?),
            std::net::IpAddr::from(ipv4(&trio.ip_b)?),
        );
        let container = |name: &str, port, ip, mac| ContainerInfo {
            name: name.into(),
            port,
            ips: vec![ip],
            mac,
            ..ContainerInfo::default()
        };
        let net = BridgeNetwork {
            icc: true,
            gateway_port: 0,
            gateway_ips: Vec::new(),
            containers: vec![
                container("a", PORT_A, ip_a, mac_a),
                container("b", PORT_B, ip_b, mac_b),
            ],
            ..BridgeNetwork::default()
        };
        let compiled = compile(&docker_ruleset(&HostNetworks::from(net), Vec::new(), 1))?;
        let wasm = WasmRuntime::new(WasmConfig::default())?;
        let module = wasm.load(&compiled.wasm, "docker-policy")?;
        let mut chains = vec![PolicyChain::instantiate(1, std::slice::from_ref(&module))?];

        // AF_XDP sockets and XDP links belong to the namespace of the thread creating them.
        let back = enter_netns(&trio.m.name)?;
        let umem = Umem::new(UmemConfig {
            frame_count: 16 * 1024,
            frame_size: 2048,
        })?;
        let xdp = XdpPortConfig::default();
        let pa = XdpPort::open(&umem, "pa", &xdp, None)?;
        let pb = {
            let share = pa.umem_share()?;
            XdpPort::open_shared(&umem, "pb", &xdp, &share)?
        };
        drop(back);

        let config = DataplaneConfig {
            workers: 1,
            cpus: vec![FORWARDER_CPU],
            poll: PollConfig::default(),
            ..DataplaneConfig::default()
        };
        let mut dp = Dataplane::start(config, umem, |_| match chains.pop() {
            Some(c) => Box::new(c) as Box<dyn Policy>,
            None => Box::new(ConstPolicy {
                action: Action::Drop,
                generation: 0,
            }),
        })?;
        let port = |id, mac, ip| PortConfig {
            id,
            network: 0,
            macs: vec![mac],
            ips: vec![ip],
            is_gateway: false,
            complete_checksums: true,
        };
        dp.add_port(port(PORT_A, mac_a, ip_a), pa, 0)?;
        dp.add_port(port(PORT_B, mac_b, ip_b), pb, 0)?;
        Ok(Self {
            dp: Some(dp),
            last: 0,
            trio,
        })
    }

    fn forwarded(&self) -> u64 {
        self.dp.as_ref().map_or(0, |dp| {
            dp.counters()
                .iter()
                .map(|c| c.snapshot().port(PORT_B).tx_packets)
                .sum()
        })
    }
}

impl Path for AfXdpEngine {
    fn name(&self) -> &'static str {
        "bridgewall"
    }
    fn description(&self) -> &'static str {
        "AF_XDP ports + worker running the engine (switch, flow table, checksums) + compiled Docker policy in wasmtime"
    }
    fn trio(&self) -> &Trio {
        &self.trio
    }
    fn run_stats(&mut self) -> serde_json::Value {
        let now = self.forwarded();
        let d = now - self.last;
        self.last = now;
        json!({ "engine_tx_frames": d })
    }
}

impl Drop for AfXdpEngine {
    fn drop(&mut self) {
        let forwarded = self.forwarded();
        if let Some(dp) = self.dp.take() {
            let drops: u64 = dp
                .counters()
                .iter()
                .map(|c| c.snapshot().total_drops())
                .sum();
            if let Ok(f) = dp.frames() {
                eprintln!(
                    "bridgewall engine: {forwarded} frames forwarded, {drops} dropped; frames accounted {} (free {}, in ports {})",
                    f.total(),
                    f.workers.iter().map(|w| w.free).sum::<usize>() + f.spare,
                    f.workers.iter().map(|w| w.ports.total()).sum::<usize>()
                );
            }
            drop(dp.stop());
        }
    }
}

/// A traffic shape.
#[derive(Clone, Copy)]
struct Workload {
    /// Label ("64", "1500").
    name: &'static str,
    /// Ethernet frame length without FCS.
    frame_len: usize,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "udp-64",
        frame_len: 60,
    },
    Workload {
        name: "udp-1500",
        frame_len: 1514,
    },
];

/// UDP checksum errors counted in `ns`.
fn udp_csum_errors(ns: &dataplane::sim::netns::Netns) -> Result<u64> {
    let snmp = ns.exec(&["cat", "/proc/net/snmp"]);
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let names: Vec<&str> = lines
        .first()
        .context("no Udp line")?
        .split_whitespace()
        .collect();
    let values: Vec<&str> = lines
        .get(1)
        .context("no Udp values")?
        .split_whitespace()
        .collect();
    let i = names
        .iter()
        .position(|n| *n == "InCsumErrors")
        .context("no InCsumErrors")?;
    Ok(values[i].parse()?)
}

struct RunResult {
    path: &'static str,
    workload: &'static str,
    round: u32,
    pps: f64,
    offered_pps: f64,
    cpu_ns_per_pkt: f64,
    softirq_ns_per_pkt: f64,
    cpu_cores: f64,
    process_ns_per_pkt: f64,
    /// Cores busy outside this process (other work on the machine, ksoftirqd): the noise.
    other_cores: f64,
    csum_errors: u64,
    extra: serde_json::Value,
}

fn run_once(path: &mut dyn Path, w: Workload, round: u32, secs: f64) -> Result<RunResult> {
    let trio = path.trio();
    let frame = udp_frame(
        w.frame_len,
        mac_of(&trio.a, "va")?,
        mac_of(&trio.b, "vb")?,
        ipv4(&trio.ip_a)?,
        ipv4(&trio.ip_b)?,
    );
    let csum0 = udp_csum_errors(&trio.b)?;
    let mut sender = Sender::start(&trio.a.name, "va", frame)?;
    std::thread::sleep(Duration::from_millis(500)); // warm-up
    let (rx0, tx0, cpu0, t0) = (
        rx_packets(&trio.b, "vb")?,
        sender.sent(),
        cpu_sample()?,
        Instant::now(),
    );
    let _ = path.run_stats();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (rx1, tx1, cpu1, dt) = (
        rx_packets(&path.trio().b, "vb")?,
        sender.sent(),
        cpu_sample()?,
        t0.elapsed(),
    );
    let extra = path.run_stats();
    sender.stop()?;
    let trio = path.trio();
    let pkts = (rx1 - rx0) as f64;
    let dt = dt.as_secs_f64();
    let jiffy_ns = 1e9 / 100.0;
    Ok(RunResult {
        path: path.name(),
        workload: w.name,
        round,
        pps: pkts / dt,
        offered_pps: (tx1 - tx0) as f64 / dt,
        cpu_ns_per_pkt: (cpu1.busy - cpu0.busy) as f64 * jiffy_ns / pkts.max(1.0),
        softirq_ns_per_pkt: (cpu1.softirq - cpu0.softirq) as f64 * jiffy_ns / pkts.max(1.0),
        cpu_cores: (cpu1.busy - cpu0.busy) as f64 * jiffy_ns / 1e9 / dt,
        process_ns_per_pkt: (cpu1.process - cpu0.process) as f64 * jiffy_ns / pkts.max(1.0),
        other_cores: (cpu1.busy - cpu0.busy).saturating_sub(cpu1.process - cpu0.process) as f64
            * jiffy_ns
            / 1e9
            / dt,
        csum_errors: udp_csum_errors(&trio.b)? - csum0,
        extra,
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    if std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(1) != Some("0"))
    {
        eprintln!(
            "e2e: needs root (it builds network namespaces and attaches XDP programs); not run"
        );
        return Ok(());
    }
    let secs: f64 = env_num("BW_E2E_SECS", 3.0);
    let rounds: u32 = env_num("BW_E2E_ROUNDS", 3);
    let out_path = std::env::var("BW_E2E_OUT").unwrap_or_else(|_| {
        let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
        format!("{target}/e2e/results.json")
    });

    let mut paths: Vec<Box<dyn Path>> = vec![
        Box::new(LinuxBridge::new()?),
        Box::new(AfXdpRaw::new()?),
        Box::new(AfXdpEngine::new()?),
    ];
    let mut results = Vec::new();
    for round in 0..rounds {
        for w in WORKLOADS {
            for path in paths.iter_mut() {
                let r = run_once(path.as_mut(), w, round, secs)
                    .with_context(|| format!("{} {} round {round}", path.name(), w.name))?;
                eprintln!(
                    "round {round} {:>9} {:<13} {:>9.0} pps (offered {:>9.0}), {:>6.0} ns CPU/pkt, {:>6.0} ns softirq/pkt, {:.2} cores ({:.2} outside this process)",
                    r.workload,
                    r.path,
                    r.pps,
                    r.offered_pps,
                    r.cpu_ns_per_pkt,
                    r.softirq_ns_per_pkt,
                    r.cpu_cores,
                    r.other_cores
                );
                results.push(r);
            }
        }
    }

    let mut summary = Vec::new();
    println!();
    println!(
        "End-to-end UDP A → M → B, {rounds} rounds × {secs} s, alternating paths (medians; min–max in brackets)"
    );
    println!(
        "{:<10} {:<13} {:>22} {:>22} {:>14} {:>7} {:>12} {:>7}",
        "workload",
        "path",
        "rate (kpps)",
        "CPU/pkt (ns)",
        "softirq/pkt",
        "cores",
        "proc ns/pkt",
        "other"
    );
    for w in WORKLOADS {
        for path in &paths {
            let rs: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.path == path.name() && r.workload == w.name)
                .collect();
            let col = |f: &dyn Fn(&RunResult) -> f64| -> (f64, f64, f64) {
                let mut v: Vec<f64> = rs.iter().map(|r| f(r)).collect();
                let med = median(&mut v);
                (
                    med,
                    v.first().copied().unwrap_or(f64::NAN),
                    v.last().copied().unwrap_or(f64::NAN),
                )
            };
            let pps = col(&|r| r.pps);
            let cpu = col(&|r| r.cpu_ns_per_pkt);
            let sirq = col(&|r| r.softirq_ns_per_pkt);
            let cores = col(&|r| r.cpu_cores);
            let proc_cpu = col(&|r| r.process_ns_per_pkt);
            let other = col(&|r| r.other_cores);
            println!(
                "{:<10} {:<13} {:>8.0} [{:>5.0}–{:>5.0}] {:>8.0} [{:>5.0}–{:>5.0}] {:>14.0} {:>7.2} {:>12.0} {:>7.2}",
                w.name,
                path.name(),
                pps.0 / 1e3,
                pps.1 / 1e3,
                pps.2 / 1e3,
                cpu.0,
                cpu.1,
                cpu.2,
                sirq.0,
                cores.0,
                proc_cpu.0,
                other.0
            );
            summary.push(json!({
                "workload": w.name, "path": path.name(),
                "pps_median": pps.0, "pps_min": pps.1, "pps_max": pps.2,
                "cpu_ns_per_pkt_median": cpu.0, "cpu_ns_per_pkt_min": cpu.1, "cpu_ns_per_pkt_max": cpu.2,
                "softirq_ns_per_pkt_median": sirq.0, "cores_median": cores.0,
                "process_ns_per_pkt_median": proc_cpu.0, "process_ns_per_pkt_min": proc_cpu.1,
                "process_ns_per_pkt_max": proc_cpu.2, "other_cores_median": other.0,
            }));
        }
    }
    println!("paths:");
    for p in &paths {
        println!("  {:<13} {}", p.name(), p.description());
    }
    println!(
        "sender: AF_XDP copy-mode TX blaster in A pinned to CPU {SENDER_CPU}; forwarder pinned to CPU {FORWARDER_CPU}"
    );
    println!(
        "rate = frames received on B's veth; CPU = whole machine (/proc/stat, softirq included) / frames;"
    );
    println!(
        "proc = this process's threads (incl. softirq run in their context); other = cores busy outside it (noise)"
    );

    let doc = json!({
        "benchmark": "e2e-udp",
        "seconds_per_run": secs,
        "rounds": rounds,
        "paths": paths.iter().map(|p| json!({"name": p.name(), "description": p.description()})).collect::<Vec<_>>(),
        "sender": "AF_XDP copy-mode TX blaster in namespace A",
        "summary": summary,
        "runs": results.iter().map(|r| json!({
            "path": r.path, "workload": r.workload, "round": r.round, "pps": r.pps, "offered_pps": r.offered_pps,
            "cpu_ns_per_pkt": r.cpu_ns_per_pkt, "softirq_ns_per_pkt": r.softirq_ns_per_pkt,
            "cpu_cores": r.cpu_cores, "process_ns_per_pkt": r.process_ns_per_pkt,
            "other_cores": r.other_cores, "udp_csum_errors": r.csum_errors, "extra": r.extra,
        })).collect::<Vec<_>>(),
    });
    if let Some(dir) = std::path::Path::new(&out_path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out_path, serde_json::to_string_pretty(&doc)?)?;
    println!("JSON written to {out_path}");
    drop(paths);
    Ok(())
}
