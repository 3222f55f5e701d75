//! The rules of `millilag check` and `millilag monitor`, apart from any I/O: what a reading of
//! the heartbeat rows means (the live lag and how it was derived), its Nagios state, and the
//! lines printed. Tested with made-up readings.
//!
//! The delay is the live lag, as the reader's `millilag_replica_lag_seconds` defines it: the
//! age, on the primary's clock, of the oldest heartbeat the replica does not show yet (0 when it
//! shows them all). From one read of the primary's row (seq_p, ts_p) and then one of the
//! replica's (seq_r, ts_r), at primary-clock time `now`:
//! - seq_r >= seq_p: the replica shows every heartbeat the primary had: 0.
//! - seq_r + 1 = seq_p: the oldest one missing is the primary's newest: now - ts_p, exact.
//! - further behind: heartbeat seq_r + 1 was written one writer interval after ts_r (the
//!   writer's drift-free schedule), never after ts_p: now - min(ts_r + interval, ts_p), within
//!   one interval of the truth.
//! - seq_p = 0 (the row is written by pt-heartbeat, which has no seq): now - ts_r, as
//!   pt-heartbeat --check computes it, up to one interval too high.

use std::fmt::Write as _;

/// Nagios plugin states, in exit-code order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ok,
    Warning,
    Critical,
    Unknown,
}

impl State {
    pub fn exit_code(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Warning => "WARNING",
            State::Critical => "CRITICAL",
            State::Unknown => "UNKNOWN",
        }
    }

    /// Which of several states the whole check reports: CRITICAL over WARNING over UNKNOWN over
    /// OK (the monitoring-plugins order: a known problem outranks a failed measurement).
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Unknown => 1,
            State::Warning => 2,
            State::Critical => 3,
        }
    }

    pub fn worst(states: impl IntoIterator<Item = State>) -> State {
        states
            .into_iter()
            .max_by_key(|s| s.rank())
            .unwrap_or(State::Unknown)
    }
}

/// The primary's heartbeat row, read with the primary's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryRow {
    pub server_id: u32,
    pub seq: u64,
    /// `ts` of the row, Unix microseconds (UTC).
    pub ts_us: i64,
    /// The primary's clock when it was read.
    pub read_at_us: i64,
}

/// What one replica showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaRead {
    /// No connection or the query failed.
    Unreachable(String),
    /// The replica has no row for the primary's server_id.
    NoRow,
    Row {
        seq: u64,
        ts_us: i64,
        /// When it was read, converted to the primary's clock.
        at_primary_us: i64,
        /// Half the read's round trip plus the clock offset's uncertainty.
        uncertainty_us: i64,
    },
}

/// A replica's reading plus its replication threads (None: not known, e.g. no privilege).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaObs {
    pub replica: String,
    pub read: ReplicaRead,
    /// Some(reason) when SHOW SLAVE/REPLICA STATUS says a thread is not running.
    pub stopped: Option<String>,
}

/// How a delay was derived (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    CaughtUp,
    NextIsNewest,
    Interpolated,
    Timestamp,
}

/// The live lag (microseconds, never negative) of a replica showing (seq_r, ts_r) at `now_us`.
pub fn live_lag_us(
    primary: &PrimaryRow,
    seq_r: u64,
    ts_r: i64,
    now_us: i64,
    interval_us: i64,
) -> (i64, Basis) {
    let (lag, basis) = if primary.seq == 0 {
        (now_us - ts_r, Basis::Timestamp)
    } else if seq_r >= primary.seq {
        (0, Basis::CaughtUp)
    } else if seq_r + 1 == primary.seq {
        (now_us - primary.ts_us, Basis::NextIsNewest)
    } else {
        let next = (ts_r + interval_us).min(primary.ts_us);
        (now_us - next, Basis::Interpolated)
    };
    (lag.max(0), basis)
}

/// Thresholds of the check.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub critical_us: i64,
    pub warning_us: Option<i64>,
}

/// One replica's verdict: what is printed and what the exit code is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub cluster: String,
    pub replica: String,
    pub delay_us: Option<i64>,
    pub uncertainty_us: i64,
    pub state: State,
    pub detail: String,
}

/// Everything read from one cluster in one round.
#[derive(Debug, Clone)]
pub struct ClusterReading {
    pub cluster: String,
    /// Err: the primary could not be read (the text says why); the replicas are then not judged.
    pub primary: Result<PrimaryRow, String>,
    pub replicas: Vec<ReplicaObs>,
    pub interval_us: i64,
}

/// A primary heartbeat older than this means nobody writes heartbeats: every replica would
/// look caught up, so the check cannot tell.
pub fn stale_after_us(interval_us: i64) -> i64 {
    (10 * interval_us).max(1_000_000)
}

fn seconds(us: i64) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}

