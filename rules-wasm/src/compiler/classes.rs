//! Packet classes over the record's cheap fields, and the program each class runs.
//!
//! # Why
//! Most of a packet's fate is settled by five small fields: the ingress and egress ports, the
//! protocol, the IP version and the flow state. Docker's fixed rules (non-IP frames, replies,
//! "from outside to an unpublished port", "containers reach out", icc) look at nothing else,
//! and the keyed rules (links, published ports, the user's rules) each pin some of them. So
//! the module first maps those fields to a *class* with a few table loads, and each class has a
//! precomputed *program*:
//! - the **terminal**: the first rule that matches every packet of the class because it looks
//!   at cheap fields only; it needs no search at all (it is kept in the class table, apart
//!   from the program, so that classes differing only in it share their program);
//! - the **steps**: the shapes (see [`super::tables`]) holding rules that can match a packet of
//!   the class and come before the terminal, each with a bound no rule it can find is below.
//!
//! The search then probes only those shapes, in order, and stops as soon as a step's bound
//! is not below the best match so far: first-match order is exact, and a packet from outside
//! to a container probes the user's rules and its published ports, not the links between
//! other containers.
//!
//! # How classes are found
//! For each field, the values some rule names (`-i c1`, `! -o docker0`, `-p tcp`) each get a
//! class and every other value shares class 0, so a rule condition holds for a whole class or
//! for none of it. Ingress and egress ports are then combined into *pair classes*: two port
//! pairs are the same pair class when the rule groups that hold for them, in rule order, up to
//! the first group that decides every packet of the pair, make the same steps and terminals.
//! That keeps "c0 → c1 is a link" apart from "c0 → c3 is not" without a table per port pair
//! and class, and keeps thousands of named ports (a host with many bridge networks: one icc
//! rule per container port, a gateway per network) from multiplying into as many classes: a
//! container's traffic towards its gateway is decided by the gateway's rules whichever
//! container sent it. Each pair is told apart with one bitset AND over the groups.
//!
//! # Bounds
//! The tables grow with the distinct values named and the pair classes they make. When the port
//! tables, the class table or the work to fill them would pass [`Budget`], ports are left
//! unclassified (rules on ports are then found by their shapes only); past that, nothing is
//! classified and every packet probes every shape, which is the plain tuple-space search. Each
//! fallback gives the same verdicts.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::model::{Match, Neg, Rule, StateSet};

/// How much classification the compiler may use; the most it can afford within the budget up
/// to this is chosen. Lower levels exist for rule sets too large to classify and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Classify {
    /// No classes: one program probing every shape.
    None,
    /// Classes over protocol, IP version and flow state; ports are left to the shapes.
    NoPorts,
    /// Classes over all five cheap fields (the default).
    #[default]
    Full,
}

/// Limits that keep classification's tables and compile time bounded.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Most ingress × egress class pairs (entries of the pair table).
    pub pairs: u64,
    /// Most final classes (entries of the class table).
    pub classes: u64,
    /// Most work filling the tables: bitset words and group steps over the port pairs.
    pub work: u64,
}

/// The budget used by [`super::compile`]: tables of a few MiB at most (4 bytes per pair, 12
/// per class), and ~0.1 s of work.
pub(crate) const BUDGET: Budget = Budget {
    pairs: 1 << 20,
    classes: 1 << 19,
    work: 1 << 26,
};

/// The five cheap conditions of a rule, widened to `u16`: ingress, egress, protocol, IP
/// version, then the state set. Conditions on fields left unclassified are `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Cheap {
    fields: [Option<Neg<u16>>; 4],
    state: Option<StateSet>,
}

const IN: usize = 0;
const OUT: usize = 1;
const PROTO: usize = 2;
const IPV: usize = 3;

fn cheap(m: &Match) -> Cheap {
    let w8 = |c: Option<Neg<u8>>| {
        c.map(|n| Neg {
            value: u16::from(n.value),
            negated: n.negated,
        })
    };
    Cheap {
        fields: [m.in_port, m.out_port, w8(m.proto), w8(m.ip_version)],
        state: m.state,
    }
}

