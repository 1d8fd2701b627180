//! The tracker: connects, reads the full state, follows the event stream, and publishes a
//! [`Snapshot`] whenever what the policy depends on changes. When the engine goes away it
//! reconnects with capped exponential backoff and resyncs; the last published snapshot stays
//! current the whole time, so whoever enforces it never runs without a policy.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::{EventsOptions, InspectContainerOptions, ListContainersOptions};
use futures_util::StreamExt;
use rules_wasm::docker::{BridgeNetwork, ContainerInfo};
use tokio::sync::watch;

use super::parse::{NetworkFacts, ParsedContainer, parse_container, parse_network};
use super::{DockerError, Engine, EngineAddress, TrackerMetrics, connect, host_veth_of};
use crate::netlink::{Netns, Rtnl};
use crate::state::{
    Attachment, BridgeState, PortAllocator, Snapshot, SnapshotCause, SnapshotReceiver, UNPLACED,
};

/// What to follow and how.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The engine.
    pub address: EngineAddress,
    /// Docker's network name (`bridge`, the default network on `docker0`).
    pub network: String,
    /// The namespace the engine's bridge lives in (a `/run/netns` name or a path); `None`
    /// is ours. Tests run the engine in a namespace of their own.
    pub bridge_netns: Option<String>,
    /// Overrides the network's `enable_icc` option.
    pub icc_override: Option<bool>,
    /// First reconnection delay.
    pub backoff_initial: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Dataplane port ids are handed out below this (the dataplane's port table size).
    pub max_ports: usize,
}

impl TrackerConfig {
    /// Follows Docker's default `bridge` network at `address`, with a 100 ms → 5 s backoff.
    pub fn new(address: EngineAddress) -> TrackerConfig {
        TrackerConfig {
            address,
            network: "bridge".into(),
            bridge_netns: None,
            icc_override: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_ports: crate::state::DEFAULT_MAX_PORTS,
        }
    }
}

/// The tracker's connection state, for logs, the CLI and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrackerStatus {
    /// Not connected yet.
    Starting,
    /// Connected, state read, following events.
    Synced {
        /// The engine's version.
        engine_version: String,
        /// The negotiated API version.
        api_version: String,
        /// How many full resyncs so far (1 after the first connection).
        resyncs: u64,
    },
    /// Lost or never reached; retrying.
    Disconnected {
        /// Why.
        error: String,
        /// Consecutive failed attempts.
        attempt: u32,
        /// Delay before the next attempt.
        retry_in: Duration,
    },
}

/// The receiving ends a tracker publishes on.
#[derive(Clone, Debug)]
pub struct TrackerChannels {
    /// Snapshots of the bridge state (`None` until the first sync).
    pub snapshots: SnapshotReceiver,
    /// Connection state.
    pub status: watch::Receiver<TrackerStatus>,
    /// Latency and counters.
    pub metrics: Arc<TrackerMetrics>,
}

/// One container as tracked.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Tracked {
    info: ContainerInfo,
    attachment: Attachment,
}

/// Follows one engine's bridge network. Drive it with [`Tracker::run`].
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    snap_tx: watch::Sender<Option<Arc<Snapshot>>>,
    status_tx: watch::Sender<TrackerStatus>,
    metrics: Arc<TrackerMetrics>,
    ports: PortAllocator,
    net: Option<NetworkFacts>,
    /// By container id.
    containers: BTreeMap<String, Tracked>,
    generation: u64,
    bridge_ns: Option<Rtnl>,
    /// When each tracked container (by id) first appeared in a published snapshot.
    first_published: HashMap<String, SystemTime>,
    /// Start of the current session: start events older than this are replays.
    session_started: SystemTime,
}

impl Tracker {
    /// A tracker and the channels it will publish on.
    pub fn new(cfg: TrackerConfig) -> (Tracker, TrackerChannels) {
        let max_ports = cfg.max_ports;
        let (snap_tx, snapshots) = watch::channel(None);
        let (status_tx, status) = watch::channel(TrackerStatus::Starting);
        let metrics = Arc::new(TrackerMetrics::default());
        let channels = TrackerChannels {
            snapshots,
            status,
            metrics: metrics.clone(),
        };
        let tracker = Tracker {
            cfg,
            snap_tx,
            status_tx,
            metrics,
            ports: PortAllocator::with_limit(max_ports),
            net: None,
            containers: BTreeMap::new(),
            generation: 0,
            bridge_ns: None,
            first_published: HashMap::new(),
            session_started: UNIX_EPOCH,
        };
        (tracker, channels)
    }

