//! The data the compiled module searches: shape records, key entries, hash slots, candidate
//! lists, rule records, and the class tables and programs of [`super::classes`]. Built here
//! in Rust; searched by the code of [`super::emit`].
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
//! Rules that look only at the cheap fields the classes cover are in no shape: the class
//! decides them (see [`super::classes`]). Per packet the module probes the shapes its class
//! lists, in order of the lowest relevant rule id, and stops as soon as that id is not below
//! the best match found: first-match order is exact.
//!
//! # Entries and slots
//! Each distinct (shape, key) is an *entry* holding the key itself, so a probe compares keys,
//! not just hashes: a rule whose conditions are all in its key (most rules) matches as soon
//! as its key does, without reading the rule. Rules with conditions beyond their key hang off
//! the entry as a candidate list and get the full check. Entries are found through slots (a
//! 32-bit tag of the hash and the entry's index) in buckets of four, in an open-addressing
//! table at most a quarter full, so a probe almost always ends in its home bucket, checked
//! with one SIMD compare; hash collisions only cost a longer probe, never a wrong answer.
use std::collections::{BTreeMap, HashMap};

use super::classes::{self, Classify, Groups, Plan, Program, field};
use crate::model::{Cidr, Match, PortRange, Rule};

/// Where the host's I/O area starts in the compiled module's memory.
pub(crate) const IO_BASE: u32 = 1024;
/// Prefix-mask table: 129 entries of 16 bytes (mask bytes for prefix length 0..=128).
pub(crate) const MASKS: u32 = 8192;
/// Shape records start here.
pub(crate) const SHAPES: u32 = 12288;
/// Bytes per rule record.
pub(crate) const RULE_SIZE: u32 = 80 + 16;
/// Bytes per shape record.
pub(crate) const SHAPE_SIZE: u32 = 64;
/// Slots per hash bucket: four 32-bit tags (0 = empty) then their four entry indices, so one
/// SIMD compare checks a whole bucket.
pub(crate) const BUCKET_SLOTS: u32 = 4;
/// Bytes per class-table entry: the program (its number, or its words' offset), the terminal
/// rule id and that rule's action (the default's when the id is `u32::MAX`).
pub(crate) const CLASS_SIZE: u32 = 12;
/// Bytes per hash bucket.
pub(crate) const BUCKET_SIZE: u32 = 32;
/// Bytes per entry record (see [`entry`]).
pub(crate) const ENTRY_SIZE: u32 = 64;
/// Port ranges up to this many ports (and products of both up to it) are entered under every
/// port they hold rather than checked on the candidate, so `--dport 8000:8009` stays O(1).
const EXPAND_MAX: u32 = 16;

/// Rule-record offsets (see [`rule_record`]).
pub(crate) mod rec {
    pub(crate) const SRC: u64 = 0;
    pub(crate) const DST: u64 = 16;
    pub(crate) const SRC_LEN: u64 = 32;
    pub(crate) const DST_LEN: u64 = 33;
    pub(crate) const NEG: u64 = 34;
    pub(crate) const STATE: u64 = 35;
    pub(crate) const PROTO: u64 = 36;
    pub(crate) const PROTO_MASK: u64 = 37;
    pub(crate) const IPV: u64 = 38;
    pub(crate) const IPV_MASK: u64 = 39;
    pub(crate) const SPORT_LO: u64 = 40;
    pub(crate) const SPORT_HI: u64 = 42;
    pub(crate) const DPORT_LO: u64 = 44;
    pub(crate) const DPORT_HI: u64 = 46;
    pub(crate) const IN: u64 = 48;
    pub(crate) const IN_MASK: u64 = 50;
    pub(crate) const OUT: u64 = 52;
    pub(crate) const OUT_MASK: u64 = 54;
    pub(crate) const ACTION: u64 = 56;
    pub(crate) const TCPF_MASK: u64 = 60;
    pub(crate) const TCPF_SET: u64 = 61;
    pub(crate) const ICMP_TYPE: u64 = 62;
    pub(crate) const ICMP_TYPE_MASK: u64 = 63;
    pub(crate) const ICMP_CODE: u64 = 64;
    pub(crate) const ICMP_CODE_MASK: u64 = 65;
    /// Negation bits of the fields past the first byte's eight (see [`super::neg2`]).
    pub(crate) const NEG2: u64 = 66;
    /// Connection counts, `lo..=hi` (u32 each; absent: `0..=u32::MAX`).
    pub(crate) const CONN_LO: u64 = 68;
    pub(crate) const CONN_HI: u64 = 72;
}

