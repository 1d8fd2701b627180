//! Parity with iptables' own test files: the lines of netfilter's `extensions/*.t` that use
//! only options bridgewall supports (`tests/data/netfilter-parity.t`, with its provenance)
//! must load when iptables loads them and fail when iptables refuses them; where iptables
//! prints a rule back in another form, both forms must mean the same rules here.
use std::net::IpAddr;

use rules_wasm::iptables::{Names, parse};
use rules_wasm::model::{Cidr, Rule};

/// Lines iptables accepts that bridgewall refuses on purpose, each with the reason (also in
/// the README's list of differences).
const REFUSED: &[(&str, &str)] = &[
    ("255.0.255.0", "non-contiguous netmasks"),
    ("255.0.12.0", "non-contiguous netmasks"),
    (
        "-m limit",
        "-m limit with RETURN, a chain jump or no target",
    ),
    (
        "--connlimit-daddr",
        "--connlimit-daddr (bridgewall counts connections per source",
    ),
    ("SNAT,DNAT", "--ctstate SNAT/DNAT"),
];

/// A host where every interface name is a host interface routing 198.51.100.0/24 and
/// 2001:db8::/32, `docker0` is port 1, and every MAC belongs to the container on port 7.
struct Host;

impl Names for Host {
    fn addrs(&self, _: &str) -> Option<Vec<IpAddr>> {
        None
    }
    fn port(&self, name: &str) -> Option<u16> {
        (name == "docker0").then_some(1)
    }
    fn host_routes(&self, _: &str) -> Option<Vec<Cidr>> {
        Some(vec![
            Cidr::new("198.51.100.0".parse().ok()?, 24)?,
            Cidr::new("2001:db8::".parse().ok()?, 32)?,
        ])
    }
    fn port_of_mac(&self, _: [u8; 6]) -> Option<u16> {
        Some(7)
    }
}

struct Case {
    file: String,
    rule: String,
    canonical: Option<String>,
    ok: bool,
    families: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let text = include_str!("data/netfilter-parity.t");
    let mut file = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# from netfilter iptables extensions/") {
            file = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let parts: Vec<&str> = line.rsplitn(3, ';').collect();
        let [result, canonical, rule] = parts[..] else {
            panic!("malformed line: {line}");
        };
        let families: &[&str] = if file.starts_with("libipt_") || file == "iptables.t" {
            &["iptables"]
        } else if file.starts_with("libip6t_") {
            &["ip6tables"]
        } else {
            &["iptables", "ip6tables"]
        };
        out.push(Case {
            file: file.clone(),
            rule: rule.to_string(),
            canonical: match canonical {
                "=" | "" => None,
                c => Some(c.to_string()),
            },
            ok: result == "OK",
            families,
        });
    }
    out
}

fn load(family: &str, rule: &str) -> Result<Vec<Rule>, String> {
    parse(&format!("{family} -A FORWARD {rule}"), &Host).map_err(|e| e.to_string())
}

fn meaning(rules: &[Rule]) -> Vec<String> {
    rules
        .iter()
        .map(|r| format!("{:?} {:?}", r.m, r.target))
        .collect()
}

#[test]
fn what_iptables_accepts_loads_and_what_it_refuses_fails() {
    let mut loaded = 0;
    let mut refused_on_purpose = 0;
    let mut failed_as_iptables = 0;
    let mut mismatches = Vec::new();
    for c in cases() {
        for family in c.families {
            let got = load(family, &c.rule);
            let known = REFUSED.iter().find(|(k, _)| c.rule.contains(k));
            match (&got, c.ok, known) {
                (Err(e), true, Some((_, why))) if e.contains(why) => refused_on_purpose += 1,
                (Ok(rules), true, _) => {
                    loaded += 1;
                    if let Some(canon) = &c.canonical {
                        match load(family, canon) {
                            Ok(other) if meaning(&other) == meaning(rules) => {}
                            other => mismatches.push(format!(
                                "{}: `{}` and its canonical `{canon}` differ ({family}): {:?}",
                                c.file,
                                c.rule,
                                other.map(|o| meaning(&o))
                            )),
                        }
                    }
                }
                (Err(_), false, _) => failed_as_iptables += 1,
                (Err(e), true, _) => mismatches.push(format!(
                    "{}: iptables loads `{}` ({family}), we refuse: {e}",
                    c.file, c.rule
                )),
                (Ok(_), false, _) => mismatches.push(format!(
                    "{}: iptables refuses `{}` ({family}), we load it",
                    c.file, c.rule
                )),
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} mismatches:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "netfilter parity: {loaded} accepted as iptables does, {failed_as_iptables} refused as \
         iptables does, {refused_on_purpose} refused on purpose"
    );
    assert!(loaded >= 200 && failed_as_iptables >= 60);
}
