//! Turning the Engine API's inspect answers into the facts the controller needs. Pure
//! functions over bollard's models, so canned API 1.41 JSON tests them without an engine.
use std::collections::BTreeSet;
use std::net::IpAddr;

use bollard::models::{ContainerInspectResponse, NetworkInspect, PortMap};
use rules_wasm::docker::{LinkSpec, PortProto, Published};
use rules_wasm::model::Cidr;

/// Docker's network option holding the kernel bridge's name.
pub const OPT_BRIDGE_NAME: &str = "com.docker.network.bridge.name";
/// Docker's network option marking the default network (`docker0`).
pub const OPT_DEFAULT_BRIDGE: &str = "com.docker.network.bridge.default_bridge";
/// Docker's network option holding inter-container communication (`"true"`/`"false"`).
pub const OPT_ENABLE_ICC: &str = "com.docker.network.bridge.enable_icc";

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// A field of an inspect answer that does not read as Docker documents it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {field}: {msg}")]
pub struct ParseError {
    /// The container or network concerned.
    pub object: String,
    /// The JSON field (`HostConfig.Links`...).
    pub field: &'static str,
    /// What is wrong with it.
    pub msg: String,
}

/// The facts about the bridge network itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkFacts {
    /// Docker's network id.
    pub id: String,
    /// Docker's network name (`bridge`).
    pub name: String,
    /// The kernel bridge (`docker0`).
    pub bridge: String,
    /// Inter-container communication as the network's options say (absent means on).
    pub icc: bool,
    /// The bridge's own addresses (IPAM gateways).
    pub gateways: Vec<IpAddr>,
    /// The network's driver (`bridge`; only those are followed).
    pub driver: String,
    /// `--internal`: no way in or out of the subnets.
    pub internal: bool,
    /// Docker's default network (`com.docker.network.bridge.default_bridge`): the only one
    /// where legacy links exist.
    pub default_bridge: bool,
    /// The IPAM subnets (IPv4, and IPv6 where enabled).
    pub subnets: Vec<Cidr>,
}

/// One container as inspected, before its host-side veth is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedContainer {
    /// Docker's container id.
    pub id: String,
    /// Name without the leading `/`.
    pub name: String,
    /// Whether it is running (only running containers have a veth).
    pub running: bool,
    /// Its init process, whose network namespace holds `eth0`.
    pub pid: Option<u32>,
    /// Addresses on the tracked network.
    pub ips: Vec<IpAddr>,
    /// MAC on the tracked network.
    pub mac: Option<[u8; 6]>,
    /// `Config.ExposedPorts`.
    pub exposed: Vec<PortProto>,
    /// Published ports (`NetworkSettings.Ports`, else `HostConfig.PortBindings`).
    pub published: Vec<Published>,
    /// `HostConfig.Links`, aliases included.
    pub links: Vec<LinkSpec>,
}

/// Reads the network facts from `GET /networks/{id}`.
pub fn parse_network(net: &NetworkInspect) -> Result<NetworkFacts, ParseError> {
    let name = net.name.clone().unwrap_or_default();
    let id = net.id.clone().unwrap_or_default();
    let err = |field, msg: String| ParseError {
        object: format!("network {name}"),
        field,
        msg,
    };
    let options = net.options.clone().unwrap_or_default();
    let bridge = match options.get(OPT_BRIDGE_NAME) {
        Some(b) if !b.is_empty() => b.clone(),
        // Docker names user-defined bridges br-<first 12 hex digits of the id>.
        _ => format!("br-{}", id.get(..12).unwrap_or(&id)),
    };
    let icc = match options.get(OPT_ENABLE_ICC).map(String::as_str) {
        None | Some("") => true,
        Some(v) => parse_bool(v).ok_or_else(|| {
            err(
                "Options",
                format!("{OPT_ENABLE_ICC}={v:?} is not a boolean"),
            )
        })?,
    };
    let mut gateways = Vec::new();
    let mut subnets = Vec::new();
    for cfg in net.ipam.iter().flat_map(|i| i.config.iter().flatten()) {
        if let Some(sub) = cfg.subnet.as_deref().filter(|s| !s.is_empty()) {
            subnets.push(parse_cidr(sub).ok_or_else(|| {
                err(
                    "IPAM.Config.Subnet",
                    format!("{sub:?} is not an address/prefix"),
                )
            })?);
        }
        if let Some(gw) = cfg.gateway.as_deref().filter(|g| !g.is_empty()) {
            // Some engines write the gateway with a prefix length.
            let addr = gw.split('/').next().unwrap_or(gw);
            let ip = addr
                .parse::<IpAddr>()
                .map_err(|e| err("IPAM.Config.Gateway", format!("{gw:?}: {e}")))?;
            gateways.push(ip);
        }
    }
    let default_bridge = options
        .get(OPT_DEFAULT_BRIDGE)
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    Ok(NetworkFacts {
        id,
        name,
        bridge,
        icc,
        gateways,
        driver: net.driver.clone().unwrap_or_default(),
        internal: net.internal.unwrap_or(false),
        default_bridge,
        subnets,
    })
}

