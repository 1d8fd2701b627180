//! The Prometheus endpoint (`run --metrics 127.0.0.1:9477`, off by default): a plain-data
//! [`MetricsInput`] that the runtime fills from its counters, [`render`] that turns one into
//! the text exposition, and [`serve`] that answers `GET /metrics` with it.
//!
//! Why a snapshot struct rather than live metric objects: the numbers already live in the
//! dataplane's per-worker counters, the flow table and the runtime's histograms. Mirroring
//! them into prometheus-client atomics as they change would put a second set of counters on
//! the packet path; instead a scrape asks for one snapshot and builds a fresh registry from
//! it. This module knows nothing about where the numbers come from, and the gatherer nothing
//! about Prometheus.
//!
//! Naming follows Prometheus' conventions: every name starts with `bridgewall_`, counters end
//! in `_total`, durations are in seconds and sizes in bytes, label names are snake_case. The
//! names, their types and labels:
//!
//! | name | type | labels |
//! | --- | --- | --- |
//! | `bridgewall_build_info` | gauge (1) | `version` |
//! | `bridgewall_container_packets_total` | counter | `container`, `network`, `direction` |
//! | `bridgewall_container_bytes_total` | counter | `container`, `network`, `direction` |
//! | `bridgewall_container_verdicts_total` | counter | `container`, `network`, `verdict` |
//! | `bridgewall_container_audit_denials_total` | counter | `container`, `network` |
//! | `bridgewall_container_drops_total` | counter | `container`, `network`, `reason` |
//! | `bridgewall_drops_total` | counter | `reason` |
//! | `bridgewall_rule_decisions_total` | counter | `rule`, `chain`, `target` |
//! | `bridgewall_flow_table_entries` | gauge | |
//! | `bridgewall_flow_table_inserts_total` | counter | |
//! | `bridgewall_flow_table_evictions_total` | counter | |
//! | `bridgewall_flow_table_expirations_total` | counter | |
//! | `bridgewall_policy_evaluation_duration_seconds` | histogram | |
//! | `bridgewall_policy_swaps_total` | counter | |
//! | `bridgewall_policy_swap_duration_seconds` | histogram | |
//! | `bridgewall_policy_generation` | gauge | |
//! | `bridgewall_docker_sync_latency_seconds` | histogram | |
//! | `bridgewall_umem_frames` | gauge | `worker`, `place` |
//! | `bridgewall_verdict_events_emitted_total` | counter | |
//! | `bridgewall_verdict_events_rate_limited_total` | counter | |
//! | `bridgewall_verdict_events_lost_total` | counter | |
//! | `bridgewall_audit_mode` | gauge (0/1) | |
//!
//! A labelled family with no entries is left out (no `HELP`/`TYPE` lines); the unlabelled
//! ones are always there, zero when the gatherer has nothing.
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text, text};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

/// The Prometheus text format's content type (version 0.0.4), what [`render`] produces and
/// what plain `curl` or an older Prometheus gets.
const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The OpenMetrics text format's content type, what [`render_openmetrics`] produces and what
/// a Prometheus that asks for it (its default `Accept` prefers it) gets.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Bucket bounds in nanoseconds for the policy evaluation histogram: one evaluation is a
/// Wasm call on the packet path, a few hundred nanoseconds when all is well, so the buckets
/// are fine below 10 µs and stop at 1 ms (slower is pathological; +Inf catches it).
pub const POLICY_EVAL_BOUNDS_NS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Bucket bounds in nanoseconds for control-plane durations (policy swaps, Docker sync):
/// from 100 µs to 10 s, since compiling and swapping a policy or turning a Docker event into
/// a snapshot takes milliseconds, and the budget for the latter is 100 ms.
pub const CONTROL_BOUNDS_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Everything one scrape exposes, as plain numbers taken at one moment.
///
/// The gatherer (the runtime behind the control socket) fills it; [`render`] turns it into
/// the exposition. Counters here are totals since bridgewall started (Prometheus computes the
/// rates), gauges are values now.
#[derive(Clone, Debug, Default)]
pub struct MetricsInput {
    /// Per container: traffic, verdicts and drops (`bridgewall_container_*`).
    pub containers: Vec<ContainerMetrics>,
    /// All drops by reason, including those no container can be charged with (unknown port,
    /// malformed frames): `(reason in snake_case, count)` → `bridgewall_drops_total{reason}`.
    pub drops: Vec<(String, u64)>,
    /// Per rule: how many packets got its decision (`bridgewall_rule_decisions_total`).
    pub rules: Vec<RuleMetrics>,
    /// The flow table's size and churn (`bridgewall_flow_table_*`).
    pub flows: FlowMetrics,
    /// How long one policy evaluation takes (`bridgewall_policy_evaluation_duration_seconds`).
    pub policy_evaluation: LatencyHistogram,
    /// Policy swaps done since start (`bridgewall_policy_swaps_total`).
    pub policy_swaps: u64,
    /// How long a swap takes, from its start to the new policy in force in every worker
    /// (`bridgewall_policy_swap_duration_seconds`).
    pub policy_swap_duration: LatencyHistogram,
    /// The generation of the policy in force (`bridgewall_policy_generation`): lets a
    /// dashboard mark when the policy changed.
    pub policy_generation: u64,
    /// Docker event → snapshot published (`bridgewall_docker_sync_latency_seconds`).
    pub docker_sync: LatencyHistogram,
    /// Where the UMEM frames are now, per worker and place (`bridgewall_umem_frames`).
    pub umem: Vec<UmemFrames>,
    /// The verdict event stream's bookkeeping (`bridgewall_verdict_events_*_total`).
    pub verdict_events: VerdictEventMetrics,
    /// Whether audit mode is on, denials only logged (`bridgewall_audit_mode`, 0 or 1).
    pub audit_mode: bool,
    /// The tiered datapath's upcalls, kernel entries and kernel-forwarded traffic
    /// (`bridgewall_offload_*`; zeros in the AF_XDP datapath).
    pub offload: crate::control::api::OffloadStats,
}

