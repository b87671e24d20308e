//! The AEP client's error type and the one place that decides what an AEP answer means for the
//! caller: retry soon, not now, give up, adopt, or check what happened ([`ErrorKind`]).
//!
//! Classification is a pure function of the call, the HTTP status, the error code in the body and
//! `Retry-After`, so it is unit-tested without I/O. Error strings carry AEP's own message and never
//! a URL, a token or a secret.

use std::fmt;
use std::time::Duration;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient (429, 5xx, network): try again after the hint or a backoff. For the
    /// non-idempotent calls (create, start-run, extend-ttl, flow PATCH, ad hoc run) it also means
    /// the request was not processed (429, 503, connection refused); an answer lost after sending
    /// is [`ErrorKind::OutcomeUnknown`].
    Retryable {
        /// Server hint from `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The request is fine but cannot be served now (a run is in progress, a guardrail is
    /// reached, the audience is in use): try much later, do not hot-loop.
    NotNow {
        /// Server hint from `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The request is wrong (400 validation); retrying will not help until it changes.
    Terminal,
    /// Authenticated but not allowed (403).
    PermissionDenied,
    /// The resource does not exist (404), e.g. in this sandbox.
    NotFound,
    /// The resource already exists (409 on create: duplicate name); or, for a flow PATCH
    /// ([`Call::PatchFlow`], 412 Precondition Failed), the flow changed since it was read (its
    /// etag is stale): read it again, decide again, and send the new decision with the new etag.
    /// Nothing was applied. The message is AEP's `errorMessage`.
    Conflict,
    /// A non-idempotent call may or may not have taken effect (response lost): look before
    /// trying again.
    OutcomeUnknown,
    /// The credentials are refused (IMS `invalid_client`, or AEP still answers 401 after a
    /// fresh token).
    Unauthorized,
}

impl ErrorKind {
    /// Bounded label for metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::Retryable { .. } => "retryable",
            ErrorKind::NotNow { .. } => "not_now",
            ErrorKind::Terminal => "terminal",
            ErrorKind::PermissionDenied => "permission_denied",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Unauthorized => "unauthorized",
        }
    }

    /// The server's `Retry-After` hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ErrorKind::Retryable { retry_after } | ErrorKind::NotNow { retry_after } => *retry_after,
            _ => None,
        }
    }
}

/// The AEP call an error came from; decides how statuses are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// IMS token exchange.
    Token,
    /// `POST /external-audience/` (not idempotent).
    CreateAudience,
    /// `GET …/operations/{id}`.
    GetOperation,
    /// `POST …/{id}/runs` (not idempotent).
    StartRun,
    /// `GET …/{id}/runs/{runId}`.
    GetRun,
    /// `GET …/{id}/runs`.
    ListRuns,
    /// `PATCH …/{id}` (replace semantics, idempotent).
    PatchAudience,
    /// `DELETE …/{id}`.
    DeleteAudience,
    /// `GET /ups/audiences/{id}`.
    GetAudience,
    /// `GET /ups/audiences?name=…`.
    FindAudiences,
    /// `POST …/extend-ttl/{id}` (not idempotent: each call extends again).
    ExtendTtl,
    /// `GET /data/foundation/flowservice/flows/{id}`.
    GetFlow,
    /// `GET /data/foundation/flowservice/flows` (filtered, paged).
    ListFlows,
    /// `PATCH /data/foundation/flowservice/flows/{id}` with `If-Match` (not retried: a JSON-Patch
    /// `add` applied twice adds twice; a lost answer is settled by reading the flow again).
    PatchFlow,
    /// `GET /data/foundation/flowservice/runs?property=flowId==…`.
    ListFlowRuns,
    /// `GET /data/foundation/flowservice/runs/{id}`.
    GetFlowRun,
    /// `POST /data/core/activation/disflowprovider/adhocrun` (not idempotent: each call exports
    /// again).
    AdhocRun,
    /// `GET /data/core/ups/segment/jobs`.
    ListSegmentJobs,
    /// `GET /data/core/ups/config/schedules`.
    ListSchedules,
}

