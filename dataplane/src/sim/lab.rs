//! The simulated bridge: one engine, one port per host of [`HOSTS`], a shared frame memory
//! on the heap, and a clock the test moves.
//!
//! The ports are anything with a simulated wire ([`SimPort`]): a plain [`MemoryPort`], or
//! one wrapped in decorators — [`Lossy`] to make its link lose, corrupt, reorder and delay
//! frames, [`Reorder`], [`Tap`] — so a scenario written once runs over a clean and over a
//! faulty bridge.
use std::time::Duration;

use super::hosts::{HOSTS, Host, host_port};
use crate::engine::{DriveReport, Engine, EngineConfig};
use crate::phy::lossy::Lossy;
use crate::phy::memory::{MemoryPort, MemoryPortConfig};
use crate::phy::reorder::Reorder;
use crate::phy::tap::Tap;
use crate::phy::{FreeList, HeapFrames, Port, PortId};
use crate::policy::Policy;

/// Size of a frame slot of the lab's memory.
pub const FRAME_SIZE: usize = 2048;

/// One second of the lab's clock (nanoseconds).
pub const SEC: u64 = 1_000_000_000;

/// A port of the lab: a [`Port`] over the lab's memory whose wire side is an in-memory
/// port, where the test puts frames and finds what was sent.
pub trait SimPort: Port<HeapFrames> {
    /// The in-memory port at the bottom of the decorators.
    fn wire(&self) -> &MemoryPort;
    /// The in-memory port at the bottom of the decorators, mutably.
    fn wire_mut(&mut self) -> &mut MemoryPort;
}

impl SimPort for MemoryPort {
    fn wire(&self) -> &MemoryPort {
        self
    }

    fn wire_mut(&mut self) -> &mut MemoryPort {
        self
    }
}

impl<P: SimPort> SimPort for Lossy<P> {
    fn wire(&self) -> &MemoryPort {
        self.inner().wire()
    }

    fn wire_mut(&mut self) -> &mut MemoryPort {
        self.inner_mut().wire_mut()
    }
}

impl<P: SimPort> SimPort for Reorder<P> {
    fn wire(&self) -> &MemoryPort {
        self.inner().wire()
    }

    fn wire_mut(&mut self) -> &mut MemoryPort {
        self.inner_mut().wire_mut()
    }
}

impl<P: SimPort> SimPort for Tap<P> {
    fn wire(&self) -> &MemoryPort {
        self.inner().wire()
    }

    fn wire_mut(&mut self) -> &mut MemoryPort {
        self.inner_mut().wire_mut()
    }
}

/// How to build a [`Lab`].
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// Every host's in-memory port.
    pub ports: MemoryPortConfig,
    /// Frames of the shared memory.
    pub frames: usize,
    /// Whether the engine completes TCP/UDP checksums of frames from every host.
    pub complete_checksums: bool,
}

impl Default for LabConfig {
    /// The default engine, 4,096 frames, and ports keeping a whole ring of 256 fill frames
    /// each (scenarios inject up to a few hundred frames before the engine runs).
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            ports: MemoryPortConfig {
                fill_share: 256,
                ..MemoryPortConfig::default()
            },
            frames: 4096,
            complete_checksums: false,
        }
    }
}

/// The simulated bridge: one engine, one port per host, a shared frame memory.
pub struct Lab<P = MemoryPort> {
    /// The frame memory engine and ports share.
    pub mem: HeapFrames,
    /// The engine under test.
    pub engine: Engine<HeapFrames>,
    /// The port of every host of [`HOSTS`], with its id, in port order.
    pub ports: Vec<(PortId, P)>,
    /// The clock handed to the engine (nanoseconds).
    pub now: u64,
    /// Frames of the memory, for [`Lab::frames_accounted`].
    pub total_frames: usize,
}

impl Lab<MemoryPort> {
    /// A bridge with the [`LabConfig`] defaults and `policy`.
    pub fn new(policy: Box<dyn Policy>) -> Self {
        Self::from_config(LabConfig::default(), policy)
    }

