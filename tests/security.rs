//! The claims of `SECURITY.md` that no other test checks, checked here; the others name the
//! tests that check them. Each section below is one adversary or one surface:
//!
//! - **The network surface** (`root_lab_*`, `root_docker_*`): a held lab, with or without
//!   its control socket, and `bridgewall run` on a real Docker engine have no TCP listener,
//!   no UDP, raw or packet socket in the host's namespace (nor any in the engine's); with
//!   `--metrics 127.0.0.1:PORT` exactly that one listener exists, on loopback, read-only.
//!   The sockets are found as `ss` finds them: the process's `socket:[inode]` descriptors
//!   matched against `/proc/<pid>/net/{tcp,tcp6,udp,udp6,raw,raw6,packet}` of its main
//!   thread's namespace, of every namespace one of its threads is in, and of the lab's or
//!   the engine's namespaces.
//! - **Files a local user could read or change**: run with umask 000, bridgewall still makes
//!   the takeover's state file 0600 in a 0700 directory and its control socket 0600, owned
//!   by root; a live `rules add` leaves the rules file 0600 even when it was 0644.
//! - **A policy module**: any import but `bw.log: (func (param i32 i32))` is refused at
//!   load, naming the import, by the library and by `bridgewall policy check`; the limits
//!   `SECURITY.md` quotes are `WasmConfig::default()`'s, and hold with those defaults.
//! - **A container** (`spoofing_*`, `known_gaps_*`, `the_outside_*`): on a simulated bridge
//!   (the engine on in-memory ports, deterministic) judged by the compiled Docker policy in
//!   wasmtime — the module `run` loads — a container that forges another container's, the
//!   host's or an outside address, or another container's MAC (in IP, ARP or neighbour
//!   discovery), reaches nobody; a flood of flows or frames from one container does not cut
//!   or starve another's; what is not enforced (neighbour discovery's target addresses,
//!   router advertisements, other ethertypes, RELATED ICMP errors from a third container) is
//!   pinned so that the document changes when the code does.
//!
//! Network safety: the labs and the Docker engine live in network namespaces they create;
//! the only traffic in the root namespace is the metrics scrape to 127.0.0.1. Every process
//! started here is stopped by a guard (SIGINT, then SIGKILL), also when a test fails.
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::counters::DropReason;
use dataplane::engine::{Engine, EngineConfig, PortConfig};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{FreeList, HeapFrames, Port, PortId};
use dataplane::policy::{Action, MAX_BATCH, PacketRecord, VerdictRecord};
use dataplane::wasm::{LoadError, PolicyChain, RULE_FAIL_CLOSED, WasmConfig, WasmRuntime};
use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder, TcpHeader};
use rules_wasm::abi::{FlowState, addr_bytes, proto};
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, LinkSpec, PortProto, Published};

const BIN: &str = env!("CARGO_BIN_EXE_bridgewall");

// =======================================================================================
// Processes and files.

/// A scratch directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("bw-security-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bridgewall process started under `umask 000` (the most permissive a service could be
/// given: every file it makes must be private by its own doing), its output collected line
/// by line. Dropping it sends SIGINT (the lab tears itself down, `run` gives the bridge
/// back) and waits, then SIGKILL after 30 s.
struct Held {
    what: String,
    child: Option<Child>,
    pid: u32,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Held {
    fn start(what: &str, args: &[&OsStr]) -> Held {
        // The shell sets the umask and becomes bridgewall: same pid, so signals reach it.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$0\" \"$@\"")
            .arg(BIN)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for stream in streams {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(l);
                }
            });
        }
        Held {
            what: what.to_string(),
            pid: child.id(),
            child: Some(child),
            lines,
        }
    }

    fn said(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until a line contains `text`; panics with the output if the process exits or
    /// `timeout` passes first.
    fn wait_for(&mut self, text: &str, timeout: Duration) {
        let t0 = Instant::now();
        loop {
            if self.lines.lock().unwrap().iter().any(|l| l.contains(text)) {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "{} exited ({status}) before printing {text:?}:\n{}",
                    self.what,
                    self.said()
                );
            }
            assert!(
                t0.elapsed() < timeout,
                "{} did not print {text:?} within {timeout:?}:\n{}",
                self.what,
                self.said()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The line that starts with `prefix`, without it.
    fn line_after(&self, prefix: &str) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{} printed no {prefix:?} line", self.what))
    }

    /// SIGINT, and the exit status (None if it had to be killed).
    fn interrupt(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-INT", &self.pid.to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// Permission bits and owner of `path` (not following a symlink).
fn mode_owner(path: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.mode() & 0o7777, m.uid())
}

/// Asserts `path` is owned by root with exactly `mode`.
fn assert_private(path: &Path, mode: u32, what: &str) {
    let (m, uid) = mode_owner(path);
    println!("{what}: {} mode {m:04o} uid {uid}", path.display());
    assert_eq!(m, mode, "{what} {}: mode {m:o}", path.display());
    assert_eq!(uid, 0, "{what} {}: owner uid {uid}", path.display());
}

/// The takeover's state files in `dir` (`<netns-tag>-<bridge>.json`).
fn state_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect()
}

/// Names in `dir` that look like a temporary file left behind.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|it| {
            it.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp") || n.contains("bridgewall-tmp"))
                .collect()
        })
        .unwrap_or_default()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// =======================================================================================
// The sockets of a process, as `ss` sees them.

/// One socket of the process found in a `/proc/…/net/*` table.
#[derive(Clone, Debug)]
struct NetSocket {
    /// `tcp`, `tcp6`, `udp`, `udp6`, `raw`, `raw6` or `packet`.
    table: String,
    local: SocketAddr,
    /// The kernel's state code (TCP: 0x0A is LISTEN).
    state: u8,
    inode: u64,
}

const TCP_LISTEN: u8 = 0x0a;

impl NetSocket {
    fn is_tcp_listener(&self) -> bool {
        self.table.starts_with("tcp") && self.state == TCP_LISTEN
    }
}

impl fmt::Display for NetSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.is_tcp_listener() {
            "LISTEN".to_string()
        } else {
            format!("state {:02X}", self.state)
        };
        write!(
            f,
            "{} {} {state} (inode {})",
            self.table, self.local, self.inode
        )
    }
}

const TABLES: [&str; 7] = ["tcp", "tcp6", "udp", "udp6", "raw", "raw6", "packet"];

