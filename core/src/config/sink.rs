//! `[sink]`: where the processor writes closed windows (InfluxDB, Graphite, statsd, Kafka).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::http_url::{check_tls_ca, HttpAuth, HttpUrl};
use crate::duration::HumanDuration;
use crate::secret::{resolve_secret, EnvUnset, Sensitive};

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// InfluxDB sinks (v2 API or v1 /write).
    #[serde(default)]
    pub influxdb: Vec<InfluxSinkConfig>,
    /// Graphite plaintext sinks.
    #[serde(default)]
    pub graphite: Vec<GraphiteSinkConfig>,
    /// statsd / DogStatsD over UDP, best effort: never holds back offsets or consumption.
    #[serde(default)]
    pub statsd: Vec<StatsdSinkConfig>,
    /// `delay-window` records on Kafka for downstream consumers.
    #[serde(default)]
    pub kafka: KafkaSinkConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    V1,
    V2,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxSinkConfig {
    /// Base URL, e.g. http://127.0.0.1:8086 or https://influx.example:8086.
    pub url: HttpUrl,
    /// CA certificate(s), PEM, the server's certificate must chain to (https). Absent: the
    /// system's trust store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// v2 (org, bucket, token) or v1 (database).
    #[serde(default = "default_influx_api")]
    pub api: InfluxApi,
    /// v2 organisation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// v2 bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// v1 database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Environment variable with the v2 token; for v1, the password of `username` (basic
    /// auth), or without `username` a bearer token (`Authorization: Bearer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File with the v2 token (or v1 password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// v1 user name (basic auth, with the token as password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Measurement name of the window points.
    #[serde(default = "default_measurement")]
    pub measurement: String,
    /// Per-request timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
    /// Resolved from token_env / token_file.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub token: Option<Sensitive>,
    /// v1: what `username` and the token resolve to.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub auth: Option<HttpAuth>,
}

const fn default_influx_api() -> InfluxApi {
    InfluxApi::V2
}
fn default_measurement() -> String {
    "replica_delay".into()
}
/// Also the webhooks' per-request timeout.
pub(super) fn default_sink_timeout() -> HumanDuration {
    HumanDuration::from_secs(5)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraphiteSinkConfig {
    /// host:port of carbon's plaintext listener.
    pub address: String,
    /// Metric path prefix: `<prefix>.<cluster>.<replica>.<window>.<field>`.
    #[serde(default = "default_graphite_prefix")]
    pub prefix: String,
    /// Connect/write timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
}

fn default_graphite_prefix() -> String {
    "millilag".into()
}

/// The line format of a statsd sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsdProtocol {
    /// Plain statsd (Etsy): cluster, replica and window in the metric path.
    Statsd,
    /// DogStatsD: the same values under fixed names, with `cluster`, `replica` and `window` tags
    /// (Datadog agent, Telegraf with `datadog_extensions`, statsd 0.9+ as Graphite tags).
    Dogstatsd,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsdSinkConfig {
    /// host:port of the statsd daemon's UDP listener (8125 by convention).
    pub address: String,
    /// Metric name prefix: `<prefix>.<cluster>.<replica>.<window>.<field>` (statsd) or
    /// `<prefix>.<field>` with tags (dogstatsd). Empty for none.
    #[serde(default = "default_graphite_prefix")]
    pub prefix: String,
    /// `statsd` (names in the path) or `dogstatsd` (tags).
    #[serde(default = "default_statsd_protocol")]
    pub protocol: StatsdProtocol,
    /// Largest UDP payload in bytes; metrics are packed into datagrams up to this size and a
    /// metric is never split. 1432 fits an Ethernet MTU (Etsy statsd's advice); 512 for paths
    /// across the internet, 8932 on jumbo frames.
    #[serde(default = "default_statsd_mtu")]
    pub mtu: usize,
    /// Also send every exact measurement (status ok, not an upper bound) as a timer
    /// (`<...>.delay:<ms>|ms`), so statsd computes its own percentiles per flush.
    #[serde(default)]
    pub timings: bool,
    /// Fraction of exact measurements sent as timers (0 < rate <= 1), announced with `|@rate`
    /// so statsd scales its counts. Needs `timings = true`. Default 1 (all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_rate: Option<f64>,
    /// Bound on resolving `address` (re-resolved every minute and after a failure).
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
}

const fn default_statsd_protocol() -> StatsdProtocol {
    StatsdProtocol::Statsd
}
/// Etsy statsd's recommended payload for Fast Ethernet (docs/metric_types.md, "Multi-Metric
/// Packets"): 1500 MTU - IP and UDP headers, with room for options.
const fn default_statsd_mtu() -> usize {
    1432
}
/// Smallest `mtu` accepted: room for the longest fixed part of a line and a value.
pub const STATSD_MIN_MTU: usize = 64;
/// Largest UDP payload over IPv4.
pub const STATSD_MAX_MTU: usize = 65_507;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Publish every closed window as a `delay-window` record.
    #[serde(default = "super::default_true")]
    pub enabled: bool,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig { enabled: true }
    }
}

