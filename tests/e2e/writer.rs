//! The writer against a real MariaDB primary/replicas and a real broker.

use crate::common::{create_topics, http_get, metric, next_record, Env};
use millilag_core::events::HeartbeatSet;
use millilag_core::shutdown::shutdown_pair;
use millilag_harness::mariadb::{ADMIN_PASSWORD, ADMIN_USER};
use millilag_harness::process::Guard;
use mysql_async::prelude::*;
use rdkafka::consumer::Consumer;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_millilag");

/// Everything on the heartbeat topic up to its current end.
pub(crate) async fn drain(env: &Env) -> Vec<HeartbeatSet> {
    let c = env.consumer("heartbeat-set");
    let topic = env.topic("heartbeat-set");
    let (_, high) = c
        .fetch_watermarks(&topic, 0, Duration::from_secs(10))
        .unwrap();
    let mut out = Vec::new();
    while (out.len() as i64) < high {
        let (h, _) = next_record::<HeartbeatSet>(&c, Duration::from_secs(20))
            .await
            .expect("records up to the high watermark");
        out.push(h);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_announces_consecutive_heartbeats_whose_gtids_reach_the_replicas() {
    let env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let observer = env.consumer("heartbeat-set");
    let (stop, token) = shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(config, token));

    let mut seen = Vec::new();
    while seen.len() < 100 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("heartbeats keep coming");
        seen.push(h);
    }
    stop.trigger();
    writer.await.unwrap().unwrap();

    for (i, w) in seen.windows(2).enumerate() {
        assert_eq!(w[1].seq, w[0].seq + 1, "consecutive seq at {i}");
        assert!(w[1].committed_at_us > w[0].committed_at_us);
        // The dedicated GTID domain numbers heartbeats consecutively too.
        let n = |h: &HeartbeatSet| -> u64 {
            let (d, s, n) =
                millilag_core::db::parse_mariadb_gtid(h.gtid.as_deref().unwrap()).unwrap();
            assert_eq!((d, s), (77, 1), "domain 77, primary server_id 1");
            n
        };
        assert_eq!(n(&w[1]), n(&w[0]) + 1);
    }
    let first = &seen[0];
    assert_eq!(first.seq, 1);
    assert_eq!(first.interval_us, 10_000);
    assert!(first.commit_rtt_us > 0);
    assert_eq!(first.cluster, "main");
    assert_eq!(first.server_id, 1);

    // After a clean stop, the last announced heartbeat is what each replica executed last in
    // domain 77, and its row shows that seq.
    let all = drain(&env).await;
    let last = all.last().unwrap();
    let gtid = last.gtid.clone().unwrap();
    for r in &env.cluster.replicas {
        let mut c = r.connect().await.unwrap();
        let reached: Option<i64> = c
            .exec_first("SELECT MASTER_GTID_WAIT(?, 10)", (&gtid,))
            .await
            .unwrap();
        assert_eq!(reached, Some(0), "{} executed {gtid}", r.name);
        let pos: String = c
            .query_first("SELECT @@gtid_slave_pos")
            .await
            .unwrap()
            .unwrap();
        assert!(
            pos.split(',').any(|g| g == gtid),
            "{} gtid_slave_pos {pos} ends at {gtid}",
            r.name
        );
        let seq: i64 = c
            .query_first("SELECT CAST(seq AS SIGNED) FROM millilag.heartbeat WHERE server_id = 1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seq, last.seq, "{}", r.name);
    }
    let rate =
        (all.len() - 1) as f64 / ((last.committed_at_us - all[0].committed_at_us) as f64 / 1e6);
    eprintln!(
        "writer: {} heartbeats at {:.1}/s (configured 100/s)",
        all.len(),
        rate
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pt_heartbeat_reads_the_writers_table() {
    let env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let observer = env.consumer("heartbeat-set");
    let (stop, token) = shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(config, token));
    next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
        .await
        .expect("writer running");
    let replica = env.cluster.replica(0);
    let out = tokio::task::spawn_blocking({
        let dsn = format!(
            "h=127.0.0.1,P={},u={ADMIN_USER},p={ADMIN_PASSWORD}",
            replica.port
        );
        move || {
            Command::new("pt-heartbeat")
                .args(["--check", "-D", "millilag", "--table", "heartbeat"])
                .args(["--master-server-id", "1", "--utc", "--skew", "0.001"])
                .arg(dsn)
                .output()
                .expect("pt-heartbeat runs (percona-toolkit installed by scripts/setup)")
        }
    })
    .await
    .unwrap();
    stop.trigger();
    writer.await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pt-heartbeat failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let delay: f64 = stdout
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("pt-heartbeat printed {stdout:?}"));
    // Its format is seconds with two decimals; a running writer keeps it far below a minute
    // (a wrong ts format or time zone would show as hours or fail to parse).
    assert!((0.0..60.0).contains(&delay), "pt-heartbeat delay {delay}");
}

/// A writer process with its own metrics address and id.
pub(crate) fn spawn_writer(
    config: &std::path::Path,
    id: &str,
    dir: &std::path::Path,
) -> (Guard, String) {
    let listen = format!("127.0.0.1:{}", millilag_harness::free_port());
    let mut cmd = Command::new(BIN);
    cmd.arg("writer")
        .arg("--config")
        .arg(config)
        .env("MILLILAG_WRITER__WRITER_ID", id)
        .env("MILLILAG_WRITER__LISTEN", &listen)
        .env("RUST_LOG", "info");
    (
        Guard::spawn(id, cmd, &dir.join(format!("{id}.log"))).unwrap(),
        listen,
    )
}

/// millilag_writer_leader for cluster main, once the endpoint answers.
pub(crate) async fn leader_gauge(listen: &str) -> f64 {
    let (status, body) =
        millilag_harness::wait_for("writer /metrics", Duration::from_secs(10), || async {
            http_get(listen, "/metrics").await
        })
        .await
        .unwrap();
    assert_eq!(status, 200);
    metric(&body, "millilag_writer_leader{cluster=\"main\"}").unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_writer_is_replaced_by_the_standby_without_reusing_a_seq() {
    let env = Env::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("millilag.toml");
    std::fs::write(&cfg_path, env.config_toml("interval = \"10ms\"", "", "")).unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");

    let (mut a, a_listen) = spawn_writer(&cfg_path, "writer-a", dir.path());
    let mut seen: Vec<HeartbeatSet> = Vec::new();
    while seen.len() < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("writer-a writes; log:\n{}", a.log_tail(20)));
        seen.push(h);
    }
    assert!(seen.iter().all(|h| h.writer_id == "writer-a"));
    let (mut b, b_listen) = spawn_writer(&cfg_path, "writer-b", dir.path());
    // b is up and standing by once it logs so; a keeps writing meanwhile.
    millilag_harness::wait_for("writer-b standing by", Duration::from_secs(30), || async {
        std::fs::read_to_string(b.log_path())
            .ok()
            .filter(|l| l.contains("standing by"))
            .map(|_| ())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", b.log_tail(20)));
    assert_eq!(leader_gauge(&a_listen).await, 1.0, "writer-a leads");
    assert_eq!(leader_gauge(&b_listen).await, 0.0, "writer-b stands by");
    assert_eq!(
        http_get(&b_listen, "/readyz").await.unwrap().0,
        200,
        "a standby is ready"
    );
    a.kill();
    loop {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("writer-b takes over; log:\n{}", b.log_tail(20)));
        let from_b = h.writer_id == "writer-b";
        seen.push(h);
        if from_b && seen.iter().filter(|h| h.writer_id == "writer-b").count() >= 20 {
            break;
        }
    }
    assert!(b.is_running());
    for w in seen.windows(2) {
        assert!(
            w[1].seq > w[0].seq,
            "seq strictly increases across the takeover: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
    let last_a = seen
        .iter()
        .rev()
        .find(|h| h.writer_id == "writer-a")
        .unwrap();
    let first_b = seen.iter().find(|h| h.writer_id == "writer-b").unwrap();
    assert!(first_b.writer_epoch > last_a.writer_epoch, "epoch grows");
    // b continues from the row: at most the heartbeats a committed but had not announced yet
    // when it was killed lie in between.
    assert!(
        first_b.seq - last_a.seq <= 50,
        "gap {} .. {}",
        last_a.seq,
        first_b.seq
    );
    eprintln!(
        "takeover: last heartbeat of writer-a to first of writer-b: {:.1} ms (seq {} -> {})",
        (first_b.committed_at_us - last_a.committed_at_us) as f64 / 1000.0,
        last_a.seq,
        first_b.seq
    );
    assert_eq!(leader_gauge(&b_listen).await, 1.0, "writer-b leads now");

    // SIGTERM: b stops ticking, flushes Kafka, releases the lock and exits 0. Everything it
    // committed was announced: the row's seq is the topic's last seq.
    b.signal(libc::SIGTERM);
    let status = tokio::task::spawn_blocking(move || {
        let s = b.wait();
        (s, b)
    })
    .await
    .unwrap();
    assert!(
        status.0.is_some_and(|s| s.success()),
        "clean exit: {:?}\n{}",
        status.0,
        status.1.log_tail(10)
    );
    let mut p = env.cluster.primary.connect().await.unwrap();
    let row_seq: i64 = p
        .query_first("SELECT CAST(seq AS SIGNED) FROM millilag.heartbeat WHERE server_id = 1")
        .await
        .unwrap()
        .unwrap();
    let all = drain(&env).await;
    assert_eq!(
        all.last().unwrap().seq,
        row_seq,
        "last committed heartbeat was announced"
    );
    let lock_free: Option<i64> = p
        .query_first("SELECT IS_FREE_LOCK('millilag.writer.main')")
        .await
        .unwrap();
    assert_eq!(lock_free, Some(1), "lock released on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_recovers_when_the_primary_restarts() {
    let mut env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let observer = env.consumer("heartbeat-set");
    let (stop, token) = shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(config, token));
    let (before, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
        .await
        .unwrap();
    env.cluster.primary.restart().await.unwrap();
    let restarted_at = millilag_core::clock::now_us();
    let after = loop {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("heartbeats resume after the primary restarts");
        if h.committed_at_us > restarted_at {
            break h;
        }
    };
    assert!(after.seq > before.seq);
    assert!(
        after.writer_epoch > before.writer_epoch,
        "a new session takes the lock again"
    );
    stop.trigger();
    writer.await.unwrap().unwrap();
}
