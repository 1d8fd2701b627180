//! [`KernelFlows`]: the worker side of the fast path — the flow table, the generation and the
//! counters of the kernel program, handed to the dataplane worker thread while the program
//! and its links stay with the controller.
use aya::maps::{Array, HashMap, MapData, PerCpuArray};

use std::os::fd::{AsFd, OwnedFd};

use super::abi::{ConfigEntry, FlowKey, FlowValue, stat};
use super::batch::BatchReader;
use super::error::{FastPathError, map_errno};

/// `BPF_NOEXIST`: create only.
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: update only.
const BPF_EXIST: u64 = 2;

/// The program's counters, summed over CPUs (see [`super::abi::stat`] for each one's meaning).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FastPathStats {
    /// Frames forwarded in the kernel.
    pub forwarded: u64,
    /// Their bytes.
    pub forwarded_bytes: u64,
    /// Frames dropped by DROP entries.
    pub dropped: u64,
    /// Upcalls for a missing entry.
    pub upcall_miss: u64,
    /// Upcalls of frames that are not fast-path material.
    pub upcall_unparsed: u64,
    /// Upcalls for SYN/FIN/RST on a forwarded flow.
    pub upcall_flags: u64,
    /// Upcalls for stale entries.
    pub upcall_stale: u64,
    /// Upcalls that failed (frame dropped).
    pub upcall_failed: u64,
    /// Forward redirects that failed (frame dropped).
    pub redirect_failed: u64,
    /// Frames from devices missing in `bw_ports` (dropped).
    pub unknown_port: u64,
    /// Upcalls of truncated frames.
    pub upcall_truncated: u64,
}

/// The flow table (`bw_flows`), the policy generation (`bw_config`) and the counters
/// (`bw_stats`) of a loaded fast path. `Send`: it lives on the dataplane worker thread.
/// Dropping it does not unload anything (the program keeps its own references to the maps).
pub struct KernelFlows {
    flows: HashMap<MapData, FlowKey, FlowValue>,
    /// The same map, for batch reads (aya has none).
    flows_fd: OwnedFd,
    reader: BatchReader,
    config: Array<MapData, ConfigEntry>,
    stats: PerCpuArray<MapData, u64>,
    max_flows: u32,
    len: usize,
}

impl KernelFlows {
    pub(super) fn new(
        (flows, flows_fd): (HashMap<MapData, FlowKey, FlowValue>, OwnedFd),
        config: Array<MapData, ConfigEntry>,
        stats: PerCpuArray<MapData, u64>,
        max_flows: u32,
    ) -> Self {
        Self {
            flows,
            flows_fd,
            reader: BatchReader::default(),
            config,
            stats,
            max_flows,
            len: 0,
        }
    }

    /// Sets the current policy generation: entries of any other generation stop being
    /// used by the kernel (their frames are upcalled as stale) until reinstalled.
    pub fn set_generation(&mut self, generation: u32) -> Result<(), FastPathError> {
        let entry = ConfigEntry {
            generation,
            flags: 0,
        };
        self.config
            .set(0, entry, 0)
            .map_err(|e| FastPathError::map("bw_config", "set", e))
    }

    /// The current policy generation.
    pub fn generation(&self) -> Result<u32, FastPathError> {
        self.config
            .get(&0, 0)
            .map(|c| c.generation)
            .map_err(|e| FastPathError::map("bw_config", "get", e))
    }

