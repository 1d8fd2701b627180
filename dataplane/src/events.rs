//! Verdict events: what `bridgewall monitor` shows, one line per policy decision.
//!
//! Why this shape: an operator watching decisions must never slow the packets down, and
//! mostly nobody watches. So each engine owns one [`EventRing`], shared by `Arc` with the
//! control thread: a bounded lock-free queue allocated when the engine is built, which the
//! engine fills only while someone has [subscribed](EventRing::subscribe) — one relaxed load
//! per batch otherwise — and only within a token-bucket rate limit (default
//! [`DEFAULT_EVENT_RATE`]), so a flood of new flows costs a bounded number of events. The
//! producer never allocates, locks, logs or waits: an event that finds the queue full is
//! counted as lost, one over the rate as rate-limited. The consumer (the control thread)
//! [drains](EventRing::drain) the queue and filters for its clients.
//!
//! What is emitted: every record the policy decided (new flows, re-decisions, ICMP errors
//! asked about as RELATED), and the packets dropped as [`DropReason::FlowDenied`] (a cached
//! denial) or [`DropReason::SpoofedSource`]. Other drops are only counted.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam::queue::ArrayQueue;

use crate::counters::{Counter, DropReason};
use crate::phy::PortId;
use crate::policy::{Action, FlowState, PacketRecord};
use crate::reject::{RateLimit, TokenBucket};

/// Events an engine's ring holds before the producer starts counting them as lost: a few
/// seconds at the default rate, so a consumer that drains every 100 ms never loses any.
pub const EVENT_RING_CAPACITY: usize = 4096;

/// Events per second (sustained) and burst each engine emits by default: enough to follow
/// a host's new flows by eye, and a bounded cost under a flood.
pub const DEFAULT_EVENT_RATE: RateLimit = RateLimit {
    per_sec: 1000,
    burst: 200,
};

/// One policy decision (or one packet of a denied or spoofed flow), as `monitor` shows it.
///
/// The packet fields are those of the record the policy judged (for a re-decision, the flow
/// as its originator opened it), so an event reads like the rule that decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerdictEvent {
    /// Wall-clock time (nanoseconds since the Unix epoch), read once per batch: the events of
    /// one batch share it.
    pub at_unix_ns: u64,
    /// The port the policy saw the packet enter by (a container's own port for a frame the
    /// host sent back onto the bridge).
    pub in_port: PortId,
    /// The port it would leave by (`PORT_FLOOD` when flooded).
    pub out_port: PortId,
    /// Source address (IPv4 as an IPv4-mapped IPv6 address).
    pub src: [u8; 16],
    /// Destination address.
    pub dst: [u8; 16],
    /// 4 or 6.
    pub ip_version: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// TCP/UDP source port (0 otherwise).
    pub src_port: u16,
    /// TCP/UDP destination port (0 otherwise).
    pub dst_port: u16,
    /// TCP flags (0 otherwise).
    pub tcp_flags: u8,
    /// ICMP type (0 otherwise).
    pub icmp_type: u8,
    /// The flow state the policy saw.
    pub flow_state: FlowState,
    /// The effective action, after the engine's default for a `Continue`: Accept, Drop or
    /// Reject. In audit mode, what would have been done.
    pub action: Action,
    /// The rule that decided (`RULE_NONE` when the default did).
    pub rule: u32,
    /// The policy generation that decided.
    pub generation: u64,
    /// Why the packet was (or, in audit mode, would have been) dropped; `None` when it was
    /// accepted.
    pub reason: Option<DropReason>,
    /// True when the verdict was not enforced: audit mode forwarded the packet.
    pub audit: bool,
}

/// What was decided about a record, besides the record itself: what a [`VerdictEvent`] is
/// made of.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Outcome {
    /// The effective action (`Continue` reads as Drop).
    pub(crate) action: Action,
    /// The deciding rule.
    pub(crate) rule: u32,
    /// The deciding generation.
    pub(crate) generation: u64,
    /// Why it was (or would have been) dropped.
    pub(crate) reason: Option<DropReason>,
    /// Not enforced (audit mode).
    pub(crate) audit: bool,
}

impl VerdictEvent {
    /// The event of `outcome` for the record `r` (its time is filled in on emission).
    #[inline]
    pub(crate) fn of(r: &PacketRecord, outcome: Outcome) -> Self {
        Self {
            at_unix_ns: 0,
            in_port: r.in_port,
            out_port: r.out_port,
            src: r.src,
            dst: r.dst,
            ip_version: r.ip_version,
            protocol: r.protocol,
            src_port: r.src_port,
            dst_port: r.dst_port,
            tcp_flags: r.tcp_flags,
            icmp_type: r.icmp_type,
            flow_state: r.flow_state,
            action: match outcome.action {
                Action::Continue => Action::Drop,
                a => a,
            },
            rule: outcome.rule,
            generation: outcome.generation,
            reason: outcome.reason,
            audit: outcome.audit,
        }
    }
}

