//! The emulator's admin API (`/_emulator/*`) and [`AdminClient`], the small typed client that tests
//! and the benchmark use to read counters and state, inject faults, change settings, mutate AEP
//! state behind the operator's back, and create destination dataflows (which the operator never
//! creates) and map audiences into them as the AEP UI would.
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

use aep::flows::{
    DestinationKind, EXPORT_MODE_DAILY_FULL, ExportSchedule, FREQUENCIES_FULL, FlowPatchOp, SegmentSelector,
    SelectorValue, TRIGGER_AFTER_SEGMENT_EVAL,
};
use serde_json::Value;

use super::Shared;
use super::config::{CredentialSpec, Entitlement, Faults, SelectorIdModel, Settings};
use super::flows::{FlowRec, SelectorRec, find_audience, normalise};
use super::state::{StateView, Stats, Store, World};

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

/// Body of `POST /_emulator/flows`: a destination dataflow made by its administrator (in AEP,
/// in the UI; the operator only maps audiences into existing flows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewFlow {
    /// The flow id; default: a new UUID. A flow that already has this id is left as it is (so a
    /// setup script can run twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Sandbox (default `prod`).
    #[serde(default = "default_sandbox")]
    pub sandbox: String,
    /// IMS org; default: the first accepted credential's.
    #[serde(default)]
    pub org: Option<String>,
    /// Display name.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// `batch` (an S3 file-based card) or `streaming` (Kinesis).
    pub kind: DestinationKind,
    /// `enabled` (default) or `disabled` (a disabled flow exports nothing).
    #[serde(default = "default_state")]
    pub state: String,
}

fn default_sandbox() -> String {
    "prod".to_owned()
}

fn default_state() -> String {
    "enabled".to_owned()
}

impl NewFlow {
    /// An enabled flow of the default org.
    pub fn new(sandbox: impl Into<String>, name: impl Into<String>, kind: DestinationKind) -> Self {
        NewFlow {
            id: None,
            sandbox: sandbox.into(),
            org: None,
            name: name.into(),
            description: None,
            kind,
            state: default_state(),
        }
    }
}

/// Answer of `POST /_emulator/flows`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowCreated {
    /// The flow id.
    pub id: String,
    /// Its etag.
    pub etag: String,
}

/// Body of `POST /_emulator/flows/{id}/selectors`: maps an audience as the AEP UI would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddSelector {
    /// The audience (`audienceId` is accepted too).
    #[serde(alias = "audienceId")]
    pub audience_id: String,
    /// The selector's `value` to store instead of the UI's (its `id` is set to `audience_id`);
    /// not validated.
    #[serde(default)]
    pub value: Option<Value>,
}

impl AddSelector {
    /// The UI's selector for `audience_id`.
    pub fn new(audience_id: impl Into<String>) -> Self {
        AddSelector {
            audience_id: audience_id.into(),
            value: None,
        }
    }
}

/// Body of `PATCH /_emulator/flows/{id}`: a change to the flow made behind the operator's back.
/// Any call gives the flow a new etag (an empty body is a pure concurrent write).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FlowMutation {
    /// New state: `enabled` or `disabled`.
    pub state: Option<String>,
    /// New name.
    pub name: Option<String>,
}

/// Who the admin API acts as.
const ADMIN_ACTOR: &str = "destination-admin@AdobeID";

/// Creates a flow (admin API and [`super::RunningEmulator::create_flow`]).
pub(crate) fn create_flow_in(world: &mut World, spec: &NewFlow) -> FlowCreated {
    let now = world.now_ms();
    let org = spec
        .org
        .clone()
        .or_else(|| world.credentials.first().map(|c| c.org_id.clone()))
        .unwrap_or_else(|| super::DEFAULT_ORG_ID.to_owned());
    let tenant = world.tenant_mut(&org, &spec.sandbox);
    if let Some(existing) = spec.id.as_ref().and_then(|id| tenant.flows.get(id)) {
        return FlowCreated {
            id: existing.id.clone(),
            etag: existing.etag.clone(),
        };
    }
    let mut flow = FlowRec::new(
        spec.name.clone(),
        spec.description.clone(),
        spec.kind,
        spec.state.clone(),
        now,
        ADMIN_ACTOR.to_owned(),
    );
    if let Some(id) = spec
        .id
        .as_ref()
        .filter(|id| !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        flow.id = id.clone();
    }
    let created = FlowCreated {
        id: flow.id.clone(),
        etag: flow.etag.clone(),
    };
    tracing::info!(flow_id = %flow.id, kind = %spec.kind, sandbox = %spec.sandbox, "Flow created through the admin API");
    world
        .tenant_mut(&org, &spec.sandbox)
        .flows
        .insert(flow.id.clone(), flow);
    created
}

