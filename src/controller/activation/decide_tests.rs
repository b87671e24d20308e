//! The AudienceActivation decider, table-tested: every branch from facts alone.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

use super::*;
use crate::{
    aep::{CONNECTION_SPEC_KINESIS, CONNECTION_SPEC_S3},
    api::{
        ActivationTarget, AudienceRef, Blocked, ChangePending, ExportMode, ExportRequest, ExportScheduleSpec,
        ExportSpec,
    },
    controller::core::facts::Endpoint,
};

const AUDIENCE: &str = "aud-1";
const ENDPOINT: Endpoint<'static> = Endpoint {
    org_id: "ORG",
    platform_url: "https://platform.adobe.io/",
};

fn spec(export: bool) -> AudienceActivationSpec {
    AudienceActivationSpec {
        audience_ref: AudienceRef { name: "loyalty".into() },
        dataflow_id: "flow-1".into(),
        export: export.then(|| ExportSpec {
            mode: ExportMode::DAILY_FULL_EXPORT,
            schedule: ExportScheduleSpec {
                frequency: "DAILY".into(),
                trigger_type: Some("AFTER_SEGMENT_EVAL".into()),
                start_date: None,
                end_date: None,
                start_time: None,
            },
            filename_template: None,
        }),
        deletion_policy: DeletionPolicy::Delete,
    }
}

/// A destination flow of `kind` with these selectors.
fn flow(batch: bool, selectors: serde_json::Value) -> Flow {
    let spec = if batch {
        CONNECTION_SPEC_S3
    } else {
        CONNECTION_SPEC_KINESIS
    };
    serde_json::from_value(json!({
        "id": "flow-1",
        "name": "Files",
        "state": "enabled",
        "etag": "\"e1\"",
        "inheritedAttributes": {
            "properties": {"isDestinationFlow": true},
            "targetConnections": [{"id": "t", "connectionSpec": {"id": spec, "version": "1.0"}}]
        },
        "transformations": [{"name": "GeneralTransform", "params": {"segmentSelectors": {"selectors": selectors}}}]
    }))
    .expect("flow")
}

fn daily_full(id: &str) -> serde_json::Value {
    json!({"type": "PLATFORM_SEGMENT", "value": {"id": id, "exportMode": "DAILY_FULL_EXPORT",
        "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL"}, "enrichmentInfo": {"enabled": false}}})
}

struct World {
    spec: AudienceActivationSpec,
    status: AudienceActivationStatus,
    now: Timestamp,
    deleting: bool,
    paused: bool,
    export_request: Option<&'static str>,
    audience: Audience<'static>,
    claimed_by: Option<&'static str>,
    credentials: Credentials<'static>,
    flow: Option<Result<Flow, aep::Error>>,
    fresh: bool,
    timing: Timing,
}

impl World {
    fn new(spec: AudienceActivationSpec, flow: Option<Flow>) -> Self {
        World {
            spec,
            status: AudienceActivationStatus {
                audience_id: Some(AUDIENCE.into()),
                ..Default::default()
            },
            now: Timestamp::now(),
            deleting: false,
            paused: false,
            export_request: None,
            audience: Audience::Ready {
                audience_id: AUDIENCE,
                sandbox: "prod",
            },
            claimed_by: None,
            credentials: Credentials::Ready(ENDPOINT),
            flow: flow.map(Ok),
            fresh: false,
            timing: Timing::default(),
        }
    }

    fn decide(&self) -> Decision {
        decide(&Facts {
            now: self.now,
            generation: 1,
            spec: &self.spec,
            status: &self.status,
            deleting: self.deleting,
            paused: self.paused,
            export_request: self.export_request,
            audience: self.audience,
            claimed_by: self.claimed_by,
            credentials: self.credentials,
            sandbox: Some("prod"),
            flow: self.flow.as_ref().map(|r| r.as_ref()),
            flow_is_fresh: self.fresh,
            timing: &self.timing,
        })
    }

