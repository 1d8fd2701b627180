//! Docker tracking against a real engine (Debian's docker.io 20.10, API 1.41 only) running in
//! a namespace of its own: the tracker reports names, addresses, MACs, exposed and published
//! ports, links and host-side veths as the engine and the kernel see them; a start event
//! yields a new snapshot (latency recorded); an engine restart leads to reconnection and a
//! full resync while the last snapshot stays in force; `bridgewall run` (with each
//! `--datapath`) follows start and removal events. Needs root; slow (~30–60 s).
mod support;

use std::net::IpAddr;
use std::time::Duration;

use controller::docker::{EngineAddress, TrackerConfig, TrackerHandle, TrackerStatus};
use controller::state::Snapshot;
use rules_wasm::docker::{LinkSpec, PortProto, Published};
use support::docker::DockerEngine;

const WAIT: Duration = Duration::from_secs(20);

fn names(s: &Snapshot) -> Vec<&str> {
    s.state.networks[0]
        .network
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect()
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// Checks one tracked container against `docker inspect` and the kernel.
fn check_against_engine(engine: &DockerEngine, snap: &Snapshot, name: &str) {
    let info = snap.state.networks[0]
        .network
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} tracked"));
    let att = snap.state.attachment(name).unwrap();
    let ip: IpAddr = engine
        .inspect(name, "{{.NetworkSettings.Networks.bridge.IPAddress}}")
        .parse()
        .unwrap();
    assert_eq!(info.ips, vec![ip], "{name} address");
    let mac = engine.inspect(name, "{{.NetworkSettings.Networks.bridge.MacAddress}}");
    assert_eq!(info.mac, parse_mac(&mac), "{name} MAC");
    assert_eq!(info.port, att.port);
    // The host-side veth: it exists in the engine's namespace, sits on docker0, and the
    // container's eth0 names it as its peer (read inside the container, independently).
    assert!(
        engine.ns_links().contains(&att.host_ifname),
        "{} exists",
        att.host_ifname
    );
    assert!(
        engine.bridge_ports("docker0").contains(&att.host_ifname),
        "{} on docker0",
        att.host_ifname
    );
    let iflink = engine.docker_ok(&["exec", name, "cat", "/sys/class/net/eth0/iflink"]);
    assert_eq!(
        iflink,
        att.host_ifindex.to_string(),
        "{name}: eth0's peer index"
    );
}

