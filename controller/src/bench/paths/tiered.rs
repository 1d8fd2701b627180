//! bridgewall's tiered datapath as `bridgewall run --datapath tiered` builds it, minus the
//! controller: the kernel fast path (a TCX ingress program, [`FastPath`]) on every container's
//! host-side veth forwards admitted flows in the kernel (`bpf_redirect_peer`: the containers
//! keep TSO); misses and everything unusual are upcalled with a tag through a veth pair
//! ([`UpcallPair`]) whose `r` end carries the one receiving AF_XDP port, read by the engine as
//! [`PortRole::Upcall`]. Container ports are AF_XDP sockets bound TX-only (no XDP program on
//! the containers' veths). One worker pinned to CPU 1 decides every new flow with the
//! scenario's Docker policy compiled to Wasm and installs both directions in the kernel's flow
//! table through [`KernelOffload`]. Rule changes go through the product's path as in
//! [`super::bridgewall`]; a swap re-decides every offloaded flow.
//!
//! Besides the counters of [`Path::stats`] (the kernel's own: forwarded and upcalled frames,
//! and the worker thread's CPU time), [`Tiered::deny_latency`] measures how long a policy
//! change takes to stop an offloaded flow.
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dataplane::afxdp::fastpath::{FastPath, FastPathConfig, FastPathStats};
use dataplane::afxdp::kernel_offload::KernelOffload;
use dataplane::afxdp::{PollConfig, Umem, UmemConfig, XdpPort, XdpPortConfig, enter_netns};
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::offload::{
    FlowOffload, KernelSeen, OffloadError, OffloadOp, OffloadTarget, PortRole,
};
use dataplane::phy::PortId;
use dataplane::policy::Policy;
use dataplane::wasm::{WasmConfig, WasmRuntime};
use dataplane::worker::{Dataplane, DataplaneConfig};
use rules_wasm::docker::BridgeNetwork;

use crate::bench::error::{BenchError, Result};
use crate::bench::generator::{Generator, Traffic, WORKER_CPU};
use crate::bench::measure::rate::frame_len;
use crate::bench::paths::bridgewall::{engine_counts, load_policy, num_cpus, swap_policy};
use crate::bench::paths::{Path, PathKind};
use crate::bench::scenario::{self, CLIENT, FLOOD_PORT, SERVER};
use crate::bench::topology::{DevReader, Fabric, Topology, block_on};
use crate::netlink::upcall::UpcallPair;

/// Capacity of the kernel flow table (two entries per offloaded flow), as the runtime's.
pub const MAX_KERNEL_FLOWS: u32 = 262_144;

/// Name of the upcall veth pair in the host namespace (`bwbupt` / `bwbupr`).
const UPCALL_NAME: &str = "bwbup";

/// Name the dataplane gives its first worker thread.
const WORKER_THREAD: &str = "bw-worker-0";

fn dp_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Dataplane(e.to_string())
}

/// The worker's [`KernelOffload`] behind a lock, so the harness can read the kernel's
/// counters while the worker drives the flow table (the lock is uncontended but for those
/// reads).
struct SharedOffload(Arc<Mutex<KernelOffload>>);

fn locked(m: &Mutex<KernelOffload>) -> MutexGuard<'_, KernelOffload> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FlowOffload for SharedOffload {
    fn apply(&mut self, op: &OffloadOp) -> std::result::Result<(), OffloadError> {
        locked(&self.0).apply(op)
    }
    fn set_generation(&mut self, generation: u64) {
        locked(&self.0).set_generation(generation)
    }
    fn sync(&mut self, clock_origin: u64, seen: &mut dyn FnMut(&KernelSeen) -> bool) -> bool {
        locked(&self.0).sync(clock_origin, seen)
    }
    fn kernel_stats(&self) -> Option<dataplane::offload::KernelPathStats> {
        locked(&self.0).kernel_stats()
    }
}

/// CPU time (user + system, ns) of thread `tid` of this process.
fn thread_cpu_ns(tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    Some((f.get(11)? + f.get(12)?) * 10_000_000)
}

