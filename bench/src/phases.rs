//! One phase per measuring tool, each through the same schedule, so on a 2-core box one tool's
//! CPU is not another's noise: start (the tool starts while the writers already run), steady
//! state, stalls of each length on each replica in turn, the same on durable servers
//! (`sync_binlog = 1`, `innodb_flush_log_at_trx_commit = 1`, set on the running servers), and
//! for millilag's reader a restart (SIGTERM, a gap, start again).

use crate::procs::{self, PtSettings, PtyProcess};
use anyhow::{Context, Result};
use millilag_core::clock::now_us;
use millilag_core::events::ReplicaDelay;
use millilag_harness::mariadb::Stall;
use millilag_harness::process::Guard;
use millilag_harness::Cluster;
use mysql_async::prelude::*;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tool {
    GtidWait,
    Poll,
    PtBest,
    PtDefault,
}

impl Tool {
    pub const ALL: [Tool; 4] = [Tool::GtidWait, Tool::Poll, Tool::PtBest, Tool::PtDefault];

    pub fn name(self) -> &'static str {
        match self {
            Tool::GtidWait => "gtid-wait",
            Tool::Poll => "poll",
            Tool::PtBest => "pt-best",
            Tool::PtDefault => "pt-default",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Tool::GtidWait => "millilag gtid-wait",
            Tool::Poll => "millilag poll",
            Tool::PtBest => "pt-heartbeat --interval 0.01 --skew 0.001",
            Tool::PtDefault => "pt-heartbeat defaults (--interval 1, --skew 0.5)",
        }
    }

    pub fn parse(s: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|t| t.name() == s)
    }

    pub fn is_pt(self) -> bool {
        matches!(self, Tool::PtBest | Tool::PtDefault)
    }

    /// Its database user (and millilag's reader_id): the servers' per-user counters tell the
    /// tools apart.
    pub fn user(self) -> &'static str {
        match self {
            Tool::GtidWait => "mlg_gtid",
            Tool::Poll => "mlg_poll",
            Tool::PtBest => "pt_best",
            Tool::PtDefault => "pt_default",
        }
    }

    pub fn pt_settings(self) -> PtSettings {
        match self {
            Tool::PtDefault => None,
            _ => Some(("0.01", "0.001")),
        }
    }

    fn reader_settings(self) -> &'static str {
        match self {
            // Poll at its most accurate: backing off to 2 ms at most while a heartbeat is late.
            Tool::Poll => "method = \"poll\"\npoll_max_interval = \"2ms\"",
            _ => "method = \"gtid-wait\"",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// From the previous tool's end (or the writers' start) until the tool measures live.
    Start,
    /// From the reader's SIGTERM until its successor measures live.
    Restart,
    Steady,
    /// The stall schedule: stalls, each replica's catch-up, and the replica not stalled.
    Stalls,
}

#[derive(Clone, Copy, Debug)]
pub struct Section {
    pub kind: Kind,
    pub durable: bool,
    pub from_us: i64,
    pub to_us: i64,
}

#[derive(Clone, Copy, Debug)]
pub struct StallRun {
    /// When STOP SLAVE SQL_THREAD was sent (the harness stamps the stall after it returns,
    /// which on a loaded box can be 100+ ms after the SQL thread stopped).
    pub issued_us: i64,
    pub durable: bool,
    pub replica: usize,
    pub ms: u64,
    pub stall: Stall,
}

/// A pt-heartbeat --monitor line: when it arrived and what it said.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    pub replica: usize,
    pub at_us: i64,
    pub lag_s: f64,
}

/// Counters at one moment: heartbeats written, the tool's client CPU, and per replica the
/// server's own statement counters.
#[derive(Clone, Debug, Default)]
pub struct Snap {
    pub at_us: i64,
    pub seq: i64,
    pub cpu_s: f64,
    pub helper_cpu_s: f64,
    /// Per replica: Questions, Com_select, the tool user's statements (userstat) and its
    /// server CPU seconds.
    pub server: Vec<(i64, i64, i64, f64)>,
}

/// What a tool cost over one window (the difference of two [`Snap`]s).
#[derive(Clone, Debug)]
pub struct Cost {
    pub label: &'static str,
    pub from: i64,
    pub to: i64,
    pub secs: f64,
    pub heartbeats: i64,
    pub cpu_s: f64,
    pub helper_cpu_s: f64,
    pub server: Vec<(i64, i64, i64, f64)>,
}

impl Snap {
    pub fn to(&self, later: &Snap, label: &'static str) -> Cost {
        Cost {
            label,
            from: self.at_us,
            to: later.at_us,
            secs: (later.at_us - self.at_us) as f64 / 1e6,
            heartbeats: later.seq - self.seq,
            cpu_s: later.cpu_s - self.cpu_s,
            helper_cpu_s: later.helper_cpu_s - self.helper_cpu_s,
            server: self
                .server
                .iter()
                .zip(&later.server)
                .map(|(a, b)| (b.0 - a.0, b.1 - a.1, b.2 - a.2, b.3 - a.3))
                .collect(),
        }
    }
}

