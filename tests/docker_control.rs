//! The operator surface of `bridgewall run` (issue 10) against a real Docker engine
//! (Debian's docker.io, in a network namespace of its own): `run` serves its control API on
//! the unix socket in its state directory and Prometheus metrics on a loopback port, and
//! every client command is run against it as an operator would, by the binary, with
//! `--socket`:
//!
//! - `rules list|add|insert|delete` edit the policy in force at once, are saved to the
//!   `--rules` file, survive a restart, and refuse bad input (an unknown option, an unknown
//!   container, a rule that is not there, a line that does not exist) without changing
//!   anything;
//! - `trace` answers live with the policy in force (the added rule decides), and names an
//!   unknown endpoint;
//! - `stats --json` counts per container by name; `monitor --drops` shows an icc=false drop
//!   as it happens; `audit on|off` forwards what the policy denies, counted as
//!   `audit_denied`;
//! - `policy load|unload|list|check`: a corrupt module is refused with a one-line reason and
//!   nothing loaded, a text module that drops all TCP blocks the page until it is unloaded;
//! - `capture -w` writes a pcap file of a container's frames;
//! - a client that is not root is refused: by the socket's permissions, and by the server
//!   when the permissions are opened up;
//! - `/metrics` (scraped from 127.0.0.1 only) has per-container packet counters and counts
//!   the policy swaps the edits made.
//!
//! The engine runs with icc=false: `web` (nginx, `-p 8080:80`), `db` (busybox httpd on 80)
//! and `client` (busybox, `--link web:web`), so client reaches web's port 80 through the
//! link and nothing of db. Every probe runs inside a container; the only thing sent from
//! the root namespace is the metrics scrape to 127.0.0.1. The engine, the namespaces,
//! bridgewall and the `monitor`/`capture` children are removed by guards, also when the test
//! fails. Needs root (docker.io and nginx are installed from Debian when missing); under a
//! minute once they are.
mod support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use controller::control::api::{
    MonitorLine, PolicyInfo, RuleEditReply, RuleRow, RulesReply, StatsReply, TraceReport,
};
use support::bridgewall::{Bridgewall, at};
use support::docker::DockerEngine;

const BIN: &str = env!("CARGO_BIN_EXE_bridgewall");
/// The page nginx serves in `lab/nginx`.
const NGINX_PAGE: &str = "hello from nginx";
/// The page busybox httpd serves in `lab/busybox`.
const BUSYBOX_PAGE: &str = "hello from busybox httpd";
/// A fetch that fails faster than this was refused, not dropped (wget gets `timeout 3`).
const DROPPED_AFTER: Duration = Duration::from_millis(2500);
/// How long something that must start working (or stop) may take to settle.
const SETTLE: Duration = Duration::from_secs(15);
/// The rule the rules file starts with (the first outside host may not reach web's page).
const FILE_RULE: &str = "-A DOCKER-USER -s 198.18.0.2 -d web -p tcp --dport 80 -j DROP";

