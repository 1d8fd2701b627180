//! Worker threads: the engine on N cores.
//!
//! Each worker owns some ports (it alone calls their ring operations), one [`Engine`] and
//! a share of the frames. Every worker's engine knows every port (the switch must know all
//! MACs), but transmits only on its own; frames bound for another worker's port travel to
//! that worker as descriptors through a lock-free queue ([`ArrayQueue`]) — never copied —
//! and free frames are rebalanced between workers the same way. Control messages (ports
//! added or removed, a new policy, a frame count) reach a worker through a channel it checks
//! between batches, so the per-packet path takes no lock. An idle worker sleeps in `poll()`
//! on its ports' sockets and a wake socket that peers poke when they hand it frames.
//!
//! A policy replaced on a worker is sent to a reaper thread and dropped there: dropping a
//! used Wasm instance can take ~300 µs, which must not stall the hot loop.
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam::channel::{self, Receiver, Sender, TryRecvError};
use crossbeam::queue::ArrayQueue;

use crate::afxdp::{AdaptivePoller, PollConfig, Umem, XdpPort};
use crate::counters::{Counters, DropReason};
use crate::engine::{Engine, EngineConfig, EngineError, PortConfig};
use crate::phy::memory::MemoryPort;
use crate::phy::{DescBatch, FrameDesc, FrameMemory, FreeList, Port, PortFrames, PortId};
use crate::policy::Policy;

/// A port a worker thread can own: a [`Port`] that can move between threads and, when it
/// has one, a file descriptor the worker can sleep on while idle.
pub trait WorkerPort<M: FrameMemory>: Port<M> + Send {
    /// Readable when frames arrive (an AF_XDP socket); `None` for ports that cannot wake a
    /// sleeping worker (the worker then notices their frames at its next poll timeout).
    fn wait_fd(&self) -> Option<BorrowedFd<'_>>;
}

impl WorkerPort<Umem> for XdpPort {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd())
    }
}

impl<M: FrameMemory> WorkerPort<M> for MemoryPort
where
    MemoryPort: Port<M>,
{
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

/// Settings of a [`Dataplane`].
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Number of worker threads.
    pub workers: usize,
    /// Configuration of each worker's engine.
    pub engine: EngineConfig,
    /// Spin/sleep behaviour of idle workers.
    pub poll: PollConfig,
    /// Capacity of each worker's inbox of handed-over frames.
    pub inbox_capacity: usize,
    /// Pin worker `i` to CPU `cpus[i]` when given.
    pub cpus: Vec<usize>,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            engine: EngineConfig::default(),
            poll: PollConfig::default(),
            inbox_capacity: 4096,
            cpus: Vec::new(),
        }
    }
}

/// Why the dataplane refused a request.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A worker thread could not be started.
    #[error("could not start worker thread {index}: {source}")]
    Spawn {
        /// Worker index.
        index: usize,
        /// The OS error.
        source: std::io::Error,
    },
    /// The engine refused the port configuration.
    #[error("port {id}: {source}")]
    Port {
        /// The port.
        id: PortId,
        /// The engine's reason.
        source: EngineError,
    },
    /// No worker with that index.
    #[error("no worker {0} (the dataplane has {1})")]
    NoSuchWorker(usize, usize),
    /// No port with that id.
    #[error("no port {0} on the dataplane")]
    NoSuchPort(PortId),
    /// A worker thread is gone (it panicked or stopped).
    #[error("worker {0} is not running")]
    WorkerGone(usize),
}

/// A frame on its way to the worker that owns its egress port.
#[derive(Clone, Copy, Debug)]
struct Handoff {
    port: PortId,
    desc: FrameDesc,
}

/// Where a worker's frames are, for the frame-accounting invariant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerFrames {
    /// In the worker's free list.
    pub free: usize,
    /// In the engine's transmit queues.
    pub queued: usize,
    /// Held by the worker's ports.
    pub ports: PortFrames,
}

impl WorkerFrames {
    /// Every frame the worker accounts for.
    pub fn total(&self) -> usize {
        self.free + self.queued + self.ports.total()
    }
}

