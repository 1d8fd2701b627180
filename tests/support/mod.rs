//! Helpers shared by the root integration tests.
#![allow(dead_code)]
pub(crate) mod bridgewall;
pub(crate) mod docker;
pub(crate) mod netns;
pub(crate) mod udp_helper;
