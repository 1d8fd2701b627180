//! Issue 17's real-engine test: published ports reached *from the bridge itself* on an engine
//! with `"userland-proxy": false` (Debian's docker.io 20.10, in a network namespace of its
//! own), where the kernel's DNAT alone serves them and sends a container's connection to the
//! host's address back onto the bridge.
//!
//! `web` publishes `-p 8080:80` (busybox httpd) and `-p 5353:5000/udp` (a UDP echo); `cl` is a
//! plain container. Each case runs over TCP and UDP:
//!
//! | # | connection | icc=true | icc=false |
//! |---|---|---|---|
//! | 1 | `cl` → gateway:8080 (DNAT to web, source kept) | answered; web sees `cl` | dropped before web |
//! | 2 | `web` → gateway:8080, its own port (DNAT + MASQUERADE) | answered; web sees the gateway | dropped before web |
//! | 4 | the host → 127.0.0.1:8080 (`route_localnet`, DNAT + MASQUERADE) | answered; web sees the gateway | the same |
//!
//! (Row 3 of the issue is row 1 with icc=false. Row 2 with icc=false is what the engine does:
//! its `-i docker0 -o docker0 -j DROP` drops the hairpinned packet too.)
//!
//! Every case runs three times: on the **kernel path** first (no bridgewall: this must match
//! the table, or the engine is not the one the issue describes), then with **`bridgewall
//! run`** on docker0 (the containers taken over), then on the kernel path again **after
//! bridgewall stopped** and gave the ports back. bridgewall must give exactly the kernel's
//! results: "answered" means the reply came from the address the client sent to (the host
//! un-NATed it) and web logged the expected source; "dropped" means the client timed out (no
//! refusal) and web never saw the request. A failure names the phase, the case, what web
//! logged, docker0's ports with their hairpin flags, the engine's conntrack entries for the
//! published ports (when `conntrack` is installed) and bridgewall's final counters.
//!
//! busybox (Debian's busybox-static, the `lab/busybox` image) cannot listen on UDP (its `nc`
//! has no `-u`, and it has no `udpsvd`), so the test compiles a small static helper, `udpx`
//! (C, in `support::udp_helper`, `cc -static`), bind-mounted into the containers and run as
//! is in the engine's namespace for the host's probe. Its UDP probe here is `udpx
//! probe-unconnected`: a reply from an address other than the one the client sent to (one the
//! host did not un-NAT) is reported as such, where a connected socket would never see it.
//! Every probe runs inside a container or the engine's namespace ("the host"); the engines,
//! namespaces and bridgewall are removed by guards, also when the test fails. Needs root; ~1
//! min per engine (two engines, in parallel).
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::bridgewall::{Bridgewall, at};
use support::docker::DockerEngine;
use support::udp_helper::{self, IN_CONTAINER as UDPX};

/// The page busybox httpd serves.
const PAGE: &str = "hello from busybox httpd";
/// `-p 8080:80`: the host port of web's page.
const TCP_HOST_PORT: &str = "8080";
/// `-p 5353:5000/udp`: the host port of web's UDP echo.
const UDP_HOST_PORT: &str = "5353";
/// The echo's port inside web.
const UDP_PORT: &str = "5000";
/// How long a UDP probe waits for its echo, in milliseconds (busybox wget gets `timeout 3`).
const REPLY_WAIT_MS: &str = "3000";
/// A UDP probe's datagram, in bytes: one, well below the MTU (unfragmented).
const UDP_SIZE: &str = "100";
/// A TCP attempt that fails faster than this was refused or reset, not dropped.
const DROPPED_AFTER: Duration = Duration::from_millis(2500);
/// How long a case that must be answered may retry (the policy can trail the takeover).
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// Where a probe runs.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// `docker exec NAME …`, towards the gateway's address.
    Container(&'static str),
    /// The engine's namespace (the Docker host), towards 127.0.0.1.
    Host,
}

