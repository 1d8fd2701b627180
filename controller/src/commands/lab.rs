//! `bridgewall lab`: the Docker-free lab with the dataplane in front of its bridges, its
//! walkthrough step by step (what was expected, what happened, which rule decided and how
//! its counter moved), the counters, then a clean teardown.
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use rules_wasm::abi::proto;

use crate::commands::trace::{End, hops};
use crate::control::session::ControlPlane;
use crate::lab::{Expect, Lab, NETWORKS_TOML, Proto, StepResult, WALKTHROUGH_TOML};
use crate::runtime::policy::{PacketSpec, TraceAnswer};
use crate::runtime::{BridgeRuntime, RuntimeOptions};
use crate::state::HostState;

/// The lab file `bridgewall lab` runs: `file` when given, else the networks walkthrough
/// when `networks` is set, else the seed's walkthrough; with the name messages give it.
pub fn lab_text(file: Option<&Path>, networks: bool) -> anyhow::Result<(String, String)> {
    Ok(match file {
        Some(p) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the lab file {}", p.display()))?,
            p.display().to_string(),
        ),
        None if networks => (
            NETWORKS_TOML.to_string(),
            "the embedded networks walkthrough".to_string(),
        ),
        None => (
            WALKTHROUGH_TOML.to_string(),
            "the embedded walkthrough".to_string(),
        ),
    })
}

/// The packets the dataplane judges for a lab step, in order, and how the traffic gets
/// there; `None` when the step's traffic does not cross a bridge (e.g. an outside host
/// talking to the lab host). A step between two networks crosses the dataplane twice: out
/// through its network's gateway, then (routed by the host) in through the other's.
pub fn step_packets(
    lab: &Lab,
    from: &str,
    to: &str,
    p: Proto,
    port: u16,
) -> Option<(Vec<PacketSpec>, &'static str)> {
    let state = lab.state();
    let protocol = match p {
        Proto::Tcp => proto::TCP,
        Proto::Udp => proto::UDP,
    };
    if to == "host" {
        // Only a published port crosses a bridge: the lab's proxy (like docker-proxy)
        // connects to the container from its network's address.
        let (net, target, cport) = state.networks.iter().find_map(|n| {
            n.network.containers.iter().find_map(|c| {
                c.published
                    .iter()
                    .find(|p| p.host_port == port && p.proto == protocol)
                    .map(|p| (n, c, p.container_port))
            })
        })?;
        let spec = PacketSpec {
            src: *net.network.gateway_ips.first()?,
            dst: *target.ips.first()?,
            protocol,
            dst_port: cport,
            in_port: net.network.gateway_port,
            out_port: target.port,
        };
        return Some((vec![spec], "via the published-port proxy"));
    }
    let dst_ip = IpAddr::V4(lab.resolve(from, to).ok()?);
    let dst = end_at(state, to, dst_ip);
    let src = if from == "host" {
        let net = state.network(dst.network.as_deref()?)?;
        End {
            name: "host".into(),
            ip: *net.network.gateway_ips.first()?,
            network: dst.network.clone(),
            port: None,
        }
    } else if let Some(c) = lab.spec().container(from) {
        // The interface the container's routing picks: on the destination's subnet, else
        // the default route's.
        let on_subnet = lab
            .spec()
            .networks
            .iter()
            .find(|n| matches!(dst_ip, IpAddr::V4(ip) if n.contains(ip)) && c.is_on(&n.name));
        let net = on_subnet.or_else(|| lab.spec().route_network(c))?;
        let att = state.network(&net.name)?.attachment(&c.name)?;
        End {
            name: c.name.clone(),
            ip: IpAddr::V4(c.ip_on(&net.name)?),
            network: Some(net.name.clone()),
            port: Some(att.port),
        }
    } else {
        let o = lab.outside_hosts().iter().find(|o| o.name == from)?;
        End {
            name: o.name.clone(),
            ip: IpAddr::V4(o.ip),
            network: None,
            port: None,
        }
    };
    let packets = hops(state, &src, &dst, protocol, port).ok()?;
    let path = if packets.len() > 1 {
        "between networks: out through one gateway, in through the other"
    } else {
        ""
    };
    Some((packets, path))
}

/// The end a lab address stands for: a container's interface, a gateway (the host on that
/// network), or an address outside every network.
fn end_at(state: &HostState, name: &str, ip: IpAddr) -> End {
    for n in &state.networks {
        if let Some(c) = n.network.containers.iter().find(|c| c.ips.contains(&ip)) {
            return End {
                name: c.name.clone(),
                ip,
                network: Some(n.network.name.clone()),
                port: Some(c.port),
            };
        }
        if n.network.gateway_ips.contains(&ip) {
            return End {
                name: "host".into(),
                ip,
                network: Some(n.network.name.clone()),
                port: None,
            };
        }
    }
    End {
        name: name.to_string(),
        ip,
        network: None,
        port: None,
    }
}

