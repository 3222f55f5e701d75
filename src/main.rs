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
        /// The TOML config file (wins over --config and MILLILAG_CONFIG).
        file: Option<PathBuf>,
        /// The TOML config file, as the services take it.
        #[arg(long, short, env = "MILLILAG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print every replica's current delay once, read straight from the databases, and exit
    /// like a Nagios plugin (pt-heartbeat --check).
    #[command(long_about = CHECK_ABOUT)]
    Check(CheckArgs),
    /// Print every replica's delay continuously, with 1/5/15-minute averages
    /// (pt-heartbeat --monitor).
    #[command(long_about = MONITOR_ABOUT)]
    Monitor {
        #[command(flatten)]
        check: CheckArgs,
        /// Time between rounds.
        #[arg(long, default_value = "1s", value_parser = duration)]
        interval: std::time::Duration,
        /// Stop after this many rounds (default: until Ctrl-C or SIGTERM).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// How check and monitor measure (a macro: `concat!` takes literals only).
macro_rules! method_doc {
    () => {
        "Method: needs no Kafka and no other millilag service, only a writer (or pt-heartbeat --update) \
writing the heartbeat table. Each round reads the primary's heartbeat row (seq, ts) and its clock in one query, \
then every replica's copy of that row. The delay is the live lag, as the reader's millilag_replica_lag_seconds \
defines it: the age, on the primary's clock, of the oldest heartbeat the replica does not show yet. 0 when the \
replica shows the primary's newest heartbeat; exact when only that one is missing; otherwise the next heartbeat \
is taken as written one writer.interval after the replica's newest, so the figure is within one interval \
(10 ms by default) of the truth. Replica read times are converted to the primary's clock with an NTP-style offset \
estimate (lowest round trip kept), so no clock sync is needed; each delay is printed with its uncertainty (half \
the read's round trip plus the offset's). A row without seq (written by pt-heartbeat) gives now - ts, as \
pt-heartbeat computes it."
    };
}

const CHECK_ABOUT: &str = concat!(
    "Print every replica's current delay once and exit like a Nagios plugin (pt-heartbeat --check).\n\n",
    "Output: a status line with performance data (`MILLILAG CRITICAL - ... | 'cluster/replica'=0.012s;warn;crit;0`), \
then one line per replica: `cluster replica delay ±uncertainty STATE detail`.\n\n",
    "Exit codes: 0 OK; 1 WARNING (a delay above --warn-delay); 2 CRITICAL (a delay above --max-delay, a replica \
unreachable, its replication threads stopped, or no heartbeat row on it); 3 UNKNOWN (the config does not load, \
the primary cannot be read, or its heartbeat is older than max(1 s, 10 x writer.interval): nobody writes heartbeats).\n\n",
    method_doc!()
);

const MONITOR_ABOUT: &str = concat!(
    "Print every replica's delay every --interval, with its averages over 1, 5 and 15 minutes \
(pt-heartbeat --monitor): `time cluster replica delay [ 1m, 5m, 15m ] STATE detail`. Runs until Ctrl-C/SIGTERM \
or --count rounds.\n\n",
    method_doc!()
);

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this cluster (default: every [[cluster]] of the config).
    #[arg(long)]
    cluster: Option<String>,
    /// CRITICAL above this delay.
    #[arg(long, default_value = "500ms", value_parser = duration)]
    max_delay: std::time::Duration,
    /// WARNING above this delay (default: no warning level).
    #[arg(long, value_parser = duration)]
    warn_delay: Option<std::time::Duration>,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    s.parse::<millilag_core::duration::HumanDuration>()
        .map(|d| d.0)
}

impl CheckArgs {
    fn options(&self) -> millilag_processors::check::Options {
        let us = |d: std::time::Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        millilag_processors::check::Options {
            cluster: self.cluster.clone(),
            thresholds: millilag_processors::check::verdict::Thresholds {
                critical_us: us(self.max_delay),
                warning_us: self.warn_delay.map(us),
            },
        }
    }
}

/// Exit code for a config the user must fix (distinct from runtime failures).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config_path, run) = match cli.command {
        Command::CheckConfig { file, config } => {
            let Some(file) = file.or(config) else {
                eprintln!(
                    "millilag check-config: name the config file: check-config FILE, --config FILE or MILLILAG_CONFIG=FILE"
                );
                return ExitCode::from(EXIT_CONFIG);
            };
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
        Command::Check(args) => return check(&args, None),
        Command::Monitor {
            check: args,
            interval,
            count,
        } => return check(&args, Some((interval, count))),
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
    millilag_core::http::install_panic_hook();
    let mut builder = match run {
        Service::Reader => runtime_with(config.reader.worker_threads),
        Service::Processor => runtime_with(config.processor.worker_threads),
        Service::Writer | Service::All => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
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

/// A service's runtime: `worker_threads = 1` is a single-threaded one (no cross-thread
/// wake-ups), more a multi-threaded one with that many.
fn runtime_with(worker_threads: usize) -> tokio::runtime::Builder {
    if worker_threads == 1 {
        return tokio::runtime::Builder::new_current_thread();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    b.worker_threads(worker_threads);
    b
}

/// `check` (monitor = None) or `monitor`: Nagios exit codes, UNKNOWN (3) when the config does
/// not load, since a plugin's 2 would mean CRITICAL.
fn check(args: &CheckArgs, monitor: Option<(std::time::Duration, Option<u64>)>) -> ExitCode {
    use millilag_processors::check::verdict::State;
    let config = match Config::load(&args.config.config) {
        Ok(c) => c,
        Err(e) => {
            println!("MILLILAG UNKNOWN - {e}");
            return ExitCode::from(State::Unknown.exit_code());
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("MILLILAG UNKNOWN - starting the runtime: {e}");
            return ExitCode::from(State::Unknown.exit_code());
        }
    };
    let opts = args.options();
    match monitor {
        None => ExitCode::from(rt.block_on(millilag_processors::check::check(&config, &opts))),
        Some((interval, count)) => {
            let done = rt.block_on(async {
                let shutdown = Shutdown::from_future(shutdown_signal());
                millilag_processors::check::monitor::monitor(
                    &config,
                    &opts,
                    interval,
                    count,
                    shutdown,
                    &mut std::io::stdout(),
                )
                .await
            });
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("millilag monitor: {e}");
                    ExitCode::from(State::Unknown.exit_code())
                }
            }
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
