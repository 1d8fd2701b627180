//! Rate-limited rules (iptables' `-m limit`): a module whose `Accept` means "this record
//! reached the limited rule and matched it", and a token bucket shared by every worker's
//! instance. Within the rate the record gets the rule's own verdict; over it — and for every
//! record the module does not accept — the module says `Continue`, so the rest of the chain
//! decides as if the rule had not matched, which is what iptables does when a `limit` match
//! fails.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rules_wasm::abi::{Action, RejectWith, VerdictRecord};

/// What a limited rule decides within its rate, and the rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens added per second (`--limit 3/min` is 0.05).
    pub per_second: f64,
    /// Bucket size (`--limit-burst`), at most 65,535.
    pub burst: u32,
    /// The rule's verdict within the rate (its action, rule id and reject answer).
    pub verdict: VerdictRecord,
}

/// One fixed-point token (16 fractional bits, so 3/min still refills smoothly).
const ONE: u64 = 1 << 16;

/// A token bucket in one atomic word, so every worker's instance of the rule draws from the
/// same bucket without a lock: the high half is the last refill in milliseconds since
/// `epoch`, the low half the tokens in units of 1/65,536.
#[derive(Debug)]
pub(crate) struct SharedBucket {
    word: AtomicU64,
    epoch: Instant,
    per_ms: f64,
    cap: u64,
}

impl SharedBucket {
    /// A full bucket for `limit`.
    pub(crate) fn new(limit: &RateLimit) -> Arc<Self> {
        let cap = u64::from(limit.burst.clamp(1, u16::MAX.into())) * ONE;
        Arc::new(Self {
            word: AtomicU64::new(cap),
            epoch: Instant::now(),
            per_ms: limit.per_second.max(0.0) * ONE as f64 / 1000.0,
            cap,
        })
    }

    /// Takes one token if there is one, after refilling for the time since the last refill.
    pub(crate) fn take(&self, now: Instant) -> bool {
        let now_ms = now.saturating_duration_since(self.epoch).as_millis() as u64 & 0xffff_ffff;
        let mut cur = self.word.load(Ordering::Relaxed);
        loop {
            let (last, tokens) = (cur >> 32, cur & 0xffff_ffff);
            let elapsed = now_ms.wrapping_sub(last) & 0xffff_ffff;
            let refilled = (tokens + (elapsed as f64 * self.per_ms) as u64).min(self.cap);
            // Keep the refill time unless tokens were added, so slow rates accumulate.
            let stamp = if refilled > tokens { now_ms } else { last };
            let (ok, left) = if refilled >= ONE {
                (true, refilled - ONE)
            } else {
                (false, refilled)
            };
            let next = stamp << 32 | left;
            match self
                .word
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return ok,
                Err(seen) => cur = seen,
            }
        }
    }
}

/// Turns a limited rule's module verdicts into the chain's: `Accept` within the rate becomes
/// the rule's verdict, everything else `Continue`. Returns how many were over the rate.
pub(crate) fn apply(
    limit: &RateLimit,
    bucket: &SharedBucket,
    verdicts: &mut [VerdictRecord],
) -> u64 {
    let mut over = 0;
    let mut now = None;
    for v in verdicts.iter_mut() {
        if v.action != Action::Accept {
            *v = VerdictRecord::CONTINUE;
            continue;
        }
        if bucket.take(*now.get_or_insert_with(Instant::now)) {
            *v = limit.verdict;
        } else {
            *v = VerdictRecord::CONTINUE;
            over += 1;
        }
    }
    over
}

/// The reject answer of a verdict, for building a [`RateLimit`] from a rule's target.
pub fn limited_verdict(action: Action, rule: u32, reject: RejectWith) -> VerdictRecord {
    VerdictRecord {
        reject,
        ..VerdictRecord::new(action, rule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_gives_the_burst_then_the_rate() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 5,
            verdict: VerdictRecord::new(Action::Accept, 3),
        };
        let b = SharedBucket::new(&limit);
        let t0 = b.epoch;
        let taken = (0..20).filter(|_| b.take(t0)).count();
        assert_eq!(taken, 5, "the burst");
        // One second later: 10 more (the bucket holds at most 5 at once).
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..20).filter(|_| b.take(t1)).count(), 5);
        // 3/min: one token every 20 s.
        let slow = SharedBucket::new(&RateLimit {
            per_second: 0.05,
            burst: 1,
            ..limit
        });
        let s0 = slow.epoch;
        assert!(slow.take(s0));
        assert!(!slow.take(s0 + Duration::from_secs(10)));
        assert!(slow.take(s0 + Duration::from_secs(21)));
    }

    #[test]
    fn over_the_rate_continues() {
        let limit = RateLimit {
            per_second: 1.0,
            burst: 2,
            verdict: VerdictRecord::new(Action::Accept, 9),
        };
        let b = SharedBucket::new(&limit);
        let mut v = vec![VerdictRecord::new(Action::Accept, 0); 4];
        v.push(VerdictRecord::new(Action::Drop, 0));
        let over = apply(&limit, &b, &mut v);
        assert_eq!(over, 2);
        assert_eq!(v[0], limit.verdict);
        assert_eq!(v[1], limit.verdict);
        assert_eq!(v[2], VerdictRecord::CONTINUE);
        assert_eq!(
            v[4],
            VerdictRecord::CONTINUE,
            "not reached: the chain goes on"
        );
    }
}
