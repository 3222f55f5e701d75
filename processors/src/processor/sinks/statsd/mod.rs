//! statsd sink (`[[sink.statsd]]`): window gauges and, optionally, every exact measurement as a
//! timer, over UDP to a statsd daemon (Etsy statsd, Telegraf, the Datadog agent,
//! statsd_exporter) — the integration percona-millipede's users had.
//!
//! Best effort, unlike every other sink. UDP has no acknowledgement, so a statsd sink is not
//! part of the at-least-once chain: it is not one of the sinks whose acknowledgement releases
//! offsets ([`super::SinkHandle`]), it never pauses consumption, and nothing is retried.
//!
//! ```text
//! Dispatch ── closed windows (Arc, try_send) ──┐                    ┌─► datagrams ≤ mtu ─► UDP
//!                                              ├─► task: lines ─► Packer
//! run loop ── exact measurements (Timings) ────┘    (lines.rs)   (packets.rs)
//! ```
//!
//! Both queues are bounded and fed with `try_send`: when the task is behind (it never waits on
//! the daemon, but name resolution is bounded by `timeout`), what does not fit is dropped and
//! counted. A daemon that is down costs nothing: datagrams leave whether or not anyone
//! listens. Counted on `/metrics`: `millilag_processor_statsd_sent_total{sink, kind}` (windows,
//! timings, datagrams, bytes) and `millilag_processor_statsd_dropped_total{sink, kind, reason}`.

pub mod lines;
pub mod packets;
pub mod timings;

use super::super::metrics::{labels, Labels};
use lines::Namer;
use millilag_core::config::StatsdSinkConfig;
use millilag_core::events::DelayWindow;
use millilag_core::retry::{Backoff, RetryPolicy};
use packets::Packer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use timings::{Timing, TimingTap};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

/// Batches of closed windows waiting for the task (a batch leaves the run loop every 20 ms at
/// most, so this is seconds of backlog).
const WINDOW_QUEUE: usize = 256;
/// Chunks of timings waiting for the task.
const TIMING_QUEUE: usize = 256;
/// How long a resolved address is used before it is looked up again (a statsd that moved).
const RESOLVE_EVERY: Duration = Duration::from_secs(60);

/// The statsd sinks' counters, registered once.
#[derive(Clone)]
pub struct StatsdMetrics {
    sent: Family<Labels, Counter>,
    dropped: Family<Labels, Counter>,
}

impl StatsdMetrics {
    pub fn new(registry: &mut Registry) -> StatsdMetrics {
        let m = StatsdMetrics {
            sent: Family::default(),
            dropped: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("processor");
        r.register(
            "statsd_sent",
            "Sent to a statsd sink (best effort): windows, timings, datagrams, bytes",
            m.sent.clone(),
        );
        r.register(
            "statsd_dropped",
            "Not sent to a statsd sink, per kind and reason (queue_full, unresolved, send_failed, too_long)",
            m.dropped.clone(),
        );
        m
    }

    pub fn sent(&self, sink: &str, kind: &str) -> Counter {
        self.sent
            .get_or_create(&labels(&[("sink", sink), ("kind", kind)]))
            .clone()
    }

    pub fn dropped(&self, sink: &str, kind: &str, reason: &str) -> Counter {
        self.dropped
            .get_or_create(&labels(&[
                ("sink", sink),
                ("kind", kind),
                ("reason", reason),
            ]))
            .clone()
    }
}

/// The dispatcher's side of one statsd sink.
pub struct StatsdHandle {
    pub name: String,
    tx: mpsc::Sender<Arc<[DelayWindow]>>,
    dropped: Counter,
    task: tokio::task::JoinHandle<()>,
}

impl StatsdHandle {
    /// Offer a batch of closed windows; never waits. A full queue drops it (counted).
    pub fn send(&self, windows: &Arc<[DelayWindow]>) {
        if self.tx.try_send(windows.clone()).is_err() {
            self.dropped.inc_by(windows.len() as u64);
        }
    }

