//! The dataplane on the host's bridges: [`BridgeRuntime`] takes every Linux bridge of the
//! [`HostState`] (Docker's `docker0` and the user-defined `br-<id>` networks, or the lab's),
//! attaches the AF_XDP dataplane to each bridge's gateway pair and every container veth —
//! one engine, each network its own L2 domain — and keeps the Wasm policy equal to the
//! latest [`Snapshot`]; networks are taken and given back as they come and go.
//!
//! Ordering guarantees:
//! - The dataplane starts with a fail-closed policy (everything dropped) and the compiled
//!   policy is swapped in before [`BridgeRuntime::start`] returns; from then on a policy is
//!   always in force: a new one replaces the old one between two batches of each worker.
//! - A snapshot whose policy cannot be built (a user rule names a container that left, the
//!   module is refused) leaves the old policy in force; new containers are then taken off the
//!   bridge but not attached (cut off, never exposed) until a later snapshot builds.
//! - On [`BridgeRuntime::stop`] (or drop) the workers stop, the ports close (their XDP links
//!   go with them) and the bridge gets its ports back.
//!
//! Everything that touches interfaces runs in the bridge's namespace: the takeover has its
//! own netlink socket there, and AF_XDP sockets and bpf links are created on a thread that
//! entered it ([`Netns::run_scoped`]).
pub mod frames;
pub mod host;
mod live;
pub mod plan;
pub mod policy;
pub mod report;
pub mod tiered;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dataplane::afxdp::{
    AfXdpError, PollConfig, RingSizes, Umem, UmemConfig, UmemShare, XdpPort, XdpPortConfig,
};
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::offload::{OffloadTarget, PortRole};
use dataplane::phy::tap::{Tap, TapControl};
use dataplane::phy::{PortId, SegmentId};
use dataplane::policy::{Action, ConstPolicy, Policy};
use dataplane::wasm::{WasmConfig, WasmRuntime};
use dataplane::worker::{Dataplane, DataplaneConfig, FrameAccount, WorkerError};

use crate::docker::LatencySummary;
use crate::netlink::{NetlinkError, Netns, Rtnl, ip_forward_enabled};
use crate::state::{Attachment, BridgeState, HostState, Snapshot};
use crate::takeover::{RestoreReport, Takeover, TakeoverError, TakeoverOptions};

use frames::{FrameBudget, PlaceError, Placement, SegmentTable};
use host::HostView;
use policy::{PacketSpec, PolicyBuild, PolicyError, TraceAnswer, UserModules, UserRules};
use report::{CounterTotals, EnforceLatency};
use tiered::TieredPath;

/// Entries of the tiered datapath's kernel flow table (two per offloaded flow).
const TIERED_MAX_FLOWS: u32 = 65_536;

/// Why the runtime could not start or apply a change.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Taking or giving back the bridge failed (no such bridge, MTU, permissions...).
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    /// A netlink query or entering the namespace failed.
    #[error("{what}: {error}")]
    Netlink {
        /// What was being done.
        what: String,
        /// The cause (in the message, so not also a `source()`).
        error: NetlinkError,
    },
    /// An AF_XDP port could not be opened (the error says what to do).
    #[error("attaching the dataplane to {ifname}: {error}")]
    AfXdp {
        /// The interface.
        ifname: String,
        /// The cause (in the message, so not also a `source()`).
        error: AfXdpError,
    },
    /// The dataplane's workers refused a request.
    #[error("dataplane: {0}")]
    Dataplane(#[from] WorkerError),
    /// The Wasm host could not start.
    #[error("starting the Wasm host: {0}")]
    Wasm(#[from] dataplane::wasm::RuntimeError),
    /// The policy could not be built.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The bridge has no MAC address (the gateway port is switched to by it).
    #[error("bridge {bridge} has no MAC address")]
    NoBridgeMac {
        /// The bridge.
        bridge: String,
    },
    /// A port found no place in the frame budget.
    #[error(transparent)]
    Frames(#[from] PlaceError),
    /// The kernel fast path of the tiered datapath failed.
    #[error("{what}: {error}")]
    FastPath {
        /// What was being done.
        what: String,
        /// The cause (in the message, so not also a `source()`).
        error: dataplane::afxdp::fastpath::FastPathError,
    },
    /// The options ask for something the chosen datapath cannot do.
    #[error("{0}")]
    Unsupported(String),
}

/// How to run the dataplane on a bridge.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Worker threads (each owns some ports).
    pub workers: usize,
    /// The user's rules (iptables syntax), evaluated before Docker's.
    pub user_rules: UserRules,
    /// The user's own policy modules, run before the compiled policy.
    pub user_modules: UserModules,
    /// Where the takeovers record what they did (one state file per bridge), so a crash
    /// can be undone.
    pub state_dir: PathBuf,
    /// How UMEM frames are budgeted per port and grouped into segments.
    pub frames: FrameBudget,
    /// How each AF_XDP port is opened.
    pub xdp: XdpPortConfig,
    /// Busy-poll vs. sleep of idle workers.
    pub poll: PollConfig,
    /// Audit mode: verdicts counted and shown, everything forwarded.
    pub audit: bool,
    /// Where live rule edits are written (the rules file `user_rules` came from).
    pub rules_path: Option<PathBuf>,
    /// Which datapath carries the packets.
    pub datapath: Datapath,
}

/// Which datapath carries the packets (`--datapath`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Datapath {
    /// Every packet through the AF_XDP + Wasm loop (an XDP program on every port).
    #[default]
    Afxdp,
    /// Admitted flows forwarded in the kernel by a tc/TCX program on every port, which
    /// keeps the containers' TSO; new flows and everything unusual upcalled to the AF_XDP +
    /// Wasm loop, which decides and installs the flows.
    Tiered,
}

