//! The report's cost and bookkeeping sections: what each tool costs the replicas and its host
//! (server counters, userstat, /proc), the writer's own figures, and what the truth covered.

use crate::markdown::{ms, Out};
use crate::phases::Cost;
use crate::report::{self, Analysis, Input};
use millilag_core::events::MeasureStatus;
use std::fmt::Write as _;

pub fn cost(o: &mut Out, inp: &Input, a: &Analysis) {
    let _ = writeln!(o.md, "## Cost\n");
    let base = inp.baseline;
    let per_s = |v: i64, c: &Cost| v as f64 / c.secs.max(1e-9);
    let _ = writeln!(
        o.md,
        "| tool | window | heartbeats/s | Questions per heartbeat per replica (replica 1, 2) | Com_select per heartbeat | tool user's statements per heartbeat (userstat) | self-reported queries per record | replica server CPU for the tool (userstat) | client CPU | client CPU per measurement | pty (script) CPU |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for ph in inp.phases {
        for c in &ph.costs {
            let hb = c.heartbeats.max(1) as f64;
            // Minus what the replicas answer with no tool running (the bench's own reads).
            let net = |i: usize, f: fn(&(i64, i64, i64, f64)) -> i64| {
                let b = per_s(f(&base.server[i]), base) * c.secs;
                (f(&c.server[i]) as f64 - b) / hb
            };
            let pair =
                |f: fn(&(i64, i64, i64, f64)) -> i64| format!("{:.2}, {:.2}", net(0, f), net(1, f));
            let (from, to) = (c.from, c.to);
            let recs: Vec<_> = a
                .mrows
                .iter()
                .filter(|m| m.tool == ph.tool && m.r.status == MeasureStatus::Ok)
                .filter(|m| m.r.committed_at_us >= from && m.r.committed_at_us < to)
                .collect();
            let n = if ph.tool.is_pt() {
                ph.readings
                    .iter()
                    .filter(|r| r.at_us >= from && r.at_us < to)
                    .count()
            } else {
                recs.len()
            };
            let selfq = if ph.tool.is_pt() {
                "-".into()
            } else {
                format!(
                    "{:.2}",
                    recs.iter().map(|m| m.r.queries as f64).sum::<f64>() / recs.len().max(1) as f64
                )
            };
            let server_cpu: f64 = c.server.iter().map(|s| s.3).sum();
            let q = pair(|s| s.0);
            if c.label == "steady" {
                o.kv(
                    &format!("{}.steady.questions_per_hb", ph.tool.name()),
                    format!("\"{q}\""),
                );
                o.kv(
                    &format!("{}.steady.cpu_us_per_measurement", ph.tool.name()),
                    format!("{:.0}", c.cpu_s * 1e6 / n.max(1) as f64),
                );
            }
            let _ = writeln!(
                o.md,
                "| {} | {} | {:.1} | {q} | {} | {} | {selfq} | {:.1} ms/s | {:.1} ms/s | {} | {} |",
                ph.tool.name(),
                c.label,
                hb / c.secs,
                pair(|s| s.1),
                pair(|s| s.2),
                server_cpu * 1e3 / c.secs,
                c.cpu_s * 1e3 / c.secs,
                // /proc counts in 10 ms ticks: a monitor reading once a second may not reach one.
                if c.cpu_s > 0.0 {
                    format!("{:.0} us", c.cpu_s * 1e6 / n.max(1) as f64)
                } else {
                    "under /proc's 10 ms tick".into()
                },
                if ph.tool.is_pt() {
                    format!("{:.1} ms/s", c.helper_cpu_s * 1e3 / c.secs)
                } else {
                    "-".into()
                }
            );
        }
    }
    let _ = writeln!(
        o.md,
        "\nQuestions and Com_select: each replica's `SHOW GLOBAL STATUS` counters over the window, minus what the \
         replica answered per second with no tool running ({:.1} and {:.1} Questions/s on replicas 1 and 2: the \
         bench's own counter reads), divided by the heartbeats millilag's writer committed. pt-heartbeat's rows: \
         its one monitor per replica reads every --interval, not per heartbeat. Client CPU: /proc/<pid>/stat user + \
         system of the reader, or of the two perl processes (not script(1), shown apart). Per measurement: per ok \
         record (both replicas) or per --monitor line.\n",
        per_s(base.server[0].0, base),
        per_s(base.server.get(1).map_or(0, |s| s.0), base),
    );
}

pub fn bookkeeping(o: &mut Out, inp: &Input, a: &Analysis) {
    let _ = writeln!(o.md, "## Writer and truth\n");
    let mut rtts: Vec<i64> = inp.heartbeats.iter().map(|h| h.commit_rtt_us).collect();
    rtts.sort();
    let (first, last) = (inp.heartbeats.first(), inp.heartbeats.last());
    let rate = match (first, last) {
        (Some(f), Some(l)) if l.committed_at_us > f.committed_at_us => {
            (l.seq - f.seq) as f64 * 1e6 / (l.committed_at_us - f.committed_at_us) as f64
        }
        _ => 0.0,
    };
    let _ = writeln!(
        o.md,
        "- Writer (10 ms): {rate:.1} heartbeats/s; commit round trip p50 {}, p99 {}, max {}.",
        ms(report::percentile(&rtts, 0.5)),
        ms(report::percentile(&rtts, 0.99)),
        ms(rtts.last().copied().unwrap_or(0))
    );
    for (i, (hb, un)) in inp
        .truth
        .heartbeats
        .iter()
        .zip(&inp.truth.unmatched)
        .enumerate()
    {
        let non_positive = hb.values().filter(|(p, r)| r - p <= 0).count();
        let _ = writeln!(
            o.md,
            "- Replica {}: {} millilag heartbeats with both trigger times ({} with a true delay <= 0); primary \
             changes (once every trigger was in place) with no replica time: {}; replica times with no primary change: {}.",
            i + 1,
            hb.len(),
            non_positive,
            un.0,
            un.1
        );
        o.kv(
            &format!("truth.replica{}.non_positive", i + 1),
            non_positive,
        );
    }
    let no_truth = a
        .mrows
        .iter()
        .filter(|m| m.r.status == MeasureStatus::Ok && m.truth.is_none())
        .count();
    let _ = writeln!(
        o.md,
        "- millilag ok records without a truth: {no_truth}. Every record with one is in the tables (none is left \
         out for its truth's value)."
    );
}
