//! The accuracy benchmark: millilag (gtid-wait and poll readers) and pt-heartbeat (at its best
//! settings and at its defaults) measure the same replicas through the same schedule, in one
//! run, against a truth that owes nothing to either tool (truth.rs: triggers on the primary and
//! on each replica recording when every heartbeat row of either tool changes; one host, one
//! clock).
//!
//! One replication setup (MariaDB primary + 2 replicas), one phase per tool (phases.rs): the
//! millilag writer and `pt-heartbeat --update` run throughout, so every phase sees the same
//! replication load, and each measuring tool runs alone, as its own process and database user.
//! Output (in --out): accuracy.md (the report), summary.csv (its headline figures, for ranges
//! over runs), measurements.csv, pt_samples.csv, stalls.csv and lag_trace.csv; bench/plot.py
//! draws accuracy.png from them.
//!
//! Run with `scripts/bench` (builds release binaries, installs matplotlib if missing).

mod costs;
mod markdown;
mod phases;
mod procs;
mod report;
mod truth;

use anyhow::{bail, Context, Result};
use millilag_core::clock::now_us;
use millilag_core::events::{HeartbeatSet, Record, ReplicaDelay};
use millilag_harness::{Broker, Cluster};
use mysql_async::prelude::*;
use phases::{Ctx, Plan, Tool};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEFAULT_STALLS_MS: &[u64] = &[20, 50, 100, 200, 500, 1000, 2000];

pub struct Args {
    millilag: PathBuf,
    out: PathBuf,
    tools: Vec<Tool>,
    plan: Plan,
}

fn list<T: std::str::FromStr>(v: &str) -> Result<Vec<T>> {
    v.split(',')
        .map(|s| s.trim().parse().ok().context("a comma-separated list"))
        .collect()
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        millilag: PathBuf::from("target/release/millilag"),
        out: PathBuf::from("bench-out"),
        tools: Tool::ALL.to_vec(),
        plan: Plan {
            start: Duration::from_secs(3),
            steady: Duration::from_secs(8),
            stalls_ms: DEFAULT_STALLS_MS.to_vec(),
            repeats: 2,
            settle: Duration::from_millis(1000),
            durable_steady: Duration::from_secs(6),
            durable_stalls_ms: vec![50, 500],
            restart_gap: Duration::from_secs(2),
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--quick" {
            // For iterating on the bench itself: every section, shortened.
            let p = &mut a.plan;
            p.steady = Duration::from_secs(3);
            p.stalls_ms = vec![50, 500];
            p.durable_steady = Duration::from_secs(2);
            p.durable_stalls_ms = vec![100];
            continue;
        }
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        let secs = |v: String| -> Result<Duration> { Ok(Duration::from_secs_f64(v.parse()?)) };
        match flag.as_str() {
            "--millilag" => a.millilag = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--tools" => {
                a.tools = val()?
                    .split(',')
                    .map(|t| Tool::parse(t.trim()).with_context(|| format!("unknown tool {t}")))
                    .collect::<Result<_>>()?
            }
            "--stalls" => a.plan.stalls_ms = list(&val()?)?,
            "--durable-stalls" => a.plan.durable_stalls_ms = list(&val()?)?,
            "--repeats" => a.plan.repeats = val()?.parse()?,
            "--steady-s" => a.plan.steady = secs(val()?)?,
            "--durable-steady-s" => a.plan.durable_steady = secs(val()?)?,
            "--settle-ms" => a.plan.settle = Duration::from_millis(val()?.parse()?),
            other => bail!(
                "unknown flag {other}; flags: --millilag PATH --out DIR --tools gtid-wait,poll,pt-best,pt-default \
                 --stalls 20,50 --durable-stalls 50,500 --repeats N --steady-s S --durable-steady-s S --settle-ms MS --quick"
            ),
        }
    }
    Ok(a)
}

fn consumer(brokers: &str, name: &str, topic: &str) -> Result<StreamConsumer> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("bench-{name}-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    c.subscribe(&[topic])?;
    Ok(c)
}

