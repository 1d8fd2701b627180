//! Example policy: a cap on new connections per source container.
//!
//! # Time, honestly
//! ABI v1 gives a module no clock (its only import is `bw.log`), so this module cannot count
//! connections *per second*. It uses a logical clock instead: one tick per new-flow record the
//! host hands it. Each source (identified by its ingress dataplane port, i.e. its container)
//! has a token bucket of [`BURST`] tokens refilled at [`REFILL_PER_TICK_MILLI`]/1000 token per
//! tick. So a container may open `BURST` connections at once, and then at most about
//! `REFILL_PER_TICK_MILLI/1000` of all new flows the bridge sees — when it is the only one
//! opening connections, it gets that share of its own flood. That caps a connection storm
//! relative to everyone's activity rather than to wall time; a true per-second cap needs a
//! time field in a future ABI version (the record's reserved bytes 46..48 could carry one).
//!
//! Established and related records (re-decisions) are never limited. Within the cap the
//! module answers `Continue`, so the Docker policy still decides whether the flow is allowed.
//! When a source runs out of tokens it says so once through `bw.log`, and again only after
//! its bucket has been full in between (one line per storm, not per packet).
#![no_std]

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};

use rules_wasm::abi::{Action, FlowState, PacketRecord, VerdictRecord};

/// Connections a source may open at once.
const BURST: u32 = 20;
/// Refill per tick, in thousandths of a token (250 = one connection per 4 new flows seen).
const REFILL_PER_TICK_MILLI: u64 = 250;
/// Sources tracked: ingress ports are hashed into this many buckets.
const SOURCES: usize = 256;
const RULE_LIMITED: u32 = 1;

/// Buckets in thousandths of a token, the tick each was last refilled, and whether the
/// source has been reported. Atomics, so that plain `static`s hold mutable state without
/// `unsafe` (on single-threaded wasm32 they are ordinary loads and stores).
static TOKENS_MILLI: [AtomicU32; SOURCES] = [const { AtomicU32::new(BURST * 1000) }; SOURCES];
static LAST_TICK: [AtomicU64; SOURCES] = [const { AtomicU64::new(0) }; SOURCES];
static REPORTED: [AtomicBool; SOURCES] = [const { AtomicBool::new(false) }; SOURCES];
static CLOCK: AtomicU64 = AtomicU64::new(0);

fn decide(r: &PacketRecord) -> VerdictRecord {
    if r.flow_state != FlowState::New {
        return VerdictRecord::CONTINUE;
    }
    let now = CLOCK.fetch_add(1, Relaxed) + 1;
    let s = usize::from(r.in_port) % SOURCES;
    let elapsed = now - LAST_TICK[s].swap(now, Relaxed);
    let refill = elapsed.saturating_mul(REFILL_PER_TICK_MILLI);
    let cap = u64::from(BURST) * 1000;
    let tokens = (u64::from(TOKENS_MILLI[s].load(Relaxed)) + refill).min(cap);
    if tokens >= 1000 {
        TOKENS_MILLI[s].store((tokens - 1000) as u32, Relaxed);
        if tokens == cap {
            // The source has calmed down (a full bucket): report it again next time.
            REPORTED[s].store(false, Relaxed);
        }
        VerdictRecord::CONTINUE
    } else {
        TOKENS_MILLI[s].store(tokens as u32, Relaxed);
        if !REPORTED[s].swap(true, Relaxed) {
            rules_wasm::sdk::log(
                "conn-rate-limit: a source container ran out of new-connection tokens",
            );
        }
        VerdictRecord::new(Action::Drop, RULE_LIMITED)
    }
}

rules_wasm::bw_policy!(decide);

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}
