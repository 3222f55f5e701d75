use super::*;

const EXAMPLE: &str = include_str!("../../../config/millilag.example.toml");

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn example_env() -> Vec<(String, String)> {
    env(&[
        ("INFLUX_TOKEN", "tok-123"),
        ("MILLILAG_WEBHOOK_SECRET", "hmac-key"),
        ("MILLILAG_DB_PASSWORD", "dbpw"),
    ])
}

fn load(text: &str, e: Vec<(String, String)>) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(text, "test.toml", e)
}

fn problems(text: &str, e: Vec<(String, String)>) -> String {
    load(text, e)
        .expect_err("config must be rejected")
        .to_string()
}

#[test]
fn example_config_loads_with_its_secrets() {
    let c = load(EXAMPLE, example_env()).unwrap();
    assert_eq!(c.clusters.len(), 1);
    assert_eq!(c.clusters[0].replicas.len(), 2);
    assert_eq!(c.writer.interval.0, std::time::Duration::from_millis(10));
    assert_eq!(c.reader.method, ReaderMethod::Auto);
    assert_eq!(c.processor.windows.len(), 3);
    assert_eq!(c.clusters[0].password.as_ref().unwrap().expose(), "dbpw");
    assert_eq!(
        c.sink.influxdb[0].token.as_ref().unwrap().expose(),
        "tok-123"
    );
    assert_eq!(
        c.webhooks[0].hmac_secret.as_ref().unwrap().expose(),
        "hmac-key"
    );
    assert_eq!(c.topic("replica-delay"), "millilag.replica-delay");
}

#[test]
fn masked_print_hides_every_secret() {
    let text = EXAMPLE
        .replace(
            "\"security.protocol\" = \"plaintext\"",
            "\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanisms\" = \"SCRAM-SHA-512\"\n\
             \"sasl.username\" = \"mon\"\n\"ssl.key.pem\" = \"-----BEGIN PRIVATE KEY----- inline-key\"\n\
             \"sasl.oauthbearer.config\" = \"principal=x secret=oauth-cfg\"",
        )
        .replace(
            "brokers = \"127.0.0.1:9092\"",
            "brokers = \"127.0.0.1:9092\"\nsasl_password_env = \"KAFKA_PW\"",
        );
    let text = text
        .replace(
            "mysql://millilag@127.0.0.1:3307",
            "mysql://millilag:url-pw@127.0.0.1:3307",
        )
        .replace(
            "mysql://millilag@127.0.0.1:3306",
            "mysql://millilag:p@ss-w@rd@127.0.0.1:3306",
        )
        .replace(
            "url = \"http://127.0.0.1:8086\"",
            "url = \"https://influx:in@flux-pw@127.0.0.1:8086\"",
        )
        .replace(
            "url = \"http://127.0.0.1:9093/api/v2/alerts\"",
            "url = \"https://hooks.slack.com/services/T0/B0/slack-path-secret\"",
        );
    let mut e = example_env();
    e.push(("KAFKA_PW".into(), "kafka-pw".into()));
    let c = load(&text, e).unwrap();
    assert_eq!(c.kafka.sasl_password.as_ref().unwrap().expose(), "kafka-pw");
    assert_eq!(
        c.kafka.librdkafka_properties()["sasl.password"],
        "kafka-pw",
        "the resolved password reaches librdkafka"
    );
    let printed = c.to_masked_toml();
    let debug = format!("{c:?}");
    for secret in [
        "tok-123",
        "hmac-key",
        "dbpw",
        "kafka-pw",
        "url-pw",
        "ss-w",
        "rd@",
        "flux-pw",
        "slack-path-secret",
        "inline-key",
        "oauth-cfg",
    ] {
        assert!(!printed.contains(secret), "{secret} leaked:\n{printed}");
        assert!(!debug.contains(secret), "{secret} leaked:\n{debug}");
    }
    assert!(printed.contains("***"));
    // Resolved secrets show as present-but-masked, so an operator sees they were found.
    assert!(printed.contains("password = \"***\""), "{printed}");
    assert!(printed.contains("token = \"***\""), "{printed}");
    assert!(printed.contains("https://hooks.slack.com/***"), "{printed}");
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let e = problems(
        &EXAMPLE.replace("interval = \"10ms\"", "intervall = \"10ms\""),
        example_env(),
    );
    assert!(e.contains("writer") && e.contains("intervall"), "{e}");
    let e = problems("[kafka]\nbrokerz = \"x\"\n", vec![]);
    assert!(e.contains("brokerz"), "{e}");
}

