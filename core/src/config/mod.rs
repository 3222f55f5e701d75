//! The one config file every service reads (each uses its part), plus `MILLILAG_*` overrides.
//!
//! Layers, lowest first: built-in defaults, the TOML file, then environment variables named
//! `MILLILAG_<SECTION>__<KEY>` (`__` separates levels; array items by index:
//! `MILLILAG_CLUSTER__0__PRIMARY`). Unknown keys are errors that name the key. After parsing,
//! [`Config::validate`] checks every cross-field rule and reports all problems at once, each with
//! the key and the fix. Secrets come from environment variables or files and print as `***`.

pub mod alert;
mod db_url;

pub use alert::{AlertCondition, AlertMetric, Comparison};
pub use db_url::DbUrl;

use crate::duration::HumanDuration;
use crate::secret::{resolve_secret, Sensitive};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (librdkafka `bootstrap.servers`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Prefix of every topic name: `<prefix>heartbeat-set`, `<prefix>replica-delay`, ...
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Create missing topics at start (admin API). Off where topics are managed elsewhere.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions for topics millilag creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for topics millilag creates (1 for a single dev broker; 3 in production).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Passed to librdkafka as-is (TLS, SASL, tuning). Keys containing "password", "secret" or
    /// "key" are masked when printed.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_prefix() -> String {
    "millilag.".into()
}
const fn default_true() -> bool {
    true
}
const fn default_partitions() -> i32 {
    6
}
const fn default_replication_factor() -> i32 {
    1
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            topic_prefix: default_topic_prefix(),
            create_topics: true,
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            properties: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name: the Kafka key of its heartbeats and a tag on every point.
    pub name: String,
    /// The primary, as `mysql://user[:password]@host:port`.
    pub primary: DbUrl,
    /// Replicas to measure, same form as `primary`.
    #[serde(default)]
    pub replicas: Vec<DbUrl>,
    /// Also measure the replicas the primary reports (SHOW SLAVE HOSTS / SHOW REPLICAS),
    /// picked up without a restart. They are reached with the primary's user and password.
    #[serde(default)]
    pub discover_replicas: bool,
    /// Database of the heartbeat table.
    #[serde(default = "default_database")]
    pub database: String,
    /// Heartbeat table name (pt-heartbeat compatible superset).
    #[serde(default = "default_table")]
    pub table: String,
    /// Environment variable holding the database password (when the URL has none).
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// File holding the database password (wins over `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Resolved at load time from the URL, `password_file` or `password_env`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
}

fn default_database() -> String {
    "millilag".into()
}
fn default_table() -> String {
    "heartbeat".into()
}
fn default_password_env() -> String {
    format!("{ENV_PREFIX}DB_PASSWORD")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriterConfig {
    /// Heartbeat interval (1ms..60s). pt-heartbeat's default is 1s; millipede's was 10ms.
    #[serde(default = "default_interval")]
    pub interval: HumanDuration,
    /// CREATE TABLE IF NOT EXISTS the heartbeat table (needs CREATE once).
    #[serde(default = "default_true")]
    pub create_table: bool,
    /// Address of /metrics, /healthz, /readyz.
    #[serde(default = "default_writer_listen")]
    pub listen: SocketAddr,
    /// This instance's id in events and in the row's writer_id (default: hostname-pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_id: Option<String>,
    /// GTID domain for the heartbeat session (MariaDB; needs BINLOG REPLAY or SUPER), so
    /// heartbeat GTIDs are consecutive and readers can wait for the next one before it exists.
    /// 0 keeps the server's domain.
    #[serde(default = "default_gtid_domain")]
    pub gtid_domain_id: u32,
    /// Heartbeats that may wait for Kafka; beyond it new ones are dropped and counted, so a
    /// broker outage never delays the heartbeat schedule.
    #[serde(default = "default_publish_queue")]
    pub publish_queue: usize,
}

fn default_interval() -> HumanDuration {
    HumanDuration::from_millis(10)
}
fn default_writer_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9101))
}
const fn default_gtid_domain() -> u32 {
    77
}
const fn default_publish_queue() -> usize {
    10_000
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: default_interval(),
            create_table: true,
            listen: default_writer_listen(),
            writer_id: None,
            gtid_domain_id: default_gtid_domain(),
            publish_queue: default_publish_queue(),
        }
    }
}

