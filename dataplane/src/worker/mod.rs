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
//! A policy replaced on a worker is handed to the Wasm host's [`Reaper`] and dropped on its
//! thread: dropping a used Wasm instance can take ~300 µs, which must not stall the hot loop.
//!
//! # Cost that does not grow with idle ports
//! A worker does not visit every port every round. It keeps an epoll set of its ports'
//! sockets ([`ready`]) and each round visits only the ports that are ready (frames arrived),
//! that it transmitted on (completions to reap) or that are short of fill frames; the rest
//! cost nothing until the kernel reports them ready. Frames are budgeted per port (a fill
//! share, not a ring's worth) and per memory segment ([`pools`]).
mod pools;
mod ready;
mod thread;

use std::collections::HashMap;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam::channel::{self, Sender};
use crossbeam::queue::ArrayQueue;

use crate::afxdp::{PollConfig, Umem, XdpPort};
use crate::counters::Counters;
use crate::engine::{Engine, EngineConfig, EngineError, PortConfig};
use crate::events::EventRing;
use crate::offload::{FlowOffload, PortRole};
use crate::phy::memory::MemoryPort;
use crate::phy::{FrameDesc, FrameMemory, FreeList, Port, PortFrames, PortId, SegmentId};
use crate::policy::Policy;
use crate::wasm::RuntimeError;
use crate::wasm::swap::Reaper;

pub use pools::MAX_SEGMENTS;
use pools::SparePools;
use thread::Worker;

/// A port a worker thread can own: a [`Port`] that can move between threads and, when it
/// has one, a file descriptor the worker can sleep on while idle.
pub trait WorkerPort<M: FrameMemory>: Port<M> + Send {
    /// Readable when frames arrive (an AF_XDP socket); `None` for ports that cannot wake a
    /// sleeping worker (the worker then visits them every round).
    fn wait_fd(&self) -> Option<BorrowedFd<'_>>;
    /// True when the port needs a visit although its socket may not be readable: frames
    /// wait in its RX ring, transmitted frames await completion, or its fill side is short
    /// of its share.
    fn needs_visit(&self) -> bool;
    /// How often the port was starved of fill frames so far (a running count).
    fn starved(&self) -> u64;
    /// Closes the port and returns every frame it held (nothing touches them any more).
    fn close(self) -> Vec<u64>
    where
        Self: Sized;
}

impl WorkerPort<Umem> for XdpPort {
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.fd())
    }

    fn needs_visit(&self) -> bool {
        self.has_pending_tx() || self.fill_short() || Port::<Umem>::frames_held(self).rx > 0
    }

    fn starved(&self) -> u64 {
        self.counters().fill_starved
    }

    fn close(self) -> Vec<u64> {
        XdpPort::close(self)
    }
}

