//! bridgewall's dataplane.
//!
//! A sans-IO core — [`wire`] parsing, the L2 [`switch`], the [`flow`] table, the [`policy`]
//! stage, the [`reject`] answers and the [`engine`] that drives them, with its verdict
//! [`events`] and [`counters`] — which performs no I/O and is tested with in-memory ports,
//! plus the I/O backends behind one [`phy::Port`] trait: AF_XDP ([`afxdp`]) and the
//! in-memory port ([`phy::memory`]). The Wasm policy host lives in
//! [`wasm`]; [`worker`] runs engines on threads.
//!
//! With the `testing` feature, `sim` is the simulated bridge tests, benches and fuzz
//! targets share.
// The one place `unsafe` is allowed: raw rings, UMEM memory and the AF_XDP/BPF syscalls.
#[allow(unsafe_code)]
pub mod afxdp;
pub mod counters;
pub mod engine;
pub mod events;
pub mod flow;
pub mod frag;
pub mod offload;
pub mod phy;
pub mod policy;
pub mod reject;
#[cfg(feature = "testing")]
pub mod sim;
pub mod switch;
pub mod wasm;
pub mod wire;
pub mod worker;
