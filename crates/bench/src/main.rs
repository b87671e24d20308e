//! `make bench`'s driver: on a running control plane and AEP emulator, measures side by side
//!
//! 1. `limit`: the same kube-apiserver work with no operator logic: create N ExternalAudiences and
//!    do, with a plain concurrent client, the writes the operator makes per object
//!    ([`WRITES_PER_OBJECT`]): its wall time is the floor;
//! 2. `operator`: the release operator as its own process on N fresh objects (zero-latency
//!    emulator, a rate limit that does not bind; optionally again at the default limit);
//! 3. `steady`: with N Ready and nothing changing, requests per minute and CPU over a window;
//! 4. `realistic`: the emulator at realistic latency and the operator at its default poll
//!    intervals, one audience alone and then N;
//!
//! and prints one table, writes `<out-dir>/<UTC timestamp>.json` and an SVG chart of objects
//! Ready over time (operator vs limit).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const FINALIZER: &str = "externalaudiences.aep.audience-operator.dev/cleanup";
/// Writes the operator must make per object on the happy path: the finalizer (metadata patch),
/// six status writes (create marker, operation id, audience id, run marker, run id, run result:
/// Ready), and the ownership record annotation twice (once the audience is known, so a backup
/// taken from then on restores without a create; again with the spec the run ingested, so it
/// restores without a run).
const WRITES_PER_OBJECT: usize = 9;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark the operator against the kube-apiserver floor (see hack/bench.sh)")]
struct Args {
    /// Admin kubeconfig (creates objects, scrapes the kube-apiserver's /metrics).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// Kubeconfig the operator runs with.
    #[arg(long, env = "OPERATOR_KUBECONFIG")]
    operator_kubeconfig: PathBuf,
    /// Base URL of the AEP emulator.
    #[arg(long)]
    emulator_url: String,
    /// The operator binary.
    #[arg(long, default_value = "target/dist/controller")]
    controller: PathBuf,
    /// The seed object, renamed per object.
    #[arg(long, default_value = "deploy/samples/loyalty-members.yaml")]
    sample: PathBuf,
    /// Objects per scenario; several run one after another (`--n 100 --n 1000`).
    #[arg(long, default_value = "1000")]
    n: Vec<usize>,
    /// Objects in flight of the bench's own client (creates, and the limit's writes): high enough
    /// that the kube-apiserver, not the client, is what binds.
    #[arg(long, default_value_t = 128)]
    client_concurrency: usize,
    /// Skip the limit scenario (quick experiments on the operator alone; no ratio is reported).
    #[arg(long)]
    skip_limit: bool,
    /// Operator `--concurrency`.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Operator `--aep-requests-per-second` for the non-binding runs.
    #[arg(long, default_value_t = 1000)]
    rps: u32,
    /// Also run the operator at its default rate limit (10 requests/s), on the smallest N.
    #[arg(long)]
    default_rps: bool,
    /// Steady-state window after the operator run of the largest N, seconds (0: skip).
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    /// Drift interval (`--resync-interval`) of the operator whose steady state is measured, seconds:
    /// shorter than the window, so the window shows what drift checks cost.
    #[arg(long, default_value_t = 60)]
    steady_resync_secs: u64,
    /// Objects for the restart scenario (0: skip): N Ready with a short drift interval, AEP
    /// requests counted per window before a SIGKILL of the operator and after its restart.
    #[arg(long, default_value_t = 0)]
    restart_n: usize,
    /// Drift interval (`--resync-interval`) of the restart scenario, seconds; each counting
    /// window is this long.
    #[arg(long, default_value_t = 60)]
    restart_window_secs: u64,
    /// AudienceActivations for the activation scenario (0: skip): N Ready ExternalAudiences, then
    /// one activation each, spread over `--activation-flows` streaming dataflows.
    #[arg(long, default_value_t = 0)]
    activations_n: usize,
    /// Dataflows of the activation scenario.
    #[arg(long, default_value_t = 10)]
    activation_flows: usize,
    /// Objects for the realistic-latency run (0: skip).
    #[arg(long, default_value_t = 0)]
    realistic_n: usize,
    /// Emulator operation delay in the realistic run, ms.
    #[arg(long, default_value_t = 2000)]
    realistic_operation_delay_ms: u64,
    /// Emulator run delay in the realistic run, ms.
    #[arg(long, default_value_t = 10000)]
    realistic_run_delay_ms: u64,
    /// Give up on a scenario after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Where the JSON result and the chart go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Directory for operator logs.
    #[arg(long, default_value = "/tmp/audience-operator-bench")]
    work_dir: PathBuf,
    /// Result of `hack/bench/peer.py --json` to include in the table and the JSON.
    #[arg(long)]
    peer_json: Option<PathBuf>,
    /// Run the operator under `nice -n 19` (a shared machine).
    #[arg(long)]
    nice: bool,
    /// Replace the table between `<!-- bench:begin -->` and `<!-- bench:end -->` in this file
    /// (docs/performance.md) with this run's. `--readme` is its former name.
    #[arg(long, alias = "readme")]
    doc: Option<PathBuf>,
    /// The command line to show above the table in docs/performance.md.
    #[arg(long, env = "BENCH_COMMAND", default_value = "make bench")]
    command: String,
}

/// One scenario's measurements.
#[derive(Debug, Default, Clone)]
struct Run {
    name: String,
    n: usize,
    wall_secs: f64,
    p50_secs: f64,
    p99_secs: f64,
    /// Seconds from the start at which each object was done/Ready, sorted.
    ready_at: Vec<f64>,
    aep_per_object: BTreeMap<String, f64>,
    kube_per_object: BTreeMap<String, f64>,
    peak_rss_mib: Option<f64>,
    cpu_secs: Option<f64>,
    extra: serde_json::Map<String, Value>,
}

impl Run {
    fn json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "n": self.n,
            "wall_secs": self.wall_secs,
            "p50_secs": self.p50_secs,
            "p99_secs": self.p99_secs,
            "aep_requests_per_object": self.aep_per_object,
            "kube_requests_per_object": self.kube_per_object,
            "peak_rss_mib": self.peak_rss_mib,
            "cpu_secs": self.cpu_secs,
            "ready_at_secs": self.ready_at.iter().map(|t| (t * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        });
        if let Value::Object(m) = &mut v {
            m.extend(self.extra.clone());
        }
        v
    }
}

