//! The operator's view of the engine, on the simulated bridge: audit mode forwards what the
//! policy would drop and counts it; verdict events reach a subscriber (and only one), with
//! the right ports, rule and action, within their rate limit, and counted when the ring is
//! full; drops are counted by the port they came in on; an audited module of a two-stage
//! Wasm chain decides nothing but counts what it would have denied. No root needed.
mod wasm_support;

use dataplane::counters::DropReason;
use dataplane::engine::EngineConfig;
use dataplane::events::{EVENT_RING_CAPACITY, VerdictEvent};
use dataplane::phy::memory::MemoryPortConfig;
use dataplane::policy::{
    Action, FlowState, FnPolicy, PacketRecord, Policy, RULE_NONE, VerdictRecord,
};
use dataplane::reject::RejectWith;
use dataplane::sim::*;
use dataplane::wasm::PolicyChain;
use dataplane::wire::Malformed;
use rules_wasm::abi::tcp_flags::{ACK, SYN};
use rules_wasm::compiler::compile;
use rules_wasm::model::{Chain, Match, Rule, RuleSet, Target};
use std::time::Duration;

fn icc_false() -> Box<dyn Policy> {
    Box::new(FnPolicy::new(1, icc_false_link))
}

fn drained(lab: &Lab) -> Vec<VerdictEvent> {
    let mut out = Vec::new();
    lab.engine.events().drain(&mut out);
    out
}

#[test]
fn audit_forwards_what_enforce_drops_and_counts_it() {
    let mut lab = Lab::new(icc_false());
    // Enforced: parent → other is container-to-container without a link (rule 3).
    let syn = tcp_frame(PARENT, OTHER, 40000, 80, SYN, &[]);
    assert!(receivers(&lab.send(PARENT, &syn)).is_empty());
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::PolicyDrop), 1);
    assert_eq!((s.audit_denied, s.port(PARENT.port).denied), (0, 1));

    // Audited: the next SYN of the same (denied, cached) flow goes back to the policy, is
    // denied again by rule 3, and passes; so does a new flow.
    lab.engine.set_audit(true);
    assert!(lab.engine.audit());
    assert_eq!(receivers(&lab.send(PARENT, &syn)), vec![OTHER.port]);
    let other_flow = tcp_frame(PARENT, OTHER, 40001, 22, SYN, &[]);
    assert_eq!(receivers(&lab.send(PARENT, &other_flow)), vec![OTHER.port]);
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::PolicyDrop), 1, "no new drop");
    assert_eq!(s.audit_denied, 2);
    let p = s.port(PARENT.port);
    assert_eq!((p.denied, p.audit_denied, p.accepted), (1, 2, 0));
    assert_eq!(
        lab.engine.counters().rule_hits(3),
        3,
        "the deciding rule still counts"
    );

    // The flow is cached as admitted: its later packets and its replies pass without the
    // policy.
    let records = s.policy_records;
    let data = tcp_frame(PARENT, OTHER, 40000, 80, ACK, &[1, 2, 3]);
    assert_eq!(receivers(&lab.send(PARENT, &data)), vec![OTHER.port]);
    let reply = tcp_frame(OTHER, PARENT, 80, 40000, SYN | ACK, &[]);
    assert_eq!(receivers(&lab.send(OTHER, &reply)), vec![PARENT.port]);
    assert_eq!(lab.engine.counters().snapshot().policy_records, records);

    // Audit off: the audited flow goes back to the policy at its next packet and is dropped.
    lab.engine.set_audit(false);
    assert!(receivers(&lab.send(PARENT, &data)).is_empty());
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.policy_records, records + 1);
    assert_eq!(s.drops(DropReason::PolicyDrop), 2);
    assert_eq!(s.audit_denied, 2);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn audit_from_the_config_sends_no_reject_answer() {
    let rejecting = Box::new(FnPolicy::new(1, |_: &PacketRecord| VerdictRecord {
        action: Action::Reject,
        rule: 5,
        reject: RejectWith::TcpReset,
    }));
    let config = EngineConfig {
        audit: true,
        ..EngineConfig::default()
    };
    let port_config = MemoryPortConfig {
        fill_share: 256,
        ..MemoryPortConfig::default()
    };
    let mut lab = Lab::with(config, port_config, 4096, rejecting);
    let _watch = lab.engine.events().subscribe();
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    // Forwarded to the child; no RST back to the parent.
    assert_eq!(receivers(&lab.send(PARENT, &syn)), vec![CHILD.port]);
    let s = lab.engine.counters().snapshot();
    assert_eq!(
        (s.audit_denied, s.total_drops(), s.reject_tcp_reset),
        (1, 0, 0)
    );
    let events = drained(&lab);
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!((e.action, e.rule, e.audit), (Action::Reject, 5, true));
    assert_eq!(
        e.reason,
        Some(DropReason::PolicyReject),
        "what would have happened"
    );
}

