//! Network namespaces named uniquely (pid + counter) and deleted on drop, with their veths:
//! the setting of the root-only AF_XDP tests and of the benches on live interfaces. Every
//! call runs `ip` (iproute2) and panics when it fails — this is test tooling.
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `ip args…` and panics with its stderr when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `ip args…` and returns its stdout (panics on failure).
pub fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace `bwt-<pid>-<n>-<tag>`, deleted (with every interface in it) on drop.
pub struct Netns {
    /// The namespace's name, as `ip netns` knows it.
    pub name: String,
}

impl Netns {
    /// Creates the namespace with loopback up and IPv6 off (no router solicitations in the
    /// traffic under test).
    pub fn new(tag: &str) -> Self {
        let name = format!(
            "bwt-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            tag
        );
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
            ])
            .output();
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns.name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.disable_ipv6=1",
            ])
            .output();
        ns
    }

    /// Runs a command inside the namespace (panics on failure).
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip_out(&args)
    }

    /// `ip -n NAME args…`.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        ip_out(&full)
    }

    /// Runs `f` on a new thread that has entered this namespace (the caller's thread stays put).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            let _back = crate::afxdp::enter_netns(&name).expect("enter netns");
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            eprintln!("warning: could not delete netns {}: {out:?}", self.name);
        }
    }
}

/// Creates a veth pair `here_if` (in `here`) ↔ `there_if` (in `there`) directly inside the
/// namespaces — it never exists in the root namespace — and sets both up.
pub fn veth(here: &Netns, here_if: &str, there: &Netns, there_if: &str) {
    ip(&[
        "-n",
        &here.name,
        "link",
        "add",
        "name",
        here_if,
        "type",
        "veth",
        "peer",
        "name",
        there_if,
        "netns",
        &there.name,
    ]);
    here.ip(&["link", "set", here_if, "up"]);
    there.ip(&["link", "set", there_if, "up"]);
}

/// Two end namespaces A and B and a middle M: `A:va — M:pa`, `B:vb — M:pb`, with A at
/// `10.<net>.0.1/24` and B at `10.<net>.0.2/24` (one L2 segment once M joins pa and pb).
/// Field order makes M (and whatever runs in it) go first on drop.
pub struct Trio {
    /// The middle namespace, where the dataplane runs (interfaces `pa` and `pb`).
    pub m: Netns,
    /// End A (interface `va`).
    pub a: Netns,
    /// End B (interface `vb`).
    pub b: Netns,
    /// A's IPv4 address.
    pub ip_a: String,
    /// B's IPv4 address.
    pub ip_b: String,
}

impl Trio {
    /// Creates the three namespaces, their veths and addresses.
    #[allow(clippy::new_without_default)] // creating namespaces is no default value
    pub fn new() -> Self {
        let m = Netns::new("m");
        let a = Netns::new("a");
        let b = Netns::new("b");
        let net = 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 150;
        let ip_a = format!("10.{net}.0.1");
        let ip_b = format!("10.{net}.0.2");
        veth(&m, "pa", &a, "va");
        veth(&m, "pb", &b, "vb");
        a.ip(&["addr", "add", &format!("{ip_a}/24"), "dev", "va"]);
        b.ip(&["addr", "add", &format!("{ip_b}/24"), "dev", "vb"]);
        Self {
            m,
            a,
            b,
            ip_a,
            ip_b,
        }
    }
}
