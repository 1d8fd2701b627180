//! bridgewall's dataplane as `bridgewall run` builds it, minus the controller: AF_XDP
//! ports (native XDP, copy mode, one shared UMEM) on the containers' host-side veths, one
//! worker thread pinned to CPU 1 running the engine (parse, L2 switch by the containers'
//! MACs, flow table, checksum completion), and the scenario's Docker policy (icc=false, the
//! link, the published port, N user rules) compiled to Wasm deciding every new flow. Rule
//! changes go through the product's path: parse, compile, load, hand to the worker
//! ([`Dataplane::set_policy`]), wait until it judges with the new generation.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dataplane::afxdp::{PollConfig, Umem, UmemConfig, XdpPort, XdpPortConfig, enter_netns};
use dataplane::engine::PortConfig;
use dataplane::policy::Policy;
use dataplane::wasm::{PolicyChain, PolicyModule, WasmConfig, WasmRuntime};
use dataplane::worker::{Dataplane, DataplaneConfig};
use rules_wasm::compiler::compile;
use rules_wasm::docker::{BridgeNetwork, HostNetworks, docker_ruleset};
use rules_wasm::iptables;

use crate::bench::error::{BenchError, Result};
use crate::bench::generator::WORKER_CPU;
use crate::bench::paths::{Path, PathKind};
use crate::bench::scenario::{self, SERVER};
use crate::bench::topology::{Fabric, Topology};

fn dp_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Dataplane(e.to_string())
}

fn policy_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Policy(e.to_string())
}

/// The dataplane in front of the containers.
pub struct Bridgewall {
    dp: Option<Dataplane<Umem, XdpPort>>,
    wasm: WasmRuntime,
    net: BridgeNetwork,
    generation: u64,
    user: Vec<String>,
    /// Counters at the last [`Path::stats`] call.
    last: (u64, u64, u64),
    // Last: the namespaces outlive the dataplane's ports.
    topo: Topology,
}

impl Bridgewall {
    /// Builds the topology with bare host-side veths and starts the dataplane on them with
    /// the scenario's policy and no user rule.
    pub fn new() -> Result<Self> {
        let topo = Topology::build("bw", Fabric::Bare)?;
        let net = scenario::network();
        let wasm = WasmRuntime::new(WasmConfig::default()).map_err(policy_err)?;
        let mut first = Some(load_policy(&wasm, &net, &[], 1)?.chain(1)?);

        // AF_XDP sockets and XDP links belong to the namespace of the thread creating them.
        let back = enter_netns(topo.host.name()).map_err(dp_err)?;
        let opened = (|| {
            let umem = Umem::new(UmemConfig {
                frame_count: 16 * 1024,
                frame_size: 2048,
            })?;
            let xdp = XdpPortConfig::default();
            let first = XdpPort::open(&umem, &topo.containers[0].host_if, &xdp, None)?;
            let share = first.umem_share()?;
            let mut ports = vec![first];
            for c in &topo.containers[1..] {
                ports.push(XdpPort::open_shared(&umem, &c.host_if, &xdp, &share)?);
            }
            Ok::<_, dataplane::afxdp::AfXdpError>((umem, ports))
        })();
        drop(back);
        let (umem, ports) = opened.map_err(dp_err)?;

        let config = DataplaneConfig {
            workers: 1,
            cpus: if num_cpus() > 1 {
                vec![WORKER_CPU]
            } else {
                Vec::new()
            },
            poll: PollConfig::default(),
            ..DataplaneConfig::default()
        };
        let mut dp = Dataplane::start(config, umem, |_| {
            Box::new(first.take().expect("one worker")) as Box<dyn Policy>
        })
        .map_err(dp_err)?;
        for (c, port) in topo.containers.iter().zip(ports) {
            let cfg = PortConfig {
                id: c.info.port,
                // One network: its gateway port is 0 (not attached here).
                network: 0,
                macs: vec![c.info.mac],
                ips: vec![IpAddr::V4(c.info.ip)],
                is_gateway: false,
                complete_checksums: true,
            };
            dp.add_port(cfg, port, 0).map_err(dp_err)?;
        }
        Ok(Bridgewall {
            dp: Some(dp),
            wasm,
            net,
            generation: 1,
            user: Vec::new(),
            last: (0, 0, 0),
            topo,
        })
    }

    /// Compiles the current rules as generation `generation + 1` and swaps them in.
    fn swap(&mut self) -> Result<()> {
        self.generation = swap_policy(
            self.dp.as_ref(),
            (&self.wasm, &self.net, &self.user),
            self.generation,
        )?;
        Ok(())
    }

    /// (frames the engine received from the client, sent to the server, dropped).
    fn counts(&self) -> (u64, u64, u64) {
        engine_counts(self.dp.as_ref())
    }
}

