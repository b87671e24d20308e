//! HTTP surface of the emulated service: IMS `/ims/token/v3`, every `/data/core/ais` external-audience
//! route with the older spellings of reference §2.12, `/data/core/ups/audiences`, and the
//! activation surface (Flow Service flows and runs, ad hoc activation, segmentation jobs and
//! schedules; in [`activation`]); plus the
//! gateway-style authentication (with per-credential entitlements), fault injection, lost answers
//! and per-route and per-operation request accounting around them.
//!
//! Every error code sent comes from the catalogue of reference §6.1/§6.3; answers the catalogue has
//! no code for (injected 429/503) carry none. Handlers hold the world lock only for in-memory work
//! and never across an `.await` (a lost answer in `timeout` mode sleeps after the lock is
//! released). Tokens and secrets are never logged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, MatchedPath, Path, Query, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use serde_json::{Value, json};

use aep::types::{
    CreateAudienceResponse, ExtendTtlResponse, GatewayErrorBody, ImsErrorBody, ImsTokenResponse, Link, RunList,
    RunStatus, ServiceErrorBody, UpsAudience, UpsAudienceList, UpsLinks, UpsPage,
};

use super::Shared;
use super::config::{
    CustomAudienceIdModel, DuplicateNames, Entitlement, KNOWN_SCOPES, LostAnswer, LostMode, RunWindow, Visibility, take,
};
use super::conn::ConnHandle;
use super::state::{AudienceRec, OperationRec, RunRec, Stats, Tenant, TokenRec, World, actor, now_ms, utc_day};
use super::validate;

type AppState = Arc<Shared>;

/// The authenticated caller, inserted by the auth layer.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    org: String,
    sandbox: String,
    client_id: String,
}

/// Marks a response whose connection was dropped (for the stats layer).
#[derive(Debug, Clone, Copy)]
struct Dropped;

const AIS: &str = "/data/core/ais";
const UPS: &str = "/data/core/ups";
/// Flow Service (destination dataflows and their runs).
const FLOWSERVICE: &str = "/data/foundation/flowservice";
/// The ad hoc activation route.
const ADHOC: &str = "/data/core/activation/disflowprovider/adhocrun";

mod activation;

/// Adds `path` and `path/` with the same handlers.
fn both(router: Router<AppState>, path: &str, handler: MethodRouter<AppState>) -> Router<AppState> {
    router.route(path, handler.clone()).route(&format!("{path}/"), handler)
}

/// The service routes (AEP and IMS), with auth, faults and stats layers.
pub(crate) fn service_router(shared: AppState) -> Router<AppState> {
    let ea = format!("{AIS}/external-audience");
    let mut aep = Router::new()
        .route(&ea, post(create))
        .route(&format!("{ea}/"), post(create))
        .route(&format!("{ea}/submit"), post(create));
    for plural in ["external-audience", "external-audiences"] {
        for kind in ["operations", "task"] {
            aep = both(
                aep,
                &format!("{AIS}/{plural}/{kind}/{{operation_id}}"),
                get(get_operation),
            );
        }
    }
    aep = both(aep, &format!("{ea}/extend-ttl/{{id}}"), post(extend_ttl));
    aep = both(
        aep,
        &format!("{ea}/{{id}}"),
        axum::routing::patch(patch_audience).delete(delete_audience),
    );
    aep = both(aep, &format!("{ea}/{{id}}/runs"), post(start_run).get(list_runs));
    aep = both(aep, &format!("{ea}/{{id}}/run"), post(start_run).get(list_runs));
    aep = both(aep, &format!("{ea}/{{id}}/runs/{{run_id}}"), get(get_run));
    aep = both(aep, &format!("{ea}/{{id}}/run/{{run_id}}"), get(get_run));
    aep = both(aep, &format!("{UPS}/audiences"), get(list_ups));
    aep = both(aep, &format!("{UPS}/audiences/{{id}}"), get(get_ups).delete(delete_ups));
    aep = both(aep, &format!("{UPS}/segment/jobs"), get(activation::list_segment_jobs));
    aep = both(aep, &format!("{UPS}/config/schedules"), get(activation::list_schedules));
    aep = both(aep, &format!("{FLOWSERVICE}/flows"), get(activation::list_flows));
    aep = both(
        aep,
        &format!("{FLOWSERVICE}/flows/{{id}}"),
        get(activation::get_flow).patch(activation::patch_flow),
    );
    aep = both(aep, &format!("{FLOWSERVICE}/runs"), get(activation::list_flow_runs));
    aep = both(
        aep,
        &format!("{FLOWSERVICE}/runs/{{id}}"),
        get(activation::get_flow_run),
    );
    aep = both(aep, ADHOC, post(activation::adhoc_run));
    let aep = aep
        .route_layer(from_fn_with_state(shared.clone(), authenticate))
        .route_layer(from_fn_with_state(shared.clone(), inject_faults));
    Router::new()
        .merge(aep)
        .route("/ims/token/v3", post(ims_token))
        .route_layer(from_fn_with_state(shared, account))
}

// ---------------------------------------------------------------------------------------------
// Error bodies
// ---------------------------------------------------------------------------------------------

/// AEP service error (reference §7.2.15).
pub(crate) fn service_error(status: StatusCode, code: &str, title: &str, detail: impl Into<String>) -> Response {
    let body = ServiceErrorBody {
        r#type: Some(format!("http://ns.adobe.com/aep/errors/AIS-{code}")),
        status: Some(status.as_u16()),
        title: Some(title.to_owned()),
        detail: Some(detail.into()),
        error_code: Some(code.to_owned()),
        report: None,
    };
    (status, Json(body)).into_response()
}

fn bad_request(detail: impl Into<String>) -> Response {
    service_error(StatusCode::BAD_REQUEST, "100910-400", "BAD_REQUEST", detail)
}

fn not_found(what: &str, id: &str) -> Response {
    service_error(
        StatusCode::NOT_FOUND,
        "100940-404",
        "NOT_FOUND",
        format!("{what} {id} not found in this sandbox"),
    )
}

/// An error the catalogue has no platform code for (429, 503): `{title, status, detail}` only.
fn uncoded_error(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    let body = ServiceErrorBody {
        r#type: None,
        status: Some(status.as_u16()),
        title: Some(title.to_owned()),
        detail: Some(detail.into()),
        error_code: None,
        report: None,
    };
    (status, Json(body)).into_response()
}

fn with_retry_after(mut response: Response, secs: u64) -> Response {
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}

fn internal_error() -> Response {
    service_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "100970-500",
        "INTERNAL_SERVER_ERROR",
        "Internal server error",
    )
}

