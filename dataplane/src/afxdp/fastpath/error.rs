//! Errors of the in-kernel fast path: each names the step (loading the object, a map, an
//! attach) and the device or map it concerned.
use crate::afxdp::AfXdpError;

/// What can go wrong while loading, attaching or driving the fast path.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The configuration asks for something the kernel would refuse.
    #[error("invalid fast-path configuration: {0}")]
    Config(String),
    /// aya could not parse the embedded object or create its maps.
    #[error("loading the fast-path object (dataplane/bpf/fastpath.bpf.o) failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// The object lacks a program or map the Rust side expects (object and code out of sync).
    #[error(
        "the fast-path object has no {kind} named {name:?}: rebuild it with dataplane/bpf/build.sh"
    )]
    Missing {
        /// "program" or "map".
        kind: &'static str,
        /// The name looked for.
        name: &'static str,
    },
    /// A program operation (verifier load, TCX attach, query) failed.
    #[error("{what} failed: {source}")]
    Program {
        /// What was being done, with the device when there is one.
        what: String,
        /// aya's error (for a verifier rejection it carries the verifier log).
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map operation failed.
    #[error("{op} on map {map} failed: {source}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// The operation.
        op: &'static str,
        /// aya's error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// `bw_flows` is full: the caller counts this and leaves the flow on the slow path.
    #[error("the kernel flow table is full ({max_flows} entries)")]
    FlowTableFull {
        /// Its capacity.
        max_flows: u32,
    },
    /// The device is not in the calling thread's network namespace.
    #[error("fast-path attach: {0}")]
    Interface(#[source] AfXdpError),
    /// The device already has our program attached.
    #[error("the fast path is already attached to {ifname} (ifindex {ifindex})")]
    AlreadyAttached {
        /// Interface name.
        ifname: String,
        /// Its index.
        ifindex: u32,
    },
    /// The flow, config and stats maps were already handed out.
    #[error("the fast path's flow maps were already taken (take_flows is once per load)")]
    FlowsTaken,
    /// Reading the flow table in batches failed.
    #[error("reading the kernel flow table: {0}")]
    Walk(#[source] AfXdpError),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("fast-path test run failed: {0}")]
    TestRun(#[source] AfXdpError),
}

impl FastPathError {
    pub(super) fn map(map: &'static str, op: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            map,
            op,
            source: Box::new(source),
        }
    }

    pub(super) fn program(what: impl Into<String>, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// The errno of a failed map syscall, if that is what `e` is.
pub(super) fn map_errno(e: &aya::maps::MapError) -> Option<i32> {
    match e {
        aya::maps::MapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}
