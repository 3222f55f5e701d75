//! The accuracy benchmark: millilag (gtid-wait and poll readers) and pt-heartbeat measure the
//! same replica through the same injected stalls, in one run, against the replica's own
//! apply-time truth (an AFTER trigger recording SYSDATE(6) per heartbeat; one host, one clock).
//!
//! One invocation, one replication setup, three phases with the same stall schedule: each tool
//! measures in its own phase, so on a 2-core box one tool's CPU is not another's noise. The
//! millilag writer (whose heartbeats carry the truth) and `pt-heartbeat --update` run throughout,
//! so every phase sees the same replication load. Every tool runs as its own process with its own
//! database user: the replica's USER_STATISTICS (userstat) counts each one's statements and
//! server CPU, and /proc gives each one's client CPU. Output (in --out): accuracy.md (the tables), measurements.csv (every
//! millilag measurement with its truth), pt_samples.csv (every pt-heartbeat reading) and
//! stalls.csv; bench/plot.py draws accuracy.png from them.
//!
//! Run with `scripts/bench` (builds release binaries, installs matplotlib if missing).

use anyhow::{bail, Context, Result};
use millilag_core::clock::now_us;
use millilag_core::events::{MeasureStatus, Record, ReplicaDelay};
use millilag_harness::process::Guard;
use millilag_harness::{free_port, Broker, Cluster};
use mysql_async::prelude::*;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEFAULT_STALLS_MS: &[u64] = &[20, 50, 100, 200, 500, 1000, 2000];
const READERS: [(&str, &str); 2] = [
    ("gtid-wait", "method = \"gtid-wait\""),
    // Poll at its most accurate: backing off to 2 ms at most while a heartbeat is late.
    ("poll", "method = \"poll\"\npoll_max_interval = \"2ms\""),
];
/// The replica the stalls are injected on.
const STALLED: usize = 0;
/// How long the writer runs alone at 1 ms at the end.
const WRITER_1MS_SECS: u64 = 5;

struct Args {
    millilag: PathBuf,
    out: PathBuf,
    stalls_ms: Vec<u64>,
    repeats: usize,
    settle: Duration,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        millilag: PathBuf::from("target/release/millilag"),
        out: PathBuf::from("bench-out"),
        stalls_ms: DEFAULT_STALLS_MS.to_vec(),
        repeats: 3,
        settle: Duration::from_millis(1500),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--millilag" => a.millilag = val()?.into(),
            "--out" => a.out = val()?.into(),
            "--repeats" => a.repeats = val()?.parse()?,
            "--stalls" => {
                a.stalls_ms = val()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--settle-ms" => a.settle = Duration::from_millis(val()?.parse()?),
            other => bail!("unknown flag {other}; flags: --millilag PATH --out DIR --stalls 20,50 --repeats N --settle-ms MS"),
        }
    }
    Ok(a)
}

/// User and system CPU seconds of a process, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz.max(1.0)
}

/// CPU seconds per thread group of a process (librdkafka's "rdk:*" threads, tokio workers,
/// the rest), to tell the client library's cost from ours.
fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let name = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')'))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default();
        let group = if name.starts_with("rdk:") {
            "librdkafka"
        } else if name.starts_with("tokio") {
            "tokio workers"
        } else {
            "other"
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *out.entry(group.to_string()).or_default() += ticks / hz.max(1.0);
    }
    out
}

fn config_toml(cluster: &Cluster, brokers: &str, prefix: &str, user: &str, reader: &str) -> String {
    let url = |port: u16| format!("mysql://{user}:bench-pw@127.0.0.1:{port}");
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"{}\"", url(r.port)))
        .collect();
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1
[[cluster]]
name = "bench"
primary = "{primary}"
replicas = [{replicas}]
[writer]
interval = "10ms"
listen = "127.0.0.1:{w}"
[reader]
listen = "127.0.0.1:{r}"
group = "bench-{user}"
reader_id = "{user}"
{reader}
[log]
level = "warn"
"#,
        primary = url(cluster.primary.port),
        replicas = replicas.join(", "),
        w = free_port(),
        r = free_port(),
    )
}