/// A start-run refusal (run in progress, guardrail) with the configured status: 409 is the
/// catalogue's `100950-409`, 429 carries `Retry-After` and no platform code, anything else is 422
/// `100960-422`.
fn refusal(status: u16, retry_after_secs: u64, detail: String) -> Response {
    match status {
        409 => service_error(StatusCode::CONFLICT, "100950-409", "DUPLICATE_RESOURCE", detail),
        429 => with_retry_after(
            uncoded_error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", detail),
            retry_after_secs,
        ),
        _ => service_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "100960-422",
            "UNPROCESSABLE_ENTITY",
            detail,
        ),
    }
}

fn gateway_error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = GatewayErrorBody {
        error_code: code.to_owned(),
        message: message.to_owned(),
    };
    (status, Json(body)).into_response()
}

fn ims_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = ImsErrorBody {
        error: error.to_owned(),
        error_description: Some(description.to_owned()),
    };
    (status, Json(body)).into_response()
}

fn parse_json(body: &Bytes) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| format!("request body: not valid JSON ({e})"))
}

// ---------------------------------------------------------------------------------------------
// Layers
// ---------------------------------------------------------------------------------------------

/// The bounded operation name of an AEP route (`Stats::received`), `None` for other routes.
fn operation_name(method: &Method, route: &str) -> Option<&'static str> {
    let route = route.trim_end_matches('/');
    let method = method.as_str();
    if let Some(rest) = route.strip_prefix(UPS) {
        return match (method, rest) {
            ("GET", "/audiences") => Some("list_audiences"),
            ("GET", "/audiences/{id}") => Some("get_audience"),
            ("DELETE", "/audiences/{id}") => Some("delete_ups_audience"),
            ("GET", "/segment/jobs") => Some("list_segment_jobs"),
            ("GET", "/config/schedules") => Some("list_schedules"),
            _ => None,
        };
    }
    if let Some(rest) = route.strip_prefix(FLOWSERVICE) {
        return match (method, rest) {
            ("GET", "/flows") => Some("list_flows"),
            ("GET", "/flows/{id}") => Some("get_flow"),
            ("PATCH", "/flows/{id}") => Some("patch_flow"),
            ("GET", "/runs") => Some("list_flow_runs"),
            ("GET", "/runs/{id}") => Some("get_flow_run"),
            _ => None,
        };
    }
    if route == ADHOC {
        return (method == "POST").then_some("adhoc_run");
    }
    let rest = route.strip_prefix(AIS)?;
    let rest = rest
        .strip_prefix("/external-audiences")
        .or_else(|| rest.strip_prefix("/external-audience"))?;
    Some(match (method, rest) {
        ("POST", "" | "/submit") => "create_audience",
        ("GET", "/operations/{operation_id}" | "/task/{operation_id}") => "get_operation",
        ("POST", "/extend-ttl/{id}") => "extend_ttl",
        ("PATCH", "/{id}") => "patch_audience",
        ("DELETE", "/{id}") => "delete_audience",
        ("POST", "/{id}/runs" | "/{id}/run") => "start_run",
        ("GET", "/{id}/runs" | "/{id}/run") => "list_runs",
        ("GET", "/{id}/runs/{run_id}" | "/{id}/run/{run_id}") => "get_run",
        _ => return None,
    })
}

/// Counts requests per operation (on arrival) and per route template and status (on answer), and
/// writes one structured log line each.
async fn account(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "UNMATCHED".to_owned());
    let started = Instant::now();
    if route.starts_with("/data/") {
        let org = request
            .headers()
            .get("x-gw-ims-org-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut world = shared.lock();
        world.record_arrival(&org, started);
        if let Some(op) = operation_name(&method, &route) {
            *world.stats.received.entry(op.to_owned()).or_insert(0) += 1;
        }
    }
    let response = next.run(request).await;
    let status = if response.extensions().get::<Dropped>().is_some() {
        "dropped".to_owned()
    } else {
        response.status().as_u16().to_string()
    };
    let key = format!("{method} {route}");
    tracing::info!(
        method = %method,
        route = %route,
        status = %status,
        duration_ms = started.elapsed().as_millis() as u64,
        "Handled request"
    );
    let mut world = shared.lock();
    *world
        .stats
        .requests
        .entry(key)
        .or_insert_with(BTreeMap::new)
        .entry(status)
        .or_insert(0) += 1;
    response
}

/// Gateway checks of reference §7.2.3, then the caller's (org, sandbox).
async fn authenticate(State(shared): State<AppState>, mut request: Request, next: Next) -> Response {
    let headers = request.headers();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let Some(authorization) = header("authorization") else {
        return gateway_error(StatusCode::UNAUTHORIZED, "403010", "Oauth token is missing.");
    };
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))
        .unwrap_or("")
        .trim()
        .to_owned();
    if !has_issued_shape(&token) {
        return service_error(StatusCode::BAD_REQUEST, "100911-400", "BAD_REQUEST", "invalid token");
    }
    let (strict, token_rec, entitlement) = {
        let world = shared.lock();
        let rec = world.tokens.get(&token).filter(|t| t.expires_at_ms > now_ms()).cloned();
        let entitlement = rec
            .as_ref()
            .and_then(|r| world.credentials.iter().find(|c| c.client_id == r.client_id))
            .map(|c| c.entitlement)
            .unwrap_or_default();
        (world.settings.strict, rec, entitlement)
    };
    let Some(token_rec) = token_rec else {
        return gateway_error(StatusCode::UNAUTHORIZED, "401013", "Oauth token is not valid");
    };
    match header("x-api-key") {
        None => return gateway_error(StatusCode::FORBIDDEN, "403000", "Api Key is required"),
        Some(key) if key != token_rec.client_id => {
            return gateway_error(StatusCode::FORBIDDEN, "403003", "Api Key is invalid");
        }
        Some(_) => {}
    }
    let org = match header("x-gw-ims-org-id") {
        None => return gateway_error(StatusCode::BAD_REQUEST, "400003", "Missing header"),
        Some(org) if org != token_rec.org_id => {
            return service_error(
                StatusCode::UNAUTHORIZED,
                "100921-401",
                "UNAUTHORIZED",
                "x-gw-ims-org-id: the token does not belong to this IMS org",
            );
        }
        Some(org) => org,
    };
    match entitlement {
        Entitlement::Full => {}
        Entitlement::NoExternalAudienceApi => {
            return service_error(
                StatusCode::UNAUTHORIZED,
                "100922-401",
                "UNAUTHORIZED",
                "the credential is not authorised for the external-audience APIs",
            );
        }
        Entitlement::InvalidProfile => {
            return gateway_error(StatusCode::FORBIDDEN, "403025", "Profile is not valid");
        }
        Entitlement::NoRegion => {
            return gateway_error(StatusCode::FORBIDDEN, "403027", "User region is missing");
        }
    }
    let sandbox = match header("x-sandbox-name") {
        Some(s) => s,
        None if strict => {
            return service_error(
                StatusCode::UNAUTHORIZED,
                "100920-401",
                "UNAUTHORIZED",
                "x-sandbox-name: header is required",
            );
        }
        None => "prod".to_owned(),
    };
    let has_body = matches!(*request.method(), Method::POST | Method::PUT | Method::PATCH);
    let json_type = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    if strict && has_body && !json_type && request.uri().path().contains("/external-audience/") {
        let runs_without_body = request.uri().path().contains("extend-ttl");
        if !runs_without_body {
            let body = json!({"type": "/placeholder/type/uri", "status": 400,
                "title": "BadRequestError", "detail": "A valid content-type must be specified"});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    }
    request.extensions_mut().insert(Caller {
        org,
        sandbox,
        client_id: token_rec.client_id,
    });
    next.run(request).await
}

