//! The corpus of real-world DOCKER-USER idioms (`tests/data/docker-user-idioms.rules`, each
//! with its source): every idiom loaded on a host like the lab's (web and db on docker0,
//! published ports, eth0 as the host's way out, two ipsets) and probed, with the verdict
//! iptables gives in DOCKER-USER — through the compiled module and the reference alike.
//! Where bridgewall means something else on purpose (`docker0` names the gateway port), the
//! expectation says so; `X (limit)` is a rate-limited
//! rule deciding X while within its rate.
mod common;

use std::net::IpAddr;

use common::Host;
use rules_wasm::abi::{Action, FlowState, PacketRecord, RULE_NONE, addr_bytes, proto};
use rules_wasm::algebra::complement_cidrs;
use rules_wasm::compiler::compile;
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, HostNetworks, Published};
use rules_wasm::iptables::{UserRules, WithHostRoutes};
use rules_wasm::model::{Cidr, RuleSet};
use rules_wasm::reference::evaluate;

const IPSETS: &str = "\
create allowed-countries hash:net family inet
add allowed-countries 192.168.1.0/24
add allowed-countries 203.0.113.0/24
create f2b-bad-auth hash:ip family inet
add f2b-bad-auth 198.51.100.66
";

/// (idiom number in file order, probes). A probe is `PROTO SRC[:SPORT] > DST[:DPORT]
/// in=PORT out=PORT STATE [syn|ack] [conns=N]` (N: the source's other open connections); the expectation is what DOCKER-USER decides:
/// `ACCEPT`, `DROP`, `REJECT`, `-` (no decision: on to Docker's rules), followed by ` LOG`
/// when a LOG rule logs the packet, or `refused: TEXT` for an idiom bridgewall refuses with
/// an error containing TEXT.
const EXPECT: &[(usize, &[(&str, &str)])] = &[
    (
        1,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 EST",
                "ACCEPT",
            ),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
        ],
    ),
    (
        2,
        &[
            (
                "tcp 172.17.0.2:40000 > 198.51.100.2:80 in=2 out=1 NEW",
                "ACCEPT",
            ),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
        ],
    ),
    (
        3,
        &[
            (
                "udp 172.17.0.3:53 > 172.17.0.2:40000 in=3 out=2 EST",
                "ACCEPT",
            ),
            ("udp 172.17.0.3:40000 > 172.17.0.2:53 in=3 out=2 NEW", "-"),
        ],
    ),
    (
        4,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "DROP",
            ),
            ("tcp 192.168.1.1:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
            ("tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3 NEW", "-"),
        ],
    ),
    (
        5,
        &[
            ("tcp 192.168.1.77:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "DROP",
            ),
        ],
    ),
    (
        6,
        &[
            ("tcp 192.168.1.2:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
            (
                "tcp 192.168.1.4:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "DROP",
            ),
            ("tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3 NEW", "-"),
        ],
    ),
    (
        7,
        &[("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 EST", "-")],
    ),
    (
        8,
        &[("tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW", "-")],
    ),
    (
        9,
        &[("tcp 198.51.100.7:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-")],
    ),
    (
        10,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "DROP",
            ),
            ("tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3 NEW", "-"),
        ],
    ),
    (
        11,
        &[("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-")],
    ),
    (
        12,
        &[
            (
                "tcp 192.168.1.5:40000 > 172.17.0.2:1234 in=1 out=2 NEW",
                "ACCEPT",
            ),
            ("tcp 192.168.1.5:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
        ],
    ),
    (
        13,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 INVALID",
                "DROP",
            ),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
        ],
    ),
    (
        14,
        &[("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 EST", "-")],
    ),
    // iptables: container to container is `-i docker0 -o docker0`; in bridgewall docker0
    // names the gateway port, so this idiom matches hairpinned host traffic only.
    (
        15,
        &[
            ("tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3 NEW", "-"),
            (
                "tcp 172.17.0.1:40000 > 172.17.0.3:5432 in=1 out=1 NEW",
                "ACCEPT",
            ),
        ],
    ),
    (
        16,
        &[("tcp 10.1.2.3:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-")],
    ),
    (
        17,
        &[("udp 8.8.8.8:53 > 172.17.0.2:40000 in=1 out=2 NEW", "-")],
    ),
    (
        18,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW syn",
                "DROP",
            ),
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW ack",
                "-",
            ),
        ],
    ),
    (
        19,
        &[
            (
                "udp 172.17.0.2:40000 > 192.168.1.5:53 in=2 out=1 NEW",
                "DROP",
            ),
            (
                "udp 172.17.0.2:40000 > 192.168.1.5:40000 in=2 out=1 NEW",
                "-",
            ),
        ],
    ),
    (
        20,
        &[(
            "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW",
            "- LOG",
        )],
    ),
    (
        21,
        &[
            (
                "tcp 203.0.113.50:40000 > 172.17.0.3:5432 in=1 out=3 NEW",
                "ACCEPT",
            ),
            (
                "tcp 203.0.113.51:40000 > 172.17.0.3:5432 in=1 out=3 NEW",
                "-",
            ),
        ],
    ),
    (
        22,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.3:5432 in=1 out=3 NEW",
                "DROP",
            ),
            ("tcp 172.17.0.2:40000 > 172.17.0.3:5432 in=2 out=3 NEW", "-"),
        ],
    ),
    (
        23,
        &[
            (
                "tcp 198.51.100.5:40000 > 172.17.0.3:5432 in=1 out=3 NEW",
                "ACCEPT",
            ),
            (
                "tcp 198.51.100.6:40000 > 172.17.0.3:5432 in=1 out=3 NEW",
                "-",
            ),
        ],
    ),
    (
        24,
        &[(
            "tcp 203.0.113.9:40000 > 172.17.0.2:8080 in=1 out=2 NEW",
            "ACCEPT (limit)",
        )],
    ),
    (
        25,
        &[
            ("tcp 8.8.8.8:40000 > 172.17.0.2:80 in=1 out=2 NEW", "DROP"),
            ("tcp 192.168.1.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
            ("tcp 172.17.0.3:40000 > 172.17.0.2:80 in=3 out=2 NEW", "-"),
        ],
    ),
    (
        26,
        &[(
            "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW",
            "- LOG",
        )],
    ),
    (
        27,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW",
                "- LOG",
            ),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 EST", "-"),
        ],
    ),
    (
        28,
        &[(
            "tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 EST",
            "ACCEPT",
        )],
    ),
    (
        29,
        &[
            (
                "tcp 198.51.100.66:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "DROP",
            ),
            (
                "tcp 198.51.100.67:40000 > 172.17.0.2:80 in=1 out=2 NEW",
                "-",
            ),
        ],
    ),
    (
        30,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:22 in=1 out=2 NEW",
                "DROP",
            ),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-"),
            ("tcp 203.0.113.9:40000 > 172.17.0.2:22 in=1 out=2 EST", "-"),
        ],
    ),
    (
        31,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:50001 in=1 out=2 NEW",
                "DROP",
            ),
            (
                "udp 203.0.113.9:40000 > 172.17.0.2:50001 in=1 out=2 NEW",
                "-",
            ),
        ],
    ),
    (
        32,
        &[(
            "tcp 203.0.113.130:40000 > 172.17.0.2:50001 in=1 out=2 NEW",
            "-",
        )],
    ),
    (
        33,
        &[("tcp 192.168.5.5:40000 > 172.17.0.2:80 in=1 out=2 NEW", "-")],
    ),
    (
        34,
        &[(
            "udp 203.0.113.9:40000 > 172.17.0.2:53 in=1 out=2 NEW",
            "REJECT",
        )],
    ),
    // iptables: from a container to 192.168/16 outside; bridgewall's docker0 is the gateway
    // port, so nothing from a container matches `-i docker0`.
    (
        35,
        &[("tcp 172.17.0.2:40000 > 192.168.1.5:80 in=2 out=1 NEW", "-")],
    ),
    (
        36,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW syn",
                "-",
            ),
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW syn conns=20",
                "REJECT",
            ),
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW syn conns=19",
                "-",
            ),
        ],
    ),
    // iptables refuses this one too: its prefix is 30 characters, one past iptables' limit.
    (
        37,
        &[(
            "tcp 203.0.113.9:40000 > 172.17.0.2:8878 in=1 out=2 NEW syn",
            "refused: longer than 29",
        )],
    ),
    (
        38,
        &[
            (
                "tcp 203.0.113.9:40000 > 172.17.0.2:8989 in=1 out=2 NEW",
                "DROP",
            ),
            ("tcp 172.17.0.3:40000 > 172.17.0.2:8989 in=3 out=2 NEW", "-"),
        ],
    ),
    (
        39,
        &[
            ("icmp 192.168.1.10 > 172.17.0.2 in=1 out=2 NEW", "ACCEPT"),
            ("icmp 192.168.1.11 > 172.17.0.2 in=1 out=2 NEW", "-"),
        ],
    ),
    // iptables: outside to web:443; in bridgewall `-o docker0` is toward the gateway.
    (
        40,
        &[("tcp 203.0.113.9:40000 > 172.17.0.2:443 in=1 out=2 NEW", "-")],
    ),
];

