//! One replica's measurements: the decisions, apart from the I/O that carries them out.
//!
//! [`Tracker`] is synchronous and never reads a clock or touches a socket (the shape of
//! quinn-proto): the async shell ([`shell::ReplicaWorker`]) feeds it [`Event`]s stamped with
//! the local time (a heartbeat announced, a GTID wait or a row read returned, a tick, a
//! connection lost) and carries out the [`Command`]s it returns (arm a wait, read the row, ask
//! the replication status, reconnect, publish a record), waking it at [`Tracker::next_wake`].
//! The rules are therefore unit-tested with made-up microseconds (`tests.rs`).
//!
//! GTID-wait method (no polling, `waits.rs`): up to `prearm_depth` `MASTER_GTID_WAIT`s stay
//! armed, each on its own connection, for the next numbers of the heartbeat GTID sequence that
//! the replica has not reached — armed before those heartbeats are even written when the
//! sequence is known to be consecutive (the writer's dedicated GTID domain). The replica wakes
//! each wait the moment it applies that transaction, so visibility is timed independently of
//! when the `heartbeat-set` event arrives over Kafka; the event only contributes its commit time
//! and seq. One wait per heartbeat per replica: that is the whole database load in steady state.
//! After a stall the replica applies the backlog in a burst, faster than a wait can be re-armed
//! per heartbeat. So when a wait returns while announced heartbeats are still behind, the
//! tracker switches to catch-up: it reads the heartbeat row back to back until the replica
//! reaches the announced frontier; each read brackets the heartbeats that appeared since the
//! previous one (a round trip wide), at fewer than one query per heartbeat. Waits stay armed
//! beyond the frontier meanwhile, so steady state resumes exactly timed.
//!
//! Poll method (no GTID, `poller.rs`): reads the heartbeat row's seq every `poll_interval`,
//! from just before the writer's next tick (its drift-free grid, estimated from the events)
//! until it shows, whether or not its event has arrived; the gap grows with how overdue it is
//! (2% of it, up to `poll_max_interval`), so a stall's end is bracketed within a small fraction
//! of its length.
//!
//! What a wait or a read saw becomes evidence (`evidence.rs`), and evidence a delay through
//! [`super::timing`]; `report.rs` builds the records.
//!
//! Live lag (`lag.rs`): the age, on the primary's clock, of the oldest announced heartbeat the
//! replica does not show yet (0 when it shows them all), known at every event and refreshed
//! every 100 ms while a heartbeat is awaited; while it exceeds `LAG_SAMPLE_AFTER_US` a
//! `pending` record for that heartbeat (its delay so far) is published every 250 ms, so the
//! processor's windows and alerts see a stall while it lasts.
//!
//! Failure handling: a failed query is followed by one fresh connection; if the replica cannot
//! be reached, every waiting and new heartbeat is reported `replica_unreachable` until a
//! reconnect (with backoff) succeeds. A heartbeat not shown within `timeout` is reported
//! `timeout`, or `replication_stopped` if the replica status says a replication thread is not
//! running, so its offset moves on; it is still watched ("owed", at most `MAX_OWED`), and when
//! the replica finally shows it, its real delay is published as an `ok` record too. More than
//! `max_in_flight` unreported heartbeats: the oldest is reported `skipped`.

mod connections;
mod evidence;
mod lag;
mod poller;
#[cfg(test)]
mod proptests;
mod report;
mod shell;
#[cfg(test)]
mod tests;
mod waits;

pub use shell::{ClusterCtx, Job, ReplicaWorker};

use super::gtid::GtidKey;
use super::timing::Observation;
use millilag_core::config::ReaderMethod;
use millilag_core::events::{HeartbeatSet, MeasureMethod, MeasureStatus, ReplicaDelay};
use millilag_core::retry::{Backoff, RetryPolicy};
use poller::{Poller, Schedule};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};
use waits::Waits;

