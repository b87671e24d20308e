//! Prometheus metrics of the controller and its AEP client. Labels are bounded: operation names,
//! HTTP status classes and error categories, never object names or error strings.

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::aep::client::RequestEvent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AepLabels {
    pub operation: &'static str,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub step: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub condition: &'static str,
}

/// All metrics, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    pub reconcile_runs: Family<StepLabels, Counter>,
    pub reconcile_failures: Family<CategoryLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub aep_requests: Family<AepLabels, Counter>,
    pub aep_request_duration: Family<AepLabels, Histogram>,
    /// Ingestion runs by outcome (`started`, `succeeded`, `failed`).
    pub ingestion_runs: Family<OutcomeLabels, Counter>,
    /// Objects whose condition is True, by condition type.
    pub objects: Family<ConditionLabels, Gauge>,
    /// Events dropped because the publishing queue was full.
    pub events_dropped: Counter,
    /// Counts the objects by True condition, at each scrape.
    objects_source: std::sync::Mutex<Option<ObjectCounter>>,
}

/// Counts objects by True condition type.
type ObjectCounter = Box<dyn Fn() -> Vec<(&'static str, i64)> + Send + Sync>;

fn duration_buckets() -> impl Iterator<Item = f64> {
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("externalaudience");
        let reconcile_runs = Family::<StepLabels, Counter>::default();
        let reconcile_failures = Family::<CategoryLabels, Counter>::default();
        let reconcile_duration = Histogram::new(duration_buckets());
        let aep_requests = Family::<AepLabels, Counter>::default();
        let aep_request_duration =
            Family::<AepLabels, Histogram>::new_with_constructor(|| Histogram::new(duration_buckets()));
        registry.register(
            "reconcile_runs",
            "Reconcile passes by planned step",
            reconcile_runs.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconcile passes by error category",
            reconcile_failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconcile passes",
            reconcile_duration.clone(),
        );
        registry.register(
            "aep_requests",
            "AEP HTTP requests by operation and status",
            aep_requests.clone(),
        );
        registry.register(
            "aep_request_duration_seconds",
            "Duration of AEP HTTP requests (operation ims_token is the IMS token exchange)",
            aep_request_duration.clone(),
        );
        let ingestion_runs = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "ingestion_runs",
            "Ingestion runs started and finished, by outcome",
            ingestion_runs.clone(),
        );
        let events_dropped = Counter::default();
        registry.register(
            "events_dropped",
            "Events not published because the publishing queue was full (the API server falls behind)",
            events_dropped.clone(),
        );
        let objects = Family::<ConditionLabels, Gauge>::default();
        registry.register(
            "objects",
            "ExternalAudiences whose condition is True, by condition type",
            objects.clone(),
        );
        // Known series start at zero, so dashboards and alerts see them before the first failure.
        for category in ["kube", "credentials", "finalizer"] {
            let _zero = reconcile_failures.get_or_create(&CategoryLabels { category });
        }
        for outcome in ["started", "succeeded", "failed"] {
            let _zero = ingestion_runs.get_or_create(&OutcomeLabels { outcome });
        }
        Metrics {
            registry,
            events_dropped,
            reconcile_runs,
            reconcile_failures,
            reconcile_duration,
            aep_requests,
            aep_request_duration,
            ingestion_runs,
            objects,
            objects_source: std::sync::Mutex::default(),
        }
    }
}

impl Metrics {
    /// Records one AEP exchange (wired as the AEP client's observer).
    pub fn observe_aep(&self, ev: &RequestEvent) {
        let labels = AepLabels {
            operation: ev.operation,
            status: ev.status.map_or_else(|| ev.outcome.to_owned(), |s| s.to_string()),
        };
        self.aep_requests.get_or_create(&labels).inc();
        self.aep_request_duration
            .get_or_create(&labels)
            .observe(ev.duration.as_secs_f64());
    }

    /// One reconcile pass (any outcome) and how long it took.
    pub fn observe_reconcile(&self, duration: Duration) {
        self.reconcile_duration.observe(duration.as_secs_f64());
    }

    /// The step an `apply` pass planned.
    pub fn count_step(&self, step: &'static str) {
        self.reconcile_runs.get_or_create(&StepLabels { step }).inc();
    }

    /// An ingestion run `started`, `succeeded` or `failed`.
    pub fn count_run(&self, outcome: &'static str) {
        self.ingestion_runs.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Sets the number of objects per True condition.
    pub fn set_objects(&self, counts: &[(&'static str, i64)]) {
        for (condition, n) in counts {
            self.objects.get_or_create(&ConditionLabels { condition }).set(*n);
        }
    }

    /// Counts the objects by condition with `count` whenever the metrics are scraped (no timer
    /// polls the cache).
    pub fn count_objects_with(&self, count: impl Fn() -> Vec<(&'static str, i64)> + Send + Sync + 'static) {
        *self.objects_source.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(count));
    }

    /// Text exposition format (object counts taken now).
    pub fn encode(&self) -> String {
        if let Some(count) = self.objects_source.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            self.set_objects(&count());
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dashboards_series_exist_before_the_first_failure_or_run() {
        let text = Metrics::default().encode();
        for series in [
            r#"externalaudience_reconcile_failures_total{category="kube"} 0"#,
            r#"externalaudience_ingestion_runs_total{outcome="started"} 0"#,
            r#"externalaudience_ingestion_runs_total{outcome="succeeded"} 0"#,
            r#"externalaudience_ingestion_runs_total{outcome="failed"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing from:\n{text}");
        }
    }

    #[test]
    fn object_counts_are_taken_when_scraped() {
        let m = Metrics::default();
        let n = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(3));
        let seen = n.clone();
        m.count_objects_with(move || vec![("Ready", seen.load(std::sync::atomic::Ordering::Relaxed))]);
        assert!(m.encode().contains(r#"externalaudience_objects{condition="Ready"} 3"#));
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m.encode().contains(r#"externalaudience_objects{condition="Ready"} 5"#));
    }
}
