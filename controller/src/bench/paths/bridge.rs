//! The kernel bridge with `bridge-nf-call-iptables=0`: no netfilter on bridged frames, the
//! fastest thing the kernel does and the baseline of every comparison.
use std::time::Duration;

use crate::bench::error::Result;
use crate::bench::paths::{Path, PathKind};
use crate::bench::topology::{Fabric, Topology};

/// A kernel bridge `docker0` in the host namespace, netfilter off.
#[derive(Debug)]
pub struct KernelBridge {
    topo: Topology,
}

impl KernelBridge {
    /// Builds the topology around a bridge with `bridge-nf-call-iptables=0`.
    pub fn new() -> Result<Self> {
        let topo = Topology::build("br", Fabric::Bridge)?;
        // Absent when br_netfilter is not built in: then nothing calls iptables anyway.
        let _ = topo.host.sysctl("net/bridge/bridge-nf-call-iptables", "0");
        topo.teach_bridge()?;
        Ok(KernelBridge { topo })
    }
}

impl Path for KernelBridge {
    fn kind(&self) -> PathKind {
        PathKind::Bridge
    }
    fn description(&self) -> String {
        "kernel bridge, bridge-nf-call-iptables=0 (no filtering: the baseline)".into()
    }
    fn topology(&self) -> &Topology {
        &self.topo
    }
    fn set_user_rules(&mut self, _n: usize) -> Result<Duration> {
        Ok(Duration::ZERO)
    }
    fn insert_rule(&mut self, _i: usize) -> Result<()> {
        Ok(())
    }
}