    /// No more windows: the task sends what it has and ends, or is aborted after `deadline`
    /// (then false). Its timing tap must be gone first (the run loop owns it).
    pub async fn close(self, deadline: Duration) -> bool {
        drop(self.tx);
        let mut task = self.task;
        let ended = tokio::time::timeout(deadline, &mut task).await.is_ok();
        if !ended {
            task.abort();
        }
        ended
    }
}

/// Start the task of `[[sink.statsd]]` number `index`: its handle, and its timing tap when
/// `timings` is on.
pub fn spawn(
    index: usize,
    config: &StatsdSinkConfig,
    metrics: &StatsdMetrics,
) -> (StatsdHandle, Option<TimingTap>) {
    let name = format!("statsd[{index}]");
    let namer = Namer::new(&config.prefix, config.protocol, config.sample_rate());
    let (tx, windows) = mpsc::channel(WINDOW_QUEUE);
    let (tap, timings) = if config.timings {
        let (ttx, trx) = mpsc::channel(TIMING_QUEUE);
        let tap = TimingTap::new(namer.clone(), config.sample_rate(), ttx, &name, metrics);
        (Some(tap), Some(trx))
    } else {
        (None, None)
    };
    let task = Task {
        namer,
        packer: Packer::new(config.mtu),
        dest: Destination::new(config.address.clone(), config.timeout.0),
        counters: Counters::new(&name, metrics),
    };
    let span = tracing::info_span!("sink", sink = %name, address = %config.address);
    let task = tokio::spawn(task.run(windows, timings).instrument(span));
    let handle = StatsdHandle {
        dropped: metrics.dropped(&name, "windows", "queue_full"),
        name,
        tx,
        task,
    };
    (handle, tap)
}

struct Counters {
    windows: Counter,
    timings: Counter,
    datagrams: Counter,
    bytes: Counter,
    unresolved_windows: Counter,
    unresolved_timings: Counter,
    send_failed: Counter,
    too_long: Counter,
}

impl Counters {
    fn new(sink: &str, m: &StatsdMetrics) -> Counters {
        Counters {
            windows: m.sent(sink, "windows"),
            timings: m.sent(sink, "timings"),
            datagrams: m.sent(sink, "datagrams"),
            bytes: m.sent(sink, "bytes"),
            unresolved_windows: m.dropped(sink, "windows", "unresolved"),
            unresolved_timings: m.dropped(sink, "timings", "unresolved"),
            send_failed: m.dropped(sink, "datagrams", "send_failed"),
            too_long: m.dropped(sink, "lines", "too_long"),
        }
    }
}

struct Task {
    namer: Namer,
    packer: Packer,
    dest: Destination,
    counters: Counters,
}

impl Task {
    async fn run(
        mut self,
        mut windows: mpsc::Receiver<Arc<[DelayWindow]>>,
        mut timings: Option<mpsc::Receiver<Vec<Timing>>>,
    ) {
        let mut windows_open = true;
        let mut line = String::with_capacity(128);
        loop {
            tokio::select! {
                biased;
                batch = windows.recv(), if windows_open => match batch {
                    Some(b) => self.windows(&b).await,
                    None => windows_open = false,
                },
                chunk = recv_opt(&mut timings), if timings.is_some() => match chunk {
                    Some(c) => self.timings(&c, &mut line).await,
                    None => timings = None,
                },
                else => return,
            }
        }
    }

    async fn windows(&mut self, batch: &[DelayWindow]) {
        let too_long = self.packer.too_long;
        for w in batch {
            self.namer.window_units(w, |u| {
                self.packer.push(u);
            });
        }
        if self.send().await {
            self.counters.windows.inc_by(batch.len() as u64);
        } else {
            self.counters.unresolved_windows.inc_by(batch.len() as u64);
        }
        self.counters
            .too_long
            .inc_by(self.packer.too_long - too_long);
    }

    async fn timings(&mut self, chunk: &[Timing], line: &mut String) {
        let too_long = self.packer.too_long;
        for (name, us) in chunk {
            name.line(line, *us);
            self.packer.push(line);
        }
        if self.send().await {
            self.counters.timings.inc_by(chunk.len() as u64);
        } else {
            self.counters.unresolved_timings.inc_by(chunk.len() as u64);
        }
        self.counters
            .too_long
            .inc_by(self.packer.too_long - too_long);
    }

