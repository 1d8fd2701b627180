//! `bridgewall trace`: which module, chain and rule decide one described packet, with the
//! policy compiled exactly as `run` (or `lab`) would compile it, answered both by the
//! reference interpreter and by the compiled Wasm module.
use std::net::IpAddr;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use dataplane::wasm::{WasmConfig, WasmRuntime};
use rules_wasm::abi::proto;
use rules_wasm::docker::PortId;

use crate::control::api::TraceReport;
use crate::lab::LabSpec;
use crate::runtime::policy::{
    self, PacketSpec, PolicyBuild, TraceAnswer, UserModules, UserRules, action_name,
};
use crate::state::{BridgeState, HostState};

/// The state a lab file describes, without building anything: exactly
/// [`LabSpec::host_state`], the numbering [`crate::lab::Lab::build`] builds.
pub fn lab_state(spec: &LabSpec) -> HostState {
    spec.host_state()
}

/// What a trace endpoint names: `host`/`gateway`, a container, or an address; each may end
/// in `@NETWORK` to pick the network (of a container on several, or of the host).
#[derive(Clone, Debug, PartialEq)]
enum Named {
    /// The host itself (a bridge's address).
    Host,
    /// A container: its interfaces, (network, address, port), in the state's order.
    Container(String, Vec<(String, IpAddr, PortId)>),
    /// An address no container has: on a network's subnet, or outside every one.
    Addr(IpAddr, Option<String>),
}

/// One end of a traced packet, placed on a network (also what the lab's steps are traced
/// with, see [`crate::commands::lab::step_packets`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct End {
    /// How the user named it.
    pub(crate) name: String,
    /// Its address.
    pub(crate) ip: IpAddr,
    /// The network it is on; `None`: outside every network (behind their gateways).
    pub(crate) network: Option<String>,
    /// Its container port; `None`: the host or an address behind a gateway.
    pub(crate) port: Option<PortId>,
}

fn net<'a>(state: &'a HostState, name: &str) -> anyhow::Result<&'a BridgeState> {
    state
        .network(name)
        .with_context(|| format!("no network {name:?} is followed"))
}

fn gateway(n: &BridgeState) -> anyhow::Result<IpAddr> {
    n.network
        .gateway_ips
        .first()
        .copied()
        .with_context(|| format!("network {} has no gateway address", n.network.label()))
}

/// Reads an endpoint: `host`/`gateway`, a container name, or an address, with an optional
/// `@NETWORK`.
fn named(state: &HostState, what: &str) -> anyhow::Result<(Named, Option<String>)> {
    let (name, pick) = match what.rsplit_once('@') {
        Some((n, net_name)) => {
            net(state, net_name)?;
            (n, Some(net_name.to_string()))
        }
        None => (what, None),
    };
    let on_pick = |n: &&BridgeState| pick.as_deref().is_none_or(|p| n.network.name == p);
    if name == "host" || name == "gateway" {
        return Ok((Named::Host, pick));
    }
    let ifaces: Vec<(String, IpAddr, PortId)> = state
        .networks
        .iter()
        .filter(on_pick)
        .flat_map(|n| {
            n.network
                .containers
                .iter()
                .filter(|c| c.name == name)
                .filter_map(|c| Some((n.network.name.clone(), *c.ips.first()?, c.port)))
        })
        .collect();
    if !ifaces.is_empty() {
        return Ok((Named::Container(name.to_string(), ifaces), pick));
    }
    if state.attachment(name).is_some() {
        bail!(
            "container {name} is not on network {}",
            pick.unwrap_or_default()
        );
    }
    let ip: IpAddr = name.parse().with_context(|| {
        format!("{name:?} is neither a container on a followed network, `host`, nor an IP address")
    })?;
    let b = rules_wasm::abi::addr_bytes(ip);
    for n in state.networks.iter().filter(on_pick) {
        if let Some(c) = n.network.containers.iter().find(|c| c.ips.contains(&ip)) {
            let iface = (n.network.name.clone(), ip, c.port);
            return Ok((Named::Container(c.name.clone(), vec![iface]), pick));
        }
    }
    let on = state
        .networks
        .iter()
        .filter(on_pick)
        .find(|n| n.network.subnets.iter().any(|s| s.contains(&b)))
        .map(|n| n.network.name.clone());
    Ok((Named::Addr(ip, on.or(pick.clone())), pick))
}

