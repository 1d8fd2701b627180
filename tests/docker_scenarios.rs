//! The seed's scenarios against a real Docker engine (Debian's docker.io 20.10, API 1.41) in a
//! network namespace of its own, with bridgewall running on that engine's docker0.
//! Root tests: they install docker.io and nginx when missing, start dockerd inside a
//! namespace, and remove everything (containers, daemon, namespaces) even when they fail.
//! Each bridgewall scenario runs twice, once per datapath (issue 9): `--datapath afxdp`
//! (every packet through the AF_XDP + Wasm loop) and `--datapath tiered` (admitted flows
//! forwarded in the kernel from tc/TCX, the rest upcalled to that loop).
mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::docker::{DockerEngine, OutsideHost};

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
        if let Some(b) = engine.fetch("nginx_server1", &format!("http://{ip2}/")) {
            break b;
        }
        assert!(Instant::now() < deadline, "nginx_server2 never answered");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("hello from nginx"), "{body}");
}

/// `bridgewall run` on the engine's docker0, as a child process; SIGINT on drop (then SIGKILL
/// if it does not stop), so a failing test never leaves it running.
struct Bridgewall {
    child: Option<Child>,
    state_dir: std::path::PathBuf,
}

impl Bridgewall {
    /// `bridgewall run --datapath DATAPATH --rules FILE` (`rules` written to FILE).
    fn start(engine: &DockerEngine, rules: &str, datapath: &str) -> Bridgewall {
        let rules_file = engine.dir.join("rules.txt");
        std::fs::write(&rules_file, rules).unwrap();
        let state_dir = engine.dir.join("bw-state");
        let child = Command::new(env!("CARGO_BIN_EXE_bridgewall"))
            .args([
                "run",
                "--docker-host",
                &engine.host(),
                "--bridge",
                "docker0",
            ])
            .args(["--netns", &engine.netns, "--state-dir"])
            .arg(&state_dir)
            .arg("--rules")
            .arg(&rules_file)
            .args(["--datapath", datapath])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting bridgewall run");
        let mut bw = Bridgewall {
            child: Some(child),
            state_dir,
        };
        // Taken over when every container's veth has left docker0 (only the gateway stays).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ports = docker0_ports(engine);
            if !ports.is_empty() && ports.iter().all(|p| !p.starts_with("veth")) {
                break;
            }
            if let Some(c) = bw.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let out = bw.child.take().unwrap().wait_with_output().unwrap();
                panic!(
                    "bridgewall exited ({status}) before taking docker0:\n{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                Instant::now() < deadline,
                "bridgewall did not take docker0: ports {ports:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        bw
    }

    /// SIGINT, wait, and return what it printed.
    fn stop(mut self) -> (String, String) {
        let child = self.child.take().unwrap();
        sh(&["kill", "-INT", &child.id().to_string()]);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bridgewall run exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Bridgewall {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sh(&["kill", "-INT", &c.id().to_string()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Retries a check that must pass once the policy is in force (the first verdicts can race
/// the policy's installation right after the takeover).
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never succeeded");
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A connection that bridgewall drops times out (no RST, no ICMP): the attempt takes the
/// whole timeout, unlike a refused one.
fn times_out(what: &str, attempt: impl FnOnce() -> Option<String>) {
    let t = Instant::now();
    let r = attempt();
    assert!(r.is_none(), "{what} should be dropped, got {r:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{what} failed fast ({:?}): refused, not dropped",
        t.elapsed()
    );
}

fn start_seed_containers(engine: &DockerEngine) {
    engine.import_nginx();
    engine.run_image("nginx_server1", &["-p", "8080:80"], "lab/nginx");
    engine.run_image("nginx_server2", &[], "lab/nginx");
    engine.run_image("client3", &["--link", "nginx_server2:ng2"], "lab/nginx");
}

#[test]
fn root_docker_scenario_icc_true_and_a_link_through_bridgewall_afxdp() {
    icc_true_and_a_link("afxdp");
}

#[test]
fn root_docker_scenario_icc_true_and_a_link_through_bridgewall_tiered() {
    icc_true_and_a_link("tiered");
}

fn icc_true_and_a_link(datapath: &str) {
    let engine = DockerEngine::start(true);
    start_seed_containers(&engine);
    let (ip1, ip2) = (
        ip_of(&engine, "nginx_server1"),
        ip_of(&engine, "nginx_server2"),
    );
    let bw = Bridgewall::start(&engine, "", datapath);

    // 1. icc=true: the two servers fetch each other's page by IP.
    let page = eventually("server1 → server2", || {
        engine.fetch("nginx_server1", &format!("http://{ip2}/"))
    });
    assert!(page.contains("hello from nginx"));
    eventually("server2 → server1", || {
        engine.fetch("nginx_server2", &format!("http://{ip1}/"))
    });
    // 2. The link: client3 fetches http://ng2/.
    eventually("client3 → ng2", || engine.fetch("client3", "http://ng2/"));

    let (out, _) = bw.stop();
    assert!(
        out.contains("nginx_server1") && out.contains("nginx_server2"),
        "summary names the containers:\n{out}"
    );
    assert!(
        docker0_ports(&engine).iter().any(|p| p.starts_with("veth")),
        "ports back on docker0"
    );
}

#[test]
fn root_docker_scenario_icc_false_link_published_port_and_user_rule_afxdp() {
    icc_false_link_published_port_and_user_rule("afxdp");
}

#[test]
fn root_docker_scenario_icc_false_link_published_port_and_user_rule_tiered() {
    icc_false_link_published_port_and_user_rule("tiered");
}

fn icc_false_link_published_port_and_user_rule(datapath: &str) {
    let engine = DockerEngine::start(false);
    let ext2 = OutsideHost::add(&engine, 1);
    start_seed_containers(&engine);
    let ip2 = ip_of(&engine, "nginx_server2");
    let ip1 = ip_of(&engine, "nginx_server1");
    // 5. The seed's user rule: the first outside host may not reach nginx_server1's port 80.
    let bw = Bridgewall::start(
        &engine,
        "-I -s 198.18.0.2 -d nginx_server1 -p tcp --dport 80 -j DROP\n",
        datapath,
    );

    // 3. The linked pair still talks on the exposed port...
    let page = eventually("client3 → ng2:80", || {
        engine.fetch("client3", "http://ng2/")
    });
    assert!(page.contains("hello from nginx"));
    // ...but the two servers no longer reach each other,
    times_out("server1 → server2 (icc=false)", || {
        engine.fetch("nginx_server1", &format!("http://{ip2}/"))
    });
    // ...the link opens the exposed port only (and not in reverse, and no ping).
    times_out("client3 → ng2:8081", || {
        engine.fetch("client3", "http://ng2:8081/")
    });
    times_out("server2 → client3 (the link's reverse)", || {
        let c3 = ip_of(&engine, "client3");
        engine.fetch("nginx_server2", &format!("http://{c3}/"))
    });
    assert!(
        !engine.ping("client3", "ng2"),
        "ping over the link is dropped"
    );

    // 4. -p 8080:80: the second outside host fetches the page through the host's port 8080.
    eventually("outside host 2 → :8080", || {
        curl_in(&ext2.netns, "http://198.18.1.1:8080/")
    });
    // 5. ...while the user rule blocks the first outside host.
    times_out("outside host 1 → :8080 (user rule)", || {
        curl_in(&engine.outside_netns, "http://198.18.0.1:8080/")
    });
    // 6. The host itself reaches a container's unpublished port directly.
    eventually("host → nginx_server2:80", || {
        curl_in(&engine.netns, &format!("http://{ip2}/"))
    });
    eventually("host → nginx_server1:80", || {
        curl_in(&engine.netns, &format!("http://{ip1}/"))
    });

    // 7. bridgewall decided: its summary counts the user rule's drops; stopped, the ports are
    //    back on docker0 and the kernel path (which has no such user rule) lets host 1 in.
    let (out, err) = bw.stop();
    assert!(
        out.contains("198.18.0.2"),
        "the summary names the user rule:\n{out}\n{err}"
    );
    assert!(
        docker0_ports(&engine).iter().any(|p| p.starts_with("veth")),
        "ports back on docker0"
    );
    eventually("outside host 1 → :8080 through the kernel", || {
        curl_in(&engine.outside_netns, "http://198.18.0.1:8080/")
    });
    eventually("client3 → ng2 through the kernel", || {
        engine.fetch("client3", "http://ng2/")
    });
    times_out("server1 → server2 through the kernel (icc=false)", || {
        engine.fetch("nginx_server1", &format!("http://{ip2}/"))
    });
}