/// The address web should see a case's connections come from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// `cl`'s own address: DNAT alone.
    Cl,
    /// The bridge's address: DNAT and MASQUERADE.
    Gateway,
}

/// What a case must do.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The reply comes back from the address the client sent to; web saw `Source`.
    Answered(Source),
    /// The client times out and web never sees the request.
    Dropped,
}

/// One row of the table, for one protocol.
#[derive(Clone, Copy, Debug)]
struct Case {
    row: u8,
    client: Client,
    proto: Proto,
    expect: Expect,
}

impl Case {
    fn label(&self) -> String {
        let (from, to) = match self.client {
            Client::Container(c) => (c.to_string(), "gateway"),
            Client::Host => ("the host".to_string(), "127.0.0.1"),
        };
        let port = match self.proto {
            Proto::Tcp => TCP_HOST_PORT.to_string(),
            Proto::Udp => format!("{UDP_HOST_PORT}/udp"),
        };
        format!("row {} ({from} -> {to}:{port})", self.row)
    }
}

/// The cases for an engine with `icc`, as the kernel path serves them (measured on Docker
/// 20.10.24 with `"userland-proxy": false`).
fn cases(icc: bool) -> Vec<Case> {
    let mut v = Vec::new();
    for proto in [Proto::Tcp, Proto::Udp] {
        let (cl, web) = if icc {
            (
                Expect::Answered(Source::Cl),
                Expect::Answered(Source::Gateway),
            )
        } else {
            (Expect::Dropped, Expect::Dropped)
        };
        v.push(Case {
            row: if icc { 1 } else { 3 },
            client: Client::Container("cl"),
            proto,
            expect: cl,
        });
        v.push(Case {
            row: 2,
            client: Client::Container("web"),
            proto,
            expect: web,
        });
        v.push(Case {
            row: 4,
            client: Client::Host,
            proto,
            expect: Expect::Answered(Source::Gateway),
        });
    }
    v
}

/// The test's engine and what the probes need to know about it.
struct Setup {
    engine: DockerEngine,
    udpx: PathBuf,
    gateway: String,
    cl: String,
}

/// What one attempt gave.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Reply {
    /// Answered from the address the client sent to.
    Answered,
    /// Nothing came back within the timeout.
    Timeout,
    /// Anything else: refused, reset, a reply from the wrong address, an error.
    Other(String),
}

/// One attempt: its reply, and the sources web logged while it ran.
#[derive(Clone, Debug)]
struct Attempt {
    reply: Reply,
    seen_by_web: Vec<String>,
    took: Duration,
}

/// Sources of the requests web logged for `proto`, oldest first: httpd's `-v` lines on its
/// stderr ("[::ffff:172.17.0.3]:42334: response:200"), `udpx serve`'s on its stdout ("from
/// 172.17.0.3 100 echoed 100").
fn web_sources(engine: &DockerEngine, proto: Proto) -> Vec<String> {
    let out = engine.docker(&["logs", "web"]);
    assert!(out.status.success(), "docker logs web: {out:?}");
    let stream = match proto {
        Proto::Tcp => &out.stderr,
        Proto::Udp => &out.stdout,
    };
    String::from_utf8_lossy(stream)
        .lines()
        .filter_map(|l| match proto {
            Proto::Tcp => {
                let (addr, _) = l.strip_prefix('[')?.split_once(']')?;
                Some(addr.trim_start_matches("::ffff:").to_string())
            }
            Proto::Udp => {
                let addr = l.strip_prefix("from ")?.split_whitespace().next()?;
                Some(addr.to_string())
            }
        })
        .collect()
}

/// Runs `args` in the engine's namespace (the Docker host).
fn in_engine_ns(engine: &DockerEngine, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", &engine.netns])
        .args(args)
        .output()
        .expect("running a probe in the engine's namespace (ip netns exec)")
}

