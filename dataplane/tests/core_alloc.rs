//! Proves the steady-state forwarding path allocates nothing per packet, with a counting
//! global allocator (in its own test binary so it affects no other test).
// A counting global allocator is `unsafe` by its trait: the one exception outside AF_XDP.
#![allow(unsafe_code)]

use dataplane::counters::DropReason;
use dataplane::engine::EngineConfig;
use dataplane::phy::lossy::{Faults, Lossy};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::policy::{Action, ConstPolicy};
use dataplane::sim::*;
use rules_wasm::abi::tcp_flags::ACK;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts allocations made by the thread that switched counting on.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: delegates to the system allocator; counting touches only an atomic and a
// const-initialised thread-local without destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The tests share `ALLOCATIONS`: they take turns so one's reset cannot hide the other's count.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The simulated bridge over `frames` heap frames with `policy`, checksums completed, and
/// ports that only count what they send (each round injects up to 65 frames into one port
/// before the engine runs: a fill share of 256).
fn lab_config(engine: EngineConfig, frames: usize) -> LabConfig {
    LabConfig {
        engine,
        ports: MemoryPortConfig {
            capture: false,
            fill_share: 256,
            ..Default::default()
        },
        frames,
        complete_checksums: true,
    }
}

fn lab(config: EngineConfig, policy: Box<dyn dataplane::policy::Policy>, frames: usize) -> Lab {
    Lab::from_config(lab_config(config, frames), policy)
}

#[test]
fn steady_state_forwarding_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let frames = 4096;
    let config = EngineConfig {
        flow_capacity: 1 << 14,
        ..Default::default()
    };
    let policy = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let mut lab = lab(config, policy, frames);
    // Frames built up front: 64 established flows (hits), and a stream of new flows (misses
    // decided by the policy), plus a broadcast (flood copies).
    let hits: Vec<Vec<u8>> = (0..64)
        .map(|i| tcp_frame(PARENT, CHILD, 20000 + i, 80, ACK, &[0; 18]))
        .collect();
    let misses: Vec<Vec<u8>> = (0..4096)
        .map(|i| udp_frame(OTHER, CHILD.mac, CHILD.ip, i, 53, b"x"))
        .collect();
    let bcast = udp_frame(PARENT, BROADCAST, [255; 4], 68, 67, b"discover");

    let counters = lab.engine.counters();
    let round = |lab: &mut Lab, r: usize| {
        for f in &hits {
            lab.inject(PARENT, f);
        }
        for f in &misses[(r * 32) % 4096..(r * 32) % 4096 + 32] {
            lab.inject(OTHER, f);
        }
        lab.inject(PARENT, &bcast);
        lab.now += 1_000_000;
        for _ in 0..4 {
            lab.drive();
        }
    };
    // Warm-up: flows of the hit set exist, rings and queues have seen their peak.
    for r in 0..8 {
        round(&mut lab, r);
    }
    let before = counters.snapshot();

    // The counter itself works: one allocation is seen.
    COUNTING.with(|c| c.set(true));
    drop(std::hint::black_box(Vec::<u8>::with_capacity(8)));
    COUNTING.with(|c| c.set(false));
    assert_eq!(ALLOCATIONS.swap(0, Ordering::Relaxed), 1);

    COUNTING.with(|c| c.set(true));
    for r in 8..108 {
        round(&mut lab, r);
    }
    COUNTING.with(|c| c.set(false));

    let after = counters.snapshot();
    let forwarded = after.port(CHILD.port).tx_packets - before.port(CHILD.port).tx_packets;
    let decided = after.policy_records - before.policy_records;
    // The measured stretch really forwarded hits and decided misses.
    assert!(forwarded >= 100 * (64 + 32), "forwarded {forwarded}");
    assert_eq!(
        decided,
        100 * 32,
        "each round decides its 32 new flows; the broadcast flow is cached"
    );
    assert!(after.flows.hits > before.flows.hits + 100 * 64);
    assert!(after.flood_copies > before.flood_copies);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations on the forwarding path"
    );
}

