//! The kernel program's ABI, mirrored from `dataplane/bpf/fastpath.bpf.c`: map value and key
//! layouts (`#[repr(C)]`, no implicit padding, [`aya::Pod`]), action and mode codes, the
//! upcall tag and the statistics slots. The engine writes flows and reads upcalls through
//! these types; the C program reads the same bytes. Change both sides or neither.
use crate::phy::PortId;
use crate::wire::Tuple;

/// `bw_flow.action`: forward per `out_mode`.
pub const ACTION_FORWARD: u32 = 1;
/// `bw_flow.action`: drop in the kernel (counted).
pub const ACTION_DROP: u32 = 2;

/// `bw_flow.out_mode`: `bpf_redirect_peer` (into a container's namespace).
pub const OUT_MODE_PEER: u32 = 1;
/// `bw_flow.out_mode`: `bpf_redirect` to the device's egress (the gateway veth).
pub const OUT_MODE_EGRESS: u32 = 2;

/// Length of the tag the program puts in front of an upcalled frame.
pub const TAG_LEN: usize = 14;
/// Destination MAC of the tag (bytes `[0..6)`): 02:62:77:75:70:00 ("bwup", locally administered).
pub const TAG_DST_MAC: [u8; 6] = [0x02, 0x62, 0x77, 0x75, 0x70, 0x00];
/// Offset of the ingress port id (big-endian `u16`) in the tag.
pub const TAG_PORT_OFFSET: usize = 6;
/// Offset of the reason byte ([`UpcallReason`]) in the tag.
pub const TAG_REASON_OFFSET: usize = 8;
/// Offset of the tag's ethertype (big-endian); bytes `[9..12)` are zero.
pub const TAG_ETHERTYPE_OFFSET: usize = 12;
/// The tag's ethertype (IEEE local experimental 1).
pub const TAG_ETHERTYPE: u16 = 0x88B5;

/// Statistics slots the program reserves in `bw_stats` (indexes 0..=10 are used).
pub const STATS_SLOTS: u32 = 16;

/// Maximum number of entries of `bw_ports` (one per attached device).
pub const MAX_PORTS: u32 = 4096;

/// Indexes of `bw_stats` (per-CPU `u64` counters).
pub mod stat {
    /// Frames forwarded in the kernel.
    pub const FORWARDED: u32 = 0;
    /// Bytes of those frames (Ethernet header included).
    pub const FORWARDED_BYTES: u32 = 1;
    /// Frames dropped by a DROP entry.
    pub const DROPPED: u32 = 2;
    /// Upcalls: no entry for the flow.
    pub const UPCALL_MISS: u32 = 3;
    /// Upcalls: not fast-path material (ARP, VLAN, multicast, ICMP, options, fragments…).
    pub const UPCALL_UNPARSED: u32 = 4;
    /// Upcalls: SYN, FIN or RST on a FORWARD entry.
    pub const UPCALL_FLAGS: u32 = 5;
    /// Upcalls: the entry's generation is not the current one.
    pub const UPCALL_STALE: u32 = 6;
    /// Upcalls that failed (`change_head` or the redirect): the frame was dropped.
    pub const UPCALL_FAILED: u32 = 7;
    /// Forward redirects that failed: the frame was dropped.
    pub const REDIRECT_FAILED: u32 = 8;
    /// Frames from a device missing in `bw_ports`: dropped (fail closed).
    pub const UNKNOWN_PORT: u32 = 9;
    /// Upcalls: a header was cut short.
    pub const UPCALL_TRUNCATED: u32 = 10;
}

/// Why a frame was upcalled (tag byte 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UpcallReason {
    /// No flow entry: the engine decides and may install one.
    Miss = 1,
    /// Not fast-path material.
    Unparsed = 2,
    /// SYN/FIN/RST on a forwarded flow: connection tracking must see it.
    TcpFlags = 3,
    /// The entry predates the current policy generation.
    Stale = 4,
    /// A header was cut short.
    Truncated = 5,
}

impl UpcallReason {
    /// The reason for a tag byte, `None` for a code the program does not write.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Miss,
            2 => Self::Unparsed,
            3 => Self::TcpFlags,
            4 => Self::Stale,
            5 => Self::Truncated,
            _ => return None,
        })
    }
}

