//! Records that cannot be decoded go to the `dead-letter` topic with the reason.
//!
//! Redelivery cannot fix such a record, so once the dead letter is acknowledged its offset is
//! stored like any finished record's. Until then it is not: a dead letter lost in a crash is
//! written again after the restart. While the broker is away the write is retried until it
//! answers; every wait gives way to shutdown.
//!
//! Two things would otherwise hold the partition forever:
//! - A letter too large for the producer (`message.max.bytes`) or the broker: its payload is
//!   cut to fit, saying so in the reason (topic, partition, offset and the original reason are
//!   kept). A broker that still refuses it halves what is kept, down to [`MIN_BUDGET`].
//! - A dead-letter topic that does not exist or may not be written: refused
//!   [`REFUSALS_BEFORE_DROPPING`] times, the letter is dropped, logged with the record's place
//!   and counted in `dead_letter_dropped_total{reason}`, and the consume loop moves on. (The
//!   first attempt on a missing topic takes librdkafka's `topic.metadata.propagation.max.ms`,
//!   30 s by default; later ones fail at once.)

use millilag_core::config::Config;
use millilag_core::events::{DeadLetter, Record};
use millilag_core::kafka::topics;
use millilag_core::metrics::Labels;
use millilag_core::retry::{RetryPolicy, Stopped};
use millilag_core::shutdown::Shutdown;
use millilag_core::Error;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tracing::{error, warn};

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room left in a message for what librdkafka adds around key and value (record and batch
/// headers, about 100 bytes) and the letter's send time, with a wide margin.
const FRAMING: usize = 1_024;
/// The smallest message a letter is cut to before it is given up as too large.
const MIN_BUDGET: usize = 4 * FRAMING;
/// Refusals (missing topic, no permission, rejected record) before a letter is dropped.
pub(crate) const REFUSALS_BEFORE_DROPPING: u32 = 5;

/// Counters of a service's dead letters, registered in its own registry.
#[derive(Clone, Default)]
pub struct DeadLetterMetrics {
    pub(crate) dropped: Family<Labels, Counter>,
    pub(super) truncated: Counter,
}

impl DeadLetterMetrics {
    /// Register under `registry`'s prefix (e.g. `millilag_reader_`).
    pub fn register(registry: &mut Registry) -> DeadLetterMetrics {
        let m = DeadLetterMetrics::default();
        registry.register(
            "dead_letter_dropped",
            "Undecodable records that could not be dead-lettered either (topic missing, not allowed, too large) and were skipped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "dead_letters_truncated",
            "Dead letters whose payload was cut to fit the producer's or broker's message size limit",
            m.truncated.clone(),
        );
        m
    }
}

/// What became of a dead letter.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Written,
    /// Refused for good: logged and counted; the record is skipped all the same.
    Dropped,
}

/// Why a write failed, for what to do next.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The message is too large (producer or broker limit): cut the payload.
    TooLarge,
    /// Will not change by waiting: retry a few times, then drop with this metric label.
    Refused(&'static str),
    /// The broker is away or busy: retry until it answers.
    Transient,
}

/// The `dead_letter_dropped_total` label of a refusal that waiting will not fix (missing or
/// forbidden topic, rejected record, too large), None for a broker that is away or busy.
pub(crate) fn lasting_refusal(e: &KafkaError) -> Option<&'static str> {
    match classify(e) {
        Refusal::TooLarge => Some("too_large"),
        Refusal::Refused(label) => Some(label),
        Refusal::Transient => None,
    }
}

fn classify(e: &KafkaError) -> Refusal {
    use RDKafkaErrorCode::*;
    match e.rdkafka_error_code() {
        Some(MessageSizeTooLarge | MessageBatchTooLarge) => Refusal::TooLarge,
        Some(UnknownTopicOrPartition | UnknownTopic | UnknownPartition | InvalidTopic) => {
            Refusal::Refused("unknown_topic")
        }
        Some(TopicAuthorizationFailed | ClusterAuthorizationFailed) => {
            Refusal::Refused("unauthorized")
        }
        Some(PolicyViolation | InvalidRecord) => Refusal::Refused("rejected"),
        _ => Refusal::Transient,
    }
}

/// Writes dead letters for one service's input topic.
pub struct DeadLetters {
    producer: FutureProducer,
    /// `<prefix>dead-letter`.
    dead_letter_topic: String,
    /// Who gave up on the record, e.g. "reader".
    service: &'static str,
    /// The topic the records come from.
    topic: String,
    /// The producer's `message.max.bytes`: letters are cut to fit before the first attempt.
    max_message_bytes: usize,
    metrics: DeadLetterMetrics,
}