#[test]
fn answering_rejected_packets_allocates_nothing() {
    use dataplane::policy::{FnPolicy, PacketRecord, VerdictRecord};
    use dataplane::reject::{RateLimit, RejectWith};
    use rules_wasm::abi::tcp_flags::SYN;

    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let frames = 4096;
    let config = EngineConfig {
        flow_capacity: 1 << 14,
        // Every reject answered, so the measured stretch builds an answer per packet.
        reject_limit: RateLimit {
            per_sec: 1_000_000,
            burst: 1_000,
        },
        ..Default::default()
    };
    // TCP is reset, UDP gets a port unreachable.
    let policy = Box::new(FnPolicy::new(1, |r: &PacketRecord| VerdictRecord {
        action: Action::Reject,
        rule: 9,
        reject: if r.protocol == 6 {
            RejectWith::TcpReset
        } else {
            RejectWith::PortUnreachable
        },
    }));
    let mut lab = lab(config, policy, frames);
    // New flows (decided and answered) and retransmissions of the first ones (answered
    // from the flow table).
    let syns: Vec<Vec<u8>> = (0..4096)
        .map(|i| tcp_frame(OTHER, CHILD, i, 80, SYN, &[]))
        .collect();
    let dgrams: Vec<Vec<u8>> = (0..4096)
        .map(|i| udp_frame(OTHER, CHILD.mac, CHILD.ip, i, 53, &[0; 100]))
        .collect();
    let counters = lab.engine.counters();
    let round = |lab: &mut Lab, r: usize| {
        let at = (r * 16) % 4096;
        for f in syns[at..at + 16].iter().chain(&dgrams[at..at + 16]) {
            lab.inject(OTHER, f);
        }
        for f in syns[..16].iter() {
            lab.inject(OTHER, f);
        }
        lab.now += 1_000_000;
        for _ in 0..4 {
            lab.drive();
        }
    };
    for r in 0..8 {
        round(&mut lab, r);
    }
    let before = counters.snapshot();
    COUNTING.with(|c| c.set(true));
    for r in 8..108 {
        round(&mut lab, r);
    }
    COUNTING.with(|c| c.set(false));
    let after = counters.snapshot();
    assert_eq!(after.reject_tcp_reset - before.reject_tcp_reset, 100 * 32);
    assert_eq!(after.reject_icmp - before.reject_icmp, 100 * 16);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations on the reject path"
    );
}

#[test]
fn watched_and_audited_decisions_allocate_nothing() {
    use dataplane::policy::{FnPolicy, PacketRecord, VerdictRecord};

    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let frames = 4096;
    let config = EngineConfig {
        flow_capacity: 1 << 14,
        audit: true,
        ..Default::default()
    };
    let policy = Box::new(FnPolicy::new(1, |_: &PacketRecord| {
        VerdictRecord::new(Action::Drop, 9)
    }));
    let mut lab = lab(config, policy, frames);
    // New flows (decided, audited or denied) and repeats of the first ones (cached: passed
    // while audited, denied from the flow table after).
    let dgrams: Vec<Vec<u8>> = (0..4096)
        .map(|i| udp_frame(OTHER, CHILD.mac, CHILD.ip, i, 53, &[0; 100]))
        .collect();
    let counters = lab.engine.counters();
    let ring = lab.engine.events();
    ring.set_rate(u32::MAX, 100_000);
    let watch = ring.subscribe();
    let round = |lab: &mut Lab, r: usize| {
        lab.engine.set_audit(r < 58);
        let at = (r * 32) % 4096;
        for f in dgrams[at..at + 32].iter().chain(&dgrams[..16]) {
            lab.inject(OTHER, f);
        }
        lab.now += 1_000_000;
        for _ in 0..4 {
            lab.drive();
        }
    };
    for r in 0..8 {
        round(&mut lab, r);
    }
    // Nobody drains: the ring fills during the measured stretch, so both an event queued and
    // an event lost are on it.
    let before = counters.snapshot();
    COUNTING.with(|c| c.set(true));
    for r in 8..108 {
        round(&mut lab, r);
    }
    COUNTING.with(|c| c.set(false));
    let after = counters.snapshot();
    assert_eq!(after.audit_denied - before.audit_denied, 50 * 32);
    assert!(after.drops(DropReason::FlowDenied) > before.drops(DropReason::FlowDenied));
    assert!(ring.lost() > 0, "{:?}", ring.stats());
    assert_eq!(ring.emitted(), ring.capacity() as u64);
    drop(watch);
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations with events watched and audit switched"
    );
}

