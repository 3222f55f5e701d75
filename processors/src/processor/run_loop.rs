//! The processor's run loop: one task, one `select!`, acknowledgements first.
//!
//! Each record is decoded (borrowed, `input.rs`) and applied to every window length; windows
//! it closes collect in `closed` and leave in one batch ([`Dispatch`]) every
//! [`DISPATCH_EVERY`] or once [`DISPATCH_BATCH`] wait, when every sink's (bounded) queue has
//! room; until then they wait in `closed`, holding their offsets. The tick also closes silent
//! replicas' windows, stores the offsets nothing holds any more, and pauses or resumes
//! consumption ([`Backpressure`]) on the windows closed and not yet flushed. Acknowledgements
//! from the sinks and the state writer move batches along in the [`OffsetTracker`]. On
//! shutdown [`RunLoop::drain`] flushes what closed, waits for the sinks within
//! [`DRAIN_DEADLINE`], stores and commits.

use super::alerts::stale::ReplicaSeen;
use super::alerts::Dormant;
use super::backpressure::Backpressure;
use super::dispatch::Dispatch;
use super::heartbeats::HeartbeatWatch;
use super::input::{self, DelayView};
use super::liveness::Liveness;
use super::metrics::{labels, Metrics};
use super::offsets::OffsetTracker;
use super::sinks::statsd::timings::Timings;
use super::window::{Closed, Windows};
use crate::consumer::{Decoded, Source};
use millilag_core::clock::now_us;
use millilag_core::shutdown::Shutdown;
use millilag_core::Config;
use rdkafka::message::{BorrowedMessage, Message};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tracing::{info, warn};

/// Closed windows are handed to the sinks at least this often...
const DISPATCH_EVERY: Duration = Duration::from_millis(20);
/// ...or as soon as this many are waiting.
const DISPATCH_BATCH: usize = 1_000;
/// On shutdown, how long closed windows may take to reach every sink.
const DRAIN_DEADLINE: Duration = Duration::from_secs(15);
/// Windows waiting for the sinks longer than this: the pipeline is stuck (/readyz).
const SINKS_STUCK_AFTER_US: i64 = 30_000_000;
/// How often the rules on silence are evaluated (their thresholds are seconds).
const STALE_EVERY_US: i64 = 250_000;
/// A replica with no record for this long is forgotten (its windows, watermark, flush marks
/// and quiet alert tracks): far beyond the empty-window horizon (10 min) and any reader
/// restart, so only replicas that are gone are.
const KEY_RETENTION_US: i64 = 6 * 3_600_000_000;
const PRUNE_EVERY_US: i64 = 60_000_000;
/// How often positions are computed and stored: from every open window's hold, thousands at
/// 1,000 replicas (8% of the processor's CPU at every tick); librdkafka commits once a second.
const STORE_EVERY_US: i64 = 200_000;

/// The run loop's state.
pub struct RunLoop<'a> {
    pub config: &'a Config,
    pub source: &'a Source,
    pub metrics: Metrics,
    pub windows: Windows,
    pub tracker: OffsetTracker,
    /// Windows closed since the last dispatch.
    pub closed: Vec<Closed>,
    pub dispatch: Dispatch<'a>,
    pub backpressure: Backpressure,
    /// Batch ids a sink accepted.
    pub sink_acks: mpsc::UnboundedReceiver<u64>,
    /// Batch ids whose flush the state writer recorded.
    pub state_acks: mpsc::UnboundedReceiver<u64>,
    /// A replica silent for this long (wall clock) has its windows closed.
    pub idle_us: i64,
    /// Open incidents of partitions not owned (yet), from alert-state.
    pub dormant: Dormant,
    /// replica-delay's partition count (an incident's partition depends on it).
    pub partitions: i32,
    /// The replica-delay partitions owned now.
    pub owned: std::collections::BTreeSet<i32>,
    pub heartbeats: HeartbeatWatch,
    pub next_stale_at: i64,
    pub next_prune_at: i64,
    pub next_store_at: i64,
    /// The wall clock as of the last tick (at most [`DISPATCH_EVERY`] old).
    pub now_us: i64,
    /// Whether silence can be told (the broker answers, consumption runs).
    pub liveness: Liveness,
    pub health: millilag_core::http::Health,
    /// statsd timers: each exact measurement, once, as it is decoded.
    pub timings: Timings,
}

