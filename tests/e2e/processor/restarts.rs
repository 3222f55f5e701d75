//! Poison records, SIGTERM, restarts and failover: offsets and windows across them.

use super::*;
use millilag_core::events::{DeadLetter, DelayWindow, Record};
use millilag_core::kafka::topics;
use millilag_core::Config;
use millilag_harness::influx::Influx;
use millilag_harness::{free_port, wait_for};
use rdkafka::message::Message;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_advances_offset_past_poison_record() {
    let env = Env::start().await;
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        "",
        &[],
    );
    env.create_topics(&config).await;
    let dead = env.consumer(topics::DEAD_LETTER);
    let windows = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second();
    let poison = env
        .send_bytes(b"main/db2:3306", b"\xC3\x01not a record")
        .await;
    env.send(&delay(1, t, 5 * MS)).await;
    let last = env.send(&delay(2, t + S, 5 * MS)).await;

    let m = tokio::time::timeout(Duration::from_secs(30), dead.recv())
        .await
        .expect("dead-letter record")
        .unwrap();
    let d = DeadLetter::decode(m.payload().unwrap()).unwrap();
    assert_eq!(d.offset, poison);
    assert_eq!(d.service, "processor");
    assert_eq!(
        d.payload.as_deref().map(|b| &b[..]),
        Some(&b"\xC3\x01not a record"[..])
    );
    assert!(d.reason.contains("replica-delay"), "{}", d.reason);
    // ...and the processor went on.
    let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
        .await
        .expect("window after the poison record")
        .unwrap();
    let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
    assert_eq!((w.window_start_us, w.count), (t, 1));
    assert_eq!(
        p.metric("millilag_processor_decode_failures_total ").await,
        1.0
    );
    let committed = wait_for(
        "commit past the poison record",
        Duration::from_secs(20),
        || async { env.committed().await.filter(|c| *c == last) },
    )
    .await;
    assert!(committed.unwrap() > poison);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_binary_stops_cleanly_on_sigterm_and_commits_the_open_window() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config_text = format!(
        r#"
[kafka]
brokers = "{}"
topic_prefix = "{}"
partitions = 1

[reader]
timeout = "1s"

[processor]
group = "{}"
listen = "127.0.0.1:{port}"
idle_close = "1h"
windows = ["1s"]
allowed_lateness = "0s"
"#,
        env.broker.brokers(),
        env.prefix,
        env.group
    );
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, &config_text).unwrap();
    let config = Config::from_toml_with_env(&config_text, "test", Vec::new()).unwrap();
    env.create_topics(&config).await;
    let windows = env.consumer(topics::DELAY_WINDOW);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millilag"));
    cmd.arg("processor").arg("--config").arg(&path);
    let mut guard =
        millilag_harness::process::Guard::spawn("processor", cmd, &dir.path().join("p.log"))
            .unwrap();
    let ready = wait_for("processor /readyz", Duration::from_secs(30), || async {
        let r = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_ok(), "{}", guard.log_tail(20));

    let t = base_second();
    env.send(&delay(1, t, 5 * MS)).await;
    let open = env.send(&delay(2, t + S, 5 * MS)).await;
    let m = tokio::time::timeout(Duration::from_secs(30), windows.recv())
        .await
        .expect("the first window")
        .unwrap();
    let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
    assert_eq!((w.window_start_us, w.count), (t, 1));

    guard.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || (guard.wait(), guard))
        .await
        .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "{}",
        status.1.log_tail(20)
    );
    assert_eq!(
        env.committed().await,
        Some(open),
        "committed up to the open window's first record, synchronously before exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_restart_replays_without_re_emitting_flushed_windows() {
    let env = Env::start().await;
    let windows_cfg = r#"windows = ["1s", "10s"]
allowed_lateness = "0s""#;
    let config = env.config(windows_cfg, "", &[]);
    env.create_topics(&config).await;
    let out = env.consumer(topics::DELAY_WINDOW);
    let p = Running::start(config);
    let t = base_second() / (10 * S) * (10 * S);
    // Three seconds of heartbeats: 1 s windows 0 and 1 close; window 2 and the 10 s window stay
    // open, so the committed offset stays at the very first record.
    for w in 0..3 {
        produce_window(&env, t, w).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(30), out.recv())
            .await
            .expect("1 s windows")
            .unwrap();
        got.push(DelayWindow::decode(m.payload().unwrap()).unwrap());
    }
    p.stop().await;
    assert_eq!(
        env.committed().await,
        Some(0),
        "the 10 s window holds the first record"
    );

    // The restarted processor re-reads everything from offset 0, skips the flushed 1 s windows
    // and rebuilds the open ones completely.
    let p = Running::start(env.config(windows_cfg, "", &[]));
    for w in 3..10 {
        produce_window(&env, t, w).await;
    }
    env.send(&delay(1_000, t + 10 * S, MS)).await;
    let mut ten = None;
    while ten.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(30), out.recv())
            .await
            .expect("the 10 s window")
            .unwrap();
        let w = DelayWindow::decode(m.payload().unwrap()).unwrap();
        if w.window_us == 10 * S {
            ten = Some(w);
        } else {
            got.push(w);
        }
    }
    let ten = ten.unwrap();
    assert_eq!((ten.window_start_us, ten.count, ten.missing), (t, 100, 0));
    let starts: Vec<i64> = got.iter().map(|w| (w.window_start_us - t) / S).collect();
    let want: Vec<i64> = (0..10).collect();
    // 1 s windows 0..=9, each exactly once, window 2 rebuilt complete.
    let mut sorted = starts.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want, "emitted: {starts:?}");
    assert!(got.iter().all(|w| w.count == 10), "{got:?}");
    assert!(p.metric("millilag_processor_replayed_records_total ").await >= 20.0);
    p.stop().await;
}

