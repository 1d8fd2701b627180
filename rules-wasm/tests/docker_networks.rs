//! Several bridge networks behind one bridgewall (issue 13): Docker 20.10's isolation between
//! them, `--internal` networks, per-network icc, links and published ports, the host's own
//! addresses and link-local traffic, and user rules naming networks and multi-homed
//! containers. Every verdict is checked through the reference interpreter and the compiled
//! module alike (and a random sweep compares the two on everything else).
mod common;

use std::net::IpAddr;

use common::{Host, Rng};
use rules_wasm::abi::{Action, FlowState, PORT_FLOOD, PacketRecord, addr_bytes, proto};
use rules_wasm::algebra::complement_cidrs;
use rules_wasm::compiler::compile;
use rules_wasm::docker::{
    BridgeNetwork, ContainerInfo, HostNetworks, LinkSpec, PortProto, Published, docker_rules,
    docker_ruleset,
};
use rules_wasm::iptables::{self, ParseErrorKind as K, WithHostRoutes};
use rules_wasm::model::{Chain, Cidr, RuleSet};
use rules_wasm::reference::evaluate;

// Dataplane ports: gateways 1, 10, 20, 30; containers next to their gateway.
const GW_BRIDGE: u16 = 1;
const WEB: u16 = 2;
const DB: u16 = 3;
const MULTI_BRIDGE: u16 = 4;
const GW_FRONT: u16 = 10;
const APP: u16 = 11;
const MULTI_FRONT: u16 = 12;
const PROXY: u16 = 13;
const GW_BACK: u16 = 20;
const MULTI_BACK: u16 = 21;
const STORE: u16 = 22;
const GW_VAULT: u16 = 30;
const SAFE: u16 = 31;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    let (a, l) = s.split_once('/').unwrap();
    Cidr::new(ip(a), l.parse().unwrap()).unwrap()
}

fn container(name: &str, port: u16, ips: &[&str]) -> ContainerInfo {
    ContainerInfo {
        name: name.into(),
        port,
        ips: ips.iter().map(|s| ip(s)).collect(),
        mac: [2, 0x42, 0, 0, (port >> 8) as u8, port as u8],
        ..Default::default()
    }
}

/// - `bridge` (docker0, icc=true): `web` linked to `db` (5432/tcp exposed), and `multi`;
/// - `front` (icc=false, IPv4 and IPv6): `app` (publishes 8080→80/tcp, and has a link to `db`,
///   which is not on `front`), `multi`, `proxy`;
/// - `back` (`--internal`, icc=true, IPv4 and IPv6): `multi`, `store` (publishes 5432, which
///   Docker does not program on an internal network);
/// - `vault` (`--internal`, icc=false, IPv4 only): `safe`.
///
/// `multi` is on the first three, with a port, an address and a MAC on each.
fn host() -> HostNetworks {
    let mut web = container("web", WEB, &["172.17.0.2"]);
    web.links = vec![LinkSpec {
        child: "db".into(),
        alias: "database".into(),
    }];
    let mut db = container("db", DB, &["172.17.0.3"]);
    db.exposed = vec![PortProto {
        proto: proto::TCP,
        port: 5432,
    }];
    let mut app = container("app", APP, &["172.18.0.2", "fd18::2"]);
    app.published = vec![Published {
        proto: proto::TCP,
        container_port: 80,
        host_port: 8080,
    }];
    app.links = vec![LinkSpec {
        child: "db".into(),
        alias: "db".into(),
    }];
    let mut store = container("store", STORE, &["172.19.0.2", "fd19::2"]);
    store.published = vec![Published {
        proto: proto::TCP,
        container_port: 5432,
        host_port: 5432,
    }];
    HostNetworks {
        networks: vec![
            BridgeNetwork {
                name: "bridge".into(),
                bridge: "docker0".into(),
                subnets: vec![cidr("172.17.0.0/16")],
                icc: true,
                gateway_port: GW_BRIDGE,
                gateway_ips: vec![ip("172.17.0.1")],
                containers: vec![web, db, container("multi", MULTI_BRIDGE, &["172.17.0.4"])],
                ..Default::default()
            },
            BridgeNetwork {
                name: "front".into(),
                bridge: "br-f1f2f3f4f5f6".into(),
                subnets: vec![cidr("172.18.0.0/16"), cidr("fd18::/64")],
                icc: false,
                gateway_port: GW_FRONT,
                gateway_ips: vec![ip("172.18.0.1"), ip("fd18::1")],
                containers: vec![
                    app,
                    container("multi", MULTI_FRONT, &["172.18.0.3"]),
                    container("proxy", PROXY, &["172.18.0.4", "fd18::4"]),
                ],
                ..Default::default()
            },
            BridgeNetwork {
                name: "back".into(),
                bridge: "br-b1b2b3b4b5b6".into(),
                internal: true,
                subnets: vec![cidr("172.19.0.0/16"), cidr("fd19::/64")],
                icc: true,
                gateway_port: GW_BACK,
                gateway_ips: vec![ip("172.19.0.1"), ip("fd19::1")],
                containers: vec![container("multi", MULTI_BACK, &["172.19.0.3"]), store],
            },
            BridgeNetwork {
                name: "vault".into(),
                bridge: "br-v1v2v3v4v5v6".into(),
                internal: true,
                subnets: vec![cidr("10.30.0.0/24")],
                icc: false,
                gateway_port: GW_VAULT,
                gateway_ips: vec![ip("10.30.0.1")],
                containers: vec![container("safe", SAFE, &["10.30.0.2"])],
            },
        ],
    }
}

