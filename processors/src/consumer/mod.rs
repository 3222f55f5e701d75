//! The at-least-once Kafka input the reader and the processor share.
//!
//! A service subscribes a [`Source`] to its input topic and runs its own loop around it:
//!
//! ```text
//! topic ─► Source::recv ─► Source::decode ─► the service's work ... acknowledged ─► position
//!            │                  │ undecodable                                        │
//!            │                  └► DeadLetters (acked, cut to size, or dropped) ─────┤
//!            │                                                                        ▼
//!            │                     Source::store: only progress (OffsetStore), store_offsets
//!            │                     librdkafka commits every second; Source::commit at shutdown
//!            └► rebalance ─► RebalanceContext ─► Source::rebalanced ─► Change::{Revoked, Assigned}
//! ```
//!
//! The rules (see `enable.auto.offset.store=false` in `millilag_core::kafka::consumer`): a
//! record's offset is stored only once its work was acknowledged, and in partition order, so a
//! crash replays from the oldest unfinished record. An undecodable record is sent to
//! dead-letter with the reason and then counts as finished. On shutdown the service drains
//! its in-flight work within a deadline, stores what finished, and [`Source::commit`]s
//! synchronously. A position is always the next offset to read, as Kafka commits it.
//!
//! Two ways to say a record is finished. A service whose records finish one by one, out of
//! order (the reader: when every replica's record is acknowledged), marks each consumed record
//! with [`Source::begin`] and [`Source::finish`]; the source stores the end of each
//! partition's contiguous finished prefix ([`Completions`]). The processor, whose records
//! finish when their windows reach every sink, computes positions from its window holds and
//! hands them to [`Source::store`].

mod completions;
mod dead_letter;
mod offset_store;
mod rebalance;
#[cfg(test)]
mod tests;

pub(crate) use dead_letter::{lasting_refusal, REFUSALS_BEFORE_DROPPING};
pub use dead_letter::{DeadLetterMetrics, DeadLetters, Sent};
pub use offset_store::OffsetStore;
pub use rebalance::{Assignment, Change, RebalanceContext};

use anyhow::Context;
use completions::Completions;
use millilag_core::config::Config;
use millilag_core::kafka;
use millilag_core::retry::Stopped;
use millilag_core::shutdown::Shutdown;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use rebalance::{PauseSwitch, Report};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::{error, info, warn};

/// The Kafka consumer of a [`Source`].
pub type KafkaConsumer = StreamConsumer<RebalanceContext>;

/// One subscribed input topic, consumed at least once.
pub struct Source {
    consumer: Arc<KafkaConsumer>,
    topic: String,
    dead_letters: DeadLetters,
    /// Filled by the [`RebalanceContext`] during `recv`, emptied by [`Source::rebalanced`].
    reports: Arc<Mutex<Vec<Report>>>,
    /// Shared with the [`RebalanceContext`], which pauses what it assigns while this is on.
    pause: PauseSwitch,
    /// Bookkeeping behind `&self`: a record borrowed from `recv` keeps `self` borrowed.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    assignment: Assignment,
    stored: OffsetStore,
    completions: Completions,
}

/// What became of a consumed record.
#[derive(Debug)]
pub enum Decoded<T> {
    Record(T),
    /// Undecodable and now on dead-letter (or, if the dead letter itself cannot be built, a
    /// bug, logged): store its offset like a finished record's, redelivery cannot fix it.
    Poison,
    /// Undecodable, and the dead-letter topic refused it for good (logged and counted as
    /// `dead_letter_dropped_total`): skipped like [`Decoded::Poison`].
    Dropped,
    /// Undecodable, and shutdown came before the dead letter was acknowledged: leave its
    /// offset unstored (it is read again after the restart) and stop.
    Interrupted,
}