    /// Inserts `key` → `value`, or replaces the entry (counters included) when there is
    /// one. A full table is [`FastPathError::FlowTableFull`]: count it and keep the flow on
    /// the slow path.
    pub fn install(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), FastPathError> {
        match self.flows.insert(key, value, BPF_NOEXIST) {
            Ok(()) => {
                self.len += 1;
                return Ok(());
            }
            Err(e) => match map_errno(&e) {
                Some(libc::EEXIST) => {}
                Some(libc::E2BIG | libc::ENOMEM) => {
                    return Err(FastPathError::FlowTableFull {
                        max_flows: self.max_flows,
                    });
                }
                _ => return Err(FastPathError::map("bw_flows", "insert", e)),
            },
        }
        match self.flows.insert(key, value, BPF_EXIST) {
            Ok(()) => Ok(()),
            // Removed in between (only this object writes the map, so not expected): insert.
            Err(e) if map_errno(&e) == Some(libc::ENOENT) => {
                self.flows
                    .insert(key, value, 0)
                    .map_err(|e| FastPathError::map("bw_flows", "insert", e))?;
                self.len += 1;
                Ok(())
            }
            Err(e) => Err(FastPathError::map("bw_flows", "update", e)),
        }
    }

    /// Removes the entry for `key`; `false` when there was none.
    pub fn remove(&mut self, key: &FlowKey) -> Result<bool, FastPathError> {
        match self.flows.remove(key) {
            Ok(()) => {
                self.len = self.len.saturating_sub(1);
                Ok(true)
            }
            Err(e) if map_errno(&e) == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(FastPathError::map("bw_flows", "remove", e)),
        }
    }

    /// The entry for `key`, with the kernel's current counters.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowValue>, FastPathError> {
        match self.flows.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) if map_errno(&e) == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(FastPathError::map("bw_flows", "lookup", e)),
        }
    }

    /// Calls `f` for every entry (the periodic sync of counters and last-seen times). One
    /// syscall pair per entry; an entry removed during the walk is skipped.
    pub fn for_each(&self, mut f: impl FnMut(&FlowKey, &FlowValue)) -> Result<(), FastPathError> {
        for item in self.flows.iter() {
            match item {
                Ok((k, v)) => f(&k, &v),
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) if map_errno(&e) == Some(libc::ENOENT) => continue,
                Err(e) => return Err(FastPathError::map("bw_flows", "iterate", e)),
            }
        }
        Ok(())
    }

    /// Reads the next slice (up to 256 entries, one syscall) of a walk over
    /// every entry and calls `f` for each; returns true when the walk has reached the end
    /// (the next call starts a new one). For the periodic sync of a big table a slice at a
    /// time; an entry removed or added during a walk may be seen or not.
    pub fn walk_slice(
        &mut self,
        f: impl FnMut(&FlowKey, &FlowValue),
    ) -> Result<bool, FastPathError> {
        self.reader
            .next(self.flows_fd.as_fd(), f)
            .map_err(FastPathError::Walk)
    }

    /// The program's counters, summed over CPUs.
    pub fn stats(&self) -> Result<FastPathStats, FastPathError> {
        let read = |idx: u32| -> Result<u64, FastPathError> {
            let per_cpu = self
                .stats
                .get(&idx, 0)
                .map_err(|e| FastPathError::map("bw_stats", "lookup", e))?;
            Ok(per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
        };
        Ok(FastPathStats {
            forwarded: read(stat::FORWARDED)?,
            forwarded_bytes: read(stat::FORWARDED_BYTES)?,
            dropped: read(stat::DROPPED)?,
            upcall_miss: read(stat::UPCALL_MISS)?,
            upcall_unparsed: read(stat::UPCALL_UNPARSED)?,
            upcall_flags: read(stat::UPCALL_FLAGS)?,
            upcall_stale: read(stat::UPCALL_STALE)?,
            upcall_failed: read(stat::UPCALL_FAILED)?,
            redirect_failed: read(stat::REDIRECT_FAILED)?,
            unknown_port: read(stat::UNKNOWN_PORT)?,
            upcall_truncated: read(stat::UPCALL_TRUNCATED)?,
        })
    }

    /// Entries in the table, as counted by this object (every insert and remove goes through
    /// it; the kernel program never adds or deletes entries).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The table's capacity (`FastPathConfig::max_flows`).
    pub fn capacity(&self) -> u32 {
        self.max_flows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastpath_kernel_flows_is_send() {
        fn send<T: Send>() {}
        send::<KernelFlows>();
    }
}
