//! What Prometheus users get: the alerting rules in compose/prometheus/ (checked and unit-tested
//! by promtool, loaded by a real Prometheus), and every metric they, the Prometheus Grafana
//! dashboard and the README name is one that the running services serve; the dashboard's
//! queries run on a real Prometheus scraping them.

use crate::common::{create_topics, http_get, Env, Pipeline};
use millilag_harness::prometheus::Prometheus;
use millilag_harness::{free_port, wait_for};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn prometheus_dir() -> PathBuf {
    root().join("compose/prometheus")
}

/// Run promtool (Debian's `prometheus` package, installed by scripts/setup) in `dir`.
fn promtool(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("promtool runs (the prometheus package, scripts/setup installs it)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = prometheus_dir();
    let (ok, out) = promtool(&dir, &["check", "rules", "millilag-rules.yml"]);
    assert!(ok, "promtool check rules: {out}");
    let (ok, out) = promtool(&dir, &["test", "rules", "millilag-rules.test.yml"]);
    assert!(ok, "promtool test rules: {out}");
    // The compose deployment's Prometheus config, with the rule file it loads.
    let (ok, out) = promtool(&dir, &["check", "config", "prometheus.yml"]);
    assert!(ok, "promtool check config: {out}");

    // The unit tests cover every alert in the file.
    let rules = std::fs::read_to_string(dir.join("millilag-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("millilag-rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 10, "{alerts:?}");
    for a in alerts {
        assert!(
            tests.contains(&format!(
                "alertname: {a}\n        exp_alerts:\n          - "
            )),
            "no test where {a} fires"
        );
        assert!(
            tests.contains(&format!("alertname: {a}\n        exp_alerts: []")),
            "no test where {a} stays quiet"
        );
    }
}

/// A broken rule file is refused: the check above is not vacuous.
#[test]
fn promtool_refuses_a_rule_on_a_bad_expression() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - alert: Broken\n        expr: rate(millilag_writer_heartbeats_total) > 0\n",
    )
    .unwrap();
    let (ok, out) = promtool(dir.path(), &["check", "rules", "bad.yml"]);
    assert!(!ok && out.contains("range vector"), "{out}");
}

/// Metric names in `text`: identifiers starting with `millilag_` or `process_` (not a bare
/// prefix such as the package file name `millilag_<version>.deb`).
pub fn metric_names_in(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("millilag_") || t.starts_with("process_"))
        .filter(|t| !t.ends_with('_'))
        .map(str::to_string)
        .collect()
}

