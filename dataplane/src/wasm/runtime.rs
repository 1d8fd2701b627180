//! [`WasmRuntime`]: the process's one wasmtime `Engine`, the epoch ticker that bounds how
//! long any guest call may run, and the entry point that turns bytes into a validated
//! [`PolicyModule`].
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rules_wasm::abi::Action;
use wasmtime::{Config, Engine, Linker, OptLevel};

use super::error::{LoadError, RuntimeError};
use super::hostlog::{self, HostState};
use super::module::PolicyModule;
use super::swap::Reaper;

/// Limits and policies of the Wasm host. The defaults suit the dataplane; tests shrink them.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Largest module accepted, in bytes; checked before compiling. Default 32 MiB: a
    /// compiled 100k-rule policy is about 17 MB (its rule records, key entries and hash
    /// slots are data segments).
    pub max_module_bytes: usize,
    /// Cap on a module's linear memory, in bytes, per instance; `memory.grow` past it
    /// returns -1 and an initial memory over it fails instantiation. Default 64 MiB.
    pub max_memory_bytes: usize,
    /// Cap on table elements per table. Default 65 536.
    pub max_table_elements: usize,
    /// Period of the epoch ticker. Default 1 ms.
    pub epoch_tick: Duration,
    /// Ticks after which a guest call is checked: one that is really running (using the
    /// CPU, not preempted) is stopped at its second deadline, so a looping guest costs the
    /// worker about 2 × `deadline_ticks` ticks. Default 2 (1–2 ms per deadline), about
    /// 1000× what a batch of 64 should take.
    pub deadline_ticks: u64,
    /// Wall-time cap on one guest call however much it was preempted. Default 1 s.
    pub max_call_wall: Duration,
    /// Verdict given to every record of a batch the module failed (trap, deadline, invalid
    /// action code, quarantine). Must be Drop, Reject or Accept; default Drop.
    pub fail_closed: Action,
    /// After this many consecutive failed batches an instance is quarantined: it is no
    /// longer called and its batches get the fail-closed verdict until a new chain replaces
    /// it; this bounds what a module that always loops costs the worker. 0 = never.
    /// Default 8.
    pub quarantine_after: u32,
    /// Largest guest stack, in bytes; deeper recursion traps. Default 256 KiB.
    pub max_wasm_stack: usize,
    /// `bw.log` token bucket size (messages at once). Default 10.
    pub log_burst: u32,
    /// `bw.log` refill rate (messages per second). Default 10.
    pub log_per_second: u32,
    /// Most bytes of one `bw.log` message kept. Default 256.
    pub log_max_bytes: usize,
    /// Least time between two warnings about one module's failures. Default 1 s.
    pub warn_interval: Duration,
}

impl Default for WasmConfig {
    fn default() -> Self {
        Self {
            max_module_bytes: 32 << 20,
            max_memory_bytes: 64 << 20,
            max_table_elements: 65_536,
            epoch_tick: Duration::from_millis(1),
            deadline_ticks: 2,
            max_call_wall: Duration::from_secs(1),
            fail_closed: Action::Drop,
            quarantine_after: 8,
            max_wasm_stack: 256 << 10,
            log_burst: 10,
            log_per_second: 10,
            log_max_bytes: 256,
            warn_interval: Duration::from_secs(1),
        }
    }
}

impl WasmConfig {
    fn check(&self) -> Result<(), RuntimeError> {
        let bad = |m: &str| Err(RuntimeError::Config(m.to_string()));
        if self.fail_closed == Action::Continue {
            return bad("fail_closed must be Drop, Reject or Accept, not Continue");
        }
        if self.deadline_ticks == 0 {
            return bad("deadline_ticks must be at least 1");
        }
        if self.epoch_tick.is_zero() {
            return bad("epoch_tick must be longer than zero");
        }
        if self.max_memory_bytes < rules_wasm::abi::IO_AREA_SIZE {
            return bad("max_memory_bytes is smaller than the ABI's I/O area");
        }
        Ok(())
    }
}

/// What every module and instance of one runtime shares.
pub(crate) struct RuntimeShared {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: WasmConfig,
    pub(crate) reaper: Reaper,
    /// Set by every batch a guest is called for, cleared by the epoch ticker: how the
    /// ticker knows it may slow down while no policy runs.
    pub(crate) busy: Arc<AtomicBool>,
}