/// A WebAssembly text module (bridgewall's policy ABI v1) that drops every TCP packet and
/// leaves everything else to the next module (`Continue`). Records of 48 bytes at 1024,
/// protocol at offset 37; verdicts of 8 bytes (action, rule id) after 64 records.
const DROP_TCP_WAT: &str = r#"
(module
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
            (i32.store offset=4 (local.get $out) (i32.const 1)))
          (else
            (i32.store (local.get $out) (i32.const 0))
            (i32.store offset=4 (local.get $out) (i32.const -1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
)
"#;

// ---------------------------------------------------------------------------------------
// The client commands.

/// `bridgewall --socket SOCKET ARGS…`, run to the end.
fn cli(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("running bridgewall {args:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a client command that must succeed; its standard output.
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

/// Runs a client command that must fail with a message containing every one of `words`;
/// the message (standard error).
fn cli_fails(socket: &Path, args: &[&str], words: &[&str]) -> String {
    let out = cli(socket, args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "bridgewall {args:?} should fail, but succeeded:\nstdout: {}\nstderr: {err}",
        text(&out.stdout)
    );
    for w in words {
        assert!(
            err.contains(w),
            "bridgewall {args:?}: the error does not say {w:?}:\n{err}"
        );
    }
    err
}

/// Runs a client command with `--json` that must succeed; its answer decoded as `$t` (a
/// macro: serde's traits are not a dependency of this crate, only serde_json).
macro_rules! cli_json {
    ($t:ty, $socket:expr, $args:expr $(,)?) => {{
        let args: &[&str] = $args;
        let out = cli_ok($socket, args);
        serde_json::from_str::<$t>(&out)
            .unwrap_or_else(|e| panic!("bridgewall {args:?}: not the expected JSON ({e}):\n{out}"))
    }};
}

fn rules_list(socket: &Path) -> RulesReply {
    cli_json!(RulesReply, socket, &["rules", "list", "--json"])
}

fn stats(socket: &Path) -> StatsReply {
    cli_json!(StatsReply, socket, &["stats", "--json"])
}

/// The user chain's rows.
fn user_rows(r: &RulesReply) -> &[RuleRow] {
    &r.chains
        .iter()
        .find(|c| c.name == "DOCKER-USER")
        .unwrap_or_else(|| panic!("no DOCKER-USER chain in the listing: {r:#?}"))
        .rules
}

/// The one port of `stats` called `name`.
fn port<'a>(s: &'a StatsReply, name: &str) -> &'a controller::control::api::PortStats {
    s.ports
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("stats has no port {name:?}: {:?}", s.ports))
}

// ---------------------------------------------------------------------------------------
// Traffic.

/// Polls `f` until it gives a value; panics naming `what` after `timeout`.
fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The page at `url`, fetched from inside `from`, once it is served (within [`SETTLE`]).
fn served(engine: &DockerEngine, what: &str, from: &str, url: &str, page: &str) {
    let body = eventually(what, SETTLE, || engine.fetch(from, url));
    assert!(body.contains(page), "{what}: unexpected page {body:?}");
}

/// One fetch that must be dropped: it fails, and only after the whole timeout (no refusal).
fn dropped_now(engine: &DockerEngine, what: &str, from: &str, url: &str) {
    let t = Instant::now();
    let r = engine.fetch(from, url);
    assert!(r.is_none(), "{what}: should be dropped, got {r:?}");
    assert!(
        t.elapsed() >= DROPPED_AFTER,
        "{what}: failed fast ({:?}): refused, not dropped",
        t.elapsed()
    );
}

/// Fetches until one is dropped (within [`SETTLE`]), then once more, which must be dropped
/// too: the change that drops it is in force, not settling.
fn dropped_eventually(engine: &DockerEngine, what: &str, from: &str, url: &str) {
    let deadline = Instant::now() + SETTLE;
    while engine.fetch(from, url).is_some() {
        assert!(
            Instant::now() < deadline,
            "{what}: still served after {SETTLE:?}"
        );
    }
    dropped_now(engine, what, from, url);
}

/// `curl URL` in network namespace `ns` (the engine's: the Docker host); the body, if any.
fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-m", "3", url])
        .output()
        .expect("running curl");
    out.status.success().then(|| text(&out.stdout))
}

fn ip_of(engine: &DockerEngine, name: &str) -> String {
    engine
        .inspect(name, "{{.NetworkSettings.IPAddress}}")
        .trim()
        .to_string()
}

/// A free TCP port on 127.0.0.1 (bound, then let go) for `--metrics`.
fn free_loopback_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// A client command left running (`monitor`, `capture`): killed and reaped on drop.
struct Running {
    child: Option<Child>,
    what: String,
}

impl Running {
    fn spawn(socket: &Path, args: &[&str]) -> Running {
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting bridgewall {args:?}: {e}"));
        Running {
            child: Some(child),
            what: format!("bridgewall {}", args.join(" ")),
        }
    }

    /// Calls `meanwhile` (traffic) until the command exits by itself; its output. Panics if
    /// it does not exit within `timeout`.
    fn finish_while(&mut self, timeout: Duration, mut meanwhile: impl FnMut()) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("the command runs");
            if child.try_wait().expect("polling the command").is_some() {
                let child = self.child.take().unwrap();
                return child.wait_with_output().expect("its output");
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}",
                self.what
            );
            meanwhile();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The engine and bridgewall.

