//! The control API of a running bridgewall: a unix-socket HTTP server in `run` (and the
//! lab), typed requests and answers shared with the CLI commands that are its clients, and
//! the dataplane owner's answers to them.
pub mod api;
mod capture;
pub mod client;
pub mod edit;
pub mod events;
pub mod owner;
pub mod server;
pub mod session;

pub use client::{Client, ClientError};
pub use server::{Command, ControlServer, DEFAULT_SOCKET, Reply, ServeError};
