//! Every sink gets the exact points, nothing is lost while one is down, and how long a window
//! takes to come out.

use super::*;
use millilag_core::clock::now_us;
use millilag_core::events::{DelayWindow, Record};
use millilag_core::kafka::topics;
use millilag_harness::carbon::Carbon;
use millilag_harness::influx::Influx;
use millilag_harness::victoria::Victoria;
use millilag_harness::wait_for;
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_known_records_yield_the_exact_points_in_victoriametrics_v1_and_v2() {
    let (env, vm) = tokio::join!(Env::start(), Victoria::start());
    let vm = vm.expect("VictoriaMetrics");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{vm}"
api = "v2"
org = "ops"
bucket = "millilag"
token_env = "VM_TOKEN"

[[sink.influxdb]]
url = "{vm}"
api = "v1"
database = "millilag"

[[sink.graphite]]
address = "{graphite}"
prefix = "millilag"
"#,
            vm = vm.url(),
            graphite = vm.graphite_address()
        ),
        &[("VM_TOKEN", "not-checked")],
    );
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second();
    let offsets = produce_known_input(&env, t).await;

    // Kafka sink: A then B, exactly as computed by hand.
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
            .await
            .expect("delay-window records")
            .unwrap();
        assert_eq!(m.key(), Some(format!("main/{REPLICA}").as_bytes()));
        got.push(DelayWindow::decode(m.payload().unwrap()).unwrap());
    }
    assert_eq!(got[0], expected_a(t));
    assert_eq!(
        (got[1].window_start_us, got[1].count, got[1].missing),
        (t + S, 2, 0)
    );
    // /metrics shows the replica's last closed window (B), as Prometheus reads it.
    let series = |name: &str, extra: &str| {
        format!("millilag_processor_{name}{{cluster=\"main\",replica=\"{REPLICA}\",window=\"1s\"{extra}}} ")
    };
    assert_eq!(
        p.metric(&series("window_heartbeats", ",kind=\"count\""))
            .await,
        2.0
    );
    assert_eq!(
        p.metric(&series("window_end_timestamp_seconds", "")).await,
        (t + 2 * S) as f64 / 1e6
    );
    let b_max = got[1].max_us.expect("B has delays") as f64 / 1e6;
    assert_eq!(
        p.metric(&series("window_delay_seconds", ",stat=\"max\""))
            .await,
        b_max
    );

    // VictoriaMetrics, through /api/v2/write (no db label) and /write (db="millilag").
    let want = fields(&expected_a(t));
    let ms = t / 1000;
    let points = wait_for(
        "window A in VictoriaMetrics",
        Duration::from_secs(30),
        || async {
            let p = vm_points(&vm).await;
            let complete = ["", "millilag"].iter().all(|db| {
                want.keys()
                    .all(|f| p.contains_key(&(db.to_string(), f.to_string(), ms)))
                    && p.contains_key(&(db.to_string(), "count".into(), ms + 1000))
            });
            complete.then_some(p)
        },
    )
    .await
    .unwrap();
    for db in ["", "millilag"] {
        for (f, v) in &want {
            assert_eq!(
                points[&(db.to_string(), f.to_string(), ms)],
                *v,
                "{f} (db={db:?})"
            );
        }
        assert_eq!(points[&(db.to_string(), "count".into(), ms + 1000)], 2.0);
        let timestamps: std::collections::BTreeSet<i64> = points
            .keys()
            .filter(|(d, f, _)| d == db && f == "count")
            .map(|(_, _, t)| *t)
            .collect();
        assert_eq!(
            timestamps,
            [ms, ms + 1000].into(),
            "only closed windows, stamped with their start"
        );
    }

    // Graphite plaintext into VictoriaMetrics' Graphite listener: path per field, seconds.
    for (f, v) in &want {
        let name = format!("millilag.main.db2_3306.1s.{f}");
        let got = wait_for(&name, Duration::from_secs(30), || async {
            let series = vm.export(&format!("{{__name__=\"{name}\"}}")).await.ok()?;
            let p = series.first()?.points();
            p.iter().find(|(t, _)| *t == ms).map(|(_, v)| *v)
        })
        .await
        .unwrap();
        assert_eq!(got, *v, "{name}");
    }

    // Counted in the metrics: one duplicate, one late record.
    assert_eq!(p.metric("millilag_processor_duplicates_total ").await, 1.0);
    assert_eq!(
        p.metric("millilag_processor_late_records_total{window=\"1s\"} ")
            .await,
        1.0
    );
    // Offsets: everything before window C is flushed; C's first record is still held.
    let c_first = *offsets.last().unwrap();
    let committed = wait_for("commit up to window C", Duration::from_secs(20), || async {
        env.committed().await.filter(|o| *o == c_first)
    })
    .await;
    assert_eq!(committed.unwrap(), c_first);
    p.stop().await;
    assert_eq!(
        env.committed().await,
        Some(c_first),
        "clean stop commits, never past the open window"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_writes_influxdb_1x_and_carbon_with_the_right_values_and_timestamps() {
    let (env, influx, carbon) =
        tokio::join!(Env::start(), Influx::start("millilag"), Carbon::start());
    let (influx, carbon) = (influx.expect("InfluxDB"), carbon.expect("carbon"));
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "500ms""#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"

[[sink.graphite]]
address = "{}"
prefix = "millilag"
"#,
            influx.url(),
            carbon.address()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    produce_known_input(&env, t).await;
    let want = expected_a(t);

    let rows = wait_for("windows in InfluxDB", Duration::from_secs(30), || async {
        let rows = influx
            .query(&format!(
                "SELECT * FROM replica_delay WHERE replica = '{REPLICA}' AND \"window\" = '1s'"
            ))
            .await
            .ok()?;
        (rows.len() >= 2).then_some(rows)
    })
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let a = &rows[0];
    assert_eq!(a["time"], t / 1000, "timestamp = window start, ms");
    assert_eq!(a["cluster"], "main");
    for (f, v) in fields(&want) {
        assert_eq!(a[f].as_f64(), Some(v), "{f}");
    }
    assert_eq!(rows[1]["time"], t / 1000 + 1000);
    assert_eq!(rows[1]["count"], 2);

    let path = "millilag.main.db2_3306.1s";
    let (from, until) = (t / S - 5, t / S + 5);
    for (f, v) in fields(&want) {
        let pts = wait_for(
            &format!("{path}.{f} in whisper"),
            Duration::from_secs(30),
            || async {
                let pts = carbon.fetch(&format!("{path}.{f}"), from, until).ok()??;
                pts.iter().any(|(ts, _)| *ts == t / S).then_some(pts)
            },
        )
        .await
        .unwrap();
        let at = pts.iter().find(|(ts, _)| *ts == t / S).unwrap();
        assert_eq!(at.1, v, "{f}");
    }
    let count = wait_for("B in whisper", Duration::from_secs(30), || async {
        let pts = carbon.fetch(&format!("{path}.count"), from, until).ok()??;
        pts.iter().find(|(ts, _)| *ts == t / S + 1).map(|p| p.1)
    })
    .await
    .unwrap();
    assert_eq!(count, 2.0);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_sink_outage_loses_nothing_and_offsets_wait_for_the_sink() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let mut influx = influx.expect("InfluxDB");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s"
max_pending_windows = 3"#,
        &format!(
            r#"
[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
timeout = "1s"
"#,
            influx.url()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    let mut firsts = Vec::new();
    for w in 0..5 {
        firsts.push(produce_window(&env, t, w).await);
    }
    // Windows 0..=3 closed and written; 4 open.
    wait_for(
        "windows 0..=3 in InfluxDB",
        Duration::from_secs(30),
        || async { (influx_counts(&influx).await.len() == 4).then_some(()) },
    )
    .await
    .unwrap();

    influx.kill();
    for w in 5..10 {
        firsts.push(produce_window(&env, t, w).await);
    }
    // Windows 4..=8 are closed but cannot be written. While the sink keeps failing, the
    // committed offset stays at or before window 4's first record.
    let failures = "millilag_processor_sink_failures_total{sink=\"influxdb[0]\"} ";
    let mut checks = 0;
    while p.metric(failures).await < 3.0 {
        if let Some(c) = env.committed().await {
            assert!(
                c <= firsts[4],
                "committed {c} passed unflushed window 4 ({})",
                firsts[4]
            );
        }
        checks += 1;
        assert!(checks < 600, "the sink never failed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Windows 4.. close as their records are consumed (on a busy box, after the failures);
    // consumption pauses once more than max_pending_windows (3) wait, so at least 4 do.
    wait_for(
        "more than 3 windows pending",
        Duration::from_secs(30),
        || async { (p.metric("millilag_processor_pending_windows ").await >= 4.0).then_some(()) },
    )
    .await
    .unwrap();
    // More than max_pending_windows wait: consumption is paused (bounded memory).
    let paused = wait_for("consumption paused", Duration::from_secs(10), || async {
        (p.metric("millilag_processor_paused ").await == 1.0).then_some(())
    })
    .await;
    assert!(paused.is_ok());
    if let Some(c) = env.committed().await {
        assert!(c <= firsts[4], "committed {c} passed unflushed window 4");
    }

    influx
        .restart()
        .await
        .expect("InfluxDB back on the same port and data");
    let counts = wait_for(
        "windows 0..=8 in InfluxDB",
        Duration::from_secs(60),
        || async {
            let c = influx_counts(&influx).await;
            (c.len() >= 9).then_some(c)
        },
    )
    .await
    .unwrap();
    let want: Vec<(i64, i64)> = (0..9).map(|w| (t / 1000 + w * 1000, 10)).collect();
    assert_eq!(counts, want, "every window exactly once, complete");
    let resumed = wait_for("consumption resumed", Duration::from_secs(10), || async {
        (p.metric("millilag_processor_paused ").await == 0.0).then_some(())
    })
    .await;
    assert!(resumed.is_ok());
    let committed = wait_for(
        "commit catches up to window 9",
        Duration::from_secs(20),
        || async { env.committed().await.filter(|c| *c == firsts[9]) },
    )
    .await;
    assert_eq!(committed.unwrap(), firsts[9]);
    p.stop().await;
}

/// Not a pass/fail check: prints how long a window takes to come out of the processor (its
/// `delay-window` record on Kafka) and to become readable in VictoriaMetrics, when records
/// arrive live (10 ms heartbeats, 1 s windows, lateness 100 ms). Measured from the window's
/// end, i.e. its last heartbeat; a heartbeat's own latency adds up to one window to that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_reports_end_to_end_latency_to_victoriametrics() {
    let (env, vm) = tokio::join!(Env::start(), Victoria::start());
    let vm = vm.expect("VictoriaMetrics");
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "100ms""#,
        &format!(
            r#"
[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
"#,
            vm.url()
        ),
        &[],
    );
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let seconds = 25;
    let stop = now_us() + (seconds + 5) * S;
    let producer = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let end = now_us() + seconds * S;
        let mut seq = 0;
        while now_us() < end {
            tick.tick().await;
            seq += 1;
            let t = now_us();
            env.send(&delay(seq, t, 2 * MS)).await;
        }
    };
    let kafka = async {
        let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
        while now_us() < stop {
            if let Ok(Ok(m)) =
                tokio::time::timeout(Duration::from_millis(200), windows.recv()).await
            {
                let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
                seen.entry(w.window_start_us / 1000).or_insert(now_us());
            }
        }
        seen
    };
    let watcher = async {
        let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
        while now_us() < stop {
            let p = vm_points(&vm).await;
            let at = now_us();
            for ((_, f, ms), _) in p {
                if f == "count" {
                    seen.entry(ms).or_insert(at);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    let (_, on_kafka, in_vm) = tokio::join!(producer, kafka, watcher);
    // VictoriaMetrics indexes a new series for several seconds; windows that ended before
    // the series first became readable measure that, not the steady state.
    let first_visible = in_vm.values().min().copied().unwrap_or(i64::MAX);
    let steady: BTreeMap<i64, i64> = in_vm
        .iter()
        .filter(|(ms, _)| *ms * 1000 + S >= first_visible)
        .map(|(k, v)| (*k, *v))
        .collect();
    for (what, seen) in [
        ("delay-window record on Kafka (processor output)", on_kafka),
        (
            "point readable in VictoriaMetrics /api/v1/export, series already indexed",
            steady,
        ),
        (
            "point readable in VictoriaMetrics /api/v1/export, including the new-series wait",
            in_vm,
        ),
    ] {
        let mut lat: Vec<i64> = seen.iter().map(|(ms, at)| at - (ms * 1000 + S)).collect();
        lat.sort_unstable();
        if lat.is_empty() {
            println!("latency to {what}: no windows observed");
            continue;
        }
        let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
        println!(
            "latency from window end to {what}, {} windows: p50 {} ms, p99 {} ms",
            lat.len(),
            q(0.5) / 1000,
            q(0.99) / 1000,
        );
    }
    p.stop().await;
}
