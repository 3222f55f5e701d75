//! Several partitions and several clusters end to end (every other test uses one of each):
//! two MariaDB clusters, topics with 6 partitions (the default), writer, reader and processor.
//! Each replica's records stay on one partition, in seq order; every partition's offsets are
//! committed; every closed window of every replica counts each heartbeat once, none missing.
//! Then two readers and two processors in one consumer group: Tansu 0.6 splits the partitions
//! between live members, and each half is measured and windowed completely.
//!
//! Cluster names are picked so their keys land on partitions the test can reason about
//! (librdkafka's default partitioner is CRC-32 of the key modulo the partition count), since
//! replica keys hold the servers' random ports.

use crate::common::{init_logging, unique};
use millilag_core::events::{DelayWindow, MeasureStatus, ReplicaDelay};
use millilag_core::kafka::topics;
use millilag_core::Config;
use millilag_harness::{free_port, wait_for, Broker, Cluster};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PARTITIONS: i32 = 6;
const S: i64 = 1_000_000;
const LATENESS_US: i64 = 300_000;

/// librdkafka's `consistent_random` partitioner for a keyed record: CRC-32 (IEEE) of the key.
fn partition_of(key: &str) -> i32 {
    let mut crc = !0u32;
    for b in key.bytes() {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    ((!crc) % PARTITIONS as u32) as i32
}

/// Two clusters of two replicas, one broker, and cluster names whose keys spread.
struct Two {
    clusters: [Cluster; 2],
    names: [String; 2],
    broker: Broker,
    prefix: String,
}

impl Two {
    /// `apart`: the clusters' heartbeat keys land in different halves of the partitions (0-2
    /// and 3-5, what the range assignor gives two members), so two readers of one group each
    /// get one cluster.
    async fn start(apart: bool) -> Two {
        init_logging();
        let (a, b, broker) = tokio::join!(Cluster::start(2), Cluster::start(2), Broker::start());
        let clusters = [a.expect("cluster a"), b.expect("cluster b")];
        let names = pick_names(&clusters, apart);
        Two {
            clusters,
            names,
            broker: broker.expect("Tansu"),
            prefix: format!("{}.", unique("parts")),
        }
    }

    /// (cluster name, replica address) of every replica.
    fn replicas(&self) -> Vec<(String, String)> {
        self.clusters
            .iter()
            .zip(&self.names)
            .flat_map(|(c, n)| c.replicas.iter().map(|r| (n.clone(), r.address())))
            .collect()
    }

    /// Writer, reader and processor config; `processor` is the [processor] section's body.
    fn config_toml(&self, processor: &str) -> String {
        let mut clusters = String::new();
        for (c, name) in self.clusters.iter().zip(&self.names) {
            let replicas: Vec<String> = c
                .replicas
                .iter()
                .map(|r| format!("\"{}\"", r.url()))
                .collect();
            clusters += &format!(
                "[[cluster]]\nname = \"{name}\"\nprimary = \"{}\"\nreplicas = [{}]\n\n",
                c.primary.url(),
                replicas.join(", ")
            );
        }
        format!(
            r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = {PARTITIONS}

{clusters}
[writer]
interval = "10ms"
listen = "127.0.0.1:{wport}"

[reader]
listen = "127.0.0.1:{rport}"
group = "readers"

[processor]
group = "processors"
listen = "127.0.0.1:{pport}"
windows = ["1s"]
allowed_lateness = "{LATENESS_US}us"
# Silent replicas' last windows close soon after the writer stops, so every record's window
# is flushed and every offset can be committed.
idle_close = "1500ms"
{processor}
"#,
            brokers = self.broker.brokers(),
            prefix = self.prefix,
            wport = free_port(),
            rport = free_port(),
            pport = free_port(),
        )
    }

    fn config(&self) -> Config {
        Config::from_toml_with_env(&self.config_toml(""), "test", Vec::new())
            .expect("test config is valid")
    }

    fn topic(&self, suffix: &str) -> String {
        format!("{}{}", self.prefix, suffix)
    }

    fn consumer(&self, suffix: &str) -> StreamConsumer {
        crate::common::observer(&self.broker, &self.topic(suffix))
    }

    /// Per partition of `suffix`: (end offset, what `group` committed).
    async fn offsets(&self, suffix: &str, group: &str) -> Vec<(i64, Option<i64>)> {
        // librdkafka's calls block: the runtime's other tasks move to its other thread.
        tokio::task::block_in_place(|| {
            self.broker
                .group_offsets(group, &self.topic(suffix), PARTITIONS)
                .unwrap()
        })
    }

    /// Until `group` has committed the end of every partition of `suffix` that holds records;
    /// returns how many do.
    async fn all_committed(&self, suffix: &str, group: &str) -> usize {
        let got = wait_for(
            &format!("{group}: every partition of {suffix} committed to its end"),
            Duration::from_secs(30),
            || async {
                let o = self.offsets(suffix, group).await;
                o.iter()
                    .all(|(high, c)| *high == 0 || *c == Some(*high))
                    .then_some(o)
            },
        )
        .await;
        match got {
            Ok(o) => o.iter().filter(|(high, _)| *high > 0).count(),
            Err(e) => panic!("{e}; now {:?}", self.offsets(suffix, group).await),
        }
    }
}

/// Cluster names `a<i>`, `b<j>` (the smallest that fit): the clusters' heartbeat keys on
/// different partitions, and the four replica keys on at least three partitions; if `apart`,
/// both in each half of the partitions.
fn pick_names(clusters: &[Cluster; 2], apart: bool) -> [String; 2] {
    let replica_parts = |name: &str, c: &Cluster| -> Vec<i32> {
        c.replicas
            .iter()
            .map(|r| partition_of(&format!("{name}/{}", r.address())))
            .collect()
    };
    for i in 0..200 {
        for j in 0..200 {
            let (a, b) = (format!("a{i}"), format!("b{j}"));
            let (pa, pb) = (partition_of(&a), partition_of(&b));
            let split = if apart {
                (pa < PARTITIONS / 2) != (pb < PARTITIONS / 2)
            } else {
                pa != pb
            };
            let mut used: BTreeSet<i32> = replica_parts(&a, &clusters[0]).into_iter().collect();
            used.extend(replica_parts(&b, &clusters[1]));
            // Two processors of one group each get replicas.
            let halves = used.iter().any(|p| *p < PARTITIONS / 2)
                && used.iter().any(|p| *p >= PARTITIONS / 2);
            if split && used.len() >= 3 && (halves || !apart) {
                return [a, b];
            }
        }
    }
    panic!("no cluster names spread the keys");
}

/// Every record of a topic with its partition, collected in the background in the order each
/// partition delivers them.
#[derive(Clone, Default)]
struct Collected<R>(Arc<Mutex<Vec<(i32, R)>>>);

impl<R: millilag_core::events::Record + Clone + Send + 'static> Collected<R> {
    fn start(consumer: StreamConsumer) -> (Collected<R>, tokio::task::JoinHandle<()>) {
        let c = Collected(Arc::default());
        let sink = c.clone();
        let h = tokio::spawn(async move {
            loop {
                let Ok(m) = consumer.recv().await else {
                    continue;
                };
                let r = R::decode(m.payload().unwrap_or_default()).expect("record decodes");
                sink.0.lock().unwrap().push((m.partition(), r));
            }
        });
        (c, h)
    }

    fn snapshot(&self) -> Vec<(i32, R)> {
        self.0.lock().unwrap().clone()
    }

    async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[(i32, R)]) -> bool,
    ) -> Vec<(i32, R)> {
        wait_for(what, timeout, || async {
            let s = self.snapshot();
            pred(&s).then_some(s)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Each replica's ok records, in the order its partition holds them.
fn by_replica(rs: &[(i32, ReplicaDelay)]) -> BTreeMap<(String, String), Vec<(i32, ReplicaDelay)>> {
    let mut m: BTreeMap<(String, String), Vec<(i32, ReplicaDelay)>> = BTreeMap::new();
    for (p, r) in rs {
        if r.status == MeasureStatus::Ok {
            m.entry((r.cluster.clone(), r.replica.clone()))
                .or_default()
                .push((*p, r.clone()));
        }
    }
    m
}

/// Each replica's records on the partition its key names, seq strictly increasing, none missing
/// from its first to `last[cluster]`. Returns each replica's (first seq, commit times by seq).
fn assert_ordered_and_complete(
    rs: &[(i32, ReplicaDelay)],
    replicas: &[(String, String)],
    last: &BTreeMap<String, i64>,
) -> BTreeMap<(String, String), BTreeMap<i64, i64>> {
    let by = by_replica(rs);
    let mut out = BTreeMap::new();
    for key in replicas {
        let mine = by.get(key).unwrap_or_else(|| panic!("{key:?} measured"));
        let want = partition_of(&format!("{}/{}", key.0, key.1));
        assert!(
            mine.iter().all(|(p, _)| *p == want),
            "{key:?}: every record on partition {want}"
        );
        let seqs: Vec<i64> = mine.iter().map(|(_, r)| r.seq).collect();
        let behind: Vec<&ReplicaDelay> = mine
            .windows(2)
            .filter(|w| w[1].1.seq <= w[0].1.seq)
            .map(|w| &w[1].1)
            .collect();
        // Seen: the writer's first heartbeat or two, published as an upper bound ~1 s later
        // (the reader was consuming before the writer began; it learns of those heartbeats
        // only from their events). Anything else out of order is a failure.
        let first_seq = seqs.iter().min().copied().unwrap_or(0);
        assert!(
            behind
                .iter()
                .all(|r| r.upper_bound && r.seq < first_seq + 100),
            "{key:?}: seq increasing on its partition; out of order: {behind:?}"
        );
        if !behind.is_empty() {
            eprintln!(
                "{key:?}: published after later seqs (upper bounds at the writer's start): {:?}",
                behind.iter().map(|r| r.seq).collect::<Vec<_>>()
            );
        }
        let (first, end) = (first_seq, last[&key.0]);
        let distinct: BTreeSet<i64> = seqs.iter().copied().collect();
        assert_eq!(distinct.len(), seqs.len(), "{key:?}: no seq twice");
        assert_eq!(
            seqs.len() as i64,
            end - first + 1,
            "{key:?}: every heartbeat {first}..={end} measured once"
        );
        let times = mine
            .iter()
            .map(|(_, r)| (r.seq, r.committed_at_us))
            .collect();
        out.insert(key.clone(), times);
    }
    out
}

/// For every replica, each whole second from its first measured heartbeat's to the last its
/// watermark closed has exactly one window point, counting each heartbeat once, none missing.
/// Returns the number of windows checked.
fn assert_windows_complete(
    windows: &[(i32, DelayWindow)],
    measured: &BTreeMap<(String, String), BTreeMap<i64, i64>>,
) -> usize {
    let mut checked = 0;
    for ((cluster, replica), times) in measured {
        let first = *times.values().next().unwrap();
        let last = *times.values().next_back().unwrap();
        let (from, to) = ((first / S + 1) * S, ((last - LATENESS_US) / S - 1) * S);
        assert!(
            from < to,
            "{cluster}/{replica}: at least two windows to check"
        );
        let points: Vec<&DelayWindow> = windows
            .iter()
            .map(|(_, w)| w)
            .filter(|w| &w.cluster == cluster && &w.replica == replica)
            .collect();
        for start in (from / S..=to / S).map(|s| s * S) {
            let here: Vec<&&DelayWindow> = points
                .iter()
                .filter(|w| w.window_start_us == start)
                .collect();
            assert_eq!(
                here.len(),
                1,
                "{cluster}/{replica} {start}: one point: {here:?}"
            );
            let heartbeats = times
                .values()
                .filter(|t| **t >= start && **t < start + S)
                .count();
            assert_eq!(
                (here[0].count, here[0].missing),
                (heartbeats as i64, 0),
                "{cluster}/{replica} window {start}: every heartbeat counted once"
            );
            checked += 1;
        }
    }
    checked
}

/// The primary's last heartbeat seq, per cluster name.
async fn last_seqs(two: &Two) -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    for (c, n) in two.clusters.iter().zip(&two.names) {
        m.insert(n.clone(), c.heartbeat_seq().await.unwrap());
    }
    m
}

/// Three seconds of heartbeats on every replica, then `writer` stops and the reader(s) measure
/// what it announced. Returns every record so far and each cluster's last seq.
async fn three_seconds_then_all_measured(
    two: &Two,
    delays: &Collected<ReplicaDelay>,
    replicas: &[(String, String)],
    writer: crate::common::Pipeline,
) -> (Vec<(i32, ReplicaDelay)>, BTreeMap<String, i64>) {
    let first = delays
        .until("every replica measured", Duration::from_secs(60), |rs| {
            by_replica(rs).len() == replicas.len()
        })
        .await;
    let start: BTreeMap<String, i64> = first
        .iter()
        .map(|(_, r)| (r.cluster.clone(), r.seq))
        .collect();
    let target: BTreeMap<String, i64> = start.iter().map(|(c, s)| (c.clone(), s + 300)).collect();
    delays
        .until(
            "3 s of heartbeats on every replica",
            Duration::from_secs(60),
            |rs| reached(rs, replicas, &target),
        )
        .await;
    writer.stop().await;
    let last = last_seqs(two).await;
    let rs = delays
        .until(
            "every announced heartbeat measured",
            Duration::from_secs(30),
            |rs| reached(rs, replicas, &last),
        )
        .await;
    (rs, last)
}

/// Until every replica has an ok record for its cluster's seq `last[cluster]`.
fn reached(
    rs: &[(i32, ReplicaDelay)],
    replicas: &[(String, String)],
    last: &BTreeMap<String, i64>,
) -> bool {
    let by = by_replica(rs);
    replicas.iter().all(|k| {
        by.get(k)
            .is_some_and(|v| v.iter().any(|(_, r)| r.seq >= last[&k.0]))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_six_partitions_keep_order_commit_every_partition_and_complete_windows() {
    use crate::common::Pipeline;
    let two = Two::start(false).await;
    let config = two.config();
    crate::common::create_topics(&config).await;
    let replicas = two.replicas();
    let (delays, _d) = Collected::<ReplicaDelay>::start(two.consumer(topics::REPLICA_DELAY));
    let (windows, _w) = Collected::<DelayWindow>::start(two.consumer(topics::DELAY_WINDOW));
    let processor = Pipeline::processor(&config);
    let reader = Pipeline::start(&config, false, true);
    let writer = Pipeline::start(&config, true, false);

    let (rs, last) = three_seconds_then_all_measured(&two, &delays, &replicas, writer).await;
    reader.stop().await;

    let measured = assert_ordered_and_complete(&rs, &replicas, &last);
    let parts: BTreeSet<i32> = rs.iter().map(|(p, _)| *p).collect();
    // Every partition holding records committed to its end: the reader's on heartbeat-set (one
    // per cluster), the processor's on replica-delay once the last windows closed.
    let readers = two.all_committed(topics::HEARTBEAT_SET, "readers").await;
    assert_eq!(
        readers, 2,
        "heartbeat-set: each cluster on its own partition"
    );
    let processors = two.all_committed(topics::REPLICA_DELAY, "processors").await;
    assert_eq!(
        processors,
        parts.len(),
        "replica-delay partitions committed"
    );
    processor.stop().await;
    let checked = assert_windows_complete(&windows.snapshot(), &measured);
    eprintln!(
        "partitions: {} replicas of 2 clusters on replica-delay partitions {parts:?}, every seq to {last:?} in order and complete; {checked} one-second windows complete",
        replicas.len()
    );
}

mod groups;
