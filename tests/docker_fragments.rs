//! Issue 16's real-engine test: UDP datagrams larger than the MTU, which the containers'
//! kernels send as IP fragments, cross `bridgewall run` on a real Docker engine (Debian's
//! docker.io 20.10, in a network namespace of its own) whole where Docker's semantics let
//! them, and not one fragment crosses where they do not.
//!
//! bridgewall starts first, on an empty docker0; the containers start while it runs. Every
//! datagram is one `send` of N bytes (N = 100, 1,400, 3,000, 8,000, 30,000) of pseudo-random
//! bytes, echoed whole by the server and compared byte for byte. It proves that:
//! - **icc=false, a link** (`cli --link srv:peer`, srv exposing 5000/udp): every size comes
//!   back whole from `peer:5000`; srv's log shows each datagram arriving at its full length,
//!   and the kernels of both ends reassembled datagrams (`/proc/net/snmp` `ReasmOKs`), so the
//!   fragments really crossed the dataplane;
//! - **icc=false, no link** (`other` → srv:5000): nothing comes back for any size, srv
//!   receives nothing and its kernel sees not one fragment (`ReasmReqds` unchanged), and
//!   bridgewall counts the later fragments as `fragment_denied`;
//! - **icc=true**: any pair (`east`, `west`, no link), both ways, every size;
//! - **a published UDP port** (`-p 5353:5000/udp`) from an outside host, at 100, 3,000 and
//!   8,000 bytes (the engine's kernel reassembles and DNATs them, then fragments again on
//!   docker0; the test prints whether srv saw the outside host — kernel DNAT — or the
//!   gateway — docker-proxy);
//! - **IPv6** (`"ipv6": true, "fixed-cidr-v6"`): bridgewall learns the containers' IPv6
//!   addresses, and the link and no-link cases above hold over IPv6 fragments.
//!
//! In every case bridgewall's final counters (printed on SIGINT) must show no
//! `fragment_orphan`, `fragment_overlap`, `fragment_table_full` or malformed-packet drops.
//!
//! busybox (Debian's busybox-static, in the `lab/busybox` image) has no UDP mode in its `nc`,
//! so the test compiles a small static helper, `udpx` (C, in `support::udp_helper`, `cc
//! -static` against the glibc that any Rust toolchain on Linux links with), and bind-mounts
//! it into the containers; the outside host runs the same binary in its namespace. Every
//! probe runs inside a container or the outside host's namespace; the engines, namespaces and
//! bridgewall are removed by guards, also when the test fails. Needs root; ~20 s in all (four
//! engines, two at a time).
mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::bridgewall::{Bridgewall, at};
use support::docker::{DockerEngine, OutsideHost};
use support::udp_helper::{self, IN_CONTAINER as UDPX};

/// Datagram sizes between containers: one unfragmented below the MTU, one just below it,
/// and three that take 3, 6 and 21 fragments at a 1,500-byte MTU.
const SIZES: [usize; 5] = [100, 1400, 3000, 8000, 30000];
/// Datagram sizes from the outside host to the published port.
const OUTSIDE_SIZES: [usize; 3] = [100, 3000, 8000];
/// Datagrams of these sizes are fragmented (IPv4 and IPv6, 1,500-byte MTU).
const FRAGMENTED: usize = 3;
/// The echo server's port, which srv exposes.
const PORT: &str = "5000";
/// The host port `-p 5353:5000/udp` publishes.
const PUBLISHED: &str = "5353";
/// How long a probe waits for each echo, in milliseconds.
const REPLY_WAIT_MS: &str = "1500";
/// How long a path may take to open after the containers are attached (policy swap).
const SETTLE: Duration = Duration::from_secs(15);
/// The IPv6 engine's `fixed-cidr-v6`.
const V6_CIDR: &str = "fd00:16::/64";
/// Drop reasons that must not appear in any case: the fragment table losing track of a
/// datagram, or a fragment parsed as malformed.
const FORBIDDEN_DROPS: [&str; 9] = [
    "fragment_orphan",
    "fragment_overlap",
    "fragment_table_full",
    "truncated",
    "bad_ihl",
    "bad_ip_version",
    "bad_total_length",
    "bad_udp_length",
    "ext_header_chain_too_long",
];

