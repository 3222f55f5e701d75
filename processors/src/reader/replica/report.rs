//! The records a tracker publishes: a measured delay, or why a heartbeat could not be measured.

use super::{Awaited, Command, Tracker, TIGHT_US};
use crate::reader::timing::{self, Observation};
use millilag_core::events::{MeasureMethod, MeasureStatus, ReplicaDelay};

impl<T> Awaited<T> {
    /// One rule: a heartbeat timed through its GTID was measured by waits, any other by reads.
    pub(super) fn method(&self) -> MeasureMethod {
        if self.key.is_some() {
            MeasureMethod::GtidWait
        } else {
            MeasureMethod::Poll
        }
    }
}

impl<T> Tracker<T> {
    pub(super) fn report_measured(&mut self, p: Awaited<T>, obs: Observation) {
        let m = timing::measure(
            p.event.committed_at_us,
            obs,
            self.clock_uncertainty(),
            TIGHT_US,
        );
        let queries = p.queries + std::mem::take(&mut self.poll.since_hit);
        let record = ReplicaDelay {
            cluster: self.who.cluster.clone(),
            replica: self.who.replica.clone(),
            primary: p.event.primary.clone(),
            seq: p.event.seq,
            committed_at_us: p.event.committed_at_us,
            delay_us: m.delay_us,
            uncertainty_us: m.uncertainty_us,
            method: p.method(),
            status: MeasureStatus::Ok,
            upper_bound: m.upper_bound,
            observed_at_us: p.event.committed_at_us + m.delay_us,
            reader_id: self.who.reader_id.clone(),
            queries,
        };
        self.out.push(Command::Publish {
            record,
            ticket: p.ticket,
        });
    }

    /// A heartbeat that could not be measured (yet): its delay is how long it has been
    /// waiting. Takes its ticket: its offset may move on once this record is acknowledged.
    pub(super) fn report_awaited(&mut self, a: &mut Awaited<T>, status: MeasureStatus) {
        let method = a.method();
        let ticket = a.ticket.take();
        let e = &a.event;
        let now = self.primary_now();
        let record = ReplicaDelay {
            cluster: self.who.cluster.clone(),
            replica: self.who.replica.clone(),
            primary: e.primary.clone(),
            seq: e.seq,
            committed_at_us: e.committed_at_us,
            delay_us: (now - e.committed_at_us).max(0),
            uncertainty_us: self.clock_uncertainty(),
            method,
            status,
            upper_bound: false,
            observed_at_us: now,
            reader_id: self.who.reader_id.clone(),
            queries: a.queries,
        };
        self.out.push(Command::Publish { record, ticket });
    }
}
