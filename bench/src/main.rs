//! The accuracy benchmark: millilag (gtid-wait and poll readers) and pt-heartbeat measure the
//! same replica through the same injected stalls, in one run, against the replica's own
//! apply-time truth (an AFTER trigger recording SYSDATE(6) per heartbeat; one host, one clock).
//!
//! Every tool runs as its own process with its own database user, so the replica's
//! USER_STATISTICS (userstat) counts each one's queries and server CPU, and /proc gives each
//! one's client CPU. Output (in --out): accuracy.md (the tables), measurements.csv (every
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
    // MILLILAG_BENCH_KEEP=1 keeps the services' logs and configs for a look afterwards.
    let work_path = work.path().to_path_buf();
    let _keep = std::env::var_os("MILLILAG_BENCH_KEEP").map(|_| {
        eprintln!("bench: keeping {}", work_path.display());
    });
    eprintln!("bench: starting MariaDB primary + 2 replicas and Tansu");
    let (cluster, broker) = tokio::join!(Cluster::start(2), Broker::start());
    let (cluster, broker) = (cluster?, broker?);
    let prefix = format!("bench{}.", std::process::id());

    // One user per client, so the replica's userstat tells their queries and CPU apart.
    let users = [
        "mlg_writer",
        "mlg_gtid",
        "mlg_poll",
        "pt_update",
        "pt_monitor",
    ];
    let mut p = cluster.primary.admin().await?;
    for u in users {
        p.query_drop(format!(
            "CREATE USER '{u}'@'127.0.0.1' IDENTIFIED BY 'bench-pw';
             GRANT ALL ON *.* TO '{u}'@'127.0.0.1'"
        ))
        .await?;
    }
    p.query_drop("CREATE DATABASE pt").await?;
    for r in &cluster.replicas {
        let mut c = r.admin().await?;
        c.query_drop("SET GLOBAL userstat = ON").await?;
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
        .set("fetch.wait.max.ms", "50")
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
            "--interval",
            "0.01",
            "--utc",
        ])
        .arg(&pt_dsn);
        Guard::spawn("pt-update", cmd, &work.path().join("pt-update.log"))?
    };
    let mut readers = Vec::new();
    for (name, settings) in READERS {
        let user = format!("mlg_{}", name.split('-').next().unwrap());
        let cfg = config_toml(&cluster, &broker.brokers(), &prefix, &user, settings);
        let g = spawn_millilag(&bin, "reader", &cfg, work.path(), name)?;
        readers.push((name, user, g));
    }
    // pt-heartbeat --monitor exits if its table is not there yet: wait until the row that
    // pt-heartbeat --update keeps fresh on the primary is fresh on the replica.
    {
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
    }
    let monitor_log = work.path().join("pt-monitor.log");
    let (mut pt_monitor, pt_samples) =
        spawn_pt_monitor(cluster.replica(STALLED).port, "pt_monitor", &monitor_log)?;

    // Warm up: every reader measuring live heartbeats, pt-heartbeat printing.
    let started = now_us();
    millilag_harness::wait_for(
        "readers and pt-heartbeat warmed up",
        Duration::from_secs(60),
        || async {
            let live = |id: &str| {
                records
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r.reader_id == id && r.committed_at_us > started)
                    .count()
            };
            let ok = READERS
                .iter()
                .all(|(n, _)| live(&format!("mlg_{}", n.split('-').next().unwrap())) >= 20)
                && pt_samples.lock().unwrap().len() >= 20;
            ok.then_some(())
        },
    )
    .await
    .with_context(|| {
        let rs = records.lock().unwrap();
        let ids: BTreeMap<String, usize> = rs.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.reader_id.clone()).or_default() += 1;
            m
        });
        format!(
            "warm-up: records by reader {ids:?}, {} pt-heartbeat readings ({}); logs:\n{}\n{}\n{}",
            pt_samples.lock().unwrap().len(),
            std::fs::read_to_string(&monitor_log).unwrap_or_default(),
            writer.log_tail(5),
            readers[0].2.log_tail(5),
            pt_update.log_tail(5)
        )
    })?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut stats0 = BTreeMap::new();
    for (i, r) in cluster.replicas.iter().enumerate() {
        let mut c = r.admin().await?;
        stats0.insert(i, user_stats(&mut c).await?);
    }
    let cpu0: BTreeMap<String, f64> = readers
        .iter()
        .map(|(n, _, g)| (n.to_string(), cpu_seconds(g.pid())))
        .chain([("pt-monitor".to_string(), cpu_seconds(pt_monitor.id()))])
        .collect();
    let threads0: BTreeMap<&str, BTreeMap<String, f64>> = readers
        .iter()
        .map(|(n, _, g)| (*n, cpu_by_thread(g.pid())))
        .collect();
    let measure_from = now_us();
    let mut stalls = Vec::new();
    for round in 0..args.repeats {
        for &ms in &args.stalls_ms {
            eprintln!("bench: round {} stall {ms} ms", round + 1);
            let s = cluster.stall(STALLED, Duration::from_millis(ms)).await?;
            stalls.push((ms, s));
            tokio::time::sleep(args.settle).await;
        }
    }
    let measure_to = now_us();
    let threads1: BTreeMap<&str, BTreeMap<String, f64>> = readers
        .iter()
        .map(|(n, _, g)| (*n, cpu_by_thread(g.pid())))
        .collect();
    let cpu1: BTreeMap<String, f64> = readers
        .iter()
        .map(|(n, _, g)| (n.to_string(), cpu_seconds(g.pid())))
        .chain([("pt-monitor".to_string(), cpu_seconds(pt_monitor.id()))])
        .collect();
    let mut stats1 = BTreeMap::new();
    for (i, r) in cluster.replicas.iter().enumerate() {
        let mut c = r.admin().await?;
        stats1.insert(i, user_stats(&mut c).await?);
    }
    // Every heartbeat of the window measured by both readers on both replicas.
    let last_seq = {
        let mut c = cluster.primary.admin().await?;
        let s: Option<i64> = c
            .query_first("SELECT CAST(seq AS SIGNED) FROM millilag.heartbeat")
            .await?;
        s.unwrap_or(0)
    };
    millilag_harness::wait_for("all measurements", Duration::from_secs(60), || async {
        let rs = records.lock().unwrap();
        let done = READERS.iter().all(|(n, _)| {
            let id = format!("mlg_{}", n.split('-').next().unwrap());
            rs.iter()
                .filter(|r| r.reader_id == id && r.seq >= last_seq)
                .count()
                >= 2
        });
        done.then_some(())
    })
    .await?;
    eprintln!(
        "bench: pt-heartbeat --update log: {}",
        pt_update.log_tail(5)
    );
    let _ = pt_monitor.kill();
    let _ = pt_monitor.wait();
    pt_update.kill();
    for (_, _, g) in readers.iter_mut() {
        g.kill();
    }
    writer.kill();

    let truth = [cluster.truth(0, 0).await?, cluster.truth(1, 0).await?];
    let addrs: Vec<String> = cluster.replicas.iter().map(|r| r.address()).collect();
    let records = records.lock().unwrap().clone();
    let samples = pt_samples.lock().unwrap().clone();
    let duration_s = (measure_to - measure_from) as f64 / 1e6;

    // ---- per-measurement accuracy (millilag) ----
    let mut csv = String::from("method,replica,seq,committed_at_us,true_us,measured_us,uncertainty_us,upper_bound,status\n");
    let mut per_method: BTreeMap<&str, Vec<(i64, i64, bool)>> = BTreeMap::new();
    let mut queries: BTreeMap<&str, i64> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        if r.committed_at_us < measure_from || r.committed_at_us > measure_to {
            continue;
        }
        let Some((method, _)) = READERS
            .iter()
            .find(|(n, _)| r.reader_id == format!("mlg_{}", n.split('-').next().unwrap()))
        else {
            continue;
        };
        *queries.entry(method).or_default() += r.queries as i64;
        *counts.entry(method).or_default() += 1;
        let Some(i) = addrs.iter().position(|a| *a == r.replica) else {
            continue;
        };
        let Some(applied) = truth[i].get(&r.seq) else {
            continue;
        };
        let t = applied - r.committed_at_us;
        let _ = writeln!(
            csv,
            "{method},{},{},{},{t},{},{},{},{}",
            i + 1,
            r.seq,
            r.committed_at_us,
            r.delay_us,
            r.uncertainty_us,
            r.upper_bound,
            r.status.as_str()
        );
        if r.status == MeasureStatus::Ok {
            per_method
                .entry(method)
                .or_default()
                .push((t, r.delay_us, r.upper_bound));
        }
    }
    std::fs::write(args.out.join("measurements.csv"), csv)?;
    let mut pt_csv = String::from("local_us,lag_s\n");
    for (at, v) in &samples {
        let _ = writeln!(pt_csv, "{at},{v}");
    }
    std::fs::write(args.out.join("pt_samples.csv"), pt_csv)?;

    // ---- stall peaks: the one figure all three tools report ----
    let seq_commit: BTreeMap<i64, i64> =
        records.iter().map(|r| (r.seq, r.committed_at_us)).collect();
    let mut stall_csv =
        String::from("stall_ms,true_peak_us,gtid_peak_us,poll_peak_us,pt_peak_us\n");
    let mut peak_err: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut by_size: BTreeMap<u64, Vec<[i64; 4]>> = BTreeMap::new();
    for (ms, s) in &stalls {
        // The heartbeats committed while the SQL thread was stopped on the stalled replica.
        let in_stall: Vec<i64> = seq_commit
            .iter()
            .filter(|(_, c)| **c >= s.stopped_at_us - 5_000 && **c <= s.started_at_us)
            .map(|(s, _)| *s)
            .collect();
        eprintln!(
            "bench: stall {ms} ms: {} heartbeats committed during it",
            in_stall.len()
        );
        let true_peak = in_stall
            .iter()
            .filter_map(|q| truth[STALLED].get(q).map(|a| a - seq_commit[q]))
            .max()
            .unwrap_or(0);
        let peak_of = |id: &str| {
            records
                .iter()
                .filter(|r| {
                    r.reader_id == id && r.replica == addrs[STALLED] && in_stall.contains(&r.seq)
                })
                .map(|r| r.delay_us)
                .max()
                .unwrap_or(0)
        };
        let gtid = peak_of("mlg_gtid");
        let poll = peak_of("mlg_poll");
        // pt-heartbeat's readings while the replica was stopped and until it caught up.
        let pt = samples
            .iter()
            .filter(|(at, _)| *at >= s.stopped_at_us && *at <= s.started_at_us + 300_000)
            .map(|(_, v)| (v * 1e6) as i64)
            .max()
            .unwrap_or(0);
        let _ = writeln!(stall_csv, "{ms},{true_peak},{gtid},{poll},{pt}");
        peak_err
            .entry("gtid-wait")
            .or_default()
            .push((gtid - true_peak).abs());
        peak_err
            .entry("poll")
            .or_default()
            .push((poll - true_peak).abs());
        peak_err
            .entry("pt-heartbeat")
            .or_default()
            .push((pt - true_peak).abs());
        by_size
            .entry(*ms)
            .or_default()
            .push([true_peak, gtid, poll, pt]);
    }
    std::fs::write(args.out.join("stalls.csv"), stall_csv)?;

    // ---- steady state: pt-heartbeat readings away from stalls vs the replica's true lag ----
    let mut pt_steady_err = Vec::new();
    let applied_stalled: BTreeMap<i64, i64> =
        truth[STALLED].iter().map(|(s, a)| (*a, *s)).collect();
    for (at, v) in &samples {
        if *at < measure_from || *at > measure_to {
            continue;
        }
        let quiet = stalls
            .iter()
            .all(|(_, s)| *at < s.stopped_at_us - 50_000 || *at > s.started_at_us + 500_000);
        if !quiet {
            continue;
        }
        // The replica's true lag at `at` (pt-heartbeat's definition): now minus the commit
        // time of the newest heartbeat applied by then.
        if let Some((_, seq)) = applied_stalled.range(..=*at).next_back() {
            if let Some(c) = seq_commit.get(seq) {
                pt_steady_err.push(((v * 1e6) as i64 - (at - c)).abs());
            }
        }
    }

    // ---- the report ----
    let mut md = String::new();
    let _ = writeln!(md, "# millilag accuracy benchmark\n");
    let _ = writeln!(
        md,
        "One run, {duration_s:.0} s: MariaDB primary + 2 replicas (GTID replication), 10 ms heartbeats, stalls of {:?} ms x{} on replica 1 (`STOP SLAVE SQL_THREAD`). Truth: each replica's apply time of each heartbeat (AFTER trigger, `SYSDATE(6)`), same host, one clock. Readers are release builds in separate processes.\n",
        args.stalls_ms, args.repeats
    );
    let _ = writeln!(
        md,
        "## Every heartbeat, both replicas (abs error vs truth)\n"
    );
    let _ = writeln!(md, "| method | measurements | exact | p50 | p90 | p99 | max | queries/s to replica (client count) | queries/heartbeat/replica | reader CPU per measurement |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for (method, _) in READERS {
        let v = per_method.get(method).cloned().unwrap_or_default();
        let mut errs: Vec<i64> = v.iter().map(|(t, m, _)| (m - t).abs()).collect();
        errs.sort();
        let exact = v.iter().filter(|(_, _, ub)| !ub).count();
        let n = counts.get(method).copied().unwrap_or(0).max(1);
        let q = queries.get(method).copied().unwrap_or(0);
        let cpu = cpu1[method] - cpu0[method];
        let _ = writeln!(
            md,
            "| millilag {method} | {} | {exact} | {} us | {} us | {} us | {} us | {:.0} | {:.2} | {:.1} us |",
            v.len(),
            percentile(&errs, 0.5),
            percentile(&errs, 0.9),
            percentile(&errs, 0.99),
            errs.last().copied().unwrap_or(0),
            q as f64 / duration_s,
            q as f64 / n as f64,
            cpu * 1e6 / n as f64
        );
    }
    pt_steady_err.sort();
    let _ = writeln!(
        md,
        "| pt-heartbeat --monitor (steady-state readings vs the replica's true lag) | {} readings | - | {} us | {} us | {} us | {} us | {:.0} | - | {:.0} us CPU per reading |",
        pt_steady_err.len(),
        percentile(&pt_steady_err, 0.5),
        percentile(&pt_steady_err, 0.9),
        percentile(&pt_steady_err, 0.99),
        pt_steady_err.last().copied().unwrap_or(0),
        samples.len() as f64 / ((samples.last().map(|s| s.0).unwrap_or(0) - samples.first().map(|s| s.0).unwrap_or(0)).max(1) as f64 / 1e6),
        (cpu1["pt-monitor"] - cpu0["pt-monitor"]) * 1e6 / samples.iter().filter(|(at, _)| *at >= measure_from && *at <= measure_to).count().max(1) as f64
    );
    let _ = writeln!(
        md,
        "\n## Stall peaks on the stalled replica (abs error of the peak delay)\n"
    );
    let _ = writeln!(
        md,
        "| stall | true peak (mean) | millilag gtid-wait | millilag poll | pt-heartbeat |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for (ms, rows) in &by_size {
        let n = rows.len() as i64;
        let mean = |k: usize| rows.iter().map(|r| r[k]).sum::<i64>() / n;
        let err = |k: usize| rows.iter().map(|r| (r[k] - r[0]).abs()).max().unwrap_or(0);
        let _ = writeln!(
            md,
            "| {ms} ms | {:.1} ms | {:.1} ms (worst error {} us) | {:.1} ms (worst error {} us) | {:.1} ms (worst error {} us) |",
            mean(0) as f64 / 1e3,
            mean(1) as f64 / 1e3,
            err(1),
            mean(2) as f64 / 1e3,
            err(2),
            mean(3) as f64 / 1e3,
            err(3)
        );
    }
    let mut summary = Vec::new();
    for (tool, errs) in peak_err.iter_mut() {
        errs.sort();
        summary.push((
            tool.to_string(),
            percentile(errs, 0.5),
            percentile(errs, 0.99),
            *errs.last().unwrap_or(&0),
        ));
    }
    let _ = writeln!(
        md,
        "\n| tool | stall-peak abs error p50 | p99 | max |\n|---|---|---|---|"
    );
    for (t, p50, p99, max) in &summary {
        let _ = writeln!(md, "| {t} | {p50} us | {p99} us | {max} us |");
    }
    let pt = summary
        .iter()
        .find(|s| s.0 == "pt-heartbeat")
        .map(|s| s.2)
        .unwrap_or(0);
    let gt = summary
        .iter()
        .find(|s| s.0 == "gtid-wait")
        .map(|s| s.2)
        .unwrap_or(1)
        .max(1);
    let _ = writeln!(
        md,
        "\nStall-peak p99 error ratio pt-heartbeat / millilag gtid-wait: {:.1}x\n",
        pt as f64 / gt as f64
    );
    let _ = writeln!(
        md,
        "## Load on the stalled replica (its own USER_STATISTICS over the measured window)\n"
    );
    let _ = writeln!(
        md,
        "| client | statements/s | server CPU (ms/s) |\n|---|---|---|"
    );
    for (client, user) in [
        ("millilag gtid-wait", "mlg_gtid"),
        ("millilag poll", "mlg_poll"),
        ("pt-heartbeat --monitor", "pt_monitor"),
    ] {
        let (a, b) = (stats0[&STALLED].get(user), stats1[&STALLED].get(user));
        let (sel, cpu) = match (a, b) {
            (Some(a), Some(b)) => (
                (b.selects - a.selects) as f64 / duration_s,
                (b.cpu_s - a.cpu_s) * 1e3 / duration_s,
            ),
            (None, Some(b)) => (b.selects as f64 / duration_s, b.cpu_s * 1e3 / duration_s),
            _ => (0.0, 0.0),
        };
        let _ = writeln!(md, "| {client} | {sel:.0} | {cpu:.1} |");
    }
    let _ = writeln!(
        md,
        "\n## Reader CPU by thread group over the measured window (ms of CPU per second)\n"
    );
    let _ = writeln!(
        md,
        "| reader | librdkafka | tokio workers | other |\n|---|---|---|---|"
    );
    for (n, t1) in &threads1 {
        let t0 = &threads0[n];
        let d = |k: &str| {
            (t1.get(k).copied().unwrap_or(0.0) - t0.get(k).copied().unwrap_or(0.0)) * 1e3
                / duration_s
        };
        let _ = writeln!(
            md,
            "| {n} | {:.1} | {:.1} | {:.1} |",
            d("librdkafka"),
            d("tokio workers"),
            d("other")
        );
    }
    std::fs::write(args.out.join("accuracy.md"), &md)?;
    print!("{md}");
    if std::env::var_os("MILLILAG_BENCH_KEEP").is_some() {
        let _ = work.keep();
    }
    Ok(())
}
