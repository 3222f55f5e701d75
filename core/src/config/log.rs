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
    /// tracing filter, e.g. "info" or "millilag=debug,info". RUST_LOG wins when set.
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