    fn pending(mut self, op: &str, age: Duration) -> Self {
        self.status.change_pending = Some(ChangePending {
            since: Time(self.now - jiff::SignedDuration::try_from(age).expect("age")),
            op: op.into(),
            generation: 1,
        });
        self
    }
}

fn reason_of(d: &Decision) -> &'static str {
    d.health.reason()
}

#[test]
fn waits_for_what_the_spec_cannot_change_and_blocks_on_what_only_a_change_resolves() {
    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.paused = true;
    assert_eq!(w.decide().step, Step::Pause);

    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.status.blocked = Some(Blocked {
        reason: "ExportSettingsInvalid".into(),
        generation: 1,
        message: "spec.export: required".into(),
    });
    let d = w.decide();
    assert_eq!((d.step.clone(), reason_of(&d)), (Step::Wait, "ExportSettingsInvalid"));

    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.claimed_by = Some("older");
    let d = w.decide();
    assert!(matches!(d.step, Step::Hold { .. }) && d.health.is_stalled(), "{d:?}");
    assert_eq!(reason_of(&d), "ActivationClaimed");
    assert!(d.health.message().contains("older"), "{d:?}");

    for (audience, text) in [
        (Audience::Missing, "does not exist"),
        (
            Audience::NotReady("RunInProgress: ingesting"),
            "RunInProgress: ingesting",
        ),
    ] {
        let mut w = World::new(spec(true), Some(flow(true, json!([]))));
        w.audience = audience;
        let d = w.decide();
        assert!(matches!(d.step, Step::Hold { .. }), "{d:?}");
        assert_eq!(reason_of(&d), "AudienceNotReady");
        assert!(
            d.health.message().contains("loyalty") && d.health.message().contains(text),
            "names the audience and why: {d:?}"
        );
        assert!(!d.health.is_stalled(), "waiting is Reconciling");
    }

    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.credentials = Credentials::Missing("Secret aep-credentials not found");
    let d = w.decide();
    assert_eq!(reason_of(&d), "CredentialsMissing");
    assert!(matches!(d.step, Step::Hold { .. }));

    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.status.target = Some(ActivationTarget {
        credentials_secret: "aep-credentials".into(),
        org_id: "OTHER".into(),
        platform_url: ENDPOINT.platform_url.into(),
        sandbox: "prod".into(),
    });
    let d = w.decide();
    assert_eq!(reason_of(&d), "OrganizationChanged");
    assert!(d.health.is_stalled() && !d.step.changes_flow());
}

#[test]
fn the_dataflow_must_take_the_export_settings_the_spec_has() {
    let cases = [
        (spec(false), flow(true, json!([])), "spec.export: required"),
        (spec(true), flow(false, json!([])), "spec.export: must be removed"),
    ];
    for (spec, flow, text) in cases {
        let d = World::new(spec, Some(flow)).decide();
        assert!(matches!(d.step, Step::Block { .. }), "{d:?}");
        assert_eq!(reason_of(&d), "ExportSettingsInvalid");
        assert!(d.health.message().contains(text), "{d:?}");
    }
    let mut not_destination = flow(false, json!([]));
    not_destination.transformations.clear();
    let d = World::new(spec(false), Some(not_destination)).decide();
    assert_eq!(reason_of(&d), "NotADestinationDataflow");
    assert!(d.health.message().contains("spec.dataflowId"));

    let d = World::new(spec(true), None).decide();
    assert_eq!(d.step, Step::Read { fresh: false });
    let mut w = World::new(spec(true), None);
    w.flow = Some(Err(aep::Error::synthetic(
        aep::error::Call::GetFlow,
        ErrorKind::NotFound,
        "flows not found with id = [flow-1]",
    )));
    assert_eq!(w.decide().step, Step::ReadFailed);
}

