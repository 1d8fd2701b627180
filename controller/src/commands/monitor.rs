//! `monitor` and `capture`: the running dataplane's verdicts and frames as they happen,
//! one line each for people (container names, rule, reason), JSON lines for scripts, and
//! pcap for Wireshark.
use std::path::Path;

use anyhow::Context;
use dataplane::phy::pcap::write_pcap;
use dataplane::phy::tap::{CapturedFrame, Direction};

use super::live::url_component;
use crate::control::Client;
use crate::control::api::{self, CaptureLine, MonitorLine, VerdictLine};

/// One verdict as a line: time, verdict (and reason), from → to, addresses, rule.
pub fn verdict_line(v: &VerdictLine) -> String {
    let secs = v.at_unix_ns / 1_000_000_000;
    let ms = (v.at_unix_ns / 1_000_000) % 1000;
    let tod = secs % 86_400;
    let verdict = match (&v.reason, v.audit) {
        (Some(r), true) => format!("AUDIT {} ({r}, forwarded)", v.verdict.to_uppercase()),
        (Some(r), false) => format!("{} ({r})", v.verdict.to_uppercase()),
        (None, _) => v.verdict.to_uppercase(),
    };
    format!(
        "{:02}:{:02}:{:02}.{ms:03} {verdict:<8} {} → {}  {} {} → {}  rule {}: {} [gen {}]",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60,
        v.from,
        v.to,
        v.proto,
        v.src,
        v.dst,
        v.rule.map_or("-".to_string(), |r| r.to_string()),
        v.rule_text,
        v.generation
    )
}

/// What `monitor` prints.
#[derive(Clone, Debug, Default)]
pub struct MonitorArgs {
    /// Denials only.
    pub drops: bool,
    /// One container's traffic only.
    pub container: Option<String>,
    /// JSON lines.
    pub json: bool,
    /// Stop after this many events.
    pub count: Option<u64>,
}

/// `monitor`: follows the verdict stream until interrupted (or `count` events).
pub fn monitor(c: &Client, a: &MonitorArgs) -> anyhow::Result<()> {
    let mut path = format!("{}?drops={}", api::MONITOR, a.drops);
    if let Some(n) = &a.container {
        path.push_str(&format!("&container={}", url_component(n)));
    }
    if !a.json {
        eprintln!(
            "following verdicts{}{} (Ctrl-C stops)",
            if a.drops { ", denials only" } else { "" },
            a.container
                .as_ref()
                .map(|c| format!(", container {c}"))
                .unwrap_or_default()
        );
    }
    let mut seen = 0u64;
    let mut failure: Option<anyhow::Error> = None;
    c.stream(&path, |line| {
        let parsed: MonitorLine = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                failure = Some(anyhow::anyhow!("unexpected monitor line: {e}"));
                return false;
            }
        };
        if a.json {
            println!("{}", String::from_utf8_lossy(line));
        }
        match parsed {
            MonitorLine::Verdict(v) => {
                seen += 1;
                if !a.json {
                    println!("{}", verdict_line(&v));
                }
            }
            MonitorLine::Lost { events } if !a.json => {
                println!("… {events} events not shown (rate limit or a slow reader)");
            }
            MonitorLine::Lost { .. } => {}
        }
        a.count.is_none_or(|n| seen < n)
    })?;
    failure.map_or(Ok(()), Err)
}

/// What `capture` does.
#[derive(Clone, Debug)]
pub struct CaptureArgs {
    /// The container (or `gateway`).
    pub port: String,
    /// Frames to capture.
    pub count: usize,
    /// Bytes kept per frame.
    pub snaplen: usize,
    /// Give up after this many seconds.
    pub timeout_secs: u64,
    /// Write pcap here (`-` for standard output) instead of printing lines.
    pub write: Option<std::path::PathBuf>,
    /// JSON lines.
    pub json: bool,
}

