//! The data the compiled module searches: rule records, "shapes", one hash table, candidate
//! lists. Built here in Rust; searched by the fixed code in [`super::emit`].
//!
//! # Why shapes
//! A rule's *shape* says which fields it pins to one value (after masking by its prefix
//! lengths): e.g. "source /32, destination /32, tcp, dport exact, in-port exact". For one
//! shape, the rules that can match a packet are exactly those whose key equals the packet's
//! fields masked by that shape, so one hash probe per shape finds every candidate
//! (tuple-space search). Fields a rule cannot pin (negations, wide port ranges, state sets)
//! are left out of its key and checked on the candidate itself. Each rule prefix length is its
//! own shape, which makes the per-shape probes a longest-prefix-style search over CIDRs.
//!
//! Per packet the module probes each shape in order of the lowest rule id it holds and stops
//! as soon as that id is not below the best match found: first-match order is exact, and the
//! cost depends on the number of shapes (small in practice), not the number of rules.
//!
//! Candidate lists are merged by 64-bit hash value, not by key: a hash collision only adds
//! candidates that the full check of each rule then rejects (or that really match, in which
//! case they are legitimate candidates anyway), so collisions cost time, never correctness.
use std::collections::{BTreeMap, HashMap};

use crate::model::{Cidr, Match, PortRange, Rule};

/// Where the host's I/O area starts in the compiled module's memory.
pub(crate) const IO_BASE: u32 = 1024;
/// Prefix-mask table: 129 entries of 16 bytes (mask bytes for prefix length 0..=128).
pub(crate) const MASKS: u32 = 8192;
/// Shape records start here.
pub(crate) const SHAPES: u32 = 12288;
/// Bytes per rule record.
pub(crate) const RULE_SIZE: u32 = 64;
/// Bytes per shape record.
pub(crate) const SHAPE_SIZE: u32 = 64;
/// Bytes per hash-table slot.
pub(crate) const SLOT_SIZE: u32 = 16;
/// Port ranges up to this many ports (and products of both up to it) are entered under every
/// port they hold rather than checked on the candidate, so `--dport 8000:8009` stays O(1).
const EXPAND_MAX: u32 = 16;

/// Rule-record offsets (see [`rule_record`]).
pub(crate) mod rec {
    pub const SRC: u64 = 0;
    pub const DST: u64 = 16;
    pub const SRC_LEN: u64 = 32;
    pub const DST_LEN: u64 = 33;
    pub const NEG: u64 = 34;
    pub const STATE: u64 = 35;
    pub const PROTO: u64 = 36;
    pub const PROTO_MASK: u64 = 37;
    pub const IPV: u64 = 38;
    pub const IPV_MASK: u64 = 39;
    pub const SPORT_LO: u64 = 40;
    pub const SPORT_HI: u64 = 42;
    pub const DPORT_LO: u64 = 44;
    pub const DPORT_HI: u64 = 46;
    pub const IN: u64 = 48;
    pub const IN_MASK: u64 = 50;
    pub const OUT: u64 = 52;
    pub const OUT_MASK: u64 = 54;
    pub const ACTION: u64 = 56;
}

/// Negation bits in a rule record's `NEG` byte, one per negatable field.
pub(crate) mod neg {
    pub const SRC: u32 = 0;
    pub const DST: u32 = 1;
    pub const PROTO: u32 = 2;
    pub const SPORT: u32 = 3;
    pub const DPORT: u32 = 4;
    pub const IN: u32 = 5;
    pub const OUT: u32 = 6;
    pub const IPV: u32 = 7;
}

/// Shape-record offsets: six 8-byte key masks, then the fields below.
pub(crate) mod shape {
    pub const MIN_ID: u64 = 48;
    pub const SEED: u64 = 52;
    pub const LIST_START: u64 = 56;
    pub const LIST_LEN: u64 = 60;
}

/// Hash constants shared by the Rust builder and the emitted code.
pub(crate) const K0: u64 = 0x9e37_79b9_7f4a_7c15;
/// See [`K0`].
pub(crate) const K1: u64 = 0xff51_afd7_ed55_8ccd;
/// See [`K0`].
pub(crate) const K2: u64 = 0xc4ce_b9fe_1a85_ec53;

/// The key hash; the emitted code computes exactly this (`i64.mul`, `i64.rotl`, shifts).
pub(crate) fn hash(seed: u32, words: &[u64; 6]) -> u64 {
    let mut h = u64::from(seed).wrapping_mul(K0);
    for w in words {
        h = (h ^ w).wrapping_mul(K1).rotate_left(31);
    }
    h ^= h >> 32;
    h = h.wrapping_mul(K2);
    h ^ (h >> 29)
}

