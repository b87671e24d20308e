//! The emulator's admin API (`/_emulator/*`) and [`AdminClient`], the small typed client that tests
//! and the benchmark use to read counters and state, inject faults, change settings, and mutate
//! AEP state behind the operator's back.
//!
//! Admin routes are not authenticated, not counted in `/_emulator/stats` and not subject to
//! faults. Listing credentials never returns secrets.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use url::Url;

use super::Shared;
use super::config::{CredentialSpec, Entitlement, Faults, Settings};
use super::state::{StateView, Stats, Store};

type AppState = Arc<Shared>;

/// Body of `PATCH /_emulator/audiences/{id}`: changes made "by someone else" in AEP. Absent keys
/// are left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudienceMutation {
    /// New description.
    pub description: Option<String>,
    /// New audience-level labels.
    pub labels: Option<Vec<String>>,
    /// New labels per field name.
    pub field_labels: Option<BTreeMap<String, Vec<String>>>,
    /// New data expiration.
    pub ttl_in_days: Option<u32>,
    /// New lifecycle state (`published`, `inactive`, …).
    pub lifecycle_state: Option<String>,
}

/// One entry of `GET /_emulator/credentials` (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialInfo {
    /// Client ID.
    pub client_id: String,
    /// Org.
    pub org_id: String,
    /// What the credential may do on the AEP routes.
    #[serde(default)]
    pub entitlement: Entitlement,
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/_emulator/stats", get(stats))
        .route("/_emulator/state", get(state))
        .route("/_emulator/faults", get(get_faults).put(put_faults))
        .route("/_emulator/config", get(get_config).put(put_config))
        .route("/_emulator/reset", post(reset))
        .route("/_emulator/clock", get(get_clock).put(put_clock))
        .route(
            "/_emulator/audiences/{id}",
            patch(mutate_audience).delete(delete_audience),
        )
        .route("/_emulator/credentials", get(list_credentials).post(add_credentials))
        .route("/_emulator/credentials/{client_id}", delete(revoke_credentials))
        .route("/_emulator/tokens/revoke", post(revoke_tokens))
}

async fn stats(State(shared): State<AppState>) -> Json<Stats> {
    Json(shared.lock().stats.clone())
}

async fn state(State(shared): State<AppState>) -> Json<StateView> {
    Json(shared.lock().view())
}

/// `GET`/`PUT /_emulator/clock`: the emulated service's clock, which tests move forward (a day
/// change, a data expiry) without waiting. Kept in the state file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    /// The emulated "now", ms since the epoch (ignored in a `PUT`).
    #[serde(default)]
    pub now_ms: i64,
    /// How far it is ahead of the host's clock, ms.
    pub offset_ms: i64,
}

async fn get_clock(State(shared): State<AppState>) -> Json<Clock> {
    let world = shared.lock();
    Json(Clock {
        now_ms: world.now_ms(),
        offset_ms: world.store.clock_offset_ms,
    })
}

async fn put_clock(State(shared): State<AppState>, Json(clock): Json<Clock>) -> Json<Clock> {
    let now = {
        let mut world = shared.lock();
        world.store.clock_offset_ms = clock.offset_ms;
        world.now_ms()
    };
    shared.changed();
    Json(Clock {
        now_ms: now,
        offset_ms: clock.offset_ms,
    })
}

async fn get_faults(State(shared): State<AppState>) -> Json<Faults> {
    Json(shared.lock().faults.clone())
}

async fn put_faults(State(shared): State<AppState>, Json(faults): Json<Faults>) -> Json<Faults> {
    tracing::info!(?faults, "Faults replaced");
    shared.lock().faults = faults.clone();
    Json(faults)
}

async fn get_config(State(shared): State<AppState>) -> Json<Settings> {
    Json(shared.lock().settings.clone())
}

async fn put_config(State(shared): State<AppState>, Json(settings): Json<Settings>) -> Json<Settings> {
    tracing::info!(?settings, "Settings replaced");
    shared.lock().settings = settings.clone();
    Json(settings)
}

async fn reset(State(shared): State<AppState>) -> StatusCode {
    {
        let mut world = shared.lock();
        world.store = Store::default();
        world.tokens.clear();
        world.stats = Stats::default();
        world.faults = Faults::default();
    }
    shared.changed();
    tracing::info!("State reset");
    StatusCode::NO_CONTENT
}

