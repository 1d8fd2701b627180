//! Errors of Docker tracking, worded for the person running bridgewall.
use crate::netlink::NetlinkError;

use super::parse::ParseError;

/// A failure to reach, understand or follow the engine.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// `--docker-host`/`DOCKER_HOST` is not an address bridgewall can use.
    #[error(
        "unsupported Docker address {0:?}: use unix:///path/to/docker.sock, /path/to/docker.sock or tcp://host:port"
    )]
    BadAddress(String),
    /// The engine cannot be reached at the address tried.
    #[error("cannot reach the Docker engine at {address}: {reason}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why, in words (the underlying error included).
        reason: String,
    },
    /// The socket exists but we may not open it.
    #[error(
        "permission denied on the Docker socket {address} (run as root or as a member of the docker group)"
    )]
    PermissionDenied {
        /// The address tried.
        address: String,
    },
    /// The engine's API version could not be agreed on.
    #[error("Docker engine at {address}: API version problem: {reason}")]
    ApiVersion {
        /// The address tried.
        address: String,
        /// What went wrong (the engine's own message when it sent one).
        reason: String,
    },
    /// The network to follow does not exist.
    #[error(
        "the Docker engine has no network {0:?} (bridgewall follows Docker's default \"bridge\" network)"
    )]
    NoSuchNetwork(String),
    /// A request failed once connected.
    #[error("Docker engine request {what} failed: {source}")]
    Request {
        /// Which request.
        what: String,
        /// The client's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The event stream ended (engine stopped or restarted).
    #[error("the Docker event stream ended")]
    StreamEnded,
    /// An inspect answer did not read as documented.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// Finding a container's host-side veth failed.
    #[error("container {container}: finding its host-side veth: {source}")]
    Veth {
        /// The container's name.
        container: String,
        /// The netlink or namespace error.
        #[source]
        source: NetlinkError,
    },
    /// The bridge's namespace could not be opened or read.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}
