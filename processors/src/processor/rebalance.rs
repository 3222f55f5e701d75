//! The processor's side of a rebalance (the [`Source`](crate::consumer::Source) hears of it
//! through its consumer context and hands it over before the next record):
//!
//! - Revoked partitions: their open windows are dropped unflushed and their consumed positions
//!   forgotten (the source forgets what it stored). The new owner rebuilds those windows from
//!   the committed offset, which is at or before their first record.
//! - Assigned partitions, after the first assignment: processor-state is read again before any
//!   of their records is applied. Another processor may have flushed their windows since we
//!   read it at start, and a window rebuilt from part of its records must not overwrite the
//!   complete point.
//! - Incidents follow partitions (`alerts/incidents.rs`): those of revoked partitions are
//!   forgotten (their new owner continues them); after an assignment, alert-state is read
//!   again and the open incidents of the partitions now owned are taken over.

use super::run_loop::RunLoop;
use super::state;
use crate::consumer::Change;
use millilag_core::kafka::topics;
use tracing::{info, warn};

impl RunLoop<'_> {
    /// Apply the partition changes reported since the last look.
    pub(super) async fn rebalanced(&mut self) {
        let changes = self.source.rebalanced();
        if changes.is_empty() {
            return;
        }
        for change in changes {
            match change {
                Change::Revoked(lost) => {
                    let (dropped, moved) = self.windows.forget_partitions(&lost);
                    for p in &lost {
                        self.tracker.forget_partition(*p);
                        self.owned.remove(p);
                    }
                    for (cluster, replica) in moved {
                        self.dispatch.forget(&cluster, &replica);
                    }
                    if lost.contains(&0) {
                        for cluster in self.dispatch.stale.clusters_firing() {
                            self.dispatch.forget(&cluster, "");
                        }
                    }
                    if dropped > 0 {
                        info!(partitions = ?lost, dropped_windows = dropped, "Partitions revoked; their open windows are left to the new owner.");
                    }
                }
                // The state read at start is current for the first assignment.
                Change::Assigned {
                    partitions,
                    first: true,
                } => {
                    self.owned.extend(partitions);
                    self.take_over_incidents();
                }
                Change::Assigned {
                    partitions,
                    first: false,
                } => {
                    self.owned.extend(partitions.iter().copied());
                    self.reload_flushed(&partitions).await;
                    self.reload_incidents().await;
                    self.take_over_incidents();
                }
            }
        }
        self.metrics
            .assigned_partitions
            .set(self.owned.len() as i64);
    }

    /// Adopt the open incidents of the partitions owned now.
    fn take_over_incidents(&mut self) {
        for a in self.dormant.take_owned(&self.owned, self.partitions) {
            info!(rule = %a.rule, cluster = %a.cluster, replica = %a.replica, "Taking over an open incident.");
            self.dispatch.adopt(a);
        }
    }

    async fn reload_incidents(&mut self) {
        let topic = self.config.topic(topics::ALERT_STATE);
        match state::load_alerts(self.config, topic).await {
            Ok(latest) => {
                let owned = self.dispatch.owned_incidents();
                self.dormant.reload(latest, &owned);
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), "Re-reading alert-state after a rebalance failed; incidents of the new partitions are not taken over.")
            }
        }
    }

    async fn reload_flushed(&mut self, partitions: &[i32]) {
        let topic = self.config.topic(topics::PROCESSOR_STATE);
        match state::load_flushed(self.config, topic).await {
            Ok(marks) => {
                for f in marks {
                    self.windows.restore_flushed(
                        &f.cluster,
                        &f.replica,
                        f.window_us,
                        f.window_start_us,
                        f.last_seq,
                    );
                }
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), partitions = ?partitions, "Re-reading processor-state after a rebalance failed; rebuilt windows may overwrite complete points.")
            }
        }
    }
}
