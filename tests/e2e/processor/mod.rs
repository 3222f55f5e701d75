//! `millilag processor` against real services: Tansu, VictoriaMetrics, InfluxDB 1.6,
//! carbon-cache, Alertmanager. Each test produces `replica-delay` records itself (hand-made,
//! with event times it chooses, so every expected value can be computed by hand), runs the
//! processor in-process through `run(config, shutdown)` and reads the results back from the
//! real sinks and topics.

use crate::common::{init_logging, unique};
use millilag_core::clock::now_us;
use millilag_core::events::{DelayWindow, MeasureMethod, MeasureStatus, Record, ReplicaDelay};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::{shutdown_pair, ShutdownTrigger};
use millilag_core::Config;
use millilag_harness::influx::Influx;
use millilag_harness::victoria::Victoria;
use millilag_harness::{free_port, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::BTreeMap;
use std::time::Duration;

pub(crate) const S: i64 = 1_000_000;
pub(crate) const MS: i64 = 1_000;
pub(crate) const REPLICA: &str = "db2:3306";

/// A broker, a topic prefix and a consumer group of our own.
pub(crate) struct Env {
    broker: Broker,
    prefix: String,
    group: String,
    producer: FutureProducer,
}

impl Env {
    pub(crate) async fn start() -> Env {
        init_logging();
        let broker = Broker::start().await.expect("Tansu");
        let prefix = format!("{}.", unique("p"));
        let producer = ClientConfig::new()
            .set("bootstrap.servers", broker.brokers())
            .set("linger.ms", "0")
            // A broker that went away fails the test within this, not after librdkafka's
            // default 5 minutes (seen once: Tansu gone a second into a test, cause unknown).
            .set("message.timeout.ms", "30000")
            .create()
            .unwrap();
        Env {
            broker,
            prefix,
            group: unique("processor"),
            producer,
        }
    }

    /// A processor config: 1 s windows plus `extra` (sinks, alerts, webhooks, [processor]
    /// keys must not be repeated: pass them in `processor`).
    pub(crate) fn config(&self, processor: &str, extra: &str, env: &[(&str, &str)]) -> Config {
        let text = format!(
            r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1

[reader]
timeout = "1s"

[processor]
group = "{group}"
listen = "127.0.0.1:{port}"
idle_close = "1h"
{processor}

{extra}
"#,
            brokers = self.broker.brokers(),
            prefix = self.prefix,
            group = self.group,
            port = free_port(),
        );
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(&text, "test", env).expect("test config is valid")
    }

    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    pub(crate) fn topic(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    pub(crate) async fn create_topics(&self, config: &Config) {
        kafka::ensure_topics(
            config,
            &[
                topics::REPLICA_DELAY,
                topics::DELAY_WINDOW,
                topics::ALERT,
                topics::ALERT_STATE,
                topics::PROCESSOR_STATE,
                topics::DEAD_LETTER,
            ],
        )
        .await
        .expect("topics");
    }

    /// Produce a record; returns its offset.
    pub(crate) async fn send(&self, r: &ReplicaDelay) -> i64 {
        self.send_bytes(r.key().as_bytes(), &r.encode().unwrap())
            .await
    }

    pub(crate) async fn send_bytes(&self, key: &[u8], payload: &[u8]) -> i64 {
        let topic = self.topic(topics::REPLICA_DELAY);
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&topic).key(key).payload(payload),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
        delivery.offset
    }

    /// What the processor's group committed on partition 0 (None before the first commit).
    pub(crate) async fn committed(&self) -> Option<i64> {
        // librdkafka's calls block: the runtime's other tasks move to its other thread.
        tokio::task::block_in_place(|| {
            self.broker
                .group_offsets(&self.group, &self.topic(topics::REPLICA_DELAY), 1)
                .ok()?[0]
                .1
        })
    }

    /// A consumer of `suffix` from the beginning.
    pub(crate) fn consumer(&self, suffix: &str) -> StreamConsumer {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.broker.brokers())
            .set("group.id", unique("observer"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        c.subscribe(&[&self.topic(suffix)]).unwrap();
        c
    }
}

/// The processor running in this test's runtime.
pub(crate) struct Running {
    trigger: ShutdownTrigger,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    listen: std::net::SocketAddr,
}

impl Running {
    pub(crate) fn start(config: Config) -> Running {
        let (trigger, shutdown) = shutdown_pair();
        let listen = config.processor.listen;
        let task = tokio::spawn(millilag_processors::processor::run(config, shutdown));
        Running {
            trigger,
            task,
            listen,
        }
    }

    /// SIGTERM, in-process: stop, flush, commit.
    pub(crate) async fn stop(self) {
        self.trigger.trigger();
        self.task
            .await
            .expect("processor task")
            .expect("processor ran cleanly");
    }

    /// Gone at once, as under SIGKILL: no flush, no commit (its consumer still leaves the
    /// group as it is dropped).
    pub(crate) fn kill(self) {
        self.task.abort();
    }

    pub(crate) async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.listen);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of one sample line of /metrics (`name{labels}` exactly), 0 when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }
}

/// A whole second two minutes back: inside every store's retention; the tests set
/// `idle_close = "1h"` so only event time closes these windows.
pub(crate) fn base_second() -> i64 {
    (now_us() / S) * S - 120 * S
}

pub(crate) fn delay(seq: i64, t: i64, delay_us: i64) -> ReplicaDelay {
    ReplicaDelay {
        cluster: "main".into(),
        replica: REPLICA.into(),
        primary: "db1:3306".into(),
        seq,
        committed_at_us: t,
        delay_us,
        uncertainty_us: 50,
        method: MeasureMethod::GtidWait,
        status: MeasureStatus::Ok,
        upper_bound: false,
        observed_at_us: t + delay_us,
        reader_id: "test".into(),
        queries: 1,
    }
}

