//! Building the lab from a [`LabSpec`], probing it, and taking it down.
//!
//! Layout (N is unique per lab: pid and a counter, so labs can run in parallel):
//! - `bwlab-N-host`: the "Docker host": the bridge with the gateway address, one veth per
//!   container (host side, enslaved), one veth per outside host, ip_forward on, the
//!   published-port proxies.
//! - `bwlab-N-cI`: container I: `eth0` with its address, a Docker-style MAC and a default
//!   route via the gateway; its responders.
//! - `bwlab-N-xJ`: outside host J: `eth0` on its own link to the host, a route to the bridge
//!   subnet via the host.
//!
//! Nothing is created in the caller's namespace: veths are created inside the lab's host
//! namespace with their peer placed straight into the target namespace.
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rules_wasm::docker::{BridgeNetwork, ContainerInfo, PortId};

use super::LabError;
use super::probe::{Outcome, Proto, probe};
use super::service::{self, Service};
use super::spec::LabSpec;
use crate::netlink::{Netns, Rtnl, VethPeer, is_root, set_ip_forward};
use crate::state::{Attachment, BridgeState, GATEWAY_PORT, PortAllocator};

/// A lab container as built.
#[derive(Debug)]
pub struct LabContainer {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub netns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC (Docker's scheme: 02:42 and the IPv4 address).
    pub mac: [u8; 6],
    /// The host-side veth in the lab's host namespace.
    pub host_ifname: String,
    /// That veth's index.
    pub host_ifindex: u32,
    /// Its dataplane port id.
    pub port: PortId,
}

/// A lab outside host as built.
#[derive(Debug)]
pub struct LabOutside {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub netns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
    /// The lab host's address on its link.
    pub host_ip: Ipv4Addr,
    /// The host-side veth's name.
    pub host_ifname: String,
}

/// A built lab. Dropping it stops its services and deletes its namespaces (and with them
/// every veth and the bridge).
#[derive(Debug)]
pub struct Lab {
    spec: LabSpec,
    prefix: String,
    stop: Arc<AtomicBool>,
    services: Vec<Service>,
    containers: Vec<LabContainer>,
    outside: Vec<LabOutside>,
    /// Last, so it is deleted after the namespaces that hang off it.
    host: Option<Netns>,
    state: BridgeState,
}

/// Counter that makes lab names unique within the process.
static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

/// Docker's MAC scheme for bridge endpoints: 02:42 followed by the IPv4 address.
fn docker_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Shortens `s` to an interface name (15 bytes), keeping it ASCII-safe.
fn ifname(s: String) -> String {
    s.chars().take(15).collect()
}

impl Lab {
    /// Builds the lab. Blocking: call it from a plain thread, not from async code. On error,
    /// whatever was built is removed before returning.
    pub fn build(spec: LabSpec) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        let seq = LAB_SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("bwlab-{}-{seq}", std::process::id());
        let mut lab = Lab {
            spec,
            prefix,
            stop: Arc::new(AtomicBool::new(false)),
            services: Vec::new(),
            containers: Vec::new(),
            outside: Vec::new(),
            host: None,
            state: BridgeState::default(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LabError::Io {
                what: "starting a netlink runtime".into(),
                source,
            })?;
        // The runtime (and with it every netlink socket in the lab's namespaces) is dropped
        // at the end of this function; `lab` is dropped on error, which removes what exists.
        runtime.block_on(lab.build_topology())?;
        drop(runtime);
        lab.start_services()?;
        lab.state = lab.compute_state();
        Ok(lab)
    }

