//! The compiled module's code: the same few functions for every rule set, parameterised only
//! by table addresses. Rules stay data (see [`super::tables`]), so cranelift compiles a
//! constant amount of code whatever the number of rules.
use wasm_encoder::{
    BlockType, CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function,
    FunctionSection, InstructionSink, MemArg, MemorySection, MemoryType, Module, TypeSection,
    ValType,
};

use super::tables::{
    IO_BASE, K0, K1, K2, MASKS, RULE_SIZE, SHAPE_SIZE, SHAPES, SLOT_SIZE, Tables, neg, rec, shape,
};
use crate::abi::{
    ABI_VERSION, EXPORT_ABI_VERSION, EXPORT_EVALUATE, EXPORT_INIT, EXPORT_MEMORY, MAX_BATCH,
    OFF_DST_ADDR, OFF_DST_PORT, OFF_FLOW_STATE, OFF_IN_PORT, OFF_IP_VERSION, OFF_OUT_PORT,
    OFF_PROTOCOL, OFF_SRC_ADDR, OFF_SRC_PORT, RECORD_SIZE, VERDICT_SIZE, VERDICTS_OFFSET,
};

/// Locals of `bw_evaluate` (index 0 is the parameter `n`).
mod l {
    pub const N: u32 = 0;
    pub const I: u32 = 1;
    pub const REC: u32 = 2;
    pub const PROTO: u32 = 3;
    pub const SPORT: u32 = 4;
    pub const DPORT: u32 = 5;
    pub const INP: u32 = 6;
    pub const OUTP: u32 = 7;
    pub const IPV: u32 = 8;
    pub const SBIT: u32 = 9;
    pub const BEST: u32 = 10;
    pub const SH: u32 = 11;
    pub const LST: u32 = 12;
    pub const LEND: u32 = 13;
    pub const K: u32 = 14;
    pub const RID: u32 = 15;
    pub const RA: u32 = 16;
    pub const SLOT: u32 = 17;
    pub const SA: u32 = 18;
    pub const TMP: u32 = 19;
    pub const NEGS: u32 = 20;
    /// First i64 local: src_hi, src_lo, dst_hi, dst_lo, small1, small2 (the key words, in
    /// the order of the shape masks), then the hash.
    pub const W0: u32 = 21;
    pub const H: u32 = 27;
    pub const N_I32: u32 = 20;
    pub const N_I64: u32 = 7;
}

fn mem(offset: u64, align: u32) -> MemArg {
    MemArg {
        offset,
        align,
        memory_index: 0,
    }
}

/// Emits the complete module for `t`, whose unmatched packets get `default_action`.
pub(crate) fn module(t: &Tables, default_action: u32) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    types.ty().function([ValType::I32], []);
    let mut funcs = FunctionSection::new();
    funcs.function(0).function(0).function(1);

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
    let mut f = Function::new([(l::N_I32, ValType::I32), (l::N_I64, ValType::I64)]);
    evaluate_body(&mut f.instructions(), t, default_action);
    code.function(&f);

    let mut data = DataSection::new();
    let mut seg = |at: u32, bytes: &[u8]| {
        if !bytes.is_empty() {
            data.active(0, &ConstExpr::i32_const(at as i32), bytes.iter().copied());
        }
    };
    seg(MASKS, &t.masks);
    seg(SHAPES, &t.shapes);
    seg(t.hash_base, &t.hash);
    seg(t.lists_base, &t.lists);
    seg(t.rules_base, &t.rules);

    let mut m = Module::new();
    m.section(&types)
        .section(&funcs)
        .section(&mems)
        .section(&exports)
        .section(&code)
        .section(&data);
    m.finish()
}

