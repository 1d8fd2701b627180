//! The takeover's own netlink session: a socket opened inside the bridge's namespace, driven
//! by a private single-threaded runtime, so that the takeover can be used — and, above all,
//! undone from `Drop` — whatever runtime (or none) the caller runs on.
//!
//! Also the few link operations [`Rtnl`] does not offer (MTU, a veth pair with both ends'
//! MTU, a link's MAC), spoken over the same socket.
use std::future::Future;

use super::TakeoverError;
use crate::netlink::{NetlinkError, Netns, Rtnl};

/// A netlink socket in one namespace plus the runtime that drives it.
pub(super) struct NlSession {
    /// The link operations shared with the rest of the controller.
    pub rtnl: Rtnl,
    /// Drives the socket's connection task, only while [`NlSession::block`] runs.
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for NlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NlSession")
            .field("netns", &self.rtnl.netns_label())
            .finish_non_exhaustive()
    }
}

impl NlSession {
    /// Opens a netlink socket inside `netns` (the socket keeps the namespace for life).
    pub(super) fn open(netns: &Netns) -> Result<NlSession, TakeoverError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(TakeoverError::Runtime)?;
        let rt = runtime.handle().clone();
        let op = format!("opening rtnetlink in netns {}", netns.label());
        let (conn, handle) = netns
            .run(move || {
                // The socket registers with the reactor of the runtime that will drive it.
                let _entered = rt.enter();
                rtnetlink::new_connection().map(|(conn, handle, _)| (conn, handle))
            })?
            .map_err(|e| NetlinkError::io(&op, e))?;
        runtime.spawn(conn);
        Ok(NlSession {
            rtnl: Rtnl::new(handle, netns.label().to_string()),
            runtime,
        })
    }

    /// Runs `fut` to completion on the private runtime. Inside another runtime's context
    /// (where nesting `block_on` would panic) it runs on a short-lived scoped thread, so this
    /// works from async code, plain threads and `Drop` alike; it blocks the caller meanwhile.
    pub(super) fn block<F>(&self, fut: F) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.runtime.block_on(fut);
        }
        std::thread::scope(|s| {
            match s.spawn(|| self.runtime.block_on(fut)).join() {
                Ok(out) => out,
                // The future panicked: let the panic continue in the caller.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// Whether an error means the link is gone (a container stopped and its veth went with it).
pub(super) fn is_gone(err: &NetlinkError) -> bool {
    match err {
        NetlinkError::NoSuchLink { .. } => true,
        NetlinkError::Io { source, .. } => source.raw_os_error() == Some(libc::ENODEV),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `block` must work from a plain thread and from inside a runtime (where a nested
    /// `block_on` panics): `Drop` may run in either. Reads links only. Needs root (setns).
    #[test]
    fn root_netns_block_works_inside_and_outside_a_runtime() {
        let nl = NlSession::open(&Netns::current().unwrap()).unwrap();
        let outside = nl.block(nl.rtnl.links()).unwrap();
        assert!(outside.iter().any(|l| l.name == "lo"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let inside = rt.block_on(async { nl.block(nl.rtnl.links()) }).unwrap();
        assert!(inside.iter().any(|l| l.name == "lo"));
    }
}
