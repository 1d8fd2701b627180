//! Verdict events from the workers' rings to `monitor` readers, with names: one pump drains
//! every ring while anyone listens (the workers emit nothing otherwise) and broadcasts each
//! event as a [`VerdictLine`]; readers that fall behind lose events and are told how many.
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use dataplane::events::{EventRing, Subscription, VerdictEvent};
use rules_wasm::abi::RULE_NONE;
use tokio::sync::broadcast;

use super::api::{MonitorLine, VerdictLine};
use super::server::PUMP_PERIOD;

/// Policy generations whose rule texts are kept for events still in flight after a swap.
const GENERATIONS_KEPT: usize = 8;

/// What events are shown with: container names by port, rule texts by id per policy
/// generation (an event names the rule of the generation that decided it, not of the one
/// in force when it is read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Port id → container name (`gateway` for the gateway port).
    pub ports: BTreeMap<u16, String>,
    /// (generation, rule id → its text), oldest first.
    pub rules: Vec<(u64, Arc<[String]>)>,
}

impl Names {
    /// `newer`'s ports and rules, keeping the rule texts of the last few generations seen.
    pub fn merged(&self, newer: Names) -> Names {
        let mut rules: Vec<(u64, Arc<[String]>)> = self
            .rules
            .iter()
            .filter(|(g, _)| newer.rules.iter().all(|(n, _)| n != g))
            .cloned()
            .collect();
        rules.extend(newer.rules);
        rules.sort_by_key(|(g, _)| *g);
        let excess = rules.len().saturating_sub(GENERATIONS_KEPT);
        rules.drain(..excess);
        Names {
            ports: newer.ports,
            rules,
        }
    }

    /// The text of rule `id` of generation `generation`.
    fn rule_text(&self, generation: u64, id: u32) -> String {
        if id == RULE_NONE {
            return "no rule matched: the default".to_string();
        }
        if id == dataplane::policy::RULE_FAIL_CLOSED {
            return "a policy module failed: fail-closed verdict".to_string();
        }
        self.rules
            .iter()
            .find(|(g, _)| *g == generation)
            .and_then(|(_, r)| r.get(id as usize).cloned())
            .unwrap_or_else(|| format!("rule {id} of generation {generation}"))
    }

    /// Whether `name` is a port's name.
    pub fn knows(&self, name: &str) -> bool {
        self.ports.values().any(|n| n == name)
    }

    fn port(&self, id: u16) -> String {
        self.ports
            .get(&id)
            .cloned()
            .unwrap_or_else(|| format!("port {id}"))
    }

    /// An address (with its port for TCP and UDP) as plain text.
    fn endpoint(addr: [u8; 16], port: u16, proto: u8) -> String {
        let ip = rules_wasm::abi::bytes_addr(addr);
        match (ip, matches!(proto, 6 | 17)) {
            (IpAddr::V6(_), true) => format!("[{ip}]:{port}"),
            (IpAddr::V4(_), true) => format!("{ip}:{port}"),
            (_, false) => ip.to_string(),
        }
    }

    /// The event `e` with names, for people and scripts.
    pub fn line(&self, e: &VerdictEvent) -> VerdictLine {
        VerdictLine {
            at_unix_ns: e.at_unix_ns,
            verdict: crate::runtime::policy::action_name(e.action).to_string(),
            audit: e.audit,
            reason: e.reason.map(|r| r.name().to_string()),
            from: self.port(e.in_port),
            to: self.port(e.out_port),
            src: Self::endpoint(e.src, e.src_port, e.protocol),
            dst: Self::endpoint(e.dst, e.dst_port, e.protocol),
            proto: rules_wasm::model::proto_name(e.protocol),
            rule: (e.rule != RULE_NONE).then_some(e.rule),
            rule_text: self.rule_text(e.generation, e.rule),
            generation: e.generation,
        }
    }
}

/// Whether a reader asking for `drops` only and/or one `container` wants `v`.
pub(super) fn wanted(v: &VerdictLine, drops: bool, container: Option<&str>) -> bool {
    if drops && v.verdict == "accept" {
        return false;
    }
    container.is_none_or(|c| v.from == c || v.to == c)
}

/// Drains the rings while anyone listens.
pub(super) struct EventPump {
    rings: Vec<Arc<EventRing>>,
    out: broadcast::Sender<MonitorLine>,
    names: Arc<RwLock<Names>>,
}

impl EventPump {
    pub(super) fn new(
        rings: Vec<Arc<EventRing>>,
        out: broadcast::Sender<MonitorLine>,
        names: Arc<RwLock<Names>>,
    ) -> Self {
        Self { rings, out, names }
    }

    /// Runs until the server's runtime stops.
    pub(super) async fn run(self) {
        // Held while anyone listens: the workers emit only while a subscription exists.
        let mut subscriptions: Vec<Subscription> = Vec::new();
        let mut buf = Vec::with_capacity(1024);
        let mut missed_seen: u64 = 0;
        let mut tick = tokio::time::interval(PUMP_PERIOD);
        loop {
            tick.tick().await;
            let listening = self.out.receiver_count() > 0;
            if listening == subscriptions.is_empty() {
                subscriptions = if listening {
                    self.rings.iter().map(EventRing::subscribe).collect()
                } else {
                    Vec::new()
                };
                missed_seen = self.missed();
            }
            if subscriptions.is_empty() {
                continue;
            }
            buf.clear();
            for s in &subscriptions {
                s.drain(&mut buf);
            }
            buf.sort_by_key(|e| e.at_unix_ns);
            let missed = self.missed();
            if missed > missed_seen {
                let _ = self.out.send(MonitorLine::Lost {
                    events: missed - missed_seen,
                });
                missed_seen = missed;
            }
            let Ok(names) = self.names.read() else {
                continue;
            };
            for e in &buf {
                let _ = self.out.send(MonitorLine::Verdict(Box::new(names.line(e))));
            }
        }
    }

    fn missed(&self) -> u64 {
        self.rings.iter().map(|r| r.rate_limited() + r.lost()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(generation: u64, rules: &[&str]) -> Names {
        Names {
            ports: BTreeMap::from([(0, "gateway".to_string())]),
            rules: vec![(
                generation,
                rules
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .into(),
            )],
        }
    }

    #[test]
    fn an_event_names_the_rule_of_the_generation_that_decided_it() {
        let mut n = Names::default();
        n = n.merged(names(1, &["-s A -j DROP"]));
        n = n.merged(names(2, &["-s B -j DROP"]));
        assert_eq!(n.rule_text(1, 0), "-s A -j DROP");
        assert_eq!(n.rule_text(2, 0), "-s B -j DROP");
        assert_eq!(n.rule_text(2, RULE_NONE), "no rule matched: the default");
        for g in 3..20 {
            n = n.merged(names(g, &["x"]));
        }
        assert_eq!(n.rules.len(), GENERATIONS_KEPT);
        assert_eq!(
            n.rule_text(1, 0),
            "rule 0 of generation 1",
            "forgotten, said so"
        );
        // Publishing the same generation again does not duplicate it.
        n = n.merged(names(19, &["x"]));
        assert_eq!(n.rules.len(), GENERATIONS_KEPT);
    }
}
