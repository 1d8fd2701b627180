//! The Docker-free lab: a TOML file describes bridge networks and their "containers"
//! (network namespaces behind veths, each with an address per network, exposed and
//! published ports, links and a small TCP/UDP/HTTP responder) plus "outside hosts";
//! [`Lab::build`] makes it real in namespaces of its own, produces the same
//! [`crate::state::HostState`] Docker tracking produces, probes connections between its
//! members ([`Lab::connect`]), and removes everything when dropped.
//!
//! # The lab file
//! ```toml
//! # User rules in iptables syntax, evaluated before Docker's (like DOCKER-USER).
//! rules = ["-I -s 198.18.1.2 -d 172.17.0.2 -p tcp --dport 80 -j DROP"]
//!
//! # One network, as the seed's labs say it: Docker's default network `bridge`.
//! [bridge]
//! name = "docker0"            # the kernel bridge (default docker0)
//! subnet = "172.17.0.0/16"
//! gateway = "172.17.0.1"      # default: the subnet's first address, as Docker's
//! icc = false                 # default true
//!
//! # Any number of further networks (or all of them, without a [bridge] table).
//! [[network]]
//! name = "front"              # Docker's network name
//! bridge = "br-front"         # default: docker0 for a network called "bridge",
//!                             # else "br-" and the name (cut to 15 bytes)
//! subnet = "172.18.0.0/16"
//! gateway = "172.18.0.1"      # default: the subnet's first address
//! icc = true                  # default true
//! internal = false            # Docker's --internal; default false
//!
//! [[container]]               # on one network: its address there
//! name = "web"
//! network = "front"           # default: the network "bridge", or the lab's only one
//! ip = "172.18.0.2"
//! expose = ["80/tcp"]
//! publish = ["8081:80/tcp"]   # HOST:CONTAINER, TCP only (the lab's proxy)
//! link = ["db:database"]      # CHILD[:ALIAS]; the two must share a network
//! responder = [{ kind = "http", port = 80 }]   # http, tcp (echo) or udp (echo)
//!
//! [[container]]               # on several networks: one address each, in order
//! name = "api"
//! networks = [{ network = "front", ip = "172.18.0.3" },
//!             { network = "back", ip = "172.19.0.3" }]
//!
//! [[outside]]                 # a host on its own link to the lab host
//! name = "outside1"
//! ip = "198.18.1.2/24"
//! host_ip = "198.18.1.1"      # the lab host's end of the link
//!
//! [[step]]                    # a probe and what Docker's semantics expect of it
//! from = "outside1"           # a container, an outside host or "host"
//! to = "host"                 # a name, a link alias of `from`, "host" or an address
//! proto = "tcp"               # default tcp
//! port = 8081
//! expect = "pass"             # pass or drop
//! why = "-p 8081:80 publishes web"
//! ```
//! Each network gets its own kernel bridge in the lab's host namespace, with its gateway
//! address on it, so each is its own L2 domain; the host routes between them (ip_forward),
//! as a Docker host does, and isolating them is bridgewall's job. A container's interfaces
//! are `eth0`, `eth1`… in the order its networks are listed (a list, not a table, because
//! the order matters): its first network's address is where its published ports lead and
//! what outside hosts reach it by; its default route goes through the first of its
//! networks that is not `--internal`. Docker gives a container only on `--internal`
//! networks no default route; the lab gives it one through its first network, so that what
//! it sends out reaches bridgewall, which must drop it, and a walkthrough step shows the
//! policy at work rather than the container's routing table. Errors are
//! [`spec::SpecError`]s naming the item and the value, e.g. an address outside its
//! network's subnet.
//!
//! Dataplane port ids, MACs and host-side interface names come from one place,
//! [`LabSpec::host_state`], which both the builder and `bridgewall trace --lab` use.
//!
//! # Published ports
//! Published ports are served by a small userspace TCP proxy in the lab's host namespace
//! (what Docker's `docker-proxy` does), not by DNAT: the product never drives iptables, and
//! nftables over raw netlink is a project of its own. One consequence: a connection through
//! a published port reaches the container from its network's gateway address, not from
//! the outside host's address. Outside hosts also have a route to every network's subnet
//! through the lab host (ip_forward is on inside the lab), so they can address containers
//! directly, which is how source-based user rules and the published-port rule itself show
//! up in the walkthroughs.
mod build;
mod error;
mod probe;
mod service;
pub mod spec;
mod walkthrough;

pub use build::{Lab, LabContainer, LabInterface, LabOutside};
pub use error::LabError;
pub use probe::{Outcome, Proto};
pub use spec::{Expect, LabSpec, NetworkSpec, SpecError};
pub use walkthrough::StepResult;

/// The seed's walkthrough, built into the binary as the default for `bridgewall lab`.
pub const WALKTHROUGH_TOML: &str = include_str!("../../../examples/lab/walkthrough.toml");

/// The networks walkthrough (`bridgewall lab --networks`): two user-defined networks (one
/// `--internal`) beside the default bridge with icc=false, a container on two networks, and
/// what isolation between networks means step by step.
pub const NETWORKS_TOML: &str = include_str!("../../../examples/lab/networks.toml");
