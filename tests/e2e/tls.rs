//! Writer, reader and processor with every connection secured at once, against real TLS-only
//! servers whose certificates come from a CA made at test time: MariaDB (`REQUIRE SSL` user,
//! verify-identity), Tansu behind a TLS terminator with SASL SCRAM-SHA-512 (`sasl_ssl`),
//! VictoriaMetrics on https (`-tls`), and an https webhook receiver with basic auth and a
//! signed body. Every password comes from the environment, none from the file.

use crate::common::{init_logging, unique, Collected, Env, Pipeline};
use hmac::{Hmac, Mac};
use millilag_core::config::Config;
use millilag_core::shutdown::shutdown_pair;
use millilag_harness::alertmanager::WebhookReceiver;
use millilag_harness::broker::Security;
use millilag_harness::mariadb::PASSWORD;
use millilag_harness::tls::Pki;
use millilag_harness::victoria::Victoria;
use millilag_harness::{free_port, wait_for, Broker, Cluster};
use std::time::Duration;

const KAFKA_USER: &str = "millilag";
const KAFKA_PASSWORD: &str = "kafka-pw@1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_reader_and_processor_run_with_every_connection_on_tls() {
    init_logging();
    let pki = Pki::new().unwrap();
    let (cluster, broker, vm, receiver) = tokio::join!(
        Cluster::start_tls(1, &pki),
        Broker::start_secured(Security {
            tls: Some(&pki),
            scram_user: Some((KAFKA_USER, KAFKA_PASSWORD)),
        }),
        Victoria::start_tls(&pki),
        WebhookReceiver::start_tls(&pki),
    );
    let env = Env {
        cluster: cluster.expect("MariaDB with TLS"),
        broker: broker.expect("Tansu behind TLS with SASL"),
        prefix: format!("{}.", unique("tls")),
    };
    let (vm, receiver) = (
        vm.expect("VictoriaMetrics -tls"),
        receiver.expect("receiver"),
    );
    let ca = pki.ca().display().to_string();
    let text = format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1
sasl_password_env = "KAFKA_PW"
[kafka.properties]
"security.protocol" = "sasl_ssl"
"ssl.ca.location" = "{ca}"
"sasl.mechanisms" = "SCRAM-SHA-512"
"sasl.username" = "{KAFKA_USER}"

[[cluster]]
name = "main"
primary = "{primary}"
replicas = ["{replica}"]
tls = "verify-identity"
tls_ca_file = "{ca}"

[writer]
listen = "127.0.0.1:{wport}"

[reader]
listen = "127.0.0.1:{rport}"
group = "{rgroup}"

[processor]
windows = ["1s"]
allowed_lateness = "0s"
group = "{pgroup}"
listen = "127.0.0.1:{pport}"

[[sink.influxdb]]
url = "{vm}"
api = "v2"
org = "ops"
bucket = "millilag"
token_env = "VM_TOKEN"
tls_ca_file = "{ca}"

[[alert]]
name = "any-lag"
when = "max >= 0ms"
window = "1s"

