//! Issue 15's regression test: `bridgewall run`, with default options, keeps switching and
//! filtering a real Docker engine's bridge (Debian's docker.io 20.10, icc=false, in a network
//! namespace of its own) when 60 containers start while it runs, and again after 30 of them
//! restart. The dataplane used to stop moving frames past ~15 containers, when the sockets'
//! fill rings had taken the whole shared UMEM.
//!
//! After the starts, and again after the restarts, it proves that:
//! - every container is attached (`bridgewall run` reports it, and only the gateway pair is
//!   left on docker0);
//! - three `--link`s — made by the second, the 31st and the last container started — open the
//!   linked container's exposed port (80, 7000, 9000);
//! - unlinked pairs, early and late, are dropped (icc=false), including a linking container
//!   towards a container it is not linked to;
//! - every one of the 60 containers pings the gateway;
//! - an outside host (a namespace on a veth to the engine's namespace) fetches `web`'s
//!   published port 8080.
//!
//! Finally SIGINT stops bridgewall cleanly and all 60 veths are back on docker0. Every probe
//! runs inside a container or the outside host's namespace; the engine, the namespaces and
//! bridgewall are removed by guards, also when the test fails. Needs root; ~1 min.
mod support;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::bridgewall::{Bridgewall, at};
use support::docker::DockerEngine;

/// Containers started while bridgewall runs.
const COUNT: usize = 60;
/// How many of them restart.
const RESTARTS: usize = COUNT / 2;
/// The container that publishes `-p 8080:80`.
const WEB: usize = COUNT * 2 / 3;
/// `docker run -d`/`docker restart` commands in flight at once (the engine serialises part
/// of the work; more than a few only queue up on 2 cores).
const PARALLEL_DOCKER: usize = 4;
/// `docker exec` probes in flight at once.
const PARALLEL_PROBES: usize = 6;
/// How long the checks that must pass may retry, together (the policy can trail an attach
/// by a moment); past it each gets one last attempt.
const SETTLE: Duration = Duration::from_secs(10);
const PAGE: &str = "hello from busybox httpd";

/// `parent --link child:alias`; the child serves its page on `port`, which it exposes.
struct Link {
    parent: usize,
    child: usize,
    alias: &'static str,
    port: u16,
}

/// Links made by the first, the middle and the last containers started.
const LINKS: [Link; 3] = [
    Link {
        parent: 1,
        child: 0,
        alias: "first",
        port: 80,
    },
    Link {
        parent: COUNT / 2,
        child: COUNT / 2 - 1,
        alias: "middle",
        port: 7000,
    },
    Link {
        parent: COUNT - 1,
        child: COUNT - 2,
        alias: "last",
        port: 9000,
    },
];

/// Unlinked (client, server, port) pairs that icc=false keeps apart: early, late, and a
/// linking container towards a service it has no link to.
const BLOCKED: [(usize, usize, u16); 3] = [
    (2, 0, 80),
    (COUNT - 3, COUNT - 2, 9000),
    (COUNT - 1, COUNT / 2 - 1, 7000),
];

fn name(i: usize) -> String {
    if i == WEB {
        "web".to_string()
    } else {
        format!("c{i:02}")
    }
}

/// The link that container `i` makes, if any.
fn link_of(i: usize) -> Option<&'static Link> {
    LINKS.iter().find(|l| l.parent == i)
}

/// `docker run` arguments after `run -d --init --name NAME`: options, image, command.
fn run_args(i: usize) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    if i == WEB {
        args.extend(["-p".into(), "8080:80".into()]);
    }
    if let Some(l) = link_of(i) {
        args.extend(["--link".into(), format!("{}:{}", name(l.child), l.alias)]);
    }
    let service = LINKS.iter().find(|l| l.child == i && l.port != 80);
    if let Some(l) = service {
        args.extend(["--expose".into(), l.port.to_string()]);
    }
    args.push("lab/busybox".into());
    if let Some(l) = service {
        let port = l.port.to_string();
        args.extend(["httpd", "-f", "-p", port.as_str(), "-h", "/www"].map(String::from));
    }
    args
}

/// The containers that restart: every linked and linking one and `web`, then every other
/// container from the start of the list, up to [`RESTARTS`]; in start order, so a link's
/// child restarts before its parent.
fn restart_set() -> Vec<usize> {
    let mut set: BTreeSet<usize> = LINKS.iter().flat_map(|l| [l.parent, l.child]).collect();
    set.insert(WEB);
    for i in (0..COUNT).step_by(2) {
        if set.len() == RESTARTS {
            break;
        }
        set.insert(i);
    }
    assert_eq!(set.len(), RESTARTS, "restart set {set:?}");
    set.into_iter().collect()
}

