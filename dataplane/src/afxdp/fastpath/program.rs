//! [`FastPath`]: the control side — the loaded program, the device table (`bw_ports`) and
//! the TCX ingress links it owns. Stays on the controller thread; the flow maps go to the
//! worker through [`FastPath::take_flows`].
use std::collections::BTreeMap;
use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::tc::TcAttachOptions;
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};

use super::abi::{ConfigEntry, FlowKey, FlowValue, PortEntry};
use super::error::FastPathError;
use super::flows::KernelFlows;
use super::test_run::{self, TestRun};
use crate::afxdp::{AfXdpError, if_index};
use crate::phy::PortId;

/// Name of the classifier in the object.
pub const PROGRAM_NAME: &str = "bw_fastpath";
/// Map names in the object.
const PORTS_MAP: &str = "bw_ports";
const FLOWS_MAP: &str = "bw_flows";
const CONFIG_MAP: &str = "bw_config";
const STATS_MAP: &str = "bw_stats";

/// The compiled program (`dataplane/bpf/fastpath.bpf.o`, committed; see `bpf/build.sh`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/fastpath.bpf.o"))
}

/// Load-time settings of the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPathConfig {
    /// Capacity of the kernel flow table (`bw_flows`); kernel memory is reserved for all of
    /// it up front. Default 65,536.
    pub max_flows: u32,
}

impl Default for FastPathConfig {
    fn default() -> Self {
        Self { max_flows: 65_536 }
    }
}

/// One device the program is attached to.
struct Attachment {
    ifname: String,
    /// Dropping it closes the link's descriptor, which detaches the program.
    _link: aya::programs::tc::SchedClassifierLink,
}

/// The loaded fast-path program with its device table and TCX links. Nothing is pinned:
/// dropping it — or the process dying, even by SIGKILL — detaches every link and unloads the
/// program (the maps live on while a [`KernelFlows`] holds them).
pub struct FastPath {
    // Links first: they go before the program on drop.
    links: BTreeMap<u32, Attachment>,
    ports: HashMap<MapData, u32, PortEntry>,
    flows: Option<KernelFlows>,
    ebpf: Ebpf,
}

impl FastPath {
    /// Loads the embedded object (creating its maps, `bw_flows` sized `config.max_flows`)
    /// and the program through the verifier. Attaches nothing.
    pub fn load(config: FastPathConfig) -> Result<Self, FastPathError> {
        if config.max_flows == 0 {
            return Err(FastPathError::Config("max_flows must be at least 1".into()));
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(FLOWS_MAP, config.max_flows)
            .load(object())
            .map_err(|e| FastPathError::Load(Box::new(e)))?;
        let prog = classifier(&mut ebpf)?;
        prog.load()
            .map_err(|e| FastPathError::program(format!("loading {PROGRAM_NAME}"), e))?;

        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(FastPathError::Missing { kind: "map", name })
        };
        let (ports, flows, cfg, stats) = (
            take(PORTS_MAP)?,
            take(FLOWS_MAP)?,
            take(CONFIG_MAP)?,
            take(STATS_MAP)?,
        );
        let ports = HashMap::<MapData, u32, PortEntry>::try_from(ports)
            .map_err(|e| FastPathError::map(PORTS_MAP, "open", e))?;
        let flows_fd = match &flows {
            aya::maps::Map::HashMap(data) => {
                data.fd().as_fd().try_clone_to_owned().map_err(|e| {
                    FastPathError::Walk(AfXdpError::from_errno(
                        "dup(bw_flows)",
                        e.raw_os_error().unwrap_or(0),
                    ))
                })?
            }
            _ => {
                return Err(FastPathError::Missing {
                    kind: "hash map",
                    name: FLOWS_MAP,
                });
            }
        };
        let flows = HashMap::<MapData, FlowKey, FlowValue>::try_from(flows)
            .map_err(|e| FastPathError::map(FLOWS_MAP, "open", e))?;
        let cfg = Array::<MapData, ConfigEntry>::try_from(cfg)
            .map_err(|e| FastPathError::map(CONFIG_MAP, "open", e))?;
        let stats = PerCpuArray::<MapData, u64>::try_from(stats)
            .map_err(|e| FastPathError::map(STATS_MAP, "open", e))?;
        Ok(Self {
            links: BTreeMap::new(),
            ports,
            flows: Some(KernelFlows::new(
                (flows, flows_fd),
                cfg,
                stats,
                config.max_flows,
            )),
            ebpf,
        })
    }

