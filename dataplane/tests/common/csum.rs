//! Completes the TCP/UDP checksum of IPv4 frames, which veths hand over partial (tx-checksum
//! offload). A stand-in for the `wire` module's function until the engine forwards frames.

fn sum(bytes: &[u8], mut acc: u64) -> u64 {
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        acc += u64::from(u16::from_be_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        acc += u64::from(rest[i]) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Recomputes the L4 checksum of an Ethernet/IPv4 TCP or UDP frame in place. UDP frames
/// sent without a checksum (field 0) and IP fragments are left alone. Returns whether it
/// wrote a checksum.
pub(crate) fn complete_l4_checksum(frame: &mut [u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || 14 + total > frame.len() || frag != 0 {
        return false;
    }
    let proto = ip[9];
    let off = match proto {
        6 => 16,
        17 => 6,
        _ => return false,
    };
    let l4_len = total - ihl;
    if l4_len < off + 2 {
        return false;
    }
    let l4_start = 14 + ihl;
    if proto == 17 && frame[l4_start + off..l4_start + off + 2] == [0, 0] {
        return false;
    }
    let mut acc = sum(&frame[14 + 12..14 + 20], 0);
    acc += u64::from(proto) + l4_len as u64;
    frame[l4_start + off] = 0;
    frame[l4_start + off + 1] = 0;
    acc = sum(&frame[l4_start..l4_start + l4_len], acc);
    let mut c = !fold(acc);
    if proto == 17 && c == 0 {
        c = 0xffff;
    }
    frame[l4_start + off..l4_start + off + 2].copy_from_slice(&c.to_be_bytes());
    true
}
