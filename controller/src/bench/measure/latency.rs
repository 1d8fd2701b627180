//! UDP request/response latency between the client and the server container at a fixed,
//! moderate rate: the client sends one 64-byte request every `1/rate` s from a connected
//! socket and waits for the echo (up to 100 ms); the round trip goes into an
//! `hdrhistogram` (1 µs – 10 s, 3 significant digits). The server's echo thread
//! ([`EchoServer`]) also serves the UDP new-flow test.
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bench::error::{BenchError, Result};
use crate::bench::paths::Path;
use crate::bench::report::LatencySample;
use crate::bench::scenario::{CLIENT, ECHO_PORT, SERVER};
use crate::bench::topology::Netns;

/// A UDP echo server on [`ECHO_PORT`] in a namespace; stops on drop.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Binds in `ns` and starts echoing.
    pub fn start(ns: &Netns) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = ns.name().to_string();
        let (tx, rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        let handle = std::thread::spawn(move || {
            let setup = || -> std::result::Result<_, String> {
                let back = dataplane::afxdp::enter_netns(&name).map_err(|e| e.to_string())?;
                let s = UdpSocket::bind(("0.0.0.0", ECHO_PORT)).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .map_err(|e| e.to_string())?;
                Ok((back, s))
            };
            // The thread stays in the namespace until it ends (`_back` returns it).
            let (_back, sock) = match setup() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        match rx.recv() {
            Ok(Ok(())) => Ok(EchoServer {
                stop,
                handle: Some(handle),
            }),
            Ok(Err(e)) => Err(BenchError::measure("echo server", e)),
            Err(_) => Err(BenchError::measure("echo server", "thread died")),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Measures round trips from the client to the server's echo at `rate` requests/s for
/// `secs` seconds.
pub fn measure(
    path: &mut dyn Path,
    round: u32,
    rules: usize,
    rate: f64,
    secs: f64,
) -> Result<LatencySample> {
    let topo = path.topology();
    let _echo = EchoServer::start(&topo.container(SERVER).ns)?;
    let server = SocketAddr::from((topo.server_ip(), ECHO_PORT));
    let (answered, lost, hist) = topo.container(CLIENT).ns.within(move || {
        let err = |e: std::io::Error| BenchError::measure("latency", e);
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(err)?;
        sock.connect(server).map_err(err)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(err)?;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3)
            .map_err(|e| BenchError::measure("latency", e))?;
        let interval = Duration::from_secs_f64(1.0 / rate);
        let total = (secs * rate).max(1.0) as u64;
        // A few unmeasured requests first: the flow is set up (conntrack, policy).
        let mut buf = [0u8; 64];
        for _ in 0..3 {
            let _ = sock.send(&[0u8; 64]);
            let _ = sock.recv(&mut buf);
        }
        let (mut answered, mut lost) = (0u64, 0u64);
        let start = Instant::now();
        for seq in 0..total {
            let due = start + interval * seq as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut req = [0u8; 64];
            req[..8].copy_from_slice(&seq.to_be_bytes());
            let t0 = Instant::now();
            sock.send(&req).map_err(err)?;
            loop {
                match sock.recv(&mut buf) {
                    Ok(n) if n >= 8 && buf[..8] == req[..8] => {
                        let us = t0.elapsed().as_nanos() as u64 / 1000;
                        let _ = hist.record(us.max(1));
                        answered += 1;
                        break;
                    }
                    Ok(_) => continue, // a late answer to an earlier request
                    Err(_) => {
                        lost += 1;
                        break;
                    }
                }
            }
        }
        Ok((answered, lost, hist))
    })?;
    let q = |p: f64| hist.value_at_quantile(p) as f64;
    let mut cdf = Vec::new();
    if !hist.is_empty() {
        for v in hist.iter_quantiles(2) {
            cdf.push((v.value_iterated_to() as f64, v.quantile_iterated_to()));
        }
    }
    Ok(LatencySample {
        path: path.kind().name().into(),
        round,
        rules,
        rate,
        answered,
        lost,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: hist.max() as f64,
        cdf,
    })
}
