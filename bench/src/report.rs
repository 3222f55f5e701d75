//! Judging every tool against the truth: each millilag record and each pt-heartbeat reading is
//! put in the window of the schedule it belongs to (start, steady state, a stall, ...), given
//! its true value, and summed up; the CSVs for the plot are written here, the text in
//! markdown.rs.

use crate::phases::{Cost, Kind, Phase, Plan, Reading, StallRun, Tool};
use crate::truth::Truth;
use anyhow::Result;
use millilag_core::events::{HeartbeatSet, MeasureStatus, ReplicaDelay};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub struct Input<'a> {
    pub phases: &'a [Phase],
    pub records: &'a [ReplicaDelay],
    pub heartbeats: &'a [HeartbeatSet],
    pub truth: &'a Truth,
    pub addrs: Vec<String>,
    pub baseline: &'a Cost,
    /// Arrival - print of lines through the pty (see procs::calibrate_pty), microseconds.
    pub pty: &'a [i64],
    pub plan: &'a Plan,
    pub load: String,
    pub secs: f64,
}

/// Where in the schedule a measurement falls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Win {
    Start,
    Restart,
    Steady,
    /// The stalled replica, from STOP SLAVE SQL_THREAD until it has caught up.
    Stall,
    /// The stall schedule outside [`Win::Stall`]: the replica not stalled, and the seconds
    /// between stalls.
    BetweenStalls,
    DurableSteady,
    DurableStall,
    DurableBetween,
}

impl Win {
    pub fn name(self) -> &'static str {
        match self {
            Win::Start => "start",
            Win::Restart => "restart",
            Win::Steady => "steady state",
            Win::Stall => "during stalls",
            Win::BetweenStalls => "between stalls / other replica",
            Win::DurableSteady => "durable: steady state",
            Win::DurableStall => "durable: during stalls",
            Win::DurableBetween => "durable: between stalls",
        }
    }
}

/// A stall's extent on the replica's time line, from the truth: it ends when the replica has
/// applied the first change made after START SLAVE SQL_THREAD with a true lag under
/// [`CAUGHT_UP_US`]. Heartbeats belong to it by when the replica applied them (a measurement
/// samples the lag just before that moment), readings by when they arrived.
#[derive(Clone, Copy, Debug)]
pub struct StallSpan {
    pub run: StallRun,
    pub from_us: i64,
    pub end_apply_us: i64,
}

const CAUGHT_UP_US: i64 = 5_000;

/// A millilag record with its truth.
pub struct Mrow<'a> {
    pub tool: Tool,
    pub win: Win,
    pub stall_ms: Option<u64>,
    pub replica: usize,
    pub r: &'a ReplicaDelay,
    /// Replica change - primary change of this heartbeat; None if a trigger missed it.
    pub truth: Option<i64>,
    /// (primary change, replica change).
    pub change: Option<(i64, i64)>,
}

/// A pt-heartbeat reading with the true lag when it arrived.
pub struct Prow {
    pub tool: Tool,
    pub win: Win,
    pub stall_ms: Option<u64>,
    pub reading: Reading,
    pub truth: i64,
    /// What a reading exact at arrival would print after pt's skew, clamp and %.2f.
    pub perfect: i64,
}

pub struct Peak {
    pub tool: Tool,
    pub span: StallSpan,
    pub true_peak: i64,
    /// millilag: the largest true delay of its own heartbeats in the stall.
    pub own_true_peak: Option<i64>,
    pub reported: Option<i64>,
}

pub struct Analysis<'a> {
    pub mrows: Vec<Mrow<'a>>,
    pub prows: Vec<Prow>,
    pub peaks: Vec<Peak>,
    pub spans: BTreeMap<Tool, Vec<StallSpan>>,
}

fn section_win(ph: &Phase, t: i64) -> Option<Win> {
    let s = ph.sections.iter().find(|s| s.from_us <= t && t < s.to_us)?;
    Some(match (s.kind, s.durable) {
        (Kind::Start, _) => Win::Start,
        (Kind::Restart, _) => Win::Restart,
        (Kind::Steady, false) => Win::Steady,
        (Kind::Steady, true) => Win::DurableSteady,
        (Kind::Stalls, false) => Win::BetweenStalls,
        (Kind::Stalls, true) => Win::DurableBetween,
    })
}

/// The window of a measurement on `replica`: a stall if `at` (when the replica applied the
/// heartbeat, or when a reading arrived) is within one on that replica, else the section of
/// the schedule that `section_at` (commit time, or arrival) falls in.
fn classify(
    ph: &Phase,
    spans: &[StallSpan],
    replica: usize,
    at: i64,
    section_at: i64,
) -> Option<(Win, Option<u64>)> {
    for s in spans.iter().filter(|s| s.run.replica == replica) {
        if s.from_us <= at && at <= s.end_apply_us {
            let w = if s.run.durable {
                Win::DurableStall
            } else {
                Win::Stall
            };
            return Some((w, Some(s.run.ms)));
        }
    }
    section_win(ph, section_at).map(|w| (w, None))
}

