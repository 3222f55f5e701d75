//! One task per replica: times when the replica shows each heartbeat and publishes the result.
//!
//! GTID-wait method (no polling): the task keeps up to `prearm_depth` `MASTER_GTID_WAIT`s
//! armed, each on its own connection, for the next numbers of the heartbeat GTID sequence that
//! the replica has not reached — armed before those heartbeats are even written when the
//! sequence is known to be consecutive (the writer's dedicated GTID domain). The replica wakes
//! each wait the moment it applies that transaction, so visibility is timed independently of
//! when the `heartbeat-set` event arrives over Kafka; the event only contributes its commit time
//! and seq. One wait per heartbeat per replica: that is the whole database load in steady state.
//! After a stall the replica applies the backlog in a burst, faster than a wait can be re-armed
//! per heartbeat. So when a wait returns while announced heartbeats are still behind, the task
//! switches to catch-up: it reads the heartbeat row back to back until the replica reaches the
//! announced frontier; each read brackets the heartbeats that appeared since the previous one
//! (a round trip wide), at fewer than one query per heartbeat. Waits stay armed beyond the
//! frontier meanwhile, so steady state resumes exactly timed.
//!
//! Poll method (no GTID): polls the heartbeat row's seq every `poll_interval`, from just before
//! the writer's next tick (its drift-free grid, estimated from the events) until it shows,
//! whether or not its event has arrived; the gap grows with how overdue it is (2% of it, up to
//! `poll_max_interval`), so a stall's end is bracketed within a small fraction of its length.
//!
//! Failure handling: a lost connection is retried once; if the replica cannot be reached, every
//! waiting and new heartbeat is reported `replica_unreachable` until a reconnect (with backoff)
//! succeeds. A heartbeat not shown within `timeout` is reported `timeout`, or
//! `replication_stopped` if SHOW SLAVE STATUS says a replication thread is not running. More
//! than `max_in_flight_per_replica` waiting heartbeats: the oldest is reported `skipped`.

use super::gtid::GtidKey;
use super::timing::{self, Observation};
use super::{Output, QueryKind, ReplicaMetrics, Ticket};
use millilag_core::backoff::Backoff;
use millilag_core::clock::{now_us, OffsetEstimator};
use millilag_core::config::{DbUrl, ReaderMethod};
use millilag_core::db::{self, Dialect};
use millilag_core::events::{HeartbeatSet, MeasureMethod, MeasureStatus, ReplicaDelay};
use millilag_core::secret::Sensitive;
use millilag_core::shutdown::Shutdown;
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

/// What every replica task of a cluster shares.
pub struct ClusterCtx {
    pub name: String,
    /// `db`.`table`, validated.
    pub table: String,
    pub reader_id: String,
    pub password: Option<Sensitive>,
    /// Local clock -> primary clock.
    pub clock: Arc<Mutex<OffsetEstimator>>,
    pub settings: Settings,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub method: ReaderMethod,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    pub timeout: Duration,
    pub prearm_depth: usize,
    pub max_in_flight: usize,
}

impl ClusterCtx {
    fn to_primary(&self, local_us: i64) -> (i64, i64) {
        self.clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .to_primary(local_us)
    }

    fn to_local(&self, primary_us: i64) -> i64 {
        let (p, _) = self.to_primary(primary_us);
        primary_us - (p - primary_us)
    }
}

/// A heartbeat for this replica to time.
pub struct Job {
    pub event: Arc<HeartbeatSet>,
    pub ticket: Arc<Ticket>,
}

struct Pending {
    event: Arc<HeartbeatSet>,
    ticket: Arc<Ticket>,
    key: Option<GtidKey>,
    queries: i32,
}

/// A finished GTID wait, with the connection it ran on.
struct WaitDone {
    key: GtidKey,
    conn: Conn,
    result: Result<Option<i64>, mysql_async::Error>,
    armed_at: i64,
    returned_at: i64,
}

/// The latest read of the heartbeat row, in primary-clock microseconds. Where in its round
/// trip a read looked at the table is unknown, so it is kept as the interval it must lie in:
/// no earlier than the request's arrival, no later than the answer's departure.
#[derive(Debug, Clone, Copy)]
struct LastRead {
    earliest_us: i64,
    latest_us: i64,
    seq: i64,
}

/// When a sequence number was seen reached (local clock).
#[derive(Clone, Copy)]
struct Reached {
    armed_at: i64,
    returned_at: i64,
}

/// Connections beyond the armed waits: one for event-triggered waits that do not fit.
const SPARE_CONNECTIONS: usize = 2;
/// How long one armed wait blocks at most before it is re-armed; bounds how long a server
/// thread lingers after a reader stops or loses interest.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Sightings older than this with no announced heartbeat are forgotten.
const SIGHTING_TTL_US: i64 = 120_000_000;

