//! DOCKER-USER parity on a real engine (Debian's docker.io 20.10, in a network namespace of
//! its own): a rule set written with `iptables` and `ipset` in the engine's namespace, as an
//! operator writes it, decides a matrix of probes on the **kernel path**; the same rules,
//! taken from `iptables-save` and `ipset save` by `bridgewall rules import`, must decide
//! every probe of the matrix the same way under **`bridgewall run --rules FILE`** once the
//! kernel's DOCKER-USER is back to a lone `-j RETURN`.
//!
//! The engine (icc=true) runs three busybox containers:
//! - `web`: httpd on 80, `-p 8080:80`;
//! - `db`: httpd on 5432, `-p 5432:5432`;
//! - `api`: httpd on 443 and a UDP echo on 5000, `-p 8443:443 -p 5353:5000/udp`.
//!
//! The engine's namespace has an uplink, `dh-ext` (198.18.0.1), to a router namespace
//! (198.18.0.2, the engine's built-in outside host, forwarding), behind which sit two outside
//! hosts in different subnets: **A** (10.1.0.2, in 10.1.0.0/24) and **B** (10.2.0.2, in
//! 10.2.0.0/24; its second address 10.2.0.50 is host **C**, outside the iprange below). The
//! engine routes both subnets via the router on `dh-ext`. A fourth host, **D** (198.18.1.2), is
//! on another interface of the engine (`dh-ext1`), so `-i dh-ext` does not apply to it.
//!
//! The rules (`DB`, `WEB` are the containers' addresses):
//!
//! ```text
//! -N BW-OUTSIDE
//! -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment replies -j RETURN
//! -A DOCKER-USER -s 10.1.0.2/32 -p tcp -m conntrack --ctorigdstport 8080 --ctdir ORIGINAL -j DROP
//! -A DOCKER-USER -i dh-ext ! -s 10.1.0.0/24 -j BW-OUTSIDE
//! -A DOCKER-USER -d DB/32 -p tcp --dport 5432 -m set ! --match-set bw-db-clients src -j REJECT --reject-with tcp-reset
//! -A DOCKER-USER -s DB/32 -p tcp -m multiport --dports 80,443 -j DROP
//! -A DOCKER-USER -s WEB/32 -p udp --dport 5000 -j REJECT
//! -A DOCKER-USER -j RETURN
//! -A BW-OUTSIDE -p tcp --dport 443 -j REJECT --reject-with tcp-reset
//! -A BW-OUTSIDE -p udp --dport 5000 -j REJECT
//! -A BW-OUTSIDE -p tcp -m iprange --src-range 10.2.0.2-10.2.0.9 -m multiport --dports 80,5432 -j RETURN
//! -A BW-OUTSIDE -m comment --comment OUTSIDE-DEFAULT-DENY -j DROP
//! ipset bw-db-clients (hash:net): WEB/32, 10.1.0.0/24
//! ```
//!
//! Each probe ([`PROBES`]) is one TCP connection (with an HTTP request: "allowed" means the
//! page's status line came back) or one UDP datagram (from a connected socket: "allowed"
//! means the echo came back) from an outside host to the engine's published port, or from one
//! container to another's address. Its outcome is **allowed**, **dropped** (nothing within
//! [`WAIT_MS`]), or **refused** (a TCP RST or an ICMP port unreachable: the kernel reports
//! `ECONNREFUSED` at once). The kernel path must give the expected column (otherwise the
//! engine is not the one this test assumes, and the comparison would prove nothing);
//! bridgewall must give the kernel's outcome for every probe, REJECT answering in both.
//! The matrix (probe, expected, kernel, bridgewall, with the time each took) is printed, and
//! so are bridgewall's final counters.
//!
//! The probe (`bwprobe`, C, compiled `cc -static` like `support::udp_helper`'s `udpx`, which
//! serves the UDP echo) runs inside the containers (bind-mounted) and in the outside hosts'
//! namespaces; nothing is sent from the root namespace. The engine, the namespaces and
//! bridgewall are removed by guards, also when the test fails. Needs root and `ipset`
//! (installed from Debian when missing; `.ci/run` installs it); about 20 s.
//!
//! bridgewall runs with `--rules FILE` alone: the file `rules import -o` writes carries the
//! sets (`ipset save` lines) before the rules, so `--ipsets` with the same sets would define
//! them twice, which `run` refuses ("set created twice").
//!
//! The second test (`root_docker_user_log_limit_connlimit_…`, same lab, same way: iptables,
//! `iptables-save`, `rules import`, `run --rules`) covers `-j LOG`, `-m limit` and
//! `-m connlimit` (`PFX` is `bw<pid>-in: `, unique to the run: the kernel log is the
//! machine's):
//!
//! ```text
//! -A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN
//! -A DOCKER-USER -p tcp --dport 443 -m connlimit --connlimit-above 2 --connlimit-mask 32 -j REJECT --reject-with tcp-reset
//! -A DOCKER-USER -i dh-ext -p tcp -m multiport --dports 80,443 -j LOG --log-prefix "PFX"
//! -A DOCKER-USER -s 10.2.0.2/32 -p tcp --dport 80 -m conntrack --ctstate NEW -m limit --limit 1/min --limit-burst 2 -j ACCEPT
//! -A DOCKER-USER -s 10.2.0.2/32 -p tcp --dport 80 -j DROP
//! -A DOCKER-USER -j RETURN
//! ```
//!
//! Its probes ([`limits_phase`], TCP, in this order): D (no `-i dh-ext`) and api → web (a
//! container) are not logged; A's are logged and go on to Docker's rules; B's first two new
//! connections to 8080 pass within the burst, its third is dropped (logged all the same: the
//! LOG rule comes first); C holds two connections open to 8443 (`bwprobe hold`), its third
//! is refused by connlimit (before the LOG rule: not logged) while a connection to 8080 is
//! not limited; after C closes the two (an orderly close, FIN both ways) 8443 is open to it
//! again. Each row compares the outcome (kernel = expected, bridgewall = kernel) and whether
//! it was logged (by source address and port): in bridgewall's `bridgewall::log` lines
//! (`run --log warn,bridgewall::log=info`), exactly once per logged probe, and in the kernel
//! log (`dmesg`) when `net.netfilter.nf_log_all_netns` could be set to 1 for the test (the
//! old value is put back on drop; without it the kernel logs nothing from a namespace, and
//! only bridgewall's side is compared). bridgewall's stop report must count as many
//! "packets reached" for the LOG rule as probes are logged. The tests take a lock, so they
//! run one after the other; both together about 30 s.
mod support;

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::bridgewall::{Bridgewall, at};
use support::docker::{DockerEngine, OutsideHost, ensure_command};
use support::udp_helper::{self, IN_CONTAINER as UDPX};

