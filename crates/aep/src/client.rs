//! The AEP HTTP client: one [`AepClient`] per process (connection pool, token cache, per-org rate
//! limiter), and cheap [`Session`]s bound to one credential and one sandbox that make the typed
//! calls of reference §7.1.
//!
//! Every call sends the five AEP headers, waits for the org's rate limit, carries a timeout, and
//! refreshes the token once on a 401. Idempotent calls (GET, PATCH, DELETE) are retried with
//! capped, jittered exponential backoff that never undercuts `Retry-After`. Create and start-run
//! are never retried blindly: a lost answer becomes [`ErrorKind::OutcomeUnknown`].
//! Nothing here knows about Kubernetes, and no token or secret reaches a log line or an error.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use url::Url;

use super::endpoint::EndpointPolicy;
use super::error::{Call, Error, ErrorKind, parse_retry_after};
use super::flows::{
    ADHOC_ACCEPT_V2, AdhocOrder, AdhocRequest, AdhocResponse, Flow, FlowList, FlowPatchOp, FlowRun, FlowRunList,
    NextLink, PatchFlowResponse, SegmentJob, SegmentSchedule, UpsList, segment_entity_id,
};
use super::ims::{AccessToken, TokenCache};
use super::ratelimit::{OrgRateLimiter, Priority};
use super::types::{
    CreateAudienceRequest, CreateAudienceResponse, ExtendTtlResponse, ExternalAudience, Operation,
    PatchAudienceRequest, Run, RunList, StartRunRequest, UpsAudience, UpsAudienceList, error_code_from_body,
    error_message_from_body,
};

/// Scopes of an Experience Platform API credential (reference §5).
pub const DEFAULT_SCOPES: &str = "openid,session,AdobeID,read_organizations,additional_info.projectedProductContext";
/// Default AEP host.
pub const DEFAULT_PLATFORM_URL: &str = "https://platform.adobe.io";
/// Default IMS host.
pub const DEFAULT_IMS_URL: &str = "https://ims-na1.adobelogin.com";
/// Page size used by [`Session::find_audiences_by_name`].
const FIND_PAGE_SIZE: u32 = 50;
/// Page size of the unfiltered list of a sandbox's audiences (drift checks, import): AEP documents
/// no maximum; 100 is what its other list APIs take.
const LIST_PAGE_SIZE: u32 = 100;
/// Upper bound on pages followed by one lookup (protects against looping `next` links).
const MAX_PAGES: usize = 1000;
/// Page size of the Flow Service lists (its maximum, reference §1.4).
const FLOW_PAGE_SIZE: u32 = 100;
/// Pages of runs [`Session::list_flow_runs`] follows at most (1,000 runs, newest first).
const MAX_RUN_PAGES: usize = 10;
/// First backoff step for retries.
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Default cap of one response body (AEP's largest answers, a page of 50 audiences, are far below).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;

/// Client-wide settings. `Default` targets the real Adobe hosts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// AEP base; `/data/core/ais/…` and `/data/core/ups/…` are appended.
    pub platform_url: Url,
    /// IMS base; `/ims/token/v3` is appended.
    pub ims_url: Url,
    /// Timeout of every HTTP call.
    pub request_timeout: Duration,
    /// Per-org client-side rate limit.
    pub requests_per_second: u32,
    /// Retries of idempotent calls after the first attempt.
    pub max_retries: u32,
    /// Cap of one backoff step (a longer `Retry-After` is returned to the caller instead).
    pub max_backoff: Duration,
    /// Endpoints a credential may choose besides `platform_url` and `ims_url` (the administrator's
    /// allow-list, see [`super::endpoint`]).
    pub allowed_endpoints: Vec<Url>,
    /// PEM trust roots that replace the system's (e.g. the local emulator's CA); `None` trusts the
    /// system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Hard cap of one response body; a longer answer fails the call.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            platform_url: Url::parse(DEFAULT_PLATFORM_URL).unwrap_or_else(|e| unreachable!("constant URL parses: {e}")),
            ims_url: Url::parse(DEFAULT_IMS_URL).unwrap_or_else(|e| unreachable!("constant URL parses: {e}")),
            request_timeout: Duration::from_secs(30),
            requests_per_second: 10,
            max_retries: 4,
            max_backoff: Duration::from_secs(30),
            allowed_endpoints: Vec::new(),
            ca_pem: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// An OAuth server-to-server credential plus the org it acts for. `Debug` redacts the secret.
#[derive(Clone)]
pub struct Credentials {
    /// Client ID (also sent as `x-api-key`).
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// IMS org, such as `ABC123@AdobeOrg`.
    pub org_id: String,
    /// Comma-separated scopes; [`DEFAULT_SCOPES`] for AEP.
    pub scopes: String,
    /// Overrides [`ClientConfig::ims_url`].
    pub ims_url: Option<Url>,
    /// Overrides [`ClientConfig::platform_url`].
    pub platform_url: Option<Url>,
}

impl Credentials {
    /// A credential with the default scopes and no URL overrides.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>, org_id: impl Into<String>) -> Self {
        Credentials {
            client_id: client_id.into(),
            client_secret: SecretString::from(client_secret.into()),
            org_id: org_id.into(),
            scopes: DEFAULT_SCOPES.to_owned(),
            ims_url: None,
            platform_url: None,
        }
    }

    /// SHA-256 (hex) over every field, secret included: the token cache key, so a rotated secret
    /// gets a new token. Reveals nothing about the secret.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        let url = |u: &Option<Url>| u.as_ref().map(Url::as_str).unwrap_or("").to_owned();
        for part in [
            self.client_id.as_str(),
            self.client_secret.expose_secret(),
            self.org_id.as_str(),
            self.scopes.as_str(),
            &url(&self.ims_url),
            &url(&self.platform_url),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hex::encode(hasher.finalize())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("org_id", &self.org_id)
            .field("scopes", &self.scopes)
            .field("ims_url", &self.ims_url.as_ref().map(Url::as_str))
            .field("platform_url", &self.platform_url.as_ref().map(Url::as_str))
            .finish()
    }
}