/// How the reader learns that a replica shows a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReaderMethod {
    /// MASTER_GTID_WAIT (MariaDB) / WAIT_FOR_EXECUTED_GTID_SET (MySQL): one query, no polling.
    GtidWait,
    /// Poll the heartbeat row's seq every `poll_interval`.
    Poll,
    /// gtid-wait where the replica and the event support it, else poll.
    Auto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReaderConfig {
    /// gtid-wait | poll | auto.
    #[serde(default = "default_method")]
    pub method: ReaderMethod,
    /// Poll gap in poll mode; while a heartbeat is overdue the gap is 2% of how late it is,
    /// between this and `poll_max_interval`.
    #[serde(default = "default_poll_interval")]
    pub poll_interval: HumanDuration,
    /// Longest poll gap.
    #[serde(default = "default_poll_max_interval")]
    pub poll_max_interval: HumanDuration,
    /// Give up on a heartbeat after this long (status timeout).
    #[serde(default = "default_timeout")]
    pub timeout: HumanDuration,
    /// Kafka consumer group.
    #[serde(default = "default_reader_group")]
    pub group: String,
    /// Address of /metrics, /healthz, /readyz.
    #[serde(default = "default_reader_listen")]
    pub listen: SocketAddr,
    /// This instance's id in records (default: hostname-pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reader_id: Option<String>,
    /// GTID waits kept armed ahead per replica (each holds one replica connection), so that
    /// visibility is timed before the Kafka event arrives and bursts after a stall keep up.
    #[serde(default = "default_prearm_depth")]
    pub prearm_depth: usize,
    /// How often the clock offset to each primary is re-estimated.
    #[serde(default = "default_clock_refresh")]
    pub clock_refresh: HumanDuration,
    /// How often discovered replicas are refreshed.
    #[serde(default = "default_discovery_interval")]
    pub discovery_interval: HumanDuration,
    /// librdkafka fetch.wait.max.ms for the heartbeat consumer. Visibility is timed by the
    /// replicas (armed GTID waits, anticipating polls), not by when the event arrives, so this
    /// only delays the join with the commit time. Real Kafka answers a waiting fetch as soon as
    /// a record arrives; Tansu 0.6 only when this expires, and each answer costs it CPU.
    #[serde(default = "default_fetch_wait")]
    pub fetch_wait: HumanDuration,
    /// Heartbeats measured at once per replica; more are superseded (status skipped).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight_per_replica: usize,
}

const fn default_method() -> ReaderMethod {
    ReaderMethod::Auto
}
fn default_poll_interval() -> HumanDuration {
    HumanDuration::from_millis(1)
}
fn default_poll_max_interval() -> HumanDuration {
    HumanDuration::from_millis(20)
}
fn default_timeout() -> HumanDuration {
    HumanDuration::from_secs(30)
}
fn default_reader_group() -> String {
    "millilag-reader".into()
}
fn default_reader_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9102))
}
const fn default_prearm_depth() -> usize {
    8
}
fn default_clock_refresh() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_discovery_interval() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_fetch_wait() -> HumanDuration {
    HumanDuration::from_millis(50)
}
const fn default_max_in_flight() -> usize {
    4096
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            method: default_method(),
            poll_interval: default_poll_interval(),
            poll_max_interval: default_poll_max_interval(),
            timeout: default_timeout(),
            group: default_reader_group(),
            listen: default_reader_listen(),
            reader_id: None,
            prearm_depth: default_prearm_depth(),
            clock_refresh: default_clock_refresh(),
            discovery_interval: default_discovery_interval(),
            fetch_wait: default_fetch_wait(),
            max_in_flight_per_replica: default_max_in_flight(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Tumbling window lengths; each is computed for every replica.
    #[serde(default = "default_windows")]
    pub windows: Vec<HumanDuration>,
    /// How long after a window's end records for it are still accepted (event time).
    #[serde(default = "default_allowed_lateness")]
    pub allowed_lateness: HumanDuration,
    /// A window with no newer record to close it is closed this long after its end, by the
    /// wall clock (a replica that went silent). Must exceed reader.timeout + allowed_lateness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_close: Option<HumanDuration>,
    /// Kafka consumer group.
    #[serde(default = "default_processor_group")]
    pub group: String,
    /// Address of /metrics, /healthz, /readyz.
    #[serde(default = "default_processor_listen")]
    pub listen: SocketAddr,
    /// Closed windows waiting for sinks before consumption pauses (bounded memory).
    #[serde(default = "default_max_pending_windows")]
    pub max_pending_windows: usize,
}

fn default_windows() -> Vec<HumanDuration> {
    vec![
        HumanDuration::from_secs(1),
        HumanDuration::from_secs(10),
        HumanDuration::from_secs(60),
    ]
}
fn default_allowed_lateness() -> HumanDuration {
    HumanDuration::from_secs(2)
}
fn default_processor_group() -> String {
    "millilag-processor".into()
}
fn default_processor_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9103))
}
const fn default_max_pending_windows() -> usize {
    100_000
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            windows: default_windows(),
            allowed_lateness: default_allowed_lateness(),
            idle_close: None,
            group: default_processor_group(),
            listen: default_processor_listen(),
            max_pending_windows: default_max_pending_windows(),
        }
    }
}