/// The Wasm host of one process: create one, [`load`](Self::load) modules on the control
/// thread, instantiate them for workers. Cheap to clone (shared).
///
/// The epoch ticker thread runs as long as the engine is alive — that is, as long as this
/// runtime or any module or instance made from it exists — because a guest without a
/// ticker could loop forever. It stops by itself within one tick after the last of them
/// is dropped.
#[derive(Clone)]
pub struct WasmRuntime {
    shared: Arc<RuntimeShared>,
}

impl WasmRuntime {
    /// Builds the engine (epoch interruption on, cranelift tuned for speed), defines the
    /// `bw.log` import, and starts the epoch ticker and the reaper thread.
    pub fn new(config: WasmConfig) -> Result<Self, RuntimeError> {
        config.check()?;
        let mut wt = Config::new();
        wt.epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(config.max_wasm_stack);
        let engine = Engine::new(&wt).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        hostlog::define_log(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        let reaper = Reaper::spawn()?;
        let busy = Arc::new(AtomicBool::new(false));
        spawn_ticker(&engine, config.epoch_tick, Arc::clone(&busy))?;
        Ok(Self {
            shared: Arc::new(RuntimeShared {
                engine,
                linker,
                config,
                reaper,
                busy,
            }),
        })
    }

    /// Compiles and validates a policy module. Runs on the control thread (compiling takes
    /// milliseconds); the result is instantiated for workers with
    /// [`PolicyModule::instantiate`]. See [`PolicyModule`] for what is checked.
    pub fn load(&self, bytes: &[u8], name: &str) -> Result<PolicyModule, LoadError> {
        PolicyModule::load(Arc::clone(&self.shared), bytes, name, None, None)
    }

    /// Loads a module with its own size caps instead of the runtime's: for the policies
    /// bridgewall compiles itself, whose size follows the rules and sets the user gave
    /// (validation, imports and exports are checked as for any module).
    pub fn load_with_caps(
        &self,
        bytes: &[u8],
        name: &str,
        caps: crate::wasm::module::Caps,
    ) -> Result<PolicyModule, LoadError> {
        PolicyModule::load(Arc::clone(&self.shared), bytes, name, Some(caps), None)
    }

    /// Loads a rate-limited rule's module (iptables' `-m limit` on a deciding rule): its
    /// `Accept` means "reached and matched"; instances turn that into `limit.verdict` while
    /// the bucket, shared by every instance, has tokens, and into `Continue` otherwise.
    pub fn load_limited(
        &self,
        bytes: &[u8],
        name: &str,
        caps: crate::wasm::module::Caps,
        limit: crate::wasm::limit::RateLimit,
    ) -> Result<PolicyModule, LoadError> {
        PolicyModule::load(
            Arc::clone(&self.shared),
            bytes,
            name,
            Some(caps),
            Some(limit),
        )
    }

    /// The configuration in force.
    pub fn config(&self) -> &WasmConfig {
        &self.shared.config
    }

    /// The thread that drops retired chains and stores, for [`crate::wasm::swap::channel`].
    pub fn reaper(&self) -> Reaper {
        self.shared.reaper.clone()
    }
}

/// Ticks the ticker skips while no guest has been called (an idle dataplane must not wake
/// a thousand times a second): after this many idle ticks it sleeps [`IDLE_TICK`] instead.
const IDLE_AFTER_TICKS: u32 = 100;
/// The ticker's period while idle. A guest called during such a sleep is still interrupted,
/// at most this much later than its deadline; under traffic the ticker runs at full rate.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// Starts the thread that advances the engine's epoch every `tick` while guests are being
/// called, and every [`IDLE_TICK`] once none has been for [`IDLE_AFTER_TICKS`] ticks. It
/// holds only a weak reference to the engine and stops once the engine is gone.
fn spawn_ticker(
    engine: &Engine,
    tick: Duration,
    busy: Arc<AtomicBool>,
) -> Result<(), RuntimeError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("bw-wasm-epoch".into())
        .spawn(move || {
            let mut idle_ticks = 0u32;
            loop {
                let period = if idle_ticks >= IDLE_AFTER_TICKS {
                    IDLE_TICK.max(tick)
                } else {
                    tick
                };
                std::thread::sleep(period);
                if busy.swap(false, Ordering::Relaxed) {
                    idle_ticks = 0;
                } else {
                    idle_ticks = idle_ticks.saturating_add(1);
                }
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map_err(|source| RuntimeError::Thread {
            thread: "epoch ticker",
            source,
        })?;
    Ok(())
}
