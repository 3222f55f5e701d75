//! The reader: consumes `heartbeat-set`, times when every replica of the cluster shows each
//! heartbeat (see [`replica`]), and publishes one `replica-delay` record per (replica, seq).
//!
//! Flow: the consumer loop takes each record from a [`Source`] (undecodable ones go to
//! dead-letter with the reason) and hands it to every replica task of its cluster with a
//! [`Ticket`]. A replica task publishes its record; when Kafka acknowledges it the ticket counts
//! down, and when all replicas' records are acknowledged the heartbeat is finished and the
//! source stores offsets in partition order, so a crash replays from the oldest unfinished
//! heartbeat. At most `max_pending_records` records wait for Kafka; above half of that the
//! loop pauses `heartbeat-set` until the publishes catch up (`backlog.rs`).
//!
//! Per cluster, a clock task keeps the local-to-primary clock offset (NTP-style over
//! `SELECT UNIX_TIMESTAMP(SYSDATE(6))`, lowest-RTT samples), and with `discover_replicas` a
//! discovery task adds the replicas the primary reports, without a restart.

mod backlog;
mod clock;
mod clusters;
mod discovery;
mod gtid;
pub(crate) mod input;
mod metrics;
mod publisher;
mod replica;
mod timing;

pub use metrics::{QueryKind, ReaderMetrics, ReplicaMetrics};

/// How often /readyz learns whether every replica task still makes progress.
const WATCHDOG_EVERY: Duration = Duration::from_secs(5);
pub use publisher::{Output, Ticket};

use crate::consumer::{Decoded, KafkaConsumer, Source};
use anyhow::{bail, Context};
use clusters::Clusters;
use millilag_core::clock::OffsetEstimator;
use millilag_core::config::Config;
use millilag_core::db;
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::Shutdown;
use millilag_core::telemetry::instance_id;
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use replica::{ClusterCtx, Settings};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, info_span, warn, Instrument};

pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.clusters.is_empty() {
        bail!("no [[cluster]] in the config: the reader has nothing to measure");
    }
    let rc = &config.reader;
    let reader_id = rc.reader_id.clone().unwrap_or_else(instance_id);
    let mut registry = Registry::with_prefix("millilag");
    let metrics = ReaderMetrics::new(&mut registry);
    let health = Health::starting();
    let server = bind_and_serve(
        rc.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;

    kafka::ensure_topics(
        &config,
        &[
            topics::HEARTBEAT_SET,
            topics::REPLICA_DELAY,
            topics::DEAD_LETTER,
        ],
    )
    .await
    .context("creating topics")?;
    // linger 20 ms: records are batched into fewer produce requests (and wake-ups); windows
    // are seconds long, so 20 ms of latency costs nothing. Against 5 ms it took 17% off the
    // reader's CPU per measurement at 200 replicas (librdkafka's broker thread was a fifth
    // of it, most of that the spin since patched: vendor/README.md), and off the broker's;
    // 50-100 ms gained nothing more (reader_scale, before the patch).
    let producer = kafka::producer(&config.kafka, 20).context("creating the Kafka producer")?;
    let (out, mut publishes_behind) = Output::start(
        producer.clone(),
        config.topic(topics::REPLICA_DELAY),
        rc.max_pending_records,
        metrics.clone(),
        shutdown.clone(),
    );
    let settings = Settings {
        method: rc.method,
        poll_interval: rc.poll_interval.0,
        poll_max_interval: rc.poll_max_interval.0,
        timeout: rc.timeout.0,
        prearm_depth: rc.prearm_depth,
        max_in_flight: rc.max_in_flight_per_replica,
    };

    let (disc_tx, mut disc_rx) = mpsc::unbounded_channel();
    let mut clusters = Clusters::new(
        out.clone(),
        metrics.clone(),
        shutdown.clone(),
        health.clone(),
    );
    let mut background = Vec::new();
    for c in &config.clusters {
        let clock = Arc::new(Mutex::new(OffsetEstimator::new(32)));
        let ctx = Arc::new(ClusterCtx {
            name: c.name.clone(),
            table: db::qualified_table(&c.database, &c.table)?,
            reader_id: reader_id.clone(),
            password: c.password.clone(),
            timeouts: c.db_timeouts(),
            clock: clock.clone(),
            settings: settings.clone(),
        });
        // The first offset estimate before the first measurement, when the primary answers.
        clock::sample_clock(c, &clock, 5).await;
        background.push(tokio::spawn(
            clock::keep_clock(
                c.clone(),
                clock,
                rc.clock_refresh.0,
                metrics.clock_uncertainty(&c.name),
                shutdown.clone(),
            )
            .instrument(info_span!("clock", cluster = %c.name)),
        ));
        if c.discover_replicas {
            background.push(tokio::spawn(
                discovery::discover(
                    c.clone(),
                    rc.discovery_interval.0,
                    disc_tx.clone(),
                    shutdown.clone(),
                )
                .instrument(info_span!("discovery", cluster = %c.name)),
            ));
        }
        clusters.add_cluster(ctx, &c.replicas);
    }

    let source = Source::subscribe(
        &config,
        "reader",
        &rc.group,
        topics::HEARTBEAT_SET,
        rc.fetch_wait.as_millis().max(1) as u32,
        producer.clone(),
        metrics.dead_letter.clone(),
    )?;
    background.push(tokio::spawn(report_lag(
        source.consumer().clone(),
        source.topic().to_string(),
        metrics.clone(),
        shutdown.clone(),
    )));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    health.set_ready();
    info!(reader_id = %reader_id, group = %rc.group, method = ?rc.method, "Reader started.");

    let mut pause_log = PauseLog::default();
    let mut stop = shutdown.clone();
    let mut watchdog = tokio::time::interval(WATCHDOG_EVERY);
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.wait() => break,
            _ = watchdog.tick() => clusters.check_tasks(),
            Some((p, o)) = done_rx.recv() => {
                // The reader keeps nothing per partition beyond what the source drops itself.
                source.rebalanced();
                source.finish(p, o);
            }
            Some(d) = disc_rx.recv() => clusters.apply(d),
            Ok(()) = publishes_behind.changed() => {
                let pause = *publishes_behind.borrow_and_update();
                pause_input(&source, pause, &metrics, &mut pause_log);
            }
            msg = source.recv() => {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        warn!(error = %e, "Kafka consumer error.");
                        continue;
                    }
                };
                // A partition revoked during this poll: its unfinished heartbeats no longer
                // count (the source drops them; the new owner measures them again).
                source.rebalanced();
                let (p, o) = (msg.partition(), msg.offset());
                metrics.events.inc();
                let now = millilag_core::clock::now_us();
                let decode = |b: &[u8]| input::decode_heartbeat(b, now);
                let event = match source.decode(&msg, decode, &shutdown).await {
                    Decoded::Record(e) => e,
                    Decoded::Poison => {
                        metrics.dead_letters.inc();
                        source.done(p, o);
                        continue;
                    }
                    // Counted and logged by the source: skipped all the same.
                    Decoded::Dropped => {
                        source.done(p, o);
                        continue;
                    }
                    // Left unstored: the record is read again after the restart.
                    Decoded::Interrupted => break,
                };
                if !clusters.measures(&event.cluster) {
                    // Another deployment's cluster on a shared topic: not ours to measure.
                    source.done(p, o);
                    continue;
                }
                source.begin(p, o);
                let ticket = Ticket::new(p, o, clusters.replicas(&event.cluster), done_tx.clone());
                clusters.dispatch(Arc::new(event), &ticket).await;
            }
        }
    }
    info!("Reader stopping: finishing publishes and committing offsets.");
    // The replica tasks stop measuring; what they published is awaited until acknowledged,
    // then the offsets of every finished heartbeat are committed. Heartbeats still being
    // measured never finish: waiting for them (until this deadline, every time) made each
    // restart a 5 s gap in the records, enough for the processor's measurements-stale rule.
    let deadline = tokio::time::Instant::now() + publisher::SHUTDOWN_DRAIN;
    let handed_on = async {
        clusters.stopped().await;
        out.drained().await;
    };
    if tokio::time::timeout_at(deadline, handed_on).await.is_err() {
        warn!(
            waiting = metrics.publish_queue.get(),
            "replica-delay records not acknowledged before shutdown; their heartbeats are measured again after the restart."
        );
    }
    while let Ok((p, o)) = done_rx.try_recv() {
        source.finish(p, o);
    }
    source.commit();
    for b in background {
        b.abort();
    }
    let _ = server.await;
    info!("Reader stopped.");
    Ok(())
}

