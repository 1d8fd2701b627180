//! Following a Docker engine: which containers sit on the bridge network, with their
//! addresses, ports, links and host-side veths, kept current from the event stream and
//! published as [`crate::state::Snapshot`]s.
mod connect;
mod error;
mod metrics;
pub mod parse;
mod tracker;
mod veth;

pub use connect::{Engine, EngineAddress, connect};
pub use error::DockerError;
pub use metrics::{LatencySummary, TrackerMetrics};
pub use tracker::{
    Tracker, TrackerChannels, TrackerConfig, TrackerHandle, TrackerStatus, read_state,
};
pub use veth::{fmt_mac, host_veth_of};
