//! The lab's services: responders inside containers and the published-port proxy in the
//! lab's host namespace. Each runs on its own thread, polls a shared stop flag, and bounds
//! every connection with timeouts, so the lab can join them all before deleting the
//! namespaces (a live socket would keep a namespace, and its veths, alive).
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::spec::ResponderKind;

/// How often idle loops look at the stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How long one connection may take.
const CONN_TIMEOUT: Duration = Duration::from_secs(3);

/// A running service thread.
#[derive(Debug)]
pub(crate) struct Service {
    pub(crate) what: String,
    pub(crate) thread: JoinHandle<()>,
}

/// A listener (or UDP socket) created in a container's namespace, ready to be served.
#[derive(Debug)]
pub(crate) enum Bound {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

/// Binds a responder's socket; call inside the container's namespace.
pub(crate) fn bind(kind: ResponderKind, port: u16) -> std::io::Result<Bound> {
    let addr = SocketAddr::from(([0, 0, 0, 0], port));
    let bound = match kind {
        ResponderKind::Tcp | ResponderKind::Http => {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Bound::Tcp(l)
        }
        ResponderKind::Udp => {
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(POLL))?;
            Bound::Udp(s)
        }
    };
    Ok(bound)
}

/// Serves a bound responder until `stop` is set.
pub(crate) fn serve(
    name: String,
    kind: ResponderKind,
    bound: Bound,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name(format!("lab-{kind:?}").to_lowercase())
        .spawn(move || match bound {
            Bound::Tcp(listener) => accept_loop(&listener, &stop, |stream| {
                answer_tcp(stream, kind, &name);
            }),
            Bound::Udp(socket) => udp_echo(&socket, &stop),
        })
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, mut handle: impl FnMut(TcpStream)) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(false).is_ok() {
                    let _ = stream.set_read_timeout(Some(CONN_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(CONN_TIMEOUT));
                    handle(stream);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(e) => {
                tracing::debug!("lab accept: {e}");
                thread::sleep(POLL);
            }
        }
    }
}

fn answer_tcp(mut stream: TcpStream, kind: ResponderKind, name: &str) {
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    // Read the request (HTTP: up to the blank line; echo: whatever the first read brings).
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if kind == ResponderKind::Tcp || got.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let reply = match kind {
        ResponderKind::Http => {
            let body = format!("hello from {name}\n");
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        _ => got,
    };
    let _ = stream.write_all(&reply);
    let _ = stream.shutdown(Shutdown::Both);
}

fn udp_echo(socket: &UdpSocket, stop: &AtomicBool) {
    // Room for the largest datagram: large ones (sent as IP fragments) are echoed whole.
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let _ = socket.send_to(&buf[..n], peer);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => {
                tracing::debug!("lab udp echo: {e}");
                thread::sleep(POLL);
            }
        }
    }
}

/// The published-port proxy's body: runs on a thread inside the lab's host namespace (so
/// its outgoing connections start there, from the gateway address), accepting on the host
/// port and splicing each connection to the container's port.
pub(crate) fn proxy_loop(listener: TcpListener, target: SocketAddr, stop: Arc<AtomicBool>) {
    let mut pipes: Vec<JoinHandle<()>> = Vec::new();
    accept_loop(&listener, &stop, |client| {
        match TcpStream::connect_timeout(&target, CONN_TIMEOUT) {
            Ok(upstream) => {
                let _ = upstream.set_read_timeout(Some(CONN_TIMEOUT));
                let _ = upstream.set_write_timeout(Some(CONN_TIMEOUT));
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone())
                        && let Ok(t) = thread::Builder::new()
                            .name("lab-proxy-pipe".into())
                            .spawn(move || pipe(from, to))
                    {
                        pipes.push(t);
                    }
                }
            }
            Err(e) => {
                tracing::debug!("lab proxy to {target}: {e}");
                let _ = client.shutdown(Shutdown::Both);
            }
        }
        pipes.retain(|t| !t.is_finished());
    });
    for t in pipes {
        let _ = t.join();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}
