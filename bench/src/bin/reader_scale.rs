//! One reader for many replicas: CPU per measurement, memory and sessions per replica.
//!
//! N replica URLs at 10 ms heartbeats. The URLs are 127.0.0.x aliases of 2 real MariaDB
//! replicas (`--servers K`: K) listening on all those addresses, so the reader holds N
//! independent sets of replica sessions (what it would hold on N servers) while 2 servers do
//! the applying; each server then has N/2 sessions waiting for the same GTID, which it wakes
//! one after another (more servers: fewer per server). Release
//! binaries, one writer and one reader process; after a warm-up, over a measuring interval:
//! the reader's CPU (user + system, /proc; the system part shown too) per ok measurement, its
//! peak RSS, the sessions the service user holds on each real replica divided by the aliases it
//! stands for. Then the writer stops, the reader is given the time to hand on everything it
//! owes (until it has committed the end of `heartbeat-set`, which it does only once the records
//! a heartbeat produced are acknowledged), and the replica-delay topic is read back (so the
//! bench does not compete with the reader while it is measured): the share of (replica URL,
//! heartbeat of the interval) pairs with an `ok` record, and with an exact one (not an upper
//! bound), counted from the records themselves (the rest by the status of their last record, or
//! as having none); and the exact measurements, and all ok ones,
//! against the replicas' trigger truth (row change on the replica - row change on the primary, one host,
//! one clock; the same truth for every alias of a server).
//!
//! `cargo build --release -p millilag -p millilag-bench && target/release/reader_scale
//! --millilag target/release/millilag --replicas 2,20,100,200 [--servers 2] [--softirq]`
//!
//! `--softirq` (perf, root): also the NET_RX softirq time that runs in the reader's context, per
//! measurement; on loopback that is mostly the kernel delivering the reader's own sends to the
//! servers and waking their threads, which on a network runs on the servers' hosts.

use anyhow::{bail, Context, Result};
use millilag_core::events::{HeartbeatSet, MeasureStatus, Record, ReplicaDelay};
use millilag_harness::mariadb::{Cluster, PASSWORD, USER};
use millilag_harness::process::{self, Guard};
use millilag_harness::{free_port, scrape, Broker};
use mysql_async::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Args {
    millilag: PathBuf,
    replicas: Vec<usize>,
    warmup: Duration,
    measure: Duration,
    reader: String,
    /// Real replicas the URLs are spread over.
    servers: usize,
    /// Also time the NET_RX softirqs that run in the reader's context (perf tracepoints).
    softirq: bool,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        millilag: PathBuf::from("target/release/millilag"),
        replicas: vec![2, 20, 100, 200],
        warmup: Duration::from_secs(6),
        measure: Duration::from_secs(15),
        reader: String::new(),
        servers: 2,
        softirq: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--softirq" {
            a.softirq = true;
            continue;
        }
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--millilag" => a.millilag = v.into(),
            "--replicas" => {
                a.replicas = v
                    .split(',')
                    .map(|n| n.trim().parse().context("--replicas: a list of counts"))
                    .collect::<Result<_>>()?
            }
            "--warmup-s" => a.warmup = Duration::from_secs(v.parse()?),
            "--measure-s" => a.measure = Duration::from_secs(v.parse()?),
            // Extra [reader] keys, e.g. "prearm_depth = 1".
            "--reader" => a.reader = v,
            // More real replicas: fewer alias sessions per server wait for the same GTID.
            "--servers" => a.servers = v.parse::<usize>().context("--servers: a count")?.max(1),
            _ => bail!("unknown flag {k}"),
        }
    }
    Ok(a)
}

fn spawn(bin: &Path, service: &str, config: &Path, dir: &Path) -> Result<Guard> {
    let mut cmd = Command::new(bin);
    cmd.arg(service).arg("--config").arg(config);
    Guard::spawn(service, cmd, &dir.join(format!("{service}.log")))
}

