//! The one-pass frame parser. Every read is preceded by a length check, so any byte string —
//! truncated at any offset, lying in any length field — yields `Ok` or a [`Malformed`]
//! reason; the property tests feed it arbitrary bytes to hold it to that.
use super::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, Fragment, L3,
    MAX_IPV6_EXT_HEADERS, Malformed, Parsed, Tuple,
};
use rules_wasm::abi::proto;

const ETH_HEADER: usize = 14;
const VLAN_TAG: usize = 4;
const IPV4_MIN_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_MIN_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const ICMP_HEADER: usize = 8;
const ARP_IPV4_LEN: usize = 28;

/// IPv6 next-header values with the generic (next header, length in 8-byte units - 1)
/// layout: hop-by-hop, routing, destination options, mobility, HIP, shim6.
const fn is_generic_ext(nh: u8) -> bool {
    matches!(nh, 0 | 43 | 60 | 135 | 139 | 140)
}
const EXT_FRAGMENT: u8 = 44;
const EXT_AH: u8 = 51;

#[inline(always)]
fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

#[inline(always)]
fn v4_mapped(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..16].copy_from_slice(&b[..4]);
    a
}

#[inline(always)]
fn v6_addr(b: &[u8]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    a
}

/// Parses an Ethernet frame into a [`Parsed`] record.
///
/// Accepts Ethernet II with at most one 802.1Q tag; looks into ARP, IPv4 (options,
/// fragments), IPv6 (up to [`MAX_IPV6_EXT_HEADERS`] extension headers), TCP, UDP, ICMP and
/// ICMPv6, and for ICMP errors reads the embedded tuple. Other ethertypes and IP protocols
/// parse as far as their outer headers go.
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, Malformed> {
    let mut p = Parsed::default();
    parse_into(frame, &mut p)?;
    Ok(p)
}

/// [`parse`] into a caller's record, which the hot loop reuses: the record is ~150 bytes,
/// and writing it in place saves copying it out of a `Result` per frame. On error `p` holds
/// whatever was read before the fault.
#[inline]
pub fn parse_into(frame: &[u8], p: &mut Parsed) -> Result<(), Malformed> {
    if frame.len() < ETH_HEADER {
        return Err(Malformed::Truncated);
    }
    *p = Parsed::default();
    p.dst_mac.copy_from_slice(&frame[0..6]);
    p.src_mac.copy_from_slice(&frame[6..12]);
    let mut ethertype = be16(frame, 12);
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN {
        if frame.len() < ETH_HEADER + VLAN_TAG {
            return Err(Malformed::Truncated);
        }
        p.vlan = Some(be16(frame, 14) & 0x0fff);
        ethertype = be16(frame, 16);
        l3 += VLAN_TAG;
        if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
            return Err(Malformed::VlanStack);
        }
    } else if ethertype == ETHERTYPE_QINQ {
        return Err(Malformed::VlanStack);
    }
    p.ethertype = ethertype;
    p.l3_offset = l3 as u16;
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, l3, p),
        ETHERTYPE_IPV6 => parse_ipv6(frame, l3, p),
        ETHERTYPE_ARP => parse_arp(frame, l3, p),
        _ => Ok(()),
    }
}

fn parse_arp(frame: &[u8], l3: usize, p: &mut Parsed) -> Result<(), Malformed> {
    let Some(a) = frame.get(l3..l3 + ARP_IPV4_LEN) else {
        return Err(Malformed::Truncated);
    };
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4.
    if be16(a, 0) != 1 || be16(a, 2) != ETHERTYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return Err(Malformed::BadArp);
    }
    p.l3 = L3::Arp;
    p.arp_op = be16(a, 6);
    p.src = v4_mapped(&a[14..18]);
    p.dst = v4_mapped(&a[24..28]);
    Ok(())
}

