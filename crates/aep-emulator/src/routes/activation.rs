//! Handlers of the activation surface (reference "aep-activation-api" §1, §2): Flow Service
//! `GET /flows`, `GET`/`PATCH /flows/{id}`, `GET /runs`, `GET /runs/{id}`; ad hoc activation;
//! `GET /ups/segment/jobs` and `GET /ups/config/schedules`. They sit behind the same auth, fault
//! and accounting layers as every AEP route.
//!
//! Error bodies follow each service: Flow Service `{"errorMessage", "errorDetails"?}`, the ad hoc
//! API `{"message"}`, `/ups` the service error of the other `/ups` routes. Export runs are made
//! lazily here, under the world lock, from the emulator clock ([`crate::flows`]).

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{Map, Value, json};

use aep::flows::{
    AdhocOrder, AdhocResponse, Flow, FlowList, FlowRun, FlowRunList, NextLink, PatchFlowResponse, SegmentJob,
    SegmentJobStatus, UpsList,
};
use aep::types::Link;

use super::{
    AppState, Caller, ConnHandle, ConnectInfo, FLOWSERVICE, Json, Outcome, Path, Query, Response, State, StatusCode,
    UPS, bad_request, finish, lose, parse_json, take, tenant,
};
use crate::Shared;
use crate::config::PatchAnswer;
use crate::flows::{AdhocRefusal, PatchContext, SegmentationClock, apply_patch, batch_schedule, segment_jobs};
use crate::state::{Tenant, World, actor};

use axum::response::IntoResponse;

/// Flow Service error body: `{"errorMessage": …}`.
fn flow_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"errorMessage": message.into()}))).into_response()
}

/// Flow Service error body with `errorDetails`.
fn flow_error_details(status: StatusCode, message: impl Into<String>, details: &str) -> Response {
    (
        status,
        Json(json!({"errorMessage": message.into(), "errorDetails": details})),
    )
        .into_response()
}

/// The documented 404 of a Flow Service entity: `{"errorMessage":"flows not found with id = [<id>]"}`.
fn entity_not_found(kind: &str, id: &str) -> Response {
    flow_error(StatusCode::NOT_FOUND, format!("{kind} not found with id = [{id}]"))
}

/// Ad hoc activation error body: `{"message": …}`.
fn adhoc_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"message": message.into()}))).into_response()
}

// ---------------------------------------------------------------------------------------------
// List queries (property filters, limit, continuationToken)
// ---------------------------------------------------------------------------------------------

/// The comparison of a `property` filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Gt,
    Lt,
}

/// A parsed `GET /flows` or `GET /runs` query.
#[derive(Debug, Default)]
struct ListQuery {
    /// `(path, comparison, value)`.
    properties: Vec<(String, Cmp, String)>,
    /// The raw `property` values, carried into the next link.
    raw_properties: Vec<String>,
    limit: Option<usize>,
    offset: usize,
    count: bool,
    /// `(attribute, descending)`.
    orderby: Option<(String, bool)>,
}

const CONTINUATION_PREFIX: &str = "ct";

/// Largest `limit` Flow Service accepts (reference §1.4); `flow_page_max` may serve less.
const MAX_LIMIT: usize = 100;