#[test]
fn events_appear_only_with_a_subscriber() {
    let mut lab = Lab::new(icc_false());
    let ring = lab.engine.events();
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    assert_eq!((ring.len(), ring.emitted(), ring.rate_limited()), (0, 0, 0));

    let watch = ring.subscribe();
    assert_eq!(ring.subscribers(), 1);
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40001, 80, SYN, &[]));
    assert_eq!(ring.emitted(), 1);
    drop(watch);
    assert_eq!(ring.subscribers(), 0);
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40002, 80, SYN, &[]));
    assert_eq!(ring.emitted(), 1, "nobody listens any more");
}

#[test]
fn events_carry_the_ports_rule_and_action() {
    let mut lab = Lab::new(icc_false());
    let _watch = lab.engine.events().subscribe();
    // Accepted by the link (rule 1), denied (rule 3), then a cached denial.
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    let denied = tcp_frame(PARENT, OTHER, 40001, 443, SYN, &[]);
    lab.send(PARENT, &denied);
    lab.send(PARENT, &denied);
    // A spoofed source on the parent's port.
    let spoofer = Host {
        ip: [172, 17, 0, 99],
        ..PARENT
    };
    lab.inject(PARENT, &tcp_frame(spoofer, CHILD, 40002, 80, SYN, &[]));
    lab.run();
    // Audited.
    lab.engine.set_audit(true);
    lab.send(CHILD, &tcp_frame(CHILD, OTHER, 5000, 53, SYN, &[]));

    let events = drained(&lab);
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.in_port, e.out_port, e.rule, e.action, e.reason, e.audit))
        .collect();
    assert_eq!(
        summary,
        vec![
            (PARENT.port, CHILD.port, 1, Action::Accept, None, false),
            (
                PARENT.port,
                OTHER.port,
                3,
                Action::Drop,
                Some(DropReason::PolicyDrop),
                false
            ),
            (
                PARENT.port,
                OTHER.port,
                3,
                Action::Drop,
                Some(DropReason::FlowDenied),
                false
            ),
            (
                PARENT.port,
                CHILD.port,
                RULE_NONE,
                Action::Drop,
                Some(DropReason::SpoofedSource),
                false
            ),
            (
                CHILD.port,
                OTHER.port,
                3,
                Action::Drop,
                Some(DropReason::PolicyDrop),
                true
            ),
        ]
    );
    let e = events[1];
    assert_eq!((e.src, e.dst), (mapped(PARENT.ip), mapped(OTHER.ip)));
    assert_eq!((e.src_port, e.dst_port, e.protocol), (40001, 443, 6));
    assert_eq!((e.ip_version, e.tcp_flags), (4, SYN));
    assert_eq!((e.flow_state, e.generation), (FlowState::New, 1));
    assert!(e.at_unix_ns > 0);
}

#[test]
fn a_continue_is_reported_as_the_default_drop() {
    let undecided = Box::new(FnPolicy::new(7, |_: &PacketRecord| VerdictRecord::CONTINUE));
    let mut lab = Lab::new(undecided);
    let _watch = lab.engine.events().subscribe();
    lab.send(
        PARENT,
        &udp_frame(PARENT, CHILD.mac, CHILD.ip, 53, 53, &[0; 8]),
    );
    let events = drained(&lab);
    assert_eq!(events.len(), 1);
    let e = events[0];
    assert_eq!(
        (e.action, e.rule, e.generation),
        (Action::Drop, RULE_NONE, 7)
    );
    assert_eq!((e.reason, e.protocol), (Some(DropReason::DefaultDrop), 17));
}

