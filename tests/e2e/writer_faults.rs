//! The writer when its databases misbehave (issue 13, items 2, 4 and 11): sessions that connect
//! but cannot write back off and say why once, with the fix; one broken cluster never stops the
//! others; every statement is bounded, so a hung primary costs a leader its lead, and a hung
//! writer its lock, within seconds.

use crate::common::{create_topics, http_get, metric, next_record, Env};
use crate::writer::{leader_gauge, spawn_writer};
use millilag_core::db::heartbeat_ddl;
use millilag_core::events::HeartbeatSet;
use millilag_harness::process::{cpu_seconds, Guard};
use millilag_harness::Server;
use mysql_async::prelude::*;
use std::time::Duration;

/// How many lines of the service's log contain `needle`.
fn count_lines(g: &Guard, needle: &str) -> usize {
    std::fs::read_to_string(g.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Until the service has logged `needle`.
async fn wait_log(g: &Guard, needle: &str) {
    millilag_harness::wait_for(needle, Duration::from_secs(30), || async {
        (count_lines(g, needle) > 0).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", g.log_tail(30)));
}

/// Connections the server accepted and tables it was asked to create during `for_`: what a
/// retry loop costs the database.
async fn load_during(server: &Server, for_: Duration) -> (i64, i64) {
    let c0 = server.global_status("Connections").await.unwrap();
    let d0 = server.global_status("Com_create_table").await.unwrap();
    tokio::time::sleep(for_).await;
    let c1 = server.global_status("Connections").await.unwrap();
    let d1 = server.global_status("Com_create_table").await.unwrap();
    // Minus our own connections: the one for d0 and the one for c1.
    (c1 - c0 - 2, d1 - d0)
}

/// SIGTERM and a clean exit.
async fn stop(mut g: Guard) {
    g.signal(libc::SIGTERM);
    let (status, g) = tokio::task::spawn_blocking(move || (g.wait(), g))
        .await
        .unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}\n{}",
        g.log_tail(20)
    );
}

async fn create_heartbeat_table(server: &Server, db: &str) {
    let mut c = server.admin().await.unwrap();
    for stmt in heartbeat_ddl(db, "heartbeat").unwrap() {
        c.query_drop(stmt).await.unwrap();
    }
}

/// Item 4: a read-only server (the writer's user has no SUPER, so it could not write anyway)
/// was reconnected to with no backoff once the session had opened. Now: one line naming the
/// cause and the fix, a handful of connections over seconds, no DDL, not ready; and writing
/// resumes once the server is writable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_primary_is_retried_with_backoff_and_named_once() {
    let env = Env::start(1).await;
    let primary = &env.cluster.primary;
    create_heartbeat_table(primary, "millilag").await;
    primary.set_read_only(true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    std::fs::write(
        &cfg,
        env.config_toml("interval = \"10ms\"\ncreate_table = false", "", ""),
    )
    .unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");

    let (w, listen) = spawn_writer(&cfg, "writer", dir.path());
    wait_log(&w, "Primary is read-only").await;
    let (connections, ddl) = load_during(primary, Duration::from_secs(3)).await;
    eprintln!("read-only primary, 3 s of retries: {connections} connections, {ddl} CREATE TABLE");
    // Backoff from 200 ms doubling: about 5 attempts in 3 s; a hot loop makes hundreds.
    assert!(connections <= 10, "{connections} connections in 3 s");
    assert_eq!(ddl, 0, "no DDL against a read-only server");
    assert_eq!(count_lines(&w, "Primary is read-only"), 1, "said once");
    let (code, body) = http_get(&listen, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("cluster main") && body.contains("is read-only"),
        "{body}"
    );
    assert_eq!(leader_gauge(&listen).await, 0.0);
    let (_, metrics) = http_get(&listen, "/metrics").await.unwrap();
    let errors = metric(
        &metrics,
        "millilag_writer_db_errors_total{cluster=\"main\"}",
    )
    .unwrap();
    assert!((1.0..=15.0).contains(&errors), "{errors} failed attempts");

    primary.set_read_only(false).await.unwrap();
    let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("writes once writable; log:\n{}", w.log_tail(20)));
    assert_eq!(h.seq, 1);
    wait_log(&w, "working again").await;
    assert_eq!(http_get(&listen, "/readyz").await.unwrap().0, 200);
    stop(w).await;
}

/// Item 4 and 11: on one server, a cluster whose table is pt-heartbeat's own (no seq or
/// writer_id) and one whose user may not INSERT each back off with their own line and fix,
/// while a healthy cluster keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_cannot_write_back_off_naming_the_fix_while_other_clusters_write() {
    let env = Env::start(1).await;
    let primary = &env.cluster.primary;
    let mut root = primary.admin().await.unwrap();
    root.query_drop(format!(
        "CREATE DATABASE pt;
         CREATE TABLE pt.heartbeat (ts varchar(26) NOT NULL, server_id int unsigned NOT NULL PRIMARY KEY,
           file varchar(255) DEFAULT NULL, position bigint unsigned DEFAULT NULL,
           relay_master_log_file varchar(255) DEFAULT NULL, exec_master_log_pos bigint unsigned DEFAULT NULL);
         GRANT SELECT, INSERT, UPDATE, CREATE ON pt.* TO '{u}'@'127.0.0.1';
         GRANT SELECT, CREATE ON noinsert.* TO '{u}'@'127.0.0.1';",
        u = millilag_harness::mariadb::USER
    ))
    .await
    .unwrap();
    let url = primary.url();
    let replica = env.cluster.replica(0).url();
    let clusters = ["pt", "noinsert"]
        .iter()
        .map(|db| {
            format!(
                "[[cluster]]\nname = \"{db}\"\nprimary = \"{url}\"\nreplicas = [\"{replica}\"]\ndatabase = \"{db}\"\n"
            )
        })
        .collect::<String>();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    std::fs::write(
        &cfg,
        env.config_toml("interval = \"10ms\"", "", "").replacen(
            "[writer]",
            &format!("{clusters}\n[writer]"),
            1,
        ),
    )
    .unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");

    let (w, listen) = spawn_writer(&cfg, "writer", dir.path());
    wait_log(&w, "lacks millilag's columns").await;
    wait_log(&w, "refused the writer's user").await;
    let (connections, ddl) = load_during(primary, Duration::from_secs(3)).await;
    eprintln!("two clusters that cannot write, 3 s of retries: {connections} connections, {ddl} CREATE TABLE");
    assert!(connections <= 20, "{connections} connections in 3 s");
    assert!(ddl <= 20, "{ddl} CREATE TABLE in 3 s");
    let log = std::fs::read_to_string(w.log_path()).unwrap();
    assert_eq!(count_lines(&w, "lacks millilag's columns"), 1, "{log}");
    assert!(
        log.contains("ALTER TABLE `pt`.`heartbeat` ADD COLUMN seq"),
        "the fix is spelled out:\n{log}"
    );
    assert_eq!(count_lines(&w, "refused the writer's user"), 1, "{log}");
    assert!(log.contains("command denied"), "{log}");
    assert!(
        log.contains("GRANT SELECT, INSERT, UPDATE, CREATE"),
        "{log}"
    );

    // The healthy cluster writes all along.
    let mut from_main = 0;
    while from_main < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("cluster main writes; log:\n{}", w.log_tail(20)));
        assert_eq!(h.cluster, "main", "only the healthy cluster announces");
        from_main += 1;
    }
    let (code, body) = http_get(&listen, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("cluster pt: ")
            && body.contains("cluster noinsert: ")
            && !body.contains("main"),
        "{body}"
    );
    stop(w).await;
}

