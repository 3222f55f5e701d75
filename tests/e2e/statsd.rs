//! `[[sink.statsd]]` against the real daemon: Etsy statsd (npm) flushing into carbon-cache,
//! values read back from whisper; and a statsd that is not there, which must cost the other
//! sinks and the offsets nothing. Input is hand-made `replica-delay` records (processor.rs).

use crate::processor::{base_second, delay, expected_a, with_status, Env, Running, MS, S};
use millilag_core::clock::now_us;
use millilag_core::events::MeasureStatus;
use millilag_harness::carbon::Carbon;
use millilag_harness::statsd::Statsd;
use millilag_harness::wait_for;
use std::time::Duration;

/// Window A = [t, t+1s) of `expected_a` and nothing else closed: seqs 1..=10 (seq 1 an upper
/// bound of 900 ms, the others 2..=10 ms), a duplicate of seq 5 from a second reader group, a
/// timeout (seq 11), seq 13 (20 ms); seq 16 at t+1.6s (watermark t+1.1s) closes A and opens B,
/// which stays open, so A is the only window statsd ever gets (a gauge holds the last value
/// sent); then seq 12 arrives late for A. Returns the offset of seq 16 (B's first record,
/// where the committed offset must stop).
///
/// Exact measurements, once each: 2..=10 ms, 20 ms (A), 1 ms (B) and the late 90 ms (a real
/// delay, though its window had closed) — 12 timers, sum 165 ms, min 1, max 90. Not timers: the
/// upper bound, the second group's copy of seq 5, the timeout.
async fn produce(env: &Env, t: i64) -> i64 {
    for seq in 1..=10 {
        let mut r = delay(seq, t + seq * 50 * MS, seq * MS);
        if seq == 1 {
            r.upper_bound = true;
            r.delay_us = 900 * MS;
        }
        env.send(&r).await;
    }
    let mut dup = delay(5, t + 250 * MS, 7 * MS);
    dup.reader_id = "second-group".into();
    env.send(&dup).await;
    env.send(&with_status(
        delay(11, t + 600 * MS, 1_000 * MS),
        MeasureStatus::Timeout,
    ))
    .await;
    env.send(&delay(13, t + 700 * MS, 20 * MS)).await;
    let b = env.send(&delay(16, t + 1_600 * MS, MS)).await;
    env.send(&delay(12, t + 650 * MS, 90 * MS)).await;
    b
}

