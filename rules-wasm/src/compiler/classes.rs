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
//!   at cheap fields only; it needs no search at all;
//! - the **steps**: the shapes (see [`super::tables`]) holding rules that can match a packet of
//!   the class and come before the terminal, each with the lowest such rule id.
//!
//! The search then probes only those shapes, in order, and stops as soon as a step's lowest id
//! is not below the best match so far: first-match order is exact, and a packet from outside
//! to a container probes the user's rules and its published ports, not the links between
//! other containers.
//!
//! # How classes are found
//! For each field, the values some rule names (`-i c1`, `! -o docker0`, `-p tcp`) each get a
//! class and every other value shares class 0, so a rule condition holds for a whole class or
//! for none of it. Ingress and egress ports are then combined into *pair classes* (two port
//! pairs are the same pair class when the same rule conditions hold for both), which keeps
//! "c0 → c1 is a link" apart from "c0 → c3 is not" without a table per port pair and class.
//!
//! # Bounds
//! The tables grow with the product of the distinct values named. When the port tables or the
//! work to fill them would pass [`Budget`], ports are left unclassified (rules on ports are then
//! found by their shapes only); past that, nothing is classified and every packet probes every
//! shape, which is the plain tuple-space search. Each fallback gives the same verdicts.
use std::collections::HashMap;

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
    /// Most condition evaluations spent filling the tables.
    pub work: u64,
}

/// The budget used by [`super::compile`]: tables of a few MiB at most, and ~0.1 s of work.
pub(crate) const BUDGET: Budget = Budget {
    pairs: 1 << 20,
    classes: 1 << 20,
    work: 1 << 26,
};

/// The five cheap conditions of a rule, widened to `u16`: ingress, egress, protocol, IP
/// version, then the state set. Conditions on fields left unclassified are `None`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// `class[i]`: the index of class `i`'s program.
    pub class: Vec<u32>,
    /// The distinct programs.
    pub programs: Vec<Program>,
}

/// What one class runs: the rule that decides it unless a step finds an earlier match, and
/// the shapes to probe.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Program {
    /// The terminal rule id, or `u32::MAX` (the default decides).
    pub terminal: u32,
    /// The action of the terminal rule (or the default); filled in by the table builder,
    /// which knows the rules' targets.
    pub terminal_action: u32,
    /// `(shape index, lowest id of its rules this class can match)`, ascending by id, all
    /// below `terminal`.
    pub steps: Vec<(u32, u32)>,
}

impl Program {
    /// The program as the interpreter reads it (u32 words): the terminal and its action,
    /// then per step the address of the shape record and its lowest id, then a sentinel step
    /// `(0, u32::MAX)` whose lowest id is never below the best match, ending the steps
    /// without a count.
    pub(crate) fn words(&self, shape_addr: impl Fn(u32) -> u32) -> Vec<u32> {
        let mut w = vec![self.terminal, self.terminal_action];
        for &(s, id) in &self.steps {
            w.extend([shape_addr(s), id]);
        }
        w.extend([0, u32::MAX]);
        w
    }
}

/// Whether filling the tables for `groups` stays within `budget`: the pair table, the class
/// table, and the condition evaluations (one per port group per pair, one per group per class;
/// an overestimate, since a class stops at its terminal).
pub(crate) fn fits(plan: &Plan, groups: &Groups, budget: &Budget) -> bool {
    let f = &plan.fields;
    let n = |k: usize| u64::from(f[k].count());
    let pairs = n(IN) * n(OUT);
    let classes = pairs * n(PROTO) * n(IPV) * u64::from(plan.states());
    let g = groups.groups.len() as u64;
    let work = pairs.saturating_mul(g) + classes.saturating_mul(g);
    // Port classes are stored as u16 in the module's port tables.
    let small = n(IN) <= u64::from(u16::MAX) && n(OUT) <= u64::from(u16::MAX);
    small && pairs <= budget.pairs && classes <= budget.classes && work <= budget.work
}

/// Fills the tables and programs for `groups`.
pub(crate) fn build(plan: &Plan, groups: Groups) -> Classes {
    let mut groups = groups.groups;
    groups.sort_by_key(|g| g.min_id);
    let f = &plan.fields;
    let (n_in, n_out) = (f[IN].count(), f[OUT].count());
    let (n_proto, n_ipv, n_state) = (f[PROTO].count(), f[IPV].count(), plan.states());

    // Pair classes: port pairs that the same port conditions hold for.
    let port_groups: Vec<&Group> = groups
        .iter()
        .filter(|g| g.cheap.fields[IN].is_some() || g.cheap.fields[OUT].is_some())
        .collect();
    let mut pair_ids: HashMap<Vec<u32>, u32> = HashMap::new();
    let mut pair_reps: Vec<(u32, u32)> = Vec::new();
    let mut pair_of = Vec::with_capacity((n_in * n_out) as usize);
    let mut holding = Vec::new();
    for a in 0..n_in {
        for b in 0..n_out {
            holding.clear();
            holding.extend(port_groups.iter().zip(0u32..).filter_map(|(g, k)| {
                (f[IN].holds(g.cheap.fields[IN], a) && f[OUT].holds(g.cheap.fields[OUT], b))
                    .then_some(k)
            }));
            let id = *pair_ids.entry(holding.clone()).or_insert_with(|| {
                pair_reps.push((a, b));
                pair_reps.len() as u32 - 1
            });
            pair_of.push(id);
        }
    }
    let stride = n_proto * n_ipv * n_state;
    let pair = pair_of.iter().map(|p| p * stride).collect();

    // Classes: one program each, deduplicated.
    let mut programs: Vec<Program> = Vec::new();
    let mut program_of: HashMap<Program, u32> = HashMap::new();
    let mut class = Vec::with_capacity(pair_reps.len() * stride as usize);
    let n_shapes = groups
        .iter()
        .filter_map(|g| g.shape)
        .max()
        .map_or(0, |s| s + 1);
    // `stamp[s] == n` when shape `s` is already a step of class `n`'s program.
    let mut stamp = vec![u32::MAX; n_shapes as usize];
    for &(a, b) in &pair_reps {
        for pc in 0..n_proto {
            for vc in 0..n_ipv {
                for sc in 0..n_state {
                    let n = class.len() as u32;
                    let mut prog = Program {
                        terminal: u32::MAX,
                        terminal_action: 0,
                        steps: Vec::new(),
                    };
                    for g in &groups {
                        let c = &g.cheap;
                        let holds = f[IN].holds(c.fields[IN], a)
                            && f[OUT].holds(c.fields[OUT], b)
                            && f[PROTO].holds(c.fields[PROTO], pc)
                            && f[IPV].holds(c.fields[IPV], vc)
                            && c.state.is_none_or(|s| s.0 & (1 << sc) != 0);
                        if !holds {
                            continue;
                        }
                        match g.shape {
                            None => {
                                prog.terminal = g.min_id;
                                break;
                            }
                            Some(s) => {
                                if stamp[s as usize] != n {
                                    stamp[s as usize] = n;
                                    prog.steps.push((s, g.min_id));
                                }
                            }
                        }
                    }
                    let id = *program_of.entry(prog.clone()).or_insert_with(|| {
                        programs.push(prog);
                        programs.len() as u32 - 1
                    });
                    class.push(id);
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
    Classes {
        pair,
        out_count: n_out,
        proto,
        ipv,
        state,
        class,
        programs,
    }
}
