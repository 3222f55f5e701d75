//! GTID waits: which numbers of the heartbeat GTID sequence to keep armed, and what a returned
//! wait tells.
//!
//! Per sequence (`77-1-` on MariaDB, `uuid:millilag:` on MySQL) the tracker knows the announced
//! [`Frontier`] (highest announced number and its seq, and whether consecutive heartbeats were
//! seen to be consecutive numbers: only then are waits armed ahead of announcements), the
//! numbers each wait saw reached, and the replica's [`Position`] (the highest number seen
//! reached, by a wait or a row read).

use super::{Command, ServerTimes, Tracker, WaitOutcome, MAX_WAIT};
use crate::reader::gtid::GtidKey;
use crate::reader::timing::{self, Observation};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// Shortest time one wait blocks before it gives up and is armed again.
const PROBE_MIN: Duration = Duration::from_millis(250);

/// Most heartbeats the arming horizon runs ahead of the last announcement on the writer's
/// schedule (a writer that stopped announcing does not move it further).
const MAX_SCHEDULE_AHEAD: i64 = 1_000;

/// The highest announced number of a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frontier {
    pub n: u64,
    /// The heartbeat seq announced with number `n`.
    pub seq: i64,
    /// Consecutive heartbeats were consecutive numbers (the writer's own GTID domain).
    pub consecutive: bool,
}

/// When a wait saw its number reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reached {
    /// When the wait was armed and returned (local clock).
    pub armed_at: i64,
    pub returned_at: i64,
    /// When it began and woke on the replica, on the primary's clock (when the replica said
    /// and its clock is known): the replica's own timing, free of the reader's scheduling.
    pub server: Option<(i64, i64)>,
    /// When an earlier wait for the same number gave up (primary clock): the replica did not
    /// show it then.
    pub not_reached_at: Option<i64>,
    /// The replica had it already when this wait was armed (the server's word, if any).
    pub already: Option<bool>,
}

/// The highest number seen reached, and when (primary clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub n: u64,
    pub at: i64,
}

#[derive(Debug, Default)]
pub(super) struct Waits {
    frontier: HashMap<Arc<str>, Frontier>,
    /// Numbers with a wait armed, and when it was asked for (local clock).
    armed: HashMap<GtidKey, i64>,
    /// Numbers seen reached by a wait of their own.
    reached: HashMap<Arc<str>, BTreeMap<u64, Reached>>,
    position: HashMap<Arc<str>, Position>,
    /// Numbers a wait gave up on (its timeout passed first), and when (primary clock):
    /// evidence that the replica did not show them yet, kept for their next wait.
    not_reached: HashMap<GtidKey, i64>,
}

impl Waits {
    /// Track the announced frontier and whether numbering is consecutive.
    pub fn note_announced(&mut self, key: &GtidKey, seq: i64) {
        let f = self
            .frontier
            .entry(key.sequence.clone())
            .or_insert(Frontier {
                n: key.n,
                seq,
                consecutive: false,
            });
        if key.n > f.n {
            // In i128: numbers and seqs come from outside and must not wrap.
            let consecutive =
                i128::from(key.n) - i128::from(f.n) == i128::from(seq) - i128::from(f.seq);
            *f = Frontier {
                n: key.n,
                seq,
                consecutive,
            };
        }
    }

    pub fn is_armed(&self, key: &GtidKey) -> bool {
        self.armed.contains_key(key)
    }

    /// When the wait for `key` was asked for, while it is armed.
    pub fn armed_at(&self, key: &GtidKey) -> Option<i64> {
        self.armed.get(key).copied()
    }

    pub fn armed(&self) -> usize {
        self.armed.len()
    }

    fn armed_in(&self, sequence: &str) -> usize {
        self.armed
            .keys()
            .filter(|k| &*k.sequence == sequence)
            .count()
    }

    pub fn sequences(&self) -> Vec<Arc<str>> {
        self.frontier.keys().cloned().collect()
    }

    pub fn disarm_all(&mut self) {
        self.armed.clear();
    }

