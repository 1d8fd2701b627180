//! Docker 20.10's bridge semantics as `docker_rules` encodes them for one network, judged by
//! the reference interpreter and the compiled module alike: icc on and off, a link (both
//! directions, exposed ports only), a published port, the host itself (also from its IPv6
//! link-local address) versus forwarded traffic, containers reaching out, non-IP frames.
//! Several networks: `docker_networks.rs`.
mod common;

use std::net::{IpAddr, Ipv4Addr};

use rules_wasm::abi::{Action, FlowState, PacketRecord, addr_bytes, proto};
use rules_wasm::docker::{
    BridgeNetwork, ContainerInfo, DIFFERENCES, HostNetworks, LinkSpec, PortProto, Published,
    docker_ruleset,
};
use rules_wasm::iptables;
use rules_wasm::model::{Chain, RuleSet};
use rules_wasm::reference::evaluate;

const GW: u16 = 1;
const WEB: u16 = 2;
const DB: u16 = 3;
const OTHER: u16 = 4;

fn ip(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(172, 17, 0, d))
}
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn net(icc: bool) -> HostNetworks {
    let c = |name: &str, port: u16, d: u8| ContainerInfo {
        name: name.into(),
        port,
        ips: vec![ip(d)],
        ..Default::default()
    };
    let mut web = c("web", WEB, 2);
    web.links = vec![
        LinkSpec {
            child: "db".into(),
            alias: "database".into(),
        },
        LinkSpec {
            child: "gone".into(),
            alias: "g".into(),
        },
    ];
    let mut db = c("db", DB, 3);
    db.exposed = vec![PortProto {
        proto: proto::TCP,
        port: 5432,
    }];
    db.published = vec![Published {
        proto: proto::TCP,
        container_port: 80,
        host_port: 8080,
    }];
    HostNetworks::from(BridgeNetwork {
        name: "bridge".into(),
        bridge: "docker0".into(),
        subnets: vec![rules_wasm::model::Cidr::new(ip(0), 16).unwrap()],
        icc,
        gateway_port: GW,
        gateway_ips: vec![ip(1)],
        containers: vec![web, db, c("other", OTHER, 4)],
        ..Default::default()
    })
}

fn pkt(
    src: IpAddr,
    in_port: u16,
    dst: IpAddr,
    out_port: u16,
    p: u8,
    sport: u16,
    dport: u16,
) -> PacketRecord {
    PacketRecord {
        src: addr_bytes(src),
        dst: addr_bytes(dst),
        src_port: sport,
        dst_port: dport,
        ip_version: 4,
        protocol: p,
        in_port,
        out_port,
        ..Default::default()
    }
}

/// The action and deciding chain; the compiled module must give the same verdict.
fn verdict(set: &RuleSet, p: &PacketRecord) -> (Action, Option<Chain>) {
    let v = evaluate(set, p);
    let wasm = rules_wasm::compiler::compile(set).unwrap().wasm;
    let mut module = common::Host::load(&wasmtime::Engine::default(), &wasm).unwrap();
    assert_eq!(module.run(&[*p])[0], v, "compiled: {p:?}");
    (v.action, set.rule(v.rule).map(|r| r.chain))
}

#[test]
fn icc_true_lets_containers_talk_and_false_drops_them() {
    let p = pkt(ip(4), OTHER, ip(3), DB, proto::TCP, 40000, 22);
    assert_eq!(
        verdict(&docker_ruleset(&net(true), vec![], 1), &p),
        (Action::Accept, Some(Chain::Icc))
    );
    assert_eq!(
        verdict(&docker_ruleset(&net(false), vec![], 1), &p),
        (Action::Drop, Some(Chain::Icc))
    );
}

#[test]
fn link_opens_only_exposed_ports_between_the_two_containers() {
    let set = docker_ruleset(&net(false), vec![], 1);
    let fwd = pkt(ip(2), WEB, ip(3), DB, proto::TCP, 40000, 5432);
    assert_eq!(verdict(&set, &fwd), (Action::Accept, Some(Chain::Docker)));
    let origin = &set.rule(evaluate(&set, &fwd).rule).unwrap().origin;
    assert!(
        origin.contains("web→db") && origin.contains("5432/tcp"),
        "{origin}"
    );
    let reply = pkt(ip(3), DB, ip(2), WEB, proto::TCP, 5432, 40000);
    assert_eq!(verdict(&set, &reply), (Action::Accept, Some(Chain::Docker)));
    // Another port, the other protocol, the reverse direction, or a third container: ICC drop.
    for p in [
        pkt(ip(2), WEB, ip(3), DB, proto::TCP, 40000, 22),
        pkt(ip(2), WEB, ip(3), DB, proto::UDP, 40000, 5432),
        pkt(ip(3), DB, ip(2), WEB, proto::TCP, 40000, 5432),
        pkt(ip(4), OTHER, ip(3), DB, proto::TCP, 40000, 5432),
        // The parent's address spoofed from another port (a bridgewall difference).
        pkt(ip(2), OTHER, ip(3), DB, proto::TCP, 40000, 5432),
    ] {
        assert_eq!(verdict(&set, &p), (Action::Drop, Some(Chain::Icc)), "{p:?}");
    }
}