/// One container's numbers. Traffic is counted on the container's port as the dataplane
/// sees it: `rx` is what it received from the container (the container sent it), `tx` what
/// it queued to the container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMetrics {
    /// The container's name (label `container`).
    pub name: String,
    /// The Docker network it is on (label `network`).
    pub network: String,
    /// Frames received from the container (`direction="rx"`).
    pub rx_packets: u64,
    /// Bytes received from the container (`direction="rx"`).
    pub rx_bytes: u64,
    /// Frames queued to the container (`direction="tx"`).
    pub tx_packets: u64,
    /// Bytes queued to the container (`direction="tx"`).
    pub tx_bytes: u64,
    /// Policy decisions that forwarded a packet of this container (`verdict="forward"`).
    pub forwarded: u64,
    /// Policy decisions that denied one (`verdict="deny"`).
    pub denied: u64,
    /// Packets the policy would have denied but audit mode let through
    /// (`bridgewall_container_audit_denials_total`); separate from the verdicts so that
    /// their sum stays the number of decisions.
    pub audit_denied: u64,
    /// This container's drops by reason: `(reason in snake_case, count)`.
    pub drops: Vec<(String, u64)>,
}

/// One rule's decision count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleMetrics {
    /// The rule's short id, `u3` for the user's third rule, `d12` for Docker's twelfth
    /// (label `rule`): short, stable while the rule set is, and what `bridgewall rules` shows.
    pub rule: String,
    /// The chain it is in, `user` or `docker` (label `chain`).
    pub chain: String,
    /// Its target, `ACCEPT`, `DROP`, `REJECT`, … (label `target`), so drops per rule are
    /// `bridgewall_rule_decisions_total{target="DROP"}`.
    pub target: String,
    /// Packets that got this rule's decision.
    pub packets: u64,
}

/// The flow table's size and churn.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowMetrics {
    /// Entries now (`bridgewall_flow_table_entries`).
    pub entries: u64,
    /// Flows inserted since start (`bridgewall_flow_table_inserts_total`).
    pub inserts: u64,
    /// Live flows pushed out to make room (`bridgewall_flow_table_evictions_total`): a
    /// rising rate means the table is too small.
    pub evictions: u64,
    /// Flows removed because they went idle (`bridgewall_flow_table_expirations_total`).
    pub expirations: u64,
}

/// How many UMEM frames sit in one place of one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UmemFrames {
    /// The worker's index (label `worker`).
    pub worker: usize,
    /// Where the frames are (label `place`): `free`, `fill`, `rx`, `tx`, `completion` or
    /// `in_flight`. Summed over places, a worker's frames are constant; a place that keeps
    /// growing is a leak or a stuck ring.
    pub place: String,
    /// Frames there now.
    pub frames: u64,
}

/// The verdict event stream's bookkeeping (`bridgewall events`, the audit log).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerdictEventMetrics {
    /// Events handed to subscribers (`bridgewall_verdict_events_emitted_total`).
    pub emitted: u64,
    /// Events not made because of the rate limit
    /// (`bridgewall_verdict_events_rate_limited_total`).
    pub rate_limited: u64,
    /// Events made but lost on the way, a full queue or a slow subscriber
    /// (`bridgewall_verdict_events_lost_total`).
    pub lost: u64,
}

/// A latency distribution as pre-counted buckets, in nanoseconds; exposed as a Prometheus
/// histogram in seconds.
///
/// Why buckets and not quantiles: buckets add up across scrapes and instances, quantiles do
/// not, and prometheus-client has no summary type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// `(upper bound in ns, count)`: the count of samples above the previous bound and at
    /// most this one (not cumulative; [`render`] makes it so). `u64::MAX` stands for +Inf;
    /// one is added if missing. Order does not matter and equal bounds are merged.
    pub buckets: Vec<(u64, u64)>,
    /// The sum of all samples, in ns.
    pub sum_ns: u64,
}

impl LatencyHistogram {
    /// Empty buckets at `bounds_ns` plus +Inf, ready for [`LatencyHistogram::observe`].
    pub fn with_bounds(bounds_ns: &[u64]) -> Self {
        let mut buckets: Vec<(u64, u64)> = bounds_ns.iter().map(|&b| (b, 0)).collect();
        buckets.sort_unstable();
        buckets.dedup();
        if buckets.last().is_none_or(|&(b, _)| b != u64::MAX) {
            buckets.push((u64::MAX, 0));
        }
        Self { buckets, sum_ns: 0 }
    }