fn net() -> HostNetworks {
    let ip = |d: u8| IpAddr::from([172, 17, 0, d]);
    let c = |name: &str, port: u16, d: u8, published: Vec<Published>| ContainerInfo {
        name: name.into(),
        port,
        ips: vec![ip(d)],
        mac: [2, 0x42, 0xac, 0x11, 0, d],
        published,
        ..Default::default()
    };
    let tcp = |host, cont| Published {
        proto: proto::TCP,
        container_port: cont,
        host_port: host,
    };
    HostNetworks::from(BridgeNetwork {
        icc: true,
        gateway_port: 1,
        gateway_ips: vec![ip(1), "198.51.100.2".parse().unwrap()],
        containers: vec![
            c("web", 2, 2, vec![tcp(8080, 80), tcp(443, 443)]),
            c("db", 3, 3, vec![tcp(5432, 5432)]),
        ],
        ..Default::default()
    })
}

fn probe(text: &str) -> PacketRecord {
    let t: Vec<&str> = text.split_whitespace().collect();
    let endpoint = |s: &str| -> ([u8; 16], u16) {
        let (a, p) = s.split_once(':').unwrap_or((s, "0"));
        (addr_bytes(a.parse().unwrap()), p.parse().unwrap())
    };
    let (src, sport) = endpoint(t[1]);
    let (dst, dport) = endpoint(t[3]);
    let port = |s: &str| s.split_once('=').unwrap().1.parse::<u16>().unwrap();
    let protocol = match t[0] {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        _ => proto::ICMP,
    };
    PacketRecord {
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        ip_version: 4,
        protocol,
        tcp_flags: match t.get(7).copied() {
            Some("syn") => 0x02,
            Some("ack") => 0x10,
            _ if protocol == proto::TCP => 0x02,
            _ => 0,
        },
        flow_state: match t[6] {
            "EST" => FlowState::Established,
            "INVALID" => FlowState::Invalid,
            _ => FlowState::New,
        },
        in_port: port(t[4]),
        out_port: port(t[5]),
        icmp_type: if protocol == proto::ICMP { 8 } else { 0 },
        icmp_code: 0,
        src_conns: t
            .iter()
            .find_map(|w| w.strip_prefix("conns="))
            .map_or(0, |n| n.parse().unwrap()),
    }
}

