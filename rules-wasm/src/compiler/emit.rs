//! The compiled module's code. Rules stay data (see [`super::tables`]); what becomes code is
//! the per-class *programs* (see [`super::classes`]) when they are few, as straight-line
//! blocks with every shape's masks and addresses as constants. Otherwise one loop interprets
//! the programs from memory. Either way cranelift compiles an amount of code bounded by the
//! number of programs, never by the number of rules.
//!
//! # Why straight-line code
//! Every loop header carries wasmtime's epoch check, which may call out of the guest, so
//! every value live across a loop must sit in one of the few callee-saved registers or be
//! spilled. An interpreted program (a loop over steps, a probe loop, a candidate loop, a
//! generic rule check) spent most of its time in spills and reloads. Inlined, a packet runs
//! one loop (over the batch); probe chains and rules with conditions beyond their key are
//! rare and live in two helper functions, `lookup` and `residual`.
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function,
    FunctionSection, InstructionSink, MemArg, MemorySection, MemoryType, Module, TypeSection,
    ValType,
};

use super::classes::Program;
use super::tables::{
    BUCKET_SIZE, BUCKET_SLOTS, CLASS_SIZE, ENTRY_SIZE, IO_BASE, K_MIX, MASKS, RULE_SIZE,
    SHAPE_SIZE, SHAPES, ShapeInfo, Tables, entry, neg, neg2, rec, shape,
};
use crate::abi::{
    ABI_VERSION, EXPORT_ABI_VERSION, EXPORT_EVALUATE, EXPORT_INIT, EXPORT_MEMORY, MAX_BATCH,
    OFF_DST_ADDR, OFF_DST_PORT, OFF_FLOW_STATE, OFF_ICMP_CODE, OFF_ICMP_TYPE, OFF_IN_PORT,
    OFF_IP_VERSION, OFF_OUT_PORT, OFF_PROTOCOL, OFF_SRC_ADDR, OFF_SRC_CONNS, OFF_SRC_PORT,
    OFF_TCP_FLAGS, RECORD_SIZE, VERDICTS_OFFSET,
};

/// Function indices.
const F_LOOKUP: u32 = 3;
const F_RESIDUAL: u32 = 4;

/// Locals of `bw_evaluate` (index 0 is the parameter `n`).
mod ev {
    pub(super) const N: u32 = 0;
    /// The current record, the end of the records, the current verdict.
    pub(super) const REC: u32 = 1;
    pub(super) const END: u32 = 2;
    pub(super) const VP: u32 = 3;
    pub(super) const BEST: u32 = 4;
    /// The current step of an interpreted program.
    pub(super) const STEP: u32 = 5;
    pub(super) const SH: u32 = 6;
    pub(super) const E: u32 = 7;
    pub(super) const SA: u32 = 8;
    pub(super) const T: u32 = 9;
    /// The action of BEST, kept with it so that a verdict needs no rule record.
    pub(super) const ACT: u32 = 10;
    pub(super) const N_I32: u32 = 10;
    /// The key hash, then the six masked key words.
    pub(super) const H: u32 = 11;
    pub(super) const M0: u32 = 12;
    /// The record's two small key words (also in [`super::SCRATCH`] for `lookup`).
    pub(super) const S1: u32 = 18;
    pub(super) const S2: u32 = 19;
    pub(super) const N_I64: u32 = 9;
}

/// Locals of `lookup(h: i64, sh: i32, rec: i32) -> i32`.
mod lk {
    pub(super) const H: u32 = 0;
    pub(super) const SH: u32 = 1;
    pub(super) const REC: u32 = 2;
    pub(super) const SLOT: u32 = 3;
    pub(super) const SA: u32 = 4;
    pub(super) const E: u32 = 5;
    pub(super) const TAG: u32 = 6;
    pub(super) const N_I32: u32 = 4;
}

