//! Taking a Linux bridge and giving it back, on a bridge with three containers in network
//! namespaces these tests create (and always remove): ports move off and back on, the
//! gateway pair comes and goes, the state file lets a crashed takeover be undone, and the
//! containers reach each other before the takeover and after the restore. Needs root.
#[path = "support/takeover_ns.rs"]
mod takeover_ns;

use std::collections::BTreeSet;

use controller::takeover::{
    PortRole, Takeover, TakeoverError, TakeoverOptions, XDP_VETH_MAX_MTU, restore_from_state,
    state_path,
};
use takeover_ns::{GATEWAY_IP, Topo, container_ip, ip, still_bound};

fn opts(topo: &Topo) -> TakeoverOptions {
    TakeoverOptions {
        state_dir: topo.state_dir.0.clone(),
        ..TakeoverOptions::default()
    }
}

/// The bridge as it is before a takeover and after a restore: containers enslaved and up,
/// no gateway pair, no state file, everyone reachable.
fn assert_pristine(topo: &Topo) {
    for c in &topo.containers {
        assert_eq!(
            topo.master_of(&c.host_if).as_deref(),
            Some("br0"),
            "{} on br0",
            c.host_if
        );
        assert!(topo.is_up(&c.host_if), "{} up", c.host_if);
    }
    let links = topo.links();
    assert!(
        !links.contains_key("bwgw0") && !links.contains_key("bwgw1"),
        "no gateway pair"
    );
    let state = state_path(&topo.state_dir.0, &topo.netns, "br0");
    assert!(!state.exists(), "no state file at {}", state.display());
    assert!(topo.reaches(1, container_ip(2)), "c1 -> c2 over br0");
    assert!(topo.reaches(2, container_ip(1)), "c2 -> c1 over br0");
    assert!(topo.reaches(1, GATEWAY_IP), "c1 -> gateway");
}

/// The bridge as taken: containers off it (still up), the gateway pair's outer end on it,
/// the state file listing exactly `ports`, containers cut off from each other.
fn assert_taken(topo: &Topo, tk: &Takeover, ports: &[&str]) {
    for p in ports {
        assert_eq!(topo.master_of(p), None, "{p} off the bridge");
        assert!(topo.is_up(p), "{p} kept up");
    }
    assert_eq!(topo.master_of("bwgw0").as_deref(), Some("br0"));
    assert_eq!(topo.master_of("bwgw1"), None);
    assert!(topo.is_up("bwgw0") && topo.is_up("bwgw1"));
    let links = topo.links();
    assert_eq!(
        links["bwgw0"]["mtu"], links["br0"]["mtu"],
        "gateway MTU follows the bridge"
    );
    assert_eq!(links["bwgw1"]["mtu"], links["br0"]["mtu"]);
    let text = std::fs::read_to_string(tk.state_path()).unwrap();
    let state: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["bridge"], "br0");
    let recorded: BTreeSet<&str> = state["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(recorded, ports.iter().copied().collect());
    assert!(
        !topo.reaches(1, container_ip(2)),
        "taken ports carry nothing without a dataplane"
    );
}

#[test]
fn root_netns_takeover_take_and_restore() {
    let topo = Topo::build(3);
    let names = topo.namespace_names();
    assert_pristine(&topo);
    let mac_before = topo.links()["br0"]["address"].clone();

    let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
    assert_eq!(tk.bridge(), "br0");
    assert_eq!(
        tk.state_path(),
        topo.state_dir.0.join(format!("{}-br0.json", topo.name)),
        "state file named after namespace and bridge"
    );
    assert_taken(&topo, &tk, &["vethc1", "vethc2", "vethc3"]);
    let links = topo.links();
    assert_eq!(links["br0"]["address"], mac_before, "bridge MAC pinned");
    // What the dataplane attaches to: the gateway's inner end, then each container veth,
    // with the indexes the kernel gave them.
    let ports = tk.ports();
    assert_eq!(ports.len(), 4);
    assert_eq!(
        (ports[0].name.as_str(), ports[0].role),
        ("bwgw1", PortRole::Gateway)
    );
    for p in &ports {
        assert_eq!(
            u64::from(p.index),
            links[&p.name]["ifindex"].as_u64().unwrap(),
            "{}",
            p.name
        );
    }
    let containers: BTreeSet<&str> = ports[1..]
        .iter()
        .inspect(|p| assert_eq!(p.role, PortRole::Container))
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        containers,
        ["vethc1", "vethc2", "vethc3"].into_iter().collect()
    );

    let report = tk.restore().unwrap();
    let returned: BTreeSet<&str> = report.returned.iter().map(String::as_str).collect();
    assert_eq!(
        returned,
        ["vethc1", "vethc2", "vethc3"].into_iter().collect()
    );
    assert!(
        report.vanished.is_empty() && report.left.is_empty(),
        "{report:?}"
    );
    assert!(report.gateway_removed);
    assert_pristine(&topo);
    assert_eq!(topo.links()["br0"]["address"], mac_before);

    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}

