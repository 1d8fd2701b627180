//! Per-store host state and the guest's one import, `bw.log(ptr, len)`.
//!
//! A guest may log, but a guest that logs per packet must not flood the host's log or slow
//! the worker: messages go through a token bucket per instance, are cut to a fixed length,
//! and ones over the rate are only counted.
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Caller, Extern, Linker, StoreLimits, UpdateDeadline};

use super::counters::ModuleCounters;

/// What each policy store carries: its limits, log bucket and identity for log lines.
pub(crate) struct HostState {
    /// Memory/table/instance caps, enforced by wasmtime through `Store::limiter`.
    pub(crate) limits: StoreLimits,
    /// Rate limit of `bw.log`.
    pub(crate) log: LogBucket,
    /// Most bytes of one log message kept.
    pub(crate) log_max_bytes: usize,
    /// Module name, for log lines.
    pub(crate) module: Arc<str>,
    /// The module's counters (logs emitted / suppressed).
    pub(crate) counters: Arc<ModuleCounters>,
    /// Decides, when a call reaches its epoch deadline, whether to stop it.
    pub(crate) watch: DeadlineWatch,
}

/// Decides whether a guest call that reached its epoch deadline is stopped.
///
/// Epochs measure wall time, so a worker preempted by the scheduler in the middle of a
/// call would "run past" a 1–2 ms deadline without the guest doing anything wrong (seen on
/// this 2-core machine under load). So at the first deadline the watch only samples the
/// thread's CPU time and extends the deadline; at the next one it stops the call if the
/// thread spent at least half of the interval on the CPU — the guest really is running —
/// and otherwise extends again, up to `max_wall` in all. A looping guest is thus stopped
/// after about two deadline periods. This costs nothing on calls that finish in time:
/// the clock is read only at a deadline.
pub(crate) struct DeadlineWatch {
    ticks: u64,
    max_wall: Duration,
    /// When the deadline was first reached in this call, if it was.
    first: Option<Instant>,
    /// (wall, thread CPU) at the last deadline reached in this call.
    sample: Option<(Instant, Duration)>,
}

impl DeadlineWatch {
    pub(crate) fn new(ticks: u64, max_wall: Duration) -> Self {
        Self {
            ticks,
            max_wall,
            first: None,
            sample: None,
        }
    }

    /// Forgets the previous call; called before each call.
    #[inline]
    pub(crate) fn start_call(&mut self) {
        self.first = None;
        self.sample = None;
    }

    /// The epoch-deadline callback's decision.
    pub(crate) fn on_deadline(&mut self) -> UpdateDeadline {
        let now = Instant::now();
        let cpu = thread_cpu_time();
        let first = *self.first.get_or_insert(now);
        let stop = match self.sample {
            None => false,
            Some(_) if now.duration_since(first) >= self.max_wall => true,
            Some((wall0, cpu0)) => {
                let wall = now.duration_since(wall0);
                cpu.saturating_sub(cpu0) * 2 >= wall
            }
        };
        if stop {
            UpdateDeadline::Interrupt
        } else {
            self.sample = Some((now, cpu));
            UpdateDeadline::Continue(self.ticks)
        }
    }
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// A token bucket: `burst` messages at once, refilled at `per_second`.
pub(crate) struct LogBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl LogBucket {
    /// A full bucket.
    pub(crate) fn new(burst: u32, per_second: u32) -> Self {
        Self::with_rate(burst, f64::from(per_second))
    }

    /// A full bucket refilled at a fractional rate (iptables' `--limit 3/min` is 0.05/s).
    pub(crate) fn with_rate(burst: u32, per_second: f64) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second,
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one, refilling for the time elapsed first.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Defines `bw.log` in `linker`. Called once per runtime; the linker is then shared by every
/// module, so the import is the same function everywhere.
pub(crate) fn define_log(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    let (module, field) = rules_wasm::abi::LOG_IMPORT;
    linker.func_wrap(module, field, bw_log)?;
    Ok(())
}

/// The host side of `bw.log`: never traps (a bad pointer is the guest's problem, not a
/// reason to fail its batch); out-of-bounds messages are dropped and counted as suppressed.
fn bw_log(mut caller: Caller<'_, HostState>, ptr: i32, len: i32) {
    let state = caller.data_mut();
    if !state.log.take(Instant::now()) {
        ModuleCounters::add(&state.counters.logs_suppressed, 1);
        return;
    }
    let name = Arc::clone(&state.module);
    let counters = Arc::clone(&state.counters);
    let max = state.log_max_bytes;
    let Some(Extern::Memory(memory)) = caller.get_export(rules_wasm::abi::EXPORT_MEMORY) else {
        ModuleCounters::add(&counters.logs_suppressed, 1);
        return;
    };
    let data = memory.data(&caller);
    // Both values are guest-controlled: reinterpret as unsigned, as Wasm addresses are.
    let start = ptr as u32 as usize;
    let len = (len as u32 as usize).min(max);
    let Some(bytes) = start.checked_add(len).and_then(|end| data.get(start..end)) else {
        ModuleCounters::add(&counters.logs_suppressed, 1);
        return;
    };
    let message = String::from_utf8_lossy(bytes);
    tracing::info!(module = %name, "policy log: {message}");
    ModuleCounters::add(&counters.logs, 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_watch_stops_a_spinning_thread_but_not_a_sleeping_one() {
        let mut w = DeadlineWatch::new(2, Duration::from_secs(60));
        w.start_call();
        assert!(
            matches!(w.on_deadline(), UpdateDeadline::Continue(2)),
            "first deadline only samples"
        );
        std::thread::sleep(Duration::from_millis(20)); // preempted: no CPU used
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(2)));
        // Running: on a loaded machine one 20 ms window may give the thread less than half
        // a core, so keep spinning window after window; a spinning thread must be stopped.
        let mut interrupted = false;
        for _ in 0..200 {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(20) {
                std::hint::black_box(0);
            }
            if matches!(w.on_deadline(), UpdateDeadline::Interrupt) {
                interrupted = true;
                break;
            }
        }
        assert!(interrupted, "a spinning thread is interrupted");
        // A new call starts from scratch; a wall-time cap stops even a preempted one.
        let mut w = DeadlineWatch::new(2, Duration::from_millis(10));
        w.start_call();
        assert!(matches!(w.on_deadline(), UpdateDeadline::Continue(2)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(matches!(w.on_deadline(), UpdateDeadline::Interrupt));
    }

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let t0 = Instant::now();
        let mut b = LogBucket::new(2, 10);
        b.last = t0;
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0), "burst of 2 exhausted");
        assert!(
            !b.take(t0 + Duration::from_millis(50)),
            "half a token after 50 ms"
        );
        assert!(
            b.take(t0 + Duration::from_millis(110)),
            "a token after 100 ms at 10/s"
        );
        assert!(b.take(t0 + Duration::from_secs(10)));
        assert!(b.take(t0 + Duration::from_secs(10)));
        assert!(
            !b.take(t0 + Duration::from_secs(10)),
            "refill capped at burst"
        );
    }
}