/// One attempt of `case`.
fn attempt(s: &Setup, case: &Case) -> Attempt {
    let target = match case.client {
        Client::Container(_) => s.gateway.as_str(),
        Client::Host => "127.0.0.1",
    };
    let before = web_sources(&s.engine, case.proto).len();
    let t = Instant::now();
    let reply = match case.proto {
        Proto::Tcp => {
            let url = format!("http://{target}:{TCP_HOST_PORT}/");
            let out = match case.client {
                Client::Container(c) => s
                    .engine
                    .docker(&["exec", c, "timeout", "3", "wget", "-qO-", &url]),
                Client::Host => {
                    let out = in_engine_ns(
                        &s.engine,
                        &["busybox", "timeout", "3", "busybox", "wget", "-qO-", &url],
                    );
                    let err = String::from_utf8_lossy(&out.stderr);
                    assert!(
                        !err.contains("exec of") && !err.contains("applet not found"),
                        "busybox wget could not run in the engine's namespace (install \
                         busybox-static): {err}"
                    );
                    out
                }
            };
            let took = t.elapsed();
            let body = String::from_utf8_lossy(&out.stdout);
            if out.status.success() && body.contains(PAGE) {
                Reply::Answered
            } else if out.status.success() {
                Reply::Other(format!("answered with {body:?}"))
            } else if took >= DROPPED_AFTER {
                Reply::Timeout
            } else {
                Reply::Other(format!(
                    "failed fast ({took:.1?}, refused or reset): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        }
        Proto::Udp => {
            let args = [
                "probe-unconnected",
                target,
                UDP_HOST_PORT,
                REPLY_WAIT_MS,
                UDP_SIZE,
            ];
            let out = match case.client {
                Client::Container(c) => {
                    let mut a = vec!["exec", c, UDPX];
                    a.extend(args);
                    s.engine.docker(&a)
                }
                Client::Host => {
                    let bin = s.udpx.to_string_lossy().into_owned();
                    let mut a = vec![bin.as_str()];
                    a.extend(args);
                    in_engine_ns(&s.engine, &a)
                }
            };
            let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert!(
                out.status.success(),
                "udpx probe-unconnected for {}: {out:?}",
                case.label()
            );
            // "SIZE ok IP:PORT": the echo came back from the address it was sent to.
            let verdict = said
                .strip_prefix(UDP_SIZE)
                .and_then(|r| r.strip_prefix(' '));
            if verdict.is_some_and(|v| v.starts_with("ok ")) {
                Reply::Answered
            } else if verdict == Some("timeout") {
                Reply::Timeout
            } else {
                Reply::Other(said)
            }
        }
    };
    let took = t.elapsed();
    // The log may trail the answer by a moment.
    std::thread::sleep(Duration::from_millis(200));
    let mut seen_by_web = web_sources(&s.engine, case.proto);
    seen_by_web.drain(..before.min(seen_by_web.len()));
    Attempt {
        reply,
        seen_by_web,
        took,
    }
}

/// Runs `case` (retrying an expected answer for up to [`SETTLE`]); Err describes how it
/// differs from its expectation.
fn check(s: &Setup, case: &Case) -> Result<String, String> {
    let deadline = Instant::now() + SETTLE;
    match case.expect {
        Expect::Answered(source) => {
            let want = match source {
                Source::Cl => s.cl.as_str(),
                Source::Gateway => s.gateway.as_str(),
            };
            let mut seen = Vec::new();
            loop {
                let a = attempt(s, case);
                seen.extend(a.seen_by_web.iter().cloned());
                if a.reply == Reply::Answered {
                    return match a.seen_by_web.last() {
                        Some(src) if src == want => {
                            Ok(format!("answered in {:.1?}, web saw {src}", a.took))
                        }
                        other => Err(format!(
                            "answered, but web saw the request from {other:?}, not {want} \
                             ({source:?})"
                        )),
                    };
                }
                if Instant::now() >= deadline {
                    let web = if seen.is_empty() {
                        "web never saw a request".to_string()
                    } else {
                        format!("web saw the requests from {seen:?}: the replies were lost")
                    };
                    return Err(format!(
                        "not answered in {SETTLE:?} (last attempt: {:?} after {:.1?}); {web}",
                        a.reply, a.took
                    ));
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        Expect::Dropped => {
            let a = attempt(s, case);
            match (&a.reply, a.seen_by_web.is_empty()) {
                (Reply::Timeout, true) => Ok(format!(
                    "dropped (timed out after {:.1?}, web saw nothing)",
                    a.took
                )),
                (reply, _) => Err(format!(
                    "must be dropped before web: got {reply:?} after {:.1?}, web saw {:?}",
                    a.took, a.seen_by_web
                )),
            }
        }
    }
}

/// Runs every case of `phase`; returns the failures, each naming the phase and the case.
fn check_all(s: &Setup, phase: &str, cases: &[Case], t0: Instant) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let label = format!("{:?} {}", case.proto, case.label());
        match check(s, case) {
            Ok(what) => println!("{} {phase}: {label}: {what}", at(t0)),
            Err(e) => {
                println!("{} {phase}: {label}: FAILED: {e}", at(t0));
                failures.push(format!("{phase}: {label}: {e}"));
            }
        }
    }
    failures
}

/// docker0's ports and their hairpin flags ("bwg0-docker0 hairpin off").
fn docker0_hairpin(engine: &DockerEngine) -> String {
    let out = Command::new("ip")
        .args([
            "-n",
            &engine.netns,
            "-d",
            "-o",
            "link",
            "show",
            "master",
            "docker0",
        ])
        .output()
        .expect("running ip -d link show master docker0");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let name = l.split(": ").nth(1).unwrap_or("?").split('@').next();
            let words: Vec<&str> = l.split_whitespace().collect();
            let hairpin = words
                .windows(2)
                .find(|w| w[0] == "hairpin")
                .map_or("?", |w| w[1]);
            format!("{} hairpin {hairpin}", name.unwrap_or("?"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The engine's conntrack entries for the published ports, when `conntrack` is installed.
fn conntrack(engine: &DockerEngine) -> String {
    let Ok(out) = Command::new("ip")
        .args(["netns", "exec", &engine.netns, "conntrack", "-L"])
        .output()
    else {
        return "(conntrack not available)".into();
    };
    if !out.status.success() {
        return format!(
            "(conntrack -L failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let ports = [TCP_HOST_PORT, UDP_HOST_PORT];
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| ports.iter().any(|p| l.contains(&format!("dport={p} "))))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts an engine with `icc` and `"userland-proxy": false`, `web` (`-p 8080:80 -p
/// 5353:5000/udp`: httpd and the UDP echo) and `cl`.
fn setup(icc: bool, t0: Instant) -> Setup {
    let engine = DockerEngine::start_without_userland_proxy(icc);
    // Without the proxy, Docker sends the host's own loopback connections to DNAT too
    // (with the proxy the rule reads `! -d 127.0.0.0/8`).
    let nat = in_engine_ns(&engine, &["iptables", "-t", "nat", "-S", "OUTPUT"]);
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        nat.contains("-A OUTPUT -m addrtype --dst-type LOCAL -j DOCKER"),
        "the engine does not run without the userland proxy; nat OUTPUT:\n{nat}"
    );
    println!(
        "{} engine up (icc={icc}, userland-proxy false), lab/busybox imported",
        at(t0)
    );
    let udpx = udp_helper::build(&engine);
    let m = udp_helper::mount(&udpx);
    let tcp = format!("{TCP_HOST_PORT}:80");
    let udp = format!("{UDP_HOST_PORT}:{UDP_PORT}/udp");
    let serve = format!("httpd -f -v -p 80 -h /www & exec {UDPX} serve {UDP_PORT}");
    engine.run_container(
        "web",
        &["-p", &tcp, "-p", &udp, "-v", &m],
        &["sh", "-c", &serve],
    );
    engine.run_container("cl", &["-v", &m], &["sleep", "3600"]);
    let gateway = engine
        .inspect("cl", "{{.NetworkSettings.Gateway}}")
        .trim()
        .to_string();
    let cl = engine
        .inspect("cl", "{{.NetworkSettings.IPAddress}}")
        .trim()
        .to_string();
    assert!(
        !gateway.is_empty() && !cl.is_empty(),
        "addresses: gateway {gateway:?}, cl {cl:?}"
    );
    println!(
        "{} web (-p {tcp} -p {udp}) and cl ({cl}) running; gateway {gateway}",
        at(t0)
    );
    Setup {
        engine,
        udpx,
        gateway,
        cl,
    }
}

/// The whole test for one engine: the kernel path (must match the table), bridgewall, the
/// kernel path after bridgewall stopped; panics with every difference.
fn hairpin(icc: bool) {
    let t0 = Instant::now();
    let s = setup(icc, t0);
    let cases = cases(icc);
    let tag = format!("icc={icc}");
    let phase = |p: &str| format!("{tag} {p}");

    // 1. The kernel path: what the engine does by itself.
    println!(
        "{} {tag} kernel path; docker0's ports: {}",
        at(t0),
        docker0_hairpin(&s.engine)
    );
    let kernel = check_all(&s, &phase("kernel path"), &cases, t0);
    assert!(
        kernel.is_empty(),
        "the engine itself does not behave as issue 17 describes:\n  {}\nconntrack:\n{}",
        kernel.join("\n  "),
        conntrack(&s.engine)
    );

    // 2. bridgewall takes docker0 over: it must give the same results.
    let bw = Bridgewall::start_taking_over(&s.engine, 2);
    let ports = docker0_hairpin(&s.engine);
    println!(
        "{} {tag} bridgewall enforcing; docker0's ports: {ports}",
        at(t0)
    );
    let mut failures = check_all(&s, &phase("bridgewall"), &cases, t0);
    let diagnosis = if failures.is_empty() {
        String::new()
    } else {
        format!(
            "docker0's ports under bridgewall: {ports}\nthe engine's conntrack entries for the \
             published ports (every phase so far; a packet dropped before the host confirmed \
             its connection leaves none):\n{}\nbridgewall's last lines before the stop:\n{}",
            conntrack(&s.engine),
            bw.tail(20)
        )
    };
    let summary = bw.stop();
    println!(
        "{} {tag} bridgewall stopped; its summary:\n{summary}",
        at(t0)
    );
    let back = s
        .engine
        .bridge_ports("docker0")
        .iter()
        .filter(|p| p.starts_with("veth"))
        .count();
    if back != 2 {
        failures.push(format!(
            "after the stop {back} veths are back on docker0, not 2: {:?}",
            s.engine.bridge_ports("docker0")
        ));
    }

    // 3. The ports are back on docker0: the kernel path must work as before.
    println!(
        "{} {tag} kernel path again; docker0's ports: {}",
        at(t0),
        docker0_hairpin(&s.engine)
    );
    failures.extend(check_all(
        &s,
        &phase("kernel path after bridgewall stopped"),
        &cases,
        t0,
    ));
    assert!(
        failures.is_empty(),
        "{tag}: {} case(s) differ from the kernel path:\n  {}\n{diagnosis}\n\
         docker0's ports now: {}\nbridgewall's summary:\n{summary}",
        failures.len(),
        failures.join("\n  "),
        docker0_hairpin(&s.engine)
    );
    println!("{} {tag}: passed", at(t0));
}

#[test]
fn root_docker_hairpin_icc_true_published_ports_from_the_bridge() {
    hairpin(true);
}

#[test]
fn root_docker_hairpin_icc_false_published_ports_from_the_bridge() {
    hairpin(false);
}
