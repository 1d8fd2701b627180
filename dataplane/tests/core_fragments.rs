//! IP fragments through the engine: the later fragments of a datagram follow its first
//! fragment's verdict and egress, in any arrival order, IPv4 and IPv6; nothing passes that
//! the first fragment's ports would not admit; overlaps, orphans and floods are dropped and
//! counted; every frame stays accounted for. No root needed.

use dataplane::counters::DropReason;
use dataplane::engine::EngineConfig;
use dataplane::frag::FragConfig;
use dataplane::phy::memory::MemoryPortConfig;
use dataplane::policy::{Action, ConstPolicy, FnPolicy, PacketRecord, Policy, VerdictRecord};
use dataplane::sim::*;
use proptest::prelude::*;
use std::time::Duration;

/// icc=false with a link admitting UDP 5000 from PARENT to CHILD (rule 1), nothing else
/// between containers (rule 3).
fn udp_link(r: &PacketRecord) -> VerdictRecord {
    let to_child = r.dst == mapped(CHILD.ip) || r.dst == v6(CHILD);
    let from_parent = r.src == mapped(PARENT.ip) || r.src == v6(PARENT);
    if from_parent && to_child && r.protocol == 17 && r.dst_port == 5000 {
        accept(1)
    } else {
        drop_(3)
    }
}

fn link_lab() -> Lab {
    Lab::with(
        EngineConfig::default(),
        MemoryPortConfig {
            fill_share: 256,
            ..MemoryPortConfig::default()
        },
        4096,
        Box::new(FnPolicy::new(1, udp_link)) as Box<dyn Policy>,
    )
}

fn deliver(lab: &mut Lab, from: Host, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    for f in frames {
        lab.inject(from, f);
    }
    lab.run();
    lab.take_all()[usize::from(CHILD.port)].clone()
}

#[test]
fn a_udp_datagram_larger_than_the_mtu_passes_where_the_policy_admits_it() {
    // icc=true: every fragment of a 3,000-byte datagram reaches the other container (the
    // first fragment's UDP length, 3,008, is longer than the fragment and must not make it
    // "malformed").
    let mut lab = Lab::new(Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    }));
    let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 53, &[7; 3000]);
    let frags = fragments(&whole, 1500);
    assert_eq!(frags.len(), 3);
    let got = deliver(&mut lab, PARENT, &frags);
    assert_eq!(got.len(), 3, "every fragment arrives");
    assert!(got == frags, "the fragments arrive unchanged");
    assert_eq!(lab.engine.counters().snapshot().total_drops(), 0);
}

#[test]
fn fragments_through_a_link_follow_the_first_fragments_ports() {
    for size in [3000, 8000, 30000] {
        let mut lab = link_lab();
        let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 5000, &vec![9; size]);
        let frags = fragments(&whole, 1500);
        let got = deliver(&mut lab, PARENT, &frags);
        assert!(
            got == frags,
            "{size} bytes: all {} fragments pass",
            frags.len()
        );
        // Another port of the same pair is not linked: nothing of it passes.
        let other = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 6000, &vec![9; size]);
        assert!(deliver(&mut lab, PARENT, &fragments(&other, 1500)).is_empty());
        let s = lab.engine.counters().snapshot();
        assert_eq!(s.fragments_forwarded as usize, frags.len() - 1);
        assert_eq!(
            s.fragments_held, 0,
            "in order, none waits: the first fragment's batch is decided before the rest"
        );
        assert_eq!(
            s.drops(DropReason::FragmentDenied) as usize,
            frags.len() - 1,
            "the denied datagram's later fragments, counted"
        );
        assert_eq!(lab.frames_accounted(), lab.total_frames);
    }
}

#[test]
fn fragments_arriving_before_their_first_are_held_then_released() {
    let mut lab = link_lab();
    let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 5000, &[3; 8000]);
    let mut frags = fragments(&whole, 1500);
    frags.reverse();
    let got = deliver(&mut lab, PARENT, &frags);
    assert_eq!(got.len(), frags.len());
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.fragments_held as usize, frags.len() - 1);
    assert_eq!(lab.engine.fragments_held(), 0);
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn ipv6_fragments_follow_their_first_too() {
    let mut lab = link_lab();
    let whole = udp6_frame(PARENT, CHILD, 40000, 5000, &[5; 8000]);
    let frags = fragments_v6(&whole, 1500, 0xabcd);
    assert_eq!(deliver(&mut lab, PARENT, &frags).len(), frags.len());
    let denied = udp6_frame(PARENT, CHILD, 40000, 6000, &[5; 8000]);
    assert!(deliver(&mut lab, PARENT, &fragments_v6(&denied, 1500, 0xabce)).is_empty());
}

#[test]
fn fragments_without_a_first_never_pass_and_time_out_counted() {
    let mut lab = link_lab();
    let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 5000, &[1; 8000]);
    let later = fragments(&whole, 1500).split_off(1);
    assert!(deliver(&mut lab, PARENT, &later).is_empty());
    assert_eq!(lab.engine.fragments_held(), later.len());
    // Linux's 30 s, then the sweep of the next batch drops them.
    lab.advance(Duration::from_secs(31));
    let ping_ = ping(PARENT, GW, 1, false);
    lab.send(PARENT, &ping_);
    // The sweep visits a budget of slots per batch: a few batches clear the table.
    for i in 0..40 {
        lab.send(PARENT, &ping(PARENT, GW, 2 + i, false));
    }
    assert_eq!(lab.engine.fragments_held(), 0);
    let s = lab.engine.counters().snapshot();
    assert_eq!(s.drops(DropReason::FragmentOrphan) as usize, later.len());
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

