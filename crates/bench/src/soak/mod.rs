//! `make soak`: N ExternalAudiences through operator SIGKILLs, kube-apiserver and etcd restarts,
//! emulator restarts (state kept), a full AEP outage, latency spikes and AEP faults before and
//! after the work, with spec changes, run requests and deletions midway; then the invariants of
//! [`check`] over what exists and what the operator sent.
//!
//! Everything is real: a local control plane (etcd + kube-apiserver + kube-controller-manager for
//! namespace deletion), the AEP emulator over HTTP with a state file, and the operator as its own
//! process under its ServiceAccount's RBAC. The timeline is a fraction of the run's length, so a
//! 3-minute smoke and a 20-minute soak follow the same script:
//!
//! | when (of T) | what |
//! |---|---|
//! | 0 | pass 1: strictest AEP model (duplicate names allowed, audiences visible only after their operation); first half of the objects |
//! | 0.15, 0.42, 0.65 | emulator restarts (graceful; state file kept) |
//! | 0.2, 0.45, 0.7 | kube-apiserver restarts |
//! | 0.3 | etcd restart |
//! | 0.4 | pass 2: default AEP model; second half of the objects |
//! | 0.5 | spec change on 10 %, run request on 5 %, deletion of 10 % (half `Delete`, half `Orphan`) |
//! | 0.55 | one whole namespace deleted |
//! | 0.6 | AEP fully down (every request 503) for min(2 min, T/10) |
//! | 10 s … 0.8 | operator SIGKILLed and restarted every 10–60 s; latency spikes every 40 s |
//! | 0.8 | faults off; the operator converges; the check runs once everything settled (or at T + grace) |

pub mod check;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aep_emulator::{DuplicateNames, Emulator, Faults, LostMode, RunningEmulator, Settings};
use anyhow::{Context as _, bail};
use envtest::{ControlPlane, Watched};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};

use check::{AepFacts, Chaos, ObjectFacts, Policy, RecordedRun, Report, StatusFacts};

const RUN_REQUESTED_AT: &str = "aep.audience-operator.dev/run-requested-at";
/// Namespaces: two per pass; the second one of pass 1 is deleted whole midway.
const NAMESPACES: [&str; 4] = ["soak-a", "soak-b", "soak-c", "soak-d"];
const DELETED_NAMESPACE: &str = "soak-b";

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Objects (half per pass).
    pub n: usize,
    /// Length of the run, T (the check may run up to a grace period later).
    pub minutes: f64,
    /// The operator binary.
    pub controller: PathBuf,
    /// The repository (for `deploy/` and the sample object).
    pub repo: PathBuf,
    /// Logs, the emulator's state file.
    pub work_dir: PathBuf,
    /// Operator `--aep-requests-per-second`.
    pub rps: u32,
    pub seed: u64,
}

impl Config {
    /// The operator's rate limit for `n` objects: low enough that the limiter binds.
    pub fn default_rps(n: usize) -> u32 {
        (n / 20).clamp(20, 50) as u32
    }
}

/// The soak's result.
#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    pub elapsed: Duration,
    pub converged_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    KillOperator,
    RestartApiserver,
    RestartEtcd,
    RestartEmulator,
    Spike,
    SpikeEnd,
    Pass2,
    Mutate,
    DeleteNamespace,
    OutageStart,
    OutageEnd,
    ChaosEnd,
}

/// One object the soak created.
#[derive(Debug, Clone)]
struct Planned {
    ns: String,
    name: String,
    audience_name: String,
    policy: Policy,
    deleted: bool,
    run_requests: Vec<(String, i64)>,
}

impl Planned {
    fn key(&self) -> String {
        format!("{}/{}", self.ns, self.name)
    }
}

struct Soak {
    cfg: Config,
    t: Duration,
    started: Instant,
    rng: StdRng,
    cp: Option<Arc<Mutex<ControlPlane>>>,
    client: kube::Client,
    ar: ApiResource,
    sample: Value,
    emu_rt: Option<tokio::runtime::Runtime>,
    emu: Option<RunningEmulator>,
    emu_addr: SocketAddr,
    state_file: PathBuf,
    settings: Settings,
    operator: Option<Watched>,
    operator_pid: Option<u32>,
    operator_args: Vec<String>,
    metrics_port: u16,
    http: reqwest::Client,
    objects: Vec<Planned>,
    chaos: Chaos,
    /// Reconcile failures by category of the processes already killed.
    failures_done: BTreeMap<String, f64>,
    lost_mode: usize,
}

