//! The async shell around one replica's [`Tracker`]: it owns the replica's connections and
//! the timer, turns what happens into [`Event`]s stamped with the local clock, and carries out
//! the [`Command`]s that come back. It decides nothing itself.

use super::connections::Connections;
use super::{ClockOffset, Command, Event, Identity, ServerTimes, Settings, Tracker, WaitOutcome};
use crate::reader::gtid::GtidKey;
use crate::reader::{Output, QueryKind, ReplicaMetrics, Ticket};
use millilag_core::clock::{now_us, OffsetEstimator, OffsetSample};
use millilag_core::config::DbUrl;
use millilag_core::db::{self, DbTimeouts, WaitSession};
use millilag_core::events::HeartbeatSet;
use millilag_core::secret::Sensitive;
use millilag_core::shutdown::Shutdown;
use mysql_async::prelude::*;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

/// What every replica task of a cluster shares.
pub struct ClusterCtx {
    pub name: String,
    /// `db`.`table`, validated.
    pub table: String,
    pub reader_id: String,
    pub password: Option<Sensitive>,
    /// The cluster's connect and statement bounds.
    pub timeouts: DbTimeouts,
    /// Local clock -> primary clock.
    pub clock: Arc<Mutex<OffsetEstimator>>,
    pub settings: Settings,
}

impl ClusterCtx {
    fn clock_offset(&self) -> ClockOffset {
        let e = self
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .estimate(now_us());
        ClockOffset {
            offset_us: e.offset_us,
            uncertainty_us: e.uncertainty_us,
        }
    }
}

/// A heartbeat for this replica to time.
pub struct Job {
    pub event: Arc<HeartbeatSet>,
    /// The event's GTID, parsed once for the whole cluster.
    pub key: Option<GtidKey>,
    pub ticket: Arc<Ticket>,
}

/// A finished GTID wait, with the session it ran on (None when the query failed).
struct WaitDone {
    key: GtidKey,
    session: Option<WaitSession>,
    generation: u64,
    outcome: WaitOutcome,
    /// The replica's clock when it began and woke.
    server: Option<ServerTimes>,
    armed_at: i64,
    returned_at: i64,
}

/// A GTID wait on its way: run by the replica's own task, not a task of its own (a spawn per
/// wait, and a channel hop back, were a tenth of the reader's CPU at 200 replicas).
type WaitInFlight = Pin<Box<dyn Future<Output = WaitDone> + Send>>;

pub struct ReplicaWorker {
    ctx: Arc<ClusterCtx>,
    tracker: Tracker<Arc<Ticket>>,
    conns: Connections,
    out: Arc<Output>,
    metrics: ReplicaMetrics,
    /// At most the tracker's wait slots.
    waits: Vec<WaitInFlight>,
    /// Commands of the event being handled, and the answers still to hand back, reused.
    commands: Vec<Command<Arc<Ticket>>>,
    answers: VecDeque<Event<Arc<Ticket>>>,
    /// When the loop last went round (local clock): the reader's watchdog tells a stuck task.
    beat: Arc<AtomicI64>,
}

/// Commands and answers a replica keeps room for between events: an event asks for one to
/// three; a burst (a backlog resolved at once) grows them for a moment. Room for 64, kept by
/// every replica after its first burst, was 4 MiB of the reader's 50 at 200 replicas.
const KEPT_ROOM: usize = 8;

/// How often the replica's clock is sampled again (it drifts slowly against ours).
const REPLICA_CLOCK_EVERY: Duration = Duration::from_secs(10);

/// The loop goes round at least this often, even with nothing to do, so that a task that
/// stopped making progress can be told from an idle one.
const BEAT_EVERY: Duration = Duration::from_secs(5);