/// Whether a rule looks only at cheap fields (so its class alone decides it).
fn cheap_only(m: &Match) -> bool {
    m.src.is_none()
        && m.dst.is_none()
        && m.sport.is_none()
        && m.dport.is_none()
        && m.tcp_flags.is_none()
        && m.icmp.is_none()
        && m.conns.is_none()
}

/// One field's classes: `values[k]` is class `k + 1`; every other value is class 0.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldClasses {
    values: Vec<u16>,
    index: HashMap<u16, u32>,
}

impl FieldClasses {
    fn add(&mut self, v: u16) {
        if !self.index.contains_key(&v) {
            self.values.push(v);
            self.index.insert(v, self.values.len() as u32);
        }
    }

    /// Number of classes (including class 0).
    pub(crate) fn count(&self) -> u32 {
        self.values.len() as u32 + 1
    }

    fn class_of(&self, v: u16) -> u32 {
        self.index.get(&v).copied().unwrap_or(0)
    }

    /// `(value, class)` for every value outside class 0.
    pub(crate) fn named(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.values.iter().zip(1..).map(|(v, c)| (*v, c))
    }

    fn holds(&self, c: Option<Neg<u16>>, class: u32) -> bool {
        c.is_none_or(|n| (self.class_of(n.value) == class) != n.negated)
    }
}

/// Which rules the classes decide, chosen before the shapes are built.
pub(crate) struct Plan {
    /// The level chosen.
    pub level: Classify,
    /// Per cheap field (ingress, egress, protocol, IP version), its classes; fields the level
    /// leaves out have one class.
    fields: [FieldClasses; 4],
    /// Whether the state is classified (3 classes) or not (1).
    state: bool,
}

impl Plan {
    /// The classes `level` asks for, from the values `rules` name.
    pub(crate) fn new(rules: &[Rule], level: Classify) -> Self {
        let mut fields: [FieldClasses; 4] = Default::default();
        let used: &[usize] = match level {
            Classify::None => &[],
            Classify::NoPorts => &[PROTO, IPV],
            Classify::Full => &[IN, OUT, PROTO, IPV],
        };
        for r in rules {
            let c = cheap(&r.m);
            for &f in used {
                if let Some(n) = c.fields[f] {
                    fields[f].add(n.value);
                }
            }
        }
        Self {
            level,
            fields,
            state: level != Classify::None,
        }
    }

    fn states(&self) -> u32 {
        if self.state { 4 } else { 1 }
    }

    /// `m`'s cheap conditions on the fields this plan classifies; the rest read as "any".
    fn classified(&self, m: &Match) -> Cheap {
        let mut c = cheap(m);
        for (f, cond) in c.fields.iter_mut().enumerate() {
            if self.fields[f].values.is_empty() {
                *cond = None;
            }
        }
        if !self.state {
            c.state = None;
        }
        c
    }

    /// Whether the classes alone decide `m` (it looks only at classified cheap fields).
    pub(crate) fn is_terminal(&self, m: &Match) -> bool {
        if self.level == Classify::None || !cheap_only(m) {
            return false;
        }
        let c = cheap(m);
        c.fields
            .iter()
            .zip(&self.fields)
            .all(|(cond, f)| cond.is_none() || !f.values.is_empty())
    }

    /// The classes of one field, for the module's lookup tables.
    pub(crate) fn field(&self, f: usize) -> &FieldClasses {
        &self.fields[f]
    }
}

/// Field indices for [`Plan::field`] (the port fields: the others' tables are filled here).
pub(crate) mod field {
    pub(crate) const IN: usize = super::IN;
    pub(crate) const OUT: usize = super::OUT;
}

/// A rule group: rules with the same classified conditions and the same place (a shape, or
/// decided by class). Only the lowest id of a group matters to a class's program.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Group {
    /// `None` for rules the class decides; else the index of their shape in probe order.
    pub shape: Option<u32>,
    /// The lowest rule id in the group.
    pub min_id: u32,
    cheap: Cheap,
}

/// Collects rule groups while the shapes are being built.
#[derive(Default)]
pub(crate) struct Groups {
    index: HashMap<(Option<u32>, Cheap), usize>,
    groups: Vec<Group>,
}

