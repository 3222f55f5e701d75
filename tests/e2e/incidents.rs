//! Incidents across processors and records that cannot be trusted, on Tansu with hand-made
//! `replica-delay` records (see processor.rs for the environment).

use crate::processor::{base_second, delay, Env, Running, MS, REPLICA, S};
use millilag_core::events::{DeadLetter, DelayWindow, Record};
use millilag_core::kafka::topics;
use millilag_harness::alertmanager::WebhookReceiver;
use rdkafka::message::Message;
use std::time::Duration;

/// Records for window `w` (from `t`), ten 100 ms apart, each with delay `d`; seqs continue.
async fn level(env: &Env, t: i64, w: i64, d: i64) {
    for i in 0..10 {
        env.send(&delay(w * 10 + i + 1, t + w * S + i * 100 * MS, d))
            .await;
    }
}

fn lag_rule(env: &Env, receiver: &WebhookReceiver) -> millilag_core::Config {
    env.config(
        r#"windows = ["1s"]
allowed_lateness = "100ms""#,
        &format!(
            r#"
[[alert]]
name = "lag"
when = "max > 300ms"
window = "1s"
for = "0s"

[[webhook]]
url = "{}"
format = "json"
"#,
            receiver.url("/json")
        ),
        &[],
    )
}

/// (rule, replica, state) of every notification received so far, waiting `quiet` for more.
async fn notifications(
    receiver: &WebhookReceiver,
    quiet: Duration,
) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    while let Some(r) = receiver.next(quiet).await {
        let v = r.json();
        out.push((
            v["rule"].as_str().unwrap_or_default().to_string(),
            v["replica"].as_str().unwrap_or_default().to_string(),
            v["state"].as_str().unwrap_or_default().to_string(),
        ));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_is_resolved_once_by_the_processor_that_takes_it_over() {
    let env = Env::start().await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = lag_rule(&env, &receiver);
    env.create_topics(&config).await;
    let t = base_second();
    // The first processor sees the replica 500 ms behind: firing.
    let first = Running::start(config.clone());
    level(&env, t, 0, 500 * MS).await;
    level(&env, t, 1, 500 * MS).await;
    let fired = receiver
        .next(Duration::from_secs(30))
        .await
        .expect("the firing");
    assert_eq!(fired.json()["state"], "firing");
    first.stop().await;
    // Another processor of the group takes the partition (a rolling restart): it continues the
    // incident from alert-state, and the replica recovers.
    let second = Running::start(lag_rule(&env, &receiver));
    for w in 2..6 {
        level(&env, t, w, MS).await;
    }
    let rest = notifications(&receiver, Duration::from_secs(10)).await;
    second.stop().await;
    assert_eq!(
        rest,
        vec![(
            "lag".to_string(),
            REPLICA.to_string(),
            "resolved".to_string()
        )],
        "one resolved, by the new owner, and no second firing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_from_a_primary_whose_clock_stepped_go_to_dead_letter_and_move_no_watermark() {
    let env = Env::start().await;
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "100ms""#,
        "",
        &[],
    );
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let dead = env.consumer(topics::DEAD_LETTER);
    let p = Running::start(config);
    let t = base_second();
    level(&env, t, 0, MS).await;
    // The primary's clock jumps an hour ahead for one heartbeat, then an hour back for one.
    let mut ahead = delay(11, t + 3_600 * S + S + 50 * MS, MS);
    ahead.observed_at_us = ahead.committed_at_us + MS;
    env.send(&ahead).await;
    let mut behind = delay(12, t - 3_600 * S, MS);
    behind.observed_at_us = behind.committed_at_us + MS;
    env.send(&behind).await;
    for w in 1..4 {
        level(&env, t, w, MS).await;
    }
    // Both are kept, with the reason.
    let mut reasons = Vec::new();
    while reasons.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), dead.recv())
            .await
            .expect("two dead letters")
            .unwrap();
        let d = DeadLetter::decode(m.payload().unwrap()).unwrap();
        reasons.push(d.reason);
    }
    assert!(
        reasons[0].contains("ahead of the processor's clock"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("stepped back"), "{reasons:?}");
    // The windows closed one by one, each complete: the watermark never jumped an hour.
    let mut got: Vec<DelayWindow> = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
            .await
            .expect("windows 0..=2")
            .unwrap();
        got.push(DelayWindow::decode(m.payload().unwrap()).unwrap());
    }
    let summary: Vec<(i64, i64, i64)> = got
        .iter()
        .map(|w| ((w.window_start_us - t) / S, w.count, w.missing))
        .collect();
    assert_eq!(summary, vec![(0, 10, 0), (1, 10, 0), (2, 10, 0)]);
    assert_eq!(
        p.metric("millilag_processor_clock_skew_rejects_total")
            .await,
        2.0
    );
    assert_eq!(
        p.metric("millilag_processor_late_records_total{window=\"1s\"}")
            .await,
        0.0
    );
    p.stop().await;
}