pub(crate) fn with_status(mut r: ReplicaDelay, s: MeasureStatus) -> ReplicaDelay {
    r.status = s;
    r
}

/// The hand-computable input of `known_records_...`: window A = [t, t+1s) gets ok seqs 1..=10
/// (delays 2..=10 ms, seq 1 an upper bound of 900 ms), a duplicate of seq 5, a timeout (seq 11), no
/// seq 12, and seq 13 (20 ms) out of order but within lateness. Then a record for A after it
/// closed (late), window B = [t+1s, t+2s) with seqs 14 and 15, and seq 16 opening window C.
///
/// Expected A: count 11, missing 2 (timeout + gap at 12), min 2 ms, p50 6 ms, p90 10 ms,
/// p99 20 ms, max 20 ms (nearest rank over the 10 exact values), timeouts 1, upper_bounds 1,
/// duplicates 1. B: count 2, missing 0.
pub(crate) async fn produce_known_input(env: &Env, t: i64) -> Vec<i64> {
    let mut offsets = Vec::new();
    for seq in 1..=10 {
        let mut r = delay(seq, t + seq * 50 * MS, seq * MS);
        if seq == 1 {
            // A reader that looked late: counted, but not the replica's delay (the window has
            // exact ones), so neither its max nor its quantiles.
            r.upper_bound = true;
            r.delay_us = 900 * MS;
        }
        offsets.push(env.send(&r).await);
    }
    let mut dup = delay(5, t + 250 * MS, 7 * MS);
    dup.reader_id = "second-group".into();
    offsets.push(env.send(&dup).await);
    offsets.push(
        env.send(&with_status(
            delay(11, t + 600 * MS, 1_000 * MS),
            MeasureStatus::Timeout,
        ))
        .await,
    );
    offsets.push(env.send(&delay(14, t + 1_200 * MS, 3 * MS)).await);
    // Watermark t+0.7s (lateness 500 ms): A is still open for seq 13.
    offsets.push(env.send(&delay(13, t + 700 * MS, 20 * MS)).await);
    // Watermark t+1.1s: A closes.
    offsets.push(env.send(&delay(15, t + 1_600 * MS, 4 * MS)).await);
    // Late for A: counted, not applied.
    offsets.push(env.send(&delay(12, t + 650 * MS, 90 * MS)).await);
    // Watermark t+2.5s: B closes; C stays open.
    offsets.push(env.send(&delay(16, t + 3_000 * MS, MS)).await);
    offsets
}

pub(crate) fn expected_a(t: i64) -> DelayWindow {
    DelayWindow {
        cluster: "main".into(),
        replica: REPLICA.into(),
        window_start_us: t,
        window_us: S,
        count: 11,
        missing: 2,
        min_us: Some(2 * MS),
        p50_us: Some(6 * MS),
        p90_us: Some(10 * MS),
        p99_us: Some(20 * MS),
        max_us: Some(20 * MS),
        timeouts: 1,
        unreachable: 0,
        replication_stopped: 0,
        skipped: 0,
        upper_bounds: 1,
        duplicates: 1,
    }
}

/// The fields of a window as the sinks name them.
pub(crate) fn fields(w: &DelayWindow) -> BTreeMap<&'static str, f64> {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("count", Some(w.count)),
        ("missing", Some(w.missing)),
        ("min_us", w.min_us),
        ("p50_us", w.p50_us),
        ("p90_us", w.p90_us),
        ("p99_us", w.p99_us),
        ("max_us", w.max_us),
        ("timeouts", Some(w.timeouts)),
        ("unreachable", Some(w.unreachable)),
        ("replication_stopped", Some(w.replication_stopped)),
        ("skipped", Some(w.skipped)),
        ("upper_bounds", Some(w.upper_bounds)),
        ("duplicates", Some(w.duplicates)),
    ] {
        if let Some(v) = v {
            m.insert(k, v as f64);
        }
    }
    m
}

/// Every `replica_delay_*` point of REPLICA in VictoriaMetrics, by (db label, field, ms).
pub(crate) async fn vm_points(vm: &Victoria) -> BTreeMap<(String, String, i64), f64> {
    let series = vm
        .export(&format!(
            "{{__name__=~\"replica_delay_.*\",replica=\"{REPLICA}\",window=\"1s\"}}"
        ))
        .await
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for s in series {
        let name = s.metric.get("__name__").cloned().unwrap_or_default();
        let field = name.trim_start_matches("replica_delay_").to_string();
        let db = s.metric.get("db").cloned().unwrap_or_default();
        for (t, v) in s.points() {
            out.insert((db.clone(), field.clone(), t), v);
        }
    }
    out
}

/// Ten records per window, 100 ms apart; returns the offset of the window's first record.
pub(crate) async fn produce_window(env: &Env, t: i64, w: i64) -> i64 {
    let mut first = None;
    for i in 0..10 {
        let seq = w * 10 + i + 1;
        let o = env
            .send(&delay(seq, t + w * S + i * 100 * MS, (w + 1) * MS + i))
            .await;
        first.get_or_insert(o);
    }
    first.unwrap()
}

pub(crate) async fn influx_counts(influx: &Influx) -> Vec<(i64, i64)> {
    let rows = influx
        .query(&format!(
            "SELECT \"count\" FROM replica_delay WHERE replica = '{REPLICA}'"
        ))
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| (r["time"].as_i64().unwrap(), r["count"].as_i64().unwrap()))
        .collect()
}

mod alerts;
mod restarts;
mod sinks;
