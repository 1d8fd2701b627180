//! [`KernelOffload`]: the engine's kernel flow cache ([`crate::offload::FlowOffload`]) over
//! the fast path's BPF maps ([`KernelFlows`]), driven by the dataplane worker thread.
//!
//! The kernel counts packets and bytes per entry and never resets them; the engine wants
//! what happened since the last sync. This keeps, per entry, the counts already reported,
//! and carries over what an entry had counted when it was replaced (a reinstall after a
//! policy swap starts the kernel's counts from zero), so nothing the kernel forwarded is
//! lost to or counted twice by the engine's per-port and per-rule counters.
use std::collections::HashMap;

use super::fastpath::{FastPathError, FlowKey, FlowValue, KernelFlows, OutMode};
use crate::offload::{FlowOffload, KernelPathStats, KernelSeen, OffloadError, OffloadOp};

/// What was reported of one entry: the kernel's counts at the last report, and counts of a
/// replaced entry not yet reported.
#[derive(Clone, Copy, Debug, Default)]
struct Reported {
    packets: u64,
    bytes: u64,
    carry_packets: u64,
    carry_bytes: u64,
}

/// Slices (of up to 256 entries, one syscall each) one call of `sync` reads: a
/// 65,536-entry table is walked in 32 rounds, none stalled for long.
const SLICES_PER_SYNC: usize = 8;

/// The kernel flow cache of one worker.
pub struct KernelOffload {
    flows: KernelFlows,
    reported: HashMap<FlowKey, Reported>,
    /// Entries the engine disowned at the last sync (reused buffer).
    disowned: Vec<FlowKey>,
}

impl KernelOffload {
    /// Drives `flows` (from [`super::fastpath::FastPath::take_flows`]). Sized for the map's
    /// capacity now, so installing a flow allocates nothing later.
    pub fn new(flows: KernelFlows) -> Self {
        let cap = flows.capacity() as usize;
        Self {
            flows,
            reported: HashMap::with_capacity(cap),
            disowned: Vec::with_capacity(1024),
        }
    }

    /// The maps, for their counters ([`KernelFlows::stats`]).
    pub fn flows(&self) -> &KernelFlows {
        &self.flows
    }

    /// Installs `value` at `key`, carrying the unreported counts of an entry it replaces.
    fn install(&mut self, key: FlowKey, value: FlowValue) -> Result<(), OffloadError> {
        if let Some(r) = self.reported.get_mut(&key)
            && let Ok(Some(old)) = self.flows.get(&key)
        {
            r.carry_packets += old.packets().saturating_sub(r.packets);
            r.carry_bytes += old.bytes().saturating_sub(r.bytes);
            r.packets = 0;
            r.bytes = 0;
        }
        self.flows.install(&key, &value).map_err(offload_error)?;
        self.reported.entry(key).or_default();
        Ok(())
    }
}

fn offload_error(e: FastPathError) -> OffloadError {
    match e {
        FastPathError::FlowTableFull { .. } => OffloadError::Full,
        e => OffloadError::Map(e.to_string()),
    }
}

impl FlowOffload for KernelOffload {
    fn apply(&mut self, op: &OffloadOp) -> Result<(), OffloadError> {
        match *op {
            OffloadOp::Forward {
                in_port,
                tuple,
                out,
                generation,
            } => {
                let mode = if out.peer {
                    OutMode::Peer
                } else {
                    OutMode::Egress
                };
                let value = FlowValue::forward(out.ifindex, mode, generation as u32);
                self.install(FlowKey::from_tuple(in_port, &tuple), value)
            }
            OffloadOp::Drop {
                in_port,
                tuple,
                generation,
            } => self.install(
                FlowKey::from_tuple(in_port, &tuple),
                FlowValue::drop(generation as u32),
            ),
            OffloadOp::Remove { in_port, tuple } => {
                let key = FlowKey::from_tuple(in_port, &tuple);
                self.reported.remove(&key);
                self.flows.remove(&key).map(|_| ()).map_err(offload_error)
            }
        }
    }

    fn kernel_stats(&self) -> Option<KernelPathStats> {
        let s = self.flows.stats().ok()?;
        Some(KernelPathStats {
            upcall_miss: s.upcall_miss,
            upcall_unparsed: s.upcall_unparsed,
            upcall_flags: s.upcall_flags,
            upcall_stale: s.upcall_stale,
            upcall_truncated: s.upcall_truncated,
            upcall_failed: s.upcall_failed,
            redirect_failed: s.redirect_failed,
            unknown_port: s.unknown_port,
        })
    }

    fn set_generation(&mut self, generation: u64) {
        if let Err(e) = self.flows.set_generation(generation as u32) {
            // Entries of the old generation stay in use: the new policy is not enforced on
            // offloaded flows. Loud, since nothing else can be done here.
            tracing::error!(generation, error = %e, "could not make the kernel's flow entries stale");
        }
    }

    fn sync(&mut self, clock_origin: u64, seen: &mut dyn FnMut(&KernelSeen) -> bool) -> bool {
        let Self {
            flows,
            reported,
            disowned,
        } = self;
        disowned.clear();
        let mut finished = false;
        for _ in 0..SLICES_PER_SYNC {
            let walked = flows.walk_slice(|key, value| {
                let r = reported.get(key).copied().unwrap_or_default();
                let (packets, bytes) = (value.packets(), value.bytes());
                let report = KernelSeen {
                    in_port: key.port,
                    tuple: key.tuple(),
                    packets: packets.saturating_sub(r.packets) + r.carry_packets,
                    bytes: bytes.saturating_sub(r.bytes) + r.carry_bytes,
                    last_seen: (value.last_seen_ns() != 0)
                        .then(|| value.last_seen_ns().saturating_sub(clock_origin)),
                    dropped: !value.is_forward(),
                };
                if seen(&report) {
                    reported.insert(
                        *key,
                        Reported {
                            packets,
                            bytes,
                            ..Reported::default()
                        },
                    );
                } else {
                    disowned.push(*key);
                }
            });
            match walked {
                Ok(false) => {}
                Ok(true) => {
                    finished = true;
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the kernel's flow entries");
                    finished = true;
                    break;
                }
            }
        }
        for key in disowned.iter() {
            reported.remove(key);
            if let Err(e) = flows.remove(key) {
                tracing::warn!(error = %e, "removing a kernel flow entry the engine disowned");
            }
        }
        finished
    }
}
