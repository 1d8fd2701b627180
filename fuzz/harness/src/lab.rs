//! Target `lab_toml`: the lab file (`controller::lab::LabSpec::from_toml`), TOML parsing and
//! the checks that make a spec the builder can trust.
//!
//! Properties, beyond "never panics": a spec that is accepted keeps what the checks promise —
//! 1–15-byte bridge names, gateways and every container interface inside its network's
//! subnet, names used
//! once, addresses taken once, host ports published once, links to other containers, and
//! steps from known names.
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use controller::lab::LabSpec;

/// Runs one input (the lab file, read as UTF-8 with invalid bytes replaced).
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let spec = match LabSpec::from_toml(&text, "fuzz.toml") {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let mut ips = BTreeSet::new();
    for n in &spec.networks {
        assert!((1..=15).contains(&n.bridge.len()), "bridge name {:?}", n.bridge);
        assert!(n.contains(n.gateway), "gateway outside");
        assert!(ips.insert(n.gateway), "gateway {} twice", n.gateway);
    }
    let mut names = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    for c in &spec.containers {
        assert!(names.insert(c.name.as_str()), "name {:?} twice", c.name);
        assert!(!c.interfaces.is_empty(), "{} on no network", c.name);
        for i in &c.interfaces {
            assert!(ips.insert(i.ip), "address {} twice", i.ip);
            assert!(
                spec.network(&i.network).is_some_and(|n| n.contains(i.ip)),
                "{} outside {}",
                i.ip,
                i.network
            );
        }
        assert!(valid_name(&c.name), "container name {:?}", c.name);
        for p in &c.published {
            assert!(host_ports.insert(p.host_port), "host port twice");
            assert!(
                c.exposed
                    .iter()
                    .any(|e| e.port == p.container_port && e.proto == p.proto),
                "published but not exposed"
            );
        }
    }
    for c in &spec.containers {
        for l in &c.links {
            assert!(l.child != c.name && spec.container(&l.child).is_some());
        }
    }
    for o in &spec.outside {
        assert!(names.insert(o.name.as_str()), "name {:?} twice", o.name);
        assert!(valid_name(&o.name), "outside name {:?}", o.name);
        assert!(o.prefix <= 32);
        assert!(in_subnet(o.host_ip, o.ip, o.prefix));
        assert!(spec.outside_host(&o.name).is_some());
    }
    for s in &spec.steps {
        assert!(s.from == "host" || names.contains(s.from.as_str()));
    }
}

fn in_subnet(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn valid_name(n: &str) -> bool {
    n != "host"
        && n.starts_with(|c: char| c.is_ascii_alphanumeric())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
