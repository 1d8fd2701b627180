//! What applying a snapshot must do, decided without touching anything: which bridges to
//! take and give back, which container interfaces to detach, cut off and attach. A pure
//! function of what is attached now and what the snapshot says, so the controller's
//! decisions are tested without root, interfaces or an engine; [`super::BridgeRuntime`]
//! carries the plan out in the order [`Plan`] documents.
use std::collections::{BTreeMap, BTreeSet};

use crate::state::{Attachment, HostState};

/// The steps from the running state to a snapshot, in the order they are carried out:
/// 1. `detach` (their ports leave the dataplane, their veths go back to their bridge if it
///    is still held), 2. `take` (a new network's bridge is taken and its gateway port
///    attached), 3. `cut_off` (off their bridge, no port), 4. `attach` (off their bridge and
///    onto the dataplane — only once the new policy built, else cut off like `cut_off`),
///    5. the new policy swapped in, 6. `give_back` (a removed network's gateway port leaves
///    the dataplane and its bridge is restored).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Attached interfaces that are gone from the snapshot or changed (a changed one is
    /// detached, then attached again with what it is now).
    pub detach: Vec<Attachment>,
    /// Bridges of networks new in the snapshot (not held yet).
    pub take: Vec<String>,
    /// Interfaces without a dataplane port (beyond `--max-containers`).
    pub cut_off: Vec<Attachment>,
    /// Interfaces to attach: new, or changed.
    pub attach: Vec<Attachment>,
    /// Bridges held whose network is no longer in the snapshot.
    pub give_back: Vec<String>,
}

impl Plan {
    /// True when the snapshot changes nothing about interfaces and bridges (the policy may
    /// still change, e.g. a published port).
    pub fn is_empty(&self) -> bool {
        self.detach.is_empty()
            && self.take.is_empty()
            && self.cut_off.is_empty()
            && self.attach.is_empty()
            && self.give_back.is_empty()
    }
}