#[test]
fn root_docker_tracker_follows_a_real_engine() {
    // live-restore: a stopped engine leaves its containers running, as in production setups
    // where dockerd is upgraded or restarted under running containers.
    let mut engine = DockerEngine::start_with(false, true);
    engine.run_container("web2", &[], &[]);
    engine.run_container("web1", &["-p", "8080:80"], &[]);
    engine.run_container(
        "client3",
        &["--link", "web2:ng2", "--expose", "9000/udp"],
        &["sleep", "3600"],
    );
    engine.run_container("keeper", &["--restart", "always"], &[]);

    let mut cfg = TrackerConfig::new(EngineAddress::parse(&engine.host()).unwrap());
    cfg.bridge_netns = Some(engine.netns.clone());
    cfg.backoff_max = Duration::from_millis(500);
    let tracker = TrackerHandle::spawn(cfg).unwrap();

    let snap = tracker
        .wait_for(WAIT, |s| s.state.networks[0].network.containers.len() == 4)
        .unwrap_or_else(|| {
            panic!(
                "four containers tracked; status {:?}, latest {:?}",
                tracker.status(),
                tracker.latest()
            )
        });
    // The snapshot is published before the status flips to Synced: wait for the status.
    match tracker.wait_status(WAIT, |s| matches!(s, TrackerStatus::Synced { .. })) {
        Some(TrackerStatus::Synced { api_version, .. }) => {
            assert_eq!(api_version, "1.41", "negotiated down")
        }
        other => panic!("not synced: {other:?} (now {:?})", tracker.status()),
    }
    assert_eq!(names(&snap), vec!["client3", "keeper", "web1", "web2"]);
    assert_eq!(snap.state.networks[0].bridge(), "docker0");
    assert!(
        !snap.state.networks[0].network.icc,
        "icc from the network's options"
    );
    // Docker 20.10 leaves Gateway out of the default network's IPAM config; the containers'
    // endpoints carry it.
    let gw: IpAddr = engine
        .inspect("web2", "{{.NetworkSettings.Networks.bridge.Gateway}}")
        .parse()
        .unwrap();
    assert_eq!(snap.state.networks[0].network.gateway_ips, vec![gw]);
    for name in ["client3", "keeper", "web1", "web2"] {
        check_against_engine(&engine, &snap, name);
    }
    let by = |n: &str| {
        snap.state.networks[0]
            .network
            .containers
            .iter()
            .find(|c| c.name == n)
            .unwrap()
            .clone()
    };
    let tcp80 = PortProto { proto: 6, port: 80 };
    assert_eq!(by("web2").exposed, vec![tcp80]);
    assert!(by("web2").published.is_empty());
    assert_eq!(
        by("web1").published,
        vec![Published {
            proto: 6,
            container_port: 80,
            host_port: 8080
        }]
    );
    assert_eq!(
        by("client3").links,
        vec![LinkSpec {
            child: "web2".into(),
            alias: "ng2".into()
        }]
    );
    assert_eq!(
        by("client3").exposed,
        vec![
            tcp80,
            PortProto {
                proto: 17,
                port: 9000
            }
        ]
    );
    let mut ports: Vec<u16> = snap.state.networks[0]
        .attachments
        .iter()
        .map(|a| a.port)
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4, "distinct port ids");

    // The CLI's one-shot listing sees the same.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args([
            "docker-state",
            "--docker-host",
            &engine.host(),
            "--netns",
            &engine.netns,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "docker-state: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("API 1.41") && text.contains("icc=false"),
        "{text}"
    );
    assert!(
        text.contains(&snap.state.attachment("web1").unwrap().host_ifname),
        "{text}"
    );
    assert!(
        text.contains("8080:80/tcp") && text.contains("web2 as ng2"),
        "{text}"
    );

    // Start events: each new container yields a snapshot with it; removal takes it out.
    for i in 0..10 {
        let name = format!("late{i}");
        let before = tracker.latest().unwrap().generation;
        engine.run_container(&name, &[], &[]);
        let s = tracker
            .wait_for(WAIT, |s| names(s).contains(&name.as_str()))
            .unwrap_or_else(|| panic!("{name} tracked"));
        assert!(s.generation > before);
        check_against_engine(&engine, &s, &name);
    }
    let lat = tracker.metrics().start_to_snapshot();
    let own = tracker.metrics().receipt_to_snapshot();
    println!("start event -> snapshot (engine timestamp): {lat}");
    println!("start event received -> snapshot: {own}");
    assert!(lat.count >= 10, "a sample per start: {lat}");
    let late: Vec<String> = (0..10).map(|i| format!("late{i}")).collect();
    let mut rm = vec!["rm", "-f"];
    rm.extend(late.iter().map(String::as_str));
    engine.docker_ok(&rm);
    let s = tracker
        .wait_for(WAIT, |s| !names(s).iter().any(|n| n.starts_with("late")))
        .expect("removed containers leave the state");
    assert_eq!(names(&s), vec!["client3", "keeper", "web1", "web2"]);

    // Engine restart: the tracker notices, keeps the last snapshot (the containers are still
    // running), reconnects and resyncs.
    let before_restart = tracker.latest().unwrap();
    engine.stop_daemon();
    let st = tracker.wait_status(WAIT, |s| matches!(s, TrackerStatus::Disconnected { .. }));
    assert!(
        st.is_some(),
        "disconnect noticed; status {:?}",
        tracker.status()
    );
    let kept = tracker
        .latest()
        .expect("a snapshot stays in force while the engine is gone");
    assert_eq!(
        kept.generation, before_restart.generation,
        "nothing published while the engine is gone"
    );
    assert_eq!(
        names(&kept),
        vec!["client3", "keeper", "web1", "web2"],
        "the last known state"
    );
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        tracker.latest().unwrap().generation,
        before_restart.generation,
        "still in force while retrying"
    );
    engine.start_daemon();
    let st = tracker.wait_status(
        WAIT,
        |s| matches!(s, TrackerStatus::Synced { resyncs, .. } if *resyncs >= 2),
    );
    assert!(
        st.is_some(),
        "resynced after restart; status {:?}",
        tracker.status()
    );
    let s = tracker.latest().unwrap();
    assert_eq!(
        names(&s),
        vec!["client3", "keeper", "web1", "web2"],
        "resynced state"
    );
    for name in ["client3", "keeper", "web1", "web2"] {
        check_against_engine(&engine, &s, name);
        assert_eq!(
            s.state.attachment(name).unwrap().port,
            before_restart.state.attachment(name).unwrap().port,
            "{name} keeps its port id across the restart"
        );
    }
    // The new session follows events again.
    engine.run_container("after_restart", &[], &[]);
    let s = tracker
        .wait_for(WAIT, |s| names(s).contains(&"after_restart"))
        .expect("a container started after the restart is tracked");
    check_against_engine(&engine, &s, "after_restart");
    assert!(
        tracker
            .metrics()
            .disconnects
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    drop(tracker);
}

