//! Every bridge network of a real engine (issue 13): `bridgewall run` follows the default
//! bridge and the user-defined networks Compose-style hosts use, each its own L2 domain in
//! the dataplane, with Docker's semantics: icc per network, isolation between networks in
//! both directions, an `--internal` network with no way out, a container on two networks
//! that reaches both and bridges nothing between them, a published port on a user network,
//! the embedded DNS resolving a peer by name; then, while it runs, a network created with
//! containers on it, a disconnect, and a network removed (its bridge given back).
//!
//! Docker's own iptables rules stay in the kernel, and routed traffic between bridges also
//! crosses the kernel's FORWARD chain: so the test also checks bridgewall's own rule
//! counters, which show that bridgewall decided (isolation and icc rules hit). Needs root;
//! slow (~1–2 min).
mod support;

use std::process::Command;
use std::time::Duration;

use support::bridgewall::Bridgewall;
use support::docker::DockerEngine;

/// busybox wget from inside a namespace (an outside host), bounded by `timeout`.
fn fetch_from_ns(netns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "busybox", "timeout", "3", "busybox", "wget", "-qO-", url,
        ])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The container's address on `network`.
fn ip(engine: &DockerEngine, container: &str, network: &str) -> String {
    engine.inspect(
        container,
        &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
    )
}

/// `docker network create` with a fixed subnet and a kernel bridge name of our own.
fn create_network(engine: &DockerEngine, name: &str, subnet: &str, extra: &[&str]) {
    let bridge = format!("com.docker.network.bridge.name=br{name}");
    let mut args = vec!["network", "create", "--subnet", subnet, "-o", &bridge];
    args.extend_from_slice(extra);
    args.push(name);
    engine.docker_ok(&args);
}

/// No container veth left on any of `bridges` (only bridgewall's gateway pairs).
fn taken(engine: &DockerEngine, bridges: &[&str]) -> bool {
    bridges.iter().all(|b| {
        engine
            .bridge_ports(b)
            .iter()
            .all(|p| !p.starts_with("veth"))
    })
}