/// How long a probe waits for a connection, a page or an echo, in milliseconds.
const WAIT_MS: u64 = 1500;
/// A refusal must come faster than this (a RST or an ICMP error, not a retransmission).
const REFUSED_WITHIN: Duration = Duration::from_millis(1000);
/// Where the probe is mounted in the containers.
const PROBE_IN_CONTAINER: &str = "/bwprobe";
/// The engine's uplink, behind which A, B and C are routed.
const UPLINK: &str = "dh-ext";
/// The engine's address on the uplink: where A, B and C reach the published ports.
const HOST_IP: &str = "198.18.0.1";
/// The router (the engine's built-in outside namespace) on the uplink.
const ROUTER_IP: &str = "198.18.0.2";
/// A's subnet, address, and the router's address in it.
const A_NET: &str = "10.1.0.0/24";
const A_IP: &str = "10.1.0.2";
const A_GW: &str = "10.1.0.1";
/// B's subnet, B's and C's addresses (one namespace), and the router's address in it.
const B_NET: &str = "10.2.0.0/24";
const B_IP: &str = "10.2.0.2";
const C_IP: &str = "10.2.0.50";
const B_GW: &str = "10.2.0.1";
/// B's iprange (C is outside it).
const B_RANGE: &str = "10.2.0.2-10.2.0.9";
/// The ipset of the clients db accepts.
const SET: &str = "bw-db-clients";
/// The user chain the outside rules live in.
const CHAIN: &str = "BW-OUTSIDE";

/// The probe: `bwprobe tcp|udp ADDR PORT WAIT_MS [SRC]` prints one line, `OUTCOME MS SPORT`
/// (SPORT: its source port, which tells its LOG lines from the others'):
/// - TCP: `open` (connected, and the answer to `GET /` starts with `HTTP/`), `silent`
///   (connected, no answer), `closed` (connected, then closed or reset without an answer),
///   `refused` (ECONNREFUSED: a RST or an ICMP port unreachable), `unreachable` (an ICMP
///   host/net unreachable or prohibited), `timeout`;
/// - UDP, from a connected socket: `answered` (the echo came back), `refused` (an ICMP port
///   unreachable), `unreachable`, `timeout`;
/// - `error:…` for anything else. MS is the time it took. SRC binds the source address.
///
/// `bwprobe hold ADDR PORT COUNT WAIT_MS [SRC]` opens COUNT TCP connections one after the
/// other and keeps them open without a request (busybox httpd waits 60 s for one): a line
/// per connection, `held MS SPORT` or a failure as above, then `ready`. It then reads
/// commands on stdin: `fin` closes them all in order (`shutdown`, the server's answer to the
/// empty request and its FIN read to the end, then `close`: both FINs are exchanged, no
/// RST), `rst` aborts them (`SO_LINGER` 0: a RST each); either prints `closed MS` and exits.
/// End of input aborts them too.
const PROBE_C: &str = r#"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long t0;
static int sport;
static long now_ms(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}
static int done(const char *what) { printf("%s %ld %d\n", what, now_ms() - t0, sport); return 0; }
static void note_sport(int s) {
    struct sockaddr_in a; socklen_t al = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &al) == 0) sport = ntohs(a.sin_port);
}
static int failed(int e, const char *where) {
    if (e == ECONNREFUSED) return done("refused");
    if (e == EHOSTUNREACH || e == ENETUNREACH || e == EACCES || e == EPERM) return done("unreachable");
    if (e == ETIMEDOUT) return done("timeout");
    char b[128]; snprintf(b, sizeof b, "error:%s:%s", where, strerror(e)); return done(b);
}
static int wait_for(int s, short ev, long deadline) {
    struct pollfd p = {s, ev, 0};
    long left = deadline - now_ms();
    if (left < 0) left = 0;
    return poll(&p, 1, (int)left);
}

static int bind_src(int s, const char *addr) {
    struct sockaddr_in src; memset(&src, 0, sizeof src);
    src.sin_family = AF_INET;
    if (inet_pton(AF_INET, addr, &src.sin_addr) != 1 ||
        bind(s, (struct sockaddr *)&src, sizeof src) < 0) { perror("bind SRC"); return -1; }
    return 0;
}

/* bwprobe hold ADDR PORT COUNT WAIT_MS [SRC] */
static int hold(int argc, char **argv) {
    if (argc < 6 || argc > 7) {
        fprintf(stderr, "usage: bwprobe hold ADDR PORT COUNT WAIT_MS [SRC]\n"); return 2;
    }
    struct sockaddr_in dst; memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET; dst.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) { fprintf(stderr, "bad ADDR\n"); return 2; }
    int count = atoi(argv[4]);
    long wait = atol(argv[5]);
    if (count < 1 || count > 64) { fprintf(stderr, "bad COUNT\n"); return 2; }
    int socks[64], held = 0;
    for (int i = 0; i < count; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (s < 0) { perror("socket"); return 2; }
        if (argc == 7 && bind_src(s, argv[6]) < 0) return 2;
        t0 = now_ms(); sport = 0;
        long deadline = t0 + wait;
        if (connect(s, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS) {
            failed(errno, "connect"); close(s); continue;
        }
        note_sport(s);
        if (wait_for(s, POLLOUT, deadline) <= 0) { done("timeout"); close(s); continue; }
        int err = 0; socklen_t el = sizeof err;
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) { failed(err, "connect"); close(s); continue; }
        done("held");
        socks[held++] = s;
    }
    printf("ready\n");
    char cmd[16] = "";
    if (!fgets(cmd, sizeof cmd, stdin)) strcpy(cmd, "rst");
    t0 = now_ms(); sport = 0;
    for (int i = 0; i < held; i++) {
        int s = socks[i];
        if (strncmp(cmd, "fin", 3) == 0) {
            shutdown(s, SHUT_WR);
            long deadline = now_ms() + 3000;
            char buf[512];
            for (;;) {
                if (wait_for(s, POLLIN, deadline) <= 0) break;
                ssize_t n = recv(s, buf, sizeof buf, 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
            }
        } else {
            struct linger l = {1, 0};
            setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        close(s);
    }
    printf("closed %ld\n", now_ms() - t0);
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "hold") == 0) return hold(argc, argv);
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: bwprobe tcp|udp ADDR PORT WAIT_MS [SRC]\n"); return 2;
    }
    int tcp = strcmp(argv[1], "tcp") == 0;
    struct sockaddr_in dst; memset(&dst, 0, sizeof dst);
    dst.sin_family = AF_INET; dst.sin_port = htons(atoi(argv[3]));
    if (inet_pton(AF_INET, argv[2], &dst.sin_addr) != 1) { fprintf(stderr, "bad ADDR\n"); return 2; }
    long wait = atol(argv[4]);
    int s = socket(AF_INET, (tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK, 0);
    if (s < 0) { perror("socket"); return 2; }
    if (argc == 6 && bind_src(s, argv[5]) < 0) return 2;
    t0 = now_ms();
    long deadline = t0 + wait;
    char buf[256];
    if (tcp) {
        if (connect(s, (struct sockaddr *)&dst, sizeof dst) < 0 && errno != EINPROGRESS)
            return failed(errno, "connect");
        note_sport(s);
        if (wait_for(s, POLLOUT, deadline) <= 0) return done("timeout");
        int err = 0; socklen_t el = sizeof err;
        getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) return failed(err, "connect");
        static const char req[] = "GET / HTTP/1.0\r\n\r\n";
        if (send(s, req, sizeof req - 1, MSG_NOSIGNAL) < 0) return failed(errno, "send");
        if (wait_for(s, POLLIN, deadline) <= 0) return done("silent");
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n >= 5 && memcmp(buf, "HTTP/", 5) == 0) return done("open");
        if (n <= 0) return done("closed");
        return done("error:not-http");
    }
    if (connect(s, (struct sockaddr *)&dst, sizeof dst) < 0) return failed(errno, "connect");
    note_sport(s);
    static const char msg[] = "bwprobe";
    if (send(s, msg, sizeof msg - 1, 0) < 0) return failed(errno, "send");
    if (wait_for(s, POLLIN, deadline) <= 0) return done("timeout");
    ssize_t n = recv(s, buf, sizeof buf, 0);
    if (n < 0) return failed(errno, "recv");
    if (n == (ssize_t)(sizeof msg - 1) && memcmp(buf, msg, n) == 0) return done("answered");
    return done("error:wrong-echo");
}
"#;

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// The connection was made and answered (TCP: the page's status line; UDP: the echo).
    Allowed,
    /// Nothing came back in time: a silent drop.
    Dropped,
    /// ECONNREFUSED: a TCP RST or an ICMP port unreachable.
    Refused,
    /// Anything else (ICMP host unreachable, a connection without an answer, an error).
    Other(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Allowed => f.write_str("allowed"),
            Outcome::Dropped => f.write_str("dropped"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Other(s) => f.write_str(s),
        }
    }
}

