//! The simulated bridge over faulty links: every host's port wrapped in a
//! [`Lossy`](dataplane::phy::lossy::Lossy) decorator that drops, corrupts, reorders and delays
//! frames, reproducibly from a seed. Whatever the faults:
//!
//! * every frame of the memory stays accounted for (free, in a port — held by the decorator
//!   included — or queued), and the bridge settles;
//! * icc=false holds: no frame that the policy denies reaches a container. A corrupted frame
//!   is either dropped (with a counted reason) or, when it still parses, judged as what it
//!   now is — so every frame a container receives, read as it arrives, is one the policy
//!   admits (or a reply of an admitted flow, or an L2 frame switched without policy);
//! * every frame the engine took in was forwarded or dropped with a counted reason;
//! * with every fault off, the results are exactly the plain bridge's.
//!
//! Corruption is injected on the receive side only in the policy checks: a frame corrupted
//! on its way out was judged before the wire broke it, so reading it after says nothing of
//! the policy. Transmit-side corruption is covered by the accounting property.
use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use dataplane::counters::DropReason;
use dataplane::phy::lossy::{Faults, Lossy, LossyCounters};
use dataplane::phy::memory::MemoryPort;
use dataplane::policy::{Action, FnPolicy, PacketRecord, Policy};
use dataplane::sim::*;
use dataplane::wire::{self, Fragment, L3, Tuple};
use proptest::prelude::*;
use rules_wasm::abi::tcp_flags::{ACK, PSH, SYN};

const ROUNDS: u16 = 8;

/// The flows the policy admitted, as it saw their first packets (after the receive-side
/// faults, before the transmit-side ones).
type Admitted = Arc<Mutex<HashSet<Tuple>>>;

/// icc=false with a link ([`icc_false_link`]), recording what it admits.
fn icc_false() -> (Box<dyn Policy>, Admitted) {
    let admitted = Admitted::default();
    let seen = Arc::clone(&admitted);
    let policy = FnPolicy::new(1, move |r: &PacketRecord| {
        let v = icc_false_link(r);
        if v.action == Action::Accept {
            seen.lock().unwrap().insert(Tuple {
                src: r.src,
                dst: r.dst,
                src_port: r.src_port,
                dst_port: r.dst_port,
                proto: r.protocol,
            });
        }
        v
    });
    (Box::new(policy), admitted)
}

/// What hosts send in round `r`: a linked connection and its reply, denied attempts between
/// containers (TCP, UDP, IPv6, fragments), gateway traffic both ways, a broadcast and ARP.
fn traffic(r: u16) -> Vec<(Host, Vec<u8>)> {
    let sport = 40000 + r;
    let mut t = vec![
        (PARENT, tcp_frame(PARENT, CHILD, sport, 80, SYN, &[])),
        (CHILD, tcp_frame(CHILD, PARENT, 80, sport, SYN | ACK, &[])),
        (
            PARENT,
            tcp_frame(PARENT, CHILD, sport, 80, ACK | PSH, &[r as u8; 100]),
        ),
        (OTHER, tcp_frame(OTHER, CHILD, 41000 + r, 80, SYN, &[])),
        (PARENT, tcp_frame(PARENT, CHILD, 42000 + r, 22, SYN, &[])),
        (CHILD, tcp_frame(CHILD, PARENT, 43000 + r, 80, SYN, &[])),
        (
            OTHER,
            udp_frame(OTHER, PARENT.mac, PARENT.ip, 5000 + r, 53, b"q"),
        ),
        (
            PARENT,
            udp_frame(PARENT, GW.mac, GW.ip, 5000 + r, 53, b"dns"),
        ),
        (GW, ping(GW, OTHER, r, false)),
        (OTHER, ping(OTHER, GW, r, true)),
        (
            OTHER,
            udp_frame(OTHER, BROADCAST, [255; 4], 68, 67, b"discover"),
        ),
        (CHILD, arp(CHILD, BROADCAST, PARENT, false)),
        (PARENT, udp6_frame(PARENT, CHILD, 6000 + r, 6000, b"v6")),
    ];
    let from_gw = udp_frame(GW, CHILD.mac, CHILD.ip, 7000 + r, 7000, &[7; 3000]);
    t.extend(fragments(&from_gw, 1500).into_iter().map(|f| (GW, f)));
    let denied = udp_frame(OTHER, CHILD.mac, CHILD.ip, 8000 + r, 8000, &[8; 3000]);
    t.extend(fragments(&denied, 1500).into_iter().map(|f| (OTHER, f)));
    t
}

