//! The kernel bridge with `bridge-nf-call-iptables=1` running Docker 20.10's own chains for
//! the scenario ([`crate::bench::docker_chains`]), with N user rules in `DOCKER-USER`, loaded with
//! `iptables-restore` (nft or legacy) inside the path's host namespace. Running the
//! iptables tools is what this path measures, so the harness runs them (the product never
//! does). Each path has its own namespace, so the nft and legacy tables never meet.
use std::time::{Duration, Instant};

use crate::bench::docker_chains;
use crate::bench::error::Result;
use crate::bench::paths::{Path, PathKind};
use crate::bench::scenario;
use crate::bench::topology::{Fabric, Topology};

/// Which iptables back end loads the rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavour {
    /// `iptables-nft` (Debian's default): rules become nftables expressions.
    Nft,
    /// `iptables-legacy`: the x_tables interpreter.
    Legacy,
}

impl Flavour {
    fn restore(self) -> &'static str {
        match self {
            Flavour::Nft => "iptables-nft-restore",
            Flavour::Legacy => "iptables-legacy-restore",
        }
    }
    fn iptables(self) -> &'static str {
        match self {
            Flavour::Nft => "iptables-nft",
            Flavour::Legacy => "iptables-legacy",
        }
    }
}

/// A kernel bridge with Docker's chains.
#[derive(Debug)]
pub struct DockerIptables {
    flavour: Flavour,
    rules: usize,
    topo: Topology,
}

impl DockerIptables {
    /// Builds the topology, turns bridge netfilter on, loads Docker's chains with no user rule.
    pub fn new(flavour: Flavour) -> Result<Self> {
        let tag = match flavour {
            Flavour::Nft => "nft",
            Flavour::Legacy => "leg",
        };
        let topo = Topology::build(tag, Fabric::Bridge)?;
        topo.host
            .sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
        let mut p = DockerIptables {
            flavour,
            rules: 0,
            topo,
        };
        p.set_user_rules(0)?;
        p.topo.teach_bridge()?;
        Ok(p)
    }
}

impl Path for DockerIptables {
    fn kind(&self) -> PathKind {
        match self.flavour {
            Flavour::Nft => PathKind::DockerNft,
            Flavour::Legacy => PathKind::DockerLegacy,
        }
    }
    fn description(&self) -> String {
        format!(
            "kernel bridge, bridge-nf-call-iptables=1, Docker 20.10's chains (icc=false, link, published port, DOCKER-USER) via {}",
            self.flavour.restore()
        )
    }
    fn topology(&self) -> &Topology {
        &self.topo
    }
    fn set_user_rules(&mut self, n: usize) -> Result<Duration> {
        let text = docker_chains::iptables_save(&scenario::network(), &scenario::user_rules(n));
        let t0 = Instant::now();
        self.topo
            .host
            .exec(self.flavour.restore(), &[], Some(&text))?;
        self.rules = n;
        Ok(t0.elapsed())
    }
    fn insert_rule(&mut self, i: usize) -> Result<()> {
        let rule = scenario::churn_rule(i);
        let mut args = vec!["-w", "-I", "DOCKER-USER", "1"];
        args.extend(rule.split_whitespace());
        self.topo.host.exec(self.flavour.iptables(), &args, None)?;
        Ok(())
    }
}
