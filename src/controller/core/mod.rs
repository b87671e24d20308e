//! The managed-resource core that every kind of this operator is built on: the mechanisms, not
//! the decisions. Modelled on crossplane-runtime's managed reconciler (observe, then create /
//! update / delete) with the external-create-pending discipline done with status markers.
//!
//! What the core does for every kind:
//! * [`pass::Pass`]: one reconcile pass over one object: the status it started from, the status
//!   it will write, the one write path (markers before non-idempotent calls go through the same
//!   conditioned write), events, and when to come back;
//! * [`verdict`]: the one table from an AEP error to the health, requeue and event it means;
//! * [`events`]: events through kube-runtime's `Recorder` (which folds repeats into a series);
//! * [`backoff`]: per-object exponential backoff (backon) for failing passes;
//! * [`context::Context`]: what every pass shares (clients, credentials cache, timing, metrics);
//! * [`finalizer`]: the finalizer around apply and cleanup.
//!
//! What a kind brings (see `audience/`): its spec and status types (implementing [`Managed`]),
//! a pure decider from gathered facts to one step and the health it implies, and the AEP calls
//! of its steps. The core holds no decision of any kind.

pub mod backoff;
pub mod context;
pub mod error;
pub mod events;
pub mod facts;
pub mod finalizer;
pub mod pass;
#[cfg(test)]
pub mod testing;
pub mod verdict;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};

pub use context::{Base, Context, Timing, bare_trigger, trim};
pub use error::Error;
pub use pass::{Next, Note, Outcome, Pass};

/// A kind of object the core reconciles: a namespaced custom resource with a status that
/// carries kstatus conditions and `observedGeneration`.
pub trait Managed:
    Resource<DynamicType = ()> + Clone + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// The status type.
    type Status: Clone + std::fmt::Debug + Default + PartialEq + Serialize + Send + Sync;

    /// The status, if the object has one.
    fn status(&self) -> Option<&Self::Status>;
    /// The conditions of a status.
    fn conditions(status: &Self::Status) -> &[Condition];
    /// Replaces the conditions of a status.
    fn set_conditions(status: &mut Self::Status, conditions: Vec<Condition>);
    /// Sets `status.observedGeneration`.
    fn set_observed_generation(status: &mut Self::Status, generation: i64);
}

/// Implements [`Managed`] for a kind whose status has `conditions` and `observed_generation`.
#[macro_export]
macro_rules! managed_kind {
    ($kind:ty, $status:ty) => {
        impl $crate::controller::core::Managed for $kind {
            type Status = $status;

            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
            fn conditions(status: &$status) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
                &status.conditions
            }
            fn set_conditions(
                status: &mut $status,
                conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
            ) {
                status.conditions = conditions;
            }
            fn set_observed_generation(status: &mut $status, generation: i64) {
                status.observed_generation = Some(generation);
            }
        }
    };
}
