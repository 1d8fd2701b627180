//! Policy swaps must not stall a worker: a paced stream of many UDP flows runs through a
//! worker while compiled policies (as the controller builds them: one rule more each time,
//! loaded with the compiled policy's caps) are swapped in one after another, each in force
//! before the next. The receive port behaves like an AF_XDP socket: a frame that arrives
//! while the port has no fill frame posted is lost before the engine, as in the kernel. A
//! worker that stalls longer than its fill share lasts (64 frames: 3.2 ms at 20 kpps) loses
//! frames; the test asserts none is lost and reports the worker's longest gap between two
//! visits of the port. No root needed: the UMEM is anonymous memory.

use dataplane::afxdp::{PollConfig, Umem, UmemConfig};
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames};
use dataplane::policy::{Action, Policy};
use dataplane::sim::*;
use dataplane::wasm::{Caps, PolicyChain, WasmConfig, WasmRuntime};
use dataplane::worker::{Dataplane, DataplaneConfig, WorkerPort};
use rules_wasm::compiler::compile;
use rules_wasm::model::{Chain, Cidr, Match, Neg, PortRange, Rule, RuleSet, Target};
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The compiled policy's caps, as the controller loads it (`COMPILED_POLICY_CAPS`).
const CAPS: Caps = Caps {
    max_module_bytes: 1 << 30,
    max_memory_bytes: 1 << 30,
};
const RATE_PPS: u64 = 20_000;
const FLOWS: u16 = 1000;
const FILL_SHARE: usize = 64;

/// The kernel side of an AF_XDP socket in copy mode: frames arrive on the wire thread and
/// go into posted fill frames, or are dropped when none is posted (`rx_dropped`).
#[derive(Default)]
struct Wire {
    fill: VecDeque<u64>,
    rx: VecDeque<FrameDesc>,
    completion: VecDeque<u64>,
    rx_dropped: u64,
    delivered: u64,
    sent: u64,
    /// When the worker last took received frames, and the longest gap between two takes
    /// while frames were waiting (the stall the kernel sees).
    last_visit: Option<Instant>,
    max_gap: Duration,
    gaps_over_1ms: u64,
}

#[derive(Clone)]
struct KernelPort(Arc<Mutex<Wire>>);

impl KernelPort {
    fn new() -> Self {
        Self(Arc::new(Mutex::new(Wire::default())))
    }

    /// The kernel receiving `frame`: into a posted fill frame, or lost.
    fn arrive(&self, mem: &mut Umem, frame: &[u8]) {
        let mut w = self.0.lock().unwrap();
        match w.fill.pop_front() {
            Some(addr) => {
                mem.bytes_mut(addr, frame.len()).copy_from_slice(frame);
                w.rx.push_back(FrameDesc {
                    addr,
                    len: frame.len() as u32,
                });
                w.delivered += 1;
            }
            None => w.rx_dropped += 1,
        }
    }
}

impl Port<Umem> for KernelPort {
    fn fill(&mut self, _mem: &mut Umem, free: &mut FreeList) {
        let mut w = self.0.lock().unwrap();
        while w.fill.len() + w.rx.len() < FILL_SHARE {
            let Some(a) = free.pop() else { break };
            w.fill.push_back(a);
        }
    }
    fn receive(&mut self, _mem: &mut Umem, out: &mut DescBatch) {
        let mut w = self.0.lock().unwrap();
        let now = Instant::now();
        if let Some(last) = w.last_visit {
            let gap = now - last;
            if gap > w.max_gap {
                w.max_gap = gap;
            }
            if gap > Duration::from_millis(1) {
                w.gaps_over_1ms += 1;
            }
        }
        w.last_visit = Some(now);
        while out.spare() > 0 {
            let Some(d) = w.rx.pop_front() else { break };
            let _ = out.push(d);
        }
    }
    fn transmit(&mut self, _mem: &mut Umem, batch: &mut DescBatch) {
        let mut w = self.0.lock().unwrap();
        for d in batch.as_slice() {
            w.completion.push_back(d.addr);
        }
        w.sent += batch.len() as u64;
        batch.clear();
    }
    fn complete(&mut self, free: &mut FreeList) {
        let mut w = self.0.lock().unwrap();
        while let Some(a) = w.completion.pop_front() {
            free.push(a);
        }
    }
    fn frames_held(&self) -> PortFrames {
        let w = self.0.lock().unwrap();
        PortFrames {
            fill: w.fill.len(),
            rx: w.rx.len(),
            tx: 0,
            completion: w.completion.len(),
        }
    }
}

