//! Reading the engine: which bridge networks to follow, and where each running container
//! plugs into each of them. Every function is one request (or a few) and the parse; the
//! tracker decides when to call them.
use std::collections::{BTreeMap, HashMap};

use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{
    InspectContainerOptions, InspectNetworkOptions, ListContainersOptions, ListNetworksOptions,
};
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, PortId};

use super::parse::{NetworkFacts, ParsedContainer, parse_container, parse_network};
use super::{DockerError, Engine, host_veth_of};
use crate::netlink::Rtnl;
use crate::state::{Attachment, BridgeState, GATEWAY_PORT, HostState, PortAllocator, UNPLACED};

/// One network followed, and the dataplane port of its gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Followed {
    /// What Docker says about it (plus the bridge's own addresses).
    pub(super) facts: NetworkFacts,
    /// Its gateway's dataplane port: [`GATEWAY_PORT`] for Docker's default network.
    pub(super) gateway_port: PortId,
}

/// One container interface on one followed network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Tracked {
    /// The compiler's view of the container on that network.
    pub(super) info: ContainerInfo,
    /// Where it plugs in.
    pub(super) attachment: Attachment,
}

/// Which networks to follow: `names` (Docker names or ids) when given, else every network
/// whose driver is `bridge`.
pub(super) fn wanted(facts: &NetworkFacts, names: &[String]) -> bool {
    facts.driver == "bridge"
        && (names.is_empty()
            || names
                .iter()
                .any(|n| *n == facts.name || *n == facts.id || *n == facts.bridge))
}

/// The gateway allocator's name for a network's gateway.
pub(super) fn gateway_key(facts: &NetworkFacts) -> String {
    format!("gateway:{}", facts.bridge)
}

/// Gives the network its gateway port: port 0 for Docker's default network (or the only
/// network followed, so a single-network setup looks as it always did), else one from the
/// gateways' allocator (ids above the containers'); `None` when all are taken.
pub(super) fn gateway_port(
    facts: &NetworkFacts,
    ports: &mut PortAllocator,
    only: bool,
) -> Option<PortId> {
    if facts.default_bridge || facts.name == "bridge" || only {
        return Some(GATEWAY_PORT);
    }
    ports.port_for(&gateway_key(facts))
}

/// Frees a removed network's gateway port.
pub(super) fn release_gateway(facts: &NetworkFacts, ports: &mut PortAllocator) {
    ports.release(&gateway_key(facts));
}

/// Every network of the engine (listing, then inspecting each for its full options).
pub(super) async fn list_networks(engine: &Engine) -> Result<Vec<NetworkFacts>, DockerError> {
    let list = engine
        .docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .map_err(|source| DockerError::Request {
            what: "GET /networks".into(),
            source,
        })?;
    let mut out = Vec::new();
    for n in list {
        let Some(id) = n.id else { continue };
        if let Some(facts) = inspect_network(engine, &id).await? {
            out.push(facts);
        }
    }
    Ok(out)
}

/// One network by id or name; `None` when it does not exist (any more).
pub(super) async fn inspect_network(
    engine: &Engine,
    id: &str,
) -> Result<Option<NetworkFacts>, DockerError> {
    match engine
        .docker
        .inspect_network(id, None::<InspectNetworkOptions>)
        .await
    {
        Ok(n) => Ok(Some(parse_network(&n)?)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(DockerError::Request {
            what: format!("GET /networks/{id}"),
            source,
        }),
    }
}

/// Adds the bridge's own addresses to the gateways: Docker 20.10 leaves `Gateway` out of the
/// default network's IPAM config, and the kernel's view is the authority on which addresses
/// are "the host" on the bridge anyway.
pub(super) async fn add_bridge_addresses(
    net: &mut NetworkFacts,
    bridge_ns: &Rtnl,
) -> Result<(), DockerError> {
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

/// Ids of the running containers on the network `net_id`.
pub(super) async fn containers_on(
    engine: &Engine,
    net_id: &str,
) -> Result<Vec<String>, DockerError> {
    let filters = HashMap::from([("network".to_string(), vec![net_id.to_string()])]);
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
    Ok(list.into_iter().filter_map(|s| s.id).collect())
}

/// Inspects one container; `None` when it does not exist (any more).
pub(super) async fn inspect_container(
    engine: &Engine,
    id: &str,
) -> Result<Option<ContainerInspectResponse>, DockerError> {
    match engine
        .docker
        .inspect_container(id, None::<InspectContainerOptions>)
        .await
    {
        Ok(r) => Ok(Some(r)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(DockerError::Request {
            what: format!("GET /containers/{id}/json"),
            source,
        }),
    }
}

/// Where a running container plugs into each followed network it is on, keyed by network
/// id. A container not running (or gone meanwhile) plugs in nowhere.
pub(super) async fn place(
    resp: &ContainerInspectResponse,
    nets: &BTreeMap<String, Followed>,
    bridge_ns: &Rtnl,
    ports: &mut PortAllocator,
) -> Result<BTreeMap<String, Tracked>, DockerError> {
    let mut out = BTreeMap::new();
    for (net_id, net) in nets {
        let Some(parsed) = parse_container(resp, &net.facts.name, net_id)? else {
            continue;
        };
        if let Some(t) = place_on(parsed, net, bridge_ns, ports).await? {
            out.insert(net_id.clone(), t);
        }
    }
    Ok(out)
}

/// The container's interface on one network: its host-side veth and a dataplane port.
async fn place_on(
    parsed: ParsedContainer,
    net: &Followed,
    bridge_ns: &Rtnl,
    ports: &mut PortAllocator,
) -> Result<Option<Tracked>, DockerError> {
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
            "no dataplane port left for {name} on {}: it stays cut off (raise --max-containers)",
            net.facts.name
        );
        UNPLACED
    });
    // Legacy links exist on Docker's default network only; elsewhere `--link` is a DNS alias.
    let links = if net.facts.default_bridge || net.facts.name == "bridge" {
        links
    } else {
        Vec::new()
    };
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
            network: net.facts.name.clone(),
            host_ifname: host.name,
            host_ifindex: host.index,
            port,
        },
    }))
}