pub struct ReplicaWorker {
    ctx: Arc<ClusterCtx>,
    url: DbUrl,
    addr: String,
    out: Arc<Output>,
    metrics: ReplicaMetrics,
    dialect: Option<Dialect>,
    idle: Vec<Conn>,
    conns: usize,
    control: Option<Conn>,
    one_way_us: i64,
    reachable: bool,
    reconnect_at: Option<Instant>,
    backoff: Backoff,
    pending: BTreeMap<i64, Pending>,
    /// Per GTID sequence: numbers seen reached (only those with a wait of their own).
    reached: HashMap<String, BTreeMap<u64, Reached>>,
    /// Per GTID sequence: highest number reached, and when.
    position: HashMap<String, (u64, i64)>,
    /// seq -> when row reads saw it appear (primary clock), kept until its event arrives.
    row_sightings: BTreeMap<i64, Observation>,
    armed: HashSet<GtidKey>,
    /// Highest announced key per sequence, and whether heartbeats were seen to be numbered
    /// consecutively there (only then are waits armed ahead of announcements).
    frontier: HashMap<String, (u64, i64, bool)>,
    waits_tx: mpsc::UnboundedSender<WaitDone>,
    waits_rx: mpsc::UnboundedReceiver<WaitDone>,
    gtid_unsupported: bool,
    // poll state
    server_id: Option<i64>,
    last_poll: Option<LastRead>,
    next_poll: Option<Instant>,
    poll_gap: Duration,
    /// When the last heartbeat event arrived (a writer still announcing has heartbeats due).
    last_event_at: Option<Instant>,
    polls_since_hit: i32,
    /// The writer's heartbeat interval and the latest event's (seq, commit time): the writer's
    /// schedule is drift-free, so heartbeat n is due at that commit + (n - seq) * interval.
    interval_us: i64,
    schedule: Option<(i64, i64)>,
    /// Poll mode: recent estimates of the writer's tick grid origin (primary clock), one per
    /// event: when its UPDATE was sent (commit time minus the commit round trip) minus
    /// seq * interval. A late tick only makes an estimate later, so the smallest is the grid,
    /// and heartbeat n cannot commit before origin + n * interval.
    grid_origins: VecDeque<i64>,
    next_trim: Instant,
    /// Catching up after a stall: reading the row back to back (see the module doc).
    catch_up: bool,
    /// Last time a catch-up read saw the replica move on.
    catch_up_progress: Instant,
}

/// Most seqs one read may record as newly seen (a read after a long gap says little anyway).
const MAX_SIGHTING_SPAN: i64 = 100_000;

/// An interval from the commit to a sighting at most this wide counts as measured, not as an
/// upper bound (see [`timing::measure`]); its width is still reported as uncertainty. It covers
/// reads 1-2 ms apart spread out by scheduling on a busy host.
const TIGHT_US: i64 = 5_000;

/// How early polling resumes before the writer's next tick (covers the clock-offset error and a
/// late timer).
const RESUME_MARGIN_US: i64 = 2_000;

/// Poll gap while a heartbeat is overdue: this fraction of how late it is.
const OVERDUE_GAP_FRACTION: u64 = 50;

/// A writer whose last event is older than this is not announcing: its next heartbeat is not
/// awaited by reads (a heartbeat whose event arrived still is, until its timeout).
const WRITER_SILENT_AFTER: Duration = Duration::from_secs(1);

/// Events the tick-grid estimate is taken over (a writer that skipped a tick or took over moves
/// the grid; after this many events the old estimate is gone).
const GRID_EVENTS: usize = 64;

/// Most heartbeats the arming horizon runs ahead of the last announcement on the writer's
/// schedule (a writer that stopped announcing does not move it further).
const MAX_SCHEDULE_AHEAD: i64 = 1_000;

/// Catch-up hands back to the armed waits after this long without progress (at least two
/// heartbeat intervals): the replica stalled again, or applies too slowly for reads to help.
const STAGNANT_FOR: Duration = Duration::from_millis(20);

