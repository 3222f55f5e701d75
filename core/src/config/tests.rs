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
fn a_reader_with_no_room_for_a_record_is_refused() {
    let mut e = example_env();
    e.push(("MILLILAG_READER__MAX_PENDING_RECORDS".into(), "0".into()));
    let e = problems(EXAMPLE, e);
    assert!(e.contains("reader.max_pending_records"), "{e}");
    let c = load(EXAMPLE, example_env()).unwrap();
    assert_eq!(c.reader.max_pending_records, 10_000, "the default");
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

const MINIMAL: &str =
    "[[cluster]]\nname = \"c\"\nprimary = \"mysql://u@h:1\"\nreplicas = [\"mysql://u@h:2\"]\n";

#[test]
fn minimal_config_gets_defaults() {
    let c = load(MINIMAL, env(&[("MILLILAG_DB_PASSWORD", "pw")])).unwrap();
    assert_eq!(c.kafka.topic_prefix, "millilag.");
    assert_eq!(c.clusters[0].table, "heartbeat");
    assert_eq!(c.writer.gtid_domain_id, 77);
    assert_eq!(c.clusters[0].password.as_ref().unwrap().expose(), "pw");
}

#[test]
fn topics_take_the_brokers_replication_factor_unless_set() {
    let pw = || env(&[("MILLILAG_DB_PASSWORD", "pw")]);
    assert_eq!(load(MINIMAL, pw()).unwrap().kafka.replication_factor, -1);
    let set = format!("[kafka]\nreplication_factor = 3\n{MINIMAL}");
    assert_eq!(load(&set, pw()).unwrap().kafka.replication_factor, 3);
    for bad in [0, -2] {
        let e = problems(
            &format!("[kafka]\nreplication_factor = {bad}\n{MINIMAL}"),
            pw(),
        );
        assert!(
            e.contains(&format!(
                "kafka.replication_factor ({bad}) must be -1 (the broker's default) or at least 1"
            )),
            "{e}"
        );
    }
}

#[test]
fn default_listen_ports_are_distinct_and_clear_of_the_exporter_range() {
    let c = Config::default();
    let ports = [c.writer.listen, c.reader.listen, c.processor.listen].map(|a| a.port());
    assert_eq!(ports, [8461, 8462, 8463]);
    for p in ports {
        // 9100-9999: the Prometheus exporters' allocated defaults (9101-9103 are haproxy,
        // statsd and collectd exporters); 9090-9094: Prometheus, Alertmanager, Kafka.
        assert!(!(9090..=9999).contains(&p), "{p}");
    }
    assert!(c.writer.listen.ip().is_loopback());
}

#[test]
fn listen_takes_a_bare_port_and_host_names_and_names_the_key_when_wrong() {
    let pw = || env(&[("MILLILAG_DB_PASSWORD", "pw")]);
    let text = format!(
        "{MINIMAL}[writer]\nlisten = \":9101\"\n[reader]\nlisten = \"localhost:8472\"\n[processor]\nlisten = \"[::1]:8473\"\n"
    );
    let c = load(&text, pw()).unwrap();
    assert_eq!(c.writer.listen.to_string(), "0.0.0.0:9101");
    assert!(c.reader.listen.ip().is_loopback() && c.reader.listen.port() == 8472);
    assert_eq!(c.processor.listen.to_string(), "[::1]:8473");
    // From the environment too, as a string.
    let mut e = pw();
    e.push(("MILLILAG_WRITER__LISTEN".into(), ":8481".into()));
    assert_eq!(load(MINIMAL, e).unwrap().writer.listen.port(), 8481);
    let e = problems(&format!("{MINIMAL}[reader]\nlisten = \"8462\"\n"), pw());
    assert!(
        e.contains("reader.listen") && e.contains("has no port"),
        "{e}"
    );
    let e = problems(
        &format!("{MINIMAL}[processor]\nlisten = \"no-such-host.invalid:1\"\n"),
        pw(),
    );
    assert!(
        e.contains("processor.listen") && e.contains("does not resolve"),
        "{e}"
    );
}

#[test]
fn an_invalid_log_level_is_an_error_not_silence() {
    let pw = || env(&[("MILLILAG_DB_PASSWORD", "pw")]);
    for good in [
        "info",
        "WARN",
        "millilag=debug,info",
        "millilag_processors::reader=trace,warn",
        "off",
    ] {
        let text = format!("{MINIMAL}[log]\nlevel = \"{good}\"\n");
        assert!(load(&text, pw()).is_ok(), "{good}");
    }
    for bad in ["infoo", "verbose", "millilag=loud", "", "millilag=debug,[{"] {
        let e = problems(&format!("{MINIMAL}[log]\nlevel = \"{bad}\"\n"), pw());
        assert!(
            e.contains("log.level") && e.contains("e.g. \"info\""),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn env_overrides_keep_strings_as_strings() {
    let mut e = env(&[
        ("MILLILAG_DB_PASSWORD", "pw"),
        ("MILLILAG_READER__GROUP", "2024"),
        ("MILLILAG_WRITER__WRITER_ID", "true"),
        ("MILLILAG_CLUSTER__0__NAME", "42"),
        ("MILLILAG_KAFKA__TOPIC_PREFIX", "1.5"),
        // Wanted as numbers: still numbers.
        ("MILLILAG_READER__PREARM_DEPTH", "3"),
        ("MILLILAG_KAFKA__PARTITIONS", "12"),
    ]);
    let c = load(MINIMAL, e.clone()).unwrap();
    assert_eq!(c.reader.group, "2024");
    assert_eq!(c.writer.writer_id.as_deref(), Some("true"));
    assert_eq!(c.clusters[0].name, "42");
    assert_eq!(c.kafka.topic_prefix, "1.5");
    assert_eq!((c.reader.prearm_depth, c.kafka.partitions), (3, 12));
    // A number key given text is still an error naming the key.
    e.push(("MILLILAG_KAFKA__PARTITIONS".into(), "many".into()));
    let err = problems(MINIMAL, e);
    assert!(err.contains("kafka.partitions"), "{err}");
}

#[test]
fn a_missing_password_variable_is_an_error_like_the_tokens() {
    let e = problems(MINIMAL, vec![]);
    assert!(
        e.contains("cluster[0].password_env: environment variable MILLILAG_DB_PASSWORD is not set")
            && e.contains("password_file"),
        "{e}"
    );
    let custom = MINIMAL.replace("replicas", "password_env = \"DB_PW\"\nreplicas");
    let e = problems(&custom, env(&[("MILLILAG_DB_PASSWORD", "pw")]));
    assert!(e.contains("DB_PW is not set"), "{e}");
    assert_eq!(
        load(&custom, env(&[("DB_PW", "x")])).unwrap().clusters[0]
            .password
            .as_ref()
            .unwrap()
            .expose(),
        "x"
    );
    // A password in the URL, or password_env = "" (a user without one), needs no variable.
    let in_url = MINIMAL.replace("mysql://u@h:1", "mysql://u:secret@h:1");
    assert!(load(&in_url, vec![]).is_ok());
    let none = MINIMAL.replace("replicas", "password_env = \"\"\nreplicas");
    assert!(load(&none, vec![]).unwrap().clusters[0].password.is_none());
}

#[test]
fn statsd_sink_defaults_and_every_bad_key_named() {
    let c = load(EXAMPLE, example_env()).unwrap();
    let s = &c.sink.statsd[0];
    assert_eq!(s.protocol, StatsdProtocol::Statsd);
    assert_eq!(s.mtu, 1432);
    assert!(s.timings);
    assert_eq!(s.sample_rate(), 0.1);
    let text = "[[sink.statsd]]\naddress = \"statsd:8125\"\nprotocol = \"dogstatsd\"\n";
    let c = load(text, vec![]).unwrap();
    let s = &c.sink.statsd[0];
    assert_eq!(
        (s.prefix.as_str(), s.timings, s.sample_rate()),
        ("millilag", false, 1.0)
    );
    assert_eq!(s.protocol, StatsdProtocol::Dogstatsd);

    let text =
        "[[sink.statsd]]\naddress = \"statsd\"\nprefix = \"a:b\"\nmtu = 20\nsample_rate = 0.5\n\
                [[sink.statsd]]\naddress = \"statsd:8125\"\ntimings = true\nsample_rate = 0\n";
    let e = problems(text, vec![]);
    for needle in [
        "sink.statsd[0].address (\"statsd\") must be host:port",
        "sink.statsd[0].prefix (\"a:b\") must not contain ':'",
        "sink.statsd[0].mtu (20) must be between 64 and 65507",
        "sink.statsd[0].sample_rate (0.5) samples timings, which are off",
        "sink.statsd[1].sample_rate (0) must be greater than 0",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
    let e = problems(
        "[[sink.statsd]]\naddress = \"statsd:8125\"\nprotocol = \"graphite\"\n",
        vec![],
    );
    assert!(e.contains("sink.statsd") && e.contains("protocol"), "{e}");
}

/// The example with `section`'s `key = ...` line replaced (or added after the header).
fn with_line(section_header: &str, line: &str) -> String {
    EXAMPLE.replacen(section_header, &format!("{section_header}\n{line}"), 1)
}

#[test]
fn zero_periods_and_timeouts_are_refused_naming_the_key() {
    let text = with_line(
        "[reader]",
        "clock_refresh = \"0s\"\ndiscovery_interval = \"0ms\"",
    )
    .replacen(
        "address = \"127.0.0.1:2003\"",
        "address = \"127.0.0.1:2003\"\ntimeout = \"0s\"",
        1,
    )
    .replacen(
        "token_env = \"INFLUX_TOKEN\"",
        "token_env = \"INFLUX_TOKEN\"\ntimeout = \"0s\"",
        1,
    )
    .replacen(
        "format = \"alertmanager\"",
        "format = \"alertmanager\"\ntimeout = \"0s\"\ngive_up_after = \"0s\"",
        1,
    )
    .replacen("query_timeout = \"5s\"", "query_timeout = \"0s\"", 1)
    .replacen("connect_timeout = \"3s\"", "connect_timeout = \"20m\"", 1);
    let e = problems(&text, example_env());
    for needle in [
        "reader.clock_refresh (0s) must be at least 100ms",
        "reader.discovery_interval (0s) must be at least 100ms",
        "sink.graphite[0].timeout (0s) must be more than zero",
        "sink.influxdb[0].timeout (0s) must be more than zero",
        "webhook[0].timeout (0s) must be more than zero",
        "webhook[0].give_up_after (0s) must be more than zero",
        "cluster[0].query_timeout (0s) must be between 10ms and 10m",
        "cluster[0].connect_timeout (20m) must be between 10ms and 10m",
    ] {
        assert!(e.contains(needle), "missing {needle:?} in:\n{e}");
    }
}

#[test]
fn durations_that_overflow_are_refused_naming_the_key() {
    for huge in ["18446744073709551616s", "9999999999999999y", "400d"] {
        let e = problems(
            &EXAMPLE.replace("timeout = \"30s\"", &format!("timeout = \"{huge}\"")),
            example_env(),
        );
        assert!(e.contains("reader.timeout") && e.contains(huge), "{e}");
    }
    let mut e = example_env();
    e.push(("MILLILAG_WRITER__INTERVAL".into(), "99999999999999h".into()));
    let err = problems(EXAMPLE, e);
    assert!(err.contains("writer.interval"), "{err}");
}

#[test]
fn writer_id_longer_than_its_column_is_refused() {
    let ok = with_line("[writer]", &format!("writer_id = \"{}\"", "w".repeat(64)));
    assert!(load(&ok, example_env()).is_ok());
    // 64 characters, not bytes: the column is varchar(64) in utf8mb4.
    let ok = with_line("[writer]", &format!("writer_id = \"{}\"", "é".repeat(64)));
    assert!(load(&ok, example_env()).is_ok());
    for bad in ["w".repeat(65), String::new()] {
        let e = problems(
            &with_line("[writer]", &format!("writer_id = \"{bad}\"")),
            example_env(),
        );
        assert!(
            e.contains("writer.writer_id") && e.contains("1 to 64 characters"),
            "{e}"
        );
    }
}

#[test]
fn kafka_properties_that_at_least_once_depends_on_are_refused() {
    for (key, hint) in [
        ("enable.auto.offset.store", "at-least-once"),
        ("enable.auto.commit", "at-least-once"),
        ("enable.idempotence", "idempotent"),
        ("acks", "acks=all"),
        ("group.id", "reader.group"),
        ("transactional.id", "transactions"),
        ("bootstrap.servers", "kafka.brokers"),
        ("Enable.Auto.Commit", "at-least-once"),
    ] {
        let text = EXAMPLE.replace(
            "\"security.protocol\" = \"plaintext\"",
            &format!("\"security.protocol\" = \"plaintext\"\n\"{key}\" = \"x\""),
        );
        let e = problems(&text, example_env());
        assert!(
            e.contains(&format!("kafka.properties.\"{key}\"")) && e.contains(hint),
            "{key}: {e}"
        );
        assert!(e.contains("remove it"), "{e}");
    }
    // Tuning and security properties stay the user's (the CA file must exist: it is read).
    let text = EXAMPLE.replace(
        "\"security.protocol\" = \"plaintext\"",
        &format!(
            "\"security.protocol\" = \"ssl\"\n\"linger.ms\" = \"5\"\n\"ssl.ca.location\" = \"{}/testdata/ca.pem\"",
            env!("CARGO_MANIFEST_DIR")
        ),
    );
    assert!(load(&text, example_env()).is_ok());
}

#[test]
fn primary_is_one_url_or_a_list_of_candidates() {
    let one = load(EXAMPLE, example_env()).unwrap();
    assert_eq!(one.clusters[0].primaries.len(), 1);
    assert_eq!(one.clusters[0].primary().address(), "127.0.0.1:3306");
    // Printed back as it was written.
    assert!(one
        .to_masked_toml()
        .contains("primary = \"mysql://millilag@127.0.0.1:3306\""));

    let text = EXAMPLE.replace(
        "primary = \"mysql://millilag@127.0.0.1:3306\"",
        "primary = [\"mysql://millilag@10.0.0.1:3306\", \"mysql://millilag:pw@10.0.0.2:3306\"]",
    );
    let many = load(&text, example_env()).unwrap();
    let addrs: Vec<String> = many.clusters[0]
        .primaries
        .iter()
        .map(|u| u.address())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:3306", "10.0.0.2:3306"]);
    // The password of the first candidate's URL, else the environment's.
    assert_eq!(many.clusters[0].password.as_ref().unwrap().expose(), "dbpw");
    let printed = many.to_masked_toml();
    assert!(
        printed.contains("10.0.0.2:3306") && !printed.contains(":pw@"),
        "{printed}"
    );

    // From the environment too, as a TOML array.
    let mut e = example_env();
    e.push((
        "MILLILAG_CLUSTER__0__PRIMARY".into(),
        "[\"mysql://m@a:1\", \"mysql://m@b:1\"]".into(),
    ));
    assert_eq!(load(EXAMPLE, e).unwrap().clusters[0].primaries.len(), 2);

    for (bad, needle) in [
        ("primary = []", "cluster[0].primary: empty list"),
        (
            "primary = [\"mysql://m@a:1\", \"mysql://x@a:1\"]",
            "cluster[0].primary lists a:1 twice",
        ),
        ("primary = [\"a:1\"]", "cluster"),
        ("primary = 5", "a mysql:// URL or a list of them"),
    ] {
        let e = problems(
            &EXAMPLE.replace("primary = \"mysql://millilag@127.0.0.1:3306\"", bad),
            example_env(),
        );
        assert!(e.contains(needle), "{bad}: {e}");
    }
}

#[test]
fn db_timeouts_default_to_seconds() {
    let c = load(EXAMPLE, example_env()).unwrap();
    let t = c.clusters[0].db_timeouts();
    assert_eq!(t, crate::db::DbTimeouts::DEFAULT);
    let c = load(
        &EXAMPLE
            .replace("query_timeout = \"5s\"", "query_timeout = \"750ms\"")
            .replace("connect_timeout = \"3s\"", "connect_timeout = \"1s\""),
        example_env(),
    )
    .unwrap();
    let t = c.clusters[0].db_timeouts();
    assert_eq!(
        (t.query, t.connect),
        (
            std::time::Duration::from_millis(750),
            std::time::Duration::from_secs(1)
        )
    );
}

#[test]
fn worker_threads_default_to_one_and_zero_is_refused() {
    let c = load(EXAMPLE, example_env()).unwrap();
    assert_eq!(c.reader.worker_threads, 1, "the default");
    assert_eq!(c.processor.worker_threads, 1, "the default");
    let mut e = example_env();
    e.push(("MILLILAG_READER__WORKER_THREADS".into(), "0".into()));
    e.push(("MILLILAG_PROCESSOR__WORKER_THREADS".into(), "300".into()));
    let e = problems(EXAMPLE, e);
    assert!(e.contains("reader.worker_threads (0)"), "{e}");
    assert!(e.contains("processor.worker_threads (300)"), "{e}");
}
