//! The dataplane owner's side of the control API: each [`Command`] answered against the
//! running [`BridgeRuntime`], on the thread that owns it. A change that fails (a rule that
//! does not parse, a module refused) leaves the rules, modules and policy in force and is
//! answered with a 4xx naming what and where.
use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane::counters::{DropReason, Snapshot as CounterSnapshot};
use rules_wasm::abi::RULE_NONE;
use rules_wasm::model::{Chain, Match, Neg, Rule, proto_name};

use super::api::{
    self, ChainListing, PolicyInfo, PortStats, RuleEditReply, RuleRow, RulesReply, StatsReply,
    WorkerStats,
};
use super::edit;
use super::events::Names;
use super::server::{Command, Reply};
use crate::commands::trace::{TraceQuery, explain};
use crate::metrics::{
    ContainerMetrics, FlowMetrics, LatencyHistogram, MetricsInput, RuleMetrics, UmemFrames,
    VerdictEventMetrics,
};
use crate::runtime::BridgeRuntime;
use crate::runtime::policy::UserRules;

/// What the owner knows beyond the runtime (for stats).
#[derive(Clone, Debug, Default)]
pub struct OwnerExtras {
    /// Docker event → snapshot latency: (count, median ms, max ms), when following an engine.
    pub docker_sync: Option<(u64, f64, f64)>,
}

/// Answers `cmd` against `rt`.
pub fn answer(rt: &mut BridgeRuntime, cmd: Command, extras: &OwnerExtras) -> Reply {
    match cmd {
        Command::Rules => Reply::Rules(rules(rt, &rt.counter_snapshots())),
        Command::Edit(e) => edit_rules(rt, &e),
        Command::Trace(t) => trace(rt, &t),
        Command::Stats => Reply::Stats(Box::new(stats(rt, &rt.counter_snapshots(), extras))),
        Command::Policies => Reply::Policies(policies(rt)),
        Command::PolicyLoad { name, audit, bytes } => policy_load(rt, &name, audit, bytes),
        Command::PolicyUnload { name } => policy_unload(rt, &name),
        Command::Audit(on) => match rt.set_audit(on) {
            Ok(()) => Reply::Audit(api::AuditState { audit: on }),
            Err(e) => Reply::Error {
                status: 500,
                message: e.to_string(),
            },
        },
        Command::Tap(name) => match rt.tap(&name) {
            Some(t) => Reply::Tap(t),
            None => Reply::not_found(format!(
                "no port {name:?}: name a container on the dataplane or `gateway` (see `bridgewall stats`)"
            )),
        },
    }
}

/// The names events are shown with.
pub fn names(rt: &BridgeRuntime) -> Names {
    let ports = rt
        .port_names()
        .into_iter()
        .map(|p| (p.port, p.name))
        .collect();
    let p = rt.policy();
    let rules = vec![(p.generation, p.compiled.rule_origins.clone().into())];
    Names { ports, rules }
}

fn address_names(rt: &BridgeRuntime) -> BTreeMap<IpAddr, String> {
    let mut m = BTreeMap::new();
    for net in &rt.state().networks {
        let net = &net.network;
        for c in &net.containers {
            for ip in &c.ips {
                m.insert(*ip, c.name.clone());
            }
        }
        for ip in &net.gateway_ips {
            m.insert(*ip, format!("gateway of {}", net.name));
        }
    }
    m
}

/// Per rule id: (packets, bytes) that got its verdict, summed over workers.
fn rule_traffic(snaps: &[CounterSnapshot]) -> BTreeMap<u32, (u64, u64)> {
    let mut m: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
    for s in snaps {
        for &(id, p, b) in &s.rule_traffic {
            let e = m.entry(id).or_default();
            e.0 += p;
            e.1 += b;
        }
    }
    m
}