/// Item 11: a primary that is down when the writer starts is retried on its own; the other
/// cluster writes meanwhile, and the first starts writing once its primary is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unreachable_primary_at_start_does_not_stop_the_other_clusters() {
    let env = Env::start(1).await;
    let mut other = millilag_harness::Cluster::start(0).await.unwrap();
    other.primary.kill();
    let second = format!(
        "[[cluster]]\nname = \"second\"\nprimary = \"{p}\"\nreplicas = [\"{p}\"]\nconnect_timeout = \"1s\"\n",
        p = other.primary.url()
    );
    let config = millilag_core::Config::from_toml_with_env(
        &env.config_toml("interval = \"10ms\"", "", "").replacen(
            "[writer]",
            &format!("{second}\n[writer]"),
            1,
        ),
        "test",
        Vec::new(),
    )
    .unwrap();
    let listen = config.writer.listen.to_string();
    create_topics(&config).await;
    let observer = env.consumer("heartbeat-set");
    let (stop, token) = millilag_core::shutdown::shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(config, token));

    let mut per_cluster = std::collections::BTreeMap::<String, usize>::new();
    while per_cluster.get("main").copied().unwrap_or(0) < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("cluster main writes while the other primary is down");
        *per_cluster.entry(h.cluster).or_default() += 1;
    }
    assert_eq!(per_cluster.get("second"), None);
    let (code, body) = http_get(&listen, "/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!(
            "cluster second: {} unreachable",
            other.primary.address()
        )),
        "{body}"
    );

    other.primary.restart().await.unwrap();
    while per_cluster.get("second").copied().unwrap_or(0) < 5 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("the second cluster writes once its primary is up");
        *per_cluster.entry(h.cluster).or_default() += 1;
    }
    millilag_harness::wait_for("ready", Duration::from_secs(10), || async {
        (http_get(&listen, "/readyz").await?.0 == 200).then_some(())
    })
    .await
    .unwrap();
    stop.trigger();
    writer.await.unwrap().unwrap();
}