pub struct Phase {
    pub tool: Tool,
    pub sections: Vec<Section>,
    pub stalls: Vec<StallRun>,
    pub costs: Vec<Cost>,
    pub readings: Vec<Reading>,
}

pub struct Plan {
    pub start: Duration,
    pub steady: Duration,
    pub stalls_ms: Vec<u64>,
    pub repeats: usize,
    pub settle: Duration,
    pub durable_steady: Duration,
    pub durable_stalls_ms: Vec<u64>,
    pub restart_gap: Duration,
}

pub type Records = Arc<Mutex<Vec<ReplicaDelay>>>;

pub struct Ctx<'a> {
    pub cluster: &'a Cluster,
    pub brokers: String,
    pub prefix: String,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub records: Records,
    pub plan: Plan,
}

/// The measuring tool's processes.
enum Running {
    Reader(Guard),
    /// One --monitor per replica.
    Pt(Vec<PtyProcess>),
}

impl Running {
    fn cpu(&self) -> (f64, f64) {
        match self {
            Running::Reader(g) => (procs::cpu_seconds(g.pid()), 0.0),
            // perl's CPU is pt-heartbeat's; script(1)'s is the pty's, the bench's plumbing.
            Running::Pt(ms) => ms.iter().fold((0.0, 0.0), |(a, b), m| {
                (
                    a + procs::cpu_seconds(m.inner),
                    b + procs::cpu_seconds(m.script_pid()),
                )
            }),
        }
    }
}

/// `SET GLOBAL` on every server: durable (every commit fsynced, binlog included) or the
/// harness's relaxed default.
pub async fn set_durable(cluster: &Cluster, on: bool) -> Result<()> {
    let (sync, flush) = if on { (1, 1) } else { (0, 2) };
    for s in std::iter::once(&cluster.primary).chain(&cluster.replicas) {
        s.admin()
            .await?
            .query_drop(format!(
                "SET GLOBAL sync_binlog = {sync}, innodb_flush_log_at_trx_commit = {flush}"
            ))
            .await?;
    }
    Ok(())
}