/// How often pausing for publishes is logged: at 200 replicas a slow broker makes the reader
/// pause and resume several times a second, and a warning each time buries the ones that matter.
/// The gauge `millilag_reader_paused` follows every change.
const PAUSE_LOG_EVERY: Duration = Duration::from_secs(60);

/// When pausing was last logged, and how often it paused since.
#[derive(Default)]
struct PauseLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
    /// A pause was logged: its resume is logged too.
    resume_owed: bool,
}

impl PauseLog {
    /// Whether to log this pause or resume: the pauses not logged before it, if so.
    fn due(&mut self, pause: bool) -> Option<u64> {
        if !pause {
            return std::mem::take(&mut self.resume_owed).then_some(0);
        }
        let now = tokio::time::Instant::now();
        if self.last.is_some_and(|t| now - t < PAUSE_LOG_EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        self.resume_owed = true;
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Pause heartbeat-set while too many records wait for Kafka, resume once they are down.
fn pause_input(source: &Source, pause: bool, metrics: &ReaderMetrics, log: &mut PauseLog) {
    match source.set_paused(pause) {
        Ok(()) => {
            metrics.paused.set(i64::from(pause));
            let waiting = metrics.publish_queue.get();
            let Some(unlogged) = log.due(pause) else {
                return;
            };
            if pause {
                warn!(
                    waiting,
                    pauses_since_last_logged = unlogged,
                    "replica-delay publishes are behind: heartbeat-set consumption paused (logged at most once a minute)."
                );
            } else {
                info!(
                    waiting,
                    "replica-delay publishes caught up: heartbeat-set consumption resumed."
                );
            }
        }
        // Consumption goes on; publishing then waits for room, so memory stays bounded.
        Err(e) => warn!(error = %e, pause, "Pausing/resuming heartbeat-set failed."),
    }
}

/// Consumer lag per partition, every 5 s (a blocking metadata call, off the hot path).
async fn report_lag(
    consumer: Arc<KafkaConsumer>,
    topic: String,
    metrics: ReaderMetrics,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.wait() => return,
        }
        let c = consumer.clone();
        let t = topic.clone();
        let lags = tokio::task::spawn_blocking(move || -> Vec<(i32, i64)> {
            let Ok(assignment) = c.assignment() else {
                return vec![];
            };
            let Ok(positions) = c.position() else {
                return vec![];
            };
            assignment
                .elements_for_topic(&t)
                .iter()
                .filter_map(|e| {
                    let (_, high) = c
                        .fetch_watermarks(&t, e.partition(), Duration::from_secs(2))
                        .ok()?;
                    let pos = positions
                        .find_partition(&t, e.partition())
                        .and_then(|p| p.offset().to_raw())
                        .unwrap_or(0);
                    Some((e.partition(), (high - pos).max(0)))
                })
                .collect()
        })
        .await
        .unwrap_or_default();
        for (p, lag) in lags {
            metrics
                .consumer_lag
                .get_or_create(&vec![("partition", p.to_string())])
                .set(lag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pauses_are_logged_once_a_minute_with_their_resume_and_a_count_of_the_rest() {
        let mut log = PauseLog::default();
        assert_eq!(log.due(true), Some(0), "the first pause");
        assert_eq!(log.due(false), Some(0), "and its resume");
        for _ in 0..5 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert_eq!(log.due(true), None);
            assert_eq!(log.due(false), None, "an unlogged pause's resume");
        }
        tokio::time::advance(PAUSE_LOG_EVERY).await;
        assert_eq!(
            log.due(true),
            Some(5),
            "a minute on, with the pauses between"
        );
        assert_eq!(log.due(false), Some(0));
    }
}