/// Maps an audience into a flow as the UI would: the audience's name, and for batch flows a
/// daily full export after the segmentation job from today; the id model applies. Returns the
/// new etag, `None` without such a flow.
pub(crate) fn add_selector_in(world: &mut World, flow_id: &str, add: &AddSelector) -> Option<String> {
    let now = world.now_ms();
    let clock = world.export_clock();
    let ids = world.settings.selector_ids;
    let tenant = world
        .store
        .tenants
        .values_mut()
        .find(|t| t.flows.contains_key(flow_id))?;
    let audiences = &tenant.audiences;
    let flow = tenant.flows.get_mut(flow_id)?;
    flow.materialize(&clock);
    let mut value = match &add.value {
        Some(v) => serde_json::from_value::<SelectorValue>(v.clone()).unwrap_or_default(),
        None => SelectorValue::default(),
    };
    value.id = Some(add.audience_id.clone());
    let mut selector = SegmentSelector::platform_segment(value);
    let audience = find_audience(audiences, &selector);
    if selector.value.name.is_none() {
        selector.value.name = audience.map(|a| a.definition.name.clone());
    }
    if add.value.is_none() && flow.kind == DestinationKind::Batch {
        let today = jiff::Timestamp::from_millisecond(now)
            .map(|t| t.to_zoned(jiff::tz::TimeZone::UTC).date().to_string())
            .unwrap_or_default();
        selector.value.export_mode = Some(EXPORT_MODE_DAILY_FULL.to_owned());
        selector.value.filename_template =
            Some("%DESTINATION_NAME%_%SEGMENT_ID%_%DATETIME(YYYYMMdd_HHmmss)%".to_owned());
        selector.value.schedule = Some(ExportSchedule {
            frequency: Some(FREQUENCIES_FULL[1].to_owned()),
            trigger_type: Some(TRIGGER_AFTER_SEGMENT_EVAL.to_owned()),
            start_date: Some(today),
            ..ExportSchedule::default()
        });
    }
    if ids == SelectorIdModel::Normalise
        && let Some(audience) = audience
    {
        normalise(&mut selector, audience);
    }
    let secs = (now / 1000).to_string();
    selector.value.create_time = Some(secs.clone());
    selector.value.update_time = Some(secs);
    let op = FlowPatchOp::add_selector(&selector);
    flow.selectors.push(SelectorRec {
        uid: uuid::Uuid::new_v4().to_string(),
        selector,
        mapped_at_ms: now,
        active_from_ms: now,
    });
    flow.record_change(vec![serde_json::to_value(op).unwrap_or(Value::Null)], now, ADMIN_ACTOR);
    tracing::info!(flow_id = %flow_id, audience_id = %add.audience_id, "Audience mapped through the admin API");
    Some(flow.etag.clone())
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
        .route("/_emulator/flows", post(create_flow))
        .route("/_emulator/flows/{id}", patch(mutate_flow).delete(delete_flow))
        .route("/_emulator/flows/{id}/selectors", post(add_selector))
        .route("/_emulator/flows/{id}/selectors/{audience_id}", delete(remove_selector))
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

async fn create_flow(State(shared): State<AppState>, Json(spec): Json<NewFlow>) -> Response {
    let created = create_flow_in(&mut shared.lock(), &spec);
    shared.changed();
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn add_selector(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Json(add): Json<AddSelector>,
) -> Response {
    let etag = add_selector_in(&mut shared.lock(), &id, &add);
    match etag {
        Some(etag) => {
            shared.changed();
            Json(FlowCreated { id, etag }).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn remove_selector(
    State(shared): State<AppState>,
    Path((id, audience_id)): Path<(String, String)>,
) -> StatusCode {
    {
        let mut world = shared.lock();
        let now = world.now_ms();
        let clock = world.export_clock();
        let Some(flow) = world.store.tenants.values_mut().find_map(|t| t.flows.get_mut(&id)) else {
            return StatusCode::NOT_FOUND;
        };
        flow.materialize(&clock);
        let before = flow.selectors.len();
        flow.selectors.retain(|s| !s.selector.names(&audience_id));
        if flow.selectors.len() != before {
            flow.record_change(Vec::new(), now, ADMIN_ACTOR);
        }
    }
    shared.changed();
    tracing::info!(flow_id = %id, audience_id = %audience_id, "Audience unmapped through the admin API");
    StatusCode::NO_CONTENT
}

async fn mutate_flow(
    State(shared): State<AppState>,
    Path(id): Path<String>,
    Json(change): Json<FlowMutation>,
) -> Response {
    let etag = {
        let mut world = shared.lock();
        let now = world.now_ms();
        let clock = world.export_clock();
        let Some(flow) = world.store.tenants.values_mut().find_map(|t| t.flows.get_mut(&id)) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        flow.materialize(&clock);
        if let Some(state) = change.state {
            flow.state = state;
        }
        if let Some(name) = change.name {
            flow.name = name;
        }
        flow.touch(now, ADMIN_ACTOR);
        flow.etag.clone()
    };
    shared.changed();
    tracing::info!(flow_id = %id, "Flow changed through the admin API");
    Json(FlowCreated { id, etag }).into_response()
}

async fn delete_flow(State(shared): State<AppState>, Path(id): Path<String>) -> StatusCode {
    let removed = shared
        .lock()
        .store
        .tenants
        .values_mut()
        .any(|t| t.flows.remove(&id).is_some());
    if !removed {
        return StatusCode::NOT_FOUND;
    }
    shared.changed();
    tracing::info!(flow_id = %id, "Flow deleted through the admin API");
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

    /// `POST /_emulator/flows`: creates a destination dataflow; returns its id.
    pub async fn create_flow(&self, flow: &NewFlow) -> Result<String, AdminError> {
        let created: FlowCreated = self.json(reqwest::Method::POST, "/_emulator/flows", Some(flow)).await?;
        Ok(created.id)
    }

    /// `POST /_emulator/flows/{id}/selectors`: maps `audience_id` as the AEP UI would (a batch
    /// flow gets a daily full export after the segmentation job); returns the new etag.
    pub async fn add_selector(&self, flow_id: &str, audience_id: &str) -> Result<String, AdminError> {
        self.add_selector_with(flow_id, &AddSelector::new(audience_id)).await
    }

    /// `POST /_emulator/flows/{id}/selectors` with a selector value of the caller's; returns the
    /// new etag.
    pub async fn add_selector_with(&self, flow_id: &str, add: &AddSelector) -> Result<String, AdminError> {
        let path = format!("/_emulator/flows/{}/selectors", encode(flow_id));
        let answer: FlowCreated = self.json(reqwest::Method::POST, &path, Some(add)).await?;
        Ok(answer.etag)
    }

    /// `DELETE /_emulator/flows/{id}/selectors/{audienceId}`: unmaps every selector naming the
    /// audience, as someone in the UI would.
    pub async fn remove_selector(&self, flow_id: &str, audience_id: &str) -> Result<(), AdminError> {
        let path = format!("/_emulator/flows/{}/selectors/{}", encode(flow_id), encode(audience_id));
        self.call(reqwest::Method::DELETE, &path, None::<&()>).await.map(drop)
    }

    /// `PATCH /_emulator/flows/{id}`: changes the flow behind the operator's back (always a new
    /// etag); returns the new etag.
    pub async fn mutate_flow(&self, flow_id: &str, change: &FlowMutation) -> Result<String, AdminError> {
        let path = format!("/_emulator/flows/{}", encode(flow_id));
        let answer: FlowCreated = self.json(reqwest::Method::PATCH, &path, Some(change)).await?;
        Ok(answer.etag)
    }

    /// `DELETE /_emulator/flows/{id}`.
    pub async fn delete_flow(&self, flow_id: &str) -> Result<(), AdminError> {
        let path = format!("/_emulator/flows/{}", encode(flow_id));
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
