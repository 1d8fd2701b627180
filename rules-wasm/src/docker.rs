//! What Docker (or the lab) says about a bridge network, and the DOCKER and ICC chains
//! Docker 20.10's bridge driver means by it. Filled by the controller from the Engine API or
//! a lab file; turned into rules by [`docker_rules`].
//!
//! # The rules, and where they come from in Docker 20.10
//! Docker's filter table for `docker0` is, in `FORWARD` order: `DOCKER-USER` (our
//! [`Chain::User`]), `DOCKER-ISOLATION-*` (between bridge networks: not applicable, one
//! network), `-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
//! `-o docker0 -j DOCKER` (links and published ports), `-i docker0 ! -o docker0 -j ACCEPT`
//! (containers reach out), `-i docker0 -o docker0 -j ACCEPT|DROP` (icc), then the policy
//! `DROP`. [`docker_rules`] emits, in this order (`gateway` is the dataplane port leading
//! to `docker0`; `-i`/`-o` name dataplane ports):
//!
//! | # | chain | match | target | Docker 20.10's rule |
//! |---|---|---|---|---|
//! | 1 | DOCKER | non-IP frame (ARP) | ACCEPT | none: iptables never sees non-IP frames |
//! | 2 | DOCKER | `--ctstate RELATED,ESTABLISHED` | ACCEPT | `-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` |
//! | 3 | DOCKER | per link and exposed port X/P of the child: `-i parent -o child -p P -s parent -d child --dport X` | ACCEPT | `iptables.go` `Link`: `-i docker0 -o docker0 -p P -s parent -d child --dport X` |
//! | 4 | DOCKER | and its reply `-i child -o parent -p P -s child -d parent --sport X` | ACCEPT | the same, reversed |
//! | 5 | DOCKER | per published port C/P: `-i gateway -o container -p P -d container --dport C` | ACCEPT | `! -i docker0 -o docker0 -p P -d container --dport C -j ACCEPT` |
//! | 6 | DOCKER | `-i gateway -s <bridge address>` | ACCEPT | none: the host's own traffic goes through `OUTPUT`, not `FORWARD` |
//! | 7 | DOCKER | `-i gateway` | DROP | the `FORWARD` policy `DROP` |
//! | 8 | DOCKER | `! -i gateway -o gateway` | ACCEPT | `-i docker0 ! -o docker0 -j ACCEPT` |
//! | 9 | ICC | `! -i gateway ! -o gateway` | ACCEPT or DROP | `-i docker0 -o docker0 -j ACCEPT` (icc=true) / `-j DROP` (icc=false) |
//!
//! # Where bridgewall differs from Docker on purpose
//! (Also in [`DIFFERENCES`], as Markdown bullets ready for the README.)
//!
//! - **Links are bound to the two containers' ports.** Docker's link rules match `-i docker0 -o
//!   docker0` and the two IP addresses, so a container that spoofs the parent's address gets
//!   through; bridgewall also requires the packet to come in on the parent's dataplane port and
//!   leave on the child's (and the reverse for the reply rule).
//! - **User rules also see the host's own traffic.** In Docker the host reaches containers
//!   through `OUTPUT`, which `DOCKER-USER` never sees; in bridgewall that traffic comes in on the
//!   gateway port and the USER chain is evaluated first, so a user DROP rule that matches the
//!   bridge's address blocks the host too.
//! - **Forwarded traffic to unpublished ports is dropped whatever the host's `FORWARD` policy.**
//!   Docker 20.10 sets `FORWARD` to `DROP` only when it turns `ip_forward` on itself; on a host
//!   where `ip_forward` was already on with policy `ACCEPT`, outside hosts reach every container
//!   port. bridgewall always drops them (fail-closed).
//! - **IPv6 is filtered like IPv4.** Docker 20.10 without the experimental `ip6tables` option
//!   leaves IPv6 unfiltered; bridgewall applies the same rules to both families (link and
//!   published-port rules use every address a container has, paired by family).
//! - **One bridge network.** Docker's `DOCKER-ISOLATION-STAGE-*` chains (between bridge networks)
//!   have no counterpart: a dataplane instance serves one bridge.
//! - **Flooded frames from a container are judged as container-to-container traffic** (the ICC
//!   rule): the dataplane judges a flooded frame once, with egress `PORT_FLOOD`, where the kernel
//!   bridge judges each copy per port; with icc=false a container's IP broadcasts and multicasts
//!   reach neither the other containers nor the host.
//! - **Links to a container that is not on the network produce no rules**: Docker refuses to
//!   start such a container; bridgewall skips the link rather than failing the whole policy.
//! - **In user rules `-i`/`-o` name dataplane ports**: a container's name, a port id, or
//!   `docker0` for the gateway port. iptables users write `-i docker0`/`-o docker0` to select
//!   bridge traffic; in bridgewall every judged packet is bridge traffic, so those options are
//!   not needed for a rule to take effect.
//! - **User rules expand names**: `-s web` stands for every address of container `web` (one rule
//!   each, as iptables does for `-s a,b`); `! -s web` is rejected when `web` has several
//!   addresses, since one negated rule cannot express it.
use std::net::IpAddr;

