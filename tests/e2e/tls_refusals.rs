//! TLS and SASL mistakes against real TLS-only servers (certificates from a CA made at test
//! time): each is refused, and the error names the key to fix. What verifies is shown beside
//! what does not, so a check that always fails would fail these tests too.

use crate::common::{init_logging, unique};
use millilag_core::config::Config;
use millilag_core::kafka::check;
use millilag_harness::broker::Security;
use millilag_harness::mariadb::{PASSWORD, USER, X509_USER};
use millilag_harness::tls::Pki;
use millilag_harness::victoria::Victoria;
use millilag_harness::{Broker, Cluster};
use std::time::Duration;

/// A config with one cluster whose primary is `url`, plus `cluster_keys` in its section.
fn cluster_config(url: &str, cluster_keys: &str) -> Config {
    let text = format!(
        "[[cluster]]\nname = \"main\"\nprimary = \"{url}\"\nreplicas = [\"{url}\"]\n{cluster_keys}\n"
    );
    Config::from_toml_with_env(&text, "test", Vec::new()).expect("valid config")
}

async fn connect(config: &Config) -> Result<(), String> {
    let c = &config.clusters[0];
    let pw = c.password.as_ref().map(|p| p.expose().to_string());
    match millilag_core::db::connect(c.primary(), pw.as_deref()).await {
        Ok(conn) => {
            let _ = conn.disconnect().await;
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_tls_modes_verify_what_they_promise_and_name_the_key_when_refused() {
    init_logging();
    let pki = Pki::new().unwrap();
    let cluster = Cluster::start_tls(0, &pki).await.unwrap();
    let port = cluster.primary.port;
    let ip = format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{port}");
    // The certificate names IP 127.0.0.1 only: "localhost" is a name it does not carry.
    let localhost = format!("mysql://{USER}:{PASSWORD}@localhost:{port}");
    let ca = |f: &std::path::Path| format!("tls_ca_file = \"{}\"", f.display());

    // Plaintext to a REQUIRE SSL account.
    let e = connect(&cluster_config(&ip, "")).await.unwrap_err();
    assert!(
        e.contains("Access denied") && e.contains("set cluster[0].tls"),
        "{e}"
    );
    // The right CA, by IP: verified.
    let good = format!("tls = \"verify-identity\"\n{}", ca(&pki.ca()));
    connect(&cluster_config(&ip, &good)).await.unwrap();
    // A CA that did not sign the server's certificate.
    let wrong_ca = format!("tls = \"verify-identity\"\n{}", ca(&pki.other_ca()));
    let e = connect(&cluster_config(&ip, &wrong_ca)).await.unwrap_err();
    assert!(
        e.contains("not signed by a trusted CA: set cluster[0].tls_ca_file"),
        "{e}"
    );
    // verify-ca takes the CA's word whatever the name; verify-identity wants the name too.
    let e = connect(&cluster_config(&localhost, &good))
        .await
        .unwrap_err();
    assert!(e.contains("does not name the host"), "{e}");
    assert!(e.contains("cluster[0].tls = \"verify-identity\""), "{e}");
    let ca_only = format!("tls = \"verify-ca\"\n{}", ca(&pki.ca()));
    connect(&cluster_config(&localhost, &ca_only))
        .await
        .expect("verify-ca accepts a CA-signed certificate for another name");
    let ca_only_wrong = format!("tls = \"verify-ca\"\n{}", ca(&pki.other_ca()));
    let e = connect(&cluster_config(&localhost, &ca_only_wrong))
        .await
        .unwrap_err();
    assert!(e.contains("not signed by a trusted CA"), "{e}");
    // require encrypts without checking (MySQL's --ssl-mode=REQUIRED).
    connect(&cluster_config(&localhost, "tls = \"require\""))
        .await
        .unwrap();

    // A REQUIRE X509 account: in with the client certificate, refused without.
    let x509 = format!("mysql://{X509_USER}:{PASSWORD}@127.0.0.1:{port}");
    let with_cert = format!(
        "{good}\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"",
        pki.client_cert().display(),
        pki.client_key().display()
    );
    connect(&cluster_config(&x509, &with_cert)).await.unwrap();
    let e = connect(&cluster_config(&x509, &good)).await.unwrap_err();
    assert!(e.contains("Access denied"), "{e}");

    // The writer says so at start, in its log, with the key, and keeps retrying (the
    // certificate may be fixed on the server's side) instead of exiting.
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("writer.toml");
    std::fs::write(
        &config_path,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\ncreate_topics = false\n\
             [[cluster]]\nname = \"main\"\nprimary = \"{localhost}\"\nreplicas = [\"{localhost}\"]\n{good}\n\
             [writer]\nlisten = \"127.0.0.1:{}\"\n",
            millilag_harness::free_port(),
            millilag_harness::free_port()
        ),
    )
    .unwrap();
    let log = dir.path().join("writer.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_millilag"));
    cmd.arg("writer").arg("--config").arg(&config_path);
    let writer = millilag_harness::process::Guard::spawn("writer", cmd, &log).unwrap();
    let line = millilag_harness::wait_for(
        "the writer's TLS complaint",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.lines()
                .find(|l| l.contains("does not name the host"))
                .map(str::to_string)
        },
    )
    .await
    .unwrap();
    assert!(
        line.contains("cluster[0].tls = \"verify-identity\"") && line.contains("retrying"),
        "{line}"
    );
    assert!(!line.contains(PASSWORD), "{line}");
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tls_and_sasl_mistakes_stop_the_start_with_the_key_to_fix() {
    init_logging();
    let pki = Pki::new().unwrap();
    let broker = Broker::start_secured(Security {
        tls: Some(&pki),
        scram_user: Some(("mon", "scram-pw")),
    })
    .await
    .unwrap();
    let port = broker.port;
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("kafka-pw");
    let config = |bootstrap: &str, protocol: &str, ca: &std::path::Path, pw: &str| {
        std::fs::write(&pw_file, pw).unwrap();
        let text = format!(
            "[kafka]\nbrokers = \"{bootstrap}\"\nsasl_password_file = \"{}\"\n\
             [kafka.properties]\n\"security.protocol\" = \"{protocol}\"\n\
             \"ssl.ca.location\" = \"{}\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"mon\"\n",
            pw_file.display(),
            ca.display()
        );
        Config::from_toml_with_env(&text, "test", Vec::new()).expect("valid config")
    };
    let ip = format!("127.0.0.1:{port}");
    let reach = |c: Config| async move {
        check::reach(&c.kafka, Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    };

    reach(config(&ip, "sasl_ssl", &pki.ca(), "scram-pw"))
        .await
        .expect("the right CA and password");
    let e = reach(config(&ip, "sasl_ssl", &pki.ca(), "wrong-pw"))
        .await
        .unwrap_err();
    assert!(
        e.contains("SASL authentication failed") && e.contains("kafka.sasl_password_env"),
        "{e}"
    );
    let e = reach(config(&ip, "sasl_ssl", &pki.other_ca(), "scram-pw"))
        .await
        .unwrap_err();
    assert!(
        e.contains("set kafka.properties.\"ssl.ca.location\""),
        "{e}"
    );
    let e = reach(config(
        &format!("localhost:{port}"),
        "sasl_ssl",
        &pki.ca(),
        "scram-pw",
    ))
    .await
    .unwrap_err();
    assert!(e.contains("does not name the host"), "{e}");
    let e = reach(config(&ip, "sasl_plaintext", &pki.ca(), "scram-pw"))
        .await
        .unwrap_err();
    assert!(e.contains("\"security.protocol\" = \"ssl\""), "{e}");

    // The services go through the same check (ensure_topics) before anything else.
    let mut c = config(&ip, "sasl_ssl", &pki.ca(), "wrong-pw");
    c.kafka.topic_prefix = format!("{}.", unique("t"));
    let e = millilag_core::kafka::ensure_topics(&c, &["heartbeat-set"])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("SASL authentication failed"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_sink_refusals_name_the_key() {
    use millilag_processors::processor::http_client;
    use millilag_processors::processor::sinks::influx::InfluxSink;
    use millilag_processors::processor::sinks::Sink;
    init_logging();
    let pki = Pki::new().unwrap();
    let vm = Victoria::start_tls(&pki).await.unwrap();
    let port = vm.http_port;
    let config = |url: &str, ca: Option<&std::path::Path>| {
        let ca = ca
            .map(|c| format!("tls_ca_file = \"{}\"\n", c.display()))
            .unwrap_or_default();
        let text = format!(
            "[[sink.influxdb]]\nurl = \"{url}\"\napi = \"v1\"\ndatabase = \"d\"\ntimeout = \"2s\"\n{ca}"
        );
        Config::from_toml_with_env(&text, "test", Vec::new()).expect("valid config")
    };
    let window = millilag_core::events::DelayWindow {
        cluster: "main".into(),
        replica: "r1".into(),
        window_start_us: millilag_core::clock::now_us() / 1_000_000 * 1_000_000,
        window_us: 1_000_000,
        count: 1,
        missing: 0,
        min_us: Some(1),
        p50_us: Some(1),
        p90_us: Some(1),
        p99_us: Some(1),
        max_us: Some(1),
        timeouts: 0,
        unreachable: 0,
        replication_stopped: 0,
        skipped: 0,
        upper_bounds: 0,
        duplicates: 0,
    };
    let write = |c: Config| {
        let w = window.clone();
        async move {
            let mut sink = InfluxSink::new("sink.influxdb[0]", &c.sink.influxdb[0]).unwrap();
            sink.write(&[&w]).await.map_err(|e| format!("{e:#}"))
        }
    };
    let ip = format!("https://127.0.0.1:{port}");
    let localhost = format!("https://localhost:{port}");

    write(config(&ip, Some(&pki.ca()))).await.unwrap();
    let e = write(config(&ip, Some(&pki.other_ca()))).await.unwrap_err();
    assert!(e.contains("set sink.influxdb[0].tls_ca_file"), "{e}");
    // Without tls_ca_file the system's roots are used: they do not hold the test CA either.
    let e = write(config(&ip, None)).await.unwrap_err();
    assert!(e.contains("set sink.influxdb[0].tls_ca_file"), "{e}");
    let e = write(config(&localhost, Some(&pki.ca())))
        .await
        .unwrap_err();
    assert!(e.contains("does not name the host"), "{e}");
    // Plaintext to the https-only server: it hangs up.
    let e = write(config(&format!("http://127.0.0.1:{port}"), None))
        .await
        .unwrap_err();
    assert!(
        e.contains("use an https:// url in sink.influxdb[0].url"),
        "{e}"
    );

    // At start, the processor's check refuses the wrong CA with the key, and lets a sink that
    // is merely down pass (its writes are retried).
    let e = http_client::check_endpoints(&config(&ip, Some(&pki.other_ca())))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("sink.influxdb[0].url (https://127.0.0.1:")
            && e.contains("set sink.influxdb[0].tls_ca_file"),
        "{e}"
    );
    http_client::check_endpoints(&config(&ip, Some(&pki.ca())))
        .await
        .unwrap();
    let down = format!("https://127.0.0.1:{}", millilag_harness::free_port());
    http_client::check_endpoints(&config(&down, Some(&pki.ca())))
        .await
        .unwrap();
}
