//! The frame budget: how much UMEM each port gets and how ports are grouped into UMEM
//! segments, as plain decisions testable without root.
//!
//! Why segments: the kernel gives every AF_XDP socket a pool with a ~128-byte head for every
//! frame of the UMEM it is bound to (measured here: 2 MiB of unreclaimable slab per socket on
//! a 16 Ki-frame UMEM). One UMEM for every port would cost ports × frames × 128 bytes —
//! quadratic — so ports are grouped `ports_per_segment` to a segment of
//! `ports_per_segment × fill_share + reserve` frames, and a segment is added when the
//! others are full. Frames cross between segments with one copy.
use std::collections::BTreeMap;

use dataplane::phy::{PortId, SegmentId};

/// How frames are budgeted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameBudget {
    /// Frames each port keeps on its receive side (its fill share).
    pub fill_share: u32,
    /// Ports per UMEM segment.
    pub ports_per_segment: u16,
    /// Frames per segment beyond its ports' shares: in flight to transmit, flood copies and
    /// copies in from other segments.
    pub reserve: u32,
    /// Most ports (the containers, the default network's gateway, then the other networks'
    /// gateways) the dataplane holds; `--max-containers` and `--max-networks` set it.
    pub max_ports: usize,
}

impl Default for FrameBudget {
    /// 64 frames per port, 16 ports and 1,024 spare frames per segment (2,048 frames,
    /// 4 MiB), room for the gateway and 1,023 containers.
    fn default() -> Self {
        Self {
            fill_share: dataplane::afxdp::port::DEFAULT_FILL_SHARE,
            ports_per_segment: 16,
            reserve: 1024,
            max_ports: crate::state::DEFAULT_MAX_PORTS + crate::state::DEFAULT_MAX_NETWORKS,
        }
    }
}

impl FrameBudget {
    /// Frames of one segment.
    pub fn segment_frames(&self) -> u32 {
        u32::from(self.ports_per_segment.max(1)) * self.fill_share + self.reserve
    }
}

/// Why a port got no place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    /// Every port the budget allows is in use.
    #[error(
        "the dataplane already holds its {max} ports (the gateway and {} containers): start bridgewall with a larger --max-containers",
        max - 1
    )]
    Full {
        /// The limit.
        max: usize,
    },
}

/// Where a new port goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Into an existing segment with room.
    Existing(SegmentId),
    /// Into a new segment (the caller maps it and registers it with the port's socket).
    New,
}

/// Which ports are in which segment.
#[derive(Debug, Default, Clone)]
pub struct SegmentTable {
    /// Ports per segment, by segment id.
    members: Vec<usize>,
    by_port: BTreeMap<PortId, SegmentId>,
}

impl SegmentTable {
    /// Where the next port goes under `budget`: the lowest segment with room, else a new one.
    pub fn place(&self, budget: &FrameBudget) -> Result<Placement, PlaceError> {
        if self.by_port.len() >= budget.max_ports {
            return Err(PlaceError::Full {
                max: budget.max_ports,
            });
        }
        let per = usize::from(budget.ports_per_segment.max(1));
        Ok(self
            .members
            .iter()
            .position(|&n| n < per)
            .map_or(Placement::New, |s| Placement::Existing(s as SegmentId)))
    }

    /// Records a segment created for a [`Placement::New`].
    pub fn segment_added(&mut self, seg: SegmentId) {
        let i = usize::from(seg);
        if self.members.len() <= i {
            self.members.resize(i + 1, 0);
        }
    }

    /// Records `port` in `seg`.
    pub fn joined(&mut self, port: PortId, seg: SegmentId) {
        self.segment_added(seg);
        self.members[usize::from(seg)] += 1;
        self.by_port.insert(port, seg);
    }

    /// Forgets `port`; its segment keeps its frames for the next port.
    pub fn left(&mut self, port: PortId) {
        if let Some(seg) = self.by_port.remove(&port)
            && let Some(n) = self.members.get_mut(usize::from(seg))
        {
            *n = n.saturating_sub(1);
        }
    }

    /// The segment of `port`.
    pub fn segment_of(&self, port: PortId) -> Option<SegmentId> {
        self.by_port.get(&port).copied()
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.members.len()
    }

    /// Ports placed.
    pub fn ports(&self) -> usize {
        self.by_port.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per: u16, max: usize) -> FrameBudget {
        FrameBudget {
            ports_per_segment: per,
            max_ports: max,
            ..FrameBudget::default()
        }
    }

    #[test]
    fn ports_fill_segments_in_order_and_reuse_room() {
        let b = budget(2, 10);
        let mut t = SegmentTable::default();
        assert_eq!(t.place(&b), Ok(Placement::New));
        t.segment_added(0);
        for (port, want) in [(0, 0), (1, 0)] {
            assert_eq!(t.place(&b), Ok(Placement::Existing(want)));
            t.joined(port, want);
        }
        assert_eq!(t.place(&b), Ok(Placement::New), "segment 0 is full");
        t.segment_added(1);
        t.joined(2, 1);
        t.left(0);
        assert_eq!(
            t.place(&b),
            Ok(Placement::Existing(0)),
            "a port that left makes room in its segment"
        );
        assert_eq!(t.segment_of(2), Some(1));
    }

    #[test]
    fn the_limit_is_refused_naming_the_flag() {
        let b = budget(16, 2);
        let mut t = SegmentTable::default();
        t.segment_added(0);
        t.joined(0, 0);
        t.joined(1, 0);
        let e = t.place(&b).unwrap_err();
        assert!(e.to_string().contains("--max-containers"), "{e}");
    }

    #[test]
    fn default_budget_keeps_segments_small() {
        let b = FrameBudget::default();
        assert_eq!(b.segment_frames(), 2048);
        // 1,088 ports (1,023 containers and 65 gateways) → 68 segments: the kernel's
        // per-socket heads cover 2,048 frames, not the 139,264 of one shared UMEM.
        assert_eq!(b.max_ports.div_ceil(usize::from(b.ports_per_segment)), 68);
    }
}
