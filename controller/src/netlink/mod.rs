//! What bridgewall needs from the kernel's network configuration, spoken over rtnetlink and a
//! few syscalls (never by running `ip`): network namespaces, veth pairs, bridges, addresses,
//! routes, link facts (index, MTU, bridge ports, veth peer) and the `ip_forward` switch.
//! Also permanent neighbour entries and per-namespace `net.*` sysctls, which `bridgewall bench`
//! needs for the namespaces it builds.
//!
//! Everything here works on one namespace at a time: a [`Rtnl`] handle is bound to the
//! namespace its socket was opened in ([`Netns::rtnl`]), which is how the lab configures
//! namespaces it created and how Docker tracking reads a container's `eth0`.
mod error;
mod link;
mod netns;
mod routes;
mod sysctl;
pub mod upcall;

pub use error::NetlinkError;
pub use link::{LinkCounters, LinkFacts, QdiscStats, Rtnl, VethPeer};
pub use netns::{Netns, NsThread, is_root};
pub use routes::{
    MAIN_TABLE, RouteEntry, RouteEvent, RouteKind, RouteReader, RouteWatch, reverse_path_prefixes,
};
pub use sysctl::{ip_forward_enabled, set_ip_forward, set_net_sysctl};
