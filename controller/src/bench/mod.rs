//! `bridgewall bench`: bridgewall against the kernel bridge and against Docker 20.10's own
//! iptables chains (nft and legacy), on a topology of network namespaces the harness builds
//! and removes itself (never the host's Docker).
//!
//! - [`scenario`] — the containers, the link, the published port and the user rules.
//! - [`topology`] — namespaces, veths, counters, built over [`crate::netlink`];
//!   [`generator`] — the AF_XDP TX generator.
//! - [`paths`] — the kernel bridge, Docker's chains under iptables-nft/-legacy, bridgewall.
//! - [`docker_chains`] — Docker 20.10's rules as `iptables-save` text.
//! - [`measure`] — packets/s and CPU, latency, TCP, new flows, churn.
//! - [`output`] — JSON, plots, Markdown; [`report`] — what a run measured.
//!
//! [`run`] takes [`Args`] (a `clap` struct the CLI flattens), runs every path in turn within
//! each round and writes the files; [`render_from`] draws them again from a run's JSON
//! (`bridgewall bench --from FILE`).
pub mod args;
pub mod docker_chains;
pub mod error;
pub mod generator;
pub mod measure;
pub mod output;
pub mod paths;
pub mod report;
pub mod scenario;
pub mod topology;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

pub use args::{Args, Measurement, Settings};
pub use error::{BenchError, Result};
pub use paths::PathKind;
pub use report::Report;

use paths::Path;
use report::{Machine, PathInfo};

/// What a run wrote.
#[derive(Debug)]
pub struct Outcome {
    /// Everything measured.
    pub report: Report,
    /// The run's JSON file.
    pub json: PathBuf,
    /// The Markdown summary file.
    pub summary: PathBuf,
    /// The Markdown summary's text.
    pub markdown: String,
    /// The plots (SVG and PNG).
    pub plots: Vec<PathBuf>,
}

