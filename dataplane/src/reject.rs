//! Answers for rejected packets: the TCP RST or ICMP/ICMPv6 error that iptables'
//! `REJECT --reject-with KIND` sends back to the sender of a packet it refuses.
//!
//! Why: a silent drop leaves a client waiting for its connect or query to time out (seconds
//! to minutes); a reject tells it at once, which is what users of `-j REJECT` expect. Why
//! here, sans-IO: the engine builds the answer in a free frame of the port the offending
//! frame came in on and queues it like any frame, so this module only turns bytes into
//! bytes — no allocation, no I/O, no clock — and is tested on its own.
//!
//! What is sent, as Linux's `nf_send_reset`/`nf_send_unreach` (and their IPv6 twins) do:
//! - a TCP RST for [`RejectWith::TcpReset`] on TCP (RFC 9293 §3.10.7.1): when the offending
//!   segment carries ACK, `seq` = its ack number and no ACK flag; otherwise `seq` = 0, ACK set
//!   and `ack` = its seq + payload length + SYN + FIN;
//! - otherwise an ICMP destination unreachable (IPv4 type 3) or ICMPv6 destination
//!   unreachable (type 1) with the kind's code, quoting the offending IP packet from its IP
//!   header on, as much as fits an answer of 576 bytes (IPv4, RFC 1812 §4.3.2.3) or 1280
//!   bytes (IPv6, RFC 4443 §2.4(c)). [`RejectWith::TcpReset`] on anything but TCP (a module
//!   may write it) answers port unreachable.
//!
//! The answer appears to come from the host the packet was sent to: source address = the
//! offending packet's destination, destination = its source, MACs and ports swapped, TTL /
//! hop limit [`HOP_LIMIT`]. When the request had been DNATed by the host, the host's
//! conntrack translates the error back on its way out, as it does for the kernel's own.
//!
//! Never answered (RFC 1122 §3.2.2, RFC 1812 §4.3.2.7, RFC 4443 §2.4(e), RFC 9293): non-IP
//! frames, ICMP error messages (IPv4 types 3, 4, 5, 11, 12 and unknown types above 18, as
//! Linux counts them; ICMPv6 types below 128 and redirects), non-first fragments, TCP
//! segments carrying RST (whatever the kind: a RST expects no answer), packets whose source or
//! destination address is not one individual host (unspecified, loopback, multicast,
//! broadcast or IPv4 class E), and frames sent to or from a group MAC (link-layer broadcast
//! or multicast).
use crate::wire::checksum::{fold, ones_complement_sum};
use crate::wire::{Fragment, L3, Parsed};
use rules_wasm::abi::{proto, tcp_flags};

/// How a reject answers: re-exported from the policy ABI, where a verdict carries it.
pub use rules_wasm::abi::RejectWith;

/// Largest IPv4 packet an ICMP error may be (RFC 1812 §4.3.2.3): the quote is cut to fit.
pub const ICMPV4_ANSWER_MAX: usize = 576;
/// Largest IPv6 packet an ICMPv6 error may be (the IPv6 minimum MTU, RFC 4443 §2.4(c)).
pub const ICMPV6_ANSWER_MAX: usize = 1280;
/// TTL / hop limit of every answer: Linux's default (`ip_default_ttl`, `hop_limit`).
pub const HOP_LIMIT: u8 = 64;
/// Largest answer frame: an Ethernet header with one VLAN tag and the largest ICMPv6 error.
/// A buffer of this size never cuts a quote short.
pub const MAX_ANSWER_LEN: usize = 18 + ICMPV6_ANSWER_MAX;

const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
/// ICMP "port unreachable": the answer of a [`RejectWith::TcpReset`] that is not about TCP.
const PORT_UNREACHABLE_V4: (u8, u8) = (3, 3);
const PORT_UNREACHABLE_V6: (u8, u8) = (1, 4);
/// IPv4 precedence "internetwork control", which Linux gives its ICMP errors.
const TOS_INTERNETWORK_CONTROL: u8 = 0xc0;
/// The TOS bits (RFC 1349) an ICMP error keeps from the packet it is about (Linux's `RT_TOS`).
const TOS_MASK: u8 = 0x1e;
/// IPv4 "don't fragment": answers are small enough never to need fragmenting.
const IPV4_DF: u8 = 0x40;
/// ICMPv6 redirect: never answered (RFC 4443 §2.4(e.2)).
const ICMPV6_REDIRECT: u8 = 137;
/// Highest ICMP type Linux knows (`NR_ICMP_TYPES`); it treats higher ones as errors.
const ICMPV4_LAST_KNOWN_TYPE: u8 = 18;

/// Which answer a reject sends, for counting (the engine keeps a counter per kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnswerKind {
    /// A TCP RST.
    TcpReset,
    /// An ICMP or ICMPv6 destination unreachable.
    Icmp,
}

