//! The `bridgewall` command line: `run` (follow Docker), `lab` (the Docker-free lab and its
//! walkthrough), `docker-state` (one-shot listing), `trace`, `restore`, `rules import`,
//! `completions`, `man`. It parses and dispatches; printing for people lives in
//! [`crate::print`] and the commands' work in [`crate::commands`]. Errors reach the person
//! with context and a hint at what to do.
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::live;
use crate::docker::{DockerError, EngineAddress, TrackerConfig, connect, read_state};
use crate::lab::LabSpec;
use crate::netlink::{NetlinkError, Netns, ip_forward_enabled, is_root};
use crate::runtime::policy::{UserModules, UserRules};
use crate::runtime::{Datapath, RuntimeOptions};

/// Where live rule edits are kept when `run` is given no `--rules` file.
pub const DEFAULT_RULES_FILE: &str = "/var/lib/bridgewall/user.rules";

/// Docker's bridge networking, enforced by an AF_XDP dataplane with WebAssembly policies.
#[derive(Parser, Debug)]
#[command(
    name = "bridgewall",
    version,
    about = "Docker's bridge networking, enforced by an AF_XDP dataplane with WebAssembly policies"
)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `controller=debug`.
    #[arg(long, global = true, env = "BRIDGEWALL_LOG", default_value = "warn")]
    log: String,
    /// The control socket of the running bridgewall (the commands that talk to it).
    #[arg(long, global = true, env = "BRIDGEWALL_SOCKET", default_value = crate::control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// A TOML file with `run`'s settings (keys are its long flag names); flags win.
    /// Default: /etc/bridgewall/bridgewall.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
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
    /// Give back a bridge left taken by a bridgewall that was killed (`kill -9`, a crash).
    Restore(RestoreArgs),
    /// Which module, chain and rule decide one packet (e.g. `trace web db tcp 5432`).
    Trace(TraceArgs),
    /// User rules: list, add, insert and delete them in the running instance; `import`
    /// reads `iptables-save` output from standard input.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Counters of the running instance per container and worker.
    Stats(StatsArgs),
    /// Follow the running instance's verdicts as they happen (like `cilium monitor`).
    Monitor(MonitorArgs),
    /// The running instance's own policy modules: load, unload, list; `check` works offline.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The frames a port of the running instance sees, with their flows' verdicts; pcap with -w.
    Capture(CaptureArgs),
    /// Audit mode of the running instance: verdicts counted and shown, everything forwarded.
    Audit {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Print a shell completion script (`bridgewall completions bash > /etc/bash_completion.d/bridgewall`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `bridgewall man | man -l -`.
    Man,
    /// Measure bridgewall against the kernel bridge and Docker's iptables chains, in
    /// network namespaces of its own (root; never touches the host's Docker).
    Bench(crate::bench::Args),
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Read `iptables-save` output (or rule lines) from standard input, check that every
    /// rule loads with iptables' meaning here, and write the rules file `run --rules` reads.
    /// DOCKER-USER and the chains it jumps to are taken; Docker's own chains and other tables
    /// are skipped with a warning each.
    Import(ImportArgs),
    /// The effective chains of the running instance, like `iptables -L -n -v`.
    List {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Append a rule (`iptables -A`): `bridgewall rules add -- -s 10.0.0.1 -j DROP`.
    Add(EditArgs),
    /// Insert a rule (`iptables -I`), at the top or at --position.
    Insert {
        #[command(flatten)]
        edit: EditArgs,
        /// 1-based position in the chain.
        #[arg(long)]
        position: Option<usize>,
    },
    /// Delete a rule (`iptables -D`) given as it was added, or the one on --line N.
    Delete {
        #[command(flatten)]
        edit: EditArgs,
        /// The line of the rules file the rule is on (`rules list` shows it).
        #[arg(long, conflicts_with = "spec")]
        line: Option<usize>,
    },
}

#[derive(clap::Args, Debug)]
struct EditArgs {
    /// The chain (default DOCKER-USER).
    #[arg(long)]
    chain: Option<String>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    /// The rule's options in iptables syntax, after `--`.
    #[arg(last = true, allow_hyphen_values = true)]
    spec: Vec<String>,
}

#[derive(clap::Args, Debug)]
struct StatsArgs {
    /// Refresh every SECONDS (default 2) until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// Print the answer as JSON (one line per refresh).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct MonitorArgs {
    /// Denials only (drops, rejects, audit denials).
    #[arg(long)]
    drops: bool,
    /// Only traffic from or to this container (or `gateway`).
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Stop after this many verdicts.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Load a module (Wasm binary or text) into the running instance, before the compiled
    /// policy; it is validated first and refused with the reason if it does not load.
    Load {
        /// The module.
        file: PathBuf,
        /// Count its verdicts without enforcing them.
        #[arg(long)]
        audit: bool,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Unload a module by name (its file name).
    Unload {
        /// The module's name.
        name: String,
    },
    /// The loaded modules with their counters.
    List {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate a module offline (ABI, exports, imports, a probe batch) and say what is wrong.
    Check {
        /// The module.
        file: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// The container (or `gateway`) whose port to capture.
    #[arg(long)]
    port: String,
    /// Write the frames as pcap to FILE (`-` for standard output) instead of printing them.
    #[arg(short = 'w', value_name = "FILE")]
    write: Option<PathBuf>,
    /// Frames to capture.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Bytes kept of each frame.
    #[arg(long, default_value_t = 2048)]
    snaplen: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ImportArgs {
    /// `ipset save` output defining the sets the rules name (`-m set --match-set`).
    #[arg(long, value_name = "FILE")]
    ipsets: Option<PathBuf>,
    /// Where to write the rules file (mode 0600); default: only check and report.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// The namespace whose routes give `-i eth0` its meaning (default: ours).
    #[arg(long)]
    netns: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct DataplaneArgs {
    /// Dataplane worker threads (each owns some of the bridge's ports).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Where the takeover records what it changed, so a crash can be undone.
    #[arg(long, default_value = crate::takeover::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// A policy module of your own (Wasm, bridgewall's policy ABI), run before the compiled
    /// Docker policy; repeat for a chain, in order.
    #[arg(long = "module", value_name = "FILE.wasm")]
    modules: Vec<PathBuf>,
    /// Most containers the dataplane holds at once; a container beyond it stays cut off
    /// with an error naming this flag. Memory grows with the containers present, not with
    /// this limit (UMEM segments of 16 ports are added as needed).
    #[arg(long, default_value_t = crate::state::DEFAULT_MAX_PORTS - 1)]
    max_containers: usize,
    /// Most bridge networks besides Docker's default one the dataplane serves at once (each
    /// network's gateway takes a port); a network beyond it is not taken, with an error
    /// naming this flag.
    #[arg(long, default_value_t = crate::state::DEFAULT_MAX_NETWORKS)]
    max_networks: usize,
    /// UMEM frames (2 KiB each) each port keeps ready to receive into: more absorbs longer
    /// bursts to one container, fewer costs less memory per container.
    #[arg(long, default_value_t = dataplane::afxdp::port::DEFAULT_FILL_SHARE)]
    fill_frames: u32,
    /// A policy module run in audit mode: its verdicts are counted, never enforced; repeat.
    #[arg(long = "audit-module", value_name = "FILE.wasm")]
    audit_modules: Vec<PathBuf>,
    /// Audit mode: every verdict is computed, counted and shown by `monitor` and `stats`,
    /// but everything is forwarded (try a policy before enforcing it).
    #[arg(long)]
    audit: bool,
    /// Where packets are switched: `afxdp`, every packet through the userspace loop;
    /// `tiered`, admitted flows forwarded in the kernel (tc/TCX, keeping TSO) and only new
    /// flows and everything unusual through the userspace loop.
    #[arg(long, value_enum, default_value_t = Datapath::Afxdp)]
    datapath: Datapath,
}

#[derive(clap::Args, Debug)]
struct RestoreArgs {
    /// The bridge to give back; default: every bridge with a takeover recorded in the
    /// state directory for this namespace.
    #[arg(long)]
    bridge: Option<String>,
    /// The network namespace the bridge lives in (a name under /run/netns or a path).
    #[arg(long)]
    netns: Option<String>,
    /// Where the takeover's state files are.
    #[arg(long, default_value = crate::takeover::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(clap::Args, Debug)]
struct TraceArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// Take the state from this lab file instead of a Docker engine.
    #[arg(long)]
    lab: Option<PathBuf>,
    /// User rules in iptables syntax (default with --lab: the lab file's own).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// `ipset save` output defining the sets the rules name.
    #[arg(long, value_name = "FILE")]
    ipsets: Option<PathBuf>,
    /// Policy modules of your own, run before the compiled policy, as with `run --module`.
    #[arg(long = "module", value_name = "FILE.wasm")]
    modules: Vec<PathBuf>,
    /// Source: a container name, `host`, or an address (or --from).
    src: Option<String>,
    /// Destination: a container name, `host`, or an address (or --to).
    dst: Option<String>,
    /// tcp, udp, icmp or a protocol number (or -p).
    proto: Option<String>,
    /// Destination port, 0 for ICMP (or --dport).
    dport: Option<u16>,
    /// Source (instead of the first positional).
    #[arg(long = "from", conflicts_with = "src")]
    from: Option<String>,
    /// Destination (instead of the second positional).
    #[arg(long = "to", conflicts_with = "dst")]
    to: Option<String>,
    /// Protocol (instead of the third positional).
    #[arg(short = 'p', long = "protocol", conflicts_with = "proto")]
    protocol: Option<String>,
    /// Destination port (instead of the fourth positional).
    #[arg(long = "dport", conflicts_with = "dport")]
    dest_port: Option<u16>,
    /// Explain a later IP fragment of such a datagram (it has no ports; it follows the
    /// first fragment's verdict).
    #[arg(long)]
    fragment: bool,
    /// Build the policy here from the engine (or --lab) even if a bridgewall runs: by
    /// default a running instance answers with the policy in force.
    #[arg(long)]
    offline: bool,
    /// Print the answer as JSON (running instance only).
    #[arg(long)]
    json: bool,
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
    /// A Docker network to follow, by name, id or kernel bridge (`bridge`, `myapp_default`,
    /// `docker0`, `br-1234abcd5678`); repeat for several. Default: every network whose
    /// driver is `bridge`, as they are created and removed.
    #[arg(long = "network", alias = "bridge", value_name = "NETWORK")]
    networks: Vec<String>,
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
    /// User rules in iptables syntax, one per line (`-I -s A -d B -p tcp --dport 80 -j DROP`),
    /// or `iptables-save` output (see `bridgewall rules import`).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// `ipset save` output defining the sets the rules name (`-m set --match-set`).
    #[arg(long, value_name = "FILE")]
    ipsets: Option<PathBuf>,
    #[command(flatten)]
    dataplane: DataplaneArgs,
    /// Serve the control API on this unix socket (`none`: no control API); default:
    /// bridgewall.sock in the state directory (/run/bridgewall/bridgewall.sock). The CLI's
    /// `rules`, `stats`, `monitor`, `policy`, `capture`, `audit` and `trace` talk to it.
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9477); off by default.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(clap::Args, Debug)]
struct LabArgs {
    /// The lab file (TOML); default: the seed's walkthrough.
    file: Option<PathBuf>,
    /// Run the networks walkthrough (two user-defined networks, one --internal, beside the
    /// default bridge) instead of the seed's.
    #[arg(long, conflicts_with = "file")]
    networks: bool,
    /// How long a probe waits before calling it dropped, in milliseconds.
    #[arg(long, default_value_t = 1500)]
    probe_timeout_ms: u64,
    /// Keep the lab up after the walkthrough until Ctrl-C (to poke at it with `ip netns exec`).
    #[arg(long)]
    hold: bool,
    /// Serve the control API on this unix socket while the lab is held (none by default).
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on this address while the lab is held.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    dataplane: DataplaneArgs,
}

/// Runs the command line; the binary's `main` is a thin wrapper over this.
pub fn main() -> anyhow::Result<()> {
    // A config file fills in `run`'s (and `lab`'s) flags the command line did not give.
    let argv = crate::config::merge_config(
        std::env::args_os().collect(),
        &<Cli as clap::CommandFactory>::command(),
    )?;
    let cli = Cli::parse_from(argv);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log)
                .with_context(|| format!("--log {:?} is not a valid filter", cli.log))?,
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Lab(args) => lab(args),
        Command::Run(args) => run(args),
        Command::DockerState(args) => runtime()?.block_on(docker_state(args)),
        Command::Restore(args) => restore(args),
        Command::Trace(args) => trace(args, &cli.socket),
        Command::Rules(RulesCommand::Import(args)) => import(args),
        Command::Rules(cmd) => rules(cmd, &cli.socket),
        Command::Stats(a) => {
            let watch = match a.watch {
                Some(s) if !(0.1..=3600.0).contains(&s) => {
                    bail!("--watch {s}: give 0.1 to 3600 seconds")
                }
                w => w.map(std::time::Duration::from_secs_f64),
            };
            live::stats(&live::client(&cli.socket)?, watch, a.json)
        }
        Command::Monitor(a) => crate::commands::monitor::monitor(
            &live::client(&cli.socket)?,
            &crate::commands::monitor::MonitorArgs {
                drops: a.drops,
                container: a.container,
                json: a.json,
                count: a.count,
            },
        ),
        Command::Policy(cmd) => policy(cmd, &cli.socket),
        Command::Capture(a) => crate::commands::monitor::capture(
            &live::client(&cli.socket)?,
            &crate::commands::monitor::CaptureArgs {
                port: a.port,
                count: a.count,
                snaplen: a.snaplen,
                timeout_secs: a.timeout,
                write: a.write,
                json: a.json,
            },
        ),
        Command::Audit { state } => live::audit(&live::client(&cli.socket)?, state == "on"),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "bridgewall", &mut out);
            write_stdout(&out)
        }
        Command::Bench(args) => crate::commands::bench::bench(&args),
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut out)
                .context("rendering the man page")?;
            write_stdout(&out)
        }
    }
}