#[test]
fn root_netns_takeover_drop_restores() {
    let topo = Topo::build(3);
    let names = topo.namespace_names();
    {
        let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
        assert_taken(&topo, &tk, &["vethc1", "vethc2", "vethc3"]);
    }
    assert_pristine(&topo);
    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}

#[test]
fn root_netns_takeover_crash_then_restore_from_state() {
    let mut topo = Topo::build(3);
    let names = topo.namespace_names();
    let state_dir = topo.state_dir.0.clone();
    assert_eq!(
        restore_from_state(&topo.netns, "br0", &state_dir).unwrap(),
        None,
        "nothing to do"
    );

    // kill -9: no restore runs, the ports stay off the bridge.
    let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
    assert_taken(&topo, &tk, &["vethc1", "vethc2", "vethc3"]);
    std::mem::forget(tk);
    assert_eq!(topo.master_of("vethc1"), None);
    // Meanwhile container 3 stopped: its veth is gone.
    let c3 = topo.containers.pop().unwrap();
    ip(&["-n", &topo.name, "link", "del", "vethc3"]);
    drop(c3);

    let report = restore_from_state(&topo.netns, "br0", &state_dir)
        .unwrap()
        .unwrap();
    let returned: BTreeSet<&str> = report.returned.iter().map(String::as_str).collect();
    assert_eq!(returned, ["vethc1", "vethc2"].into_iter().collect());
    assert_eq!(report.vanished, vec!["vethc3".to_string()]);
    assert!(report.gateway_removed);
    topo.add_container(3);
    assert_pristine(&topo);
    assert_eq!(
        restore_from_state(&topo.netns, "br0", &state_dir).unwrap(),
        None,
        "idempotent"
    );

    // Crash again; this time the next start recovers by itself before taking the bridge.
    let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
    std::mem::forget(tk);
    let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
    assert_taken(&topo, &tk, &["vethc1", "vethc2", "vethc3"]);
    tk.restore().unwrap();
    assert_pristine(&topo);

    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}