/// A `/proc/net/{tcp,udp,raw}[6]` address: hex words in the kernel's byte order, port in
/// host order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The entries of one table's text.
fn parse_table(table: &str, body: &str) -> Vec<NetSocket> {
    body.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if table == "packet" {
                // sk RefCnt Type Proto Iface R Rmem User Inode
                return Some(NetSocket {
                    table: table.into(),
                    local: SocketAddr::from(([0, 0, 0, 0], 0)),
                    state: 0,
                    inode: f.get(8)?.parse().ok()?,
                });
            }
            // sl local rem st tx:rx tr:tm retrnsmt uid timeout inode …
            Some(NetSocket {
                table: table.into(),
                local: parse_addr(f.get(1)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// Every entry of the tables under `dir` (a `/proc/…/net` directory).
fn read_tables(dir: &Path) -> Vec<NetSocket> {
    TABLES
        .iter()
        .flat_map(|t| {
            let body = std::fs::read_to_string(dir.join(t)).unwrap_or_default();
            parse_table(t, &body)
        })
        .collect()
}

/// Every entry of the tables of the named namespace (read by a `cat` inside it).
fn netns_tables(name: &str) -> Vec<NetSocket> {
    let script = TABLES
        .iter()
        .map(|t| format!("echo '## {t}'; cat /proc/net/{t} 2>/dev/null;"))
        .collect::<String>();
    let out = Command::new("ip")
        .args(["netns", "exec", name, "sh", "-c", &script])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "reading {name}'s tables: {}",
        text(&out)
    );
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    all.split("## ")
        .skip(1)
        .flat_map(|chunk| {
            let (table, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
            parse_table(table.trim(), body)
        })
        .collect()
}

/// The inodes of the sockets among `pid`'s file descriptors.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the process's descriptors")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// `net:[inode]` of a namespace link.
fn ns_link(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_link(path)
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// Where a process's sockets are.
struct Inventory {
    /// Its network sockets in its main thread's namespace, which is the test's (the host's).
    host: Vec<NetSocket>,
    /// Its network sockets elsewhere, with the namespace's name (or `net:[inode]`).
    elsewhere: Vec<(String, NetSocket)>,
    /// Namespaces its threads are in, other than the host's, by name (or `net:[inode]`).
    thread_namespaces: BTreeSet<String>,
    /// All its sockets (unix, netlink, AF_XDP… included).
    sockets: usize,
}

/// The network sockets of `pid`: in the host's namespace, in every namespace one of its
/// threads is in, and in the `named` namespaces (under /run/netns).
fn inventory(pid: u32, named: &[String]) -> Inventory {
    let mine = socket_inodes(pid);
    let host_ns = ns_link("/proc/self/ns/net").unwrap();
    assert_eq!(
        ns_link(format!("/proc/{pid}/ns/net")).as_deref(),
        Some(host_ns.as_str()),
        "the process's main thread is not in the test's (the host's) network namespace"
    );
    let names: BTreeMap<String, String> = named
        .iter()
        .filter_map(|n| {
            let ino = std::fs::metadata(format!("/run/netns/{n}")).ok()?.ino();
            Some((format!("net:[{ino}]"), n.clone()))
        })
        .collect();
    let label = |ns: &str| names.get(ns).cloned().unwrap_or_else(|| ns.to_string());
    let host: Vec<NetSocket> = read_tables(Path::new(&format!("/proc/{pid}/net")))
        .into_iter()
        .filter(|s| mine.contains(&s.inode))
        .collect();
    let mut seen = BTreeSet::from([host_ns.clone()]);
    let mut elsewhere = Vec::new();
    let mut thread_namespaces = BTreeSet::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(task) = task else { continue };
        let Some(ns) = ns_link(task.path().join("ns/net")) else {
            continue;
        };
        if ns != host_ns {
            thread_namespaces.insert(label(&ns));
        }
        if seen.insert(ns.clone()) {
            for s in read_tables(&task.path().join("net")) {
                if mine.contains(&s.inode) {
                    elsewhere.push((label(&ns), s));
                }
            }
        }
    }
    for (ns, name) in &names {
        if seen.insert(ns.clone()) {
            for s in netns_tables(name) {
                if mine.contains(&s.inode) {
                    elsewhere.push((name.clone(), s));
                }
            }
        }
    }
    Inventory {
        host,
        elsewhere,
        thread_namespaces,
        sockets: mine.len(),
    }
}

impl Inventory {
    fn print(&self, what: &str) {
        println!(
            "{what}: {} sockets; in the host's namespace: {}; threads in {} other namespaces",
            self.sockets,
            if self.host.is_empty() {
                "no TCP, UDP, raw or packet socket".to_string()
            } else {
                self.host
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            self.thread_namespaces.len()
        );
        for (ns, s) in &self.elsewhere {
            println!("  in {ns}: {s}");
        }
    }
}

// =======================================================================================
// The network surface and the files, on the lab.

/// `bridgewall lab --hold ARGS…` in `scratch`, waited for until it is up.
fn held_lab(what: &str, args: &[&OsStr]) -> Held {
    let mut all: Vec<&OsStr> = vec![OsStr::new("lab"), OsStr::new("--hold")];
    all.extend_from_slice(args);
    let mut lab = Held::start(what, &all);
    lab.wait_for("lab is up", Duration::from_secs(240));
    lab
}

/// The lab's network namespaces, from its "namespaces: …" line.
fn lab_namespaces(lab: &Held) -> Vec<String> {
    lab.line_after("namespaces: ")
        .split(", ")
        .map(str::to_string)
        .collect()
}

/// Nothing of the process in the host's namespace, and whatever it has elsewhere is in one
/// of `namespaces` (the lab's simulated containers, hosts and bridge).
fn assert_no_host_network_socket(inv: &Inventory, what: &str, namespaces: &[String]) {
    assert!(
        inv.host.is_empty(),
        "{what} has network sockets in the host's namespace: {:?}",
        inv.host.iter().map(ToString::to_string).collect::<Vec<_>>()
    );
    for ns in &inv.thread_namespaces {
        assert!(
            namespaces.contains(ns),
            "{what} has a thread in namespace {ns}, which is none of {namespaces:?}"
        );
    }
    for (ns, s) in &inv.elsewhere {
        assert!(
            namespaces.contains(ns),
            "{what} has a socket {s} in namespace {ns}, which is none of {namespaces:?}"
        );
    }
}

/// `lab --hold` without flags serves nothing: no control socket, no metrics, and no
/// network socket at all in the host's namespace; with `--control-socket` the only thing
/// added is the unix socket (0600, root's). Both run under umask 000, so the takeover's
/// state file (0600 in a 0700 directory) and the socket are private by bridgewall's doing.
#[test]
fn root_lab_held_listens_on_no_network_address_and_keeps_its_files_private() {
    let dir = Scratch::new("lab-quiet");
    let (state_a, state_b) = (dir.join("state-a"), dir.join("state-b"));
    let socket = dir.join("run").join("ctl.sock");
    // Start both, then wait for both: the labs build in parallel.
    let mut plain = Held::start(
        "lab --hold",
        &[
            OsStr::new("lab"),
            OsStr::new("--hold"),
            OsStr::new("--state-dir"),
            state_a.as_os_str(),
        ],
    );
    let mut with_socket = Held::start(
        "lab --hold --control-socket",
        &[
            OsStr::new("lab"),
            OsStr::new("--hold"),
            OsStr::new("--control-socket"),
            socket.as_os_str(),
            OsStr::new("--state-dir"),
            state_b.as_os_str(),
        ],
    );
    plain.wait_for("lab is up", Duration::from_secs(240));
    with_socket.wait_for("lab is up", Duration::from_secs(240));

    for (lab, state) in [(&plain, &state_a), (&with_socket, &state_b)] {
        let namespaces = lab_namespaces(lab);
        let inv = inventory(lab.pid, &namespaces);
        inv.print(&lab.what);
        assert_no_host_network_socket(&inv, &lab.what, &namespaces);
        assert!(
            !lab.said().contains("Prometheus metrics on"),
            "{} serves metrics unasked:\n{}",
            lab.what,
            lab.said()
        );
        // The takeover's record: which links a later `restore` (root) moves and deletes.
        let files = state_files(state);
        assert_eq!(
            files.len(),
            1,
            "state files in {}: {files:?}",
            state.display()
        );
        assert_private(state, 0o700, "the state directory (umask 000)");
        assert_private(&files[0], 0o600, "the takeover's state file (umask 000)");
        assert!(leftovers(state).is_empty(), "{:?}", leftovers(state));
    }
    assert!(
        !plain.said().contains("control API on"),
        "lab --hold serves a control API unasked:\n{}",
        plain.said()
    );
    // The control socket: a unix socket, root's, 0600, in a directory made 0700.
    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        socket.display()
    );
    assert_private(&socket, 0o600, "the control socket (umask 000)");
    assert_private(
        socket.parent().unwrap(),
        0o700,
        "the control socket's directory",
    );
    refuses_non_root(&socket);

    // A clean stop gives the bridge back and removes the record and the socket.
    for lab in [&mut plain, &mut with_socket] {
        let status = lab.interrupt();
        assert!(
            status.is_some_and(|s| s.success()),
            "{} did not stop cleanly ({status:?}):\n{}",
            lab.what,
            lab.said()
        );
    }
    for state in [&state_a, &state_b] {
        assert!(state_files(state).is_empty(), "{:?}", state_files(state));
    }
    assert!(!socket.exists(), "the control socket outlived the lab");
}

/// `--metrics 127.0.0.1:PORT` adds exactly one network socket: a TCP listener on that
/// loopback address, which answers GET /metrics and nothing else (read-only).
#[test]
fn root_lab_metrics_listen_on_exactly_the_loopback_address_given() {
    let dir = Scratch::new("lab-metrics");
    let port = free_loopback_port();
    let addr = format!("127.0.0.1:{port}");
    let state = dir.join("state");
    let socket = dir.join("ctl.sock");
    let lab = held_lab(
        "lab --hold --metrics",
        &[
            OsStr::new("--control-socket"),
            socket.as_os_str(),
            OsStr::new("--metrics"),
            OsStr::new(&addr),
            OsStr::new("--state-dir"),
            state.as_os_str(),
        ],
    );
    let namespaces = lab_namespaces(&lab);
    let inv = inventory(lab.pid, &namespaces);
    inv.print(&lab.what);
    let host: Vec<String> = inv.host.iter().map(ToString::to_string).collect();
    assert_eq!(inv.host.len(), 1, "not exactly one socket: {host:?}");
    let s = &inv.host[0];
    assert!(s.is_tcp_listener(), "not a TCP listener: {s}");
    assert_eq!(s.local, addr.parse::<SocketAddr>().unwrap(), "{s}");
    assert!(s.local.ip().is_loopback());
    let others = Inventory {
        host: Vec::new(),
        ..inv
    };
    assert_no_host_network_socket(&others, &lab.what, &namespaces);

    // It is the metrics endpoint, and it only reads: other paths and methods are refused.
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let url = format!("http://{addr}/metrics");
    let body = Command::new("curl")
        .args(["-s", "-m", "5", &url])
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&body.stdout);
    assert!(body.contains("bridgewall_"), "not the metrics: {body}");
    // Names and counters, no addresses: none of the lab's (bridge 172.17/16, outside
    // hosts 198.18/16).
    for prefix in ["172.17.", "198.18."] {
        assert!(
            !body.contains(prefix),
            "the metrics show an address ({prefix}…):\n{body}"
        );
    }
    assert_eq!(curl(&[&url]), "200");
    assert_eq!(curl(&["-X", "POST", "--data", "x", &url]), "405");
    assert_eq!(curl(&["-X", "DELETE", &url]), "405");
    assert_eq!(curl(&[&format!("http://{addr}/")]), "404");
    assert_eq!(curl(&[&format!("http://{addr}/v1/rules")]), "404");
    println!("metrics on {addr}: GET /metrics 200; POST/DELETE 405; other paths 404");
}

/// The control API's routes, each with a method (and one that does not exist).
const ROUTES: [(&str, &str); 11] = [
    ("GET", "/v1/rules"),
    ("POST", "/v1/rules"),
    ("POST", "/v1/trace"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/policies"),
    ("POST", "/v1/policies?name=x"),
    ("DELETE", "/v1/policies/x"),
    ("PUT", "/v1/audit"),
    ("GET", "/v1/monitor"),
    ("GET", "/v1/capture?port=gateway"),
    ("GET", "/v1/no-such-route"),
];

/// `curl` on the control socket as `uid` (via setpriv): the HTTP status and the body.
fn curl_socket_as(uid: u32, socket: &Path, method: &str, path: &str) -> (String, String) {
    let mut cmd = Command::new("setpriv");
    if uid != 0 {
        let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
        cmd.args([u.as_str(), g.as_str(), "--clear-groups"]);
    }
    let out = cmd
        .args([
            "curl",
            "-s",
            "-m",
            "3",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
        ])
        .arg(socket)
        .args(["-X", method, "--data-binary", "{}"])
        .arg(format!("http://bridgewall{path}"))
        .output()
        .expect("setpriv curl");
    let all = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = all.rsplit_once('\n').unwrap_or(("", &all));
    (code.to_string(), body.to_string())
}

/// A client that is not root is refused by the socket's mode; with the mode opened up, by
/// the server (SO_PEERCRED) on every route, unknown ones included, before anything is read.
fn refuses_non_root(socket: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
        .arg("--socket")
        .arg(socket)
        .arg("stats")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "uid 65534 got stats:\n{}",
        text(&out)
    );
    assert!(
        text(&out).contains("run this as root"),
        "not refused by the socket's mode: {}",
        text(&out)
    );
    println!(
        "uid 65534 refused by the socket's mode: {}",
        text(&out).trim()
    );
    let dir = socket.parent().unwrap();
    let before = [dir, socket].map(|p| (p, mode_owner(p).0));
    let open = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    open(dir, 0o777).unwrap();
    open(socket, 0o666).unwrap();
    let answers: Vec<_> = ROUTES
        .iter()
        .map(|&(method, path)| (method, path, curl_socket_as(65534, socket, method, path)))
        .collect();
    let root = curl_socket_as(0, socket, "GET", "/v1/stats");
    for (p, m) in before {
        open(p, m).unwrap();
    }
    for (method, path, (code, body)) in answers {
        assert!(
            code == "403" && body.contains("uid 65534 is not root"),
            "{method} {path} as uid 65534: {code} {body}"
        );
    }
    println!(
        "uid 65534 refused by the server on all {} routes (403); root's GET /v1/stats: {}",
        ROUTES.len(),
        root.0
    );
    assert_eq!(root.0, "200", "root's GET /v1/stats: {}", root.1);
}

// =======================================================================================
// The network surface and the files, on `bridgewall run` with a real Docker engine.

/// `bridgewall run` against a Docker engine (in its own namespace), without `--metrics`:
/// no network socket in the host's namespace nor in the engine's; the state file, the
/// control socket and — after a live `rules add` — the rules file are private, whatever the
/// umask (000 here) and the rules file's mode before (0644).
#[test]
fn root_docker_run_listens_on_nothing_and_writes_its_files_private() {
    use support::docker::DockerEngine;
    let t0 = Instant::now();
    let engine = DockerEngine::start(false);
    engine.run_container("c1", &[], &[]);
    println!(
        "[{:5.1}s] engine up with one container",
        t0.elapsed().as_secs_f64()
    );
    let rules = engine.dir.join("rules.txt");
    std::fs::write(
        &rules,
        "# rules of the security test\n-I -s 198.51.100.7 -p tcp --dport 22 -j DROP\n",
    )
    .unwrap();
    std::fs::set_permissions(
        &rules,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o644),
    )
    .unwrap();
    let state = engine.dir.join("bw-state");
    let host = engine.host();
    let mut bw = Held::start(
        "bridgewall run",
        &[
            OsStr::new("run"),
            OsStr::new("--docker-host"),
            OsStr::new(&host),
            OsStr::new("--netns"),
            OsStr::new(&engine.netns),
            OsStr::new("--state-dir"),
            state.as_os_str(),
            OsStr::new("--rules"),
            rules.as_os_str(),
        ],
    );
    bw.wait_for("control API on", Duration::from_secs(60));
    println!(
        "[{:5.1}s] bridgewall run enforcing",
        t0.elapsed().as_secs_f64()
    );

    let namespaces = vec![engine.netns.clone()];
    let inv = inventory(bw.pid, &namespaces);
    inv.print("bridgewall run");
    assert_no_host_network_socket(&inv, "bridgewall run", &namespaces);
    assert!(
        inv.elsewhere.is_empty(),
        "bridgewall run has network sockets in the engine's namespace: {:?}",
        inv.elsewhere
    );

    let files = state_files(&state);
    assert_eq!(files.len(), 1, "state files: {files:?}");
    assert_private(&state, 0o700, "the state directory (umask 000)");
    assert_private(&files[0], 0o600, "the takeover's state file (umask 000)");
    let socket = state.join("bridgewall.sock");
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert_private(&socket, 0o600, "the control socket (umask 000)");

    // A live edit: in force at once, and written to the rules file, 0600.
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&socket)
        .args([
            "rules",
            "add",
            "--",
            "-s",
            "198.51.100.8",
            "-p",
            "tcp",
            "--dport",
            "23",
        ])
        .args(["-j", "DROP"])
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "rules add: {}", text(&out));
    let saved = std::fs::read_to_string(&rules).unwrap();
    assert!(
        saved.contains("198.51.100.7") && saved.contains("198.51.100.8"),
        "the rules file after the edit:\n{saved}"
    );
    assert_private(&rules, 0o600, "the rules file after a live edit (was 0644)");
    assert!(
        leftovers(rules.parent().unwrap()).is_empty(),
        "{:?}",
        leftovers(rules.parent().unwrap())
    );

    let status = bw.interrupt();
    assert!(
        status.is_some_and(|s| s.success()),
        "bridgewall run did not stop cleanly ({status:?}):\n{}",
        bw.said()
    );
    assert!(
        state_files(&state).is_empty(),
        "the state file outlived run"
    );
    assert!(!socket.exists(), "the control socket outlived run");
    println!(
        "[{:5.1}s] stopped; record and socket removed",
        t0.elapsed().as_secs_f64()
    );
}