[[webhook]]
url = "{hook}"
format = "json"
tls_ca_file = "{ca}"
username = "alerts"
password_env = "HOOK_PW"
hmac_secret_env = "HOOK_SECRET"
"#,
        brokers = env.broker.brokers(),
        prefix = env.prefix,
        primary = env.cluster.primary.url_without_password(),
        replica = env.cluster.replica(0).url_without_password(),
        wport = free_port(),
        rport = free_port(),
        pport = free_port(),
        rgroup = unique("readers"),
        pgroup = unique("processor"),
        vm = vm.url(),
        hook = receiver.https_url("/hook").unwrap(),
    );
    let secrets = [
        ("MILLILAG_DB_PASSWORD", PASSWORD),
        ("KAFKA_PW", KAFKA_PASSWORD),
        ("VM_TOKEN", "vm-token"),
        ("HOOK_PW", "hook-pw"),
        ("HOOK_SECRET", "hook-hmac"),
    ];
    let config = Config::from_toml_with_env(
        &text,
        "test",
        secrets.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("valid config");
    assert!(!config.to_masked_toml().contains(KAFKA_PASSWORD));
    crate::common::create_topics(&config).await;

    let (collected, observer) = Collected::start(&env);
    let pipeline = Pipeline::start(&config, true, true);
    let (stop_processor, token) = shutdown_pair();
    let processor = tokio::spawn(millilag_processors::processor::run(config.clone(), token));

    // MariaDB and Kafka: the writer's heartbeats, timed by the reader on the replica.
    let replica = env.cluster.replica(0).address();
    collected
        .until(
            "replica-delay records over TLS",
            Duration::from_secs(60),
            |r| {
                r.iter()
                    .filter(|d| {
                        d.replica == replica && d.status == millilag_core::events::MeasureStatus::Ok
                    })
                    .count()
                    >= 10
            },
        )
        .await;
    // VictoriaMetrics over https: the processor's windows.
    wait_for(
        "windows in VictoriaMetrics",
        Duration::from_secs(60),
        || async {
            let s = vm
                .export("{__name__=\"replica_delay_count\",cluster=\"main\"}")
                .await
                .ok()?;
            s.iter()
                .any(|s| s.metric.get("replica").map(String::as_str) == Some(replica.as_str()))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The webhook over https: basic auth, a signature over "<timestamp>.<body>".
    let r = receiver
        .next(Duration::from_secs(60))
        .await
        .expect("an alert notification");
    assert_eq!(r.json()["rule"], "any-lag");
    use base64::Engine as _;
    let basic = r.headers["authorization"]
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok());
    assert_eq!(basic.as_deref(), Some(&b"alerts:hook-pw"[..]));
    let ts = &r.headers["x-millilag-timestamp"];
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(b"hook-hmac").unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    assert_eq!(
        r.headers["x-millilag-signature"],
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );

    stop_processor.trigger();
    processor.await.unwrap().expect("processor ran cleanly");
    pipeline.stop().await;
    observer.abort();
}

/// At run time a certificate problem is a failed attempt that is counted, logged and retried,
/// never a dropped notification: the receiver's terminator first presents a certificate from
/// another CA, then the right one, and the notification arrives, signed, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_whose_certificate_is_not_trusted_is_retried_until_it_is() {
    use millilag_core::events::{Alert, AlertState};
    use millilag_harness::tls::Terminator;
    use millilag_processors::processor::alerts::webhook::Webhooks;
    use millilag_processors::processor::metrics::{labels, Metrics};
    init_logging();
    let (pki, other) = (Pki::new().unwrap(), Pki::new().unwrap());
    let receiver = WebhookReceiver::start().await.unwrap();
    let port = free_port();
    let mut terminator = Terminator::start_on(&other, port, receiver.port)
        .await
        .unwrap();
    let text = format!(
        "[[webhook]]\nurl = \"https://127.0.0.1:{port}/hook\"\ntls_ca_file = \"{}\"\n\
         hmac_secret_env = \"K\"\ngive_up_after = \"60s\"\n",
        pki.ca().display()
    );
    let config =
        Config::from_toml_with_env(&text, "test", [("K".to_string(), "k".to_string())]).unwrap();
    let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
    let webhooks =
        Webhooks::spawn(&config.webhooks, "http://p/metrics".into(), metrics.clone()).unwrap();
    let now = millilag_core::clock::now_us();
    webhooks.notify(&Alert {
        rule: "lag".into(),
        cluster: "main".into(),
        replica: "db2:3306".into(),
        state: AlertState::Firing,
        severity: "critical".into(),
        expression: "p99 > 1ms".into(),
        value: 2_000.0,
        threshold: 1_000.0,
        since_us: now,
        at_us: now,
        fingerprint: "f".into(),
        labels: Default::default(),
    });
    let l = labels(&[("webhook", "webhook[0]")]);
    wait_for("two refused attempts", Duration::from_secs(30), || async {
        (metrics.webhook_failures.get_or_create(&l).get() >= 2).then_some(())
    })
    .await
    .unwrap();
    assert!(
        receiver.drain().await.is_empty(),
        "nothing through an untrusted certificate"
    );
    terminator.kill();
    let _fixed = Terminator::start_on(&pki, port, receiver.port)
        .await
        .unwrap();
    let r = receiver
        .next(Duration::from_secs(30))
        .await
        .expect("delivered once the certificate is trusted");
    assert_eq!(r.json()["rule"], "lag");
    assert!(r.headers.contains_key("x-millilag-signature"));
    webhooks.close(Duration::from_secs(5)).await;
    assert_eq!(metrics.webhook_sent.get_or_create(&l).get(), 1);
    assert_eq!(metrics.webhook_dropped.get_or_create(&l).get(), 0);
}
