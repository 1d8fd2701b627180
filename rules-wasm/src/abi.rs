//! The policy ABI, version 1: the contract between the dataplane (host) and every policy
//! module (guest), whether compiled from rules by the controller or written by a user.
//!
//! Why a batch ABI: a host → guest call costs ~20 ns on this class of machine, so the host
//! hands a module up to [`MAX_BATCH`] packets per call (≈ 5 ns of call overhead per packet).
//!
//! # Module contract
//! A module **exports**:
//! - `memory` — its linear memory;
//! - `bw_abi_version() -> i32` — must return [`ABI_VERSION`];
//! - `bw_init() -> i32` — called once after instantiation; returns the guest address of the
//!   I/O area: [`MAX_BATCH`] input [`PacketRecord`]s ([`RECORD_SIZE`] bytes each) followed
//!   immediately by [`MAX_BATCH`] output [`VerdictRecord`]s ([`VERDICT_SIZE`] bytes each),
//!   i.e. [`IO_AREA_SIZE`] bytes in all, 8-byte aligned;
//! - `bw_evaluate(n: i32)` — judge the first `n` records (1 ≤ n ≤ [`MAX_BATCH`]) and write
//!   one verdict per record.
//!
//! A module may **import** only [`LOG_IMPORT`] (`bw.log(ptr: i32, len: i32)`, rate-limited by
//! the host); any other import — WASI included — is rejected at load.
//!
//! # Byte layout
//! All multi-byte integers are little-endian (Wasm's own order). Layouts are fixed by the
//! `OFF_*` constants below, so guests in any language can implement the ABI without this crate.
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// ABI version a module must report from `bw_abi_version`; bumped on any layout change.
pub const ABI_VERSION: i32 = 1;
/// Most records the host hands a module in one `bw_evaluate` call.
pub const MAX_BATCH: usize = 64;
/// Size of one input record in guest memory.
pub const RECORD_SIZE: usize = 48;
/// Size of one output verdict in guest memory.
pub const VERDICT_SIZE: usize = 8;
/// Bytes the I/O area returned by `bw_init` must span.
pub const IO_AREA_SIZE: usize = MAX_BATCH * (RECORD_SIZE + VERDICT_SIZE);
/// Offset of the verdict array from the start of the I/O area.
pub const VERDICTS_OFFSET: usize = MAX_BATCH * RECORD_SIZE;

/// Export names, shared so host validation and guest SDK cannot drift apart.
pub const EXPORT_MEMORY: &str = "memory";
/// See the module contract above.
pub const EXPORT_ABI_VERSION: &str = "bw_abi_version";
/// See the module contract above.
pub const EXPORT_INIT: &str = "bw_init";
/// See the module contract above.
pub const EXPORT_EVALUATE: &str = "bw_evaluate";
/// The one import a module may have: (module, name) of the rate-limited log call.
pub const LOG_IMPORT: (&str, &str) = ("bw", "log");

/// Record field offsets (bytes from the start of a record).
pub const OFF_SRC_ADDR: usize = 0; // [u8; 16]: IPv6, or IPv4-mapped (::ffff:a.b.c.d)
/// Destination address, same encoding as the source.
pub const OFF_DST_ADDR: usize = 16;
/// u16: TCP/UDP source port; 0 for other protocols.
pub const OFF_SRC_PORT: usize = 32;
/// u16: TCP/UDP destination port; 0 for other protocols.
pub const OFF_DST_PORT: usize = 34;
/// u8: 4 or 6; 0 for non-IP frames (ARP).
pub const OFF_IP_VERSION: usize = 36;
/// u8: IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6); 0 for non-IP.
pub const OFF_PROTOCOL: usize = 37;
/// u8: TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10, …); 0 otherwise.
pub const OFF_TCP_FLAGS: usize = 38;
/// u8: a [`FlowState`].
pub const OFF_FLOW_STATE: usize = 39;
/// u16: dataplane port the frame came in on.
pub const OFF_IN_PORT: usize = 40;
/// u16: dataplane port the frame would leave by ([`PORT_FLOOD`] when flooded).
pub const OFF_OUT_PORT: usize = 42;
/// u8: ICMP / ICMPv6 type; 0 otherwise.
pub const OFF_ICMP_TYPE: usize = 44;
/// u8: ICMP / ICMPv6 code; 0 otherwise.
pub const OFF_ICMP_CODE: usize = 45;
/// u16: connections from the record's source address the host holds open (admitted flows
/// still in its flow table, not counting this record's own), saturating; 0 when the host does
/// not count. Read by iptables' `-m connlimit`. (Reserved and zero before; the layout is
/// unchanged, so [`ABI_VERSION`] is too.)
pub const OFF_SRC_CONNS: usize = 46;