/// Counters of an [`EventRing`], for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events put in the queue.
    pub emitted: u64,
    /// Events not made because the rate limit was spent.
    pub rate_limited: u64,
    /// Events made but lost because the queue was full (the consumer is behind).
    pub lost: u64,
    /// Events waiting in the queue now.
    pub queued: usize,
    /// Subscribers now.
    pub subscribers: usize,
}

/// One engine's verdict events, shared between the engine (the single producer) and the
/// control thread (the consumer). See the [module documentation](self).
pub struct EventRing {
    queue: ArrayQueue<VerdictEvent>,
    subscribers: AtomicUsize,
    /// The rate limit, `per_sec << 32 | burst`, read by the producer once per batch.
    rate: AtomicU64,
    emitted: Counter,
    rate_limited: Counter,
    lost: Counter,
}

fn pack(limit: RateLimit) -> u64 {
    (u64::from(limit.per_sec) << 32) | u64::from(limit.burst)
}

fn unpack(v: u64) -> RateLimit {
    RateLimit {
        per_sec: (v >> 32) as u32,
        burst: v as u32,
    }
}

impl EventRing {
    /// A ring of `capacity` events (at least 1), allocated now, at the default rate.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            subscribers: AtomicUsize::new(0),
            rate: AtomicU64::new(pack(DEFAULT_EVENT_RATE)),
            emitted: Counter::default(),
            rate_limited: Counter::default(),
            lost: Counter::default(),
        }
    }

    /// Starts listening: the engine emits while at least one [`Subscription`] is alive.
    /// The first subscriber finds the queue emptied of events left from an earlier one.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        if self.subscribers.fetch_add(1, Relaxed) == 0 {
            while self.queue.pop().is_some() {}
        }
        Subscription {
            ring: Arc::clone(self),
        }
    }

    /// Subscribers now.
    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Relaxed)
    }

    /// Whether anyone listens (the producer's once-per-batch check).
    #[inline]
    pub fn listening(&self) -> bool {
        self.subscribers.load(Relaxed) != 0
    }

    /// Sets the engine's event rate: `per_sec` sustained, `burst` at once (0 and 0: none).
    /// The engine picks it up at its next batch, with a full bucket.
    pub fn set_rate(&self, per_sec: u32, burst: u32) {
        self.rate.store(pack(RateLimit { per_sec, burst }), Relaxed);
    }

    /// The rate limit in force.
    pub fn rate(&self) -> RateLimit {
        unpack(self.rate.load(Relaxed))
    }

    /// Moves every queued event to `out` (oldest first) and returns how many. Allocates only
    /// if `out` must grow; call on the control thread.
    pub fn drain(&self, out: &mut Vec<VerdictEvent>) -> usize {
        let before = out.len();
        out.extend(std::iter::from_fn(|| self.queue.pop()));
        out.len() - before
    }

    /// Events waiting in the queue.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no event waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events the queue holds at most.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Events put in the queue so far.
    pub fn emitted(&self) -> u64 {
        self.emitted.get()
    }

    /// Events not made because the rate limit was spent.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.get()
    }

    /// Events lost because the queue was full.
    pub fn lost(&self) -> u64 {
        self.lost.get()
    }

    /// Every counter at once.
    pub fn stats(&self) -> EventStats {
        EventStats {
            emitted: self.emitted(),
            rate_limited: self.rate_limited(),
            lost: self.lost(),
            queued: self.len(),
            subscribers: self.subscribers(),
        }
    }
}

impl std::fmt::Debug for EventRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRing")
            .field("capacity", &self.capacity())
            .field("rate", &self.rate())
            .field("stats", &self.stats())
            .finish()
    }
}

/// A listener on an [`EventRing`]: the engine emits while one is alive; dropping it (a
/// `monitor` client going away) unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    ring: Arc<EventRing>,
}

impl Subscription {
    /// The ring listened to.
    pub fn ring(&self) -> &Arc<EventRing> {
        &self.ring
    }

    /// [`EventRing::drain`] of the ring listened to.
    pub fn drain(&self, out: &mut Vec<VerdictEvent>) -> usize {
        self.ring.drain(out)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.ring.subscribers.fetch_sub(1, Relaxed);
    }
}

/// The engine's end of its ring: whether this batch emits, the rate limit's bucket, and the
/// batch's wall-clock time (read at the batch's first event).
pub(crate) struct EventProducer {
    ring: Arc<EventRing>,
    bucket: TokenBucket,
    /// The packed rate the bucket was made for.
    rate: u64,
    /// Someone listened when this batch began.
    on: bool,
    /// This batch's wall-clock time, once read.
    wall: Option<u64>,
}

