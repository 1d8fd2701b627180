//! Completing TCP/UDP checksums.
//!
//! Why: a container's veth has tx-checksum offload on, so its TCP and UDP frames arrive with
//! only the pseudo-header sum in the checksum field (CHECKSUM_PARTIAL) and the rest left to
//! "hardware". Forwarded as they are, the receiver drops them. A raw frame does not say
//! whether its checksum is partial, so the engine recomputes the whole checksum of every
//! TCP/UDP frame from ports that need it ([`crate::engine::PortConfig::complete_checksums`]).
//!
//! The sum is the RFC 1071 16-bit ones'-complement sum. Because that sum is byte-order
//! independent, it is accumulated over native-endian 64-bit words (32 bytes per loop turn,
//! four accumulators) and folded once at the end; the result's bytes in memory order are the
//! big-endian checksum.
use super::Parsed;
use rules_wasm::abi::proto;

/// Adds `data` to a running ones'-complement sum `acc` and returns the new, unfolded sum.
///
/// The sum is over native-endian 16-bit words, which after [`fold`] and a native-endian store
/// gives the network-order result. `data` starting at an odd offset of a larger buffer must
/// not be summed separately: callers sum contiguous, even-aligned pieces, as the checksum
/// definition does. Incremental use: sum pieces in order, each of even length except the last.
#[inline]
pub fn ones_complement_sum(data: &[u8], acc: u64) -> u64 {
    let mut a = [acc, 0, 0, 0];
    let mut chunks = data.chunks_exact(32);
    for c in &mut chunks {
        // Each 64-bit word is split in two 32-bit halves so no add can overflow the u64
        // accumulators for any frame up to 2^32 words.
        for (i, w) in c.chunks_exact(8).enumerate() {
            let v = u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            a[i] += (v & 0xffff_ffff) + (v >> 32);
        }
    }
    let mut sum = a[0] + a[1] + a[2] + a[3];
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(4);
    for w in &mut words {
        sum += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    let tail = words.remainder();
    let mut pairs = tail.chunks_exact(2);
    for w in &mut pairs {
        sum += u64::from(u16::from_ne_bytes([w[0], w[1]]));
    }
    if let [b] = pairs.remainder() {
        // An odd last byte is the high-order byte of a zero-padded network-order word.
        sum += u64::from(u16::from_ne_bytes([*b, 0]));
    }
    sum
}

/// Folds a running sum to 16 bits (end-around carry); the value is in native word order.
#[inline]
pub fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Recomputes and writes the full TCP or UDP checksum of `frame`, which `parsed` describes.
///
/// Returns `false`, leaving the frame untouched, when there is no checksum to complete: not
/// TCP/UDP, a fragment (the checksum covers the whole datagram), or a frame shorter than
/// `parsed` says (a caller bug; never panics).
///
/// Works whatever the field held before — a partial pseudo-header sum, a correct checksum,
/// or garbage — so it is safe on frames that were not offloaded. A UDP result of 0 is sent as
/// 0xffff (0 means "no checksum" in UDP over IPv4 and is forbidden over IPv6).
#[inline]
pub fn complete_l4_checksum(frame: &mut [u8], parsed: &Parsed) -> bool {
    if !parsed.has_l4_checksum() {
        return false;
    }
    let start = usize::from(parsed.l4_offset);
    let len = usize::from(parsed.l4_len);
    let field = if parsed.proto == proto::TCP { 16 } else { 6 };
    let Some(seg) = frame.get_mut(start..start + len) else {
        return false;
    };
    if seg.len() < field + 2 {
        return false;
    }
    seg[field] = 0;
    seg[field + 1] = 0;
    let mut sum = if parsed.ip_version == 4 {
        ones_complement_sum(&parsed.src[12..16], 0) + ones_complement_sum(&parsed.dst[12..16], 0)
    } else {
        ones_complement_sum(&parsed.src, 0) + ones_complement_sum(&parsed.dst, 0)
    };
    sum += u64::from(u16::from_ne_bytes([0, parsed.proto]));
    // The pseudo-header length is 16 bits for IPv4 and 32 for IPv6; a frame's L4 length
    // always fits 16, so the upper half is zero.
    sum += u64::from(u16::from_ne_bytes((len as u16).to_be_bytes()));
    sum = ones_complement_sum(seg, sum);
    let mut csum = !fold(sum);
    if csum == 0 && parsed.proto == proto::UDP {
        csum = 0xffff;
    }
    seg[field..field + 2].copy_from_slice(&csum.to_ne_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 1071's worked example: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        let s = fold(ones_complement_sum(&data, 0));
        assert_eq!(s.to_ne_bytes(), [0xdd, 0xf2]);
    }

    #[test]
    fn sum_is_independent_of_chunking_and_length() {
        let data: Vec<u8> = (0..1500u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 3, 31, 32, 33, 63, 64, 65, 1499, 1500] {
            let d = &data[..len];
            let mut naive: u64 = 0;
            for w in d.chunks(2) {
                let hi = u64::from(w[0]) << 8;
                let lo = w.get(1).map_or(0, |&b| u64::from(b));
                naive += hi | lo;
            }
            let naive = fold(naive);
            let fast = fold(ones_complement_sum(d, 0));
            assert_eq!(u16::from_be_bytes(fast.to_ne_bytes()), naive, "len {len}");
        }
    }
}
