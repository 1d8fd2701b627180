//! The error type of the netlink helpers: says which operation failed on what, and turns the
//! kernel's EPERM into the advice a person needs ("run as root").
use std::io;

/// A failed namespace or netlink operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel said EPERM/EACCES: the caller lacks CAP_NET_ADMIN / CAP_SYS_ADMIN.
    #[error("{op}: permission denied (bridgewall needs root, or CAP_NET_ADMIN and CAP_SYS_ADMIN)")]
    PermissionDenied {
        /// What was being done.
        op: String,
    },
    /// A link looked up by name or index does not exist in the namespace asked.
    #[error("no interface {what} in {netns}")]
    NoSuchLink {
        /// The name or index looked for.
        what: String,
        /// Which namespace was searched.
        netns: String,
    },
    /// Any other kernel or I/O error, with the operation that hit it.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A netlink reply that did not carry what the request implies (a kernel or library bug).
    #[error("{op}: {msg}")]
    Unexpected {
        /// What was being done.
        op: String,
        /// What was missing or odd.
        msg: String,
    },
}

impl NetlinkError {
    /// Wraps an I/O error, recognising permission errors.
    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        let op = op.into();
        match source.kind() {
            io::ErrorKind::PermissionDenied => NetlinkError::PermissionDenied { op },
            _ => NetlinkError::Io { op, source },
        }
    }

    /// Wraps an errno from a nix call.
    pub(crate) fn errno(op: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Self::io(op, io::Error::from_raw_os_error(errno as i32))
    }

    /// Wraps an rtnetlink error; a kernel NACK keeps its errno so EPERM reads as such.
    pub(crate) fn rtnl(op: impl Into<String>, err: rtnetlink::Error) -> Self {
        match err {
            rtnetlink::Error::NetlinkError(msg) => Self::io(op, msg.to_io()),
            other => NetlinkError::Unexpected {
                op: op.into(),
                msg: other.to_string(),
            },
        }
    }

    /// True when the kernel refused for lack of privilege.
    pub fn is_permission(&self) -> bool {
        matches!(self, NetlinkError::PermissionDenied { .. })
    }
}
