//! The seed's scenarios (issue 5, steps 1–7) with a real Docker engine (Debian's docker.io
//! 20.10) in a namespace of its own and bridgewall's dataplane on its `docker0`: tracker →
//! [`BridgeRuntime`], containers started while it runs, icc on and off, a link, a published
//! port from two outside hosts with a user rule, the host reaching an unpublished port, rule
//! counters, and the kernel path back after stop. The containers run busybox's httpd (the
//! `lab/busybox` image imported offline by the test support), not nginx: building the nginx
//! image is slower and adds nothing the dataplane sees. Needs root; slow (~1 min).
mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use controller::docker::{EngineAddress, TrackerConfig, TrackerHandle};
use controller::netlink::Netns;
use controller::runtime::policy::UserRules;
use controller::runtime::{BridgeRuntime, RuntimeOptions};
use controller::state::Snapshot;
use rules_wasm::model::Chain;
use support::docker::{DockerEngine, OutsideHost};

const WAIT: Duration = Duration::from_secs(20);
const PAGE: &str = "hello from busybox httpd";

/// busybox wget from inside a namespace (an outside host, or the engine's namespace as the
/// Docker host), bounded by `timeout` (busybox's `wget -T` is unreliable).
fn fetch_from_ns(netns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "busybox", "timeout", "3", "busybox", "wget", "-qO-", url,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("exec of"), "busybox missing: {err}");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tracker(engine: &DockerEngine, icc: Option<bool>) -> TrackerHandle {
    let mut cfg = TrackerConfig::new(EngineAddress::parse(&engine.host()).unwrap());
    cfg.bridge_netns = Some(engine.netns.clone());
    cfg.icc_override = icc;
    TrackerHandle::spawn(cfg).unwrap()
}

/// Waits for a snapshot newer than `seen` that satisfies `pred` and applies it.
fn follow(
    t: &TrackerHandle,
    rt: &mut BridgeRuntime,
    seen: &mut u64,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let s0 = *seen;
    let snap = t
        .wait_for(WAIT, |s| s.generation > s0 && pred(s))
        .unwrap_or_else(|| panic!("no matching snapshot; latest {:?}", t.latest()));
    let r = rt.apply(&snap);
    assert_eq!(r.policy_error, None);
    *seen = snap.generation;
    snap
}

fn ip_of(s: &Snapshot, name: &str) -> String {
    s.state.networks[0]
        .network
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
        .ips[0]
        .to_string()
}

fn options(state_dir: &std::path::Path, rules: &str) -> RuntimeOptions {
    let mut o = RuntimeOptions::new();
    o.workers = 2;
    o.state_dir = state_dir.to_path_buf();
    o.user_rules = UserRules {
        text: rules.to_string(),
        origin: "test rules".into(),
        ipsets: None,
    };
    o
}

