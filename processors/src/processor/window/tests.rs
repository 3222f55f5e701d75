//! The windows' rules with made-up records and times.

use super::*;
use millilag_core::events::MeasureStatus;
use std::time::Duration;

const S: i64 = 1_000_000;
const T0: i64 = 1_763_000_000 * S; // a whole 10 s boundary

fn view(replica: &str, seq: i64, t: i64, delay: i64, status: MeasureStatus) -> DelayView<'_> {
    DelayView {
        cluster: "main",
        replica,
        seq,
        committed_at_us: t,
        delay_us: delay,
        status,
        upper_bound: false,
        observed_at_us: t + delay,
    }
}

fn ok(seq: i64, t: i64, delay: i64) -> DelayView<'static> {
    view("r1", seq, t, delay, MeasureStatus::Ok)
}

fn windows(lengths_ms: &[u64], lateness_ms: u64) -> Windows {
    Windows::new(
        lengths_ms
            .iter()
            .map(|ms| Spec::new(Duration::from_millis(*ms)))
            .collect(),
        Duration::from_millis(lateness_ms),
    )
}

#[test]
fn one_second_of_heartbeats_gives_exact_quantiles() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    // 100 heartbeats 10 ms apart, delays 1..=100 ms in shuffled order.
    for i in 0..100i64 {
        let delay = ((i * 37) % 100 + 1) * 1000;
        a.apply(&ok(i + 1, T0 + i * 10_000, delay), 0, i, &mut out);
    }
    assert!(out.is_empty(), "nothing closes before the watermark passes");
    a.apply(&ok(101, T0 + S, 500), 0, 100, &mut out);
    assert_eq!(out.len(), 1);
    let w = &out[0].window;
    assert_eq!((w.window_start_us, w.window_us), (T0, S));
    assert_eq!((w.count, w.missing, w.duplicates), (100, 0, 0));
    assert_eq!(
        (w.min_us, w.p50_us, w.p90_us, w.p99_us, w.max_us),
        (
            Some(1000),
            Some(50_000),
            Some(90_000),
            Some(99_000),
            Some(100_000)
        )
    );
    assert_eq!(out[0].hold.iter().collect::<Vec<_>>(), vec![(0, 0)]);
    assert_eq!(&*out[0].label, "1s");
}

#[test]
fn statuses_gaps_and_duplicates_are_counted() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.apply(&ok(1, T0, 100), 0, 0, &mut out);
    a.apply(&ok(2, T0 + 10_000, 300), 0, 1, &mut out);
    // seq 3 and 4 never arrive; 5 times out; 6 is an upper bound (a reader that looked
    // late: not the replica's delay); 2 again from a second reader group.
    a.apply(
        &view("r1", 5, T0 + 40_000, 30 * S, MeasureStatus::Timeout),
        0,
        2,
        &mut out,
    );
    let mut ub = ok(6, T0 + 50_000, 900_000);
    ub.upper_bound = true;
    a.apply(&ub, 0, 3, &mut out);
    let dup = a.apply(&ok(2, T0 + 10_000, 350), 0, 4, &mut out);
    assert_eq!(dup.duplicate, 1);
    a.apply(
        &view("r1", 7, T0 + 60_000, 0, MeasureStatus::ReplicaUnreachable),
        0,
        5,
        &mut out,
    );
    a.close_all(&mut out);
    let w = &out[0].window;
    assert_eq!(w.count, 3, "ok records: 1, 2, 6");
    assert_eq!((w.timeouts, w.unreachable), (1, 1));
    assert_eq!(w.missing, 2 + 2, "two non-ok + seqs 3 and 4");
    assert_eq!((w.duplicates, w.upper_bounds), (1, 1));
    assert_eq!(
        (w.min_us, w.max_us, w.p50_us),
        (Some(100), Some(300), Some(100)),
        "quantiles from the exact delays only"
    );
    assert_eq!(out[0].last_seq, Some(7));
}

