//! What the parser asks of the world: container names, interfaces, published ports, MACs.
use std::net::IpAddr;

use crate::model::Cidr;

/// Resolves the names a user may write where iptables wants addresses or interfaces, and
/// the facts that give iptables' conntrack and interface matches their meaning on a bridge
/// bridgewall owns. Implemented for [`crate::docker::BridgeNetwork`] (containers, `docker0`,
/// published ports) and extended by [`WithHostRoutes`] with the host's routes.
pub trait Names {
    /// The addresses of the container called `name`, or `None` if there is no such container.
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>>;
    /// The dataplane port of `name` (a container, or `docker0` for the gateway).
    fn port(&self, name: &str) -> Option<u16>;
    /// The gateway's dataplane port: where everything from the host and outside comes in.
    fn gateway_port(&self) -> Option<u16> {
        self.port("docker0")
    }
    /// The source prefixes the host routes through its interface `ifname` (reverse path), or
    /// `None` when the host has no such interface: what `-i eth0` means on the bridge.
    fn host_routes(&self, _ifname: &str) -> Option<Vec<Cidr>> {
        None
    }
    /// The host's own addresses (what a client outside connects to before Docker's DNAT).
    fn host_addrs(&self) -> Vec<IpAddr> {
        Vec::new()
    }
    /// Published ports as `(protocol, host port, container address, container port)`: how
    /// `--ctorigdstport` and `--ctorigdst` see through the kernel's DNAT.
    fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
        Vec::new()
    }
    /// The dataplane port of the container whose MAC is `mac`.
    fn port_of_mac(&self, _mac: [u8; 6]) -> Option<u16> {
        None
    }
}

/// A resolver that knows no names: only literal addresses and port ids are accepted.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoNames;

impl Names for NoNames {
    fn addrs(&self, _: &str) -> Option<Vec<IpAddr>> {
        None
    }
    fn port(&self, _: &str) -> Option<u16> {
        None
    }
}

/// Another resolver plus the host's interfaces: their reverse-path prefixes (from the routing
/// table, which the controller follows over netlink) and the host's addresses.
#[derive(Clone, Copy, Debug)]
pub struct WithHostRoutes<'a, N: ?Sized> {
    /// The resolver for everything else.
    pub inner: &'a N,
    /// `(interface name, prefixes routed through it)`.
    pub routes: &'a [(String, Vec<Cidr>)],
    /// The host's own addresses.
    pub host_addrs: &'a [IpAddr],
}

impl<N: Names + ?Sized> Names for WithHostRoutes<'_, N> {
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>> {
        self.inner.addrs(name)
    }
    fn port(&self, name: &str) -> Option<u16> {
        self.inner.port(name)
    }
    fn gateway_port(&self) -> Option<u16> {
        self.inner.gateway_port()
    }
    fn host_routes(&self, ifname: &str) -> Option<Vec<Cidr>> {
        self.routes
            .iter()
            .find(|(n, _)| n == ifname)
            .map(|(_, r)| r.clone())
            .or_else(|| self.inner.host_routes(ifname))
    }
    fn host_addrs(&self) -> Vec<IpAddr> {
        let mut a = self.host_addrs.to_vec();
        a.extend(self.inner.host_addrs());
        a
    }
    fn published(&self) -> Vec<(u8, u16, IpAddr, u16)> {
        self.inner.published()
    }
    fn port_of_mac(&self, mac: [u8; 6]) -> Option<u16> {
        self.inner.port_of_mac(mac)
    }
}
