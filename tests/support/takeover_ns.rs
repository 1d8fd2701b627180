//! A bridge namespace with containers behind veths, for the takeover tests: `bwtk-PID-N`
//! holds bridge `br0` (10.201.0.1/24) and the containers' host-side veths `vethcI`;
//! `bwtk-PID-N-cI` holds container I's `eth0` (10.201.0.1I/24) and a UDP echo responder.
//! Everything lives in namespaces created here and is removed on drop, also when a test
//! panics; names carry the pid and a counter so tests can run in parallel.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use controller::netlink::{Netns, NsThread};

/// UDP port of the echo responders.
pub(crate) const ECHO_PORT: u16 = 7;
/// The bridge's address.
pub(crate) const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS`, panicking with its output if it fails.
pub(crate) fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Container I's address.
pub(crate) fn container_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 201, 0, 10 + i as u8)
}

/// A UDP echo responder on a thread inside a namespace; stopped on drop.
pub(crate) struct Responder {
    stop: Arc<AtomicBool>,
    thread: Option<NsThread<()>>,
}

impl Responder {
    fn start(netns: &Netns, ip: Ipv4Addr) -> Responder {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // Bind inside the namespace before returning, so a probe never races the bind.
        let sock = netns
            .run(move || UdpSocket::bind(SocketAddrV4::new(ip, ECHO_PORT)))
            .unwrap()
            .unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let thread = netns
            .spawn("bwtk-echo", move || {
                let mut buf = [0u8; 256];
                while !flag.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(&buf[..n], from);
                    }
                }
            })
            .unwrap();
        Responder {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A container: its namespace, host-side veth name and address.
pub(crate) struct Container {
    pub ns_name: String,
    pub host_if: String,
    pub ip: Ipv4Addr,
    responder: Option<Responder>,
    pub netns: Netns,
}

impl Drop for Container {
    fn drop(&mut self) {
        // Stop the responder before its namespace goes.
        self.responder = None;
    }
}

/// A directory for state files, removed on drop.
pub(crate) struct StateDir(pub PathBuf);

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The whole topology. Field order is drop order: containers, then the bridge namespace
/// (deleting it deletes the bridge, the veths and any gateway pair), then the state dir.
pub(crate) struct Topo {
    pub containers: Vec<Container>,
    gateway_responder: Option<Responder>,
    pub netns: Netns,
    pub name: String,
    pub state_dir: StateDir,
}

impl Topo {
    /// Builds the bridge namespace and `n` containers on `br0`.
    pub(crate) fn build(n: u32) -> Topo {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let name = format!("bwtk-{}-{seq}", std::process::id());
        let state_dir = StateDir(std::env::temp_dir().join(format!("{name}-state")));
        let netns = Netns::create(&name).unwrap();
        let mut topo = Topo {
            containers: Vec::new(),
            gateway_responder: None,
            netns,
            name: name.clone(),
            state_dir,
        };
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &name, "addr", "add", "10.201.0.1/24", "dev", "br0"]);
        ip(&["-n", &name, "link", "set", "br0", "up"]);
        topo.gateway_responder = Some(Responder::start(&topo.netns, GATEWAY_IP));
        for i in 1..=n {
            topo.add_container(i);
        }
        topo
    }

    /// Adds container `i` (namespace, veth enslaved to br0, address, responder), as Docker
    /// does when a container starts.
    pub(crate) fn add_container(&mut self, i: u32) -> &Container {
        let ns_name = format!("{}-c{i}", self.name);
        let netns = Netns::create(&ns_name).unwrap();
        let host_if = format!("vethc{i}");
        let ip_addr = container_ip(i);
        // Pushed first, so a failure below still removes the namespace.
        self.containers.push(Container {
            ns_name: ns_name.clone(),
            host_if: host_if.clone(),
            ip: ip_addr,
            responder: None,
            netns,
        });
        let b = self.name.as_str();
        ip(&[
            "-n", b, "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns",
            &ns_name,
        ]);
        ip(&["-n", b, "link", "set", &host_if, "master", "br0"]);
        ip(&["-n", b, "link", "set", &host_if, "up"]);
        ip(&["-n", &ns_name, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns_name,
            "addr",
            "add",
            &format!("{ip_addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns_name, "link", "set", "eth0", "up"]);
        let c = self.containers.last_mut().unwrap();
        c.responder = Some(Responder::start(&c.netns, ip_addr));
        c
    }

    /// Container `i` (1-based).
    pub(crate) fn container(&self, i: u32) -> &Container {
        &self.containers[(i - 1) as usize]
    }

    /// Whether container `from` gets a UDP echo back from `to`, trying for 2 s: a link just
    /// brought up may drop what it is given until the kernel's link watcher activates it
    /// (up to a second later).
    pub(crate) fn reaches(&self, from: u32, to: Ipv4Addr) -> bool {
        self.container(from)
            .netns
            .run(move || {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                sock.set_read_timeout(Some(Duration::from_millis(250)))
                    .unwrap();
                let msg = format!("probe to {to}");
                let mut buf = [0u8; 256];
                for _ in 0..8 {
                    sock.send_to(msg.as_bytes(), SocketAddrV4::new(to, ECHO_PORT))
                        .unwrap();
                    if let Ok((n, _)) = sock.recv_from(&mut buf)
                        && &buf[..n] == msg.as_bytes()
                    {
                        return true;
                    }
                }
                false
            })
            .unwrap()
    }

    /// The bridge namespace's links as `ip -j link` reports them, by name.
    pub(crate) fn links(&self) -> HashMap<String, serde_json::Value> {
        let out = Command::new("ip")
            .args(["-j", "-n", &self.name, "link", "show"])
            .output()
            .expect("ip runs");
        assert!(out.status.success(), "{out:?}");
        let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        v.into_iter()
            .map(|l| (l["ifname"].as_str().unwrap().to_string(), l))
            .collect()
    }

    /// The master of link `name` in the bridge namespace (`None`: not enslaved), panicking
    /// if the link does not exist.
    pub(crate) fn master_of(&self, name: &str) -> Option<String> {
        let links = self.links();
        let l = links
            .get(name)
            .unwrap_or_else(|| panic!("no link {name} in {}", self.name));
        l["master"].as_str().map(str::to_string)
    }

    /// Whether link `name` is administratively up.
    pub(crate) fn is_up(&self, name: &str) -> bool {
        self.links()[name]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "UP")
    }

    /// The namespace names this topology made.
    pub(crate) fn namespace_names(&self) -> Vec<String> {
        std::iter::once(self.name.clone())
            .chain(self.containers.iter().map(|c| c.ns_name.clone()))
            .collect()
    }
}

/// Namespaces under /run/netns among `names`.
pub(crate) fn still_bound(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| std::path::Path::new("/run/netns").join(n).exists())
        .cloned()
        .collect()
}