struct Row {
    replicas: usize,
    cpu_us_per_measurement: f64,
    /// The kernel's part of it (on loopback, also the servers' receive path).
    system_us_per_measurement: f64,
    /// Of the kernel's part, NET_RX softirqs in the reader's context (`--softirq`): on loopback
    /// mostly the delivery of its own sends to the servers, and their wake-up.
    net_rx_us_per_measurement: Option<f64>,
    cpu_share: f64,
    /// Queries the reader sent per ok measurement: GTID waits, and row reads.
    waits_per_measurement: f64,
    reads_per_measurement: f64,
    rss_mib: f64,
    /// A plain poller on one real replica meanwhile: its reads' round trips (the box's own
    /// noise), and how long after the replica applied a heartbeat it first saw it.
    probe_rtt: Errors,
    probe_seen: Errors,
    sessions_per_replica: f64,
    /// The share of (replica URL, heartbeat of the interval) with an ok record; with an exact one.
    measured_ok: f64,
    measured_exact: f64,
    /// The pairs without an ok record: by the status of their last final record, and with none.
    not_ok: String,
    /// |measured - true| of the exact measurements, and of every ok one (upper bounds too: the
    /// processor's windows take them all).
    exact_error: Errors,
    ok_error: Errors,
}

async fn run_one(a: &Args, n: usize) -> Result<Row> {
    let (cluster, broker) = tokio::join!(Cluster::start(a.servers), Broker::start());
    let mut cluster = cluster?;
    let broker = broker?;
    // Clients connecting to 127.0.0.x come from 127.0.0.x: the service user must be allowed
    // from every alias (created on the primary, replicated).
    cluster
        .primary
        .admin()
        .await?
        .query_drop(format!(
            "CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.%' IDENTIFIED BY '{PASSWORD}';
             GRANT SELECT, INSERT, UPDATE, CREATE ON `millilag`.* TO '{USER}'@'127.0.0.%';
             GRANT BINLOG REPLAY, SLAVE MONITOR, REPLICATION MASTER ADMIN ON *.* TO '{USER}'@'127.0.0.%';"
        ))
        .await?;
    let per_server = n.div_ceil(a.servers);
    let aliases: Vec<String> = (1..=per_server).map(|i| format!("127.0.0.{i}")).collect();
    for r in cluster.replicas.iter_mut() {
        r.restart_listening_on(&aliases).await?;
    }
    let urls: Vec<String> = (0..n)
        .map(|i| {
            let server = &cluster.replicas[i % a.servers];
            format!(
                "\"mysql://{USER}:{PASSWORD}@{}:{}\"",
                aliases[i / a.servers],
                server.port
            )
        })
        .collect();
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let writer_listen = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "scale{n}."
partitions = 1

[[cluster]]
name = "main"
primary = "{primary}"
replicas = [{replicas}]

[writer]
interval = "10ms"
listen = "{writer_listen}"

[reader]
listen = "{listen}"
group = "{group}"
{reader}
"#,
        brokers = broker.brokers(),
        primary = cluster.primary.url(),
        replicas = urls.join(", "),
        writer_listen = writer_listen,
        reader = a.reader,
        group = READER_GROUP,
    );
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, config)?;
    let mut writer = spawn(&a.millilag, "writer", &path, dir.path())?;
    // Waits for the writer's table, then adds the truth triggers.
    cluster.install_truth("millilag", "heartbeat").await?;
    let reader = spawn(&a.millilag, "reader", &path, dir.path())?;
    let pid = reader.pid();
    tokio::time::sleep(a.warmup).await;
    let (user0, sys0) = process::cpu_user_system(pid);
    let m0 = Counts::scrape(&listen).await?;
    let seq0 = cluster.heartbeat_seq().await?;
    let started = Instant::now();
    let probe = tokio::spawn(probe(
        cluster.replicas[0].admin().await?,
        started + a.measure,
    ));
    let softirq = match a.softirq {
        true => Some(Softirq::record(pid, a.measure, dir.path())?),
        false => None,
    };
    let mut rss_peak: f64 = 0.0;
    while started.elapsed() < a.measure {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_peak = rss_peak.max(process::rss_mib(pid));
    }
    let probe = probe.await??;
    let net_rx_s = match softirq {
        Some(s) => Some(s.net_rx_seconds()?),
        None => None,
    };
    let (user1, sys1) = process::cpu_user_system(pid);
    let (cpu0, cpu1) = (user0 + sys0, user1 + sys1);
    let m1 = Counts::scrape(&listen).await?;
    let seq1 = cluster.heartbeat_seq().await?;
    let elapsed = started.elapsed().as_secs_f64();
    let mut sessions = 0i64;
    for r in &cluster.replicas {
        let mut c = r.admin().await?;
        let k: Option<i64> = c
            .query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{USER}'"
            ))
            .await?;
        sessions += k.unwrap_or(0);
    }
    let ports: HashMap<u16, usize> = cluster
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| (r.port, i))
        .collect();
    // Why heartbeats went unannounced, in the writer's own words.
    let writer_said = scrape::metrics(&writer_listen)
        .await
        .context("the writer's /metrics")?;
    let writer_lost: Vec<String> = ["publish_dropped", "publish_failures", "db_errors"]
        .iter()
        .map(|what| {
            let k = scrape::sum(&writer_said, &format!("millilag_writer_{what}_total"), &[]);
            format!("{} {what}", k.unwrap_or(0.0))
        })
        .collect();
    // SIGTERM: the writer announces every heartbeat it committed before it exits. Killed, it
    // loses what the broker has not acknowledged yet: the likely cause of the 3-14 heartbeats
    // of the interval seen unannounced in 2 of 7 runs at 200 URLs, with a slow broker.
    writer.signal(libc::SIGTERM);
    let _ = writer.wait();
    let announcements = format!("scale{n}.heartbeat-set");
    handed_on(&broker, &announcements).await?;
    drop(reader);
    let mut truth = Vec::new();
    for i in 0..cluster.replicas.len() {
        truth.push(cluster.true_delays(i, seq0).await?);
    }
    let applied = cluster.truth(0, seq0).await?;
    let topic = format!("scale{n}.replica-delay");
    let back = read_back(&broker, &topic, (seq0, seq1), &ports, &truth).await?;
    let announced = announced(&broker, &announcements, (seq0, seq1)).await?;
    let measurements = (m1.ok - m0.ok).max(1.0);
    let pairs = ((seq1 - seq0).max(1) as usize * n) as f64;
    Ok(Row {
        replicas: n,
        cpu_us_per_measurement: (cpu1 - cpu0) * 1e6 / measurements,
        system_us_per_measurement: (sys1 - sys0) * 1e6 / measurements,
        net_rx_us_per_measurement: net_rx_s.map(|s| s * 1e6 / measurements),
        cpu_share: (cpu1 - cpu0) / elapsed,
        waits_per_measurement: (m1.waits - m0.waits) / measurements,
        reads_per_measurement: (m1.reads - m0.reads) / measurements,
        rss_mib: rss_peak,
        probe_rtt: Errors::of(probe.rtt_us),
        probe_seen: Errors::of(
            probe
                .first_seen
                .iter()
                .filter_map(|(seq, at)| Some(at - applied.get(seq)?))
                .collect(),
        ),
        sessions_per_replica: sessions as f64 / n as f64,
        measured_ok: back.ok as f64 / pairs,
        measured_exact: back.exact as f64 / pairs,
        not_ok: {
            let mut parts: Vec<String> = back
                .not_ok
                .iter()
                .map(|(status, count)| format!("{count} {status}"))
                .collect();
            let with_record = back.ok + back.not_ok.values().sum::<usize>();
            parts.push(format!(
                "{} none",
                (pairs as usize).saturating_sub(with_record)
            ));
            let heartbeats = (seq1 - seq0).max(0) as usize;
            parts.push(format!(
                "{} heartbeats not announced (writer: {})",
                heartbeats.saturating_sub(announced),
                writer_lost.join(", ")
            ));
            parts.join(", ")
        },
        exact_error: back.exact_error,
        ok_error: back.ok_error,
    })
}

