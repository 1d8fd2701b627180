//! What Docker (or the lab) says about the host's bridge networks, and the DOCKER,
//! DOCKER-ISOLATION and ICC chains Docker 20.10's bridge driver means by it. Filled by the
//! controller from the Engine API or a lab file; turned into rules by [`docker_rules`].
//!
//! # The rules, and where they come from in Docker 20.10
//! One bridgewall serves every bridge network of the host ([`HostNetworks`]): Docker's default
//! `bridge` on `docker0` and the user-defined `br-<id>` ones. Each network is its own L2 domain
//! in the dataplane, with its own gateway port (leading to the kernel bridge, so to the host
//! and everything it routes), its own containers and its own subnets; port ids are unique
//! across networks. Traffic between two networks can only go container → gateway(N) → the
//! host's routing → gateway(M) → container, so what Docker's `FORWARD` says about it is said
//! here at the two gateways.
//!
//! Docker's filter table is, in `FORWARD` order: `DOCKER-USER` (our [`Chain::User`]),
//! `DOCKER-ISOLATION-STAGE-1` (per network: `-i brN ! -o brN -j DOCKER-ISOLATION-STAGE-2`,
//! whose `-o brM -j DROP` drops what one bridge forwards to another; for an `--internal`
//! network instead `-i br ! -d subnet -j DROP` and `! -s subnet -o br -j DROP`), then per
//! network `-o br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`, `-o br -j DOCKER`
//! (links and published ports), `-i br ! -o br -j ACCEPT` (containers reach out; not on an
//! `--internal` network), `-i br -o br -j ACCEPT|DROP` (icc), then the policy `DROP`. The
//! host's own traffic never passes `FORWARD`: what it sends from any of its addresses goes
//! through `OUTPUT`, what a container sends to any of its addresses through `INPUT`.
//!
//! [`docker_rules`] emits, in this order (`gN` is network N's gateway port, `S(N)` its
//! subnets, "host addresses" every network's gateway IPs; `-i`/`-o` name dataplane ports;
//! `--ipv F` is the model's IP-version condition):
//!
//! | # | chain | match | target | Docker 20.10's rule |
//! |---|---|---|---|---|
//! | 1 | DOCKER | non-IP frame (ARP) | ACCEPT | none: iptables never sees non-IP frames |
//! | 2 | DOCKER | per network N: `-i gN -s fe80::/10` | ACCEPT | none: the host's link-local traffic (MLD, neighbour discovery from the bridge's `fe80::` address) goes through `OUTPUT`; routers never forward link-local sources |
//! | 3 | DOCKER | per network N and host address h (on an `--internal` N only those in `S(N)`): `-i gN -s h` | ACCEPT | none: the host's own traffic, from any of its bridge addresses, goes through `OUTPUT` |
//! | 4 | DOCKER | per non-internal network N and host address h in another network's subnets: `! -i gN -o gN -d h` | ACCEPT | none: a container reaching the host's address on another bridge goes through `INPUT` |
//! | 5 | DOCKER | per `--internal` network N and link-scope prefix p (`fe80::/10`, `ff02::/16`, `224.0.0.0/24`): `! -i gN -o gN -d p` | ACCEPT | none: link-local traffic to the host goes through `INPUT` |
//! | 6 | DOCKER | per `--internal` network N and family F: `-o gN --ipv F ! -d S(N)` and `-i gN --ipv F ! -s S(N)` (no subnet of F: every packet of F) | DROP | STAGE-1 `-i br ! -d subnet -j DROP`, `! -s subnet -o br -j DROP` |
//! | 7 | DOCKER | per non-internal network N, other network M and subnet s of M: `-o gN -d s` | DROP | STAGE-1 `-i brN ! -o brN -j STAGE-2`, STAGE-2 `-o brM -j DROP` (N's containers towards M) |
//! | 8 | DOCKER | per non-internal network M, other network N and subnet s of N: `-i gM -s s` | DROP | the same, seen arriving on M's gateway |
//! | 9 | DOCKER | `--ctstate RELATED,ESTABLISHED` | ACCEPT | `-o br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT` |
//! | 10 | DOCKER | per network, link and exposed port X/P of the child: `-i parent -o child -p P -s parent -d child --dport X` | ACCEPT | `iptables.go` `Link`: `-i docker0 -o docker0 -p P -s parent -d child --dport X` |
//! | 11 | DOCKER | and its reply `-i child -o parent -p P -s child -d parent --sport X` | ACCEPT | the same, reversed |
//! | 12 | DOCKER | per non-internal network N and published port C/P: `-i gN -o container -p P -d container --dport C` | ACCEPT | `! -i br -o br -p P -d container --dport C -j ACCEPT` |
//! | 13 | DOCKER | per network N: `-i gN` | DROP | the `FORWARD` policy `DROP` |
//! | 14 | DOCKER | per network N: `! -i gN -o gN` | ACCEPT | `-i br ! -o br -j ACCEPT` (on an `--internal` network only traffic for the host is left here: `INPUT` in Docker) |
//! | 15 | ICC | per container port of the networks whose icc setting is the rarer one: `-i port` | ACCEPT or DROP | `-i br -o br -j ACCEPT` (icc=true) / `-j DROP` (icc=false) |
//! | 16 | ICC | anything else (every other container port; all of them when the networks agree; no rule when no network is followed, so the policy's DROP decides) | ACCEPT or DROP | the same, for the other networks |
//!
//! Each row is emitted for every network before the next row. Rules 2–8 all sit before rule 9,
//! as Docker's `DOCKER-ISOLATION-*` chains come before its `RELATED,ESTABLISHED` accept; the
//! host's ACCEPTs (2–5) come first because they are the exemptions from the drops (6–8), and
//! every packet they accept would be accepted later too.
//! After rules 13 and 14 every packet from or to a gateway is decided, so what reaches the ICC
//! chain is traffic between two ports of one network (or flooded, `out_port` =
//! [`crate::abi::PORT_FLOOD`]), and its ingress port says which network's icc applies.
//! Isolation rules whose subnet overlaps one of the network's own (Docker refuses such
//! networks) are left out, so a misconfiguration cannot cut a network's own traffic. Rules
//! 2–8 on an IPv6 prefix, and the ACCEPTs among them on an IPv4 address, also carry the IP
//! version the prefix implies, so the compiled module never searches them for the other
//! family.
//!
//! # User rules naming networks
//! User rules are parsed against [`HostNetworks`] (its [`Names`]):
//! - `-i NAME` / `-o NAME`, in this order of precedence: a dataplane port id; a container's
//!   name (its port on each network it is on: one rule each); a kernel bridge name (`docker0`,
//!   `br-1234abcd5678`: that network's gateway port); a Docker network name (every container
//!   port of that network: one rule each); `network:NAME` (the same, when a container has the
//!   network's name); `PREFIX+` (every gateway whose bridge name starts with PREFIX); a host
//!   interface (`eth0`: see [`crate::iptables`]). `! -i NAME` is refused when NAME stands for
//!   several ports, since one negated rule cannot express it.
//! - `-s NAME` / `-d NAME`: every address of the container on every network it is on;
//!   `-s network:NAME` / `-d network:NAME`: the network's subnets (one rule each).
//! - An empty [`BridgeNetwork::bridge`] is taken as `docker0`, and `docker0` names the only
//!   network's gateway when just one is followed, as before networks had names.
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
//!   published-port rules use every address a container has, paired by family; an `--internal`
//!   network without an IPv6 subnet lets no IPv6 but link-local through its gateway).
//! - **Isolation between bridge networks is by subnet, not by interface.** Docker drops what
//!   the kernel forwards from one bridge to another (`-i br-a -o br-b`); the dataplane sees each
//!   network apart, so bridgewall drops what leaves a network's gateway towards another followed
//!   network's subnets, and what arrives on a gateway from another network's subnets. The
//!   host's own addresses are exempt, as in Docker (`INPUT`/`OUTPUT`). A packet the kernel
//!   rewrote on the way is judged by its new addresses: a container reaching another
//!   network's published port through the host's address arrives, after DNAT and MASQUERADE,
//!   from the host's address and is let through. With Docker's default userland proxy Docker
//!   lets it through too (it does not DNAT traffic from a bridge; the proxy on the host
//!   connects, checked against a real engine in `tests/docker_networks.rs`); with
//!   `"userland-proxy": false` Docker's isolation drops it in the kernel, before bridgewall
//!   sees it.
//! - **Flooded frames from a container are judged as container-to-container traffic** (the ICC
//!   rule): the dataplane judges a flooded frame once, with egress `PORT_FLOOD`, where the kernel
//!   bridge judges each copy per port; with icc=false a container's IP broadcasts and multicasts
//!   reach neither the other containers nor the host.
//! - **A port no network lists gets the ICC catch-all's verdict**: with every network agreeing
//!   that is their icc setting; with mixed settings, that of the networks with more container
//!   ports (the others get one rule per port).
//! - **Links to a container that is not on the network produce no rules**: Docker refuses to
//!   start such a container; bridgewall skips the link rather than failing the whole policy.
//! - **In user rules `-i`/`-o` name dataplane ports**: a container's name (its port on each of
//!   its networks), a Docker network's name or `network:NAME` (every container port of the
//!   network), a kernel bridge name such as `docker0` or `br-1234abcd5678` (that network's
//!   gateway port), or a port id. iptables users write `-i docker0`/`-o docker0` to select
//!   bridge traffic; in bridgewall every judged packet is bridge traffic, so those options are
//!   not needed for a rule to take effect.
//! - **User rules expand names**: `-s web` stands for every address of container `web` on every
//!   network it is on and `-s network:NAME` for the network's subnets (one rule each, as
//!   iptables does for `-s a,b`; `! -s` then means none of them, within each family), `-i NAME`
//!   for every port the name has (one rule each); `! -i NAME` is rejected when the name stands
//!   for several ports, since one negated rule cannot express it.
//! - **`-i eth0` with several bridge networks matches by source address alone**: with one
//!   network it means "from the gateway, from an address the host routes through eth0"; with
//!   several, "from an address the host routes through eth0" (IPv6 link-local sources never
//!   count), because a condition on several gateways could not be negated by a `RETURN`, and
//!   the dataplane's source guard already keeps containers from sending from any address but
//!   their own.
//! - **`--internal` networks reach only their own subnets and link-local addresses** (IPv6
//!   link-local, link-scope multicast), and only their subnets and IPv6 link-local reach them
//!   through their gateway, also the host's addresses on other bridges (Docker gives an
//!   internal network's containers no default route, so they cannot address those either).
use std::net::IpAddr;