/// Counters of one client, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientMetrics {
    /// IMS token requests sent.
    pub token_requests: u64,
    /// AEP HTTP requests sent (retries included).
    pub requests: u64,
    /// Retries of idempotent calls.
    pub retries: u64,
    /// Token refreshes caused by a 401.
    pub unauthorized_refreshes: u64,
}

/// One finished AEP HTTP exchange, reported to the observer set with
/// [`AepClient::with_observer`].
#[derive(Debug, Clone, Copy)]
pub struct RequestEvent {
    /// Bounded operation label, e.g. `create_audience`.
    pub operation: &'static str,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// `ok` or the error category.
    pub outcome: &'static str,
    /// Time from send to the end of the body.
    pub duration: Duration,
}

pub(crate) type Observer = Arc<dyn Fn(&RequestEvent) + Send + Sync>;

/// Whether a request may be sent now; see [`AepClient::with_gate`].
pub(crate) type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    policy: EndpointPolicy,
    tokens: TokenCache,
    limiter: OrgRateLimiter,
    requests: AtomicU64,
    retries: AtomicU64,
    refreshes: AtomicU64,
    observer: Option<Observer>,
    gate: Option<Gate>,
}

/// The process-wide AEP client. Cheap to clone.
#[derive(Clone)]
pub struct AepClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for AepClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AepClient")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AepClient {
    /// Builds the client (rustls with the ring provider, HTTP/1.1 and HTTP/2).
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        // Idempotent: a provider installed earlier (by us or the process) stays.
        crate::install_crypto_provider();
        let endpoints = [&config.platform_url, &config.ims_url]
            .into_iter()
            .chain(config.allowed_endpoints.iter());
        let policy = EndpointPolicy::new(endpoints)
            .map_err(|(url, e)| Error::invalid(Call::Token, format!("endpoint {url} {e}")))?;
        // No proxies from the environment, no redirects: requests go only where the policy says.
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("audience-operator/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy();
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|_| Error::invalid(Call::Token, "the CA bundle is not valid PEM"))?;
            if certs.is_empty() {
                return Err(Error::invalid(Call::Token, "the CA bundle holds no certificate"));
            }
            builder = builder.tls_certs_only(certs);
        }
        let http = builder.build().map_err(|e| Error::from_transport(Call::Token, e))?;
        Ok(AepClient {
            inner: Arc::new(Inner {
                http,
                policy,
                limiter: OrgRateLimiter::new(config.requests_per_second),
                config,
                tokens: TokenCache::default(),
                requests: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                refreshes: AtomicU64::new(0),
                observer: None,
                gate: None,
            }),
        })
    }

    /// Reports every HTTP exchange to `observer` (e.g. for Prometheus counters). Call before
    /// cloning the client.
    pub fn with_observer(self, observer: impl Fn(&RequestEvent) + Send + Sync + 'static) -> Self {
        self.configure("observer", |inner| inner.observer = Some(Arc::new(observer)))
    }

    /// Asks `gate` right before each AEP request is sent (after the rate limiter's wait); when it
    /// answers false the request is not sent and the call fails as retryable (nothing was
    /// processed). Leader election closes it when this replica cannot prove that it still holds
    /// the lease, e.g. right after the process was frozen. Call before cloning the client.
    pub fn with_gate(self, gate: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.configure("gate", |inner| inner.gate = Some(Arc::new(gate)))
    }

    fn configure(self, what: &str, set: impl FnOnce(&mut Inner)) -> Self {
        match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                set(&mut inner);
                AepClient { inner: Arc::new(inner) }
            }
            Err(shared) => {
                tracing::warn!(what, "AEP client setting ignored: the client was already cloned");
                AepClient { inner: shared }
            }
        }
    }

    /// Forgets every token minted for `creds` (their Secret changed or is gone).
    pub fn forget_tokens(&self, creds: &Credentials) {
        self.inner.tokens.forget(creds);
    }

    /// The endpoint allow-list.
    pub fn policy(&self) -> &EndpointPolicy {
        &self.inner.policy
    }

    /// A handle for `creds` in `sandbox`.
    pub fn session(&self, creds: &Credentials, sandbox: &str) -> Session {
        Session {
            client: self.clone(),
            creds: Arc::new(creds.clone()),
            sandbox: sandbox.to_owned(),
            priority: Priority::Foreground,
        }
    }

    /// Counters so far.
    pub fn metrics(&self) -> ClientMetrics {
        ClientMetrics {
            token_requests: self.inner.tokens.requests(),
            requests: self.inner.requests.load(Ordering::Relaxed),
            retries: self.inner.retries.load(Ordering::Relaxed),
            unauthorized_refreshes: self.inner.refreshes.load(Ordering::Relaxed),
        }
    }
}

/// Calls on behalf of one credential in one sandbox. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    client: AepClient,
    creds: Arc<Credentials>,
    sandbox: String,
    /// The lane of the org's request budget its calls wait in.
    priority: Priority,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("client_id", &self.creds.client_id)
            .field("org_id", &self.creds.org_id)
            .field("sandbox", &self.sandbox)
            .finish()
    }
}

