//! The processor's sinks against a real InfluxDB 1.6 when it refuses writes: a refusal for good
//! (HTTP 404, database not found) is dead-lettered with its reason and never pauses the
//! processor, while an outage (InfluxDB killed, then restarted) is still retried and loses
//! nothing; and names line protocol must escape reach InfluxDB intact, while names no sink can
//! carry are dead-lettered where they enter. Uses the processor tests' helpers.

use crate::processor::{
    base_second, delay, influx_counts, produce_window, Env, Running, MS, REPLICA, S,
};
use millilag_core::events::{DeadLetter, DelayWindow, Record};
use millilag_core::kafka::topics;
use millilag_harness::influx::Influx;
use millilag_harness::wait_for;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// Dead letters read from `c` until `done` holds for them, by window start for those the
/// sinks made (partition -1) and by offset for records refused at ingest.
async fn dead_letters_until(
    c: &StreamConsumer,
    got: &mut Vec<DeadLetter>,
    what: &str,
    done: impl Fn(&[DeadLetter]) -> bool,
) {
    while !done(got) {
        let m = tokio::time::timeout(Duration::from_secs(60), c.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no dead letter within 60 s; got {got:?}"))
            .expect("dead-letter consumer");
        got.push(DeadLetter::decode(m.payload().expect("payload")).expect("a dead letter"));
    }
}

/// The window a sink's dead letter carries.
fn refused_window(d: &DeadLetter) -> DelayWindow {
    let payload = d.payload.as_deref().expect("the window as payload");
    DelayWindow::decode(payload).expect("payload is a delay-window record")
}

fn window_starts(letters: &[DeadLetter]) -> Vec<i64> {
    let mut starts: Vec<i64> = letters
        .iter()
        .map(|d| refused_window(d).window_start_us)
        .collect();
    starts.sort();
    starts.dedup();
    starts
}

/// 1 s windows, no lateness, and two sinks on the same InfluxDB: `influxdb[0]` writes to a
/// database that exists, `influxdb[1]` to one that does not (404, refused for good).
fn accepted_and_refused(env: &Env, influx: &Influx) -> millilag_core::Config {
    env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s"
max_pending_windows = 3"#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{url}"
api = "v1"
database = "millilag"
timeout = "1s"

[[sink.influxdb]]
url = "{url}"
api = "v1"
database = "no_such_db"
timeout = "1s"
"#,
            url = influx.url()
        ),
        &[],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_dead_letters_what_influxdb_refuses_and_loses_nothing_in_an_outage() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let mut influx = influx.expect("InfluxDB");
    let config = accepted_and_refused(&env, &influx);
    env.create_topics(&config).await;
    let dead = env.consumer(topics::DEAD_LETTER);
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second();
    let start = |w: i64| t + w * S;
    let mut firsts = Vec::new();
    for w in 0..6 {
        firsts.push(produce_window(&env, t, w).await);
    }

    // Windows 0..=4 close: more than max_pending_windows (3), so a sink stuck on its
    // refusals would have paused consumption and held every offset back.
    let mut letters = Vec::new();
    dead_letters_until(&dead, &mut letters, "windows 0..=4 refused", |l| {
        window_starts(l) == (0..5).map(start).collect::<Vec<_>>()
    })
    .await;
    for d in &letters {
        assert!(
            d.reason
                .starts_with("sink influxdb[1] rejected the point: POST /write: HTTP 404: ")
                && d.reason.contains("database not found"),
            "{}",
            d.reason
        );
        assert_eq!((d.partition, d.offset), (-1, -1), "made here, not read");
        assert_eq!(d.topic, env.topic(topics::DELAY_WINDOW));
        assert_eq!(d.service, "processor");
        assert_eq!(
            d.key.as_deref().map(|k| &k[..]),
            Some(b"main/db2:3306".as_slice())
        );
        let w = refused_window(d);
        assert_eq!((w.replica.as_str(), w.count), (REPLICA, 10));
    }
    let rejected = "millilag_processor_sink_rejected_total{sink=\"influxdb[1]\",status=\"404\"} ";
    assert_eq!(p.metric(rejected).await, 5.0);
    // The other sinks have every window.
    let counts = wait_for(
        "windows 0..=4 in InfluxDB",
        Duration::from_secs(30),
        || async {
            let c = influx_counts(&influx).await;
            (c.len() >= 5).then_some(c)
        },
    )
    .await
    .unwrap();
    let want = |n: i64| (0..n).map(|w| (start(w) / 1000, 10)).collect::<Vec<_>>();
    assert_eq!(counts, want(5));
    let mut published = BTreeMap::new();
    while published.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
            .await
            .expect("delay-window records")
            .unwrap();
        let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
        published.insert(w.window_start_us, w.count);
    }
    assert_eq!(published, (0..5).map(|w| (start(w), 10)).collect());
    // Offsets moved up to the open window 5.
    let committed = wait_for("commit up to window 5", Duration::from_secs(20), || async {
        env.committed().await.filter(|c| *c == firsts[5])
    })
    .await;
    assert_eq!(committed.unwrap(), firsts[5]);
    assert_eq!(p.metric("millilag_processor_paused ").await, 0.0);

    // An outage is not a refusal: both sinks retry, nothing is dead-lettered, offsets wait.
    influx.kill();
    for w in 6..11 {
        firsts.push(produce_window(&env, t, w).await);
    }
    for sink in ["influxdb[0]", "influxdb[1]"] {
        let failures = format!("millilag_processor_sink_failures_total{{sink=\"{sink}\"}} ");
        wait_for(
            &format!("{sink} retrying"),
            Duration::from_secs(30),
            || async { (p.metric(&failures).await >= 2.0).then_some(()) },
        )
        .await
        .unwrap();
    }
    if let Some(c) = env.committed().await {
        assert!(c <= firsts[5], "committed {c} passed unflushed window 5");
    }
    influx
        .restart()
        .await
        .expect("InfluxDB back on the same port and data");
    let counts = wait_for(
        "windows 0..=9 in InfluxDB",
        Duration::from_secs(60),
        || async {
            let c = influx_counts(&influx).await;
            (c.len() >= 10).then_some(c)
        },
    )
    .await
    .unwrap();
    assert_eq!(counts, want(10), "every window exactly once, complete");
    dead_letters_until(&dead, &mut letters, "windows 5..=9 refused", |l| {
        window_starts(l) == (0..10).map(start).collect::<Vec<_>>()
    })
    .await;
    for d in &letters {
        assert!(d.reason.contains("HTTP 404"), "only refusals: {}", d.reason);
    }
    let committed = wait_for(
        "commit up to window 10",
        Duration::from_secs(20),
        || async { env.committed().await.filter(|c| *c == firsts[10]) },
    )
    .await;
    assert_eq!(committed.unwrap(), firsts[10]);
    assert_eq!(p.metric(rejected).await, 10.0);
    p.stop().await;
}

