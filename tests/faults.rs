//! Faults under load (issue 12), against a real Docker engine (Debian's docker.io, in a
//! network namespace of its own) and `bridgewall run` as a child process:
//!
//! - `kill -9` of `bridgewall run` under load cuts the containers off (nothing passes, what
//!   the policy denied included, and no XDP program stays attached), `bridgewall restore`
//!   gives the ports back, and a restart — after a restore, or directly after the kill,
//!   through the takeover's state file, without ever handing the ports to the kernel bridge
//!   (a user rule's DROP holds throughout) — takes every port back and serves again (the
//!   time from the restart to the first allowed probe is measured and printed);
//! - the Docker engine stopped and started under load: the policy in force stays in force
//!   while it is gone, and a container started when it is back is attached, nobody else;
//! - a hostile user module (a loop, a memory grower that traps) loaded under load: it is
//!   stopped and counted, its packets get the fail-closed verdict, the other traffic keeps
//!   its rate, and `policy unload` restores the normal verdicts;
//! - a rule toggled many times while a flood of new flows runs: every policy generation is
//!   all-or-nothing and what its rule table says (`monitor --json`), packets sent while the
//!   rule is in force never arrive, and an allowed stream loses nothing across the swaps;
//! - resource limits: `prlimit --memlock` without CAP_IPC_LOCK (which exempts root from the
//!   limit) fails naming RLIMIT_MEMLOCK and leaves the bridge as it was; with
//!   `--max-containers 1` the container beyond it is cut off and the other works;
//! - `soak` (ignored; `BRIDGEWALL_SOAK_SECS`, default 600): mixed traffic, a rule change a
//!   second, containers coming and going, bridgewall's RSS flat and its counters consistent.
//!
//! `root_faults_max_containers_later_container` pins a bug it found, since fixed (a
//! container beyond `--max-containers` started while bridgewall ran stayed on docker0).
//! `root_faults_hostile_batch_collateral` (ignored) states a known limit: a module
//! quarantined for failing batch after batch fails closed every flow it judges.
//!
//! Traffic is made by this process: its sockets are created on threads that entered a
//! container's network namespace (`/proc/PID/ns/net`, see `controller::netlink::Netns`), so
//! every packet is sent inside the engine's namespaces, never from the root namespace. The
//! engines, namespaces, bridgewall processes, `monitor` children and traffic threads are
//! removed by guards, also when a test fails. Needs root; under a minute once docker.io is
//! installed.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use controller::control::api::{
    MonitorLine, PolicyInfo, RuleEditReply, RulesReply, StatsReply, VerdictLine,
};
use controller::netlink::{Netns, NsThread};
use dataplane::wasm::RULE_FAIL_CLOSED;
use support::bridgewall::at;
use support::docker::DockerEngine;

const BIN: &str = env!("CARGO_BIN_EXE_bridgewall");
/// The page busybox httpd serves in `lab/busybox`.
const PAGE: &str = "hello from busybox httpd";
/// How long something that must start working may take before the test gives up.
const SETTLE: Duration = Duration::from_secs(20);
/// How long a probe that must succeed may take (connect, and then the page): generous, as
/// the tests run side by side on small machines; one that must fail is given less.
const PROBE: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------
// Small helpers.

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs `cmd`; panics naming it if it cannot start.
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `bridgewall --socket SOCKET ARGS…`, run to the end.
fn cli(socket: &Path, args: &[&str]) -> Output {
    output(
        Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0"),
    )
}

/// A client command that must succeed; its standard output.
fn cli_ok(socket: &Path, args: &[&str]) -> String {
    let out = cli(socket, args);
    assert!(
        out.status.success(),
        "bridgewall {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A client command with `--json` that must succeed, decoded as `$t`.
macro_rules! cli_json {
    ($t:ty, $socket:expr, $args:expr $(,)?) => {{
        let args: &[&str] = $args;
        let out = cli_ok($socket, args);
        serde_json::from_str::<$t>(&out)
            .unwrap_or_else(|e| panic!("bridgewall {args:?}: not the expected JSON ({e}):\n{out}"))
    }};
}

fn stats(socket: &Path) -> StatsReply {
    cli_json!(StatsReply, socket, &["stats", "--json"])
}

fn policies(socket: &Path) -> Vec<PolicyInfo> {
    cli_json!(Vec<PolicyInfo>, socket, &["policy", "list", "--json"])
}

/// Polls `f` until it holds; panics naming `what` after `timeout`.
fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ip_of(engine: &DockerEngine, name: &str) -> Ipv4Addr {
    let s = engine.inspect(name, "{{.NetworkSettings.IPAddress}}");
    s.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}'s address {s:?}: {e}"))
}

/// Names of the container veths on the engine's docker0.
fn veths_on_docker0(engine: &DockerEngine) -> Vec<String> {
    engine
        .bridge_ports("docker0")
        .into_iter()
        .filter(|p| p.starts_with("veth"))
        .collect()
}

/// Names of every veth in the engine's namespace (the containers' host sides).
fn all_veths(engine: &DockerEngine) -> BTreeSet<String> {
    engine
        .ns_links()
        .into_iter()
        .filter(|p| p.starts_with("veth"))
        .collect()
}

/// Lines of `ip -d link` in the engine's namespace that show an XDP program.
fn xdp_lines(engine: &DockerEngine) -> Vec<String> {
    let out = output(Command::new("ip").args(["-d", "-n", &engine.netns, "-o", "link", "show"]));
    text(&out.stdout)
        .lines()
        .filter(|l| l.contains("prog/xdp") || l.contains(" xdp"))
        .map(str::to_string)
        .collect()
}

/// Names of bridgewall's gateway pair links left in the engine's namespace.
fn gateway_links(engine: &DockerEngine) -> Vec<String> {
    engine
        .ns_links()
        .into_iter()
        .filter(|l| l.starts_with("bwg"))
        .collect()
}

/// The takeover's state file for docker0 in the engine's namespace.
fn state_file(engine: &DockerEngine, state_dir: &Path) -> PathBuf {
    state_dir.join(format!("{}-docker0.json", engine.netns))
}

/// The port names the state file records.
fn recorded_ports(path: &Path) -> BTreeSet<String> {
    let t = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading the state file {}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&t).expect("the state file is JSON");
    v["ports"]
        .as_array()
        .expect("ports in the state file")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Whether `line` has `word` as a word of its own (between non-alphanumeric characters).
fn mentions(line: &str, word: &str) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w == word)
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------
// Containers' namespaces and probes.

/// A container (or the Docker host) by its network namespace.
#[derive(Clone)]
struct Peer {
    name: String,
    ip: Ipv4Addr,
    ns: Arc<Netns>,
}

impl Peer {
    /// Container `name`, entered through its init process's namespace.
    fn container(engine: &DockerEngine, name: &str) -> Peer {
        let pid = engine.inspect(name, "{{.State.Pid}}");
        let ns = Netns::open(&format!("/proc/{}/ns/net", pid.trim()))
            .unwrap_or_else(|e| panic!("opening {name}'s namespace: {e}"));
        Peer {
            name: name.to_string(),
            ip: ip_of(engine, name),
            ns: Arc::new(ns),
        }
    }

    /// The Docker host: the engine's namespace (docker0's address).
    fn host(engine: &DockerEngine) -> Peer {
        let ns = Netns::open(&engine.netns).expect("opening the engine's namespace");
        Peer {
            name: "host".into(),
            ip: Ipv4Addr::new(172, 17, 0, 1),
            ns: Arc::new(ns),
        }
    }

    /// `GET /` on `to`:`port` from this peer, each step within `timeout`; the response.
    fn http_get(&self, to: Ipv4Addr, port: u16, timeout: Duration) -> Option<String> {
        let addr = SocketAddr::from((to, port));
        let mut s = self
            .ns
            .run(move || TcpStream::connect_timeout(&addr, timeout))
            .expect("entering a container's namespace")
            .ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.set_write_timeout(Some(timeout)).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// Whether `to`'s busybox page is served to this peer within `timeout`.
    fn served(&self, to: &Peer, timeout: Duration) -> bool {
        self.http_get(to.ip, 80, timeout)
            .is_some_and(|b| b.contains(PAGE))
    }

    /// One datagram to `to`:`port` from a fresh socket (a new flow), and whether its echo
    /// comes back within `timeout`.
    fn udp_echo(&self, to: Ipv4Addr, port: u16, timeout: Duration) -> bool {
        let s = match self
            .ns
            .run(|| UdpSocket::bind(("0.0.0.0", 0)))
            .expect("entering a container's namespace")
        {
            Ok(s) => s,
            Err(_) => return false,
        };
        let token = format!("probe-{:?}", Instant::now());
        if s.connect((to, port)).is_err() || s.send(token.as_bytes()).is_err() {
            return false;
        }
        let _ = s.set_read_timeout(Some(timeout));
        let mut buf = [0u8; 256];
        matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == token.as_bytes())
    }
}