/// Locals of `residual(e: i32, rec: i32, best: i32) -> i32`.
mod rs {
    pub(super) const E: u32 = 0;
    pub(super) const REC: u32 = 1;
    pub(super) const BEST: u32 = 2;
    pub(super) const K: u32 = 3;
    pub(super) const END: u32 = 4;
    pub(super) const RID: u32 = 5;
    pub(super) const RA: u32 = 6;
    pub(super) const TMP: u32 = 7;
    pub(super) const NEGS: u32 = 8;
    pub(super) const N_I32: u32 = 6;
}

/// Scratch memory for the record's two small key words (see `Spec::masks` in
/// [`super::tables`]), computed once per record; below the I/O area, which the host never
/// writes.
const SCRATCH: u64 = 0;

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        memory_index: 0,
    }
}

/// Emits the complete module for `t` (whose tables also hold the default action).
pub(crate) fn module(t: &Tables) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    types.ty().function([ValType::I32], []);
    types
        .ty()
        .function([ValType::I64, ValType::I32, ValType::I32], [ValType::I32]);
    types
        .ty()
        .function([ValType::I32, ValType::I32, ValType::I32], [ValType::I32]);
    let mut funcs = FunctionSection::new();
    funcs
        .function(0)
        .function(0)
        .function(1)
        .function(2)
        .function(3);

    let pages = t.total.div_ceil(65536).max(1);
    let mut mems = MemorySection::new();
    mems.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });

    let mut exports = ExportSection::new();
    exports.export(EXPORT_MEMORY, ExportKind::Memory, 0);
    exports.export(EXPORT_ABI_VERSION, ExportKind::Func, 0);
    exports.export(EXPORT_INIT, ExportKind::Func, 1);
    exports.export(EXPORT_EVALUATE, ExportKind::Func, 2);

    let mut code = CodeSection::new();
    let mut f = Function::new([]);
    f.instructions().i32_const(ABI_VERSION).end();
    code.function(&f);
    let mut f = Function::new([]);
    f.instructions().i32_const(IO_BASE as i32).end();
    code.function(&f);
    let mut f = Function::new([(ev::N_I32, ValType::I32), (ev::N_I64, ValType::I64)]);
    evaluate_body(&mut f.instructions(), t);
    code.function(&f);
    let mut f = Function::new([(lk::N_I32, ValType::I32)]);
    lookup_body(&mut f.instructions(), t);
    code.function(&f);
    let mut f = Function::new([(rs::N_I32, ValType::I32)]);
    residual_body(&mut f.instructions(), t);
    code.function(&f);

    let mut data = DataSection::new();
    for (at, bytes) in &t.segments {
        if !bytes.is_empty() {
            data.active(0, &ConstExpr::i32_const(*at as i32), bytes.iter().copied());
        }
    }

    let mut m = Module::new();
    m.section(&types)
        .section(&funcs)
        .section(&mems)
        .section(&exports)
        .section(&code)
        .section(&data);
    m.finish()
}

/// `bw_evaluate(n)`: for each record, find its class and run the class's program: start from
/// the class's terminal rule, probe the program's shapes in order (stopping as soon as a shape cannot hold an
/// earlier match), and write the first match's verdict.
fn evaluate_body(s: &mut InstructionSink<'_>, t: &Tables) {
    // END = IO_BASE + min(n as u32, MAX_BATCH) * RECORD_SIZE: a misbehaving host cannot make
    // the guest read past the area.
    s.local_get(ev::N)
        .i32_const(MAX_BATCH as i32)
        .local_get(ev::N)
        .i32_const(MAX_BATCH as i32)
        .i32_lt_u()
        .select()
        .i32_const(RECORD_SIZE as i32)
        .i32_mul()
        .i32_const(IO_BASE as i32)
        .i32_add()
        .local_set(ev::END);
    s.i32_const(IO_BASE as i32).local_set(ev::REC);
    s.i32_const((IO_BASE as usize + VERDICTS_OFFSET) as i32)
        .local_set(ev::VP);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        s.local_get(ev::REC).local_get(ev::END).i32_ge_u().br_if(1);
        small_words(s);
        class_value(s, t);
        match &t.inline {
            Some(programs) => dispatch(s, t, programs),
            None => interpret(s, t),
        }
        s.local_get(ev::VP).local_get(ev::ACT).i32_store(mem(0, 2));
        s.local_get(ev::VP).local_get(ev::BEST).i32_store(mem(4, 2));
        s.local_get(ev::VP).i32_const(8).i32_add().local_set(ev::VP);
        s.local_get(ev::REC)
            .i32_const(RECORD_SIZE as i32)
            .i32_add()
            .local_set(ev::REC);
        s.br(0);
    }
    s.end().end();
    s.end();
}