    async fn build_topology(&mut self) -> Result<(), LabError> {
        let b = self.spec.bridge.clone();
        let host_name = format!("{}-host", self.prefix);
        let host =
            Netns::create(&host_name).map_err(LabError::setup("creating the host namespace"))?;
        let host = self.host.insert(host);
        let h = host
            .rtnl()
            .await
            .map_err(LabError::setup("opening the host namespace"))?;
        lo_up(&h).await?;
        let br = h
            .add_bridge(&b.name)
            .await
            .map_err(LabError::setup(format!("creating bridge {}", b.name)))?;
        h.add_address(br, IpAddr::V4(b.gateway), b.prefix)
            .await
            .map_err(LabError::setup("addressing the bridge"))?;
        h.set_up(br)
            .await
            .map_err(LabError::setup("bringing the bridge up"))?;
        host.run(|| set_ip_forward(true))
            .and_then(|r| r)
            .map_err(LabError::setup("turning ip_forward on in the lab host"))?;

        let mut ports = PortAllocator::new();
        for (i, c) in self.spec.containers.clone().into_iter().enumerate() {
            let what = format!("container {}", c.name);
            let ns = Netns::create(&format!("{}-c{i}", self.prefix))
                .map_err(LabError::setup(format!("{what}: namespace")))?;
            let mac = docker_mac(c.ip);
            let host_ifname = ifname(format!("veth{i}-{}", c.name));
            let idx = h
                .add_veth(
                    &host_ifname,
                    VethPeer {
                        name: "eth0",
                        netns: Some(&ns),
                        mac: Some(mac),
                        mtu: None,
                    },
                )
                .await
                .map_err(LabError::setup(format!("{what}: veth")))?;
            let port = ports.port_for(&host_ifname).ok_or_else(|| LabError::Spec {
                origin: "lab".into(),
                msg: "more containers than dataplane port ids".into(),
            })?;
            self.containers.push(LabContainer {
                name: c.name.clone(),
                netns: ns,
                ip: c.ip,
                mac,
                host_ifname,
                host_ifindex: idx,
                port,
            });
            h.set_master(idx, br)
                .await
                .map_err(LabError::setup(format!("{what}: enslaving")))?;
            h.set_up(idx)
                .await
                .map_err(LabError::setup(format!("{what}: host side up")))?;
            let Some(built) = self.containers.last() else {
                continue;
            };
            let route = (Ipv4Addr::UNSPECIFIED, 0, b.gateway);
            configure_eth0(&built.netns, &what, c.ip, b.prefix, route).await?;
        }

        for (j, o) in self.spec.outside.clone().into_iter().enumerate() {
            let what = format!("outside host {}", o.name);
            let ns = Netns::create(&format!("{}-x{j}", self.prefix))
                .map_err(LabError::setup(format!("{what}: namespace")))?;
            let host_ifname = ifname(format!("out{j}-{}", o.name));
            let idx = h
                .add_veth(
                    &host_ifname,
                    VethPeer {
                        name: "eth0",
                        netns: Some(&ns),
                        mac: None,
                        mtu: None,
                    },
                )
                .await
                .map_err(LabError::setup(format!("{what}: veth")))?;
            self.outside.push(LabOutside {
                name: o.name.clone(),
                netns: ns,
                ip: o.ip,
                host_ip: o.host_ip,
                host_ifname,
            });
            h.add_address(idx, IpAddr::V4(o.host_ip), o.prefix)
                .await
                .map_err(LabError::setup(format!("{what}: host address")))?;
            h.set_up(idx)
                .await
                .map_err(LabError::setup(format!("{what}: host side up")))?;
            let Some(built) = self.outside.last() else {
                continue;
            };
            let route = (b.subnet, b.prefix, o.host_ip);
            configure_eth0(&built.netns, &what, o.ip, o.prefix, route).await?;
        }
        Ok(())
    }

    fn start_services(&mut self) -> Result<(), LabError> {
        for (c, spec) in self.containers.iter().zip(&self.spec.containers) {
            for r in &spec.responders {
                let what = format!(
                    "container {}: {:?} responder on port {}",
                    c.name, r.kind, r.port
                );
                let (kind, port) = (r.kind, r.port);
                let bound = c
                    .netns
                    .run(move || service::bind(kind, port))
                    .map_err(LabError::setup(&what))?
                    .map_err(|source| LabError::Io {
                        what: what.clone(),
                        source,
                    })?;
                let thread = service::serve(c.name.clone(), kind, bound, self.stop.clone())
                    .map_err(|source| LabError::Io {
                        what: what.clone(),
                        source,
                    })?;
                self.services.push(Service { what, thread });
            }
        }
        let Some(host) = self.host.as_ref() else {
            return Ok(());
        };
        for (c, spec) in self.containers.iter().zip(&self.spec.containers) {
            for p in &spec.published {
                let what = format!(
                    "proxy for {}:{} -> {}:{}",
                    "host", p.host_port, c.name, p.container_port
                );
                let listen = SocketAddr::from(([0, 0, 0, 0], p.host_port));
                let target = SocketAddr::from((c.ip, p.container_port));
                let listener = host
                    .run(move || {
                        let l = TcpListener::bind(listen)?;
                        l.set_nonblocking(true)?;
                        Ok::<_, std::io::Error>(l)
                    })
                    .map_err(LabError::setup(&what))?
                    .map_err(|source| LabError::Io {
                        what: what.clone(),
                        source,
                    })?;
                let stop = self.stop.clone();
                let thread = host
                    .spawn("lab-proxy", move || {
                        service::proxy_loop(listener, target, stop)
                    })
                    .map_err(LabError::setup(&what))?;
                // The proxy's thread lives in the host namespace; wrap its NsThread in a
                // plain handle for uniform joining.
                let joiner = std::thread::Builder::new()
                    .name("lab-proxy-join".into())
                    .spawn(move || {
                        let _ = thread.join();
                    })
                    .map_err(|source| LabError::Io {
                        what: what.clone(),
                        source,
                    })?;
                self.services.push(Service {
                    what,
                    thread: joiner,
                });
            }
        }
        Ok(())
    }

