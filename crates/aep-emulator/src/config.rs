//! Emulator settings that tests and the admin API can change: accepted credentials (and what they
//! are entitled to), timing of the asynchronous lifecycles, the AEP behaviours the docs leave open
//! (duplicate names, `customAudienceId`, when a new audience becomes visible, the run-count
//! window), guardrail limits, strictness, and injected faults (including lost answers).
//!
//! Plain data with serde (snake_case JSON on `/_emulator/config` and `/_emulator/faults`); no
//! behaviour lives here.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Client ID accepted by default (local use only).
pub const DEFAULT_CLIENT_ID: &str = "local-client";
/// Client secret accepted by default (local use only).
pub const DEFAULT_CLIENT_SECRET: &str = "local-secret";
/// IMS org accepted by default.
pub const DEFAULT_ORG_ID: &str = "LOCAL0RG@AdobeOrg";
/// Scopes the emulated IMS knows; any other scope is `invalid_scope`.
pub const KNOWN_SCOPES: &[&str] = &[
    "openid",
    "session",
    "AdobeID",
    "read_organizations",
    "additional_info",
    "additional_info.projectedProductContext",
    "additional_info.roles",
    "additional_info.job_function",
    "profile",
    "email",
    "read_pc",
    "read_pc.dma_tartan",
    "read_client_secret",
    "manage_client_secrets",
];

/// What a credential is entitled to. IMS issues tokens either way; the AEP routes refuse the calls
/// of a credential that is not fully entitled, with the catalogue's codes (reference §6.1, §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Entitlement {
    /// Every AEP call is allowed.
    #[default]
    Full,
    /// Not authorised for the external-audience APIs: 401 `100922-401` (service body).
    NoExternalAudienceApi,
    /// The integration is not entitled for the org: gateway 403 `403025` "Profile is not valid".
    InvalidProfile,
    /// No AEP product profile / region: gateway 403 `403027` "User region is missing".
    NoRegion,
}

/// One OAuth server-to-server credential the emulated IMS accepts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSpec {
    /// Client ID (`x-api-key`).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// The org the credential belongs to.
    pub org_id: String,
    /// What the credential may do on the AEP routes (default: everything).
    #[serde(default)]
    pub entitlement: Entitlement,
}

impl std::fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSpec")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("org_id", &self.org_id)
            .field("entitlement", &self.entitlement)
            .finish()
    }
}

impl Default for CredentialSpec {
    fn default() -> Self {
        CredentialSpec {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            org_id: DEFAULT_ORG_ID.to_owned(),
            entitlement: Entitlement::Full,
        }
    }
}

/// Whether a create may reuse the name of an audience of the same sandbox (reference §3 rule 12
/// leaves "what counts as duplicate" open).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateNames {
    /// Same name (exact, case-sensitive) as an existing audience of the sandbox, finished or still
    /// being created → 409 `100950-409`.
    #[default]
    Reject,
    /// Duplicates are created.
    Allow,
}

/// What the service does with a create's `customAudienceId` (undocumented beyond its existence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomAudienceIdModel {
    /// Stored and echoed (`operationDetails`, PATCH answer, `/ups` `audienceId`); a second create
    /// with a value already used in the sandbox → 409 `100950-409`.
    #[default]
    Unique,
    /// Dropped at create: never stored, echoed or checked.
    Ignore,
}

/// When a new audience becomes visible. Time-based only (a client that lost the create answer
/// never polls): with `done_at = created_at + operation_delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupVisibility {
    /// Visible to every route from creation.
    Immediate,
    /// Visible to every route from `done_at`.
    #[default]
    AfterOperation,
    /// The `/ais` routes see it from `done_at`; the `/ups/audiences` lookups (list, get, delete)
    /// only from `done_at + lookup_lag_ms`.
    Lagged,
}

/// Window of the "ingestions per audience" guardrail (reference §4 does not say which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunWindow {
    /// Every run the audience ever had counts.
    #[default]
    Lifetime,
    /// Runs of the audience started in the current UTC day count.
    Day,
}

/// What a successful flow PATCH answers: the docs disagree (reference "aep-activation-api" §4
/// #2), so both are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PatchAnswer {
    /// 200 `{"id": …, "etag": …}` (the API spec, A-DEST `Patch_Flow_Response`).
    #[default]
    Etag,
    /// 202 Accepted without a body (the batch and streaming tutorials).
    Accepted,
}