    /// Counts one sample of `ns` nanoseconds in the smallest bucket whose bound is at least
    /// `ns` (Prometheus' `le`), adding a +Inf bucket if none is.
    pub fn observe(&mut self, ns: u64) {
        self.observe_n(ns, 1);
    }

    fn observe_n(&mut self, ns: u64, n: u64) {
        let slot = self
            .buckets
            .iter_mut()
            .filter(|(bound, _)| *bound >= ns)
            .min_by_key(|(bound, _)| *bound);
        match slot {
            Some((_, count)) => *count = count.saturating_add(n),
            None => self.buckets.push((u64::MAX, n)),
        }
        self.sum_ns = self.sum_ns.saturating_add(ns.saturating_mul(n));
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |sum, &(_, count)| sum.saturating_add(count))
    }

    /// Re-buckets an HDR histogram (what the runtime and the Docker tracker record latencies
    /// in) whose values are in units of `unit_ns` nanoseconds (1,000 for µs) at `bounds_ns`.
    ///
    /// The HDR histogram only knows each value to its precision: a value is put in a bucket
    /// by the lowest value it stands for and added to the sum by its middle one.
    pub fn from_hdr(h: &hdrhistogram::Histogram<u64>, unit_ns: u64, bounds_ns: &[u64]) -> Self {
        let mut out = Self::with_bounds(bounds_ns);
        for v in h.iter_recorded() {
            let value = v.value_iterated_to();
            let n = v.count_since_last_iteration();
            let low = h.lowest_equivalent(value).saturating_mul(unit_ns);
            let mid = h.median_equivalent(value).saturating_mul(unit_ns);
            out.observe_n(low, n);
            // `observe_n` added `low × n`; the sum should use the middle of the range.
            out.sum_ns = out
                .sum_ns
                .saturating_sub(low.saturating_mul(n))
                .saturating_add(mid.saturating_mul(n));
        }
        out
    }

    /// The histogram as prometheus-client encodes it: sorted non-cumulative buckets in
    /// seconds ending with +Inf, the count, the sum in seconds.
    fn to_const(&self) -> ConstHistogram {
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for &(bound, count) in &self.buckets {
            let slot = merged.entry(bound).or_default();
            *slot = slot.saturating_add(count);
        }
        merged.entry(u64::MAX).or_default();
        let buckets = merged
            .into_iter()
            .map(|(bound, count)| (ns_to_seconds(bound), count))
            .collect();
        ConstHistogram {
            sum: self.sum_ns as f64 / 1e9,
            count: self.count(),
            buckets,
        }
    }
}

/// Nanoseconds to seconds, `u64::MAX` to +Inf.
fn ns_to_seconds(ns: u64) -> f64 {
    if ns == u64::MAX {
        f64::INFINITY
    } else {
        ns as f64 / 1e9
    }
}

/// Why the endpoint could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen for metrics on {addr}: {error}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause (in the message, so not also a `source()`).
        error: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("the metrics endpoint on {} failed: {error}", show_addr(.addr))]
    Serve {
        /// The address it listened on, if the socket could tell.
        addr: Option<SocketAddr>,
        /// The cause (in the message, so not also a `source()`).
        error: std::io::Error,
    },
}

fn show_addr(addr: &Option<SocketAddr>) -> String {
    addr.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string())
}

/// The exposition of `input` in the Prometheus text format (version 0.0.4), the format every
/// Prometheus-compatible scraper reads and the one [`serve`] answers with unless the client
/// asks for OpenMetrics.
pub fn render(input: &MetricsInput) -> Result<String, std::fmt::Error> {
    let registry = registry(input);
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The exposition of `input` in the OpenMetrics text format (`# TYPE` without `_total`,
/// `# UNIT` lines, `# EOF`), for scrapers that ask for it: the same metrics as [`render`].
pub fn render_openmetrics(input: &MetricsInput) -> Result<String, std::fmt::Error> {
    let registry = registry(input);
    let mut out = String::new();
    text::encode(&mut out, &registry)?;
    Ok(out)
}

/// Serves `GET /metrics` on `addr` until an error, rendering what `source` returns at each
/// scrape; any other path is 404. Cancel it by dropping the future (or aborting its task).
///
/// `source` is called on the server's task, so it must be cheap and must not block: it
/// should copy numbers that are already gathered.
pub async fn serve(
    addr: SocketAddr,
    source: impl Fn() -> MetricsInput + Send + Sync + 'static,
) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| MetricsError::Bind { addr, error })?;
    serve_on(listener, source, std::future::pending()).await
}

/// As [`serve`], on a listener the caller bound (a test binds port 0), until `shutdown`
/// completes; then it stops accepting and returns once open scrapes are answered.
pub async fn serve_on(
    listener: TcpListener,
    source: impl Fn() -> MetricsInput + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetricsError> {
    let addr = listener.local_addr().ok();
    if let Some(addr) = addr {
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    axum::serve(listener, router(Arc::new(source)))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|error| MetricsError::Serve { addr, error })
}

/// What the handler calls for each scrape.
type Source = Arc<dyn Fn() -> MetricsInput + Send + Sync>;

fn router(source: Source) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(source)
}

