//! The tracker: connects, reads the full state, follows the event stream, and publishes a
//! [`Snapshot`] whenever what the policy depends on changes. When the engine goes away it
//! reconnects with capped exponential backoff and resyncs; the last published snapshot stays
//! current the whole time, so whoever enforces it never runs without a policy.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::{EventMessage, EventMessageTypeEnum};
use bollard::query_parameters::EventsOptions;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::parse::NetworkFacts;
use super::read::{self, Followed, Tracked};
use super::{DockerError, Engine, EngineAddress, TrackerMetrics, connect};
use crate::netlink::{Netns, Rtnl};
use crate::state::{HostState, PortAllocator, Snapshot, SnapshotCause, SnapshotReceiver, UNPLACED};

/// What to follow and how.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// The engine.
    pub address: EngineAddress,
    /// Docker networks to follow (names or ids); empty follows every network whose driver
    /// is `bridge` — the default network and every user-defined one, as they come and go.
    pub networks: Vec<String>,
    /// The namespace the engine's bridges live in (a `/run/netns` name or a path); `None`
    /// is ours. Tests run the engine in a namespace of their own.
    pub bridge_netns: Option<String>,
    /// Overrides every network's `enable_icc` option.
    pub icc_override: Option<bool>,
    /// First reconnection delay.
    pub backoff_initial: Duration,
    /// Longest reconnection delay.
    pub backoff_max: Duration,
    /// Container ports get ids below this (with the default network's gateway, port 0).
    pub max_ports: usize,
    /// Other networks' gateways get ids from `max_ports` up to `max_ports + max_networks`:
    /// the dataplane's port table holds both.
    pub max_networks: usize,
}

impl TrackerConfig {
    /// Follows every bridge network at `address`, with a 100 ms → 5 s backoff.
    pub fn new(address: EngineAddress) -> TrackerConfig {
        TrackerConfig {
            address,
            networks: Vec::new(),
            bridge_netns: None,
            icc_override: None,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            max_ports: crate::state::DEFAULT_MAX_PORTS,
            max_networks: crate::state::DEFAULT_MAX_NETWORKS,
        }
    }

    /// Whether `facts` is a network this configuration follows.
    fn follows(&self, facts: &NetworkFacts) -> bool {
        read::wanted(facts, &self.networks)
    }