/// Plays every round on `lab`, checking the frame accounting after each; returns what each
/// host received, in order.
fn play<P: SimPort>(lab: &mut Lab<P>) -> [Vec<Vec<u8>>; 4] {
    let mut got: [Vec<Vec<u8>>; 4] = Default::default();
    for r in 0..ROUNDS {
        for (h, f) in traffic(r) {
            lab.inject(h, &f);
        }
        lab.advance(std::time::Duration::from_millis(10));
        lab.run();
        assert_eq!(lab.frames_accounted(), lab.total_frames, "round {r}");
        for (i, frames) in lab.take_all().into_iter().enumerate() {
            got[i].extend(frames);
        }
    }
    // Past the fragment timeout, held fragments whose first never came are dropped by the
    // sweep of the next batch received (the sweep walks 64 of 1,024 slots per batch, and the faults may drop the frame that
    // triggers it).
    lab.advance(std::time::Duration::from_secs(60));
    for id in 0..200 {
        if lab.engine.fragments_held() == 0 {
            break;
        }
        // Corrupted, the frame may itself become a fragment held from now: time moves on.
        lab.advance(std::time::Duration::from_secs(31));
        lab.inject(GW, &ping(GW, OTHER, 60000 + id, false));
        lab.run();
    }
    lab.take_all();
    assert_eq!(lab.frames_accounted(), lab.total_frames, "at the end");
    assert_eq!(lab.engine.fragments_held(), 0);
    got
}

fn lossy_lab(seed: u64, rx: Faults, tx: Faults) -> (Lab<Lossy<MemoryPort>>, Admitted) {
    let (policy, admitted) = icc_false();
    let lab = Lab::wrapped(LabConfig::default(), policy, |h, port| {
        Lossy::new(port, seed ^ (u64::from(h.port) << 32))
            .with_rx(rx)
            .with_tx(tx)
    });
    (lab, admitted)
}

fn counters(lab: &Lab<Lossy<MemoryPort>>) -> LossyCounters {
    let mut sum = LossyCounters::default();
    for (_, p) in &lab.ports {
        let c = p.counters();
        for (s, c) in [(&mut sum.rx, c.rx), (&mut sum.tx, c.tx)] {
            s.dropped += c.dropped;
            s.corrupted += c.corrupted;
            s.delayed += c.delayed;
            s.reordered += c.reordered;
            s.unheld += c.unheld;
        }
    }
    sum
}

fn is_container(a: &[u8; 16]) -> bool {
    [PARENT, CHILD, OTHER].iter().any(|h| *a == mapped(h.ip))
        || [PARENT, CHILD, OTHER].iter().any(|h| *a == v6(*h))
}

/// Checks that every frame containers received is one the policy lets through, read as it
/// arrived: a packet between two containers passes only as a linked connection (parent →
/// child TCP 80), a reply of a flow the policy admitted, a later fragment or an ICMP error
/// of such a flow. Returns a description of the first one that is not.
fn policy_held(got: &[Vec<Vec<u8>>; 4], admitted: &Admitted) -> Result<(), String> {
    let admitted = admitted.lock().unwrap();
    let linked = |t: &Tuple| {
        t.src == mapped(PARENT.ip) && t.dst == mapped(CHILD.ip) && t.proto == 6 && t.dst_port == 80
    };
    // Either way of a flow the policy admitted.
    let of_admitted = |t: &Tuple| admitted.contains(t) || admitted.contains(&reverse(t));
    // A packet of the address pair and protocol of an admitted flow (fragments carry no
    // ports).
    let pair_admitted = |t: &Tuple| {
        admitted.iter().any(|a| {
            a.proto == t.proto
                && ((a.src, a.dst) == (t.src, t.dst) || (a.src, a.dst) == (t.dst, t.src))
        })
    };
    for (port, frames) in got.iter().enumerate() {
        for f in frames {
            let p = wire::parse(f)
                .map_err(|e| format!("port {port} got a malformed frame ({e:?}): {f:02x?}"))?;
            if !matches!(p.l3, L3::Ipv4 | L3::Ipv6) || p.is_neighbour_discovery() {
                continue; // switched without policy, like ARP
            }
            if !is_container(&p.src) || !is_container(&p.dst) {
                continue; // the gateway's traffic, or broadcasts: not icc's business
            }
            let t = Tuple {
                src: p.src,
                dst: p.dst,
                src_port: p.src_port,
                dst_port: p.dst_port,
                proto: p.proto,
            };
            let ok = match p.fragment {
                Fragment::Later => pair_admitted(&t),
                _ if p.is_icmp_error() => p.inner.is_some_and(|i| linked(&i) || of_admitted(&i)),
                _ => linked(&t) || of_admitted(&t),
            };
            if !ok {
                return Err(format!("port {port} got a denied packet: {p:?}"));
            }
        }
    }
    Ok(())
}