/// How the reader measures, from `[reader]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub method: ReaderMethod,
    pub poll_interval: Duration,
    pub poll_max_interval: Duration,
    pub timeout: Duration,
    pub prearm_depth: usize,
    pub max_in_flight: usize,
}

impl Settings {
    /// The method a heartbeat is measured by before the replica says otherwise (see
    /// [`Pending::method`]: a heartbeat with a usable GTID is timed by waits, unless the
    /// config asks for polling).
    pub fn method_for(&self, gtid: Option<&str>) -> MeasureMethod {
        match gtid.and_then(GtidKey::parse) {
            Some(_) if self.method != ReaderMethod::Poll => MeasureMethod::GtidWait,
            _ => MeasureMethod::Poll,
        }
    }
}

/// Whose records these are.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster: String,
    pub replica: String,
    pub reader_id: String,
}

/// The local clock's offset to the primary's (NTP-style estimate): primary = local + offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClockOffset {
    pub offset_us: i64,
    /// Half the round trip of the sample the offset comes from.
    pub uncertainty_us: i64,
}

impl ClockOffset {
    // Saturating: times derived from Kafka records (a commit time plus intervals) are only
    // bounded by the input checks, and a conversion must never wrap.
    pub fn to_primary(self, local_us: i64) -> i64 {
        local_us.saturating_add(self.offset_us)
    }

    pub fn to_local(self, primary_us: i64) -> i64 {
        primary_us.saturating_sub(self.offset_us)
    }
}

/// What the shell tells the tracker. Times are local microseconds.
#[derive(Debug)]
pub enum Event<T> {
    /// A heartbeat to time, with the token that completes when its record is acknowledged.
    /// `key`: its GTID parsed, once for every replica of the cluster ([`Event::announced`]).
    Announced {
        event: Arc<HeartbeatSet>,
        key: Option<GtidKey>,
        ticket: T,
    },
    /// A GTID wait returned (`armed_at`, `returned_at`: local clock; `server`: the replica's
    /// own clock when it began and woke, when it said).
    WaitReturned {
        key: GtidKey,
        armed_at: i64,
        returned_at: i64,
        server: Option<ServerTimes>,
        outcome: WaitOutcome,
    },
    /// A read of the heartbeat row answered: `seq` (0 when the row is absent), the read was
    /// sent at `sent_at` and answered at `returned_at` (local clock); `server_at`: the
    /// replica's clock when it read, when it said.
    ReadReturned {
        sent_at: i64,
        returned_at: i64,
        seq: i64,
        server_at: Option<i64>,
    },
    /// A read failed: `connection_lost` when the connection is gone, otherwise the server
    /// answered with an error (a missing table, a privilege).
    ReadFailed { why: String, connection_lost: bool },
    /// The replica status asked for: is a replication thread stopped?
    StatusReturned { replication_stopped: bool },
    /// A fresh connection works; half its fastest ping is `one_way_us`.
    Connected { one_way_us: i64 },
    /// A connection could not be made.
    ConnectFailed { why: String },
    /// A wake-up the tracker asked for (or any other moment).
    Tick,
    /// The replica is no longer in the cluster (discovery dropped it).
    Removed,
}

impl<T> Event<T> {
    /// As the reader builds it (the shell gets the key with the job).
    #[cfg(test)]
    pub fn announced(event: Arc<HeartbeatSet>, ticket: T) -> Event<T> {
        Event::Announced {
            key: event.gtid.as_deref().and_then(GtidKey::parse),
            event,
            ticket,
        }
    }
}

/// A wait's times on the replica's own clock (microseconds), and where the replica was when
/// it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerTimes {
    pub began_us: i64,
    pub woke_us: i64,
    /// The replica's number in the wait's GTID sequence at `began_us`, when the server's
    /// position tells (MariaDB).
    pub position: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The replica reached the GTID; `already`: it had it when the wait was armed (the wait
    /// did not block), when the server could tell.
    Reached { already: Option<bool> },
    /// The wait's own timeout passed first.
    TimedOut,
    /// NULL: the server cannot wait for GTIDs (not a replica, GTIDs off).
    Unsupported,
    /// The query failed; the shell dropped its connection.
    Failed(String),
}

