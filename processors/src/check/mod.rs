//! `millilag check` and `millilag monitor`: each replica's current delay, read straight from
//! the databases, without Kafka or the other services (pt-heartbeat's `--check` and
//! `--monitor` habits, for scripts and Nagios-style checks).
//!
//! One round per cluster: one query on the primary (its server_id, its clock, its heartbeat
//! row's seq and ts), then on every replica at once the row the primary wrote (seq, ts) and
//! SHOW SLAVE/REPLICA STATUS. Replica read times are taken on the local clock and converted to
//! the primary's with the NTP-style offset estimate of [`millilag_core::clock`] (lowest round
//! trip kept), so the host running the check needs no synchronised clock. [`verdict`] turns the
//! readings into the live lag, a Nagios state and the printed lines; [`monitor`] repeats rounds.
//!
//! Connections are kept between rounds and re-opened after a failure; every connect and query
//! is bounded ([`db::CONNECT_TIMEOUT`], [`QUERY_TIMEOUT`]).

pub mod monitor;
pub mod verdict;

use futures::future::join_all;
use millilag_core::clock::{now_us, sample_offset, OffsetEstimator};
use millilag_core::config::{ClusterConfig, Config, DbUrl};
use millilag_core::db::{self, Dialect};
use mysql_async::prelude::*;
use mysql_async::Conn;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;
use verdict::{ClusterReading, PrimaryRow, ReplicaObs, ReplicaRead};

/// How long one query may take before its server counts as unreachable for this round.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Clock offset samples taken on a fresh primary connection (the lowest round trip is kept).
const FIRST_SAMPLES: usize = 5;

/// Samples the offset estimate keeps.
const SAMPLES_KEPT: usize = 16;

/// A server and its connection, opened on first use and dropped after an error.
struct Slot {
    url: DbUrl,
    password: Option<String>,
    conn: Option<(Conn, Dialect)>,
}

impl Slot {
    fn new(url: DbUrl, password: Option<String>) -> Slot {
        Slot {
            url,
            password,
            conn: None,
        }
    }

    /// The open connection, connecting first if there is none. Returns whether it is new.
    async fn conn(&mut self) -> Result<(&mut Conn, &Dialect, bool), String> {
        let fresh = self.conn.is_none();
        if fresh {
            let addr = self.url.address();
            let mut c = db::connect(&self.url, self.password.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            let d = bounded(db::dialect(&mut c, &addr))
                .await?
                .map_err(|e| e.to_string())?;
            self.conn = Some((c, d));
        }
        let (c, d) = self.conn.as_mut().expect("connected above");
        Ok((c, d, fresh))
    }
}

/// `fut`, or an error after [`QUERY_TIMEOUT`].
async fn bounded<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(QUERY_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no answer within {QUERY_TIMEOUT:?}"))
}

/// @@server_id, the primary's clock, and its heartbeat row's seq and ts (NULL without a row).
type PrimaryQueryRow = (u32, Option<String>, Option<u64>, Option<String>);

/// One cluster's servers and what is remembered between rounds.
struct ClusterProbe {
    cfg: ClusterConfig,
    interval_us: i64,
    table: String,
    primary: Slot,
    replicas: BTreeMap<String, Slot>,
    clock: OffsetEstimator,
}

/// Reads every selected cluster, one round at a time.
pub struct Checker {
    clusters: Vec<ClusterProbe>,
}

impl Checker {
    /// The clusters of `config`, or only `only`. Err names an unknown cluster.
    pub fn new(config: &Config, only: Option<&str>) -> Result<Checker, String> {
        let picked: Vec<&ClusterConfig> = config
            .clusters
            .iter()
            .filter(|c| only.is_none_or(|n| c.name == n))
            .collect();
        if picked.is_empty() {
            let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
            return Err(match only {
                Some(n) => format!("no cluster named {n:?} in the config (clusters: {names:?})"),
                None => "no [[cluster]] in the config: nothing to check".into(),
            });
        }
        let mut clusters = Vec::new();
        for c in picked {
            let password = c.password.as_ref().map(|p| p.expose().to_string());
            let replicas = c
                .replicas
                .iter()
                .map(|u| (u.address(), Slot::new(u.clone(), password.clone())))
                .collect();
            clusters.push(ClusterProbe {
                cfg: c.clone(),
                interval_us: config.writer.interval.as_micros_i64(),
                table: db::qualified_table(&c.database, &c.table).map_err(|e| e.to_string())?,
                primary: Slot::new(c.primary().clone(), password),
                replicas,
                clock: OffsetEstimator::new(SAMPLES_KEPT),
            });
        }
        Ok(Checker { clusters })
    }