fn parse_list_query(query: &[(String, String)]) -> Result<ListQuery, String> {
    let mut q = ListQuery::default();
    for (key, value) in query {
        match key.as_str() {
            "property" => {
                let parsed = value
                    .split_once("==")
                    .map(|(p, v)| (p, Cmp::Eq, v))
                    .or_else(|| value.split_once('>').map(|(p, v)| (p, Cmp::Gt, v)))
                    .or_else(|| value.split_once('<').map(|(p, v)| (p, Cmp::Lt, v)));
                match parsed {
                    Some((path, cmp, v)) if !path.trim().is_empty() => {
                        q.properties.push((path.trim().to_owned(), cmp, v.to_owned()));
                        q.raw_properties.push(value.clone());
                    }
                    _ => return Err(format!("property: must be <path>==<value>, got {value:?}")),
                }
            }
            "limit" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => q.limit = Some(n),
                _ => return Err(format!("limit: must be an integer between 1 and {MAX_LIMIT}")),
            },
            "continuationToken" => {
                q.offset = value
                    .strip_prefix(CONTINUATION_PREFIX)
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| "continuationToken: not a token this service issued".to_owned())?;
            }
            "count" => q.count = value.eq_ignore_ascii_case("true"),
            "orderby" => {
                // `+` arrives as a space in a query string.
                let v = value.trim();
                let (attr, descending) = match v.strip_prefix('-') {
                    Some(attr) => (attr, true),
                    None => (v.trim_start_matches('+'), false),
                };
                match attr {
                    "createdAt" | "updatedAt" => q.orderby = Some((attr.to_owned(), descending)),
                    _ => return Err("orderby: must be [+|-]createdAt or [+|-]updatedAt".to_owned()),
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

impl ListQuery {
    /// One page of `items` (already filtered and sorted), at most `max_limit` long whatever the
    /// `limit` asked, and the href of the next page.
    fn page<T>(&self, items: Vec<T>, max_limit: usize, base: &str) -> (Vec<T>, Option<String>) {
        let limit = self.limit.unwrap_or(max_limit).min(max_limit).max(1);
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(self.offset).take(limit).collect();
        let next = self.offset + limit;
        if next >= total {
            return (page, None);
        }
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for p in &self.raw_properties {
            query.append_pair("property", p);
        }
        if let Some((attr, descending)) = &self.orderby {
            query.append_pair("orderby", &format!("{}{attr}", if *descending { "-" } else { "+" }));
        }
        query
            .append_pair("limit", &limit.to_string())
            .append_pair("continuationToken", &format!("{CONTINUATION_PREFIX}{next}"));
        (page, Some(format!("{base}?{}", query.finish())))
    }
}

fn next_links(href: Option<String>) -> Option<NextLink> {
    href.map(|href| NextLink {
        next: Some(Link { href }),
    })
}

// ---------------------------------------------------------------------------------------------
// Flows
// ---------------------------------------------------------------------------------------------

/// The `property` paths `GET /flows` filters on.
const FLOW_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "state",
    "flowSpec.id",
    "inheritedAttributes.properties.isDestinationFlow",
    "inheritedAttributes.sourceConnections[].connectionSpec.id",
    "inheritedAttributes.targetConnections[].connectionSpec.id",
    "transformations[].params.segmentSelectors.selectors[].value.id",
];

/// The values of `path` in `flow` (one per array element for `[]` paths).
fn flow_values(flow: &Flow, path: &str) -> Vec<String> {
    let specs = |list: Option<Vec<&aep::flows::ConnectionRef>>| -> Vec<String> {
        list.unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.connection_spec.as_ref().map(|s| s.id.clone()))
            .collect()
    };
    let attrs = flow.inherited_attributes.as_ref();
    match path {
        "id" => vec![flow.id.clone()],
        "name" => vec![flow.name.clone()],
        "state" => flow.state.clone().into_iter().collect(),
        "flowSpec.id" => flow.flow_spec_id().map(str::to_owned).into_iter().collect(),
        "inheritedAttributes.properties.isDestinationFlow" => vec![flow.is_destination_flow().to_string()],
        "inheritedAttributes.sourceConnections[].connectionSpec.id" => {
            specs(attrs.map(|a| a.source_connections.iter().collect()))
        }
        "inheritedAttributes.targetConnections[].connectionSpec.id" => {
            specs(attrs.map(|a| a.target_connections.iter().collect()))
        }
        "transformations[].params.segmentSelectors.selectors[].value.id" => flow
            .transformations
            .iter()
            .filter_map(|t| t.params.segment_selectors.as_ref())
            .flat_map(|l| &l.selectors)
            .filter_map(|s| s.value.id.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// `GET /data/foundation/flowservice/flows` (reference §1.4): `property=<path>==<value>` filters
/// (ANDed; [`FLOW_PROPERTIES`]), `limit` ≤ `flow_page_max`, `orderby`, `count=true`, newest
/// (last updated) first, `_links.next.href` with a `continuationToken`.
pub(super) async fn list_flows(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let max = shared.lock().settings.flow_page_max.clamp(1, MAX_LIMIT as u32) as usize;
    let q = match parse_list_query(&query) {
        Ok(q) => q,
        Err(message) => return flow_error(StatusCode::BAD_REQUEST, message),
    };
    for (path, cmp, _) in &q.properties {
        if !FLOW_PROPERTIES.contains(&path.as_str()) || *cmp != Cmp::Eq {
            return flow_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "property: unsupported filter {path}; use <path>==<value> with path one of {}",
                    FLOW_PROPERTIES.join(", ")
                ),
            );
        }
    }
    let mut flows: Vec<Flow> = {
        let mut world = shared.lock();
        match tenant(&mut world, &caller) {
            Some(t) => t.flows.values().map(|f| f.to_wire(t.home())).collect(),
            None => Vec::new(),
        }
    };
    let case_insensitive = |path: &str| matches!(path, "state" | "inheritedAttributes.properties.isDestinationFlow");
    flows.retain(|f| {
        q.properties.iter().all(|(path, _, want)| {
            flow_values(f, path).iter().any(|v| {
                if case_insensitive(path) {
                    v.eq_ignore_ascii_case(want)
                } else {
                    v == want
                }
            })
        })
    });
    let (attr, descending) = q.orderby.clone().unwrap_or_else(|| ("updatedAt".to_owned(), true));
    flows.sort_by(|a, b| {
        let key = |f: &Flow| match attr.as_str() {
            "createdAt" => (f.created_at, f.updated_at),
            _ => (f.updated_at, f.created_at),
        };
        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
    });
    if descending {
        flows.reverse();
    }
    if q.count {
        return Json(json!({"count": flows.len()})).into_response();
    }
    let (items, next) = q.page(flows, max, &format!("{FLOWSERVICE}/flows"));
    Json(FlowList {
        items,
        links: next_links(next),
    })
    .into_response()
}

/// `GET /data/foundation/flowservice/flows/{id}` → `{"items":[flow]}` (reference §1.3).
pub(super) async fn get_flow(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let mut world = shared.lock();
    let Some(t) = tenant(&mut world, &caller) else {
        return entity_not_found("flows", &id);
    };
    match t.flows.get(&id) {
        Some(flow) => Json(FlowList {
            items: vec![flow.to_wire(t.home())],
            links: None,
        })
        .into_response(),
        None => entity_not_found("flows", &id),
    }
}

/// `PATCH /data/foundation/flowservice/flows/{id}` with `If-Match` and a JSON-Patch array on
/// the selectors (reference §1.5–§1.8).
pub(super) async fn patch_flow(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let if_match = headers
        .get(axum::http::header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    let outcome = patch_flow_now(&shared, &caller, &id, if_match.as_deref(), &body);
    finish(&shared, &conn, outcome).await
}

/// `"<value>"` with any quotes the value carries removed first (the 412 message's format).
fn quoted(etag: &str) -> String {
    format!("\"{}\"", etag.trim().trim_matches('"'))
}

/// The in-memory part of a flow PATCH: 404, `If-Match` required, the concurrent-writer fault,
/// 412 on a stale etag, validation and the per-flow guardrail (400), then the change with a new
/// etag and `lastOperation`.
fn patch_flow_now(shared: &Shared, caller: &Caller, flow_id: &str, if_match: Option<&str>, body: &Bytes) -> Outcome {
    let mut world = shared.lock();
    let now = world.now_ms();
    let clock = world.export_clock();
    let settings = world.settings.clone();
    let visibility = settings.visibility();
    let World {
        store, faults, stats, ..
    } = &mut *world;
    let missing = || {
        flow_error_details(
            StatusCode::NOT_FOUND,
            format!("flows not found with id = [{flow_id}]"),
            "No dataflow with this id in this sandbox",
        )
    };
    let Some(tenant) = store.tenants.get_mut(&format!("{}/{}", caller.org, caller.sandbox)) else {
        return missing().into();
    };
    let Tenant { audiences, flows, .. } = tenant;
    let Some(flow) = flows.get_mut(flow_id) else {
        return missing().into();
    };
    let Some(if_match) = if_match else {
        stats.flow_patch_rejections += 1;
        return flow_error(
            StatusCode::BAD_REQUEST,
            "If-Match: header is required: send the etag of the flow as read with GET /flows/{id}",
        )
        .into();
    };
    let ops = match parse_json(body) {
        Ok(v) => v,
        Err(detail) => {
            stats.flow_patch_rejections += 1;
            return flow_error(StatusCode::BAD_REQUEST, detail).into();
        }
    };
    let mut changed = flow.materialize(&clock);
    if if_match == flow.etag {
        let roll =
            faults.concurrent_writer_probability > 0.0 && rand::random::<f64>() < faults.concurrent_writer_probability;
        if take(&mut faults.concurrent_writer_next, false) || roll {
            flow.touch(now, "someone-else@AdobeID");
            stats.concurrent_writes += 1;
            changed = true;
            tracing::info!(flow_id = %flow_id, "Concurrent write injected before a PATCH");
        }
    }
    if if_match != flow.etag {
        stats.flow_patch_conflicts += 1;
        if changed {
            shared.changed();
        }
        return flow_error_details(
            StatusCode::PRECONDITION_FAILED,
            format!(
                "Supplied version=[{}] does not match the current version on entity=[{}]",
                quoted(if_match),
                quoted(&flow.etag)
            ),
            "The dataflow changed after the supplied version was read: read it again and send its current etag",
        )
        .into();
    }
    let visible = |a: &crate::state::AudienceRec| a.ais_visible(visibility, now);
    let ctx = PatchContext {
        audiences,
        visible: &visible,
        ids: settings.selector_ids,
        max_audiences: settings.max_audiences_per_flow as usize,
        now,
    };
    let selectors = match apply_patch(flow, &ops, &ctx) {
        Ok(selectors) => selectors,
        Err(message) => {
            stats.flow_patch_rejections += 1;
            if changed {
                shared.changed();
            }
            return flow_error(StatusCode::BAD_REQUEST, message).into();
        }
    };
    flow.selectors = selectors;
    let recorded = match &ops {
        Value::Array(ops) => ops.clone(),
        _ => Vec::new(),
    };
    flow.record_change(recorded, now, &actor(&caller.client_id));
    stats.flow_patches += 1;
    let response = match settings.patch_answer {
        PatchAnswer::Etag => Json(PatchFlowResponse {
            id: flow.id.clone(),
            etag: flow.etag.clone(),
        })
        .into_response(),
        PatchAnswer::Accepted => StatusCode::ACCEPTED.into_response(),
    };
    let lost = lose(&mut faults.lost_answers.patch_flow, faults.hang_ms, stats);
    tracing::info!(
        flow_id = %flow_id,
        selectors = flow.selectors.len(),
        lost_answer = ?lost.map(|l| l.mode),
        "Patched flow"
    );
    drop(world);
    Outcome::committed(response, lost)
}

// ---------------------------------------------------------------------------------------------
// Runs
// ---------------------------------------------------------------------------------------------

/// The `property` paths `GET /runs` filters on, and the comparisons each allows.
const RUN_PROPERTIES: &[(&str, &[Cmp])] = &[
    ("id", &[Cmp::Eq]),
    ("flowId", &[Cmp::Eq]),
    (
        "metrics.recordSummary.targetSummaries[].entitySummaries[].id",
        &[Cmp::Eq],
    ),
    ("metrics.statusSummary.status", &[Cmp::Eq]),
    ("metrics.durationSummary.startedAtUTC", &[Cmp::Gt, Cmp::Lt]),
    ("createdAt", &[Cmp::Gt, Cmp::Lt]),
];

fn run_keeps(run: &FlowRun, path: &str, cmp: Cmp, want: &str) -> bool {
    let number = |v: Option<i64>| {
        let (Some(v), Ok(want)) = (v, want.trim().parse::<i64>()) else {
            return false;
        };
        match cmp {
            Cmp::Gt => v > want,
            Cmp::Lt => v < want,
            Cmp::Eq => v == want,
        }
    };
    match path {
        "id" => run.id == want,
        "flowId" => run.flow_id == want,
        "metrics.recordSummary.targetSummaries[].entitySummaries[].id" => run
            .metrics
            .iter()
            .filter_map(|m| m.record_summary.as_ref())
            .flat_map(|r| &r.target_summaries)
            .flat_map(|t| &t.entity_summaries)
            .any(|e| e.id == want),
        "metrics.statusSummary.status" => run.status().as_str().eq_ignore_ascii_case(want.trim()),
        "metrics.durationSummary.startedAtUTC" => number(run.started_at()),
        "createdAt" => number(run.created_at),
        _ => false,
    }
}

/// Every run of the caller's flows that has started, after making the ones due.
fn all_runs(shared: &Shared, caller: &Caller) -> Vec<FlowRun> {
    let mut world = shared.lock();
    let clock = world.export_clock();
    let Some(t) = tenant(&mut world, caller) else {
        return Vec::new();
    };
    let changed = t.materialize_runs(&clock);
    let runs = t
        .flows
        .values()
        .flat_map(|f| {
            f.runs
                .iter()
                .filter(|r| r.started_at_ms <= clock.now)
                .map(|r| r.to_wire(f, clock.now))
        })
        .collect();
    drop(world);
    if changed {
        shared.changed();
    }
    runs
}

/// `GET /data/foundation/flowservice/runs` (reference §1.12): filters `flowId==`,
/// `metrics.recordSummary.targetSummaries[].entitySummaries[].id==segment:<id>`,
/// `metrics.statusSummary.status==` (any case), `metrics.durationSummary.startedAtUTC>`/`<`;
/// newest first, `limit` ≤ `flow_page_max`, `continuationToken` paging. Only runs within the
/// retention (`flow_runs_retention_days`).
pub(super) async fn list_flow_runs(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let max = shared.lock().settings.flow_page_max.clamp(1, MAX_LIMIT as u32) as usize;
    let q = match parse_list_query(&query) {
        Ok(q) => q,
        Err(message) => return flow_error(StatusCode::BAD_REQUEST, message),
    };
    for (path, cmp, _) in &q.properties {
        let allowed = RUN_PROPERTIES
            .iter()
            .find(|(p, _)| *p == path.as_str())
            .is_some_and(|(_, cmps)| cmps.contains(cmp));
        if !allowed {
            let known: Vec<&str> = RUN_PROPERTIES.iter().map(|(p, _)| *p).collect();
            return flow_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "property: unsupported filter {path}; use one of {} (startedAtUTC and createdAt with > or <, the others with ==)",
                    known.join(", ")
                ),
            );
        }
    }
    let mut runs = all_runs(&shared, &caller);
    runs.retain(|r| {
        q.properties
            .iter()
            .all(|(path, cmp, want)| run_keeps(r, path, *cmp, want))
    });
    let descending = q.orderby.as_ref().is_none_or(|(_, d)| *d);
    runs.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    if descending {
        runs.reverse();
    }
    if q.count {
        return Json(json!({"count": runs.len()})).into_response();
    }
    let (items, next) = q.page(runs, max, &format!("{FLOWSERVICE}/runs"));
    Json(FlowRunList {
        items,
        links: next_links(next),
    })
    .into_response()
}

/// `GET /data/foundation/flowservice/runs/{id}` → `{"items":[run]}`.
pub(super) async fn get_flow_run(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match all_runs(&shared, &caller).into_iter().find(|r| r.id == id) {
        Some(run) => Json(FlowRunList {
            items: vec![run],
            links: None,
        })
        .into_response(),
        None => entity_not_found("runs", &id),
    }
}

// ---------------------------------------------------------------------------------------------
// Ad hoc activation
// ---------------------------------------------------------------------------------------------

/// Whether `Accept` selects version 2 (`application/vnd.adobe.adhoc.activation+json; version=2`).
fn adhoc_v2(accept: &str) -> bool {
    let compact: String = accept
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    compact.contains("application/vnd.adobe.adhoc.activation+json") && compact.contains("version=2")
}

/// `POST /data/core/activation/disflowprovider/adhocrun` (reference §1.14).
pub(super) async fn adhoc_run(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    ConnectInfo(conn): ConnectInfo<ConnHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let v2 = adhoc_v2(header(axum::http::header::ACCEPT));
    let host = match header(axum::http::header::HOST) {
        "" => "platform.adobe.io".to_owned(),
        h => h.to_owned(),
    };
    let outcome = adhoc_now(&shared, &caller, v2, &host, &body);
    finish(&shared, &conn, outcome).await
}

/// `activationInfo`: flow id → audience ids (each list deduplicated, order kept).
fn activation_info(value: &Value) -> Result<Vec<(String, Vec<String>)>, String> {
    const SHAPE: &str =
        "activationInfo: must map destination instance (dataflow) ids to non-empty arrays of audience ids";
    let info = value
        .get("activationInfo")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
        .ok_or(SHAPE)?;
    let mut out = Vec::new();
    for (flow_id, audiences) in info {
        let list = audiences.as_array().filter(|l| !l.is_empty()).ok_or(SHAPE)?;
        let mut ids: Vec<String> = Vec::new();
        for a in list {
            let id = a.as_str().filter(|s| !s.trim().is_empty()).ok_or(SHAPE)?;
            if !ids.iter().any(|x| x == id) {
                ids.push(id.to_owned());
            }
        }
        out.push((flow_id.clone(), ids));
    }
    Ok(out)
}

/// The in-memory part of an ad hoc activation: version, shape and size checks, then every
/// (flow, audience) is checked before any export starts (all or nothing).
fn adhoc_now(shared: &Shared, caller: &Caller, v2: bool, host: &str, body: &Bytes) -> Outcome {
    let value = match parse_json(body) {
        Ok(v) => v,
        Err(detail) => return adhoc_error(StatusCode::BAD_REQUEST, detail).into(),
    };
    let mut world = shared.lock();
    let refuse = |world: &mut World, message: String| -> Outcome {
        world.stats.adhoc_refusals += 1;
        tracing::info!(message = %message, "Refused ad hoc activation");
        adhoc_error(StatusCode::BAD_REQUEST, message).into()
    };
    if !v2 {
        let has_exports = value
            .get("exportIds")
            .and_then(Value::as_array)
            .is_some_and(|ids| !ids.is_empty() && ids.iter().all(Value::is_string));
        if !has_exports {
            return refuse(
                &mut world,
                "exportIds: required by version 1 of the ad hoc activation API (the id of the latest audience export job); \
                 send Accept: application/vnd.adobe.adhoc.activation+json; version=2 to use version 2"
                    .to_owned(),
            );
        }
    }
    let info = match activation_info(&value) {
        Ok(info) => info,
        Err(message) => return refuse(&mut world, message),
    };
    let total: usize = info.iter().map(|(_, a)| a.len()).sum();
    let cap = world.settings.adhoc_max_audiences as usize;
    if total > cap {
        return refuse(
            &mut world,
            format!("An ad hoc activation job can export at most {cap} audiences; this one names {total}"),
        );
    }
    let clock = world.export_clock();
    let min_wait = i64::try_from(world.settings.adhoc_min_wait_ms).unwrap_or(i64::MAX / 4);
    let scheme = world.scheme;
    let key = format!("{}/{}", caller.org, caller.sandbox);
    let Some(tenant) = world.store.tenants.get_mut(&key) else {
        return adhoc_error(
            StatusCode::NOT_FOUND,
            format!("Destination instance {} not found", info[0].0),
        )
        .into();
    };
    let Tenant { audiences, flows, .. } = tenant;
    let name_of = |id: &str| {
        audiences
            .get(id)
            .or_else(|| {
                audiences
                    .values()
                    .find(|a| a.definition.custom_audience_id.as_deref() == Some(id))
            })
            .map(|a| a.definition.name.clone())
            .unwrap_or_else(|| id.to_owned())
    };
    let mut changed = false;
    let mut planned: Vec<(String, String, String)> = Vec::new();
    let mut refusal: Option<String> = None;
    for (flow_id, ids) in &info {
        let Some(flow) = flows.get_mut(flow_id) else {
            if changed {
                shared.changed();
            }
            return adhoc_error(
                StatusCode::NOT_FOUND,
                format!("Destination instance {flow_id} not found"),
            )
            .into();
        };
        changed |= flow.materialize(&clock);
        let mut out_of_range: Vec<String> = Vec::new();
        let mut running: Option<String> = None;
        for id in ids {
            match flow.adhoc_check(id, min_wait, &clock) {
                Ok(segment) => planned.push((flow_id.clone(), id.clone(), segment)),
                Err(AdhocRefusal::OutOfRange) => out_of_range.push(name_of(id)),
                Err(AdhocRefusal::Running(run_id)) => {
                    running.get_or_insert(format!(
                        "Run already going on for audience {id} for order {flow_id} with run id {run_id}"
                    ));
                }
            }
        }
        if !out_of_range.is_empty() {
            refusal = Some(format!(
                "Segments {} are not part of this dataflow or out of schedule range!",
                out_of_range.join(", ")
            ));
        } else if let Some(message) = running {
            refusal = Some(message);
        }
        if refusal.is_some() {
            break;
        }
    }
    if let Some(message) = refusal {
        if changed {
            shared.changed();
        }
        return refuse(&mut world, message);
    }
    let mut order = Vec::new();
    for (flow_id, audience_id, segment) in planned {
        let Some(flow) = flows.get_mut(&flow_id) else {
            continue;
        };
        let run_id = flow.start_adhoc(&segment, &clock);
        order.push(AdhocOrder {
            segment: audience_id,
            order: flow_id,
            status_url: format!("{scheme}://{host}{FLOWSERVICE}/runs/{run_id}"),
        });
    }
    let World { faults, stats, .. } = &mut *world;
    stats.adhoc_runs_started += order.len() as u64;
    let lost = lose(&mut faults.lost_answers.adhoc_run, faults.hang_ms, stats);
    tracing::info!(
        org = %caller.org,
        sandbox = %caller.sandbox,
        exports = order.len(),
        lost_answer = ?lost.map(|l| l.mode),
        "Started ad hoc activation"
    );
    drop(world);
    Outcome::committed(Json(AdhocResponse { order }).into_response(), lost)
}

// ---------------------------------------------------------------------------------------------
// Segmentation jobs and schedules
// ---------------------------------------------------------------------------------------------

/// `GET /data/core/ups/segment/jobs` (reference §2.3): the daily scheduler jobs of the last 30
/// days, with `status`, `sort=creationTime|updateTime:asc|desc` (default `creationTime:asc`),
/// `limit` (1..=100, default 20) and `start`. Other filters are ignored.
pub(super) async fn list_segment_jobs(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let mut status: Option<SegmentJobStatus> = None;
    let mut descending = false;
    let mut by_update = false;
    let mut limit = 20usize;
    let mut start = 0usize;
    for (key, value) in &query {
        match key.as_str() {
            "status" => {
                let wanted = SegmentJobStatus::from(value.as_str());
                if matches!(wanted, SegmentJobStatus::Other(_)) {
                    return bad_request(format!(
                        "status: must be one of {}",
                        SegmentJobStatus::DOCUMENTED.join(", ")
                    ));
                }
                status = Some(wanted);
            }
            "sort" => {
                let (attr, dir) = value.split_once(':').unwrap_or((value.as_str(), "asc"));
                by_update = match attr {
                    "creationTime" => false,
                    "updateTime" => true,
                    _ => return bad_request("sort: must be creationTime or updateTime, with :asc or :desc"),
                };
                descending = match dir.to_ascii_lowercase().as_str() {
                    "asc" => false,
                    "desc" => true,
                    _ => return bad_request("sort: must be creationTime or updateTime, with :asc or :desc"),
                };
            }
            "limit" => match value.trim().parse::<usize>() {
                Ok(n) if (1..=100).contains(&n) => limit = n,
                _ => return bad_request("limit: must be an integer between 1 and 100"),
            },
            "start" => match value.trim().parse::<usize>() {
                Ok(n) => start = n,
                Err(_) => return bad_request("start: must be a non-negative integer"),
            },
            _ => {}
        }
    }
    let (seg, now) = {
        let world = shared.lock();
        (SegmentationClock::new(&world.settings), world.now_ms())
    };
    let key = format!("{}/{}", caller.org, caller.sandbox);
    let mut jobs: Vec<SegmentJob> = segment_jobs(&key, &caller.org, &seg, now);
    jobs.retain(|j| status.as_ref().is_none_or(|s| &j.status == s));
    jobs.sort_by_key(|j| if by_update { j.update_time } else { j.creation_time });
    if descending {
        jobs.reverse();
    }
    let total = jobs.len();
    let children: Vec<SegmentJob> = jobs.into_iter().skip(start).take(limit).collect();
    let next = start + limit;
    let mut links = Map::new();
    if next < total {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &query {
            if k != "start" {
                q.append_pair(k, v);
            }
        }
        q.append_pair("start", &next.to_string());
        links.insert(
            "next".to_owned(),
            json!({"href": format!("{UPS}/segment/jobs?{}", q.finish())}),
        );
    } else {
        links.insert("next".to_owned(), json!({}));
    }
    Json(UpsList {
        page: Some(json!({"totalCount": total, "pageSize": children.len()})),
        children,
        links: Some(Value::Object(links)),
    })
    .into_response()
}

/// `GET /data/core/ups/config/schedules` (reference §2.2): the daily `batch_segmentation`
/// schedule, its cron at `segmentation_hour_utc:segmentation_minute_utc`.
pub(super) async fn list_schedules(
    State(shared): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Response {
    let seg = SegmentationClock::new(&shared.lock().settings);
    let schedule = batch_schedule(&format!("{}/{}", caller.org, caller.sandbox), &seg);
    Json(UpsList {
        page: Some(json!({"totalCount": 1, "pageSize": 1})),
        children: vec![schedule],
        links: Some(json!({})),
    })
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_filters_limits_and_tokens() {
        let q = |pairs: &[(&str, &str)]| {
            let owned: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
            parse_list_query(&owned)
        };
        let parsed = q(&[
            ("property", "state==enabled"),
            ("property", "metrics.durationSummary.startedAtUTC>5"),
            ("limit", "2"),
            ("continuationToken", "ct4"),
            ("orderby", " createdAt"),
        ])
        .unwrap();
        assert_eq!(
            parsed.properties[0],
            ("state".to_owned(), Cmp::Eq, "enabled".to_owned())
        );
        assert_eq!(parsed.properties[1].1, Cmp::Gt);
        assert_eq!((parsed.limit, parsed.offset), (Some(2), 4));
        assert_eq!(parsed.orderby, Some(("createdAt".to_owned(), false)));
        let (page, next) = parsed.page((0..10).collect::<Vec<_>>(), 100, "/x");
        assert_eq!(page, vec![4, 5]);
        let next = next.unwrap();
        assert!(next.starts_with("/x?property=state%3D%3Denabled"), "{next}");
        assert!(next.ends_with("limit=2&continuationToken=ct6"), "{next}");
        assert!(q(&[("limit", "101")]).unwrap_err().starts_with("limit:"));
        assert!(
            q(&[("continuationToken", "abc")])
                .unwrap_err()
                .starts_with("continuationToken:")
        );
        assert!(q(&[("property", "state")]).unwrap_err().starts_with("property:"));
        assert!(q(&[("orderby", "name")]).unwrap_err().starts_with("orderby:"));
        let last = q(&[("continuationToken", "ct8")]).unwrap();
        assert_eq!(last.page((0..10).collect::<Vec<_>>(), 100, "/x"), (vec![8, 9], None));
    }

    #[test]
    fn only_the_v2_accept_header_selects_version_2() {
        assert!(adhoc_v2("application/vnd.adobe.adhoc.activation+json; version=2"));
        assert!(adhoc_v2("Application/VND.adobe.adhoc.activation+json;version=2"));
        assert!(!adhoc_v2("application/json"));
        assert!(!adhoc_v2("application/vnd.adobe.adhoc.activation+json; version=1"));
        assert!(!adhoc_v2(""));
    }

    #[test]
    fn activation_info_is_a_map_of_non_empty_id_lists() {
        let ok = activation_info(&json!({"activationInfo": {"f": ["a", "b", "a"]}})).unwrap();
        assert_eq!(ok, vec![("f".to_owned(), vec!["a".to_owned(), "b".to_owned()])]);
        for bad in [
            json!({}),
            json!({"activationInfo": {}}),
            json!({"activationInfo": {"f": []}}),
            json!({"activationInfo": {"f": [1]}}),
            json!({"activationInfo": ["f"]}),
        ] {
            assert!(
                activation_info(&bad).unwrap_err().starts_with("activationInfo:"),
                "{bad}"
            );
        }
    }
}