fn rules(rt: &BridgeRuntime, snaps: &[CounterSnapshot]) -> RulesReply {
    let p = rt.policy();
    let traffic = rule_traffic(snaps);
    let names = address_names(rt);
    let ports: BTreeMap<u16, String> = rt
        .port_names()
        .into_iter()
        .map(|p| (p.port, p.name))
        .collect();
    let mut user = Vec::new();
    let mut docker = Vec::new();
    for (i, r) in p.ruleset.rules.iter().enumerate() {
        let row = |num| RuleRow {
            num,
            id: r.id,
            line: (r.chain == Chain::User)
                .then(|| p.user_lines.get(i).copied())
                .flatten(),
            packets: traffic.get(&r.id).map_or(0, |t| t.0),
            bytes: traffic.get(&r.id).map_or(0, |t| t.1),
            target: r.target.to_string(),
            prot: neg(r.m.proto, proto_name).unwrap_or_else(|| "all".into()),
            source: addr(r.m.src, &names),
            destination: addr(r.m.dst, &names),
            extra: extra(r, &ports),
            origin: r.origin.clone(),
        };
        match r.chain {
            Chain::User => user.push(row(user.len() + 1)),
            _ => docker.push(row(docker.len() + 1)),
        }
    }
    RulesReply {
        generation: p.generation,
        rules_file: rules_file(rt),
        audit: rt.audit(),
        chains: vec![
            ChainListing {
                name: "DOCKER-USER".into(),
                policy: "RETURN".into(),
                rules: user,
            },
            ChainListing {
                name: "DOCKER".into(),
                policy: format!(
                    "{} {} packets, {} bytes",
                    crate::runtime::policy::action_name(p.ruleset.default).to_uppercase(),
                    traffic.get(&RULE_NONE).map_or(0, |t| t.0),
                    traffic.get(&RULE_NONE).map_or(0, |t| t.1)
                ),
                rules: docker,
            },
        ],
    }
}

fn neg<T: Copy>(n: Option<Neg<T>>, show: impl Fn(T) -> String) -> Option<String> {
    n.map(|n| format!("{}{}", if n.negated { "!" } else { "" }, show(n.value)))
}

fn addr(c: Option<Neg<rules_wasm::model::Cidr>>, names: &BTreeMap<IpAddr, String>) -> String {
    neg(c, |c| {
        let text = c.to_string();
        match text.parse::<IpAddr>().ok().and_then(|ip| names.get(&ip)) {
            Some(n) => format!("{text} ({n})"),
            None => text,
        }
    })
    .unwrap_or_else(|| "anywhere".into())
}

