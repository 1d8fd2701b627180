//! The iptables-syntax parser: accepted forms, names, negation, ranges, every error kind with
//! its line, token position and token, and atomicity of `apply`.
use std::net::IpAddr;

use rules_wasm::abi::RejectWith;
use rules_wasm::abi::{FlowState, proto};
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, HostNetworks};
use rules_wasm::iptables::{
    NoNames, ParseError, ParseErrorKind as K, UserRules, parse, parse_full,
};
use rules_wasm::model::{Chain, Cidr, Neg, PortRange, StateSet, Target};

fn net() -> HostNetworks {
    let c = |name: &str, port: u16, ips: &[&str]| ContainerInfo {
        name: name.into(),
        port,
        ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
        ..Default::default()
    };
    HostNetworks::from(BridgeNetwork {
        icc: true,
        gateway_port: 1,
        gateway_ips: vec!["172.17.0.1".parse().unwrap()],
        containers: vec![
            c("web", 2, &["172.17.0.2", "fd00::2"]),
            c("db", 3, &["172.17.0.3"]),
        ],
        ..Default::default()
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn err(text: &str) -> ParseError {
    parse(text, &net()).expect_err(text)
}

#[test]
fn the_issue_example_parses() {
    let rules = parse(
        "iptables -I DOCKER -s 172.16.80.47 -d 172.17.0.5 -p tcp --dport 80 -j DROP",
        &NoNames,
    )
    .unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.chain, Chain::User);
    assert_eq!(r.target, Target::Drop);
    assert_eq!(r.m.src, Some(Neg::is(Cidr::host(ip("172.16.80.47")))));
    assert_eq!(r.m.dst, Some(Neg::is(Cidr::host(ip("172.17.0.5")))));
    assert_eq!(r.m.proto, Some(Neg::is(proto::TCP)));
    assert_eq!(r.m.dport, Some(Neg::is(PortRange::single(80))));
    assert_eq!(
        r.origin,
        "iptables -I DOCKER -s 172.16.80.47 -d 172.17.0.5 -p tcp --dport 80 -j DROP"
    );
}

#[test]
fn cidrs_ranges_negation_interfaces_and_states() {
    let text = "# comment\n\n-A DOCKER-USER ! -s 10.0.0.0/8 -d 2001:db8::/32 -p udp --sport 1000:2000 --dport ! 53 -i web ! -o docker0 -m conntrack --ctstate NEW,RELATED -j REJECT  # trailing\n-A -p all -i 7 -j ACCEPT\n-A -p 132 -s 172.17.0.9/16 -j DROP\n-A -p tcp --dport :1023 -m tcp -j DROP\n-A -p tcp --sport 1024: -m state ! --state NEW -j DROP";
    let rules = parse(text, &net()).unwrap();
    assert_eq!(rules.len(), 5);
    let m = &rules[0].m;
    assert_eq!(m.src, Some(Neg::not(Cidr::new(ip("10.0.0.0"), 8).unwrap())));
    assert_eq!(
        m.dst,
        Some(Neg::is(Cidr::new(ip("2001:db8::"), 32).unwrap()))
    );
    assert_eq!(m.sport, Some(Neg::is(PortRange { lo: 1000, hi: 2000 })));
    assert_eq!(m.dport, Some(Neg::not(PortRange::single(53))));
    assert_eq!(m.in_port, Some(Neg::is(2)));
    assert_eq!(m.out_port, Some(Neg::not(1)));
    assert_eq!(
        m.state,
        Some(StateSet::of(FlowState::New).with(FlowState::Related))
    );
    assert_eq!(rules[0].target, Target::Reject(RejectWith::PortUnreachable));
    assert_eq!(rules[1].m.proto, None);
    assert_eq!(rules[1].m.in_port, Some(Neg::is(7)));
    assert_eq!(rules[2].m.proto, Some(Neg::is(132)));
    assert_eq!(
        rules[2].m.src,
        Some(Neg::is(Cidr::new(ip("172.17.0.0"), 16).unwrap())),
        "host bits are cleared"
    );
    assert_eq!(
        rules[3].m.dport,
        Some(Neg::is(PortRange { lo: 0, hi: 1023 }))
    );
    assert_eq!(
        rules[4].m.sport,
        Some(Neg::is(PortRange {
            lo: 1024,
            hi: 65535
        }))
    );
    assert_eq!(
        rules[4].m.state,
        Some(
            StateSet::of(FlowState::Established)
                .with(FlowState::Related)
                .with(FlowState::Invalid)
        )
    );
}

#[test]
fn names_expand_and_pair_by_family() {
    // web has a v4 and a v6 address; db only v4: the v6 source never pairs with db's v4.
    let rules = parse("-I -s web -d db -p tcp --dport 5432 -j DROP", &net()).unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].m.src, Some(Neg::is(Cidr::host(ip("172.17.0.2")))));
    let rules = parse("-I -s web -j DROP", &net()).unwrap();
    let srcs: Vec<_> = rules.iter().map(|r| r.m.src.unwrap().value).collect();
    assert_eq!(
        srcs,
        [Cidr::host(ip("172.17.0.2")), Cidr::host(ip("fd00::2"))]
    );
    let rules = parse("-I -s 10.0.0.1,db -j DROP", &net()).unwrap();
    assert_eq!(rules.len(), 2);
    // Legacy negation after the option.
    let rules = parse("-A -s ! db -j DROP", &net()).unwrap();
    assert_eq!(rules[0].m.src, Some(Neg::not(Cidr::host(ip("172.17.0.3")))));
}