/// Runs the soak and returns the table. Errors are about the harness (a server that would not
/// start), not about the operator: the operator's failures are rows of the report.
pub async fn run(cfg: Config) -> anyhow::Result<Outcome> {
    let mut soak = Soak::start(cfg).await?;
    let result = soak.drive().await;
    soak.teardown().await;
    result
}

fn secs(d: f64) -> Duration {
    Duration::from_secs_f64(d.max(0.0))
}

fn strict_model() -> Settings {
    Settings {
        duplicate_names: DuplicateNames::Allow,
        ..default_model()
    }
}

fn default_model() -> Settings {
    Settings {
        operation_delay_ms: 300,
        run_delay_ms: 1500,
        max_runs_per_sandbox_per_day: 1_000_000,
        ..Settings::default()
    }
}

/// AEP faults while the chaos lasts: about a fifth of the requests, before and after the work.
fn chaos_faults(f: &mut Faults, mode: LostMode) {
    f.rate_limit_probability = 0.06;
    f.retry_after_secs = 2;
    f.server_error_probability = 0.05;
    f.unavailable_probability = 0.04;
    f.hang_ms = 4000;
    for lost in [
        &mut f.lost_answers.create,
        &mut f.lost_answers.start_run,
        &mut f.lost_answers.patch,
        &mut f.lost_answers.delete,
    ] {
        lost.probability = 0.25;
        lost.mode = mode;
    }
}

fn calm_faults(f: &mut Faults) {
    let keep = (f.fail_next_operations, f.fail_next_runs);
    *f = Faults::default();
    (f.fail_next_operations, f.fail_next_runs) = keep;
}

const LOST_MODES: [LostMode; 3] = [LostMode::Error500, LostMode::Timeout, LostMode::Drop];

impl Soak {
    async fn start(cfg: Config) -> anyhow::Result<Soak> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        std::fs::create_dir_all(&cfg.work_dir)?;
        let t = secs(cfg.minutes * 60.0);
        eprintln!(
            "soak: N={} T={:.1} min rps={} seed={} work dir {}",
            cfg.n,
            cfg.minutes,
            cfg.rps,
            cfg.seed,
            cfg.work_dir.display()
        );
        let cp = tokio::task::spawn_blocking(|| -> anyhow::Result<ControlPlane> {
            Ok(ControlPlane::start(&envtest::Config::from_env()?)?)
        })
        .await??;
        let client = cp.admin_client().await?;
        install(&cfg, cp.admin_kubeconfig())?;