/// `PROTO SRC[:SPORT] > DST[:DPORT] in=PORT out=PORT [EST]` (`out=flood` for a flooded
/// frame); IPv6 endpoints are written `[ADDR]:PORT` or bare.
fn probe(text: &str) -> PacketRecord {
    let t: Vec<&str> = text.split_whitespace().collect();
    let endpoint = |s: &str| -> (IpAddr, u16) {
        if let Some(rest) = s.strip_prefix('[') {
            let (a, p) = rest.split_once("]:").unwrap();
            return (ip(a), p.parse().unwrap());
        }
        match s.parse::<IpAddr>() {
            Ok(a) => (a, 0),
            Err(_) => {
                let (a, p) = s.rsplit_once(':').unwrap();
                (ip(a), p.parse().unwrap())
            }
        }
    };
    let (src, sport) = endpoint(t[1]);
    let (dst, dport) = endpoint(t[3]);
    let port = |s: &str| match s.split_once('=').unwrap().1 {
        "flood" => PORT_FLOOD,
        p => p.parse::<u16>().unwrap(),
    };
    let protocol = match t[0] {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "icmp6" => proto::ICMPV6,
        "icmp" => proto::ICMP,
        p => panic!("protocol {p}"),
    };
    PacketRecord {
        src: addr_bytes(src),
        dst: addr_bytes(dst),
        src_port: sport,
        dst_port: dport,
        ip_version: if src.is_ipv4() { 4 } else { 6 },
        protocol,
        tcp_flags: if protocol == proto::TCP { 0x02 } else { 0 },
        flow_state: if t.contains(&"EST") {
            FlowState::Established
        } else {
            FlowState::New
        },
        in_port: port(t[4]),
        out_port: port(t[5]),
        ..Default::default()
    }
}

/// Checks every `(probe, action, text in the deciding rule's origin)` through the reference
/// and the compiled module.
fn check(set: &RuleSet, cases: &[(&str, Action, &str)]) {
    let engine = wasmtime::Engine::default();
    let mut module = Host::load(&engine, &compile(set).unwrap().wasm).unwrap();
    for (p, action, origin) in cases {
        let r = probe(p);
        let v = evaluate(set, &r);
        let rule = set.rule(v.rule).map_or("<default>", |r| r.origin.as_str());
        assert_eq!(v.action, *action, "`{p}`: decided by `{rule}`");
        assert!(
            rule.contains(origin),
            "`{p}`: decided by `{rule}`, want `{origin}`"
        );
        assert_eq!(module.run(&[r])[0], v, "compiled, `{p}`");
    }
}

fn docker_only() -> RuleSet {
    docker_ruleset(&host(), Vec::new(), 1)
}

const ACCEPT: Action = Action::Accept;
const DROP: Action = Action::Drop;
const REJECT: Action = Action::Reject;

#[test]
fn networks_are_isolated_both_ways_before_established() {
    check(
        &docker_only(),
        &[
            // Leaving through the sender's own gateway towards another network's subnet.
            (
                "tcp 172.18.0.2:40000 > 172.17.0.3:5432 in=11 out=10",
                DROP,
                "DOCKER-ISOLATION: front → bridge (172.17.0.0/16)",
            ),
            (
                "tcp 172.17.0.2:40000 > 172.18.0.2:80 in=2 out=1",
                DROP,
                "DOCKER-ISOLATION: bridge → front (172.18.0.0/16)",
            ),
            (
                "tcp [fd18::2]:40000 > [fd19::2]:5432 in=11 out=10",
                DROP,
                "DOCKER-ISOLATION: front → back (fd19::/64)",
            ),
            (
                "tcp 172.18.0.2:40000 > 10.30.0.2:22 in=11 out=10 EST",
                DROP,
                "DOCKER-ISOLATION: front → vault",
            ),
            // Arriving on a gateway from another network's subnet, even to a published port
            // and even when conntrack calls it established.
            (
                "tcp 172.17.0.2:40000 > 172.18.0.2:80 in=10 out=11",
                DROP,
                "DOCKER-ISOLATION: bridge → front (from 172.17.0.0/16)",
            ),
            (
                "tcp 172.17.0.2:40000 > 172.18.0.2:80 in=10 out=11 EST",
                DROP,
                "DOCKER-ISOLATION: bridge → front (from 172.17.0.0/16)",
            ),
            (
                "tcp 10.30.0.2:40000 > 172.17.0.2:80 in=1 out=2 EST",
                DROP,
                "DOCKER-ISOLATION: vault → bridge (from 10.30.0.0/24)",
            ),
            // The multi-homed container, from its `front` port towards `bridge`'s subnet.
            (
                "tcp 172.18.0.3:40000 > 172.17.0.2:80 in=12 out=10",
                DROP,
                "DOCKER-ISOLATION: front → bridge",
            ),
            // Outside traffic is not isolation's business.
            (
                "tcp 172.18.0.2:40000 > 192.0.2.7:443 in=11 out=10",
                ACCEPT,
                "containers reach out",
            ),
            (
                "tcp 192.0.2.7:443 > 172.18.0.2:40000 in=10 out=11 EST",
                ACCEPT,
                "ESTABLISHED",
            ),
        ],
    );
}

