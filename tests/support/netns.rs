//! Looking into the namespaces the lab tests build: links, XDP programs, pings.
use std::process::Command;

/// Runs `ip args…` and returns its stdout; panics (naming the call) when it fails.
pub(crate) fn ip_out(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2) runs");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Links of `netns` with an XDP program attached.
pub(crate) fn xdp_links(netns: &str) -> Vec<String> {
    ip_out(&["-n", netns, "-o", "link", "show"])
        .lines()
        .filter(|l| l.contains(" xdp") || l.contains("prog/xdp"))
        .map(str::to_string)
        .collect()
}

/// One ICMP echo from `netns` to `ip` (busybox's ping: `.ci/run` installs busybox-static),
/// waiting up to `wait_secs` for the answer.
pub(crate) fn ping(netns: &str, ip: &str, wait_secs: u32) -> bool {
    let wait = wait_secs.to_string();
    let out = Command::new("ip")
        .args([
            "netns", "exec", netns, "busybox", "ping", "-c", "1", "-W", &wait, ip,
        ])
        .output()
        .expect("ip netns exec runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("exec of") && !err.contains("applet not found"),
        "ping could not run (install busybox-static): {err}"
    );
    out.status.success()
}

/// A state directory for a takeover (or anything a test writes), named uniquely and removed
/// on drop, also when the test fails.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/bw-<what>-<pid>-<n>`.
    pub(crate) fn new(what: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "bw-{what}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)
            .unwrap_or_else(|e| panic!("creating the directory {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