/// The matches other than protocol and addresses, with port ids named.
fn extra(r: &Rule, ports: &BTreeMap<u16, String>) -> String {
    let rest = Match {
        src: None,
        dst: None,
        proto: None,
        ..r.m
    };
    let text = rest.to_string();
    if text == "(any)" {
        return String::new();
    }
    text.split(' ')
        .map(
            |w| match w.strip_prefix("port:").and_then(|n| n.parse::<u16>().ok()) {
                Some(id) => ports.get(&id).cloned().unwrap_or_else(|| w.to_string()),
                None => w.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join(" ")
}

fn rules_file(rt: &BridgeRuntime) -> String {
    rt.rules_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(not persisted: no rules file)".into())
}

fn edit_rules(rt: &mut BridgeRuntime, e: &api::RuleEdit) -> Reply {
    let file = rules_file(rt);
    let current = rt.user_rules().clone();
    let (text, line) = match edit::apply(&current.text, e, &file) {
        Ok(x) => x,
        Err(err) => return Reply::bad_request(err.to_string()),
    };
    let next = UserRules {
        text,
        origin: current.origin.clone(),
        ipsets: current.ipsets.clone(),
    };
    let modules = rt.user_modules().clone();
    let generation = match rt.reconfigure(next.clone(), modules) {
        Ok(g) => g,
        Err(err) => {
            // A line number past the file's end is the rule being added.
            let at = next.text.lines().position(|l| l == line).map(|i| i + 1);
            let which = match (e, at) {
                (api::RuleEdit::Append { .. } | api::RuleEdit::Insert { .. }, Some(n)) => {
                    format!(" (line {n} is the rule being added)")
                }
                _ => String::new(),
            };
            return Reply::bad_request(format!("{err}{which}; nothing changed"));
        }
    };
    if let Some(path) = rt.rules_path()
        && let Err(err) = crate::private_file::write(path, next.text.as_bytes())
    {
        return Reply::Error {
            status: 500,
            message: format!(
                "the rule is in force (generation {generation}) but was not saved to {}: {err}",
                path.display()
            ),
        };
    }
    let user_rules = rt
        .policy()
        .ruleset
        .rules
        .iter()
        .filter(|r| r.chain == Chain::User)
        .count();
    Reply::Edit(RuleEditReply {
        generation,
        line,
        rules_file: file,
        user_rules,
    })
}

fn trace(rt: &BridgeRuntime, t: &api::TraceRequest) -> Reply {
    let q = TraceQuery {
        src: t.src.clone(),
        dst: t.dst.clone(),
        proto: t.proto.clone(),
        dport: t.dport,
        later_fragment: t.fragment,
    };
    match explain(rt.policy(), rt.state(), &q) {
        Ok(r) => Reply::Trace(r),
        Err(e) => Reply::bad_request(format!("{e:#}")),
    }
}

fn drops_named(d: &[u64]) -> Vec<(String, u64)> {
    DropReason::all()
        .zip(d)
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| (r.name().to_string(), *n))
        .collect()
}

fn stats(rt: &BridgeRuntime, snaps: &[CounterSnapshot], extras: &OwnerExtras) -> StatsReply {
    let mut ports = Vec::new();
    for p in rt.port_names() {
        let mut s = PortStats {
            name: p.name,
            port: p.port,
            ifname: p.ifname,
            network: p.network,
            ..PortStats::default()
        };
        let mut drops = [0u64; DropReason::COUNT];
        for snap in snaps {
            let c = snap.port(p.port);
            s.rx_packets += c.rx_packets;
            s.rx_bytes += c.rx_bytes;
            s.tx_packets += c.tx_packets;
            s.tx_bytes += c.tx_bytes;
            s.accepted += c.accepted;
            s.denied += c.denied;
            s.audit_denied += c.audit_denied;
            s.flows += c.flows;
            for (d, n) in drops.iter_mut().zip(c.drops) {
                *d += n;
            }
        }
        s.drops = drops_named(&drops);
        ports.push(s);
    }
    let mut drops = [0u64; DropReason::COUNT];
    let mut latency: BTreeMap<u64, u64> = BTreeMap::new();
    let mut reply = StatsReply {
        generation: rt.policy().generation,
        audit: rt.audit(),
        uptime_seconds: rt.uptime().as_secs_f64(),
        docker_sync: extras.docker_sync,
        modules: policies(rt),
        datapath: rt.datapath().name().to_string(),
        ..StatsReply::default()
    };
    for s in snaps {
        for &(r, n) in &s.drops {
            drops[r.index()] += n;
        }
        reply.flows.entries += s.flows.entries;
        reply.flows.inserts += s.flows.inserts;
        reply.flows.evictions += s.flows.evictions;
        reply.flows.expirations += s.flows.expirations;
        reply.flows.redecisions += s.flows.redecisions;
        add_offload(&mut reply.offload, &s.offload);
        for &(bound, n) in &s.policy_latency_buckets {
            *latency.entry(bound).or_default() += n;
        }
        reply.policy_latency_sum_ns += s.policy_latency_sum_ns;
    }
    reply.drops = drops_named(&drops);
    reply.offload.upcall_queue_drops = rt.upcall_drops().unwrap_or(0);
    reply.policy_latency_ns = latency.into_iter().collect();
    for r in rt.event_rings() {
        let e = r.stats();
        reply.events[0] += e.emitted;
        reply.events[1] += e.rate_limited;
        reply.events[2] += e.lost;
    }
    let (count, total, last) = rt.swaps();
    reply.swaps = api::SwapStats {
        count,
        seconds_sum: total.as_secs_f64(),
        last_seconds: last.as_secs_f64(),
    };
    reply.workers = workers(rt, snaps);
    reply.ports = ports;
    reply
}

fn workers(rt: &BridgeRuntime, snaps: &[CounterSnapshot]) -> Vec<WorkerStats> {
    let account = rt.frame_account().ok();
    snaps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut frames = Vec::new();
            if let Some(w) = account.as_ref().and_then(|a| a.workers.get(i)) {
                frames = vec![
                    ("free".to_string(), w.free as u64),
                    ("queued".to_string(), w.queued as u64),
                    ("fill".to_string(), w.ports.fill as u64),
                    ("rx".to_string(), w.ports.rx as u64),
                    ("tx".to_string(), w.ports.tx as u64),
                    ("completion".to_string(), w.ports.completion as u64),
                ];
            }
            if i == 0
                && let Some(a) = &account
            {
                frames.push(("spare".to_string(), a.spare as u64));
                frames.push(("in_flight".to_string(), a.in_flight as u64));
            }
            WorkerStats {
                worker: i,
                rx_packets: s.ports.iter().map(|p| p.rx_packets).sum(),
                sleep_seconds: s.sleep_ns as f64 / 1e9,
                frames,
            }
        })
        .collect()
}