impl Call {
    /// Bounded label for metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Call::Token => "ims_token",
            Call::CreateAudience => "create_audience",
            Call::GetOperation => "get_operation",
            Call::StartRun => "start_run",
            Call::GetRun => "get_run",
            Call::ListRuns => "list_runs",
            Call::PatchAudience => "patch_audience",
            Call::DeleteAudience => "delete_audience",
            Call::GetAudience => "get_audience",
            Call::FindAudiences => "find_audiences",
            Call::ExtendTtl => "extend_ttl",
            Call::GetFlow => "get_flow",
            Call::ListFlows => "list_flows",
            Call::PatchFlow => "patch_flow",
            Call::ListFlowRuns => "list_flow_runs",
            Call::GetFlowRun => "get_flow_run",
            Call::AdhocRun => "adhoc_run",
            Call::ListSegmentJobs => "list_segment_jobs",
            Call::ListSchedules => "list_schedules",
        }
    }

    /// May this call be repeated without changing the outcome? Calls that may not are never
    /// retried by the client, and an answer lost after sending is [`ErrorKind::OutcomeUnknown`].
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Call::CreateAudience | Call::StartRun | Call::ExtendTtl | Call::PatchFlow | Call::AdhocRun
        )
    }
}

/// An error from the AEP client. `Display` is `"<call>: <message>"`, free of secrets and URLs.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {message}", call = .call.as_str())]
pub struct Error {
    kind: ErrorKind,
    call: Call,
    status: Option<u16>,
    code: Option<String>,
    message: String,
    category: &'static str,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// What the caller should do.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// HTTP status, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// AEP's own message (or a constant description for network errors).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Platform or gateway error code from the body (`100910-400`, `401013`, `invalid_client`).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The call that failed.
    pub fn call(&self) -> Call {
        self.call
    }

    /// Bounded label for metrics: `http_4xx`-style for statuses, else the failure class.
    pub fn category(&self) -> &'static str {
        self.category
    }

    /// An error of a given kind, as callers' tests need to simulate every answer (not produced by
    /// the client itself).
    pub fn synthetic(call: Call, kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            call,
            status: None,
            code: None,
            message: message.into(),
            category: "synthetic",
            source: None,
        }
    }

    /// Error for a non-success HTTP answer.
    pub(crate) fn from_status(
        call: Call,
        status: u16,
        retry_after: Option<Duration>,
        code: Option<String>,
        message: Option<String>,
    ) -> Self {
        let kind = classify_status(call, status, code.as_deref(), retry_after);
        let message = message
            .map(|m| truncate(&m, 1024))
            .unwrap_or_else(|| format!("HTTP {status} without an error message"));
        Error {
            kind,
            call,
            status: Some(status),
            code,
            message,
            category: status_category(status),
            source: None,
        }
    }

    /// Error for a transport failure. `sent` says whether the request may have reached the server.
    pub(crate) fn from_transport(call: Call, err: reqwest::Error) -> Self {
        let err = err.without_url();
        let maybe_sent = !err.is_connect() && !err.is_builder();
        let (kind, category, message) = if is_untrusted_certificate(&err) {
            // The handshake failed, so no request was sent.
            (ErrorKind::Retryable { retry_after: None }, "tls", UNTRUSTED_CERTIFICATE)
        } else if err.is_timeout() && !err.is_connect() {
            (transport_kind(call, maybe_sent), "timeout", "request timed out")
        } else if err.is_connect() {
            (
                ErrorKind::Retryable { retry_after: None },
                "connect",
                "could not connect",
            )
        } else if err.is_body() || err.is_decode() {
            (transport_kind(call, true), "body", "response body could not be read")
        } else if err.is_builder() {
            (ErrorKind::Terminal, "request", "request could not be built")
        } else {
            (
                transport_kind(call, maybe_sent),
                "network",
                "connection failed before a response arrived",
            )
        };
        Error {
            kind,
            call,
            status: err.status().map(|s| s.as_u16()),
            code: None,
            message: message.to_owned(),
            category,
            source: Some(Box::new(err)),
        }
    }

    /// Error for a 2xx answer whose body does not parse.
    pub(crate) fn decode(call: Call, status: u16, err: serde_json::Error) -> Self {
        Error {
            kind: if call.is_idempotent() {
                ErrorKind::Terminal
            } else {
                ErrorKind::OutcomeUnknown
            },
            call,
            status: Some(status),
            code: None,
            message: format!("unexpected response body: {err}"),
            category: "decode",
            source: Some(Box::new(err)),
        }
    }

    /// A response body past the client's cap: for a non-idempotent call the work may have
    /// happened (outcome unknown); other calls are retried with backoff.
    pub(crate) fn too_large(call: Call, max: usize) -> Self {
        Error {
            kind: transport_kind(call, true),
            call,
            status: None,
            code: None,
            message: format!("the answer is larger than {} KiB", max / 1024),
            category: "too_large",
            source: None,
        }
    }

    /// A 2xx answer that lacks the resource asked for (e.g. `{"items":[]}`): treated as 404.
    pub(crate) fn empty_answer(call: Call, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::NotFound,
            call,
            status: None,
            code: None,
            message: message.into(),
            category: "empty_answer",
            source: None,
        }
    }

    /// Error raised before sending (bad input, bad configuration).
    /// Not sent: the client's gate was closed (e.g. this replica cannot prove it still leads).
    pub(crate) fn gated(call: Call) -> Self {
        Error {
            kind: ErrorKind::Retryable { retry_after: None },
            call,
            status: None,
            code: None,
            message: "not sent: this replica cannot prove that it still holds the leader lease".into(),
            category: "gated",
            source: None,
        }
    }

    pub(crate) fn invalid(call: Call, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Terminal,
            call,
            status: None,
            code: None,
            message: message.into(),
            category: "invalid_request",
            source: None,
        }
    }
}