/// Places both ends: a container on the network it shares with the other end (else its
/// first), the host on the other end's network (its address there is the source or the
/// destination the kernel would pick).
fn place(state: &HostState, src: &str, dst: &str) -> anyhow::Result<(End, End)> {
    let (s, s_pick) = named(state, src)?;
    let (d, d_pick) = named(state, dst)?;
    let nets_of = |n: &Named| -> Vec<String> {
        match n {
            Named::Container(_, ifs) => ifs.iter().map(|i| i.0.clone()).collect(),
            Named::Addr(_, Some(net)) => vec![net.clone()],
            _ => Vec::new(),
        }
    };
    let (sn, dn) = (nets_of(&s), nets_of(&d));
    let shared = sn.iter().find(|n| dn.contains(n)).cloned();
    let choose = |mine: &[String], pick: &Option<String>| -> Option<String> {
        pick.clone()
            .or_else(|| shared.clone().filter(|n| mine.contains(n)))
            .or_else(|| mine.first().cloned())
    };
    let mut s_net = choose(&sn, &s_pick);
    let mut d_net = choose(&dn, &d_pick);
    if s == Named::Host && s_net.is_none() {
        s_net = d_net.clone();
    }
    if d == Named::Host && d_net.is_none() {
        d_net = s_net.clone();
    }
    let end = |what: &str, n: Named, network: Option<String>| -> anyhow::Result<End> {
        Ok(match n {
            Named::Host => {
                let network = network.with_context(|| {
                    format!("{what}: the host on which network? name one (`host@NETWORK`) or trace to a container")
                })?;
                End {
                    name: "host".into(),
                    ip: gateway(net(state, &network)?)?,
                    network: Some(network),
                    port: None,
                }
            }
            Named::Container(name, ifs) => {
                let (net_name, ip, port) = ifs
                    .iter()
                    .find(|i| Some(&i.0) == network.as_ref())
                    .or(ifs.first())
                    .cloned()
                    .with_context(|| format!("container {name} has no address"))?;
                End {
                    name,
                    ip,
                    network: Some(net_name),
                    port: Some(port),
                }
            }
            Named::Addr(ip, network) => End {
                name: ip.to_string(),
                ip,
                network,
                port: None,
            },
        })
    };
    Ok((end(src, s, s_net)?, end(dst, d, d_net)?))
}

/// The packet judged at each crossing of the dataplane, in order: one crossing within a
/// network or between a network and its gateway, two from one network to another (out
/// through the first network's gateway, in through the second's: the host routes it in
/// between). An error when neither end is a container (nothing crosses a bridge).
pub(crate) fn hops(
    state: &HostState,
    src: &End,
    dst: &End,
    protocol: u8,
    dport: u16,
) -> anyhow::Result<Vec<PacketSpec>> {
    let gw_port = |n: &Option<String>| -> anyhow::Result<Option<PortId>> {
        n.as_deref()
            .map(|n| net(state, n).map(|b| b.network.gateway_port))
            .transpose()
    };
    let packet = |in_port, out_port| PacketSpec {
        src: src.ip,
        dst: dst.ip,
        protocol,
        dst_port: dport,
        in_port,
        out_port,
    };
    let never = || {
        anyhow::anyhow!(
            "{} and {} are both behind the gateways: such a packet never crosses a bridge",
            src.name,
            dst.name
        )
    };
    let same_net = src.network.is_some() && src.network == dst.network;
    Ok(match (src.port, dst.port) {
        (Some(a), Some(b)) if same_net => vec![packet(a, b)],
        (Some(a), Some(b)) => {
            let (Some(out), Some(inn)) = (gw_port(&src.network)?, gw_port(&dst.network)?) else {
                return Err(never());
            };
            vec![packet(a, out), packet(inn, b)]
        }
        (Some(a), None) => vec![packet(a, gw_port(&src.network)?.ok_or_else(never)?)],
        (None, Some(b)) => vec![packet(gw_port(&dst.network)?.ok_or_else(never)?, b)],
        (None, None) => return Err(never()),
    })
}