impl Datapath {
    /// Its name as `--datapath` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Datapath::Afxdp => "afxdp",
            Datapath::Tiered => "tiered",
        }
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl RuntimeOptions {
    /// One worker, no user rules, the takeover's default state directory, the default
    /// frame budget (64 frames per port, segments of 16 ports, up to 1,023 ports) and
    /// 512-entry rings.
    pub fn new() -> RuntimeOptions {
        RuntimeOptions {
            workers: 1,
            user_rules: UserRules::default(),
            user_modules: UserModules::default(),
            state_dir: PathBuf::from(crate::takeover::DEFAULT_STATE_DIR),
            frames: FrameBudget::default(),
            xdp: XdpPortConfig {
                rings: RingSizes {
                    fill: 512,
                    completion: 512,
                    rx: 512,
                    tx: 512,
                },
                ..XdpPortConfig::default()
            },
            poll: PollConfig::default(),
            audit: false,
            rules_path: None,
            datapath: Datapath::Afxdp,
        }
    }
}

/// What applying a snapshot did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Containers attached to the dataplane (once per network interface).
    pub attached: Vec<String>,
    /// Containers detached (gone or changed; once per network interface).
    pub detached: Vec<String>,
    /// Networks whose bridge was taken.
    pub networks_taken: Vec<String>,
    /// Networks whose bridge was given back.
    pub networks_given_back: Vec<String>,
    /// The generation of the policy now in force.
    pub generation: u64,
    /// Why the policy was not replaced (the old one stays), if it was not.
    pub policy_error: Option<String>,
    /// Snapshot publication → ports attached and policy handed to every worker.
    pub latency: Option<Duration>,
}

/// What stopping did, for the closing summary.
#[derive(Debug)]
pub struct StopReport {
    /// The last counters.
    pub totals: CounterTotals,
    /// Each bridge's ports given back.
    pub restore: Vec<RestoreReport>,
    /// Snapshot → enforced latencies.
    pub latency: LatencySummary,
}

/// One bridge the runtime holds: its takeover and its gateway port.
#[derive(Debug)]
struct HeldBridge {
    /// The Docker network's name.
    network: String,
    takeover: Takeover,
    /// The gateway pair's inner end, the dataplane's gateway port for this network.
    gateway_ifname: String,
    /// Its dataplane port id (also the network's L2 domain id in the dataplane).
    gateway_port: u16,
}

/// The dataplane running on the host's bridges.
pub struct BridgeRuntime {
    netns: Netns,
    /// Running while `Some`; taken by stop.
    dataplane: Option<Dataplane<Umem, Tap<XdpPort>>>,
    /// The tiered datapath's kernel side (`--datapath tiered`).
    tiered: Option<TieredPath>,
    /// Per port: the switch of its capture tap.
    taps: BTreeMap<u16, Arc<TapControl>>,
    /// When the dataplane started.
    started: Instant,
    /// Policy swaps so far: (count, total duration, last duration).
    swaps: (u64, Duration, Duration),
    /// Their durations, for the metrics.
    swap_hist: crate::metrics::LatencyHistogram,
    /// Per UMEM segment: a handle on the socket that registered it, for the ports opened
    /// in it later.
    shares: Vec<Option<UmemShare>>,
    /// Which port is in which segment.
    segments: SegmentTable,
    /// Per port: starvation count already reported by [`BridgeRuntime::newly_starved`].
    starved_seen: BTreeMap<u16, u64>,
    umem: Umem,
    /// The bridges held, by bridge name.
    bridges: BTreeMap<String, HeldBridge>,
    wasm: WasmRuntime,
    opts: RuntimeOptions,
    state: HostState,
    /// Container interfaces attached to the dataplane, by host interface name.
    attached: BTreeMap<String, Attachment>,
    policy: PolicyBuild,
    next_generation: u64,
    latency: EnforceLatency,
    ip_forward: bool,
    /// The host's routes and addresses the user rules were read with.
    host: HostView,
}