/// Runs `job(i)` for every `i` in `0..n` on `k` threads, taken in index order; job `i` waits
/// until job `after(i)` (an earlier index) has succeeded, and is skipped if it failed.
/// Returns the errors.
fn run_ordered(
    n: usize,
    k: usize,
    after: impl Fn(usize) -> Option<usize> + Sync,
    job: impl Fn(usize) -> Result<(), String> + Sync,
) -> Vec<String> {
    const PENDING: u8 = 0;
    const OK: u8 = 1;
    const FAILED: u8 = 2;
    let state: Vec<AtomicU8> = (0..n).map(|_| AtomicU8::new(PENDING)).collect();
    let next = AtomicUsize::new(0);
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..k.min(n) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        break;
                    }
                    // The dependency was taken earlier by some thread: no deadlock.
                    let result = match after(i) {
                        None => job(i),
                        Some(d) => loop {
                            match state[d].load(Ordering::SeqCst) {
                                OK => break job(i),
                                FAILED => break Err(format!("job {i} skipped: job {d} failed")),
                                _ => std::thread::sleep(Duration::from_millis(20)),
                            }
                        },
                    };
                    let done = if result.is_ok() { OK } else { FAILED };
                    state[i].store(done, Ordering::SeqCst);
                    if let Err(e) = result {
                        errors.lock().expect("error list lock").push(e);
                    }
                }
            });
        }
    });
    errors.into_inner().expect("error list lock")
}

/// `docker ARGS`, as a Result carrying stderr.
fn docker(engine: &DockerEngine, args: &[&str]) -> Result<String, String> {
    let out = engine.docker(args);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Tries `f` until it returns true or `deadline` has passed (at least once).
fn until(deadline: Instant, mut f: impl FnMut() -> bool) -> bool {
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `curl` from the outside host's namespace.
fn curl_in(netns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "curl", "-sS", "-m", "3", url])
        .output()
        .expect("running curl in the outside namespace");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Container name → address, from one `docker inspect` (addresses can change on restart).
fn addresses(engine: &DockerEngine) -> HashMap<String, String> {
    let names: Vec<String> = (0..COUNT).map(name).collect();
    let mut args = vec!["inspect", "-f", "{{.Name}} {{.NetworkSettings.IPAddress}}"];
    args.extend(names.iter().map(String::as_str));
    engine
        .docker_ok(&args)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, ip)| (n.trim_start_matches('/').to_string(), ip.to_string()))
        .collect()
}

/// Every check of the test, in parallel; returns what failed.
fn check_everything(engine: &DockerEngine, phase: &str) -> Vec<String> {
    let ips = addresses(engine);
    assert_eq!(ips.len(), COUNT, "{phase}: addresses {ips:?}");
    let gateway = engine.inspect(&name(0), "{{.NetworkSettings.Gateway}}");
    assert!(!gateway.is_empty(), "{phase}: no gateway address");
    let deadline = Instant::now() + SETTLE;
    let failures = Mutex::new(Vec::new());
    let fail = |msg: String| failures.lock().expect("failure list lock").push(msg);
    std::thread::scope(|s| {
        // The links: the parent fetches the child's page by alias, on the exposed port.
        for l in &LINKS {
            let fail = &fail;
            s.spawn(move || {
                let url = format!("http://{}:{}/", l.alias, l.port);
                let ok = until(deadline, || {
                    engine
                        .fetch(&name(l.parent), &url)
                        .is_some_and(|b| b.contains(PAGE))
                });
                if !ok {
                    fail(format!(
                        "link {} -> {} ({url}) did not answer",
                        name(l.parent),
                        name(l.child)
                    ));
                }
            });
        }
        // icc=false: unlinked pairs time out (dropped: neither refused nor answered).
        for (client, server, port) in BLOCKED {
            let (fail, ips) = (&fail, &ips);
            s.spawn(move || {
                let url = format!("http://{}:{port}/", ips[&name(server)]);
                let t = Instant::now();
                let got = engine.fetch(&name(client), &url);
                if got.is_some() || t.elapsed() < Duration::from_millis(2500) {
                    fail(format!(
                        "{} -> {} ({url}) should be dropped (icc=false): got {got:?} after {:?}",
                        name(client),
                        name(server),
                        t.elapsed()
                    ));
                }
            });
        }
        // The published port, from the outside host.
        let fail_ref = &fail;
        s.spawn(move || {
            let ok = until(deadline, || {
                curl_in(&engine.outside_netns, "http://198.18.0.1:8080/")
                    .is_some_and(|b| b.contains(PAGE))
            });
            if !ok {
                fail_ref("outside host -> 198.18.0.1:8080 (web's published port) failed".into());
            }
        });
        // Every container pings the gateway.
        let unreachable = run_ordered(
            COUNT,
            PARALLEL_PROBES,
            |_| None,
            |i| {
                if until(deadline, || engine.ping(&name(i), &gateway)) {
                    Ok(())
                } else {
                    Err(name(i))
                }
            },
        );
        if !unreachable.is_empty() {
            let mut unreachable = unreachable;
            unreachable.sort();
            fail(format!(
                "{} of {COUNT} containers cannot ping the gateway {gateway}: {}",
                unreachable.len(),
                unreachable.join(" ")
            ));
        }
    });
    failures.into_inner().expect("failure list lock")
}