/// Who an end of a judged packet is, on which network, on which dataplane port:
/// `172.18.0.2 web (front, port 3)`, `172.18.0.1 host (front, port 1024)`, `198.18.1.2
/// (outside, via front's gateway, port 1024)`, `172.17.0.2:80 legacy1 (bridge, via
/// front's gateway, port 1024)` when it is reached through a gateway; `dport` is written
/// after the address of a destination.
fn label(state: &HostState, end: &End, port: PortId, dport: Option<u16>) -> String {
    let addr = match dport {
        Some(p) => format!("{}:{p}", end.ip),
        None => end.ip.to_string(),
    };
    let who = if end.name == end.ip.to_string() {
        addr
    } else {
        format!("{addr} {}", end.name)
    };
    let own = end.network.as_deref().unwrap_or("outside");
    let via = state
        .network_of_port(port)
        .filter(|n| n.network.gateway_port == port)
        .filter(|n| end.port.is_some() || end.network.as_deref() != Some(n.network.name.as_str()))
        .map(|n| n.network.label().to_string());
    match via {
        Some(g) => format!("{who} ({own}, via {g}'s gateway, port {port})"),
        None => format!("{who} ({own}, port {port})"),
    }
}

/// Parses `tcp`, `udp`, `icmp` or a protocol number.
fn protocol(p: &str) -> anyhow::Result<u8> {
    Ok(match p {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "icmp" => proto::ICMP,
        n => n
            .parse()
            .with_context(|| format!("protocol {n:?}: use tcp, udp, icmp or a number"))?,
    })
}

/// The packet `trace` asks about, as the command line names it.
#[derive(Clone, Debug)]
pub struct TraceQuery {
    /// Source: a container name, `host`, or an address; `@NETWORK` after it picks the
    /// network (of a container on several, or the host's address on that network).
    pub src: String,
    /// Destination: as the source.
    pub dst: String,
    /// Protocol name or number.
    pub proto: String,
    /// Destination port.
    pub dport: u16,
    /// The packet is a later IP fragment of a datagram to that port (it has no ports of its
    /// own): the answer explains how it follows its first fragment.
    pub later_fragment: bool,
}

/// Traces one packet through the policy built from `state` and `user`; prints the answer
/// and returns whether both evaluators agree.
pub fn trace(
    state: &HostState,
    host: &crate::runtime::host::HostView,
    user: &UserRules,
    modules: &UserModules,
    q: &TraceQuery,
) -> anyhow::Result<bool> {
    let wasm = WasmRuntime::new(WasmConfig::default()).context("starting the Wasm host")?;
    let user_modules = modules.load(&wasm)?;
    let build = policy::build(&wasm, state, host, user, &user_modules, 1)?;
    for w in &build.warnings {
        println!("note: {}: {w}", user.origin);
    }
    let report = explain(&build, state, q)?;
    print_report(&report);
    Ok(report.agree)
}

