//! The reference interpreter: first match over a [`RuleSet`], written as plainly as possible.
//!
//! It is the meaning of a rule set. The compiled Wasm module is checked against it by the
//! differential test, and `trace` can use it to explain a verdict. It scans linearly, so it is
//! not for the hot path.
use crate::abi::{PacketRecord, RULE_NONE, RejectWith, VerdictRecord};
use crate::model::{RuleSet, Target};

/// The verdict `set` gives `r`: the action and id of the first rule (in chain order) that
/// matches, or the set's default with [`RULE_NONE`] when none does.
pub fn evaluate(set: &RuleSet, r: &PacketRecord) -> VerdictRecord {
    set.rules
        .iter()
        .find(|rule| rule.m.matches(r))
        .map(|rule| VerdictRecord {
            reject: match rule.target {
                Target::Reject(w) => w,
                _ => RejectWith::PortUnreachable,
            },
            ..VerdictRecord::new(rule.target.action(), rule.id)
        })
        .unwrap_or(VerdictRecord::new(set.default, RULE_NONE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{Action, proto};
    use crate::model::{Chain, Match, Neg, PortRange, Rule, Target};

    #[test]
    fn first_match_in_chain_order_wins() {
        let dport80 = Match {
            proto: Some(Neg::is(proto::TCP)),
            dport: Some(Neg::is(PortRange::single(80))),
            ..Match::default()
        };
        let set = RuleSet::new(
            vec![
                Rule::new(Chain::Icc, Match::default(), Target::Accept, "icc"),
                Rule::new(Chain::User, dport80, Target::Drop, "user"),
            ],
            1,
            Action::Drop,
        );
        let mut r = PacketRecord {
            protocol: proto::TCP,
            dst_port: 80,
            ..Default::default()
        };
        assert_eq!(evaluate(&set, &r), VerdictRecord::new(Action::Drop, 0));
        r.dst_port = 81;
        assert_eq!(evaluate(&set, &r), VerdictRecord::new(Action::Accept, 1));
        let empty = RuleSet::new(vec![], 1, Action::Reject);
        assert_eq!(
            evaluate(&empty, &r),
            VerdictRecord::new(Action::Reject, RULE_NONE)
        );
    }
}