#[test]
fn add_replace_or_nothing_from_what_the_read_shows() {
    // Absent: one add, conditioned on the read's etag, with the export settings.
    let d = World::new(spec(true), Some(flow(true, json!([daily_full("someone-else")])))).decide();
    let Step::Add { selector, etag } = &d.step else {
        panic!("{d:?}")
    };
    assert_eq!(etag, "\"e1\"");
    assert_eq!(selector.value.id.as_deref(), Some(AUDIENCE));
    assert_eq!(selector.value.export_mode.as_deref(), Some("DAILY_FULL_EXPORT"));
    assert_eq!(reason_of(&d), "Activating");
    // Streaming: only the id.
    let d = World::new(spec(false), Some(flow(false, json!([])))).decide();
    let Step::Add { selector, .. } = &d.step else {
        panic!("{d:?}")
    };
    assert!(!selector.value.has_export_settings());

    // Present as wanted (recognised by systemSegmentId too): Ready, nothing sent.
    for selectors in [
        json!([daily_full("x"), daily_full(AUDIENCE)]),
        json!([{"type": "PLATFORM_SEGMENT", "value": {"id": "ext-1", "systemSegmentId": AUDIENCE,
            "exportMode": "DAILY_FULL_EXPORT", "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL", "startDate": "2026-01-01"}}}]),
    ] {
        let d = World::new(spec(true), Some(flow(true, selectors))).decide();
        assert!(matches!(d.step, Step::Idle { .. }), "{d:?}");
        assert_eq!(reason_of(&d), "Ready");
    }

    // Present with other settings: replace at its index, the complete selector as read.
    let mut other = daily_full(AUDIENCE);
    other["value"]["schedule"]["frequency"] = json!("ONCE");
    let d = World::new(spec(true), Some(flow(true, json!([daily_full("x"), other])))).decide();
    let Step::Replace { index, selector, etag } = &d.step else {
        panic!("{d:?}")
    };
    assert_eq!((*index, etag.as_str()), (1, "\"e1\""));
    assert_eq!(
        selector.value.schedule.as_ref().and_then(|s| s.frequency.as_deref()),
        Some("DAILY")
    );
    assert!(
        selector.value.extra.contains_key("enrichmentInfo"),
        "unknown keys are sent back"
    );
}

#[test]
fn a_pending_change_is_settled_by_a_read_and_decided_again_only_after_the_settle_window() {
    // The read shows it: recorded, with selectorAdded for an add.
    let w =
        World::new(spec(true), Some(flow(true, json!([daily_full(AUDIENCE)])))).pending(OP_ADD, Duration::from_secs(1));
    assert_eq!(w.decide().step, Step::Confirmed { selector_added: true });
    let w = World::new(spec(true), Some(flow(true, json!([daily_full(AUDIENCE)]))))
        .pending(OP_REPLACE, Duration::from_secs(1));
    assert_eq!(w.decide().step, Step::Confirmed { selector_added: false });

    // Absent: a cached read may predate it, so read afresh; a fresh read within the window waits;
    // after it, the change is decided again.
    let w = World::new(spec(true), Some(flow(true, json!([])))).pending(OP_ADD, Duration::from_secs(1));
    assert_eq!(w.decide().step, Step::Read { fresh: true });
    let mut w = World::new(spec(true), Some(flow(true, json!([])))).pending(OP_ADD, Duration::from_secs(1));
    w.fresh = true;
    assert!(matches!(w.decide().step, Step::Confirm { .. }));
    assert_eq!(reason_of(&w.decide()), "ConfirmingActivation");
    let settle = Timing::default().create_settle;
    let mut w = World::new(spec(true), Some(flow(true, json!([])))).pending(OP_ADD, settle + Duration::from_secs(1));
    w.fresh = true;
    assert!(matches!(w.decide().step, Step::Add { .. }));
}