impl<M: FrameMemory> WorkerPort<M> for MemoryPort
where
    MemoryPort: Port<M>,
{
    fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    fn needs_visit(&self) -> bool {
        true
    }

    fn starved(&self) -> u64 {
        self.stats().fill_starved
    }

    fn close(self) -> Vec<u64> {
        MemoryPort::close(self)
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
    /// The thread that drops retired policies could not be started.
    #[error("could not start the policy reaper: {0}")]
    Reaper(#[from] RuntimeError),
    /// A worker thread is gone (it panicked or stopped).
    #[error("worker {0} is not running")]
    WorkerGone(usize),
    /// A memory segment added twice, beyond the limit, or used before it was added.
    #[error("memory segment {0} is unknown, already added or beyond the limit of {MAX_SEGMENTS}")]
    Segment(SegmentId),
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

/// Frame counts across the dataplane: at any quiescent moment `total()` equals `expected`,
/// the frames of every memory segment (removed ports give theirs back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameAccount {
    /// Per worker.
    pub workers: Vec<WorkerFrames>,
    /// In the shared pools of spare frames.
    pub spare: usize,
    /// In the inboxes between workers.
    pub in_flight: usize,
    /// Frames of every segment the dataplane was given.
    pub expected: usize,
}

impl FrameAccount {
    /// Every frame accounted for.
    pub fn total(&self) -> usize {
        self.workers.iter().map(WorkerFrames::total).sum::<usize>() + self.spare + self.in_flight
    }

    /// True when every frame is in exactly one place: none lost, none counted twice.
    pub fn balanced(&self) -> bool {
        self.total() == self.expected
    }
}

enum Control<P> {
    AddPort {
        config: PortConfig,
        role: PortRole,
        port: Option<P>,
        owner: usize,
        segment: SegmentId,
        reply: Sender<Result<(), EngineError>>,
    },
    AddSegment {
        segment: SegmentId,
        frames: usize,
        reply: Sender<()>,
    },
    Sharing {
        segment: SegmentId,
        workers: usize,
    },
    RemovePort {
        id: PortId,
        reply: Sender<Option<P>>,
    },
    SetPolicy(Box<dyn Policy>),
    SetOffload(Box<dyn FlowOffload>),
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
    events: Arc<EventRing>,
    audit: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<P>>>,
}

/// The running dataplane: N worker threads over one shared frame memory.
pub struct Dataplane<M: FrameMemory, P: WorkerPort<M>> {
    workers: Vec<WorkerHandle<P>>,
    /// Port → (owning worker, memory segment).
    owners: HashMap<PortId, (usize, SegmentId)>,
    spare: Arc<SparePools>,
    /// Frames of every segment.
    frames: usize,
    frame_size: usize,
    _memory: std::marker::PhantomData<fn(M)>,
}

impl<M, P> Dataplane<M, P>
where
    M: FrameMemory + Clone + Send + 'static,
    P: WorkerPort<M> + 'static,
{
    /// Starts `config.workers` workers over `memory`, whose frames (all free at start, in
    /// segment 0) go to the shared pool; workers take their part as ports arrive.
    /// `policy(i)` builds worker `i`'s first policy (each worker runs its own instance: a
    /// Wasm store is single-threaded).
    pub fn start(
        config: DataplaneConfig,
        memory: M,
        mut policy: impl FnMut(usize) -> Box<dyn Policy>,
    ) -> Result<Self, WorkerError> {
        let n = config.workers.max(1);
        let total = memory.frame_count();
        let frame_size = memory.frame_size();
        let spare = Arc::new(SparePools::new());
        spare.add(0, total);
        let mut all = FreeList::full(total, frame_size);
        while let Some(a) = all.pop() {
            spare.give(0, a);
        }
        let reaper = Reaper::spawn()?;
        let mut workers = Vec::with_capacity(n);
        for index in 0..n {
            let (wake_tx, wake_rx) =
                UnixDatagram::pair().map_err(|source| WorkerError::Spawn { index, source })?;
            for s in [&wake_rx, &wake_tx] {
                s.set_nonblocking(true)
                    .map_err(|source| WorkerError::Spawn { index, source })?;
            }
            let shared = Arc::new(Shared {
                inbox: ArrayQueue::new(config.inbox_capacity.max(64)),
                sleeping: AtomicBool::new(false),
                wake_tx,
            });
            // Every free list can hold every frame: frames migrate between workers.
            let engine = Engine::new(
                config.engine.clone(),
                policy(index),
                FreeList::with_capacity(total),
            );
            let (counters, events, audit) =
                (engine.counters(), engine.events(), engine.audit_switch());
            let (ctl_tx, ctl_rx) = channel::unbounded();
            let worker = Worker::new(thread::WorkerParts {
                index,
                engine,
                memory: memory.clone(),
                control: ctl_rx,
                shared: Arc::clone(&shared),
                spare: Arc::clone(&spare),
                reaper: reaper.clone(),
                wake_rx,
                poll: config.poll,
                cpu: config.cpus.get(index).copied(),
                frames: total,
            })
            .map_err(|source| WorkerError::Spawn { index, source })?;
            workers.push((
                worker,
                WorkerHandle {
                    control: ctl_tx,
                    shared,
                    counters,
                    events,
                    audit,
                    thread: None,
                },
            ));
        }
        let peers: Vec<Arc<Shared>> = workers.iter().map(|(_, h)| Arc::clone(&h.shared)).collect();
        let mut handles = Vec::with_capacity(n);
        for (index, (mut worker, mut handle)) in workers.into_iter().enumerate() {
            worker.set_peers(peers.clone());
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
            frames: total,
            frame_size,
            _memory: std::marker::PhantomData,
        })
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Adds memory segment `segment` of `frames` frames (all free; e.g. a UMEM segment from
    /// `Umem::add_segment`) before any port uses it. Every worker makes room for its frames
    /// (so returning one never allocates) and the frames wait in the shared pool.
    pub fn add_segment(&mut self, segment: SegmentId, frames: usize) -> Result<(), WorkerError> {
        if !self.spare.add(segment, frames) {
            return Err(WorkerError::Segment(segment));
        }
        let base = crate::phy::segment_base(segment);
        for i in 0..frames as u64 {
            self.spare.give(segment, base + i * self.frame_size as u64);
        }
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel::bounded(1);
            w.control
                .send(Control::AddSegment {
                    segment,
                    frames,
                    reply: tx,
                })
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
            rx.recv().map_err(|_| WorkerError::WorkerGone(i))?;
        }
        self.frames += frames;
        Ok(())
    }

    /// Adds a port: every worker's switch learns it, and worker `owner` drives it. Its
    /// frames come from the memory segment it reports ([`Port::segment`]).
    pub fn add_port(
        &mut self,
        config: PortConfig,
        port: P,
        owner: usize,
    ) -> Result<(), WorkerError> {
        self.add_port_as(config, port, owner, PortRole::Plain)
    }

    /// [`Dataplane::add_port`] for a port with a part in the tiered datapath (see
    /// [`crate::offload`]): every worker learns its role, since any of them may offload a
    /// flow leaving by it.
    pub fn add_port_as(
        &mut self,
        config: PortConfig,
        port: P,
        owner: usize,
        role: PortRole,
    ) -> Result<(), WorkerError> {
        let n = self.workers.len();
        if owner >= n {
            return Err(WorkerError::NoSuchWorker(owner, n));
        }
        let id = config.id;
        let segment = port.segment();
        if self.spare.get(segment).is_none() {
            return Err(WorkerError::Segment(segment));
        }
        let mut port = Some(port);
        for (i, w) in self.workers.iter().enumerate() {
            let (tx, rx) = channel::bounded(1);
            let msg = Control::AddPort {
                config: config.clone(),
                role,
                port: if i == owner { port.take() } else { None },
                owner,
                segment,
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
        self.owners.insert(id, (owner, segment));
        self.announce_sharing(segment)
    }

    /// Tells every worker how many workers now have ports on `segment`.
    fn announce_sharing(&self, segment: SegmentId) -> Result<(), WorkerError> {
        let mut users: Vec<usize> = self
            .owners
            .values()
            .filter(|(_, s)| *s == segment)
            .map(|(o, _)| *o)
            .collect();
        users.sort_unstable();
        users.dedup();
        for (i, w) in self.workers.iter().enumerate() {
            w.control
                .send(Control::Sharing {
                    segment,
                    workers: users.len(),
                })
                .map_err(|_| WorkerError::WorkerGone(i))?;
            w.shared.wake();
        }
        Ok(())
    }

    /// Removes a port from every worker, closes it and returns the frames it held to the
    /// shared pool. Returns how many frames came back.
    pub fn remove_port(&mut self, id: PortId) -> Result<usize, WorkerError> {
        let (owner, segment) = self.owners.remove(&id).ok_or(WorkerError::NoSuchPort(id))?;
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
        let port = found.ok_or(WorkerError::NoSuchPort(id))?;
        let frames = port.close();
        let back = frames.len();
        for a in frames {
            if !self.spare.give(crate::phy::segment_of(a), a) {
                tracing::error!(port = id, addr = a, "a closed port's frame fits no pool");
            }
        }
        self.announce_sharing(segment)?;
        Ok(back)
    }

    /// Gives worker `worker` the kernel flow cache its engine offloads flows to (the tiered
    /// datapath); it applies the engine's requests after every round and syncs the kernel's
    /// activity back about once a second.
    pub fn set_offload(
        &self,
        worker: usize,
        offload: Box<dyn FlowOffload>,
    ) -> Result<(), WorkerError> {
        let n = self.workers.len();
        let w = self
            .workers
            .get(worker)
            .ok_or(WorkerError::NoSuchWorker(worker, n))?;
        w.control
            .send(Control::SetOffload(offload))
            .map_err(|_| WorkerError::WorkerGone(worker))?;
        w.shared.wake();
        Ok(())
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

    /// Waits until every worker judges with policy `generation` (or a later one), up to
    /// `timeout`; whether they all do. [`Dataplane::set_policy`] only hands the policy over:
    /// a caller that promises "in force" (a live rule edit) waits for this.
    pub fn wait_generation(&self, generation: u64, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self
                .workers
                .iter()
                .all(|w| w.counters.policy.generation.get() >= generation)
            {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }

    /// Each worker's counters, readable while the workers run.
    pub fn counters(&self) -> Vec<Arc<Counters>> {
        self.workers
            .iter()
            .map(|w| Arc::clone(&w.counters))
            .collect()
    }

    /// Each worker's verdict events, for `monitor`: subscribe to every ring and drain them
    /// on the control thread (each worker emits within its own rate limit).
    pub fn events(&self) -> Vec<Arc<EventRing>> {
        self.workers.iter().map(|w| Arc::clone(&w.events)).collect()
    }

    /// Switches audit mode on every worker (see [`EngineConfig::audit`]): each reads the
    /// switch at its next batch, with no message round trip, so it works even while a
    /// worker is busy.
    pub fn set_audit(&self, on: bool) {
        for w in &self.workers {
            w.audit.store(on, Ordering::Relaxed);
        }
    }

    /// Whether audit mode is on (as last set; every worker follows within a batch).
    pub fn audit(&self) -> bool {
        self.workers
            .first()
            .is_some_and(|w| w.audit.load(Ordering::Relaxed))
    }

    /// Where every frame is. Exact when no traffic is moving; under traffic a frame can be
    /// counted twice or missed while it crosses between workers.
    pub fn frames(&self) -> Result<FrameAccount, WorkerError> {
        let mut account = FrameAccount {
            expected: self.frames,
            ..FrameAccount::default()
        };
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
}

impl<M: FrameMemory, P: WorkerPort<M>> Dataplane<M, P> {
    /// Asks every worker to stop, then joins them; returns the ports they owned. Idempotent:
    /// joined workers are skipped, so `Drop` after `stop` does nothing more.
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
        ports
    }
}

impl<M: FrameMemory, P: WorkerPort<M>> Drop for Dataplane<M, P> {
    fn drop(&mut self) {
        drop(self.stop_workers());
    }
}
