//! Reference policies in plain Rust, and shorthands for verdicts.
use super::hosts::{CHILD, GW, PARENT, mapped};
use crate::policy::{Action, PacketRecord, VerdictRecord};

/// An Accept verdict by `rule`.
pub fn accept(rule: u32) -> VerdictRecord {
    VerdictRecord::new(Action::Accept, rule)
}

/// A Drop verdict by `rule`.
pub fn drop_(rule: u32) -> VerdictRecord {
    VerdictRecord::new(Action::Drop, rule)
}

/// Docker's icc=false with `--link child:alias` from the parent, exposing TCP 80, as a
/// plain-Rust reference policy: parent → child TCP dport 80 (rule 1) and anything to or from
/// the gateway (rule 2) are accepted, every other container-to-container packet dropped
/// (rule 3). It states no reply rule: replies must pass by the flow table.
pub fn icc_false_link(r: &PacketRecord) -> VerdictRecord {
    let (p, c, g) = (mapped(PARENT.ip), mapped(CHILD.ip), mapped(GW.ip));
    if r.src == p && r.dst == c && r.protocol == 6 && r.dst_port == 80 {
        accept(1)
    } else if r.src == g || r.dst == g {
        accept(2)
    } else {
        drop_(3)
    }
}
