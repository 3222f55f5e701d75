//! producers/: the writer service. See `writer` for how a heartbeat is set and announced.

pub mod writer;
