//! The control API's server: HTTP/1.1 with JSON bodies on a unix socket (root-owned, mode
//! 0600; a non-root peer is refused even if the mode were changed), served by `axum` on its
//! own thread.
//!
//! The dataplane's state is owned by the thread that runs it (`bridgewall run`'s loop, the
//! lab), so a request that reads or changes it becomes a [`Command`] queued to that thread;
//! the owner answers between two rounds of its loop ([`ControlServer::serve_pending`]).
//! Event streams (`monitor`, `capture`) are fed here, on the server's thread, from the
//! workers' lock-free event rings, so a slow reader never slows the dataplane: it loses
//! events and is told how many.
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::serve::IncomingStream;
use dataplane::events::EventRing;
use dataplane::phy::tap::TapControl;
use tokio::net::UnixListener;
use tokio::sync::{broadcast, oneshot};

use super::api::{self, ApiError, AuditState, CaptureQuery, MonitorLine, MonitorQuery};
use super::events::{EventPump, Names};

/// The socket `bridgewall run` serves and the commands connect to by default.
pub const DEFAULT_SOCKET: &str = "/run/bridgewall/bridgewall.sock";

/// Why the control socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Another bridgewall answers on the socket.
    #[error(
        "another bridgewall is serving {path} (stop it, or give this one --control-socket PATH)"
    )]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// Creating, binding or securing the socket failed.
    #[error("control socket {path}: {what}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
}

/// A request the dataplane's owner answers.
#[derive(Debug)]
pub enum Command {
    /// The effective chains with their counters.
    Rules,
    /// Change the user's rules.
    Edit(api::RuleEdit),
    /// One packet through the policy in force.
    Trace(api::TraceRequest),
    /// Counters.
    Stats,
    /// The user's modules.
    Policies,
    /// Add a user module.
    PolicyLoad {
        /// Its name.
        name: String,
        /// Audit only.
        audit: bool,
        /// Wasm binary or text.
        bytes: Vec<u8>,
    },
    /// Remove a user module.
    PolicyUnload {
        /// Its name.
        name: String,
    },
    /// Audit mode on or off.
    Audit(bool),
    /// The capture control of a port, by container name (or `gateway`).
    Tap(String),
}

/// The owner's answer to a [`Command`].
pub enum Reply {
    /// For [`Command::Rules`].
    Rules(api::RulesReply),
    /// For [`Command::Edit`].
    Edit(api::RuleEditReply),
    /// For [`Command::Trace`].
    Trace(api::TraceReport),
    /// For [`Command::Stats`].
    Stats(Box<api::StatsReply>),
    /// For [`Command::Policies`].
    Policies(Vec<api::PolicyInfo>),
    /// For [`Command::PolicyLoad`].
    Policy(api::PolicyInfo),
    /// For [`Command::Audit`] and unload.
    Audit(AuditState),
    /// Done, nothing to say.
    Done,
    /// For [`Command::Tap`].
    Tap(Arc<TapControl>),
    /// The request was wrong (4xx) or could not be carried out (5xx); nothing changed.
    Error {
        /// HTTP status.
        status: u16,
        /// One readable line.
        message: String,
    },
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Tap(_) => f.write_str("Tap(..)"),
            Reply::Error { status, message } => write!(f, "Error({status}: {message})"),
            Reply::Done => f.write_str("Done"),
            _ => f.write_str("Reply(..)"),
        }
    }
}

impl Reply {
    /// A 400: the request is wrong, nothing changed.
    pub fn bad_request(message: impl Into<String>) -> Reply {
        Reply::Error {
            status: 400,
            message: message.into(),
        }
    }

    /// A 404: the thing named does not exist.
    pub fn not_found(message: impl Into<String>) -> Reply {
        Reply::Error {
            status: 404,
            message: message.into(),
        }
    }
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Reply>,
}

/// How long a shutdown waits for open connections (a `monitor` stream never ends by
/// itself) before closing them.
const STREAM_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    commands: std_mpsc::Sender<Pending>,
    events: broadcast::Sender<MonitorLine>,
    names: Arc<RwLock<Names>>,
}

