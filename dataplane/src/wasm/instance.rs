//! [`PolicyInstance`]: one module in one store, owned by one worker; turns a batch of
//! records into verdicts, containing whatever the guest does.
//!
//! Containment: every call runs under an epoch deadline (checked against the thread's CPU
//! time so that preemption is not mistaken for a loop, see `hostlog::DeadlineWatch`) and
//! the store's memory cap. A call that traps or runs past the deadline gives the whole batch the fail-closed verdict, and
//! so does a verdict with an unknown action code. After a trap or a timeout the guest's
//! state may be half-updated, so the instance is **re-instantiated in place**: a fresh
//! store is made on the worker (≈ 8 µs, only on this failure path) and the old store is
//! handed to the reaper thread to be dropped (dropping a used store can take ~300 µs).
//! After [`crate::wasm::WasmConfig::quarantine_after`] consecutive failed batches, or if
//! re-instantiating fails, the instance is quarantined: it answers fail-closed without
//! calling the guest until a new chain replaces it, so an always-looping module cannot cost
//! the worker a deadline per batch forever.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rules_wasm::abi::{
    self, Action, IO_AREA_SIZE, MAX_BATCH, PacketRecord, RECORD_SIZE, VERDICT_SIZE,
    VERDICTS_OFFSET, VerdictRecord,
};
use wasmtime::{Memory, Store, StoreLimitsBuilder, Trap, TypedFunc};

use super::RULE_FAIL_CLOSED;
use super::counters::ModuleCounters;
use super::error::LoadError;
use super::hostlog::{DeadlineWatch, HostState, LogBucket};
use super::module::PolicyModule;

/// How one batch went. Whatever the outcome, every verdict has been written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The module judged every record.
    Decided,
    /// The call trapped (message attached); the batch got the fail-closed verdict.
    Trapped(String),
    /// The call ran past the epoch deadline; the batch got the fail-closed verdict.
    TimedOut,
    /// The module wrote an unknown action code (first offender attached); the batch got
    /// the fail-closed verdict.
    BadVerdict {
        /// Index of the record in the batch.
        index: usize,
        /// The code written.
        code: u32,
    },
    /// The instance is quarantined; the batch got the fail-closed verdict without a call.
    Quarantined,
}

/// A module instantiated in its own store, with the handles a batch call needs.
struct Live {
    store: Store<HostState>,
    memory: Memory,
    evaluate: TypedFunc<i32, ()>,
    /// Guest address of the I/O area, checked in bounds and 8-aligned at init. Memory never
    /// shrinks, so it stays in bounds.
    io: usize,
}

/// A policy module running in one worker's store.
pub struct PolicyInstance {
    module: PolicyModule,
    counters: Arc<ModuleCounters>,
    live: Option<Live>,
    consecutive_failures: u32,
    /// Whether failures are warned about (false for load-time probe instances, whose
    /// failure becomes the load error instead).
    warn: bool,
}

impl PolicyInstance {
    pub(crate) fn new(
        module: PolicyModule,
        counters: Arc<ModuleCounters>,
        warn: bool,
    ) -> Result<Self, LoadError> {
        let live = instantiate(&module, &counters)?;
        Ok(Self {
            module,
            counters,
            live: Some(live),
            consecutive_failures: 0,
            warn,
        })
    }

    /// The module this is an instance of.
    pub fn module(&self) -> &PolicyModule {
        &self.module
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        self.module.name()
    }

    /// Whether the instance has been quarantined (see the module docs).
    pub fn is_quarantined(&self) -> bool {
        self.live.is_none()
    }

    /// Current size of the guest's linear memory in bytes (0 when quarantined), to show the
    /// memory cap holds.
    pub fn memory_bytes(&self) -> usize {
        self.live
            .as_ref()
            .map_or(0, |l| l.memory.data_size(&l.store))
    }

    /// Judges `records`, writing `verdicts[i]` for `records[i]` (lengths must match; more
    /// than [`MAX_BATCH`] records are judged in several calls). Returns the outcome of the
    /// last failing call, or `Decided`.
    pub fn evaluate(
        &mut self,
        records: &[PacketRecord],
        verdicts: &mut [VerdictRecord],
    ) -> BatchOutcome {
        debug_assert_eq!(records.len(), verdicts.len());
        let mut outcome = BatchOutcome::Decided;
        for (recs, outs) in records
            .chunks(MAX_BATCH)
            .zip(verdicts.chunks_mut(MAX_BATCH))
        {
            let o = self.evaluate_batch(recs, outs);
            if o != BatchOutcome::Decided {
                outcome = o;
            }
            // The load-time probe (an instance that does not warn) must not spend the shared
            // bucket's tokens.
            if let Some((limit, bucket)) = self.module.inner().limit.as_ref().filter(|_| self.warn)
            {
                let over = super::limit::apply(limit, bucket, outs);
                ModuleCounters::add(&self.counters.over_limit, over);
            }
        }
        outcome
    }