/// What the tracker asks the shell to do.
#[derive(Debug)]
pub enum Command<T> {
    /// Run a GTID wait for `key`, blocking at most `wait_s` seconds, on a wait connection.
    Arm { key: GtidKey, wait_s: f64 },
    /// Read the heartbeat row of `server_id` on the control connection.
    Read { server_id: i64 },
    /// Ask whether the replication threads run (answered by `StatusReturned`).
    CheckStatus,
    /// Open a fresh control connection (answered by `Connected` or `ConnectFailed`).
    Connect,
    /// Drop every connection: the replica is unreachable.
    Disconnect,
    /// Publish a record; its ticket, if any, completes when Kafka acknowledges it.
    Publish {
        record: ReplicaDelay,
        ticket: Option<T>,
    },
}

/// An announced heartbeat the replica has not shown yet.
#[derive(Debug)]
struct Awaited<T> {
    event: Arc<HeartbeatSet>,
    /// The token that lets its offset move on, until the heartbeat is reported (measured, or
    /// given up at its deadline). None once reported at the deadline: still watched ("owed")
    /// for its real delay.
    ticket: Option<T>,
    /// Its GTID when it is timed by waits (None: by reads).
    key: Option<GtidKey>,
    queries: i32,
}

/// Reachability of the replica.
#[derive(Debug)]
struct Link {
    reachable: bool,
    reconnect_at: Option<i64>,
    backoff: Backoff,
    /// Half the replica's fastest round trip: how long an answer takes to reach us.
    one_way_us: i64,
    /// Heartbeats past their deadline are waiting for the replica status.
    status_asked: bool,
}

/// Connections beyond the armed waits: room to arm a heartbeat's own wait when its event
/// arrives while the pre-armed ones are all busy.
pub const SPARE_WAITS: usize = 0;
/// How long one armed wait blocks at most before it is re-armed; bounds how long a server
/// thread lingers after a reader stops or loses interest.
const MAX_WAIT: Duration = Duration::from_secs(5);
/// Heartbeats reported at their deadline and still watched, at most, per replica (5 min of
/// 10 ms heartbeats): beyond it the newest are dropped, the oldest (a stall's peak) kept.
const MAX_OWED: usize = 30_000;
/// Commands the tracker keeps room for between events (see the shell's `KEPT_ROOM`).
const KEPT_COMMANDS: usize = 8;
/// Sightings older than this with no announced heartbeat are forgotten.
const SIGHTING_TTL_US: i64 = 120_000_000;
/// Sightings are trimmed at most this often (a full pass is O(sightings)).
const TRIM_EVERY_US: i64 = 1_000_000;
/// An interval from the commit to a sighting at most this wide counts as measured, not as an
/// upper bound (see [`super::timing::measure`]); its width is still reported as uncertainty.
/// It covers reads 1-2 ms apart spread out by scheduling on a busy host.
const TIGHT_US: i64 = 5_000;

/// The measurement rules of one replica.
#[derive(Debug)]
pub struct Tracker<T> {
    settings: Settings,
    who: Identity,
    clock: ClockOffset,
    /// The local clock's offset to the replica's (replica = local + offset), when sampled:
    /// then waits and reads are timed by the replica itself (see `from_replica`).
    replica_clock: Option<ClockOffset>,
    /// The time of the event being handled (local microseconds).
    now: i64,
    /// Announced heartbeats not shown yet, by seq: unreported ones and owed ones.
    awaited: BTreeMap<i64, Awaited<T>>,
    /// The seqs in `awaited` that still hold their ticket (oldest deadline first).
    unreported: BTreeSet<i64>,
    waits: Waits,
    schedule: Schedule,
    poll: Poller,
    lag: lag::LagClock,
    /// seq -> when row reads saw it appear (primary clock), kept until its event arrives.
    sightings: BTreeMap<i64, Observation>,
    /// Catching up after a stall (see the module doc): when the reads last saw progress.
    catch_up_progress: Option<i64>,
    link: Link,
    /// The replica cannot wait for GTIDs: every heartbeat is timed by reads.
    gtid_unsupported: bool,
    next_trim_at: i64,
    out: Vec<Command<T>>,
}

