//! Option values in iptables' spellings: protocols, ports and port lists, TCP flags, ICMP
//! types, states, ranges, MACs, set flags, reject kinds, rates.
use std::net::IpAddr;

use super::line::Dir;
use crate::abi::{FlowState, RejectWith, proto};
use crate::model::{IcmpType, PortRange, StateSet};

/// Match modules that refuse to load without one of their options, as iptables' do.
pub(crate) const NEED_AN_OPTION: &[&str] = &[
    "multiport",
    "iprange",
    "conntrack",
    "state",
    "comment",
    "mac",
    "set",
    "connlimit",
];

/// The match modules bridgewall knows (`-m NAME`).
pub(crate) const MATCH_MODULES: &[&str] = &[
    "tcp",
    "udp",
    "icmp",
    "icmp6",
    "multiport",
    "iprange",
    "conntrack",
    "state",
    "comment",
    "mac",
    "set",
    "limit",
    "connlimit",
];

/// `Some(None)` for "all protocols", `Some(Some(n))` for one, `None` when unknown.
pub(crate) fn protocol(v: &str) -> Option<Option<u8>> {
    match v.to_ascii_lowercase().as_str() {
        "all" | "0" => Some(None),
        "tcp" => Some(Some(proto::TCP)),
        "udp" => Some(Some(proto::UDP)),
        "icmp" => Some(Some(proto::ICMP)),
        "icmpv6" | "ipv6-icmp" => Some(Some(proto::ICMPV6)),
        "esp" => Some(Some(50)),
        "ah" => Some(Some(51)),
        "sctp" => Some(Some(132)),
        "gre" => Some(Some(47)),
        "udplite" => Some(Some(136)),
        "dccp" => Some(Some(33)),
        "igmp" => Some(Some(2)),
        n => n.parse::<u8>().ok().map(Some),
    }
}

/// The match module `-p PROTO` loads implicitly, as iptables does (`-p tcp --dport 22`).
pub(crate) fn proto_module(p: u8) -> Option<&'static str> {
    match p {
        proto::TCP => Some("tcp"),
        proto::UDP => Some("udp"),
        proto::ICMP => Some("icmp"),
        proto::ICMPV6 => Some("icmp6"),
        _ => None,
    }
}

/// iptables' chain-name rules: 1–28 characters, not an option, no whitespace.
pub(crate) fn chain_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 28
        && !name.starts_with('-')
        && !name.starts_with('!')
        && name.chars().all(|c| c.is_ascii_graphic())
}

/// A port number or a well-known service name (iptables reads /etc/services; these are the
/// ones that appear in firewall rules).
fn port(v: &str) -> Option<u16> {
    if let Ok(n) = v.parse::<u16>() {
        return Some(n);
    }
    Some(match v {
        "ftp-data" => 20,
        "ftp" => 21,
        "ssh" => 22,
        "telnet" => 23,
        "smtp" => 25,
        "domain" => 53,
        "http" | "www" => 80,
        "pop3" => 110,
        "ntp" => 123,
        "imap" | "imap2" => 143,
        "snmp" => 161,
        "ldap" => 389,
        "https" => 443,
        "submission" => 587,
        "imaps" => 993,
        "pop3s" => 995,
        "mysql" => 3306,
        "postgresql" => 5432,
        _ => return None,
    })
}

/// `N`, `N:M`, `:M` (0..=M) or `N:` (N..=65535), with N ≤ M (iptables refuses `4:3`).
pub(crate) fn port_range(v: &str) -> Option<PortRange> {
    let (lo, hi) = match v.split_once(':') {
        None => {
            let p = port(v)?;
            (p, p)
        }
        Some((a, b)) => (
            if a.is_empty() { 0 } else { port(a)? },
            if b.is_empty() { u16::MAX } else { port(b)? },
        ),
    };
    (lo <= hi).then_some(PortRange { lo, hi })
}

/// A multiport list: `80,443,8000:8080`.
pub(crate) fn port_list(v: &str) -> Option<Vec<PortRange>> {
    v.split(',').map(port_range).collect()
}

/// `A-B` with both ends of one family and A ≤ B.
pub(crate) fn ip_range(v: &str) -> Option<(IpAddr, IpAddr)> {
    let (a, b) = match v.split_once('-') {
        Some((a, b)) => (a.parse::<IpAddr>().ok()?, b.parse::<IpAddr>().ok()?),
        None => {
            let a = v.parse::<IpAddr>().ok()?;
            (a, a)
        }
    };
    (a.is_ipv4() == b.is_ipv4() && a <= b).then_some((a, b))
}

