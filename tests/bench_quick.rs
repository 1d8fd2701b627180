//! `bridgewall bench --quick` end to end (CI's smoke run): every path carries traffic in every
//! measurement and the JSON, SVG, PNG and Markdown files are well formed. Needs root (it
//! builds namespaces and attaches XDP programs); skips with a message otherwise. Everything
//! it creates lives in namespaces the harness removes on drop.
use std::path::{Path, PathBuf};
use std::time::Duration;

use controller::bench::{Args, PathKind};

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

/// The tests share the machine's two cores and the `bwb-<pid>-` namespace prefix: one at a
/// time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A temporary output directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn namespaces() -> Vec<String> {
    let me = format!("bwb-{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&me))
                .collect()
        })
        .unwrap_or_default()
}

fn check_png(p: &Path) {
    let b = std::fs::read(p).unwrap();
    assert!(b.len() > 1000, "{} is tiny", p.display());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", p.display());
}

fn check_svg(p: &Path) {
    let s = std::fs::read_to_string(p).unwrap();
    assert!(
        s.starts_with("<svg") || s.starts_with("<?xml"),
        "{} starts as SVG",
        p.display()
    );
    assert!(
        s.trim_end().ends_with("</svg>"),
        "{} is closed",
        p.display()
    );
    assert!(s.contains("<text"), "{} has text", p.display());
}

#[test]
fn root_quick_mode_runs_every_path_and_writes_well_formed_files() {
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, XDP); CI runs it as root");
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = TempDir(std::env::temp_dir().join(format!("bwbench-quick-{}", std::process::id())));
    let out = controller::bench::run(&Args::quick(dir.0.clone())).expect("quick run");
    let r = &out.report;
    // iperf3 missing is reported, not failed (CI installs it; see .ci/run).
    let errors: Vec<_> = r
        .errors
        .iter()
        .filter(|e| !e.contains("iperf3 not found"))
        .collect();
    assert!(errors.is_empty(), "measurements failed: {errors:#?}");
    assert!(
        namespaces().is_empty(),
        "namespaces left: {:?}",
        namespaces()
    );

    for kind in PathKind::ALL {
        let name = kind.name();
        let rate: Vec<_> = r.rate.iter().filter(|s| s.path == name).collect();
        assert!(!rate.is_empty(), "{name}: no rate sample");
        assert!(
            rate.iter().all(|s| s.pps > 1000.0),
            "{name} carried no traffic: {rate:?}"
        );
        let lat: Vec<_> = r.latency.iter().filter(|s| s.path == name).collect();
        assert!(
            lat.iter().any(|s| s.answered > 0),
            "{name}: no latency answers"
        );
        let nf: Vec<_> = r.new_flows.iter().filter(|s| s.path == name).collect();
        assert!(
            nf.iter().any(|s| s.tcp_per_s > 0.0 && s.udp_per_s > 0.0),
            "{name}: no new flows {nf:?}"
        );
        let ch: Vec<_> = r.churn.iter().filter(|s| s.path == name).collect();
        assert!(ch.iter().any(|s| s.sent > 0), "{name}: no churn traffic");
        if kind.takes_rules() {
            assert!(
                ch.iter().any(|s| s.inserted > 0),
                "{name}: no rule inserted"
            );
        }
        if controller::bench::measure::tcp::available() {
            assert!(
                r.tcp.iter().any(|s| s.path == name && s.gbps > 0.0),
                "{name}: no TCP"
            );
        }
    }
    assert!(!r.generator.is_empty() && r.generator.iter().all(|g| g.offered_pps > 0.0));

    // JSON: parses back and holds every sample.
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out.json).unwrap()).expect("JSON parses");
    assert_eq!(v["rate"].as_array().unwrap().len(), r.rate.len());
    assert!(
        v["machine"]["kernel"]
            .as_str()
            .is_some_and(|k| !k.is_empty())
    );
    // Markdown: the tables are there.
    let md = std::fs::read_to_string(&out.summary).unwrap();
    for h in [
        "## Packets/s",
        "## UDP request/response latency",
        "## New flows",
        "## Policy churn",
    ] {
        assert!(md.contains(h), "summary lacks {h}");
    }
    for line in md.lines().filter(|l| l.starts_with('|')) {
        assert!(line.ends_with('|'), "table row {line:?}");
    }
    // Plots: an SVG and a PNG of each.
    assert!(!out.plots.is_empty());
    for p in &out.plots {
        match p.extension().and_then(|e| e.to_str()) {
            Some("svg") => check_svg(p),
            Some("png") => check_png(p),
            other => panic!("unexpected plot file {p:?} ({other:?})"),
        }
    }
    assert!(out.plots.iter().any(|p| p.ends_with("latency-cdf.svg")));
}

/// The tiered path on its own: TCP through it and a 64-byte UDP flood on established flows
/// are forwarded by the kernel fast path (its counters say so), and a policy change stops an
/// offloaded flow. Sanity only, no timing assertion.
#[test]
fn root_tiered_path_offloads_flows() {
    use controller::bench::paths::Path;
    use controller::bench::paths::tiered::{Tiered, established_rate};
    if !is_root() {
        eprintln!("skipped: needs root (namespaces, XDP, BPF); CI runs it as root");
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut t = Tiered::new().expect("tiered path");
    t.set_user_rules(10).expect("rules");
    let r = established_rate(&mut t, 1000, 0.5).expect("established rate");
    assert!(r.pps > 1000.0, "tiered carried no traffic: {r:?}");
    let forwarded = r.extra["kernel_forwarded"].as_u64().unwrap_or(0);
    assert!(
        forwarded > 0,
        "the established flows were not forwarded in the kernel: {r:?}"
    );
    if controller::bench::measure::tcp::available() {
        let _ = t.stats();
        let tcp = controller::bench::measure::tcp::measure(&mut t, 0, 10, 1.0).expect("tcp");
        let s = t.stats();
        assert!(tcp.gbps > 0.0, "no TCP: {tcp:?}");
        assert!(
            s["kernel_forwarded"].as_u64().unwrap_or(0) > 0,
            "TCP not forwarded in the kernel: {s}"
        );
    }
    let d = t
        .deny_latency(20_000.0, Duration::from_millis(50))
        .expect("a policy change stops the offloaded flow");
    assert!(d.kernel_forwarded_before > 0, "{d:?}");
    drop(t);
    assert!(
        namespaces().is_empty(),
        "namespaces left: {:?}",
        namespaces()
    );
}