use crate::abi::{Action, FlowState};
use crate::algebra::complement_cidrs;
use crate::iptables::Names;
use crate::model::{Chain, Cidr, Match, Neg, PortRange, Rule, RuleSet, StateSet, Target};

/// Every place where bridgewall's semantics differ from Docker 20.10's on purpose, one
/// Markdown bullet each (without the leading `- `), ready to paste into the README; the same
/// list as in this module's documentation.
pub const DIFFERENCES: &[&str] = &[
    "**Links are bound to the two containers' ports.** Docker's link rules match `-i docker0 -o docker0` and the two IP addresses, so a container that spoofs the parent's address gets through; bridgewall also requires the packet to come in on the parent's dataplane port and leave on the child's (and the reverse for the reply rule).",
    "**User rules also see the host's own traffic.** In Docker the host reaches containers through `OUTPUT`, which `DOCKER-USER` never sees; in bridgewall that traffic comes in on the gateway port and the USER chain is evaluated first, so a user DROP rule that matches the bridge's address blocks the host too.",
    "**Forwarded traffic to unpublished ports is dropped whatever the host's `FORWARD` policy.** Docker 20.10 sets `FORWARD` to `DROP` only when it turns `ip_forward` on itself; on a host where `ip_forward` was already on with policy `ACCEPT`, outside hosts reach every container port. bridgewall always drops them (fail-closed).",
    "**IPv6 is filtered like IPv4.** Docker 20.10 without the experimental `ip6tables` option leaves IPv6 unfiltered; bridgewall applies the same rules to both families (link and published-port rules use every address a container has, paired by family; an `--internal` network without an IPv6 subnet lets no IPv6 but link-local through its gateway).",
    "**Isolation between bridge networks is by subnet, not by interface.** Docker drops what the kernel forwards from one bridge to another (`-i br-a -o br-b`); the dataplane sees each network apart, so bridgewall drops what leaves a network's gateway towards another followed network's subnets, and what arrives on a gateway from another network's subnets. The host's own addresses are exempt, as in Docker (`INPUT`/`OUTPUT`). A packet the kernel rewrote on the way is judged by its new addresses: a container reaching another network's published port through the host's address arrives, after DNAT and MASQUERADE, from the host's address and is let through. With Docker's default userland proxy Docker lets it through too (it does not DNAT traffic from a bridge; the proxy on the host connects, checked against a real engine in `tests/docker_networks.rs`); with `\"userland-proxy\": false` Docker's isolation drops it in the kernel, before bridgewall sees it.",
    "**Flooded frames from a container are judged as container-to-container traffic** (the ICC rule): the dataplane judges a flooded frame once, with egress `PORT_FLOOD`, where the kernel bridge judges each copy per port; with icc=false a container's IP broadcasts and multicasts reach neither the other containers nor the host.",
    "**A port no network lists gets the ICC catch-all's verdict**: with every network agreeing that is their icc setting; with mixed settings, that of the networks with more container ports (the others get one rule per port).",
    "**Links to a container that is not on the network produce no rules**: Docker refuses to start such a container; bridgewall skips the link rather than failing the whole policy.",
    "**In user rules `-i`/`-o` name dataplane ports**: a container's name (its port on each of its networks), a Docker network's name or `network:NAME` (every container port of the network), a kernel bridge name such as `docker0` or `br-1234abcd5678` (that network's gateway port), or a port id. iptables users write `-i docker0`/`-o docker0` to select bridge traffic; in bridgewall every judged packet is bridge traffic, so those options are not needed for a rule to take effect.",
    "**User rules expand names**: `-s web` stands for every address of container `web` on every network it is on and `-s network:NAME` for the network's subnets (one rule each, as iptables does for `-s a,b`; `! -s` then means none of them, within each family), `-i NAME` for every port the name has (one rule each); `! -i NAME` is rejected when the name stands for several ports, since one negated rule cannot express it.",
    "**`-i eth0` with several bridge networks matches by source address alone**: with one network it means \"from the gateway, from an address the host routes through eth0\"; with several, \"from an address the host routes through eth0\" (IPv6 link-local sources never count), because a condition on several gateways could not be negated by a `RETURN`, and the dataplane's source guard already keeps containers from sending from any address but their own.",
    "**`--internal` networks reach only their own subnets and link-local addresses** (IPv6 link-local, link-scope multicast), and only their subnets and IPv6 link-local reach them through their gateway, also the host's addresses on other bridges (Docker gives an internal network's containers no default route, so they cannot address those either).",
];

