//! At most one object manages an audience: the claims the objects in the cache make on AEP
//! audiences, indexed by audience, and the pure rule that picks the one that manages it.
//!
//! An object claims the audience its status records (written only by the controller, so a
//! *recorded* claim), or, before it has one, the audience its ownership record annotation or
//! `spec.audienceId` names (a *pending* claim: tenant-written, trusted only once recorded). The
//! older claim wins: recorded claims before pending ones, then by when the claim was made
//! (`status.claimedAt`, the record's `claimedAt`, or the object's creation), then by namespace
//! and name, so every replica and every pass decides the same way. A copy of an object (a clone
//! from a backup, a pasted manifest) carries the original's record but not its status, so it is
//! a pending claimant and never wins over the original.
//!
//! The index is a cache of what the objects say, fed by the same watch stream as the
//! controller's store and updated before it: when the store shows an object at some
//! resourceVersion, the index holds every claim recorded before it. It cannot see objects outside
//! the watched namespaces or in another cluster.
//!
//! Nothing here does I/O.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Mutex,
};

use jiff::Timestamp;
use kube::{ResourceExt, runtime::reflector::ObjectRef};

use super::keys::ObjectKey;
use crate::api::{ExternalAudience, OWNERSHIP_RECORD, OwnershipProof, OwnershipRecord};

/// The audience a claim is on: (sandbox, audience id).
pub type AudienceKey = (String, String);

/// One object's claim on an audience.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The audience.
    pub audience: AudienceKey,
    /// The IMS org the object recorded for it (`None` while unknown: then it conflicts with a
    /// claim in any org).
    pub org: Option<String>,
    /// Recorded in status by the controller (not only named in the spec or a record).
    pub recorded: bool,
    /// When the claim was made.
    pub since: Option<Timestamp>,
    /// The object's creation.
    pub created: Option<Timestamp>,
    /// The object (namespace, name).
    pub object: ObjectKey,
}

impl Claim {
    /// Orders claims: the smallest manages the audience.
    fn rank(&self) -> (bool, Timestamp, Timestamp, &str, &str) {
        (
            !self.recorded,
            self.since.unwrap_or(Timestamp::MAX),
            self.created.unwrap_or(Timestamp::MAX),
            &self.object.0,
            &self.object.1,
        )
    }

    /// Whether `self` and `other` are claims on one audience (same sandbox and id, and the same
    /// org as far as both know it).
    fn collides(&self, other: &Claim) -> bool {
        self.audience == other.audience
            && self.object != other.object
            && match (&self.org, &other.org) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }

    /// Whether `self` wins over `other`.
    pub fn beats(&self, other: &Claim) -> bool {
        self.rank() < other.rank()
    }

    /// `namespace/name` of the claiming object.
    pub fn object_name(&self) -> String {
        format!("{}/{}", self.object.0, self.object.1)
    }
}

/// The claim an object makes, from what it says (status, record annotation, spec); `None` for an
/// observing object, one creating its own audience, or one that claims nothing.
pub fn claim_of(obj: &ExternalAudience) -> Option<Claim> {
    if obj.spec.observes() {
        return None;
    }
    let object = (obj.namespace().unwrap_or_default(), obj.name_any());
    let created = obj.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let sandbox = obj.spec.sandbox.clone();
    let st = obj.status.as_ref();
    let org = st.and_then(|s| s.org_id.clone());
    if let Some(st) = st
        && let Some(id) = &st.audience_id
        && st.ownership != Some(OwnershipProof::Observed)
    {
        return Some(Claim {
            audience: (sandbox, id.clone()),
            org,
            recorded: true,
            since: st.claimed_at.as_ref().map(|t| t.0).or(created),
            created,
            object,
        });
    }
    // A create of its own in flight: the audience is new, nobody else can name it yet.
    if st.is_some_and(|s| s.audience_id.is_none() && (s.operation_id.is_some() || s.create_pending_since.is_some())) {
        return None;
    }
    let record = obj
        .annotations()
        .get(OWNERSHIP_RECORD)
        .and_then(|v| OwnershipRecord::parse(v, &obj.spec.sandbox).ok())
        .filter(|r| obj.spec.audience_id.as_ref().is_none_or(|id| *id == r.audience_id));
    if let Some(r) = record {
        return Some(Claim {
            audience: (sandbox, r.audience_id.clone()),
            org: Some(r.org_id.clone()),
            recorded: false,
            since: r.claimed_at.parse().ok(),
            created,
            object,
        });
    }
    let id = obj
        .spec
        .audience_id
        .clone()
        .or_else(|| st.and_then(|s| s.audience_id.clone()))?;
    Some(Claim {
        audience: (sandbox, id),
        org,
        recorded: false,
        since: created,
        created,
        object,
    })
}

