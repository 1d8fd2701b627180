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

/// What events are shown with: container names by port, rule texts by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Port id → container name (`gateway` for the gateway port).
    pub ports: BTreeMap<u16, String>,
    /// Rule id → its text.
    pub rules: Vec<String>,
}

impl Names {
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
            rule_text: if e.rule == RULE_NONE {
                "no rule matched: the default".to_string()
            } else {
                self.rules
                    .get(e.rule as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("rule {}", e.rule))
            },
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
