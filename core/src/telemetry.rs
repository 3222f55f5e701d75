//! Logging setup: `tracing` to stderr, pretty or JSON, filter from the config or RUST_LOG.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init_logging(cfg: &LogConfig) {
    // The config's level was checked at load; a bad RUST_LOG is said, not silently obeyed.
    let from_env = std::env::var("RUST_LOG").ok().filter(|v| {
        let ok = crate::config::check_filter(v);
        if let Err(e) = &ok {
            eprintln!("millilag: ignoring RUST_LOG: {e}");
        }
        ok.is_ok()
    });
    let filter = from_env
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&cfg.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // try_init: a second call (tests, `all`) keeps the first subscriber instead of panicking.
    let _ = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// A stable id for this process: hostname-pid.
pub fn instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}-{}", std::process::id())
}
