//! The operator binary: `controller run` reconciles ExternalAudiences; `controller crd` prints
//! the CRD. Thin: configuration, telemetry, the /metrics + /healthz server, then the controller.

use std::sync::Arc;

use anyhow::Context as _;
use audience_operator::{api, config::RunConfig, controller, metrics::Metrics, telemetry};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Crd => {
            print!("{}", api::crd_yaml()?);
            Ok(())
        }
        Cmd::Run(cfg) => run(*cfg).await,
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
    controller::check_crd(&client, cfg.namespace.as_deref()).await.context(
        "the ExternalAudience CRD does not answer; install it with `kubectl apply -f crds/externalaudience.yaml`",
    )?;

    let metrics = Arc::new(Metrics::default());
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(metrics.clone());
    let listener = tokio::net::TcpListener::bind(cfg.metrics_addr)
        .await
        .with_context(|| format!("binding {}", cfg.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "Serving /metrics and health checks");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    tracing::info!("Starting ExternalAudience controller");
    controller::run(cfg, client, metrics).await?;
    server.abort();
    tracing::info!("Controller stopped");
    Ok(())
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}