impl Ctx<'_> {
    fn start_tool(&self, tool: Tool, name: &str) -> Result<Running> {
        if tool.is_pt() {
            let ms = self
                .cluster
                .replicas
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let log = self.dir.join(format!("{name}-{}.log", i + 1));
                    procs::spawn_pt_monitor(r.port, tool.user(), tool.pt_settings(), &log)
                })
                .collect::<Result<_>>()?;
            return Ok(Running::Pt(ms));
        }
        let cfg = procs::config_toml(
            self.cluster,
            &self.brokers,
            &self.prefix,
            tool.user(),
            tool.reader_settings(),
        );
        Ok(Running::Reader(procs::spawn_millilag(
            &self.bin, "reader", &cfg, &self.dir, name,
        )?))
    }

    /// Until the tool reports on live data: millilag records of heartbeats written after it
    /// started, or a few pt-heartbeat lines from every monitor.
    async fn wait_live(&self, tool: Tool, running: &Running, since: i64) -> Result<()> {
        millilag_harness::wait_for(
            &format!("{} measuring", tool.name()),
            Duration::from_secs(60),
            || async {
                let live = match running {
                    Running::Pt(ms) => ms.iter().all(|m| {
                        m.lines
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|(at, _)| *at > since)
                            .count()
                            >= 2
                    }),
                    Running::Reader(_) => {
                        self.records
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|r| r.reader_id == tool.user() && r.committed_at_us > since)
                            .count()
                            >= 20
                    }
                };
                live.then_some(())
            },
        )
        .await
    }

    async fn snap(&self, running: &Running, user: &str) -> Result<Snap> {
        let mut server = Vec::new();
        for r in &self.cluster.replicas {
            let mut c = r.admin().await?;
            let status: Vec<(String, String)> = c
                .query("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_select')")
                .await?;
            let get = |n: &str| {
                status
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0)
            };
            let us: Option<(i64, f64)> = c
                .exec_first(
                    "SELECT SELECT_COMMANDS + UPDATE_COMMANDS + OTHER_COMMANDS, CPU_TIME \
                     FROM information_schema.USER_STATISTICS WHERE USER = ?",
                    (user,),
                )
                .await?;
            let (stmts, cpu) = us.unwrap_or_default();
            server.push((get("Questions"), get("Com_select"), stmts, cpu));
        }
        let (cpu_s, helper_cpu_s) = running.cpu();
        Ok(Snap {
            at_us: now_us(),
            seq: self.cluster.heartbeat_seq().await?,
            cpu_s,
            helper_cpu_s,
            server,
        })
    }

    /// The counters over an interval in which no measuring tool runs: what the replicas
    /// answer to others (the bench's own status reads included).
    pub async fn baseline(&self, for_: Duration) -> Result<Cost> {
        let none = Running::Pt(Vec::new());
        let s0 = self.snap(&none, "nobody").await?;
        tokio::time::sleep(for_).await;
        let s1 = self.snap(&none, "nobody").await?;
        Ok(s0.to(&s1, "no tool"))
    }

    async fn stall_schedule(
        &self,
        ph: &mut Phase,
        durable: bool,
        lengths: &[u64],
        repeats: usize,
    ) -> Result<()> {
        for _ in 0..repeats {
            for replica in 0..self.cluster.replicas.len() {
                for &ms in lengths {
                    let issued_us = now_us();
                    let stall = self
                        .cluster
                        .stall(replica, Duration::from_millis(ms))
                        .await?;
                    ph.stalls.push(StallRun {
                        issued_us,
                        durable,
                        replica,
                        ms,
                        stall,
                    });
                    tokio::time::sleep(self.plan.settle).await;
                }
            }
        }
        Ok(())
    }

    /// Runs `tool` through the schedule. `since_us`: when the previous tool stopped.
    pub async fn run(&self, tool: Tool, since_us: i64) -> Result<Phase> {
        let p = &self.plan;
        let user = tool.user();
        let mut ph = Phase {
            tool,
            sections: Vec::new(),
            stalls: Vec::new(),
            costs: Vec::new(),
            readings: Vec::new(),
        };
        let section = |ph: &mut Phase, kind, durable, from_us, to_us| {
            ph.sections.push(Section {
                kind,
                durable,
                from_us,
                to_us,
            })
        };
        eprintln!("bench: {}: start", tool.name());
        let mut running = self.start_tool(tool, tool.name())?;
        let spawned = now_us();
        tokio::time::sleep(p.start).await;
        self.wait_live(tool, &running, spawned)
            .await
            .with_context(|| self.log_tail(tool.name()))?;
        let s0 = self.snap(&running, user).await?;
        section(&mut ph, Kind::Start, false, since_us, s0.at_us);

        eprintln!("bench: {}: steady state", tool.name());
        tokio::time::sleep(p.steady).await;
        let s1 = self.snap(&running, user).await?;
        section(&mut ph, Kind::Steady, false, s0.at_us, s1.at_us);
        ph.costs.push(s0.to(&s1, "steady"));

        eprintln!("bench: {}: stalls", tool.name());
        self.stall_schedule(&mut ph, false, &p.stalls_ms, p.repeats)
            .await?;
        let s2 = self.snap(&running, user).await?;
        section(&mut ph, Kind::Stalls, false, s1.at_us, s2.at_us);
        ph.costs.push(s1.to(&s2, "stalls"));

        eprintln!("bench: {}: durable", tool.name());
        set_durable(self.cluster, true).await?;
        let s3 = self.snap(&running, user).await?;
        tokio::time::sleep(p.durable_steady).await;
        let s4 = self.snap(&running, user).await?;
        section(&mut ph, Kind::Steady, true, s3.at_us, s4.at_us);
        ph.costs.push(s3.to(&s4, "durable steady"));
        self.stall_schedule(&mut ph, true, &p.durable_stalls_ms, 1)
            .await?;
        set_durable(self.cluster, false).await?;
        let s5 = self.snap(&running, user).await?;
        section(&mut ph, Kind::Stalls, true, s4.at_us, s5.at_us);

        if let Running::Reader(g) = &mut running {
            eprintln!("bench: {}: restart", tool.name());
            let stopped = now_us();
            // SIGTERM: the reader finishes and commits its offsets, as under systemd.
            g.signal(libc::SIGTERM);
            let _ = g.wait();
            tokio::time::sleep(p.restart_gap).await;
            let name = format!("{}-restarted", tool.name());
            running = self.start_tool(tool, &name)?;
            let spawned = now_us();
            tokio::time::sleep(p.start).await;
            self.wait_live(tool, &running, spawned)
                .await
                .with_context(|| self.log_tail(&name))?;
            section(&mut ph, Kind::Restart, false, stopped, now_us());
        }
        self.finish(tool, running, &mut ph).await?;
        Ok(ph)
    }

    fn log_tail(&self, name: &str) -> String {
        let log = std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "{name} log: {}",
            lines[lines.len().saturating_sub(5)..].join("\n")
        )
    }

    /// Stops the tool once it has reported everything the phase wrote.
    async fn finish(&self, tool: Tool, running: Running, ph: &mut Phase) -> Result<()> {
        match running {
            Running::Reader(mut g) => {
                let last = self.cluster.heartbeat_seq().await?;
                let n = self.cluster.replicas.len();
                millilag_harness::wait_for(
                    "the phase's last heartbeat measured",
                    Duration::from_secs(60),
                    || async {
                        let got = self
                            .records
                            .lock()
                            .unwrap()
                            .iter()
                            .filter(|r| r.reader_id == tool.user() && r.seq == last)
                            .count();
                        (got >= n).then_some(())
                    },
                )
                .await?;
                g.signal(libc::SIGTERM);
                let _ = g.wait();
            }
            Running::Pt(ms) => {
                for (replica, mut m) in ms.into_iter().enumerate() {
                    m.kill();
                    let lines = m.lines.lock().unwrap();
                    ph.readings.extend(lines.iter().filter_map(|(at, l)| {
                        Some(Reading {
                            replica,
                            at_us: *at,
                            lag_s: procs::parse_pt_line(l)?,
                        })
                    }));
                }
            }
        }
        Ok(())
    }
}
