//! What Docker (or the lab) says about a bridge network: the input from which the controller
//! derives the DOCKER and ICC chains. Filled by the controller from the Engine API or a lab
//! file; turned into rules by [`docker_rules`] (to be written).
use std::net::IpAddr;

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
}
