//! What Docker (or the lab) says about a bridge network: the input from which the controller
//! derives the DOCKER and ICC chains. Filled by the controller from the Engine API or a lab
//! file; turned into rules by [`docker_rules`] (to be written).
use std::net::IpAddr;

/// Dataplane port id as the policy ABI carries it.
pub type PortId = u16;

/// A bridge network (e.g. Docker's default `bridge` on `docker0`) and its containers.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BridgeNetwork {
    /// Inter-container communication: Docker's `com.docker.network.bridge.enable_icc`.
    pub icc: bool,
    /// The dataplane port that leads to the bridge itself (the host and the outside world).
    pub gateway_port: PortId,
    /// The bridge's own addresses (e.g. 172.17.0.1): traffic from these is the host itself,
    /// which reaches any container port, as with Docker (its userland proxy connects from here).
    pub gateway_ips: Vec<IpAddr>,
    /// The containers attached to the bridge.
    pub containers: Vec<ContainerInfo>,
}

/// One container on the bridge.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Container name without Docker's leading `/`.
    pub name: String,
    /// The dataplane port its host-side veth is attached to.
    pub port: PortId,
    /// Its addresses on this network.
    pub ips: Vec<IpAddr>,
    /// Its MAC on this network.
    pub mac: [u8; 6],
    /// Ports the image or `--expose` declares (`EXPOSE 80`): what links open.
    pub exposed: Vec<PortProto>,
    /// Ports published with `-p host:container`.
    pub published: Vec<Published>,
    /// `--link child:alias` given when this container (the parent) was started.
    pub links: Vec<LinkSpec>,
}

/// A protocol and port, as in `80/tcp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortProto {
    /// IP protocol number (6 TCP, 17 UDP).
    pub proto: u8,
    /// Port number.
    pub port: u16,
}

/// A published port (`-p 8080:80/tcp`). The kernel's DNAT rewrites the destination to the
/// container's port before the dataplane sees the packet, so rules match `container_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Published {
    /// IP protocol number.
    pub proto: u8,
    /// Port inside the container (80 in `-p 8080:80`).
    pub container_port: u16,
    /// Port on the host (8080 in `-p 8080:80`); informational for the dataplane.
    pub host_port: u16,
}

/// A legacy link: the parent (the container started with `--link`) may open the child's
/// exposed ports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LinkSpec {
    /// The linked (child) container's name.
    pub child: String,
    /// The alias the parent knows it by.
    pub alias: String,
}