/// Parses `172.18.0.0/16` or `fd00::/64`.
fn parse_cidr(s: &str) -> Option<Cidr> {
    let (addr, len) = s.split_once('/')?;
    Cidr::new(addr.parse().ok()?, len.parse().ok()?)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Some(true),
        "false" | "0" | "no" => Some(false),
        _ => None,
    }
}

/// Reads a container from `GET /containers/{id}/json`. Returns `None` when it is not
/// attached to the network called `network` (or with id `network_id`).
pub fn parse_container(
    c: &ContainerInspectResponse,
    network: &str,
    network_id: &str,
) -> Result<Option<ParsedContainer>, ParseError> {
    let name = c
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string();
    let id = c.id.clone().unwrap_or_default();
    let object = if name.is_empty() {
        format!("container {id}")
    } else {
        format!("container {name}")
    };
    let err = |field, msg: String| ParseError {
        object: object.clone(),
        field,
        msg,
    };
    let settings = c.network_settings.as_ref();
    let endpoint = settings.and_then(|s| s.networks.as_ref()).and_then(|nets| {
        nets.get(network).or_else(|| {
            nets.values()
                .find(|ep| !network_id.is_empty() && ep.network_id.as_deref() == Some(network_id))
        })
    });
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };

    let mut ips = Vec::new();
    for (field, value) in [
        ("NetworkSettings.Networks.IPAddress", &endpoint.ip_address),
        (
            "NetworkSettings.Networks.GlobalIPv6Address",
            &endpoint.global_ipv6_address,
        ),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            ips.push(
                v.parse::<IpAddr>()
                    .map_err(|e| err(field, format!("{v:?}: {e}")))?,
            );
        }
    }
    let mac = match endpoint.mac_address.as_deref().filter(|m| !m.is_empty()) {
        Some(m) => Some(
            parse_mac(m)
                .ok_or_else(|| err("NetworkSettings.Networks.MacAddress", format!("{m:?}")))?,
        ),
        None => None,
    };

    let mut exposed = BTreeSet::new();
    for key in c
        .config
        .iter()
        .flat_map(|cfg| cfg.exposed_ports.iter().flatten())
    {
        exposed.insert(
            parse_port_proto(key).ok_or_else(|| err("Config.ExposedPorts", format!("{key:?}")))?,
        );
    }

    let actual = settings.and_then(|s| s.ports.as_ref());
    let configured = c
        .host_config
        .as_ref()
        .and_then(|h| h.port_bindings.as_ref());
    let mut published = published_from(actual, &err, "NetworkSettings.Ports")?;
    if published.is_empty() {
        published = published_from(configured, &err, "HostConfig.PortBindings")?;
    }

    let mut links = Vec::new();
    for l in c.host_config.iter().flat_map(|h| h.links.iter().flatten()) {
        links.push(parse_link(l).ok_or_else(|| {
            err(
                "HostConfig.Links",
                format!("{l:?} is not of the form /child:/parent/alias"),
            )
        })?);
    }

    let state = c.state.as_ref();
    let running = state.and_then(|s| s.running).unwrap_or(false);
    let pid = state
        .and_then(|s| s.pid)
        .filter(|&p| p > 0)
        .and_then(|p| u32::try_from(p).ok());

    Ok(Some(ParsedContainer {
        id,
        name,
        running,
        pid,
        ips,
        mac,
        exposed: exposed.into_iter().collect(),
        published,
        links,
    }))
}

fn published_from(
    map: Option<&PortMap>,
    err: &dyn Fn(&'static str, String) -> ParseError,
    field: &'static str,
) -> Result<Vec<Published>, ParseError> {
    let mut out = BTreeSet::new();
    for (key, bindings) in map.into_iter().flatten() {
        let Some(bindings) = bindings else { continue };
        let pp = parse_port_proto(key).ok_or_else(|| err(field, format!("{key:?}")))?;
        for b in bindings {
            // An empty HostPort in PortBindings means "any": the engine fills it in
            // NetworkSettings.Ports, which is read first.
            let Some(hp) = b.host_port.as_deref().filter(|p| !p.is_empty()) else {
                continue;
            };
            let host_port = hp
                .parse::<u16>()
                .map_err(|e| err(field, format!("HostPort {hp:?}: {e}")))?;
            out.insert(Published {
                proto: pp.proto,
                container_port: pp.port,
                host_port,
            });
        }
    }
    Ok(out.into_iter().collect())
}

/// Parses `80/tcp`, `53/udp`, `9/sctp` (no protocol means tcp).
pub fn parse_port_proto(s: &str) -> Option<PortProto> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = match proto {
        "tcp" => TCP,
        "udp" => UDP,
        "sctp" => SCTP,
        _ => return None,
    };
    Some(PortProto {
        proto,
        port: port.parse().ok()?,
    })
}

/// Parses a legacy link as Docker stores it: `/child:/parent/alias`.
pub fn parse_link(s: &str) -> Option<LinkSpec> {
    let (child, path) = s.split_once(':')?;
    let child = child.trim_start_matches('/');
    let alias = path.rsplit('/').next()?;
    if child.is_empty() || alias.is_empty() || !path.starts_with('/') {
        return None;
    }
    Some(LinkSpec {
        child: child.to_string(),
        alias: alias.to_string(),
    })
}

/// Parses `02:42:ac:11:00:02`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests;