/// The claim among `others` that wins over `mine`, if any.
pub fn holder<'a>(mine: &Claim, others: impl IntoIterator<Item = &'a Claim>) -> Option<&'a Claim> {
    others
        .into_iter()
        .filter(|o| o.collides(mine))
        .filter(|o| o.beats(mine))
        .min_by(|a, b| a.rank().cmp(&b.rank()))
}

/// A claim as the index keeps it: the object is the key it is kept under.
struct Kept {
    audience: AudienceKey,
    org: Option<String>,
    recorded: bool,
    since: Option<Timestamp>,
    created: Option<Timestamp>,
}

impl Kept {
    fn new(claim: Claim) -> Kept {
        Kept {
            audience: claim.audience,
            org: claim.org,
            recorded: claim.recorded,
            since: claim.since,
            created: claim.created,
        }
    }

    fn claim(&self, object: &ObjectKey) -> Claim {
        Claim {
            audience: self.audience.clone(),
            org: self.org.clone(),
            recorded: self.recorded,
            since: self.since,
            created: self.created,
            object: object.clone(),
        }
    }
}

/// The bucket of an audience in [`Inner::by_audience`]: a digest, so the index keeps each
/// audience's sandbox and id once (in the claims) rather than twice. Audiences whose digests
/// collide share a bucket; every reader compares the claims' whole audience.
fn bucket(audience: &AudienceKey) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    audience.hash(&mut h);
    h.finish()
}

/// Every object in the cache has an entry here, so each is kept small (thousands of objects).
#[derive(Default)]
struct Inner {
    by_object: HashMap<ObjectKey, Kept>,
    /// The claimants of each audience bucket (almost always one: a list, not a tree node).
    by_audience: HashMap<u64, Vec<ObjectKey>>,
    /// Objects seen since the watch (re)listed, while it lists.
    relisting: Option<BTreeSet<ObjectKey>>,
}

/// The claims of the objects in the cache, by audience.
#[derive(Default)]
pub struct ClaimIndex(Mutex<Inner>);