struct Bench {
    args: Args,
    client: kube::Client,
    http: reqwest::Client,
    ar: ApiResource,
    sample: Value,
    /// Suffix of this invocation's namespaces (several runs may share one cluster).
    tag: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    let client = kube::Client::try_from(cfg)?;
    let sample: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(&args.sample).with_context(|| format!("reading {}", args.sample.display()))?,
    )?;
    let gvk = GroupVersionKind::gvk("aep.audience-operator.dev", "v1alpha1", "ExternalAudience");
    let bench = Bench {
        ar: ApiResource::from_gvk_with_plural(&gvk, "externalaudiences"),
        http: reqwest::Client::new(),
        client,
        sample,
        args: args.clone(),
        tag: jiff::Timestamp::now().strftime("%H%M%S").to_string(),
    };
    std::fs::create_dir_all(&args.work_dir)?;
    std::fs::create_dir_all(&args.out_dir)?;
    let started = jiff::Timestamp::now();

    let mut runs = Vec::new();
    let smallest = args.n.iter().copied().min().unwrap_or(0);
    let largest = args.n.iter().copied().max().unwrap_or(0);
    let mut steady_done = false;
    let steady_flags = vec!["--resync-interval".to_owned(), format!("{}s", args.steady_resync_secs)];
    for &n in &args.n {
        if !args.skip_limit {
            runs.push(bench.limit(n).await?);
        }
        let flags: &[String] = if n == largest && args.steady_secs > 0 {
            &steady_flags
        } else {
            &[]
        };
        let (run, op) = bench
            .operator_with(&format!("operator-{n}"), n, args.rps, None, flags)
            .await?;
        runs.push(run);
        // The steady window follows the largest N: idle cost with the most objects Ready.
        if n == largest && !steady_done && args.steady_secs > 0 {
            runs.push(bench.steady(n, op).await?);
            steady_done = true;
        } else {
            op.stop().await;
        }
        // The default rate limit on the smallest N only (10 requests/s is slow by design).
        if args.default_rps && n == smallest {
            let (run, op) = bench.operator(&format!("operator-{n}-rps10"), n, 10, None).await?;
            op.stop().await;
            runs.push(run);
        }
    }
    if args.realistic_n > 0 {
        let saved = bench.emulator_get("/_emulator/config").await?;
        let mut slow = saved.clone();
        slow["operation_delay_ms"] = json!(args.realistic_operation_delay_ms);
        slow["run_delay_ms"] = json!(args.realistic_run_delay_ms);
        bench.emulator_put("/_emulator/config", &slow).await?;
        let poll = Some(("5s", "15s"));
        let (one, op) = bench.operator("realistic-1", 1, args.rps, poll).await?;
        op.stop().await;
        let (many, op) = bench
            .operator(
                &format!("realistic-{}", args.realistic_n),
                args.realistic_n,
                args.rps,
                poll,
            )
            .await?;
        op.stop().await;
        bench.emulator_put("/_emulator/config", &saved).await?;
        runs.push(one);
        runs.push(many);
    }

    if args.restart_n > 0 {
        runs.push(bench.restart(args.restart_n).await?);
    }
    if args.activations_n > 0 {
        runs.push(
            bench
                .activations(args.activations_n, args.activation_flows.max(1))
                .await?,
        );
    }
    let peer: Option<Value> = match &args.peer_json {
        Some(p) => Some(serde_json::from_str(&std::fs::read_to_string(p)?)?),
        None => None,
    };
    print_table(&runs, &args);
    if let Some(p) = &peer {
        println!(
            "peer (sequential aepp-style script, realistic latency): {} audiences timed, {}s per audience; \
             N={} EXTRAPOLATED, not run: {}s",
            p["k"], p["secs_per_audience"], p["n"], p["extrapolated_secs_for_n"]
        );
    }
    let stamp = started.strftime("%Y%m%dT%H%M%SZ").to_string();
    let result = json!({
        "started": started.to_string(),
        "writes_per_object_in_limit": WRITES_PER_OBJECT,
        "machine": machine(),
        "args": {
            "n": args.n, "client_concurrency": args.client_concurrency, "concurrency": args.concurrency,
            "rps": args.rps, "steady_secs": args.steady_secs, "realistic_n": args.realistic_n,
            "realistic_operation_delay_ms": args.realistic_operation_delay_ms,
            "realistic_run_delay_ms": args.realistic_run_delay_ms,
        },
        "runs": runs.iter().map(Run::json).collect::<Vec<_>>(),
        "peer": peer,
    });
    let table = markdown(&runs, peer.as_ref(), &args, &stamp);
    std::fs::write(args.out_dir.join(format!("{stamp}.md")), &table)?;
    if let Some(doc) = &args.doc {
        let text = std::fs::read_to_string(doc)?;
        let updated = between_markers(&text, &table).with_context(|| doc.display().to_string())?;
        std::fs::write(doc, updated)?;
        println!("updated the table in {}", doc.display());
    }
    let json_path = args.out_dir.join(format!("{stamp}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)?;
    let svg_path = args.out_dir.join(format!("{stamp}.svg"));
    std::fs::write(&svg_path, chart(&runs))?;
    if let Some(svg) = scaling_chart(&runs) {
        std::fs::write(args.out_dir.join(format!("{stamp}-scaling.svg")), svg)?;
    }
    println!("\nwrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

/// The operator process of one scenario.
struct Operator {
    child: tokio::process::Child,
    pid: u32,
}

impl Operator {
    fn rss_mib(&self) -> Option<f64> {
        bench::peak_rss_mib(self.pid)
    }

    fn cpu_secs(&self) -> Option<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // Fields after the command (which may hold spaces) start at field 3; utime/stime are 14/15.
        let rest = &s[s.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / clk_tck())
    }

    async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .arg(self.pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
    });
    json!({"cpus": cpus, "cpu_model": model})
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Per-object rates from two counter snapshots.
fn per_object(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>, n: usize) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| (k.clone(), round2(d / n as f64)))
        })
        .collect()
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

