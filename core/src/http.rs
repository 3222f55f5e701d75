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
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Readiness shared between the service and its endpoint.
#[derive(Clone, Default)]
pub struct Health {
    /// None = ready; Some(reason) = not ready, and why (shown by /readyz).
    not_ready: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn starting() -> Self {
        Health {
            not_ready: Arc::new(Mutex::new(Some("starting".into()))),
        }
    }

    pub fn set_ready(&self) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.not_ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.into());
    }

    pub fn not_ready_reason(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
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
        assert_eq!(get(app, "/readyz").await.0, StatusCode::OK);
    }
}