/// How a flow stores the audience ids of the selectors it is sent (the docs leave it open,
/// reference "aep-activation-api" §5, §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorIdModel {
    /// `value` is stored as sent.
    #[default]
    AsSent,
    /// Like the spec's external-audience example: `value.id` becomes the audience's
    /// `customAudienceId` when it has one (else its id), `systemSegmentId` its platform id and
    /// `namespace` `CustomerAudienceUpload`.
    Normalise,
}

/// The visibility rule of [`Settings`], small enough to copy next to a borrowed tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visibility {
    /// The mode.
    pub mode: LookupVisibility,
    /// Extra delay of the `/ups` lookups in [`LookupVisibility::Lagged`] mode, milliseconds.
    pub lag_ms: u64,
}

impl Visibility {
    /// Whether an audience created at `created_at_ms` whose operation is done at `done_at_ms` is
    /// visible to the `/ais` routes at `now`.
    pub fn ais(&self, created_at_ms: i64, done_at_ms: i64, now: i64) -> bool {
        match self.mode {
            LookupVisibility::Immediate => now >= created_at_ms,
            LookupVisibility::AfterOperation | LookupVisibility::Lagged => now >= done_at_ms,
        }
    }

    /// Whether it is visible to the `/ups/audiences` lookups at `now`.
    pub fn lookup(&self, created_at_ms: i64, done_at_ms: i64, now: i64) -> bool {
        match self.mode {
            LookupVisibility::Lagged => now >= done_at_ms.saturating_add(self.lag_ms.min(i64::MAX as u64) as i64),
            _ => self.ais(created_at_ms, done_at_ms, now),
        }
    }
}

/// Runtime settings (`GET`/`PUT /_emulator/config`). Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `expires_in` of issued tokens, seconds.
    pub token_lifetime_secs: u64,
    /// Time from create until the audience exists and the operation may finish, milliseconds.
    pub operation_delay_ms: u64,
    /// Polls of an operation answered `PROCESSING` before it reports its outcome.
    pub operation_polls: u32,
    /// Time from start until a run may finish, milliseconds.
    pub run_delay_ms: u64,
    /// Polls of a run answered `PROCESSING` before it reports its outcome.
    pub run_polls: u32,
    /// Runs an audience may have within [`Settings::runs_per_audience_window`] (guardrail
    /// "ingestions per audience").
    pub max_runs_per_audience: u32,
    /// Whether `max_runs_per_audience` counts runs over the audience's lifetime or per UTC day.
    pub runs_per_audience_window: RunWindow,
    /// Runs a sandbox may start per UTC day (runs of audiences deleted since still count).
    pub max_runs_per_sandbox_per_day: u32,
    /// Status for "a run is already in progress": 422 (default) or 409.
    pub run_in_progress_status: u16,
    /// Status for guardrail refusals: 422 (default) or 429 (with `Retry-After`).
    pub guardrail_status: u16,
    /// `Retry-After` seconds sent with a 429 guardrail refusal.
    pub guardrail_retry_after_secs: u64,
    /// Strict mode: missing `x-sandbox-name` → 401 and missing `Content-Type` → 400, instead of
    /// defaulting to `prod` / accepting JSON bodies.
    pub strict: bool,
    /// Default page size of `/ups/audiences`.
    pub ups_default_limit: u32,
    /// Identity namespaces the org knows: a create naming another one is refused with 400.
    /// Defaults to AEP's standard namespaces; an empty list accepts any.
    pub identity_namespaces: Vec<String>,
    /// Whether a create may reuse an existing audience's name in the sandbox.
    pub duplicate_names: DuplicateNames,
    /// What happens to a create's `customAudienceId`.
    pub custom_audience_id: CustomAudienceIdModel,
    /// When a new audience becomes visible to the `/ais` routes and the `/ups` lookups.
    pub lookup_visibility: LookupVisibility,
    /// Extra delay of the `/ups` lookups in `lagged` mode, milliseconds.
    pub lookup_lag_ms: u64,
    /// What a successful flow PATCH answers: 200 `{id, etag}` or 202 without a body.
    pub patch_answer: PatchAnswer,
    /// How flows store the audience ids of the selectors they are sent.
    pub selector_ids: SelectorIdModel,
    /// Audiences one dataflow may hold (guardrail, soft in AEP): a PATCH growing a flow past it
    /// is refused with 400.
    pub max_audiences_per_flow: u32,
    /// Audiences one ad hoc activation job may name (hard guardrail).
    pub adhoc_max_audiences: u32,
    /// Time an audience must be past its first scheduled activation in a flow before an ad hoc
    /// export of it is accepted, milliseconds (the docs say 1 hour, older ones 20 minutes).
    pub adhoc_min_wait_ms: u64,
    /// Time from mapping an audience into a streaming flow until its export run starts, ms.
    pub streaming_export_delay_ms: u64,
    /// Time an export run (scheduled, streaming or ad hoc) takes, milliseconds.
    pub export_run_duration_ms: u64,
    /// UTC hour of the daily batch segmentation job (and of its schedule's cron).
    pub segmentation_hour_utc: u32,
    /// UTC minute of the daily batch segmentation job.
    pub segmentation_minute_utc: u32,
    /// Time a daily segmentation job takes until `SUCCEEDED`, milliseconds.
    pub segmentation_job_duration_ms: u64,
    /// Days of export runs kept and listed by `GET /runs` (at most 366).
    pub flow_runs_retention_days: u32,
    /// Largest page of `GET /flows` and `GET /runs` (AEP: 100, also the most this accepts).
    pub flow_page_max: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime_secs: 86_399,
            operation_delay_ms: 0,
            operation_polls: 0,
            run_delay_ms: 0,
            run_polls: 0,
            max_runs_per_audience: 10,
            runs_per_audience_window: RunWindow::Lifetime,
            max_runs_per_sandbox_per_day: 100,
            run_in_progress_status: 422,
            guardrail_status: 422,
            guardrail_retry_after_secs: 3600,
            strict: false,
            ups_default_limit: 20,
            identity_namespaces: crate::validate::STANDARD_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            duplicate_names: DuplicateNames::Reject,
            custom_audience_id: CustomAudienceIdModel::Unique,
            lookup_visibility: LookupVisibility::AfterOperation,
            lookup_lag_ms: 0,
            patch_answer: PatchAnswer::Etag,
            selector_ids: SelectorIdModel::AsSent,
            max_audiences_per_flow: 250,
            adhoc_max_audiences: 80,
            adhoc_min_wait_ms: 3_600_000,
            streaming_export_delay_ms: 5_000,
            export_run_duration_ms: 60_000,
            segmentation_hour_utc: 1,
            segmentation_minute_utc: 0,
            segmentation_job_duration_ms: 1_800_000,
            flow_runs_retention_days: 7,
            flow_page_max: 100,
        }
    }
}