impl Bench {
    fn api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), ns, &self.ar)
    }

    fn object(&self, ns: &str, tag: &str, i: usize) -> anyhow::Result<DynamicObject> {
        let mut v = self.sample.clone();
        v["metadata"] = json!({"name": format!("bench-{i}"), "namespace": ns});
        // Audience names are unique per sandbox in AEP: one set per scenario.
        v["spec"]["name"] = json!(format!("Bench {tag} {} {i}", self.tag));
        Ok(serde_json::from_value(v)?)
    }

    async fn namespace(&self, ns: &str) -> anyhow::Result<()> {
        bench::namespace_with_credentials(&self.client, ns).await
    }

    async fn emulator_get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.args.emulator_url.trim_end_matches('/'));
        Ok(self.http.get(url).send().await?.error_for_status()?.json().await?)
    }

    async fn emulator_put(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let url = format!("{}{path}", self.args.emulator_url.trim_end_matches('/'));
        self.http.put(url).json(body).send().await?.error_for_status()?;
        Ok(())
    }

    /// AEP requests received per operation (`/_emulator/stats` `received`).
    async fn aep_counts(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let stats = self.emulator_get("/_emulator/stats").await?;
        let mut out = BTreeMap::new();
        if let Some(m) = stats["received"].as_object() {
            for (k, v) in m {
                out.insert(k.clone(), v.as_f64().unwrap_or(0.0));
            }
        }
        Ok(out)
    }

    /// kube-apiserver's own `apiserver_request_total`, summed by `VERB resource[/subresource]`.
    async fn kube_counts(&self) -> anyhow::Result<BTreeMap<String, f64>> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.client.request_text(req).await?;
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
            let Some((labels, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let label = |name: &str| {
                let key = format!("{name}=\"");
                labels.find(&key).map(|i| {
                    let rest = &labels[i + key.len()..];
                    rest[..rest.find('"').unwrap_or(0)].to_owned()
                })
            };
            let (Some(verb), Some(resource)) = (label("verb"), label("resource")) else {
                continue;
            };
            let sub = label("subresource").unwrap_or_default();
            let key = if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            };
            *out.entry(key).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        Ok(out)
    }

    /// The floor: create + the operator's writes per object, with a plain concurrent client.
    async fn limit(&self, n: usize) -> anyhow::Result<Run> {
        let ns = format!("bench-limit-{n}-{}", self.tag);
        self.namespace(&ns).await?;
        let api = self.api(&ns);
        let objs = (0..n)
            .map(|i| self.object(&ns, "limit", i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let kube_before = self.kube_counts().await?;
        let sem = Arc::new(Semaphore::new(self.args.client_concurrency));
        let t0 = Instant::now();
        let tasks = objs.into_iter().enumerate().map(|(i, obj)| {
            let api = api.clone();
            let sem = sem.clone();
            tokio::spawn(async move {
                let _permit = sem.acquire_owned().await?;
                limit_object(&api, &obj, i).await?;
                anyhow::Ok(t0.elapsed().as_secs_f64())
            })
        });
        let mut done = Vec::with_capacity(n);
        for t in futures::future::join_all(tasks).await {
            done.push(t??);
        }
        let wall = t0.elapsed().as_secs_f64();
        let kube_after = self.kube_counts().await?;
        done.sort_by(f64::total_cmp);
        eprintln!("bench: limit N={n}: {wall:.1}s");
        Ok(Run {
            name: format!("limit-{n}"),
            n,
            wall_secs: wall,
            p50_secs: quantile(&done, 0.5),
            p99_secs: quantile(&done, 0.99),
            ready_at: done,
            kube_per_object: per_object(&kube_before, &kube_after, n),
            ..Run::default()
        })
    }

    /// Starts the operator on a fresh namespace, creates N objects, waits until all are Ready.
    async fn operator(
        &self,
        name: &str,
        n: usize,
        rps: u32,
        poll: Option<(&str, &str)>,
    ) -> anyhow::Result<(Run, Operator)> {
        self.operator_with(name, n, rps, poll, &[]).await
    }

    /// Starts the operator process for namespace `ns`.
    fn spawn(&self, name: &str, ns: &str, rps: u32, poll: (&str, &str), extra: &[String]) -> anyhow::Result<Operator> {
        let (op_poll, run_poll) = poll;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.args.work_dir.join(format!("{name}.log")))?;
        let mut cmd = if self.args.nice {
            let mut c = tokio::process::Command::new("nice");
            c.args(["-n", "19"]).arg(&self.args.controller);
            c
        } else {
            tokio::process::Command::new(&self.args.controller)
        };
        cmd.arg("run")
            .arg("--kubeconfig")
            .arg(&self.args.operator_kubeconfig)
            .args(["--namespace", ns, "--metrics-addr", "127.0.0.1:0"])
            .args([
                "--aep-platform-url",
                &self.args.emulator_url,
                "--aep-ims-url",
                &self.args.emulator_url,
            ])
            .args(["--concurrency", &self.args.concurrency.to_string()])
            .args(["--aep-requests-per-second", &rps.to_string()])
            // One sandbox, thousands of runs: the emulator's cap is lifted, so is the operator's.
            .args(["--max-runs-per-sandbox-per-day", "100000000"])
            .args(["--operation-poll-interval", op_poll, "--run-poll-interval", run_poll])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.args.controller.display()))?;
        let pid = child.id().context("operator pid")?;
        Ok(Operator { child, pid })
    }

    async fn operator_with(
        &self,
        name: &str,
        n: usize,
        rps: u32,
        poll: Option<(&str, &str)>,
        extra: &[String],
    ) -> anyhow::Result<(Run, Operator)> {
        let ns = format!("bench-{name}-{}", self.tag);
        self.namespace(&ns).await?;
        let api = self.api(&ns);
        let (op_poll, run_poll) = poll.unwrap_or(("200ms", "200ms"));
        let mut op = self.spawn(name, &ns, rps, (op_poll, run_poll), extra)?;
        // Let it start its watches before the objects arrive (an operator already running).
        tokio::time::sleep(Duration::from_secs(2)).await;

        let objs = (0..n)
            .map(|i| self.object(&ns, name, i))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let aep_before = self.aep_counts().await?;
        let kube_before = self.kube_counts().await?;
        let cpu_before = op.cpu_secs().unwrap_or(0.0);

        let (wall, latency, ready_at) = create_and_wait(name, &api, objs, &mut op, &self.args).await?;
        let aep_after = self.aep_counts().await?;
        let kube_after = self.kube_counts().await?;
        let cpu = op.cpu_secs().map(|c| c - cpu_before);
        let mut extra = serde_json::Map::new();
        extra.insert("rps".into(), json!(rps));
        extra.insert("rss_mib_at_ready".into(), json!(bench::rss_mib(op.pid).map(round2)));
        if let Some((anon, file)) = bench::rss_split_mib(op.pid) {
            extra.insert("rss_anon_mib_at_ready".into(), json!(round2(anon)));
            extra.insert("rss_file_mib_at_ready".into(), json!(round2(file)));
        }
        extra.insert("operation_poll_interval".into(), json!(op_poll));
        extra.insert("run_poll_interval".into(), json!(run_poll));
        extra.insert(
            "note".into(),
            json!("kube requests include the bench's own N creates and one watch; latency is create → Ready seen"),
        );
        eprintln!("bench: {name}: {wall:.1}s");
        Ok((
            Run {
                name: name.to_owned(),
                n,
                wall_secs: wall,
                p50_secs: quantile(&latency, 0.5),
                p99_secs: quantile(&latency, 0.99),
                ready_at,
                aep_per_object: per_object(&aep_before, &aep_after, n),
                kube_per_object: per_object(&kube_before, &kube_after, n),
                peak_rss_mib: op.rss_mib(),
                cpu_secs: cpu,
                extra,
            },
            op,
        ))
    }

    /// With N Ready and nothing changing: requests and CPU over a fixed window.
    async fn steady(&self, n: usize, op: Operator) -> anyhow::Result<Run> {
        let secs = self.args.steady_secs;
        let aep_before = self.aep_counts().await?;
        let kube_before = self.kube_counts().await?;
        let cpu_before = op.cpu_secs().unwrap_or(0.0);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let aep_after = self.aep_counts().await?;
        let kube_after = self.kube_counts().await?;
        let cpu = op.cpu_secs().map(|c| c - cpu_before);
        let per_min = 60.0 / secs as f64;
        let rate = |b: &BTreeMap<String, f64>, a: &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
            a.iter()
                .filter_map(|(k, v)| {
                    let d = v - b.get(k).copied().unwrap_or(0.0);
                    (d > 0.0).then(|| (k.clone(), round2(d * per_min)))
                })
                .collect()
        };
        let mut extra = serde_json::Map::new();
        extra.insert("window_secs".into(), json!(secs));
        extra.insert("resync_interval_secs".into(), json!(self.args.steady_resync_secs));
        extra.insert("rss_mib_at_end".into(), json!(bench::rss_mib(op.pid).map(round2)));
        let aep_total: f64 = aep_after.values().sum::<f64>() - aep_before.values().sum::<f64>();
        let per_object_per_minute = round4(aep_total * per_min / n.max(1) as f64);
        eprintln!(
            "bench: steady-{n}: {secs}s window, drift interval {}s: {per_object_per_minute} AEP requests per object per minute",
            self.args.steady_resync_secs
        );
        extra.insert(
            "aep_requests_per_object_per_minute".into(),
            json!(per_object_per_minute),
        );
        extra.insert("aep_requests_per_minute".into(), json!(rate(&aep_before, &aep_after)));
        extra.insert(
            "kube_requests_per_minute".into(),
            json!(rate(&kube_before, &kube_after)),
        );
        extra.insert("cpu_secs_per_minute".into(), json!(cpu.map(|c| round2(c * per_min))));
        let rss = op.rss_mib();
        op.stop().await;
        Ok(Run {
            name: format!("steady-{n}"),
            n,
            wall_secs: secs as f64,
            aep_per_object: per_object(&aep_before, &aep_after, n),
            kube_per_object: per_object(&kube_before, &kube_after, n),
            peak_rss_mib: rss,
            cpu_secs: cpu,
            extra,
            ..Run::default()
        })
    }
}

