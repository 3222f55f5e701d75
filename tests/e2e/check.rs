//! `millilag check` and `millilag monitor` against real replication with millilag's writer
//! running (no reader, no processor), and the tools pt-heartbeat users already run
//! (pt-heartbeat is in writer.rs) reading the writer's table: mysqld_exporter's heartbeat
//! collector.

use crate::common::{create_topics, http_get, Env, Pipeline};
use millilag_harness::mariadb::{ADMIN_PASSWORD, ADMIN_USER};
use millilag_harness::process::Guard;
use millilag_harness::{free_port, wait_for};
use mysql_async::prelude::*;
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_millilag");

/// `millilag check --config <path> <args>`: (exit code, stdout).
async fn check(config: &Path, args: &[&str]) -> (i32, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(config)
        .args(args)
        .env_clear()
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Run `check` until it exits with `code` and its output satisfies `pred` (bounded).
async fn check_until(
    config: &Path,
    args: &[&str],
    what: &str,
    code: i32,
    pred: impl Fn(&str) -> bool,
) -> String {
    let last = std::sync::Mutex::new((0, String::new()));
    let found = wait_for(what, Duration::from_secs(30), || async {
        let (c, out) = check(config, args).await;
        let ok = c == code && pred(&out);
        *last.lock().unwrap() = (c, out.clone());
        ok.then_some(out)
    })
    .await;
    found.unwrap_or_else(|e| panic!("{e}; last: {:?}", last.lock().unwrap()))
}

/// The per-replica line of `replica` in check's output.
fn line<'a>(out: &'a str, replica: &str) -> &'a str {
    out.lines()
        .skip(1)
        .find(|l| l.split_whitespace().nth(1) == Some(replica))
        .unwrap_or_else(|| panic!("no line for {replica}: {out}"))
}

