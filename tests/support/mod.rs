//! Helpers shared by the root integration tests.
#![allow(dead_code)]
pub mod bridgewall;
pub mod docker;
pub mod netns;
pub mod udp_helper;