#[test]
fn a_window_of_upper_bounds_only_reports_them() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    for (seq, delay) in [(1, 400), (2, 200), (3, 300)] {
        let mut ub = ok(seq, T0 + seq * 10_000, delay);
        ub.upper_bound = true;
        a.apply(&ub, 0, seq, &mut out);
    }
    a.close_all(&mut out);
    let w = &out[0].window;
    assert_eq!((w.count, w.upper_bounds), (3, 3));
    assert_eq!(
        (w.min_us, w.p50_us, w.max_us),
        (Some(200), Some(300), Some(400))
    );
}

#[test]
fn gap_across_adjacent_windows_counts_in_the_later_one() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.apply(&ok(10, T0 + 990_000, 1), 0, 0, &mut out);
    a.apply(&ok(13, T0 + S + 20_000, 1), 0, 1, &mut out);
    a.close_all(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].window.missing, 0);
    assert_eq!(out[1].window.missing, 2, "seqs 11 and 12");
}

#[test]
fn lateness_keeps_windows_open_then_late_records_are_counted() {
    let mut a = windows(&[1000], 500);
    let mut out = Vec::new();
    a.apply(&ok(1, T0 + 100_000, 10), 0, 0, &mut out);
    // Into the next window, but within lateness of the first: it stays open.
    a.apply(&ok(3, T0 + S + 400_000, 10), 0, 1, &mut out);
    assert!(out.is_empty());
    // Out of order, within lateness: applied to the first window.
    let r = a.apply(&ok(2, T0 + 900_000, 20), 0, 2, &mut out);
    assert_eq!((r.applied, r.late), (1, 0));
    // Watermark passes the first window's end.
    a.apply(&ok(4, T0 + S + 500_000, 10), 0, 3, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.count, 2);
    // Beyond lateness: late, not applied.
    let r = a.apply(&ok(5, T0 + 950_000, 20), 0, 4, &mut out);
    assert_eq!((r.applied, r.late, r.late_mask), (0, 1, 1));
    a.close_all(&mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].window.count, 2);
}

#[test]
fn every_length_gets_the_record_and_closes_on_its_own_boundary() {
    let mut a = windows(&[1000, 10_000], 0);
    let mut out = Vec::new();
    for i in 0..1000i64 {
        a.apply(&ok(i, T0 + i * 10_000, i), 0, i, &mut out);
    }
    // 10 s of heartbeats: nine 1 s windows closed, the last 1 s and the 10 s still open.
    assert_eq!(out.len(), 9);
    a.apply(&ok(1000, T0 + 10 * S, 0), 0, 1000, &mut out);
    assert_eq!(out.len(), 11);
    let ten = out.iter().find(|c| c.window.window_us == 10 * S).unwrap();
    assert_eq!(ten.window.count, 1000);
    assert_eq!(ten.window.p99_us, Some(989));
    assert_eq!(&*ten.label, "10s");
    // Late for the 1 s window only: the 10 s window [10 s, 20 s) is open.
    let r = a.apply(&ok(1001, T0 + 10 * S - 1, 0), 0, 1001, &mut out);
    assert_eq!((r.late, r.late_mask), (2, 0b11), "both closed at 10 s");
    a.apply(&ok(1002, T0 + 11 * S, 0), 0, 1002, &mut out);
    let r = a.apply(&ok(1003, T0 + 10 * S + 500_000, 0), 0, 1003, &mut out);
    assert_eq!((r.applied, r.late_mask), (1, 0b01));
}

#[test]
fn replicas_are_windowed_separately() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.apply(&view("r1", 1, T0, 5, MeasureStatus::Ok), 0, 0, &mut out);
    a.apply(&view("r2", 1, T0, 7, MeasureStatus::Ok), 1, 0, &mut out);
    // r1's watermark moves; r2's window stays open.
    a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.replica, "r1");
    assert_eq!(a.holds().collect::<Vec<_>>(), vec![(0, 1), (1, 0)]);
}