    fn evaluate_batch(
        &mut self,
        records: &[PacketRecord],
        verdicts: &mut [VerdictRecord],
    ) -> BatchOutcome {
        let n = records.len().min(verdicts.len());
        let verdicts = &mut verdicts[..n];
        let c = &self.counters;
        ModuleCounters::add(&c.batches, 1);
        ModuleCounters::add(&c.records, n as u64);
        let runtime = &self.module.inner().runtime;
        // A plain store, once per batch: keeps the epoch ticker at full rate while guests run.
        runtime
            .busy
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = runtime.config.deadline_ticks;

        let Some(live) = self.live.as_mut() else {
            ModuleCounters::add(&c.quarantined_batches, 1);
            self.fail_closed(verdicts);
            return BatchOutcome::Quarantined;
        };

        let Some(io) = live
            .memory
            .data_mut(&mut live.store)
            .get_mut(live.io..live.io + IO_AREA_SIZE)
        else {
            // Unreachable while memory cannot shrink; treated as a failure, not a panic.
            return self.failed(
                verdicts,
                BatchOutcome::Trapped("I/O area out of bounds".into()),
            );
        };
        let (record_area, verdict_area) = io.split_at_mut(VERDICTS_OFFSET);
        let (slots, _) = record_area.as_chunks_mut::<RECORD_SIZE>();
        for (record, slot) in records.iter().zip(slots) {
            record.encode(slot);
        }
        // A zeroed verdict reads as Continue: a guest that skips a record defers it rather
        // than leaving last batch's verdict in place.
        verdict_area[..n * VERDICT_SIZE].fill(0);

        live.store.data_mut().watch.start_call();
        live.store.set_epoch_deadline(deadline);
        // n ≤ MAX_BATCH, so the cast cannot truncate.
        if let Err(e) = live.evaluate.call(&mut live.store, n as i32) {
            let outcome = match e.downcast_ref::<Trap>() {
                Some(Trap::Interrupt) => BatchOutcome::TimedOut,
                _ => BatchOutcome::Trapped(format!("{e:#}")),
            };
            return self.failed(verdicts, outcome);
        }

        let Some(area) = live
            .memory
            .data(&live.store)
            .get(live.io + VERDICTS_OFFSET..live.io + IO_AREA_SIZE)
        else {
            return self.failed(
                verdicts,
                BatchOutcome::Trapped("I/O area out of bounds".into()),
            );
        };
        let (slots, _) = area.as_chunks::<VERDICT_SIZE>();
        // Four 16-bit counts packed in one register (n ≤ 64 fits): `tally[action] += 1` on an
        // array made every verdict wait for the previous one's store (≈ 3 ns/packet).
        let mut packed = 0u64;
        for (index, (slot, out)) in slots.iter().zip(verdicts.iter_mut()).enumerate() {
            match VerdictRecord::decode(slot) {
                Some(v) => {
                    packed += 1 << (16 * v.action as u32);
                    *out = v;
                }
                None => {
                    let code = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
                    return self.failed(verdicts, BatchOutcome::BadVerdict { index, code });
                }
            }
        }
        self.consecutive_failures = 0;
        let tally = [0, 1, 2, 3].map(|a| (packed >> (16 * a)) & 0xffff);
        add_tally(c, &tally);
        BatchOutcome::Decided
    }

    /// The failure path: fail-closed verdicts, counters, a rate-limited warning, and a fresh
    /// instance (or quarantine) after traps and timeouts.
    #[cold]
    fn failed(&mut self, verdicts: &mut [VerdictRecord], outcome: BatchOutcome) -> BatchOutcome {
        self.fail_closed(verdicts);
        let c = &self.counters;
        let counter = match outcome {
            BatchOutcome::TimedOut => &c.timeouts,
            BatchOutcome::BadVerdict { .. } => &c.bad_verdicts,
            _ => &c.traps,
        };
        ModuleCounters::add(counter, 1);
        self.consecutive_failures += 1;
        if self.warn {
            self.warn(&outcome);
        }
        let quarantine_after = self.module.inner().runtime.config.quarantine_after;
        let must_replace = matches!(outcome, BatchOutcome::TimedOut | BatchOutcome::Trapped(_));
        if quarantine_after != 0 && self.consecutive_failures >= quarantine_after {
            self.quarantine("too many consecutive failed batches".into());
        } else if must_replace {
            self.reinstantiate();
        }
        outcome
    }

