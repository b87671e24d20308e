//! audience-operator: manages Adobe Experience Platform external audiences from Kubernetes.
//!
//! Module map: [`api`] holds the CRD types only; [`aep`] is the Kubernetes-free AEP client;
//! [`emulator`] is the in-process fake of the AEP service used by tests and the demo;
//! [`controller`] reconciles `ExternalAudience` objects; [`status`] holds the pure condition
//! helpers; [`envtest`] runs a local control plane for tests and the demo.
#![forbid(unsafe_code)]

pub mod aep;
pub mod api;
pub mod config;
pub mod controller;
pub mod emulator;
pub mod envtest;
pub mod health;
pub mod leader;
pub mod metrics;
pub mod server;
pub mod status;
pub mod telemetry;