async fn scrape(State(source): State<Source>, headers: HeaderMap) -> Response {
    let input = source();
    let openmetrics = wants_openmetrics(&headers);
    let (rendered, content_type) = if openmetrics {
        (render_openmetrics(&input), OPENMETRICS_CONTENT_TYPE)
    } else {
        (render(&input), PROMETHEUS_CONTENT_TYPE)
    };
    match rendered {
        Ok(body) => ([(header::CONTENT_TYPE, content_type)], body).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "bridgewall: rendering the metrics failed\n",
        )
            .into_response(),
    }
}

/// Whether the client's `Accept` header ranks OpenMetrics text above the Prometheus text
/// format: a Prometheus server does, `curl` (`*/*`, a tie) does not.
fn wants_openmetrics(headers: &HeaderMap) -> bool {
    let (mut openmetrics, mut plain) = (0.0f32, 0.0f32);
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let (om, pt) = match media.as_str() {
                "application/openmetrics-text" => (true, false),
                "text/plain" => (false, true),
                "application/*" => (true, false),
                "text/*" => (false, true),
                "*/*" => (true, true),
                _ => (false, false),
            };
            if om {
                openmetrics = openmetrics.max(q);
            }
            if pt {
                plain = plain.max(q);
            }
        }
    }
    openmetrics > plain
}

