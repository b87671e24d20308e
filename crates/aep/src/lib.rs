//! The Adobe Experience Platform boundary: a typed, Kubernetes-free client for the external
//! audience API (`/data/core/ais`), the audiences list and the segmentation jobs and schedules
//! (`/data/core/ups`), destination dataflows and their runs (`/data/foundation/flowservice`), ad
//! hoc activation (`/data/core/activation`) and the IMS OAuth server-to-server token exchange.
//!
//! Layout: [`types`] holds the wire formats (shared with the emulator so they cannot drift),
//! [`flows`] those of the activation surface (Flow Service destination dataflows, their runs, ad
//! hoc activation, segmentation jobs and schedules),
//! [`client`] the HTTP calls, [`ims`] the token cache, [`error`] the error classification the
//! controller acts on, [`ratelimit`] the per-org request budget.
//!
//! This module must not know about Kubernetes, must not log secrets or tokens, and must never
//! blindly retry a non-idempotent call (create, start-run, extend-ttl, a flow PATCH, an ad hoc
//! activation).

pub mod client;
pub mod endpoint;
pub mod error;
pub mod flows;
pub mod ims;
pub mod ratelimit;
pub mod types;

pub use client::{AepClient, ClientConfig, ClientMetrics, Credentials, DEFAULT_SCOPES, Session};
pub use endpoint::{EndpointError, EndpointPolicy};
pub use error::{Error, ErrorKind};
pub use flows::*;
pub use ratelimit::Priority;
pub use types::*;

/// Installs the process-wide rustls crypto provider (ring) that every HTTP client of this crate
/// uses. Idempotent: a provider already installed is kept.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
