//! The dataplane at Docker-host scale, with the options a user gets without tuning anything:
//! a Docker-free lab of 300 containers on a bridge with icc=false, taken by [`BridgeRuntime`]
//! with two workers and the default frame memory and ring sizes (issue 15: past ~15 ports the
//! ports' fill rings had taken every frame of the shared UMEM and nothing moved any more).
//!
//! What it proves, on real traffic through AF_XDP ports:
//! - every one of the 300 containers reaches the gateway (an ICMP echo from each, every
//!   failure listed, not only the first);
//! - the linked pair at the end of the list (`c298 --link c299:peer`) connects to the exposed
//!   port, and the unlinked pair `c0 → c1` is dropped by the ICC rule while `c1`'s service
//!   answers the lab host (so the drop is the policy's, not a dead port's);
//! - the dataplane's frame accounting balances after that traffic;
//! - after `stop` no XDP program is left on any link of any lab namespace, and the lab's
//!   namespaces are gone after teardown.
//!
//! Needs root and busybox (`.ci/run` installs busybox-static). Everything lives in namespaces
//! the lab creates (the bridge is a `docker0` of the lab's own host namespace) and is removed
//! on drop, also when the test fails; all traffic starts inside those namespaces.
mod support;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::netns::{TempDir, ping, xdp_links};

use controller::lab::{Lab, LabSpec, Outcome, Proto};
use controller::runtime::policy::PacketSpec;
use controller::runtime::{BridgeRuntime, RuntimeOptions};
use rules_wasm::abi::proto;
use rules_wasm::model::Chain;

/// Lab tests run one at a time to keep the 2-core machine's probes out of each other's
/// timeouts (within this binary; other test binaries have their own lock).
static SERIAL: Mutex<()> = Mutex::new(());

/// Containers in the lab.
const CONTAINERS: usize = 300;
/// Threads pinging the gateway at once.
const PING_THREADS: usize = 16;
/// Probe timeout for the TCP connections.
const T: Duration = Duration::from_millis(1500);
/// The bridge; it lives in the lab's own host namespace, so the name cannot clash.
const BRIDGE: &str = "docker0";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
/// The exposed port of the linked container, and the service port of the icc=false pair.
const PORT: u16 = 80;

fn name(i: usize) -> String {
    format!("c{i}")
}

/// The lab file: `CONTAINERS` containers `c0`…, addresses from 172.17.0.2 up; services only
/// where a check needs one: `c1` (the icc=false target of `c0`) and `c299` (the child of
/// `c298`'s link, exposing the port).
fn lab_toml() -> String {
    let mut s = format!(
        "[bridge]\nname = \"{BRIDGE}\"\nsubnet = \"172.17.0.0/16\"\ngateway = \"{GATEWAY}\"\n\
         icc = false\n"
    );
    let http = format!("responder = [{{ kind = \"http\", port = {PORT} }}]\n");
    for i in 0..CONTAINERS {
        let ip = Ipv4Addr::from(u32::from(GATEWAY) + 1 + i as u32);
        s += &format!("\n[[container]]\nname = \"{}\"\nip = \"{ip}\"\n", name(i));
        if i == 1 {
            s += &http;
        }
        if i == CONTAINERS - 2 {
            s += &format!("link = [\"{}:peer\"]\n", name(CONTAINERS - 1));
        }
        if i == CONTAINERS - 1 {
            s += &format!("expose = [\"{PORT}/tcp\"]\n");
            s += &http;
        }
    }
    s
}