/// The "new flows decided" count of every rule whose text contains `needle`, from the rule
/// table bridgewall prints when it stops.
fn decided(summary: &str, needle: &str) -> u64 {
    summary
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(['│', '┆']).map(str::trim).collect();
            // │ rule │ chain │ target │ new flows decided │ rule text │
            cells.get(4).and_then(|c| c.parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn root_docker_every_bridge_network_with_its_semantics() {
    let engine = DockerEngine::start(true);
    create_network(&engine, "front", "172.30.1.0/24", &[]);
    create_network(
        &engine,
        "back",
        "172.30.2.0/24",
        &["-o", "com.docker.network.bridge.enable_icc=false"],
    );
    create_network(&engine, "sealed", "172.30.3.0/24", &["--internal"]);
    engine.run_container("f1", &["--network", "front", "-p", "8081:80"], &[]);
    engine.run_container("f2", &["--network", "front"], &[]);
    engine.run_container("b1", &["--network", "back"], &[]);
    engine.run_container("b2", &["--network", "back"], &[]);
    engine.run_container("s1", &["--network", "sealed"], &[]);
    engine.run_container("multi", &["--network", "front"], &[]);
    engine.docker_ok(&["network", "connect", "sealed", "multi"]);
    engine.run_container("d1", &[], &[]);
    let bridges = ["docker0", "brfront", "brback", "brsealed"];

    // What Docker itself does for a published port of a container on another network
    // reached through the host's address: its nat table RETURNs traffic from a bridge before
    // DNAT, so the userland proxy on the host answers and connects to f1 from the host.
    assert!(
        engine.fetch("b1", "http://172.30.2.1:8081/").is_some(),
        "Docker alone: back -> host:8081 -> f1 through docker-proxy"
    );

    // Eight container interfaces: multi has two.
    let mut bw = Bridgewall::start_taking_over(&engine, 8);
    bw.wait_until(
        "every bridge's containers taken over",
        Duration::from_secs(30),
        |_| taken(&engine, &bridges),
    );
    let f1 = ip(&engine, "f1", "front");
    let f2 = ip(&engine, "f2", "front");
    let b1 = ip(&engine, "b1", "back");
    let b2 = ip(&engine, "b2", "back");
    let s1 = ip(&engine, "s1", "sealed");
    let d1 = ip(&engine, "d1", "bridge");
    let url = |ip: &str| format!("http://{ip}/");

    // Same network, icc=true: passes; icc=false on back: dropped.
    assert!(engine.fetch("f2", &url(&f1)).is_some(), "front: icc=true");
    assert!(engine.fetch("b1", &url(&b2)).is_none(), "back: icc=false");
    // The embedded DNS (127.0.0.11) resolves a peer on a user network, and the connection
    // is allowed.
    assert!(engine.fetch("f2", "http://f1/").is_some(), "DNS by name");
    // Isolation, both directions, and from the default bridge.
    assert!(engine.fetch("f1", &url(&b1)).is_none(), "front -> back");
    assert!(engine.fetch("b1", &url(&f1)).is_none(), "back -> front");
    assert!(engine.fetch("d1", &url(&f1)).is_none(), "bridge -> front");
    assert!(engine.fetch("f1", &url(&d1)).is_none(), "front -> bridge");
    // The container on two networks reaches both; nothing crosses between them.
    assert!(engine.fetch("multi", &url(&f1)).is_some(), "multi -> front");
    assert!(
        engine.fetch("multi", &url(&s1)).is_some(),
        "multi -> sealed"
    );
    assert!(engine.fetch("s1", &url(&f2)).is_none(), "sealed -> front");
    assert!(engine.fetch("f2", &url(&s1)).is_none(), "front -> sealed");
    // The internal network has no way out.
    assert!(!engine.ping("s1", "198.18.0.2"), "sealed -> outside");
    // The published port on a user network, from an outside host (the kernel's DNAT).
    assert!(
        fetch_from_ns(&engine.outside_netns, "http://198.18.0.1:8081/").is_some(),
        "outside -> front's published port"
    );
    // A container on another network reaching that published port through the host's
    // address: Docker's userland proxy connects from the host, so it passes.
    assert!(
        engine.fetch("b1", "http://172.30.2.1:8081/").is_some(),
        "back -> host:8081 -> f1 (through docker-proxy)"
    );

    // At run time: a new network with two containers, enforced like the others.
    create_network(&engine, "late", "172.30.4.0/24", &[]);
    engine.run_container("l1", &["--network", "late"], &[]);
    engine.run_container("l2", &["--network", "late"], &[]);
    bw.wait_attached(&engine, &["l1", "l2"]);
    bw.wait_until("late taken", Duration::from_secs(30), |_| {
        taken(&engine, &["brlate"])
    });
    let l1 = ip(&engine, "l1", "late");
    assert!(engine.fetch("l2", &url(&l1)).is_some(), "late: icc=true");
    assert!(engine.fetch("l2", &url(&f1)).is_none(), "late -> front");
    // A disconnect takes m's front interface away; its sealed one stays.
    engine.docker_ok(&["network", "disconnect", "front", "multi"]);
    bw.wait_until("multi left front", Duration::from_secs(10), |b| {
        b.lines().iter().any(|l| l.contains("detached: [multi]"))
    });
    assert!(
        engine.fetch("multi", &url(&f1)).is_none(),
        "multi is off front"
    );
    assert!(
        engine.fetch("multi", &url(&s1)).is_some(),
        "multi still on sealed"
    );
    // A network removed: its bridge goes back (and Docker deletes it).
    engine.docker_ok(&["rm", "-f", "l1", "l2"]);
    engine.docker_ok(&["network", "rm", "late"]);
    bw.wait_until("late given back", Duration::from_secs(10), |b| {
        b.lines()
            .iter()
            .any(|l| l.contains("networks given back: [late]"))
    });
    assert!(
        !engine.ns_links().iter().any(|l| l.contains("brlate")),
        "no gateway pair of late left: {:?}",
        engine.ns_links()
    );

    let summary = bw.stop();
    assert!(
        decided(&summary, "ISOLATION") > 0,
        "bridgewall's isolation rules decided flows:\n{summary}"
    );
    assert!(
        decided(&summary, "icc=false") > 0,
        "bridgewall's icc=false rule decided flows:\n{summary}"
    );
    // Stopped: every bridge has its container veths back.
    for b in bridges {
        assert!(
            engine.bridge_ports(b).iter().any(|p| p.starts_with("veth")),
            "{b} has its ports back: {:?}",
            engine.bridge_ports(b)
        );
    }
}