/// Which answer rejecting the packet `p` with `with` sends, or `None` when the packet must
/// not be answered (see the module documentation). The engine asks before it spends a
/// rate-limit token or a frame on an answer.
pub fn kind(p: &Parsed, with: RejectWith) -> Option<AnswerKind> {
    if !answerable(p) {
        return None;
    }
    Some(if with == RejectWith::TcpReset && p.proto == proto::TCP {
        AnswerKind::TcpReset
    } else {
        AnswerKind::Icmp
    })
}

/// Writes into `out` the answer to rejecting the Ethernet frame `frame` (which `p`, from
/// [`crate::wire::parse`], describes) with `with`, and returns the answer's length.
///
/// `None` when no answer is allowed ([`kind`]), when `frame` is shorter than `p` says, or
/// when `out` cannot hold even the answer's headers. An ICMP quote is cut to what `out`
/// holds, so an `out` of [`MAX_ANSWER_LEN`] bytes never shortens one. Checksums are
/// complete. Never panics, whatever the bytes.
pub fn answer(frame: &[u8], p: &Parsed, with: RejectWith, out: &mut [u8]) -> Option<usize> {
    match kind(p, with)? {
        AnswerKind::TcpReset => tcp_reset(frame, p, out),
        AnswerKind::Icmp if p.ip_version == 4 => {
            icmpv4(frame, p, with.icmpv4().unwrap_or(PORT_UNREACHABLE_V4), out)
        }
        AnswerKind::Icmp => icmpv6(frame, p, with.icmpv6().unwrap_or(PORT_UNREACHABLE_V6), out),
    }
}

/// May this packet be answered at all, whatever the kind?
fn answerable(p: &Parsed) -> bool {
    matches!(p.l3, L3::Ipv4 | L3::Ipv6)
        && p.l4_offset != 0
        && p.fragment != Fragment::Later
        && !is_group_mac(&p.src_mac)
        && !is_group_mac(&p.dst_mac)
        && is_individual(p, &p.src)
        && is_individual(p, &p.dst)
        && !is_error_message(p)
        && !(p.proto == proto::TCP && p.tcp_flags & tcp_flags::RST != 0)
}

/// A broadcast or multicast MAC (the I/G bit).
fn is_group_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// Does `addr` (in the 16-byte form, IPv4-mapped for v4) name one individual host: not
/// unspecified, loopback, multicast, broadcast or (IPv4) class E?
fn is_individual(p: &Parsed, addr: &[u8; 16]) -> bool {
    if p.ip_version == 4 {
        !matches!(addr[12], 0 | 127 | 224..=255)
    } else {
        const LOOPBACK: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        addr[0] != 0xff && *addr != [0; 16] && *addr != LOOPBACK
    }
}

/// ICMP messages that must not be answered with an ICMP error: the errors themselves (a
/// storm of errors about errors otherwise), and ICMPv6 redirects.
fn is_error_message(p: &Parsed) -> bool {
    match p.proto {
        proto::ICMP => {
            matches!(p.icmp_type, 3 | 4 | 5 | 11 | 12) || p.icmp_type > ICMPV4_LAST_KNOWN_TYPE
        }
        proto::ICMPV6 => p.icmp_type < 128 || p.icmp_type == ICMPV6_REDIRECT,
        _ => false,
    }
}

/// The RST's sequence number, acknowledgment number and flags (RFC 9293 §3.10.7.1, as
/// Linux's `nf_reject_ip_tcphdr_put`): `th` is the offending TCP header, `payload` its
/// segment's data length.
fn reset_numbers(th: &[u8], payload: usize) -> (u32, u32, u8) {
    let flags = th[13];
    let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
    let ack = u32::from_be_bytes([th[8], th[9], th[10], th[11]]);
    if flags & tcp_flags::ACK != 0 {
        return (ack, 0, tcp_flags::RST);
    }
    let syn = u32::from(flags & tcp_flags::SYN != 0);
    let fin = u32::from(flags & tcp_flags::FIN != 0);
    let ack = seq
        .wrapping_add(payload as u32)
        .wrapping_add(syn)
        .wrapping_add(fin);
    (0, ack, tcp_flags::RST | tcp_flags::ACK)
}

