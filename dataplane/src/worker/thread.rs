//! One worker thread: owns some ports and an engine, and runs the hot loop over them.
//!
//! Each round visits only the ports that need it — ready in the epoll set, transmitted on,
//! or short of fill frames — so its cost follows the busy ports, not the idle ones. Control
//! messages arrive between rounds; frames for other workers' ports leave as descriptors
//! through their inboxes; free frames are kept near this worker's per-segment targets.
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, TryRecvError};

use super::pools::{SparePools, Targets, rebalance};
use super::ready::{ReadySet, WAKE_TOKEN};
use super::{Control, Handoff, Shared, WorkerFrames, WorkerPort};
use crate::afxdp::PollConfig;
use crate::counters::DropReason;
use crate::engine::{ANY_SEGMENT, Engine};
use crate::offload::{FlowOffload, OffloadError};
use crate::phy::{FrameMemory, PortFrames, PortId};
use crate::wasm::swap::Reaper;

/// What a worker is built from.
pub(super) struct WorkerParts<M: FrameMemory, P> {
    pub(super) index: usize,
    pub(super) engine: Engine<M>,
    pub(super) memory: M,
    pub(super) control: Receiver<Control<P>>,
    pub(super) shared: Arc<Shared>,
    pub(super) spare: Arc<SparePools>,
    pub(super) reaper: Reaper,
    pub(super) wake_rx: UnixDatagram,
    pub(super) poll: PollConfig,
    pub(super) cpu: Option<usize>,
    /// Frames of segment 0.
    pub(super) frames: usize,
}

/// A worker: its engine, its ports and what it shares with the others.
pub(super) struct Worker<M: FrameMemory, P> {
    index: usize,
    engine: Engine<M>,
    memory: M,
    ports: Vec<(PortId, P)>,
    control: Receiver<Control<P>>,
    shared: Arc<Shared>,
    peers: Vec<Arc<Shared>>,
    /// Ports owned by other workers: id → owner.
    remote: HashMap<PortId, usize>,
    spare: Arc<SparePools>,
    targets: Targets,
    reaper: Reaper,
    wake_rx: UnixDatagram,
    /// A handed-over frame its port could not take yet (TX ring full): retried next round.
    stash: Option<Handoff>,
    poll: PollConfig,
    cpu: Option<usize>,
    rounds: Rounds,
    /// The kernel flow cache of the tiered datapath, if any.
    offload: Option<Box<dyn FlowOffload>>,
    /// When (engine clock) the kernel's activity is next read back.
    next_sync: u64,
    /// A walk of the kernel's entries is under way (continued every round).
    syncing: bool,
    /// The monotonic time (ns) at which the engine clock read 0.
    clock_origin: u64,
    /// The engine clock at the last round (control messages are handled between rounds).
    last_now: u64,
}

/// How often the kernel flow cache's counters and last-seen stamps are read back (ns):
/// often enough for counters and flow timeouts, rarely enough to cost nothing.
const OFFLOAD_SYNC_NS: u64 = 1_000_000_000;

/// The per-round bookkeeping of which ports to visit, sized when ports change, so a round
/// allocates nothing.
#[derive(Default)]
struct Rounds {
    /// Positions in `ports` to visit this round.
    active: Vec<usize>,
    /// Positions the engine transmitted on this round (each once).
    transmitted: Vec<usize>,
    /// Per position: already in `transmitted`.
    sent_marked: Vec<bool>,
    /// Positions to visit next round.
    carry: Vec<usize>,
    /// Per position: already in `active` (or `carry`) this round.
    marked: Vec<bool>,
    /// Port id → position in `ports`.
    slot: Slots,
    /// Per position: the port's starvation count already published.
    starved_seen: Vec<u64>,
    /// Positions of ports without a wait fd: visited every round.
    always: Vec<usize>,
    /// Dirty port ids copied out of the engine for the hand-off.
    dirty: Vec<PortId>,
    /// Rounds without progress.
    idle: u32,
}

/// Port id → position in the worker's `ports`, as a flat table: looked up per ready socket
/// and per handed-over frame, so no hashing.
#[derive(Default)]
struct Slots(Vec<u32>);

