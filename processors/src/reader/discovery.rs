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
    let addr = c.primary.address();
    let mut conn = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose())).await?;
    let dialect = db::dialect(&mut conn, &addr).await?;
    let hosts = db::replica_hosts(&mut conn, &dialect, &addr)
        .await
        .context(
        "listing replicas (needs REPLICATION MASTER ADMIN on MariaDB, REPLICATION SLAVE on MySQL)",
    )?;
    let _ = conn.disconnect().await;
    Ok(hosts
        .into_iter()
        .map(|(h, p)| c.primary.with_address(&h, p))
        .collect())
}
