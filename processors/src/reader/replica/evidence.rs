//! From what waits and reads saw to an observation of one heartbeat, best evidence first.

use super::Tracker;
use crate::reader::timing::{self, Observation};
use millilag_core::events::MeasureMethod;

impl<T> Tracker<T> {
    /// What is known about when heartbeat `seq` became visible, best evidence first: its own
    /// GTID wait, the row reads that saw it appear, and last an upper bound (the replica was
    /// seen past it).
    pub(super) fn observation_for(&self, seq: i64) -> Option<Observation> {
        let p = self.awaited.get(&seq)?;
        if let Some(key) = &p.key {
            if let Some(r) = self.waits.reached(key) {
                let own = self.wait_observation(p.event.committed_at_us, r);
                // A wait that did not block says only "by then"; the looks around the
                // moment (other waits' starts, reads) may bracket it.
                if own.not_yet_at_us.is_none() {
                    return Some(self.sightings.get(&seq).copied().unwrap_or(own));
                }
                return Some(own);
            }
        }
        if let Some(obs) = self.sightings.get(&seq) {
            return Some(*obs);
        }
        if let Some(key) = &p.key {
            if self.waits.is_armed(key) {
                // Its own wait is armed and answers within a wake-up of the replica getting
                // there: better evidence than the position a neighbour's wait or a read saw.
                return None;
            }
            if let Some(pos) = self.waits.position(&key.sequence) {
                if pos.n >= key.n {
                    // Seen past it by a later wait or read; the last read that did not show it,
                    // or the last wait for it that gave up, still bounds it from below.
                    let not_yet = self
                        .poll
                        .last_read
                        .filter(|r| r.seq < seq)
                        .map(|r| r.earliest_us)
                        .into_iter()
                        .chain(self.waits.not_reached(key))
                        .max();
                    return Some(timing::read_observation(not_yet, pos.at));
                }
            }
        }
        match self.poll.last_read {
            Some(r) if r.seq >= seq => Some(Observation {
                not_yet_at_us: None,
                seen_at_us: r.latest_us,
            }),
            _ => None,
        }
    }

    /// Report awaited heartbeat `seq` if anything shows it visible. True if it was.
    pub(super) fn try_resolve(&mut self, seq: i64) -> bool {
        let Some(obs) = self.observation_for(seq) else {
            return false;
        };
        let Some(mut p) = self.awaited.remove(&seq) else {
            return false;
        };
        self.unreported.remove(&seq);
        let from_read = self.sightings.remove(&seq).is_some();
        // A wait armed for this heartbeat before its event arrived is this measurement's query.
        // What it saw is used up: keeping it until the sighting TTL held ~12,000 entries per
        // replica (120 s at 100/s), most of the reader's memory at 200 replicas.
        if p.key
            .as_ref()
            .is_some_and(|k| self.waits.take_reached(k).is_some())
        {
            p.queries = p.queries.max(1);
        }
        tracing::debug!(replica = %self.who.replica, seq, ?obs, from_read, catch_up = self.catch_up_progress.is_some(), last_read = ?self.poll.last_read, "Resolved.");
        if p.method() == MeasureMethod::Poll {
            self.anticipate(p.event.committed_at_us, p.event.interval_us);
        }
        self.report_measured(p, obs);
        true
    }
}
