//! bridgewall's control plane: the CLI, Docker tracking, the lab, and the glue that keeps
//! the dataplane's policy equal to what Docker and the user say.
#![forbid(unsafe_code)]
pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;
pub mod control;
pub mod docker;
pub mod lab;
pub mod metrics;
pub mod netlink;
pub mod print;
pub mod private_file;
pub mod runtime;
pub mod state;
pub mod takeover;
