//! The whole product on the Docker-free lab: the walkthrough's bridge taken by
//! [`BridgeRuntime`] (AF_XDP ports, two workers, the compiled Wasm policy), every step's
//! outcome and deciding rule checked on real traffic, policy swaps from new snapshots, a
//! 20 MB TCP transfer, and `kill -9` of the `bridgewall` binary followed by
//! `bridgewall restore`. Needs root; everything lives in namespaces the tests create and is
//! removed on drop, also when a test fails.
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};
use support::netns::{ip_out, ping, xdp_links};

use controller::lab::{Lab, LabSpec, Outcome, Proto, WALKTHROUGH_TOML};
use controller::runtime::policy::{PacketSpec, UserRules};
use controller::runtime::{BridgeRuntime, RuntimeOptions};
use controller::state::{GATEWAY_PORT, Snapshot, SnapshotCause};
use rules_wasm::abi::{RULE_NONE, proto};
use rules_wasm::model::Chain;
use sha2::{Digest, Sha256};

/// The lab tests each build a lab with a bridge called docker0 in their own namespaces;
/// they run one at a time to keep the 2-core machine's probes out of each other's timeouts.
static SERIAL: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);

const T: Duration = Duration::from_millis(1500);

/// A state directory for the takeover, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "bw-integ-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn options(lab: &Lab, state_dir: &TempDir, workers: usize) -> RuntimeOptions {
    let mut o = RuntimeOptions::new();
    o.workers = workers;
    o.state_dir = state_dir.0.clone();
    o.user_rules = UserRules::from_lines(lab.user_rules(), "walkthrough");
    o
}