struct Lab {
    engine: DockerEngine,
    web: String,
    db: String,
    client: String,
    rules_file: PathBuf,
    socket: PathBuf,
}

impl Lab {
    fn start(t0: Instant) -> Lab {
        let engine = DockerEngine::start(false);
        engine.import_nginx();
        engine.run_image("web", &["-p", "8080:80"], "lab/nginx");
        engine.run_container("db", &[], &[]);
        engine.run_container("client", &["--link", "web:web"], &[]);
        let (web, db, client) = (
            ip_of(&engine, "web"),
            ip_of(&engine, "db"),
            ip_of(&engine, "client"),
        );
        println!(
            "{} engine up (icc=false): web {web}, db {db}, client {client}",
            at(t0)
        );
        let rules_file = engine.dir.join("rules.txt");
        std::fs::write(
            &rules_file,
            format!("# rules of the docker_control test\n{FILE_RULE}\n"),
        )
        .unwrap();
        let socket = engine.dir.join("bridgewall-state").join("bridgewall.sock");
        Lab {
            engine,
            web,
            db,
            client,
            rules_file,
            socket,
        }
    }

    /// `bridgewall run --rules FILE --metrics 127.0.0.1:PORT`, waited for until its control
    /// socket is served.
    fn bridgewall(&self, metrics: u16, extra: &[&OsStr]) -> Bridgewall {
        let metrics = format!("127.0.0.1:{metrics}");
        let mut args = vec![
            OsStr::new("--rules"),
            self.rules_file.as_os_str(),
            OsStr::new("--metrics"),
            OsStr::new(&metrics),
        ];
        args.extend_from_slice(extra);
        let mut bw = Bridgewall::start_taking_over_with(&self.engine, 3, &args);
        let socket = self.socket.clone();
        bw.wait_until("the control API served", Duration::from_secs(15), |b| {
            b.lines().iter().any(|l| l.contains("control API on")) && socket.exists()
        });
        assert!(
            bw.lines()
                .iter()
                .any(|l| l.contains(&format!("control API on {}", self.socket.display()))),
            "the control socket is not the state directory's:\n{}",
            bw.tail(20)
        );
        bw
    }

    fn rules_text(&self) -> String {
        std::fs::read_to_string(&self.rules_file).expect("reading the rules file")
    }

    fn web_url(&self) -> String {
        format!("http://{}/", self.web)
    }

    fn db_url(&self) -> String {
        format!("http://{}/", self.db)
    }

    /// The options of the rule that keeps client from web's page.
    fn block_spec(&self) -> Vec<String> {
        format!(
            "-s {} -d {} -p tcp --dport 80 -j DROP",
            self.client, self.web
        )
        .split(' ')
        .map(str::to_string)
        .collect()
    }
}

/// A rule's options as the words of a command line.
fn words(spec: &str) -> Vec<String> {
    spec.split_whitespace().map(str::to_string).collect()
}

/// `["rules", VERB, extra…, "--", spec…]`.
fn edit_args<'a>(verb: &'a str, extra: &[&'a str], spec: &'a [String]) -> Vec<&'a str> {
    let mut a = vec!["rules", verb];
    a.extend_from_slice(extra);
    a.push("--");
    a.extend(spec.iter().map(String::as_str));
    a
}