/// Whether `token` has the shape of a token the emulated IMS issues: `emu.<32 hex>.<32 hex>`.
fn has_issued_shape(token: &str) -> bool {
    let hex32 = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut parts = token.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("emu"), Some(a), Some(b), None) if hex32(a) && hex32(b)
    )
}

/// Latency, 429 and 5xx injection (reference §7.2, issue 3). 429 and 503 carry no platform code
/// (the catalogue has none); 500 is `100970-500`.
async fn inject_faults(State(shared): State<AppState>, request: Request, next: Next) -> Response {
    let latency = shared.lock().faults.latency_ms;
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let injected = {
        let mut world = shared.lock();
        let World { faults, stats, .. } = &mut *world;
        let roll = |p: f64| p > 0.0 && rand::random::<f64>() < p;
        let outcome = if take(&mut faults.rate_limit_next, false) || roll(faults.rate_limit_probability) {
            Some((StatusCode::TOO_MANY_REQUESTS, faults.retry_after_secs))
        } else if take(&mut faults.unavailable_next, false) || roll(faults.unavailable_probability) {
            Some((StatusCode::SERVICE_UNAVAILABLE, faults.retry_after_secs))
        } else if roll(faults.server_error_probability) {
            Some((StatusCode::INTERNAL_SERVER_ERROR, 0))
        } else {
            None
        };
        if outcome.is_some() {
            stats.injected_errors += 1;
        }
        outcome
    };
    match injected {
        None => next.run(request).await,
        Some((StatusCode::TOO_MANY_REQUESTS, retry_after)) => with_retry_after(
            uncoded_error(StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS", "Too many requests"),
            retry_after,
        ),
        Some((StatusCode::SERVICE_UNAVAILABLE, retry_after)) => {
            let response = uncoded_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                "Service temporarily unavailable",
            );
            if retry_after > 0 {
                with_retry_after(response, retry_after)
            } else {
                response
            }
        }
        Some(_) => internal_error(),
    }
}

/// A lost answer decided for a call whose work is committed.
#[derive(Debug, Clone, Copy)]
struct Lost {
    mode: LostMode,
    hang_ms: u64,
}

/// Fires `lost` for one successful call and counts it.
fn lose(lost: &mut LostAnswer, hang_ms: u64, stats: &mut Stats) -> Option<Lost> {
    let mode = lost.fire()?;
    stats.lost_answers += 1;
    Some(Lost { mode, hang_ms })
}

/// What the in-memory part of a mutating call decided.
struct Outcome {
    response: Response,
    /// The answer to lose, if any.
    lost: Option<Lost>,
    /// Whether persisted state changed.
    changed: bool,
}

impl Outcome {
    /// The work is done; `response` is the answer unless `lost` says otherwise.
    fn committed(response: Response, lost: Option<Lost>) -> Self {
        Outcome {
            response,
            lost,
            changed: true,
        }
    }
}

impl From<Response> for Outcome {
    /// A refusal (validation error, 404, conflict, guardrail): nothing changed, nothing lost.
    fn from(response: Response) -> Self {
        Outcome {
            response,
            lost: None,
            changed: false,
        }
    }
}

/// Signals a state change and sends the answer, after `answer_delay_ms` for committed work, or
/// loses it (the work is already committed). Called without the world lock.
async fn finish(shared: &Shared, conn: &ConnHandle, outcome: Outcome) -> Response {
    let Outcome {
        mut response,
        lost,
        changed,
    } = outcome;
    if changed {
        shared.changed();
        let delay = shared.lock().faults.answer_delay_ms;
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
    }
    let Some(Lost { mode, hang_ms }) = lost else {
        return response;
    };
    match mode {
        LostMode::Error500 => return internal_error(),
        LostMode::Drop => shared.lock().stats.connections_dropped += 1,
        LostMode::Timeout => {
            // Counted before holding: the client may go away meanwhile, and this future with it.
            shared.lock().stats.connections_dropped += 1;
            tokio::time::sleep(Duration::from_millis(hang_ms)).await;
        }
    }
    conn.kill();
    response.extensions_mut().insert(Dropped);
    response
}

fn tenant<'w>(world: &'w mut World, caller: &Caller) -> Option<&'w mut Tenant> {
    world
        .store
        .tenants
        .get_mut(&format!("{}/{}", caller.org, caller.sandbox))
}

/// The audience if the `/ais` routes can see it now.
fn visible_audience<'t>(
    tenant: Option<&'t mut Tenant>,
    id: &str,
    visibility: Visibility,
    now: i64,
) -> Option<&'t mut AudienceRec> {
    tenant?.audiences.get_mut(id).filter(|a| a.ais_visible(visibility, now))
}

// ---------------------------------------------------------------------------------------------
// IMS
// ---------------------------------------------------------------------------------------------

