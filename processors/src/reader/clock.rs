//! Each cluster's clock: the offset from the local clock to the primary's, estimated
//! NTP-style over `SELECT UNIX_TIMESTAMP(SYSDATE(6))` round trips (lowest-RTT samples kept),
//! refreshed every `reader.clock_refresh`.

use millilag_core::clock::{sample_offset, OffsetEstimator};
use millilag_core::config::ClusterConfig;
use millilag_core::db;
use millilag_core::shutdown::Shutdown;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

pub(super) async fn sample_clock(
    c: &ClusterConfig,
    clock: &Mutex<OffsetEstimator>,
    n: usize,
) -> bool {
    let Ok(mut conn) = db::connect(&c.primary, c.password.as_ref().map(|p| p.expose())).await
    else {
        return false;
    };
    for _ in 0..n {
        match sample_offset(&mut conn).await {
            Ok(s) => clock.lock().unwrap_or_else(|p| p.into_inner()).add(s),
            Err(_) => return false,
        }
    }
    let _ = conn.disconnect().await;
    true
}

/// Re-estimate the clock offset to the primary every `every`.
pub(super) async fn keep_clock(
    c: ClusterConfig,
    clock: Arc<Mutex<OffsetEstimator>>,
    every: Duration,
    mut shutdown: Shutdown,
) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let ok = sample_clock(&c, &clock, 5).await;
        if !ok && !warned {
            warn!(primary = %c.primary.address(), "Cannot reach the primary to refresh the clock offset; using the last estimate.");
        }
        warned = !ok;
    }
}