impl<T> Tracker<T> {
    pub fn new(settings: Settings, who: Identity, now: i64) -> Tracker<T> {
        Tracker {
            poll: Poller::new(us(settings.poll_interval)),
            settings,
            who,
            clock: ClockOffset::default(),
            replica_clock: None,
            now,
            awaited: BTreeMap::new(),
            unreported: BTreeSet::new(),
            waits: Waits::default(),
            schedule: Schedule::default(),
            lag: lag::LagClock::default(),
            sightings: BTreeMap::new(),
            catch_up_progress: None,
            link: Link {
                reachable: true,
                reconnect_at: None,
                backoff: RetryPolicy::RECONNECT.backoff(),
                one_way_us: 0,
                status_asked: false,
            },
            gtid_unsupported: false,
            next_trim_at: now,
            out: Vec::new(),
        }
    }

    /// Most waits armed at once (the shell's wait connections).
    pub fn wait_slots(&self) -> usize {
        self.settings.prearm_depth + SPARE_WAITS
    }

    /// The latest clock-offset estimate, used from the next event on.
    pub fn set_clock(&mut self, clock: ClockOffset) {
        self.clock = clock;
    }

    /// The latest estimate of the replica's clock against the local one (None: it could not
    /// be sampled; the reader's own stamps are used instead).
    pub fn set_replica_clock(&mut self, clock: Option<ClockOffset>) {
        self.replica_clock = clock;
    }

    /// A replica-clock time on the primary's clock, when the replica's clock is known. The
    /// moment happened between `earliest` and `latest` on the local clock (the statement was
    /// sent, the answer arrived): an offset estimate gone stale is held to that.
    fn replica_to_primary(&self, replica_us: i64, earliest: i64, latest: i64) -> Option<i64> {
        let r = self.replica_clock?;
        let local = (replica_us - r.offset_us).clamp(earliest, latest.max(earliest));
        Some(self.clock.to_primary(local))
    }

    /// How far a time converted to the primary's clock may be off: the offset estimates'.
    fn clock_uncertainty(&self) -> i64 {
        self.clock.uncertainty_us + self.replica_clock.map_or(0, |r| r.uncertainty_us)
    }

    /// Heartbeats not shown yet (reported at their deadline or not).
    #[cfg(test)]
    pub fn awaited(&self) -> usize {
        self.awaited.len()
    }