impl Slots {
    const NONE: u32 = u32::MAX;

    fn new(max_ports: usize, ids: impl Iterator<Item = PortId>) -> Self {
        let mut v = vec![Self::NONE; max_ports];
        for (i, id) in ids.enumerate() {
            if let Some(s) = v.get_mut(usize::from(id)) {
                *s = i as u32;
            }
        }
        Self(v)
    }

    /// The position of port `id` (a port id or an epoll token), if this worker drives it.
    #[inline]
    fn get(&self, id: u64) -> Option<usize> {
        let s = *self.0.get(usize::try_from(id).ok()?)?;
        (s != Self::NONE).then_some(s as usize)
    }
}

enum ControlOutcome {
    Idle,
    PortsChanged,
    Stop,
}

impl<M: FrameMemory, P: WorkerPort<M>> Worker<M, P> {
    pub(super) fn new(parts: WorkerParts<M, P>) -> std::io::Result<Self> {
        let mut targets = Targets::default();
        targets.add_segment(0, parts.frames);
        Ok(Self {
            index: parts.index,
            engine: parts.engine,
            memory: parts.memory,
            ports: Vec::new(),
            control: parts.control,
            shared: parts.shared,
            peers: Vec::new(),
            remote: HashMap::new(),
            spare: parts.spare,
            targets,
            reaper: parts.reaper,
            wake_rx: parts.wake_rx,
            stash: None,
            poll: parts.poll,
            cpu: parts.cpu,
            rounds: Rounds::default(),
            offload: None,
            next_sync: 0,
            syncing: false,
            clock_origin: 0,
            last_now: 0,
        })
    }

    /// The other workers' shared halves (set once, before the thread starts).
    pub(super) fn set_peers(&mut self, peers: Vec<Arc<Shared>>) {
        self.peers = peers;
    }

