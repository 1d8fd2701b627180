//! What the runtime holds for the tiered datapath (`--datapath tiered`; see
//! [`dataplane::offload`]): the kernel fast path (a tc/TCX program on every port's
//! interface, its maps and links) and the veth pair upcalls travel through to the AF_XDP
//! socket the engine reads.
//!
//! Lifetimes: the program's links are owned here (nothing pinned), so a killed process
//! leaves no program attached and the containers' veths, off every bridge, reach nothing:
//! cut off, as in the AF_XDP datapath. The upcall pair is a leftover then; the next start
//! and `bridgewall restore` remove it ([`remove_stale_upcalls`]).
use std::collections::BTreeMap;

use dataplane::afxdp::fastpath::{FastPath, FastPathConfig, FastPathError};
use dataplane::afxdp::kernel_offload::KernelOffload;
use dataplane::phy::PortId;

use crate::netlink::Netns;
use crate::netlink::upcall::UpcallPair;

use super::{RuntimeError, with_rtnl};

/// Frames the upcall port keeps posted for receive: every port's upcalls share it, so it
/// gets sixteen times a container port's share (its receive ring twice that).
pub const UPCALL_FILL_FRAMES: u32 = 1024;

/// Name prefix of the upcall veth pairs (`bwu<pid>t` / `bwu<pid>r`).
pub const UPCALL_PREFIX: &str = "bwu";

/// The kernel fast path and the upcall channel of a running tiered datapath.
pub(super) struct TieredPath {
    /// Dropped first: detaches the program from every port.
    fast: FastPath,
    upcall: Option<UpcallPair>,
    /// Ports the program is attached to: port id → interface index.
    attached: BTreeMap<PortId, u32>,
}

impl std::fmt::Debug for TieredPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredPath")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

fn fast_path_error(what: impl Into<String>) -> impl FnOnce(FastPathError) -> RuntimeError {
    let what = what.into();
    move |error| RuntimeError::FastPath { what, error }
}

/// Removes upcall pairs a killed bridgewall left in `netns`; returns how many.
pub fn remove_stale_upcalls(netns: &Netns) -> Result<usize, RuntimeError> {
    with_rtnl(netns, "removing leftover upcall veths", async |rtnl| {
        UpcallPair::remove_stale(rtnl, UPCALL_PREFIX).await
    })
}

impl TieredPath {
    /// Loads the fast path (its flow table sized `max_flows`) and creates the upcall pair in
    /// `netns`. Returns the flow cache for the dataplane's worker.
    pub(super) fn start(
        netns: &Netns,
        max_flows: u32,
    ) -> Result<(TieredPath, KernelOffload), RuntimeError> {
        remove_stale_upcalls(netns)?;
        let mut fast = FastPath::load(FastPathConfig { max_flows })
            .map_err(fast_path_error("loading the kernel fast path"))?;
        let flows = fast
            .take_flows()
            .map_err(fast_path_error("taking the kernel flow table"))?;
        let name = format!("{UPCALL_PREFIX}{}", std::process::id());
        let upcall = with_rtnl(netns, "creating the upcall veth pair", async |rtnl| {
            UpcallPair::create(rtnl, &name).await
        })?;
        tracing::info!(
            tx = upcall.tx_ifname(),
            rx = upcall.rx_ifname(),
            "tiered datapath: kernel fast path loaded, upcall pair up"
        );
        Ok((
            TieredPath {
                fast,
                upcall: Some(upcall),
                attached: BTreeMap::new(),
            },
            KernelOffload::new(flows),
        ))
    }

    /// The interface the upcall port's AF_XDP socket binds to.
    pub(super) fn upcall_ifname(&self) -> &str {
        self.upcall.as_ref().map_or("", UpcallPair::rx_ifname)
    }

    /// Attaches the fast path to `ifname` (port `port`) in `netns`; returns its interface
    /// index.
    pub(super) fn attach(
        &mut self,
        netns: &Netns,
        ifname: &str,
        port: PortId,
    ) -> Result<u32, RuntimeError> {
        let upcall = self.upcall.as_ref().map_or(0, UpcallPair::tx_ifindex);
        let fast = &mut self.fast;
        let ifindex = netns
            .run_scoped(|| fast.attach(ifname, port, upcall))
            .map_err(|error| RuntimeError::Netlink {
                what: format!("entering {} to attach the fast path", netns.label()),
                error,
            })?
            .map_err(fast_path_error(format!(
                "attaching the fast path to {ifname}"
            )))?;
        self.attached.insert(port, ifindex);
        Ok(ifindex)
    }

    /// Detaches the fast path from port `port` (its frames then reach nothing).
    pub(super) fn detach(&mut self, port: PortId) {
        if let Some(ifindex) = self.attached.remove(&port)
            && let Err(e) = self.fast.detach(ifindex)
        {
            tracing::warn!(port, "detaching the fast path: {e}");
        }
    }

    /// Frames the upcall path dropped so far: its queue's drops and the veths' own.
    pub(super) fn upcall_drops(&self, netns: &Netns) -> Result<u64, RuntimeError> {
        let Some(pair) = self.upcall.as_ref() else {
            return Ok(0);
        };
        with_rtnl(netns, "reading the upcall veths' drops", async |rtnl| {
            pair.drops(rtnl).await.map(|d| d.total())
        })
    }

    /// Detaches everything and deletes the upcall pair (after the upcall port closed).
    pub(super) fn stop(mut self, netns: &Netns) {
        for port in self.attached.keys().copied().collect::<Vec<_>>() {
            self.detach(port);
        }
        if let Some(pair) = self.upcall.take() {
            let deleted = with_rtnl(netns, "deleting the upcall veth pair", async |rtnl| {
                pair.delete(rtnl).await
            });
            if let Err(e) = deleted {
                tracing::warn!("{e}");
            }
        }
    }
}