/// What the writer announced: every heartbeat's seq and (interval, commit round trip).
pub type Heartbeats = Arc<Mutex<Vec<HeartbeatSet>>>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let bin = std::fs::canonicalize(&args.millilag).with_context(|| {
        format!(
            "{} (build it: cargo build --release --bin millilag)",
            args.millilag.display()
        )
    })?;
    let work = tempfile::Builder::new()
        .prefix("millilag-bench-")
        .tempdir()?;
    let started = std::time::Instant::now();
    let load_before = procs::loadavg();
    eprintln!("bench: starting MariaDB primary + 2 replicas and Tansu (load {load_before})");
    let (cluster, broker) = tokio::join!(Cluster::start(2), Broker::start());
    let (cluster, broker) = (cluster?, broker?);
    let prefix = format!("bench{}.", std::process::id());

    let mut p = cluster.primary.admin().await?;
    let users = ["mlg_writer", "pt_update"]
        .into_iter()
        .chain(Tool::ALL.iter().map(|t| t.user()));
    for u in users {
        p.query_drop(format!(
            "CREATE USER '{u}'@'127.0.0.1' IDENTIFIED BY '{pw}';
             GRANT ALL ON *.* TO '{u}'@'127.0.0.1'",
            pw = procs::PW
        ))
        .await?;
    }
    p.query_drop("CREATE DATABASE pt").await?;
    for r in &cluster.replicas {
        r.admin()
            .await?
            .query_drop("SET GLOBAL userstat = ON")
            .await?;
    }

    let writer_cfg = procs::config_toml(&cluster, &broker.brokers(), &prefix, "mlg_writer", "");
    let config = millilag_core::Config::from_toml_with_env(&writer_cfg, "bench", Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    use millilag_core::kafka::topics::*;
    millilag_core::kafka::ensure_topics(&config, &[HEARTBEAT_SET, REPLICA_DELAY, DEAD_LETTER])
        .await?;

    // Every replica-delay record and every heartbeat announcement, as they arrive.
    let records: phases::Records = Arc::default();
    let c = consumer(
        &broker.brokers(),
        "records",
        &format!("{prefix}replica-delay"),
    )?;
    let sink = records.clone();
    tokio::spawn(async move {
        while let Ok(m) = c.recv().await {
            if let Some(Ok(r)) = m.payload().map(ReplicaDelay::decode) {
                sink.lock().unwrap().push(r);
            }
        }
    });
    let heartbeats: Heartbeats = Arc::default();
    let c = consumer(
        &broker.brokers(),
        "heartbeats",
        &format!("{prefix}heartbeat-set"),
    )?;
    let sink = heartbeats.clone();
    tokio::spawn(async move {
        while let Ok(m) = c.recv().await {
            if let Some(Ok(h)) = m.payload().map(HeartbeatSet::decode) {
                sink.lock().unwrap().push(h);
            }
        }
    });

    let mut writer = procs::spawn_millilag(&bin, "writer", &writer_cfg, work.path(), "writer")?;
    cluster
        .install_truth("millilag", "heartbeat")
        .await
        .with_context(|| format!("truth triggers (writer log: {})", writer.log_tail(5)))?;
    let best = Tool::PtBest.pt_settings();
    let mut pt_update = procs::spawn_pt_update(cluster.primary.port, best, work.path())?;
    truth::install_pt_truth(&cluster)
        .await
        .with_context(|| format!("pt-heartbeat --update log: {}", pt_update.log_tail(5)))?;
    let writers_from = now_us();

    let ctx = Ctx {
        cluster: &cluster,
        brokers: broker.brokers(),
        prefix,
        bin: bin.clone(),
        dir: work.path().to_path_buf(),
        records: records.clone(),
        plan: args.plan,
    };
    eprintln!("bench: baseline (no measuring tool) and pty calibration");
    let baseline = ctx.baseline(Duration::from_secs(2)).await?;
    let pty = tokio::task::block_in_place(|| procs::calibrate_pty(2.0, work.path()))?;

    let mut phases = Vec::new();
    let mut since = writers_from;
    for &tool in &args.tools {
        if tool == Tool::PtDefault {
            // Most users run both sides at the defaults: a 1 s updater, too.
            pt_update.kill();
            pt_update = procs::spawn_pt_update(cluster.primary.port, None, work.path())?;
        }
        phases.push(ctx.run(tool, since).await?);
        if tool == Tool::PtDefault {
            pt_update.kill();
            pt_update = procs::spawn_pt_update(cluster.primary.port, best, work.path())?;
        }
        since = now_us();
    }
    pt_update.kill();
    // SIGTERM: the writer announces every heartbeat it committed before it exits.
    writer.signal(libc::SIGTERM);
    let _ = writer.wait();
    let last = cluster.heartbeat_seq().await?;
    millilag_harness::wait_for(
        "every heartbeat announced",
        Duration::from_secs(30),
        || async {
            heartbeats
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.seq == last)
                .then_some(())
        },
    )
    .await?;
    let truth = truth::read(&cluster, writers_from).await?;
    let load_after = procs::loadavg();

    let input = report::Input {
        phases: &phases,
        records: &records.lock().unwrap().clone(),
        heartbeats: &heartbeats.lock().unwrap().clone(),
        truth: &truth,
        addrs: cluster.replicas.iter().map(|r| r.address()).collect(),
        baseline: &baseline,
        pty: &pty,
        plan: &ctx.plan,
        load: format!("{load_before} before, {load_after} after"),
        secs: started.elapsed().as_secs_f64(),
    };
    let md = report::write(&input, &args.out)?;
    print!("{md}");
    if std::env::var_os("MILLILAG_BENCH_KEEP").is_some() {
        eprintln!("bench: keeping {}", work.path().display());
        let _ = work.keep();
    }
    Ok(())
}
