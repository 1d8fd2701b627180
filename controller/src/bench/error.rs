//! The one error type of the harness.
use std::path::PathBuf;

/// Why a benchmark run (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The harness builds namespaces and attaches XDP programs: it needs root.
    #[error("bridgewall bench needs root (it builds network namespaces and attaches XDP programs)")]
    NotRoot,
    /// An external program the harness measures (iptables-restore, iptables, iperf3) failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr, or why it could not run.
        detail: String,
    },
    /// Building or configuring the topology over netlink failed (namespaces, links,
    /// addresses, routes, neighbours, sysctls).
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The AF_XDP layer or the dataplane refused.
    #[error("dataplane: {0}")]
    Dataplane(String),
    /// The policy could not be parsed, compiled or loaded.
    #[error("policy: {0}")]
    Policy(String),
    /// Plotting failed (a missing font for PNG text is the usual cause).
    #[error("plot {file}: {detail}")]
    Plot {
        /// The plot being drawn.
        file: String,
        /// What went wrong.
        detail: String,
    },
    /// A measurement could not be taken.
    #[error("{measurement}: {detail}")]
    Measure {
        /// Which measurement.
        measurement: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// JSON could not be written.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

impl BenchError {
    /// An [`BenchError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`BenchError::Measure`].
    pub fn measure(measurement: &'static str, detail: impl std::fmt::Display) -> Self {
        BenchError::Measure {
            measurement,
            detail: detail.to_string(),
        }
    }
}

/// The harness's result type.
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
