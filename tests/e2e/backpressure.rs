//! Bounded memory when what comes after a service is away: the processor's sinks down across a
//! consumer-group rebalance, the reader's broker restarted mid-run.

use crate::common::{self, create_topics, http_get, metric, Collected, Pipeline};
use crate::processor::{base_second, delay, Env, Running, MS, S};
use millilag_core::events::{MeasureStatus, Record, ReplicaDelay};
use millilag_core::kafka::topics;
use millilag_harness::influx::Influx;
use millilag_harness::wait_for;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::collections::BTreeSet;
use std::time::Duration;

/// Ten records per 1 s window, windows `0..n` from `t` of `replica`, all on `partition`.
async fn produce_windows(
    config: &millilag_core::Config,
    partition: i32,
    replica: &str,
    t: i64,
    n: i64,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let topic = config.topic(topics::REPLICA_DELAY);
    let mut acks = Vec::new();
    for w in 0..n {
        for i in 0..10 {
            let mut r: ReplicaDelay = delay(w * 10 + i + 1, t + w * S + i * 100 * MS, MS);
            r.replica = replica.into();
            let (key, payload) = (r.key(), r.encode().unwrap());
            let record = FutureRecord::to(&topic)
                .partition(partition)
                .key(key.as_bytes())
                .payload(&payload);
            acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
    }
    for a in acks {
        a.await.expect("delivery").expect("acked");
    }
}

/// Windows per replica in InfluxDB, each with its count.
async fn influx_windows(influx: &Influx) -> Vec<(String, i64, i64)> {
    let rows = influx
        .query("SELECT \"count\" FROM replica_delay GROUP BY replica")
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            (
                r["replica"].as_str().unwrap_or_default().to_string(),
                r["time"].as_i64().unwrap_or_default(),
                r["count"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_stays_paused_when_a_rebalance_hands_it_partitions_while_sinks_are_down() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let mut influx = influx.expect("InfluxDB");
    let config = || {
        let mut c = env.config(
            "windows = [\"1s\"]\nallowed_lateness = \"0s\"\nmax_pending_windows = 3",
            &format!(
                "[sink.kafka]\nenabled = false\n\n[[sink.influxdb]]\nurl = \"{}\"\napi = \"v1\"\ndatabase = \"millilag\"\ntimeout = \"1s\"\n",
                influx.url()
            ),
            &[],
        );
        c.kafka.partitions = 2;
        c
    };
    let (a_config, b_config) = (config(), config());
    env.create_topics(&a_config).await;
    influx.kill();

    // Two processors in one group split the two partitions.
    let a = Running::start(a_config.clone());
    let b = Running::start(b_config);
    let assigned = "millilag_processor_assigned_partitions ";
    wait_for("one partition each", Duration::from_secs(60), || async {
        (a.metric(assigned).await == 1.0 && b.metric(assigned).await == 1.0).then_some(())
    })
    .await
    .unwrap();

    // Each closes windows its sink cannot take, more than max_pending_windows: both pause.
    let (t, replicas) = (base_second(), ["db2:3306", "db3:3306"]);
    for (p, replica) in replicas.iter().enumerate() {
        produce_windows(&a_config, p as i32, replica, t, 10).await;
    }
    let (paused, pending, records) = (
        "millilag_processor_paused ",
        "millilag_processor_pending_windows ",
        "millilag_processor_records_total ",
    );
    wait_for("both paused", Duration::from_secs(60), || async {
        (a.metric(paused).await == 1.0 && b.metric(paused).await == 1.0).then_some(())
    })
    .await
    .unwrap();
    let (a_pending, a_records) = (a.metric(pending).await, a.metric(records).await);
    assert!(a_pending > 3.0, "{a_pending} windows wait on a");

    // b goes away; a is handed b's partition, records waiting, while its sink is still down.
    b.kill();
    wait_for(
        "a owns both partitions",
        Duration::from_secs(60),
        || async { (a.metric(assigned).await == 2.0).then_some(()) },
    )
    .await
    .unwrap();
    // Unpaused, b's partition would be read within a few fetches (10 ms each).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.metric(paused).await, 1.0, "still paused");
    assert_eq!(
        a.metric(records).await,
        a_records,
        "no record consumed while paused"
    );
    assert_eq!(
        a.metric(pending).await,
        a_pending,
        "pending windows bounded"
    );

    // The sink returns: a resumes and every window of both replicas lands once, complete.
    influx
        .restart()
        .await
        .expect("InfluxDB back on the same port and data");
    let got = wait_for(
        "18 windows in InfluxDB",
        Duration::from_secs(60),
        || async {
            let w = influx_windows(&influx).await;
            (w.len() >= 18).then_some(w)
        },
    )
    .await
    .unwrap();
    let t_ms = t / MS;
    let mut want: Vec<(String, i64, i64)> = replicas
        .iter()
        .flat_map(|r| (0..9).map(move |w| (r.to_string(), w, 10)))
        .collect();
    want.sort();
    let mut got: Vec<(String, i64, i64)> = got
        .into_iter()
        .map(|(r, time, count)| (r, (time - t_ms) / 1000, count))
        .collect();
    got.sort();
    assert_eq!(got, want, "windows 0..9 of both replicas, each complete");
    a.stop().await;
}

/// The reader's `publish_queue` and `paused` gauges, sampled every 10 ms until dropped: the
/// largest queue seen and whether a pause was.
struct ReaderGauges {
    seen: std::sync::Arc<std::sync::Mutex<(f64, bool)>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReaderGauges {
    fn sample(listen: std::net::SocketAddr) -> ReaderGauges {
        let seen = std::sync::Arc::new(std::sync::Mutex::new((0.0_f64, false)));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                let Some((_, text)) = http_get(&listen.to_string(), "/metrics").await else {
                    continue;
                };
                let queue = metric(&text, "millilag_reader_publish_queue ").unwrap_or(0.0);
                let paused = metric(&text, "millilag_reader_paused ") == Some(1.0);
                let mut s = out.lock().unwrap();
                s.0 = s.0.max(queue);
                s.1 |= paused;
            }
        });
        ReaderGauges { seen, task }
    }

    fn seen(&self) -> (f64, bool) {
        *self.seen.lock().unwrap()
    }
}

impl Drop for ReaderGauges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_output_survives_a_broker_restart_complete_in_order_and_bounded() {
    const MAX_PENDING: f64 = 200.0;
    let mut env = common::Env::start(2).await;
    let config = env.config(
        "interval = \"10ms\"",
        &format!("max_pending_records = {MAX_PENDING}"),
        "",
    );
    create_topics(&config).await;
    let got = Collected::default();
    let _collector = collect_through_outages(&env, got.clone());
    let gauges = ReaderGauges::sample(config.reader.listen);
    let pipeline = Pipeline::start(&config, true, true);
    let before = got
        .until(
            "measuring before the outage",
            Duration::from_secs(30),
            |rs| rs.len() >= 100,
        )
        .await;
    let first = before.iter().map(|r| r.seq).max().unwrap() + 1;

    // The broker goes away while 200 heartbeats are written, then comes back.
    env.broker.kill();
    let at_kill = env.cluster.heartbeat_seq().await.unwrap();
    wait_for(
        "200 heartbeats during the outage",
        Duration::from_secs(30),
        || async {
            let seq = env.cluster.heartbeat_seq().await.ok()?;
            (seq >= at_kill + 200).then_some(())
        },
    )
    .await
    .unwrap();
    env.broker.restart().await.expect("broker back");
    let until = env.cluster.heartbeat_seq().await.unwrap() + 100;

    // No heartbeat unmeasured on either replica.
    let replicas: Vec<String> = env.cluster.replicas.iter().map(|r| r.address()).collect();
    let missing = |rs: &[ReplicaDelay]| -> Vec<(String, i64)> {
        replicas
            .iter()
            .flat_map(|replica| {
                let seqs: BTreeSet<i64> = final_records(rs, replica).map(|r| r.seq).collect();
                (first..=until)
                    .filter(move |s| !seqs.contains(s))
                    .map(move |s| (replica.clone(), s))
            })
            .collect()
    };
    let measured = wait_for(
        "every heartbeat measured on both replicas",
        Duration::from_secs(60),
        || async {
            let rs = got.snapshot();
            missing(&rs).is_empty().then_some(rs)
        },
    )
    .await;
    let all = measured.unwrap_or_else(|e| {
        let m = missing(&got.snapshot());
        panic!("{e}: {} missing, e.g. {:?}", m.len(), &m[..m.len().min(10)])
    });
    pipeline.stop().await;

    // From the outage on, published in seq order replica by replica: the processor would
    // count stragglers late. (Not before: a reader that starts behind the writer reports the
    // backlog it finds as upper bounds, newest first.)
    for replica in &replicas {
        let seqs: Vec<i64> = final_records(&all, replica)
            .map(|r| r.seq)
            .filter(|s| *s >= first)
            .collect();
        let out_of_order: Vec<(i64, i64)> = seqs
            .windows(2)
            .filter(|w| w[1] <= w[0])
            .map(|w| (w[0], w[1]))
            .collect();
        assert!(
            out_of_order.is_empty(),
            "{replica}: seq after seq {out_of_order:?}"
        );
    }
    // Memory bounded: never more than max_pending_records waiting, and the limit was reached
    // (the input paused) in the catch-up after the outage.
    let (largest, paused) = gauges.seen();
    assert!(largest <= MAX_PENDING, "{largest} records waited");
    assert!(
        paused,
        "the reader paused heartbeat-set (largest queue {largest})"
    );
    eprintln!("broker restart: largest publish queue {largest} of {MAX_PENDING}, input paused");
}

/// Every replica-delay record into `got`, in topic order, riding out the broker's outage
/// (`Collected::start` stops at the first consumer error).
fn collect_through_outages(env: &common::Env, got: Collected) -> AbortOnDrop {
    let consumer = env.consumer("replica-delay");
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok(m) = consumer.recv().await else {
                continue;
            };
            if let Some(r) = m.payload().and_then(|p| ReplicaDelay::decode(p).ok()) {
                got.push(r);
            }
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `replica`'s records with a final status (not the live-lag `pending` samples), in topic order.
fn final_records<'a>(
    records: &'a [ReplicaDelay],
    replica: &'a str,
) -> impl Iterator<Item = &'a ReplicaDelay> + 'a {
    records
        .iter()
        .filter(move |r| r.replica == replica && r.status != MeasureStatus::Pending)
}

/// The reader's metric `series` (exact sample name with labels and a trailing space), 0 when
/// absent or unreachable.
async fn reader_metric(config: &millilag_core::Config, series: &str) -> f64 {
    let Some((_, text)) = http_get(&config.reader.listen.to_string(), "/metrics").await else {
        return 0.0;
    };
    metric(&text, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_skips_a_record_it_cannot_dead_letter_and_stops_promptly_meanwhile() {
    let env = common::Env::start(1).await;
    let mut config = env.config("interval = \"10ms\"", "", "");
    // No dead-letter topic (Tansu 0.6 creates none on its own), and librdkafka told to wait
    // 3 s, not 30, for a missing topic to appear before it fails a write.
    config.kafka.create_topics = false;
    config
        .kafka
        .properties
        .insert("topic.metadata.propagation.max.ms".into(), "3000".into());
    let (heartbeats, delays) = (
        config.topic(topics::HEARTBEAT_SET),
        config.topic(topics::REPLICA_DELAY),
    );
    env.broker
        .create_topics(&[&heartbeats, &delays], 1)
        .await
        .expect("topics");
    let producer: FutureProducer = env.broker.client_config().create().unwrap();
    producer
        .send(
            FutureRecord::to(&heartbeats)
                .key("main")
                .payload(b"not avro".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .expect("poison produced");
    let (consumed, dropped) = (
        "millilag_reader_heartbeats_total ",
        "millilag_reader_dead_letter_dropped_total{reason=\"unknown_topic\"} ",
    );

    // The reader takes the record and tries to dead-letter it: shutdown ends the attempt.
    let reader = Pipeline::start(&config, false, true);
    wait_for("the record consumed", Duration::from_secs(30), || async {
        (reader_metric(&config, consumed).await >= 1.0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(reader_metric(&config, dropped).await, 0.0, "still trying");
    let stopping = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), reader.stop())
        .await
        .expect("the reader stops");
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stopped {:?} after shutdown",
        stopping.elapsed()
    );

    // Started again (the record was left unstored), it gives up on the dead letter after a
    // few refusals, counts it, and measures what comes after.
    let (got, _bg) = Collected::start(&env);
    let pipeline = Pipeline::start(&config, true, true);
    wait_for(
        "the dead letter given up",
        Duration::from_secs(30),
        || async { (reader_metric(&config, dropped).await == 1.0).then_some(()) },
    )
    .await
    .unwrap();
    got.until("measuring after it", Duration::from_secs(30), |rs| {
        rs.len() >= 20
    })
    .await;
    pipeline.stop().await;
}
