//! The processor end to end: records/s per core of processor CPU, and what Tansu costs.
//!
//! replica-delay records for `clusters x replicas` replicas at 10 ms heartbeats (Avro
//! single-object, keyed `cluster/replica` as the reader keys them) are produced first into a
//! topic with `--partitions` partitions; then the release `millilag processor` starts on that
//! backlog (windows 1s/10s/1m, an InfluxDB v1 sink on VictoriaMetrics, the delay-window
//! topic). Measured: wall time from the processor's start to its last record consumed
//! (`millilag_processor_records_total`), its CPU (user + system from /proc) to that moment and
//! to the moment every partition's committed offset reached the end (every window flushed to
//! every sink), and Tansu's CPU over the consuming interval. Checked, so a processor that
//! drops work cannot look fast: the committed offsets, no decode failure, and the sum of
//! `count` over each window length's points in VictoriaMetrics equals the records produced.
//!
//! `cargo build --release -p millilag -p millilag-bench && target/release/processor_e2e
//! --millilag target/release/millilag --runs 3`

use anyhow::{bail, ensure, Context, Result};
use millilag_core::events::{MeasureMethod, MeasureStatus, Record, ReplicaDelay};
use millilag_harness::process::{self, Guard};
use millilag_harness::scrape;
use millilag_harness::victoria::Victoria;
use millilag_harness::{free_port, wait_for, Broker};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const TOPIC: &str = "bench.replica-delay";
const GROUP: &str = "bench-processor";
const INTERVAL_US: i64 = 10_000;
const WINDOWS: [&str; 3] = ["1s", "10s", "1m"];

struct Args {
    millilag: PathBuf,
    clusters: usize,
    replicas: usize,
    seconds: i64,
    partitions: i32,
    runs: usize,
    /// `perf record` the processor while it consumes, into this file.
    perf: Option<PathBuf>,
    /// Extra `[processor]` keys.
    processor: String,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        millilag: PathBuf::from("target/release/millilag"),
        clusters: 10,
        replicas: 100,
        seconds: 10,
        partitions: 10,
        runs: 1,
        perf: None,
        processor: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--millilag" => a.millilag = v.into(),
            "--clusters" => a.clusters = v.parse()?,
            // Per cluster.
            "--replicas" => a.replicas = v.parse()?,
            // Heartbeats' worth per replica, at 10 ms.
            "--seconds" => a.seconds = v.parse()?,
            "--partitions" => a.partitions = v.parse()?,
            "--runs" => a.runs = v.parse()?,
            "--perf" => a.perf = Some(v.into()),
            // Extra [processor] keys, e.g. "worker_threads = 2".
            "--processor" => a.processor = v,
            _ => bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

fn record(cluster: usize, replica: usize, seq: i64, base_us: i64) -> ReplicaDelay {
    let committed = base_us + seq * INTERVAL_US;
    // Varied delays, so quantiles do real work.
    let delay = 300 + (seq * 7919 + replica as i64 * 104_729) % 5_000;
    ReplicaDelay {
        cluster: format!("c{cluster}"),
        replica: format!("db{replica}:3306"),
        primary: format!("c{cluster}-db0:3306"),
        seq,
        committed_at_us: committed,
        delay_us: delay,
        uncertainty_us: 40,
        method: MeasureMethod::GtidWait,
        status: MeasureStatus::Ok,
        upper_bound: false,
        observed_at_us: committed + delay,
        reader_id: "bench".into(),
        queries: 1,
    }
}

/// Produce every replica's heartbeats, oldest first; returns the count.
async fn produce(broker: &Broker, a: &Args, base_us: i64) -> Result<u64> {
    let producer: FutureProducer = broker
        .client_config()
        // As the reader's producer (core kafka::producer), batched harder: this is set-up.
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "50")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .create()?;
    let mut pending = VecDeque::new();
    let mut n = 0u64;
    for seq in 1..=a.seconds * 1_000_000 / INTERVAL_US {
        for c in 0..a.clusters {
            for r in 0..a.replicas {
                let rec = record(c, r, seq, base_us);
                let (key, payload) = (rec.key(), rec.encode()?);
                let mut fr = FutureRecord::to(TOPIC)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(rec.observed_at_us / 1000);
                loop {
                    match producer.send_result(fr) {
                        Ok(d) => {
                            pending.push_back(d);
                            break;
                        }
                        Err((_, back)) => {
                            // Queue full: room comes back as the oldest are acknowledged.
                            fr = back;
                            for _ in 0..10_000 {
                                let Some(d) = pending.pop_front() else { break };
                                d.await?.map_err(|(e, _)| e)?;
                            }
                        }
                    }
                }
                n += 1;
            }
        }
    }
    for d in pending {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(n)
}

/// A metric of the processor's /metrics, e.g. `millilag_processor_records_total`, summed over
/// its labels.
async fn metric(listen: &str, name: &str) -> Option<f64> {
    scrape::sum(&scrape::metrics(listen).await?, name, &[])
}

/// Sum of `count` over every point of one window length.
async fn vm_count(vm: &Victoria, window: &str) -> f64 {
    let selector = format!("{{__name__=\"replica_delay_count\",window=\"{window}\"}}");
    vm.export(&selector)
        .await
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.values.iter())
        .sum()
}