impl ClaimIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what `obj` claims now. Returns the objects to look at again: the other claimants
    /// of an audience this object stopped claiming (one of them may manage it now).
    pub fn apply(&self, obj: &ExternalAudience) -> Vec<ObjectKey> {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        let claim = claim_of(obj);
        let mut inner = self.lock();
        if let Some(seen) = inner.relisting.as_mut() {
            seen.insert(key.clone());
        }
        inner.set(key, claim)
    }

    /// Forgets a deleted object; returns the other claimants of its audience.
    pub fn delete(&self, obj: &ExternalAudience) -> Vec<ObjectKey> {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        self.lock().set(key, None)
    }

    /// The watch starts listing again: objects not listed before [`ClaimIndex::relisted`] are gone.
    pub fn relisting(&self) {
        self.lock().relisting = Some(BTreeSet::new());
    }

    /// The list is complete: forgets objects it did not contain; returns their audiences' other
    /// claimants.
    pub fn relisted(&self) -> Vec<ObjectKey> {
        let mut inner = self.lock();
        let Some(seen) = inner.relisting.take() else {
            return Vec::new();
        };
        let gone: Vec<ObjectKey> = inner.by_object.keys().filter(|k| !seen.contains(*k)).cloned().collect();
        let mut wake = Vec::new();
        for key in gone {
            wake.extend(inner.set(key, None));
        }
        wake
    }

    /// The claim that wins over `mine` among the other objects' claims, if any.
    pub fn holder(&self, mine: &Claim) -> Option<Claim> {
        let inner = self.lock();
        let others: Vec<Claim> = inner
            .by_audience
            .get(&bucket(&mine.audience))
            .into_iter()
            .flatten()
            .filter(|k| **k != mine.object)
            .filter_map(|k| inner.by_object.get(k).map(|kept| kept.claim(k)))
            .collect();
        holder(mine, &others).cloned()
    }

    /// Number of objects with a claim.
    pub fn len(&self) -> usize {
        self.lock().by_object.len()
    }

    /// Whether no object claims anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    fn set(&mut self, key: ObjectKey, claim: Option<Claim>) -> Vec<ObjectKey> {
        let old = self.by_object.remove(&key);
        let mut wake = Vec::new();
        if let Some(old) = &old
            && claim.as_ref().is_none_or(|c| c.audience != old.audience)
            && let Some(set) = self.by_audience.get_mut(&bucket(&old.audience))
        {
            set.retain(|k| *k != key);
            // The other claimants of that audience (not of another one in its bucket).
            let by_object = &self.by_object;
            wake.extend(
                set.iter()
                    .filter(|k| by_object.get(*k).is_some_and(|c| c.audience == old.audience))
                    .cloned(),
            );
            if set.is_empty() {
                self.by_audience.remove(&bucket(&old.audience));
            }
        }
        if let Some(claim) = claim {
            let claimants = self.by_audience.entry(bucket(&claim.audience)).or_default();
            if !claimants.contains(&key) {
                claimants.push(key.clone());
            }
            self.by_object.insert(key, Kept::new(claim));
        }
        wake
    }
}