/// pt-heartbeat's skew for a tool, microseconds.
pub fn skew_us(tool: Tool) -> i64 {
    match tool.pt_settings() {
        Some((_, skew)) => (skew.parse::<f64>().unwrap_or(0.0) * 1e6) as i64,
        None => 500_000,
    }
}

/// pt-heartbeat's arithmetic on an exact lag: minus skew, clamped at 0, printed with 2 decimals.
fn pt_format(lag_us: i64, skew: i64) -> i64 {
    let s = ((lag_us - skew).max(0)) as f64 / 1e6;
    ((s * 100.0).round() * 10_000.0) as i64
}

pub fn analyse<'a>(inp: &Input<'a>) -> Analysis<'a> {
    let settle = inp.plan.settle.as_micros() as i64;
    let mut spans: BTreeMap<Tool, Vec<StallSpan>> = BTreeMap::new();
    for ph in inp.phases {
        let v = ph
            .stalls
            .iter()
            .map(|run| {
                let from_us = run.issued_us;
                let end_apply_us = inp.truth.lag[run.replica]
                    .caught_up_after(run.stall.started_at_us, CAUGHT_UP_US)
                    .map_or(run.stall.started_at_us + settle, |(_, applied)| applied);
                StallSpan {
                    run: *run,
                    from_us,
                    end_apply_us,
                }
            })
            .collect();
        spans.insert(ph.tool, v);
    }
    let mut mrows = Vec::new();
    for ph in inp.phases.iter().filter(|p| !p.tool.is_pt()) {
        for r in inp.records.iter().filter(|r| r.reader_id == ph.tool.user()) {
            let Some(replica) = inp.addrs.iter().position(|a| *a == r.replica) else {
                continue;
            };
            let change = inp.truth.heartbeats[replica].get(&r.seq).copied();
            let applied = change.map_or(r.committed_at_us, |(_, a)| a);
            let Some((win, stall_ms)) =
                classify(ph, &spans[&ph.tool], replica, applied, r.committed_at_us)
            else {
                continue;
            };
            mrows.push(Mrow {
                tool: ph.tool,
                win,
                stall_ms,
                replica,
                r,
                truth: change.map(|(p, a)| a - p),
                change,
            });
        }
    }
    let mut prows = Vec::new();
    for ph in inp.phases.iter().filter(|p| p.tool.is_pt()) {
        let skew = skew_us(ph.tool);
        for replica in 0..inp.addrs.len() {
            let rs: Vec<&Reading> = ph
                .readings
                .iter()
                .filter(|r| r.replica == replica)
                .collect();
            let times: Vec<i64> = rs.iter().map(|r| r.at_us).collect();
            let lags = inp.truth.lag[replica].at(&times);
            for (reading, truth) in rs.into_iter().zip(lags) {
                let Some((win, stall_ms)) =
                    classify(ph, &spans[&ph.tool], replica, reading.at_us, reading.at_us)
                else {
                    continue;
                };
                prows.push(Prow {
                    tool: ph.tool,
                    win,
                    stall_ms,
                    reading: *reading,
                    truth,
                    perfect: pt_format(truth, skew),
                });
            }
        }
    }
    let mut peaks = Vec::new();
    for ph in inp.phases {
        for s in &spans[&ph.tool] {
            let replica = s.run.replica;
            let true_peak = inp.truth.lag[replica].peak(s.from_us, s.end_apply_us);
            let (own_true_peak, reported) = if ph.tool.is_pt() {
                // A reading of the peak leaves perl at the end of the stall and crosses the
                // pty after it: allow 50 ms.
                let r = ph
                    .readings
                    .iter()
                    .filter(|r| r.replica == replica)
                    .filter(|r| r.at_us >= s.from_us && r.at_us <= s.end_apply_us + 50_000)
                    .map(|r| (r.lag_s * 1e6).round() as i64)
                    .max();
                (None, r)
            } else {
                // Its heartbeats applied in the stall: each samples the lag just before then.
                let in_stall = || {
                    mrows.iter().filter(|m| {
                        m.tool == ph.tool
                            && m.replica == replica
                            && m.change
                                .is_some_and(|(_, a)| a >= s.from_us && a <= s.end_apply_us)
                    })
                };
                (
                    in_stall().filter_map(|m| m.truth).max(),
                    in_stall()
                        .filter(|m| m.r.status == MeasureStatus::Ok)
                        .map(|m| m.r.delay_us)
                        .max(),
                )
            };
            peaks.push(Peak {
                tool: ph.tool,
                span: *s,
                true_peak,
                own_true_peak,
                reported,
            });
        }
    }
    Analysis {
        mrows,
        prows,
        peaks,
        spans,
    }
}

pub fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// |error| p50, p99, max and the signed median, of unsorted signed errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Errs {
    pub n: usize,
    pub p50: i64,
    pub p99: i64,
    pub max: i64,
    pub signed_p50: i64,
}