/// The delay (seconds) a check line reports.
fn delay(line: &str) -> f64 {
    line.split_whitespace()
        .nth(2)
        .and_then(|d| d.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no delay in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_monitor_report_lag_stopped_replication_and_failures_with_nagios_codes() {
    let mut env = Env::start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    std::fs::write(&cfg, env.config_toml("interval = \"10ms\"", "", "")).unwrap();
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let writer = Pipeline::start(&config, true, false);
    let (r0, r1) = (
        env.cluster.replica(0).address(),
        env.cluster.replica(1).address(),
    );

    // Healthy: OK, exit 0, one line per replica, Nagios perfdata.
    let out = check_until(&cfg, &[], "check OK", 0, |_| true).await;
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("MILLILAG OK - 2 replicas, highest delay"),
        "{out}"
    );
    assert!(
        first.contains(" | 'main/") && first.contains(&format!("'main/{r0}'=")),
        "{out}"
    );
    for r in [&r0, &r1] {
        let l = line(&out, r);
        assert!(l.contains(" OK "), "{l}");
        assert!(delay(l) < 60.0, "{l}");
    }

    // monitor: one line per replica per round, pt-heartbeat style, stops after --count.
    let out = tokio::process::Command::new(BIN)
        .args(["monitor", "--interval", "50ms", "--count", "3", "--config"])
        .arg(&cfg)
        .env_clear()
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for l in &lines {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f[0].ends_with('Z') && f[1] == "main", "{l}");
        assert!(f[4] == "[" && f[8] == "]", "{l}");
    }

    // A replica whose applier is blocked (threads still running): the lag grows past the
    // warning level (exit 1), then past the critical one (exit 2); the other stays OK.
    let mut lock = env.cluster.replica(0).admin().await.unwrap();
    lock.query_drop("FLUSH TABLES WITH READ LOCK")
        .await
        .unwrap();
    let warn = ["--warn-delay", "200ms", "--max-delay", "1h"];
    let out = check_until(&cfg, &warn, "check WARNING", 1, |o| {
        o.starts_with("MILLILAG WARNING")
    })
    .await;
    assert!(line(&out, &r0).contains(" WARNING "), "{out}");
    assert!(delay(line(&out, &r0)) > 0.2, "{out}");
    assert!(line(&out, &r1).contains(" OK "), "{out}");
    let crit = ["--warn-delay", "200ms", "--max-delay", "400ms"];
    let out = check_until(&cfg, &crit, "check CRITICAL", 2, |_| true).await;
    let l = line(&out, &r0);
    assert!(
        l.contains(" CRITICAL ") && l.contains("heartbeats behind"),
        "{l}"
    );
    assert!(!l.contains("replication stopped"), "{l}");
    assert!(delay(l) > 0.4, "{l}");
    lock.query_drop("UNLOCK TABLES").await.unwrap();
    drop(lock);
    check_until(&cfg, &crit, "check OK after the lock", 0, |_| true).await;

    // Replication stopped (the harness's stall): CRITICAL naming the thread, during the stall.
    let stalled = async {
        check_until(&cfg, &[], "check sees the stall", 2, |o| {
            o.lines().any(|l| {
                l.contains(&r0) && l.contains("replication stopped: SQL thread not running")
            })
        })
        .await
    };
    let (stall, out) = tokio::join!(env.cluster.stall(0, Duration::from_secs(4)), stalled);
    stall.unwrap();
    assert!(line(&out, &r1).contains(" OK "), "{out}");
    check_until(&cfg, &[], "check OK after the stall", 0, |_| true).await;

    // Only one cluster, or one that does not exist (UNKNOWN, 3).
    let (code, _) = check(&cfg, &["--cluster", "main"]).await;
    assert_eq!(code, 0);
    let (code, out) = check(&cfg, &["--cluster", "nope"]).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("MILLILAG UNKNOWN - no cluster named \"nope\""),
        "{out}"
    );
    let (code, out) = check(&dir.path().join("missing.toml"), &[]).await;
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("MILLILAG UNKNOWN - invalid config"),
        "{out}"
    );

    // A replica down: CRITICAL, unreachable.
    env.cluster.replicas[1].kill();
    let out = check_until(&cfg, &[], "check sees the dead replica", 2, |_| true).await;
    assert!(line(&out, &r1).contains("CRITICAL unreachable"), "{out}");

    // The writer stops: the replicas look caught up, but nothing is measured: UNKNOWN.
    writer.stop().await;
    let out = check_until(&cfg, &[], "check sees no writer", 3, |_| true).await;
    assert!(out.contains("no writer is writing heartbeats"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysqld_exporter_heartbeat_collector_reads_the_writers_table() {
    let env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let writer = Pipeline::start(&config, true, false);
    let dir = tempfile::tempdir().unwrap();
    let replica = env.cluster.replica(0);
    let cnf = dir.path().join("my.cnf");
    std::fs::write(
        &cnf,
        format!(
            "[client]\nuser={ADMIN_USER}\npassword={ADMIN_PASSWORD}\nhost=127.0.0.1\nport={}\n",
            replica.port
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut cmd = std::process::Command::new(
        millilag_harness::find_binary(
            "prometheus-mysqld-exporter",
            "MILLILAG_MYSQLD_EXPORTER",
            &["/usr/bin".into()],
        )
        .unwrap(),
    );
    cmd.arg(format!("--config.my-cnf={}", cnf.display()))
        .arg(format!("--web.listen-address={listen}"))
        .args([
            "--collect.heartbeat",
            "--collect.heartbeat.database=millilag",
            "--collect.heartbeat.table=heartbeat",
            "--collect.heartbeat.utc",
        ]);
    let _exporter = Guard::spawn("mysqld_exporter", cmd, &dir.path().join("exporter.log")).unwrap();

    // Two scrapes: the stored heartbeat is the writer's (server_id 1), recent, and moving.
    let read = || async {
        let (status, body) = http_get(&listen, "/metrics").await?;
        let value = |name: &str| -> Option<f64> {
            body.lines()
                .find(|l| l.starts_with(&format!("{name}{{server_id=\"1\"}}")))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        };
        let stored = value("mysql_heartbeat_stored_timestamp_seconds")?;
        let now = value("mysql_heartbeat_now_timestamp_seconds")?;
        (status == 200).then_some((stored, now))
    };
    let (stored, now) = wait_for(
        "mysqld_exporter heartbeat metrics",
        Duration::from_secs(30),
        read,
    )
    .await
    .unwrap();
    // A wrong time zone or an unparsed ts would be hours off (or 0).
    assert!(
        (0.0..60.0).contains(&(now - stored)),
        "now {now} stored {stored}"
    );
    wait_for(
        "the stored heartbeat advances",
        Duration::from_secs(30),
        || async {
            let (s, _) = read().await?;
            (s > stored).then_some(())
        },
    )
    .await
    .unwrap();
    writer.stop().await;
}
