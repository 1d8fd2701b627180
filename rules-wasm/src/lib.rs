//! bridgewall's policies: the ABI shared by the dataplane and every policy module, and —
//! with the `std` feature — the rule model, Docker's semantics, the iptables-syntax parser,
//! the reference interpreter and the rule → Wasm compiler.
//!
//! Guests (policy modules compiled to `wasm32`) use this crate with
//! `default-features = false`: they get [`abi`] and [`sdk`] and nothing that needs `std`.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod abi;
pub mod sdk;

#[cfg(feature = "std")]
pub mod algebra;
#[cfg(feature = "std")]
pub mod compiler;
#[cfg(feature = "std")]
pub mod docker;
#[cfg(feature = "std")]
pub mod iptables;
#[cfg(feature = "std")]
pub mod model;
#[cfg(feature = "std")]
pub mod reference;
