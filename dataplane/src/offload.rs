//! The tiered datapath's userspace half, sans IO: which flows the engine hands to a kernel
//! flow cache, and how upcalled frames say where they came from.
//!
//! In the tiered datapath a tc/TCX program on every port's interface forwards the packets
//! of flows it has an entry for, in the kernel, keeping the skb (and its GSO size) whole;
//! everything else — a miss, ARP, fragments, TCP SYN/FIN/RST, a stale entry — is *upcalled*:
//! redirected, with a [`tag`] in front naming its ingress port, to a veth whose peer
//! carries an AF_XDP socket the engine reads (a port with [`PortRole::Upcall`]). The engine
//! decides it exactly as in the all-userspace datapath and, once a flow is confirmed and
//! admitted, asks for kernel entries for both of its directions ([`OffloadOp`]); a denied
//! flow gets a drop entry, so a flood of denied packets stays in the kernel.
//!
//! One authority: the engine's flow table. Every kernel entry belongs to one of its flows
//! and goes when the flow goes (expiry, eviction, a port removed, a verdict changed); the
//! kernel's packet counts and last-seen stamps come back through [`FlowOffload::sync`] so
//! the flow stays alive, its state advances and per-port and per-rule counters include
//! what the kernel forwarded. A policy swap makes every kernel entry stale at once (entries
//! carry the policy generation; [`FlowOffload::set_generation`]), so nothing the new policy
//! denies is forwarded by an old entry.
use crate::phy::PortId;
use crate::wire::Tuple;

/// Where the kernel sends the packets of an offloaded flow leaving by a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OffloadTarget {
    /// The port's interface index, in the dataplane's namespace.
    pub ifindex: u32,
    /// True: into the namespace behind the veth (`bpf_redirect_peer`, a container); false:
    /// out of the interface (`bpf_redirect`, the gateway veth whose peer is in the same
    /// namespace).
    pub peer: bool,
}

/// What a port is to the tiered datapath.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PortRole {
    /// All its traffic crosses the engine (the AF_XDP datapath): its flows are never offloaded.
    #[default]
    Plain,
    /// The upcall port: frames received here carry a [`tag`] naming the port they entered
    /// by, and are processed as received there.
    Upcall,
    /// A port the kernel fast path serves: flows between two such ports are offloaded.
    Tiered(OffloadTarget),
}

/// A request to the kernel flow cache. Keys are an ingress port and the packet's tuple as
/// it travels, so one flow has two entries, one per direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadOp {
    /// Forward packets of `tuple` entering by `in_port` to `out`.
    Forward {
        /// Ingress port.
        in_port: PortId,
        /// The packets' tuple.
        tuple: Tuple,
        /// Where they go.
        out: OffloadTarget,
        /// The policy generation that admitted the flow.
        generation: u64,
    },
    /// Drop packets of `tuple` entering by `in_port` (a denied flow).
    Drop {
        /// Ingress port.
        in_port: PortId,
        /// The packets' tuple.
        tuple: Tuple,
        /// The policy generation that denied the flow.
        generation: u64,
    },
    /// Remove the entry of `tuple` entering by `in_port`, if any.
    Remove {
        /// Ingress port.
        in_port: PortId,
        /// The packets' tuple.
        tuple: Tuple,
    },
}

/// The engine's pending requests to the kernel flow cache: bounded, allocated once, drained
/// by the worker after every round ([`FlowOffload::apply`]). A request that does not fit is
/// counted and dropped: an install is retried by the flow's next packet, and a kernel entry
/// whose removal was lost is found by the next sync (the engine no longer knows it) and
/// removed then.
#[derive(Debug)]
pub struct OffloadLog {
    ops: Vec<OffloadOp>,
    overflow: u64,
}

impl OffloadLog {
    /// A log holding up to `capacity` requests (0: offload disabled, nothing is recorded).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            ops: Vec::with_capacity(capacity),
            overflow: 0,
        }
    }

    /// True when requests are recorded at all.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.ops.capacity() > 0
    }

    /// Room for `n` more requests.
    #[inline]
    pub fn has_room(&self, n: usize) -> bool {
        self.ops.capacity() - self.ops.len() >= n
    }

    /// Records `op`; false (counted) when the log is full.
    #[inline]
    pub fn push(&mut self, op: OffloadOp) -> bool {
        if self.ops.len() == self.ops.capacity() {
            self.overflow += 1;
            return false;
        }
        self.ops.push(op);
        true
    }

    /// Counts a request that was not recorded because the log had no room for it (and its
    /// companion: a flow's two entries go in together or not at all).
    pub fn refuse(&mut self) {
        self.overflow += 1;
    }

    /// The pending requests, oldest first.
    pub fn pending(&self) -> &[OffloadOp] {
        &self.ops
    }

    /// Forgets the pending requests (after they were applied).
    pub fn clear(&mut self) {
        self.ops.clear();
    }

    /// Requests dropped because the log was full, so far.
    pub fn overflow(&self) -> u64 {
        self.overflow
    }
}

/// What the kernel saw of one entry since the last sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSeen {
    /// The entry's ingress port.
    pub in_port: PortId,
    /// The entry's tuple.
    pub tuple: Tuple,
    /// Packets the entry matched since the last sync.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
    /// When the entry last matched, on the engine's clock (`None`: never).
    pub last_seen: Option<u64>,
    /// A drop entry (its packets were dropped).
    pub dropped: bool,
}

