//! The benchmark's world, built in network namespaces of its own (unique names with the
//! pid) and removed on drop, also when a run fails: a "host" namespace holding the bridge
//! (or bridgewall's ports), one namespace per container on a veth to the host, and an
//! outside host on a routed veth. Nothing is created in the root namespace and nothing is
//! sent from it.
//!
//! Everything is built with the controller's own netlink layer ([`crate::netlink`]), as the
//! lab is: namespaces, veths (the peer created straight in its namespace), the bridge,
//! addresses, routes, neighbour entries, sysctls. The programs the harness measures
//! (`iptables-restore`, `iptables`, `iperf3`) are started from a thread that entered the
//! namespace, so the child process is born there (no `nsenter`, no `ip netns exec`);
//! counters are read through `/proc/net` from such a thread.
use std::fs::File;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::bench::error::{BenchError, Result};
use crate::bench::scenario::{self, BRIDGE, GATEWAY, PREFIX};
use crate::netlink::{self, NetlinkError, Rtnl, VethPeer};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The outside host's link: the host's address on it, the outside host's, the prefix.
const EXT_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const EXT_OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const EXT_PREFIX: u8 = 24;

/// Runs `fut` (netlink work) to completion on a runtime of its own, dropped afterwards with
/// every netlink socket opened on it. Blocking: call it from plain (non-async) code.
pub fn block_on<T>(fut: impl Future<Output = Result<T>>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetlinkError::Io {
            op: "starting a netlink runtime".into(),
            source,
        })?;
    runtime.block_on(fut)
}

/// Runs `program args…` on the calling thread's namespace, feeding `stdin` when given; its
/// stdout, or an error with stderr.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let cmdline = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BenchError::Command {
            command: cmdline(),
            detail: e.to_string(),
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| BenchError::Command {
                command: cmdline(),
                detail: format!("writing stdin: {e}"),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| BenchError::Command {
        command: cmdline(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        detail.truncate(2000);
        return Err(BenchError::Command {
            command: cmdline(),
            detail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace `bwb-<pid>-<n>-<tag>`, deleted (with its interfaces) on drop.
#[derive(Debug)]
pub struct Netns {
    ns: netlink::Netns,
}

impl Netns {
    /// Creates the namespace with loopback up and IPv6 off (no router solicitations or
    /// neighbour discovery in the measured traffic).
    pub async fn new(tag: &str) -> Result<Self> {
        let name = format!(
            "bwb-{}-{}-{tag}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Netns {
            ns: netlink::Netns::create(&name)?,
        };
        ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1")?;
        ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1")?;
        let rtnl = ns.rtnl().await?;
        let lo = rtnl.index_of("lo").await?;
        rtnl.set_up(lo).await?;
        Ok(ns)
    }

    /// Its name (`/run/netns/<name>`).
    pub fn name(&self) -> &str {
        self.ns.label()
    }

    /// The namespace itself, for [`crate::netlink`] calls.
    pub fn netns(&self) -> &netlink::Netns {
        &self.ns
    }

    /// An rtnetlink handle on this namespace (inside [`block_on`]).
    pub async fn rtnl(&self) -> Result<Rtnl> {
        Ok(self.ns.rtnl().await?)
    }

    /// Runs `program args…` inside the namespace, with `stdin` fed: the program is started
    /// from a thread that entered the namespace, so it runs there.
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
        self.ns.run_scoped(|| run(program, args, stdin))?
    }

    /// Starts `command` inside the namespace (for long-running helpers such as an iperf3
    /// server); the caller owns, kills and reaps the child.
    pub fn spawn(&self, command: &mut Command) -> Result<Child> {
        let child = self.ns.run_scoped(|| command.spawn())?;
        child.map_err(|e| BenchError::Command {
            command: format!("{:?}", command.get_program()),
            detail: e.to_string(),
        })
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result.
    pub fn within<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.ns.run(f)?
    }

    /// Writes `value` to `/proc/sys/<key>` of this namespace (`net/…` keys only: they are
    /// per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        Ok(self
            .ns
            .run_scoped(|| netlink::set_net_sysctl(key, value))??)
    }

    /// Opens `/proc/net/<file>` as this namespace sees it; the file keeps that view.
    pub fn open_proc_net(&self, file: &str) -> Result<ProcFile> {
        let path = format!("/proc/thread-self/net/{file}");
        self.ns
            .run_scoped(|| File::open(&path))?
            .map(ProcFile)
            .map_err(|e| BenchError::io(path, e))
    }
}

/// A `/proc/net` file opened inside a namespace, re-read from the start on each read.
#[derive(Debug)]
pub struct ProcFile(File);

impl ProcFile {
    /// The file's current contents.
    pub fn read(&mut self) -> Result<String> {
        let mut s = String::new();
        self.0
            .seek(SeekFrom::Start(0))
            .and_then(|_| self.0.read_to_string(&mut s))
            .map_err(|e| BenchError::io("/proc/net", e))?;
        Ok(s)
    }
}

/// Counters of one interface, from `/proc/net/dev`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DevCounters {
    /// Packets received.
    pub rx_packets: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Packets dropped on transmit.
    pub tx_dropped: u64,
}

/// Reads an interface's counters from a namespace's `/proc/net/dev`.
#[derive(Debug)]
pub struct DevReader {
    file: ProcFile,
    ifname: String,
}

impl DevReader {
    /// A reader for `ifname` in `ns`.
    pub fn new(ns: &Netns, ifname: &str) -> Result<Self> {
        Ok(DevReader {
            file: ns.open_proc_net("dev")?,
            ifname: ifname.to_string(),
        })
    }

    /// The counters now.
    pub fn read(&mut self) -> Result<DevCounters> {
        let text = self.file.read()?;
        let prefix = format!("{}:", self.ifname);
        let line = text
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(&prefix))
            .ok_or_else(|| BenchError::measure("counters", format!("{} not found", self.ifname)))?;
        let f: Vec<u64> = line[prefix.len()..]
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        Ok(DevCounters {
            rx_packets: get(1),
            rx_dropped: get(3),
            tx_packets: get(9),
            tx_dropped: get(11),
        })
    }
}