#[test]
fn the_host_is_exempt_from_any_of_its_bridge_addresses() {
    check(
        &docker_only(),
        &[
            // A container reaching the host's address on another bridge (INPUT in Docker).
            (
                "tcp 172.18.0.2:40000 > 172.17.0.1:53 in=11 out=10",
                ACCEPT,
                "reach the host's address 172.17.0.1",
            ),
            (
                "udp 172.17.0.2:40000 > 172.19.0.1:53 in=2 out=1",
                ACCEPT,
                "reach the host's address 172.19.0.1",
            ),
            (
                "tcp [fd18::2]:40000 > [fd19::1]:53 in=11 out=10",
                ACCEPT,
                "reach the host's address fd19::1",
            ),
            // But not another network's container next to it.
            (
                "udp 172.17.0.2:40000 > 172.19.0.2:53 in=2 out=1",
                DROP,
                "DOCKER-ISOLATION: bridge → back",
            ),
            // The host, from any of its bridge addresses, reaches any container port.
            (
                "tcp 172.17.0.1:50000 > 172.18.0.2:22 in=10 out=11",
                ACCEPT,
                "the host itself (172.17.0.1)",
            ),
            (
                "tcp 172.19.0.1:50000 > 172.17.0.4:22 in=1 out=4",
                ACCEPT,
                "the host itself (172.19.0.1)",
            ),
            (
                "tcp [fd19::1]:50000 > [fd18::2]:22 in=10 out=11",
                ACCEPT,
                "the host itself (fd19::1)",
            ),
            (
                "tcp 172.18.0.1:50000 > 172.18.0.2:22 in=10 out=11",
                ACCEPT,
                "the host itself (172.18.0.1)",
            ),
            // Anyone else to an unpublished port: dropped.
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:22 in=10 out=11",
                DROP,
                "unpublished port on front",
            ),
        ],
    );
}

#[test]
fn link_local_from_the_gateway_is_the_host() {
    check(
        &docker_only(),
        &[
            // MLD and neighbour discovery from the bridge's fe80 address.
            (
                "icmp6 fe80::1 > ff02::16 in=1 out=flood",
                ACCEPT,
                "link-local traffic on docker0",
            ),
            (
                "icmp6 fe80::42:acff:fe11:1 > fd18::2 in=10 out=11",
                ACCEPT,
                "link-local traffic on br-f1f2f3f4f5f6",
            ),
            (
                "tcp [fe80::1]:50000 > [fd19::2]:22 in=20 out=22",
                ACCEPT,
                "link-local traffic on br-b1b2b3b4b5b6",
            ),
            // A routed IPv6 source is not the host.
            (
                "icmp6 2001:db8::1 > ff02::16 in=1 out=flood",
                DROP,
                "unpublished port on bridge",
            ),
        ],
    );
}

