//! `[log]`: the log format and filter of every service.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// pretty | json.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
    /// tracing filter, e.g. "info" or "millilag=debug,info": comma-separated levels (trace,
    /// debug, info, warn, error, off) or `target=level` directives. RUST_LOG wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
}

const fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}
fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

/// Level names a filter directive may end with.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a tracing filter strictly. `EnvFilter` alone accepts a misspelt level ("infoo") as a
/// target name, which silently logs nothing: here every directive must be a level or end with
/// `=level`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let fix = "write a level (trace, debug, info, warn, error, off) or target=level directives, e.g. \"info\" or \"millilag=debug,info\"";
    if filter.trim().is_empty() {
        return Err(format!("empty; {fix}"));
    }
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = d.rsplit_once('=').map_or(d, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{d:?} is not a level or a target=level directive; {fix}"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| format!("{filter:?}: {e}; {fix}"))
}

impl LogConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if let Err(e) = check_filter(&self.level) {
            p.push(format!("log.level: {e}"));
        }
    }
}