/// Pushes the field at `off` (u8 or u16) of the record whose address is in local `rec`.
fn field(s: &mut InstructionSink<'_>, rec: u32, off: usize, wide: bool) {
    s.local_get(rec);
    if wide {
        s.i32_load16_u(mem(off as u64, 1));
    } else {
        s.i32_load8_u(mem(off as u64, 0));
    }
}

/// Computes the record's small key words into S1 and S2 and stores them at [`SCRATCH`] (where
/// `lookup` reads them): small1 = proto | sport << 8 | dport << 24 | in << 40;
/// small2 = out | ipver << 16.
fn small_words(s: &mut InstructionSink<'_>) {
    s.i32_const(0);
    field(s, ev::REC, OFF_PROTOCOL, false);
    s.i64_extend_i32_u();
    for (off, shift) in [(OFF_SRC_PORT, 8), (OFF_DST_PORT, 24), (OFF_IN_PORT, 40)] {
        field(s, ev::REC, off, true);
        s.i64_extend_i32_u().i64_const(shift).i64_shl().i64_or();
    }
    s.local_tee(ev::S1).i64_store(mem(SCRATCH, 3));
    s.i32_const(0);
    field(s, ev::REC, OFF_OUT_PORT, true);
    field(s, ev::REC, OFF_IP_VERSION, false);
    s.i32_const(16).i32_shl().i32_or().i64_extend_i32_u();
    s.local_tee(ev::S2).i64_store(mem(SCRATCH + 8, 3));
}

/// Pushes key word `i` of the record in local `rec` (the order of the shape masks): the four
/// address words from the record, the two small words from `small` (locals S1 and S2 of
/// `bw_evaluate`) or, when `None`, from [`SCRATCH`].
fn key_word(s: &mut InstructionSink<'_>, rec: u32, i: usize, small: Option<(u32, u32)>) {
    match (i, small) {
        (0..4, _) => {
            let off = [
                OFF_SRC_ADDR,
                OFF_SRC_ADDR + 8,
                OFF_DST_ADDR,
                OFF_DST_ADDR + 8,
            ][i];
            s.local_get(rec).i64_load(mem(off as u64, 3));
        }
        (4, Some((s1, _))) => {
            s.local_get(s1);
        }
        (_, Some((_, s2))) => {
            s.local_get(s2);
        }
        (_, None) => {
            s.i32_const(0)
                .i64_load(mem(SCRATCH + (i as u64 - 4) * 8, 3));
        }
    }
}

/// Sets BEST and ACT to the record's class's terminal rule and action, and pushes the class's
/// program: a number when the programs are inlined, else the byte offset of its words. A
/// handful of loads (see
/// [`super::classes`]); every index is bounded by construction (u16 port ids, byte-sized
/// protocol, version and state).
fn class_value(s: &mut InstructionSink<'_>, t: &Tables) {
    let at = |a: u32| u64::from(a);
    // pair[in_class * out_count + out_class]
    field(s, ev::REC, OFF_IN_PORT, true);
    s.i32_const(1)
        .i32_shl()
        .i32_load16_u(mem(at(t.in_tab), 1))
        .i32_const(t.out_count as i32)
        .i32_mul();
    field(s, ev::REC, OFF_OUT_PORT, true);
    s.i32_const(1)
        .i32_shl()
        .i32_load16_u(mem(at(t.out_tab), 1))
        .i32_add()
        .i32_const(2)
        .i32_shl()
        .i32_load(mem(at(t.pair_tab), 2));
    field(s, ev::REC, OFF_PROTOCOL, false);
    s.i32_const(2)
        .i32_shl()
        .i32_load(mem(at(t.proto_tab), 2))
        .i32_add();
    field(s, ev::REC, OFF_IP_VERSION, false);
    s.i32_const(2)
        .i32_shl()
        .i32_load(mem(at(t.ipv_tab), 2))
        .i32_add();
    field(s, ev::REC, OFF_FLOW_STATE, false);
    s.i32_load8_u(mem(at(t.state_tab), 0)).i32_add();
    // The class's entry: its terminal and that rule's action start the search as BEST and
    // ACT; its program is left on the stack.
    s.i32_const(CLASS_SIZE as i32)
        .i32_mul()
        .local_tee(ev::SA)
        .i32_load(mem(at(t.class_tab) + 4, 2))
        .local_set(ev::BEST);
    s.local_get(ev::SA)
        .i32_load(mem(at(t.class_tab) + 8, 2))
        .local_set(ev::ACT);
    s.local_get(ev::SA).i32_load(mem(at(t.class_tab), 2));
}