    /// Read every cluster once (clusters one after another, replicas of a cluster at once).
    pub async fn round(&mut self) -> Vec<ClusterReading> {
        let mut out = Vec::new();
        for c in &mut self.clusters {
            out.push(c.round().await);
        }
        out
    }
}

impl ClusterProbe {
    async fn round(&mut self) -> ClusterReading {
        let primary = self.read_primary().await;
        if primary.is_ok() && self.cfg.discover_replicas {
            self.discover().await;
        }
        let (table, clock) = (&self.table, &self.clock);
        let server_id = primary.as_ref().map(|p| p.server_id).unwrap_or(0);
        let replicas = join_all(
            self.replicas
                .iter_mut()
                .map(|(addr, slot)| read_replica(addr, slot, table, server_id, clock)),
        )
        .await;
        ClusterReading {
            cluster: self.cfg.name.clone(),
            primary,
            replicas,
            interval_us: self.interval_us,
        }
    }

    /// The primary's row and clock in one round trip (plus a few clock samples when the
    /// connection is new).
    async fn read_primary(&mut self) -> Result<PrimaryRow, String> {
        let addr = self.primary.url.address();
        let sql = format!(
            "SELECT @@server_id, UNIX_TIMESTAMP(SYSDATE(6)), \
             (SELECT seq FROM {t} WHERE server_id = @@server_id), \
             (SELECT ts FROM {t} WHERE server_id = @@server_id)",
            t = self.table
        );
        let result = async {
            let (conn, _, fresh) = self.primary.conn().await?;
            if fresh {
                for _ in 0..FIRST_SAMPLES {
                    let s = bounded(sample_offset(conn)).await?.map_err(|e| e.to_string())?;
                    self.clock.add(s);
                }
            }
            let t0 = now_us();
            let row: Option<PrimaryQueryRow> =
                bounded(conn.query_first(&sql)).await?.map_err(|e| e.to_string())?;
            let t1 = now_us();
            let (server_id, clock, seq, ts) = row.ok_or("the primary returned no row")?;
            let read_at_us = clock
                .as_deref()
                .and_then(db::unix_text_to_us)
                .ok_or("SYSDATE(6) returned no time")?;
            self.clock.add(millilag_core::clock::OffsetSample {
                offset_us: read_at_us - (t0 + t1) / 2,
                rtt_us: t1 - t0,
                taken_at_us: t1,
            });
            let (Some(seq), Some(ts)) = (seq, ts) else {
                return Err(format!(
                    "no heartbeat row for server_id {server_id} in {}: is `millilag writer` running?",
                    self.table
                ));
            };
            let ts_us = db::parse_pt_heartbeat_ts(&ts)
                .ok_or_else(|| format!("heartbeat ts {ts:?} is not a UTC timestamp"))?;
            Ok(PrimaryRow {
                server_id,
                seq,
                ts_us,
                read_at_us,
            })
        }
        .await;
        result.map_err(|e| {
            if !e.starts_with("no heartbeat row") {
                self.primary.conn = None;
            }
            format!("primary {addr}: {e}")
        })
    }