/// Negation bits in a rule record's `NEG2` byte.
pub(crate) mod neg2 {
    pub(crate) const TCPF: u32 = 0;
    pub(crate) const ICMP: u32 = 1;
    pub(crate) const CONN: u32 = 2;
}

/// Negation bits in a rule record's `NEG` byte, one per negatable field.
pub(crate) mod neg {
    pub(crate) const SRC: u32 = 0;
    pub(crate) const DST: u32 = 1;
    pub(crate) const PROTO: u32 = 2;
    pub(crate) const SPORT: u32 = 3;
    pub(crate) const DPORT: u32 = 4;
    pub(crate) const IN: u32 = 5;
    pub(crate) const OUT: u32 = 6;
    pub(crate) const IPV: u32 = 7;
}

/// Shape-record offsets: six 8-byte key masks, then the fields below.
pub(crate) mod shape {
    /// The shape's seed, already multiplied into the hash's starting value.
    pub(crate) const SEED_HASH: u64 = 48;
    /// For a keyless shape (one that pins nothing), the address of its one entry; 0 for a
    /// keyed shape, whose entries are found through the hash table.
    pub(crate) const ENTRY: u64 = 56;
    /// The shape's index (see [`super::entry::KEY`]).
    pub(crate) const INDEX: u64 = 60;
}

/// Entry-record offsets. An entry is one (shape, key) that rules were entered under: the key,
/// the lowest id of its *exact* rules (those the key alone decides, so a key match is a rule
/// match) with that rule's action, and the list of its other rules below that id, which need
/// the full check. Carrying the action here means a hit never touches the rule records: at
/// 100k rules those are another page per packet, and TLB misses were what made large rule
/// sets slower than small ones.
pub(crate) mod entry {
    /// Six 8-byte key words, already masked by the shape. The last word's high half, which
    /// no key uses, holds the shape's index, so that two shapes' equal keys stay apart.
    pub(crate) const KEY: u64 = 0;
    /// Lowest exact rule id, or `u32::MAX`.
    pub(crate) const EXACT: u64 = 48;
    /// Index of the first candidate in the lists, and how many.
    pub(crate) const LIST_START: u64 = 52;
    pub(crate) const LIST_LEN: u64 = 56;
    /// The exact rule's action.
    pub(crate) const ACTION: u64 = 60;
}

/// Odd multipliers, one per key word, shared by the Rust builder and the emitted code.
pub(crate) const K_WORDS: [u64; 6] = [
    0x9e37_79b9_7f4a_7c15,
    0xc2b2_ae3d_27d4_eb4f,
    0x1656_67b1_9e37_79f9,
    0xd6e8_feb8_6659_fd93,
    0xff51_afd7_ed55_8ccd,
    0xc4ce_b9fe_1a85_ec53,
];
/// Multiplier of the seed.
pub(crate) const K_SEED: u64 = 0x94d0_49bb_1331_11eb;
/// Multiplier of the final mix.
pub(crate) const K_MIX: u64 = 0xbf58_476d_1ce4_e5b9;

/// A slot's tag for hash `h`: its high half, never 0 (0 marks an empty slot).
pub(crate) fn tag(h: u64) -> u32 {
    (h >> 32) as u32 | 1
}

/// A shape's starting hash value (stored in its record, so the module does not recompute it).
pub(crate) fn seed_hash(seed: u32) -> u64 {
    u64::from(seed).wrapping_mul(K_SEED)
}

/// Word multipliers that make every key of a shape hash alike, so that tests can exercise
/// collisions (see [`super::CompileOptions::colliding_hashes`]).
pub(crate) const K_COLLIDE: [u64; 6] = [0; 6];