fn reverse(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        dst: t.src,
        src_port: t.dst_port,
        dst_port: t.src_port,
        proto: t.proto,
    }
}

/// Every frame the engine received was forwarded or dropped with a counted reason: received =
/// dropped + forwarded, where a flood counts once however many copies it made.
fn nothing_vanished<P: SimPort>(lab: &Lab<P>) -> Result<(), String> {
    let s = lab.engine.counters().snapshot();
    let received: u64 = s.ports.iter().map(|p| p.rx_packets).sum();
    let transmitted: u64 = s.ports.iter().map(|p| p.tx_packets).sum();
    let forwarded = transmitted - s.flood_copies;
    if received == s.total_drops() + forwarded {
        Ok(())
    } else {
        Err(format!(
            "received {received}, dropped {}, forwarded {forwarded} (transmitted {transmitted}, flood copies {}): {:?}",
            s.total_drops(),
            s.flood_copies,
            s.drops
        ))
    }
}

#[test]
fn the_plain_bridge_passes_the_checks() {
    let (policy, admitted) = icc_false();
    let mut lab = Lab::new(policy);
    let got = play(&mut lab);
    policy_held(&got, &admitted).unwrap();
    nothing_vanished(&lab).unwrap();
    // The scenario delivers: the linked connection both ways, gateway traffic, L2.
    assert!(!got[usize::from(CHILD.port)].is_empty());
    assert!(!got[usize::from(PARENT.port)].is_empty());
    assert!(!got[usize::from(GW.port)].is_empty());
    let s = lab.engine.counters().snapshot();
    assert!(s.total_drops() > 0, "and denies");
}

