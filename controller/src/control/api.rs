//! The control API's requests and answers, shared by the server in `bridgewall run` and the
//! CLI commands that are its clients, so both sides agree by construction.
//!
//! Every route is under `/v1`; bodies are JSON (a module upload is its raw bytes). Errors
//! are a 4xx/5xx status with an [`ApiError`] body. Streams (`monitor`, `capture`) are
//! newline-delimited JSON, one [`MonitorLine`] or [`CaptureLine`] per line.
use serde::{Deserialize, Serialize};

/// `GET /v1/rules`: the effective chains.
pub const RULES: &str = "/v1/rules";
/// `POST /v1/trace`: one packet through the policy in force.
pub const TRACE: &str = "/v1/trace";
/// `GET /v1/stats`: counters by container and worker.
pub const STATS: &str = "/v1/stats";
/// `GET /v1/monitor?drops=BOOL&container=NAME`: a stream of verdict events.
pub const MONITOR: &str = "/v1/monitor";
/// `GET /v1/policies`, `POST /v1/policies?name=N&audit=B` (module bytes),
/// `DELETE /v1/policies/NAME`: the user's policy modules.
pub const POLICIES: &str = "/v1/policies";
/// `PUT /v1/audit`: audit mode of the whole dataplane.
pub const AUDIT: &str = "/v1/audit";
/// `GET /v1/capture?port=NAME&count=N&snaplen=S&timeout_ms=T`: frames a port sees.
pub const CAPTURE: &str = "/v1/capture";

/// What went wrong with a request, for the person who sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// One readable line naming what and where.
    pub error: String,
}

/// The effective chains, in the layout of `iptables -L -n -v`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesReply {
    /// The policy generation in force.
    pub generation: u64,
    /// Where the user's rules live (live edits are written there).
    pub rules_file: String,
    /// Whether audit mode is on (verdicts counted, everything forwarded).
    pub audit: bool,
    /// The chains, user rules first (they are evaluated first).
    pub chains: Vec<ChainListing>,
}

/// One chain of the listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainListing {
    /// `DOCKER-USER` (the user's rules, flattened) or `DOCKER` (what the engine says).
    pub name: String,
    /// What happens to a packet no rule of the chain decides.
    pub policy: String,
    /// Its rules in evaluation order.
    pub rules: Vec<RuleRow>,
}

/// One rule of the listing: iptables' columns plus where it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRow {
    /// Position in the chain, from 1.
    pub num: usize,
    /// The rule's id (what verdicts, `trace` and `monitor` name).
    pub id: u32,
    /// The line of the rules file it came from (user rules only): `rules delete --line N`.
    pub line: Option<usize>,
    /// Packets that got its verdict: first packets of flows, and every later packet of the
    /// flows it decided (their cached verdict is the rule's), wherever in the datapath.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// ACCEPT, DROP, REJECT.
    pub target: String,
    /// Protocol (`all`, `tcp`, …).
    pub prot: String,
    /// Source, with the container's name beside its address.
    pub source: String,
    /// Destination, likewise.
    pub destination: String,
    /// Ports, states and the other matches.
    pub extra: String,
    /// The rule's text as written ("-I -s … -j DROP", "link web→db 80/tcp").
    pub origin: String,
}

/// A live change of the user's rules (`rules add|insert|delete`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RuleEdit {
    /// `-A`: after every rule of the chain.
    Append {
        /// The rule's options in iptables syntax (without `-A CHAIN`).
        spec: Vec<String>,
        /// The chain (default `DOCKER-USER`).
        chain: Option<String>,
    },
    /// `-I`: before the rule at `position` (default 1, the top).
    Insert {
        /// The rule's options.
        spec: Vec<String>,
        /// The chain (default `DOCKER-USER`).
        chain: Option<String>,
        /// 1-based position.
        position: Option<usize>,
    },
    /// `-D`: the first rule of the chain with exactly this specification.
    Delete {
        /// The rule's options, as it was added.
        spec: Vec<String>,
        /// The chain (default `DOCKER-USER`).
        chain: Option<String>,
    },
    /// The rule written on line `line` of the rules file (see `rules list`).
    DeleteLine {
        /// 1-based line number.
        line: usize,
    },
}

/// What a rule edit did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEditReply {
    /// The policy generation now in force.
    pub generation: u64,
    /// The line added to or removed from the rules file.
    pub line: String,
    /// The file the rules were written to.
    pub rules_file: String,
    /// Flat user rules now in force.
    pub user_rules: usize,
}

