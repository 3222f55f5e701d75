//! Bounded memory when what comes after a service is away: the processor's sinks down across a
//! consumer-group rebalance.

use crate::processor::{base_second, delay, Env, Running, MS, S};
use millilag_core::events::{Record, ReplicaDelay};
use millilag_core::kafka::topics;
use millilag_harness::influx::Influx;
use millilag_harness::wait_for;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
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
