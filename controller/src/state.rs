//! What the controller knows about the host's bridge networks at one moment, in the one
//! shape both sources (Docker tracking and the lab) produce and the policy updater consumes:
//! per network the [`BridgeNetwork`] for the rule compiler plus the host-side interfaces the
//! dataplane attaches to, with stable port ids (one id space for every network).
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rules_wasm::docker::{BridgeNetwork, HostNetworks, PortId};

/// Port id reserved for the gateway side of Docker's default network (or the lab's first):
/// the link that leads to the bridge itself, the host and the outside world. Other
/// networks' gateways and containers get ids from 1 up.
pub const GATEWAY_PORT: PortId = 0;

/// Every bridge network bridgewall serves, each with its containers. One policy is compiled
/// from all of them ([`HostState::policy_input`]); the dataplane keeps each network its own
/// L2 domain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HostState {
    /// The networks, sorted by Docker network name.
    pub networks: Vec<BridgeState>,
}

impl HostState {
    /// A host with one network (the seed's lab, `--network bridge`).
    pub fn single(net: BridgeState) -> HostState {
        HostState {
            networks: vec![net],
        }
    }

    /// The network called `name` (Docker's network name, or its kernel bridge's name).
    pub fn network(&self, name: &str) -> Option<&BridgeState> {
        self.networks
            .iter()
            .find(|n| n.network.name == name)
            .or_else(|| self.networks.iter().find(|n| n.network.bridge == name))
    }

    /// The network whose gateway port is `port`, or that `port` is a container port of.
    pub fn network_of_port(&self, port: PortId) -> Option<&BridgeState> {
        self.networks.iter().find(|n| {
            n.network.gateway_port == port || n.attachments.iter().any(|a| a.port == port)
        })
    }

    /// Every attached container interface, network by network.
    pub fn attachments(&self) -> impl Iterator<Item = &Attachment> {
        self.networks.iter().flat_map(|n| n.attachments.iter())
    }

    /// Every container interface left without a port (see [`BridgeState::unplaced`]).
    pub fn unplaced(&self) -> impl Iterator<Item = &Attachment> {
        self.networks.iter().flat_map(|n| n.unplaced.iter())
    }

    /// The attachment of the host interface `ifname`.
    pub fn attachment_of(&self, ifname: &str) -> Option<&Attachment> {
        self.attachments().find(|a| a.host_ifname == ifname)
    }

    /// The first attachment of the container called `name` (a container on several networks
    /// has one per network; see [`HostState::attachments_of`]).
    pub fn attachment(&self, name: &str) -> Option<&Attachment> {
        self.attachments().find(|a| a.container == name)
    }

    /// Every attachment of the container called `name`, one per network it is on.
    pub fn attachments_of<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Attachment> {
        self.attachments().filter(move |a| a.container == name)
    }

    /// Host interface name → port id of every container, the map the dataplane attach needs.
    pub fn ports(&self) -> BTreeMap<String, PortId> {
        self.networks.iter().flat_map(|n| n.ports()).collect()
    }

    /// The compiler's input: every network with its containers.
    pub fn policy_input(&self) -> HostNetworks {
        HostNetworks {
            networks: self.networks.iter().map(|n| n.network.clone()).collect(),
        }
    }

    /// How many containers are attached, over every network (a container on two networks
    /// counts twice).
    pub fn attached_count(&self) -> usize {
        self.networks.iter().map(|n| n.attachments.len()).sum()
    }
}

/// One bridge network and its containers as the compiler and the dataplane need them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeState {
    /// The compiler's input: name, bridge, icc, gateway, subnets, containers with their
    /// port ids.
    pub network: BridgeNetwork,
    /// Per container (same order as `network.containers`): where it plugs in.
    pub attachments: Vec<Attachment>,
    /// Containers on the network that got no dataplane port (more than `--max-containers`):
    /// their veths are taken off the bridge but not attached — cut off, never left on the
    /// kernel bridge where bridgewall's policy would not see them. Their `port` is
    /// [`UNPLACED`].
    pub unplaced: Vec<Attachment>,
}

