//! What bridgewall prints for people about the bridge networks' state: the containers as a table, and
//! what changed between two snapshots. `cli.rs` parses and dispatches; the commands that run
//! the dataplane (`commands::lab`, `commands::run`) print through here, so nothing calls back
//! into the CLI module.
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use rules_wasm::docker::{PortProto, Published};
use rules_wasm::model::proto_name;

use crate::state::{BridgeState, HostState, Snapshot};

/// Prints what changed between two snapshots (networks come and go; containers come, go or
/// change on each network; icc flips), or the whole state when there is no earlier one.
pub fn print_changes(prev: Option<&Snapshot>, snap: &Snapshot) {
    let Some(prev) = prev else {
        print_state(&snap.state);
        return;
    };
    for net in &snap.state.networks {
        match prev.state.network(&net.network.name) {
            None => println!(
                "+ network {} on {} ({} containers)",
                net.network.name,
                net.bridge(),
                net.network.containers.len()
            ),
            Some(old) => print_network_changes(old, net),
        }
    }
    for old in &prev.state.networks {
        if snap.state.network(&old.network.name).is_none() {
            println!("- network {} ({})", old.network.name, old.bridge());
        }
    }
}

fn print_network_changes(old: &BridgeState, new: &BridgeState) {
    let net = &new.network.name;
    for c in &new.network.containers {
        if !old.network.containers.iter().any(|o| o.name == c.name) {
            let veth = new
                .attachment(&c.name)
                .map(|a| a.host_ifname.as_str())
                .unwrap_or("?");
            println!(
                "+ {} {} on {} (network {net}, port {})",
                c.name,
                ips(&c.ips),
                veth,
                c.port
            );
        } else if !old.network.containers.contains(c) {
            println!("~ {} changed on {net}", c.name);
        }
    }
    for c in &old.network.containers {
        if !new.network.containers.iter().any(|n| n.name == c.name) {
            println!("- {} from {net}", c.name);
        }
    }
    if old.network.icc != new.network.icc {
        println!("icc is now {} on {net}", new.network.icc);
    }
    for u in &new.unplaced {
        if !old.unplaced.iter().any(|o| o.container == u.container) {
            println!(
                "! {} cut off on {net}: no dataplane port left (raise --max-containers)",
                u.container
            );
        }
    }
}

fn ips(v: &[std::net::IpAddr]) -> String {
    v.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn ports(v: &[PortProto]) -> String {
    v.iter()
        .map(|p| format!("{}/{}", p.port, proto_name(p.proto)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn published(v: &[Published]) -> String {
    v.iter()
        .map(|p| {
            format!(
                "{}:{}/{}",
                p.host_port,
                p.container_port,
                proto_name(p.proto)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Prints every network and its containers as a table: addresses, MAC, veth, port,
/// exposed and published ports, links.
pub fn print_state(state: &HostState) {
    if state.networks.is_empty() {
        println!("no bridge network followed (yet)");
    }
    for net in &state.networks {
        print_network(net);
    }
}

fn print_network(state: &BridgeState) {
    let n = &state.network;
    let mut flags = vec![format!("icc={}", n.icc)];
    if n.internal {
        flags.push("internal".into());
    }
    let subnets: Vec<String> = n.subnets.iter().map(|c| c.to_string()).collect();
    println!(
        "network {} on bridge {}: {}, subnets [{}], gateway {} (port {}), {} containers",
        n.name,
        state.bridge(),
        flags.join(", "),
        subnets.join(", "),
        ips(&n.gateway_ips),
        n.gateway_port,
        n.containers.len()
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "container",
        "address",
        "MAC",
        "host veth",
        "port",
        "exposed",
        "published",
        "links",
    ]);
    for c in &n.containers {
        let veth = state
            .attachment(&c.name)
            .map(|a| a.host_ifname.clone())
            .unwrap_or_default();
        let links = c
            .links
            .iter()
            .map(|l| format!("{} as {}", l.child, l.alias))
            .collect::<Vec<_>>()
            .join(", ");
        t.add_row(vec![
            c.name.clone(),
            ips(&c.ips),
            crate::docker::fmt_mac(&c.mac),
            veth,
            c.port.to_string(),
            ports(&c.exposed),
            published(&c.published),
            links,
        ]);
    }
    println!("{t}");
    if !state.unplaced.is_empty() {
        let names: Vec<&str> = state
            .unplaced
            .iter()
            .map(|u| u.container.as_str())
            .collect();
        println!(
            "cut off, no dataplane port left (raise --max-containers): {}",
            names.join(", ")
        );
    }
}
