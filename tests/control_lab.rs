//! The control API end to end on the lab (no Docker): `bridgewall lab --hold` serves its
//! control socket and metrics, and every client command is run against it as a person
//! would — live rule edits, trace, stats, monitor, audit mode, policy modules, capture, the
//! Prometheus scrape — including the bad input each must refuse without changing anything.
//!
//! Traffic runs between the lab's containers (network namespaces it made); the only thing
//! sent from the root namespace is the metrics scrape, to 127.0.0.1.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bridgewall");

/// The lab process; SIGINT and a wait on drop, so the lab tears itself down.
struct Lab {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    socket: PathBuf,
    dir: PathBuf,
}

impl Lab {
    fn start(metrics: u16) -> Lab {
        let dir = std::env::temp_dir().join(format!("bw-control-lab-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("ctl").join("bridgewall.sock");
        let mut child = Command::new(BIN)
            .args(["lab", "--hold", "--control-socket"])
            .arg(&socket)
            .args(["--metrics", &format!("127.0.0.1:{metrics}")])
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bridgewall lab");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        let lab = Lab {
            child,
            lines,
            socket,
            dir,
        };
        lab.wait_for("control API on", Duration::from_secs(180));
        lab.wait_for("lab is up", Duration::from_secs(10));
        lab
    }

    fn wait_for(&self, text: &str, timeout: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.lines.lock().unwrap().iter().any(|l| l.contains(text)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "lab never printed {text:?}; its output:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    /// The namespace of the lab's container number `i` (file order).
    fn container_ns(&self, i: usize) -> String {
        let lines = self.lines.lock().unwrap();
        let ns = lines
            .iter()
            .find_map(|l| l.strip_prefix("namespaces: "))
            .expect("the lab names its namespaces");
        ns.split(", ")
            .find(|n| n.ends_with(&format!("-c{i}")))
            .unwrap_or_else(|| panic!("no namespace for container {i} in {ns}"))
            .to_string()
    }

    /// A client command against the lab's socket.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = text(&out);
        assert!(out.status.success(), "bridgewall {args:?} failed:\n{text}");
        text
    }

    /// A command that must fail; its output.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        let text = text(&out);
        assert!(
            !out.status.success(),
            "bridgewall {args:?} should fail:\n{text}"
        );
        text
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{out}"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-INT", &pid]).status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether an HTTP GET from `ns` to `url` succeeds within 2 s.
fn fetch(ns: &str, url: &str) -> bool {
    Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-m",
            "2",
            url,
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether one ping from `ns` to `ip` is answered within 1 s.
fn ping(ns: &str, ip: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "busybox", "ping", "-c1", "-W1", ip])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Polls `f` until true or `timeout`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: not within {timeout:?}");
}

/// A free loopback port for the metrics endpoint.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A policy module that drops every TCP packet (rule 7) and leaves the rest to the chain.
const DROP_TCP_WAT: &str = r#"(module
  (memory (export "memory") 1 1)
  (func (export "bw_abi_version") (result i32) (i32.const 1))
  (func (export "bw_init") (result i32) (i32.const 1024))
  (func (export "bw_evaluate") (param $n i32)
    (local $i i32) (local $rec i32) (local $out i32)
    (if (i32.gt_u (local.get $n) (i32.const 64)) (then (local.set $n (i32.const 64))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 48))))
        (local.set $out (i32.add (i32.const 4096) (i32.mul (local.get $i) (i32.const 8))))
        (if (i32.eq (i32.load8_u offset=37 (local.get $rec)) (i32.const 6))
          (then
            (i32.store (local.get $out) (i32.const 2))
            (i32.store offset=4 (local.get $out) (i32.const 7)))
          (else
            (i32.store (local.get $out) (i32.const 0))
            (i32.store offset=4 (local.get $out) (i32.const -1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))))"#;

/// Runs a client command in the background (monitor, capture) and gives its output.
struct Background(Option<Child>);