    /// Send what the packer holds; false when the address could not be resolved (the
    /// datagrams are dropped).
    async fn send(&mut self) -> bool {
        let datagrams = self.packer.take();
        let Some((socket, addr)) = self.dest.get().await else {
            return false;
        };
        let mut failed = 0;
        for d in &datagrams {
            // A UDP send only waits for room in the socket buffer; bounded all the same.
            match tokio::time::timeout(self.dest.timeout, socket.send_to(d.as_bytes(), addr)).await
            {
                Ok(Ok(_)) => {
                    self.counters.datagrams.inc();
                    self.counters.bytes.inc_by(d.len() as u64);
                }
                Ok(Err(e)) => {
                    failed += 1;
                    self.dest.note_send_error(&e.to_string());
                }
                Err(_) => {
                    failed += 1;
                    self.dest.note_send_error("timed out");
                }
            }
        }
        self.counters.send_failed.inc_by(failed);
        if failed == 0 {
            self.dest.note_sent();
        }
        true
    }
}

/// `recv` on a queue that may be absent (no timings; the branch is disabled then).
async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

/// The daemon's address, resolved when first needed, again every [`RESOLVE_EVERY`], and —
/// after a failed lookup — not before a backoff, so a bad name costs one lookup per backoff
/// step, not one per batch.
struct Destination {
    address: String,
    timeout: Duration,
    resolved: Option<(Arc<UdpSocket>, SocketAddr, Instant)>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Logged once per outage, not per datagram.
    failing: bool,
}

impl Destination {
    fn new(address: String, timeout: Duration) -> Destination {
        Destination {
            address,
            timeout,
            resolved: None,
            retry_at: None,
            backoff: RetryPolicy::RECONNECT.backoff(),
            failing: false,
        }
    }

    async fn get(&mut self) -> Option<(Arc<UdpSocket>, SocketAddr)> {
        let now = Instant::now();
        if let Some((s, a, at)) = &self.resolved {
            if now.duration_since(*at) < RESOLVE_EVERY {
                return Some((s.clone(), *a));
            }
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return self.resolved.as_ref().map(|(s, a, _)| (s.clone(), *a));
        }
        match self.resolve().await {
            Ok((socket, addr)) => {
                let socket = match &self.resolved {
                    // Keep the socket while the address family is the same.
                    Some((s, a, _)) if a.is_ipv4() == addr.is_ipv4() => s.clone(),
                    _ => Arc::new(socket),
                };
                self.resolved = Some((socket.clone(), addr, now));
                self.retry_at = None;
                self.backoff.reset();
                Some((socket, addr))
            }
            Err(e) => {
                let delay = self.backoff.next_delay();
                self.retry_at = Some(now + delay);
                if !self.failing {
                    warn!(error = %e, retry_in = ?delay, "statsd address unusable; windows and timings are dropped (counted) until it resolves.");
                    self.failing = true;
                }
                // A previous address is better than none while the lookup fails.
                if let Some((s, a, at)) = &mut self.resolved {
                    *at = now;
                    return Some((s.clone(), *a));
                }
                None
            }
        }
    }

    async fn resolve(&self) -> Result<(UdpSocket, SocketAddr), String> {
        let addrs = tokio::time::timeout(self.timeout, tokio::net::lookup_host(&self.address))
            .await
            .map_err(|_| format!("resolving {}: timed out", self.address))?
            .map_err(|e| format!("resolving {}: {e}", self.address))?;
        let addr = addrs
            .into_iter()
            .next()
            .ok_or_else(|| format!("resolving {}: no address", self.address))?;
        let local: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("binding a UDP socket: {e}"))?;
        Ok((socket, addr))
    }

    fn note_send_error(&mut self, e: &str) {
        if !self.failing {
            warn!(error = %e, "Sending to statsd failed; datagrams are dropped (counted), not retried.");
            self.failing = true;
        }
    }

    fn note_sent(&mut self) {
        if self.failing {
            info!("Sending to statsd again.");
            self.failing = false;
        }
    }
}

#[cfg(test)]
mod tests;