    /// Add the replicas the primary reports (SHOW SLAVE HOSTS), keeping the listed ones.
    async fn discover(&mut self) {
        let addr = self.primary.url.address();
        let Ok((conn, dialect, _)) = self.primary.conn().await else {
            return;
        };
        let dialect = dialect.clone();
        let Ok(Ok(hosts)) = bounded(db::replica_hosts(conn, &dialect, &addr)).await else {
            return;
        };
        let password = self.cfg.password.as_ref().map(|p| p.expose().to_string());
        for (host, port) in hosts {
            let url = self.cfg.primary().with_address(&host, port);
            self.replicas
                .entry(url.address())
                .or_insert_with(|| Slot::new(url, password.clone()));
        }
    }
}

/// One replica: its copy of the primary's row, timed on the local clock and converted to the
/// primary's, then its replication threads.
async fn read_replica(
    addr: &str,
    slot: &mut Slot,
    table: &str,
    server_id: u32,
    clock: &OffsetEstimator,
) -> ReplicaObs {
    let sql = format!("SELECT seq, ts FROM {table} WHERE server_id = {server_id}");
    let result: Result<(ReplicaRead, Option<String>), String> = async {
        let (conn, dialect, _) = slot.conn().await?;
        let dialect = dialect.clone();
        let t0 = now_us();
        let row: Option<(u64, String)> = bounded(conn.query_first(&sql))
            .await?
            .map_err(|e| e.to_string())?;
        let t1 = now_us();
        let read = match row {
            None => ReplicaRead::NoRow,
            Some((seq, ts)) => {
                let ts_us = db::parse_pt_heartbeat_ts(&ts)
                    .ok_or_else(|| format!("heartbeat ts {ts:?} is not a UTC timestamp"))?;
                let (at_primary_us, clock_unc) = clock.to_primary((t0 + t1) / 2);
                ReplicaRead::Row {
                    seq,
                    ts_us,
                    at_primary_us,
                    uncertainty_us: clock_unc + (t1 - t0 + 1) / 2,
                }
            }
        };
        // Thread state needs SLAVE MONITOR / REPLICATION CLIENT; without it, it stays unknown.
        let stopped = match bounded(db::replica_status(conn, &dialect, addr)).await? {
            Ok(s) if !s.configured => Some("not configured as a replica".to_string()),
            Ok(s) if !s.replicating() => Some(stopped_threads(&s)),
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(replica = %addr, error = %e, "Replica status unavailable.");
                None
            }
        };
        Ok((read, stopped))
    }
    .await;
    match result {
        Ok((read, stopped)) => ReplicaObs {
            replica: addr.to_string(),
            read,
            stopped,
        },
        Err(e) => {
            slot.conn = None;
            ReplicaObs {
                replica: addr.to_string(),
                read: ReplicaRead::Unreachable(e),
                stopped: None,
            }
        }
    }
}

fn stopped_threads(s: &db::ReplicaStatus) -> String {
    let mut parts = Vec::new();
    if !s.io_running {
        parts.push("IO thread not running");
    }
    if !s.sql_running {
        parts.push("SQL thread not running");
    }
    let mut text = parts.join(", ");
    if let Some(e) = &s.last_error {
        text.push_str(&format!(" ({e})"));
    }
    text
}

/// Options of `check` and `monitor`.
#[derive(Debug, Clone)]
pub struct Options {
    pub cluster: Option<String>,
    pub thresholds: verdict::Thresholds,
}

/// `millilag check`: one round, the report on stdout; returns the Nagios exit code.
pub async fn check(config: &Config, opts: &Options) -> u8 {
    let mut checker = match Checker::new(config, opts.cluster.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            println!("MILLILAG UNKNOWN - {e}");
            return verdict::State::Unknown.exit_code();
        }
    };
    let lines: Vec<verdict::Line> = checker
        .round()
        .await
        .iter()
        .flat_map(|r| verdict::assess(r, opts.thresholds))
        .collect();
    let (state, text) = verdict::report(&lines, opts.thresholds);
    print!("{text}");
    state.exit_code()
}
