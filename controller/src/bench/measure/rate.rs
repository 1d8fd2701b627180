//! Packets/s delivered to the server container and CPU per packet, for one path, frame
//! size and flow count: the generator floods UDP from the client (to the link's exposed
//! ports, so every policy accepts it), the server's `eth0` counts what arrives, `/proc/stat`
//! and the process's own counters give the CPU.
//!
//! **Is the generator the bottleneck?** [`generator_check`] runs the same generator over a
//! bare veth pair (no bridge, no policy): its rate there is the most it can offer. A path's
//! sample is limited by the path when its delivered rate is clearly below that, and the
//! JSON keeps, per sample, the offered rate and the generator thread's own CPU per packet
//! next to the path's, so the reader can check both.
use std::time::{Duration, Instant};

use crate::bench::error::Result;
use crate::bench::generator::{Generator, Traffic};
use crate::bench::measure::cpu::{CpuSample, JIFFY_NS};
use crate::bench::paths::Path;
use crate::bench::report::{GeneratorSample, RateSample};
use crate::bench::scenario::{CLIENT, SERVER};
use crate::bench::topology::{DevReader, Netns, block_on};
use crate::netlink::VethPeer;

/// Frame length without FCS for a size on the wire with FCS (64 → 60, 1500 → 1514: the
/// MTU-sized frame).
pub fn frame_len(size: usize) -> usize {
    if size >= 1500 {
        size + 14
    } else {
        size.saturating_sub(4).max(60)
    }
}

struct Window {
    pkts: u64,
    sent: u64,
    gen_cpu_ns: u64,
    cpu: CpuSample,
    secs: f64,
}

fn window(
    generator: &mut Generator,
    rx: &mut DevReader,
    warmup: Duration,
    secs: f64,
) -> Result<Window> {
    std::thread::sleep(warmup);
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
        t0.elapsed(),
    );
    Ok(Window {
        pkts: rx1.saturating_sub(rx0),
        sent: tx1.saturating_sub(tx0),
        gen_cpu_ns: g1.saturating_sub(g0),
        cpu: c1.since(&c0),
        secs: dt.as_secs_f64(),
    })
}

/// One rate sample of `path` with its current rules.
pub fn measure(
    path: &mut dyn Path,
    round: u32,
    rules: usize,
    size: usize,
    flows: usize,
    secs: f64,
) -> Result<RateSample> {
    let topo = path.topology();
    let (client, server) = (topo.container(CLIENT), topo.container(SERVER));
    let mut rx = DevReader::new(&server.ns, "eth0")?;
    let mut generator = Generator::start(Traffic {
        netns: client.ns.name().to_string(),
        ifname: "eth0".into(),
        src: (client.info.mac, client.info.ip),
        dst: (server.info.mac, server.info.ip),
        frame_len: frame_len(size),
        flows,
        rate: None,
    })?;
    let _ = path.stats();
    let w = window(&mut generator, &mut rx, Duration::from_millis(300), secs)?;
    let extra = path.stats();
    generator.stop()?;
    let pkts = w.pkts.max(1) as f64;
    Ok(RateSample {
        path: path.kind().name().into(),
        round,
        rules,
        size,
        flows,
        pps: w.pkts as f64 / w.secs,
        offered_pps: w.sent as f64 / w.secs,
        cpu_ns_per_pkt: w.cpu.busy as f64 * JIFFY_NS / pkts,
        softirq_ns_per_pkt: w.cpu.softirq as f64 * JIFFY_NS / pkts,
        process_ns_per_pkt: w.cpu.process as f64 * JIFFY_NS / pkts,
        generator_ns_per_pkt: w.gen_cpu_ns as f64 / w.sent.max(1) as f64,
        cores: w.cpu.busy as f64 * JIFFY_NS / 1e9 / w.secs,
        other_cores: w.cpu.busy.saturating_sub(w.cpu.process) as f64 * JIFFY_NS / 1e9 / w.secs,
        extra,
    })
}

/// The generator alone over a veth pair between two fresh namespaces: the most it offers.
pub fn generator_check(size: usize, flows: usize, secs: f64) -> Result<GeneratorSample> {
    let (a, b, ma, mb) = block_on(async {
        let a = Netns::new("gen-a").await?;
        let b = Netns::new("gen-b").await?;
        let ra = a.rtnl().await?;
        let ia = ra
            .add_veth(
                "eth0",
                VethPeer {
                    name: "eth0",
                    netns: Some(b.netns()),
                    mac: None,
                    mtu: None,
                },
            )
            .await?;
        ra.set_up(ia).await?;
        let rb = b.rtnl().await?;
        let ib = rb.index_of("eth0").await?;
        rb.set_up(ib).await?;
        let ma = ra.link_by_index(ia).await?.mac.unwrap_or_default();
        let mb = rb.link_by_index(ib).await?.mac.unwrap_or_default();
        Ok((a, b, ma, mb))
    })?;
    let mut rx = DevReader::new(&b, "eth0")?;
    let mut generator = Generator::start(Traffic {
        netns: a.name().to_string(),
        ifname: "eth0".into(),
        src: (ma, "10.255.0.1".parse().expect("address")),
        dst: (mb, "10.255.0.2".parse().expect("address")),
        frame_len: frame_len(size),
        flows,
        rate: None,
    })?;
    let w = window(&mut generator, &mut rx, Duration::from_millis(200), secs)?;
    generator.stop()?;
    drop((a, b));
    Ok(GeneratorSample {
        size,
        flows,
        offered_pps: w.sent as f64 / w.secs,
        received_pps: w.pkts as f64 / w.secs,
        generator_ns_per_pkt: w.gen_cpu_ns as f64 / w.sent.max(1) as f64,
        cpu_ns_per_pkt: w.cpu.busy as f64 * JIFFY_NS / w.pkts.max(1) as f64,
    })
}
