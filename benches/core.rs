//! Benchmarks of the sans-IO core: parse ns/frame (hand-written vs etherparse), checksum
//! completion ns/frame, flow-table hit ns/packet at 1k/100k/1M flows, and engine forwarding
//! rate on flow-table hits (elements = packets, so criterion reports packets/s).
//!
//! Targets (issue 2): parse ≤ 20 ns per 64-byte frame; engine ≥ 10 Mpps per core on hits.
//! Run briefly on shared machines: `cargo bench --bench core -- --warm-up-time 1 --measurement-time 3`.
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::engine::{Engine, EngineConfig, PortConfig};
use dataplane::flow::{Decision, FirstPacket, FlowTable, Timeouts, Tracking, Verdict};
use dataplane::phy::memory::{MemoryPort, MemoryPortConfig};
use dataplane::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, HeapFrames, PortId};
use dataplane::policy::{Action, ConstPolicy};
use dataplane::wire::{self, Tuple};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

const MAC_A: [u8; 6] = [2, 0x42, 172, 17, 0, 2];
const MAC_B: [u8; 6] = [2, 0x42, 172, 17, 0, 3];
const IP_A: [u8; 4] = [172, 17, 0, 2];
const IP_B: [u8; 4] = [172, 17, 0, 3];

/// A TCP frame of exactly `len` bytes (≥ 54) from A to B.
fn tcp_frame(sport: u16, len: usize) -> Vec<u8> {
    let payload = vec![0x5a; len - 54];
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(IP_A, IP_B, 64)
        .tcp(sport, 80, 1, 64240)
        .ack(1);
    let mut out = Vec::with_capacity(len);
    b.write(&mut out, &payload).unwrap();
    out
}

/// The fields the dataplane needs, read through etherparse: the fair counterpart of
/// `wire::parse` (which fills a `Parsed`).
fn etherparse_fields(frame: &[u8]) -> Option<Tuple> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst, proto) = match p.net? {
        NetSlice::Ipv4(v4) => {
            let h = v4.header();
            let mut s = [0u8; 16];
            let mut d = [0u8; 16];
            s[10..12].copy_from_slice(&[0xff, 0xff]);
            d[10..12].copy_from_slice(&[0xff, 0xff]);
            s[12..].copy_from_slice(&h.source());
            d[12..].copy_from_slice(&h.destination());
            (s, d, h.protocol().0)
        }
        NetSlice::Ipv6(v6) => {
            let h = v6.header();
            (h.source(), h.destination(), v6.payload().ip_number.0)
        }
        NetSlice::Arp(_) => return None,
    };
    let (sp, dp) = match p.transport? {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    Some(Tuple {
        src,
        dst,
        src_port: sp,
        dst_port: dp,
        proto,
    })
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let frame = tcp_frame(40000, 64);
    g.throughput(Throughput::Elements(1));
    // `parse_into` a reused record is what the engine does; `parse` returns a fresh one.
    let mut p = wire::Parsed::default();
    g.bench_function("hand_written/64B", |b| {
        b.iter(|| {
            let r = wire::parse_into(black_box(&frame), &mut p);
            black_box(r.is_ok());
            black_box(&p);
        })
    });
    g.bench_function("hand_written_by_value/64B", |b| {
        b.iter(|| wire::parse(black_box(&frame)))
    });
    g.bench_function("etherparse/64B", |b| {
        b.iter(|| etherparse_fields(black_box(&frame)))
    });
    g.finish();
}

fn bench_checksum(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum_completion");
    for len in [64usize, 1500] {
        let mut frame = tcp_frame(40000, len);
        let p = wire::parse(&frame).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(format!("{len}B")), |b| {
            b.iter(|| wire::complete_l4_checksum(black_box(&mut frame), black_box(&p)))
        });
    }
    g.finish();
}

