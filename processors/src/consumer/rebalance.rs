//! Partition assignment changes, as librdkafka reports them.
//!
//! librdkafka calls [`RebalanceContext`] from inside the poll that [`Source::recv`] does, on
//! the run loop's own task, before it hands out any record of a newly assigned partition. The
//! callback only queues the change (a callback must return quickly and cannot await); the loop
//! takes the queue with [`Source::rebalanced`] before it applies the next record, so a
//! service always hears of an assignment before it sees the partition's records.
//! [`Assignment`] turns the raw reports into what a service acts on: which partitions were
//! actually lost, which are new, and whether this is the first assignment since start (state
//! read at start-up is current for it; later ones may need it read again).
//!
//! The callback also keeps a pause in force: a partition assigned while the service has paused
//! consumption ([`Source::set_paused`]) is paused before its first fetch, or a rebalance during
//! an outage downstream would feed the service records it has no room for.
//!
//! [`Source::recv`]: super::Source::recv
//! [`Source::rebalanced`]: super::Source::rebalanced
//! [`Source::set_paused`]: super::Source::set_paused

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tracing::{info, warn};

/// What librdkafka reported, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Report {
    Revoke(Vec<i32>),
    Assign(Vec<i32>),
}

/// A change a service acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These partitions are no longer ours: work in flight for them will not be stored, their
    /// new owner replays them from the last commit.
    Revoked(Vec<i32>),
    /// These partitions are newly ours. `first`: the first assignment since start.
    Assigned { partitions: Vec<i32>, first: bool },
}

/// Whether the service paused consumption. Held while pausing or resuming, by
/// [`Source::set_paused`](super::Source::set_paused) and by the callback alike, so an
/// assignment cannot slip between reading the flag and acting on it.
#[derive(Debug, Default, Clone)]
pub(super) struct PauseSwitch(Arc<Mutex<bool>>);

impl PauseSwitch {
    pub(super) fn lock(&self) -> MutexGuard<'_, bool> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hears rebalances on the consumer's poll and queues them for the run loop.
pub struct RebalanceContext {
    topic: String,
    reports: Arc<Mutex<Vec<Report>>>,
    pause: PauseSwitch,
}

impl RebalanceContext {
    pub(super) fn new(
        topic: String,
        pause: PauseSwitch,
    ) -> (RebalanceContext, Arc<Mutex<Vec<Report>>>) {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let ctx = RebalanceContext {
            topic,
            reports: reports.clone(),
            pause,
        };
        (ctx, reports)
    }

    fn report(&self, r: Report) {
        self.reports
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(r);
    }

    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    // Revocations are reported before librdkafka lets go of the partitions...
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.report(Report::Revoke(self.partitions(tpl)));
        }
    }

    // ...assignments once they are assigned (under the cooperative protocol `tpl` lists only
    // the added partitions, under the eager one all of them). librdkafka keeps a partition's
    // pause across an unassign, so an assignment gets the service's pause state either way:
    // paused while paused, and resumed otherwise (a partition revoked while paused would else
    // come back paused for good).
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let paused = self.pause.lock();
            if tpl.count() > 0 {
                let result = if *paused {
                    consumer.pause(tpl)
                } else {
                    consumer.resume(tpl)
                };
                match result {
                    Ok(()) if *paused => {
                        info!(topic = %self.topic, partitions = ?self.partitions(tpl), "Partitions assigned while paused; paused them too.")
                    }
                    Ok(()) => {}
                    Err(e) => {
                        warn!(error = %e, paused = *paused, "Applying the pause state to assigned partitions failed.")
                    }
                }
            }
            self.report(Report::Assign(self.partitions(tpl)));
        }
    }
}

/// The partitions this consumer owns, as far as the reports say.
#[derive(Debug, Default)]
pub struct Assignment {
    owned: BTreeSet<i32>,
    assigned_before: bool,
}

impl Assignment {
    /// Apply one report; None when it changes nothing.
    pub(super) fn apply(&mut self, report: Report) -> Option<Change> {
        match report {
            Report::Revoke(partitions) => {
                let lost: Vec<i32> = partitions
                    .into_iter()
                    .filter(|p| self.owned.remove(p))
                    .collect();
                (!lost.is_empty()).then_some(Change::Revoked(lost))
            }
            Report::Assign(partitions) => {
                // An empty first assignment counts: partitions assigned later may have been
                // worked on by another member since the state was read at start.
                let first = !self.assigned_before;
                self.assigned_before = true;
                let new: Vec<i32> = partitions
                    .into_iter()
                    .filter(|p| self.owned.insert(*p))
                    .collect();
                (!new.is_empty()).then_some(Change::Assigned {
                    partitions: new,
                    first,
                })
            }
        }
    }

    pub fn owned(&self) -> &BTreeSet<i32> {
        &self.owned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assigned(partitions: &[i32], first: bool) -> Option<Change> {
        Some(Change::Assigned {
            partitions: partitions.to_vec(),
            first,
        })
    }

    #[test]
    fn first_assignment_is_marked_and_later_ones_are_not() {
        let mut a = Assignment::default();
        assert_eq!(a.apply(Report::Assign(vec![0, 1])), assigned(&[0, 1], true));
        assert_eq!(a.apply(Report::Assign(vec![2])), assigned(&[2], false));
        assert_eq!(a.owned().iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn eager_rebalance_revokes_everything_then_assigns_it_again() {
        let mut a = Assignment::default();
        a.apply(Report::Assign(vec![0, 1]));
        assert_eq!(
            a.apply(Report::Revoke(vec![0, 1])),
            Some(Change::Revoked(vec![0, 1]))
        );
        assert!(a.owned().is_empty());
        // The same partitions come back: new to us again, and not the first assignment, so
        // state another member may have written meanwhile is read again.
        assert_eq!(
            a.apply(Report::Assign(vec![0, 1])),
            assigned(&[0, 1], false)
        );
    }

    #[test]
    fn only_owned_partitions_are_revoked_and_only_new_ones_assigned() {
        let mut a = Assignment::default();
        a.apply(Report::Assign(vec![0, 1]));
        assert_eq!(
            a.apply(Report::Revoke(vec![1, 7])),
            Some(Change::Revoked(vec![1]))
        );
        assert_eq!(a.apply(Report::Revoke(vec![7])), None, "never ours");
        // Cooperative protocol: an incremental assignment lists only the added partitions.
        assert_eq!(a.apply(Report::Assign(vec![0, 3])), assigned(&[3], false));
        assert_eq!(a.apply(Report::Assign(vec![0])), None, "already ours");
    }

    #[test]
    fn an_empty_first_assignment_makes_later_ones_not_first() {
        let mut a = Assignment::default();
        assert_eq!(a.apply(Report::Assign(vec![])), None);
        assert_eq!(a.apply(Report::Assign(vec![0])), assigned(&[0], false));
    }
}
