//! The shared database helpers against a real server that stops answering (issue 13, item 2):
//! every call returns within its bound, as a retryable timeout, instead of waiting for TCP.

use crate::common::init_logging;
use millilag_core::config::DbUrl;
use millilag_core::db::{self, DbTimeouts, Dialect, WaitSession};
use millilag_core::error::RetryHint;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_helper_is_bounded_when_the_server_hangs() {
    init_logging();
    let cluster = millilag_harness::Cluster::start(1).await.unwrap();
    let replica = cluster.replica(0);
    let url = DbUrl::parse(&replica.url()).unwrap();
    let addr = url.address();
    let t = DbTimeouts {
        connect: Duration::from_millis(500),
        query: Duration::from_millis(300),
    };
    let mut conn = db::connect_with(&url, None, &t).await.unwrap();
    let dialect = db::dialect_within(&mut conn, &addr, t.query).await.unwrap();
    assert!(matches!(dialect, Dialect::MariaDb { .. }));
    // A GTID that never comes: the server's own wait ends it, the first time (prepared
    // then) and with the kept statement.
    let mut session = WaitSession::new(conn);
    for _ in 0..2 {
        let answer = session
            .gtid_wait(&dialect, &addr, "77-1-999999", 0.2, t.query)
            .await
            .unwrap();
        assert_eq!(answer.reached, Some(false));
    }
    let mut conn = session.into_conn();
    assert!(
        db::replica_status_within(&mut conn, &dialect, &addr, t.query)
            .await
            .unwrap()
            .replicating()
    );

    // Of several candidates, the services other than the writer take the writable one for
    // what only the primary knows (clock, replica list).
    replica.set_read_only(true).await.unwrap();
    let config = millilag_core::Config::from_toml_with_env(
        &format!(
            "[[cluster]]\nname = \"c\"\nprimary = [\"{}\", \"{}\"]\nreplicas = [\"{}\"]\n",
            replica.url(),
            cluster.primary.url(),
            replica.url()
        ),
        "test",
        Vec::new(),
    )
    .unwrap();
    let (found, chosen) = db::connect_primary(&config.clusters[0]).await.unwrap();
    assert_eq!(chosen.address(), cluster.primary.address());
    db::close(found).await;
    replica.set_read_only(false).await.unwrap();

    replica.freeze();
    let hung = db::replica_status_within(&mut conn, &dialect, &addr, t.query)
        .await
        .unwrap_err();
    assert!(db::is_timeout(&hung), "{hung}");
    assert_eq!(hung.retry_hint(), RetryHint::Retry);
    assert!(hung.to_string().contains(&addr), "{hung}");
    db::close(conn).await;
    let refused = db::connect_with(&url, None, &t).await.unwrap_err();
    assert!(db::is_timeout(&refused), "{refused}");
    replica.thaw();

    let mut conn = db::connect_with(&url, None, &t).await.unwrap();
    let mut waiting = WaitSession::new(db::connect_with(&url, None, &t).await.unwrap());
    replica.freeze();
    let hung = waiting
        .gtid_wait(&dialect, &addr, "77-1-999999", 0.1, t.query)
        .await
        .unwrap_err();
    assert!(db::is_timeout(&hung), "{hung}");
    let hung = db::is_read_only(&mut conn, &addr, t.query)
        .await
        .unwrap_err();
    assert!(db::is_timeout(&hung), "{hung}");
    replica.thaw();
}