#[test]
fn silent_replica_closes_by_wall_clock() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.set_now(T0 + 10);
    a.apply(&ok(1, T0, 5), 0, 0, &mut out);
    a.close_idle(T0 + S + 4 * S, 5 * S, &mut out);
    assert!(out.is_empty());
    a.close_idle(T0 + S + 5 * S, 5 * S, &mut out);
    assert_eq!(out.len(), 1);
    // And a straggler for it now is late.
    let r = a.apply(&ok(2, T0 + 10, 5), 0, 1, &mut out);
    assert_eq!(r.late, 1);
}

#[test]
fn a_lost_partition_drops_its_windows_and_resets_its_keys() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.apply(&view("r1", 1, T0, 5, MeasureStatus::Ok), 0, 0, &mut out);
    a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
    a.apply(&view("r2", 1, T0, 7, MeasureStatus::Ok), 1, 0, &mut out);
    assert_eq!(out.len(), 1);
    let (dropped, moved) = a.forget_partitions(&[0]);
    assert_eq!((dropped, moved.len()), (1, 1));
    assert_eq!(&*moved[0].1, "r1");
    assert_eq!(a.open_windows(), 1);
    assert_eq!(a.holds().collect::<Vec<_>>(), vec![(1, 0)]);
    // Partition 0 comes back and is replayed from its committed offset: nothing is late.
    let r = a.apply(&view("r1", 2, T0 + S, 5, MeasureStatus::Ok), 0, 1, &mut out);
    assert_eq!((r.applied, r.late), (1, 0));
}

#[test]
fn a_backlog_being_replayed_is_not_idle() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    // An hour after these heartbeats, the processor catches up on them.
    let now = T0 + 3_600 * S;
    a.set_now(now);
    a.apply(&ok(1, T0, 5), 0, 0, &mut out);
    a.close_idle(now + 20_000, 5 * S, &mut out);
    assert!(out.is_empty(), "records still arriving for this replica");
    a.apply(&ok(2, T0 + 500_000, 5), 0, 1, &mut out);
    // Then the replica's records stop: idle after idle_us without arrivals.
    a.close_idle(now + 4 * S, 5 * S, &mut out);
    assert!(out.is_empty());
    a.close_idle(now + 20_000 + 5 * S, 5 * S, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.count, 2);
}

#[test]
fn flushed_windows_are_skipped_on_replay() {
    let mut a = windows(&[1000, 10_000], 0);
    a.restore_flushed("main", "r1", S, T0 + S, Some(200));
    let mut out = Vec::new();
    let r = a.apply(&ok(150, T0 + 1_500_000, 5), 0, 0, &mut out);
    assert_eq!(
        (r.replayed, r.applied),
        (1, 1),
        "1 s flushed; 10 s still open"
    );
    a.apply(&ok(201, T0 + 2 * S, 5), 0, 1, &mut out);
    a.apply(&ok(300, T0 + 3 * S, 5), 0, 2, &mut out);
    let first = out.iter().find(|c| c.window.window_us == S).unwrap();
    assert_eq!(first.window.window_start_us, T0 + 2 * S);
    assert_eq!(
        first.window.missing, 0,
        "boundary gap from the restored last seq"
    );
}

fn pending(seq: i64, commit: i64, as_of: i64) -> DelayView<'static> {
    DelayView {
        cluster: "main",
        replica: "r1",
        seq,
        committed_at_us: commit,
        delay_us: as_of - commit,
        status: MeasureStatus::Pending,
        upper_bound: false,
        observed_at_us: as_of,
    }
}

const MS: i64 = 1_000;

