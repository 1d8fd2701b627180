//! The policy stage's contract: how the engine asks for verdicts on flows it has not seen.
//!
//! The engine collects the packets that miss the flow table and hands them to a [`Policy`]
//! in batches of up to [`MAX_BATCH`]; the Wasm host (`crate::wasm`) implements it for real
//! modules, [`FnPolicy`] adapts a plain closure for tests and references.
pub use rules_wasm::abi::{Action, FlowState, MAX_BATCH, PacketRecord, RULE_NONE, VerdictRecord};

/// Rule id written into fail-closed verdicts (trap, timeout, invalid verdict, quarantine).
///
/// Distinct from [`RULE_NONE`] ("no rule matched, a default decided") so that per-rule
/// counters and `trace` show that a failing module, not a rule, decided — and so that the
/// engine does not cache such a verdict for a flow: a failed batch says nothing about the
/// other flows judged in it.
pub const RULE_FAIL_CLOSED: u32 = u32::MAX - 1;

/// A source of verdicts for new (or re-decided) flows.
///
/// Implementations must be total: `decide` always writes one verdict per record, and a
/// policy that cannot decide (a trapped module, a deadline) writes its fail-closed verdict.
/// `Send` because a new policy is built on the control thread and handed to a worker.
pub trait Policy: Send {
    /// Generation of the rules in force. The flow table caches the generation with each
    /// verdict and re-decides flows whose generation differs, so a policy change applies to
    /// existing flows too.
    fn generation(&self) -> u64;

    /// Decides `records` (1 ≤ len ≤ [`MAX_BATCH`]), writing `verdicts[i]` for `records[i]`.
    /// `verdicts.len() == records.len()`. A [`Action::Continue`] at the end of the chain is
    /// resolved by the engine to its configured default.
    fn decide(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]);

    /// Whether the policy reads a record's `src_conns` (`-m connlimit`). Counting walks the
    /// source's flows, so the engine does it only for a policy that asks; others see 0, as
    /// the ABI allows.
    fn counts_source_conns(&self) -> bool {
        false
    }
}

/// A policy from a closure over one record: the reference policy of tests and examples.
pub struct FnPolicy<F> {
    generation: u64,
    f: F,
}

impl<F> FnPolicy<F>
where
    F: FnMut(&PacketRecord) -> VerdictRecord + Send,
{
    /// Wraps `f` as generation `generation`.
    pub fn new(generation: u64, f: F) -> Self {
        Self { generation, f }
    }
}

impl<F> Policy for FnPolicy<F>
where
    F: FnMut(&PacketRecord) -> VerdictRecord + Send,
{
    fn generation(&self) -> u64 {
        self.generation
    }

    fn decide(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]) {
        for (r, v) in records.iter().zip(verdicts.iter_mut()) {
            *v = (self.f)(r);
        }
    }

    /// A closure may read any field.
    fn counts_source_conns(&self) -> bool {
        true
    }
}

/// A policy that gives every packet the same action: the fail-closed stand-in before the
/// first real policy arrives, and the "accept all" of micro-benchmarks.
pub struct ConstPolicy {
    /// The action given to every record.
    pub action: Action,
    /// Generation reported to the flow table.
    pub generation: u64,
}

impl Policy for ConstPolicy {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn decide(&mut self, records: &[PacketRecord], verdicts: &mut [VerdictRecord]) {
        for v in verdicts.iter_mut().take(records.len()) {
            *v = VerdictRecord::new(self.action, RULE_NONE);
        }
    }
}
