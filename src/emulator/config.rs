//! Emulator settings that tests and the admin API can change: accepted credentials, timing of the
//! asynchronous lifecycles, guardrail limits, strictness, and injected faults.
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

/// One OAuth server-to-server credential the emulated IMS accepts.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialSpec {
    /// Client ID (`x-api-key`).
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
    /// The org the credential belongs to.
    pub org_id: String,
}

impl std::fmt::Debug for CredentialSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSpec")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .field("org_id", &self.org_id)
            .finish()
    }
}

impl Default for CredentialSpec {
    fn default() -> Self {
        CredentialSpec {
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            client_secret: DEFAULT_CLIENT_SECRET.to_owned(),
            org_id: DEFAULT_ORG_ID.to_owned(),
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
    /// Runs an audience may ever have (guardrail "ingestions per audience").
    pub max_runs_per_audience: u32,
    /// Runs a sandbox may start per UTC day.
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
            max_runs_per_sandbox_per_day: 100,
            run_in_progress_status: 422,
            guardrail_status: 422,
            guardrail_retry_after_secs: 3600,
            strict: false,
            ups_default_limit: 20,
            identity_namespaces: crate::emulator::validate::STANDARD_NAMESPACES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        }
    }
}

impl Settings {
    /// `token_lifetime_secs` as a duration.
    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs(self.token_lifetime_secs)
    }
}

/// Injected faults (`GET`/`PUT /_emulator/faults`). They apply to the AEP routes
/// (`/data/core/…`), not to IMS or the admin API. Missing keys take their defaults (no faults).
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
    /// The next N create operations end `FAILED`.
    pub fail_next_operations: u32,
    /// Every create operation ends `FAILED`.
    pub fail_all_operations: bool,
    /// Message of failed operations.
    pub operation_failure_message: String,
    /// The next N runs end `FAILED`.
    pub fail_next_runs: u32,
    /// Every run ends `FAILED`.
    pub fail_all_runs: bool,
    /// Message of failed runs.
    pub run_failure_message: String,
    /// DELETE answers 422 "in use".
    pub refuse_delete_in_use: bool,
    /// The next N creates are committed and then the connection is dropped without an answer.
    pub drop_next_creates: u32,
    /// Every create is committed and then dropped.
    pub drop_all_creates: bool,
    /// The next N start-runs are committed and then the connection is dropped.
    pub drop_next_runs: u32,
    /// Every start-run is committed and then dropped.
    pub drop_all_runs: bool,
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
            fail_next_operations: 0,
            fail_all_operations: false,
            operation_failure_message: "Audience creation failed (injected fault)".to_owned(),
            fail_next_runs: 0,
            fail_all_runs: false,
            run_failure_message: "Ingestion failed (injected fault)".to_owned(),
            refuse_delete_in_use: false,
            drop_next_creates: 0,
            drop_all_creates: false,
            drop_next_runs: 0,
            drop_all_runs: false,
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
