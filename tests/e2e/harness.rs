//! The harness itself: replication works, stalls are real, and the broker keeps consumer-group
//! offsets the way the services rely on.

use crate::common::unique;
use millilag_core::clock::now_us;
use millilag_core::db::heartbeat_ddl;
use millilag_core::events::{HeartbeatSet, Record};
use millilag_harness::{Broker, Cluster};
use mysql_async::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

async fn create_heartbeat_table(cluster: &Cluster) {
    let mut p = cluster.primary.connect().await.unwrap();
    for stmt in heartbeat_ddl("millilag", "heartbeat").unwrap() {
        p.query_drop(stmt).await.unwrap();
    }
}

/// seq on a replica, read the way the reader's poll mode does.
async fn replica_seq(cluster: &Cluster, i: usize) -> Option<i64> {
    let mut c = cluster.replica(i).connect().await.ok()?;
    c.query_first("SELECT seq FROM millilag.heartbeat WHERE server_id = 1")
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_row_replicates_to_every_replica() {
    let cluster = Cluster::start(2).await.unwrap();
    create_heartbeat_table(&cluster).await;
    let mut p = cluster.primary.connect().await.unwrap();
    p.query_drop(
        "INSERT INTO millilag.heartbeat (ts, server_id, seq) VALUES ('x', 1, 7) \
         ON DUPLICATE KEY UPDATE seq = VALUES(seq)",
    )
    .await
    .unwrap();
    for i in 0..2 {
        let seen =
            millilag_harness::wait_for("row on replica", Duration::from_secs(10), || async {
                replica_seq(&cluster, i).await.filter(|s| *s == 7)
            })
            .await;
        assert_eq!(seen.unwrap(), 7, "replica{}", i + 1);
    }
    // Replicas replicate with GTIDs, as the reader's gtid-wait method needs.
    let mut r = cluster.replica(0).admin().await.unwrap();
    let status: mysql_async::Row = r.query_first("SHOW SLAVE STATUS").await.unwrap().unwrap();
    let using: String = status.get("Using_Gtid").unwrap();
    assert_eq!(using, "Slave_Pos");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_stall_is_observed_and_matches_ground_truth() {
    let cluster = Cluster::start(2).await.unwrap();
    create_heartbeat_table(&cluster).await;
    let mut p = cluster.primary.connect().await.unwrap();
    p.query_drop("INSERT INTO millilag.heartbeat (ts, server_id, seq) VALUES ('x', 1, 0)")
        .await
        .unwrap();
    cluster
        .install_truth("millilag", "heartbeat")
        .await
        .unwrap();

    let stall = Duration::from_millis(300);
    let (stall_tx, stall_rx) = tokio::sync::oneshot::channel();
    let stalled = async {
        let s = cluster.stall(0, stall).await.unwrap();
        let _ = stall_tx.send(());
        s
    };
    let writes = async {
        // Give STOP SLAVE its round trip first: the heartbeat must be committed inside the stall.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = now_us();
        p.query_drop("UPDATE millilag.heartbeat SET seq = 1 WHERE server_id = 1")
            .await
            .unwrap();
        let committed = now_us();
        let changed = cluster.primary_truth(1).await.unwrap()[&1];
        assert!(
            (sent..=committed).contains(&changed),
            "the primary's trigger stamps the row change inside the statement"
        );
        // While stalled, replica1 must not show it; replica2 must.
        let r2 = millilag_harness::wait_for("replica2 applies", Duration::from_secs(5), || async {
            replica_seq(&cluster, 1).await.filter(|s| *s == 1)
        })
        .await
        .unwrap();
        assert_eq!(r2, 1);
        assert_eq!(
            replica_seq(&cluster, 0).await,
            Some(0),
            "stalled replica shows the row early"
        );
        stall_rx.await.unwrap();
        committed
    };
    let (s, committed) = tokio::join!(stalled, writes);

    let truth0 =
        millilag_harness::wait_for("truth on replica1", Duration::from_secs(10), || async {
            cluster.truth(0, 1).await.ok()?.get(&1).copied()
        })
        .await
        .unwrap();
    let truth1 = cluster.truth(1, 1).await.unwrap()[&1];
    let delay0 = truth0 - committed;
    let expected = s.started_at_us - committed;
    // The SQL thread applies within a few ms of START SLAVE SQL_THREAD (DESIGN §7: 2-6 ms here);
    // 60 ms leaves room for a loaded CI box without accepting a stall that was not observed.
    assert!(
        delay0 >= expected - 5_000 && delay0 <= expected + 60_000,
        "stalled replica: true delay {delay0} us, stall ended {expected} us after the commit"
    );
    assert!(
        delay0 > 150_000,
        "a 300 ms stall must delay by well over 150 ms: {delay0} us"
    );
    let delay1 = truth1 - committed;
    assert!(
        delay1 < 100_000,
        "the other replica is unaffected: {delay1} us"
    );
    // The truth from the triggers alone agrees, and the primary's truth table never reached
    // a replica (it would stop replication there: the table does not exist on replicas).
    let true0 = cluster.true_delays(0, 1).await.unwrap()[&1];
    assert!((true0 - delay0).abs() < 60_000, "{true0} vs {delay0}");
    for r in &cluster.replicas {
        let mut c = r.admin().await.unwrap();
        let leaked: Option<i64> = c
            .query_first(
                "SELECT COUNT(*) FROM information_schema.tables \
                 WHERE table_schema = 'millilag_truth' AND table_name = 'changed'",
            )
            .await
            .unwrap();
        assert_eq!(leaked, Some(0), "{} got the primary's truth table", r.name);
    }
}

fn sample(seq: i64) -> HeartbeatSet {
    HeartbeatSet {
        cluster: "main".into(),
        primary: "127.0.0.1:3306".into(),
        server_id: 1,
        writer_id: "test".into(),
        writer_epoch: 1,
        seq,
        committed_at_us: now_us(),
        gtid: Some(format!("77-1-{seq}")),
        binlog_file: None,
        binlog_pos: None,
        interval_us: 10_000,
        commit_rtt_us: 100,
    }
}

fn consumer(broker: &Broker, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap()
}

async fn next_heartbeat(c: &StreamConsumer) -> (HeartbeatSet, i64) {
    let m = tokio::time::timeout(Duration::from_secs(20), c.recv())
        .await
        .expect("a record within 20 s")
        .unwrap();
    (
        HeartbeatSet::decode(m.payload().unwrap()).unwrap(),
        m.offset(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_round_trip_and_a_new_consumer_resumes_from_the_commit() {
    let broker = Broker::start().await.unwrap();
    let topic = unique("hb");
    broker.create_topics(&[&topic], 1).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .create()
        .unwrap();
    let sent: Vec<HeartbeatSet> = (1..=10).map(sample).collect();
    for h in &sent {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key("main")
                    .payload(&h.encode().unwrap()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .unwrap();
    }

    let group = unique("g");
    let first = consumer(&broker, &group);
    first.subscribe(&[&topic]).unwrap();
    for want in &sent[..4] {
        let (got, _) = next_heartbeat(&first).await;
        assert_eq!(&got, want);
    }
    // Commit after the 4th record (offset 3 -> next to read is 4), synchronously.
    first.commit_consumer_state(CommitMode::Sync).unwrap();
    let committed = first
        .committed(Duration::from_secs(10))
        .unwrap()
        .elements_for_topic(&topic)[0]
        .offset();
    assert_eq!(committed, rdkafka::Offset::Offset(4));
    drop(first);

    let second = consumer(&broker, &group);
    second.subscribe(&[&topic]).unwrap();
    let (got, offset) = next_heartbeat(&second).await;
    assert_eq!(offset, 4, "resumed at the committed offset");
    assert_eq!(got, sent[4]);
}