/// Inlined programs: `br_table` on the program number into one block of straight-line code
/// per program, each setting BEST.
fn dispatch(s: &mut InstructionSink<'_>, t: &Tables, programs: &[Program]) {
    let k = programs.len() as u32;
    s.local_set(ev::T);
    s.block(BlockType::Empty);
    for _ in 0..k {
        s.block(BlockType::Empty);
    }
    let targets: Vec<u32> = (0..k).collect();
    s.local_get(ev::T).br_table(targets, k.saturating_sub(1));
    for (i, p) in (0u32..).zip(programs) {
        s.end();
        for &(shape, min_id) in &p.steps {
            inline_step(s, t, shape, min_id);
        }
        if i + 1 < k {
            s.br(k - 1 - i);
        }
    }
    s.end();
}

/// One step with shape `shape` as constants: skip unless its lowest id is below BEST; hash
/// the masked key words, check the home bucket inline, and leave anything else (a tag that
/// matches another key, a full home bucket) to `lookup`.
fn inline_step(s: &mut InstructionSink<'_>, t: &Tables, shape: u32, min_id: u32) {
    // Programs are built from the same shapes as `t.shapes`, so every step's index is in
    // range; skipping a step instead would silently change verdicts.
    let info = &t.shapes[shape as usize];
    let shape_addr = SHAPES + shape * SHAPE_SIZE;
    s.block(BlockType::Empty);
    s.local_get(ev::BEST)
        .i32_const(min_id as i32)
        .i32_le_u()
        .br_if(0);
    if let Some(e) = info.entry {
        s.i32_const(e as i32).local_set(ev::E);
        found(s, t);
        s.end();
        return;
    }
    inline_hash(s, info, &t.k_words);
    // SA = the home bucket; T = which of its four tags equal the key's (one SIMD compare).
    s.local_get(ev::H)
        .i32_wrap_i64()
        .i32_const(t.hash_mask as i32)
        .i32_and()
        .i32_const(BUCKET_SIZE as i32)
        .i32_mul()
        .i32_const(t.hash_base as i32)
        .i32_add()
        .local_tee(ev::SA)
        .v128_load(mem(0, 4));
    push_tag(s, ev::H);
    s.i32x4_splat().i32x4_eq().i32x4_bitmask().local_tee(ev::T);
    // E = the first matching slot's entry if it holds this key; else, if the bucket has a
    // free slot, no entry (the key would be here); else lookup(H, shape, REC).
    s.if_(BlockType::Result(ValType::I32));
    {
        s.local_get(ev::SA)
            .local_get(ev::T)
            .i32_ctz()
            .i32_const(2)
            .i32_shl()
            .i32_add()
            .i32_load(mem(16, 2))
            .i32_const(ENTRY_SIZE as i32)
            .i32_mul()
            .i32_const(t.entries_base as i32)
            .i32_add()
            .local_set(ev::E);
        inline_key_matches(s, info, shape);
        s.if_(BlockType::Result(ValType::I32));
        s.local_get(ev::E);
        s.else_();
        call_lookup(s, shape_addr);
        s.end();
    }
    s.else_();
    {
        s.local_get(ev::SA)
            .v128_load(mem(0, 4))
            .v128_const(0)
            .i32x4_eq()
            .i32x4_bitmask()
            .if_(BlockType::Result(ValType::I32));
        s.i32_const(0);
        s.else_();
        call_lookup(s, shape_addr);
        s.end();
    }
    s.end();
    s.local_tee(ev::E).i32_eqz().br_if(0);
    found(s, t);
    s.end();
}