impl ReplicaWorker {
    pub fn new(ctx: Arc<ClusterCtx>, url: DbUrl, out: Arc<Output>, beat: Arc<AtomicI64>) -> Self {
        let who = Identity {
            cluster: ctx.name.clone(),
            replica: url.address(),
            reader_id: ctx.reader_id.clone(),
        };
        let tracker = Tracker::new(ctx.settings.clone(), who, now_us());
        ReplicaWorker {
            metrics: out.metrics.for_replica(&ctx.name, &url.address()),
            conns: Connections::new(
                url,
                ctx.password.clone(),
                tracker.wait_slots(),
                ctx.timeouts,
            ),
            tracker,
            ctx,
            out,
            waits: Vec::new(),
            commands: Vec::new(),
            answers: VecDeque::new(),
            beat,
        }
    }

    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>, shutdown: Shutdown) {
        let first = self.connect().await;
        self.feed(first).await;
        let mut next_clock_sample = Instant::now() + REPLICA_CLOCK_EVERY;
        // Made once: the loop goes round for every answer and announcement, and a fresh timer
        // or shutdown listener each time is a registration and a removal each time.
        let mut stop = std::pin::pin!(shutdown.triggered());
        let mut wake_at = Instant::now() + BEAT_EVERY;
        let mut wake = std::pin::pin!(tokio::time::sleep_until(wake_at));
        loop {
            self.beat.store(now_us(), Ordering::Relaxed);
            if Instant::now() >= next_clock_sample {
                next_clock_sample = Instant::now() + REPLICA_CLOCK_EVERY;
                self.conns.sample_clock().await;
            }
            let idle_beat = Instant::now() + BEAT_EVERY;
            let next = self
                .tracker
                .next_wake()
                .map_or(idle_beat, |w| local_to_instant(w).min(idle_beat));
            if next != wake_at || wake.is_elapsed() {
                wake_at = next;
                wake.as_mut().reset(next);
            }
            let event = tokio::select! {
                biased;
                _ = &mut stop => break,
                done = next_wait(&mut self.waits) => {
                    self.conns.wait_finished(done.generation, done.session);
                    if let Some(t) = done.server {
                        self.conns.add_clock_sample(OffsetSample::from_exchange(
                            done.armed_at, t.began_us, t.woke_us, done.returned_at,
                        ));
                    }
                    Event::WaitReturned {
                        key: done.key,
                        armed_at: done.armed_at,
                        returned_at: done.returned_at,
                        server: done.server,
                        outcome: done.outcome,
                    }
                }
                job = jobs.recv() => match job {
                    Some(job) => Event::Announced { event: job.event, key: job.key, ticket: job.ticket },
                    None => {
                        self.feed(Event::Removed).await;
                        break;
                    }
                },
                _ = &mut wake => Event::Tick,
            };
            self.feed(event).await;
        }
        // Shutting down: heartbeats still waiting are not reported; their offsets were not
        // stored, so they are measured again after a restart or by another reader.
    }

    /// Hand `event` to the tracker and carry out what it asks, feeding back every answer.
    async fn feed(&mut self, event: Event<Arc<Ticket>>) {
        let mut events = std::mem::take(&mut self.answers);
        events.push_back(event);
        // The primary's offset once per event from outside, not per answer: it takes the
        // cluster's lock and scans its samples, and is re-sampled only every clock_refresh.
        // The replica's gains a sample with most answers.
        self.tracker.set_clock(self.ctx.clock_offset());
        // Both buffers are handed back with their room: this runs for every event.
        let mut commands = std::mem::take(&mut self.commands);
        while let Some(event) = events.pop_front() {
            self.tracker.set_replica_clock(self.conns.replica_clock());
            commands.extend(self.tracker.handle(now_us(), event));
            for c in commands.drain(..) {
                if let Some(answer) = self.execute(c).await {
                    events.push_back(answer);
                }
            }
        }
        // A burst (a stall's backlog resolved at once) leaves no lasting room behind.
        commands.shrink_to(KEPT_ROOM);
        events.shrink_to(KEPT_ROOM);
        self.commands = commands;
        self.answers = events;
        self.metrics.set_lag(self.tracker.lag_us());
    }

    async fn connect(&mut self) -> Event<Arc<Ticket>> {
        match self.conns.connect_control().await {
            Ok(one_way_us) => Event::Connected { one_way_us },
            Err(why) => Event::ConnectFailed { why },
        }
    }

    async fn execute(&mut self, c: Command<Arc<Ticket>>) -> Option<Event<Arc<Ticket>>> {
        match c {
            Command::Arm { key, wait_s } => self.arm(key, wait_s).await,
            Command::Read { server_id } => Some(self.read(server_id).await),
            Command::CheckStatus => Some(self.status().await),
            Command::Connect => Some(self.connect().await),
            Command::Disconnect => {
                self.conns.drop_all();
                None
            }
            Command::Publish { record, ticket } => {
                self.metrics.measured(&record);
                self.out.publish(record, ticket).await;
                None
            }
        }
    }

    /// Start a wait for `key` on a wait connection; it answers through `waits_rx`.
    async fn arm(&mut self, key: GtidKey, wait_s: f64) -> Option<Event<Arc<Ticket>>> {
        let dialect = match &self.conns.dialect {
            Some(d) => d.clone(),
            None => {
                return Some(Event::ConnectFailed {
                    why: "the replica's version is unknown (never connected)".into(),
                })
            }
        };
        let conn = match self.conns.take_wait_conn() {
            Ok(c) => c,
            Err(why) => return Some(Event::ConnectFailed { why }),
        };
        self.metrics.query(QueryKind::GtidWait);
        let generation = self.conns.generation;
        let (addr, slack) = (self.conns.addr.clone(), self.conns.timeouts.query);
        self.waits.push(Box::pin(async move {
            let mut session = match conn.open().await {
                Ok(s) => s,
                Err(why) => {
                    let now = now_us();
                    return WaitDone {
                        key,
                        session: None,
                        generation,
                        outcome: WaitOutcome::Failed(why),
                        server: None,
                        armed_at: now,
                        returned_at: now,
                    };
                }
            };
            let gtid = key.to_string();
            let armed_at = now_us();
            let answer = session
                .gtid_wait(&dialect, &addr, &gtid, wait_s, slack)
                .await;
            let returned_at = now_us();
            let (outcome, session, server) = match answer {
                Ok(a) => {
                    let outcome = match a.reached {
                        Some(true) => WaitOutcome::Reached { already: a.already },
                        Some(false) => WaitOutcome::TimedOut,
                        None => WaitOutcome::Unsupported,
                    };
                    let server = a
                        .began_us
                        .zip(a.woke_us)
                        .map(|(began_us, woke_us)| ServerTimes {
                            began_us,
                            woke_us,
                            position: a.position,
                        });
                    (outcome, Some(session), server)
                }
                Err(e) => {
                    // Hung or broken: closed in the background, never reused.
                    tokio::spawn(db::close(session.into_conn()));
                    (WaitOutcome::Failed(e.to_string()), None, None)
                }
            };
            WaitDone {
                key,
                session,
                generation,
                outcome,
                server,
                armed_at,
                returned_at,
            }
        }));
        None
    }

    /// One read of the heartbeat row.
    async fn read(&mut self, server_id: i64) -> Event<Arc<Ticket>> {
        // The replica's clock in the same statement: when it read, not when we sent or heard.
        let sql = format!(
            "SELECT CAST(seq AS SIGNED), UNIX_TIMESTAMP(SYSDATE(6)) FROM {} WHERE server_id = {server_id}",
            self.ctx.table
        );
        let (addr, limit) = (self.conns.addr.clone(), self.conns.timeouts.query);
        let c = match self.conns.control().await {
            Ok(c) => c,
            Err(why) => {
                return Event::ReadFailed {
                    why,
                    connection_lost: true,
                }
            }
        };
        self.metrics.query(QueryKind::Poll);
        let sent_at = now_us();
        let res: Result<Option<(Option<i64>, Option<String>)>, _> =
            db::bounded(limit, &addr, c.query_first(sql)).await;
        let returned_at = now_us();
        match res {
            Ok(row) => {
                let (seq, at) = row.unwrap_or((None, None));
                let server_at = at.as_deref().and_then(db::unix_text_to_us);
                if let Some(t) = server_at {
                    self.conns.add_clock_sample(OffsetSample::from_exchange(
                        sent_at,
                        t,
                        t,
                        returned_at,
                    ));
                }
                Event::ReadReturned {
                    sent_at,
                    returned_at,
                    seq: seq.unwrap_or(0),
                    server_at,
                }
            }
            Err(e) => {
                // The server refused the statement (a missing table, a privilege): the
                // connection is fine. Anything else (gone, hung) loses it.
                let connection_lost = !e.is_server_error();
                if connection_lost {
                    if let Some(c) = self.conns.control.take() {
                        tokio::spawn(db::close(c));
                    }
                }
                Event::ReadFailed {
                    why: e.to_string(),
                    connection_lost,
                }
            }
        }
    }

    /// Whether a replication thread is stopped; "no" when that cannot be told.
    async fn status(&mut self) -> Event<Arc<Ticket>> {
        let stopped = match (self.conns.control.as_mut(), self.conns.dialect.clone()) {
            (Some(c), Some(d)) => {
                self.metrics.query(QueryKind::Status);
                let limit = self.conns.timeouts.query;
                match db::replica_status_within(c, &d, &self.conns.addr, limit).await {
                    Ok(s) => !s.replicating(),
                    Err(e) => {
                        if let Some(c) = self.conns.control.take() {
                            tokio::spawn(db::close(c));
                        }
                        warn!(replica = %self.conns.addr, error = %e, "Cannot read replica status.");
                        false
                    }
                }
            }
            _ => false,
        };
        Event::StatusReturned {
            replication_stopped: stopped,
        }
    }
}

/// The tokio instant of a local wall-clock time.
fn local_to_instant(local_us: i64) -> Instant {
    let now = now_us();
    let now_i = Instant::now();
    if local_us >= now {
        now_i + Duration::from_micros((local_us - now) as u64)
    } else {
        now_i
            .checked_sub(Duration::from_micros((now - local_us) as u64))
            .unwrap_or(now_i)
    }
}

/// The first of `waits` to finish (pending while there are none).
async fn next_wait(waits: &mut Vec<WaitInFlight>) -> WaitDone {
    std::future::poll_fn(|cx| {
        for i in 0..waits.len() {
            if let Poll::Ready(done) = waits[i].as_mut().poll(cx) {
                drop(waits.swap_remove(i));
                return Poll::Ready(done);
            }
        }
        Poll::Pending
    })
    .await
}
