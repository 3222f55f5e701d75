//! `millilag processor` against real services: Tansu, VictoriaMetrics, InfluxDB 1.6,
//! carbon-cache, Alertmanager. Each test produces `replica-delay` records itself (hand-made,
//! with event times it chooses, so every expected value can be computed by hand), runs the
//! processor in-process through `run(config, shutdown)` and reads the results back from the
//! real sinks and topics.

use crate::common::{init_logging, unique};
use hmac::{Hmac, Mac};
use millilag_core::clock::now_us;
use millilag_core::events::{
    DeadLetter, DelayWindow, MeasureMethod, MeasureStatus, Record, ReplicaDelay,
};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::{shutdown_pair, ShutdownTrigger};
use millilag_core::Config;
use millilag_harness::alertmanager::{Alertmanager, WebhookReceiver};
use millilag_harness::carbon::Carbon;
use millilag_harness::influx::Influx;
use millilag_harness::victoria::Victoria;
use millilag_harness::{free_port, wait_for, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
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

    async fn send_bytes(&self, key: &[u8], payload: &[u8]) -> i64 {
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
        let (brokers, group, topic) = (
            self.broker.brokers(),
            self.group.clone(),
            self.topic(topics::REPLICA_DELAY),
        );
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", brokers)
                .set("group.id", group)
                .create()
                .ok()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
            match got.find_partition(&topic, 0)?.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            }
        })
        .await
        .unwrap()
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

    async fn metrics(&self) -> String {
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
async fn produce_known_input(env: &Env, t: i64) -> Vec<i64> {
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
fn fields(w: &DelayWindow) -> BTreeMap<&'static str, f64> {
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
async fn vm_points(vm: &Victoria) -> BTreeMap<(String, String, i64), f64> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_known_records_yield_the_exact_points_in_victoriametrics_v1_and_v2() {
    let (env, vm) = tokio::join!(Env::start(), Victoria::start());
    let vm = vm.expect("VictoriaMetrics");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{vm}"
api = "v2"
org = "ops"
bucket = "millilag"
token_env = "VM_TOKEN"

[[sink.influxdb]]
url = "{vm}"
api = "v1"
database = "millilag"

[[sink.graphite]]
address = "{graphite}"
prefix = "millilag"
"#,
            vm = vm.url(),
            graphite = vm.graphite_address()
        ),
        &[("VM_TOKEN", "not-checked")],
    );
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second();
    let offsets = produce_known_input(&env, t).await;

    // Kafka sink: A then B, exactly as computed by hand.
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
            .await
            .expect("delay-window records")
            .unwrap();
        assert_eq!(m.key(), Some(format!("main/{REPLICA}").as_bytes()));
        got.push(DelayWindow::decode(m.payload().unwrap()).unwrap());
    }
    assert_eq!(got[0], expected_a(t));
    assert_eq!(
        (got[1].window_start_us, got[1].count, got[1].missing),
        (t + S, 2, 0)
    );

    // VictoriaMetrics, through /api/v2/write (no db label) and /write (db="millilag").
    let want = fields(&expected_a(t));
    let ms = t / 1000;
    let points = wait_for(
        "window A in VictoriaMetrics",
        Duration::from_secs(30),
        || async {
            let p = vm_points(&vm).await;
            let complete = ["", "millilag"].iter().all(|db| {
                want.keys()
                    .all(|f| p.contains_key(&(db.to_string(), f.to_string(), ms)))
                    && p.contains_key(&(db.to_string(), "count".into(), ms + 1000))
            });
            complete.then_some(p)
        },
    )
    .await
    .unwrap();
    for db in ["", "millilag"] {
        for (f, v) in &want {
            assert_eq!(
                points[&(db.to_string(), f.to_string(), ms)],
                *v,
                "{f} (db={db:?})"
            );
        }
        assert_eq!(points[&(db.to_string(), "count".into(), ms + 1000)], 2.0);
        let timestamps: std::collections::BTreeSet<i64> = points
            .keys()
            .filter(|(d, f, _)| d == db && f == "count")
            .map(|(_, _, t)| *t)
            .collect();
        assert_eq!(
            timestamps,
            [ms, ms + 1000].into(),
            "only closed windows, stamped with their start"
        );
    }

    // Graphite plaintext into VictoriaMetrics' Graphite listener: path per field, seconds.
    for (f, v) in &want {
        let name = format!("millilag.main.db2_3306.1s.{f}");
        let got = wait_for(&name, Duration::from_secs(30), || async {
            let series = vm.export(&format!("{{__name__=\"{name}\"}}")).await.ok()?;
            let p = series.first()?.points();
            p.iter().find(|(t, _)| *t == ms).map(|(_, v)| *v)
        })
        .await
        .unwrap();
        assert_eq!(got, *v, "{name}");
    }

    // Counted in the metrics: one duplicate, one late record.
    assert_eq!(p.metric("millilag_processor_duplicates_total ").await, 1.0);
    assert_eq!(
        p.metric("millilag_processor_late_records_total{window=\"1s\"} ")
            .await,
        1.0
    );
    // Offsets: everything before window C is flushed; C's first record is still held.
    let c_first = *offsets.last().unwrap();
    let committed = wait_for("commit up to window C", Duration::from_secs(20), || async {
        env.committed().await.filter(|o| *o == c_first)
    })
    .await;
    assert_eq!(committed.unwrap(), c_first);
    p.stop().await;
    assert_eq!(
        env.committed().await,
        Some(c_first),
        "clean stop commits, never past the open window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_writes_influxdb_1x_and_carbon_with_the_right_values_and_timestamps() {
    let (env, influx, carbon) =
        tokio::join!(Env::start(), Influx::start("millilag"), Carbon::start());
    let (influx, carbon) = (influx.expect("InfluxDB"), carbon.expect("carbon"));
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"

[[sink.graphite]]
address = "{}"
prefix = "millilag"
"#,
            influx.url(),
            carbon.address()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    produce_known_input(&env, t).await;
    let want = expected_a(t);

    let rows = wait_for("windows in InfluxDB", Duration::from_secs(30), || async {
        let rows = influx
            .query(&format!(
                "SELECT * FROM replica_delay WHERE replica = '{REPLICA}' AND \"window\" = '1s'"
            ))
            .await
            .ok()?;
        (rows.len() >= 2).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let a = &rows[0];
    assert_eq!(a["time"], t / 1000, "timestamp = window start, ms");
    assert_eq!(a["cluster"], "main");
    for (f, v) in fields(&want) {
        assert_eq!(a[f].as_f64(), Some(v), "{f}");
    }
    assert_eq!(rows[1]["time"], t / 1000 + 1000);
    assert_eq!(rows[1]["count"], 2);

    let path = "millilag.main.db2_3306.1s";
    let (from, until) = (t / S - 5, t / S + 5);
    for (f, v) in fields(&want) {
        let pts = wait_for(
            &format!("{path}.{f} in whisper"),
            Duration::from_secs(30),
            || async {
                let pts = carbon.fetch(&format!("{path}.{f}"), from, until).ok()??;
                pts.iter().any(|(ts, _)| *ts == t / S).then_some(pts)
            },
        )
        .await
        .unwrap();
        let at = pts.iter().find(|(ts, _)| *ts == t / S).unwrap();
        assert_eq!(at.1, v, "{f}");
    }
    let count = wait_for("B in whisper", Duration::from_secs(30), || async {
        let pts = carbon.fetch(&format!("{path}.count"), from, until).ok()??;
        pts.iter().find(|(ts, _)| *ts == t / S + 1).map(|p| p.1)
    })
    .await
    .unwrap();
    assert_eq!(count, 2.0);
    p.stop().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sink_outage_loses_nothing_and_offsets_wait_for_the_sink() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let mut influx = influx.expect("InfluxDB");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s"
max_pending_windows = 3"#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
timeout = "1s"
"#,
            influx.url()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    let mut firsts = Vec::new();
    for w in 0..5 {
        firsts.push(produce_window(&env, t, w).await);
    }
    // Windows 0..=3 closed and written; 4 open.
    wait_for(
        "windows 0..=3 in InfluxDB",
        Duration::from_secs(30),
        || async { (influx_counts(&influx).await.len() == 4).then_some(()) },
    )
    .await
    .unwrap();

    influx.kill();
    for w in 5..10 {
        firsts.push(produce_window(&env, t, w).await);
    }
    // Windows 4..=8 are closed but cannot be written. While the sink keeps failing, the
    // committed offset stays at or before window 4's first record.
    let failures = "millilag_processor_sink_failures_total{sink=\"influxdb[0]\"} ";
    let mut checks = 0;
    while p.metric(failures).await < 3.0 {
        if let Some(c) = env.committed().await {
            assert!(
                c <= firsts[4],
                "committed {c} passed unflushed window 4 ({})",
                firsts[4]
            );
        }
        checks += 1;
        assert!(checks < 600, "the sink never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Windows 4.. close as their records are consumed (on a busy box, after the failures);
    // consumption pauses once more than max_pending_windows (3) wait, so at least 4 do.
    wait_for(
        "more than 3 windows pending",
        Duration::from_secs(30),
        || async { (p.metric("millilag_processor_pending_windows ").await >= 4.0).then_some(()) },
    )
    .await
    .unwrap();
    // More than max_pending_windows wait: consumption is paused (bounded memory).
    let paused = wait_for("consumption paused", Duration::from_secs(10), || async {
        (p.metric("millilag_processor_paused ").await == 1.0).then_some(())
    })
    .await;
    assert!(paused.is_ok());
    if let Some(c) = env.committed().await {
        assert!(c <= firsts[4], "committed {c} passed unflushed window 4");
    }

    influx
        .restart()
        .await
        .expect("InfluxDB back on the same port and data");
    let counts = wait_for(
        "windows 0..=8 in InfluxDB",
        Duration::from_secs(60),
        || async {
            let c = influx_counts(&influx).await;
            (c.len() >= 9).then_some(c)
        },
    )
    .await
    .unwrap();
    let want: Vec<(i64, i64)> = (0..9).map(|w| (t / 1000 + w * 1000, 10)).collect();
    assert_eq!(counts, want, "every window exactly once, complete");
    let resumed = wait_for("consumption resumed", Duration::from_secs(10), || async {
        (p.metric("millilag_processor_paused ").await == 0.0).then_some(())
    })
    .await;
    assert!(resumed.is_ok());
    let committed = wait_for(
        "commit catches up to window 9",
        Duration::from_secs(20),
        || async { env.committed().await.filter(|c| *c == firsts[9]) },
    )
    .await;
    assert_eq!(committed.unwrap(), firsts[9]);
    p.stop().await;
}

fn alert_config(env: &Env, am: &Alertmanager, receiver: &WebhookReceiver) -> Config {
    env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        &format!(
            r#"
[[alert]]
name = "lag-high"
when = "p99 > 100ms"
window = "1s"
for = "2s"
resolve_for = "1s"
severity = "critical"
labels = {{ team = "dba" }}

[[webhook]]
url = "{}"
format = "alertmanager"

[[webhook]]
url = "{}"
format = "json"
"#,
            am.alerts_url(),
            receiver.url("/json")
        ),
        &[],
    )
}

/// Records for window `w` with every delay `d`.
async fn produce_level(env: &Env, t: i64, w: i64, d: i64) {
    for i in 0..5 {
        env.send(&delay(w * 5 + i + 1, t + w * S + i * 200 * MS, d))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_alert_reaches_alertmanager_resolves_and_restart_sends_no_duplicate() {
    let env = Env::start().await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let am = Alertmanager::start(&receiver.url("/am"))
        .await
        .expect("Alertmanager");
    let config = alert_config(&env, &am, &receiver);
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    // Windows 0, 1, 2 at 200 ms: holding from window 0, `for = 2s` is met at the end of
    // window 1, which closes when window 2 starts.
    for w in 0..3 {
        produce_level(&env, t, w, 200 * MS).await;
    }
    let mut json_posts = Vec::new();
    let mut am_posts = Vec::new();
    let first = receiver
        .next(Duration::from_secs(30))
        .await
        .expect("a notification");
    let route = |r: millilag_harness::alertmanager::Received,
                 json_posts: &mut Vec<serde_json::Value>,
                 am_posts: &mut Vec<serde_json::Value>| {
        if r.path == "/json" {
            json_posts.push(r.json());
        } else {
            am_posts.push(r.json());
        }
    };
    route(first, &mut json_posts, &mut am_posts);
    while am_posts.is_empty() || json_posts.is_empty() {
        let r = receiver
            .next(Duration::from_secs(30))
            .await
            .expect("both deliveries");
        route(r, &mut json_posts, &mut am_posts);
    }
    let am_firing = &am_posts[0];
    assert_eq!(am_firing["status"], "firing");
    let a = &am_firing["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "lag-high");
    assert_eq!(a["labels"]["replica"], REPLICA);
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["team"], "dba");
    assert_eq!(a["annotations"]["value"], "200.0ms");
    assert_eq!(json_posts[0]["state"], "firing");
    assert_eq!(json_posts[0]["since_us"], t);

    // Restart mid-incident: the new processor reads alert-state and stays quiet.
    p.stop().await;
    let p = Running::start(alert_config(&env, &am, &receiver));
    for w in 3..5 {
        produce_level(&env, t, w, 300 * MS).await;
    }
    // Recovery: window 5 is fast; it closes when window 6 starts and resolves the alert.
    for w in 5..7 {
        produce_level(&env, t, w, MS).await;
    }
    let mut resolved_am = None;
    let mut resolved_json = None;
    while resolved_am.is_none() || resolved_json.is_none() {
        let r = receiver
            .next(Duration::from_secs(30))
            .await
            .expect("the resolve");
        let v = r.json();
        if r.path == "/json" {
            assert_eq!(
                v["state"], "resolved",
                "no second firing after the restart: {v}"
            );
            resolved_json = Some(v);
        } else {
            assert_eq!(
                v["status"], "resolved",
                "no second firing after the restart: {v}"
            );
            resolved_am = Some(v);
        }
    }
    assert_eq!(resolved_json.unwrap()["since_us"], t, "the same incident");
    let am_resolved = resolved_am.unwrap();
    assert_eq!(am_resolved["alerts"][0]["labels"]["alertname"], "lag-high");
    assert_eq!(
        p.metric("millilag_processor_alert_firing{rule=\"lag-high\"} ")
            .await,
        0.0
    );
    p.stop().await;
    assert!(
        receiver.drain().await.is_empty(),
        "nothing after the resolve"
    );
}

/// A receiver's check of `X-Millilag-Timestamp` and `X-Millilag-Signature` (README, "Webhook
/// signatures"): HMAC-SHA256 over "<timestamp>.<body>", and a timestamp within 5 minutes.
fn verify_signature(
    key: &[u8],
    r: &millilag_harness::alertmanager::Received,
    now_s: u64,
) -> Result<(), &'static str> {
    let ts = r
        .headers
        .get("x-millilag-timestamp")
        .ok_or("no timestamp")?;
    let sig = r
        .headers
        .get("x-millilag-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or("no signature")?;
    let sig = hex::decode(sig).map_err(|_| "signature is not hex")?;
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).map_err(|_| "key")?;
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let ts: u64 = ts.parse().map_err(|_| "timestamp is not a number")?;
    if ts.abs_diff(now_s) > 300 {
        return Err("stale timestamp");
    }
    Ok(())
}

/// Also: a receiver that fails twice gets the same signed body a third time (retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_webhook_signature_verifies_with_the_shared_secret() {
    let env = Env::start().await;
    let receiver = WebhookReceiver::start_failing(2).await.unwrap();
    let secret = "s3cret-key";
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        &format!(
            r#"
[[alert]]
name = "any-lag"
when = "max > 1ms"
window = "1s"

[[webhook]]
url = "{}"
format = "json"
hmac_secret_env = "HOOK_SECRET"
"#,
            receiver.url("/hook")
        ),
        &[("HOOK_SECRET", secret)],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    env.send(&delay(1, t, 5 * MS)).await;
    env.send(&delay(2, t + S, 5 * MS)).await;
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        attempts.push(
            receiver
                .next(Duration::from_secs(30))
                .await
                .expect("a post"),
        );
    }
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    assert!(
        attempts.iter().all(|a| a.body == attempts[0].body),
        "same body on retry"
    );
    // Every attempt is signed afresh and verifies the way README's receiver does it.
    let now_s = (millilag_core::clock::now_us() / 1_000_000) as u64;
    for a in &attempts {
        verify_signature(secret.as_bytes(), a, now_s).expect("a valid signature");
    }
    let r = attempts.pop().unwrap();
    assert_eq!(
        verify_signature(b"other", &r, now_s),
        Err("bad signature"),
        "a wrong key does not verify"
    );
    assert_eq!(
        verify_signature(secret.as_bytes(), &r, now_s + 3600),
        Err("stale timestamp"),
        "an hour later the same request is a replay"
    );
    let mut tampered = r.clone();
    tampered.body.push(b' ');
    assert_eq!(
        verify_signature(secret.as_bytes(), &tampered, now_s),
        Err("bad signature")
    );
    assert_eq!(r.json()["rule"], "any-lag");
    assert_eq!(
        p.metric("millilag_processor_webhook_failures_total{webhook=\"webhook[0]\"} ")
            .await,
        2.0
    );
    assert_eq!(
        p.metric("millilag_processor_webhook_sent_total{webhook=\"webhook[0]\"} ")
            .await,
        1.0
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_advances_offset_past_poison_record() {
    let env = Env::start().await;
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        "",
        &[],
    );
    env.create_topics(&config).await;
    let dead = env.consumer(topics::DEAD_LETTER);
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second();
    let poison = env
        .send_bytes(b"main/db2:3306", b"\xC3\x01not a record")
        .await;
    env.send(&delay(1, t, 5 * MS)).await;
    let last = env.send(&delay(2, t + S, 5 * MS)).await;

    let m = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("dead-letter record")
        .unwrap();
    let d = DeadLetter::decode(m.payload().unwrap()).unwrap();
    assert_eq!(d.offset, poison);
    assert_eq!(d.service, "processor");
    assert_eq!(
        d.payload.as_deref().map(|b| &b[..]),
        Some(&b"\xC3\x01not a record"[..])
    );
    assert!(d.reason.contains("replica-delay"), "{}", d.reason);
    // ...and the processor went on.
    let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
        .await
        .expect("window after the poison record")
        .unwrap();
    let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
    assert_eq!((w.window_start_us, w.count), (t, 1));
    assert_eq!(
        p.metric("millilag_processor_decode_failures_total ").await,
        1.0
    );
    let committed = wait_for(
        "commit past the poison record",
        Duration::from_secs(20),
        || async { env.committed().await.filter(|c| *c == last) },
    )
    .await;
    assert!(committed.unwrap() > poison);
    p.stop().await;
}

/// Not a pass/fail check: prints how long a window takes to come out of the processor (its
/// `delay-window` record on Kafka) and to become readable in VictoriaMetrics, when records
/// arrive live (10 ms heartbeats, 1 s windows, lateness 100 ms). Measured from the window's
/// end, i.e. its last heartbeat; a heartbeat's own latency adds up to one window to that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_reports_end_to_end_latency_to_victoriametrics() {
    let (env, vm) = tokio::join!(Env::start(), Victoria::start());
    let vm = vm.expect("VictoriaMetrics");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "100ms""#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
"#,
            vm.url()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let seconds = 25;
    let stop = now_us() + (seconds + 5) * S;
    let producer = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let end = now_us() + seconds * S;
        let mut seq = 0;
        while now_us() < end {
            tick.tick().await;
            seq += 1;
            let t = now_us();
            env.send(&delay(seq, t, 2 * MS)).await;
        }
    };
    let kafka = async {
        let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
        while now_us() < stop {
            if let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_millis(200), windows.recv()).await
            {
                let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
                seen.entry(w.window_start_us / 1000).or_insert(now_us());
            }
        }
        seen
    };
    let watcher = async {
        let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
        while now_us() < stop {
            let p = vm_points(&vm).await;
            let at = now_us();
            for ((_, f, ms), _) in p {
                if f == "count" {
                    seen.entry(ms).or_insert(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    let (_, on_kafka, in_vm) = tokio::join!(producer, kafka, watcher);
    // VictoriaMetrics indexes a new series for several seconds; windows that ended before
    // the series first became readable measure that, not the steady state.
    let first_visible = in_vm.values().min().copied().unwrap_or(i64::MAX);
    let steady: BTreeMap<i64, i64> = in_vm
        .iter()
        .filter(|(ms, _)| *ms * 1000 + S >= first_visible)
        .map(|(k, v)| (*k, *v))
        .collect();
    for (what, seen) in [
        ("delay-window record on Kafka (processor output)", on_kafka),
        (
            "point readable in VictoriaMetrics /api/v1/export, series already indexed",
            steady,
        ),
        (
            "point readable in VictoriaMetrics /api/v1/export, including the new-series wait",
            in_vm,
        ),
    ] {
        let mut lat: Vec<i64> = seen.iter().map(|(ms, at)| at - (ms * 1000 + S)).collect();
        lat.sort_unstable();
        if lat.is_empty() {
            println!("latency to {what}: no windows observed");
            continue;
        }
        let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
        println!(
            "latency from window end to {what}, {} windows: p50 {} ms, p99 {} ms",
            lat.len(),
            q(0.5) / 1000,
            q(0.99) / 1000,
        );
    }
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_binary_stops_cleanly_on_sigterm_and_commits_the_open_window() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_text = format!(
        r#"
[kafka]
brokers = "{}"
topic_prefix = "{}"
partitions = 1

[reader]
timeout = "1s"

[processor]
group = "{}"
listen = "127.0.0.1:{port}"
idle_close = "1h"
windows = ["1s"]
allowed_lateness = "0s"
"#,
        env.broker.brokers(),
        env.prefix,
        env.group
    );
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, &config_text).unwrap();
    let config = Config::from_toml_with_env(&config_text, "test", Vec::new()).unwrap();
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millilag"));
    cmd.arg("processor").arg("--config").arg(&path);
    let mut guard =
        millilag_harness::process::Guard::spawn("processor", cmd, &dir.path().join("p.log"))
            .unwrap();
    let ready = wait_for("processor /readyz", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_ok(), "{}", guard.log_tail(20));

    let t = base_second();
    env.send(&delay(1, t, 5 * MS)).await;
    let open = env.send(&delay(2, t + S, 5 * MS)).await;
    let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
        .await
        .expect("the first window")
        .unwrap();
    let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
    assert_eq!((w.window_start_us, w.count), (t, 1));

    guard.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || (guard.wait(), guard))
        .await
        .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "{}",
        status.1.log_tail(20)
    );
    assert_eq!(
        env.committed().await,
        Some(open),
        "committed up to the open window's first record, synchronously before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_restart_replays_without_re_emitting_flushed_windows() {
    let env = Env::start().await;
    let windows_cfg = r#"windows = ["1s", "10s"]
allowed_lateness = "0s""#;
    let config = env.config(windows_cfg, "", &[]);
    env.create_topics(&config).await;
    let out = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second() / (10 * S) * (10 * S);
    // Three seconds of heartbeats: 1 s windows 0 and 1 close; window 2 and the 10 s window stay
    // open, so the committed offset stays at the very first record.
    for w in 0..3 {
        produce_window(&env, t, w).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), out.recv())
            .await
            .expect("1 s windows")
            .unwrap();
        got.push(DelayWindow::decode(m.payload().unwrap()).unwrap());
    }
    p.stop().await;
    assert_eq!(
        env.committed().await,
        Some(0),
        "the 10 s window holds the first record"
    );

    // The restarted processor re-reads everything from offset 0, skips the flushed 1 s windows
    // and rebuilds the open ones completely.
    let p = Running::start(env.config(windows_cfg, "", &[]));
    for w in 3..10 {
        produce_window(&env, t, w).await;
    }
    env.send(&delay(1_000, t + 10 * S, MS)).await;
    let mut ten = None;
    while ten.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(30), out.recv())
            .await
            .expect("the 10 s window")
            .unwrap();
        let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
        if w.window_us == 10 * S {
            ten = Some(w);
        } else {
            got.push(w);
        }
    }
    let ten = ten.unwrap();
    assert_eq!((ten.window_start_us, ten.count, ten.missing), (t, 100, 0));
    let starts: Vec<i64> = got.iter().map(|w| (w.window_start_us - t) / S).collect();
    let want: Vec<i64> = (0..10).collect();
    // 1 s windows 0..=9, each exactly once, window 2 rebuilt complete.
    let mut sorted = starts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "emitted: {starts:?}");
    assert!(got.iter().all(|w| w.count == 10), "{got:?}");
    assert!(p.metric("millilag_processor_replayed_records_total ").await >= 20.0);
    p.stop().await;
}

