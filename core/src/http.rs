//! Each service's own HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process is
//! alive) and `/readyz` (it is doing its job: connected, leading or standing by, consuming).
//! /metrics serves the service's registry followed by `millilag_build_info` and the process
//! metrics ([`crate::metrics::process`]).

use crate::shutdown::Shutdown;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Readiness shared between the service and its endpoint: the service's own state (starting,
/// shutting down) and that of each of its parts (a cluster's writer, a replica's task, the
/// sinks), which report themselves. A task that panicked anywhere in the process makes it not
/// ready too ([`install_panic_hook`]): a panic is never swallowed.
#[derive(Clone, Default)]
pub struct Health {
    /// None = ready; Some(reason) = not ready, and why (shown by /readyz).
    not_ready: Arc<Mutex<Option<String>>>,
    /// Parts that are not doing their job, and why.
    failing: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Health {
    pub fn starting() -> Self {
        Health {
            not_ready: Arc::new(Mutex::new(Some("starting".into()))),
            failing: Arc::default(),
        }
    }

    pub fn set_ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    /// `part` is not doing its job, because `why`.
    pub fn part_failing(&self, part: &str, why: impl Into<String>) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(part.to_string(), why.into());
    }

    /// `part` does its job (again).
    pub fn part_ok(&self, part: &str) {
        self.failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(part);
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        if let Some(p) = PANICKED.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Some(format!("a task panicked ({p}); restart the service"));
        }
        if let Some(r) = self
            .not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Some(r);
        }
        let failing = self.failing.lock().unwrap_or_else(|p| p.into_inner());
        (!failing.is_empty()).then(|| {
            failing
                .iter()
                .map(|(part, why)| format!("{part}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// The first panic of the process, where and what.
static PANICKED: Mutex<Option<String>> = Mutex::new(None);

/// Log every panic as an error, with its place and message, and make every service of the
/// process not ready from then on (a task that panicked is gone; its work is not done).
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        record_panic(&panic_text(info));
        default(info);
    }));
}

fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> String {
    let what = info
        .payload()
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| info.payload().downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    match info.location() {
        Some(l) => format!("{what} at {}:{}", l.file(), l.line()),
        None => what,
    }
}

fn record_panic(text: &str) {
    tracing::error!(panic = %text, "A task panicked; this service is not ready from now on.");
    let mut p = PANICKED.lock().unwrap_or_else(|p| p.into_inner());
    if p.is_none() {
        *p = Some(text.to_string());
    }
}

#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    process: Arc<Registry>,
    health: Health,
}

pub fn app(registry: Arc<Registry>, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            process: Arc::new(crate::metrics::process::registry()),
            health,
        })
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    use prometheus_client::encoding::text::{encode_eof, encode_registry};
    let mut body = String::new();
    let encoded = encode_registry(&mut body, &s.registry)
        .and_then(|()| encode_registry(&mut body, &s.process))
        .and_then(|()| encode_eof(&mut body));
    match encoded {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("encoding metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Bind now (so a taken port fails at start, with the address), serve until shutdown.
pub async fn bind_and_serve(
    listen: SocketAddr,
    registry: Arc<Registry>,
    health: Health,
    shutdown: Shutdown,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!(
                "binding the metrics/health endpoint to {listen} (set listen to a free address)"
            )
        })?;
    let app = app(registry, health);
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.triggered())
            .await;
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use prometheus_client::metrics::counter::Counter;
    use tower::ServiceExt;

    async fn get(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn a_panic_anywhere_is_logged_and_makes_the_service_not_ready() {
        // nextest runs each test in a process of its own: the global record stays here.
        install_panic_hook();
        let health = Health::starting();
        health.set_ready();
        assert_eq!(health.not_ready_reason(), None);
        let t = std::thread::spawn(|| panic!("replica task exploded"));
        assert!(t.join().is_err());
        let why = health.not_ready_reason().expect("not ready after a panic");
        assert!(
            why.contains("replica task exploded") && why.contains("http.rs"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn endpoints_report_metrics_and_readiness() {
        let mut reg = Registry::with_prefix("millilag");
        let c: Counter = Counter::default();
        reg.register("test_events", "Events seen", c.clone());
        c.inc_by(3);
        let health = Health::starting();
        let app = app(Arc::new(reg), health.clone());

        let (s, body) = get(app.clone(), "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(body.contains("millilag_test_events_total 3"), "{body}");
        // Build info and process metrics follow the service's own, in one exposition.
        for name in [
            "millilag_build_info{",
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(body.contains(name), "{name} in {body}");
        }
        assert!(body.ends_with("# EOF\n") && body.matches("# EOF").count() == 1);
        assert_eq!(get(app.clone(), "/healthz").await.0, StatusCode::OK);
        let (s, body) = get(app.clone(), "/readyz").await;
        assert_eq!(
            (s, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: starting\n")
        );
        health.set_ready();
        assert_eq!(get(app.clone(), "/readyz").await.0, StatusCode::OK);
        // A part that fails makes the service not ready, saying which and why.
        health.part_failing("replica db2:3306", "its task stopped");
        let (s, body) = get(app.clone(), "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.contains("replica db2:3306: its task stopped"),
            "{body}"
        );
        health.part_ok("replica db2:3306");
        assert_eq!(get(app, "/readyz").await.0, StatusCode::OK);
    }
}