/// `POST /ims/token/v3` (reference §7.2.16); parameters from the body and/or the query string.
async fn ims_token(State(shared): State<AppState>, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    if let Some(q) = &query {
        params.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
    }
    params.extend(url::form_urlencoded::parse(&body).into_owned());
    let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let mut world = shared.lock();
    world.stats.token_requests += 1;
    let refused = |world: &mut World, status, error, description| {
        world.stats.token_refusals += 1;
        tracing::info!(client_id = %param("client_id"), error, "Refused token request");
        ims_error(status, error, description)
    };
    if param("grant_type") != "client_credentials" {
        return refused(
            &mut world,
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let Some(cred) = world
        .credentials
        .iter()
        .find(|c| c.client_id == param("client_id"))
        .cloned()
    else {
        return refused(
            &mut world,
            StatusCode::BAD_REQUEST,
            "invalid_client",
            "invalid client_id parameter",
        );
    };
    if cred.client_secret != param("client_secret") {
        return refused(
            &mut world,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "invalid client_secret parameter",
        );
    }
    let scopes: Vec<&str> = param("scope")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if scopes.is_empty() || scopes.iter().any(|s| !KNOWN_SCOPES.contains(s)) {
        return refused(&mut world, StatusCode::BAD_REQUEST, "invalid_scope", "invalid scope");
    }
    let lifetime = world.settings.token_lifetime_secs;
    let token = format!(
        "emu.{}.{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    world.tokens.insert(
        token.clone(),
        TokenRec {
            client_id: cred.client_id.clone(),
            org_id: cred.org_id.clone(),
            expires_at_ms: now_ms().saturating_add((lifetime as i64).saturating_mul(1000)),
        },
    );
    world.stats.tokens_issued += 1;
    tracing::info!(client_id = %cred.client_id, lifetime_secs = lifetime, "Issued token");
    Json(ImsTokenResponse {
        access_token: token,
        token_type: "bearer".to_owned(),
        expires_in: Some(lifetime as i64),
    })
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// External audiences
// ---------------------------------------------------------------------------------------------

/// `POST /external-audience/` (also without the slash and the legacy `/submit`).
async fn create(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    body: Bytes,
) -> Response {
    let outcome = create_now(&shared, &caller, &body);
    finish(&shared, &conn, outcome).await
}

/// The in-memory part of create: validates, applies the duplicate and `customAudienceId` models,
/// stores the operation (and the audience, unless the operation is going to fail).
fn create_now(shared: &Shared, caller: &Caller, body: &Bytes) -> Outcome {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(detail) => return bad_request(detail).into(),
    };
    let mut world = shared.lock();
    world.stats.create_requests += 1;
    let mut definition = match validate::create_request(&value)
        .and_then(|d| validate::known_identity_namespaces(&d, &world.settings.identity_namespaces).map(|()| d))
    {
        Ok(d) => d,
        Err(detail) => {
            world.stats.create_rejections += 1;
            return bad_request(detail).into();
        }
    };
    let duplicate_names = world.settings.duplicate_names;
    let custom_ids = world.settings.custom_audience_id;
    if custom_ids == CustomAudienceIdModel::Ignore {
        definition.custom_audience_id = None;
    }
    let now = world.now_ms();
    // Audiences still being created count: they exist, only their operation has not finished.
    let conflict = tenant(&mut world, caller).and_then(|t| {
        t.audiences.values().find_map(|a| {
            if duplicate_names == DuplicateNames::Reject && a.definition.name == definition.name {
                return Some(format!(
                    "name: an audience named {:?} already exists in this sandbox ({})",
                    definition.name, a.id
                ));
            }
            match (&definition.custom_audience_id, &a.definition.custom_audience_id) {
                (Some(wanted), Some(used)) if custom_ids == CustomAudienceIdModel::Unique && wanted == used => {
                    Some(format!(
                        "customAudienceId: an audience with customAudienceId {wanted:?} already exists in this sandbox ({})",
                        a.id
                    ))
                }
                _ => None,
            }
        })
    });
    if let Some(detail) = conflict {
        world.stats.create_conflicts += 1;
        return service_error(StatusCode::CONFLICT, "100950-409", "DUPLICATE_RESOURCE", detail).into();
    }
    let World {
        faults,
        settings,
        stats,
        ..
    } = &mut *world;
    let fails = take(&mut faults.fail_next_operations, faults.fail_all_operations);
    let failure = if fails {
        faults.operation_failure_message.clone()
    } else {
        None
    };
    let omit_audience_id = !fails && take(&mut faults.omit_audience_id_next, false);
    let lost = lose(&mut faults.lost_answers.create, faults.hang_ms, stats);
    let ready_at_ms = now.saturating_add(settings.operation_delay_ms.min(i64::MAX as u64) as i64);
    let processing_polls = settings.operation_polls;
    stats.creates += 1;
    let operation_id = uuid::Uuid::new_v4().to_string();
    let audience_id = (!fails).then(|| uuid::Uuid::new_v4().to_string());
    let created_by = actor(&caller.client_id);
    let tenant = world.tenant_mut(&caller.org, &caller.sandbox);
    if let Some(id) = &audience_id {
        tenant.audiences.insert(
            id.clone(),
            AudienceRec {
                id: id.clone(),
                definition: definition.clone(),
                lifecycle_state: "published".to_owned(),
                dataset_id: uuid::Uuid::new_v4().simple().to_string(),
                ready_at_ms,
                created_at_ms: now,
                updated_at_ms: now,
                created_by: created_by.clone(),
                updated_by: created_by.clone(),
                runs: Vec::new(),
                extended_until_ms: None,
            },
        );
    }
    tenant.operations.insert(
        operation_id.clone(),
        OperationRec {
            id: operation_id.clone(),
            audience_id: audience_id.clone(),
            definition: definition.clone(),
            failure,
            ready_at_ms,
            processing_polls,
            polls: 0,
            created_at_ms: now,
            created_by,
            omit_audience_id,
        },
    );
    drop(world);
    tracing::info!(
        org = %caller.org,
        sandbox = %caller.sandbox,
        operation_id = %operation_id,
        audience_id = audience_id.as_deref().unwrap_or(""),
        lost_answer = ?lost.map(|l| l.mode),
        "Accepted create"
    );
    let response = (
        StatusCode::ACCEPTED,
        Json(CreateAudienceResponse {
            operation_id,
            operation_details: Some(definition),
        }),
    )
        .into_response();
    Outcome::committed(response, lost)
}

/// `GET /external-audience(s)/operations/{id}` and the legacy `/task/{id}`.
async fn get_operation(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(operation_id): Path<String>,
) -> Response {
    let mut world = shared.lock();
    world.stats.operation_polls += 1;
    let now = world.now_ms();
    let Some(op) = tenant(&mut world, &caller).and_then(|t| t.operations.get_mut(&operation_id)) else {
        return not_found("operation", &operation_id);
    };
    let status = op.advance(now, true);
    Json(op.to_wire(status)).into_response()
}

/// `POST /external-audience/{id}/runs` (also `/run`).
async fn start_run(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(audience_id): Path<String>,
    body: Bytes,
) -> Response {
    let outcome = start_run_now(&shared, &caller, &audience_id, &body);
    finish(&shared, &conn, outcome).await
}

/// The in-memory part of start-run: visibility, validation, the one-run-at-a-time rule, both
/// guardrails, then the new run (logged in the sandbox's per-day count).
fn start_run_now(shared: &Shared, caller: &Caller, audience_id: &str, body: &Bytes) -> Outcome {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(detail) => return bad_request(detail).into(),
    };
    let mut world = shared.lock();
    world.stats.run_requests += 1;
    let now = world.now_ms();
    let settings = world.settings.clone();
    let World {
        store, faults, stats, ..
    } = &mut *world;
    let Some(tenant) = store.tenants.get_mut(&format!("{}/{}", caller.org, caller.sandbox)) else {
        return not_found("audience", audience_id).into();
    };
    let today = utc_day(now);
    let sandbox_runs_today = tenant.runs_on(today);
    let sandbox_name = tenant.sandbox.clone();
    let Some(audience) = visible_audience(Some(&mut *tenant), audience_id, settings.visibility(), now) else {
        return not_found("audience", audience_id).into();
    };
    let request = match validate::start_run_request(&value) {
        Ok(r) => r,
        Err(detail) => return bad_request(detail).into(),
    };
    let running = audience
        .runs
        .iter_mut()
        .find_map(|r| r.in_progress(now).then(|| r.id.clone()));
    if let Some(running) = running {
        stats.run_in_progress_refusals += 1;
        let detail = format!(
            "audience {audience_id}: a run is already in progress (run {running}); a new run can start once it has finished"
        );
        return refusal(
            settings.run_in_progress_status,
            settings.guardrail_retry_after_secs,
            detail,
        )
        .into();
    }
    let (audience_runs, window) = match settings.runs_per_audience_window {
        RunWindow::Lifetime => (audience.runs.len(), "per audience"),
        RunWindow::Day => (audience.runs_today(now), "per audience per day"),
    };
    let guardrail = if audience_runs >= settings.max_runs_per_audience as usize {
        Some(format!(
            "audience {audience_id}: guardrail reached, at most {} ingestion runs {window}",
            settings.max_runs_per_audience
        ))
    } else if sandbox_runs_today >= settings.max_runs_per_sandbox_per_day {
        Some(format!(
            "sandbox {sandbox_name}: guardrail reached, at most {} ingestion runs per sandbox per day",
            settings.max_runs_per_sandbox_per_day
        ))
    } else {
        None
    };
    if let Some(detail) = guardrail {
        stats.guardrail_refusals += 1;
        return refusal(settings.guardrail_status, settings.guardrail_retry_after_secs, detail).into();
    }
    let fails = take(&mut faults.fail_next_runs, faults.fail_all_runs);
    let failure = if fails {
        faults.run_failure_message.clone()
    } else {
        None
    };
    let lost = lose(&mut faults.lost_answers.start_run, faults.hang_ms, stats);
    let run = RunRec {
        id: uuid::Uuid::new_v4().to_string(),
        data_filter_start_time: request.data_filter_start_time,
        data_filter_end_time: request.data_filter_end_time,
        differential_ingestion: request.differential_ingestion.unwrap_or(true),
        fails,
        failure,
        ready_at_ms: now.saturating_add(settings.run_delay_ms.min(i64::MAX as u64) as i64),
        processing_polls: settings.run_polls,
        polls: 0,
        ended: None,
        created_at_ms: now,
        created_by: actor(&caller.client_id),
    };
    let wire = run.to_wire(audience, None);
    // The new run counts as in progress at its start, even in zero-latency mode.
    let concurrent = 1 + audience
        .runs
        .iter_mut()
        .map(|r| r.in_progress(now))
        .filter(|busy| *busy)
        .count() as u64;
    audience.runs.push(run);
    tenant.log_run(today);
    stats.max_concurrent_runs_per_audience = stats.max_concurrent_runs_per_audience.max(concurrent);
    stats.runs_started += 1;
    drop(world);
    tracing::info!(
        org = %caller.org,
        sandbox = %caller.sandbox,
        audience_id = %audience_id,
        run_id = %wire.run_id,
        lost_answer = ?lost.map(|l| l.mode),
        "Started run"
    );
    Outcome::committed(Json(wire).into_response(), lost)
}

/// `GET /external-audience/{id}/runs/{runId}` (also `/run/{runId}`).
async fn get_run(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path((audience_id, run_id)): Path<(String, String)>,
) -> Response {
    let mut world = shared.lock();
    world.stats.run_polls += 1;
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let Some(audience) = visible_audience(tenant(&mut world, &caller), &audience_id, visibility, now) else {
        return not_found("audience", &audience_id);
    };
    let Some(index) = audience.runs.iter().position(|r| r.id == run_id) else {
        return not_found("run", &run_id);
    };
    let status = audience.runs[index].advance(now, true);
    let wire = audience.runs[index].to_wire(audience, Some(status));
    Json(wire).into_response()
}

/// Text attribute of a run that `property` can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunAttr {
    Name,
    Status,
}