/// Which fields a shape pins; ordered so shapes sort deterministically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Spec {
    src_len: u8,
    dst_len: u8,
    fields: u8,
}

const F_PROTO: u8 = 1;
const F_SPORT: u8 = 2;
const F_DPORT: u8 = 4;
const F_IN: u8 = 8;
const F_OUT: u8 = 16;
const F_IPV: u8 = 32;

impl Spec {
    fn seed(&self) -> u32 {
        (u32::from(self.src_len) | u32::from(self.dst_len) << 8 | u32::from(self.fields) << 16) + 1
    }

    fn is_keyless(&self) -> bool {
        self.src_len == 0 && self.dst_len == 0 && self.fields == 0
    }

    /// The six key masks as the module loads them (little-endian words of memory bytes).
    fn masks(&self) -> [u64; 6] {
        let (sh, sl) = words(Cidr::mask_of(self.src_len));
        let (dh, dl) = words(Cidr::mask_of(self.dst_len));
        let has = |f: u8, m: u64| if self.fields & f != 0 { m } else { 0 };
        let small1 = has(F_PROTO, 0xff)
            | has(F_SPORT, 0xffff << 8)
            | has(F_DPORT, 0xffff << 24)
            | has(F_IN, 0xffff << 40);
        let small2 = has(F_OUT, 0xffff) | has(F_IPV, 0xff << 16);
        [sh, sl, dh, dl, small1, small2]
    }
}

/// A 128-bit big-endian address as the two little-endian words the module loads from memory.
pub(crate) fn words(v: u128) -> (u64, u64) {
    let b = v.to_be_bytes();
    let w = |i: usize| {
        u64::from_le_bytes([
            b[i],
            b[i + 1],
            b[i + 2],
            b[i + 3],
            b[i + 4],
            b[i + 5],
            b[i + 6],
            b[i + 7],
        ])
    };
    (w(0), w(8))
}

/// The ports a rule field is entered under, or `None` when the field stays out of the key.
fn port_keys(r: Option<crate::model::Neg<PortRange>>, budget: u32) -> Option<Vec<u16>> {
    let r = r?;
    if r.negated || r.value.lo > r.value.hi {
        return None;
    }
    let width = u32::from(r.value.hi) - u32::from(r.value.lo) + 1;
    (width <= budget).then(|| (r.value.lo..=r.value.hi).collect())
}

/// The shape of `m` and the small-field values it is entered under (one entry per expanded
/// port combination): `(spec, [(small1, small2)])`.
fn shape_of(m: &Match) -> (Spec, Vec<(u64, u64)>) {
    let plain =
        |c: Option<crate::model::Neg<Cidr>>| c.filter(|c| !c.negated).map_or(0, |c| c.value.len);
    let mut spec = Spec {
        src_len: plain(m.src),
        dst_len: plain(m.dst),
        fields: 0,
    };
    let mut small1 = 0u64;
    let mut small2 = 0u64;
    if let Some(p) = m.proto.filter(|p| !p.negated) {
        spec.fields |= F_PROTO;
        small1 |= u64::from(p.value);
    }
    if let Some(p) = m.in_port.filter(|p| !p.negated) {
        spec.fields |= F_IN;
        small1 |= u64::from(p.value) << 40;
    }
    if let Some(p) = m.out_port.filter(|p| !p.negated) {
        spec.fields |= F_OUT;
        small2 |= u64::from(p.value);
    }
    if let Some(v) = m.ip_version.filter(|v| !v.negated) {
        spec.fields |= F_IPV;
        small2 |= u64::from(v.value) << 16;
    }
    let sports = port_keys(m.sport, EXPAND_MAX);
    let budget = EXPAND_MAX / sports.as_ref().map_or(1, |v| v.len() as u32);
    let dports = port_keys(m.dport, budget);
    if sports.is_some() {
        spec.fields |= F_SPORT;
    }
    if dports.is_some() {
        spec.fields |= F_DPORT;
    }
    let mut entries = Vec::new();
    for sp in sports.unwrap_or_else(|| vec![0]) {
        for dp in dports.clone().unwrap_or_else(|| vec![0]) {
            entries.push((small1 | u64::from(sp) << 8 | u64::from(dp) << 24, small2));
        }
    }
    (spec, entries)
}

