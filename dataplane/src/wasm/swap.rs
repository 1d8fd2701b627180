//! Hot swap: a new policy generation is built on the control thread and handed to each
//! worker between batches; the worker's old policy is dropped on another thread.
//!
//! Protocol, per worker:
//! 1. The control thread compiles modules ([`crate::wasm::WasmRuntime::load`]) and makes a
//!    chain for this worker ([`crate::wasm::PolicyChain::instantiate`]) — all the slow work.
//! 2. It sends the chain with [`SwapSender::send`] (never blocks).
//! 3. The worker calls [`SwapReceiver::poll_swap`] between batches — once per batch, a
//!    `try_recv` on a lock-free channel, no lock. When a chain is pending it swaps the
//!    `Box` (O(1)) and hands the old one to the [`Reaper`]; dropping a used Wasm store can
//!    take ~300 µs, which must not stall the worker.
//!
//! Because the swap happens only between batches, every batch is judged entirely by one
//! generation; no packet is lost, and flows decided by the old generation are re-decided
//! by the flow table, which compares generations.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::channel::{self, Receiver, Sender};

use super::error::RuntimeError;
use crate::policy::Policy;

/// A thread that drops what the hot path retires (old chains, trapped stores). Cloning is
/// cheap; the thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct Reaper {
    tx: Sender<Box<dyn Send>>,
    reaped: Arc<AtomicU64>,
}

impl Reaper {
    /// Starts the reaper thread (named `bw-reaper`).
    pub fn spawn() -> Result<Self, RuntimeError> {
        let (tx, rx) = channel::unbounded::<Box<dyn Send>>();
        let reaped = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&reaped);
        std::thread::Builder::new()
            .name("bw-reaper".into())
            .spawn(move || {
                for item in rx {
                    drop(item);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|source| RuntimeError::Thread {
                thread: "reaper",
                source,
            })?;
        Ok(Self { tx, reaped })
    }

    /// Queues `item` to be dropped on the reaper thread. Never blocks; if the thread is
    /// gone (it cannot be while `self` exists) the item is dropped here.
    pub fn retire(&self, item: Box<dyn Send>) {
        if let Err(channel::SendError(item)) = self.tx.send(item) {
            drop(item);
        }
    }

    /// How many items the reaper thread has dropped so far.
    pub fn reaped(&self) -> u64 {
        self.reaped.load(Ordering::Relaxed)
    }
}

/// The worker is gone; the policy that could not be delivered is handed back.
#[derive(thiserror::Error)]
#[error("the worker's swap receiver is gone; policy generation {} was not installed", .0.generation())]
pub struct WorkerGone(pub Box<dyn Policy>);

impl std::fmt::Debug for WorkerGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WorkerGone(generation {})", self.0.generation())
    }
}

/// Generation value meaning "no swap installed yet".
const NONE_INSTALLED: u64 = u64::MAX;

/// Control-thread end of one worker's swap channel.
pub struct SwapSender {
    tx: Sender<Box<dyn Policy>>,
    installed: Arc<AtomicU64>,
}

impl SwapSender {
    /// Queues `policy` for the worker; it takes effect at the worker's next
    /// [`SwapReceiver::poll_swap`]. If several are queued, the worker installs the last
    /// and retires the others unused.
    pub fn send(&self, policy: Box<dyn Policy>) -> Result<(), WorkerGone> {
        self.tx
            .send(policy)
            .map_err(|channel::SendError(p)| WorkerGone(p))
    }

    /// The generation the worker installed at its last swap, or `None` before the first —
    /// how the control thread learns a generation is in force on this worker.
    pub fn installed_generation(&self) -> Option<u64> {
        match self.installed.load(Ordering::Acquire) {
            NONE_INSTALLED => None,
            g => Some(g),
        }
    }
}

/// Where a worker sends its retired policy.
enum Retire {
    Reaper(Reaper),
    Return(Sender<Box<dyn Policy>>),
}

/// Worker end of a swap channel.
pub struct SwapReceiver {
    rx: Receiver<Box<dyn Policy>>,
    retire: Retire,
    installed: Arc<AtomicU64>,
}

impl SwapReceiver {
    /// Installs the pending policy, if any, in place of `*current` and retires the old one.
    /// Call between batches, never during one. Returns whether a swap happened. Costs a
    /// `try_recv` when nothing is pending.
    #[inline]
    pub fn poll_swap(&mut self, current: &mut Box<dyn Policy>) -> bool {
        let mut swapped = false;
        while let Ok(next) = self.rx.try_recv() {
            let old = std::mem::replace(current, next);
            self.retire(old);
            swapped = true;
        }
        if swapped {
            self.installed
                .store(current.generation(), Ordering::Release);
        }
        swapped
    }

    fn retire(&self, old: Box<dyn Policy>) {
        match &self.retire {
            Retire::Reaper(r) => r.retire(Box::new(old)),
            Retire::Return(tx) => {
                if let Err(channel::SendError(old)) = tx.send(old) {
                    drop(old);
                }
            }
        }
    }
}

/// A swap channel for one worker whose retired policies are dropped by `reaper`.
pub fn channel(reaper: Reaper) -> (SwapSender, SwapReceiver) {
    make(Retire::Reaper(reaper))
}

/// A swap channel whose retired policies come back through the returned [`Retired`]
/// instead of being dropped — for callers that recycle or inspect them (benchmarks,
/// tests). Whoever holds [`Retired`] must drop them off the worker thread.
pub fn channel_returning() -> (SwapSender, SwapReceiver, Retired) {
    let (tx, rx) = channel::unbounded();
    let (sender, receiver) = make(Retire::Return(tx));
    (sender, receiver, Retired { rx })
}

/// The policies a [`channel_returning`] worker retired, oldest first.
pub struct Retired {
    rx: Receiver<Box<dyn Policy>>,
}

impl Retired {
    /// The next retired policy, if one is waiting.
    pub fn try_recv(&self) -> Option<Box<dyn Policy>> {
        self.rx.try_recv().ok()
    }
}

fn make(retire: Retire) -> (SwapSender, SwapReceiver) {
    let (tx, rx) = channel::unbounded();
    let installed = Arc::new(AtomicU64::new(NONE_INSTALLED));
    (
        SwapSender {
            tx,
            installed: Arc::clone(&installed),
        },
        SwapReceiver {
            rx,
            retire,
            installed,
        },
    )
}
