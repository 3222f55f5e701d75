//! Alert transitions leave the processor here: to the `alert` topic, the compacted
//! `alert-state` topic (read back at start, see `state.rs`), then every webhook.
//!
//! A task of its own, behind a bounded queue, so the run loop never waits on Kafka or a
//! webhook. Kafka comes first so a restarted processor knows of every transition a webhook
//! saw; when Kafka does not acknowledge within [`KAFKA_DEADLINE`] the webhooks are notified
//! anyway (an incident must not wait for the broker). Transitions keep their order.

use super::webhook::{self, Webhooks};
use millilag_core::events::Alert;
use millilag_core::kafka::send_record;
use millilag_core::retry::{retry, RetryPolicy};
use millilag_core::shutdown::Shutdown;
use rdkafka::producer::FutureProducer;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::warn;

/// How long a transition waits for Kafka before its webhooks are notified anyway.
const KAFKA_DEADLINE: Duration = Duration::from_secs(10);
/// At shutdown, how long webhooks may take to deliver what is queued.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

/// What the publishing task is given, in order.
enum Item {
    Transition(Alert),
    /// An incident taken over: its webhooks re-post it (nothing is published).
    Adopt(Alert),
    /// An incident handed over: its webhooks stop re-posting it.
    Forget(String),
}

/// The run loop's side of the publishing task.
pub struct AlertPublisher {
    tx: mpsc::Sender<Item>,
    task: tokio::task::JoinHandle<()>,
}

impl AlertPublisher {
    pub fn spawn(
        producer: FutureProducer,
        alert_topic: String,
        state_topic: String,
        webhooks: Webhooks,
    ) -> AlertPublisher {
        let (tx, mut rx) = mpsc::channel::<Item>(webhook::QUEUE);
        let task = tokio::spawn(async move {
            // Kafka gets KAFKA_DEADLINE per transition, shutdown or not: queued transitions
            // are still published while the processor stops.
            let never = Shutdown::never();
            while let Some(item) = rx.recv().await {
                let a = match item {
                    Item::Transition(a) => a,
                    Item::Adopt(a) => {
                        webhooks.adopt(&a);
                        continue;
                    }
                    Item::Forget(fp) => {
                        webhooks.forget(&fp);
                        continue;
                    }
                };
                let published = tokio::time::timeout(
                    KAFKA_DEADLINE,
                    retry(RetryPolicy::DELIVERY, "Publishing alert", &never, || {
                        futures::future::try_join(
                            send_record(&producer, &alert_topic, &a.fingerprint, &a),
                            send_record(&producer, &state_topic, &a.fingerprint, &a),
                        )
                    }),
                )
                .await;
                match published {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) | Err(_) => {
                        warn!(rule = %a.rule, "Alert not on Kafka; notifying webhooks anyway.")
                    }
                }
                webhooks.notify(&a);
            }
            webhooks.close(WEBHOOK_DRAIN).await;
        });
        AlertPublisher { tx, task }
    }

    /// Queue a transition. False when the queue is full: the transition is not published.
    pub fn publish(&self, a: Alert) -> bool {
        self.tx.try_send(Item::Transition(a)).is_ok()
    }

    /// An incident this processor now owns (see `incidents.rs`).
    pub fn adopt(&self, a: Alert) -> bool {
        self.tx.try_send(Item::Adopt(a)).is_ok()
    }

    /// An incident another processor now owns.
    pub fn forget(&self, fingerprint: String) -> bool {
        self.tx.try_send(Item::Forget(fingerprint)).is_ok()
    }

    /// Publish what is queued and let the webhooks deliver it, within `deadline`.
    pub async fn close(self, deadline: Duration) {
        drop(self.tx);
        let _ = tokio::time::timeout(deadline, self.task).await;
    }
}