/// The control API being served; dropping it stops the server and removes the socket.
pub struct ControlServer {
    path: PathBuf,
    commands: std_mpsc::Receiver<Pending>,
    names: Arc<RwLock<Names>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ControlServer {
    /// Serves the control API on `path` (its directory is made, mode 0700, if missing),
    /// feeding `monitor` from `rings` (one per dataplane worker).
    pub fn start(path: &Path, rings: Vec<Arc<EventRing>>) -> Result<ControlServer, ServeError> {
        let io = |what, source| ServeError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let listener = bind(path)?;
        let (tx, commands) = std_mpsc::channel();
        let (events, _) = broadcast::channel(4096);
        let names = Arc::new(RwLock::new(Names::default()));
        let ctx = Ctx {
            commands: tx,
            events: events.clone(),
            names: Arc::clone(&names),
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| io("starting its runtime", e))?;
        let pump = EventPump::new(rings, events, Arc::clone(&names));
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match UnixListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!("control socket: {e}");
                            return;
                        }
                    };
                    tokio::spawn(pump.run());
                    let app = router(ctx).into_make_service_with_connect_info::<PeerCred>();
                    // Shutdown: requests in flight get to finish, but a stream (`monitor`,
                    // `capture`) never does — after a grace period the runtime goes, and
                    // with it every open connection (the client sees the stream end).
                    let (stopping, stopped) = tokio::sync::watch::channel(false);
                    tokio::spawn(async move {
                        let _ = stop.await;
                        let _ = stopping.send(true);
                    });
                    let mut graceful = stopped.clone();
                    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                        let _ = graceful.wait_for(|s| *s).await;
                    });
                    let mut deadline = stopped;
                    tokio::select! {
                        r = served.into_future() => {
                            if let Err(e) = r {
                                tracing::error!("control socket: {e}");
                            }
                        }
                        _ = async move {
                            let _ = deadline.wait_for(|s| *s).await;
                            tokio::time::sleep(STREAM_GRACE).await;
                        } => tracing::debug!("control socket: open streams closed at shutdown"),
                    }
                })
            })
            .map_err(|e| io("starting its thread", e))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            commands,
            names,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The socket served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers every queued command with `answer` (call from the owner's loop; never
    /// blocks); returns how many there were.
    pub fn serve_pending(&self, mut answer: impl FnMut(Command) -> Reply) -> usize {
        let mut n = 0;
        while let Ok(p) = self.commands.try_recv() {
            // The client may have gone; its answer is then not needed.
            let _ = p.reply.send(answer(p.command));
            n += 1;
        }
        n
    }

    /// Publishes the names events are shown with (call after every policy or port change).
    pub fn publish_names(&self, names: Names) {
        if let Ok(mut n) = self.names.write() {
            *n = n.merged(names);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path`, refusing if another server answers there; a stale socket (nobody
/// listening, a crash) is replaced. The socket is made mode 0600 before anyone can connect
/// meaningfully: its directory is 0700 when made here.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ServeError> {
    let io = |what, source| ServeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|e| io("making its directory", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("securing its directory", e))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServeError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(|e| io("removing a stale socket", e))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("setting mode 0600", e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| io("setting it non-blocking", e))?;
    Ok(listener)
}

/// The uid of the peer of a connection (`SO_PEERCRED`), `None` if the kernel would not say.
#[derive(Clone, Copy, Debug)]
struct PeerCred(Option<u32>);

impl axum::extract::connect_info::Connected<IncomingStream<'_, UnixListener>> for PeerCred {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        PeerCred(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

fn router(ctx: Ctx) -> Router {
    Router::new()
        .route(api::RULES, get(rules).post(edit))
        .route(api::TRACE, post(trace))
        .route(api::STATS, get(stats))
        .route(api::POLICIES, get(policies).post(policy_load))
        .route(
            &format!("{}/{{name}}", api::POLICIES),
            delete(policy_unload),
        )
        .route(api::AUDIT, put(audit))
        .route(api::MONITOR, get(monitor))
        .route(api::CAPTURE, get(capture))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route".into()) })
        .layer(axum::middleware::from_fn(root_only))
        .with_state(ctx)
}

/// Refuses a peer that is not root: the API changes what the host's containers may reach.
async fn root_only(ConnectInfo(peer): ConnectInfo<PeerCred>, req: Request, next: Next) -> Response {
    match peer.0 {
        Some(0) => next.run(req).await,
        Some(uid) => error(
            StatusCode::FORBIDDEN,
            format!("uid {uid} is not root: the control API is for root only"),
        ),
        None => error(
            StatusCode::FORBIDDEN,
            "the peer's credentials are unknown: refused".into(),
        ),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(ApiError { error: message })).into_response()
}

/// Queues `command` to the owner and turns its answer into a response.
async fn ask(ctx: &Ctx, command: Command) -> Result<Reply, Response> {
    let (reply, answer) = oneshot::channel();
    ctx.commands.send(Pending { command, reply }).map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the dataplane is stopping".into(),
        )
    })?;
    match answer.await {
        Ok(Reply::Error { status, message }) => Err(error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            message,
        )),
        Ok(r) => Ok(r),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the dataplane stopped before answering".into(),
        )),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    axum::Json(v).into_response()
}

fn unexpected() -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the dataplane answered another question".into(),
    )
}

async fn rules(State(ctx): State<Ctx>) -> Response {
    match ask(&ctx, Command::Rules).await {
        Ok(Reply::Rules(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn edit(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let edit: api::RuleEdit = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("rule edit: {e}")),
    };
    match ask(&ctx, Command::Edit(edit)).await {
        Ok(Reply::Edit(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn trace(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let req: api::TraceRequest = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("trace request: {e}")),
    };
    match ask(&ctx, Command::Trace(req)).await {
        Ok(Reply::Trace(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn stats(State(ctx): State<Ctx>) -> Response {
    match ask(&ctx, Command::Stats).await {
        Ok(Reply::Stats(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn policies(State(ctx): State<Ctx>) -> Response {
    match ask(&ctx, Command::Policies).await {
        Ok(Reply::Policies(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn policy_load(
    State(ctx): State<Ctx>,
    Query(q): Query<api::PolicyLoadQuery>,
    body: Bytes,
) -> Response {
    let command = Command::PolicyLoad {
        name: q.name,
        audit: q.audit,
        bytes: body.to_vec(),
    };
    match ask(&ctx, command).await {
        Ok(Reply::Policy(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn policy_unload(State(ctx): State<Ctx>, UrlPath(name): UrlPath<String>) -> Response {
    match ask(&ctx, Command::PolicyUnload { name }).await {
        Ok(Reply::Done) => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

async fn audit(State(ctx): State<Ctx>, body: Bytes) -> Response {
    let req: AuditState = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("audit: {e}")),
    };
    match ask(&ctx, Command::Audit(req.audit)).await {
        Ok(Reply::Audit(r)) => json(&r),
        Ok(_) => unexpected(),
        Err(e) => e,
    }
}

/// A newline-delimited JSON stream fed by `rx`; it ends when the sender is dropped.
fn ndjson(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| error(StatusCode::INTERNAL_SERVER_ERROR, "stream".into()))
}

/// One value as a line of a newline-delimited JSON stream.
pub(super) fn ndjson_line<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(v).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

async fn monitor(State(ctx): State<Ctx>, Query(q): Query<MonitorQuery>) -> Response {
    if let Some(c) = &q.container
        && !ctx.names.read().is_ok_and(|n| n.knows(c))
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no container {c:?} on the dataplane (see `bridgewall stats`)"),
        );
    }
    let mut events = ctx.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        loop {
            let out = match events.recv().await {
                Ok(MonitorLine::Verdict(v)) => {
                    if !super::events::wanted(&v, q.drops, q.container.as_deref()) {
                        continue;
                    }
                    MonitorLine::Verdict(v)
                }
                Ok(lost @ MonitorLine::Lost { .. }) => lost,
                Err(broadcast::error::RecvError::Lagged(n)) => MonitorLine::Lost { events: n },
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if tx.send(ndjson_line(&out)).await.is_err() {
                break;
            }
        }
    });
    ndjson(rx)
}

async fn capture(State(ctx): State<Ctx>, Query(q): Query<CaptureQuery>) -> Response {
    if q.count == 0 || q.count > 100_000 || q.snaplen < 64 || q.snaplen > 65_535 {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "count {} and snaplen {} must be within 1..=100000 and 64..=65535",
                q.count, q.snaplen
            ),
        );
    }
    let tap = match ask(&ctx, Command::Tap(q.port.clone())).await {
        Ok(Reply::Tap(t)) => t,
        Ok(_) => return unexpected(),
        Err(e) => return e,
    };
    if let Err(e) = tap.arm(q.count, q.snaplen) {
        let status = match e {
            dataplane::phy::tap::TapError::Busy => StatusCode::CONFLICT,
            dataplane::phy::tap::TapError::Detached => StatusCode::GONE,
            _ => StatusCode::BAD_REQUEST,
        };
        return error(status, format!("capture on {}: {e}", q.port));
    }
    let events = ctx.events.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(super::capture::stream(tap, q, events, tx));
    ndjson(rx)
}

/// How often the event pump drains the workers' rings.
pub(super) const PUMP_PERIOD: Duration = Duration::from_millis(50);