/// The plan from `attached` (by host interface name) and the bridges `held` to `new`.
pub fn plan(
    attached: &BTreeMap<String, Attachment>,
    held: &BTreeSet<String>,
    new: &HostState,
) -> Plan {
    let wanted_ifaces: BTreeMap<&str, &Attachment> = new
        .attachments()
        .map(|a| (a.host_ifname.as_str(), a))
        .collect();
    let detach: Vec<Attachment> = attached
        .values()
        .filter(|a| wanted_ifaces.get(a.host_ifname.as_str()) != Some(a))
        .cloned()
        .collect();
    let wanted: BTreeSet<&str> = new.networks.iter().map(|n| n.bridge()).collect();
    let take = new
        .networks
        .iter()
        .map(|n| n.bridge().to_string())
        .filter(|b| !held.contains(b))
        .collect();
    let give_back = held
        .iter()
        .filter(|b| !wanted.contains(b.as_str()))
        .cloned()
        .collect();
    let attach = new
        .attachments()
        .filter(|a| attached.get(&a.host_ifname) != Some(*a))
        .cloned()
        .collect();
    Plan {
        detach,
        take,
        cut_off: new.unplaced().cloned().collect(),
        attach,
        give_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{BridgeState, UNPLACED};
    use rules_wasm::docker::BridgeNetwork;

    fn att(container: &str, network: &str, ifname: &str, port: u16) -> Attachment {
        Attachment {
            container: container.into(),
            id: container.into(),
            network: network.into(),
            host_ifname: ifname.into(),
            host_ifindex: u32::from(port) + 100,
            port,
        }
    }

    fn net(name: &str, bridge: &str, gw: u16, attachments: Vec<Attachment>) -> BridgeState {
        BridgeState {
            network: BridgeNetwork {
                name: name.into(),
                bridge: bridge.into(),
                gateway_port: gw,
                ..BridgeNetwork::default()
            },
            attachments,
            unplaced: Vec::new(),
        }
    }

    fn attached(list: &[Attachment]) -> BTreeMap<String, Attachment> {
        list.iter()
            .map(|a| (a.host_ifname.clone(), a.clone()))
            .collect()
    }

    fn held(bridges: &[&str]) -> BTreeSet<String> {
        bridges.iter().map(|b| b.to_string()).collect()
    }

    #[test]
    fn first_snapshot_takes_every_bridge_and_attaches_every_interface() {
        let web = att("web", "bridge", "veth1", 1);
        let api = att("api", "app", "veth2", 3);
        let api_b = att("api", "bridge", "veth3", 4);
        let state = HostState {
            networks: vec![
                net("app", "br-app", 2, vec![api.clone()]),
                net("bridge", "docker0", 0, vec![api_b.clone(), web.clone()]),
            ],
        };
        let p = plan(&BTreeMap::new(), &BTreeSet::new(), &state);
        assert_eq!(p.take, vec!["br-app", "docker0"]);
        assert_eq!(p.attach, vec![api, api_b, web]);
        assert!(p.detach.is_empty() && p.give_back.is_empty() && p.cut_off.is_empty());
    }

    #[test]
    fn the_same_snapshot_again_is_an_empty_plan() {
        let web = att("web", "bridge", "veth1", 1);
        let state = HostState::single(net("bridge", "docker0", 0, vec![web.clone()]));
        let p = plan(&attached(&[web]), &held(&["docker0"]), &state);
        assert!(p.is_empty(), "{p:?}");
    }

    #[test]
    fn a_disconnect_detaches_one_interface_of_a_multi_homed_container() {
        let api_app = att("api", "app", "veth2", 3);
        let api_b = att("api", "bridge", "veth3", 4);
        let now = attached(&[api_app.clone(), api_b.clone()]);
        let state = HostState {
            networks: vec![
                net("app", "br-app", 2, vec![api_app]),
                net("bridge", "docker0", 0, vec![]),
            ],
        };
        let p = plan(&now, &held(&["br-app", "docker0"]), &state);
        assert_eq!(p.detach, vec![api_b]);
        assert!(p.attach.is_empty() && p.take.is_empty() && p.give_back.is_empty());
    }

    #[test]
    fn a_changed_interface_is_detached_and_attached_again() {
        let old = att("web", "bridge", "veth1", 1);
        let mut moved = old.clone();
        moved.port = 7;
        let state = HostState::single(net("bridge", "docker0", 0, vec![moved.clone()]));
        let p = plan(
            &attached(std::slice::from_ref(&old)),
            &held(&["docker0"]),
            &state,
        );
        assert_eq!(p.detach, vec![old]);
        assert_eq!(p.attach, vec![moved]);
    }

    #[test]
    fn a_new_network_is_taken_and_a_removed_one_given_back() {
        let web = att("web", "bridge", "veth1", 1);
        let db = att("db", "data", "veth9", 5);
        let state = HostState {
            networks: vec![
                net("bridge", "docker0", 0, vec![web.clone()]),
                net("data", "br-data", 4, vec![db.clone()]),
            ],
        };
        let p = plan(&attached(&[web]), &held(&["docker0", "br-old"]), &state);
        assert_eq!(p.take, vec!["br-data"]);
        assert_eq!(p.give_back, vec!["br-old"]);
        assert_eq!(p.attach, vec![db]);
        assert!(p.detach.is_empty());
    }

    #[test]
    fn unplaced_interfaces_are_cut_off_not_attached() {
        let mut waiting = att("late", "bridge", "veth5", UNPLACED);
        waiting.port = UNPLACED;
        let mut n = net("bridge", "docker0", 0, vec![]);
        n.unplaced.push(waiting.clone());
        let p = plan(&BTreeMap::new(), &held(&["docker0"]), &HostState::single(n));
        assert_eq!(p.cut_off, vec![waiting]);
        assert!(p.attach.is_empty());
    }
}