/// A request timeout of zero fails every request at once (a retry loop with nothing to wait for).
pub(super) fn check_timeout(key: &str, t: HumanDuration, p: &mut Vec<String>) {
    if t.0.is_zero() {
        p.push(format!(
            "{key} (0s) must be more than zero; e.g. \"5s\" (the default)"
        ));
    }
}

impl SinkConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        for (i, s) in self.influxdb.iter().enumerate() {
            let key = format!("sink.influxdb[{i}]");
            check_timeout(&format!("{key}.timeout"), s.timeout, p);
            if let Some(why) = crate::names::name_problem(&s.measurement) {
                p.push(format!("{key}.measurement ({:?}) {why}", s.measurement));
            } else if s.measurement.starts_with('#') {
                p.push(format!(
                    "{key}.measurement ({:?}) must not start with '#': line protocol reads the line as a comment",
                    s.measurement
                ));
            }
            match s.api {
                InfluxApi::V2 => {
                    if s.org.is_none() || s.bucket.is_none() {
                        p.push(format!("{key}: api = \"v2\" needs org and bucket"));
                    }
                }
                InfluxApi::V1 => {
                    if s.database.is_none() {
                        p.push(format!("{key}: api = \"v1\" needs database"));
                    }
                }
            }
        }
        for (i, g) in self.graphite.iter().enumerate() {
            check_timeout(&format!("sink.graphite[{i}].timeout"), g.timeout, p);
            if !g.address.contains(':') {
                p.push(format!(
                    "sink.graphite[{i}].address ({:?}) must be host:port",
                    g.address
                ));
            }
        }
        for (i, s) in self.statsd.iter().enumerate() {
            s.validate(&format!("sink.statsd[{i}]"), p);
        }
    }

    pub(super) fn resolve_secrets(&mut self, env: &BTreeMap<String, String>, p: &mut Vec<String>) {
        for (i, s) in self.influxdb.iter_mut().enumerate() {
            let key = format!("sink.influxdb[{i}]");
            s.token = resolve_secret(
                &format!("{key}.token"),
                s.token_env.as_deref(),
                s.token_file.as_deref(),
                env,
                EnvUnset::Problem("export it or use token_file"),
            )
            .unwrap_or_else(|e| {
                p.push(e);
                None
            });
            if s.api == InfluxApi::V2 && s.token.is_none() {
                p.push(format!(
                    "{key}: api = \"v2\" needs a token; set token_env or token_file"
                ));
            }
            s.auth = match (s.api, &s.username, &s.token) {
                (InfluxApi::V1, Some(u), t) => Some(HttpAuth::Basic {
                    username: u.clone(),
                    password: t.clone().unwrap_or_default(),
                }),
                (InfluxApi::V1, None, Some(t)) => Some(HttpAuth::Bearer { token: t.clone() }),
                _ => None,
            };
            check_tls_ca(&key, &s.url, s.tls_ca_file.as_deref(), p);
        }
    }
}

impl StatsdSinkConfig {
    fn validate(&self, key: &str, p: &mut Vec<String>) {
        if !self.address.contains(':') {
            p.push(format!(
                "{key}.address ({:?}) must be host:port, e.g. \"127.0.0.1:8125\"",
                self.address
            ));
        }
        // These characters end a name in the statsd line format.
        if let Some(c) = self
            .prefix
            .chars()
            .find(|c| matches!(c, ':' | '|' | '@' | '#' | ',') || c.is_whitespace())
        {
            p.push(format!(
                "{key}.prefix ({:?}) must not contain {c:?}; use letters, digits, '_', '-' and '.'",
                self.prefix
            ));
        }
        if !(STATSD_MIN_MTU..=STATSD_MAX_MTU).contains(&self.mtu) {
            p.push(format!(
                "{key}.mtu ({}) must be between {STATSD_MIN_MTU} and {STATSD_MAX_MTU} bytes; 1432 suits Ethernet",
                self.mtu
            ));
        }
        if let Some(r) = self.sample_rate {
            if !(r > 0.0 && r <= 1.0) {
                p.push(format!(
                    "{key}.sample_rate ({r}) must be greater than 0 and at most 1"
                ));
            } else if !self.timings {
                p.push(format!(
                    "{key}.sample_rate ({r}) samples timings, which are off; set timings = true or remove sample_rate"
                ));
            }
        }
    }

    /// The sample rate of timings (1 when not set).
    pub fn sample_rate(&self) -> f64 {
        self.sample_rate.unwrap_or(1.0)
    }
}