/// Where a probe runs.
#[derive(Clone, Copy)]
enum Client<'a> {
    /// `docker exec NAME /udpx …`.
    Container(&'a str),
    /// `ip netns exec NETNS UDPX …` (an outside host).
    Netns(&'a str, &'a Path),
}

impl Client<'_> {
    fn label(&self) -> String {
        match self {
            Client::Container(c) => (*c).to_string(),
            Client::Netns(ns, _) => format!("netns {ns}"),
        }
    }
}

/// Outcome per size, as `udpx probe` printed it ("ok", "timeout", "short N", …).
type Outcomes = Vec<(usize, String)>;

/// One `udpx probe` run: each size sent once, each echo awaited [`REPLY_WAIT_MS`]. The probe's
/// socket is connected, so a refusal (ICMP port unreachable) reads "refused", never a drop's
/// "timeout".
fn probe(engine: &DockerEngine, from: Client, addr: &str, port: &str, sizes: &[usize]) -> Outcomes {
    let sizes_s: Vec<String> = sizes.iter().map(usize::to_string).collect();
    let mut tail = vec!["probe", addr, port, REPLY_WAIT_MS];
    tail.extend(sizes_s.iter().map(String::as_str));
    let out: Output = match from {
        Client::Container(c) => {
            let mut args = vec!["exec", c, UDPX];
            args.extend(&tail);
            engine.docker(&args)
        }
        Client::Netns(ns, udpx) => Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(udpx)
            .args(&tail)
            .output()
            .expect("running udpx in the outside host's namespace"),
    };
    assert!(
        out.status.success(),
        "udpx probe from {} failed: {}",
        from.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Outcomes = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter_map(|(n, o)| Some((n.parse().ok()?, o.to_string())))
        .collect();
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        sizes,
        "udpx probe from {} printed {got:?}",
        from.label()
    );
    got
}

/// Waits until a 100-byte datagram comes back (the path is open: the policy is in force),
/// then sends every size exactly once: each must come back whole, first time.
fn expect_echoes(
    engine: &DockerEngine,
    from: Client,
    addr: &str,
    port: &str,
    sizes: &[usize],
) -> Result<(), String> {
    let what = format!("{} -> {addr}:{port}", from.label());
    let t = Instant::now();
    let deadline = t + SETTLE;
    loop {
        let got = probe(engine, from, addr, port, &[100]);
        if got[0].1 == "ok" {
            break;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{what}: a 100-byte datagram never came back in {SETTLE:?} (last: {})",
                got[0].1
            ));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let open_after = t.elapsed();
    let got = probe(engine, from, addr, port, sizes);
    println!("  {what}: open after {open_after:.1?}; {got:?}");
    let bad: Outcomes = got.into_iter().filter(|(_, o)| o != "ok").collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: not echoed whole: {bad:?}"))
    }
}

/// Sends every size once: none may come back (dropped: a timeout, not even a refusal).
fn expect_silence(
    engine: &DockerEngine,
    from: Client,
    addr: &str,
    port: &str,
    sizes: &[usize],
) -> Result<(), String> {
    let what = format!("{} -> {addr}:{port}", from.label());
    let got = probe(engine, from, addr, port, sizes);
    println!("  {what} (must be dropped): {got:?}");
    let bad: Outcomes = got.into_iter().filter(|(_, o)| o != "timeout").collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} must be dropped, got: {bad:?}"))
    }
}

