//! The Docker-free lab: with the kernel bridges as the switch (no bridgewall dataplane) it
//! builds, its members reach each other the way the topology says (one bridge per network,
//! a container on two networks with an interface on each), it reports the same state shape
//! Docker tracking does, and it leaves nothing behind; then both walkthroughs (the seed's
//! and the networks one) run end to end with the dataplane, in process (every step as
//! expected, each named when not) and through the `bridgewall lab` binary. Needs root
//! (namespaces).
mod support;

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use controller::commands::lab::run_explained;
use controller::lab::{Lab, LabError, LabSpec, NETWORKS_TOML, Outcome, Proto, WALKTHROUGH_TOML};
use controller::runtime::policy::UserRules;
use controller::runtime::{BridgeRuntime, Datapath, RuntimeOptions};
use controller::state::{DEFAULT_MAX_NETWORKS, DEFAULT_MAX_PORTS};
use support::netns::{TempDir, xdp_links};

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
    assert_eq!(state.networks.len(), 1);
    let net = &state.networks[0];
    assert_eq!(
        (net.network.name.as_str(), net.bridge()),
        ("bridge", "docker0")
    );
    assert!(!net.network.icc);
    assert_eq!(
        net.network.gateway_ips,
        vec!["172.17.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        *state,
        {
            let mut planned = lab.spec().host_state();
            for (a, b) in planned.networks[0]
                .attachments
                .iter_mut()
                .zip(&net.attachments)
            {
                a.host_ifindex = b.host_ifindex;
            }
            planned
        },
        "the lab's state is its spec's host_state, with the interface indexes"
    );
    let host_ns = lab.host_netns().unwrap().label().to_string();
    let host_links = ip_link_names(&host_ns);
    let mut ports = Vec::new();
    for (info, att) in net.network.containers.iter().zip(&net.attachments) {
        assert_eq!(info.name, att.container);
        assert_eq!(info.port, att.port);
        assert_eq!(att.network, "bridge");
        assert_ne!(att.host_ifindex, 0);
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
    let s1 = net
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
    assert_eq!(lab.state().networks[0].bridge(), "br-lab");
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

/// Names of the links enslaved to `bridge` in `netns`.
fn bridge_ports(netns: &str, bridge: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", "master", bridge])
        .output()
        .expect("ip runs");
    assert!(
        out.status.success(),
        "ip -n {netns} link show master {bridge}: {out:?}"
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

fn ip_text(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", netns])
        .args(args)
        .output()
        .expect("ip runs");
    assert!(out.status.success(), "ip -n {netns} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn root_netns_lab_networks_bridges_interfaces_and_routes() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let spec = LabSpec::from_toml(NETWORKS_TOML, "networks").unwrap();
    let lab = Lab::build(spec).unwrap();
    let names = lab.netns_names();
    assert_eq!(names.len(), 8, "host + 5 containers + 2 outside hosts");
    let host = lab.host_netns().unwrap().label().to_string();

    // The state: three networks, sorted by name, each with its own gateway port; api on two.
    let state = lab.state();
    let nets: Vec<(&str, &str, u16, bool, bool)> = state
        .networks
        .iter()
        .map(|n| {
            (
                n.network.name.as_str(),
                n.bridge(),
                n.network.gateway_port,
                n.network.icc,
                n.network.internal,
            )
        })
        .collect();
    let (gw1, gw2) = (DEFAULT_MAX_PORTS as u16, DEFAULT_MAX_PORTS as u16 + 1);
    assert_eq!(
        nets,
        [
            ("back", "br-back", gw2, true, true),
            ("bridge", "docker0", 0, false, false),
            ("front", "br-front", gw1, true, false),
        ]
    );
    assert_eq!(state.attachments_of("api").count(), 2);
    assert_eq!(state.attached_count(), 6);

    // One kernel bridge per network, each holding its own containers' veths.
    for n in &state.networks {
        let mut want: Vec<String> = n
            .attachments
            .iter()
            .map(|a| a.host_ifname.clone())
            .collect();
        want.sort();
        assert_eq!(bridge_ports(&host, n.bridge()), want, "{}", n.bridge());
        for a in &n.attachments {
            assert_eq!(a.network, n.network.name);
            assert_ne!(a.host_ifindex, 0);
        }
    }
    let addrs = ip_text(&host, &["-o", "-4", "addr", "show"]);
    for gw in ["172.17.0.1/16", "172.18.0.1/16", "172.19.0.1/16"] {
        assert!(addrs.contains(gw), "{gw} in {addrs}");
    }

    // api: eth0 on front (its default route), eth1 on back; db: only internal, a default
    // route anyway (see the lab's docs).
    let ns_of = |name: &str| {
        lab.containers()
            .iter()
            .find(|c| c.name == name)
            .unwrap()
            .netns
            .label()
            .to_string()
    };
    let api = lab.containers().iter().find(|c| c.name == "api").unwrap();
    let on: Vec<(&str, &str, String)> = api
        .interfaces
        .iter()
        .map(|i| (i.ifname.as_str(), i.network.as_str(), i.ip.to_string()))
        .collect();
    assert_eq!(
        on,
        [
            ("eth0", "front", "172.18.0.3".to_string()),
            ("eth1", "back", "172.19.0.3".to_string())
        ]
    );
    assert_eq!(api.interfaces[1].mac, [0x02, 0x42, 172, 19, 0, 3]);
    let api_addrs = ip_text(&ns_of("api"), &["-o", "-4", "addr", "show", "dev", "eth1"]);
    assert!(api_addrs.contains("172.19.0.3/16"), "{api_addrs}");
    let route = ip_text(&ns_of("api"), &["route", "show", "default"]);
    assert!(route.contains("via 172.18.0.1 dev eth0"), "{route}");
    let route = ip_text(&ns_of("db"), &["route", "show", "default"]);
    assert!(route.contains("via 172.19.0.1 dev eth0"), "{route}");

    // Over the kernel bridges alone: api reaches both networks, and the host routes between
    // the networks (nothing isolates them: that is bridgewall's job).
    let o = lab.connect("api", "db", Proto::Tcp, 5432, T).unwrap();
    assert!(body(&o).starts_with("GET / HTTP/1.0"), "{o:?}");
    let o = lab.connect("api", "web", Proto::Tcp, 80, T).unwrap();
    assert_eq!(body(&o), "hello from web\n");
    let o = lab.connect("web", "legacy1", Proto::Tcp, 80, T).unwrap();
    assert_eq!(
        body(&o),
        "hello from legacy1\n",
        "no isolation without bridgewall"
    );
    let o = lab
        .connect("outside1", "host", Proto::Tcp, 8081, T)
        .unwrap();
    assert_eq!(
        body(&o),
        "hello from web\n",
        "-p 8081:80 on the user network"
    );
    // `host` from a container is its own network's gateway.
    assert_eq!(lab.resolve("db", "host").unwrap().to_string(), "172.19.0.1");
    assert_eq!(lab.resolve("web", "api").unwrap().to_string(), "172.18.0.3");
    assert_eq!(lab.resolve("db", "api").unwrap().to_string(), "172.19.0.3");

    drop(lab);
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
}

/// The TCX ingress programs of every interface in `netns` (by interface name).
fn tcx_programs(netns: &controller::netlink::Netns) -> Vec<(String, Vec<String>)> {
    let names: Vec<String> = ip_link_names(netns.label());
    netns
        .run(move || {
            names
                .into_iter()
                .filter_map(|n| {
                    let progs = dataplane::afxdp::fastpath::tcx_ingress_programs(&n).ok()?;
                    (!progs.is_empty()).then_some((n, progs))
                })
                .collect()
        })
        .unwrap()
}

/// Runs a walkthrough with the dataplane on `datapath` in this process and returns every
/// step that did not go as expected (or whose trace disagrees), described; checks the
/// dataplane lets go of every bridge on stop. In the tiered datapath every gateway and
/// container interface carries the fast path at TCX ingress (no XDP program: the only XDP
/// link is the upcall veth's), and stopping removes them all with the upcall pair.
fn run_walkthrough_on(text: &str, origin: &str, datapath: Datapath) -> Vec<String> {
    let state_dir = TempDir::new("walk-inproc");
    let spec = LabSpec::from_toml(text, origin).unwrap();
    let lab = Lab::build(spec).unwrap();
    let host = lab.host_netns().unwrap().label().to_string();
    let mut opts = RuntimeOptions::new();
    opts.state_dir = state_dir.0.clone();
    // Room for the other networks' gateway ports (above the containers'), as the CLI's
    // defaults give.
    opts.frames.max_ports = DEFAULT_MAX_PORTS + DEFAULT_MAX_NETWORKS;
    opts.user_rules = UserRules::from_lines(lab.user_rules(), origin);
    opts.datapath = datapath;
    let rt = BridgeRuntime::start(lab.host_netns().unwrap(), lab.state().clone(), opts).unwrap();
    let state = lab.state();
    let ports = state.networks.len() + state.attached_count();
    match datapath {
        Datapath::Afxdp => assert_eq!(
            xdp_links(&host).len(),
            ports,
            "every gateway and container interface is attached: {:?}",
            xdp_links(&host)
        ),
        Datapath::Tiered => {
            assert_eq!(
                xdp_links(&host).len(),
                1,
                "only the upcall veth: {:?}",
                xdp_links(&host)
            );
            let tcx = tcx_programs(lab.host_netns().unwrap());
            assert_eq!(tcx.len(), ports, "the fast path on every port: {tcx:?}");
            assert!(tcx.iter().all(|(_, p)| p == &["bw_fastpath"]), "{tcx:?}");
        }
    }
    let stop = AtomicBool::new(false);
    let steps = run_explained(&lab, &rt, T, &stop, |_| {}).unwrap();
    assert_eq!(steps.len(), lab.spec().steps.len());
    let failures: Vec<String> = steps
        .iter()
        .filter(|e| !e.result.as_expected() || e.trace.as_ref().is_some_and(|t| !t.agree()))
        .map(|e| {
            let r = &e.result;
            format!(
                "{origin} step {} {} -> {} {}/{}: expected {:?}, got {} ({}; decided by {:?})",
                r.number,
                r.step.from,
                r.step.to,
                r.step.port,
                r.step.proto,
                r.step.expect,
                r.outcome,
                r.step.why,
                e.trace
                    .as_ref()
                    .map(|t| (t.reference_rule, t.origin.clone(), t.agree())),
            )
        })
        .collect();
    let report = rt.stop().unwrap();
    let mut given_back: Vec<&str> = report.restore.iter().map(|r| r.bridge.as_str()).collect();
    given_back.sort();
    let mut bridges: Vec<&str> = state.networks.iter().map(|n| n.bridge()).collect();
    bridges.sort();
    assert_eq!(given_back, bridges, "every bridge is given back");
    assert!(xdp_links(&host).is_empty(), "{:?}", xdp_links(&host));
    assert!(tcx_programs(lab.host_netns().unwrap()).is_empty());
    assert!(
        !ip_link_names(&host).iter().any(|n| n.starts_with("bwu")),
        "the upcall pair is removed: {:?}",
        ip_link_names(&host)
    );
    for n in &state.networks {
        let mut want: Vec<String> = n
            .attachments
            .iter()
            .map(|a| a.host_ifname.clone())
            .collect();
        want.sort();
        assert_eq!(
            bridge_ports(&host, n.bridge()),
            want,
            "{} after stop",
            n.bridge()
        );
    }
    lab.teardown().unwrap();
    failures
}

#[test]
fn root_netns_lab_both_walkthroughs_every_step_as_expected_with_the_dataplane() {
    both_walkthroughs(Datapath::Afxdp);
}

#[test]
fn root_netns_lab_both_walkthroughs_every_step_as_expected_with_the_tiered_datapath() {
    both_walkthroughs(Datapath::Tiered);
}

/// The seed's walkthrough and the networks walkthrough on `datapath`: every step as
/// expected, nothing left behind.
fn both_walkthroughs(datapath: Datapath) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut failures = run_walkthrough_on(WALKTHROUGH_TOML, "walkthrough", datapath);
    failures.extend(run_walkthrough_on(NETWORKS_TOML, "networks", datapath));
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        our_namespaces().is_empty(),
        "left behind: {:?}",
        our_namespaces()
    );
}

#[test]
fn root_netns_lab_cli_runs_the_networks_walkthrough_and_cleans_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let state_dir = TempDir::new("labcli-networks");
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab/networks.toml");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        NETWORKS_TOML,
        "the embedded networks walkthrough is the example file"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
        .args(["lab", "--probe-timeout-ms", "800", "--state-dir"])
        .arg(&state_dir.0)
        .arg(&file)
        .output()
        .unwrap();
    let leftover = std::fs::read_dir(&state_dir.0).unwrap().count();
    assert_eq!(leftover, 0, "the state files are removed after the restore");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let steps = LabSpec::from_toml(NETWORKS_TOML, "networks")
        .unwrap()
        .steps
        .len();
    for want in [
        "api",
        "legacy1",
        "front on br-front",
        "back on br-back",
        &format!("{steps}/{steps} steps as expected"),
        "agree on every step",
        "dataplane stopped; ports back on",
        "lab removed (8 namespaces)",
    ] {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    let back = text
        .lines()
        .find(|l| l.starts_with("dataplane stopped"))
        .unwrap();
    for bridge in ["docker0:", "br-front:", "br-back:"] {
        assert!(back.contains(bridge), "{bridge} in {back}");
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
