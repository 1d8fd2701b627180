//! UDP datagrams larger than the MTU through the whole product on the Docker-free lab: the
//! kernels of the lab's containers fragment them, bridgewall's AF_XDP dataplane carries the
//! fragments (the later ones following their first fragment's verdict), and the echo comes
//! back whole — over a link with an exposed UDP port, and between any two containers once
//! icc is true — while an unlinked pair under icc=false gets no fragment through.
//!
//! Needs root. Everything lives in namespaces the lab creates and is removed on drop.
mod support;

use std::time::{Duration, SystemTime};

use controller::lab::{Lab, LabSpec, Outcome};
use controller::runtime::{BridgeRuntime, RuntimeOptions};
use controller::state::{Snapshot, SnapshotCause};
use support::netns::TempDir;

const T: Duration = Duration::from_millis(1500);
const SIZES: [usize; 5] = [100, 1400, 3000, 8000, 30000];

const LAB: &str = r#"
[bridge]
name = "docker0"
subnet = "172.17.0.0/16"
gateway = "172.17.0.1"
icc = false

[[container]]
name = "a"
ip = "172.17.0.2"
link = ["b:peer"]
responder = [{ kind = "udp", port = 5000 }]

[[container]]
name = "b"
ip = "172.17.0.3"
expose = ["5000/udp"]
responder = [{ kind = "udp", port = 5000 }, { kind = "udp", port = 6000 }]

[[container]]
name = "c"
ip = "172.17.0.4"
responder = [{ kind = "udp", port = 5000 }]
"#;

fn round_trip(lab: &Lab, from: &str, to: &str, port: u16, size: usize) -> Outcome {
    lab.udp_round_trip(from, to, port, size, T)
        .unwrap_or_else(|e| panic!("probing {from} -> {to}:{port}: {e}"))
}

#[test]
fn root_netns_lab_large_udp_datagrams_follow_links_and_icc() {
    let state_dir = TempDir::new("fragments");
    let spec = LabSpec::from_toml(LAB, "lab_fragments").expect("the lab file is valid");
    let lab = Lab::build(spec).expect("the lab builds (root needed)");
    let mut opts = RuntimeOptions::new();
    opts.state_dir = state_dir.0.clone();
    let mut rt = BridgeRuntime::start(
        lab.host_netns().expect("a built lab has a host namespace"),
        lab.state().clone(),
        opts,
    )
    .expect("the dataplane takes the lab's bridge");

    let mut failures = Vec::new();
    for size in SIZES {
        // The link opens b's exposed UDP port: the datagram and its echo (the reply rule,
        // --sport 5000) pass whole, every fragment following the first.
        let o = round_trip(&lab, "a", "peer", 5000, size);
        if !o.passed() {
            failures.push(format!("a -> b:5000 over the link, {size} bytes: {o}"));
        }
        // The link does not open b's port 6000, and icc=false keeps a and c apart: no
        // fragment gets through.
        for (to, port) in [("b", 6000), ("c", 5000)] {
            let o = round_trip(&lab, "a", to, port, size);
            if o != Outcome::TimedOut {
                failures.push(format!(
                    "a -> {to}:{port}, {size} bytes must be dropped: {o}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");

    // icc=true: any pair, any size.
    let mut state = rt.state().clone();
    state.networks[0].network.icc = true;
    let report = rt.apply(&Snapshot {
        generation: 2,
        state,
        cause: SnapshotCause::Resync,
        published_at: SystemTime::now(),
    });
    assert!(report.policy_error.is_none(), "{report:?}");
    for size in SIZES {
        for (from, to) in [("a", "c"), ("c", "a")] {
            let o = round_trip(&lab, from, to, 5000, size);
            if !o.passed() {
                failures.push(format!("icc=true {from} -> {to}:5000, {size} bytes: {o}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let totals = rt.counters();
    assert!(
        totals.fragments_forwarded > 0,
        "the later fragments went through the fragment table: {totals:?}"
    );
    let drops = totals.drops;
    let balance = rt.frame_balance().expect("the dataplane answers");
    assert!(balance.is_balanced(), "{balance:?}");
    rt.stop().expect("the bridge is given back");
    println!("drops by reason: {drops:?}");
}
