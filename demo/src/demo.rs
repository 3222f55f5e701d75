//! The demo itself: the whole pipeline on local services, with live per-replica delays.
//!
//! Starts a MariaDB primary and two replicas (GTID replication), Tansu (the Kafka-protocol
//! broker) and VictoriaMetrics on free 127.0.0.1 ports, runs the writer, reader and processor
//! in this process, stalls replica 1's SQL thread now and then (once for longer than the
//! reader's 2 s timeout), and prints every 1 s window the processor publishes, the replica's
//! live lag while it lags, and alert transitions. Ctrl-C stops everything it started (the
//! services are killed by PID).

use anyhow::Context;
use millilag_core::events::{Alert, AlertState, DelayWindow, Record};
use millilag_core::kafka::topics;
use millilag_core::shutdown::Shutdown;
use millilag_core::Config;
use millilag_harness::victoria::Victoria;
use millilag_harness::{free_port, Broker, Cluster};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::Duration;

/// Stall lengths the injector cycles through (replica 1 only; replica 2 stays healthy). The
/// second is longer than the reader's timeout: the lag and the alert show while it lasts.
const STALLS_MS: [u64; 5] = [600, 5_000, 150, 1_500, 80];
/// Quiet time between stalls.
const STALL_EVERY: Duration = Duration::from_secs(6);

/// How long each service gets to flush and commit when the demo stops.
const SERVICE_STOP: Duration = Duration::from_secs(10);

pub async fn run(mut shutdown: Shutdown, run_for: Option<Duration>) -> anyhow::Result<()> {
    println!("millilag demo: starting a MariaDB primary + 2 replicas, Tansu and VictoriaMetrics on 127.0.0.1 ...");
    let (cluster, broker, vm) = tokio::join!(Cluster::start(2), Broker::start(), Victoria::start());
    let cluster = cluster.context("starting MariaDB (run scripts/setup)")?;
    let broker = broker.context("starting Tansu (run scripts/setup)")?;
    let vm = vm.context("starting VictoriaMetrics (run scripts/setup)")?;
    let names: BTreeMap<String, String> = cluster
        .replicas
        .iter()
        .map(|r| (r.address(), r.name.clone()))
        .collect();
    let config =
        Config::from_toml_with_env(&demo_config(&cluster, &broker, &vm), "demo", Vec::new())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    use topics::*;
    millilag_core::kafka::ensure_topics(
        &config,
        &[
            HEARTBEAT_SET,
            REPLICA_DELAY,
            DELAY_WINDOW,
            ALERT,
            ALERT_STATE,
            PROCESSOR_STATE,
            DEAD_LETTER,
        ],
    )
    .await?;

    println!("  primary   {}", cluster.primary.address());
    for r in &cluster.replicas {
        println!("  {:<9} {}", r.name, r.address());
    }
    println!("  broker    {}", broker.brokers());
    println!(
        "  graphs    http://127.0.0.1:{}/vmui  (query e.g. replica_delay_p99_us{{window=\"1s\"}} or replica_delay_max_us)",
        vm.http_port
    );
    println!("Writer (10 ms heartbeats), reader (GTID waits) and processor (1s/10s/1m windows) running; replica1 gets stalled every {}s. Ctrl-C stops.\n", STALL_EVERY.as_secs());

    // The services get a token of their own: on Ctrl-C or at --for's end they stop cleanly
    // (flush, commit) while the databases and the broker are still up, and only then go.
    let (stop_services, services_shutdown) = millilag_core::shutdown::shutdown_pair();
    let services = [
        tokio::spawn(millilag_producers::writer::run(
            config.clone(),
            services_shutdown.clone(),
        )),
        tokio::spawn(millilag_processors::reader::run(
            config.clone(),
            services_shutdown.clone(),
        )),
        tokio::spawn(millilag_processors::processor::run(
            config.clone(),
            services_shutdown.clone(),
        )),
    ];
    let display = tokio::spawn(display(
        config.clone(),
        names.clone(),
        services_shutdown.clone(),
    ));
    let lag = tokio::spawn(show_live_lag(
        config.reader.listen,
        names,
        services_shutdown.clone(),
    ));
    let injector = {
        let mut stop = services_shutdown.clone();
        let cluster = &cluster;
        async move {
            let mut i = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(STALL_EVERY) => {}
                    _ = stop.wait() => return,
                }
                let ms = STALLS_MS[i % STALLS_MS.len()];
                i += 1;
                println!("          >>> stalling replica1's SQL thread for {ms} ms");
                match cluster.stall(0, Duration::from_millis(ms)).await {
                    Ok(_) => println!("          <<< replica1's SQL thread runs again"),
                    Err(e) => println!("          stall failed: {e:#}"),
                }
            }
        }
    };
    let deadline = async {
        match run_for {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = injector => {}
        _ = deadline => {}
        _ = shutdown.wait() => {}
    }
    println!("\nmillilag demo: stopping the services ...");
    stop_services.trigger();
    for mut s in services {
        if tokio::time::timeout(SERVICE_STOP, &mut s).await.is_err() {
            s.abort();
        }
    }
    display.abort();
    lag.abort();
    drop(cluster);
    drop(vm);
    drop(broker);
    println!("millilag demo: stopped; every service it started is gone.");
    Ok(())
}

