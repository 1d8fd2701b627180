//! The lab file: what it may say (see the [module docs](super) for the syntax), the checks
//! that turn it into a [`LabSpec`] the builder can trust (names unique and usable, addresses
//! inside their network's subnet, subnets apart, links to containers on a shared network,
//! published host ports unique), each failing with a [`SpecError`] that names what and where,
//! and [`LabSpec::host_state`]: the one numbering of ports, MACs and interface names that both
//! the builder and `bridgewall trace --lab` use.
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use rules_wasm::docker::{BridgeNetwork, ContainerInfo, LinkSpec, PortId, PortProto, Published};
use rules_wasm::model::Cidr;
use serde::Deserialize;

use super::LabError;
use super::probe::Proto;
use crate::docker::parse::parse_port_proto;
use crate::state::{
    Attachment, BridgeState, DEFAULT_MAX_NETWORKS, DEFAULT_MAX_PORTS, GATEWAY_PORT, HostState,
    PortAllocator, UNPLACED,
};

/// A lab, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The bridge networks, in file order (a `[bridge]` table first).
    pub networks: Vec<NetworkSpec>,
    /// User rules in iptables syntax, one per entry (handed to the policy compiler).
    pub rules: Vec<String>,
    /// The containers, in file order.
    pub containers: Vec<ContainerSpec>,
    /// Hosts outside the bridges, each on its own link to the lab's host namespace.
    pub outside: Vec<OutsideSpec>,
    /// Walkthrough steps: probes and what Docker's semantics expect of them.
    pub steps: Vec<StepSpec>,
}

/// One bridge network: Docker's default `bridge` or a user-defined one. Each gets its own
/// kernel bridge in the lab's host namespace, so each is its own L2 domain as in Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSpec {
    /// Docker's network name (`bridge`, `front`): what containers and user rules call it.
    pub name: String,
    /// Kernel bridge name (at most 15 bytes).
    pub bridge: String,
    /// Its IPv4 subnet.
    pub subnet: Cidr,
    /// The bridge's own address: the host on this network, its containers' gateway.
    pub gateway: Ipv4Addr,
    /// Inter-container communication (`com.docker.network.bridge.enable_icc`).
    pub icc: bool,
    /// Docker's `--internal`: no traffic between the network and anything outside its
    /// subnet.
    pub internal: bool,
}

impl NetworkSpec {
    /// The subnet's prefix length (IPv4 bits), what the bridge's address is added with.
    pub fn prefix(&self) -> u8 {
        self.subnet.len.saturating_sub(96)
    }

    /// The subnet's network address, what outside hosts route to.
    pub fn subnet_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from((self.subnet.addr & u128::from(u32::MAX)) as u32)
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        in_cidr(&self.subnet, ip)
    }
}

/// A container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Its name.
    pub name: String,
    /// Its interfaces, one per network it is on, in file order: `eth0` first, and its
    /// default route goes through the first one that is not `--internal`.
    pub interfaces: Vec<InterfaceSpec>,
    /// Exposed ports (what links open).
    pub exposed: Vec<PortProto>,
    /// Published ports (served on the container's first interface's address).
    pub published: Vec<Published>,
    /// Links it was started with.
    pub links: Vec<LinkSpec>,
    /// Services it runs.
    pub responders: Vec<ResponderSpec>,
}

/// A container's place on one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceSpec {
    /// The network's name.
    pub network: String,
    /// The container's address on it.
    pub ip: Ipv4Addr,
}

impl ContainerSpec {
    /// Its address on its first network (where published ports lead and what a name
    /// resolves to from outside); 0.0.0.0 for a hand-made spec without interfaces (a
    /// validated one always has one).
    pub fn ip(&self) -> Ipv4Addr {
        self.interfaces
            .first()
            .map_or(Ipv4Addr::UNSPECIFIED, |i| i.ip)
    }

    /// Its address on `network`, if it is on it.
    pub fn ip_on(&self, network: &str) -> Option<Ipv4Addr> {
        self.interfaces
            .iter()
            .find(|i| i.network == network)
            .map(|i| i.ip)
    }

    /// Whether it is on `network`.
    pub fn is_on(&self, network: &str) -> bool {
        self.ip_on(network).is_some()
    }
}

/// A service inside a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponderSpec {
    /// What it speaks.
    pub kind: ResponderKind,
    /// Its port.
    pub port: u16,
}

/// Responder kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResponderKind {
    /// TCP: echoes what it reads once, then closes.
    Tcp,
    /// UDP: echoes each datagram.
    Udp,
    /// HTTP/1.0: answers any request with `hello from NAME`.
    Http,
}

/// A host outside the bridges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutsideSpec {
    /// Its name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Prefix length of its link.
    pub prefix: u8,
    /// The lab host's address on that link (its gateway, and where published ports are).
    pub host_ip: Ipv4Addr,
}

/// One walkthrough step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepSpec {
    /// Source: a container, an outside host, or `host` (the lab's host namespace).
    pub from: String,
    /// Destination: a name, a link alias of `from`, `host`, or an IPv4 address.
    pub to: String,
    /// Protocol.
    pub proto: Proto,
    /// Destination port.
    pub port: u16,
    /// What Docker's semantics say should happen.
    pub expect: Expect,
    /// Why, in a few words.
    pub why: String,
}

/// The expected outcome of a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// The connection gets through and is answered.
    Pass,
    /// The connection is dropped (times out).
    Drop,
}