/// The key hash with word multipliers `k` ([`K_WORDS`]); the emitted code computes exactly
/// this. The six products are independent, so they run in parallel: about a third of the
/// latency of a chained hash, which dominated the cost per probe.
pub(crate) fn hash(seed: u32, words: &[u64; 6], k: &[u64; 6]) -> u64 {
    let mut h = seed_hash(seed);
    for (w, k) in words.iter().zip(k) {
        h = h.wrapping_add(w.wrapping_mul(*k));
    }
    h ^= h >> 32;
    h = h.wrapping_mul(K_MIX);
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
    b[a..a + 4].copy_from_slice(&rule.target.word().to_le_bytes());
    let mut negs2 = 0u8;
    if let Some(t) = m.tcp_flags {
        negs2 |= u8::from(t.negated) << neg2::TCPF;
        b[rec::TCPF_MASK as usize] = t.value.mask;
        b[rec::TCPF_SET as usize] = t.value.set;
    }
    if let Some(t) = m.icmp {
        negs2 |= u8::from(t.negated) << neg2::ICMP;
        b[rec::ICMP_TYPE as usize] = t.value.ty;
        b[rec::ICMP_TYPE_MASK as usize] = 0xff;
        if let Some(c) = t.value.code {
            b[rec::ICMP_CODE as usize] = c;
            b[rec::ICMP_CODE_MASK as usize] = 0xff;
        }
    }
    let (clo, chi) = m.conns.map_or((0, u32::MAX), |c| {
        negs2 |= u8::from(c.negated) << neg2::CONN;
        (c.value.lo, c.value.hi)
    });
    b[rec::CONN_LO as usize..rec::CONN_LO as usize + 4].copy_from_slice(&clo.to_le_bytes());
    b[rec::CONN_HI as usize..rec::CONN_HI as usize + 4].copy_from_slice(&chi.to_le_bytes());
    b[rec::NEG2 as usize] = negs2;
}

/// Everything the module's memory holds, and where the code finds it.
pub(crate) struct Tables {
    /// Data segments: `(address, bytes)`, non-overlapping.
    pub segments: Vec<(u32, Vec<u8>)>,
    /// Number of shapes.
    pub n_shapes: u32,
    /// Ingress-class table: u16 per port id.
    pub in_tab: u32,
    /// Egress-class table: u16 per port id.
    pub out_tab: u32,
    /// Egress class count (the pair table's row length).
    pub out_count: u32,
    /// Pair table: u32 per (ingress class, egress class).
    pub pair_tab: u32,
    /// Protocol table: u32 per protocol number.
    pub proto_tab: u32,
    /// IP-version table: u32 per version byte.
    pub ipv_tab: u32,
    /// State table: u8 per state byte.
    pub state_tab: u32,
    /// Class table: per class, [`CLASS_SIZE`] bytes (program, terminal rule, its action).
    pub class_tab: u32,
    /// Programs (see [`super::classes::Classes::programs`]).
    pub programs: u32,
    /// Where the hash buckets start.
    pub hash_base: u32,
    /// Where the entry records start.
    pub entries_base: u32,
    /// Bucket count − 1 (the count is a power of two).
    pub hash_mask: u32,
    /// Where the candidate lists (u32 rule ids) start.
    pub lists_base: u32,
    /// Where the rule records start.
    pub rules_base: u32,
    /// Bytes of memory the module needs.
    pub total: u64,
    /// Classification used, classes and distinct programs, for [`super::CompileStats`].
    pub level: Classify,
    /// Number of classes.
    pub n_classes: u32,
    /// Number of distinct programs.
    pub n_programs: u32,
    /// The programs, when they are emitted as code (see [`MAX_INLINE_PROGRAMS`]); `None` when
    /// the module interprets them from memory.
    pub inline: Option<Vec<Program>>,
    /// What the emitted code needs of each shape, in shape order.
    pub shapes: Vec<ShapeInfo>,
    /// The hash's word multipliers ([`K_WORDS`], or [`K_COLLIDE`] in tests).
    pub k_words: [u64; 6],
}

/// The ABI action code of `rule`.
fn action_of(rule: &Rule) -> u32 {
    rule.target.word()
}

