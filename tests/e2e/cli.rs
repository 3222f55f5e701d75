//! The `millilag` binary's own behaviour: check-config output and exit codes.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_millilag");
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/millilag.example.toml");

fn check_config(path: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_the_resolved_config_with_secrets_masked() {
    let (code, out, err) = check_config(
        EXAMPLE,
        &[
            ("INFLUX_TOKEN", "secret-token-1"),
            ("MILLILAG_WEBHOOK_SECRET", "secret-hmac-2"),
            ("MILLILAG_DB_PASSWORD", "secret-db-3"),
            ("MILLILAG_WRITER__INTERVAL", "25ms"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("interval = \"25ms\""),
        "env override shown:\n{out}"
    );
    assert!(
        out.contains("poll_max_interval"),
        "defaults filled in:\n{out}"
    );
    for s in ["secret-token-1", "secret-hmac-2", "secret-db-3"] {
        assert!(!out.contains(s) && !err.contains(s), "{s} leaked");
    }
}

#[test]
fn bad_config_exits_2_naming_the_key_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[cluster]]\nname = \"c\"\nprimary = \"mysql://u@h:1\"\nreplicas = [\"mysql://u@h:2\"]\ntable = \"hb-1\"\n[writer]\ninterval = \"90s\"\n",
    )
    .unwrap();
    let (code, out, err) = check_config(path.to_str().unwrap(), &[]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(err.contains("cluster[0].table (\"hb-1\")"), "{err}");
    assert!(
        err.contains("writer.interval (1m 30s) must be between 1ms and 60s"),
        "{err}"
    );

    let (code, _, err) = check_config("/nonexistent/millilag.toml", &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("/nonexistent/millilag.toml") && err.contains("cannot read"),
        "{err}"
    );
}

#[test]
fn unknown_key_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, "[reader]\nmethd = \"poll\"\n").unwrap();
    let (code, _, err) = check_config(path.to_str().unwrap(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("reader") && err.contains("methd"), "{err}");
}

/// check-config on a TLS config: URLs with passwords (one with '@' in it), a Slack URL, the
/// SASL password and inline key material never reach stdout or stderr, valid or not.
#[test]
fn check_config_masks_tls_and_sasl_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.toml");
    let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/core/testdata/ca.pem");
    let text = format!(
        r#"[kafka]
sasl_password_env = "KPW"
[kafka.properties]
"security.protocol" = "sasl_ssl"
"ssl.ca.location" = "{ca}"
"sasl.mechanisms" = "SCRAM-SHA-256"
"sasl.username" = "mon"
"ssl.key.pem" = "secret-pem-1"
[[cluster]]
name = "c"
primary = "mysql://mon:secret@pw-2@db1:3306"
replicas = ["mysql://mon:secret@pw-2@db2:3306"]
tls = "verify-identity"
tls_ca_file = "{ca}"
[[sink.influxdb]]
url = "https://u:secret-influx-3@influx:8086"
api = "v1"
database = "d"
tls_ca_file = "{ca}"
[[webhook]]
url = "https://hooks.slack.com/services/T0/B0/secret-slack-4"
format = "slack"
"#
    );
    std::fs::write(&path, &text).unwrap();
    let secrets = [
        "secret-kafka-5",
        "secret-pem-1",
        "pw-2",
        "secret-influx-3",
        "secret-slack-4",
    ];
    let (code, out, err) = check_config(path.to_str().unwrap(), &[("KPW", "secret-kafka-5")]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https://hooks.slack.com/***"), "{out}");
    assert!(out.contains("mysql://mon:***@db1:3306"), "{out}");
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "{s} leaked:\n{out}{err}"
        );
    }
    // Refused (no KPW, a password in properties): the problems name keys, not secrets.
    std::fs::write(
        &path,
        text.replace(
            "\"ssl.key.pem\"",
            "\"sasl.password\" = \"secret-kafka-5\"\n\"ssl.key.pem\"",
        ),
    )
    .unwrap();
    let (code, out, err) = check_config(path.to_str().unwrap(), &[]);
    assert_eq!(code, 2);
    assert!(err.contains("kafka.properties.\"sasl.password\""), "{err}");
    assert!(err.contains("kafka.sasl_password_env"), "{err}");
    for s in secrets {
        assert!(
            !out.contains(s) && !err.contains(s),
            "{s} leaked:\n{out}{err}"
        );
    }
}