#[test]
fn an_ad_hoc_export_is_one_request_per_new_value_on_a_file_based_dataflow() {
    let mapped = || World::new(spec(true), Some(flow(true, json!([daily_full(AUDIENCE)]))));
    let mut w = mapped();
    w.export_request = Some("2026-12-07T10:00:00Z");
    assert_eq!(
        w.decide().step,
        Step::Export {
            audience_id: AUDIENCE.into(),
            value: "2026-12-07T10:00:00Z".into()
        }
    );
    assert_eq!(
        reason_of(&w.decide()),
        "Ready",
        "an export request never makes the mapping unready"
    );

    // The same value again: nothing.
    let request = |state: &str, age: Duration, now: Timestamp| ExportRequest {
        value: "2026-12-07T10:00:00Z".into(),
        since: Time(now - jiff::SignedDuration::try_from(age).expect("age")),
        state: state.into(),
        after_run_id: None,
        after_run_created_ms: None,
        run_id: None,
        message: None,
    };
    for state in [EXPORT_STARTED, EXPORT_REFUSED, EXPORT_NOT_SENT] {
        let mut w = mapped();
        w.export_request = Some("2026-12-07T10:00:00Z");
        w.status.export_request = Some(request(state, Duration::from_secs(1), w.now));
        assert!(matches!(w.decide().step, Step::Idle { .. }), "{state}");
    }
    // Pending: looked for; sent again only after the settle window.
    let mut w = mapped();
    w.export_request = Some("2026-12-07T10:00:00Z");
    w.status.export_request = Some(request(EXPORT_PENDING, Duration::from_secs(1), w.now));
    assert_eq!(
        w.decide().step,
        Step::SettleExport {
            audience_id: AUDIENCE.into(),
            resend: false
        }
    );
    w.status.export_request = Some(request(
        EXPORT_PENDING,
        Timing::default().create_settle + Duration::from_secs(1),
        w.now,
    ));
    assert_eq!(
        w.decide().step,
        Step::SettleExport {
            audience_id: AUDIENCE.into(),
            resend: true
        }
    );

    // Streaming dataflows and unusable values are refused without a request.
    let mut w = World::new(
        spec(false),
        Some(flow(
            false,
            json!([{"type": "PLATFORM_SEGMENT", "value": {"id": AUDIENCE}}]),
        )),
    );
    w.export_request = Some("now");
    assert!(matches!(w.decide().step, Step::RefuseExport { ref message, .. } if message.contains("file-based")));
    let long: &'static str = Box::leak("x".repeat(EXPORT_REQUEST_MAX + 1).into_boxed_str());
    for bad in ["", "a\nb", long] {
        let mut w = mapped();
        w.export_request = Some(bad);
        assert!(matches!(w.decide().step, Step::RefuseExport { .. }), "{bad:?}");
    }
    // Not mapped yet: the request waits for the mapping.
    let mut w = World::new(spec(true), Some(flow(true, json!([]))));
    w.export_request = Some("now");
    assert!(matches!(w.decide().step, Step::Add { .. }));
}