/// One rule in the module's layout: the full match (so that any candidate can be checked on
/// its own), with absent fields encoded to always pass.
fn rule_record(rule: &Rule, out: &mut Vec<u8>) {
    let m = &rule.m;
    let start = out.len();
    out.resize(start + RULE_SIZE as usize, 0);
    let b = &mut out[start..];
    let mut negs = 0u8;
    let mut flag = |bit: u32, negated: bool| {
        if negated {
            negs |= 1 << bit;
        }
    };
    let (src, src_len) = m.src.map_or((0, 0), |c| {
        flag(neg::SRC, c.negated);
        (
            c.value.addr & Cidr::mask_of(c.value.len.min(128)),
            c.value.len.min(128),
        )
    });
    let (dst, dst_len) = m.dst.map_or((0, 0), |c| {
        flag(neg::DST, c.negated);
        (
            c.value.addr & Cidr::mask_of(c.value.len.min(128)),
            c.value.len.min(128),
        )
    });
    b[0..16].copy_from_slice(&src.to_be_bytes());
    b[16..32].copy_from_slice(&dst.to_be_bytes());
    b[rec::SRC_LEN as usize] = src_len;
    b[rec::DST_LEN as usize] = dst_len;
    b[rec::STATE as usize] = m.state.map_or(0xff, |s| s.0);
    if let Some(p) = m.proto {
        flag(neg::PROTO, p.negated);
        b[rec::PROTO as usize] = p.value;
        b[rec::PROTO_MASK as usize] = 0xff;
    }
    if let Some(v) = m.ip_version {
        flag(neg::IPV, v.negated);
        b[rec::IPV as usize] = v.value;
        b[rec::IPV_MASK as usize] = 0xff;
    }
    let range = |r: Option<crate::model::Neg<PortRange>>| {
        r.map_or((0, u16::MAX), |r| (r.value.lo, r.value.hi))
    };
    let (slo, shi) = range(m.sport);
    let (dlo, dhi) = range(m.dport);
    if let Some(p) = m.sport {
        flag(neg::SPORT, p.negated);
    }
    if let Some(p) = m.dport {
        flag(neg::DPORT, p.negated);
    }
    let (inv, inm) = m.in_port.map_or((0, 0), |p| {
        flag(neg::IN, p.negated);
        (p.value, 0xffff)
    });
    let (outv, outm) = m.out_port.map_or((0, 0), |p| {
        flag(neg::OUT, p.negated);
        (p.value, 0xffff)
    });
    b[rec::NEG as usize] = negs;
    let put16 = |b: &mut [u8], off: u64, v: u16| {
        b[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes())
    };
    put16(b, rec::SPORT_LO, slo);
    put16(b, rec::SPORT_HI, shi);
    put16(b, rec::DPORT_LO, dlo);
    put16(b, rec::DPORT_HI, dhi);
    put16(b, rec::IN, inv);
    put16(b, rec::IN_MASK, inm);
    put16(b, rec::OUT, outv);
    put16(b, rec::OUT_MASK, outm);
    let a = rec::ACTION as usize;
    b[a..a + 4].copy_from_slice(&(rule.target.action() as u32).to_le_bytes());
}