async fn mutate_audience(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Json(change): Json<AudienceMutation>,
) -> Response {
    let mut world = shared.lock();
    let now = world.now_ms();
    let Some(audience) = world.find_audience_mut(&id) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let d = &mut audience.definition;
    if let Some(v) = change.description {
        d.description = Some(v);
    }
    if let Some(v) = change.labels {
        d.labels = v;
    }
    if let Some(v) = change.ttl_in_days {
        d.ttl_in_days = Some(v);
    }
    for (name, labels) in change.field_labels.unwrap_or_default() {
        if let Some(f) = d.fields.iter_mut().find(|f| f.name == name) {
            f.labels = labels;
        }
    }
    if let Some(v) = change.lifecycle_state {
        audience.lifecycle_state = v;
    }
    audience.updated_at_ms = now;
    let body = audience.to_external();
    drop(world);
    shared.changed();
    tracing::info!(audience_id = %id, "Audience mutated through the admin API");
    Json(body).into_response()
}

async fn delete_audience(State(shared): State<AppState>, Path(id): Path<String>) -> StatusCode {
    let removed = {
        let mut world = shared.lock();
        let now = world.now_ms();
        let removed = world.store.tenants.values_mut().any(|t| t.delete_audience(&id, now));
        if removed {
            world.stats.deletes += 1;
        }
        removed
    };
    if !removed {
        return StatusCode::NOT_FOUND;
    }
    shared.changed();
    tracing::info!(audience_id = %id, "Audience deleted through the admin API");
    StatusCode::NO_CONTENT
}

async fn list_credentials(State(shared): State<AppState>) -> Json<Vec<CredentialInfo>> {
    Json(
        shared
            .lock()
            .credentials
            .iter()
            .map(|c| CredentialInfo {
                client_id: c.client_id.clone(),
                org_id: c.org_id.clone(),
                entitlement: c.entitlement,
            })
            .collect(),
    )
}

async fn add_credentials(State(shared): State<AppState>, Json(spec): Json<CredentialSpec>) -> StatusCode {
    let mut world = shared.lock();
    world.credentials.retain(|c| c.client_id != spec.client_id);
    tracing::info!(
        client_id = %spec.client_id,
        org_id = %spec.org_id,
        entitlement = ?spec.entitlement,
        "Credential added"
    );
    world.credentials.push(spec);
    StatusCode::CREATED
}

