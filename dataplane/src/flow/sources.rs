//! Open connections per source address, for iptables' `-m connlimit`: the flow table links
//! each admitted flow into its originator's list while the flow is held, and the engine hands
//! the number of live ones to the policy in every record (`src_conns`).
//!
//! A fixed-capacity open-addressing table allocated with the flow table (it never holds more
//! addresses than the flow table holds flows), linear probing, and backward-shift deletion
//! when a count falls to zero, so it needs no tombstones and never allocates. Each address
//! keeps the head of a list threaded through the flow entries (their slots), so the flows of
//! one source can be walked — and the expired ones dropped — when its count is asked for.

/// Counts per source address.
pub(crate) struct SourceCounts {
    keys: Box<[u128]>,
    counts: Box<[u32]>,
    /// First flow slot of each address's list ([`NO_SLOT`] when empty).
    heads: Box<[u32]>,
    mask: usize,
    seed: u64,
}

/// The end of a list.
pub(crate) const NO_SLOT: u32 = u32::MAX;

impl SourceCounts {
    /// Room for `flows` distinct addresses at most half full.
    pub(crate) fn new(flows: usize, seed: u64) -> Self {
        let cap = (flows.max(8) * 2).next_power_of_two();
        Self {
            keys: vec![0; cap].into_boxed_slice(),
            counts: vec![0; cap].into_boxed_slice(),
            heads: vec![NO_SLOT; cap].into_boxed_slice(),
            mask: cap - 1,
            seed: seed | 1,
        }
    }

    fn home(&self, addr: u128) -> usize {
        let h = ((addr as u64) ^ ((addr >> 64) as u64).rotate_left(29)).wrapping_mul(self.seed);
        (h >> 16) as usize & self.mask
    }

    /// The slot of `addr`, or of the empty slot where it would go.
    fn slot(&self, addr: u128) -> usize {
        let mut s = self.home(addr);
        while self.counts[s] != 0 && self.keys[s] != addr {
            s = (s + 1) & self.mask;
        }
        s
    }

    /// Connections counted from `addr`, and the first flow slot of its list.
    pub(crate) fn get(&self, addr: u128) -> (u32, u32) {
        let s = self.slot(addr);
        if self.counts[s] == 0 {
            (0, NO_SLOT)
        } else {
            (self.counts[s], self.heads[s])
        }
    }

    /// One more connection from `addr`, whose flow is now the list's head `head`; returns the
    /// previous head (the new flow's successor).
    pub(crate) fn add(&mut self, addr: u128, head: u32) -> u32 {
        let s = self.slot(addr);
        let next = if self.counts[s] == 0 {
            NO_SLOT
        } else {
            self.heads[s]
        };
        self.keys[s] = addr;
        self.counts[s] = self.counts[s].saturating_add(1);
        self.heads[s] = head;
        next
    }

    /// One connection fewer from `addr` (one that [`SourceCounts::add`] counted); `new_head`
    /// is the list's head once that flow is unlinked (the caller unlinks).
    pub(crate) fn remove(&mut self, addr: u128, new_head: Option<u32>) {
        let s = self.slot(addr);
        match self.counts[s] {
            0 => {}
            1 => self.delete(s),
            _ => {
                self.counts[s] -= 1;
                if let Some(h) = new_head {
                    self.heads[s] = h;
                }
            }
        }
    }

    /// Empties slot `hole` and shifts back the entries of its probe run that would no longer
    /// be found past it.
    fn delete(&mut self, mut hole: usize) {
        self.counts[hole] = 0;
        let mut s = (hole + 1) & self.mask;
        while self.counts[s] != 0 {
            let home = self.home(self.keys[s]);
            // Move `s` into the hole unless its home lies cyclically in (hole, s].
            let dist_home = s.wrapping_sub(home) & self.mask;
            let dist_hole = s.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.keys[hole] = self.keys[s];
                self.counts[hole] = self.counts[s];
                self.heads[hole] = self.heads[s];
                self.counts[s] = 0;
                hole = s;
            }
            s = (s + 1) & self.mask;
        }
    }

    /// Forgets every count (the flow table was cleared).
    pub(crate) fn clear(&mut self) {
        self.counts.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn counts_follow_adds_and_removes_through_collisions() {
        // A tiny table with a fixed seed: many addresses share probe runs. Heads are the
        // last flow added (the caller keeps the rest of each list).
        let mut t = SourceCounts::new(8, 0x9e37_79b9_7f4a_7c15);
        let mut model: HashMap<u128, Vec<u32>> = HashMap::new();
        let mut x = 12345u64;
        let mut next_flow = 0u32;
        for _ in 0..20_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let addr = u128::from((x >> 40) % 12);
            let held: usize = model.values().map(Vec::len).sum();
            if x & 1 == 0 && held < 200 && (model.len() < 8 || model.contains_key(&addr)) {
                next_flow += 1;
                let prev = t.add(addr, next_flow);
                let list = model.entry(addr).or_default();
                assert_eq!(prev, list.last().copied().unwrap_or(NO_SLOT));
                list.push(next_flow);
            } else if let Some(list) = model.get_mut(&addr) {
                list.pop();
                t.remove(addr, Some(list.last().copied().unwrap_or(NO_SLOT)));
                if list.is_empty() {
                    model.remove(&addr);
                }
            }
            for a in 0..12u128 {
                let want = model.get(&a).map_or((0, NO_SLOT), |l| {
                    (l.len() as u32, l.last().copied().unwrap_or(NO_SLOT))
                });
                assert_eq!(t.get(a), want, "{a}");
            }
        }
    }
}