fn demo_config(cluster: &Cluster, broker: &Broker, vm: &Victoria) -> String {
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"{}\"", r.url()))
        .collect();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "millilag."
partitions = 1

[[cluster]]
name = "demo"
primary = "{primary}"
replicas = [{replicas}]

[writer]
interval = "10ms"
listen = "127.0.0.1:{w}"

[reader]
method = "auto"
timeout = "2s"
group = "millilag-demo-reader"
listen = "127.0.0.1:{r}"

[processor]
windows = ["1s", "10s", "1m"]
allowed_lateness = "500ms"
group = "millilag-demo-processor"
listen = "127.0.0.1:{p}"

[[sink.influxdb]]
url = "http://127.0.0.1:{vm}"
api = "v1"
database = "millilag"

[[alert]]
name = "replica-lag-high"
when = "max > 300ms"
window = "1s"
severity = "warning"

[log]
level = "warn"
"#,
        brokers = broker.brokers(),
        primary = cluster.primary.url(),
        replicas = replicas.join(", "),
        w = free_port(),
        r = free_port(),
        p = free_port(),
        vm = vm.http_port,
    )
}

/// Prints each 1 s window (and alert transitions) as the processor publishes them.
async fn display(config: Config, names: BTreeMap<String, String>, mut shutdown: Shutdown) {
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &config.kafka.brokers)
        .set(
            "group.id",
            format!("millilag-demo-display-{}", std::process::id()),
        )
        .set("auto.offset.reset", "latest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            println!("display: {e}");
            return;
        }
    };
    let windows = config.topic(topics::DELAY_WINDOW);
    let alerts = config.topic(topics::ALERT);
    if let Err(e) = consumer.subscribe(&[&windows, &alerts]) {
        println!("display: {e}");
        return;
    }
    println!(
        "{:<10}{:<10}{:>10}{:>10}{:>10}{:>12}{:>9}  status",
        "window", "replica", "p50", "p99", "max", "heartbeats", "missing"
    );
    let ms = |v: Option<i64>| {
        v.map(|u| format!("{:.1} ms", u as f64 / 1e3))
            .unwrap_or_else(|| "-".into())
    };
    loop {
        let msg = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.wait() => return,
        };
        let Ok(m) = msg else { continue };
        let Some(payload) = m.payload() else { continue };
        if m.topic() == windows {
            let Ok(w) = DelayWindow::decode(payload) else {
                continue;
            };
            if w.window_us != 1_000_000 {
                continue;
            }
            let when = chrono_free_hms(w.window_start_us);
            let status = if w.unreachable > 0 {
                "replica unreachable"
            } else if w.replication_stopped > 0 {
                "replication stopped"
            } else if w.timeouts > 0 {
                "timeouts"
            } else if w.count > 0 && w.upper_bounds == w.count {
                // The reader looked late (its start): at most this, not a lag.
                "upper bounds (reader catching up)"
            } else if w.max_us.unwrap_or(0) > 100_000 {
                "LAGGING"
            } else {
                "ok"
            };
            let name = names.get(&w.replica).cloned().unwrap_or(w.replica.clone());
            println!(
                "{when:<10}{name:<10}{:>10}{:>10}{:>10}{:>12}{:>9}  {status}",
                ms(w.p50_us),
                ms(w.p99_us),
                ms(w.max_us),
                w.count,
                w.missing
            );
        } else if let Ok(a) = Alert::decode(payload) {
            let name = names.get(&a.replica).cloned().unwrap_or(a.replica.clone());
            let state = match a.state {
                AlertState::Firing => "FIRING",
                AlertState::Resolved => "resolved",
            };
            println!(
                "          !!! alert {} {state} on {name}: {} (value {:.1} ms)",
                a.rule,
                a.expression,
                a.value / 1e3
            );
        }
    }
}

/// Every second, each replica's live lag from the reader's gauge while it is over 100 ms: how
/// long the oldest heartbeat it does not show has been waiting (it grows during a stall).
async fn show_live_lag(
    reader: std::net::SocketAddr,
    names: BTreeMap<String, String>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait() => return,
        }
        let Some(text) = millilag_harness::scrape::metrics(&reader.to_string()).await else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("millilag_replica_lag_seconds{") else {
                continue;
            };
            let (labels, value) = rest.split_once("} ").unwrap_or((rest, "0"));
            let lag: f64 = value.trim().parse().unwrap_or(0.0);
            let replica = labels
                .split("replica=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_default();
            if lag > 0.1 {
                let name = names.get(replica).map_or(replica, |n| n.as_str());
                println!("          ... {name} live lag {lag:.2} s (the oldest heartbeat it does not show yet)");
            }
        }
    }
}

/// HH:MM:SS (UTC) of a microsecond Unix time, without a date crate.
fn chrono_free_hms(us: i64) -> String {
    let s = us.div_euclid(1_000_000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}
