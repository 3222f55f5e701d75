//! Loud when broken: what millilag says while replication is broken, against real MariaDB
//! replication and Tansu — a stall longer than every timeout, measured while it lasts and
//! exactly when it ends, alerted on while it lasts; a dead writer; and no false alarm when a
//! reader starts late or restarts.

use crate::alerting::{pipeline_config, Notice, Notices, Windows};
use crate::common::{create_topics, http_get, metric, Collected, Env, Pipeline};
use millilag_core::clock::now_us;
use millilag_core::events::{MeasureStatus, ReplicaDelay};
use millilag_harness::alertmanager::WebhookReceiver;
use std::collections::BTreeMap;
use std::time::Duration;

/// The reader's live-lag gauge for `replica`.
async fn lag_gauge(listen: &str, replica: &str) -> Option<f64> {
    let (_, body) = http_get(listen, "/metrics").await?;
    metric(
        &body,
        &format!("millilag_replica_lag_seconds{{cluster=\"main\",replica=\"{replica}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_the_reader_timeout_shows_live_lag_and_every_heartbeat_gets_its_real_delay(
) {
    const STALL: Duration = Duration::from_secs(8);
    let env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", "timeout = \"2s\"", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let writer = Pipeline::start(&config, true, false);
    env.cluster
        .install_truth("millilag", "heartbeat")
        .await
        .unwrap();
    let reader = Pipeline::start(&config, false, true);
    let stalled = env.cluster.replica(0).address();
    let other = env.cluster.replica(1).address();
    let listen = config.reader.listen.to_string();
    got.until("the reader measuring", Duration::from_secs(30), |rs| {
        rs.iter()
            .filter(|r| r.replica == stalled && r.status == MeasureStatus::Ok)
            .count()
            >= 50
    })
    .await;

    // While the SQL thread is stopped, the lag is known: once a published sample says the
    // oldest unshown heartbeat is 4 s old, the gauge says so too (and the other replica is fine).
    let watch = async {
        got.until(
            "a live-lag sample over 4 s",
            STALL + Duration::from_secs(10),
            |rs| {
                rs.iter().any(|r| {
                    r.replica == stalled
                        && r.status == MeasureStatus::Pending
                        && r.delay_us > 4_000_000
                })
            },
        )
        .await;
        (
            lag_gauge(&listen, &stalled).await,
            lag_gauge(&listen, &other).await,
        )
    };
    let (stall, (lag_stalled, lag_other)) = tokio::join!(env.cluster.stall(0, STALL), watch);
    let stall = stall.unwrap();
    let lag_stalled = lag_stalled.expect("the stalled replica's lag gauge");
    assert!(lag_stalled > 4.0, "gauge during the stall: {lag_stalled} s");
    assert!(
        lag_other.expect("the other replica's lag gauge") < 1.0,
        "the other replica is in step"
    );

    // Every heartbeat committed during the stall gets an ok record with its real delay, however
    // much longer than reader.timeout it waited.
    let stall_seqs: Vec<i64> = got
        .snapshot()
        .iter()
        .filter(|r| {
            r.replica == other
                && r.committed_at_us > stall.stopped_at_us
                && r.committed_at_us < stall.started_at_us
        })
        .map(|r| r.seq)
        .collect();
    let last = *stall_seqs
        .iter()
        .max()
        .expect("heartbeats during the stall");
    let rs = got
        .until(
            "an ok record for every heartbeat of the stall",
            Duration::from_secs(30),
            |rs| {
                let ok: std::collections::BTreeSet<i64> = rs
                    .iter()
                    .filter(|r| r.replica == stalled && r.status == MeasureStatus::Ok)
                    .map(|r| r.seq)
                    .collect();
                stall_seqs.iter().all(|s| ok.contains(s))
            },
        )
        .await;
    writer.stop().await;
    reader.stop().await;
    let truth = env.cluster.true_delays(0, 0).await.unwrap();
    // Seen once in ~20 runs: a seq of the stall without a row in one truth table. Said, and
    // held to a few, so a broken probe cannot pass for an accurate reader.
    let without_truth: Vec<i64> = stall_seqs
        .iter()
        .filter(|s| !truth.contains_key(s))
        .copied()
        .collect();
    if !without_truth.is_empty() {
        let changed = env.cluster.primary_truth(0).await.unwrap();
        let applied = env.cluster.truth(0, 0).await.unwrap();
        eprintln!(
            "no truth for {} stall seqs, e.g. {:?} (in the primary's table, the replica's)",
            without_truth.len(),
            without_truth
                .iter()
                .take(5)
                .map(|s| (*s, changed.contains_key(s), applied.contains_key(s)))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        without_truth.len() * 20 <= stall_seqs.len(),
        "{} of {} stall seqs have no truth",
        without_truth.len(),
        stall_seqs.len()
    );
    let mine: Vec<&ReplicaDelay> = rs.iter().filter(|r| r.replica == stalled).collect();
    let ok: BTreeMap<i64, &ReplicaDelay> = mine
        .iter()
        .filter(|r| r.status == MeasureStatus::Ok && stall_seqs.contains(&r.seq))
        .map(|r| (r.seq, *r))
        .collect();
    let given_up = mine
        .iter()
        .filter(|r| r.status == MeasureStatus::ReplicationStopped && r.seq <= last)
        .count();
    // Heartbeats older than reader.timeout were reported at the deadline (their offsets moved
    // on): about the first 6 s of the stall's 8.
    assert!(given_up > 300, "{given_up} replication_stopped records");
    let mut worst = (0i64, 0i64, 0i64);
    let mut peak = (0i64, 0i64);
    for (seq, r) in &ok {
        let Some(&true_delay) = truth.get(seq) else {
            continue;
        };
        // A stalled replica is looked at again every 250 ms (a wait giving up says "not yet"
        // for every later heartbeat); one committed after the last such look before the
        // stall ended may honestly be only an upper bound.
        let looked_after = r.committed_at_us < stall.started_at_us - 300_000;
        assert!(
            !r.upper_bound || !looked_after,
            "stalled heartbeats are bracketed: {r:?}"
        );
        let err = (r.delay_us - true_delay).abs();
        if err > worst.0 {
            worst = (err, *seq, true_delay);
        }
        if true_delay > peak.0 {
            peak = (true_delay, r.delay_us);
        }
    }
    eprintln!(
        "8 s stall, reader.timeout 2 s: {} heartbeats, peak true {} us measured {} us, worst abs error {} us (seq {}, true {} us), {given_up} reported at the deadline, gauge {lag_stalled} s",
        ok.len(),
        peak.0,
        peak.1,
        worst.0,
        worst.1,
        worst.2
    );
    assert!(
        peak.0 > 7_500_000,
        "the stall's peak is in the truth: {peak:?}"
    );
    // Same tolerance as the short stalls of the accuracy tests (reader.rs).
    assert!(
        (peak.1 - peak.0).abs() <= 5_000,
        "8 s stall peak measured {} us, true {} us",
        peak.1,
        peak.0
    );
    // The burst after 8 s is hundreds of transactions applied back to back on a replica that
    // shares two cores with everything else: the reader brackets them with waits and reads a
    // few milliseconds apart, so their error is that bracket, which each record states as its
    // uncertainty. Held here: the median error within the median stated uncertainty (a reader
    // that misplaced the burst, or understated its doubt, fails). Measured on this box (debug
    // build): p50 1.0-1.4 ms idle, 10-14 ms at load 5-9; the benchmark reports the tail.
    let (mut errs, mut doubts): (Vec<i64>, Vec<i64>) = ok
        .iter()
        .filter_map(|(seq, r)| Some(((r.delay_us - truth.get(seq)?).abs(), r.uncertainty_us)))
        .unzip();
    errs.sort();
    doubts.sort();
    eprintln!(
        "  abs error p50 {} us, p90 {} us, p99 {} us, max {} us; stated uncertainty p50 {} us",
        errs[errs.len() / 2],
        errs[errs.len() * 9 / 10],
        errs[errs.len() * 99 / 100],
        errs[errs.len() - 1],
        doubts[doubts.len() / 2]
    );
    let (p50, doubt) = (errs[errs.len() / 2], doubts[doubts.len() / 2]);
    assert!(
        p50 <= doubt,
        "abs error p50 {p50} us beyond the records' own uncertainty p50 {doubt} us"
    );
    // The live lag was published while the stall lasted, up to its end.
    let samples: Vec<i64> = mine
        .iter()
        .filter(|r| r.status == MeasureStatus::Pending)
        .map(|r| r.delay_us)
        .collect();
    assert!(
        samples.iter().any(|d| *d > 7_000_000),
        "lag samples up to the end of the stall: {samples:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_started_late_or_restarted_raises_no_alert() {
    let env = Env::start(2).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = pipeline_config(&env, &receiver, "");
    create_topics(&config).await;
    let notices = Notices::start(receiver);
    let windows = Windows::start(&env);
    let addrs: Vec<String> = env.cluster.replicas.iter().map(|r| r.address()).collect();
    let writer = Pipeline::start(&config, true, false);
    let processor = Pipeline::processor(&config);
    // 1.5 s of heartbeats before any reader: visible by the time it looks.
    let before = env.cluster.heartbeat_seq().await.unwrap_or(0);
    millilag_harness::wait_for("150 heartbeats", Duration::from_secs(30), || async {
        (env.cluster.heartbeat_seq().await.unwrap_or(0) >= before + 150).then_some(())
    })
    .await
    .unwrap();
    let reader = Pipeline::start(&config, false, true);
    let t0 = now_us();
    windows
        .until(
            "windows after the reader started",
            Duration::from_secs(30),
            |all| addrs.iter().all(|a| Windows::count_for(all, a, t0) >= 3),
        )
        .await;
    // A restart: 2 s of heartbeats pile up, the new reader finds them already visible.
    reader.stop().await;
    let seq = env.cluster.heartbeat_seq().await.unwrap_or(0);
    millilag_harness::wait_for(
        "200 heartbeats without a reader",
        Duration::from_secs(30),
        || async { (env.cluster.heartbeat_seq().await.unwrap_or(0) >= seq + 200).then_some(()) },
    )
    .await
    .unwrap();
    let reader = Pipeline::start(&config, false, true);
    let t1 = now_us();
    windows
        .until(
            "windows after the restart",
            Duration::from_secs(30),
            |all| addrs.iter().all(|a| Windows::count_for(all, a, t1) >= 3),
        )
        .await;
    reader.stop().await;
    processor.stop().await;
    writer.stop().await;
    let all = windows.all();
    let worst = all
        .iter()
        .filter(|(w, _)| w.count > w.upper_bounds)
        .filter_map(|(w, _)| w.max_us)
        .max();
    let bounded = all.iter().filter(|(w, _)| w.upper_bounds > 0).count();
    eprintln!(
        "late start + restart: {} windows, {bounded} with upper bounds, largest exact max {worst:?} us, notifications {:?}",
        all.len(),
        notices.all()
    );
    assert!(bounded > 0, "the backlogs were seen, as upper bounds");
    assert!(
        worst.is_some_and(|m| m < 300_000),
        "no window shows a lag the replicas did not have: {worst:?}"
    );
    assert!(
        notices.all().is_empty(),
        "no alert because a reader started: {:?}",
        notices.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_longer_than_the_reader_timeout_fires_the_lag_alert_while_it_lasts_and_resolves_once(
) {
    const STALL: Duration = Duration::from_secs(8);
    let env = Env::start(2).await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let config = pipeline_config(&env, &receiver, "timeout = \"2s\"");
    create_topics(&config).await;
    let notices = Notices::start(receiver);
    let windows = Windows::start(&env);
    let stalled = env.cluster.replica(0).address();
    let other = env.cluster.replica(1).address();
    let services = [
        Pipeline::processor(&config),
        Pipeline::start(&config, true, true),
    ];
    let t0 = now_us();
    windows
        .until("windows of both replicas", Duration::from_secs(30), |all| {
            [&stalled, &other]
                .iter()
                .all(|a| Windows::count_for(all, a, t0) >= 2)
        })
        .await;
    assert!(
        notices.all().is_empty(),
        "quiet before the stall: {:?}",
        notices.all()
    );
    let watch = notices.until("the lag alert during the stall", STALL, |n| {
        n.rule == "lag" && n.replica == stalled && n.state == "firing"
    });
    let (stall, fired) = tokio::join!(env.cluster.stall(0, STALL), watch);
    let stall = stall.unwrap();
    let resolved = notices
        .until("the lag alert resolved", Duration::from_secs(30), |n| {
            n.rule == "lag" && n.replica == stalled && n.state == "resolved"
        })
        .await;
    for s in services {
        s.stop().await;
    }
    let mine: Vec<Notice> = notices
        .all()
        .into_iter()
        .filter(|n| n.rule == "lag")
        .collect();
    let during: Vec<i64> = windows
        .all()
        .iter()
        .filter(|(w, at)| {
            w.replica == stalled
                && w.window_start_us > stall.stopped_at_us
                && *at < stall.started_at_us
        })
        .filter_map(|(w, _)| w.max_us)
        .collect();
    eprintln!(
        "8 s stall: lag alert fired {:.2} s after the stall began, resolved {:.2} s after it ended; windows closed during it (max, ms): {:?}",
        (fired.at_us - stall.stopped_at_us) as f64 / 1e6,
        (resolved.at_us - stall.started_at_us) as f64 / 1e6,
        during.iter().map(|m| m / 1000).collect::<Vec<_>>()
    );
    assert!(
        fired.at_us < stall.started_at_us,
        "fired while the stall lasted"
    );
    assert_eq!(
        mine.iter()
            .map(|n| (n.replica.as_str(), n.state.as_str()))
            .collect::<Vec<_>>(),
        vec![(stalled.as_str(), "firing"), (stalled.as_str(), "resolved")],
        "one firing and one resolved, for the stalled replica only"
    );
    // The stalled replica's windows closed on time, carrying the lag so far.
    assert!(
        during.len() >= 4,
        "windows closed during the stall: {during:?}"
    );
    assert!(during.iter().all(|m| *m > 300_000), "{during:?}");
}
