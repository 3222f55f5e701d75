//! The writer across a primary switchover (issue 13, item 3): given both servers as candidates,
//! it writes only to the writable one, follows the promoted replica, and seq continues there
//! without a gap (the old primary's row replicated, and the new leader continues from the
//! largest seq in the table). With both servers writable it writes to neither.

use crate::common::{create_topics, http_get, next_record, Env};
use crate::writer::{leader_gauge, spawn_writer};
use millilag_core::events::HeartbeatSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_follows_a_promoted_replica_and_seq_continues() {
    let env = Env::start(1).await;
    let (old, new) = (&env.cluster.primary, env.cluster.replica(0));
    // A replica as it should be: read-only (the harness leaves them writable).
    new.set_read_only(true).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("millilag.toml");
    let candidates = format!("primary = [\"{}\", \"{}\"]", old.url(), new.url());
    std::fs::write(
        &cfg,
        env.config_toml("interval = \"10ms\"", "", "").replacen(
            &format!("primary = \"{}\"", old.url()),
            &candidates,
            1,
        ),
    )
    .unwrap();
    create_topics(&env.config("", "", "")).await;
    let observer = env.consumer("heartbeat-set");
    let (mut w, _listen) = spawn_writer(&cfg, "writer", dir.path());

    let mut seen: Vec<HeartbeatSet> = Vec::new();
    while seen.len() < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("writing on the primary; log:\n{}", w.log_tail(20)));
        seen.push(h);
    }
    assert!(
        seen.iter()
            .all(|h| h.server_id == 1 && h.primary == old.address()),
        "the writable candidate is the old primary"
    );

    env.cluster.promote(0).await.unwrap();
    let promoted_at = millilag_core::clock::now_us();
    let mut on_new = 0;
    while on_new < 20 {
        let (h, _) = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!("the writer follows the promotion; log:\n{}", w.log_tail(20))
            });
        on_new += usize::from(h.server_id == new.server_id as i64);
        seen.push(h);
    }

    for pair in seen.windows(2) {
        assert!(
            pair[1].seq == pair[0].seq + 1,
            "seq continues without a gap: {} ({}) then {} ({})",
            pair[0].seq,
            pair[0].primary,
            pair[1].seq,
            pair[1].primary
        );
    }
    let last_old = seen.iter().rev().find(|h| h.server_id == 1).unwrap();
    let first_new = seen
        .iter()
        .find(|h| h.server_id == new.server_id as i64)
        .unwrap();
    assert_eq!(first_new.primary, new.address());
    assert!(first_new.writer_epoch > last_old.writer_epoch);
    assert!(
        seen.iter()
            .skip_while(|h| h.server_id == 1)
            .all(|h| h.server_id == new.server_id as i64),
        "nothing more on the old primary once the writer moved"
    );
    eprintln!(
        "switchover: last heartbeat on the old primary to first on the promoted replica: {:.0} ms ({:.0} ms after the promotion finished); seq {} -> {}",
        (first_new.committed_at_us - last_old.committed_at_us) as f64 / 1000.0,
        (first_new.committed_at_us - promoted_at) as f64 / 1000.0,
        last_old.seq,
        first_new.seq
    );

    // The refusal is said once for the old primary, however many times it was tried since.
    let log = std::fs::read_to_string(w.log_path()).unwrap();
    let old_read_only = log
        .lines()
        .filter(|l| l.contains("Primary is read-only") && l.contains(&old.address()))
        .count();
    assert_eq!(old_read_only, 1, "{log}");
    // Nothing was written on the demoted server after the switchover.
    let mut c = old.admin().await.unwrap();
    let row: Option<i64> = mysql_async::prelude::Queryable::query_first(
        &mut c,
        "SELECT CAST(seq AS SIGNED) FROM millilag.heartbeat WHERE server_id = 1",
    )
    .await
    .unwrap();
    assert_eq!(row, Some(last_old.seq));

    // The old primary comes back writable (read_only does not survive a restart): a writer
    // starting now cannot tell which server is the primary, and writes to neither.
    w.signal(libc::SIGTERM);
    let w = tokio::task::spawn_blocking(move || {
        w.wait();
        w
    })
    .await
    .unwrap();
    drop(w);
    let last = seen.last().unwrap().seq;
    old.set_read_only(false).await.unwrap();
    let (w2, listen2) = spawn_writer(&cfg, "writer-2", dir.path());
    millilag_harness::wait_for("refusal", Duration::from_secs(30), || async {
        std::fs::read_to_string(w2.log_path())
            .ok()?
            .contains("Several primary candidates are writable")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", w2.log_tail(20)));
    assert_eq!(leader_gauge(&listen2).await, 0.0);
    let (code, body) = http_get(&listen2, "/readyz").await.unwrap();
    assert!(code == 503 && body.contains("all writable"), "{body}");
    old.set_read_only(true).await.unwrap();
    let (h, _) = loop {
        let r = next_record::<HeartbeatSet>(&observer, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("writes once one is writable; log:\n{}", w2.log_tail(20)));
        if r.0.writer_id == "writer-2" {
            break r;
        }
    };
    assert_eq!(h.server_id, new.server_id as i64);
    assert!(h.seq > last, "seq continues: {} after {last}", h.seq);
    let mut c = old.admin().await.unwrap();
    let row: Option<i64> = mysql_async::prelude::Queryable::query_first(
        &mut c,
        "SELECT CAST(seq AS SIGNED) FROM millilag.heartbeat WHERE server_id = 1",
    )
    .await
    .unwrap();
    assert_eq!(
        row,
        Some(last_old.seq),
        "nothing written on the old primary"
    );
}
