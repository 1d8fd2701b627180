//! `-m set --match-set NAME FLAGS`: membership of the packet's address (and port) in an ipset.
use super::addresses::addr_cond;
use super::{ALL_SPACE, Side, V4_SPACE, negate_if, one};
use crate::algebra::{Cond, complement_cidrs};
use crate::iptables::error::{ParseError, ParseErrorKind as K};
use crate::iptables::ipset::{IpSets, SetEntry};
use crate::iptables::line::{Dir, Line, Opt};
use crate::model::{Cidr, Neg};

/// One match per entry; a negated hash:ip / hash:net set is complemented as addresses, so
/// its size does not matter.
pub(super) fn condition(
    line: &Line<'_>,
    o: &Opt<(String, Vec<Dir>)>,
    sets: &IpSets,
    family: Option<u8>,
) -> Result<Cond, ParseError> {
    let (name, dirs) = &o.v;
    let set = sets
        .get(name)
        .ok_or_else(|| line.err(o.vat, K::UnknownSet))?;
    if dirs.len() != set.dimensions() {
        return Err(line.err(o.vat + 1, K::BadSetFlags));
    }
    let fam = Some(set.family).or(family);
    let first = Side::of(dirs[0]);
    if set.dimensions() == 1 {
        let cidrs: Vec<Cidr> = set
            .entries
            .iter()
            .filter_map(|e| match e {
                SetEntry::Net(c) => Some(*c),
                SetEntry::NetPort(..) => None,
            })
            .collect();
        if o.neg {
            let mut out = Vec::new();
            let universe = if set.family == 4 { V4_SPACE } else { ALL_SPACE };
            for p in complement_cidrs(&cidrs, universe) {
                out.push(one(|m| {
                    m.ip_version = fam.map(Neg::is);
                    first.set(m, Neg::is(p));
                }));
            }
            return Ok(out);
        }
        return Ok(addr_cond(first, &cidrs, false, fam));
    }
    let second = Side::of(dirs[1]);
    let c: Cond = set
        .entries
        .iter()
        .filter_map(|e| match e {
            SetEntry::NetPort(c, proto, port) => Some(one(|m| {
                first.set(m, Neg::is(*c));
                m.proto = Some(Neg::is(*proto));
                second.port(m, Neg::is(*port));
            })),
            SetEntry::Net(_) => None,
        })
        .collect();
    negate_if(line, o.vat, o.neg, c)
}
