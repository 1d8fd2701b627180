//! `bridgewall run`: follow a Docker engine and run the dataplane on its bridge, applying
//! every new snapshot (containers started or gone, icc changed) until SIGINT/SIGTERM, then
//! give the bridge back and print what happened.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use crate::control::session::ControlPlane;
use crate::docker::{TrackerConfig, TrackerHandle, TrackerStatus};
use crate::netlink::Netns;
use crate::runtime::host::HostWatch;
use crate::runtime::{BridgeRuntime, RuntimeOptions};
use crate::state::Snapshot;

/// Where `run` serves its control API and metrics.
#[derive(Clone, Debug, Default)]
pub struct Surface {
    /// The control socket; `None`: no control API.
    pub socket: Option<std::path::PathBuf>,
    /// The Prometheus endpoint's address; `None`: no metrics.
    pub metrics: Option<std::net::SocketAddr>,
}

/// Follows the engine of `cfg` and enforces its bridge's policy until `stop` is set.
pub fn follow(
    cfg: TrackerConfig,
    netns: &Netns,
    options: RuntimeOptions,
    surface: &Surface,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let address = cfg.address.to_string();
    let tracker = TrackerHandle::spawn(cfg).context("starting the Docker tracker")?;
    let first = loop {
        if stop.load(Ordering::Relaxed) {
            println!("interrupted before the first Docker state arrived");
            return Ok(());
        }
        if let Some(s) = tracker.wait_for(Duration::from_millis(200), |_| true) {
            break s;
        }
        if let TrackerStatus::Disconnected {
            error, retry_in, ..
        } = tracker.status()
        {
            println!("engine at {address} not reachable: {error}; retrying in {retry_in:?}");
            std::thread::sleep(retry_in.min(Duration::from_secs(1)));
        }
    };
    crate::print::print_state(&first.state);
    let segment = (
        options.frames.ports_per_segment,
        u64::from(options.frames.segment_frames()) * 2048,
    );
    let mut rt = BridgeRuntime::start(netns, first.state.clone(), options).map_err(|e| {
        let hint = memlock_hint(&e, segment);
        let bridges: Vec<&str> = first.state.networks.iter().map(|n| n.bridge()).collect();
        let e = anyhow::Error::new(e).context(format!(
            "taking the bridges [{}] in {}",
            bridges.join(", "),
            netns.label()
        ));
        match hint {
            Some(h) => e.context(h),
            None => e,
        }
    })?;
    // ip_forward was checked (and a warning printed) before the takeover; see `cli::run`.
    let networks: Vec<String> = first
        .state
        .networks
        .iter()
        .map(|n| format!("{} on {}", n.network.name, n.bridge()))
        .collect();
    println!(
        "bridgewall is enforcing {} ({} container interfaces, policy generation {}, {} rules); Ctrl-C or SIGTERM gives the bridges back",
        if networks.is_empty() {
            "no network yet".to_string()
        } else {
            networks.join(", ")
        },
        rt.attached().count(),
        rt.policy().generation,
        rt.policy().ruleset.rules.len()
    );
    let user = rt
        .policy()
        .ruleset
        .rules
        .iter()
        .filter(|r| r.chain == rules_wasm::model::Chain::User)
        .count();
    if user + rt.policy().logs.len() + rt.policy().limits.len() > 0 {
        println!(
            "user rules: {user} flat rules, {} LOG rules, {} rate-limited rules",
            rt.policy().logs.len(),
            rt.policy().limits.len()
        );
    }
    for w in &rt.policy().warnings {
        println!("note: user rules: {w}");
    }
    match rt.datapath() {
        crate::runtime::Datapath::Tiered => println!(
            "datapath: tiered (admitted flows forwarded in the kernel at TCX ingress; new flows and the rest through the AF_XDP + Wasm loop)"
        ),
        crate::runtime::Datapath::Afxdp => {
            println!("datapath: afxdp (every packet through the AF_XDP + Wasm loop)")
        }
    }
    if rt.audit() {
        println!(
            "AUDIT mode: verdicts are counted and shown (monitor, stats), everything is forwarded"
        );
    }
    let mut control = ControlPlane::start(
        &rt,
        surface.socket.as_deref(),
        surface.metrics,
        Some(tracker.metrics_shared()),
    )
    .context("serving the control API")?;
    if let Some(p) = control.socket() {
        println!(
            "control API on {} (bridgewall rules|stats|monitor|trace|policy|capture|audit)",
            p.display()
        );
    }
    if let Some(a) = surface.metrics {
        println!("Prometheus metrics on http://{a}/metrics");
    }
    // `-i eth0` in a user rule means "routed through eth0": follow the routing table.
    let host_watch = match HostWatch::spawn(netns) {
        Ok(w) => Some(w),
        Err(e) => {
            println!(
                "WARNING: not following the host's routes ({e}): rules on host interfaces keep the routes read at start"
            );
            None
        }
    };
    let mut last: Arc<Snapshot> = first;
    let mut status_seen = tracker.status();
    let mut starvation_checked = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        control.tick(&mut rt);
        if starvation_checked.elapsed() >= Duration::from_secs(5) {
            starvation_checked = std::time::Instant::now();
            for (port, times) in rt.newly_starved() {
                tracing::warn!(
                    port,
                    times,
                    "port short of receive frames: the kernel drops what arrives for it (raise --fill-frames, or look for a port that keeps frames parked)"
                );
            }
        }
        if let Some(view) = host_watch.as_ref().and_then(HostWatch::latest) {
            match rt.set_host(view) {
                Ok(g) => println!("host routes changed: policy generation {g} in force"),
                Err(e) => println!(
                    "ERROR: the policy for the new routes was not built; generation {} stays in force: {e}",
                    rt.policy().generation
                ),
            }
        }
        let gen_seen = last.generation;
        if let Some(snap) =
            tracker.wait_for(Duration::from_millis(100), |s| s.generation > gen_seen)
        {
            crate::print::print_changes(Some(&last), &snap);
            let r = rt.apply(&snap);
            match &r.policy_error {
                None => println!(
                    "policy generation {} in force{}{}",
                    r.generation,
                    r.latency
                        .map(|d| format!(", {:.1} ms after the snapshot", d.as_secs_f64() * 1e3))
                        .unwrap_or_default(),
                    apply_summary(&r)
                ),
                Some(e) => println!(
                    "ERROR: the new policy was not built; generation {} stays in force: {e}",
                    r.generation
                ),
            }
            last = snap;
        }
        let status = tracker.status();
        if status != status_seen {
            match &status {
                TrackerStatus::Disconnected {
                    error, retry_in, ..
                } => println!(
                    "engine lost: {error}; the last policy stays in force, retrying in {retry_in:?}"
                ),
                TrackerStatus::Synced { resyncs, .. } if *resyncs > 1 => {
                    println!("engine back: state resynced")
                }
                _ => {}
            }
            status_seen = status;
        }
    }
    drop(control);
    println!("stopping: giving the bridges back");
    let state = rt.state().clone();
    let policy = rt.policy().clone();
    let gateways = gateway_names(&rt);
    let report = rt.stop().context("stopping the dataplane")?;
    println!("{}", report.totals.tables(&state, Some(&policy), &gateways));
    for r in &report.restore {
        println!(
            "ports back on {}: [{}]; gone meanwhile: [{}]",
            r.bridge,
            r.returned.join(", "),
            r.vanished.join(", ")
        );
    }
    let lat = tracker.metrics().start_to_snapshot();
    if lat.count > 0 {
        println!("container start event -> snapshot: {lat}");
    }
    if report.latency.count > 0 {
        println!(
            "snapshot -> ports attached and policy swapped: {}",
            report.latency
        );
    }
    Ok(())
}