fn rules(cmd: RulesCommand, socket: &std::path::Path) -> anyhow::Result<()> {
    use crate::control::api::RuleEdit;
    let c = live::client(socket)?;
    let (edit, json) = match cmd {
        RulesCommand::List { json } => return live::rules_list(&c, json),
        RulesCommand::Import(_) => bail!("rules import does not talk to a running instance"),
        RulesCommand::Add(e) => (
            RuleEdit::Append {
                spec: e.spec,
                chain: e.chain,
            },
            e.json,
        ),
        RulesCommand::Insert { edit, position } => (
            RuleEdit::Insert {
                spec: edit.spec,
                chain: edit.chain,
                position,
            },
            edit.json,
        ),
        RulesCommand::Delete { edit, line } => match line {
            Some(line) => (RuleEdit::DeleteLine { line }, edit.json),
            None => (
                RuleEdit::Delete {
                    spec: edit.spec,
                    chain: edit.chain,
                },
                edit.json,
            ),
        },
    };
    live::rules_edit(&c, &edit, json)
}

fn policy(cmd: PolicyCommand, socket: &std::path::Path) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { file } => {
            let mut m = UserModules::default();
            m.add_file(&file, false)?;
            let wasm = dataplane::wasm::WasmRuntime::new(dataplane::wasm::WasmConfig::default())
                .context("starting the Wasm host")?;
            let loaded = m.load(&wasm)?;
            for l in loaded {
                println!(
                    "{}: a valid bridgewall policy module ({} bytes): ABI, exports, imports and a probe batch check out",
                    l.module.name(),
                    l.bytes
                );
            }
            Ok(())
        }
        PolicyCommand::Load { file, audit, json } => {
            live::policy_load(&live::client(socket)?, &file, audit, json)
        }
        PolicyCommand::Unload { name } => live::policy_unload(&live::client(socket)?, &name),
        PolicyCommand::List { json } => live::policy_list(&live::client(socket)?, json),
    }
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    use std::io::Read as _;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the rules from standard input")?;
    let ipsets = read_optional(args.ipsets.as_ref(), "the ipset file")?;
    let netns = open_netns(args.netns.as_deref())?;
    let host = crate::runtime::host::HostView::read_blocking(&netns)
        .map_err(permission_hint)
        .context("reading the host's routes (for -i/-o with host interfaces)")?;
    crate::commands::rules::import(&crate::commands::rules::ImportInput {
        text: &text,
        ipsets: ipsets.as_deref(),
        host: &host,
        output: args.output.as_deref(),
        json: args.json,
    })
}