#[test]
fn internal_networks_keep_to_their_subnets_in_both_families() {
    check(
        &docker_only(),
        &[
            // Nothing leaves, whether to the outside or to another network.
            (
                "tcp 172.19.0.2:40000 > 192.0.2.7:443 in=22 out=20",
                DROP,
                "--internal back: nothing leaves",
            ),
            (
                "tcp 172.19.0.2:40000 > 192.0.2.7:443 in=22 out=20 EST",
                DROP,
                "--internal back: nothing leaves",
            ),
            (
                "tcp 172.19.0.2:40000 > 172.17.0.2:80 in=22 out=20",
                DROP,
                "--internal back: nothing leaves",
            ),
            (
                "tcp [fd19::2]:40000 > [2001:db8::7]:443 in=22 out=20",
                DROP,
                "--internal back: nothing leaves",
            ),
            // Not even to the host's addresses on other bridges (no default route in Docker).
            (
                "tcp 172.19.0.2:40000 > 172.17.0.1:53 in=22 out=20",
                DROP,
                "--internal back: nothing leaves",
            ),
            // The host's address there, and link-local, are within reach.
            (
                "udp 172.19.0.2:40000 > 172.19.0.1:53 in=22 out=20",
                ACCEPT,
                "containers reach out",
            ),
            (
                "udp [fd19::2]:40000 > [fd19::1]:53 in=22 out=20",
                ACCEPT,
                "containers reach out",
            ),
            (
                "icmp6 fe80::2 > ff02::2 in=22 out=20",
                ACCEPT,
                "--internal back: link-local ff02::/16",
            ),
            (
                "udp [fe80::2]:5353 > [fe80::1]:5353 in=22 out=20",
                ACCEPT,
                "--internal back: link-local fe80::/10",
            ),
            (
                "udp 172.19.0.2:5353 > 224.0.0.251:5353 in=22 out=20",
                ACCEPT,
                "--internal back: link-local 224.0.0.0/24",
            ),
            (
                "udp [fd19::2]:5353 > [ff05::fb]:5353 in=22 out=20",
                DROP,
                "--internal back: nothing leaves fd19::/64",
            ),
            // Nothing comes in from outside the subnets, published or not.
            (
                "tcp 192.0.2.7:50000 > 172.19.0.2:5432 in=20 out=22",
                DROP,
                "--internal back: nothing from outside",
            ),
            (
                "tcp 192.0.2.7:443 > 172.19.0.2:40000 in=20 out=22 EST",
                DROP,
                "--internal back: nothing from outside",
            ),
            (
                "tcp [2001:db8::7]:50000 > [fd19::2]:22 in=20 out=22",
                DROP,
                "--internal back: nothing from outside",
            ),
            (
                "tcp 172.17.0.1:50000 > 172.19.0.2:22 in=20 out=22",
                DROP,
                "--internal back: nothing from outside",
            ),
            // The host from its address there, and link-local, do.
            (
                "tcp 172.19.0.1:50000 > 172.19.0.2:22 in=20 out=22",
                ACCEPT,
                "the host itself (172.19.0.1)",
            ),
            (
                "tcp [fd19::1]:50000 > [fd19::2]:22 in=20 out=22",
                ACCEPT,
                "the host itself (fd19::1)",
            ),
            // Another address of the subnet from the gateway is nobody: the FORWARD policy.
            (
                "tcp 172.19.0.9:50000 > 172.19.0.2:22 in=20 out=22",
                DROP,
                "unpublished port on back",
            ),
            // A network without an IPv6 subnet: no IPv6 across its gateway but link-local;
            // its IPv4 negation never catches IPv6.
            (
                "tcp [fd30::2]:40000 > [2001:db8::7]:443 in=31 out=30",
                DROP,
                "--internal vault: no IPv6 leaves (no IPv6 subnet)",
            ),
            (
                "tcp [2001:db8::7]:50000 > [fd30::2]:22 in=30 out=31",
                DROP,
                "--internal vault: no IPv6 comes in (no IPv6 subnet)",
            ),
            (
                "icmp6 fe80::2 > ff02::2 in=31 out=30",
                ACCEPT,
                "--internal vault: link-local ff02::/16",
            ),
            (
                "icmp6 fe80::1 > fe80::2 in=30 out=31",
                ACCEPT,
                "link-local traffic on br-v1v2v3v4v5v6",
            ),
            (
                "udp 10.30.0.2:40000 > 10.30.0.1:53 in=31 out=30",
                ACCEPT,
                "containers reach out",
            ),
            (
                "udp 10.30.0.2:40000 > 8.8.8.8:53 in=31 out=30",
                DROP,
                "--internal vault: nothing leaves 10.30.0.0/24",
            ),
        ],
    );
}

#[test]
fn icc_links_and_published_ports_are_per_network() {
    let set = docker_only();
    check(
        &set,
        &[
            // icc=true on bridge and back, false on front and vault.
            (
                "tcp 172.17.0.4:40000 > 172.17.0.2:22 in=4 out=2",
                ACCEPT,
                "icc=true",
            ),
            (
                "tcp 172.19.0.3:40000 > 172.19.0.2:5432 in=21 out=22",
                ACCEPT,
                "icc=true",
            ),
            (
                "tcp 172.18.0.4:40000 > 172.18.0.2:80 in=13 out=11",
                DROP,
                "icc=false on front: from proxy",
            ),
            (
                "tcp [fd18::4]:40000 > [fd18::2]:80 in=13 out=11",
                DROP,
                "icc=false on front: from proxy",
            ),
            (
                "udp 172.18.0.3:40000 > 172.18.0.255:9 in=12 out=flood",
                DROP,
                "icc=false on front: from multi",
            ),
            (
                "udp 172.17.0.4:40000 > 172.17.0.255:9 in=4 out=flood",
                ACCEPT,
                "icc=true",
            ),
            // The multi-homed container follows each network's setting on its port there.
            (
                "tcp 172.19.0.3:40000 > 172.19.0.2:80 in=21 out=22",
                ACCEPT,
                "icc=true",
            ),
            (
                "tcp 172.18.0.3:40000 > 172.18.0.2:80 in=12 out=11",
                DROP,
                "icc=false on front: from multi",
            ),
            (
                "tcp 10.30.0.2:40000 > 10.30.0.3:80 in=31 out=32",
                DROP,
                "icc=false on vault: from safe",
            ),
            // The link on bridge; app's link to db (not on front) gives nothing.
            (
                "tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3",
                ACCEPT,
                "link web→db",
            ),
            // Published on front, from outside through front's gateway.
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:80 in=10 out=11",
                ACCEPT,
                "publish app 8080→80/tcp",
            ),
            (
                "tcp [2001:db8::7]:50000 > [fd18::2]:80 in=10 out=11",
                ACCEPT,
                "publish app 8080→80/tcp",
            ),
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:81 in=10 out=11",
                DROP,
                "unpublished port on front",
            ),
        ],
    );
    assert!(
        !set.rules.iter().any(|r| r.origin.contains("app→db")),
        "a link to a container on another network makes no rule"
    );
    assert!(
        !set.rules.iter().any(|r| r.origin.contains("publish store")),
        "Docker programs no published port on an --internal network"
    );
}