/// Dataplane port id as the policy ABI carries it.
pub type PortId = u16;

/// IPv6 link-local, `fe80::/10`: from a gateway it can only be the host itself (routers never
/// forward link-local sources), towards a gateway only the host.
pub const LINK_LOCAL: Cidr = Cidr {
    addr: 0xfe80 << 112,
    len: 10,
};

/// What a container may send to its gateway whatever its network: IPv6 link-local, and
/// link-scope multicast (`ff02::/16`, `224.0.0.0/24`: MLD, router solicitations, mDNS, IGMP).
/// Routers never forward them, so towards the gateway they can only be for the host itself
/// (`INPUT` in Docker), which is why an `--internal` network lets them through.
pub const LINK_SCOPE: [Cidr; 3] = [
    LINK_LOCAL,
    Cidr {
        addr: 0xff02 << 112,
        len: 16,
    },
    Cidr {
        addr: (0xffff << 32) | (224 << 24),
        len: 120,
    },
];

/// Every bridge network one bridgewall serves: Docker's default `bridge` and the user-defined
/// ones (what Compose creates), each its own L2 domain, judged by one compiled policy.
/// Traffic between two of them is dropped, as Docker's `DOCKER-ISOLATION-STAGE-1/2` do.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct HostNetworks {
    /// The networks, in a stable order (the controller sorts them by name).
    pub networks: Vec<BridgeNetwork>,
}