/// Until the collector holds every heartbeat the writer committed (the primary's row seq):
/// the writer announces all of them before it exits.
async fn wait_announced(
    cluster: &Cluster,
    commits: &Mutex<BTreeMap<i64, i64>>,
    what: &str,
) -> Result<()> {
    let last = cluster.heartbeat_seq().await?;
    millilag_harness::wait_for(what, Duration::from_secs(30), || async {
        commits.lock().unwrap().contains_key(&last).then_some(())
    })
    .await?;
    Ok(())
}

/// Heartbeats per second from the first to the last of (seq, commit time) in seq order.
fn heartbeat_rate<'a>(
    mut commits: impl DoubleEndedIterator<Item = (&'a i64, &'a i64)>,
) -> Option<f64> {
    match (commits.next(), commits.next_back()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => {
            Some((s1 - s0) as f64 * 1e6 / (t1 - t0) as f64)
        }
        _ => None,
    }
}

fn spawn_millilag(
    bin: &Path,
    service: &str,
    config: &str,
    dir: &Path,
    name: &str,
) -> Result<Guard> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg(service).arg("--config").arg(&path);
    Guard::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

/// pt-heartbeat --monitor readings: (local time of the line, lag in seconds).
type Samples = Arc<Mutex<Vec<(i64, f64)>>>;

/// Runs pt-heartbeat --monitor under a pty (it block-buffers into a pipe) and timestamps every
/// line as it arrives.
fn spawn_pt_monitor(port: u16, user: &str, log: &Path) -> Result<(std::process::Child, Samples)> {
    let dsn = format!("h=127.0.0.1,P={port},u={user},p=bench-pw");
    let cmd = format!(
        "pt-heartbeat --monitor -D pt --table heartbeat --master-server-id 1 --interval 0.01 --skew 0.001 --utc {dsn}"
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .stdin(Stdio::null())
        .spawn()
        .context("starting pt-heartbeat --monitor under script(1)")?;
    let out = child.stdout.take().context("pt-heartbeat stdout")?;
    let samples: Samples = Arc::default();
    let sink = samples.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let at = now_us();
            // "0.01s [  0.00s,  0.00s,  0.00s ]"
            if let Some(v) = line
                .trim()
                .split('s')
                .next()
                .and_then(|v| v.trim().parse::<f64>().ok())
            {
                sink.lock().unwrap().push((at, v));
            }
        }
    });
    Ok((child, samples))
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct UserStat {
    selects: i64,
    cpu_s: f64,
}

async fn user_stats(conn: &mut mysql_async::Conn) -> Result<BTreeMap<String, UserStat>> {
    // Prepared statements (MASTER_GTID_WAIT) count as OTHER_COMMANDS, text SELECTs as SELECT.
    let rows: Vec<(String, i64, f64)> = conn
        .query("SELECT USER, SELECT_COMMANDS + OTHER_COMMANDS, CPU_TIME FROM information_schema.USER_STATISTICS")
        .await?;
    Ok(rows
        .into_iter()
        .map(|(u, s, c)| {
            (
                u,
                UserStat {
                    selects: s,
                    cpu_s: c,
                },
            )
        })
        .collect())
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    from_us: i64,
    to_us: i64,
    stalls: Vec<(u64, millilag_harness::mariadb::Stall)>,
    client_cpu_s: f64,
    threads: BTreeMap<String, f64>,
    statements: f64,
    server_cpu_s: f64,
}

const PHASES: [&str; 3] = ["gtid-wait", "poll", "pt-heartbeat"];

fn reader_id(phase: &str) -> String {
    format!("mlg_{}", phase.split('-').next().unwrap_or(phase))
}

fn db_user(phase: &str) -> String {
    if phase == "pt-heartbeat" {
        "pt_monitor".into()
    } else {
        reader_id(phase)
    }
}

