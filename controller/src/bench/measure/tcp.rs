//! TCP bulk from the client to the server container with `iperf3` (Debian's package): a
//! one-off server (`iperf3 -s -1`) in the server's namespace, the client's JSON report
//! (`-J`) read for the received throughput and the retransmits. Running iperf3 is the
//! measurement itself, so the harness runs it.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::bench::error::{BenchError, Result};
use crate::bench::paths::Path;
use crate::bench::report::TcpSample;
use crate::bench::scenario::{CLIENT, IPERF_PORT, SERVER};

/// An iperf3 server process, killed (by its pid) and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `iperf3` is on PATH.
pub fn available() -> bool {
    Command::new("iperf3")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs iperf3 for `secs` seconds through `path`.
pub fn measure(path: &mut dyn Path, round: u32, rules: usize, secs: f64) -> Result<TcpSample> {
    let topo = path.topology();
    let port = IPERF_PORT.to_string();
    let mut server = Command::new("iperf3");
    server
        .args(["-s", "-1", "-p", &port])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = topo
        .container(SERVER)
        .ns
        .spawn(&mut server)
        .map_err(|e| BenchError::measure("tcp", format!("iperf3 -s: {e}")))?;
    let _server = Server(child);
    let ip = topo.server_ip().to_string();
    let secs_arg = format!("{}", secs.max(1.0).round() as u64);
    // The server needs a moment to listen; retry the client briefly.
    // iperf3 -J reports a failure in its JSON ("error"), sometimes with exit status 0.
    let deadline = Instant::now() + Duration::from_secs(5);
    let v: serde_json::Value = loop {
        let attempt = topo
            .container(CLIENT)
            .ns
            .exec(
                "iperf3",
                &["-c", &ip, "-p", &port, "-t", &secs_arg, "-J"],
                None,
            )
            .and_then(|out| {
                let v: serde_json::Value = serde_json::from_str(&out)?;
                match v["error"].as_str() {
                    Some(e) => Err(BenchError::measure("tcp", format!("iperf3: {e}"))),
                    None => Ok(v),
                }
            });
        match attempt {
            Ok(v) => break v,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    let end = &v["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| BenchError::measure("tcp", "no end.sum_received in iperf3's JSON"))?;
    Ok(TcpSample {
        path: path.kind().name().into(),
        round,
        rules,
        gbps: bps / 1e9,
        retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}