/// The crossing that decides a step: the first the policy does not accept, else the
/// last; a crossing where the compiled module and the reference disagree is returned
/// first, so a disagreement is never hidden behind an accept.
fn deciding(rt: &BridgeRuntime, packets: &[PacketSpec]) -> anyhow::Result<Option<TraceAnswer>> {
    let mut last = None;
    for p in packets {
        let t = rt.trace(p)?;
        let stop = !t.agree() || t.verdict() != "accept";
        last = Some(t);
        if stop {
            break;
        }
    }
    Ok(last)
}

/// One step with its explanation.
#[derive(Debug)]
pub struct ExplainedStep {
    /// The probe's result.
    pub result: StepResult,
    /// The trace of the crossing that decided, if the step crosses a bridge (see
    /// [`step_packets`]).
    pub trace: Option<TraceAnswer>,
    /// How the traffic crosses the bridges ("via the published-port proxy"), if notable.
    pub path: &'static str,
    /// How many new decisions the deciding rule made during the step.
    pub hits: u64,
}

/// Runs the lab's steps against the dataplane, tracing each.
pub fn run_explained(
    lab: &Lab,
    rt: &BridgeRuntime,
    timeout: Duration,
    stop: &AtomicBool,
    mut on_step: impl FnMut(&ExplainedStep),
) -> anyhow::Result<Vec<ExplainedStep>> {
    let mut out = Vec::new();
    for (i, step) in lab.spec().steps.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let packets = step_packets(lab, &step.from, &step.to, step.proto, step.port);
        let trace = match &packets {
            Some((p, _)) => deciding(rt, p)?,
            None => None,
        };
        let rule = trace.as_ref().map(|t| t.reference_rule);
        let before = rule.map(|r| rt.counters().rule_hits(r)).unwrap_or(0);
        let outcome = lab
            .connect(&step.from, &step.to, step.proto, step.port, timeout)
            .with_context(|| format!("step {}", i + 1))?;
        let after = rule.map(|r| rt.counters().rule_hits(r)).unwrap_or(0);
        let e = ExplainedStep {
            result: StepResult {
                number: i + 1,
                step: step.clone(),
                outcome,
            },
            trace,
            path: packets.map(|(_, p)| p).unwrap_or("does not cross a bridge"),
            hits: after.saturating_sub(before),
        };
        on_step(&e);
        out.push(e);
    }
    Ok(out)
}

/// Prints a step as it finishes: the probe line, then why.
pub fn print_step(e: &ExplainedStep) {
    let r = &e.result;
    let expected = match r.step.expect {
        Expect::Pass => "pass",
        Expect::Drop => "drop",
    };
    println!(
        "step {:>2}  {} -> {} {}/{}: expected {expected}, got {}  {}",
        r.number,
        r.step.from,
        r.step.to,
        r.step.port,
        r.step.proto,
        r.outcome,
        if r.as_expected() {
            "[ok]"
        } else {
            "[NOT AS EXPECTED]"
        }
    );
    match &e.trace {
        Some(t) => println!(
            "         decided by {} rule {}: {} -> {}{}; counter +{}{}",
            t.chain.map_or("(default)".to_string(), |c| c.to_string()),
            rule_label(t),
            t.origin,
            t.verdict(),
            if e.path.is_empty() {
                String::new()
            } else {
                format!(" ({})", e.path)
            },
            e.hits,
            if t.agree() {
                ""
            } else {
                "  [compiled module and reference DISAGREE]"
            }
        ),
        None => println!("         ({})", e.path),
    }
    println!("         why: {}", r.step.why);
}

fn rule_label(t: &TraceAnswer) -> String {
    if t.reference_rule == rules_wasm::abi::RULE_NONE {
        "-".into()
    } else {
        format!("#{}", t.reference_rule)
    }
}