#[test]
fn rule_order_and_count_stay_as_documented() {
    let rules = docker_rules(&host());
    // Isolation and the host's exemptions all come before the ESTABLISHED accept.
    let est = rules
        .iter()
        .position(|r| r.origin.contains("RELATED,ESTABLISHED"))
        .unwrap();
    let last_isolation = rules
        .iter()
        .rposition(|r| r.origin.starts_with("DOCKER-ISOLATION"))
        .unwrap();
    assert!(last_isolation < est);
    assert!(rules[..est].iter().all(|r| r.chain == Chain::Docker));
    // ICC: the three icc=false ports of front and the one of vault (4 ports) against 5 with
    // icc=true: one rule each for the fewer, then the catch-all.
    let icc: Vec<_> = rules.iter().filter(|r| r.chain == Chain::Icc).collect();
    assert_eq!(icc.len(), 5, "{icc:#?}");
    assert_eq!(icc.last().unwrap().m, Default::default());
    // No network followed yet: nothing but non-IP frames and replies is accepted.
    check(
        &docker_ruleset(&HostNetworks::default(), Vec::new(), 1),
        &[(
            "tcp 172.17.0.2:40000 > 172.17.0.3:80 in=2 out=3",
            DROP,
            "<default>",
        )],
    );
}

#[test]
fn one_network_keeps_its_old_meaning() {
    let mut only = host().networks.remove(0);
    only.bridge.clear();
    let set = docker_ruleset(&HostNetworks::from(only), Vec::new(), 1);
    assert!(!set.rules.iter().any(|r| r.origin.contains("ISOLATION")));
    let icc: Vec<_> = set.rules.iter().filter(|r| r.chain == Chain::Icc).collect();
    assert_eq!(icc.len(), 1);
    assert_eq!(icc[0].origin, "-i docker0 -o docker0 -j ACCEPT (icc=true)");
    check(
        &set,
        &[
            (
                "tcp 172.17.0.1:50000 > 172.17.0.2:22 in=1 out=2",
                ACCEPT,
                "the host itself",
            ),
            (
                "tcp 172.17.0.2:40000 > 172.18.0.2:80 in=2 out=1",
                ACCEPT,
                "containers reach out",
            ),
        ],
    );
}

#[test]
fn user_rules_name_networks_bridges_and_multi_homed_containers() {
    let nets = host();
    let parse = |text: &str| iptables::parse(text, &nets).unwrap_or_else(|e| panic!("{text}: {e}"));
    let ports_of = |text: &str| -> Vec<(Option<u16>, Option<u16>)> {
        parse(text)
            .iter()
            .map(|r| (r.m.in_port.map(|p| p.value), r.m.out_port.map(|p| p.value)))
            .collect()
    };
    // A network's name: each of its container ports.
    assert_eq!(
        ports_of("-A -i front -j DROP"),
        [
            (Some(APP), None),
            (Some(MULTI_FRONT), None),
            (Some(PROXY), None)
        ]
    );
    assert_eq!(
        ports_of("-A -o network:back -j DROP"),
        [(None, Some(MULTI_BACK)), (None, Some(STORE))]
    );
    // A kernel bridge: the gateway port; docker0 too.
    assert_eq!(
        ports_of("-A -i br-f1f2f3f4f5f6 -j DROP"),
        [(Some(GW_FRONT), None)]
    );
    assert_eq!(ports_of("-A -o docker0 -j DROP"), [(None, Some(GW_BRIDGE))]);
    assert_eq!(
        ports_of("-A -i br-+ -j DROP"),
        [
            (Some(GW_FRONT), None),
            (Some(GW_BACK), None),
            (Some(GW_VAULT), None)
        ]
    );
    // A multi-homed container: its port, and every address, on each network.
    assert_eq!(
        ports_of("-A -i multi -j DROP"),
        [
            (Some(MULTI_BRIDGE), None),
            (Some(MULTI_FRONT), None),
            (Some(MULTI_BACK), None)
        ]
    );
    let dsts: Vec<String> = parse("-A -d multi -j DROP")
        .iter()
        .map(|r| r.m.dst.unwrap().value.to_string())
        .collect();
    assert_eq!(dsts, ["172.17.0.4", "172.18.0.3", "172.19.0.3"]);
    // A network's subnets, per family; pairs of families that cannot meet are left out.
    let subnets: Vec<String> = parse("-A -s network:front -j DROP")
        .iter()
        .map(|r| r.m.src.unwrap().value.to_string())
        .collect();
    assert_eq!(subnets, ["172.18.0.0/16", "fd18::/64"]);
    assert_eq!(
        parse("-A -s network:front -d network:bridge -j DROP").len(),
        1
    );
    // A negated network or multi-homed name cannot be one rule; a single port can.
    for (text, token, kind) in [
        ("-A ! -i front -j DROP", "front", K::NegatedManyPorts),
        ("-A ! -o multi -j DROP", "multi", K::NegatedManyPorts),
        ("-A ! -i br-+ -j DROP", "br-+", K::NegatedManyPorts),
        (
            "-A -i network:nosuch -j DROP",
            "network:nosuch",
            K::UnknownNetwork,
        ),
        (
            "-A -s network:nosuch -j DROP",
            "network:nosuch",
            K::UnknownNetwork,
        ),
        ("-A -d front -j DROP", "front", K::NetworkAsAddress),
        (
            "-A -i nosuch_network_long_name -j DROP",
            "nosuch_network_long_name",
            K::UnknownName,
        ),
    ] {
        let e = iptables::parse(text, &nets).expect_err(text);
        assert_eq!(
            (e.token.as_str(), e.kind.clone()),
            (token, kind),
            "{text}: {e}"
        );
    }
    assert_eq!(ports_of("-A ! -i app -j DROP").len(), 1);
    // Names longer than an interface name are fine when they name something.
    let long = HostNetworks::from(BridgeNetwork {
        name: "myproject_default".into(),
        bridge: "br-0123456789ab".into(),
        gateway_port: 1,
        containers: vec![container("myproject-web-1", 2, &["172.20.0.2"])],
        ..Default::default()
    });
    assert_eq!(
        iptables::parse("-A -i myproject_default -o myproject-web-1 -j DROP", &long)
            .unwrap()
            .len(),
        1
    );
    // A container may share a network's name: the container wins, `network:` reaches the
    // network.
    let clash = HostNetworks {
        networks: vec![
            BridgeNetwork {
                name: "db".into(),
                bridge: "br-d".into(),
                gateway_port: 1,
                containers: vec![container("x", 2, &["172.20.0.2"]), container("y", 3, &[])],
                ..Default::default()
            },
            BridgeNetwork {
                name: "other".into(),
                bridge: "br-o".into(),
                gateway_port: 4,
                containers: vec![container("db", 5, &["172.21.0.2"])],
                ..Default::default()
            },
        ],
    };
    let clash_ports = |text: &str| -> Vec<u16> {
        iptables::parse(text, &clash)
            .unwrap()
            .iter()
            .filter_map(|r| r.m.in_port.map(|p| p.value))
            .collect()
    };
    assert_eq!(clash_ports("-A -i db -j DROP"), [5]);
    assert_eq!(clash_ports("-A -i network:db -j DROP"), [2, 3]);
}

