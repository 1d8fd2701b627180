//! The L2 switch: which port a frame leaves by.
//!
//! One switch serves every Docker bridge network of a host. Each port belongs to one
//! *network* — an L2 domain of its own, identified (by convention) by the id of its gateway
//! port, the port leading to that network's kernel bridge (the host and the outside world).
//! A frame is only ever switched between ports of the same network: floods reach the ports
//! of the ingress port's network alone, and a unicast frame addressed to a MAC registered on
//! a port of another network is dropped ([`DropReason::CrossNetwork`]) rather than flooded.
//! A single-network setup puts every port in network 0.
//!
//! Unlike a learning bridge, container addresses are not learned from traffic: the controller
//! registers each port with the MAC(s) Docker assigned, so a container cannot claim another's
//! address by sending from it. The one exception is each network's gateway port, whose MACs
//! may also be learned from the frames it sends, up to [`MAX_LEARNED`] per gateway; a MAC
//! learned on one network's gateway is used for frames of that network only. Broadcast,
//! multicast and unknown unicast are flooded to every other port of the network, so ARP and
//! neighbour discovery work; nothing is ever sent back out of its ingress port.
//!
//! The MAC table is an open-addressing hash table keyed by (network, MAC) and sized at
//! configuration time; a lookup is a multiply, a shift and usually one probe, and never
//! allocates. The flood lists are slices of one list sorted by network, also rebuilt at
//! configuration time, so a flood looks its recipients up without allocating.
use crate::counters::DropReason;
use crate::phy::PortId;

/// Most MACs learned on each gateway port. Bounded so a flood of random source MACs from
/// outside cannot grow the table on the hot path; the table reserves room for them up front.
pub const MAX_LEARNED: usize = 64;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// To one port (always of the ingress port's network).
    Unicast(PortId),
    /// To every port of the ingress port's network except the ingress one.
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
    /// The MAC is already registered to another port of the same network.
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
    /// A second gateway port in one network.
    #[error("port {existing} is already the gateway of network {network}")]
    SecondGateway {
        /// The network.
        network: PortId,
        /// The network's current gateway.
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

/// The key of `mac` in `network`. Bit 48 marks a used slot, so the all-zero MAC in network
/// 0 is still a valid key.
#[inline(always)]
fn mac_key(network: PortId, m: &[u8; 6]) -> u128 {
    let mac = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]) | (1 << 48);
    u128::from(mac) | (u128::from(network) << 64)
}

/// The network every entry of [`Switch::owners`] is filed under: that table answers "is
/// this MAC registered anywhere", whatever the network.
const ANY_NETWORK: PortId = 0;