        let state_file = cfg.work_dir.join("emulator-state.json");
        let _ = std::fs::remove_file(&state_file);
        let emu_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("emulator")
            .enable_all()
            .build()?;
        let settings = strict_model();
        let emu = spawn_emulator(
            &emu_rt,
            "127.0.0.1:0".parse()?,
            &state_file,
            settings.clone(),
            Faults::default(),
        )
        .await?;
        let emu_addr = emu.addr();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let url = format!("http://{emu_addr}/");
        let operator_args = vec![
            "run".to_owned(),
            format!("--kubeconfig={}", cp.operator_kubeconfig().display()),
            format!("--aep-platform-url={url}"),
            format!("--aep-ims-url={url}"),
            format!("--aep-requests-per-second={}", cfg.rps),
            "--concurrency=16".into(),
            // The emulator's daily cap is out of reach too: the soak is about faults, not budgets.
            "--max-runs-per-sandbox-per-day=1000000".into(),
            "--aep-request-timeout=3s".into(),
            "--operation-poll-interval=1s".into(),
            "--run-poll-interval=1s".into(),
            "--error-backoff-base=200ms".into(),
            "--error-backoff-max=5s".into(),
            "--deferred-retry-interval=5s".into(),
            "--credentials-retry-interval=5s".into(),
            "--create-settle-window=5s".into(),
            format!("--metrics-addr=127.0.0.1:{metrics_port}"),
        ];
        let sample_path = cfg.repo.join("deploy/samples/loyalty-members.yaml");
        let sample: Value = serde_yaml_ng::from_str(
            &std::fs::read_to_string(&sample_path).with_context(|| format!("reading {}", sample_path.display()))?,
        )?;
        let gvk = GroupVersionKind::gvk("aep.audience-operator.dev", "v1alpha1", "ExternalAudience");
        let rps = u64::from(cfg.rps);
        Ok(Soak {
            rng: StdRng::seed_from_u64(cfg.seed),
            t,
            started: Instant::now(),
            cp: Some(Arc::new(Mutex::new(cp))),
            client,
            ar: ApiResource::from_gvk_with_plural(&gvk, "externalaudiences"),
            sample,
            emu_rt: Some(emu_rt),
            emu: Some(emu),
            emu_addr,
            state_file,
            settings,
            operator: None,
            operator_pid: None,
            operator_args,
            metrics_port,
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            objects: Vec::new(),
            chaos: Chaos {
                rps,
                ..Chaos::default()
            },
            failures_done: BTreeMap::new(),
            lost_mode: 0,
            cfg,
        })
    }

    fn at(&self, fraction: f64) -> Duration {
        self.t.mul_f64(fraction)
    }

    fn log(&self, what: &str) {
        eprintln!("soak: {:>6.1}s {what}", self.started.elapsed().as_secs_f64());
    }

    /// The event timeline (see the module docs), sorted.
    fn timeline(&mut self) -> Vec<(Duration, Event)> {
        let mut ev = vec![
            (self.at(0.15), Event::RestartEmulator),
            (self.at(0.42), Event::RestartEmulator),
            (self.at(0.65), Event::RestartEmulator),
            (self.at(0.2), Event::RestartApiserver),
            (self.at(0.45), Event::RestartApiserver),
            (self.at(0.7), Event::RestartApiserver),
            (self.at(0.3), Event::RestartEtcd),
            (self.at(0.4), Event::Pass2),
            (self.at(0.5), Event::Mutate),
            (self.at(0.55), Event::DeleteNamespace),
            (self.at(0.6), Event::OutageStart),
            (self.at(0.6) + self.outage(), Event::OutageEnd),
            (self.at(0.8), Event::ChaosEnd),
        ];
        let mut spike = secs(20.0);
        while spike + secs(5.0) < self.at(0.8) {
            ev.push((spike, Event::Spike));
            ev.push((spike + secs(5.0), Event::SpikeEnd));
            spike += secs(40.0);
        }
        ev.extend(self.kill_times().into_iter().map(|t| (t, Event::KillOperator)));
        ev.sort_by_key(|(t, _)| *t);
        ev
    }

    fn outage(&self) -> Duration {
        self.at(0.1).min(secs(120.0))
    }

    /// Kill times from 10 s to the end of the chaos, 10–60 s apart (random), as many as fit at
    /// 18 s on average: 52 in a 20-minute soak.
    fn kill_times(&mut self) -> Vec<Duration> {
        let window = (self.at(0.8).as_secs_f64() - 10.0).max(0.0);
        let k = (window / 18.0).floor() as usize;
        if k == 0 {
            return Vec::new();
        }
        let draws: Vec<f64> = (0..k).map(|_| self.rng.random_range(10.0..60.0)).collect();
        let excess: f64 = draws.iter().map(|x| x - 10.0).sum();
        let scale = ((0.98 * window - 10.0 * k as f64) / excess.max(1e-9)).min(1.0);
        let mut t = 10.0;
        draws
            .iter()
            .map(|x| {
                let at = secs(t);
                t += 10.0 + (x - 10.0) * scale;
                at
            })
            .collect()
    }

    async fn drive(&mut self) -> anyhow::Result<Outcome> {
        self.chaos.min_operator_kills = self.kill_times_len();
        for ns in NAMESPACES {
            self.namespace(ns).await?;
        }
        self.emulator(|f| {
            chaos_faults(f, LOST_MODES[0]);
            f.fail_next_operations = 1;
            f.fail_next_runs = 1;
        });
        self.start_operator()?;
        let timeline = self.timeline();
        self.started = Instant::now();
        self.create_objects(0).await?;
        for (when, event) in timeline {
            let now = self.started.elapsed();
            if when > now {
                tokio::time::sleep(when - now).await;
            }
            self.handle(event).await?;
        }
        let converged_after = self.converge().await?;
        let report = self.collect().await?;
        Ok(Outcome {
            report,
            elapsed: self.started.elapsed(),
            converged_after,
        })
    }

    fn kill_times_len(&mut self) -> usize {
        let saved = self.rng.clone();
        let n = self.kill_times().len();
        self.rng = saved;
        n
    }

    async fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        match event {
            Event::KillOperator => {
                self.scrape_operator().await;
                let landed = self.operator.take().is_some_and(Watched::kill);
                if landed {
                    self.chaos.operator_kills_landed += 1;
                } else {
                    self.log("the operator was not running when it was to be killed");
                }
                self.fold_failures();
                self.start_operator()?;
            }
            Event::RestartApiserver => {
                self.log("restarting kube-apiserver");
                self.restart_server("kube-apiserver").await?;
                self.chaos.apiserver_restarts += 1;
            }
            Event::RestartEtcd => {
                self.log("restarting etcd");
                self.restart_server("etcd").await?;
                self.chaos.etcd_restarts += 1;
            }
            Event::RestartEmulator => {
                self.log("restarting the AEP emulator");
                self.restart_emulator().await?;
                self.chaos.emulator_restarts += 1;
            }
            Event::Spike => {
                self.lost_mode = (self.lost_mode + 1) % LOST_MODES.len();
                let mode = LOST_MODES[self.lost_mode];
                self.emulator(|f| {
                    f.latency_ms = 1500;
                    if f.unavailable_probability < 1.0 {
                        chaos_faults(f, mode);
                    }
                });
            }
            Event::SpikeEnd => self.emulator(|f| f.latency_ms = 0),
            Event::Pass2 => {
                self.log("pass 2: default AEP model");
                self.settings = default_model();
                let settings = self.settings.clone();
                if let Some(emu) = &self.emu {
                    emu.update_settings(|s| *s = settings);
                }
                // The next creates and runs are mostly this pass's: their objects stay (only a
                // tenth of them are deleted), so the table shows them Stalled for these reasons.
                let failures = (self.cfg.n / 200).max(1) as u32;
                self.emulator(|f| {
                    f.fail_next_operations += failures;
                    f.fail_next_runs += failures;
                });
                self.create_objects(1).await?;
            }
            Event::Mutate => self.mutate().await?,
            Event::DeleteNamespace => {
                self.log(&format!("deleting namespace {DELETED_NAMESPACE}"));
                let nss: Api<Namespace> = Api::all(self.client.clone());
                retry(self.deadline(), || async {
                    match nss.delete(DELETED_NAMESPACE, &DeleteParams::default()).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await?;
                for o in self.objects.iter_mut().filter(|o| o.ns == DELETED_NAMESPACE) {
                    o.deleted = true;
                }
            }
            Event::OutageStart => {
                self.log(&format!("AEP down for {}s", self.outage().as_secs()));
                self.emulator(|f| f.unavailable_probability = 1.0);
                self.chaos.outage_secs = self.outage().as_secs();
            }
            Event::OutageEnd => {
                self.log("AEP back");
                let mode = LOST_MODES[self.lost_mode];
                self.emulator(|f| chaos_faults(f, mode));
            }
            Event::ChaosEnd => {
                self.log("chaos ends; faults off");
                self.emulator(calm_faults);
            }
        }
        Ok(())
    }

    /// Edits the emulator's faults (kept across its restarts).
    fn emulator(&self, edit: impl FnOnce(&mut Faults)) {
        if let Some(emu) = &self.emu {
            emu.update_faults(edit);
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + secs(120.0)
    }

    async fn restart_server(&mut self, name: &'static str) -> anyhow::Result<()> {
        let cp = self.cp.clone().context("control plane")?;
        tokio::task::spawn_blocking(move || {
            cp.lock()
                .map_err(|_| anyhow::anyhow!("control plane lock poisoned"))?
                .restart(name, Duration::from_secs(120))
                .map_err(anyhow::Error::from)
        })
        .await??;
        Ok(())
    }

    async fn restart_emulator(&mut self) -> anyhow::Result<()> {
        let emu = self.emu.take().context("emulator not running")?;
        let mut faults = Faults::default();
        emu.update_faults(|f| faults = f.clone());
        let rt = self.emu_rt.as_ref().context("emulator runtime")?;
        rt.spawn(emu.shutdown()).await??;
        self.emu = Some(spawn_emulator(rt, self.emu_addr, &self.state_file, self.settings.clone(), faults).await?);
        Ok(())
    }

    fn start_operator(&mut self) -> anyhow::Result<()> {
        let log = self.cfg.work_dir.join("operator.log");
        let envs = vec![("RUST_LOG".to_owned(), "info".to_owned())];
        let op = Watched::spawn(&self.cfg.controller, &self.operator_args, &envs, &log)?;
        self.operator_pid = op.pid();
        self.operator = Some(op);
        Ok(())
    }

    /// Peak RSS and the reconcile-failure counters of the running operator process.
    async fn scrape_operator(&mut self) {
        if let Some(pid) = self.operator_pid
            && let Some(rss) = crate::peak_rss_mib(pid)
        {
            self.chaos.peak_rss_mib = self.chaos.peak_rss_mib.max(rss);
        }
        let url = format!("http://127.0.0.1:{}/metrics", self.metrics_port);
        let Ok(text) = async { self.http.get(&url).send().await?.text().await }.await else {
            return;
        };
        let mut current = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("externalaudience_reconcile_failures"))
        {
            let (Some(start), Some((_, value))) = (line.find("category=\""), line.rsplit_once(' ')) else {
                continue;
            };
            let rest = &line[start + "category=\"".len()..];
            let category = rest[..rest.find('"').unwrap_or(0)].to_owned();
            *current.entry(category).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        self.chaos.reconcile_failures = current;
    }

    /// Adds the last scrape of a killed process to the totals.
    fn fold_failures(&mut self) {
        for (k, v) in std::mem::take(&mut self.chaos.reconcile_failures) {
            *self.failures_done.entry(k).or_insert(0.0) += v;
        }
    }

    async fn namespace(&self, ns: &str) -> anyhow::Result<()> {
        crate::namespace_with_credentials(&self.client, ns).await
    }

    /// Creates the objects of pass `pass` (0 or 1): half of N over its two namespaces; one in ten
    /// with `deletionPolicy: Orphan`.
    async fn create_objects(&mut self, pass: usize) -> anyhow::Result<()> {
        let half = if pass == 0 {
            self.cfg.n / 2
        } else {
            self.cfg.n - self.cfg.n / 2
        };
        let mut planned = Vec::new();
        for i in 0..half {
            let ns = NAMESPACES[pass * 2 + i % 2];
            let name = format!("aud-{pass}-{i}");
            planned.push(Planned {
                ns: ns.to_owned(),
                audience_name: format!("Soak {ns} {name}"),
                name,
                policy: if i % 10 == 3 { Policy::Orphan } else { Policy::Delete },
                deleted: false,
                run_requests: Vec::new(),
            });
        }
        self.log(&format!("pass {}: creating {half} objects", pass + 1));
        let deadline = self.deadline();
        let bodies = planned
            .iter()
            .map(|p| {
                let mut v = self.sample.clone();
                v["metadata"] = json!({"name": p.name, "namespace": p.ns});
                v["spec"]["name"] = json!(p.audience_name);
                v["spec"]["deletionPolicy"] = json!(if p.policy == Policy::Orphan { "Orphan" } else { "Delete" });
                let obj: DynamicObject = serde_json::from_value(v)?;
                Ok((self.api(&p.ns), obj))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        futures::stream::iter(bodies)
            .map(|(api, obj)| async move {
                retry(deadline, || async {
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                        Err(e) => Err(e),
                    }
                })
                .await
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        self.objects.extend(planned);
        Ok(())
    }

    fn api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.ar)
    }

    /// Spec changes on 10 %, run requests on 5 %, deletions of 10 % (half `Delete`, half
    /// `Orphan`), none in the namespace deleted later.
    async fn mutate(&mut self) -> anyhow::Result<()> {
        let n = self.cfg.n;
        let mut candidates: Vec<usize> = (0..self.objects.len())
            .filter(|&i| self.objects[i].ns != DELETED_NAMESPACE && !self.objects[i].deleted)
            .collect();
        candidates.shuffle(&mut self.rng);
        let (orphans, deletes): (Vec<usize>, Vec<usize>) = candidates
            .iter()
            .partition(|&&i| self.objects[i].policy == Policy::Orphan);
        let delete_orphan: Vec<usize> = orphans.into_iter().take(n / 20).collect();
        let delete_delete: Vec<usize> = deletes.iter().copied().take(n / 20).collect();
        let rest: Vec<usize> = deletes.iter().copied().skip(n / 20).collect();
        let change: Vec<usize> = rest.iter().copied().take(n / 10).collect();
        let request: Vec<usize> = rest.iter().copied().skip(n / 10).take(n / 20).collect();
        self.log(&format!(
            "midway: {} spec changes, {} run requests, {} + {} deletions (Delete + Orphan)",
            change.len(),
            request.len(),
            delete_delete.len(),
            delete_orphan.len()
        ));
        let deadline = self.deadline();
        for &i in &change {
            let p = &self.objects[i];
            let api = self.api(&p.ns);
            let patch = json!({"spec": {"description": format!("Members of {}, changed midway by the soak", p.name)}});
            retry(deadline, || async {
                api.patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch)).await
            })
            .await?;
        }
        for &i in &request {
            let value = format!("soak-{}", self.started.elapsed().as_millis());
            let p = &self.objects[i];
            let api = self.api(&p.ns);
            let patch = json!({"metadata": {"annotations": {RUN_REQUESTED_AT: value}}});
            let obj = retry(deadline, || async {
                api.patch(&p.name, &PatchParams::default(), &Patch::Merge(&patch)).await
            })
            .await?;
            let generation = obj.metadata.generation.unwrap_or(0);
            self.objects[i].run_requests.push((value, generation));
        }
        for &i in delete_delete.iter().chain(&delete_orphan) {
            let p = &self.objects[i];
            let api = self.api(&p.ns);
            retry(deadline, || async {
                match api.delete(&p.name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await?;
            self.objects[i].deleted = true;
        }
        Ok(())
    }

    /// Waits until every live object settled on its generation and every deletion finished, up to
    /// T plus a grace period. Returns when it converged (from the start), if it did.
    async fn converge(&mut self) -> anyhow::Result<Option<Duration>> {
        if self.operator.is_none() {
            self.start_operator()?;
        }
        let grace = self.at(0.25).max(secs(60.0));
        let give_up = self.t + grace;
        self.log("waiting for every object to settle");
        loop {
            let (objects, namespace_left) = self.snapshot().await;
            let settled = objects.as_ref().is_some_and(|objects| {
                objects.iter().all(|o| {
                    if o.deleted {
                        return !o.present;
                    }
                    o.status.as_ref().is_some_and(|s| {
                        s.observed_generation == Some(o.generation) && (s.ready || s.stalled_reason.is_some())
                    })
                })
            }) && !namespace_left;
            if settled {
                let at = self.started.elapsed();
                self.log("settled");
                return Ok(Some(at));
            }
            if self.started.elapsed() > give_up {
                self.log("did not settle within T + grace");
                return Ok(None);
            }
            tokio::time::sleep(secs(3.0)).await;
        }
    }

    /// The objects as the apiserver has them now (`None` when it could not be read), and whether
    /// the deleted namespace still exists.
    async fn snapshot(&self) -> (Option<Vec<ObjectFacts>>, bool) {
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &self.ar);
        let Ok(list) = all.list(&ListParams::default()).await else {
            return (None, true);
        };
        let by_key: BTreeMap<String, &DynamicObject> = list
            .items
            .iter()
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o.metadata.namespace.as_deref().unwrap_or_default(),
                        o.metadata.name.as_deref().unwrap_or_default()
                    ),
                    o,
                )
            })
            .collect();
        let facts = self
            .objects
            .iter()
            .map(|p| {
                let obj = by_key.get(&p.key());
                ObjectFacts {
                    key: p.key(),
                    audience_name: p.audience_name.clone(),
                    policy: p.policy,
                    deleted: p.deleted,
                    present: obj.is_some(),
                    generation: obj.and_then(|o| o.metadata.generation).unwrap_or(0),
                    run_requests: p.run_requests.clone(),
                    status: obj.and_then(|o| status_facts(&o.data["status"])),
                }
            })
            .collect();
        let nss: Api<Namespace> = Api::all(self.client.clone());
        let ns_left = !matches!(nss.get_opt(DELETED_NAMESPACE).await, Ok(None));
        (Some(facts), ns_left)
    }

    async fn collect(&mut self) -> anyhow::Result<Report> {
        let (objects, ns_left) = self.snapshot().await;
        let objects = objects.context("listing the objects at the end")?;
        self.scrape_operator().await;
        self.fold_failures();
        self.chaos.reconcile_failures = std::mem::take(&mut self.failures_done);
        self.chaos.namespaces_left = if ns_left {
            vec![DELETED_NAMESPACE.to_owned()]
        } else {
            Vec::new()
        };
        let emu = self.emu.as_ref().context("emulator")?;
        let state = emu.state();
        let aep = AepFacts {
            audiences: state.audiences,
            operations: state.operations,
            stats: emu.stats(),
        };
        Ok(check::check(&objects, &aep, &self.chaos))
    }

    async fn teardown(&mut self) {
        if let Some(op) = self.operator.take() {
            op.stop();
        }
        if let (Some(rt), Some(emu)) = (self.emu_rt.as_ref(), self.emu.take()) {
            let _ = rt.spawn(emu.shutdown()).await;
        }
        if let Some(rt) = self.emu_rt.take() {
            rt.shutdown_background();
        }
        // Stopping the servers blocks for a few seconds: not on the runtime.
        let cp = self.cp.take();
        let _ = tokio::task::spawn_blocking(move || drop(cp)).await;
    }
}

