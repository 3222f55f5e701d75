//! millilag's shared library: the event contract and its Avro codec, the config, Kafka and
//! MySQL clients set up the way the services need them, metrics/health endpoints, shutdown.
//!
//! Data flow: the writer (`producers/`) publishes [`events::HeartbeatSet`]; the reader
//! (`processors/reader`) turns each into [`events::ReplicaDelay`] records; the processor
//! (`processors/processor`) windows them into [`events::DelayWindow`]s, sinks and alerts.

pub mod clock;
pub mod config;
pub mod db;
pub mod duration;
pub mod error;
pub mod events;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod names;
pub mod retry;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use error::{Error, ErrorDomain, Result, RetryHint};
