//! `millilag`: one binary, one subcommand per service. The demo is a binary of its own
//! (`demo/`), so that the harness it starts services with never ships in this one.

use anyhow::Context;
use clap::{Parser, Subcommand};
use millilag_core::config::Config;
use millilag_core::shutdown::{shutdown_signal, Shutdown};
use std::path::PathBuf;
use std::process::ExitCode;

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
    let shutdown = Shutdown::from_future(shutdown_signal());
    match service {
        Service::Writer => millilag_producers::writer::run(config, shutdown).await,
        Service::Reader => millilag_processors::reader::run(config, shutdown).await,
        Service::Processor => millilag_processors::processor::run(config, shutdown).await,
        Service::All => {
            let (w, r, p) = tokio::join!(
                millilag_producers::writer::run(config.clone(), shutdown.clone()),
                millilag_processors::reader::run(config.clone(), shutdown.clone()),
                millilag_processors::processor::run(config, shutdown),
            );
            w.context("writer")?;
            r.context("reader")?;
            p.context("processor")?;
            Ok(())
        }
    }
}