/// A UDP echo server on a port of a container; stopped on drop.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(on: &Peer, port: u16) -> UdpEcho {
        let sock = on
            .ns
            .run(move || UdpSocket::bind(("0.0.0.0", port)))
            .expect("entering a container's namespace")
            .unwrap_or_else(|e| panic!("binding udp/{port} in {}: {e}", on.name));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Load: a paced UDP stream with sequence numbers, sender and receiver in two containers.

/// A paced UDP flow from one container to another: one socket (one long-lived flow) or a
/// fresh socket with its own source port per datagram (a flood of new flows, each judged by
/// the policy). Every datagram carries its sequence number; the send time of each and the
/// arrival time of each received one are kept, so loss and gaps can be read for any
/// window. Stopped (threads joined) on drop.
struct Flow {
    what: String,
    t0: Instant,
    stop: Arc<AtomicBool>,
    sent: Arc<Mutex<Vec<Duration>>>,
    got: Arc<Mutex<Vec<(u64, Duration)>>>,
    send_errors: Arc<AtomicU64>,
    sender: Option<NsThread<()>>,
    receiver: Option<JoinHandle<()>>,
}

impl Flow {
    /// `pps` datagrams a second from `from` to `to`:`port`.
    fn start(what: &str, from: &Peer, to: &Peer, port: u16, pps: u32, fresh_flows: bool) -> Flow {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let send_errors = Arc::new(AtomicU64::new(0));
        let magic = 0xb1d6_e3a1_0000_0000u64 | u64::from(port);
        let sock = to
            .ns
            .run(move || UdpSocket::bind(("0.0.0.0", port)))
            .expect("entering a container's namespace")
            .unwrap_or_else(|e| panic!("binding udp/{port} in {}: {e}", to.name));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let receiver = {
            let (stop, got) = (Arc::clone(&stop), Arc::clone(&got));
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf)
                        && n >= 16
                        && u64::from_le_bytes(buf[..8].try_into().unwrap()) == magic
                    {
                        let seq = u64::from_le_bytes(buf[8..16].try_into().unwrap());
                        got.lock().unwrap().push((seq, t0.elapsed()));
                    }
                }
            })
        };
        let dst = SocketAddr::from((to.ip, port));
        let sender = {
            let (stop, sent, errors) = (
                Arc::clone(&stop),
                Arc::clone(&sent),
                Arc::clone(&send_errors),
            );
            from.ns
                .spawn("faults-flow", move || {
                    let one = UdpSocket::bind(("0.0.0.0", 0)).expect("a UDP socket");
                    let period = 1.0 / f64::from(pps);
                    let mut seq = 0u64;
                    let mut payload = [0u8; 64];
                    payload[..8].copy_from_slice(&magic.to_le_bytes());
                    let mut times = Vec::with_capacity(256);
                    while !stop.load(Ordering::Relaxed) {
                        let due = (t0.elapsed().as_secs_f64() / period) as u64;
                        let until = due.min(seq + 200);
                        while seq < until {
                            payload[8..16].copy_from_slice(&seq.to_le_bytes());
                            let r = if fresh_flows {
                                // Source ports 20000–59999 in turn: each datagram a new flow.
                                let sport = 20_000 + (seq % 40_000) as u16;
                                UdpSocket::bind(("0.0.0.0", sport))
                                    .and_then(|s| s.send_to(&payload, dst))
                            } else {
                                one.send_to(&payload, dst)
                            };
                            if r.is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            times.push(t0.elapsed());
                            seq += 1;
                        }
                        if !times.is_empty() {
                            sent.lock().unwrap().append(&mut times);
                        }
                        std::thread::sleep(Duration::from_micros(500));
                    }
                })
                .expect("entering a container's namespace")
        };
        Flow {
            what: what.to_string(),
            t0,
            stop,
            sent,
            got,
            send_errors,
            sender: Some(sender),
            receiver: Some(receiver),
        }
    }

    /// Time on this flow's clock.
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Datagrams received with an arrival in `[a, b)`.
    fn received_in(&self, a: Duration, b: Duration) -> usize {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t >= a && *t < b)
            .count()
    }

    /// Received datagrams a second over `[a, b)`.
    fn rate(&self, a: Duration, b: Duration) -> f64 {
        self.received_in(a, b) as f64 / (b - a).as_secs_f64()
    }

    /// The arrival time of the first datagram received at or after `a`.
    fn first_after(&self, a: Duration) -> Option<Duration> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|&(_, t)| t)
            .filter(|t| *t >= a)
            .min()
    }

    /// The longest time without an arrival within `[a, b)`.
    fn max_gap(&self, a: Duration, b: Duration) -> Duration {
        let mut times: Vec<Duration> = self
            .got
            .lock()
            .unwrap()
            .iter()
            .map(|&(_, t)| t)
            .filter(|t| *t >= a && *t < b)
            .collect();
        times.sort();
        let mut last = a;
        let mut gap = Duration::ZERO;
        for t in times.into_iter().chain([b]) {
            gap = gap.max(t - last);
            last = t;
        }
        gap
    }

    /// Of the datagrams sent in `[a, b)`: how many were sent, and how many arrived.
    fn fate(&self, a: Duration, b: Duration) -> (usize, usize) {
        let seqs: BTreeSet<u64> = self
            .sent
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .filter(|(_, t)| **t >= a && **t < b)
            .map(|(i, _)| i as u64)
            .collect();
        let got: BTreeSet<u64> = self.got.lock().unwrap().iter().map(|&(s, _)| s).collect();
        (seqs.len(), seqs.iter().filter(|s| got.contains(s)).count())
    }

    /// The send time of every datagram, and the set of those that arrived.
    fn record(&self) -> (Vec<Duration>, BTreeSet<u64>) {
        let sent = self.sent.lock().unwrap().clone();
        let got = self.got.lock().unwrap().iter().map(|&(s, _)| s).collect();
        (sent, got)
    }

    fn totals(&self) -> (usize, usize, u64) {
        (
            self.sent.lock().unwrap().len(),
            self.got.lock().unwrap().len(),
            self.send_errors.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.join();
        }
        if let Some(r) = self.receiver.take() {
            let _ = r.join();
        }
        let (sent, got, errors) = self.totals();
        println!(
            "flow {}: {sent} sent, {got} received, {errors} send errors",
            self.what
        );
    }
}

// ---------------------------------------------------------------------------------------
// bridgewall run as a child process.

/// `bridgewall run` on the engine's docker0 (optionally behind a wrapper such as `prlimit`),
/// its output collected line by line. SIGINT on drop (SIGKILL if it does not stop).
struct BwProc {
    child: Option<Child>,
    pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    socket: PathBuf,
}

impl BwProc {
    /// `bridgewall run --docker-host … --netns … --state-dir STATE EXTRA…`.
    fn run(engine: &DockerEngine, state_dir: &Path, extra: &[&str]) -> BwProc {
        Self::wrapped(&[], engine, state_dir, extra)
    }