// =======================================================================================
// Policy modules: the sandbox.

/// A module with every export the ABI asks for, and `imports` (WAT fields); judges every
/// record Accept with rule 1.
fn module_with_imports(imports: &str) -> Vec<u8> {
    let io = 1024;
    let verdicts = io + MAX_BATCH * 48;
    wat::parse_str(format!(
        r#"(module {imports}
          (memory (export "memory") 1)
          (func (export "bw_abi_version") (result i32) (i32.const 1))
          (func (export "bw_init") (result i32) (i32.const {io}))
          (func (export "bw_evaluate") (param $n i32) (local $i i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
              (i32.store (i32.add (i32.const {verdicts}) (i32.shl (local.get $i) (i32.const 3)))
                         (i32.const 1))
              (i32.store offset=4 (i32.add (i32.const {verdicts}) (i32.shl (local.get $i) (i32.const 3)))
                         (i32.const 1))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))))"#
    ))
    .unwrap()
}

/// Imports a module may not have: memory, table, global and function imports from any
/// module name, WASI's included, and `bw.log` with another type.
const FORBIDDEN_IMPORTS: [(&str, &str); 9] = [
    (r#"(import "env" "memory" (memory 1))"#, "env.memory"),
    (r#"(import "env" "table" (table 1 funcref))"#, "env.table"),
    (r#"(import "env" "g" (global i32))"#, "env.g"),
    (
        r#"(import "env" "abort" (func (param i32 i32 i32 i32)))"#,
        "env.abort",
    ),
    (r#"(import "bw" "other" (func))"#, "bw.other"),
    (r#"(import "bw" "exit" (func (param i32)))"#, "bw.exit"),
    (
        r#"(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))"#,
        "wasi_snapshot_preview1.proc_exit",
    ),
    (
        r#"(import "wasi_snapshot_preview1" "sock_accept" (func (param i32 i32 i32) (result i32)))"#,
        "wasi_snapshot_preview1.sock_accept",
    ),
    (
        r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
        "wasi_snapshot_preview1.path_open",
    ),
];

/// With the runtime `run` uses (`WasmConfig::default()`), a module importing anything but
/// `bw.log: (func (param i32 i32))` is refused at load, naming the import; so is `bw.log`
/// of another type. The same module without the import, or with `bw.log`, loads.
/// `bridgewall policy check` (what `policy load` validates with) refuses them the same way,
/// in one line naming the file and the import.
#[test]
fn policy_modules_importing_anything_but_bw_log_are_refused_naming_the_import() {
    let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
    wasm.load(&module_with_imports(""), "plain")
        .expect("the module without imports loads");
    wasm.load(
        &module_with_imports(r#"(import "bw" "log" (func (param i32 i32)))"#),
        "logs",
    )
    .expect("the module importing bw.log loads");
    for (import, named) in FORBIDDEN_IMPORTS {
        let err = wasm
            .load(&module_with_imports(import), "hostile")
            .expect_err(import);
        assert!(
            matches!(err, LoadError::ForbiddenImport { .. }),
            "{import}: {err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(named) && msg.contains("\"hostile\"") && msg.contains("bw.log"),
            "{import}: the refusal does not name the import and the module: {msg}"
        );
    }
    for import in [
        r#"(import "bw" "log" (func (param i32)))"#,
        r#"(import "bw" "log" (func (param i32 i32) (result i32)))"#,
        r#"(import "bw" "log" (global i32))"#,
        r#"(import "bw" "log" (memory 1))"#,
    ] {
        let err = wasm
            .load(&module_with_imports(import), "hostile")
            .expect_err(import);
        assert!(
            matches!(err, LoadError::WrongImportType { .. }),
            "{import}: {err}"
        );
    }

    // By the command line, which `policy load` goes through before anything is replaced.
    let dir = Scratch::new("policy-check");
    for (i, (import, named)) in FORBIDDEN_IMPORTS.iter().enumerate() {
        let file = dir.join(&format!("m{i}.wasm"));
        std::fs::write(&file, module_with_imports(import)).unwrap();
        let out = Command::new(BIN)
            .args(["policy", "check"])
            .arg(&file)
            .env("RUST_LIB_BACKTRACE", "0")
            .output()
            .unwrap();
        let said = text(&out);
        assert!(
            !out.status.success(),
            "policy check accepted {import}:\n{said}"
        );
        assert!(
            said.contains(&format!("m{i}.wasm")) && said.contains(named),
            "policy check does not name the file and {named}:\n{said}"
        );
        println!("policy check refuses {named}: {}", said.trim());
    }
}

/// The sandbox's numbers as `SECURITY.md` quotes them.
#[test]
fn wasm_sandbox_limits_are_the_ones_security_md_quotes() {
    let c = WasmConfig::default();
    assert_eq!(c.max_module_bytes, 32 << 20, "module size cap");
    assert_eq!(
        c.max_memory_bytes,
        64 << 20,
        "linear memory cap per instance"
    );
    assert_eq!(c.max_table_elements, 65_536, "table elements");
    assert_eq!(c.max_wasm_stack, 256 << 10, "guest stack");
    assert_eq!(c.epoch_tick, Duration::from_millis(1), "epoch tick");
    assert_eq!(c.deadline_ticks, 2, "deadline in ticks");
    assert_eq!(
        c.max_call_wall,
        Duration::from_secs(1),
        "wall-time cap per call"
    );
    assert_eq!(c.fail_closed, Action::Drop, "fail-closed verdict");
    assert_eq!(c.quarantine_after, 8, "failed batches before quarantine");
    assert_eq!(
        (c.log_burst, c.log_per_second, c.log_max_bytes),
        (10, 10, 256),
        "bw.log"
    );
    let caps = controller::runtime::policy::COMPILED_POLICY_CAPS;
    assert_eq!(
        (caps.max_module_bytes, caps.max_memory_bytes),
        (1 << 30, 1 << 30),
        "the compiled Docker policy's caps"
    );
}

/// A record whose destination port selects what the hostile module below does.
fn record(dst_port: u16) -> PacketRecord {
    PacketRecord {
        src: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))),
        dst: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3))),
        src_port: 40000,
        dst_port,
        ip_version: 4,
        protocol: proto::TCP,
        tcp_flags: 0x02,
        flow_state: FlowState::New,
        in_port: 1,
        out_port: 2,
        ..PacketRecord::default()
    }
}