/// A fixed-capacity (network, MAC) → port map with linear probing. Entries are never
/// removed in place: configuration changes rebuild it (that is rare and off the per-packet
/// path).
#[derive(Clone, Debug)]
struct MacTable {
    keys: Box<[u128]>,
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
    fn slot(&self, key: u128) -> usize {
        let folded = (key as u64) ^ ((key >> 64) as u64).wrapping_mul(0xff51_afd7_ed55_8ccd);
        (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    #[inline]
    fn get(&self, network: PortId, mac: &[u8; 6]) -> Option<PortId> {
        let key = mac_key(network, mac);
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
    fn insert(&mut self, network: PortId, mac: &[u8; 6], port: PortId) -> bool {
        let key = mac_key(network, mac);
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
    network: PortId,
    macs: Vec<[u8; 6]>,
}

/// What the switch keeps per network.
#[derive(Clone, Debug)]
struct Network {
    id: PortId,
    gateway: Option<PortId>,
    /// MACs learned on the gateway (capacity [`MAX_LEARNED`], reserved when the network
    /// appears, so learning never allocates).
    learned: Vec<[u8; 6]>,
}

/// Per port id: where the port stands, for the per-packet path (no search).
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    present: bool,
    is_gateway: bool,
    network: PortId,
    /// Index of the network in [`Switch::networks`].
    net_index: u32,
    /// The network's ports: `flood[start..end]`.
    start: u32,
    end: u32,
}

/// The switch of every bridge network: ports grouped in networks (L2 domains).
#[derive(Clone, Debug)]
pub struct Switch {
    members: Vec<Member>,
    /// Networks with at least one port, by id.
    networks: Vec<Network>,
    /// Every port, ordered by network then id: each network's ports are one slice of it.
    flood: Vec<PortId>,
    /// Indexed by port id.
    slots: Vec<Slot>,
    /// (network, MAC) → port: registered MACs and those learned on gateways.
    table: MacTable,
    /// MAC → a port it is registered to, in any network: tells a MAC of another network
    /// from an unknown one.
    owners: MacTable,
    learn_gateway: bool,
}

impl Switch {
    /// An empty switch. With `learn_gateway`, unknown unicast source MACs seen on a gateway
    /// port are learned (up to [`MAX_LEARNED`] per gateway) for its network.
    pub fn new(learn_gateway: bool) -> Self {
        Self {
            members: Vec::new(),
            networks: Vec::new(),
            flood: Vec::new(),
            slots: Vec::new(),
            table: MacTable::with_room(0),
            owners: MacTable::with_room(0),
            learn_gateway,
        }
    }

    /// Registers port `id` in `network` with its MACs; `is_gateway` marks the network's
    /// gateway (the port to its kernel bridge: the host and the outside world). Each network
    /// has at most one gateway, and a MAC identifies at most one port of a network (ports of
    /// different networks may share one: they are different L2 domains).
    pub fn add_port(
        &mut self,
        id: PortId,
        network: PortId,
        macs: &[[u8; 6]],
        is_gateway: bool,
    ) -> Result<(), SwitchError> {
        if self.has_port(id) {
            return Err(SwitchError::DuplicatePort(id));
        }
        let net = self.networks.iter().position(|n| n.id == network);
        if is_gateway && let Some(existing) = net.and_then(|i| self.networks[i].gateway) {
            return Err(SwitchError::SecondGateway { network, existing });
        }
        for mac in macs {
            if mac[0] & 1 != 0 {
                return Err(SwitchError::GroupMac(mac_string(*mac)));
            }
            if let Some(owner) = self
                .members
                .iter()
                .find(|m| m.network == network && m.macs.contains(mac))
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
            network,
            macs: macs.to_vec(),
        });
        let net = match net {
            Some(i) => i,
            None => {
                let at = self.networks.partition_point(|n| n.id < network);
                self.networks.insert(
                    at,
                    Network {
                        id: network,
                        gateway: None,
                        learned: Vec::with_capacity(MAX_LEARNED),
                    },
                );
                at
            }
        };
        let n = &mut self.networks[net];
        if is_gateway {
            n.gateway = Some(id);
        }
        // A registered MAC takes precedence over one learned on the network's gateway.
        n.learned.retain(|l| !macs.contains(l));
        self.rebuild();
        Ok(())
    }

    /// Removes port `id` and its MACs (and, for a gateway, what was learned on it).
    pub fn remove_port(&mut self, id: PortId) -> Result<(), SwitchError> {
        let Some(pos) = self.members.iter().position(|m| m.id == id) else {
            return Err(SwitchError::UnknownPort(id));
        };
        let network = self.members.remove(pos).network;
        if !self.members.iter().any(|m| m.network == network) {
            self.networks.retain(|n| n.id != network);
        } else if let Some(n) = self.networks.iter_mut().find(|n| n.id == network)
            && n.gateway == Some(id)
        {
            n.gateway = None;
            n.learned.clear();
        }
        self.rebuild();
        Ok(())
    }

    /// Recomputes the per-port slots, the flood order and the MAC tables from the members
    /// and what the gateways learned (configuration time only).
    fn rebuild(&mut self) {
        let configured: usize = self.members.iter().map(|m| m.macs.len()).sum();
        let gateways = self.networks.iter().filter(|n| n.gateway.is_some()).count();
        let mut table = MacTable::with_room(configured + gateways * MAX_LEARNED);
        let mut owners = MacTable::with_room(configured);
        for m in &self.members {
            for mac in &m.macs {
                table.insert(m.network, mac, m.id);
                owners.insert(ANY_NETWORK, mac, m.id);
            }
        }
        for n in &self.networks {
            if let Some(gw) = n.gateway {
                for mac in &n.learned {
                    table.insert(n.id, mac, gw);
                }
            }
        }
        self.table = table;
        self.owners = owners;
        let mut order: Vec<(PortId, PortId)> =
            self.members.iter().map(|m| (m.network, m.id)).collect();
        order.sort_unstable();
        self.flood = order.iter().map(|&(_, id)| id).collect();
        let len = self
            .members
            .iter()
            .map(|m| usize::from(m.id) + 1)
            .max()
            .unwrap_or(0);
        self.slots = vec![Slot::default(); len];
        let mut start = 0;
        while start < order.len() {
            let network = order[start].0;
            let end = start + order[start..].partition_point(|&(n, _)| n == network);
            let net_index = self.networks.partition_point(|n| n.id < network);
            let gateway = self.networks.get(net_index).and_then(|n| n.gateway);
            for &(_, id) in &order[start..end] {
                self.slots[usize::from(id)] = Slot {
                    present: true,
                    is_gateway: gateway == Some(id),
                    network,
                    net_index: net_index as u32,
                    start: start as u32,
                    end: end as u32,
                };
            }
            start = end;
        }
    }

    #[inline(always)]
    fn slot(&self, id: PortId) -> Option<&Slot> {
        self.slots.get(usize::from(id)).filter(|s| s.present)
    }

    /// The gateway port of `network`, if one is registered.
    pub fn gateway(&self, network: PortId) -> Option<PortId> {
        self.networks
            .iter()
            .find(|n| n.id == network)
            .and_then(|n| n.gateway)
    }

    /// The network of port `id`, if it is on the switch.
    #[inline]
    pub fn network_of(&self, id: PortId) -> Option<PortId> {
        self.slot(id).map(|s| s.network)
    }

    /// Every network with at least one port, in id order.
    pub fn networks(&self) -> impl Iterator<Item = PortId> + '_ {
        self.networks.iter().map(|n| n.id)
    }

    /// True when `id` is on the switch.
    #[inline]
    pub fn has_port(&self, id: PortId) -> bool {
        self.slot(id).is_some()
    }

    /// Every port, ordered by network then id (in id order in a single-network setup).
    pub fn ports(&self) -> &[PortId] {
        &self.flood
    }

    /// The ports of the network of `in_port`, in id order, `in_port` included: its flood
    /// list (the engine skips the ingress port). Empty when `in_port` is not on the switch.
    #[inline]
    pub fn flood_ports(&self, in_port: PortId) -> &[PortId] {
        match self.slot(in_port) {
            Some(s) => &self.flood[s.start as usize..s.end as usize],
            None => &[],
        }
    }

    /// The ports of `network`, in id order (empty for a network without ports).
    pub fn network_ports(&self, network: PortId) -> &[PortId] {
        let start = self
            .flood
            .iter()
            .position(|&p| self.network_of(p) == Some(network));
        match start.and_then(|p| self.slot(self.flood[p])) {
            Some(s) => &self.flood[s.start as usize..s.end as usize],
            None => &[],
        }
    }

    /// The port `mac` leads to within `network`: registered there, or learned on the
    /// network's gateway.
    #[inline]
    pub fn lookup(&self, network: PortId, mac: &[u8; 6]) -> Option<PortId> {
        self.table.get(network, mac)
    }

    /// Decides where a frame from `in_port` goes, and learns a gateway's source MAC.
    #[inline]
    pub fn egress(&mut self, in_port: PortId, src_mac: &[u8; 6], dst_mac: &[u8; 6]) -> Egress {
        let Some(&slot) = self.slot(in_port) else {
            return Egress::Drop(DropReason::UnknownPort);
        };
        let net = slot.network;
        if self.learn_gateway && slot.is_gateway {
            self.learn(slot.net_index as usize, net, in_port, src_mac);
        }
        let egress = if dst_mac[0] & 1 != 0 {
            Egress::Flood
        } else {
            match self.table.get(net, dst_mac) {
                Some(p) if p == in_port => Egress::Drop(DropReason::Hairpin),
                Some(p) => Egress::Unicast(p),
                // Registered, but in another network: another L2 domain, never reached
                // from here (not even by a flood, which stays in this network).
                None if self.owners.get(ANY_NETWORK, dst_mac).is_some() => {
                    Egress::Drop(DropReason::CrossNetwork)
                }
                None => Egress::Flood,
            }
        };
        if egress == Egress::Flood
            && slot.is_gateway
            && self.table.get(net, src_mac).is_some_and(|p| p != in_port)
        {
            // A container's own flood, echoed back by the host's bridge (its port to the
            // dataplane is in hairpin mode): flooding it again would deliver it twice.
            return Egress::Drop(DropReason::EchoedFlood);
        }
        egress
    }

    #[inline]
    fn learn(&mut self, net_index: usize, network: PortId, gw: PortId, src: &[u8; 6]) {
        if src[0] & 1 != 0 || self.table.get(network, src).is_some() {
            return;
        }
        let Some(n) = self.networks.get_mut(net_index) else {
            return;
        };
        if n.learned.len() >= MAX_LEARNED {
            return;
        }
        // Room for MAX_LEARNED per gateway was reserved at rebuild, so neither push nor
        // insert allocates.
        if self.table.insert(network, src, gw) {
            n.learned.push(*src);
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
        s.add_port(0, 0, &[GW], true).unwrap();
        s.add_port(1, 0, &[A], false).unwrap();
        s.add_port(2, 0, &[B], false).unwrap();
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
        assert_eq!(s.egress(7, &A, &B), Egress::Drop(DropReason::UnknownPort));
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
        assert_eq!(s.lookup(0, &outside), None);
        // The gateway does, but never over a registered container MAC.
        s.egress(0, &outside, &BCAST);
        assert_eq!(s.lookup(0, &outside), Some(0));
        s.egress(0, &A, &BCAST);
        assert_eq!(s.lookup(0, &A), Some(1));
    }

    #[test]
    fn learning_is_bounded() {
        let mut s = switch();
        for i in 0..(MAX_LEARNED as u16 + 10) {
            let [hi, lo] = i.to_be_bytes();
            s.egress(0, &[2, 0xee, 0, 0, hi, lo], &BCAST);
        }
        assert_eq!(s.networks[0].learned.len(), MAX_LEARNED);
        assert_eq!(
            s.lookup(0, &[2, 0xee, 0, 0, 0, MAX_LEARNED as u8 + 5]),
            None
        );
    }

    #[test]
    fn config_errors_and_removal() {
        let mut s = switch();
        assert_eq!(
            s.add_port(1, 0, &[[2, 1, 1, 1, 1, 1]], false),
            Err(SwitchError::DuplicatePort(1))
        );
        assert!(matches!(
            s.add_port(3, 0, &[A], false),
            Err(SwitchError::DuplicateMac { owner: 1, .. })
        ));
        assert!(matches!(
            s.add_port(3, 0, &[BCAST], false),
            Err(SwitchError::GroupMac(_))
        ));
        assert_eq!(
            s.add_port(3, 0, &[[2, 3, 3, 3, 3, 3]], true),
            Err(SwitchError::SecondGateway {
                network: 0,
                existing: 0
            })
        );
        s.remove_port(2).unwrap();
        assert_eq!(s.lookup(0, &B), None);
        assert_eq!(s.ports(), &[0, 1]);
        assert_eq!(s.remove_port(2), Err(SwitchError::UnknownPort(2)));
    }

    // Two networks: 0 (gateway 0, containers 1 and 2) and 5 (gateway 5, containers 6 and
    // 7); port 3 in network 0 and port 8 in network 5 belong to one multi-homed container.
    const GW5: [u8; 6] = [2, 0, 0, 0, 5, 0x1];
    const C6: [u8; 6] = [2, 0, 0, 0, 5, 0x6];
    const C7: [u8; 6] = [2, 0, 0, 0, 5, 0x7];
    const M0: [u8; 6] = [2, 0, 0, 0, 0, 0x3];
    const M5: [u8; 6] = [2, 0, 0, 0, 5, 0x8];

    fn two_networks() -> Switch {
        let mut s = switch();
        s.add_port(3, 0, &[M0], false).unwrap();
        s.add_port(5, 5, &[GW5], true).unwrap();
        s.add_port(6, 5, &[C6], false).unwrap();
        s.add_port(7, 5, &[C7], false).unwrap();
        s.add_port(8, 5, &[M5], false).unwrap();
        s
    }

    #[test]
    fn floods_stay_in_their_network() {
        let s = two_networks();
        assert_eq!(s.flood_ports(1), &[0, 1, 2, 3]);
        assert_eq!(s.flood_ports(0), &[0, 1, 2, 3]);
        assert_eq!(s.flood_ports(6), &[5, 6, 7, 8]);
        assert_eq!(s.flood_ports(5), &[5, 6, 7, 8]);
        assert_eq!(s.flood_ports(4), &[] as &[PortId]);
        assert_eq!(s.network_ports(5), &[5, 6, 7, 8]);
        assert_eq!(s.network_ports(9), &[] as &[PortId]);
        assert_eq!(s.ports(), &[0, 1, 2, 3, 5, 6, 7, 8]);
        assert_eq!(s.networks().collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!((s.network_of(8), s.network_of(3)), (Some(5), Some(0)));
        assert_eq!(
            (s.gateway(0), s.gateway(5), s.gateway(1)),
            (Some(0), Some(5), None)
        );
    }

    #[test]
    fn unicast_to_another_networks_mac_is_dropped() {
        let mut s = two_networks();
        let cross = Egress::Drop(DropReason::CrossNetwork);
        // Container to container, container to the other gateway, gateway to container.
        assert_eq!(s.egress(1, &A, &C6), cross);
        assert_eq!(s.egress(1, &A, &GW5), cross);
        assert_eq!(s.egress(0, &GW, &C7), cross);
        assert_eq!(s.egress(6, &C6, &GW), cross);
        // The multi-homed container: each of its ports reaches its own network only.
        assert_eq!(s.egress(3, &M0, &C6), cross);
        assert_eq!(s.egress(3, &M0, &M5), cross);
        assert_eq!(s.egress(8, &M5, &C6), Egress::Unicast(6));
        assert_eq!(s.egress(6, &C6, &M5), Egress::Unicast(8));
        assert_eq!(s.egress(1, &A, &M0), Egress::Unicast(3));
        // Within a network nothing changes.
        assert_eq!(s.egress(6, &C6, &GW5), Egress::Unicast(5));
        assert_eq!(s.egress(5, &GW5, &C7), Egress::Unicast(7));
        assert_eq!(s.egress(1, &A, &B), Egress::Unicast(2));
        // Unknown unicast floods (within the network, see `flood_ports`).
        assert_eq!(s.egress(6, &C6, &[2, 9, 9, 9, 9, 9]), Egress::Flood);
    }

    #[test]
    fn one_gateway_per_network() {
        let mut s = two_networks();
        assert_eq!(
            s.add_port(9, 5, &[[2, 9, 9, 9, 9, 9]], true),
            Err(SwitchError::SecondGateway {
                network: 5,
                existing: 5
            })
        );
        // A third network's gateway is welcome; so is a MAC already used in another network.
        s.add_port(9, 9, &[[2, 9, 9, 9, 9, 9]], true).unwrap();
        s.add_port(10, 9, &[A], false).unwrap();
        assert_eq!(s.lookup(9, &A), Some(10));
        assert_eq!(s.lookup(0, &A), Some(1));
        assert_eq!(s.egress(10, &A, &A), Egress::Drop(DropReason::Hairpin));
        assert_eq!(s.egress(1, &A, &A), Egress::Drop(DropReason::Hairpin));
        assert_eq!(s.egress(0, &GW, &A), Egress::Unicast(1));
        assert_eq!(s.egress(9, &[2, 9, 9, 9, 9, 9], &A), Egress::Unicast(10));
        // Removing the gateway frees the slot for another, and the network goes with its
        // last port.
        s.remove_port(9).unwrap();
        assert_eq!(s.gateway(9), None);
        s.add_port(11, 9, &[[2, 0xb, 0, 0, 0, 0]], true).unwrap();
        assert_eq!(s.gateway(9), Some(11));
        s.remove_port(11).unwrap();
        s.remove_port(10).unwrap();
        assert_eq!(s.networks().collect::<Vec<_>>(), vec![0, 5]);
        assert_eq!(s.ports(), &[0, 1, 2, 3, 5, 6, 7, 8]);
    }

    #[test]
    fn a_mac_learned_on_a_gateway_serves_its_network_only() {
        let mut s = two_networks();
        let outside = [2, 0xee, 0, 0, 0, 1];
        s.egress(5, &outside, &BCAST);
        assert_eq!(s.lookup(5, &outside), Some(5));
        assert_eq!(s.lookup(0, &outside), None);
        // From network 5 it is the gateway; from network 0 it is unknown (flooded there,
        // where the host's bridge 0 may know it), never sent to gateway 5.
        assert_eq!(s.egress(6, &C6, &outside), Egress::Unicast(5));
        assert_eq!(s.egress(1, &A, &outside), Egress::Flood);
        // Gateway 0 may learn the same MAC for its own network.
        s.egress(0, &outside, &BCAST);
        assert_eq!(s.lookup(0, &outside), Some(0));
        assert_eq!(s.egress(1, &A, &outside), Egress::Unicast(0));
        // Each gateway has its own bound.
        for i in 0..(MAX_LEARNED as u16 + 10) {
            let [hi, lo] = i.to_be_bytes();
            s.egress(5, &[2, 0xdd, 0, 0, hi, lo], &BCAST);
        }
        assert_eq!(s.networks[1].learned.len(), MAX_LEARNED);
        assert_eq!(s.networks[0].learned.len(), 1);
        s.egress(0, &[2, 0xcc, 0, 0, 0, 1], &BCAST);
        assert_eq!(s.lookup(0, &[2, 0xcc, 0, 0, 0, 1]), Some(0));
        // What gateway 5 learned goes with it; network 0 keeps its own.
        s.remove_port(5).unwrap();
        assert_eq!(s.lookup(5, &outside), None);
        assert_eq!(s.lookup(0, &outside), Some(0));
        assert_eq!(s.egress(6, &C6, &outside), Egress::Flood);
    }

    #[test]
    fn the_echoed_flood_rule_is_per_gateway() {
        let mut s = two_networks();
        // Network 5's container's broadcast echoed by bridge 5: dropped.
        assert_eq!(
            s.egress(5, &C6, &BCAST),
            Egress::Drop(DropReason::EchoedFlood)
        );
        // A MAC of network 5 arriving on gateway 0 is no echo of anything flooded there.
        assert_eq!(s.egress(0, &C6, &BCAST), Egress::Flood);
        assert_eq!(
            s.egress(0, &A, &BCAST),
            Egress::Drop(DropReason::EchoedFlood)
        );
    }
}
