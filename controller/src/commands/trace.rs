//! `bridgewall trace`: which module, chain and rule decide one described packet, with the
//! policy compiled exactly as `run` (or `lab`) would compile it, answered both by the
//! reference interpreter and by the compiled Wasm module.
use std::net::IpAddr;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use dataplane::wasm::{WasmConfig, WasmRuntime};
use rules_wasm::abi::proto;
use rules_wasm::docker::BridgeNetwork;

use crate::control::api::TraceReport;
use crate::lab::LabSpec;
use crate::runtime::policy::{self, PacketSpec, PolicyBuild, UserModules, UserRules, action_name};
use crate::state::{BridgeState, GATEWAY_PORT};

/// The bridge state a lab file describes, with the port ids [`crate::lab::Lab::build`]
/// gives (containers in file order from 1), without building anything.
pub fn lab_state(spec: &LabSpec) -> BridgeState {
    let mut containers: Vec<_> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| rules_wasm::docker::ContainerInfo {
            name: c.name.clone(),
            port: (i + 1) as u16,
            ips: vec![IpAddr::V4(c.ip)],
            mac: [0; 6],
            exposed: c.exposed.clone(),
            published: c.published.clone(),
            links: c.links.clone(),
        })
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    BridgeState {
        bridge: spec.bridge.name.clone(),
        network: BridgeNetwork {
            icc: spec.bridge.icc,
            gateway_port: GATEWAY_PORT,
            gateway_ips: vec![IpAddr::V4(spec.bridge.gateway)],
            containers,
        },
        attachments: Vec::new(),
        unplaced: Vec::new(),
    }
}

/// Resolves a trace endpoint: a container name, `host`/`gateway` (the bridge's address), or
/// an address (a container's, or anything else behind the gateway).
fn endpoint(state: &BridgeState, what: &str) -> anyhow::Result<(IpAddr, u16)> {
    let net = &state.network;
    if what == "host" || what == "gateway" {
        let ip = net
            .gateway_ips
            .first()
            .context("the bridge has no address")?;
        return Ok((*ip, GATEWAY_PORT));
    }
    if let Some(c) = net.containers.iter().find(|c| c.name == what) {
        let ip = c
            .ips
            .first()
            .with_context(|| format!("container {what} has no address"))?;
        return Ok((*ip, c.port));
    }
    let ip: IpAddr = what.parse().with_context(|| {
        format!("{what:?} is neither a container on the bridge, `host`, nor an IP address")
    })?;
    let port = net
        .containers
        .iter()
        .find(|c| c.ips.contains(&ip))
        .map_or(GATEWAY_PORT, |c| c.port);
    Ok((ip, port))
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
    /// Source: a container name, `host`, or an address.
    pub src: String,
    /// Destination: a container name, `host`, or an address.
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
    state: &BridgeState,
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
/// people (the offline `trace` and the running instance's both answer with this).
pub fn explain(
    build: &PolicyBuild,
    state: &BridgeState,
    q: &TraceQuery,
) -> anyhow::Result<TraceReport> {
    let (src, dst, proto_name, dport) = (q.src.as_str(), q.dst.as_str(), q.proto.as_str(), q.dport);
    let (src_ip, in_port) = endpoint(state, src)?;
    let (dst_ip, out_port) = endpoint(state, dst)?;
    if in_port == out_port {
        bail!(
            "{src} and {dst} are on the same dataplane port: such a packet never crosses the bridge"
        );
    }
    let packet = PacketSpec {
        src: src_ip,
        dst: dst_ip,
        protocol: protocol(proto_name)?,
        dst_port: dport,
        in_port,
        out_port,
    };
    let t = build.trace(&packet)?;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |a: &str, b: String| rows.push((a.to_string(), b));
    row(
        "packet",
        format!(
            "{src_ip} (port {in_port}) -> {dst_ip}:{dport} (port {out_port}) {proto_name}, first packet of a new flow"
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
        agree: t.agree(),
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
