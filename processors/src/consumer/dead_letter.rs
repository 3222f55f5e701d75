//! Records that cannot be decoded go to the `dead-letter` topic with the reason.
//!
//! Redelivery cannot fix such a record, so once the dead letter is acknowledged its offset is
//! stored like any finished record's. Until then it is not: a dead letter lost in a crash is
//! written again after the restart.

use millilag_core::config::Config;
use millilag_core::kafka;
use millilag_core::retry::{retry, RetryPolicy, Stopped};
use millilag_core::shutdown::Shutdown;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;

/// Writes dead letters for one service's input topic.
pub struct DeadLetters {
    producer: FutureProducer,
    /// Only for the dead-letter topic's name (prefix + suffix).
    config: Config,
    /// Who gave up on the record, e.g. "reader".
    service: &'static str,
    /// The topic the records come from.
    topic: String,
}

impl DeadLetters {
    pub fn new(
        producer: FutureProducer,
        config: Config,
        service: &'static str,
        topic: String,
    ) -> DeadLetters {
        DeadLetters {
            producer,
            config,
            service,
            topic,
        }
    }

    /// Write `m` with `reason`, retrying until the broker acknowledges it. Stops early on
    /// shutdown (the record then stays unstored and is read again after a restart), or when
    /// the dead letter itself cannot be built.
    pub async fn send(
        &self,
        m: &BorrowedMessage<'_>,
        reason: &str,
        shutdown: &Shutdown,
    ) -> Result<(), Stopped<millilag_core::Error>> {
        retry(RetryPolicy::DELIVERY, "Dead-letter write", shutdown, || {
            kafka::dead_letter(
                &self.producer,
                &self.config,
                self.service,
                &self.topic,
                m.partition(),
                m.offset(),
                m.key(),
                m.payload(),
                reason,
            )
        })
        .await
    }
}
