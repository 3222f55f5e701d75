//! A report, run by hand: peak error and time to alert for stalls of 1, 10 and 60 s.

use crate::alerting::{pipeline_config, Notices};
use crate::common::{create_topics, Collected, Env, Pipeline};
use millilag_core::events::MeasureStatus;
use millilag_harness::alertmanager::WebhookReceiver;
use std::time::Duration;

/// Not a pass/fail check: prints, for stalls of 1 s, 10 s and 60 s (reader.timeout 2 s, 1 s
/// windows, lag rule `max > 300ms`), each stall's true peak (the replica's own apply time of
/// the heartbeat committed at the stall's start) against the delay millilag reported for it,
/// and how long after the stall began the lag alert reached the webhook. Run with
/// `cargo nextest run --test e2e -E 'test(/stall_figures/)' --run-ignored only --no-capture`.
#[ignore = "a report (about 2 minutes), run by hand"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_figures_peak_error_and_time_to_alert() {
    let env = Env::start(2).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = pipeline_config(&env, &receiver, "timeout = \"2s\"");
    create_topics(&config).await;
    let notices = Notices::start(receiver);
    let (got, _bg) = Collected::start(&env);
    let services = [
        Pipeline::processor(&config),
        Pipeline::start(&config, true, false),
    ];
    env.cluster
        .install_truth("millilag", "heartbeat")
        .await
        .unwrap();
    let reader = Pipeline::start(&config, false, true);
    let stalled = env.cluster.replica(0).address();
    got.until("the reader measuring", Duration::from_secs(30), |rs| {
        rs.iter().filter(|r| r.replica == stalled).count() >= 100
    })
    .await;
    for secs in [1u64, 10, 60] {
        let stall = env
            .cluster
            .stall(0, Duration::from_secs(secs))
            .await
            .unwrap();
        // The first heartbeat committed after the stall began: the longest wait.
        let rs = got
            .until("the stall measured", Duration::from_secs(60), |rs| {
                rs.iter().any(|r| {
                    r.replica == stalled
                        && r.status == MeasureStatus::Ok
                        && r.committed_at_us > stall.started_at_us
                })
            })
            .await;
        let first = rs
            .iter()
            .filter(|r| r.replica == stalled && r.committed_at_us > stall.stopped_at_us)
            .map(|r| r.seq)
            .min()
            .unwrap();
        let truth = env.cluster.true_delays(0, first).await.unwrap();
        let measured = rs
            .iter()
            .filter(|r| r.replica == stalled && r.seq == first && r.status == MeasureStatus::Ok)
            .map(|r| r.delay_us)
            .next();
        let true_peak = truth.get(&first).copied();
        let fired = notices
            .until("the lag alert", Duration::from_secs(30), |n| {
                n.rule == "lag"
                    && n.replica == stalled
                    && n.state == "firing"
                    && n.at_us > stall.stopped_at_us
            })
            .await;
        let fired = (fired.at_us - stall.stopped_at_us) as f64 / 1e6;
        eprintln!(
            "stall {secs:>2} s: true peak {:?} us, measured {measured:?} us, error {:?} us; lag alert {fired:.2} s after the stall began",
            true_peak,
            true_peak.zip(measured).map(|(t, m)| m - t)
        );
        notices
            .until("resolved", Duration::from_secs(30), |n| {
                n.rule == "lag" && n.state == "resolved" && n.at_us > stall.started_at_us
            })
            .await;
    }
    reader.stop().await;
    for s in services {
        s.stop().await;
    }
}