/// The policy check is not vacuous: a bridge that admits everything fails it.
#[test]
fn the_check_catches_a_bridge_without_icc() {
    let mut lab = Lab::new(Box::new(dataplane::policy::ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    let got = play(&mut lab);
    let err = policy_held(&got, &Admitted::default()).unwrap_err();
    assert!(err.contains("denied packet"), "{err}");
    nothing_vanished(&lab).unwrap();
}

/// Without faults a `Lossy` port is the port it wraps: the same frames, in the same order,
/// and the same counters.
#[test]
fn with_faults_off_the_results_equal_the_plain_bridge() {
    let mut plain = Lab::new(icc_false().0);
    let want = play(&mut plain);
    for seed in [1, 7, u64::MAX] {
        let (mut lossy, _) = lossy_lab(seed, Faults::NONE, Faults::NONE);
        let got = play(&mut lossy);
        assert!(got == want, "seed {seed}: other frames delivered");
        let mut a = plain.engine.counters().snapshot();
        let mut b = lossy.engine.counters().snapshot();
        for s in [&mut a, &mut b] {
            s.policy_latency_buckets.clear();
            s.policy_latency_sum_ns = 0;
        }
        assert_eq!(a, b, "seed {seed}");
        assert_eq!(counters(&lossy), LossyCounters::default());
    }
}

/// One run per fault alone, with a fixed seed: each is injected (the property below is not
/// vacuous) and the checks hold.
#[test]
fn each_fault_alone_is_injected_and_the_checks_hold() {
    let faults = [
        Faults {
            drop_pct: 30,
            ..Faults::NONE
        },
        Faults {
            corrupt_pct: 50,
            ..Faults::NONE
        },
        Faults {
            delay_pct: 50,
            delay_calls: 3,
            ..Faults::NONE
        },
        Faults::REORDER,
    ];
    for rx in faults {
        let (mut lab, admitted) = lossy_lab(42, rx, Faults::NONE);
        let got = play(&mut lab);
        policy_held(&got, &admitted).unwrap_or_else(|e| panic!("{rx:?}: {e}"));
        nothing_vanished(&lab).unwrap_or_else(|e| panic!("{rx:?}: {e}"));
        let c = counters(&lab).rx;
        let injected = [
            (rx.drop_pct > 0, c.dropped),
            (rx.corrupt_pct > 0, c.corrupted),
            (rx.delay_pct > 0, c.delayed),
            (rx.reorder, c.reordered),
        ];
        for (on, n) in injected {
            assert_eq!(on, n > 0, "{rx:?}: {c:?}");
        }
        assert_eq!(c.unheld, 0);
    }
}

/// Corruption is judged as what the frame became: among many corrupted runs, some frames
/// are dropped as malformed or spoofed — and none of the rest breaks the policy.
#[test]
fn corrupted_frames_are_dropped_with_a_reason_or_judged_as_they_are() {
    let rx = Faults {
        corrupt_pct: 100,
        ..Faults::NONE
    };
    let mut reasons = HashSet::new();
    for seed in 1..=20 {
        let (mut lab, admitted) = lossy_lab(seed, rx, Faults::NONE);
        let got = play(&mut lab);
        policy_held(&got, &admitted).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        nothing_vanished(&lab).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (r, _) in lab.engine.counters().snapshot().drops {
            reasons.insert(r);
        }
    }
    assert!(
        reasons
            .iter()
            .any(|r| matches!(r, DropReason::Malformed(_))),
        "{reasons:?}"
    );
    assert!(reasons.contains(&DropReason::SpoofedSource), "{reasons:?}");
}

/// Faults on the way out, corruption included: the frame accounting still holds.
#[test]
fn transmit_faults_keep_every_frame_accounted() {
    let tx = Faults {
        drop_pct: 20,
        corrupt_pct: 20,
        delay_pct: 30,
        delay_calls: 2,
        reorder: true,
    };
    for seed in 1..=5 {
        let (mut lab, _) = lossy_lab(seed, Faults::NONE, tx);
        play(&mut lab);
        nothing_vanished(&lab).unwrap();
        let c = counters(&lab).tx;
        assert!(
            c.dropped > 0 && c.corrupted > 0 && c.delayed > 0 && c.reordered > 0,
            "{c:?}"
        );
    }
}

/// A `Lossy` port composes with the worker's port trait: it can wrap a worker's ports.
#[test]
fn a_lossy_port_is_a_worker_port() {
    fn worker_port<P: dataplane::worker::WorkerPort<dataplane::afxdp::Umem>>() {}
    worker_port::<Lossy<MemoryPort>>();
    worker_port::<Lossy<dataplane::afxdp::XdpPort>>();
}

fn faults(max_drop: u8, max_corrupt: u8) -> impl Strategy<Value = Faults> {
    (
        0..=max_drop,
        0..=max_corrupt,
        0..=50u8,
        1..4u32,
        any::<bool>(),
    )
        .prop_map(
            |(drop_pct, corrupt_pct, delay_pct, delay_calls, reorder)| Faults {
                drop_pct,
                corrupt_pct,
                delay_pct,
                delay_calls,
                reorder,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any seed, any mix of faults on the way in, loss/delay/reordering on the way out:
    /// every frame accounted for, the policy held, nothing vanished uncounted.
    #[test]
    fn under_any_faults_frames_stay_accounted_and_the_policy_holds(
        seed in any::<u64>(),
        rx in faults(50, 60),
        tx in faults(30, 0),
    ) {
        let (mut lab, admitted) = lossy_lab(seed, rx, tx);
        let got = play(&mut lab);
        prop_assert_eq!(lab.frames_accounted(), lab.total_frames);
        if let Err(e) = policy_held(&got, &admitted) {
            prop_assert!(false, "{}", e);
        }
        if let Err(e) = nothing_vanished(&lab) {
            prop_assert!(false, "{}", e);
        }
    }
}
