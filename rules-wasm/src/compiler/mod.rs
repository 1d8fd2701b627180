//! The rule compiler: [`RuleSet`] → a policy module (ABI v1) with `wasm-encoder`.
//!
//! Rules are kept as data, never as code: a decision tree in code took ~1 s for cranelift to
//! compile at 100k rules and grew per-packet cost with N, while data tables keep `Module::new`
//! in milliseconds and the per-packet cost flat. Per packet the module first finds the
//! packet's *class* from its ports, protocol, IP version and flow state (the `classes` module
//! explains it), which settles every rule that looks at nothing else and names the few rule
//! "shapes" worth probing; then a tuple-space search over those shapes finds the first match
//! with exact first-match order (the `tables` module explains it).
//!
//! The module imports nothing, exports `memory`, `bw_abi_version`, `bw_init` and
//! `bw_evaluate`, has a fixed-size memory (no `memory.grow`), and contains no loops whose trip
//! count the host's input can raise beyond the number of shapes and candidates.
use thiserror::Error;

use crate::model::RuleSet;

mod classes;
mod emit;
mod tables;

pub use classes::Classify;

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
    /// The classification the budget allowed (see [`Classify`]).
    pub classify: Classify,
    /// Packet classes in the class table.
    pub classes: usize,
    /// Distinct programs those classes run.
    pub programs: usize,
    /// Whether the programs are straight-line code (else interpreted from memory).
    pub inlined: bool,
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

/// How [`compile_with`] may build the module. The verdicts are the same under every option;
/// only the work per packet differs. [`compile`] uses the default (everything allowed) and
/// falls back by itself for rule sets too large for it; tests set these to check each form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    /// The most classification to use (see [`Classify`]).
    pub classify: Classify,
    /// Whether the class programs may be emitted as straight-line code (when they are few)
    /// rather than interpreted from memory.
    pub inline_programs: bool,
    /// For tests only: every key of a shape gets the same hash, so every lookup walks a
    /// probe chain and the key comparison alone tells keys apart (what real collisions,
    /// too rare to reach with random packets, rely on). Slow; never set in production.
    pub colliding_hashes: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        Self {
            classify: Classify::Full,
            inline_programs: true,
            colliding_hashes: false,
        }
    }
}

/// Compiles `set` into a policy module, classifying packets as richly as the compile budget
/// allows.
pub fn compile(set: &RuleSet) -> Result<CompiledPolicy, CompileError> {
    compile_with(set, &CompileOptions::default())
}

/// Compiles `set` with `options`.
pub fn compile_with(
    set: &RuleSet,
    options: &CompileOptions,
) -> Result<CompiledPolicy, CompileError> {
    for (position, r) in set.rules.iter().enumerate() {
        if r.id as usize != position {
            return Err(CompileError::IdsNotDense { position, id: r.id });
        }
    }
    let t = tables::build(
        &set.rules,
        options.classify,
        options.inline_programs,
        if options.colliding_hashes {
            tables::K_COLLIDE
        } else {
            tables::K_WORDS
        },
        set.default as u32,
    )
    .ok_or(CompileError::TooLarge {
        rules: set.rules.len(),
    })?;
    let wasm = emit::module(&t);
    Ok(CompiledPolicy {
        wasm,
        generation: set.generation,
        rule_origins: set.rules.iter().map(|r| r.origin.clone()).collect(),
        stats: CompileStats {
            rules: set.rules.len(),
            shapes: t.n_shapes as usize,
            classify: t.level,
            classes: t.n_classes as usize,
            programs: t.n_programs as usize,
            inlined: t.inline.is_some(),
            hash_slots: (t.hash_mask as usize + 1) * tables::BUCKET_SLOTS as usize,
            memory_bytes: t.total.div_ceil(65536) * 65536,
        },
    })
}