impl std::fmt::Debug for BridgeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeRuntime")
            .field("bridges", &self.bridges.keys().collect::<Vec<_>>())
            .field("netns", &self.netns.label())
            .field("attached", &self.attached.keys().collect::<Vec<_>>())
            .field("generation", &self.policy.generation)
            .finish_non_exhaustive()
    }
}

impl BridgeRuntime {
    /// Takes every bridge of `state` in `netns` and runs the dataplane on them with the
    /// policy `state` and `opts.user_rules` say. The policy is compiled first, so bad rules
    /// fail before anything changes; any later failure gives the bridges back before
    /// returning.
    pub fn start(
        netns: &Netns,
        state: HostState,
        opts: RuntimeOptions,
    ) -> Result<BridgeRuntime, RuntimeError> {
        let netns = netns.try_clone().map_err(|error| RuntimeError::Netlink {
            what: "holding the bridges' namespace".into(),
            error,
        })?;
        let ip_forward = netns
            .run(ip_forward_enabled)
            .and_then(|r| r)
            .map_err(|error| RuntimeError::Netlink {
                what: format!("reading ip_forward in {}", netns.label()),
                error,
            })?;
        if !ip_forward {
            tracing::warn!(
                netns = netns.label(),
                "ip_forward is off: published ports and traffic to the outside will not be routed"
            );
        }
        let wasm = WasmRuntime::new(WasmConfig::default())?;
        let user_modules = opts.user_modules.load(&wasm)?;
        let host = HostView::read_blocking(&netns).map_err(|error| RuntimeError::Netlink {
            what: "reading the host's routes and addresses".into(),
            error,
        })?;
        let policy = policy::build(&wasm, &state, &host, &opts.user_rules, &user_modules, 1)?;
        let umem = Umem::new(UmemConfig {
            frame_count: opts.frames.segment_frames(),
            frame_size: 2048,
        })
        .map_err(|error| RuntimeError::AfXdp {
            ifname: "the UMEM".into(),
            error,
        })?;
        let workers = opts.workers.max(1);
        let tiered_mode = opts.datapath == Datapath::Tiered;
        if tiered_mode && workers > 1 {
            return Err(RuntimeError::Unsupported(format!(
                "--datapath tiered runs one worker (its upcalls arrive on one AF_XDP socket); \
                 --workers {workers} needs --datapath afxdp"
            )));
        }
        // The tiered datapath's upcall port takes the id after every container's and
        // gateway's.
        let upcall_port = opts.frames.max_ports;
        let config = DataplaneConfig {
            workers,
            engine: EngineConfig {
                max_ports: opts.frames.max_ports + usize::from(tiered_mode),
                audit: opts.audit,
                ..EngineConfig::default()
            },
            poll: opts.poll,
            ..DataplaneConfig::default()
        };
        let dp = Dataplane::start(config, umem.clone(), |_| fail_closed())?;
        let mut segments = SegmentTable::default();
        // Segment 0 is the UMEM's own; the first port opened registers it.
        segments.segment_added(0);
        let mut rt = BridgeRuntime {
            netns,
            dataplane: Some(dp),
            tiered: None,
            taps: BTreeMap::new(),
            started: Instant::now(),
            swaps: (0, Duration::ZERO, Duration::ZERO),
            swap_hist: crate::metrics::LatencyHistogram::with_bounds(
                crate::metrics::CONTROL_BOUNDS_NS,
            ),
            shares: Vec::new(),
            segments,
            starved_seen: BTreeMap::new(),
            umem,
            bridges: BTreeMap::new(),
            wasm,
            opts,
            state: HostState::default(),
            attached: BTreeMap::new(),
            policy,
            next_generation: 2,
            latency: EnforceLatency::default(),
            ip_forward,
            host,
        };
        // From here on `rt`'s drop undoes everything, the dataplane and the takeovers included.
        if tiered_mode {
            rt.start_tiered(upcall_port as PortId)?;
        }
        for net in &state.networks {
            rt.take_bridge(net)?;
        }
        for a in state.unplaced() {
            rt.cut_off(a);
        }
        for a in state.attachments() {
            let port = rt.open_port(&a.host_ifname, rt.container_port_config())?;
            rt.add_container(&state, a, port)?;
        }
        rt.install_policy()?;
        rt.state = state;
        tracing::info!(
            bridges = ?rt.bridges.keys().collect::<Vec<_>>(),
            netns = rt.netns.label(),
            containers = rt.attached.len(),
            workers,
            generation = rt.policy.generation,
            "dataplane running on the bridges"
        );
        Ok(rt)
    }

