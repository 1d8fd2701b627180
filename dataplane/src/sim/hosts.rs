//! The hosts of the simulated bridge: the gateway (the host's side of the bridge) and three
//! containers, each on its own port.
use std::net::{IpAddr, Ipv4Addr};

use crate::engine::PortConfig;
use crate::phy::PortId;

/// A simulated container (or the gateway) on the bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Host {
    /// The engine port it is attached to.
    pub port: PortId,
    /// Its MAC address.
    pub mac: [u8; 6],
    /// Its IPv4 address (its IPv6 address is [`v6`] of it).
    pub ip: [u8; 4],
}

/// The gateway, port 0: 172.17.0.1, the host's side of the bridge.
pub const GW: Host = Host {
    port: 0,
    mac: [2, 0x42, 0, 0, 0, 1],
    ip: [172, 17, 0, 1],
};

/// A container on port 1, 172.17.0.2: the one that links to [`CHILD`].
pub const PARENT: Host = Host {
    port: 1,
    mac: [2, 0x42, 172, 17, 0, 2],
    ip: [172, 17, 0, 2],
};

/// A container on port 2, 172.17.0.3: the linked one, exposing TCP 80.
pub const CHILD: Host = Host {
    port: 2,
    mac: [2, 0x42, 172, 17, 0, 3],
    ip: [172, 17, 0, 3],
};

/// A container on port 3, 172.17.0.4: linked to nobody.
pub const OTHER: Host = Host {
    port: 3,
    mac: [2, 0x42, 172, 17, 0, 4],
    ip: [172, 17, 0, 4],
};

/// Every host of the bridge, indexed by port.
pub const HOSTS: [Host; 4] = [GW, PARENT, CHILD, OTHER];

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The IPv6 address the simulator gives a host: `fd00::` plus its IPv4 address.
pub fn v6(h: Host) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[12..16].copy_from_slice(&h.ip);
    a
}

/// An IPv4 address as the policy ABI carries it (IPv4-mapped IPv6).
pub fn mapped(ip: [u8; 4]) -> [u8; 16] {
    rules_wasm::abi::addr_bytes(IpAddr::V4(Ipv4Addr::from(ip)))
}

/// The port configuration of host `h`: in network 0 (the simulated bridge is a single
/// network, its gateway port 0), its MAC, its IPv4 and IPv6 ([`v6`]) addresses, the gateway
/// flag, and whether the engine completes TCP/UDP checksums on its frames.
pub fn host_port(h: Host, complete_checksums: bool) -> PortConfig {
    PortConfig {
        id: h.port,
        network: 0,
        macs: vec![h.mac],
        ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip)), IpAddr::V6(v6(h).into())],
        is_gateway: h == GW,
        complete_checksums,
    }
}