/// With the production defaults: a module that grows its memory without end gets -1 at
/// 64 MiB (and is told so, not trapped); one that recurses without end traps on its 256 KiB
/// stack; one that loops is stopped (in milliseconds on an idle machine; the 1 s wall-time
/// cap, checked at each deadline, bounds it on a loaded one — the bound here is loose so a
/// busy CI machine does not fail it). Each failure gives its batch the fail-closed Drop,
/// and the next batch is judged again. A table of more than 65,536 elements is refused at
/// load.
#[test]
fn a_module_is_held_to_the_default_memory_stack_and_time_limits() {
    let io = 1024;
    let verdicts = io + MAX_BATCH * 48;
    // Port 1: grow one page at a time until refused, answer Accept with the page count.
    // Port 2: recurse forever. Port 3: loop forever. Others: Accept, rule 1.
    let text = format!(
        r#"(module
          (memory (export "memory") 1)
          (func $deep (param i32) (result i32)
            (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))
          (func (export "bw_abi_version") (result i32) (i32.const 1))
          (func (export "bw_init") (result i32) (i32.const {io}))
          (func (export "bw_evaluate") (param $n i32) (local $i i32) (local $rule i32) (local $port i32)
            (block $done (loop $next
              (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
              (local.set $rule (i32.const 1))
              (local.set $port (i32.load16_u offset=34 (i32.add (i32.const {io}) (i32.mul (local.get $i) (i32.const 48)))))
              (if (i32.eq (local.get $port) (i32.const 1)) (then
                (block $full (loop $grow
                  (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                  (br $grow)))
                (local.set $rule (memory.size))))
              (if (i32.eq (local.get $port) (i32.const 2)) (then
                (local.set $rule (call $deep (i32.const 0)))))
              (if (i32.eq (local.get $port) (i32.const 3)) (then
                (loop $spin (br $spin))))
              (i32.store (i32.add (i32.const {verdicts}) (i32.shl (local.get $i) (i32.const 3))) (i32.const 1))
              (i32.store offset=4 (i32.add (i32.const {verdicts}) (i32.shl (local.get $i) (i32.const 3))) (local.get $rule))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br $next)))))"#
    );
    let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
    let module = wasm
        .load(&wat::parse_str(text).unwrap(), "hostile")
        .expect("hostile only on chosen ports: passes the load probe");
    let mut chain = PolicyChain::instantiate(1, std::slice::from_ref(&module)).unwrap();
    fn judge(chain: &mut PolicyChain, port: u16) -> (VerdictRecord, Duration) {
        let mut v = [VerdictRecord::CONTINUE];
        let t0 = Instant::now();
        dataplane::policy::Policy::decide(chain, &[record(port)], &mut v);
        (v[0], t0.elapsed())
    }
    let fail_closed = VerdictRecord::new(Action::Drop, RULE_FAIL_CLOSED);
    let accept = VerdictRecord::new(Action::Accept, 1);

    let (v, _) = judge(&mut chain, 1);
    assert_eq!(
        v,
        VerdictRecord::new(Action::Accept, 1024),
        "memory stops at 64 MiB = 1024 pages"
    );
    assert_eq!(chain.stages()[0].memory_bytes(), 64 << 20);
    let mut decide = |port: u16| judge(&mut chain, port);
    let (v, _) = decide(2);
    assert_eq!(v, fail_closed, "unbounded recursion traps");
    assert_eq!(decide(80).0, accept, "the next batch is judged");
    let (v, took) = decide(3);
    assert_eq!(v, fail_closed, "a loop is interrupted");
    assert!(took < Duration::from_secs(5), "a looping call ran {took:?}");
    assert_eq!(decide(80).0, accept, "the next batch is judged");
    let c = module.counters().snapshot();
    println!(
        "memory capped at 64 MiB; recursion trapped; loop stopped after {took:?}; counters: traps {} timeouts {}",
        c.traps, c.timeouts
    );
    assert_eq!((c.traps, c.timeouts), (1, 1));

    // Tables: at most 65,536 elements.
    let big_table = r#"(module
      (table 70000 funcref)
      (memory (export "memory") 1)
      (func (export "bw_abi_version") (result i32) (i32.const 1))
      (func (export "bw_init") (result i32) (i32.const 1024))
      (func (export "bw_evaluate") (param i32)))"#;
    let err = wasm
        .load(&wat::parse_str(big_table).unwrap(), "big-table")
        .expect_err("a table of 70,000 elements");
    println!("a table of 70,000 elements: {err}");
    assert!(
        matches!(err, LoadError::Instantiate { .. }) && err.to_string().contains("table"),
        "{err}"
    );
}

