//! processors/: the reader (times when each replica shows each heartbeat) and the aggregator
//! (`millilag processor`: windows, sinks, alerts).

pub mod aggregator;
pub mod reader;
