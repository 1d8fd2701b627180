//! The rule compiler: [`RuleSet`] → a policy module (ABI v1) with `wasm-encoder`.
//!
//! Rules are kept as data, never as code: a decision tree in code took ~1 s for cranelift to
//! compile at 100k rules and grew per-packet cost with N, while data tables keep `Module::new`
//! in milliseconds and the per-packet cost flat. The search is a tuple-space search over rule
//! "shapes" with exact first-match order; the `tables` module explains it.
//!
//! The module imports nothing, exports `memory`, `bw_abi_version`, `bw_init` and
//! `bw_evaluate`, has a fixed-size memory (no `memory.grow`), and contains no loops whose trip
//! count the host's input can raise beyond the number of shapes and candidates.
use thiserror::Error;

use crate::abi::Action;
use crate::model::RuleSet;

mod emit;
mod tables;

/// A compiled policy: the module and what is needed to explain its verdicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The Wasm module (binary format).
    pub wasm: Vec<u8>,
    /// The rule set's generation.
    pub generation: u64,
    /// `rule_origins[id]` is the human text of the rule a verdict names (the iptables line,
    /// or e.g. "link web→db (db) 5432/tcp"), for traces and per-rule counters.
    pub rule_origins: Vec<String>,
    /// Sizes, for logs and benchmarks.
    pub stats: CompileStats,
}

/// How big the compiled tables came out; the number of shapes bounds the per-packet cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompileStats {
    /// Rules in the set.
    pub rules: usize,
    /// Distinct rule shapes (hash probes per packet, at most).
    pub shapes: usize,
    /// Hash-table slots.
    pub hash_slots: usize,
    /// Bytes of linear memory the module declares.
    pub memory_bytes: u64,
}

/// Why a rule set could not be compiled.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CompileError {
    /// `rules[i].id != i`: the set was edited without [`RuleSet::assign_ids`], so verdicts
    /// would name the wrong rules.
    #[error("rule at position {position} has id {id}; call RuleSet::assign_ids after editing")]
    IdsNotDense {
        /// Position in `rules`.
        position: usize,
        /// The id found there.
        id: u32,
    },
    /// The default action must decide or defer; all four ABI actions are allowed, so this is
    /// only about rule sets too large for a 32-bit Wasm memory.
    #[error("rule set too large for a Wasm module ({rules} rules)")]
    TooLarge {
        /// Rules in the set.
        rules: usize,
    },
}

/// Compiles `set` into a policy module.
pub fn compile(set: &RuleSet) -> Result<CompiledPolicy, CompileError> {
    for (position, r) in set.rules.iter().enumerate() {
        if r.id as usize != position {
            return Err(CompileError::IdsNotDense { position, id: r.id });
        }
    }
    let t = tables::build(&set.rules).ok_or(CompileError::TooLarge {
        rules: set.rules.len(),
    })?;
    let default: Action = set.default;
    let wasm = emit::module(&t, default as u32);
    Ok(CompiledPolicy {
        wasm,
        generation: set.generation,
        rule_origins: set.rules.iter().map(|r| r.origin.clone()).collect(),
        stats: CompileStats {
            rules: set.rules.len(),
            shapes: t.n_shapes as usize,
            hash_slots: t.hash_mask as usize + 1,
            memory_bytes: t.total.div_ceil(65536) * 65536,
        },
    })
}
