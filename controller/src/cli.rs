//! The `bridgewall` command line: `run` (follow Docker), `lab` (the Docker-free lab and its
//! walkthrough), `docker-state` (one-shot listing). Errors reach the person with context and
//! a hint at what to do.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use rules_wasm::docker::{PortProto, Published};

use crate::docker::{
    DockerError, EngineAddress, Tracker, TrackerConfig, TrackerStatus, connect, read_state,
};
use crate::lab::{Expect, Lab, LabSpec, WALKTHROUGH_TOML};
use crate::netlink::{NetlinkError, Netns, Rtnl, ip_forward_enabled, is_root};
use crate::state::{BridgeState, Snapshot};

/// Docker's bridge networking, enforced by an AF_XDP dataplane with WebAssembly policies.
#[derive(Parser, Debug)]
#[command(name = "bridgewall", version, about)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `controller=debug`.
    #[arg(long, global = true, env = "BRIDGEWALL_LOG", default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Follow a Docker engine and keep the bridge's policy equal to what it says.
    Run(RunArgs),
    /// Build the Docker-free lab (default: the embedded walkthrough) and run its steps.
    Lab(LabArgs),
    /// Print the engine's bridge network and containers once.
    DockerState(EngineArgs),
}

/// How icc is decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum IccMode {
    /// From the network's `com.docker.network.bridge.enable_icc` option.
    Auto,
    /// Containers may talk to each other.
    True,
    /// They may not (links and published ports excepted).
    False,
}

