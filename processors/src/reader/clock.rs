//! Each cluster's clock: the offset from the local clock to the primary's, estimated
//! NTP-style over `SELECT UNIX_TIMESTAMP(SYSDATE(6))` round trips (lowest-RTT samples kept),
//! refreshed every `reader.clock_refresh`.

use millilag_core::clock::{now_us, sample_offset, OffsetEstimator};
use millilag_core::config::ClusterConfig;
use millilag_core::db;
use millilag_core::shutdown::Shutdown;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::warn;

pub(super) async fn sample_clock(
    c: &ClusterConfig,
    clock: &Mutex<OffsetEstimator>,
    n: usize,
) -> bool {
    // With several primary candidates, the writable one: its clock stamps the commits.
    let Ok((mut conn, url)) = db::connect_primary(c).await else {
        return false;
    };
    let (addr, limit) = (url.address(), c.query_timeout.0);
    for _ in 0..n {
        match db::bounded(limit, &addr, sample_offset(&mut conn)).await {
            Ok(s) => clock.lock().unwrap_or_else(|p| p.into_inner()).add(s),
            Err(_) => {
                db::close(conn).await;
                return false;
            }
        }
    }
    db::close(conn).await;
    true
}

/// Re-estimate the clock offset to the primary every `every`, keeping `bound` (seconds) up to
/// date. A primary that cannot be sampled leaves the last estimate in use, its bound growing
/// with the drift allowance; never sampled, records carry the "unknown" bound.
pub(super) async fn keep_clock(
    c: ClusterConfig,
    clock: Arc<Mutex<OffsetEstimator>>,
    every: Duration,
    bound: Gauge<f64, AtomicU64>,
    mut shutdown: Shutdown,
) {
    let mut warned = false;
    loop {
        let estimate = clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate(now_us());
        bound.set(estimate.uncertainty_us as f64 / 1e6);
        if !estimate.known && !warned {
            warn!(primary = %c.primary().address(), "The clock offset to the primary is unknown (it could not be sampled): delays assume offset 0 and say so with a 1 s uncertainty until it is.");
            warned = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait() => return,
        }
        let ok = sample_clock(&c, &clock, 5).await;
        if !ok && !warned {
            warn!(primary = %c.primary().address(), "Cannot reach the primary to refresh the clock offset; using the last estimate, its bound growing with time.");
        }
        warned = !ok;
    }
}