    fn fail_closed(&self, verdicts: &mut [VerdictRecord]) {
        let action = self.module.inner().runtime.config.fail_closed;
        verdicts.fill(VerdictRecord::new(action, RULE_FAIL_CLOSED));
        let c = &self.counters;
        ModuleCounters::add(&c.fail_closed_records, verdicts.len() as u64);
        let mut tally = [0u64; 4];
        tally[action as usize] = verdicts.len() as u64;
        add_tally(c, &tally);
    }

    fn reinstantiate(&mut self) {
        self.retire_store();
        match instantiate(&self.module, &self.counters) {
            Ok(live) => {
                self.live = Some(live);
                ModuleCounters::add(&self.counters.reinstantiations, 1);
            }
            Err(e) => self.quarantine(format!("re-instantiation failed: {e}")),
        }
    }

    fn quarantine(&mut self, why: String) {
        self.retire_store();
        if self.warn {
            tracing::error!(
                module = %self.name(),
                "policy module quarantined ({why}); its packets get the fail-closed verdict until the policy is replaced"
            );
        }
    }

    /// Hands the current store (if any) to the reaper thread to be dropped there.
    fn retire_store(&mut self) {
        if let Some(old) = self.live.take() {
            self.module
                .inner()
                .runtime
                .reaper
                .retire(Box::new(old.store));
        }
    }

    fn warn(&self, outcome: &BatchOutcome) {
        let inner = self.module.inner();
        if let Some(suppressed) = inner.warn.allow() {
            let snapshot = self.counters.snapshot();
            tracing::warn!(
                module = %inner.name,
                traps = snapshot.traps,
                timeouts = snapshot.timeouts,
                bad_verdicts = snapshot.bad_verdicts,
                similar_warnings_suppressed = suppressed,
                "policy module failed a batch ({}); the batch got the fail-closed verdict",
                describe(outcome),
            );
        }
    }
}

fn describe(outcome: &BatchOutcome) -> String {
    match outcome {
        BatchOutcome::Decided => "no failure".into(),
        BatchOutcome::Trapped(t) => format!("trap: {t}"),
        BatchOutcome::TimedOut => "ran past the epoch deadline".into(),
        BatchOutcome::BadVerdict { index, code } => {
            format!("unknown action code {code} for record {index}")
        }
        BatchOutcome::Quarantined => "quarantined".into(),
    }
}

// The packed verdict tally in `evaluate_batch` holds counts of up to 16 bits.
const _: () = assert!(MAX_BATCH < 1 << 16);

fn add_tally(c: &ModuleCounters, tally: &[u64; 4]) {
    ModuleCounters::add(&c.continued, tally[Action::Continue as usize]);
    ModuleCounters::add(&c.accepted, tally[Action::Accept as usize]);
    ModuleCounters::add(&c.dropped, tally[Action::Drop as usize]);
    ModuleCounters::add(&c.rejected, tally[Action::Reject as usize]);
}