fn call_lookup(s: &mut InstructionSink<'_>, shape_addr: u32) {
    s.local_get(ev::H)
        .i32_const(shape_addr as i32)
        .local_get(ev::REC)
        .call(F_LOOKUP);
}

/// Pushes the slot tag of the hash in i64 local `h`, as [`super::tables::tag`].
fn push_tag(s: &mut InstructionSink<'_>, h: u32) {
    s.local_get(h)
        .i64_const(32)
        .i64_shr_u()
        .i32_wrap_i64()
        .i32_const(1)
        .i32_or();
}

/// H = hash(seed, words & masks) with the shape's masks as constants, skipping the words it
/// does not pin; keeps each masked word in M0.. for the key comparison.
fn inline_hash(s: &mut InstructionSink<'_>, info: &ShapeInfo, k_words: &[u64; 6]) {
    s.i64_const(info.seed_hash as i64);
    for (i, (&m, &k)) in info.masks.iter().zip(k_words).enumerate() {
        if m == 0 {
            continue;
        }
        key_word(s, ev::REC, i, Some((ev::S1, ev::S2)));
        if m != u64::MAX {
            s.i64_const(m as i64).i64_and();
        }
        s.local_tee(ev::M0 + i as u32)
            .i64_const(k as i64)
            .i64_mul()
            .i64_add();
    }
    mix(s, ev::H);
}

/// Finishes the hash on the stack into i64 local `h`, as [`super::tables::hash`].
fn mix(s: &mut InstructionSink<'_>, h: u32) {
    s.local_tee(h)
        .local_get(h)
        .i64_const(32)
        .i64_shr_u()
        .i64_xor()
        .i64_const(K_MIX as i64)
        .i64_mul()
        .local_tee(h)
        .local_get(h)
        .i64_const(29)
        .i64_shr_u()
        .i64_xor()
        .local_set(h);
}

/// Pushes whether the entry at E holds exactly the masked words M0.. and the shape's index
/// (in the last word's high half, see [`entry::KEY`]).
fn inline_key_matches(s: &mut InstructionSink<'_>, info: &ShapeInfo, shape: u32) {
    s.i64_const(0);
    for (i, &m) in info.masks.iter().enumerate() {
        if i == 5 {
            if m == 0 {
                s.i64_const(i64::from(shape) << 32);
            } else {
                s.local_get(ev::M0 + 5)
                    .i64_const(i64::from(shape) << 32)
                    .i64_or();
            }
        } else if m == 0 {
            continue;
        } else {
            s.local_get(ev::M0 + i as u32);
        }
        s.local_get(ev::E)
            .i64_load(mem(entry::KEY + i as u64 * 8, 3))
            .i64_xor()
            .i64_or();
    }
    s.i64_eqz();
}

/// The entry at E matched: its exact rule is a match, and its other rules (below that id)
/// need the full check, in `residual`. BEST and ACT move together.
fn found(s: &mut InstructionSink<'_>, t: &Tables) {
    // T = exact id; if T < BEST { BEST = T; ACT = entry action } (two selects, no branch).
    s.local_get(ev::E)
        .i32_load(mem(entry::EXACT, 2))
        .local_tee(ev::T);
    s.local_get(ev::E).i32_load(mem(entry::ACTION, 2));
    s.local_get(ev::ACT)
        .local_get(ev::T)
        .local_get(ev::BEST)
        .i32_lt_u()
        .select()
        .local_set(ev::ACT);
    s.local_get(ev::BEST)
        .local_get(ev::T)
        .local_get(ev::BEST)
        .i32_lt_u()
        .select()
        .local_set(ev::BEST);
    s.local_get(ev::E)
        .i32_load(mem(entry::LIST_LEN, 2))
        .if_(BlockType::Empty);
    {
        s.local_get(ev::E)
            .local_get(ev::REC)
            .local_get(ev::BEST)
            .call(F_RESIDUAL)
            .local_tee(ev::T)
            .local_get(ev::BEST)
            .i32_ne()
            .if_(BlockType::Empty);
        s.local_get(ev::T).local_set(ev::BEST);
        s.local_get(ev::T)
            .i32_const(RULE_SIZE as i32)
            .i32_mul()
            .i32_load(mem(u64::from(t.rules_base) + rec::ACTION, 2))
            .local_set(ev::ACT);
        s.end();
    }
    s.end();
}

