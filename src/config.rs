//! Every setting of the controller binary, from flags or environment variables.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use url::Url;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// What to do when an audience the controller manages disappears from AEP behind its back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum MissingAudiencePolicy {
    /// Create it again (and ingest again).
    #[default]
    Recreate,
    /// Report Stalled and wait for a human.
    Stall,
}

/// Whether AEP's limit of ingestion runs per audience counts a UTC day or the audience's life
/// (the documentation does not say).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum RunWindow {
    /// Every run the audience ever had counts.
    #[default]
    Lifetime,
    /// Runs started in the current UTC day count.
    Day,
}

/// Settings of `controller run`.
#[derive(Parser, Clone, Debug)]
pub struct RunConfig {
    /// Kubeconfig to use; in-cluster config (or $KUBECONFIG) when unset.
    #[arg(long, env = "KUBECONFIG_PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Watch only these namespaces (ExternalAudiences, AudienceActivations and, with
    /// `--watch-secrets`, Secrets): repeat the flag or separate them with commas
    /// (`WATCH_NAMESPACE=marketing,sales`). All namespaces when unset. One process watches them
    /// all, so at most one object manages an audience across them.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_delimiter = ',', value_parser = parse_namespace)]
    pub namespaces: Vec<String>,

    /// Maximum number of objects reconciled at the same time.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// Base URL of AEP (`/data/core/...` is appended). A Secret's `platformUrl` overrides it.
    #[arg(long, env = "AEP_PLATFORM_URL", default_value = crate::aep::client::DEFAULT_PLATFORM_URL)]
    pub aep_platform_url: Url,

    /// Base URL of Adobe IMS (`/ims/token/v3` is appended). A Secret's `imsUrl` overrides it.
    #[arg(long, env = "AEP_IMS_URL", default_value = crate::aep::client::DEFAULT_IMS_URL)]
    pub aep_ims_url: Url,

    /// Further endpoints a credentials Secret may choose with `imsUrl` / `platformUrl` (besides
    /// `--aep-platform-url` and `--aep-ims-url`); repeatable. https only, except http to a
    /// loopback IP address listed here explicitly (the local emulator).
    #[arg(long = "allowed-endpoint", env = "ALLOWED_ENDPOINTS", value_delimiter = ',')]
    pub allowed_endpoints: Vec<Url>,

    /// PEM file of the CA(s) to trust for AEP and IMS instead of the system's trust roots.
    #[arg(long, env = "AEP_CA_FILE")]
    pub aep_ca_file: Option<PathBuf>,

    /// Client-side limit of AEP requests per second, per IMS org: never more in any one-second
    /// window of arrivals. Sends are spaced (1 s + 100 ms) / N apart, leaving room for 100 ms of
    /// transport jitter.
    #[arg(long, env = "AEP_REQUESTS_PER_SECOND", default_value_t = 10)]
    pub aep_requests_per_second: u32,

    /// Timeout of each AEP HTTP call.
    #[arg(long, env = "AEP_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub aep_request_timeout: Duration,

    /// Interval between polls of a create operation.
    #[arg(long, env = "OPERATION_POLL_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub operation_poll_interval: Duration,

    /// Interval between polls of an ingestion run.
    #[arg(long, env = "RUN_POLL_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub run_poll_interval: Duration,

    /// Retry interval after AEP refuses a run for now (run in progress, daily guardrail).
    #[arg(long, env = "DEFERRED_RETRY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub deferred_retry_interval: Duration,

    /// How long parsed credentials are reused before their Secret is read again (a change of the
    /// Secret, a refusal by IMS/AEP or, with `--watch-secrets`, a watch event drops them sooner).
    #[arg(long, env = "CREDENTIALS_CACHE_TTL", default_value = "60s", value_parser = parse_duration)]
    pub credentials_cache_ttl: Duration,

    /// How long a missing credentials Secret is reported as `Reconciling` (it may be on its way,
    /// e.g. from External Secrets) before it is `Stalled`.
    #[arg(long, env = "SECRET_GRACE_PERIOD", default_value = "2m", value_parser = parse_duration)]
    pub secret_grace_period: Duration,

    /// Watch Secrets (metadata only) in the watched namespace(s), so an object heals the moment
    /// its Secret appears or changes. Needs list/watch on Secrets there (the namespaced overlay
    /// grants it with Roles); without it, a missing Secret is looked for again on a timer.
    #[arg(long, env = "WATCH_SECRETS")]
    pub watch_secrets: bool,

    /// Retry interval for missing or refused credentials and permission errors.
    #[arg(long, env = "CREDENTIALS_RETRY_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub credentials_retry_interval: Duration,

    /// First step of the per-object error backoff (doubles per failure).
    #[arg(long, env = "ERROR_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub error_backoff_base: Duration,

    /// Cap of the per-object error backoff.
    #[arg(long, env = "ERROR_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub error_backoff_max: Duration,

    /// Periodic resync of Ready objects (drift check); `0` turns it off. The annotation
    /// `aep.audience-operator.dev/resync-interval` overrides it per object.
    #[arg(long, env = "RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub resync_interval: Duration,