/// A TCP RST from the offending segment's destination back to its source.
fn tcp_reset(frame: &[u8], p: &Parsed, out: &mut [u8]) -> Option<usize> {
    let l4 = usize::from(p.l4_offset);
    let seg = frame.get(l4..l4 + usize::from(p.l4_len))?;
    let th = seg.get(..TCP_HEADER)?;
    let payload = seg.len().checked_sub(usize::from(th[12] >> 4) * 4)?;
    let (seq, ack, flags) = reset_numbers(th, payload);
    let ip = ip_header_len(p);
    let l3 = ethernet(frame, p, out, ip + TCP_HEADER)?;
    ip_header(frame, p, &mut out[l3..l3 + ip], TCP_HEADER, proto::TCP)?;
    let tcp = &mut out[l3 + ip..l3 + ip + TCP_HEADER];
    tcp[0..2].copy_from_slice(&th[2..4]);
    tcp[2..4].copy_from_slice(&th[0..2]);
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (TCP_HEADER as u8 / 4) << 4;
    tcp[13] = flags;
    tcp[14..20].fill(0); // window 0, checksum, urgent pointer
    let sum = !fold(pseudo_header_sum(p, proto::TCP, TCP_HEADER) + sum_of(tcp));
    tcp[16..18].copy_from_slice(&sum.to_ne_bytes());
    Some(l3 + ip + TCP_HEADER)
}

/// An ICMP destination unreachable (`kind` = type, code) quoting the offending packet.
fn icmpv4(frame: &[u8], p: &Parsed, kind: (u8, u8), out: &mut [u8]) -> Option<usize> {
    let fixed = IPV4_HEADER + ICMP_HEADER;
    let quote = quote(frame, p, out, ICMPV4_ANSWER_MAX - fixed, fixed)?;
    let l3 = ethernet(frame, p, out, fixed + quote.len())?;
    ip_header(
        frame,
        p,
        &mut out[l3..l3 + IPV4_HEADER],
        ICMP_HEADER + quote.len(),
        proto::ICMP,
    )?;
    let msg = &mut out[l3 + IPV4_HEADER..l3 + fixed + quote.len()];
    icmp_message(msg, kind, quote);
    let sum = !fold(sum_of(msg));
    msg[2..4].copy_from_slice(&sum.to_ne_bytes());
    Some(l3 + fixed + quote.len())
}

/// An ICMPv6 destination unreachable (`kind` = type, code) quoting the offending packet.
fn icmpv6(frame: &[u8], p: &Parsed, kind: (u8, u8), out: &mut [u8]) -> Option<usize> {
    let fixed = IPV6_HEADER + ICMP_HEADER;
    let quote = quote(frame, p, out, ICMPV6_ANSWER_MAX - fixed, fixed)?;
    let len = ICMP_HEADER + quote.len();
    let l3 = ethernet(frame, p, out, fixed + quote.len())?;
    ip_header(frame, p, &mut out[l3..l3 + IPV6_HEADER], len, proto::ICMPV6)?;
    let msg = &mut out[l3 + IPV6_HEADER..l3 + fixed + quote.len()];
    icmp_message(msg, kind, quote);
    let sum = !fold(pseudo_header_sum(p, proto::ICMPV6, len) + sum_of(msg));
    msg[2..4].copy_from_slice(&sum.to_ne_bytes());
    Some(l3 + fixed + quote.len())
}

/// The part of the offending IP packet (from its IP header on, Ethernet padding excluded)
/// an ICMP error quotes: at most `limit` bytes, and no more than `out` holds after the
/// Ethernet header and `fixed` bytes of IP and ICMP header.
fn quote<'f>(
    frame: &'f [u8],
    p: &Parsed,
    out: &[u8],
    limit: usize,
    fixed: usize,
) -> Option<&'f [u8]> {
    let l3 = usize::from(p.l3_offset);
    let packet = usize::from(p.l4_offset).checked_sub(l3)? + usize::from(p.l4_len);
    let room = out.len().checked_sub(l3 + fixed)?;
    frame.get(l3..l3 + packet.min(limit).min(room))
}

/// Writes an ICMP error's header (checksum left zero) and its quote into `msg`, which is
/// exactly [`ICMP_HEADER`] + `quote.len()` bytes.
fn icmp_message(msg: &mut [u8], (ty, code): (u8, u8), quote: &[u8]) {
    msg[0] = ty;
    msg[1] = code;
    msg[2..ICMP_HEADER].fill(0); // checksum, and the unused word
    msg[ICMP_HEADER..].copy_from_slice(quote);
}

/// Copies the offending frame's Ethernet header (and VLAN tag) into `out` with the MACs
/// swapped, after checking `out` holds that header plus `rest` bytes. Returns the header's
/// length (the answer's IP header offset).
fn ethernet(frame: &[u8], p: &Parsed, out: &mut [u8], rest: usize) -> Option<usize> {
    let l3 = usize::from(p.l3_offset);
    let head = frame.get(..l3)?;
    if l3 < 12 || out.len() < l3 + rest {
        return None;
    }
    out[..l3].copy_from_slice(head);
    out[0..6].copy_from_slice(&p.src_mac);
    out[6..12].copy_from_slice(&p.dst_mac);
    Some(l3)
}

