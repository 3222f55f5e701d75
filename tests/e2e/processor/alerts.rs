//! Alert rules through Alertmanager and signed webhooks.

use super::*;
use hmac::{Hmac, Mac};
use millilag_core::Config;
use millilag_harness::alertmanager::{Alertmanager, WebhookReceiver};
use std::time::Duration;

fn alert_config(env: &Env, am: &Alertmanager, receiver: &WebhookReceiver) -> Config {
    env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        &format!(
            r#"
[[alert]]
name = "lag-high"
when = "p99 > 100ms"
window = "1s"
for = "2s"
resolve_for = "1s"
severity = "critical"
labels = {{ team = "dba" }}

[[webhook]]
url = "{}"
format = "alertmanager"

[[webhook]]
url = "{}"
format = "json"
"#,
            am.alerts_url(),
            receiver.url("/json")
        ),
        &[],
    )
}

/// Records for window `w` with every delay `d`.
async fn produce_level(env: &Env, t: i64, w: i64, d: i64) {
    for i in 0..5 {
        env.send(&delay(w * 5 + i + 1, t + w * S + i * 200 * MS, d))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_alert_reaches_alertmanager_resolves_and_restart_sends_no_duplicate() {
    let env = Env::start().await;
    let receiver = WebhookReceiver::start().await.unwrap();
    let am = Alertmanager::start(&receiver.url("/am"))
        .await
        .expect("Alertmanager");
    let config = alert_config(&env, &am, &receiver);
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    // Windows 0, 1, 2 at 200 ms: holding from window 0, `for = 2s` is met at the end of
    // window 1, which closes when window 2 starts.
    for w in 0..3 {
        produce_level(&env, t, w, 200 * MS).await;
    }
    let mut json_posts = Vec::new();
    let mut am_posts = Vec::new();
    let first = receiver
        .next(Duration::from_secs(30))
        .await
        .expect("a notification");
    let route = |r: millilag_harness::alertmanager::Received,
                 json_posts: &mut Vec<serde_json::Value>,
                 am_posts: &mut Vec<serde_json::Value>| {
        if r.path == "/json" {
            json_posts.push(r.json());
        } else {
            am_posts.push(r.json());
        }
    };
    route(first, &mut json_posts, &mut am_posts);
    while am_posts.is_empty() || json_posts.is_empty() {
        let r = receiver
            .next(Duration::from_secs(30))
            .await
            .expect("both deliveries");
        route(r, &mut json_posts, &mut am_posts);
    }
    let am_firing = &am_posts[0];
    assert_eq!(am_firing["status"], "firing");
    let a = &am_firing["alerts"][0];
    assert_eq!(a["labels"]["alertname"], "lag-high");
    assert_eq!(a["labels"]["replica"], REPLICA);
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["labels"]["team"], "dba");
    assert_eq!(a["annotations"]["value"], "200.0ms");
    assert_eq!(json_posts[0]["state"], "firing");
    assert_eq!(json_posts[0]["since_us"], t);

    // Restart mid-incident: the new processor reads alert-state and stays quiet.
    p.stop().await;
    let p = Running::start(alert_config(&env, &am, &receiver));
    for w in 3..5 {
        produce_level(&env, t, w, 300 * MS).await;
    }
    // Recovery: window 5 is fast; it closes when window 6 starts and resolves the alert.
    for w in 5..7 {
        produce_level(&env, t, w, MS).await;
    }
    let mut resolved_am = None;
    let mut resolved_json = None;
    while resolved_am.is_none() || resolved_json.is_none() {
        let r = receiver
            .next(Duration::from_secs(30))
            .await
            .expect("the resolve");
        let v = r.json();
        if r.path == "/json" {
            assert_eq!(
                v["state"], "resolved",
                "no second firing after the restart: {v}"
            );
            resolved_json = Some(v);
        } else {
            assert_eq!(
                v["status"], "resolved",
                "no second firing after the restart: {v}"
            );
            resolved_am = Some(v);
        }
    }
    assert_eq!(resolved_json.unwrap()["since_us"], t, "the same incident");
    let am_resolved = resolved_am.unwrap();
    assert_eq!(am_resolved["alerts"][0]["labels"]["alertname"], "lag-high");
    assert_eq!(
        p.metric("millilag_processor_alert_firing{rule=\"lag-high\"} ")
            .await,
        0.0
    );
    p.stop().await;
    assert!(
        receiver.drain().await.is_empty(),
        "nothing after the resolve"
    );
}

/// A receiver's check of `X-Millilag-Timestamp` and `X-Millilag-Signature` (README, "Webhook
/// signatures"): HMAC-SHA256 over "<timestamp>.<body>", and a timestamp within 5 minutes.
fn verify_signature(
    key: &[u8],
    r: &millilag_harness::alertmanager::Received,
    now_s: u64,
) -> Result<(), &'static str> {
    let ts = r
        .headers
        .get("x-millilag-timestamp")
        .ok_or("no timestamp")?;
    let sig = r
        .headers
        .get("x-millilag-signature")
        .and_then(|s| s.strip_prefix("sha256="))
        .ok_or("no signature")?;
    let sig = hex::decode(sig).map_err(|_| "signature is not hex")?;
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).map_err(|_| "key")?;
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&r.body);
    // verify_slice compares in constant time.
    mac.verify_slice(&sig).map_err(|_| "bad signature")?;
    let ts: u64 = ts.parse().map_err(|_| "timestamp is not a number")?;
    if ts.abs_diff(now_s) > 300 {
        return Err("stale timestamp");
    }
    Ok(())
}