    /// Takes `net`'s bridge (every container veth off it, a gateway pair on it), claims the
    /// veths of its known containers and attaches the gateway port.
    fn take_bridge(&mut self, net: &BridgeState) -> Result<(), RuntimeError> {
        let bridge = net.bridge().to_string();
        let opts = TakeoverOptions {
            state_dir: self.opts.state_dir.clone(),
            ..TakeoverOptions::for_bridge(&bridge)
        };
        let mut takeover = Takeover::take(&self.netns, &bridge, opts)?;
        for a in &net.attachments {
            takeover.adopt(&a.host_ifname)?;
        }
        for p in takeover.containers() {
            if !net.attachments.iter().any(|a| a.host_ifname == p.name)
                && !net.unplaced.iter().any(|a| a.host_ifname == p.name)
            {
                tracing::warn!(
                    ifname = p.name,
                    bridge,
                    "a port of the bridge belongs to no known container: it stays cut off"
                );
            }
        }
        let gateway_ifname = takeover.gateway().name;
        let gateway_port = net.network.gateway_port;
        // Held before the port opens, so a failure below still gives the bridge back.
        self.bridges.insert(
            bridge.clone(),
            HeldBridge {
                network: net.network.name.clone(),
                takeover,
                gateway_ifname: gateway_ifname.clone(),
                gateway_port,
            },
        );
        let mac = bridge_mac(&self.netns, &bridge)?;
        let port = self.open_port(&gateway_ifname, self.container_port_config())?;
        let config = PortConfig {
            id: gateway_port,
            macs: vec![mac],
            ips: net.network.gateway_ips.clone(),
            is_gateway: true,
            network: gateway_port,
            complete_checksums: true,
        };
        self.add_port(config, port, &gateway_ifname)?;
        tracing::info!(
            network = net.network.name,
            bridge,
            gateway_port,
            "bridge taken"
        );
        Ok(())
    }