/// Pings the gateway from every container, `PING_THREADS` at a time; returns the names of
/// the containers that got no answer, in lab order.
fn containers_not_reaching_gateway(lab: &Lab) -> Vec<String> {
    let targets: Vec<(String, String)> = lab
        .containers()
        .iter()
        .map(|c| (c.name.clone(), c.netns.label().to_string()))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = Mutex::new(Vec::new());
    let gateway = GATEWAY.to_string();
    std::thread::scope(|s| {
        for _ in 0..PING_THREADS {
            s.spawn(|| {
                while let Some((i, (name, ns))) = {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    targets.get(i).map(|t| (i, t))
                } {
                    if !ping(ns, &gateway, 2) {
                        failed
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((i, name.clone()));
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(|p| p.into_inner());
    failed.sort();
    failed.into_iter().map(|(_, n)| n).collect()
}

/// A TCP packet `from → to` on `PORT`, as the policy sees it.
fn icc_packet(rt: &BridgeRuntime, from: &str, to: &str) -> PacketSpec {
    let net = &rt.state().networks[0].network;
    let find = |n: &str| {
        net.containers
            .iter()
            .find(|c| c.name == n)
            .unwrap_or_else(|| panic!("{n} is in the runtime's state"))
    };
    let (f, t) = (find(from), find(to));
    PacketSpec {
        src: f.ips[0],
        dst: t.ips[0],
        protocol: proto::TCP,
        dst_port: PORT,
        in_port: f.port,
        out_port: t.port,
    }
}

/// The frame accounting of the dataplane balances (every frame of the UMEM is in exactly one
/// place). Retried for a moment: the last echoes and ARP refreshes may still be in flight.
fn check_frame_balance(rt: &BridgeRuntime) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let balance = rt.frame_balance().expect("the workers report their frames");
        if balance.is_balanced() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "frame accounting does not balance after the traffic stopped: {balance:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn root_netns_lab_300_containers_default_frame_budget() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let state_dir = TempDir::new("scale-300");
    let spec = LabSpec::from_toml(&lab_toml(), "lab_scale (generated)")
        .expect("the generated lab file is valid");
    let lab = Lab::build(spec).expect("the 300-container lab builds (root needed)");
    let host = lab
        .host_netns()
        .expect("a built lab has a host namespace")
        .label()
        .to_string();
    let lab_namespaces = lab.netns_names();
    assert_eq!(lab.containers().len(), CONTAINERS);
    println!(
        "lab of {CONTAINERS} containers built at {:.1?}",
        started.elapsed()
    );

    // The defaults a user gets; only the worker count and the state directory are set.
    let mut opts = RuntimeOptions::new();
    opts.workers = 2;
    opts.state_dir = state_dir.0.clone();
    // Declared after `lab`: dropped first on a failure, giving the bridge back before the
    // lab's namespaces go.
    let rt = BridgeRuntime::start(
        lab.host_netns().expect("a built lab has a host namespace"),
        lab.state().clone(),
        opts,
    )
    .expect("the dataplane takes the 300-container bridge");
    println!("dataplane running at {:.1?}", started.elapsed());
    assert_eq!(rt.attached().count(), CONTAINERS);
    assert_eq!(
        xdp_links(&host).len(),
        CONTAINERS + 1,
        "the gateway and every container veth carry the redirect program"
    );

    // Every container reaches the gateway.
    let failed = containers_not_reaching_gateway(&lab);
    println!(
        "{} of {CONTAINERS} pings answered at {:.1?}",
        CONTAINERS - failed.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {CONTAINERS} containers got no answer from the gateway {GATEWAY}: {}\n\
         dataplane drops by reason: {:?}",
        failed.len(),
        failed.join(" "),
        rt.counters().drops
    );

    // The link at the end of the list opens the child's exposed port.
    let (parent, child) = (name(CONTAINERS - 2), name(CONTAINERS - 1));
    let o = lab
        .connect(&parent, "peer", Proto::Tcp, PORT, T)
        .expect("probing over the link");
    assert!(o.passed(), "{parent} -> {child} over the link: {o}");
    assert_eq!(o, Outcome::Connected(format!("hello from {child}\n")));

    // icc=false: c0 → c1 is dropped by the ICC rule, while c1's service is up (the lab host,
    // the bridge's own address, reaches any container port).
    let o = lab
        .connect("host", "c1", Proto::Tcp, PORT, T)
        .expect("probing from the lab host");
    assert!(o.passed(), "host -> c1: {o}");
    let t = rt
        .trace(&icc_packet(&rt, "c0", "c1"))
        .expect("tracing c0 -> c1");
    assert!(t.agree(), "c0 -> c1: {t:?}");
    assert_eq!(t.chain, Some(Chain::Icc), "c0 -> c1: {t:?}");
    let o = lab
        .connect("c0", "c1", Proto::Tcp, PORT, T)
        .expect("probing c0 -> c1");
    assert_eq!(o, Outcome::TimedOut, "c0 -> c1 with icc=false");

    check_frame_balance(&rt);

    let report = rt
        .stop()
        .expect("the dataplane stops and gives the bridge back");
    assert!(report.totals.policy_drops() > 0, "the icc drop was counted");
    // No XDP program on any link of any lab namespace (only the host's links ever had one).
    let left: Vec<String> = lab_namespaces.iter().flat_map(|ns| xdp_links(ns)).collect();
    assert!(left.is_empty(), "XDP programs left after stop: {left:?}");
    lab.teardown().expect("the lab's namespaces are deleted");
    let still: Vec<&String> = lab_namespaces
        .iter()
        .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
        .collect();
    assert!(still.is_empty(), "namespaces left behind: {still:?}");
    println!("stopped and torn down at {:.1?}", started.elapsed());
}

#[test]
fn lab_file_has_the_pairs_the_scale_test_needs() {
    let spec = LabSpec::from_toml(&lab_toml(), "lab_scale (generated)")
        .expect("the generated lab file is valid");
    assert_eq!(spec.containers.len(), CONTAINERS);
    assert_eq!(spec.networks.len(), 1);
    assert_eq!(spec.networks[0].bridge, BRIDGE);
    assert!(!spec.networks[0].icc);
    let names: BTreeSet<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), CONTAINERS);
    let parent = spec
        .container(&name(CONTAINERS - 2))
        .expect("the parent exists");
    assert_eq!(parent.links.len(), 1);
    assert_eq!(parent.links[0].child, name(CONTAINERS - 1));
    let with_services = spec
        .containers
        .iter()
        .filter(|c| !c.responders.is_empty())
        .count();
    assert_eq!(
        with_services, 2,
        "only c1 and the link's child run services"
    );
}
