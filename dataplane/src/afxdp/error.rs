//! Errors of the AF_XDP layer: each names the syscall that failed, its errno, and what the
//! operator can do about it.
use std::io;
use std::time::Duration;

/// Native XDP on a veth caps the peer's MTU at this value (veth_xdp_set: a frame must fit
/// one page with XDP headroom).
pub const VETH_NATIVE_XDP_MAX_MTU: u32 = 3506;

/// What can go wrong while setting up or driving an AF_XDP port.
#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    /// The process lacks privileges; AF_XDP and bpf() need them.
    #[error(
        "{call} failed with {errno_name} (errno {errno}): permission denied — run as root or grant CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF"
    )]
    Permission {
        /// The syscall (and what it was doing).
        call: &'static str,
        /// Raw errno.
        errno: i32,
        /// Symbolic errno.
        errno_name: &'static str,
    },
    /// The kernel was built without AF_XDP sockets.
    #[error(
        "{call} failed with EAFNOSUPPORT: this kernel has no AF_XDP sockets — it needs CONFIG_XDP_SOCKETS=y (Linux ≥ 5.10)"
    )]
    NoAfXdp {
        /// The syscall.
        call: &'static str,
    },
    /// The interface queue stayed busy: a socket that just closed still holds it, or another
    /// process has bound it.
    #[error(
        "bind of {ifname} queue {queue} failed with EBUSY for {waited:?} ({attempts} attempts) — another AF_XDP socket holds the queue; if one just closed, retry in a few seconds"
    )]
    Busy {
        /// Interface name.
        ifname: String,
        /// Queue id.
        queue: u32,
        /// Attempts made.
        attempts: u32,
        /// Time spent retrying.
        waited: Duration,
    },
    /// Native XDP refused because the veth peer's MTU is too large.
    #[error(
        "attaching native XDP to {ifname} failed with ERANGE: its veth peer's MTU is above {VETH_NATIVE_XDP_MAX_MTU} — lower it (e.g. `ip link set dev <peer> mtu 1500`) or use generic (SKB) mode"
    )]
    PeerMtuTooLarge {
        /// Interface name.
        ifname: String,
    },
    /// The interface's own MTU is too large for native XDP on a veth.
    #[error(
        "{ifname} has MTU {mtu}, above {VETH_NATIVE_XDP_MAX_MTU}, the largest native XDP on veth accepts — lower it (e.g. `ip link set dev {ifname} mtu 1500`) or use generic (SKB) mode"
    )]
    MtuTooLarge {
        /// Interface name.
        ifname: String,
        /// Its MTU.
        mtu: u32,
    },
    /// Another XDP program is already attached to the interface.
    #[error(
        "attaching XDP to {ifname} failed with {errno_name}: another XDP program is attached (maybe a leftover netlink-attached one) — remove it with `ip link set dev {ifname} xdp off` (or xdpgeneric off)"
    )]
    AlreadyAttached {
        /// Interface name.
        ifname: String,
        /// Symbolic errno.
        errno_name: &'static str,
    },
    /// No interface of that name in the calling thread's network namespace.
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    /// The verifier rejected the redirect program.
    #[error("BPF_PROG_LOAD failed with {errno_name}: the verifier rejected the program: {log}")]
    Verifier {
        /// Symbolic errno.
        errno_name: &'static str,
        /// The verifier log.
        log: String,
    },
    /// A configuration value the kernel would refuse.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// Any other failing syscall.
    #[error("{call} failed with {errno_name} (errno {errno}): {source}")]
    Sys {
        /// The syscall.
        call: &'static str,
        /// Raw errno.
        errno: i32,
        /// Symbolic errno.
        errno_name: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl AfXdpError {
    /// Classifies the current `errno` after `call` failed.
    pub(crate) fn last(call: &'static str) -> Self {
        Self::from_errno(call, io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }

    /// Classifies `errno` from `call` into the variant that says what to do.
    pub fn from_errno(call: &'static str, errno: i32) -> Self {
        let errno_name = errno_name(errno);
        match errno {
            libc::EPERM | libc::EACCES => Self::Permission {
                call,
                errno,
                errno_name,
            },
            libc::EAFNOSUPPORT => Self::NoAfXdp { call },
            _ => Self::Sys {
                call,
                errno,
                errno_name,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// The errno behind this error, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Permission { errno, .. } | Self::Sys { errno, .. } => Some(*errno),
            Self::NoAfXdp { .. } => Some(libc::EAFNOSUPPORT),
            Self::Busy { .. } => Some(libc::EBUSY),
            Self::PeerMtuTooLarge { .. } | Self::MtuTooLarge { .. } => Some(libc::ERANGE),
            _ => None,
        }
    }
}

/// Symbolic name of the errnos this layer meets, for messages people can search for.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::ENOENT => "ENOENT",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENETDOWN => "ENETDOWN",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        _ => "errno",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn afxdp_errors_say_what_to_do() {
        let e = AfXdpError::from_errno("socket(AF_XDP)", libc::EPERM);
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        let e = AfXdpError::from_errno("socket(AF_XDP)", libc::EAFNOSUPPORT);
        assert!(e.to_string().contains("CONFIG_XDP_SOCKETS"), "{e}");
        let e = AfXdpError::PeerMtuTooLarge {
            ifname: "veth0".into(),
        };
        assert!(
            e.to_string().contains("3506") && e.to_string().contains("mtu 1500"),
            "{e}"
        );
        let e = AfXdpError::from_errno("bind", libc::EINVAL);
        assert!(e.to_string().contains("bind failed with EINVAL"), "{e}");
        assert_eq!(e.errno(), Some(libc::EINVAL));
    }
}