/// `trace` against the running instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRequest {
    /// Source: a container name, `host`, or an address.
    pub src: String,
    /// Destination: a container name, `host`, or an address.
    pub dst: String,
    /// Protocol name or number.
    pub proto: String,
    /// Destination port.
    pub dport: u16,
    /// Explain a later IP fragment of such a datagram.
    pub fragment: bool,
}

/// The answer to a trace: rows for a two-column table, and the verdicts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    /// (what, answer) rows: packet, verdict, module, chain, rule, ….
    pub rows: Vec<(String, String)>,
    /// accept / drop / reject.
    pub verdict: String,
    /// A user module decided (the reference interpreter was not asked).
    pub by_user_module: bool,
    /// The compiled module and the reference interpreter agree.
    pub agree: bool,
    /// Notes about the rules (warnings accepted with them).
    pub notes: Vec<String>,
}

/// Counters by container and worker.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// The policy generation in force.
    pub generation: u64,
    /// Whether audit mode is on.
    pub audit: bool,
    /// Seconds since the dataplane started.
    pub uptime_seconds: f64,
    /// Per container, and the gateway (named `gateway`), by name.
    pub ports: Vec<PortStats>,
    /// Per dataplane worker.
    pub workers: Vec<WorkerStats>,
    /// Drops by reason, every port.
    pub drops: Vec<(String, u64)>,
    /// The flow table.
    pub flows: FlowStats,
    /// Policy swaps and their cost.
    pub swaps: SwapStats,
    /// Policy evaluation latency per batch: (upper bound ns, u64::MAX for +Inf; batches).
    pub policy_latency_ns: Vec<(u64, u64)>,
    /// Sum of the batch evaluation times, ns.
    pub policy_latency_sum_ns: u64,
    /// Verdict events for `monitor`: emitted, rate-limited, lost.
    pub events: [u64; 3],
    /// Docker event → snapshot latency, (count, median ms, max ms), when following an engine.
    pub docker_sync: Option<(u64, f64, f64)>,
    /// The user's modules.
    pub modules: Vec<PolicyInfo>,
    /// The datapath: `afxdp` or `tiered`.
    #[serde(default)]
    pub datapath: String,
    /// The tiered datapath's activity (zeros in the AF_XDP datapath).
    #[serde(default)]
    pub offload: OffloadStats,
}

/// The tiered datapath: upcalls, kernel flow entries, what the kernel forwarded itself
/// (summed over workers).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadStats {
    /// Frames upcalled to the engine.
    pub upcalls: u64,
    /// Flows given kernel entries.
    pub installed: u64,
    /// Kernel flow-table requests carried out.
    pub applied: u64,
    /// Requests refused because the kernel flow table was full.
    pub refused_full: u64,
    /// Requests that failed otherwise.
    pub failed: u64,
    /// Kernel entries removed because the engine no longer owned them.
    pub reconciled: u64,
    /// Packets the kernel forwarded (GSO segments counted).
    pub kernel_forwarded: u64,
    /// Their bytes.
    pub kernel_forwarded_bytes: u64,
    /// Packets the kernel dropped for denied flows.
    pub kernel_dropped: u64,
    /// The kernel program's upcalls by reason: (reason, frames).
    pub kernel_upcalls: Vec<(String, u64)>,
    /// Frames the kernel program dropped because an upcall or a redirect failed, or the
    /// interface was unknown.
    pub kernel_failures: Vec<(String, u64)>,
    /// Upcalled frames dropped on the way to the engine (the upcall veth's queue full).
    #[serde(default)]
    pub upcall_queue_drops: u64,
}

/// One port's traffic and decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    /// The container's name, or `gateway`.
    pub name: String,
    /// The dataplane port id.
    pub port: u16,
    /// The host-side interface.
    pub ifname: String,
    /// The Docker network the port is on.
    #[serde(default)]
    pub network: String,
    /// Frames and bytes the container sent (received by the dataplane).
    pub rx_packets: u64,
    /// Bytes of those.
    pub rx_bytes: u64,
    /// Frames and bytes delivered to the container.
    pub tx_packets: u64,
    /// Bytes of those.
    pub tx_bytes: u64,
    /// Policy decisions Accept for flows it started.
    pub accepted: u64,
    /// Policy decisions Drop/Reject for flows it started.
    pub denied: u64,
    /// Denials audit mode did not enforce.
    pub audit_denied: u64,
    /// Live flows it started.
    pub flows: u64,
    /// Its frames dropped, by reason.
    pub drops: Vec<(String, u64)>,
}

