//! The work behind the CLI's subcommands that run the dataplane (`cli.rs` only parses and
//! dispatches): the lab walkthrough, following Docker, tracing a packet, importing rules.
pub mod lab;
pub mod rules;
pub mod run;
pub mod trace;