#[inline(always)]
fn parse_ipv4(frame: &[u8], l3: usize, p: &mut Parsed) -> Result<(), Malformed> {
    let Some(ip) = frame.get(l3..) else {
        return Err(Malformed::Truncated);
    };
    if ip.len() < IPV4_MIN_HEADER {
        return Err(Malformed::Truncated);
    }
    if ip[0] >> 4 != 4 {
        return Err(Malformed::BadIpVersion);
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < IPV4_MIN_HEADER {
        return Err(Malformed::BadIhl);
    }
    if ihl > ip.len() {
        return Err(Malformed::Truncated);
    }
    let total = usize::from(be16(ip, 2));
    if total < ihl || total > ip.len() {
        return Err(Malformed::BadTotalLength);
    }
    p.l3 = L3::Ipv4;
    p.ip_version = 4;
    p.proto = ip[9];
    p.src = v4_mapped(&ip[12..16]);
    p.dst = v4_mapped(&ip[16..20]);
    let frag = be16(ip, 6);
    let offset = frag & 0x1fff;
    let more = frag & 0x2000 != 0;
    let l4 = l3 + ihl;
    p.l4_offset = l4 as u16;
    p.l4_len = (total - ihl) as u16;
    if offset != 0 || more {
        p.frag_id = u32::from(be16(ip, 4));
        p.frag_offset = u32::from(offset) * 8;
        p.frag_more = more;
    }
    if offset != 0 {
        p.fragment = Fragment::Later;
        return Ok(());
    }
    if more {
        p.fragment = Fragment::First;
    }
    parse_l4(&frame[l4..l3 + total], p)
}

#[inline(always)]
fn parse_ipv6(frame: &[u8], l3: usize, p: &mut Parsed) -> Result<(), Malformed> {
    let Some(ip) = frame.get(l3..) else {
        return Err(Malformed::Truncated);
    };
    if ip.len() < IPV6_HEADER {
        return Err(Malformed::Truncated);
    }
    if ip[0] >> 4 != 6 {
        return Err(Malformed::BadIpVersion);
    }
    let payload = usize::from(be16(ip, 4));
    if IPV6_HEADER + payload > ip.len() {
        return Err(Malformed::BadTotalLength);
    }
    p.l3 = L3::Ipv6;
    p.ip_version = 6;
    p.src = v6_addr(&ip[8..24]);
    p.dst = v6_addr(&ip[24..40]);
    let end = IPV6_HEADER + payload;
    let (nh, l4, fragment) = walk_ipv6_ext(&ip[..end], IPV6_HEADER, ip[6], p)?;
    p.proto = nh;
    p.fragment = fragment;
    p.l4_offset = (l3 + l4) as u16;
    p.l4_len = (end - l4) as u16;
    if fragment == Fragment::Later {
        return Ok(());
    }
    parse_l4(&ip[l4..end], p)
}

/// Walks IPv6 extension headers in `ip` (which ends where the payload ends) from `off`,
/// starting with next-header `nh`. Returns the transport protocol, its offset in `ip`, and
/// the fragment position. Stops at a non-first fragment, whose rest is not a header.
#[inline(always)]
fn walk_ipv6_ext(
    ip: &[u8],
    mut off: usize,
    mut nh: u8,
    p: &mut Parsed,
) -> Result<(u8, usize, Fragment), Malformed> {
    let mut fragment = Fragment::None;
    let mut seen = 0;
    loop {
        let len = if is_generic_ext(nh) {
            let Some(h) = ip.get(off..off + 2) else {
                return Err(Malformed::Truncated);
            };
            (usize::from(h[1]) + 1) * 8
        } else if nh == EXT_FRAGMENT {
            let Some(h) = ip.get(off..off + 8) else {
                return Err(Malformed::Truncated);
            };
            // The first fragment header that fragments says where the packet sits; one after
            // it (nested fragmentation, which no sender needs) belongs to the datagram's data
            // and is walked over, so it cannot contradict the record (a first fragment
            // without "more", another datagram's identification).
            if fragment == Fragment::None {
                let fo = be16(h, 2);
                p.frag_id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                p.frag_offset = u32::from(fo & 0xfff8);
                p.frag_more = fo & 1 != 0;
                if fo & 0xfff8 != 0 {
                    return Ok((h[0], off + 8, Fragment::Later));
                }
                if fo & 1 != 0 {
                    fragment = Fragment::First;
                }
            }
            8
        } else if nh == EXT_AH {
            let Some(h) = ip.get(off..off + 2) else {
                return Err(Malformed::Truncated);
            };
            (usize::from(h[1]) + 2) * 4
        } else {
            return Ok((nh, off, fragment));
        };
        seen += 1;
        if seen > MAX_IPV6_EXT_HEADERS {
            return Err(Malformed::ExtHeaderChainTooLong);
        }
        if off + len > ip.len() {
            return Err(Malformed::Truncated);
        }
        nh = ip[off];
        off += len;
    }
}

/// Parses the transport header in `seg` (exactly the IP payload).
#[inline(always)]
fn parse_l4(seg: &[u8], p: &mut Parsed) -> Result<(), Malformed> {
    match p.proto {
        proto::TCP => {
            if seg.len() < TCP_MIN_HEADER {
                return Err(Malformed::Truncated);
            }
            let doff = usize::from(seg[12] >> 4) * 4;
            if doff < TCP_MIN_HEADER || doff > seg.len() {
                return Err(Malformed::BadTcpHeader);
            }
            p.src_port = be16(seg, 0);
            p.dst_port = be16(seg, 2);
            p.tcp_flags = seg[13];
        }
        proto::UDP => {
            if seg.len() < UDP_HEADER {
                return Err(Malformed::Truncated);
            }
            let len = usize::from(be16(seg, 4));
            // The first fragment of a datagram carries the whole datagram's UDP length, longer
            // than the fragment: only a whole datagram must fit its length.
            let whole = p.fragment == Fragment::None;
            if len < UDP_HEADER || (whole && len > seg.len()) {
                return Err(Malformed::BadUdpLength);
            }
            p.src_port = be16(seg, 0);
            p.dst_port = be16(seg, 2);
        }
        proto::ICMP | proto::ICMPV6 => {
            if seg.len() < ICMP_HEADER {
                return Err(Malformed::Truncated);
            }
            p.icmp_type = seg[0];
            p.icmp_code = seg[1];
            if p.is_icmp_echo() {
                p.icmp_id = be16(seg, 4);
            } else if p.is_icmp_error() {
                p.inner = inner_tuple(&seg[ICMP_HEADER..], p.ip_version);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Reads the tuple of the packet embedded in an ICMP error. Leniently: an unreadable
/// embedded header only means the error cannot be RELATED to a flow, not a malformed frame.
fn inner_tuple(b: &[u8], version: u8) -> Option<Tuple> {
    let mut t = Tuple::default();
    let l4 = if version == 4 {
        if b.len() < IPV4_MIN_HEADER || b[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if ihl < IPV4_MIN_HEADER || ihl > b.len() {
            return None;
        }
        t.proto = b[9];
        t.src = v4_mapped(&b[12..16]);
        t.dst = v4_mapped(&b[16..20]);
        if be16(b, 6) & 0x1fff != 0 {
            return Some(t);
        }
        &b[ihl..]
    } else {
        if b.len() < IPV6_HEADER || b[0] >> 4 != 6 {
            return None;
        }
        t.src = v6_addr(&b[8..24]);
        t.dst = v6_addr(&b[24..40]);
        // The quoted packet is cut short by design; walk what is there.
        let (nh, off, frag) = walk_ipv6_ext(b, IPV6_HEADER, b[6], &mut Parsed::default()).ok()?;
        t.proto = nh;
        if frag == Fragment::Later {
            return Some(t);
        }
        &b[off..]
    };
    match t.proto {
        proto::TCP | proto::UDP => {
            if l4.len() < 4 {
                return None;
            }
            t.src_port = be16(l4, 0);
            t.dst_port = be16(l4, 2);
        }
        proto::ICMP | proto::ICMPV6 => {
            if l4.len() < 8 {
                return None;
            }
            // Only an echo can be the flow an error is about; the id stands in for the ports.
            let echo = if t.proto == proto::ICMP {
                matches!(l4[0], 0 | 8)
            } else {
                matches!(l4[0], 128 | 129)
            };
            if !echo {
                return None;
            }
            let id = be16(l4, 4);
            t.src_port = id;
            t.dst_port = id;
        }
        _ => {}
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    #[test]
    fn short_frame_is_truncated() {
        assert_eq!(parse(&[0u8; 13]), Err(Malformed::Truncated));
    }

    #[test]
    fn double_vlan_is_rejected() {
        let mut f = eth(ETHERTYPE_VLAN);
        f.extend_from_slice(&[0, 5]);
        f.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f.extend_from_slice(&[0; 40]);
        assert_eq!(parse(&f), Err(Malformed::VlanStack));
    }

    #[test]
    fn ipv4_with_small_ihl_is_bad_ihl() {
        let mut f = eth(ETHERTYPE_IPV4);
        let mut ip = [0u8; 20];
        ip[0] = 0x44;
        ip[2..4].copy_from_slice(&20u16.to_be_bytes());
        f.extend_from_slice(&ip);
        assert_eq!(parse(&f), Err(Malformed::BadIhl));
    }

    #[test]
    fn ipv4_total_length_beyond_frame_is_bad_length() {
        let mut f = eth(ETHERTYPE_IPV4);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&60u16.to_be_bytes());
        f.extend_from_slice(&ip);
        assert_eq!(parse(&f), Err(Malformed::BadTotalLength));
    }

    #[test]
    fn ipv6_hop_by_hop_loop_is_bounded() {
        let mut f = eth(ETHERTYPE_IPV6);
        let n = MAX_IPV6_EXT_HEADERS + 1;
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&((n * 8) as u16).to_be_bytes());
        ip[6] = 60; // destination options, each pointing to another one
        f.extend_from_slice(&ip);
        for _ in 0..n {
            f.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(parse(&f), Err(Malformed::ExtHeaderChainTooLong));
    }

    #[test]
    fn ipv4_first_fragment_of_a_large_udp_datagram_keeps_its_ports() {
        // The first 1,480-byte fragment of a 3,000-byte datagram: its UDP length (3,008)
        // exceeds the fragment, which must not make it malformed.
        let mut f = eth(ETHERTYPE_IPV4);
        let mut ip = vec![0u8; 1500];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&1500u16.to_be_bytes());
        ip[6..8].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments, offset 0
        ip[9] = proto::UDP;
        ip[20..28].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35, 0x0b, 0xc0, 0, 0]);
        f.extend_from_slice(&ip);
        let p = parse(&f).unwrap();
        assert_eq!(p.fragment, Fragment::First);
        assert_eq!((p.src_port, p.dst_port), (40000, 53));
        // A whole datagram with the same lie about its length is still malformed.
        let mut whole = f.clone();
        whole[14 + 6..14 + 8].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&whole), Err(Malformed::BadUdpLength));
    }

    #[test]
    fn ipv4_later_fragment_has_no_ports() {
        let mut f = eth(ETHERTYPE_IPV4);
        let mut ip = [0u8; 28];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&28u16.to_be_bytes());
        ip[6..8].copy_from_slice(&0x0001u16.to_be_bytes()); // offset 8 bytes
        ip[9] = proto::TCP;
        ip[20..24].copy_from_slice(&[0x12, 0x34, 0x00, 0x50]);
        f.extend_from_slice(&ip);
        let p = parse(&f).unwrap();
        assert_eq!(p.fragment, Fragment::Later);
        assert_eq!((p.frag_offset, p.frag_more), (8, false));
        assert_eq!((p.src_port, p.dst_port), (0, 0));
        assert!(!p.has_l4_checksum());
    }
}