#[test]
fn user_rules_on_networks_decide_before_dockers() {
    let nets = host();
    let user = iptables::parse(
        "\
-A DOCKER-USER -i front -o front -p tcp --dport 22 -j ACCEPT
-A DOCKER-USER -s multi -p udp --dport 53 -j REJECT
-A DOCKER-USER -s network:bridge -d 172.18.0.0/16 -j RETURN
-A DOCKER-USER -i docker0 -d network:front -p tcp --dport 80 -j DROP
-A DOCKER-USER -o back -p tcp --dport 9999 -j REJECT
",
        &nets,
    )
    .unwrap();
    let set = docker_ruleset(&nets, user, 2);
    check(
        &set,
        &[
            // icc=false on front, but the user opens ssh between front's containers.
            (
                "tcp 172.18.0.4:40000 > 172.18.0.2:22 in=13 out=11",
                ACCEPT,
                "-i front -o front",
            ),
            (
                "tcp 172.18.0.4:40000 > 172.18.0.2:23 in=13 out=11",
                DROP,
                "icc=false on front",
            ),
            // `multi` is refused DNS from each of its addresses, no one else is.
            (
                "udp 172.17.0.4:40000 > 172.17.0.1:53 in=4 out=1",
                REJECT,
                "-s multi",
            ),
            (
                "udp 172.19.0.3:40000 > 172.19.0.1:53 in=21 out=20",
                REJECT,
                "-s multi",
            ),
            (
                "udp 172.17.0.2:40000 > 172.17.0.1:53 in=2 out=1",
                ACCEPT,
                "containers reach out",
            ),
            // Isolation still stands after the user's RETURN.
            (
                "tcp 172.17.0.2:40000 > 172.18.0.2:80 in=2 out=1",
                DROP,
                "DOCKER-ISOLATION: bridge → front",
            ),
            // `-i docker0` is only docker0's gateway, `-o back` only back's containers.
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:80 in=10 out=11",
                ACCEPT,
                "publish app",
            ),
            (
                "tcp 172.19.0.3:40000 > 172.19.0.2:9999 in=21 out=22",
                REJECT,
                "-o back",
            ),
            (
                "tcp 172.18.0.3:40000 > 172.18.0.2:9999 in=12 out=11",
                DROP,
                "icc=false on front",
            ),
        ],
    );
}

