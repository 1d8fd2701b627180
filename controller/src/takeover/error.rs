//! What can go wrong while taking a bridge or giving it back, each case with the advice a
//! person needs to fix it (the CLI prints these as they are).
use std::io;
use std::path::PathBuf;

use crate::netlink::NetlinkError;

/// A failed takeover, adoption or restore.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// Moving links between bridges needs CAP_NET_ADMIN; checked before anything changes.
    #[error(
        "taking or restoring bridge {bridge} needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run bridgewall as root"
    )]
    NotRoot {
        /// The bridge asked for.
        bridge: String,
    },
    /// The bridge does not exist in the namespace (Docker not running, or a wrong name).
    #[error(
        "no such bridge {bridge} in namespace {netns}: is Docker running there? Give the bridge's name (default docker0) and, if Docker runs in another network namespace, that namespace"
    )]
    NoSuchBridge {
        /// The bridge asked for.
        bridge: String,
        /// The namespace searched.
        netns: String,
    },
    /// The name exists but is not a Linux bridge.
    #[error(
        "{name} in namespace {netns} is not a bridge (it is a {kind} link): give the name of a Linux bridge such as docker0"
    )]
    NotABridge {
        /// The name asked for.
        name: String,
        /// The namespace searched.
        netns: String,
        /// What the link is instead.
        kind: String,
    },
    /// An interface the dataplane would attach to (or the bridge the gateway pair copies)
    /// has an MTU native XDP on a veth cannot carry.
    #[error(
        "{iface} has MTU {mtu}, but native XDP on a veth allows at most {max}: lower the network's MTU to {max} or less (Docker: \"mtu\": {max} in daemon.json, or -o com.docker.network.driver.mtu={max} for a user network) and restart its containers"
    )]
    MtuTooLarge {
        /// The interface with the large MTU.
        iface: String,
        /// Its MTU.
        mtu: u32,
        /// The largest MTU that works.
        max: u32,
    },
    /// A gateway link name is already taken: another bridgewall holds the bridge, or a
    /// leftover whose state file is gone.
    #[error(
        "interface {name} already exists in namespace {netns}: another bridgewall may hold bridge {bridge}; stop it, or run `bridgewall restore`, or remove the leftover with `ip link del {name}`"
    )]
    GatewayExists {
        /// The gateway link name.
        name: String,
        /// The namespace.
        netns: String,
        /// The bridge being taken.
        bridge: String,
    },
    /// `adopt` was given a name that does not exist.
    #[error("no interface {ifname} in namespace {netns} to take off bridge {bridge}")]
    NoSuchInterface {
        /// The name asked for.
        ifname: String,
        /// The namespace searched.
        netns: String,
        /// The bridge held.
        bridge: String,
    },
    /// `adopt` was given an interface that belongs to another master: not ours to move.
    #[error(
        "{ifname} is enslaved to another device (index {master}), not to bridge {bridge}: not taking it"
    )]
    ForeignMaster {
        /// The interface.
        ifname: String,
        /// The bridge held.
        bridge: String,
        /// Index of the device it is enslaved to.
        master: u32,
    },
    /// `adopt` was given the gateway pair or a link that is not a veth.
    #[error(
        "{ifname} is not a container's veth (bridgewall's own gateway, or not a veth): not taking it off bridge {bridge}"
    )]
    NotAContainerPort {
        /// The interface.
        ifname: String,
        /// The bridge held.
        bridge: String,
    },
    /// The state file exists but cannot be read: ports it lists may still be off the bridge.
    #[error(
        "cannot read the takeover state {path}: {source}; ports it lists may still be off their bridge: fix its permissions and run `bridgewall restore`"
    )]
    StateUnreadable {
        /// The state file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The state file is not what bridgewall writes.
    #[error(
        "the takeover state {path} is not valid ({source}): put the ports it lists back with `ip link set PORT master BRIDGE`, delete the gateway pair, then delete the file"
    )]
    StateCorrupt {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The state file at the path for one bridge names another.
    #[error("the takeover state {path} is for bridge {found}, not {expected}: not touching it")]
    StateMismatch {
        /// The state file.
        path: PathBuf,
        /// The bridge asked for.
        expected: String,
        /// The bridge the file names.
        found: String,
    },
    /// The state file cannot be written: nothing is changed without a record to undo it.
    #[error("cannot write the takeover state {path}: {source}")]
    StateWrite {
        /// The state file (or its directory).
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Some ports could not be put back; the state file is kept so a later restore retries.
    #[error(
        "could not put everything back on bridge {bridge}: {}; the state file {path} is kept: run `bridgewall restore` again", failures.join("; ")
    )]
    RestoreIncomplete {
        /// The bridge.
        bridge: String,
        /// The state file kept.
        path: PathBuf,
        /// One line per failed step.
        failures: Vec<String>,
    },
    /// The private runtime that drives the netlink socket could not start.
    #[error("starting the netlink runtime for the takeover: {0}")]
    Runtime(#[source] io::Error),
    /// A netlink operation failed (its message names the operation; EPERM says "root").
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}
