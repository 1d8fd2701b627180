//! [`PolicyChain`]: the modules of one policy generation in order — user modules first,
//! the compiled Docker policy last — as one [`Policy`] for the engine.
//!
//! Each module sees only the records every module before it answered `Continue` for; the
//! continuing records are compacted into preallocated scratch arrays, so a batch costs no
//! allocation however many modules there are.
//!
//! Beside the deciding modules a chain may hold *observers*: iptables' `-j LOG` rules, which
//! never decide. Each observer's module answers `Accept` for the records that reach its LOG
//! rule; the chain counts them (the module's `accepted` counter) and logs them through a
//! token bucket, like the guests' `bw.log`, so a flood costs a bounded number of lines.
//!
//! A stage may be *audited* ([`PolicyChain::set_audit`]): it runs and is counted, but none
//! of its verdicts takes effect — the records go on to the next stage as if it had said
//! `Continue` — and its denials are counted as `audit_denied`. So a user's new module can be
//! tried on live traffic, showing what it would drop, before it decides anything.
use std::sync::Arc;
use std::time::Instant;

use rules_wasm::abi::{Action, MAX_BATCH, PacketRecord, VerdictRecord, bytes_addr};

use super::counters::ModuleCounters;
use super::error::LoadError;
use super::hostlog::LogBucket;
use super::instance::PolicyInstance;
use super::module::PolicyModule;
use crate::policy::Policy;

/// A LOG rule to run beside a chain: what [`PolicyChain::instantiate_observed`] takes.
#[derive(Clone, Debug)]
pub struct LogSpec {
    /// The rule's module: `Accept` = the record reached the LOG rule.
    pub module: PolicyModule,
    /// `--log-prefix`.
    pub prefix: Arc<str>,
    /// `-m limit`: (lines a second, burst); `None` for the runtime's `bw.log` rate.
    pub limit: Option<(f64, u32)>,
    /// Records decided by a stage below this index never reached the LOG rule (a user
    /// module, or a rate-limited rule before it, decided them first).
    pub decided_before: u16,
}

/// A LOG rule beside the policy: its module, its `--log-prefix`, and its log rate limit.
struct Observer {
    instance: PolicyInstance,
    prefix: Arc<str>,
    bucket: LogBucket,
    decided_before: u16,
}

/// `decided_by` value of a record no module decided (every module said Continue).
pub const DECIDED_BY_NONE: u16 = u16::MAX;

/// One generation of policy for one worker: an instance of each module, in order.
pub struct PolicyChain {
    generation: u64,
    stages: Vec<PolicyInstance>,
    /// Which stage decided each record of the last batch ([`DECIDED_BY_NONE`] if none).
    decided_by: [u16; MAX_BATCH],
    /// Indices (into the batch) of the records still undecided.
    pending: [u8; MAX_BATCH],
    /// The undecided records, compacted, as the next stage's input.
    scratch_records: [PacketRecord; MAX_BATCH],
    /// The next stage's verdicts on `scratch_records`.
    scratch_verdicts: [VerdictRecord; MAX_BATCH],
    /// LOG rules, run on every batch after the decision.
    observers: Vec<Observer>,
    /// Whether a module reads `src_conns` (see [`Policy::counts_source_conns`]).
    counts_source_conns: bool,
    /// Per stage: audited (its verdicts never take effect).
    audited: Vec<bool>,
}

impl PolicyChain {
    /// Chains already-made instances. `generation` is what [`Policy::generation`] reports;
    /// the flow table re-decides flows of other generations.
    pub fn new(generation: u64, stages: Vec<PolicyInstance>) -> Self {
        Self {
            generation,
            audited: vec![false; stages.len()],
            stages,
            decided_by: [DECIDED_BY_NONE; MAX_BATCH],
            pending: [0; MAX_BATCH],
            scratch_records: [PacketRecord::default(); MAX_BATCH],
            scratch_verdicts: [VerdictRecord::CONTINUE; MAX_BATCH],
            observers: Vec::new(),
            counts_source_conns: true,
        }
    }

