//! `bridgewall run` as a child process against a real [`DockerEngine`], for the root Docker
//! tests (`docker_scale`, `docker_fragments`, `docker_hairpin`), and the clock of their
//! progress lines.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::docker::DockerEngine;

/// Seconds since `t0`, for the progress lines.
pub(crate) fn at(t0: Instant) -> String {
    format!("[{:6.1}s]", t0.elapsed().as_secs_f64())
}

/// `bridgewall run` on the engine's docker0 as a child process, its stdout and stderr
/// collected line by line. SIGINT on drop (SIGKILL if it does not stop), so a failing test
/// never leaves it running.
pub(crate) struct Bridgewall {
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Bridgewall {
    /// Starts `bridgewall run` with default options (its state file under the engine's
    /// directory) and waits until it enforces the bridge. For a docker0 whose containers
    /// start afterwards: see [`Bridgewall::wait_attached`].
    pub(crate) fn start(engine: &DockerEngine) -> Bridgewall {
        let mut bw = Self::spawn(engine);
        bw.wait_until(
            "bridgewall enforcing docker0",
            Duration::from_secs(30),
            |b| {
                b.lines()
                    .iter()
                    .any(|l| l.contains("bridgewall is enforcing"))
            },
        );
        bw
    }

    /// Starts `bridgewall run` like [`Bridgewall::start`] on a docker0 where `containers`
    /// containers already run, and waits until it enforces the bridge with every one of them
    /// taken over: its "enforcing" line counts them ("(N container interfaces") and no container's veth
    /// is left on docker0. Enforcing alone is not enough there: the takeover of the running
    /// containers may still be under way.
    pub(crate) fn start_taking_over(engine: &DockerEngine, containers: usize) -> Bridgewall {
        Self::start_taking_over_with(engine, containers, &[])
    }

    /// Like [`Bridgewall::start_taking_over`], with further arguments for `bridgewall run`
    /// after the default ones (e.g. `--rules FILE`).
    pub(crate) fn start_taking_over_with(
        engine: &DockerEngine,
        containers: usize,
        extra: &[&std::ffi::OsStr],
    ) -> Bridgewall {
        let mut bw = Self::spawn_with(engine, extra);
        let enforcing = format!("({containers} container interfaces");
        bw.wait_until(
            "bridgewall enforcing docker0 with the containers taken over",
            Duration::from_secs(30),
            |b| {
                b.lines()
                    .iter()
                    .any(|l| l.contains("bridgewall is enforcing") && l.contains(&enforcing))
                    && no_veth_on_docker0(engine)
            },
        );
        bw
    }

    /// The child process, with a thread per stream collecting its lines (stderr's prefixed
    /// "stderr: ").
    fn spawn(engine: &DockerEngine) -> Bridgewall {
        Self::spawn_with(engine, &[])
    }

    /// [`Bridgewall::spawn`] with further arguments for `bridgewall run`.
    fn spawn_with(engine: &DockerEngine, extra: &[&std::ffi::OsStr]) -> Bridgewall {
        // Live rule edits are saved to the rules file; without --rules that is the host's
        // /var/lib/bridgewall/user.rules, which every later run would read back. A test's
        // instance keeps its rules in the engine's directory.
        let mut rules = Vec::new();
        if !extra.iter().any(|a| *a == "--rules") {
            let file = engine.dir.join("user.rules");
            if !file.exists() {
                std::fs::write(&file, "").expect("an empty rules file");
            }
            rules.push(std::ffi::OsString::from("--rules"));
            rules.push(file.into_os_string());
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
            .args(["run", "--docker-host", &engine.host()])
            .args(["--netns", &engine.netns, "--state-dir"])
            .arg(engine.dir.join("bridgewall-state"))
            .args(&rules)
            .args(extra)
            .env("NO_COLOR", "1")
            // An error's cause, not a backtrace, should end the log tail a failure prints.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bridgewall run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("bridgewall's stdout");
        let stderr = child.stderr.take().expect("bridgewall's stderr");
        let readers = vec![
            Self::collect(stdout, "", &log),
            Self::collect(stderr, "stderr: ", &log),
        ];
        Bridgewall {
            child: Some(child),
            log,
            readers,
        }
    }

    fn collect(
        stream: impl Read + Send + 'static,
        prefix: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
    ) -> JoinHandle<()> {
        let log = Arc::clone(log);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                log.lock()
                    .expect("bridgewall log lock")
                    .push(format!("{prefix}{line}"));
            }
        })
    }

    /// Every line it printed so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.log.lock().expect("bridgewall log lock").clone()
    }

    /// The last `n` lines it printed, for failure messages.
    pub(crate) fn tail(&self, n: usize) -> String {
        let lines = self.lines();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many times each container was reported attached ("… attached: [a, b], …").
    pub(crate) fn attach_counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for line in self.lines() {
            let Some(rest) = line.split("attached: [").nth(1) else {
                continue;
            };
            let list = rest.split(']').next().unwrap_or("");
            for n in list.split(", ").filter(|n| !n.is_empty()) {
                *counts.entry(n.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Polls `done` until it holds; panics with the log's tail after `timeout` or if
    /// bridgewall exits.
    pub(crate) fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Self) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().expect("polling bridgewall"))
            {
                self.child = None;
                // Let the readers catch its last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "bridgewall exited ({status}) while waiting for {what}:\n{}",
                    self.tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {timeout:?}; bridgewall's last lines:\n{}",
                self.tail(40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every container in `names` has been reported attached (at least once)
    /// and docker0 keeps only the gateway pair.
    pub(crate) fn wait_attached(&mut self, engine: &DockerEngine, names: &[impl AsRef<str>]) {
        let list: Vec<&str> = names.iter().map(AsRef::as_ref).collect();
        let what = format!("{list:?} attached");
        self.wait_attached_beyond(engine, &what, names, &HashMap::new());
    }

    /// Waits until every container in `names` has been reported attached more often than
    /// in `before` (an [`Bridgewall::attach_counts`] from before they restarted: a restart
    /// attaches a container again, with a new veth) and docker0 keeps only the gateway pair.
    pub(crate) fn wait_reattached(
        &mut self,
        engine: &DockerEngine,
        names: &[impl AsRef<str>],
        before: &HashMap<String, usize>,
    ) {
        let what = format!("{} containers attached again", names.len());
        self.wait_attached_beyond(engine, &what, names, before);
    }

    fn wait_attached_beyond(
        &mut self,
        engine: &DockerEngine,
        what: &str,
        names: &[impl AsRef<str>],
        before: &HashMap<String, usize>,
    ) {
        let seen = |counts: &HashMap<String, usize>, n: &str| counts.get(n).copied().unwrap_or(0);
        self.wait_until(what, Duration::from_secs(30), |b| {
            let counts = b.attach_counts();
            names
                .iter()
                .all(|n| seen(&counts, n.as_ref()) > seen(before, n.as_ref()))
                && no_veth_on_docker0(engine)
        });
    }

    /// The process id of the running child (None once it stopped or was killed).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The control socket of an instance started by [`Bridgewall::start`] and friends on
    /// `engine` (`bridgewall.sock` in the state directory they pass).
    pub(crate) fn socket(engine: &DockerEngine) -> std::path::PathBuf {
        engine.dir.join("bridgewall-state").join("bridgewall.sock")
    }

    /// Whether the child still runs.
    pub(crate) fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `kill -9` (SIGKILL sent directly), reaped, and the readers joined; panics if it had
    /// already exited by itself, with its last lines.
    pub(crate) fn kill9(&mut self) {
        let mut child = self.child.take().expect("bridgewall runs");
        if let Ok(Some(status)) = child.try_wait() {
            for r in self.readers.drain(..) {
                let _ = r.join();
            }
            panic!(
                "bridgewall had exited ({status}) before kill -9:\n{}",
                self.tail(40)
            );
        }
        child.kill().expect("kill -9 bridgewall");
        let status = child.wait().expect("reaping bridgewall");
        assert!(!status.success(), "bridgewall survived kill -9: {status}");
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    /// SIGINT and wait (SIGKILL after 30 s), then join the readers so [`Bridgewall::lines`]
    /// holds everything it printed; its exit status, if it exited by itself (None also when
    /// it was no longer running).
    pub(crate) fn interrupt(&mut self) -> Option<ExitStatus> {
        let child = self.child.take()?;
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("sending SIGINT to bridgewall");
        let status = wait_or_kill(child, Duration::from_secs(30));
        for r in self.readers.drain(..) {
            r.join().expect("bridgewall log reader");
        }
        status
    }

    /// What it printed from "stopping" on: the counters per port, rule and drop reason
    /// (final once [`Bridgewall::interrupt`] returned).
    pub(crate) fn summary(&self) -> String {
        let lines = self.lines();
        let from = lines
            .iter()
            .position(|l| l.starts_with("stopping"))
            .unwrap_or(lines.len());
        lines[from..].join("\n")
    }

    /// SIGINT, wait, and return its summary; panics with everything it printed if it does
    /// not exit cleanly.
    pub(crate) fn stop(mut self) -> String {
        let status = self.interrupt();
        assert!(
            status.is_some_and(|s| s.success()),
            "bridgewall run did not stop cleanly ({status:?}):\n{}",
            self.lines().join("\n")
        );
        self.summary()
    }
}

impl Drop for Bridgewall {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = wait_or_kill(child, Duration::from_secs(30));
        }
    }
}

/// Only the gateway pair is left on the engine's docker0: every container's veth is taken
/// over.
fn no_veth_on_docker0(engine: &DockerEngine) -> bool {
    engine
        .bridge_ports("docker0")
        .iter()
        .all(|p| !p.starts_with("veth"))
}

/// Waits up to `timeout` for `child` to exit, then kills it; its status if it exited.
fn wait_or_kill(mut child: Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