fn policies(rt: &BridgeRuntime) -> Vec<PolicyInfo> {
    rt.policy()
        .user_modules
        .iter()
        .map(|m| {
            let c = m.module.counters().snapshot();
            PolicyInfo {
                name: m.module.name().to_string(),
                bytes: m.bytes,
                audit: m.audit,
                records: c.records,
                decisions: [c.accepted, c.dropped, c.rejected, c.continued],
                audit_denied: c.audit_denied,
                faults: c.traps + c.timeouts,
            }
        })
        .collect()
}

fn policy_load(rt: &mut BridgeRuntime, name: &str, audit: bool, bytes: Vec<u8>) -> Reply {
    if name.is_empty() || name.contains('/') {
        return Reply::bad_request(format!("module name {name:?}: give its file name"));
    }
    let mut modules = rt.user_modules().clone();
    if modules.contains(name) {
        return Reply::Error {
            status: 409,
            message: format!("a module called {name} is loaded already: unload it first"),
        };
    }
    if let Err(e) = modules.add_bytes(name, bytes, audit) {
        return Reply::bad_request(e.to_string());
    }
    let rules = rt.user_rules().clone();
    if let Err(e) = rt.reconfigure(rules, modules) {
        return Reply::bad_request(format!("{e}; nothing changed"));
    }
    match policies(rt).into_iter().find(|p| p.name == name) {
        Some(p) => Reply::Policy(p),
        None => Reply::Error {
            status: 500,
            message: format!("{name} was loaded but is not in the chain"),
        },
    }
}

fn policy_unload(rt: &mut BridgeRuntime, name: &str) -> Reply {
    let mut modules = rt.user_modules().clone();
    if !modules.remove(name) {
        let loaded: Vec<String> = policies(rt).into_iter().map(|p| p.name).collect();
        return Reply::not_found(format!(
            "no module called {name:?} is loaded (loaded: [{}])",
            loaded.join(", ")
        ));
    }
    let rules = rt.user_rules().clone();
    match rt.reconfigure(rules, modules) {
        Ok(_) => Reply::Done,
        Err(e) => Reply::Error {
            status: 500,
            message: format!("{e}; {name} stays loaded"),
        },
    }
}