async fn spawn_emulator(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    state_file: &std::path::Path,
    settings: Settings,
    faults: Faults,
) -> anyhow::Result<RunningEmulator> {
    let builder = Emulator::builder()
        .listen(addr)
        .state_file(state_file)
        .settings(settings)
        .faults(faults);
    // On its own runtime: the driver's work never delays the emulator's clock of arrivals.
    let deadline = Instant::now() + secs(30.0);
    loop {
        let b = builder.clone();
        match rt.spawn(b.spawn()).await? {
            Ok(emu) => return Ok(emu),
            // The port of the previous instance may linger for a moment.
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(secs(0.2)).await;
            }
            Err(e) => bail!("starting the emulator on {addr}: {e}"),
        }
    }
}

/// Retries `f` on errors (the apiserver restarting) until `deadline`.
async fn retry<T, F, Fut>(deadline: Instant, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing_free_log(&e);
                tokio::time::sleep(secs(0.5)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn tracing_free_log(e: &kube::Error) {
    if !matches!(e, kube::Error::HyperError(_) | kube::Error::Service(_)) {
        eprintln!("soak: retrying after {e}");
    }
}

fn status_facts(status: &Value) -> Option<StatusFacts> {
    if !status.is_object() {
        return None;
    }
    let condition = |t: &str| {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .filter(|c| c["status"] == "True")
            .map(|c| c["reason"].as_str().unwrap_or_default().to_owned())
    };
    let run = |r: &Value| RecordedRun {
        run_id: r["runId"].as_str().unwrap_or_default().to_owned(),
        generation: r["generation"].as_i64().unwrap_or(0),
        status: r["status"].as_str().unwrap_or_default().to_owned(),
    };
    let mut runs: Vec<RecordedRun> = status["lastRun"]
        .is_object()
        .then(|| run(&status["lastRun"]))
        .into_iter()
        .collect();
    runs.extend(status["runHistory"].as_array().into_iter().flatten().map(run));
    Some(StatusFacts {
        observed_generation: status["observedGeneration"].as_i64(),
        ready: condition("Ready").is_some(),
        stalled_reason: condition("Stalled"),
        audience_id: status["audienceId"].as_str().map(str::to_owned),
        runs,
        ingested_run_request: status["ingestedRunRequest"].as_str().map(str::to_owned),
    })
}

/// Applies the CRD and RBAC that `deploy/` renders, with the admin kubeconfig.
fn install(cfg: &Config, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let kubectl = |args: &[&str], stdin: Option<&str>| -> anyhow::Result<String> {
        use std::io::Write as _;
        let mut child = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running kubectl (is the control plane's bin dir on PATH?)")?;
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(input.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let rendered = kubectl(&["kustomize", &cfg.repo.join("deploy").display().to_string()], None)?;
    let install = rendered
        .split("\n---\n")
        .filter(|doc| {
            doc.lines()
                .find_map(|l| l.strip_prefix("kind: "))
                .is_some_and(|k| crate::INSTALLED_KINDS.contains(&k.trim()))
        })
        .collect::<Vec<_>>()
        .join("\n---\n");
    kubectl(&["apply", "--server-side", "-f", "-"], Some(&install))?;
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/externalaudiences.aep.audience-operator.dev",
        ],
        None,
    )?;
    Ok(())
}
