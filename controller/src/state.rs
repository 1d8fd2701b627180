//! What the controller knows about a bridge at one moment, in the one shape both sources
//! (Docker tracking and the lab) produce and the policy updater consumes: the
//! [`BridgeNetwork`] for the rule compiler plus the host-side interfaces the dataplane
//! attaches to, with stable port ids.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use rules_wasm::docker::{BridgeNetwork, PortId};

/// Port id reserved for the gateway side (the link that leads to the bridge itself, the host
/// and the outside world); containers get ids from 1 up.
pub const GATEWAY_PORT: PortId = 0;

/// A bridge and its containers as the compiler and the dataplane need them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeState {
    /// The kernel bridge's name (`docker0`).
    pub bridge: String,
    /// The compiler's input: icc, gateway, containers with their port ids.
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

/// Where one container plugs into the bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Container name (as in [`rules_wasm::docker::ContainerInfo::name`]).
    pub container: String,
    /// Docker's container id (the lab uses the container name).
    pub id: String,
    /// The host-side veth's name in the bridge's namespace.
    pub host_ifname: String,
    /// The host-side veth's index in the bridge's namespace.
    pub host_ifindex: u32,
    /// The dataplane port id given to that veth.
    pub port: PortId,
}

impl BridgeState {
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
    pub state: BridgeState,
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
    limit: u32,
}

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
            limit: limit.clamp(2, PortId::MAX as usize + 1) as u32,
        }
    }

    /// The id of `ifname`, allocating one if it has none; `None` when all ids are in use.
    pub fn port_for(&mut self, ifname: &str) -> Option<PortId> {
        if let Some(&id) = self.by_name.get(ifname) {
            return Some(id);
        }
        let in_use = |id: PortId, m: &BTreeMap<String, PortId>| m.values().any(|&v| v == id);
        let mut candidate = u32::from(self.next) % self.limit;
        for _ in 0..self.limit {
            let id = candidate as PortId;
            if id != GATEWAY_PORT && !in_use(id, &self.by_name) {
                self.by_name.insert(ifname.to_string(), id);
                self.next = ((candidate + 1) % self.limit) as PortId;
                return Some(id);
            }
            candidate = (candidate + 1) % self.limit;
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