/// What a plain poller saw on one replica: its reads' round trips, and when each heartbeat
/// first showed (the replica's clock).
struct Probe {
    rtt_us: Vec<i64>,
    first_seen: BTreeMap<i64, i64>,
}

/// Read the heartbeat row on `conn` every 2 ms until `until`: what any query to the replicas
/// costs on this box while the reader runs, and how late the rows become visible after the
/// replica applied them (a server that stalls shows here, with no millilag in the way).
async fn probe(mut conn: mysql_async::Conn, until: Instant) -> Result<Probe> {
    let mut p = Probe {
        rtt_us: Vec::new(),
        first_seen: BTreeMap::new(),
    };
    let mut last = None;
    while Instant::now() < until {
        let sent = Instant::now();
        let row: Option<(Option<i64>, Option<String>)> = conn
            .query_first(
                "SELECT CAST(MAX(seq) AS SIGNED), UNIX_TIMESTAMP(SYSDATE(6)) FROM millilag.heartbeat",
            )
            .await?;
        p.rtt_us.push(sent.elapsed().as_micros() as i64);
        if let Some((Some(seq), Some(at))) = row {
            let at = millilag_core::db::unix_text_to_us(&at).unwrap_or(0);
            for s in last.map_or(seq, |l: i64| l + 1)..=seq {
                p.first_seen.insert(s, at);
            }
            last = Some(last.map_or(seq, |l: i64| l.max(seq)));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(p)
}

/// The reader's consumer group (set in the bench's config).
const READER_GROUP: &str = "scale-reader";

/// Once the writer has stopped: until the reader has committed the end of `heartbeat-set`,
/// which it does only once every record a heartbeat produced is acknowledged by Kafka; at most
/// 2 minutes. (Its counters alone can stand still for a second while its input runs seconds
/// behind through the broker: the heartbeats still to come were then counted as not measured.)
async fn handed_on(broker: &Broker, topic: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (end, committed) = broker.group_offsets(READER_GROUP, topic, 1)?[0];
        if committed >= Some(end) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("after 2 minutes the reader had committed {committed:?} of {topic}'s {end} heartbeats");
        }
        // Paced looks at another process's commits: there is no event to await.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// |measured - true| of one ok record, when its server's truth has its heartbeat.
fn error_of(
    r: &ReplicaDelay,
    ports: &HashMap<u16, usize>,
    truth: &[BTreeMap<i64, i64>],
) -> Option<i64> {
    let port: u16 = r.replica.rsplit(':').next()?.parse().ok()?;
    let server = *ports.get(&port)?;
    Some((r.delay_us - truth[server].get(&r.seq)?).abs())
}

/// Abs errors or round trips (µs): p50, p99, max, and how many.
struct Errors {
    p50: i64,
    p99: i64,
    max: i64,
    count: usize,
}

impl Errors {
    fn of(mut errors: Vec<i64>) -> Errors {
        errors.sort_unstable();
        let at = |q: f64| {
            errors
                .get(((errors.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        Errors {
            p50: at(0.5),
            p99: at(0.99),
            max: errors.last().copied().unwrap_or(0),
            count: errors.len(),
        }
    }
}

impl std::fmt::Display for Errors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |us: i64| us as f64 / 1000.0;
        write!(
            f,
            "{:.2} / {:.2} / {:.1} ms ({})",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

/// What the replica-delay topic holds for the heartbeats `seqs` (half-open).
struct ReadBack {
    /// (replica URL, heartbeat) pairs with an ok record, and with an exact one.
    ok: usize,
    exact: usize,
    /// Pairs with no ok record but a final one (not a live-lag sample), by its status.
    not_ok: BTreeMap<&'static str, usize>,
    exact_error: Errors,
    ok_error: Errors,
}

/// Every payload of `topic` (one partition) from its beginning to its end as it is now (the
/// services are stopped).
async fn read_topic(broker: &Broker, topic: &str, mut each: impl FnMut(&[u8])) -> Result<()> {
    let consumer: StreamConsumer = broker
        .client_config()
        .set("group.id", format!("scale-accuracy-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    let (_, end) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(30))?;
    if end == 0 {
        return Ok(());
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    loop {
        // A gap of a few seconds between fetches is normal for a large backlog on a busy broker.
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| format!("reading {topic} back"))??;
        if let Some(p) = m.payload() {
            each(p);
        }
        if m.offset() + 1 >= end {
            return Ok(());
        }
    }
}

/// Read the replica-delay `topic` back, for the heartbeats `seqs` (half-open).
async fn read_back(
    broker: &Broker,
    topic: &str,
    seqs: (i64, i64),
    ports: &HashMap<u16, usize>,
    truth: &[BTreeMap<i64, i64>],
) -> Result<ReadBack> {
    let mut ok = HashSet::new();
    let mut exact = HashSet::new();
    let mut not_ok = HashMap::new();
    let (mut exact_errors, mut ok_errors) = (Vec::new(), Vec::new());
    read_topic(broker, topic, |p| {
        let record = ReplicaDelay::decode(p).ok();
        let Some(r) = record.filter(|r| r.seq >= seqs.0 && r.seq < seqs.1) else {
            return;
        };
        if r.status == MeasureStatus::Ok {
            let error = error_of(&r, ports, truth);
            ok_errors.extend(error);
            if !r.upper_bound {
                exact_errors.extend(error);
                exact.insert((r.replica.clone(), r.seq));
            }
            ok.insert((r.replica, r.seq));
        } else if r.status != MeasureStatus::Pending {
            not_ok.insert((r.replica, r.seq), r.status.as_str());
        }
    })
    .await?;
    let mut by_status = BTreeMap::new();
    for (pair, status) in not_ok {
        if !ok.contains(&pair) {
            *by_status.entry(status).or_insert(0) += 1;
        }
    }
    Ok(ReadBack {
        ok: ok.len(),
        exact: exact.len(),
        not_ok: by_status,
        exact_error: Errors::of(exact_errors),
        ok_error: Errors::of(ok_errors),
    })
}

/// How many of the heartbeats `seqs` (half-open) the writer announced on `topic`.
async fn announced(broker: &Broker, topic: &str, seqs: (i64, i64)) -> Result<usize> {
    let mut seen = HashSet::new();
    read_topic(broker, topic, |p| {
        if let Ok(h) = HeartbeatSet::decode(p) {
            if h.seq >= seqs.0 && h.seq < seqs.1 {
                seen.insert(h.seq);
            }
        }
    })
    .await?;
    Ok(seen.len())
}

/// ok measurements so far, all replicas.
/// `perf record` of the softirq tracepoints in the reader's context over the measuring interval.
struct Softirq {
    perf: Guard,
    data: PathBuf,
}

impl Softirq {
    fn record(pid: u32, measure: Duration, dir: &Path) -> Result<Softirq> {
        let data = dir.join("softirq.data");
        let mut cmd = Command::new("perf");
        cmd.args([
            "record",
            "-q",
            "-e",
            "irq:softirq_entry,irq:softirq_exit",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep"])
        .arg(measure.as_secs().to_string());
        let perf = Guard::spawn("perf", cmd, &dir.join("perf.log"))?;
        Ok(Softirq { perf, data })
    }

    /// Seconds spent in NET_RX (vector 3) softirqs, entry to exit on each CPU.
    fn net_rx_seconds(mut self) -> Result<f64> {
        let _ = self.perf.wait();
        let out = Command::new("perf")
            .args(["script", "-F", "cpu,time,event,trace", "-i"])
            .arg(&self.data)
            .output()
            .context("perf script")?;
        let mut open: HashMap<String, f64> = HashMap::new();
        let mut net_rx = 0.0;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "[001] 12345.678901: irq:softirq_entry: vec=3 [action=NET_RX]"
            let mut f = line.split_whitespace();
            let (Some(cpu), Some(t), Some(ev), Some(vec)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            let Ok(t) = t.trim_end_matches(':').parse::<f64>() else {
                continue;
            };
            if vec != "vec=3" {
                continue;
            }
            match ev {
                "irq:softirq_entry:" => {
                    open.insert(cpu.to_string(), t);
                }
                "irq:softirq_exit:" => {
                    if let Some(t0) = open.remove(cpu) {
                        net_rx += t - t0;
                    }
                }
                _ => {}
            }
        }
        Ok(net_rx)
    }
}

/// The reader's counters the bench divides by.
struct Counts {
    ok: f64,
    waits: f64,
    reads: f64,
}

impl Counts {
    async fn scrape(listen: &str) -> Result<Counts> {
        let body = scrape::metrics(listen)
            .await
            .context("the reader's /metrics")?;
        let sum = |family: &str, label: &str| scrape::sum(&body, family, &[label]).unwrap_or(0.0);
        Ok(Counts {
            ok: sum("millilag_reader_measurements_total", "status=\"ok\""),
            waits: sum("millilag_reader_queries_total", "kind=\"gtid_wait\""),
            reads: sum("millilag_reader_queries_total", "kind=\"poll\""),
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    println!("| replicas | reader CPU per measurement (kernel part) | reader CPU | queries per measurement: waits + reads | peak RSS | sessions per replica | heartbeats measured ok (exact) | the rest: last status, or no record | abs error vs truth p50 / p99 / max: exact measurements | every ok one | a 2 ms poller on one replica meanwhile: round trip; seen after applied |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &n in &a.replicas {
        let r = run_one(&a, n).await?;
        println!(
            "| {} | {:.1} us ({:.1}{}) | {:.0}% of a core | {:.2} + {:.2} | {:.0} MiB | {:.2} | {:.2}% ({:.2}%) | {} | {} | {} | {}; {} |",
            r.replicas,
            r.cpu_us_per_measurement,
            r.system_us_per_measurement,
            r.net_rx_us_per_measurement
                .map_or(String::new(), |n| format!("; NET_RX {n:.1}")),
            r.cpu_share * 100.0,
            r.waits_per_measurement,
            r.reads_per_measurement,
            r.rss_mib,
            r.sessions_per_replica,
            r.measured_ok * 100.0,
            r.measured_exact * 100.0,
            r.not_ok,
            r.exact_error,
            r.ok_error,
            r.probe_rtt,
            r.probe_seen
        );
    }
    Ok(())
}
