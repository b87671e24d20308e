//! The chaos soak's smoke (`make soak` at N = 100 for 3 minutes): the same script and the same
//! invariants as the full soak (`crates/bench/src/soak`), so a regression shows up in CI. A module
//! of `tests/e2e_lifecycle.rs`, so that its minutes overlap the long lifecycle tests (test
//! binaries run one after another); it starts its own control plane, emulator and operator.
//!
//! Operator SIGKILLs, kube-apiserver and etcd restarts, emulator restarts with its state file, an
//! AEP outage and faults before and after the work, spec changes, run requests and deletions
//! midway; then every invariant is counted from what exists and what the operator sent.

use std::path::PathBuf;

use bench::soak::{self, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_objects_through_kills_restarts_outages_and_lost_answers_lose_and_duplicate_nothing() {
    let n = 100;
    let work_dir = std::env::temp_dir().join(format!("audience-operator-soak-smoke-{}", std::process::id()));
    let out = soak::run(Config {
        n,
        minutes: 3.0,
        controller: PathBuf::from(env!("CARGO_BIN_EXE_controller")),
        repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        work_dir: work_dir.clone(),
        rps: Config::default_rps(n),
        seed: 7,
    })
    .await
    .expect("the soak harness ran");
    let table = out.report.render();
    eprintln!("{table}");
    assert!(
        out.converged_after.is_some(),
        "every object settled and every deletion finished within T + grace:\n{table}\noperator log: {}",
        work_dir.join("operator.log").display()
    );
    assert_eq!(
        out.report.failures(),
        Vec::<&str>::new(),
        "{table}\noperator log: {}",
        work_dir.join("operator.log").display()
    );
    // The chaos really happened (counted by the harness, not assumed).
    let restarts = out
        .report
        .row("restarts: kube-apiserver / etcd / emulator; AEP outage")
        .map(|r| r.value.clone())
        .unwrap_or_default();
    assert!(restarts.starts_with("3 / 1 / 3;"), "{restarts}");
    let _ = std::fs::remove_dir_all(&work_dir);
}