#[test]
fn a_stalled_replicas_windows_close_on_time_with_the_lag_so_far() {
    let mut a = windows(&[1000, 10_000], 100);
    let mut out = Vec::new();
    a.set_now(T0);
    // 300 ms of 10 ms heartbeats shown within 1 ms, then the replica stalls: heartbeat 31
    // (committed at 300 ms) and every later one are not shown.
    for i in 0..30 {
        a.apply(&ok(i + 1, T0 + i * 10 * MS, MS), 0, i, &mut out);
    }
    let mut offset = 30;
    let mut sample_at = T0 + 400 * MS;
    while sample_at <= T0 + 3_100 * MS {
        let r = a.apply(&pending(31, T0 + 300 * MS, sample_at), 0, offset, &mut out);
        assert!(r.lag_sample && r.applied == 0);
        offset += 1;
        sample_at += 250 * MS;
    }
    // The samples moved the watermark: the 1 s windows up to 2 s closed, no record needed.
    let ones: Vec<&DelayWindow> = out
        .iter()
        .map(|c| &c.window)
        .filter(|w| w.window_us == S)
        .collect();
    assert_eq!(ones.len(), 2, "[0, 1 s) and [1 s, 2 s)");
    let (first, second) = (ones[0], ones[1]);
    // The sample closing [0, 1 s) was taken at 1.15 s: heartbeat 31 was 850 ms old then.
    assert_eq!(first.count, 30, "measured ones only");
    assert_eq!(first.missing, 0, "the others are pending, not missing");
    assert_eq!(first.max_us, Some(850 * MS));
    assert!(
        first.p90_us.unwrap() > 500 * MS,
        "70 of 100 heartbeats not shown: {first:?}"
    );
    assert_eq!(first.min_us, Some(MS));
    // [1 s, 2 s): no record at all, every heartbeat pending at the 2.15 s sample.
    assert_eq!((second.count, second.missing), (0, 0));
    assert_eq!(
        second.max_us,
        Some(1_150 * MS),
        "its first heartbeat's delay so far"
    );
    assert_eq!(second.min_us, Some(160 * MS));
    // The stall ends: the burst of ok records clears the lag, and those for closed windows are
    // late; the 10 s window is still open and gets them.
    let end = T0 + 3_200 * MS;
    let r = a.apply(
        &ok(31, T0 + 300 * MS, end - T0 - 300 * MS),
        0,
        offset,
        &mut out,
    );
    assert_eq!((r.late, r.applied), (1, 1));
    a.close_all(&mut out);
    let ten = out.iter().find(|c| c.window.window_us == 10 * S).unwrap();
    assert_eq!(
        ten.window.max_us,
        Some(2_900 * MS),
        "the real delay, once shown"
    );
}

#[test]
fn a_dead_writers_windows_close_by_the_wall_clock_with_the_missing_heartbeats() {
    let mut a = windows(&[1000], 100);
    let mut out = Vec::new();
    a.set_now(T0);
    // Heartbeats every 10 ms up to 500 ms, then the writer dies.
    for i in 0..=50 {
        a.apply(&ok(i + 1, T0 + i * 10 * MS, MS), 0, i, &mut out);
    }
    // Nothing for 3.6 s (idle after 2 s).
    a.close_idle(T0 + 3_600 * MS, 2 * S, &mut out);
    let w: Vec<&DelayWindow> = out.iter().map(|c| &c.window).collect();
    assert_eq!(w.len(), 1, "windows end at or before 1.6 s: {w:?}");
    assert_eq!(
        (w[0].count, w[0].missing),
        (51, 49),
        "510..990 ms never came"
    );
    a.close_idle(T0 + 4_100 * MS, 2 * S, &mut out);
    let empty = &out[1].window;
    assert_eq!(empty.window_start_us, T0 + S);
    assert_eq!((empty.count, empty.missing, empty.max_us), (0, 100, None));
    // The writer is back at 4.5 s; seq continues: no gap counted twice.
    a.set_now(T0 + 4_500 * MS);
    for i in 0..60 {
        a.apply(
            &ok(52 + i, T0 + 4_500 * MS + i * 10 * MS, MS),
            0,
            100 + i,
            &mut out,
        );
    }
    a.close_all(&mut out);
    let windows: Vec<(i64, i64, i64)> = out
        .iter()
        .map(|c| {
            (
                (c.window.window_start_us - T0) / S,
                c.window.count,
                c.window.missing,
            )
        })
        .collect();
    assert_eq!(
        windows,
        vec![
            (0, 51, 49),
            (1, 0, 100),
            (2, 0, 100),
            (3, 0, 100),
            (4, 50, 0),
            (5, 10, 0)
        ],
        "every missing heartbeat counted once"
    );
}