/// The numbers behind `/metrics`, gathered from the runtime (`docker_sync`: the tracker's
/// event → snapshot latency, empty without an engine).
pub fn metrics_input(rt: &BridgeRuntime, docker_sync: LatencyHistogram) -> MetricsInput {
    // One reading of the counters for both the stats and the rule listing.
    let snaps = rt.counter_snapshots();
    let s = stats(rt, &snaps, &OwnerExtras::default());
    let containers = s
        .ports
        .iter()
        .map(|p| ContainerMetrics {
            name: p.name.clone(),
            network: p.network.clone(),
            rx_packets: p.rx_packets,
            rx_bytes: p.rx_bytes,
            tx_packets: p.tx_packets,
            tx_bytes: p.tx_bytes,
            forwarded: p.accepted,
            denied: p.denied,
            audit_denied: p.audit_denied,
            drops: p.drops.clone(),
        })
        .collect();
    let listing = rules(rt, &snaps);
    let rules = listing
        .chains
        .iter()
        .flat_map(|ch| {
            let (prefix, chain) = if ch.name == "DOCKER-USER" {
                ("u", "user")
            } else {
                ("d", "docker")
            };
            ch.rules.iter().map(move |r| RuleMetrics {
                rule: format!("{prefix}{}", r.num),
                chain: chain.to_string(),
                target: r.target.clone(),
                packets: r.packets,
            })
        })
        .collect();
    let umem = s
        .workers
        .iter()
        .flat_map(|w| {
            w.frames.iter().map(move |(place, n)| UmemFrames {
                worker: w.worker,
                place: place.clone(),
                frames: *n,
            })
        })
        .collect();
    let (count, _, _) = rt.swaps();
    MetricsInput {
        containers,
        drops: s.drops.clone(),
        rules,
        flows: FlowMetrics {
            entries: s.flows.entries,
            inserts: s.flows.inserts,
            evictions: s.flows.evictions,
            expirations: s.flows.expirations,
        },
        policy_evaluation: LatencyHistogram {
            buckets: s.policy_latency_ns.clone(),
            sum_ns: s.policy_latency_sum_ns,
        },
        policy_swaps: count,
        policy_swap_duration: rt.swap_histogram().clone(),
        policy_generation: s.generation,
        docker_sync,
        umem,
        verdict_events: VerdictEventMetrics {
            emitted: s.events[0],
            rate_limited: s.events[1],
            lost: s.events[2],
        },
        audit_mode: s.audit,
        offload: s.offload.clone(),
    }
}

/// Adds one worker's tiered-datapath counters to the reply's.
fn add_offload(o: &mut api::OffloadStats, s: &dataplane::counters::OffloadSnapshot) {
    o.upcalls += s.upcalls;
    o.installed += s.installed;
    o.applied += s.applied;
    o.refused_full += s.refused_full;
    o.failed += s.failed;
    o.reconciled += s.reconciled;
    o.kernel_forwarded += s.kernel_forwarded;
    o.kernel_forwarded_bytes += s.kernel_forwarded_bytes;
    o.kernel_dropped += s.kernel_dropped;
    let k = &s.kernel;
    let upcalls = [
        ("miss", k.upcall_miss),
        ("unparsed", k.upcall_unparsed),
        ("tcp_flags", k.upcall_flags),
        ("stale", k.upcall_stale),
        ("truncated", k.upcall_truncated),
    ];
    let failures = [
        ("upcall_failed", k.upcall_failed),
        ("redirect_failed", k.redirect_failed),
        ("unknown_port", k.unknown_port),
    ];
    for (list, items) in [
        (&mut o.kernel_upcalls, &upcalls[..]),
        (&mut o.kernel_failures, &failures[..]),
    ] {
        for &(name, n) in items {
            match list.iter_mut().find(|(r, _)| r == name) {
                Some((_, total)) => *total += n,
                None => list.push((name.to_string(), n)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_names_skip_zeros() {
        let mut d = [0u64; DropReason::COUNT];
        d[DropReason::PolicyDrop.index()] = 3;
        assert_eq!(drops_named(&d), vec![("policy_drop".to_string(), 3)]);
    }
}
