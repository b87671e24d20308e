//! What `/healthz` and `/readyz` report. Live while the process serves; ready when the controller's
//! cache has synced, or, with leader election, when this replica is a follower whose lease loop is
//! healthy (a rolling update then proceeds while the leader works).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

/// This replica's part in leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Not decided yet (or no leader election).
    Unknown = 0,
    /// Holds the lease and runs the controller.
    Leader = 1,
    /// Waits for the lease.
    Follower = 2,
    /// Lost the lease or the lease loop failed.
    Failed = 3,
}

/// Shared readiness state.
#[derive(Debug, Default)]
pub struct Health {
    leader_elect: bool,
    synced: AtomicBool,
    role: AtomicU8,
}

impl Health {
    pub fn new(leader_elect: bool) -> Self {
        Health {
            leader_elect,
            ..Health::default()
        }
    }

    /// The controller's cache has its first full list.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Leader,
            2 => Role::Follower,
            3 => Role::Failed,
            _ => Role::Unknown,
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        let synced = self.synced.load(Ordering::Acquire);
        if !self.leader_elect {
            return synced;
        }
        match self.role() {
            Role::Leader => synced,
            Role::Follower => true,
            Role::Unknown | Role::Failed => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_sync_and_role() {
        let single = Health::new(false);
        assert!(!single.ready());
        single.set_synced();
        assert!(single.ready());

        let elected = Health::new(true);
        assert!(!elected.ready(), "undecided");
        elected.set_role(Role::Follower);
        assert!(elected.ready(), "a healthy follower is ready");
        elected.set_role(Role::Leader);
        assert!(!elected.ready(), "a leader is ready once its cache synced");
        elected.set_synced();
        assert!(elected.ready());
        elected.set_role(Role::Failed);
        assert!(!elected.ready());
    }
}
