//! Alertmanager with one receiver: a webhook the test runs ([`WebhookReceiver`]), so a test
//! sees exactly what Alertmanager delivers. group_wait 0s and group_interval 100ms make
//! deliveries (and resolves) quick; repeat_interval is long so a notification seen twice is a
//! real duplicate, not a repeat.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::sync::mpsc;

pub struct Alertmanager {
    pub port: u16,
    _dir: tempfile::TempDir,
    _guard: Guard,
}

impl Alertmanager {
    /// Start with every alert routed to `webhook_url`.
    pub async fn start(webhook_url: &str) -> Result<Alertmanager> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(webhook_url).await {
                Ok(a) => return Ok(a),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("alertmanager did not start")))
    }

    async fn try_start(webhook_url: &str) -> Result<Alertmanager> {
        let dir = tempfile::Builder::new().prefix("millilag-am-").tempdir()?;
        let d = dir.path();
        let conf = format!(
            "route:
  receiver: test
  group_by: ['alertname', 'cluster', 'replica']
  group_wait: 0s
  group_interval: 100ms
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: '{webhook_url}'
        send_resolved: true
"
        );
        std::fs::write(d.join("alertmanager.yml"), conf)?;
        let port = free_port();
        let mut cmd = Command::new(crate::find_binary(
            "prometheus-alertmanager",
            "MILLILAG_ALERTMANAGER",
            &[PathBuf::from("/usr/bin")],
        )?);
        cmd.arg(format!(
            "--config.file={}",
            d.join("alertmanager.yml").display()
        ))
        .arg(format!("--storage.path={}", d.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .arg("--log.level=warn");
        let mut guard = Guard::spawn("alertmanager", cmd, &d.join("am.log"))?;
        let url = format!("http://127.0.0.1:{port}/-/ready");
        let client = reqwest::Client::new();
        let ready = wait_for("alertmanager /-/ready", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            let running = guard.is_running();
            anyhow::bail!("{e} (running: {running}); log:\n{}", guard.log_tail(20));
        }
        Ok(Alertmanager {
            port,
            _dir: dir,
            _guard: guard,
        })
    }

    /// What the processor's webhook posts to.
    pub fn alerts_url(&self) -> String {
        format!("http://127.0.0.1:{}/api/v2/alerts", self.port)
    }
}

/// One request a [`WebhookReceiver`] got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names lower-case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The status the receiver answered with.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

/// An HTTP server on a free port that answers 200 to any request (after answering 503 to the
/// first `fail_first`, to exercise retries) and hands each request to the test, in order.
pub struct WebhookReceiver {
    pub port: u16,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Received>>,
    task: tokio::task::JoinHandle<()>,
    tls: Option<crate::tls::Terminator>,
}

impl WebhookReceiver {
    pub async fn start() -> Result<WebhookReceiver> {
        Self::start_failing(0).await
    }

    pub async fn start_failing(fail_first: usize) -> Result<WebhookReceiver> {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        type Shared = (mpsc::UnboundedSender<Received>, Arc<AtomicUsize>);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (tx, rx) = mpsc::unbounded_channel::<Received>();
        let failures_left = Arc::new(AtomicUsize::new(fail_first));
        let handler = |State((tx, left)): State<Shared>,
                       method: axum::http::Method,
                       uri: Uri,
                       headers: HeaderMap,
                       body: axum::body::Bytes| async move {
            // The processor's start-time TLS check (HEAD) is not a notification.
            if method == axum::http::Method::HEAD {
                return (StatusCode::OK, "ok");
            }
            let fail = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let status = if fail {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            let headers = headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        v.to_str().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            let _ = tx.send(Received {
                path: uri.path().to_string(),
                headers,
                body: body.to_vec(),
                status: status.as_u16(),
            });
            (status, "ok")
        };
        let app = axum::Router::new()
            .fallback(handler)
            .with_state((tx, failures_left));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(WebhookReceiver {
            port,
            rx: tokio::sync::Mutex::new(rx),
            task,
            tls: None,
        })
    }

    /// Also reachable over https (a socat terminator with `pki`'s server certificate).
    pub async fn start_tls(pki: &crate::tls::Pki) -> Result<WebhookReceiver> {
        let mut r = Self::start_failing(0).await?;
        r.tls = Some(crate::tls::Terminator::start(pki, r.port).await?);
        Ok(r)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The https address (on a [`WebhookReceiver::start_tls`] receiver).
    pub fn https_url(&self, path: &str) -> Option<String> {
        self.tls
            .as_ref()
            .map(|t| format!("https://127.0.0.1:{}{path}", t.port))
    }

    /// The next request within `timeout`.
    pub async fn next(&self, timeout: Duration) -> Option<Received> {
        let mut rx = self.rx.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Requests that arrived by now, without waiting.
    pub async fn drain(&self) -> Vec<Received> {
        let mut rx = self.rx.lock().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r);
        }
        out
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