/// Compiles `user` rules on `net`'s policy as generation `generation + 1`, swaps it into
/// `dp`'s one worker and waits until it is in force; returns the new generation. Both
/// bridgewall paths change rules this way, the product's path.
pub(super) fn swap_policy(
    dp: Option<&Dataplane<Umem, XdpPort>>,
    (wasm, net, user): (&WasmRuntime, &BridgeNetwork, &[String]),
    generation: u64,
) -> Result<u64> {
    let generation = generation + 1;
    // One worker: its chain is built here, on the calling thread.
    let mut chain = Some(load_policy(wasm, net, user, generation)?.chain(generation)?);
    let dp = dp.ok_or_else(|| dp_err("dataplane stopped"))?;
    dp.set_policy(|_| Box::new(chain.take().expect("one worker")) as Box<dyn Policy>)
        .map_err(dp_err)?;
    if !dp.wait_generation(generation, Duration::from_secs(10)) {
        return Err(dp_err(format!(
            "generation {generation} not in force after 10 s"
        )));
    }
    Ok(generation)
}

/// (frames the engine of `dp` received from the client, sent to the server, dropped).
pub(super) fn engine_counts(dp: Option<&Dataplane<Umem, XdpPort>>) -> (u64, u64, u64) {
    let cs = scenario::containers();
    let (client, server) = (cs[scenario::CLIENT].port, cs[SERVER].port);
    dp.map_or((0, 0, 0), |dp| {
        dp.counters().iter().fold((0, 0, 0), |(rx, tx, drops), c| {
            let s = c.snapshot();
            (
                rx + s.port(client).rx_packets,
                tx + s.port(server).tx_packets,
                drops + s.total_drops(),
            )
        })
    })
}

/// CPUs available, to pin the worker only where it gets a core of its own.
pub(super) fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A compiled, loaded policy and whether it counts connections per source.
pub(super) struct Loaded {
    module: PolicyModule,
    /// Whether a rule uses `-m connlimit`: as `bridgewall run` does, the engine walks a
    /// source's flows on each new flow only then.
    counts_source_conns: bool,
}

impl Loaded {
    /// A chain of generation `generation` over this policy, configured as the controller
    /// configures it.
    pub(super) fn chain(&self, generation: u64) -> Result<PolicyChain> {
        let mut c = PolicyChain::instantiate(generation, std::slice::from_ref(&self.module))
            .map_err(policy_err)?;
        c.set_counts_source_conns(self.counts_source_conns);
        Ok(c)
    }
}

/// Parses the user rules against `net`, builds the Docker rule set and compiles and loads it.
pub(super) fn load_policy(
    wasm: &WasmRuntime,
    net: &BridgeNetwork,
    user: &[String],
    generation: u64,
) -> Result<Loaded> {
    let rules = iptables::parse(&user.join("\n"), net).map_err(policy_err)?;
    let set = docker_ruleset(&HostNetworks::from(net.clone()), rules, generation);
    let counts_source_conns = set.rules.iter().any(|r| r.m.conns.is_some());
    let compiled = compile(&set).map_err(policy_err)?;
    let module = wasm
        .load(&compiled.wasm, "docker-policy")
        .map_err(policy_err)?;
    Ok(Loaded {
        module,
        counts_source_conns,
    })
}

impl Path for Bridgewall {
    fn kind(&self) -> PathKind {
        PathKind::Bridgewall
    }
    fn description(&self) -> String {
        "bridgewall: AF_XDP ports (native XDP, copy mode, shared UMEM) + one worker (engine: switch, flow table, checksums) + the Docker policy compiled to Wasm".into()
    }
    fn topology(&self) -> &Topology {
        &self.topo
    }
    fn set_user_rules(&mut self, n: usize) -> Result<Duration> {
        let t0 = Instant::now();
        self.user = scenario::user_rules(n);
        self.swap()?;
        Ok(t0.elapsed())
    }
    fn insert_rule(&mut self, i: usize) -> Result<()> {
        self.user
            .push(format!("-A DOCKER-USER {}", scenario::churn_rule(i)));
        self.swap()
    }
    fn stats(&mut self) -> serde_json::Value {
        let (rx, tx, drops) = self.counts();
        let v = serde_json::json!({
            "engine_rx_from_client": rx - self.last.0,
            "engine_tx_to_server": tx - self.last.1,
            "engine_drops": drops - self.last.2,
        });
        self.last = (rx, tx, drops);
        v
    }
}

impl Drop for Bridgewall {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            if let Ok(f) = dp.frames()
                && !f.balanced()
            {
                eprintln!("bridgewall bench: frame accounting unbalanced at the end: {f:?}");
            }
            drop(dp.stop());
        }
    }
}