fn ip_header_len(p: &Parsed) -> usize {
    if p.ip_version == 4 {
        IPV4_HEADER
    } else {
        IPV6_HEADER
    }
}

/// Writes the answer's IP header into `h` (exactly its length) for `payload` bytes of
/// protocol `next`, from the offending packet's destination to its source.
fn ip_header(frame: &[u8], p: &Parsed, h: &mut [u8], payload: usize, next: u8) -> Option<()> {
    if p.ip_version == 4 {
        let tos = if next == proto::ICMP {
            frame.get(usize::from(p.l3_offset) + 1)? & TOS_MASK | TOS_INTERNETWORK_CONTROL
        } else {
            0
        };
        let total = u16::try_from(IPV4_HEADER + payload).ok()?;
        ipv4_header(h, p, tos, total, next);
    } else {
        h[0..4].copy_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, no flow label
        h[4..6].copy_from_slice(&u16::try_from(payload).ok()?.to_be_bytes());
        h[6] = next;
        h[7] = HOP_LIMIT;
        h[8..24].copy_from_slice(&p.dst);
        h[24..40].copy_from_slice(&p.src);
    }
    Some(())
}

fn ipv4_header(h: &mut [u8], p: &Parsed, tos: u8, total: u16, next: u8) {
    h[0] = 0x45;
    h[1] = tos;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..8].copy_from_slice(&[0, 0, IPV4_DF, 0]); // id 0 (RFC 6864: atomic datagram)
    h[8] = HOP_LIMIT;
    h[9] = next;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(&p.dst[12..16]);
    h[16..20].copy_from_slice(&p.src[12..16]);
    let sum = !fold(sum_of(h));
    h[10..12].copy_from_slice(&sum.to_ne_bytes());
}

/// The unfolded ones'-complement sum of `data` (see [`ones_complement_sum`]).
fn sum_of(data: &[u8]) -> u64 {
    ones_complement_sum(data, 0)
}

/// The sum of the answer's pseudo-header (RFC 793 / RFC 8200 §8.1): its source (the
/// offending packet's destination), destination, protocol and upper-layer length. The
/// IPv6 form's 32-bit length sums to the IPv4 form's 16-bit one for any length below 64 KiB.
fn pseudo_header_sum(p: &Parsed, next: u8, len: usize) -> u64 {
    let (src, dst) = if p.ip_version == 4 {
        (&p.dst[12..16], &p.src[12..16])
    } else {
        (&p.dst[..], &p.src[..])
    };
    sum_of(src) + sum_of(dst) + sum_of(&[0, next]) + sum_of(&(len as u32).to_be_bytes())
}

/// How many answers an engine sends: a token bucket, as the kernel's `icmp_msgs_per_sec` /
/// `icmp_msgs_burst` limit its ICMP errors. Why: rejected packets cost a container nothing to
/// send, and without a limit every one would cost the host a frame and a transmit; with it a
/// flood of rejected packets gets at most `burst` answers at once and `per_sec` after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Answers per second, sustained. 0: only the initial burst is ever sent.
    pub per_sec: u32,
    /// Answers the bucket holds: the most sent at once after a quiet spell. 0: none at all.
    pub burst: u32,
}

impl Default for RateLimit {
    /// Linux's defaults: `net.ipv4.icmp_msgs_per_sec` = 1000, `icmp_msgs_burst` = 50.
    fn default() -> Self {
        Self {
            per_sec: 1000,
            burst: 50,
        }
    }
}

/// One token, in the bucket's unit: a token is earned over `NANOS_PER_SEC` nanoseconds at one
/// answer per second, so credit is kept in token-nanoseconds and no precision is lost.
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The token bucket enforcing a [`RateLimit`], timed by the engine's `now` argument
/// (nanoseconds, any monotonic origin), so it is deterministic under a simulated clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    limit: RateLimit,
    /// Tokens × `NANOS_PER_SEC`.
    credit: u64,
    /// The time of the last call (`None` before the first).
    last: Option<u64>,
}

