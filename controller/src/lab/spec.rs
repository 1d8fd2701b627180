//! The lab file: what it may say, and the checks that turn it into a [`LabSpec`] the builder
//! can trust (names unique and usable, addresses inside their subnets, links to existing
//! containers, published host ports unique).
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rules_wasm::docker::{LinkSpec, PortProto, Published};
use serde::Deserialize;

use super::LabError;
use super::probe::Proto;
use crate::docker::parse::parse_port_proto;

/// A lab, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The bridge.
    pub bridge: BridgeSpec,
    /// User rules in iptables syntax, one per entry (handed to the policy compiler).
    pub rules: Vec<String>,
    /// The containers, in file order.
    pub containers: Vec<ContainerSpec>,
    /// Hosts outside the bridge, each on its own link to the lab's host namespace.
    pub outside: Vec<OutsideSpec>,
    /// Walkthrough steps: probes and what Docker's semantics expect of them.
    pub steps: Vec<StepSpec>,
}

/// The bridge and its subnet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeSpec {
    /// Kernel bridge name (at most 15 bytes).
    pub name: String,
    /// Subnet address.
    pub subnet: Ipv4Addr,
    /// Subnet prefix length.
    pub prefix: u8,
    /// The bridge's own address, containers' default gateway.
    pub gateway: Ipv4Addr,
    /// Inter-container communication.
    pub icc: bool,
}

/// A container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Its name.
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Exposed ports (what links open).
    pub exposed: Vec<PortProto>,
    /// Published ports.
    pub published: Vec<Published>,
    /// Links it was started with.
    pub links: Vec<LinkSpec>,
    /// Services it runs.
    pub responders: Vec<ResponderSpec>,
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

/// A host outside the bridge.
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLab {
    #[serde(default)]
    rules: Vec<String>,
    bridge: RawBridge,
    #[serde(default)]
    container: Vec<RawContainer>,
    #[serde(default)]
    outside: Vec<RawOutside>,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    #[serde(default = "default_bridge")]
    name: String,
    subnet: String,
    gateway: Ipv4Addr,
    #[serde(default = "yes")]
    icc: bool,
}

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
    ip: Ipv4Addr,
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

impl LabSpec {
    /// Parses and checks a lab file; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<LabSpec, LabError> {
        let bad = |msg: String| LabError::Spec {
            origin: origin.to_string(),
            msg,
        };
        let raw: RawLab = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        validate(raw).map_err(bad)
    }

    /// The container called `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerSpec> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// The outside host called `name`.
    pub fn outside_host(&self, name: &str) -> Option<&OutsideSpec> {
        self.outside.iter().find(|o| o.name == name)
    }
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
    let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
    let prefix: u8 = p.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if prefix > 32 {
        return Err(format!("{s:?}: prefix longer than 32"));
    }
    Ok((addr, prefix))
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(net) & mask
}

fn check_name(name: &str, what: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || !ok_chars || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{what} name {name:?}: use letters, digits, '_', '.', '-' (like Docker's names)"
        ));
    }
    if name == "host" {
        return Err(format!(
            "{what} name \"host\" is reserved for the lab's host"
        ));
    }
    Ok(())
}

fn parse_publish(s: &str) -> Result<Published, String> {
    let (host, rest) = s
        .split_once(':')
        .ok_or_else(|| format!("publish {s:?}: use HOST_PORT:CONTAINER_PORT[/tcp]"))?;
    let host_port: u16 = host
        .parse()
        .map_err(|e| format!("publish {s:?}: host port: {e}"))?;
    let pp = parse_port_proto(rest).ok_or_else(|| format!("publish {s:?}: container port"))?;
    if pp.proto != 6 {
        return Err(format!(
            "publish {s:?}: the lab's port proxy forwards TCP only"
        ));
    }
    Ok(Published {
        proto: pp.proto,
        container_port: pp.port,
        host_port,
    })
}

