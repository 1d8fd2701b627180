//! Docker 20.10's iptables rules for a bridge network, written as `iptables-save` prints them
//! (what `iptables-restore` loads), so the kernel paths run exactly the chains a Docker host
//! runs. The order and spelling follow what Docker 20.10.24 (Debian's docker.io) writes,
//! captured with `iptables-save` and checked against a live engine by
//! `tests/docker_bench_chains.rs`:
//!
//! - `nat`: `PREROUTING`/`OUTPUT` jump to `DOCKER` for local destinations; `POSTROUTING`
//!   masquerades the subnet leaving the bridge and each published port's hairpin; `DOCKER`
//!   returns for traffic from the bridge and DNATs each published host port.
//! - `filter`: `FORWARD` policy DROP; `DOCKER-USER`, `DOCKER-ISOLATION-STAGE-1`, the
//!   conntrack RELATED,ESTABLISHED accept, `-o docker0 -j DOCKER`, outbound accept, and the
//!   icc rule (`-i docker0 -o docker0 -j ACCEPT|DROP`); `DOCKER` holds, per container in start
//!   order, its published ports and its links (for each port the child exposes, the request
//!   rule and the reply rule); `DOCKER-USER` holds the user's rules, then `-j RETURN`.
//!
//! Within `DOCKER` Docker's order across one link's ports follows Go map iteration (random);
//! here it follows the order the ports are listed. All of its rules ACCEPT, so the order
//! does not change what they decide.
use std::fmt::Write as _;
use std::net::IpAddr;

use rules_wasm::docker::BridgeNetwork;

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "all",
    }
}

fn v4(ips: &[IpAddr]) -> Option<IpAddr> {
    ips.iter().copied().find(IpAddr::is_ipv4)
}

/// The subnet of `net` as Docker writes it (`172.17.0.0/16`), from its first IPv4 subnet.
fn subnet_text(net: &BridgeNetwork) -> Option<String> {
    net.subnets.iter().find_map(|c| {
        // IPv4 prefixes are stored mapped into 128 bits (96 + n).
        if c.len < 96 || (c.addr >> 32) != 0xffff {
            return None;
        }
        let addr = std::net::Ipv4Addr::from((c.addr & 0xffff_ffff) as u32);
        Some(format!("{addr}/{}", c.len - 96))
    })
}