impl From<BridgeNetwork> for HostNetworks {
    /// One network alone (the lab's seed, tests).
    fn from(net: BridgeNetwork) -> Self {
        HostNetworks {
            networks: vec![net],
        }
    }
}

/// A bridge network (e.g. Docker's default `bridge` on `docker0`) and its containers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeNetwork {
    /// Docker's network name (`bridge`, `myproject_default`): what user rules and traces
    /// call it.
    pub name: String,
    /// The kernel bridge (`docker0`, `br-<id>`): user rules may name it as iptables users do.
    /// Empty is taken as `docker0` (callers from before several networks were followed).
    pub bridge: String,
    /// Docker's `--internal`: nothing leaves the network's subnets, nothing from outside
    /// them comes in.
    pub internal: bool,
    /// The network's subnets (IPv4, and IPv6 where enabled): what isolation drops between
    /// networks and what `--internal` keeps traffic within.
    pub subnets: Vec<Cidr>,
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

impl BridgeNetwork {
    /// The kernel bridge's name, `docker0` when [`BridgeNetwork::bridge`] is empty: what
    /// `-i`/`-o` in user rules and the origins of Docker's rules call the gateway.
    pub fn bridge_name(&self) -> &str {
        if self.bridge.is_empty() {
            "docker0"
        } else {
            &self.bridge
        }
    }

    /// The network's name for origins and errors: Docker's name, else the bridge's.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            self.bridge_name()
        } else {
            &self.name
        }
    }

    /// Whether `c` overlaps (contains, or lies in) one of the network's subnets.
    fn overlaps(&self, c: &Cidr) -> bool {
        self.subnets.iter().any(|s| overlap(s, c))
    }

    /// Whether `ip` lies in one of the network's subnets.
    fn holds(&self, ip: IpAddr) -> bool {
        let b = crate::abi::addr_bytes(ip);
        self.subnets.iter().any(|s| s.contains(&b))
    }
}

