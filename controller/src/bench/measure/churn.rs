//! Policy churn: while the generator sends a paced stream (well below every path's
//! capacity, so a loss is the swap's fault), rules are inserted one after another, each in
//! force before the next (iptables: `iptables -w -I DOCKER-USER 1 …`, the way Docker and
//! users change rules; bridgewall: parse, compile, load and swap of the whole policy, as a
//! live `rules add` does). Reports insertions per second and packets sent but not received,
//! next to a control window of the same length on the same path without insertions (the
//! loss the path has anyway). On the bridge path (no rules) both windows are controls.
use std::time::{Duration, Instant};

use crate::bench::error::Result;
use crate::bench::generator::{Generator, Traffic};
use crate::bench::measure::rate::frame_len;
use crate::bench::paths::Path;
use crate::bench::report::ChurnSample;
use crate::bench::scenario::{CLIENT, SERVER};
use crate::bench::topology::DevReader;

/// Paced rate of the churn test, packets/s.
pub const CHURN_PPS: f64 = 20_000.0;
/// Flows of the paced stream.
pub const CHURN_FLOWS: usize = 1000;

/// What one window saw.
struct Window {
    inserted: u64,
    secs: f64,
    sent: u64,
    received: u64,
    reached_path: u64,
    extra: serde_json::Value,
}

fn window(path: &mut dyn Path, secs: f64, insert: bool) -> Result<Window> {
    let topo = path.topology();
    let (client, server) = (topo.container(CLIENT), topo.container(SERVER));
    let mut rx = DevReader::new(&server.ns, "eth0")?;
    let mut host_rx = DevReader::new(&topo.host, &client.host_if)?;
    let traffic = Traffic {
        netns: client.ns.name().to_string(),
        ifname: "eth0".into(),
        src: (client.info.mac, client.info.ip),
        dst: (server.info.mac, server.info.ip),
        frame_len: frame_len(64),
        flows: CHURN_FLOWS,
        rate: Some(CHURN_PPS),
    };
    let rx0 = rx.read()?.rx_packets;
    let host0 = host_rx.read()?.rx_packets;
    let _ = path.stats();
    let mut generator = Generator::start(traffic)?;
    // Let every flow be established before the first swap.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let mut inserted = 0u64;
    let mut failure = None;
    while t0.elapsed().as_secs_f64() < secs {
        if !insert || !path.kind().takes_rules() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if let Err(e) = path.insert_rule(inserted as usize) {
            failure = Some(e);
            break;
        }
        inserted += 1;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let sent = generator.stop()?;
    std::thread::sleep(Duration::from_millis(200)); // in flight
    let received = rx.read()?.rx_packets.saturating_sub(rx0);
    let reached_path = host_rx.read()?.rx_packets.saturating_sub(host0);
    let extra = path.stats();
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Window {
        inserted,
        secs: elapsed,
        sent,
        received,
        reached_path,
        extra,
    })
}

/// A control window, then rules inserted into `path` for `secs` seconds under the paced
/// stream; the path is put back to `rules` user rules afterwards.
pub fn measure(path: &mut dyn Path, round: u32, rules: usize, secs: f64) -> Result<ChurnSample> {
    let control = window(path, secs, false)?;
    let churn = window(path, secs, true);
    // Put the path back to `rules` user rules for the next measurement, also after a failure.
    path.set_user_rules(rules)?;
    let w = churn?;
    Ok(ChurnSample {
        path: path.kind().name().into(),
        round,
        rules,
        inserted: w.inserted,
        inserts_per_s: w.inserted as f64 / w.secs,
        sent: w.sent,
        lost: w.sent.saturating_sub(w.received),
        rate: CHURN_PPS,
        reached_path: w.reached_path,
        control_sent: control.sent,
        control_lost: control.sent.saturating_sub(control.received),
        extra: w.extra,
    })
}
