//! The operator binary: `controller run` reconciles ExternalAudiences; `controller crd` prints
//! the CRD. Thin: configuration, telemetry, the /metrics + /healthz server, then the controller.

use std::sync::Arc;

use anyhow::Context as _;
use audience_operator::{
    api,
    config::RunConfig,
    controller,
    health::Health,
    leader::{self, LeaderConfig},
    metrics::Metrics,
    server, telemetry,
};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Kubernetes operator for Adobe Experience Platform external audiences"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller.
    Run(Box<RunConfig>),
    /// Print the ExternalAudience CRD as YAML.
    Crd,
    /// Print ExternalAudience manifests for audiences that exist in AEP (or set spec.audienceId
    /// in existing manifests with --attach-to). Reads only.
    Import(Box<audience_operator::import::ImportConfig>),
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?
        .block_on(async_main())
}

/// glibc gives each thread that meets contention its own malloc arena (up to 8 per core), and
/// memory freed in one arena is not reused by the others: with thousands of objects converging
/// on every worker thread, the peak resident memory grew by half for nothing (`make bench` at
/// 5,000 objects, see docs/performance.md). One arena, set before any thread starts: the
/// operator's two worker threads spend little time in the allocator (no CPU cost measured), and
/// one arena left 1 MiB less resident than two at 5,000 objects.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before the runtime starts
    // any thread, and M_ARENA_MAX takes any positive value.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// How often freed memory goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const RELEASE_FREED_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Hands the allocator's free pages back to the system, every [`RELEASE_FREED_EVERY`]. glibc
/// returns freed memory on its own only from the top of the heap; pages freed below live
/// allocations stay resident. While thousands of objects converge, every pass frees copies of
/// objects, answers and buffers between the long-lived cache entries, and those pages counted in
/// the operator's peak resident memory: releasing them each second lowered it by about 2 MiB at
/// 5,000 objects, for no measurable CPU (`make bench`, see docs/performance.md).
/// Only glibc has `malloc_trim`; elsewhere the task is not started.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
async fn release_freed_memory() {
    let mut tick = tokio::time::interval(RELEASE_FREED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim takes the allocator's own locks and only releases pages that hold
        // no allocation; it may be called from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

async fn async_main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Crd => {
            print!("{}", api::crd_yaml()?);
            Ok(())
        }
        Cmd::Run(cfg) => run(*cfg).await,
        Cmd::Import(cfg) => audience_operator::import::run(*cfg).await,
    }
}

/// SIGTERM (what Kubernetes sends a Pod) or SIGINT: stop gracefully (the controller finishes its
/// passes; a leader releases its Lease).
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot listen for SIGTERM; only SIGINT stops the process gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run(cfg: RunConfig) -> anyhow::Result<()> {
    telemetry::init(cfg.log_format);
    audience_operator::aep::install_crypto_provider();
    let kube_config = match &cfg.kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("reading {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = kube::Client::try_from(kube_config)?;
    controller::check_crd(&client, &controller::watch::Scope::of(&cfg.namespaces))
        .await
        .context("the ExternalAudience CRD does not answer; install it with `kubectl apply -k crds/`")?;

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(cfg.leader_elect));
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .with_context(|| format!("binding {}", cfg.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /metrics and health checks");
    let server = server::serve(listener, metrics.clone(), health.clone());
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(release_freed_memory());

    let work = async {
        if cfg.leader_elect {
            let leader = LeaderConfig {
                lease_name: cfg.leader_elect_lease_name.clone(),
                namespace: cfg.leader_elect_namespace.clone(),
                identity: cfg
                    .leader_elect_identity
                    .clone()
                    .unwrap_or_else(|| format!("audience-operator-{}", uuid::Uuid::new_v4().simple())),
                duration: cfg.leader_elect_lease_duration,
                grace: cfg.leader_elect_grace,
            };
            let shutdown = shutdown_signal();
            let fence = leader::Fence::closed();
            let ran = leader::run_as_leader(client.clone(), leader, &health, &fence, shutdown, || {
                tracing::info!("Starting ExternalAudience controller");
                controller::run(
                    cfg.clone(),
                    client.clone(),
                    metrics.clone(),
                    health.clone(),
                    fence.clone(),
                )
            })
            .await?;
            match ran {
                Some(result) => result.map_err(anyhow::Error::from),
                None => Ok(()),
            }
        } else {
            tracing::info!("Starting ExternalAudience controller");
            controller::run(
                cfg.clone(),
                client.clone(),
                metrics.clone(),
                health.clone(),
                leader::Fence::open(),
            )
            .await
            .map_err(anyhow::Error::from)
        }
    };
    // The process lives as long as both the health server and the controller do: a server that
    // stops (or fails) ends the process instead of leaving probes without an answer.
    tokio::select! {
        result = server => {
            result.context("the /metrics and health server stopped")?;
            anyhow::bail!("the /metrics and health server stopped");
        }
        result = work => result?,
    }
    tracing::info!("Controller stopped");
    Ok(())
}