impl WorkerPort<Umem> for KernelPort {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    fn needs_visit(&self) -> bool {
        true
    }
    fn starved(&self) -> u64 {
        0
    }
    fn close(self) -> Vec<u64> {
        let mut w = self.0.lock().unwrap();
        let mut v: Vec<u64> = w.fill.drain(..).collect();
        v.extend(w.rx.drain(..).map(|d| d.addr));
        v.extend(w.completion.drain(..));
        v
    }
}

fn port_config(h: Host) -> PortConfig {
    PortConfig {
        id: h.port,
        network: 0,
        macs: vec![h.mac],
        ips: vec![IpAddr::V4(Ipv4Addr::from(h.ip))],
        is_gateway: h == GW,
        complete_checksums: false,
    }
}

/// The policy of generation `g`: `g` inserted DROP rules for other sources (as the churn
/// bench's `-I DOCKER-USER` rules), then accept everything.
fn ruleset(g: u64) -> RuleSet {
    let mut rules: Vec<Rule> = (0..g)
        .map(|i| {
            let m = Match {
                src: Some(Neg::is(Cidr::host(IpAddr::V4(Ipv4Addr::from(
                    0x0b00_0001 + i as u32,
                ))))),
                dport: Some(Neg::is(PortRange { lo: 443, hi: 443 })),
                proto: Some(Neg::is(17)),
                ..Match::default()
            };
            Rule::new(Chain::User, m, Target::Drop, format!("churn {i}"))
        })
        .collect();
    rules.push(Rule::new(
        Chain::Docker,
        Match::default(),
        Target::Accept,
        "accept",
    ));
    RuleSet::new(rules, g, Action::Drop)
}

/// Slow decide calls (over 200 µs wall), first call of a chain apart from the others, by
/// why the thread was off the CPU: blocked (a voluntary switch), preempted, neither.
#[derive(Default, Debug)]
struct CallStats {
    first_calls: u64,
    first_slow: [u64; 3],
    first_max: Duration,
    later_slow: [u64; 3],
    later_max: Duration,
    first_flt: i64,
}

static CALLS: Mutex<Option<CallStats>> = Mutex::new(None);

fn switches() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let get = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    (
        get("voluntary_ctxt_switches:"),
        get("nonvoluntary_ctxt_switches:"),
    )
}

struct Timed {
    inner: PolicyChain,
    calls: u64,
}

impl Policy for Timed {
    fn generation(&self) -> u64 {
        self.inner.generation()
    }
    fn counts_source_conns(&self) -> bool {
        false
    }
    fn decide(
        &mut self,
        records: &[dataplane::policy::PacketRecord],
        verdicts: &mut [dataplane::policy::VerdictRecord],
    ) {
        let ((v0, n0), f0, w0) = (switches(), minflt(), Instant::now());
        self.inner.decide(records, verdicts);
        let wall = w0.elapsed();
        let ((v1, n1), f1) = (switches(), minflt());
        let why = if v1 > v0 {
            0
        } else if n1 > n0 {
            1
        } else {
            2
        };
        let mut g = CALLS.lock().unwrap();
        let s = g.get_or_insert_with(CallStats::default);
        let slow = wall > Duration::from_micros(200);
        if self.calls == 0 {
            s.first_calls += 1;
            s.first_flt += f1 - f0;
            s.first_slow[why] += u64::from(slow);
            s.first_max = s.first_max.max(wall);
        } else {
            s.later_slow[why] += u64::from(slow);
            s.later_max = s.later_max.max(wall);
        }
        self.calls += 1;
    }
}

struct Outcome {
    swaps: u64,
    delivered: u64,
    rx_dropped: u64,
    max_gap: Duration,
    gaps_over_1ms: u64,
}