/// Names of the links enslaved to `bridge` in `netns`.
fn bridge_ports(netns: &str, bridge: &str) -> BTreeSet<String> {
    ip_out(&["-n", netns, "-o", "link", "show", "master", bridge])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn body(o: &Outcome) -> &str {
    match o {
        Outcome::Connected(s) => s.as_str(),
        other => panic!("expected a connection, got {other:?}"),
    }
}

fn step_packet(rt: &BridgeRuntime, from: &str, to: &str, port: u16) -> PacketSpec {
    let net = &rt.state().networks[0].network;
    let find = |n: &str| net.containers.iter().find(|c| c.name == n).unwrap();
    let (f, t) = (find(from), find(to));
    PacketSpec {
        src: f.ips[0],
        dst: t.ips[0],
        protocol: proto::TCP,
        dst_port: port,
        in_port: f.port,
        out_port: t.port,
    }
}

fn hits(rt: &BridgeRuntime, rule: u32) -> u64 {
    rt.counters().rule_hits(rule)
}

/// Asserts the probe's outcome and that the rule `trace` names for `packet` decided it:
/// both evaluators agree, the chain is `chain`, and its counter went up.
#[allow(clippy::too_many_arguments)]
fn check(
    lab: &Lab,
    rt: &BridgeRuntime,
    from: &str,
    to: &str,
    p: Proto,
    port: u16,
    packet: PacketSpec,
    chain: Chain,
    pass: bool,
) -> Outcome {
    let t = rt.trace(&packet).unwrap();
    assert!(t.agree(), "{from}->{to}:{port}: {t:?}");
    assert_eq!(t.chain, Some(chain), "{from}->{to}:{port}: {t:?}");
    assert_ne!(t.reference_rule, RULE_NONE);
    let before = hits(rt, t.reference_rule);
    let o = lab.connect(from, to, p, port, T).unwrap();
    if pass {
        assert!(o.passed(), "{from}->{to} {port}/{p}: {o:?} ({})", t.origin);
    } else {
        assert_eq!(
            o,
            Outcome::TimedOut,
            "{from}->{to} {port}/{p} ({})",
            t.origin
        );
    }
    let after = hits(rt, t.reference_rule);
    assert!(
        after > before,
        "rule {} ({}) decided {from}->{to}:{port} but its counter stayed at {before}",
        t.reference_rule,
        t.origin
    );
    o
}

fn snapshot(rt: &BridgeRuntime, generation: u64, icc: bool) -> Snapshot {
    let mut state = rt.state().clone();
    state.networks[0].network.icc = icc;
    Snapshot {
        generation,
        state,
        cause: SnapshotCause::Resync,
        published_at: SystemTime::now(),
    }
}

#[test]
fn root_netns_lab_dataplane_enforces_walkthrough() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let state_dir = TempDir::new("walk");
    let lab = Lab::build(LabSpec::from_toml(WALKTHROUGH_TOML, "walkthrough").unwrap()).unwrap();
    let host = lab.host_netns().unwrap().label().to_string();
    let container_ns = |name: &str| {
        lab.containers()
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .netns
            .label()
            .to_string()
    };
    let veths: BTreeSet<String> = lab
        .state()
        .attachments()
        .map(|a| a.host_ifname.clone())
        .collect();
    assert_eq!(bridge_ports(&host, "docker0"), veths);

    // Two workers: ports are spread over both, frames cross between them as descriptors.
    let mut rt = BridgeRuntime::start(
        lab.host_netns().unwrap(),
        lab.state().clone(),
        options(&lab, &state_dir, 2),
    )
    .unwrap();
    let gw = rt.gateway_ifname(None).unwrap().to_string();
    assert_eq!(
        bridge_ports(&host, "docker0"),
        BTreeSet::from(["bwg0-docker0".to_string()]),
        "only the gateway pair's outer end stays on the bridge"
    );
    assert_eq!(
        xdp_links(&host).len(),
        4,
        "gateway + 3 containers: {:?}",
        xdp_links(&host)
    );

    // icc=false: plain container-to-container traffic is dropped by the ICC rule.
    let p = step_packet(&rt, "nginx_server1", "nginx_server2", 80);
    check(
        &lab,
        &rt,
        "nginx_server1",
        "nginx_server2",
        Proto::Tcp,
        80,
        p,
        Chain::Icc,
        false,
    );
    let p = step_packet(&rt, "nginx_server2", "nginx_server1", 80);
    check(
        &lab,
        &rt,
        "nginx_server2",
        "nginx_server1",
        Proto::Tcp,
        80,
        p,
        Chain::Icc,
        false,
    );
    // The link opens the exposed port, one way, and nothing else.
    let p = step_packet(&rt, "client3", "nginx_server2", 80);
    let o = check(
        &lab,
        &rt,
        "client3",
        "ng2",
        Proto::Tcp,
        80,
        p,
        Chain::Docker,
        true,
    );
    assert_eq!(body(&o), "hello from nginx_server2\n");
    let p = step_packet(&rt, "client3", "nginx_server2", 7);
    check(
        &lab,
        &rt,
        "client3",
        "ng2",
        Proto::Tcp,
        7,
        p,
        Chain::Icc,
        false,
    );
    let p = PacketSpec {
        protocol: proto::UDP,
        ..step_packet(&rt, "client3", "nginx_server2", 7)
    };
    check(
        &lab,
        &rt,
        "client3",
        "ng2",
        Proto::Udp,
        7,
        p,
        Chain::Icc,
        false,
    );
    let p = step_packet(&rt, "nginx_server2", "client3", 80);
    check(
        &lab,
        &rt,
        "nginx_server2",
        "client3",
        Proto::Tcp,
        80,
        p,
        Chain::Icc,
        false,
    );
    assert!(
        !ping(&container_ns("client3"), "172.17.0.3", 1),
        "ping over the link must be dropped"
    );

    // The published port: through the proxy from both outside hosts; routed straight to the
    // container, outside2 passes and outside1 is stopped by the user rule.
    let s1 = lab.state().networks[0]
        .network
        .containers
        .iter()
        .find(|c| c.name == "nginx_server1")
        .unwrap()
        .clone();
    let from_outside = |ip: [u8; 4]| PacketSpec {
        src: Ipv4Addr::from(ip).into(),
        dst: s1.ips[0],
        protocol: proto::TCP,
        dst_port: 80,
        in_port: GATEWAY_PORT,
        out_port: s1.port,
    };
    let via_proxy = PacketSpec {
        src: lab.state().networks[0].network.gateway_ips[0],
        ..from_outside([0, 0, 0, 0])
    };
    let o = check(
        &lab,
        &rt,
        "outside1",
        "host",
        Proto::Tcp,
        8080,
        via_proxy,
        Chain::Docker,
        true,
    );
    assert_eq!(body(&o), "hello from nginx_server1\n");
    check(
        &lab,
        &rt,
        "outside2",
        "host",
        Proto::Tcp,
        8080,
        via_proxy,
        Chain::Docker,
        true,
    );
    let t = rt.trace(&from_outside([198, 18, 1, 2])).unwrap();
    assert!(t.origin.contains("-s 198.18.1.2"), "{t:?}");
    check(
        &lab,
        &rt,
        "outside1",
        "nginx_server1",
        Proto::Tcp,
        80,
        from_outside([198, 18, 1, 2]),
        Chain::User,
        false,
    );
    check(
        &lab,
        &rt,
        "outside2",
        "nginx_server1",
        Proto::Tcp,
        80,
        from_outside([198, 18, 2, 2]),
        Chain::Docker,
        true,
    );
    let s2 = lab.state().networks[0]
        .network
        .containers
        .iter()
        .find(|c| c.name == "nginx_server2")
        .unwrap()
        .clone();
    let to_s2 = |src: Ipv4Addr, port: u16| PacketSpec {
        src: src.into(),
        dst: s2.ips[0],
        protocol: proto::TCP,
        dst_port: port,
        in_port: GATEWAY_PORT,
        out_port: s2.port,
    };
    check(
        &lab,
        &rt,
        "outside2",
        "nginx_server2",
        Proto::Tcp,
        80,
        to_s2(Ipv4Addr::new(198, 18, 2, 2), 80),
        Chain::Docker,
        false,
    );
    // The host reaches an unpublished, unexposed port.
    let o = check(
        &lab,
        &rt,
        "host",
        "nginx_server2",
        Proto::Tcp,
        7,
        to_s2(Ipv4Addr::new(172, 17, 0, 1), 7),
        Chain::Docker,
        true,
    );
    assert!(body(&o).starts_with("GET / HTTP/1.0"), "{o:?}");
    assert!(
        ping(&container_ns("client3"), "172.17.0.1", 1),
        "a container reaches the gateway"
    );

    // A new snapshot with icc=true swaps the policy in: the same flow now passes; back to
    // icc=false it is dropped again (flows of the old generation are re-decided).
    let r = rt.apply(&snapshot(&rt, 2, true));
    assert_eq!(r.policy_error, None);
    assert!(r.latency.is_some());
    assert!(
        lab.connect("nginx_server1", "nginx_server2", Proto::Tcp, 80, T)
            .unwrap()
            .passed()
    );
    let r = rt.apply(&snapshot(&rt, 3, false));
    assert_eq!(r.policy_error, None);
    assert_eq!(
        lab.connect("nginx_server1", "nginx_server2", Proto::Tcp, 80, T)
            .unwrap(),
        Outcome::TimedOut
    );
    assert_eq!(rt.latency().count, 2);

    // A container that leaves the snapshot is detached (port out of the dataplane, veth
    // still off the bridge) and the policy without it swapped in.
    let before = rt.policy().generation;
    let mut gone = snapshot(&rt, 4, false);
    gone.state.networks[0]
        .network
        .containers
        .retain(|c| c.name != "nginx_server1");
    gone.state.networks[0]
        .attachments
        .retain(|a| a.container != "nginx_server1");
    let r = rt.apply(&gone);
    assert_eq!(r.detached, vec!["nginx_server1".to_string()]);
    assert!(rt.policy().generation > before);
    assert_eq!(
        lab.connect("host", "nginx_server1", Proto::Tcp, 80, T)
            .unwrap(),
        Outcome::TimedOut,
        "a detached container's veth is off the bridge and out of the dataplane: cut off"
    );
    // And it comes back with the next snapshot that lists it.
    let r = rt.apply(&snapshot_of(lab.state().clone(), 5));
    assert_eq!(r.attached, vec!["nginx_server1".to_string()]);
    let o = lab
        .connect("host", "nginx_server1", Proto::Tcp, 80, T)
        .unwrap();
    assert_eq!(body(&o), "hello from nginx_server1\n");

    let totals = rt.counters();
    assert!(totals.policy_drops() > 0);
    let report = rt.stop().unwrap();
    assert!(report.totals.total_drops() > 0);
    assert_eq!(report.latency.count, 4);

    // After stop: ports back on the bridge, no XDP program, gateway pair gone, no state
    // file, and the kernel bridge carries container traffic again (icc is not enforced by
    // the lab's kernel bridge: the previously dropped flow passes).
    assert_eq!(bridge_ports(&host, "docker0"), veths);
    assert!(xdp_links(&host).is_empty(), "{:?}", xdp_links(&host));
    assert!(!ip_out(&["-n", &host, "-o", "link", "show"]).contains(&gw));
    assert_eq!(std::fs::read_dir(&state_dir.0).unwrap().count(), 0);
    let o = lab
        .connect("nginx_server1", "nginx_server2", Proto::Tcp, 80, T)
        .unwrap();
    assert_eq!(body(&o), "hello from nginx_server2\n");
    lab.teardown().unwrap();
}