fn tuple(i: u32) -> Tuple {
    let mut src = [0u8; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    src[12..].copy_from_slice(&(0x0a00_0000 | (i >> 8)).to_be_bytes());
    let mut dst = src;
    dst[12] = 172;
    Tuple {
        src,
        dst,
        src_port: 1024 + (i & 0xff) as u16,
        dst_port: 80,
        proto: 6,
    }
}

fn bench_flow_hits(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_table_hit");
    const BATCH: usize = 1024;
    for n in [1_000u32, 100_000, 1_000_000] {
        let mut ft = FlowTable::new(n as usize * 2, &Timeouts::default());
        let accept = Decision {
            verdict: Verdict {
                accept: true,
                rule: 1,
                reject: None,
            },
            generation: 1,
        };
        for i in 0..n {
            let t = tuple(i);
            let first = FirstPacket {
                tracking: Tracking {
                    tuple: t,
                    one_way: false,
                },
                tcp_flags: 0x10,
                ports: [1, 2],
                via_host: false,
            };
            ft.decide(&ft.hash_tuple(&t), &first, accept, true, 0);
        }
        assert_eq!(ft.len(), n as usize, "no eviction while filling");
        // A fixed pseudo-random visiting order, so large tables miss the cache as in life.
        let mut x = 0x9e37_79b9u32;
        let order: Vec<Tuple> = (0..BATCH)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                tuple(x % n)
            })
            .collect();
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                for t in &order {
                    let k = ft.hash_tuple(t);
                    let s = ft.lookup(&k, 1).unwrap();
                    let dir = ft.entry(s).dir(k.src_is_a);
                    ft.on_packet(s, dir, 0x10, 1);
                }
            })
        });
    }
    g.finish();
}

fn engine(complete_checksums: bool, frames: usize) -> Engine<HeapFrames> {
    let config = EngineConfig {
        flow_capacity: 1 << 16,
        ..Default::default()
    };
    let policy = Box::new(ConstPolicy {
        action: Action::Accept,
        generation: 1,
    });
    let mut e = Engine::new(config, policy, FreeList::full(frames, 2048));
    for (id, mac, ip) in [(1, MAC_A, IP_A), (2, MAC_B, IP_B)] {
        e.add_port(PortConfig {
            id,
            network: 0,
            macs: vec![mac],
            ips: vec![IpAddr::V4(Ipv4Addr::from(ip))],
            is_gateway: false,
            complete_checksums,
        })
        .unwrap();
    }
    e
}

/// The engine alone: 64 frames of 64 distinct established flows re-processed in place.
fn bench_engine(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(64));
    for complete in [false, true] {
        let frames = 256;
        let mut mem = HeapFrames::new(frames, 2048);
        let mut e = engine(complete, frames);
        let mut descs = Vec::new();
        for i in 0..64u16 {
            let addr = e.free_list_mut().pop().unwrap();
            let f = tcp_frame(30000 + i, 64);
            mem.bytes_mut(addr, f.len()).copy_from_slice(&f);
            descs.push(FrameDesc {
                addr,
                len: f.len() as u32,
            });
        }
        let mut rx = DescBatch::default();
        let mut run = |e: &mut Engine<HeapFrames>, mem: &mut HeapFrames| {
            for d in &descs {
                let _ = rx.push(*d);
            }
            e.process(1, 1, mem, &mut rx);
            // The frames stay where they are; the next round receives them again.
            if let Some(q) = e.tx_queue(2) {
                q.clear();
            }
        };
        run(&mut e, &mut mem); // establish the flows
        let name = if complete {
            "process_hits_with_checksum/64B"
        } else {
            "process_hits/64B"
        };
        g.bench_function(name, |b| b.iter(|| run(&mut e, &mut mem)));
        assert_eq!(
            e.counters().snapshot().policy_records,
            64,
            "the measured rounds were all hits"
        );
    }

    // Through in-memory ports: inject (a copy into the wire inbox), receive (a copy into the
    // frame memory, like AF_XDP copy mode), process, transmit, complete.
    let frames = 2048;
    let mut mem = HeapFrames::new(frames, 2048);
    let mut e = engine(false, frames);
    let pc = MemoryPortConfig {
        capture: false,
        ..Default::default()
    };
    let mut ports = [MemoryPort::new(pc), MemoryPort::new(pc)];
    let wire: Vec<Vec<u8>> = (0..64u16).map(|i| tcp_frame(30000 + i, 64)).collect();
    let [pa, pb] = &mut ports;
    let mut set: [(PortId, &mut MemoryPort); 2] = [(1, pa), (2, pb)];
    let mut round = |e: &mut Engine<HeapFrames>, set: &mut [(PortId, &mut MemoryPort); 2]| {
        for f in &wire {
            set[0].1.inject(f);
        }
        e.drive(1, &mut mem, set)
    };
    round(&mut e, &mut set);
    g.bench_function("drive_memory_ports_hits/64B", |b| {
        b.iter(|| round(&mut e, &mut set))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_checksum,
    bench_flow_hits,
    bench_engine
);
criterion_main!(benches);
