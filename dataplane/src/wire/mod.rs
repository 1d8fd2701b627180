//! Wire formats: turning the bytes of an Ethernet frame into a fixed-size [`Parsed`] record,
//! and completing the transport checksums that veth offload leaves partial.
//!
//! Why hand-written: the hot loop parses every frame, and the budget is ≤ 20 ns per 64-byte
//! frame. `etherparse` is the reference the tests and property tests check this parser
//! against (and `benches/core.rs` measures both); this module reads only the fields the
//! switch, the flow table and the policy need, in one pass, without allocating, and turns
//! every malformed frame into a [`Malformed`] reason instead of a panic.
pub mod checksum;
mod parse;

pub use checksum::{complete_l4_checksum, ones_complement_sum};
pub use parse::{parse, parse_into};

use crate::phy::PortId;
use rules_wasm::abi::{FlowState, PacketRecord, proto};

/// Ethertype of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// Ethertype of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Ethertype of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Ethertype of an 802.1Q VLAN tag.
pub const ETHERTYPE_VLAN: u16 = 0x8100;
/// Ethertype of an 802.1ad (QinQ) service tag.
pub const ETHERTYPE_QINQ: u16 = 0x88a8;
/// Most IPv6 extension headers the parser walks before giving up; a longer chain is a
/// [`Malformed::ExtHeaderChainTooLong`] drop, which bounds the work one frame can cause.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;

/// Why a frame could not be parsed. Each variant is a counted drop reason, so an operator can
/// tell a truncating NIC from a fuzzing container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Malformed {
    /// A header announced by the frame extends past its end.
    #[error("frame truncated inside a header")]
    Truncated,
    /// More than one VLAN tag, or an 802.1ad tag: not switched, because a stacked tag would
    /// hide an IP packet from the policy.
    #[error("stacked or 802.1ad VLAN tags are not supported")]
    VlanStack,
    /// ARP that is not Ethernet/IPv4 with 6- and 4-byte addresses.
    #[error("ARP packet is not Ethernet/IPv4")]
    BadArp,
    /// The IP version nibble does not match the ethertype.
    #[error("IP version field does not match the ethertype")]
    BadIpVersion,
    /// IPv4 header length below 5 words or beyond the frame.
    #[error("bad IPv4 header length (IHL)")]
    BadIhl,
    /// IPv4 total length shorter than its header or longer than the frame; IPv6 payload
    /// length longer than the frame.
    #[error("IP total/payload length disagrees with the frame")]
    BadTotalLength,
    /// More than [`MAX_IPV6_EXT_HEADERS`] IPv6 extension headers.
    #[error("IPv6 extension header chain too long")]
    ExtHeaderChainTooLong,
    /// TCP data offset below 5 words or beyond the segment.
    #[error("bad TCP data offset")]
    BadTcpHeader,
    /// UDP length below 8 or beyond the IP payload.
    #[error("bad UDP length")]
    BadUdpLength,
}

impl Malformed {
    /// Every variant, in counter order.
    pub const ALL: [Malformed; 9] = [
        Malformed::Truncated,
        Malformed::VlanStack,
        Malformed::BadArp,
        Malformed::BadIpVersion,
        Malformed::BadIhl,
        Malformed::BadTotalLength,
        Malformed::ExtHeaderChainTooLong,
        Malformed::BadTcpHeader,
        Malformed::BadUdpLength,
    ];
}

/// The network layer a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum L3 {
    /// An ethertype this parser does not look into (LLDP, 802.3 length frames, ...).
    #[default]
    Other,
    /// ARP for IPv4 over Ethernet.
    Arp,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// Where an IP packet sits in a fragmented datagram: only the first fragment carries the
/// transport header, so later fragments have no ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Fragment {
    /// A whole datagram.
    #[default]
    None,
    /// Offset 0 with more fragments following: the transport header is here.
    First,
    /// A non-zero offset: no transport header.
    Later,
}

/// An IP 5-tuple in one direction, addresses in the ABI's 16-byte form (IPv4-mapped).
///
/// For ICMP echo the identifier stands in for both ports, so a request and its reply are
/// each other's reverse, as in Linux conntrack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    /// Source address.
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// Source port (or echo identifier), 0 when the protocol has none.
    pub src_port: u16,
    /// Destination port (or echo identifier), 0 when the protocol has none.
    pub dst_port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// Everything the dataplane reads from one frame, in a fixed-size `Copy` struct so the
