//! The Docker-free lab: a TOML file describes a bridge and its "containers" (network
//! namespaces behind veths, each with an address, exposed and published ports, links and a
//! small TCP/UDP/HTTP responder) plus "outside hosts"; [`Lab::build`] makes it real in
//! namespaces of its own, produces the same [`crate::state::BridgeState`] Docker tracking
//! produces, probes connections between its members ([`Lab::connect`]), and removes
//! everything when dropped.
//!
//! Published ports are served by a small userspace TCP proxy in the lab's host namespace
//! (what Docker's `docker-proxy` does), not by DNAT: the product never drives iptables, and
//! nftables over raw netlink is a project of its own. One consequence: a connection through
//! a published port reaches the container from the bridge's gateway address, not from the
//! outside host's address. Outside hosts also have a route to the bridge's subnet through
//! the lab host (ip_forward is on inside the lab), so they can address containers directly,
//! which is how source-based user rules show up in the walkthrough.
mod build;
mod error;
mod probe;
mod service;
pub mod spec;
mod walkthrough;

pub use build::{Lab, LabContainer, LabOutside};
pub use error::LabError;
pub use probe::{Outcome, Proto};
pub use spec::{Expect, LabSpec};
pub use walkthrough::StepResult;

/// The seed's walkthrough, built into the binary as the default for `bridgewall lab`.
pub const WALKTHROUGH_TOML: &str = include_str!("../../../examples/lab/walkthrough.toml");