#[derive(clap::Args, Debug)]
struct EngineArgs {
    /// The Docker engine: unix:///path, /path or tcp://host:port.
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,
    /// The kernel bridge the Docker network uses.
    #[arg(long, default_value = "docker0")]
    bridge: String,
    /// The Docker network to follow.
    #[arg(long, default_value = "bridge")]
    network: String,
    /// The network namespace the engine and its bridge live in (a name under /run/netns
    /// or a path); default: ours.
    #[arg(long)]
    netns: Option<String>,
    /// Inter-container communication: from Docker's network options, or forced.
    #[arg(long, value_enum, default_value = "auto")]
    icc: IccMode,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// User rules in iptables syntax, one per line (`-I -s A -d B -p tcp --dport 80 -j DROP`).
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct LabArgs {
    /// The lab file (TOML); default: the seed's walkthrough.
    file: Option<PathBuf>,
    /// How long a probe waits before calling it dropped, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    probe_timeout_ms: u64,
    /// Keep the lab up after the walkthrough until Ctrl-C (to poke at it with `ip netns exec`).
    #[arg(long)]
    hold: bool,
}

/// Runs the command line; the binary's `main` is a thin wrapper over this.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .with_context(|| format!("--log {:?} is not a valid filter", cli.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Lab(args) => lab(args),
        Command::Run(args) => runtime()?.block_on(run(args)),
        Command::DockerState(args) => runtime()?.block_on(docker_state(args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn tracker_config(args: &EngineArgs) -> anyhow::Result<TrackerConfig> {
    let address = EngineAddress::from_flag_or_env(args.docker_host.as_deref())?;
    let mut cfg = TrackerConfig::new(address);
    cfg.network = args.network.clone();
    cfg.bridge_netns = args.netns.clone();
    cfg.icc_override = match args.icc {
        IccMode::Auto => None,
        IccMode::True => Some(true),
        IccMode::False => Some(false),
    };
    Ok(cfg)
}

/// Explains a Docker error with what to do about it.
fn docker_hint(e: DockerError) -> anyhow::Error {
    let hint = match &e {
        DockerError::Unreachable { .. } => {
            "\nhint: start dockerd, or point --docker-host / DOCKER_HOST at its socket"
        }
        DockerError::PermissionDenied { .. } => "\nhint: run bridgewall as root",
        DockerError::ApiVersion { .. } => {
            "\nhint: bridgewall negotiates down to the engine's API version; an engine this old or odd is not supported"
        }
        _ => "",
    };
    anyhow::anyhow!("{e}{hint}")
}

async fn check_bridge(args: &EngineArgs) -> anyhow::Result<Rtnl> {
    let ns = match &args.netns {
        Some(n) => Netns::open(n).with_context(|| format!("--netns {n}"))?,
        None => Netns::current()?,
    };
    let rtnl = ns.rtnl().await.map_err(permission_hint)?;
    match rtnl.link_by_name(&args.bridge).await {
        Ok(l) if Rtnl::is_bridge(&l) => {}
        Ok(l) => bail!(
            "{} in {} is a {} interface, not a bridge (use --bridge NAME)",
            args.bridge,
            rtnl.netns_label(),
            l.kind.as_deref().unwrap_or("plain")
        ),
        Err(NetlinkError::NoSuchLink { .. }) => bail!(
            "no such bridge {:?} in {} (Docker creates docker0 when it starts; use --bridge NAME, or --netns if the engine runs in another namespace)",
            args.bridge,
            rtnl.netns_label()
        ),
        Err(e) => return Err(permission_hint(e)),
    }
    let forward = ns.run(ip_forward_enabled)?.map_err(permission_hint)?;
    if !forward {
        println!(
            "WARNING: ip_forward is OFF in {}: published ports and container traffic to the outside will not be routed (sysctl -w net.ipv4.ip_forward=1)",
            rtnl.netns_label()
        );
    }
    Ok(rtnl)
}

fn permission_hint(e: NetlinkError) -> anyhow::Error {
    if e.is_permission() {
        anyhow::anyhow!("{e}\nhint: run bridgewall as root")
    } else {
        anyhow::Error::new(e)
    }
}

async fn docker_state(args: EngineArgs) -> anyhow::Result<()> {
    let cfg = tracker_config(&args)?;
    let (engine, state) = read_state(&cfg).await.map_err(docker_hint)?;
    println!(
        "Docker {} (API {}) at {}",
        engine.engine_version, engine.api_version, engine.address
    );
    print_state(&state);
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = tracker_config(&args.engine)?;
    if !is_root() {
        println!("note: not running as root; netlink and namespace access will likely fail");
    }
    // Connect once up front so an unreachable engine is an error, not a retry loop.
    let engine = connect(&cfg.address).await.map_err(docker_hint)?;
    println!(
        "connected to Docker {} (API {}) at {}",
        engine.engine_version, engine.api_version, engine.address
    );
    check_bridge(&args.engine).await?;
    if let Some(path) = &args.rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the rules file {}", path.display()))?;
        let n = text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        println!("{n} user rules read from {}", path.display());
    }
    println!(
        "dataplane not attached yet: this build tracks Docker and prints what the policy would be built from"
    );
    let (tracker, mut ch) = Tracker::new(cfg);
    let task = tokio::spawn(tracker.run());
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        tokio::select! {
            changed = ch.snapshots.changed() => {
                if changed.is_err() { break; }
                let snap = ch.snapshots.borrow_and_update().clone();
                if let Some(snap) = snap {
                    print_changes(last.as_deref(), &snap);
                    last = Some(snap);
                }
            }
            changed = ch.status.changed() => {
                if changed.is_err() { break; }
                let status = ch.status.borrow_and_update().clone();
                match status {
                    TrackerStatus::Disconnected { error, retry_in, .. } => println!(
                        "engine lost: {error}; keeping the last known state, retrying in {retry_in:?}"
                    ),
                    TrackerStatus::Synced { resyncs, .. } if resyncs > 1 => {
                        println!("engine back: state resynced");
                    }
                    _ => {}
                }
            }
            _ = tokio::signal::ctrl_c() => {
                println!("stopping");
                break;
            }
        }
    }
    task.abort();
    let lat = ch.metrics.start_to_snapshot();
    if lat.count > 0 {
        println!("container start event -> new snapshot: {lat}");
    }
    Ok(())
}

fn print_changes(prev: Option<&Snapshot>, snap: &Snapshot) {
    let Some(prev) = prev else {
        print_state(&snap.state);
        return;
    };
    let old = &prev.state;
    let new = &snap.state;
    for c in &new.network.containers {
        if !old.network.containers.iter().any(|o| o.name == c.name) {
            let veth = new
                .attachment(&c.name)
                .map(|a| a.host_ifname.as_str())
                .unwrap_or("?");
            println!("+ {} {} on {} (port {})", c.name, ips(&c.ips), veth, c.port);
        } else if !old.network.containers.contains(c) {
            println!("~ {} changed", c.name);
        }
    }
    for c in &old.network.containers {
        if !new.network.containers.iter().any(|n| n.name == c.name) {
            println!("- {}", c.name);
        }
    }
    if old.network.icc != new.network.icc {
        println!("icc is now {}", new.network.icc);
    }
}

fn ips(v: &[std::net::IpAddr]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ports(v: &[PortProto]) -> String {
    v.iter()
        .map(|p| format!("{}/{}", p.port, proto_name(p.proto)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn published(v: &[Published]) -> String {
    v.iter()
        .map(|p| {
            format!(
                "{}:{}/{}",
                p.host_port,
                p.container_port,
                proto_name(p.proto)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

fn print_state(state: &BridgeState) {
    println!(
        "bridge {}: icc={}, gateway {}, {} containers",
        state.bridge,
        state.network.icc,
        ips(&state.network.gateway_ips),
        state.network.containers.len()
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "container",
        "address",
        "MAC",
        "host veth",
        "port",
        "exposed",
        "published",
        "links",
    ]);
    for c in &state.network.containers {
        let veth = state
            .attachment(&c.name)
            .map(|a| a.host_ifname.clone())
            .unwrap_or_default();
        let links = c
            .links
            .iter()
            .map(|l| format!("{} as {}", l.child, l.alias))
            .collect::<Vec<_>>()
            .join(", ");
        t.add_row(vec![
            c.name.clone(),
            ips(&c.ips),
            crate::docker::fmt_mac(&c.mac),
            veth,
            c.port.to_string(),
            ports(&c.exposed),
            published(&c.published),
            links,
        ]);
    }
    println!("{t}");
}

fn lab(args: LabArgs) -> anyhow::Result<()> {
    let (text, origin) = match &args.file {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the lab file {}", p.display()))?,
            p.display().to_string(),
        ),
        None => (
            WALKTHROUGH_TOML.to_string(),
            "the embedded walkthrough".to_string(),
        ),
    };
    let spec = LabSpec::from_toml(&text, &origin)?;
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone())?;
    println!("building the lab from {origin} ...");
    let lab = Lab::build(spec)?;
    println!("namespaces: {}", lab.netns_names().join(", "));
    print_state(lab.state());
    if !lab.user_rules().is_empty() {
        println!("user rules:");
        for r in lab.user_rules() {
            println!("  {r}");
        }
    }
    println!(
        "NOTE: dataplane not attached yet: the kernel bridge switches everything, so icc, links, published-port limits and user rules are not enforced; 'expected' is what bridgewall will enforce."
    );
    let timeout = Duration::from_millis(args.probe_timeout_ms);
    let results = lab.run_steps(timeout, &stop, |r| {
        println!(
            "step {:>2}: {} -> {} {}/{}: {}",
            r.number, r.step.from, r.step.to, r.step.port, r.step.proto, r.outcome
        );
    })?;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "step",
        "from",
        "to",
        "port",
        "expected",
        "outcome",
        "as expected",
        "why",
    ]);
    for r in &results {
        t.add_row(vec![
            r.number.to_string(),
            r.step.from.clone(),
            r.step.to.clone(),
            format!("{}/{}", r.step.port, r.step.proto),
            match r.step.expect {
                Expect::Pass => "pass".into(),
                Expect::Drop => "drop".into(),
            },
            r.outcome.to_string(),
            if r.as_expected() {
                "yes".into()
            } else {
                "NO".into()
            },
            r.step.why.clone(),
        ]);
    }
    println!("{t}");
    let ok = results.iter().filter(|r| r.as_expected()).count();
    println!("{ok}/{} steps as expected", results.len());
    if args.hold && !stop.load(Ordering::Relaxed) {
        println!("lab is up; Ctrl-C to tear it down");
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let names = lab.netns_names();
    lab.teardown().context("tearing the lab down")?;
    println!("lab removed ({} namespaces)", names.len());
    Ok(())
}

/// Sets `stop` on Ctrl-C instead of dying, so the lab is torn down by its own code.
fn watch_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(move || {
            rt.block_on(async {
                let signal = tokio::signal::ctrl_c();
                tokio::pin!(signal);
                // Poll once so the handler is installed before the lab is built.
                let _ = futures_util::poll!(&mut signal);
                let _ = ready_tx.send(());
                if signal.await.is_ok() {
                    eprintln!("\ninterrupted: tearing the lab down");
                    stop.store(true, Ordering::Relaxed);
                }
            });
        })
        .context("starting the signal watcher")?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("installing the Ctrl-C handler")?;
    Ok(())
}