/// Reads a child's output lines on a thread, so the test can wait for one with a timeout.
struct Lines {
    rx: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Lines {
    fn new(out: impl std::io::Read + Send + 'static) -> Lines {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, what: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(what);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no line with {what:?} in:\n{}", self.seen.join("\n"));
    }
}

#[test]
fn root_docker_cli_run_follows_events_and_names_bad_bridges_afxdp() {
    cli_run_follows_events_and_names_bad_bridges("afxdp");
}

#[test]
fn root_docker_cli_run_follows_events_and_names_bad_bridges_tiered() {
    cli_run_follows_events_and_names_bad_bridges("tiered");
}

/// `bridgewall run --datapath DATAPATH`: a bridge that does not exist is named, and a
/// running instance follows the engine's start and removal events.
fn cli_run_follows_events_and_names_bad_bridges(datapath: &str) {
    let engine = DockerEngine::start(true);
    engine.run_container("first", &[], &[]);
    let bin = env!("CARGO_BIN_EXE_bridgewall");

    let out = std::process::Command::new(bin)
        .args([
            "run",
            "--docker-host",
            &engine.host(),
            "--netns",
            &engine.netns,
            "--bridge",
            "nosuch0",
            "--datapath",
            datapath,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no such bridge network \"nosuch0\""), "{err}");

    // The takeover's state file goes under the engine's directory (removed with it).
    let state_dir = engine.dir.join("bridgewall-state");
    let mut child = std::process::Command::new(bin)
        .args([
            "run",
            "--docker-host",
            &engine.host(),
            "--netns",
            &engine.netns,
            "--state-dir",
            state_dir.to_str().unwrap(),
            "--datapath",
            datapath,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut lines = Lines::new(child.stdout.take().unwrap());
    lines.wait_for("connected to Docker 20.10");
    lines.wait_for("icc=true");
    lines.wait_for("first");
    lines.wait_for("bridgewall is enforcing bridge on docker0 (");
    engine.run_container("second", &[], &[]);
    lines.wait_for("+ second 172.17.");
    engine.docker_ok(&["rm", "-f", "first"]);
    lines.wait_for("- first");
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status();
    lines.wait_for("stopping");
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "bridgewall run exits cleanly on Ctrl-C: {status}"
    );
}