/// The port id of a container that got none (see [`BridgeState::unplaced`]).
pub const UNPLACED: PortId = PortId::MAX;

/// Where one container plugs into one network's bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Container name (as in [`rules_wasm::docker::ContainerInfo::name`]).
    pub container: String,
    /// Docker's container id (the lab uses the container name).
    pub id: String,
    /// The Docker network this interface is on (a container on several networks has one
    /// attachment per network).
    pub network: String,
    /// The host-side veth's name in the bridge's namespace.
    pub host_ifname: String,
    /// The host-side veth's index in the bridge's namespace.
    pub host_ifindex: u32,
    /// The dataplane port id given to that veth.
    pub port: PortId,
}

impl BridgeState {
    /// The kernel bridge's name (`docker0`, `br-<id>`).
    pub fn bridge(&self) -> &str {
        &self.network.bridge
    }

    /// The attachment of the container called `name`.
    pub fn attachment(&self, name: &str) -> Option<&Attachment> {
        self.attachments.iter().find(|a| a.container == name)
    }

    /// Host interface name → port id, the map the dataplane attach needs.
    pub fn ports(&self) -> BTreeMap<String, PortId> {
        self.attachments
            .iter()
            .map(|a| (a.host_ifname.clone(), a.port))
            .collect()
    }
}

/// Why a snapshot was published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SnapshotCause {
    /// The full state was read (first connection, or after the engine came back).
    Resync,
    /// A network appeared (created, or first seen with containers).
    NetworkCreated {
        /// Its Docker name.
        name: String,
    },
    /// A network was removed: its bridge is given back.
    NetworkRemoved {
        /// Its Docker name.
        name: String,
    },
    /// A container started (or joined the network).
    ContainerStarted {
        /// Its name.
        name: String,
    },
    /// A container died, was removed or left the network.
    ContainerGone {
        /// Its name.
        name: String,
    },
    /// The lab built its topology.
    Lab,
}

/// One published version of the state. Consumers keep enforcing the previous snapshot until
/// they have built a policy from a newer one, so there is never a moment without a policy.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Increases by one per publication.
    pub generation: u64,
    /// The state itself.
    pub state: HostState,
    /// What led to it.
    pub cause: SnapshotCause,
    /// When it was published.
    pub published_at: SystemTime,
}

/// The channel snapshots are published on: `None` until the first full sync.
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;

/// Gives each host interface a stable dataplane port id: the same name keeps its id while it
/// exists, and a released id is not handed out again until all others are used, so a policy
/// still in force never confuses a dead container's port with a new one.
///
/// Ids stay below a limit (the dataplane's port table, [`DEFAULT_MAX_PORTS`] by default) and
/// wrap around within it, so containers coming and going for ever never push an id out of
/// the table.
#[derive(Clone, Debug)]
pub struct PortAllocator {
    by_name: BTreeMap<String, PortId>,
    next: PortId,
    first: u32,
    limit: u32,
}

/// Networks beyond the default one a dataplane serves by default: each network's gateway
/// takes a port id above the containers' (see [`PortAllocator::for_gateways`]).
pub const DEFAULT_MAX_NETWORKS: usize = 64;

/// Port ids the dataplane's tables hold by default (the gateway and 1,023 containers).
pub const DEFAULT_MAX_PORTS: usize = 1024;

impl Default for PortAllocator {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_PORTS)
    }
}

impl PortAllocator {
    /// An allocator with only the gateway's id taken.
    pub fn new() -> Self {
        Self::default()
    }

    /// An allocator handing out ids below `limit` (at most 65,536).
    pub fn with_limit(limit: usize) -> Self {
        PortAllocator {
            by_name: BTreeMap::new(),
            next: GATEWAY_PORT + 1,
            first: 1,
            limit: limit.clamp(2, PortId::MAX as usize + 1) as u32,
        }
    }

