//! The commands that talk to a running bridgewall over its control socket: `rules
//! list|add|insert|delete`, `stats`, `policy load|unload|list`, `audit`, and the live form of
//! `trace`. Each prints for people (aligned tables, units, container names) or, with
//! `--json`, the API's answer as it came.
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use comfy_table::{CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use hyper::Method;

use crate::control::api::{
    self, AuditState, PolicyInfo, RuleEdit, RuleEditReply, RulesReply, StatsReply, TraceReport,
    TraceRequest,
};
use crate::control::{Client, ClientError};

/// A client of the socket at `path`.
pub fn client(path: &Path) -> anyhow::Result<Client> {
    Ok(Client::new(path)?)
}

fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("encoding JSON")?
    );
    Ok(())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(header.to_vec());
    t
}

/// Right-aligns the numeric columns `cols` of `t`.
fn numeric(t: &mut Table, cols: &[usize]) {
    for &c in cols {
        if let Some(col) = t.column_mut(c) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// `1234567` → `1.2M`, as iptables -v prints counts.
pub fn count(n: u64) -> String {
    human(n as f64, 1000.0, &["", "K", "M", "G", "T"])
}

/// Bytes with binary units.
pub fn bytes(n: u64) -> String {
    let s = human(n as f64, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB"]);
    if n < 1024 { format!("{n} B") } else { s }
}

fn human(mut v: f64, step: f64, units: &[&str]) -> String {
    let mut u = 0;
    while v >= step && u + 1 < units.len() {
        v /= step;
        u += 1;
    }
    if u == 0 {
        format!("{v}{}", units[0])
    } else {
        format!("{v:.1}{}", units[u])
    }
}

/// `rules list`.
pub fn rules_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let r: RulesReply = c.get(api::RULES)?;
    if json {
        return print_json(&r);
    }
    println!(
        "policy generation {}{}; user rules from {}",
        r.generation,
        if r.audit {
            " (AUDIT: verdicts counted, nothing dropped)"
        } else {
            ""
        },
        r.rules_file
    );
    for ch in &r.chains {
        println!("\nChain {} (policy {})", ch.name, ch.policy);
        let mut t = table(&[
            "num",
            "pkts",
            "bytes",
            "target",
            "prot",
            "source",
            "destination",
            "",
            "line",
            "rule",
        ]);
        for row in &ch.rules {
            t.add_row(vec![
                row.num.to_string(),
                count(row.packets),
                bytes(row.bytes),
                row.target.clone(),
                row.prot.clone(),
                row.source.clone(),
                row.destination.clone(),
                row.extra.clone(),
                row.line.map(|l| l.to_string()).unwrap_or_default(),
                row.origin.clone(),
            ]);
        }
        numeric(&mut t, &[0, 1, 2, 8]);
        if ch.rules.is_empty() {
            println!("(no rules)");
        } else {
            println!("{t}");
        }
    }
    println!(
        "\npkts/bytes: every packet that got the rule's verdict, the first of its flow or a later one by the flow's cached verdict"
    );
    Ok(())
}

/// `rules add|insert|delete`.
pub fn rules_edit(c: &Client, edit: &RuleEdit, json: bool) -> anyhow::Result<()> {
    let r: RuleEditReply = c.send(Method::POST, api::RULES, edit)?;
    if json {
        return print_json(&r);
    }
    let verb = match edit {
        RuleEdit::Append { .. } | RuleEdit::Insert { .. } => "added",
        RuleEdit::Delete { .. } | RuleEdit::DeleteLine { .. } => "removed",
    };
    println!(
        "{verb} `{}`: policy generation {} in force ({} flat user rules); saved to {}",
        r.line, r.generation, r.user_rules, r.rules_file
    );
    Ok(())
}

/// `trace` against the running instance; returns whether both evaluators agree.
pub fn trace(c: &Client, req: &TraceRequest, json: bool) -> anyhow::Result<bool> {
    let r: TraceReport = c.send(Method::POST, api::TRACE, req)?;
    if json {
        print_json(&r)?;
        return Ok(r.agree || r.by_user_module);
    }
    println!("(the running bridgewall's policy)");
    for n in &r.notes {
        println!("note: {n}");
    }
    super::trace::print_report(&r);
    Ok(r.agree || r.by_user_module)
}

/// `stats`, once or every `watch`.
pub fn stats(c: &Client, watch: Option<Duration>, json: bool) -> anyhow::Result<()> {
    let mut last: Option<StatsReply> = None;
    loop {
        let s: StatsReply = c.get(api::STATS)?;
        if json {
            println!("{}", serde_json::to_string(&s).context("encoding JSON")?);
        } else {
            if watch.is_some() {
                // Clear the screen and home the cursor, as `watch` does.
                print!("\x1b[2J\x1b[H");
            }
            print_stats(&s, last.as_ref());
        }
        let Some(every) = watch else {
            return Ok(());
        };
        last = Some(s);
        std::thread::sleep(every);
    }
}

fn rate(now: u64, then: Option<u64>, secs: f64) -> String {
    match then {
        Some(t) if secs > 0.0 => format!(
            "{}/s",
            count(((now.saturating_sub(t)) as f64 / secs) as u64)
        ),
        _ => "-".into(),
    }
}

/// The tiered datapath's line: what the kernel forwarded itself, what came up and why.
fn print_offload(o: &crate::control::api::OffloadStats) {
    let list = |l: &[(String, u64)]| {
        l.iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("{r} {}", count(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "tiered datapath: kernel forwarded {} packets ({}), dropped {}; {} flows offloaded; {} upcalls ({}){}{}{}",
        count(o.kernel_forwarded),
        bytes(o.kernel_forwarded_bytes),
        count(o.kernel_dropped),
        count(o.installed),
        count(o.upcalls),
        list(&o.kernel_upcalls),
        if o.upcall_queue_drops > 0 {
            format!("; upcall queue dropped {}", count(o.upcall_queue_drops))
        } else {
            String::new()
        },
        if o.refused_full > 0 {
            format!("; kernel flow table full {} times", count(o.refused_full))
        } else {
            String::new()
        },
        match list(&o.kernel_failures) {
            f if f.is_empty() => String::new(),
            f => format!("; kernel failures: {f}"),
        }
    );
}

fn print_stats(s: &StatsReply, last: Option<&StatsReply>) {
    let secs = last.map_or(0.0, |l| s.uptime_seconds - l.uptime_seconds);
    println!(
        "policy generation {}, up {:.0} s{}; flows {} live ({} evicted, {} expired); swaps {} (last {:.1} ms)",
        s.generation,
        s.uptime_seconds,
        if s.audit { ", AUDIT mode" } else { "" },
        s.flows.entries,
        s.flows.evictions,
        s.flows.expirations,
        s.swaps.count,
        s.swaps.last_seconds * 1e3
    );
    let mut t = table(&[
        "container",
        "network",
        "port",
        "in pkts",
        "in bytes",
        "out pkts",
        "out bytes",
        "rate in",
        "accepted",
        "denied",
        "audit",
        "flows",
        "drops",
    ]);
    for p in &s.ports {
        let before = last.and_then(|l| l.ports.iter().find(|q| q.port == p.port));
        t.add_row(vec![
            p.name.clone(),
            p.network.clone(),
            p.port.to_string(),
            count(p.rx_packets),
            bytes(p.rx_bytes),
            count(p.tx_packets),
            bytes(p.tx_bytes),
            rate(p.rx_packets, before.map(|b| b.rx_packets), secs),
            count(p.accepted),
            count(p.denied),
            count(p.audit_denied),
            p.flows.to_string(),
            p.drops
                .iter()
                .map(|(r, n)| format!("{r} {}", count(*n)))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    numeric(&mut t, &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    println!("{t}");
    let mut w = table(&["worker", "rx pkts", "rate", "busy", "frames by place"]);
    for k in &s.workers {
        let prev = last.and_then(|l| l.workers.get(k.worker));
        let before = prev.map(|b| b.rx_packets);
        // Busy share over the last interval (or since start): the time it did not sleep.
        let (slept, over) = match prev {
            Some(p) if secs > 0.0 => (k.sleep_seconds - p.sleep_seconds, secs),
            _ => (k.sleep_seconds, s.uptime_seconds),
        };
        let busy = if over > 0.0 {
            format!("{:.0}%", (100.0 * (1.0 - slept / over)).clamp(0.0, 100.0))
        } else {
            "-".into()
        };
        w.add_row(vec![
            k.worker.to_string(),
            count(k.rx_packets),
            rate(k.rx_packets, before, secs),
            busy,
            k.frames
                .iter()
                .map(|(p, n)| format!("{p} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    numeric(&mut w, &[0, 1, 2, 3]);
    println!("{w}");
    if !s.drops.is_empty() {
        println!(
            "drops: {}",
            s.drops
                .iter()
                .map(|(r, n)| format!("{r} {}", count(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if s.datapath == "tiered" {
        print_offload(&s.offload);
    }
    let batches: u64 = s.policy_latency_ns.iter().map(|(_, n)| n).sum();
    if batches > 0 {
        println!(
            "policy evaluation: {} batches, mean {:.2} µs per batch",
            count(batches),
            s.policy_latency_sum_ns as f64 / batches as f64 / 1e3
        );
    }
    if let Some((n, mean, max)) = s.docker_sync {
        println!("Docker event → snapshot: {n} events, median {mean:.1} ms, max {max:.1} ms");
    }
    if !s.modules.is_empty() {
        print_policies(&s.modules);
    }
}

/// `policy list`.
pub fn policy_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v: Vec<PolicyInfo> = c.get(api::POLICIES)?;
    if json {
        return print_json(&v);
    }
    if v.is_empty() {
        println!("no user policy modules loaded (the compiled Docker policy decides alone)");
    } else {
        print_policies(&v);
    }
    Ok(())
}

fn print_policies(v: &[PolicyInfo]) {
    let mut t = table(&[
        "module",
        "size",
        "mode",
        "records",
        "accept",
        "drop",
        "reject",
        "continue",
        "audit-denied",
        "faults",
    ]);
    for p in v {
        t.add_row(vec![
            p.name.clone(),
            bytes(p.bytes as u64),
            if p.audit { "audit" } else { "enforce" }.to_string(),
            count(p.records),
            count(p.decisions[0]),
            count(p.decisions[1]),
            count(p.decisions[2]),
            count(p.decisions[3]),
            count(p.audit_denied),
            count(p.faults),
        ]);
    }
    numeric(&mut t, &[1, 3, 4, 5, 6, 7, 8, 9]);
    println!("{t}");
}

/// `policy load FILE`.
pub fn policy_load(c: &Client, file: &Path, audit: bool, json: bool) -> anyhow::Result<()> {
    let module =
        std::fs::read(file).with_context(|| format!("reading the module {}", file.display()))?;
    let name = crate::runtime::policy::module_name(&file.display().to_string());
    let path = format!(
        "{}?name={}&audit={audit}",
        api::POLICIES,
        url_component(&name)
    );
    let info: Option<PolicyInfo> = c.send_bytes(Method::POST, &path, module)?;
    let info = info.context("the server answered nothing")?;
    if json {
        return print_json(&info);
    }
    println!(
        "{} loaded ({}, {}): it runs before the compiled Docker policy",
        info.name,
        bytes(info.bytes as u64),
        if info.audit {
            "audit: verdicts counted, not enforced"
        } else {
            "enforcing"
        }
    );
    Ok(())
}

/// `policy unload NAME`.
pub fn policy_unload(c: &Client, name: &str) -> anyhow::Result<()> {
    let path = format!("{}/{}", api::POLICIES, url_component(name));
    let _: Option<serde_json::Value> = c.send_bytes(Method::DELETE, &path, Vec::new())?;
    println!("{name} unloaded");
    Ok(())
}

/// `audit on|off`.
pub fn audit(c: &Client, on: bool) -> anyhow::Result<()> {
    let r: AuditState = c.send(Method::PUT, api::AUDIT, &AuditState { audit: on })?;
    println!(
        "audit mode {}",
        if r.audit {
            "ON: verdicts are counted and shown by monitor and stats, everything is forwarded"
        } else {
            "OFF: verdicts are enforced"
        }
    );
    Ok(())
}

/// Percent-encodes what is not unreserved in a URL path segment or query value.
pub fn url_component(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Whether `e` says no bridgewall runs at the socket.
pub fn not_running(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::NotRunning(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bytes_read_like_iptables_v() {
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1.2M");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0MiB");
    }

    #[test]
    fn url_components_are_escaped() {
        assert_eq!(url_component("my policy.wasm"), "my%20policy.wasm");
        assert_eq!(url_component("a/b&c"), "a%2Fb%26c");
    }
}
