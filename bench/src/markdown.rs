//! The report's text (accuracy.md) and its headline figures (summary.csv, one `key,value` a
//! line, so runs can be compared and ranged).

use crate::phases::Tool;
use crate::report::{self, errs, exact, Analysis, Errs, Input, Win};
use millilag_core::events::MeasureStatus;
use std::collections::BTreeMap;
use std::fmt::Write as _;

const WINS: [Win; 8] = [
    Win::Start,
    Win::Restart,
    Win::Steady,
    Win::Stall,
    Win::BetweenStalls,
    Win::DurableSteady,
    Win::DurableStall,
    Win::DurableBetween,
];

pub(crate) fn ms(us: i64) -> String {
    format!("{:.2} ms", us as f64 / 1e3)
}

fn ratio(a: i64, b: i64) -> String {
    if b <= 0 {
        "-".into()
    } else {
        format!("{:.1}x", a as f64 / b as f64)
    }
}

pub(crate) struct Out {
    pub(crate) md: String,
    pub(crate) summary: String,
}

impl Out {
    pub(crate) fn kv(&mut self, k: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.summary, "{k},{v}");
    }
    fn errs(&mut self, k: &str, e: &Errs) {
        self.kv(&format!("{k}.n"), e.n);
        self.kv(&format!("{k}.p50_us"), e.p50);
        self.kv(&format!("{k}.p99_us"), e.p99);
        self.kv(&format!("{k}.max_us"), e.max);
        self.kv(&format!("{k}.signed_p50_us"), e.signed_p50);
    }
}

fn key(tool: Tool, win: Win) -> String {
    format!(
        "{}.{}",
        tool.name(),
        win.name().replace([' ', ':', '/'], "_")
    )
}