impl RunLoop<'_> {
    /// Consume until `shutdown`, or until shutdown interrupts a dead-letter write.
    pub async fn run(&mut self, shutdown: &Shutdown) {
        let source = self.source;
        let mut tick = tokio::time::interval(DISPATCH_EVERY);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut stop = std::pin::pin!(shutdown.clone().triggered());
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(id) = self.sink_acks.recv() => self.dispatch.sink_acked(id, &mut self.tracker),
                Some(id) = self.state_acks.recv() => self.tracker.state_acked(id),
                _ = tick.tick() => self.on_tick().await,
                m = source.recv() => match m {
                    Ok(m) => {
                        if !self.handle(&m, shutdown).await {
                            break;
                        }
                        if self.closed.len() >= DISPATCH_BATCH {
                            self.dispatch_closed();
                        }
                    }
                    Err(e) => warn!(error = %e, "Kafka consumer error."),
                },
            }
        }
    }

    /// Shutdown: flush what closed, wait for the sinks, store and commit.
    pub async fn drain(&mut self) {
        info!(
            pending = self.tracker.pending_windows(),
            "Processor stopping: flushing closed windows."
        );
        self.timings.flush();
        self.dispatch_closed();
        let deadline = tokio::time::Instant::now() + DRAIN_DEADLINE;
        while self.tracker.pending_batches() > 0 || !self.closed.is_empty() {
            tokio::select! {
                Some(id) = self.sink_acks.recv() => {
                    self.dispatch.sink_acked(id, &mut self.tracker);
                    // A sink that takes a batch makes room for what is held back.
                    self.dispatch_closed();
                }
                Some(id) = self.state_acks.recv() => self.tracker.state_acked(id),
                _ = tokio::time::sleep_until(deadline) => {
                    warn!(pending = self.pending_windows(), "Sinks did not drain before the deadline; those windows are replayed after a restart.");
                    break;
                }
            }
        }
        self.store_offsets();
        self.source.commit();
    }

    /// One record. Returns false if shutdown interrupted its dead-letter write (it is then
    /// neither applied nor stored, so it is read again after the restart).
    async fn handle(&mut self, m: &BorrowedMessage<'_>, shutdown: &Shutdown) -> bool {
        // A rebalance reported by the poll that returned this record comes first.
        self.rebalanced().await;
        let (partition, offset) = (m.partition(), m.offset());
        self.metrics.records.inc();
        // The tick's clock: its checks are seconds wide, and reading the clock per record was
        // 14% of the processor's CPU at 1,000 replicas (this VM's clock_gettime is slow).
        let now = self.now_us;
        self.liveness.heard(now);
        let published_ms = m.timestamp().to_millis();
        let max_skew_us = self.config.processor.max_clock_skew.as_micros_i64();
        let max_age_us = self.config.processor.max_event_age.as_micros_i64();
        let rejects = &self.metrics.clock_skew_rejects;
        let name_rejects = &self.metrics.name_rejects;
        let windows = &self.windows;
        // A record whose names no sink can carry, or whose times cannot be trusted, is
        // dead-lettered like an undecodable one: applied, it would break every sink request it
        // joins, move a watermark, or fall in windows long closed.
        let checked = |bytes| {
            let view = input::decode(bytes).map_err(|e| e.to_string())?;
            if let Some(why) = input::name_problem(&view) {
                name_rejects.inc();
                return Err(why);
            }
            let newest = windows.newest(view.cluster, view.replica);
            match input::time_problem(&view, published_ms, newest, now, max_skew_us, max_age_us) {
                Some(why) => {
                    rejects.inc();
                    Err(why)
                }
                None => Ok(view),
            }
        };
        match self.source.decode(m, checked, shutdown).await {
            Decoded::Record(view) => self.apply(&view, partition, offset),
            Decoded::Poison | Decoded::Dropped => {
                self.metrics.decode_failures.inc();
            }
            Decoded::Interrupted => {
                self.metrics.decode_failures.inc();
                return false;
            }
        }
        self.tracker.consumed(partition, offset);
        true
    }

    fn apply(&mut self, view: &DelayView<'_>, partition: i32, offset: i64) {
        let r = self
            .windows
            .apply(view, partition, offset, &mut self.closed);
        if r.lag_sample {
            self.metrics.lag_samples.inc();
        }
        if r.replayed == 0 {
            self.timings.record(view);
        }
        if r.duplicate > 0 {
            self.metrics.duplicates.inc();
        }
        if r.replayed > 0 {
            self.metrics.replayed.inc();
        }
        if r.late > 0 {
            for (i, spec) in self.windows.specs().iter().enumerate() {
                if r.late_mask & (1 << i.min(31)) != 0 {
                    self.metrics
                        .late
                        .get_or_create(&labels(&[("window", &spec.label)]))
                        .inc();
                }
            }
        }
    }

    async fn on_tick(&mut self) {
        self.rebalanced().await;
        let now = now_us();
        self.now_us = now;
        // Arrival stamps (no clock read per record) follow the wall clock, live input or not.
        self.windows.set_now(now);
        // Silence means something only while the input is live (see liveness.rs).
        let paused = self.backpressure.paused();
        if self.liveness.can_tell(now, paused, self.idle_us) {
            self.windows.close_idle(now, self.idle_us, &mut self.closed);
            if now >= self.next_stale_at {
                self.next_stale_at = now + STALE_EVERY_US;
                for (cluster, interval) in self.heartbeats.intervals() {
                    self.windows.set_interval(&cluster, interval);
                }
                self.check_silence(now);
            }
            if now >= self.next_prune_at {
                self.next_prune_at = now + PRUNE_EVERY_US;
                self.prune_gone(now);
            }
        }
        self.timings.flush();
        self.dispatch_closed();
        if now >= self.next_store_at {
            self.next_store_at = now + STORE_EVERY_US;
            self.store_offsets();
        }
        self.check_sinks(now);
        self.backpressure.update(
            self.source,
            self.pending_windows(),
            self.config.processor.max_pending_windows,
            self.dispatch.sinks_have_room(),
            &self.metrics.paused,
        );
        self.update_gauges();
    }

    /// Tell /readyz when the sink pipeline is dead or stuck: a sink task that ended, or windows
    /// waiting for the sinks longer than [`SINKS_STUCK_AFTER_US`] (a sink outage: the windows
    /// are kept and retried, but this processor is not doing its job meanwhile).
    fn check_sinks(&self, now: i64) {
        for s in self.dispatch.sinks {
            let part = format!("sink {}", s.name);
            if s.stopped() {
                self.health.part_failing(&part, "its task stopped");
            } else {
                self.health.part_ok(&part);
            }
        }
        match self.tracker.oldest_pending_us(now) {
            Some(age) if age > SINKS_STUCK_AFTER_US => self.health.part_failing(
                "sinks",
                format!(
                    "{} windows waiting, the oldest for {} s",
                    self.tracker.pending_windows(),
                    age / 1_000_000
                ),
            ),
            _ => self.health.part_ok("sinks"),
        }
    }

    /// Forget replicas gone for [`KEY_RETENTION_US`] (pod IPs churn), keeping any with an
    /// incident still open: memory follows the replicas that exist, not all that ever did.
    fn prune_gone(&mut self, now: i64) {
        let (engine, stale) = (&self.dispatch.engine, &self.dispatch.stale);
        let gone = self.windows.prune_silent(now, KEY_RETENTION_US, |c, r| {
            engine.active_on(c, r) || stale.firing_on(c, r)
        });
        for (cluster, replica) in &gone {
            self.dispatch.engine.prune(cluster, replica);
            self.dispatch.metrics.window_gauges.forget(cluster, replica);
        }
        if !gone.is_empty() {
            info!(
                count = gone.len(),
                "Forgot replicas with no record for 6 h."
            );
        }
    }

    /// The rules on silence: heartbeats (the owner of partition 0) and each replica owned here.
    fn check_silence(&mut self, now: i64) {
        let clusters = self.heartbeats.clusters();
        let owned = &self.owned;
        let replicas = self
            .windows
            .replicas_seen()
            .filter(|(_, _, p, _)| owned.contains(p))
            .map(|(cluster, replica, _, last)| ReplicaSeen {
                cluster,
                replica,
                last_record_us: last,
            });
        let transitions =
            self.dispatch
                .stale
                .evaluate(now, &clusters, owned.contains(&0), replicas);
        for a in transitions {
            self.dispatch.transition(a);
        }
    }

    /// Closed windows not yet flushed: handed to the sinks, or held back for room.
    fn pending_windows(&self) -> usize {
        self.tracker.pending_windows() + self.closed.len()
    }

    fn dispatch_closed(&mut self) {
        if self.closed.is_empty() || !self.dispatch.sinks_have_room() {
            return;
        }
        self.dispatch.dispatch(&mut self.closed, &mut self.tracker);
        self.update_gauges();
    }

    /// Store, per partition, the lowest offset still held by an open window, a closed one held
    /// back or a batch in flight (or the consumed position when nothing is held).
    fn store_offsets(&mut self) {
        let closed = self.closed.iter().flat_map(|c| c.hold.iter());
        self.source
            .store(self.tracker.positions(self.windows.holds().chain(closed)));
    }

    fn update_gauges(&self) {
        self.metrics
            .open_windows
            .set(self.windows.open_windows() as i64);
        self.metrics
            .pending_windows
            .set(self.pending_windows() as i64);
    }
}
