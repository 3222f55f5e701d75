//! `millilag`: one binary, one subcommand per service. The demo is a binary of its own
//! (`demo/`), so that the harness it starts services with never ships in this one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use millilag_core::config::Config;
use millilag_core::shutdown::{ignore_hangups, shutdown_pair, shutdown_signal, Shutdown};
use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "millilag",
    version,
    about = "Millisecond replication delay for MySQL/MariaDB, over Kafka"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The TOML config file (see config/millilag.example.toml).
    #[arg(long, short, env = "MILLILAG_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Set heartbeats on every primary and announce them on Kafka.
    Writer(ConfigArg),
    /// Time when each replica shows each heartbeat; publish replica-delay records.
    Reader(ConfigArg),
    /// Window replica delays, write sinks, evaluate alerts.
    Processor(ConfigArg),
    /// Writer, reader and processor in one process (a single box).
    All(ConfigArg),
    /// Validate a config, print it resolved (secrets masked) and exit.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
}

/// Exit code for a config the user must fix (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config_path, run) = match cli.command {
        Command::CheckConfig { file } => {
            return match Config::load(&file) {
                Ok(c) => {
                    print!("{}", c.to_masked_toml());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(EXIT_CONFIG)
                }
            };
        }
        Command::Writer(a) => (a.config, Service::Writer),
        Command::Reader(a) => (a.config, Service::Reader),
        Command::Processor(a) => (a.config, Service::Processor),
        Command::All(a) => (a.config, Service::All),
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    millilag_core::telemetry::init_logging(&config.log);
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
    match rt.block_on(run_service(run, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "Service stopped with an error.");
            eprintln!("millilag: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy)]
enum Service {
    Writer,
    Reader,
    Processor,
    All,
}

async fn run_service(service: Service, config: Config) -> anyhow::Result<()> {
    ignore_hangups();
    let (trigger, shutdown) = shutdown_pair();
    let trigger = Arc::new(trigger);
    let on_signal = trigger.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        on_signal.trigger();
    });
    match service {
        Service::Writer => millilag_producers::writer::run(config, shutdown).await,
        Service::Reader => millilag_processors::reader::run(config, shutdown).await,
        Service::Processor => millilag_processors::processor::run(config, shutdown).await,
        Service::All => {
            // One failing service stops the others, and the process exits non-zero, so that
            // systemd or Kubernetes restarts the whole box instead of it limping on.
            let (w, r, p) = tokio::join!(
                supervised(
                    "writer",
                    millilag_producers::writer::run(config.clone(), shutdown.clone()),
                    &trigger,
                    &shutdown,
                ),
                supervised(
                    "reader",
                    millilag_processors::reader::run(config.clone(), shutdown.clone()),
                    &trigger,
                    &shutdown,
                ),
                supervised(
                    "processor",
                    millilag_processors::processor::run(config, shutdown.clone()),
                    &trigger,
                    &shutdown,
                ),
            );
            w.and(r).and(p)
        }
    }
}

/// Run one service of `millilag all`; if it fails, or stops while no shutdown was asked for,
/// stop the others.
async fn supervised(
    name: &str,
    service: impl Future<Output = anyhow::Result<()>>,
    trigger: &millilag_core::shutdown::ShutdownTrigger,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let result = match service.await {
        Ok(()) if !shutdown.is_triggered() => Err(anyhow::anyhow!("stopped on its own")),
        other => other,
    };
    if let Err(e) = &result {
        if !shutdown.is_triggered() {
            tracing::error!(
                service = name,
                error = format!("{e:#}"),
                "A service failed; stopping the others."
            );
            trigger.trigger();
        }
    }
    result.with_context(|| name.to_string())
}