impl ReplicaWorker {
    pub fn new(ctx: Arc<ClusterCtx>, url: DbUrl, out: Arc<Output>) -> Self {
        let (waits_tx, waits_rx) = mpsc::unbounded_channel();
        let poll_gap = ctx.settings.poll_interval;
        ReplicaWorker {
            metrics: out.metrics.for_replica(&ctx.name, &url.address()),
            addr: url.address(),
            ctx,
            url,
            out,
            dialect: None,
            idle: Vec::new(),
            conns: 0,
            control: None,
            one_way_us: 0,
            reachable: true,
            reconnect_at: None,
            backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
            pending: BTreeMap::new(),
            reached: HashMap::new(),
            position: HashMap::new(),
            row_sightings: BTreeMap::new(),
            armed: HashSet::new(),
            frontier: HashMap::new(),
            waits_tx,
            waits_rx,
            gtid_unsupported: false,
            server_id: None,
            last_poll: None,
            next_poll: None,
            poll_gap,
            last_event_at: None,
            polls_since_hit: 0,
            interval_us: 0,
            schedule: None,
            grid_origins: VecDeque::new(),
            next_trim: Instant::now(),
            catch_up: false,
            catch_up_progress: Instant::now(),
        }
    }

    fn pool_size(&self) -> usize {
        self.ctx.settings.prearm_depth + SPARE_CONNECTIONS
    }

