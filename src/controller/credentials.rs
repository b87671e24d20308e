//! The IMS credential Secrets named by `spec.credentialsSecretRef`: reading, validating, a short-
//! lived cache, and the Secret's in-use finalizer.
//!
//! * Reading: `get` by name (the operator holds no list/watch on Secrets by default), validated
//!   into [`Credentials`]; errors name the Secret, the key and the rule, never a value. The
//!   endpoints a Secret may choose (`imsUrl`, `platformUrl`) must be on the administrator's
//!   allow-list ([`crate::aep::EndpointPolicy`]): a tenant cannot point the operator elsewhere.
//! * Cache: parsed credentials live at most `ttl` (and until the Secret's resourceVersion changes,
//!   the Secret disappears, or AEP/IMS refuses them); then they are dropped together with the
//!   tokens minted for them. With a namespace-scoped Secret watch the cache is invalidated at once.
//! * In use: a Secret that ExternalAudiences use carries the finalizer [`SECRET_FINALIZER`], so
//!   deleting it (or its namespace) keeps it readable until the objects using it have cleaned up
//!   in AEP; the last one to go removes the finalizer.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use secrecy::SecretString;
use serde_json::json;
use url::Url;

use crate::{
    aep::{AepClient, Credentials, DEFAULT_SCOPES, EndpointPolicy},
    api::{ExternalAudience, FINALIZER},
};

/// Finalizer on a credentials Secret while ExternalAudiences use it.
pub const SECRET_FINALIZER: &str = "aep.audience-operator.dev/credentials-in-use";

/// Why the credentials could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("Secret {namespace}/{name} (spec.credentialsSecretRef.name) not found")]
    Missing { namespace: String, name: String },
    #[error("Secret {namespace}/{name} is invalid: {problem}")]
    Invalid {
        namespace: String,
        name: String,
        problem: String,
    },
    #[error("reading Secret {namespace}/{name}: {source}")]
    Kube {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Pure part of loading: keys `clientId`, `clientSecret`, `orgId` (required), `scopes`, `imsUrl`,
/// `platformUrl` (optional; each must pass `policy`).
pub fn from_secret_data(data: &BTreeMap<String, ByteString>, policy: &EndpointPolicy) -> Result<Credentials, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match data.get(key) {
            None => Ok(None),
            Some(v) => {
                let s = std::str::from_utf8(&v.0).map_err(|_| format!("key {key} is not UTF-8"))?;
                let s = s.trim();
                if s.len() > 4096 {
                    return Err(format!("key {key} is longer than 4096 bytes"));
                }
                Ok((!s.is_empty()).then(|| s.to_owned()))
            }
        }
    };
    let mut missing = Vec::new();
    let client_id = text("clientId")?;
    let client_secret = text("clientSecret")?;
    let org_id = text("orgId")?;
    for (key, v) in [
        ("clientId", &client_id),
        ("clientSecret", &client_secret),
        ("orgId", &org_id),
    ] {
        if v.is_none() {
            missing.push(key);
        }
    }
    if !missing.is_empty() {
        return Err(format!("missing or empty keys: {}", missing.join(", ")));
    }
    let url = |key: &str| -> Result<Option<Url>, String> {
        let Some(s) = text(key)? else {
            return Ok(None);
        };
        let url = Url::parse(&s).map_err(|_| format!("key {key} is not a valid URL"))?;
        policy.check(&url).map_err(|e| format!("key {key}: {e}"))?;
        Ok(Some(url))
    };
    Ok(Credentials {
        client_id: client_id.unwrap_or_default(),
        client_secret: SecretString::from(client_secret.unwrap_or_default()),
        org_id: org_id.unwrap_or_default(),
        scopes: text("scopes")?.unwrap_or_else(|| DEFAULT_SCOPES.to_owned()),
        ims_url: url("imsUrl")?,
        platform_url: url("platformUrl")?,
    })
}

struct Entry {
    resource_version: Option<String>,
    credentials: Credentials,
    read_at: Instant,
}

type Key = (String, String);

