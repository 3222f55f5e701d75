//! `millilag-demo`: the README's demo (`scripts/demo`). Starts MariaDB replication, a broker and
//! a metrics store on free local ports with the test harness, runs writer, reader and processor
//! in this process and prints live per-replica delays; see [`demo`].

mod demo;

use clap::Parser;
use millilag_core::config::LogConfig;
use millilag_core::duration::HumanDuration;
use millilag_core::shutdown::{shutdown_signal, Shutdown};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "millilag-demo",
    version,
    about = "Start local MariaDB, broker and metrics store, run the millilag pipeline and show live delays"
)]
struct Cli {
    /// Stop after this long (e.g. "30s"); default: until Ctrl-C.
    #[arg(long = "for")]
    run_for: Option<HumanDuration>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's terminal is the display: services only speak up when something is wrong.
    millilag_core::telemetry::init_logging(&LogConfig {
        level: "warn".into(),
        ..LogConfig::default()
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run_for = cli.run_for.map(|d| d.0);
    match rt.block_on(async { demo::run(Shutdown::from_future(shutdown_signal()), run_for).await })
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Demo stopped with an error.");
            eprintln!("millilag-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
