//! The tiered datapath at the worker level (issue 9): a [`Dataplane`] worker drives an
//! upcall port and in-memory container ports, with an in-memory kernel flow cache (a
//! [`FlowOffload`] whose entries the test inspects). Covered: the kernel cache gets the
//! policy generation when it is handed over and again at a policy swap; the engine's
//! requests are applied after a round (Forward entries for a confirmed flow, replaced with
//! the new generation after a swap, by the worker's revalidation or when a stale entry's
//! packet is re-decided, whichever comes first); a sync reads the kernel's
//! activity back into the counters and removes an entry the engine disowns; removing a port
//! removes its flows' entries before `remove_port` returns. No root needed: the UMEM is
//! anonymous memory and the ports are in-memory.

mod worker_support;

use dataplane::afxdp::{PollConfig, Umem, UmemConfig};
use dataplane::counters::Snapshot;
use dataplane::engine::{EngineConfig, PortConfig};
use dataplane::offload::{
    FlowOffload, KernelSeen, OffloadError, OffloadOp, OffloadTarget, PortRole, reversed, tag,
};
use dataplane::phy::PortId;
use dataplane::policy::{Action, ConstPolicy, Policy};
use dataplane::sim::*;
use dataplane::wire::Tuple;
use dataplane::worker::{Dataplane, DataplaneConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use worker_support::SharedPort;

/// One entry of the in-memory kernel flow cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Forward(OffloadTarget, u64),
    Drop(u64),
}

#[derive(Default)]
struct Kernel {
    entries: HashMap<(PortId, Tuple), Entry>,
    /// Every `set_generation` call.
    generations: Vec<u64>,
    /// Every request applied.
    applied: Vec<OffloadOp>,
    /// Packets and bytes each entry forwards before the next sync.
    activity: HashMap<(PortId, Tuple), (u64, u64)>,
    /// Entries a sync removed because the engine disowned them.
    disowned: Vec<(PortId, Tuple)>,
    syncs: u64,
}

/// The in-memory kernel flow cache, shared with the test.
#[derive(Clone, Default)]
struct MemOffload(Arc<Mutex<Kernel>>);

impl FlowOffload for MemOffload {
    fn apply(&mut self, op: &OffloadOp) -> Result<(), OffloadError> {
        let mut k = self.0.lock().unwrap();
        k.applied.push(*op);
        match *op {
            OffloadOp::Forward {
                in_port,
                tuple,
                out,
                generation,
            } => k
                .entries
                .insert((in_port, tuple), Entry::Forward(out, generation)),
            OffloadOp::Drop {
                in_port,
                tuple,
                generation,
            } => k.entries.insert((in_port, tuple), Entry::Drop(generation)),
            OffloadOp::Remove { in_port, tuple } => k.entries.remove(&(in_port, tuple)),
        };
        Ok(())
    }

    fn set_generation(&mut self, generation: u64) {
        self.0.lock().unwrap().generations.push(generation);
    }

    fn sync(&mut self, _clock_origin: u64, seen: &mut dyn FnMut(&KernelSeen) -> bool) -> bool {
        let mut k = self.0.lock().unwrap();
        k.syncs += 1;
        let keys: Vec<(PortId, Tuple)> = k.entries.keys().copied().collect();
        for key in keys {
            let (packets, bytes) = k.activity.remove(&key).unwrap_or((0, 0));
            let dropped = matches!(k.entries[&key], Entry::Drop(_));
            let s = KernelSeen {
                in_port: key.0,
                tuple: key.1,
                packets,
                bytes,
                last_seen: None,
                dropped,
            };
            if !seen(&s) {
                k.entries.remove(&key);
                k.disowned.push(key);
            }
        }
        // The whole table in one slice.
        true
    }
}

const UPCALL: PortId = 9;
const T_GW: OffloadTarget = OffloadTarget {
    ifindex: 100,
    peer: false,
};
const T_PARENT: OffloadTarget = OffloadTarget {
    ifindex: 101,
    peer: true,
};
const T_CHILD: OffloadTarget = OffloadTarget {
    ifindex: 102,
    peer: true,
};

