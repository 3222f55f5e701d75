//! The reader when its databases misbehave: it never holds more sessions on a replica than it
//! says, whatever the replica answers, and it never claims a clock it could not sample.

use crate::common::{create_topics, http_get, metric, service_sessions, Collected, Env, Pipeline};
use millilag_core::events::MeasureStatus;
use millilag_core::Config;
use millilag_harness::free_port;
use mysql_async::prelude::*;
use std::time::Duration;

/// A replica that refuses every read of the heartbeat table (SELECT revoked there only) is
/// retried on the one control connection, never on new ones: in poll mode one read per
/// heartbeat fails, and each failure once opened a connection that was never used again
/// until the replica ran out of `max_connections`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusing_reads_gets_no_more_sessions_than_the_reader_says() {
    let env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", "method = \"poll\"", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let writer = Pipeline::start(&config, true, false);
    let refusing = &env.cluster.replicas[1];
    millilag_harness::wait_for(
        "the heartbeat table on replica 2",
        Duration::from_secs(30),
        || async {
            let mut c = refusing.admin().await.ok()?;
            c.query_first::<i64, _>("SELECT COUNT(*) FROM millilag.heartbeat")
                .await
                .ok()
                .flatten()
        },
    )
    .await
    .unwrap();
    // On that replica only (not binlogged), before the reader's sessions exist: database
    // privileges apply to a session from its start.
    refusing
        .admin()
        .await
        .unwrap()
        .query_drop(format!(
            "SET SESSION sql_log_bin = 0; REVOKE SELECT ON `millilag`.* FROM '{}'@'127.0.0.1'",
            millilag_harness::mariadb::USER
        ))
        .await
        .unwrap();
    let reader = Pipeline::start(&config, false, true);
    let healthy = env.cluster.replica(0).address();
    let refused = refusing.address();
    // Poll mode: the control connection, nothing else.
    const SAID: i64 = 1;
    let mut most = 0;
    let mut measured_before = 0;
    // Each step waits for a hundred more heartbeats measured on the healthy replica (a second
    // of failed reads on the other) and then counts sessions.
    for step in 1..=4 {
        got.until(
            "heartbeats measured on the healthy replica",
            Duration::from_secs(30),
            |rs| {
                rs.iter()
                    .filter(|r| r.replica == healthy && r.status == MeasureStatus::Ok)
                    .count()
                    >= measured_before + 100
            },
        )
        .await;
        measured_before = step * 100;
        most = most.max(service_sessions(refusing).await);
    }
    assert!(
        (1..=SAID).contains(&most),
        "{most} sessions on the refusing replica, the reader says {SAID}"
    );
    let rs = got.snapshot();
    assert!(
        rs.iter()
            .filter(|r| r.replica == refused)
            .all(|r| r.status != MeasureStatus::Ok),
        "nothing is measured where nothing can be read"
    );
    reader.stop().await;
    writer.stop().await;
}

/// A reader that cannot reach the primary (to compare clocks) still measures, from the
/// replicas, but says the offset is unknown: a 1 s uncertainty on every record and on its
/// metric, not a silent "offset 0, exact".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_sample_the_primarys_clock_says_its_offset_is_unknown() {
    let env = Env::start(1).await;
    let toml = env.config_toml("interval = \"10ms\"", "", "");
    let config = Config::from_toml_with_env(&toml, "test", Vec::new()).unwrap();
    create_topics(&config).await;
    let nowhere = format!("127.0.0.1:{}", free_port());
    let reader_toml = toml.replace(&env.cluster.primary.address(), &nowhere);
    assert_ne!(reader_toml, toml);
    let reader_config = Config::from_toml_with_env(&reader_toml, "test", Vec::new()).unwrap();
    let (got, _bg) = Collected::start(&env);
    let writer = Pipeline::start(&config, true, false);
    let reader = Pipeline::start(&reader_config, false, true);
    let rs = got
        .until("measurements", Duration::from_secs(30), |rs| {
            rs.iter().filter(|r| r.status == MeasureStatus::Ok).count() >= 50
        })
        .await;
    let ok: Vec<_> = rs
        .iter()
        .filter(|r| r.status == MeasureStatus::Ok)
        .collect();
    assert!(
        ok.iter().all(|r| r.uncertainty_us >= 1_000_000),
        "every record says the offset is unknown: {:?}",
        ok.iter().map(|r| r.uncertainty_us).min()
    );
    let listen = reader_config.reader.listen.to_string();
    let (_, body) = http_get(&listen, "/metrics").await.unwrap();
    assert_eq!(
        metric(
            &body,
            "millilag_reader_clock_uncertainty_seconds{cluster=\"main\"}"
        ),
        Some(1.0),
        "{body}"
    );
    reader.stop().await;
    writer.stop().await;
}