use crate::abi::{Action, FlowState};
use crate::iptables::Names;
use crate::model::{Chain, Cidr, Match, Neg, PortRange, Rule, RuleSet, StateSet, Target};

/// Every place where bridgewall's semantics differ from Docker 20.10's on purpose, one
/// Markdown bullet each (without the leading `- `), ready to paste into the README; the same
/// list as in this module's documentation.
pub const DIFFERENCES: &[&str] = &[
    "**Links are bound to the two containers' ports.** Docker's link rules match `-i docker0 -o docker0` and the two IP addresses, so a container that spoofs the parent's address gets through; bridgewall also requires the packet to come in on the parent's dataplane port and leave on the child's (and the reverse for the reply rule).",
    "**User rules also see the host's own traffic.** In Docker the host reaches containers through `OUTPUT`, which `DOCKER-USER` never sees; in bridgewall that traffic comes in on the gateway port and the USER chain is evaluated first, so a user DROP rule that matches the bridge's address blocks the host too.",
    "**Forwarded traffic to unpublished ports is dropped whatever the host's `FORWARD` policy.** Docker 20.10 sets `FORWARD` to `DROP` only when it turns `ip_forward` on itself; on a host where `ip_forward` was already on with policy `ACCEPT`, outside hosts reach every container port. bridgewall always drops them (fail-closed).",
    "**IPv6 is filtered like IPv4.** Docker 20.10 without the experimental `ip6tables` option leaves IPv6 unfiltered; bridgewall applies the same rules to both families (link and published-port rules use every address a container has, paired by family).",
    "**One bridge network.** Docker's `DOCKER-ISOLATION-STAGE-*` chains (between bridge networks) have no counterpart: a dataplane instance serves one bridge.",
    "**Flooded frames from a container are judged as container-to-container traffic** (the ICC rule): the dataplane judges a flooded frame once, with egress `PORT_FLOOD`, where the kernel bridge judges each copy per port; with icc=false a container's IP broadcasts and multicasts reach neither the other containers nor the host.",
    "**Links to a container that is not on the network produce no rules**: Docker refuses to start such a container; bridgewall skips the link rather than failing the whole policy.",
    "**In user rules `-i`/`-o` name dataplane ports**: a container's name, a port id, or `docker0` for the gateway port. iptables users write `-i docker0`/`-o docker0` to select bridge traffic; in bridgewall every judged packet is bridge traffic, so those options are not needed for a rule to take effect.",
    "**User rules expand names**: `-s web` stands for every address of container `web` (one rule each, as iptables does for `-s a,b`); `! -s web` is rejected when `web` has several addresses, since one negated rule cannot express it.",
];

/// Dataplane port id as the policy ABI carries it.
pub type PortId = u16;

