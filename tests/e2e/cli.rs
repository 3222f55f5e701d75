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
