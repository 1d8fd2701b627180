//! ipsets from `ipset save` output: `create NAME TYPE [family inet|inet6] …` and
//! `add NAME ENTRY` lines, for `-m set --match-set`. The types people use for blocklists and
//! allowlists are supported: `hash:ip`, `hash:net` (entries as addresses, CIDRs or
//! `A-B` ranges) and `hash:ip,port` (`ADDR,[PROTO:]PORT`).
use std::net::IpAddr;

use super::error::{ParseError, ParseErrorKind as K};
use super::tokens::tokenize;
use super::values;
use crate::abi::{addr_bytes, proto};
use crate::algebra::range_cidrs;
use crate::model::{Cidr, PortRange};

/// One entry of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SetEntry {
    /// An address or prefix (`hash:ip`, `hash:net`).
    Net(Cidr),
    /// An address with a protocol and port (`hash:ip,port`).
    NetPort(Cidr, u8, PortRange),
}

/// The set types supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// `hash:ip`.
    HashIp,
    /// `hash:net`.
    HashNet,
    /// `hash:ip,port`.
    HashIpPort,
}

/// One ipset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    /// Its name.
    pub name: String,
    /// Its type.
    pub kind: SetKind,
    /// 4 (`family inet`, the default) or 6.
    pub family: u8,
    /// Its entries, in the order added (each once).
    pub entries: Vec<SetEntry>,
    /// The entries, for ignoring one added twice.
    seen: std::collections::HashSet<SetEntry>,
}

impl IpSet {
    /// How many direction flags a `--match-set` of this set takes.
    pub fn dimensions(&self) -> usize {
        match self.kind {
            SetKind::HashIp | SetKind::HashNet => 1,
            SetKind::HashIpPort => 2,
        }
    }
}

/// The sets a rule text can name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpSets {
    sets: Vec<IpSet>,
}

impl IpSets {
    /// The set called `name`.
    pub fn get(&self, name: &str) -> Option<&IpSet> {
        self.sets.iter().find(|s| s.name == name)
    }

    /// How many sets there are.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Reads every `create` / `add` line of `text` (other lines are left to the rule parser),
    /// atomically: on an error the sets are unchanged.
    pub fn read(&mut self, text: &str) -> Result<(), ParseError> {
        let mut next = self.clone();
        for (i, raw) in text.lines().enumerate() {
            if is_ipset_line(raw) {
                next.line(raw, i + 1)?;
            }
        }
        *self = next;
        Ok(())
    }