/// Thread ids of this process named `name`.
fn threads_named(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|tid| {
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                .is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// What [`Tiered::deny_latency`] measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DenyLatency {
    /// From the start of the policy change (parse, compile, load, swap) to the last packet
    /// of the flow the server received.
    pub from_change: Duration,
    /// From the moment the new generation was in force on the worker to that last packet
    /// (zero when none arrived after it).
    pub from_in_force: Duration,
    /// How long the parse, compile, load and swap took.
    pub swap: Duration,
    /// Packets the kernel had forwarded before the change (the flow was offloaded).
    pub kernel_forwarded_before: u64,
    /// Packets the kernel's drop entries dropped after the change.
    pub kernel_dropped_after: u64,
    /// Frames the kernel upcalled after the change (the denied flow's, unless a drop entry
    /// stops them in the kernel).
    pub upcalls_after: u64,
}

/// The tiered dataplane in front of the containers.
pub struct Tiered {
    dp: Option<Dataplane<Umem, XdpPort>>,
    /// Dropped after the dataplane: detaches the program from every veth.
    fast: Option<FastPath>,
    offload: Arc<Mutex<KernelOffload>>,
    /// Removed with the host's namespace.
    upcall: UpcallPair,
    worker_tid: Option<u32>,
    wasm: WasmRuntime,
    net: BridgeNetwork,
    generation: u64,
    user: Vec<String>,
    /// Engine counters, kernel counters and worker CPU at the last [`Path::stats`] call.
    last: (u64, u64, u64),
    last_kernel: FastPathStats,
    /// Upcall path drops at the last call: (qdisc, `t`'s tx_dropped, `r`'s rx_dropped).
    last_upcall: (u64, u64, u64),
    last_cpu: (u64, Instant),
    // Last: the namespaces (and the upcall pair in the host's) outlive everything else.
    topo: Topology,
}

impl Tiered {
    /// Builds the topology with bare host-side veths, loads the fast path, creates the
    /// upcall pair, and starts the dataplane with the scenario's policy and no user rule.
    pub fn new() -> Result<Self> {
        let topo = Topology::build("bwt", Fabric::Bare)?;
        let net = scenario::network();
        let wasm = WasmRuntime::new(WasmConfig::default()).map_err(dp_err)?;
        let mut first = Some(load_policy(&wasm, &net, &[], 1)?.chain(1)?);

        // In the host namespace (deleted with it, so no guard of its own).
        let upcall = block_on(async {
            let rtnl = topo.host.rtnl().await?;
            Ok(UpcallPair::create(&rtnl, UPCALL_NAME).await?)
        })?;

        let mut fast = FastPath::load(FastPathConfig {
            max_flows: MAX_KERNEL_FLOWS,
        })
        .map_err(dp_err)?;
        let flows = fast.take_flows().map_err(dp_err)?;
        let offload = Arc::new(Mutex::new(KernelOffload::new(flows)));

        // AF_XDP sockets belong to the namespace of the thread creating them. The upcall
        // port receives (XDP redirect program on the pair's `r` end) and registers the UMEM;
        // the containers' ports only transmit (nothing on their veths).
        let back = enter_netns(topo.host.name()).map_err(dp_err)?;
        let opened = (|| {
            let umem = Umem::new(UmemConfig {
                frame_count: 16 * 1024,
                frame_size: 2048,
            })?;
            // As the product opens it: every port's upcalls share this socket.
            let fill = crate::runtime::tiered::UPCALL_FILL_FRAMES;
            let upcall_cfg = XdpPortConfig {
                fill_share: fill,
                rings: XdpPortConfig::default().rings.at_least(2 * fill),
                ..XdpPortConfig::default()
            };
            let up = XdpPort::open(&umem, upcall.rx_ifname(), &upcall_cfg, None)?;
            let share = up.umem_share()?;
            let tx_only = XdpPortConfig {
                receive: false,
                ..XdpPortConfig::default()
            };
            let mut ports = Vec::new();
            for c in &topo.containers {
                ports.push(XdpPort::open_shared(&umem, &c.host_if, &tx_only, &share)?);
            }
            Ok::<_, dataplane::afxdp::AfXdpError>((umem, up, ports))
        })();
        drop(back);
        let (umem, up, ports) = opened.map_err(dp_err)?;

        let engine = EngineConfig::default();
        // The upcall port takes the id after every container's, in a network of its own.
        let upcall_port = engine.max_ports as PortId;
        let config = DataplaneConfig {
            workers: 1,
            cpus: if num_cpus() > 1 {
                vec![WORKER_CPU]
            } else {
                Vec::new()
            },
            poll: PollConfig::default(),
            engine: EngineConfig {
                max_ports: engine.max_ports + 1,
                ..engine
            },
            ..DataplaneConfig::default()
        };
        let before = threads_named(WORKER_THREAD);
        let mut dp = Dataplane::start(config, umem, |_| {
            Box::new(first.take().expect("one worker")) as Box<dyn Policy>
        })
        .map_err(dp_err)?;
        // The thread names itself once it runs: look for it a little while.
        let mut worker_tid = None;
        for _ in 0..200 {
            worker_tid = threads_named(WORKER_THREAD)
                .into_iter()
                .find(|t| !before.contains(t));
            if worker_tid.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut this = Tiered {
            dp: None,
            fast: None,
            offload: offload.clone(),
            upcall: upcall.clone(),
            worker_tid,
            wasm,
            net,
            generation: 1,
            user: Vec::new(),
            last: (0, 0, 0),
            last_kernel: FastPathStats::default(),
            last_upcall: (0, 0, 0),
            last_cpu: (0, Instant::now()),
            topo,
        };
        // From here on, `this`'s drop stops the dataplane and detaches the program.
        dp.set_offload(0, Box::new(SharedOffload(offload)))
            .map_err(dp_err)?;
        let up_cfg = PortConfig {
            id: upcall_port,
            network: upcall_port,
            macs: Vec::new(),
            ips: Vec::new(),
            is_gateway: false,
            complete_checksums: false,
        };
        let added = dp.add_port_as(up_cfg, up, 0, PortRole::Upcall);
        this.dp = Some(dp);
        added.map_err(dp_err)?;

        // The fast path on each container's veth: attached from a thread in the host's
        // namespace (the names resolve there).
        let back = enter_netns(this.topo.host.name()).map_err(dp_err)?;
        let mut ifindexes = Vec::new();
        let attached = (|| {
            for c in &this.topo.containers {
                ifindexes.push(fast.attach(&c.host_if, c.info.port, upcall.tx_ifindex())?);
            }
            Ok::<_, dataplane::afxdp::fastpath::FastPathError>(())
        })();
        drop(back);
        this.fast = Some(fast);
        attached.map_err(dp_err)?;

        let dp = this
            .dp
            .as_mut()
            .ok_or_else(|| dp_err("dataplane stopped"))?;
        for ((c, port), ifindex) in this.topo.containers.iter().zip(ports).zip(ifindexes) {
            let cfg = PortConfig {
                id: c.info.port,
                // One network: its gateway port is 0 (not attached here).
                network: 0,
                macs: vec![c.info.mac],
                ips: vec![IpAddr::V4(c.info.ip)],
                is_gateway: false,
                complete_checksums: true,
            };
            let role = PortRole::Tiered(OffloadTarget {
                ifindex,
                peer: true,
            });
            dp.add_port_as(cfg, port, 0, role).map_err(dp_err)?;
        }
        this.last_cpu = (this.worker_cpu_ns(), Instant::now());
        Ok(this)
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

    /// The kernel fast path's counters (summed over CPUs, since it was loaded).
    pub fn kernel_stats(&self) -> Result<FastPathStats> {
        locked(&self.offload).flows().stats().map_err(dp_err)
    }

    /// Entries in the kernel flow table now (two per offloaded flow).
    pub fn kernel_entries(&self) -> usize {
        locked(&self.offload).flows().len()
    }

    /// Drops on the upcall path so far: (its qdisc's, the `t` end's tx_dropped, the `r`
    /// end's rx_dropped).
    pub fn upcall_drops(&self) -> Result<(u64, u64, u64)> {
        let d = block_on(async {
            let rtnl = self.topo.host.rtnl().await?;
            Ok(self.upcall.drops(&rtnl).await?)
        })?;
        Ok((
            d.qdisc.map_or(0, |q| q.drops),
            d.tx_link.tx_dropped,
            d.rx_link.rx_dropped,
        ))
    }

    /// CPU time (ns) the dataplane's worker thread used so far (0 if it was not found).
    pub fn worker_cpu_ns(&self) -> u64 {
        self.worker_tid.and_then(thread_cpu_ns).unwrap_or(0)
    }

    /// (frames the engine received from the client, sent to the server, dropped).
    fn counts(&self) -> (u64, u64, u64) {
        engine_counts(self.dp.as_ref())
    }

    /// Policy change → offloaded flow denied: a paced UDP flow (one 5-tuple, `pps` packets/s)
    /// from the client to the server is let run until the kernel forwards it, then a user
    /// rule dropping exactly that flow is added through the product's path (parse, compile,
    /// load, swap); the time until the server's last packet of the flow is measured on its
    /// `eth0` counter, polled every 200 µs, after `quiet` of silence. The rule is removed
    /// afterwards.
    pub fn deny_latency(&mut self, pps: f64, quiet: Duration) -> Result<DenyLatency> {
        let topo = &self.topo;
        let (client, server) = (topo.container(CLIENT), topo.container(SERVER));
        let mut rx = DevReader::new(&server.ns, "eth0")?;
        let mut generator = Generator::start(Traffic {
            netns: client.ns.name().to_string(),
            ifname: "eth0".into(),
            src: (client.info.mac, client.info.ip),
            dst: (server.info.mac, server.info.ip),
            frame_len: frame_len(64),
            flows: 1,
            rate: Some(pps),
        })?;
        let rule = format!(
            "-A DOCKER-USER -s {}/32 -d {}/32 -p udp -m udp --dport {FLOOD_PORT} -j DROP",
            client.info.ip, server.info.ip
        );
        // A reply, so the flow is assured and offloaded (a one-way flow stays in userspace);
        // the generator stops on drop if it fails.
        std::thread::sleep(Duration::from_millis(100));
        reply(&server.ns, client.info.ip, 1)?;
        let outcome = (|| {
            std::thread::sleep(Duration::from_millis(400));
            let k0 = self.kernel_stats()?;
            let r0 = rx.read()?.rx_packets;
            std::thread::sleep(Duration::from_millis(200));
            let k1 = self.kernel_stats()?;
            if k1.forwarded <= k0.forwarded || rx.read()?.rx_packets <= r0 {
                return Err(BenchError::measure(
                    "deny latency",
                    format!("the flow is not forwarded in the kernel before the change: {k1:?}"),
                ));
            }
            let mut last = rx.read()?.rx_packets;
            let t0 = Instant::now();
            self.user.push(rule.clone());
            self.swap()?;
            let swap = t0.elapsed();
            let mut last_at = t0;
            let deadline = t0 + Duration::from_secs(5);
            loop {
                let now = Instant::now();
                let n = rx.read()?.rx_packets;
                if n != last {
                    last = n;
                    last_at = now;
                } else if now.duration_since(last_at) >= quiet && now > t0 + swap {
                    break;
                }
                if now > deadline {
                    return Err(BenchError::measure(
                        "deny latency",
                        "the flow still reaches the server 5 s after the change",
                    ));
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            let k2 = self.kernel_stats()?;
            Ok(DenyLatency {
                from_change: last_at.duration_since(t0),
                from_in_force: last_at.duration_since(t0 + swap),
                swap,
                kernel_forwarded_before: k1.forwarded,
                kernel_dropped_after: k2.dropped.saturating_sub(k1.dropped),
                upcalls_after: upcalls(&k2).saturating_sub(upcalls(&k1)),
            })
        })();
        let stopped = generator.stop();
        // Back to the rules as they were, also after a failure.
        let had = self.user.len();
        self.user.retain(|r| *r != rule);
        if self.user.len() != had {
            self.swap()?;
        }
        stopped?;
        outcome
    }
}

impl Path for Tiered {
    fn kind(&self) -> PathKind {
        PathKind::BridgewallTiered
    }
    fn description(&self) -> String {
        "bridgewall tiered: kernel fast path (TCX ingress, bpf_redirect_peer) on the containers' veths forwarding offloaded flows; misses upcalled over a veth pair to one AF_XDP port + one worker (engine: switch, flow table, Wasm Docker policy) that installs both directions; container ports TX-only".into()
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
        let k = self.kernel_stats().unwrap_or_default();
        let p = &self.last_kernel;
        let up = self.upcall_drops().unwrap_or(self.last_upcall);
        let lu = self.last_upcall;
        let cpu = self.worker_cpu_ns();
        let now = Instant::now();
        let secs = now.duration_since(self.last_cpu.1).as_secs_f64().max(1e-9);
        let v = serde_json::json!({
            "engine_rx_from_client": rx.saturating_sub(self.last.0),
            "engine_tx_to_server": tx.saturating_sub(self.last.1),
            "engine_drops": drops.saturating_sub(self.last.2),
            "kernel_forwarded": k.forwarded.saturating_sub(p.forwarded),
            "kernel_dropped": k.dropped.saturating_sub(p.dropped),
            "kernel_upcalls": upcalls(&k).saturating_sub(upcalls(p)),
            "kernel_upcall_miss": k.upcall_miss.saturating_sub(p.upcall_miss),
            "kernel_upcall_flags": k.upcall_flags.saturating_sub(p.upcall_flags),
            "kernel_upcall_stale": k.upcall_stale.saturating_sub(p.upcall_stale),
            "kernel_upcall_unparsed": k.upcall_unparsed.saturating_sub(p.upcall_unparsed),
            "kernel_upcall_failed": k.upcall_failed.saturating_sub(p.upcall_failed),
            "kernel_redirect_failed": k.redirect_failed.saturating_sub(p.redirect_failed),
            "kernel_entries": self.kernel_entries(),
            "upcall_qdisc_drops": up.0.saturating_sub(lu.0),
            "upcall_tx_dropped": up.1.saturating_sub(lu.1),
            "upcall_rx_dropped": up.2.saturating_sub(lu.2),
            "worker_cores": cpu.saturating_sub(self.last_cpu.0) as f64 / 1e9 / secs,
        });
        self.last = (rx, tx, drops);
        self.last_kernel = k;
        self.last_upcall = up;
        self.last_cpu = (cpu, now);
        v
    }
}

/// Every upcall the kernel made (for any reason, failed ones included).
fn upcalls(k: &FastPathStats) -> u64 {
    k.upcall_miss
        + k.upcall_unparsed
        + k.upcall_flags
        + k.upcall_stale
        + k.upcall_failed
        + k.upcall_truncated
}

impl Drop for Tiered {
    fn drop(&mut self) {
        if let Some(dp) = self.dp.take() {
            if let Ok(f) = dp.frames()
                && !f.balanced()
            {
                eprintln!("tiered bench: frame accounting unbalanced at the end: {f:?}");
            }
            drop(dp.stop());
        }
        // Detaches the program from every veth; the namespaces go afterwards.
        self.fast.take();
    }
}

/// From the server's flood port, one datagram to each of the first `flows` flows' client
/// ports (see [`crate::bench::generator::flow_ports`]), paced (64 per millisecond) so the
/// path loses none; the socket is closed afterwards.
fn reply(
    server: &crate::bench::topology::Netns,
    client: std::net::Ipv4Addr,
    flows: usize,
) -> Result<()> {
    use crate::bench::generator::flow_ports;
    server.within(move || {
        let err = |e: std::io::Error| BenchError::measure("replies", e);
        let s = std::net::UdpSocket::bind(("0.0.0.0", FLOOD_PORT)).map_err(err)?;
        for i in 0..flows {
            let (sport, _) = flow_ports(i);
            s.send_to(b"reply", (client, sport)).map_err(err)?;
            if i % 64 == 63 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    })
}

/// Packets/s of the paced stream that establishes [`established_rate`]'s flows.
pub const PRIME_PPS: f64 = 20_000.0;

/// What [`established_rate`] measured on one path.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EstablishedRate {
    /// The path.
    pub path: String,
    /// Packets/s delivered to the server's `eth0`.
    pub pps: f64,
    /// Packets/s the generator sent.
    pub offered_pps: f64,
    /// Busy time of the whole machine per delivered packet, ns.
    pub cpu_ns_per_pkt: f64,
    /// Of it, softirq.
    pub softirq_ns_per_pkt: f64,
    /// This process's (generator and dataplane threads) per delivered packet, ns.
    pub process_ns_per_pkt: f64,
    /// The generator thread's own CPU per sent packet, ns.
    pub generator_ns_per_pkt: f64,
    /// [`Path::stats`] over the window.
    pub extra: serde_json::Value,
}

/// 64-byte UDP packets/s on established flows: as the harness's rate test (the generator
/// floods `flows` UDP flows, at most 64,512, from the client to the server), except that
/// once the flood runs the server answers each flow once from its port (one datagram per
/// flow, from a socket closed right after), so every flow is replied (conntrack:
/// ESTABLISHED; bridgewall: assured, and offloaded in the tiered datapath) before the
/// `secs`-second window is taken.
pub fn established_rate(path: &mut dyn Path, flows: usize, secs: f64) -> Result<EstablishedRate> {
    use crate::bench::measure::cpu::{CpuSample, JIFFY_NS};

    let flows = flows.clamp(1, scenario::SPORTS);
    let topo = path.topology();
    let (client, server) = (topo.container(CLIENT), topo.container(SERVER));
    let mut rx = DevReader::new(&server.ns, "eth0")?;
    let traffic = Traffic {
        netns: client.ns.name().to_string(),
        ifname: "eth0".into(),
        src: (client.info.mac, client.info.ip),
        dst: (server.info.mac, server.info.ip),
        frame_len: frame_len(64),
        flows,
        rate: Some(PRIME_PPS),
    };
    // First a paced stream, so no reply is lost in a saturated path: every flow is seen,
    // answered, and seen again (a tiered datapath offloads it then).
    let mut pacer = Generator::start(traffic.clone())?;
    let settle = Duration::from_secs_f64((2.0 * flows as f64 / PRIME_PPS).max(0.3));
    std::thread::sleep(settle);
    let primed = reply(&server.ns, client.info.ip, flows).and_then(|()| {
        std::thread::sleep(settle);
        pacer.stop()
    });
    drop(pacer);
    primed?;
    let mut generator = Generator::start(Traffic {
        rate: None,
        ..traffic
    })?;
    let measured = (|| -> Result<EstablishedRate> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = path.stats();
        let (rx0, tx0, g0, c0, t0) = (
            rx.read()?.rx_packets,
            generator.sent(),
            generator.cpu_ns(),
            CpuSample::now()?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (rx1, tx1, g1, c1, dt) = (
            rx.read()?.rx_packets,
            generator.sent(),
            generator.cpu_ns(),
            CpuSample::now()?,
            t0.elapsed().as_secs_f64(),
        );
        let extra = path.stats();
        let pkts = rx1.saturating_sub(rx0);
        let sent = tx1.saturating_sub(tx0);
        let cpu = c1.since(&c0);
        let per = |j: u64| j as f64 * JIFFY_NS / pkts.max(1) as f64;
        Ok(EstablishedRate {
            path: path.kind().name().into(),
            pps: pkts as f64 / dt,
            offered_pps: sent as f64 / dt,
            cpu_ns_per_pkt: per(cpu.busy),
            softirq_ns_per_pkt: per(cpu.softirq),
            process_ns_per_pkt: per(cpu.process),
            generator_ns_per_pkt: g1.saturating_sub(g0) as f64 / sent.max(1) as f64,
            extra,
        })
    })();
    let stopped = generator.stop();
    let r = measured?;
    stopped?;
    Ok(r)
}