// =======================================================================================
// A container: spoofing, on a simulated bridge judged by the compiled Docker policy.

/// A simulated container (or the gateway) on the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Host {
    port: PortId,
    mac: [u8; 6],
    ip: [u8; 4],
}

impl Host {
    fn v4(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.ip))
    }

    /// Its IPv6 address: `fd00::` plus its IPv4 address.
    fn v6(self) -> IpAddr {
        let mut a = [0u8; 16];
        a[0] = 0xfd;
        a[12..].copy_from_slice(&self.ip);
        IpAddr::V6(Ipv6Addr::from(a))
    }
}

const GW: Host = Host {
    port: 0,
    mac: [2, 0x42, 0, 0, 0, 1],
    ip: [172, 17, 0, 1],
};
/// Publishes 8080:80.
const WEB: Host = Host {
    port: 1,
    mac: [2, 0x42, 172, 17, 0, 2],
    ip: [172, 17, 0, 2],
};
/// Exposes 80 and 5432, publishes nothing.
const DB: Host = Host {
    port: 2,
    mac: [2, 0x42, 172, 17, 0, 3],
    ip: [172, 17, 0, 3],
};
/// `--link db:db`.
const CLIENT: Host = Host {
    port: 3,
    mac: [2, 0x42, 172, 17, 0, 4],
    ip: [172, 17, 0, 4],
};
/// The attacker: an ordinary container, no links, nothing published.
const MALLORY: Host = Host {
    port: 4,
    mac: [2, 0x42, 172, 17, 0, 5],
    ip: [172, 17, 0, 5],
};
const HOSTS: [Host; 5] = [GW, WEB, DB, CLIENT, MALLORY];
/// A host outside the bridge.
const OUTSIDE: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));

/// Docker's view of the bridge: icc as given, web publishing 8080:80, client linked to db.
fn network(icc: bool) -> BridgeNetwork {
    let tcp = |port| PortProto {
        proto: proto::TCP,
        port,
    };
    let c = |name: &str, h: Host| ContainerInfo {
        name: name.into(),
        port: h.port,
        ips: vec![h.v4(), h.v6()],
        mac: h.mac,
        ..ContainerInfo::default()
    };
    BridgeNetwork {
        name: "bridge".into(),
        bridge: "docker0".into(),
        icc,
        gateway_port: GW.port,
        gateway_ips: vec![GW.v4(), GW.v6()],
        containers: vec![
            ContainerInfo {
                exposed: vec![tcp(80)],
                published: vec![Published {
                    proto: proto::TCP,
                    container_port: 80,
                    host_port: 8080,
                }],
                ..c("web", WEB)
            },
            ContainerInfo {
                exposed: vec![tcp(80), tcp(5432)],
                ..c("db", DB)
            },
            ContainerInfo {
                links: vec![LinkSpec {
                    child: "db".into(),
                    alias: "db".into(),
                }],
                ..c("client", CLIENT)
            },
            c("mallory", MALLORY),
        ],
        ..BridgeNetwork::default()
    }
}

/// The engine on in-memory ports with Docker's policy compiled to Wasm and loaded as
/// `bridgewall run` loads it (its caps, the default runtime).
struct Bridge {
    mem: HeapFrames,
    engine: Engine<HeapFrames>,
    ports: Vec<MemoryPort>,
    now: u64,
}

const FRAMES: usize = 4096;
const FRAME_SIZE: usize = 2048;

impl Bridge {
    fn new(icc: bool) -> Bridge {
        Bridge::with(icc, EngineConfig::default())
    }

    fn with(icc: bool, config: EngineConfig) -> Bridge {
        let set = rules_wasm::docker::docker_ruleset(&network(icc).into(), Vec::new(), 1);
        let compiled = rules_wasm::compiler::compile(&set).unwrap();
        let wasm = WasmRuntime::new(WasmConfig::default()).unwrap();
        let module = wasm
            .load_with_caps(
                &compiled.wasm,
                "docker-policy",
                controller::runtime::policy::COMPILED_POLICY_CAPS,
            )
            .unwrap();
        let chain = PolicyChain::instantiate(1, &[module]).unwrap();
        let mut engine = Engine::new(config, Box::new(chain), FreeList::full(FRAMES, FRAME_SIZE));
        let mut ports = Vec::new();
        for h in HOSTS {
            engine
                .add_port(PortConfig {
                    id: h.port,
                    network: 0,
                    macs: vec![h.mac],
                    ips: vec![h.v4(), h.v6()],
                    is_gateway: h == GW,
                    complete_checksums: false,
                })
                .unwrap();
            ports.push(MemoryPort::new(MemoryPortConfig {
                fill_share: 256,
                ..MemoryPortConfig::default()
            }));
        }
        Bridge {
            mem: HeapFrames::new(FRAMES, FRAME_SIZE),
            engine,
            ports,
            now: 1_000_000_000,
        }
    }