/// `bw_evaluate(n)`: for each record, probe every shape (lowest rule id first, stopping early),
/// check candidates in id order, and write the first match's verdict.
fn evaluate_body(s: &mut InstructionSink<'_>, t: &Tables, default_action: u32) {
    let shapes_end = (SHAPES + t.n_shapes * SHAPE_SIZE) as i32;
    // n = min(n as u32, MAX_BATCH): a misbehaving host cannot make the guest read past the area.
    s.local_get(l::N)
        .i32_const(MAX_BATCH as i32)
        .local_get(l::N)
        .i32_const(MAX_BATCH as i32)
        .i32_lt_u()
        .select()
        .local_set(l::N);
    s.i32_const(0).local_set(l::I);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        s.local_get(l::I).local_get(l::N).i32_ge_u().br_if(1);
        s.local_get(l::I)
            .i32_const(RECORD_SIZE as i32)
            .i32_mul()
            .i32_const(IO_BASE as i32)
            .i32_add()
            .local_set(l::REC);
        decode_record(s);
        s.i32_const(-1).local_set(l::BEST);
        s.i32_const(SHAPES as i32).local_set(l::SH);
        // Shapes loop.
        s.block(BlockType::Empty).loop_(BlockType::Empty);
        {
            s.local_get(l::SH).i32_const(shapes_end).i32_ge_u().br_if(1);
            s.local_get(l::SH)
                .i32_load(mem(shape::MIN_ID, 2))
                .local_get(l::BEST)
                .i32_ge_u()
                .br_if(1);
            s.local_get(l::SH)
                .i32_load(mem(shape::LIST_LEN, 2))
                .local_tee(l::LEND)
                .i32_eqz()
                .if_(BlockType::Empty);
            {
                hash_key(s);
                probe(s, t);
            }
            s.else_();
            s.local_get(l::SH)
                .i32_load(mem(shape::LIST_START, 2))
                .local_set(l::LST);
            s.end();
            scan(s, t);
            s.local_get(l::SH)
                .i32_const(SHAPE_SIZE as i32)
                .i32_add()
                .local_set(l::SH);
            s.br(0);
        }
        s.end().end();
        // Verdict.
        s.local_get(l::I)
            .i32_const(VERDICT_SIZE as i32)
            .i32_mul()
            .i32_const((IO_BASE as usize + VERDICTS_OFFSET) as i32)
            .i32_add()
            .local_set(l::SA);
        s.local_get(l::SA);
        s.local_get(l::BEST)
            .i32_const(-1)
            .i32_eq()
            .if_(BlockType::Result(ValType::I32));
        s.i32_const(default_action as i32);
        s.else_();
        s.local_get(l::BEST)
            .i32_const(RULE_SIZE as i32)
            .i32_mul()
            .i32_load(mem(u64::from(t.rules_base) + rec::ACTION, 2));
        s.end();
        s.i32_store(mem(0, 2));
        s.local_get(l::SA).local_get(l::BEST).i32_store(mem(4, 2));
        s.local_get(l::I).i32_const(1).i32_add().local_set(l::I);
        s.br(0);
    }
    s.end().end();
    s.end();
}

/// Loads the record at `REC` into locals once, so every shape and candidate reuses them.
fn decode_record(s: &mut InstructionSink<'_>) {
    let o = |x: usize| x as u64;
    for (i, off) in [
        OFF_SRC_ADDR,
        OFF_SRC_ADDR + 8,
        OFF_DST_ADDR,
        OFF_DST_ADDR + 8,
    ]
    .into_iter()
    .enumerate()
    {
        s.local_get(l::REC)
            .i64_load(mem(o(off), 3))
            .local_set(l::W0 + i as u32);
    }
    s.local_get(l::REC)
        .i32_load8_u(mem(o(OFF_PROTOCOL), 0))
        .local_set(l::PROTO);
    s.local_get(l::REC)
        .i32_load16_u(mem(o(OFF_SRC_PORT), 1))
        .local_set(l::SPORT);
    s.local_get(l::REC)
        .i32_load16_u(mem(o(OFF_DST_PORT), 1))
        .local_set(l::DPORT);
    s.local_get(l::REC)
        .i32_load16_u(mem(o(OFF_IN_PORT), 1))
        .local_set(l::INP);
    s.local_get(l::REC)
        .i32_load16_u(mem(o(OFF_OUT_PORT), 1))
        .local_set(l::OUTP);
    s.local_get(l::REC)
        .i32_load8_u(mem(o(OFF_IP_VERSION), 0))
        .local_set(l::IPV);
    // State bit; unknown state codes read as New (the ABI's rule), i.e. bit 0.
    s.i32_const(1);
    s.local_get(l::REC)
        .i32_load8_u(mem(o(OFF_FLOW_STATE), 0))
        .local_tee(l::TMP);
    s.i32_const(0)
        .local_get(l::TMP)
        .i32_const(2)
        .i32_le_u()
        .select();
    s.i32_shl().local_set(l::SBIT);
    // small1 = proto | sport << 8 | dport << 24 | in << 40; small2 = out | ipver << 16.
    s.local_get(l::PROTO).i64_extend_i32_u();
    s.local_get(l::SPORT)
        .i64_extend_i32_u()
        .i64_const(8)
        .i64_shl()
        .i64_or();
    s.local_get(l::DPORT)
        .i64_extend_i32_u()
        .i64_const(24)
        .i64_shl()
        .i64_or();
    s.local_get(l::INP)
        .i64_extend_i32_u()
        .i64_const(40)
        .i64_shl()
        .i64_or();
    s.local_set(l::W0 + 4);
    s.local_get(l::OUTP).i64_extend_i32_u();
    s.local_get(l::IPV)
        .i64_extend_i32_u()
        .i64_const(16)
        .i64_shl()
        .i64_or();
    s.local_set(l::W0 + 5);
}