#[test]
fn root_docker_control_rules_trace_stats_monitor_audit_policy_capture_metrics() {
    let t0 = Instant::now();
    let lab = Lab::start(t0);
    let (engine, socket) = (&lab.engine, lab.socket.as_path());
    let web_url = lab.web_url();

    // ---- First run: live rule edits, bad input, trace. ----
    let bw = lab.bridgewall(free_loopback_port(), &[]);
    println!("{} bridgewall enforcing, control API up", at(t0));
    served(
        engine,
        "client → web over the link",
        "client",
        &web_url,
        NGINX_PAGE,
    );

    // rules list --json: the file's rule, containers named beside their addresses.
    let listing = rules_list(socket);
    assert_eq!(
        Path::new(&listing.rules_file),
        lab.rules_file,
        "rules list names another rules file"
    );
    assert!(!listing.audit, "audit mode is on by itself");
    let file_row = user_rows(&listing)
        .iter()
        .find(|r| r.origin.contains("198.18.0.2"))
        .unwrap_or_else(|| panic!("the file's rule is not listed: {listing:#?}"));
    assert_eq!(file_row.target, "DROP", "{file_row:?}");
    assert_eq!(
        file_row.line,
        Some(2),
        "the file's rule is on line 2: {file_row:?}"
    );
    assert!(
        file_row.destination.contains(&lab.web) && file_row.destination.contains("(web)"),
        "the destination is web's address with its name: {file_row:?}"
    );
    let all_rows: Vec<&RuleRow> = listing.chains.iter().flat_map(|c| &c.rules).collect();
    assert!(
        all_rows
            .iter()
            .any(|r| r.source.contains(&lab.client) && r.source.contains("(client)")),
        "no rule names client beside its address (the link's rule): {listing:#?}"
    );

    // Bad input: refused with a reason, nothing changed (generation, listing, file).
    let file_before = lab.rules_text();
    let generation = listing.generation;
    let unknown_container = words(&format!("-s {} -d nosuchbox -j DROP", lab.client));
    let bogus = words("--bogus -j DROP");
    let absent = words(&format!(
        "-s {} -d {} -p udp --dport 9 -j DROP",
        lab.db, lab.web
    ));
    let refusals: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (edit_args("add", &[], &bogus), vec!["--bogus"]),
        (edit_args("add", &[], &unknown_container), vec!["nosuchbox"]),
        (edit_args("add", &[], &[]), vec!["no rule given"]),
        (
            edit_args("delete", &[], &absent),
            vec!["no rule in DOCKER-USER"],
        ),
        (
            vec!["rules", "delete", "--line", "999"],
            vec!["line 999", "does not exist"],
        ),
        (
            vec!["rules", "delete", "--line", "1"],
            vec!["line 1", "holds no rule"],
        ),
    ];
    for (args, words) in &refusals {
        let err = cli_fails(socket, args, words);
        println!(
            "{} refused as it should: bridgewall {}: {}",
            at(t0),
            args.join(" "),
            err.trim()
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "bridgewall {args:?}: the reason is not one line:\n{err}"
        );
    }
    let after = rules_list(socket);
    assert_eq!(
        after.generation, generation,
        "a refused edit swapped the policy"
    );
    assert_eq!(after.chains.len(), listing.chains.len());
    assert_eq!(
        user_rows(&after).len(),
        user_rows(&listing).len(),
        "a refused edit changed the user rules"
    );
    assert_eq!(
        lab.rules_text(),
        file_before,
        "a refused edit changed the rules file"
    );

    // rules add: in force at once, saved, and what trace names.
    let block = lab.block_spec();
    let add = edit_args("add", &["--json"], &block);
    let added = cli_json!(RuleEditReply, socket, &add);
    println!(
        "{} added `{}` (generation {})",
        at(t0),
        added.line,
        added.generation
    );
    assert!(added.generation > generation, "{added:?}");
    assert_eq!(Path::new(&added.rules_file), lab.rules_file);
    let wanted_line = format!("-A DOCKER-USER {}", block.join(" "));
    assert_eq!(added.line, wanted_line);
    dropped_now(
        engine,
        "client → web right after rules add",
        "client",
        &web_url,
    );
    assert!(
        lab.rules_text().lines().any(|l| l.trim() == wanted_line),
        "the added rule is not in the rules file:\n{}",
        lab.rules_text()
    );
    assert!(
        lab.rules_text().contains(FILE_RULE),
        "the file lost its rule:\n{}",
        lab.rules_text()
    );
    let trace = cli_json!(
        TraceReport,
        socket,
        &[
            "trace", "--from", "client", "--to", "web", "-p", "tcp", "--dport", "80", "--json",
        ],
    );
    assert_eq!(trace.verdict, "drop", "{trace:#?}");
    assert!(trace.agree, "{trace:#?}");
    let rule_row = trace
        .rows
        .iter()
        .find(|(k, _)| k == "rule")
        .unwrap_or_else(|| panic!("no rule row: {trace:#?}"));
    assert!(
        rule_row.1.contains(&wanted_line),
        "trace does not name the added rule: {rule_row:?}"
    );
    let err = cli_fails(
        socket,
        &[
            "trace", "--from", "nosuch", "--to", "web", "-p", "tcp", "--dport", "80",
        ],
        &["nosuch"],
    );
    println!(
        "{} trace of an unknown source refused: {}",
        at(t0),
        err.trim()
    );

    // ---- Restart: the edit was saved and is read back. ----
    let _summary = bw.stop();
    assert!(
        !socket.exists(),
        "the control socket is left behind after bridgewall stopped"
    );
    assert!(
        lab.rules_text().lines().any(|l| l.trim() == wanted_line),
        "the rules file lost the rule at stop:\n{}",
        lab.rules_text()
    );
    let metrics_port = free_loopback_port();
    let bw = lab.bridgewall(metrics_port, &[]);
    println!("{} bridgewall restarted with the same rules file", at(t0));
    let listed = cli_ok(socket, &["rules", "list"]);
    assert!(
        listed.contains(&wanted_line),
        "rules list after the restart does not show the added rule:\n{listed}"
    );
    let added_row = user_rows(&rules_list(socket))
        .iter()
        .find(|r| r.origin == wanted_line)
        .cloned()
        .expect("the added rule in the listing after the restart");
    assert_eq!(added_row.line, Some(3), "{added_row:?}");
    // The dataplane forwards (the host reaches web), but the saved rule keeps client out.
    let page = eventually("host → web after the restart", SETTLE, || {
        curl_in(&engine.netns, &web_url)
    });
    assert!(page.contains(NGINX_PAGE), "{page}");
    dropped_now(
        engine,
        "client → web after the restart (saved rule)",
        "client",
        &web_url,
    );

    let mut edits = 0u64;
    cli_ok(socket, &edit_args("delete", &[], &block));
    edits += 1;
    served(
        engine,
        "client → web after rules delete",
        "client",
        &web_url,
        NGINX_PAGE,
    );
    assert!(
        !lab.rules_text().contains(&wanted_line),
        "rules delete left the line in the file:\n{}",
        lab.rules_text()
    );

    // rules insert --position 1 of an ACCEPT opens client → db despite icc=false; delete
    // --line takes it out again.
    dropped_now(engine, "client → db (icc=false)", "client", &lab.db_url());
    let open = words(&format!(
        "-s client -d {} -p tcp --dport 80 -j ACCEPT",
        lab.db
    ));
    cli_ok(socket, &edit_args("insert", &["--position", "1"], &open));
    edits += 1;
    served(
        engine,
        "client → db after the inserted ACCEPT",
        "client",
        &lab.db_url(),
        BUSYBOX_PAGE,
    );
    let rows = rules_list(socket);
    let first = &user_rows(&rows)[0];
    assert!(
        first.target == "ACCEPT" && first.destination.contains("(db)"),
        "the inserted rule is not first: {:#?}",
        user_rows(&rows)
    );
    assert_eq!(first.line, Some(3), "the inserted rule's line: {first:?}");
    let line = first.line.expect("the inserted rule's line").to_string();
    cli_ok(socket, &["rules", "delete", "--line", &line]);
    edits += 1;
    dropped_eventually(
        engine,
        "client → db after rules delete --line",
        "client",
        &lab.db_url(),
    );
    assert_eq!(
        lab.rules_text(),
        format!("# rules of the docker_control test\n{FILE_RULE}\n"),
        "the rules file is not back to its first form"
    );

    // stats: per container by name, traffic counted.
    let s = stats(socket);
    for name in ["web", "client"] {
        let p = port(&s, name);
        assert!(
            p.rx_packets > 0 && p.tx_packets > 0 && p.rx_bytes > 0 && p.tx_bytes > 0,
            "{name}: no traffic counted: {p:?}"
        );
    }
    port(&s, "db");
    assert!(!s.audit);

    // monitor --drops: an icc=false drop (client pings db) shows as it happens.
    let mut monitor = Running::spawn(
        socket,
        &[
            "monitor",
            "--drops",
            "--container",
            "client",
            "--count",
            "1",
            "--json",
        ],
    );
    let out = monitor.finish_while(Duration::from_secs(30), || {
        engine.ping("client", &lab.db);
    });
    assert!(
        out.status.success(),
        "monitor failed: {}",
        text(&out.stderr)
    );
    let lines: Vec<MonitorLine> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("monitor line {l:?}: {e}")))
        .collect();
    let verdicts: Vec<_> = lines
        .iter()
        .filter_map(|l| match l {
            MonitorLine::Verdict(v) => Some(v),
            MonitorLine::Lost { .. } => None,
        })
        .collect();
    assert_eq!(verdicts.len(), 1, "monitor --count 1: {lines:?}");
    let v = verdicts[0];
    assert!(
        v.verdict == "drop" && v.from == "client" && v.to == "db" && !v.audit,
        "monitor: not client's drop towards db: {v:?}"
    );
    assert!(
        text(&out.stdout).contains("\"kind\":\"verdict\""),
        "{}",
        text(&out.stdout)
    );
    println!("{} monitor saw: {v:?}", at(t0));

    // audit on: what icc=false drops passes and is counted; audit off: dropped again.
    let before = port(&stats(socket), "client").audit_denied;
    let said = cli_ok(socket, &["audit", "on"]);
    assert!(said.contains("audit mode ON"), "{said}");
    assert!(
        rules_list(socket).audit,
        "rules list does not say audit mode is on"
    );
    served(
        engine,
        "client → db in audit mode",
        "client",
        &lab.db_url(),
        BUSYBOX_PAGE,
    );
    let s = stats(socket);
    assert!(s.audit, "stats does not say audit mode is on");
    assert!(
        port(&s, "client").audit_denied > before,
        "audit_denied of client did not grow ({before} → {:?})",
        port(&s, "client")
    );
    let said = cli_ok(socket, &["audit", "off"]);
    assert!(said.contains("audit mode OFF"), "{said}");
    dropped_eventually(
        engine,
        "client → db after audit off",
        "client",
        &lab.db_url(),
    );

    // policy: a corrupt module is refused in one line and nothing is loaded.
    let dir = engine.dir.join("modules");
    std::fs::create_dir_all(&dir).unwrap();
    let corrupt = dir.join("corrupt.wasm");
    std::fs::write(&corrupt, b"\0asm\x01\0\0\0\x01\xffthis is not a module").unwrap();
    let corrupt = corrupt.to_str().unwrap();
    let err = cli_fails(socket, &["policy", "load", corrupt], &["corrupt.wasm"]);
    println!("{} policy load refused: {}", at(t0), err.trim());
    assert_eq!(err.trim().lines().count(), 1, "not one line:\n{err}");
    let loaded = cli_json!(Vec<PolicyInfo>, socket, &["policy", "list", "--json"]);
    assert!(loaded.is_empty(), "a refused module is listed: {loaded:?}");
    let err = cli_fails(
        &dir.join("no.sock"),
        &["policy", "check", corrupt],
        &["corrupt.wasm"],
    );
    println!("{} policy check (offline) refused: {}", at(t0), err.trim());

    // A module that drops all TCP blocks the page; unloaded, the page is back.
    let wat = dir.join("drop-tcp.wat");
    std::fs::write(&wat, DROP_TCP_WAT).unwrap();
    let wat = wat.to_str().unwrap();
    let checked = cli_ok(&dir.join("no.sock"), &["policy", "check", wat]);
    assert!(checked.contains("valid"), "{checked}");
    let info = cli_json!(PolicyInfo, socket, &["policy", "load", wat, "--json"]);
    edits += 1;
    assert!(info.name == "drop-tcp.wat" && !info.audit, "{info:?}");
    dropped_eventually(engine, "client → web with drop-tcp.wat", "client", &web_url);
    let loaded = cli_json!(Vec<PolicyInfo>, socket, &["policy", "list", "--json"]);
    assert!(
        loaded.len() == 1 && loaded[0].name == "drop-tcp.wat" && loaded[0].decisions[1] > 0,
        "policy list: {loaded:?}"
    );
    cli_ok(socket, &["policy", "unload", "drop-tcp.wat"]);
    edits += 1;
    served(
        engine,
        "client → web after policy unload",
        "client",
        &web_url,
        NGINX_PAGE,
    );
    let loaded = cli_json!(Vec<PolicyInfo>, socket, &["policy", "list", "--json"]);
    assert!(loaded.is_empty(), "still loaded: {loaded:?}");

    // capture -w: a pcap file of web's frames while client fetches its page.
    let pcap = engine.dir.join("web.pcap");
    let pcap_arg = pcap.to_str().unwrap().to_string();
    let mut capture = Running::spawn(
        socket,
        &[
            "capture",
            "--port",
            "web",
            "-w",
            &pcap_arg,
            "--count",
            "4",
            "--timeout",
            "30",
        ],
    );
    let out = capture.finish_while(Duration::from_secs(40), || {
        engine.fetch("client", &web_url);
    });
    assert!(
        out.status.success(),
        "capture failed: {}",
        text(&out.stderr)
    );
    let frames = pcap_frames(&std::fs::read(&pcap).expect("the pcap file"));
    assert!(!frames.is_empty(), "no frames in {}", pcap.display());
    let web_ip: std::net::Ipv4Addr = lab.web.parse().unwrap();
    assert!(
        frames.iter().any(|f| tcp_port80_of(f, web_ip)),
        "no frame of web's port 80 among the {} captured",
        frames.len()
    );
    println!("{} capture wrote {} frames", at(t0), frames.len());

    // A client that is not root: refused by the socket's permissions, then by the server.
    let err = as_nobody(socket, &["stats"]);
    println!("{} uid 65534 refused by the socket: {}", at(t0), err.trim());
    assert!(
        err.contains("permission denied") && err.contains("run this as root"),
        "uid 65534 was not refused by the socket's permissions:\n{err}"
    );
    assert_eq!(mode_of(socket), 0o600, "the control socket's mode");
    let sock_dir = socket.parent().unwrap();
    let modes = [sock_dir, socket].map(|p| (p, mode_of(p)));
    chmod(sock_dir, 0o777);
    chmod(socket, 0o666);
    let err = as_nobody(socket, &["stats"]);
    for (p, m) in modes {
        chmod(p, m);
    }
    println!(
        "{} uid 65534 refused by the server (socket dir {:o}): {}",
        at(t0),
        modes[0].1,
        err.trim()
    );
    assert!(
        err.contains("uid 65534 is not root"),
        "uid 65534 was not refused by the server:\n{err}"
    );

    // Metrics, from 127.0.0.1: per-container packets, and the swaps the edits made.
    let scrape = eventually("a scrape counting every swap", SETTLE, || {
        let s = scrape_metrics(metrics_port);
        (scalar(&s, "bridgewall_policy_swaps_total", &[]) >= edits as f64).then_some(s)
    });
    for c in ["web", "client", "db"] {
        for d in ["rx", "tx"] {
            let v = scalar(
                &scrape,
                "bridgewall_container_packets_total",
                &[("container", c), ("direction", d)],
            );
            assert!(v > 0.0, "bridgewall_container_packets_total {c} {d} = {v}");
        }
    }
    assert_eq!(scalar(&scrape, "bridgewall_audit_mode", &[]), 0.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "bridgewall_rule_decisions_total"
                && matches!(s.value, prometheus_parse::Value::Counter(v) if v > 0.0)),
        "no rule decided anything per bridgewall_rule_decisions_total"
    );
    println!(
        "{} metrics: {} swaps for {edits} edits",
        at(t0),
        scalar(&scrape, "bridgewall_policy_swaps_total", &[])
    );
    let _ = bw.stop();

    // ---- Third run: `run --audit --audit-module FILE`. ----
    let metrics_port = free_loopback_port();
    let bw = lab.bridgewall(
        metrics_port,
        &[
            OsStr::new("--audit"),
            OsStr::new("--audit-module"),
            OsStr::new(wat),
        ],
    );
    println!(
        "{} bridgewall restarted with --audit --audit-module",
        at(t0)
    );
    assert!(
        rules_list(socket).audit,
        "run --audit: rules list says audit is off"
    );
    let loaded = cli_json!(Vec<PolicyInfo>, socket, &["policy", "list", "--json"]);
    assert!(
        loaded.len() == 1 && loaded[0].name == "drop-tcp.wat" && loaded[0].audit,
        "run --audit-module: policy list {loaded:?}"
    );
    let before = port(&stats(socket), "client").audit_denied;
    // The audit module denies all TCP and icc=false denies client → db: both forwarded.
    served(
        engine,
        "client → web under the audit module",
        "client",
        &web_url,
        NGINX_PAGE,
    );
    served(
        engine,
        "client → db in audit mode (run --audit)",
        "client",
        &lab.db_url(),
        BUSYBOX_PAGE,
    );
    let s = stats(socket);
    assert!(s.audit, "run --audit: stats says audit is off");
    assert!(
        port(&s, "client").audit_denied > before,
        "run --audit: client's audit_denied did not grow: {:?}",
        port(&s, "client")
    );
    let module = s
        .modules
        .iter()
        .find(|m| m.name == "drop-tcp.wat")
        .expect("the audit module in stats");
    assert!(
        module.audit_denied > 0,
        "the audit module counted no denial: {module:?}"
    );
    eventually("a scrape in audit mode", SETTLE, || {
        let s = scrape_metrics(metrics_port);
        (scalar(&s, "bridgewall_audit_mode", &[]) == 1.0).then_some(())
    });
    // Audit off: icc=false is enforced again; the module stays audit-only.
    cli_ok(socket, &["audit", "off"]);
    dropped_eventually(
        engine,
        "client → db after audit off (run --audit)",
        "client",
        &lab.db_url(),
    );
    served(
        engine,
        "client → web, the module still audit-only",
        "client",
        &web_url,
        NGINX_PAGE,
    );
    eventually("a scrape out of audit mode", SETTLE, || {
        let s = scrape_metrics(metrics_port);
        (scalar(&s, "bridgewall_audit_mode", &[]) == 0.0).then_some(())
    });
    let _ = bw.stop();
    println!("{} done", at(t0));
}

