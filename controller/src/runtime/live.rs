//! What the control API changes and reads while the dataplane runs: the user's rules and
//! modules (each change a hot swap that keeps the policy in force when the new one does not
//! build), audit mode, capture taps, event rings, and the raw counters.
use std::sync::Arc;
use std::time::Duration;

use dataplane::counters::Snapshot as CounterSnapshot;
use dataplane::events::EventRing;
use dataplane::phy::tap::TapControl;
use dataplane::worker::WorkerError;

use super::policy::{self, UserModules, UserRules};
use super::{BridgeRuntime, RuntimeError};

/// A port of the dataplane as people name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortName {
    /// The dataplane port id.
    pub port: u16,
    /// The container's name, or `gateway`.
    pub name: String,
    /// The host-side interface.
    pub ifname: String,
    /// The Docker network the port is on.
    pub network: String,
}

impl BridgeRuntime {
    /// The user's rules in force.
    pub fn user_rules(&self) -> &UserRules {
        &self.opts.user_rules
    }

    /// The user's modules in force (as given).
    pub fn user_modules(&self) -> &UserModules {
        &self.opts.user_modules
    }

    /// Where live rule edits are written.
    pub fn rules_path(&self) -> Option<&std::path::Path> {
        self.opts.rules_path.as_deref()
    }

    /// Builds the policy for `rules` and `modules` and swaps it in; on any error the policy,
    /// rules and modules in force stay. Returns the generation now in force.
    pub fn reconfigure(
        &mut self,
        rules: UserRules,
        modules: UserModules,
    ) -> Result<u64, RuntimeError> {
        let loaded = modules.load(&self.wasm)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let built = policy::build(
            &self.wasm,
            &self.state,
            &self.host,
            &rules,
            &loaded,
            generation,
        )?;
        let previous = std::mem::replace(&mut self.policy, built);
        if let Err(e) = self.install_policy() {
            self.policy = previous;
            return Err(e);
        }
        self.opts.user_rules = rules;
        self.opts.user_modules = modules;
        Ok(generation)
    }

    /// Audit mode on or off for the whole dataplane, from the next batch of every worker.
    pub fn set_audit(&mut self, on: bool) -> Result<(), RuntimeError> {
        let dp = self.dataplane.as_ref().ok_or(WorkerError::WorkerGone(0))?;
        dp.set_audit(on);
        self.opts.audit = on;
        Ok(())
    }

    /// Whether audit mode is on.
    pub fn audit(&self) -> bool {
        self.opts.audit
    }

    /// The capture switch of the port called `name`: a container (its first network), a
    /// host interface, `gateway` (the first network's gateway) or `gateway:NETWORK`.
    pub fn tap(&self, name: &str) -> Option<Arc<TapControl>> {
        let port = self
            .port_names()
            .into_iter()
            .find(|p| {
                p.name == name
                    || p.ifname == name
                    || (p.name == "gateway" && name == format!("gateway:{}", p.network))
            })?
            .port;
        self.taps.get(&port).cloned()
    }

    /// The workers' verdict event rings (for `monitor`).
    pub fn event_rings(&self) -> Vec<Arc<EventRing>> {
        self.dataplane
            .as_ref()
            .map(|dp| dp.events())
            .unwrap_or_default()
    }

    /// Every port with its name: the gateways first (by port id), then the containers by
    /// port id.
    pub fn port_names(&self) -> Vec<PortName> {
        let mut v: Vec<PortName> = self
            .gateways()
            .map(|(network, _, ifname, port)| PortName {
                port,
                name: "gateway".to_string(),
                ifname: ifname.to_string(),
                network: network.to_string(),
            })
            .collect();
        v.sort_by_key(|p| p.port);
        let mut containers: Vec<PortName> = self
            .attached
            .values()
            .map(|a| PortName {
                port: a.port,
                name: a.container.clone(),
                ifname: a.host_ifname.clone(),
                network: a.network.clone(),
            })
            .collect();
        containers.sort_by_key(|p| p.port);
        v.extend(containers);
        v
    }

    /// Each worker's counters.
    pub fn counter_snapshots(&self) -> Vec<CounterSnapshot> {
        self.dataplane
            .iter()
            .flat_map(|dp| dp.counters())
            .map(|c| c.snapshot())
            .collect()
    }

    /// Time since the dataplane started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Policy swaps so far: (count, total time, the last one's time); a swap's time is
    /// instantiating the policy for every worker and handing it over.
    pub fn swaps(&self) -> (u64, Duration, Duration) {
        self.swaps
    }

    /// Swap durations as a histogram (for the metrics).
    pub fn swap_histogram(&self) -> &crate::metrics::LatencyHistogram {
        &self.swap_hist
    }

    /// Where every frame is, per worker and place.
    pub fn frame_account(&self) -> Result<dataplane::worker::FrameAccount, RuntimeError> {
        let dp = self.dataplane.as_ref().ok_or(WorkerError::WorkerGone(0))?;
        Ok(dp.frames()?)
    }
}