/// `NEW,ESTABLISHED,…` as a set (negation is applied by the caller).
pub(crate) fn states(v: &str) -> Option<StateSet> {
    let mut set = StateSet(0);
    for s in v.split(',') {
        set = set.with(match s {
            "NEW" => FlowState::New,
            "ESTABLISHED" => FlowState::Established,
            "RELATED" => FlowState::Related,
            "INVALID" => FlowState::Invalid,
            // Nothing is untracked here: every flow goes through the flow table.
            "UNTRACKED" => continue,
            _ => return None,
        });
    }
    Some(set)
}

/// `ORIGINAL` → false, `REPLY` → true.
pub(crate) fn direction(v: &str) -> Option<bool> {
    match v {
        "ORIGINAL" => Some(false),
        "REPLY" => Some(true),
        _ => None,
    }
}

/// `SYN,ACK` (or `ALL`, `NONE`) as flag bits.
pub(crate) fn tcp_flags(v: &str) -> Option<u8> {
    let mut bits = 0u8;
    for f in v.split(',') {
        bits |= match f.to_ascii_uppercase().as_str() {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            "ECE" => 0x40,
            "CWR" => 0x80,
            "ALL" => 0x3f,
            "NONE" => 0,
            _ => return None,
        };
    }
    Some(bits)
}

/// ICMP (v4) type names, as `iptables -p icmp -h` lists them: (name, type, code).
const ICMP_NAMES: &[(&str, u8, Option<u8>)] = &[
    ("echo-reply", 0, None),
    ("pong", 0, None),
    ("destination-unreachable", 3, None),
    ("network-unreachable", 3, Some(0)),
    ("host-unreachable", 3, Some(1)),
    ("protocol-unreachable", 3, Some(2)),
    ("port-unreachable", 3, Some(3)),
    ("fragmentation-needed", 3, Some(4)),
    ("source-route-failed", 3, Some(5)),
    ("network-unknown", 3, Some(6)),
    ("host-unknown", 3, Some(7)),
    ("network-prohibited", 3, Some(9)),
    ("host-prohibited", 3, Some(10)),
    ("TOS-network-unreachable", 3, Some(11)),
    ("TOS-host-unreachable", 3, Some(12)),
    ("communication-prohibited", 3, Some(13)),
    ("host-precedence-violation", 3, Some(14)),
    ("precedence-cutoff", 3, Some(15)),
    ("source-quench", 4, None),
    ("redirect", 5, None),
    ("network-redirect", 5, Some(0)),
    ("host-redirect", 5, Some(1)),
    ("TOS-network-redirect", 5, Some(2)),
    ("TOS-host-redirect", 5, Some(3)),
    ("echo-request", 8, None),
    ("ping", 8, None),
    ("router-advertisement", 9, None),
    ("router-solicitation", 10, None),
    ("time-exceeded", 11, None),
    ("ttl-exceeded", 11, None),
    ("ttl-zero-during-transit", 11, Some(0)),
    ("ttl-zero-during-reassembly", 11, Some(1)),
    ("parameter-problem", 12, None),
    ("ip-header-bad", 12, Some(0)),
    ("required-option-missing", 12, Some(1)),
    ("timestamp-request", 13, None),
    ("timestamp-reply", 14, None),
    ("address-mask-request", 17, None),
    ("address-mask-reply", 18, None),
];

/// ICMPv6 type names, as `ip6tables -p icmpv6 -h` lists them.
const ICMPV6_NAMES: &[(&str, u8, Option<u8>)] = &[
    ("destination-unreachable", 1, None),
    ("no-route", 1, Some(0)),
    ("communication-prohibited", 1, Some(1)),
    ("beyond-scope", 1, Some(2)),
    ("address-unreachable", 1, Some(3)),
    ("port-unreachable", 1, Some(4)),
    ("failed-policy", 1, Some(5)),
    ("reject-route", 1, Some(6)),
    ("packet-too-big", 2, None),
    ("time-exceeded", 3, None),
    ("ttl-exceeded", 3, None),
    ("ttl-zero-during-transit", 3, Some(0)),
    ("ttl-zero-during-reassembly", 3, Some(1)),
    ("parameter-problem", 4, None),
    ("bad-header", 4, Some(0)),
    ("unknown-header-type", 4, Some(1)),
    ("unknown-option", 4, Some(2)),
    ("echo-request", 128, None),
    ("ping", 128, None),
    ("mld-listener-query", 130, None),
    ("mld-listener-report", 131, None),
    ("mld-listener-done", 132, None),
    ("mld-listener-reduction", 132, None),
    ("echo-reply", 129, None),
    ("pong", 129, None),
    ("router-solicitation", 133, None),
    ("router-advertisement", 134, None),
    ("neighbour-solicitation", 135, None),
    ("neighbor-solicitation", 135, None),
    ("neighbour-advertisement", 136, None),
    ("neighbor-advertisement", 136, None),
    ("redirect", 137, None),
];