/// SIGCONT on drop, so that a failed assertion does not leave a stopped server behind.
struct Frozen<'a>(&'a Server);

impl<'a> Frozen<'a> {
    fn new(s: &'a Server) -> Self {
        s.freeze();
        Frozen(s)
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.0.thaw();
    }
}

/// Item 2: a primary that stops answering (SIGSTOP: connections stay open, nothing answers)
/// no longer holds the leader's heartbeat forever: it steps down within query_timeout, is not
/// ready, and leads again once the primary answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_steps_down_when_its_primary_stops_answering() {
    let env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "", "");
    let mut config = config;
    config.clusters[0].query_timeout = "1s".parse().unwrap();
    config.clusters[0].connect_timeout = "1s".parse().unwrap();
    let listen = config.writer.listen.to_string();
    create_topics(&config).await;
    let observer = env.consumer("heartbeat-set");
    let (stop, token) = millilag_core::shutdown::shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(config, token));
    let (before, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
        .await
        .expect("writing");
    assert_eq!(leader_gauge(&listen).await, 1.0);

    let frozen = Frozen::new(&env.cluster.primary);
    millilag_harness::wait_for("the leader steps down", Duration::from_secs(30), || async {
        (leader_gauge(&listen).await == 0.0).then_some(())
    })
    .await
    .unwrap();
    let (code, body) = http_get(&listen, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    drop(frozen);

    let after = loop {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("heartbeats resume once the primary answers");
        if h.writer_epoch > before.writer_epoch {
            break h;
        }
    };
    assert!(after.seq > before.seq);
    assert_eq!(leader_gauge(&listen).await, 1.0);
    stop.trigger();
    writer.await.unwrap().unwrap();
}

/// Item 2, the other side: a leading writer that stops talking (SIGSTOP, as in a partition)
/// loses its session, and with it the lock, after the session's idle limit (interval +
/// query_timeout, not the server's 8 h), so the standby takes over; the old leader, resumed,
/// finds its session gone and does not write again. No seq is announced twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_leader_loses_the_lock_to_the_standby() {
    let env = Env::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    std::fs::write(
        &cfg,
        env.config_toml("interval = \"10ms\"", "", "").replacen(
            "[writer]",
            "query_timeout = \"1s\"\n\n[writer]",
            1,
        ),
    )
    .unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");
    let (a, a_listen) = spawn_writer(&cfg, "writer-a", dir.path());
    let mut seen: Vec<HeartbeatSet> = Vec::new();
    while seen.len() < 10 {
        seen.push(
            next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
                .await
                .expect("writer-a writes")
                .0,
        );
    }
    let (b, b_listen) = spawn_writer(&cfg, "writer-b", dir.path());
    wait_log(&b, "standing by").await;

    a.signal(libc::SIGSTOP);
    let first_b = loop {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("writer-b takes over; log:\n{}", b.log_tail(20)));
        let from_b = h.writer_id == "writer-b";
        seen.push(h.clone());
        if from_b {
            break h;
        }
    };
    a.signal(libc::SIGCONT);
    // The resumed writer finds its session closed by the server and stands by.
    millilag_harness::wait_for(
        "writer-a stands by again",
        Duration::from_secs(30),
        || async {
            (count_lines(&a, "standing by") >= 1 && leader_gauge(&a_listen).await == 0.0)
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", a.log_tail(20)));
    let mut from_b = 0;
    while from_b < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("writer-b keeps writing");
        from_b += usize::from(h.writer_id == "writer-b");
        seen.push(h);
    }
    assert_eq!(leader_gauge(&b_listen).await, 1.0);
    let last_a = seen
        .iter()
        .filter(|h| h.writer_id == "writer-a")
        .map(|h| h.seq)
        .max();
    assert!(
        last_a < Some(first_b.seq),
        "writer-a wrote nothing after writer-b took over: {last_a:?} vs {}",
        first_b.seq
    );
    let mut seqs: Vec<i64> = seen.iter().map(|h| h.seq).collect();
    seqs.sort_unstable();
    let n = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "no seq announced twice");
    eprintln!(
        "silent leader: last heartbeat of writer-a to first of writer-b: {:.0} ms",
        (first_b.committed_at_us
            - seen
                .iter()
                .filter(|h| h.writer_id == "writer-a")
                .map(|h| h.committed_at_us)
                .max()
                .unwrap()) as f64
            / 1000.0
    );
    stop(b).await;
    stop(a).await;
}