/// Panics with every failed check of `phase`, bridgewall's last lines before the stop and
/// its counters (it is stopped first, so they are final).
fn assert_all_passed(phase: &str, failures: &[String], bw: &mut Bridgewall) {
    if failures.is_empty() {
        return;
    }
    let tail = bw.tail(20);
    let status = bw.interrupt();
    panic!(
        "{phase}: {} check(s) failed:\n  {}\nbridgewall's last lines:\n{tail}\n\
         bridgewall stopped ({status:?}), its summary:\n{}",
        failures.len(),
        failures.join("\n  "),
        bw.summary()
    );
}

#[test]
fn root_docker_scale_sixty_containers_links_icc_and_restarts() {
    let t0 = Instant::now();
    assert!(
        LINKS.iter().all(|l| l.parent != WEB && l.child != WEB),
        "web serves its published port 80 and takes no part in a link"
    );
    let engine = DockerEngine::start(false);
    println!("{} engine up (icc=false), lab/busybox imported", at(t0));
    let mut bw = Bridgewall::start(&engine);
    println!("{} bridgewall run enforcing an empty docker0", at(t0));

    // 1. 60 containers start while bridgewall runs, a few at a time; a linking container
    //    waits for the one it links to (Docker refuses a link to a container not running).
    let names: Vec<String> = (0..COUNT).map(name).collect();
    let errors = run_ordered(
        COUNT,
        PARALLEL_DOCKER,
        |i| link_of(i).map(|l| l.child),
        |i| {
            let n = name(i);
            let extra = run_args(i);
            let mut args = vec!["run", "-d", "--init", "--name", &n];
            args.extend(extra.iter().map(String::as_str));
            docker(&engine, &args).map(|_| ())
        },
    );
    assert!(errors.is_empty(), "docker run failed: {errors:#?}");
    println!("{} {COUNT} containers started", at(t0));
    bw.wait_attached(&engine, &names);
    println!("{} all {COUNT} attached by bridgewall", at(t0));
    let failures = check_everything(&engine, "after the starts");
    assert_all_passed("after the starts", &failures, &mut bw);
    println!("{} checks passed after the starts", at(t0));

    // 2. 30 of them restart (the linked pairs and web among them): new veths, maybe new
    //    addresses. A link's parent restarts once its child is back.
    let restart = restart_set();
    let before = bw.attach_counts();
    let position: HashMap<usize, usize> =
        restart.iter().enumerate().map(|(p, &i)| (i, p)).collect();
    let errors = run_ordered(
        restart.len(),
        PARALLEL_DOCKER,
        |p| link_of(restart[p]).and_then(|l| position.get(&l.child).copied()),
        |p| docker(&engine, &["restart", "-t", "2", &name(restart[p])]).map(|_| ()),
    );
    assert!(errors.is_empty(), "docker restart failed: {errors:#?}");
    let restarted: Vec<String> = restart.iter().map(|&i| name(i)).collect();
    println!("{} {} containers restarted", at(t0), restarted.len());
    bw.wait_reattached(&engine, &restarted, &before);
    println!("{} the restarted containers attached again", at(t0));
    let failures = check_everything(&engine, "after the restarts");
    assert_all_passed("after the restarts", &failures, &mut bw);
    println!("{} checks passed after the restarts", at(t0));

    // 3. SIGINT: bridgewall exits cleanly and gives all 60 veths back to docker0.
    let out = bw.stop();
    let back = engine
        .bridge_ports("docker0")
        .iter()
        .filter(|p| p.starts_with("veth"))
        .count();
    assert_eq!(back, COUNT, "veths back on docker0 after SIGINT:\n{out}");
    println!("{out}");
    println!(
        "{} bridgewall stopped, {back} veths back on docker0",
        at(t0)
    );
}