#[test]
fn root_docker_bridgewall_enforces_the_seed_scenarios() {
    let engine = DockerEngine::start(true);
    let outside2 = OutsideHost::add(&engine, 9);
    let state_dir = engine.dir.join("bridgewall-state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let netns = Netns::open(&engine.netns).unwrap();

    // Phase A: icc=true as the engine says; bridgewall starts on an empty bridge and the
    // containers start while it runs (each attached from its snapshot).
    let t = tracker(&engine, None);
    let first = t.wait_for(WAIT, |_| true).expect("first snapshot");
    assert!(first.state.networks[0].network.icc);
    let mut rt =
        BridgeRuntime::start(&netns, first.state.clone(), options(&state_dir, "")).unwrap();
    let mut seen = first.generation;
    engine.run_container("nginx_server1", &["-p", "8080:80"], &[]);
    engine.run_container("nginx_server2", &[], &[]);
    engine.run_container("client3", &["--link", "nginx_server2:ng2"], &[]);
    // Apply every snapshot as it comes (one per container start, usually), as `run` does.
    let snap = loop {
        let s = follow(&t, &mut rt, &mut seen, |_| true);
        if s.state.attached_count() == 3 {
            break s;
        }
    };
    assert_eq!(
        rt.attached().count(),
        3,
        "{:?}",
        snap.state.networks[0].attachments
    );
    assert_eq!(
        engine.bridge_ports("docker0"),
        vec!["bwg0-docker0".to_string()],
        "only the gateway pair stays on docker0"
    );
    let ip1 = ip_of(&snap, "nginx_server1");
    let ip2 = ip_of(&snap, "nginx_server2");
    // 1. icc=true: the two servers fetch each other's page by IP.
    assert_eq!(
        engine
            .fetch("nginx_server1", &format!("http://{ip2}/"))
            .as_deref(),
        Some(format!("{PAGE}\n").as_str())
    );
    assert!(
        engine
            .fetch("nginx_server2", &format!("http://{ip1}/"))
            .is_some()
    );
    // 2. the link: client3 fetches http://ng2/.
    assert!(engine.fetch("client3", "http://ng2/").is_some());
    let a = rt.stop().unwrap();
    assert_eq!(a.restore[0].returned.len(), 3, "{:?}", a.restore);
    assert!(a.latency.count >= 1);
    println!("phase A snapshot -> enforced: {}", a.latency);
    drop(t);

    // Phase B: `--icc false` and a user rule against the first outside host.
    let rules = format!("-I -s 198.18.0.2 -d {ip1} -p tcp --dport 80 -j DROP\n");
    let t = tracker(&engine, Some(false));
    let first = t
        .wait_for(WAIT, |s| s.state.attached_count() == 3)
        .expect("three containers");
    assert!(!first.state.networks[0].network.icc);
    let rt =
        BridgeRuntime::start(&netns, first.state.clone(), options(&state_dir, &rules)).unwrap();
    let icc_rule = rt
        .policy()
        .ruleset
        .rules
        .iter()
        .find(|r| r.chain == Chain::Icc)
        .unwrap()
        .id;
    let user_rule = rt
        .policy()
        .ruleset
        .rules
        .iter()
        .find(|r| r.chain == Chain::User)
        .unwrap()
        .id;
    let hits = |id: u32| rt.counters().rule_hits(id);
    // 3. icc=false: the servers no longer reach each other; the link still opens port 80
    //    only (ping over the link is dropped).
    let before = hits(icc_rule);
    assert_eq!(
        engine.fetch("nginx_server1", &format!("http://{ip2}/")),
        None
    );
    assert_eq!(
        engine.fetch("nginx_server2", &format!("http://{ip1}/")),
        None
    );
    assert!(hits(icc_rule) > before, "the ICC rule's counter moved");
    assert!(engine.fetch("client3", "http://ng2/").is_some());
    assert!(
        !engine.ping("client3", &ip2),
        "ping over the link is dropped"
    );
    // 4. the published port from an outside host, through the kernel's DNAT.
    assert!(fetch_from_ns(&outside2.netns, "http://198.18.9.1:8080/").is_some());
    // 5. the user rule blocks the first outside host; the second still gets through.
    let before = hits(user_rule);
    assert_eq!(
        fetch_from_ns(&engine.outside_netns, "http://198.18.0.1:8080/"),
        None
    );
    assert!(hits(user_rule) > before, "the user rule's counter moved");
    assert!(fetch_from_ns(&outside2.netns, "http://198.18.9.1:8080/").is_some());
    // 6. the Docker host reaches a container's unpublished port directly.
    assert!(fetch_from_ns(&engine.netns, &format!("http://{ip2}/")).is_some());
    // 7. bridgewall decided: its counters show the frames; stopped, the ports are back on
    //    docker0 and the kernel path (icc=true in the engine) works again.
    let totals = rt.counters();
    assert!(totals.policy_drops() > 0);
    assert!(totals.ports.len() >= 4, "{:?}", totals.ports);
    let b = rt.stop().unwrap();
    assert_eq!(b.restore[0].returned.len(), 3, "{:?}", b.restore);
    let mut ports = engine.bridge_ports("docker0");
    ports.sort();
    assert_eq!(ports.len(), 3, "{ports:?}");
    assert!(
        engine
            .fetch("nginx_server1", &format!("http://{ip2}/"))
            .is_some()
    );
    assert!(std::fs::read_dir(&state_dir).unwrap().next().is_none());
    drop(t);

    // Phase C: the `bridgewall run` binary itself, stopped by SIGTERM.
    let rules_file = engine.dir.join("rules.txt");
    std::fs::write(&rules_file, &rules).unwrap();
    let mut child = RunChild(
        Command::new(env!("CARGO_BIN_EXE_bridgewall"))
            .args([
                "run",
                "--docker-host",
                &engine.host(),
                "--netns",
                &engine.netns,
            ])
            .args(["--icc", "false", "--workers", "2", "--rules"])
            .arg(&rules_file)
            .arg("--state-dir")
            .arg(&state_dir)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("bridgewall is enforcing"))
    {
        match rx.recv_timeout(WAIT) {
            Ok(l) => log.push(l),
            Err(_) => panic!("bridgewall run did not start:\n{}", log.join("\n")),
        }
    }
    assert_eq!(
        engine.fetch("nginx_server1", &format!("http://{ip2}/")),
        None
    );
    assert!(engine.fetch("client3", "http://ng2/").is_some());
    // A container started now is attached and filtered by the running binary.
    engine.run_container("late4", &[], &[]);
    while !log.iter().any(|l: &String| l.contains("attached: [late4]")) {
        match rx.recv_timeout(WAIT) {
            Ok(l) => log.push(l),
            Err(_) => panic!("late4 not attached:\n{}", log.join("\n")),
        }
    }
    let ip4 = engine.inspect("late4", "{{.NetworkSettings.IPAddress}}");
    assert!(fetch_from_ns(&engine.netns, &format!("http://{ip4}/")).is_some());
    assert_eq!(engine.fetch("client3", &format!("http://{ip4}/")), None);
    // A few more, one at a time, for the start → enforced latency distribution; then one
    // leaves (its port is detached, the bridge does not get a dead veth back).
    for i in 5..=9 {
        let name = format!("late{i}");
        engine.run_container(&name, &[], &[]);
        let want = format!("attached: [{name}]");
        while !log.iter().any(|l: &String| l.contains(&want)) {
            match rx.recv_timeout(WAIT) {
                Ok(l) => log.push(l),
                Err(_) => panic!("{name} not attached:\n{}", log.join("\n")),
            }
        }
    }
    engine.docker_ok(&["rm", "-f", "late9"]);
    while !log.iter().any(|l: &String| l.contains("detached: [late9]")) {
        match rx.recv_timeout(WAIT) {
            Ok(l) => log.push(l),
            Err(_) => panic!("late9 not detached:\n{}", log.join("\n")),
        }
    }
    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.0.wait().unwrap();
    log.extend(rx.iter());
    let text = log.join("\n");
    println!("{text}");
    assert!(status.success(), "{text}");
    assert!(text.contains("policy decisions per rule"), "{text}");
    assert!(
        text.contains("snapshot -> ports attached and policy swapped"),
        "{text}"
    );
    assert_eq!(
        engine.bridge_ports("docker0").len(),
        8,
        "ports back after SIGTERM (3 + late4..late8)"
    );
    assert!(std::fs::read_dir(&state_dir).unwrap().next().is_none());
}

/// The `bridgewall run` child; killed and reaped on drop if still running.
struct RunChild(std::process::Child);

impl Drop for RunChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