    /// A bridge with an engine `config`, ports of `port_config` and `frames` frames.
    pub fn with(
        config: EngineConfig,
        port_config: MemoryPortConfig,
        frames: usize,
        policy: Box<dyn Policy>,
    ) -> Self {
        Self::from_config(
            LabConfig {
                engine: config,
                ports: port_config,
                frames,
                complete_checksums: false,
            },
            policy,
        )
    }

    /// A bridge as `config` says.
    pub fn from_config(config: LabConfig, policy: Box<dyn Policy>) -> Self {
        Self::wrapped(config, policy, |_, port| port)
    }
}

impl<P: SimPort> Lab<P> {
    /// A bridge as `config` says whose ports are made by `wrap` from each host's in-memory
    /// port: `|h, port| Lossy::new(port, seed + u64::from(h.port)).with_rx(faults)`.
    pub fn wrapped(
        config: LabConfig,
        policy: Box<dyn Policy>,
        mut wrap: impl FnMut(Host, MemoryPort) -> P,
    ) -> Self {
        let mem = HeapFrames::new(config.frames, FRAME_SIZE);
        let free = FreeList::full(config.frames, FRAME_SIZE);
        let mut engine = Engine::new(config.engine, policy, free);
        let mut ports = Vec::new();
        for h in HOSTS {
            engine
                .add_port(host_port(h, config.complete_checksums))
                .expect("the lab's hosts are distinct");
            ports.push((h.port, wrap(h, MemoryPort::new(config.ports))));
        }
        Self {
            mem,
            engine,
            ports,
            now: 0,
            total_frames: config.frames,
        }
    }

    /// The port of host `h`.
    pub fn port(&self, h: Host) -> &P {
        &self.ports[usize::from(h.port)].1
    }

    /// The port of host `h`, mutably.
    pub fn port_mut(&mut self, h: Host) -> &mut P {
        &mut self.ports[usize::from(h.port)].1
    }

    /// Moves the clock on by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.now += d.as_nanos() as u64;
    }

    /// Puts `frame` on `from`'s wire.
    ///
    /// # Panics
    /// When the port's inbox is full (or the frame longer than a frame slot).
    pub fn inject(&mut self, from: Host, frame: &[u8]) {
        assert!(self.port_mut(from).wire_mut().inject(frame), "inbox full");
    }

    /// One round of the engine over every port at the current time. Allocates nothing.
    pub fn drive(&mut self) -> DriveReport {
        self.engine.drive(self.now, &mut self.mem, &mut self.ports)
    }

    /// Drives the engine until nothing moves: no frame received or transmitted, none on a
    /// wire or in a port's receive side (delayed frames included), none queued for transmit
    /// (fragments held for their first aside).
    ///
    /// # Panics
    /// When the bridge has not settled after 1,000 rounds.
    pub fn run(&mut self) {
        for _ in 0..1000 {
            let r = self.drive();
            let mut waiting = 0;
            for (_, p) in &self.ports {
                let held = p.frames_held();
                waiting += p.wire().inbox_len() + held.rx + held.tx;
            }
            let queued = self.engine.frames_queued() - self.engine.fragments_held();
            if r.received == 0 && r.transmitted == 0 && waiting == 0 && queued == 0 {
                return;
            }
        }
        panic!("the lab did not settle");
    }

    /// Sends `frame` from `from`, runs, and returns what every host received.
    pub fn send(&mut self, from: Host, frame: &[u8]) -> [Vec<Vec<u8>>; 4] {
        self.inject(from, frame);
        self.run();
        self.take_all()
    }

    /// What every host received since the last call, by port (needs the ports' `capture`).
    pub fn take_all(&mut self) -> [Vec<Vec<u8>>; 4] {
        std::array::from_fn(|i| self.ports[i].1.wire_mut().take_sent())
    }

    /// Every frame is somewhere: free list, a port, or an engine transmit queue. Equal to
    /// [`Lab::total_frames`] unless a frame was lost.
    pub fn frames_accounted(&self) -> usize {
        self.engine.free_list().len()
            + self
                .ports
                .iter()
                .map(|(_, p)| p.frames_held().total())
                .sum::<usize>()
            + self.engine.frames_queued()
    }
}

/// Who got a frame, as port numbers.
pub fn receivers(got: &[Vec<Vec<u8>>; 4]) -> Vec<PortId> {
    got.iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(i, _)| i as PortId)
        .collect()
}