#[test]
fn deletion_removes_only_what_this_object_added_from_a_fresh_read() {
    let deleting = |selectors: serde_json::Value, added: bool| {
        let mut w = World::new(spec(true), Some(flow(true, selectors)));
        w.deleting = true;
        w.fresh = true;
        w.status.selector_added = added;
        w
    };
    // Added: one remove at the index the fresh read shows.
    let d = deleting(json!([daily_full("x"), daily_full(AUDIENCE)]), true).decide();
    let Step::Remove { index, etag, .. } = &d.step else {
        panic!("{d:?}")
    };
    assert_eq!((*index, etag.as_str()), (1, "\"e1\""));
    // Not fresh: read first.
    let mut w = deleting(json!([daily_full(AUDIENCE)]), true);
    w.fresh = false;
    assert_eq!(w.decide().step, Step::Read { fresh: true });
    // Gone: released.
    assert!(matches!(deleting(json!([]), true).decide().step, Step::Release { .. }));
    // Not added by this object, or Orphan: released without a change.
    assert!(matches!(
        deleting(json!([daily_full(AUDIENCE)]), false).decide().step,
        Step::Release { .. }
    ));
    let mut w = deleting(json!([daily_full(AUDIENCE)]), true);
    w.spec.deletion_policy = DeletionPolicy::Orphan;
    assert!(matches!(w.decide().step, Step::Release { event: Some(_) }));
    // An add whose answer was lost counts as added; absent within the window: wait for it.
    let w = deleting(json!([]), false).pending(OP_ADD, Duration::from_secs(1));
    assert!(matches!(w.decide().step, Step::WaitDeletion { .. }));
    let w = deleting(json!([daily_full(AUDIENCE)]), false).pending(OP_ADD, Duration::from_secs(1));
    assert!(matches!(w.decide().step, Step::Remove { .. }));
    // The dataflow is gone: nothing to remove.
    let mut w = deleting(json!([]), true);
    w.flow = Some(Err(aep::Error::synthetic(
        aep::error::Call::GetFlow,
        ErrorKind::NotFound,
        "gone",
    )));
    assert!(matches!(w.decide().step, Step::Release { .. }));
    // Paused, or no credentials: wait.
    let mut w = deleting(json!([daily_full(AUDIENCE)]), true);
    w.paused = true;
    assert!(matches!(w.decide().step, Step::WaitDeletion { .. }));
    let mut w = deleting(json!([daily_full(AUDIENCE)]), true);
    w.credentials = Credentials::Missing("gone");
    assert!(matches!(w.decide().step, Step::WaitDeletion { .. }));
    // Never resolved an audience: nothing to do.
    let mut w = deleting(json!([]), true);
    w.status.audience_id = None;
    assert!(matches!(w.decide().step, Step::Release { event: None }));
}

#[test]
fn the_run_an_ad_hoc_request_started_is_the_audiences_run_after_the_one_known_before() {
    let run = |id: &str, audience: &str, created: i64| -> FlowRun {
        serde_json::from_value(json!({"id": id, "flowId": "flow-1", "createdAt": created,
            "metrics": {"recordSummary": {"targetSummaries": [{"entitySummaries": [{"id": format!("segment:{audience}")}]}]}}}))
        .expect("run")
    };
    let runs = vec![
        run("r3", "other", 300),
        run("r2", AUDIENCE, 200),
        run("r1", AUDIENCE, 100),
    ];
    assert_eq!(last_run_of(&runs, AUDIENCE).map(|r| r.id.as_str()), Some("r2"));
    assert_eq!(
        run_after(&runs, AUDIENCE, Some("r1"), Some(100)).map(|r| r.id.as_str()),
        Some("r2")
    );
    assert!(
        run_after(&runs, AUDIENCE, Some("r2"), Some(200)).is_none(),
        "nothing newer"
    );
    assert_eq!(
        run_after(&runs, AUDIENCE, None, None).map(|r| r.id.as_str()),
        Some("r2")
    );
}

#[test]
fn settings_left_unset_keep_aeps_value() {
    let mut s = spec(true);
    let current: SelectorValue = serde_json::from_value(json!({"id": AUDIENCE, "exportMode": "DAILY_FULL_EXPORT",
        "filenameTemplate": "%SEGMENT_ID%", "schedule": {"frequency": "DAILY", "triggerType": "AFTER_SEGMENT_EVAL",
        "startDate": "2026-01-01"}}))
    .expect("value");
    assert!(settings_match(&s, &current));
    s.export.as_mut().expect("export").filename_template = Some("%SEGMENT_NAME%".into());
    assert!(!settings_match(&s, &current));
    let merged = merged_selector(&s, &SegmentSelector::platform_segment(current));
    assert_eq!(merged.value.filename_template.as_deref(), Some("%SEGMENT_NAME%"));
    assert_eq!(
        merged.value.schedule.and_then(|s| s.start_date).as_deref(),
        Some("2026-01-01"),
        "kept"
    );
}
