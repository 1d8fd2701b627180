//! Errors of the lab: a bad lab file says which file and what; setup failures say which
//! step; everything built before the failure is removed by the lab's drop.
use super::spec::SpecError;
use crate::netlink::NetlinkError;

/// A lab that could not be described, built or probed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab file does not parse or does not make sense.
    #[error("lab file {origin}: {error}")]
    Spec {
        /// Which file (or "the embedded walkthrough").
        origin: String,
        /// What is wrong, naming the item (in the message already, so not a `source`:
        /// error chains would print it twice).
        error: Box<SpecError>,
    },
    /// The lab needs root (namespaces, veths, bridges).
    #[error("the lab creates network namespaces and needs root: run it with sudo")]
    NotRoot,
    /// A namespace or netlink step failed.
    #[error("building the lab: {what}: {source}")]
    Setup {
        /// The step.
        what: String,
        /// The underlying error.
        #[source]
        source: NetlinkError,
    },
    /// A socket or thread could not be set up.
    #[error("building the lab: {what}: {source}")]
    Io {
        /// The step.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A probe named something the lab does not have.
    #[error("the lab has no {role} called {name:?}")]
    Unknown {
        /// What kind of thing was asked for.
        role: &'static str,
        /// The name given.
        name: String,
    },
}

impl LabError {
    pub(crate) fn setup(what: impl Into<String>) -> impl FnOnce(NetlinkError) -> LabError {
        let what = what.into();
        move |source| LabError::Setup { what, source }
    }
}