/// What is wrong with a lab file, naming the item (network, container, outside host or
/// step) and the value, so a test or a caller can tell the cases apart without reading
/// messages.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The text is not TOML, or not the lab file's shape (unknown or missing keys).
    #[error("{0}")]
    Toml(String),
    /// Neither a `[bridge]` table nor any `[[network]]`.
    #[error("the lab has no network: give a [bridge] table or [[network]] entries")]
    NoNetwork,
    /// More networks than the dataplane gives gateway ports to.
    #[error("{count} networks: the dataplane serves at most {max}")]
    TooManyNetworks {
        /// Networks in the file.
        count: usize,
        /// The most there may be.
        max: usize,
    },
    /// More container interfaces than the dataplane has port ids.
    #[error("{count} container interfaces: the dataplane's port ids hold at most {max}")]
    TooManyInterfaces {
        /// Interfaces (one per container and network) in the file.
        count: usize,
        /// The most there may be.
        max: usize,
    },
    /// A name Docker would not accept, or one the lab reserves.
    #[error(
        "{what} name {name:?}: use letters, digits, '_', '.', '-' (like Docker's names); \"host\" is the lab's host"
    )]
    BadName {
        /// "network", "container" or "outside host".
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Two items of one kind (or a container and an outside host) share a name.
    #[error("{what} {name}: the name is used twice")]
    NameUsedTwice {
        /// "network", "container" or "outside host".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A kernel bridge name the kernel would refuse.
    #[error("network {network}: bridge name {bridge:?}: 1 to 15 bytes")]
    BadBridgeName {
        /// The network.
        network: String,
        /// The bridge name given.
        bridge: String,
    },
    /// Two networks on one kernel bridge.
    #[error("networks {first} and {second} both use bridge {bridge}")]
    BridgeUsedTwice {
        /// The network listed first.
        first: String,
        /// The other.
        second: String,
        /// The bridge.
        bridge: String,
    },
    /// Not `ADDRESS/PREFIX` (IPv4).
    #[error("{item}: {field} {text:?} is not an IPv4 ADDRESS/PREFIX")]
    BadCidr {
        /// The item ("network front", "outside host x").
        item: String,
        /// The key ("subnet", "ip").
        field: &'static str,
        /// What was written.
        text: String,
    },
    /// A network's gateway outside its subnet.
    #[error("network {network}: gateway {gateway} is outside {subnet}")]
    GatewayOutsideSubnet {
        /// The network.
        network: String,
        /// Its gateway.
        gateway: Ipv4Addr,
        /// Its subnet.
        subnet: Cidr,
    },
    /// Two networks' subnets overlap (Docker refuses such networks).
    #[error("networks {first} and {second}: subnets {first_subnet} and {second_subnet} overlap")]
    SubnetsOverlap {
        /// The network listed first.
        first: String,
        /// Its subnet.
        first_subnet: Cidr,
        /// The other network.
        second: String,
        /// Its subnet.
        second_subnet: Cidr,
    },
    /// A container names a network the lab does not have.
    #[error("container {container}: network {network:?} is not in the lab")]
    UnknownNetwork {
        /// The container.
        container: String,
        /// The network named.
        network: String,
    },
    /// A container is on one network twice.
    #[error("container {container}: network {network} is listed twice")]
    NetworkListedTwice {
        /// The container.
        container: String,
        /// The network.
        network: String,
    },
    /// A container with no address, or with both `ip` and `networks`.
    #[error(
        "container {container}: give either `ip` (with `network` when the lab has several networks and none called \"bridge\") or `networks = [{{ network = .., ip = .. }}, ..]`"
    )]
    AddressForm {
        /// The container.
        container: String,
    },
    /// A container address outside its network's subnet.
    #[error("container {container}: {ip} is outside network {network}'s subnet {subnet}")]
    AddressOutsideSubnet {
        /// The container.
        container: String,
        /// The network.
        network: String,
        /// The address given.
        ip: Ipv4Addr,
        /// The network's subnet.
        subnet: Cidr,
    },
    /// An address held by something else (a gateway, a container, an outside host).
    #[error("{item}: address {ip} is already taken")]
    AddressTaken {
        /// The item ("container web", "outside host x").
        item: String,
        /// The address.
        ip: Ipv4Addr,
    },
    /// `expose` not `PORT[/tcp|/udp]`.
    #[error("container {container}: expose {text:?}: use PORT[/tcp|/udp]")]
    BadExpose {
        /// The container.
        container: String,
        /// What was written.
        text: String,
    },
    /// `publish` not `HOST_PORT:CONTAINER_PORT[/tcp]`.
    #[error("container {container}: publish {text:?}: {reason}")]
    BadPublish {
        /// The container.
        container: String,
        /// What was written.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A host port published by two containers (or twice by one).
    #[error("container {container}: host port {port} is published twice")]
    HostPortTwice {
        /// The container publishing it the second time.
        container: String,
        /// The host port.
        port: u16,
    },
    /// A published port of a container whose first network is `--internal`: Docker maps
    /// no ports of such a container.
    #[error(
        "container {container}: publishes ports but its first network {network} is --internal (Docker maps no ports there)"
    )]
    PublishOnInternal {
        /// The container.
        container: String,
        /// Its first network.
        network: String,
    },
    /// A link to a container that does not exist (or to itself).
    #[error("container {container}: link {child}:{alias} names no other container")]
    BadLink {
        /// The parent.
        container: String,
        /// The child named.
        child: String,
        /// The alias.
        alias: String,
    },
    /// A link between containers that share no network (Docker refuses to start such a
    /// container).
    #[error("container {container}: link {child}:{alias}: the two share no network")]
    LinkAcrossNetworks {
        /// The parent.
        container: String,
        /// The child.
        child: String,
        /// The alias.
        alias: String,
    },
    /// An outside host's `host_ip` not on its link.
    #[error("outside host {name}: host_ip {host_ip} is not on {link}")]
    HostIpOffLink {
        /// The outside host.
        name: String,
        /// The host_ip given.
        host_ip: Ipv4Addr,
        /// Its link.
        link: Cidr,
    },
    /// An outside host's link overlapping a network's subnet.
    #[error("outside host {name}: {link} overlaps network {network}'s subnet {subnet}")]
    OutsideOverlapsNetwork {
        /// The outside host.
        name: String,
        /// Its link.
        link: Cidr,
        /// The network.
        network: String,
        /// Its subnet.
        subnet: Cidr,
    },
    /// A step from something the lab does not have.
    #[error("step {step}: from {from:?} is not a container, outside host or \"host\"")]
    UnknownStepSource {
        /// 1-based step number.
        step: usize,
        /// The source given.
        from: String,
    },
    /// A step to something the lab does not have.
    #[error(
        "step {step}: to {to:?} is not a name, a link alias of {from}, \"host\" or an IPv4 address"
    )]
    UnknownStepTarget {
        /// 1-based step number.
        step: usize,
        /// The step's source.
        from: String,
        /// The target given.
        to: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    #[serde(default)]
    rules: Vec<String>,
    bridge: Option<RawBridge>,
    #[serde(default)]
    network: Vec<RawNetwork>,
    #[serde(default)]
    container: Vec<RawContainer>,
    #[serde(default)]
    outside: Vec<RawOutside>,
    #[serde(default)]
    step: Vec<RawStep>,
}

