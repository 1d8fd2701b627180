//! Where the engine is and how to talk to it: address parsing (`--docker-host`,
//! `DOCKER_HOST`, Docker's default socket) and version negotiation, since engines that speak
//! only API 1.41 (Debian's docker.io 20.10) reject newer clients with HTTP 400.
use std::fmt;
use std::path::PathBuf;

use bollard::{API_DEFAULT_VERSION, Docker};

use super::DockerError;

/// Docker's default socket.
pub(super) const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Seconds a request may take to get its response headers (the event stream's body is not
/// bounded by it).
const REQUEST_TIMEOUT_S: u64 = 30;

/// An engine address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineAddress {
    /// A unix socket path.
    Unix(PathBuf),
    /// `tcp://host:port` or `http://host:port` (plain HTTP).
    Tcp(String),
}

impl EngineAddress {
    /// Parses `unix:///path`, `/path` or `tcp://host:port` / `http://host:port`.
    pub fn parse(s: &str) -> Result<EngineAddress, DockerError> {
        if let Some(path) = s.strip_prefix("unix://") {
            if path.starts_with('/') {
                return Ok(EngineAddress::Unix(PathBuf::from(path)));
            }
        } else if s.starts_with('/') {
            return Ok(EngineAddress::Unix(PathBuf::from(s)));
        }
        let rest = s
            .strip_prefix("tcp://")
            .or_else(|| s.strip_prefix("http://"));
        if let Some(rest) = rest.filter(|r| !r.is_empty()) {
            return Ok(EngineAddress::Tcp(format!("tcp://{rest}")));
        }
        Err(DockerError::BadAddress(s.to_string()))
    }

    /// The address given on the command line, else `DOCKER_HOST`, else Docker's default socket.
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<EngineAddress, DockerError> {
        match flag
            .map(str::to_string)
            .or_else(|| std::env::var("DOCKER_HOST").ok())
        {
            Some(s) if !s.is_empty() => EngineAddress::parse(&s),
            _ => Ok(EngineAddress::Unix(PathBuf::from(DEFAULT_SOCKET))),
        }
    }
}

impl fmt::Display for EngineAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineAddress::Unix(p) => write!(f, "unix://{}", p.display()),
            EngineAddress::Tcp(a) => f.write_str(a),
        }
    }
}

/// A connected engine with the API version both sides agreed on.
#[derive(Clone, Debug)]
pub struct Engine {
    /// The client, set to the negotiated version.
    pub docker: Docker,
    /// Where it was reached.
    pub address: EngineAddress,
    /// The negotiated API version (`1.41`).
    pub api_version: String,
    /// The engine's own version (`20.10.24`).
    pub engine_version: String,
}

/// Connects, negotiates the API version and reads the engine's version.
pub async fn connect(address: &EngineAddress) -> Result<Engine, DockerError> {
    let shown = address.to_string();
    let docker = match address {
        EngineAddress::Unix(path) => {
            let p = path.to_string_lossy();
            Docker::connect_with_unix(&p, REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
        }
        EngineAddress::Tcp(a) => {
            Docker::connect_with_http(a, REQUEST_TIMEOUT_S, API_DEFAULT_VERSION)
        }
    }
    .map_err(|e| classify(&shown, e))?;
    let docker = docker
        .negotiate_version()
        .await
        .map_err(|e| classify(&shown, e))?;
    let version = docker.version().await.map_err(|e| classify(&shown, e))?;
    Ok(Engine {
        api_version: docker.client_version().to_string(),
        engine_version: version.version.unwrap_or_else(|| "unknown".into()),
        docker,
        address: address.clone(),
    })
}

/// Sorts a client error into what the person can act on.
fn classify(address: &str, e: bollard::errors::Error) -> DockerError {
    use bollard::errors::Error as E;
    let address = address.to_string();
    match e {
        E::SocketNotFoundError(path) => DockerError::Unreachable {
            address,
            reason: format!("no socket at {path} (is dockerd running? is --docker-host right?)"),
        },
        E::APIVersionParseError {} => DockerError::ApiVersion {
            address,
            reason: "the engine's /version answer has no usable ApiVersion".into(),
        },
        E::DockerResponseServerError {
            status_code: 400,
            message,
        } if message.contains("version") => DockerError::ApiVersion {
            address,
            reason: message,
        },
        other => {
            let text = format!("{other}");
            let mut chain = text.clone();
            let mut src = std::error::Error::source(&other);
            while let Some(s) = src {
                chain.push_str(&format!(": {s}"));
                src = s.source();
            }
            if chain.contains("Permission denied") || chain.contains("permission denied") {
                DockerError::PermissionDenied { address }
            } else {
                DockerError::Unreachable {
                    address,
                    reason: chain,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            EngineAddress::parse("unix:///run/x.sock").unwrap(),
            EngineAddress::Unix("/run/x.sock".into())
        );
        assert_eq!(
            EngineAddress::parse("/run/x.sock").unwrap(),
            EngineAddress::Unix("/run/x.sock".into())
        );
        assert_eq!(
            EngineAddress::parse("tcp://127.0.0.1:2375")
                .unwrap()
                .to_string(),
            "tcp://127.0.0.1:2375"
        );
        assert!(EngineAddress::parse("ssh://host").is_err());
        assert!(EngineAddress::parse("unix://relative").is_err());
        assert_eq!(
            EngineAddress::from_flag_or_env(Some("/a.sock"))
                .unwrap()
                .to_string(),
            "unix:///a.sock"
        );
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_address() {
        let addr = EngineAddress::parse("unix:///nonexistent/bw-test.sock").unwrap();
        let err = connect(&addr).await.unwrap_err().to_string();
        assert!(err.contains("unix:///nonexistent/bw-test.sock"), "{err}");
        assert!(err.contains("no socket"), "{err}");
    }
}