fn first_line(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let out = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&out)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not found".into())
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    Machine {
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpu_model: cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_kib: meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        loadavg_before: read_trim("/proc/loadavg"),
        loadavg_after: String::new(),
        versions: vec![
            ("bridgewall".into(), env!("CARGO_PKG_VERSION").into()),
            ("iptables".into(), first_line("iptables", "--version")),
            (
                "iptables-legacy".into(),
                first_line("iptables-legacy", "--version"),
            ),
            ("iperf3".into(), first_line("iperf3", "--version")),
        ],
        started_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// The rule count the latency, TCP, new-flow and churn runs use: 1,000 when swept (the
/// issue's reference point), else the largest count given.
fn reference_rules(s: &Settings) -> usize {
    if s.rules.contains(&1000) {
        1000
    } else {
        s.rules.iter().copied().max().unwrap_or(0)
    }
}

/// Runs the benchmark `args` describe and writes its JSON, plots and Markdown summary into
/// `args.out`. Progress goes to stderr. A measurement that fails is recorded in
/// [`Report::errors`] and the run goes on; failing to set up a path is an error.
pub fn run(args: &Args) -> Result<Outcome> {
    if !crate::netlink::is_root() {
        return Err(BenchError::NotRoot);
    }
    let s = args.settings();
    std::fs::create_dir_all(&s.out).map_err(|e| BenchError::io(&s.out, e))?;
    let mut report = Report {
        schema: 1,
        machine: machine(),
        settings: s.clone(),
        paths: Vec::new(),
        generator: Vec::new(),
        rate: Vec::new(),
        latency: Vec::new(),
        tcp: Vec::new(),
        new_flows: Vec::new(),
        churn: Vec::new(),
        rule_load_secs: Vec::new(),
        errors: Vec::new(),
    };
    let wants = |m: Measurement| s.measure.contains(&m);

    if wants(Measurement::Rate) {
        for &size in &s.sizes {
            for &flows in &s.flows {
                eprintln!("bench: generator alone, {size} B, {flows} flows");
                match measure::rate::generator_check(size, flows, s.secs) {
                    Ok(g) => report.generator.push(g),
                    Err(e) => report.errors.push(format!("generator check {size} B: {e}")),
                }
            }
        }
    }

    let mut paths: Vec<Box<dyn Path>> = Vec::new();
    for &kind in &s.paths {
        eprintln!("bench: building path {}", kind.name());
        let p = paths::build(kind)?;
        report.paths.push(PathInfo {
            name: kind.name().into(),
            description: p.description(),
        });
        paths.push(p);
    }

    let first_rules = s.rules.first().copied().unwrap_or(0);
    for round in 0..s.rounds {
        if wants(Measurement::Rate) {
            for &rules in &s.rules {
                for p in paths.iter_mut() {
                    if !p.kind().takes_rules() && rules != first_rules {
                        continue;
                    }
                    match p.set_user_rules(rules) {
                        Ok(t) => {
                            if round == 0 && p.kind().takes_rules() {
                                report.rule_load_secs.push((
                                    p.kind().name().into(),
                                    rules,
                                    t.as_secs_f64(),
                                ))
                            }
                        }
                        Err(e) => report
                            .errors
                            .push(format!("{} loading {rules} rules: {e}", p.kind().name())),
                    }
                }
                for &size in &s.sizes {
                    for &flows in &s.flows {
                        for p in paths.iter_mut() {
                            if !p.kind().takes_rules() && rules != first_rules {
                                continue;
                            }
                            match measure::rate::measure(p.as_mut(), round, rules, size, flows, s.secs)
                            {
                                Ok(r) => {
                                    eprintln!(
                                        "bench: round {round} {:>13} {rules:>5} rules {size:>4} B {flows:>6} flows: {:>7.0} kpps (offered {:>7.0}), {:>6.0} ns CPU/pkt",
                                        r.path,
                                        r.pps / 1e3,
                                        r.offered_pps / 1e3,
                                        r.cpu_ns_per_pkt
                                    );
                                    report.rate.push(r);
                                }
                                Err(e) => report.errors.push(format!(
                                    "rate {} {rules} rules {size} B {flows} flows round {round}: {e}",
                                    p.kind().name()
                                )),
                            }
                        }
                    }
                }
            }
        }

        let others = [
            Measurement::Latency,
            Measurement::Tcp,
            Measurement::NewFlows,
            Measurement::Churn,
        ];
        if !others.iter().any(|m| wants(*m)) {
            continue;
        }
        let rules = reference_rules(&s);
        for p in paths.iter_mut() {
            if let Err(e) = p.set_user_rules(rules) {
                report
                    .errors
                    .push(format!("{} loading {rules} rules: {e}", p.kind().name()));
                continue;
            }
            let name = p.kind().name();
            eprintln!("bench: round {round} {name}: latency, TCP, new flows, churn");
            if wants(Measurement::Latency) {
                match measure::latency::measure(p.as_mut(), round, rules, 1000.0, s.long_secs) {
                    Ok(l) => report.latency.push(l),
                    Err(e) => report
                        .errors
                        .push(format!("latency {name} round {round}: {e}")),
                }
            }
            if wants(Measurement::Tcp) {
                if measure::tcp::available() {
                    match measure::tcp::measure(p.as_mut(), round, rules, s.long_secs) {
                        Ok(t) => report.tcp.push(t),
                        Err(e) => report.errors.push(format!("tcp {name} round {round}: {e}")),
                    }
                } else if round == 0 && !report.errors.iter().any(|e| e.starts_with("tcp:")) {
                    report
                        .errors
                        .push("tcp: iperf3 not found (apt-get install iperf3)".into());
                }
            }
            if wants(Measurement::NewFlows) {
                match measure::newflows::measure(p.as_mut(), round, rules, s.long_secs) {
                    Ok(n) => report.new_flows.push(n),
                    Err(e) => report
                        .errors
                        .push(format!("new flows {name} round {round}: {e}")),
                }
            }
            if wants(Measurement::Churn) {
                match measure::churn::measure(p.as_mut(), round, rules, s.long_secs) {
                    Ok(c) => report.churn.push(c),
                    Err(e) => report
                        .errors
                        .push(format!("churn {name} round {round}: {e}")),
                }
            }
        }
    }
    drop(paths);
    report.machine.loadavg_after = read_trim("/proc/loadavg");

    write_outputs(report, &s.out)
}

/// Writes the JSON, the plots and the Markdown summary of `report` into `dir`.
fn write_outputs(mut report: Report, dir: &std::path::Path) -> Result<Outcome> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let plots = match output::plots::write(&report, dir) {
        Ok(p) => p,
        Err(e) => {
            report.errors.push(e.to_string());
            Vec::new()
        }
    };
    let json = output::json::write(&report, dir)?;
    let markdown = output::markdown::render(&report);
    let summary = dir.join("summary.md");
    std::fs::write(&summary, &markdown).map_err(|e| BenchError::io(&summary, e))?;
    Ok(Outcome {
        report,
        json,
        summary,
        markdown,
        plots,
    })
}

/// Draws the plots and the summary again from a run's JSON (e.g. after moving the files or
/// with a newer version of the summary), into `dir`; nothing is measured.
pub fn render_from(json: &std::path::Path, dir: &std::path::Path) -> Result<Outcome> {
    let text = std::fs::read_to_string(json).map_err(|e| BenchError::io(json, e))?;
    let report: Report = serde_json::from_str(&text)?;
    write_outputs(report, dir)
}