/// A broker that stops answering (SIGSTOP: its connections stay open) must not make the writer
/// burn a core. librdkafka's idempotent producer, once five messages were in flight, polled with
/// a zero timeout until the broker answered (vendor/README.md): the writer's Kafka thread spun
/// for as long as the broker hung, on the host it shares with whatever runs there. Waiting, the
/// writer only writes its heartbeats (a few % of a core); spinning, a thread takes all of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_answering_does_not_make_the_writer_spin() {
    let env = Env::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    std::fs::write(&cfg, env.config_toml("interval = \"10ms\"", "", "")).unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");
    let (writer, _) = spawn_writer(&cfg, "writer-a", dir.path());
    next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
        .await
        .expect("writer-a writes");

    env.broker.freeze();
    let from_seq = env.cluster.heartbeat_seq().await.unwrap();
    let (cpu0, t0) = (cpu_seconds(writer.pid()), std::time::Instant::now());
    // Two seconds of heartbeats queued behind requests the broker does not answer.
    millilag_harness::wait_for(
        "200 heartbeats while the broker hangs",
        Duration::from_secs(30),
        || async {
            let seq = env.cluster.heartbeat_seq().await.ok()?;
            (seq >= from_seq + 200).then_some(())
        },
    )
    .await
    .unwrap();
    let cores = (cpu_seconds(writer.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    env.broker.thaw();
    eprintln!("writer: {cores:.3} cores while the broker hung");
    assert!(
        cores < 0.3,
        "the writer used {cores:.2} cores while the broker hung (a spinning thread takes ~1)"
    );
    // And what was queued is delivered once it answers.
    loop {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .expect("heartbeats delivered after the broker resumes");
        if h.seq >= from_seq + 200 {
            break;
        }
    }
    stop(writer).await;
}