/// One `property` filter of the runs list (reference §2.9).
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunFilter {
    /// `name`/`status` with `=`, `!=`, `=contains`, `!=contains` (case-insensitive).
    Text {
        attr: RunAttr,
        negate: bool,
        contains: bool,
        value: String,
    },
    /// `createdAt` (or `ingestionTime`) with `>=` (`at_least`) or `<=`, epoch seconds.
    CreatedAt { at_least: bool, secs: i64 },
}

const RUN_PROPERTY_GRAMMAR: &str = "property: must be name or status with =, !=, =contains or !=contains \
     followed by a value (e.g. status=SUCCESS, name=containsChurn), or createdAt with >= or <= followed by \
     epoch seconds";

/// Parses `<attr><op><value>`: operators are tried longest first; after `=contains`/`!=contains`
/// one `=` is skipped, so `name=contains=demo` equals `name=containsdemo`.
fn parse_run_property(raw: &str) -> Result<RunFilter, String> {
    let split = raw.find(['=', '!', '>', '<']).ok_or(RUN_PROPERTY_GRAMMAR)?;
    let (attr, rest) = raw.split_at(split);
    let text = match attr {
        "name" => Some(RunAttr::Name),
        "status" => Some(RunAttr::Status),
        "createdAt" | "ingestionTime" => None,
        _ => return Err(RUN_PROPERTY_GRAMMAR.to_owned()),
    };
    if let Some(attr) = text {
        let (negate, rest) = match (rest.strip_prefix("!="), rest.strip_prefix('=')) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => return Err(RUN_PROPERTY_GRAMMAR.to_owned()),
        };
        let (contains, value) = match rest.strip_prefix("contains") {
            Some(r) => (true, r.strip_prefix('=').unwrap_or(r)),
            None => (false, rest),
        };
        if value.is_empty() {
            return Err(RUN_PROPERTY_GRAMMAR.to_owned());
        }
        return Ok(RunFilter::Text {
            attr,
            negate,
            contains,
            value: value.to_lowercase(),
        });
    }
    let (at_least, value) = match (rest.strip_prefix(">="), rest.strip_prefix("<=")) {
        (Some(v), _) => (true, v),
        (None, Some(v)) => (false, v),
        _ => return Err(RUN_PROPERTY_GRAMMAR.to_owned()),
    };
    let secs = value
        .trim()
        .parse::<i64>()
        .map_err(|_| RUN_PROPERTY_GRAMMAR.to_owned())?;
    Ok(RunFilter::CreatedAt { at_least, secs })
}