/// A shape as inlined code sees it: constants instead of loads from its record.
pub(crate) struct ShapeInfo {
    /// The six key masks.
    pub masks: [u64; 6],
    /// The starting hash value.
    pub seed_hash: u64,
    /// For a keyless shape, the address of its one entry.
    pub entry: Option<u32>,
}

/// Programs are emitted as straight-line code (one block per program, constants for every
/// shape) when there are at most this many of them and [`MAX_INLINE_STEPS`] steps in all:
/// the usual case, since a Docker rule set has a few dozen (a host with fifty bridge networks
/// and a thousand user rules: some sixty programs, 250 steps). More, and the module
/// interprets them from memory instead, so its code size (and cranelift's time) stays
/// bounded whatever the rule set.
pub(crate) const MAX_INLINE_PROGRAMS: usize = 128;
/// See [`MAX_INLINE_PROGRAMS`].
pub(crate) const MAX_INLINE_STEPS: usize = 256;

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Bytes of a port-class table (u16 per possible port id).
const PORT_TAB: u64 = 65536 * 2;

/// Whether `m`, entered under `spec`, is decided by its key alone: every condition it has is
/// pinned in the key (no negation, no unexpanded port range, no state set).
fn is_exact(m: &Match, spec: &Spec) -> bool {
    let plain = |n: Option<bool>| n != Some(true);
    plain(m.src.map(|c| c.negated))
        && plain(m.dst.map(|c| c.negated))
        && plain(m.proto.map(|c| c.negated))
        && plain(m.in_port.map(|c| c.negated))
        && plain(m.out_port.map(|c| c.negated))
        && plain(m.ip_version.map(|c| c.negated))
        && plain(m.sport.map(|c| c.negated))
        && plain(m.dport.map(|c| c.negated))
        && m.state.is_none()
        && m.tcp_flags.is_none()
        && m.icmp.is_none()
        && m.conns.is_none()
        && (m.sport.is_none() || spec.fields & F_SPORT != 0)
        && (m.dport.is_none() || spec.fields & F_DPORT != 0)
}

/// A shape being built: its lowest rule id, and its rules' keys (one per expanded port
/// combination; one all-zero key for a keyless shape) with whether each rule is exact.
struct ShapeBuild {
    spec: Spec,
    min_id: u32,
    keys: Vec<([u64; 6], u32, bool)>,
}

/// Shapes and rule groups of `rules` under `plan`: shapes in probe order, and the groups.
fn shapes_and_groups(rules: &[Rule], plan: &Plan) -> Option<(Vec<ShapeBuild>, Groups)> {
    let mut shapes: BTreeMap<Spec, ShapeBuild> = BTreeMap::new();
    let mut placed: Vec<Option<Spec>> = Vec::with_capacity(rules.len());
    for (id, rule) in rules.iter().enumerate() {
        let id = u32::try_from(id).ok()?;
        if plan.is_terminal(&rule.m) {
            placed.push(None);
            continue;
        }
        let (spec, entries) = shape_of(&rule.m);
        placed.push(Some(spec));
        let exact = is_exact(&rule.m, &spec);
        let b = shapes.entry(spec).or_insert(ShapeBuild {
            spec,
            min_id: id,
            keys: Vec::new(),
        });
        if spec.is_keyless() {
            b.keys.push(([0; 6], id, exact));
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
            b.keys.push((key, id, exact));
        }
    }
    let mut order: Vec<ShapeBuild> = shapes.into_values().collect();
    order.sort_by_key(|b| b.min_id);
    let index: HashMap<Spec, u32> = order.iter().zip(0u32..).map(|(b, i)| (b.spec, i)).collect();
    let mut groups = Groups::default();
    for ((rule, spec), id) in rules.iter().zip(&placed).zip(0u32..) {
        let shape = match spec {
            Some(s) => Some(*index.get(s)?),
            None => None,
        };
        groups.add(plan, &rule.m, id, shape);
    }
    Some((order, groups))
}

/// One (shape, key) being built: its lowest exact rule and its other rules.
struct EntryBuild {
    shape: u32,
    key: [u64; 6],
    exact: u32,
    others: Vec<u32>,
}

