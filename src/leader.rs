//! Leader election on a `coordination.k8s.io` Lease (through `kube-lease-manager`): with
//! `--leader-elect`, only the replica holding the lease runs the controller; the others wait as
//! healthy followers. Losing the lease stops the process (the Pod restarts as a follower), so two
//! controllers never act at once; a graceful shutdown releases the lease for a fast hand-over.
//!
//! A leader that was frozen (SIGSTOP, a paused VM, a long GC-like stall) resumes with its timers
//! due and learns only later that another replica took the lease. The [`Fence`] covers that gap:
//! the leader reads its Lease on a short period and the fence stays open only until the lease,
//! as last read, can have expired (`renewTime + leaseDurationSeconds`, less a margin for clock
//! skew). Every AEP request asks the fence right before it is sent, so a resumed stale leader
//! sends nothing: its deadline has passed, and the next read shows another holder.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::coordination::v1::Lease;
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

/// Until when this replica may act as the leader (see the module doc). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Fence {
    base: Instant,
    /// Milliseconds after `base` until which the fence is open; `u64::MAX` for always.
    until: Arc<AtomicU64>,
}

impl Fence {
    /// Always open (no leader election: this process is the only controller).
    pub fn open() -> Fence {
        Fence {
            base: Instant::now(),
            until: Arc::new(AtomicU64::new(u64::MAX)),
        }
    }

    /// Closed until the lease is confirmed.
    pub fn closed() -> Fence {
        Fence {
            base: Instant::now(),
            until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether this replica may act now.
    pub fn is_open(&self) -> bool {
        (self.base.elapsed().as_millis() as u64) < self.until.load(Ordering::Acquire)
    }

    /// Open until `deadline` (a deadline in the past closes it).
    fn open_until(&self, deadline: Instant) {
        let ms = deadline.saturating_duration_since(self.base).as_millis() as u64;
        self.until.store(ms, Ordering::Release);
    }

    /// What a read of the Lease at `read_at` (wall clock `wall_at`) shows: open until the lease
    /// can have expired, less `margin`, when `identity` holds it; closed otherwise.
    fn confirm(&self, lease: &Lease, identity: &str, read_at: Instant, wall_at: jiff::Timestamp, margin: Duration) {
        let deadline = lease_deadline(lease, identity, wall_at, margin).map_or(read_at, |left| read_at + left);
        self.open_until(deadline);
    }
}

/// How long after `now` the lease is still `identity`'s by its own record, less `margin`; `None`
/// when another identity holds it, or the record is incomplete or expired.
pub fn lease_deadline(lease: &Lease, identity: &str, now: jiff::Timestamp, margin: Duration) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renewed = spec.renew_time.as_ref()?.0;
    let lasts = Duration::from_secs(u64::try_from(spec.lease_duration_seconds?).ok()?);
    let expires = renewed.checked_add(lasts).ok()?;
    let left = Duration::try_from(now.duration_until(expires)).ok()?;
    left.checked_sub(margin)
}

/// How often the leader reads its Lease: a few times per renewal period.
fn check_period(cfg: &LeaderConfig) -> Duration {
    (cfg.duration.saturating_sub(cfg.grace) / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// Margin for clock skew between replicas.
const SKEW: Duration = Duration::from_secs(1);

/// Reads the Lease every [`check_period`] and keeps `fence` open while it is ours.
async fn keep_fence(api: kube::Api<Lease>, cfg: LeaderConfig, fence: Fence) {
    loop {
        let (read_at, wall_at) = (Instant::now(), jiff::Timestamp::now());
        match api.get(&cfg.lease_name).await {
            Ok(lease) => fence.confirm(&lease, &cfg.identity, read_at, wall_at, SKEW),
            // Not extended: the fence closes at the deadline of the last read.
            Err(error) => {
                tracing::warn!(%error, "Could not read the Lease; the leader acts only until it can have expired")
            }
        }
        tokio::time::sleep(check_period(&cfg)).await;
    }
}

/// Errors of leader election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    #[error("leadership lost; stopping so that only one controller acts")]
    Lost,
    #[error("reading the Lease: {0}")]
    Read(#[source] kube::Error),
}

/// Waits for leadership (or a shutdown signal), then runs `work` until it ends; fails when the
/// lease is lost meanwhile.
pub async fn run_as_leader<F, E>(
    client: kube::Client,
    cfg: LeaderConfig,
    health: &Health,
    fence: &Fence,
    shutdown: impl Future<Output = ()>,
    work: impl FnOnce() -> F,
) -> Result<Option<Result<(), E>>, LeaderError>
where
    F: Future<Output = Result<(), E>>,
{
    let leases = kube::Api::<Lease>::namespaced(client.clone(), &cfg.namespace);
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
    // The fence opens with the first read of the Lease that shows it ours, before any work.
    let (read_at, wall_at) = (Instant::now(), jiff::Timestamp::now());
    let lease = leases.get(&cfg.lease_name).await.map_err(LeaderError::Read)?;
    fence.confirm(&lease, &cfg.identity, read_at, wall_at, SKEW);
    let keeper = tokio::spawn(keep_fence(leases, cfg.clone(), fence.clone()));
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
    keeper.abort();
    fence.open_until(Instant::now());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed: &str, seconds: i32) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l"},
            "spec": {"holderIdentity": holder, "renewTime": renewed, "leaseDurationSeconds": seconds}
        }))
        .expect("lease")
    }

    #[test]
    fn the_lease_is_ours_until_it_can_have_expired_less_the_margin() {
        let now: jiff::Timestamp = "2026-12-07T10:00:05Z".parse().expect("time");
        let l = lease("me", "2026-12-07T10:00:00.000000Z", 15);
        assert_eq!(lease_deadline(&l, "me", now, SKEW), Some(Duration::from_secs(9)));
        assert_eq!(lease_deadline(&l, "other", now, SKEW), None, "another holder");
        let late: jiff::Timestamp = "2026-12-07T10:00:14.5Z".parse().expect("time");
        assert_eq!(
            lease_deadline(&l, "me", late, SKEW),
            None,
            "within the margin of expiry"
        );
        let after: jiff::Timestamp = "2026-12-07T10:01:00Z".parse().expect("time");
        assert_eq!(lease_deadline(&l, "me", after, SKEW), None, "expired");
    }

    #[test]
    fn the_fence_closes_at_its_deadline_and_on_another_holder() {
        let fence = Fence::closed();
        assert!(!fence.is_open(), "closed until confirmed");
        let l = lease("me", &jiff::Timestamp::now().to_string(), 15);
        fence.confirm(&l, "me", Instant::now(), jiff::Timestamp::now(), SKEW);
        assert!(fence.is_open());
        // A read made 20 s ago (a frozen process): its deadline is already past.
        let frozen = Instant::now() - Duration::from_secs(20);
        fence.confirm(&l, "me", frozen, jiff::Timestamp::now(), SKEW);
        assert!(!fence.is_open());
        fence.confirm(
            &lease("other", &jiff::Timestamp::now().to_string(), 15),
            "me",
            Instant::now(),
            jiff::Timestamp::now(),
            SKEW,
        );
        assert!(!fence.is_open(), "another holder");
        assert!(Fence::open().is_open());
    }
}
