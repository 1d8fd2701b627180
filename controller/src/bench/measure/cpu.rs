//! CPU time: the whole machine's from `/proc/stat` (softirq included) and this process's
//! (the generator's and the dataplane's threads; softirq work the kernel runs in their
//! context is charged to them when the kernel has no IRQ time accounting).
use crate::bench::error::{BenchError, Result};

/// Nanoseconds per jiffy (USER_HZ = 100).
pub const JIFFY_NS: f64 = 1e7;

/// CPU counters at one instant, in jiffies.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// Busy time of all CPUs (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// Softirq time of all CPUs.
    pub softirq: u64,
    /// This process's user + system time.
    pub process: u64,
}

impl CpuSample {
    /// Reads the counters now.
    pub fn now() -> Result<Self> {
        let stat =
            std::fs::read_to_string("/proc/stat").map_err(|e| BenchError::io("/proc/stat", e))?;
        let line = stat.lines().next().unwrap_or_default();
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat")
            .map_err(|e| BenchError::io("/proc/self/stat", e))?;
        let after = own.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = after
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        Ok(CpuSample {
            busy: g(0) + g(1) + g(2) + g(5) + g(6) + g(7),
            softirq: g(6),
            process: f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0),
        })
    }

    /// Counters elapsed since `earlier`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            busy: self.busy.saturating_sub(earlier.busy),
            softirq: self.softirq.saturating_sub(earlier.softirq),
            process: self.process.saturating_sub(earlier.process),
        }
    }
}