/// Makes a store, instantiates the module in it under the deadline and memory cap, checks
/// the ABI version and the I/O area.
fn instantiate(module: &PolicyModule, counters: &Arc<ModuleCounters>) -> Result<Live, LoadError> {
    let inner = module.inner();
    let config = &inner.runtime.config;
    let name = || inner.name.to_string();
    let failed = |stage: &'static str| {
        move |e: wasmtime::Error| LoadError::Instantiate {
            module: inner.name.to_string(),
            stage,
            reason: format!("{e:#}"),
        }
    };
    let state = HostState {
        limits: StoreLimitsBuilder::new()
            .memory_size(inner.max_memory_bytes)
            .table_elements(config.max_table_elements)
            .instances(1)
            .memories(1)
            .tables(16)
            .trap_on_grow_failure(false)
            .build(),
        log: LogBucket::new(config.log_burst, config.log_per_second),
        log_max_bytes: config.log_max_bytes,
        module: Arc::clone(&inner.name),
        counters: Arc::clone(counters),
        watch: DeadlineWatch::new(config.deadline_ticks, config.max_call_wall),
    };
    let mut store = Store::new(&inner.runtime.engine, state);
    store.limiter(|s| &mut s.limits);
    store.epoch_deadline_callback(|mut cx| Ok(cx.data_mut().watch.on_deadline()));
    // Also bounds a start function, which runs inside instantiate.
    store.set_epoch_deadline(config.deadline_ticks);
    let instance = inner
        .pre
        .instantiate(&mut store)
        .map_err(failed("instantiation"))?;

    let memory = instance
        .get_memory(&mut store, abi::EXPORT_MEMORY)
        .ok_or_else(|| LoadError::MissingExport {
            module: name(),
            export: abi::EXPORT_MEMORY,
        })?;
    let version = instance
        .get_typed_func::<(), i32>(&mut store, abi::EXPORT_ABI_VERSION)
        .map_err(failed(abi::EXPORT_ABI_VERSION))?;
    store.data_mut().watch.start_call();
    store.set_epoch_deadline(config.deadline_ticks);
    let found = version
        .call(&mut store, ())
        .map_err(failed(abi::EXPORT_ABI_VERSION))?;
    if found != abi::ABI_VERSION {
        return Err(LoadError::AbiVersion {
            module: name(),
            found,
            expected: abi::ABI_VERSION,
        });
    }

    let init = instance
        .get_typed_func::<(), i32>(&mut store, abi::EXPORT_INIT)
        .map_err(failed(abi::EXPORT_INIT))?;
    store.data_mut().watch.start_call();
    store.set_epoch_deadline(config.deadline_ticks);
    let addr = init
        .call(&mut store, ())
        .map_err(failed(abi::EXPORT_INIT))? as u32;
    let memory_size = memory.data_size(&store);
    let io = addr as usize;
    if !io.is_multiple_of(8)
        || io
            .checked_add(IO_AREA_SIZE)
            .is_none_or(|end| end > memory_size)
    {
        return Err(LoadError::BadIoArea {
            module: name(),
            addr,
            need: IO_AREA_SIZE,
            memory_size,
        });
    }
    let evaluate = instance
        .get_typed_func::<i32, ()>(&mut store, abi::EXPORT_EVALUATE)
        .map_err(failed(abi::EXPORT_EVALUATE))?;
    prefault(memory.data_mut(&mut store), io);
    Ok(Live {
        store,
        memory,
        evaluate,
        io,
    })
}

/// Size of a page of the host's memory (the smallest x86-64/aarch64 page: touching every
/// 4 KiB also covers larger pages).
const HOST_PAGE: usize = 4096;

/// Maps every page of a fresh instance's linear memory now, on the thread that made it (the
/// control thread), so the worker's first batch takes no page fault.
///
/// A new store's memory is a copy-on-write mapping of the module's memory image, populated
/// lazily: without this, the first batch a worker runs after a swap faulted ~5 pages in
/// (≈ 10 µs instead of ≈ 0.8 µs) — and a fault waits for the process's memory-map lock,
/// which the control thread (compiling, mapping code and memories) and the reaper
/// (unmapping retired stores) take for writing many times during a swap, so under load
/// such a first batch was seen to stall the worker for milliseconds.
///
/// Pages are only *read* (so they stay shared with the image: no memory per worker), except
/// the I/O area, which the host writes every batch and is made the instance's own here
/// (its bytes are rewritten unchanged).
fn prefault(data: &mut [u8], io: usize) {
    let mut sum = 0u8;
    for i in (0..data.len()).step_by(HOST_PAGE) {
        sum = sum.wrapping_add(data[i]);
    }
    std::hint::black_box(sum);
    if let Some(area) = data.get_mut(io..io + IO_AREA_SIZE) {
        let last = area.len().saturating_sub(1);
        for i in (0..area.len())
            .step_by(HOST_PAGE)
            .chain(std::iter::once(last))
        {
            area[i] = std::hint::black_box(area[i]);
        }
    }
}

/// At most one warning per interval per module, across all its instances and workers,
/// without a lock: a compare-and-swap on the next time a warning is allowed.
pub(crate) struct WarnGate {
    base: Instant,
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl WarnGate {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            base: Instant::now(),
            interval_ms: interval.as_millis().try_into().unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(number of warnings suppressed since the last one)` if a warning may be
    /// emitted now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_ms.load(Relaxed);
        if now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(self.interval_ms), Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.suppressed.swap(0, Relaxed))
        } else {
            self.suppressed.fetch_add(1, Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warn_gate_allows_one_per_interval() {
        let gate = WarnGate::new(Duration::from_secs(3600));
        assert_eq!(gate.allow(), Some(0));
        assert_eq!(gate.allow(), None);
        assert_eq!(gate.allow(), None);
        gate.next_ms.store(0, Relaxed); // as if the interval had passed
        assert_eq!(gate.allow(), Some(2), "reports how many were suppressed");
    }
}
