//! `bridgewall bench` loads Docker 20.10's chains into its kernel-bridge paths from its own
//! generator (`controller::bench::docker_chains`). This checks, once, against a real engine
//! (Debian's docker.io 20.10 in a namespace of its own, icc=false) that the generated rules
//! are what Docker writes for the same containers: `iptables-save` in the engine's
//! namespace, normalised (comments, counters; the `DOCKER` chains' rules sorted, since
//! Docker's order among one link's ports follows Go's map iteration), equals the generator's
//! text for the network as the engine reports it. Root only; skips otherwise.
mod support;

use std::net::IpAddr;
use std::process::Command;

use controller::bench::docker_chains::{iptables_save, normalise};
use controller::bench::scenario;
use rules_wasm::docker::{BridgeNetwork, ContainerInfo, LinkSpec, PortProto, Published};
use rules_wasm::model::Cidr;
use support::docker::DockerEngine;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn proto_name(p: u8) -> &'static str {
    if p == 6 { "tcp" } else { "udp" }
}

#[test]
fn root_docker_bench_chains_match_what_the_engine_writes() {
    if !is_root() {
        eprintln!("skipped: needs root (starts dockerd in a network namespace)");
        return;
    }
    let engine = DockerEngine::start(false);
    // The bench's scenario: the server exposes the test ports (and the image's 80), the
    // client links to it, web publishes 8080→80.
    let exposed = scenario::server_exposed();
    let mut server_args = Vec::new();
    for e in &exposed {
        server_args.push("--expose".to_string());
        server_args.push(format!("{}/{}", e.port, proto_name(e.proto)));
    }
    let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
    engine.run_container("server", &server_args, &[]);
    engine.run_container("client", &["--link", "server:srv"], &["sleep", "3600"]);
    engine.run_container("web", &["-p", "8080:80"], &[]);

    let ip = |name: &str| -> IpAddr {
        engine
            .inspect(name, "{{.NetworkSettings.IPAddress}}")
            .trim()
            .parse()
            .unwrap()
    };
    let subnet = engine.docker_ok(&[
        "network",
        "inspect",
        "bridge",
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
    ]);
    let (addr, len) = subnet.trim().split_once('/').expect("a CIDR");
    let image_port = PortProto { proto: 6, port: 80 };
    let mut server_exposed = exposed.clone();
    server_exposed.push(image_port);
    let net = BridgeNetwork {
        name: "bridge".into(),
        bridge: "docker0".into(),
        subnets: Cidr::new(addr.parse().unwrap(), len.parse().unwrap())
            .into_iter()
            .collect(),
        icc: false,
        containers: vec![
            ContainerInfo {
                name: "server".into(),
                ips: vec![ip("server")],
                exposed: server_exposed,
                ..ContainerInfo::default()
            },
            ContainerInfo {
                name: "client".into(),
                ips: vec![ip("client")],
                exposed: vec![image_port],
                links: vec![LinkSpec {
                    child: "server".into(),
                    alias: "srv".into(),
                }],
                ..ContainerInfo::default()
            },
            ContainerInfo {
                name: "web".into(),
                ips: vec![ip("web")],
                exposed: vec![image_port],
                published: vec![Published {
                    proto: 6,
                    container_port: 80,
                    host_port: 8080,
                }],
                ..ContainerInfo::default()
            },
        ],
        ..Default::default()
    };
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", engine.netns))
        .arg("iptables-save")
        .output()
        .expect("iptables-save runs");
    assert!(out.status.success(), "iptables-save: {out:?}");
    let docker = String::from_utf8_lossy(&out.stdout).into_owned();

    // With N user rules the generator only adds lines before Docker's RETURN; the engine
    // has none, so compare with none.
    let ours = iptables_save(&net, &[]);
    let (want, got) = (normalise(&docker), normalise(&ours));
    assert_eq!(
        got, want,
        "generated (left) vs Docker's (right); raw iptables-save:\n{docker}"
    );

    // And the generated text loads: iptables-restore --test in the engine's namespace.
    let text = iptables_save(&net, &scenario::user_rules(5));
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", engine.netns))
        .args(["iptables-restore", "--test"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("iptables-restore runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "iptables-restore --test:\n{text}"
    );
}