/// Where a probe runs.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// Host A (in its namespace).
    A,
    /// Host B.
    B,
    /// Host C: B's namespace, bound to C's address.
    C,
    /// Host D, on the engine's second interface.
    D,
    /// `docker exec NAME`.
    Container(&'static str),
}

/// Where it goes.
#[derive(Clone, Copy, Debug)]
enum To {
    /// The engine's address (as the outside host sees it) and a host port.
    Published(u16),
    /// A container's address and port.
    Container(&'static str, u16),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// One probe of the matrix, with its expected outcome and the rule that decides it.
struct Probe {
    from: Src,
    proto: Proto,
    to: To,
    expect: Outcome,
    why: &'static str,
}

const fn probe(from: Src, proto: Proto, to: To, expect: Outcome, why: &'static str) -> Probe {
    Probe {
        from,
        proto,
        to,
        expect,
        why,
    }
}

use Outcome::{Allowed, Dropped, Refused};
use Proto::{Tcp, Udp};
use Src::{A, B, C, D};
use To::Published;

/// The matrix, in the order it runs.
const PROBES: [Probe; 19] = [
    probe(
        A,
        Tcp,
        Published(8080),
        Dropped,
        "--ctorigdstport 8080 for A",
    ),
    probe(A, Tcp, Published(5432), Allowed, "A's subnet is in the set"),
    probe(A, Tcp, Published(8443), Allowed, "A: no outside chain"),
    probe(A, Udp, Published(5353), Allowed, "A: no outside chain"),
    probe(
        B,
        Tcp,
        Published(8080),
        Allowed,
        "iprange + multiport RETURN",
    ),
    probe(
        B,
        Tcp,
        Published(5432),
        Refused,
        "RETURN, then not in the set: RST",
    ),
    probe(B, Tcp, Published(8443), Refused, "outside chain: tcp-reset"),
    probe(
        B,
        Udp,
        Published(5353),
        Refused,
        "outside chain: port unreachable",
    ),
    probe(
        C,
        Tcp,
        Published(8080),
        Dropped,
        "outside the iprange: default deny",
    ),
    probe(
        C,
        Tcp,
        Published(5432),
        Dropped,
        "outside the iprange: default deny",
    ),
    probe(D, Tcp, Published(8080), Allowed, "-i dh-ext does not apply"),
    probe(D, Tcp, Published(5432), Refused, "not in the set: RST"),
    probe(D, Tcp, Published(8443), Allowed, "-i dh-ext does not apply"),
    probe(
        Src::Container("web"),
        Tcp,
        To::Container("db", 5432),
        Allowed,
        "web is in the set",
    ),
    probe(
        Src::Container("api"),
        Tcp,
        To::Container("db", 5432),
        Refused,
        "api is not in the set: RST",
    ),
    probe(
        Src::Container("db"),
        Tcp,
        To::Container("web", 80),
        Dropped,
        "db: multiport 80,443 DROP",
    ),
    probe(
        Src::Container("api"),
        Tcp,
        To::Container("web", 80),
        Allowed,
        "icc=true",
    ),
    probe(
        Src::Container("web"),
        Udp,
        To::Container("api", 5000),
        Refused,
        "web → udp 5000: REJECT",
    ),
    probe(
        Src::Container("db"),
        Udp,
        To::Container("api", 5000),
        Allowed,
        "icc=true",
    ),
];

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS…`, which must succeed.
fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args));
}

/// A command inside network namespace `ns` (`nsenter --net`, which keeps /sys and the
/// cgroup mounts as they are).
fn in_ns(ns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}")).args(args);
    c
}

/// A network namespace of the test's, deleted on drop (also when the test fails).
struct Netns(String);

impl Netns {
    fn add(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The outside world of the test: A and B/C behind the router on the engine's uplink, D on
/// a second interface.
struct Outside {
    a: Netns,
    bc: Netns,
    d: OutsideHost,
}

impl Outside {
    /// The namespace a probe from `from` runs in, the address it sends to for a published
    /// port, and the source address it binds (C only).
    fn place(&self, from: Src) -> (&str, &str, Option<&'static str>) {
        match from {
            A => (&self.a.0, HOST_IP, None),
            B => (&self.bc.0, HOST_IP, Some(B_IP)),
            C => (&self.bc.0, HOST_IP, Some(C_IP)),
            D => (&self.d.netns, &self.d.host_ip, None),
            Src::Container(_) => unreachable!("containers are not outside hosts"),
        }
    }
}

/// Builds the outside hosts: the router (the engine's built-in outside namespace, forwarding)
/// gets a veth to A's namespace and one to B's (which holds C's address too); the engine
/// routes A's and B's subnets via the router on its uplink. D is a plain [`OutsideHost`].
fn build_outside(engine: &DockerEngine) -> Outside {
    let router = engine.outside_netns.as_str();
    let a = Netns::add(format!("{}-ua", engine.netns));
    let bc = Netns::add(format!("{}-ub", engine.netns));
    for (ns, r_if, h_if, r_cidr, addrs, gw) in [
        (&a.0, "r-a", "a0", "10.1.0.1/24", vec!["10.1.0.2/24"], A_GW),
        (
            &bc.0,
            "r-b",
            "b0",
            "10.2.0.1/24",
            vec!["10.2.0.2/24", "10.2.0.50/24"],
            B_GW,
        ),
    ] {
        ip(&[
            "-n", router, "link", "add", r_if, "type", "veth", "peer", "name", h_if, "netns", ns,
        ]);
        ip(&["-n", router, "addr", "add", r_cidr, "dev", r_if]);
        ip(&["-n", router, "link", "set", r_if, "up"]);
        for cidr in addrs {
            ip(&["-n", ns, "addr", "add", cidr, "dev", h_if]);
        }
        ip(&["-n", ns, "link", "set", h_if, "up"]);
        ip(&["-n", ns, "route", "add", "default", "via", gw]);
    }
    run_ok(&mut in_ns(
        router,
        &["sysctl", "-qw", "net.ipv4.ip_forward=1"],
    ));
    for net in [A_NET, B_NET] {
        ip(&[
            "-n",
            &engine.netns,
            "route",
            "add",
            net,
            "via",
            ROUTER_IP,
            "dev",
            UPLINK,
        ]);
    }
    let d = OutsideHost::add(engine, 1);
    Outside { a, bc, d }
}

/// Compiles the probe (static, so it runs in the busybox image) into the engine's directory.
fn build_probe(engine: &DockerEngine) -> PathBuf {
    let src = engine.dir.join("bwprobe.c");
    let bin = engine.dir.join("bwprobe");
    std::fs::write(&src, PROBE_C).expect("writing bwprobe.c");
    let out = run(Command::new("cc")
        .args(["-static", "-Os", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src));
    assert!(
        out.status.success(),
        "cc -static bwprobe.c failed (needs libc6-dev's libc.a):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// A container's address.
fn addr_of(engine: &DockerEngine, name: &str) -> String {
    let a = engine
        .inspect(name, "{{.NetworkSettings.IPAddress}}")
        .trim()
        .to_string();
    assert!(!a.is_empty(), "{name} has no address");
    a
}

/// Everything a probe needs to know about the setup.
struct Setup<'a> {
    engine: &'a DockerEngine,
    outside: &'a Outside,
    probe_bin: &'a Path,
}

impl Setup<'_> {
    /// Runs `p` once: its outcome and the probe's raw line.
    fn run(&self, p: &Probe) -> (Outcome, String) {
        let proto = match p.proto {
            Tcp => "tcp",
            Udp => "udp",
        };
        let wait = WAIT_MS.to_string();
        let out = match (p.from, p.to) {
            (Src::Container(c), To::Container(t, port)) => {
                let addr = addr_of(self.engine, t);
                self.engine.docker(&[
                    "exec",
                    c,
                    PROBE_IN_CONTAINER,
                    proto,
                    &addr,
                    &port.to_string(),
                    &wait,
                ])
            }
            (from, To::Published(port)) => {
                let (ns, addr, src) = self.outside.place(from);
                let port = port.to_string();
                let mut args = vec![self.probe_bin.to_str().unwrap(), proto, addr, &port, &wait];
                args.extend(src);
                run(&mut in_ns(ns, &args))
            }
            (from, to) => panic!("no such probe: {from:?} → {to:?}"),
        };
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !line.is_empty(),
            "probe {} could not run: {}\n{line}\n{}",
            describe(p),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (classify(&line), line)
    }

    /// Runs `p` until it gives `want` or `timeout` passes (for the first probe after a
    /// policy change): the last outcome.
    fn run_until(&self, p: &Probe, want: &Outcome, timeout: Duration) -> (Outcome, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.run(p);
            if &r.0 == want || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The whole matrix, once.
    fn matrix(&self, phase: &str, t0: Instant) -> Vec<(Outcome, String)> {
        let r: Vec<_> = PROBES.iter().map(|p| self.run(p)).collect();
        println!("{} {phase}: {} probes run", at(t0), r.len());
        r
    }
}

/// The outcome a probe's line (`OUTCOME MS SPORT`) stands for; `held` (a connection
/// `bwprobe hold` keeps open) is allowed.
fn classify(line: &str) -> Outcome {
    let mut fields = line.split_whitespace();
    let what = fields.next().unwrap_or("");
    let ms: u64 = fields.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    match what {
        "open" | "answered" | "held" => Allowed,
        "timeout" => Dropped,
        "refused" if Duration::from_millis(ms) < REFUSED_WITHIN => Refused,
        "refused" => Outcome::Other(format!("refused late ({ms} ms)")),
        other => Outcome::Other(other.to_string()),
    }
}

/// The source port a probe's line reports (its third field), if it got one.
fn sport_of(line: &str) -> Option<u16> {
    line.split_whitespace()
        .nth(2)
        .and_then(|p| p.parse().ok())
        .filter(|&p| p != 0)
}

/// "A → :8080/tcp", "web → db:5432/tcp".
fn describe(p: &Probe) -> String {
    let proto = match p.proto {
        Tcp => "tcp",
        Udp => "udp",
    };
    let from = match p.from {
        Src::Container(c) => c.to_string(),
        other => format!("{other:?}"),
    };
    match p.to {
        To::Published(port) => format!("{from} → host:{port}/{proto}"),
        To::Container(c, port) => format!("{from} → {c}:{port}/{proto}"),
    }
}

/// The rule set, as `iptables` argument lists for the engine's namespace, in order.
fn rule_commands(web: &str, db: &str) -> Vec<Vec<String>> {
    let db32 = format!("{db}/32");
    let web32 = format!("{web}/32");
    let a32 = format!("{A_IP}/32");
    let not_a = format!("! -s {A_NET}");
    let lines: Vec<String> = vec![
        format!("-N {CHAIN}"),
        "-F DOCKER-USER".into(),
        "-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment replies -j RETURN".into(),
        format!("-A DOCKER-USER -s {a32} -p tcp -m conntrack --ctorigdstport 8080 --ctdir ORIGINAL -j DROP"),
        format!("-A DOCKER-USER -i {UPLINK} {not_a} -j {CHAIN}"),
        format!("-A DOCKER-USER -d {db32} -p tcp --dport 5432 -m set ! --match-set {SET} src -j REJECT --reject-with tcp-reset"),
        format!("-A DOCKER-USER -s {db32} -p tcp -m multiport --dports 80,443 -j DROP"),
        format!("-A DOCKER-USER -s {web32} -p udp --dport 5000 -j REJECT"),
        "-A DOCKER-USER -j RETURN".into(),
        format!("-A {CHAIN} -p tcp --dport 443 -j REJECT --reject-with tcp-reset"),
        format!("-A {CHAIN} -p udp --dport 5000 -j REJECT"),
        format!("-A {CHAIN} -p tcp -m iprange --src-range {B_RANGE} -m multiport --dports 80,5432 -j RETURN"),
        format!("-A {CHAIN} -m comment --comment OUTSIDE-DEFAULT-DENY -j DROP"),
    ];
    lines
        .iter()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// `iptables ARGS` in the engine's namespace.
fn iptables(engine: &DockerEngine, args: &[&str]) -> String {
    let mut all = vec!["iptables"];
    all.extend_from_slice(args);
    run_ok(&mut in_ns(&engine.netns, &all))
}

/// `ipset ARGS` in the engine's namespace.
fn ipset(engine: &DockerEngine, args: &[&str]) -> String {
    let mut all = vec!["ipset"];
    all.extend_from_slice(args);
    run_ok(&mut in_ns(&engine.netns, &all))
}

/// Packets counted by the kernel's DOCKER-USER and BW-OUTSIDE rules (`iptables -vnL`).
fn kernel_counters(engine: &DockerEngine) -> String {
    let mut s = iptables(engine, &["-vnL", "DOCKER-USER", "--line-numbers"]);
    s.push_str(&iptables(engine, &["-vnL", CHAIN, "--line-numbers"]));
    s
}

/// The two tests run one after the other (each has an engine of its own; together they
/// would share two cores, and their progress lines would interleave).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The engine (icc=true), the outside hosts, the probe, and the three containers, with every
/// server checked to answer from outside before any user rule. Dropped in field order: the
/// outside namespaces, then the engine.
struct Lab {
    outside: Outside,
    engine: DockerEngine,
    probe_bin: PathBuf,
    web: String,
    db: String,
}

impl Lab {
    fn start(t0: Instant) -> Lab {
        ensure_command("ipset", "ipset");
        let engine = DockerEngine::start(true);
        println!("{} engine up (icc=true), lab/busybox imported", at(t0));
        let outside = build_outside(&engine);
        let udpx = udp_helper::build(&engine);
        let probe_bin = build_probe(&engine);
        let mu = udp_helper::mount(&udpx);
        let mp = format!("{}:{PROBE_IN_CONTAINER}:ro", probe_bin.display());
        let vols = ["-v", mu.as_str(), "-v", mp.as_str()];
        let with = |more: &[&'static str]| -> Vec<&str> {
            let mut v = vols.to_vec();
            v.extend_from_slice(more);
            v
        };
        engine.run_container("web", &with(&["-p", "8080:80"]), &[]);
        engine.run_container(
            "db",
            &with(&["-p", "5432:5432"]),
            &["httpd", "-f", "-p", "5432", "-h", "/www"],
        );
        let api_cmd = format!("httpd -p 443 -h /www && exec {UDPX} serve 5000");
        engine.run_container(
            "api",
            &with(&["-p", "8443:443", "-p", "5353:5000/udp"]),
            &["sh", "-c", &api_cmd],
        );
        let (web, db, api) = (
            addr_of(&engine, "web"),
            addr_of(&engine, "db"),
            addr_of(&engine, "api"),
        );
        println!(
            "{} web {web} (-p 8080:80), db {db} (-p 5432:5432), api {api} (-p 8443:443, -p 5353:5000/udp)",
            at(t0)
        );
        let lab = Lab {
            outside,
            engine,
            probe_bin,
            web,
            db,
        };
        // Before any rule, every server answers from the outside (Docker's own rules admit
        // published ports): the topology works, and the servers are up.
        let setup = lab.setup();
        for (from, proto, port) in [
            (A, Tcp, 8080),
            (A, Tcp, 5432),
            (A, Tcp, 8443),
            (A, Udp, 5353),
            (C, Tcp, 8080),
            (D, Tcp, 8080),
        ] {
            let p = probe(from, proto, Published(port), Allowed, "no rules yet");
            let (o, line) = setup.run_until(&p, &Allowed, Duration::from_secs(10));
            assert_eq!(o, Allowed, "{} before any user rule: {line}", describe(&p));
        }
        let nf = run_ok(&mut in_ns(
            &lab.engine.netns,
            &["sysctl", "-n", "net.bridge.bridge-nf-call-iptables"],
        ));
        println!(
            "{} topology checked; engine namespace's bridge-nf-call-iptables = {}",
            at(t0),
            nf.trim()
        );
        lab
    }

    fn setup(&self) -> Setup<'_> {
        Setup {
            engine: &self.engine,
            outside: &self.outside,
            probe_bin: &self.probe_bin,
        }
    }
}

/// `iptables-save` and `ipset save` in the engine's namespace → `bridgewall rules import`:
/// the rules file it writes (mode 0600, Docker's chains and the nat table skipped with a
/// warning each, loading by itself).
fn import_rules(engine: &DockerEngine, t0: Instant) -> PathBuf {
    let saved = run_ok(&mut in_ns(&engine.netns, &["iptables-save"]));
    let sets = ipset(engine, &["save"]);
    let saved_file = engine.dir.join("iptables-save.txt");
    let sets_file = engine.dir.join("ipset-save.txt");
    let rules_file = engine.dir.join("user-rules.bw");
    std::fs::write(&saved_file, &saved).unwrap();
    std::fs::write(&sets_file, &sets).unwrap();
    let import = run(Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(["rules", "import", "--ipsets"])
        .arg(&sets_file)
        .arg("-o")
        .arg(&rules_file)
        .args(["--netns", &engine.netns])
        .env("NO_COLOR", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(std::fs::File::open(&saved_file).unwrap()));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&import.stdout),
        String::from_utf8_lossy(&import.stderr)
    );
    println!("{} bridgewall rules import:\n{report}", at(t0));
    assert!(
        import.status.success(),
        "bridgewall rules import failed ({}):\n{report}\niptables-save:\n{saved}\nipset save:\n{sets}",
        import.status
    );
    for chain in ["FORWARD", "DOCKER", "DOCKER-ISOLATION-STAGE-1"] {
        assert!(
            report.lines().any(|l| l.starts_with("warning:")
                && l.split(|c: char| c.is_whitespace() || c == ':' || c == ',')
                    .any(|w| w == chain)),
            "the import report does not name the skipped chain {chain}:\n{report}"
        );
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&rules_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the rules file's mode");
    // The written file loads by itself: it carries the sets (`run --rules FILE` reads them
    // from it; giving the same sets again with `--ipsets` defines them twice).
    let recheck = run(Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(["rules", "import", "--netns", &engine.netns])
        .env("NO_COLOR", "1")
        .env("RUST_LIB_BACKTRACE", "0")
        .stdin(std::fs::File::open(&rules_file).unwrap()));
    assert!(
        recheck.status.success(),
        "the imported rules file does not load by itself ({}):\n{}{}\nthe file:\n{}",
        recheck.status,
        String::from_utf8_lossy(&recheck.stdout),
        String::from_utf8_lossy(&recheck.stderr),
        std::fs::read_to_string(&rules_file).unwrap_or_default()
    );
    rules_file
}

#[test]
fn root_docker_user_rules_kernel_and_bridgewall_agree() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let lab = Lab::start(t0);
    let (engine, web, db) = (&lab.engine, &lab.web, &lab.db);
    let setup = lab.setup();

    // 1. The kernel path: the rules with iptables and ipset in the engine's namespace.
    ipset(engine, &["create", SET, "hash:net"]);
    ipset(engine, &["add", SET, &format!("{web}/32")]);
    ipset(engine, &["add", SET, A_NET]);
    for args in rule_commands(web, db) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        iptables(engine, &args);
    }
    println!(
        "{} kernel rules in place:\n{}",
        at(t0),
        iptables(engine, &["-S", "DOCKER-USER"]) + &iptables(engine, &["-S", CHAIN])
    );
    let kernel = setup.matrix("kernel path", t0);
    let kernel_counts = kernel_counters(engine);

    // 2. iptables-save and ipset save → bridgewall rules import.
    let rules_file = import_rules(engine, t0);

    // 3. The kernel's DOCKER-USER back to a lone RETURN (the chain and the set go too).
    iptables(engine, &["-F", "DOCKER-USER"]);
    iptables(engine, &["-A", "DOCKER-USER", "-j", "RETURN"]);
    iptables(engine, &["-F", CHAIN]);
    iptables(engine, &["-X", CHAIN]);
    ipset(engine, &["destroy", SET]);
    println!(
        "{} kernel DOCKER-USER flushed: {}",
        at(t0),
        iptables(engine, &["-S", "DOCKER-USER"]).replace('\n', "; ")
    );

    // 4. bridgewall with the imported rules (the file carries the sets as well).
    let bw = Bridgewall::start_taking_over_with(
        engine,
        3,
        &[OsStr::new("--rules"), rules_file.as_os_str()],
    );
    println!("{} bridgewall enforcing with the imported rules", at(t0));
    // The first probe that must pass, retried while the policy settles.
    let first = PROBES
        .iter()
        .position(|p| p.expect == Allowed)
        .expect("an allowed probe");
    let (o, line) = setup.run_until(&PROBES[first], &kernel[first].0, Duration::from_secs(15));
    assert_eq!(
        o,
        kernel[first].0,
        "{} under bridgewall never gave the kernel's outcome: {line}\nbridgewall:\n{}",
        describe(&PROBES[first]),
        bw.tail(40)
    );
    let bridgewall = setup.matrix("bridgewall", t0);
    let tail = bw.tail(60);
    let rule_lines: Vec<String> = bw
        .lines()
        .into_iter()
        .filter(|l| l.contains("user rules") || l.contains("warning") || l.contains("WARN"))
        .collect();
    let summary = bw.stop();

    // 5. The matrix, then the verdict.
    let mut table = String::from(
        "probe                              | rule that decides                    | expected | kernel                   | bridgewall\n",
    );
    let mut failures = Vec::new();
    for (i, p) in PROBES.iter().enumerate() {
        let (k, kl) = &kernel[i];
        let (b, bl) = &bridgewall[i];
        let (kernel_cell, bridgewall_cell) = (format!("{k} ({kl})"), format!("{b} ({bl})"));
        table.push_str(&format!(
            "{:<34} | {:<36} | {:<8} | {:<24} | {}\n",
            describe(p),
            p.why,
            p.expect.to_string(),
            kernel_cell,
            bridgewall_cell,
        ));
        if *k != p.expect {
            failures.push(format!(
                "kernel path: {} gave {k} ({kl}), expected {} ({})",
                describe(p),
                p.expect,
                p.why
            ));
        }
        if b != k {
            failures.push(format!(
                "bridgewall: {} gave {b} ({bl}), the kernel {k} ({kl}); rule: {}",
                describe(p),
                p.why
            ));
        }
    }
    println!("{} the matrix:\n{table}", at(t0));
    println!("kernel counters after the kernel phase:\n{kernel_counts}");
    println!("bridgewall's lines about the rules: {rule_lines:#?}");
    println!("bridgewall's summary:\n{summary}");
    assert!(
        failures.is_empty(),
        "{} probe(s) differ:\n  {}\nimported rules file:\n{}\nbridgewall's last lines before the stop:\n{tail}",
        failures.len(),
        failures.join("\n  "),
        std::fs::read_to_string(&rules_file).unwrap_or_default()
    );
    println!("{} passed", at(t0));
}

// ---------------------------------------------------------------------------------------
// The second test: LOG, -m limit and -m connlimit.

/// D's own address (on the engine's second interface, `dh-ext1`).
const D_IP: &str = "198.18.1.2";
/// Where the kernel's switch for LOG in network namespaces other than the root's lives.
const NF_LOG_ALL_NETNS: &str = "/proc/sys/net/netfilter/nf_log_all_netns";
/// How many connections C holds open to api's published 443 (the connlimit's N).
const HELD: usize = 2;

/// `net.netfilter.nf_log_all_netns` set to 1 (without it the kernel's LOG target writes
/// nothing for a namespace other than the root's), its old value back on drop.
struct KernelLogInNetns {
    old: String,
}

impl KernelLogInNetns {
    fn enable() -> Result<KernelLogInNetns, String> {
        let old = std::fs::read_to_string(NF_LOG_ALL_NETNS)
            .map_err(|e| format!("reading {NF_LOG_ALL_NETNS}: {e}"))?
            .trim()
            .to_string();
        std::fs::write(NF_LOG_ALL_NETNS, "1")
            .map_err(|e| format!("writing 1 to {NF_LOG_ALL_NETNS}: {e}"))?;
        Ok(KernelLogInNetns { old })
    }
}

impl Drop for KernelLogInNetns {
    fn drop(&mut self) {
        let _ = std::fs::write(NF_LOG_ALL_NETNS, &self.old);
    }
}

/// The kernel log's lines with `prefix` (`dmesg`).
fn kernel_log_lines(prefix: &str) -> Vec<String> {
    run_ok(&mut Command::new("dmesg"))
        .lines()
        .filter(|l| l.contains(prefix))
        .map(str::to_string)
        .collect()
}

/// `bwprobe hold` in an outside host's namespace: connections held open until
/// [`Held::release`]; killed on drop (its connections die with it).
struct Held {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
    /// One line per connection: `held MS SPORT`, or how it failed.
    lines: Vec<String>,
}

impl Held {
    /// Opens `count` connections from `from` to published `port`; returns once they are
    /// all made (or failed).
    fn start(setup: &Setup, from: Src, port: u16, count: usize) -> Held {
        let (ns, addr, src) = setup.outside.place(from);
        let (port, count, wait) = (port.to_string(), count.to_string(), WAIT_MS.to_string());
        let mut args = vec![
            setup.probe_bin.to_str().unwrap(),
            "hold",
            addr,
            &port,
            &count,
            &wait,
        ];
        args.extend(src);
        let mut child = in_ns(ns, &args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("starting bwprobe hold");
        let stdout = child.stdout.take().expect("bwprobe hold's stdout");
        let mut held = Held {
            out: std::io::BufReader::new(stdout),
            child,
            lines: Vec::new(),
        };
        loop {
            let line = held.read_line();
            if line == "ready" {
                return held;
            }
            held.lines.push(line);
        }
    }

    fn read_line(&mut self) -> String {
        use std::io::BufRead as _;
        let mut line = String::new();
        let n = self.out.read_line(&mut line).expect("reading bwprobe hold");
        assert!(
            n > 0,
            "bwprobe hold ended early; its lines: {:?}",
            self.lines
        );
        line.trim().to_string()
    }

    /// Closes them (`fin`: an orderly close, both FINs exchanged; `rst`: a RST each) and
    /// waits for the helper: its `closed MS` line.
    fn release(&mut self, how: &str) -> String {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("bwprobe hold's stdin");
        writeln!(stdin, "{how}").expect("telling bwprobe hold to close");
        stdin.flush().expect("telling bwprobe hold to close");
        let line = self.read_line();
        let _ = self.child.wait();
        line
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One probe of the second test as it ran: what it is, what it should give, whether the
/// LOG rule should log it, and what it gave.
struct Row {
    what: String,
    why: &'static str,
    expect: Outcome,
    logged: bool,
    /// Its source address, which with its source port finds its LOG lines.
    src: String,
    got: Outcome,
    line: String,
}

impl Row {
    /// The lines of `log` with `prefix` about this probe (its source address and port).
    fn log_lines<'l>(&self, log: &'l [String], prefix: &str) -> Vec<&'l String> {
        let Some(sport) = sport_of(&self.line) else {
            return Vec::new();
        };
        let (src, spt) = (format!("SRC={} ", self.src), format!("SPT={sport} "));
        log.iter()
            .filter(|l| l.contains(prefix) && l.contains(&src) && l.contains(&spt))
            .collect()
    }
}

/// The second test's rules, as `iptables` argument lists (`prefix` has a space: one
/// argument), in order.
fn limit_rule_commands(prefix: &str) -> Vec<Vec<String>> {
    let words = |l: String| -> Vec<String> { l.split_whitespace().map(str::to_string).collect() };
    let b32 = format!("{B_IP}/32");
    let mut log = words(format!(
        "-A DOCKER-USER -i {UPLINK} -p tcp -m multiport --dports 80,443 -j LOG --log-prefix"
    ));
    log.push(prefix.to_string());
    vec![
        words("-F DOCKER-USER".into()),
        words("-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".into()),
        words(format!(
            "-A DOCKER-USER -p tcp --dport 443 -m connlimit --connlimit-above {HELD} --connlimit-mask 32 -j REJECT --reject-with tcp-reset"
        )),
        log,
        words(format!(
            "-A DOCKER-USER -s {b32} -p tcp --dport 80 -m conntrack --ctstate NEW -m limit --limit 1/min --limit-burst 2 -j ACCEPT"
        )),
        words(format!("-A DOCKER-USER -s {b32} -p tcp --dport 80 -j DROP")),
        words("-A DOCKER-USER -j RETURN".into()),
    ]
}

/// One step of the second test.
enum Step {
    /// A TCP probe: from, to, a suffix for its name, the rule that decides, the expected
    /// outcome, and whether the LOG rule logs it.
    Probe(Src, To, &'static str, &'static str, Outcome, bool),
    /// C opens [`HELD`] connections to host:8443 and keeps them open (a row each: allowed,
    /// logged).
    Hold,
    /// C closes them in order, FIN both ways.
    Release,
}

const fn tcp(
    from: Src,
    to: To,
    nth: &'static str,
    why: &'static str,
    expect: Outcome,
    logged: bool,
) -> Step {
    Step::Probe(from, to, nth, why, expect, logged)
}

/// The second test's steps, in the order they run. The LOG rule's own rate (10 lines at
/// once) is not reached: at most 9 probes are logged.
const LIMIT_STEPS: [Step; 12] = [
    tcp(
        D,
        Published(8080),
        "",
        "-i dh-ext: D not logged",
        Allowed,
        false,
    ),
    tcp(
        A,
        Published(8080),
        "",
        "LOG, then Docker's rules",
        Allowed,
        true,
    ),
    tcp(
        A,
        Published(8443),
        "",
        "connlimit: 1 open ≤ 2; LOG",
        Allowed,
        true,
    ),
    tcp(
        Src::Container("api"),
        To::Container("web", 80),
        "",
        "from a container: not logged",
        Allowed,
        false,
    ),
    tcp(
        B,
        Published(8080),
        " #1",
        "limit: burst 1 of 2; LOG",
        Allowed,
        true,
    ),
    tcp(
        B,
        Published(8080),
        " #2",
        "limit: burst 2 of 2; LOG",
        Allowed,
        true,
    ),
    tcp(
        B,
        Published(8080),
        " #3",
        "limit spent: DROP; LOG",
        Dropped,
        true,
    ),
    Step::Hold,
    tcp(
        C,
        Published(8443),
        " (2 held)",
        "connlimit-above 2: RST, before LOG",
        Refused,
        false,
    ),
    tcp(
        C,
        Published(8080),
        " (2 held)",
        "connlimit: port 443 only; LOG",
        Allowed,
        true,
    ),
    Step::Release,
    tcp(
        C,
        Published(8443),
        " (closed)",
        "closed ones do not count; LOG",
        Allowed,
        true,
    ),
];

/// Runs [`LIMIT_STEPS`] on whichever path enforces the rules now. The first probe (D, which
/// no rule names) is retried up to `settle` while a new policy settles; the others run once
/// (a retry would spend the limit's tokens).
fn limits_phase(lab: &Lab, settle: Duration, t0: Instant, phase: &str) -> Vec<Row> {
    let setup = lab.setup();
    let src_of = |from: Src| -> String {
        match from {
            A => A_IP.into(),
            B => B_IP.into(),
            C => C_IP.into(),
            D => D_IP.into(),
            Src::Container(c) => addr_of(&lab.engine, c),
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    let mut held = None;
    for step in &LIMIT_STEPS {
        match step {
            Step::Probe(from, to, nth, why, expect, logged) => {
                let p = probe(*from, Tcp, *to, expect.clone(), why);
                let (got, line) = if rows.is_empty() {
                    setup.run_until(&p, &Allowed, settle)
                } else {
                    setup.run(&p)
                };
                rows.push(Row {
                    what: format!("{}{nth}", describe(&p)),
                    why,
                    expect: expect.clone(),
                    logged: *logged,
                    src: src_of(*from),
                    got,
                    line,
                });
            }
            Step::Hold => {
                let h = Held::start(&setup, C, 8443, HELD);
                for (i, line) in h.lines.iter().enumerate() {
                    rows.push(Row {
                        what: format!("C holds host:8443/tcp #{}", i + 1),
                        why: "connlimit: ≤ 2 open; LOG",
                        expect: Allowed,
                        logged: true,
                        src: C_IP.into(),
                        got: classify(line),
                        line: line.clone(),
                    });
                }
                held = Some(h);
            }
            Step::Release => {
                let mut h: Held = held.take().expect("Hold before Release");
                let closed = h.release("fin");
                println!(
                    "{} {phase}: C closed its held connections: {closed}",
                    at(t0)
                );
            }
        }
    }
    println!("{} {phase}: {} probes run", at(t0), rows.len());
    rows
}

#[test]
fn root_docker_user_log_limit_connlimit_kernel_and_bridgewall_agree() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let lab = Lab::start(t0);
    let engine = &lab.engine;
    // Unique to this run: the kernel log is the whole machine's.
    let prefix = format!("bw{}-in: ", std::process::id());
    let kernel_log = KernelLogInNetns::enable();
    match &kernel_log {
        Ok(g) => println!(
            "{} nf_log_all_netns=1 (was {}): the kernel's LOG lines are compared too",
            at(t0),
            g.old
        ),
        Err(e) => println!(
            "{} {e}: only bridgewall's LOG lines are compared with the matrix",
            at(t0)
        ),
    }

    // 1. The kernel path.
    for args in limit_rule_commands(&prefix) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        iptables(engine, &args);
    }
    println!(
        "{} kernel rules in place:\n{}",
        at(t0),
        iptables(engine, &["-S", "DOCKER-USER"])
    );
    let kernel = limits_phase(&lab, Duration::from_secs(10), t0, "kernel path");
    let kernel_counts = iptables(engine, &["-vnL", "DOCKER-USER", "--line-numbers"]);
    let klog = match &kernel_log {
        Ok(_) => Some(kernel_log_lines(&prefix)),
        Err(_) => None,
    };

    // 2. iptables-save → bridgewall rules import.
    let rules_file = import_rules(engine, t0);

    // 3. The kernel's DOCKER-USER back to a lone RETURN.
    iptables(engine, &["-F", "DOCKER-USER"]);
    iptables(engine, &["-A", "DOCKER-USER", "-j", "RETURN"]);
    println!(
        "{} kernel DOCKER-USER flushed: {}",
        at(t0),
        iptables(engine, &["-S", "DOCKER-USER"]).replace('\n', "; ")
    );

    // 4. bridgewall with the imported rules, its LOG lines shown.
    let mut bw = Bridgewall::start_taking_over_with(
        engine,
        3,
        &[
            OsStr::new("--rules"),
            rules_file.as_os_str(),
            OsStr::new("--log"),
            OsStr::new("warn,bridgewall::log=info"),
        ],
    );
    println!("{} bridgewall enforcing with the imported rules", at(t0));
    let bridgewall = limits_phase(&lab, Duration::from_secs(15), t0, "bridgewall");
    let status = bw.interrupt();
    let lines = bw.lines();
    assert!(
        status.is_some_and(|s| s.success()),
        "bridgewall run did not stop cleanly ({status:?}):\n{}",
        lines.join("\n")
    );
    let summary = bw.summary();
    let blog: Vec<String> = lines
        .iter()
        .filter(|l| l.contains(&prefix) && l.contains("IN=port"))
        .cloned()
        .collect();

    // 5. The matrix, then the verdict.
    let mut failures = Vec::new();
    let mut table = String::from(
        "probe                              | rule that decides                     | expected | kernel                      | bridgewall                  | logged: expected kernel bridgewall\n",
    );
    let yes = |b: bool| if b { "yes" } else { "no" };
    for (k, b) in kernel.iter().zip(&bridgewall) {
        assert_eq!(k.what, b.what, "both paths run the same probes");
        let k_logged = klog.as_ref().map(|l| !k.log_lines(l, &prefix).is_empty());
        let b_lines = b.log_lines(&blog, &prefix);
        table.push_str(&format!(
            "{:<34} | {:<37} | {:<8} | {:<27} | {:<27} | {:<3} {:<3} {}\n",
            k.what,
            k.why,
            k.expect.to_string(),
            format!("{} ({})", k.got, k.line),
            format!("{} ({})", b.got, b.line),
            yes(k.logged),
            k_logged.map_or("-", yes),
            yes(!b_lines.is_empty()),
        ));
        if k.got != k.expect {
            failures.push(format!(
                "kernel path: {} gave {} ({}), expected {} ({})",
                k.what, k.got, k.line, k.expect, k.why
            ));
        }
        if b.got != k.got {
            failures.push(format!(
                "bridgewall: {} gave {} ({}), the kernel {} ({}); rule: {}",
                b.what, b.got, b.line, k.got, k.line, b.why
            ));
        }
        if k_logged.is_some_and(|l| l != k.logged) {
            failures.push(format!(
                "kernel path: {} {} by the LOG rule ({}); expected {}",
                k.what,
                if k.logged { "not logged" } else { "logged" },
                k.line,
                if k.logged { "logged" } else { "not logged" },
            ));
        }
        if b_lines.is_empty() == b.logged {
            failures.push(format!(
                "bridgewall: {} {} by the LOG rule ({}); expected {}",
                b.what,
                if b.logged { "not logged" } else { "logged" },
                b.line,
                if b.logged { "logged" } else { "not logged" },
            ));
        }
        // Logged once (the first packet of its flow), about web's or api's port as DNATed.
        let dst = format!(" DPT={} ", if b.what.contains("8443") { 443 } else { 80 });
        if b.logged && !(b_lines.len() == 1 && b_lines[0].contains(&dst)) {
            failures.push(format!(
                "bridgewall: {}: want one LOG line with{dst}: {b_lines:#?}",
                b.what
            ));
        }
    }
    // The stop report's "LOG rules" table: the packets that reached the rule are the logged
    // probes (one judged packet each).
    let want_reached = bridgewall.iter().filter(|r| r.logged).count();
    let reached = summary
        .lines()
        .skip_while(|l| !l.starts_with("LOG rules"))
        .find(|l| l.contains("--log-prefix"))
        .and_then(|l| l.split('┆').nth(1))
        .and_then(|c| c.trim().parse::<usize>().ok());
    if reached != Some(want_reached) {
        failures.push(format!(
            "bridgewall's stop report: LOG rule reached by {reached:?} packets, want {want_reached}"
        ));
    }
    let counts_line = lines.iter().find(|l| l.starts_with("user rules:"));
    if !counts_line.is_some_and(|l| l.contains("1 LOG rules, 1 rate-limited rules")) {
        failures.push(format!(
            "bridgewall's rule counts: {counts_line:?}, want 1 LOG rule and 1 rate-limited rule"
        ));
    }
    println!("{} the matrix:\n{table}", at(t0));
    println!("kernel counters after the kernel phase:\n{kernel_counts}");
    match &klog {
        Some(l) => println!("kernel LOG lines ({}):\n{}", l.len(), l.join("\n")),
        None => println!("kernel LOG lines: not available"),
    }
    println!(
        "bridgewall LOG lines ({}):\n{}",
        blog.len(),
        blog.join("\n")
    );
    println!("bridgewall's summary:\n{summary}");
    assert!(
        failures.is_empty(),
        "{} difference(s):\n  {}\nimported rules file:\n{}\nbridgewall's last lines:\n{}",
        failures.len(),
        failures.join("\n  "),
        std::fs::read_to_string(&rules_file).unwrap_or_default(),
        lines[lines.len().saturating_sub(60)..].join("\n")
    );
    println!("{} passed", at(t0));
}