#[test]
fn env_overrides_win_over_the_file() {
    let mut e = example_env();
    e.extend(env(&[
        ("MILLILAG_WRITER__INTERVAL", "5ms"),
        ("MILLILAG_READER__PREARM_DEPTH", "3"),
        ("MILLILAG_CLUSTER__0__DATABASE", "hb"),
        ("MILLILAG_KAFKA__BROKERS", "10.0.0.9:9092"),
        ("MILLILAG_PROCESSOR__WINDOWS", "[\"1s\", \"10s\"]"),
        ("UNRELATED", "x"),
    ]));
    let text = EXAMPLE.replace(
        "window = \"10s\"\nfor = \"10s\"",
        "window = \"1s\"\nfor = \"10s\"",
    );
    let c = load(&text, e).unwrap();
    assert_eq!(c.writer.interval.0, std::time::Duration::from_millis(5));
    assert_eq!(c.reader.prearm_depth, 3);
    assert_eq!(c.clusters[0].database, "hb");
    assert_eq!(c.kafka.brokers, "10.0.0.9:9092");
    assert_eq!(c.processor.windows.len(), 2);
}

#[test]
fn env_override_of_a_missing_array_item_is_an_error() {
    let mut e = example_env();
    e.push(("MILLILAG_CLUSTER__3__NAME".into(), "x".into()));
    let err = problems(EXAMPLE, e);
    assert!(err.contains("MILLILAG_CLUSTER__3__NAME"), "{err}");
}

#[test]
fn every_semantic_problem_is_listed_with_its_key() {
    let text = EXAMPLE
        .replace("interval = \"10ms\"", "interval = \"0ms\"")
        .replace("table = \"heartbeat\"", "table = \"heart beat; DROP\"")
        .replace("when = \"p99 > 500ms\"", "when = \"p98 > 500ms\"")
        .replace("org = \"ops\"\n", "");
    let e = problems(&text, example_env());
    for needle in [
        "writer.interval",
        "cluster[0].table",
        "alert[0] (replica-lag-high).when",
        "sink.influxdb[0]: api = \"v2\" needs org and bucket",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

#[test]
fn bad_durations_and_urls_say_how_to_fix() {
    let e = problems(&EXAMPLE.replace("\"10ms\"", "\"10\""), example_env());
    assert!(
        e.contains("writer.interval") && e.contains("with a unit"),
        "{e}"
    );
    let e = problems(
        &EXAMPLE.replace("mysql://millilag@127.0.0.1:3306", "127.0.0.1:3306"),
        example_env(),
    );
    assert!(
        e.contains("cluster[0].primary") || e.contains("cluster.0.primary"),
        "{e}"
    );
}

#[test]
fn missing_secret_env_is_a_start_error() {
    let e = problems(EXAMPLE, env(&[("MILLILAG_WEBHOOK_SECRET", "k")]));
    assert!(e.contains("INFLUX_TOKEN"), "{e}");
}

#[test]
fn alert_window_must_be_computed() {
    let e = problems(
        &EXAMPLE.replace(
            "window = \"10s\"\nfor = \"30s\"",
            "window = \"5s\"\nfor = \"30s\"",
        ),
        example_env(),
    );
    assert!(
        e.contains("window (5s) is not one of processor.windows"),
        "{e}"
    );
}

#[test]
fn identifiers() {
    assert!(validate_identifier("heartbeat").is_ok());
    assert!(validate_identifier("hb_2$").is_ok());
    for bad in ["", "a-b", "a`b", "123", "a b", &"x".repeat(65)] {
        assert!(validate_identifier(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(
        "[[cluster]]\nname = \"c\"\nprimary = \"mysql://u@h:1\"\nreplicas = [\"mysql://u@h:2\"]\n",
        vec![],
    )
    .unwrap();
    assert_eq!(c.kafka.topic_prefix, "millilag.");
    assert_eq!(c.clusters[0].table, "heartbeat");
    assert_eq!(c.writer.gtid_domain_id, 77);
    assert!(c.clusters[0].password.is_none());
}
