//! The clusters the reader measures: per cluster, the context its replica tasks share and one
//! task (with a bounded queue of heartbeats) per replica; discovery adds and drops replicas.

use super::discovery::Discovery;
use super::gtid::GtidKey;
use super::metrics::ReaderMetrics;
use super::publisher::{Output, Ticket};
use super::replica::{ClusterCtx, Job, ReplicaWorker};
use millilag_core::clock::now_us;
use millilag_core::config::DbUrl;
use millilag_core::events::{HeartbeatSet, MeasureStatus, ReplicaDelay};
use millilag_core::http::Health;
use millilag_core::shutdown::Shutdown;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;
use tracing::{debug_span, info, warn, Instrument};

/// Capacity of each replica task's queue of heartbeats.
const REPLICA_QUEUE: usize = 4096;

/// One replica's task, as the watchdog sees it.
struct ReplicaTask {
    jobs: mpsc::Sender<Job>,
    /// When its loop last went round.
    beat: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

/// A replica task whose loop has not gone round for this long is stuck (its loop goes round
/// every 5 s when idle, and every database call is bounded).
const STUCK_AFTER_US: i64 = 60_000_000;

struct ClusterState {
    ctx: Arc<ClusterCtx>,
    replicas: BTreeMap<String, ReplicaTask>,
    /// Replicas from the config: discovery never drops them.
    configured: BTreeSet<String>,
}

pub(super) struct Clusters {
    clusters: BTreeMap<String, ClusterState>,
    out: Arc<Output>,
    metrics: ReaderMetrics,
    shutdown: Shutdown,
    health: Health,
}

impl Clusters {
    pub fn new(
        out: Arc<Output>,
        metrics: ReaderMetrics,
        shutdown: Shutdown,
        health: Health,
    ) -> Clusters {
        Clusters {
            clusters: BTreeMap::new(),
            out,
            metrics,
            shutdown,
            health,
        }
    }

    /// Tell /readyz about replica tasks that stopped or make no progress (a panic is also
    /// reported by the panic hook).
    pub fn check_tasks(&self) {
        let now = now_us();
        for state in self.clusters.values() {
            for (addr, t) in &state.replicas {
                let part = format!("replica {}/{addr}", state.ctx.name);
                let silent = now - t.beat.load(Ordering::Relaxed);
                if t.task.is_finished() {
                    self.health
                        .part_failing(&part, "its task stopped; it is no longer measured");
                } else if silent > STUCK_AFTER_US {
                    self.health.part_failing(
                        &part,
                        format!("its task made no progress for {} s", silent / 1_000_000),
                    );
                } else {
                    self.health.part_ok(&part);
                }
            }
        }
    }

    /// Shutting down: once every replica task has ended, nothing more is published. A task
    /// ends at its next turn after the shutdown; every database call it may be in is bounded.
    pub async fn stopped(self) {
        for state in self.clusters.into_values() {
            for t in state.replicas.into_values() {
                drop(t.jobs);
                let _ = t.task.await;
            }
        }
    }

    /// A cluster and a task for each of its configured replicas.
    pub fn add_cluster(&mut self, ctx: Arc<ClusterCtx>, replicas: &[DbUrl]) {
        let name = ctx.name.clone();
        let mut state = ClusterState {
            ctx,
            replicas: BTreeMap::new(),
            configured: replicas.iter().map(|r| r.address()).collect(),
        };
        for r in replicas {
            self.add_replica(&mut state, r.clone());
        }
        self.clusters.insert(name.clone(), state);
        self.count(&name);
    }