    fn compute_state(&self) -> BridgeState {
        let mut containers: Vec<(&LabContainer, ContainerInfo)> = self
            .containers
            .iter()
            .zip(&self.spec.containers)
            .map(|(c, s)| {
                (
                    c,
                    ContainerInfo {
                        name: c.name.clone(),
                        port: c.port,
                        ips: vec![IpAddr::V4(c.ip)],
                        mac: c.mac,
                        exposed: s.exposed.clone(),
                        published: s.published.clone(),
                        links: s.links.clone(),
                    },
                )
            })
            .collect();
        containers.sort_by(|a, b| a.1.name.cmp(&b.1.name));
        BridgeState {
            bridge: self.spec.bridge.name.clone(),
            network: BridgeNetwork {
                icc: self.spec.bridge.icc,
                gateway_port: GATEWAY_PORT,
                gateway_ips: vec![IpAddr::V4(self.spec.bridge.gateway)],
                containers: containers.iter().map(|(_, i)| i.clone()).collect(),
            },
            attachments: containers
                .iter()
                .map(|(c, _)| Attachment {
                    container: c.name.clone(),
                    id: c.name.clone(),
                    host_ifname: c.host_ifname.clone(),
                    host_ifindex: c.host_ifindex,
                    port: c.port,
                })
                .collect(),
            unplaced: Vec::new(),
        }
    }

    /// The lab's bridge state: the same shape Docker tracking publishes.
    pub fn state(&self) -> &BridgeState {
        &self.state
    }

    /// The lab's description.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    /// The user rules the lab file carries (iptables syntax).
    pub fn user_rules(&self) -> &[String] {
        &self.spec.rules
    }

    /// The lab's host namespace (where the bridge is; the dataplane attaches there).
    pub fn host_netns(&self) -> Option<&Netns> {
        self.host.as_ref()
    }

    /// The containers as built.
    pub fn containers(&self) -> &[LabContainer] {
        &self.containers
    }

    /// The outside hosts as built.
    pub fn outside_hosts(&self) -> &[LabOutside] {
        &self.outside
    }

    /// The names of every namespace the lab made (for people and for leak checks).
    pub fn netns_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.host.iter().map(|n| n.label().to_string()).collect();
        v.extend(self.containers.iter().map(|c| c.netns.label().to_string()));
        v.extend(self.outside.iter().map(|o| o.netns.label().to_string()));
        v
    }

    /// Opens a connection from `from` (a container, an outside host, or `host`) to `to` (a
    /// name, a link alias of `from`, `host`, or an IPv4 address) and reports what happened.
    /// Runs inside `from`'s namespace.
    pub fn connect(
        &self,
        from: &str,
        to: &str,
        proto: Proto,
        port: u16,
        timeout: Duration,
    ) -> Result<Outcome, LabError> {
        let ns = self.netns_of(from)?;
        let ip = self.resolve(from, to)?;
        let addr = SocketAddr::from((ip, port));
        let label = from.to_string();
        ns.run(move || probe(addr, proto, timeout, &label))
            .map_err(LabError::setup(format!("probing from {from}")))
    }