/// H = hash(seed, words & shape masks), as [`super::tables::hash`].
fn hash_key(s: &mut InstructionSink<'_>) {
    s.local_get(l::SH)
        .i64_load32_u(mem(shape::SEED, 2))
        .i64_const(K0 as i64)
        .i64_mul()
        .local_set(l::H);
    for i in 0..6u32 {
        s.local_get(l::H);
        s.local_get(l::W0 + i)
            .local_get(l::SH)
            .i64_load(mem(u64::from(i) * 8, 3))
            .i64_and();
        s.i64_xor()
            .i64_const(K1 as i64)
            .i64_mul()
            .i64_const(31)
            .i64_rotl()
            .local_set(l::H);
    }
    s.local_get(l::H)
        .local_get(l::H)
        .i64_const(32)
        .i64_shr_u()
        .i64_xor()
        .local_set(l::H);
    s.local_get(l::H)
        .i64_const(K2 as i64)
        .i64_mul()
        .local_set(l::H);
    s.local_get(l::H)
        .local_get(l::H)
        .i64_const(29)
        .i64_shr_u()
        .i64_xor()
        .local_set(l::H);
}

/// Linear probing for H; leaves the candidate list in LST/LEND (LEND = 0 when absent).
fn probe(s: &mut InstructionSink<'_>, t: &Tables) {
    s.local_get(l::H)
        .i32_wrap_i64()
        .i32_const(t.hash_mask as i32)
        .i32_and()
        .local_set(l::SLOT);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        s.local_get(l::SLOT)
            .i32_const(SLOT_SIZE as i32)
            .i32_mul()
            .i32_const(t.hash_base as i32)
            .i32_add()
            .local_tee(l::SA);
        s.i32_load(mem(12, 2)).local_tee(l::LEND).i32_eqz().br_if(1);
        s.local_get(l::SA)
            .i64_load(mem(0, 3))
            .local_get(l::H)
            .i64_eq()
            .if_(BlockType::Empty);
        s.local_get(l::SA)
            .i32_load(mem(8, 2))
            .local_set(l::LST)
            .br(2);
        s.end();
        s.local_get(l::SLOT)
            .i32_const(1)
            .i32_add()
            .i32_const(t.hash_mask as i32)
            .i32_and()
            .local_set(l::SLOT);
        s.br(0);
    }
    s.end().end();
}