impl Groups {
    /// Adds rule `id` (ids must come in ascending order), found in `shape` or decided by class.
    pub(crate) fn add(&mut self, plan: &Plan, m: &Match, id: u32, shape: Option<u32>) {
        let cheap = plan.classified(m);
        let groups = &mut self.groups;
        self.index.entry((shape, cheap)).or_insert_with(|| {
            groups.push(Group {
                shape,
                min_id: id,
                cheap,
            });
            groups.len() - 1
        });
    }
}

/// The filled classification: what the module's lookup tables and programs hold.
pub(crate) struct Classes {
    /// Pair classes: `pair[a * out_count + b]` for ingress class `a` and egress class `b`,
    /// already multiplied by `proto_count * ipv_count * states` (the class-table stride).
    pub pair: Vec<u32>,
    /// Egress class count (the pair table's row length).
    pub out_count: u32,
    /// `proto[p]`: protocol `p`'s class times `ipv_count * states`.
    pub proto: [u32; 256],
    /// `ipv[v]`: IP version `v`'s class times `states`.
    pub ipv: [u32; 256],
    /// `state[s]`: the state byte's class (unknown bytes read as New, the ABI's rule).
    pub state: [u8; 256],
    /// `class[i]`: class `i`'s program (an index into `programs`) and its terminal rule id
    /// (`u32::MAX`: the default decides). Terminals are kept apart from the programs so that
    /// classes differing only in their terminal (one per network's gateway, one per port
    /// with an icc rule) share a program, and the programs stay few enough to be code.
    pub class: Vec<(u32, u32)>,
    /// The distinct programs.
    pub programs: Vec<Program>,
}

/// What one class runs once its terminal rule (the rule that decides it unless a step finds
/// an earlier match, kept in the class table) is the best match so far: the shapes to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Program {
    /// `(shape index, a bound: no rule of the shape this class can match has a lower id)`,
    /// ascending by bound, all bounds below the class's terminal.
    pub steps: Vec<(u32, u32)>,
}

impl Program {
    /// The program as the interpreter reads it (u32 words): per step the address of the
    /// shape record and its bound, then a sentinel step `(0, u32::MAX)` whose bound is never
    /// below the best match, ending the steps without a count.
    pub(crate) fn words(&self, shape_addr: impl Fn(u32) -> u32) -> Vec<u32> {
        let mut w = Vec::with_capacity(self.steps.len() * 2 + 2);
        for &(s, id) in &self.steps {
            w.extend([shape_addr(s), id]);
        }
        w.extend([0, u32::MAX]);
        w
    }
}

/// Whether classifying `plan`'s fields for `groups` is worth trying within `budget`: the port
/// classes fit the module's u16 tables, the pair table fits, and telling the pairs apart
/// stays within the work budget: a bitset AND per pair, and at most one step per group for
/// every pair its port conditions hold for. The class table's size is known only once the
/// pairs are told apart, so [`build`] checks it as it goes.
pub(crate) fn fits(plan: &Plan, groups: &Groups, budget: &Budget) -> bool {
    let f = &plan.fields;
    let n = |k: usize| u64::from(f[k].count());
    let pairs = n(IN) * n(OUT);
    let words = (groups.groups.len() as u64).div_ceil(64);
    // Classes of one port field a condition holds for.
    let held = |c: Option<Neg<u16>>, k: usize| match c {
        None => n(k),
        Some(c) if c.negated => n(k) - 1,
        Some(_) => 1,
    };
    let scans: u64 = groups
        .groups
        .iter()
        .map(|g| held(g.cheap.fields[IN], IN) * held(g.cheap.fields[OUT], OUT))
        .sum();
    let work = pairs.saturating_mul(words).saturating_add(scans);
    // Port classes are stored as u16 in the module's port tables.
    let small = n(IN) <= u64::from(u16::MAX) && n(OUT) <= u64::from(u16::MAX);
    small && pairs <= budget.pairs && work <= budget.work
}

/// What a group contributes to a pair's programs, its port conditions already known to hold:
/// a step (its shape; several groups of one shape with the same other conditions are one
/// token, so that pairs differing only in which of them holds share their programs) or a
/// terminal (the group itself: its rule is the verdict).
#[derive(Clone, Copy)]
struct Token {
    /// The shape to probe, or `None` for a terminal.
    shape: Option<u32>,
    /// A terminal's rule id; a step's bound, its shape's lowest rule id (the search may stop
    /// at it: no rule the step can find is below it).
    id: u32,
    /// The conditions on the other cheap fields.
    proto: Option<Neg<u16>>,
    ipv: Option<Neg<u16>>,
    state: Option<StateSet>,
}