/// Frame counts across the dataplane: at any quiescent moment `total()` equals the frames of
/// the memory (minus those retired with removed ports).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameAccount {
    /// Per worker.
    pub workers: Vec<WorkerFrames>,
    /// In the shared pool of spare frames.
    pub spare: usize,
    /// In the inboxes between workers.
    pub in_flight: usize,
}

impl FrameAccount {
    /// Every frame accounted for.
    pub fn total(&self) -> usize {
        self.workers.iter().map(WorkerFrames::total).sum::<usize>() + self.spare + self.in_flight
    }
}

enum Control<P> {
    AddPort {
        config: PortConfig,
        port: Option<P>,
        owner: usize,
        reply: Sender<Result<(), EngineError>>,
    },
    RemovePort {
        id: PortId,
        reply: Sender<Option<P>>,
    },
    SetPolicy(Box<dyn Policy>),
    Frames {
        reply: Sender<WorkerFrames>,
    },
    Stop,
}

/// What a worker shares with its peers and the control thread.
struct Shared {
    inbox: ArrayQueue<Handoff>,
    sleeping: AtomicBool,
    wake_tx: UnixDatagram,
}

impl Shared {
    /// Pokes the worker if it is asleep; one byte per sleep, so the socket never fills.
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            // A full or closed socket means the worker is awake or gone: nothing to do.
            let _ = self.wake_tx.send(&[1]);
        }
    }
}

struct WorkerHandle<P> {
    control: Sender<Control<P>>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<Vec<P>>>,
}

/// The thread that drops replaced policies off the hot path, and the queue feeding it.
type ReaperHandle = (Sender<Box<dyn Policy>>, JoinHandle<()>);

/// The running dataplane: N worker threads over one shared frame memory.
pub struct Dataplane<M: FrameMemory, P: WorkerPort<M>> {
    workers: Vec<WorkerHandle<P>>,
    owners: HashMap<PortId, usize>,
    spare: Arc<ArrayQueue<u64>>,
    reaper: Option<ReaperHandle>,
    _memory: std::marker::PhantomData<fn(M)>,
}

