//! Following a Docker engine: which containers sit on the bridge network, with their
//! addresses, ports, links and host-side veths, kept current from the event stream and
//! published as [`crate::state::Snapshot`]s.
mod connect;
mod error;
mod metrics;
pub mod parse;
mod read;
mod tracker;
mod veth;

pub use connect::{Engine, EngineAddress, connect};
pub use error::DockerError;
pub use metrics::{LatencySummary, TrackerMetrics};
pub use tracker::{
    Tracker, TrackerChannels, TrackerConfig, TrackerHandle, TrackerStatus, read_state,
};
pub use veth::{fmt_mac, host_veth_of};

/// Every network of the engine whose driver is `bridge` (for checks before following them).
pub async fn bridge_networks(engine: &Engine) -> Result<Vec<parse::NetworkFacts>, DockerError> {
    Ok(read::list_networks(engine)
        .await?
        .into_iter()
        .filter(|n| n.driver == "bridge")
        .collect())
}
