//! Support for the root, namespace-based AF_XDP tests (and the e2e bench, which includes
//! this module by path): namespaces and veths that remove themselves, threads that run in a
//! namespace, a two-port raw forwarder over one shared UMEM, and TCP/UDP checksum completion.
#![allow(dead_code)]

pub(crate) mod csum;
pub(crate) mod forwarder;
pub(crate) mod netns;