/// `[bridge]`: the seed's single-bridge form, Docker's default network `bridge`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    /// The kernel bridge's name.
    #[serde(default = "default_bridge")]
    name: String,
    subnet: String,
    gateway: Option<Ipv4Addr>,
    #[serde(default = "yes")]
    icc: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: String,
    bridge: Option<String>,
    subnet: String,
    gateway: Option<Ipv4Addr>,
    #[serde(default = "yes")]
    icc: bool,
    #[serde(default)]
    internal: bool,
}

/// Docker's default network's name, which containers given only `ip` are on.
pub const DEFAULT_NETWORK: &str = "bridge";

fn default_bridge() -> String {
    "docker0".into()
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: String,
    ip: Option<Ipv4Addr>,
    network: Option<String>,
    #[serde(default)]
    networks: Vec<RawAttach>,
    #[serde(default)]
    expose: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    link: Vec<String>,
    #[serde(default)]
    responder: Vec<ResponderSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttach {
    network: String,
    ip: Ipv4Addr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutside {
    name: String,
    ip: String,
    host_ip: Ipv4Addr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    from: String,
    to: String,
    #[serde(default = "tcp")]
    proto: Proto,
    port: u16,
    expect: Expect,
    #[serde(default)]
    why: String,
}

fn tcp() -> Proto {
    Proto::Tcp
}

/// The longest interface name Linux accepts.
const IFNAMSIZ_MAX: usize = 15;

/// Most networks a lab may have: the default one (gateway port 0) and as many others as
/// the gateways' id range holds.
pub const MAX_NETWORKS: usize = DEFAULT_MAX_NETWORKS + 1;

/// Most container interfaces a lab may have: every container port id but the gateway's.
pub const MAX_INTERFACES: usize = DEFAULT_MAX_PORTS - 1;

impl LabSpec {
    /// Parses and checks a lab file; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<LabSpec, LabError> {
        Self::parse(text).map_err(|error| LabError::Spec {
            origin: origin.to_string(),
            error: Box::new(error),
        })
    }

    /// Parses and checks a lab file, with the typed error (what [`LabSpec::from_toml`] wraps
    /// with the file's name).
    pub fn parse(text: &str) -> Result<LabSpec, SpecError> {
        let raw: RawLab = toml::from_str(text).map_err(|e| SpecError::Toml(e.to_string()))?;
        validate(raw)
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The outside host called `name`.
    pub fn outside_host(&self, name: &str) -> Option<&OutsideSpec> {
        self.outside.iter().find(|o| o.name == name)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == name)
    }

    /// The network whose gateway is port 0, as Docker tracking gives Docker's default
    /// network: the one called `bridge`, else the first in the file.
    pub fn default_network(&self) -> Option<&NetworkSpec> {
        self.network(DEFAULT_NETWORK).or(self.networks.first())
    }

    /// The network `c`'s default route goes through: its first that is not `--internal`
    /// (as Docker picks the gateway endpoint), else its first (Docker would give it no
    /// default route; the lab gives it one so that what it sends out reaches bridgewall,
    /// which must drop it, instead of being refused by the container's own routing).
    pub fn route_network(&self, c: &ContainerSpec) -> Option<&NetworkSpec> {
        let nets = || c.interfaces.iter().filter_map(|i| self.network(&i.network));
        nets().find(|n| !n.internal).or_else(|| nets().next())
    }

    /// The one description of the lab's dataplane ports, which [`super::Lab::build`] builds
    /// (taking its interface names, MACs and port ids from here and adding the interface
    /// indexes) and `bridgewall trace --lab` traces against, so the two cannot number
    /// ports differently:
    /// - container interfaces get ids as Docker tracking gives them, from one id space over
    ///   every network ([`PortAllocator::with_limit`] of [`DEFAULT_MAX_PORTS`]), in file
    ///   order of containers, then of each container's networks: 1, 2, 3…;
    /// - the [default network](LabSpec::default_network) gets gateway port
    ///   [`GATEWAY_PORT`], the others ids above the containers'
    ///   ([`PortAllocator::for_gateways`] with the default limits), in file order;
    /// - host-side veths are `veth<I>-<name>` (container I's first network) and
    ///   `veth<I>n<K>-<name>` (its network K ≥ 1), cut to 15 bytes; MACs are Docker's
    ///   `02:42` and the interface's IPv4 address;
    /// - a container's published ports are listed on its first network only, where the
    ///   lab's proxy (like Docker's DNAT) sends them;
    /// - networks are sorted by name, containers within a network too, as Docker tracking
    ///   publishes them.
    ///
    /// Interface indexes are 0 here: they exist once the lab is built.
    pub fn host_state(&self) -> HostState {
        let mut gateways = PortAllocator::for_gateways(DEFAULT_MAX_PORTS, DEFAULT_MAX_NETWORKS);
        let default = self.default_network().map(|n| n.name.as_str());
        let mut nets: BTreeMap<&str, BridgeState> = BTreeMap::new();
        for n in &self.networks {
            let gateway_port = if Some(n.name.as_str()) == default {
                GATEWAY_PORT
            } else {
                gateways
                    .port_for(&format!("gateway:{}", n.bridge))
                    .unwrap_or(UNPLACED)
            };
            let network = BridgeNetwork {
                name: n.name.clone(),
                bridge: n.bridge.clone(),
                internal: n.internal,
                subnets: vec![n.subnet],
                icc: n.icc,
                gateway_port,
                gateway_ips: vec![IpAddr::V4(n.gateway)],
                containers: Vec::new(),
            };
            nets.insert(
                &n.name,
                BridgeState {
                    network,
                    ..BridgeState::default()
                },
            );
        }
        let mut ports = PortAllocator::with_limit(DEFAULT_MAX_PORTS);
        for (i, c) in self.containers.iter().enumerate() {
            for (k, iface) in c.interfaces.iter().enumerate() {
                let Some(net) = nets.get_mut(iface.network.as_str()) else {
                    continue;
                };
                let host_ifname = host_ifname(i, k, &c.name);
                let port = ports.port_for(&host_ifname).unwrap_or(UNPLACED);
                let attachment = Attachment {
                    container: c.name.clone(),
                    id: c.name.clone(),
                    network: iface.network.clone(),
                    host_ifname,
                    host_ifindex: 0,
                    port,
                };
                if port == UNPLACED {
                    net.unplaced.push(attachment);
                    continue;
                }
                net.network.containers.push(ContainerInfo {
                    name: c.name.clone(),
                    port,
                    ips: vec![IpAddr::V4(iface.ip)],
                    mac: docker_mac(iface.ip),
                    exposed: c.exposed.clone(),
                    // Published ports lead to the first network's address (the lab's
                    // proxy, like Docker's DNAT, targets one address).
                    published: if k == 0 {
                        c.published.clone()
                    } else {
                        Vec::new()
                    },
                    links: c.links.clone(),
                });
                net.attachments.push(attachment);
            }
        }
        let mut networks: Vec<BridgeState> = nets.into_values().collect();
        for net in &mut networks {
            let mut pairs: Vec<(ContainerInfo, Attachment)> = net
                .network
                .containers
                .drain(..)
                .zip(net.attachments.drain(..))
                .collect();
            pairs.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            (net.network.containers, net.attachments) = pairs.into_iter().unzip();
        }
        HostState { networks }
    }

    /// The ids [`LabSpec::host_state`] gives: the dataplane port of `container`'s interface
    /// on `network`.
    pub fn port_of(&self, container: &str, network: &str) -> Option<PortId> {
        self.host_state()
            .network(network)
            .and_then(|n| n.attachment(container))
            .map(|a| a.port)
    }
}

/// The host-side veth name of container `index`'s interface `k` (see
/// [`LabSpec::host_state`]): unique by the index, whatever the name.
fn host_ifname(index: usize, k: usize, name: &str) -> String {
    let s = if k == 0 {
        format!("veth{index}-{name}")
    } else {
        format!("veth{index}n{k}-{name}")
    };
    s.chars().take(IFNAMSIZ_MAX).collect()
}

/// Docker's MAC scheme for bridge endpoints: 02:42 followed by the IPv4 address.
pub(crate) fn docker_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

fn in_cidr(c: &Cidr, ip: Ipv4Addr) -> bool {
    c.contains(&rules_wasm::abi::addr_bytes(IpAddr::V4(ip)))
}

/// Whether two prefixes share an address (then one contains the other).
fn overlap(a: &Cidr, b: &Cidr) -> bool {
    let len = a.len.min(b.len);
    a.addr & Cidr::mask_of(len) == b.addr & Cidr::mask_of(len)
}

/// `ADDRESS/PREFIX` (IPv4): the address as written and its prefix.
fn parse_cidr(text: &str, item: &str, field: &'static str) -> Result<(Ipv4Addr, Cidr), SpecError> {
    let bad = || SpecError::BadCidr {
        item: item.to_string(),
        field,
        text: text.to_string(),
    };
    let (a, p) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    let cidr = Cidr::new(IpAddr::V4(addr), prefix).ok_or_else(bad)?;
    Ok((addr, cidr))
}

fn check_name(name: &str, what: &'static str) -> Result<(), SpecError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty()
        || !ok_chars
        || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || name == "host"
    {
        return Err(SpecError::BadName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

fn parse_publish(container: &str, s: &str) -> Result<Published, SpecError> {
    let bad = |reason| SpecError::BadPublish {
        container: container.to_string(),
        text: s.to_string(),
        reason,
    };
    let (host, rest) = s
        .split_once(':')
        .ok_or_else(|| bad("use HOST_PORT:CONTAINER_PORT[/tcp]"))?;
    let host_port: u16 = host.parse().map_err(|_| bad("host port is not a port"))?;
    let pp = parse_port_proto(rest).ok_or_else(|| bad("container port is not PORT[/tcp]"))?;
    if pp.proto != 6 {
        return Err(bad("the lab's port proxy forwards TCP only"));
    }
    Ok(Published {
        proto: pp.proto,
        container_port: pp.port,
        host_port,
    })
}

/// Addresses already held, and by whom (every gateway, container interface, outside host
/// and the lab host's end of each outside link).
#[derive(Default)]
struct Taken(BTreeSet<Ipv4Addr>);

impl Taken {
    fn take(&mut self, ip: Ipv4Addr, item: impl FnOnce() -> String) -> Result<(), SpecError> {
        if self.0.insert(ip) {
            Ok(())
        } else {
            Err(SpecError::AddressTaken { item: item(), ip })
        }
    }
}

fn validate(raw: RawLab) -> Result<LabSpec, SpecError> {
    let mut taken = Taken::default();
    let networks = validate_networks(raw.bridge, raw.network, &mut taken)?;
    let containers = validate_containers(raw.container, &networks, &mut taken)?;
    let outside = validate_outside(raw.outside, &networks, &containers, &mut taken)?;
    let steps = validate_steps(raw.step, &containers, &outside)?;
    Ok(LabSpec {
        networks,
        rules: raw.rules,
        containers,
        outside,
        steps,
    })
}

/// `[bridge]` (Docker's default network `bridge`, listed first) and `[[network]]`: names,
/// bridges and their gateway pairs unique, gateways inside subnets, subnets apart.
fn validate_networks(
    bridge: Option<RawBridge>,
    list: Vec<RawNetwork>,
    taken: &mut Taken,
) -> Result<Vec<NetworkSpec>, SpecError> {
    let from_bridge = bridge.map(|b| RawNetwork {
        name: DEFAULT_NETWORK.into(),
        bridge: Some(b.name),
        subnet: b.subnet,
        gateway: b.gateway,
        icc: b.icc,
        internal: false,
    });
    let raws: Vec<RawNetwork> = from_bridge.into_iter().chain(list).collect();
    if raws.is_empty() {
        return Err(SpecError::NoNetwork);
    }
    if raws.len() > MAX_NETWORKS {
        return Err(SpecError::TooManyNetworks {
            count: raws.len(),
            max: MAX_NETWORKS,
        });
    }
    let mut out: Vec<NetworkSpec> = Vec::new();
    for r in raws {
        let net = network(r)?;
        for other in &out {
            check_apart(other, &net)?;
        }
        taken.take(net.gateway, || format!("network {}", net.name))?;
        out.push(net);
    }
    Ok(out)
}

/// One network on its own.
fn network(r: RawNetwork) -> Result<NetworkSpec, SpecError> {
    check_name(&r.name, "network")?;
    let bridge = r.bridge.unwrap_or_else(|| {
        if r.name == DEFAULT_NETWORK {
            default_bridge()
        } else {
            format!("br-{}", r.name)
                .chars()
                .take(IFNAMSIZ_MAX)
                .collect()
        }
    });
    if bridge.is_empty() || bridge.len() > IFNAMSIZ_MAX {
        return Err(SpecError::BadBridgeName {
            network: r.name,
            bridge,
        });
    }
    let (_, subnet) = parse_cidr(&r.subnet, &format!("network {}", r.name), "subnet")?;
    // Docker's default gateway: the subnet's first address.
    let gateway = r.gateway.unwrap_or_else(|| {
        Ipv4Addr::from(((subnet.addr & u128::from(u32::MAX)) as u32).wrapping_add(1))
    });
    if !in_cidr(&subnet, gateway) {
        return Err(SpecError::GatewayOutsideSubnet {
            network: r.name,
            gateway,
            subnet,
        });
    }
    Ok(NetworkSpec {
        name: r.name,
        bridge,
        subnet,
        gateway,
        icc: r.icc,
        internal: r.internal,
    })
}

/// Two networks that can live side by side: distinct names, bridges and gateway pairs,
/// subnets apart.
fn check_apart(a: &NetworkSpec, b: &NetworkSpec) -> Result<(), SpecError> {
    if a.name == b.name {
        return Err(SpecError::NameUsedTwice {
            what: "network",
            name: b.name.clone(),
        });
    }
    if a.bridge == b.bridge {
        return Err(SpecError::BridgeUsedTwice {
            first: a.name.clone(),
            second: b.name.clone(),
            bridge: b.bridge.clone(),
        });
    }
    if overlap(&a.subnet, &b.subnet) {
        return Err(SpecError::SubnetsOverlap {
            first: a.name.clone(),
            first_subnet: a.subnet,
            second: b.name.clone(),
            second_subnet: b.subnet,
        });
    }
    Ok(())
}

/// `[[container]]`: names, addresses per network, ports, then links (which need every
/// container), then the dataplane's port budget.
fn validate_containers(
    raws: Vec<RawContainer>,
    networks: &[NetworkSpec],
    taken: &mut Taken,
) -> Result<Vec<ContainerSpec>, SpecError> {
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut out = Vec::new();
    for c in raws {
        check_name(&c.name, "container")?;
        if !names.insert(c.name.clone()) {
            return Err(SpecError::NameUsedTwice {
                what: "container",
                name: c.name,
            });
        }
        let interfaces = container_interfaces(&c, networks, taken)?;
        let (exposed, published) = container_ports(&c, &mut host_ports)?;
        if !published.is_empty()
            && let Some(first) = interfaces
                .first()
                .and_then(|i| networks.iter().find(|n| n.name == i.network))
            && first.internal
        {
            return Err(SpecError::PublishOnInternal {
                container: c.name,
                network: first.name.clone(),
            });
        }
        let links = c
            .link
            .iter()
            .map(|l| {
                let (child, alias) = l.split_once(':').unwrap_or((l, l));
                LinkSpec {
                    child: child.to_string(),
                    alias: alias.to_string(),
                }
            })
            .collect();
        out.push(ContainerSpec {
            name: c.name,
            interfaces,
            exposed,
            published,
            links,
            responders: c.responder,
        });
    }
    check_links(&out)?;
    let count: usize = out.iter().map(|c| c.interfaces.len()).sum();
    if count > MAX_INTERFACES {
        return Err(SpecError::TooManyInterfaces {
            count,
            max: MAX_INTERFACES,
        });
    }
    Ok(out)
}

/// A container's interfaces: `ip` (on `network`, or on the default network `bridge`, or on
/// the lab's only network) or `networks = [{ network, ip }, ..]`, each address inside its
/// network's subnet and not taken.
fn container_interfaces(
    c: &RawContainer,
    networks: &[NetworkSpec],
    taken: &mut Taken,
) -> Result<Vec<InterfaceSpec>, SpecError> {
    let form = || SpecError::AddressForm {
        container: c.name.clone(),
    };
    let wanted: Vec<(String, Ipv4Addr)> = match (c.ip, &c.network, c.networks.is_empty()) {
        (Some(ip), Some(net), true) => vec![(net.clone(), ip)],
        (Some(ip), None, true) => {
            let only = (networks.len() == 1).then(|| networks[0].name.clone());
            let default = networks
                .iter()
                .find(|n| n.name == DEFAULT_NETWORK)
                .map(|n| n.name.clone());
            vec![(default.or(only).ok_or_else(form)?, ip)]
        }
        (None, None, false) => c
            .networks
            .iter()
            .map(|a| (a.network.clone(), a.ip))
            .collect(),
        _ => return Err(form()),
    };
    let mut out: Vec<InterfaceSpec> = Vec::new();
    for (network, ip) in wanted {
        let Some(net) = networks.iter().find(|n| n.name == network) else {
            return Err(SpecError::UnknownNetwork {
                container: c.name.clone(),
                network,
            });
        };
        if out.iter().any(|i| i.network == network) {
            return Err(SpecError::NetworkListedTwice {
                container: c.name.clone(),
                network,
            });
        }
        if !net.contains(ip) {
            return Err(SpecError::AddressOutsideSubnet {
                container: c.name.clone(),
                network,
                ip,
                subnet: net.subnet,
            });
        }
        taken.take(ip, || format!("container {}", c.name))?;
        out.push(InterfaceSpec { network, ip });
    }
    Ok(out)
}

/// A container's exposed and published ports; published host ports unique over the lab,
/// and exposed (Docker exposes what it publishes).
fn container_ports(
    c: &RawContainer,
    host_ports: &mut BTreeSet<u16>,
) -> Result<(Vec<PortProto>, Vec<Published>), SpecError> {
    let mut exposed = BTreeSet::new();
    for e in &c.expose {
        exposed.insert(parse_port_proto(e).ok_or_else(|| SpecError::BadExpose {
            container: c.name.clone(),
            text: e.clone(),
        })?);
    }
    let mut published = Vec::new();
    for p in &c.publish {
        let p = parse_publish(&c.name, p)?;
        if !host_ports.insert(p.host_port) {
            return Err(SpecError::HostPortTwice {
                container: c.name.clone(),
                port: p.host_port,
            });
        }
        exposed.insert(PortProto {
            proto: p.proto,
            port: p.container_port,
        });
        published.push(p);
    }
    Ok((exposed.into_iter().collect(), published))
}

/// Every link names another container that shares a network with its parent.
fn check_links(containers: &[ContainerSpec]) -> Result<(), SpecError> {
    for c in containers {
        for l in &c.links {
            let child = containers
                .iter()
                .find(|o| o.name == l.child && o.name != c.name);
            let Some(child) = child else {
                return Err(SpecError::BadLink {
                    container: c.name.clone(),
                    child: l.child.clone(),
                    alias: l.alias.clone(),
                });
            };
            if !c.interfaces.iter().any(|i| child.is_on(&i.network)) {
                return Err(SpecError::LinkAcrossNetworks {
                    container: c.name.clone(),
                    child: l.child.clone(),
                    alias: l.alias.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `[[outside]]`: names unique among containers and outside hosts, each link holding its
/// `host_ip` and apart from every network's subnet.
fn validate_outside(
    raws: Vec<RawOutside>,
    networks: &[NetworkSpec],
    containers: &[ContainerSpec],
    taken: &mut Taken,
) -> Result<Vec<OutsideSpec>, SpecError> {
    let mut names: BTreeSet<String> = containers.iter().map(|c| c.name.clone()).collect();
    let mut out = Vec::new();
    for o in raws {
        check_name(&o.name, "outside host")?;
        if !names.insert(o.name.clone()) {
            return Err(SpecError::NameUsedTwice {
                what: "outside host",
                name: o.name,
            });
        }
        let item = format!("outside host {}", o.name);
        let (ip, link) = parse_cidr(&o.ip, &item, "ip")?;
        if !in_cidr(&link, o.host_ip) {
            return Err(SpecError::HostIpOffLink {
                name: o.name,
                host_ip: o.host_ip,
                link,
            });
        }
        if let Some(n) = networks.iter().find(|n| overlap(&n.subnet, &link)) {
            return Err(SpecError::OutsideOverlapsNetwork {
                name: o.name,
                link,
                network: n.name.clone(),
                subnet: n.subnet,
            });
        }
        taken.take(ip, || item.clone())?;
        taken.take(o.host_ip, || item.clone())?;
        out.push(OutsideSpec {
            name: o.name,
            ip,
            prefix: link.len.saturating_sub(96),
            host_ip: o.host_ip,
        });
    }
    Ok(out)
}

/// `[[step]]`: from a known name or `host`, to a known name, a link alias of the source,
/// `host` or an address.
fn validate_steps(
    raws: Vec<RawStep>,
    containers: &[ContainerSpec],
    outside: &[OutsideSpec],
) -> Result<Vec<StepSpec>, SpecError> {
    let known = |n: &str| {
        n == "host" || containers.iter().any(|c| c.name == n) || outside.iter().any(|o| o.name == n)
    };
    let mut out = Vec::new();
    for (i, s) in raws.into_iter().enumerate() {
        if !known(&s.from) {
            return Err(SpecError::UnknownStepSource {
                step: i + 1,
                from: s.from,
            });
        }
        let alias_of_from = containers
            .iter()
            .find(|c| c.name == s.from)
            .is_some_and(|c| c.links.iter().any(|l| l.alias == s.to));
        if !known(&s.to) && !alias_of_from && s.to.parse::<Ipv4Addr>().is_err() {
            return Err(SpecError::UnknownStepTarget {
                step: i + 1,
                from: s.from,
                to: s.to,
            });
        }
        out.push(StepSpec {
            from: s.from,
            to: s.to,
            proto: s.proto,
            port: s.port,
            expect: s.expect,
            why: s.why,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<LabSpec, String> {
        LabSpec::from_toml(text, "test.toml").map_err(|e| e.to_string())
    }

    fn err(text: &str) -> SpecError {
        match LabSpec::parse(text) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e,
        }
    }

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        let (a, p) = s.split_once('/').unwrap();
        Cidr::new(a.parse().unwrap(), p.parse().unwrap()).unwrap()
    }

    const BASE: &str = r#"
[bridge]
subnet = "172.17.0.0/16"
gateway = "172.17.0.1"
icc = false
[[container]]
name = "a"
ip = "172.17.0.2"
expose = ["80/tcp"]
publish = ["8080:80"]
[[container]]
name = "b"
ip = "172.17.0.3"
link = ["a:web"]
"#;

    /// Two user networks, the default bridge (from `[bridge]`), one internal network and a
    /// container on two of them.
    const NETS: &str = r#"
[bridge]
subnet = "172.17.0.0/16"
icc = false
[[network]]
name = "front"
subnet = "172.18.0.0/16"
[[network]]
name = "back"
bridge = "br-backend"
subnet = "172.19.0.0/16"
gateway = "172.19.0.254"
internal = true
[[container]]
name = "legacy"
ip = "172.17.0.2"
[[container]]
name = "web"
network = "front"
ip = "172.18.0.2"
publish = ["8081:80"]
[[container]]
name = "api"
networks = [{ network = "front", ip = "172.18.0.3" }, { network = "back", ip = "172.19.0.3" }]
[[container]]
name = "db"
networks = [{ network = "back", ip = "172.19.0.2" }]
"#;

    #[test]
    fn walkthrough_parses() {
        let s = LabSpec::from_toml(super::super::WALKTHROUGH_TOML, "walkthrough").unwrap();
        assert_eq!(s.networks.len(), 1);
        assert_eq!(s.networks[0].name, "bridge");
        assert_eq!(s.networks[0].bridge, "docker0");
        assert!(!s.networks[0].icc);
        assert_eq!(s.containers.len(), 3);
        assert_eq!(s.outside.len(), 2);
        assert!(!s.steps.is_empty());
        let client3 = s.container("client3").unwrap();
        assert_eq!(
            client3.links,
            vec![LinkSpec {
                child: "nginx_server2".into(),
                alias: "ng2".into()
            }]
        );
    }

    #[test]
    fn networks_walkthrough_parses() {
        let s = LabSpec::from_toml(super::super::NETWORKS_TOML, "networks").unwrap();
        assert!(s.networks.len() >= 3, "{:?}", s.networks);
        assert!(s.networks.iter().any(|n| n.internal));
        assert!(s.networks.iter().any(|n| !n.icc));
        assert!(s.containers.iter().any(|c| c.interfaces.len() > 1));
        assert!(!s.steps.is_empty());
        let state = s.host_state();
        assert_eq!(state.networks.len(), s.networks.len());
    }

    #[test]
    fn base_parses_with_defaults() {
        let s = spec(BASE).unwrap();
        let n = &s.networks[0];
        assert_eq!((n.name.as_str(), n.bridge.as_str()), ("bridge", "docker0"));
        assert_eq!(n.prefix(), 16);
        assert_eq!(n.subnet_addr(), v4("172.17.0.0"));
        assert!(!n.internal);
        let a = s.container("a").unwrap();
        assert_eq!(
            a.interfaces,
            vec![InterfaceSpec {
                network: "bridge".into(),
                ip: v4("172.17.0.2")
            }]
        );
        assert_eq!(
            a.published,
            vec![Published {
                proto: 6,
                container_port: 80,
                host_port: 8080
            }]
        );
        assert_eq!(s.container("b").unwrap().links[0].alias, "web");
    }

    #[test]
    fn networks_syntax_in_file_order() {
        let s = spec(NETS).unwrap();
        let names: Vec<_> = s.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["bridge", "front", "back"]);
        let bridges: Vec<_> = s.networks.iter().map(|n| n.bridge.as_str()).collect();
        assert_eq!(bridges, ["docker0", "br-front", "br-backend"]);
        assert_eq!(
            s.networks[0].gateway,
            v4("172.17.0.1"),
            "Docker's default .1"
        );
        assert_eq!(s.networks[2].gateway, v4("172.19.0.254"));
        assert!(s.networks[2].internal && s.networks[1].icc && !s.networks[0].icc);
        let api = s.container("api").unwrap();
        let on: Vec<_> = api
            .interfaces
            .iter()
            .map(|i| (i.network.as_str(), i.ip))
            .collect();
        assert_eq!(
            on,
            [("front", v4("172.18.0.3")), ("back", v4("172.19.0.3"))]
        );
        assert_eq!(api.ip(), v4("172.18.0.3"));
        assert_eq!(api.ip_on("back"), Some(v4("172.19.0.3")));
        assert_eq!(s.route_network(api).unwrap().name, "front");
        let db = s.container("db").unwrap();
        assert_eq!(
            s.route_network(db).unwrap().name,
            "back",
            "only internal networks: the first"
        );
        assert_eq!(
            s.container("legacy").unwrap().interfaces[0].network,
            "bridge"
        );
        assert_eq!(s.default_network().unwrap().name, "bridge");
    }

    #[test]
    fn host_state_numbers_ports_once_for_builder_and_trace() {
        let s = spec(NETS).unwrap();
        let st = s.host_state();
        let names: Vec<_> = st
            .networks
            .iter()
            .map(|n| n.network.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["back", "bridge", "front"],
            "sorted like Docker tracking"
        );
        let bridge = st.network("bridge").unwrap();
        assert_eq!(bridge.network.gateway_port, GATEWAY_PORT);
        let (front, back) = (st.network("front").unwrap(), st.network("back").unwrap());
        assert_eq!(front.network.gateway_port, DEFAULT_MAX_PORTS as PortId);
        assert_eq!(back.network.gateway_port, DEFAULT_MAX_PORTS as PortId + 1);
        assert!(back.network.internal && !bridge.network.icc);
        assert_eq!(back.network.subnets, vec![cidr("172.19.0.0/16")]);
        assert_eq!(
            back.network.gateway_ips,
            vec![IpAddr::V4(v4("172.19.0.254"))]
        );
        // Containers in file order, each of their networks in turn: legacy 1, web 2,
        // api 3 (front) and 4 (back), db 5.
        let port = |c: &str, n: &str| s.port_of(c, n).unwrap();
        assert_eq!(
            [
                port("legacy", "bridge"),
                port("web", "front"),
                port("api", "front"),
                port("api", "back"),
                port("db", "back")
            ],
            [1, 2, 3, 4, 5]
        );
        let api_back = back.attachment("api").unwrap();
        assert_eq!(api_back.host_ifname, "veth2n1-api");
        assert_eq!(api_back.network, "back");
        assert_eq!(front.attachment("api").unwrap().host_ifname, "veth2-api");
        // Containers sorted by name, aligned with their attachments; MACs Docker's.
        for net in &st.networks {
            let names: Vec<_> = net.network.containers.iter().map(|c| &c.name).collect();
            let mut sorted = names.clone();
            sorted.sort();
            assert_eq!(names, sorted);
            for (c, a) in net.network.containers.iter().zip(&net.attachments) {
                assert_eq!((&c.name, c.port), (&a.container, a.port));
                let IpAddr::V4(ip) = c.ips[0] else {
                    panic!("v4")
                };
                assert_eq!(c.mac, docker_mac(ip));
            }
        }
        let info = back
            .network
            .containers
            .iter()
            .find(|c| c.name == "api")
            .unwrap();
        assert_eq!(info.mac, [0x02, 0x42, 172, 19, 0, 3]);
        assert_eq!(st.attached_count(), 5);
        assert_eq!(st.ports().len(), 5);
    }

    #[test]
    fn seed_host_state_is_what_it_always_was() {
        let s = LabSpec::from_toml(super::super::WALKTHROUGH_TOML, "walkthrough").unwrap();
        let st = s.host_state();
        assert_eq!(st.networks.len(), 1);
        let n = &st.networks[0];
        assert_eq!(
            (n.bridge(), n.network.gateway_port),
            ("docker0", GATEWAY_PORT)
        );
        let ports: Vec<_> = ["nginx_server1", "nginx_server2", "client3"]
            .iter()
            .map(|c| n.attachment(c).unwrap().port)
            .collect();
        assert_eq!(ports, [1, 2, 3], "containers in file order from 1");
        assert_eq!(
            n.attachment("client3").unwrap().host_ifname,
            "veth2-client3"
        );
    }

    #[test]
    fn typed_errors_name_what_and_where() {
        assert_eq!(
            err(&BASE.replace("172.17.0.3", "10.0.0.3")),
            SpecError::AddressOutsideSubnet {
                container: "b".into(),
                network: "bridge".into(),
                ip: v4("10.0.0.3"),
                subnet: cidr("172.17.0.0/16"),
            }
        );
        assert_eq!(
            err(&NETS.replace(
                "{ network = \"back\", ip = \"172.19.0.3\" }",
                "{ network = \"back\", ip = \"172.18.0.9\" }"
            )),
            SpecError::AddressOutsideSubnet {
                container: "api".into(),
                network: "back".into(),
                ip: v4("172.18.0.9"),
                subnet: cidr("172.19.0.0/16"),
            }
        );
        assert_eq!(
            err(&NETS.replace("network = \"front\"\nip", "network = \"middle\"\nip")),
            SpecError::UnknownNetwork {
                container: "web".into(),
                network: "middle".into()
            }
        );
        assert_eq!(
            err(&NETS
                .replace("gateway = \"172.19.0.254\"\n", "")
                .replace("172.19.0.0/16", "172.18.128.0/17")),
            SpecError::SubnetsOverlap {
                first: "front".into(),
                first_subnet: cidr("172.18.0.0/16"),
                second: "back".into(),
                second_subnet: cidr("172.18.128.0/17"),
            }
        );
        assert_eq!(
            err(&NETS.replace("gateway = \"172.19.0.254\"", "gateway = \"172.20.0.1\"")),
            SpecError::GatewayOutsideSubnet {
                network: "back".into(),
                gateway: v4("172.20.0.1"),
                subnet: cidr("172.19.0.0/16"),
            }
        );
        assert!(matches!(
            err(&NETS.replace("bridge = \"br-backend\"", "bridge = \"docker0\"")),
            SpecError::BridgeUsedTwice { ref bridge, .. } if bridge == "docker0"
        ));
        assert!(matches!(
            err(&format!(
                "{NETS}[[network]]\nname = \"front\"\nsubnet = \"10.9.0.0/24\"\n"
            )),
            SpecError::NameUsedTwice {
                what: "network",
                ..
            }
        ));
        assert!(matches!(
            err(&NETS.replace("subnet = \"172.18.0.0/16\"", "subnet = \"172.18.0.0\"")),
            SpecError::BadCidr {
                field: "subnet",
                ..
            }
        ));
        // A second address form, no address, or `ip` alone with no default network.
        assert_eq!(
            err(&NETS.replace("name = \"db\"\n", "name = \"db\"\nip = \"172.19.0.2\"\n")),
            SpecError::AddressForm {
                container: "db".into()
            }
        );
        let no_default = NETS
            .replace("[bridge]\n", "[[network]]\nname = \"old\"\n")
            .replace("icc = false\n", "bridge = \"docker0\"\nicc = false\n");
        assert_eq!(
            err(&no_default),
            SpecError::AddressForm {
                container: "legacy".into()
            }
        );
        assert_eq!(
            err(&NETS.replace(
                "{ network = \"back\", ip = \"172.19.0.3\" }",
                "{ network = \"front\", ip = \"172.18.0.9\" }"
            )),
            SpecError::NetworkListedTwice {
                container: "api".into(),
                network: "front".into()
            }
        );
        assert_eq!(
            err(&NETS.replace("ip = \"172.19.0.2\"", "ip = \"172.19.0.254\"")),
            SpecError::AddressTaken {
                item: "container db".into(),
                ip: v4("172.19.0.254")
            }
        );
        assert_eq!(
            err(&format!("{NETS}link = [\"legacy:old\"]\n")),
            SpecError::LinkAcrossNetworks {
                container: "db".into(),
                child: "legacy".into(),
                alias: "old".into()
            }
        );
        assert_eq!(
            err(&format!("{NETS}publish = [\"9000:80\"]\n")),
            SpecError::PublishOnInternal {
                container: "db".into(),
                network: "back".into()
            }
        );
        assert_eq!(
            err(&format!(
                "{NETS}[[outside]]\nname = \"x\"\nip = \"172.19.1.2/24\"\nhost_ip = \"172.19.1.1\"\n"
            )),
            SpecError::OutsideOverlapsNetwork {
                name: "x".into(),
                link: cidr("172.19.1.0/24"),
                network: "back".into(),
                subnet: cidr("172.19.0.0/16"),
            }
        );
        assert_eq!(
            err(&format!(
                "{NETS}[[outside]]\nname = \"x\"\nip = \"198.18.1.2/24\"\nhost_ip = \"198.18.2.1\"\n"
            )),
            SpecError::HostIpOffLink {
                name: "x".into(),
                host_ip: v4("198.18.2.1"),
                link: cidr("198.18.1.0/24"),
            }
        );
        assert_eq!(err("rules = []\n"), SpecError::NoNetwork);
        assert!(matches!(
            err(&BASE.replace("name = \"b\"", "name = \"host\"")),
            SpecError::BadName {
                what: "container",
                ..
            }
        ));
    }

    #[test]
    fn errors_name_the_item() {
        let e = spec(&BASE.replace("172.17.0.3", "10.0.0.3")).unwrap_err();
        assert!(e.contains("container b") && e.contains("outside"), "{e}");
        let e = spec(&BASE.replace("a:web", "zz:web")).unwrap_err();
        assert!(e.contains("link zz:web"), "{e}");
        let e = spec(&BASE.replace("\"8080:80\"", "\"8080:80/udp\"")).unwrap_err();
        assert!(e.contains("TCP only"), "{e}");
        let e = spec(&BASE.replace("name = \"b\"", "name = \"a\"")).unwrap_err();
        assert!(e.contains("used twice"), "{e}");
        let e = spec(&BASE.replace("icc = false", "icc = false\ncolour = 1")).unwrap_err();
        assert!(e.contains("test.toml") && e.contains("colour"), "{e}");
        let e = spec(&format!(
            "{BASE}[[step]]\nfrom = \"b\"\nto = \"nope\"\nport = 80\nexpect = \"pass\"\n"
        ))
        .unwrap_err();
        assert!(e.contains("step 1"), "{e}");
        let ok = spec(&format!(
            "{BASE}[[step]]\nfrom = \"b\"\nto = \"web\"\nport = 80\nexpect = \"pass\"\n"
        ));
        assert!(ok.is_ok(), "a link alias of the source is a valid target");
        let e = LabSpec::from_toml(&BASE.replace("172.17.0.3", "10.0.0.3"), "x.toml").unwrap_err();
        assert!(
            matches!(
                e,
                LabError::Spec { ref error, .. }
                    if matches!(**error, SpecError::AddressOutsideSubnet { .. })
            ),
            "the typed error is kept: {e:?}"
        );
    }
}