impl EventProducer {
    /// The producer of a new ring of `capacity` events.
    pub(crate) fn new(capacity: usize) -> Self {
        let ring = Arc::new(EventRing::new(capacity));
        let rate = ring.rate.load(Relaxed);
        Self {
            ring,
            bucket: TokenBucket::new(unpack(rate)),
            rate,
            on: false,
            wall: None,
        }
    }

    /// The shared ring.
    pub(crate) fn ring(&self) -> &Arc<EventRing> {
        &self.ring
    }

    /// Starts a batch: one relaxed load when nobody listens; else picks up a new rate.
    #[inline]
    pub(crate) fn begin(&mut self) {
        self.on = self.ring.listening();
        self.wall = None;
        if self.on {
            let rate = self.ring.rate.load(Relaxed);
            if rate != self.rate {
                self.rate = rate;
                self.bucket = TokenBucket::new(unpack(rate));
            }
        }
    }

    /// Whether this batch emits.
    #[inline(always)]
    pub(crate) fn on(&self) -> bool {
        self.on
    }

    /// Emits the event `make` builds (its `at_unix_ns` is filled in here), if this batch
    /// emits and the rate limit allows it at `now` (the engine's monotonic time); counts
    /// what became of it. `make` runs only for an event that will be queued.
    #[inline]
    pub(crate) fn emit(&mut self, now: u64, make: impl FnOnce() -> VerdictEvent) {
        if !self.on {
            return;
        }
        if !self.bucket.allow(now) {
            self.ring.rate_limited.add(1);
            return;
        }
        let at_unix_ns = *self.wall.get_or_insert_with(wall_clock_ns);
        let event = VerdictEvent {
            at_unix_ns,
            ..make()
        };
        if self.ring.queue.push(event).is_ok() {
            self.ring.emitted.add(1);
        } else {
            self.ring.lost.add(1);
        }
    }
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::RULE_NONE;

    fn event(rule: u32) -> VerdictEvent {
        VerdictEvent {
            at_unix_ns: 0,
            in_port: 1,
            out_port: 2,
            src: [1; 16],
            dst: [2; 16],
            ip_version: 4,
            protocol: 6,
            src_port: 40000,
            dst_port: 80,
            tcp_flags: 2,
            icmp_type: 0,
            flow_state: FlowState::New,
            action: Action::Drop,
            rule,
            generation: 1,
            reason: Some(DropReason::PolicyDrop),
            audit: false,
        }
    }

    #[test]
    fn nothing_is_emitted_without_a_subscriber() {
        let mut p = EventProducer::new(8);
        p.begin();
        assert!(!p.on());
        p.emit(0, || panic!("built an event nobody listens to"));
        assert_eq!(p.ring().stats(), EventStats::default());
    }

    #[test]
    fn a_subscriber_gets_events_stamped_with_the_wall_clock() {
        let mut p = EventProducer::new(8);
        let sub = p.ring().subscribe();
        p.begin();
        p.emit(0, || event(3));
        p.emit(0, || event(RULE_NONE));
        let mut out = Vec::new();
        assert_eq!(sub.drain(&mut out), 2);
        assert_eq!(
            out.iter().map(|e| e.rule).collect::<Vec<_>>(),
            [3, RULE_NONE]
        );
        assert!(out[0].at_unix_ns > 1_600_000_000 * 1_000_000_000);
        assert_eq!(
            out[0].at_unix_ns, out[1].at_unix_ns,
            "one clock read per batch"
        );
        assert_eq!(p.ring().emitted(), 2);
        drop(sub);
        assert_eq!(p.ring().subscribers(), 0);
        p.begin();
        assert!(!p.on(), "the last subscriber left");
    }

    #[test]
    fn the_rate_limit_and_a_full_queue_are_counted() {
        let mut p = EventProducer::new(4);
        let ring = Arc::clone(p.ring());
        ring.set_rate(1000, 6);
        let _sub = ring.subscribe();
        p.begin();
        for _ in 0..10 {
            p.emit(0, || event(1));
        }
        // 6 tokens: 4 queued, 2 lost to the full queue, 4 over the rate.
        let s = ring.stats();
        assert_eq!((s.emitted, s.lost, s.rate_limited, s.queued), (4, 2, 4, 4));
        let mut out = Vec::new();
        ring.drain(&mut out);
        // One token per millisecond at 1000/s.
        p.begin();
        p.emit(1_000_000, || event(1));
        p.emit(1_000_000, || event(1));
        assert_eq!((ring.emitted(), ring.rate_limited()), (5, 5));
    }

    #[test]
    fn a_new_subscriber_does_not_see_stale_events() {
        let mut p = EventProducer::new(8);
        let first = p.ring().subscribe();
        p.begin();
        p.emit(0, || event(1));
        drop(first);
        let second = p.ring().subscribe();
        let mut out = Vec::new();
        assert_eq!(second.drain(&mut out), 0);
    }
}
