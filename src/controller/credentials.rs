//! Reads the IMS credential Secret named by `spec.credentialsSecretRef` and turns it into
//! [`Credentials`]. Errors name the Secret and the missing keys, never a value.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::Api;
use secrecy::SecretString;
use url::Url;

use crate::aep::{Credentials, DEFAULT_SCOPES};

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

/// Loads and validates the credential Secret.
pub async fn load(client: &kube::Client, namespace: &str, name: &str) -> Result<Credentials, CredentialsError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(|source| CredentialsError::Kube {
            namespace: namespace.into(),
            name: name.into(),
            source,
        })?
        .ok_or_else(|| CredentialsError::Missing {
            namespace: namespace.into(),
            name: name.into(),
        })?;
    from_secret_data(secret.data.unwrap_or_default()).map_err(|problem| CredentialsError::Invalid {
        namespace: namespace.into(),
        name: name.into(),
        problem,
    })
}

/// Pure part of [`load`]: keys `clientId`, `clientSecret`, `orgId` (required), `scopes`,
/// `imsUrl`, `platformUrl` (optional).
pub fn from_secret_data(data: BTreeMap<String, ByteString>) -> Result<Credentials, String> {
    let text = |key: &str| -> Result<Option<String>, String> {
        match data.get(key) {
            None => Ok(None),
            Some(v) => {
                let s = String::from_utf8(v.0.clone()).map_err(|_| format!("key {key} is not UTF-8"))?;
                let s = s.trim().to_owned();
                Ok((!s.is_empty()).then_some(s))
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
        text(key)?
            .map(|s| Url::parse(&s).map_err(|e| format!("key {key} is not a valid URL: {e}")))
            .transpose()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn reads_required_and_optional_keys() {
        let c = from_secret_data(data(&[
            ("clientId", "id"),
            ("clientSecret", "s3cr3t"),
            ("orgId", "ORG@AdobeOrg"),
            ("platformUrl", "http://127.0.0.1:9/"),
        ]))
        .expect("credentials");
        assert_eq!(c.client_id, "id");
        assert_eq!(c.scopes, DEFAULT_SCOPES);
        assert!(c.platform_url.is_some());
    }

    #[test]
    fn names_missing_keys_without_values() {
        let err = from_secret_data(data(&[("clientSecret", "s3cr3t")])).expect_err("missing keys");
        assert_eq!(err, "missing or empty keys: clientId, orgId");
        let err = from_secret_data(data(&[
            ("clientId", "a"),
            ("clientSecret", "s3cr3t"),
            ("orgId", "o"),
            ("imsUrl", "::"),
        ]))
        .expect_err("bad url");
        assert!(err.contains("imsUrl") && !err.contains("s3cr3t"), "{err}");
    }
}