/// One worker thread.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStats {
    /// Its index.
    pub worker: usize,
    /// Frames received by its ports so far (rates come from two readings).
    pub rx_packets: u64,
    /// Seconds it slept waiting for frames so far (its busy share is the rest of the time).
    pub sleep_seconds: f64,
    /// Frames in each place: (place, frames).
    pub frames: Vec<(String, u64)>,
}

/// The flow table, summed over workers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// Live entries.
    pub entries: u64,
    /// Inserted so far.
    pub inserts: u64,
    /// Pushed out for room.
    pub evictions: u64,
    /// Timed out.
    pub expirations: u64,
    /// Re-decided after a swap.
    pub redecisions: u64,
}

/// Policy swaps.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SwapStats {
    /// Swaps done (a new policy in force).
    pub count: u64,
    /// Sum of their durations (build + hand-over), seconds.
    pub seconds_sum: f64,
    /// The last one's duration, seconds.
    pub last_seconds: f64,
}

/// One user module.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// Its name (file name).
    pub name: String,
    /// Its size, bytes.
    pub bytes: usize,
    /// Audit: its verdicts are counted, never enforced.
    pub audit: bool,
    /// Records it was asked about.
    pub records: u64,
    /// Accept / Drop / Reject / Continue decisions.
    pub decisions: [u64; 4],
    /// Denials not enforced (audit).
    pub audit_denied: u64,
    /// Traps and timeouts (each answered fail-closed).
    pub faults: u64,
}

/// Query of `GET /v1/policies` uploads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLoadQuery {
    /// The module's name (its file name).
    pub name: String,
    /// Load it in audit mode.
    #[serde(default)]
    pub audit: bool,
}

/// Body of `PUT /v1/audit` and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditState {
    /// Audit mode on.
    pub audit: bool,
}

/// Query of `GET /v1/monitor`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorQuery {
    /// Denials only.
    #[serde(default)]
    pub drops: bool,
    /// Only events where this container is the source or the destination.
    pub container: Option<String>,
}

/// One line of the monitor stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MonitorLine {
    /// A verdict.
    Verdict(Box<VerdictLine>),
    /// Events the dataplane could not deliver since the last line (rate limit, full ring,
    /// a slow reader).
    Lost {
        /// How many.
        events: u64,
    },
}

/// One verdict event, with names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictLine {
    /// Wall clock, ns since the epoch.
    pub at_unix_ns: u64,
    /// accept / drop / reject.
    pub verdict: String,
    /// Not enforced: audit mode.
    pub audit: bool,
    /// Why it was dropped (`policy_drop`, `flow_denied`, …), if it was.
    pub reason: Option<String>,
    /// Source container (or `gateway`), by the ingress port.
    pub from: String,
    /// Destination container (or `gateway`), by the egress port.
    pub to: String,
    /// Source address (and port, for TCP and UDP), as plain text for scripts.
    pub src: String,
    /// Destination address (and port).
    pub dst: String,
    /// tcp / udp / icmp / a number.
    pub proto: String,
    /// The deciding rule's id, none for the default.
    pub rule: Option<u32>,
    /// The deciding rule's text.
    pub rule_text: String,
    /// Policy generation that decided.
    pub generation: u64,
}

/// Query of `GET /v1/capture`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureQuery {
    /// The container (or `gateway`) whose port to capture.
    pub port: String,
    /// Frames to capture.
    pub count: usize,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Give up after this long without the count reached, ms.
    pub timeout_ms: u64,
}

/// One line of the capture stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CaptureLine {
    /// A frame the port received from its container (`in`) or sent to it (`out`).
    Frame {
        /// `in` or `out`.
        direction: String,
        /// Wall clock, ns since the epoch.
        at_unix_ns: u64,
        /// The frame's length on the wire.
        orig_len: u32,
        /// The captured bytes (up to the snaplen).
        data: Vec<u8>,
    },
    /// A policy verdict for a flow through the port (from the monitor's events).
    Verdict(Box<VerdictLine>),
    /// The capture ended.
    Done {
        /// Frames captured.
        captured: u64,
        /// Frames the port saw but no capture slot was free for.
        missed: u64,
    },
}
