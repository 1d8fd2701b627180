//! What the running dataplane has done, summed over its workers, for people: per-container
//! traffic, per-rule decisions with the rule's text, drop reasons, and the latency from a
//! published snapshot to the policy enforcing it.
use std::time::Duration;

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use dataplane::counters::{DropReason, Snapshot as CounterSnapshot};
use hdrhistogram::Histogram;

use crate::docker::LatencySummary;
use crate::state::HostState;

use super::policy::PolicyBuild;

/// The counters of every worker added up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterTotals {
    /// Per port: (port id, rx packets, tx packets).
    pub ports: Vec<(u16, u64, u64)>,
    /// Per rule id: decisions.
    pub rules: Vec<(u32, u64)>,
    /// Decisions no rule made (the default action).
    pub rule_default: u64,
    /// Per drop reason: frames.
    pub drops: Vec<(DropReason, u64)>,
    /// Flows re-decided after a policy swap.
    pub redecisions: u64,
    /// Later IP fragments that followed their first fragment.
    pub fragments_forwarded: u64,
    /// Later IP fragments held until their first fragment came.
    pub fragments_held: u64,
    /// REJECT answers: (counter name, count), as [`CounterSnapshot::reject_answers`] names them.
    pub reject_answers: Vec<(&'static str, u64)>,
}

impl CounterTotals {
    /// Sums worker snapshots.
    pub fn sum(snaps: &[CounterSnapshot]) -> CounterTotals {
        let mut t = CounterTotals::default();
        for s in snaps {
            for p in &s.ports {
                match t.ports.iter_mut().find(|(id, _, _)| *id == p.port) {
                    Some(e) => {
                        e.1 += p.rx_packets;
                        e.2 += p.tx_packets;
                    }
                    None => t.ports.push((p.port, p.rx_packets, p.tx_packets)),
                }
            }
            for &(id, n) in &s.rules {
                match t.rules.iter_mut().find(|(r, _)| *r == id) {
                    Some(e) => e.1 += n,
                    None => t.rules.push((id, n)),
                }
            }
            for &(reason, n) in &s.drops {
                match t.drops.iter_mut().find(|(r, _)| *r == reason) {
                    Some(e) => e.1 += n,
                    None => t.drops.push((reason, n)),
                }
            }
            t.rule_default += s.rule_default;
            t.redecisions += s.flows.redecisions;
            t.fragments_forwarded += s.fragments_forwarded;
            t.fragments_held += s.fragments_held;
            for (name, n) in s.reject_answers() {
                match t.reject_answers.iter_mut().find(|(r, _)| *r == name) {
                    Some(e) => e.1 += n,
                    None => t.reject_answers.push((name, n)),
                }
            }
        }
        t.ports.sort_unstable();
        t.rules.sort_unstable();
        t
    }

    /// Decisions made by rule `id` so far.
    pub fn rule_hits(&self, id: u32) -> u64 {
        if id == rules_wasm::abi::RULE_NONE {
            return self.rule_default;
        }
        self.rules
            .iter()
            .find(|(r, _)| *r == id)
            .map_or(0, |(_, n)| *n)
    }

    /// Frames dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(|(_, n)| n).sum()
    }

    /// Frames dropped because a policy said so.
    pub fn policy_drops(&self) -> u64 {
        self.drops
            .iter()
            .filter(|(r, _)| {
                matches!(
                    r,
                    DropReason::PolicyDrop
                        | DropReason::PolicyReject
                        | DropReason::DefaultDrop
                        | DropReason::FlowDenied
                )
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// The per-port, per-rule and drop tables. `gateways` names each network's gateway
    /// port: (port id, network, the gateway pair's inner end).
    pub fn tables(
        &self,
        state: &HostState,
        policy: Option<&PolicyBuild>,
        gateways: &[(u16, String, String)],
    ) -> String {
        let mut out = String::new();
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
            "port",
            "member",
            "interface",
            "rx packets",
            "tx packets",
        ]);
        for &(id, rx, tx) in &self.ports {
            let gateway = gateways.iter().find(|(port, _, _)| *port == id);
            let (who, ifname) = match gateway {
                Some((_, network, ifname)) => (
                    format!("gateway of {network} (host, outside)"),
                    ifname.clone(),
                ),
                None => state.attachments().find(|a| a.port == id).map_or(
                    ("(gone)".to_string(), String::new()),
                    |a| {
                        (
                            format!("{} on {}", a.container, a.network),
                            a.host_ifname.clone(),
                        )
                    },
                ),
            };
            t.add_row(vec![
                id.to_string(),
                who,
                ifname,
                rx.to_string(),
                tx.to_string(),
            ]);
        }
        out.push_str(&format!("traffic per port:\n{t}\n"));
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
            "rule",
            "chain",
            "target",
            "new flows decided",
            "rule text",
        ]);
        for &(id, n) in &self.rules {
            let (chain, target, text) = match policy.and_then(|p| p.ruleset.rule(id)) {
                Some(r) => (
                    r.chain.to_string(),
                    r.target.to_string(),
                    policy.map(|p| p.origin(id)).unwrap_or_default(),
                ),
                None => (
                    String::new(),
                    String::new(),
                    "(a rule of an earlier policy)".into(),
                ),
            };
            t.add_row(vec![id.to_string(), chain, target, n.to_string(), text]);
        }
        if self.rule_default > 0 {
            t.add_row(vec![
                "-".into(),
                "-".into(),
                "default".into(),
                self.rule_default.to_string(),
                "no rule matched (or no policy yet): fail-closed drop".into(),
            ]);
        }
        out.push_str(&format!("policy decisions per rule:\n{t}\n"));
        if let Some(p) = policy.filter(|p| !p.logs.is_empty()) {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
                "LOG rule",
                "packets reached",
                "logged",
                "not logged (rate limit)",
            ]);
            for l in &p.logs {
                let c = l.module.counters().snapshot();
                t.add_row(vec![
                    l.origin.clone(),
                    c.accepted.to_string(),
                    c.logs.to_string(),
                    c.logs_suppressed.to_string(),
                ]);
            }
            out.push_str(&format!("LOG rules (this policy generation):\n{t}\n"));
        }
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(vec!["drop reason", "frames"]);
        for &(r, n) in &self.drops {
            t.add_row(vec![r.name().to_string(), n.to_string()]);
        }
        if self.drops.is_empty() {
            t.add_row(vec!["(none)".to_string(), "0".to_string()]);
        }
        out.push_str(&format!("drops:\n{t}"));
        let answers: Vec<String> = self
            .reject_answers
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} {n}"))
            .collect();
        if !answers.is_empty() {
            out.push_str(&format!("\nREJECT answers: {}", answers.join(", ")));
        }
        if self.fragments_forwarded + self.fragments_held > 0 {
            out.push_str(&format!(
                "\nIP fragments: {} later fragments followed their first ({} of them held until it came)",
                self.fragments_forwarded, self.fragments_held
            ));
        }
        out
    }
}

/// Latency from a snapshot's publication to the dataplane enforcing it (ports attached,
/// policy swapped), in microseconds.
#[derive(Debug)]
pub struct EnforceLatency {
    hist: Histogram<u64>,
}

impl Default for EnforceLatency {
    fn default() -> Self {
        EnforceLatency {
            // 1 µs .. 1 h, 3 significant digits; these bounds are valid constants.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
        }
    }
}

impl EnforceLatency {
    /// Records one measurement.
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        // In range by the clamp above.
        let _ = self.hist.record(us);
    }

    /// Count, min, percentiles and max.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.hist;
        let us = Duration::from_micros;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: us(h.min()),
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
        }
    }
}
