//! Per-module counters, shared by every instance of a module (all workers) and readable
//! from the control thread for metrics. Updated once per batch, never per packet, and with
//! relaxed atomics: they are statistics, not synchronisation.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one [`crate::wasm::PolicyModule`].
#[derive(Debug, Default)]
pub struct ModuleCounters {
    pub(crate) batches: AtomicU64,
    pub(crate) records: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) continued: AtomicU64,
    pub(crate) traps: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) bad_verdicts: AtomicU64,
    pub(crate) fail_closed_records: AtomicU64,
    pub(crate) reinstantiations: AtomicU64,
    pub(crate) quarantined_batches: AtomicU64,
    pub(crate) logs: AtomicU64,
    pub(crate) logs_suppressed: AtomicU64,
    pub(crate) over_limit: AtomicU64,
    pub(crate) audit_denied: AtomicU64,
}

/// A point-in-time copy of [`ModuleCounters`], for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ModuleCountersSnapshot {
    /// Batches handed to the module (including ones answered fail-closed).
    pub batches: u64,
    /// Records handed to the module.
    pub records: u64,
    /// Records the module decided Accept.
    pub accepted: u64,
    /// Records the module decided Drop (fail-closed Drops included).
    pub dropped: u64,
    /// Records the module decided Reject (fail-closed Rejects included).
    pub rejected: u64,
    /// Records the module passed on with Continue.
    pub continued: u64,
    /// Calls that ended in a trap (other than the epoch deadline).
    pub traps: u64,
    /// Calls stopped by the epoch deadline.
    pub timeouts: u64,
    /// Batches rejected because the module wrote an unknown action code.
    pub bad_verdicts: u64,
    /// Records that got the fail-closed verdict for any reason.
    pub fail_closed_records: u64,
    /// Fresh instances made after a trap or timeout.
    pub reinstantiations: u64,
    /// Batches answered fail-closed without calling a quarantined instance.
    pub quarantined_batches: u64,
    /// `bw.log` messages emitted.
    pub logs: u64,
    /// `bw.log` messages dropped by the rate limit.
    pub logs_suppressed: u64,
    /// For a rate-limited rule's module: records that matched the rule over its rate (and
    /// went on to the rest of the chain).
    pub over_limit: u64,
    /// Records the module decided Drop or Reject while audited in its chain
    /// ([`crate::wasm::PolicyChain::set_audit`]): denials that did not take effect, so the
    /// rest of the chain decided. Also counted in `dropped` / `rejected`.
    pub audit_denied: u64,
}

impl ModuleCounters {
    /// Copies every counter (each read is atomic, the set is not: fine for statistics).
    pub fn snapshot(&self) -> ModuleCountersSnapshot {
        ModuleCountersSnapshot {
            batches: self.batches.load(Relaxed),
            records: self.records.load(Relaxed),
            accepted: self.accepted.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            continued: self.continued.load(Relaxed),
            traps: self.traps.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            bad_verdicts: self.bad_verdicts.load(Relaxed),
            fail_closed_records: self.fail_closed_records.load(Relaxed),
            reinstantiations: self.reinstantiations.load(Relaxed),
            quarantined_batches: self.quarantined_batches.load(Relaxed),
            logs: self.logs.load(Relaxed),
            logs_suppressed: self.logs_suppressed.load(Relaxed),
            over_limit: self.over_limit.load(Relaxed),
            audit_denied: self.audit_denied.load(Relaxed),
        }
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}
