//! The forwarding paths compared, each over a [`Topology`] of its own: the kernel bridge
//! with netfilter off ([`bridge`]), the kernel bridge running Docker's chains under
//! iptables-nft or iptables-legacy ([`iptables`]), bridgewall ([`bridgewall`]) and
//! bridgewall's tiered datapath ([`tiered`]).
pub mod bridge;
pub mod bridgewall;
pub mod iptables;
pub mod tiered;

use std::time::Duration;

use crate::bench::error::Result;
use crate::bench::topology::Topology;

/// Which path.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    /// Kernel bridge, `bridge-nf-call-iptables=0`: the baseline.
    Bridge,
    /// Kernel bridge with Docker 20.10's chains, loaded with iptables-nft.
    DockerNft,
    /// Kernel bridge with Docker 20.10's chains, loaded with iptables-legacy.
    DockerLegacy,
    /// bridgewall: AF_XDP ports, the engine and the compiled Docker policy.
    Bridgewall,
    /// bridgewall's tiered datapath: admitted flows forwarded by a kernel fast path, misses
    /// upcalled to the AF_XDP engine and its Wasm policy.
    BridgewallTiered,
}

impl PathKind {
    /// Every path, in the order they run within a round.
    pub const ALL: [PathKind; 5] = [
        PathKind::Bridge,
        PathKind::DockerNft,
        PathKind::DockerLegacy,
        PathKind::Bridgewall,
        PathKind::BridgewallTiered,
    ];

    /// The short name used in files and tables.
    pub fn name(self) -> &'static str {
        match self {
            PathKind::Bridge => "bridge",
            PathKind::DockerNft => "docker-nft",
            PathKind::DockerLegacy => "docker-legacy",
            PathKind::Bridgewall => "bridgewall",
            PathKind::BridgewallTiered => "bridgewall-tiered",
        }
    }

    /// Whether the path has a policy, so its numbers depend on the rule count.
    pub fn takes_rules(self) -> bool {
        self != PathKind::Bridge
    }
}

/// A path under test.
pub trait Path {
    /// Which path this is.
    fn kind(&self) -> PathKind;
    /// What exactly is measured.
    fn description(&self) -> String;
    /// The namespaces it forwards between.
    fn topology(&self) -> &Topology;
    /// Installs the scenario's policy with `n` user rules; how long that took.
    fn set_user_rules(&mut self, n: usize) -> Result<Duration>;
    /// Adds one user rule (the churn test's `i`th) while traffic flows.
    fn insert_rule(&mut self, i: usize) -> Result<()>;
    /// Path-specific counters since the last call (frames forwarded and dropped by the
    /// dataplane, …), for the JSON.
    fn stats(&mut self) -> serde_json::Value {
        serde_json::json!({})
    }
}

/// Builds the path `kind` with its topology (and, for bridgewall, its dataplane).
pub fn build(kind: PathKind) -> Result<Box<dyn Path>> {
    Ok(match kind {
        PathKind::Bridge => Box::new(bridge::KernelBridge::new()?),
        PathKind::DockerNft => Box::new(iptables::DockerIptables::new(iptables::Flavour::Nft)?),
        PathKind::DockerLegacy => {
            Box::new(iptables::DockerIptables::new(iptables::Flavour::Legacy)?)
        }
        PathKind::Bridgewall => Box::new(bridgewall::Bridgewall::new()?),
        PathKind::BridgewallTiered => Box::new(tiered::Tiered::new()?),
    })
}