    /// After the replica was unreachable: what it reached meanwhile is unknown.
    pub fn forget_positions(&mut self) {
        self.position.clear();
        self.reached.clear();
        self.not_reached.clear();
    }

    /// Forget what waits saw before `cutoff` (local clock; `primary_cutoff` on the primary's).
    pub fn forget_reached_before(&mut self, cutoff: i64, primary_cutoff: i64) {
        for m in self.reached.values_mut() {
            m.retain(|_, r| r.returned_at > cutoff);
        }
        self.not_reached.retain(|_, at| *at > primary_cutoff);
    }

    /// When a wait for `key` last gave up (primary clock).
    pub fn not_reached(&self, key: &GtidKey) -> Option<i64> {
        self.not_reached.get(key).copied()
    }

    pub fn reached(&self, key: &GtidKey) -> Option<Reached> {
        self.reached.get(&*key.sequence)?.get(&key.n).copied()
    }

    /// What a wait saw for `key`, forgotten: its heartbeat was reported.
    pub fn take_reached(&mut self, key: &GtidKey) -> Option<Reached> {
        self.reached.get_mut(&*key.sequence)?.remove(&key.n)
    }

    pub fn position(&self, sequence: &str) -> Option<Position> {
        self.position.get(sequence).copied()
    }

    fn advance(&mut self, sequence: &Arc<str>, n: u64, at: i64) {
        match self.position.get_mut(&**sequence) {
            Some(pos) if n > pos.n => *pos = Position { n, at },
            Some(_) => {}
            None => {
                self.position.insert(sequence.clone(), Position { n, at });
            }
        }
    }

    /// A row read saw heartbeat `seq` at `at` (primary clock): in every consecutive sequence that is
    /// also the replica's position, so waits armed after a catch-up start from where the
    /// replica really is.
    pub fn note_row_seq(&mut self, seq: i64, at: i64) {
        let reached: Vec<(Arc<str>, u64)> = self
            .frontier
            .iter()
            .filter(|(_, f)| f.consecutive)
            .filter_map(|(name, f)| {
                let n = i128::from(f.n) - (i128::from(f.seq) - i128::from(seq));
                u64::try_from(n)
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| (name.clone(), n))
            })
            .collect();
        for (name, n) in reached {
            self.advance(&name, n, at);
        }
    }

    /// The heartbeat seq of GTID number `key`, from the announced frontier when numbering is
    /// consecutive.
    pub fn seq_of(&self, key: &GtidKey) -> Option<i64> {
        let f = self.frontier.get(&*key.sequence)?;
        let seq = i128::from(f.seq) - (i128::from(f.n) - i128::from(key.n));
        f.consecutive.then(|| i64::try_from(seq).ok()).flatten()
    }
}

impl<T> Tracker<T> {
    /// Arm waits for the next numbers the replica has not reached, up to `prearm_depth` ahead
    /// of the announced frontier, when the sequence is known to be consecutive.
    pub(super) fn top_up(&mut self, sequence: &Arc<str>) {
        let Some(front) = self.waits.frontier.get(&**sequence).copied() else {
            return;
        };
        if !front.consecutive || !self.link.reachable {
            return;
        }
        let depth = self.settings.prearm_depth as u64;
        let reached = self.waits.position(sequence).map_or(0, |p| p.n);
        // In catch-up the announced backlog is timed by reads; waits go to what comes next.
        // Saturating: positions come from the replica and numbers from Kafka.
        let mut n = if self.catch_up_progress.is_some() {
            reached.max(front.n).saturating_add(1)
        } else {
            reached.saturating_add(1)
        };
        // Events arrive in batches (a fetch wait apart) and may lag the heartbeats by several
        // intervals; the writer's schedule is drift-free, so the number being written now is
        // the last announced one plus the intervals begun since its commit.
        let elapsed = self
            .schedule
            .intervals_begun_since_latest(self.primary_now())
            .min(MAX_SCHEDULE_AHEAD) as u64;
        let horizon = front.n.saturating_add(elapsed).saturating_add(depth);
        let mut armed_here = self.waits.armed_in(sequence) as u64;
        while armed_here < depth && n <= horizon {
            let key = GtidKey {
                sequence: sequence.clone(),
                n,
            };
            let seen = self
                .waits
                .reached
                .get(&**sequence)
                .is_some_and(|m| m.contains_key(&n));
            if !self.waits.is_armed(&key) && !seen {
                if !self.arm(key) {
                    break;
                }
                armed_here += 1;
            }
            if n == u64::MAX {
                break;
            }
            n += 1;
        }
    }