/// The entries of `order`'s shapes (in order of first appearance) and, per shape, the index
/// of its keyless entry.
fn entries(order: &[ShapeBuild]) -> (Vec<EntryBuild>, Vec<Option<u32>>) {
    let mut out: Vec<EntryBuild> = Vec::new();
    let mut index: HashMap<(u32, [u64; 6]), usize> = HashMap::new();
    let mut keyless = Vec::with_capacity(order.len());
    for (b, shape) in order.iter().zip(0u32..) {
        for &(key, id, exact) in &b.keys {
            let at = *index.entry((shape, key)).or_insert_with(|| {
                out.push(EntryBuild {
                    shape,
                    key,
                    exact: u32::MAX,
                    others: Vec::new(),
                });
                out.len() - 1
            });
            let e = &mut out[at];
            if exact {
                e.exact = e.exact.min(id);
            } else if e.others.last() != Some(&id) {
                e.others.push(id);
            }
        }
        let entry = index.get(&(shape, [0; 6])).map(|&i| i as u32);
        keyless.push(entry.filter(|_| b.spec.is_keyless()));
    }
    for e in &mut out {
        // Rules are entered in ascending id order; those at or past the exact rule can never
        // be the first match through this entry.
        let exact = e.exact;
        e.others.retain(|&id| id < exact);
    }
    (out, keyless)
}

/// The `(address, bytes)` runs of a u16 table that are not zero, with short gaps bridged,
/// so a port-class table costs data only where ports are named.
fn port_table_segments(
    base: u32,
    named: impl Iterator<Item = (u16, u32)>,
) -> Option<Vec<(u32, Vec<u8>)>> {
    let mut entries = Vec::new();
    for (port, class) in named {
        // `classes::fits` keeps port classes within u16.
        entries.push((port, u16::try_from(class).ok()?));
    }
    entries.sort_unstable();
    let mut out: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut last: Option<u16> = None;
    for (port, class) in entries {
        let at = base + u32::from(port) * 2;
        match (last, out.last_mut()) {
            (Some(prev), Some((_, bytes))) if port - prev <= 32 => {
                bytes.resize(bytes.len() + usize::from(port - prev - 1) * 2, 0);
                bytes.extend_from_slice(&class.to_le_bytes());
            }
            _ => out.push((at, class.to_le_bytes().to_vec())),
        }
        last = Some(port);
    }
    Some(out)
}

/// Builds the tables for `rules` (already in evaluation order with `rules[i].id == i`),
/// classifying as richly as `max` allows within [`classes::BUDGET`], with the programs
/// inlined as code if `inline` and they are few enough, hashing with multipliers `k_words`;
/// packets no rule matches get `default_action`. `None` when they do not fit in a 32-bit Wasm memory.
pub(crate) fn build(
    rules: &[Rule],
    max: Classify,
    inline: bool,
    k_words: [u64; 6],
    default_action: u32,
) -> Option<Tables> {
    let mut level = max;
    let (plan, order, cls) = loop {
        let plan = Plan::new(rules, level);
        let (order, groups) = shapes_and_groups(rules, &plan)?;
        let budget = if level == Classify::None {
            // One class: always within any budget.
            classes::Budget {
                pairs: u64::MAX,
                classes: u64::MAX,
                work: u64::MAX,
            }
        } else {
            classes::BUDGET
        };
        if classes::fits(&plan, &groups, &budget)
            && let Some(cls) = classes::build(&plan, groups, &budget)
        {
            break (plan, order, cls);
        }
        level = match level {
            Classify::Full => Classify::NoPorts,
            _ => Classify::None,
        };
    };
    build_with(rules, &plan, order, cls, inline, k_words, default_action)
}