/// `capture`: the frames a port sees with the verdicts of their flows; pcap with `-w`.
pub fn capture(c: &Client, a: &CaptureArgs) -> anyhow::Result<()> {
    let path = format!(
        "{}?port={}&count={}&snaplen={}&timeout_ms={}",
        api::CAPTURE,
        url_component(&a.port),
        a.count,
        a.snaplen,
        a.timeout_secs.saturating_mul(1000)
    );
    let to_stdout_pcap = a.write.as_deref() == Some(Path::new("-"));
    let mut frames: Vec<CapturedFrame> = Vec::new();
    let mut done = None;
    let mut bad = None;
    c.stream(&path, |line| {
        let parsed: CaptureLine = match serde_json::from_slice(line) {
            Ok(l) => l,
            Err(e) => {
                bad = Some(e.to_string());
                return false;
            }
        };
        if a.json && a.write.is_none() {
            println!("{}", String::from_utf8_lossy(line));
        }
        match parsed {
            CaptureLine::Frame {
                direction,
                at_unix_ns,
                orig_len,
                data,
            } => {
                let direction = if direction == "in" {
                    Direction::In
                } else {
                    Direction::Out
                };
                if !a.json && a.write.is_none() {
                    println!("{}", frame_line(direction, at_unix_ns, orig_len, &data));
                }
                frames.push(CapturedFrame {
                    direction,
                    at_unix_ns,
                    orig_len,
                    data,
                });
            }
            CaptureLine::Verdict(v) => {
                if !a.json && !to_stdout_pcap {
                    let text = format!("    verdict: {}", verdict_line(&v));
                    if a.write.is_some() {
                        eprintln!("{text}");
                    } else {
                        println!("{text}");
                    }
                }
            }
            CaptureLine::Done { captured, missed } => {
                done = Some((captured, missed));
                return false;
            }
        }
        true
    })?;
    if let Some(e) = bad {
        anyhow::bail!("unexpected capture line: {e}");
    }
    if let Some(w) = &a.write {
        use std::io::Write as _;
        if to_stdout_pcap {
            let mut out =
                write_pcap(std::io::stdout().lock(), frames.iter()).context("writing pcap")?;
            out.flush().context("writing pcap")?;
        } else {
            // Frames of other people's traffic: readable by root only, like the rules.
            let f = {
                use std::os::unix::fs::OpenOptionsExt as _;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(w)
            }
            .with_context(|| format!("creating {}", w.display()))?;
            let mut out = write_pcap(std::io::BufWriter::new(f), frames.iter())
                .with_context(|| format!("writing {}", w.display()))?;
            out.flush()
                .with_context(|| format!("writing {}", w.display()))?;
        }
    }
    let (captured, missed) = done.unwrap_or((frames.len() as u64, 0));
    if !to_stdout_pcap && !a.json {
        eprintln!(
            "{captured} frames captured on {}{}{}",
            a.port,
            if missed > 0 {
                format!(", {missed} missed (no free capture slot)")
            } else {
                String::new()
            },
            a.write
                .as_ref()
                .map(|w| format!(", written to {}", w.display()))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One frame as a line: time, direction, length, and what it carries (etherparse).
fn frame_line(d: Direction, at_unix_ns: u64, orig_len: u32, data: &[u8]) -> String {
    let tod = (at_unix_ns / 1_000_000_000) % 86_400;
    let us = (at_unix_ns / 1000) % 1_000_000;
    format!(
        "{:02}:{:02}:{:02}.{us:06} {} {orig_len:>5} B  {}",
        tod / 3600,
        (tod / 60) % 60,
        tod % 60,
        match d {
            Direction::In => "in ",
            Direction::Out => "out",
        },
        summary(data)
    )
}

/// What a frame carries, tcpdump-like.
pub fn summary(data: &[u8]) -> String {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    let Ok(p) = SlicedPacket::from_ethernet(data) else {
        return "(not parsed)".into();
    };
    let (src, dst) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().to_string(),
            v4.header().destination_addr().to_string(),
        ),
        Some(NetSlice::Ipv6(v6)) => (
            v6.header().source_addr().to_string(),
            v6.header().destination_addr().to_string(),
        ),
        _ => {
            return match p.link.as_ref().and_then(|l| l.to_header()) {
                Some(etherparse::LinkHeader::Ethernet2(e)) => {
                    format!("ethertype {:#06x}", u16::from(e.ether_type))
                }
                _ => "(no IP)".into(),
            };
        }
    };
    match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let mut flags = String::new();
            for (on, c) in [
                (t.syn(), 'S'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
                (t.ack(), '.'),
            ] {
                if on {
                    flags.push(c);
                }
            }
            format!(
                "tcp {src}:{} → {dst}:{} [{flags}] {} B payload",
                t.source_port(),
                t.destination_port(),
                t.payload().len()
            )
        }
        Some(TransportSlice::Udp(u)) => format!(
            "udp {src}:{} → {dst}:{} {} B payload",
            u.source_port(),
            u.destination_port(),
            u.payload().len()
        ),
        Some(TransportSlice::Icmpv4(i)) => {
            format!("icmp {src} → {dst} type {}", i.type_u8())
        }
        Some(TransportSlice::Icmpv6(i)) => {
            format!("icmpv6 {src} → {dst} type {}", i.type_u8())
        }
        _ => format!("ip {src} → {dst}"),
    }
}
