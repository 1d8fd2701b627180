//! The tiered datapath's numbers that `bridgewall bench` does not take, against every other
//! path built in the same run (`sudo cargo bench --bench tiered`): 64-byte UDP on established flows, the worker's CPU and the kernel
//! fast path's counters during an iperf3 run, and policy change → offloaded flow denied.
//! Rounds: `BWT_ROUNDS` (default 3); seconds per sample: `BWT_SECS` (default 2). Prints
//! every sample as a JSON line and medians [min–max]. No timing assertion.
use std::time::Duration;

use controller::bench::PathKind;
use controller::bench::paths::tiered::{Tiered, established_rate};
use controller::bench::paths::{self, Path};

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Per path and flow count: kpps, machine CPU ns/packet, process CPU ns/packet.
type Samples = (Vec<f64>, Vec<f64>, Vec<f64>);

/// "median [min–max]" of `v`.
fn summary(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort_by(|a, b| a.total_cmp(b));
    format!("{:.1} [{:.1}–{:.1}]", v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    if !is_root() {
        eprintln!(
            "tiered: needs root (it builds network namespaces and attaches BPF programs); not run"
        );
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this as a smoke test.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("tiered: a measurement; run it with `cargo bench --bench tiered`");
        return;
    }
    let rounds: u32 = env("BWT_ROUNDS", 3);
    let secs: f64 = env("BWT_SECS", 2.0);
    let rules: usize = env("BWT_RULES", 1000);
    let mut built: Vec<Box<dyn Path>> = PathKind::ALL
        .iter()
        .filter(|k| **k != PathKind::BridgewallTiered)
        .map(|k| paths::build(*k).expect("path"))
        .collect();
    for p in built.iter_mut() {
        p.set_user_rules(rules).expect("rules");
    }
    let mut tiered = Tiered::new().expect("tiered path");
    tiered.set_user_rules(rules).expect("rules");

    let mut rate: std::collections::BTreeMap<(String, usize), Samples> = Default::default();
    let (mut worker, mut gbps, mut deny, mut deny_in_force) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        for flows in [1usize, 1000] {
            let mut all: Vec<&mut dyn Path> = built.iter_mut().map(|b| b.as_mut()).collect();
            all.push(&mut tiered);
            for p in all {
                match established_rate(p, flows, secs) {
                    Ok(r) => {
                        println!(
                            "{}",
                            serde_json::json!({"m": "established_rate", "round": round, "flows": flows, "sample": r})
                        );
                        let e = rate.entry((r.path.clone(), flows)).or_default();
                        e.0.push(r.pps / 1e3);
                        e.1.push(r.cpu_ns_per_pkt);
                        e.2.push(r.process_ns_per_pkt);
                    }
                    Err(e) => println!("established rate {} {flows}: {e}", p.kind().name()),
                }
            }
        }
        if controller::bench::measure::tcp::available() {
            let _ = tiered.stats();
            match controller::bench::measure::tcp::measure(&mut tiered, round, rules, 5.0) {
                Ok(t) => {
                    let s = tiered.stats();
                    println!(
                        "{}",
                        serde_json::json!({"m": "tcp_tiered", "round": round, "gbps": t.gbps, "retransmits": t.retransmits, "stats": s})
                    );
                    gbps.push(t.gbps);
                    worker.push(s["worker_cores"].as_f64().unwrap_or(-1.0) * 100.0);
                }
                Err(e) => println!("tcp tiered: {e}"),
            }
        }
        for _ in 0..3 {
            match tiered.deny_latency(20_000.0, Duration::from_millis(50)) {
                Ok(d) => {
                    println!(
                        "{}",
                        serde_json::json!({"m": "deny_latency", "round": round, "sample": d})
                    );
                    deny.push(d.from_change.as_secs_f64() * 1e3);
                    deny_in_force.push(d.from_in_force.as_secs_f64() * 1e3);
                }
                Err(e) => println!("deny latency: {e}"),
            }
        }
    }
    println!(
        "\n64 B UDP, established flows, {rules} user rules: kpps | machine CPU ns/pkt | process ns/pkt"
    );
    for ((path, flows), (pps, cpu, proc_)) in rate.iter_mut() {
        println!(
            "{path:>18} {flows:>5} flows: {} | {} | {}",
            summary(pps),
            summary(cpu),
            summary(proc_)
        );
    }
    println!("tiered iperf3 Gbit/s: {}", summary(&mut gbps));
    println!(
        "tiered worker CPU % during iperf3: {}",
        summary(&mut worker)
    );
    println!("deny latency ms from change start: {}", summary(&mut deny));
    println!(
        "deny latency ms from generation in force: {}",
        summary(&mut deny_in_force)
    );
    let k = tiered.kernel_stats().expect("kernel stats");
    println!("kernel fast path stats at the end: {k:?}");
}