impl RunFilter {
    fn keeps(&self, run: &aep::types::Run) -> bool {
        match self {
            RunFilter::Text {
                attr,
                negate,
                contains,
                value,
            } => {
                let actual = match attr {
                    RunAttr::Status => run.status.as_str().to_lowercase(),
                    RunAttr::Name => run.audience_name.clone().unwrap_or_default().to_lowercase(),
                };
                let hit = if *contains {
                    actual.contains(value.as_str())
                } else {
                    actual == *value
                };
                hit != *negate
            }
            RunFilter::CreatedAt { at_least, secs } => match run.created_at {
                Some(at) if *at_least => at >= *secs,
                Some(at) => at <= *secs,
                None => false,
            },
        }
    }
}

/// `GET /external-audience/{id}/runs` with `limit` (1..40, default 20), `sortBy` (`createdAt`,
/// `ingestionTime`, `name`, `-` for descending; default `-createdAt`) and `property` filters that
/// combine with AND (reference §2.9, §7.2.12).
async fn list_runs(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(audience_id): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut limit = 20usize;
    let mut descending = true;
    let mut by_name = false;
    let mut filters: Vec<RunFilter> = Vec::new();
    for (key, value) in &query {
        match key.as_str() {
            "limit" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=40).contains(&n) => limit = n,
                _ => return bad_request("limit: must be an integer between 1 and 40"),
            },
            "sortBy" => {
                let attr = value.trim();
                descending = attr.starts_with('-');
                by_name = match attr.trim_start_matches('-') {
                    "createdAt" | "ingestionTime" => false,
                    "name" => true,
                    _ => {
                        return bad_request("sortBy: must be createdAt or name, prefixed with - for descending");
                    }
                };
            }
            "property" => match parse_run_property(value) {
                Ok(filter) => filters.push(filter),
                Err(detail) => return bad_request(detail),
            },
            _ => {}
        }
    }
    let mut world = shared.lock();
    world.stats.run_polls += 1;
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let Some(audience) = visible_audience(tenant(&mut world, &caller), &audience_id, visibility, now) else {
        return not_found("audience", &audience_id);
    };
    let statuses: Vec<RunStatus> = audience.runs.iter_mut().map(|r| r.advance(now, true)).collect();
    // Oldest first, as stored; the sort below is stable.
    let mut runs: Vec<(i64, aep::types::Run)> = audience
        .runs
        .iter()
        .zip(statuses)
        .map(|(r, s)| {
            let mut wire = r.to_wire(audience, Some(s));
            wire.details.clear();
            (r.created_at_ms, wire)
        })
        .filter(|(_, r)| filters.iter().all(|f| f.keeps(r)))
        .collect();
    drop(world);
    if by_name {
        runs.sort_by(|a, b| a.1.audience_name.cmp(&b.1.audience_name));
    } else {
        runs.sort_by_key(|(created, _)| *created);
    }
    if descending {
        runs.reverse();
    }
    let total = runs.len();
    let runs: Vec<_> = runs.into_iter().take(limit).map(|(_, r)| r).collect();
    let page = json!({"limit": limit, "count": runs.len(), "totalCount": total});
    Json(RunList { runs, page: Some(page) }).into_response()
}

/// `PATCH /external-audience/{id}`: replace semantics per property (§7.2.10).
async fn patch_audience(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(audience_id): Path<String>,
    body: Bytes,
) -> Response {
    let outcome = patch_now(&shared, &caller, &audience_id, &body);
    finish(&shared, &conn, outcome).await
}

fn patch_now(shared: &Shared, caller: &Caller, audience_id: &str, body: &Bytes) -> Outcome {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(detail) => return bad_request(detail).into(),
    };
    let mut world = shared.lock();
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let World {
        store, faults, stats, ..
    } = &mut *world;
    let tenant = store.tenants.get_mut(&format!("{}/{}", caller.org, caller.sandbox));
    let Some(audience) = visible_audience(tenant, audience_id, visibility, now) else {
        return not_found("audience", audience_id).into();
    };
    let patch = match validate::patch_request(&value, &audience.definition) {
        Ok(p) => p,
        Err(detail) => return bad_request(detail).into(),
    };
    let d = &mut audience.definition;
    if let Some(description) = patch.description {
        d.description = Some(description);
    }
    if let Some(labels) = patch.labels {
        d.labels = labels;
    }
    if let Some(ttl) = patch.ttl_in_days {
        d.ttl_in_days = Some(ttl);
    }
    for f in patch.fields.unwrap_or_default() {
        if let Some(stored) = d.fields.iter_mut().find(|s| s.name == f.name) {
            stored.labels = f.labels;
        }
    }
    audience.updated_at_ms = now;
    audience.updated_by = actor(&caller.client_id);
    let mut body = serde_json::to_value(audience.to_external()).unwrap_or(Value::Null);
    // The doc sample shows `sourceSpec` flat in PATCH responses.
    if let Some(spec) = body.get_mut("sourceSpec")
        && let Some(params) = spec.get_mut("params").map(Value::take)
    {
        *spec = params;
    }
    stats.patches += 1;
    let lost = lose(&mut faults.lost_answers.patch, faults.hang_ms, stats);
    drop(world);
    tracing::info!(audience_id = %audience_id, lost_answer = ?lost.map(|l| l.mode), "Patched audience");
    Outcome::committed(Json(body).into_response(), lost)
}

/// Which visibility rule a delete goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeleteRoute {
    /// `DELETE /data/core/ais/external-audience/{id}`.
    Ais,
    /// `DELETE /data/core/ups/audiences/{id}`.
    Ups,
}

fn delete_now(shared: &Shared, caller: &Caller, audience_id: &str, route: DeleteRoute) -> Outcome {
    let mut world = shared.lock();
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let key = format!("{}/{}", caller.org, caller.sandbox);
    let World {
        store, faults, stats, ..
    } = &mut *world;
    let Some(tenant) = store.tenants.get_mut(&key) else {
        return not_found("audience", audience_id).into();
    };
    let visible = tenant.audiences.get(audience_id).is_some_and(|a| match route {
        DeleteRoute::Ais => a.ais_visible(visibility, now),
        DeleteRoute::Ups => a.lookup_visible(visibility, now),
    });
    if !visible {
        return not_found("audience", audience_id).into();
    }
    if let Some(flow_id) = tenant.flow_using(audience_id) {
        stats.delete_refusals += 1;
        return service_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "100960-422",
            "UNPROCESSABLE_ENTITY",
            format!(
                "audience {audience_id} is used by destination dataflow {flow_id} and cannot be deleted; remove it from the dataflow first"
            ),
        )
        .into();
    }
    if faults.refuse_delete_in_use {
        stats.delete_refusals += 1;
        return service_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "100960-422",
            "UNPROCESSABLE_ENTITY",
            format!(
                "audience {audience_id} is used by a downstream activation or another audience and cannot be deleted"
            ),
        )
        .into();
    }
    tenant.delete_audience(audience_id, now);
    stats.deletes += 1;
    let lost = lose(&mut faults.lost_answers.delete, faults.hang_ms, stats);
    drop(world);
    tracing::info!(audience_id = %audience_id, lost_answer = ?lost.map(|l| l.mode), "Deleted audience");
    Outcome::committed(StatusCode::NO_CONTENT.into_response(), lost)
}

