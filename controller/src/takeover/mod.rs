//! Taking a Linux bridge (Docker's `docker0`) off the kernel's hands, and giving it back.
//!
//! Taking it: every container's host-side veth leaves the bridge (it stays up; the dataplane
//! attaches to it), and a gateway veth pair joins it — `outer` enslaved to the bridge,
//! `inner` for the dataplane's gateway port — so traffic between the host (or the outside
//! world) and the containers crosses the dataplane too, while the bridge keeps its address
//! and the kernel keeps routing and NATting published ports.
//!
//! Giving it back ([`Takeover::restore`], or `Drop`): each taken port still present goes back
//! on the bridge, the gateway pair is deleted. A crash cannot give it back, so every step is
//! recorded first in a state file (see [`state_path`]); [`restore_from_state`] — called by
//! `bridgewall restore` — undoes whatever the record lists, and the next [`Takeover::take`]
//! carries it over (the ports it lists stay off the bridge and are taken again, the old
//! gateway pair is replaced). Until then the containers are cut off, never exposed: nothing
//! carries their traffic.
//!
//! The takeover speaks netlink over its own socket in the bridge's namespace, driven by a
//! private runtime; its methods block (milliseconds) and may be called from async code.
//! Signal handling is the caller's: on SIGINT/SIGTERM, stop the dataplane, then call
//! [`Takeover::restore`].
mod error;
mod nl;
mod state;

use std::path::{Path, PathBuf};

pub use error::TakeoverError;
pub use state::{TakenPort, state_path};

use nl::{NlSession, is_gone};
use state::{GatewayRecord, STATE_VERSION, TakeoverRecord};

use crate::netlink::{LinkFacts, NetlinkError, Netns, Rtnl, VethPeer, is_root};

/// The largest MTU a veth's peer may have while native XDP is attached to the veth: larger
/// frames would not fit the single page the veth's XDP path works in.
pub const XDP_VETH_MAX_MTU: u32 = 3506;

/// Where state files live by default: tmpfs, so a reboot (which also removes the veths the
/// files talk about) clears them.
pub const DEFAULT_STATE_DIR: &str = "/run/bridgewall";

/// How to take a bridge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakeoverOptions {
    /// Names of the gateway veth pair: (end enslaved to the bridge, end the dataplane binds).
    pub gateway_names: (String, String),
    /// Directory of the state files that let a crashed takeover be undone.
    pub state_dir: PathBuf,
}

