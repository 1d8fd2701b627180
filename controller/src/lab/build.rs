//! Building the lab from a [`LabSpec`], probing it, and taking it down.
//!
//! Layout (N is unique per lab: pid and a counter, so labs can run in parallel):
//! - `bwlab-N-host`: the "Docker host": one kernel bridge per network with that network's
//!   gateway address, one veth per container interface (host side, enslaved to its
//!   network's bridge), one veth per outside host, ip_forward on (so the kernel routes
//!   between the networks, as on a Docker host: isolating them is bridgewall's job), the
//!   published-port proxies.
//! - `bwlab-N-cI`: container I: `eth0`, `eth1`… one per network, in the order the lab file
//!   lists them, each with its address and a Docker-style MAC; a default route via the
//!   gateway of its first network that is not `--internal` (see [`LabSpec::route_network`]);
//!   its responders.
//! - `bwlab-N-xJ`: outside host J: `eth0` on its own link to the host, a route to every
//!   network's subnet via the host.
//!
//! Names, MACs and port ids all come from [`LabSpec::host_state`], so the state the lab
//! reports is the one `bridgewall trace --lab` computes from the file.
//!
//! Nothing is created in the caller's namespace: veths are created inside the lab's host
//! namespace with their peer placed straight into the target namespace.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rules_wasm::docker::PortId;

use super::LabError;
use super::probe::{Outcome, Proto, probe};
use super::service::{self, Service};
use super::spec::{LabSpec, docker_mac};
use crate::netlink::{Netns, Rtnl, VethPeer, is_root, set_ip_forward};
use crate::state::HostState;

/// One interface of a lab container, on one network.
#[derive(Debug)]
pub struct LabInterface {
    /// The network's name.
    pub network: String,
    /// Its name inside the container (`eth0`, `eth1`…).
    pub ifname: String,
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

/// A lab container as built.
#[derive(Debug)]
pub struct LabContainer {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub netns: Netns,
    /// Its interfaces, one per network, `eth0` first.
    pub interfaces: Vec<LabInterface>,
}

impl LabContainer {
    /// Its first interface's address (where its published ports lead); 0.0.0.0 before any
    /// interface exists.
    pub fn ip(&self) -> Ipv4Addr {
        self.interfaces
            .first()
            .map_or(Ipv4Addr::UNSPECIFIED, |i| i.ip)
    }

    /// Its first interface's dataplane port id.
    pub fn port(&self) -> Option<PortId> {
        self.interfaces.first().map(|i| i.port)
    }

    /// Its interface on `network`.
    pub fn interface(&self, network: &str) -> Option<&LabInterface> {
        self.interfaces.iter().find(|i| i.network == network)
    }
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
/// every veth and bridge).
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
    state: HostState,
}

/// Counter that makes lab names unique within the process.
static LAB_SEQ: AtomicU32 = AtomicU32::new(0);

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
        let state = spec.host_state();
        let mut lab = Lab {
            spec,
            prefix,
            stop: Arc::new(AtomicBool::new(false)),
            services: Vec::new(),
            containers: Vec::new(),
            outside: Vec::new(),
            host: None,
            state,
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
        lab.fill_in_ifindexes();
        Ok(lab)
    }