    pub(super) fn run(mut self) -> Vec<P> {
        if let Some(cpu) = self.cpu
            && let Err(e) = crate::afxdp::pin_current_thread(cpu)
        {
            tracing::warn!(worker = self.index, cpu, error = %e, "could not pin worker");
        }
        // The epoll set is made here, on the worker's own thread: its event buffer cannot move
        // between threads.
        let mut ready = match ReadySet::new()
            .and_then(|r| r.add(self.wake_rx.as_fd(), WAKE_TOKEN).map(|()| r))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(worker = self.index, error = %e, "cannot create the worker's epoll set: worker stopped");
                return self.ports.into_iter().map(|(_, p)| p).collect();
            }
        };
        let start = Instant::now();
        self.clock_origin = monotonic_ns();
        loop {
            match self.handle_control(&ready) {
                ControlOutcome::Stop => break,
                ControlOutcome::PortsChanged => self.ports_changed(),
                ControlOutcome::Idle => {}
            }
            // Frames first, so a port added this round fills before it is counted short.
            rebalance(self.engine.free_list_mut(), &self.targets, &self.spare);
            let mut progress = self.take_inbox();
            self.pick_active(&mut ready);
            let now = start.elapsed().as_nanos() as u64;
            self.last_now = now;
            let r = &mut self.rounds;
            r.transmitted.clear();
            let (sent, marks) = (&mut r.transmitted, &mut r.sent_marked);
            let report = self.engine.drive_active(
                now,
                &mut self.memory,
                &mut self.ports,
                &r.active,
                &mut |slot| {
                    if let Some(m) = marks.get_mut(slot)
                        && !*m
                    {
                        *m = true;
                        sent.push(slot);
                    }
                },
            );
            for &i in sent.iter() {
                marks[i] = false;
            }
            progress |= report.received > 0 || report.transmitted > 0;
            self.offload_round(now);
            self.carry_over();
            progress |= self.hand_off();
            self.end_round(&mut ready, progress);
        }
        // Frames still handed over to this worker go back to its free list; the ports go back
        // to the caller.
        for h in self
            .stash
            .take()
            .into_iter()
            .chain(std::iter::from_fn(|| self.shared.inbox.pop()))
        {
            self.engine.free_list_mut().push(h.desc.addr);
        }
        self.ports.into_iter().map(|(_, p)| p).collect()
    }

    /// Sizes the round bookkeeping for the current ports (control path: allocates).
    fn ports_changed(&mut self) {
        let n = self.ports.len();
        let r = &mut self.rounds;
        r.active = Vec::with_capacity(n + 1);
        r.transmitted = Vec::with_capacity(n + 1);
        r.sent_marked = vec![false; n];
        r.carry = (0..n).collect();
        r.marked = vec![false; n];
        r.slot = Slots::new(
            self.engine.config().max_ports,
            self.ports.iter().map(|(id, _)| *id),
        );
        r.starved_seen = self.ports.iter().map(|(_, p)| p.starved()).collect();
        r.always = self
            .ports
            .iter()
            .enumerate()
            .filter(|(_, (_, p))| p.wait_fd().is_none())
            .map(|(i, _)| i)
            .collect();
        r.dirty = Vec::with_capacity(self.engine.config().max_ports);
        self.engine.bind_slots(self.ports.iter().map(|(id, _)| *id));
    }

    /// This round's ports: last round's carry, the ports without a wait fd, and the ports
    /// the epoll set reports ready (waiting up to `timeout` for one).
    fn pick_active(&mut self, ready: &mut ReadySet) {
        let r = &mut self.rounds;
        r.active.clear();
        for i in r.carry.drain(..).chain(r.always.iter().copied()) {
            if let Some(m) = r.marked.get_mut(i)
                && !*m
            {
                *m = true;
                r.active.push(i);
            }
        }
        let res = ready.wait(Duration::ZERO, |token| {
            if token == WAKE_TOKEN {
                return;
            }
            if let Some(i) = r.slot.get(token)
                && !r.marked[i]
            {
                r.marked[i] = true;
                r.active.push(i);
            }
        });
        if let Err(e) = res {
            tracing::warn!(worker = self.index, error = %e, "epoll_wait failed");
        }
        for &i in &r.active {
            r.marked[i] = false;
        }
    }

    /// Ports to revisit next round (frames left in RX, completions pending, fill short),
    /// and the starvation counts of the ports visited, published to the engine's counters.
    fn carry_over(&mut self) {
        let r = &mut self.rounds;
        let counters = self.engine.counters();
        for &i in r.active.iter().chain(r.transmitted.iter()) {
            let Some((id, p)) = self.ports.get(i) else {
                continue;
            };
            let starved = p.starved();
            if let Some(seen) = r.starved_seen.get_mut(i)
                && starved > *seen
            {
                if let Some(pc) = counters.port(*id) {
                    pc.fill_starved.add(starved - *seen);
                }
                *seen = starved;
            }
            if !r.marked[i] && p.needs_visit() {
                r.marked[i] = true;
                r.carry.push(i);
            }
        }
        for &i in &r.carry {
            r.marked[i] = false;
        }
    }

    /// Sleeps when the worker has been idle long enough: in `epoll_wait` on the ports'
    /// sockets and the wake socket, so arriving frames, peers and the control thread wake it.
    fn end_round(&mut self, ready: &mut ReadySet, progress: bool) {
        if progress {
            self.rounds.idle = 0;
            return;
        }
        self.rounds.idle = self.rounds.idle.saturating_add(1);
        if self.rounds.idle < self.poll.spin_rounds {
            std::hint::spin_loop();
            return;
        }
        self.shared.sleeping.store(true, Ordering::SeqCst);
        // Re-check after announcing sleep, so a hand-off pushed just before is not missed.
        if self.shared.inbox.is_empty() && self.control.is_empty() {
            let r = &mut self.rounds;
            let slept = std::time::Instant::now();
            let res = ready.wait(self.poll.sleep_timeout, |token| {
                if token != WAKE_TOKEN
                    && let Some(i) = r.slot.get(token)
                    && !r.marked[i]
                {
                    r.marked[i] = true;
                    r.carry.push(i);
                }
            });
            for &i in &r.carry {
                r.marked[i] = false;
            }
            let ns = u64::try_from(slept.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.engine.counters().sleep_ns.add(ns);
            match res {
                Ok(n) if n > 0 => self.rounds.idle = 0,
                Ok(_) => {}
                Err(e) => tracing::warn!(worker = self.index, error = %e, "epoll_wait failed"),
            }
        }
        self.shared.sleeping.store(false, Ordering::SeqCst);
        let mut sink = [0u8; 64];
        while matches!(self.wake_rx.recv(&mut sink), Ok(n) if n > 0) {}
    }

    fn handle_control(&mut self, ready: &ReadySet) -> ControlOutcome {
        let mut outcome = ControlOutcome::Idle;
        loop {
            let msg = match self.control.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => return outcome,
                Err(TryRecvError::Disconnected) => return ControlOutcome::Stop,
            };
            match msg {
                Control::AddPort {
                    config,
                    role,
                    port,
                    owner,
                    segment,
                    reply,
                } => {
                    let id = config.id;
                    let local = port.is_some();
                    let seg = if local { segment } else { ANY_SEGMENT };
                    let r = self.engine.add_port_in_segment(config, seg);
                    if r.is_ok() {
                        self.engine.set_port_role(id, role);
                        match port {
                            Some(p) => {
                                if let Some(fd) = p.wait_fd()
                                    && let Err(e) = ready.add(fd, u64::from(id))
                                {
                                    tracing::warn!(worker = self.index, port = id, error = %e, "could not watch the port's socket: it is visited every round");
                                }
                                self.remote.remove(&id);
                                self.targets.local_port(segment, true);
                                self.ports.push((id, p));
                            }
                            None => {
                                self.remote.insert(id, owner);
                            }
                        }
                        outcome = ControlOutcome::PortsChanged;
                    }
                    let _ = reply.send(r);
                }
                Control::AddSegment {
                    segment,
                    frames,
                    reply,
                } => {
                    self.engine.free_list_mut().add_segment(segment, frames);
                    self.targets.add_segment(segment, frames);
                    let _ = reply.send(());
                }
                Control::Sharing { segment, workers } => {
                    self.targets.set_sharing(segment, workers);
                }
                Control::RemovePort { id, reply } => {
                    let _ = self.engine.remove_port(id);
                    // The port's kernel entries go before the port does.
                    self.apply_offload();
                    self.remote.remove(&id);
                    let port = self
                        .ports
                        .iter()
                        .position(|(p, _)| *p == id)
                        .map(|i| self.ports.swap_remove(i).1);
                    let port = port.map(|mut p| {
                        if let Some(fd) = p.wait_fd() {
                            let _ = ready.remove(fd);
                        }
                        self.targets.local_port(p.segment(), false);
                        p.complete(self.engine.free_list_mut());
                        p
                    });
                    outcome = ControlOutcome::PortsChanged;
                    let _ = reply.send(port);
                }
                Control::SetPolicy(policy) => {
                    let old = self.engine.set_policy(policy);
                    // Every kernel entry of the old generation is stale from now on: its
                    // flow's next packet is upcalled and re-decided.
                    let generation = self.engine.policy_generation();
                    if let Some(o) = self.offload.as_mut() {
                        o.set_generation(generation);
                        // Then every offloaded flow is re-decided and its entries updated,
                        // so only those whose verdict changed are upcalled.
                        self.engine.revalidate_offloaded(self.last_now);
                        self.apply_offload();
                    }
                    self.reaper.retire(Box::new(old));
                }
                Control::SetOffload(mut offload) => {
                    offload.set_generation(self.engine.policy_generation());
                    self.offload = Some(offload);
                }
                Control::Frames { reply } => {
                    let _ = reply.send(self.frames());
                }
                Control::Stop => return ControlOutcome::Stop,
            }
        }
    }

    /// Carries out the engine's requests to the kernel flow cache, counting what failed.
    fn apply_offload(&mut self) {
        let Some(off) = self.offload.as_mut() else {
            return;
        };
        let counters = self.engine.counters();
        let log = self.engine.offload_log();
        for op in log.pending() {
            match off.apply(op) {
                Ok(()) => counters.offload.applied.add(1),
                Err(OffloadError::Full) => counters.offload.refused_full.add(1),
                Err(e) => {
                    counters.offload.failed.add(1);
                    tracing::debug!(worker = self.index, error = %e, "kernel flow cache request failed");
                }
            }
        }
        log.clear();
    }

    /// After a round: the engine's kernel requests, and now and then the kernel's activity
    /// read back into the engine, a slice per round until the walk is complete (entries the
    /// engine disowns are removed by the sync).
    fn offload_round(&mut self, now: u64) {
        if self.offload.is_none() {
            return;
        }
        self.apply_offload();
        if !self.syncing && now < self.next_sync {
            return;
        }
        let Some(off) = self.offload.as_mut() else {
            return;
        };
        let engine = &mut self.engine;
        let counters = engine.counters();
        let finished = off.sync(self.clock_origin, &mut |seen| {
            let owned = engine.kernel_seen(seen, now);
            if !owned {
                counters.offload.reconciled.add(1);
            }
            owned
        });
        self.syncing = !finished;
        if finished {
            self.next_sync = now + OFFLOAD_SYNC_NS;
            if let Some(k) = off.kernel_stats() {
                counters.offload.kernel.store(&k);
            }
        }
        // Flows that expired while being looked up asked for their entries' removal.
        self.apply_offload();
    }

    fn frames(&self) -> WorkerFrames {
        let mut ports = PortFrames::default();
        for (_, p) in &self.ports {
            let h = p.frames_held();
            ports.fill += h.fill;
            ports.rx += h.rx;
            ports.tx += h.tx;
            ports.completion += h.completion;
        }
        WorkerFrames {
            free: self.engine.free_list().len(),
            queued: self.engine.frames_queued(),
            ports,
        }
    }

    /// Moves frames other workers handed over into this worker's transmit queues, sending a
    /// queue on as it fills. When a port cannot take more (its TX ring is full), the frame in
    /// hand is kept for the next round and the rest stay in the inbox: back-pressure, not loss.
    fn take_inbox(&mut self) -> bool {
        let mut any = false;
        while let Some(h) = self.stash.take().or_else(|| self.shared.inbox.pop()) {
            any = true;
            let Some(slot) = self.rounds.slot.get(u64::from(h.port)) else {
                // The port moved or went away while the frame was in flight.
                self.engine.counters().count_drop(DropReason::UnknownPort);
                self.engine.free_list_mut().push(h.desc.addr);
                continue;
            };
            let full = self.engine.tx_queue(h.port).is_some_and(|q| q.spare() == 0);
            if full {
                if let Some(q) = self.engine.tx_queue(h.port) {
                    self.ports[slot].1.transmit(&mut self.memory, q);
                }
                self.rounds.carry.push(slot);
                if self.engine.tx_queue(h.port).is_some_and(|q| q.spare() == 0) {
                    self.stash = Some(h);
                    break;
                }
            }
            self.engine
                .enqueue_handed_over(&mut self.memory, h.port, h.desc);
        }
        any
    }

    /// Hands the frames the engine queued for other workers' ports to those workers.
    fn hand_off(&mut self) -> bool {
        let mut any = false;
        let r = &mut self.rounds;
        r.dirty.clear();
        r.dirty.extend_from_slice(self.engine.dirty_ports());
        for &id in &r.dirty {
            let Some(owner) = self
                .remote
                .get(&id)
                .copied()
                .filter(|&o| o != self.index && o < self.peers.len())
            else {
                continue;
            };
            let Some(q) = self.engine.tx_queue(id) else {
                continue;
            };
            if q.is_empty() {
                continue;
            }
            any = true;
            let mut dropped: [u64; 64] = [0; 64];
            let mut n_dropped = 0;
            for d in q.as_slice() {
                if self.peers[owner]
                    .inbox
                    .push(Handoff { port: id, desc: *d })
                    .is_err()
                {
                    dropped[n_dropped] = d.addr;
                    n_dropped += 1;
                }
            }
            q.clear();
            for &a in &dropped[..n_dropped] {
                self.engine.counters().count_drop(DropReason::TxFull);
                self.engine.free_list_mut().push(a);
            }
            self.peers[owner].wake();
        }
        any
    }
}

/// CLOCK_MONOTONIC now, in ns: the kernel's `bpf_ktime_get_ns` clock, and `Instant`'s on
/// Linux, so the kernel's last-seen stamps convert to the engine's clock.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(t.tv_nsec).unwrap_or(0)
}