/// The verdict on every replica of a cluster.
pub fn assess(r: &ClusterReading, t: Thresholds) -> Vec<Line> {
    let line = |replica: &str, delay_us, uncertainty_us, state, detail: String| Line {
        cluster: r.cluster.clone(),
        replica: replica.to_string(),
        delay_us,
        uncertainty_us,
        state,
        detail,
    };
    let primary = match &r.primary {
        Ok(p) => p,
        Err(why) => {
            return r
                .replicas
                .iter()
                .map(|o| line(&o.replica, None, 0, State::Unknown, why.clone()))
                .collect()
        }
    };
    let age = primary.read_at_us - primary.ts_us;
    if age > stale_after_us(r.interval_us) {
        let why = format!(
            "the primary's heartbeat is {} old: no writer is writing heartbeats (is `millilag writer` running and leading?)",
            seconds(age)
        );
        return r
            .replicas
            .iter()
            .map(|o| line(&o.replica, None, 0, State::Unknown, why.clone()))
            .collect();
    }
    r.replicas
        .iter()
        .map(|o| match &o.read {
            ReplicaRead::Unreachable(e) => {
                line(&o.replica, None, 0, State::Critical, format!("unreachable: {e}"))
            }
            ReplicaRead::NoRow => line(
                &o.replica,
                None,
                0,
                State::Critical,
                format!(
                    "no heartbeat row for server_id {}: the replica does not replicate the heartbeat table",
                    primary.server_id
                ),
            ),
            ReplicaRead::Row {
                seq,
                ts_us,
                at_primary_us,
                uncertainty_us,
            } => {
                let (lag, basis) =
                    live_lag_us(primary, *seq, *ts_us, *at_primary_us, r.interval_us);
                let mut detail = match basis {
                    Basis::CaughtUp => format!("caught up (seq {seq})"),
                    Basis::Timestamp => "from ts (no seq: pt-heartbeat's row)".to_string(),
                    _ => format!("{} heartbeats behind", primary.seq - seq),
                };
                let state = if let Some(why) = &o.stopped {
                    detail = format!("replication stopped: {why}; {detail}");
                    State::Critical
                } else if lag > t.critical_us {
                    State::Critical
                } else if t.warning_us.is_some_and(|w| lag > w) {
                    State::Warning
                } else {
                    State::Ok
                };
                line(&o.replica, Some(lag), *uncertainty_us, state, detail)
            }
        })
        .collect()
}

/// A perfdata label: quoted, with quotes doubled (Nagios plugin guidelines).
fn perf_label(l: &Line) -> String {
    format!(
        "'{}'",
        format!("{}/{}", l.cluster, l.replica).replace('\'', "''")
    )
}

/// `check`'s output: a Nagios status line with performance data, then one line per replica
/// (`cluster replica delay STATE detail`). Returns (state, text).
pub fn report(lines: &[Line], t: Thresholds) -> (State, String) {
    let state = State::worst(lines.iter().map(|l| l.state));
    let mut out = format!("MILLILAG {} - ", state.as_str());
    let bad: Vec<&Line> = lines.iter().filter(|l| l.state != State::Ok).collect();
    if lines.is_empty() {
        out.push_str("no replica to check");
    } else if bad.is_empty() {
        let worst = lines.iter().max_by_key(|l| l.delay_us).unwrap();
        let _ = write!(
            out,
            "{} replicas, highest delay {} ({}/{})",
            lines.len(),
            worst.delay_us.map_or("-".into(), seconds),
            worst.cluster,
            worst.replica
        );
    } else {
        let parts: Vec<String> = bad
            .iter()
            .map(|l| {
                format!(
                    "{}/{} {} {}",
                    l.cluster,
                    l.replica,
                    l.delay_us.map_or("-".into(), seconds),
                    l.state.as_str()
                )
            })
            .collect();
        let _ = write!(
            out,
            "{} of {} replicas: {}",
            bad.len(),
            lines.len(),
            parts.join(", ")
        );
    }
    let perf: Vec<String> = lines
        .iter()
        .filter_map(|l| {
            let d = l.delay_us?;
            Some(format!(
                "{}={:.6}s;{};{:.6};0",
                perf_label(l),
                d as f64 / 1e6,
                t.warning_us
                    .map_or(String::new(), |w| format!("{:.6}", w as f64 / 1e6)),
                t.critical_us as f64 / 1e6
            ))
        })
        .collect();
    if !perf.is_empty() {
        let _ = write!(out, " | {}", perf.join(" "));
    }
    out.push('\n');
    for l in lines {
        let _ = writeln!(out, "{}", replica_line(l));
    }
    (state, out)
}

/// `cluster replica delay STATE detail`, the delay with its uncertainty.
pub fn replica_line(l: &Line) -> String {
    let delay = match l.delay_us {
        Some(d) => format!("{} ±{:.1}ms", seconds(d), l.uncertainty_us as f64 / 1e3),
        None => "- -".to_string(),
    };
    format!(
        "{} {} {delay} {} {}",
        l.cluster,
        l.replica,
        l.state.as_str(),
        l.detail
    )
}

#[cfg(test)]
#[path = "verdict_tests.rs"]
mod tests;