/// Message of a transport error caused by a certificate the client does not trust.
const UNTRUSTED_CERTIFICATE: &str =
    "TLS handshake failed: the endpoint's certificate is not trusted (configure the CA with --aep-ca-file)";

/// Does the `source()` chain of `err` hold a rustls certificate verification failure?
fn is_untrusted_certificate(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    // Bounded: a chain is finite, but a buggy `source()` must not hang the client.
    for _ in 0..32 {
        let Some(e) = next else { return false };
        if matches!(
            e.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        ) {
            return true;
        }
        // `io::Error::source()` skips the error it wraps (rustls' errors travel inside one), so
        // step into the wrapped error itself.
        next = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn transport_kind(call: Call, maybe_sent: bool) -> ErrorKind {
    if call.is_idempotent() || !maybe_sent {
        ErrorKind::Retryable { retry_after: None }
    } else {
        ErrorKind::OutcomeUnknown
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Bounded category for a status code.
pub fn status_category(status: u16) -> &'static str {
    match status {
        400 => "http_400",
        401 => "http_401",
        403 => "http_403",
        404 => "http_404",
        409 => "http_409",
        422 => "http_422",
        429 => "http_429",
        500 => "http_500",
        502 => "http_502",
        503 => "http_503",
        504 => "http_504",
        s if (400..500).contains(&s) => "http_4xx",
        s if (500..600).contains(&s) => "http_5xx",
        _ => "http_other",
    }
}

/// Maps an HTTP error answer to what the caller should do (reference §7.1.9–11, issue 3).
pub fn classify_status(call: Call, status: u16, code: Option<&str>, retry_after: Option<Duration>) -> ErrorKind {
    let retryable = ErrorKind::Retryable { retry_after };
    let not_now = ErrorKind::NotNow { retry_after };
    match (call, status) {
        // IMS: refused credentials or scopes.
        (Call::Token, 400 | 401) => match code {
            Some("invalid_client" | "invalid_scope" | "unauthorized_client") | None => ErrorKind::Unauthorized,
            Some(_) => ErrorKind::Terminal,
        },
        (_, 401) => ErrorKind::Unauthorized,
        (_, 403) => ErrorKind::PermissionDenied,
        (_, 404) => ErrorKind::NotFound,
        // Start-run refusals: run in progress or guardrail. A 429 is rate limiting (or a guardrail
        // with a Retry-After): retried after the hint, like every 429.
        (Call::StartRun, 409 | 422) => not_now,
        // An audience that is still used downstream cannot be deleted yet.
        (Call::DeleteAudience, 409 | 422) => not_now,
        (Call::CreateAudience, 409) => ErrorKind::Conflict,
        (_, 409) => ErrorKind::Conflict,
        // The flow's etag moved since the read the PATCH was decided from: read again.
        (Call::PatchFlow, 412) => ErrorKind::Conflict,
        (_, 429) => retryable,
        (_, 408) => retryable,
        // Gateways answer 502/504 (and a crashing service 500) possibly after the service acted.
        (
            Call::CreateAudience | Call::StartRun | Call::ExtendTtl | Call::PatchFlow | Call::AdhocRun,
            500 | 502 | 504,
        ) => ErrorKind::OutcomeUnknown,
        (_, 501 | 505) => ErrorKind::Terminal,
        (_, 500..=599) => retryable,
        _ => ErrorKind::Terminal,
    }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (IMF-fixdate, RFC 850 and asctime are
/// rare and not accepted). A date in the past means "now".
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        // Past `Duration::MAX` (e.g. 20 digits) `from_secs_f64` panics: saturate instead.
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(value).ok()?;
    let delta = at.as_millisecond() - now.as_millisecond();
    Some(Duration::from_millis(u64::try_from(delta).unwrap_or(0)))
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RA: Option<Duration> = Some(Duration::from_secs(7));

    #[test]
    fn classification_table() {
        let cases: &[(Call, u16, Option<&str>, ErrorKind)] = &[
            (Call::GetRun, 429, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetRun, 500, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetRun, 502, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetRun, 503, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetRun, 504, None, ErrorKind::Retryable { retry_after: RA }),
            (
                Call::CreateAudience,
                503,
                None,
                ErrorKind::Retryable { retry_after: RA },
            ),
            (
                Call::CreateAudience,
                429,
                None,
                ErrorKind::Retryable { retry_after: RA },
            ),
            (Call::CreateAudience, 502, None, ErrorKind::OutcomeUnknown),
            (Call::CreateAudience, 409, Some("100950-409"), ErrorKind::Conflict),
            (Call::CreateAudience, 400, Some("100910-400"), ErrorKind::Terminal),
            (
                Call::StartRun,
                422,
                Some("100960-422"),
                ErrorKind::NotNow { retry_after: RA },
            ),
            (Call::StartRun, 409, None, ErrorKind::NotNow { retry_after: RA }),
            (Call::StartRun, 429, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::StartRun, 504, None, ErrorKind::OutcomeUnknown),
            (Call::DeleteAudience, 422, None, ErrorKind::NotNow { retry_after: RA }),
            (Call::DeleteAudience, 404, None, ErrorKind::NotFound),
            (Call::PatchAudience, 400, None, ErrorKind::Terminal),
            (Call::PatchAudience, 422, None, ErrorKind::Terminal),
            (Call::GetAudience, 403, None, ErrorKind::PermissionDenied),
            (Call::GetOperation, 401, Some("401013"), ErrorKind::Unauthorized),
            (Call::Token, 401, Some("invalid_client"), ErrorKind::Unauthorized),
            (Call::Token, 400, Some("invalid_client"), ErrorKind::Unauthorized),
            (Call::Token, 400, Some("unsupported_grant_type"), ErrorKind::Terminal),
            (Call::Token, 503, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::ListRuns, 501, None, ErrorKind::Terminal),
            // Activation surface.
            (Call::PatchFlow, 412, None, ErrorKind::Conflict),
            (Call::GetFlow, 412, None, ErrorKind::Terminal),
            (Call::PatchFlow, 400, None, ErrorKind::Terminal),
            (Call::PatchFlow, 404, None, ErrorKind::NotFound),
            (Call::PatchFlow, 500, None, ErrorKind::OutcomeUnknown),
            (Call::PatchFlow, 502, None, ErrorKind::OutcomeUnknown),
            (Call::PatchFlow, 504, None, ErrorKind::OutcomeUnknown),
            (Call::PatchFlow, 503, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::PatchFlow, 429, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::AdhocRun, 400, None, ErrorKind::Terminal),
            (Call::AdhocRun, 404, None, ErrorKind::NotFound),
            (Call::AdhocRun, 500, None, ErrorKind::OutcomeUnknown),
            (Call::AdhocRun, 504, None, ErrorKind::OutcomeUnknown),
            (Call::AdhocRun, 503, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetFlow, 404, None, ErrorKind::NotFound),
            (Call::GetFlow, 500, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::ListFlows, 403, None, ErrorKind::PermissionDenied),
            (Call::ListFlowRuns, 502, None, ErrorKind::Retryable { retry_after: RA }),
            (Call::GetFlowRun, 404, None, ErrorKind::NotFound),
            (
                Call::ListSegmentJobs,
                429,
                None,
                ErrorKind::Retryable { retry_after: RA },
            ),
            (Call::ListSchedules, 401, None, ErrorKind::Unauthorized),
        ];
        for (call, status, code, want) in cases {
            assert_eq!(
                classify_status(*call, *status, *code, RA),
                *want,
                "{call:?} {status} {code:?}"
            );
        }
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 01 Jun 2025 12:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 01 Jun 2025 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    /// Found by `fuzz/fuzz_targets/client_responses.rs`: a delay too large for a `Duration`
    /// panicked in `Duration::from_secs_f64`.
    #[test]
    fn retry_after_past_the_duration_range_saturates() {
        let now: jiff::Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let max = Some(Duration::MAX);
        assert_eq!(parse_retry_after("18446744073709551616", now), max);
        assert_eq!(parse_retry_after(&"5".repeat(67), now), max);
        assert_eq!(parse_retry_after("1e300", now), max);
        assert_eq!(parse_retry_after("-0", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("inf", now), None);
    }

    /// An error wrapping another, the way hyper and reqwest wrap a connector's failure.
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Wrapper(#[source] Box<dyn std::error::Error + Send + Sync>);

    #[test]
    fn certificate_failures_are_found_anywhere_in_the_chain() {
        let untrusted = || rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // rustls errors reach the connector inside an io::Error, whose source() skips them.
        let in_io = std::io::Error::new(std::io::ErrorKind::InvalidData, untrusted());
        assert!(is_untrusted_certificate(&in_io));
        let deep = Wrapper(Box::new(Wrapper(Box::new(in_io))));
        assert!(is_untrusted_certificate(&deep));
        assert!(is_untrusted_certificate(&Wrapper(Box::new(untrusted()))));

        // Other TLS and I/O failures keep their classification.
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        );
        assert!(!is_untrusted_certificate(&Wrapper(Box::new(alert))));
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert!(!is_untrusted_certificate(&Wrapper(Box::new(eof))));
    }

    #[test]
    fn flow_patches_and_ad_hoc_runs_are_never_retried_and_lose_their_outcome() {
        let labels = [
            (Call::GetFlow, "get_flow"),
            (Call::ListFlows, "list_flows"),
            (Call::PatchFlow, "patch_flow"),
            (Call::ListFlowRuns, "list_flow_runs"),
            (Call::GetFlowRun, "get_flow_run"),
            (Call::AdhocRun, "adhoc_run"),
            (Call::ListSegmentJobs, "list_segment_jobs"),
            (Call::ListSchedules, "list_schedules"),
        ];
        for (call, label) in labels {
            assert_eq!(call.as_str(), label);
            assert_eq!(
                call.is_idempotent(),
                !matches!(call, Call::PatchFlow | Call::AdhocRun),
                "{call:?}"
            );
        }
        assert_eq!(transport_kind(Call::PatchFlow, true), ErrorKind::OutcomeUnknown);
        assert_eq!(transport_kind(Call::AdhocRun, true), ErrorKind::OutcomeUnknown);
        assert_eq!(
            transport_kind(Call::PatchFlow, false),
            ErrorKind::Retryable { retry_after: None }
        );
        assert_eq!(
            transport_kind(Call::GetFlow, true),
            ErrorKind::Retryable { retry_after: None }
        );
        let stale = Error::from_status(
            Call::PatchFlow,
            412,
            None,
            None,
            Some(r#"Supplied version=["a"] does not match the current version on entity=["b"]"#.into()),
        );
        assert_eq!(stale.kind(), ErrorKind::Conflict);
        assert!(stale.message().starts_with("Supplied version="), "{stale}");
        let refused = Error::from_status(
            Call::AdhocRun,
            400,
            None,
            None,
            Some("Segments Churn are not part of this dataflow or out of schedule range!".into()),
        );
        assert_eq!(refused.kind(), ErrorKind::Terminal);
        assert_eq!(
            refused.to_string(),
            "adhoc_run: Segments Churn are not part of this dataflow or out of schedule range!"
        );
    }

    #[test]
    fn display_carries_the_service_message() {
        let e = Error::from_status(
            Call::CreateAudience,
            400,
            None,
            Some("100910-400".into()),
            Some("fields[2].type: must be one of string".into()),
        );
        assert_eq!(e.to_string(), "create_audience: fields[2].type: must be one of string");
        assert_eq!(e.kind(), ErrorKind::Terminal);
        assert_eq!(e.status(), Some(400));
        assert_eq!(e.category(), "http_400");
        assert_eq!(e.code(), Some("100910-400"));
    }
}