/// Verdict field offsets (bytes from the start of a verdict).
pub const OFF_VERDICT_ACTION: usize = 0; // u32: an Action code
/// u32: id of the rule that decided, for tracing and per-rule counters.
pub const OFF_VERDICT_RULE: usize = 4;

/// `out_port` value for frames that are flooded (broadcast, multicast, unknown unicast).
pub const PORT_FLOOD: u16 = 0xffff;
/// Rule id meaning "no rule matched; a default decided".
pub const RULE_NONE: u32 = u32::MAX;

/// Connection-tracking state of the flow a record belongs to, as the host's flow table sees it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FlowState {
    /// First packet of a flow in the originating direction.
    #[default]
    New = 0,
    /// A flow already admitted once, being re-decided after a policy change.
    Established = 1,
    /// An ICMP error about a known flow.
    Related = 2,
    /// A packet conntrack cannot place: an ICMP error about no known flow, or a TCP segment
    /// that can neither start nor continue a connection (iptables' `INVALID`).
    Invalid = 3,
}

impl FlowState {
    /// Decodes the byte at [`OFF_FLOW_STATE`]; unknown values read as `New` (the strictest).
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Established,
            2 => Self::Related,
            3 => Self::Invalid,
            _ => Self::New,
        }
    }
}

/// What a module says about one packet. A zeroed verdict is `Continue`, so a module that
/// writes nothing defers to the next module rather than deciding by accident.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Action {
    /// No opinion: the next module in the chain decides.
    #[default]
    Continue = 0,
    /// Forward the packet and admit its flow.
    Accept = 1,
    /// Discard silently.
    Drop = 2,
    /// Discard and answer with a TCP RST / ICMP unreachable where the host supports it.
    Reject = 3,
}

/// How a [`Action::Reject`] answers, as iptables' `REJECT --reject-with`: carried in bits
/// 8..16 of a verdict's action word ([`VerdictRecord::encode`]), so a module that writes a
/// plain `3` rejects with the default, ICMP port unreachable. One kind names the IPv4 and the
/// IPv6 form of the same answer, since one rule set covers both families.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum RejectWith {
    /// `icmp-port-unreachable` / `icmp6-port-unreachable` (iptables' default).
    #[default]
    PortUnreachable = 0,
    /// `icmp-net-unreachable` / `icmp6-no-route`.
    NetUnreachable = 1,
    /// `icmp-host-unreachable` / `icmp6-addr-unreachable`.
    HostUnreachable = 2,
    /// `icmp-proto-unreachable` (IPv6 answers port unreachable, as ip6tables has no such kind).
    ProtoUnreachable = 3,
    /// `icmp-net-prohibited` (IPv6: administratively prohibited).
    NetProhibited = 4,
    /// `icmp-host-prohibited` (IPv6: administratively prohibited).
    HostProhibited = 5,
    /// `icmp-admin-prohibited` / `icmp6-adm-prohibited`.
    AdminProhibited = 6,
    /// `tcp-reset`: a TCP RST (only for TCP, as iptables requires).
    TcpReset = 7,
    /// `icmp6-policy-fail` (IPv4, which has no such code: administratively prohibited).
    PolicyFail = 8,
    /// `icmp6-reject-route` (IPv4: administratively prohibited).
    RejectRoute = 9,
}

impl RejectWith {
    /// Every kind, in code order.
    pub const ALL: [Self; 10] = [
        Self::PortUnreachable,
        Self::NetUnreachable,
        Self::HostUnreachable,
        Self::ProtoUnreachable,
        Self::NetProhibited,
        Self::HostProhibited,
        Self::AdminProhibited,
        Self::TcpReset,
        Self::PolicyFail,
        Self::RejectRoute,
    ];

