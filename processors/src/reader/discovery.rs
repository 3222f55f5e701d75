//! Replica discovery (`discover_replicas`): every `reader.discovery_interval` the primary is
//! asked which replicas it has, and the changes go to the consumer loop.

use anyhow::Context;
use millilag_core::config::{ClusterConfig, DbUrl};
use millilag_core::db;
use millilag_core::shutdown::Shutdown;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// Replica changes found by discovery.
pub(super) enum Discovery {
    Add { cluster: String, url: DbUrl },
    Gone { cluster: String, addr: String },
}

/// Every `every`, ask the primary which replicas it has and report changes.
pub(super) async fn discover(
    c: ClusterConfig,
    every: Duration,
    tx: mpsc::UnboundedSender<Discovery>,
    mut shutdown: Shutdown,
) {
    let mut known: BTreeSet<String> = BTreeSet::new();
    loop {
        match list_replicas(&c).await {
            Ok(found) => {
                let now: BTreeSet<String> = found.iter().map(|u| u.address()).collect();
                for u in found {
                    if !known.contains(&u.address()) {
                        let _ = tx.send(Discovery::Add {
                            cluster: c.name.clone(),
                            url: u,
                        });
                    }
                }
                for gone in known.difference(&now) {
                    let _ = tx.send(Discovery::Gone {
                        cluster: c.name.clone(),
                        addr: gone.clone(),
                    });
                }
                known = now;
            }
            Err(e) => warn!(
                error = format!("{e:#}"),
                "Replica discovery failed; keeping the current list."
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
    }
}

async fn list_replicas(c: &ClusterConfig) -> anyhow::Result<Vec<DbUrl>> {
    let (mut conn, primary) = db::connect_primary(c).await?;
    let (addr, limit) = (primary.address(), c.query_timeout.0);
    let listed = async {
        let dialect = db::dialect_within(&mut conn, &addr, limit).await?;
        db::replica_hosts_within(&mut conn, &dialect, &addr, limit).await
    };
    let hosts = listed.await.context(
        "listing replicas (needs REPLICATION MASTER ADMIN on MariaDB, REPLICATION SLAVE on MySQL)",
    );
    db::close(conn).await;
    Ok(hosts?
        .into_iter()
        .map(|(h, p)| primary.with_address(&h, p))
        .collect())
}