impl DeadLetters {
    pub fn new(
        producer: FutureProducer,
        config: &Config,
        service: &'static str,
        topic: String,
        metrics: DeadLetterMetrics,
    ) -> DeadLetters {
        let max_message_bytes = config
            .kafka
            .librdkafka_properties()
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES);
        DeadLetters {
            producer,
            dead_letter_topic: config.topic(topics::DEAD_LETTER),
            service,
            topic,
            max_message_bytes,
            metrics,
        }
    }

    /// Write `m` with `reason` until the broker acknowledges it, cut to size or dropped as
    /// described above. Stops on shutdown (the record then stays unstored and is read again
    /// after a restart), or when the letter itself cannot be built (a bug).
    pub async fn send(
        &self,
        m: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &Shutdown,
    ) -> Result<Sent, Stopped<Error>> {
        let (partition, offset) = (m.partition(), m.offset());
        let key = m.key().unwrap_or_default();
        let mut budget = self.max_message_bytes;
        let mut letter = self.letter(m, reason, budget).map_err(Stopped::Permanent)?;
        let mut backoff = RetryPolicy::DELIVERY.backoff();
        let mut refusals = 0;
        let mut stop = shutdown.clone();
        loop {
            let Some(bytes) = &letter else {
                return Ok(self.dropped(partition, offset, "too_large", "no room for the letter"));
            };
            let attempt = self.producer.send(
                FutureRecord::to(&self.dead_letter_topic)
                    .key(key)
                    .payload(bytes),
                Timeout::Never,
            );
            let e = tokio::select! {
                r = attempt => match r {
                    Ok(_) => return Ok(Sent::Written),
                    Err((e, _)) => e,
                },
                _ = stop.wait() => return Err(Stopped::Shutdown),
            };
            match classify(&e) {
                Refusal::TooLarge if budget / 2 >= MIN_BUDGET => {
                    // The broker's limit is below the producer's: keep halving.
                    budget /= 2;
                    warn!(error = %e, partition, offset, budget, "Dead letter refused as too large; cutting it further.");
                    letter = self.letter(m, reason, budget).map_err(Stopped::Permanent)?;
                    continue;
                }
                Refusal::TooLarge => {
                    return Ok(self.dropped(partition, offset, "too_large", &e.to_string()))
                }
                Refusal::Refused(label) => {
                    refusals += 1;
                    if refusals >= REFUSALS_BEFORE_DROPPING {
                        return Ok(self.dropped(partition, offset, label, &e.to_string()));
                    }
                }
                Refusal::Transient => {}
            }
            let delay = backoff.next_delay();
            warn!(error = %e, partition, offset, retry_in = ?delay, "Dead-letter write failed; retrying.");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.wait() => return Err(Stopped::Shutdown),
            }
        }
    }

    /// The encoded letter for `m`, its payload cut so the message fits `budget` bytes; None
    /// when not even an empty payload fits (a huge key or reason).
    fn letter(
        &self,
        m: &BorrowedMessage<'_>,
        reason: &str,
        budget: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        let build = |payload: Option<&[u8]>, reason: String| {
            DeadLetter {
                topic: self.topic.clone(),
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec().into()),
                payload: payload.map(|p| p.to_vec().into()),
                reason,
                service: self.service.to_string(),
                failed_at_us: millilag_core::clock::now_us(),
            }
            .encode()
        };
        // The key goes out twice: as the message's key and inside the letter.
        let room = budget.saturating_sub(m.key().map_or(0, <[u8]>::len) + FRAMING);
        let whole = build(m.payload(), reason.to_string())?;
        if whole.len() <= room {
            return Ok(Some(whole));
        }
        let original = m.payload().map_or(0, <[u8]>::len);
        let without_payload = build(
            Some(&[]),
            truncated_reason(reason, original, original, budget),
        )?;
        let Some(kept) = room.checked_sub(without_payload.len()) else {
            return Ok(None);
        };
        let kept = kept.min(original);
        self.metrics.truncated.inc();
        warn!(topic = %self.topic, partition = m.partition(), offset = m.offset(), original, kept, "Dead letter too large; payload truncated to fit.");
        let payload = m.payload().map(|p| &p[..kept]);
        Ok(Some(build(
            payload,
            truncated_reason(reason, original, kept, budget),
        )?))
    }

    fn dropped(&self, partition: i32, offset: i64, label: &'static str, why: &str) -> Sent {
        self.metrics
            .dropped
            .get_or_create(&vec![("reason", label.to_string())])
            .inc();
        error!(topic = %self.topic, partition, offset, reason = label, error = why, dead_letter_topic = %self.dead_letter_topic, "Cannot dead-letter an undecodable record; skipping it without a dead letter.");
        Sent::Dropped
    }
}

fn truncated_reason(reason: &str, original: usize, kept: usize, budget: usize) -> String {
    format!("{reason} [payload truncated from {original} to {kept} bytes to fit a {budget}-byte message]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_refusals_cut_missing_or_forbidden_topics_drop_the_rest_retry() {
        let code = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            classify(&code(RDKafkaErrorCode::MessageSizeTooLarge)),
            Refusal::TooLarge
        );
        assert_eq!(
            classify(&code(RDKafkaErrorCode::UnknownTopic)),
            Refusal::Refused("unknown_topic")
        );
        assert_eq!(
            classify(&code(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Refusal::Refused("unauthorized")
        );
        assert_eq!(
            classify(&code(RDKafkaErrorCode::AllBrokersDown)),
            Refusal::Transient
        );
        assert_eq!(
            classify(&code(RDKafkaErrorCode::MessageTimedOut)),
            Refusal::Transient
        );
    }
}