impl Default for TakeoverOptions {
    /// `bwgw0`/`bwgw1` and [`DEFAULT_STATE_DIR`]: right when one bridge per namespace is taken.
    fn default() -> Self {
        TakeoverOptions {
            gateway_names: ("bwgw0".into(), "bwgw1".into()),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

impl TakeoverOptions {
    /// Gateway names derived from the bridge's (`bwg0-<bridge>`, `bwg1-<bridge>`), so several
    /// bridges of one namespace can be taken at once. A bridge name longer than the 10
    /// characters the kernel's 15 leave is cut to 6 and followed by 4 hex digits of a hash
    /// of the whole name: Docker's `br-<id>` bridges share their first characters.
    pub fn for_bridge(bridge: &str) -> Self {
        let stem = gateway_stem(bridge);
        TakeoverOptions {
            gateway_names: (format!("bwg0-{stem}"), format!("bwg1-{stem}")),
            ..TakeoverOptions::default()
        }
    }
}

/// At most 10 characters naming `bridge` in its gateway pair's names (see
/// [`TakeoverOptions::for_bridge`]).
fn gateway_stem(bridge: &str) -> String {
    if bridge.chars().count() <= 10 {
        return bridge.to_string();
    }
    // FNV-1a, folded to 16 bits: stable across runs and versions, unlike std's hasher.
    let mut h: u32 = 0x811c_9dc5;
    for b in bridge.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let head: String = bridge.chars().take(6).collect();
    format!("{head}{:04x}", (h ^ (h >> 16)) & 0xffff)
}

/// What a port the dataplane attaches to stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortRole {
    /// The gateway pair's inner end: leads to the bridge, the host and the outside world.
    Gateway,
    /// A container's host-side veth.
    Container,
}

/// An interface the dataplane must attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataplanePort {
    /// Interface name in the bridge's namespace.
    pub name: String,
    /// Interface index there.
    pub index: u32,
    /// Gateway or container.
    pub role: PortRole,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// The bridge.
    pub bridge: String,
    /// Ports put back on the bridge (or found already there).
    pub returned: Vec<String>,
    /// Ports that no longer exist (their container stopped): nothing to put back.
    pub vanished: Vec<String>,
    /// Ports still present that were deliberately left where they are, with why (the bridge
    /// is gone, or someone enslaved the port elsewhere meanwhile).
    pub left: Vec<String>,
    /// Whether a gateway pair was found and deleted.
    pub gateway_removed: bool,
}

/// A bridge held by bridgewall. Dropping it restores the bridge (prefer [`Takeover::restore`],
/// which reports what happened).
#[derive(Debug)]
pub struct Takeover {
    nl: NlSession,
    path: PathBuf,
    record: TakeoverRecord,
    /// Set once restored, so `Drop` does not do it again.
    finished: bool,
}

impl Takeover {
    /// Takes `bridge` in `netns`: checks it (exists, is a bridge, MTUs fit native XDP),
    /// carries over a crashed earlier takeover if its state file is there (its ports stay
    /// off the bridge — never handed to the kernel bridge in between — and its gateway pair
    /// goes), creates the gateway pair
    /// (MTU of the bridge, outer end on the bridge, both up), pins the bridge's MAC (the
    /// kernel would otherwise re-derive it from the new set of ports, staling the containers'
    /// ARP caches) and takes every container veth off the bridge. Each step is recorded
    /// before it is made; on error, what was done is undone before returning.
    pub fn take(
        netns: &Netns,
        bridge: &str,
        opts: TakeoverOptions,
    ) -> Result<Takeover, TakeoverError> {
        if !is_root() {
            return Err(TakeoverError::NotRoot {
                bridge: bridge.to_string(),
            });
        }
        let path = state_path(&opts.state_dir, netns, bridge);
        let nl = NlSession::open(netns)?;
        let carried = match state::read(&path)? {
            Some(earlier) => {
                if earlier.bridge != bridge {
                    return Err(TakeoverError::StateMismatch {
                        path: path.clone(),
                        expected: bridge.to_string(),
                        found: earlier.bridge,
                    });
                }
                let carried = nl.block(carry_over(&nl, &earlier, &path))?;
                tracing::info!(
                    bridge,
                    kept_off = ?carried.iter().map(|p| &p.name).collect::<Vec<_>>(),
                    "took over the ports an earlier run left cut off"
                );
                carried
            }
            None => Vec::new(),
        };
        let record = nl.block(take_bridge(&nl, bridge, &opts, &path, carried))?;
        tracing::info!(
            bridge,
            netns = netns.label(),
            gateway = record.gateway.inner,
            containers = record.ports.len(),
            state = %path.display(),
            "took the bridge"
        );
        Ok(Takeover {
            nl,
            path,
            record,
            finished: false,
        })
    }

    /// The bridge held.
    pub fn bridge(&self) -> &str {
        &self.record.bridge
    }

    /// The state file that records this takeover.
    pub fn state_path(&self) -> &Path {
        &self.path
    }

    /// The gateway pair's end enslaved to the bridge.
    pub fn gateway_outer(&self) -> &str {
        &self.record.gateway.outer
    }

    /// The gateway pair's end the dataplane's gateway port binds to.
    pub fn gateway(&self) -> TakenPort {
        TakenPort {
            name: self.record.gateway.inner.clone(),
            index: self.record.gateway.inner_index.unwrap_or(0),
            hairpin: false,
        }
    }

    /// The container veths currently held off the bridge.
    pub fn containers(&self) -> &[TakenPort] {
        &self.record.ports
    }

    /// Every interface the dataplane must attach to: the gateway first, then the containers.
    pub fn ports(&self) -> Vec<DataplanePort> {
        let gw = self.gateway();
        std::iter::once(DataplanePort {
            name: gw.name,
            index: gw.index,
            role: PortRole::Gateway,
        })
        .chain(self.record.ports.iter().map(|p| DataplanePort {
            name: p.name.clone(),
            index: p.index,
            role: PortRole::Container,
        }))
        .collect()
    }

    /// Takes a container veth that appeared on the bridge after the takeover (Docker attached
    /// a new container) off it, recording it first, and returns it for the dataplane. A veth
    /// not (yet) enslaved is recorded as it is, so a restore puts it on the bridge where
    /// Docker meant it to be. Adopting a port already held returns it unchanged.
    pub fn adopt(&mut self, ifname: &str) -> Result<TakenPort, TakeoverError> {
        let Takeover {
            nl, path, record, ..
        } = self;
        nl.block(adopt_port(nl, record, path, ifname))
    }

