//! processors/: the reader (times when each replica shows each heartbeat) and the processor
//! (`millilag processor`: windows, sinks, alerts). Both read Kafka through [`consumer`], the
//! at-least-once input they share.

pub mod check;
pub mod consumer;
pub mod processor;
pub mod reader;
