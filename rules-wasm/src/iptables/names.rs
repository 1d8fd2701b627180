//! What the parser asks of the world: container and network names, interfaces, published
//! ports, MACs.
use std::net::IpAddr;

use crate::model::Cidr;

/// Resolves the names a user may write where iptables wants addresses or interfaces, and
/// the facts that give iptables' conntrack and interface matches their meaning on the
/// bridges bridgewall owns. Implemented for [`crate::docker::HostNetworks`] (containers,
/// networks, kernel bridges, published ports; see [`crate::docker`] for what each name
/// means) and extended by [`WithHostRoutes`] with the host's routes.
///
/// Only [`Names::addrs`] and [`Names::port`] are required: the other methods default to
/// what one bridge called `docker0` (whose gateway is `port("docker0")`) means, so a
/// resolver written for one network keeps working.
pub trait Names {
    /// The addresses of the container called `name` (on every network it is on), or `None`
    /// if there is no such container.
    fn addrs(&self, name: &str) -> Option<Vec<IpAddr>>;
    /// The one dataplane port `name` stands for (a container on one network, or a bridge
    /// such as `docker0` for its gateway); `None` when unknown or when it stands for several
    /// (see [`Names::ports`]).
    fn port(&self, name: &str) -> Option<u16>;
    /// Every dataplane port `name` stands for in `-i`/`-o`: a container's port on each of its
    /// networks, a kernel bridge's gateway port, a Docker network's container ports. `None`
    /// when the name is unknown; an empty list when it names something without ports yet (a
    /// network no container is attached to). Several ports make several rules, which is why
    /// this is a list and `! -i NAME` is refused for them.
    fn ports(&self, name: &str) -> Option<Vec<u16>> {
        self.port(name).map(|p| vec![p])
    }
    /// The container ports of the Docker network called `network` (`-i network:NAME`, and
    /// the last meaning of a bare `-i NAME`), or `None` if there is no such network.
    fn network_ports(&self, _network: &str) -> Option<Vec<u16>> {
        None
    }
    /// The subnets of the Docker network called `network` (`-s network:NAME`), or `None` if
    /// there is no such network.
    fn network_subnets(&self, _network: &str) -> Option<Vec<Cidr>> {
        None
    }
    /// The default bridge's gateway port (`docker0`): kept for resolvers of one network; the
    /// parser asks [`Names::gateways`] and [`Names::gateway_of`].
    fn gateway_port(&self) -> Option<u16> {
        self.port("docker0")
    }
    /// Every gateway port, with its kernel bridge's name: where everything from the host and
    /// outside comes in, what `-i docker+` / `-i br-+` select, and (when there is one)
    /// what `-i eth0` pins.
    fn gateways(&self) -> Vec<(String, u16)> {
        self.gateway_port()
            .map(|p| vec![("docker0".to_string(), p)])
            .unwrap_or_default()
    }
    /// The gateway port a packet to container address `addr` comes in through (the gateway
    /// of that container's network): where a published port's DNATed packets arrive, for
    /// `--ctorigdstport` and `--ctorigdst`.
    fn gateway_of(&self, _addr: IpAddr) -> Option<u16> {
        self.gateway_port()
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
    fn ports(&self, name: &str) -> Option<Vec<u16>> {
        self.inner.ports(name)
    }
    fn network_ports(&self, network: &str) -> Option<Vec<u16>> {
        self.inner.network_ports(network)
    }
    fn network_subnets(&self, network: &str) -> Option<Vec<Cidr>> {
        self.inner.network_subnets(network)
    }
    fn gateway_port(&self) -> Option<u16> {
        self.inner.gateway_port()
    }
    fn gateways(&self) -> Vec<(String, u16)> {
        self.inner.gateways()
    }
    fn gateway_of(&self, addr: IpAddr) -> Option<u16> {
        self.inner.gateway_of(addr)
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