impl Background {
    fn start(lab: &Lab, args: &[&str]) -> Background {
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(&lab.socket)
            .args(args)
            .env("RUST_LIB_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Background(Some(child))
    }

    /// Waits (up to `timeout`, while `poke` makes traffic) for it to end; its output.
    fn finish(mut self, timeout: Duration, mut poke: impl FnMut()) -> (bool, String) {
        let mut child = self.0.take().unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                return (out.status.success(), text(&out));
            }
            poke();
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("background command did not end:\n{}", text(&out));
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn root_lab_control_api_end_to_end() {
    let metrics = free_port();
    let lab = Lab::start(metrics);
    // The walkthrough: nginx_server1 (c0, 172.17.0.2), nginx_server2 (c1, .3), client3 (c2,
    // .4) linked to nginx_server2 on 80; icc=false.
    let client = lab.container_ns(2);
    let web = "http://172.17.0.3/";
    assert!(
        fetch(&client, web),
        "the link admits client3 → nginx_server2:80"
    );

    rules_list_and_live_edits(&lab, &client, web);
    trace_live(&lab);
    monitor_stats_and_audit(&lab, &client);
    policy_modules(&lab, &client, web);
    capture_pcap(&lab, &client, web);
    non_root_refused(&lab);
    metrics_scrape(&lab, metrics);
    stops_with_a_monitor_attached(lab);
}

/// SIGINT while a `monitor` client streams: the lab stops promptly (its server closes the
/// open stream after a short grace, it used to wait for it forever) and the client ends
/// cleanly.
fn stops_with_a_monitor_attached(mut lab: Lab) {
    let mut monitor = Command::new(BIN)
        .arg("--socket")
        .arg(&lab.socket)
        .args(["monitor", "--json"])
        .env("RUST_LIB_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        matches!(monitor.try_wait(), Ok(None)),
        "the monitor streams"
    );
    let pid = lab.child.id().to_string();
    let asked = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let waited = |child: &mut Child, limit: Duration| {
        while asked.elapsed() < limit {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    };
    let lab_status = waited(&mut lab.child, Duration::from_secs(15));
    let monitor_status = waited(&mut monitor, Duration::from_secs(20));
    let _ = monitor.kill();
    let mut err = String::new();
    if let Some(mut e) = monitor.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        lab_status.is_some(),
        "the lab did not stop within 15 s of SIGINT with a monitor attached"
    );
    println!(
        "lab stopped {:.1} s after SIGINT with a monitor attached",
        asked.elapsed().as_secs_f64()
    );
    assert!(
        monitor_status.is_some_and(|s| s.success()),
        "the monitor ends cleanly when bridgewall stops: {monitor_status:?}\n{err}"
    );
}

fn rules_list_and_live_edits(lab: &Lab, client: &str, web: &str) {
    let list = lab.json(&["rules", "list", "--json"]);
    let user = &list["chains"][0];
    assert_eq!(user["name"], "DOCKER-USER");
    assert_eq!(user["rules"][0]["line"], 1, "{list}");
    assert!(
        user["rules"][0]["destination"]
            .as_str()
            .unwrap()
            .contains("nginx_server1"),
        "names beside addresses: {list}"
    );
    let gen0 = list["generation"].as_u64().unwrap();
    let table = lab.ok(&["rules", "list"]);
    assert!(
        table.contains("Chain DOCKER-USER") && table.contains("link client3→nginx_server2"),
        "{table}"
    );

    let spec = [
        "-s",
        "172.17.0.4",
        "-d",
        "172.17.0.3",
        "-p",
        "tcp",
        "--dport",
        "80",
        "-j",
        "REJECT",
    ];
    let mut add = vec!["rules", "add", "--"];
    add.extend(spec);
    let out = lab.ok(&add);
    assert!(out.contains("policy generation"), "{out}");
    assert!(!fetch(client, web), "the added REJECT is in force at once");

    // Bad input: refused with the reason, nothing changed.
    let e = lab.refused(&["rules", "add", "--", "--bogus", "1", "-j", "DROP"]);
    assert!(
        e.contains("--bogus") && e.contains("nothing changed"),
        "{e}"
    );
    let e = lab.refused(&[
        "rules",
        "add",
        "--",
        "-s",
        "no_such_container",
        "-j",
        "DROP",
    ]);
    assert!(e.contains("no_such_container"), "{e}");
    let e = lab.refused(&["rules", "delete", "--", "-s", "10.9.9.9", "-j", "DROP"]);
    assert!(e.contains("no rule in DOCKER-USER"), "{e}");
    let e = lab.refused(&["rules", "delete", "--line", "999"]);
    assert!(
        e.contains("line 999") && e.contains("does not exist"),
        "{e}"
    );
    let e = lab.refused(&["rules", "add", "--", "-A", "DOCKER-USER", "-j", "DROP"]);
    assert!(e.contains("give the rule's options only"), "{e}");
    let after = lab.json(&["rules", "list", "--json"]);
    assert_eq!(
        after["chains"][0]["rules"].as_array().unwrap().len(),
        2,
        "{after}"
    );
    assert!(
        !fetch(client, web),
        "the REJECT stays in force after refused edits"
    );
    assert!(after["generation"].as_u64().unwrap() > gen0);

    let mut del = vec!["rules", "delete", "--"];
    del.extend(spec);
    lab.ok(&del);
    assert!(fetch(client, web), "deleting the rule restores the link");
    // By line: the walkthrough's own rule is line 1.
    lab.ok(&["rules", "delete", "--line", "1"]);
    let after = lab.json(&["rules", "list", "--json"]);
    assert!(
        after["chains"][0]["rules"].as_array().unwrap().is_empty(),
        "{after}"
    );
}

fn trace_live(lab: &Lab) {
    let t = lab.json(&[
        "trace",
        "--from",
        "client3",
        "--to",
        "nginx_server2",
        "-p",
        "tcp",
        "--dport",
        "80",
        "--json",
    ]);
    assert_eq!(t["verdict"], "accept", "{t}");
    assert_eq!(t["agree"], true, "{t}");
    let out = lab.ok(&[
        "trace",
        "--from",
        "client3",
        "--to",
        "nginx_server1",
        "-p",
        "tcp",
        "--dport",
        "80",
    ]);
    assert!(
        out.contains("running bridgewall") && out.contains("icc=false"),
        "{out}"
    );
    let e = lab.refused(&[
        "trace",
        "--from",
        "nobody",
        "--to",
        "nginx_server2",
        "--dport",
        "80",
    ]);
    assert!(e.contains("\"nobody\""), "{e}");
}

fn monitor_stats_and_audit(lab: &Lab, client: &str) {
    // icc=false drops client3 → nginx_server2 ICMP; monitor names both and the rule.
    let mon = Background::start(lab, &["monitor", "--drops", "--count", "1", "--json"]);
    let (ok, out) = mon.finish(Duration::from_secs(20), || {
        ping(client, "172.17.0.3");
    });
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["kind"], "verdict", "{out}");
    assert_eq!(v["from"], "client3", "{out}");
    assert_eq!(v["to"], "nginx_server2", "{out}");
    assert_eq!(v["verdict"], "drop", "{out}");
    assert!(
        v["rule_text"].as_str().unwrap().contains("icc=false"),
        "{out}"
    );
    let e = lab.refused(&["monitor", "--container", "ghost"]);
    assert!(e.contains("ghost"), "{e}");

    let stats = lab.json(&["stats", "--json"]);
    let c3 = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client3")
        .cloned()
        .unwrap();
    assert!(c3["rx_packets"].as_u64().unwrap() > 0, "{stats}");
    assert!(c3["denied"].as_u64().unwrap() > 0, "{stats}");
    let denied_audit = c3["audit_denied"].as_u64().unwrap();
    assert!(lab.ok(&["stats"]).contains("client3"));

    // Audit: what enforce mode drops is forwarded, and counted.
    assert!(!ping(client, "172.17.0.2"));
    lab.ok(&["audit", "on"]);
    assert!(
        ping(client, "172.17.0.2"),
        "audit mode forwards what enforce mode drops"
    );
    let stats = lab.json(&["stats", "--json"]);
    assert_eq!(stats["audit"], true);
    let c3 = stats["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "client3")
        .cloned()
        .unwrap();
    assert!(
        c3["audit_denied"].as_u64().unwrap() > denied_audit,
        "{stats}"
    );
    lab.ok(&["audit", "off"]);
    eventually("the drop is enforced again", Duration::from_secs(5), || {
        !ping(client, "172.17.0.2")
    });
}

fn policy_modules(lab: &Lab, client: &str, web: &str) {
    let bad = lab.dir.join("corrupt.wasm");
    std::fs::write(&bad, b"\0asm\x01\0\0\0garbage").unwrap();
    let e = lab.refused(&["policy", "load", bad.to_str().unwrap()]);
    assert!(e.contains("corrupt.wasm") && e.lines().count() <= 2, "{e}");
    let e = lab.refused(&["policy", "check", bad.to_str().unwrap()]);
    assert!(e.contains("corrupt.wasm"), "{e}");
    assert_eq!(
        lab.json(&["policy", "list", "--json"]),
        serde_json::json!([])
    );

    let good = lab.dir.join("drop-tcp.wat");
    std::fs::write(&good, DROP_TCP_WAT).unwrap();
    lab.ok(&["policy", "check", good.to_str().unwrap()]);
    lab.ok(&["policy", "load", good.to_str().unwrap()]);
    assert!(!fetch(client, web), "the loaded module drops TCP");
    let e = lab.refused(&["policy", "load", good.to_str().unwrap()]);
    assert!(e.contains("loaded already"), "{e}");
    let list = lab.json(&["policy", "list", "--json"]);
    assert_eq!(list[0]["name"], "drop-tcp.wat", "{list}");
    assert!(list[0]["decisions"][1].as_u64().unwrap() > 0, "{list}");
    lab.ok(&["policy", "unload", "drop-tcp.wat"]);
    assert!(
        fetch(client, web),
        "unloading restores the compiled policy's verdict"
    );
    let e = lab.refused(&["policy", "unload", "drop-tcp.wat"]);
    assert!(e.contains("no module called"), "{e}");
    // A module in audit mode counts, never enforces.
    lab.ok(&["policy", "load", "--audit", good.to_str().unwrap()]);
    assert!(fetch(client, web), "an audited module does not drop");
    let list = lab.json(&["policy", "list", "--json"]);
    assert_eq!(list[0]["audit"], true);
    assert!(list[0]["audit_denied"].as_u64().unwrap() > 0, "{list}");
    lab.ok(&["policy", "unload", "drop-tcp.wat"]);
}

fn capture_pcap(lab: &Lab, client: &str, web: &str) {
    let file = lab.dir.join("client3.pcap");
    let cap = Background::start(
        lab,
        &[
            "capture",
            "--port",
            "client3",
            "--count",
            "4",
            "--timeout",
            "20",
            "-w",
            file.to_str().unwrap(),
        ],
    );
    let (ok, out) = cap.finish(Duration::from_secs(30), || {
        fetch(client, web);
    });
    assert!(ok, "{out}");
    assert!(out.contains("4 frames captured on client3"), "{out}");
    let packets = pcap_packets(&file);
    assert_eq!(packets, 4, "{out}");
    let e = lab.refused(&["capture", "--port", "ghost", "--count", "1"]);
    assert!(e.contains("ghost"), "{e}");
}

/// Packets in a classic little-endian pcap file (checking the magic and every header).
fn pcap_packets(path: &Path) -> usize {
    let d = std::fs::read(path).unwrap();
    assert!(
        d.len() >= 24 && d[..4] == 0xa1b2c3d4u32.to_le_bytes(),
        "pcap magic"
    );
    let mut at = 24;
    let mut n = 0;
    while at + 16 <= d.len() {
        let incl = u32::from_le_bytes(d[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16 + incl;
        n += 1;
    }
    assert_eq!(at, d.len(), "records end at the end of the file");
    n
}

fn non_root_refused(lab: &Lab) {
    let as_nobody = |sock: &Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .arg("--socket")
            .arg(sock)
            .arg("stats")
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let out = as_nobody(&lab.socket);
    assert!(!out.status.success());
    assert!(text(&out).contains("run this as root"), "{}", text(&out));
    // Even when the file modes would let it in, the server refuses a non-root peer.
    use std::os::unix::fs::PermissionsExt;
    let dir = lab.socket.parent().unwrap();
    std::fs::set_permissions(&lab.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&lab.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&lab.socket);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("uid 65534 is not root"),
        "{}",
        text(&out)
    );
}

fn metrics_scrape(lab: &Lab, port: u16) {
    // Loopback only: the metrics endpoint listens on 127.0.0.1.
    let mut body = String::new();
    eventually("a metrics scrape", Duration::from_secs(10), || {
        let out = Command::new("curl")
            .args(["-s", "-m", "2", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success() && body.contains("bridgewall_container_packets_total")
    });
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{body}"));
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert!(
        value(
            "bridgewall_container_packets_total",
            &[("container", "client3"), ("direction", "rx")]
        ) > 0.0,
        "{body}"
    );
    let swaps = value("bridgewall_policy_swaps_total", &[]);
    assert!(swaps >= 8.0, "swaps {swaps}: {body}");
    assert!(
        value("bridgewall_drops_total", &[("reason", "policy_drop")]) > 0.0,
        "{body}"
    );
    assert_eq!(value("bridgewall_audit_mode", &[]), 0.0, "{body}");
    let _ = lab;
}