    /// Sends `frame` in on `from`'s port, runs the engine until nothing moves, and returns
    /// the ports that transmitted something.
    fn send(&mut self, from: Host, frame: &[u8]) -> Vec<PortId> {
        assert!(self.ports[usize::from(from.port)].inject(frame));
        for _ in 0..1000 {
            self.now += 1_000_000;
            let mut set: Vec<(PortId, &mut MemoryPort)> = self
                .ports
                .iter_mut()
                .enumerate()
                .map(|(i, p)| (i as PortId, p))
                .collect();
            let r = self.engine.drive(self.now, &mut self.mem, &mut set);
            let inbox: usize = self.ports.iter().map(MemoryPort::inbox_len).sum();
            let queued = self.engine.frames_queued() - self.engine.fragments_held();
            let in_tx: usize = self
                .ports
                .iter()
                .map(|p| Port::<HeapFrames>::frames_held(p).tx)
                .sum();
            if r.received == 0 && r.transmitted == 0 && inbox == 0 && queued == 0 && in_tx == 0 {
                return self
                    .ports
                    .iter_mut()
                    .enumerate()
                    .filter_map(|(i, p)| (!p.take_sent().is_empty()).then_some(i as PortId))
                    .collect();
            }
        }
        panic!("the simulated bridge did not settle");
    }

    /// One round of the worker's loop: each port is visited once.
    fn drive_once(&mut self) -> Vec<usize> {
        self.now += 1_000_000;
        let mut set: Vec<(PortId, &mut MemoryPort)> = self
            .ports
            .iter_mut()
            .enumerate()
            .map(|(i, p)| (i as PortId, p))
            .collect();
        self.engine.drive(self.now, &mut self.mem, &mut set);
        self.ports.iter_mut().map(|p| p.take_sent().len()).collect()
    }

    fn drops(&self, reason: DropReason) -> u64 {
        self.engine.counters().snapshot().drops(reason)
    }

    /// Sends `frame` from `from` and checks who got it and, when nobody should, that it was
    /// dropped for `reason`.
    fn expect(
        &mut self,
        what: &str,
        from: Host,
        frame: &[u8],
        receivers: &[PortId],
        reason: Option<DropReason>,
    ) {
        let before = reason.map(|r| self.drops(r));
        let got = self.send(from, frame);
        assert_eq!(got, receivers, "{what}: delivered to ports {got:?}");
        if let (Some(r), Some(b)) = (reason, before) {
            assert_eq!(self.drops(r), b + 1, "{what}: not counted as {r:?}");
        }
        println!(
            "{what}: {}",
            match (got.is_empty(), reason) {
                (true, Some(r)) => format!("reaches nobody ({r:?})"),
                (true, None) => "reaches nobody".to_string(),
                (false, _) => format!("delivered to ports {got:?}"),
            }
        );
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// A TCP segment from `src_mac`/`src` to `dst_mac`/`dst` (both IPv4 or both IPv6).
fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    flags: u8,
) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 64240);
    h.syn = flags & SYN != 0;
    h.psh = flags & PSH != 0;
    h.ack = flags & ACK != 0;
    if h.ack {
        h.acknowledgment_number = 1;
    }
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let payload: &[u8] = if flags & PSH != 0 {
        b"GET / HTTP/1.0\r\n\r\n"
    } else {
        &[]
    };
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .tcp_header(h)
            .write(&mut out, payload),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .tcp_header(h)
            .write(&mut out, payload),
        _ => panic!("mixed families"),
    }
    .unwrap();
    out
}

fn udp(src_mac: [u8; 6], dst_mac: [u8; 6], src: IpAddr, dst: (IpAddr, u16)) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst.0) else {
        panic!("IPv4 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(5353, dst.1)
        .write(&mut out, b"ANY? example.com")
        .unwrap();
    out
}

/// An ICMP port unreachable from `src` (at `src_mac`) to `to`, quoting `quoted` (a frame).
fn icmp_unreachable(src_mac: [u8; 6], src: [u8; 4], to: Host, quoted: &[u8]) -> Vec<u8> {
    let ip_and_8 = &quoted[14..(14 + 28).min(quoted.len())];
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, to.mac)
        .ipv4(src, to.ip, 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut out, ip_and_8)
        .unwrap();
    out
}

/// `fe80::bad`: an IPv6 link-local address, which the source guard lets through from any
/// container (neighbour discovery needs it).
fn link_local() -> IpAddr {
    "fe80::bad".parse().unwrap()
}