/// Each network's gateway port, for the closing tables: (port, network, interface).
pub fn gateway_names(rt: &BridgeRuntime) -> Vec<(u16, String, String)> {
    rt.gateways()
        .map(|(network, _, ifname, port)| (port, network.to_string(), ifname.to_string()))
        .collect()
}

/// What an applied snapshot changed, for the line `run` prints.
fn apply_summary(r: &crate::runtime::ApplyReport) -> String {
    let mut parts = Vec::new();
    for (what, list) in [
        ("networks taken", &r.networks_taken),
        ("networks given back", &r.networks_given_back),
        ("attached", &r.attached),
        ("detached", &r.detached),
    ] {
        if !list.is_empty() {
            parts.push(format!("{what}: [{}]", list.join(", ")));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// What to do when the kernel would not pin the dataplane's packet buffers: registering a
/// UMEM charges its pages to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK (root
/// usually does, a service with a reduced capability set may not), and fails with ENOBUFS
/// past the limit — an errno that names neither. `segment`: ports per UMEM segment, and its
/// bytes. `None` for any other error.
fn memlock_hint(e: &crate::runtime::RuntimeError, segment: (u16, u64)) -> Option<String> {
    use dataplane::afxdp::AfXdpError;
    let crate::runtime::RuntimeError::AfXdp {
        error: AfXdpError::Sys { call, errno, .. },
        ..
    } = e
    else {
        return None;
    };
    if !call.contains("XDP_UMEM_REG") || *errno != libc::ENOBUFS {
        return None;
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let limit = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .and_then(|l| l.split_whitespace().nth(3))
        .map(|soft| match soft.parse::<u64>() {
            Ok(b) => format!("{} KiB", b / 1024),
            Err(_) => soft.to_string(),
        })
        .unwrap_or_else(|| "unknown".into());
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ipc_lock = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        // CAP_IPC_LOCK is capability 14 (linux/capability.h).
        .is_some_and(|caps| caps & (1 << 14) != 0);
    Some(format!(
        "the kernel refused to lock the dataplane's packet buffers in memory: RLIMIT_MEMLOCK \
         (ulimit -l) is {limit}{}, and each UMEM segment of {} containers needs {} MiB; raise \
         it (LimitMEMLOCK=infinity in the systemd unit, `ulimit -l unlimited`, `prlimit \
         --memlock=unlimited`) or give bridgewall CAP_IPC_LOCK",
        if ipc_lock {
            ""
        } else {
            ", bridgewall lacks CAP_IPC_LOCK (which would exempt it)"
        },
        segment.0,
        segment.1.div_ceil(1 << 20)
    ))
}
