//! The Docker-free lab with the kernel bridge as the switch (no bridgewall dataplane yet):
//! it builds, its members reach each other the way the topology says, it reports the same
//! state shape Docker tracking does, and it leaves nothing behind. Needs root (namespaces).
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use controller::lab::{Lab, LabError, LabSpec, Outcome, Proto, WALKTHROUGH_TOML};

/// Tests here check "no lab namespace of this process is left", so they run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const T: Duration = Duration::from_millis(1500);

fn our_namespaces() -> Vec<String> {
    let prefix = format!("bwlab-{}-", std::process::id());
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn ip_link_names(netns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show"])
        .output()
        .expect("ip runs");
    assert!(out.status.success(), "ip -n {netns} link: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn body(o: &Outcome) -> &str {
    match o {
        Outcome::Connected(s) => s.as_str(),
        other => panic!("expected a connection, got {other:?}"),
    }
}

#[test]
fn root_netns_lab_walkthrough_connectivity_state_and_teardown() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let spec = LabSpec::from_toml(WALKTHROUGH_TOML, "walkthrough").unwrap();
    let lab = Lab::build(spec).unwrap();
    let names = lab.netns_names();
    assert_eq!(names.len(), 6, "host + 3 containers + 2 outside hosts");
    for n in &names {
        assert!(
            our_namespaces().contains(n),
            "{n} is bound under /run/netns"
        );
    }

    // Container to container over the kernel bridge, by name and by link alias.
    let o = lab
        .connect("nginx_server1", "nginx_server2", Proto::Tcp, 80, T)
        .unwrap();
    assert_eq!(body(&o), "hello from nginx_server2\n");
    let o = lab.connect("client3", "ng2", Proto::Tcp, 80, T).unwrap();
    assert_eq!(body(&o), "hello from nginx_server2\n");
    let o = lab.connect("client3", "ng2", Proto::Udp, 7, T).unwrap();
    assert_eq!(body(&o), "probe from client3");
    // A port nobody listens on is refused, an address nobody has times out.
    assert_eq!(
        lab.connect("client3", "nginx_server1", Proto::Tcp, 81, T)
            .unwrap(),
        Outcome::Refused
    );
    assert_eq!(
        lab.connect(
            "client3",
            "172.17.0.99",
            Proto::Tcp,
            80,
            Duration::from_millis(500)
        )
        .unwrap(),
        Outcome::TimedOut
    );

    // Outside hosts: the published port through the proxy, and routed to the container.
    for ext in ["outside1", "outside2"] {
        let o = lab.connect(ext, "host", Proto::Tcp, 8080, T).unwrap();
        assert_eq!(
            body(&o),
            "hello from nginx_server1\n",
            "{ext} via -p 8080:80"
        );
        let o = lab
            .connect(ext, "nginx_server2", Proto::Tcp, 80, T)
            .unwrap();
        assert_eq!(body(&o), "hello from nginx_server2\n", "{ext} routed");
    }
    // Nothing listens on the host's 8081.
    assert_eq!(
        lab.connect("outside1", "host", Proto::Tcp, 8081, T)
            .unwrap(),
        Outcome::Refused
    );
    // The gateway host reaches a container's unpublished port; a container reaches the host.
    let o = lab
        .connect("host", "nginx_server2", Proto::Tcp, 7, T)
        .unwrap();
    assert!(body(&o).starts_with("GET / HTTP/1.0"), "echo: {o:?}");
    assert!(
        lab.connect("client3", "host", Proto::Tcp, 8080, T)
            .unwrap()
            .passed()
    );

    // The state has Docker tracking's shape, with veths that exist where it says.
    let state = lab.state();
    assert_eq!(state.bridge, "docker0");
    assert!(!state.network.icc);
    assert_eq!(
        state.network.gateway_ips,
        vec!["172.17.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    let host_ns = lab.host_netns().unwrap().label().to_string();
    let host_links = ip_link_names(&host_ns);
    let mut ports = Vec::new();
    for (info, att) in state.network.containers.iter().zip(&state.attachments) {
        assert_eq!(info.name, att.container);
        assert_eq!(info.port, att.port);
        assert!(
            host_links.contains(&att.host_ifname),
            "{} in {host_links:?}",
            att.host_ifname
        );
        ports.push(att.port);
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 3, "distinct port ids");
    let s1 = state
        .network
        .containers
        .iter()
        .find(|c| c.name == "nginx_server1")
        .unwrap();
    assert_eq!(s1.mac, [0x02, 0x42, 172, 17, 0, 2]);
    assert_eq!(s1.published.len(), 1);
    let c3 = lab
        .containers()
        .iter()
        .find(|c| c.name == "client3")
        .unwrap();
    assert!(ip_link_names(c3.netns.label()).contains(&"eth0".to_string()));
    assert_eq!(state.ports().len(), 3);

    drop(lab);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    for n in &names {
        assert!(!listed.contains(n.as_str()), "{n} still listed");
    }
}

#[test]
fn root_netns_lab_failed_build_removes_what_it_made() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // Two responders on one port: the second bind fails after every namespace exists.
    let text = r#"
[bridge]
subnet = "10.77.0.0/24"
gateway = "10.77.0.1"
[[container]]
name = "a"
ip = "10.77.0.2"
responder = [{ kind = "http", port = 80 }, { kind = "tcp", port = 80 }]
[[outside]]
name = "x"
ip = "198.18.9.2/24"
host_ip = "198.18.9.1"
"#;
    let spec = LabSpec::from_toml(text, "inline").unwrap();
    let err = Lab::build(spec).unwrap_err();
    assert!(matches!(err, LabError::Io { .. }), "{err}");
    assert!(err.to_string().contains("container a"), "{err}");
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
}

#[test]
fn root_netns_lab_explicit_teardown_reports_success() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let text = r#"
[bridge]
name = "br-lab"
subnet = "10.78.0.0/24"
gateway = "10.78.0.1"
icc = true
[[container]]
name = "solo"
ip = "10.78.0.2"
responder = [{ kind = "udp", port = 5353 }]
"#;
    let lab = Lab::build(LabSpec::from_toml(text, "inline").unwrap()).unwrap();
    let o = lab.connect("host", "solo", Proto::Udp, 5353, T).unwrap();
    assert_eq!(body(&o), "probe from host");
    assert_eq!(lab.state().bridge, "br-lab");
    lab.teardown().unwrap();
    assert!(our_namespaces().is_empty());
}

#[test]
fn root_netns_lab_cli_runs_the_embedded_walkthrough_and_cleans_up() {
    // Serialised with the others: the dataplane's workers compete for the 2 cores with the
    // other labs' probes and their timeouts.
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // The takeover's state file goes to a directory of our own, not /run/bridgewall.
    let state_dir = std::env::temp_dir().join(format!("bw-labcli-{}", std::process::id()));
    std::fs::create_dir_all(&state_dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(["lab", "--probe-timeout-ms", "800", "--state-dir"])
        .arg(&state_dir)
        .output()
        .unwrap();
    let leftover = std::fs::read_dir(&state_dir).unwrap().count();
    std::fs::remove_dir_all(&state_dir).unwrap();
    assert_eq!(leftover, 0, "the state file is removed after the restore");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "nginx_server1",
        "client3",
        "expected",
        "decided by ICC rule",
        "decided by USER rule",
        "12/12 steps as expected",
        "agree on every step",
        "dataplane stopped; ports back on docker0",
        "lab removed (6 namespaces)",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let listed = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .to_string();
    let lab_line = text
        .lines()
        .find(|l| l.starts_with("namespaces: "))
        .unwrap();
    for ns in lab_line.trim_start_matches("namespaces: ").split(", ") {
        assert!(!listed.contains(ns), "{ns} left behind");
    }
}