/// Which module, chain and rule of `build` decide the packet `q` describes, as rows for
/// people (the offline `trace` and the running instance's both answer with this). Each end
/// is named with its network and dataplane port; a packet from one network to another
/// crosses the dataplane twice (out through its network's gateway, in through the other's):
/// the first crossing that does not accept it is explained, or the last.
pub fn explain(
    build: &PolicyBuild,
    state: &HostState,
    q: &TraceQuery,
) -> anyhow::Result<TraceReport> {
    let (proto_name, dport) = (q.proto.as_str(), q.dport);
    let (src, dst) = place(state, &q.src, &q.dst)?;
    let protocol = protocol(proto_name)?;
    let packets = hops(state, &src, &dst, protocol, dport)?;
    if packets.iter().any(|p| p.in_port == p.out_port) {
        bail!(
            "{} and {} are on the same dataplane port: such a packet never crosses the bridge",
            q.src,
            q.dst
        );
    }
    let mut answers: Vec<(PacketSpec, TraceAnswer)> = Vec::new();
    for p in packets {
        let t = build.trace(&p)?;
        let accepted = t.verdict() == "accept";
        answers.push((p, t));
        if !accepted {
            break;
        }
    }
    let agree_all = answers.iter().all(|(_, t)| t.agree());
    let Some((packet, t)) = answers.pop() else {
        bail!("no packet to trace");
    };
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |a: &str, b: String| rows.push((a.to_string(), b));
    for (p, earlier) in &answers {
        row(
            "first crossing",
            format!(
                "{} -> {}: {} by rule {} ({}); the host then routes it to the other network",
                label(state, &src, p.in_port, None),
                label(state, &dst, p.out_port, Some(dport)),
                earlier.verdict(),
                rule_id(earlier.reference_rule),
                earlier.origin
            ),
        );
    }
    row(
        "packet",
        format!(
            "{} -> {} {proto_name}, first packet of a new flow",
            label(state, &src, packet.in_port, None),
            label(state, &dst, packet.out_port, Some(dport)),
        ),
    );
    row("verdict", t.verdict().to_string());
    if q.later_fragment {
        let follows = if t.verdict() == "accept" {
            "it passes, sent where the first fragment went"
        } else {
            "it is dropped too (fragment_denied)"
        };
        row(
            "later fragment",
            format!(
                "no ports of its own: follows the first fragment (the packet above), so {follows}; \
                 before its first it is held up to 30 s, then dropped (fragment_orphan)"
            ),
        );
    }
    row(
        "module",
        t.compiled
            .module_name
            .clone()
            .unwrap_or_else(|| "(none decided: engine default)".into()),
    );
    row(
        "chain",
        if t.by_user_module {
            "(a user module, before the compiled policy)".to_string()
        } else {
            t.chain.map_or("(default)".into(), |c| c.to_string())
        },
    );
    row(
        "rule",
        format!(
            "{} {}",
            if t.reference_rule == rules_wasm::abi::RULE_NONE {
                "-".to_string()
            } else {
                format!("#{}", t.reference_rule)
            },
            t.origin
        ),
    );
    for line in build.logged(&t.record) {
        row("logged by (LOG)", line.to_string());
    }
    for m in build.user_modules.iter().filter(|m| m.audit) {
        row(
            "audited module",
            format!(
                "{} (its verdicts are counted, not enforced)",
                m.module.name()
            ),
        );
    }
    row(
        "reference interpreter",
        if t.by_user_module {
            "not consulted: a user module decided".to_string()
        } else {
            format!(
                "{} by rule {}",
                action_name(t.reference_action),
                rule_id(t.reference_rule)
            )
        },
    );
    row(
        "compiled Wasm module",
        format!(
            "{} by rule {}",
            action_name(t.compiled.action),
            rule_id(t.compiled.rule_id)
        ),
    );
    row("policy generation", build.generation.to_string());
    Ok(TraceReport {
        rows,
        verdict: t.verdict().to_string(),
        by_user_module: t.by_user_module,
        agree: agree_all,
        notes: build.warnings.iter().map(|w| w.to_string()).collect(),
    })
}

/// Prints a trace answer as a two-column table and a closing line.
pub fn print_report(r: &TraceReport) {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    for (a, b) in &r.rows {
        table.add_row(vec![a.clone(), b.clone()]);
    }
    println!("{table}");
    if r.by_user_module {
        println!("decided by a user module; the compiled policy was not reached");
    } else if r.agree {
        println!("the compiled module and the reference interpreter agree");
    } else {
        println!("WARNING: the compiled module and the reference interpreter DISAGREE");
    }
}

