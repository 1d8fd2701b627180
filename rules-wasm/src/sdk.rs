//! The guest SDK (`no_std`): write a policy as one function over a record.
//!
//! ```text
//! #![no_std]
//! use rules_wasm::abi::{Action, PacketRecord, VerdictRecord};
//!
//! fn decide(r: &PacketRecord) -> VerdictRecord {
//!     if r.protocol == rules_wasm::abi::proto::ICMP {
//!         return VerdictRecord::new(Action::Drop, 1);
//!     }
//!     VerdictRecord::CONTINUE
//! }
//! rules_wasm::bw_policy!(decide);
//! ```
//!
//! [`bw_policy!`](crate::bw_policy) emits the static I/O area and the ABI's exports
//! (`bw_abi_version`, `bw_init`, `bw_evaluate`; Rust's `cdylib` exports `memory` itself) with
//! the batch loop. The I/O area is made of atomics so that the host's writes between calls and
//! the guest's reads need no `unsafe`: on `wasm32` without threads, relaxed atomic loads and
//! stores compile to plain loads and stores.
//!
//! [`log`] wraps the one allowed import, `bw.log`; the linker only emits the import when a
//! module calls it, so modules that do not log have no imports at all.
use core::sync::atomic::{AtomicU64, Ordering};

use crate::abi::{
    IO_AREA_SIZE, MAX_BATCH, PacketRecord, RECORD_SIZE, VERDICTS_OFFSET, VerdictRecord,
};

const WORDS: usize = IO_AREA_SIZE / 8;
const RECORD_WORDS: usize = RECORD_SIZE / 8;

/// The ABI's I/O area: [`MAX_BATCH`] input records followed by [`MAX_BATCH`] verdicts,
/// 8-byte aligned, in a `static` of the guest.
pub struct IoArea {
    words: [AtomicU64; WORDS],
}

impl Default for IoArea {
    fn default() -> Self {
        Self::new()
    }
}

impl IoArea {
    /// A zeroed area (a `const fn`, so it can initialise a `static`).
    pub const fn new() -> Self {
        Self {
            words: [const { AtomicU64::new(0) }; WORDS],
        }
    }

    /// The guest address of the area, which `bw_init` returns to the host.
    pub fn addr(&self) -> usize {
        self.words.as_ptr() as usize
    }

    /// Decodes input record `i` (< [`MAX_BATCH`]).
    pub fn record(&self, i: usize) -> PacketRecord {
        let mut b = [0u8; RECORD_SIZE];
        for (w, chunk) in b.chunks_exact_mut(8).enumerate() {
            chunk.copy_from_slice(
                &self.words[i * RECORD_WORDS + w]
                    .load(Ordering::Relaxed)
                    .to_le_bytes(),
            );
        }
        PacketRecord::decode(&b)
    }

    /// Encodes input record `i`; what the host does, offered for tests on the host.
    pub fn set_record(&self, i: usize, r: &PacketRecord) {
        let mut b = [0u8; RECORD_SIZE];
        r.encode(&mut b);
        for (w, chunk) in b.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.words[i * RECORD_WORDS + w].store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
    }

    /// Writes verdict `i` (one 8-byte word: action, then rule id, little-endian).
    pub fn set_verdict(&self, i: usize, v: VerdictRecord) {
        let word = u64::from(v.action.word(v.reject)) | u64::from(v.rule) << 32;
        self.words[VERDICTS_OFFSET / 8 + i].store(word, Ordering::Relaxed);
    }

    /// Reads verdict `i` back (for tests on the host); `None` for an invalid action code.
    pub fn verdict(&self, i: usize) -> Option<VerdictRecord> {
        VerdictRecord::decode(
            &self.words[VERDICTS_OFFSET / 8 + i]
                .load(Ordering::Relaxed)
                .to_le_bytes(),
        )
    }

    /// The batch loop behind `bw_evaluate(n)`: judges records `0..n` with `decide`. `n` is
    /// clamped to `0..=MAX_BATCH`, so a confused host cannot make the guest index out of range.
    pub fn run(&self, n: i32, mut decide: impl FnMut(&PacketRecord) -> VerdictRecord) {
        let n = usize::try_from(n).unwrap_or(0).min(MAX_BATCH);
        for i in 0..n {
            let v = decide(&self.record(i));
            self.set_verdict(i, v);
        }
    }
}

// The ABI's one import can only be declared in an `extern` block, which is `unsafe` to write.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod import {
    #[link(wasm_import_module = "bw")]
    // SAFETY: `bw.log(ptr, len)` is the ABI's one import; the host bounds-checks the range
    // against the guest's memory and only reads it, so calling it cannot break Rust's rules.
    unsafe extern "C" {
        #[link_name = "log"]
        pub(super) safe fn bw_log(ptr: *const u8, len: usize);
    }
}

/// Sends `msg` to the host's rate-limited log (the `bw.log` import). On targets other than
/// `wasm32` (host-side tests) it does nothing.
pub fn log(msg: &str) {
    #[cfg(target_arch = "wasm32")]
    import::bw_log(msg.as_ptr(), msg.len());
    #[cfg(not(target_arch = "wasm32"))]
    let _ = msg;
}

/// Turns `fn decide(&PacketRecord) -> VerdictRecord` into a complete policy module: the static
/// I/O area and the exports `bw_abi_version`, `bw_init` and `bw_evaluate`. Use it once per
/// crate (a `cdylib` for `wasm32-unknown-unknown`).
#[macro_export]
macro_rules! bw_policy {
    ($decide:path) => {
        static __BW_IO: $crate::sdk::IoArea = $crate::sdk::IoArea::new();

        /// ABI version (see `rules_wasm::abi`).
        // SAFETY: an exported symbol name is the ABI; no other item in the guest defines it.
        #[unsafe(no_mangle)]
        pub extern "C" fn bw_abi_version() -> i32 {
            $crate::abi::ABI_VERSION
        }

        /// Address of the I/O area (see `rules_wasm::abi`).
        // SAFETY: as above.
        #[unsafe(no_mangle)]
        pub extern "C" fn bw_init() -> i32 {
            __BW_IO.addr() as i32
        }

        /// Judges the first `n` records of the I/O area.
        // SAFETY: as above.
        #[unsafe(no_mangle)]
        pub extern "C" fn bw_evaluate(n: i32) {
            __BW_IO.run(n, $decide)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{Action, RULE_NONE, proto};

    #[test]
    fn batch_loop_judges_each_record_and_clamps_n() {
        let io = IoArea::new();
        assert_eq!(io.addr() % 8, 0);
        for i in 0..MAX_BATCH {
            let p = if i % 2 == 0 { proto::TCP } else { proto::UDP };
            io.set_record(
                i,
                &PacketRecord {
                    protocol: p,
                    dst_port: i as u16,
                    ..Default::default()
                },
            );
        }
        let decide = |r: &PacketRecord| {
            if r.protocol == proto::UDP {
                VerdictRecord::new(Action::Drop, u32::from(r.dst_port))
            } else {
                VerdictRecord::CONTINUE
            }
        };
        io.run(1000, decide);
        for i in 0..MAX_BATCH {
            let want = if i % 2 == 1 {
                VerdictRecord::new(Action::Drop, i as u32)
            } else {
                VerdictRecord::new(Action::Continue, RULE_NONE)
            };
            assert_eq!(io.verdict(i), Some(want));
        }
        // A negative n judges nothing.
        io.set_verdict(0, VerdictRecord::new(Action::Reject, 9));
        io.run(-1, decide);
        assert_eq!(io.verdict(0), Some(VerdictRecord::new(Action::Reject, 9)));
    }
}