/// A container: its namespace, address and MAC, and the name of its host-side veth.
#[derive(Debug)]
pub struct ContainerNs {
    /// The container's namespace (its interface is `eth0`).
    pub ns: Netns,
    /// The scenario's facts about it.
    pub info: scenario::Container,
    /// Its veth's peer in the host namespace.
    pub host_if: String,
}

/// What sits in the host namespace between the containers' veths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fabric {
    /// A kernel bridge `docker0` (172.17.0.1/16) with every host-side veth as a port.
    Bridge,
    /// Bare host-side veths, for bridgewall's AF_XDP ports.
    Bare,
}

/// The whole topology. Field order: containers and the outside host go before the host.
#[derive(Debug)]
pub struct Topology {
    /// The containers, in [`scenario::containers`] order.
    pub containers: Vec<ContainerNs>,
    /// The outside host (198.18.0.2, routed through the host's 198.18.0.1).
    pub outside: Netns,
    /// The Docker host's namespace.
    pub host: Netns,
    /// How the host joins the containers.
    pub fabric: Fabric,
}

impl Topology {
    /// Builds the namespaces, veths and addresses for `fabric`; `tag` names the path.
    pub fn build(tag: &str, fabric: Fabric) -> Result<Self> {
        block_on(Self::build_async(tag, fabric))
    }