    /// Detaches a removed network's gateway port and gives its bridge back.
    fn give_back_bridge(&mut self, bridge: &str) -> Option<RestoreReport> {
        let held = self.bridges.remove(bridge)?;
        self.remove_port(held.gateway_port, &held.gateway_ifname);
        match held.takeover.restore() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(bridge, "giving the bridge back: {e}");
                None
            }
        }
    }

    /// Takes a container veth off its bridge without attaching it: cut off.
    fn cut_off(&mut self, a: &Attachment) {
        let Some(held) = self.held_for(&a.network) else {
            tracing::error!(
                container = a.container,
                network = a.network,
                "its network's bridge is not held: it stays on the kernel bridge"
            );
            return;
        };
        if let Err(e) = held.takeover.adopt(&a.host_ifname) {
            tracing::error!(container = a.container, "cutting off: {e}");
        }
    }

    /// The held bridge of the Docker network `network`.
    fn held_for(&mut self, network: &str) -> Option<&mut HeldBridge> {
        self.bridges.values_mut().find(|b| b.network == network)
    }

    /// Whether ip_forward was on in the bridge's namespace at start.
    pub fn ip_forward(&self) -> bool {
        self.ip_forward
    }

    /// The state the policy in force was built from.
    pub fn state(&self) -> &HostState {
        &self.state
    }

    /// The policy in force.
    pub fn policy(&self) -> &PolicyBuild {
        &self.policy
    }

    /// The gateway port's interface (the inner end of the gateway pair) of the bridge
    /// `bridge`; with one bridge held, `gateway_ifname(None)` names it.
    pub fn gateway_ifname(&self, bridge: Option<&str>) -> Option<&str> {
        match bridge {
            Some(b) => self.bridges.get(b),
            None => self.bridges.values().next(),
        }
        .map(|h| h.gateway_ifname.as_str())
    }

    /// Every held bridge's gateway: (Docker network, bridge, gateway interface, port id).
    pub fn gateways(&self) -> impl Iterator<Item = (&str, &str, &str, u16)> {
        self.bridges.iter().map(|(b, h)| {
            (
                h.network.as_str(),
                b.as_str(),
                h.gateway_ifname.as_str(),
                h.gateway_port,
            )
        })
    }

    /// Frames the tiered datapath's upcall path dropped (its queue full, the veths'
    /// drops); `None` in the AF_XDP datapath or when they cannot be read.
    pub fn upcall_drops(&self) -> Option<u64> {
        let t = self.tiered.as_ref()?;
        t.upcall_drops(&self.netns)
            .map_err(|e| tracing::debug!("{e}"))
            .ok()
    }

    /// The datapath in use.
    pub fn datapath(&self) -> Datapath {
        self.opts.datapath
    }

    /// Container interfaces attached to the dataplane.
    pub fn attached(&self) -> impl Iterator<Item = &Attachment> {
        self.attached.values()
    }

    /// Which rule of the policy in force decides `packet`, by the reference interpreter and
    /// by the module the workers run.
    pub fn trace(&self, packet: &PacketSpec) -> Result<TraceAnswer, RuntimeError> {
        self.policy
            .trace(packet)
            .map_err(|e| RuntimeError::Policy(PolicyError::Load(e)))
    }

    /// The workers' counters, added up.
    pub fn counters(&self) -> CounterTotals {
        let snaps: Vec<_> = self
            .dataplane
            .iter()
            .flat_map(|dp| dp.counters())
            .map(|c| c.snapshot())
            .collect();
        CounterTotals::sum(&snaps)
    }

    /// Brings the dataplane in line with `snap` by the [`plan::plan`]: detaches interfaces
    /// that left, takes new networks' bridges, attaches new interfaces, swaps in the policy
    /// built from it, gives removed networks' bridges back. Errors of single containers or
    /// networks are logged and reported, not returned; the policy in force is replaced only
    /// by one that built.
    pub fn apply(&mut self, snap: &Snapshot) -> ApplyReport {
        let new = &snap.state;
        let held: BTreeSet<String> = self.bridges.keys().cloned().collect();
        let plan = plan::plan(&self.attached, &held, new);
        let mut report = ApplyReport::default();
        for a in &plan.detach {
            self.remove_container(a);
            report.detached.push(a.container.clone());
        }
        for bridge in &plan.take {
            let Some(net) = new.networks.iter().find(|n| n.bridge() == bridge) else {
                continue;
            };
            match self.take_bridge(net) {
                Ok(()) => report.networks_taken.push(net.network.name.clone()),
                Err(e) => {
                    tracing::error!(network = net.network.name, "taking the bridge: {e}");
                    // Whatever was held is given back; retried with the next snapshot.
                    self.give_back_bridge(bridge);
                }
            }
        }
        for a in &plan.cut_off {
            self.cut_off(a);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let built = policy::build(
            &self.wasm,
            new,
            &self.host,
            &self.opts.user_rules,
            &self.policy.user_modules,
            generation,
        );
        for a in &plan.attach {
            self.cut_off(a);
            if built.is_err() || self.held_for(&a.network).is_none() {
                // Cut off (off the bridge) but not attached until a policy covers it.
                continue;
            }
            let opened = self.open_port(&a.host_ifname, self.container_port_config());
            match opened.and_then(|port| self.add_container(new, a, port)) {
                Ok(()) => report.attached.push(a.container.clone()),
                Err(e) => tracing::error!(container = a.container, "{e}"),
            }
        }
        match built {
            Ok(p) => {
                let previous = std::mem::replace(&mut self.policy, p);
                match self.install_policy() {
                    Ok(()) => {
                        self.state = new.clone();
                        let latency = SystemTime::now()
                            .duration_since(snap.published_at)
                            .unwrap_or_default();
                        self.latency.record(latency);
                        report.latency = Some(latency);
                    }
                    Err(e) => {
                        self.policy = previous;
                        tracing::error!("keeping the policy in force: {e}");
                        report.policy_error = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                tracing::error!("keeping the policy in force: {e}");
                report.policy_error = Some(e.to_string());
            }
        }
        for bridge in &plan.give_back {
            let network = self.bridges.get(bridge).map(|h| h.network.clone());
            if self.give_back_bridge(bridge).is_some()
                && let Some(network) = network
            {
                report.networks_given_back.push(network);
            }
        }
        report.generation = self.policy.generation;
        report
    }

    /// Stops the dataplane and gives the bridge back; returns the final counters and what
    /// the restore did.
    pub fn stop(mut self) -> Result<StopReport, RuntimeError> {
        let totals = self.counters();
        let latency = self.latency.summary();
        self.stop_dataplane();
        let mut restore = Vec::new();
        for (_, held) in std::mem::take(&mut self.bridges) {
            restore.push(held.takeover.restore()?);
        }
        Ok(StopReport {
            totals,
            restore,
            latency,
        })
    }

    /// Snapshot → enforced latency so far.
    pub fn latency(&self) -> LatencySummary {
        self.latency.summary()
    }

    fn stop_dataplane(&mut self) {
        if let Some(dp) = self.dataplane.take() {
            // The sockets that registered segments are kept open by `shares` until every
            // port sharing them is closed.
            drop(dp.stop());
        }
        self.shares.clear();
        // After the upcall port closed: its veth pair goes.
        if let Some(t) = self.tiered.take() {
            t.stop(&self.netns);
        }
    }

    /// Starts the tiered datapath's kernel side: the fast path, the upcall pair and its
    /// AF_XDP port (`upcall_port`, a network of its own so nothing is ever flooded to it),
    /// and hands the kernel flow cache to the worker.
    fn start_tiered(&mut self, upcall_port: PortId) -> Result<(), RuntimeError> {
        let (tiered, offload) = TieredPath::start(&self.netns, TIERED_MAX_FLOWS)?;
        let ifname = tiered.upcall_ifname().to_string();
        self.tiered = Some(tiered);
        let dp = self.dataplane.as_mut().ok_or(WorkerError::WorkerGone(0))?;
        dp.set_offload(0, Box::new(offload))?;
        // Every upcall of every port arrives here: a deep receive side.
        let xdp = XdpPortConfig {
            fill_share: tiered::UPCALL_FILL_FRAMES,
            rings: self.opts.xdp.rings.at_least(2 * tiered::UPCALL_FILL_FRAMES),
            ..port_config(&self.opts)
        };
        let port = self.open_port(&ifname, xdp)?;
        let config = PortConfig {
            id: upcall_port,
            network: upcall_port,
            macs: Vec::new(),
            ips: Vec::new(),
            is_gateway: false,
            complete_checksums: false,
        };
        let seg: SegmentId = dataplane::phy::Port::segment(&port);
        let dp = self.dataplane.as_mut().ok_or(WorkerError::WorkerGone(0))?;
        dp.add_port_as(config, Tap::new(port), 0, PortRole::Upcall)?;
        self.segments.joined(upcall_port, seg);
        Ok(())
    }

    /// Opens the AF_XDP port of `ifname` in the bridge's namespace, in a UMEM segment with
    /// room (adding a segment when every other is full).
    /// How a container's or a gateway's port is opened: receiving (its XDP program) in the
    /// AF_XDP datapath, transmit-only (no program: the container keeps TSO) in the tiered one.
    fn container_port_config(&self) -> XdpPortConfig {
        XdpPortConfig {
            receive: self.tiered.is_none(),
            ..port_config(&self.opts)
        }
    }

    fn open_port(&mut self, ifname: &str, xdp: XdpPortConfig) -> Result<XdpPort, RuntimeError> {
        let afxdp = |error| RuntimeError::AfXdp {
            ifname: ifname.to_string(),
            error,
        };
        let budget = self.opts.frames;
        let seg = match self.segments.place(&budget)? {
            Placement::Existing(seg) => seg,
            Placement::New => {
                let dp = self.dataplane.as_mut().ok_or(WorkerError::WorkerGone(0))?;
                let seg = self
                    .umem
                    .add_segment(budget.segment_frames())
                    .map_err(afxdp)?;
                dp.add_segment(seg, budget.segment_frames() as usize)?;
                self.segments.segment_added(seg);
                tracing::info!(
                    segment = seg,
                    frames = budget.segment_frames(),
                    ports = self.segments.ports(),
                    "UMEM segment added"
                );
                seg
            }
        };
        let umem = &self.umem;
        let share = self.shares.get(usize::from(seg)).and_then(Option::as_ref);
        let opened = self
            .netns
            .run_scoped(move || match share {
                Some(share) => match XdpPort::open_shared(umem, ifname, &xdp, share) {
                    // The socket that registered the segment lost its device (its container
                    // left): the kernel shares nothing through it, so register again.
                    Err(e) if e.errno() == Some(libc::EBADF) => {
                        XdpPort::open_reregistering(umem, seg, ifname, &xdp).map(|p| (p, true))
                    }
                    other => other.map(|p| (p, false)),
                },
                None => XdpPort::open_in_segment(umem, seg, ifname, &xdp).map(|p| (p, true)),
            })
            .map_err(|error| RuntimeError::Netlink {
                what: "entering the bridge's namespace".into(),
                error,
            })?
            .map_err(afxdp)?;
        let (opened, registered) = opened;
        if registered {
            let share = opened.umem_share().map_err(afxdp)?;
            let i = usize::from(seg);
            if self.shares.len() <= i {
                self.shares.resize_with(i + 1, || None);
            }
            self.shares[i] = Some(share);
        }
        Ok(opened)
    }

    /// Ports starved of receive frames since the last call, by container name (the gateway
    /// port is named by its interface), with how often. The caller warns: a port that cannot
    /// receive must never be silent.
    pub fn newly_starved(&mut self) -> Vec<(String, u64)> {
        let mut now: BTreeMap<u16, u64> = BTreeMap::new();
        for c in self.dataplane.iter().flat_map(|dp| dp.counters()) {
            for p in c.snapshot().ports {
                *now.entry(p.port).or_default() += p.fill_starved;
            }
        }
        let mut out = Vec::new();
        for (&port, &n) in &now {
            let seen = self.starved_seen.insert(port, n).unwrap_or(0);
            if n > seen {
                let name = self
                    .attached
                    .values()
                    .find(|a| a.port == port)
                    .map(|a| format!("{} ({})", a.container, a.host_ifname))
                    .or_else(|| {
                        self.bridges
                            .values()
                            .find(|h| h.gateway_port == port)
                            .map(|h| format!("gateway of {} ({})", h.network, h.gateway_ifname))
                    })
                    .unwrap_or_else(|| format!("port {port}"));
                out.push((name, n - seen));
            }
        }
        out
    }

    /// Where every frame of the dataplane is, and whether that adds up (no frame lost).
    pub fn frame_balance(&self) -> Result<FrameBalance, RuntimeError> {
        let dp = self.dataplane.as_ref().ok_or(WorkerError::WorkerGone(0))?;
        Ok(FrameBalance {
            account: dp.frames()?,
            segments: self.segments.segments(),
        })
    }

    fn add_container(
        &mut self,
        state: &HostState,
        a: &Attachment,
        port: XdpPort,
    ) -> Result<(), RuntimeError> {
        let net = state.network(&a.network);
        let info = net.and_then(|n| n.network.containers.iter().find(|c| c.name == a.container));
        let config = PortConfig {
            id: a.port,
            macs: info.map(|c| vec![c.mac]).unwrap_or_default(),
            ips: info.map(|c| c.ips.clone()).unwrap_or_default(),
            is_gateway: false,
            network: net.map_or(0, |n| n.network.gateway_port),
            complete_checksums: true,
        };
        self.add_port(config, port, &a.host_ifname)?;
        self.attached.insert(a.host_ifname.clone(), a.clone());
        Ok(())
    }

    /// Hands an opened port (on `ifname`) to the worker owning its UMEM segment, behind a
    /// capture tap; in the tiered datapath, attaches the kernel fast path to it too (a
    /// container's frames go into its namespace, the gateway's out of its veth).
    fn add_port(
        &mut self,
        config: PortConfig,
        port: XdpPort,
        ifname: &str,
    ) -> Result<(), RuntimeError> {
        let id = config.id;
        let role = match self.tiered.as_mut() {
            Some(t) => PortRole::Tiered(OffloadTarget {
                ifindex: t.attach(&self.netns, ifname, id)?,
                peer: !config.is_gateway,
            }),
            None => PortRole::Plain,
        };
        let dp = self.dataplane.as_mut().ok_or(WorkerError::WorkerGone(0))?;
        // A segment's ports share one worker, so most frames between them stay descriptors.
        let seg: SegmentId = dataplane::phy::Port::segment(&port);
        let owner = usize::from(seg) % dp.workers();
        let port = Tap::new(port);
        let tap = port.control();
        if let Err(e) = dp.add_port_as(config, port, owner, role) {
            if let Some(t) = self.tiered.as_mut() {
                t.detach(id);
            }
            return Err(e.into());
        }
        self.taps.insert(id, tap);
        self.segments.joined(id, seg);
        Ok(())
    }

    /// Takes port `id` off the dataplane (its frames back, its tap disarmed).
    fn remove_port(&mut self, id: u16, what: &str) {
        // The fast path first: from then on its frames reach nothing, and removing the port
        // takes its flows' kernel entries with it.
        if let Some(t) = self.tiered.as_mut() {
            t.detach(id);
        }
        if let Some(dp) = self.dataplane.as_mut() {
            match dp.remove_port(id) {
                Ok(frames) => tracing::debug!(port = what, frames, "port closed, frames back"),
                Err(e) => tracing::warn!(port = what, "{e}"),
            }
        }
        self.segments.left(id);
        if let Some(tap) = self.taps.remove(&id) {
            tap.disarm();
        }
    }

    fn remove_container(&mut self, a: &Attachment) {
        self.remove_port(a.port, &a.container);
        if let Some(held) = self.held_for(&a.network)
            && let Err(e) = held.takeover.release(&a.host_ifname)
        {
            tracing::warn!(container = a.container, "{e}");
        }
        self.attached.remove(&a.host_ifname);
    }

    /// Takes a new view of the host's routes and addresses (they changed) and swaps in the
    /// policy built with it; a policy that does not build leaves the one in force. Returns
    /// the generation in force.
    pub fn set_host(&mut self, host: HostView) -> Result<u64, RuntimeError> {
        if host == self.host {
            return Ok(self.policy.generation);
        }
        let generation = self.next_generation;
        self.next_generation += 1;
        let built = policy::build(
            &self.wasm,
            &self.state,
            &host,
            &self.opts.user_rules,
            &self.policy.user_modules,
            generation,
        )?;
        let previous = std::mem::replace(&mut self.policy, built);
        if let Err(e) = self.install_policy() {
            self.policy = previous;
            return Err(e);
        }
        self.host = host;
        Ok(generation)
    }

    /// The host's routes and addresses the rules in force were read with.
    pub fn host(&self) -> &HostView {
        &self.host
    }

    /// Instantiates the current build once per worker (here, on the control thread) and
    /// hands the instances over; each worker swaps between two batches.
    fn install_policy(&mut self) -> Result<(), RuntimeError> {
        let began = Instant::now();
        let dp = self.dataplane.as_ref().ok_or(WorkerError::WorkerGone(0))?;
        let chains = self
            .policy
            .instances(dp.workers())
            .map_err(PolicyError::Load)?;
        let generation = self.policy.generation;
        let mut chains = chains.into_iter();
        dp.set_policy(|_| match chains.next() {
            Some(c) => Box::new(c) as Box<dyn Policy>,
            None => Box::new(ConstPolicy {
                action: Action::Drop,
                generation,
            }),
        })?;
        // In force means in force: a live edit's answer, or a snapshot's latency, counts from
        // every worker judging with it.
        if !dp.wait_generation(generation, Duration::from_secs(2)) {
            tracing::warn!(
                generation,
                "a worker has not taken the new policy after 2 s (it is busy or stuck); it will at its next batch"
            );
        }
        let took = began.elapsed();
        self.swaps = (self.swaps.0 + 1, self.swaps.1 + took, took);
        self.swap_hist
            .observe(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
        Ok(())
    }
}

impl Drop for BridgeRuntime {
    fn drop(&mut self) {
        self.stop_dataplane();
        // Each takeover's own drop gives its bridge back.
        self.bridges.clear();
    }
}

/// The policy before the first compiled one: everything dropped.
fn fail_closed() -> Box<dyn Policy> {
    Box::new(ConstPolicy {
        action: Action::Drop,
        generation: 0,
    })
}

/// How each port is opened: the configured rings with the budget's fill share.
fn port_config(opts: &RuntimeOptions) -> XdpPortConfig {
    XdpPortConfig {
        fill_share: opts.frames.fill_share,
        ..opts.xdp
    }
}

/// Where the dataplane's frames are, for the frame-accounting invariant.
#[derive(Clone, Debug)]
pub struct FrameBalance {
    /// Per worker, the shared pools and the inboxes.
    pub account: FrameAccount,
    /// UMEM segments in use.
    pub segments: usize,
}

impl FrameBalance {
    /// True when every frame of every segment is in exactly one place.
    pub fn is_balanced(&self) -> bool {
        self.account.balanced()
    }
}

/// Runs `f` with a netlink handle in `netns`, on a thread that entered it.
pub(super) fn with_rtnl<T: Send>(
    netns: &Netns,
    what: &str,
    f: impl AsyncFnOnce(&Rtnl) -> Result<T, NetlinkError> + Send,
) -> Result<T, RuntimeError> {
    netns
        .run_scoped(|| -> Result<T, NetlinkError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| NetlinkError::io("starting a netlink runtime", e))?;
            rt.block_on(async {
                let rtnl = netns.rtnl().await?;
                f(&rtnl).await
            })
        })
        .and_then(|r| r)
        .map_err(|error| RuntimeError::Netlink {
            what: format!("{what} in {}", netns.label()),
            error,
        })
}

/// The bridge's MAC, read over netlink in its namespace (the takeover pinned it).
fn bridge_mac(netns: &Netns, bridge: &str) -> Result<[u8; 6], RuntimeError> {
    let what = format!("reading {bridge}'s MAC");
    let facts = with_rtnl(netns, &what, async |rtnl| rtnl.link_by_name(bridge).await)?;
    facts.mac.ok_or_else(|| RuntimeError::NoBridgeMac {
        bridge: bridge.to_string(),
    })
}