/// Every sample name a Prometheus scrape of `exposition` yields (OpenMetrics text): the
/// families' `# TYPE` lines expanded to their sample names, so a family with no series yet
/// (a counter nothing incremented) counts too.
pub fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in exposition.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                // The family name too: prose (annotations, panel titles) names the histogram.
                "histogram" => &["", "_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !l.starts_with('#') {
            if let Some(name) = l.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                out.insert(name.to_string());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_evaluates_the_rules_on_served_metrics() {
    let env = Env::start(1).await;
    let processor_listen = format!("127.0.0.1:{}", free_port());
    let config = env.config(
        "interval = \"10ms\"",
        "",
        &format!("[processor]\nwindows = [\"1s\"]\nlisten = \"{processor_listen}\""),
    );
    create_topics(&config).await;
    let pipeline = Pipeline::start(&config, true, true);
    let (stop, token) = millilag_core::shutdown::shutdown_pair();
    let processor = tokio::spawn(millilag_processors::processor::run(config.clone(), token));
    let listens = [
        ("writer", config.writer.listen.to_string()),
        ("reader", config.reader.listen.to_string()),
        ("processor", processor_listen.clone()),
    ];

    // What each service serves, once its first measurement is in (the families with labels
    // get their series then).
    let mut served = BTreeSet::new();
    for (service, listen) in &listens {
        let body = wait_for(
            &format!("{service} /metrics"),
            Duration::from_secs(30),
            || async {
                let (status, body) = http_get(listen, "/metrics").await?;
                (status == 200
                    && (*service != "reader"
                        || body.contains("millilag_reader_delay_seconds_bucket{")))
                .then_some(body)
            },
        )
        .await
        .unwrap();
        served.extend(served_names(&body));
    }
    for must in [
        "millilag_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "millilag_replica_lag_seconds",
        "millilag_reader_delay_seconds_bucket",
        "millilag_writer_interval_seconds",
    ] {
        assert!(served.contains(must), "{must} not served: {served:?}");
    }

    // Every metric the rules, the dashboards and the README name is one of them.
    let mut named = Vec::new();
    for file in [
        "compose/prometheus/millilag-rules.yml",
        "compose/prometheus/millilag-rules.test.yml",
        "compose/grafana/provisioning/dashboards/millilag-prometheus.json",
        "README.md",
        "compose/README.md",
    ] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        named.extend(metric_names_in(&text).into_iter().map(|n| (file, n)));
    }
    assert!(named.len() > 10, "{named:?}");
    let unknown: Vec<_> = named.iter().filter(|(_, n)| !served.contains(n)).collect();
    assert!(unknown.is_empty(), "named but not served: {unknown:?}");

    // A real Prometheus parses the services' OpenMetrics text and evaluates every rule.
    let rules = prometheus_dir().join("millilag-rules.yml");
    let targets: Vec<(&str, Vec<String>)> =
        listens.iter().map(|(s, l)| (*s, vec![l.clone()])).collect();
    let prom = Prometheus::start(&targets, &[&rules]).await.unwrap();
    wait_for("every target up", Duration::from_secs(30), || async {
        let up = prom.query("up == 1").await.ok()?;
        (up.len() == 3).then_some(())
    })
    .await
    .unwrap();
    let build = prom
        .query("count by (job) (millilag_build_info{version!=\"\",git_commit!=\"\"})")
        .await
        .unwrap();
    assert_eq!(build.len(), 3, "{build:?}");
    // The reader's histogram has the fine buckets (41 bounds + Inf) and one at 500 ms.
    let buckets = prom
        .query("count by (replica) (millilag_reader_delay_seconds_bucket)")
        .await
        .unwrap();
    assert_eq!(buckets[0]["value"][1], "42", "{buckets:?}");
    assert_eq!(
        prom.query("millilag_reader_delay_seconds_bucket{le=\"0.5\"}")
            .await
            .unwrap()
            .len(),
        1
    );
    let groups = wait_for("every rule evaluated", Duration::from_secs(30), || async {
        let data = prom.api("/api/v1/rules", &[]).await.ok()?;
        let groups = data["groups"].as_array()?.clone();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["health"] == "ok")
            .then_some(groups)
    })
    .await
    .unwrap();
    let evaluated: usize = groups
        .iter()
        .map(|g| g["rules"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(evaluated >= 10, "{groups:?}");
    // A healthy pipeline: a writer leads, so the no-leader alert is not even pending.
    let leader = prom
        .query("max by (cluster) (millilag_writer_leader)")
        .await
        .unwrap();
    assert_eq!(leader[0]["value"][1], "1", "{leader:?}");
    // Every query of the Prometheus dashboard parses and runs; the delay panels have data.
    for (title, expr) in crate::grafana::prometheus_dashboard_exprs() {
        let q = crate::grafana::substitute_grafana_variables(&expr);
        prom.query(&q)
            .await
            .unwrap_or_else(|e| panic!("{title}: {q}: {e}"));
        if title.contains("live lag") || title.contains("p99") || title.starts_with('$') {
            // A rate needs two scrapes: wait for them.
            wait_for(
                &format!("{title}: {q}"),
                Duration::from_secs(30),
                || async { (!prom.query(&q).await.ok()?.is_empty()).then_some(()) },
            )
            .await
            .unwrap();
        }
    }

    // (Evaluations before the first scrape may have made some pending: wait for one after.)
    let quiet = [
        "MillilagNoWriterLeading",
        "MillilagWritersAbsent",
        "MillilagDeadLetters",
    ];
    wait_for("pipeline alerts quiet", Duration::from_secs(30), || async {
        let alerts = prom.api("/api/v1/alerts", &[]).await.ok()?;
        let active: Vec<String> = alerts["alerts"]
            .as_array()?
            .iter()
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect();
        (!quiet.iter().any(|q| active.iter().any(|a| a == q))).then_some(())
    })
    .await
    .unwrap();

    stop.trigger();
    processor.await.unwrap().unwrap();
    pipeline.stop().await;
}