/// The groups as tokens: `(token of each group, the tokens, whether each group holds for
/// every packet its port conditions let through, so nothing after it matters)`.
fn tokens(groups: &[Group]) -> (Vec<u32>, Vec<Token>, Vec<bool>) {
    let mut index: HashMap<(u32, Cheap), u32> = HashMap::new();
    let mut tokens: Vec<Token> = Vec::new();
    let mut of = Vec::with_capacity(groups.len());
    let mut unconditional = Vec::with_capacity(groups.len());
    for g in groups {
        let c = &g.cheap;
        let rest = Cheap {
            fields: [None, None, c.fields[PROTO], c.fields[IPV]],
            state: c.state,
        };
        let token = Token {
            shape: g.shape,
            id: g.min_id,
            proto: c.fields[PROTO],
            ipv: c.fields[IPV],
            state: c.state,
        };
        unconditional.push(g.shape.is_none() && rest == Cheap::default());
        let t = match g.shape {
            None => {
                tokens.push(token);
                tokens.len() as u32 - 1
            }
            Some(s) => *index.entry((s, rest)).or_insert_with(|| {
                tokens.push(token);
                tokens.len() as u32 - 1
            }),
        };
        let entry = &mut tokens[t as usize];
        entry.id = entry.id.min(g.min_id);
        of.push(t);
    }
    // A step's bound is its shape's lowest rule id: a little looser than the lowest id of the
    // token's own groups, but the same for every token of the shape, so classes probing one
    // shape under different conditions share their programs, and fewer programs are code.
    let mut lowest: HashMap<u32, u32> = HashMap::new();
    for t in &tokens {
        if let Some(s) = t.shape {
            let e = lowest.entry(s).or_insert(t.id);
            *e = (*e).min(t.id);
        }
    }
    for t in &mut tokens {
        if let Some(s) = t.shape {
            t.id = lowest[&s];
        }
    }
    (of, tokens, unconditional)
}

/// A multiply-rotate hash for the pair signatures and the programs (short lists of small
/// integers, looked up once per port pair and per class): the default SipHash was most of the
/// time spent telling pairs apart on hosts with many ports, and nothing here is chosen by an
/// adversary who could aim collisions at it beyond slowing their own policy's compile.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// Per class of a port field, the groups (as a bitset over `groups`) whose condition on that
/// field holds for it.
fn port_bitsets(fc: &FieldClasses, field: usize, groups: &[Group], words: usize) -> Vec<Vec<u64>> {
    let mut base = vec![0u64; words];
    let mut plain = Vec::new();
    let mut negated = Vec::new();
    for (k, g) in groups.iter().enumerate() {
        match g.cheap.fields[field] {
            None => base[k / 64] |= 1 << (k % 64),
            Some(n) if n.negated => {
                base[k / 64] |= 1 << (k % 64);
                negated.push((fc.class_of(n.value), k));
            }
            Some(n) => plain.push((fc.class_of(n.value), k)),
        }
    }
    let mut out = vec![base; fc.count() as usize];
    for (c, k) in plain {
        out[c as usize][k / 64] |= 1 << (k % 64);
    }
    for (c, k) in negated {
        out[c as usize][k / 64] &= !(1 << (k % 64));
    }
    out
}