/// `Some(None)` for `any`, else the type from a name or `TYPE[/CODE]`.
fn icmp_from(v: &str, names: &[(&str, u8, Option<u8>)]) -> Option<Option<IcmpType>> {
    if v == "any" {
        return Some(None);
    }
    // Type 255 is iptables' "any": the kernel's match ignores the code then.
    if let Some(&(_, ty, code)) = names.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(v)) {
        return Some(Some(IcmpType { ty, code }));
    }
    let (t, c) = match v.split_once('/') {
        Some((t, "0:255")) => (t, None),
        Some((t, c)) => (t, Some(c.parse::<u8>().ok()?)),
        None => (v, None),
    };
    let ty: u8 = t.parse().ok()?;
    if ty == 255 {
        return Some(None);
    }
    Some(Some(IcmpType { ty, code: c }))
}

/// `--icmp-type` value.
pub(crate) fn icmp_type(v: &str) -> Option<Option<IcmpType>> {
    icmp_from(v, ICMP_NAMES)
}

/// `--icmpv6-type` value.
pub(crate) fn icmpv6_type(v: &str) -> Option<Option<IcmpType>> {
    icmp_from(v, ICMPV6_NAMES)
}

/// `aa:bb:cc:dd:ee:ff`.
pub(crate) fn mac(v: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// `src`, `dst`, `src,dst`, … (one flag per dimension of the set, at most 6).
pub(crate) fn set_flags(v: &str) -> Option<Vec<Dir>> {
    let dirs: Option<Vec<Dir>> = v
        .split(',')
        .map(|f| match f {
            "src" => Some(Dir::Src),
            "dst" => Some(Dir::Dst),
            _ => None,
        })
        .collect();
    dirs.filter(|d| (1..=6).contains(&d.len()))
}

/// `--reject-with` in iptables' and ip6tables' spellings.
pub(crate) fn reject_with(v: &str) -> Option<RejectWith> {
    Some(match v {
        "icmp-port-unreachable" | "port-unreach" | "icmp6-port-unreachable" => {
            RejectWith::PortUnreachable
        }
        "icmp-net-unreachable" | "net-unreach" | "icmp6-no-route" | "no-route" => {
            RejectWith::NetUnreachable
        }
        "icmp-host-unreachable" | "host-unreach" | "icmp6-addr-unreachable" | "addr-unreach" => {
            RejectWith::HostUnreachable
        }
        "icmp-proto-unreachable" | "proto-unreach" => RejectWith::ProtoUnreachable,
        "icmp-net-prohibited" | "net-prohib" => RejectWith::NetProhibited,
        "icmp-host-prohibited" | "host-prohib" => RejectWith::HostProhibited,
        "icmp-admin-prohibited" | "admin-prohib" | "icmp6-adm-prohibited" | "adm-prohibited" => {
            RejectWith::AdminProhibited
        }
        "tcp-reset" | "tcp-rst" => RejectWith::TcpReset,
        "icmp6-policy-fail" | "policy-fail" => RejectWith::PolicyFail,
        "icmp6-reject-route" | "reject-route" => RejectWith::RejectRoute,
        _ => return None,
    })
}

/// A syslog level, by number (0–7) or name.
pub(crate) fn log_level(v: &str) -> Option<u8> {
    if let Ok(n) = v.parse::<u8>() {
        return (n <= 7).then_some(n);
    }
    [
        "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug",
    ]
    .iter()
    .position(|n| {
        *n == v
            || (v == "panic" && *n == "emerg")
            || (v == "err" && *n == "error")
            || (v == "warn" && *n == "warning")
    })
    .map(|p| p as u8)
}

/// `N/second|minute|hour|day` (or `N/s`, …): packets per second.
pub(crate) fn rate(v: &str) -> Option<f64> {
    let (n, unit) = v.split_once('/').unwrap_or((v, "second"));
    let n: u32 = n.parse().ok()?;
    let per = match unit {
        u if "second".starts_with(u) && !u.is_empty() => 1.0,
        u if "minute".starts_with(u) && !u.is_empty() => 60.0,
        u if "hour".starts_with(u) && !u.is_empty() => 3600.0,
        u if "day".starts_with(u) && !u.is_empty() => 86400.0,
        _ => return None,
    };
    (n > 0).then_some(f64::from(n) / per)
}

/// The match module an option belongs to (for "loaded but no option given").
pub(crate) fn module_of(opt: &str) -> Option<&'static str> {
    Some(match opt {
        "--sports" | "--source-ports" | "--dports" | "--destination-ports" | "--ports" => {
            "multiport"
        }
        "--src-range" | "--dst-range" => "iprange",
        "--ctstate" | "--ctdir" | "--ctorigdst" | "--ctorigdstport" => "conntrack",
        "--state" => "state",
        "--comment" => "comment",
        "--mac-source" => "mac",
        "--match-set" | "--set" => "set",
        "--connlimit-above" | "--connlimit-upto" => "connlimit",
        _ => return None,
    })
}