    /// Attaches the program at TCX ingress of `ifname` (resolved in the calling thread's
    /// network namespace), after recording the device as port `port` whose upcalls go to
    /// `upcall_ifindex`. The link is owned here. Returns the device's ifindex, the key of
    /// [`FastPath::detach`].
    pub fn attach(
        &mut self,
        ifname: &str,
        port: PortId,
        upcall_ifindex: u32,
    ) -> Result<u32, FastPathError> {
        let ifindex = if_index(ifname).map_err(FastPathError::Interface)?;
        if self.links.contains_key(&ifindex) {
            return Err(FastPathError::AlreadyAttached {
                ifname: ifname.to_owned(),
                ifindex,
            });
        }
        // The port entry first: the program drops frames of devices it does not know.
        self.register_port(ifindex, port, upcall_ifindex)?;
        let attached = classifier(&mut self.ebpf).and_then(|prog| {
            let id = prog
                .attach_with_options(
                    ifname,
                    TcAttachType::Ingress,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| {
                    FastPathError::program(format!("TCX ingress attach to {ifname}"), e)
                })?;
            prog.take_link(id)
                .map_err(|e| FastPathError::program(format!("taking the TCX link of {ifname}"), e))
        });
        match attached {
            Ok(link) => {
                self.links.insert(
                    ifindex,
                    Attachment {
                        ifname: ifname.to_owned(),
                        _link: link,
                    },
                );
                Ok(ifindex)
            }
            Err(e) => {
                let _ = self.unregister_port(ifindex);
                Err(e)
            }
        }
    }

    /// Detaches the program from device `ifindex` (dropping its link) and removes its
    /// `bw_ports` entry. `false` when it was not attached there. Works after the device
    /// disappeared (the kernel already removed the link then).
    pub fn detach(&mut self, ifindex: u32) -> Result<bool, FastPathError> {
        // The link before the port entry: an attached program never sees its device unknown.
        let Some(att) = self.links.remove(&ifindex) else {
            return Ok(false);
        };
        drop(att);
        self.unregister_port(ifindex)?;
        Ok(true)
    }

    /// Number of devices the program is attached to.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// The devices the program is attached to: (ifindex, name at attach time).
    pub fn attachments(&self) -> impl Iterator<Item = (u32, &str)> {
        self.links.iter().map(|(i, a)| (*i, a.ifname.as_str()))
    }

    /// Writes the `bw_ports` entry of `ifindex` without attaching anything: for devices
    /// whose program is attached by other means, and for test runs (which see
    /// `skb->ifindex` = the ifindex passed to [`FastPath::test_run`]).
    pub fn register_port(
        &mut self,
        ifindex: u32,
        port: PortId,
        upcall_ifindex: u32,
    ) -> Result<(), FastPathError> {
        let entry = PortEntry {
            port,
            flags: 0,
            upcall_ifindex,
        };
        self.ports
            .insert(ifindex, entry, 0)
            .map_err(|e| FastPathError::map(PORTS_MAP, "insert", e))
    }

    /// Removes the `bw_ports` entry of `ifindex` (frames from it are then dropped, counted as
    /// unknown_port); `false` when there was none.
    pub fn unregister_port(&mut self, ifindex: u32) -> Result<bool, FastPathError> {
        match self.ports.remove(&ifindex) {
            Ok(()) => Ok(true),
            Err(e) if super::error::map_errno(&e) == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(FastPathError::map(PORTS_MAP, "remove", e)),
        }
    }

    /// Hands out the flow table, generation and counters (once per load) for the worker.
    pub fn take_flows(&mut self) -> Result<KernelFlows, FastPathError> {
        self.flows.take().ok_or(FastPathError::FlowsTaken)
    }

    /// Runs the program once on `frame` through `BPF_PROG_TEST_RUN`, as if it arrived on
    /// device `ifindex` of the calling thread's namespace (1, loopback, always exists;
    /// register it with [`FastPath::register_port`] first). Redirects are not performed;
    /// maps and counters are updated as for a real frame.
    pub fn test_run(&self, frame: &[u8], ifindex: u32) -> Result<TestRun, FastPathError> {
        let prog = self
            .ebpf
            .program(PROGRAM_NAME)
            .ok_or(FastPathError::Missing {
                kind: "program",
                name: PROGRAM_NAME,
            })?;
        let fd = prog
            .fd()
            .map_err(|e| FastPathError::program("getting the program descriptor", e))?;
        test_run::run(fd.as_fd(), frame, ifindex).map_err(FastPathError::TestRun)
    }
}

/// Names of the programs attached at TCX ingress of `ifname` (calling thread's namespace),
/// in run order: to check an attachment from outside, e.g. in health checks and tests.
pub fn tcx_ingress_programs(ifname: &str) -> Result<Vec<String>, FastPathError> {
    let (_revision, infos) = SchedClassifier::query_tcx(ifname, TcAttachType::Ingress)
        .map_err(|e| FastPathError::program(format!("TCX ingress query of {ifname}"), e))?;
    Ok(infos
        .iter()
        .map(|i| i.name_as_str().unwrap_or_default().to_owned())
        .collect())
}

fn classifier(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, FastPathError> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or(FastPathError::Missing {
            kind: "program",
            name: PROGRAM_NAME,
        })?
        .try_into()
        .map_err(|e| FastPathError::program(format!("{PROGRAM_NAME} as a classifier"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastpath_control_side_is_send() {
        fn send<T: Send>() {}
        send::<FastPath>();
    }

    #[test]
    fn fastpath_object_is_embedded_and_aligned() {
        let o = object();
        assert_eq!(&o[..4], b"\x7fELF");
        assert_eq!(o.as_ptr() as usize % 8, 0);
    }
}
