//! Probing a connection from inside a namespace: what a person would do with `curl`, `nc`
//! or `nc -u`, reduced to "answered, refused, or silence".
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// Transport protocol of a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP (the probe sends an HTTP/1.0 request, which echo responders echo).
    Tcp,
    /// UDP (the probe sends one datagram and waits for one back).
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// What a probe saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected and got this answer (an HTTP body, or the echo).
    Connected(String),
    /// Nothing came back in time: what a dropped packet looks like.
    TimedOut,
    /// Actively refused (TCP RST, ICMP port unreachable): the packet got there.
    Refused,
    /// Some other failure (no route, host unreachable...).
    Failed(String),
}

impl Outcome {
    /// Whether the connection got through and was answered.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Connected(_))
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Connected(reply) => {
                let first = reply.lines().next().unwrap_or("").trim();
                write!(f, "connected: {first:?}")
            }
            Outcome::TimedOut => f.write_str("timed out"),
            Outcome::Refused => f.write_str("refused"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Probes `addr` from the calling thread's namespace.
pub(crate) fn probe(addr: SocketAddr, proto: Proto, timeout: Duration, label: &str) -> Outcome {
    match proto {
        Proto::Tcp => probe_tcp(addr, timeout, label),
        Proto::Udp => probe_udp(addr, timeout, label),
    }
}

fn probe_tcp(addr: SocketAddr, timeout: Duration, label: &str) -> Outcome {
    let start = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => return from_error(&e),
    };
    let left = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(50));
    let _ = stream.set_read_timeout(Some(left));
    let _ = stream.set_write_timeout(Some(left));
    let request = format!("GET / HTTP/1.0\r\nHost: {label}\r\nUser-Agent: bridgewall-lab\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return from_error(&e);
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if reply.is_empty() {
                    return Outcome::TimedOut;
                }
                break;
            }
            Err(e) => return from_error(&e),
        }
    }
    Outcome::Connected(http_body(&String::from_utf8_lossy(&reply)))
}

/// A UDP socket connected to `addr` with a read timeout, or the outcome that stopped it.
fn udp_socket(addr: SocketAddr, timeout: Duration) -> Result<UdpSocket, Outcome> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).map_err(|e| Outcome::Failed(e.to_string()))?;
    socket.connect(addr).map_err(|e| from_error(&e))?;
    let _ = socket.set_read_timeout(Some(timeout));
    Ok(socket)
}

fn probe_udp(addr: SocketAddr, timeout: Duration, label: &str) -> Outcome {
    let socket = match udp_socket(addr, timeout) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let msg = format!("probe from {label}");
    if let Err(e) = socket.send(msg.as_bytes()) {
        return from_error(&e);
    }
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(n) => Outcome::Connected(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => from_error(&e),
    }
}

/// Sends one UDP datagram of `size` bytes (a counting pattern) to an echo responder and
/// waits for it back: `Connected("N bytes")` when the exact datagram returns. Datagrams
/// larger than the path MTU travel as IP fragments both ways.
pub(crate) fn udp_round_trip(addr: SocketAddr, size: usize, timeout: Duration) -> Outcome {
    let socket = match udp_socket(addr, timeout) {
        Ok(s) => s,
        Err(o) => return o,
    };
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    if let Err(e) = socket.send(&msg) {
        return from_error(&e);
    }
    let mut buf = vec![0u8; 65536];
    match socket.recv(&mut buf) {
        Ok(n) if buf[..n] == msg[..] => Outcome::Connected(format!("{n} bytes")),
        Ok(n) => Outcome::Failed(format!("{n} bytes came back, not the {size} sent")),
        Err(e) => from_error(&e),
    }
}

fn from_error(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => Outcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::TimedOut,
        _ => Outcome::Failed(e.to_string()),
    }
}

/// The body of an HTTP response, or the text itself when it is not one (an echo).
fn http_body(text: &str) -> String {
    if text.starts_with("HTTP/")
        && let Some((_, body)) = text.split_once("\r\n\r\n")
    {
        return body.to_string();
    }
    text.to_string()
}
