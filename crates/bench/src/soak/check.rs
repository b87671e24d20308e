//! The soak's invariants, computed from what exists at the end (the ExternalAudiences in the
//! apiserver, the audiences, operations and runs in AEP) and what the operator sent (the
//! emulator's `received` counters), never from what the emulator refused.
//!
//! Pure: [`check`] takes plain facts and returns the [`Report`]; the unit tests below feed it
//! hand-made bad states to show that each counter can fail.

use std::collections::{BTreeMap, BTreeSet};

use aep_emulator::{AudienceView, OperationView, Stats};

/// `deletionPolicy` of an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Delete,
    Orphan,
}

/// One run recorded in an object's status (`lastRun` and `runHistory`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRun {
    pub run_id: String,
    pub generation: i64,
    /// `Processing`, `Success` or `Failed`.
    pub status: String,
}

/// What the object's status says at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusFacts {
    pub observed_generation: Option<i64>,
    pub ready: bool,
    /// Reason of `Stalled=True`, if stalled.
    pub stalled_reason: Option<String>,
    pub audience_id: Option<String>,
    /// `lastRun` first, then `runHistory`.
    pub runs: Vec<RecordedRun>,
    pub ingested_run_request: Option<String>,
}

/// One ExternalAudience the soak created, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFacts {
    /// `namespace/name`.
    pub key: String,
    /// `spec.name`: unique per object in the soak.
    pub audience_name: String,
    pub policy: Policy,
    /// The soak deleted it (the object, or its whole namespace).
    pub deleted: bool,
    /// Still in the apiserver at the end (with `deleted`: its deletion never finished).
    pub present: bool,
    /// `metadata.generation` at the end (the last one seen).
    pub generation: i64,
    /// `run-requested-at` values the soak set, with the generation the object had then.
    pub run_requests: Vec<(String, i64)>,
    pub status: Option<StatusFacts>,
}

/// What AEP holds at the end and what it was sent.
#[derive(Debug, Clone, Default)]
pub struct AepFacts {
    /// Audiences that exist now.
    pub audiences: Vec<AudienceView>,
    /// Every create operation AEP accepted, ever.
    pub operations: Vec<OperationView>,
    pub stats: Stats,
}

/// What the soak did to the system, for the table.
#[derive(Debug, Clone, Default)]
pub struct Chaos {
    pub operator_kills_landed: usize,
    pub min_operator_kills: usize,
    pub apiserver_restarts: usize,
    pub etcd_restarts: usize,
    pub emulator_restarts: usize,
    pub outage_secs: u64,
    /// Namespaces the soak deleted that still exist at the end.
    pub namespaces_left: Vec<String>,
    /// `category` → reconcile failures, summed over every operator process.
    pub reconcile_failures: BTreeMap<String, f64>,
    pub peak_rss_mib: f64,
    /// Configured `--aep-requests-per-second`.
    pub rps: u64,
}

/// Stalled reasons the soak provokes on purpose (injected failed operations and runs); any other
/// Stalled object at the end is a failure.
pub const DOCUMENTED_STALLS: &[&str] = &["OperationFailed", "RunFailed"];

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub value: String,
    /// `None`: informational; `Some(false)`: an invariant that failed.
    pub ok: Option<bool>,
    /// Up to a few offending objects or audiences.
    pub examples: Vec<String>,
}

/// The table [`check`] returns.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    fn invariant(&mut self, name: &str, bad: Vec<String>, value: String) {
        let ok = bad.is_empty();
        self.rows.push(Row {
            name: name.to_owned(),
            value,
            ok: Some(ok),
            examples: bad.into_iter().take(5).collect(),
        });
    }

    fn count(&mut self, name: &str, bad: Vec<String>) {
        let value = bad.len().to_string();
        self.invariant(name, bad, value);
    }

    fn info(&mut self, name: &str, value: String) {
        self.rows.push(Row {
            name: name.to_owned(),
            value,
            ok: None,
            examples: Vec::new(),
        });
    }

    /// Names of the invariants that failed.
    pub fn failures(&self) -> Vec<&str> {
        self.rows
            .iter()
            .filter(|r| r.ok == Some(false))
            .map(|r| r.name.as_str())
            .collect()
    }

    /// The row named `name`.
    pub fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name)
    }

    /// A plain-text table.
    pub fn render(&self) -> String {
        let width = self.rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for r in &self.rows {
            let verdict = match r.ok {
                Some(true) => "ok  ",
                Some(false) => "FAIL",
                None => "    ",
            };
            out.push_str(&format!("{verdict} {:<width$}  {}\n", r.name, r.value));
            for e in &r.examples {
                out.push_str(&format!("       {:<width$}    e.g. {e}\n", ""));
            }
        }
        out
    }
}