/// The datagrams `udpx serve` in `container` logged: (source address, length).
fn served(engine: &DockerEngine, container: &str) -> Vec<(String, usize)> {
    engine
        .docker_ok(&["logs", container])
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("from ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect()
}

/// The IP family a case runs over.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

/// Reassembly counters of `container`'s kernel: (fragments received, datagrams reassembled),
/// `Ip: ReasmReqds ReasmOKs` of `/proc/net/snmp` or `Ip6ReasmReqds`/`Ip6ReasmOKs` of
/// `/proc/net/snmp6` (per network namespace).
fn reassembly(engine: &DockerEngine, container: &str, family: Family) -> (u64, u64) {
    match family {
        Family::V4 => {
            let snmp = engine.docker_ok(&["exec", container, "cat", "/proc/net/snmp"]);
            let ip: Vec<Vec<&str>> = snmp
                .lines()
                .filter(|l| l.starts_with("Ip: "))
                .map(|l| l.split_whitespace().collect())
                .collect();
            assert_eq!(ip.len(), 2, "Ip: lines of /proc/net/snmp:\n{snmp}");
            let field = |name: &str| -> u64 {
                let i = ip[0]
                    .iter()
                    .position(|f| *f == name)
                    .unwrap_or_else(|| panic!("{name} in /proc/net/snmp:\n{snmp}"));
                ip[1][i].parse().expect("a counter in /proc/net/snmp")
            };
            (field("ReasmReqds"), field("ReasmOKs"))
        }
        Family::V6 => {
            let snmp = engine.docker_ok(&["exec", container, "cat", "/proc/net/snmp6"]);
            let field = |name: &str| -> u64 {
                snmp.lines()
                    .filter_map(|l| l.split_once(char::is_whitespace))
                    .find(|(k, _)| *k == name)
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or_else(|| panic!("{name} in /proc/net/snmp6:\n{snmp}"))
            };
            (field("Ip6ReasmReqds"), field("Ip6ReasmOKs"))
        }
    }
}

/// A container's address on the default bridge, of `family`.
fn address(engine: &DockerEngine, container: &str, family: Family) -> String {
    let format = match family {
        Family::V4 => "{{.NetworkSettings.IPAddress}}",
        Family::V6 => "{{.NetworkSettings.GlobalIPv6Address}}",
    };
    let a = engine.inspect(container, format).trim().to_string();
    assert!(!a.is_empty(), "{container} has no {family:?} address");
    a
}

/// Frames dropped for `reason` in bridgewall's summary (its drops table: "│ reason ┆ n │").
fn drops(summary: &str, reason: &str) -> u64 {
    summary
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .collect();
            match words.as_slice() {
                [r, n] if *r == reason => n.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

/// Stops bridgewall, prints its summary, adds the drop-reason checks to `failures`
/// (`fragment_denied` must be counted when `expect_denied`), and panics with every failure,
/// bridgewall's last lines and its summary.
fn finish(case: &str, bw: Bridgewall, mut failures: Vec<String>, expect_denied: bool, t0: Instant) {
    let tail = bw.tail(30);
    if !failures.is_empty() {
        eprintln!(
            "{case}: failures before the stop:\n  {}",
            failures.join("\n  ")
        );
    }
    let summary = bw.stop();
    println!("{} bridgewall stopped; its summary:\n{summary}", at(t0));
    for reason in FORBIDDEN_DROPS {
        let n = drops(&summary, reason);
        if n > 0 {
            failures.push(format!("bridgewall dropped {n} frames as {reason}"));
        }
    }
    let denied = drops(&summary, "fragment_denied");
    if expect_denied && denied == 0 {
        failures.push(
            "no fragment_denied drops: the later fragments of the denied datagrams were not \
             seen or not counted"
                .into(),
        );
    }
    if !expect_denied && denied > 0 {
        failures.push(format!(
            "{denied} fragment_denied drops where every datagram was to pass"
        ));
    }
    assert!(
        failures.is_empty(),
        "{case}: {} check(s) failed:\n  {}\nbridgewall's last lines before the stop:\n{tail}\n\
         bridgewall's summary:\n{summary}",
        failures.len(),
        failures.join("\n  ")
    );
    println!("{} {case}: passed", at(t0));
}

/// icc=false: `srv` serves 5000/udp (exposed), `cli --link srv:peer`, `other` unlinked;
/// all started after bridgewall. Over the link every size comes back whole; from `other`
/// nothing does and not one fragment reaches srv.
fn link_and_unlinked(engine: &DockerEngine, family: Family, t0: Instant) {
    let udpx = udp_helper::build(engine);
    let mut bw = Bridgewall::start(engine);
    println!("{} bridgewall run enforcing an empty docker0", at(t0));
    let m = udp_helper::mount(&udpx);
    let expose = format!("{PORT}/udp");
    engine.run_container(
        "srv",
        &["-v", &m, "--expose", &expose],
        &[UDPX, "serve", PORT],
    );
    engine.run_container("cli", &["-v", &m, "--link", "srv:peer"], &["sleep", "3600"]);
    engine.run_container("other", &["-v", &m], &["sleep", "3600"]);
    bw.wait_attached(engine, &["srv", "cli", "other"]);
    println!("{} srv, cli (--link srv:peer), other attached", at(t0));

    let mut failures = Vec::new();
    let srv = address(engine, "srv", family);
    let cli = address(engine, "cli", family);
    let other = address(engine, "other", family);
    println!("  {family:?}: srv {srv}, cli {cli}, other {other}");
    if family == Family::V6 {
        // bridgewall learnt the IPv6 addresses from the engine ("+ srv 172.17.0.2, fd00:…").
        let lines = bw.lines();
        for (name, a) in [("srv", &srv), ("cli", &cli), ("other", &other)] {
            match lines.iter().find(|l| l.starts_with(&format!("+ {name} "))) {
                Some(l) if l.contains(a.as_str()) => println!("  bridgewall: {l}"),
                l => failures.push(format!(
                    "bridgewall's view of {name} lacks its IPv6 address {a}: {l:?}"
                )),
            }
        }
    } else {
        // The link's alias names srv in cli's /etc/hosts.
        let hosts = engine.docker_ok(&["exec", "cli", "cat", "/etc/hosts"]);
        let peer: Vec<&str> = hosts
            .lines()
            .filter(|l| l.split_whitespace().skip(1).any(|w| w == "peer"))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(
            peer.contains(&srv.as_str()),
            "peer in cli's /etc/hosts is {peer:?}, not srv's {srv}:\n{hosts}"
        );
    }

    // 1. Over the link: every size, whole; both kernels reassembled the fragmented ones.
    let (srv_reqds0, srv_oks0) = reassembly(engine, "srv", family);
    let (_, cli_oks0) = reassembly(engine, "cli", family);
    if let Err(e) = expect_echoes(engine, Client::Container("cli"), &srv, PORT, &SIZES) {
        failures.push(e);
    }
    let log = served(engine, "srv");
    for size in SIZES {
        if !log.iter().any(|(from, n)| *from == cli && *n == size) {
            failures.push(format!(
                "srv never received cli's {size}-byte datagram whole; its log: {log:?}"
            ));
        }
    }
    let (srv_reqds1, srv_oks1) = reassembly(engine, "srv", family);
    let (_, cli_oks1) = reassembly(engine, "cli", family);
    println!(
        "  reassembled over the link: srv {} datagrams ({} fragments), cli {} echoes",
        srv_oks1 - srv_oks0,
        srv_reqds1 - srv_reqds0,
        cli_oks1 - cli_oks0
    );
    if srv_oks1 - srv_oks0 < FRAGMENTED as u64 || cli_oks1 - cli_oks0 < FRAGMENTED as u64 {
        failures.push(format!(
            "expected at least {FRAGMENTED} reassembled datagrams at each end (the test must \
             exercise fragments): srv {}, cli {}",
            srv_oks1 - srv_oks0,
            cli_oks1 - cli_oks0
        ));
    }
    println!("{} link checked", at(t0));

    // 2. No link, icc=false: nothing back, nothing at srv, not even a fragment.
    if let Err(e) = expect_silence(engine, Client::Container("other"), &srv, PORT, &SIZES) {
        failures.push(e);
    }
    let log = served(engine, "srv");
    let leaked: Vec<_> = log.iter().filter(|(from, _)| *from == other).collect();
    if !leaked.is_empty() {
        failures.push(format!("srv received other's datagrams: {leaked:?}"));
    }
    let (srv_reqds2, _) = reassembly(engine, "srv", family);
    println!(
        "  fragments reaching srv's kernel while other probed: {}",
        srv_reqds2 - srv_reqds1
    );
    if srv_reqds2 != srv_reqds1 {
        failures.push(format!(
            "{} fragments reached srv's kernel from other (icc=false, no link)",
            srv_reqds2 - srv_reqds1
        ));
    }
    println!("{} unlinked pair checked", at(t0));
    finish(
        &format!("icc=false link/unlinked over {family:?}"),
        bw,
        failures,
        true,
        t0,
    );
}

#[test]
fn root_docker_fragments_icc_false_link_passes_whole_unlinked_gets_nothing() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(false);
    println!("{} engine up (icc=false), lab/busybox imported", at(t0));
    link_and_unlinked(&engine, Family::V4, t0);
}

#[test]
fn root_docker_fragments_icc_true_any_pair_both_ways() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(true);
    println!("{} engine up (icc=true), lab/busybox imported", at(t0));
    let udpx = udp_helper::build(&engine);
    let mut bw = Bridgewall::start(&engine);
    let m = udp_helper::mount(&udpx);
    for name in ["east", "west"] {
        engine.run_container(name, &["-v", &m], &[UDPX, "serve", PORT]);
    }
    bw.wait_attached(&engine, &["east", "west"]);
    println!("{} east and west attached", at(t0));
    let (east, west) = (
        address(&engine, "east", Family::V4),
        address(&engine, "west", Family::V4),
    );
    let mut failures = Vec::new();
    for (from, to, to_addr) in [("east", "west", &west), ("west", "east", &east)] {
        let (_, oks0) = reassembly(&engine, to, Family::V4);
        if let Err(e) = expect_echoes(&engine, Client::Container(from), to_addr, PORT, &SIZES) {
            failures.push(e);
        }
        let (_, oks1) = reassembly(&engine, to, Family::V4);
        if oks1 - oks0 < FRAGMENTED as u64 {
            failures.push(format!(
                "{to} reassembled {} datagrams from {from}, expected at least {FRAGMENTED}",
                oks1 - oks0
            ));
        }
    }
    finish("icc=true pair", bw, failures, false, t0);
}

#[test]
fn root_docker_fragments_published_udp_port_from_an_outside_host() {
    let t0 = Instant::now();
    let engine = DockerEngine::start(false);
    println!("{} engine up (icc=false), lab/busybox imported", at(t0));
    let outside = OutsideHost::add(&engine, 1);
    let udpx = udp_helper::build(&engine);
    let mut bw = Bridgewall::start(&engine);
    let m = udp_helper::mount(&udpx);
    let publish = format!("{PUBLISHED}:{PORT}/udp");
    engine.run_container("srv", &["-v", &m, "-p", &publish], &[UDPX, "serve", PORT]);
    bw.wait_attached(&engine, &["srv"]);
    println!("{} srv (-p {publish}) attached", at(t0));
    let mut failures = Vec::new();
    let (_, oks0) = reassembly(&engine, "srv", Family::V4);
    if let Err(e) = expect_echoes(
        &engine,
        Client::Netns(&outside.netns, &udpx),
        &outside.host_ip,
        PUBLISHED,
        &OUTSIDE_SIZES,
    ) {
        failures.push(e);
    }
    let (_, oks1) = reassembly(&engine, "srv", Family::V4);
    // 3,000 and 8,000 bytes arrive in fragments (the engine's kernel fragments again what
    // its conntrack reassembled for the DNAT).
    if oks1 - oks0 < 2 {
        failures.push(format!(
            "srv reassembled {} datagrams from outside, expected at least 2",
            oks1 - oks0
        ));
    }
    let log = served(&engine, "srv");
    let sources: std::collections::BTreeSet<&str> =
        log.iter().map(|(from, _)| from.as_str()).collect();
    let gateway = engine.inspect("srv", "{{.NetworkSettings.Gateway}}");
    // The outside host is .2 on its veth, the engine's side .1.
    let outside_ip = match outside.host_ip.rsplit_once('.') {
        Some((net, _)) => format!("{net}.2"),
        None => panic!("outside host_ip {} is not IPv4", outside.host_ip),
    };
    let path = if sources.contains(outside_ip.as_str()) {
        "the kernel's DNAT (srv sees the outside host's address)"
    } else if sources.contains(gateway.trim()) {
        "docker-proxy (srv sees the gateway's address)"
    } else {
        "unknown"
    };
    println!("  path to the published UDP port: {path}; sources at srv: {sources:?}");
    for size in OUTSIDE_SIZES {
        if !log.iter().any(|(_, n)| *n == size) {
            failures.push(format!(
                "srv never received the {size}-byte datagram whole; its log: {log:?}"
            ));
        }
    }
    finish("published UDP port", bw, failures, false, t0);
}

#[test]
fn root_docker_fragments_ipv6_link_passes_whole_unlinked_gets_nothing() {
    let t0 = Instant::now();
    let engine = DockerEngine::start_ipv6(false, V6_CIDR);
    println!(
        "{} engine up (icc=false, ipv6, fixed-cidr-v6 {V6_CIDR}), lab/busybox imported",
        at(t0)
    );
    link_and_unlinked(&engine, Family::V6, t0);
}