/// Also: a receiver that fails twice gets the same signed body a third time (retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_webhook_signature_verifies_with_the_shared_secret() {
    let env = Env::start().await;
    let receiver = WebhookReceiver::start_failing(2).await.unwrap();
    let secret = "s3cret-key";
    let config = env.config(
        r#"windows = ["1s"]
allowed_lateness = "0s""#,
        &format!(
            r#"
[[alert]]
name = "any-lag"
when = "max > 1ms"
window = "1s"

[[webhook]]
url = "{}"
format = "json"
hmac_secret_env = "HOOK_SECRET"
"#,
            receiver.url("/hook")
        ),
        &[("HOOK_SECRET", secret)],
    );
    env.create_topics(&config).await;
    let p = Running::start(config);
    let t = base_second();
    env.send(&delay(1, t, 5 * MS)).await;
    env.send(&delay(2, t + S, 5 * MS)).await;
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        attempts.push(
            receiver
                .next(Duration::from_secs(30))
                .await
                .expect("a post"),
        );
    }
    assert_eq!(
        attempts.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![503, 503, 200]
    );
    assert!(
        attempts.iter().all(|a| a.body == attempts[0].body),
        "same body on retry"
    );
    // Every attempt is signed afresh and verifies the way README's receiver does it.
    let now_s = (millilag_core::clock::now_us() / 1_000_000) as u64;
    for a in &attempts {
        verify_signature(secret.as_bytes(), a, now_s).expect("a valid signature");
    }
    let r = attempts.pop().unwrap();
    assert_eq!(
        verify_signature(b"other", &r, now_s),
        Err("bad signature"),
        "a wrong key does not verify"
    );
    assert_eq!(
        verify_signature(secret.as_bytes(), &r, now_s + 3600),
        Err("stale timestamp"),
        "an hour later the same request is a replay"
    );
    let mut tampered = r.clone();
    tampered.body.push(b' ');
    assert_eq!(
        verify_signature(secret.as_bytes(), &tampered, now_s),
        Err("bad signature")
    );
    assert_eq!(r.json()["rule"], "any-lag");
    assert_eq!(
        p.metric("millilag_processor_webhook_failures_total{webhook=\"webhook[0]\"} ")
            .await,
        2.0
    );
    assert_eq!(
        p.metric("millilag_processor_webhook_sent_total{webhook=\"webhook[0]\"} ")
            .await,
        1.0
    );
    p.stop().await;
}