/// Interpreted programs: the class value is the offset of the program's words from
/// `programs`: (shape address, bound) steps ending with a sentinel `(0, u32::MAX)`.
fn interpret(s: &mut InstructionSink<'_>, t: &Tables) {
    s.i32_const(t.programs as i32).i32_add().local_set(ev::STEP);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        // Ends at the sentinel step, whose lowest id is u32::MAX.
        s.local_get(ev::STEP)
            .i32_load(mem(4, 2))
            .local_get(ev::BEST)
            .i32_ge_u()
            .br_if(1);
        s.local_get(ev::STEP)
            .i32_load(mem(0, 2))
            .local_tee(ev::SH)
            .i32_load(mem(shape::ENTRY, 2))
            .local_tee(ev::E)
            .i32_eqz()
            .if_(BlockType::Empty);
        {
            // A keyed shape: hash with the masks from its record, then look the key up.
            s.local_get(ev::SH).i64_load(mem(shape::SEED_HASH, 3));
            for (i, &k) in t.k_words.iter().enumerate() {
                key_word(s, ev::REC, i, Some((ev::S1, ev::S2)));
                s.local_get(ev::SH)
                    .i64_load(mem(i as u64 * 8, 3))
                    .i64_and()
                    .i64_const(k as i64)
                    .i64_mul()
                    .i64_add();
            }
            mix(s, ev::H);
            s.local_get(ev::H)
                .local_get(ev::SH)
                .local_get(ev::REC)
                .call(F_LOOKUP)
                .local_set(ev::E);
        }
        s.end();
        s.local_get(ev::E).if_(BlockType::Empty);
        found(s, t);
        s.end();
        s.local_get(ev::STEP)
            .i32_const(8)
            .i32_add()
            .local_set(ev::STEP);
        s.br(0);
    }
    s.end().end();
}

/// `lookup(h, sh, rec) -> entry address or 0`: the slots of h's home bucket, then of the
/// buckets after it, until the first free slot; a slot whose tag matches is the key only if
/// its entry holds the record's words masked by shape `sh`, and `sh`'s index. The table is
/// at most a quarter full, so the loop ends.
fn lookup_body(s: &mut InstructionSink<'_>, t: &Tables) {
    push_tag(s, lk::H);
    s.local_set(lk::TAG);
    s.local_get(lk::H)
        .i32_wrap_i64()
        .i32_const(t.hash_mask as i32)
        .i32_and()
        .local_set(lk::SLOT);
    s.loop_(BlockType::Empty);
    {
        s.local_get(lk::SLOT)
            .i32_const(BUCKET_SIZE as i32)
            .i32_mul()
            .i32_const(t.hash_base as i32)
            .i32_add()
            .local_set(lk::SA);
        for j in 0..u64::from(BUCKET_SLOTS) {
            s.local_get(lk::SA)
                .i32_load(mem(4 * j, 2))
                .local_tee(lk::E)
                .i32_eqz()
                .if_(BlockType::Empty);
            s.i32_const(0).return_();
            s.end();
            s.local_get(lk::E)
                .local_get(lk::TAG)
                .i32_eq()
                .if_(BlockType::Empty);
            {
                s.local_get(lk::SA)
                    .i32_load(mem(16 + 4 * j, 2))
                    .i32_const(ENTRY_SIZE as i32)
                    .i32_mul()
                    .i32_const(t.entries_base as i32)
                    .i32_add()
                    .local_set(lk::E);
                s.i64_const(0);
                for i in 0..6 {
                    key_word(s, lk::REC, i, None);
                    s.local_get(lk::SH).i64_load(mem(i as u64 * 8, 3)).i64_and();
                    if i == 5 {
                        s.local_get(lk::SH)
                            .i64_load32_u(mem(shape::INDEX, 2))
                            .i64_const(32)
                            .i64_shl()
                            .i64_or();
                    }
                    s.local_get(lk::E)
                        .i64_load(mem(entry::KEY + i as u64 * 8, 3))
                        .i64_xor()
                        .i64_or();
                }
                s.i64_eqz().if_(BlockType::Empty);
                s.local_get(lk::E).return_();
                s.end();
            }
            s.end();
        }
        s.local_get(lk::SLOT)
            .i32_const(1)
            .i32_add()
            .i32_const(t.hash_mask as i32)
            .i32_and()
            .local_set(lk::SLOT);
        s.br(0);
    }
    s.end();
    s.i32_const(0);
    s.end();
}