#[test]
fn a_replica_gone_for_good_is_filled_in_only_within_the_horizon() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    a.set_now(T0);
    a.apply(&ok(1, T0, MS), 0, 0, &mut out);
    a.apply(&ok(2, T0 + 10 * MS, MS), 0, 1, &mut out);
    // Five minutes later its windows up to 295 s are closed, the empty ones filled in.
    a.close_idle(T0 + 300 * S, 5 * S, &mut out);
    assert_eq!(out.len(), 295);
    assert!(out[1..]
        .iter()
        .all(|c| c.window.count == 0 && c.window.missing == 100));
    // An hour later: nothing more than the 10 minutes after its last record.
    a.close_idle(T0 + 3_600 * S, 5 * S, &mut out);
    assert_eq!(out.len(), 295, "only within 10 min of now");
}

#[test]
fn an_ok_record_replaces_the_timeout_of_the_same_heartbeat_in_an_open_window() {
    let mut a = windows(&[10_000], 0);
    let mut out = Vec::new();
    a.apply(&ok(1, T0, MS), 0, 0, &mut out);
    a.apply(
        &view("r1", 2, T0 + 10 * MS, 2 * S, MeasureStatus::Timeout),
        0,
        1,
        &mut out,
    );
    let r = a.apply(&ok(2, T0 + 10 * MS, 5 * S), 0, 2, &mut out);
    assert_eq!((r.applied, r.duplicate), (1, 0), "not a duplicate");
    let dup = a.apply(&ok(2, T0 + 10 * MS, 5 * S), 0, 3, &mut out);
    assert_eq!(dup.duplicate, 1, "a second ok is");
    a.close_all(&mut out);
    let w = &out[0].window;
    assert_eq!((w.count, w.timeouts, w.missing, w.duplicates), (2, 0, 0, 1));
    assert_eq!(w.max_us, Some(5 * S));
}

#[test]
fn replicas_gone_for_the_retention_are_forgotten_unless_an_incident_is_open() {
    let mut a = windows(&[1000], 0);
    let mut out = Vec::new();
    // A churn of pod IPs: 1,000 replicas, each reporting once.
    let names: Vec<String> = (0..1000)
        .map(|i| format!("10.0.{}.{}:3306", i / 250, i % 250))
        .collect();
    a.set_now(T0);
    for (i, n) in names.iter().enumerate() {
        a.apply(
            &view(n, 1, T0 + i as i64, 500, MeasureStatus::Ok),
            0,
            i as i64,
            &mut out,
        );
    }
    a.close_idle(T0 + 10 * S, 5 * S, &mut out);
    assert_eq!(a.known(), 1000);
    // Still reporting: the first one, a second later.
    a.set_now(T0 + 3_600 * S);
    a.apply(
        &view(&names[0], 2, T0 + 3_600 * S, 500, MeasureStatus::Ok),
        0,
        1000,
        &mut out,
    );
    let kept = &names[1];
    let gone = a.prune_silent(T0 + 3_600 * S, 1_800 * S, |_, r| r == kept);
    assert_eq!(gone.len(), 998);
    assert_eq!(
        a.known(),
        2,
        "the live one and the one with an open incident"
    );
    // The index still finds the survivors (ids moved when others were removed).
    assert!(a.newest("main", &names[0]).is_some());
    assert!(a.newest("main", kept).is_some());
    assert!(a.newest("main", &names[2]).is_none());
    // A forgotten replica that comes back is windowed afresh.
    a.apply(
        &view(&names[2], 3, T0 + 3_601 * S, 500, MeasureStatus::Ok),
        0,
        1001,
        &mut out,
    );
    assert_eq!(a.known(), 3);
}
