//! Alert webhooks: one task per configured webhook with its own bounded queue, so a slow or
//! dead receiver never blocks aggregation or the other webhooks. Each notification is retried
//! with backoff until it is delivered or `give_up_after` passes; a 4xx other than 408/429 is
//! final (the request itself is wrong). Notifications to one webhook keep their order
//! (firing before its resolve).
//!
//! Bodies by `format`:
//! - `json`: the [`Alert`] record as JSON.
//! - `alertmanager`: Alertmanager's v2 `POST /api/v2/alerts` array. A resolve carries `endsAt`;
//!   a firing alert has none, and every firing alert is re-posted every [`ALERTMANAGER_REPOST`]
//!   so Alertmanager does not resolve it on its own after `resolve_timeout` (default 5m).
//! - `slack`: `{"text": "..."}` (Slack, Mattermost and other incoming-webhook receivers).
//!
//! With `hmac_secret` set, every request carries `X-Millilag-Timestamp: <unix seconds>` (the
//! moment of this attempt) and `X-Millilag-Signature: sha256=<hex>`, the HMAC-SHA256 with that
//! key of the timestamp, a `.`, and the exact body bytes. A receiver recomputes it over the
//! header and the raw body, compares in constant time, and rejects a timestamp more than a few
//! minutes from its clock (a replay; README, "Webhook signatures"). Retries are signed afresh.
//!
//! https with `tls_ca_file` or the system's roots, and basic or bearer auth, come from
//! `processor/http_client.rs`. The URL is never logged as it is (a Slack URL is its secret).

use crate::processor::http_client;
use crate::processor::metrics::{labels, Metrics};
use hmac::{Hmac, Mac};
use millilag_core::config::{WebhookConfig, WebhookFormat};
use millilag_core::events::{Alert, AlertState};
use millilag_core::retry::RetryPolicy;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info_span, warn, Instrument};

/// Notifications waiting per webhook; beyond it new ones are dropped and counted.
pub const QUEUE: usize = 1_000;
/// How often firing alerts are re-posted to Alertmanager.
pub const ALERTMANAGER_REPOST: Duration = Duration::from_secs(60);
pub const SIGNATURE_HEADER: &str = "X-Millilag-Signature";
/// Unix seconds when the request was signed; part of what the signature covers.
pub const TIMESTAMP_HEADER: &str = "X-Millilag-Timestamp";

/// `sha256=<hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: new_from_slice cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn rfc3339(us: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_micros(us.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A value as a person reads it: delays in ms, counts as they are.
pub fn human_value(a: &Alert, v: f64) -> String {
    let delay = ["min", "p50", "p90", "p99", "max"]
        .iter()
        .any(|m| a.expression.trim_start().starts_with(m));
    if delay {
        format!("{:.1}ms", v / 1000.0)
    } else {
        format!("{v}")
    }
}

fn summary(a: &Alert) -> String {
    format!(
        "{} on {}/{}: {} (value {}, threshold {})",
        a.rule,
        a.cluster,
        a.replica,
        a.expression,
        human_value(a, a.value),
        human_value(a, a.threshold)
    )
}

/// One Alertmanager alert object.
pub fn alertmanager_alert(a: &Alert, generator_url: &str) -> Value {
    let mut labels: BTreeMap<String, String> = a.labels.clone();
    labels.insert("alertname".into(), a.rule.clone());
    labels.insert("cluster".into(), a.cluster.clone());
    labels.insert("replica".into(), a.replica.clone());
    labels.insert("severity".into(), a.severity.clone());
    let mut v = json!({
        "labels": labels,
        "annotations": {
            "summary": summary(a),
            "value": human_value(a, a.value),
            "threshold": human_value(a, a.threshold),
        },
        "startsAt": rfc3339(a.since_us),
        "generatorURL": generator_url,
    });
    if a.state == AlertState::Resolved {
        v["endsAt"] = Value::String(rfc3339(a.at_us.max(a.since_us)));
    }
    v
}