fn validate(raw: RawLab) -> Result<LabSpec, String> {
    let b = raw.bridge;
    if b.name.is_empty() || b.name.len() > IFNAMSIZ_MAX {
        return Err(format!("bridge name {:?}: 1 to 15 bytes", b.name));
    }
    let (subnet, prefix) = parse_cidr(&b.subnet).map_err(|e| format!("bridge subnet: {e}"))?;
    if !in_subnet(b.gateway, subnet, prefix) {
        return Err(format!(
            "bridge gateway {} is outside {}",
            b.gateway, b.subnet
        ));
    }
    let bridge = BridgeSpec {
        name: b.name,
        subnet,
        prefix,
        gateway: b.gateway,
        icc: b.icc,
    };
    let mut names = BTreeSet::new();
    let mut ips = BTreeSet::from([bridge.gateway]);
    let mut host_ports = BTreeSet::new();
    let mut containers = Vec::new();
    for c in raw.container {
        check_name(&c.name, "container")?;
        let item = format!("container {}", c.name);
        if !names.insert(c.name.clone()) {
            return Err(format!("{item}: the name is used twice"));
        }
        if !in_subnet(c.ip, subnet, prefix) {
            return Err(format!("{item}: {} is outside {}", c.ip, b.subnet));
        }
        if !ips.insert(c.ip) {
            return Err(format!("{item}: address {} is already taken", c.ip));
        }
        let mut exposed = BTreeSet::new();
        for e in &c.expose {
            exposed.insert(
                parse_port_proto(e)
                    .ok_or_else(|| format!("{item}: expose {e:?}: use PORT[/tcp|/udp]"))?,
            );
        }
        let mut published = Vec::new();
        for p in &c.publish {
            let p = parse_publish(p).map_err(|e| format!("{item}: {e}"))?;
            if !host_ports.insert(p.host_port) {
                return Err(format!(
                    "{item}: host port {} is published twice",
                    p.host_port
                ));
            }
            // Docker exposes what it publishes.
            exposed.insert(PortProto {
                proto: p.proto,
                port: p.container_port,
            });
            published.push(p);
        }
        let mut links = Vec::new();
        for l in &c.link {
            let (child, alias) = l.split_once(':').unwrap_or((l, l));
            links.push(LinkSpec {
                child: child.to_string(),
                alias: alias.to_string(),
            });
        }
        containers.push(ContainerSpec {
            name: c.name,
            ip: c.ip,
            exposed: exposed.into_iter().collect(),
            published,
            links,
            responders: c.responder,
        });
    }
    for c in &containers {
        for l in &c.links {
            if !containers.iter().any(|o| o.name == l.child) || l.child == c.name {
                return Err(format!(
                    "container {}: link {}:{} names no other container",
                    c.name, l.child, l.alias
                ));
            }
        }
    }
    let mut outside = Vec::new();
    for o in raw.outside {
        check_name(&o.name, "outside host")?;
        let item = format!("outside host {}", o.name);
        if !names.insert(o.name.clone()) {
            return Err(format!("{item}: the name is used twice"));
        }
        let (ip, oprefix) = parse_cidr(&o.ip).map_err(|e| format!("{item}: ip: {e}"))?;
        if !in_subnet(o.host_ip, ip, oprefix) {
            return Err(format!("{item}: host_ip {} is not on {}", o.host_ip, o.ip));
        }
        if in_subnet(ip, subnet, prefix) || in_subnet(subnet, ip, oprefix) {
            return Err(format!(
                "{item}: {} overlaps the bridge subnet {}",
                o.ip, b.subnet
            ));
        }
        if !ips.insert(ip) || !ips.insert(o.host_ip) {
            return Err(format!("{item}: an address is already taken"));
        }
        outside.push(OutsideSpec {
            name: o.name,
            ip,
            prefix: oprefix,
            host_ip: o.host_ip,
        });
    }
    let mut steps = Vec::new();
    for (i, s) in raw.step.into_iter().enumerate() {
        let item = format!("step {}", i + 1);
        if s.from != "host" && !names.contains(&s.from) {
            return Err(format!(
                "{item}: from {:?} is not a container, outside host or \"host\"",
                s.from
            ));
        }
        let alias_of_from = containers
            .iter()
            .find(|c| c.name == s.from)
            .is_some_and(|c| c.links.iter().any(|l| l.alias == s.to));
        if s.to != "host"
            && !names.contains(&s.to)
            && !alias_of_from
            && s.to.parse::<Ipv4Addr>().is_err()
        {
            return Err(format!(
                "{item}: to {:?} is not a name, a link alias of {}, \"host\" or an IPv4 address",
                s.to, s.from
            ));
        }
        steps.push(StepSpec {
            from: s.from,
            to: s.to,
            proto: s.proto,
            port: s.port,
            expect: s.expect,
            why: s.why,
        });
    }
    Ok(LabSpec {
        bridge,
        rules: raw.rules,
        containers,
        outside,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<LabSpec, String> {
        LabSpec::from_toml(text, "test.toml").map_err(|e| e.to_string())
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

    #[test]
    fn walkthrough_parses() {
        let s = LabSpec::from_toml(super::super::WALKTHROUGH_TOML, "walkthrough").unwrap();
        assert!(!s.bridge.icc);
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
    fn base_parses_with_defaults() {
        let s = spec(BASE).unwrap();
        assert_eq!(s.bridge.name, "docker0");
        assert_eq!(s.bridge.prefix, 16);
        let a = s.container("a").unwrap();
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
    }
}
