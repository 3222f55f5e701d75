//! End-to-end tests against real services started by `millilag-harness`.
//!
//! One test binary (one link); nextest runs each test in its own process, so every test starts
//! the services it needs and they die with it.

mod alerting;
mod backpressure;
mod check;
mod cli;
mod common;
mod compose;
mod compose_tls;
mod db;
mod failover;
mod grafana;
mod ha;
mod harness;
mod incidents;
mod loud;
mod package;
mod partitions;
mod processor;
mod prometheus;
mod python;
mod reader;
mod reader_faults;
mod silence;
mod sink_errors;
mod stall_figures;
mod statsd;
mod tls;
mod tls_refusals;
mod writer;
mod writer_faults;