pub fn render(inp: &Input, a: &Analysis) -> (String, String) {
    let mut o = Out {
        md: String::new(),
        summary: String::new(),
    };
    let tools: Vec<Tool> = inp.phases.iter().map(|p| p.tool).collect();
    let p = inp.plan;
    o.kv("load", format!("\"{}\"", inp.load));
    o.kv("secs", format!("{:.0}", inp.secs));
    let _ = writeln!(o.md, "# millilag accuracy benchmark\n");
    let _ = writeln!(
        o.md,
        "MariaDB 10.11 primary + 2 replicas (GTID, row binlog); millilag's writer at 10 ms and `pt-heartbeat --update` \
         (0.01 s; 1 s during the pt-default phase) throughout; one phase per tool: {}. Each phase: start ({} s), steady \
         state ({} s), stalls of {:?} ms x{} on each replica in turn ({} ms apart), durable servers ({} s steady, stalls \
         of {:?} ms on each replica), and for millilag a reader restart. Run took {:.0} s; load average {}.\n",
        tools
            .iter()
            .map(|t| format!("{} (`{}`)", t.label(), t.name()))
            .collect::<Vec<_>>()
            .join(", "),
        p.start.as_secs_f64(),
        p.steady.as_secs_f64(),
        p.stalls_ms,
        p.repeats,
        p.settle.as_millis(),
        p.durable_steady.as_secs_f64(),
        p.durable_stalls_ms,
        inp.secs,
        inp.load
    );

    // ---- per measurement ----
    let mut table: BTreeMap<(Tool, Win), Errs> = BTreeMap::new();
    let _ = writeln!(
        o.md,
        "## millilag: every record against its heartbeat's true delay\n"
    );
    let _ = writeln!(
        o.md,
        "| tool | window | records | exact | upper bound (bound held) | not ok | live-lag samples | no truth | abs error p50 | p99 | max | signed median | errors > 1 ms within the record's uncertainty |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for &tool in tools.iter().filter(|t| !t.is_pt()) {
        for win in WINS {
            let rows: Vec<&report::Mrow> = a
                .mrows
                .iter()
                .filter(|m| m.tool == tool && m.win == win)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let e = errs(rows.iter().filter_map(|m| exact(m)));
            let ub: Vec<_> = rows
                .iter()
                .filter(|m| m.r.status == MeasureStatus::Ok && m.r.upper_bound)
                .collect();
            // An upper bound holds if the truth is not above it (100 us: the triggers' own
            // distance from commit and visibility).
            let held = ub
                .iter()
                .filter(|m| m.truth.is_none_or(|t| m.r.delay_us >= t - 100))
                .count();
            let pending = rows
                .iter()
                .filter(|m| m.r.status == MeasureStatus::Pending)
                .count();
            let not_ok = rows
                .iter()
                .filter(|m| !matches!(m.r.status, MeasureStatus::Ok | MeasureStatus::Pending))
                .count();
            let no_truth = rows
                .iter()
                .filter(|m| m.r.status == MeasureStatus::Ok && m.truth.is_none())
                .count();
            let over: Vec<_> = rows
                .iter()
                .filter_map(|m| exact(m).map(|e| (e, m.r.uncertainty_us)))
                .filter(|(e, _)| e.abs() > 1000)
                .collect();
            let covered = over.iter().filter(|(e, u)| e.abs() <= *u).count();
            let k = key(tool, win);
            o.errs(&k, &e);
            o.kv(&format!("{k}.upper_bound"), ub.len());
            o.kv(&format!("{k}.not_ok"), not_ok);
            let _ = writeln!(
                o.md,
                "| {} | {} | {} | {} | {} ({held}) | {not_ok} | {pending} | {no_truth} | {} | {} | {} | {} | {covered} of {} |",
                tool.name(),
                win.name(),
                rows.len() - pending,
                e.n,
                ub.len(),
                ms(e.p50),
                ms(e.p99),
                ms(e.max),
                ms(e.signed_p50),
                over.len()
            );
            table.insert((tool, win), e);
        }
    }
    let _ = writeln!(
        o.md,
        "\nWindows are by the heartbeat's commit time; \"during stalls\" by when the stalled replica applied it (from \
         the STOP being sent until it caught up). \"exact\": ok and not an upper bound; errors are over those. \
         \"upper bound\": the first look already saw the heartbeat, so only \"at most this\" is known (held: not below \
         the truth). \"not ok\": timeout, replication stopped, unreachable, skipped. Live-lag samples (status pending) \
         are not measurements.\n"
    );

    split(&mut o, a, &tools);

    let _ = writeln!(
        o.md,
        "## pt-heartbeat: every --monitor line against the true lag when it arrived\n"
    );
    let _ = writeln!(
        o.md,
        "| tool | window | readings | abs error p50 | p99 | max | signed median | pt's arithmetic alone: abs error p50 | p99 |\n|---|---|---|---|---|---|---|---|---|"
    );
    for &tool in tools.iter().filter(|t| t.is_pt()) {
        for win in WINS {
            let rows: Vec<&report::Prow> = a
                .prows
                .iter()
                .filter(|p| p.tool == tool && p.win == win)
                .collect();
            if rows.is_empty() {
                continue;
            }
            let e = errs(
                rows.iter()
                    .map(|p| (p.reading.lag_s * 1e6).round() as i64 - p.truth),
            );
            let f = errs(rows.iter().map(|p| p.perfect - p.truth));
            o.errs(&key(tool, win), &e);
            let _ = writeln!(
                o.md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                tool.name(),
                win.name(),
                e.n,
                ms(e.p50),
                ms(e.p99),
                ms(e.max),
                ms(e.signed_p50),
                ms(f.p50),
                ms(f.p99)
            );
            table.insert((tool, win), e);
        }
    }
    let mut pty = inp.pty.to_vec();
    pty.sort();
    o.kv("pty.p50_us", report::percentile(&pty, 0.5));
    o.kv("pty.p99_us", report::percentile(&pty, 0.99));
    let _ = writeln!(
        o.md,
        "\nA reading is what pt-heartbeat computed (`now - ts - skew`, clamped at 0, `%.2f` s) stamped when its line \
         reached the bench (perl -> pty -> script(1) -> pipe). \"pt's arithmetic alone\": the same skew, clamp and \
         rounding applied to the exact true lag at arrival, i.e. the error pt-heartbeat's output format forces even on \
         a perfect reading. Stamping at arrival instead of at perl's `now`: lines through the same path, timed by \
         perl itself (100 lines/s, {} lines): arrival - print p50 {}, p99 {}, max {}; in a stall the true lag grows \
         by that much before the line is stamped.\n",
        pty.len(),
        ms(report::percentile(&pty, 0.5)),
        ms(report::percentile(&pty, 0.99)),
        ms(pty.last().copied().unwrap_or(0)),
    );

    // ---- stall peaks ----
    let _ = writeln!(
        o.md,
        "## Stall peaks: each tool's reported peak against the true peak of the same stall\n"
    );
    let mut head = String::from("| stall | true peak (mean) |");
    let mut sep = String::from("|---|---|");
    for t in &tools {
        let _ = write!(head, " {} mean (worst abs error) |", t.name());
        sep.push_str("---|");
    }
    let _ = writeln!(o.md, "{head}\n{sep}");
    let mut lengths: Vec<(bool, u64)> = a
        .peaks
        .iter()
        .map(|p| (p.span.run.durable, p.span.run.ms))
        .collect();
    lengths.sort();
    lengths.dedup();
    for (durable, len) in lengths {
        let of = |t: Tool| {
            a.peaks.iter().filter(move |p| {
                p.tool == t && p.span.run.durable == durable && p.span.run.ms == len
            })
        };
        let truths: Vec<i64> = tools
            .iter()
            .flat_map(|t| of(*t).map(|p| p.true_peak))
            .collect();
        let mut row = format!(
            "| {len} ms{} | {} |",
            if durable { " (durable)" } else { "" },
            ms(truths.iter().sum::<i64>() / truths.len().max(1) as i64)
        );
        for &t in &tools {
            let v: Vec<_> = of(t).collect();
            let rep: Vec<i64> = v.iter().map(|p| p.reported.unwrap_or(0)).collect();
            let worst = v
                .iter()
                .map(|p| (p.reported.unwrap_or(0) - p.true_peak).abs())
                .max()
                .unwrap_or(0);
            let missed = v.iter().filter(|p| p.reported.unwrap_or(0) == 0).count();
            let _ = write!(
                row,
                " {} ({}){} |",
                ms(rep.iter().sum::<i64>() / rep.len().max(1) as i64),
                ms(worst),
                if missed > 0 {
                    format!(", {missed} of {} read 0", v.len())
                } else {
                    String::new()
                }
            );
        }
        let _ = writeln!(o.md, "{row}");
    }
    let _ = writeln!(
        o.md,
        "\n| tool | stalls | peak abs error p50 | max | signed median | own heartbeats' true peak below the true peak: p50 | max |\n|---|---|---|---|---|---|---|"
    );
    let mut peak_errs = BTreeMap::new();
    for &t in &tools {
        let v: Vec<_> = a.peaks.iter().filter(|p| p.tool == t).collect();
        let e = errs(v.iter().map(|p| p.reported.unwrap_or(0) - p.true_peak));
        let gap = errs(
            v.iter()
                .filter_map(|p| p.own_true_peak.map(|o| p.true_peak - o)),
        );
        o.errs(&format!("{}.peak", t.name()), &e);
        let gaps = if t.is_pt() {
            "- | -".to_string()
        } else {
            format!("{} | {}", ms(gap.p50), ms(gap.max))
        };
        let _ = writeln!(
            o.md,
            "| {} | {} | {} | {} | {} | {gaps} |",
            t.name(),
            e.n,
            ms(e.p50),
            ms(e.max),
            ms(e.signed_p50)
        );
        peak_errs.insert(t, e);
    }
    let _ = writeln!(
        o.md,
        "\nTrue peak: the largest true lag from the STOP until the replica caught up (a change made after the START \
         applied within {} ms). A tool that samples with heartbeats sees the peak of its own heartbeats: the last \
         columns say how far that lies below the true peak (the time from the first transaction after the STOP to \
         the tool's first heartbeat after it: up to one interval, whatever the reader does).\n",
        5
    );

    per_length(&mut o, a, &tools);

    // ---- goals ----
    let _ = writeln!(o.md, "## Against the goals (issue 11)\n");
    let g = |t: Tool, w: Win| table.get(&(t, w)).copied().unwrap_or_default();
    let gw = Tool::GtidWait;
    for (w, what) in [(Win::Steady, "steady state"), (Win::Stall, "during stalls")] {
        let e = g(gw, w);
        let verdict = if e.p99 <= 1000 {
            "met".to_string()
        } else {
            format!("missed by {}", ms(e.p99 - 1000))
        };
        let _ = writeln!(
            o.md,
            "- gtid-wait p99 abs error {what}: {} (goal <= 1 ms: {verdict})",
            ms(e.p99)
        );
    }
    for w in [Win::Steady, Win::Stall] {
        let (m, pt) = (g(gw, w), g(Tool::PtBest, w));
        let (r50, r99) = (ratio(pt.p50, m.p50), ratio(pt.p99, m.p99));
        o.kv(&format!("ratio.{}.p50", w.name().replace(' ', "_")), &r50);
        o.kv(&format!("ratio.{}.p99", w.name().replace(' ', "_")), &r99);
        let _ = writeln!(
            o.md,
            "- pt-best / gtid-wait, {}: p50 {} / {} = {r50}, p99 {} / {} = {r99} (goal >= 10x)",
            w.name(),
            ms(pt.p50),
            ms(m.p50),
            ms(pt.p99),
            ms(m.p99)
        );
    }
    if let (Some(m), Some(pt)) = (peak_errs.get(&gw), peak_errs.get(&Tool::PtBest)) {
        let (r50, rmax) = (ratio(pt.p50, m.p50), ratio(pt.max, m.max));
        o.kv("ratio.peak.p50", &r50);
        o.kv("ratio.peak.max", &rmax);
        let _ = writeln!(
            o.md,
            "- pt-best / gtid-wait, stall-peak abs error: p50 {r50}, worst {rmax} (goal >= 10x)\n"
        );
    }

    crate::costs::cost(&mut o, inp, a);
    crate::costs::bookkeeping(&mut o, inp, a);
    (o.md, o.summary)
}