impl Settings {
    /// `token_lifetime_secs` as a duration.
    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.token_lifetime_secs)
    }

    /// The visibility rule now in force.
    pub fn visibility(&self) -> Visibility {
        Visibility {
            mode: self.lookup_visibility,
            lag_ms: self.lookup_lag_ms,
        }
    }
}

/// How a lost answer reaches (or rather does not reach) the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostMode {
    /// The connection is dropped without a single response byte.
    #[default]
    Drop,
    /// A 500 `100970-500` is answered although the work was done.
    Error500,
    /// The answer is held for [`Faults::hang_ms`], then the connection is dropped (the client's
    /// timeout fires first).
    Timeout,
}

/// "Do the work, then lose the answer" for one kind of call. It fires only for calls that would
/// have succeeded (never for validation errors, 404s or refusals).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LostAnswer {
    /// Lose the answers of the next N successful calls (deterministic).
    pub next: u32,
    /// Lose every answer.
    pub all: bool,
    /// Probability (0..1) of losing an answer.
    pub probability: f64,
    /// How the answer is lost.
    pub mode: LostMode,
}

impl LostAnswer {
    /// Decides for one successful call; consumes one of `next`.
    pub(crate) fn fire(&mut self) -> Option<LostMode> {
        let roll = self.probability > 0.0 && rand::random::<f64>() < self.probability;
        (take(&mut self.next, self.all) || roll).then_some(self.mode)
    }
}

/// Lost answers per non-read call.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LostAnswers {
    /// `POST /external-audience/`: the audience and its operation exist.
    pub create: LostAnswer,
    /// `POST …/{id}/runs`: the run has started.
    pub start_run: LostAnswer,
    /// `PATCH …/{id}`: the patch is applied.
    pub patch: LostAnswer,
    /// `DELETE …/{id}` (ais and ups): the audience is gone.
    pub delete: LostAnswer,
    /// `PATCH /flowservice/flows/{id}`: the patch is applied (new etag, selectors changed).
    pub patch_flow: LostAnswer,
    /// `POST /activation/disflowprovider/adhocrun`: the export runs have started.
    pub adhoc_run: LostAnswer,
}