    /// Like [`BwProc::run`], with `wrapper` (a command that execs the rest) before the binary.
    fn wrapped(wrapper: &[&str], engine: &DockerEngine, state_dir: &Path, extra: &[&str]) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args([
            "run",
            "--docker-host",
            &engine.host(),
            "--netns",
            &engine.netns,
        ])
        .arg("--state-dir")
        .arg(state_dir)
        .args(extra)
        .env("NO_COLOR", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting bridgewall run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (stream, prefix) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                "",
            ),
            (Box::new(child.stderr.take().unwrap()), "stderr: "),
        ] {
            let log = Arc::clone(&log);
            readers.push(std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(format!("{prefix}{l}"));
                }
            }));
        }
        BwProc {
            pid: child.id(),
            child: Some(child),
            log,
            readers,
            socket: state_dir.join("bridgewall.sock"),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn tail(&self, n: usize) -> String {
        let l = self.lines();
        l[l.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process still runs.
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Polls `done` over the log until it holds; panics with the log's tail after `timeout`
    /// or if bridgewall exits.
    fn wait_for(&mut self, what: &str, timeout: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.lines()) {
                return;
            }
            if !self.alive() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "bridgewall exited while waiting for {what}:\n{}",
                    self.tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {timeout:?}; bridgewall's last lines:\n{}",
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until it enforces docker0 with `n` containers taken over (no veth left on the
    /// bridge) and serves its control socket.
    fn wait_enforcing(&mut self, engine: &DockerEngine, n: usize) {
        let want = format!("({n} container interfaces");
        self.wait_for("bridgewall enforcing docker0", SETTLE, |l| {
            l.iter()
                .any(|l| l.contains("bridgewall is enforcing") && l.contains(&want))
                && l.iter().any(|l| l.contains("control API on"))
        });
        let socket = self.socket.clone();
        eventually("the takeover and the control socket", SETTLE, || {
            veths_on_docker0(engine).is_empty() && socket.exists()
        });
    }

    /// SIGKILL (`kill -9`, sent directly: spawning `kill` can take seconds on a loaded
    /// machine), reaped.
    fn kill9(&mut self) {
        let mut child = self.child.take().expect("bridgewall runs");
        child.kill().expect("kill -9 bridgewall");
        let st = child.wait().expect("reaping bridgewall");
        assert!(!st.success(), "bridgewall survived kill -9: {st}");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// Waits for it to exit by itself; its status (None if it did not within `timeout`, in
    /// which case it is killed).
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.take()?;
        let st = wait_or_kill(child, timeout);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        st
    }

    /// SIGINT and wait; its exit status if it exited by itself.
    fn interrupt(&mut self) -> Option<ExitStatus> {
        let child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let st = wait_or_kill(child, Duration::from_secs(30));
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        st
    }
}

impl Drop for BwProc {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = wait_or_kill(child, Duration::from_secs(30));
        }
    }
}

fn wait_or_kill(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `bridgewall monitor --json` left running, its lines parsed on a thread; killed on drop.
struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<MonitorLine>>>,
    reader: Option<JoinHandle<()>>,
}

impl Monitor {
    fn start(socket: &Path, args: &[&str]) -> Monitor {
        let mut child = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(["monitor", "--json"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting bridgewall monitor");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let reader = std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<MonitorLine>(&l) {
                    Ok(m) => sink.lock().unwrap().push(m),
                    Err(e) => panic!("a monitor line that is not JSON ({e}): {l}"),
                }
            }
        });
        Monitor {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn verdicts(&self) -> Vec<VerdictLine> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| match l {
                MonitorLine::Verdict(v) => Some((**v).clone()),
                MonitorLine::Lost { .. } => None,
            })
            .collect()
    }

    fn lost(&self) -> u64 {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| match l {
                MonitorLine::Lost { events } => *events,
                MonitorLine::Verdict(_) => 0,
            })
            .sum()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The standard cast: `web` (httpd on 80, `--expose 5000/udp --expose 5001/udp`), `db`
/// (httpd), `client` (`--link web:web`): with icc=false, client reaches web's 80/tcp,
/// 5000/udp and 5001/udp through the link and nothing of db.
fn three_containers(engine: &DockerEngine) -> (Peer, Peer, Peer) {
    engine.run_container(
        "web",
        &["--expose", "5000/udp", "--expose", "5001/udp"],
        &[],
    );
    engine.run_container("db", &[], &[]);
    engine.run_container("client", &["--link", "web:web"], &[]);
    (
        Peer::container(engine, "web"),
        Peer::container(engine, "db"),
        Peer::container(engine, "client"),
    )
}

// ---------------------------------------------------------------------------------------
// kill -9, restore, restart.

#[test]
fn root_faults_kill9_restore_and_restart_under_load() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(false);
    let (web, db, client) = three_containers(&engine);
    let state_dir = engine.dir.join("bw-state");
    let state = state_file(&engine, &state_dir);
    let veths = all_veths(&engine);
    assert_eq!(veths.len(), 3, "three container veths: {veths:?}");
    println!(
        "{} engine up (icc=false): web {}, db {}, client {}",
        at(t0),
        web.ip,
        db.ip,
        client.ip
    );

    // A user rule denies what Docker's link allows: client → web udp/5001. Only
    // bridgewall enforces it (the kernel bridge with Docker's iptables would pass it).
    let rules = engine.dir.join("rules.txt");
    std::fs::write(
        &rules,
        "-A DOCKER-USER -s client -d web -p udp --dport 5001 -j DROP\n",
    )
    .unwrap();
    let rules_arg = ["--rules", rules.to_str().unwrap()];
    let mut bw = BwProc::run(&engine, &state_dir, &rules_arg);
    bw.wait_enforcing(&engine, 3);
    eventually("client → web through bridgewall", SETTLE, || {
        client.served(&web, Duration::from_secs(1))
    });
    assert!(
        !client.served(&db, Duration::from_millis(700)),
        "client → db passes with icc=false"
    );
    let flow = Flow::start("client→web udp/5000", &client, &web, 5000, 1000, false);
    let denied = Flow::start(
        "client→web udp/5001 (user rule DROP)",
        &client,
        &web,
        5001,
        1000,
        false,
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = flow.rate(flow.now() - Duration::from_millis(1500), flow.now());
    println!(
        "{} under load: {before:.0} datagrams/s client → web",
        at(t0)
    );
    assert!(before > 800.0, "the stream does not flow: {before:.0}/s");

    // ---- kill -9: cut off, never exposed. ----
    bw.kill9();
    let killed_at = flow.now();
    println!("{} kill -9 bridgewall", at(t0));
    assert!(
        veths_on_docker0(&engine).is_empty(),
        "a container veth went back on docker0 by itself after kill -9"
    );
    assert_eq!(
        recorded_ports(&state),
        veths,
        "the state file does not record every taken port"
    );
    // The XDP programs are attached by bpf links, which die with the process.
    eventually(
        "no XDP program left after kill -9",
        Duration::from_secs(5),
        || xdp_lines(&engine).is_empty(),
    );
    let dead_until = Instant::now() + Duration::from_secs(3);
    let mut denied_probes = 0;
    while Instant::now() < dead_until {
        assert!(
            !client.served(&db, Duration::from_millis(300)),
            "client → db (denied by the policy) passed while bridgewall was dead"
        );
        assert!(
            !client.served(&web, Duration::from_millis(300)),
            "client → web passed while bridgewall was dead: the veths are off the bridge"
        );
        assert!(
            !web.served(&db, Duration::from_millis(300)),
            "web → db passed while bridgewall was dead"
        );
        denied_probes += 3;
    }
    let dead_rx = flow.received_in(killed_at + Duration::from_millis(100), flow.now());
    println!(
        "{} while dead: {denied_probes} probes all failed, stream received {dead_rx} datagrams",
        at(t0)
    );
    assert_eq!(dead_rx, 0, "the stream still flows with bridgewall dead");

    assert_eq!(
        denied.received_in(Duration::ZERO, denied.now()),
        0,
        "the stream a user rule denies passed before the restore"
    );

    // ---- bridgewall restore (ExecStopPost): the ports go back. ----
    let out = output(
        Command::new(BIN)
            .args(["restore", "--bridge", "docker0", "--netns", &engine.netns])
            .arg("--state-dir")
            .arg(&state_dir),
    );
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "bridgewall restore failed: {said}{}",
        text(&out.stderr)
    );
    println!("{} {}", at(t0), said.trim());
    assert!(said.contains("restored"), "{said}");
    let back: BTreeSet<String> = veths_on_docker0(&engine).into_iter().collect();
    assert_eq!(back, veths, "restore did not put every port back");
    assert!(
        gateway_links(&engine).is_empty(),
        "the gateway pair survived the restore: {:?}",
        gateway_links(&engine)
    );
    assert!(!state.exists(), "the state file survived the restore");
    eventually("client → web over the kernel bridge", SETTLE, || {
        client.served(&web, Duration::from_secs(1))
    });
    assert!(
        !client.served(&db, Duration::from_millis(700)),
        "client → db passes over the kernel bridge (Docker's icc=false)"
    );
    let restored_at = flow.now();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        flow.received_in(restored_at, flow.now()) > 0,
        "the stream does not flow over the kernel bridge after restore"
    );

    // ---- restart after the restore: every port taken back, serving again. ----
    let (serving, gap, _) = restart_and_measure(
        &engine, &state_dir, &rules_arg, &flow, &client, &web, &mut bw,
    );
    let enforced_from = denied.now();
    println!(
        "{} RESTART after restore: first allowed probe through bridgewall {:.0} ms after the restart command; the stream's longest gap across the takeover {:.0} ms",
        at(t0),
        ms(serving),
        ms(gap)
    );
    assert!(
        !client.served(&db, Duration::from_millis(700)),
        "client → db passes after the restart"
    );
    assert_eq!(recorded_ports(&state), veths);

    // ---- kill -9 again, restart directly (no restore): the state file is undone first. ----
    bw.kill9();
    let killed_at = flow.now();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        flow.received_in(killed_at + Duration::from_millis(100), flow.now()),
        0,
        "the stream flows with bridgewall dead (second kill)"
    );
    assert!(veths_on_docker0(&engine).is_empty());
    assert!(
        state.exists(),
        "no state file after the second kill -9: the restart could not undo it"
    );
    let before_restart = denied.now();
    assert_eq!(
        denied.received_in(enforced_from, before_restart),
        0,
        "the stream a user rule denies passed after the restart or while bridgewall was dead"
    );
    let (serving, _, first) = restart_and_measure(
        &engine, &state_dir, &rules_arg, &flow, &client, &web, &mut bw,
    );
    println!(
        "{} RESTART after kill -9 without restore: first allowed probe through bridgewall {:.0} ms after the restart command, first stream datagram {}",
        at(t0),
        ms(serving),
        first.map_or("never".into(), |d| format!("{:.0} ms", ms(d)))
    );
    assert_eq!(
        recorded_ports(&state),
        veths,
        "the new state file does not record every port"
    );
    let gw = gateway_links(&engine);
    assert_eq!(gw.len(), 2, "one gateway pair after the restart: {gw:?}");
    assert_eq!(
        xdp_lines(&engine).len(),
        4,
        "XDP on the three veths and the gateway's inner end:\n{}",
        xdp_lines(&engine).join("\n")
    );
    assert!(
        !client.served(&db, Duration::from_millis(700)),
        "client → db passes after the restart without restore"
    );
    let now = flow.now();
    std::thread::sleep(Duration::from_secs(1));
    let after = flow.rate(now, flow.now());
    let slipped = denied.received_in(before_restart, denied.now());
    println!(
        "{} the stream a user rule denies: {} datagrams passed after the restore (the kernel bridge, by design), {slipped} during and after the restart without restore",
        at(t0),
        denied.received_in(Duration::ZERO, enforced_from)
    );
    assert_eq!(
        slipped, 0,
        "datagrams a user rule denies passed while bridgewall restarted after kill -9"
    );
    println!("{} after the restarts: {after:.0} datagrams/s", at(t0));
    assert!(
        after > 800.0,
        "the stream does not flow again: {after:.0}/s"
    );

    let st = bw.interrupt();
    assert!(
        st.is_some_and(|s| s.success()),
        "bridgewall did not stop cleanly ({st:?}):\n{}",
        bw.tail(30)
    );
    let back: BTreeSet<String> = veths_on_docker0(&engine).into_iter().collect();
    assert_eq!(back, veths, "the ports are not back after a clean stop");
    assert!(!state.exists());
    println!("{} done", at(t0));
}