pub fn errs(signed: impl IntoIterator<Item = i64>) -> Errs {
    let mut s: Vec<i64> = signed.into_iter().collect();
    s.sort();
    let mut a: Vec<i64> = s.iter().map(|e| e.abs()).collect();
    a.sort();
    Errs {
        n: a.len(),
        p50: percentile(&a, 0.5),
        p99: percentile(&a, 0.99),
        max: a.last().copied().unwrap_or(0),
        signed_p50: percentile(&s, 0.5),
    }
}

/// An exact measurement: ok, not only an upper bound, with a truth.
pub fn exact(m: &Mrow) -> Option<i64> {
    (m.r.status == MeasureStatus::Ok && !m.r.upper_bound)
        .then_some(m.truth)
        .flatten()
        .map(|t| m.r.delay_us - t)
}

pub fn write(inp: &Input, out: &Path) -> Result<String> {
    let a = analyse(inp);
    let mut csv = String::from(
        "tool,window,replica,seq,committed_at_us,primary_change_us,replica_change_us,true_us,measured_us,uncertainty_us,upper_bound,status\n",
    );
    for m in &a.mrows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            m.tool.name(),
            m.win.name(),
            m.replica + 1,
            m.r.seq,
            m.r.committed_at_us,
            m.change.map_or(String::new(), |c| c.0.to_string()),
            m.change.map_or(String::new(), |c| c.1.to_string()),
            m.truth.map_or(String::new(), |t| t.to_string()),
            m.r.delay_us,
            m.r.uncertainty_us,
            m.r.upper_bound,
            m.r.status.as_str()
        );
    }
    std::fs::write(out.join("measurements.csv"), csv)?;
    let mut csv = String::from("tool,window,replica,arrival_us,reading_s,true_lag_us\n");
    for p in &a.prows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            p.tool.name(),
            p.win.name(),
            p.reading.replica + 1,
            p.reading.at_us,
            p.reading.lag_s,
            p.truth
        );
    }
    std::fs::write(out.join("pt_samples.csv"), csv)?;
    let mut csv = String::from(
        "tool,durable,replica,stall_ms,true_peak_us,own_heartbeats_true_peak_us,reported_peak_us\n",
    );
    for p in &a.peaks {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            p.tool.name(),
            p.span.run.durable,
            p.span.run.replica + 1,
            p.span.run.ms,
            p.true_peak,
            p.own_true_peak.map_or(String::new(), |v| v.to_string()),
            p.reported.map_or(String::new(), |v| v.to_string()),
        );
    }
    std::fs::write(out.join("stalls.csv"), csv)?;
    std::fs::write(out.join("lag_trace.csv"), trace(inp, &a))?;
    let (md, summary) = crate::markdown::render(inp, &a);
    std::fs::write(out.join("accuracy.md"), &md)?;
    std::fs::write(out.join("summary.csv"), summary)?;
    Ok(md)
}

/// For the plot's time line: one relaxed 200 ms stall (or the nearest length) on replica 1
/// per tool, the true lag every millisecond from 50 ms before the STOP was sent to 300 ms after
/// the START, and what the tool reported (millilag at each heartbeat's apply time, pt-heartbeat
/// at each line's arrival).
fn trace(inp: &Input, a: &Analysis) -> String {
    let mut csv = String::from("tool,series,t_ms,lag_ms\n");
    for ph in inp.phases {
        let Some(s) = a.spans[&ph.tool]
            .iter()
            .filter(|s| !s.run.durable && s.run.replica == 0)
            .min_by_key(|s| s.run.ms.abs_diff(200))
        else {
            continue;
        };
        let t0 = s.run.issued_us;
        let t1 = s.run.stall.started_at_us + 300_000;
        let times: Vec<i64> = (t0 - 50_000..t1).step_by(1000).collect();
        let lag = &inp.truth.lag[0];
        for (t, l) in times.iter().zip(lag.at(&times)) {
            let _ = writeln!(
                csv,
                "{},true,{:.3},{:.3}",
                ph.tool.name(),
                (t - t0) as f64 / 1e3,
                l as f64 / 1e3
            );
        }
        let rel = |t: i64| (t - t0) as f64 / 1e3;
        if ph.tool.is_pt() {
            for r in ph.readings.iter().filter(|r| r.replica == 0) {
                if r.at_us >= t0 - 50_000 && r.at_us < t1 {
                    let _ = writeln!(
                        csv,
                        "{},reported,{:.3},{:.3}",
                        ph.tool.name(),
                        rel(r.at_us),
                        r.lag_s * 1e3
                    );
                }
            }
        } else {
            for m in a
                .mrows
                .iter()
                .filter(|m| m.tool == ph.tool && m.replica == 0 && m.r.status == MeasureStatus::Ok)
            {
                let Some((_, applied)) = inp.truth.heartbeats[0].get(&m.r.seq) else {
                    continue;
                };
                if *applied >= t0 - 50_000 && *applied < t1 {
                    let _ = writeln!(
                        csv,
                        "{},reported,{:.3},{:.3}",
                        ph.tool.name(),
                        rel(*applied),
                        m.r.delay_us as f64 / 1e3
                    );
                }
            }
        }
    }
    csv
}