#[test]
fn events_are_rate_limited_and_counted_when_the_ring_is_full() {
    let accept_all = Box::new(FnPolicy::new(1, |_: &PacketRecord| accept(1)));
    let mut lab = Lab::new(accept_all);
    let ring = lab.engine.events();
    let _watch = ring.subscribe();
    // One batch time: a burst of 5, nothing more.
    ring.set_rate(1000, 5);
    for i in 0..20 {
        lab.inject(PARENT, &tcp_frame(PARENT, CHILD, 10000 + i, 80, SYN, &[]));
    }
    lab.run();
    assert_eq!(
        (ring.emitted(), ring.rate_limited(), ring.lost()),
        (5, 15, 0)
    );
    // A millisecond later, one more token.
    lab.advance(Duration::from_millis(1));
    for i in 0..3 {
        lab.inject(PARENT, &tcp_frame(PARENT, CHILD, 11000 + i, 80, SYN, &[]));
    }
    lab.run();
    assert_eq!((ring.emitted(), ring.rate_limited()), (6, 17));
    assert_eq!(drained(&lab).len(), 6);

    // No limit to speak of, and nobody draining: the ring fills and the rest are lost.
    ring.set_rate(u32::MAX, u32::MAX);
    let extra = 100;
    let flows = EVENT_RING_CAPACITY as u16 + extra;
    for chunk in 0..flows.div_ceil(200) {
        for i in chunk * 200..((chunk + 1) * 200).min(flows) {
            lab.inject(PARENT, &tcp_frame(PARENT, CHILD, 20000 + i, 80, SYN, &[]));
        }
        lab.run();
        lab.take_all();
    }
    assert_eq!(ring.len(), EVENT_RING_CAPACITY);
    assert_eq!(ring.lost(), u64::from(extra));
    assert_eq!(ring.emitted(), 6 + EVENT_RING_CAPACITY as u64);
    assert_eq!(drained(&lab).len(), EVENT_RING_CAPACITY);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn drops_decisions_and_flows_are_counted_by_port() {
    let mut lab = Lab::new(icc_false());
    // Port 1 (parent): one accepted flow, one spoofed frame.
    lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]));
    let spoofer = Host {
        ip: [172, 17, 0, 99],
        ..PARENT
    };
    lab.send(PARENT, &tcp_frame(spoofer, CHILD, 40001, 80, SYN, &[]));
    // Port 2 (child): a truncated frame.
    lab.send(CHILD, &[0u8; 10]);
    // Port 3 (other): a denied flow, twice (the second a cached denial).
    let denied = tcp_frame(OTHER, CHILD, 5000, 22, SYN, &[]);
    lab.send(OTHER, &denied);
    lab.send(OTHER, &denied);

    let s = lab.engine.counters().snapshot();
    let (parent, child, other) = (s.port(PARENT.port), s.port(CHILD.port), s.port(OTHER.port));
    assert_eq!(parent.dropped(), 1);
    assert_eq!(parent.drops(DropReason::SpoofedSource), 1);
    assert_eq!((parent.accepted, parent.denied, parent.flows), (1, 0, 1));
    assert_eq!(
        child.drop_reasons().collect::<Vec<_>>(),
        vec![(DropReason::Malformed(Malformed::Truncated), 1)]
    );
    assert_eq!(other.drops(DropReason::PolicyDrop), 1);
    assert_eq!(other.drops(DropReason::FlowDenied), 1);
    assert_eq!((other.accepted, other.denied, other.flows), (0, 1, 1));
    let by_port: u64 = s.ports.iter().map(|p| p.dropped()).sum();
    assert_eq!(by_port, s.total_drops(), "every drop here has its port");
    assert!(
        s.ports.iter().all(|p| p.port != GW.port),
        "idle ports are left out"
    );

    // The latency histogram saw every policy call.
    let calls: u64 = s.policy_latency_buckets.iter().map(|(_, n)| n).sum();
    assert_eq!(calls, s.policy_batches);
    assert!(s.policy_latency_sum_ns > 0);
    assert!(s.policy_latency_buckets.windows(2).all(|w| w[0].0 < w[1].0));

    // A port removed takes its flows, and its gauge, with it.
    lab.engine.remove_port(CHILD.port).unwrap();
    let s = lab.engine.counters().snapshot();
    assert_eq!(
        (s.port(PARENT.port).flows, s.port(OTHER.port).flows),
        (0, 0)
    );
}

/// A compiled policy accepting everything by its rule 0: the "Docker policy" stage.
fn compiled_accept() -> Vec<u8> {
    let rule = Rule::new(
        Chain::Docker,
        Match::default(),
        Target::Accept,
        "accept all",
    );
    compile(&RuleSet::new(vec![rule], 1, Action::Drop))
        .unwrap()
        .wasm
}

