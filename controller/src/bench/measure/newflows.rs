//! New flows per second, so the connection tracker and the policy's miss path are measured,
//! not only steady flows:
//! - TCP: a server in the server container accepts and closes once the client has; [`TCP_CLIENTS`] client
//!   threads in the client container connect (250 ms timeout) and close, as fast as they can.
//! - UDP: client threads send one request from a new socket each time (a new source port:
//!   a new flow) to the server's echo and wait for the answer (100 ms).
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::bench::error::{BenchError, Result};
use crate::bench::measure::latency::EchoServer;
use crate::bench::paths::Path;
use crate::bench::report::NewFlowSample;
use crate::bench::scenario::{CLIENT, CONNECT_PORT, ECHO_PORT, SERVER};
use crate::bench::topology::Netns;

/// Client threads for each protocol.
pub const TCP_CLIENTS: usize = 4;
/// A connect that has not completed by then counts as failed and the thread moves on (a
/// lost SYN would otherwise stall it for the kernel's 1 s retransmission timeout).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

/// Runs `threads` copies of `work` in `ns` for `secs`; sums their (ok, failed) counts.
fn clients(
    ns: &Netns,
    threads: usize,
    secs: f64,
    work: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<(u64, u64, f64)> {
    let work = Arc::new(work);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (name, work, stop, ok, failed) = (
            ns.name().to_string(),
            work.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let Ok(_back) = dataplane::afxdp::enter_netns(&name) else {
                return;
            };
            while !stop.load(Ordering::Relaxed) {
                if work() {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    Ok((
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
    ))
}

/// Accepts and closes connections in `ns` until dropped.
struct AcceptLoop {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl AcceptLoop {
    fn start(ns: &Netns) -> Result<Self> {
        // A deep accept queue: std's 128 overflows when the clients outpace this one
        // thread on a fast path, and an overflow costs a client a 1 s SYN retransmission.
        let listener = ns.within(|| {
            let err = |e: std::io::Error| BenchError::measure("new flows", e);
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .map_err(err)?;
            s.set_reuse_address(true).map_err(err)?;
            s.bind(&SocketAddr::from(([0, 0, 0, 0], CONNECT_PORT)).into())
                .map_err(err)?;
            s.listen(4096).map_err(err)?;
            s.set_nonblocking(true).map_err(err)?;
            Ok(TcpListener::from(s))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        // The client closes first (the server closes on end of file): a server closing
        // first leaves its TIME_WAIT sockets in the way of the client's next ports, and a
        // SYN meeting one costs the client a 1 s retransmission, whatever the path.
        let handle = std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            let mut buf = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) {
                let mut idle = true;
                while let Ok((s, _)) = listener.accept() {
                    let _ = s.set_nonblocking(true);
                    open.push(s);
                    idle = false;
                }
                open.retain_mut(|s| match s.read(&mut buf) {
                    Ok(0) => false,
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                });
                if idle {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        Ok(AcceptLoop {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Measures TCP and UDP new flows per second through `path`, `secs` seconds each.
pub fn measure(path: &mut dyn Path, round: u32, rules: usize, secs: f64) -> Result<NewFlowSample> {
    let topo = path.topology();
    let client = &topo.container(CLIENT).ns;
    // Many short connections: reuse TIME_WAIT ports on the client side.
    let _ = client.sysctl("net/ipv4/tcp_tw_reuse", "1");
    let _ = client.sysctl("net/ipv4/ip_local_port_range", "1024 65000");
    let tcp_addr = SocketAddr::from((topo.server_ip(), CONNECT_PORT));
    let (tcp_ok, tcp_failed, tcp_secs) = {
        let _accept = AcceptLoop::start(&topo.container(SERVER).ns)?;
        clients(client, TCP_CLIENTS, secs, move || {
            TcpStream::connect_timeout(&tcp_addr, CONNECT_TIMEOUT).is_ok()
        })?
    };
    let udp_addr = SocketAddr::from((topo.server_ip(), ECHO_PORT));
    let (udp_ok, udp_lost, udp_secs) = {
        let _echo = EchoServer::start(&topo.container(SERVER).ns)?;
        clients(client, TCP_CLIENTS, secs, move || {
            let Ok(s) = UdpSocket::bind("0.0.0.0:0") else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
            let mut buf = [0u8; 64];
            s.send_to(&[1u8; 32], udp_addr).is_ok() && s.recv(&mut buf).is_ok()
        })?
    };
    Ok(NewFlowSample {
        path: path.kind().name().into(),
        round,
        rules,
        tcp_per_s: tcp_ok as f64 / tcp_secs,
        tcp_failed,
        udp_per_s: udp_ok as f64 / udp_secs,
        udp_lost,
    })
}
