//! Helpers shared by the end-to-end tests.

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        millilag_core::clock::now_us() % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Logs from the services under test, at TEST_LOG level (default warn).
#[allow(dead_code)]
pub fn init_logging() {
    millilag_core::telemetry::init_logging(&millilag_core::config::LogConfig {
        format: millilag_core::config::LogFormat::Pretty,
        level: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    });
}