/// Window A (the same as the other sinks' tests expect) as the statsd sink names its gauges:
/// count 11, missing 2, p50 6 ms, p90 10 ms, p99 and max 20 ms.
fn gauges(t: i64) -> [(&'static str, f64); 6] {
    let a = expected_a(t);
    let ms = |us: Option<i64>| us.expect("A has delays") as f64 / 1000.0;
    [
        ("count", a.count as f64),
        ("missing", a.missing as f64),
        ("p50_ms", ms(a.p50_us)),
        ("p90_ms", ms(a.p90_us)),
        ("p99_ms", ms(a.p99_us)),
        ("max_ms", ms(a.max_us)),
    ]
}

/// Wait until a /metrics series reaches `want` (the sink's task counts after sending); its value.
async fn metric_reaches(p: &Running, series: &str, want: f64) -> f64 {
    wait_for(series, Duration::from_secs(10), || async {
        let v = p.metric(series).await;
        (v >= want).then_some(v)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Points of a whisper series (plain or tagged) written since the test began.
fn points(carbon: &Carbon, series: &str, from: i64) -> Option<Vec<(i64, f64)>> {
    let until = now_us() / S + 60;
    if series.contains(';') {
        carbon.fetch_tagged(series, from, until).ok()?
    } else {
        carbon.fetch(series, from, until).ok()?
    }
}

/// A timer's per-flush statistics, once their counts add up to `n`: (count, sum, lower, upper).
async fn timer_totals(carbon: &Carbon, timer: &str, tags: &str, from: i64, n: f64) -> [f64; 4] {
    let stat = |s: &str| format!("stats.timers.{timer}.{s}{tags}");
    wait_for(
        &format!("{n} timings of {timer}{tags} in whisper"),
        Duration::from_secs(30),
        || async {
            let count = points(carbon, &stat("count"), from)?;
            let total: f64 = count.iter().map(|p| p.1).sum();
            if total < n {
                return None;
            }
            // The flushes that carried timings; their sum, lower and upper.
            let flushes: Vec<i64> = count.iter().filter(|p| p.1 > 0.0).map(|p| p.0).collect();
            let at = |s: &str| -> Option<Vec<f64>> {
                let pts = points(carbon, &stat(s), from)?;
                let vals: Vec<f64> = pts
                    .iter()
                    .filter(|p| flushes.contains(&p.0))
                    .map(|p| p.1)
                    .collect();
                (vals.len() == flushes.len()).then_some(vals)
            };
            let sum: f64 = at("sum")?.iter().sum();
            let lower = at("lower")?.into_iter().fold(f64::MAX, f64::min);
            let upper = at("upper")?.into_iter().fold(f64::MIN, f64::max);
            Some([total, sum, lower, upper])
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_gauges_and_timers_land_in_whisper_through_etsy_statsd() {
    let (env, carbon) = tokio::join!(Env::start(), Carbon::start());
    let carbon = carbon.expect("carbon");
    let statsd = Statsd::start(&carbon.address(), Duration::from_secs(1))
        .await
        .expect("statsd");
    let from = now_us() / S - 5;
    // Both protocols into the same daemon: statsd 0.9 turns DogStatsD tags into Graphite tags.
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.statsd]]
address = "{a}"
prefix = "millilag"
timings = true
mtu = 512

[[sink.statsd]]
address = "{a}"
prefix = "dd"
protocol = "dogstatsd"
timings = true
"#,
            a = statsd.address()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    produce(&env, t).await;

    // Plain statsd: cluster, replica and window in the path. A gauge is re-sent at every flush
    // until it changes, and only A ever closed: every point must be A's value.
    for (field, want) in gauges(t) {
        let series = format!("stats.gauges.millilag.main.db2_3306.1s.{field}");
        let pts = wait_for(&series, Duration::from_secs(30), || async {
            points(&carbon, &series, from).filter(|p| !p.is_empty())
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; statsd log:\n{}", statsd.log_tail(20)));
        assert!(
            pts.iter().all(|p| p.1 == want),
            "{series}: {pts:?}, want {want}"
        );
    }
    // DogStatsD: fixed names, cluster/replica/window as tags.
    for (field, want) in gauges(t) {
        let series = format!("stats.gauges.dd.{field};cluster=main;replica=db2_3306;window=1s");
        let pts = wait_for(&series, Duration::from_secs(30), || async {
            points(&carbon, &series, from).filter(|p| !p.is_empty())
        })
        .await
        .unwrap();
        assert!(
            pts.iter().all(|p| p.1 == want),
            "{series}: {pts:?}, want {want}"
        );
    }
    let gauges = statsd.gauges().await.unwrap();
    assert_eq!(gauges["millilag.main.db2_3306.1s.p99_ms"], 20.0);
    assert_eq!(
        gauges["dd.p99_ms;cluster=main;replica=db2_3306;window=1s"],
        20.0
    );

    // Timers: statsd computes them per flush from the exact measurements, as millipede's
    // users had it. Across however many flushes they fell into: 12 timings, 165 ms, 1..90 ms.
    let want = [12.0, 165.0, 1.0, 90.0];
    let plain = timer_totals(&carbon, "millilag.main.db2_3306.delay", "", from, 12.0).await;
    assert_eq!(plain, want, "[count, sum, lower, upper]");
    let dd = timer_totals(
        &carbon,
        "dd.delay",
        ";cluster=main;replica=db2_3306",
        from,
        12.0,
    )
    .await;
    assert_eq!(dd, want, "[count, sum, lower, upper] (dogstatsd)");

    for sink in ["statsd[0]", "statsd[1]"] {
        let sent = |kind: &str| {
            format!("millilag_processor_statsd_sent_total{{sink=\"{sink}\",kind=\"{kind}\"}}")
        };
        assert_eq!(
            metric_reaches(&p, &sent("windows"), 1.0).await,
            1.0,
            "{sink}"
        );
        assert_eq!(
            metric_reaches(&p, &sent("timings"), 12.0).await,
            12.0,
            "{sink}"
        );
    }
    let bad = statsd.admin("stats").await.unwrap();
    assert!(bad.contains("messages.bad_lines_seen: 0"), "{bad}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_down_holds_back_neither_the_other_sinks_nor_the_offsets() {
    let (env, carbon) = tokio::join!(Env::start(), Carbon::start());
    let carbon = carbon.expect("carbon");
    // Nothing listens on this UDP port; and a name that never resolves (RFC 6761).
    let dead = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.graphite]]
address = "{graphite}"
prefix = "millilag"

[[sink.statsd]]
address = "{dead}"
timings = true

[[sink.statsd]]
address = "statsd.invalid:8125"
timings = true
timeout = "1s"
"#,
            graphite = carbon.address()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    let b = produce(&env, t).await;

    // A reaches Graphite with its values...
    let path = "millilag.main.db2_3306.1s";
    let (from, until) = (t / S - 5, t / S + 5);
    let count = wait_for("A in whisper", Duration::from_secs(30), || async {
        let pts = carbon.fetch(&format!("{path}.count"), from, until).ok()??;
        pts.iter().find(|(ts, _)| *ts == t / S).map(|p| p.1)
    })
    .await
    .unwrap();
    assert_eq!(count, 11.0);
    // ...and the offsets move up to the open window B: statsd held nothing back.
    let committed = wait_for(
        "offset committed up to B",
        Duration::from_secs(30),
        || async { env.committed().await.filter(|o| *o == b) },
    )
    .await;
    assert_eq!(committed.ok(), Some(b));
    assert_eq!(p.metric("millilag_processor_paused").await, 0.0);

    // Best effort, counted: sent into the void, or dropped because the name never resolved.
    let m = |s: &str| format!("millilag_processor_statsd_{s}");
    for (series, want) in [
        (m(r#"sent_total{sink="statsd[0]",kind="windows"}"#), 1.0),
        (m(r#"sent_total{sink="statsd[0]",kind="timings"}"#), 12.0),
        (
            m(r#"dropped_total{sink="statsd[1]",kind="windows",reason="unresolved"}"#),
            1.0,
        ),
        (
            m(r#"dropped_total{sink="statsd[1]",kind="timings",reason="unresolved"}"#),
            12.0,
        ),
    ] {
        assert_eq!(metric_reaches(&p, &series, want).await, want, "{series}");
    }
    p.stop().await;
}