    /// Whether exactly one network is asked for (it then gets gateway port 0).
    fn single(&self) -> bool {
        self.networks.len() == 1
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

/// Follows one engine's bridge networks. Drive it with [`Tracker::run`].
#[derive(Debug)]
pub struct Tracker {
    cfg: TrackerConfig,
    snap_tx: watch::Sender<Option<Arc<Snapshot>>>,
    status_tx: watch::Sender<TrackerStatus>,
    metrics: Arc<TrackerMetrics>,
    ports: PortAllocator,
    /// Gateway port ids of the networks other than the default one.
    gateway_ports: PortAllocator,
    /// Followed networks by id; `None` until the first sync.
    nets: Option<BTreeMap<String, Followed>>,
    /// Container interfaces by (container id, network id).
    containers: BTreeMap<(String, String), Tracked>,
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
        let (max_ports, max_networks) = (cfg.max_ports, cfg.max_networks);
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
            gateway_ports: PortAllocator::for_gateways(max_ports, max_networks),
            nets: None,
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
            "following Docker {} (API {}) at {}: {} container interfaces on {} networks",
            engine.engine_version,
            engine.api_version,
            engine.address,
            self.containers.len(),
            self.nets.as_ref().map_or(0, BTreeMap::len)
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
        let mut alloc = (&mut self.ports, &mut self.gateway_ports);
        let (nets, containers) = read_all(engine, &self.cfg, &bridge_ns, &mut alloc).await?;
        let live: Vec<&str> = containers
            .values()
            .map(|t| t.attachment.host_ifname.as_str())
            .collect();
        self.ports.retain(&live);
        let gateways: Vec<String> = nets.values().map(|n| read::gateway_key(&n.facts)).collect();
        self.gateway_ports
            .retain(&gateways.iter().map(String::as_str).collect::<Vec<_>>());
        self.nets = Some(nets);
        self.containers = containers;
        TrackerMetrics::bump(&self.metrics.resyncs);
        self.publish(SnapshotCause::Resync);
        Ok(())
    }

    fn bridge_ns_ref(&self) -> Result<&Rtnl, DockerError> {
        self.bridge_ns.as_ref().ok_or_else(|| {
            DockerError::Netlink(crate::netlink::NetlinkError::Unexpected {
                op: "Docker tracking".into(),
                msg: "the bridges' namespace is not open".into(),
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
        tracing::debug!("event {:?} {verb} {actor_id}", ev.typ);
        match (ev.typ, verb) {
            (Some(EventMessageTypeEnum::NETWORK), "create") => {
                self.network_created(engine, &actor_id).await
            }
            (Some(EventMessageTypeEnum::NETWORK), "destroy") => {
                self.network_removed(&actor_id);
                Ok(())
            }
            (Some(EventMessageTypeEnum::NETWORK), "connect") => {
                let Some(container) = attrs.get("container") else {
                    return Ok(());
                };
                if !self.is_followed(&actor_id) {
                    return Ok(());
                }
                self.container_up(engine, container, None, received).await
            }
            (Some(EventMessageTypeEnum::NETWORK), "disconnect") => {
                if let Some(container) = attrs.get("container") {
                    self.container_left(container, Some(&actor_id));
                }
                Ok(())
            }
            (Some(EventMessageTypeEnum::CONTAINER), "start" | "rename" | "unpause") => {
                let time = ev
                    .time_nano
                    .and_then(|ns| u64::try_from(ns).ok())
                    .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns));
                let started = (verb == "start").then_some(time);
                self.container_up(engine, &actor_id, started, received)
                    .await
            }
            (
                Some(EventMessageTypeEnum::CONTAINER),
                "die" | "stop" | "destroy" | "kill" | "pause",
            ) => {
                // kill and pause do not always end the process, so check before dropping it.
                if matches!(verb, "kill" | "pause") && self.still_running(engine, &actor_id).await {
                    return Ok(());
                }
                self.container_left(&actor_id, None);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn is_followed(&self, net_id: &str) -> bool {
        self.nets.as_ref().is_some_and(|n| n.contains_key(net_id))
    }

    /// A network appeared: followed from now on if it is a bridge network we want.
    async fn network_created(&mut self, engine: &Engine, net_id: &str) -> Result<(), DockerError> {
        if self.is_followed(net_id) {
            return Ok(());
        }
        let Some(mut facts) = read::inspect_network(engine, net_id).await? else {
            return Ok(());
        };
        if !self.cfg.follows(&facts) {
            return Ok(());
        }
        let bridge_ns = self.bridge_ns_ref()?.clone();
        read::add_bridge_addresses(&mut facts, &bridge_ns).await?;
        let Some(gateway_port) =
            read::gateway_port(&facts, &mut self.gateway_ports, self.cfg.single())
        else {
            tracing::error!(
                "no dataplane port left for network {}'s gateway (raise --max-containers)",
                facts.name
            );
            return Ok(());
        };
        let name = facts.name.clone();
        if let Some(nets) = self.nets.as_mut() {
            nets.insert(
                net_id.to_string(),
                Followed {
                    facts,
                    gateway_port,
                },
            );
        }
        self.publish(SnapshotCause::NetworkCreated { name });
        Ok(())
    }

    /// A network was removed: its containers' interfaces go with it (Docker refuses to
    /// remove a network with endpoints, so normally there are none).
    fn network_removed(&mut self, net_id: &str) {
        let Some(gone) = self.nets.as_mut().and_then(|n| n.remove(net_id)) else {
            return;
        };
        let ifaces: Vec<(String, String)> = self
            .containers
            .keys()
            .filter(|(_, n)| n == net_id)
            .cloned()
            .collect();
        for key in ifaces {
            if let Some(t) = self.containers.remove(&key) {
                self.ports.release(&t.attachment.host_ifname);
            }
        }
        read::release_gateway(&gone.facts, &mut self.gateway_ports);
        self.place_unplaced();
        self.publish(SnapshotCause::NetworkRemoved {
            name: gone.facts.name,
        });
    }

    /// A container started, or joined a network (`only_net`: a connect event names the
    /// network): its interfaces on the followed networks are (re)read.
    async fn container_up(
        &mut self,
        engine: &Engine,
        container_id: &str,
        started: Option<Option<SystemTime>>,
        received: Instant,
    ) -> Result<(), DockerError> {
        if self.nets.is_none() {
            return Ok(());
        }
        let Some(resp) = read::inspect_container(engine, container_id).await? else {
            return Ok(());
        };
        let bridge_ns = self.bridge_ns_ref()?.clone();
        let Some(nets) = self.nets.as_ref() else {
            return Ok(());
        };
        let placed = read::place(&resp, nets, &bridge_ns, &mut self.ports).await?;
        let mut changed = false;
        let mut name = None;
        for (net_id, tracked) in placed {
            let key = (container_id.to_string(), net_id);
            name = Some(tracked.info.name.clone());
            if self.containers.get(&key) != Some(&tracked) {
                self.containers.insert(key, tracked);
                changed = true;
            }
        }
        if changed && let Some(name) = name {
            self.publish(SnapshotCause::ContainerStarted { name });
        }
        if let Some(event_time) = started {
            self.record_start_latency(container_id, event_time, received);
        }
        Ok(())
    }

    /// A container stopped (`net_id` `None`: every interface goes) or left one network.
    fn container_left(&mut self, container_id: &str, net_id: Option<&str>) {
        let keys: Vec<(String, String)> = self
            .containers
            .keys()
            .filter(|(c, n)| c == container_id && net_id.is_none_or(|id| id == n))
            .cloned()
            .collect();
        let mut name = None;
        for key in keys {
            if let Some(gone) = self.containers.remove(&key) {
                self.ports.release(&gone.attachment.host_ifname);
                name = Some(gone.info.name);
            }
        }
        if let Some(name) = name {
            self.place_unplaced();
            self.publish(SnapshotCause::ContainerGone { name });
        }
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
        match read::inspect_container(engine, id).await {
            Ok(Some(c)) => c
                .state
                .and_then(|s| Some(s.running? && !s.paused.unwrap_or(false)))
                .unwrap_or(false),
            _ => false,
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
        let live: std::collections::BTreeSet<&String> =
            self.containers.keys().map(|(c, _)| c).collect();
        self.first_published.retain(|id, _| live.contains(id));
        for (id, _) in self.containers.keys() {
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

    fn current_state(&self) -> Option<HostState> {
        let nets = self.nets.as_ref()?;
        Some(read::build_state(
            nets,
            self.cfg.icc_override,
            self.containers.iter().map(|((_, n), t)| (n, t)),
        ))
    }
}

/// Reads every followed network and every running container on them.
async fn read_all(
    engine: &Engine,
    cfg: &TrackerConfig,
    bridge_ns: &Rtnl,
    (ports, gateway_ports): &mut (&mut PortAllocator, &mut PortAllocator),
) -> Result<
    (
        BTreeMap<String, Followed>,
        BTreeMap<(String, String), Tracked>,
    ),
    DockerError,
> {
    let mut nets = BTreeMap::new();
    for mut facts in read::list_networks(engine).await? {
        if !cfg.follows(&facts) {
            continue;
        }
        read::add_bridge_addresses(&mut facts, bridge_ns).await?;
        let Some(gateway_port) = read::gateway_port(&facts, gateway_ports, cfg.single()) else {
            tracing::error!(
                "no dataplane port left for network {}'s gateway (raise --max-containers)",
                facts.name
            );
            continue;
        };
        nets.insert(
            facts.id.clone(),
            Followed {
                facts,
                gateway_port,
            },
        );
    }
    for wanted in &cfg.networks {
        let found = nets
            .values()
            .any(|n| [&n.facts.name, &n.facts.id, &n.facts.bridge].contains(&wanted));
        if !found {
            tracing::warn!(
                "Docker has no bridge network {wanted:?} (yet): it is followed once created"
            );
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    for net_id in nets.keys() {
        ids.extend(read::containers_on(engine, net_id).await?);
    }
    let mut containers = BTreeMap::new();
    for id in ids {
        let Some(resp) = read::inspect_container(engine, &id).await? else {
            continue;
        };
        for (net_id, t) in read::place(&resp, &nets, bridge_ns, ports).await? {
            containers.insert((id.clone(), net_id), t);
        }
    }
    Ok((nets, containers))
}

fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.saturating_sub(1).min(16);
    initial.saturating_mul(factor).min(max)
}

/// One-shot read of the engine's bridge networks (for `bridgewall docker-state`).
pub async fn read_state(cfg: &TrackerConfig) -> Result<(Engine, HostState), DockerError> {
    let engine = connect(&cfg.address).await?;
    let ns = match &cfg.bridge_netns {
        Some(n) => Netns::open(n)?,
        None => Netns::current()?,
    };
    let rtnl = ns.rtnl().await?;
    let mut ports = PortAllocator::with_limit(cfg.max_ports);
    let mut gateway_ports = PortAllocator::for_gateways(cfg.max_ports, cfg.max_networks);
    let (nets, containers) =
        read_all(&engine, cfg, &rtnl, &mut (&mut ports, &mut gateway_ports)).await?;
    let state = read::build_state(
        &nets,
        cfg.icc_override,
        containers.iter().map(|((_, n), t)| (n, t)),
    );
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
