//! `make soak`: the chaos soak (see [`bench::soak`]). Prints the invariant table and exits 1 when
//! an invariant failed or the objects did not settle.
//!
//! ```text
//! soak --n 1000 --minutes 20          # SOAK_N, SOAK_MINUTES
//! ```

use std::path::PathBuf;

use bench::soak::{self, Config};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Chaos soak: N ExternalAudiences through kills, restarts, outages and lost answers")]
struct Args {
    /// Objects (half per pass).
    #[arg(long, env = "SOAK_N", default_value_t = 1000)]
    n: usize,
    /// Length of the run in minutes (the check may follow up to a quarter of it later).
    #[arg(long, env = "SOAK_MINUTES", default_value_t = 20.0)]
    minutes: f64,
    /// The operator binary.
    #[arg(long, default_value = "target/release/controller")]
    controller: PathBuf,
    /// The repository root (for deploy/).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Logs and the emulator's state file.
    #[arg(long, default_value = "/tmp/audience-operator-soak")]
    work_dir: PathBuf,
    /// Operator --aep-requests-per-second (default: N/20, within 20..=50).
    #[arg(long, env = "SOAK_RPS")]
    rps: Option<u32>,
    /// Seed of the random choices (kill times, which objects change).
    #[arg(long, env = "SOAK_SEED", default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let cfg = Config {
        n: a.n,
        minutes: a.minutes,
        controller: std::fs::canonicalize(&a.controller)?,
        repo: std::fs::canonicalize(&a.repo)?,
        work_dir: a.work_dir,
        rps: a.rps.unwrap_or_else(|| Config::default_rps(a.n)),
        seed: a.seed,
    };
    let out = soak::run(cfg).await?;
    println!("\n{}", out.report.render());
    match out.converged_after {
        Some(at) => println!(
            "settled {:.0}s after the start; run took {:.0}s",
            at.as_secs_f64(),
            out.elapsed.as_secs_f64()
        ),
        None => println!("did NOT settle; run took {:.0}s", out.elapsed.as_secs_f64()),
    }
    let failures = out.report.failures();
    if !failures.is_empty() || out.converged_after.is_none() {
        println!("soak FAILED: {failures:?}");
        std::process::exit(1);
    }
    println!("soak passed");
    Ok(())
}