    /// How often the destination dataflows of AudienceActivations are read (one read of each
    /// dataflow and one list of its export runs per interval, whatever the number of objects
    /// mapped into it), and how often an ExternalAudience waiting for AEP's daily segmentation
    /// job looks for it (one list per org and sandbox per interval).
    #[arg(long, env = "ACTIVATION_POLL_INTERVAL", default_value = "5m", value_parser = parse_duration)]
    pub activation_poll_interval: Duration,

    /// How long after a create whose answer was lost the operator keeps looking for the audience
    /// by proof before it decides: an audience AEP created must be visible to lookups by then.
    /// Until then nothing is created again; afterwards a create is sent again only when no
    /// audience with the name exists.
    #[arg(long, env = "CREATE_SETTLE_WINDOW", default_value = "10m", value_parser = parse_duration)]
    pub create_settle_window: Duration,

    /// AEP's limit of ingestion runs per audience (reference: 10); reaching it stalls the object
    /// with `IngestionLimitReached` instead of deferring for ever.
    #[arg(long, env = "MAX_RUNS_PER_AUDIENCE", default_value_t = 10)]
    pub max_runs_per_audience: u32,

    /// Whether `--max-runs-per-audience` counts a UTC day or the audience's lifetime.
    #[arg(long, env = "RUNS_PER_AUDIENCE_WINDOW", value_enum, default_value_t = RunWindow::Lifetime)]
    pub runs_per_audience_window: RunWindow,

    /// AEP's limit of ingestion runs per sandbox per UTC day (reference: 100). The operator
    /// spends it across all objects of an (org, sandbox) by priority (spec changes and run
    /// requests, then scheduled refreshes, oldest first); an object over it waits with
    /// `RunDeferred` and sends nothing until the next UTC day.
    #[arg(long, env = "MAX_RUNS_PER_SANDBOX_PER_DAY", default_value_t = 100)]
    pub max_runs_per_sandbox_per_day: u32,

    /// How long before the ingested data expires an object says so (Ready reason
    /// `DataExpiringSoon`) and `spec.expiration.autoExtend` extends it.
    #[arg(long, env = "EXPIRATION_WARNING_WINDOW", default_value = "72h", value_parser = parse_duration)]
    pub expiration_warning_window: Duration,

    /// Shift of the operator's clock for schedules, data expiry and the run budget's UTC day
    /// (e.g. `24h`): rehearse a day change or an expiry against a test AEP whose clock was moved
    /// the same way. Never set against the real service.
    #[arg(long, env = "CLOCK_OFFSET", default_value = "0", value_parser = parse_duration)]
    pub clock_offset: Duration,

    /// What to do when a managed audience was deleted in AEP behind the operator's back.
    #[arg(long, env = "MISSING_AUDIENCE_POLICY", value_enum, default_value_t = MissingAudiencePolicy::Recreate)]
    pub missing_audience_policy: MissingAudiencePolicy,

    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9090")]
    pub metrics_addr: SocketAddr,

    /// Run the controller only while holding a `coordination.k8s.io` Lease (for more than one
    /// replica, and for rolling updates without two controllers at once).
    #[arg(long, env = "LEADER_ELECT")]
    pub leader_elect: bool,

    /// Name of the Lease.
    #[arg(long, env = "LEADER_ELECT_LEASE_NAME", default_value = "audience-operator")]
    pub leader_elect_lease_name: String,

    /// Namespace of the Lease (the operator's own; the Downward API's POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "audience-operator")]
    pub leader_elect_namespace: String,

    /// This replica's identity in the Lease (the Downward API's POD_NAME); a random one when unset.
    #[arg(long, env = "POD_NAME")]
    pub leader_elect_identity: Option<String>,

    /// How long the Lease lasts without renewal.
    #[arg(long, env = "LEADER_ELECT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,

    /// Extra time before a Lease that was not renewed is taken over.
    #[arg(long, env = "LEADER_ELECT_GRACE", default_value = "5s", value_parser = parse_duration)]
    pub leader_elect_grace: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A namespace name: a DNS-1123 label (at most 63 lowercase letters, digits and `-`, starting and
/// ending with a letter or digit).
pub fn parse_namespace(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "invalid namespace {s:?}: must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

/// Parses a duration in jiff's friendly format (`500ms`, `30s`, `5m`, `1h30m`, `2 minutes`) or
/// plain seconds (`0`, `90`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 30s, 5m, 1h"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: must not be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_a_list_of_labels() {
        let cfg = |args: &[&str]| {
            let mut all = vec!["run"];
            all.extend_from_slice(args);
            RunConfig::try_parse_from(all)
        };
        assert!(cfg(&[]).expect("no flag").namespaces.is_empty());
        assert_eq!(
            cfg(&["--namespace=a,b", "--namespace", "c"])
                .expect("a list")
                .namespaces,
            ["a", "b", "c"]
        );
        for bad in ["Marketing", "-a", "a-", "a_b", "a,,b", &"x".repeat(64)] {
            let err = cfg(&[&format!("--namespace={bad}")]).expect_err(bad).to_string();
            assert!(err.contains("--namespace") && err.contains("DNS-1123"), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