/// The closing table of steps.
pub fn steps_table(steps: &[ExplainedStep]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "step",
        "from",
        "to",
        "port",
        "expected",
        "outcome",
        "ok",
        "deciding rule",
        "hits +",
    ]);
    for e in steps {
        let r = &e.result;
        t.add_row(vec![
            r.number.to_string(),
            r.step.from.clone(),
            r.step.to.clone(),
            format!("{}/{}", r.step.port, r.step.proto),
            match r.step.expect {
                Expect::Pass => "pass".into(),
                Expect::Drop => "drop".into(),
            },
            r.outcome.to_string(),
            if r.as_expected() {
                "yes".into()
            } else {
                "NO".into()
            },
            e.trace.as_ref().map_or_else(
                || e.path.to_string(),
                |t| {
                    format!(
                        "{} {} {}",
                        t.chain.map_or("-".into(), |c| c.to_string()),
                        rule_label(t),
                        t.origin
                    )
                },
            ),
            e.trace
                .as_ref()
                .map_or(String::new(), |_| e.hits.to_string()),
        ]);
    }
    t
}

/// Options of `bridgewall lab`.
#[derive(Debug)]
pub struct LabRun {
    /// The lab file's text and where it came from.
    pub text: String,
    /// Where the text came from (for messages).
    pub origin: String,
    /// Probe timeout.
    pub timeout: Duration,
    /// Keep everything up until Ctrl-C after the steps.
    pub hold: bool,
    /// While held: serve the control API on this socket.
    pub control_socket: Option<std::path::PathBuf>,
    /// While held: serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// Dataplane options (workers, state directory...).
    pub options: RuntimeOptions,
}

/// The whole `bridgewall lab` command.
pub fn lab(run: LabRun, stop: Arc<AtomicBool>) -> anyhow::Result<bool> {
    let spec = crate::lab::LabSpec::from_toml(&run.text, &run.origin)?;
    println!("building the lab from {} ...", run.origin);
    let lab = Lab::build(spec)?;
    println!("namespaces: {}", lab.netns_names().join(", "));
    crate::print::print_state(lab.state());
    let mut options = run.options;
    options.user_rules =
        crate::runtime::policy::UserRules::from_lines(lab.user_rules(), &run.origin);
    if !lab.user_rules().is_empty() {
        println!("user rules (evaluated first, like DOCKER-USER):");
        for r in lab.user_rules() {
            println!("  {r}");
        }
    }
    let host = lab.host_netns().context("the lab has no host namespace")?;
    let mut rt = BridgeRuntime::start(host, lab.state().clone(), options)
        .context("starting the dataplane on the lab's bridges")?;
    let taken: Vec<String> = rt
        .gateways()
        .map(|(net, bridge, ifname, port)| {
            format!("{net} on {bridge} (gateway {ifname}, port {port})")
        })
        .collect();
    println!(
        "bridgewall took {} in {}: {} container ports, policy generation {} ({} rules, compiled to {} bytes of Wasm)",
        taken.join(", "),
        host.label(),
        rt.attached().count(),
        rt.policy().generation,
        rt.policy().ruleset.rules.len(),
        rt.policy().compiled.wasm.len(),
    );
    println!(
        "every frame between the lab's containers, and between them and the host/outside, now crosses bridgewall's AF_XDP dataplane\n"
    );
    let steps = run_explained(&lab, &rt, run.timeout, &stop, print_step)?;
    println!("\n{}", steps_table(&steps));
    let ok = steps.iter().filter(|e| e.result.as_expected()).count();
    let agree = steps
        .iter()
        .filter_map(|e| e.trace.as_ref())
        .all(TraceAnswer::agree);
    println!(
        "{ok}/{} steps as expected; traces: the compiled Wasm module and the reference interpreter {}",
        steps.len(),
        if agree {
            "agree on every step"
        } else {
            "DISAGREE on some step"
        }
    );
    println!(
        "\n{}",
        rt.counters().tables(
            rt.state(),
            Some(rt.policy()),
            &crate::commands::run::gateway_names(&rt)
        )
    );
    if run.hold && !stop.load(Ordering::Relaxed) {
        let mut control =
            ControlPlane::start(&rt, run.control_socket.as_deref(), run.metrics, None)
                .context("serving the control API")?;
        if let Some(p) = control.socket() {
            println!("control API on {}", p.display());
        }
        if let Some(a) = run.metrics {
            println!("Prometheus metrics on http://{a}/metrics");
        }
        println!("lab is up with the dataplane; Ctrl-C to tear it down");
        while !stop.load(Ordering::Relaxed) {
            control.tick(&mut rt);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let report = rt.stop().context("stopping the dataplane")?;
    let back: Vec<String> = report
        .restore
        .iter()
        .map(|r| format!("{}: {}", r.bridge, r.returned.join(", ")))
        .collect();
    println!("dataplane stopped; ports back on {}", back.join("; "));
    let names = lab.netns_names();
    lab.teardown().context("tearing the lab down")?;
    println!("lab removed ({} namespaces)", names.len());
    Ok(ok == steps.len() && agree)
}