#[test]
fn every_idiom_loads_and_decides_as_iptables() {
    let text = include_str!("data/docker-user-idioms.rules");
    let idioms: Vec<&str> = text.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(idioms.len(), EXPECT.len(), "one expectation per idiom");
    let net = net();
    let v4 = Cidr::new("0.0.0.0".parse().unwrap(), 0).unwrap();
    let eth0 = complement_cidrs(&[Cidr::new(IpAddr::from([172, 17, 0, 0]), 16).unwrap()], v4);
    let routes = vec![("eth0".to_string(), eth0)];
    let names = WithHostRoutes {
        inner: &net,
        routes: &routes,
        host_addrs: &[],
    };
    let engine = wasmtime::Engine::default();
    let mut probes = 0;
    for (n, cases) in EXPECT {
        let idiom = idioms[n - 1];
        let mut u = UserRules::default();
        u.read_ipsets(IPSETS).unwrap();
        let loaded = u.apply(idiom, &names);
        if let Some(why) = cases[0].1.strip_prefix("refused: ") {
            let e = loaded.expect_err(idiom);
            assert!(e.to_string().contains(why), "idiom {n} `{idiom}`: {e}");
            continue;
        }
        loaded.unwrap_or_else(|e| panic!("idiom {n} `{idiom}`: {e}"));
        let flat = u.rules().unwrap();
        let set = RuleSet::new(flat.rules.clone(), 1, Action::Continue);
        let logs: Vec<RuleSet> = flat
            .logs
            .iter()
            .map(|l| RuleSet::new(l.rules.clone(), 1, Action::Continue))
            .collect();
        let mut host = Host::load(&engine, &compile(&set).unwrap().wasm).unwrap();
        for (p, want) in *cases {
            let r = probe(p);
            let v = evaluate(&set, &r);
            let decided = match v.action {
                _ if v.rule == RULE_NONE => "-",
                Action::Accept => "ACCEPT",
                Action::Drop => "DROP",
                Action::Reject => "REJECT",
                Action::Continue => "-",
            };
            let logged = logs
                .iter()
                .any(|l| evaluate(l, &r).action == Action::Accept);
            let limited = flat.limits.iter().find(|l| {
                let s = RuleSet::new(l.rules.clone(), 1, Action::Continue);
                evaluate(&s, &r).action == Action::Accept
            });
            if let Some(l) = limited {
                assert_eq!(
                    format!("{:?} (limit)", l.target).to_uppercase(),
                    want.to_uppercase(),
                    "idiom {n} `{idiom}` on `{p}`"
                );
                assert!(u.decide(&r).is_some(), "walked, idiom {n}");
                probes += 1;
                continue;
            }
            let got = if logged {
                format!("{decided} LOG")
            } else {
                decided.to_string()
            };
            let got = got.as_str();
            assert_eq!(got, *want, "idiom {n} `{idiom}` on `{p}`");
            assert_eq!(host.run(&[r])[0], v, "compiled, idiom {n} on `{p}`");
            let mut walked_logs = Vec::new();
            let walked = u.decide_logging(&r, &mut walked_logs);
            assert_eq!(
                walked.is_some(),
                decided != "-",
                "walked, idiom {n} on `{p}`"
            );
            assert_eq!(
                !walked_logs.is_empty(),
                logged,
                "walked LOG, idiom {n} on `{p}`"
            );
            probes += 1;
        }
    }
    assert!(probes >= 50);
}
