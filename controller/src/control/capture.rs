//! `capture`'s stream: the frames a port's [`TapControl`] copies, interleaved with the
//! policy verdicts of flows through that port (the monitor's events), until the count is
//! reached, the time is up or the reader goes away — then the tap is disarmed.
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::phy::tap::{CapturedFrame, TapControl};
use tokio::sync::{broadcast, mpsc};

use super::api::{CaptureLine, CaptureQuery, MonitorLine};
use super::server::ndjson_line;

/// How often captured frames are collected.
const POLL: Duration = Duration::from_millis(20);

/// Disarms the tap however the stream ends.
struct Disarm(Arc<TapControl>);

impl Drop for Disarm {
    fn drop(&mut self) {
        self.0.disarm();
    }
}

/// Sends what the tap holds as frame lines; `false` when the reader is gone.
async fn send_frames(
    tap: &TapControl,
    frames: &mut Vec<CapturedFrame>,
    sent: &mut u64,
    tx: &mpsc::Sender<Vec<u8>>,
) -> bool {
    frames.clear();
    tap.drain(frames);
    for f in frames.drain(..) {
        *sent += 1;
        let line = CaptureLine::Frame {
            direction: f.direction.as_str().to_string(),
            at_unix_ns: f.at_unix_ns,
            orig_len: f.orig_len,
            data: f.data,
        };
        if tx.send(ndjson_line(&line)).await.is_err() {
            return false;
        }
    }
    true
}

/// Streams the capture to `tx` (see the module doc).
pub(super) async fn stream(
    tap: Arc<TapControl>,
    q: CaptureQuery,
    mut events: broadcast::Receiver<MonitorLine>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let _disarm = Disarm(Arc::clone(&tap));
    let deadline = Instant::now() + Duration::from_millis(q.timeout_ms);
    let mut frames: Vec<CapturedFrame> = Vec::new();
    let mut sent = 0u64;
    loop {
        tokio::time::sleep(POLL).await;
        while let Ok(line) = events.try_recv() {
            if let MonitorLine::Verdict(v) = line
                && (v.from == q.port || v.to == q.port)
                && tx
                    .send(ndjson_line(&CaptureLine::Verdict(v)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        let complete = !tap.is_armed();
        if !send_frames(&tap, &mut frames, &mut sent, &tx).await {
            return;
        }
        if complete || sent >= q.count as u64 || Instant::now() >= deadline || tx.is_closed() {
            break;
        }
    }
    tap.disarm();
    // Frames captured between the last drain and the disarm.
    if !send_frames(&tap, &mut frames, &mut sent, &tx).await {
        return;
    }
    let done = CaptureLine::Done {
        captured: sent,
        missed: tap.missed(),
    };
    let _ = tx.send(ndjson_line(&done)).await;
}