async fn revoke_credentials(State(shared): State<AppState>, Path(client_id): Path<String>) -> StatusCode {
    let mut world = shared.lock();
    let before = world.credentials.len();
    world.credentials.retain(|c| c.client_id != client_id);
    world.tokens.retain(|_, t| t.client_id != client_id);
    tracing::info!(client_id = %client_id, "Credential revoked");
    if world.credentials.len() == before {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::NO_CONTENT
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Revoked {
    revoked: usize,
}

async fn revoke_tokens(State(shared): State<AppState>) -> Json<Revoked> {
    let mut world = shared.lock();
    let revoked = world.tokens.len();
    world.tokens.clear();
    tracing::info!(revoked, "All tokens revoked");
    Json(Revoked { revoked })
}

/// Errors of [`AdminClient`].
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Transport failure.
    #[error("admin request failed")]
    Http(#[source] reqwest::Error),
    /// The CA bundle given to [`AdminClient::with_ca_pem`] is unusable.
    #[error("admin client CA bundle: {0}")]
    Ca(String),
    /// Unexpected status.
    #[error("admin endpoint {path} answered {status}")]
    Status {
        /// Admin path.
        path: String,
        /// HTTP status.
        status: u16,
    },
}

/// Typed client of the admin API.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: Url,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client for the emulator at `base` (e.g. `http://127.0.0.1:8080/`), trusting the system
    /// roots for `https`.
    pub fn new(base: Url) -> Self {
        aep::install_crypto_provider();
        AdminClient {
            base,
            http: reqwest::Client::new(),
        }
    }

    /// The same client, trusting only the CA(s) in `pem` (e.g. [`super::RunningEmulator::ca_pem`]
    /// or the file the binary's `--ca-out` wrote) instead of the system roots.
    pub fn with_ca_pem(self, pem: &[u8]) -> Result<Self, AdminError> {
        aep::install_crypto_provider();
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| AdminError::Ca(e.to_string()))?;
        if certs.is_empty() {
            return Err(AdminError::Ca("no certificate in the PEM".to_owned()));
        }
        let http = reqwest::Client::builder()
            .tls_certs_only(certs)
            .build()
            .map_err(|e| AdminError::Ca(e.to_string()))?;
        Ok(AdminClient { base: self.base, http })
    }

    /// [`Self::new`], then [`Self::with_ca_pem`] when `ca_pem` is given.
    pub(crate) fn with_trust(base: Url, ca_pem: Option<&str>) -> Result<Self, AdminError> {
        let client = AdminClient::new(base);
        match ca_pem {
            Some(pem) => client.with_ca_pem(pem.as_bytes()),
            None => Ok(client),
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(path);
        url
    }

    async fn call<B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<reqwest::Response, AdminError> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| AdminError::Http(e.without_url()))?;
        if !response.status().is_success() {
            return Err(AdminError::Status {
                path: path.to_owned(),
                status: response.status().as_u16(),
            });
        }
        Ok(response)
    }

    async fn json<T: serde::de::DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AdminError> {
        self.call(method, path, body)
            .await?
            .json()
            .await
            .map_err(|e| AdminError::Http(e.without_url()))
    }

    /// `GET /_emulator/stats`.
    pub async fn stats(&self) -> Result<Stats, AdminError> {
        self.json(reqwest::Method::GET, "/_emulator/stats", None::<&()>).await
    }

    /// `GET /_emulator/state`.
    pub async fn state(&self) -> Result<StateView, AdminError> {
        self.json(reqwest::Method::GET, "/_emulator/state", None::<&()>).await
    }

    /// `GET /_emulator/clock`.
    pub async fn clock(&self) -> Result<Clock, AdminError> {
        self.json(reqwest::Method::GET, "/_emulator/clock", None::<&()>).await
    }

    /// `PUT /_emulator/clock`: sets how far the emulated clock is ahead of the host's.
    pub async fn set_clock_offset(&self, offset_ms: i64) -> Result<Clock, AdminError> {
        let body = Clock { now_ms: 0, offset_ms };
        self.json(reqwest::Method::PUT, "/_emulator/clock", Some(&body)).await
    }

    /// `GET /_emulator/faults`.
    pub async fn faults(&self) -> Result<Faults, AdminError> {
        self.json(reqwest::Method::GET, "/_emulator/faults", None::<&()>).await
    }

    /// `PUT /_emulator/faults` (replaces all faults).
    pub async fn set_faults(&self, faults: &Faults) -> Result<Faults, AdminError> {
        self.json(reqwest::Method::PUT, "/_emulator/faults", Some(faults)).await
    }

    /// `GET /_emulator/config`.
    pub async fn config(&self) -> Result<Settings, AdminError> {
        self.json(reqwest::Method::GET, "/_emulator/config", None::<&()>).await
    }

    /// `PUT /_emulator/config` (replaces all settings).
    pub async fn set_config(&self, settings: &Settings) -> Result<Settings, AdminError> {
        self.json(reqwest::Method::PUT, "/_emulator/config", Some(settings))
            .await
    }

    /// `POST /_emulator/reset`: forget audiences, tokens, counters and faults.
    pub async fn reset(&self) -> Result<(), AdminError> {
        self.call(reqwest::Method::POST, "/_emulator/reset", None::<&()>)
            .await
            .map(drop)
    }

    /// `PATCH /_emulator/audiences/{id}`.
    pub async fn mutate_audience(&self, id: &str, change: &AudienceMutation) -> Result<(), AdminError> {
        let path = format!("/_emulator/audiences/{}", encode(id));
        self.call(reqwest::Method::PATCH, &path, Some(change)).await.map(drop)
    }

    /// `DELETE /_emulator/audiences/{id}`.
    pub async fn delete_audience(&self, id: &str) -> Result<(), AdminError> {
        let path = format!("/_emulator/audiences/{}", encode(id));
        self.call(reqwest::Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    /// `POST /_emulator/credentials` (replaces a credential with the same client ID, keeping its
    /// tokens: a changed entitlement applies to them at once).
    pub async fn add_credentials(&self, spec: &CredentialSpec) -> Result<(), AdminError> {
        self.call(reqwest::Method::POST, "/_emulator/credentials", Some(spec))
            .await
            .map(drop)
    }

    /// `DELETE /_emulator/credentials/{client_id}` (also revokes its tokens).
    pub async fn revoke_credentials(&self, client_id: &str) -> Result<(), AdminError> {
        let path = format!("/_emulator/credentials/{}", encode(client_id));
        self.call(reqwest::Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    /// `POST /_emulator/tokens/revoke`: every issued token becomes invalid (AEP answers 401).
    pub async fn revoke_tokens(&self) -> Result<usize, AdminError> {
        let r: Revoked = self
            .json(reqwest::Method::POST, "/_emulator/tokens/revoke", None::<&()>)
            .await?;
        Ok(r.revoked)
    }
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