#[test]
fn insert_positions_and_append() {
    let mut u = UserRules::default();
    u.apply("-A -s 10.0.0.1 -j DROP\n-A -s 10.0.0.2 -j DROP\n-I 2 -s 10.0.0.3 -j ACCEPT\n-I -s 10.0.0.4 -j ACCEPT\n-s 10.0.0.5 -j REJECT", &NoNames)
        .unwrap();
    let rules = u.rules().unwrap().rules;
    let order: Vec<String> = rules
        .iter()
        .map(|r| r.m.src.unwrap().value.to_string())
        .collect();
    assert_eq!(
        order,
        ["10.0.0.4", "10.0.0.1", "10.0.0.3", "10.0.0.2", "10.0.0.5"]
    );
}

#[test]
fn each_error_kind_names_line_position_and_token() {
    let cases: &[(&str, usize, usize, &str, K)] = &[
        (
            "-A -s 1.2.3.4 --frobnicate -j DROP",
            1,
            4,
            "--frobnicate",
            K::UnknownOption,
        ),
        ("-A -s", 1, 2, "-s", K::MissingValue),
        ("-A -s -j DROP", 1, 2, "-s", K::MissingValue),
        ("-A -s 1.2.3.400 -j DROP", 1, 3, "1.2.3.400", K::BadAddress),
        (
            "-A -s 10.0.0.0/33 -j DROP",
            1,
            3,
            "10.0.0.0/33",
            K::BadAddress,
        ),
        ("-A -p tcp --dport 70000 -j DROP", 1, 5, "70000", K::BadPort),
        ("-A -p tcp --dport 90:80 -j DROP", 1, 5, "90:80", K::BadPort),
        (
            "-A --dport 80 -j DROP",
            1,
            2,
            "--dport",
            K::PortWithoutTcpUdp,
        ),
        (
            "-A ! -p tcp --dport 80 -j DROP",
            1,
            5,
            "--dport",
            K::PortWithoutTcpUdp,
        ),
        ("-A -s nosuch -j DROP", 1, 3, "nosuch", K::UnknownName),
        ("-A -i nosuch -j DROP", 1, 3, "nosuch", K::UnknownName),
        ("-A -s 1.2.3.4 -s 1.2.3.5 -j DROP", 1, 4, "-s", K::Duplicate),
        ("-A -j DROP -j ACCEPT", 1, 4, "-j", K::Duplicate),
        ("-A -p foo -j DROP", 1, 3, "foo", K::BadProtocol),
        ("-A -j NOSUCH", 1, 3, "NOSUCH", K::BadTarget),
        ("-I INPUT -j DROP", 1, 2, "INPUT", K::UnknownChain),
        ("-A DOCKER 3 -j DROP", 1, 3, "3", K::PositionWithAppend),
        ("-A ! -j DROP", 1, 3, "-j", K::BadNegation),
        ("-A ! ! -s 1.2.3.4 -j DROP", 1, 3, "!", K::BadNegation),
        (
            "-A ! -s 10.0.0.1,web -j DROP",
            1,
            4,
            "10.0.0.1,web",
            K::NegatedMany,
        ),
        (
            "-A -s 1.2.3.4 -d ::1 -j DROP",
            1,
            5,
            "::1",
            K::FamilyMismatch,
        ),
        (
            "-t nat -A -j DROP",
            1,
            2,
            "nat",
            K::Unsupported("tables other than filter"),
        ),
        (
            "-A -m hashlimit -j DROP",
            1,
            3,
            "hashlimit",
            K::Unsupported("this match module"),
        ),
        (
            "-A -m multiport -j DROP",
            1,
            3,
            "multiport",
            K::MissingValue,
        ),
        (
            "-A -m conntrack --ctstate BOGUS -j DROP",
            1,
            5,
            "BOGUS",
            K::BadState,
        ),
        (
            "-A -p tcp --dport 80 -j reject",
            1,
            7,
            "reject",
            K::BadTarget,
        ),
        (
            "-A -p udp -j REJECT --reject-with tcp-reset",
            1,
            7,
            "tcp-reset",
            K::BadRejectWith,
        ),
        (
            "-A -p icmp --icmp-type bogus -j DROP",
            1,
            5,
            "bogus",
            K::BadIcmpType,
        ),
        (
            "-A -m mac --mac-source 02:00:00:00:00:99 -j DROP",
            1,
            5,
            "02:00:00:00:00:99",
            K::ForeignMac,
        ),
        (
            "-A -m set --match-set nosuch src -j DROP",
            1,
            5,
            "nosuch",
            K::UnknownSet,
        ),
        (
            "# first line is fine\n-A -j DROP\n-I 9 -j DROP",
            3,
            2,
            "9",
            K::BadPosition { max: 2 },
        ),
    ];
    for (text, line, pos, token, kind) in cases {
        let e = err(text);
        assert_eq!(
            (e.line, e.pos, e.token.as_str(), &e.kind),
            (*line, *pos, *token, kind),
            "{text}"
        );
        assert!(
            e.to_string().contains(token),
            "message names the token: {e}"
        );
    }
}

#[test]
fn apply_is_atomic() {
    let mut u = UserRules::default();
    u.apply("-A -s 10.0.0.1 -j DROP", &NoNames).unwrap();
    let before = u.rules().unwrap().rules;
    let e = u
        .apply(
            "-I -s 10.0.0.2 -j DROP\n-A -s 10.0.0.3 -j DROP\n-A -s bogus!name -j DROP",
            &NoNames,
        )
        .unwrap_err();
    assert_eq!(e.line, 3);
    assert_eq!(
        u.rules().unwrap().rules,
        before,
        "a rejected line leaves the rules untouched"
    );
    u.apply("-I -s 10.0.0.2 -j DROP", &NoNames).unwrap();
    assert_eq!(u.rules().unwrap().rules.len(), 2);
}

#[test]
fn a_rule_without_target_only_warns() {
    let p = parse_full("-A -s 1.2.3.4", None, &NoNames).unwrap();
    assert!(p.rules.is_empty());
    assert_eq!(p.warnings.len(), 1);
    assert_eq!(p.warnings[0].line, 1);
}
