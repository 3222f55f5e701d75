//! The one config file every service reads (each uses its part), plus `MILLILAG_*` overrides.
//!
//! Layers, lowest first: built-in defaults, the TOML file, then environment variables named
//! `MILLILAG_<SECTION>__<KEY>` (`__` separates levels; array items by index:
//! `MILLILAG_CLUSTER__0__PRIMARY`; see [`env`]). Unknown keys are errors that name the key. After
//! parsing, [`Config::validate`] checks every cross-field rule and reports all problems at once,
//! each with the key and the fix. Secrets come from environment variables or files and print as
//! `***`.
//!
//! One file per section, its keys (documented on the fields: the user reference) beside its
//! rules: `kafka`, `cluster`, `writer`, `reader`, `processor`, `sink`, `alert`, `webhook`, `log`.

pub mod alert;
mod cluster;
mod db_url;
mod env;
mod http_url;
mod kafka;
mod listen;
mod log;
mod processor;
mod reader;
mod sink;
mod webhook;
mod writer;

pub use alert::{AlertCondition, AlertMetric, AlertRuleConfig, Comparison};
pub use cluster::{validate_identifier, ClusterConfig};
pub use db_url::{DbTls, DbUrl, TlsMode};
pub use http_url::{HttpAuth, HttpUrl};
pub use kafka::{is_secret_property, KafkaConfig, SASL_MECHANISMS};
pub use listen::parse_listen;
pub use log::{check_filter, LogConfig, LogFormat};
pub use processor::{ProcessorConfig, StaleConfig};
pub use reader::{ReaderConfig, ReaderMethod};
pub use sink::{
    GraphiteSinkConfig, InfluxApi, InfluxSinkConfig, KafkaSinkConfig, SinkConfig, StatsdProtocol,
    StatsdSinkConfig,
};
pub use webhook::{WebhookConfig, WebhookFormat};
pub use writer::{WriterConfig, MAX_WRITER_ID};

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use sink::default_sink_timeout;

/// The environment prefix for overrides and for `MILLILAG_DB_PASSWORD`.
pub const ENV_PREFIX: &str = "MILLILAG_";

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and topic names.
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// The replication clusters to measure: one primary and its replicas each.
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<ClusterConfig>,
    /// `millilag writer`.
    #[serde(default)]
    pub writer: WriterConfig,
    /// `millilag reader`.
    #[serde(default)]
    pub reader: ReaderConfig,
    /// `millilag processor`.
    #[serde(default)]
    pub processor: ProcessorConfig,
    /// Where the processor writes windows.
    #[serde(default)]
    pub sink: SinkConfig,
    /// Alert rules evaluated by the processor on closed windows.
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertRuleConfig>,
    /// Where alert transitions are posted.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<WebhookConfig>,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Everything wrong with a config, each problem naming its key and the fix.
#[derive(Debug)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config {}:", self.source)?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read, override from the process environment, validate and resolve secrets.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source: path.display().to_string(),
            problems: vec![format!("cannot read the file: {e}")],
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// [`Config::load`] on a string with an explicit environment (tests pass their own).
    pub fn from_toml_with_env(
        text: &str,
        source: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems: Vec<String>| ConfigError {
            source: source.to_string(),
            problems,
        };
        let mut tree: toml::Table = toml::from_str(text).map_err(|e| fail(vec![e.to_string()]))?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut retyped = env::apply_env_overrides(&mut tree, &env).map_err(|p| fail(vec![p]))?;
        let mut config: Config = loop {
            match serde_path_to_error::deserialize(toml::Value::Table(tree.clone())) {
                Ok(c) => break c,
                Err(e) => {
                    let path = e.path().to_string();
                    // An override like MILLILAG_READER__GROUP=2024 parsed as a number where
                    // a string is wanted: take the text as written, once per key.
                    if let Some(i) = retyped.iter().position(|r| r.key == path) {
                        retyped
                            .swap_remove(i)
                            .as_string(&mut tree)
                            .map_err(|p| fail(vec![p]))?;
                        continue;
                    }
                    let inner = e.into_inner().to_string();
                    let inner = inner.trim_end();
                    return Err(fail(vec![if path.is_empty() || path == "." {
                        inner.to_string()
                    } else {
                        format!("{path}: {inner}")
                    }]));
                }
            }
        };
        let mut problems = config.validate();
        problems.extend(config.resolve_secrets(&env));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Every cross-field rule, all problems at once; each section checks its own keys.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        self.kafka.validate(&mut p);
        ClusterConfig::validate_all(&self.clusters, &mut p);
        self.writer.validate(&mut p);
        self.reader.validate(&mut p);
        self.processor.validate(&mut p);
        self.sink.validate(&mut p);
        for (i, a) in self.alerts.iter().enumerate() {
            a.validate(i, &self.processor, &mut p);
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            w.validate(&format!("webhook[{i}]"), &mut p);
        }
        self.log.validate(&mut p);
        p
    }

    /// Reads every password, token and HMAC key from its file or environment variable.
    fn resolve_secrets(&mut self, env: &BTreeMap<String, String>) -> Vec<String> {
        let mut p = Vec::new();
        self.kafka.resolve_secrets(env, &mut p);
        for (i, c) in self.clusters.iter_mut().enumerate() {
            c.resolve_password(&format!("cluster[{i}]"), env, &mut p);
            c.resolve_tls(&format!("cluster[{i}]"), &mut p);
        }
        self.sink.resolve_secrets(env, &mut p);
        for (i, w) in self.webhooks.iter_mut().enumerate() {
            w.resolve_secret(&format!("webhook[{i}]"), env, &mut p);
        }
        p
    }

    /// The resolved config as TOML, secrets as `***` (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        c.kafka.properties = c.kafka.masked_properties();
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}{}", self.kafka.topic_prefix, suffix)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

// Shared by several sections' serde defaults.
const fn default_true() -> bool {
    true
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_secure;