impl<M, P> Dataplane<M, P>
where
    M: FrameMemory + Clone + Send + 'static,
    P: WorkerPort<M> + 'static,
{
    /// Starts `config.workers` workers over `memory`, whose frames (all free at start) are
    /// shared out evenly. `policy(i)` builds worker `i`'s first policy (each worker runs its
    /// own instance: a Wasm store is single-threaded).
    pub fn start(
        config: DataplaneConfig,
        memory: M,
        mut policy: impl FnMut(usize) -> Box<dyn Policy>,
    ) -> Result<Self, WorkerError> {
        let n = config.workers.max(1);
        let total = memory.frame_count();
        let frame_size = memory.frame_size();
        let spare = Arc::new(ArrayQueue::new(total.max(1)));
        let (reap_tx, reap_rx) = channel::unbounded::<Box<dyn Policy>>();
        let reaper = std::thread::Builder::new()
            .name("bw-reaper".into())
            .spawn(move || reap_rx.iter().for_each(drop))
            .map_err(|source| WorkerError::Spawn {
                index: usize::MAX,
                source,
            })?;
        let mut all = FreeList::full(total, frame_size);
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            // Every free list can hold every frame: frames migrate between workers.
            let mut free = FreeList::with_capacity(total);
            let share = total / n + usize::from(index < total % n);
            for _ in 0..share {
                if let Some(a) = all.pop() {
                    free.push(a);
                }
            }
            let (wake_tx, wake_rx) =
                UnixDatagram::pair().map_err(|source| WorkerError::Spawn { index, source })?;
            wake_rx
                .set_nonblocking(true)
                .map_err(|source| WorkerError::Spawn { index, source })?;
            wake_tx
                .set_nonblocking(true)
                .map_err(|source| WorkerError::Spawn { index, source })?;
            let shared = Arc::new(Shared {
                inbox: ArrayQueue::new(config.inbox_capacity.max(64)),
                sleeping: AtomicBool::new(false),
                wake_tx,
            });
            let engine = Engine::new(config.engine.clone(), policy(index), free);
            let counters = engine.counters();
            let (ctl_tx, ctl_rx) = channel::unbounded();
            let worker = Worker {
                index,
                engine,
                memory: memory.clone(),
                ports: Vec::new(),
                control: ctl_rx,
                shared: Arc::clone(&shared),
                peers: Vec::new(),
                remote: HashMap::new(),
                spare: Arc::clone(&spare),
                reaper: reap_tx.clone(),
                wake_rx,
                stash: None,
                poll: config.poll,
                cpu: config.cpus.get(index).copied(),
                // Each worker keeps a modest cache of free frames and leaves the rest in the
                // shared pool, so frames completed on one worker flow back to the one receiving.
                target_free: (total / (4 * n)).max(DescBatch::CAPACITY),
            };
            workers.push((
                worker,
                WorkerHandle {
                    control: ctl_tx,
                    shared,
                    counters,
                    thread: None,
                },
            ));
        }
        let peers: Vec<Arc<Shared>> = workers.iter().map(|(_, h)| Arc::clone(&h.shared)).collect();
        let mut handles = Vec::with_capacity(n);
        for (mut worker, mut handle) in workers {
            worker.peers = peers.clone();
            let index = worker.index;
            handle.thread = Some(
                std::thread::Builder::new()
                    .name(format!("bw-worker-{index}"))
                    .spawn(move || worker.run())
                    .map_err(|source| WorkerError::Spawn { index, source })?,
            );
            handles.push(handle);
        }
        Ok(Self {
            workers: handles,
            owners: HashMap::new(),
            spare,
            reaper: Some((reap_tx, reaper)),
            _memory: std::marker::PhantomData,
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Adds a port: every worker's switch learns it, and worker `owner` drives it.
    pub fn add_port(
        &mut self,
        config: PortConfig,
        port: P,
        owner: usize,
    ) -> Result<(), WorkerError> {
        let n = self.workers.len();
        if owner >= n {
            return Err(WorkerError::NoSuchWorker(owner, n));
        }
        let id = config.id;
        let mut port = Some(port);
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel::bounded(1);
            let msg = Control::AddPort {
                config: config.clone(),
                port: if i == owner { port.take() } else { None },
                owner,
                reply: tx,
            };
            w.control
                .send(msg)
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
            rx.recv()
                .map_err(|_| WorkerError::WorkerGone(i))?
                .map_err(|source| WorkerError::Port { id, source })?;
        }
        self.owners.insert(id, owner);
        Ok(())
    }

    /// Removes a port from every worker and returns it (with the frames it still holds, which
    /// the caller releases by dropping it).
    pub fn remove_port(&mut self, id: PortId) -> Result<P, WorkerError> {
        let owner = self.owners.remove(&id).ok_or(WorkerError::NoSuchPort(id))?;
        let mut found = None;
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel::bounded(1);
            w.control
                .send(Control::RemovePort { id, reply: tx })
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
            let p = rx.recv().map_err(|_| WorkerError::WorkerGone(i))?;
            if i == owner {
                found = p;
            }
        }
        found.ok_or(WorkerError::NoSuchPort(id))
    }

    /// Installs a new policy on every worker, built by `policy(i)` on the calling thread
    /// (compiling and instantiating never happens on a worker). Each worker swaps it in
    /// between two batches; every batch is judged entirely by one generation.
    pub fn set_policy(
        &self,
        mut policy: impl FnMut(usize) -> Box<dyn Policy>,
    ) -> Result<(), WorkerError> {
        for (i, w) in self.workers.iter().enumerate() {
            w.control
                .send(Control::SetPolicy(policy(i)))
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
        }
        Ok(())
    }

    /// Each worker's counters, readable while the workers run.
    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.workers
            .iter()
            .map(|w| Arc::clone(&w.counters))
            .collect()
    }

    /// Where every frame is. Exact when no traffic is moving; under traffic a frame can be
    /// counted twice or missed while it crosses between workers.
    pub fn frames(&self) -> Result<FrameAccount, WorkerError> {
        let mut account = FrameAccount::default();
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel::bounded(1);
            w.control
                .send(Control::Frames { reply: tx })
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
            account
                .workers
                .push(rx.recv().map_err(|_| WorkerError::WorkerGone(i))?);
            account.in_flight += w.shared.inbox.len();
        }
        account.spare = self.spare.len();
        Ok(account)
    }

    /// Stops every worker and returns the ports they owned.
    pub fn stop(mut self) -> Vec<P> {
        self.stop_workers()
    }

    fn stop_workers(&mut self) -> Vec<P> {
        let mut ports = Vec::new();
        for w in &self.workers {
            let _ = w.control.send(Control::Stop);
            w.shared.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                match t.join() {
                    Ok(p) => ports.extend(p),
                    Err(_) => tracing::error!("a dataplane worker panicked"),
                }
            }
        }
        if let Some((tx, t)) = self.reaper.take() {
            drop(tx);
            let _ = t.join();
        }
        ports
    }
}

