//! The work behind the CLI's subcommands that run the dataplane (`cli.rs` only parses and
//! dispatches): the lab walkthrough, following Docker, tracing a packet, importing rules,
//! and the clients of a running instance's control socket (`live`, `monitor`).
pub mod bench;
pub mod lab;
pub mod live;
pub mod monitor;
pub mod rules;
pub mod run;
pub mod trace;