/// A bridge network (e.g. Docker's default `bridge` on `docker0`) and its containers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeNetwork {
    /// Inter-container communication: Docker's `com.docker.network.bridge.enable_icc`.
    pub icc: bool,
    /// The dataplane port that leads to the bridge itself (the host and the outside world).
    pub gateway_port: PortId,
    /// The bridge's own addresses (e.g. 172.17.0.1): traffic from these is the host itself,
    /// which reaches any container port, as with Docker (its userland proxy connects from here).
    pub gateway_ips: Vec<IpAddr>,
    /// The containers attached to the bridge.
    pub containers: Vec<ContainerInfo>,
}

/// One container on the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Container name without Docker's leading `/`.
    pub name: String,
    /// The dataplane port its host-side veth is attached to.
    pub port: PortId,
    /// Its addresses on this network.
    pub ips: Vec<IpAddr>,
    /// Its MAC on this network.
    pub mac: [u8; 6],
    /// Ports the image or `--expose` declares (`EXPOSE 80`): what links open.
    pub exposed: Vec<PortProto>,
    /// Ports published with `-p host:container`.
    pub published: Vec<Published>,
    /// `--link child:alias` given when this container (the parent) was started.
    pub links: Vec<LinkSpec>,
}

/// A protocol and port, as in `80/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortProto {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Port number.
    pub port: u16,
}

/// A published port (`-p 8080:80/tcp`). The kernel's DNAT rewrites the destination to the
/// container's port before the dataplane sees the packet, so rules match `container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Published {
    /// IP protocol number.
    pub proto: u8,
    /// Port inside the container (80 in `-p 8080:80`).
    pub container_port: u16,
    /// Port on the host (8080 in `-p 8080:80`); informational for the dataplane.
    pub host_port: u16,
}

/// A legacy link: the parent (the container started with `--link`) may open the child's
/// exposed ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// The linked (child) container's name.
    pub child: String,
    /// The alias the parent knows it by.
    pub alias: String,
}

/// The DOCKER and ICC chains for `net` (ids not yet assigned; see [`RuleSet::new`]).
///
/// Links whose child is not on `net` are skipped (see [`DIFFERENCES`]); address pairs of
/// different families are never combined.
pub fn docker_rules(net: &BridgeNetwork) -> Vec<Rule> {
    let gw = net.gateway_port;
    let mut out = Vec::new();
    let docker = |m: Match, t: Target, origin: String| Rule::new(Chain::Docker, m, t, origin);

    out.push(docker(
        Match {
            ip_version: Some(Neg::is(0)),
            ..Match::default()
        },
        Target::Accept,
        "non-IP frames (ARP): iptables never sees them".into(),
    ));
    out.push(docker(
        Match {
            state: Some(StateSet::of(FlowState::Established).with(FlowState::Related)),
            ..Match::default()
        },
        Target::Accept,
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    ));

    for parent in &net.containers {
        for link in &parent.links {
            let Some(child) = net.containers.iter().find(|c| c.name == link.child) else {
                continue;
            };
            for pp in &child.exposed {
                for (pip, cip) in same_family_pairs(&parent.ips, &child.ips) {
                    let what = format!(
                        "link {}→{} ({}) {}/{}",
                        parent.name,
                        child.name,
                        link.alias,
                        pp.port,
                        crate::model::proto_name(pp.proto)
                    );
                    out.push(docker(
                        Match {
                            src: Some(Neg::is(Cidr::host(pip))),
                            dst: Some(Neg::is(Cidr::host(cip))),
                            proto: Some(Neg::is(pp.proto)),
                            dport: Some(Neg::is(PortRange::single(pp.port))),
                            in_port: Some(Neg::is(parent.port)),
                            out_port: Some(Neg::is(child.port)),
                            ..Match::default()
                        },
                        Target::Accept,
                        what.clone(),
                    ));
                    out.push(docker(
                        Match {
                            src: Some(Neg::is(Cidr::host(cip))),
                            dst: Some(Neg::is(Cidr::host(pip))),
                            proto: Some(Neg::is(pp.proto)),
                            sport: Some(Neg::is(PortRange::single(pp.port))),
                            in_port: Some(Neg::is(child.port)),
                            out_port: Some(Neg::is(parent.port)),
                            ..Match::default()
                        },
                        Target::Accept,
                        format!("{what} (reply)"),
                    ));
                }
            }
        }
    }

    for c in &net.containers {
        for p in &c.published {
            for ip in &c.ips {
                out.push(docker(
                    Match {
                        dst: Some(Neg::is(Cidr::host(*ip))),
                        proto: Some(Neg::is(p.proto)),
                        dport: Some(Neg::is(PortRange::single(p.container_port))),
                        in_port: Some(Neg::is(gw)),
                        out_port: Some(Neg::is(c.port)),
                        ..Match::default()
                    },
                    Target::Accept,
                    format!(
                        "publish {} {}→{}/{}",
                        c.name,
                        p.host_port,
                        p.container_port,
                        crate::model::proto_name(p.proto)
                    ),
                ));
            }
        }
    }

    for ip in &net.gateway_ips {
        out.push(docker(
            Match {
                src: Some(Neg::is(Cidr::host(*ip))),
                in_port: Some(Neg::is(gw)),
                ..Match::default()
            },
            Target::Accept,
            format!("the host itself ({ip}) reaches any container port"),
        ));
    }
    out.push(docker(
        Match {
            in_port: Some(Neg::is(gw)),
            ..Match::default()
        },
        Target::Drop,
        "forwarded from outside to an unpublished port (FORWARD policy DROP)".into(),
    ));
    out.push(docker(
        Match {
            in_port: Some(Neg::not(gw)),
            out_port: Some(Neg::is(gw)),
            ..Match::default()
        },
        Target::Accept,
        "-i docker0 ! -o docker0 -j ACCEPT (containers reach out)".into(),
    ));

    let (target, word) = if net.icc {
        (Target::Accept, "ACCEPT")
    } else {
        (Target::Drop, "DROP")
    };
    out.push(Rule::new(
        Chain::Icc,
        Match {
            in_port: Some(Neg::not(gw)),
            out_port: Some(Neg::not(gw)),
            ..Match::default()
        },
        target,
        format!("-i docker0 -o docker0 -j {word} (icc={})", net.icc),
    ));
    out
}