/// Starts `bridgewall run` again (into `bw`) and measures, from the command, the time to the
/// first allowed probe (client → web's page) that went through the dataplane: probed
/// only while no container veth is on docker0. Returns it, the stream's longest gap from
/// the command until two seconds after the takeover finished, and the time from the
/// command to the stream's first datagram.
fn restart_and_measure(
    engine: &DockerEngine,
    state_dir: &Path,
    extra: &[&str],
    flow: &Flow,
    client: &Peer,
    web: &Peer,
    bw: &mut BwProc,
) -> (Duration, Duration, Option<Duration>) {
    let from = flow.now();
    let started = Instant::now();
    *bw = BwProc::run(engine, state_dir, extra);
    let serving = loop {
        assert!(
            started.elapsed() < SETTLE,
            "no allowed probe through bridgewall within {SETTLE:?} of the restart:\n{}",
            bw.tail(30)
        );
        if veths_on_docker0(engine).is_empty()
            && !gateway_links(engine).is_empty()
            && client.served(web, Duration::from_millis(250))
            && veths_on_docker0(engine).is_empty()
        {
            break started.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    bw.wait_enforcing(engine, 3);
    std::thread::sleep(Duration::from_secs(2));
    (
        serving,
        flow.max_gap(from, flow.now()),
        flow.first_after(from).map(|t| t - from),
    )
}

// ---------------------------------------------------------------------------------------
// The Docker engine restarted under load.

#[test]
fn root_faults_engine_restart_under_load() {
    let t0 = Instant::now();
    // live-restore: the containers keep running while dockerd is stopped.
    let mut engine = DockerEngine::start_with(false, true);
    let (web, db, client) = three_containers(&engine);
    let state_dir = engine.dir.join("bw-state");
    let mut bw = BwProc::run(&engine, &state_dir, &[]);
    bw.wait_enforcing(&engine, 3);
    let socket = bw.socket.clone();
    eventually("client → web", SETTLE, || {
        client.served(&web, Duration::from_secs(1))
    });
    let flow = Flow::start("client→web udp/5000", &client, &web, 5000, 1000, false);
    std::thread::sleep(Duration::from_secs(2));
    let generation = stats(&socket).generation;
    let before = flow.rate(flow.now() - Duration::from_millis(1500), flow.now());
    println!(
        "{} enforcing generation {generation}, {before:.0} datagrams/s",
        at(t0)
    );

    // ---- dockerd stopped: the policy in force stays. ----
    let stopped_at = flow.now();
    engine.stop_daemon();
    println!("{} dockerd stopped", at(t0));
    bw.wait_for("bridgewall noticing the engine is gone", SETTLE, |l| {
        l.iter().any(|l| l.contains("engine lost"))
    });
    let gone_until = Instant::now() + Duration::from_secs(3);
    let mut probes = 0;
    let mut slowest = Duration::ZERO;
    while Instant::now() < gone_until {
        let asked = Instant::now();
        assert!(
            client.served(&web, PROBE),
            "client → web (allowed) fails while the engine is gone"
        );
        slowest = slowest.max(asked.elapsed());
        assert!(
            !client.served(&db, Duration::from_millis(300)),
            "client → db (denied) passes while the engine is gone"
        );
        probes += 2;
    }
    let s = stats(&socket);
    assert_eq!(
        s.generation, generation,
        "the policy changed while the engine was gone"
    );
    let during = flow.rate(stopped_at, flow.now());
    let gap = flow.max_gap(stopped_at, flow.now());
    println!(
        "{} engine gone: {probes} probes as the policy says (slowest page {:.0} ms), {during:.0} datagrams/s (longest gap {:.0} ms), generation {} kept",
        at(t0),
        ms(slowest),
        ms(gap),
        s.generation
    );
    assert!(
        during > 800.0 && gap < Duration::from_millis(500),
        "the stream faltered while the engine was gone: {during:.0}/s, gap {gap:?}"
    );

    // ---- dockerd back: a container started then is attached, the rest unchanged. ----
    engine.start_daemon();
    engine.run_container("late", &["--link", "web:web"], &[]);
    println!("{} dockerd back, `late` started", at(t0));
    bw.wait_for("late attached after the engine came back", SETTLE, |l| {
        l.iter().any(|l| l.contains("engine back"))
            && l.iter().any(|l| {
                l.split("attached: [")
                    .nth(1)
                    .is_some_and(|r| r.split(']').next().unwrap_or("").contains("late"))
            })
    });
    eventually("late's veth taken off docker0", SETTLE, || {
        veths_on_docker0(&engine).is_empty()
    });
    let late = Peer::container(&engine, "late");
    eventually("late → web through its link", SETTLE, || {
        late.served(&web, Duration::from_secs(1))
    });
    assert!(
        !late.served(&db, Duration::from_millis(700)),
        "late → db passes (icc=false)"
    );
    assert!(client.served(&web, PROBE));
    assert!(!client.served(&db, Duration::from_millis(700)));
    // Nobody else was detached or attached again across the restart.
    let lines = bw.lines();
    let lost_at = lines
        .iter()
        .position(|l| l.contains("engine lost"))
        .unwrap();
    let list = |l: &str, what: &str| -> Vec<String> {
        l.split(&format!("{what}: ["))
            .nth(1)
            .and_then(|r| r.split(']').next())
            .map(|r| {
                r.split(", ")
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let attached: Vec<String> = lines[lost_at..]
        .iter()
        .flat_map(|l| list(l, "attached"))
        .collect();
    let detached: Vec<String> = lines[lost_at..]
        .iter()
        .flat_map(|l| list(l, "detached"))
        .collect();
    assert_eq!(
        (attached, detached),
        (vec!["late".to_string()], vec![]),
        "the resync attached or detached more than late"
    );
    let s = stats(&socket);
    let names: BTreeSet<&str> = s.ports.iter().map(|p| p.name.as_str()).collect();
    for n in ["web", "db", "client", "late"] {
        assert!(names.contains(n), "{n} not among the ports: {names:?}");
    }
    let whole = flow.max_gap(stopped_at, flow.now());
    println!(
        "{} converged: generation {}, ports {names:?}; longest stream gap over the whole restart {:.0} ms",
        at(t0),
        s.generation,
        ms(whole)
    );
    drop(flow);
    let st = bw.interrupt();
    assert!(st.is_some_and(|s| s.success()), "{}", bw.tail(30));
    println!("{} done", at(t0));
}

// ---------------------------------------------------------------------------------------
// A hostile module, then a rule toggled under a flood.

/// A module (policy ABI v1) that spins forever on packets to port 666, grows its memory
/// to the cap and then traps on packets to port 667, and leaves everything else to the
/// compiled policy (Continue).
const HOSTILE_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "bw_abi_version") (result i32) (i32.const 1))
  (func (export "bw_init") (result i32) (i32.const 1024))
  (func (export "bw_evaluate") (param $n i32)
    (local $i i32) (local $rec i32) (local $out i32) (local $port i32)
    (if (i32.gt_u (local.get $n) (i32.const 64)) (then (local.set $n (i32.const 64))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 48))))
        (local.set $out (i32.add (i32.const 4096) (i32.mul (local.get $i) (i32.const 8))))
        (local.set $port (i32.load16_u offset=34 (local.get $rec)))
        (if (i32.eq (local.get $port) (i32.const 666))
          (then (loop $spin (br $spin))))
        (if (i32.eq (local.get $port) (i32.const 667))
          (then
            (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
            (unreachable)))
        (i32.store (local.get $out) (i32.const 0))
        (i32.store offset=4 (local.get $out) (i32.const -1))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
)
"#;

#[test]
fn root_faults_hostile_module_and_rule_race_under_load() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    engine.run_container("web", &[], &[]);
    engine.run_container("client", &[], &[]);
    let (web, client) = (
        Peer::container(&engine, "web"),
        Peer::container(&engine, "client"),
    );
    let state_dir = engine.dir.join("bw-state");
    let rules = engine.dir.join("rules.txt");
    std::fs::write(&rules, "# rules of the faults test\n").unwrap();
    // 1024 receive frames a port (the default is 64, 32 ms of this stream): the swaps run
    // beside a policy build, the CLI and this test's own threads on a small machine, and a
    // worker preempted for longer than its frames last loses packets in the kernel, which
    // would hide what the swaps themselves do.
    let mut bw = BwProc::run(
        &engine,
        &state_dir,
        &["--rules", rules.to_str().unwrap(), "--fill-frames", "1024"],
    );
    bw.wait_enforcing(&engine, 2);
    let socket = bw.socket.clone();
    eventually("client → web", SETTLE, || {
        client.served(&web, Duration::from_secs(1))
    });
    let _echo: Vec<UdpEcho> = [666, 667, 668]
        .into_iter()
        .map(|p| UdpEcho::start(&web, p))
        .collect();
    for p in [666, 667] {
        assert!(
            client.udp_echo(web.ip, p, Duration::from_secs(1)),
            "udp/{p} echo before any module"
        );
    }
    let flow = Flow::start("client→web udp/5000", &client, &web, 5000, 2000, false);
    std::thread::sleep(Duration::from_secs(2));

    // ---- The hostile module. ----
    let base_from = flow.now();
    std::thread::sleep(Duration::from_secs(3));
    let before = flow.rate(base_from, flow.now());
    let wat = engine.dir.join("hostile.wat");
    std::fs::write(&wat, HOSTILE_WAT).unwrap();
    let monitor = Monitor::start(&socket, &["--container", "client"]);
    std::thread::sleep(Duration::from_millis(300));
    let info = cli_json!(
        PolicyInfo,
        &socket,
        &["policy", "load", wat.to_str().unwrap(), "--json"]
    );
    let generation = stats(&socket).generation;
    println!(
        "{} loaded {} ({} bytes), generation {generation}",
        at(t0),
        info.name,
        info.bytes
    );
    // The stream's flow is judged again under the new chain at its next packet; let that
    // happen before the first hostile packet (see `hostile_batch_collateral` for what
    // happens when the two share a batch).
    eventually("the stream re-decided under the module", SETTLE, || {
        monitor.verdicts().iter().any(|v| {
            v.dst.ends_with(":5000") && v.generation >= generation && v.verdict == "accept"
        })
    });
    let during_from = flow.now();
    // Each hostile probe is a new flow, judged by the module: it runs past its deadline
    // (666) or grows its memory to the cap and traps (667). Fresh allowed flows between them
    // are judged normally (and reset the module's run of failures: no quarantine).
    let mut hostile = 0;
    let mut fresh_ok = 0;
    for round in 0..4 {
        for port in [666, 667] {
            assert!(
                !client.udp_echo(web.ip, port, Duration::from_millis(300)),
                "round {round}: udp/{port} passed the hostile module"
            );
            hostile += 1;
        }
        assert!(
            client.udp_echo(web.ip, 668, PROBE),
            "round {round}: a fresh allowed flow (udp/668) fails beside the hostile module"
        );
        let asked = flow.now();
        // A new connection's first packet judged in the same batch as a hostile one gets the
        // batch's fail-closed verdict (not cached: `RELIABILITY.md`, known limits); the next
        // attempt is judged afresh. Three attempts, as a client retries.
        if !(0..3).any(|_| client.served(&web, PROBE)) {
            let mut why = String::new();
            for v in monitor.verdicts() {
                why += &format!(
                    "\n  {} {} → {} {} rule {:?} generation {}",
                    v.at_unix_ns, v.src, v.dst, v.verdict, v.rule, v.generation
                );
            }
            panic!(
                "round {round}: client → web's page fails beside the hostile module \
                 (asked at {asked:?}, {:?} ago); module {:?}; the stream's longest gap since: {:?}; events:{why}",
                flow.now() - asked,
                policies(&socket),
                flow.max_gap(asked, flow.now())
            );
        }
        fresh_ok += 2;
    }
    let during_to = flow.now();
    let during = flow.rate(during_from, during_to);
    let gap = flow.max_gap(during_from, during_to);
    let loaded = policies(&socket);
    let m = loaded
        .iter()
        .find(|p| p.name == "hostile.wat")
        .unwrap_or_else(|| panic!("hostile.wat not listed: {loaded:?}"));
    println!(
        "{} HOSTILE: stream {before:.0}/s before, {during:.0}/s during (longest gap {:.0} ms); \
         {hostile} hostile probes dropped, {fresh_ok} fresh allowed flows served; module: \
         {} records, decisions (accept, drop, reject, continue) {:?}, {} faults",
        at(t0),
        ms(gap),
        m.records,
        m.decisions,
        m.faults
    );
    assert!(
        m.faults >= hostile as u64,
        "not every hostile batch was counted: {m:?} (policy list --json)"
    );
    assert!(
        during > before * 0.9,
        "the stream slowed beside the hostile module: {before:.0}/s → {during:.0}/s"
    );
    assert!(bw.alive(), "bridgewall died under the hostile module");
    let s = stats(&socket);
    assert!(
        s.ports.iter().any(|p| p.name == "web"),
        "stats after the hostile module: {s:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let events = monitor.verdicts();
    drop(monitor);
    let hostile_events: Vec<&VerdictLine> = events
        .iter()
        .filter(|v| v.dst.ends_with(":666") || v.dst.ends_with(":667"))
        .collect();
    println!(
        "{} monitor: {} verdict events, {} for the hostile probes, e.g. {:?}",
        at(t0),
        events.len(),
        hostile_events.len(),
        hostile_events
            .first()
            .map(|v| (&v.dst, &v.verdict, v.rule, &v.reason))
    );
    assert_eq!(
        hostile_events.len(),
        hostile,
        "not one verdict event per hostile probe"
    );
    for v in &hostile_events {
        assert!(
            v.verdict == "drop" && v.rule == Some(RULE_FAIL_CLOSED),
            "a hostile probe's verdict is not the fail-closed drop: {v:?}"
        );
    }
    cli_ok(&socket, &["policy", "unload", "hostile.wat"]);
    eventually("udp/666 echoed after policy unload", SETTLE, || {
        client.udp_echo(web.ip, 666, Duration::from_millis(500))
    });
    assert!(client.udp_echo(web.ip, 667, PROBE));
    assert!(policies(&socket).is_empty());
    println!("{} unloaded: normal verdicts back", at(t0));

    // ---- A rule toggled while a flood of new flows runs. ----
    let flood = Flow::start("client→web udp/5001 flood", &client, &web, 5001, 400, true);
    let monitor = Monitor::start(&socket, &["--container", "client"]);
    std::thread::sleep(Duration::from_secs(1));
    let spec: Vec<String> = format!("-s {} -d {} -p udp --dport 5001 -j DROP", client.ip, web.ip)
        .split(' ')
        .map(str::to_string)
        .collect();
    let dropping_rule = format!("-A DOCKER-USER {}", spec.join(" "));
    let base_from = flood.now();
    std::thread::sleep(Duration::from_secs(3));
    let base_to = flood.now();
    let (flood_base_sent, flood_base_got) = flood.fate(base_from, base_to);
    let (stream_base_sent, stream_base_got) = flow.fate(base_from, base_to);

    // Each edit: when it was asked for, when it answered, the generation it made; and each
    // generation's rule table (id → origin), listed right after the edit.
    struct Edit {
        add: bool,
        asked: Duration,
        answered: Duration,
        generation: u64,
    }
    let mut edits: Vec<Edit> = Vec::new();
    let mut tables: BTreeMap<u64, BTreeMap<u32, String>> = BTreeMap::new();
    let table_now = |tables: &mut BTreeMap<u64, BTreeMap<u32, String>>| {
        let r = cli_json!(RulesReply, &socket, &["rules", "list", "--json"]);
        let t: BTreeMap<u32, String> = r
            .chains
            .iter()
            .flat_map(|c| &c.rules)
            .map(|row| (row.id, row.origin.clone()))
            .collect();
        tables.insert(r.generation, t);
        r.generation
    };
    table_now(&mut tables);
    let toggles = 30;
    let race_from = flood.now();
    for i in 0..toggles * 2 {
        let add = i % 2 == 0;
        let mut args = vec!["rules", if add { "add" } else { "delete" }, "--json", "--"];
        args.extend(spec.iter().map(String::as_str));
        let asked = flood.now();
        let reply = cli_json!(RuleEditReply, &socket, &args);
        let answered = flood.now();
        let g = table_now(&mut tables);
        assert_eq!(
            g, reply.generation,
            "another swap came between the edit and the listing"
        );
        let has_rule = tables[&g].values().any(|o| *o == dropping_rule);
        assert_eq!(
            has_rule,
            add,
            "generation {g}'s table after {}: {:?}",
            if add { "add" } else { "delete" },
            tables[&g]
        );
        edits.push(Edit {
            add,
            asked,
            answered,
            generation: reply.generation,
        });
        std::thread::sleep(Duration::from_millis(120));
    }
    let race_to = flood.now();
    std::thread::sleep(Duration::from_millis(500));
    flood_stop(&flood);
    std::thread::sleep(Duration::from_millis(300));
    let events = monitor.verdicts();
    let lost_events = monitor.lost();
    drop(monitor);

    // 1. Every generation judged the flood all one way, and that way is its rule table's:
    //    dropped by the toggled rule while it is in the table, accepted otherwise.
    let present_in: BTreeMap<u64, bool> = edits.iter().map(|e| (e.generation, e.add)).collect();
    let mut ways: BTreeMap<u64, BTreeSet<(String, Option<u32>)>> = BTreeMap::new();
    let mut misnamed = 0;
    let mut judged = 0;
    let flood_dst = format!("{}:5001", web.ip);
    for v in events
        .iter()
        .filter(|v| v.dst == flood_dst && v.from == "client")
    {
        ways.entry(v.generation)
            .or_default()
            .insert((v.verdict.clone(), v.rule));
        let Some(&present) = present_in.get(&v.generation) else {
            continue;
        };
        judged += 1;
        let origin = v.rule.and_then(|r| tables[&v.generation].get(&r)).cloned();
        let by_rule = origin.as_deref() == Some(dropping_rule.as_str());
        assert_eq!(
            (v.verdict == "drop", by_rule),
            (present, present),
            "generation {} (the rule {}): a verdict that is not that generation's: {v:?}",
            v.generation,
            if present { "in force" } else { "absent" }
        );
        if origin.as_deref() != Some(v.rule_text.as_str()) {
            misnamed += 1;
        }
    }
    for (g, kinds) in &ways {
        assert_eq!(
            kinds.len(),
            1,
            "generation {g} judged the flood two ways: {kinds:?}"
        );
    }

    // 2. The data: nothing sent while the rule was in force (from the add's answer until the
    //    delete was asked for) arrived — but for the answer's lead on the workers: an edit
    //    answers once the new policy is sent to the workers, which take it at their next
    //    batch, so a datagram sent right after the answer may still meet the previous
    //    generation. Those are told apart by the generation that judged them (monitor) and
    //    counted; none may arrive later than `LEAD` after the answer, nor be judged by any
    //    generation but the one before. What was sent while the rule was absent arrived,
    //    short of what the flood loses anyway.
    const LEAD: Duration = Duration::from_millis(100);
    let (sent_at, arrived) = flood.record();
    let mut in_force = (0usize, 0usize);
    let mut absent = (0usize, 0usize);
    let mut passed = Vec::new();
    let mut lead = Vec::new();
    let windows: Vec<(&Edit, Duration)> = edits.windows(2).map(|w| (&w[0], w[1].asked)).collect();
    for (seq, t) in sent_at.iter().enumerate() {
        let Some(&(edit, _)) = windows.iter().find(|(e, b)| *t >= e.answered && t < b) else {
            continue;
        };
        let got = arrived.contains(&(seq as u64));
        let slot = if edit.add { &mut in_force } else { &mut absent };
        slot.0 += 1;
        slot.1 += usize::from(got);
        if edit.add && got {
            let sport = format!(":{}", 20_000 + (seq % 40_000));
            let judged_by: Vec<u64> = events
                .iter()
                .filter(|v| v.src.ends_with(&sport) && v.dst == flood_dst)
                .map(|v| v.generation)
                .collect();
            let after = *t - edit.answered;
            let what = format!(
                "seq {seq}, sent {:.2} ms after generation {} answered, judged by generation {judged_by:?}",
                ms(after),
                edit.generation
            );
            if after < LEAD && judged_by == [edit.generation - 1] {
                lead.push(after);
            } else {
                passed.push(what);
            }
        }
    }
    let (stream_race_sent, stream_race_got) = flow.fate(race_from, race_to);
    let stream_gap = flow.max_gap(race_from, race_to);
    let round_trips: Vec<f64> = edits.iter().map(|e| ms(e.answered - e.asked)).collect();
    println!(
        "{} RACE: {} edits ({toggles} add/delete pairs) in {:.1} s (each {:.0}–{:.0} ms: CLI, build, swap), {} generations judged the flood; \
         flood baseline {flood_base_got}/{flood_base_sent} delivered; rule in force: {}/{} delivered; rule absent: {}/{} delivered; \
         allowed stream: baseline {stream_base_got}/{stream_base_sent}, across the swaps {stream_race_got}/{stream_race_sent} (longest gap {:.0} ms); \
         monitor: {judged} flood verdicts checked, {lost_events} events lost, {misnamed} shown with another generation's rule text; \
         {} datagrams sent after an add answered still met the previous generation (up to {:.1} ms after the answer)",
        at(t0),
        edits.len(),
        (race_to - race_from).as_secs_f64(),
        round_trips.iter().copied().fold(f64::MAX, f64::min),
        round_trips.iter().copied().fold(0.0, f64::max),
        ways.len(),
        in_force.1,
        in_force.0,
        absent.1,
        absent.0,
        ms(stream_gap),
        lead.len(),
        lead.iter().map(|d| ms(*d)).fold(0.0, f64::max)
    );
    assert!(judged > 100, "too few flood verdicts to judge: {judged}");
    assert!(
        passed.is_empty(),
        "flood datagrams sent while the DROP rule was in force arrived:\n{}",
        passed.join("\n")
    );
    let base_loss = 1.0 - flood_base_got as f64 / flood_base_sent.max(1) as f64;
    let absent_loss = 1.0 - absent.1 as f64 / absent.0.max(1) as f64;
    assert!(
        absent_loss <= base_loss + 0.01,
        "the flood lost {:.2}% while the rule was absent, {:.2}% at baseline",
        absent_loss * 100.0,
        base_loss * 100.0
    );
    let stream_base_loss = stream_base_sent - stream_base_got;
    let stream_race_loss = stream_race_sent - stream_race_got;
    let allowed =
        (stream_base_loss as f64 / stream_base_sent.max(1) as f64) * stream_race_sent as f64 + 5.0;
    assert!(
        (stream_race_loss as f64) <= allowed,
        "the allowed stream lost {stream_race_loss} datagrams across the swaps (baseline {stream_base_loss}/{stream_base_sent}; longest gap {stream_gap:?})"
    );
    drop(flow);
    let st = bw.interrupt();
    assert!(st.is_some_and(|s| s.success()), "{}", bw.tail(30));
    println!("{} done", at(t0));
}

/// Stops a flow's sender (the receiver keeps counting until the flow is dropped).
fn flood_stop(flow: &Flow) {
    flow.stop.store(true, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------------------
// Resource limits.

#[test]
fn root_faults_resource_limits() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    engine.run_container("alpha", &[], &[]);
    engine.run_container("beta", &[], &[]);
    let state_dir = engine.dir.join("bw-state");
    let veths = all_veths(&engine);
    let host = Peer::host(&engine);

    // ---- RLIMIT_MEMLOCK of 64 KiB without CAP_IPC_LOCK (which exempts root from it). ----
    let mut bw = BwProc::wrapped(
        &[
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--ambient-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "prlimit",
            "--memlock=65536:65536",
        ],
        &engine,
        &state_dir,
        &[],
    );
    let st = bw.wait_exit(Duration::from_secs(60));
    let log = bw.lines().join("\n");
    println!("{} memlock 64 KiB: {st:?}\n{}", at(t0), bw.tail(6));
    assert!(
        st.is_some_and(|s| !s.success()),
        "bridgewall run under a 64 KiB RLIMIT_MEMLOCK did not fail ({st:?}):\n{log}"
    );
    assert!(
        log.contains("RLIMIT_MEMLOCK"),
        "the error does not name RLIMIT_MEMLOCK:\n{log}"
    );
    let on: BTreeSet<String> = veths_on_docker0(&engine).into_iter().collect();
    assert_eq!(on, veths, "a failed start left ports off docker0");
    assert!(
        xdp_lines(&engine).is_empty(),
        "a failed start left XDP attached:\n{}",
        xdp_lines(&engine).join("\n")
    );
    assert!(
        gateway_links(&engine).is_empty(),
        "a failed start left the gateway pair: {:?}",
        gateway_links(&engine)
    );
    assert!(
        !state_file(&engine, &state_dir).exists(),
        "a failed start left its state file"
    );
    // The same limit with CAP_IPC_LOCK (plain root): the kernel does not charge the UMEM
    // to RLIMIT_MEMLOCK, and bridgewall runs.
    let mut bw = BwProc::wrapped(
        &["prlimit", "--memlock=65536:65536"],
        &engine,
        &state_dir,
        &[],
    );
    bw.wait_enforcing(&engine, 2);
    let st = bw.interrupt();
    assert!(
        st.is_some_and(|s| s.success()),
        "root under a 64 KiB RLIMIT_MEMLOCK: {st:?}\n{}",
        bw.tail(20)
    );
    println!(
        "{} memlock 64 KiB as root with CAP_IPC_LOCK: ran and stopped cleanly",
        at(t0)
    );
    let (a, b) = (
        Peer::container(&engine, "alpha"),
        Peer::container(&engine, "beta"),
    );
    assert!(
        a.served(&b, Duration::from_secs(1)),
        "a → b over the kernel bridge after the failed start"
    );

    // ---- --max-containers 1 with two containers. ----
    let mut bw = BwProc::run(&engine, &state_dir, &["--max-containers", "1"]);
    bw.wait_for("bridgewall enforcing docker0", SETTLE, |l| {
        l.iter().any(|l| l.contains("bridgewall is enforcing"))
            && l.iter().any(|l| l.contains("control API on"))
    });
    eventually("no container veth left on docker0", SETTLE, || {
        veths_on_docker0(&engine).is_empty()
    });
    let socket = bw.socket.clone();
    let s = stats(&socket);
    let held: Vec<&str> = s
        .ports
        .iter()
        .map(|p| p.name.as_str())
        .filter(|n| *n != "gateway")
        .collect();
    assert_eq!(held.len(), 1, "--max-containers 1 holds {held:?}");
    let (inside, extra) = if held[0] == "alpha" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    eventually("host → the held container", SETTLE, || {
        host.served(inside, Duration::from_secs(1))
    });
    assert!(
        !host.served(extra, Duration::from_millis(700)),
        "host → {} (beyond --max-containers) passes",
        extra.name
    );
    assert!(
        !inside.served(extra, Duration::from_millis(700)),
        "{} → {} (beyond --max-containers) passes",
        inside.name,
        extra.name
    );
    assert!(
        !extra.served(inside, Duration::from_millis(700)),
        "{} (beyond --max-containers) reaches {}",
        extra.name,
        inside.name
    );
    bw.wait_for(
        "an error about the container beyond the limit",
        Duration::from_secs(5),
        |l| {
            l.iter()
                .any(|l| l.contains("ERROR") && mentions(l, &extra.name))
        },
    );
    assert!(
        host.served(inside, PROBE),
        "the held container stopped working"
    );
    println!(
        "{} --max-containers 1: {} held and served, {} cut off; bridgewall said:\n{}",
        at(t0),
        inside.name,
        extra.name,
        bw.lines()
            .iter()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    let st = bw.interrupt();
    assert!(st.is_some_and(|s| s.success()), "{}", bw.tail(30));
    let on: BTreeSet<String> = veths_on_docker0(&engine).into_iter().collect();
    assert_eq!(on, all_veths(&engine), "the ports are not back after stop");
    println!("{} done", at(t0));
}

/// `--max-containers` as the README states it: "a container beyond it stays cut off with an
/// error naming the flag" — also one started while bridgewall runs (it was left on docker0,
/// bridged by the kernel past bridgewall's policy, until the tracker kept such containers
/// as unplaced and the runtime took their veths off the bridge).
#[test]
fn root_faults_max_containers_later_container() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    engine.run_container("alpha", &[], &[]);
    let state_dir = engine.dir.join("bw-state");
    let host = Peer::host(&engine);
    let alpha = Peer::container(&engine, "alpha");
    let mut bw = BwProc::run(&engine, &state_dir, &["--max-containers", "1"]);
    bw.wait_enforcing(&engine, 1);
    eventually("host → alpha", SETTLE, || {
        host.served(&alpha, Duration::from_secs(1))
    });
    engine.run_container("beta", &[], &[]);
    let beta = Peer::container(&engine, "beta");
    bw.wait_for("an error about beta", SETTLE, |l| {
        l.iter().any(|l| l.contains("ERROR") && mentions(l, "beta"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let on_bridge = veths_on_docker0(&engine);
    let host_beta = host.served(&beta, Duration::from_millis(700));
    let beta_alpha = beta.served(&alpha, Duration::from_millis(700));
    let said: Vec<String> = bw
        .lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && mentions(l, "beta"))
        .collect();
    println!(
        "{} beta started beyond --max-containers 1: veths on docker0 {on_bridge:?}; host → beta {host_beta}, \
         beta → alpha {beta_alpha}; bridgewall said: {said:?}",
        at(t0)
    );
    assert!(
        said.iter().any(|l| l.contains("--max-containers")),
        "the error about beta does not name --max-containers: {said:?}"
    );
    assert!(
        on_bridge.is_empty(),
        "beta's veth stays on docker0: bridged by the kernel, past bridgewall"
    );
    assert!(!host_beta && !beta_alpha, "beta is not cut off");
    assert!(host.served(&alpha, PROBE));
}

// ---------------------------------------------------------------------------------------
// Soak.

/// One reading of the soak: when, bridgewall's RSS, and its counters.
struct Sample {
    at: Duration,
    rss_kib: u64,
    stats: StatsReply,
}

/// Drop reasons the soak provokes on purpose: the toggled DROP rule (`policy_drop`, and
/// `flow_denied` for later packets of a denied flow), the echo of a container's broadcast
/// through the hairpin gateway port (`echoed_flood`), and frames still in flight to or from
/// a container that was just removed (`unknown_port`, `no_egress`).
const SOAK_DROPS: &[&str] = &[
    "policy_drop",
    "flow_denied",
    "echoed_flood",
    "unknown_port",
    "no_egress",
];

#[test]
#[ignore = "soak: minutes long; BRIDGEWALL_SOAK_SECS (default 600)"]
fn soak() {
    let secs: u64 = std::env::var("BRIDGEWALL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    engine.run_container("web", &[], &[]);
    engine.run_container("db", &[], &[]);
    engine.run_container("client", &[], &[]);
    let (web, db, client) = (
        Peer::container(&engine, "web"),
        Peer::container(&engine, "db"),
        Peer::container(&engine, "client"),
    );
    let state_dir = engine.dir.join("bw-state");
    let rules = engine.dir.join("rules.txt");
    std::fs::write(&rules, "# rules of the soak\n").unwrap();
    let mut bw = BwProc::run(&engine, &state_dir, &["--rules", rules.to_str().unwrap()]);
    bw.wait_enforcing(&engine, 3);
    let socket = bw.socket.clone();
    eventually("client → web", SETTLE, || {
        client.served(&web, Duration::from_secs(1))
    });

    // Mixed traffic: a long-lived stream, a flood of new flows (judged one by one, and
    // dropped while the toggled rule is in force), and page fetches.
    let stream = Flow::start("client→web udp/5000", &client, &web, 5000, 500, false);
    let flood = Flow::start("client→db udp/5001 flood", &client, &db, 5001, 100, true);
    let stop = Arc::new(AtomicBool::new(false));
    let fetches = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let fetcher = {
        let (stop, fetches, client, web) = (
            Arc::clone(&stop),
            Arc::clone(&fetches),
            client.clone(),
            web.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let ok = client.served(&web, PROBE);
                fetches.0.fetch_add(1, Ordering::Relaxed);
                fetches.1.fetch_add(u64::from(!ok), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    struct StopOnDrop(Arc<AtomicBool>, Option<JoinHandle<()>>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
            if let Some(h) = self.1.take() {
                let _ = h.join();
            }
        }
    }
    let fetcher = StopOnDrop(stop, Some(fetcher));

    let spec = format!("-s {} -d {} -p udp --dport 5001 -j DROP", client.ip, db.ip);
    let mut rule_in = false;
    let mut edits = 0u64;
    let mut churn = 0u32;
    let mut samples: Vec<Sample> = Vec::new();
    let started = Instant::now();
    let mut next_sample = Instant::now();
    let mut next_churn = Instant::now() + Duration::from_secs(5);
    println!(
        "{} soak for {secs} s: stream 500/s, flood 100 new flows/s, fetches 5/s, a rule change a second, a container started and one removed every 5 s",
        at(t0)
    );
    while started.elapsed() < Duration::from_secs(secs) {
        let tick = Instant::now();
        let mut args = vec!["rules", if rule_in { "delete" } else { "add" }, "--"];
        args.extend(spec.split(' '));
        cli_ok(&socket, &args);
        rule_in = !rule_in;
        edits += 1;
        if Instant::now() >= next_churn {
            next_churn += Duration::from_secs(5);
            churn += 1;
            engine.run_container(&format!("churn{churn}"), &[], &[]);
            if churn > 1 {
                engine.docker_ok(&["rm", "-f", &format!("churn{}", churn - 1)]);
            }
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(3);
            assert!(bw.alive(), "bridgewall died:\n{}", bw.tail(30));
            let rss = rss_kib(bw.pid).expect("bridgewall's VmRSS");
            samples.push(Sample {
                at: started.elapsed(),
                rss_kib: rss,
                stats: stats(&socket),
            });
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    drop(fetcher);
    let (fetched, fetch_failed) = (
        fetches.0.load(Ordering::Relaxed),
        fetches.1.load(Ordering::Relaxed),
    );
    let (s_sent, s_got, _) = stream.totals();
    let (f_sent, f_got, _) = flood.totals();
    drop(stream);
    drop(flood);

    // RSS: flat.
    println!("{} RSS samples (s: MiB):", at(t0));
    for chunk in samples.chunks(10) {
        println!(
            "  {}",
            chunk
                .iter()
                .map(|s| format!(
                    "{:.0}: {:.1}",
                    s.at.as_secs_f64(),
                    s.rss_kib as f64 / 1024.0
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let third = samples.len() / 3;
    assert!(third >= 2, "too few samples: {}", samples.len());
    let first = samples[..third].iter().map(|s| s.rss_kib).max().unwrap();
    let last = samples[samples.len() - third..]
        .iter()
        .map(|s| s.rss_kib)
        .max()
        .unwrap();
    println!(
        "{} RSS: first third max {:.1} MiB, last third max {:.1} MiB; {edits} rule edits, {churn} containers started; stream {s_got}/{s_sent}, flood {f_got}/{f_sent}, fetches {} ok of {fetched}",
        at(t0),
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        fetched - fetch_failed
    );
    assert!(
        last as f64 <= first as f64 * 1.2 + 8.0 * 1024.0,
        "bridgewall's RSS grows: {first} KiB in the first third, {last} KiB in the last"
    );

    // Counters: monotonic, frames all accounted for, drops only of the reasons provoked.
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0].stats, &pair[1].stats);
        assert!(b.generation >= a.generation, "the generation went back");
        assert!(b.swaps.count >= a.swaps.count, "the swap count went back");
        for (wa, wb) in a.workers.iter().zip(&b.workers) {
            assert!(
                wb.rx_packets >= wa.rx_packets,
                "worker {} rx went back: {} → {}",
                wa.worker,
                wa.rx_packets,
                wb.rx_packets
            );
            let total = |w: &controller::control::api::WorkerStats| -> u64 {
                w.frames.iter().map(|(_, n)| n).sum()
            };
            assert_eq!(
                total(wa),
                total(wb),
                "worker {}'s frames are not all accounted for: {:?} → {:?}",
                wa.worker,
                wa.frames,
                wb.frames
            );
        }
        for (reason, n) in &a.drops {
            let later = b.drops.iter().find(|(r, _)| r == reason).map(|(_, n)| *n);
            assert!(
                later.is_some_and(|m| m >= *n),
                "drop counter {reason} went back: {n} → {later:?}"
            );
        }
        let rx = |s: &StatsReply| -> u64 { s.workers.iter().map(|w| w.rx_packets).sum() };
        let port_rx = |s: &StatsReply| -> u64 { s.ports.iter().map(|p| p.rx_packets).sum() };
        assert!(
            port_rx(b) <= rx(b) + 1000,
            "the ports received more than the workers: {} > {}",
            port_rx(b),
            rx(b)
        );
    }
    let last_stats = &samples.last().unwrap().stats;
    println!("{} drops: {:?}", at(t0), last_stats.drops);
    for (reason, n) in &last_stats.drops {
        assert!(
            *n == 0 || SOAK_DROPS.contains(&reason.as_str()),
            "unexplained drops: {reason} = {n} (all: {:?})",
            last_stats.drops
        );
    }
    assert!(
        fetch_failed * 100 <= fetched.max(1),
        "{fetch_failed} of {fetched} fetches failed"
    );
    assert!(
        (s_sent - s_got) * 100 <= s_sent.max(1),
        "the stream lost {} of {s_sent}",
        s_sent - s_got
    );
    let st = bw.interrupt();
    assert!(st.is_some_and(|s| s.success()), "{}", bw.tail(30));
    println!("{} done", at(t0));
}

/// A hostile module's fail-closed verdict covers its whole batch, and the flow table caches
/// it for every flow in that batch: an allowed flow of the same container whose packet is
/// judged in the same batch as a hostile packet — here, re-decided right after the module
/// is loaded, beside a flow the module loops on — stays denied for as long as that policy
/// generation is in force. Two streams of 4,000 datagrams a second make them share a batch
/// in most tries; five tries.
///
/// The engine no longer caches fail-closed verdicts (`dataplane/tests/core_audit_events.rs::
/// a_fail_closed_batch_does_not_deny_the_flows_judged_in_it`), but this still fails when
/// the hostile stream makes the module fail 8 batches in a row: it is then quarantined and
/// every batch it would judge gets the fail-closed verdict until it is unloaded, so the
/// innocent flow, re-decided under it, gets none. Judging a failed batch's records one by
/// one would separate them (a loop costs a deadline per record); not done.
#[test]
#[ignore = "known limit: a quarantined module fails closed every flow it judges, innocent ones too"]
fn root_faults_hostile_batch_collateral() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    engine.run_container("web", &[], &[]);
    engine.run_container("client", &[], &[]);
    let (web, client) = (
        Peer::container(&engine, "web"),
        Peer::container(&engine, "client"),
    );
    let state_dir = engine.dir.join("bw-state");
    let mut bw = BwProc::run(&engine, &state_dir, &[]);
    bw.wait_enforcing(&engine, 2);
    let socket = bw.socket.clone();
    let good = Flow::start("client→web udp/5000", &client, &web, 5000, 4000, false);
    let _bad = Flow::start("client→web udp/666", &client, &web, 666, 4000, false);
    let wat = engine.dir.join("hostile.wat");
    std::fs::write(&wat, HOSTILE_WAT).unwrap();
    let mut cut = Vec::new();
    for attempt in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let loaded = good.now();
        cli_ok(&socket, &["policy", "load", wat.to_str().unwrap()]);
        std::thread::sleep(Duration::from_millis(1500));
        let rate = good.rate(loaded + Duration::from_millis(500), good.now());
        let m = policies(&socket);
        println!(
            "{} attempt {attempt}: the allowed stream at {rate:.0}/s with the module loaded; module {:?}",
            at(t0),
            m.first().map(|m| (m.records, m.decisions, m.faults))
        );
        if rate < 1000.0 {
            cut.push(attempt);
        }
        cli_ok(&socket, &["policy", "unload", "hostile.wat"]);
    }
    assert!(
        cut.is_empty(),
        "an allowed flow judged in the same batch as a hostile packet stayed denied (attempts {cut:?} of 5)"
    );
}