/// The processor's config: `prefix`'s replica-delay, windows 1s/10s/1m, VictoriaMetrics.
fn processor_config(
    a: &Args,
    broker: &Broker,
    vm: &Victoria,
    prefix: &str,
    group: &str,
    listen: &str,
) -> String {
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = {partitions}
# Tansu answers slowly while it serves a backlog: with the default 10 s session a member's
# heartbeats can time out, and each rebalance replays records (counted, the run fails).
properties = {{ "session.timeout.ms" = "45000" }}

[processor]
group = "{group}"
listen = "{listen}"
windows = ["1s", "10s", "1m"]
# Default lateness and idle_close (7 s): a shorter idle_close closed windows of partitions
# Tansu was slow to serve, and their later records counted as late.
{extra}

[[sink.influxdb]]
url = "{vm}"
api = "v1"
database = "millilag"
"#,
        brokers = broker.brokers(),
        vm = vm.url(),
        partitions = a.partitions,
        extra = a.processor,
    )
}

/// The processor's CPU while it has nothing to consume (fetching, ticking), in cores: what
/// a processor waiting on a slow broker spends besides its records.
async fn idle_cores(a: &Args, broker: &Broker, vm: &Victoria) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = processor_config(a, broker, vm, "idle.", "idle-processor", &listen);
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(&a.millilag);
    cmd.arg("processor").arg("--config").arg(&path);
    let p = Guard::spawn("idle-processor", cmd, &dir.path().join("processor.log"))?;
    let want = a.partitions as f64;
    wait_for(
        "idle processor assigned",
        Duration::from_secs(60),
        || async {
            let n = metric(&listen, "millilag_processor_assigned_partitions").await?;
            (n == want).then_some(())
        },
    )
    .await?;
    let (cpu0, t0) = (process::cpu_seconds(p.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    Ok((process::cpu_seconds(p.pid()) - cpu0) / t0.elapsed().as_secs_f64())
}

struct Run {
    records: u64,
    produce_s: f64,
    /// Start to first record consumed (group join), with the CPU it took.
    startup_s: f64,
    startup_cpu: f64,
    /// First record to last.
    consume_s: f64,
    cpu_consume: f64,
    cpu_total: f64,
    tansu_cpu: f64,
    done_s: f64,
    rss_peak: f64,
    windows: f64,
    /// Cores the processor spends idle (see [`idle_cores`]).
    idle: f64,
}

impl Run {
    fn per_core(&self) -> f64 {
        self.records as f64 / self.cpu_consume
    }
    /// Per core of the CPU beyond what the processor spends idle over the same time.
    fn per_core_net(&self) -> f64 {
        let busy = self.cpu_consume - self.startup_cpu - self.idle * self.consume_s;
        self.records as f64 / busy.max(1e-3)
    }
    fn per_core_total(&self) -> f64 {
        self.records as f64 / self.cpu_total
    }
}

async fn run_one(a: &Args) -> Result<Run> {
    let (broker, vm) = tokio::join!(Broker::start(), Victoria::start());
    let (broker, vm) = (broker?, vm?);
    broker.create_topics(&[TOPIC], a.partitions).await?;
    let idle = idle_cores(a, &broker, &vm).await?;
    let heartbeats = a.seconds * 1_000_000 / INTERVAL_US;
    // Ending on the last whole minute: every window length's last window ends with the data,
    // so they all close `idle_close` after the backlog is consumed. (Windows from there to
    // now close empty as the replicas fall silent: the writer-is-dead accounting, real work
    // that the all-committed figures include.)
    let minute = millilag_core::clock::now_us() / 60_000_000 * 60_000_000;
    let base_us = minute - a.seconds * 1_000_000 - INTERVAL_US;
    let t = Instant::now();
    let produced = produce(&broker, a, base_us).await?;
    let produce_s = t.elapsed().as_secs_f64();
    let ends = broker.group_offsets(GROUP, TOPIC, a.partitions)?;
    let total: i64 = ends.iter().map(|(h, _)| h).sum();
    ensure!(
        total as u64 == produced,
        "topic holds {total}, produced {produced}"
    );
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let config = processor_config(a, &broker, &vm, "bench.", GROUP, &listen);
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, config)?;
    let tansu0 = process::cpu_seconds(broker.pid());
    let started = Instant::now();
    let mut cmd = Command::new(&a.millilag);
    cmd.arg("processor").arg("--config").arg(&path);
    let processor = Guard::spawn("processor", cmd, &dir.path().join("processor.log"))?;
    let pid = processor.pid();
    let mut perf = match &a.perf {
        Some(out) => {
            let mut cmd = Command::new("perf");
            cmd.args(["record", "-F", "999", "-g", "-o"])
                .arg(out)
                .args(["-p", &pid.to_string()]);
            Some(Guard::spawn("perf", cmd, &dir.path().join("perf.log"))?)
        }
        None => None,
    };
    let mut rss_peak: f64 = 0.0;
    let mut first: Option<(Instant, f64)> = None;
    // Paced polls of a counter: there is no event to await from another process.
    let (done_consuming, cpu_consume, tansu_cpu) = loop {
        let n = metric(&listen, "millilag_processor_records_total")
            .await
            .unwrap_or(0.0);
        let (cpu, rss) = (process::cpu_seconds(pid), process::rss_mib(pid));
        rss_peak = rss_peak.max(rss);
        if n > 0.0 && first.is_none() {
            first = Some((Instant::now(), cpu));
        }
        if n as u64 >= produced {
            let tansu = process::cpu_seconds(broker.pid()) - tansu0;
            if let Some(mut p) = perf.take() {
                // SIGINT: perf writes its file and exits.
                p.signal(libc::SIGINT);
                p.wait();
            }
            break (Instant::now(), cpu, tansu);
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!(
                "consumed {n} of {produced} in 10 min; log:\n{}",
                processor.log_tail(20)
            );
        }
        // Every poll renders the processor's /metrics (1,000 replicas' series), on its CPU:
        // at 200 ms the bench's own polls were 8-10% of the processor's CPU (perf), where
        // Prometheus scrapes every 15 s. Once a second: the moment of the last record is known
        // to a second, during which the processor idles (~2% of a core).
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    wait_for(
        "committed offsets at the end of every partition",
        Duration::from_secs(600),
        || async {
            let o = broker.group_offsets(GROUP, TOPIC, a.partitions).ok()?;
            o.iter().all(|(high, c)| *c == Some(*high)).then_some(())
        },
    )
    .await?;
    let done_s = started.elapsed().as_secs_f64();
    let (first_at, first_cpu) = first.unwrap_or((started, 0.0));
    let startup_s = first_at.duration_since(started).as_secs_f64();
    let consume_s = done_consuming.duration_since(first_at).as_secs_f64();
    let (cpu_total, rss) = (process::cpu_seconds(pid), process::rss_mib(pid));
    rss_peak = rss_peak.max(rss);
    let log = std::fs::read_to_string(processor.log_path()).unwrap_or_default();
    let rebalances = log.matches("Partitions revoked.").count();
    ensure!(
        rebalances == 0,
        "{rebalances} rebalances: records were replayed, the figures would be wrong"
    );
    let windows = metric(&listen, "millilag_processor_windows_closed_total")
        .await
        .unwrap_or(0.0);
    for name in [
        "millilag_processor_late_records_total",
        "millilag_processor_decode_failures_total",
        "millilag_processor_duplicates_total",
    ] {
        let v = metric(&listen, name).await.unwrap_or(0.0);
        ensure!(v == 0.0, "{name} = {v}");
    }
    for w in WINDOWS {
        let want = produced as f64;
        let landed = wait_for(
            &format!("sum of count over {w} windows in VictoriaMetrics = {want}"),
            Duration::from_secs(60),
            || async { (vm_count(&vm, w).await == want).then_some(()) },
        )
        .await;
        if let Err(e) = landed {
            bail!("{e}: it holds {}", vm_count(&vm, w).await);
        }
    }
    ensure!(
        produced == (heartbeats as u64) * (a.clusters * a.replicas) as u64,
        "produced {produced}"
    );
    Ok(Run {
        records: produced,
        produce_s,
        startup_s,
        startup_cpu: first_cpu,
        consume_s,
        cpu_consume,
        cpu_total,
        tansu_cpu,
        done_s,
        rss_peak,
        windows,
        idle,
    })
}

fn range(runs: &[Run], f: impl Fn(&Run) -> f64, digits: usize) -> String {
    let v: Vec<f64> = runs.iter().map(f).collect();
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), x| (l.min(*x), h.max(*x)));
    if runs.len() == 1 {
        format!("{lo:.digits$}")
    } else {
        format!("{lo:.digits$}-{hi:.digits$}")
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    println!(
        "{} replicas ({} clusters x {}), {} s of 10 ms heartbeats, {} partitions, windows {}",
        a.clusters * a.replicas,
        a.clusters,
        a.replicas,
        a.seconds,
        a.partitions,
        WINDOWS.join("/")
    );
    println!("| run | records | produce | start -> first record | first -> last record (wall) | records/s (wall) | processor CPU to last record | records/s per core | idle CPU | records/s per core beyond idle | CPU to all committed | records/s per core, all | Tansu CPU consuming | all committed after | windows closed | peak RSS |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut runs = Vec::new();
    for i in 1..=a.runs {
        let r = run_one(&a).await?;
        println!(
            "| {i} | {} | {:.1} s | {:.2} s ({:.2} s CPU) | {:.2} s | {:.0}k | {:.2} s | {:.0}k | {:.1}% of a core | {:.0}k | {:.2} s | {:.0}k | {:.2} s | {:.1} s | {:.0} | {:.0} MiB |",
            r.records,
            r.produce_s,
            r.startup_s,
            r.startup_cpu,
            r.consume_s,
            r.records as f64 / r.consume_s / 1e3,
            r.cpu_consume,
            r.per_core() / 1e3,
            r.idle * 100.0,
            r.per_core_net() / 1e3,
            r.cpu_total,
            r.per_core_total() / 1e3,
            r.tansu_cpu,
            r.done_s,
            r.windows,
            r.rss_peak
        );
        runs.push(r);
    }
    if runs.len() > 1 {
        println!(
            "| all | {} | {} s | {} s ({} s CPU) | {} s | {}k | {} s | {}k | {}% of a core | {}k | {} s | {}k | {} s | {} s | {} | {} MiB |",
            runs[0].records,
            range(&runs, |r| r.produce_s, 1),
            range(&runs, |r| r.startup_s, 2),
            range(&runs, |r| r.startup_cpu, 2),
            range(&runs, |r| r.consume_s, 2),
            range(&runs, |r| r.records as f64 / r.consume_s / 1e3, 0),
            range(&runs, |r| r.cpu_consume, 2),
            range(&runs, |r| r.per_core() / 1e3, 0),
            range(&runs, |r| r.idle * 100.0, 1),
            range(&runs, |r| r.per_core_net() / 1e3, 0),
            range(&runs, |r| r.cpu_total, 2),
            range(&runs, |r| r.per_core_total() / 1e3, 0),
            range(&runs, |r| r.tansu_cpu, 2),
            range(&runs, |r| r.done_s, 1),
            range(&runs, |r| r.windows, 0),
            range(&runs, |r| r.rss_peak, 0),
        );
    }
    Ok(())
}