fn port_config(h: Host) -> PortConfig {
    PortConfig {
        id: h.port,
        network: 0,
        macs: vec![h.mac],
        ips: vec![std::net::IpAddr::V4(h.ip.into())],
        is_gateway: h == GW,
        complete_checksums: false,
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn accept_all(generation: u64) -> Box<dyn Policy> {
    Box::new(ConstPolicy {
        action: Action::Accept,
        generation,
    })
}

fn tagged(port: PortId, frame: &[u8]) -> Vec<u8> {
    let mut t = [0u8; tag::LEN];
    tag::write(&mut t, port, tag::REASON_MISS);
    [&t[..], frame].concat()
}

fn udp(a: Host, b: Host, sport: u16, dport: u16) -> Vec<u8> {
    udp_frame(a, b.mac, b.ip, sport, dport, b"hello")
}

fn snapshot(dp: &Dataplane<Umem, SharedPort>) -> Snapshot {
    dp.counters()[0].snapshot()
}

struct Setup {
    dp: Dataplane<Umem, SharedPort>,
    upcall: SharedPort,
    hosts: HashMap<PortId, SharedPort>,
    kernel: MemOffload,
}

fn start() -> Setup {
    let umem = Umem::new(UmemConfig {
        frame_count: 2048,
        frame_size: FRAME_SIZE as u32,
    })
    .unwrap();
    let config = DataplaneConfig {
        workers: 1,
        engine: EngineConfig::default(),
        poll: PollConfig {
            spin_rounds: 200,
            sleep_timeout: Duration::from_millis(1),
        },
        ..Default::default()
    };
    let mut dp = Dataplane::start(config, umem, |_| accept_all(1)).unwrap();
    let mut hosts = HashMap::new();
    for (h, t) in [(GW, T_GW), (PARENT, T_PARENT), (CHILD, T_CHILD)] {
        let p = SharedPort::new();
        dp.add_port_as(port_config(h), p.clone(), 0, PortRole::Tiered(t))
            .unwrap();
        hosts.insert(h.port, p);
    }
    let upcall = SharedPort::new();
    let cfg = PortConfig {
        id: UPCALL,
        network: UPCALL,
        macs: vec![],
        ips: vec![],
        is_gateway: false,
        complete_checksums: false,
    };
    dp.add_port_as(cfg, upcall.clone(), 0, PortRole::Upcall)
        .unwrap();
    let kernel = MemOffload::default();
    dp.set_offload(0, Box::new(kernel.clone())).unwrap();
    Setup {
        dp,
        upcall,
        hosts,
        kernel,
    }
}

impl Setup {
    /// Upcalls `frame` from port `from` and waits until port `to` sent it.
    fn upcall(&self, from: PortId, frame: &[u8], to: PortId) {
        assert!(self.upcall.inject(&tagged(from, frame)));
        let out = &self.hosts[&to];
        wait_until("the upcalled frame to be forwarded", || {
            out.take_sent().iter().any(|f| f == frame)
        });
    }

    fn entry(&self, port: PortId, t: &Tuple) -> Option<Entry> {
        self.kernel
            .0
            .lock()
            .unwrap()
            .entries
            .get(&(port, *t))
            .copied()
    }
}

#[test]
fn the_worker_applies_syncs_and_reconciles_the_kernel_flow_cache() {
    let s = start();
    wait_until("the generation handed to the kernel", || {
        s.kernel.0.lock().unwrap().generations == [1]
    });
    let t = Tuple {
        src: mapped(PARENT.ip),
        dst: mapped(CHILD.ip),
        src_port: 1000,
        dst_port: 53,
        proto: 17,
    };
    s.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53), CHILD.port);
    s.upcall(CHILD.port, &udp(CHILD, PARENT, 53, 1000), PARENT.port);
    // Past its first exchange: offloaded.
    s.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53), CHILD.port);
    wait_until("both entries installed", || {
        s.entry(PARENT.port, &t) == Some(Entry::Forward(T_CHILD, 1))
            && s.entry(CHILD.port, &reversed(&t)) == Some(Entry::Forward(T_PARENT, 1))
    });
    {
        let k = s.kernel.0.lock().unwrap();
        assert_eq!(k.applied.len(), 2, "{:?}", k.applied);
        assert_eq!(k.entries.len(), 2);
    }
    wait_until("the requests counted", || {
        let o = snapshot(&s.dp).offload;
        o.applied == 2 && o.installed == 1 && o.upcalls == 3
    });

    // A stray entry (its removal lost) and some kernel traffic, read back at the next sync.
    let stray = Tuple {
        src_port: 7777,
        ..t
    };
    let syncs = {
        let mut k = s.kernel.0.lock().unwrap();
        k.entries
            .insert((PARENT.port, stray), Entry::Forward(T_CHILD, 1));
        k.activity.insert((PARENT.port, t), (7, 700));
        k.syncs
    };
    wait_until("a sync", || s.kernel.0.lock().unwrap().syncs > syncs);
    {
        let k = s.kernel.0.lock().unwrap();
        assert_eq!(k.disowned, [(PARENT.port, stray)]);
        assert_eq!(k.entries.len(), 2, "the flow's own entries stay");
    }
    let snap = snapshot(&s.dp);
    assert_eq!(snap.offload.reconciled, 1);
    assert_eq!(snap.offload.kernel_forwarded, 7);
    assert_eq!(snap.offload.kernel_forwarded_bytes, 700);
    // Two requests through the engine, seven through the kernel.
    assert_eq!(snap.port(PARENT.port).rx_packets, 2 + 7);
    assert_eq!(snap.port(CHILD.port).tx_packets, 2 + 7);

    // A policy swap makes the entries stale; the next upcalled packet re-offloads them.
    s.dp.set_policy(|_| accept_all(2)).unwrap();
    wait_until("the new generation handed to the kernel", || {
        s.kernel.0.lock().unwrap().generations == [1, 2]
    });
    // The worker re-decides the offloaded flows right after the swap: the entries are
    // replaced without waiting for a packet.
    wait_until("the entries replaced", || {
        s.entry(PARENT.port, &t) == Some(Entry::Forward(T_CHILD, 2))
            && s.entry(CHILD.port, &reversed(&t)) == Some(Entry::Forward(T_PARENT, 2))
    });
    let applied = s.kernel.0.lock().unwrap().applied.len();
    assert_eq!(applied, 4, "two installs of two entries");
    s.upcall(PARENT.port, &udp(PARENT, CHILD, 1000, 53), CHILD.port);
    // A few rounds for a request, had there been one, to be applied.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        s.kernel.0.lock().unwrap().applied.len(),
        applied,
        "nothing more"
    );

    // Removing the child's port removes the flow's entries before it returns.
    let mut dp = s.dp;
    dp.remove_port(CHILD.port).unwrap();
    {
        let k = s.kernel.0.lock().unwrap();
        assert!(k.entries.is_empty(), "{:?}", k.entries);
        let tail: Vec<OffloadOp> = k.applied[k.applied.len() - 2..].to_vec();
        assert!(
            tail.contains(&OffloadOp::Remove {
                in_port: PARENT.port,
                tuple: t
            }) && tail.contains(&OffloadOp::Remove {
                in_port: CHILD.port,
                tuple: reversed(&t)
            }),
            "{tail:?}"
        );
    }
    assert_eq!(snapshot(&dp).offload.failed, 0);
    drop(dp.stop());
}