#[test]
fn root_netns_takeover_half_made_state_is_undone() {
    // A crash between writing the record and finishing the gateway pair: the record names
    // the pair without indexes and only the first port; the pair exists, the port is off.
    let topo = Topo::build(3);
    let names = topo.namespace_names();
    let path = state_path(&topo.state_dir.0, &topo.netns, "br0");
    let idx = topo.links()["vethc1"]["ifindex"].as_u64().unwrap();
    std::fs::create_dir_all(&topo.state_dir.0).unwrap();
    let record = serde_json::json!({
        "version": 1, "netns": topo.name, "bridge": "br0",
        "gateway": {"outer": "bwgw0", "inner": "bwgw1", "outer_index": null, "inner_index": null},
        "ports": [{"name": "vethc1", "index": idx}],
    });
    std::fs::write(&path, record.to_string()).unwrap();
    ip(&[
        "-n", &topo.name, "link", "add", "bwgw0", "type", "veth", "peer", "name", "bwgw1",
    ]);
    ip(&["-n", &topo.name, "link", "set", "vethc1", "nomaster"]);

    let report = restore_from_state(&topo.netns, "br0", &topo.state_dir.0)
        .unwrap()
        .unwrap();
    assert_eq!(report.returned, vec!["vethc1".to_string()]);
    assert!(report.gateway_removed);
    assert_pristine(&topo);

    // A corrupt record is reported with its path, and left alone.
    std::fs::write(&path, "{ half").unwrap();
    let err = restore_from_state(&topo.netns, "br0", &topo.state_dir.0).unwrap_err();
    assert!(matches!(err, TakeoverError::StateCorrupt { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(path.exists());
    let err = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap_err();
    assert!(matches!(err, TakeoverError::StateCorrupt { .. }), "{err}");
    std::fs::remove_file(&path).unwrap();

    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}

#[test]
fn root_netns_takeover_adopt_and_release() {
    let mut topo = Topo::build(3);
    let names_before = topo.namespace_names();
    let mut tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();

    // A container started later lands on the bridge: adopted, it leaves it and is recorded.
    topo.add_container(4);
    assert_eq!(topo.master_of("vethc4").as_deref(), Some("br0"));
    let port = tk.adopt("vethc4").unwrap();
    assert_eq!(port.name, "vethc4");
    assert_eq!(
        u64::from(port.index),
        topo.links()["vethc4"]["ifindex"].as_u64().unwrap()
    );
    assert_eq!(
        tk.adopt("vethc4").unwrap(),
        port,
        "adopting twice is a no-op"
    );
    assert_taken(&topo, &tk, &["vethc1", "vethc2", "vethc3", "vethc4"]);
    assert!(
        tk.ports()
            .iter()
            .any(|p| p.name == "vethc4" && p.role == PortRole::Container)
    );

    // What cannot be adopted.
    let err = tk.adopt("nosuch0").unwrap_err();
    assert!(
        matches!(err, TakeoverError::NoSuchInterface { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("nosuch0"), "{err}");
    let err = tk.adopt("bwgw1").unwrap_err();
    assert!(
        matches!(err, TakeoverError::NotAContainerPort { .. }),
        "{err}"
    );

    // Container 2 dies: its veth goes, the takeover forgets it.
    ip(&["-n", &topo.name, "link", "del", "vethc2"]);
    assert_eq!(
        tk.release("vethc2").unwrap().map(|p| p.name),
        Some("vethc2".into())
    );
    assert_eq!(tk.release("vethc2").unwrap(), None, "released twice");
    assert_taken(&topo, &tk, &["vethc1", "vethc3", "vethc4"]);

    let report = tk.restore().unwrap();
    let returned: BTreeSet<&str> = report.returned.iter().map(String::as_str).collect();
    assert_eq!(
        returned,
        ["vethc1", "vethc3", "vethc4"].into_iter().collect()
    );
    assert!(report.vanished.is_empty(), "{report:?}");
    for p in ["vethc1", "vethc3", "vethc4"] {
        assert_eq!(topo.master_of(p).as_deref(), Some("br0"), "{p}");
    }
    assert!(topo.reaches(4, container_ip(1)), "c4 -> c1 after restore");
    assert!(topo.reaches(1, container_ip(3)), "c1 -> c3 after restore");

    let mut names = names_before;
    names.extend(topo.namespace_names());
    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}

#[test]
fn root_netns_takeover_refuses_with_clear_errors_and_changes_nothing() {
    let topo = Topo::build(2);
    let names = topo.namespace_names();

    let err = Takeover::take(&topo.netns, "br9", opts(&topo)).unwrap_err();
    assert!(matches!(err, TakeoverError::NoSuchBridge { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("no such bridge br9 in namespace {}", topo.name)),
        "{err}"
    );
    let err = Takeover::take(&topo.netns, "vethc1", opts(&topo)).unwrap_err();
    assert!(matches!(err, TakeoverError::NotABridge { .. }), "{err}");
    assert!(err.to_string().contains("not a bridge"), "{err}");

    // A gateway name already in use: someone else holds the bridge, or a leftover.
    ip(&["-n", &topo.name, "link", "add", "bwgw1", "type", "bridge"]);
    let err = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap_err();
    assert!(matches!(err, TakeoverError::GatewayExists { .. }), "{err}");
    ip(&["-n", &topo.name, "link", "del", "bwgw1"]);

    // A container veth with an MTU native XDP on veth cannot carry.
    ip(&["-n", &topo.name, "link", "set", "vethc2", "mtu", "9000"]);
    let err = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap_err();
    match &err {
        TakeoverError::MtuTooLarge { iface, mtu, max } => {
            assert_eq!(
                (iface.as_str(), *mtu, *max),
                ("vethc2", 9000, XDP_VETH_MAX_MTU)
            );
        }
        other => panic!("expected MtuTooLarge, got {other}"),
    }
    assert!(err.to_string().contains("3506"), "{err}");
    ip(&["-n", &topo.name, "link", "set", "vethc2", "mtu", "1500"]);
    // Nothing of the refused takeovers is left.
    assert_pristine(&topo);

    // The gateway pair takes a smaller bridge MTU.
    ip(&["-n", &topo.name, "link", "set", "br0", "mtu", "1400"]);
    let tk = Takeover::take(&topo.netns, "br0", opts(&topo)).unwrap();
    assert_eq!(topo.links()["bwgw1"]["mtu"], 1400);
    assert_taken(&topo, &tk, &["vethc1", "vethc2"]);
    tk.restore().unwrap();

    drop(topo);
    assert_eq!(still_bound(&names), Vec::<String>::new());
}