/// A refused window whose dead letter cannot be written either (no dead-letter topic) is given
/// up after a few refusals and counted: it does not hold its sink, and so every offset, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_windows_without_a_dead_letter_topic_are_dropped_counted_and_hold_nothing() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let influx = influx.expect("InfluxDB");
    let mut config = accepted_and_refused(&env, &influx);
    // Every topic but dead-letter, and librdkafka told to wait 3 s, not 30, for a missing
    // topic to appear before it fails a write.
    config.kafka.create_topics = false;
    config
        .kafka
        .properties
        .insert("topic.metadata.propagation.max.ms".into(), "3000".into());
    let names: Vec<String> = [
        topics::REPLICA_DELAY,
        topics::DELAY_WINDOW,
        topics::ALERT,
        topics::ALERT_STATE,
        topics::PROCESSOR_STATE,
    ]
    .iter()
    .map(|t| env.topic(t))
    .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    env.broker().create_topics(&names, 1).await.expect("topics");
    let p = Running::start(config);
    let t = base_second();
    let mut firsts = Vec::new();
    for w in 0..6 {
        firsts.push(produce_window(&env, t, w).await);
    }

    // Windows 0..=4 close, more than max_pending_windows: a sink stuck on a dead letter it
    // cannot write would pause consumption and hold offsets at window 0.
    let dropped = "millilag_processor_dead_letter_dropped_total{reason=\"unknown_topic\"} ";
    wait_for(
        "windows 0..=4 given up",
        Duration::from_secs(90),
        || async { (p.metric(dropped).await >= 5.0).then_some(()) },
    )
    .await
    .unwrap();
    let counts = wait_for(
        "windows 0..=4 in the other sink",
        Duration::from_secs(30),
        || async {
            let c = influx_counts(&influx).await;
            (c.len() >= 5).then_some(c)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        counts,
        (0..5).map(|w| ((t + w * S) / 1000, 10)).collect::<Vec<_>>()
    );
    let committed = wait_for("commit up to window 5", Duration::from_secs(20), || async {
        env.committed().await.filter(|c| *c == firsts[5])
    })
    .await;
    assert_eq!(committed.unwrap(), firsts[5]);
    let rejected = "millilag_processor_sink_rejected_total{sink=\"influxdb[1]\",status=\"404\"} ";
    assert_eq!(p.metric(rejected).await, 5.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_escapes_names_for_influxdb_and_dead_letters_names_no_sink_can_carry() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let influx = influx.expect("InfluxDB");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
"#,
            influx.url()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let dead = env.consumer(topics::DEAD_LETTER);
    let p = Running::start(config);
    let t = base_second();
    const ODD: &str = r#"db 2,x="q"=1 'b'"#;
    let named = |cluster: &str, replica: &str, seq: i64, at: i64| {
        let mut r = delay(seq, at, 5 * MS);
        r.cluster = cluster.into();
        r.replica = replica.into();
        r
    };
    let mut refused = BTreeMap::new();
    env.send(&named("main", ODD, 1, t)).await;
    for (replica, cluster, why) in [
        ("", "main", "replica name \"\" is empty"),
        (
            "db\n3",
            "main",
            "replica name \"db\\n3\" contains a control character",
        ),
        (
            "db4",
            "ma\\in",
            "cluster name \"ma\\\\in\" contains a backslash",
        ),
    ] {
        let offset = env.send(&named(cluster, replica, 2, t + 100 * MS)).await;
        refused.insert(offset, why);
    }
    env.send(&named("main", ODD, 2, t + S)).await;

    let mut letters = Vec::new();
    dead_letters_until(&dead, &mut letters, "three records refused", |l| {
        l.len() >= 3
    })
    .await;
    for d in &letters {
        let why = refused.get(&d.offset).expect("a refused record's offset");
        assert!(
            d.reason.starts_with(why),
            "{} does not start with {why}",
            d.reason
        );
        assert_eq!(d.topic, env.topic(topics::REPLICA_DELAY));
    }
    assert_eq!(
        p.metric("millilag_processor_name_rejects_total ").await,
        3.0
    );
    // Comma, space, quotes and '=' are escaped and read back as they were.
    let rows = wait_for(
        "the odd replica's window",
        Duration::from_secs(30),
        || async {
            let q = format!(
                "SELECT * FROM replica_delay WHERE replica = '{}'",
                ODD.replace('\'', "\\'")
            );
            let rows = influx.query(&q).await.ok()?;
            // InfluxDB 1.x keeps each field of a point apart in its cache: a query racing the
            // write can see the point's time with some fields still missing (seen once).
            rows.first()
                .is_some_and(|r| !r["count"].is_null())
                .then_some(rows)
        },
    )
    .await
    .unwrap();
    assert_eq!(rows[0]["replica"], ODD);
    assert_eq!(rows[0]["cluster"], "main");
    assert_eq!(
        (rows[0]["time"].as_i64(), rows[0]["count"].as_i64()),
        (Some(t / 1000), Some(1))
    );
    p.stop().await;
}