    fn line(&mut self, raw: &str, lineno: usize) -> Result<(), ParseError> {
        let toks = tokenize(raw).map_err(|pos| err(lineno, pos - 1, raw, K::BadQuote))?;
        let t: Vec<&str> = toks.iter().map(|t| t.text.as_str()).collect();
        let e = |pos: usize, what| err(lineno, pos, raw, K::BadIpset(what));
        match t.first().copied() {
            Some("create") => {
                let name = t.get(1).ok_or_else(|| e(1, "missing set name"))?;
                let kind = match t.get(2).copied() {
                    Some("hash:ip") => SetKind::HashIp,
                    Some("hash:net") => SetKind::HashNet,
                    Some("hash:ip,port") => SetKind::HashIpPort,
                    _ => return Err(e(2, "type must be hash:ip, hash:net or hash:ip,port")),
                };
                let family = match t.iter().position(|x| *x == "family") {
                    Some(p) => match t.get(p + 1).copied() {
                        Some("inet") => 4,
                        Some("inet6") => 6,
                        _ => return Err(e(p + 1, "family must be inet or inet6")),
                    },
                    None => 4,
                };
                // `ipset save` output read twice (in the rules file and from --ipsets) creates
                // the same set again: fine, as `ipset create -exist` is; another type is not.
                if let Some(old) = self.get(name) {
                    if old.kind == kind && old.family == family {
                        return Ok(());
                    }
                    return Err(e(1, "set created twice with another type or family"));
                }
                self.sets.push(IpSet {
                    name: (*name).to_string(),
                    kind,
                    family,
                    entries: Vec::new(),
                    seen: std::collections::HashSet::new(),
                });
            }
            Some("add") => {
                let name = t.get(1).ok_or_else(|| e(1, "missing set name"))?;
                let entry = t.get(2).ok_or_else(|| e(2, "missing entry"))?;
                let set = self
                    .sets
                    .iter_mut()
                    .find(|s| s.name == *name)
                    .ok_or_else(|| e(1, "add to a set no create line made"))?;
                let parsed =
                    parse_entry(set, entry).ok_or_else(|| e(2, "bad entry for this set"))?;
                set.entries.extend(parsed);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `raw` is an `ipset save` line.
pub(crate) fn is_ipset_line(raw: &str) -> bool {
    let t = raw.trim_start();
    t.starts_with("create ") || t.starts_with("add ")
}

fn err(line: usize, pos: usize, raw: &str, kind: K) -> ParseError {
    ParseError {
        line,
        pos: pos + 1,
        token: raw
            .split_whitespace()
            .nth(pos)
            .unwrap_or("<end of line>")
            .to_string(),
        kind,
    }
}

/// The prefixes of an address, a CIDR, or an `A-B` range, of the set's family.
fn addresses(v: &str, family: u8) -> Option<Vec<Cidr>> {
    let fam_ok = |ip: &IpAddr| ip.is_ipv4() == (family == 4);
    if let Some((a, b)) = v.split_once('-') {
        let (a, b): (IpAddr, IpAddr) = (a.parse().ok()?, b.parse().ok()?);
        if !fam_ok(&a) || !fam_ok(&b) || a > b {
            return None;
        }
        return Some(range_cidrs(
            u128::from_be_bytes(addr_bytes(a)),
            u128::from_be_bytes(addr_bytes(b)),
        ));
    }
    let (a, len) = match v.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, Some(l.parse::<u8>().ok()?)),
        None => (v.parse::<IpAddr>().ok()?, None),
    };
    if !fam_ok(&a) {
        return None;
    }
    Some(vec![match len {
        Some(l) => Cidr::new(a, l)?,
        None => Cidr::host(a),
    }])
}

fn parse_entry(set: &IpSet, v: &str) -> Option<Vec<SetEntry>> {
    match set.kind {
        SetKind::HashIp | SetKind::HashNet => Some(
            addresses(v, set.family)?
                .into_iter()
                .map(SetEntry::Net)
                .collect(),
        ),
        SetKind::HashIpPort => {
            let (a, p) = v.split_once(',')?;
            let (pr, port) = match p.split_once(':') {
                Some((pr, port))
                    if !pr.is_empty() && pr.chars().all(|c| c.is_ascii_alphabetic()) =>
                {
                    (values::protocol(pr)??, port)
                }
                _ => (proto::TCP, p),
            };
            let range = if let Some((lo, hi)) = port.split_once('-') {
                PortRange {
                    lo: lo.parse().ok()?,
                    hi: hi.parse().ok()?,
                }
            } else {
                values::port_range(port)?
            };
            Some(
                addresses(a, set.family)?
                    .into_iter()
                    .map(|c| SetEntry::NetPort(c, pr, range))
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ipset_save_output() {
        let mut s = IpSets::default();
        s.read(
            "create blocklist hash:net family inet hashsize 1024 maxelem 65536\n\
             add blocklist 203.0.113.0/24\n\
             add blocklist 198.51.100.7\n\
             create svc hash:ip,port family inet\n\
             add svc 172.17.0.5,udp:53\n\
             add svc 172.17.0.6,80\n",
        )
        .unwrap();
        assert_eq!(s.get("blocklist").unwrap().entries.len(), 2);
        let svc = s.get("svc").unwrap();
        assert_eq!(svc.dimensions(), 2);
        assert!(matches!(
            svc.entries[0],
            SetEntry::NetPort(_, 17, PortRange { lo: 53, hi: 53 })
        ));
        assert!(matches!(svc.entries[1], SetEntry::NetPort(_, 6, _)));
        let e = s.read("add nosuch 1.2.3.4").unwrap_err();
        assert_eq!((e.line, e.pos), (1, 2));
        assert_eq!(s.len(), 2, "a rejected line leaves the sets as they were");
    }
}