/// Everything the module's data segments hold, with where each part goes.
pub(crate) struct Tables {
    /// Prefix masks, at [`MASKS`].
    pub masks: Vec<u8>,
    /// Shape records, at [`SHAPES`].
    pub shapes: Vec<u8>,
    /// Number of shapes.
    pub n_shapes: u32,
    /// Hash slots, at `hash_base`.
    pub hash: Vec<u8>,
    /// Where the hash table starts.
    pub hash_base: u32,
    /// Slot count − 1 (the count is a power of two).
    pub hash_mask: u32,
    /// Candidate lists (u32 rule ids), at `lists_base`.
    pub lists: Vec<u8>,
    /// Where the lists start.
    pub lists_base: u32,
    /// Rule records, at `rules_base`.
    pub rules: Vec<u8>,
    /// Where the rule records start.
    pub rules_base: u32,
    /// Bytes of memory the module needs.
    pub total: u64,
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Builds the tables for `rules` (already in evaluation order with `rules[i].id == i`).
/// `None` when they do not fit in a 32-bit Wasm memory.
pub(crate) fn build(rules: &[Rule]) -> Option<Tables> {
    struct Build {
        min_id: u32,
        buckets: Vec<(u64, u32)>,
        direct: Vec<u32>,
    }
    let mut shapes: BTreeMap<Spec, Build> = BTreeMap::new();
    for (id, rule) in rules.iter().enumerate() {
        let id = u32::try_from(id).ok()?;
        let (spec, entries) = shape_of(&rule.m);
        let b = shapes.entry(spec).or_insert(Build {
            min_id: id,
            buckets: Vec::new(),
            direct: Vec::new(),
        });
        if spec.is_keyless() {
            b.direct.push(id);
            continue;
        }
        let [msh, msl, mdh, mdl, m1, m2] = spec.masks();
        let plain = |c: Option<crate::model::Neg<Cidr>>| {
            c.filter(|c| !c.negated).map_or(0, |c| c.value.addr)
        };
        let (sh, sl) = words(plain(rule.m.src));
        let (dh, dl) = words(plain(rule.m.dst));
        for (s1, s2) in entries {
            let key = [sh & msh, sl & msl, dh & mdh, dl & mdl, s1 & m1, s2 & m2];
            b.buckets.push((hash(spec.seed(), &key), id));
        }
    }

    let mut order: Vec<(Spec, Build)> = shapes.into_iter().collect();
    order.sort_by_key(|(_, b)| b.min_id);

    // Merge candidates by hash value across shapes (see the module docs), ids ascending.
    let mut by_hash: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut lists: Vec<u32> = Vec::new();
    let mut shape_bytes = Vec::with_capacity(order.len() * SHAPE_SIZE as usize);
    for (spec, b) in &order {
        for (h, id) in &b.buckets {
            let v = by_hash.entry(*h).or_default();
            if v.last() != Some(id) {
                v.push(*id);
            }
        }
        let mut rec = [0u8; SHAPE_SIZE as usize];
        for (i, m) in spec.masks().iter().enumerate() {
            rec[i * 8..i * 8 + 8].copy_from_slice(&m.to_le_bytes());
        }
        let put = |rec: &mut [u8], off: u64, v: u32| {
            rec[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut rec, shape::MIN_ID, b.min_id);
        put(&mut rec, shape::SEED, spec.seed());
        if spec.is_keyless() {
            put(
                &mut rec,
                shape::LIST_START,
                u32::try_from(lists.len()).ok()?,
            );
            put(
                &mut rec,
                shape::LIST_LEN,
                u32::try_from(b.direct.len()).ok()?,
            );
            lists.extend(&b.direct);
        }
        shape_bytes.extend_from_slice(&rec);
    }

    let slots = (by_hash.len() * 2).max(8).next_power_of_two();
    let hash_mask = u32::try_from(slots - 1).ok()?;
    let mut hash_bytes = vec![0u8; slots * SLOT_SIZE as usize];
    let mut entries: Vec<(u64, Vec<u32>)> = by_hash.into_iter().collect();
    entries.sort_unstable_by_key(|(h, _)| *h);
    for (h, mut ids) in entries {
        ids.sort_unstable();
        ids.dedup();
        let mut slot = (h as u32 & hash_mask) as usize;
        while hash_bytes[slot * 16 + 12..slot * 16 + 16] != [0; 4] {
            slot = (slot + 1) & hash_mask as usize;
        }
        let s = &mut hash_bytes[slot * 16..slot * 16 + 16];
        s[0..8].copy_from_slice(&h.to_le_bytes());
        s[8..12].copy_from_slice(&u32::try_from(lists.len()).ok()?.to_le_bytes());
        s[12..16].copy_from_slice(&u32::try_from(ids.len()).ok()?.to_le_bytes());
        lists.extend(ids);
    }

    let mut masks = Vec::with_capacity(129 * 16);
    for len in 0..=128u8 {
        masks.extend_from_slice(&Cidr::mask_of(len).to_be_bytes());
    }
    let mut rule_bytes = Vec::with_capacity(rules.len() * RULE_SIZE as usize);
    for r in rules {
        rule_record(r, &mut rule_bytes);
    }

    let shapes_end = u64::from(SHAPES) + shape_bytes.len() as u64;
    let hash_base = align(shapes_end, 64);
    let lists_base = align(hash_base + hash_bytes.len() as u64, 64);
    let rules_base = align(lists_base + lists.len() as u64 * 4, 64);
    let total = rules_base + rule_bytes.len() as u64;
    // Rule addresses are computed in i32 arithmetic; stay well inside 4 GiB.
    if total >= 1 << 31 {
        return None;
    }
    Some(Tables {
        masks,
        n_shapes: u32::try_from(order.len()).ok()?,
        shapes: shape_bytes,
        hash: hash_bytes,
        hash_base: hash_base as u32,
        hash_mask,
        lists: lists.iter().flat_map(|v| v.to_le_bytes()).collect(),
        lists_base: lists_base as u32,
        rules: rule_bytes,
        rules_base: rules_base as u32,
        total,
    })
}
