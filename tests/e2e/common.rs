//! Helpers shared by the end-to-end tests.

use millilag_core::events::ReplicaDelay;
use millilag_core::shutdown::{shutdown_pair, ShutdownTrigger};
use millilag_core::Config;
use millilag_harness::{free_port, Broker, Cluster};
use mysql_async::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        millilag_core::clock::now_us() % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Logs from the services under test, at TEST_LOG level (default warn).
#[allow(dead_code)]
pub fn init_logging() {
    millilag_core::telemetry::init_logging(&millilag_core::config::LogConfig {
        format: millilag_core::config::LogFormat::Pretty,
        level: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    });
}

/// A MariaDB cluster and a broker, and configs pointing at them.
#[allow(dead_code)]
pub struct Env {
    pub cluster: Cluster,
    pub broker: Broker,
    pub prefix: String,
}

#[allow(dead_code)]
impl Env {
    pub async fn start(replicas: usize) -> Env {
        init_logging();
        let (cluster, broker) = tokio::join!(Cluster::start(replicas), Broker::start());
        Env {
            cluster: cluster.expect("MariaDB cluster"),
            broker: broker.expect("Tansu broker"),
            prefix: format!("{}.", unique("t")),
        }
    }

    /// A complete config for this environment; `extra` is appended (later keys of a section
    /// cannot repeat earlier ones, so sections here only set what every test needs).
    pub fn config_toml(&self, writer: &str, reader: &str, extra: &str) -> String {
        let replicas: Vec<String> = self
            .cluster
            .replicas
            .iter()
            .map(|r| format!("\"{}\"", r.url()))
            .collect();
        format!(
            r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1

[[cluster]]
name = "main"
primary = "{primary}"
replicas = [{replicas}]

[writer]
listen = "127.0.0.1:{wport}"
{writer}

[reader]
listen = "127.0.0.1:{rport}"
group = "{group}"
{reader}

{extra}
"#,
            brokers = self.broker.brokers(),
            prefix = self.prefix,
            primary = self.cluster.primary.url(),
            replicas = replicas.join(", "),
            wport = free_port(),
            rport = free_port(),
            group = unique("readers"),
        )
    }

    pub fn config(&self, writer: &str, reader: &str, extra: &str) -> Config {
        Config::from_toml_with_env(&self.config_toml(writer, reader, extra), "test", Vec::new())
            .expect("test config is valid")
    }

    pub fn topic(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    /// A consumer of `suffix` from the beginning, in a fresh group.
    pub fn consumer(&self, suffix: &str) -> StreamConsumer {
        observer(&self.broker, &self.topic(suffix))
    }
}

/// The next record of type R within `timeout`, with its offset; None on timeout.
#[allow(dead_code)]
pub async fn next_record<R: millilag_core::events::Record>(
    c: &StreamConsumer,
    timeout: Duration,
) -> Option<(R, i64)> {
    let m = tokio::time::timeout(timeout, c.recv()).await.ok()?.ok()?;
    Some((R::decode(m.payload()?).expect("record decodes"), m.offset()))
}

/// Create every millilag topic for `config` up front, so observers can subscribe before the
/// services start (librdkafka only re-reads metadata for missing topics every few minutes).
#[allow(dead_code)]
/// Sessions the service user holds on a server.
pub async fn service_sessions(server: &millilag_harness::mariadb::Server) -> i64 {
    let mut c = server.admin().await.unwrap();
    c.query_first(format!(
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{}'",
        millilag_harness::mariadb::USER
    ))
    .await
    .unwrap()
    .unwrap()
}

/// A consumer of `topic` from the beginning, in a fresh group, committing nothing.
pub fn observer(broker: &Broker, topic: &str) -> StreamConsumer {
    let c: StreamConsumer = broker
        .client_config()
        .set("group.id", unique("observer"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // Observers need no low latency; a long fetch wait keeps Tansu's CPU for the services.
        .set("fetch.wait.max.ms", "50")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    c
}

pub async fn create_topics(config: &Config) {
    use millilag_core::kafka::topics::*;
    millilag_core::kafka::ensure_topics(
        config,
        &[
            HEARTBEAT_SET,
            REPLICA_DELAY,
            DELAY_WINDOW,
            ALERT,
            ALERT_STATE,
            PROCESSOR_STATE,
            DEAD_LETTER,
        ],
    )
    .await
    .expect("topics created");
}

/// GET http://addr/path with a bare HTTP/1.0 request: (status, body). Enough for our own
/// /metrics and /readyz without an HTTP client dependency in the tests.
#[allow(dead_code)]
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of a metric line that starts with `prefix` in Prometheus text.
#[allow(dead_code)]
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Writer and reader running in this process against `env`.
#[allow(dead_code)]
pub struct Pipeline {
    stop: ShutdownTrigger,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Pipeline {
    pub fn start(config: &millilag_core::Config, writer: bool, reader: bool) -> Pipeline {
        let (stop, token) = shutdown_pair();
        let mut tasks = Vec::new();
        if writer {
            tasks.push(tokio::spawn(millilag_producers::writer::run(
                config.clone(),
                token.clone(),
            )));
        }
        if reader {
            tasks.push(tokio::spawn(millilag_processors::reader::run(
                config.clone(),
                token,
            )));
        }
        Pipeline { stop, tasks }
    }

    /// The processor alone.
    pub fn processor(config: &millilag_core::Config) -> Pipeline {
        let (stop, token) = shutdown_pair();
        let tasks = vec![tokio::spawn(millilag_processors::processor::run(
            config.clone(),
            token,
        ))];
        Pipeline { stop, tasks }
    }

    pub async fn stop(self) {
        self.stop.trigger();
        for t in self.tasks {
            t.await.unwrap().unwrap();
        }
    }

    /// Gone at once, as under SIGKILL: no flush, no commit, sessions dropped.
    pub fn kill(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Every replica-delay record, collected in the background.
#[allow(dead_code)]
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<ReplicaDelay>>>);

impl Collected {
    pub fn start(env: &Env) -> (Collected, JoinHandle<()>) {
        let c = Collected::default();
        let consumer = env.consumer("replica-delay");
        let sink = c.clone();
        let h = tokio::spawn(async move {
            while let Some((r, _)) =
                next_record::<ReplicaDelay>(&consumer, Duration::from_secs(3600)).await
            {
                sink.0.lock().unwrap().push(r);
            }
        });
        (c, h)
    }

    pub fn push(&self, r: ReplicaDelay) {
        self.0.lock().unwrap().push(r);
    }

    pub fn snapshot(&self) -> Vec<ReplicaDelay> {
        self.0.lock().unwrap().clone()
    }

    /// Wait until `pred` holds for the records so far (a deadline, not a pause).
    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[ReplicaDelay]) -> bool,
    ) -> Vec<ReplicaDelay> {
        millilag_harness::wait_for(what, timeout, || async {
            let s = self.snapshot();
            pred(&s).then_some(s)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}