impl Bench {
    /// N Ready objects with a short drift interval: AEP requests in each window of one interval
    /// before a SIGKILL of the operator and in the first one after a new operator starts (the
    /// downtime included), and what the restart changed (creates, runs, PATCHes).
    async fn restart(&self, n: usize) -> anyhow::Result<Run> {
        let secs = self.args.restart_window_secs;
        let name = format!("restart-{n}");
        let extra = vec!["--resync-interval".to_owned(), format!("{secs}s")];
        let (_, op) = self.operator_with(&name, n, self.args.rps, None, &extra).await?;
        let ns = format!("bench-{name}-{}", self.tag);
        let api = self.api(&ns);
        // Every object has its first drift check recorded.
        let deadline = Instant::now() + Duration::from_secs(self.args.timeout_secs);
        loop {
            let list = api.list(&Default::default()).await?;
            let scheduled = list
                .items
                .iter()
                .filter(|o| !o.data["status"]["nextDriftCheck"].is_null())
                .count();
            if scheduled >= n {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name}: only {scheduled}/{n} objects have a drift check scheduled");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let total = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
        let mut windows = Vec::new();
        for _ in 0..3 {
            let before = self.aep_counts().await?;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            windows.push(total(&self.aep_counts().await?) - total(&before));
        }
        let writes_before = self.aep_counts().await?;
        // The window after is as long as those before, from the same kind of start (the kill and
        // the new operator's start are inside it).
        let window_start = Instant::now();
        let rss = op.rss_mib();
        // SIGKILL, then a new operator at once.
        let _ = tokio::process::Command::new("kill")
            .args(["-9", &op.pid.to_string()])
            .status()
            .await;
        drop(op);
        let restarted = self.spawn(&name, &ns, self.args.rps, ("200ms", "200ms"), &extra)?;
        tokio::time::sleep((window_start + Duration::from_secs(secs)).saturating_duration_since(Instant::now())).await;
        let after_counts = self.aep_counts().await?;
        let after = total(&after_counts) - total(&writes_before);
        let changed: BTreeMap<String, f64> = ["create_audience", "start_run", "patch_audience", "delete_audience"]
            .iter()
            .map(|k| {
                let d = after_counts.get(*k).copied().unwrap_or(0.0) - writes_before.get(*k).copied().unwrap_or(0.0);
                ((*k).to_owned(), d)
            })
            .collect();
        restarted.stop().await;
        let busiest = windows.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "bench: {name}: AEP requests per {secs}s window before the restart {windows:?}, after {after}; changed {changed:?}"
        );
        let mut extra = serde_json::Map::new();
        extra.insert("window_secs".into(), json!(secs));
        extra.insert("aep_requests_per_window_before".into(), json!(windows));
        extra.insert("aep_requests_first_window_after".into(), json!(after));
        extra.insert("busiest_window_before".into(), json!(busiest));
        extra.insert("writes_after_restart".into(), json!(changed));
        Ok(Run {
            name,
            n,
            wall_secs: secs as f64,
            peak_rss_mib: rss,
            extra,
            ..Run::default()
        })
    }
}

