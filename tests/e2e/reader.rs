//! The reader against real replication: steady state, accuracy against the replicas' own apply
//! times under injected stalls (both methods), DB load, failures and poison records.

use crate::common::{create_topics, next_record, service_sessions, Collected, Env, Pipeline};
use millilag_core::events::{
    DeadLetter, HeartbeatSet, MeasureMethod, MeasureStatus, Record, ReplicaDelay,
};
use millilag_core::kafka::topics;
use mysql_async::prelude::*;
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

fn for_replica<'a>(
    rs: &'a [ReplicaDelay],
    addr: &str,
) -> impl Iterator<Item = &'a ReplicaDelay> + 'a {
    let addr = addr.to_string();
    rs.iter().filter(move |r| r.replica == addr)
}

async fn questions(env: &Env, i: usize) -> i64 {
    let mut c = env.cluster.replica(i).admin().await.unwrap();
    let row: (String, String) = c
        .query_first("SHOW GLOBAL STATUS LIKE 'Questions'")
        .await
        .unwrap()
        .unwrap();
    row.1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_one_record_per_replica_per_heartbeat_with_one_query_each() {
    let env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", "method = \"gtid-wait\"", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let p = Pipeline::start(&config, true, true);
    let addrs: Vec<String> = env.cluster.replicas.iter().map(|r| r.address()).collect();

    // Warm up, then count the replicas' own statement counters over 200 heartbeats.
    got.until("first measurements", Duration::from_secs(30), |rs| {
        rs.len() >= 20
    })
    .await;
    let q0 = [questions(&env, 0).await, questions(&env, 1).await];
    let start_seq = got.snapshot().iter().map(|r| r.seq).max().unwrap();
    let end_seq = start_seq + 200;
    let rs = got
        .until(
            "200 more heartbeats on both replicas",
            Duration::from_secs(60),
            |rs| {
                addrs
                    .iter()
                    .all(|a| for_replica(rs, a).any(|r| r.seq >= end_seq))
            },
        )
        .await;
    let q1 = [questions(&env, 0).await, questions(&env, 1).await];
    // The default, one wait per replica beside the control connection: 2 sessions (the writer
    // has none on replicas).
    for (i, addr) in addrs.iter().enumerate() {
        let held = service_sessions(&env.cluster.replicas[i]).await;
        assert!(
            (1..=2).contains(&held),
            "{addr}: {held} sessions, the reader says 2"
        );
    }
    p.stop().await;

    for (i, addr) in addrs.iter().enumerate() {
        let mine: BTreeMap<i64, &ReplicaDelay> = for_replica(&rs, addr)
            .filter(|r| r.seq > start_seq && r.seq <= end_seq)
            .map(|r| (r.seq, r))
            .collect();
        assert_eq!(mine.len(), 200, "{addr}: one record per heartbeat");
        assert_eq!(
            for_replica(&rs, addr)
                .filter(|r| r.seq > start_seq && r.seq <= end_seq)
                .count(),
            200,
            "{addr}: no duplicates"
        );
        let exact = mine.values().filter(|r| !r.upper_bound).count();
        for r in mine.values() {
            assert_eq!(r.status, MeasureStatus::Ok, "{r:?}");
            assert_eq!(r.method, MeasureMethod::GtidWait);
            assert!(r.delay_us >= 0 && r.delay_us < 1_000_000, "{r:?}");
        }
        // Waits armed before the heartbeat exists: the replica's own wake-up times it, so
        // steady state is measured exactly, not bounded by the Kafka transit.
        assert!(exact >= 190, "{addr}: only {exact}/200 exact measurements");
        // The replica's own count of statements, minus our two SHOW STATUS: one GTID wait per
        // heartbeat (plus at most prearm_depth armed for heartbeats not yet written).
        // Questions counts statements as they arrive: q1's own SHOW STATUS, and the waits armed
        // ahead (prearm_depth, default 1) for heartbeats after the window.
        // A reader descheduled for more than prearm_depth intervals on this shared 2-core box
        // catches up with a read or two (measured 1.01-1.045 under load); two queries per
        // heartbeat, or a read per heartbeat, would be far above.
        let per_heartbeat = (q1[i] - q0[i] - 1 - 2) as f64 / 200.0;
        assert!(
            per_heartbeat <= 1.06,
            "{addr}: {per_heartbeat:.3} queries per heartbeat"
        );
        let mut d: Vec<i64> = mine.values().map(|r| r.delay_us).collect();
        d.sort();
        eprintln!(
            "steady state {addr}: delay p50 {} us p99 {} us, exact {exact}/200, {per_heartbeat:.3} queries/heartbeat",
            d[d.len() / 2],
            d[d.len() * 99 / 100]
        );
    }
}

/// Stalls replica 1 for each duration, with steady state in between, and returns every record
/// with the replica's true apply delay.
async fn stalled_run(reader: &str, stalls: &[u64]) -> (Env, Vec<(ReplicaDelay, i64)>) {
    let env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", reader, "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let writer = Pipeline::start(&config, true, false);
    env.cluster
        .install_truth("millilag", "heartbeat")
        .await
        .unwrap();
    let spawned = millilag_core::clock::now_us();
    let reader = Pipeline::start(&config, false, true);
    // Heartbeats committed before the reader was consuming (it joins its group, then works
    // through the backlog) are already visible when it looks: correctly upper bounds, and not
    // what this test is about. It is live once it measures heartbeats written after its start.
    got.until(
        "the reader measuring live heartbeats",
        Duration::from_secs(30),
        |rs| rs.iter().filter(|r| r.committed_at_us > spawned).count() >= 10,
    )
    .await;
    let reader_started = millilag_core::clock::now_us();
    for &ms in stalls {
        env.cluster
            .stall(0, Duration::from_millis(ms))
            .await
            .unwrap();
        // Steady state between stalls, so each stall's catch-up is over before the next.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let last = got.snapshot().iter().map(|r| r.seq).max().unwrap();
    let addrs: Vec<String> = env.cluster.replicas.iter().map(|r| r.address()).collect();
    let rs = got
        .until(
            "records past the last stall",
            Duration::from_secs(60),
            |rs| {
                addrs
                    .iter()
                    .all(|a| for_replica(rs, a).any(|r| r.seq >= last))
            },
        )
        .await;
    writer.stop().await;
    reader.stop().await;
    // True delays from the triggers alone: replica row change - primary row change.
    let truths = [
        env.cluster.true_delays(0, 0).await.unwrap(),
        env.cluster.true_delays(1, 0).await.unwrap(),
    ];
    let with_truth = rs
        .into_iter()
        .filter(|r| r.committed_at_us > reader_started)
        .filter_map(|r| {
            let i = addrs.iter().position(|a| *a == r.replica)?;
            Some((r.clone(), *truths[i].get(&r.seq)?))
        })
        .collect();
    (env, with_truth)
}

fn percentile(v: &mut [i64], p: f64) -> i64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Checks measured against true delays and prints the accuracy table.
/// How close measured delays must be to the replicas' apply times.
struct Tolerance {
    p50_us: i64,
    p90_us: i64,
    /// For the longest heartbeat of each stall.
    stall_peak_us: i64,
    max_us: i64,
}

fn check_accuracy(
    method: &str,
    env: &Env,
    rs: &[(ReplicaDelay, i64)],
    stalls: &[u64],
    tolerance: &Tolerance,
) {
    let stalled = env.cluster.replica(0).address();
    let other = env.cluster.replica(1).address();
    let exact: Vec<&(ReplicaDelay, i64)> = rs
        .iter()
        .filter(|(r, _)| r.status == MeasureStatus::Ok && !r.upper_bound)
        .collect();
    let ub: Vec<i64> = rs
        .iter()
        .filter(|(r, _)| r.upper_bound)
        .map(|(r, _)| r.seq)
        .collect();
    let not_ok = rs
        .iter()
        .filter(|(r, _)| r.status != MeasureStatus::Ok)
        .count();
    assert!(
        exact.len() as f64 >= 0.9 * rs.len() as f64,
        "{method}: too few exact measurements: {} of {}, {not_ok} not ok, upper bounds at seqs {ub:?}",
        exact.len(),
        rs.len()
    );
    let mut errs: Vec<i64> = exact.iter().map(|(r, t)| (r.delay_us - t).abs()).collect();
    let (p50, p99, max) = (
        percentile(&mut errs, 0.5),
        percentile(&mut errs, 0.99),
        *errs.last().unwrap(),
    );
    eprintln!(
        "accuracy {method}: {} measurements, abs error p50 {p50} us, p99 {p99} us, max {max} us",
        exact.len()
    );
    for &ms in stalls {
        // The heartbeats committed during this stall: true delays between 0.2x and 1.2x it.
        let during: Vec<&&(ReplicaDelay, i64)> = exact
            .iter()
            .filter(|(r, t)| r.replica == stalled && *t > ms as i64 * 200 && *t < ms as i64 * 1_200)
            .collect();
        let worst = during
            .iter()
            .map(|(r, t)| (r.delay_us - t).abs())
            .max()
            .unwrap_or(0);
        let top = during.iter().map(|(r, t)| (*t, r.delay_us)).max();
        eprintln!("  stall {ms:>5} ms: {} heartbeats, longest true/measured {top:?} us, worst abs error {worst} us", during.len());
        assert!(
            !during.is_empty(),
            "{method}: the {ms} ms stall was observed"
        );
        let (longest_truth, longest_measured) = top.unwrap();
        assert!(
            longest_truth > ms as i64 * 800,
            "{method}: the {ms} ms stall shows as ~{ms} ms"
        );
        assert!(
            (longest_measured - longest_truth).abs() <= tolerance.stall_peak_us,
            "{method}: {ms} ms stall peak measured {longest_measured} us, true {longest_truth} us"
        );
    }
    let mut worst: Vec<&&(ReplicaDelay, i64)> = exact.iter().collect();
    worst.sort_by_key(|(r, t)| -(r.delay_us - t).abs());
    for (r, t) in worst.iter().take(5) {
        eprintln!(
            "  worst: {} seq {} measured {} true {t} uncertainty {} queries {}",
            r.replica, r.seq, r.delay_us, r.uncertainty_us, r.queries
        );
    }
    // Heartbeats resolved by one sighting (a catch-up burst: many seen by the same wait or read)
    // share its error; counted once, one late sighting is one error, not eighty.
    let mut by_sighting: HashMap<(&str, i64), i64> = HashMap::new();
    for (r, t) in &exact {
        let e = by_sighting
            .entry((r.replica.as_str(), r.committed_at_us + r.delay_us))
            .or_default();
        *e = (*e).max((r.delay_us - t).abs());
    }
    let mut sighting_errs: Vec<i64> = by_sighting.into_values().collect();
    let p90 = percentile(&mut sighting_errs, 0.9);
    eprintln!(
        "  {} distinct sightings, abs error p90 {p90} us",
        sighting_errs.len()
    );
    assert!(p50 <= tolerance.p50_us, "{method}: abs error p50 {p50} us");
    assert!(
        p90 <= tolerance.p90_us,
        "{method}: abs error p90 {p90} us (per sighting)"
    );
    assert!(max <= tolerance.max_us, "{method}: abs error max {max} us");
    // Its own lag, not the stall's: on two shared cores the stalled replica's catch-up burst can
    // slow it briefly (the truth shows it too, and the checks above hold it to its truth).
    let mut other_delays: Vec<i64> = rs
        .iter()
        .filter(|(r, _)| r.replica == other)
        .map(|(r, _)| r.delay_us)
        .collect();
    let other_p90 = percentile(&mut other_delays, 0.9);
    assert!(
        other_p90 < 20_000,
        "{method}: the other replica is unaffected (p90 {other_p90} us)"
    );
}

// Tolerance. The truth is the replica's trigger at row apply minus the primary's at row change;
// visibility follows at the replica's commit,
// normally tens of microseconds later (flush at commit 2), and we see it one loopback hop later.
// On this 2-core box three mariadbd, Tansu, writer, reader and the test share the cores, and a
// thread descheduled for a few milliseconds anywhere (the replica between apply and commit, the
// primary before stamping the commit, the reader before stamping the return) shows as error in
// a few percent of heartbeats. So the bounds are on the distribution: a median within 1 ms
// (an off-by-one heartbeat attribution would be 10 ms everywhere), 90% within 3 ms, each
// stall's peak within 5 ms, nothing beyond 25 ms. The benchmark reports the full figures.
const TOLERANCE: Tolerance = Tolerance {
    p50_us: 1_000,
    p90_us: 3_000,
    stall_peak_us: 5_000,
    max_us: 25_000,
};
const STALLS_MS: [u64; 3] = [50, 200, 1000];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtid_wait_accuracy_against_apply_time_under_stalls() {
    let (env, rs) = stalled_run("method = \"gtid-wait\"", &STALLS_MS).await;
    assert!(rs.iter().all(|(r, _)| r.method == MeasureMethod::GtidWait));
    check_accuracy("gtid-wait", &env, &rs, &STALLS_MS, &TOLERANCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_accuracy_against_apply_time_under_stalls() {
    // Poll backs off to 2 ms while a heartbeat is late (default 20 ms): a resumed replica is
    // then seen within 2 ms, which is what millisecond accuracy in stalls costs in poll mode.
    let (env, rs) = stalled_run("method = \"poll\"\npoll_max_interval = \"2ms\"", &STALLS_MS).await;
    assert!(rs.iter().all(|(r, _)| r.method == MeasureMethod::Poll));
    check_accuracy("poll", &env, &rs, &STALLS_MS, &TOLERANCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_is_reported_unreachable_then_measured_again() {
    let mut env = Env::start(2).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let p = Pipeline::start(&config, true, true);
    let victim = env.cluster.replica(0).address();
    let other = env.cluster.replica(1).address();
    got.until("first measurements", Duration::from_secs(30), |rs| {
        rs.len() >= 20
    })
    .await;
    env.cluster.replicas[0].kill();
    let rs = got
        .until(
            "replica_unreachable records",
            Duration::from_secs(30),
            |rs| {
                for_replica(rs, &victim)
                    .filter(|r| r.status == MeasureStatus::ReplicaUnreachable)
                    .count()
                    >= 10
            },
        )
        .await;
    let down_from = rs
        .iter()
        .filter(|r| r.status == MeasureStatus::ReplicaUnreachable)
        .map(|r| r.seq)
        .min()
        .unwrap();
    env.cluster.replicas[0].restart().await.unwrap();
    let back = got
        .until(
            "ok again after the restart",
            Duration::from_secs(60),
            |rs| {
                for_replica(rs, &victim)
                    .any(|r| r.status == MeasureStatus::Ok && r.seq > down_from + 10)
            },
        )
        .await;
    p.stop().await;
    // The other replica was measured throughout.
    let other_bad = for_replica(&back, &other)
        .filter(|r| r.status != MeasureStatus::Ok)
        .count();
    assert_eq!(other_bad, 0, "a dead replica never delays the others");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_replication_is_reported_as_such() {
    let env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "timeout = \"1s\"", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let p = Pipeline::start(&config, true, true);
    let first = got
        .until("first measurements", Duration::from_secs(30), |rs| {
            rs.len() >= 20
        })
        .await;
    // Heartbeats from before the reader was measuring may pass their 1 s deadline while it
    // joins its group and connects (rightly timeouts): not what this test is about.
    let measuring_from = first.iter().map(|r| r.committed_at_us).max().unwrap();
    let mut admin = env.cluster.replica(0).admin().await.unwrap();
    admin.query_drop("STOP SLAVE").await.unwrap();
    let stopped = got
        .until(
            "replication_stopped records",
            Duration::from_secs(30),
            |rs| {
                rs.iter()
                    .filter(|r| r.status == MeasureStatus::ReplicationStopped)
                    .count()
                    >= 5
            },
        )
        .await;
    // Stamped before START SLAVE is sent: a deadline that falls while it is on its way may
    // already find replication running, and is then rightly a timeout.
    let restarted_at = millilag_core::clock::now_us();
    admin.query_drop("START SLAVE").await.unwrap();
    let last_stopped = stopped
        .iter()
        .filter(|r| r.status == MeasureStatus::ReplicationStopped)
        .map(|r| r.seq)
        .max()
        .unwrap();
    got.until("ok after START SLAVE", Duration::from_secs(30), |rs| {
        rs.iter()
            .any(|r| r.status == MeasureStatus::Ok && r.seq > last_stopped + 5)
    })
    .await;
    p.stop().await;
    // Heartbeats still waiting when replication runs again and that pass their deadline before
    // the replica has caught up are rightly timeouts; none reported while it was stopped is.
    let timeouts = got
        .snapshot()
        .iter()
        .filter(|r| {
            r.status == MeasureStatus::Timeout
                && r.committed_at_us > measuring_from
                && r.observed_at_us < restarted_at
        })
        .count();
    assert_eq!(
        timeouts, 0,
        "a stopped replica is reported as stopped, not as slow"
    );
}

/// A stopping reader commits the heartbeats it measured and had acknowledged, without waiting
/// for those a stalled replica has not shown yet (it waited until its 5 s drain deadline every
/// time one was unmeasured: a 5 s gap in the records at each restart, enough for the processor's
/// measurements-stale rule). Those stay uncommitted, and the next reader measures them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_reader_commits_what_it_measured_and_leaves_a_stalled_replicas_heartbeats_to_the_next(
) {
    /// The reader's drain deadline (reader/mod.rs `SHUTDOWN_DRAIN`).
    const DRAIN: Duration = Duration::from_secs(5);
    let env = Env::start(2).await;
    // The default 30 s timeout: the stalled replica's heartbeats stay unreported meanwhile.
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let announced = env.consumer(topics::HEARTBEAT_SET);
    let writer = Pipeline::start(&config, true, false);
    let reader = Pipeline::start(&config, false, true);
    let (stalled, other) = (
        env.cluster.replica(0).address(),
        env.cluster.replica(1).address(),
    );
    let before = got
        .until("first measurements", Duration::from_secs(30), |rs| {
            rs.len() >= 20
        })
        .await;
    let measured_before = before.iter().map(|r| r.seq).max().unwrap();
    let mut admin = env.cluster.replica(0).admin().await.unwrap();
    admin.query_drop("STOP SLAVE SQL_THREAD").await.unwrap();
    let stalled_at = env.cluster.heartbeat_seq().await.unwrap();
    got.until(
        "the other replica measured past the stall",
        Duration::from_secs(30),
        |rs| for_replica(rs, &other).any(|r| r.seq > stalled_at + 20),
    )
    .await;
    let stopping = std::time::Instant::now();
    reader.stop().await;
    let took = stopping.elapsed();
    assert!(
        took < DRAIN,
        "the reader waited for heartbeats it was still measuring: {took:?}"
    );

    // What it committed: at most the first heartbeat the stalled replica has not shown, and
    // at least what both had measured before the stall.
    let group = config.reader.group.clone();
    let topic = env.topic(topics::HEARTBEAT_SET);
    let committed = tokio::task::block_in_place(|| env.broker.group_offsets(&group, &topic, 1))
        .unwrap()[0]
        .1
        .expect("the reader committed");
    let mut seq_at = BTreeMap::new();
    while !seq_at.contains_key(&committed) {
        let (h, offset) = next_record::<HeartbeatSet>(&announced, Duration::from_secs(30))
            .await
            .expect("heartbeat-set up to the committed offset");
        seq_at.insert(offset, h.seq);
    }
    let resumes_at = seq_at[&committed];
    assert!(
        resumes_at > measured_before && resumes_at <= stalled_at + 1,
        "committed up to seq {resumes_at}: measured before the stall {measured_before}, stalled at {stalled_at}"
    );

    // The next reader measures them once the replica applies again.
    admin.query_drop("START SLAVE SQL_THREAD").await.unwrap();
    let reader = Pipeline::start(&config, false, true);
    got.until(
        "the stalled replica's heartbeats measured by the next reader",
        Duration::from_secs(60),
        |rs| {
            (resumes_at..=stalled_at + 20).all(|seq| {
                for_replica(rs, &stalled).any(|r| r.seq == seq && r.status == MeasureStatus::Ok)
            })
        },
    )
    .await;
    reader.stop().await;
    writer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_heartbeat_topic_goes_to_dead_letter_and_measuring_continues() {
    let env = Env::start(1).await;
    let config = env.config("interval = \"10ms\"", "", "");
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let dead = env.consumer("dead-letter");
    let p = Pipeline::start(&config, true, true);
    got.until("first measurements", Duration::from_secs(30), |rs| {
        rs.len() >= 5
    })
    .await;
    let producer: FutureProducer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", env.broker.brokers())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&env.topic("heartbeat-set"))
                .key("main")
                .payload(b"not avro at all".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (dl, _) = next_record::<DeadLetter>(&dead, Duration::from_secs(30))
        .await
        .expect("a dead letter");
    assert_eq!(dl.topic, env.topic("heartbeat-set"));
    assert_eq!(
        dl.payload.as_deref().map(|p| p.as_ref()),
        Some(b"not avro at all".as_slice())
    );
    assert!(dl.reason.contains("single-object"), "{}", dl.reason);
    assert_eq!(dl.service, "reader");
    // Well-formed, but a number no writer announces (a commit time at the end of i64): refused
    // before any arithmetic, with the reason.
    let newest = got.snapshot().iter().map(|r| r.seq).max().unwrap();
    let wild = millilag_core::events::HeartbeatSet {
        cluster: "main".into(),
        primary: env.cluster.primary.address(),
        server_id: 1,
        writer_id: "wild".into(),
        writer_epoch: 1,
        seq: newest + 1_000_000,
        committed_at_us: i64::MAX,
        gtid: None,
        binlog_file: None,
        binlog_pos: None,
        interval_us: 10_000,
        commit_rtt_us: 0,
    };
    producer
        .send(
            FutureRecord::to(&env.topic("heartbeat-set"))
                .key("main")
                .payload(&wild.encode().unwrap()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (dl, _) = next_record::<DeadLetter>(&dead, Duration::from_secs(30))
        .await
        .expect("a dead letter for the wild commit time");
    assert!(dl.reason.contains("commit time"), "{}", dl.reason);
    let after = got.snapshot().iter().map(|r| r.seq).max().unwrap();
    got.until("measuring continues", Duration::from_secs(30), |rs| {
        rs.iter().any(|r| r.seq > after + 20)
    })
    .await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_replica_is_measured_dropped_when_it_leaves_and_taken_back() {
    let env = Env::start(2).await;
    let (listed, unlisted) = (
        env.cluster.replica(0).address(),
        env.cluster.replica(1).address(),
    );
    // Only replica 0 is configured; replica 1 is known from the primary's SHOW SLAVE HOSTS.
    let toml = env
        .config_toml("interval = \"10ms\"", "discovery_interval = \"200ms\"", "")
        .replace(&format!(", \"{}\"", env.cluster.replica(1).url()), "")
        .replace("[[cluster]]", "[[cluster]]\ndiscover_replicas = true");
    assert!(!toml.contains(&env.cluster.replica(1).url()), "{toml}");
    let config = millilag_core::Config::from_toml_with_env(&toml, "test", Vec::new()).unwrap();
    create_topics(&config).await;
    let (got, _bg) = Collected::start(&env);
    let p = Pipeline::start(&config, true, true);

    let rs = got
        .until(
            "the unlisted replica measured",
            Duration::from_secs(30),
            |rs| for_replica(rs, &unlisted).any(|r| r.status == MeasureStatus::Ok),
        )
        .await;
    assert!(for_replica(&rs, &listed).any(|r| r.status == MeasureStatus::Ok));

    assert_eq!(replicas_gauge(&config).await, 2.0);

    // Replica 1 disconnects from the primary: it leaves SHOW SLAVE HOSTS and is no longer
    // measured (long before the 30 s timeout would report its heartbeats); what it still owed
    // is reported replication_stopped, so the reader's offsets move on; replica 0 goes on.
    let mut r1 = env.cluster.replica(1).admin().await.unwrap();
    // First its SQL thread (still connected, still listed), until replica 0 has measured 20
    // heartbeats replica 1 cannot have applied: those are owed when it goes.
    r1.query_drop("STOP SLAVE SQL_THREAD").await.unwrap();
    let stopped_at = env.cluster.heartbeat_seq().await.unwrap();
    let left_at = got.snapshot().len();
    got.until(
        "20 heartbeats measured on replica 0 only",
        Duration::from_secs(30),
        |rs| for_replica(rs, &listed).any(|r| r.seq > stopped_at + 20),
    )
    .await;
    r1.query_drop("STOP SLAVE").await.unwrap();
    millilag_harness::wait_for("replica 1 dropped", Duration::from_secs(10), || async {
        (replicas_gauge(&config).await == 1.0).then_some(())
    })
    .await
    .unwrap();
    let rs = got
        .until(
            "replica 1's owed heartbeats reported",
            Duration::from_secs(10),
            |rs| {
                let owed: Vec<i64> = for_replica(&rs[left_at.min(rs.len())..], &unlisted)
                    .filter(|r| r.status == MeasureStatus::ReplicationStopped)
                    .map(|r| r.seq)
                    .collect();
                (stopped_at + 2..=stopped_at + 20).all(|s| owed.contains(&s))
            },
        )
        .await;
    assert!(
        for_replica(&rs[left_at..], &listed).all(|r| r.status == MeasureStatus::Ok),
        "replica 0 unaffected"
    );
    // Its series are gone from /metrics (a churn of replicas must not grow them forever, nor
    // leave its last lag on a dashboard); replica 0's stay.
    let (_, body) = crate::common::http_get(&config.reader.listen.to_string(), "/metrics")
        .await
        .unwrap();
    assert!(
        !body.contains(&format!("replica=\"{unlisted}\"")),
        "no series left for the dropped replica"
    );
    assert!(body.contains(&format!(
        "millilag_replica_lag_seconds{{cluster=\"main\",replica=\"{listed}\"}}"
    )));

    // Back: discovered again and measured again.
    r1.query_drop("START SLAVE").await.unwrap();
    let back_from = got.snapshot().len();
    got.until("replica 1 measured again", Duration::from_secs(30), |rs| {
        rs[back_from.min(rs.len())..]
            .iter()
            .any(|r| r.replica == unlisted && r.status == MeasureStatus::Ok)
    })
    .await;
    assert_eq!(replicas_gauge(&config).await, 2.0);
    p.stop().await;
}

/// The reader's millilag_reader_replicas gauge for cluster main.
async fn replicas_gauge(config: &millilag_core::Config) -> f64 {
    let listen = config.reader.listen.to_string();
    let (_, body) = crate::common::http_get(&listen, "/metrics")
        .await
        .expect("reader /metrics");
    crate::common::metric(&body, "millilag_reader_replicas{cluster=\"main\"}").unwrap_or(0.0)
}