#[test]
fn host_interfaces_with_several_networks_match_by_address_and_return_works() {
    let nets = host();
    let all4 = Cidr::new(ip("0.0.0.0"), 0).unwrap();
    let mut eth0 = complement_cidrs(&[cidr("172.16.0.0/12"), cidr("10.30.0.0/24")], all4);
    eth0.push(cidr("2000::/3"));
    eth0.push(cidr("fe80::/64"));
    let routes = vec![("eth0".to_string(), eth0)];
    let names = WithHostRoutes {
        inner: &nets,
        routes: &routes,
        host_addrs: &[ip("198.51.100.2")],
    };
    let parsed = iptables::parse_full(
        "\
-A DOCKER-USER -i eth0 -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
-A DOCKER-USER -i eth0 -p tcp -m conntrack --ctorigdstport 8080 -j RETURN
-A DOCKER-USER -i eth0 -j DROP
",
        None,
        &names,
    )
    .unwrap();
    let plain = iptables::parse("-A -i eth0 -j DROP", &names).unwrap();
    assert!(
        plain
            .iter()
            .all(|r| r.m.in_port.is_none() && r.m.src.is_some()),
        "several gateways: -i eth0 is by source address alone"
    );
    assert!(
        plain
            .iter()
            .all(|r| !r.m.src.unwrap().value.to_string().starts_with("fe80")),
        "link-local is never from eth0"
    );
    let set = docker_ruleset(&nets, parsed.rules, 3);
    check(
        &set,
        &[
            // The published port, reached from outside through front's gateway.
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:80 in=10 out=11",
                ACCEPT,
                "publish app",
            ),
            (
                "tcp 192.0.2.7:50000 > 172.18.0.2:22 in=10 out=11",
                DROP,
                "-i eth0 -j DROP",
            ),
            (
                "tcp 192.0.2.7:443 > 172.17.0.2:40000 in=1 out=2 EST",
                ACCEPT,
                "ESTABLISHED",
            ),
            (
                "tcp [2001:db8::7]:50000 > [fd18::2]:22 in=10 out=11",
                DROP,
                "-i eth0 -j DROP",
            ),
            // The host's link-local traffic never came in through eth0.
            (
                "icmp6 fe80::1 > ff02::16 in=1 out=flood",
                ACCEPT,
                "link-local traffic on docker0",
            ),
            // Containers are not eth0.
            (
                "tcp 172.18.0.2:40000 > 192.0.2.7:443 in=11 out=10",
                ACCEPT,
                "containers reach out",
            ),
        ],
    );
}

#[test]
fn compiled_multi_network_policy_equals_reference() {
    let nets = host();
    let user = iptables::parse(
        "-A -i front -o front -p tcp --dport 22 -j ACCEPT\n-A -s multi -p udp -j REJECT\n\
         -A -d network:back -p tcp --dport 5432 -j DROP",
        &nets,
    )
    .unwrap();
    let set = docker_ruleset(&nets, user, 4);
    let engine = wasmtime::Engine::default();
    let mut module = Host::load(&engine, &compile(&set).unwrap().wasm).unwrap();
    let addrs: Vec<[u8; 16]> = [
        "172.17.0.1",
        "172.17.0.2",
        "172.17.0.4",
        "172.18.0.1",
        "172.18.0.2",
        "172.18.0.3",
        "172.19.0.1",
        "172.19.0.2",
        "10.30.0.1",
        "10.30.0.2",
        "192.0.2.7",
        "fd18::1",
        "fd18::2",
        "fd19::2",
        "fe80::1",
        "2001:db8::7",
    ]
    .iter()
    .map(|a| addr_bytes(ip(a)))
    .collect();
    let ports = [
        GW_BRIDGE,
        WEB,
        DB,
        MULTI_BRIDGE,
        GW_FRONT,
        APP,
        MULTI_FRONT,
        PROXY,
        GW_BACK,
        MULTI_BACK,
        STORE,
        GW_VAULT,
        SAFE,
        99,
        PORT_FLOOD,
    ];
    let mut rng = Rng(13);
    let pkts: Vec<PacketRecord> = (0..8192)
        .map(|_| {
            let src = *rng.pick(&addrs);
            let v4 = src[..12] == addr_bytes(ip("0.0.0.0"))[..12];
            PacketRecord {
                src,
                dst: *rng.pick(&addrs),
                src_port: *rng.pick(&[53, 80, 5432, 40000]),
                dst_port: *rng.pick(&[22, 53, 80, 5432]),
                ip_version: if rng.chance(5) {
                    0
                } else if v4 {
                    4
                } else {
                    6
                },
                protocol: *rng.pick(&[proto::TCP, proto::UDP, proto::ICMPV6]),
                flow_state: *rng.pick(&[FlowState::New, FlowState::Established]),
                in_port: *rng.pick(&ports),
                out_port: *rng.pick(&ports),
                ..Default::default()
            }
        })
        .collect();
    let got = module.run(&pkts);
    for (p, g) in pkts.iter().zip(got) {
        assert_eq!(g, evaluate(&set, p), "{p:?}");
    }
}