fn snapshot_of(state: controller::state::HostState, generation: u64) -> Snapshot {
    Snapshot {
        generation,
        state,
        cause: SnapshotCause::Lab,
        published_at: SystemTime::now(),
    }
}

/// Deterministic pseudo-random bytes (xorshift), so both ends can be checked by hash.
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

#[test]
fn root_netns_lab_dataplane_20mb_tcp_transfer_sha256() {
    const BYTES: usize = 20 << 20;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let state_dir = TempDir::new("tcp");
    let lab = Lab::build(LabSpec::from_toml(WALKTHROUGH_TOML, "walkthrough").unwrap()).unwrap();
    let rt = BridgeRuntime::start(
        lab.host_netns().unwrap(),
        lab.state().clone(),
        options(&lab, &state_dir, 2),
    )
    .unwrap();
    let server = lab
        .containers()
        .iter()
        .find(|c| c.name == "nginx_server2")
        .unwrap();
    let addr = SocketAddr::from((server.ip(), 9000));
    let listener = server
        .netns
        .run(move || TcpListener::bind(addr))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(false).unwrap();
    let receiver = server
        .netns
        .spawn("bw-sink", move || -> std::io::Result<(usize, Vec<u8>)> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut h = Sha256::new();
            let mut n = 0;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                n += k;
            }
            s.write_all(b"done")?;
            Ok((n, h.finalize().to_vec()))
        })
        .unwrap();
    // From the lab host (the bridge's address reaches any container port).
    let started = Instant::now();
    let sent = lab
        .host_netns()
        .unwrap()
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_write_timeout(Some(Duration::from_secs(30)))?;
            let mut h = Sha256::new();
            let mut seed = 0x9e37_79b9_7f4a_7c15u64;
            let mut buf = vec![0u8; 1 << 16];
            let mut left = BYTES;
            while left > 0 {
                let k = left.min(buf.len());
                fill(&mut buf[..k], &mut seed);
                s.write_all(&buf[..k])?;
                h.update(&buf[..k]);
                left -= k;
            }
            s.shutdown(std::net::Shutdown::Write)?;
            let mut ack = Vec::new();
            s.read_to_end(&mut ack)?;
            assert_eq!(ack, b"done");
            Ok(h.finalize().to_vec())
        })
        .unwrap()
        .unwrap();
    let (n, got) = receiver.join().unwrap().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(n, BYTES);
    assert_eq!(got, sent, "sha256 differs between the two ends");
    let totals = rt.counters();
    let server_port = totals
        .ports
        .iter()
        .find(|(id, _, _)| Some(*id) == server.port())
        .copied()
        .unwrap();
    assert!(
        server_port.2 > (BYTES / 1500) as u64 / 2,
        "the data crossed the dataplane: {server_port:?}"
    );
    println!(
        "20 MiB host -> container through the dataplane in {:.2} s ({:.0} Mbit/s)",
        elapsed.as_secs_f64(),
        BYTES as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
    );
    rt.stop().unwrap();
    lab.teardown().unwrap();
}