/// Creates `objs` through `api` and waits until every one shows `Ready=True`: (wall seconds from
/// the first create to the last Ready, create → Ready latencies sorted, Ready times sorted).
async fn create_and_wait(
    name: &str,
    api: &Api<DynamicObject>,
    objs: Vec<DynamicObject>,
    op: &mut Operator,
    args: &Args,
) -> anyhow::Result<(f64, Vec<f64>, Vec<f64>)> {
    let n = objs.len();
    // Watch for Ready before creating anything, so no transition is missed.
    let ready: Arc<std::sync::Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let watch = {
        let ready = ready.clone();
        let api = api.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Ok(Some(obj)) = stream.try_next().await {
                let is_ready = obj.data["status"]["conditions"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
                if is_ready {
                    let name = obj.metadata.name.clone().unwrap_or_default();
                    ready.lock().expect("lock").entry(name).or_insert_with(Instant::now);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    let created: BTreeMap<String, Instant> = futures::stream::iter(objs)
        .map(|obj| {
            let api = api.clone();
            async move {
                let name = obj.metadata.name.clone().unwrap_or_default();
                let at = Instant::now();
                api.create(&PostParams::default(), &obj).await?;
                anyhow::Ok((name, at))
            }
        })
        .buffer_unordered(args.client_concurrency)
        .try_collect()
        .await?;
    let deadline = t0 + Duration::from_secs(args.timeout_secs);
    loop {
        let count = ready.lock().expect("lock").len();
        if count >= n {
            break;
        }
        if let Ok(Some(status)) = op.child.try_wait() {
            bail!("{name}: the operator exited ({status}) with {count}/{n} Ready; see its log in the work dir");
        }
        if Instant::now() > deadline {
            bail!("{name}: only {count}/{n} Ready after {}s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watch.abort();
    let ready = ready.lock().expect("lock").clone();
    let wall = ready
        .values()
        .map(|t| t.duration_since(t0).as_secs_f64())
        .fold(0.0, f64::max);
    let mut latency: Vec<f64> = ready
        .iter()
        .map(|(k, t)| t.duration_since(created[k]).as_secs_f64())
        .collect();
    latency.sort_by(f64::total_cmp);
    let mut ready_at: Vec<f64> = ready.values().map(|t| t.duration_since(t0).as_secs_f64()).collect();
    ready_at.sort_by(f64::total_cmp);
    Ok((wall, latency, ready_at))
}

impl Bench {
    /// N Ready ExternalAudiences, then N AudienceActivations of them spread over `flows`
    /// streaming dataflows, created at once: time until all are Ready, AEP and kube requests per
    /// activation, and what the dataflows hold at the end.
    async fn activations(&self, n: usize, flows: usize) -> anyhow::Result<Run> {
        let name = format!("activations-{n}");
        let extra_flags = vec!["--activation-poll-interval".to_owned(), "60s".to_owned()];
        let (_, mut op) = self.operator_with(&name, n, self.args.rps, None, &extra_flags).await?;
        let ns = format!("bench-{name}-{}", self.tag);
        let mut flow_ids = Vec::new();
        for f in 0..flows {
            let url = format!("{}/_emulator/flows", self.args.emulator_url.trim_end_matches('/'));
            let created: Value = self
                .http
                .post(url)
                .json(&json!({"name": format!("Bench stream {f}"), "kind": "streaming"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            flow_ids.push(created["id"].as_str().context("flow id")?.to_owned());
        }
        let gvk = GroupVersionKind::gvk("aep.audience-operator.dev", "v1alpha1", "AudienceActivation");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "audienceactivations");
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, &ar);
        let objs = (0..n)
            .map(|i| {
                let v = json!({
                    "apiVersion": "aep.audience-operator.dev/v1alpha1",
                    "kind": "AudienceActivation",
                    "metadata": {"name": format!("act-{i}"), "namespace": ns},
                    "spec": {"audienceRef": {"name": format!("bench-{i}")}, "dataflowId": flow_ids[i % flows]},
                });
                Ok(serde_json::from_value(v)?)
            })
            .collect::<anyhow::Result<Vec<DynamicObject>>>()?;
        let aep_before = self.aep_counts().await?;
        let kube_before = self.kube_counts().await?;
        let cpu_before = op.cpu_secs().unwrap_or(0.0);
        let (wall, latency, ready_at) = create_and_wait(&name, &api, objs, &mut op, &self.args).await?;
        let aep_after = self.aep_counts().await?;
        let kube_after = self.kube_counts().await?;
        let cpu = op.cpu_secs().map(|c| c - cpu_before);
        let rss = op.rss_mib();
        op.stop().await;
        // What the dataflows hold: each audience exactly once.
        let state = self.emulator_get("/_emulator/state").await?;
        let mut selectors = Vec::new();
        for id in &flow_ids {
            let flow = state["flows"]
                .as_array()
                .and_then(|fs| fs.iter().find(|f| f["flow_id"] == json!(id)))
                .context("flow in the emulator's state")?;
            let ids: Vec<&str> = flow["selectors"]
                .as_array()
                .map(|s| s.iter().filter_map(|s| s["value"]["id"].as_str()).collect())
                .unwrap_or_default();
            let unique: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
            if unique.len() != ids.len() {
                bail!("{name}: flow {id} holds an audience twice");
            }
            selectors.push(ids.len());
        }
        if selectors.iter().sum::<usize>() != n {
            bail!("{name}: the flows hold {selectors:?} selectors, not {n}");
        }
        eprintln!(
            "bench: {name}: {wall:.1}s over {flows} dataflows; selectors per dataflow {selectors:?}; AEP per activation {:?}",
            per_object(&aep_before, &aep_after, n)
        );
        let mut extra = serde_json::Map::new();
        extra.insert("dataflows".into(), json!(flows));
        extra.insert("selectors_per_dataflow".into(), json!(selectors));
        extra.insert(
            "note".into(),
            json!("after N Ready ExternalAudiences; AEP and kube requests per activation, create -> Ready"),
        );
        Ok(Run {
            name,
            n,
            wall_secs: wall,
            p50_secs: quantile(&latency, 0.5),
            p99_secs: quantile(&latency, 0.99),
            ready_at,
            aep_per_object: per_object(&aep_before, &aep_after, n),
            kube_per_object: per_object(&kube_before, &kube_after, n),
            peak_rss_mib: rss,
            cpu_secs: cpu,
            extra,
        })
    }
}

/// Create one object, then the operator's writes: finalizer, six status writes.
async fn limit_object(api: &Api<DynamicObject>, obj: &DynamicObject, i: usize) -> anyhow::Result<()> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.create(&PostParams::default(), obj).await?;
    let pp = PatchParams::default();
    api.patch(
        &name,
        &pp,
        &Patch::Merge(json!({"metadata": {"finalizers": [FINALIZER]}})),
    )
    .await?;
    let now = || jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let cond = |status: &str, reason: &str| {
        json!([{"type": "Ready", "status": status, "reason": reason, "message": "", "observedGeneration": 1, "lastTransitionTime": now()},
               {"type": "Reconciling", "status": if status == "True" {"False"} else {"True"}, "reason": reason, "message": "", "observedGeneration": 1, "lastTransitionTime": now()}])
    };
    let op_id = format!("00000000-0000-4000-8000-{i:012}");
    let aud_id = format!("10000000-0000-4000-8000-{i:012}");
    let run_id = format!("20000000-0000-4000-8000-{i:012}");
    let pending = json!({"since": now(), "generation": 1, "specHash": "0123456789abcdef"});
    let writes = [
        json!({"observedGeneration": 1, "createPendingSince": now(), "customAudienceId": format!("cid-{i}"), "conditions": cond("False", "Creating")}),
        json!({"createPendingSince": null, "operationId": op_id}),
        json!({"operationId": null, "audienceId": aud_id, "conditions": cond("False", "Ingesting")}),
        json!({"runPending": pending}),
        json!({"runPending": null, "lastRun": {"runId": run_id, "status": "Processing", "generation": 1, "startTime": now()}}),
        json!({"lastRun": {"runId": run_id, "status": "Success", "generation": 1, "startTime": now(), "endTime": now()},
               "ingestedSpecHash": "0123456789abcdef", "conditions": cond("True", "Ready")}),
    ];
    let record = |ingested: Option<&str>| {
        json!({"metadata": {"annotations": {"aep.audience-operator.dev/ownership": json!({
            "v": 1, "audienceId": aud_id, "orgId": "ORG", "platformUrl": "http://aep/", "sandbox": "prod",
            "claimedBy": "uid", "claimedAt": now(), "ingestedSpecHash": ingested}).to_string()}}})
    };
    for (k, status) in writes.into_iter().enumerate() {
        api.patch_status(&name, &pp, &Patch::Merge(json!({"status": status})))
            .await?;
        // The ownership record follows the status that makes it true.
        match k {
            2 => api.patch(&name, &pp, &Patch::Merge(record(None))).await.map(|_| ())?,
            5 => api
                .patch(&name, &pp, &Patch::Merge(record(Some("0123456789abcdef"))))
                .await
                .map(|_| ())?,
            _ => {}
        }
    }
    Ok(())
}

fn fmt_map(m: &BTreeMap<String, f64>, top: usize) -> String {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1));
    v.into_iter()
        .take(top)
        .map(|(k, x)| format!("{k} {x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(runs: &[Run], args: &Args) {
    println!(
        "\n{:<22} {:>6} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "scenario", "N", "wall s", "obj/s", "p50 s", "p99 s", "AEP/obj", "kube/obj", "RSS MiB"
    );
    for r in runs {
        let aep: f64 = r.aep_per_object.values().sum::<f64>() + 0.0;
        let kube: f64 = r.kube_per_object.values().sum::<f64>() + 0.0;
        let steady = r.name.starts_with("steady");
        println!(
            "{:<22} {:>6} {:>9.1} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}",
            r.name,
            r.n,
            r.wall_secs,
            if steady {
                "-".to_owned()
            } else {
                format!("{:.1}", r.n as f64 / r.wall_secs.max(1e-9))
            },
            r.p50_secs,
            r.p99_secs,
            aep,
            kube,
            r.peak_rss_mib.map_or("-".to_owned(), |m| format!("{m:.1}")),
        );
    }
    println!("\nper scenario detail (requests per object; steady: per minute):");
    for r in runs {
        let cpu = r.cpu_secs.map_or("-".to_owned(), |c| format!("{c:.2}"));
        if r.name.starts_with("steady") {
            let get = |k: &str| r.extra.get(k).and_then(Value::as_object).cloned().unwrap_or_default();
            let m = |o: serde_json::Map<String, Value>| -> BTreeMap<String, f64> {
                o.into_iter().map(|(k, v)| (k, v.as_f64().unwrap_or(0.0))).collect()
            };
            println!(
                "  {}: {}s window, operator CPU {cpu}s; AEP/min: {{{}}}; kube/min: {{{}}}",
                r.name,
                r.wall_secs,
                fmt_map(&m(get("aep_requests_per_minute")), 8),
                fmt_map(&m(get("kube_requests_per_minute")), 8)
            );
        } else {
            println!(
                "  {}: CPU {cpu}s; AEP: {{{}}}; kube: {{{}}}",
                r.name,
                fmt_map(&r.aep_per_object, 8),
                fmt_map(&r.kube_per_object, 8)
            );
        }
    }
    println!(
        "\nlimit = create + {WRITES_PER_OBJECT} writes per object (finalizer + 6 status writes + 2 ownership record writes), client concurrency {}; \
         operator --concurrency {} --aep-requests-per-second {} (poll 200ms; realistic: defaults 5s/15s)",
        args.client_concurrency, args.concurrency, args.rps
    );
}

/// `text` with what lies between `<!-- bench:begin -->` and `<!-- bench:end -->` replaced by
/// `table`.
fn between_markers(text: &str, table: &str) -> anyhow::Result<String> {
    let (begin, end) = ("<!-- bench:begin -->\n", "<!-- bench:end -->");
    let (Some(b), Some(e)) = (text.find(begin), text.find(end)) else {
        bail!("no {begin:?} … {end:?} markers");
    };
    if e < b {
        bail!("{end:?} comes before {begin:?}");
    }
    Ok(format!("{}{begin}{table}{}", &text[..b], &text[e..]))
}

/// The table of docs/performance.md: every scenario of this run, with the ratios the targets are
/// about.
fn markdown(runs: &[Run], peer: Option<&Value>, args: &Args, stamp: &str) -> String {
    let limit_of = |n: usize| {
        runs.iter()
            .find(|r| r.name == format!("limit-{n}"))
            .map(|r| r.wall_secs)
    };
    let one = runs.iter().find(|r| r.name == "realistic-1").map(|r| r.wall_secs);
    let sum = |m: &BTreeMap<String, f64>| m.values().sum::<f64>();
    let mut out = format!(
        "Run `{stamp}` (`bench/results/{stamp}.json`), command: `{}`; {} CPUs.\n\n\
         | scenario | N | time to all Ready | vs | p50 | p99 | AEP req/object | kube req/object | peak RSS | CPU |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n",
        args.command,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    for r in runs {
        let rss = r.peak_rss_mib.map_or("-".to_owned(), |m| format!("{m:.1} MiB"));
        let cpu = r.cpu_secs.map_or("-".to_owned(), |c| format!("{c:.2} s"));
        if r.name.starts_with("steady") {
            let per_min = |k: &str| {
                r.extra
                    .get(k)
                    .and_then(Value::as_object)
                    .map_or(0.0, |o| o.values().filter_map(Value::as_f64).sum::<f64>())
            };
            let per_object = r
                .extra
                .get("aep_requests_per_object_per_minute")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let interval = r.extra.get("resync_interval_secs").and_then(Value::as_u64).unwrap_or(0);
            let rss = match r.extra.get("rss_mib_at_end").and_then(Value::as_f64) {
                Some(now) => format!("{rss} (now {now:.1} MiB)"),
                None => rss,
            };
            out.push_str(&format!(
                "| steady state, {}s window, drift interval {interval}s | {} | - | - | - | - | {:.0} / min ({per_object:.3} / object / min) | {:.0} / min (all clients) | {rss} | {cpu} |\n",
                r.wall_secs,
                r.n,
                per_min("aep_requests_per_minute").abs(),
                per_min("kube_requests_per_minute").abs(),
            ));
            continue;
        }
        if r.name.starts_with("restart") {
            let windows: Vec<String> = r
                .extra
                .get("aep_requests_per_window_before")
                .and_then(Value::as_array)
                .map(|w| w.iter().filter_map(Value::as_f64).map(|x| format!("{x:.0}")).collect())
                .unwrap_or_default();
            let after = r
                .extra
                .get("aep_requests_first_window_after")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            let changed = r
                .extra
                .get("writes_after_restart")
                .and_then(Value::as_object)
                .map_or(0.0, |o| o.values().filter_map(Value::as_f64).sum::<f64>());
            out.push_str(&format!(
                "| restart (SIGKILL) with N Ready, drift interval {}s | {} | - | AEP requests per {}s window: before {}, first after the restart {after:.0} | - | - | creates, runs, PATCHes after the restart: {changed:.0} | - | {rss} | - |\n",
                r.wall_secs,
                r.n,
                r.wall_secs,
                windows.join(", "),
            ));
            continue;
        }
        let (label, vs) = if let Some(rest) = r.name.strip_prefix("limit-") {
            (
                format!("limit: create + {WRITES_PER_OBJECT} writes, no logic ({rest})"),
                "floor".to_owned(),
            )
        } else if r.name.starts_with("activations") {
            let flows = r.extra.get("dataflows").and_then(Value::as_u64).unwrap_or(0);
            (
                format!("AudienceActivations into {flows} dataflows (N audiences Ready first)"),
                "-".to_owned(),
            )
        } else if r.name.starts_with("realistic") {
            let vs = match (r.n, one) {
                (1, _) => "one audience's own latency".to_owned(),
                (_, Some(o)) => format!("{:.2} × one audience", r.wall_secs / o),
                _ => "-".to_owned(),
            };
            ("operator, realistic AEP latency".to_owned(), vs)
        } else {
            let vs = limit_of(r.n).map_or("-".to_owned(), |l| format!("{:.2} × the limit", r.wall_secs / l));
            if r.name.ends_with("rps10") {
                (
                    "operator, zero-latency AEP, default 10 req/s".to_owned(),
                    "the rate limit binds".to_owned(),
                )
            } else {
                ("operator, zero-latency AEP".to_owned(), vs)
            }
        };
        let aep = sum(&r.aep_per_object);
        out.push_str(&format!(
            "| {label} | {} | {:.1} s | {vs} | {:.1} s | {:.1} s | {} | {:.1} | {rss} | {cpu} |\n",
            r.n,
            r.wall_secs,
            r.p50_secs,
            r.p99_secs,
            if aep > 0.0 { format!("{aep:.2}") } else { "-".to_owned() },
            sum(&r.kube_per_object),
        ));
    }
    if let Some(p) = peer {
        let per = p["secs_per_audience"].as_f64().unwrap_or(0.0);
        let n = p["n"].as_u64().unwrap_or(0);
        let realistic = runs
            .iter()
            .find(|r| r.name.starts_with("realistic") && r.n as u64 == n)
            .map(|r| r.wall_secs);
        out.push_str(&format!(
            "| peer: sequential aepp-style script, realistic latency | {} timed | {per:.1} s per audience | - | | | {} | - | - | - |\n",
            p["k"],
            p["requests_per_audience"]
                .as_object()
                .map_or(0.0, |o| o.values().filter_map(Value::as_f64).sum::<f64>())
        ));
        out.push_str(&format!(
            "| peer **extrapolated** to N (not run) | {n} | ≈ {:.0} s ({:.1} h) | {} | | | | | | |\n",
            per * n as f64,
            per * n as f64 / 3600.0,
            realistic.map_or("-".to_owned(), |w| format!(
                "{:.0} × the operator's realistic run",
                per * n as f64 / w
            )),
        ));
    }
    out
}

/// Objects Ready over time, one line per scenario (limit and zero-latency operator runs).
/// Ratio to the limit and peak RSS of the operator against N (log scale), one point per size;
/// `None` with fewer than two sizes.
fn scaling_chart(runs: &[Run]) -> Option<String> {
    let points: Vec<(f64, f64, f64)> = runs
        .iter()
        .filter(|r| r.name == format!("operator-{}", r.n))
        .filter_map(|r| {
            let limit = runs.iter().find(|l| l.name == format!("limit-{}", r.n))?.wall_secs;
            Some((r.n as f64, r.wall_secs / limit, r.peak_rss_mib?))
        })
        .collect();
    if points.len() < 2 {
        return None;
    }
    let (w, h, ml, mr, mt, mb) = (720.0, 320.0, 60.0, 70.0, 20.0, 45.0);
    let (nmin, nmax) = points
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ratio_max = points.iter().map(|p| p.1).fold(2.0f64, f64::max).ceil();
    let rss_max = (points.iter().map(|p| p.2).fold(64.0f64, f64::max) / 32.0).ceil() * 32.0;
    let span = (nmax.log10() - nmin.log10()).max(1e-9);
    let x = |n: f64| ml + (n.log10() - nmin.log10()) / span * (w - ml - mr);
    let y = |v: f64, max: f64| h - mb - v / max * (h - mt - mb);
    let mut s = svg_open(w, h);
    for k in 0..=4 {
        let r = ratio_max * k as f64 / 4.0;
        let m = rss_max * k as f64 / 4.0;
        s += &format!(
            "<line x1=\"{ml}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{r:.1}×</text>\
             <text x=\"{rx:.1}\" y=\"{ty:.1}\" fill=\"#d62728\">{m:.0} MiB</text>\n",
            y = y(r, ratio_max),
            x2 = w - mr,
            tx = ml - 6.0,
            ty = y(r, ratio_max) + 4.0,
            rx = w - mr + 6.0,
        );
    }
    for &(n, _, _) in &points {
        s += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n:.0}</text>\n",
            x(n),
            h - mb + 16.0
        );
    }
    type Point = (f64, f64, f64);
    let line = |f: &dyn Fn(&Point) -> (f64, f64)| {
        points
            .iter()
            .map(|p| {
                let (px, py) = f(p);
                format!("{px:.1},{py:.1}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>\n",
        line(&|p| (x(p.0), y(p.1, ratio_max)))
    );
    s += &format!(
        "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"6 3\" points=\"{}\"/>\n",
        line(&|p| (x(p.0), y(p.2, rss_max)))
    );
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">objects (N, log scale); solid: time to all Ready ÷ the limit's; dashed: peak RSS</text>\n</svg>\n",
        (ml + w - mr) / 2.0,
        h - 8.0
    );
    Some(s)
}

fn chart(runs: &[Run]) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 360.0, 60.0, 160.0, 20.0, 45.0);
    let shown: Vec<&Run> = runs
        .iter()
        .filter(|r| r.name.starts_with("limit") || r.name.starts_with("operator"))
        .collect();
    let tmax = shown
        .iter()
        .flat_map(|r| r.ready_at.last().copied())
        .fold(1.0, f64::max);
    let nmax = shown.iter().map(|r| r.n).max().unwrap_or(1) as f64;
    let x = |t: f64| ml + (t / tmax) * (w - ml - mr);
    let y = |c: f64| h - mb - (c / nmax) * (h - mt - mb);
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];
    let mut s = svg_open(w, h);
    for k in 0..=5 {
        let t = tmax * k as f64 / 5.0;
        let c = nmax * k as f64 / 5.0;
        s += &format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0}</text>\n",
            x(t),
            y(0.0),
            x(t),
            y(nmax),
            x(t),
            h - mb + 16.0
        );
        s += &format!(
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{c:.0}</text>\n",
            x(0.0),
            y(c),
            x(tmax),
            y(c),
            ml - 6.0,
            y(c) + 4.0
        );
    }
    s += &format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">seconds since the first create</text>\n\
         <text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">objects Ready (limit: done)</text>\n",
        (ml + w - mr) / 2.0,
        h - 8.0,
        (mt + h - mb) / 2.0,
        (mt + h - mb) / 2.0
    );
    for (i, r) in shown.iter().enumerate() {
        let color = colors[i % colors.len()];
        let step = (r.ready_at.len() / 400).max(1);
        let mut pts = vec![format!("{:.1},{:.1}", x(0.0), y(0.0))];
        for (k, t) in r.ready_at.iter().enumerate() {
            if k % step == 0 || k + 1 == r.ready_at.len() {
                pts.push(format!("{:.1},{:.1}", x(*t), y((k + 1) as f64)));
            }
        }
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"{color}\">{} ({:.1}s)</text>\n",
            pts.join(" "),
            w - mr + 10.0,
            mt + 16.0 + 18.0 * i as f64,
            r.name,
            r.wall_secs
        );
    }
    s + "</svg>\n"
}

/// The opening of a chart: an SVG of `w` × `h` on a white background.
fn svg_open(w: f64, h: f64) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, n: usize, wall: f64) -> Run {
        Run {
            name: name.into(),
            n,
            wall_secs: wall,
            p50_secs: wall / 2.0,
            p99_secs: wall,
            aep_per_object: BTreeMap::from([("create_audience".to_owned(), 1.0), ("start_run".to_owned(), 1.0)]),
            kube_per_object: BTreeMap::from([("PATCH externalaudiences/status".to_owned(), 6.0)]),
            peak_rss_mib: Some(50.0),
            cpu_secs: Some(1.5),
            ..Run::default()
        }
    }

    #[test]
    fn the_performance_table_shows_the_ratios_and_replaces_only_its_own_section() {
        let args = Args::parse_from([
            "bench",
            "--kubeconfig",
            "k",
            "--operator-kubeconfig",
            "o",
            "--emulator-url",
            "u",
        ]);
        let runs = vec![
            run("limit-1000", 1000, 40.0),
            run("operator-1000", 1000, 50.0),
            run("realistic-1", 1, 20.0),
            run("realistic-1000", 1000, 60.0),
        ];
        let peer = json!({"k": 5, "secs_per_audience": 12.0, "n": 1000, "requests_per_audience": {"a": 16.0}});
        let table = markdown(&runs, Some(&peer), &args, "20261129T000000Z");
        assert!(
            table.contains("| operator, zero-latency AEP | 1000 | 50.0 s | 1.25 × the limit |"),
            "{table}"
        );
        assert!(table.contains("| 3.00 × one audience |"), "{table}");
        assert!(
            table.contains("≈ 12000 s (3.3 h) | 200 × the operator's realistic run"),
            "{table}"
        );
        let doc = "# T\nbefore\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\nafter\n";
        let updated = between_markers(doc, "new table\n").unwrap();
        assert_eq!(
            updated,
            "# T\nbefore\n<!-- bench:begin -->\nnew table\n<!-- bench:end -->\nafter\n"
        );
        assert!(between_markers("no markers", "x").is_err());
    }

    /// `make bench` writes its table into docs/performance.md (hack/bench.sh passes `--doc`), so
    /// that page must hold the markers, once each and in order, and `--readme` still parses.
    #[test]
    fn make_bench_writes_into_the_performance_page() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let page = std::fs::read_to_string(root.join("docs/performance.md")).expect("docs/performance.md");
        assert_eq!(page.matches("<!-- bench:begin -->\n").count(), 1, "one begin marker");
        assert_eq!(page.matches("<!-- bench:end -->").count(), 1, "one end marker");
        let updated = between_markers(&page, "new table\n").expect("markers in order");
        assert!(updated.contains("<!-- bench:begin -->\nnew table\n<!-- bench:end -->"));
        let script = std::fs::read_to_string(root.join("hack/bench.sh")).expect("hack/bench.sh");
        assert!(
            script.contains("--doc docs/performance.md"),
            "hack/bench.sh points at the page"
        );
        for flag in ["--doc", "--readme"] {
            let args = Args::parse_from([
                "bench",
                "--kubeconfig",
                "k",
                "--operator-kubeconfig",
                "o",
                "--emulator-url",
                "u",
                flag,
                "docs/performance.md",
            ]);
            assert_eq!(
                args.doc.as_deref(),
                Some(std::path::Path::new("docs/performance.md")),
                "{flag}"
            );
        }
    }
}