/// Writes generated text to standard output; a reader that stops early (`| head`) is fine.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().write_all(bytes) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to standard output"),
    }
}

/// The contents of an optional file named by a flag.
fn read_optional(path: Option<&PathBuf>, what: &str) -> anyhow::Result<Option<String>> {
    path.map(|p| {
        std::fs::read_to_string(p).with_context(|| format!("reading {what} {}", p.display()))
    })
    .transpose()
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
    cfg.networks = args.networks.clone();
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

/// Checks before anything changes: the networks asked for exist on the engine (as bridge
/// networks), and ip_forward (a warning when off).
async fn check_networks(engine: &crate::docker::Engine, args: &EngineArgs) -> anyhow::Result<()> {
    let ns = match &args.netns {
        Some(n) => Netns::open(n).with_context(|| format!("--netns {n}"))?,
        None => Netns::current()?,
    };
    let rtnl = ns.rtnl().await.map_err(permission_hint)?;
    let nets = crate::docker::bridge_networks(engine)
        .await
        .map_err(docker_hint)?;
    for wanted in &args.networks {
        if !nets
            .iter()
            .any(|n| [&n.name, &n.id, &n.bridge].contains(&wanted))
        {
            let known: Vec<String> = nets
                .iter()
                .map(|n| format!("{} ({})", n.name, n.bridge))
                .collect();
            bail!(
                "no such bridge network {wanted:?} on the engine; its bridge networks: {} (--network takes a network's name, id or kernel bridge)",
                known.join(", ")
            );
        }
    }
    let forward = ns.run(ip_forward_enabled)?.map_err(permission_hint)?;
    if !forward {
        println!(
            "WARNING: ip_forward is OFF in {}: published ports and container traffic to the outside will not be routed (sysctl -w net.ipv4.ip_forward=1)",
            rtnl.netns_label()
        );
    }
    Ok(())
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
    crate::print::print_state(&state);
    Ok(())
}

/// Reads a user rules file (the rules are parsed, against the containers they name, each
/// time the policy is built).
fn read_rules(path: Option<&PathBuf>, ipsets: Option<&PathBuf>) -> anyhow::Result<UserRules> {
    let ipsets = read_optional(ipsets, "the ipset file")?;
    let Some(path) = path else {
        return Ok(UserRules {
            ipsets,
            ..UserRules::default()
        });
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the rules file {}", path.display()))?;
    Ok(UserRules {
        text,
        origin: path.display().to_string(),
        ipsets,
    })
}

fn runtime_options(args: &DataplaneArgs, rules: UserRules) -> anyhow::Result<RuntimeOptions> {
    let mut o = RuntimeOptions::new();
    o.workers = args.workers.max(1);
    o.state_dir = args.state_dir.clone();
    o.user_rules = rules;
    o.user_modules = UserModules::from_files(&args.modules)?;
    for m in &args.audit_modules {
        o.user_modules.add_file(m, true)?;
    }
    o.audit = args.audit;
    o.datapath = args.datapath;
    if args.max_containers == 0 || args.max_containers > usize::from(u16::MAX) {
        bail!(
            "--max-containers {} is out of range (1..=65535)",
            args.max_containers
        );
    }
    if !(8..=4096).contains(&args.fill_frames) {
        bail!(
            "--fill-frames {} is out of range (8..=4096)",
            args.fill_frames
        );
    }
    if args.max_networks > 4096 {
        bail!(
            "--max-networks {} is out of range (0..=4096)",
            args.max_networks
        );
    }
    if args.max_containers + 1 + args.max_networks > usize::from(u16::MAX) {
        bail!(
            "--max-containers {} plus --max-networks {} is more ports than the dataplane holds (65,534)",
            args.max_containers,
            args.max_networks
        );
    }
    // Containers and the default network's gateway, then the other networks' gateways.
    o.frames.max_ports = args.max_containers + 1 + args.max_networks;
    o.frames.fill_share = args.fill_frames;
    o.xdp.rings = o.xdp.rings.at_least(args.fill_frames.next_power_of_two());
    Ok(o)
}

fn open_netns(netns: Option<&str>) -> anyhow::Result<Netns> {
    Ok(match netns {
        Some(n) => Netns::open(n).with_context(|| format!("--netns {n}"))?,
        None => Netns::current()?,
    })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let cfg = tracker_config(&args.engine)?;
    if !is_root() {
        bail!(
            "bridgewall run needs root: it moves the bridge's ports and opens AF_XDP sockets (run it with sudo)"
        );
    }
    // Live edits (`rules add`) are written to the rules file; without --rules, to
    // DEFAULT_RULES_FILE, which a later run reads back.
    let rules_path = args
        .rules
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RULES_FILE));
    let saved = args.rules.is_none() && rules_path.exists();
    let rules = read_rules(
        (args.rules.is_some() || saved).then_some(&rules_path),
        args.ipsets.as_ref(),
    )?;
    {
        let rt = runtime()?;
        rt.block_on(async {
            // Connect once up front so an unreachable engine is an error, not a retry loop.
            let engine = connect(&cfg.address).await.map_err(docker_hint)?;
            println!(
                "connected to Docker {} (API {}) at {}",
                engine.engine_version, engine.api_version, engine.address
            );
            check_networks(&engine, &args.engine).await
        })?;
    }
    if rules.count() > 0 {
        println!(
            "{} rule lines in {}{}",
            rules.count(),
            rules.origin,
            if saved { " (saved by live edits)" } else { "" }
        );
    }
    let netns = open_netns(args.engine.netns.as_deref())?;
    let mut options = runtime_options(&args.dataplane, rules)?;
    options.rules_path = Some(rules_path);
    let surface = crate::commands::run::Surface {
        socket: match &args.control_socket {
            Some(p) if p.as_os_str() == "none" => None,
            Some(p) => Some(p.clone()),
            None => Some(args.dataplane.state_dir.join("bridgewall.sock")),
        },
        metrics: args.metrics,
    };
    let cfg = TrackerConfig {
        max_ports: args.dataplane.max_containers + 1,
        max_networks: args.dataplane.max_networks,
        ..cfg
    };
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone())?;
    crate::commands::run::follow(cfg, &netns, options, &surface, stop)
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let netns = open_netns(args.netns.as_deref())?;
    let bridges = match &args.bridge {
        Some(b) => vec![b.clone()],
        None => crate::takeover::recorded_bridges(&netns, &args.state_dir)?,
    };
    if bridges.is_empty() {
        println!(
            "nothing to restore: no takeover recorded in {} under {}",
            netns.label(),
            args.state_dir.display()
        );
    }
    for bridge in bridges {
        restore_one(&netns, &bridge, &args.state_dir)?;
    }
    // A tiered datapath killed before it could clean up leaves its upcall veth pair.
    let stale = crate::runtime::tiered::remove_stale_upcalls(&netns)
        .context("removing the tiered datapath's leftover upcall veths")?;
    if stale > 0 {
        println!("leftover upcall veth pairs removed: {stale}");
    }
    Ok(())
}

