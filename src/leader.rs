//! Leader election on a `coordination.k8s.io` Lease (through `kube-lease-manager`): with
//! `--leader-elect`, only the replica holding the lease runs the controller; the others wait as
//! healthy followers. Losing the lease stops the process (the Pod restarts as a follower), so two
//! controllers never act at once; a graceful shutdown releases the lease for a fast hand-over.

use std::{future::Future, time::Duration};

use kube_lease_manager::{LeaseCreateMode, LeaseManagerBuilder};

use crate::health::{Health, Role};

/// Where and how the lease is held.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Lease name.
    pub lease_name: String,
    /// Namespace of the lease (the operator's own).
    pub namespace: String,
    /// This replica's identity (the Pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// Extra time before a lease that was not renewed is taken over.
    pub grace: Duration,
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("leadership lost; stopping so that only one controller acts")]
    Lost,
}

/// Waits for leadership (or a shutdown signal), then runs `work` until it ends; fails when the
/// lease is lost meanwhile.
pub async fn run_as_leader<F, E>(
    client: kube::Client,
    cfg: LeaderConfig,
    health: &Health,
    shutdown: impl Future<Output = ()>,
    work: impl FnOnce() -> F,
) -> Result<Option<Result<(), E>>, LeaderError>
where
    F: Future<Output = Result<(), E>>,
{
    let manager = LeaseManagerBuilder::new(client, &cfg.lease_name)
        .with_namespace(&cfg.namespace)
        .with_identity(&cfg.identity)
        .with_duration(cfg.duration.as_secs().max(1))
        .with_grace(cfg.grace.as_secs().max(1))
        .with_create_mode(LeaseCreateMode::AutoCreate)
        .with_field_manager(crate::api::MANAGER)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    health.set_role(Role::Follower);
    tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "Waiting for leadership");
    tokio::pin!(shutdown);
    loop {
        if *leading.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leading.changed() => if changed.is_err() {
                health.set_role(Role::Failed);
                return Err(LeaderError::Lost);
            },
            () = &mut shutdown => {
                drop(leading);
                let _ = task.await;
                return Ok(None);
            }
        }
    }
    health.set_role(Role::Leader);
    tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "Acquired leadership");
    let lost = async {
        loop {
            if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                return;
            }
        }
    };
    let result = tokio::select! {
        r = work() => Ok(Some(r)),
        () = lost => Err(LeaderError::Lost),
    };
    if result.is_err() {
        health.set_role(Role::Failed);
        tracing::error!(lease = %cfg.lease_name, "Leadership lost");
        return result;
    }
    // Closing the channel releases the lease: the next replica takes over at once.
    drop(leading);
    if let Ok(Err(error)) = task.await {
        tracing::warn!(%error, "Could not release the lease");
    }
    result
}