/// icc=false. Mallory, an ordinary container, tries every way of borrowing an identity:
/// another container's address (to use its link), the host's (which reaches every port), an
/// outside host's (to reach a published port, or to send out under a victim's address), a
/// container's MAC (with its own address or the other's), IPv6 likewise, and packets of an
/// established flow of two other containers. None reaches anyone: a forged source address is
/// dropped before the policy (`SpoofedSource`), a forged MAC changes nothing because the
/// policy decides by ports. The same packets with honest headers show what passes.
#[test]
fn spoofing_reaches_nobody_icc_false() {
    let mut b = Bridge::new(false);
    let (db, client, gw) = (DB.port, CLIENT.port, GW.port);
    let spoofed = Some(DropReason::SpoofedSource);
    let policy = Some(DropReason::PolicyDrop);
    let m = MALLORY.mac;

    // Honest traffic, for contrast.
    b.expect(
        "client → db:80 over its link",
        CLIENT,
        &tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), SYN),
        &[db],
        None,
    );
    b.expect(
        "db → client SYN-ACK",
        DB,
        &tcp(
            DB.mac,
            CLIENT.mac,
            (DB.v4(), 80),
            (CLIENT.v4(), 40000),
            SYN | ACK,
        ),
        &[client],
        None,
    );
    b.expect(
        "mallory → the outside with its own address",
        MALLORY,
        &tcp(m, GW.mac, (MALLORY.v4(), 41000), (OUTSIDE, 443), SYN),
        &[gw],
        None,
    );
    b.expect(
        "mallory → db:80 with its own address (icc=false)",
        MALLORY,
        &tcp(m, DB.mac, (MALLORY.v4(), 41001), (DB.v4(), 80), SYN),
        &[],
        policy,
    );

    b.expect(
        "mallory's IP broadcast (icc=false: judged as container-to-container)",
        MALLORY,
        &udp(
            m,
            [0xff; 6],
            MALLORY.v4(),
            ("172.17.255.255".parse().unwrap(), 137),
        ),
        &[],
        policy,
    );

    // Another container's address: the link's parent.
    b.expect(
        "mallory as client (client's address) → db:80",
        MALLORY,
        &tcp(m, DB.mac, (CLIENT.v4(), 41002), (DB.v4(), 80), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as client (client's MAC and address) → db:80",
        MALLORY,
        &tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 41003), (DB.v4(), 80), SYN),
        &[],
        Some(DropReason::SpoofedMac),
    );
    b.expect(
        "mallory with client's MAC and its own address → db:80",
        MALLORY,
        &tcp(
            CLIENT.mac,
            DB.mac,
            (MALLORY.v4(), 41004),
            (DB.v4(), 80),
            SYN,
        ),
        &[],
        Some(DropReason::SpoofedMac),
    );
    b.expect(
        "the host → client (client's MAC still leads to client's port)",
        GW,
        &tcp(GW.mac, CLIENT.mac, (GW.v4(), 42000), (CLIENT.v4(), 80), SYN),
        &[client],
        None,
    );

    // The host's address, which reaches any container port, and the host itself.
    b.expect(
        "mallory as the host → db:5432",
        MALLORY,
        &tcp(m, DB.mac, (GW.v4(), 41005), (DB.v4(), 5432), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as the host → the host's port 22",
        MALLORY,
        &tcp(m, GW.mac, (GW.v4(), 41006), (GW.v4(), 22), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as web → the host",
        MALLORY,
        &tcp(m, GW.mac, (WEB.v4(), 41007), (GW.v4(), 8080), SYN),
        &[],
        spoofed,
    );

    // An outside address: a published port, and out to the world under a victim's name.
    b.expect(
        "mallory as an outside host → web:80 (published)",
        MALLORY,
        &tcp(m, WEB.mac, (OUTSIDE, 41008), (WEB.v4(), 80), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as an outside host → a DNS server outside (reflection)",
        MALLORY,
        &udp(m, GW.mac, OUTSIDE, ("203.0.113.53".parse().unwrap(), 53)),
        &[],
        spoofed,
    );

    // IPv6: another container's address is refused; a link-local one passes the guard but
    // the policy judges it by its port.
    b.expect(
        "mallory as client over IPv6 → db:80",
        MALLORY,
        &tcp(m, DB.mac, (CLIENT.v6(), 41009), (DB.v6(), 80), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as the host over IPv6 → db:5432",
        MALLORY,
        &tcp(m, DB.mac, (GW.v6(), 41010), (DB.v6(), 5432), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory from a link-local address → db:80",
        MALLORY,
        &tcp(m, DB.mac, (link_local(), 41011), (DB.v6(), 80), SYN),
        &[],
        policy,
    );

    // The client ↔ db flow admitted above: mallory can send into it as neither end.
    b.expect(
        "mallory injects into client → db:80 as client",
        MALLORY,
        &tcp(m, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), ACK | PSH),
        &[],
        spoofed,
    );
    b.expect(
        "mallory injects into db → client as db",
        MALLORY,
        &tcp(
            m,
            CLIENT.mac,
            (DB.v4(), 80),
            (CLIENT.v4(), 40000),
            ACK | PSH,
        ),
        &[],
        spoofed,
    );
    let quoted = tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), ACK);
    b.expect(
        "mallory forges db's ICMP port unreachable about the flow, to client",
        MALLORY,
        &icmp_unreachable(m, DB.ip, CLIENT, &quoted),
        &[],
        spoofed,
    );
    // The flow itself still works.
    b.expect(
        "client → db:80, the flow's next segment",
        CLIENT,
        &tcp(
            CLIENT.mac,
            DB.mac,
            (CLIENT.v4(), 40000),
            (DB.v4(), 80),
            ACK | PSH,
        ),
        &[db],
        None,
    );
}

/// icc=true lets containers talk, so spoofing another container gains nothing there; what
/// stays with the host (its address reaches every container port) and with the outside
/// still cannot be borrowed.
#[test]
fn spoofing_reaches_nobody_icc_true() {
    let mut b = Bridge::new(true);
    let spoofed = Some(DropReason::SpoofedSource);
    let m = MALLORY.mac;
    b.expect(
        "mallory → db:5432 with its own address (icc=true)",
        MALLORY,
        &tcp(m, DB.mac, (MALLORY.v4(), 41000), (DB.v4(), 5432), SYN),
        &[DB.port],
        None,
    );
    b.expect(
        "mallory as the host → db:5432",
        MALLORY,
        &tcp(m, DB.mac, (GW.v4(), 41001), (DB.v4(), 5432), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as client → the host",
        MALLORY,
        &tcp(m, GW.mac, (CLIENT.v4(), 41002), (GW.v4(), 22), SYN),
        &[],
        spoofed,
    );
    b.expect(
        "mallory as an outside host → the outside",
        MALLORY,
        &udp(m, GW.mac, OUTSIDE, ("203.0.113.53".parse().unwrap(), 53)),
        &[],
        spoofed,
    );
}

/// The outside network (frames from the gateway port with an outside source) reaches a
/// container's published port only; the host itself (the bridge's address) reaches every
/// port, as Docker allows; replies of a container's own connections come back.
#[test]
fn the_outside_reaches_published_ports_only_and_the_host_every_port() {
    let mut b = Bridge::new(false);
    let policy = Some(DropReason::PolicyDrop);
    let g = GW.mac;
    b.expect(
        "outside → web:80 (published 8080:80, after the host's DNAT)",
        GW,
        &tcp(g, WEB.mac, (OUTSIDE, 50000), (WEB.v4(), 80), SYN),
        &[WEB.port],
        None,
    );
    b.expect(
        "outside → web:22 (not published)",
        GW,
        &tcp(g, WEB.mac, (OUTSIDE, 50001), (WEB.v4(), 22), SYN),
        &[],
        policy,
    );
    b.expect(
        "outside → db:5432 (exposed, not published)",
        GW,
        &tcp(g, DB.mac, (OUTSIDE, 50002), (DB.v4(), 5432), SYN),
        &[],
        policy,
    );
    b.expect(
        "outside (IPv6) → db:80",
        GW,
        &tcp(
            g,
            DB.mac,
            ("2001:db8::2".parse().unwrap(), 50003),
            (DB.v6(), 80),
            SYN,
        ),
        &[],
        policy,
    );
    b.expect(
        "the host → db:5432",
        GW,
        &tcp(g, DB.mac, (GW.v4(), 50004), (DB.v4(), 5432), SYN),
        &[DB.port],
        None,
    );
    b.expect(
        "db → outside:443",
        DB,
        &tcp(DB.mac, g, (DB.v4(), 43000), (OUTSIDE, 443), SYN),
        &[GW.port],
        None,
    );
    b.expect(
        "outside:443 → db, the reply",
        GW,
        &tcp(g, DB.mac, (OUTSIDE, 443), (DB.v4(), 43000), SYN | ACK),
        &[DB.port],
        None,
    );
}

/// A container cannot exhaust the flow table's memory (its slots are all allocated at
/// start; 65,536 per worker by default, 8 here), nor push another container's connection out
/// of it by opening flows fast: a full table makes room by evicting expired flows, denials,
/// closed or unconfirmed flows — a flooder's own first — and never a confirmed connection of
/// a port within its fair share (`dataplane::flow`'s module docs). Here mallory opens 64
/// unanswered flows in a table of 8 while db holds an established connection to the outside:
/// mallory's flows churn each other, db's connection keeps passing both ways.
#[test]
fn a_flood_of_flows_from_one_container_does_not_cut_anothers_connection() {
    let mut b = Bridge::with(
        false,
        EngineConfig {
            flow_capacity: 8,
            ..EngineConfig::default()
        },
    );
    let g = GW.mac;
    let (to_db, to_gw) = ([DB.port], [GW.port]);
    let db_out = |flags| tcp(DB.mac, g, (DB.v4(), 43000), (OUTSIDE, 443), flags);
    let out_db = |flags| tcp(g, DB.mac, (OUTSIDE, 443), (DB.v4(), 43000), flags);
    b.expect("db → outside:443 SYN", DB, &db_out(SYN), &to_gw, None);
    b.expect("outside → db SYN-ACK", GW, &out_db(SYN | ACK), &to_db, None);
    b.expect("db → outside ACK", DB, &db_out(ACK), &to_gw, None);
    let before = b.engine.counters().snapshot().flows;
    for i in 0..64u16 {
        let syn = tcp(
            MALLORY.mac,
            g,
            (MALLORY.v4(), 20000 + i),
            (OUTSIDE, 80),
            SYN,
        );
        assert_eq!(b.send(MALLORY, &syn), to_gw, "mallory's flow {i}");
    }
    let after = b.engine.counters().snapshot().flows;
    let evicted = after.evictions - before.evictions;
    println!(
        "mallory opened 64 flows in a table of 8: {evicted} evictions, {} refused",
        after.refused - before.refused
    );
    assert!(evicted >= 56, "{evicted} evictions");
    b.expect(
        "outside → db data after the flood",
        GW,
        &out_db(ACK | PSH),
        &to_db,
        None,
    );
    b.expect("db → outside data", DB, &db_out(ACK | PSH), &to_gw, None);
}

/// A container flooding its port gets its turn of the worker, not the worker: each round
/// visits every ready port once and takes at most one batch (64 frames) from it, so a
/// frame from another container goes through in the same round as mallory's first 64.
#[test]
fn a_flooding_container_gets_one_batch_per_round_and_others_theirs() {
    let mut b = Bridge::new(false);
    let g = GW.mac;
    for i in 0..200u16 {
        let syn = tcp(
            MALLORY.mac,
            g,
            (MALLORY.v4(), 20000 + i),
            (OUTSIDE, 80),
            SYN,
        );
        assert!(b.ports[usize::from(MALLORY.port)].inject(&syn));
    }
    let syn = tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), SYN);
    assert!(b.ports[usize::from(CLIENT.port)].inject(&syn));
    let sent = b.drive_once();
    println!(
        "one round with 200 frames waiting from mallory: {} of them out, client's frame to db: {}",
        sent[usize::from(GW.port)],
        sent[usize::from(DB.port)]
    );
    assert_eq!(sent[usize::from(DB.port)], 1, "client's frame waited");
    assert!(
        (1..=64).contains(&sent[usize::from(GW.port)]),
        "mallory's frames in one round: {}",
        sent[usize::from(GW.port)]
    );
}

