//! The downstream consumer example in another language (examples/python/consume.py, fastavro +
//! confluent-kafka from PyPI) reads millilag's records from a live broker: windows, alerts and
//! live-lag samples encoded by millilag's codec, and skips a record that is not millilag's.

use crate::common::unique;
use millilag_core::events::{
    Alert, AlertState, DelayWindow, MeasureMethod, MeasureStatus, Record, ReplicaDelay,
};
use millilag_harness::Broker;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

fn window() -> DelayWindow {
    DelayWindow {
        cluster: "main".into(),
        replica: "db2:3306".into(),
        window_start_us: 1_795_000_000_000_000,
        window_us: 1_000_000,
        count: 100,
        missing: 2,
        min_us: Some(900),
        p50_us: Some(1_500),
        p90_us: Some(2_100),
        p99_us: Some(4_200),
        max_us: Some(5_000),
        timeouts: 1,
        unreachable: 0,
        replication_stopped: 1,
        skipped: 0,
        upper_bounds: 3,
        duplicates: 7,
    }
}

fn alert() -> Alert {
    Alert {
        rule: "replica-lag-high".into(),
        cluster: "main".into(),
        replica: "db2:3306".into(),
        state: AlertState::Firing,
        severity: "critical".into(),
        expression: "p99 > 500ms".into(),
        value: 0.75,
        threshold: 0.5,
        since_us: 1_795_000_000_000_000,
        at_us: 1_795_000_030_000_000,
        fingerprint: "abc123".into(),
        labels: [("team".to_string(), "dba".to_string())].into(),
    }
}

fn pending() -> ReplicaDelay {
    ReplicaDelay {
        cluster: "main".into(),
        replica: "db2:3306".into(),
        primary: "db1:3306".into(),
        seq: 42,
        committed_at_us: 1_795_000_000_000_000,
        delay_us: 2_500_000,
        uncertainty_us: 300,
        method: MeasureMethod::GtidWait,
        status: MeasureStatus::Pending,
        upper_bound: false,
        observed_at_us: 1_795_000_002_500_000,
        reader_id: "reader-a".into(),
        queries: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_decodes_windows_alerts_and_live_lag_samples_from_live_topics() {
    let broker = Broker::start().await.expect("Tansu broker");
    let prefix = format!("{}.", unique("py"));
    let topics = ["delay-window", "alert", "replica-delay"].map(|t| format!("{prefix}{t}"));
    broker
        .create_topics(&topics.iter().map(String::as_str).collect::<Vec<_>>(), 1)
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    let send = |topic: &str, key: &str, payload: Vec<u8>| {
        let (producer, topic, key) = (producer.clone(), topic.to_string(), key.to_string());
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    };
    let empty = DelayWindow {
        count: 0,
        min_us: None,
        p50_us: None,
        p90_us: None,
        p99_us: None,
        max_us: None,
        ..window()
    };
    send(&topics[0], "main/db2:3306", window().encode().unwrap()).await;
    // Not millilag's: reported and skipped, the next one still read.
    send(&topics[0], "junk", b"{\"not\": \"avro\"}".to_vec()).await;
    send(&topics[0], "main/db2:3306", empty.encode().unwrap()).await;
    send(&topics[1], "abc123", alert().encode().unwrap()).await;
    send(&topics[2], "main/db2:3306", pending().encode().unwrap()).await;
    // An older millilag's record: replica-delay written with its first published schema.
    send(&topics[2], "main/db2:3306", v1_replica_delay()).await;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/python/consume.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(&script)
        .args(["--brokers", &broker.brokers(), "--from-beginning"])
        .args(["--group", &unique("python")])
        .args(["--max", "5", "--idle", "30"]);
    for t in &topics {
        cmd.args(["--topic", t]);
    }
    let out = cmd
        .output()
        .await
        .expect("python3 runs (fastavro and confluent-kafka: scripts/setup installs them)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "skipping {}[0]@1: not Avro single-object encoding",
            topics[0]
        )),
        "{stderr}"
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(lines.len(), 5, "{stdout}{stderr}");
    let by_schema =
        |name: &str| -> Vec<&Value> { lines.iter().filter(|l| l["schema"] == name).collect() };

    // Every field as millilag wrote it (the JSON of the Rust record is the expectation).
    let windows = by_schema("millilag.DelayWindow");
    assert_eq!(windows.len(), 2, "{stdout}");
    assert_eq!(windows[0]["key"], "main/db2:3306");
    assert_eq!(windows[0]["value"], serde_json::to_value(window()).unwrap());
    assert_eq!(windows[1]["value"], serde_json::to_value(&empty).unwrap());
    assert!(windows[1]["value"]["p99_us"].is_null());
    let alerts = by_schema("millilag.Alert");
    assert_eq!(alerts[0]["value"], serde_json::to_value(alert()).unwrap());
    assert_eq!(alerts[0]["value"]["state"], "firing");
    let samples = by_schema("millilag.ReplicaDelay");
    assert_eq!(
        samples[0]["value"],
        serde_json::to_value(pending()).unwrap()
    );
    assert_eq!(samples[0]["value"]["status"], "pending");
    // The v1 record resolved to the current schema: the fields it lacked at their defaults.
    let old = &samples[1]["value"];
    assert_eq!(
        (old["seq"].as_i64(), old["delay_us"].as_i64()),
        (Some(42), Some(2_500_000))
    );
    assert_eq!(old["status"], "ok");
    assert_eq!(old["committed_at_us"], 0);
    assert_eq!(old["queries"], 0);
    assert_eq!(old["upper_bound"], false);
}

/// `pending()` as the first published replica-delay schema wrote it (only its fields; an ok
/// status, which v1 knew), encoded by millilag's codec.
fn v1_replica_delay() -> Vec<u8> {
    let codec = ReplicaDelay::codec();
    let fields_of = |avsc: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(avsc).unwrap();
        v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f["name"].as_str().map(str::to_string))
            .collect()
    };
    // The version with the fewest fields is the first one; versions()[0] is the current one.
    let (i, fields) = ReplicaDelay::HISTORY
        .iter()
        .map(|avsc| fields_of(avsc))
        .enumerate()
        .min_by_key(|(_, f)| f.len())
        .unwrap();
    let mut record = serde_json::to_value(ReplicaDelay {
        status: MeasureStatus::Ok,
        ..pending()
    })
    .unwrap();
    let map = record.as_object_mut().unwrap();
    let all = map.len();
    map.retain(|k, _| fields.contains(k));
    assert!(map.len() < all, "v1 lacks fields");
    codec.encode_with(&codec.versions()[i + 1], map).unwrap()
}