fn build_with(
    rules: &[Rule],
    plan: &Plan,
    order: Vec<ShapeBuild>,
    cls: classes::Classes,
    inline: bool,
    k_words: [u64; 6],
    default_action: u32,
) -> Option<Tables> {
    let (entry_builds, keyless) = entries(&order);
    let n_shapes = u32::try_from(order.len()).ok()?;
    let shape_addr = |s: u32| SHAPES + s * SHAPE_SIZE;

    // Slots: open addressing with linear probing at a load of at most 1/4, so a probe that
    // misses usually stops at its first slot.
    let keyed: Vec<(usize, u64)> = entry_builds
        .iter()
        .enumerate()
        .filter(|(_, e)| !order[e.shape as usize].spec.is_keyless())
        .map(|(i, e)| {
            (
                i,
                hash(order[e.shape as usize].spec.seed(), &e.key, &k_words),
            )
        })
        .collect();
    // Buckets of four slots, at least four slots per entry (a quarter full): an entry goes to
    // the first slot free from its home bucket on, so a key is always found before the first
    // bucket with a free slot, and almost always in its home bucket. Only a full home bucket
    // (about 2% at this load) sends a probe to `lookup`'s loop.
    let buckets = keyed.len().max(1).next_power_of_two();
    let hash_mask = u32::try_from(buckets - 1).ok()?;
    let mut slot_bytes = vec![0u8; buckets * BUCKET_SIZE as usize];
    for &(i, h) in &keyed {
        let mut b = (h as u32 & hash_mask) as usize * BUCKET_SIZE as usize;
        let j = loop {
            if let Some(j) = (0..4).find(|j| slot_bytes[b + j * 4..b + j * 4 + 4] == [0; 4]) {
                break j;
            }
            b = (b + BUCKET_SIZE as usize) % slot_bytes.len();
        };
        slot_bytes[b + j * 4..b + j * 4 + 4].copy_from_slice(&tag(h).to_le_bytes());
        slot_bytes[b + 16 + j * 4..b + 16 + j * 4 + 4]
            .copy_from_slice(&u32::try_from(i).ok()?.to_le_bytes());
    }

    let mut lists: Vec<u32> = Vec::new();
    let mut entry_bytes = Vec::with_capacity(entry_builds.len() * ENTRY_SIZE as usize);
    for e in &entry_builds {
        let mut rec = [0u8; ENTRY_SIZE as usize];
        for (i, w) in e.key.iter().enumerate() {
            let w = if i == 5 {
                w | u64::from(e.shape) << 32
            } else {
                *w
            };
            rec[i * 8..i * 8 + 8].copy_from_slice(&w.to_le_bytes());
        }
        let put = |rec: &mut [u8], off: u64, v: u32| {
            rec[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut rec, entry::EXACT, e.exact);
        put(
            &mut rec,
            entry::LIST_START,
            u32::try_from(lists.len()).ok()?,
        );
        put(
            &mut rec,
            entry::LIST_LEN,
            u32::try_from(e.others.len()).ok()?,
        );
        let action = rules.get(e.exact as usize).map_or(0, action_of);
        put(&mut rec, entry::ACTION, action);
        lists.extend(&e.others);
        entry_bytes.extend_from_slice(&rec);
    }

    let mut masks = Vec::with_capacity(129 * 16);
    for len in 0..=128u8 {
        masks.extend_from_slice(&Cidr::mask_of(len).to_be_bytes());
    }
    let mut rule_bytes = Vec::with_capacity(rules.len() * RULE_SIZE as usize);
    for r in rules {
        rule_record(r, &mut rule_bytes);
    }

    let words = |v: &[u32]| -> Vec<u8> { v.iter().flat_map(|w| w.to_le_bytes()).collect() };
    let steps: usize = cls.programs.iter().map(|p| p.steps.len()).sum();
    let inline = inline && cls.programs.len() <= MAX_INLINE_PROGRAMS && steps <= MAX_INLINE_STEPS;
    // Inlined programs are code, so a class names its program by number; otherwise by the
    // byte offset of the program's words.
    let mut program_words: Vec<u32> = Vec::new();
    let program_value: Vec<u32> = if inline {
        (0..cls.programs.len() as u32).collect()
    } else {
        let mut offsets = Vec::with_capacity(cls.programs.len());
        for p in &cls.programs {
            offsets.push(u32::try_from(program_words.len() * 4).ok()?);
            program_words.extend(p.words(shape_addr));
        }
        offsets
    };
    // Per class, [`CLASS_SIZE`] bytes: the program, the terminal rule and its action.
    let mut class_words: Vec<u32> = Vec::with_capacity(cls.class.len() * 3);
    for &(p, terminal) in &cls.class {
        let action = rules
            .get(terminal as usize)
            .map_or(default_action, action_of);
        class_words.extend([program_value[p as usize], terminal, action]);
    }

    // Layout, each part 64-byte aligned after the shape records.
    let mut at = u64::from(SHAPES) + u64::from(n_shapes) * u64::from(SHAPE_SIZE);
    let mut place = |len: u64| {
        let start = align(at, 64);
        at = start + len;
        start
    };
    let in_tab = place(PORT_TAB);
    let out_tab = place(PORT_TAB);
    let pair_tab = place(cls.pair.len() as u64 * 4);
    let proto_tab = place(256 * 4);
    let ipv_tab = place(256 * 4);
    let state_tab = place(256);
    let class_tab = place(class_words.len() as u64 * 4);
    let programs = place(program_words.len() as u64 * 4);
    let hash_base = place(slot_bytes.len() as u64);
    let entries_base = place(entry_bytes.len() as u64);
    let lists_base = place(lists.len() as u64 * 4);
    let rules_base = place(rule_bytes.len() as u64);
    let total = at;
    // Addresses are computed in i32 arithmetic; stay well inside 4 GiB.
    if total >= 1 << 31 {
        return None;
    }
    let a = |v: u64| v as u32;

    let mut shape_bytes = Vec::with_capacity(order.len() * SHAPE_SIZE as usize);
    let mut shape_info = Vec::with_capacity(order.len());
    for (b, keyless) in order.iter().zip(&keyless) {
        shape_info.push(ShapeInfo {
            masks: b.spec.masks(),
            seed_hash: seed_hash(b.spec.seed()),
            entry: keyless.map(|e| a(entries_base) + e * ENTRY_SIZE),
        });
        let mut rec = [0u8; SHAPE_SIZE as usize];
        for (i, m) in b.spec.masks().iter().enumerate() {
            rec[i * 8..i * 8 + 8].copy_from_slice(&m.to_le_bytes());
        }
        let sh = shape::SEED_HASH as usize;
        rec[sh..sh + 8].copy_from_slice(&seed_hash(b.spec.seed()).to_le_bytes());
        if let Some(e) = keyless {
            let addr = a(entries_base) + e * ENTRY_SIZE;
            let en = shape::ENTRY as usize;
            rec[en..en + 4].copy_from_slice(&addr.to_le_bytes());
        }
        let ix = shape::INDEX as usize;
        rec[ix..ix + 4].copy_from_slice(&(shape_info.len() as u32 - 1).to_le_bytes());
        shape_bytes.extend_from_slice(&rec);
    }

    let mut segments = vec![
        (MASKS, masks),
        (SHAPES, shape_bytes),
        (a(pair_tab), words(&cls.pair)),
        (a(proto_tab), words(&cls.proto)),
        (a(ipv_tab), words(&cls.ipv)),
        (a(state_tab), cls.state.to_vec()),
        (a(class_tab), words(&class_words)),
        (a(programs), words(&program_words)),
        (a(hash_base), slot_bytes),
        (a(entries_base), entry_bytes),
        (a(lists_base), words(&lists)),
        (a(rules_base), rule_bytes),
    ];
    segments.extend(port_table_segments(
        a(in_tab),
        plan.field(field::IN).named(),
    )?);
    segments.extend(port_table_segments(
        a(out_tab),
        plan.field(field::OUT).named(),
    )?);
    Some(Tables {
        segments,
        n_shapes,
        in_tab: a(in_tab),
        out_tab: a(out_tab),
        out_count: cls.out_count,
        pair_tab: a(pair_tab),
        proto_tab: a(proto_tab),
        ipv_tab: a(ipv_tab),
        state_tab: a(state_tab),
        class_tab: a(class_tab),
        programs: a(programs),
        hash_base: a(hash_base),
        hash_mask,
        entries_base: a(entries_base),
        lists_base: a(lists_base),
        rules_base: a(rules_base),
        total,
        level: plan.level,
        n_classes: cls.class.len() as u32,
        n_programs: cls.programs.len() as u32,
        inline: inline.then_some(cls.programs),
        shapes: shape_info,
        k_words,
    })
}