impl TokenBucket {
    /// A full bucket: the first `burst` answers go out at once.
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            credit: Self::cap(limit),
            last: None,
        }
    }

    fn cap(limit: RateLimit) -> u64 {
        u64::from(limit.burst) * NANOS_PER_SEC
    }

    /// Takes one token if there is one: true when an answer may be sent at `now`. A clock
    /// that goes backwards earns nothing (and loses nothing).
    pub fn allow(&mut self, now: u64) -> bool {
        let last = *self.last.get_or_insert(now);
        let earned = now
            .saturating_sub(last)
            .saturating_mul(u64::from(self.limit.per_sec));
        self.last = Some(last.max(now));
        self.credit = self
            .credit
            .saturating_add(earned)
            .min(Self::cap(self.limit));
        if self.credit < NANOS_PER_SEC {
            return false;
        }
        self.credit -= NANOS_PER_SEC;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::{
        Icmpv4Slice, Icmpv6Slice, NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice,
    };

    const A_MAC: [u8; 6] = [2, 0x42, 172, 17, 0, 2];
    const B_MAC: [u8; 6] = [2, 0x42, 172, 17, 0, 3];
    const A4: [u8; 4] = [172, 17, 0, 2];
    const B4: [u8; 4] = [172, 17, 0, 3];
    const A6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 172, 17, 0, 2];
    const B6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 172, 17, 0, 3];
    const SYN: u8 = tcp_flags::SYN;
    const ACK: u8 = tcp_flags::ACK;
    const FIN: u8 = tcp_flags::FIN;
    const RST: u8 = tcp_flags::RST;

    fn tcp_header(flags: u8, seq: u32, ack: u32) -> TcpHeader {
        let mut h = TcpHeader::new(40000, 80, seq, 64240);
        h.syn = flags & SYN != 0;
        h.ack = flags & ACK != 0;
        h.fin = flags & FIN != 0;
        h.rst = flags & RST != 0;
        h.acknowledgment_number = ack;
        h
    }

    fn tcp4(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv4(A4, B4, 61)
            .tcp_header(tcp_header(flags, seq, ack));
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn tcp6(flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv6(A6, B6, 61)
            .tcp_header(tcp_header(flags, seq, ack));
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn udp4(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv4(A4, B4, 61)
            .udp(40000, 53);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn udp6(payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv6(A6, B6, 61)
            .udp(40000, 53);
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    fn reply(frame: &[u8], with: RejectWith) -> Option<Vec<u8>> {
        let p = parse(frame).unwrap();
        let mut out = [0u8; MAX_ANSWER_LEN];
        let n = answer(frame, &p, with, &mut out)?;
        Some(out[..n].to_vec())
    }

    /// An independent RFC 1071 check: a region with its checksum in place sums to 0xffff.
    fn sums_to_ones(words: &[&[u8]]) -> bool {
        let mut sum: u32 = 0;
        for w in words {
            for c in w.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    fn tcp_of<'a>(s: &'a SlicedPacket<'a>) -> &'a etherparse::TcpSlice<'a> {
        match &s.transport {
            Some(TransportSlice::Tcp(t)) => t,
            other => panic!("not TCP: {other:?}"),
        }
    }

    fn check_ethernet(s: &SlicedPacket<'_>) {
        let Some(etherparse::LinkSlice::Ethernet2(e)) = &s.link else {
            panic!("no Ethernet header");
        };
        assert_eq!((e.source(), e.destination()), (B_MAC, A_MAC));
    }

    fn check_ipv4<'a>(s: &'a SlicedPacket<'a>, proto: u8) -> etherparse::Ipv4HeaderSlice<'a> {
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("not IPv4");
        };
        let h = ip.header();
        assert_eq!((h.source(), h.destination()), (B4, A4));
        assert_eq!((h.ttl(), h.protocol().0), (HOP_LIMIT, proto));
        assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
        assert!(sums_to_ones(&[h.slice()]));
        h
    }

    fn check_ipv6(s: &SlicedPacket<'_>, next: u8) {
        let Some(NetSlice::Ipv6(ip)) = &s.net else {
            panic!("not IPv6");
        };
        let h = ip.header();
        assert_eq!((h.source(), h.destination()), (B6, A6));
        assert_eq!((h.hop_limit(), h.next_header().0), (HOP_LIMIT, next));
    }

    #[test]
    fn a_syn_gets_a_reset_acknowledging_it() {
        let syn = tcp4(SYN, 1000, 0, &[]);
        let rst = reply(&syn, RejectWith::TcpReset).unwrap();
        assert_eq!(rst.len(), 14 + 20 + 20);
        let s = SlicedPacket::from_ethernet(&rst).unwrap();
        check_ethernet(&s);
        check_ipv4(&s, proto::TCP);
        let t = tcp_of(&s);
        assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
        assert!(t.rst() && t.ack() && !t.syn() && !t.fin());
        assert_eq!((t.window_size(), t.data_offset()), (0, 5));
        assert_eq!(t.calc_checksum_ipv4(B4, A4).unwrap(), t.checksum());
    }

    #[test]
    fn a_segment_with_ack_gets_a_reset_at_its_ack_number() {
        let seg = tcp4(ACK | FIN, 5000, 777_777, b"hello");
        let rst = reply(&seg, RejectWith::TcpReset).unwrap();
        let s = SlicedPacket::from_ethernet(&rst).unwrap();
        let t = tcp_of(&s);
        assert_eq!(
            (t.sequence_number(), t.acknowledgment_number()),
            (777_777, 0)
        );
        assert!(t.rst() && !t.ack());
        assert_eq!(t.calc_checksum_ipv4(B4, A4).unwrap(), t.checksum());
    }

    #[test]
    fn without_ack_the_reset_acknowledges_payload_syn_and_fin() {
        let seg = tcp4(SYN | FIN, u32::MAX - 2, 0, b"abcd");
        let rst = reply(&seg, RejectWith::TcpReset).unwrap();
        let s = SlicedPacket::from_ethernet(&rst).unwrap();
        // seq + 4 bytes + SYN + FIN, wrapping.
        assert_eq!(tcp_of(&s).acknowledgment_number(), 3);
    }

    #[test]
    fn ipv6_syn_gets_a_reset_with_a_valid_checksum() {
        let syn = tcp6(SYN, 42, 0, &[]);
        let rst = reply(&syn, RejectWith::TcpReset).unwrap();
        assert_eq!(rst.len(), 14 + 40 + 20);
        let s = SlicedPacket::from_ethernet(&rst).unwrap();
        check_ethernet(&s);
        check_ipv6(&s, proto::TCP);
        let t = tcp_of(&s);
        assert_eq!((t.source_port(), t.destination_port()), (80, 40000));
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 43));
        assert_eq!(t.calc_checksum_ipv6(B6, A6).unwrap(), t.checksum());
    }

    #[test]
    fn a_reset_is_never_answered() {
        for with in [RejectWith::TcpReset, RejectWith::PortUnreachable] {
            assert_eq!(reply(&tcp4(RST, 1, 0, &[]), with), None);
            assert_eq!(reply(&tcp4(RST | ACK, 1, 9, &[]), with), None);
            assert_eq!(reply(&tcp6(RST, 1, 0, &[]), with), None);
        }
    }

    fn icmpv4_of<'a>(s: &'a SlicedPacket<'a>) -> &'a Icmpv4Slice<'a> {
        match &s.transport {
            Some(TransportSlice::Icmpv4(t)) => t,
            other => panic!("not ICMP: {other:?}"),
        }
    }

    fn icmpv6_of<'a>(s: &'a SlicedPacket<'a>) -> &'a Icmpv6Slice<'a> {
        match &s.transport {
            Some(TransportSlice::Icmpv6(t)) => t,
            other => panic!("not ICMPv6: {other:?}"),
        }
    }

    #[test]
    fn udp_gets_port_unreachable_quoting_the_whole_small_datagram() {
        let dgram = udp4(b"query");
        let ans = reply(&dgram, RejectWith::PortUnreachable).unwrap();
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        check_ethernet(&s);
        let ip = check_ipv4(&s, proto::ICMP);
        assert_eq!(ip.dcp().value() << 2, TOS_INTERNETWORK_CONTROL);
        assert!(ip.dont_fragment());
        let icmp = icmpv4_of(&s);
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 3));
        assert_eq!(icmp.bytes5to8(), [0; 4]);
        assert_eq!(icmp.payload(), &dgram[14..], "the IP packet, whole");
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
        assert!(sums_to_ones(&[icmp.slice()]));
        // The parser reads the quoted tuple back, as the receiver's conntrack does.
        let back = parse(&ans).unwrap();
        let inner = back.inner.unwrap();
        assert_eq!((inner.src_port, inner.dst_port), (40000, 53));
        assert!(back.is_icmp_error());
    }

    #[test]
    fn every_kind_answers_with_its_own_code() {
        for with in RejectWith::ALL {
            let ans = reply(&udp4(b"x"), with).unwrap();
            let s = SlicedPacket::from_ethernet(&ans).unwrap();
            let i = icmpv4_of(&s);
            let want = with.icmpv4().unwrap_or((3, 3));
            assert_eq!((i.type_u8(), i.code_u8()), want, "{with:?}");
            let ans = reply(&udp6(b"x"), with).unwrap();
            let s = SlicedPacket::from_ethernet(&ans).unwrap();
            let i = icmpv6_of(&s);
            let want = with.icmpv6().unwrap_or((1, 4));
            assert_eq!((i.type_u8(), i.code_u8()), want, "{with:?}");
            assert!(i.is_checksum_valid(B6, A6));
        }
        assert_eq!(RejectWith::AdminProhibited.icmpv4(), Some((3, 13)));
        assert_eq!(RejectWith::AdminProhibited.icmpv6(), Some((1, 1)));
    }

    #[test]
    fn an_ipv4_quote_is_cut_to_a_576_byte_answer() {
        let dgram = udp4(&[0x5a; 1400]);
        let ans = reply(&dgram, RejectWith::HostProhibited).unwrap();
        assert_eq!(ans.len(), 14 + ICMPV4_ANSWER_MAX);
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        let ip = check_ipv4(&s, proto::ICMP);
        assert_eq!(usize::from(ip.total_len()), ICMPV4_ANSWER_MAX);
        let icmp = icmpv4_of(&s);
        assert_eq!(icmp.payload(), &dgram[14..14 + 548]);
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
    }

    #[test]
    fn an_ipv6_quote_is_cut_to_a_1280_byte_answer() {
        let dgram = udp6(&[0xa5; 1400]);
        let ans = reply(&dgram, RejectWith::AdminProhibited).unwrap();
        assert_eq!(ans.len(), 14 + ICMPV6_ANSWER_MAX);
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        check_ethernet(&s);
        check_ipv6(&s, proto::ICMPV6);
        let icmp = icmpv6_of(&s);
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 1));
        assert_eq!(icmp.payload(), &dgram[14..14 + 1232]);
        assert!(icmp.is_checksum_valid(B6, A6));
        // A small one is quoted whole.
        let small = udp6(b"hi");
        let ans = reply(&small, RejectWith::PortUnreachable).unwrap();
        assert_eq!(ans.len(), 14 + 48 + small.len() - 14);
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        assert_eq!(icmpv6_of(&s).payload(), &small[14..]);
    }

    #[test]
    fn tcp_reset_on_udp_answers_port_unreachable() {
        let ans = reply(&udp4(b"x"), RejectWith::TcpReset).unwrap();
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        let i = icmpv4_of(&s);
        assert_eq!((i.type_u8(), i.code_u8()), (3, 3));
        let ans = reply(&udp6(b"x"), RejectWith::TcpReset).unwrap();
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        assert_eq!((icmpv6_of(&s).type_u8(), icmpv6_of(&s).code_u8()), (1, 4));
    }

    #[test]
    fn tcp_rejected_with_icmp_gets_icmp() {
        let syn = tcp4(SYN, 1, 0, &[]);
        let ans = reply(&syn, RejectWith::AdminProhibited).unwrap();
        let s = SlicedPacket::from_ethernet(&ans).unwrap();
        let i = icmpv4_of(&s);
        assert_eq!((i.type_u8(), i.code_u8()), (3, 13));
        assert_eq!(i.payload(), &syn[14..]);
    }

    #[test]
    fn icmp_errors_are_never_answered_but_echo_requests_are() {
        for ty in [3u8, 4, 5, 11, 12, 19, 255] {
            let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
                .ipv4(A4, B4, 64)
                .icmpv4_raw(ty, 0, [0; 4]);
            let mut f = Vec::new();
            b.write(&mut f, &udp4(b"x")[14..]).unwrap();
            assert_eq!(reply(&f, RejectWith::PortUnreachable), None, "type {ty}");
        }
        for ty in [1u8, 2, 3, 4, 100, 127, 137] {
            let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
                .ipv6(A6, B6, 64)
                .icmpv6_raw(ty, 0, [0; 4]);
            let mut f = Vec::new();
            b.write(&mut f, &udp6(b"x")[14..]).unwrap();
            assert_eq!(reply(&f, RejectWith::PortUnreachable), None, "type {ty}");
        }
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv4(A4, B4, 64)
            .icmpv4_echo_request(7, 1);
        let mut ping = Vec::new();
        b.write(&mut ping, &[0; 8]).unwrap();
        assert!(reply(&ping, RejectWith::HostUnreachable).is_some());
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .ipv6(A6, B6, 64)
            .icmpv6_echo_request(7, 1);
        let mut ping6 = Vec::new();
        b.write(&mut ping6, &[0; 8]).unwrap();
        assert!(reply(&ping6, RejectWith::HostUnreachable).is_some());
    }

    #[test]
    fn fragments_group_addresses_and_non_ip_are_never_answered() {
        // A later fragment: offset 8 bytes.
        let mut later = udp4(&[1; 40]);
        later[14 + 6..14 + 8].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(reply(&later, RejectWith::PortUnreachable), None);
        // A first fragment is answered (Linux answers fragment 0).
        let mut first = udp4(&[1; 40]);
        first[14 + 6..14 + 8].copy_from_slice(&0x2000u16.to_be_bytes());
        assert!(reply(&first, RejectWith::PortUnreachable).is_some());
        let with_src = |src: [u8; 4], dst: [u8; 4]| {
            let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
                .ipv4(src, dst, 64)
                .udp(1, 2);
            let mut f = Vec::new();
            b.write(&mut f, b"x").unwrap();
            reply(&f, RejectWith::PortUnreachable)
        };
        assert!(with_src(A4, B4).is_some());
        for bad in [
            [0, 0, 0, 0],
            [255; 4],
            [224, 0, 0, 1],
            [127, 0, 0, 1],
            [240, 0, 0, 1],
        ] {
            assert_eq!(with_src(bad, B4), None, "source {bad:?}");
            assert_eq!(with_src(A4, bad), None, "destination {bad:?}");
        }
        let with_src6 = |src: [u8; 16], dst: [u8; 16]| {
            let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
                .ipv6(src, dst, 64)
                .udp(1, 2);
            let mut f = Vec::new();
            b.write(&mut f, b"x").unwrap();
            reply(&f, RejectWith::PortUnreachable)
        };
        let mut mcast = [0u8; 16];
        mcast[0] = 0xff;
        mcast[15] = 1;
        let mut lo = [0u8; 16];
        lo[15] = 1;
        for bad in [[0; 16], mcast, lo] {
            assert_eq!(with_src6(bad, B6), None, "source {bad:?}");
            assert_eq!(with_src6(A6, bad), None, "destination {bad:?}");
        }
        // Link-layer broadcast (a subnet broadcast has a unicast-looking address).
        let mut bcast = udp4(b"x");
        bcast[0..6].copy_from_slice(&[0xff; 6]);
        assert_eq!(reply(&bcast, RejectWith::PortUnreachable), None);
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&A_MAC);
        arp.extend_from_slice(&0x0806u16.to_be_bytes());
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&[0; 20]);
        assert_eq!(reply(&arp, RejectWith::PortUnreachable), None);
    }

    #[test]
    fn a_vlan_tag_is_kept() {
        let b = PacketBuilder::ethernet2(A_MAC, B_MAC)
            .single_vlan(5.try_into().unwrap())
            .ipv4(A4, B4, 64)
            .tcp_header(tcp_header(SYN, 1, 0));
        let mut f = Vec::new();
        b.write(&mut f, &[]).unwrap();
        let rst = reply(&f, RejectWith::TcpReset).unwrap();
        assert_eq!(rst.len(), 18 + 40);
        assert_eq!(&rst[12..18], &f[12..18]);
        let p = parse(&rst).unwrap();
        assert_eq!((p.vlan, p.src_port, p.dst_port), (Some(5), 80, 40000));
    }

    #[test]
    fn a_short_buffer_shortens_the_quote_or_refuses() {
        let dgram = udp4(&[7; 500]);
        let p = parse(&dgram).unwrap();
        let mut out = [0u8; 100];
        let n = answer(&dgram, &p, RejectWith::PortUnreachable, &mut out).unwrap();
        assert_eq!(n, 100);
        let s = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let icmp = icmpv4_of(&s);
        assert_eq!(icmp.payload(), &dgram[14..14 + 100 - 42]);
        assert_eq!(
            icmp.icmp_type().calc_checksum(icmp.payload()),
            icmp.checksum()
        );
        let mut tiny = [0u8; 41];
        assert_eq!(
            answer(&dgram, &p, RejectWith::PortUnreachable, &mut tiny),
            None
        );
        let syn = tcp4(SYN, 1, 0, &[]);
        let p = parse(&syn).unwrap();
        assert_eq!(answer(&syn, &p, RejectWith::TcpReset, &mut [0u8; 53]), None);
        // A frame shorter than its record says is refused, not a panic.
        assert_eq!(
            answer(&syn[..40], &p, RejectWith::TcpReset, &mut [0u8; 100]),
            None
        );
    }

    #[test]
    fn kind_tells_resets_from_icmp() {
        let syn = parse(&tcp4(SYN, 1, 0, &[])).unwrap();
        assert_eq!(kind(&syn, RejectWith::TcpReset), Some(AnswerKind::TcpReset));
        assert_eq!(
            kind(&syn, RejectWith::NetUnreachable),
            Some(AnswerKind::Icmp)
        );
        let dgram = parse(&udp4(b"x")).unwrap();
        assert_eq!(kind(&dgram, RejectWith::TcpReset), Some(AnswerKind::Icmp));
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(RateLimit::default());
        let sent = (0..100).filter(|_| b.allow(5)).count();
        assert_eq!(sent, 50, "the burst");
        // 1000/s: one token per millisecond.
        assert!(!b.allow(5 + 999_999));
        assert!(b.allow(5 + 1_000_000));
        assert!(!b.allow(5 + 1_000_000));
        // A long quiet spell refills to the burst, no more.
        let later = 10 * NANOS_PER_SEC;
        assert_eq!((0..100).filter(|_| b.allow(later)).count(), 50);
        // A clock going backwards earns nothing.
        assert!(!b.allow(0));
        assert!(!b.allow(later));
        // Over one second of steady pressure: the burst plus the rate.
        let mut b = TokenBucket::new(RateLimit::default());
        let sent = (0..10_000u64)
            .filter(|i| b.allow(i * NANOS_PER_SEC / 10_000))
            .count();
        assert!((1000..=1050).contains(&sent), "{sent}");
        let mut none = TokenBucket::new(RateLimit {
            per_sec: 1000,
            burst: 0,
        });
        assert!(!none.allow(0) && !none.allow(NANOS_PER_SEC));
    }
}
