//! Adobe IMS OAuth server-to-server tokens: the `client_credentials` exchange, a cache keyed by
//! [`Credentials::fingerprint`], refresh ahead of expiry, and single-flight refresh (concurrent
//! callers of one credential wait for one token request instead of each minting their own).
//!
//! Tokens live in [`SecretString`]s and are never logged, formatted or put into errors. This
//! module does not retry; the caller's retry loop does.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use url::Url;

use super::client::{Credentials, Observer, RequestEvent};
use super::error::{Call, Error};
use super::types::{ImsTokenResponse, error_code_from_body, error_message_from_body};

/// Path of the token endpoint under the IMS base URL.
pub const TOKEN_PATH: &str = "/ims/token/v3";
/// Longest refresh margin: refresh when less than this remains.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Lifetime assumed when IMS omits `expires_in`.
const FALLBACK_LIFETIME: Duration = Duration::from_secs(3600);
/// `expires_in` values above this are milliseconds (the retired JWT exchange), reference §7.1.12.
const MILLIS_THRESHOLD: i64 = 1_000_000;

/// A bearer token. `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken(SecretString);

impl AccessToken {
    /// The raw token, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

struct CachedToken {
    token: AccessToken,
    refresh_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Token cache shared by every session of one client.
#[derive(Default)]
pub struct TokenCache {
    slots: Mutex<HashMap<String, Slot>>,
    requests: AtomicU64,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("token_requests", &self.requests.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Converts `expires_in` to a lifetime (seconds, or milliseconds when very large).
pub fn lifetime_from_expires_in(expires_in: Option<i64>) -> Duration {
    match expires_in {
        Some(n) if n > MILLIS_THRESHOLD => Duration::from_millis(n.unsigned_abs()),
        Some(n) if n >= 0 => Duration::from_secs(n.unsigned_abs()),
        _ => FALLBACK_LIFETIME,
    }
}

/// How long before expiry to refresh: 5 minutes or 10% of the lifetime, whichever is smaller.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

impl TokenCache {
    /// Token requests sent to IMS so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn slot(&self, key: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// A valid token for `creds`, fetching one (once, for all concurrent callers) when the cached
    /// one is missing or due for refresh.
    pub async fn token(
        &self,
        http: &reqwest::Client,
        ims_url: &Url,
        creds: &Credentials,
        max_body: usize,
        observer: Option<&Observer>,
    ) -> Result<AccessToken, Error> {
        let slot = self.slot(&creds.fingerprint());
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let started = std::time::Instant::now();
        let fetched = self.fetch(http, ims_url, creds, max_body).await;
        if let Some(observe) = observer {
            let (status, outcome) = match &fetched {
                Ok(_) => (Some(200), "ok"),
                Err(e) => (e.status(), e.category()),
            };
            observe(&RequestEvent {
                operation: Call::Token.as_str(),
                status,
                outcome,
                duration: started.elapsed(),
            });
        }
        let (token, lifetime) = fetched?;
        let refresh_at = Instant::now() + lifetime.saturating_sub(refresh_margin(lifetime));
        *guard = Some(CachedToken {
            token: token.clone(),
            refresh_at,
        });
        Ok(token)
    }

    /// Forgets every token of `creds` (its Secret changed or is gone): no token outlives the
    /// credential it was minted for.
    pub fn forget(&self, creds: &Credentials) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&creds.fingerprint());
    }

    /// Forgets `stale` (after AEP refused it) unless another caller already replaced it, so a burst
    /// of 401s causes one refresh.
    pub async fn invalidate(&self, creds: &Credentials, stale: &AccessToken) {
        let slot = self.slot(&creds.fingerprint());
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| c.token.expose() == stale.expose()) {
            *guard = None;
        }
    }

    async fn fetch(
        &self,
        http: &reqwest::Client,
        ims_url: &Url,
        creds: &Credentials,
        max_body: usize,
    ) -> Result<(AccessToken, Duration), Error> {
        let url = token_url(ims_url);
        self.requests.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(client_id = %creds.client_id, org_id = %creds.org_id, "Requesting IMS token");
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", creds.client_id.as_str()),
            ("client_secret", creds.client_secret.expose_secret()),
            ("scope", creds.scopes.as_str()),
        ];
        let response = http
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| Error::from_transport(Call::Token, e))?;
        let status = response.status().as_u16();
        let retry_after = super::client::retry_after_header(response.headers());
        let body = super::client::read_capped(response, max_body, Call::Token).await?;
        if !(200..300).contains(&status) {
            let error = Error::from_status(
                Call::Token,
                status,
                retry_after,
                error_code_from_body(&body),
                error_message_from_body(&body),
            );
            tracing::warn!(client_id = %creds.client_id, status, kind = %error.kind(), "IMS refused the token request");
            return Err(error);
        }
        let parsed: ImsTokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::decode(Call::Token, status, e))?;
        if parsed.access_token.is_empty() {
            return Err(Error::invalid(Call::Token, "IMS returned an empty access token"));
        }
        let lifetime = lifetime_from_expires_in(parsed.expires_in);
        tracing::debug!(client_id = %creds.client_id, lifetime_secs = lifetime.as_secs(), "Received IMS token");
        Ok((AccessToken(SecretString::from(parsed.access_token)), lifetime))
    }
}

/// `<ims base>/ims/token/v3`, keeping any path prefix of the base.
pub fn token_url(ims_url: &Url) -> Url {
    let mut url = ims_url.clone();
    let path = format!("{}{}", url.path().trim_end_matches('/'), TOKEN_PATH);
    url.set_path(&path);
    url.set_query(None);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_units_and_margins() {
        assert_eq!(lifetime_from_expires_in(Some(86399)), Duration::from_secs(86399));
        assert_eq!(
            lifetime_from_expires_in(Some(86_399_992)),
            Duration::from_millis(86_399_992)
        );
        assert_eq!(lifetime_from_expires_in(None), FALLBACK_LIFETIME);
        assert_eq!(refresh_margin(Duration::from_secs(86399)), MAX_REFRESH_MARGIN);
        assert_eq!(refresh_margin(Duration::from_secs(60)), Duration::from_secs(6));
    }

    #[test]
    fn token_url_keeps_prefixes() {
        let base: Url = "https://ims-na1.adobelogin.com".parse().unwrap();
        assert_eq!(token_url(&base).as_str(), "https://ims-na1.adobelogin.com/ims/token/v3");
        let prefixed: Url = "http://127.0.0.1:9/emu/".parse().unwrap();
        assert_eq!(token_url(&prefixed).as_str(), "http://127.0.0.1:9/emu/ims/token/v3");
    }

    #[test]
    fn access_token_debug_is_redacted() {
        let t = AccessToken(SecretString::from("tok-123".to_owned()));
        assert!(!format!("{t:?}").contains("tok-123"));
    }
}
