//! `trace`: which module and rule decide one described packet, for people debugging a
//! policy ("why was this dropped?").
//!
//! Two ways, with a documented difference:
//! - [`trace`] runs the record through a given chain — the same instances a worker uses if
//!   called with that worker's chain, so the answer is exactly the dataplane's, including
//!   any state a module keeps (e.g. a rate limit); it also counts as traffic in that
//!   chain's counters and state.
//! - [`trace_fresh`] runs it through fresh instances of the same modules, on the control
//!   thread, touching no worker and no counter. For stateless modules (the compiled Docker
//!   policy is one) the answer is the dataplane's; a stateful module answers as it would on
//!   its first packet.
use std::sync::Arc;

use rules_wasm::abi::{Action, PacketRecord, VerdictRecord};

use super::chain::{DECIDED_BY_NONE, PolicyChain};
use super::error::LoadError;
use super::instance::PolicyInstance;
use super::module::PolicyModule;
use crate::policy::Policy;

/// The answer of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceResult {
    /// Generation of the chain that answered.
    pub generation: u64,
    /// Index of the deciding module in the chain, `None` if every module said Continue
    /// (the engine's default then applies).
    pub module_index: Option<usize>,
    /// Name of the deciding module, `None` as above.
    pub module_name: Option<String>,
    /// The action (`Continue` if no module decided).
    pub action: Action,
    /// The deciding rule's id as the module reported it; [`crate::wasm::RULE_FAIL_CLOSED`]
    /// if the module failed; [`rules_wasm::abi::RULE_NONE`] if no rule matched.
    pub rule_id: u32,
}

/// Runs `record` through `chain` (its own instances; see the module docs).
pub fn trace(chain: &mut PolicyChain, record: &PacketRecord) -> TraceResult {
    let mut verdict = [VerdictRecord::CONTINUE];
    chain.decide(std::slice::from_ref(record), &mut verdict);
    let decided = chain.decided_by()[0];
    let module_index = (decided != DECIDED_BY_NONE).then_some(usize::from(decided));
    TraceResult {
        generation: chain.generation(),
        module_index,
        module_name: module_index.map(|i| chain.stages()[i].name().to_string()),
        action: verdict[0].action,
        rule_id: verdict[0].rule,
    }
}

/// Runs `record` through fresh instances of `modules` (in chain order) with private
/// counters; see the module docs.
pub fn trace_fresh(
    generation: u64,
    modules: &[PolicyModule],
    record: &PacketRecord,
) -> Result<TraceResult, LoadError> {
    let stages = modules
        .iter()
        .map(|m| PolicyInstance::new(m.clone(), Arc::default(), false))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(trace(&mut PolicyChain::new(generation, stages), record))
}
