//! Failures of the monitor's own parts. Active-active readers (DESIGN §5, §8): two reader groups
//! measure the same heartbeats and the processor de-duplicates them by (cluster, replica, seq);
//! SIGKILL one reader mid-run: the other's records keep every heartbeat measured, and every
//! window the processor publishes is complete (each heartbeat the writer announced counted once,
//! nothing missing). A broker outage: the writer keeps writing, and afterwards every heartbeat
//! is announced, measured and published.

use crate::common::{create_topics, next_record, Env};
use millilag_core::events::{DelayWindow, HeartbeatSet, MeasureStatus, ReplicaDelay};
use millilag_harness::free_port;
use millilag_harness::process::Guard;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_millilag");
const S: i64 = 1_000_000;
const LATENESS_US: i64 = 300_000;

fn spawn(service: &str, config: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Guard {
    let mut cmd = Command::new(BIN);
    cmd.arg(service).arg("--config").arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Guard::spawn(name, cmd, &dir.join(format!("{name}.log"))).unwrap()
}

fn spawn_reader(config: &Path, dir: &Path, id: &str) -> Guard {
    let group = format!("readers-{id}");
    let listen = format!("127.0.0.1:{}", free_port());
    spawn(
        "reader",
        config,
        dir,
        id,
        &[
            ("MILLILAG_READER__GROUP", &group),
            ("MILLILAG_READER__READER_ID", id),
            ("MILLILAG_READER__LISTEN", &listen),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_reader_of_an_active_active_pair_loses_no_heartbeat_and_no_window_point() {
    let env = Env::start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("millilag.toml");
    let processor = format!(
        r#"[processor]
windows = ["1s"]
allowed_lateness = "{}us"
group = "{}"
listen = "127.0.0.1:{}"
"#,
        LATENESS_US,
        crate::common::unique("processor"),
        free_port()
    );
    std::fs::write(
        &cfg_path,
        env.config_toml("interval = \"10ms\"", "", &processor),
    )
    .unwrap();
    create_topics(&env.config("", "", "")).await;
    let (heartbeats, delays, windows) = (
        env.consumer("heartbeat-set"),
        env.consumer("replica-delay"),
        env.consumer("delay-window"),
    );

    let mut writer = spawn("writer", &cfg_path, dir.path(), "writer", &[]);
    let mut a = spawn_reader(&cfg_path, dir.path(), "reader-a");
    let b = spawn_reader(&cfg_path, dir.path(), "reader-b");
    let processor = spawn("processor", &cfg_path, dir.path(), "processor", &[]);

    // seq -> readers that reported it ok.
    let mut measured: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    // Every record's (reader, status), for the failure message.
    let all: std::sync::Mutex<BTreeMap<i64, Vec<(String, MeasureStatus)>>> = Default::default();
    let collect = |r: ReplicaDelay, measured: &mut BTreeMap<i64, BTreeSet<String>>| {
        all.lock()
            .unwrap()
            .entry(r.seq)
            .or_default()
            .push((r.reader_id.clone(), r.status));
        if r.status == MeasureStatus::Ok {
            measured.entry(r.seq).or_default().insert(r.reader_id);
        }
    };
    let count_of = |m: &BTreeMap<i64, BTreeSet<String>>, id: &str| {
        m.values().filter(|ids| ids.contains(id)).count()
    };
    // Both readers in steady state: two seconds of heartbeats each.
    while count_of(&measured, "reader-a") < 200 || count_of(&measured, "reader-b") < 200 {
        let (r, _) = next_record::<ReplicaDelay>(&delays, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "both readers measure; logs:\n{}\n{}",
                    a.log_tail(10),
                    b.log_tail(10)
                )
            });
        collect(r, &mut measured);
    }
    let both_from = measured
        .iter()
        .find(|(_, ids)| ids.len() == 2)
        .map(|(s, _)| *s)
        .unwrap();
    a.kill();
    let killed_after = measured
        .iter()
        .rev()
        .find(|(_, ids)| ids.contains("reader-a"))
        .map(|(s, _)| *s)
        .unwrap();
    // Three more seconds of heartbeats, measured by reader-b alone.
    while measured.keys().next_back().copied().unwrap_or(0) < killed_after + 300 {
        let (r, _) = next_record::<ReplicaDelay>(&delays, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("reader-b goes on; log:\n{}", b.log_tail(10)));
        collect(r, &mut measured);
    }
    // SIGTERM: the writer announces everything it committed, then stops.
    writer.signal(libc::SIGTERM);
    assert!(writer.wait().is_some_and(|s| s.success()));

    // What the writer announced: seq -> commit time.
    let mut announced: BTreeMap<i64, i64> = BTreeMap::new();
    while let Some((h, _)) = next_record::<HeartbeatSet>(&heartbeats, Duration::from_secs(2)).await
    {
        announced.insert(h.seq, h.committed_at_us);
    }
    let last = *announced.keys().next_back().unwrap();
    // Records arrive in any order (each is published as soon as it is measured): wait for the
    // whole range, or until nothing more comes.
    while (both_from..=last).any(|s| !measured.contains_key(&s)) {
        match next_record::<ReplicaDelay>(&delays, Duration::from_secs(10)).await {
            Some((r, _)) => collect(r, &mut measured),
            None => break,
        }
    }

    // The gap: heartbeats from the first both measured to the last that no reader reported.
    let unmeasured: Vec<i64> = (both_from..=last)
        .filter(|s| !measured.contains_key(s))
        .collect();
    let after_kill = measured.range(killed_after + 1..).count();
    eprintln!(
        "failover: reader-a killed after seq {killed_after}; {} heartbeats unmeasured between seq {both_from} and {last}; reader-b measured the {after_kill} after the kill",
        unmeasured.len()
    );
    assert!(
        unmeasured.is_empty(),
        "heartbeats no reader measured: {:?}",
        unmeasured
            .iter()
            .map(|s| (*s, all.lock().unwrap().get(s).cloned()))
            .collect::<Vec<_>>()
    );
    let before: Vec<usize> = measured
        .range(both_from..=killed_after)
        .map(|(_, ids)| ids.len())
        .collect();
    assert!(
        before.iter().filter(|n| **n == 2).count() * 10 >= before.len() * 9,
        "both readers measured (nearly) every heartbeat before the kill"
    );

    // Every whole second from the first both measured to the writer's last: one window point,
    // counting each announced heartbeat once, nothing missing.
    let expected = closed_windows(announced[&both_from], announced[&last]);
    assert!(expected.len() >= 2, "at least a window to check");
    let got = window_points(&windows, &expected, Duration::from_secs(30), || {
        format!("processor log:\n{}", processor.log_tail(20))
    })
    .await;
    let duplicates = assert_complete(&got, &expected, |start| {
        announced
            .values()
            .filter(|c| **c >= start && **c < start + S)
            .count() as i64
    });
    assert!(duplicates > 0, "the processor saw both readers' records");
    eprintln!(
        "failover: {} one-second windows around the kill, each complete; {duplicates} duplicate records dropped",
        expected.len()
    );
}

/// The primary's heartbeat seq (what the writer has committed).
async fn primary_seq(env: &Env) -> i64 {
    env.cluster.heartbeat_seq().await.unwrap()
}

/// The whole one-second windows from the one after `first_commit_us` to the last that the
/// watermark of `last_commit_us` (minus allowed_lateness) closes.
fn closed_windows(first_commit_us: i64, last_commit_us: i64) -> Vec<i64> {
    let first_start = (first_commit_us / S + 1) * S;
    let last_start = ((last_commit_us - LATENESS_US) / S - 1) * S;
    (first_start / S..=last_start / S).map(|s| s * S).collect()
}

/// delay-window records per window start, read until every one of `expected` arrived, then
/// whatever else is already published (a second point for a window would be a duplicate).
async fn window_points(
    windows: &rdkafka::consumer::StreamConsumer,
    expected: &[i64],
    within: Duration,
    context: impl Fn() -> String,
) -> BTreeMap<i64, Vec<DelayWindow>> {
    let mut got: BTreeMap<i64, Vec<DelayWindow>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + within;
    while !expected.iter().all(|s| got.contains_key(s)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "window points {expected:?} within {within:?}; have {:?}; {}",
            got.keys().collect::<Vec<_>>(),
            context()
        );
        if let Some((w, _)) = next_record::<DelayWindow>(windows, Duration::from_secs(1)).await {
            got.entry(w.window_start_us).or_default().push(w);
        }
    }
    while let Some((w, _)) = next_record::<DelayWindow>(windows, Duration::from_secs(1)).await {
        got.entry(w.window_start_us).or_default().push(w);
    }
    got
}

/// Each expected window has exactly one point, counting `heartbeats(start)` with nothing
/// missing. Returns the duplicates the processor dropped in them.
fn assert_complete(
    got: &BTreeMap<i64, Vec<DelayWindow>>,
    expected: &[i64],
    heartbeats: impl Fn(i64) -> i64,
) -> i64 {
    let mut duplicates = 0;
    for start in expected {
        let points = &got[start];
        assert_eq!(points.len(), 1, "one point per window: {points:?}");
        let w = &points[0];
        assert_eq!(
            (w.count, w.missing),
            (heartbeats(*start), 0),
            "window {start}: every heartbeat counted once"
        );
        duplicates += w.duplicates;
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_loses_no_heartbeat_and_the_services_carry_on() {
    use millilag_core::shutdown::shutdown_pair;
    let mut env = Env::start(1).await;
    let config = env.config(
        "interval = \"10ms\"",
        "",
        &format!(
            "[processor]\nwindows = [\"1s\"]\nallowed_lateness = \"{LATENESS_US}us\"\nlisten = \"127.0.0.1:{}\"",
            free_port()
        ),
    );
    create_topics(&config).await;
    let (delays, windows) = (env.consumer("replica-delay"), env.consumer("delay-window"));
    let (stop, token) = shutdown_pair();
    let writer = tokio::spawn(millilag_producers::writer::run(
        config.clone(),
        token.clone(),
    ));
    let reader = tokio::spawn(millilag_processors::reader::run(
        config.clone(),
        token.clone(),
    ));
    let processor = tokio::spawn(millilag_processors::processor::run(config.clone(), token));

    let mut measured: BTreeMap<i64, ReplicaDelay> = BTreeMap::new();
    while measured.len() < 100 {
        let (r, _) = next_record::<ReplicaDelay>(&delays, Duration::from_secs(30))
            .await
            .expect("measuring before the outage");
        measured.insert(r.seq, r);
    }
    let first = *measured.keys().next().unwrap();

    // The broker goes away for two seconds of heartbeats: the writer keeps writing them.
    env.broker.kill();
    let seq_at_kill = primary_seq(&env).await;
    millilag_harness::wait_for(
        "200 heartbeats written during the outage",
        Duration::from_secs(30),
        || async { (primary_seq(&env).await >= seq_at_kill + 200).then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        !writer.is_finished() && !reader.is_finished() && !processor.is_finished(),
        "services ride it out"
    );
    env.broker.restart().await.expect("broker back");
    let restarted = std::time::Instant::now();
    let seq_at_restart = primary_seq(&env).await;

    // Everything written before, during and after is announced, measured and published.
    let until = seq_at_restart + 100;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while (first..=until).any(|s| !measured.contains_key(&s)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seqs {first}..={until} all measured within 60 s of the restart; missing {:?}",
            (first..=until)
                .filter(|s| !measured.contains_key(s))
                .take(20)
                .collect::<Vec<_>>()
        );
        if let Some((r, _)) = next_record::<ReplicaDelay>(&delays, Duration::from_secs(1)).await {
            measured.insert(r.seq, r);
        }
    }
    let during: Vec<&ReplicaDelay> = measured
        .range(seq_at_kill + 1..=seq_at_restart)
        .map(|(_, r)| r)
        .collect();
    let ok = during
        .iter()
        .filter(|r| r.status == MeasureStatus::Ok)
        .count();
    let exact = during
        .iter()
        .filter(|r| r.status == MeasureStatus::Ok && !r.upper_bound)
        .count();
    eprintln!(
        "broker outage: {} heartbeats written while it was down, all measured afterwards: {ok} ok, {exact} exact (timed by the armed waits, not the late events); caught up {:.1} s after the broker was back",
        during.len(),
        restarted.elapsed().as_secs_f64()
    );
    assert_eq!(ok, during.len(), "heartbeats of the outage measured ok");

    // And the processor's windows over the whole run, outage included, are complete: one
    // point per second, every measured heartbeat counted, nothing missing.
    let expected = closed_windows(
        measured[&first].committed_at_us,
        measured[&until].committed_at_us,
    );
    let got = window_points(&windows, &expected, Duration::from_secs(60), String::new).await;
    assert_complete(&got, &expected, |start| {
        measured
            .values()
            .filter(|r| r.committed_at_us >= start && r.committed_at_us < start + S)
            .filter(|r| r.status == MeasureStatus::Ok)
            .count() as i64
    });
    eprintln!(
        "broker outage: {} one-second windows across it, each complete",
        expected.len()
    );
    stop.trigger();
    writer.await.unwrap().expect("writer stops cleanly");
    reader.await.unwrap().expect("reader stops cleanly");
    processor.await.unwrap().expect("processor stops cleanly");
}