/// The kernel fast path's own counters (summed over CPUs), read at each sync: what it
/// upcalled and why, and what it could not do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelPathStats {
    /// Upcalls of frames with no entry.
    pub upcall_miss: u64,
    /// Upcalls of frames that are not fast-path material (ARP, ICMP, fragments, …).
    pub upcall_unparsed: u64,
    /// Upcalls of TCP SYN/FIN/RST on forwarded flows.
    pub upcall_flags: u64,
    /// Upcalls of frames whose entry was of another policy generation.
    pub upcall_stale: u64,
    /// Upcalls of truncated frames.
    pub upcall_truncated: u64,
    /// Upcalls that failed (the frame was dropped).
    pub upcall_failed: u64,
    /// Forwarding redirects that failed (the frame was dropped).
    pub redirect_failed: u64,
    /// Frames from interfaces the program does not know (dropped: fail closed).
    pub unknown_port: u64,
}

/// Why a request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OffloadError {
    /// The kernel's flow map is full: the flow stays on the userspace path.
    #[error("the kernel flow map is full")]
    Full,
    /// The port has no kernel fast path (e.g. gone).
    #[error("port {0} has no kernel fast path")]
    NoPort(PortId),
    /// The map operation failed.
    #[error("kernel flow map: {0}")]
    Map(String),
}

/// The kernel flow cache, as the worker thread drives it: implemented over BPF maps by
/// the AF_XDP layer, and in memory by tests.
pub trait FlowOffload: Send {
    /// Carries out one request.
    fn apply(&mut self, op: &OffloadOp) -> Result<(), OffloadError>;
    /// Makes every entry of another generation stale (the next packet of each is upcalled).
    fn set_generation(&mut self, generation: u64);
    /// Reports the activity of the next slice of entries since they were last reported to
    /// `seen`, whose answer says whether the engine still owns the entry: one it disowns is
    /// removed. Returns true when a walk over every entry has completed with this slice (the
    /// worker then waits for the next sync; until then it calls again every round, so a big
    /// table never stalls one round). `clock_origin`: the monotonic time (ns) at which the
    /// engine's clock read 0.
    fn sync(&mut self, clock_origin: u64, seen: &mut dyn FnMut(&KernelSeen) -> bool) -> bool;
    /// The kernel fast path's own counters, if it keeps any.
    fn kernel_stats(&self) -> Option<KernelPathStats> {
        None
    }
}

/// The upcall tag: 14 bytes the kernel program puts in front of an upcalled frame, shaped
/// as an Ethernet header so the veth carries it like any frame. Mirrors
/// `dataplane/bpf/fastpath.bpf.c`.
pub mod tag {
    use crate::phy::PortId;

    /// Length of the tag.
    pub const LEN: usize = 14;
    /// Its destination MAC ("bwup", locally administered).
    pub const DST: [u8; 6] = [0x02, 0x62, 0x77, 0x75, 0x70, 0x00];
    /// Its ethertype (IEEE 802 local experimental).
    pub const ETHERTYPE: u16 = 0x88B5;
    /// Offset of the ingress port id (big-endian u16).
    pub const PORT_OFFSET: usize = 6;
    /// Offset of the reason byte.
    pub const REASON_OFFSET: usize = 8;
    /// No kernel entry for the flow.
    pub const REASON_MISS: u8 = 1;
    /// Not fast-path material (ARP, ICMP, fragments, options, VLAN, multicast, …).
    pub const REASON_UNPARSED: u8 = 2;
    /// TCP SYN, FIN or RST on a forwarded flow: conntrack must see it.
    pub const REASON_TCP_FLAGS: u8 = 3;
    /// An entry of an older policy generation.
    pub const REASON_STALE: u8 = 4;
    /// A truncated frame.
    pub const REASON_TRUNCATED: u8 = 5;

    /// The ingress port and reason of a tagged frame, `None` when `frame` carries no tag.
    #[inline]
    pub fn read(frame: &[u8]) -> Option<(PortId, u8)> {
        let t = frame.get(..LEN)?;
        if t[..6] != DST || u16::from_be_bytes([t[12], t[13]]) != ETHERTYPE {
            return None;
        }
        let port = u16::from_be_bytes([t[PORT_OFFSET], t[PORT_OFFSET + 1]]);
        Some((port, t[REASON_OFFSET]))
    }

    /// Writes a tag for `port` and `reason` into `out` (tests and simulators).
    pub fn write(out: &mut [u8; LEN], port: PortId, reason: u8) {
        *out = [0; LEN];
        out[..6].copy_from_slice(&DST);
        out[PORT_OFFSET..PORT_OFFSET + 2].copy_from_slice(&port.to_be_bytes());
        out[REASON_OFFSET] = reason;
        out[12..14].copy_from_slice(&ETHERTYPE.to_be_bytes());
    }
}

/// The tuple of the other direction.
pub fn reversed(t: &Tuple) -> Tuple {
    Tuple {
        src: t.dst,
        dst: t.src,
        src_port: t.dst_port,
        dst_port: t.src_port,
        proto: t.proto,
    }
}
