//! Two worker threads over one shared UMEM: frames whose egress port belongs to the other
//! worker cross as descriptors, a policy swap reaches both workers between batches, and
//! every frame is accounted for afterwards. No root needed: the UMEM is anonymous memory
//! and the ports are in-memory.

mod worker_support;

use dataplane::afxdp::{PollConfig, Umem, UmemConfig};
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::phy::Port;
use dataplane::policy::{Action, ConstPolicy, FnPolicy, PacketRecord, Policy, VerdictRecord};
use dataplane::sim::*;
use dataplane::worker::{Dataplane, DataplaneConfig};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use worker_support::SharedPort;

fn port_config(h: Host) -> PortConfig {
    PortConfig {
        id: h.port,
        network: 0,
        macs: vec![h.mac],
        ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip))],
        is_gateway: h == GW,
        complete_checksums: false,
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

const FRAMES: u32 = 2048;

fn start(
    policy: impl FnMut(usize) -> Box<dyn Policy>,
) -> (Dataplane<Umem, SharedPort>, Vec<SharedPort>) {
    let umem = Umem::new(UmemConfig {
        frame_count: FRAMES,
        frame_size: FRAME_SIZE as u32,
    })
    .unwrap();
    let config = DataplaneConfig {
        workers: 2,
        engine: EngineConfig::default(),
        // Short sleeps: in-memory ports cannot wake a sleeping worker.
        poll: PollConfig {
            spin_rounds: 200,
            sleep_timeout: Duration::from_millis(1),
        },
        ..Default::default()
    };
    let mut dp = Dataplane::start(config, umem, policy).unwrap();
    let ports: Vec<SharedPort> = HOSTS.iter().map(|_| SharedPort::new()).collect();
    // PARENT and GW on worker 0, CHILD and OTHER on worker 1: PARENT → CHILD crosses workers.
    for (h, p) in HOSTS.iter().zip(&ports) {
        let owner = usize::from(h.port == CHILD.port || h.port == OTHER.port);
        dp.add_port(port_config(*h), p.clone(), owner).unwrap();
    }
    (dp, ports)
}

fn accept_all(_: usize) -> Box<dyn Policy> {
    Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    })
}

#[test]
fn frames_cross_workers_as_descriptors_and_are_all_accounted_for() {
    let (dp, ports) = start(accept_all);
    let n = 3000;
    let mut injected = 0;
    for i in 0..n {
        let f = tcp_frame(PARENT, CHILD, 1000 + (i % 200) as u16, 80, 0x10, &[7; 100]);
        assert!(ports[PARENT.port as usize].inject(&f));
        injected += 1;
        // Bursts of 64, then wait for the worker to take them, like a paced sender: the
        // test is about frames crossing workers, not about overrunning a receive ring.
        if injected % 64 == 0 {
            wait_until("the parent's wire to drain", || {
                ports[PARENT.port as usize].0.lock().unwrap().inbox_len() == 0
            });
        }
    }
    let mut got = 0;
    wait_until("all frames to reach the child", || {
        got += ports[CHILD.port as usize].take_sent().len();
        got >= injected
    });
    assert_eq!(got, injected);
    // The reverse direction: child (worker 1) to parent (worker 0).
    for i in 0..500u16 {
        let f = tcp_frame(CHILD, PARENT, 80, 1000 + (i % 200), 0x10, &[9; 100]);
        assert!(ports[CHILD.port as usize].inject(&f));
        if i % 64 == 63 {
            wait_until("the child's wire to drain", || {
                ports[CHILD.port as usize].0.lock().unwrap().inbox_len() == 0
            });
        }
    }
    let mut back = 0;
    wait_until("replies to reach the parent", || {
        back += ports[PARENT.port as usize].take_sent().len();
        back >= 500
    });
    // Quiescent: every frame of the UMEM is in exactly one place.
    wait_until("frame accounting to balance", || {
        dp.frames().unwrap().total() == FRAMES as usize
    });
    let rx: u64 = dp
        .counters()
        .iter()
        .map(|c| c.snapshot().port(PARENT.port).rx_packets)
        .sum();
    assert_eq!(rx, n as u64);
    let drops: u64 = dp
        .counters()
        .iter()
        .map(|c| c.snapshot().total_drops())
        .sum();
    assert_eq!(drops, 0, "no frame may be lost crossing workers");
    assert_eq!(
        ports[PARENT.port as usize]
            .0
            .lock()
            .unwrap()
            .stats()
            .rx_dropped,
        0
    );
    drop(dp.stop());
}