/// DESIGN §5: a processor is killed mid-stream (SIGKILL: no flush, no commit) and another one
/// in the same group takes over from the committed offset: every window reaches the sink
/// exactly once and complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_failover_after_sigkill_rebuilds_windows_from_kafka() {
    let (env, influx) = tokio::join!(Env::start(), Influx::start("millilag"));
    let influx = influx.expect("InfluxDB");
    let dir = tempfile::tempdir().unwrap();
    let config_for = |port: u16| {
        format!(
            r#"
[kafka]
brokers = "{}"
topic_prefix = "{}"
partitions = 1

[reader]
timeout = "1s"

[processor]
group = "{}"
listen = "127.0.0.1:{port}"
idle_close = "1h"
windows = ["1s"]
allowed_lateness = "0s"

[sink.kafka]
enabled = false

[[sink.influxdb]]
url = "{}"
api = "v1"
database = "millilag"
"#,
            env.broker.brokers(),
            env.prefix,
            env.group,
            influx.url()
        )
    };
    let start = |name: &str| {
        let port = free_port();
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, config_for(port)).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millilag"));
        cmd.arg("processor").arg("--config").arg(&path);
        millilag_harness::process::Guard::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
            .unwrap()
    };
    let config = Config::from_toml_with_env(&config_for(free_port()), "test", Vec::new()).unwrap();
    env.create_topics(&config).await;

    let t = base_second();
    let mut a = start("processor-a");
    for w in 0..5 {
        produce_window(&env, t, w).await;
    }
    wait_for("A wrote windows 0..=3", Duration::from_secs(30), || async {
        (influx_counts(&influx).await.len() == 4).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", a.log_tail(20)));
    a.kill();
    for w in 5..10 {
        produce_window(&env, t, w).await;
    }
    let b = start("processor-b");
    let counts = wait_for("B wrote windows 0..=8", Duration::from_secs(60), || async {
        let c = influx_counts(&influx).await;
        (c.len() >= 9).then_some(c)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", b.log_tail(20)));
    let want: Vec<(i64, i64)> = (0..9).map(|w| (t / 1000 + w * 1000, 10)).collect();
    assert_eq!(counts, want, "every window exactly once, complete");
}