/// Every measurement during stalls, by stall length: the per-heartbeat (or per-reading) error
/// as the backlog grows and drains.
fn per_length(o: &mut Out, a: &Analysis, tools: &[Tool]) {
    let _ = writeln!(
        o.md,
        "## During stalls, by length: abs error p50 / p99 / max of every measurement\n"
    );
    let mut head = String::from("| stall |");
    let mut sep = String::from("|---|");
    for t in tools {
        let _ = write!(head, " {} |", t.name());
        sep.push_str("---|");
    }
    let _ = writeln!(o.md, "{head}\n{sep}");
    let mut lengths: Vec<u64> = a.mrows.iter().filter_map(|m| m.stall_ms).collect();
    lengths.extend(a.prows.iter().filter_map(|p| p.stall_ms));
    lengths.sort();
    lengths.dedup();
    for len in lengths {
        let mut row = format!("| {len} ms |");
        for &t in tools {
            let e = if t.is_pt() {
                errs(
                    a.prows
                        .iter()
                        .filter(|p| p.tool == t && p.stall_ms == Some(len))
                        .map(|p| (p.reading.lag_s * 1e6).round() as i64 - p.truth),
                )
            } else {
                errs(
                    a.mrows
                        .iter()
                        .filter(|m| m.tool == t && m.stall_ms == Some(len))
                        .filter_map(exact),
                )
            };
            let _ = write!(
                row,
                " {} / {} / {} (n={}) |",
                ms(e.p50),
                ms(e.p99),
                ms(e.max),
                e.n
            );
        }
        let _ = writeln!(o.md, "{row}");
    }
    let _ = writeln!(
        o.md,
        "\nRelaxed and durable stalls together; millilag: exact records of the stalled replica, pt-heartbeat: lines \
         of the stalled replica's monitor.\n"
    );
}