/// A parsed upcall tag: who sent the frame and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpcallTag {
    /// Ingress port id of the device the frame arrived on.
    pub port: PortId,
    /// Why it was upcalled.
    pub reason: UpcallReason,
}

impl UpcallTag {
    /// Splits an upcalled frame into its tag and the original frame, or `None` when `frame`
    /// does not start with a well-formed tag (so the AF_XDP loop can tell upcalls from
    /// anything else arriving on the upcall veth).
    pub fn parse(frame: &[u8]) -> Option<(Self, &[u8])> {
        let (tag, rest) = frame.split_at_checked(TAG_LEN)?;
        if tag[..6] != TAG_DST_MAC
            || tag[9..12] != [0, 0, 0]
            || tag[TAG_ETHERTYPE_OFFSET..] != TAG_ETHERTYPE.to_be_bytes()
        {
            return None;
        }
        let port = u16::from_be_bytes([tag[TAG_PORT_OFFSET], tag[TAG_PORT_OFFSET + 1]]);
        let reason = UpcallReason::from_code(tag[TAG_REASON_OFFSET])?;
        Some((Self { port, reason }, rest))
    }

    /// The 14 tag bytes the kernel program writes for this tag.
    pub fn to_bytes(self) -> [u8; TAG_LEN] {
        let mut t = [0u8; TAG_LEN];
        t[..6].copy_from_slice(&TAG_DST_MAC);
        t[TAG_PORT_OFFSET..TAG_PORT_OFFSET + 2].copy_from_slice(&self.port.to_be_bytes());
        t[TAG_REASON_OFFSET] = self.reason as u8;
        t[TAG_ETHERTYPE_OFFSET..].copy_from_slice(&TAG_ETHERTYPE.to_be_bytes());
        t
    }
}

/// `struct bw_port`: value of `bw_ports` (key: ingress ifindex).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortEntry {
    /// The device's port id (also the flow key's `port`).
    pub port: u16,
    /// Reserved, 0.
    pub flags: u16,
    /// Where this device's upcalls go (egress of a veth bridgewall owns).
    pub upcall_ifindex: u32,
}

/// `struct bw_config`: the single entry of `bw_config`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConfigEntry {
    /// Current policy generation (low 32 bits); entries of another generation are stale.
    pub generation: u32,
    /// Reserved, 0.
    pub flags: u32,
}

/// `struct bw_flow_key` (40 bytes): one direction of a TCP/UDP flow on one ingress port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Ingress port id.
    pub port: u16,
    /// IP protocol (6 TCP, 17 UDP).
    pub proto: u8,
    /// Zero.
    pub pad: u8,
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Source address: IPv6, or IPv4-mapped `::ffff:a.b.c.d`.
    pub src: [u8; 16],
    /// Destination address, same form.
    pub dst: [u8; 16],
}

impl FlowKey {
    /// The key for `t` arriving on `port` (the addresses are already in the ABI's form).
    pub fn from_tuple(port: PortId, t: &Tuple) -> Self {
        Self {
            port,
            proto: t.proto,
            pad: 0,
            sport: t.src_port,
            dport: t.dst_port,
            src: t.src,
            dst: t.dst,
        }
    }

    /// The tuple this key stands for.
    pub fn tuple(&self) -> Tuple {
        Tuple {
            src: self.src,
            dst: self.dst,
            src_port: self.sport,
            dst_port: self.dport,
            proto: self.proto,
        }
    }
}

/// Where a FORWARD entry sends its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutMode {
    /// `bpf_redirect_peer`: straight into the namespace behind a host-side veth (a container).
    Peer,
    /// `bpf_redirect` to the egress of the device (the gateway veth, whose peer is in the
    /// same namespace).
    Egress,
}

impl OutMode {
    /// The ABI code.
    pub fn code(self) -> u32 {
        match self {
            Self::Peer => OUT_MODE_PEER,
            Self::Egress => OUT_MODE_EGRESS,
        }
    }
}