/// Checks LEND candidates from LST in ascending id order; the first that matches becomes BEST.
fn scan(s: &mut InstructionSink<'_>, t: &Tables) {
    s.i32_const(0).local_set(l::K);
    s.block(BlockType::Empty).loop_(BlockType::Empty);
    {
        s.local_get(l::K).local_get(l::LEND).i32_ge_u().br_if(1);
        s.local_get(l::LST)
            .local_get(l::K)
            .i32_add()
            .i32_const(4)
            .i32_mul()
            .i32_load(mem(u64::from(t.lists_base), 2))
            .local_tee(l::RID);
        s.local_get(l::BEST).i32_ge_u().br_if(1);
        s.local_get(l::RID)
            .i32_const(RULE_SIZE as i32)
            .i32_mul()
            .i32_const(t.rules_base as i32)
            .i32_add()
            .local_set(l::RA);
        check_rule(s);
        s.if_(BlockType::Empty);
        s.local_get(l::RID).local_set(l::BEST).br(2);
        s.end();
        s.local_get(l::K).i32_const(1).i32_add().local_set(l::K);
        s.br(0);
    }
    s.end().end();
}

/// Pushes 1 when the rule at RA matches the decoded record, else 0 (branch-free).
fn check_rule(s: &mut InstructionSink<'_>) {
    s.local_get(l::RA)
        .i32_load8_u(mem(rec::NEG, 0))
        .local_set(l::NEGS);
    let negbit = |s: &mut InstructionSink<'_>, bit: u32| {
        s.local_get(l::NEGS)
            .i32_const(bit as i32)
            .i32_shr_u()
            .i32_const(1)
            .i32_and()
            .i32_xor();
    };
    // Prefixes: (addr & mask[len]) == rule addr, for both 8-byte halves.
    for (w, off, len_off, bit) in [
        (l::W0, rec::SRC, rec::SRC_LEN, neg::SRC),
        (l::W0 + 2, rec::DST, rec::DST_LEN, neg::DST),
    ] {
        s.local_get(l::RA)
            .i32_load8_u(mem(len_off, 0))
            .i32_const(16)
            .i32_mul()
            .local_set(l::TMP);
        s.local_get(w)
            .local_get(l::TMP)
            .i64_load(mem(u64::from(MASKS), 3))
            .i64_and();
        s.local_get(l::RA).i64_load(mem(off, 3)).i64_eq();
        s.local_get(w + 1)
            .local_get(l::TMP)
            .i64_load(mem(u64::from(MASKS) + 8, 3))
            .i64_and();
        s.local_get(l::RA).i64_load(mem(off + 8, 3)).i64_eq();
        s.i32_and();
        negbit(s, bit);
        if bit == neg::DST {
            s.i32_and();
        }
    }
    // Masked byte/word equality: (value & mask) == rule value.
    let masked =
        |s: &mut InstructionSink<'_>, local: u32, val: u64, mask: u64, wide: bool, bit: u32| {
            s.local_get(local);
            if wide {
                s.local_get(l::RA).i32_load16_u(mem(mask, 1)).i32_and();
                s.local_get(l::RA).i32_load16_u(mem(val, 1));
            } else {
                s.local_get(l::RA).i32_load8_u(mem(mask, 0)).i32_and();
                s.local_get(l::RA).i32_load8_u(mem(val, 0));
            }
            s.i32_eq();
            negbit(s, bit);
            s.i32_and();
        };
    masked(s, l::PROTO, rec::PROTO, rec::PROTO_MASK, false, neg::PROTO);
    masked(s, l::IPV, rec::IPV, rec::IPV_MASK, false, neg::IPV);
    masked(s, l::INP, rec::IN, rec::IN_MASK, true, neg::IN);
    masked(s, l::OUTP, rec::OUT, rec::OUT_MASK, true, neg::OUT);
    // Port ranges: lo <= p && p <= hi.
    for (local, lo, hi, bit) in [
        (l::SPORT, rec::SPORT_LO, rec::SPORT_HI, neg::SPORT),
        (l::DPORT, rec::DPORT_LO, rec::DPORT_HI, neg::DPORT),
    ] {
        s.local_get(l::RA)
            .i32_load16_u(mem(lo, 1))
            .local_get(local)
            .i32_le_u();
        s.local_get(local)
            .local_get(l::RA)
            .i32_load16_u(mem(hi, 1))
            .i32_le_u();
        s.i32_and();
        negbit(s, bit);
        s.i32_and();
    }
    // State set.
    s.local_get(l::SBIT)
        .local_get(l::RA)
        .i32_load8_u(mem(rec::STATE, 0))
        .i32_and()
        .i32_const(0)
        .i32_ne()
        .i32_and();
}