/// `residual(e, rec, best) -> best'`: the entry's rules that need the full check (ascending
/// ids, all below its exact rule); the first that matches below `best` is the new best.
fn residual_body(s: &mut InstructionSink<'_>, t: &Tables) {
    s.local_get(rs::E)
        .i32_load(mem(entry::LIST_START, 2))
        .local_tee(rs::K)
        .local_get(rs::E)
        .i32_load(mem(entry::LIST_LEN, 2))
        .i32_add()
        .local_set(rs::END);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        s.local_get(rs::K).local_get(rs::END).i32_ge_u().br_if(1);
        s.local_get(rs::K)
            .i32_const(4)
            .i32_mul()
            .i32_load(mem(u64::from(t.lists_base), 2))
            .local_tee(rs::RID)
            .local_get(rs::BEST)
            .i32_ge_u()
            .br_if(1);
        s.local_get(rs::RID)
            .i32_const(RULE_SIZE as i32)
            .i32_mul()
            .i32_const(t.rules_base as i32)
            .i32_add()
            .local_set(rs::RA);
        check_rule(s, rs::REC, rs::RA, rs::TMP, rs::NEGS);
        s.if_(BlockType::Empty);
        s.local_get(rs::RID).return_();
        s.end();
        s.local_get(rs::K).i32_const(1).i32_add().local_set(rs::K);
        s.br(0);
    }
    s.end().end();
    s.local_get(rs::BEST);
    s.end();
}