impl<M: FrameMemory, P: WorkerPort<M>> Drop for Dataplane<M, P> {
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.control.send(Control::Stop);
            w.shared.wake();
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
        if let Some((tx, t)) = self.reaper.take() {
            drop(tx);
            let _ = t.join();
        }
    }
}

struct Worker<M: FrameMemory, P> {
    index: usize,
    engine: Engine<M>,
    memory: M,
    ports: Vec<(PortId, P)>,
    control: Receiver<Control<P>>,
    shared: Arc<Shared>,
    peers: Vec<Arc<Shared>>,
    /// Ports owned by other workers: id → owner.
    remote: HashMap<PortId, usize>,
    spare: Arc<ArrayQueue<u64>>,
    reaper: Sender<Box<dyn Policy>>,
    wake_rx: UnixDatagram,
    /// A handed-over frame its port could not take yet (TX ring full): retried next round.
    stash: Option<Handoff>,
    poll: PollConfig,
    cpu: Option<usize>,
    target_free: usize,
}

impl<M: FrameMemory, P: WorkerPort<M>> Worker<M, P> {
    fn run(mut self) -> Vec<P> {
        if let Some(cpu) = self.cpu
            && let Err(e) = crate::afxdp::pin_current_thread(cpu)
        {
            tracing::warn!(worker = self.index, cpu, error = %e, "could not pin worker");
        }
        let start = Instant::now();
        let mut poller = self.new_poller();
        let mut remote_ids: Vec<PortId> = Vec::new();
        loop {
            match self.handle_control() {
                ControlOutcome::Stop => break,
                ControlOutcome::PortsChanged => {
                    poller = self.new_poller();
                    remote_ids = self.remote.keys().copied().collect();
                }
                ControlOutcome::Idle => {}
            }
            let mut progress = self.take_inbox();
            let now = start.elapsed().as_nanos() as u64;
            let report = self.engine.drive(now, &mut self.memory, &mut self.ports);
            progress |= report.received > 0 || report.transmitted > 0;
            progress |= self.hand_off(&remote_ids);
            self.rebalance();
            if poller_about_to_sleep(&poller, &self.poll, progress) {
                self.shared.sleeping.store(true, Ordering::SeqCst);
                // Re-check after announcing sleep, so a hand-off pushed just before is not missed.
                if !self.shared.inbox.is_empty() || !self.control.is_empty() {
                    self.shared.sleeping.store(false, Ordering::SeqCst);
                    progress = true;
                }
            }
            if let Err(e) = poller.end_round(progress) {
                tracing::warn!(worker = self.index, error = %e, "poll failed");
            }
            self.shared.sleeping.store(false, Ordering::SeqCst);
            let mut sink = [0u8; 64];
            while matches!(self.wake_rx.recv(&mut sink), Ok(n) if n > 0) {}
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

    fn new_poller(&self) -> AdaptivePoller {
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.wake_rx.as_fd()];
        fds.extend(self.ports.iter().filter_map(|(_, p)| p.wait_fd()));
        AdaptivePoller::new(&fds, self.poll)
    }

    fn handle_control(&mut self) -> ControlOutcome {
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
                    port,
                    owner,
                    reply,
                } => {
                    let id = config.id;
                    let r = self.engine.add_port(config);
                    if r.is_ok() {
                        match port {
                            Some(p) => {
                                self.remote.remove(&id);
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
                Control::RemovePort { id, reply } => {
                    let _ = self.engine.remove_port(id);
                    self.remote.remove(&id);
                    let port = self
                        .ports
                        .iter()
                        .position(|(p, _)| *p == id)
                        .map(|i| self.ports.swap_remove(i).1);
                    let port = port.map(|mut p| {
                        p.complete(self.engine.free_list_mut());
                        p
                    });
                    outcome = ControlOutcome::PortsChanged;
                    let _ = reply.send(port);
                }
                Control::SetPolicy(policy) => {
                    let old = self.engine.set_policy(policy);
                    if let Err(e) = self.reaper.send(old) {
                        // The reaper is gone (shutting down): drop here rather than leak.
                        drop(e.into_inner());
                    }
                }
                Control::Frames { reply } => {
                    let mut ports = PortFrames::default();
                    for (_, p) in &self.ports {
                        let h = p.frames_held();
                        ports.fill += h.fill;
                        ports.rx += h.rx;
                        ports.tx += h.tx;
                        ports.completion += h.completion;
                    }
                    let _ = reply.send(WorkerFrames {
                        free: self.engine.free_list().len(),
                        queued: self.engine.frames_queued(),
                        ports,
                    });
                }
                Control::Stop => return ControlOutcome::Stop,
            }
        }
    }

    /// Moves frames other workers handed over into this worker's transmit queues, sending a
    /// queue on as it fills. When a port cannot take more (its TX ring is full), the frame in
    /// hand is kept for the next round and the rest stay in the inbox: back-pressure, not loss.
    fn take_inbox(&mut self) -> bool {
        let mut any = false;
        while let Some(h) = self.stash.take().or_else(|| self.shared.inbox.pop()) {
            any = true;
            let Some(slot) = self.ports.iter().position(|(id, _)| *id == h.port) else {
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
                if self.engine.tx_queue(h.port).is_some_and(|q| q.spare() == 0) {
                    self.stash = Some(h);
                    break;
                }
            }
            self.engine.enqueue_handed_over(h.port, h.desc);
        }
        any
    }

    /// Hands the frames the engine queued for other workers' ports to those workers.
    fn hand_off(&mut self, remote_ids: &[PortId]) -> bool {
        let mut any = false;
        for &id in remote_ids {
            let Some(owner) = self.owner_of(id) else {
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

    fn owner_of(&self, id: PortId) -> Option<usize> {
        self.remote
            .get(&id)
            .copied()
            .filter(|&o| o != self.index && o < self.peers.len())
    }

    /// Keeps this worker's free frames near its cache size: surplus goes to the shared spare
    /// pool (frames completed here that another worker received), shortage is refilled from it.
    fn rebalance(&mut self) {
        let free = self.engine.free_list_mut();
        // A little hysteresis so frames do not shuttle through the pool every round.
        let slack = (self.target_free / 8).max(1);
        if free.len() > self.target_free + slack {
            while free.len() > self.target_free {
                let Some(a) = free.pop() else { break };
                if let Err(a) = self.spare.push(a) {
                    free.push(a);
                    break;
                }
            }
        } else if free.len() + slack < self.target_free {
            while free.len() < self.target_free {
                let Some(a) = self.spare.pop() else { break };
                free.push(a);
            }
        }
    }
}

enum ControlOutcome {
    Idle,
    PortsChanged,
    Stop,
}

fn poller_about_to_sleep(poller: &AdaptivePoller, config: &PollConfig, progress: bool) -> bool {
    !progress && poller.idle_rounds().saturating_add(1) >= config.spin_rounds
}