/// Reads a response body, failing once it grows past `max` bytes (a hostile or broken endpoint
/// cannot exhaust memory; the client's timeout bounds a slow one).
pub(crate) async fn read_capped(mut response: reqwest::Response, max: usize, call: Call) -> Result<Bytes, Error> {
    if response.content_length().is_some_and(|n| n > max as u64) {
        return Err(Error::too_large(call, max));
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Error::from_transport(call, e))? {
        if body.len() + chunk.len() > max {
            return Err(Error::too_large(call, max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Reads `Retry-After` (seconds or HTTP-date).
pub(crate) fn retry_after_header(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()))
}

impl Session {
    /// The same session, its calls waiting in the background lane of the org's request budget:
    /// they take a slot only while no foreground call of the org waits (periodic drift checks
    /// yield to creates, updates and runs).
    pub fn background(&self) -> Session {
        Session {
            priority: Priority::Background,
            ..self.clone()
        }
    }

    /// The sandbox this session acts in.
    pub fn sandbox(&self) -> &str {
        &self.sandbox
    }

    /// The org this session acts for.
    pub fn org_id(&self) -> &str {
        &self.creds.org_id
    }

    /// `POST /data/core/ais/external-audience/` → 202 with an operation ID. Never retried; a lost
    /// answer is [`ErrorKind::OutcomeUnknown`], a duplicate name [`ErrorKind::Conflict`].
    pub async fn create_audience(&self, req: &CreateAudienceRequest) -> Result<CreateAudienceResponse, Error> {
        let url = self.ais_url(&["external-audience", ""]);
        self.json(Call::CreateAudience, Method::POST, url, Some(req)).await
    }

    /// `GET /data/core/ais/external-audience/operations/{id}`.
    pub async fn get_operation(&self, operation_id: &str) -> Result<Operation, Error> {
        let url = self.ais_url(&["external-audience", "operations", operation_id]);
        self.json(Call::GetOperation, Method::GET, url, None::<&()>).await
    }

    /// `POST /data/core/ais/external-audience/{id}/runs`. Never retried; refusals (run in
    /// progress, guardrail) are [`ErrorKind::NotNow`].
    pub async fn start_run(&self, audience_id: &str, req: &StartRunRequest) -> Result<Run, Error> {
        let url = self.ais_url(&["external-audience", audience_id, "runs"]);
        self.json(Call::StartRun, Method::POST, url, Some(req)).await
    }

    /// `GET /data/core/ais/external-audience/{id}/runs/{runId}`.
    pub async fn get_run(&self, audience_id: &str, run_id: &str) -> Result<Run, Error> {
        let url = self.ais_url(&["external-audience", audience_id, "runs", run_id]);
        self.json(Call::GetRun, Method::GET, url, None::<&()>).await
    }

    /// `GET /data/core/ais/external-audience/{id}/runs` (newest first).
    pub async fn list_runs(&self, audience_id: &str) -> Result<Vec<Run>, Error> {
        let url = self.ais_url(&["external-audience", audience_id, "runs"]);
        let list: RunList = self.json(Call::ListRuns, Method::GET, url, None::<&()>).await?;
        Ok(list.runs)
    }

    /// `PATCH /data/core/ais/external-audience/{id}` with replace semantics (hence retried).
    pub async fn patch_audience(
        &self,
        audience_id: &str,
        req: &PatchAudienceRequest,
    ) -> Result<ExternalAudience, Error> {
        if req.is_empty() {
            return Err(Error::invalid(Call::PatchAudience, "nothing to patch"));
        }
        let url = self.ais_url(&["external-audience", audience_id]);
        self.json(Call::PatchAudience, Method::PATCH, url, Some(req)).await
    }

    /// `DELETE /data/core/ais/external-audience/{id}`. A 404 is returned as
    /// [`ErrorKind::NotFound`]; the caller decides whether that means done.
    pub async fn delete_audience(&self, audience_id: &str) -> Result<(), Error> {
        let url = self.ais_url(&["external-audience", audience_id]);
        self.execute(Call::DeleteAudience, Method::DELETE, url, None::<&()>)
            .await
            .map(|_| ())
    }

    /// `POST /data/core/ais/external-audience/extend-ttl/{id}` (no body; reference §2.10): pushes
    /// the data expiration out by the audience's TTL and re-ingests its last successful data.
    /// Not idempotent: each call extends again, so a lost answer is [`ErrorKind::OutcomeUnknown`].
    pub async fn extend_ttl(&self, audience_id: &str) -> Result<ExtendTtlResponse, Error> {
        let url = self.ais_url(&["external-audience", "extend-ttl", audience_id]);
        self.json(Call::ExtendTtl, Method::POST, url, None::<&()>).await
    }

    /// `GET /data/core/ups/audiences/{id}`.
    pub async fn get_audience(&self, audience_id: &str) -> Result<UpsAudience, Error> {
        let url = self.ups_url(&["audiences", audience_id]);
        self.json(Call::GetAudience, Method::GET, url, None::<&()>).await
    }

    /// External audiences of this sandbox whose name equals `name` exactly: pages through
    /// `GET /data/core/ups/audiences?name=…` (a case-insensitive contains filter) following
    /// `_links.next`, keeping exact, `CUSTOM_UPLOAD`/`ExternalSegment` matches (reference §2.4).
    pub async fn find_audiences_by_name(&self, name: &str) -> Result<Vec<UpsAudience>, Error> {
        let mut url = self.ups_url(&["audiences"]);
        url.query_pairs_mut()
            .append_pair("name", name)
            .append_pair("limit", &FIND_PAGE_SIZE.to_string());
        self.collect_pages(url, "name", |a| a.name == name && a.is_external())
            .await
    }

    /// Every audience of this sandbox that the plain list returns (not inactive or deleted ones),
    /// optionally only those whose name contains `name_contains` (case-insensitive, AEP's `name`
    /// filter): pages through `GET /data/core/ups/audiences` following `_links.next`, at most
    /// 1,000 pages of 100.
    pub async fn list_audiences(&self, name_contains: Option<&str>) -> Result<Vec<UpsAudience>, Error> {
        let mut url = self.ups_url(&["audiences"]);
        let filter = match name_contains {
            Some(name) => {
                url.query_pairs_mut().append_pair("name", name);
                "name"
            }
            None => "limit",
        };
        url.query_pairs_mut().append_pair("limit", &LIST_PAGE_SIZE.to_string());
        let needle = name_contains.map(str::to_lowercase);
        self.collect_pages(url, filter, |a| {
            needle.as_deref().is_none_or(|n| a.name.to_lowercase().contains(n))
        })
        .await
    }

    /// The sandbox's plain audience list, like [`Session::list_audiences`] without a filter, but
    /// only when it fits in `max_pages` pages of 100: `None` once a page beyond them would be
    /// needed (the caller then reads what it needs one by one, which costs less).
    pub async fn list_audiences_within(&self, max_pages: usize) -> Result<Option<Vec<UpsAudience>>, Error> {
        let mut url = self.ups_url(&["audiences"]);
        url.query_pairs_mut().append_pair("limit", &LIST_PAGE_SIZE.to_string());
        let (found, complete) = self
            .collect_pages_within(url, "limit", |_| true, max_pages.clamp(1, MAX_PAGES))
            .await?;
        Ok(complete.then_some(found))
    }

    /// Audiences of this sandbox carrying `custom_audience_id` (reference §2.4: the `/ups` record's
    /// `audienceId` is the caller's `customAudienceId` for external audiences). Pages through
    /// `GET /data/core/ups/audiences?property=audienceId==…`, which also returns inactive audiences,
    /// and keeps exact matches only. Empty when AEP does not echo the identifier.
    pub async fn find_audiences_by_custom_id(&self, custom_audience_id: &str) -> Result<Vec<UpsAudience>, Error> {
        let mut url = self.ups_url(&["audiences"]);
        url.query_pairs_mut()
            .append_pair("property", &format!("audienceId=={custom_audience_id}"))
            .append_pair("limit", &FIND_PAGE_SIZE.to_string());
        self.collect_pages(url, "property", |a| {
            a.audience_id.as_deref() == Some(custom_audience_id)
        })
        .await
    }

    /// `GET /data/foundation/flowservice/flows/{id}`: the flow (the answer is `{"items":[flow]}`,
    /// reference §1.3), its etag as AEP gives it. A 404 or an empty `items` is
    /// [`ErrorKind::NotFound`].
    pub async fn get_flow(&self, flow_id: &str) -> Result<Flow, Error> {
        if flow_id.trim().is_empty() {
            return Err(Error::invalid(Call::GetFlow, "the flow id is empty"));
        }
        let url = self.flow_url(&["flows", flow_id]);
        let list: FlowList = self.json(Call::GetFlow, Method::GET, url, None::<&()>).await?;
        let mut items = list.items;
        let index = items.iter().position(|f| f.id == flow_id).unwrap_or(0);
        if index >= items.len() {
            return Err(Error::empty_answer(
                Call::GetFlow,
                format!("flows not found with id = [{flow_id}]"),
            ));
        }
        Ok(items.swap_remove(index))
    }

    /// `GET /data/foundation/flowservice/flows` with one `property=<path>==<value>` per entry of
    /// `filters` (ANDed; e.g. [`crate::flows::FLOW_FILTER_IS_DESTINATION`] with `true`, or
    /// [`crate::flows::FLOW_FILTER_SELECTOR_ID`] with an audience id; reference §1.4), 100 per
    /// page, following `_links.next.href` (its `continuationToken`) on the configured host, at most
    /// 1,000 pages. Newest first, as AEP orders them.
    pub async fn list_flows(&self, filters: &[(&str, &str)]) -> Result<Vec<Flow>, Error> {
        let mut url = self.flow_url(&["flows"]);
        {
            let mut query = url.query_pairs_mut();
            for (path, value) in filters {
                query.append_pair("property", &format!("{path}=={value}"));
            }
            query.append_pair("limit", &FLOW_PAGE_SIZE.to_string());
        }
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            if !seen.insert(url.to_string()) {
                break;
            }
            let page: FlowList = self
                .json(Call::ListFlows, Method::GET, url.clone(), None::<&()>)
                .await?;
            let empty = page.items.is_empty();
            found.extend(page.items);
            match (empty, self.flow_next_url(&url, page.links.as_ref())) {
                (false, Some(next)) => url = next,
                _ => break,
            }
        }
        Ok(found)
    }

    /// `PATCH /data/foundation/flowservice/flows/{id}` with `If-Match: <etag>` (the etag of the
    /// read the operations were decided from, as AEP gave it; a bare value is wrapped in double
    /// quotes) and the JSON-Patch `ops` (reference §1.5–§1.8). Any 2xx only means accepted
    /// (§6.3): `Some(new etag)` for a 200 `{id, etag}`, `None` for a 202 (or any answer without an
    /// etag); read the flow to see the change. Never retried: a stale etag (412) is
    /// [`ErrorKind::Conflict`] (read again, decide again), a lost answer
    /// [`ErrorKind::OutcomeUnknown`] (read again: the flow tells whether it was applied).
    pub async fn patch_flow(&self, flow_id: &str, etag: &str, ops: &[FlowPatchOp]) -> Result<Option<String>, Error> {
        if flow_id.trim().is_empty() {
            return Err(Error::invalid(Call::PatchFlow, "the flow id is empty"));
        }
        let etag = etag.trim();
        if etag.is_empty() {
            return Err(Error::invalid(
                Call::PatchFlow,
                "the etag is empty: read the flow first and send its etag",
            ));
        }
        if ops.is_empty() {
            return Err(Error::invalid(Call::PatchFlow, "nothing to patch"));
        }
        let if_match = if etag.starts_with('"') || etag.starts_with("W/") {
            etag.to_owned()
        } else {
            format!("\"{etag}\"")
        };
        let url = self.flow_url(&["flows", flow_id]);
        let (_, bytes) = self
            .execute_with(
                Call::PatchFlow,
                Method::PATCH,
                url,
                Some(ops),
                &[("if-match", if_match.as_str())],
            )
            .await?;
        let etag = serde_json::from_slice::<PatchFlowResponse>(&bytes)
            .ok()
            .map(|r| r.etag)
            .filter(|e| !e.trim().is_empty());
        Ok(etag)
    }

    /// Runs of one flow, newest first: `GET /data/foundation/flowservice/runs?property=flowId==…`
    /// (reference §1.12, §6.7), following `_links.next.href` for at most 1,000 runs.
    pub async fn list_flow_runs(&self, flow_id: &str) -> Result<Vec<FlowRun>, Error> {
        self.flow_runs(&[format!("flowId=={flow_id}")]).await
    }

    /// Runs of one flow that export one audience, newest first: [`Session::list_flow_runs`] with
    /// `property=metrics.recordSummary.targetSummaries[].entitySummaries[].id==segment:<id>`
    /// (D-FILTER; reference §1.12).
    pub async fn list_audience_flow_runs(&self, flow_id: &str, audience_id: &str) -> Result<Vec<FlowRun>, Error> {
        self.flow_runs(&[
            format!("flowId=={flow_id}"),
            format!(
                "metrics.recordSummary.targetSummaries[].entitySummaries[].id=={}",
                segment_entity_id(audience_id)
            ),
        ])
        .await
    }

    async fn flow_runs(&self, properties: &[String]) -> Result<Vec<FlowRun>, Error> {
        let mut url = self.flow_url(&["runs"]);
        {
            let mut query = url.query_pairs_mut();
            for property in properties {
                query.append_pair("property", property);
            }
            query.append_pair("limit", &FLOW_PAGE_SIZE.to_string());
        }
        let mut runs: Vec<FlowRun> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_RUN_PAGES {
            if !seen.insert(url.to_string()) {
                break;
            }
            let page: FlowRunList = self
                .json(Call::ListFlowRuns, Method::GET, url.clone(), None::<&()>)
                .await?;
            let empty = page.items.is_empty();
            runs.extend(page.items);
            match (empty, self.flow_next_url(&url, page.links.as_ref())) {
                (false, Some(next)) => url = next,
                _ => break,
            }
        }
        // Stable: runs without a time keep AEP's order.
        runs.sort_by_key(|r| std::cmp::Reverse(r.created_at.or(r.started_at()).unwrap_or(i64::MIN)));
        Ok(runs)
    }

    /// `GET /data/foundation/flowservice/runs/{id}` (the answer is `{"items":[run]}`, or the run
    /// itself). An empty `items` is [`ErrorKind::NotFound`].
    pub async fn get_flow_run(&self, run_id: &str) -> Result<FlowRun, Error> {
        if run_id.trim().is_empty() {
            return Err(Error::invalid(Call::GetFlowRun, "the run id is empty"));
        }
        let url = self.flow_url(&["runs", run_id]);
        let value: serde_json::Value = self.json(Call::GetFlowRun, Method::GET, url, None::<&()>).await?;
        if value.get("items").is_some() {
            let list: FlowRunList = serde_json::from_value(value).unwrap_or_default();
            return list
                .items
                .into_iter()
                .next()
                .ok_or_else(|| Error::empty_answer(Call::GetFlowRun, format!("runs not found with id = [{run_id}]")));
        }
        serde_json::from_value(value).map_err(|e| Error::decode(Call::GetFlowRun, 200, e))
    }

    /// `POST /data/core/activation/disflowprovider/adhocrun` (v2 `Accept` header; reference
    /// §1.14): exports the audiences (system ids) of `flow_id`, a batch destination, now. Not
    /// idempotent, never retried: a lost answer is [`ErrorKind::OutcomeUnknown`] (the flow's runs
    /// tell whether it happened). AEP's documented refusals (a run already going on; not part of
    /// the dataflow or out of schedule range; more than 80 audiences) are
    /// [`ErrorKind::Terminal`] with AEP's `message` as the error message.
    pub async fn adhoc_run<S: AsRef<str>>(&self, flow_id: &str, audience_ids: &[S]) -> Result<Vec<AdhocOrder>, Error> {
        if flow_id.trim().is_empty() {
            return Err(Error::invalid(Call::AdhocRun, "the flow id is empty"));
        }
        if audience_ids.is_empty() {
            return Err(Error::invalid(Call::AdhocRun, "no audience to export"));
        }
        let body = AdhocRequest {
            activation_info: std::collections::BTreeMap::from([(
                flow_id.to_owned(),
                audience_ids.iter().map(|a| a.as_ref().to_owned()).collect(),
            )]),
        };
        let url = self.service_url("activation", &["disflowprovider", "adhocrun"]);
        let answer: AdhocResponse = self
            .json_with(
                Call::AdhocRun,
                Method::POST,
                url,
                Some(&body),
                &[("accept", ADHOC_ACCEPT_V2)],
            )
            .await?;
        Ok(answer.order)
    }

    /// `GET /data/core/ups/segment/jobs?status=…&sort=creationTime:desc&limit=…` (reference §2.3,
    /// §6.8): the newest `limit` segmentation jobs (1..=100), optionally of one status
    /// (`SUCCEEDED`, …). One page.
    pub async fn list_segment_jobs(&self, status: Option<&str>, limit: u32) -> Result<Vec<SegmentJob>, Error> {
        let mut url = self.ups_url(&["segment", "jobs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(status) = status {
                query.append_pair("status", status);
            }
            query
                .append_pair("sort", "creationTime:desc")
                .append_pair("limit", &limit.clamp(1, 100).to_string());
        }
        let list: UpsList<SegmentJob> = self.json(Call::ListSegmentJobs, Method::GET, url, None::<&()>).await?;
        Ok(list.children)
    }

    /// `GET /data/core/ups/config/schedules` (reference §2.2): the sandbox's segmentation
    /// schedules, among them the daily `batch_segmentation` one.
    pub async fn list_schedules(&self) -> Result<Vec<SegmentSchedule>, Error> {
        let url = self.ups_url(&["config", "schedules"]);
        let list: UpsList<SegmentSchedule> = self.json(Call::ListSchedules, Method::GET, url, None::<&()>).await?;
        Ok(list.children)
    }

    /// The next page of a Flow Service list: the `continuationToken` of `_links.next.href` put on
    /// the current URL (which keeps the filters and the limit), or else the href itself (absolute,
    /// `/…`, or relative to the Flow Service base), always on the configured host.
    fn flow_next_url(&self, current: &Url, links: Option<&NextLink>) -> Option<Url> {
        let href = links?.next.as_ref()?.href.trim().to_owned();
        if href.is_empty() {
            return None;
        }
        let (path, query) = match Url::parse(&href) {
            Ok(abs) => (abs.path().to_owned(), abs.query().map(str::to_owned)),
            Err(_) => {
                let (p, q) = href.split_once('?').unwrap_or((href.as_str(), ""));
                let path = if p.starts_with('/') {
                    p.to_owned()
                } else {
                    format!("{}/{}", self.flow_url(&[]).path().trim_end_matches('/'), p)
                };
                (path, (!q.is_empty()).then(|| q.to_owned()))
            }
        };
        let token = query.as_deref().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "continuationToken")
                .map(|(_, v)| v.into_owned())
        });
        if let Some(token) = token {
            let kept: Vec<(String, String)> = current
                .query_pairs()
                .filter(|(k, _)| k != "continuationToken")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut next = current.clone();
            next.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("continuationToken", &token);
            return Some(next);
        }
        let mut next = self.platform_url().clone();
        next.set_path(&path);
        next.set_query(query.as_deref());
        Some(next)
    }

    /// Follows `_links.next` / `_page.next` from `url`, keeping records that pass `keep`. The
    /// query parameter `filter` is carried over to every page.
    async fn collect_pages(
        &self,
        url: Url,
        filter: &str,
        keep: impl Fn(&UpsAudience) -> bool,
    ) -> Result<Vec<UpsAudience>, Error> {
        Ok(self.collect_pages_within(url, filter, keep, MAX_PAGES).await?.0)
    }

    /// Pages through a `/ups/audiences` list, at most `max_pages` pages: what `keep` keeps, and
    /// whether the list ended within them.
    async fn collect_pages_within(
        &self,
        mut url: Url,
        filter: &str,
        keep: impl Fn(&UpsAudience) -> bool,
        max_pages: usize,
    ) -> Result<(Vec<UpsAudience>, bool), Error> {
        let filter_value = url
            .query_pairs()
            .find(|(k, _)| k == filter)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..max_pages {
            if !seen.insert(url.to_string()) {
                return Ok((found, true));
            }
            let page: UpsAudienceList = self
                .json(Call::FindAudiences, Method::GET, url.clone(), None::<&()>)
                .await?;
            let empty = page.children.is_empty();
            found.extend(page.children.into_iter().filter(|a| keep(a)));
            match (
                empty,
                self.next_page_url(&url, &page.links, &page.page, filter, &filter_value),
            ) {
                (false, Some(next)) => url = next,
                _ => return Ok((found, true)),
            }
        }
        Ok((found, false))
    }

    /// Resolves the next page: `_links.next.href` (absolute, `/…`, or `@/…` relative to
    /// `/data/core/ups`), falling back on `_page.next` as a `start` offset. Always stays on the
    /// configured host (the token must not leak elsewhere) and keeps the `filter` parameter.
    fn next_page_url(
        &self,
        current: &Url,
        links: &Option<super::types::UpsLinks>,
        page: &Option<super::types::UpsPage>,
        filter: &str,
        filter_value: &str,
    ) -> Option<Url> {
        let href = links
            .as_ref()
            .and_then(|l| l.next.as_ref())
            .map(|l| l.href.trim().to_owned())
            .filter(|h| !h.is_empty());
        let mut next = match href {
            Some(href) => {
                let (path, query) = match Url::parse(&href) {
                    Ok(abs) => (abs.path().to_owned(), abs.query().map(str::to_owned)),
                    Err(_) => {
                        let (p, q) = href.split_once('?').unwrap_or((href.as_str(), ""));
                        let path = if let Some(rest) = p.strip_prefix('@') {
                            let base = self.ups_url(&[]);
                            format!("{}{}", base.path().trim_end_matches('/'), rest)
                        } else if p.starts_with('/') {
                            p.to_owned()
                        } else {
                            format!("{}/{}", self.ups_url(&[]).path().trim_end_matches('/'), p)
                        };
                        (path, (!q.is_empty()).then(|| q.to_owned()))
                    }
                };
                let mut url = self.platform_url().clone();
                url.set_path(&path);
                url.set_query(query.as_deref());
                url
            }
            None => {
                let start = page.as_ref()?.next.as_ref()?;
                let start = match start {
                    serde_json::Value::String(s) if !s.trim().is_empty() => s.trim().to_owned(),
                    serde_json::Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                let mut url = current.clone();
                let kept: Vec<(String, String)> = current
                    .query_pairs()
                    .filter(|(k, _)| k != "start")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.query_pairs_mut()
                    .clear()
                    .extend_pairs(kept)
                    .append_pair("start", &start);
                url
            }
        };
        if !next.query_pairs().any(|(k, _)| k == filter) {
            next.query_pairs_mut().append_pair(filter, filter_value);
        }
        Some(next)
    }

    /// The AEP endpoint this session sends to: the Secret's `platformUrl`, else the operator's.
    pub fn platform_url(&self) -> &Url {
        self.creds
            .platform_url
            .as_ref()
            .unwrap_or(&self.client.inner.config.platform_url)
    }

    fn ims_url(&self) -> &Url {
        self.creds.ims_url.as_ref().unwrap_or(&self.client.inner.config.ims_url)
    }

    fn service_url(&self, service: &str, segments: &[&str]) -> Url {
        let mut url = self.platform_url().clone();
        url.set_query(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["data", "core", service]).extend(segments);
        }
        url
    }

    fn ais_url(&self, segments: &[&str]) -> Url {
        self.service_url("ais", segments)
    }

    fn ups_url(&self, segments: &[&str]) -> Url {
        self.service_url("ups", segments)
    }

    /// `/data/foundation/flowservice/<segments>` on the session's platform host.
    fn flow_url(&self, segments: &[&str]) -> Url {
        let mut url = self.platform_url().clone();
        url.set_query(None);
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["data", "foundation", "flowservice"])
                .extend(segments);
        }
        url
    }

    async fn json<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<T, Error> {
        self.json_with(call, method, url, body, &[]).await
    }

    /// [`Session::json`] with extra request headers (`If-Match`, `Accept`).
    async fn json_with<T: DeserializeOwned, B: Serialize + ?Sized>(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&B>,
        headers: &[(&'static str, &str)],
    ) -> Result<T, Error> {
        let (status, bytes) = self.execute_with(call, method, url, body, headers).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::decode(call, status, e))
    }

    /// Sends one logical call: retries (idempotent calls only) around [`Session::attempt`].
    async fn execute<B: Serialize + ?Sized>(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(u16, Bytes), Error> {
        self.execute_with(call, method, url, body, &[]).await
    }

    /// [`Session::execute`] with extra request headers.
    async fn execute_with<B: Serialize + ?Sized>(
        &self,
        call: Call,
        method: Method,
        url: Url,
        body: Option<&B>,
        headers: &[(&'static str, &str)],
    ) -> Result<(u16, Bytes), Error> {
        let body = match body {
            Some(b) => Some(
                serde_json::to_vec(b)
                    .map_err(|e| Error::invalid(call, format!("request body could not be encoded: {e}")))?,
            ),
            None => None,
        };
        let inner = &self.client.inner;
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(MIN_BACKOFF)
            .with_max_delay(inner.config.max_backoff)
            .with_max_times(inner.config.max_retries as usize)
            .with_jitter()
            .build();
        loop {
            let error = match self.attempt(call, &method, &url, body.as_deref(), headers).await {
                Ok(ok) => return Ok(ok),
                Err(e) => e,
            };
            let ErrorKind::Retryable { retry_after } = error.kind() else {
                return Err(error);
            };
            if !call.is_idempotent() {
                return Err(error);
            }
            let Some(step) = backoff.next() else {
                return Err(error);
            };
            let wait = match retry_after {
                // The server asks for more patience than we spend in-process: hand it back.
                Some(hint) if hint > inner.config.max_backoff => return Err(error),
                Some(hint) => step.max(hint),
                None => step,
            };
            inner.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                operation = call.as_str(),
                status = error.status(),
                category = error.category(),
                wait_ms = wait.as_millis() as u64,
                "Retrying AEP call"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt, plus one token refresh and resend when AEP answers 401 (or the documented
    /// `100911-400` invalid-token code).
    async fn attempt(
        &self,
        call: Call,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        headers: &[(&'static str, &str)],
    ) -> Result<(u16, Bytes), Error> {
        let inner = &self.client.inner;
        // Checked before any connection, whatever the caller validated.
        inner
            .policy
            .check_request(url)
            .map_err(|e| Error::invalid(call, format!("platform endpoint {e}")))?;
        inner
            .policy
            .check(self.ims_url())
            .map_err(|e| Error::invalid(Call::Token, format!("IMS endpoint {e}")))?;
        let mut refreshed = false;
        loop {
            let token = inner
                .tokens
                .token(
                    &inner.http,
                    self.ims_url(),
                    &self.creds,
                    inner.config.max_response_bytes,
                    inner.observer.as_ref(),
                )
                .await?;
            inner.limiter.acquire_with(&self.creds.org_id, self.priority).await;
            let (status, headers, bytes) = self.send(call, method, url, body, headers, &token).await?;
            if (200..300).contains(&status) {
                return Ok((status, bytes));
            }
            let code = error_code_from_body(&bytes);
            let token_refused = status == 401 || (status == 400 && code.as_deref() == Some("100911-400"));
            if token_refused && !refreshed {
                refreshed = true;
                inner.refreshes.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    operation = call.as_str(),
                    status,
                    "AEP refused the token; refreshing once"
                );
                inner.tokens.invalidate(&self.creds, &token).await;
                continue;
            }
            let error = Error::from_status(
                call,
                status,
                retry_after_header(&headers),
                code,
                error_message_from_body(&bytes),
            );
            tracing::debug!(
                operation = call.as_str(),
                status,
                kind = %error.kind(),
                "AEP call failed"
            );
            return Err(error);
        }
    }

    async fn send(
        &self,
        call: Call,
        method: &Method,
        url: &Url,
        body: Option<&[u8]>,
        extra_headers: &[(&'static str, &str)],
        token: &AccessToken,
    ) -> Result<(u16, HeaderMap, Bytes), Error> {
        let inner = &self.client.inner;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| Error::invalid(call, "IMS token is not a valid header value"))?;
        auth.set_sensitive(true);
        let header = |name: &str, value: &str| {
            HeaderValue::from_str(value)
                .map_err(|_| Error::invalid(call, format!("{name} is not a valid header value")))
        };
        let mut request = inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, auth)
            .header("x-api-key", header("client id", &self.creds.client_id)?)
            .header("x-gw-ims-org-id", header("org id", &self.creds.org_id)?)
            .header("x-sandbox-name", header("sandbox", &self.sandbox)?);
        for (name, value) in extra_headers {
            request = request.header(*name, header(name, value)?);
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
                .body(body.to_vec());
        }
        if inner.gate.as_ref().is_some_and(|open| !open()) {
            tracing::debug!(operation = call.as_str(), "AEP request not sent: the gate is closed");
            return Err(Error::gated(call));
        }
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = async {
            let response = request.send().await.map_err(|e| Error::from_transport(call, e))?;
            let status = response.status();
            let headers = response.headers().clone();
            let bytes = read_capped(response, inner.config.max_response_bytes, call).await?;
            Ok::<_, Error>((status, headers, bytes))
        }
        .await;
        let duration = started.elapsed();
        let (status, outcome) = match &result {
            Ok((s, _, _)) if s.is_success() => (Some(s.as_u16()), "ok"),
            Ok((s, _, _)) => (Some(s.as_u16()), super::error::status_category(s.as_u16())),
            Err(e) => (e.status(), e.category()),
        };
        tracing::debug!(
            operation = call.as_str(),
            method = %method,
            status,
            sandbox = %self.sandbox,
            duration_ms = duration.as_millis() as u64,
            "AEP request"
        );
        if let Some(observer) = &inner.observer {
            observer(&RequestEvent {
                operation: call.as_str(),
                status,
                outcome,
                duration,
            });
        }
        let (status, headers, bytes) = result?;
        Ok((status.as_u16(), headers, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_redacts_the_secret() {
        let creds = Credentials::new("cid", "very-secret-value", "ORG@AdobeOrg");
        let debug = format!("{creds:?}");
        assert!(debug.contains("cid"));
        assert!(!debug.contains("very-secret-value"));
        let session = AepClient::new(ClientConfig::default()).unwrap().session(&creds, "prod");
        assert!(!format!("{session:?}").contains("very-secret-value"));
    }

    #[test]
    fn fingerprint_changes_with_every_field_including_the_secret() {
        let a = Credentials::new("cid", "s1", "ORG@AdobeOrg");
        let mut b = a.clone();
        b.client_secret = SecretString::from("s2".to_owned());
        let mut c = a.clone();
        c.scopes = "openid".into();
        let mut d = a.clone();
        d.ims_url = Some("http://127.0.0.1:1".parse().unwrap());
        let prints = [a.fingerprint(), b.fingerprint(), c.fingerprint(), d.fingerprint()];
        for (i, x) in prints.iter().enumerate() {
            assert_eq!(x.len(), 64);
            assert!(!x.contains("s1"));
            for y in &prints[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }

    #[test]
    fn urls_follow_the_seed_paths() {
        let client = AepClient::new(ClientConfig::default()).unwrap();
        let s = client.session(&Credentials::new("c", "s", "o"), "dev1");
        assert_eq!(
            s.ais_url(&["external-audience", ""]).as_str(),
            "https://platform.adobe.io/data/core/ais/external-audience/"
        );
        assert_eq!(
            s.ais_url(&["external-audience", "a b", "runs"]).as_str(),
            "https://platform.adobe.io/data/core/ais/external-audience/a%20b/runs"
        );
        let current = s.ups_url(&["audiences"]);
        let links = Some(super::super::types::UpsLinks {
            next: Some(super::super::types::Link {
                href: "@/audiences?start=1&limit=1&totalCount=1".into(),
            }),
        });
        let next = s.next_page_url(&current, &links, &None, "name", "Churn").unwrap();
        assert_eq!(
            next.as_str(),
            "https://platform.adobe.io/data/core/ups/audiences?start=1&limit=1&totalCount=1&name=Churn"
        );
        let foreign = Some(super::super::types::UpsLinks {
            next: Some(super::super::types::Link {
                href: "https://evil.example/data/core/ups/audiences?start=2&name=x".into(),
            }),
        });
        let next = s.next_page_url(&current, &foreign, &None, "name", "x").unwrap();
        assert_eq!(next.host_str(), Some("platform.adobe.io"));
    }

    #[test]
    fn flow_service_pages_keep_the_filters_and_the_host() {
        let client = AepClient::new(ClientConfig::default()).unwrap();
        let s = client.session(&Credentials::new("c", "s", "o"), "dev1");
        assert_eq!(
            s.flow_url(&["flows", "f 1"]).as_str(),
            "https://platform.adobe.io/data/foundation/flowservice/flows/f%201"
        );
        let mut current = s.flow_url(&["flows"]);
        current
            .query_pairs_mut()
            .append_pair("property", "state==enabled")
            .append_pair("limit", "100");
        let link = |href: &str| NextLink {
            next: Some(super::super::types::Link { href: href.into() }),
        };
        // The token is put on the current URL: the filters and the limit stay.
        let next = s
            .flow_next_url(
                &current,
                Some(&link("https://evil.example/flows?continuationToken=abc")),
            )
            .unwrap();
        assert_eq!(
            next.as_str(),
            "https://platform.adobe.io/data/foundation/flowservice/flows?property=state%3D%3Denabled&limit=100&continuationToken=abc"
        );
        let again = s
            .flow_next_url(&next, Some(&link("/flows?continuationToken=def")))
            .unwrap();
        assert_eq!(again.query_pairs().filter(|(k, _)| k == "continuationToken").count(), 1);
        // Without a token the href is followed, on the configured host.
        let plain = s.flow_next_url(&current, Some(&link("runs?page=2"))).unwrap();
        assert_eq!(
            plain.as_str(),
            "https://platform.adobe.io/data/foundation/flowservice/runs?page=2"
        );
        assert!(s.flow_next_url(&current, Some(&link(" "))).is_none());
        assert!(s.flow_next_url(&current, None).is_none());
    }
}