    /// Runs forever: connect, resync, follow; on any failure wait (capped exponential
    /// backoff) and start over. Cancel by dropping the future.
    pub async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            let err = self.session(&mut attempt).await;
            TrackerMetrics::bump(&self.metrics.disconnects);
            attempt = attempt.saturating_add(1);
            let retry_in = backoff(self.cfg.backoff_initial, self.cfg.backoff_max, attempt);
            tracing::warn!(
                "Docker tracking: {err}; last known state stays in force; retrying in {retry_in:?}"
            );
            self.status_tx.send_replace(TrackerStatus::Disconnected {
                error: err.to_string(),
                attempt,
                retry_in,
            });
            tokio::time::sleep(retry_in).await;
        }
    }

    /// One connection's life; returns why it ended. `attempt` is reset once synced.
    async fn session(&mut self, attempt: &mut u32) -> DockerError {
        match self.session_inner(attempt).await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(
        &mut self,
        attempt: &mut u32,
    ) -> Result<std::convert::Infallible, DockerError> {
        let engine = connect(&self.cfg.address).await?;
        if self.bridge_ns.is_none() {
            let ns = match &self.cfg.bridge_netns {
                Some(n) => Netns::open(n)?,
                None => Netns::current()?,
            };
            self.bridge_ns = Some(ns.rtnl().await?);
        }
        // Subscribe from a little before the resync: the engine replays what happened
        // since then, so nothing between the listing and the subscription is lost. Replays
        // are harmless (updates are idempotent).
        let since = SystemTime::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(UNIX_EPOCH)
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let filters = HashMap::from([(
            "type".to_string(),
            vec!["container".to_string(), "network".to_string()],
        )]);
        let mut events = engine.docker.events(Some(EventsOptions {
            since: Some(format!("{}.{:09}", since.as_secs(), since.subsec_nanos())),
            until: None,
            filters: Some(filters),
        }));
        self.session_started = SystemTime::now();
        self.resync(&engine).await?;
        *attempt = 0;
        let resyncs = self
            .metrics
            .resyncs
            .load(std::sync::atomic::Ordering::Relaxed);
        self.status_tx.send_replace(TrackerStatus::Synced {
            engine_version: engine.engine_version.clone(),
            api_version: engine.api_version.clone(),
            resyncs,
        });
        tracing::info!(
            "following Docker {} (API {}) at {}: {} containers on {}",
            engine.engine_version,
            engine.api_version,
            engine.address,
            self.containers.len(),
            self.cfg.network
        );
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|source| DockerError::Request {
                what: "GET /events".into(),
                source,
            })?;
            let received = Instant::now();
            TrackerMetrics::bump(&self.metrics.events);
            self.on_event(&engine, &ev, received).await?;
        }
        Err(DockerError::StreamEnded)
    }

    /// Reads everything again and publishes if anything changed.
    async fn resync(&mut self, engine: &Engine) -> Result<(), DockerError> {
        let bridge_ns = self.bridge_ns_ref()?.clone();
        let (net, containers) = read_all(engine, &self.cfg, &bridge_ns, &mut self.ports).await?;
        let live: Vec<&str> = containers
            .values()
            .map(|t| t.attachment.host_ifname.as_str())
            .collect();
        self.ports.retain(&live);
        self.net = Some(net);
        self.containers = containers;
        TrackerMetrics::bump(&self.metrics.resyncs);
        self.publish(SnapshotCause::Resync);
        Ok(())
    }

    fn bridge_ns_ref(&self) -> Result<&Rtnl, DockerError> {
        self.bridge_ns.as_ref().ok_or_else(|| {
            DockerError::Netlink(crate::netlink::NetlinkError::Unexpected {
                op: "Docker tracking".into(),
                msg: "the bridge's namespace is not open".into(),
            })
        })
    }

    async fn on_event(
        &mut self,
        engine: &Engine,
        ev: &EventMessage,
        received: Instant,
    ) -> Result<(), DockerError> {
        let action = ev.action.as_deref().unwrap_or_default();
        // Docker 20.10 sends "exec_start: sh ..." style actions too; the verb is the first word.
        let verb = action.split([':', ' ']).next().unwrap_or_default();
        let actor = ev.actor.as_ref();
        let actor_id = actor.and_then(|a| a.id.clone()).unwrap_or_default();
        let attrs = actor.and_then(|a| a.attributes.clone()).unwrap_or_default();
        let container_id = match ev.typ {
            Some(EventMessageTypeEnum::CONTAINER) => actor_id.clone(),
            Some(EventMessageTypeEnum::NETWORK) => {
                let net = self.net.as_ref();
                let ours = net.is_some_and(|n| n.id == actor_id || n.name == actor_id)
                    || attrs.get("name").map(String::as_str) == Some(self.cfg.network.as_str());
                if !ours {
                    return Ok(());
                }
                match attrs.get("container") {
                    Some(c) => c.clone(),
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        tracing::debug!("event {:?} {verb} {container_id}", ev.typ);
        match (ev.typ, verb) {
            (Some(EventMessageTypeEnum::CONTAINER), "start" | "rename" | "unpause")
            | (Some(EventMessageTypeEnum::NETWORK), "connect") => {
                let bridge_ns = self.bridge_ns_ref()?.clone();
                let found = inspect_one(
                    engine,
                    &self.cfg,
                    self.net.as_ref(),
                    &bridge_ns,
                    &mut self.ports,
                    &container_id,
                )
                .await?;
                let Some(tracked) = found else {
                    return Ok(());
                };
                let event_time = ev
                    .time_nano
                    .and_then(|ns| u64::try_from(ns).ok())
                    .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns));
                if self.containers.get(&container_id) != Some(&tracked) {
                    let name = tracked.info.name.clone();
                    self.containers.insert(container_id.clone(), tracked);
                    self.publish(SnapshotCause::ContainerStarted { name });
                }
                if verb == "start" {
                    self.record_start_latency(&container_id, event_time, received);
                }
            }
            (
                Some(EventMessageTypeEnum::CONTAINER),
                "die" | "stop" | "destroy" | "kill" | "pause",
            )
            | (Some(EventMessageTypeEnum::NETWORK), "disconnect") => {
                // kill and pause do not always end the process, so check before dropping it.
                if matches!(verb, "kill" | "pause")
                    && self.still_running(engine, &container_id).await
                {
                    return Ok(());
                }
                if let Some(gone) = self.containers.remove(&container_id) {
                    self.ports.release(&gone.attachment.host_ifname);
                    self.place_unplaced();
                    self.publish(SnapshotCause::ContainerGone {
                        name: gone.info.name,
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Records how long after its start event the container was in a published snapshot.
    /// Docker announces the network connect before the start, so the container is often
    /// published before its start event arrives: that counts as no delay at all.
    fn record_start_latency(&self, id: &str, event_time: Option<SystemTime>, received: Instant) {
        let Some(published) = self.first_published.get(id) else {
            return;
        };
        // Replays of events from before this session say nothing about our latency.
        if event_time.is_some_and(|t| t < self.session_started) {
            return;
        }
        let from_event = event_time.map(|t| published.duration_since(t).unwrap_or(Duration::ZERO));
        let from_receipt = SystemTime::now()
            .duration_since(*published)
            .map(|since_publish| received.elapsed().saturating_sub(since_publish))
            .unwrap_or(Duration::ZERO);
        self.metrics.record_start(from_event, from_receipt);
    }

    async fn still_running(&self, engine: &Engine, id: &str) -> bool {
        match engine
            .docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await
        {
            Ok(c) => c
                .state
                .and_then(|s| Some(s.running? && !s.paused.unwrap_or(false)))
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Gives the ports freed up to unplaced containers (in name order).
    fn place_unplaced(&mut self) {
        let mut waiting: Vec<&mut Tracked> = self
            .containers
            .values_mut()
            .filter(|t| t.attachment.port == UNPLACED)
            .collect();
        waiting.sort_by(|a, b| a.info.name.cmp(&b.info.name));
        for t in waiting {
            let Some(port) = self.ports.port_for(&t.attachment.host_ifname) else {
                break;
            };
            t.info.port = port;
            t.attachment.port = port;
        }
    }

    /// Publishes the current state if it differs from the last one (or is the first);
    /// returns whether it published.
    fn publish(&mut self, cause: SnapshotCause) -> bool {
        let Some(state) = self.current_state() else {
            return false;
        };
        let changed = self
            .snap_tx
            .borrow()
            .as_ref()
            .is_none_or(|s| s.state != state);
        if !changed {
            return false;
        }
        self.generation += 1;
        let now = SystemTime::now();
        let live = &self.containers;
        self.first_published.retain(|id, _| live.contains_key(id));
        for id in self.containers.keys() {
            self.first_published.entry(id.clone()).or_insert(now);
        }
        let snap = Snapshot {
            generation: self.generation,
            state,
            cause,
            published_at: now,
        };
        tracing::debug!("snapshot {} ({:?})", snap.generation, snap.cause);
        self.snap_tx.send_replace(Some(Arc::new(snap)));
        TrackerMetrics::bump(&self.metrics.snapshots);
        true
    }

    fn current_state(&self) -> Option<BridgeState> {
        let net = self.net.as_ref()?;
        Some(build_state(
            net,
            self.cfg.icc_override,
            self.containers.values(),
        ))
    }
}

fn build_state<'a>(
    net: &NetworkFacts,
    icc_override: Option<bool>,
    tracked: impl Iterator<Item = &'a Tracked>,
) -> BridgeState {
    let (mut list, mut unplaced): (Vec<&Tracked>, Vec<&Tracked>) =
        tracked.partition(|t| t.attachment.port != UNPLACED);
    list.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    unplaced.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    BridgeState {
        bridge: net.bridge.clone(),
        network: BridgeNetwork {
            icc: icc_override.unwrap_or(net.icc),
            gateway_port: crate::state::GATEWAY_PORT,
            gateway_ips: net.gateways.clone(),
            containers: list.iter().map(|t| t.info.clone()).collect(),
        },
        attachments: list.iter().map(|t| t.attachment.clone()).collect(),
        unplaced: unplaced.iter().map(|t| t.attachment.clone()).collect(),
    }
}

/// Reads the network and every running container on it.
async fn read_all(
    engine: &Engine,
    cfg: &TrackerConfig,
    bridge_ns: &Rtnl,
    ports: &mut PortAllocator,
) -> Result<(NetworkFacts, BTreeMap<String, Tracked>), DockerError> {
    let net = match engine.docker.inspect_network(&cfg.network, None).await {
        Ok(n) => parse_network(&n)?,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Err(DockerError::NoSuchNetwork(cfg.network.clone()));
        }
        Err(source) => {
            return Err(DockerError::Request {
                what: format!("GET /networks/{}", cfg.network),
                source,
            });
        }
    };
    let mut net = net;
    add_bridge_addresses(&mut net, bridge_ns).await?;
    let filters = HashMap::from([("network".to_string(), vec![net.id.clone()])]);
    let list = engine
        .docker
        .list_containers(Some(ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .map_err(|source| DockerError::Request {
            what: "GET /containers/json".into(),
            source,
        })?;
    let mut out = BTreeMap::new();
    for summary in list {
        let Some(id) = summary.id else { continue };
        if let Some(t) = inspect_one(engine, cfg, Some(&net), bridge_ns, ports, &id).await? {
            out.insert(id, t);
        }
    }
    Ok((net, out))
}

/// Adds the bridge's own addresses to the gateways: Docker 20.10 leaves `Gateway` out of the
/// default network's IPAM config, and the kernel's view is the authority on which addresses
/// are "the host" on the bridge anyway.
async fn add_bridge_addresses(net: &mut NetworkFacts, bridge_ns: &Rtnl) -> Result<(), DockerError> {
    let bridge = match bridge_ns.link_by_name(&net.bridge).await {
        Ok(b) => b,
        // No bridge yet (the engine creates it lazily for user networks): IPAM is all we have.
        Err(crate::netlink::NetlinkError::NoSuchLink { .. }) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for (ip, _) in bridge_ns.addresses(bridge.index).await? {
        if !net.gateways.contains(&ip) {
            net.gateways.push(ip);
        }
    }
    Ok(())
}

/// Inspects one container; `None` when it is not running on our network (or vanished while
/// we looked, which its die event will confirm).
async fn inspect_one(
    engine: &Engine,
    cfg: &TrackerConfig,
    net: Option<&NetworkFacts>,
    bridge_ns: &Rtnl,
    ports: &mut PortAllocator,
    id: &str,
) -> Result<Option<Tracked>, DockerError> {
    let Some(net) = net else { return Ok(None) };
    let resp = match engine
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(r) => r,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Ok(None);
        }
        Err(source) => {
            return Err(DockerError::Request {
                what: format!("GET /containers/{id}/json"),
                source,
            });
        }
    };
    let Some(parsed) = parse_container(&resp, &cfg.network, &net.id)? else {
        return Ok(None);
    };
    let ParsedContainer {
        id,
        name,
        running,
        pid,
        ips,
        mac,
        exposed,
        published,
        links,
    } = parsed;
    let (true, Some(pid)) = (running, pid) else {
        return Ok(None);
    };
    let host = match host_veth_of(pid, mac, bridge_ns).await {
        Ok(h) => h,
        Err(e) => {
            // A container that died between inspect and here has no namespace any more.
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                return Ok(None);
            }
            return Err(DockerError::Veth {
                container: name,
                source: e,
            });
        }
    };
    // Beyond the port table the container is still tracked, unplaced: the runtime cuts
    // it off until a port frees up, so it never stays on the kernel bridge unseen.
    let port = ports.port_for(&host.name).unwrap_or_else(|| {
        tracing::error!(
            "no dataplane port left for {name}: it stays cut off (raise --max-containers)"
        );
        UNPLACED
    });
    Ok(Some(Tracked {
        info: ContainerInfo {
            name: name.clone(),
            port,
            ips,
            mac: mac.unwrap_or([0; 6]),
            exposed,
            published,
            links,
        },
        attachment: Attachment {
            container: name,
            id,
            host_ifname: host.name,
            host_ifindex: host.index,
            port,
        },
    }))
}

fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    initial.saturating_mul(factor).min(max)
}

/// One-shot read of the engine's bridge state (for `bridgewall docker-state`).
pub async fn read_state(cfg: &TrackerConfig) -> Result<(Engine, BridgeState), DockerError> {
    let engine = connect(&cfg.address).await?;
    let ns = match &cfg.bridge_netns {
        Some(n) => Netns::open(n)?,
        None => Netns::current()?,
    };
    let rtnl = ns.rtnl().await?;
    let mut ports = PortAllocator::with_limit(cfg.max_ports);
    let (net, containers) = read_all(&engine, cfg, &rtnl, &mut ports).await?;
    let state = build_state(&net, cfg.icc_override, containers.values());
    Ok((engine, state))
}

/// A tracker on a runtime of its own, for callers without one (tests, synchronous code).
/// Dropping it stops the tracker.
#[derive(Debug)]
pub struct TrackerHandle {
    runtime: Option<tokio::runtime::Runtime>,
    task: Option<tokio::task::JoinHandle<()>>,
    channels: TrackerChannels,
}

impl TrackerHandle {
    /// Starts a tracker on a new one-worker runtime.
    pub fn spawn(cfg: TrackerConfig) -> std::io::Result<TrackerHandle> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("docker-tracker")
            .enable_all()
            .build()?;
        let (tracker, channels) = Tracker::new(cfg);
        let task = runtime.spawn(tracker.run());
        Ok(TrackerHandle {
            runtime: Some(runtime),
            task: Some(task),
            channels,
        })
    }

    /// The channels it publishes on.
    pub fn channels(&self) -> &TrackerChannels {
        &self.channels
    }

    /// The latest snapshot, if any.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.channels.snapshots.borrow().clone()
    }

    /// The current connection state.
    pub fn status(&self) -> TrackerStatus {
        self.channels.status.borrow().clone()
    }

    /// Blocks until a snapshot satisfies `pred` (checking the current one first), or the
    /// timeout passes.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Snapshot) -> bool,
    ) -> Option<Arc<Snapshot>> {
        let mut rx = self.channels.snapshots.clone();
        let rt = self.runtime.as_ref()?;
        rt.block_on(async move {
            let got = tokio::time::timeout(
                timeout,
                rx.wait_for(|s| s.as_ref().is_some_and(|s| pred(s))),
            )
            .await;
            match got {
                Ok(Ok(s)) => s.clone(),
                _ => None,
            }
        })
    }

    /// Blocks until the status satisfies `pred`, or the timeout passes.
    pub fn wait_status(
        &self,
        timeout: Duration,
        pred: impl FnMut(&TrackerStatus) -> bool,
    ) -> Option<TrackerStatus> {
        let mut rx = self.channels.status.clone();
        let rt = self.runtime.as_ref()?;
        rt.block_on(async move {
            match tokio::time::timeout(timeout, rx.wait_for(pred)).await {
                Ok(Ok(s)) => Some(s.clone()),
                _ => None,
            }
        })
    }

    /// Latency and counters.
    pub fn metrics(&self) -> &TrackerMetrics {
        &self.channels.metrics
    }

    /// Latency and counters, shared (for a metrics endpoint that outlives a borrow).
    pub fn metrics_shared(&self) -> Arc<TrackerMetrics> {
        Arc::clone(&self.channels.metrics)
    }
}

impl Drop for TrackerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let i = Duration::from_millis(100);
        let m = Duration::from_secs(5);
        assert_eq!(backoff(i, m, 1), Duration::from_millis(100));
        assert_eq!(backoff(i, m, 2), Duration::from_millis(200));
        assert_eq!(backoff(i, m, 4), Duration::from_millis(800));
        assert_eq!(backoff(i, m, 30), m);
    }
}