/// DESIGN §5: a processor is killed mid-stream (SIGKILL: no flush, no commit) and another one
/// in the same group takes over from the committed offset: every window reaches the sink
/// exactly once and complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_failover_after_sigkill_rebuilds_windows_from_kafka() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let influx = influx.expect("InfluxDB");
    let dir = tempfile::tempdir().unwrap();
    let config_for = |port: u16| {
        format!(
            r#"
[kafka]
brokers = "{}"
topic_prefix = "{}"
partitions = 1

[reader]
timeout = "1s"

[processor]
group = "{}"
listen = "127.0.0.1:{port}"
idle_close = "1h"
windows = ["1s"]
allowed_lateness = "0s"

[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
"#,
            env.broker.brokers(),
            env.prefix,
            env.group,
            influx.url()
        )
    };
    let start = |name: &str| {
        let port = free_port();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config_for(port)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millilag"));
        cmd.arg("processor").arg("--config").arg(&path);
        millilag_harness::process::Guard::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
            .unwrap()
    };
    let config = Config::from_toml_with_env(&config_for(free_port()), "test", Vec::new()).unwrap();
    env.create_topics(&config).await;

    let t = base_second();
    let mut a = start("processor-a");
    for w in 0..5 {
        produce_window(&env, t, w).await;
    }
    wait_for("A wrote windows 0..=3", Duration::from_secs(30), || async {
        (influx_counts(&influx).await.len() == 4).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", a.log_tail(20)));
    a.kill();
    for w in 5..10 {
        produce_window(&env, t, w).await;
    }
    let b = start("processor-b");
    let counts = wait_for("B wrote windows 0..=8", Duration::from_secs(60), || async {
        let c = influx_counts(&influx).await;
        (c.len() >= 9).then_some(c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", b.log_tail(20)));
    let want: Vec<(i64, i64)> = (0..9).map(|w| (t / 1000 + w * 1000, 10)).collect();
    assert_eq!(counts, want, "every window exactly once, complete");
}