    /// The replica was at number `n` of `sequence` at `at` (primary clock), as a wait's start
    /// saw it: a look at the row (see `note_row_look`), and its position. A wait armed late
    /// (the replica was already past it) thereby moves the next one to where the replica really
    /// is: armed one number at a time, a late chain would stay a round trip behind for good
    /// whenever a round trip is as long as a heartbeat interval.
    fn note_position(&mut self, sequence: &Arc<str>, n: u64, at: i64) {
        if n == 0 {
            return;
        }
        let key = GtidKey {
            sequence: sequence.clone(),
            n,
        };
        if let Some(seq) = self.waits.seq_of(&key) {
            self.note_row_look(super::poller::LastRead {
                earliest_us: at,
                latest_us: at,
                seq,
            });
        }
        self.waits.advance(sequence, n, at);
    }

    /// How long one wait blocks: two heartbeat intervals, at least `PROBE_MIN` (a wait armed
    /// ahead returns when its heartbeat is applied, so in steady state it never times out),
    /// at most `reader.timeout` and `MAX_WAIT`. A wait that gives up is evidence that the
    /// replica does not show the heartbeat (`lag.rs`), so a stall is known within this.
    fn wait_for(&self) -> Duration {
        let two_ticks = Duration::from_micros(2 * self.schedule.interval_us.max(0) as u64);
        two_ticks
            .max(PROBE_MIN)
            .min(self.settings.timeout.min(MAX_WAIT))
    }

    /// Ask for a wait on `key`. False when every wait connection is busy.
    pub(super) fn arm(&mut self, key: GtidKey) -> bool {
        if self.waits.armed() >= self.wait_slots() {
            return false;
        }
        self.waits.armed.insert(key.clone(), self.now);
        let wait_s = self.wait_for().as_secs_f64();
        self.out.push(Command::Arm { key, wait_s });
        true
    }

    pub(super) fn on_wait_returned(
        &mut self,
        key: GtidKey,
        armed_at: i64,
        returned_at: i64,
        server: Option<ServerTimes>,
        outcome: WaitOutcome,
    ) {
        // The replica's own times, on the primary's clock, when it gave them and its clock is
        // known; otherwise the reader's stamps (the answer left the replica half a round trip
        // before it arrived).
        let position = server.and_then(|t| t.position);
        let server = server.and_then(|t| {
            let waited = (t.woke_us - t.began_us).max(0);
            Some((
                self.replica_to_primary(t.began_us, armed_at, returned_at - waited)?,
                self.replica_to_primary(t.woke_us, armed_at + waited, returned_at)?,
            ))
        });
        if let (Some(n), Some((began, _))) = (position, server) {
            if !matches!(outcome, WaitOutcome::Failed(_)) {
                self.note_position(&key.sequence, n, began);
            }
        }
        let woke = server.map_or_else(
            || self.clock.to_primary(returned_at - self.link.one_way_us),
            |(_, w)| w,
        );
        self.waits.armed.remove(&key);
        match outcome {
            WaitOutcome::Failed(_) => {
                self.connection_failed();
                return;
            }
            WaitOutcome::Reached { already } => {
                self.on_reached(key, armed_at, returned_at, server, woke, already)
            }
            WaitOutcome::TimedOut => {
                tracing::debug!(replica = %self.who.replica, n = key.n, armed_at, returned_at, ?server, ?position, "Wait gave up.");
                // Nothing reached yet. Deadlines report the heartbeats; keep watching while the
                // number is still wanted.
                self.waits.not_reached.insert(key.clone(), woke);
                let wanted = self.awaited.values().any(|p| p.key.as_ref() == Some(&key));
                if wanted {
                    self.arm(key);
                } else {
                    self.top_up(&key.sequence);
                }
            }
            WaitOutcome::Unsupported => {
                if !self.gtid_unsupported {
                    warn!(replica = %self.who.replica, "GTID wait returned NULL; measuring this replica by polling.");
                }
                self.gtid_unsupported = true;
                for p in self.awaited.values_mut() {
                    p.key = None;
                }
                self.poll.next_poll = Some(self.now);
            }
        }
        self.trim_sightings();
    }