    fn add_replica(&self, state: &mut ClusterState, url: DbUrl) {
        let (tx, rx) = mpsc::channel(REPLICA_QUEUE);
        let addr = url.address();
        let beat = Arc::new(AtomicI64::new(now_us()));
        let worker = ReplicaWorker::new(state.ctx.clone(), url, self.out.clone(), beat.clone());
        // Debug level: an enabled span is entered and left on every poll of the task (1.4% of
        // the reader's CPU at 200 replicas); its log lines name the replica themselves.
        let span = debug_span!("replica", cluster = %state.ctx.name, replica = %addr);
        let task = tokio::spawn(worker.run(rx, self.shutdown.clone()).instrument(span));
        state.replicas.insert(
            addr,
            ReplicaTask {
                jobs: tx,
                beat,
                task,
            },
        );
    }

    fn count(&self, cluster: &str) {
        if let Some(state) = self.clusters.get(cluster) {
            self.metrics
                .replicas
                .get_or_create(&vec![("cluster", cluster.to_string())])
                .set(state.replicas.len() as i64);
        }
    }

    /// Whether `cluster` is measured here (a shared topic may carry other deployments').
    pub fn measures(&self, cluster: &str) -> bool {
        self.clusters.contains_key(cluster)
    }

    /// Replica tasks of `cluster`, for a ticket's count.
    pub fn replicas(&self, cluster: &str) -> usize {
        self.clusters.get(cluster).map_or(0, |s| s.replicas.len())
    }

    /// Hand a heartbeat to every replica task of its cluster. A task that is hopelessly behind
    /// (its queue full) or gone gets its record as `skipped` at once: never wait for a replica
    /// (only, like any publish, for room in the output's bounded backlog).
    pub async fn dispatch(&self, event: Arc<HeartbeatSet>, ticket: &Arc<Ticket>) {
        let Some(state) = self.clusters.get(&event.cluster) else {
            return;
        };
        let key = event.gtid.as_deref().and_then(GtidKey::parse);
        for (addr, t) in &state.replicas {
            let job = Job {
                event: event.clone(),
                key: key.clone(),
                ticket: ticket.clone(),
            };
            if let Err(err) = t.jobs.try_send(job) {
                let job = match err {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                };
                let rec = skipped(&state.ctx, addr, &job.event);
                self.metrics.measured(&rec);
                self.out.publish(rec, Some(job.ticket)).await;
            }
        }
    }

    /// A replica found or lost by discovery.
    pub fn apply(&mut self, d: Discovery) {
        match d {
            Discovery::Add { cluster, url } => {
                let Some(mut state) = self.clusters.remove(&cluster) else {
                    return;
                };
                if !state.replicas.contains_key(&url.address()) {
                    info!(cluster = %cluster, replica = %url.address(), "Discovered a new replica; measuring it.");
                    self.add_replica(&mut state, url);
                }
                self.clusters.insert(cluster.clone(), state);
                self.count(&cluster);
            }
            Discovery::Gone { cluster, addr } => {
                let Some(state) = self.clusters.get_mut(&cluster) else {
                    return;
                };
                // Dropping the task's sender ends it: it reports what it still owed.
                if !state.configured.contains(&addr) && state.replicas.remove(&addr).is_some() {
                    warn!(cluster = %cluster, replica = %addr, "Replica no longer reported by the primary; stopped measuring it.");
                    self.health.part_ok(&format!("replica {cluster}/{addr}"));
                    self.metrics.forget_replica(&cluster, &addr);
                    self.count(&cluster);
                }
            }
        }
    }
}

fn skipped(ctx: &ClusterCtx, replica: &str, e: &HeartbeatSet) -> ReplicaDelay {
    let now = millilag_core::clock::now_us();
    ReplicaDelay {
        cluster: ctx.name.clone(),
        replica: replica.to_string(),
        primary: e.primary.clone(),
        seq: e.seq,
        committed_at_us: e.committed_at_us,
        delay_us: (now - e.committed_at_us).max(0),
        uncertainty_us: 0,
        method: ctx.settings.method_for(e.gtid.as_deref()),
        status: MeasureStatus::Skipped,
        upper_bound: false,
        observed_at_us: now,
        reader_id: ctx.reader_id.clone(),
        queries: 0,
    }
}
