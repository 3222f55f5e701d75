//! Real services for tests, the demo and benchmarks, each on a free 127.0.0.1 port in its own
//! temp dir, stopped on drop by PID (and by the kernel if the test process dies first).
//!
//! - [`mariadb::Cluster`]: a MariaDB primary and N replicas with GTID replication, a stall
//!   injector and the replicas' apply-time ground truth.
//! - [`broker::Broker`]: Tansu, the Kafka-protocol broker, with topic creation.
//! - [`victoria::Victoria`], [`influx::Influx`] (1.6), [`carbon::Carbon`]: the metric stores the
//!   processor writes to, each with a read-back helper; [`statsd::Statsd`] (Etsy's, from npm)
//!   flushing into a [`carbon::Carbon`]; [`alertmanager::Alertmanager`] routing
//!   to a [`alertmanager::WebhookReceiver`] the test runs; [`prometheus::Prometheus`] scraping
//!   the services' /metrics and evaluating rule files.
//! - [`tls::Pki`]: a private CA made at test time, and [`tls::Terminator`] (socat) to put TLS
//!   in front of a plaintext service; MariaDB, Tansu, VictoriaMetrics and the webhook receiver
//!   each have a TLS variant.
//!
//! Readiness is always checked by doing the real thing (a query as the user the test will use,
//! a metadata request), never by sleeping.

pub mod alertmanager;
pub mod broker;
pub mod carbon;
pub mod influx;
pub mod mariadb;
pub mod process;
pub mod prometheus;
pub mod scrape;
pub mod statsd;
pub mod tls;
pub mod victoria;

pub use broker::Broker;
pub use mariadb::{Cluster, Server};

/// A port that was free a moment ago on 127.0.0.1. Services are started with retries in case
/// another process takes it in between.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// Find an executable: `$env_var`, then PATH, then the given fallbacks (e.g. ~/.cargo/bin).
pub fn find_binary(
    name: &str,
    env_var: &str,
    fallbacks: &[std::path::PathBuf],
) -> anyhow::Result<std::path::PathBuf> {
    if let Ok(p) = std::env::var(env_var) {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain(fallbacks.iter().cloned()) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "{name} not found on PATH or in {fallbacks:?}; run scripts/setup (or set {env_var})"
    )
}

/// Poll `check` until it returns Some or `timeout` passes. For readiness of external processes,
/// where there is no event to await: the check is a real request, the gap only paces it.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: not ready after {timeout:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