/// Whether two prefixes share an address (then one contains the other).
fn overlap(a: &Cidr, b: &Cidr) -> bool {
    let len = a.len.min(b.len);
    a.addr & Cidr::mask_of(len) == b.addr & Cidr::mask_of(len)
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

/// The DOCKER, DOCKER-ISOLATION and ICC rules for every network of `nets`, in the order of
/// the module's table (ids not yet assigned; see [`RuleSet::new`]).
///
/// Links whose child is not on the parent's network are skipped (see [`DIFFERENCES`]);
/// address pairs of different families are never combined.
pub fn docker_rules(nets: &HostNetworks) -> Vec<Rule> {
    let mut out = Emit::default();
    // The host's addresses on its bridges, each once: exempt from isolation, since traffic
    // from or to them is the host's own (`OUTPUT`/`INPUT` in Docker), whichever bridge.
    let hosts = nets.host_addrs();
    out.docker(
        Match {
            ip_version: Some(Neg::is(0)),
            ..Match::default()
        },
        Target::Accept,
        "non-IP frames (ARP): iptables never sees them".into(),
    );
    for net in &nets.networks {
        host_link_local(&mut out, net);
    }
    for net in &nets.networks {
        host_sources(&mut out, net, &hosts);
    }
    for net in nets.networks.iter().filter(|n| !n.internal) {
        host_destinations(&mut out, nets, net, &hosts);
    }
    for net in nets.networks.iter().filter(|n| n.internal) {
        internal_link_scope(&mut out, net);
    }
    for net in nets.networks.iter().filter(|n| n.internal) {
        internal_drops(&mut out, net);
    }
    isolation(&mut out, nets);
    out.docker(
        Match {
            state: Some(StateSet::of(FlowState::Established).with(FlowState::Related)),
            ..Match::default()
        },
        Target::Accept,
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
    );
    for net in &nets.networks {
        links(&mut out, net);
    }
    for net in nets.networks.iter().filter(|n| !n.internal) {
        published(&mut out, net);
    }
    for net in &nets.networks {
        out.docker(
            Match {
                in_port: Some(Neg::is(net.gateway_port)),
                ..Match::default()
            },
            Target::Drop,
            format!(
                "forwarded from outside to an unpublished port on {} (FORWARD policy DROP)",
                net.label()
            ),
        );
    }
    for net in &nets.networks {
        let br = net.bridge_name();
        out.docker(
            Match {
                in_port: Some(Neg::not(net.gateway_port)),
                out_port: Some(Neg::is(net.gateway_port)),
                ..Match::default()
            },
            Target::Accept,
            format!("-i {br} ! -o {br} -j ACCEPT (containers reach out)"),
        );
    }
    icc(&mut out, nets);
    out.rules
}

/// The whole compiled-policy rule set for `nets`: the user's rules, then [`docker_rules`],
/// with dense ids. Anything no rule covers is dropped (Docker's `FORWARD` policy).
pub fn docker_ruleset(nets: &HostNetworks, user: Vec<Rule>, generation: u64) -> RuleSet {
    let mut rules = user;
    rules.extend(docker_rules(nets));
    RuleSet::new(rules, generation, Action::Drop)
}

/// The rules being emitted, in order.
#[derive(Default)]
struct Emit {
    rules: Vec<Rule>,
}

impl Emit {
    fn docker(&mut self, m: Match, t: Target, origin: String) {
        self.rules.push(Rule::new(Chain::Docker, m, t, origin));
    }
}

/// Rule 2: the host's IPv6 link-local traffic from the gateway (MLD, neighbour discovery from
/// the bridge's `fe80::` address), which Docker never filters (`OUTPUT`). First, with the
/// host's other exemptions (rules 3–5), because they are exemptions from the isolation and
/// `--internal` drops: in Docker that traffic never passes `FORWARD`.
fn host_link_local(out: &mut Emit, net: &BridgeNetwork) {
    out.docker(
        Match {
            src: Some(Neg::is(LINK_LOCAL)),
            ip_version: family_of(&LINK_LOCAL),
            in_port: Some(Neg::is(net.gateway_port)),
            ..Match::default()
        },
        Target::Accept,
        format!(
            "the host's IPv6 link-local traffic on {} (MLD, neighbour discovery)",
            net.bridge_name()
        ),
    );
}

/// Rule 3: the host itself, from any of its bridge addresses (an `--internal` network's
/// containers are reached only from its own), to any container port.
fn host_sources(out: &mut Emit, net: &BridgeNetwork, hosts: &[IpAddr]) {
    for ip in hosts.iter().filter(|ip| !net.internal || net.holds(**ip)) {
        out.docker(
            Match {
                src: Some(Neg::is(Cidr::host(*ip))),
                ip_version: family_of(&Cidr::host(*ip)),
                in_port: Some(Neg::is(net.gateway_port)),
                ..Match::default()
            },
            Target::Accept,
            format!(
                "the host itself ({ip}) reaches any container port on {}",
                net.bridge_name()
            ),
        );
    }
}

/// Rule 4: a (non-internal) network's containers reaching the host's addresses that lie in
/// another network's subnets, which isolation would otherwise drop (`INPUT` in Docker).
fn host_destinations(out: &mut Emit, nets: &HostNetworks, net: &BridgeNetwork, hosts: &[IpAddr]) {
    let gw = net.gateway_port;
    let elsewhere = |ip: IpAddr| {
        nets.networks
            .iter()
            .any(|m| !std::ptr::eq(m, net) && m.holds(ip))
    };
    for ip in hosts.iter().filter(|ip| elsewhere(**ip)) {
        out.docker(
            Match {
                dst: Some(Neg::is(Cidr::host(*ip))),
                ip_version: family_of(&Cidr::host(*ip)),
                in_port: Some(Neg::not(gw)),
                out_port: Some(Neg::is(gw)),
                ..Match::default()
            },
            Target::Accept,
            format!(
                "containers of {} reach the host's address {ip} (INPUT, not isolated)",
                net.label()
            ),
        );
    }
}

/// Rule 5 for an `--internal` network: what its containers may still send to the gateway
/// however far outside their subnets, link-local addresses, which only the host can receive.
fn internal_link_scope(out: &mut Emit, net: &BridgeNetwork) {
    let gw = net.gateway_port;
    for dst in LINK_SCOPE {
        out.docker(
            Match {
                dst: Some(Neg::is(dst)),
                ip_version: family_of(&dst),
                in_port: Some(Neg::not(gw)),
                out_port: Some(Neg::is(gw)),
                ..Match::default()
            },
            Target::Accept,
            format!(
                "--internal {}: link-local {dst} to the host (never routed)",
                net.label()
            ),
        );
    }
}

/// Rule 6 for an `--internal` network: nothing crosses its gateway unless it is within the
/// network's subnets (the host's address there), or link-local (rules 2 and 5). Written per
/// family with the IP-version condition, so that the IPv4 subnet's negation never matches
/// IPv6 packets, and a network without an IPv6 subnet lets no IPv6 through.
fn internal_drops(out: &mut Emit, net: &BridgeNetwork) {
    let gw = net.gateway_port;
    let name = net.label();
    let universe = |v4: bool| if v4 { Cidr::V4_ALL } else { Cidr::ALL };
    for v4 in [true, false] {
        let own: Vec<Cidr> = net
            .subnets
            .iter()
            .copied()
            .filter(|c| c.is_v4() == v4)
            .collect();
        let family = if v4 { 4 } else { 6 };
        // The addresses outside `own`, as conditions: one negated prefix when there is one
        // subnet, the complement's prefixes when there are several, anything when none.
        let outside: Vec<Option<Neg<Cidr>>> = match own.as_slice() {
            [] => vec![None],
            [one] => vec![Some(Neg::not(*one))],
            many => complement_cidrs(many, universe(v4))
                .into_iter()
                .map(|c| Some(Neg::is(c)))
                .collect(),
        };
        let (leaves, comes_in) = if own.is_empty() {
            (
                format!("no IPv{family} leaves (no IPv{family} subnet)"),
                format!("no IPv{family} comes in (no IPv{family} subnet)"),
            )
        } else {
            let subnets = own
                .iter()
                .map(Cidr::to_string)
                .collect::<Vec<_>>()
                .join(",");
            (
                format!("nothing leaves {subnets}"),
                format!("nothing from outside {subnets} comes in"),
            )
        };
        for c in &outside {
            out.docker(
                Match {
                    ip_version: Some(Neg::is(family)),
                    dst: *c,
                    out_port: Some(Neg::is(gw)),
                    ..Match::default()
                },
                Target::Drop,
                format!("DOCKER-ISOLATION: --internal {name}: {leaves}"),
            );
        }
        for c in &outside {
            out.docker(
                Match {
                    ip_version: Some(Neg::is(family)),
                    src: *c,
                    in_port: Some(Neg::is(gw)),
                    ..Match::default()
                },
                Target::Drop,
                format!("DOCKER-ISOLATION: --internal {name}: {comes_in}"),
            );
        }
    }
}

/// Rules 7–8: between every two networks, what leaves one's gateway towards the other's
/// subnets, and what arrives on one's gateway from the other's. `--internal` networks are
/// left out on their own side: their drops (rule 6) already cover all of it.
fn isolation(out: &mut Emit, nets: &HostNetworks) {
    let pairs = || {
        nets.networks.iter().enumerate().flat_map(move |(i, a)| {
            nets.networks
                .iter()
                .enumerate()
                .filter(move |(j, _)| *j != i)
                .map(move |(_, b)| (a, b))
        })
    };
    for (from, to) in pairs().filter(|(from, _)| !from.internal) {
        for s in to.subnets.iter().filter(|s| !from.overlaps(s)) {
            out.docker(
                Match {
                    dst: Some(Neg::is(*s)),
                    ip_version: family_of(s).filter(|f| f.value == 6),
                    out_port: Some(Neg::is(from.gateway_port)),
                    ..Match::default()
                },
                Target::Drop,
                format!("DOCKER-ISOLATION: {} → {} ({s})", from.label(), to.label()),
            );
        }
    }
    for (from, to) in pairs().filter(|(_, to)| !to.internal) {
        for s in from.subnets.iter().filter(|s| !to.overlaps(s)) {
            out.docker(
                Match {
                    src: Some(Neg::is(*s)),
                    ip_version: family_of(s).filter(|f| f.value == 6),
                    in_port: Some(Neg::is(to.gateway_port)),
                    ..Match::default()
                },
                Target::Drop,
                format!(
                    "DOCKER-ISOLATION: {} → {} (from {s})",
                    from.label(),
                    to.label()
                ),
            );
        }
    }
}

/// Rules 10–11: each link's child ports, from the parent's port to the child's, and back.
fn links(out: &mut Emit, net: &BridgeNetwork) {
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
                    out.docker(
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
                    );
                    out.docker(
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
                    );
                }
            }
        }
    }
}

