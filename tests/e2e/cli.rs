//! The `millilag` binary's own behaviour: check-config output and exit codes.

use std::process::Command;
use std::time::Duration;

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

/// A config whose services start without any server: an unreachable primary (the writer retries
/// it), topics not created (so no broker is needed to start).
fn offline_config(dir: &std::path::Path, processor_listen: &str) -> std::path::PathBuf {
    let port = millilag_harness::free_port;
    let path = dir.join("offline.toml");
    std::fs::write(
        &path,
        format!(
            r#"[kafka]
brokers = "127.0.0.1:{kafka}"
create_topics = false

[[cluster]]
name = "main"
primary = "mysql://u:p@127.0.0.1:{db}"
replicas = ["mysql://u:p@127.0.0.1:{db}"]
connect_timeout = "200ms"

[writer]
listen = "127.0.0.1:{w}"

[reader]
listen = "127.0.0.1:{r}"

[processor]
listen = "{processor_listen}"
"#,
            kafka = port(),
            db = port(),
            w = port(),
            r = port(),
        ),
    )
    .unwrap();
    path
}

/// Issue 13, item 11: `millilag all` whose processor cannot start (its port is taken) stops
/// the writer and reader too and exits non-zero, so a supervisor restarts it.
#[test]
fn all_exits_non_zero_when_one_service_fails() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let path = offline_config(dir.path(), &addr);
    let log = dir.path().join("all.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("all")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info");
    let mut g = millilag_harness::process::Guard::spawn("all", cmd, &log).unwrap();
    // A bound, not a pause: a process that outlives its failed service never exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if !g.is_running() {
            break g.wait();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "millilag all still running with its processor failed:\n{}",
            g.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}\n{out}");
    assert!(
        out.contains("processor") && out.contains(&addr) && out.contains("stopping the others"),
        "{out}"
    );
    drop(taken);
}

/// Issue 13, item 12: SIGHUP is logged and ignored (its default would kill the process without
/// flushing), and SIGTERM still stops the service cleanly afterwards.
#[test]
fn sighup_is_ignored_and_sigterm_still_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = offline_config(dir.path(), "127.0.0.1:0");
    let log = dir.path().join("writer.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("writer")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info");
    let mut g = millilag_harness::process::Guard::spawn("writer", cmd, &log).unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let wait_log = |needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !read().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                read()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_log("Writer started");
    // One at a time: signals that arrive together may be delivered as one.
    for n in 1..=3 {
        g.signal(libc::SIGHUP);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while read().matches("SIGHUP received and ignored").count() < n {
            assert!(std::time::Instant::now() < deadline, "{}", read());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(g.is_running(), "{}", read());
    g.signal(libc::SIGTERM);
    let status = g.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        read()
    );
    assert!(read().contains("Writer stopped"), "{}", read());
}

#[test]
fn check_config_takes_the_file_from_config_or_millilag_config() {
    let env = [
        ("INFLUX_TOKEN", "t"),
        ("MILLILAG_WEBHOOK_SECRET", "h"),
        ("MILLILAG_DB_PASSWORD", "p"),
    ];
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .arg("check-config")
            .args(args)
            .env_clear()
            .envs(env.iter().chain(extra).copied())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&["--config", EXAMPLE], &[]).0, 0);
    assert_eq!(run(&["-c", EXAMPLE], &[]).0, 0);
    assert_eq!(run(&[], &[("MILLILAG_CONFIG", EXAMPLE)]).0, 0);
    // The positional file wins over the environment (the image sets MILLILAG_CONFIG).
    let (code, err) = run(&["/nonexistent.toml"], &[("MILLILAG_CONFIG", EXAMPLE)]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent.toml"), "{err}");
    let (code, err) = run(&[], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("--config FILE or MILLILAG_CONFIG"), "{err}");
}

#[test]
fn an_invalid_log_level_stops_the_service_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.toml");
    std::fs::write(&path, "[log]\nlevel = \"infoo\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["writer", "--config"])
        .arg(&path)
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("log.level: \"infoo\" is not a level"), "{err}");
}