#[test]
fn overlapping_fragments_drop_their_datagram() {
    let mut lab = link_lab();
    let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 5000, &[1; 4000]);
    let mut frags = fragments(&whole, 1500);
    // A second copy of the middle fragment rewritten to start 8 bytes earlier: overlaps.
    let mut evil = frags[1].clone();
    let off = u16::from_be_bytes([evil[20], evil[21]]);
    evil[20..22].copy_from_slice(&(off - 1).to_be_bytes());
    frags.insert(2, evil);
    let got = deliver(&mut lab, PARENT, &frags);
    // The first two pass before the overlap is seen; the overlap and the rest do not.
    assert_eq!(got.len(), 2);
    assert_eq!(
        lab.engine
            .counters()
            .snapshot()
            .drops(DropReason::FragmentOverlap),
        2
    );
}

#[test]
fn a_flood_of_orphan_fragments_fills_the_table_but_flows_keep_passing() {
    let config = EngineConfig {
        fragments: FragConfig {
            entries: 64,
            held: 32,
            ..FragConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut lab = Lab::with(
        config,
        MemoryPortConfig {
            fill_share: 256,
            ..MemoryPortConfig::default()
        },
        4096,
        Box::new(FnPolicy::new(1, udp_link)) as Box<dyn Policy>,
    );
    // OTHER floods later fragments of 200 datagrams that never had a first.
    for id in 0..200u16 {
        let whole = udp_frame(OTHER, CHILD.mac, CHILD.ip, 1, 5000, &[0; 2000]);
        let mut f = fragments(&whole, 1500).pop().unwrap();
        f[18..20].copy_from_slice(&id.to_be_bytes());
        lab.inject(OTHER, &f);
        if id % 50 == 49 {
            lab.run();
        }
    }
    lab.run();
    let s = lab.engine.counters().snapshot();
    assert!(s.drops(DropReason::FragmentTableFull) > 0, "{:?}", s.drops);
    assert!(lab.engine.fragments_held() <= 32);
    // A whole datagram and a fragmented one of the linked pair still pass.
    let small = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40001, 5000, b"hi");
    assert_eq!(deliver(&mut lab, PARENT, &[small]).len(), 1);
    assert_eq!(lab.take_all()[usize::from(CHILD.port)].len(), 0);
    assert!(lab.take_all()[usize::from(OTHER.port)].is_empty());
    assert_eq!(lab.frames_accounted(), lab.total_frames);
}

fn shuffled(v: &mut [Vec<u8>], seed: u64) {
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every fragment gets the verdict the whole datagram gets, whatever the datagram's
    /// size, the fragment size and the order of arrival.
    #[test]
    fn each_fragment_gets_the_whole_datagrams_verdict(
        size in 1500usize..20000,
        mtu_blocks in 80usize..186,
        dport in prop_oneof![Just(5000u16), Just(6000u16)],
        seed in any::<u64>(),
        v6_ in any::<bool>(),
    ) {
        let mut lab = link_lab();
        let whole = if v6_ {
            udp6_frame(PARENT, CHILD, 40000, dport, &vec![0x5a; size])
        } else {
            udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, dport, &vec![0x5a; size])
        };
        let mtu = mtu_blocks * 8;
        // The whole datagram's verdict, from a small datagram of the same flow (a frame
        // bigger than the memory's 2 KiB frames cannot be injected whole).
        let small = if v6_ {
            udp6_frame(PARENT, CHILD, 40000, dport, b"x")
        } else {
            udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, dport, b"x")
        };
        let whole_passes = !deliver(&mut lab, PARENT, &[small]).is_empty();
        let mut frags = if v6_ {
            fragments_v6(&whole, mtu, seed as u32)
        } else {
            fragments(&whole, mtu)
        };
        shuffled(&mut frags, seed);
        let got = deliver(&mut lab, PARENT, &frags);
        prop_assert_eq!(got.len(), if whole_passes { frags.len() } else { 0 });
        prop_assert_eq!(lab.engine.fragments_held(), 0);
        prop_assert_eq!(lab.frames_accounted(), lab.total_frames);
    }
}

/// Through a port that shuffles what it receives (`phy::reorder`), a datagram's fragments
/// reach the engine in random orders and still all pass, for many seeds.
#[test]
fn fragments_shuffled_by_a_reordering_port_still_make_up_their_datagram() {
    use dataplane::phy::reorder::Reorder;

    let whole = udp_frame(PARENT, CHILD.mac, CHILD.ip, 40000, 5000, &[6; 30000]);
    let frags = fragments(&whole, 1500);
    for seed in 1..=20u64 {
        let policy = Box::new(FnPolicy::new(1, udp_link));
        let mut lab = Lab::wrapped(LabConfig::default(), policy, |_, port| {
            Reorder::new(port, seed)
        });
        for f in &frags {
            lab.inject(PARENT, f);
        }
        for _ in 0..4 {
            lab.drive();
        }
        let got = lab.take_all()[usize::from(CHILD.port)].clone();
        assert_eq!(got.len(), frags.len(), "seed {seed}");
        let mut got_sorted = got.clone();
        got_sorted.sort();
        let mut want = frags.clone();
        want.sort();
        assert!(got_sorted == want, "seed {seed}: the same fragments");
    }
}
