//! processors/: the reader (times when each replica shows each heartbeat) and the processor
//! (`millilag processor`: windows, sinks, alerts).

pub mod processor;
pub mod reader;
