//! The bodies of bridgewall's fuzz targets, as plain functions of the input bytes.
//!
//! Each module's `run` is one target: `fuzz/fuzz_targets/NAME.rs` hands it libFuzzer's input,
//! and `tests/replay.rs` replays the kept corpus and the regression inputs through it on
//! stable, without libFuzzer. A `run` returns normally for every input the product handles
//! as it should (an error is a fine answer); it panics — and libFuzzer records a finding —
//! when the product panics, or when a property the module states does not hold.
//!
//! - [`wire`]: the frame parser, its accessors and the checksum completion.
//! - [`iptables`]: the iptables-syntax rule parser and `ipset save` reader, and the flat rules
//!   it yields against the chains walked as iptables walks them.
//! - [`wasm_load`]: the Wasm module validation and load path, on raw bytes and on
//!   `wasm-smith` modules shaped like policies.
//! - [`lab`]: the lab's TOML.
//! - [`control`]: the control API's request decoding and the rule-edit logic.
//! - [`differential`]: compiled policy module (run by the dataplane's host) against the
//!   reference interpreter on generated rule sets and packets.
pub mod control;
pub mod differential;
pub mod iptables;
pub mod lab;
pub mod wasm_load;
pub mod wire;

/// A deterministic generator (SplitMix64) seeded from the input, for the few places a target
/// needs more choices than its input spells out (packets to try on parsed rules).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Seeded with a hash (FNV-1a) of `data`, so one input always makes the same choices.
    pub fn from_bytes(data: &[u8]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Self(h)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of a non-empty slice.
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }
}

/// Splits a target's input at its first NUL byte: the part before it, and the part after it
/// when there is a NUL.
pub fn split_nul(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    }
}