/// millilag's error = (its visibility stamp - the replica's row change) - (its commit stamp -
/// the primary's row change): which server's side the error is on.
fn split(o: &mut Out, a: &Analysis, tools: &[Tool]) {
    let _ = writeln!(
        o.md,
        "Where millilag's error lies: error = (visibility stamp V - replica row change R) - (commit stamp C - \
         primary row change P), C and V being millilag's own stamps (not the judge, a diagnosis):\n"
    );
    let _ = writeln!(
        o.md,
        "| tool | window | primary: C - P p50 | p99 | replica: V - R p50 | p99 |\n|---|---|---|---|---|---|"
    );
    for &tool in tools.iter().filter(|t| !t.is_pt()) {
        for win in [
            Win::Steady,
            Win::Stall,
            Win::DurableSteady,
            Win::DurableStall,
        ] {
            let mut cp = Vec::new();
            let mut vr = Vec::new();
            for m in a.mrows.iter().filter(|m| m.tool == tool && m.win == win) {
                if let (Some(_), Some((p, r))) = (exact(m), m.change) {
                    cp.push(m.r.committed_at_us - p);
                    vr.push(m.r.committed_at_us + m.r.delay_us - r);
                }
            }
            if cp.is_empty() {
                continue;
            }
            cp.sort();
            vr.sort();
            let q = |v: &[i64], p: f64| ms(report::percentile(v, p));
            let k = key(tool, win);
            o.kv(
                &format!("{k}.commit_minus_change.p99_us"),
                report::percentile(&cp, 0.99),
            );
            o.kv(
                &format!("{k}.visible_minus_apply.p99_us"),
                report::percentile(&vr, 0.99),
            );
            let _ = writeln!(
                o.md,
                "| {} | {} | {} | {} | {} | {} |",
                tool.name(),
                win.name(),
                q(&cp, 0.5),
                q(&cp, 0.99),
                q(&vr, 0.5),
                q(&vr, 0.99)
            );
        }
    }
    let _ = writeln!(o.md);
}