    /// Handle one event at local time `now`; returns what to do.
    pub fn handle(&mut self, now: i64, event: Event<T>) -> std::vec::Drain<'_, Command<T>> {
        // Drained by the caller; a burst's room is not kept for good.
        self.out.shrink_to(KEPT_COMMANDS);
        self.now = self.now.max(now);
        match event {
            Event::Announced { event, key, ticket } => self.on_announced(event, key, ticket),
            Event::WaitReturned {
                key,
                armed_at,
                returned_at,
                server,
                outcome,
            } => self.on_wait_returned(key, armed_at, returned_at, server, outcome),
            Event::ReadReturned {
                sent_at,
                returned_at,
                seq,
                server_at,
            } => self.on_read(sent_at, returned_at, seq, server_at),
            Event::ReadFailed {
                why,
                connection_lost,
            } => self.on_read_failed(why, connection_lost),
            Event::StatusReturned {
                replication_stopped,
            } => self.on_status(replication_stopped),
            Event::Connected { one_way_us } => self.on_connected(one_way_us),
            Event::ConnectFailed { why } => self.on_connect_failed(why),
            Event::Tick => self.on_tick(),
            Event::Removed => self.on_removed(),
        }
        self.out.drain(..)
    }

    /// When the tracker next needs a [`Event::Tick`] (local microseconds).
    pub fn next_wake(&self) -> Option<i64> {
        let deadline = self
            .unreported
            .first()
            .and_then(|s| self.awaited.get(s))
            .map(|a| self.deadline(&a.event));
        [
            self.link.reconnect_at,
            self.poll.next_poll,
            deadline,
            self.next_lag_tick(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The local moment heartbeat `e` is reported if still not shown.
    fn deadline(&self, e: &HeartbeatSet) -> i64 {
        self.clock
            .to_local(e.committed_at_us)
            .saturating_add(us(self.settings.timeout))
    }

    fn primary_now(&self) -> i64 {
        self.clock.to_primary(self.now)
    }

    /// Heartbeats of this replica are timed by reads (by config or for lack of GTID waits).
    fn poll_mode(&self) -> bool {
        self.settings.method == ReaderMethod::Poll || self.gtid_unsupported
    }

    fn on_announced(&mut self, e: Arc<HeartbeatSet>, key: Option<GtidKey>, ticket: T) {
        let key = key.filter(|_| !self.poll_mode());
        let seq = e.seq;
        let mut a = Awaited {
            event: e,
            ticket: Some(ticket),
            key: key.clone(),
            queries: 0,
        };
        if !self.link.reachable {
            self.report_awaited(&mut a, MeasureStatus::ReplicaUnreachable);
            return;
        }
        if self.unreported.len() >= self.settings.max_in_flight {
            // Supersede the oldest rather than queue without bound.
            if let Some(mut old) = self
                .unreported
                .pop_first()
                .and_then(|s| self.awaited.remove(&s))
            {
                self.report_awaited(&mut old, MeasureStatus::Skipped);
            }
        }
        let poll_mode = self.poll_mode();
        self.schedule.on_event(&a.event, self.now, poll_mode);
        self.start_lag_clock();
        if let Some(mut old) = self.awaited.insert(seq, a) {
            // Announced twice (a replayed heartbeat-set record): the first one's offset moves on.
            self.report_awaited(&mut old, MeasureStatus::Skipped);
        }
        self.unreported.insert(seq);
        match key {
            Some(key) => {
                self.waits.note_announced(&key, seq);
                if self.try_resolve(seq) {
                    self.top_up(&key.sequence);
                    return;
                }
                if self.catch_up_progress.is_some() {
                    // The reads of the catch-up will time it.
                    return;
                }
                if !self.waits.is_armed(&key) {
                    if self.arm(key.clone()) {
                        if let Some(a) = self.awaited.get_mut(&seq) {
                            a.queries += 1;
                        }
                    } else {
                        // Every wait connection is busy (with older heartbeats, or numbers
                        // armed ahead): reads on the control connection time this one.
                        self.poll.poll_now(self.now);
                    }
                }
                self.top_up(&key.sequence);
            }
            None => {
                if !self.try_resolve(seq) {
                    self.poll.poll_now(self.now);
                }
            }
        }
    }

    fn on_tick(&mut self) {
        if self.link.reconnect_at.is_some_and(|t| t <= self.now) {
            self.link.reconnect_at = None;
            self.out.push(Command::Connect);
        }
        if self.poll.next_poll.is_some_and(|t| t <= self.now) {
            self.start_read();
        }
        self.expire();
        self.on_lag_tick();
    }

    /// Ask for the replication status when heartbeats are past their deadline; they are
    /// reported when it answers.
    fn expire(&mut self) {
        if !self.link.status_asked && !self.expired().is_empty() {
            self.link.status_asked = true;
            self.out.push(Command::CheckStatus);
        }
    }

    /// Unreported heartbeats past their deadline, oldest first.
    fn expired(&self) -> Vec<i64> {
        self.unreported
            .iter()
            .take_while(|s| {
                self.awaited
                    .get(s)
                    .is_some_and(|a| self.deadline(&a.event) <= self.now)
            })
            .copied()
            .collect()
    }

    /// Report every heartbeat past its deadline as `timeout` or `replication_stopped`, and
    /// keep watching it (while fewer than `MAX_OWED` are owed).
    fn on_status(&mut self, replication_stopped: bool) {
        self.link.status_asked = false;
        let status = if replication_stopped {
            MeasureStatus::ReplicationStopped
        } else {
            MeasureStatus::Timeout
        };
        for seq in self.expired() {
            self.unreported.remove(&seq);
            let owed = self.awaited.len() - self.unreported.len();
            let keep = owed <= MAX_OWED;
            let Some(mut a) = self.awaited.remove(&seq) else {
                continue;
            };
            self.report_awaited(&mut a, status);
            if keep {
                self.awaited.insert(seq, a);
            }
        }
    }

    /// The primary stopped listing this replica (its replication disconnected): what it still
    /// owed is reported as such, so those heartbeats' offsets can be stored.
    fn on_removed(&mut self) {
        self.give_up_all(MeasureStatus::ReplicationStopped);
    }

    /// Report every unreported heartbeat with `status` and stop watching them all.
    fn give_up_all(&mut self, status: MeasureStatus) {
        self.unreported.clear();
        for (_, mut a) in std::mem::take(&mut self.awaited) {
            self.report_awaited(&mut a, status);
        }
    }

    /// A query failed: try one fresh connection before declaring the replica unreachable.
    fn connection_failed(&mut self) {
        if self.link.reachable {
            self.out.push(Command::Connect);
        }
    }

    fn on_connected(&mut self, one_way_us: i64) {
        self.link.one_way_us = one_way_us;
        if !self.link.reachable {
            info!(replica = %self.who.replica, "Replica reachable again.");
            self.link.reachable = true;
            self.link.backoff.reset();
            // Numbers reached while we were away are unknown; start over from announcements.
            self.waits.forget_positions();
            return;
        }
        // Re-arm what a failed connection was waiting for.
        for s in self.waits.sequences() {
            self.top_up(&s);
        }
        let unarmed: Vec<GtidKey> = self
            .awaited
            .values()
            .filter_map(|a| a.key.clone())
            .filter(|k| !self.waits.is_armed(k))
            .collect();
        for k in unarmed {
            self.arm(k);
        }
    }

    fn on_connect_failed(&mut self, why: String) {
        if self.link.reachable {
            self.lost(why);
        } else {
            self.link.reconnect_at = Some(self.now + us(self.link.backoff.next_delay()));
        }
    }

    /// The replica cannot be reached: report everything waiting and retry with backoff.
    fn lost(&mut self, why: String) {
        if self.link.reachable {
            warn!(replica = %self.who.replica, error = %why, "Replica unreachable; reporting replica_unreachable until it is back.");
        }
        self.link.reachable = false;
        self.link.status_asked = false;
        self.catch_up_progress = None;
        self.waits.disarm_all();
        self.out.push(Command::Disconnect);
        self.give_up_all(MeasureStatus::ReplicaUnreachable);
        self.link.reconnect_at = Some(self.now + us(self.link.backoff.next_delay()));
    }

    /// Forget old sightings, at most once a second.
    fn trim_sightings(&mut self) {
        if self.now < self.next_trim_at {
            return;
        }
        self.next_trim_at = self.now + TRIM_EVERY_US;
        let cutoff = self.now - SIGHTING_TTL_US;
        let primary_cutoff = self.clock.to_primary(cutoff);
        self.waits.forget_reached_before(cutoff, primary_cutoff);
        self.sightings.retain(|_, o| o.seen_at_us > primary_cutoff);
    }
}

/// Microseconds of a duration, saturating.
pub fn us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}