fn restore_one(netns: &Netns, bridge: &str, state_dir: &std::path::Path) -> anyhow::Result<()> {
    match crate::takeover::restore_from_state(netns, bridge, state_dir)
        .with_context(|| format!("restoring bridge {bridge} in {}", netns.label()))?
    {
        None => println!(
            "nothing to restore: no record of a takeover of {bridge} in {} under {}",
            netns.label(),
            state_dir.display()
        ),
        Some(r) => {
            println!(
                "bridge {} restored: ports back [{}], gone meanwhile [{}], gateway pair removed: {}",
                r.bridge,
                r.returned.join(", "),
                r.vanished.join(", "),
                if r.gateway_removed {
                    "yes"
                } else {
                    "no (not found)"
                }
            );
            if !r.left.is_empty() {
                println!("left where they are: {}", r.left.join("; "));
            }
        }
    }
    Ok(())
}

/// The packet `trace` asks about, from its positionals or flags.
fn trace_query(args: &TraceArgs) -> anyhow::Result<crate::commands::trace::TraceQuery> {
    let missing = |what: &str, flag: &str| {
        anyhow::anyhow!(
            "trace: give the {what} (positional, or {flag}); e.g. `bridgewall trace --from web --to db -p tcp --dport 5432`"
        )
    };
    Ok(crate::commands::trace::TraceQuery {
        src: args
            .src
            .clone()
            .or_else(|| args.from.clone())
            .ok_or_else(|| missing("source", "--from"))?,
        dst: args
            .dst
            .clone()
            .or_else(|| args.to.clone())
            .ok_or_else(|| missing("destination", "--to"))?,
        proto: args
            .proto
            .clone()
            .or_else(|| args.protocol.clone())
            .unwrap_or_else(|| "tcp".into()),
        dport: args.dport.or(args.dest_port).unwrap_or(0),
        later_fragment: args.fragment,
    })
}