#[test]
fn a_policy_swap_reaches_every_worker_and_redecides_flows() {
    let (dp, ports) = start(accept_all);
    let f = tcp_frame(PARENT, CHILD, 4000, 80, 0x02, &[]);
    assert!(ports[PARENT.port as usize].inject(&f));
    wait_until("the first SYN to pass", || {
        !ports[CHILD.port as usize].take_sent().is_empty()
    });

    let deny = |_: usize| -> Box<dyn Policy> {
        Box::new(FnPolicy::new(2, |_: &PacketRecord| {
            VerdictRecord::new(Action::Drop, 42)
        }))
    };
    dp.set_policy(deny).unwrap();
    assert!(
        dp.wait_generation(2, Duration::from_secs(10)),
        "both workers take generation 2"
    );
    assert!(dp.counters().iter().all(|c| c.policy.generation.get() == 2));
    // The flow was admitted by generation 1; generation 2 re-decides it at its next packet.
    wait_until("the denial to be counted", || {
        assert!(ports[PARENT.port as usize].inject(&tcp_frame(
            PARENT,
            CHILD,
            4000,
            80,
            0x10,
            &[1]
        )));
        std::thread::sleep(Duration::from_millis(5));
        dp.counters().iter().map(|c| c.rule_hits(42)).sum::<u64>() > 0
    });
    ports[CHILD.port as usize].take_sent();
    // From now on nothing of that flow passes.
    for _ in 0..20 {
        assert!(ports[PARENT.port as usize].inject(&tcp_frame(
            PARENT,
            CHILD,
            4000,
            80,
            0x10,
            &[1]
        )));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(ports[CHILD.port as usize].take_sent().is_empty());
    wait_until("frame accounting to balance", || {
        dp.frames().unwrap().total() == FRAMES as usize
    });
    drop(dp.stop());
}

#[test]
fn removing_a_port_hands_it_back_and_keeps_switching_the_rest() {
    let (mut dp, ports) = start(accept_all);
    wait_until("every port to take its fill share", || {
        ports.iter().all(|p| {
            let held = Port::<Umem>::frames_held(&*p.0.lock().unwrap());
            held.fill + held.rx == 64
        })
    });
    let returned = dp.remove_port(OTHER.port).unwrap();
    assert_eq!(returned, 64, "the removed port's fill share comes back");
    assert!(dp.remove_port(OTHER.port).is_err());
    assert!(ports[PARENT.port as usize].inject(&tcp_frame(PARENT, CHILD, 5000, 80, 0x02, &[])));
    wait_until("the SYN to pass after a removal", || {
        !ports[CHILD.port as usize].take_sent().is_empty()
    });
    wait_until("frame accounting to balance after the removal", || {
        dp.frames().unwrap().balanced()
    });
    drop(dp.stop());
}

#[test]
fn audit_switches_every_worker_and_each_reports_its_events() {
    let deny = |_: usize| -> Box<dyn Policy> {
        Box::new(FnPolicy::new(1, |_: &PacketRecord| {
            VerdictRecord::new(Action::Drop, 42)
        }))
    };
    let (dp, ports) = start(deny);
    let rings = dp.events();
    assert_eq!(rings.len(), 2, "one ring per worker");
    let _watch: Vec<_> = rings.iter().map(|r| r.subscribe()).collect();
    assert!(!dp.audit());
    dp.set_audit(true);
    assert!(dp.audit());
    // Parent (worker 0) → child (worker 1) and child → other (worker 1): both denied by
    // rule 42, both forwarded.
    assert!(ports[PARENT.port as usize].inject(&tcp_frame(PARENT, CHILD, 6000, 80, 0x02, &[])));
    assert!(ports[CHILD.port as usize].inject(&tcp_frame(CHILD, OTHER, 6001, 80, 0x02, &[])));
    // Each port's frames are taken once: remember what has arrived across polls.
    let (mut to_child, mut to_other) = (false, false);
    wait_until("both audited SYNs to pass", || {
        to_child |= !ports[CHILD.port as usize].take_sent().is_empty();
        to_other |= !ports[OTHER.port as usize].take_sent().is_empty();
        to_child && to_other
    });
    let audited: u64 = dp
        .counters()
        .iter()
        .map(|c| c.snapshot().audit_denied)
        .sum();
    assert_eq!(audited, 2);
    let mut events = Vec::new();
    for r in &rings {
        r.drain(&mut events);
    }
    events.sort_by_key(|e| e.in_port);
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.in_port, e.out_port, e.rule, e.audit))
        .collect();
    assert_eq!(
        seen,
        vec![
            (PARENT.port, CHILD.port, 42, true),
            (CHILD.port, OTHER.port, 42, true)
        ]
    );
    // Enforced again: a new flow is dropped.
    dp.set_audit(false);
    assert!(ports[PARENT.port as usize].inject(&tcp_frame(PARENT, CHILD, 6002, 80, 0x02, &[])));
    wait_until("the enforced SYN to be dropped", || {
        dp.counters()
            .iter()
            .map(|c| c.snapshot().port(PARENT.port).denied)
            .sum::<u64>()
            == 1
    });
    assert!(ports[CHILD.port as usize].take_sent().is_empty());
    drop(dp.stop());
}