    async fn build_async(tag: &str, fabric: Fabric) -> Result<Self> {
        let host = Netns::new(&format!("{tag}-host")).await?;
        let outside = Netns::new(&format!("{tag}-out")).await?;
        // Dropped before the host on failure (locals drop in reverse order).
        let mut containers = Vec::new();
        let mut inside = Vec::new();
        // The host routes (published ports, the outside host); set before the links exist.
        host.sysctl("net/ipv4/ip_forward", "1")?;
        let h = host.rtnl().await?;
        let bridge = match fabric {
            Fabric::Bridge => {
                let br = h.add_bridge(BRIDGE).await?;
                h.add_address(br, IpAddr::V4(GATEWAY), PREFIX).await?;
                h.set_up(br).await?;
                Some(br)
            }
            Fabric::Bare => None,
        };
        for info in scenario::containers() {
            let ns = Netns::new(&format!("{tag}-{}", info.name)).await?;
            let host_if = format!("veth{}", info.port);
            let idx = h
                .add_veth(
                    &host_if,
                    VethPeer {
                        name: "eth0",
                        netns: Some(ns.netns()),
                        mac: Some(info.mac),
                        mtu: None,
                    },
                )
                .await?;
            let c = ns.rtnl().await?;
            let eth0 = c.index_of("eth0").await?;
            c.add_address(eth0, IpAddr::V4(info.ip), PREFIX).await?;
            c.set_up(eth0).await?;
            c.add_route_v4(Ipv4Addr::UNSPECIFIED, 0, GATEWAY).await?;
            if let Some(br) = bridge {
                h.set_master(idx, br).await?;
            }
            h.set_up(idx).await?;
            inside.push((c, eth0));
            containers.push(ContainerNs { ns, info, host_if });
        }
        let ext = h
            .add_veth(
                "ext0",
                VethPeer {
                    name: "eth0",
                    netns: Some(outside.netns()),
                    mac: None,
                    mtu: None,
                },
            )
            .await?;
        h.add_address(ext, IpAddr::V4(EXT_HOST), EXT_PREFIX).await?;
        h.set_up(ext).await?;
        let o = outside.rtnl().await?;
        let eth0 = o.index_of("eth0").await?;
        o.add_address(eth0, IpAddr::V4(EXT_OUTSIDE), EXT_PREFIX)
            .await?;
        o.set_up(eth0).await?;
        o.add_route_v4(Ipv4Addr::UNSPECIFIED, 0, EXT_HOST).await?;
        prime_neighbours(&containers, &inside).await?;
        Ok(Topology {
            containers,
            outside,
            host,
            fabric,
        })
    }

    /// Teaches a kernel bridge where every container is: each sends one UDP datagram to the
    /// gateway's discard port (the bridge learns its MAC), so the measured frames are not
    /// flooded.
    pub fn teach_bridge(&self) -> Result<()> {
        for c in &self.containers {
            c.ns.within(|| {
                let s = std::net::UdpSocket::bind("0.0.0.0:0")
                    .map_err(|e| BenchError::measure("prime", e))?;
                let _ = s.send_to(b"hello", (GATEWAY, 9));
                Ok(())
            })?;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        Ok(())
    }

    /// The container at `index` ([`scenario::CLIENT`], [`scenario::SERVER`], …).
    pub fn container(&self, index: usize) -> &ContainerNs {
        &self.containers[index]
    }

    /// The server's address.
    pub fn server_ip(&self) -> Ipv4Addr {
        self.containers[scenario::SERVER].info.ip
    }
}

/// Static neighbour entries between the containers, so no ARP is in the measured traffic
/// and no path floods while it learns. `inside[i]` is container `i`'s handle and `eth0`.
async fn prime_neighbours(containers: &[ContainerNs], inside: &[(Rtnl, u32)]) -> Result<()> {
    for (c, (rtnl, eth0)) in containers.iter().zip(inside) {
        for other in containers {
            if other.info.name == c.info.name {
                continue;
            }
            rtnl.replace_neighbour(*eth0, IpAddr::V4(other.info.ip), other.info.mac)
                .await?;
        }
    }
    Ok(())
}
