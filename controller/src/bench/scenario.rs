//! The scenario every path is measured on: three containers on Docker's default bridge with
//! icc=false, a `--link`, a published port and N user rules in `DOCKER-USER`; the same facts
//! feed Docker's chains ([`crate::bench::docker_chains`]) and bridgewall's policy.
use std::net::{IpAddr, Ipv4Addr};

use rules_wasm::docker::{BridgeNetwork, ContainerInfo, LinkSpec, PortProto, Published};
use rules_wasm::model::Cidr;

/// The bridge's name in the host namespace (Docker's chains name it).
pub const BRIDGE: &str = "docker0";
/// The bridge's address (Docker's default).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// The bridge's prefix length.
pub const PREFIX: u8 = 16;
/// The UDP port the rate test floods (and the one after it, for more than 64k flows).
pub const FLOOD_PORT: u16 = 9999;
/// The UDP echo port of the latency and UDP new-flow tests.
pub const ECHO_PORT: u16 = 7777;
/// The iperf3 port.
pub const IPERF_PORT: u16 = 5201;
/// The TCP port of the connect/close test.
pub const CONNECT_PORT: u16 = 8080;
/// Source ports of generated flows start here.
pub const FIRST_SPORT: u16 = 1024;
/// Source ports per destination port (1024..65535).
pub const SPORTS: usize = 65536 - FIRST_SPORT as usize;

/// The client container: the traffic's source, started with `--link server:srv`.
pub const CLIENT: usize = 0;
/// The server container: the traffic's destination, exposing the test ports.
pub const SERVER: usize = 1;
/// A third container with `-p 8080:80`, so the chains hold a published port.
pub const WEB: usize = 2;

/// One container of the scenario.
#[derive(Clone, Debug)]
pub struct Container {
    /// Its name (and the suffix of its namespace's).
    pub name: &'static str,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its MAC (Docker's 02:42 + address scheme).
    pub mac: [u8; 6],
    /// bridgewall's port id for it.
    pub port: u16,
}

/// The containers, in start order (Docker writes their rules in this order).
pub fn containers() -> Vec<Container> {
    ["client", "server", "web"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let host = 2 + i as u8;
            Container {
                name,
                ip: Ipv4Addr::new(172, 17, 0, host),
                mac: [0x02, 0x42, 0xac, 0x11, 0x00, host],
                port: 1 + i as u16,
            }
        })
        .collect()
}

/// Ports the server exposes (`--expose`): what the client's link opens, in the order Docker
/// was given them.
pub fn server_exposed() -> Vec<PortProto> {
    vec![
        PortProto {
            proto: 17,
            port: FLOOD_PORT,
        },
        PortProto {
            proto: 17,
            port: FLOOD_PORT + 1,
        },
        PortProto {
            proto: 17,
            port: ECHO_PORT,
        },
        PortProto {
            proto: 6,
            port: IPERF_PORT,
        },
        PortProto {
            proto: 6,
            port: CONNECT_PORT,
        },
    ]
}

/// The network as Docker's Engine API would describe it (and as bridgewall's policy is
/// compiled from): icc=false, client linked to server, web publishing 8080→80/tcp. The
/// gateway port (0) is not attached in the benchmark: traffic is container to container.
pub fn network() -> BridgeNetwork {
    let cs = containers();
    let info = |c: &Container| ContainerInfo {
        name: c.name.into(),
        port: c.port,
        ips: vec![IpAddr::V4(c.ip)],
        mac: c.mac,
        ..ContainerInfo::default()
    };
    let mut client = info(&cs[CLIENT]);
    client.links = vec![LinkSpec {
        child: cs[SERVER].name.into(),
        alias: "srv".into(),
    }];
    let mut server = info(&cs[SERVER]);
    server.exposed = server_exposed();
    let mut web = info(&cs[WEB]);
    web.exposed = vec![PortProto { proto: 6, port: 80 }];
    web.published = vec![Published {
        proto: 6,
        container_port: 80,
        host_port: 8080,
    }];
    BridgeNetwork {
        name: "bridge".into(),
        bridge: BRIDGE.into(),
        subnets: Cidr::new(IpAddr::V4(GATEWAY), PREFIX).into_iter().collect(),
        icc: false,
        gateway_port: 0,
        gateway_ips: vec![IpAddr::V4(GATEWAY)],
        containers: vec![client, server, web],
        ..Default::default()
    }
}

/// `n` user rules as `iptables-save` prints them for `DOCKER-USER`: exact source (never a
/// container's address, so no packet of the benchmark matches), destination the server,
/// tcp or udp with a destination port; ¼ udp, ⅕ ACCEPT. Every packet of a new (or, for
/// UDP without replies, every) flow walks all of them in iptables; bridgewall hashes them.
pub fn user_rules(n: usize) -> Vec<String> {
    let server = containers()[SERVER].ip;
    (0..n)
        .map(|i| {
            let src = Ipv4Addr::from(0x0a00_0000u32 + 1 + i as u32);
            let proto = if i % 4 == 3 { "udp" } else { "tcp" };
            let target = if i % 5 == 4 { "ACCEPT" } else { "DROP" };
            let port = 1 + (i % 60000) as u16;
            format!(
                "-A DOCKER-USER -s {src}/32 -d {server}/32 -p {proto} -m {proto} --dport {port} -j {target}"
            )
        })
        .collect()
}

/// One more user rule for the churn test (`-I` form, the `i`th insertion): as
/// [`user_rules`], from a different source range.
pub fn churn_rule(i: usize) -> String {
    let server = containers()[SERVER].ip;
    let src = Ipv4Addr::from(0x0b00_0000u32 + 1 + i as u32);
    format!("-s {src}/32 -d {server}/32 -p tcp -m tcp --dport 443 -j DROP")
}