/// Pushes 1 when the rule at local `ra` matches the record at local `rec`, else 0
/// (branch-free); `tmp` and `negs` are scratch i32 locals.
fn check_rule(s: &mut InstructionSink<'_>, rec: u32, ra: u32, tmp: u32, negs: u32) {
    s.local_get(ra)
        .i32_load8_u(mem(rec::NEG, 0))
        .local_set(negs);
    let negbit = |s: &mut InstructionSink<'_>, bit: u32| {
        s.local_get(negs)
            .i32_const(bit as i32)
            .i32_shr_u()
            .i32_const(1)
            .i32_and()
            .i32_xor();
    };
    // Prefixes: (addr & mask[len]) == rule addr, for both 8-byte halves.
    for (addr, off, len_off, bit) in [
        (OFF_SRC_ADDR, rec::SRC, rec::SRC_LEN, neg::SRC),
        (OFF_DST_ADDR, rec::DST, rec::DST_LEN, neg::DST),
    ] {
        s.local_get(ra)
            .i32_load8_u(mem(len_off, 0))
            .i32_const(16)
            .i32_mul()
            .local_set(tmp);
        for half in [0u64, 8] {
            s.local_get(rec).i64_load(mem(addr as u64 + half, 3));
            s.local_get(tmp)
                .i64_load(mem(u64::from(MASKS) + half, 3))
                .i64_and();
            s.local_get(ra).i64_load(mem(off + half, 3)).i64_eq();
        }
        s.i32_and();
        negbit(s, bit);
        if bit == neg::DST {
            s.i32_and();
        }
    }
    // Masked byte/word equality: (value & mask) == rule value.
    let masked =
        |s: &mut InstructionSink<'_>, off: usize, val: u64, mask: u64, wide: bool, bit: u32| {
            field(s, rec, off, wide);
            if wide {
                s.local_get(ra).i32_load16_u(mem(mask, 1)).i32_and();
                s.local_get(ra).i32_load16_u(mem(val, 1));
            } else {
                s.local_get(ra).i32_load8_u(mem(mask, 0)).i32_and();
                s.local_get(ra).i32_load8_u(mem(val, 0));
            }
            s.i32_eq();
            negbit(s, bit);
            s.i32_and();
        };
    masked(
        s,
        OFF_PROTOCOL,
        rec::PROTO,
        rec::PROTO_MASK,
        false,
        neg::PROTO,
    );
    masked(s, OFF_IP_VERSION, rec::IPV, rec::IPV_MASK, false, neg::IPV);
    masked(s, OFF_IN_PORT, rec::IN, rec::IN_MASK, true, neg::IN);
    masked(s, OFF_OUT_PORT, rec::OUT, rec::OUT_MASK, true, neg::OUT);
    // Port ranges: lo <= p && p <= hi.
    for (off, lo, hi, bit) in [
        (OFF_SRC_PORT, rec::SPORT_LO, rec::SPORT_HI, neg::SPORT),
        (OFF_DST_PORT, rec::DPORT_LO, rec::DPORT_HI, neg::DPORT),
    ] {
        s.local_get(ra).i32_load16_u(mem(lo, 1));
        field(s, rec, off, true);
        s.i32_le_u();
        field(s, rec, off, true);
        s.local_get(ra).i32_load16_u(mem(hi, 1)).i32_le_u();
        s.i32_and();
        negbit(s, bit);
        s.i32_and();
    }
    // TCP flags and ICMP type/code: masked equalities, negated by the NEG2 byte.
    s.local_get(ra)
        .i32_load8_u(mem(rec::NEG2, 0))
        .local_set(negs);
    field(s, rec, OFF_TCP_FLAGS, false);
    s.local_get(ra)
        .i32_load8_u(mem(rec::TCPF_MASK, 0))
        .i32_and();
    s.local_get(ra).i32_load8_u(mem(rec::TCPF_SET, 0)).i32_eq();
    negbit(s, neg2::TCPF);
    s.i32_and();
    field(s, rec, OFF_ICMP_TYPE, false);
    s.local_get(ra)
        .i32_load8_u(mem(rec::ICMP_TYPE_MASK, 0))
        .i32_and();
    s.local_get(ra).i32_load8_u(mem(rec::ICMP_TYPE, 0)).i32_eq();
    field(s, rec, OFF_ICMP_CODE, false);
    s.local_get(ra)
        .i32_load8_u(mem(rec::ICMP_CODE_MASK, 0))
        .i32_and();
    s.local_get(ra).i32_load8_u(mem(rec::ICMP_CODE, 0)).i32_eq();
    s.i32_and();
    negbit(s, neg2::ICMP);
    s.i32_and();
    // Connections: lo <= src_conns + 1 <= hi (unsigned; the count fits well within u32).
    s.local_get(ra).i32_load(mem(rec::CONN_LO, 2));
    field(s, rec, OFF_SRC_CONNS, true);
    s.i32_const(1).i32_add().local_tee(tmp).i32_le_u();
    s.local_get(tmp);
    s.local_get(ra).i32_load(mem(rec::CONN_HI, 2)).i32_le_u();
    s.i32_and();
    negbit(s, neg2::CONN);
    s.i32_and();
    // State set: bit 1 << state, unknown state bytes read as New (bit 0), the ABI's rule.
    s.i32_const(1);
    field(s, rec, OFF_FLOW_STATE, false);
    s.local_tee(tmp)
        .i32_const(0)
        .local_get(tmp)
        .i32_const(3)
        .i32_le_u()
        .select()
        .i32_shl();
    s.local_get(ra)
        .i32_load8_u(mem(rec::STATE, 0))
        .i32_and()
        .i32_const(0)
        .i32_ne()
        .i32_and();
}