/// The whole compiled-policy rule set for `net`: the user's rules, then [`docker_rules`],
/// with dense ids. Anything no rule covers is dropped (Docker's `FORWARD` policy).
pub fn docker_ruleset(net: &BridgeNetwork, user: Vec<Rule>, generation: u64) -> RuleSet {
    let mut rules = user;
    rules.extend(docker_rules(net));
    RuleSet::new(rules, generation, Action::Drop)
}

/// Every (a, b) with a from `xs` and b from `ys` of the same family.
fn same_family_pairs(xs: &[IpAddr], ys: &[IpAddr]) -> Vec<(IpAddr, IpAddr)> {
    let mut v = Vec::new();
    for x in xs {
        for y in ys {
            if x.is_ipv4() == y.is_ipv4() {
                v.push((*x, *y));
            }
        }
    }
    v
}

/// Container names resolve to their addresses and dataplane ports; `docker0` names the
/// gateway port (unless a container is called that), as iptables users write `-i docker0`.
impl Names for BridgeNetwork {
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.ips.clone())
    }

    fn port(&self, name: &str) -> Option<PortId> {
        match self.containers.iter().find(|c| c.name == name) {
            Some(c) => Some(c.port),
            None if name == "docker0" => Some(self.gateway_port),
            None => None,
        }
    }

    fn gateway_port(&self) -> Option<u16> {
        Some(self.gateway_port)
    }

    fn host_addrs(&self) -> Vec<IpAddr> {
        self.gateway_ips.clone()
    }

    fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
        let mut out = Vec::new();
        for c in &self.containers {
            for p in &c.published {
                for ip in &c.ips {
                    out.push((p.proto, p.host_port, *ip, p.container_port));
                }
            }
        }
        out
    }

    fn port_of_mac(&self, mac: [u8; 6]) -> Option<u16> {
        self.containers
            .iter()
            .find(|c| c.mac == mac)
            .map(|c| c.port)
    }
}
