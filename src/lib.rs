//! audience-operator: manages Adobe Experience Platform external audiences from Kubernetes.
//!
//! Module map: [`api`] holds the CRD types only; [`controller`] reconciles `ExternalAudience`
//! objects (plan → one step → status); [`status`] holds the pure condition helpers; [`config`]
//! every setting; [`leader`], [`health`], [`server`], [`metrics`] and [`telemetry`] the process
//! around the controller. The AEP boundary is the separate crate [`aep`] (re-exported here), which
//! knows nothing of Kubernetes; the emulator and the local control plane are the crates
//! `aep-emulator` and `envtest`, used by tests and the demo only.
#![forbid(unsafe_code)]

pub use aep;

pub mod api;
pub mod config;
pub mod controller;
pub mod health;
pub mod import;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod status;
pub mod telemetry;
