//! What the host's own network says about user rules: which source prefixes each interface
//! routes (so `-i eth0` means "from the gateway, from an address routed through eth0") and
//! which addresses are the host's (what `--ctorigdst` sees before Docker's DNAT). Read over
//! netlink in the bridge's namespace, and followed as routes change.
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::Duration;

use rules_wasm::docker::HostNetworks;
use rules_wasm::iptables::WithHostRoutes;
use rules_wasm::model::Cidr;

use crate::netlink::{
    NetlinkError, Netns, NsThread, RouteReader, RouteWatch, reverse_path_prefixes,
};

/// The host's interfaces with the prefixes each routes, and the host's addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostView {
    /// `(interface, prefixes whose longest-match route leaves through it)`, by name.
    pub routes: Vec<(String, Vec<Cidr>)>,
    /// Every address configured on the host's interfaces.
    pub addrs: Vec<IpAddr>,
}

impl HostView {
    /// Reads routes, links and addresses of `netns`. Needs a Tokio runtime.
    pub async fn read(netns: &Netns) -> Result<HostView, NetlinkError> {
        let rtnl = netns.rtnl().await?;
        let routes = RouteReader::open(netns).await?.routes().await?;
        let mut view = HostView::default();
        for link in rtnl.links().await? {
            let prefixes = reverse_path_prefixes(&routes, link.index);
            view.routes.push((link.name.clone(), prefixes));
            for (addr, _) in rtnl.addresses(link.index).await? {
                view.addrs.push(addr);
            }
        }
        view.routes.sort();
        view.addrs.sort();
        Ok(view)
    }

    /// Reads the view on a scoped thread inside `netns` (for callers without a runtime).
    pub fn read_blocking(netns: &Netns) -> Result<HostView, NetlinkError> {
        netns
            .run_scoped(|| -> Result<HostView, NetlinkError> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| NetlinkError::io("starting a netlink runtime", e))?;
                rt.block_on(HostView::read(netns))
            })
            .and_then(|r| r)
    }

    /// The resolver user rules are read with: the networks' containers and gateways, plus
    /// this view's interfaces and addresses.
    pub fn names<'a>(&'a self, net: &'a HostNetworks) -> WithHostRoutes<'a, HostNetworks> {
        WithHostRoutes {
            inner: net,
            routes: &self.routes,
            host_addrs: &self.addrs,
        }
    }
}

/// A thread in the bridge's namespace that watches the routing table and sends a fresh
/// [`HostView`] after each burst of changes (bursts are coalesced over 100 ms, so a routing
/// daemon replacing a table costs one rebuild).
pub struct HostWatch {
    rx: mpsc::Receiver<Result<HostView, NetlinkError>>,
    _thread: NsThread<()>,
}

/// How long after a route change more changes are awaited before the view is re-read.
const COALESCE: Duration = Duration::from_millis(100);

impl HostWatch {
    /// Starts watching `netns`.
    pub fn spawn(netns: &Netns) -> Result<HostWatch, NetlinkError> {
        let (tx, rx) = mpsc::channel();
        let inner = netns.try_clone()?;
        let thread = netns.spawn("bw-routes", move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(NetlinkError::io("starting a netlink runtime", e)));
                    return;
                }
            };
            rt.block_on(watch(inner, tx));
        })?;
        Ok(HostWatch {
            rx,
            _thread: thread,
        })
    }

    /// The newest view sent since the last call, if any (errors are logged and skipped:
    /// the rules in force stay).
    pub fn latest(&self) -> Option<HostView> {
        let mut newest = None;
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Ok(v) => newest = Some(v),
                Err(e) => tracing::warn!("following the host's routes: {e}"),
            }
        }
        newest
    }
}

async fn watch(netns: Netns, tx: mpsc::Sender<Result<HostView, NetlinkError>>) {
    let mut w = match RouteWatch::open(&netns).await {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    loop {
        if let Err(e) = w.changed().await {
            if tx.send(Err(e)).is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        tokio::time::sleep(COALESCE).await;
        // Drain what arrived meanwhile; the re-read below sees all of it.
        let _ = w.pending();
        if tx.send(HostView::read(&netns).await).is_err() {
            return;
        }
    }
}