fn run(seconds: f64) -> Outcome {
    let umem = Umem::new(UmemConfig {
        frame_count: 1024,
        frame_size: FRAME_SIZE as u32,
    })
    .unwrap();
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    let load = |g: u64| {
        let wasm = compile(&ruleset(g)).unwrap().wasm;
        rt.load_with_caps(&wasm, &format!("docker-policy-g{g}"), CAPS)
            .unwrap()
    };
    let first = load(1);
    let chain = PolicyChain::instantiate(1, std::slice::from_ref(&first)).unwrap();
    let mut chain = Some(chain);
    let config = DataplaneConfig {
        workers: 1,
        engine: EngineConfig::default(),
        poll: PollConfig {
            // Busy-polling, so the worker never sleeps by choice: any time it spends off
            // the CPU blocked is a stall.
            spin_rounds: u32::MAX,
            sleep_timeout: Duration::from_micros(200),
        },
        ..Default::default()
    };
    let mut dp = Dataplane::start(config, umem.clone(), |_| {
        Box::new(chain.take().unwrap()) as Box<dyn Policy>
    })
    .unwrap();
    let ports: Vec<KernelPort> = HOSTS.iter().map(|_| KernelPort::new()).collect();
    for (h, p) in HOSTS.iter().zip(&ports) {
        dp.add_port(port_config(*h), p.clone(), 0).unwrap();
    }

    // The wire: a paced stream of FLOWS flows from PARENT to CHILD.
    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| udp_frame(PARENT, CHILD.mac, CHILD.ip, 10_000 + i, 5001, &[0; 18]))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let wire = {
        let (stop, port, mut mem) = (Arc::clone(&stop), ports[PARENT.port as usize].clone(), umem);
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = t0.elapsed().as_nanos() as u64 * RATE_PPS / 1_000_000_000;
                while sent < due {
                    port.arrive(&mut mem, &frames[(sent % u64::from(FLOWS)) as usize]);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(20));
            }
        })
    };
    // Let every flow be established, then forget the start-up gaps.
    std::thread::sleep(Duration::from_millis(300));
    {
        let mut w = ports[PARENT.port as usize].0.lock().unwrap();
        w.max_gap = Duration::ZERO;
        w.gaps_over_1ms = 0;
        w.rx_dropped = 0;
        w.delivered = 0;
    }
    let worker_tid = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "bw-worker-0")
        })
        .map(|e| e.path())
        .unwrap();
    eprintln!("worker task {}", worker_tid.display());
    let sampler = {
        let (stop, dir) = (Arc::clone(&stop), worker_tid.clone());
        std::thread::spawn(move || {
            let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
            let mut samples = 0u64;
            while !stop.load(Ordering::Relaxed) {
                samples += 1;
                let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat.get(i + 2..i + 3))
                    .unwrap_or("?");
                if state != "R" {
                    let wchan = std::fs::read_to_string(dir.join("wchan")).unwrap_or_default();
                    let stack = std::fs::read_to_string(dir.join("stack")).unwrap_or_default();
                    let top: Vec<&str> = stack
                        .lines()
                        .take(6)
                        .map(|l| l.split_whitespace().nth(1).unwrap_or(""))
                        .collect();
                    *seen
                        .entry(format!("{state} {wchan} {}", top.join("<")))
                        .or_default() += 1;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            (samples, seen)
        })
    };
    let status = |dir: &std::path::Path| {
        let s = std::fs::read_to_string(dir.join("status")).unwrap();
        let get = |k: &str| -> u64 {
            s.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        (
            get("voluntary_ctxt_switches:"),
            get("nonvoluntary_ctxt_switches:"),
        )
    };
    let sw0 = status(&worker_tid);
    let t0 = Instant::now();
    let mut g = 1;
    let mut module = first;
    while t0.elapsed().as_secs_f64() < seconds {
        g += 1;
        // As the controller: the new build replaces the old one (whose module then lives on
        // only in the chains the workers hold).
        module = {
            drop(module);
            load(g)
        };
        let mut c = Some(Timed {
            inner: PolicyChain::instantiate(g, std::slice::from_ref(&module)).unwrap(),
            calls: 0,
        });
        if std::env::var_os("NO_SWAP").is_some() {
            drop(c);
            continue;
        }
        dp.set_policy(|_| Box::new(c.take().unwrap()) as Box<dyn Policy>)
            .unwrap();
        assert!(dp.wait_generation(g, Duration::from_secs(2)));
    }
    let sw1 = status(&worker_tid);
    stop.store(true, Ordering::Relaxed);
    wire.join().unwrap();
    let (samples, seen) = sampler.join().unwrap();
    eprintln!(
        "worker switches: voluntary {} involuntary {}; {samples} samples, off-CPU:",
        sw1.0 - sw0.0,
        sw1.1 - sw0.1
    );
    for (k, n) in &seen {
        eprintln!("  {n:6} {k}");
    }
    std::thread::sleep(Duration::from_millis(50));
    let w = ports[PARENT.port as usize].0.lock().unwrap();
    let out = Outcome {
        swaps: g - 1,
        delivered: w.delivered,
        rx_dropped: w.rx_dropped,
        max_gap: w.max_gap,
        gaps_over_1ms: w.gaps_over_1ms,
    };
    drop(w);
    eprintln!("{:?}", CALLS.lock().unwrap());
    let snap = dp.counters()[0].snapshot();
    eprintln!(
        "policy batches {} latency buckets {:?} sleep_ns {}",
        snap.policy_batches,
        snap.policy_latency_buckets
            .iter()
            .filter(|(_, n)| *n > 0)
            .collect::<Vec<_>>(),
        snap.sleep_ns
    );
    drop(dp.stop());
    out
}

/// Timing-sensitive (a shared 2-core machine under load loses frames to preemption with or
/// without swaps: run it with `NO_SWAP=1` for the control), so not run by default:
/// `cargo test -p dataplane --release --test worker_swap_stall -- --ignored --nocapture`.
#[test]
#[ignore]
fn policy_swaps_under_a_paced_stream_lose_no_frame() {
    let o = run(3.0);
    eprintln!(
        "swaps {} delivered {} rx_dropped {} max worker gap {:?} gaps>1ms {}",
        o.swaps, o.delivered, o.rx_dropped, o.max_gap, o.gaps_over_1ms
    );
    assert!(o.swaps >= 20, "too few swaps to say anything: {}", o.swaps);
    assert_eq!(o.rx_dropped, 0, "frames lost before the engine");
}

fn minflt() -> i64 {
    let s = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(7).unwrap().parse().unwrap()
}

/// The first batch a worker runs on a freshly made chain takes no page fault: the instance's
/// memory was mapped on the thread that made it (before: ~5 faults, ~10 µs instead of
/// ~0.8 µs, and under load milliseconds behind the memory-map lock).
#[test]
fn a_fresh_chain_runs_its_first_batch_without_a_page_fault() {
    use dataplane::policy::{FlowState, MAX_BATCH, PacketRecord, VerdictRecord};
    let rt = WasmRuntime::new(WasmConfig::default()).unwrap();
    let records: Vec<PacketRecord> = (0..MAX_BATCH as u16)
        .map(|i| PacketRecord {
            src: rules_wasm::abi::addr_bytes(IpAddr::V4(Ipv4Addr::from(PARENT.ip))),
            dst: rules_wasm::abi::addr_bytes(IpAddr::V4(Ipv4Addr::from(CHILD.ip))),
            src_port: 10_000 + i,
            dst_port: 5001,
            ip_version: 4,
            protocol: 17,
            flow_state: FlowState::Established,
            in_port: 1,
            out_port: 2,
            ..PacketRecord::default()
        })
        .collect();
    // The process's own first policy call faults in code pages of the call path (seen once
    // in a fresh-clone CI run: one fault at generation 1). That is not what this test is
    // about: one throwaway chain runs first, so every fault counted below is a chain's.
    {
        let m = rt
            .load_with_caps(&compile(&ruleset(0)).unwrap().wasm, "warm", CAPS)
            .unwrap();
        let mut warm = PolicyChain::instantiate(0, std::slice::from_ref(&m)).unwrap();
        let mut v = [VerdictRecord::CONTINUE; MAX_BATCH];
        warm.decide(&records, &mut v);
    }
    let mut prev: Option<Box<dyn Policy>> = None;
    for g in 1..12u64 {
        let wasm = compile(&ruleset(g)).unwrap().wasm;
        let m = rt.load_with_caps(&wasm, "p", CAPS).unwrap();
        let mut chain: Box<dyn Policy> =
            Box::new(PolicyChain::instantiate(g, std::slice::from_ref(&m)).unwrap());
        drop(m);
        let mut v = [VerdictRecord::CONTINUE; MAX_BATCH];
        let mut line = format!("g{g} wasm {}B:", wasm.len());
        for _ in 0..3 {
            let (f0, t0) = (minflt(), Instant::now());
            chain.decide(&records, &mut v);
            let faults = minflt() - f0;
            line += &format!(" {:?}/{faults}flt", t0.elapsed());
            assert_eq!(
                faults, 0,
                "generation {g}: a batch faulted pages in: {line}"
            );
        }
        if let Some(p) = prev.take() {
            let (f0, t0) = (minflt(), Instant::now());
            drop(p);
            line += &format!(" | drop old {:?}/{}flt", t0.elapsed(), minflt() - f0);
        }
        prev = Some(chain);
        eprintln!("{line}");
    }
}
