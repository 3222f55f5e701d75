//! compose/millilag.tls.toml, the documented TLS deployment, is a config the code accepts: its
//! paths mapped onto test files (the CA and client certificate of core/testdata, secrets in a
//! temp dir), it loads, resolves every secret, turns TLS on everywhere, and prints no secret.

use millilag_core::config::{HttpAuth, TlsMode};
use millilag_core::Config;

#[test]
fn compose_tls_config_loads_with_tls_everywhere_and_secrets_from_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("compose/millilag.tls.toml")).unwrap();
    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("db_password", "db-secret"),
        ("kafka_password", "kafka-secret"),
        ("influx_token", "influx-secret"),
        ("alertmanager_password", "am-secret"),
    ] {
        std::fs::write(secrets.path().join(name), format!("{value}\n")).unwrap();
    }
    let text = text
        .replace(
            "/etc/millilag/tls/",
            &format!("{}/", root.join("core/testdata").display()),
        )
        .replace("/run/secrets/", &format!("{}/", secrets.path().display()));
    let c = Config::from_toml_with_env(&text, "compose/millilag.tls.toml", Vec::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.kafka.security_protocol(), "sasl_ssl");
    assert_eq!(
        c.kafka.librdkafka_properties()["sasl.password"],
        "kafka-secret"
    );
    let cl = &c.clusters[0];
    assert_eq!(cl.password.as_ref().unwrap().expose(), "db-secret");
    for url in cl.primaries.iter().chain(&cl.replicas) {
        assert_eq!(url.tls().mode, TlsMode::VerifyIdentity);
    }
    assert!(c.sink.influxdb.iter().all(|s| s.url.is_https()));
    assert!(c.webhooks.iter().all(|w| w.url.is_https()));
    assert!(matches!(c.webhooks[0].auth, Some(HttpAuth::Basic { .. })));
    let printed = c.to_masked_toml();
    for secret in ["db-secret", "kafka-secret", "influx-secret", "am-secret"] {
        assert!(!printed.contains(secret), "{secret} printed");
    }
}
