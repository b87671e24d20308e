//! The step-level tier of the AudienceActivation: a pass carried out against an in-memory Flow
//! Service ([`FakeFlows`], scripted answers, every call recorded in one log with the status
//! writes) and an in-memory status subresource, so a test sees the order of what a step does:
//! the marker before the PATCH, the etag it is conditioned on, what a 412, a lost answer or a
//! refusal leaves behind. No network, no control plane.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use kube::runtime::{reflector, watcher};
use serde_json::json;

use super::{ActivationPass, Shared};
use crate::{
    aep::{
        AdhocOrder, CONNECTION_SPEC_KINESIS, Error as AepError, Flow, FlowPatchOp, FlowRun, SegmentJob,
        error::{Call, ErrorKind},
    },
    api::{AudienceActivation, AudienceActivationStatus, ExternalAudience},
    controller::{
        core::{Timing, facts::Creds, testing},
        reads::Reads,
        seams::FlowApi,
    },
};

type Answer<T> = Mutex<VecDeque<Result<T, AepError>>>;
type Log = Arc<Mutex<Vec<String>>>;

const AUDIENCE: &str = "aud-1";

/// Scripted Flow Service: each call pops the next answer of its queue (a call without one fails
/// the test) and is appended to the shared log.
#[derive(Default)]
struct FakeFlows {
    flows: Answer<Flow>,
    patches: Answer<Option<String>>,
    adhoc: Answer<Vec<AdhocOrder>>,
    log: Log,
}

impl FakeFlows {
    fn pop<T>(&self, entry: String, q: &Answer<T>) -> Result<T, AepError> {
        self.log.lock().expect("log").push(entry.clone());
        q.lock()
            .expect("queue")
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected call {entry}"))
    }

    fn log(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    fn patches(&self) -> Vec<String> {
        self.log().into_iter().filter(|e| e.starts_with("patch_flow")).collect()
    }
}

impl FlowApi for FakeFlows {
    async fn get_flow(&self, _: &str) -> Result<Flow, AepError> {
        self.pop("get_flow".into(), &self.flows)
    }
    async fn patch_flow(&self, _: &str, etag: &str, ops: &[FlowPatchOp]) -> Result<Option<String>, AepError> {
        let ops: Vec<String> = ops
            .iter()
            .map(|o| format!("{} {}", serde_json::to_value(o.op).expect("op"), o.path))
            .collect();
        self.pop(format!("patch_flow If-Match {etag}: {}", ops.join(", ")), &self.patches)
    }
    async fn list_flow_runs(&self, _: &str) -> Result<Vec<FlowRun>, AepError> {
        // No export runs yet.
        self.log.lock().expect("log").push("list_flow_runs".into());
        Ok(Vec::new())
    }
    async fn list_audience_flow_runs(&self, _: &str, _: &str) -> Result<Vec<FlowRun>, AepError> {
        // No export runs yet (a newly mapped audience).
        self.log.lock().expect("log").push("list_audience_flow_runs".into());
        Ok(Vec::new())
    }
    async fn adhoc_run(&self, _: &str, _: &[String]) -> Result<Vec<AdhocOrder>, AepError> {
        self.pop("adhoc_run".into(), &self.adhoc)
    }
    async fn list_segment_jobs(&self, _: Option<&str>, _: u32) -> Result<Vec<SegmentJob>, AepError> {
        self.pop("list_segment_jobs".into(), &Answer::default())
    }
}

/// A streaming destination dataflow with these selectors, at etag `etag`.
fn flow(etag: &str, selectors: serde_json::Value) -> Flow {
    serde_json::from_value(json!({
        "id": "flow-1",
        "name": "Kinesis",
        "state": "enabled",
        "etag": format!("\"{etag}\""),
        "inheritedAttributes": {
            "properties": {"isDestinationFlow": true},
            "targetConnections": [{"id": "t", "connectionSpec": {"id": CONNECTION_SPEC_KINESIS, "version": "1.0"}}]
        },
        "transformations": [{"name": "GeneralTransform", "params": {"segmentSelectors": {"selectors": selectors}}}]
    }))
    .expect("flow")
}

fn selector(id: &str) -> serde_json::Value {
    json!({"type": "PLATFORM_SEGMENT", "value": {"id": id, "name": id}})
}

fn err(call: Call, kind: ErrorKind) -> AepError {
    AepError::synthetic(call, kind, format!("{kind} from AEP"))
}

/// The Ready ExternalAudience `loyalty` with audience id [`AUDIENCE`].
fn audience() -> ExternalAudience {
    serde_json::from_value(json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "ExternalAudience",
        "metadata": {"name": "loyalty", "namespace": "ns", "uid": "ea-1", "generation": 1, "resourceVersion": "1"},
        "spec": {"credentialsSecretRef": {"name": "aep"}, "sandbox": "prod", "audienceId": AUDIENCE},
        "status": {
            "observedGeneration": 1,
            "audienceId": AUDIENCE,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Ready", "message": "ok",
                "lastTransitionTime": "2026-12-07T10:00:00Z", "observedGeneration": 1}]
        }
    }))
    .expect("external audience")
}

fn activation(status: AudienceActivationStatus) -> AudienceActivation {
    let mut obj: AudienceActivation = serde_json::from_value(json!({
        "apiVersion": "aep.audience-operator.dev/v1alpha1",
        "kind": "AudienceActivation",
        "metadata": {"name": "loyalty-to-kinesis", "namespace": "ns", "uid": "aa-1", "generation": 1,
            "resourceVersion": "1", "creationTimestamp": "2026-12-07T10:00:00Z"},
        "spec": {"audienceRef": {"name": "loyalty"}, "dataflowId": "flow-1"}
    }))
    .expect("activation");
    obj.status = Some(status);
    obj
}

