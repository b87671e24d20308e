//! `aep-emulator`: runs the AEP + IMS emulator standalone (local demo, benchmark, manual curl).
//!
//! Prints exactly one line, `listening on <addr>`, to stdout once the listener is bound; logs go
//! to stderr. With `--tls` it serves HTTPS with a CA generated at start, whose PEM `--ca-out`
//! writes before that line is printed. Stops on Ctrl-C / SIGTERM, writing the state file if one is
//! configured.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aep_emulator::{
    CredentialSpec, CustomAudienceIdModel, DuplicateNames, Emulator, Entitlement, Faults, LookupVisibility, LostAnswer,
    LostMode, PatchAnswer, RunWindow, SelectorIdModel, Settings,
};
use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, ValueEnum};
use serde::de::DeserializeOwned;

/// A flag whose values are the snake_case names an emulator enum has in `/_emulator/*` JSON.
fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: DeserializeOwned + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names.iter().copied())
        .try_map(|name| serde_json::from_value::<T>(serde_json::Value::String(name)))
}

/// Calls `--lose-answers` accepts.
const LOSABLE_CALLS: [&str; 6] = ["create", "start_run", "patch", "delete", "patch_flow", "adhoc_run"];

/// Parses `HH:MM` (UTC) into `(hour, minute)`.
fn utc_time(s: &str) -> Result<(u32, u32), String> {
    let parsed = s.split_once(':').and_then(|(h, m)| {
        let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
        (h < 24 && m < 60).then_some((h, m))
    });
    parsed.ok_or_else(|| format!("{s:?} is not a UTC time HH:MM"))
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Emulator of the Adobe Experience Platform external-audience API and the IMS token endpoint.
///
/// For local use only: the defaults accept client id `local-client`, secret `local-secret`,
/// org `LOCAL0RG@AdobeOrg`. Point the operator's platform and IMS URLs at the printed address.
#[derive(Debug, Parser)]
#[command(name = "aep-emulator", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "AEP_EMULATOR_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Client ID (API key) accepted by the emulated IMS.
    #[arg(long, env = "AEP_EMULATOR_CLIENT_ID", default_value = "local-client")]
    client_id: String,

    /// Client secret accepted for --client-id.
    #[arg(
        long,
        env = "AEP_EMULATOR_CLIENT_SECRET",
        default_value = "local-secret",
        hide_env_values = true
    )]
    client_secret: String,

    /// IMS org of the credential (value of x-gw-ims-org-id).
    #[arg(long, env = "AEP_EMULATOR_ORG_ID", default_value = "LOCAL0RG@AdobeOrg")]
    org_id: String,

    /// What the credential may do on the AEP routes (tokens are issued either way):
    /// no_external_audience_api → 401 100922-401, invalid_profile → 403 403025, no_region → 403
    /// 403027.
    #[arg(long, env = "AEP_EMULATOR_ENTITLEMENT", default_value = "full",
          value_parser = choice::<Entitlement>(&["full", "no_external_audience_api", "invalid_profile", "no_region"]))]
    entitlement: Entitlement,

    /// Lifetime of issued tokens (expires_in), seconds.
    #[arg(long, env = "AEP_EMULATOR_TOKEN_LIFETIME_SECS", default_value_t = 86_399)]
    token_lifetime_secs: u64,

    /// Time from create until the audience exists and the operation can succeed, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_OPERATION_DELAY_MS", default_value_t = 1_000)]
    operation_delay_ms: u64,

    /// Polls of an operation answered PROCESSING before it reports its outcome.
    #[arg(long, env = "AEP_EMULATOR_OPERATION_POLLS", default_value_t = 0)]
    operation_polls: u32,

    /// Time from start until a run can finish, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_RUN_DELAY_MS", default_value_t = 3_000)]
    run_delay_ms: u64,

    /// Polls of a run answered PROCESSING before it reports its outcome.
    #[arg(long, env = "AEP_EMULATOR_RUN_POLLS", default_value_t = 0)]
    run_polls: u32,

    /// Zero-latency mode: operations and runs finish on their first poll, streaming exports
    /// start at once and export runs complete as they start (overrides the timing flags; for the
    /// benchmark).
    #[arg(long, env = "AEP_EMULATOR_ZERO_LATENCY")]
    zero_latency: bool,

    /// Extra identity namespace the org knows, besides AEP's standard ones (Email, ECID, CRMID,
    /// Phone, GAID, IDFA, AAID, Email_LC_SHA256, Phone_SHA256); repeatable. A create that names an
    /// unknown namespace is refused with 400.
    #[arg(
        long = "identity-namespace",
        env = "AEP_EMULATOR_IDENTITY_NAMESPACES",
        value_delimiter = ','
    )]
    identity_namespaces: Vec<String>,

    /// Guardrail: runs an audience may have (over its lifetime, or per UTC day with
    /// --runs-per-audience-window day).
    #[arg(long, env = "AEP_EMULATOR_MAX_RUNS_PER_AUDIENCE", default_value_t = 10)]
    max_runs_per_audience: u32,

    /// Window of --max-runs-per-audience: lifetime or day (UTC).
    #[arg(long, env = "AEP_EMULATOR_RUNS_PER_AUDIENCE_WINDOW", default_value = "lifetime",
          value_parser = choice::<RunWindow>(&["lifetime", "day"]))]
    runs_per_audience_window: RunWindow,

    /// Guardrail: runs a sandbox may start per UTC day (runs of deleted audiences still count).
    #[arg(long, env = "AEP_EMULATOR_MAX_RUNS_PER_SANDBOX_PER_DAY", default_value_t = 100)]
    max_runs_per_sandbox_per_day: u32,

    /// HTTP status for "a run is already in progress" (422 or 409).
    #[arg(long, env = "AEP_EMULATOR_RUN_IN_PROGRESS_STATUS", default_value_t = 422,
          value_parser = clap::builder::PossibleValuesParser::new(["409", "422"]).map(|s| s.parse::<u16>().unwrap_or(422)))]
    run_in_progress_status: u16,

    /// HTTP status for guardrail refusals (422, or 429 with Retry-After).
    #[arg(long, env = "AEP_EMULATOR_GUARDRAIL_STATUS", default_value_t = 422,
          value_parser = clap::builder::PossibleValuesParser::new(["422", "429"]).map(|s| s.parse::<u16>().unwrap_or(422)))]
    guardrail_status: u16,

    /// A create whose name (exact, case-sensitive) is already used in the sandbox: reject (409
    /// 100950-409) or allow.
    #[arg(long, env = "AEP_EMULATOR_DUPLICATE_NAMES", default_value = "reject",
          value_parser = choice::<DuplicateNames>(&["reject", "allow"]))]
    duplicate_names: DuplicateNames,

    /// customAudienceId of a create: unique (stored, echoed, a reuse in the sandbox is 409) or
    /// ignore (dropped at create).
    #[arg(long, env = "AEP_EMULATOR_CUSTOM_AUDIENCE_ID", default_value = "unique",
          value_parser = choice::<CustomAudienceIdModel>(&["unique", "ignore"]))]
    custom_audience_id: CustomAudienceIdModel,

    /// When a new audience becomes visible: immediate (at create), after_operation (once
    /// --operation-delay-ms has passed) or lagged (the /ups lookups --lookup-lag-ms later still).
    #[arg(long, env = "AEP_EMULATOR_LOOKUP_VISIBILITY", default_value = "after_operation",
          value_parser = choice::<LookupVisibility>(&["immediate", "after_operation", "lagged"]))]
    lookup_visibility: LookupVisibility,

    /// Extra delay of the /ups lookups with --lookup-visibility lagged, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_LOOKUP_LAG_MS", default_value_t = 0)]
    lookup_lag_ms: u64,

    /// What a successful flow PATCH answers: etag (200 {id, etag}) or accepted (202, no body).
    #[arg(long, env = "AEP_EMULATOR_FLOW_PATCH_ANSWER", default_value = "etag",
          value_parser = choice::<PatchAnswer>(&["etag", "accepted"]))]
    flow_patch_answer: PatchAnswer,

    /// How flows store selector ids: as_sent, or normalise (value.id = the customAudienceId when
    /// there is one, systemSegmentId = the audience id, namespace CustomerAudienceUpload).
    #[arg(long, env = "AEP_EMULATOR_SELECTOR_IDS", default_value = "as_sent",
          value_parser = choice::<SelectorIdModel>(&["as_sent", "normalise"]))]
    selector_ids: SelectorIdModel,

    /// Guardrail: audiences one destination dataflow may hold.
    #[arg(long, env = "AEP_EMULATOR_MAX_AUDIENCES_PER_FLOW", default_value_t = 250)]
    max_audiences_per_flow: u32,

    /// Guardrail: audiences one ad hoc activation job may name.
    #[arg(long, env = "AEP_EMULATOR_ADHOC_MAX_AUDIENCES", default_value_t = 80)]
    adhoc_max_audiences: u32,

    /// Time an audience must be past its first scheduled activation before an ad hoc export,
    /// milliseconds.
    #[arg(long, env = "AEP_EMULATOR_ADHOC_MIN_WAIT_MS", default_value_t = 3_600_000)]
    adhoc_min_wait_ms: u64,

    /// Time from mapping an audience into a streaming flow until its export run, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_STREAMING_EXPORT_DELAY_MS", default_value_t = 5_000)]
    streaming_export_delay_ms: u64,

    /// Duration of every export run, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_EXPORT_RUN_DURATION_MS", default_value_t = 60_000)]
    export_run_duration_ms: u64,

    /// UTC time (HH:MM) of the daily batch segmentation job and of its schedule's cron.
    #[arg(long, env = "AEP_EMULATOR_SEGMENTATION_TIME", default_value = "01:00", value_parser = utc_time)]
    segmentation_time: (u32, u32),

    /// Duration of the daily segmentation job until SUCCEEDED, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_SEGMENTATION_JOB_DURATION_MS", default_value_t = 1_800_000)]
    segmentation_job_duration_ms: u64,

    /// Days of export runs kept and listed by GET /runs.
    #[arg(long, env = "AEP_EMULATOR_FLOW_RUNS_RETENTION_DAYS", default_value_t = 7)]
    flow_runs_retention_days: u32,

    /// Fault: probability (0..1) that someone else writes a flow just before a PATCH (its etag
    /// changes, so that PATCH gets 412).
    #[arg(long, env = "AEP_EMULATOR_CONCURRENT_WRITER_PROBABILITY", default_value_t = 0.0)]
    concurrent_writer_probability: f64,

    /// Strict mode: a missing x-sandbox-name is 401 and a missing Content-Type on bodies is 400
    /// (default: sandbox `prod`, JSON accepted without the header).
    #[arg(long, env = "AEP_EMULATOR_STRICT")]
    strict: bool,

    /// Fault: probability (0..1) of answering an AEP call with 429.
    #[arg(long, env = "AEP_EMULATOR_RATE_LIMIT_PROBABILITY", default_value_t = 0.0)]
    rate_limit_probability: f64,

    /// Fault: Retry-After seconds on injected 429/503 answers.
    #[arg(long, env = "AEP_EMULATOR_RETRY_AFTER_SECS", default_value_t = 1)]
    retry_after_secs: u64,

    /// Fault: probability (0..1) of answering an AEP call with 500.
    #[arg(long, env = "AEP_EMULATOR_SERVER_ERROR_PROBABILITY", default_value_t = 0.0)]
    server_error_probability: f64,

    /// Fault: probability (0..1) of answering an AEP call with 503.
    #[arg(long, env = "AEP_EMULATOR_UNAVAILABLE_PROBABILITY", default_value_t = 0.0)]
    unavailable_probability: f64,

    /// Fault: latency added to every AEP call, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,

    /// Fault: delay of the answer of every committed create, start-run, PATCH and DELETE, after
    /// the work is done, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_ANSWER_DELAY_MS", default_value_t = 0)]
    answer_delay_ms: u64,

    /// Fault: every create operation ends FAILED.
    #[arg(long, env = "AEP_EMULATOR_FAIL_OPERATIONS")]
    fail_operations: bool,

    /// Message carried by FAILED operations (default: none, as in the docs).
    #[arg(long, env = "AEP_EMULATOR_OPERATION_FAILURE_MESSAGE")]
    operation_failure_message: Option<String>,

    /// Fault: every run ends FAILED.
    #[arg(long, env = "AEP_EMULATOR_FAIL_RUNS")]
    fail_runs: bool,

    /// Message carried by FAILED runs and their first stage (default: none, as in the docs).
    #[arg(long, env = "AEP_EMULATOR_RUN_FAILURE_MESSAGE")]
    run_failure_message: Option<String>,

    /// Fault: DELETE answers 422 "in use".
    #[arg(long, env = "AEP_EMULATOR_REFUSE_DELETE")]
    refuse_delete: bool,

    /// Fault: calls whose work is done and whose answer is then lost (comma list of create,
    /// start_run, patch, delete, patch_flow, adhoc_run). Every such answer is lost unless
    /// --lose-probability is given.
    #[arg(long, env = "AEP_EMULATOR_LOSE_ANSWERS", value_delimiter = ',',
          value_parser = PossibleValuesParser::new(LOSABLE_CALLS))]
    lose_answers: Vec<String>,

    /// How answers are lost: drop (connection closed without a byte), error500 (500 100970-500)
    /// or timeout (answer held --hang-ms, then the connection is closed).
    #[arg(long, env = "AEP_EMULATOR_LOSE_MODE", default_value = "drop",
          value_parser = choice::<LostMode>(&["drop", "error500", "timeout"]))]
    lose_mode: LostMode,

    /// Probability (0..1) of losing each answer of the --lose-answers calls, instead of all.
    #[arg(long, env = "AEP_EMULATOR_LOSE_PROBABILITY")]
    lose_probability: Option<f64>,

    /// How long a lost answer in timeout mode is held, milliseconds.
    #[arg(long, env = "AEP_EMULATOR_HANG_MS", default_value_t = 30_000)]
    hang_ms: u64,

    /// Persist state (and the `/_emulator/stats` counters) to this JSON file (atomic writes) and
    /// load it at start.
    #[arg(long, env = "AEP_EMULATOR_STATE_FILE")]
    state_file: Option<PathBuf>,

    /// Serve HTTPS: a fresh CA is generated at each start, and a server certificate it signs for
    /// 127.0.0.1 and localhost. Clients must trust that CA (see --ca-out).
    #[arg(long, env = "AEP_EMULATOR_TLS")]
    tls: bool,

    /// With --tls: write the CA certificate (PEM) to this file once listening, before the
    /// `listening on` line is printed (give it to the operator as --aep-ca-file).
    #[arg(long, env = "AEP_EMULATOR_CA_OUT", requires = "tls")]
    ca_out: Option<PathBuf>,

    /// Log format on stderr (level from RUST_LOG, default info).
    #[arg(long, env = "AEP_EMULATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Writes `pem` to a temporary file beside `path`, then renames it over `path`, so a reader never