    /// Forgets a container veth whose container stopped (its veth is gone or going, so
    /// there is nothing to put back). Returns what was forgotten, `None` if it was not held.
    /// Touches no link: a veth that still exists stays off the bridge.
    pub fn release(&mut self, ifname: &str) -> Result<Option<TakenPort>, TakeoverError> {
        let Some(pos) = self.record.ports.iter().position(|p| p.name == ifname) else {
            return Ok(None);
        };
        let port = self.record.ports.remove(pos);
        state::write(&self.path, &self.record)?;
        Ok(Some(port))
    }

    /// Gives the bridge back: every held port still present goes back on it, the gateway
    /// pair is deleted, the state file removed. On failure the state file is kept, so
    /// [`restore_from_state`] can finish the job later.
    pub fn restore(mut self) -> Result<RestoreReport, TakeoverError> {
        self.finished = true;
        self.nl.block(undo(&self.nl, &self.record, &self.path))
    }
}

impl Drop for Takeover {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        match self.nl.block(undo(&self.nl, &self.record, &self.path)) {
            Ok(report) => tracing::info!(
                bridge = report.bridge,
                returned = ?report.returned,
                vanished = ?report.vanished,
                "gave the bridge back"
            ),
            Err(e) => tracing::warn!("{e}"),
        }
    }
}

/// Undoes a takeover recorded in `<state_dir>` for `bridge` in `netns` (after a crash, or by
/// `bridgewall restore`): `Ok(None)` when there is no record. Idempotent: running it twice,
/// or on a half-made takeover, is fine.
pub fn restore_from_state(
    netns: &Netns,
    bridge: &str,
    state_dir: &Path,
) -> Result<Option<RestoreReport>, TakeoverError> {
    let path = state_path(state_dir, netns, bridge);
    if state::read(&path)?.is_none() {
        return Ok(None);
    }
    if !is_root() {
        return Err(TakeoverError::NotRoot {
            bridge: bridge.to_string(),
        });
    }
    let nl = NlSession::open(netns)?;
    restore_recorded(&nl, bridge, &path)
}

/// The bridges of `netns` with a takeover recorded under `state_dir` (a crashed `run` may
/// have held several): what `bridgewall restore` without `--bridge` gives back.
pub fn recorded_bridges(netns: &Netns, state_dir: &Path) -> Result<Vec<String>, TakeoverError> {
    let probe = state_path(state_dir, netns, "x");
    let stem = probe
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix("-x.json"))
        .unwrap_or_default()
        .to_string();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TakeoverError::StateUnreadable {
                path: state_dir.to_path_buf(),
                source,
            });
        }
    };
    let mut bridges = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !(name.starts_with(&format!("{stem}-")) && name.ends_with(".json")) {
            continue;
        }
        if let Some(record) = state::read(&entry.path())? {
            bridges.push(record.bridge);
        }
    }
    bridges.sort();
    Ok(bridges)
}

/// Reads the record at `path` and, if there is one for `bridge`, undoes it.
fn restore_recorded(
    nl: &NlSession,
    bridge: &str,
    path: &Path,
) -> Result<Option<RestoreReport>, TakeoverError> {
    let Some(record) = state::read(path)? else {
        return Ok(None);
    };
    if record.bridge != bridge {
        return Err(TakeoverError::StateMismatch {
            path: path.to_path_buf(),
            expected: bridge.to_string(),
            found: record.bridge,
        });
    }
    nl.block(undo(nl, &record, path)).map(Some)
}

/// The bridge and the ports to take, checked before anything changes.
struct Survey {
    bridge: LinkFacts,
    mtu: u32,
    containers: Vec<LinkFacts>,
}