/// Fills the tables and programs for `groups`, or `None` when the class table would pass
/// `budget` (the caller then classifies less).
///
/// Pairs of an ingress and an egress class are told apart by what their programs can depend
/// on: the tokens of the groups whose port conditions hold for the pair, in rule order, up to
/// the first group that decides every packet of the pair. Found with one bitset AND per pair,
/// this keeps thousands of named ports (one rule per container, as Docker's icc=false needs on
/// a host with many networks) from multiplying into as many classes: a container's port and
/// a gateway's, say, share their classes with every other container's once the gateway's
/// rules decide.
pub(crate) fn build(plan: &Plan, groups: Groups, budget: &Budget) -> Option<Classes> {
    let mut groups = groups.groups;
    groups.sort_by_key(|g| g.min_id);
    let f = &plan.fields;
    let (n_in, n_out) = (f[IN].count(), f[OUT].count());
    let (n_proto, n_ipv, n_state) = (f[PROTO].count(), f[IPV].count(), plan.states());
    let stride = n_proto * n_ipv * n_state;
    let words = groups.len().div_ceil(64).max(1);
    let (token_of, tokens, unconditional) = tokens(&groups);
    let ins = port_bitsets(&f[IN], IN, &groups, words);
    let outs = port_bitsets(&f[OUT], OUT, &groups, words);

    // Pair classes: pairs with the same tokens, in order, up to their first deciding group.
    let mut pair_ids: HashMap<Vec<u32>, u32, BuildHasherDefault<WordHasher>> = HashMap::default();
    let mut pair_sigs: Vec<Vec<u32>> = Vec::new();
    let mut pair = Vec::with_capacity(n_in as usize * n_out as usize);
    let mut sig: Vec<u32> = Vec::new();
    for a in &ins {
        for b in &outs {
            sig.clear();
            'scan: for (w, (x, y)) in a.iter().zip(b).enumerate() {
                let mut bits = x & y;
                while bits != 0 {
                    let k = w * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    let t = token_of[k];
                    if !sig.contains(&t) {
                        sig.push(t);
                    }
                    if unconditional[k] {
                        break 'scan;
                    }
                }
            }
            let id = match pair_ids.get(sig.as_slice()) {
                Some(id) => *id,
                None => {
                    let id = pair_sigs.len() as u32;
                    if u64::from(id + 1) * u64::from(stride) > budget.classes {
                        return None;
                    }
                    pair_ids.insert(sig.clone(), id);
                    pair_sigs.push(sig.clone());
                    id
                }
            };
            pair.push(id * stride);
        }
    }

    // Classes: one program each, deduplicated.
    let mut programs: Vec<Program> = Vec::new();
    let mut program_of: HashMap<Program, u32, BuildHasherDefault<WordHasher>> = HashMap::default();
    let mut class = Vec::with_capacity(pair_sigs.len() * stride as usize);
    for sig in &pair_sigs {
        for pc in 0..n_proto {
            for vc in 0..n_ipv {
                for sc in 0..n_state {
                    let (prog, terminal) = program(sig, &tokens, |t| {
                        f[PROTO].holds(t.proto, pc)
                            && f[IPV].holds(t.ipv, vc)
                            && t.state.is_none_or(|s| s.0 & (1 << sc) != 0)
                    });
                    let id = *program_of.entry(prog.clone()).or_insert_with(|| {
                        programs.push(prog);
                        programs.len() as u32 - 1
                    });
                    class.push((id, terminal));
                }
            }
        }
    }

    let mut proto = [0u32; 256];
    let mut ipv = [0u32; 256];
    for v in 0..256u16 {
        proto[usize::from(v)] = f[PROTO].class_of(v) * n_ipv * n_state;
        ipv[usize::from(v)] = f[IPV].class_of(v) * n_state;
    }
    let mut state = [0u8; 256];
    if plan.state {
        state[1] = 1;
        state[2] = 2;
        state[3] = 3;
    }
    Some(Classes {
        pair,
        out_count: n_out,
        proto,
        ipv,
        state,
        class,
        programs,
    })
}

/// The program and terminal of one class: the pair's tokens that `holds` for the class, in
/// order, up to the first terminal; steps in ascending order of their bounds (so the search
/// may stop at the first whose bound is not below the best match), each shape once.
fn program(sig: &[u32], tokens: &[Token], holds: impl Fn(&Token) -> bool) -> (Program, u32) {
    let mut prog = Program { steps: Vec::new() };
    let mut terminal = u32::MAX;
    for t in sig.iter().map(|&t| &tokens[t as usize]) {
        if !holds(t) {
            continue;
        }
        match t.shape {
            None => {
                terminal = t.id;
                break;
            }
            Some(s) => match prog.steps.iter_mut().find(|(shape, _)| *shape == s) {
                Some(step) => step.1 = step.1.min(t.id),
                None => prog.steps.push((s, t.id)),
            },
        }
    }
    prog.steps.sort_by_key(|&(s, id)| (id, s));
    (prog, terminal)
}
