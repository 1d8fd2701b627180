//! The L2 switch: which port a frame leaves by.
//!
//! Unlike a learning bridge, container addresses are not learned from traffic: the controller
//! registers each port with the MAC(s) Docker assigned, so a container cannot claim another's
//! address by sending from it. The one exception is the gateway port (the bridge's own side:
//! the host and the outside world), whose MACs may also be learned from the frames it sends,
//! up to [`MAX_LEARNED`]. Broadcast, multicast and unknown unicast are flooded to every other
//! port, so ARP and neighbour discovery work; nothing is ever sent back out of its ingress port.
//!
//! The MAC table is an open-addressing hash table sized at configuration time; a lookup is a
//! multiply, a shift and usually one probe, and never allocates.
use crate::counters::DropReason;
use crate::phy::PortId;

/// Most MACs learned on the gateway port. Bounded so a flood of random source MACs from
/// outside cannot grow the table on the hot path; the table reserves room for them up front.
pub const MAX_LEARNED: usize = 64;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// To one port.
    Unicast(PortId),
    /// To every port except the ingress one.
    Flood,
    /// Nowhere.
    Drop(DropReason),
}

/// Configuration mistakes the switch refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The port is already registered.
    #[error("port {0} is already on the switch")]
    DuplicatePort(PortId),
    /// The MAC is already registered to another port.
    #[error("MAC {mac} is already registered to port {owner}")]
    DuplicateMac {
        /// The MAC, formatted.
        mac: String,
        /// The port holding it.
        owner: PortId,
    },
    /// A multicast/broadcast MAC cannot identify a port.
    #[error("MAC {0} is a group address and cannot identify a port")]
    GroupMac(String),
    /// A second gateway port.
    #[error("port {existing} is already the gateway")]
    SecondGateway {
        /// The current gateway.
        existing: PortId,
    },
    /// The port is not on the switch.
    #[error("port {0} is not on the switch")]
    UnknownPort(PortId),
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff` for errors and logs.
pub fn mac_string(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[inline(always)]
fn mac_key(m: &[u8; 6]) -> u64 {
    // Bit 48 marks a used slot, so the all-zero MAC is still a valid key.
    u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]) | (1 << 48)
}

/// A fixed-capacity MAC → port map with linear probing. Entries are never removed in place:
/// configuration changes rebuild it (that is rare and off the per-packet path).
#[derive(Clone, Debug)]
struct MacTable {
    keys: Box<[u64]>,
    ports: Box<[PortId]>,
    shift: u32,
    len: usize,
}

impl MacTable {
    /// A table for up to `n` entries at ≤ 50 % load.
    fn with_room(n: usize) -> Self {
        let cap = (n * 2).next_power_of_two().max(16);
        Self {
            keys: vec![0; cap].into_boxed_slice(),
            ports: vec![0; cap].into_boxed_slice(),
            shift: 64 - cap.trailing_zeros(),
            len: 0,
        }
    }

    #[inline(always)]
    fn slot(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, mac: &[u8; 6]) -> Option<PortId> {
        let key = mac_key(mac);
        let mask = self.keys.len() - 1;
        let mut i = self.slot(key);
        loop {
            let k = self.keys[i];
            if k == key {
                return Some(self.ports[i]);
            }
            if k == 0 {
                return None;
            }
            i = (i + 1) & mask;
        }
    }

    /// Inserts or overwrites; false when the table is at its load limit.
    fn insert(&mut self, mac: &[u8; 6], port: PortId) -> bool {
        let key = mac_key(mac);
        let mask = self.keys.len() - 1;
        let mut i = self.slot(key);
        loop {
            let k = self.keys[i];
            if k == key {
                self.ports[i] = port;
                return true;
            }
            if k == 0 {
                if (self.len + 1) * 2 > self.keys.len() {
                    return false;
                }
                self.keys[i] = key;
                self.ports[i] = port;
                self.len += 1;
                return true;
            }
            i = (i + 1) & mask;
        }
    }
}

#[derive(Clone, Debug)]
struct Member {
    id: PortId,
    macs: Vec<[u8; 6]>,
}

/// The switch of one bridge.
#[derive(Clone, Debug)]
pub struct Switch {
    members: Vec<Member>,
    flood: Vec<PortId>,
    table: MacTable,
    gateway: Option<PortId>,
    learn_gateway: bool,
    learned: Vec<[u8; 6]>,
}

impl Switch {
    /// An empty switch. With `learn_gateway`, unknown unicast source MACs seen on the gateway
    /// port are learned (up to [`MAX_LEARNED`]).
    pub fn new(learn_gateway: bool) -> Self {
        Self {
            members: Vec::new(),
            flood: Vec::new(),
            table: MacTable::with_room(MAX_LEARNED),
            gateway: None,
            learn_gateway,
            learned: Vec::with_capacity(MAX_LEARNED),
        }
    }

    /// Registers port `id` with its MACs; `is_gateway` marks the bridge's own port.
    pub fn add_port(
        &mut self,
        id: PortId,
        macs: &[[u8; 6]],
        is_gateway: bool,
    ) -> Result<(), SwitchError> {
        if self.members.iter().any(|m| m.id == id) {
            return Err(SwitchError::DuplicatePort(id));
        }
        if is_gateway && let Some(existing) = self.gateway {
            return Err(SwitchError::SecondGateway { existing });
        }
        for mac in macs {
            if mac[0] & 1 != 0 {
                return Err(SwitchError::GroupMac(mac_string(*mac)));
            }
            if let Some(owner) = self
                .members
                .iter()
                .find(|m| m.macs.contains(mac))
                .map(|m| m.id)
            {
                return Err(SwitchError::DuplicateMac {
                    mac: mac_string(*mac),
                    owner,
                });
            }
        }
        self.members.push(Member {
            id,
            macs: macs.to_vec(),
        });
        if is_gateway {
            self.gateway = Some(id);
        }
        // A container MAC takes precedence over one learned on the gateway.
        self.learned.retain(|l| !macs.contains(l));
        self.rebuild();
        Ok(())
    }

    /// Removes port `id` and its MACs (and, for the gateway, what was learned on it).
    pub fn remove_port(&mut self, id: PortId) -> Result<(), SwitchError> {
        let Some(pos) = self.members.iter().position(|m| m.id == id) else {
            return Err(SwitchError::UnknownPort(id));
        };
        self.members.remove(pos);
        if self.gateway == Some(id) {
            self.gateway = None;
            self.learned.clear();
        }
        self.rebuild();
        Ok(())
    }

    fn rebuild(&mut self) {
        let configured: usize = self.members.iter().map(|m| m.macs.len()).sum();
        let mut table = MacTable::with_room(configured + MAX_LEARNED);
        for m in &self.members {
            for mac in &m.macs {
                table.insert(mac, m.id);
            }
        }
        if let Some(gw) = self.gateway {
            for mac in &self.learned {
                table.insert(mac, gw);
            }
        }
        self.table = table;
        self.flood = self.members.iter().map(|m| m.id).collect();
        self.flood.sort_unstable();
    }

    /// The gateway port, if one is registered.
    pub fn gateway(&self) -> Option<PortId> {
        self.gateway
    }

    /// True when `id` is on the switch.
    pub fn has_port(&self, id: PortId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// Every port, in id order: the flood list (the engine skips the ingress port).
    pub fn ports(&self) -> &[PortId] {
        &self.flood
    }

    /// The port registered for `mac`, if any.
    #[inline]
    pub fn lookup(&self, mac: &[u8; 6]) -> Option<PortId> {
        self.table.get(mac)
    }

    /// Decides where a frame from `in_port` goes, and learns the gateway's source MAC.
    #[inline]
    pub fn egress(&mut self, in_port: PortId, src_mac: &[u8; 6], dst_mac: &[u8; 6]) -> Egress {
        if self.learn_gateway && Some(in_port) == self.gateway {
            self.learn(in_port, src_mac);
        }
        let egress = if dst_mac[0] & 1 != 0 {
            Egress::Flood
        } else {
            match self.table.get(dst_mac) {
                Some(p) if p == in_port => Egress::Drop(DropReason::Hairpin),
                Some(p) => Egress::Unicast(p),
                None => Egress::Flood,
            }
        };
        if egress == Egress::Flood
            && Some(in_port) == self.gateway
            && self.table.get(src_mac).is_some_and(|p| p != in_port)
        {
            // A container's own flood, echoed back by the host's bridge (its port to the
            // dataplane is in hairpin mode): flooding it again would deliver it twice.
            return Egress::Drop(DropReason::EchoedFlood);
        }
        egress
    }

    #[inline]
    fn learn(&mut self, gw: PortId, src: &[u8; 6]) {
        if src[0] & 1 != 0 || self.learned.len() >= MAX_LEARNED || self.table.get(src).is_some() {
            return;
        }
        // Room for MAX_LEARNED was reserved at rebuild, so neither push nor insert allocates.
        if self.table.insert(src, gw) {
            self.learned.push(*src);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const GW: [u8; 6] = [2, 0, 0, 0, 0, 0x1];
    const BCAST: [u8; 6] = [0xff; 6];

    fn switch() -> Switch {
        let mut s = Switch::new(true);
        s.add_port(0, &[GW], true).unwrap();
        s.add_port(1, &[A], false).unwrap();
        s.add_port(2, &[B], false).unwrap();
        s
    }

    #[test]
    fn unicast_broadcast_and_hairpin() {
        let mut s = switch();
        assert_eq!(s.egress(1, &A, &B), Egress::Unicast(2));
        assert_eq!(s.egress(1, &A, &GW), Egress::Unicast(0));
        assert_eq!(s.egress(1, &A, &BCAST), Egress::Flood);
        assert_eq!(s.egress(1, &A, &A), Egress::Drop(DropReason::Hairpin));
        assert_eq!(s.egress(1, &A, &[2, 9, 9, 9, 9, 9]), Egress::Flood);
    }

    #[test]
    fn a_containers_flood_echoed_back_by_the_host_bridge_is_dropped() {
        let mut s = switch();
        // The host's bridge (hairpin mode on its port to us) sends A's broadcast back.
        assert_eq!(
            s.egress(0, &A, &BCAST),
            Egress::Drop(DropReason::EchoedFlood)
        );
        // The host's own broadcasts, and frames of outside hosts, still flood.
        assert_eq!(s.egress(0, &GW, &BCAST), Egress::Flood);
        assert_eq!(s.egress(0, &[2, 0xee, 0, 0, 0, 2], &BCAST), Egress::Flood);
        // A frame the host bridged back after DNAT (A's MAC, to B) is unicast as usual.
        assert_eq!(s.egress(0, &A, &B), Egress::Unicast(2));
        // From a container port nothing changes.
        assert_eq!(s.egress(1, &A, &BCAST), Egress::Flood);
    }

    #[test]
    fn container_macs_are_not_learned_but_gateway_macs_are() {
        let mut s = switch();
        let outside = [2, 0xee, 0, 0, 0, 1];
        // A container sending from an unknown MAC teaches the switch nothing.
        s.egress(1, &outside, &BCAST);
        assert_eq!(s.lookup(&outside), None);
        // The gateway does, but never over a registered container MAC.
        s.egress(0, &outside, &BCAST);
        assert_eq!(s.lookup(&outside), Some(0));
        s.egress(0, &A, &BCAST);
        assert_eq!(s.lookup(&A), Some(1));
    }

    #[test]
    fn learning_is_bounded() {
        let mut s = switch();
        for i in 0..(MAX_LEARNED as u16 + 10) {
            let [hi, lo] = i.to_be_bytes();
            s.egress(0, &[2, 0xee, 0, 0, hi, lo], &BCAST);
        }
        assert_eq!(s.learned.len(), MAX_LEARNED);
        assert_eq!(s.lookup(&[2, 0xee, 0, 0, 0, MAX_LEARNED as u8 + 5]), None);
    }

    #[test]
    fn config_errors_and_removal() {
        let mut s = switch();
        assert_eq!(
            s.add_port(1, &[[2, 1, 1, 1, 1, 1]], false),
            Err(SwitchError::DuplicatePort(1))
        );
        assert!(matches!(
            s.add_port(3, &[A], false),
            Err(SwitchError::DuplicateMac { owner: 1, .. })
        ));
        assert!(matches!(
            s.add_port(3, &[BCAST], false),
            Err(SwitchError::GroupMac(_))
        ));
        assert_eq!(
            s.add_port(3, &[[2, 3, 3, 3, 3, 3]], true),
            Err(SwitchError::SecondGateway { existing: 0 })
        );
        s.remove_port(2).unwrap();
        assert_eq!(s.lookup(&B), None);
        assert_eq!(s.ports(), &[0, 1]);
        assert_eq!(s.remove_port(2), Err(SwitchError::UnknownPort(2)));
    }
}
