//! Test doubles the kinds' step tests share: the status subresource of one object in memory.

use std::sync::Mutex;

use futures::future::BoxFuture;
use kube::ResourceExt;

use crate::controller::seams::StatusApi;

/// The status subresource of one object, with resourceVersion preconditions enforced (a write
/// conditioned on another resourceVersion is a 409), and the writes counted.
pub struct FakeStatus<K> {
    pub obj: Mutex<K>,
    pub writes: Mutex<usize>,
    pub annotation_writes: Mutex<usize>,
    /// Appended to on every status write: lets a test order writes against other calls.
    pub log: Option<std::sync::Arc<Mutex<Vec<String>>>>,
}

impl<K> FakeStatus<K> {
    pub fn new(obj: K) -> Self {
        FakeStatus {
            obj: Mutex::new(obj),
            writes: Mutex::new(0),
            annotation_writes: Mutex::new(0),
            log: None,
        }
    }

    pub fn logging_to(mut self, log: std::sync::Arc<Mutex<Vec<String>>>) -> Self {
        self.log = Some(log);
        self
    }
}

impl<K> StatusApi<K> for FakeStatus<K>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + Send + Sync,
{
    fn patch_status<'a>(
        &'a self,
        _name: &'a str,
        _manager: &'a str,
        patch: json_patch::Patch,
    ) -> BoxFuture<'a, Result<K, kube::Error>> {
        Box::pin(async move {
            let mut obj = self.obj.lock().expect("obj");
            let current = obj.resource_version().unwrap_or_default();
            let mut value = serde_json::to_value(&*obj).map_err(kube::Error::SerdeError)?;
            for op in &patch.0 {
                if let json_patch::PatchOperation::Replace(r) = op
                    && r.path.as_str() == "/metadata/resourceVersion"
                    && r.value.as_str() != Some(current.as_str())
                {
                    return Err(kube::Error::Api(Box::new(
                        kube::core::Status::failure("conflict", "Conflict").with_code(409),
                    )));
                }
            }
            json_patch::patch(&mut value, &patch).map_err(|e| kube::Error::Service(e.into()))?;
            let mut updated: K = serde_json::from_value(value).map_err(kube::Error::SerdeError)?;
            let next = current.parse::<u64>().unwrap_or(1) + 1;
            updated.meta_mut().resource_version = Some(next.to_string());
            *obj = updated.clone();
            *self.writes.lock().expect("writes") += 1;
            if let Some(log) = &self.log {
                log.lock().expect("log").push("status".to_owned());
            }
            Ok(updated)
        })
    }

    fn patch_annotation<'a>(
        &'a self,
        _name: &'a str,
        _manager: &'a str,
        key: &'a str,
        value: Option<String>,
    ) -> BoxFuture<'a, Result<K, kube::Error>> {
        Box::pin(async move {
            let mut obj = self.obj.lock().expect("obj");
            match value {
                Some(v) => obj.annotations_mut().insert(key.to_owned(), v),
                None => obj.annotations_mut().remove(key),
            };
            let next = obj.resource_version().unwrap_or_default().parse::<u64>().unwrap_or(1) + 1;
            obj.meta_mut().resource_version = Some(next.to_string());
            *self.annotation_writes.lock().expect("writes") += 1;
            Ok(obj.clone())
        })
    }
}

/// A [`Context`](super::Context) with no API server behind its client (only faked status and
/// annotation writes may happen) and its events captured.
pub fn context(timing: super::Timing) -> (std::sync::Arc<super::Context>, std::sync::Arc<super::events::Captured>) {
    let (service, handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    drop(handle);
    let client = kube::Client::new(service, "default");
    let events = std::sync::Arc::new(super::events::Captured::default());
    let core = std::sync::Arc::new(super::Context::new(
        client,
        crate::aep::AepClient::new(crate::aep::ClientConfig::default()).expect("client"),
        events.clone(),
        timing,
        std::sync::Arc::new(crate::metrics::Metrics::default()),
        std::time::Duration::from_secs(60),
    ));
    (core, events)
}