/// Rule 12: each published port, from the network's gateway to the container's address and
/// port (after the kernel's DNAT).
fn published(out: &mut Emit, net: &BridgeNetwork) {
    for c in &net.containers {
        for p in &c.published {
            for ip in &c.ips {
                out.docker(
                    Match {
                        dst: Some(Neg::is(Cidr::host(*ip))),
                        proto: Some(Neg::is(p.proto)),
                        dport: Some(Neg::is(PortRange::single(p.container_port))),
                        in_port: Some(Neg::is(net.gateway_port)),
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
                );
            }
        }
    }
}

/// Rules 15–16: what is left is traffic between two ports of one network, judged by that
/// network's icc setting, found by the ingress port. The setting fewer container ports have
/// gets one cheap rule per port (the compiled module settles those by the port alone), the
/// other the catch-all.
fn icc(out: &mut Emit, nets: &HostNetworks) {
    if nets.networks.is_empty() {
        // No container port at all: the policy's DROP decides, as for any unknown traffic.
        return;
    }
    let verdict = |icc: bool| {
        if icc {
            (Target::Accept, "ACCEPT")
        } else {
            (Target::Drop, "DROP")
        }
    };
    let ports_with = |icc: bool| -> usize {
        nets.networks
            .iter()
            .filter(|n| n.icc == icc)
            .map(|n| n.containers.len())
            .sum()
    };
    let agree = nets.networks.iter().all(|n| n.icc) || nets.networks.iter().all(|n| !n.icc);
    // With mixed settings the catch-all is the one more ports have (fewer rules).
    let catch_all = if agree {
        nets.networks.first().is_none_or(|n| n.icc)
    } else {
        ports_with(true) >= ports_with(false)
    };
    if !agree {
        for net in nets.networks.iter().filter(|n| n.icc != catch_all) {
            let (target, word) = verdict(net.icc);
            let br = net.bridge_name();
            for c in &net.containers {
                out.rules.push(Rule::new(
                    Chain::Icc,
                    Match {
                        in_port: Some(Neg::is(c.port)),
                        ..Match::default()
                    },
                    target,
                    format!(
                        "-i {br} -o {br} -j {word} (icc={} on {}: from {})",
                        net.icc,
                        net.label(),
                        c.name
                    ),
                ));
            }
        }
    }
    let (target, word) = verdict(catch_all);
    let origin = match nets.networks.as_slice() {
        [one] => {
            let br = one.bridge_name();
            format!("-i {br} -o {br} -j {word} (icc={})", one.icc)
        }
        _ if agree => format!("-i br -o br -j {word} (icc={catch_all} on every network)"),
        _ => format!("-i br -o br -j {word} (icc={catch_all}: the other networks)"),
    };
    out.rules
        .push(Rule::new(Chain::Icc, Match::default(), target, origin));
}

/// The IP-version condition a prefix implies, for the rules that also name it: it lets the
/// compiled module leave them out of the other family's search. On an IPv6 prefix it changes
/// nothing (an IPv4 packet's addresses are IPv4-mapped, never in it); on an IPv4 one it only
/// keeps an IPv6 packet carrying an IPv4-mapped address from matching, so it is set on the
/// ACCEPTs (which must not let such a packet through) and not on the isolation DROPs (which
/// must still catch it).
fn family_of(c: &Cidr) -> Option<Neg<u8>> {
    Some(Neg::is(if c.is_v4() { 4 } else { 6 }))
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

/// The names user rules may use, over some networks: one implementation behind both
/// [`Names`] impls, so a single network means exactly what it means as the only one of a
/// [`HostNetworks`].
#[derive(Clone, Copy)]
struct View<'a>(&'a [BridgeNetwork]);

impl<'a> View<'a> {
    /// Every (network, container) where a container called `name` is attached.
    fn containers(
        self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a BridgeNetwork, &'a ContainerInfo)> {
        self.0
            .iter()
            .flat_map(move |n| n.containers.iter().map(move |c| (n, c)))
            .filter(move |(_, c)| c.name == name)
    }

    /// The network whose kernel bridge is `name`; `docker0` also names the only network.
    fn bridge(self, name: &str) -> Option<&'a BridgeNetwork> {
        self.0
            .iter()
            .find(|n| n.bridge_name() == name)
            .or(match self.0 {
                [one] if name == "docker0" => Some(one),
                _ => None,
            })
    }

    /// The network Docker calls `name`.
    fn network(self, name: &str) -> Option<&'a BridgeNetwork> {
        self.0.iter().find(|n| !n.name.is_empty() && n.name == name)
    }
}

