//! The `net.ipv4.ip_forward` switch. Docker needs it on (published ports and container
//! traffic to the outside are routed by the host), so bridgewall checks it at start. Also
//! [`set_net_sysctl`], for the per-namespace `net.*` settings of namespaces we built.
//! `/proc/sys/net` shows the namespace of the thread that opens the file, so these functions
//! run inside whatever namespace the calling thread is in (see [`super::Netns::run`]).
use std::fs;

use super::NetlinkError;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether IPv4 forwarding is on in the calling thread's network namespace.
pub fn ip_forward_enabled() -> Result<bool, NetlinkError> {
    let text = fs::read_to_string(IP_FORWARD)
        .map_err(|e| NetlinkError::io(format!("reading {IP_FORWARD}"), e))?;
    Ok(text.trim() == "1")
}

/// Turns IPv4 forwarding on or off in the calling thread's network namespace (the lab does
/// this inside its own host namespace only).
pub fn set_ip_forward(on: bool) -> Result<(), NetlinkError> {
    fs::write(IP_FORWARD, if on { "1\n" } else { "0\n" })
        .map_err(|e| NetlinkError::io(format!("writing {IP_FORWARD}"), e))
}

/// Writes `value` to the sysctl `net/KEY...` (a path under `/proc/sys`, e.g.
/// `net/ipv6/conf/all/disable_ipv6`) in the calling thread's network namespace. Only
/// `net/` keys are accepted: most of those are per namespace, which is what makes this safe
/// to call from a thread inside a namespace we built; other keys would change the host.
pub fn set_net_sysctl(key: &str, value: &str) -> Result<(), NetlinkError> {
    let op = format!("writing /proc/sys/{key}");
    if !key.starts_with("net/") || key.split('/').any(|part| part.is_empty() || part == "..") {
        return Err(NetlinkError::Unexpected {
            op,
            msg: "only keys under net/ are written".into(),
        });
    }
    fs::write(format!("/proc/sys/{key}"), value).map_err(|e| NetlinkError::io(op, e))
}