/// Twelve networks of six containers (mixed icc, two `--internal`, IPv6 on every third, a
/// published port each, one container on three networks) under user rules naming networks,
/// bridges and ports: the compiled module, in every form the compiler can give it, equals the
/// reference on random traffic over every port. With fully classified ports this exercises
/// the pair classes a host with many networks needs (per-port icc terminals, per-gateway
/// rules, port-specific user rules).
#[test]
fn compiled_many_network_policy_equals_reference_in_every_form() {
    use rules_wasm::compiler::{Classify, CompileOptions, compile_with};
    const N: usize = 12;
    const PER: usize = 6;
    let gw = |k: usize| 1 + 16 * k as u16;
    let v4 = |k: usize, d: usize| ip(&format!("10.{k}.0.{d}"));
    let v6 = |k: usize, d: usize| ip(&format!("fd00:{k}::{d}"));
    let networks = (0..N)
        .map(|k| {
            let mut containers: Vec<ContainerInfo> = (0..PER)
                .map(|j| {
                    let mut ips = vec![v4(k, 2 + j)];
                    if k % 3 == 0 {
                        ips.push(v6(k, 2 + j));
                    }
                    let mut c = ContainerInfo {
                        name: format!("c{k}_{j}"),
                        port: gw(k) + 1 + j as u16,
                        ips,
                        ..Default::default()
                    };
                    if j == 0 {
                        c.published = vec![Published {
                            proto: proto::TCP,
                            container_port: 80,
                            host_port: 8000 + k as u16,
                        }];
                    }
                    c
                })
                .collect();
            if k < 3 {
                containers.push(ContainerInfo {
                    name: "m".into(),
                    port: gw(k) + 15,
                    ips: vec![v4(k, 99)],
                    ..Default::default()
                });
            }
            let mut subnets = vec![cidr(&format!("10.{k}.0.0/24"))];
            let mut gateway_ips = vec![v4(k, 1)];
            if k % 3 == 0 {
                subnets.push(cidr(&format!("fd00:{k}::/64")));
                gateway_ips.push(v6(k, 1));
            }
            BridgeNetwork {
                name: format!("net{k}"),
                bridge: format!("br-n{k}"),
                internal: k % 5 == 4,
                subnets,
                icc: k % 2 == 1,
                gateway_port: gw(k),
                gateway_ips,
                containers,
            }
        })
        .collect();
    let nets = HostNetworks { networks };
    let user = iptables::parse(
        "\
-A -o net3 -p tcp --dport 22 -j ACCEPT
-A -i net5 -p udp -j DROP
-A ! -i c7_1 -d network:net7 -p udp --dport 53 -j REJECT
-A -s m -p tcp --dport 443 -j DROP
-A -i br-n2 -o c2_3 -p tcp -j ACCEPT
-A -s network:net0 -d network:net6 -j RETURN
-A -o m -p tcp --dport 8080 -j ACCEPT
-A ! -o br-n8 -s network:net8 -j DROP
",
        &nets,
    )
    .unwrap();
    let set = docker_ruleset(&nets, user, 7);
    let mut addrs: Vec<[u8; 16]> = vec![
        addr_bytes(ip("192.0.2.7")),
        addr_bytes(ip("2001:db8::7")),
        addr_bytes(ip("fe80::1")),
        addr_bytes(ip("ff02::16")),
        addr_bytes(ip("224.0.0.251")),
    ];
    let mut ports = vec![PORT_FLOOD, 999];
    for n in &nets.networks {
        ports.push(n.gateway_port);
        addrs.extend(n.gateway_ips.iter().map(|a| addr_bytes(*a)));
        for c in &n.containers {
            ports.push(c.port);
            addrs.extend(c.ips.iter().map(|a| addr_bytes(*a)));
        }
    }
    let mut rng = Rng(2024);
    let pkts: Vec<PacketRecord> = (0..20_000)
        .map(|_| {
            let src = *rng.pick(&addrs);
            let v4 = src[..12] == addr_bytes(ip("0.0.0.0"))[..12];
            PacketRecord {
                src,
                dst: *rng.pick(&addrs),
                src_port: *rng.pick(&[53, 80, 443, 40000]),
                dst_port: *rng.pick(&[22, 53, 80, 443, 8080]),
                ip_version: match rng.below(20) {
                    0 => 0,
                    1 => 6,
                    _ if v4 => 4,
                    _ => 6,
                },
                protocol: *rng.pick(&[proto::TCP, proto::UDP, proto::ICMPV6]),
                flow_state: *rng.pick(&[FlowState::New, FlowState::Established]),
                in_port: *rng.pick(&ports),
                out_port: *rng.pick(&ports),
                ..Default::default()
            }
        })
        .collect();
    let want: Vec<_> = pkts.iter().map(|p| evaluate(&set, p)).collect();
    let decided_by: std::collections::BTreeSet<u32> = want.iter().map(|v| v.rule).collect();
    assert!(decided_by.len() > 200, "{} rules decide", decided_by.len());
    let engine = wasmtime::Engine::default();
    for (options, level) in [
        (CompileOptions::default(), Classify::Full),
        (
            CompileOptions {
                inline_programs: false,
                ..CompileOptions::default()
            },
            Classify::Full,
        ),
        (
            CompileOptions {
                classify: Classify::NoPorts,
                ..CompileOptions::default()
            },
            Classify::NoPorts,
        ),
    ] {
        let compiled = compile_with(&set, &options).unwrap();
        assert_eq!(compiled.stats.classify, level, "{options:?}");
        let mut module = Host::load(&engine, &compiled.wasm).unwrap();
        for ((p, g), w) in pkts.iter().zip(module.run(&pkts)).zip(&want) {
            assert_eq!(g, *w, "{options:?}: {p:?}");
        }
    }
}