fn dedup<T: PartialEq>(v: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

impl Names for View<'_> {
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>> {
        let mut found = false;
        let ips = dedup(self.containers(name).flat_map(|(_, c)| {
            found = true;
            c.ips.iter().copied()
        }));
        found.then_some(ips)
    }

    fn port(&self, name: &str) -> Option<PortId> {
        match self.ports(name)?.as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    fn ports(&self, name: &str) -> Option<Vec<PortId>> {
        let ports: Vec<PortId> = self.containers(name).map(|(_, c)| c.port).collect();
        if !ports.is_empty() {
            return Some(ports);
        }
        if let Some(n) = self.bridge(name) {
            return Some(vec![n.gateway_port]);
        }
        self.network_ports(name)
    }

    fn network_ports(&self, network: &str) -> Option<Vec<PortId>> {
        self.network(network)
            .map(|n| n.containers.iter().map(|c| c.port).collect())
    }

    fn network_subnets(&self, network: &str) -> Option<Vec<Cidr>> {
        self.network(network).map(|n| n.subnets.clone())
    }

    fn gateway_port(&self) -> Option<PortId> {
        self.bridge("docker0").map(|n| n.gateway_port)
    }

    fn gateways(&self) -> Vec<(String, PortId)> {
        self.0
            .iter()
            .map(|n| (n.bridge_name().to_string(), n.gateway_port))
            .collect()
    }

    fn gateway_of(&self, addr: IpAddr) -> Option<PortId> {
        self.0
            .iter()
            .find(|n| n.containers.iter().any(|c| c.ips.contains(&addr)))
            .or_else(|| self.0.iter().find(|n| n.holds(addr)))
            .map(|n| n.gateway_port)
            .or_else(|| self.gateway_port())
    }

    fn host_addrs(&self) -> Vec<IpAddr> {
        dedup(self.0.iter().flat_map(|n| n.gateway_ips.iter().copied()))
    }

    fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
        let mut out = Vec::new();
        for c in self
            .0
            .iter()
            .filter(|n| !n.internal)
            .flat_map(|n| &n.containers)
        {
            for p in &c.published {
                for ip in &c.ips {
                    out.push((p.proto, p.host_port, *ip, p.container_port));
                }
            }
        }
        out
    }

    fn port_of_mac(&self, mac: [u8; 6]) -> Option<PortId> {
        self.0
            .iter()
            .flat_map(|n| &n.containers)
            .find(|c| c.mac == mac)
            .map(|c| c.port)
    }
}