/// Looks at the bridge and its ports and refuses what cannot work, changing nothing.
async fn survey(
    rtnl: &Rtnl,
    bridge: &str,
    opts: &TakeoverOptions,
) -> Result<Survey, TakeoverError> {
    let netns = rtnl.netns_label().to_string();
    let facts = match rtnl.link_by_name(bridge).await {
        Ok(f) => f,
        Err(NetlinkError::NoSuchLink { .. }) => {
            return Err(TakeoverError::NoSuchBridge {
                bridge: bridge.to_string(),
                netns,
            });
        }
        Err(e) => return Err(e.into()),
    };
    if !Rtnl::is_bridge(&facts) {
        return Err(TakeoverError::NotABridge {
            name: bridge.to_string(),
            netns,
            kind: facts.kind.unwrap_or_else(|| "plain".into()),
        });
    }
    let mtu = rtnl.mtu(bridge).await?;
    check_mtu(bridge, mtu)?;
    let (outer, inner) = &opts.gateway_names;
    for name in [outer, inner] {
        match rtnl.link_by_name(name).await {
            Ok(_) => {
                return Err(TakeoverError::GatewayExists {
                    name: name.clone(),
                    netns,
                    bridge: bridge.to_string(),
                });
            }
            Err(NetlinkError::NoSuchLink { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut containers = Vec::new();
    for port in rtnl.bridge_ports(bridge).await? {
        if port.kind.as_deref() != Some("veth") {
            tracing::info!(
                bridge,
                port = port.name,
                kind = ?port.kind,
                "leaving a port that is not a container veth on the bridge"
            );
            continue;
        }
        check_mtu(&port.name, port.mtu.unwrap_or(0))?;
        containers.push(port);
    }
    Ok(Survey {
        bridge: facts,
        mtu,
        containers,
    })
}

/// Refuses an MTU native XDP on a veth cannot carry.
fn check_mtu(iface: &str, mtu: u32) -> Result<(), TakeoverError> {
    if mtu > XDP_VETH_MAX_MTU {
        return Err(TakeoverError::MtuTooLarge {
            iface: iface.to_string(),
            mtu,
            max: XDP_VETH_MAX_MTU,
        });
    }
    Ok(())
}

/// What a crashed run left, taken over without giving it back first: giving the ports back
/// (as [`restore_from_state`] does) would bridge the containers by the kernel, past the
/// policy — user rules included — for the moment until the new takeover takes them off
/// again. Instead every port the record lists that is still there and on no bridge stays
/// off and is returned, to be recorded by the new takeover from its first write; a port
/// that vanished (or whose index now names another link) is forgotten; one on a bridge
/// again is left to the survey (on this bridge it is taken as usual). The recorded gateway
/// pair is deleted. On failure nothing of the record is lost: the state file still lists
/// everything, and `bridgewall restore` can finish the job.
async fn carry_over(
    nl: &NlSession,
    record: &TakeoverRecord,
    path: &Path,
) -> Result<Vec<TakenPort>, TakeoverError> {
    let rtnl = &nl.rtnl;
    let mut carried = Vec::new();
    let mut failures = Vec::new();
    for port in &record.ports {
        match rtnl.link_by_index(port.index).await {
            Ok(f) if f.name == port.name && f.controller.is_none() => carried.push(port.clone()),
            Ok(_) => {}
            Err(e) if is_gone(&e) => {}
            Err(e) => failures.push(format!("{}: {e}", port.name)),
        }
    }
    let mut report = RestoreReport::default();
    delete_gateway(rtnl, &record.gateway, &mut report, &mut failures).await;
    if !failures.is_empty() {
        return Err(TakeoverError::RestoreIncomplete {
            bridge: record.bridge.clone(),
            path: path.to_path_buf(),
            failures,
        });
    }
    Ok(carried)
}

/// The takeover proper: survey, record, change; on error undo what the record lists.
/// `carried` are ports already off the bridge (an earlier run's, see [`carry_over`]): they
/// are in the record from its first write.
async fn take_bridge(
    nl: &NlSession,
    bridge: &str,
    opts: &TakeoverOptions,
    path: &Path,
    carried: Vec<TakenPort>,
) -> Result<TakeoverRecord, TakeoverError> {
    let survey = survey(&nl.rtnl, bridge, opts).await?;
    let (outer, inner) = opts.gateway_names.clone();
    let mut record = TakeoverRecord {
        version: STATE_VERSION,
        netns: nl.rtnl.netns_label().to_string(),
        bridge: bridge.to_string(),
        gateway: GatewayRecord {
            outer,
            inner,
            outer_index: None,
            inner_index: None,
        },
        ports: carried,
    };
    // Nothing has changed yet (the carried ports are off the bridge already, and an earlier
    // record listing them stays if this write fails): nothing to undo.
    state::write(path, &record)?;
    match install(nl, &mut record, path, &survey).await {
        Ok(()) => Ok(record),
        Err(e) => {
            if let Err(undo_err) = undo(nl, &record, path).await {
                tracing::warn!("undoing a failed takeover of {bridge}: {undo_err}");
            }
            Err(e)
        }
    }
}

/// Creates and plugs the gateway pair, then takes the containers' veths off the bridge.
async fn install(
    nl: &NlSession,
    record: &mut TakeoverRecord,
    path: &Path,
    survey: &Survey,
) -> Result<(), TakeoverError> {
    let rtnl = &nl.rtnl;
    let br = survey.bridge.index;
    if let Some(mac) = survey.bridge.mac {
        rtnl.set_mac(br, mac).await?;
    }
    let gw = record.gateway.clone();
    let peer = VethPeer {
        name: &gw.inner,
        netns: None,
        mac: None,
        mtu: Some(survey.mtu),
    };
    let outer = rtnl.add_veth(&gw.outer, peer).await?;
    let inner = rtnl.index_of(&gw.inner).await?;
    record.gateway.outer_index = Some(outer);
    record.gateway.inner_index = Some(inner);
    state::write(path, record)?;
    rtnl.set_master(outer, br).await?;
    // Hairpin on the bridge's port to the dataplane: with Docker's userland proxy off, the
    // host DNATs a container's connection to a published port and bridges it back out the
    // port it came in by (the dataplane echoes nothing twice: see the switch).
    rtnl.set_hairpin(outer, true).await?;
    rtnl.set_up(outer).await?;
    rtnl.set_up(inner).await?;
    for port in &survey.containers {
        let taken = TakenPort {
            name: port.name.clone(),
            index: port.index,
            hairpin: port.hairpin,
        };
        take_port(nl, record, path, taken, true).await?;
    }
    Ok(())
}

/// Records `port`, then (if it is on the bridge) takes it off. A port that vanished
/// meanwhile is dropped from the record. Returns whether it is held.
async fn take_port(
    nl: &NlSession,
    record: &mut TakeoverRecord,
    path: &Path,
    port: TakenPort,
    on_bridge: bool,
) -> Result<bool, TakeoverError> {
    // A name reused by a newer veth replaces the old entry: the old veth is gone.
    record.ports.retain(|p| p.name != port.name);
    record.ports.push(port.clone());
    state::write(path, record)?;
    if !on_bridge {
        return Ok(true);
    }
    match nl.rtnl.set_nomaster(port.index).await {
        Ok(()) => Ok(true),
        Err(e) if is_gone(&e) => {
            record.ports.retain(|p| p.index != port.index);
            state::write(path, record)?;
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// [`Takeover::adopt`] on the private runtime.
async fn adopt_port(
    nl: &NlSession,
    record: &mut TakeoverRecord,
    path: &Path,
    ifname: &str,
) -> Result<TakenPort, TakeoverError> {
    let rtnl = &nl.rtnl;
    let netns = rtnl.netns_label().to_string();
    let facts = match rtnl.link_by_name(ifname).await {
        Ok(f) => f,
        Err(e) if is_gone(&e) => {
            return Err(TakeoverError::NoSuchInterface {
                ifname: ifname.to_string(),
                netns,
                bridge: record.bridge.clone(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(held) = record.ports.iter().find(|p| p.index == facts.index) {
        return Ok(held.clone());
    }
    let bridge = match rtnl.link_by_name(&record.bridge).await {
        Ok(b) => b,
        Err(e) if is_gone(&e) => {
            return Err(TakeoverError::NoSuchBridge {
                bridge: record.bridge.clone(),
                netns,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let own = [&record.gateway.outer, &record.gateway.inner];
    if let Some(master) = facts.controller.filter(|&m| m != bridge.index)
        && !own.contains(&&facts.name)
    {
        return Err(TakeoverError::ForeignMaster {
            ifname: ifname.to_string(),
            bridge: record.bridge.clone(),
            master,
        });
    }
    if own.contains(&&facts.name) || facts.kind.as_deref() != Some("veth") {
        return Err(TakeoverError::NotAContainerPort {
            ifname: ifname.to_string(),
            bridge: record.bridge.clone(),
        });
    }
    check_mtu(ifname, facts.mtu.unwrap_or(0))?;
    let port = TakenPort {
        name: facts.name.clone(),
        index: facts.index,
        hairpin: facts.hairpin,
    };
    let on_bridge = facts.controller == Some(bridge.index);
    if take_port(nl, record, path, port.clone(), on_bridge).await? {
        Ok(port)
    } else {
        Err(TakeoverError::NoSuchInterface {
            ifname: ifname.to_string(),
            netns,
            bridge: record.bridge.clone(),
        })
    }
}

/// Puts back what `record` lists: ports still present onto the bridge, the gateway pair
/// deleted, then the state file removed. Each step tolerates what is already undone; if a
/// step fails the others still run and the state file is kept.
async fn undo(
    nl: &NlSession,
    record: &TakeoverRecord,
    path: &Path,
) -> Result<RestoreReport, TakeoverError> {
    let rtnl = &nl.rtnl;
    let mut report = RestoreReport {
        bridge: record.bridge.clone(),
        ..RestoreReport::default()
    };
    let mut failures = Vec::new();
    let bridge = match rtnl.link_by_name(&record.bridge).await {
        Ok(b) if Rtnl::is_bridge(&b) => Some(b.index),
        Ok(_) => {
            failures.push(format!("{} is no longer a bridge", record.bridge));
            None
        }
        Err(e) if is_gone(&e) => None,
        Err(e) => {
            failures.push(e.to_string());
            None
        }
    };
    for port in &record.ports {
        let facts = match rtnl.link_by_index(port.index).await {
            Ok(f) if f.name == port.name => f,
            // Gone, or the index now belongs to another link: the veth we took is gone.
            Ok(_) => {
                report.vanished.push(port.name.clone());
                continue;
            }
            Err(e) if is_gone(&e) => {
                report.vanished.push(port.name.clone());
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: {e}", port.name));
                continue;
            }
        };
        let Some(br) = bridge else {
            report
                .left
                .push(format!("{} (bridge {} is gone)", port.name, record.bridge));
            continue;
        };
        match facts.controller {
            Some(m) if m == br => report.returned.push(port.name.clone()),
            Some(m) => report
                .left
                .push(format!("{} (now enslaved to index {m})", port.name)),
            None => match rtnl.set_master(port.index, br).await {
                Ok(()) => {
                    if port.hairpin
                        && let Err(e) = rtnl.set_hairpin(port.index, true).await
                    {
                        failures.push(format!("{} (hairpin mode): {e}", port.name));
                    }
                    report.returned.push(port.name.clone());
                }
                Err(e) if is_gone(&e) => report.vanished.push(port.name.clone()),
                Err(e) => failures.push(format!("{}: {e}", port.name)),
            },
        }
    }
    delete_gateway(rtnl, &record.gateway, &mut report, &mut failures).await;
    if !failures.is_empty() {
        return Err(TakeoverError::RestoreIncomplete {
            bridge: record.bridge.clone(),
            path: path.to_path_buf(),
            failures,
        });
    }
    state::remove(path)?;
    Ok(report)
}

/// Deletes the recorded gateway pair, if it is still the one bridgewall made.
async fn delete_gateway(
    rtnl: &Rtnl,
    gw: &GatewayRecord,
    report: &mut RestoreReport,
    failures: &mut Vec<String>,
) {
    for (name, index) in [(&gw.outer, gw.outer_index), (&gw.inner, gw.inner_index)] {
        match rtnl.link_by_name(name).await {
            // Ours: a veth, with the index recorded (or none recorded if the crash came
            // between creating it and recording it).
            Ok(f) if f.kind.as_deref() == Some("veth") && index.is_none_or(|i| i == f.index) => {
                match rtnl.delete_link(f.index).await {
                    Ok(()) => report.gateway_removed = true,
                    Err(e) if is_gone(&e) => {}
                    Err(e) => failures.push(format!("deleting {name}: {e}")),
                }
            }
            Ok(_) => report
                .left
                .push(format!("{name} (not the gateway veth bridgewall made)")),
            Err(e) if is_gone(&e) => {}
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_fit_and_tell_docker_bridges_apart() {
        let short = TakeoverOptions::for_bridge("docker0");
        assert_eq!(
            short.gateway_names,
            ("bwg0-docker0".into(), "bwg1-docker0".into())
        );
        let a = TakeoverOptions::for_bridge("br-0123456789ab");
        let b = TakeoverOptions::for_bridge("br-0123456789ac");
        assert_ne!(a.gateway_names, b.gateway_names);
        for name in [&a.gateway_names.0, &a.gateway_names.1, &b.gateway_names.0] {
            assert!(name.len() <= 15, "{name}");
            assert!(name.starts_with("bwg"), "{name}");
        }
        assert_eq!(a, TakeoverOptions::for_bridge("br-0123456789ab"), "stable");
    }
}