/// Short-lived cache of parsed credentials, per Secret.
pub struct CredentialStore {
    ttl: Duration,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl CredentialStore {
    pub fn new(ttl: Duration) -> Self {
        CredentialStore {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Credentials for `namespace/name`: from the cache while fresh, else read from the Secret
    /// (which then gets the in-use finalizer if it lacks it).
    pub async fn load(
        &self,
        client: &kube::Client,
        aep: &AepClient,
        namespace: &str,
        name: &str,
    ) -> Result<Credentials, CredentialsError> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some(e) = self.lock().get(&key)
            && e.read_at.elapsed() < self.ttl
        {
            return Ok(e.credentials.clone());
        }
        self.read(client, aep, namespace, name).await
    }

    /// Credentials read from the Secret now, never from the cache: deletion in AEP uses only
    /// credentials that still exist.
    pub async fn read(
        &self,
        client: &kube::Client,
        aep: &AepClient,
        namespace: &str,
        name: &str,
    ) -> Result<Credentials, CredentialsError> {
        let key = (namespace.to_owned(), name.to_owned());
        let api = Api::<Secret>::namespaced(client.clone(), namespace);
        let kube_err = |source| CredentialsError::Kube {
            namespace: namespace.into(),
            name: name.into(),
            source,
        };
        let Some(secret) = api.get_opt(name).await.map_err(kube_err)? else {
            self.drop_entry(aep, &key);
            return Err(CredentialsError::Missing {
                namespace: namespace.into(),
                name: name.into(),
            });
        };
        let parsed = from_secret_data(secret.data.as_ref().unwrap_or(&BTreeMap::new()), aep.policy());
        let credentials = match parsed {
            Ok(c) => c,
            Err(problem) => {
                self.drop_entry(aep, &key);
                return Err(CredentialsError::Invalid {
                    namespace: namespace.into(),
                    name: name.into(),
                    problem,
                });
            }
        };
        if secret.metadata.deletion_timestamp.is_none() && !secret.finalizers().iter().any(|f| f == SECRET_FINALIZER) {
            // Strategic merge adds our entry to the list (and fails on a Secret that is gone).
            let patch = json!({"metadata": {"finalizers": [SECRET_FINALIZER]}});
            api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
                .map_err(kube_err)?;
        }
        let rv = secret.resource_version();
        let mut entries = self.lock();
        if let Some(old) = entries.get(&key)
            && old.resource_version != rv
        {
            aep.forget_tokens(&old.credentials);
        }
        entries.insert(
            key,
            Entry {
                resource_version: rv,
                credentials: credentials.clone(),
                read_at: Instant::now(),
            },
        );
        Ok(credentials)
    }

    /// Drops the cached credentials of `namespace/name` (and their tokens): the next pass reads the
    /// Secret again. Called when AEP or IMS refuse them, and when a watched Secret changes.
    pub fn invalidate(&self, aep: &AepClient, namespace: &str, name: &str) {
        self.drop_entry(aep, &(namespace.to_owned(), name.to_owned()));
    }

    fn drop_entry(&self, aep: &AepClient, key: &Key) {
        if let Some(old) = self.lock().remove(key) {
            aep.forget_tokens(&old.credentials);
        }
    }

    /// Number of cached credentials (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Objects read per page when looking for another holder of a Secret.
const HOLDER_PAGE: u32 = 50;

/// Whether an ExternalAudience of `namespace` other than `except_uid` still needs Secret `name`
/// (it references it and is not being deleted, or is being deleted and still carries the cleanup
/// finalizer). A fresh list, not the cache (objects that finish at the same moment must see each
/// other gone), read a page at a time and stopped at the first holder: deleting a namespace of N
/// objects costs O(N) reads, not N lists of N.
pub async fn secret_held(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    except_uid: Option<&str>,
) -> Result<bool, kube::Error> {
    let api = Api::<ExternalAudience>::namespaced(client.clone(), namespace);
    let mut params = ListParams::default().limit(HOLDER_PAGE);
    loop {
        let page = api.list(&params).await?;
        let held = page.items.iter().any(|ea| {
            ea.spec.credentials_secret_ref.name == name
                && ea.metadata.uid.as_deref() != except_uid
                && (ea.metadata.deletion_timestamp.is_none() || ea.finalizers().iter().any(|f| f == FINALIZER))
        });
        if held {
            return Ok(true);
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(false),
        }
    }
}

/// Removes the in-use finalizer from `namespace/name`. A Secret that is gone, or carries no such
/// finalizer, needs nothing. The patch removes exactly our entry and only if the list did not
/// change meanwhile; when it did (someone else edited the finalizers), the Secret is read again
/// and the removal retried, so a release is never silently skipped.
pub async fn release_secret(client: &kube::Client, namespace: &str, name: &str) -> Result<(), kube::Error> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let Some(secret) = api.get_metadata_opt(name).await? else {
            return Ok(());
        };
        let Some(index) = secret.finalizers().iter().position(|f| f == SECRET_FINALIZER) else {
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": SECRET_FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))
        .map_err(kube::Error::SerdeError)?;
        match api
            .patch_metadata(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok(()),
            // Gone meanwhile: nothing left to release.
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            // The list changed under us: read it again.
            Err(kube::Error::Api(s)) if (s.code == 422 || s.code == 409) && attempt < ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    fn policy() -> EndpointPolicy {
        EndpointPolicy::new(&[
            Url::parse("https://platform.adobe.io").unwrap(),
            Url::parse("https://ims-na1.adobelogin.com").unwrap(),
            Url::parse("http://127.0.0.1:9/").unwrap(),
        ])
        .unwrap()
    }

    #[test]
    fn reads_required_and_optional_keys() {
        let c = from_secret_data(
            &data(&[
                ("clientId", "id"),
                ("clientSecret", "s3cr3t"),
                ("orgId", "ORG@AdobeOrg"),
                ("platformUrl", "http://127.0.0.1:9/"),
            ]),
            &policy(),
        )
        .expect("credentials");
        assert_eq!(c.client_id, "id");
        assert_eq!(c.scopes, DEFAULT_SCOPES);
        assert!(c.platform_url.is_some());
    }

    #[test]
    fn names_missing_keys_without_values() {
        let err = from_secret_data(&data(&[("clientSecret", "s3cr3t")]), &policy()).expect_err("missing keys");
        assert_eq!(err, "missing or empty keys: clientId, orgId");
        let err = from_secret_data(
            &data(&[
                ("clientId", "a"),
                ("clientSecret", "s3cr3t"),
                ("orgId", "o"),
                ("imsUrl", "::"),
            ]),
            &policy(),
        )
        .expect_err("bad url");
        assert!(err.contains("imsUrl") && !err.contains("s3cr3t"), "{err}");
    }

    #[test]
    fn endpoints_outside_the_allow_list_are_refused_naming_the_key_and_the_rule() {
        let base = [("clientId", "a"), ("clientSecret", "s3cr3t"), ("orgId", "o")];
        for (key, value, rule) in [
            ("platformUrl", "http://127.0.0.2:9/", "not an allowed endpoint"),
            ("imsUrl", "https://kubernetes.default.svc", "not an allowed endpoint"),
            ("platformUrl", "http://internal.example", "must use https"),
            ("imsUrl", "https://user:pw@ims-na1.adobelogin.com", "without user info"),
        ] {
            let mut pairs = base.to_vec();
            pairs.push((key, value));
            let err = from_secret_data(&data(&pairs), &policy()).expect_err("refused");
            assert!(err.starts_with(&format!("key {key}: ")) && err.contains(rule), "{err}");
            assert!(!err.contains("s3cr3t"));
        }
    }

    #[test]
    fn oversized_values_are_refused() {
        let big = "x".repeat(5000);
        let err = from_secret_data(
            &data(&[("clientId", &big), ("clientSecret", "s"), ("orgId", "o")]),
            &policy(),
        )
        .expect_err("too long");
        assert!(err.contains("clientId") && err.contains("4096"), "{err}");
    }
}
