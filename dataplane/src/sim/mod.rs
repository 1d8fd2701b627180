//! The simulator tests, benches and fuzz targets share (feature `testing`, never on in the
//! product): a bridge of one engine and in-memory ports with four hosts on it, frame
//! builders, reference policies, and the namespace tooling of the root-only AF_XDP tests.
//!
//! * [`hosts`] — the gateway and three containers ([`GW`], [`PARENT`], [`CHILD`],
//!   [`OTHER`]) with their addresses and port configurations.
//! * [`frames`] — Ethernet frames of every kind the tests send, built with `etherparse`,
//!   an implementation independent of the parser under test, and IP fragmenters.
//! * [`policies`] — verdict shorthands and Docker's icc=false-with-a-link as a plain-Rust
//!   reference policy.
//! * [`lab`] — the simulated bridge ([`Lab`]) over any port with a simulated wire
//!   ([`SimPort`]): plain [`MemoryPort`](crate::phy::memory::MemoryPort)s, or ports
//!   wrapped in fault injectors ([`Lossy`](crate::phy::lossy::Lossy)).
//! * [`netns`] and [`forwarder`] — network namespaces with veths that remove themselves
//!   and a raw two-port AF_XDP forwarder, for the tests and benches that need root.
//!
//! The items of the first four are re-exported here, so `use dataplane::sim::*;` brings the
//! whole bridge in.
pub mod forwarder;
pub mod frames;
pub mod hosts;
pub mod lab;
pub mod netns;
pub mod policies;

pub use frames::*;
pub use hosts::*;
pub use lab::*;
pub use policies::*;
