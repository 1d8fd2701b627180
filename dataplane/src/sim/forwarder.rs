//! A raw two-port forwarder over one shared UMEM: every frame received on one port is
//! transmitted on the other as the same descriptor (no copy), after its TCP/UDP checksum is
//! completed. No switching, no flow table, no policy: the AF_XDP layer alone, to test it
//! on live veths and to measure it against the whole engine.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::afxdp::{
    AdaptivePoller, PollConfig, Umem, UmemConfig, XdpPort, XdpPortConfig, XdpPortCounters,
    enter_netns, pin_current_thread,
};
use crate::phy::{DescBatch, FrameMemory, FreeList, Port, PortFrames};
use crate::wire::{self, Parsed};

/// How to run the forwarder.
#[derive(Clone, Debug)]
pub struct ForwarderOptions {
    /// The shared UMEM.
    pub umem: UmemConfig,
    /// Both ports.
    pub port: XdpPortConfig,
    /// The busy-poll/sleep policy of the loop.
    pub poll: PollConfig,
    /// Complete the TCP/UDP checksum of every IPv4 frame (veths hand them over partial).
    pub checksums: bool,
    /// The CPU to pin the forwarder's thread to.
    pub cpu: Option<usize>,
}

impl Default for ForwarderOptions {
    fn default() -> Self {
        Self {
            umem: UmemConfig::default(),
            port: XdpPortConfig::default(),
            poll: PollConfig::default(),
            checksums: true,
            cpu: None,
        }
    }
}

/// What the forwarder saw, reported when it stops.
#[derive(Clone, Debug)]
pub struct ForwarderReport {
    /// Frames forwarded, both ways.
    pub forwarded: u64,
    /// Frames dropped because the other port's TX ring was full.
    pub dropped_tx_full: u64,
    /// Frames of the UMEM.
    pub total_frames: usize,
    /// Frames on the free list at the end.
    pub free: usize,
    /// Frames each port held at the end.
    pub held: [PortFrames; 2],
    /// Each port's counters at the end.
    pub counters: [XdpPortCounters; 2],
    /// Rounds in which free + held != total (must stay 0).
    pub accounting_violations: u64,
    /// Rounds of the loop.
    pub rounds: u64,
    /// Times the poller slept.
    pub sleeps: u64,
}

/// A running forwarder thread; stops and joins on drop, which detaches its programs.
pub struct Forwarder {
    stop: Arc<AtomicBool>,
    forwarded: Arc<AtomicU64>,
    handle: Option<JoinHandle<ForwarderReport>>,
}

impl Forwarder {
    /// Starts forwarding between `if_a` and `if_b` of namespace `ns`; returns once both ports
    /// are open (or with the error that prevented it).
    pub fn start(ns: &str, if_a: &str, if_b: &str, opts: ForwarderOptions) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (ns, if_a, if_b) = (ns.to_owned(), if_a.to_owned(), if_b.to_owned());
        let (stop2, fwd2) = (stop.clone(), forwarded.clone());
        let handle = std::thread::spawn(move || {
            let setup = || -> Result<_, String> {
                let back = enter_netns(&ns).map_err(|e| e.to_string())?;
                if let Some(cpu) = opts.cpu {
                    pin_current_thread(cpu).map_err(|e| e.to_string())?;
                }
                let umem = Umem::new(opts.umem).map_err(|e| e.to_string())?;
                let pa =
                    XdpPort::open(&umem, &if_a, &opts.port, None).map_err(|e| e.to_string())?;
                let pb = XdpPort::open(&umem, &if_b, &opts.port, Some(&pa))
                    .map_err(|e| e.to_string())?;
                Ok((back, umem, pa, pb))
            };
            match setup() {
                Ok((_back, umem, pa, pb)) => {
                    let _ = ready_tx.send(Ok(()));
                    run(umem, pa, pb, &opts, &stop2, &fwd2)
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    ForwarderReport {
                        forwarded: 0,
                        dropped_tx_full: 0,
                        total_frames: 0,
                        free: 0,
                        held: Default::default(),
                        counters: Default::default(),
                        accounting_violations: 0,
                        rounds: 0,
                        sleeps: 0,
                    }
                }
            }
        });
        let mut fwd = Self {
            stop,
            forwarded,
            handle: Some(handle),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(fwd),
            Ok(Err(e)) => {
                fwd.stop_and_report();
                Err(e)
            }
            Err(_) => Err("forwarder thread died during setup".into()),
        }
    }

    /// Frames forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }

    /// Stops the loop, drains in-flight transmits, and reports (ports are closed after).
    pub fn stop_and_report(&mut self) -> Option<ForwarderReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().and_then(|h| h.join().ok())
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        let _ = self.stop_and_report();
    }
}