fn diff(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .map(|(k, v)| (k.clone(), v - a.get(k).copied().unwrap_or(0.0)))
        .collect()
}

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
    if std::env::var_os("MILLILAG_BENCH_KEEP").is_some() {
        eprintln!("bench: keeping {}", work.path().display());
    }
    eprintln!("bench: starting MariaDB primary + 2 replicas and Tansu");
    let (cluster, broker) = tokio::join!(Cluster::start(2), Broker::start());
    let (cluster, broker) = (cluster?, broker?);
    let prefix = format!("bench{}.", std::process::id());

    // One user per client, so the replica's userstat tells their statements and CPU apart.
    let mut p = cluster.primary.admin().await?;
    for u in [
        "mlg_writer",
        "mlg_gtid",
        "mlg_poll",
        "pt_update",
        "pt_monitor",
    ] {
        p.query_drop(format!(
            "CREATE USER '{u}'@'127.0.0.1' IDENTIFIED BY 'bench-pw';
             GRANT ALL ON *.* TO '{u}'@'127.0.0.1'"
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

    let writer_cfg = config_toml(&cluster, &broker.brokers(), &prefix, "mlg_writer", "");
    let config = millilag_core::Config::from_toml_with_env(&writer_cfg, "bench", Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    use millilag_core::kafka::topics::*;
    millilag_core::kafka::ensure_topics(&config, &[HEARTBEAT_SET, REPLICA_DELAY, DEAD_LETTER])
        .await?;

    // Every replica-delay record, as it arrives.
    let records: Arc<Mutex<Vec<ReplicaDelay>>> = Arc::default();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set(
            "group.id",
            format!("bench-collector-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    consumer.subscribe(&[&format!("{prefix}replica-delay")])?;
    let sink = records.clone();
    tokio::spawn(async move {
        while let Ok(m) = consumer.recv().await {
            if let Some(Ok(r)) = m.payload().map(ReplicaDelay::decode) {
                sink.lock().unwrap().push(r);
            }
        }
    });

    // Every heartbeat's commit time, from the writer's own announcements (the pt-heartbeat
    // phase has no reader records to take them from).
    let commits: Arc<Mutex<BTreeMap<i64, i64>>> = Arc::default();
    // (interval, commit round trip) of every heartbeat, for the writer's own figures.
    let writes: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let writes_sink = writes.clone();
    let hb_consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .set(
            "group.id",
            format!("bench-heartbeats-{}", std::process::id()),
        )
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    hb_consumer.subscribe(&[&format!("{prefix}heartbeat-set")])?;
    let sink = commits.clone();
    tokio::spawn(async move {
        while let Ok(m) = hb_consumer.recv().await {
            if let Some(Ok(h)) = m.payload().map(millilag_core::events::HeartbeatSet::decode) {
                sink.lock().unwrap().insert(h.seq, h.committed_at_us);
                writes_sink
                    .lock()
                    .unwrap()
                    .push((h.interval_us, h.commit_rtt_us));
            }
        }
    });
    let mut writer = spawn_millilag(&bin, "writer", &writer_cfg, work.path(), "writer")?;
    for i in 0..2 {
        cluster
            .install_truth_probe(i, "millilag", "heartbeat")
            .await
            .with_context(|| format!("truth probe (writer log: {})", writer.log_tail(5)))?;
    }
    let pt_dsn = format!(
        "h=127.0.0.1,P={},u=pt_update,p=bench-pw",
        cluster.primary.port
    );
    let mut pt_update = {
        let mut cmd = Command::new("pt-heartbeat");
        cmd.args([
            "--update",
            "--create-table",
            "-D",
            "pt",
            "--table",
            "heartbeat",
        ])
        .args(["--interval", "0.01", "--utc"])
        .arg(&pt_dsn);
        Guard::spawn("pt-update", cmd, &work.path().join("pt-update.log"))?
    };
    // pt-heartbeat --monitor exits if its table is not there yet: wait until the row that
    // pt-heartbeat --update keeps fresh on the primary is fresh on the replica.
    let replica = cluster.replica(STALLED);
    millilag_harness::wait_for("pt.heartbeat on the replica", Duration::from_secs(30), || async {
        let mut c = replica.admin().await.ok()?;
        let age: Option<f64> = c
            .query_first("SELECT TIMESTAMPDIFF(MICROSECOND, STR_TO_DATE(ts, '%Y-%m-%dT%H:%i:%s.%f'), UTC_TIMESTAMP(6)) / 1e6 FROM pt.heartbeat")
            .await
            .ok()
            .flatten();
        age.filter(|a| *a < 0.5).map(|_| ())
    })
    .await
    .with_context(|| format!("pt-heartbeat --update log: {}", pt_update.log_tail(5)))?;

    let mut phases = Vec::new();
    let mut pt_samples: Vec<(i64, f64)> = Vec::new();
    for phase in PHASES {
        eprintln!("bench: phase {phase}");
        // The tool of this phase, and how to tell it is measuring live heartbeats.
        let mut reader: Option<Guard> = None;
        let mut monitor: Option<(std::process::Child, Samples)> = None;
        if phase == "pt-heartbeat" {
            let log = work.path().join("pt-monitor.log");
            monitor = Some(spawn_pt_monitor(
                cluster.replica(STALLED).port,
                "pt_monitor",
                &log,
            )?);
        } else {
            let settings = READERS
                .iter()
                .find(|(n, _)| *n == phase)
                .map(|(_, s)| *s)
                .unwrap_or("");
            let cfg = config_toml(
                &cluster,
                &broker.brokers(),
                &prefix,
                &reader_id(phase),
                settings,
            );
            reader = Some(spawn_millilag(&bin, "reader", &cfg, work.path(), phase)?);
        }
        let pid = reader
            .as_ref()
            .map(|g| g.pid())
            .or(monitor.as_ref().map(|m| m.0.id()))
            .unwrap_or(0);
        let started = now_us();
        let id = reader_id(phase);
        millilag_harness::wait_for(
            &format!("{phase} warmed up"),
            Duration::from_secs(60),
            || async {
                let live = match &monitor {
                    Some((_, s)) => s
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|(at, _)| *at > started)
                        .count(),
                    None => records
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|r| r.reader_id == id && r.committed_at_us > started)
                        .count(),
                };
                (live >= 20).then_some(())
            },
        )
        .await
        .with_context(|| {
            format!(
                "{phase}: log {}",
                reader.as_ref().map(|g| g.log_tail(5)).unwrap_or_default()
            )
        })?;
        tokio::time::sleep(Duration::from_secs(1)).await;

        let mut c = cluster.replica(STALLED).admin().await?;
        let user = db_user(phase);
        let s0 = user_stats(&mut c).await?;
        let (cpu0, threads0) = (cpu_seconds(pid), cpu_by_thread(pid));
        let from_us = now_us();
        let mut stalls = Vec::new();
        for round in 0..args.repeats {
            for &ms in &args.stalls_ms {
                eprintln!("bench:   round {} stall {ms} ms", round + 1);
                stalls.push((ms, cluster.stall(STALLED, Duration::from_millis(ms)).await?));
                tokio::time::sleep(args.settle).await;
            }
        }
        let to_us = now_us();
        let (cpu1, threads1) = (cpu_seconds(pid), cpu_by_thread(pid));
        let s1 = user_stats(&mut c).await?;
        let (statements, server_cpu_s) = match (s0.get(&user), s1.get(&user)) {
            (Some(a), Some(b)) => ((b.selects - a.selects) as f64, b.cpu_s - a.cpu_s),
            (None, Some(b)) => (b.selects as f64, b.cpu_s),
            _ => (0.0, 0.0),
        };
        if let Some(mut g) = reader {
            // Every heartbeat of the phase measured on both replicas before the reader stops.
            let last = cluster.heartbeat_seq().await?;
            millilag_harness::wait_for(
                "the phase's measurements",
                Duration::from_secs(60),
                || async {
                    let n = records
                        .lock()
                        .unwrap()
                        .iter()
                        .filter(|r| r.reader_id == id && r.seq >= last)
                        .count();
                    (n >= 2).then_some(())
                },
            )
            .await?;
            g.kill();
        }
        if let Some((mut child, samples)) = monitor {
            let _ = child.kill();
            let _ = child.wait();
            pt_samples.extend(
                samples
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(at, _)| *at >= from_us && *at <= to_us),
            );
        }
        phases.push(Phase {
            name: phase,
            from_us,
            to_us,
            stalls,
            client_cpu_s: cpu1 - cpu0,
            threads: diff(&threads0, &threads1),
            statements,
            server_cpu_s,
        });
    }
    pt_update.kill();
    // SIGTERM: the writer announces every heartbeat it committed before it exits.
    writer.signal(libc::SIGTERM);
    let _ = writer.wait();

    let truth = [cluster.truth(0, 0).await?, cluster.truth(1, 0).await?];
    let addrs: Vec<String> = cluster.replicas.iter().map(|r| r.address()).collect();
    let records = records.lock().unwrap().clone();
    // Until the collector has every heartbeat up to the writer's last.
    wait_announced(&cluster, &commits, "heartbeat-set collected").await?;
    let seq_commit: BTreeMap<i64, i64> = commits.lock().unwrap().clone();

    // ---- the writer alone at 1 ms (the same primary, nothing else writing) ----
    eprintln!("bench: writer at 1 ms for {} s", WRITER_1MS_SECS);
    let fast_cfg = writer_cfg.replace("interval = \"10ms\"", "interval = \"1ms\"");
    let seq_before_fast = seq_commit.keys().next_back().copied().unwrap_or(0);
    let mut fast = spawn_millilag(&bin, "writer", &fast_cfg, work.path(), "writer-1ms")?;
    let fast_cpu0 = cpu_seconds(fast.pid());
    tokio::time::sleep(Duration::from_secs(WRITER_1MS_SECS)).await;
    let fast_cpu = cpu_seconds(fast.pid()) - fast_cpu0;
    fast.signal(libc::SIGTERM);
    let _ = fast.wait();
    wait_announced(&cluster, &commits, "1 ms heartbeat-set collected").await?;
    let fast_span = heartbeat_rate(commits.lock().unwrap().range(seq_before_fast + 1..));
    let applied_stalled: BTreeMap<i64, i64> =
        truth[STALLED].iter().map(|(s, a)| (*a, *s)).collect();
    let true_delay = |replica: usize, seq: i64| -> Option<i64> {
        Some(truth[replica].get(&seq)? - seq_commit.get(&seq)?)
    };

    // ---- per heartbeat (millilag) and per reading (pt-heartbeat) ----
    let mut csv = String::from("method,replica,seq,committed_at_us,true_us,measured_us,uncertainty_us,upper_bound,status\n");
    let mut rows: BTreeMap<&str, Vec<(i64, i64, bool)>> = BTreeMap::new();
    let mut counts: BTreeMap<&str, (usize, i64)> = BTreeMap::new();
    for ph in phases.iter().filter(|p| p.name != "pt-heartbeat") {
        let id = reader_id(ph.name);
        for r in records.iter().filter(|r| {
            r.reader_id == id && r.committed_at_us >= ph.from_us && r.committed_at_us <= ph.to_us
        }) {
            let c = counts.entry(ph.name).or_default();
            c.0 += 1;
            c.1 += r.queries as i64;
            let Some(i) = addrs.iter().position(|a| *a == r.replica) else {
                continue;
            };
            let Some(t) = true_delay(i, r.seq) else {
                continue;
            };
            let _ = writeln!(
                csv,
                "{},{},{},{},{t},{},{},{},{}",
                ph.name,
                i + 1,
                r.seq,
                r.committed_at_us,
                r.delay_us,
                r.uncertainty_us,
                r.upper_bound,
                r.status.as_str()
            );
            if r.status == MeasureStatus::Ok {
                rows.entry(ph.name)
                    .or_default()
                    .push((t, r.delay_us, r.upper_bound));
            }
        }
    }
    std::fs::write(args.out.join("measurements.csv"), csv)?;
    // pt-heartbeat's readings against the replica's true lag at that moment (its own
    // definition: now minus the commit time of the newest heartbeat applied by then).
    let mut pt_csv = String::from("local_us,lag_s,true_lag_us\n");
    let mut pt_errs = Vec::new();
    for (at, v) in &pt_samples {
        let Some((_, seq)) = applied_stalled.range(..=*at).next_back() else {
            continue;
        };
        let Some(c) = seq_commit.get(seq) else {
            continue;
        };
        let true_lag = at - c;
        let _ = writeln!(pt_csv, "{at},{v},{true_lag}");
        pt_errs.push(((v * 1e6) as i64 - true_lag).abs());
    }
    std::fs::write(args.out.join("pt_samples.csv"), pt_csv)?;

    // ---- stall peaks: the figure all three tools report ----
    let mut stall_csv = String::from("tool,stall_ms,true_peak_us,measured_peak_us\n");
    let mut peaks: BTreeMap<(&str, u64), Vec<(i64, i64)>> = BTreeMap::new();
    for ph in &phases {
        let id = reader_id(ph.name);
        for (ms, s) in &ph.stalls {
            let in_stall: Vec<i64> = seq_commit
                .iter()
                .filter(|(_, c)| **c >= s.stopped_at_us - 5_000 && **c <= s.started_at_us)
                .map(|(s, _)| *s)
                .collect();
            let true_peak = in_stall
                .iter()
                .filter_map(|q| true_delay(STALLED, *q))
                .max()
                .unwrap_or(0);
            let measured = if ph.name == "pt-heartbeat" {
                pt_samples
                    .iter()
                    .filter(|(at, _)| *at >= s.stopped_at_us && *at <= s.started_at_us + 300_000)
                    .map(|(_, v)| (v * 1e6) as i64)
                    .max()
                    .unwrap_or(0)
            } else {
                records
                    .iter()
                    .filter(|r| {
                        r.reader_id == id
                            && r.replica == addrs[STALLED]
                            && in_stall.contains(&r.seq)
                    })
                    .map(|r| r.delay_us)
                    .max()
                    .unwrap_or(0)
            };
            let _ = writeln!(stall_csv, "{},{ms},{true_peak},{measured}", ph.name);
            peaks
                .entry((ph.name, *ms))
                .or_default()
                .push((true_peak, measured));
        }
    }
    std::fs::write(args.out.join("stalls.csv"), stall_csv)?;

    // ---- the report ----
    let mut md = String::new();
    let _ = writeln!(md, "# millilag accuracy benchmark\n");
    let _ = writeln!(
        md,
        "One invocation (`scripts/bench`): MariaDB 10.11 primary + 2 replicas (GTID replication), millilag writer at 10 ms and `pt-heartbeat --update --interval 0.01` throughout; three phases, one measuring tool each, each with stalls of {:?} ms x{} on replica 1 (`STOP SLAVE SQL_THREAD`). Truth: each replica's apply time of each heartbeat (AFTER trigger, `SYSDATE(6)`), same host, one clock. Release builds, each tool its own process and DB user.\n",
        args.stalls_ms, args.repeats
    );
    let _ = writeln!(
        md,
        "## Accuracy: every measurement vs the truth (abs error)\n"
    );
    let _ = writeln!(md, "| tool | measurements | exact (not upper bound) | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|---|");
    for ph in &phases {
        let mut errs: Vec<i64>;
        let (n, exact) = if ph.name == "pt-heartbeat" {
            errs = pt_errs.clone();
            (pt_errs.len(), "-".to_string())
        } else {
            let v = rows.get(ph.name).cloned().unwrap_or_default();
            errs = v.iter().map(|(t, m, _)| (m - t).abs()).collect();
            (
                v.len(),
                v.iter().filter(|(_, _, ub)| !ub).count().to_string(),
            )
        };
        errs.sort();
        let label = if ph.name == "pt-heartbeat" {
            "pt-heartbeat --monitor --interval 0.01 (readings vs true lag)".to_string()
        } else {
            format!("millilag {} (both replicas)", ph.name)
        };
        let _ = writeln!(
            md,
            "| {label} | {n} | {exact} | {} us | {} us | {} us | {} us |",
            percentile(&errs, 0.5),
            percentile(&errs, 0.9),
            percentile(&errs, 0.99),
            errs.last().copied().unwrap_or(0)
        );
    }
    let _ = writeln!(md, "\n## Stall peaks on replica 1 (the delay each tool reported for the stall vs the true peak)\n");
    let _ = writeln!(md, "| stall | true peak | millilag gtid-wait | millilag poll | pt-heartbeat |\n|---|---|---|---|---|");
    let mut per_tool_err: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for ms in &args.stalls_ms {
        let mut cells = Vec::new();
        let mut truths = Vec::new();
        for tool in PHASES {
            let v = peaks.get(&(tool, *ms)).cloned().unwrap_or_default();
            let worst = v.iter().map(|(t, m)| (m - t).abs()).max().unwrap_or(0);
            per_tool_err
                .entry(tool)
                .or_default()
                .extend(v.iter().map(|(t, m)| (m - t).abs()));
            truths.extend(v.iter().map(|(t, _)| *t));
            let mean = v.iter().map(|(_, m)| *m).sum::<i64>() / v.len().max(1) as i64;
            cells.push(format!(
                "{:.1} ms (worst error {:.2} ms)",
                mean as f64 / 1e3,
                worst as f64 / 1e3
            ));
        }
        let true_mean = truths.iter().sum::<i64>() / truths.len().max(1) as i64;
        let _ = writeln!(
            md,
            "| {ms} ms | {:.1} ms | {} |",
            true_mean as f64 / 1e3,
            cells.join(" | ")
        );
    }
    let _ = writeln!(
        md,
        "\n| tool | stall-peak abs error p50 | p99 | max |\n|---|---|---|---|"
    );
    let mut p99s = BTreeMap::new();
    for tool in PHASES {
        let mut e = per_tool_err.get(tool).cloned().unwrap_or_default();
        e.sort();
        p99s.insert(tool, percentile(&e, 0.99));
        let _ = writeln!(
            md,
            "| {tool} | {} us | {} us | {} us |",
            percentile(&e, 0.5),
            percentile(&e, 0.99),
            e.last().copied().unwrap_or(0)
        );
    }
    let ratio = p99s["pt-heartbeat"] as f64 / p99s["gtid-wait"].max(1) as f64;
    let _ = writeln!(
        md,
        "\nStall-peak p99 error, pt-heartbeat / millilag gtid-wait: {ratio:.1}x\n"
    );
    let _ = writeln!(md, "## Writer\n");
    let _ = writeln!(md, "| configured interval | heartbeats/s achieved | commit round trip p50 | p99 | max | writer CPU |\n|---|---|---|---|---|---|");
    let writes = writes.lock().unwrap().clone();
    for (interval_us, rate) in [
        (10_000, heartbeat_rate(seq_commit.iter())),
        (1_000, fast_span),
    ] {
        let mut rtts: Vec<i64> = writes
            .iter()
            .filter(|(i, _)| *i == interval_us)
            .map(|(_, r)| *r)
            .collect();
        rtts.sort();
        let cpu = if interval_us == 1_000 {
            format!("{:.1} ms/s", fast_cpu * 1e3 / WRITER_1MS_SECS as f64)
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            md,
            "| {} ms | {} | {} us | {} us | {} us | {cpu} |",
            interval_us / 1000,
            rate.map_or("-".to_string(), |r| format!("{r:.1}")),
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.99),
            rtts.last().copied().unwrap_or(0),
        );
    }
    let _ = writeln!(md, "\nThe 10 ms writer runs beside everything else in the benchmark (pt-heartbeat's updates included); the 1 ms one alone, for {WRITER_1MS_SECS} s, after it.\n");
    let _ = writeln!(md, "## Cost\n");
    let _ = writeln!(md, "| tool | statements/s on the replica (its userstat) | replica server CPU | measurements/s | client CPU per measurement | client CPU by thread (ms/s) |\n|---|---|---|---|---|---|");
    for ph in &phases {
        let secs = (ph.to_us - ph.from_us) as f64 / 1e6;
        let n = if ph.name == "pt-heartbeat" {
            pt_samples.len()
        } else {
            counts.get(ph.name).map(|c| c.0).unwrap_or(0)
        }
        .max(1) as f64;
        let threads: Vec<String> = ph
            .threads
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", v * 1e3 / secs))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.1} ms/s | {:.0} | {:.1} us | {} |",
            ph.name,
            ph.statements / secs,
            ph.server_cpu_s * 1e3 / secs,
            n / secs,
            ph.client_cpu_s * 1e6 / n,
            threads.join(", ")
        );
    }
    for ph in phases.iter().filter(|p| p.name != "pt-heartbeat") {
        if let Some((n, q)) = counts.get(ph.name) {
            let _ = writeln!(
                md,
                "\nmillilag {}: {:.2} queries per heartbeat per replica (each record's own count).",
                ph.name,
                *q as f64 / (*n).max(1) as f64
            );
        }
    }
    std::fs::write(args.out.join("accuracy.md"), &md)?;
    print!("{md}");
    if std::env::var_os("MILLILAG_BENCH_KEEP").is_some() {
        let _ = work.keep();
    }
    Ok(())
}
