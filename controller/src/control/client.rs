//! The control API's client, for the CLI commands: one HTTP/1.1 request per call over the
//! unix socket (`hyper`), JSON in and out, and line-by-line reading of the streams.
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use super::api::ApiError;

/// Why a request to the running bridgewall failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "no bridgewall is running here: nothing at {0} (start `bridgewall run`, or point --socket at its control socket)"
    )]
    NotRunning(PathBuf),
    /// The socket is root's.
    #[error("{0}: permission denied (the control socket is root's: run this as root)")]
    Permission(PathBuf),
    /// Connecting, sending or reading failed.
    #[error("control socket {path}: {what}: {reason}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause, as text.
        reason: String,
    },
    /// The server refused the request; its message says why (nothing changed).
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer was not what this version of bridgewall expects.
    #[error("control socket {path}: unexpected answer: {reason}")]
    Decode {
        /// The socket.
        path: PathBuf,
        /// What did not parse.
        reason: String,
    },
}

/// A client of one control socket.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    rt: tokio::runtime::Runtime,
}

impl Client {
    /// A client for `socket` (nothing is connected until a request).
    pub fn new(socket: &Path) -> Result<Client, ClientError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Io {
                path: socket.to_path_buf(),
                what: "starting a runtime",
                reason: e.to_string(),
            })?;
        Ok(Client {
            socket: socket.to_path_buf(),
            rt,
        })
    }

    /// `GET path`, the answer decoded.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, Bytes::new(), "application/json")?;
        self.decode(&body)
    }

    /// `method path` with a JSON body, the answer decoded.
    pub fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| self.decode_error(e))?;
        let answer = self.call(method, path, Bytes::from(bytes), "application/json")?;
        self.decode(&answer)
    }

    /// `method path` with raw bytes (a module upload); the answer decoded, or `None` when
    /// it is empty (204).
    pub fn send_bytes<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        bytes: Vec<u8>,
    ) -> Result<Option<T>, ClientError> {
        let answer = self.call(method, path, Bytes::from(bytes), "application/wasm")?;
        if answer.is_empty() {
            return Ok(None);
        }
        self.decode(&answer).map(Some)
    }

    /// `GET path` of a stream: `on_line` gets each line until it returns `false` or the
    /// server ends the stream.
    pub fn stream(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        self.rt.block_on(async {
            let resp = self
                .request(Method::GET, path, Bytes::new(), "application/json")
                .await?;
            let status = resp.status();
            let mut body = resp.into_body();
            if !status.is_success() {
                let bytes = body
                    .collect()
                    .await
                    .map_err(|e| self.io("reading the answer", e))?
                    .to_bytes();
                return Err(api_error(status, &bytes));
            }
            let mut pending: Vec<u8> = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = match frame {
                    Ok(f) => f,
                    // The connection closed mid-stream: bridgewall stopped (it closes open
                    // streams at shutdown). The stream is over, not broken.
                    Err(e) if connection_closed(&e) => {
                        tracing::info!("the stream ended: bridgewall closed the connection");
                        return Ok(());
                    }
                    Err(e) => return Err(self.io("reading the stream", e)),
                };
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                pending.extend_from_slice(data);
                while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=end).collect();
                    if !on_line(&line[..line.len() - 1]) {
                        return Ok(());
                    }
                }
            }
            Ok(())
        })
    }

    fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<Bytes, ClientError> {
        self.rt.block_on(async {
            let resp = self.request(method, path, body, content_type).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.io("reading the answer", e))?
                .to_bytes();
            if status.is_success() {
                Ok(bytes)
            } else {
                Err(api_error(status, &bytes))
            }
        })
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning(self.socket.clone())
                }
                std::io::ErrorKind::PermissionDenied => {
                    ClientError::Permission(self.socket.clone())
                }
                _ => self.io("connecting", e),
            })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.io("starting HTTP", e))?;
        tokio::spawn(async move {
            // The connection ends with the request; its error shows in the answer.
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "bridgewall")
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(body))
            .map_err(|e| self.io("building the request", e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.io("sending the request", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, ClientError> {
        serde_json::from_slice(bytes).map_err(|e| self.decode_error(e))
    }

    fn decode_error(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Decode {
            path: self.socket.clone(),
            reason: e.to_string(),
        }
    }

    fn io(&self, what: &'static str, e: impl std::fmt::Display) -> ClientError {
        ClientError::Io {
            path: self.socket.clone(),
            what,
            reason: e.to_string(),
        }
    }
}

/// The server's refusal as an error: its message when it sent one.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let message = serde_json::from_slice::<ApiError>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| {
            format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        });
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

/// The error of a stream whose connection the server closed (it stopped), as opposed to a
/// malformed answer.
fn connection_closed(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
    e.is_incomplete_message()
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .is_some_and(|io| matches!(io.kind(), UnexpectedEof | ConnectionReset | BrokenPipe))
}