    async fn build_topology(&mut self) -> Result<(), LabError> {
        let host_name = format!("{}-host", self.prefix);
        let host =
            Netns::create(&host_name).map_err(LabError::setup("creating the host namespace"))?;
        let host = self.host.insert(host);
        let h = host
            .rtnl()
            .await
            .map_err(LabError::setup("opening the host namespace"))?;
        lo_up(&h).await?;
        host.run(|| set_ip_forward(true))
            .and_then(|r| r)
            .map_err(LabError::setup("turning ip_forward on in the lab host"))?;
        let mut bridges = BTreeMap::new();
        for n in &self.spec.networks {
            let what = format!("network {}: bridge {}", n.name, n.bridge);
            let br = h
                .add_bridge(&n.bridge)
                .await
                .map_err(LabError::setup(format!("{what}: creating")))?;
            h.add_address(br, IpAddr::V4(n.gateway), n.prefix())
                .await
                .map_err(LabError::setup(format!("{what}: addressing")))?;
            h.set_up(br)
                .await
                .map_err(LabError::setup(format!("{what}: bringing up")))?;
            bridges.insert(n.name.clone(), br);
        }
        for i in 0..self.spec.containers.len() {
            self.build_container(&h, &bridges, i).await?;
        }
        let routes: Vec<(Ipv4Addr, u8)> = self
            .spec
            .networks
            .iter()
            .map(|n| (n.subnet_addr(), n.prefix()))
            .collect();
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
            let routes: Vec<_> = routes
                .iter()
                .map(|&(dst, len)| (dst, len, o.host_ip))
                .collect();
            let links = [("eth0".to_string(), o.ip, o.prefix)];
            configure_inside(&built.netns, &what, &links, &routes).await?;
        }
        Ok(())
    }

    /// Container `i`: its namespace, one veth per network (names, MACs and ports from the
    /// lab's [`HostState`]) enslaved to that network's bridge, addresses and the default
    /// route inside.
    async fn build_container(
        &mut self,
        h: &Rtnl,
        bridges: &BTreeMap<String, u32>,
        i: usize,
    ) -> Result<(), LabError> {
        let Some(c) = self.spec.containers.get(i).cloned() else {
            return Ok(());
        };
        let what = format!("container {}", c.name);
        let ns = Netns::create(&format!("{}-c{i}", self.prefix))
            .map_err(LabError::setup(format!("{what}: namespace")))?;
        self.containers.push(LabContainer {
            name: c.name.clone(),
            netns: ns,
            interfaces: Vec::new(),
        });
        let mut links = Vec::new();
        for (k, iface) in c.interfaces.iter().enumerate() {
            let att = self
                .state
                .network(&iface.network)
                .and_then(|n| n.attachment(&c.name))
                .cloned()
                // The spec caps the interfaces at the port ids there are, so every one has
                // a port; this only guards against a hand-made spec.
                .ok_or_else(|| LabError::Unknown {
                    role: "dataplane port for the container",
                    name: c.name.clone(),
                })?;
            let (Some(&br), Some(built)) =
                (bridges.get(&iface.network), self.containers.last_mut())
            else {
                continue;
            };
            let peer = format!("eth{k}");
            let mac = docker_mac(iface.ip);
            let what = format!("{what}: {peer} on network {}", iface.network);
            let idx = h
                .add_veth(
                    &att.host_ifname,
                    VethPeer {
                        name: &peer,
                        netns: Some(&built.netns),
                        mac: Some(mac),
                        mtu: None,
                    },
                )
                .await
                .map_err(LabError::setup(format!("{what}: veth")))?;
            built.interfaces.push(LabInterface {
                network: iface.network.clone(),
                ifname: peer.clone(),
                ip: iface.ip,
                mac,
                host_ifname: att.host_ifname.clone(),
                host_ifindex: idx,
                port: att.port,
            });
            h.set_master(idx, br)
                .await
                .map_err(LabError::setup(format!("{what}: enslaving")))?;
            h.set_up(idx)
                .await
                .map_err(LabError::setup(format!("{what}: host side up")))?;
            let prefix = self.spec.network(&iface.network).map_or(32, |n| n.prefix());
            links.push((peer, iface.ip, prefix));
        }
        let route = self
            .spec
            .route_network(&c)
            .map(|n| (Ipv4Addr::UNSPECIFIED, 0, n.gateway));
        let Some(built) = self.containers.last() else {
            return Ok(());
        };
        configure_inside(&built.netns, &what, &links, route.as_slice()).await
    }

    /// Puts the built veths' indexes into the lab's state.
    fn fill_in_ifindexes(&mut self) {
        let built: BTreeMap<&str, u32> = self
            .containers
            .iter()
            .flat_map(|c| &c.interfaces)
            .map(|i| (i.host_ifname.as_str(), i.host_ifindex))
            .collect();
        for net in &mut self.state.networks {
            for a in net.attachments.iter_mut().chain(net.unplaced.iter_mut()) {
                if let Some(&idx) = built.get(a.host_ifname.as_str()) {
                    a.host_ifindex = idx;
                }
            }
        }
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
                // Docker maps published ports to the container's address on its first
                // network (the lab refuses those whose first network is --internal).
                let target = SocketAddr::from((c.ip(), p.container_port));
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

    /// The lab's state: every network with its containers, the same shape Docker tracking
    /// publishes ([`LabSpec::host_state`] with the veths' interface indexes).
    pub fn state(&self) -> &HostState {
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

    /// The lab's host namespace (where the bridges are; the dataplane attaches there).
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

    /// Resolves a probe target as seen from `from`, as a person in `from` would address
    /// it: an IPv4 address as given; `host` as the lab host's address on `from`'s link (an
    /// outside host's `host_ip`, a container's gateway on its default-route network, else
    /// the default network's gateway); a link alias of `from` as its child; a container by
    /// its address on the first network (in `from`'s order) the two share, like Docker's
    /// DNS on user-defined networks, else by its first address; an outside host by its
    /// address.
    pub fn resolve(&self, from: &str, to: &str) -> Result<Ipv4Addr, LabError> {
        if let Ok(ip) = to.parse::<Ipv4Addr>() {
            return Ok(ip);
        }
        let from_container = self.spec.container(from);
        if to == "host" {
            if let Some(o) = self.outside.iter().find(|o| o.name == from) {
                return Ok(o.host_ip);
            }
            let net = from_container
                .and_then(|c| self.spec.route_network(c))
                .or(self.spec.default_network());
            return net.map(|n| n.gateway).ok_or(LabError::Unknown {
                role: "network",
                name: "of the lab host".into(),
            });
        }
        let by_alias = from_container
            .and_then(|c| c.links.iter().find(|l| l.alias == to))
            .map(|l| l.child.as_str());
        let name = by_alias.unwrap_or(to);
        if let Some(c) = self.spec.container(name) {
            let shared =
                from_container.and_then(|f| f.interfaces.iter().find_map(|i| c.ip_on(&i.network)));
            return Ok(shared.unwrap_or_else(|| c.ip()));
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

/// Inside a lab namespace: loopback up, each link (`ifname`, address, prefix) addressed
/// and up, and the IPv4 routes (`destination/prefix via gateway`): what a container or an
/// outside host needs.
async fn configure_inside(
    netns: &Netns,
    what: &str,
    links: &[(String, Ipv4Addr, u8)],
    routes: &[(Ipv4Addr, u8, Ipv4Addr)],
) -> Result<(), LabError> {
    let inner = netns.rtnl().await.map_err(LabError::setup(what))?;
    lo_up(&inner).await?;
    for (name, ip, prefix) in links {
        let idx = inner
            .index_of(name)
            .await
            .map_err(LabError::setup(format!("{what}: finding {name}")))?;
        inner
            .add_address(idx, IpAddr::V4(*ip), *prefix)
            .await
            .map_err(LabError::setup(format!("{what}: {name} address")))?;
        inner
            .set_up(idx)
            .await
            .map_err(LabError::setup(format!("{what}: {name} up")))?;
    }
    for &(dst, len, via) in routes {
        inner
            .add_route_v4(dst, len, via)
            .await
            .map_err(LabError::setup(format!("{what}: route to {dst}/{len}")))?;
    }
    Ok(())
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
