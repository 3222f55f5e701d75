//! The Grafana dashboards in compose/grafana/provisioning: every InfluxDB query names the
//! measurement and fields the processor writes (README "Processor output"), every Prometheus
//! query names metrics the services serve (checked against a running pipeline and evaluated
//! by a real Prometheus in `prometheus.rs`), both select by `$cluster`/`$replica` and take
//! their data source from a variable whose default is the provisioned one.

use millilag_core::config::Config;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn dashboard(name: &str) -> Value {
    serde_json::from_str(&read(&format!(
        "compose/grafana/provisioning/dashboards/{name}"
    )))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The compose deployment's config, as the processor loads it.
fn compose_config() -> Config {
    Config::from_toml_with_env(
        &read("compose/millilag.toml"),
        "compose/millilag.toml",
        [
            ("MILLILAG_DB_PASSWORD".to_string(), "x".to_string()),
            ("INFLUX_TOKEN".to_string(), "y".to_string()),
        ],
    )
    .unwrap()
}

/// The fields the README's "Processor output" table lists for InfluxDB and Graphite.
fn readme_fields() -> BTreeSet<String> {
    let readme = read("README.md");
    let row = readme
        .lines()
        .find(|l| l.starts_with("| fields |"))
        .expect("README Processor output: the fields row");
    let cell = row.split('|').nth(2).unwrap();
    // Backticked names before the parenthesised note.
    let names = cell.split('(').next().unwrap();
    names
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The quoted strings after each `marker` in `q`.
fn quoted_after(q: &str, marker: &str) -> Vec<String> {
    q.match_indices(marker)
        .filter_map(|(i, _)| q[i + marker.len()..].split('"').nth(1))
        .map(str::to_string)
        .collect()
}

/// Checks one Flux query: it reads `measurement` and only `fields`. Returns the fields named.
fn check_flux(
    q: &str,
    measurement: &str,
    fields: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let measurements = quoted_after(q, "r._measurement ==");
    if measurements.is_empty() || measurements.iter().any(|m| m != measurement) {
        return Err(format!(
            "measurement {measurements:?}, not {measurement:?}: {q}"
        ));
    }
    let mut named = quoted_after(q, "r._field ==");
    if let Some((_, rest)) = q.split_once("contains(value: r._field, set: [") {
        let list = rest.split(']').next().unwrap_or_default();
        named.extend(list.split('"').skip(1).step_by(2).map(str::to_string));
    }
    if named.is_empty() {
        return Err(format!("no field named: {q}"));
    }
    match named.iter().find(|f| !fields.contains(*f)) {
        Some(f) => Err(format!("field {f:?} is not one the processor writes: {q}")),
        None => Ok(named),
    }
}

fn variables(dash: &Value) -> Vec<Value> {
    dash["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn variable(dash: &Value, name: &str) -> Value {
    variables(dash)
        .into_iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{}: no ${name} variable", dash["title"]))
}

/// Panels with queries (rows left out).
fn panels(dash: &Value) -> Vec<Value> {
    dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] != "row")
        .cloned()
        .collect()
}

/// The uid a provisioning file gives its data source.
fn provisioned_uid(file: &str) -> String {
    let text = read(&format!("compose/grafana/provisioning/datasources/{file}"));
    text.lines()
        .find_map(|l| l.trim().strip_prefix("uid: "))
        .map(|u| u.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("{file}: no uid"))
}

fn check_datasource_variable(dash: &Value, plugin: &str, provisioning: &str) {
    let ds = variable(dash, "datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], plugin);
    assert_eq!(
        ds["current"]["value"],
        provisioned_uid(provisioning).as_str()
    );
    for p in panels(dash) {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        assert_eq!(p["datasource"]["type"], plugin, "{title}");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}"));
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
}

#[test]
fn grafana_influxdb_dashboard_reads_the_measurement_and_fields_the_processor_writes() {
    let dash = dashboard("millilag.json");
    let cfg = compose_config();
    let sink = cfg.sink.influxdb.first().expect("an InfluxDB sink");
    let fields = readme_fields();
    assert!(
        fields.contains("p99_us") && fields.contains("timeouts"),
        "{fields:?}"
    );
    check_datasource_variable(&dash, "influxdb", "influxdb.yml");

    // Variables: the bucket defaults to the sink's, the windows are the configured ones,
    // cluster and replica come from the measurement's tags.
    assert_eq!(
        variable(&dash, "bucket")["query"].as_str(),
        sink.bucket.as_deref()
    );
    let windows: BTreeSet<String> = cfg
        .processor
        .windows
        .iter()
        .map(|w| w.to_string())
        .collect();
    let offered: BTreeSet<String> = variable(&dash, "window")["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offered, windows);
    for (name, tag) in [
        ("cluster", "tag: \"cluster\""),
        ("replica", "tag: \"replica\""),
    ] {
        let v = variable(&dash, name);
        let q = v["query"].as_str().unwrap();
        assert!(
            q.contains("bucket: \"${bucket}\"") && q.contains(tag),
            "{q}"
        );
        assert!(
            q.contains(&format!("measurement: \"{}\"", sink.measurement))
                || q.contains(&format!("r._measurement == \"{}\"", sink.measurement)),
            "{q}"
        );
        assert_eq!(
            (v["multi"].as_bool(), v["includeAll"].as_bool()),
            (Some(true), Some(true))
        );
    }

    let mut used = BTreeSet::new();
    for p in panels(&dash) {
        for t in p["targets"].as_array().unwrap() {
            let q = t["query"].as_str().unwrap();
            used.extend(check_flux(q, &sink.measurement, &fields).unwrap());
            for want in [
                "from(bucket: \"${bucket}\")",
                "r.window == \"${window}\"",
                "contains(value: r.cluster, set: ${cluster:json})",
                "contains(value: r.replica, set: ${replica:json})",
            ] {
                assert!(q.contains(want), "{}: {want} missing in {q}", p["title"]);
            }
        }
    }
    // Quantiles, the peak and the statuses are all on it.
    for f in [
        "p50_us",
        "p99_us",
        "max_us",
        "timeouts",
        "replication_stopped",
        "unreachable",
        "missing",
        "count",
    ] {
        assert!(used.contains(f), "no panel shows {f}: {used:?}");
    }
}

#[test]
fn flux_check_refuses_an_unknown_field_or_measurement() {
    let fields = readme_fields();
    let ok = r#"filter(fn: (r) => r._measurement == "replica_delay" and r._field == "p99_us")"#;
    assert_eq!(
        check_flux(ok, "replica_delay", &fields).unwrap(),
        ["p99_us"]
    );
    let bad_field = ok.replace("p99_us", "p95_us");
    assert!(check_flux(&bad_field, "replica_delay", &fields)
        .unwrap_err()
        .contains("p95_us"));
    let bad_set = r#"r._measurement == "replica_delay" and contains(value: r._field, set: ["timeouts", "stalls"])"#;
    assert!(check_flux(bad_set, "replica_delay", &fields)
        .unwrap_err()
        .contains("stalls"));
    let other = ok.replace("replica_delay", "delay");
    assert!(check_flux(&other, "replica_delay", &fields).is_err());
}

/// Every PromQL expression of the Prometheus dashboard, with its panel's title.
pub fn prometheus_dashboard_exprs() -> Vec<(String, String)> {
    let dash = dashboard("millilag-prometheus.json");
    let mut out = Vec::new();
    for p in panels(&dash) {
        for t in p["targets"].as_array().unwrap() {
            out.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for name in ["cluster", "replica"] {
        let v = variable(&dash, name);
        out.push((
            format!("${name}"),
            v["query"]["query"].as_str().unwrap().to_string(),
        ));
    }
    out
}

/// A dashboard expression as Grafana sends it with every cluster and replica selected; a
/// variable's `label_values(selector, label)` becomes the selector it asks for.
pub fn substitute_grafana_variables(expr: &str) -> String {
    let expr = match expr.strip_prefix("label_values(") {
        Some(inner) => inner.rsplit_once(',').map_or(inner, |(sel, _)| sel),
        None => expr,
    };
    expr.replace("$__rate_interval", "1m")
        .replace("$cluster", ".*")
        .replace("$replica", ".*")
}

#[test]
fn grafana_prometheus_dashboard_queries_millilag_metrics_by_cluster_and_replica() {
    let dash = dashboard("millilag-prometheus.json");
    check_datasource_variable(&dash, "prometheus", "prometheus.yml");
    let prov = read("compose/grafana/provisioning/datasources/prometheus.yml");
    assert!(prov.contains("url: http://prometheus:9090"), "{prov}");
    assert!(read("compose/docker-compose.yml").contains("\n  prometheus:\n"));
    for name in ["cluster", "replica"] {
        let v = variable(&dash, name);
        assert_eq!(v["allValue"], ".*");
        assert!(v["query"]["query"]
            .as_str()
            .unwrap()
            .contains("label_values(millilag_replica_lag_seconds"));
    }
    let exprs = prometheus_dashboard_exprs();
    for (title, e) in &exprs {
        assert!(
            !crate::prometheus::metric_names_in(e).is_empty(),
            "{title}: {e} names no millilag metric"
        );
        // Per-replica series are selected by both variables.
        let per_replica = e.contains("millilag_replica_lag_seconds{")
            || e.contains("millilag_reader_") && e.contains("replica");
        if per_replica && !title.starts_with('$') {
            assert!(
                e.contains("cluster=~\"$cluster\"") && e.contains("replica=~\"$replica\""),
                "{title}: {e}"
            );
        }
    }
    let all: String = exprs
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "max by (cluster, replica) (millilag_replica_lag_seconds{",
        "histogram_quantile(0.99, sum by (cluster, replica, le) (rate(millilag_reader_delay_seconds_bucket",
        "histogram_quantile(0.5,",
        "histogram_quantile(1,",
        "millilag_reader_measurements_total{cluster=~\"$cluster\", replica=~\"$replica\", status!=\"ok\"}",
        "millilag_writer_leader",
        "millilag_writer_interval_seconds",
        "millilag_reader_consumer_lag",
        "millilag_processor_sink_failures_total",
        "millilag_reader_dead_letters_total",
        "process_resident_memory_bytes",
    ] {
        assert!(all.contains(want), "no panel with {want}");
    }
}
