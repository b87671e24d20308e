//! `envtest`: start or stop the local control plane from a shell (the demo and manual testing).
//!
//! ```text
//! envtest start --dir /tmp/ao-envtest   # prints `export KUBECONFIG=...` lines
//! envtest stop  --dir /tmp/ao-envtest
//! ```
use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use envtest::{self, ControlPlane};

#[derive(Parser)]
#[command(about = "Run the local etcd + kube-apiserver + kube-controller-manager control plane")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a detached control plane and print the environment to export.
    Start {
        /// Working directory (PKI, logs, kubeconfigs, pidfiles); recreated if it exists.
        #[arg(long, env = "ENVTEST_DIR", default_value = "/tmp/audience-operator-envtest")]
        dir: PathBuf,
        /// Namespace of the operator's ServiceAccount identity.
        #[arg(long, default_value = envtest::DEFAULT_OPERATOR_NAMESPACE)]
        operator_namespace: String,
        /// Name of the operator's ServiceAccount identity.
        #[arg(long, default_value = envtest::DEFAULT_OPERATOR_SERVICE_ACCOUNT)]
        operator_service_account: String,
        /// Do not start kube-controller-manager.
        #[arg(long)]
        no_controller_manager: bool,
    },
    /// Stop a detached control plane and remove its directory.
    Stop {
        #[arg(long, env = "ENVTEST_DIR", default_value = "/tmp/audience-operator-envtest")]
        dir: PathBuf,
    },
    /// Build (if needed) the binaries and print their directory.
    Bin,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Start {
            dir,
            operator_namespace,
            operator_service_account,
            no_controller_manager,
        } => {
            let mut cfg = envtest::Config::from_env()?;
            cfg.operator_namespace = operator_namespace;
            cfg.operator_service_account = operator_service_account;
            cfg.controller_manager = !no_controller_manager;
            let started = Instant::now();
            let cp = ControlPlane::start_detached(&cfg, &dir)
                .with_context(|| format!("starting the control plane in {}", dir.display()))?;
            eprintln!(
                "control plane ready at {} in {:.1}s",
                cp.server(),
                started.elapsed().as_secs_f64()
            );
            print!("{}", cp.shell_env());
        }
        Cmd::Stop { dir } => envtest::stop_detached(&dir)?,
        Cmd::Bin => println!("{}", envtest::find_bin_dir()?.display()),
    }
    Ok(())
}