    /// Says whether any module reads `src_conns`. A chain assumes it does until told
    /// otherwise, since a module's code cannot be asked; the controller knows for the
    /// policies it compiles.
    pub fn set_counts_source_conns(&mut self, on: bool) {
        self.counts_source_conns = on;
    }

    /// Audits stage `stage` (`on`) or lets it decide again: an audited stage's verdicts all
    /// become `Continue`, so the stages after it decide, and its Drops and Rejects are
    /// counted in its module's `audit_denied`. Observers are not stages and are unaffected.
    /// An index beyond the stages is ignored. Call on the control thread, before the chain
    /// is handed to its worker.
    pub fn set_audit(&mut self, stage: usize, on: bool) {
        if let Some(a) = self.audited.get_mut(stage) {
            *a = on;
        }
    }

    /// Whether stage `stage` is audited.
    pub fn audited(&self, stage: usize) -> bool {
        self.audited.get(stage).copied().unwrap_or(false)
    }

    /// Instantiates every module and every observer (a LOG rule's module, with its prefix).
    pub fn instantiate_observed(
        generation: u64,
        modules: &[PolicyModule],
        observers: &[LogSpec],
    ) -> Result<Self, LoadError> {
        let mut chain = Self::instantiate(generation, modules)?;
        for o in observers {
            let config = &o.module.inner().runtime.config;
            let bucket = match o.limit {
                Some((rate, burst)) => LogBucket::with_rate(burst, rate),
                None => LogBucket::new(config.log_burst, config.log_per_second),
            };
            chain.observers.push(Observer {
                instance: o.module.instantiate()?,
                prefix: Arc::clone(&o.prefix),
                bucket,
                decided_before: o.decided_before,
            });
        }
        Ok(chain)
    }

    /// The observers' instances (LOG rules), in order.
    pub fn observers(&self) -> impl ExactSizeIterator<Item = &PolicyInstance> {
        self.observers.iter().map(|o| &o.instance)
    }

    /// Runs every observer on `records`: a record its module accepts reached its LOG rule and
    /// is logged (within the rate limit; over it, counted as suppressed).
    fn observe(&mut self, records: &[PacketRecord]) {
        let n = records.len().min(MAX_BATCH);
        for o in &mut self.observers {
            o.instance
                .evaluate(&records[..n], &mut self.scratch_verdicts[..n]);
            let mut now = None;
            for ((r, v), by) in records
                .iter()
                .zip(&self.scratch_verdicts[..n])
                .zip(&self.decided_by[..n])
            {
                if v.action != Action::Accept || *by < o.decided_before {
                    continue;
                }
                let counters = &o.instance.module().inner().counters;
                let t = *now.get_or_insert_with(Instant::now);
                if o.bucket.take(t) {
                    log_packet(&o.prefix, r);
                    ModuleCounters::add(&counters.logs, 1);
                } else {
                    ModuleCounters::add(&counters.logs_suppressed, 1);
                }
            }
        }
    }

    /// Instantiates every module (in order) and chains them. Call on the control thread,
    /// once per worker: each worker needs its own stores.
    pub fn instantiate(generation: u64, modules: &[PolicyModule]) -> Result<Self, LoadError> {
        let stages = modules
            .iter()
            .map(PolicyModule::instantiate)
            .collect::<Result<_, _>>()?;
        Ok(Self::new(generation, stages))
    }

    /// The instances, in evaluation order.
    pub fn stages(&self) -> &[PolicyInstance] {
        &self.stages
    }

    /// The modules, in evaluation order (to build another chain of the same policy).
    pub fn modules(&self) -> impl ExactSizeIterator<Item = &PolicyModule> {
        self.stages.iter().map(PolicyInstance::module)
    }

    /// For each record of the last batch decided, the index of the stage that decided it,
    /// or [`DECIDED_BY_NONE`]. Valid for the first `len` entries of the last `decide` call
    /// (of its last 64 records when it was longer).
    pub fn decided_by(&self) -> &[u16; MAX_BATCH] {
        &self.decided_by
    }