#[test]
fn an_audited_module_decides_nothing_and_counts_its_denials() {
    let rt = wasm_support::runtime();
    let drop_all = rt
        .load(&wasm_support::constant(Action::Drop, 9), "drop-all")
        .unwrap();
    let docker = rt.load(&compiled_accept(), "docker").unwrap();

    // Enforced, the first module drops everything.
    let chain = PolicyChain::instantiate(1, &[drop_all.clone(), docker.clone()]).unwrap();
    assert!(!chain.audited(0));
    let mut lab = Lab::new(Box::new(chain));
    assert!(
        receivers(&lab.send(PARENT, &tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]))).is_empty()
    );
    assert_eq!(lab.engine.counters().rule_hits(9), 1);

    // Audited, it still runs, but the compiled policy decides; LOG-free chain, so only the
    // module counters tell.
    let mut chain = PolicyChain::instantiate(2, &[drop_all.clone(), docker.clone()]).unwrap();
    chain.set_audit(0, true);
    chain.set_audit(5, true); // no such stage: ignored
    assert!(chain.audited(0) && !chain.audited(1));
    drop(lab.engine.set_policy(Box::new(chain)));
    let flows = 3;
    for i in 0..flows {
        let got = lab.send(PARENT, &tcp_frame(PARENT, CHILD, 41000 + i, 80, SYN, &[]));
        assert_eq!(receivers(&got), vec![CHILD.port]);
    }
    let user = drop_all.counters().snapshot();
    assert_eq!((user.dropped, user.audit_denied), (1 + 3, 3));
    let compiled = docker.counters().snapshot();
    assert_eq!((compiled.accepted, compiled.audit_denied), (3, 0));
    let c = lab.engine.counters();
    assert_eq!((c.rule_hits(9), c.rule_hits(0)), (1, 3));
    // Not the engine's audit: nothing was denied as far as the engine knows.
    assert_eq!(c.snapshot().audit_denied, 0);
}

#[test]
fn every_packet_of_a_flow_counts_for_the_rule_that_decided_it() {
    let mut lab = Lab::new(icc_false());
    // parent → child:80 is the link (rule 1): its SYN is decided, the rest hit the flow.
    let syn = tcp_frame(PARENT, CHILD, 40000, 80, SYN, &[]);
    let data = tcp_frame(PARENT, CHILD, 40000, 80, ACK, &[7; 100]);
    let reply = tcp_frame(CHILD, PARENT, 80, 40000, SYN | ACK, &[]);
    for f in [&syn, &data, &data] {
        assert_eq!(receivers(&lab.send(PARENT, f)), vec![CHILD.port]);
    }
    assert_eq!(receivers(&lab.send(CHILD, &reply)), vec![PARENT.port]);
    // parent → other: denied by rule 3, twice (the second by the cached denial).
    let denied = tcp_frame(PARENT, OTHER, 40001, 22, SYN, &[]);
    lab.send(PARENT, &denied);
    lab.send(PARENT, &denied);
    let s = lab.engine.counters().snapshot();
    let bytes = (syn.len() + 2 * data.len() + reply.len()) as u64;
    let of = |id: u32| s.rule_traffic.iter().find(|t| t.0 == id).copied();
    assert_eq!(of(1), Some((1, 4, bytes)), "{:?}", s.rule_traffic);
    assert_eq!(of(3), Some((3, 2, 2 * denied.len() as u64)));
    // Decisions stay one per flow.
    assert_eq!(
        (
            lab.engine.counters().rule_hits(1),
            lab.engine.counters().rule_hits(3)
        ),
        (1, 1)
    );
}

#[test]
fn a_fail_closed_batch_does_not_deny_the_flows_judged_in_it() {
    use dataplane::policy::RULE_FAIL_CLOSED;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The first batch fails (a module trapped: every record gets the fail-closed verdict);
    // afterwards the policy works and admits everything.
    let failing = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&failing);
    let policy = Box::new(FnPolicy::new(1, move |_: &PacketRecord| {
        if f.load(Ordering::Relaxed) {
            VerdictRecord::new(Action::Drop, RULE_FAIL_CLOSED)
        } else {
            VerdictRecord::new(Action::Accept, 1)
        }
    }));
    let mut lab = Lab::new(policy);
    let syn = tcp_frame(PARENT, CHILD, 41000, 80, SYN, &[]);
    assert!(
        receivers(&lab.send(PARENT, &syn)).is_empty(),
        "failed closed"
    );
    failing.store(false, Ordering::Relaxed);
    let records = lab.engine.counters().snapshot().policy_records;
    assert_eq!(
        receivers(&lab.send(PARENT, &syn)),
        vec![CHILD.port],
        "the retried SYN is judged again, not denied by a cached fail-closed verdict"
    );
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.policy_records, records + 1);
    assert_eq!(s.drops(DropReason::FlowDenied), 0);
}