/// An ARP packet from `mac` saying that `ip` is at `mac`, to `to`.
fn arp_claim(mac: [u8; 6], ip: [u8; 4], to: [u8; 6], reply: bool) -> Vec<u8> {
    let pkt = ArpEthIpv4Packet {
        operation: if reply {
            ArpOperation::REPLY
        } else {
            ArpOperation::REQUEST
        },
        sender_mac: mac,
        sender_ipv4: ip,
        target_mac: if reply { to } else { [0; 6] },
        target_ipv4: ip,
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, to)
        .arp(pkt.to_arp_packet())
        .write(&mut out)
        .unwrap();
    out
}

/// An ICMPv6 neighbour-discovery message of `kind` (134 RA, 136 NA) from `src` at `mac`.
fn nd(mac: [u8; 6], src: IpAddr, dst: ([u8; 6], IpAddr), kind: u8, body: &[u8]) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst.1) else {
        panic!("IPv6 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac, dst.0)
        .ipv6(s.octets(), d.octets(), 255)
        .icmpv6_raw(kind, 0, [0x60, 0, 0, 0])
        .write(&mut out, body)
        .unwrap();
    out
}

/// A neighbour advertisement's body: the target address, then the target link-layer
/// address option naming `mac`.
fn na_body(target: IpAddr, mac: [u8; 6]) -> Vec<u8> {
    let IpAddr::V6(t) = target else {
        panic!("IPv6 only")
    };
    let mut body = t.octets().to_vec();
    body.extend_from_slice(&[2, 1]);
    body.extend_from_slice(&mac);
    body
}

/// ARP and neighbour discovery are switched without the policy, so the guard checks them
/// too: a container's frames must carry its own MAC (Ethernet source and ARP sender
/// hardware address: `spoofed_mac`) and its ARP its own address (`spoofed_source`), so
/// it cannot poison its neighbours' or the host's ARP caches with another's address; a
/// neighbour advertisement from another container's IPv6 address is dropped too. What a
/// container may send: ARP about itself, ARP probes (sender 0.0.0.0).
#[test]
fn arp_and_neighbour_discovery_cannot_claim_another_containers_address_or_mac() {
    let mut b = Bridge::new(false);
    let m = MALLORY.mac;
    let others = [GW.port, WEB.port, DB.port, CLIENT.port];
    let spoofed_ip = Some(DropReason::SpoofedSource);
    let spoofed_mac = Some(DropReason::SpoofedMac);
    b.expect(
        "mallory's gratuitous ARP about itself",
        MALLORY,
        &arp_claim(m, MALLORY.ip, [0xff; 6], true),
        &others,
        None,
    );
    let mut probe = arp_claim(m, [0, 0, 0, 0], [0xff; 6], false);
    probe[38..42].copy_from_slice(&DB.ip);
    b.expect(
        "mallory's ARP probe (sender 0.0.0.0) for db's address",
        MALLORY,
        &probe,
        &[DB.port],
        None,
    );
    b.expect(
        "mallory's gratuitous ARP claiming db's address",
        MALLORY,
        &arp_claim(m, DB.ip, [0xff; 6], true),
        &[],
        spoofed_ip,
    );
    b.expect(
        "mallory's ARP reply to client claiming db's address",
        MALLORY,
        &arp_claim(m, DB.ip, CLIENT.mac, true),
        &[],
        spoofed_ip,
    );
    b.expect(
        "mallory's ARP reply to the host claiming the host's address",
        MALLORY,
        &arp_claim(m, GW.ip, GW.mac, true),
        &[],
        spoofed_ip,
    );
    b.expect(
        "mallory's ARP as db (db's MAC and address)",
        MALLORY,
        &arp_claim(DB.mac, DB.ip, [0xff; 6], true),
        &[],
        spoofed_mac,
    );
    let mut forged_sha = arp_claim(m, MALLORY.ip, [0xff; 6], true);
    forged_sha[22..28].copy_from_slice(&DB.mac);
    b.expect(
        "mallory's ARP naming db's MAC as its sender hardware address",
        MALLORY,
        &forged_sha,
        &[],
        spoofed_mac,
    );
    b.expect(
        "mallory's neighbour advertisement for db's IPv6 address, from it",
        MALLORY,
        &nd(
            m,
            DB.v6(),
            (CLIENT.mac, CLIENT.v6()),
            136,
            &na_body(DB.v6(), m),
        ),
        &[],
        spoofed_ip,
    );
    b.expect(
        "mallory's neighbour advertisement from db's MAC",
        MALLORY,
        &nd(
            DB.mac,
            link_local(),
            (CLIENT.mac, CLIENT.v6()),
            136,
            &na_body(DB.v6(), DB.mac),
        ),
        &[],
        spoofed_mac,
    );
    let mut raw = Vec::new();
    raw.extend_from_slice(&DB.mac);
    raw.extend_from_slice(&CLIENT.mac);
    raw.extend_from_slice(&[0x88, 0xb5]);
    raw.extend_from_slice(&[0x5a; 46]);
    b.expect(
        "a frame of another ethertype from mallory with client's MAC",
        MALLORY,
        &raw,
        &[],
        spoofed_mac,
    );
}

/// Neighbour discovery and ICMP errors cannot claim what is not the sender's, and what
/// `SECURITY.md` lists as not enforced, pinned so the document changes with the code:
/// - A container's neighbour advertisement may speak only for its own addresses (or a
///   link-local one): advertising another container's IPv6 address is `spoofed_source`.
///   Router advertisements and redirects from a container are `router_message`: the
///   gateway is the bridge's router.
/// - An ICMP error about an admitted flow passes as RELATED from a container only if it
///   comes from the quoted packet's destination; a third container's is judged by the
///   policy like any packet (icc=false drops it).
/// - GAP: other ethertypes are switched without a verdict (`switch_non_ip`, as a bridge
///   does): two cooperating containers can exchange raw frames despite icc=false.
#[test]
fn nd_and_icmp_errors_claim_only_what_is_theirs_and_other_ethertypes_pass() {
    let mut b = Bridge::new(false);
    let m = MALLORY.mac;
    b.expect(
        "mallory's neighbour advertisement for db's IPv6 address, from its link-local",
        MALLORY,
        &nd(
            m,
            link_local(),
            (CLIENT.mac, CLIENT.v6()),
            136,
            &na_body(DB.v6(), m),
        ),
        &[],
        Some(DropReason::SpoofedSource),
    );
    b.expect(
        "mallory's neighbour advertisement for its own address",
        MALLORY,
        &nd(
            m,
            link_local(),
            (CLIENT.mac, CLIENT.v6()),
            136,
            &na_body(MALLORY.v6(), m),
        ),
        &[CLIENT.port],
        None,
    );
    b.expect(
        "mallory's router advertisement to all nodes",
        MALLORY,
        &nd(
            m,
            link_local(),
            ([0x33, 0x33, 0, 0, 0, 1], "ff02::1".parse().unwrap()),
            134,
            &[0; 8],
        ),
        &[],
        Some(DropReason::RouterMessage),
    );
    let mut raw = Vec::new();
    raw.extend_from_slice(&DB.mac);
    raw.extend_from_slice(&m);
    raw.extend_from_slice(&[0x88, 0xb5]);
    raw.extend_from_slice(&[0x5a; 46]);
    b.expect(
        "GAP: a frame of another ethertype (0x88b5) from mallory to db",
        MALLORY,
        &raw,
        &[DB.port],
        None,
    );
    b.expect(
        "client → db:80 over its link",
        CLIENT,
        &tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), SYN),
        &[DB.port],
        None,
    );
    let quoted = tcp(CLIENT.mac, DB.mac, (CLIENT.v4(), 40000), (DB.v4(), 80), SYN);
    b.expect(
        "mallory's own ICMP port unreachable about client → db, to client (icc=false)",
        MALLORY,
        &icmp_unreachable(m, MALLORY.ip, CLIENT, &quoted),
        &[],
        Some(DropReason::PolicyDrop),
    );
    b.expect(
        "db's ICMP port unreachable about client → db passes as RELATED",
        DB,
        &icmp_unreachable(DB.mac, DB.ip, CLIENT, &quoted),
        &[CLIENT.port],
        None,
    );
}
