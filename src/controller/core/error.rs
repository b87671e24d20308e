//! The error of a reconcile pass: transient failures that requeue with backoff, and waits.

use std::time::Duration;

use super::super::credentials::CredentialsError;

/// Errors of a reconcile pass (transient: they requeue with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no namespace")]
    MissingNamespace,
    #[error("the object changed while it was reconciled")]
    Stale,
    #[error("object has no resourceVersion")]
    MissingResourceVersion,
    #[error("kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    #[error("{0}")]
    Credentials(#[source] Box<CredentialsError>),
    #[error("AEP: {0}")]
    Aep(#[source] Box<crate::aep::Error>),
    /// The pass is not failing: it waits (e.g. a deletion for AEP, or for its Secret) and comes
    /// back after the delay, keeping the finalizer.
    #[error("waiting: {0}")]
    Waiting(&'static str, Duration),
    #[error("object has no uid")]
    MissingUid,
    #[error("configuration: {0}")]
    Config(String),
    #[error("serialising status: {0}")]
    Serde(#[source] serde_json::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// The error inside the finalizer helper's wrapping, if any.
    fn inner(&self) -> &Error {
        match self {
            Error::Finalizer(e) => match e.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(inner)
                | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner.inner(),
                _ => self,
            },
            other => other,
        }
    }

    /// Bounded label for metrics.
    pub fn category(&self) -> &'static str {
        match self.inner() {
            Error::MissingNamespace | Error::MissingResourceVersion | Error::MissingUid => "object",
            Error::Config(_) => "config",
            Error::Stale => "stale",
            Error::Kube(_) => "kube",
            Error::Credentials(_) => "credentials",
            Error::Aep(e) => e.category(),
            Error::Waiting(..) => "waiting",
            Error::Serde(_) => "serde",
            Error::Finalizer(_) => "finalizer",
        }
    }

    /// The delay of an [`Error::Waiting`]: the pass is not failing, it waits.
    pub fn waiting(&self) -> Option<Duration> {
        match self.inner() {
            Error::Waiting(_, d) => Some(*d),
            _ => None,
        }
    }

    /// The server's `Retry-After`, when an AEP error carried one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self.inner() {
            Error::Aep(e) => e.kind().retry_after(),
            _ => None,
        }
    }
}