#[test]
fn published_port_admits_outside_only_to_the_container_port() {
    let set = docker_ruleset(&net(false), vec![], 1);
    assert_eq!(
        verdict(&set, &pkt(OUTSIDE, GW, ip(3), DB, proto::TCP, 50000, 80)),
        (Action::Accept, Some(Chain::Docker))
    );
    // The host port is gone after DNAT; other ports, other containers: dropped.
    for p in [
        pkt(OUTSIDE, GW, ip(3), DB, proto::TCP, 50000, 8080),
        pkt(OUTSIDE, GW, ip(3), DB, proto::TCP, 50000, 5432),
        pkt(OUTSIDE, GW, ip(3), DB, proto::UDP, 50000, 80),
        pkt(OUTSIDE, GW, ip(2), WEB, proto::TCP, 50000, 80),
    ] {
        assert_eq!(verdict(&set, &p).0, Action::Drop, "{p:?}");
    }
}

#[test]
fn the_host_reaches_any_port_and_containers_reach_out() {
    let set = docker_ruleset(&net(false), vec![], 1);
    assert_eq!(
        verdict(&set, &pkt(ip(1), GW, ip(2), WEB, proto::TCP, 50000, 22)).0,
        Action::Accept
    );
    assert_eq!(
        verdict(&set, &pkt(ip(2), WEB, OUTSIDE, GW, proto::TCP, 40000, 443)).0,
        Action::Accept
    );
    assert_eq!(
        verdict(&set, &pkt(ip(2), WEB, ip(1), GW, proto::UDP, 40000, 53)).0,
        Action::Accept
    );
}

#[test]
fn the_hosts_link_local_traffic_from_the_gateway_passes() {
    let set = docker_ruleset(&net(false), vec![], 1);
    let mld = |src: &str| PacketRecord {
        src: addr_bytes(src.parse().unwrap()),
        dst: addr_bytes("ff02::16".parse().unwrap()),
        ip_version: 6,
        protocol: proto::ICMPV6,
        icmp_type: 143,
        in_port: GW,
        out_port: rules_wasm::abi::PORT_FLOOD,
        ..Default::default()
    };
    assert_eq!(
        verdict(&set, &mld("fe80::42:acff:fe11:1")),
        (Action::Accept, Some(Chain::Docker))
    );
    // A routed source is forwarded traffic: the FORWARD policy.
    assert_eq!(verdict(&set, &mld("2001:db8::1")).0, Action::Drop);
    // From a container, link-local is container-to-container (icc=false here).
    let mut from_web = mld("fe80::42:acff:fe11:2");
    from_web.in_port = WEB;
    assert_eq!(verdict(&set, &from_web), (Action::Drop, Some(Chain::Icc)));
}

#[test]
fn established_flows_and_non_ip_frames_pass() {
    let set = docker_ruleset(&net(false), vec![], 1);
    let mut p = pkt(OUTSIDE, GW, ip(2), WEB, proto::TCP, 443, 40000);
    assert_eq!(verdict(&set, &p).0, Action::Drop);
    p.flow_state = FlowState::Established;
    assert_eq!(verdict(&set, &p).0, Action::Accept);
    let arp = PacketRecord {
        in_port: OTHER,
        out_port: rules_wasm::abi::PORT_FLOOD,
        ..Default::default()
    };
    assert_eq!(verdict(&set, &arp).0, Action::Accept);
}

#[test]
fn user_rules_come_first() {
    let n = net(true);
    let user = iptables::parse(
        "-I -s other -d db -p tcp --dport 22 -j DROP\n-A -s 192.0.2.0/24 -j REJECT",
        &n,
    )
    .unwrap();
    let set = docker_ruleset(&n, user, 2);
    assert_eq!(
        verdict(&set, &pkt(ip(4), OTHER, ip(3), DB, proto::TCP, 1, 22)),
        (Action::Drop, Some(Chain::User))
    );
    assert_eq!(
        verdict(&set, &pkt(ip(4), OTHER, ip(3), DB, proto::TCP, 1, 23)),
        (Action::Accept, Some(Chain::Icc))
    );
    assert_eq!(
        verdict(&set, &pkt(OUTSIDE, GW, ip(3), DB, proto::TCP, 1, 80)),
        (Action::Reject, Some(Chain::User))
    );
}

#[test]
fn differences_are_documented_in_the_module_docs_too() {
    let src = include_str!("../src/docker.rs");
    for d in DIFFERENCES {
        let words: Vec<&str> = d.split_whitespace().take(6).collect();
        let doc: String = src
            .lines()
            .filter(|l| l.starts_with("//!"))
            .map(|l| l.trim_start_matches("//!").trim())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            doc.contains(&words.join(" ")),
            "missing from module docs: {d}"
        );
    }
}
