//! Kafka sink: one `delay-window` record per window, key `cluster/replica`, for downstream
//! consumers. A batch is accepted when the broker acknowledged every record.

use super::Sink;
use futures::future::try_join_all;
use millilag_core::events::DelayWindow;
use millilag_core::kafka::send_record;
use millilag_core::Error;
use rdkafka::producer::FutureProducer;

pub struct KafkaSink {
    producer: FutureProducer,
    topic: String,
}

impl KafkaSink {
    pub fn new(producer: FutureProducer, topic: String) -> KafkaSink {
        KafkaSink { producer, topic }
    }
}

impl Sink for KafkaSink {
    async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> Result<(), Error> {
        let sends = windows.iter().map(|w| {
            let key = format!("{}/{}", w.cluster, w.replica);
            let producer = &self.producer;
            let topic = &self.topic;
            async move { send_record(producer, topic, &key, *w).await }
        });
        // Broker errors say "kafka: ..." and are retried (Error::retry_hint).
        try_join_all(sends).await?;
        Ok(())
    }
}