/// The permission bits of `path`.
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// `chmod MODE PATH`.
fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// A client command run as uid/gid 65534 (nobody), which must fail; its error.
fn as_nobody(socket: &Path, args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            BIN,
            "--socket",
        ])
        .arg(socket)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("running setpriv");
    assert!(
        !out.status.success(),
        "bridgewall {args:?} as uid 65534 succeeded:\n{}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

/// The frames of a pcap file (classic format, little endian, microseconds), checked record
/// by record.
fn pcap_frames(bytes: &[u8]) -> Vec<Vec<u8>> {
    assert!(bytes.len() >= 24, "a pcap file of {} bytes", bytes.len());
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_eq!(u32_at(0), 0xa1b2_c3d4, "not the pcap magic (little endian)");
    assert_eq!(u32_at(20), 1, "link type is not Ethernet");
    let snaplen = u32_at(16) as usize;
    let mut frames = Vec::new();
    let mut at = 24;
    while at < bytes.len() {
        assert!(at + 16 <= bytes.len(), "a truncated record header at {at}");
        let incl = u32_at(at + 8) as usize;
        let orig = u32_at(at + 12) as usize;
        assert!(
            incl <= orig && incl <= snaplen && at + 16 + incl <= bytes.len(),
            "a bad record at {at}: incl {incl}, orig {orig}, snaplen {snaplen}"
        );
        frames.push(bytes[at + 16..at + 16 + incl].to_vec());
        at += 16 + incl;
    }
    frames
}

/// Whether `frame` is TCP to or from `ip`:80.
fn tcp_port80_of(frame: &[u8], ip: std::net::Ipv4Addr) -> bool {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return false;
    };
    let (Some(NetSlice::Ipv4(v4)), Some(TransportSlice::Tcp(t))) = (&p.net, &p.transport) else {
        return false;
    };
    let h = v4.header();
    (h.destination_addr() == ip && t.destination_port() == 80)
        || (h.source_addr() == ip && t.source_port() == 80)
}

/// `/metrics` of 127.0.0.1:`port`, parsed.
fn scrape_metrics(port: u16) -> prometheus_parse::Scrape {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "scraping 127.0.0.1:{port}: {}",
        text(&out.stderr)
    );
    let body = text(&out.stdout);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("the scrape does not parse: {e}\n{body}"))
}

/// The value of the one counter or gauge sample `name` whose labels include `pairs`.
fn scalar(scrape: &prometheus_parse::Scrape, name: &str, pairs: &[(&str, &str)]) -> f64 {
    let found: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && pairs.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "{name} {pairs:?}: {found:?}");
    match found[0].value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: not a number: {other:?}"),
    }
}