/// Injected faults (`GET`/`PUT /_emulator/faults`). They apply to the AEP routes
/// (`/data/core/…`, `/data/foundation/…`), not to IMS or the admin API. Missing keys take their
/// defaults (no faults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Probability (0..1) of answering 429 with `Retry-After`.
    pub rate_limit_probability: f64,
    /// Answer the next N AEP requests with 429 (deterministic).
    pub rate_limit_next: u32,
    /// `Retry-After` seconds on injected 429s.
    pub retry_after_secs: u64,
    /// Probability (0..1) of answering 500.
    pub server_error_probability: f64,
    /// Probability (0..1) of answering 503.
    pub unavailable_probability: f64,
    /// Answer the next N AEP requests with 503 (deterministic).
    pub unavailable_next: u32,
    /// Latency added to every AEP request, milliseconds.
    pub latency_ms: u64,
    /// Delay of the answer of every committed create, start-run, PATCH and DELETE, after the work
    /// is done, milliseconds: widens the window between the work and the caller hearing of it.
    pub answer_delay_ms: u64,
    /// The next N create operations end `FAILED`.
    pub fail_next_operations: u32,
    /// Every create operation ends `FAILED`.
    pub fail_all_operations: bool,
    /// Message of failed operations; none by default (the docs show no failure detail).
    pub operation_failure_message: Option<String>,
    /// The next N create operations report `SUCCESS` without an `audienceId` (a protocol
    /// violation the docs rule out; the audience is created).
    pub omit_audience_id_next: u32,
    /// The next N runs end `FAILED`.
    pub fail_next_runs: u32,
    /// Every run ends `FAILED`.
    pub fail_all_runs: bool,
    /// Message of failed runs; none by default (the docs show only the stage statuses).
    pub run_failure_message: Option<String>,
    /// DELETE answers 422 "in use".
    pub refuse_delete_in_use: bool,
    /// Calls whose work is done and whose answer is then lost.
    pub lost_answers: LostAnswers,
    /// How long a [`LostMode::Timeout`] answer is held before the connection is dropped, ms.
    pub hang_ms: u64,
    /// Probability (0..1) that someone else (a human in the UI) writes a flow just before a
    /// PATCH with the current etag is applied: the flow's etag changes, so that PATCH gets 412.
    pub concurrent_writer_probability: f64,
    /// The next N flow PATCHes with the current etag meet a concurrent writer (deterministic).
    pub concurrent_writer_next: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit_probability: 0.0,
            rate_limit_next: 0,
            retry_after_secs: 1,
            server_error_probability: 0.0,
            unavailable_probability: 0.0,
            unavailable_next: 0,
            latency_ms: 0,
            answer_delay_ms: 0,
            fail_next_operations: 0,
            omit_audience_id_next: 0,
            fail_all_operations: false,
            operation_failure_message: None,
            fail_next_runs: 0,
            fail_all_runs: false,
            run_failure_message: None,
            refuse_delete_in_use: false,
            lost_answers: LostAnswers::default(),
            hang_ms: 30_000,
            concurrent_writer_probability: 0.0,
            concurrent_writer_next: 0,
        }
    }
}