async fn delete_in(
    shared: &Shared,
    caller: &Caller,
    conn: &ConnHandle,
    audience_id: &str,
    route: DeleteRoute,
) -> Response {
    let outcome = delete_now(shared, caller, audience_id, route);
    finish(shared, conn, outcome).await
}

/// `DELETE /external-audience/{id}` → 204.
async fn delete_audience(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(audience_id): Path<String>,
) -> Response {
    delete_in(&shared, &caller, &conn, &audience_id, DeleteRoute::Ais).await
}

/// `POST /external-audience/extend-ttl/{id}` → 200 `{audienceId, name}`.
async fn extend_ttl(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(audience_id): Path<String>,
) -> Response {
    let mut world = shared.lock();
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let Some(audience) = visible_audience(tenant(&mut world, &caller), &audience_id, visibility, now) else {
        return not_found("audience", &audience_id);
    };
    for run in &mut audience.runs {
        run.advance(now, false);
    }
    audience.extend_ttl(now);
    audience.updated_at_ms = now;
    audience.updated_by = actor(&caller.client_id);
    let body = ExtendTtlResponse {
        audience_id: audience.id.clone(),
        name: audience.definition.name.clone(),
    };
    drop(world);
    shared.changed();
    Json(body).into_response()
}

// ---------------------------------------------------------------------------------------------
// /data/core/ups/audiences
// ---------------------------------------------------------------------------------------------

fn ups_attr(record: &UpsAudience, attr: &str) -> Option<String> {
    Some(match attr {
        "id" => record.id.clone(),
        "audienceId" => record.audience_id.clone()?,
        "name" => record.name.clone(),
        "namespace" => record.namespace.clone()?,
        "originName" => record.origin_name.clone()?,
        "type" => record.r#type.clone()?,
        "lifecycleState" => record.lifecycle_state.clone()?,
        "description" => record.description.clone()?,
        _ => return None,
    })
}

const PROPERTY_ATTRS: &[&str] = &[
    "id",
    "audienceId",
    "name",
    "namespace",
    "originName",
    "type",
    "lifecycleState",
    "description",
];

/// `GET /data/core/ups/audiences` (reference §7.2.9). Only audiences visible to lookups.
async fn list_ups(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut world = shared.lock();
    let mut start = 0usize;
    let mut limit = world.settings.ups_default_limit.max(1) as usize;
    let mut sort: Option<(String, bool)> = None;
    let mut properties: Vec<(String, bool, String)> = Vec::new();
    let mut name: Option<String> = None;
    let mut description: Option<String> = None;
    let mut entity_type: Option<String> = None;
    for (key, value) in &query {
        match key.as_str() {
            "start" => match value.parse::<usize>() {
                Ok(n) => start = n,
                Err(_) => return bad_request("start: must be a non-negative integer"),
            },
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=1000).contains(&n) => limit = n,
                _ => return bad_request("limit: must be an integer between 1 and 1000"),
            },
            "sort" => {
                let (attr, dir) = value.split_once(':').unwrap_or((value.as_str(), "asc"));
                sort = Some((attr.to_owned(), dir.eq_ignore_ascii_case("desc")));
            }
            "property" => {
                let parsed = value
                    .split_once("!=")
                    .map(|(a, v)| (a, false, v))
                    .or_else(|| value.split_once("==").map(|(a, v)| (a, true, v)));
                match parsed {
                    Some((attr, eq, v)) if PROPERTY_ATTRS.contains(&attr) => {
                        properties.push((attr.to_owned(), eq, v.to_owned()))
                    }
                    _ => {
                        return bad_request(format!(
                            "property: must be <attribute>==<value> with attribute one of {}",
                            PROPERTY_ATTRS.join(", ")
                        ));
                    }
                }
            }
            "name" => name = Some(value.to_lowercase()),
            "description" => description = Some(value.to_lowercase()),
            "entityType" => entity_type = Some(value.clone()),
            _ => {}
        }
    }
    let include_inactive = properties.iter().any(|(attr, _, _)| attr == "audienceId");
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let mut records: Vec<UpsAudience> = match tenant(&mut world, &caller) {
        None => Vec::new(),
        Some(t) => t
            .audiences
            .values()
            .filter(|a| a.lookup_visible(visibility, now))
            // Deleted records come back only where inactive ones do.
            .chain(t.deleted.values().filter(|_| include_inactive))
            .map(|a| a.to_ups(t))
            .collect(),
    };
    drop(world);
    records.retain(|r| {
        (include_inactive || r.lifecycle_state.as_deref() != Some("inactive"))
            && name.as_ref().is_none_or(|n| r.name.to_lowercase().contains(n))
            && description
                .as_ref()
                .is_none_or(|d| r.description.as_deref().unwrap_or("").to_lowercase().contains(d))
            && entity_type
                .as_ref()
                .is_none_or(|e| r.entity_type.as_deref() == Some(e.as_str()))
            && properties
                .iter()
                .all(|(attr, eq, v)| (ups_attr(r, attr).as_deref() == Some(v.as_str())) == *eq)
    });
    let (sort_attr, descending) = sort.unwrap_or_else(|| ("creationTime".to_owned(), false));
    records.sort_by(|a, b| {
        let ordering = match sort_attr.as_str() {
            "name" => a.name.cmp(&b.name),
            "updateTime" | "updateEpoch" => a.update_time.cmp(&b.update_time),
            _ => a.creation_time.cmp(&b.creation_time),
        };
        ordering.then_with(|| a.id.cmp(&b.id))
    });
    if descending {
        records.reverse();
    }
    let total = records.len();
    let children: Vec<UpsAudience> = records.into_iter().skip(start).take(limit).collect();
    let next_start = start + limit;
    let more = next_start < total;
    let body = UpsAudienceList {
        page: Some(UpsPage {
            total_count: Some(total as i64),
            page_size: Some(children.len() as i64),
            next: more.then(|| Value::String(next_start.to_string())),
            start: Some(start as i64),
            limit: Some(limit as i64),
            total_pages: Some(total.div_ceil(limit) as i64),
        }),
        links: more.then(|| UpsLinks {
            next: Some(Link {
                href: format!("@/audiences?start={next_start}&limit={limit}&totalCount={total}"),
            }),
        }),
        children,
    };
    Json(body).into_response()
}