    fn decide_batch(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]) {
        let n = records.len().min(verdicts.len());
        let (records, verdicts) = (&records[..n], &mut verdicts[..n]);
        let Some((first, rest)) = self.stages.split_first_mut() else {
            verdicts.fill(VerdictRecord::CONTINUE);
            self.decided_by[..n].fill(DECIDED_BY_NONE);
            return;
        };

        // The first stage sees the whole batch directly, no copy; it writes every verdict.
        first.evaluate(records, verdicts);
        if self.audited.first().copied().unwrap_or(false) {
            audit(first, verdicts);
        }
        if rest.is_empty() {
            // One stage (the usual compiled policy alone): no pending list to build.
            for (d, v) in self.decided_by.iter_mut().zip(verdicts.iter()) {
                *d = if v.action == Action::Continue {
                    DECIDED_BY_NONE
                } else {
                    0
                };
            }
            return;
        }
        let mut pending = 0;
        for (i, v) in verdicts.iter().enumerate() {
            if v.action == Action::Continue {
                self.pending[pending] = i as u8;
                pending += 1;
                self.decided_by[i] = DECIDED_BY_NONE;
            } else {
                self.decided_by[i] = 0;
            }
        }

        for (k, stage) in rest.iter_mut().enumerate() {
            if pending == 0 {
                break;
            }
            let stage_index = (k + 1) as u16;
            for (slot, &i) in self
                .scratch_records
                .iter_mut()
                .zip(&self.pending[..pending])
            {
                *slot = records[usize::from(i)];
            }
            stage.evaluate(
                &self.scratch_records[..pending],
                &mut self.scratch_verdicts[..pending],
            );
            if self.audited.get(k + 1).copied().unwrap_or(false) {
                audit(stage, &mut self.scratch_verdicts[..pending]);
            }
            let mut still = 0;
            for j in 0..pending {
                let i = self.pending[j];
                let v = self.scratch_verdicts[j];
                if v.action == Action::Continue {
                    self.pending[still] = i;
                    still += 1;
                } else {
                    verdicts[usize::from(i)] = v;
                    self.decided_by[usize::from(i)] = stage_index;
                }
            }
            pending = still;
        }
    }
}

impl Policy for PolicyChain {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn counts_source_conns(&self) -> bool {
        self.counts_source_conns
    }

    /// Judges the batch with every stage in order; a record no stage decides keeps
    /// `Continue` (the engine applies its default). Longer inputs are judged 64 at a time.
    fn decide(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]) {
        for (recs, outs) in records
            .chunks(MAX_BATCH)
            .zip(verdicts.chunks_mut(MAX_BATCH))
        {
            self.decide_batch(recs, outs);
            if !self.observers.is_empty() {
                self.observe(recs);
            }
        }
    }
}

/// Takes an audited stage's `verdicts` out of effect: counts its denials in its module's
/// `audit_denied` and turns every verdict into `Continue`. Once per batch, no allocation.
fn audit(stage: &PolicyInstance, verdicts: &mut [VerdictRecord]) {
    let denied = verdicts
        .iter()
        .filter(|v| matches!(v.action, Action::Drop | Action::Reject))
        .count();
    ModuleCounters::add(&stage.module().inner().counters.audit_denied, denied as u64);
    verdicts.fill(VerdictRecord::CONTINUE);
}

/// One LOG line, in the shape of iptables' kernel log (`PREFIX IN= OUT= SRC= DST= PROTO=
/// SPT= DPT=`), with dataplane port ids for the interfaces. Rate-limited by the caller.
fn log_packet(prefix: &str, r: &PacketRecord) {
    tracing::info!(
        target: "bridgewall::log",
        "{prefix}IN=port{} OUT=port{} SRC={} DST={} PROTO={} SPT={} DPT={} TYPE={}",
        r.in_port,
        r.out_port,
        bytes_addr(r.src),
        bytes_addr(r.dst),
        r.protocol,
        r.src_port,
        r.dst_port,
        r.icmp_type
    );
}

impl std::fmt::Debug for PolicyChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyChain")
            .field("generation", &self.generation)
            .field(
                "modules",
                &self.modules().map(PolicyModule::name).collect::<Vec<_>>(),
            )
            .finish()
    }
}