/// The request body for one alert in `format`.
pub fn body(format: WebhookFormat, a: &Alert, generator_url: &str) -> Vec<u8> {
    let v = match format {
        WebhookFormat::Json => serde_json::to_value(a).unwrap_or(Value::Null),
        WebhookFormat::Alertmanager => Value::Array(vec![alertmanager_alert(a, generator_url)]),
        WebhookFormat::Slack => {
            let state = match a.state {
                AlertState::Firing => "FIRING",
                AlertState::Resolved => "RESOLVED",
            };
            json!({ "text": format!("[{state}] {}", summary(a)) })
        }
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// What a webhook's task is told.
#[derive(Debug)]
enum Notice {
    /// A transition to deliver.
    Transition(Alert),
    /// An incident this processor took over: re-posted to Alertmanager, never announced again.
    Adopt(Alert),
    /// An incident another processor took over: no longer re-posted from here.
    Forget(String),
}

/// The run loop's side: hand alerts to every webhook's queue without waiting.
pub struct Webhooks {
    queues: Vec<(String, mpsc::Sender<Notice>)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Metrics,
}

impl Webhooks {
    /// Start one task per webhook.
    pub fn spawn(
        configs: &[WebhookConfig],
        generator_url: String,
        metrics: Metrics,
    ) -> anyhow::Result<Webhooks> {
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let name = format!("webhook[{i}]");
            let (tx, rx) = mpsc::channel(QUEUE);
            let client = http_client::client(&name, c.timeout.0, c.tls_ca_file.as_deref())?;
            let worker = Worker {
                name: name.clone(),
                config: c.clone(),
                client,
                generator_url: generator_url.clone(),
                firing: BTreeMap::new(),
                metrics: metrics.clone(),
            };
            let span = info_span!("webhook", webhook = %name, url = %c.url);
            tasks.push(tokio::spawn(worker.run(rx).instrument(span)));
            queues.push((name, tx));
        }
        Ok(Webhooks {
            queues,
            tasks,
            metrics,
        })
    }

    pub fn notify(&self, a: &Alert) {
        self.tell(|| Notice::Transition(a.clone()), &a.rule);
    }

    /// An incident taken over from another processor (or an earlier run).
    pub fn adopt(&self, a: &Alert) {
        self.tell(|| Notice::Adopt(a.clone()), &a.rule);
    }

    /// An incident handed to another processor.
    pub fn forget(&self, fingerprint: &str) {
        self.tell(|| Notice::Forget(fingerprint.to_string()), fingerprint);
    }

    fn tell(&self, notice: impl Fn() -> Notice, what: &str) {
        for (name, q) in &self.queues {
            if q.try_send(notice()).is_err() {
                self.metrics
                    .webhook_dropped
                    .get_or_create(&labels(&[("webhook", name)]))
                    .inc();
                warn!(webhook = %name, alert = %what, "Webhook queue full; notification dropped.");
            }
        }
    }

    /// Deliver what is queued, for at most `deadline`.
    pub async fn close(self, deadline: Duration) {
        drop(self.queues);
        let all = futures::future::join_all(self.tasks);
        if tokio::time::timeout(deadline, all).await.is_err() {
            warn!("Webhooks still retrying at shutdown; giving up on them.");
        }
    }
}

struct Worker {
    name: String,
    config: WebhookConfig,
    client: reqwest::Client,
    generator_url: String,
    /// Alertmanager only: what to re-post.
    firing: BTreeMap<String, Alert>,
    metrics: Metrics,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Notice>) {
        let am = self.config.format == WebhookFormat::Alertmanager;
        let mut repost =
            tokio::time::interval_at(Instant::now() + ALERTMANAGER_REPOST, ALERTMANAGER_REPOST);
        repost.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    None => return,
                    Some(Notice::Transition(a)) => {
                        if am {
                            match a.state {
                                AlertState::Firing => { self.firing.insert(a.fingerprint.clone(), a.clone()); }
                                AlertState::Resolved => { self.firing.remove(&a.fingerprint); }
                            }
                        }
                        let body = body(self.config.format, &a, &self.generator_url);
                        self.deliver(body).await;
                    }
                    Some(Notice::Adopt(a)) => {
                        if am {
                            self.firing.insert(a.fingerprint.clone(), a);
                            // Alertmanager may have timed it out while nobody owned it.
                            self.repost().await;
                        }
                    }
                    Some(Notice::Forget(fp)) => {
                        self.firing.remove(&fp);
                    }
                },
                _ = repost.tick(), if am && !self.firing.is_empty() => self.repost().await,
            }
        }
    }

    async fn repost(&mut self) {
        let all: Vec<Value> = self
            .firing
            .values()
            .map(|a| alertmanager_alert(a, &self.generator_url))
            .collect();
        let body = serde_json::to_vec(&Value::Array(all)).unwrap_or_default();
        self.deliver(body).await;
    }

    /// POST until delivered, final failure, or `give_up_after`.
    async fn deliver(&self, body: Vec<u8>) {
        let l = labels(&[("webhook", &self.name)]);
        let started = Instant::now();
        let mut backoff = RetryPolicy::DELIVERY.backoff();
        loop {
            let mut req = self
                .client
                .post(self.config.url.expose())
                .header("Content-Type", "application/json")
                .body(body.clone());
            req = http_client::authorize(req, self.config.auth.as_ref());
            if let Some(k) = &self.config.hmac_secret {
                let ts = millilag_core::clock::now_us().div_euclid(1_000_000);
                req = req.header(TIMESTAMP_HEADER, ts.to_string()).header(
                    SIGNATURE_HEADER,
                    signature(k.expose().as_bytes(), ts, &body),
                );
            }
            let outcome = match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.metrics.webhook_sent.get_or_create(&l).inc();
                    return;
                }
                Ok(r) => {
                    let s = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let e = millilag_core::Error::http_status("POST", s.as_u16(), &text);
                    let final_ = e.retry_hint() == millilag_core::RetryHint::NoRetry;
                    (e.to_string(), final_)
                }
                Err(e) => (
                    http_client::describe(e, &self.name, self.config.url.is_https()),
                    false,
                ),
            };
            self.metrics.webhook_failures.get_or_create(&l).inc();
            let delay = backoff.next_delay();
            if outcome.1 || started.elapsed() + delay > self.config.give_up_after.0 {
                self.metrics.webhook_dropped.get_or_create(&l).inc();
                warn!(error = %outcome.0, "Webhook notification not delivered; giving up.");
                return;
            }
            warn!(error = %outcome.0, retry_in = ?delay, "Webhook post failed; retrying.");
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(state: AlertState) -> Alert {
        Alert {
            rule: "replica-lag-high".into(),
            cluster: "main".into(),
            replica: "127.0.0.1:3307".into(),
            state,
            severity: "critical".into(),
            expression: "p99 > 500ms".into(),
            value: 812_000.0,
            threshold: 500_000.0,
            since_us: 1_763_000_000_000_000,
            at_us: 1_763_000_030_000_000,
            fingerprint: "0123456789abcdef".into(),
            labels: [("team".to_string(), "db".to_string())].into(),
        }
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"Jefe", b'1763000000.{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"Jefe", 1_763_000_000, br#"{"a":1}"#),
            "sha256=3b859fe4a833bf6cccb41cbc3998f8df765f423ed7d9ada76dac7f876ed33e8c"
        );
        // The timestamp is covered: a replay with a fresh timestamp does not verify.
        assert_ne!(
            signature(b"Jefe", 1_763_000_001, br#"{"a":1}"#),
            signature(b"Jefe", 1_763_000_000, br#"{"a":1}"#)
        );
    }

    #[test]
    fn alertmanager_body_has_labels_and_ends_only_when_resolved() {
        let v: Value = serde_json::from_slice(&body(
            WebhookFormat::Alertmanager,
            &alert(AlertState::Firing),
            "http://p/metrics",
        ))
        .unwrap();
        let a = &v[0];
        assert_eq!(a["labels"]["alertname"], "replica-lag-high");
        assert_eq!(a["labels"]["replica"], "127.0.0.1:3307");
        assert_eq!(a["labels"]["severity"], "critical");
        assert_eq!(a["labels"]["team"], "db");
        assert_eq!(a["annotations"]["value"], "812.0ms");
        assert_eq!(a["annotations"]["threshold"], "500.0ms");
        assert_eq!(a["startsAt"], "2025-11-13T02:13:20.000Z");
        assert!(a.get("endsAt").is_none());
        assert_eq!(a["generatorURL"], "http://p/metrics");
        let v: Value = serde_json::from_slice(&body(
            WebhookFormat::Alertmanager,
            &alert(AlertState::Resolved),
            "",
        ))
        .unwrap();
        assert_eq!(v[0]["endsAt"], "2025-11-13T02:13:50.000Z");
    }

    #[test]
    fn json_and_slack_bodies() {
        let v: Value =
            serde_json::from_slice(&body(WebhookFormat::Json, &alert(AlertState::Firing), ""))
                .unwrap();
        assert_eq!(v["state"], "firing");
        assert_eq!(v["fingerprint"], "0123456789abcdef");
        let v: Value = serde_json::from_slice(&body(
            WebhookFormat::Slack,
            &alert(AlertState::Resolved),
            "",
        ))
        .unwrap();
        assert_eq!(
            v["text"],
            "[RESOLVED] replica-lag-high on main/127.0.0.1:3307: p99 > 500ms (value 812.0ms, threshold 500.0ms)"
        );
    }
}