/// engine can keep a batch of them without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Parsed {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// VLAN id of the single 802.1Q tag, if tagged.
    pub vlan: Option<u16>,
    /// Ethertype after the VLAN tag (or the 802.3 length field for non-Ethernet-II frames).
    pub ethertype: u16,
    /// Network layer kind.
    pub l3: L3,
    /// Offset of the network header in the frame.
    pub l3_offset: u16,
    /// Offset of the transport header (after IPv6 extension headers); 0 when there is none.
    pub l4_offset: u16,
    /// Transport header + payload length as the IP header announces it (frames may carry
    /// Ethernet padding beyond it).
    pub l4_len: u16,
    /// 4 or 6; 0 for non-IP.
    pub ip_version: u8,
    /// Transport protocol number (after extension headers); 0 for non-IP.
    pub proto: u8,
    /// Source address (IPv4-mapped for v4; ARP's sender protocol address for ARP).
    pub src: [u8; 16],
    /// Destination address (IPv4-mapped for v4; ARP's target protocol address for ARP).
    pub dst: [u8; 16],
    /// TCP/UDP source port; 0 otherwise.
    pub src_port: u16,
    /// TCP/UDP destination port; 0 otherwise.
    pub dst_port: u16,
    /// TCP flags byte (CWR..FIN); 0 otherwise.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type; 0 otherwise.
    pub icmp_type: u8,
    /// ICMP/ICMPv6 code; 0 otherwise.
    pub icmp_code: u8,
    /// ICMP/ICMPv6 echo identifier; 0 otherwise.
    pub icmp_id: u16,
    /// ARP operation (1 request, 2 reply); 0 otherwise.
    pub arp_op: u16,
    /// Fragment position of an IP packet.
    pub fragment: Fragment,
    /// For fragments: the datagram's identification (IPv4's 16-bit ID, or the IPv6 fragment
    /// header's 32-bit one), which ties the fragments of one datagram together.
    pub frag_id: u32,
    /// For fragments: where this fragment's data starts in the datagram, in bytes.
    pub frag_offset: u32,
    /// For fragments: more fragments follow this one (false on the last).
    pub frag_more: bool,
    /// For ICMP/ICMPv6 errors: the 5-tuple of the packet the error is about, as that packet
    /// was sent (needed to admit the error as RELATED to its flow). `None` when the embedded
    /// header is missing or unreadable.
    pub inner: Option<Tuple>,
}

impl Parsed {
    /// True for ICMP (v4) error messages, which embed the packet they are about.
    pub fn is_icmp_error(&self) -> bool {
        match self.proto {
            proto::ICMP => matches!(self.icmp_type, 3 | 4 | 5 | 11 | 12),
            proto::ICMPV6 => matches!(self.icmp_type, 1..=4),
            _ => false,
        }
    }

    /// True for ICMP/ICMPv6 echo requests and replies, tracked by their identifier.
    pub fn is_icmp_echo(&self) -> bool {
        match self.proto {
            proto::ICMP => matches!(self.icmp_type, 0 | 8),
            proto::ICMPV6 => matches!(self.icmp_type, 128 | 129),
            _ => false,
        }
    }

    /// True for IPv6 neighbour discovery (router/neighbour solicitation and advertisement,
    /// redirect): the IPv6 counterpart of ARP, switched like ARP without a policy decision.
    pub fn is_neighbour_discovery(&self) -> bool {
        self.ip_version == 6 && self.proto == proto::ICMPV6 && matches!(self.icmp_type, 133..=137)
    }

    /// True when the frame carries a TCP or UDP header whose checksum can be completed: a
    /// whole (unfragmented) datagram.
    pub fn has_l4_checksum(&self) -> bool {
        self.l4_offset != 0
            && self.fragment == Fragment::None
            && matches!(self.proto, proto::TCP | proto::UDP)
    }

    /// The policy's view of this packet: its [`PacketRecord`]. Ports are set for TCP/UDP
    /// only and ICMP type/code for ICMP only, as the ABI specifies.
    #[inline]
    pub fn record(&self, in_port: PortId, out_port: PortId, flow_state: FlowState) -> PacketRecord {
        PacketRecord {
            src: self.src,
            dst: self.dst,
            src_port: self.src_port,
            dst_port: self.dst_port,
            ip_version: self.ip_version,
            protocol: self.proto,
            tcp_flags: self.tcp_flags,
            flow_state,
            in_port,
            out_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            src_conns: 0,
        }
    }
}
