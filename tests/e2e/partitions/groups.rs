//! Two readers and two processors in one consumer group: Tansu 0.6 splits the partitions
//! between live members, and each half is measured and windowed completely.

use super::*;
use millilag_core::events::{DelayWindow, ReplicaDelay};
use millilag_core::kafka::topics;
use millilag_harness::process::Guard;
use millilag_harness::{free_port, wait_for};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Until both processors own partitions of replica-delay, all of them between the two
/// (`millilag_processor_assigned_partitions`): Tansu 0.6 rebalanced as the second joined.
async fn until_split(listens: &[String]) -> Vec<i64> {
    use crate::common::{http_get, metric};
    let got = wait_for(
        "two processors sharing replica-delay's partitions",
        Duration::from_secs(30),
        || async {
            let mut owned = Vec::new();
            for l in listens {
                let (_, body) = http_get(l, "/metrics").await?;
                owned.push(metric(&body, "millilag_processor_assigned_partitions")? as i64);
            }
            (owned.iter().all(|n| *n > 0) && owned.iter().sum::<i64>() == PARTITIONS as i64)
                .then_some(owned)
        },
    )
    .await;
    got.unwrap_or_else(|e| panic!("{e}"))
}

const BIN: &str = env!("CARGO_BIN_EXE_millilag");

/// `millilag <service>` as a child process, its log in `dir`.
fn spawn(
    service: &str,
    config: &std::path::Path,
    dir: &std::path::Path,
    name: &str,
    env: &[(&str, String)],
) -> Guard {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg(service).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Guard::spawn(name, cmd, &dir.join(format!("{name}.log"))).unwrap()
}

/// SIGTERM, and a clean exit (final commit included).
fn stop(mut g: Guard) {
    g.signal(libc::SIGTERM);
    let status = g.wait();
    assert!(
        status.is_some_and(|s| s.success()),
        "{} stops cleanly: {status:?}; log:\n{}",
        g.name(),
        g.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_readers_and_two_processors_in_one_group_share_the_partitions_and_miss_nothing() {
    use crate::common::{http_get, metric, Pipeline};
    let two = Two::start(true).await;
    let config = two.config();
    crate::common::create_topics(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("millilag.toml");
    std::fs::write(&path, two.config_toml("")).unwrap();
    let replicas = two.replicas();
    let (delays, _d) = Collected::<ReplicaDelay>::start(two.consumer(topics::REPLICA_DELAY));
    let (windows, _w) = Collected::<DelayWindow>::start(two.consumer(topics::DELAY_WINDOW));

    // Two of each in one group, before any heartbeat: Tansu 0.6 rebalances as the second
    // member joins and the range assignor gives each half of the partitions.
    let listen = |what: &str| {
        let addr = format!("127.0.0.1:{}", free_port());
        (format!("MILLILAG_{what}__LISTEN"), addr)
    };
    // The readers first: their group has settled by the time the processors' has (Tansu
    // showed no members through DescribeGroups, so the processors' metric tells the split).
    let mut readers = Vec::new();
    for i in 1..=2 {
        let (k, v) = listen("READER");
        let id = ("MILLILAG_READER__READER_ID", format!("reader-{i}"));
        readers.push(spawn(
            "reader",
            &path,
            dir.path(),
            &format!("reader-{i}"),
            &[(&k, v), id],
        ));
    }
    let mut processors = Vec::new();
    let mut processor_listen = Vec::new();
    for i in 1..=2 {
        let (k, v) = listen("PROCESSOR");
        processor_listen.push(v.clone());
        processors.push(spawn(
            "processor",
            &path,
            dir.path(),
            &format!("processor-{i}"),
            &[(&k, v)],
        ));
    }
    let by_processor = until_split(&processor_listen).await;
    let writer = Pipeline::start(&config, true, false);

    let (rs, last) = three_seconds_then_all_measured(&two, &delays, &replicas, writer).await;
    for r in readers {
        stop(r);
    }
    let measured = assert_ordered_and_complete(&rs, &replicas, &last);

    // Each cluster measured by the one reader owning its heartbeat-set partition.
    let mut measured_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, r) in &rs {
        measured_by
            .entry(r.cluster.clone())
            .or_default()
            .insert(r.reader_id.clone());
    }
    let ids: BTreeSet<&String> = measured_by.values().flatten().collect();
    assert!(
        measured_by.values().all(|ids| ids.len() == 1) && ids.len() == 2,
        "each cluster measured by one reader, the two by different ones: {measured_by:?}"
    );
    assert_eq!(two.all_committed(topics::HEARTBEAT_SET, "readers").await, 2);

    // Each processor consumed its half, nothing twice, and every window is complete.
    let parts = two.all_committed(topics::REPLICA_DELAY, "processors").await;
    let mut consumed = Vec::new();
    let mut late = Vec::new();
    for l in &processor_listen {
        let (_, body) = http_get(l, "/metrics").await.expect("processor /metrics");
        consumed.push(metric(&body, "millilag_processor_records_total").unwrap_or(0.0) as usize);
        late.extend(
            body.lines()
                .filter(|l| l.contains("late"))
                .map(String::from),
        );
    }
    let logs: Vec<std::path::PathBuf> = processors
        .iter()
        .map(|p| p.log_path().to_path_buf())
        .collect();
    for p in processors {
        stop(p);
    }
    assert!(
        consumed.iter().all(|n| *n > 0),
        "both processors consumed: {consumed:?} (partitions owned {by_processor:?})"
    );
    let total: i64 = two
        .offsets(topics::REPLICA_DELAY, "processors")
        .await
        .iter()
        .map(|(high, _)| high)
        .sum();
    assert_eq!(
        consumed.iter().sum::<usize>() as i64,
        total,
        "every record consumed once"
    );
    let all_windows = windows.snapshot();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_windows_complete(&all_windows, &measured)
    }))
    .unwrap_or_else(|failure| {
        // This check failed now and then under load (stop 19, stop 20) and passed alone:
        // what the next look needs, printed before the temp dir goes.
        eprintln!("late-record metrics: {late:#?}");
        let first_seq = rs.iter().map(|(_, r)| r.seq).min().unwrap_or(0);
        for (_, r) in rs.iter().filter(|(_, r)| r.seq <= first_seq + 150) {
            eprintln!(
                "record {}/{} seq {} {:?} upper_bound {} committed {} observed {} reader {}",
                r.cluster,
                r.replica,
                r.seq,
                r.status,
                r.upper_bound,
                r.committed_at_us,
                r.observed_at_us,
                r.reader_id
            );
        }
        for (p, w) in &all_windows {
            eprintln!(
                "window p{p} {}/{} {} len {} count {} missing {}",
                w.cluster, w.replica, w.window_start_us, w.window_us, w.count, w.missing
            );
        }
        for log in &logs {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("--- {}:\n{text}", log.display());
        }
        std::panic::resume_unwind(failure)
    });
    eprintln!(
        "groups: readers measured {measured_by:?}; processors owning {by_processor:?} partitions consumed {consumed:?} of {} records on {parts} partitions; {checked} one-second windows complete",
        total
    );
}
