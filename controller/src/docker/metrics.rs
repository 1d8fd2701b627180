//! What the tracker measures about itself: how long a container's start takes to reach a
//! published snapshot (the 100 ms budget), and how often it reconnects and resyncs.
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Counters and latency histograms of one tracker.
#[derive(Debug)]
pub struct TrackerMetrics {
    /// Engine's start-event timestamp → snapshot published, in µs.
    start_to_snapshot: Mutex<Histogram<u64>>,
    /// Start event received by us → snapshot published, in µs (our own share).
    receipt_to_snapshot: Mutex<Histogram<u64>>,
    /// Events received.
    pub events: AtomicU64,
    /// Full resyncs done (one per successful connection).
    pub resyncs: AtomicU64,
    /// Connection attempts that failed or sessions that ended.
    pub disconnects: AtomicU64,
    /// Snapshots published.
    pub snapshots: AtomicU64,
}

/// A latency distribution in a form for people and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Fastest.
    pub min: Duration,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest.
    pub max: Duration,
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "n={} min={:.1} ms p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
            self.count,
            ms(self.min),
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.max)
        )
    }
}

fn histogram() -> Mutex<Histogram<u64>> {
    // 1 µs .. 1 h, 3 significant digits: the bounds are constants, so this cannot fail.
    Mutex::new(
        Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid")),
    )
}

impl Default for TrackerMetrics {
    fn default() -> Self {
        TrackerMetrics {
            start_to_snapshot: histogram(),
            receipt_to_snapshot: histogram(),
            events: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
        }
    }
}

impl TrackerMetrics {
    pub(crate) fn record_start(&self, from_event: Option<Duration>, from_receipt: Duration) {
        if let Some(d) = from_event {
            record(&self.start_to_snapshot, d);
        }
        record(&self.receipt_to_snapshot, from_receipt);
    }

    /// Engine start-event timestamp → snapshot published.
    pub fn start_to_snapshot(&self) -> LatencySummary {
        summary(&self.start_to_snapshot)
    }

    /// Start event received → snapshot published (excludes the engine's event delivery).
    pub fn receipt_to_snapshot(&self) -> LatencySummary {
        summary(&self.receipt_to_snapshot)
    }

    /// Engine start-event → snapshot published, as histogram buckets for the metrics.
    pub fn start_to_snapshot_histogram(
        &self,
        bounds_ns: &[u64],
    ) -> crate::metrics::LatencyHistogram {
        match self.start_to_snapshot.lock() {
            // The histogram counts microseconds.
            Ok(h) => crate::metrics::LatencyHistogram::from_hdr(&h, 1000, bounds_ns),
            Err(_) => crate::metrics::LatencyHistogram::with_bounds(bounds_ns),
        }
    }

    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn record(h: &Mutex<Histogram<u64>>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    if let Ok(mut h) = h.lock() {
        h.saturating_record(us);
    }
}

fn summary(h: &Mutex<Histogram<u64>>) -> LatencySummary {
    let Ok(h) = h.lock() else {
        return LatencySummary::default();
    };
    if h.is_empty() {
        return LatencySummary::default();
    }
    let us = Duration::from_micros;
    LatencySummary {
        count: h.len(),
        min: us(h.min()),
        p50: us(h.value_at_quantile(0.5)),
        p90: us(h.value_at_quantile(0.9)),
        p99: us(h.value_at_quantile(0.99)),
        max: us(h.max()),
    }
}
