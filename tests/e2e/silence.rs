//! Silence is loud: a dead writer and dead readers raise the built-in stale alerts, and the
//! windows keep coming with what is missing.

use crate::alerting::{pipeline_config, Notices, Windows};
use crate::common::{create_topics, Env, Pipeline};
use millilag_core::clock::now_us;
use millilag_harness::alertmanager::WebhookReceiver;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_writer_fires_heartbeats_stale_and_its_windows_count_the_missing_heartbeats() {
    const OUTAGE: Duration = Duration::from_secs(8);
    let env = Env::start(1).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = pipeline_config(&env, &receiver, "");
    create_topics(&config).await;
    let notices = Notices::start(receiver);
    let windows = Windows::start(&env);
    let replica = env.cluster.replica(0).address();
    let processor = Pipeline::processor(&config);
    let reader = Pipeline::start(&config, false, true);
    let writer = Pipeline::start(&config, true, false);
    let t0 = now_us();
    windows
        .until("windows", Duration::from_secs(30), |all| {
            Windows::count_for(all, &replica, t0) >= 2
        })
        .await;
    // The writer dies (as under SIGKILL) for 8 s.
    writer.kill();
    let killed = now_us();
    let stale = notices.until("heartbeats-stale", OUTAGE, |n| {
        n.rule == "heartbeats-stale" && n.state == "firing"
    });
    let missing = notices.until("the missing alert", OUTAGE, |n| {
        n.rule == "missing" && n.state == "firing"
    });
    let (stale, missing) = tokio::join!(stale, missing);
    tokio::time::sleep(OUTAGE.saturating_sub(Duration::from_micros((now_us() - killed) as u64)))
        .await;
    let writer = Pipeline::start(&config, true, false);
    let back = now_us();
    for rule in ["heartbeats-stale", "missing"] {
        notices
            .until(&format!("{rule} resolved"), Duration::from_secs(30), |n| {
                n.rule == rule && n.state == "resolved"
            })
            .await;
    }
    writer.stop().await;
    reader.stop().await;
    processor.stop().await;
    let outage: Vec<(i64, i64)> = windows
        .all()
        .iter()
        .filter(|(w, _)| w.window_start_us > killed && w.window_start_us + w.window_us < back)
        .map(|(w, _)| (w.count, w.missing))
        .collect();
    eprintln!(
        "writer down 8 s: heartbeats-stale after {:.2} s, missing alert after {:.2} s; windows in the outage (count, missing): {outage:?}",
        (stale.at_us - killed) as f64 / 1e6,
        (missing.at_us - killed) as f64 / 1e6,
    );
    assert!(
        stale.at_us < back && missing.at_us < back,
        "both during the outage"
    );
    assert!(outage.len() >= 5, "{outage:?}");
    assert!(
        outage.iter().all(|(c, m)| *c == 0 && *m >= 90),
        "{outage:?}"
    );
    let notes = notices.all();
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.rule == "heartbeats-stale")
            .count(),
        2,
        "one firing, one resolved: {notes:?}"
    );
    assert!(
        !notes.iter().any(|n| n.rule == "measurements-stale"),
        "the readers were fine: {notes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_down_fires_measurements_stale_for_each_replica_until_one_is_back() {
    let env = Env::start(1).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = pipeline_config(&env, &receiver, "");
    create_topics(&config).await;
    let notices = Notices::start(receiver);
    let windows = Windows::start(&env);
    let replica = env.cluster.replica(0).address();
    let processor = Pipeline::processor(&config);
    let writer = Pipeline::start(&config, true, false);
    let reader = Pipeline::start(&config, false, true);
    let t0 = now_us();
    windows
        .until("windows", Duration::from_secs(30), |all| {
            Windows::count_for(all, &replica, t0) >= 2
        })
        .await;
    // The only reader group dies; the writer goes on announcing.
    reader.kill();
    let killed = now_us();
    let fired = notices
        .until("measurements-stale", Duration::from_secs(30), |n| {
            n.rule == "measurements-stale" && n.state == "firing"
        })
        .await;
    assert_eq!(fired.replica, replica);
    let reader = Pipeline::start(&config, false, true);
    notices
        .until(
            "measurements-stale resolved",
            Duration::from_secs(30),
            |n| n.rule == "measurements-stale" && n.state == "resolved",
        )
        .await;
    reader.stop().await;
    writer.stop().await;
    processor.stop().await;
    eprintln!(
        "readers down: measurements-stale after {:.2} s",
        (fired.at_us - killed) as f64 / 1e6
    );
    let notes = notices.all();
    assert!(
        !notes.iter().any(|n| n.rule == "heartbeats-stale"),
        "the writer was fine: {notes:?}"
    );
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.rule == "measurements-stale")
            .count(),
        2,
        "{notes:?}"
    );
}