    /// Decodes bits 8..16 of an action word; unknown codes are `None` (fail-closed).
    pub const fn from_u8(v: u8) -> Option<Self> {
        if (v as usize) < Self::ALL.len() {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// ICMPv4 (type, code) of this answer; `None` for [`RejectWith::TcpReset`].
    pub const fn icmpv4(self) -> Option<(u8, u8)> {
        Some(match self {
            Self::PortUnreachable => (3, 3),
            Self::NetUnreachable => (3, 0),
            Self::HostUnreachable => (3, 1),
            Self::ProtoUnreachable => (3, 2),
            Self::NetProhibited => (3, 9),
            Self::HostProhibited => (3, 10),
            Self::AdminProhibited | Self::PolicyFail | Self::RejectRoute => (3, 13),
            Self::TcpReset => return None,
        })
    }

    /// ICMPv6 (type, code) of this answer; `None` for [`RejectWith::TcpReset`].
    pub const fn icmpv6(self) -> Option<(u8, u8)> {
        Some(match self {
            Self::PortUnreachable | Self::ProtoUnreachable => (1, 4),
            Self::NetUnreachable => (1, 0),
            Self::HostUnreachable => (1, 3),
            Self::NetProhibited | Self::HostProhibited | Self::AdminProhibited => (1, 1),
            Self::PolicyFail => (1, 5),
            Self::RejectRoute => (1, 6),
            Self::TcpReset => return None,
        })
    }
}

impl Action {
    /// The action word a module writes: the action code, and for [`Action::Reject`] the
    /// answer in bits 8..16.
    pub const fn word(self, with: RejectWith) -> u32 {
        match self {
            Self::Reject => Self::Reject as u32 | (with as u32) << 8,
            a => a as u32,
        }
    }

    /// Decodes an action word: the action and, for a reject, how it answers. Anything
    /// unknown (an unknown code, an answer on a non-reject, bits above 16) is `None`.
    pub const fn from_word(v: u32) -> Option<(Self, RejectWith)> {
        let Some(action) = Self::from_u32(v & 0xff) else {
            return None;
        };
        let with = ((v >> 8) & 0xff) as u8;
        if v >> 16 != 0 || (with != 0 && !matches!(action, Self::Reject)) {
            return None;
        }
        match RejectWith::from_u8(with) {
            Some(w) => Some((action, w)),
            None => None,
        }
    }

    /// Decodes a plain action code (no reject answer); anything unknown is `None` so the host
    /// can apply its fail-closed verdict instead of guessing.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Continue),
            1 => Some(Self::Accept),
            2 => Some(Self::Drop),
            3 => Some(Self::Reject),
            _ => None,
        }
    }
}

/// One packet as the host parsed it: the input of a policy decision.
///
/// The in-memory form is plain Rust; [`PacketRecord::encode`] / [`PacketRecord::decode`]
/// convert to and from the fixed byte layout above.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PacketRecord {
    /// Source address; IPv4 is stored IPv4-mapped.
    pub src: [u8; 16],
    /// Destination address; IPv4 is stored IPv4-mapped.
    pub dst: [u8; 16],
    /// TCP/UDP source port, 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port, 0 otherwise.
    pub dst_port: u16,
    /// 4, 6, or 0 for non-IP.
    pub ip_version: u8,
    /// IP protocol number, 0 for non-IP.
    pub protocol: u8,
    /// TCP flags, 0 otherwise.
    pub tcp_flags: u8,
    /// Flow state as the host's conntrack sees it.
    pub flow_state: FlowState,
    /// Ingress dataplane port.
    pub in_port: u16,
    /// Egress dataplane port, or [`PORT_FLOOD`].
    pub out_port: u16,
    /// ICMP type, 0 otherwise.
    pub icmp_type: u8,
    /// ICMP code, 0 otherwise.
    pub icmp_code: u8,
    /// Open connections from `src` the host holds, not counting this one (see
    /// [`OFF_SRC_CONNS`]).
    pub src_conns: u16,
}

/// IP protocol numbers the rule model names.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
}

/// TCP flag bits as they appear in [`PacketRecord::tcp_flags`].
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