fn trace(args: TraceArgs, socket: &std::path::Path) -> anyhow::Result<()> {
    let query = trace_query(&args)?;
    let offline = args.offline
        || args.lab.is_some()
        || args.rules.is_some()
        || args.ipsets.is_some()
        || !args.modules.is_empty();
    if !offline && socket.exists() {
        let req = crate::control::api::TraceRequest {
            src: query.src.clone(),
            dst: query.dst.clone(),
            proto: query.proto.clone(),
            dport: query.dport,
            fragment: query.later_fragment,
        };
        let agree = live::trace(&live::client(socket)?, &req, args.json)?;
        if !agree {
            bail!("the compiled module and the reference interpreter disagree: please report this");
        }
        return Ok(());
    }
    if args.json {
        bail!("trace --json needs a running bridgewall (the offline trace prints a table)");
    }
    let (state, mut rules) = match &args.lab {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the lab file {}", path.display()))?;
            let origin = path.display().to_string();
            let spec = LabSpec::from_toml(&text, &origin)?;
            let rules = UserRules::from_lines(&spec.rules, &origin);
            (crate::commands::trace::lab_state(&spec), rules)
        }
        None => {
            let cfg = tracker_config(&args.engine)?;
            let (_, state) = runtime()?.block_on(read_state(&cfg)).map_err(docker_hint)?;
            (state, UserRules::default())
        }
    };
    if args.rules.is_some() || args.ipsets.is_some() {
        let mut read = read_rules(args.rules.as_ref(), args.ipsets.as_ref())?;
        if args.rules.is_none() {
            read.text = std::mem::take(&mut rules.text);
            read.origin = std::mem::take(&mut rules.origin);
        }
        rules = read;
    }
    let host = match &args.lab {
        // The lab's host namespace exists only while the lab runs: no host interfaces.
        Some(_) => crate::runtime::host::HostView::default(),
        None => crate::runtime::host::HostView::read_blocking(&open_netns(
            args.engine.netns.as_deref(),
        )?)
        .map_err(permission_hint)?,
    };
    let modules = UserModules::from_files(&args.modules)?;
    let agree = crate::commands::trace::trace(&state, &host, &rules, &modules, &query)?;
    if !agree {
        bail!("the compiled module and the reference interpreter disagree: please report this");
    }
    Ok(())
}

