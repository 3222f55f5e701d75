//! `[sink]`: where the processor writes closed windows (InfluxDB, Graphite, Kafka).

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

impl SinkConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        for (i, s) in self.influxdb.iter().enumerate() {
            let key = format!("sink.influxdb[{i}]");
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
            if !g.address.contains(':') {
                p.push(format!(
                    "sink.graphite[{i}].address ({:?}) must be host:port",
                    g.address
                ));
            }
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