/// Stores an address in the record's 16-byte form (IPv4-mapped for v4).
pub const fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Reads an address back from the record's 16-byte form; IPv4-mapped comes back as v4.
pub fn bytes_addr(b: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The IPv4 address in a 16-byte field, if it is IPv4-mapped.
pub fn bytes_v4(b: &[u8; 16]) -> Option<Ipv4Addr> {
    if b[..10] == [0; 10] && b[10] == 0xff && b[11] == 0xff {
        Some(Ipv4Addr::new(b[12], b[13], b[14], b[15]))
    } else {
        None
    }
}

impl PacketRecord {
    /// Source address as an `IpAddr`.
    pub fn src_ip(&self) -> IpAddr {
        bytes_addr(self.src)
    }

    /// Destination address as an `IpAddr`.
    pub fn dst_ip(&self) -> IpAddr {
        bytes_addr(self.dst)
    }

    /// Writes the record in ABI layout. `out` must be at least [`RECORD_SIZE`] bytes;
    /// the host guarantees it, so a shorter slice is a host bug and panics in debug only.
    #[inline]
    pub fn encode(&self, out: &mut [u8; RECORD_SIZE]) {
        out[OFF_SRC_ADDR..OFF_SRC_ADDR + 16].copy_from_slice(&self.src);
        out[OFF_DST_ADDR..OFF_DST_ADDR + 16].copy_from_slice(&self.dst);
        // The 16 bytes after the addresses, built in a register and stored at once: the host
        // encodes every record of every batch, and ten narrow stores cost more than the shifts.
        let at = |off: usize| 8 * (off - OFF_SRC_PORT) as u32;
        let tail = u128::from(self.src_port) << at(OFF_SRC_PORT)
            | u128::from(self.dst_port) << at(OFF_DST_PORT)
            | u128::from(self.ip_version) << at(OFF_IP_VERSION)
            | u128::from(self.protocol) << at(OFF_PROTOCOL)
            | u128::from(self.tcp_flags) << at(OFF_TCP_FLAGS)
            | u128::from(self.flow_state as u8) << at(OFF_FLOW_STATE)
            | u128::from(self.in_port) << at(OFF_IN_PORT)
            | u128::from(self.out_port) << at(OFF_OUT_PORT)
            | u128::from(self.icmp_type) << at(OFF_ICMP_TYPE)
            | u128::from(self.icmp_code) << at(OFF_ICMP_CODE)
            | u128::from(self.src_conns) << at(OFF_SRC_CONNS);
        out[OFF_SRC_PORT..RECORD_SIZE].copy_from_slice(&tail.to_le_bytes());
    }

    /// Reads a record from ABI layout (the guest side of [`PacketRecord::encode`]).
    #[inline]
    pub fn decode(b: &[u8; RECORD_SIZE]) -> Self {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&b[OFF_SRC_ADDR..OFF_SRC_ADDR + 16]);
        dst.copy_from_slice(&b[OFF_DST_ADDR..OFF_DST_ADDR + 16]);
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Self {
            src,
            dst,
            src_port: u16_at(OFF_SRC_PORT),
            dst_port: u16_at(OFF_DST_PORT),
            ip_version: b[OFF_IP_VERSION],
            protocol: b[OFF_PROTOCOL],
            tcp_flags: b[OFF_TCP_FLAGS],
            flow_state: FlowState::from_u8(b[OFF_FLOW_STATE]),
            in_port: u16_at(OFF_IN_PORT),
            out_port: u16_at(OFF_OUT_PORT),
            icmp_type: b[OFF_ICMP_TYPE],
            icmp_code: b[OFF_ICMP_CODE],
            src_conns: u16_at(OFF_SRC_CONNS),
        }
    }
}

/// One decision: what to do, which rule said so, and how a reject answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct VerdictRecord {
    /// The action.
    pub action: Action,
    /// The deciding rule's id, or [`RULE_NONE`].
    pub rule: u32,
    /// How a [`Action::Reject`] answers; the default for every other action.
    pub reject: RejectWith,
}

impl VerdictRecord {
    /// A verdict with no deciding rule.
    pub const CONTINUE: Self = Self::new(Action::Continue, RULE_NONE);

    /// A verdict of `action` by `rule`, rejecting (if it does) with the default answer.
    pub const fn new(action: Action, rule: u32) -> Self {
        Self {
            action,
            rule,
            reject: RejectWith::PortUnreachable,
        }
    }

    /// Writes the verdict in ABI layout.
    #[inline]
    pub fn encode(&self, out: &mut [u8; VERDICT_SIZE]) {
        out[..4].copy_from_slice(&self.action.word(self.reject).to_le_bytes());
        out[4..].copy_from_slice(&self.rule.to_le_bytes());
    }

    /// Reads a guest-written verdict; `None` when the action word is not one
    /// [`Action::from_word`] knows, which the host treats as a misbehaving module
    /// (fail-closed).
    #[inline]
    pub fn decode(b: &[u8; VERDICT_SIZE]) -> Option<Self> {
        let (action, reject) = Action::from_word(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
        Some(Self {
            action,
            rule: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            reject,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_roundtrips_through_abi_layout() {
        let r = PacketRecord {
            src: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 2))),
            dst: addr_bytes(IpAddr::V4(Ipv4Addr::new(172, 17, 0, 3))),
            src_port: 40000,
            dst_port: 80,
            ip_version: 4,
            protocol: proto::TCP,
            tcp_flags: tcp_flags::SYN,
            flow_state: FlowState::New,
            in_port: 3,
            out_port: PORT_FLOOD,
            icmp_type: 0,
            icmp_code: 0,
            src_conns: 7,
        };
        let mut b = [0u8; RECORD_SIZE];
        r.encode(&mut b);
        assert_eq!(PacketRecord::decode(&b), r);
        assert_eq!(&b[OFF_DST_PORT..OFF_DST_PORT + 2], &80u16.to_le_bytes());
        assert_eq!(bytes_v4(&r.src), Some(Ipv4Addr::new(172, 17, 0, 2)));
    }

    #[test]
    fn unknown_action_code_is_rejected() {
        let mut b = [0u8; VERDICT_SIZE];
        b[0] = 9;
        assert_eq!(VerdictRecord::decode(&b), None);
        VerdictRecord::new(Action::Drop, 7).encode(&mut b);
        assert_eq!(
            VerdictRecord::decode(&b),
            Some(VerdictRecord::new(Action::Drop, 7))
        );
    }
}
