//! The Wasm policy host: runs policy modules (the controller's compiled Docker policy and
//! users' own modules) under wasmtime, sandboxed so that a misbehaving module costs a batch
//! of fail-closed verdicts and a counter, never the dataplane.
//!
//! The pieces, each in its own file:
//! - [`runtime`] — [`WasmRuntime`], one per process: the wasmtime `Engine`, its epoch ticker
//!   and [`WasmRuntime::load`], which compiles and validates a module off the hot path.
//! - [`module`] — [`PolicyModule`], a compiled, validated module that can be instantiated
//!   cheaply, many times (once per worker and generation).
//! - [`instance`] — [`PolicyInstance`], a module in its own store: batched calls, epoch
//!   deadline, memory cap, fail-closed verdicts on traps, timeouts and bad verdicts.
//! - [`chain`] — [`PolicyChain`], the ordered modules of one generation, implementing
//!   [`crate::policy::Policy`].
//! - [`swap`] — handing a new chain to a worker between batches and retiring the old one
//!   on another thread ([`Reaper`]).
//! - [`trace`] — which module and rule decide one described packet.
//! - [`counters`] — per-module counters readable from any thread.
//! - [`hostlog`] — the guest's one import, the rate-limited `bw.log`.
//! - [`error`] — [`LoadError`] and [`RuntimeError`].
pub mod chain;
pub mod counters;
pub mod error;
pub mod hostlog;
pub mod instance;
pub mod limit;
pub mod module;
pub mod runtime;
pub mod swap;
pub mod trace;

pub use chain::{LogSpec, PolicyChain};
pub use counters::{ModuleCounters, ModuleCountersSnapshot};
pub use error::{LoadError, RuntimeError};
pub use instance::PolicyInstance;
pub use limit::RateLimit;
pub use module::{Caps, PolicyModule};
pub use runtime::{WasmConfig, WasmRuntime};
pub use swap::{Reaper, SwapReceiver, SwapSender};
pub use trace::{TraceResult, trace, trace_fresh};

pub use crate::policy::RULE_FAIL_CLOSED;