fn shared() -> Shared {
    let (core, _events) = testing::context(Timing::default());
    let (audiences, mut writer) = reflector::store::<ExternalAudience>();
    writer.apply_watcher_event(&watcher::Event::Apply(audience()));
    let (objects, _) = reflector::store::<AudienceActivation>();
    super::shared(core, objects, audiences, Arc::new(Reads::default()))
}

/// One apply pass, as the controller runs it once credentials are read: decide, act, finish.
/// Returns the status written.
async fn pass(status: AudienceActivationStatus, aep: &FakeFlows) -> AudienceActivationStatus {
    let shared = shared();
    let obj = activation(status);
    let store = testing::FakeStatus::new(obj.clone()).logging_to(aep.log.clone());
    let mut pass = ActivationPass::new(&obj, &shared, &store);
    pass.gathered.credentials = Creds::Ready("ORG".into(), "https://platform.adobe.io/".into());
    pass.gathered.sandbox = Some("prod".into());
    let decision = pass.decide();
    let out = pass.act(decision, Some(aep)).await.expect("step");
    pass.finish(out, false).await.expect("finish");
    store.obj.lock().expect("obj").status.clone().unwrap_or_default()
}

fn base() -> AudienceActivationStatus {
    AudienceActivationStatus {
        audience_id: Some(AUDIENCE.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_add_is_marked_first_then_sent_once_conditioned_on_the_etag_it_was_decided_from() {
    let aep = FakeFlows::default();
    aep.flows
        .lock()
        .unwrap()
        .push_back(Ok(flow("e1", json!([selector("other")]))));
    aep.patches.lock().unwrap().push_back(Ok(Some("\"e2\"".into())));
    let st = pass(base(), &aep).await;
    let log = aep.log();
    let patch_at = log.iter().position(|e| e.starts_with("patch_flow")).expect("a PATCH");
    assert!(
        log[..patch_at].iter().any(|e| e == "status"),
        "the marker is written before the PATCH: {log:?}"
    );
    assert_eq!(
        aep.patches(),
        vec!["patch_flow If-Match \"e1\": \"add\" /transformations/0/params/segmentSelectors/selectors/-".to_owned()],
        "{log:?}"
    );
    let pending = st
        .change_pending
        .expect("the marker stays until a read shows the selector");
    assert_eq!(pending.op, "add");
    assert!(!st.selector_added, "recorded only once a read confirms it");
}

#[tokio::test]
async fn a_412_reads_again_and_sends_once_more_on_the_new_etag() {
    let aep = FakeFlows::default();
    aep.flows.lock().unwrap().push_back(Ok(flow("e1", json!([]))));
    aep.flows
        .lock()
        .unwrap()
        .push_back(Ok(flow("e2", json!([selector("ui-added")]))));
    aep.patches
        .lock()
        .unwrap()
        .push_back(Err(err(Call::PatchFlow, ErrorKind::Conflict)));
    aep.patches.lock().unwrap().push_back(Ok(Some("\"e3\"".into())));
    let st = pass(base(), &aep).await;
    assert_eq!(
        aep.patches(),
        vec![
            "patch_flow If-Match \"e1\": \"add\" /transformations/0/params/segmentSelectors/selectors/-".to_owned(),
            "patch_flow If-Match \"e2\": \"add\" /transformations/0/params/segmentSelectors/selectors/-".to_owned(),
        ],
        "{:?}",
        aep.log()
    );
    assert_eq!(
        aep.log().iter().filter(|e| *e == "get_flow").count(),
        2,
        "read again after the 412"
    );
    assert!(st.change_pending.is_some());
}

#[tokio::test]
async fn a_lost_answer_keeps_the_marker_and_sends_nothing_more() {
    let aep = FakeFlows::default();
    aep.flows.lock().unwrap().push_back(Ok(flow("e1", json!([]))));
    aep.patches
        .lock()
        .unwrap()
        .push_back(Err(err(Call::PatchFlow, ErrorKind::OutcomeUnknown)));
    let st = pass(base(), &aep).await;
    assert_eq!(aep.patches().len(), 1, "{:?}", aep.log());
    assert_eq!(
        st.change_pending.map(|p| p.op).as_deref(),
        Some("add"),
        "a read settles whether it was applied"
    );
}

#[tokio::test]
async fn a_refused_change_clears_the_marker_and_is_not_retried_in_the_pass() {
    let aep = FakeFlows::default();
    aep.flows.lock().unwrap().push_back(Ok(flow("e1", json!([]))));
    aep.patches
        .lock()
        .unwrap()
        .push_back(Err(err(Call::PatchFlow, ErrorKind::Terminal)));
    let st = pass(base(), &aep).await;
    assert_eq!(aep.patches().len(), 1, "{:?}", aep.log());
    assert!(st.change_pending.is_none(), "nothing was applied: no marker left");
}

#[tokio::test]
async fn a_pending_add_that_a_fresh_read_shows_is_confirmed_without_a_patch() {
    let aep = FakeFlows::default();
    aep.flows
        .lock()
        .unwrap()
        .push_back(Ok(flow("e2", json!([selector(AUDIENCE)]))));
    let mut status = base();
    status.change_pending = Some(crate::api::ChangePending {
        since: crate::controller::clock::now(),
        op: "add".into(),
        generation: 1,
    });
    let st = pass(status, &aep).await;
    assert!(aep.patches().is_empty(), "{:?}", aep.log());
    assert!(st.change_pending.is_none());
    assert!(st.selector_added);
}