fn rule_id(id: u32) -> String {
    if id == rules_wasm::abi::RULE_NONE {
        "none".into()
    } else {
        id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{NETWORKS_TOML, WALKTHROUGH_TOML};
    use crate::runtime::host::HostView;

    fn lab(text: &str) -> (HostState, PolicyBuild) {
        let spec = LabSpec::from_toml(text, "test").unwrap();
        let state = lab_state(&spec);
        assert_eq!(
            state,
            spec.host_state(),
            "one numbering for trace and the builder"
        );
        let rules = UserRules::from_lines(&spec.rules, "test");
        let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
        let build = policy::build(&wasm, &state, &HostView::default(), &rules, &[], 1).unwrap();
        (state, build)
    }

    fn ask(state: &HostState, build: &PolicyBuild, src: &str, dst: &str, port: u16) -> TraceReport {
        let q = TraceQuery {
            src: src.into(),
            dst: dst.into(),
            proto: "tcp".into(),
            dport: port,
            later_fragment: false,
        };
        let r = explain(build, state, &q).unwrap_or_else(|e| panic!("{src} -> {dst}: {e:#}"));
        assert!(r.agree, "{src} -> {dst}: {r:?}");
        r
    }

    fn row<'a>(r: &'a TraceReport, name: &str) -> &'a str {
        r.rows
            .iter()
            .find(|(a, _)| a == name)
            .map_or("", |(_, b)| b.as_str())
    }

    #[test]
    fn trace_names_the_network_of_each_end() {
        let (state, build) = lab(NETWORKS_TOML);
        // Ports as the lab numbers them: legacy1 1, legacy2 2, web 3, api 4 (front) and 5
        // (back), db 6; gateways: bridge 0, front 1024, back 1025.
        let r = ask(&state, &build, "web", "api", 80);
        assert_eq!(
            row(&r, "packet"),
            "172.18.0.2 web (front, port 3) -> 172.18.0.3:80 api (front, port 4) tcp, first packet of a new flow"
        );
        assert_eq!(r.verdict, "accept");
        // Across networks: the crossing out of front decides (isolation).
        let r = ask(&state, &build, "web", "legacy1", 80);
        assert_eq!(r.verdict, "drop");
        assert_eq!(
            row(&r, "packet"),
            "172.18.0.2 web (front, port 3) -> 172.17.0.2:80 legacy1 (bridge, via front's gateway, port 1024) tcp, first packet of a new flow"
        );
        assert!(row(&r, "rule").contains("ISOLATION"), "{r:?}");
        let r = ask(&state, &build, "legacy1", "web", 80);
        assert_eq!(r.verdict, "drop");
        assert!(row(&r, "packet").starts_with("172.17.0.2 legacy1 (bridge, port 1) -> "));
        // A container on two networks: the one shared with the other end, or the one named.
        let r = ask(&state, &build, "api", "db", 5432);
        assert!(
            row(&r, "packet")
                .starts_with("172.19.0.3 api (back, port 5) -> 172.19.0.2:5432 db (back, port 6)"),
            "{r:?}"
        );
        assert_eq!(r.verdict, "accept");
        let r = ask(&state, &build, "api@front", "web", 80);
        assert!(
            row(&r, "packet").starts_with("172.18.0.3 api (front, port 4)"),
            "{r:?}"
        );
        // The host on the other end's network, an outside address behind a gateway.
        let r = ask(&state, &build, "host", "db", 5432);
        assert!(
            row(&r, "packet").starts_with("172.19.0.1 host (back, port 1025) -> "),
            "{r:?}"
        );
        assert_eq!(r.verdict, "accept");
        let r = ask(&state, &build, "198.18.1.2", "web", 80);
        assert!(
            row(&r, "packet")
                .starts_with("198.18.1.2 (outside, via front's gateway, port 1024) -> "),
            "{r:?}"
        );
        assert_eq!(r.verdict, "accept", "web publishes 80");
        let r = ask(&state, &build, "198.18.1.2", "db", 5432);
        assert_eq!(r.verdict, "drop", "back is internal");
        let r = ask(&state, &build, "db", "8.8.8.8", 53);
        assert_eq!(r.verdict, "drop", "internal: no way out");
        assert!(
            row(&r, "packet").contains("8.8.8.8:53 (outside, via back's gateway, port 1025)"),
            "{r:?}"
        );
    }

    #[test]
    fn trace_refuses_what_never_crosses_a_bridge() {
        let (state, build) = lab(NETWORKS_TOML);
        let q = |src: &str, dst: &str| TraceQuery {
            src: src.into(),
            dst: dst.into(),
            proto: "tcp".into(),
            dport: 80,
            later_fragment: false,
        };
        for (src, dst) in [
            ("host", "198.18.1.2"),
            ("198.18.1.2", "198.18.2.2"),
            ("nobody", "web"),
            ("web@back", "api"),
            ("web", "api@nowhere"),
        ] {
            assert!(
                explain(&build, &state, &q(src, dst)).is_err(),
                "{src} -> {dst}"
            );
        }
    }

    #[test]
    fn seed_trace_is_on_the_default_bridge() {
        let (state, build) = lab(WALKTHROUGH_TOML);
        let r = ask(&state, &build, "nginx_server1", "nginx_server2", 80);
        assert_eq!(
            row(&r, "packet"),
            "172.17.0.2 nginx_server1 (bridge, port 1) -> 172.17.0.3:80 nginx_server2 (bridge, port 2) tcp, first packet of a new flow"
        );
        assert_eq!(r.verdict, "drop", "icc=false");
        let r = ask(&state, &build, "client3", "nginx_server2", 80);
        assert_eq!(r.verdict, "accept", "the link");
        let r = ask(&state, &build, "198.18.1.2", "nginx_server1", 80);
        assert_eq!(r.verdict, "drop", "the user rule");
        assert!(row(&r, "rule").contains("198.18.1.2"), "{r:?}");
    }
}
