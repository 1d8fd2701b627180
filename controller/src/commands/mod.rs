//! The work behind the CLI's subcommands that run the dataplane (`cli.rs` only parses and
//! dispatches): the lab walkthrough, following Docker, tracing a packet.
pub mod lab;
pub mod run;
pub mod trace;