/// Implements [`Names`] for a type by handing every question to its [`View`].
macro_rules! names_by_view {
    ($ty:ty) => {
        impl Names for $ty {
            fn addrs(&self, name: &str) -> Option<Vec<IpAddr>> {
                self.view().addrs(name)
            }
            fn port(&self, name: &str) -> Option<PortId> {
                self.view().port(name)
            }
            fn ports(&self, name: &str) -> Option<Vec<PortId>> {
                self.view().ports(name)
            }
            fn network_ports(&self, network: &str) -> Option<Vec<PortId>> {
                self.view().network_ports(network)
            }
            fn network_subnets(&self, network: &str) -> Option<Vec<Cidr>> {
                self.view().network_subnets(network)
            }
            fn gateway_port(&self) -> Option<PortId> {
                self.view().gateway_port()
            }
            fn gateways(&self) -> Vec<(String, PortId)> {
                self.view().gateways()
            }
            fn gateway_of(&self, addr: IpAddr) -> Option<PortId> {
                self.view().gateway_of(addr)
            }
            fn host_addrs(&self) -> Vec<IpAddr> {
                self.view().host_addrs()
            }
            fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
                self.view().published()
            }
            fn port_of_mac(&self, mac: [u8; 6]) -> Option<PortId> {
                self.view().port_of_mac(mac)
            }
        }
    };
}

// What user rules may name on the host's networks (see the module docs): containers (their
// addresses and ports on every network they are on), kernel bridges (their gateway ports),
// Docker networks (`-i NET`: their container ports; `-s network:NET`: their subnets).
names_by_view!(HostNetworks);

// One network alone means exactly what it means as the only network of a [`HostNetworks`],
// so callers holding one need not clone it into one.
names_by_view!(BridgeNetwork);

impl HostNetworks {
    fn view(&self) -> View<'_> {
        View(&self.networks)
    }
}

impl BridgeNetwork {
    fn view(&self) -> View<'_> {
        View(std::slice::from_ref(self))
    }
}