fn accounting(free: &FreeList, pa: &XdpPort, pb: &XdpPort) -> usize {
    free.len() + pa.frames_held().total() + pb.frames_held().total()
}

/// Completes the TCP/UDP checksum of an IPv4 frame, as the engine does for a veth that
/// offloads it. UDP sent without a checksum (0) and IPv6 frames are left alone.
fn complete_checksum(frame: &mut [u8], parsed: &mut Parsed) {
    if wire::parse_into(frame, parsed).is_err() || parsed.ip_version != 4 {
        return;
    }
    let at = usize::from(parsed.l4_offset) + 6;
    if parsed.proto == 17 && frame.get(at..at + 2) == Some(&[0, 0][..]) {
        return;
    }
    wire::complete_l4_checksum(frame, parsed);
}

/// Moves what `from` received to `to`; returns frames moved.
#[allow(clippy::too_many_arguments)] // the loop's state, passed rather than bundled
fn pump(
    umem: &mut Umem,
    from: &mut XdpPort,
    to: &mut XdpPort,
    batch: &mut DescBatch,
    free: &mut FreeList,
    checksums: bool,
    parsed: &mut Parsed,
    dropped: &mut u64,
) -> u64 {
    batch.clear();
    from.receive(umem, batch);
    let n = batch.len() as u64;
    if n == 0 {
        return 0;
    }
    if checksums {
        for d in batch.as_slice() {
            complete_checksum(umem.bytes_mut(d.addr, d.len as usize), parsed);
        }
    }
    to.transmit(umem, batch);
    if !batch.is_empty() {
        // The other side's TX ring is full: drop (return the frames) rather than stall.
        to.complete(free);
        to.transmit(umem, batch);
        *dropped += batch.len() as u64;
        for d in batch.as_slice() {
            free.push(d.addr);
        }
        batch.clear();
    }
    n
}

fn run(
    mut umem: Umem,
    mut pa: XdpPort,
    mut pb: XdpPort,
    opts: &ForwarderOptions,
    stop: &AtomicBool,
    forwarded: &AtomicU64,
) -> ForwarderReport {
    let total = umem.frame_count();
    let mut free = FreeList::full(total, umem.frame_size());
    let mut batch = DescBatch::default();
    let mut parsed = Parsed::default();
    let mut poller = AdaptivePoller::new(&[pa.fd(), pb.fd()], opts.poll);
    let (mut count, mut dropped, mut violations, mut rounds) = (0u64, 0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        rounds += 1;
        pa.fill(&mut umem, &mut free);
        pb.fill(&mut umem, &mut free);
        let mut moved = pump(
            &mut umem,
            &mut pa,
            &mut pb,
            &mut batch,
            &mut free,
            opts.checksums,
            &mut parsed,
            &mut dropped,
        );
        moved += pump(
            &mut umem,
            &mut pb,
            &mut pa,
            &mut batch,
            &mut free,
            opts.checksums,
            &mut parsed,
            &mut dropped,
        );
        pa.complete(&mut free);
        pb.complete(&mut free);
        if accounting(&free, &pa, &pb) != total {
            violations += 1;
        }
        if moved > 0 {
            count += moved;
            forwarded.store(count, Ordering::Relaxed);
        }
        let pending = pa.has_pending_tx() || pb.has_pending_tx();
        if poller.end_round(moved > 0 || pending).is_err() {
            break;
        }
    }
    // Let the kernel finish what is queued, so the final count is exact.
    for _ in 0..1000 {
        pa.complete(&mut free);
        pb.complete(&mut free);
        if !pa.has_pending_tx() && !pb.has_pending_tx() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    ForwarderReport {
        forwarded: count,
        dropped_tx_full: dropped,
        total_frames: total,
        free: free.len(),
        held: [pa.frames_held(), pb.frames_held()],
        counters: [pa.counters(), pb.counters()],
        accounting_violations: violations,
        rounds,
        sleeps: poller.sleeps(),
    }
}