    fn on_reached(
        &mut self,
        key: GtidKey,
        armed_at: i64,
        returned_at: i64,
        server: Option<(i64, i64)>,
        woke: i64,
        already: Option<bool>,
    ) {
        let sequence = key.sequence.clone();
        let reached = Reached {
            armed_at,
            returned_at,
            server,
            not_reached_at: self.waits.not_reached.remove(&key),
            already,
        };
        let commit = self
            .awaited
            .values()
            .find(|a| a.key.as_ref() == Some(&key))
            .map(|a| a.event.committed_at_us);
        let blocked = self.wait_blocked(commit, reached);
        self.waits
            .reached
            .entry(sequence.clone())
            .or_default()
            .insert(key.n, reached);
        self.waits.advance(&sequence, key.n, woke);
        let resolved_seq = self.waits.seq_of(&key);
        self.resolve_reached(&sequence);
        let behind = self.awaited.values().any(|p| {
            p.key
                .as_ref()
                .is_some_and(|k| k.sequence == sequence && k.n > key.n)
        });
        if behind && self.catch_up_progress.is_none() {
            self.catch_up_progress = Some(self.now);
            // A wait that blocked is a read at its return: just then the replica had reached
            // this heartbeat (within the wake-up latency), not yet the ones after it. One that
            // answered at once says nothing about when the replica got there.
            if let Some(s) = resolved_seq.filter(|_| blocked) {
                self.poll.note_wait_as_read(woke, s);
            }
            // Read at once, before arming anything: the sooner the read, the tighter the
            // bracket around the backlog the replica is applying right now.
            self.start_read();
        }
        self.top_up(&sequence);
    }

    /// Resolve every pending heartbeat of `sequence` at or below the replica's position.
    fn resolve_reached(&mut self, sequence: &str) {
        let Some(pos) = self.waits.position(sequence) else {
            return;
        };
        let ready: Vec<i64> = self
            .awaited
            .iter()
            .filter(|(_, p)| {
                p.key
                    .as_ref()
                    .is_some_and(|k| &*k.sequence == sequence && k.n <= pos.n)
            })
            .map(|(s, _)| *s)
            .collect();
        for seq in ready {
            self.try_resolve(seq);
        }
    }

    /// What a wait that returned tells about the heartbeat committed at `committed_at_us`.
    pub(super) fn wait_observation(&self, committed_at_us: i64, r: Reached) -> Observation {
        let mut obs = match r.server {
            // The replica's own clock: began and woke are where they happened.
            Some((began, woke)) => {
                timing::gtid_wait_observation(committed_at_us, began, woke, 0, r.already)
            }
            None => timing::gtid_wait_observation(
                committed_at_us,
                self.clock.to_primary(r.armed_at),
                self.clock.to_primary(r.returned_at),
                self.link.one_way_us,
                r.already,
            ),
        };
        if let Some(at) = r.not_reached_at {
            obs.not_yet_at_us = Some(obs.not_yet_at_us.map_or(at, |t| t.max(at)));
        }
        obs
    }

    /// Whether the replica was seen not to have the number before this wait returned: the
    /// server said so (or, when it could not tell, the wait was armed before the commit), or
    /// an earlier wait for it gave up. Unknown commit: only the server's word or a wait that
    /// gave up count.
    fn wait_blocked(&self, committed_at_us: Option<i64>, r: Reached) -> bool {
        if r.not_reached_at.is_some() {
            return true;
        }
        match (r.already, committed_at_us) {
            (Some(already), _) => !already,
            (None, Some(c)) => self.wait_observation(c, r).not_yet_at_us.is_some(),
            (None, None) => false,
        }
    }
}