/// Computes every invariant. See the module docs.
pub fn check(objects: &[ObjectFacts], aep: &AepFacts, chaos: &Chaos) -> Report {
    let mut report = Report::default();
    let live_by_name: BTreeMap<&str, Vec<&AudienceView>> = aep.audiences.iter().fold(BTreeMap::new(), |mut m, a| {
        m.entry(a.name.as_str()).or_default().push(a);
        m
    });
    let succeeded_by_name: BTreeMap<&str, Vec<&OperationView>> = aep
        .operations
        .iter()
        .filter(|o| o.status == "SUCCESS")
        .fold(BTreeMap::new(), |mut m, o| {
            m.entry(o.name.as_str()).or_default().push(o);
            m
        });
    let failed_op_names: BTreeSet<&str> = aep
        .operations
        .iter()
        .filter(|o| o.status == "FAILED")
        .map(|o| o.name.as_str())
        .collect();
    let audience_by_id: BTreeMap<&str, &AudienceView> =
        aep.audiences.iter().map(|a| (a.audience_id.as_str(), a)).collect();
    let live: Vec<&ObjectFacts> = objects.iter().filter(|o| !o.deleted).collect();

    // Objects Ready, or Stalled for a reason the soak provoked, with the evidence in AEP.
    let mut ready = 0;
    let mut documented = 0;
    let mut unsettled = Vec::new();
    for o in &live {
        let Some(st) = &o.status else {
            unsettled.push(format!("{}: no status", o.key));
            continue;
        };
        if st.observed_generation != Some(o.generation) {
            unsettled.push(format!(
                "{}: observedGeneration {:?} != generation {}",
                o.key, st.observed_generation, o.generation
            ));
        } else if st.ready {
            ready += 1;
        } else if let Some(reason) = &st.stalled_reason {
            let evidence = match reason.as_str() {
                "OperationFailed" => failed_op_names.contains(o.audience_name.as_str()),
                "RunFailed" => st
                    .audience_id
                    .as_deref()
                    .and_then(|id| audience_by_id.get(id))
                    .is_some_and(|a| a.runs.last().is_some_and(|r| r.status == "FAILED")),
                _ => false,
            };
            if DOCUMENTED_STALLS.contains(&reason.as_str()) && evidence {
                documented += 1;
            } else {
                unsettled.push(format!(
                    "{}: Stalled/{reason} without an injected failure behind it",
                    o.key
                ));
            }
        } else {
            unsettled.push(format!("{}: neither Ready nor Stalled", o.key));
        }
    }
    report.invariant(
        "objects Ready, or Stalled by an injected failure",
        unsettled.clone(),
        format!(
            "{ready} Ready + {documented} Stalled (injected) of {} live; {} unsettled",
            live.len(),
            unsettled.len()
        ),
    );

    // Audiences per owner: every audience AEP ever created under the object's (unique) name.
    let mut per_owner: BTreeMap<usize, usize> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for o in objects {
        let created = succeeded_by_name.get(o.audience_name.as_str()).map_or(0, Vec::len);
        let existing = live_by_name.get(o.audience_name.as_str()).map_or(0, Vec::len);
        *per_owner.entry(created).or_default() += 1;
        if created > 1 || existing > 1 {
            duplicates.push(format!("{}: {created} audiences created, {existing} exist", o.key));
        }
    }
    report.invariant(
        "duplicate audiences (owners with more than one)",
        duplicates.clone(),
        format!(
            "{}; owners by audiences created: {}",
            duplicates.len(),
            per_owner
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    let names: BTreeSet<&str> = objects.iter().map(|o| o.audience_name.as_str()).collect();
    let unowned: Vec<String> = aep
        .audiences
        .iter()
        .filter(|a| !names.contains(a.name.as_str()))
        .map(|a| format!("{} ({})", a.audience_id, a.name))
        .collect();
    report.count("audiences no object owns", unowned);

    // Lost: a live object whose audience is gone, is another's, or that has none.
    let mut lost = Vec::new();
    for o in &live {
        let Some(st) = &o.status else { continue };
        let stalled_before_audience =
            st.stalled_reason.as_deref() == Some("OperationFailed") && st.audience_id.is_none();
        match st.audience_id.as_deref() {
            None if !stalled_before_audience => lost.push(format!("{}: no audience", o.key)),
            None => {}
            Some(id) => match audience_by_id.get(id) {
                None => lost.push(format!("{}: audience {id} is gone", o.key)),
                Some(a) if a.name != o.audience_name => {
                    lost.push(format!("{}: audience {id} is named {:?}", o.key, a.name))
                }
                Some(_) => {}
            },
        }
    }
    report.count("lost audiences", lost);

    // Orphans: audiences of deleted `Delete` objects; `Orphan` objects must leave theirs.
    let mut orphans = Vec::new();
    let mut kept = 0;
    let mut orphan_policy = 0;
    let mut dropped = Vec::new();
    for o in objects.iter().filter(|o| o.deleted) {
        let existing = live_by_name.get(o.audience_name.as_str()).map_or(0, Vec::len);
        let created = succeeded_by_name.get(o.audience_name.as_str()).map_or(0, Vec::len);
        match o.policy {
            Policy::Delete if existing > 0 => orphans.push(format!("{}: {existing} audience(s) left", o.key)),
            Policy::Delete => {}
            Policy::Orphan => {
                orphan_policy += 1;
                if existing > 0 {
                    kept += 1;
                } else if created > 0 {
                    dropped.push(format!(
                        "{}: deletionPolicy Orphan, but its audience was deleted",
                        o.key
                    ));
                }
            }
        }
    }
    report.count("orphaned audiences (deleted Delete objects)", orphans);
    report.invariant(
        "Orphan objects whose audience was deleted",
        dropped.clone(),
        format!(
            "{} ({kept} of {orphan_policy} Orphan objects left theirs)",
            dropped.len()
        ),
    );

    // Leaked finalizers: deletions that never finished.
    let mut leaked: Vec<String> = objects
        .iter()
        .filter(|o| o.deleted && o.present)
        .map(|o| format!("{}: still present", o.key))
        .collect();
    leaked.extend(
        chaos
            .namespaces_left
            .iter()
            .map(|ns| format!("namespace {ns}: still present")),
    );
    report.count("leaked finalizers (deletions never finished)", leaked);

    // Runs per demand: each run AEP holds for a live audience is one the object recorded, at most
    // one per generation plus one per run request made at that generation, and the last one
    // ingests what the object asks for now.
    let mut run_problems = Vec::new();
    let mut runs_seen = 0;
    for o in &live {
        let (Some(st), Some(a)) = (
            &o.status,
            o.status
                .as_ref()
                .and_then(|s| s.audience_id.as_deref())
                .and_then(|id| audience_by_id.get(id)),
        ) else {
            continue;
        };
        runs_seen += a.runs.len();
        let recorded: BTreeMap<&str, &RecordedRun> = st.runs.iter().map(|r| (r.run_id.as_str(), r)).collect();
        let mut per_generation: BTreeMap<i64, usize> = BTreeMap::new();
        for run in &a.runs {
            match recorded.get(run.run_id.as_str()) {
                Some(r) => *per_generation.entry(r.generation).or_default() += 1,
                None => run_problems.push(format!("{}: run {} is not in its status", o.key, run.run_id)),
            }
        }
        for (generation, runs) in per_generation {
            let requests = o.run_requests.iter().filter(|(_, g)| *g == generation).count();
            if runs > 1 + requests {
                run_problems.push(format!(
                    "{}: {runs} runs for generation {generation} ({requests} run requests)",
                    o.key
                ));
            }
        }
        if st.ready {
            match st.runs.first() {
                Some(last) if last.generation == o.generation && last.status == "Success" => {}
                other => run_problems.push(format!(
                    "{}: Ready, but its last run {other:?} is not a successful run of generation {}",
                    o.key, o.generation
                )),
            }
            if let Some((value, _)) = o.run_requests.last()
                && st.ingested_run_request.as_deref() != Some(value.as_str())
            {
                run_problems.push(format!("{}: run request {value} never ingested", o.key));
            }
        }
    }
    report.invariant(
        "runs not matching exactly one demand",
        run_problems.clone(),
        format!("{} ({runs_seen} runs on live audiences)", run_problems.len()),
    );

    let s = &aep.stats;
    report.info(
        "creates sent / accepted / audiences created",
        format!(
            "{} / {} / {}",
            s.received("create_audience"),
            s.creates,
            succeeded_by_name.values().map(Vec::len).sum::<usize>()
        ),
    );
    report.info(
        "start-runs sent / runs started",
        format!("{} / {}", s.received("start_run"), s.runs_started),
    );
    let total: u64 = s.received.values().sum();
    report.info(
        "AEP requests sent / faults injected",
        format!(
            "{total} / {} before the work + {} answers lost after it ({:.1} %)",
            s.injected_errors,
            s.lost_answers,
            100.0 * (s.injected_errors + s.lost_answers) as f64 / (total.max(1)) as f64
        ),
    );

    // The limiter: never over, and pressed (a lower bound).
    let busiest = s.max_aep_requests_per_second;
    let floor = chaos.rps * 8 / 10;
    let mut rate = Vec::new();
    if busiest > chaos.rps {
        rate.push(format!("busiest second {busiest} > limit {}", chaos.rps));
    }
    if busiest < floor {
        rate.push(format!(
            "busiest second {busiest} < {floor}: the limiter was never pressed"
        ));
    }
    report.invariant(
        "AEP requests in the busiest second (limit, floor)",
        rate,
        format!("{busiest} (limit {}, floor {floor})", chaos.rps),
    );

    let mut kills = Vec::new();
    if chaos.operator_kills_landed < chaos.min_operator_kills {
        kills.push(format!(
            "{} kills landed, {} required",
            chaos.operator_kills_landed, chaos.min_operator_kills
        ));
    }
    report.invariant(
        "operator SIGKILLs landed",
        kills,
        format!(
            "{} (at least {})",
            chaos.operator_kills_landed, chaos.min_operator_kills
        ),
    );
    report.info(
        "restarts: kube-apiserver / etcd / emulator; AEP outage",
        format!(
            "{} / {} / {}; {} s of 503s",
            chaos.apiserver_restarts, chaos.etcd_restarts, chaos.emulator_restarts, chaos.outage_secs
        ),
    );
    report.info(
        "reconcile failures by category (all operator processes)",
        if chaos.reconcile_failures.is_empty() {
            "none".to_owned()
        } else {
            chaos
                .reconcile_failures
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    report.info(
        "operator peak RSS (across restarts)",
        format!("{:.1} MiB", chaos.peak_rss_mib),
    );
    report
}

#[cfg(test)]
mod tests {
    use aep_emulator::RunView;

    use super::*;

    fn audience(id: &str, name: &str, runs: &[(&str, &str)]) -> AudienceView {
        AudienceView {
            org: "ORG".into(),
            sandbox: "prod".into(),
            audience_id: id.into(),
            custom_audience_id: None,
            name: name.into(),
            description: None,
            labels: vec![],
            field_labels: BTreeMap::new(),
            ttl_in_days: Some(30),
            lifecycle_state: "published".into(),
            created_at_ms: 0,
            visible: true,
            lookup_visible: true,
            runs: runs
                .iter()
                .map(|(id, status)| RunView {
                    run_id: (*id).into(),
                    status: (*status).into(),
                    created_at: 0,
                })
                .collect(),
            data_expires_at_ms: None,
            expired: false,
        }
    }

    fn op(name: &str, id: Option<&str>, status: &str) -> OperationView {
        OperationView {
            org: "ORG".into(),
            sandbox: "prod".into(),
            operation_id: format!("op-{name}-{}", id.unwrap_or("none")),
            name: name.into(),
            audience_id: id.map(Into::into),
            status: status.into(),
        }
    }

    fn ready_object(i: usize) -> ObjectFacts {
        ObjectFacts {
            key: format!("ns/o{i}"),
            audience_name: format!("aud {i}"),
            policy: Policy::Delete,
            deleted: false,
            present: true,
            generation: 1,
            run_requests: vec![],
            status: Some(StatusFacts {
                observed_generation: Some(1),
                ready: true,
                stalled_reason: None,
                audience_id: Some(format!("id{i}")),
                runs: vec![RecordedRun {
                    run_id: format!("run{i}"),
                    generation: 1,
                    status: "Success".into(),
                }],
                ingested_run_request: None,
            }),
        }
    }

    /// Three Ready objects with one audience and one run each, within the rate bounds.
    fn healthy() -> (Vec<ObjectFacts>, AepFacts, Chaos) {
        let objects: Vec<_> = (0..3).map(ready_object).collect();
        let mut aep = AepFacts::default();
        for i in 0..3 {
            let id = format!("id{i}");
            let run = format!("run{i}");
            aep.audiences
                .push(audience(&id, &format!("aud {i}"), &[(run.as_str(), "SUCCESS")]));
            aep.operations.push(op(&format!("aud {i}"), Some(&id), "SUCCESS"));
        }
        aep.stats.max_aep_requests_per_second = 20;
        let chaos = Chaos {
            rps: 20,
            operator_kills_landed: 3,
            min_operator_kills: 3,
            ..Chaos::default()
        };
        (objects, aep, chaos)
    }

    fn failing(objects: &[ObjectFacts], aep: &AepFacts, chaos: &Chaos) -> Vec<String> {
        check(objects, aep, chaos)
            .failures()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_healthy_end_state_passes() {
        let (o, a, c) = healthy();
        let report = check(&o, &a, &c);
        assert_eq!(report.failures(), Vec::<&str>::new(), "{}", report.render());
    }

    #[test]
    fn a_second_audience_for_one_owner_is_a_duplicate_even_if_deleted_since() {
        let (o, mut a, c) = healthy();
        // Created, then gone (e.g. deleted by a later cleanup): still a duplicate create.
        a.operations.push(op("aud 1", Some("idX"), "SUCCESS"));
        assert_eq!(failing(&o, &a, &c), ["duplicate audiences (owners with more than one)"]);
        let (o, mut a, c) = healthy();
        a.audiences.push(audience("idY", "aud 2", &[]));
        let f = failing(&o, &a, &c);
        assert!(
            f.contains(&"duplicate audiences (owners with more than one)".to_owned()),
            "{f:?}"
        );
    }

    #[test]
    fn an_audience_nobody_owns_is_reported() {
        let (o, mut a, c) = healthy();
        a.audiences.push(audience("idZ", "someone else's", &[]));
        assert_eq!(failing(&o, &a, &c), ["audiences no object owns"]);
    }

    #[test]
    fn a_live_object_whose_audience_is_gone_is_lost() {
        let (o, mut a, c) = healthy();
        a.audiences.retain(|x| x.audience_id != "id0");
        let f = failing(&o, &a, &c);
        assert!(f.contains(&"lost audiences".to_owned()), "{f:?}");
        let (mut o, a, c) = healthy();
        o[2].status.as_mut().unwrap().audience_id = Some("id1".into());
        let f = failing(&o, &a, &c);
        assert!(f.contains(&"lost audiences".to_owned()), "{f:?}");
    }

    #[test]
    fn an_audience_left_by_a_deleted_delete_object_is_an_orphan() {
        let (mut o, a, c) = healthy();
        o[0].deleted = true;
        o[0].present = false;
        assert_eq!(failing(&o, &a, &c), ["orphaned audiences (deleted Delete objects)"]);
        // With deletionPolicy Orphan it must stay, and deleting it is the failure.
        o[0].policy = Policy::Orphan;
        assert_eq!(failing(&o, &a, &c), Vec::<String>::new());
        let mut a2 = a.clone();
        a2.audiences.retain(|x| x.audience_id != "id0");
        assert_eq!(failing(&o, &a2, &c), ["Orphan objects whose audience was deleted"]);
    }

    #[test]
    fn a_deletion_that_never_finished_is_a_leaked_finalizer() {
        let (mut o, mut a, mut c) = healthy();
        o[1].deleted = true;
        a.audiences.retain(|x| x.audience_id != "id1");
        assert_eq!(failing(&o, &a, &c), ["leaked finalizers (deletions never finished)"]);
        o[1].present = false;
        c.namespaces_left = vec!["soak-b".into()];
        assert_eq!(failing(&o, &a, &c), ["leaked finalizers (deletions never finished)"]);
    }

    #[test]
    fn two_runs_for_one_demand_or_an_unrecorded_run_fail() {
        let name = "runs not matching exactly one demand";
        let (mut o, mut a, c) = healthy();
        a.audiences[0].runs.push(RunView {
            run_id: "run0b".into(),
            status: "SUCCESS".into(),
            created_at: 1,
        });
        assert_eq!(failing(&o, &a, &c), [name], "a run the object does not know");
        o[0].status.as_mut().unwrap().runs.push(RecordedRun {
            run_id: "run0b".into(),
            generation: 1,
            status: "Success".into(),
        });
        assert_eq!(failing(&o, &a, &c), [name], "two runs for generation 1, no request");
        o[0].run_requests.push(("r1".into(), 1));
        o[0].status.as_mut().unwrap().ingested_run_request = Some("r1".into());
        assert_eq!(
            failing(&o, &a, &c),
            Vec::<String>::new(),
            "the request explains the second run"
        );
    }

    #[test]
    fn a_ready_object_whose_last_run_is_stale_or_request_unserved_fails() {
        let name = "runs not matching exactly one demand";
        let (mut o, a, c) = healthy();
        o[0].generation = 2;
        o[0].status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(failing(&o, &a, &c), [name]);
        let (mut o, a, c) = healthy();
        o[1].run_requests.push(("r9".into(), 1));
        assert_eq!(failing(&o, &a, &c), [name]);
    }

    #[test]
    fn unsettled_or_undocumented_stalls_fail_and_injected_ones_pass() {
        let name = "objects Ready, or Stalled by an injected failure";
        let (mut o, mut a, c) = healthy();
        let st = o[0].status.as_mut().unwrap();
        st.ready = false;
        st.stalled_reason = Some("RunFailed".into());
        assert_eq!(failing(&o, &a, &c), [name], "no failed run in AEP behind it");
        a.audiences[0].runs[0].status = "FAILED".into();
        assert_eq!(failing(&o, &a, &c), Vec::<String>::new());
        o[0].status.as_mut().unwrap().stalled_reason = Some("CreateOutcomeUnknown".into());
        assert_eq!(failing(&o, &a, &c), [name]);
        let (mut o, a, c) = healthy();
        o[2].status.as_mut().unwrap().observed_generation = Some(0);
        assert_eq!(failing(&o, &a, &c), [name]);
    }

    #[test]
    fn the_rate_must_stay_under_the_limit_and_reach_its_floor() {
        let name = "AEP requests in the busiest second (limit, floor)";
        let (o, mut a, c) = healthy();
        a.stats.max_aep_requests_per_second = 21;
        assert_eq!(failing(&o, &a, &c), [name]);
        a.stats.max_aep_requests_per_second = 15;
        assert_eq!(failing(&o, &a, &c), [name]);
        a.stats.max_aep_requests_per_second = 16;
        assert_eq!(failing(&o, &a, &c), Vec::<String>::new());
    }

    #[test]
    fn too_few_landed_kills_fail() {
        let (o, a, mut c) = healthy();
        c.operator_kills_landed = 2;
        assert_eq!(failing(&o, &a, &c), ["operator SIGKILLs landed"]);
    }
}