impl ProcessorConfig {
    /// `idle_close` or its default: the reader's timeout plus the lateness plus 5 s of slack.
    pub fn idle_close_or_default(&self, reader: &ReaderConfig) -> std::time::Duration {
        self.idle_close.map(|d| d.0).unwrap_or(
            reader.timeout.0 + self.allowed_lateness.0 + std::time::Duration::from_secs(5),
        )
    }
}

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
    /// Base URL, e.g. http://127.0.0.1:8086.
    pub url: String,
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
    /// Environment variable with the v2 token (or v1 password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// File with the v2 token (or v1 password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// v1 user name (with the token as password).
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
}

const fn default_influx_api() -> InfluxApi {
    InfluxApi::V2
}
fn default_measurement() -> String {
    "replica_delay".into()
}
fn default_sink_timeout() -> HumanDuration {
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
    #[serde(default = "default_true")]
    pub enabled: bool,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig { enabled: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// Rule name (the alertname label).
    pub name: String,
    /// Condition on a closed window: `p99 > 500ms`, `max >= 2s`, `missing > 0`,
    /// `status = replica_unreachable`.
    pub when: String,
    /// Which window length the rule reads (one of processor.windows).
    #[serde(default = "default_alert_window")]
    pub window: HumanDuration,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub for_: HumanDuration,
    /// How long the condition must be false (with hysteresis) before the alert resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_for: Option<HumanDuration>,
    /// Fraction below the threshold a value must fall to count as recovered (0.1 = 10%), so
    /// a value hovering at the threshold does not flap.
    #[serde(default)]
    pub hysteresis: f64,
    /// Severity label.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Only this cluster (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Extra labels on the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_alert_window() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_severity() -> String {
    "warning".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    Json,
    Alertmanager,
    Slack,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST (for alertmanager: the /api/v2/alerts URL).
    pub url: String,
    /// json | alertmanager | slack.
    #[serde(default = "default_webhook_format")]
    pub format: WebhookFormat,
    /// Environment variable with the HMAC-SHA256 key; when set, requests carry
    /// `X-Millilag-Signature: sha256=<hex of HMAC(body)>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_env: Option<String>,
    /// File with the HMAC key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Per-request timeout.
    #[serde(default = "default_sink_timeout")]
    pub timeout: HumanDuration,
    /// Give up on one notification after this long of retries (it is logged and counted).
    #[serde(default = "default_webhook_give_up")]
    pub give_up_after: HumanDuration,
    /// Resolved HMAC key.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<Sensitive>,
}

const fn default_webhook_format() -> WebhookFormat {
    WebhookFormat::Json
}
fn default_webhook_give_up() -> HumanDuration {
    HumanDuration::from_secs(600)
}

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
        apply_env_overrides(&mut tree, &env).map_err(|p| fail(vec![p]))?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(tree))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner().to_string();
                let inner = inner.trim_end();
                fail(vec![if path.is_empty() || path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                }])
            })?;
        let mut problems = config.validate();
        problems.extend(config.resolve_secrets(&env));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(fail(problems))
        }
    }

    /// Every cross-field rule, all problems at once.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.kafka.brokers.trim().is_empty() {
            p.push("kafka.brokers: empty; set it to host:port[,host:port]".into());
        }
        if self.kafka.partitions < 1 {
            p.push(format!(
                "kafka.partitions ({}) must be at least 1",
                self.kafka.partitions
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let key = format!("cluster[{i}]");
            if c.name.is_empty() || c.name.contains('/') {
                p.push(format!(
                    "{key}.name ({:?}): must be non-empty and contain no '/'",
                    c.name
                ));
            }
            if !names.insert(c.name.clone()) {
                p.push(format!(
                    "{key}.name ({:?}) is used twice; cluster names must be unique",
                    c.name
                ));
            }
            for (field, v) in [("database", &c.database), ("table", &c.table)] {
                if let Err(e) = validate_identifier(v) {
                    p.push(format!("{key}.{field} ({v:?}): {e}"));
                }
            }
            if c.replicas.is_empty() && !c.discover_replicas {
                p.push(format!(
                    "{key}.replicas: none listed and discover_replicas = false; list replicas or enable discovery"
                ));
            }
        }
        let interval = self.writer.interval.0;
        if interval < std::time::Duration::from_millis(1)
            || interval > std::time::Duration::from_secs(60)
        {
            p.push(format!(
                "writer.interval ({}) must be between 1ms and 60s",
                self.writer.interval
            ));
        }
        if self.writer.publish_queue == 0 {
            p.push("writer.publish_queue must be at least 1".into());
        }
        let r = &self.reader;
        if r.poll_interval.0.is_zero() || r.poll_interval > r.poll_max_interval {
            p.push(format!(
                "reader.poll_interval ({}) must be > 0 and at most reader.poll_max_interval ({})",
                r.poll_interval, r.poll_max_interval
            ));
        }
        if r.timeout.0 < std::time::Duration::from_millis(10) {
            p.push(format!(
                "reader.timeout ({}) must be at least 10ms",
                r.timeout
            ));
        }
        if r.prearm_depth == 0 || r.prearm_depth > 256 {
            p.push(format!(
                "reader.prearm_depth ({}) must be between 1 and 256",
                r.prearm_depth
            ));
        }
        let pr = &self.processor;
        if pr.windows.is_empty() {
            p.push("processor.windows: empty; give at least one, e.g. [\"1s\"]".into());
        }
        for w in &pr.windows {
            if w.0 < std::time::Duration::from_millis(100) || w.0.as_micros() % 1000 != 0 {
                p.push(format!(
                    "processor.windows: {w} must be at least 100ms and a whole number of milliseconds"
                ));
            }
        }
        if let Some(idle) = pr.idle_close {
            let floor = r.timeout.0 + pr.allowed_lateness.0;
            if idle.0 <= floor {
                p.push(format!(
                    "processor.idle_close ({idle}) must be greater than reader.timeout ({}) + processor.allowed_lateness ({})",
                    r.timeout, pr.allowed_lateness
                ));
            }
        }
        for (i, s) in self.sink.influxdb.iter().enumerate() {
            let key = format!("sink.influxdb[{i}]");
            if !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
                p.push(format!(
                    "{key}.url ({:?}) must start with http:// or https://",
                    s.url
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
        for (i, g) in self.sink.graphite.iter().enumerate() {
            if !g.address.contains(':') {
                p.push(format!(
                    "sink.graphite[{i}].address ({:?}) must be host:port",
                    g.address
                ));
            }
        }
        for (i, a) in self.alerts.iter().enumerate() {
            let key = format!("alert[{i}] ({})", a.name);
            if let Err(e) = a.when.parse::<AlertCondition>() {
                p.push(format!("{key}.when: {e}"));
            }
            if !pr.windows.contains(&a.window) {
                p.push(format!(
                    "{key}.window ({}) is not one of processor.windows ({}); add it there or pick one",
                    a.window,
                    pr.windows.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", ")
                ));
            }
            if !(0.0..1.0).contains(&a.hysteresis) {
                p.push(format!(
                    "{key}.hysteresis ({}) must be in [0, 1)",
                    a.hysteresis
                ));
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                p.push(format!(
                    "webhook[{i}].url ({:?}) must start with http:// or https://",
                    w.url
                ));
            }
        }
        p
    }

    fn resolve_secrets(&mut self, env: &BTreeMap<String, String>) -> Vec<String> {
        let mut p = Vec::new();
        let lookup = |name: &str| env.get(name).cloned();
        for (i, c) in self.clusters.iter_mut().enumerate() {
            c.password = if let Some(pw) = c.primary.password() {
                Some(Sensitive::new(pw))
            } else if let Some(file) = &c.password_file {
                match resolve_secret(&format!("cluster[{i}].password"), None, Some(file)) {
                    Ok(s) => s,
                    Err(e) => {
                        p.push(e);
                        None
                    }
                }
            } else {
                lookup(&c.password_env).map(Sensitive::new)
            };
        }
        for (i, s) in self.sink.influxdb.iter_mut().enumerate() {
            s.token = match (&s.token_env, &s.token_file) {
                (Some(name), None) => match lookup(name) {
                    Some(v) => Some(Sensitive::new(v)),
                    None => {
                        p.push(format!(
                            "sink.influxdb[{i}].token_env: environment variable {name} is not set; export it or use token_file"
                        ));
                        None
                    }
                },
                (_, Some(file)) => {
                    match resolve_secret(&format!("sink.influxdb[{i}].token"), None, Some(file)) {
                        Ok(t) => t,
                        Err(e) => {
                            p.push(e);
                            None
                        }
                    }
                }
                (None, None) => None,
            };
            if s.api == InfluxApi::V2 && s.token.is_none() {
                p.push(format!(
                    "sink.influxdb[{i}]: api = \"v2\" needs a token; set token_env or token_file"
                ));
            }
        }
        for (i, w) in self.webhooks.iter_mut().enumerate() {
            w.hmac_secret = match (&w.hmac_secret_env, &w.hmac_secret_file) {
                (Some(name), None) => match lookup(name) {
                    Some(v) => Some(Sensitive::new(v)),
                    None => {
                        p.push(format!(
                            "webhook[{i}].hmac_secret_env: environment variable {name} is not set; export it or remove the key"
                        ));
                        None
                    }
                },
                (_, Some(file)) => {
                    match resolve_secret(&format!("webhook[{i}].hmac_secret"), None, Some(file)) {
                        Ok(t) => t,
                        Err(e) => {
                            p.push(e);
                            None
                        }
                    }
                }
                (None, None) => None,
            };
        }
        p
    }

    /// The resolved config as TOML, secrets as `***` (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        let mut c = self.clone();
        for (k, v) in c.kafka.properties.iter_mut() {
            if is_secret_property(k) {
                *v = "***".into();
            }
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot print config: {e}"))
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}{}", self.kafka.topic_prefix, suffix)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterConfig> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// librdkafka properties that carry credentials.
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password") || k.contains("secret") || k.ends_with(".key") || k.contains("token")
}

/// MySQL identifiers we interpolate into SQL (database, table): only what needs no quoting.
pub fn validate_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        return Err("may contain only letters, digits, '_' and '$'".into());
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err("must not be all digits".into());
    }
    Ok(())
}

/// Applies `MILLILAG_A__B__C=value` to `a.b.c`. Variables without `__` (like
/// `MILLILAG_DB_PASSWORD`) are not overrides. Values parse as TOML where they can ("true",
/// "5", "[\"1s\"]"), otherwise they are strings ("10ms", "127.0.0.1:9092").
fn apply_env_overrides(
    tree: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        set_path(tree, &path, value).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node: &mut toml::Value = tree
        .entry(parents.first().unwrap_or(last).clone())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if parents.is_empty() {
        *node = value;
        return Ok(());
    }
    for seg in parents[1..].iter().chain(std::iter::once(last)) {
        let is_last = std::ptr::eq(seg, last);
        node = match node {
            toml::Value::Table(t) => {
                if is_last {
                    t.insert(seg.clone(), value);
                    return Ok(());
                }
                t.entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("{seg:?} is not an index into an array"))?;
                let len = a.len();
                let slot = a
                    .get_mut(idx)
                    .ok_or(format!("index {idx} is beyond the {len} items in the file"))?;
                if is_last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => return Err(format!("cannot set {seg:?} inside a plain value")),
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests;