/// The state of every followed network: containers sorted by name, the unplaced apart;
/// networks sorted by name.
pub(super) fn build_state<'a>(
    nets: &BTreeMap<String, Followed>,
    icc_override: Option<bool>,
    tracked: impl Iterator<Item = (&'a String, &'a Tracked)> + Clone,
) -> HostState {
    let mut networks: Vec<BridgeState> = nets
        .iter()
        .map(|(net_id, net)| {
            let on_net = tracked
                .clone()
                .filter(|(id, _)| *id == net_id)
                .map(|(_, t)| t);
            network_state(net, icc_override, on_net)
        })
        .collect();
    networks.sort_by(|a, b| a.network.name.cmp(&b.network.name));
    HostState { networks }
}

fn network_state<'a>(
    net: &Followed,
    icc_override: Option<bool>,
    tracked: impl Iterator<Item = &'a Tracked>,
) -> BridgeState {
    let (mut list, mut unplaced): (Vec<&Tracked>, Vec<&Tracked>) =
        tracked.partition(|t| t.attachment.port != UNPLACED);
    list.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    unplaced.sort_by(|a, b| a.info.name.cmp(&b.info.name));
    let f = &net.facts;
    BridgeState {
        network: BridgeNetwork {
            name: f.name.clone(),
            bridge: f.bridge.clone(),
            internal: f.internal,
            subnets: f.subnets.clone(),
            icc: icc_override.unwrap_or(f.icc),
            gateway_port: net.gateway_port,
            gateway_ips: f.gateways.clone(),
            containers: list.iter().map(|t| t.info.clone()).collect(),
        },
        attachments: list.iter().map(|t| t.attachment.clone()).collect(),
        unplaced: unplaced.iter().map(|t| t.attachment.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, bridge: &str, driver: &str, default_bridge: bool) -> NetworkFacts {
        NetworkFacts {
            id: format!("{name}-id"),
            name: name.into(),
            bridge: bridge.into(),
            icc: true,
            gateways: Vec::new(),
            driver: driver.into(),
            internal: false,
            default_bridge,
            subnets: Vec::new(),
        }
    }

    #[test]
    fn every_bridge_network_is_followed_unless_names_restrict_it() {
        let app = facts("myapp_default", "br-0123456789ab", "bridge", false);
        let host = facts("host", "", "host", false);
        assert!(wanted(&app, &[]));
        assert!(!wanted(&host, &[]), "only the bridge driver");
        for name in ["myapp_default", "myapp_default-id", "br-0123456789ab"] {
            assert!(wanted(&app, &[name.to_string()]), "{name}");
        }
        assert!(!wanted(&app, &["bridge".to_string()]));
    }

    #[test]
    fn the_default_network_gets_port_0_and_the_others_gateway_ids() {
        let mut gws = PortAllocator::for_gateways(8, 4);
        let default = facts("bridge", "docker0", "bridge", true);
        let app = facts("app", "br-app", "bridge", false);
        let db = facts("db", "br-db", "bridge", false);
        assert_eq!(gateway_port(&default, &mut gws, false), Some(GATEWAY_PORT));
        assert_eq!(gateway_port(&app, &mut gws, false), Some(8));
        assert_eq!(gateway_port(&db, &mut gws, false), Some(9));
        assert_eq!(gateway_port(&app, &mut gws, false), Some(8), "stable");
        release_gateway(&app, &mut gws);
        assert_eq!(
            gateway_port(&facts("x", "br-x", "bridge", false), &mut gws, false),
            Some(10),
            "a freed id is not reused at once"
        );
        assert_eq!(
            gateway_port(&app, &mut PortAllocator::for_gateways(8, 4), true),
            Some(GATEWAY_PORT),
            "the only network asked for looks like a single-network setup"
        );
    }
}