    /// Sends one UDP datagram of `size` bytes from `from` to the echo responder of `to` on
    /// `port` and waits for it to come back whole: how large datagrams (IP fragments) are
    /// probed.
    pub fn udp_round_trip(
        &self,
        from: &str,
        to: &str,
        port: u16,
        size: usize,
        timeout: Duration,
    ) -> Result<Outcome, LabError> {
        let ns = self.netns_of(from)?;
        let ip = self.resolve(from, to)?;
        let addr = SocketAddr::from((ip, port));
        ns.run(move || super::probe::udp_round_trip(addr, size, timeout))
            .map_err(LabError::setup(format!("probing from {from}")))
    }

    fn netns_of(&self, name: &str) -> Result<&Netns, LabError> {
        if name == "host" {
            return self.host.as_ref().ok_or(LabError::Unknown {
                role: "host namespace",
                name: name.into(),
            });
        }
        self.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| &c.netns)
            .or_else(|| {
                self.outside
                    .iter()
                    .find(|o| o.name == name)
                    .map(|o| &o.netns)
            })
            .ok_or_else(|| LabError::Unknown {
                role: "container or outside host",
                name: name.into(),
            })
    }

    /// Resolves a probe target as seen from `from`.
    fn resolve(&self, from: &str, to: &str) -> Result<Ipv4Addr, LabError> {
        if let Ok(ip) = to.parse::<Ipv4Addr>() {
            return Ok(ip);
        }
        if to == "host" {
            if let Some(o) = self.outside.iter().find(|o| o.name == from) {
                return Ok(o.host_ip);
            }
            return Ok(self.spec.bridge.gateway);
        }
        let by_alias = self
            .spec
            .container(from)
            .and_then(|c| c.links.iter().find(|l| l.alias == to))
            .map(|l| l.child.as_str());
        let name = by_alias.unwrap_or(to);
        if let Some(c) = self.containers.iter().find(|c| c.name == name) {
            return Ok(c.ip);
        }
        if let Some(o) = self.outside.iter().find(|o| o.name == name) {
            return Ok(o.ip);
        }
        Err(LabError::Unknown {
            role: "probe target",
            name: to.into(),
        })
    }

    /// Stops the services and deletes every namespace (what drop does, with errors
    /// reported).
    pub fn teardown(mut self) -> Result<(), LabError> {
        self.stop_services();
        let mut first_err = None;
        let namespaces = self
            .containers
            .drain(..)
            .map(|c| c.netns)
            .chain(self.outside.drain(..).map(|o| o.netns))
            .chain(self.host.take());
        for ns in namespaces {
            let label = ns.label().to_string();
            if let Err(e) = ns.delete() {
                first_err.get_or_insert(LabError::Setup {
                    what: format!("deleting {label}"),
                    source: e,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn stop_services(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.services.drain(..) {
            if s.thread.join().is_err() {
                tracing::warn!("lab service {} panicked", s.what);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.stop_services();
        // Containers and outside hosts first, the host (with the bridge) last; each Netns
        // removes its binding as it drops.
        self.containers.clear();
        self.outside.clear();
        self.host = None;
    }
}

/// Inside a lab namespace: loopback up, `eth0` addressed and up, and one IPv4 route
/// (`destination/prefix via gateway`): what a container or an outside host needs.
async fn configure_eth0(
    netns: &Netns,
    what: &str,
    ip: Ipv4Addr,
    prefix: u8,
    route: (Ipv4Addr, u8, Ipv4Addr),
) -> Result<(), LabError> {
    let inner = netns.rtnl().await.map_err(LabError::setup(what))?;
    lo_up(&inner).await?;
    let eth0 = inner
        .index_of("eth0")
        .await
        .map_err(LabError::setup(what))?;
    inner
        .add_address(eth0, IpAddr::V4(ip), prefix)
        .await
        .map_err(LabError::setup(format!("{what}: address")))?;
    inner
        .set_up(eth0)
        .await
        .map_err(LabError::setup(format!("{what}: eth0 up")))?;
    let (dst, len, via) = route;
    inner
        .add_route_v4(dst, len, via)
        .await
        .map_err(LabError::setup(format!("{what}: route to {dst}/{len}")))
}

async fn lo_up(rtnl: &Rtnl) -> Result<(), LabError> {
    let lo = rtnl.index_of("lo").await.map_err(LabError::setup(format!(
        "finding lo in {}",
        rtnl.netns_label()
    )))?;
    rtnl.set_up(lo).await.map_err(LabError::setup(format!(
        "bringing lo up in {}",
        rtnl.netns_label()
    )))
}