/// The `nat` and `filter` tables Docker 20.10 writes for `net` (its IPv4 side), with
/// `user_rules` (lines of `iptables-save`, `-A DOCKER-USER …`) in `DOCKER-USER` before
/// Docker's `-j RETURN`. The text loads with `iptables-restore` (nft or legacy).
pub fn iptables_save(net: &BridgeNetwork, user_rules: &[String]) -> String {
    let br = if net.bridge.is_empty() {
        "docker0"
    } else {
        net.bridge.as_str()
    };
    let mut s = String::new();
    // nat
    s.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n");
    s.push_str("-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n");
    s.push_str("-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER\n");
    if let Some(subnet) = subnet_text(net) {
        let _ = writeln!(s, "-A POSTROUTING -s {subnet} ! -o {br} -j MASQUERADE");
    }
    for c in &net.containers {
        let Some(ip) = v4(&c.ips) else { continue };
        for p in &c.published {
            let pn = proto_name(p.proto);
            let _ = writeln!(
                s,
                "-A POSTROUTING -s {ip}/32 -d {ip}/32 -p {pn} -m {pn} --dport {} -j MASQUERADE",
                p.container_port
            );
        }
    }
    let _ = writeln!(s, "-A DOCKER -i {br} -j RETURN");
    for c in &net.containers {
        let Some(ip) = v4(&c.ips) else { continue };
        for p in &c.published {
            let pn = proto_name(p.proto);
            let _ = writeln!(
                s,
                "-A DOCKER ! -i {br} -p {pn} -m {pn} --dport {} -j DNAT --to-destination {ip}:{}",
                p.host_port, p.container_port
            );
        }
    }
    s.push_str("COMMIT\n");

    // filter
    s.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:DOCKER - [0:0]\n:DOCKER-ISOLATION-STAGE-1 - [0:0]\n:DOCKER-ISOLATION-STAGE-2 - [0:0]\n:DOCKER-USER - [0:0]\n");
    s.push_str("-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n");
    let _ = writeln!(
        s,
        "-A FORWARD -o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    let _ = writeln!(s, "-A FORWARD -o {br} -j DOCKER");
    let _ = writeln!(s, "-A FORWARD -i {br} ! -o {br} -j ACCEPT");
    let icc = if net.icc { "ACCEPT" } else { "DROP" };
    let _ = writeln!(s, "-A FORWARD -i {br} -o {br} -j {icc}");
    for c in &net.containers {
        let Some(ip) = v4(&c.ips) else { continue };
        for p in &c.published {
            let pn = proto_name(p.proto);
            let _ = writeln!(
                s,
                "-A DOCKER -d {ip}/32 ! -i {br} -o {br} -p {pn} -m {pn} --dport {} -j ACCEPT",
                p.container_port
            );
        }
        for link in &c.links {
            let Some(child) = net.containers.iter().find(|x| x.name == link.child) else {
                continue;
            };
            let Some(cip) = v4(&child.ips) else { continue };
            for e in &child.exposed {
                let pn = proto_name(e.proto);
                let _ = writeln!(
                    s,
                    "-A DOCKER -s {ip}/32 -d {cip}/32 -i {br} -o {br} -p {pn} -m {pn} --dport {} -j ACCEPT",
                    e.port
                );
                let _ = writeln!(
                    s,
                    "-A DOCKER -s {cip}/32 -d {ip}/32 -i {br} -o {br} -p {pn} -m {pn} --sport {} -j ACCEPT",
                    e.port
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "-A DOCKER-ISOLATION-STAGE-1 -i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2"
    );
    s.push_str("-A DOCKER-ISOLATION-STAGE-1 -j RETURN\n");
    let _ = writeln!(s, "-A DOCKER-ISOLATION-STAGE-2 -o {br} -j DROP");
    s.push_str("-A DOCKER-ISOLATION-STAGE-2 -j RETURN\n");
    for r in user_rules {
        s.push_str(r);
        s.push('\n');
    }
    s.push_str("-A DOCKER-USER -j RETURN\nCOMMIT\n");
    s
}

/// `iptables-save` text made comparable: comments and counters dropped, tables in name
/// order, and the rules of the `DOCKER` chains sorted (their order within a link follows
/// Go's map iteration in Docker; they all ACCEPT or DNAT distinct ports, so order does not
/// matter to what they decide). Every other chain keeps its order.
pub fn normalise(save: &str) -> String {
    let mut tables: Vec<(String, Vec<String>)> = Vec::new();
    for line in save.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            tables.push((t.to_string(), Vec::new()));
            continue;
        }
        let Some((_, lines)) = tables.last_mut() else {
            continue;
        };
        if let Some(decl) = line.strip_prefix(':') {
            // ":FORWARD DROP [12:345]" → ":FORWARD DROP"
            let mut w = decl.split_whitespace();
            let name = w.next().unwrap_or("");
            let policy = w.next().unwrap_or("-");
            lines.push(format!(":{name} {policy}"));
        } else {
            lines.push(line.to_string());
        }
    }
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (name, lines) in tables {
        let (mut decls, rules): (Vec<String>, Vec<String>) =
            lines.into_iter().partition(|l| l.starts_with(':'));
        decls.sort();
        let (mut docker, rest): (Vec<String>, Vec<String>) =
            rules.into_iter().partition(|l| l.starts_with("-A DOCKER "));
        docker.sort();
        let _ = writeln!(out, "*{name}");
        for l in decls.iter().chain(&rest).chain(&docker) {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::scenario;
    use rules_wasm::docker::{ContainerInfo, LinkSpec, PortProto, Published};
    use rules_wasm::model::Cidr;

    /// What Docker 20.10.24 (Debian's docker.io, iptables 1.8.9 nf_tables) wrote with
    /// `{"icc": false}` for `srv` (`--expose 9999/udp --expose 7777/udp --expose 5201/tcp`,
    /// image `EXPOSE 80`), `cli` (`--link srv:srv`) and `pub` (`-p 8080:80`), captured with
    /// `iptables-save` in the engine's namespace.
    const DOCKER_20_10: &str =
        include_str!("../../tests/data/docker-20.10-icc-false-link-publish.save");

    fn captured_network() -> BridgeNetwork {
        let ip = |h: u8| IpAddr::from([172, 17, 0, h]);
        let pp = |proto, port| PortProto { proto, port };
        BridgeNetwork {
            name: "bridge".into(),
            bridge: "docker0".into(),
            subnets: Cidr::new(IpAddr::from([172, 17, 0, 0]), 16)
                .into_iter()
                .collect(),
            icc: false,
            gateway_ips: vec![ip(1)],
            containers: vec![
                ContainerInfo {
                    name: "srv".into(),
                    ips: vec![ip(2)],
                    exposed: vec![pp(17, 9999), pp(17, 7777), pp(6, 5201), pp(6, 80)],
                    ..ContainerInfo::default()
                },
                ContainerInfo {
                    name: "cli".into(),
                    ips: vec![ip(3)],
                    exposed: vec![pp(6, 80)],
                    links: vec![LinkSpec {
                        child: "srv".into(),
                        alias: "srv".into(),
                    }],
                    ..ContainerInfo::default()
                },
                ContainerInfo {
                    name: "pub".into(),
                    ips: vec![ip(4)],
                    exposed: vec![pp(6, 80)],
                    published: vec![Published {
                        proto: 6,
                        container_port: 80,
                        host_port: 8080,
                    }],
                    ..ContainerInfo::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn generated_chains_match_what_docker_20_10_wrote() {
        let ours = iptables_save(&captured_network(), &[]);
        assert_eq!(normalise(&ours), normalise(DOCKER_20_10));
    }

    #[test]
    fn generated_chains_keep_docker_s_exact_order() {
        // Not only equal after normalising: the FORWARD chain and the tables' layout are
        // line for line what Docker wrote (comments aside).
        let ours = iptables_save(&captured_network(), &[]);
        let theirs: Vec<&str> = DOCKER_20_10
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect();
        let ours: Vec<&str> = ours.lines().collect();
        let forward = |v: &[&str]| -> Vec<String> {
            v.iter()
                .filter(|l| l.starts_with("-A FORWARD") || l.starts_with("-A DOCKER-"))
                .map(|l| l.to_string())
                .collect()
        };
        assert_eq!(forward(&ours), forward(&theirs));
    }

    #[test]
    fn user_rules_go_before_docker_s_return() {
        let rules = scenario::user_rules(3);
        let text = iptables_save(&scenario::network(), &rules);
        let user: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A DOCKER-USER"))
            .collect();
        assert_eq!(user.len(), 4);
        assert_eq!(user[3], "-A DOCKER-USER -j RETURN");
        assert_eq!(user[0], rules[0]);
    }

    #[test]
    fn icc_true_accepts_between_containers() {
        let mut net = scenario::network();
        net.icc = true;
        assert!(iptables_save(&net, &[]).contains("-A FORWARD -i docker0 -o docker0 -j ACCEPT\n"));
    }
}
