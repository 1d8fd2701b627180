//! The control surface of one running dataplane: the control socket and the Prometheus
//! endpoint, started beside a [`BridgeRuntime`] and driven from its owner's loop
//! ([`ControlPlane::tick`]), so `run` and the lab serve the same API the same way.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::owner::{self, OwnerExtras};
use super::server::{ControlServer, ServeError};
use crate::docker::TrackerMetrics;
use crate::metrics::{LatencyHistogram, MetricsInput};
use crate::runtime::BridgeRuntime;

/// How often the numbers behind `/metrics` are gathered (a scrape reads the last ones).
const METRICS_EVERY: Duration = Duration::from_secs(1);

/// Why the control surface could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The control socket.
    #[error(transparent)]
    Socket(#[from] ServeError),
    /// The metrics endpoint.
    #[error("metrics endpoint {addr}: {reason}")]
    Metrics {
        /// The address asked for.
        addr: SocketAddr,
        /// Why it could not be served.
        reason: String,
    },
}

/// The served control socket and metrics endpoint of one dataplane.
#[derive(Debug)]
pub struct ControlPlane {
    server: Option<ControlServer>,
    metrics: Option<MetricsEndpoint>,
    shared: Arc<Mutex<MetricsInput>>,
    gathered: Option<Instant>,
    published: Option<(u64, Vec<u16>)>,
    docker: Option<Arc<TrackerMetrics>>,
}

/// The metrics server's thread and its stop switch.
#[derive(Debug)]
struct MetricsEndpoint {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ControlPlane {
    /// Serves the control API on `socket` and metrics on `metrics`, either optional.
    /// `docker`: the tracker's own measurements, when following an engine.
    pub fn start(
        rt: &BridgeRuntime,
        socket: Option<&Path>,
        metrics: Option<SocketAddr>,
        docker: Option<Arc<TrackerMetrics>>,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let server = socket
            .map(|p| ControlServer::start(p, rt.event_rings()))
            .transpose()?;
        let shared = Arc::new(Mutex::new(MetricsInput::default()));
        let metrics = metrics
            .map(|addr| start_metrics(addr, Arc::clone(&shared)))
            .transpose()?;
        let mut cp = ControlPlane {
            server,
            metrics,
            shared,
            gathered: None,
            published: None,
            docker,
        };
        cp.refresh(rt);
        Ok(cp)
    }

    /// The control socket served, if any.
    pub fn socket(&self) -> Option<&Path> {
        self.server.as_ref().map(ControlServer::path)
    }

    /// Answers queued requests, republishes names after a change and gathers the metrics
    /// when due. Call from the runtime owner's loop, every round.
    pub fn tick(&mut self, rt: &mut BridgeRuntime) {
        let extras = self.extras();
        if let Some(s) = &self.server
            && s.serve_pending(|cmd| owner::answer(rt, cmd, &extras)) > 0
        {
            // A change is seen by the next scrape, not a second later.
            self.gathered = None;
        }
        self.refresh(rt);
    }

    /// Republishes names and gathers metrics when due, without answering requests (for
    /// callers that hold the runtime only shared).
    pub fn refresh(&mut self, rt: &BridgeRuntime) {
        let key = (
            rt.policy().generation,
            rt.port_names().iter().map(|p| p.port).collect::<Vec<_>>(),
        );
        if self.published.as_ref() != Some(&key) {
            if let Some(s) = &self.server {
                s.publish_names(owner::names(rt));
            }
            self.published = Some(key);
        }
        if self.metrics.is_some() && self.gathered.is_none_or(|t| t.elapsed() >= METRICS_EVERY) {
            let input = owner::metrics_input(rt, self.docker_sync_histogram());
            if let Ok(mut m) = self.shared.lock() {
                *m = input;
            }
            self.gathered = Some(Instant::now());
        }
    }

    fn extras(&self) -> OwnerExtras {
        OwnerExtras {
            docker_sync: self.docker.as_ref().and_then(|d| {
                let s = d.start_to_snapshot();
                (s.count > 0).then_some((
                    s.count,
                    s.p50.as_secs_f64() * 1e3,
                    s.max.as_secs_f64() * 1e3,
                ))
            }),
        }
    }

    fn docker_sync_histogram(&self) -> LatencyHistogram {
        match &self.docker {
            Some(d) => d.start_to_snapshot_histogram(crate::metrics::CONTROL_BOUNDS_NS),
            None => LatencyHistogram::default(),
        }
    }
}

fn start_metrics(
    addr: SocketAddr,
    shared: Arc<Mutex<MetricsInput>>,
) -> Result<MetricsEndpoint, ControlPlaneError> {
    let err = |reason: String| ControlPlaneError::Metrics { addr, reason };
    let std_listener = std::net::TcpListener::bind(addr).map_err(|e| err(e.to_string()))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| err(e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(e.to_string()))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("metrics endpoint: {e}");
                        return;
                    }
                };
                let source = move || shared.lock().map(|m| m.clone()).unwrap_or_default();
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = crate::metrics::serve_on(listener, source, shutdown).await {
                    tracing::error!("{e}");
                }
            })
        })
        .map_err(|e| err(e.to_string()))?;
    Ok(MetricsEndpoint {
        stop: Some(stop),
        thread: Some(thread),
    })
}