/// A `bridgewall lab --hold` child process and everything it leaves when killed: killed
/// and reaped, its namespaces deleted, on drop.
struct HeldLab {
    child: Child,
    state_dir: TempDir,
}

impl HeldLab {
    fn prefix(&self) -> String {
        format!("bwlab-{}-", self.child.id())
    }

    fn namespaces(&self) -> Vec<String> {
        let prefix = self.prefix();
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for HeldLab {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

#[test]
fn root_netns_kill_9_leaves_no_xdp_and_restore_gives_ports_back() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let state_dir = TempDir::new("kill");
    let child = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(["lab", "--hold", "--probe-timeout-ms", "400", "--state-dir"])
        .arg(&state_dir.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut held = HeldLab { child, state_dir };
    let stdout = held.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let up = line.contains("lab is up with the dataplane");
            let _ = tx.send(line);
            if up {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut log = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let up = line.contains("lab is up with the dataplane");
                log.push(line);
                if up {
                    break;
                }
            }
            Err(_) => panic!("bridgewall lab --hold did not come up:\n{}", log.join("\n")),
        }
    }
    assert!(
        log.iter().any(|l| l.contains("12/12 steps as expected")),
        "{}",
        log.join("\n")
    );
    let host = format!("{}0-host", held.prefix());
    let c0 = format!("{}0-c0", held.prefix());
    assert_eq!(
        xdp_links(&host).len(),
        4,
        "the dataplane is attached before the kill"
    );
    assert_eq!(
        bridge_ports(&host, "docker0"),
        BTreeSet::from(["bwg0-docker0".to_string()])
    );

    // SIGKILL: nothing of ours runs any more.
    held.child.kill().unwrap();
    held.child.wait().unwrap();
    // bpf_links die with the process; the ports stay off the bridge (cut off, not exposed).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !xdp_links(&host).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(xdp_links(&host).is_empty(), "{:?}", xdp_links(&host));
    assert_eq!(
        bridge_ports(&host, "docker0"),
        BTreeSet::from(["bwg0-docker0".to_string()])
    );
    assert!(
        !ping(&c0, "172.17.0.3", 1),
        "containers are cut off after the crash"
    );
    assert_eq!(std::fs::read_dir(&held.state_dir.0).unwrap().count(), 1);

    let out = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args([
            "restore",
            "--bridge",
            "docker0",
            "--netns",
            &host,
            "--state-dir",
        ])
        .arg(&held.state_dir.0)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("restored"), "{text}");
    let ports = bridge_ports(&host, "docker0");
    assert_eq!(
        ports.len(),
        3,
        "the three container veths are back: {ports:?}"
    );
    assert!(ports.iter().all(|p| p.starts_with("veth")), "{ports:?}");
    assert_eq!(std::fs::read_dir(&held.state_dir.0).unwrap().count(), 0);
    // The kernel bridge carries their traffic again.
    assert!(ping(&c0, "172.17.0.3", 1));
    // A second restore has nothing left to do.
    let out = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args([
            "restore",
            "--bridge",
            "docker0",
            "--netns",
            &host,
            "--state-dir",
        ])
        .arg(&held.state_dir.0)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to restore"));
    let prefix = held.prefix();
    drop(held);
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}