/// Takes one from a "next N" counter or honours an "all" switch.
pub(crate) fn take(next: &mut u32, all: bool) -> bool {
    if all {
        return true;
    }
    if *next > 0 {
        *next -= 1;
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn open_behaviours_use_snake_case_names_and_documented_defaults() {
        let value = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(value["duplicate_names"], "reject");
        assert_eq!(value["custom_audience_id"], "unique");
        assert_eq!(value["lookup_visibility"], "after_operation");
        assert_eq!(value["lookup_lag_ms"], 0);
        assert_eq!(value["runs_per_audience_window"], "lifetime");
        let partial: Settings = serde_json::from_value(json!({
            "duplicate_names": "allow", "custom_audience_id": "ignore",
            "lookup_visibility": "lagged", "runs_per_audience_window": "day"
        }))
        .unwrap();
        assert_eq!(partial.duplicate_names, DuplicateNames::Allow);
        assert_eq!(partial.custom_audience_id, CustomAudienceIdModel::Ignore);
        assert_eq!(partial.lookup_visibility, LookupVisibility::Lagged);
        assert_eq!(partial.runs_per_audience_window, RunWindow::Day);
        assert_eq!(partial.max_runs_per_audience, 10, "missing keys default");
        assert!(serde_json::from_value::<Settings>(json!({"lookup_visibility": "later"})).is_err());
    }

    #[test]
    fn activation_settings_and_faults_have_documented_defaults_and_names() {
        let value = serde_json::to_value(Settings::default()).unwrap();
        assert_eq!(value["patch_answer"], "etag");
        assert_eq!(value["selector_ids"], "as_sent");
        assert_eq!(value["max_audiences_per_flow"], 250);
        assert_eq!(value["adhoc_max_audiences"], 80);
        assert_eq!(value["adhoc_min_wait_ms"], 3_600_000);
        assert_eq!(value["segmentation_hour_utc"], 1);
        assert_eq!(value["segmentation_minute_utc"], 0);
        let partial: Settings =
            serde_json::from_value(json!({"patch_answer": "accepted", "selector_ids": "normalise"})).unwrap();
        assert_eq!(partial.patch_answer, PatchAnswer::Accepted);
        assert_eq!(partial.selector_ids, SelectorIdModel::Normalise);
        let faults: Faults = serde_json::from_value(json!({
            "concurrent_writer_next": 1,
            "lost_answers": {"patch_flow": {"next": 1}, "adhoc_run": {"mode": "error500"}}
        }))
        .unwrap();
        assert_eq!(faults.concurrent_writer_next, 1);
        assert_eq!(faults.concurrent_writer_probability, 0.0);
        assert_eq!(faults.lost_answers.patch_flow.next, 1);
        assert_eq!(faults.lost_answers.adhoc_run.mode, LostMode::Error500);
    }

    #[test]
    fn faults_default_to_no_messages_and_parse_lost_answers() {
        let faults = Faults::default();
        assert_eq!(faults.operation_failure_message, None);
        assert_eq!(faults.run_failure_message, None);
        assert_eq!(faults.hang_ms, 30_000);
        let parsed: Faults = serde_json::from_value(json!({
            "lost_answers": {"start_run": {"next": 2, "mode": "timeout"}, "delete": {"mode": "error500"}}
        }))
        .unwrap();
        assert_eq!(parsed.lost_answers.start_run.next, 2);
        assert_eq!(parsed.lost_answers.start_run.mode, LostMode::Timeout);
        assert_eq!(parsed.lost_answers.delete.mode, LostMode::Error500);
        assert_eq!(parsed.lost_answers.create, LostAnswer::default());
        assert_eq!(serde_json::to_value(LostMode::Error500).unwrap(), "error500");
    }

    #[test]
    fn credentials_default_to_full_entitlement() {
        let spec: CredentialSpec =
            serde_json::from_value(json!({"client_id": "c", "client_secret": "s", "org_id": "o"})).unwrap();
        assert_eq!(spec.entitlement, Entitlement::Full);
        let spec: CredentialSpec = serde_json::from_value(
            json!({"client_id": "c", "client_secret": "s", "org_id": "o", "entitlement": "no_external_audience_api"}),
        )
        .unwrap();
        assert_eq!(spec.entitlement, Entitlement::NoExternalAudienceApi);
        assert!(!format!("{spec:?}").contains("\"s\""));
    }

    #[test]
    fn lost_answer_fires_for_next_n_or_all() {
        let mut once = LostAnswer {
            next: 1,
            mode: LostMode::Error500,
            ..LostAnswer::default()
        };
        assert_eq!(once.fire(), Some(LostMode::Error500));
        assert_eq!(once.fire(), None);
        let mut all = LostAnswer {
            all: true,
            ..LostAnswer::default()
        };
        assert!((0..5).all(|_| all.fire() == Some(LostMode::Drop)));
        let mut certain = LostAnswer {
            probability: 1.0,
            ..LostAnswer::default()
        };
        assert_eq!(certain.fire(), Some(LostMode::Drop));
        assert_eq!(LostAnswer::default().fire(), None);
    }

    #[test]
    fn visibility_is_a_function_of_time_only() {
        let (created, done) = (1_000, 1_400);
        let rule = |mode, lag_ms| Visibility { mode, lag_ms };
        let immediate = rule(LookupVisibility::Immediate, 0);
        assert!(immediate.ais(created, done, created) && immediate.lookup(created, done, created));
        let after = rule(LookupVisibility::AfterOperation, 600);
        assert!(!after.ais(created, done, 1_399) && !after.lookup(created, done, 1_399));
        assert!(after.ais(created, done, 1_400) && after.lookup(created, done, 1_400));
        let lagged = rule(LookupVisibility::Lagged, 600);
        assert!(!lagged.ais(created, done, 1_399));
        assert!(lagged.ais(created, done, 1_400) && !lagged.lookup(created, done, 1_999));
        assert!(lagged.lookup(created, done, 2_000));
        assert!(!rule(LookupVisibility::Lagged, u64::MAX).lookup(created, done, i64::MAX - 1));
    }
}