/// The object references to wake for `keys`.
pub fn refs(keys: Vec<ObjectKey>) -> Vec<ObjectRef<ExternalAudience>> {
    keys.into_iter()
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    use super::*;
    use crate::api::{ExternalAudienceStatus, ManagementPolicy};

    fn obj(name: &str, created: &str) -> ExternalAudience {
        serde_json::from_value(json!({
            "apiVersion": "aep.audience-operator.dev/v1alpha1",
            "kind": "ExternalAudience",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                         "creationTimestamp": created},
            "spec": {"credentialsSecretRef": {"name": "aep"}, "sandbox": "prod", "audienceId": "aud"}
        }))
        .expect("object")
    }

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn recorded(name: &str, created: &str, claimed: &str) -> ExternalAudience {
        let mut o = obj(name, created);
        o.status = Some(ExternalAudienceStatus {
            audience_id: Some("aud".into()),
            ownership: Some(OwnershipProof::SpecAudienceId),
            claimed_at: Some(Time(t(claimed))),
            org_id: Some("ORG".into()),
            ..Default::default()
        });
        o
    }

    fn record(o: &ExternalAudience, claimed_at: &str) -> String {
        OwnershipRecord {
            v: 1,
            audience_id: "aud".into(),
            custom_audience_id: Some("k8s-uid-a".into()),
            org_id: "ORG".into(),
            platform_url: "https://platform.adobe.io/".into(),
            sandbox: o.spec.sandbox.clone(),
            claimed_by: "uid-a".into(),
            claimed_at: claimed_at.into(),
            applied_spec_hash: None,
            ingested_spec_hash: None,
        }
        .to_annotation()
    }

    #[test]
    fn the_recorded_claim_beats_any_pending_one_even_an_older_looking_record() {
        let owner = claim_of(&recorded("a", "2026-01-02T00:00:00Z", "2026-01-02T00:00:01Z")).expect("claim");
        // A clone from a backup: the original's record, with its (older) claim time, no status.
        let mut clone = obj("b", "2026-01-03T00:00:00Z");
        let rec = record(&clone, "2026-01-01T00:00:00Z");
        clone.annotations_mut().insert(OWNERSHIP_RECORD.into(), rec);
        let clone = claim_of(&clone).expect("claim");
        assert!(!clone.recorded);
        assert!(owner.beats(&clone));
        assert_eq!(holder(&clone, [&owner]), Some(&owner));
        assert_eq!(holder(&owner, [&clone]), None);
    }

    #[test]
    fn among_recorded_claims_the_older_wins_then_creation_then_name() {
        let a = claim_of(&recorded("a", "2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z")).expect("a");
        let b = claim_of(&recorded("b", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z")).expect("b");
        assert!(b.beats(&a), "claimed earlier");
        let c = claim_of(&recorded("c", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z")).expect("c");
        assert!(b.beats(&c) && !c.beats(&b), "a tie is broken by name");
        // A recorded claim of a release without claimedAt counts from the object's creation.
        let mut legacy = recorded("d", "2026-01-03T00:00:00Z", "2026-01-01T00:00:00Z");
        legacy.status.as_mut().expect("status").claimed_at = None;
        let d = claim_of(&legacy).expect("d");
        assert_eq!(d.since, Some(t("2026-01-03T00:00:00Z")));
    }

    #[test]
    fn pending_claims_rank_by_their_time_and_observers_and_creators_claim_nothing() {
        let first = claim_of(&obj("z", "2026-01-01T00:00:00Z")).expect("spec claim");
        let second = claim_of(&obj("a", "2026-01-02T00:00:00Z")).expect("spec claim");
        assert!(first.beats(&second));
        let mut observer = obj("o", "2026-01-01T00:00:00Z");
        observer.spec.management_policy = ManagementPolicy::Observe;
        assert_eq!(claim_of(&observer), None);
        let mut creator = obj("c", "2026-01-01T00:00:00Z");
        creator.spec.audience_id = None;
        assert_eq!(claim_of(&creator), None);
        creator.status = Some(ExternalAudienceStatus {
            operation_id: Some("op".into()),
            ..Default::default()
        });
        assert_eq!(claim_of(&creator), None);
    }

    #[test]
    fn claims_in_different_orgs_or_sandboxes_do_not_collide() {
        let a = claim_of(&recorded("a", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z")).expect("a");
        let mut other_org = recorded("b", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z");
        other_org.status.as_mut().expect("status").org_id = Some("OTHER".into());
        let b = claim_of(&other_org).expect("b");
        assert_eq!(holder(&b, [&a]), None);
        let mut unknown_org = obj("c", "2026-01-03T00:00:00Z");
        unknown_org.status = None;
        let c = claim_of(&unknown_org).expect("c");
        assert_eq!(holder(&c, [&a]), Some(&a), "an unknown org collides");
        let mut other_sandbox = recorded("d", "2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z");
        other_sandbox.spec.sandbox = "dev".into();
        let d = claim_of(&other_sandbox).expect("d");
        assert_eq!(holder(&d, [&a]), None);
    }

    #[test]
    fn the_index_wakes_the_other_claimants_when_an_object_lets_go() {
        let index = ClaimIndex::default();
        let owner = recorded("a", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z");
        let second = obj("b", "2026-01-02T00:00:00Z");
        assert!(index.apply(&owner).is_empty());
        assert!(index.apply(&second).is_empty());
        let mine = claim_of(&second).expect("claim");
        assert_eq!(index.holder(&mine).map(|c| c.object.1), Some("a".to_owned()));
        assert_eq!(index.delete(&owner), vec![("ns".to_owned(), "b".to_owned())]);
        assert_eq!(index.holder(&mine), None);
        // A relist that no longer contains an object forgets it.
        index.apply(&owner);
        index.relisting();
        index.apply(&second);
        assert_eq!(index.relisted(), vec![("ns".to_owned(), "b".to_owned())]);
        assert_eq!(index.len(), 1);
    }
}