/// Fault injection is built into the product's port stack, so it must not allocate either:
/// through `Lossy` ports dropping, corrupting, delaying and reordering both ways, the
/// forwarding path still allocates nothing.
#[test]
fn forwarding_through_lossy_ports_allocates_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    ALLOCATIONS.store(0, Ordering::Relaxed);
    let config = EngineConfig {
        flow_capacity: 1 << 14,
        ..Default::default()
    };
    let policy = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let rx = Faults {
        drop_pct: 10,
        corrupt_pct: 10,
        delay_pct: 10,
        delay_calls: 2,
        reorder: true,
    };
    let tx = Faults {
        drop_pct: 5,
        corrupt_pct: 5,
        delay_pct: 5,
        delay_calls: 1,
        reorder: true,
    };
    let mut lab = Lab::wrapped(lab_config(config, 4096), policy, |h, port| {
        Lossy::new(port, 7 + u64::from(h.port))
            .with_rx(rx)
            .with_tx(tx)
    });
    let flows: Vec<Vec<u8>> = (0..64)
        .map(|i| tcp_frame(PARENT, CHILD, 20000 + i, 80, ACK, &[0; 18]))
        .collect();
    let bcast = udp_frame(PARENT, BROADCAST, [255; 4], 68, 67, b"discover");
    let round = |lab: &mut Lab<Lossy<MemoryPort>>| {
        for f in &flows {
            lab.inject(PARENT, f);
        }
        lab.inject(PARENT, &bcast);
        lab.now += 1_000_000;
        for _ in 0..4 {
            lab.drive();
        }
    };
    for _ in 0..8 {
        round(&mut lab);
    }
    let before: u64 = lab.ports.iter().map(|(_, p)| p.counters().rx.dropped).sum();
    COUNTING.with(|c| c.set(true));
    for _ in 0..100 {
        round(&mut lab);
    }
    COUNTING.with(|c| c.set(false));
    let after: u64 = lab.ports.iter().map(|(_, p)| p.counters().rx.dropped).sum();
    let c = lab.port(PARENT).counters();
    assert!(after > before, "the measured stretch lost frames");
    assert!(
        c.rx.corrupted > 0 && c.rx.delayed > 0 && c.rx.reordered > 0,
        "{c:?}"
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations with faults injected"
    );
}

#[test]
fn two_networks_allocate_nothing() {
    let _turn = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let policy = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let mut lab = lab(EngineConfig::default(), policy, 4096);
    // A second network (id 4): its gateway on port 4, a container on port 5.
    let gw4 = Host {
        port: 4,
        mac: [2, 0x42, 0xbb, 0, 0, 1],
        ip: [172, 18, 0, 1],
    };
    let c5 = Host {
        port: 5,
        mac: [2, 0x42, 172, 18, 0, 2],
        ip: [172, 18, 0, 2],
    };
    for (h, is_gateway) in [(gw4, true), (c5, false)] {
        let config = dataplane::engine::PortConfig {
            network: 4,
            is_gateway,
            ..host_port(h, true)
        };
        lab.engine.add_port(config).unwrap();
        lab.ports.push((
            h.port,
            MemoryPort::new(lab_config(EngineConfig::default(), 0).ports),
        ));
    }
    let bcast_a = udp_frame(PARENT, BROADCAST, [255; 4], 68, 67, b"discover");
    let bcast_b = udp_frame(c5, BROADCAST, [255; 4], 68, 67, b"discover");
    let arp_b = arp(c5, BROADCAST, gw4, false);
    let cross = udp_frame(PARENT, c5.mac, c5.ip, 1000, 53, b"x");
    // Frames from outside hosts behind bridge 4: its gateway learns their MACs (up to its
    // bound, reached during the measured stretch).
    let outside: Vec<Vec<u8>> = (0..200u16)
        .map(|i| {
            let [hi, lo] = i.to_be_bytes();
            let h = Host {
                port: 99,
                mac: [2, 0xee, 0, 0, hi, lo],
                ip: [10, 0, hi, lo],
            };
            udp_frame(h, c5.mac, c5.ip, 1000, 53, b"y")
        })
        .collect();
    let counters = lab.engine.counters();
    let round = |lab: &mut Lab, r: usize| {
        lab.inject(PARENT, &bcast_a);
        lab.inject(c5, &bcast_b);
        lab.inject(c5, &arp_b);
        lab.inject(PARENT, &cross);
        lab.inject(gw4, &outside[r % 200]);
        lab.now += 1_000_000;
        for _ in 0..4 {
            lab.drive();
        }
    };
    for r in 0..8 {
        round(&mut lab, r);
    }
    let before = counters.snapshot();
    COUNTING.with(|c| c.set(true));
    for r in 8..108 {
        round(&mut lab, r);
    }
    COUNTING.with(|c| c.set(false));
    let after = counters.snapshot();
    let cross_drops =
        after.drops(DropReason::CrossNetwork) - before.drops(DropReason::CrossNetwork);
    assert_eq!(cross_drops, 100);
    assert!(after.flood_copies >= before.flood_copies + 100 * 2);
    assert_eq!(after.arp_directed - before.arp_directed, 100);
    assert_eq!(
        lab.engine.switch().lookup(4, &[2, 0xee, 0, 0, 0, 63]),
        Some(4),
        "the gateway learned"
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::Relaxed),
        0,
        "allocations on the forwarding path"
    );
}