/// `struct bw_flow` (48 bytes): what to do with a flow, and the program's counters for it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// [`ACTION_FORWARD`] or [`ACTION_DROP`].
    pub action: u32,
    /// Target device of a FORWARD entry.
    pub out_ifindex: u32,
    /// [`OUT_MODE_PEER`] or [`OUT_MODE_EGRESS`].
    pub out_mode: u32,
    /// Policy generation the entry was admitted under.
    pub generation: u32,
    /// Wire packets that hit the entry, forwarded or dropped (a GSO skb counts its segments).
    pub packets: u64,
    /// Their bytes, Ethernet header included.
    pub bytes: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the last hit.
    pub last_seen_ns: u64,
    /// OR of the TCP flags bytes of the hits.
    pub tcp_flags: u32,
    /// Zero.
    pub pad: u32,
}

impl FlowValue {
    /// A FORWARD entry to `out_ifindex` by `mode`, counters zero.
    pub fn forward(out_ifindex: u32, mode: OutMode, generation: u32) -> Self {
        Self {
            action: ACTION_FORWARD,
            out_ifindex,
            out_mode: mode.code(),
            generation,
            ..Self::default()
        }
    }

    /// A DROP entry, counters zero.
    pub fn drop(generation: u32) -> Self {
        Self {
            action: ACTION_DROP,
            generation,
            ..Self::default()
        }
    }

    /// Whether this is a FORWARD entry.
    pub fn is_forward(&self) -> bool {
        self.action == ACTION_FORWARD
    }

    /// The out mode of a FORWARD entry (`None` for DROP or an unknown code).
    pub fn out_mode(&self) -> Option<OutMode> {
        match self.out_mode {
            OUT_MODE_PEER => Some(OutMode::Peer),
            OUT_MODE_EGRESS => Some(OutMode::Egress),
            _ => None,
        }
    }

    /// Frames that hit the entry.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Bytes of those frames.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// CLOCK_MONOTONIC nanoseconds of the last hit (0: never hit).
    pub fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    /// OR of the TCP flags seen.
    pub fn tcp_flags(&self) -> u32 {
        self.tcp_flags
    }
}

// SAFETY: `#[repr(C)]`, only integer fields laid out without implicit padding (checked by the
// layout test below), so every byte pattern is a valid value and none is uninitialised.
unsafe impl aya::Pod for PortEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for ConfigEntry {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn fastpath_abi_layouts_match_the_c_program() {
        assert_eq!(size_of::<PortEntry>(), 8);
        assert_eq!(size_of::<ConfigEntry>(), 8);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowKey, sport), 4);
        assert_eq!(offset_of!(FlowKey, src), 8);
        assert_eq!(offset_of!(FlowKey, dst), 24);
        assert_eq!(size_of::<FlowValue>(), 48);
        assert_eq!(offset_of!(FlowValue, packets), 16);
        assert_eq!(offset_of!(FlowValue, last_seen_ns), 32);
        assert_eq!(offset_of!(FlowValue, tcp_flags), 40);
    }

    #[test]
    fn fastpath_tag_round_trips() {
        let tag = UpcallTag {
            port: 0x1234,
            reason: UpcallReason::Stale,
        };
        let mut frame = tag.to_bytes().to_vec();
        assert_eq!(
            frame,
            [
                2, 0x62, 0x77, 0x75, 0x70, 0, 0x12, 0x34, 4, 0, 0, 0, 0x88, 0xb5
            ]
        );
        frame.extend_from_slice(b"payload");
        assert_eq!(UpcallTag::parse(&frame), Some((tag, &b"payload"[..])));
        frame[8] = 9;
        assert_eq!(UpcallTag::parse(&frame), None);
        assert_eq!(UpcallTag::parse(&frame[..13]), None);
    }

    #[test]
    fn fastpath_key_round_trips_a_tuple() {
        let t = Tuple {
            src: [1; 16],
            dst: [2; 16],
            src_port: 1000,
            dst_port: 80,
            proto: 6,
        };
        let k = FlowKey::from_tuple(7, &t);
        assert_eq!((k.port, k.sport, k.dport, k.pad), (7, 1000, 80, 0));
        assert_eq!(k.tuple(), t);
    }
}