impl Source {
    /// Subscribe `group` to the topic `suffix`; `service` names the dead letters' sender.
    pub fn subscribe(
        config: &Config,
        service: &'static str,
        group: &str,
        suffix: &str,
        fetch_wait_ms: u32,
        producer: FutureProducer,
        dead_letter_metrics: DeadLetterMetrics,
    ) -> anyhow::Result<Source> {
        let topic = config.topic(suffix);
        let pause = PauseSwitch::default();
        let (ctx, reports) = RebalanceContext::new(topic.clone(), pause.clone());
        let consumer = kafka::consumer_with_context(&config.kafka, group, fetch_wait_ms, ctx)
            .context("creating the Kafka consumer")?;
        consumer
            .subscribe(&[&topic])
            .with_context(|| format!("subscribing to {topic}"))?;
        Ok(Source {
            consumer: Arc::new(consumer),
            dead_letters: DeadLetters::new(
                producer,
                config,
                service,
                topic.clone(),
                dead_letter_metrics,
            ),
            topic,
            reports,
            pause,
            state: Mutex::default(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer, for what this type does not cover (e.g. lag metrics).
    pub fn consumer(&self) -> &Arc<KafkaConsumer> {
        &self.consumer
    }

    /// The next record. Rebalances happen inside this call: look at [`Source::rebalanced`]
    /// before applying the record.
    pub async fn recv(&self) -> KafkaResult<BorrowedMessage<'_>> {
        self.consumer.recv().await
    }

    /// Partition changes since the last call, oldest first. What the source keeps for a
    /// revoked partition (stored position, records begun) is dropped here; the caller drops
    /// its own work for it.
    pub fn rebalanced(&self) -> Vec<Change> {
        let reports =
            std::mem::take(&mut *self.reports.lock().unwrap_or_else(PoisonError::into_inner));
        if reports.is_empty() {
            return Vec::new();
        }
        let mut state = self.state();
        let mut changes = Vec::new();
        for r in reports {
            match state.assignment.apply(r) {
                Some(Change::Revoked(lost)) => {
                    info!(topic = %self.topic, partitions = ?lost, "Partitions revoked.");
                    state.stored.forget(lost.iter().copied());
                    state.completions.forget(&lost);
                    changes.push(Change::Revoked(lost));
                }
                Some(Change::Assigned { partitions, first }) => {
                    info!(topic = %self.topic, partitions = ?partitions, "Partitions assigned.");
                    changes.push(Change::Assigned { partitions, first });
                }
                None => {}
            }
        }
        changes
    }

    /// Decode `m` with `decode`; an undecodable record goes to dead-letter with the reason.
    pub async fn decode<'m, T, E: std::fmt::Display>(
        &self,
        m: &'m BorrowedMessage<'_>,
        decode: impl FnOnce(&'m [u8]) -> Result<T, E>,
        shutdown: &Shutdown,
    ) -> Decoded<T> {
        let reason = match m.payload() {
            Some(bytes) => match decode(bytes) {
                Ok(v) => return Decoded::Record(v),
                Err(e) => e.to_string(),
            },
            None => "empty payload (tombstone)".to_string(),
        };
        let (partition, offset) = (m.partition(), m.offset());
        warn!(topic = %self.topic, partition, offset, reason = %reason, "Undecodable record; sending it to dead-letter.");
        match self.dead_letters.send(m, &reason, shutdown).await {
            Ok(Sent::Written) => Decoded::Poison,
            Ok(Sent::Dropped) => Decoded::Dropped,
            Err(Stopped::Shutdown) => Decoded::Interrupted,
            Err(Stopped::Permanent(e)) => {
                // Only the dead letter's own encoding fails permanently; waiting cannot help,
                // and stopping here would hold every later offset of the partition.
                error!(error = %e, partition, offset, "Cannot build the dead letter; this is a bug. Moving past the record.");
                Decoded::Poison
            }
        }
    }

    /// A record was consumed and its work begins; its offset waits for [`Source::finish`].
    pub fn begin(&self, partition: i32, offset: i64) {
        self.state().completions.begin(partition, offset);
    }

    /// The record's work is acknowledged: store the partition's position if its contiguous
    /// finished prefix advanced.
    pub fn finish(&self, partition: i32, offset: i64) {
        let next = self.state().completions.finish(partition, offset);
        if let Some(next) = next {
            self.store([(partition, next)]);
        }
    }

    /// A record with no work to wait for (dead-lettered, or not ours to handle).
    pub fn done(&self, partition: i32, offset: i64) {
        self.begin(partition, offset);
        self.finish(partition, offset);
    }

    /// Store the positions (next offset to read per partition) that moved forward.
    pub fn store(&self, positions: impl IntoIterator<Item = (i32, i64)>) {
        let moved = self.state().stored.advance(positions);
        if moved.is_empty() {
            return;
        }
        let result = self
            .list(&moved)
            .and_then(|tpl| self.consumer.store_offsets(&tpl));
        if let Err(e) = result {
            // A partition revoked meanwhile: its new owner replays from the last commit, which
            // is at or before this position. Otherwise the position is stored again next time.
            warn!(error = %e, "Storing offsets failed.");
            self.state().stored.forget(moved.iter().map(|(p, _)| *p));
        }
    }

    /// Commit what was stored, synchronously (the last thing before exit).
    pub fn commit(&self) {
        let stored: Vec<(i32, i64)> = self
            .state()
            .stored
            .stored()
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect();
        if stored.is_empty() {
            return;
        }
        let result = self
            .list(&stored)
            .and_then(|tpl| self.consumer.commit(&tpl, CommitMode::Sync));
        match result {
            Ok(()) => info!(offsets = ?stored, "Offsets committed."),
            Err(e) => {
                error!(error = %e, "Final offset commit failed; records since the last auto-commit will be replayed.")
            }
        }
    }

    /// Stop (`true`) or restart fetching from every assigned partition. A pause covers the
    /// partitions assigned later too, until it is lifted.
    pub fn set_paused(&self, paused: bool) -> KafkaResult<()> {
        let mut on = self.pause.lock();
        let assignment = self.consumer.assignment()?;
        if paused {
            self.consumer.pause(&assignment)?;
        } else {
            self.consumer.resume(&assignment)?;
        }
        *on = paused;
        Ok(())
    }

    /// Whether consumption is paused.
    pub fn paused(&self) -> bool {
        *self.pause.lock()
    }

    fn list(&self, offsets: &[(i32, i64)]) -> KafkaResult<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets {
            tpl.add_partition_offset(&self.topic, *p, Offset::Offset(*o))?;
        }
        Ok(tpl)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