#[test]
fn a_second_networks_gateway_comes_and_goes_while_the_workers_run() {
    use dataplane::counters::DropReason;
    let (mut dp, ports) = start(accept_all);
    // `docker network create`: network 5 with its gateway (port 5, on worker 1) and a
    // container (port 6, on worker 0) arrives while network 0 runs.
    let gw5 = Host {
        port: 5,
        mac: [2, 0x42, 0xbb, 0, 0, 1],
        ip: [172, 18, 0, 1],
    };
    let c6 = Host {
        port: 6,
        mac: [2, 0x42, 172, 18, 0, 2],
        ip: [172, 18, 0, 2],
    };
    let in_net5 = |h: Host, is_gateway: bool| PortConfig {
        network: 5,
        is_gateway,
        ..port_config(h)
    };
    let (p5, p6) = (SharedPort::new(), SharedPort::new());
    dp.add_port(in_net5(gw5, true), p5.clone(), 1).unwrap();
    dp.add_port(in_net5(c6, false), p6.clone(), 0).unwrap();
    // A second gateway in network 5 is refused by every worker.
    let again = Host {
        port: 9,
        mac: [2, 0x42, 0xbb, 0, 0, 9],
        ip: [172, 18, 0, 9],
    };
    assert!(
        dp.add_port(in_net5(again, true), SharedPort::new(), 1)
            .is_err()
    );
    // The container's broadcast crosses workers to its own gateway, and nowhere else.
    let bcast = udp_frame(c6, BROADCAST, [255; 4], 68, 67, b"discover");
    assert!(p6.inject(&bcast));
    wait_until("the broadcast to reach gateway 5", || {
        !p5.take_sent().is_empty()
    });
    // A container of network 0 addressing network 5's container is dropped.
    assert!(ports[CHILD.port as usize].inject(&tcp_frame(CHILD, c6, 7000, 80, 0x02, &[])));
    wait_until("the cross-network frame to be counted", || {
        dp.counters()
            .iter()
            .map(|c| c.snapshot().drops(DropReason::CrossNetwork))
            .sum::<u64>()
            == 1
    });
    // Gateway 5 answers its container across workers.
    assert!(p5.inject(&ping(gw5, c6, 1, false)));
    wait_until("the ping to reach port 6", || !p6.take_sent().is_empty());
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        ports.iter().all(|p| p.take_sent().is_empty()),
        "network 0 heard nothing"
    );
    // `docker network rm`: its ports go, their frames come back, network 0 runs on.
    dp.remove_port(gw5.port).unwrap();
    dp.remove_port(c6.port).unwrap();
    assert!(ports[PARENT.port as usize].inject(&tcp_frame(PARENT, CHILD, 7001, 80, 0x02, &[])));
    wait_until("network 0 to keep switching", || {
        !ports[CHILD.port as usize].take_sent().is_empty()
    });
    wait_until("frame accounting to balance", || {
        dp.frames().unwrap().balanced()
    });
    drop(dp.stop());
}