/// `GET /data/core/ups/audiences/{id}`.
async fn get_ups(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let mut world = shared.lock();
    let now = world.now_ms();
    let visibility = world.settings.visibility();
    let Some(t) = tenant(&mut world, &caller) else {
        return not_found("audience", &id);
    };
    match t.audiences.get(&id).filter(|a| a.lookup_visible(visibility, now)) {
        Some(a) => Json(a.to_ups(t)).into_response(),
        None => not_found("audience", &id),
    }
}

/// `DELETE /data/core/ups/audiences/{id}` → 204.
async fn delete_ups(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(id): Path<String>,
) -> Response {
    delete_in(&shared, &caller, &conn, &id, DeleteRoute::Ups).await
}

/// Fallback: 404 with a service error body naming the route.
pub(crate) async fn unmatched(method: Method, uri: axum::http::Uri) -> Response {
    tracing::info!(method = %method, path = %uri.path(), "No such route");
    service_error(
        StatusCode::NOT_FOUND,
        "100940-404",
        "NOT_FOUND",
        format!("no route for {method} {}", uri.path()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_aep_route_has_a_bounded_operation_name() {
        let cases = [
            ("POST", "/data/core/ais/external-audience", Some("create_audience")),
            ("POST", "/data/core/ais/external-audience/", Some("create_audience")),
            (
                "POST",
                "/data/core/ais/external-audience/submit",
                Some("create_audience"),
            ),
            (
                "GET",
                "/data/core/ais/external-audiences/operations/{operation_id}/",
                Some("get_operation"),
            ),
            (
                "GET",
                "/data/core/ais/external-audience/task/{operation_id}",
                Some("get_operation"),
            ),
            ("POST", "/data/core/ais/external-audience/{id}/run", Some("start_run")),
            ("POST", "/data/core/ais/external-audience/{id}/runs/", Some("start_run")),
            ("GET", "/data/core/ais/external-audience/{id}/runs", Some("list_runs")),
            (
                "GET",
                "/data/core/ais/external-audience/{id}/run/{run_id}",
                Some("get_run"),
            ),
            (
                "PATCH",
                "/data/core/ais/external-audience/{id}/",
                Some("patch_audience"),
            ),
            (
                "DELETE",
                "/data/core/ais/external-audience/{id}",
                Some("delete_audience"),
            ),
            (
                "POST",
                "/data/core/ais/external-audience/extend-ttl/{id}",
                Some("extend_ttl"),
            ),
            ("GET", "/data/core/ups/audiences/", Some("list_audiences")),
            ("GET", "/data/core/ups/audiences/{id}", Some("get_audience")),
            ("DELETE", "/data/core/ups/audiences/{id}/", Some("delete_ups_audience")),
            ("POST", "/ims/token/v3", None),
            ("GET", "/_emulator/stats", None),
            ("PUT", "/data/core/ups/audiences/{id}", None),
            ("GET", "/data/foundation/flowservice/flows", Some("list_flows")),
            ("GET", "/data/foundation/flowservice/flows/{id}/", Some("get_flow")),
            ("PATCH", "/data/foundation/flowservice/flows/{id}", Some("patch_flow")),
            ("GET", "/data/foundation/flowservice/runs/", Some("list_flow_runs")),
            ("GET", "/data/foundation/flowservice/runs/{id}", Some("get_flow_run")),
            (
                "POST",
                "/data/core/activation/disflowprovider/adhocrun",
                Some("adhoc_run"),
            ),
            ("GET", "/data/core/activation/disflowprovider/adhocrun", None),
            ("GET", "/data/core/ups/segment/jobs", Some("list_segment_jobs")),
            ("GET", "/data/core/ups/config/schedules/", Some("list_schedules")),
            ("DELETE", "/data/foundation/flowservice/flows/{id}", None),
        ];
        for (method, route, want) in cases {
            let method: Method = method.parse().unwrap();
            assert_eq!(operation_name(&method, route), want, "{method} {route}");
        }
    }

    #[test]
    fn run_property_grammar_is_the_documented_one() {
        let text = |attr, negate, contains, value: &str| RunFilter::Text {
            attr,
            negate,
            contains,
            value: value.to_owned(),
        };
        let cases = [
            ("status=SUCCESS", text(RunAttr::Status, false, false, "success")),
            ("status!=FAILED", text(RunAttr::Status, true, false, "failed")),
            ("name=containsDemo", text(RunAttr::Name, false, true, "demo")),
            ("name=contains=demo", text(RunAttr::Name, false, true, "demo")),
            ("name!=containsdemo", text(RunAttr::Name, true, true, "demo")),
            ("name=demo_audience", text(RunAttr::Name, false, false, "demo_audience")),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_run_property(raw), Ok(want), "{raw}");
        }
        assert_eq!(
            parse_run_property("createdAt>=1750000000"),
            Ok(RunFilter::CreatedAt {
                at_least: true,
                secs: 1_750_000_000
            })
        );
        assert_eq!(
            parse_run_property("ingestionTime<=5"),
            Ok(RunFilter::CreatedAt {
                at_least: false,
                secs: 5
            })
        );
        for bad in [
            "",
            "status",
            "status=",
            "foo=bar",
            "createdAt=5",
            "createdAt>=x",
            "name<=a",
            "name=contains",
        ] {
            let err = parse_run_property(bad).unwrap_err();
            assert!(err.starts_with("property:"), "{bad}: {err}");
        }
    }

    #[test]
    fn only_emulator_shaped_tokens_pass_the_syntax_check() {
        let good = format!(
            "emu.{}.{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        assert!(has_issued_shape(&good));
        assert!(has_issued_shape(&format!("emu.{}.{}", "A".repeat(32), "0".repeat(32))));
        for bad in [
            "",
            "forged",
            "emu..",
            &format!("emu.{}", "a".repeat(32)),
            &format!("emu.{}.{}.x", "a".repeat(32), "a".repeat(32)),
            &format!("emu.{}.{}", "g".repeat(32), "a".repeat(32)),
            &format!("EMU.{}.{}", "a".repeat(32), "a".repeat(32)),
        ] {
            assert!(!has_issued_shape(bad), "{bad}");
        }
    }

    #[test]
    fn refusals_use_catalogue_codes_only() {
        let code = |r: &Response| r.status().as_u16();
        assert_eq!(code(&refusal(409, 1, "x".into())), 409);
        assert_eq!(code(&refusal(422, 1, "x".into())), 422);
        let throttled = refusal(429, 7, "x".into());
        assert_eq!(code(&throttled), 429);
        assert_eq!(throttled.headers()[header::RETRY_AFTER], "7");
    }
}