fn lab(args: LabArgs) -> anyhow::Result<()> {
    let (text, origin) = crate::commands::lab::lab_text(args.file.as_deref(), args.networks)?;
    if !is_root() {
        bail!("bridgewall lab needs root: it builds network namespaces (run it with sudo)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_ctrl_c(stop.clone())?;
    let run = crate::commands::lab::LabRun {
        text,
        origin,
        timeout: Duration::from_millis(args.probe_timeout_ms),
        hold: args.hold,
        control_socket: args.control_socket.clone(),
        metrics: args.metrics,
        options: runtime_options(&args.dataplane, UserRules::default())?,
    };
    let all_ok = crate::commands::lab::lab(run, stop)?;
    if !all_ok {
        bail!("some steps did not go as expected (see above)");
    }
    Ok(())
}

/// Sets `stop` on SIGINT (Ctrl-C) or SIGTERM instead of dying, so the dataplane stops, the
/// bridge gets its ports back and the lab is torn down by their own code.
fn watch_ctrl_c(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal watcher")?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async {
                // Created inside the runtime, before anything is built: the handlers are in
                // place from here on.
                let signals = signal(SignalKind::interrupt())
                    .and_then(|i| signal(SignalKind::terminate()).map(|t| (i, t)));
                let (mut int, mut term) = match signals {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let name = tokio::select! {
                    _ = int.recv() => "SIGINT",
                    _ = term.recv() => "SIGTERM",
                };
                eprintln!("\n{name}: stopping, giving the bridge back");
                stop.store(true, Ordering::Relaxed);
            });
        })
        .context("starting the signal watcher")?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("installing the signal handlers")?
        .context("installing the signal handlers")?;
    Ok(())
}