    /// The allocator of the other networks' gateway ports: `networks` ids right above the
    /// containers' `container_limit`, so gateways never take a container's place and the
    /// dataplane's table is `container_limit + networks` ports.
    pub fn for_gateways(container_limit: usize, networks: usize) -> Self {
        let first = container_limit.clamp(1, PortId::MAX as usize) as u32;
        let limit = (first as usize + networks.max(1)).min(PortId::MAX as usize) as u32;
        PortAllocator {
            by_name: BTreeMap::new(),
            next: first as PortId,
            first,
            limit,
        }
    }

    /// The id of `ifname`, allocating one if it has none; `None` when all ids are in use.
    pub fn port_for(&mut self, ifname: &str) -> Option<PortId> {
        if let Some(&id) = self.by_name.get(ifname) {
            return Some(id);
        }
        let in_use = |id: PortId, m: &BTreeMap<String, PortId>| m.values().any(|&v| v == id);
        let span = self.limit - self.first;
        let wrap = |c: u32| self.first + (c.saturating_sub(self.first) % span);
        let mut candidate = wrap(u32::from(self.next));
        for _ in 0..span {
            let id = candidate as PortId;
            if id != GATEWAY_PORT && !in_use(id, &self.by_name) {
                self.by_name.insert(ifname.to_string(), id);
                self.next = wrap(candidate + 1) as PortId;
                return Some(id);
            }
            candidate = wrap(candidate + 1);
        }
        None
    }

    /// Forgets `ifname` (its container is gone).
    pub fn release(&mut self, ifname: &str) {
        self.by_name.remove(ifname);
    }

    /// Keeps only the names in `live` (after a full resync).
    pub fn retain(&mut self, live: &[&str]) {
        self.by_name.retain(|name, _| live.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_wrap_within_the_limit_and_skip_live_ones() {
        let mut alloc = PortAllocator::with_limit(4);
        let ids: Vec<_> = ["a", "b", "c"].map(|n| alloc.port_for(n).unwrap()).into();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(
            alloc.port_for("d"),
            None,
            "every id below the limit is live"
        );
        alloc.release("b");
        assert_eq!(alloc.port_for("d"), Some(2), "wraps to the released id");
        alloc.release("d");
        for round in 0..1000 {
            let name = format!("churn-{round}");
            let id = alloc.port_for(&name);
            assert!(id.is_some_and(|id| id < 4 && id != GATEWAY_PORT));
            alloc.release(&name);
        }
    }

    #[test]
    fn gateway_ids_sit_above_the_containers() {
        let mut gws = PortAllocator::for_gateways(4, 2);
        assert_eq!(gws.port_for("gateway:br-a"), Some(4));
        assert_eq!(gws.port_for("gateway:br-b"), Some(5));
        assert_eq!(gws.port_for("gateway:br-c"), None, "two networks at most");
        gws.release("gateway:br-a");
        assert_eq!(gws.port_for("gateway:br-c"), Some(4));
    }

    #[test]
    fn ports_are_stable_and_not_reused_at_once() {
        let mut alloc = PortAllocator::new();
        let a = alloc.port_for("veth-a").unwrap();
        let b = alloc.port_for("veth-b").unwrap();
        assert_ne!(a, b);
        assert_ne!(a, GATEWAY_PORT);
        assert_eq!(alloc.port_for("veth-a"), Some(a));
        alloc.release("veth-a");
        let c = alloc.port_for("veth-c").unwrap();
        assert_ne!(c, a, "a freed id is not reused while others are free");
        assert_ne!(c, b);
    }

    #[test]
    fn retain_drops_dead_names() {
        let mut alloc = PortAllocator::new();
        let a = alloc.port_for("a").unwrap();
        alloc.port_for("b").unwrap();
        alloc.retain(&["a"]);
        assert_eq!(alloc.port_for("a"), Some(a));
        assert_eq!(alloc.by_name.len(), 1);
    }
}