/// sees a partial certificate.
fn write_ca(path: &std::path::Path, pem: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(pem.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let mut settings = Settings {
        token_lifetime_secs: args.token_lifetime_secs,
        operation_delay_ms: args.operation_delay_ms,
        operation_polls: args.operation_polls,
        run_delay_ms: args.run_delay_ms,
        run_polls: args.run_polls,
        max_runs_per_audience: args.max_runs_per_audience,
        runs_per_audience_window: args.runs_per_audience_window,
        max_runs_per_sandbox_per_day: args.max_runs_per_sandbox_per_day,
        run_in_progress_status: args.run_in_progress_status,
        guardrail_status: args.guardrail_status,
        strict: args.strict,
        duplicate_names: args.duplicate_names,
        custom_audience_id: args.custom_audience_id,
        lookup_visibility: args.lookup_visibility,
        lookup_lag_ms: args.lookup_lag_ms,
        patch_answer: args.flow_patch_answer,
        selector_ids: args.selector_ids,
        max_audiences_per_flow: args.max_audiences_per_flow,
        adhoc_max_audiences: args.adhoc_max_audiences,
        adhoc_min_wait_ms: args.adhoc_min_wait_ms,
        streaming_export_delay_ms: args.streaming_export_delay_ms,
        export_run_duration_ms: args.export_run_duration_ms,
        segmentation_hour_utc: args.segmentation_time.0,
        segmentation_minute_utc: args.segmentation_time.1,
        segmentation_job_duration_ms: args.segmentation_job_duration_ms,
        flow_runs_retention_days: args.flow_runs_retention_days,
        ..Settings::default()
    };
    settings
        .identity_namespaces
        .extend(args.identity_namespaces.iter().cloned());
    if args.zero_latency {
        settings.operation_delay_ms = 0;
        settings.operation_polls = 0;
        settings.run_delay_ms = 0;
        settings.run_polls = 0;
        settings.streaming_export_delay_ms = 0;
        settings.export_run_duration_ms = 0;
    }
    let mut faults = Faults {
        rate_limit_probability: args.rate_limit_probability,
        retry_after_secs: args.retry_after_secs,
        server_error_probability: args.server_error_probability,
        unavailable_probability: args.unavailable_probability,
        latency_ms: args.latency_ms,
        answer_delay_ms: args.answer_delay_ms,
        fail_all_operations: args.fail_operations,
        operation_failure_message: args.operation_failure_message,
        fail_all_runs: args.fail_runs,
        run_failure_message: args.run_failure_message,
        refuse_delete_in_use: args.refuse_delete,
        hang_ms: args.hang_ms,
        concurrent_writer_probability: args.concurrent_writer_probability,
        ..Faults::default()
    };
    let lost = LostAnswer {
        all: args.lose_probability.is_none(),
        probability: args.lose_probability.unwrap_or(0.0),
        mode: args.lose_mode,
        ..LostAnswer::default()
    };
    for call in &args.lose_answers {
        let slot = match call.as_str() {
            "create" => &mut faults.lost_answers.create,
            "start_run" => &mut faults.lost_answers.start_run,
            "patch" => &mut faults.lost_answers.patch,
            "delete" => &mut faults.lost_answers.delete,
            "patch_flow" => &mut faults.lost_answers.patch_flow,
            "adhoc_run" => &mut faults.lost_answers.adhoc_run,
            other => anyhow::bail!(
                "--lose-answers: unknown call {other:?}; use {}",
                LOSABLE_CALLS.join(",")
            ),
        };
        *slot = lost;
    }
    let mut builder = Emulator::builder()
        .listen(args.listen)
        .credential(CredentialSpec {
            client_id: args.client_id,
            client_secret: args.client_secret,
            org_id: args.org_id,
            entitlement: args.entitlement,
        })
        .settings(settings)
        .faults(faults);
    if let Some(path) = args.state_file {
        builder = builder.state_file(path);
    }
    if args.tls {
        builder = builder.tls();
    }
    let mut emulator = builder.spawn().await.context("starting the emulator")?;
    if let Some(path) = &args.ca_out {
        let pem = emulator
            .ca_pem()
            .context("--ca-out needs --tls: there is no CA to write")?;
        write_ca(path, &pem).with_context(|| format!("writing the CA to {}", path.display()))?;
        tracing::info!(path = %path.display(), "CA certificate written");
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on {}", emulator.addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        result = emulator.wait() => {
            result.context("emulator server failed")?;
        }
        () = shutdown_signal() => {
            tracing::info!("Shutting down");
            tokio::time::timeout(Duration::from_secs(10), emulator.shutdown())
                .await
                .context("shutdown timed out")?
                .context("shutdown failed")?;
        }
    }
    Ok(())
}