    pub async fn run(mut self, mut jobs: mpsc::Receiver<Job>, mut shutdown: Shutdown) {
        if let Err(e) = self.connect_control().await {
            self.lost(format!("{e:#}"));
        }
        let removed = loop {
            let timer = self.next_timer();
            tokio::select! {
                biased;
                _ = shutdown.wait() => break false,
                Some(done) = self.waits_rx.recv() => self.on_wait_done(done).await,
                job = jobs.recv() => match job {
                    Some(job) => self.on_job(job).await,
                    None => break true,
                },
                _ = sleep_until_opt(timer) => self.on_timer().await,
            }
        };
        if removed {
            // The primary stopped listing this replica (its replication disconnected): what it
            // still owed is reported as such, so those heartbeats' offsets can be stored.
            for (_, p) in std::mem::take(&mut self.pending) {
                self.report(
                    &p.event,
                    &p.ticket,
                    MeasureStatus::ReplicationStopped,
                    p.queries,
                );
            }
        } else {
            // Shutting down: heartbeats still waiting are not reported; their offsets were not
            // stored, so they are measured again after a restart or by another reader.
            self.pending.clear();
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        let deadline = self
            .pending
            .values()
            .next()
            .map(|p| self.deadline(&p.event));
        [self.reconnect_at, self.next_poll, deadline]
            .into_iter()
            .flatten()
            .min()
    }

    fn deadline(&self, e: &HeartbeatSet) -> Instant {
        let commit_local = self.ctx.to_local(e.committed_at_us);
        let due = commit_local + self.ctx.settings.timeout.as_micros() as i64;
        local_to_instant(due)
    }

    async fn connect(&self) -> Result<Conn, millilag_core::Error> {
        db::connect(&self.url, self.ctx.password.as_ref().map(|p| p.expose())).await
    }

    async fn connect_control(&mut self) -> anyhow::Result<()> {
        let mut c = self.connect().await?;
        let dialect = db::dialect(&mut c, &self.addr).await?;
        // Fastest of a few pings: half of it is how long an answer takes to reach us.
        let mut best = i64::MAX;
        for _ in 0..3 {
            let t0 = now_us();
            c.query_drop("SELECT 1").await?;
            best = best.min(now_us() - t0);
        }
        self.one_way_us = best / 2;
        self.dialect = Some(dialect);
        self.control = Some(c);
        Ok(())
    }

    /// Heartbeats of this replica are timed by polling (by config or for lack of GTID waits).
    fn poll_mode(&self) -> bool {
        self.ctx.settings.method == ReaderMethod::Poll || self.gtid_unsupported
    }

    fn use_gtid(&self, key: &Option<GtidKey>) -> bool {
        key.is_some() && !self.gtid_unsupported && self.ctx.settings.method != ReaderMethod::Poll
    }

    async fn on_job(&mut self, job: Job) {
        let e = job.event;
        if !self.reachable {
            self.report(&e, &job.ticket, MeasureStatus::ReplicaUnreachable, 0);
            return;
        }
        if self.pending.len() >= self.ctx.settings.max_in_flight {
            // Supersede the oldest rather than queue without bound.
            if let Some((_, old)) = self.pending.pop_first() {
                self.report(&old.event, &old.ticket, MeasureStatus::Skipped, old.queries);
            }
        }
        self.server_id = Some(e.server_id);
        self.last_event_at = Some(Instant::now());
        if self.interval_us != e.interval_us {
            self.grid_origins.clear();
        }
        self.interval_us = e.interval_us;
        if self.poll_mode() && e.interval_us > 0 {
            if self.grid_origins.len() == GRID_EVENTS {
                self.grid_origins.pop_front();
            }
            self.grid_origins
                .push_back(e.committed_at_us - e.commit_rtt_us - e.seq * e.interval_us);
        }
        if self.schedule.is_none_or(|(s, _)| e.seq > s) {
            self.schedule = Some((e.seq, e.committed_at_us));
        }
        let key = e.gtid.as_deref().and_then(GtidKey::parse);
        let gtid = self.use_gtid(&key);
        let key = if gtid { key } else { None };
        self.pending.insert(
            e.seq,
            Pending {
                event: e.clone(),
                ticket: job.ticket,
                key: key.clone(),
                queries: 0,
            },
        );
        match key {
            Some(key) => {
                self.note_announced(&key, e.seq);
                if self.try_resolve(e.seq) {
                    self.top_up(&key.sequence).await;
                    return;
                }
                if self.catch_up {
                    // The reads of the catch-up will time it.
                    return;
                }
                if !self.armed.contains(&key) {
                    self.arm(key.clone()).await;
                    if let Some(p) = self.pending.get_mut(&e.seq) {
                        p.queries += 1;
                    }
                }
                self.top_up(&key.sequence).await;
            }
            None => {
                if !self.try_resolve(e.seq) {
                    self.next_poll = Some(
                        self.next_poll
                            .map_or(Instant::now(), |t| t.min(Instant::now())),
                    );
                }
            }
        }
    }

    /// Track the announced frontier and whether numbering is consecutive.
    fn note_announced(&mut self, key: &GtidKey, seq: i64) {
        let f = self
            .frontier
            .entry(key.sequence.clone())
            .or_insert((key.n, seq, false));
        if key.n > f.0 {
            let consecutive = key.n - f.0 == (seq - f.1) as u64;
            *f = (key.n, seq, consecutive);
        }
    }

    /// Arm waits for the next numbers the replica has not reached, up to `prearm_depth` ahead
    /// of the announced frontier, when the sequence is known to be consecutive.
    async fn top_up(&mut self, sequence: &str) {
        let Some(&(front, _, consecutive)) = self.frontier.get(sequence) else {
            return;
        };
        if !consecutive || !self.reachable {
            return;
        }
        let depth = self.ctx.settings.prearm_depth as u64;
        let reached = self.position.get(sequence).map(|p| p.0).unwrap_or(0);
        // In catch-up the announced backlog is timed by reads; waits go to what comes next.
        let mut n = if self.catch_up {
            reached.max(front) + 1
        } else {
            reached + 1
        };
        // Events arrive in batches (a fetch wait apart) and may lag the heartbeats by several
        // intervals; the writer's schedule is drift-free, so the number being written now is
        // the last announced one plus the intervals elapsed since its commit.
        let elapsed = match (self.schedule, self.interval_us) {
            (Some((_, commit)), interval) if interval > 0 => {
                let now = self.ctx.to_primary(now_us()).0;
                ((now - commit).max(0) / interval).min(MAX_SCHEDULE_AHEAD) as u64
            }
            _ => 0,
        };
        let horizon = front + elapsed + depth;
        let mut armed_here = self.armed.iter().filter(|k| k.sequence == sequence).count() as u64;
        while armed_here < depth && n <= horizon {
            let key = GtidKey {
                sequence: sequence.to_string(),
                n,
            };
            let seen = self
                .reached
                .get(sequence)
                .is_some_and(|m| m.contains_key(&n));
            if !self.armed.contains(&key) && !seen {
                if !self.arm(key).await {
                    break;
                }
                armed_here += 1;
            }
            n += 1;
        }
    }

    /// Start a wait for `key` on an idle (or new) connection. False when none is available.
    async fn arm(&mut self, key: GtidKey) -> bool {
        let conn = match self.idle.pop() {
            Some(c) => c,
            None if self.conns < self.pool_size() => match self.connect().await {
                Ok(c) => {
                    self.conns += 1;
                    c
                }
                Err(e) => {
                    self.lost(format!("{e:#}"));
                    return false;
                }
            },
            None => return false,
        };
        let Some(dialect) = self.dialect.clone() else {
            self.idle.push(conn);
            return false;
        };
        self.armed.insert(key.clone());
        self.metrics.query(QueryKind::GtidWait);
        let tx = self.waits_tx.clone();
        let wait_s = self.ctx.settings.timeout.min(MAX_WAIT).as_secs_f64();
        tokio::spawn(async move {
            let mut conn = conn;
            let armed_at = now_us();
            let result: Result<Option<Option<i64>>, _> = conn
                .exec_first(dialect.gtid_wait_sql(), (key.to_string(), wait_s))
                .await;
            let returned_at = now_us();
            let _ = tx.send(WaitDone {
                key,
                conn,
                result: result.map(|r| r.flatten()),
                armed_at,
                returned_at,
            });
        });
        true
    }

    async fn on_wait_done(&mut self, d: WaitDone) {
        self.armed.remove(&d.key);
        let reached = match d.result {
            Ok(r) => {
                self.idle.push(d.conn);
                self.dialect.as_ref().and_then(|dl| dl.gtid_wait_reached(r))
            }
            Err(e) => {
                self.conns = self.conns.saturating_sub(1);
                drop(d.conn);
                self.connection_failed(format!("{e}")).await;
                return;
            }
        };
        match reached {
            Some(true) => {
                let seq = d.key.sequence.clone();
                self.reached.entry(seq.clone()).or_default().insert(
                    d.key.n,
                    Reached {
                        armed_at: d.armed_at,
                        returned_at: d.returned_at,
                    },
                );
                let pos = self
                    .position
                    .entry(seq.clone())
                    .or_insert((0, d.returned_at));
                if d.key.n > pos.0 {
                    *pos = (d.key.n, d.returned_at);
                }
                let resolved_seq = self.seq_of(&d.key);
                self.resolve_reached(&seq);
                let behind = self.pending.values().any(|p| {
                    p.key
                        .as_ref()
                        .is_some_and(|k| k.sequence == seq && k.n > d.key.n)
                });
                if behind && !self.catch_up {
                    self.catch_up = true;
                    self.catch_up_progress = Instant::now();
                    // The wait's return is a read: just then the replica had reached this
                    // heartbeat (within the wake-up latency), not yet the ones after it.
                    if let Some(s) = resolved_seq {
                        let at = self.ctx.to_primary(d.returned_at - self.one_way_us).0;
                        self.last_poll = Some(LastRead {
                            earliest_us: at,
                            latest_us: at,
                            seq: s,
                        });
                    }
                    self.next_poll = Some(Instant::now());
                }
                self.top_up(&seq).await;
            }
            Some(false) => {
                // The wait timed out: nothing reached yet. Deadlines report the heartbeats;
                // keep watching while the number is still wanted.
                let wanted = self
                    .pending
                    .values()
                    .any(|p| p.key.as_ref() == Some(&d.key));
                if wanted {
                    self.arm(d.key.clone()).await;
                } else {
                    self.top_up(&d.key.sequence).await;
                }
            }
            None => {
                // NULL: the replica cannot wait for GTIDs (not a replica, GTIDs off).
                if !self.gtid_unsupported {
                    warn!(replica = %self.addr, "GTID wait returned NULL; measuring this replica by polling.");
                }
                self.gtid_unsupported = true;
                for p in self.pending.values_mut() {
                    p.key = None;
                }
                self.next_poll = Some(Instant::now());
            }
        }
        self.trim_sightings();
    }

    /// The heartbeat seq of GTID number `key`, from the announced frontier when numbering is
    /// consecutive.
    fn seq_of(&self, key: &GtidKey) -> Option<i64> {
        let &(front_n, front_seq, consecutive) = self.frontier.get(&key.sequence)?;
        consecutive.then(|| front_seq - (front_n as i64 - key.n as i64))
    }

    /// What is known about when heartbeat `seq` became visible, best evidence first: its own
    /// GTID wait, the row reads that saw it appear, and last an upper bound (the replica was
    /// seen past it).
    fn observation_for(&self, seq: i64) -> Option<Observation> {
        let p = self.pending.get(&seq)?;
        if let Some(key) = &p.key {
            if let Some(r) = self.reached.get(&key.sequence).and_then(|m| m.get(&key.n)) {
                return Some(self.wait_observation(&p.event, *r));
            }
        }
        if let Some(obs) = self.row_sightings.get(&seq) {
            return Some(*obs);
        }
        if let Some(key) = &p.key {
            if let Some(&(pos, at)) = self.position.get(&key.sequence) {
                if pos >= key.n {
                    // Seen past it by a later wait or read; the last read that did not show it
                    // still bounds it from below.
                    let not_yet = self
                        .last_poll
                        .filter(|r| r.seq < seq)
                        .map(|r| r.earliest_us);
                    return Some(timing::read_observation(
                        not_yet,
                        self.ctx.to_primary(at - self.one_way_us).0,
                    ));
                }
            }
        }
        match self.last_poll {
            Some(r) if r.seq >= seq => Some(Observation {
                not_yet_at_us: None,
                seen_at_us: r.latest_us,
            }),
            _ => None,
        }
    }

    /// Report pending heartbeat `seq` if anything shows it visible. True if it was.
    fn try_resolve(&mut self, seq: i64) -> bool {
        let Some(obs) = self.observation_for(seq) else {
            return false;
        };
        let mut p = self.pending.remove(&seq).expect("observation_for found it");
        let from_read = self.row_sightings.remove(&seq).is_some();
        // A wait armed for this heartbeat before its event arrived is this measurement's query.
        let own_wait = p.key.as_ref().is_some_and(|k| {
            self.reached
                .get(&k.sequence)
                .is_some_and(|m| m.contains_key(&k.n))
        });
        if own_wait {
            p.queries = p.queries.max(1);
        }
        tracing::debug!(replica = %self.addr, seq, ?obs, from_read, catch_up = self.catch_up, last_poll = ?self.last_poll, "Resolved.");
        let method = if p.key.is_some() {
            MeasureMethod::GtidWait
        } else {
            self.anticipate(p.event.committed_at_us, p.event.interval_us);
            MeasureMethod::Poll
        };
        self.report_measured(p, obs, method);
        true
    }

    /// Poll mode: be polling when the next heartbeat is due, so it is timed from its first
    /// moment rather than from its event's arrival.
    fn anticipate(&mut self, committed_at_us: i64, interval_us: i64) {
        self.poll_gap = self.ctx.settings.poll_interval;
        if interval_us <= 0 {
            return;
        }
        let due =
            self.ctx.to_local(committed_at_us + interval_us) - self.poll_gap.as_micros() as i64;
        let at = local_to_instant(due).max(Instant::now() + self.poll_gap);
        self.next_poll = Some(self.next_poll.map_or(at, |t| t.min(at)));
    }

    fn wait_observation(&self, e: &HeartbeatSet, r: Reached) -> Observation {
        let (armed, _) = self.ctx.to_primary(r.armed_at);
        let (returned, _) = self.ctx.to_primary(r.returned_at);
        timing::gtid_wait_observation(e.committed_at_us, armed, returned, self.one_way_us)
    }

    fn resolve_reached(&mut self, sequence: &str) {
        let Some(&(pos, _)) = self.position.get(sequence) else {
            return;
        };
        let ready: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.key
                    .as_ref()
                    .is_some_and(|k| k.sequence == sequence && k.n <= pos)
            })
            .map(|(s, _)| *s)
            .collect();
        for seq in ready {
            self.try_resolve(seq);
        }
    }

    /// Forget old sightings, at most once a second (a full pass is O(sightings)).
    fn trim_sightings(&mut self) {
        let now = Instant::now();
        if now < self.next_trim {
            return;
        }
        self.next_trim = now + Duration::from_secs(1);
        let cutoff = now_us() - SIGHTING_TTL_US;
        for m in self.reached.values_mut() {
            m.retain(|_, r| r.returned_at > cutoff);
        }
        let primary_cutoff = self.ctx.to_primary(cutoff).0;
        self.row_sightings
            .retain(|_, o| o.seen_at_us > primary_cutoff);
    }

    async fn on_timer(&mut self) {
        let now = Instant::now();
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.try_reconnect().await;
        }
        if self.next_poll.is_some_and(|t| t <= now) {
            self.poll().await;
        }
        self.expire().await;
    }

    /// Report heartbeats past their deadline as timeout or replication_stopped.
    async fn expire(&mut self) {
        let now = Instant::now();
        let expired: Vec<i64> = self
            .pending
            .iter()
            .filter(|(_, p)| self.deadline(&p.event) <= now)
            .map(|(s, _)| *s)
            .collect();
        if expired.is_empty() {
            return;
        }
        let status = self.replication_status().await;
        for seq in expired {
            if let Some(p) = self.pending.remove(&seq) {
                self.report(&p.event, &p.ticket, status, p.queries);
            }
        }
    }

    async fn replication_status(&mut self) -> MeasureStatus {
        let (Some(c), Some(d)) = (self.control.as_mut(), self.dialect.clone()) else {
            return MeasureStatus::Timeout;
        };
        self.metrics.query(QueryKind::Status);
        match db::replica_status(c, &d, &self.addr).await {
            Ok(s) if !s.replicating() => MeasureStatus::ReplicationStopped,
            Ok(_) => MeasureStatus::Timeout,
            Err(e) => {
                self.control = None;
                warn!(replica = %self.addr, error = %e, "Cannot read replica status.");
                MeasureStatus::Timeout
            }
        }
    }

    /// One poll of the heartbeat row; resolves every poll-mode heartbeat it shows.
    async fn poll(&mut self) {
        self.next_poll = None;
        let Some(server_id) = self.server_id else {
            return;
        };
        if self.control.is_none() {
            if let Err(e) = self.connect_control().await {
                self.connection_failed(format!("{e:#}")).await;
                return;
            }
        }
        let sql = format!(
            "SELECT CAST(seq AS SIGNED) FROM {} WHERE server_id = {server_id}",
            self.ctx.table
        );
        let c = self.control.as_mut().expect("connected above");
        let t0 = now_us();
        let res: Result<Option<i64>, _> = c.query_first(sql).await;
        let t1 = now_us();
        self.metrics.query(QueryKind::Poll);
        self.polls_since_hit += 1;
        let seen_seq = match res {
            Ok(v) => v.unwrap_or(0),
            Err(e) => {
                self.control = None;
                self.connection_failed(format!("{e}")).await;
                return;
            }
        };
        let read = LastRead {
            earliest_us: self.ctx.to_primary(t0 + self.one_way_us).0,
            latest_us: self
                .ctx
                .to_primary((t1 - self.one_way_us).max(t0 + self.one_way_us))
                .0,
            seq: seen_seq,
        };
        let prev = self.last_poll;
        // What appeared since the previous read appeared after that read looked (no earlier
        // than its request arrived) and before this one answered.
        if let Some(p) = prev {
            if seen_seq > p.seq && seen_seq - p.seq <= MAX_SIGHTING_SPAN {
                let obs = timing::read_observation(Some(p.earliest_us), read.latest_us);
                for s in p.seq + 1..=seen_seq {
                    self.row_sightings.entry(s).or_insert(obs);
                }
            }
        }
        let progressed = prev.is_none_or(|p| seen_seq > p.seq);
        tracing::debug!(replica = %self.addr, seen_seq, rtt = t1 - t0, ?prev, "Read.");
        self.last_poll = Some(read);
        let catch_up = self.catch_up;
        let ready: Vec<i64> = self
            .pending
            .iter()
            .filter(|(s, p)| (catch_up || p.key.is_none()) && **s <= seen_seq)
            .map(|(s, _)| *s)
            .collect();
        for seq in ready {
            self.try_resolve(seq);
        }
        // The row's seq is also the replica's position in each consecutive GTID sequence, so
        // the waits armed after catch-up start from where the replica really is.
        let reached_by_read: Vec<(String, u64)> = self
            .frontier
            .iter()
            .filter(|(_, &(_, _, consecutive))| consecutive)
            .filter_map(|(name, &(front_n, front_seq, _))| {
                let n = front_n as i64 - (front_seq - seen_seq);
                (n > 0).then(|| (name.clone(), n as u64))
            })
            .collect();
        for (name, n) in reached_by_read {
            let pos = self.position.entry(name).or_insert((0, t1));
            if n > pos.0 {
                *pos = (n, t1);
            }
        }
        if self.catch_up {
            if progressed {
                self.catch_up_progress = Instant::now();
            }
            let stagnant_for =
                STAGNANT_FOR.max(Duration::from_micros(2 * self.interval_us.max(0) as u64));
            let behind = self
                .pending
                .iter()
                .any(|(s, p)| p.key.is_some() && *s > seen_seq);
            if behind && self.catch_up_progress.elapsed() < stagnant_for {
                self.next_poll = Some(Instant::now());
                return;
            }
            // Caught up, or stalled again (the armed waits catch the next resumption).
            self.catch_up = false;
            let sequences: Vec<String> = self.frontier.keys().cloned().collect();
            for s in sequences {
                self.top_up(&s).await;
            }
        }
        if self.next_poll.is_none() {
            self.schedule_overdue_poll(seen_seq);
        }
    }

    /// Keep reading while a heartbeat is overdue: one whose event is waiting, or, in poll mode
    /// while the writer is announcing, the next one on its schedule (its event may still be on
    /// the way: events arrive in fetch batches, and a stalled replica must be watched from the
    /// moment the heartbeat was due, not from when its event arrives). The gap grows with how
    /// late it is (1/`OVERDUE_GAP_FRACTION` of it, within `poll_interval`..`poll_max_interval`),
    /// so the bracket around the moment it shows stays a small fraction of the delay.
    fn schedule_overdue_poll(&mut self, seen_seq: i64) {
        let oldest_waiting = self
            .pending
            .values()
            .filter(|p| p.key.is_none())
            .map(|p| p.event.committed_at_us)
            .min();
        let writer_announcing = self
            .last_event_at
            .is_some_and(|t| t.elapsed() < WRITER_SILENT_AFTER);
        let next_due = match self.grid_origins.iter().min() {
            Some(origin) if self.poll_mode() && writer_announcing && self.interval_us > 0 => {
                Some(origin + (seen_seq + 1) * self.interval_us)
            }
            _ => None,
        };
        let Some(since) = [oldest_waiting, next_due].into_iter().flatten().min() else {
            return;
        };
        let now = self.ctx.to_primary(now_us()).0;
        let s = &self.ctx.settings;
        if since > now + RESUME_MARGIN_US {
            // Not due yet (the last one just appeared): pause until just before it is, never
            // longer than an interval.
            self.poll_gap = s.poll_interval;
            let resume = local_to_instant(self.ctx.to_local(since - RESUME_MARGIN_US))
                .min(Instant::now() + Duration::from_micros(self.interval_us.max(0) as u64));
            self.next_poll = Some(resume.max(Instant::now() + s.poll_interval));
            return;
        }
        let late = (now - since).max(0) as u64;
        self.poll_gap = Duration::from_micros(late / OVERDUE_GAP_FRACTION)
            .clamp(s.poll_interval, s.poll_max_interval.max(s.poll_interval));
        self.next_poll = Some(Instant::now() + self.poll_gap);
    }

    fn report_measured(&mut self, p: Pending, obs: Observation, method: MeasureMethod) {
        let (_, clock_unc) = self.ctx.to_primary(0);
        let m = timing::measure(p.event.committed_at_us, obs, clock_unc, TIGHT_US);
        let queries = p.queries + std::mem::take(&mut self.polls_since_hit);
        let rec = ReplicaDelay {
            cluster: self.ctx.name.clone(),
            replica: self.addr.clone(),
            primary: p.event.primary.clone(),
            seq: p.event.seq,
            committed_at_us: p.event.committed_at_us,
            delay_us: m.delay_us,
            uncertainty_us: m.uncertainty_us,
            method,
            status: MeasureStatus::Ok,
            upper_bound: m.upper_bound,
            observed_at_us: p.event.committed_at_us + m.delay_us,
            reader_id: self.ctx.reader_id.clone(),
            queries,
        };
        self.metrics.measured(&rec);
        self.out.publish(rec, p.ticket);
    }

    /// A heartbeat that could not be measured: delay is how long it has been waiting.
    fn report(&self, e: &HeartbeatSet, ticket: &Arc<Ticket>, status: MeasureStatus, queries: i32) {
        let (now, unc) = self.ctx.to_primary(now_us());
        let method = if e.gtid.is_some() && self.ctx.settings.method != ReaderMethod::Poll {
            MeasureMethod::GtidWait
        } else {
            MeasureMethod::Poll
        };
        let rec = ReplicaDelay {
            cluster: self.ctx.name.clone(),
            replica: self.addr.clone(),
            primary: e.primary.clone(),
            seq: e.seq,
            committed_at_us: e.committed_at_us,
            delay_us: (now - e.committed_at_us).max(0),
            uncertainty_us: unc,
            method,
            status,
            upper_bound: false,
            observed_at_us: now,
            reader_id: self.ctx.reader_id.clone(),
            queries,
        };
        self.metrics.measured(&rec);
        self.out.publish(rec, ticket.clone());
    }

    /// A query failed: try one fresh connection before declaring the replica unreachable.
    async fn connection_failed(&mut self, why: String) {
        if !self.reachable {
            return;
        }
        match self.connect().await {
            Ok(c) => {
                self.idle.push(c);
                self.conns += 1;
                // Re-arm what the failed connection was waiting for.
                let sequences: Vec<String> = self.frontier.keys().cloned().collect();
                for s in sequences {
                    self.top_up(&s).await;
                }
                let unarmed: Vec<GtidKey> = self
                    .pending
                    .values()
                    .filter_map(|p| p.key.clone())
                    .filter(|k| !self.armed.contains(k))
                    .collect();
                for k in unarmed {
                    self.arm(k).await;
                }
            }
            Err(_) => self.lost(why),
        }
    }

    /// The replica cannot be reached: report everything waiting and retry with backoff.
    fn lost(&mut self, why: String) {
        if self.reachable {
            warn!(replica = %self.addr, error = %why, "Replica unreachable; reporting replica_unreachable until it is back.");
        }
        self.reachable = false;
        self.idle.clear();
        self.conns = 0;
        self.control = None;
        self.armed.clear();
        for (_, p) in std::mem::take(&mut self.pending) {
            self.report(
                &p.event,
                &p.ticket,
                MeasureStatus::ReplicaUnreachable,
                p.queries,
            );
        }
        self.reconnect_at = Some(Instant::now() + self.backoff.next_delay());
    }

    async fn try_reconnect(&mut self) {
        self.reconnect_at = None;
        match self.connect_control().await {
            Ok(()) => {
                info!(replica = %self.addr, "Replica reachable again.");
                self.reachable = true;
                self.backoff.reset();
                // Numbers reached while we were away are unknown; start over from announcements.
                self.position.clear();
                self.reached.clear();
            }
            Err(_) => {
                self.reconnect_at = Some(Instant::now() + self.backoff.next_delay());
            }
        }
    }
}

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

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