/// A label set: names are fixed, values come from the input.
type Labels = Vec<(&'static str, String)>;

/// A labelled family of constant metrics: prometheus-client's `Family` makes metrics on
/// demand and needs a constructor, which constant ones do not have.
#[derive(Debug)]
struct ConstFamily<M> {
    samples: Vec<(Labels, M)>,
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for ConstFamily<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.samples {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// Merges samples with equal label sets (adding them: two entries for one container would
/// otherwise be a duplicate series, which scrapers reject) and sorts them, so a scrape's
/// output is stable.
fn merged(samples: impl IntoIterator<Item = (Labels, u64)>) -> Vec<(Labels, u64)> {
    let mut map: BTreeMap<Labels, u64> = BTreeMap::new();
    for (labels, value) in samples {
        let slot = map.entry(labels).or_default();
        *slot = slot.saturating_add(value);
    }
    map.into_iter().collect()
}

fn counters(samples: impl IntoIterator<Item = (Labels, u64)>) -> ConstFamily<ConstCounter<u64>> {
    ConstFamily {
        samples: merged(samples)
            .into_iter()
            .map(|(labels, v)| (labels, ConstCounter::new(v)))
            .collect(),
    }
}

fn gauges(samples: impl IntoIterator<Item = (Labels, u64)>) -> ConstFamily<ConstGauge<u64>> {
    ConstFamily {
        samples: merged(samples)
            .into_iter()
            .map(|(labels, v)| (labels, ConstGauge::new(v)))
            .collect(),
    }
}

/// A histogram from pre-counted buckets; prometheus-client's own `Histogram` only counts
/// observations it is given one by one.
#[derive(Debug)]
struct ConstHistogram {
    /// Sum of the samples, seconds.
    sum: f64,
    /// Samples.
    count: u64,
    /// `(upper bound in seconds, non-cumulative count)`, sorted, ending with +Inf.
    buckets: Vec<(f64, u64)>,
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// A container's labels, plus `extra` (`direction`, `verdict` or `reason`).
fn per_container(c: &ContainerMetrics, extra: Option<(&'static str, &str)>) -> Labels {
    let mut labels = vec![
        ("container", c.name.clone()),
        ("network", c.network.clone()),
    ];
    if let Some((k, v)) = extra {
        labels.push((k, v.to_owned()));
    }
    labels
}

/// A fresh registry holding `input`'s numbers. Names are given without the prefix, the unit
/// or `_total`: the registry and the encoder add them, so both formats get them right.
fn registry(input: &MetricsInput) -> Registry {
    let mut r = Registry::with_prefix("bridgewall");

    r.register(
        "build",
        "The running bridgewall's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION").to_owned())]),
    );

    let cs = &input.containers;
    r.register(
        "container_packets",
        "Frames on a container's port: rx from the container, tx to it",
        counters(cs.iter().flat_map(|c| {
            [
                (per_container(c, Some(("direction", "rx"))), c.rx_packets),
                (per_container(c, Some(("direction", "tx"))), c.tx_packets),
            ]
        })),
    );
    r.register_with_unit(
        "container",
        "Bytes on a container's port: rx from the container, tx to it",
        Unit::Bytes,
        counters(cs.iter().flat_map(|c| {
            [
                (per_container(c, Some(("direction", "rx"))), c.rx_bytes),
                (per_container(c, Some(("direction", "tx"))), c.tx_bytes),
            ]
        })),
    );
    r.register(
        "container_verdicts",
        "Policy decisions for a container's packets, by verdict",
        counters(cs.iter().flat_map(|c| {
            [
                (per_container(c, Some(("verdict", "forward"))), c.forwarded),
                (per_container(c, Some(("verdict", "deny"))), c.denied),
            ]
        })),
    );
    r.register(
        "container_audit_denials",
        "A container's packets the policy would have denied, let through by audit mode",
        counters(cs.iter().map(|c| (per_container(c, None), c.audit_denied))),
    );
    r.register(
        "container_drops",
        "A container's dropped packets, by reason",
        counters(cs.iter().flat_map(|c| {
            c.drops
                .iter()
                .map(move |(reason, n)| (per_container(c, Some(("reason", reason))), *n))
        })),
    );
    r.register(
        "drops",
        "Dropped packets by reason, all ports (including those no container is charged with)",
        counters(
            input
                .drops
                .iter()
                .map(|(reason, n)| (vec![("reason", reason.clone())], *n)),
        ),
    );
    r.register(
        "rule_decisions",
        "Packets that got a rule's decision (rule u3: the user's third, d12: Docker's twelfth)",
        counters(input.rules.iter().map(|rule| {
            (
                vec![
                    ("rule", rule.rule.clone()),
                    ("chain", rule.chain.clone()),
                    ("target", rule.target.clone()),
                ],
                rule.packets,
            )
        })),
    );

    let flows = &input.flows;
    r.register(
        "flow_table_entries",
        "Flows in the flow table now",
        ConstGauge::new(flows.entries),
    );
    r.register(
        "flow_table_inserts",
        "Flows inserted into the flow table",
        ConstCounter::new(flows.inserts),
    );
    r.register(
        "flow_table_evictions",
        "Live flows pushed out of the full flow table to make room",
        ConstCounter::new(flows.evictions),
    );
    r.register(
        "flow_table_expirations",
        "Flows removed from the flow table after going idle",
        ConstCounter::new(flows.expirations),
    );

    let o = &input.offload;
    for (name, help, v) in [
        (
            "offload_upcalls",
            "Frames the tiered datapath's kernel program upcalled to the engine",
            o.upcalls,
        ),
        (
            "offload_flows_installed",
            "Flows given kernel entries by the tiered datapath",
            o.installed,
        ),
        (
            "offload_requests_refused",
            "Kernel flow-table requests refused because the table was full",
            o.refused_full,
        ),
        (
            "offload_requests_failed",
            "Kernel flow-table requests that failed otherwise",
            o.failed,
        ),
        (
            "offload_kernel_forwarded_packets",
            "Packets the kernel forwarded for offloaded flows (GSO segments counted)",
            o.kernel_forwarded,
        ),
        (
            "offload_kernel_forwarded_bytes",
            "Bytes the kernel forwarded for offloaded flows",
            o.kernel_forwarded_bytes,
        ),
        (
            "offload_kernel_dropped_packets",
            "Packets the kernel dropped for denied flows",
            o.kernel_dropped,
        ),
        (
            "offload_upcall_queue_drops",
            "Upcalled frames dropped on the way to the engine (upcall veth queue full)",
            o.upcall_queue_drops,
        ),
    ] {
        r.register(name, help, ConstCounter::new(v));
    }
    r.register(
        "offload_kernel_upcalls",
        "Frames the kernel program upcalled, by reason",
        counters(
            o.kernel_upcalls
                .iter()
                .map(|(reason, n)| (vec![("reason", reason.clone())], *n)),
        ),
    );

    r.register_with_unit(
        "policy_evaluation_duration",
        "Time one policy evaluation takes",
        Unit::Seconds,
        input.policy_evaluation.to_const(),
    );
    r.register(
        "policy_swaps",
        "Policy swaps done",
        ConstCounter::new(input.policy_swaps),
    );
    r.register_with_unit(
        "policy_swap_duration",
        "Time from a policy swap's start to the new policy in force in every worker",
        Unit::Seconds,
        input.policy_swap_duration.to_const(),
    );
    r.register(
        "policy_generation",
        "Generation of the policy in force",
        ConstGauge::new(input.policy_generation),
    );
    r.register_with_unit(
        "docker_sync_latency",
        "Time from a Docker event to the snapshot that reflects it",
        Unit::Seconds,
        input.docker_sync.to_const(),
    );

    r.register(
        "umem_frames",
        "UMEM frames per worker and place (free, fill, rx, tx, completion, in_flight)",
        gauges(input.umem.iter().map(|u| {
            (
                vec![("worker", u.worker.to_string()), ("place", u.place.clone())],
                u.frames,
            )
        })),
    );

    let events = &input.verdict_events;
    r.register(
        "verdict_events_emitted",
        "Verdict events handed to subscribers",
        ConstCounter::new(events.emitted),
    );
    r.register(
        "verdict_events_rate_limited",
        "Verdict events not made because of the rate limit",
        ConstCounter::new(events.rate_limited),
    );
    r.register(
        "verdict_events_lost",
        "Verdict events lost on the way to subscribers",
        ConstCounter::new(events.lost),
    );
    r.register(
        "audit_mode",
        "1 while audit mode is on (denials logged, not enforced), else 0",
        ConstGauge::new(u64::from(input.audit_mode)),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_parse::{Scrape, Value};
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn parse(body: &str) -> Scrape {
        Scrape::parse(body.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The value of the one sample called `name` with exactly the labels `pairs`.
    fn value(scrape: &Scrape, name: &str, pairs: &[(&str, &str)]) -> Value {
        let want = labels(pairs);
        let found: Vec<_> = scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && *s.labels == want)
            .collect();
        assert_eq!(found.len(), 1, "{name} {pairs:?}: {found:?}");
        found[0].value.clone()
    }

    fn counter(scrape: &Scrape, name: &str, pairs: &[(&str, &str)]) -> f64 {
        match value(scrape, name, pairs) {
            Value::Counter(v) => v,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(scrape: &Scrape, name: &str, pairs: &[(&str, &str)]) -> f64 {
        match value(scrape, name, pairs) {
            Value::Gauge(v) => v,
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    fn untyped(scrape: &Scrape, name: &str) -> f64 {
        match value(scrape, name, &[]) {
            Value::Untyped(v) => v,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn container(name: &str, base: u64) -> ContainerMetrics {
        ContainerMetrics {
            name: name.to_owned(),
            network: "bridge".to_owned(),
            rx_packets: base + 1,
            rx_bytes: base + 2,
            tx_packets: base + 3,
            tx_bytes: base + 4,
            forwarded: base + 5,
            denied: base + 6,
            audit_denied: base + 7,
            drops: vec![
                ("policy_drop".to_owned(), base + 8),
                ("spoofed_source".to_owned(), base + 9),
            ],
        }
    }

    fn sample_input() -> MetricsInput {
        let mut eval = LatencyHistogram::with_bounds(&[1_000, 250, 10_000]);
        for ns in [100, 250, 251, 900, 5_000, 20_000] {
            eval.observe(ns);
        }
        MetricsInput {
            containers: vec![container("web", 100), container("db", 200)],
            drops: vec![
                ("policy_drop".to_owned(), 400),
                ("unknown_port".to_owned(), 3),
                // A duplicate reason: merged, not a duplicate series.
                ("unknown_port".to_owned(), 2),
            ],
            rules: vec![
                RuleMetrics {
                    rule: "u3".to_owned(),
                    chain: "user".to_owned(),
                    target: "DROP".to_owned(),
                    packets: 17,
                },
                RuleMetrics {
                    rule: "d12".to_owned(),
                    chain: "docker".to_owned(),
                    target: "ACCEPT".to_owned(),
                    packets: 9000,
                },
            ],
            flows: FlowMetrics {
                entries: 42,
                inserts: 1000,
                evictions: 7,
                expirations: 951,
            },
            policy_evaluation: eval,
            policy_swaps: 5,
            policy_swap_duration: LatencyHistogram {
                // Unsorted, with no +Inf: render sorts and adds it.
                buckets: vec![(10_000_000, 2), (1_000_000, 3)],
                sum_ns: 15_000_000,
            },
            policy_generation: 6,
            docker_sync: LatencyHistogram {
                buckets: vec![(50_000_000, 4), (u64::MAX, 1)],
                sum_ns: 400_000_000,
            },
            umem: vec![
                UmemFrames {
                    worker: 0,
                    place: "free".to_owned(),
                    frames: 1500,
                },
                UmemFrames {
                    worker: 0,
                    place: "fill".to_owned(),
                    frames: 548,
                },
                UmemFrames {
                    worker: 1,
                    place: "in_flight".to_owned(),
                    frames: 3,
                },
            ],
            verdict_events: VerdictEventMetrics {
                emitted: 11,
                rate_limited: 12,
                lost: 13,
            },
            audit_mode: true,
            offload: crate::control::api::OffloadStats::default(),
        }
    }

    #[test]
    fn renders_what_a_prometheus_parser_reads_back() {
        let body = render(&sample_input()).unwrap();
        let scrape = parse(&body);

        for (c, base) in [("web", 100.0), ("db", 200.0)] {
            let at = |extra: (&'static str, &'static str)| {
                vec![("container", c), ("network", "bridge"), extra]
            };
            let name = "bridgewall_container_packets_total";
            assert_eq!(counter(&scrape, name, &at(("direction", "rx"))), base + 1.0);
            assert_eq!(counter(&scrape, name, &at(("direction", "tx"))), base + 3.0);
            let name = "bridgewall_container_bytes_total";
            assert_eq!(counter(&scrape, name, &at(("direction", "rx"))), base + 2.0);
            assert_eq!(counter(&scrape, name, &at(("direction", "tx"))), base + 4.0);
            let name = "bridgewall_container_verdicts_total";
            assert_eq!(
                counter(&scrape, name, &at(("verdict", "forward"))),
                base + 5.0
            );
            assert_eq!(counter(&scrape, name, &at(("verdict", "deny"))), base + 6.0);
            assert_eq!(
                counter(
                    &scrape,
                    "bridgewall_container_audit_denials_total",
                    &[("container", c), ("network", "bridge")]
                ),
                base + 7.0
            );
            let name = "bridgewall_container_drops_total";
            assert_eq!(
                counter(&scrape, name, &at(("reason", "policy_drop"))),
                base + 8.0
            );
            assert_eq!(
                counter(&scrape, name, &at(("reason", "spoofed_source"))),
                base + 9.0
            );
        }
        let drops = "bridgewall_drops_total";
        assert_eq!(counter(&scrape, drops, &[("reason", "policy_drop")]), 400.0);
        assert_eq!(counter(&scrape, drops, &[("reason", "unknown_port")]), 5.0);
        let rules = "bridgewall_rule_decisions_total";
        assert_eq!(
            counter(
                &scrape,
                rules,
                &[("rule", "u3"), ("chain", "user"), ("target", "DROP")]
            ),
            17.0
        );
        assert_eq!(
            counter(
                &scrape,
                rules,
                &[("rule", "d12"), ("chain", "docker"), ("target", "ACCEPT")]
            ),
            9000.0
        );

        assert_eq!(gauge(&scrape, "bridgewall_flow_table_entries", &[]), 42.0);
        assert_eq!(
            counter(&scrape, "bridgewall_flow_table_inserts_total", &[]),
            1000.0
        );
        assert_eq!(
            counter(&scrape, "bridgewall_flow_table_evictions_total", &[]),
            7.0
        );
        assert_eq!(
            counter(&scrape, "bridgewall_flow_table_expirations_total", &[]),
            951.0
        );
        assert_eq!(counter(&scrape, "bridgewall_policy_swaps_total", &[]), 5.0);
        assert_eq!(gauge(&scrape, "bridgewall_policy_generation", &[]), 6.0);
        let umem = "bridgewall_umem_frames";
        assert_eq!(
            gauge(&scrape, umem, &[("worker", "0"), ("place", "free")]),
            1500.0
        );
        assert_eq!(
            gauge(&scrape, umem, &[("worker", "0"), ("place", "fill")]),
            548.0
        );
        assert_eq!(
            gauge(&scrape, umem, &[("worker", "1"), ("place", "in_flight")]),
            3.0
        );
        assert_eq!(
            counter(&scrape, "bridgewall_verdict_events_emitted_total", &[]),
            11.0
        );
        assert_eq!(
            counter(&scrape, "bridgewall_verdict_events_rate_limited_total", &[]),
            12.0
        );
        assert_eq!(
            counter(&scrape, "bridgewall_verdict_events_lost_total", &[]),
            13.0
        );
        assert_eq!(gauge(&scrape, "bridgewall_audit_mode", &[]), 1.0);
        assert_eq!(
            gauge(
                &scrape,
                "bridgewall_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );

        // Conventions: the prefix on everything; exactly the counters end in `_total`
        // (the parser only types a counter when its `# TYPE` line names the sample).
        for sample in &scrape.samples {
            assert!(
                sample.metric.starts_with("bridgewall_"),
                "{}",
                sample.metric
            );
            assert_eq!(
                matches!(sample.value, Value::Counter(_)),
                sample.metric.ends_with("_total"),
                "{sample:?}"
            );
        }
        // Every series once: merging left no duplicate label sets.
        let mut seen = std::collections::HashSet::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let series = line.rsplit_once(' ').unwrap().0;
            assert!(seen.insert(series.to_owned()), "duplicate series {series}");
        }
    }

    /// The `(le, cumulative count)` pairs of the histogram `name`, checked to be cumulative
    /// and to end with +Inf = `_count`; returns them and the `_sum`.
    fn histogram(scrape: &Scrape, name: &str) -> (Vec<(f64, f64)>, f64) {
        let Value::Histogram(buckets) = value(scrape, name, &[]) else {
            panic!("{name} is not a histogram");
        };
        let pairs: Vec<(f64, f64)> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
        for w in pairs.windows(2) {
            assert!(w[0].0 < w[1].0, "{name}: bounds not increasing: {pairs:?}");
            assert!(w[0].1 <= w[1].1, "{name}: not cumulative: {pairs:?}");
        }
        let last = pairs.last().unwrap();
        assert_eq!(last.0, f64::INFINITY, "{name}");
        assert_eq!(last.1, untyped(scrape, &format!("{name}_count")), "{name}");
        (pairs, untyped(scrape, &format!("{name}_sum")))
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let scrape = parse(&render(&sample_input()).unwrap());

        // Samples 100, 250 | 251, 900 | 5_000 | 20_000 ns at bounds 250 ns, 1 µs, 10 µs.
        let (buckets, sum) = histogram(&scrape, "bridgewall_policy_evaluation_duration_seconds");
        assert_eq!(
            buckets,
            vec![
                (250e-9, 2.0),
                (1e-6, 4.0),
                (10e-6, 5.0),
                (f64::INFINITY, 6.0)
            ]
        );
        assert!((sum - 26_501e-9).abs() < 1e-15, "{sum}");

        let (buckets, sum) = histogram(&scrape, "bridgewall_policy_swap_duration_seconds");
        assert_eq!(
            buckets,
            vec![(0.001, 3.0), (0.01, 5.0), (f64::INFINITY, 5.0)]
        );
        assert_eq!(sum, 0.015);

        let (buckets, sum) = histogram(&scrape, "bridgewall_docker_sync_latency_seconds");
        assert_eq!(buckets, vec![(0.05, 4.0), (f64::INFINITY, 5.0)]);
        assert_eq!(sum, 0.4);
    }

    #[test]
    fn an_empty_input_has_the_scalars_and_no_families() {
        let body = render(&MetricsInput::default()).unwrap();
        let scrape = parse(&body);
        assert_eq!(gauge(&scrape, "bridgewall_audit_mode", &[]), 0.0);
        assert_eq!(counter(&scrape, "bridgewall_policy_swaps_total", &[]), 0.0);
        let (buckets, sum) = histogram(&scrape, "bridgewall_policy_evaluation_duration_seconds");
        assert_eq!(buckets, vec![(f64::INFINITY, 0.0)]);
        assert_eq!(sum, 0.0);
        assert!(!body.contains("bridgewall_container_"), "{body}");
        assert!(!body.contains("bridgewall_umem_frames"), "{body}");
    }

    #[test]
    fn openmetrics_has_the_same_metrics() {
        let body = render_openmetrics(&sample_input()).unwrap();
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("# TYPE bridgewall_container_packets counter\n"));
        assert!(body.contains(
            "# TYPE bridgewall_container_bytes counter\n# UNIT bridgewall_container_bytes bytes\n"
        ));
        assert!(body.contains(
            "bridgewall_container_packets_total{container=\"web\",network=\"bridge\",direction=\"rx\"} 101\n"
        ));
        assert!(body.contains("# UNIT bridgewall_policy_evaluation_duration_seconds seconds\n"));
        assert!(body.contains("bridgewall_policy_swap_duration_seconds_bucket{le=\"+Inf\"} 5\n"));
    }

    #[test]
    fn latency_histogram_helpers() {
        let mut h = LatencyHistogram::with_bounds(&[10, 5, 10]);
        assert_eq!(h.buckets, vec![(5, 0), (10, 0), (u64::MAX, 0)]);
        for ns in [5, 6, 10, 11, u64::MAX] {
            h.observe(ns);
        }
        assert_eq!(h.buckets, vec![(5, 1), (10, 2), (u64::MAX, 2)]);
        assert_eq!(h.count(), 5);
        assert_eq!(h.sum_ns, u64::MAX, "the sum saturates");

        // No bucket big enough: a +Inf one appears.
        let mut bare = LatencyHistogram::default();
        bare.observe(3);
        assert_eq!(bare.buckets, vec![(u64::MAX, 1)]);

        // From an HDR histogram in µs: 1 µs and 900 µs ≤ 1 ms, 20 ms ≤ 25 ms, 2 s beyond.
        let mut hdr = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in [1, 900, 20_000, 2_000_000] {
            hdr.record(us).unwrap();
        }
        let h = LatencyHistogram::from_hdr(&hdr, 1_000, &[1_000_000, 25_000_000, 1_000_000_000]);
        assert_eq!(
            h.buckets,
            vec![
                (1_000_000, 2),
                (25_000_000, 1),
                (1_000_000_000, 0),
                (u64::MAX, 1)
            ]
        );
        let exact = (1 + 900 + 20_000 + 2_000_000) * 1_000u64;
        assert!(
            h.sum_ns.abs_diff(exact) < exact / 1_000,
            "{} vs {exact}",
            h.sum_ns
        );
    }

    #[test]
    fn accept_header_negotiation() {
        let with = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            wants_openmetrics(&headers)
        };
        assert!(!wants_openmetrics(&HeaderMap::new()));
        assert!(!with("*/*"));
        assert!(!with("text/plain;version=0.0.4"));
        // What Prometheus sends.
        assert!(with(
            "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        ));
        assert!(with("application/openmetrics-text; version=1.0.0"));
        assert!(!with("application/openmetrics-text;q=0.1,text/plain;q=0.9"));
    }

    /// One HTTP/1.1 GET to the loopback server: (status line, lower-cased headers, body).
    async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, String, String) {
        assert!(addr.ip().is_loopback());
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let accept = accept
                .map(|a| format!("Accept: {a}\r\n"))
                .unwrap_or_default();
            let request =
                format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            response
        };
        let response = tokio::time::timeout(std::time::Duration::from_secs(10), exchange)
            .await
            .expect("the metrics server answers within 10 s");
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (
            status.to_owned(),
            headers.to_ascii_lowercase(),
            body.to_owned(),
        )
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_on(listener, sample_input, async {
            let _ = stopped.await;
        }));

        let (status, headers, body) = get(addr, "/metrics", None).await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{headers}"
        );
        let scrape = parse(&body);
        assert_eq!(gauge(&scrape, "bridgewall_flow_table_entries", &[]), 42.0);

        let (status, headers, body) = get(
            addr,
            "/metrics",
            Some("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3"),
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{headers}"
        );
        assert!(body.ends_with("# EOF\n"));

        let (status, _, _) = get(addr, "/", None).await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");
        let (status, _, _) = get(addr, "/metrics/x", None).await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        stop.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), server)
            .await
            .expect("the server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_bind_error_names_the_address() {
        let taken = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, MetricsInput::default).await.unwrap_err();
        assert!(matches!(err, MetricsError::Bind { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot listen for metrics on {addr}: ")),
            "{message}"
        );
    }
}
