//! The tracker's rules with made-up microseconds: no database, no clock, no runtime.

use super::*;
use millilag_core::events::{HeartbeatSet, MeasureMethod, MeasureStatus, ReplicaDelay};

const MS: i64 = 1_000;
const S: i64 = 1_000_000;
/// A whole second on the primary's clock; the reader's clock runs 7 ms behind it.
const T0: i64 = 1_763_000_000 * S;
const OFFSET: i64 = 7 * MS;
const ONE_WAY: i64 = 50;
const INTERVAL: i64 = 10 * MS;
/// A wait whose number the replica did not have when it was armed (the server says so).
const BLOCKED: WaitOutcome = WaitOutcome::Reached {
    already: Some(false),
};
/// A wait whose number the replica already had.
const AT_ONCE: WaitOutcome = WaitOutcome::Reached {
    already: Some(true),
};

fn settings(method: ReaderMethod) -> Settings {
    Settings {
        method,
        poll_interval: Duration::from_millis(1),
        poll_max_interval: Duration::from_millis(50),
        timeout: Duration::from_secs(2),
        prearm_depth: 2,
        max_in_flight: 1_000,
    }
}

/// Heartbeat `seq`, written on the writer's 10 ms grid, committed 1 ms after its tick.
fn heartbeat(seq: i64, gtid: bool) -> Arc<HeartbeatSet> {
    Arc::new(HeartbeatSet {
        cluster: "main".into(),
        primary: "db1:3306".into(),
        server_id: 1,
        writer_id: "w1".into(),
        writer_epoch: 1,
        seq,
        committed_at_us: commit(seq),
        gtid: gtid.then(|| format!("77-1-{seq}")),
        binlog_file: None,
        binlog_pos: None,
        interval_us: INTERVAL,
        commit_rtt_us: 500,
    })
}

fn commit(seq: i64) -> i64 {
    T0 + seq * INTERVAL + MS
}

fn key(n: u64) -> GtidKey {
    GtidKey {
        sequence: "77-1-".into(),
        n,
    }
}

/// Local time of a primary-clock moment.
fn local(primary_us: i64) -> i64 {
    primary_us - OFFSET
}

/// A tracker fed events one at a time, keeping what it published.
struct Harness {
    t: Tracker<i64>,
    /// Every record, with whether it carried its heartbeat's ticket.
    published: Vec<(ReplicaDelay, bool)>,
    /// Waits asked for and not answered yet: (number, armed at, gives up at), primary clock.
    waits: Vec<(u64, i64, i64)>,
}

impl Harness {
    fn new(method: ReaderMethod) -> Harness {
        Self::with(settings(method))
    }

    fn with(s: Settings) -> Harness {
        let who = Identity {
            cluster: "main".into(),
            replica: "db2:3306".into(),
            reader_id: "r1".into(),
        };
        let mut t = Tracker::new(s, who, local(T0));
        t.set_clock(ClockOffset {
            offset_us: OFFSET,
            uncertainty_us: 20,
        });
        let mut h = Harness {
            t,
            published: Vec::new(),
            waits: Vec::new(),
        };
        h.feed(
            local(T0),
            Event::Connected {
                one_way_us: ONE_WAY,
            },
        );
        h
    }

    /// Feed one event at primary-clock time `at`; returns the commands other than publishes.
    fn feed(&mut self, at: i64, e: Event<i64>) -> Vec<Command<i64>> {
        let mut rest = Vec::new();
        for c in self.t.handle(local(at), e) {
            match c {
                Command::Publish { record, ticket } => {
                    if let Some(t) = ticket {
                        assert_eq!(record.seq, t, "a record travels with its own ticket");
                    }
                    self.published.push((record, ticket.is_some()));
                }
                Command::Arm { key, wait_s } => {
                    let gives_up = at + (wait_s * 1e6) as i64;
                    self.waits.push((key.n, at, gives_up));
                    rest.push(Command::Arm { key, wait_s });
                }
                other => rest.push(other),
            }
        }
        rest
    }

    fn announce(&mut self, at: i64, seq: i64, gtid: bool) -> Vec<Command<i64>> {
        self.feed(at, Event::announced(heartbeat(seq, gtid), seq))
    }

    /// A wait for number `n` armed at `armed` returned at `returned` (primary clock).
    fn wait_returned(
        &mut self,
        n: u64,
        armed: i64,
        returned: i64,
        outcome: WaitOutcome,
    ) -> Vec<Command<i64>> {
        if let Some(i) = self.waits.iter().position(|w| w.0 == n) {
            self.waits.remove(i);
        }
        self.feed(
            returned,
            Event::WaitReturned {
                key: key(n),
                armed_at: local(armed),
                returned_at: local(returned),
                server: None,
                outcome,
            },
        )
    }

    fn read(&mut self, sent: i64, returned: i64, seq: i64) -> Vec<Command<i64>> {
        self.feed(
            returned,
            Event::ReadReturned {
                sent_at: local(sent),
                returned_at: local(returned),
                seq,
                server_at: None,
            },
        )
    }

    fn tick(&mut self, at: i64) -> Vec<Command<i64>> {
        self.feed(at, Event::Tick)
    }

    /// The next wake-up, on the primary's clock.
    fn wake(&self) -> Option<i64> {
        self.t.next_wake().map(|l| l + OFFSET)
    }

    /// The next read, on the primary's clock.
    fn next_read(&self) -> Option<i64> {
        self.t.poll.next_poll.map(|l| l + OFFSET)
    }

    /// Wake the tracker whenever it asks, up to `until` (primary clock), as the shell would
    /// for a replica that shows `row_seq` and applies nothing: reads answer `row_seq` 300 us
    /// later, waits give up when their time is up, status checks answer `stopped`. Returns
    /// when each read was sent, and the other commands.
    fn run_until(
        &mut self,
        until: i64,
        row_seq: i64,
        stopped: bool,
    ) -> (Vec<i64>, Vec<Command<i64>>) {
        let (mut read_times, mut others) = (Vec::new(), Vec::new());
        loop {
            let wake = self.wake().filter(|w| *w <= until);
            let wait_due = self.waits.iter().map(|w| w.2).filter(|d| *d <= until).min();
            let at = match (wake, wait_due) {
                (None, None) => break,
                (Some(w), Some(d)) if d < w => {
                    let i = self.waits.iter().position(|w| w.2 == d).unwrap();
                    let (n, armed, due) = self.waits.remove(i);
                    others.extend(self.wait_returned(n, armed, due, WaitOutcome::TimedOut));
                    continue;
                }
                (None, Some(d)) => {
                    let i = self.waits.iter().position(|w| w.2 == d).unwrap();
                    let (n, armed, due) = self.waits.remove(i);
                    others.extend(self.wait_returned(n, armed, due, WaitOutcome::TimedOut));
                    continue;
                }
                (Some(w), _) => w,
            };
            let mut queue: Vec<(i64, Event<i64>)> = vec![(at, Event::Tick)];
            while let Some((t, e)) = queue.pop() {
                for c in self.feed(t, e) {
                    match c {
                        Command::Read { .. } => {
                            read_times.push(t);
                            queue.push((
                                t + 300,
                                Event::ReadReturned {
                                    sent_at: local(t),
                                    returned_at: local(t + 300),
                                    seq: row_seq,
                                    server_at: None,
                                },
                            ));
                        }
                        Command::CheckStatus => queue.push((
                            t,
                            Event::StatusReturned {
                                replication_stopped: stopped,
                            },
                        )),
                        other => others.push(other),
                    }
                }
            }
        }
        (read_times, others)
    }

    /// The record that carried heartbeat `seq`'s ticket.
    fn record(&self, seq: i64) -> &ReplicaDelay {
        self.published
            .iter()
            .find(|(r, ticket)| r.seq == seq && *ticket)
            .map(|(r, _)| r)
            .unwrap_or_else(|| panic!("no record for seq {seq}: {:?}", self.published))
    }

    /// Records without a ticket other than lag samples: real delays of owed heartbeats.
    fn late_ok(&self, seq: i64) -> Option<&ReplicaDelay> {
        self.published
            .iter()
            .find(|(r, ticket)| r.seq == seq && !*ticket && r.status == MeasureStatus::Ok)
            .map(|(r, _)| r)
    }

    fn samples(&self) -> Vec<&ReplicaDelay> {
        self.published
            .iter()
            .filter(|(r, _)| r.status == MeasureStatus::Pending)
            .map(|(r, _)| r)
            .collect()
    }

    fn tickets(&self) -> usize {
        self.published.iter().filter(|(_, t)| *t).count()
    }
}

fn armed(cmds: &[Command<i64>]) -> Vec<u64> {
    cmds.iter()
        .filter_map(|c| match c {
            Command::Arm { key, .. } => Some(key.n),
            _ => None,
        })
        .collect()
}

fn reads(cmds: &[Command<i64>]) -> usize {
    cmds.iter()
        .filter(|c| matches!(c, Command::Read { .. }))
        .count()
}

#[test]
fn steady_state_arms_ahead_and_times_each_heartbeat_by_its_own_wait() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    // The first heartbeat: its own wait (the numbering is not known to be consecutive yet).
    let c = h.announce(commit(1) + 5 * MS, 1, true);
    assert_eq!(armed(&c), vec![1]);
    h.wait_returned(1, commit(1) + 5 * MS, commit(1) + 5 * MS + 150, AT_ONCE);
    // The second shows the numbering is consecutive: waits go ahead of the announcements, up
    // to prearm_depth, for heartbeats not written yet.
    let c = h.announce(commit(2) + 5 * MS, 2, true);
    let mut ahead = armed(&c);
    ahead.sort();
    assert_eq!(ahead, vec![2, 3], "own wait, then the next number");
    let c = h.wait_returned(2, commit(2) + 5 * MS, commit(2) + 5 * MS + 150, AT_ONCE);
    assert_eq!(
        armed(&c),
        vec![4],
        "prearm_depth waits ahead of the replica"
    );
    // Heartbeat 3 was armed for before it was written: the replica's wake-up times it.
    let c = h.wait_returned(3, commit(2) + 6 * MS, commit(3) + 2 * MS, BLOCKED);
    assert_eq!(armed(&c), vec![5], "re-armed ahead as soon as it returned");
    let c = h.announce(commit(3) + 6 * MS, 3, true);
    assert!(
        armed(&c).is_empty(),
        "no query of its own: its wait already returned"
    );
    let r = h.record(3);
    assert_eq!(r.status, MeasureStatus::Ok);
    assert_eq!(r.method, MeasureMethod::GtidWait);
    assert!(!r.upper_bound);
    assert_eq!(
        r.delay_us,
        2 * MS - ONE_WAY,
        "wake-up minus the answer's way back"
    );
    assert_eq!(r.queries, 1);
    assert_eq!(h.t.awaited(), 0);
    // Heartbeats 1 and 2 were waited for only after their commits and answered at once:
    // upper bounds (the first look already saw them).
    assert!(h.record(1).upper_bound && h.record(2).upper_bound);
}

#[test]
fn a_burst_after_a_stall_is_caught_up_by_reads_then_waits_take_over() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    for seq in 1..=2 {
        h.announce(commit(seq) + 5 * MS, seq, true);
        h.wait_returned(seq as u64, commit(seq) - MS, commit(seq) + MS, BLOCKED);
    }
    // The replica stalls: heartbeats 3..=10 are announced. The waits for 3 and 4 were armed
    // ahead and hold both wait connections; the rest wait.
    let mut during = Vec::new();
    for seq in 3..=10 {
        during.extend(armed(&h.announce(commit(seq) + 5 * MS, seq, true)));
    }
    assert_eq!(during, Vec::<u64>::new());
    assert_eq!(h.t.awaited(), 8);
    // The stall ends 200 ms after heartbeat 3's commit: its wait returns, the backlog with it.
    let end = commit(3) + 200 * MS;
    let c = h.wait_returned(3, commit(2), end, BLOCKED);
    assert_eq!(
        armed(&c),
        vec![11],
        "catch-up reads time the backlog; the freed connection waits for what comes next"
    );
    assert_eq!(h.record(3).delay_us, 200 * MS - ONE_WAY);
    assert_eq!(reads(&c), 1, "catch-up: read at once, in the same breath");
    // One read sees the replica at 10: 4..=10 appeared between the wait's return and the read.
    let c = h.read(end + 100, end + 400, 10);
    assert_eq!(h.t.awaited(), 0);
    for seq in 4..=10 {
        let r = h.record(seq);
        assert!(!r.upper_bound, "{r:?}");
        assert!(r.uncertainty_us < MS, "bracketed by a round trip: {r:?}");
        let truth = end - commit(seq);
        assert!((r.delay_us - truth).abs() < MS, "{r:?} vs {truth}");
    }
    assert!(armed(&c).is_empty(), "both connections busy: 4 and 11");
    // The wait for 4 returns at once (applied in the burst) and the waits move on beyond the
    // backlog.
    let mut next = armed(&c);
    for n in 4..=4 {
        next.extend(armed(&h.wait_returned(
            n,
            commit(n as i64) - MS,
            end + 500,
            BLOCKED,
        )));
    }
    assert_eq!(next, vec![12]);
    assert_eq!(h.tickets(), 10, "one record per heartbeat");
}

#[test]
fn a_heartbeat_already_visible_at_the_first_look_is_an_upper_bound() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    // The reader starts 1 s after heartbeat 1 was committed (and applied).
    let start = commit(1) + S;
    let c = h.announce(start, 1, true);
    assert_eq!(armed(&c), vec![1]);
    h.wait_returned(1, start, start + 200, AT_ONCE);
    let r = h.record(1);
    assert!(r.upper_bound, "{r:?}");
    assert_eq!(r.delay_us, S + 200 - ONE_WAY);
}

#[test]
fn a_stall_longer_than_the_timeout_is_reported_at_the_deadline_and_measured_when_it_ends() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    let c = h.announce(commit(1) + 5 * MS, 1, true);
    let wait_s = match &c[0] {
        Command::Arm { wait_s, .. } => *wait_s,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        wait_s, 0.25,
        "a wait gives up after 250 ms (two 10 ms intervals, at least 250 ms)"
    );
    // Replication stopped: each wait gives up and the heartbeat's is armed again, 4 a second.
    let deadline = commit(1) + 2 * S;
    let (reads, c) = h.run_until(deadline + MS, 0, true);
    assert!(
        reads.is_empty(),
        "a stalled replica is watched by waits, not reads"
    );
    let rearmed = armed(&c);
    assert!(
        rearmed.iter().all(|n| *n == 1) && (7..=9).contains(&rearmed.len()),
        "{rearmed:?}"
    );
    let r = h.record(1);
    assert_eq!(r.status, MeasureStatus::ReplicationStopped);
    assert_eq!(r.delay_us, 2 * S);
    assert_eq!(
        h.t.awaited(),
        1,
        "reported, so its offset moves on, and still watched"
    );
    // The live lag was published while it grew: every 250 ms once a wait said it was missing.
    let samples: Vec<i64> = h.samples().iter().map(|r| r.delay_us).collect();
    assert!(samples.len() >= 6 && samples[0] >= 250 * MS, "{samples:?}");
    assert!(
        samples.windows(2).all(|w| w[1] - w[0] >= 250 * MS),
        "{samples:?}"
    );
    assert!(h
        .samples()
        .iter()
        .all(|r| r.seq == 1 && r.committed_at_us == commit(1)));
    assert!((h.t.lag_us() - 2 * S).abs() < 2 * MS, "lag = its age now");
    // 8 s into the stall replication resumes: the armed wait returns.
    h.run_until(commit(1) + 8 * S - MS, 0, true);
    let end = commit(1) + 8 * S;
    let (n, armed_at, _) = h.waits[0];
    assert_eq!(n, 1);
    h.wait_returned(1, armed_at, end, BLOCKED);
    let ok = h.late_ok(1).expect("its real delay, once shown");
    assert!(!ok.upper_bound, "{ok:?}");
    assert_eq!(ok.delay_us, 8 * S - ONE_WAY);
    assert_eq!(h.t.awaited(), 0);
    assert_eq!(h.t.lag_us(), 0);
}

#[test]
fn poll_mode_reads_an_overdue_heartbeat_less_often_the_later_it_is() {
    let mut h = Harness::new(ReaderMethod::Poll);
    let c = h.announce(commit(1) + 5 * MS, 1, true);
    assert_eq!(
        reads(&c),
        0,
        "a read is scheduled, not made inside the event"
    );
    assert_eq!(h.next_read(), Some(commit(1) + 5 * MS));
    // The replica is stalled at seq 0 for 1.9 s.
    let (times, _) = h.run_until(commit(1) + 1_900 * MS, 0, false);
    // The gap after each read is 2% of the lateness, between poll_interval (1 ms) and
    // poll_max_interval (50 ms). Late since the writer's tick (0.5 ms before the commit) while
    // the writer is announcing; once its last event is 1 s old, since the heartbeat's commit.
    for w in times.windows(2) {
        let (answered, gap) = (w[0] + 300, w[1] - (w[0] + 300));
        let late = answered - commit(1);
        let announcing = late - 5 * MS < S;
        let since_tick = if announcing { late + 500 } else { late };
        let want = (since_tick / 50).clamp(MS, 50 * MS);
        assert_eq!(gap, want, "{late} us late");
    }
    // Gaps growing by 2% make the reads logarithmic in the stall: ~230, not 1,900.
    assert!(times.len() < 300, "{} reads for a 1.9 s stall", times.len());
    // It shows: bracketed by the last two reads.
    let last = *times.last().unwrap();
    let (more, _) = h.run_until(h.next_read().unwrap(), 1, false);
    let r = h.record(1);
    assert_eq!(r.method, MeasureMethod::Poll);
    assert!(!r.upper_bound);
    assert!(
        r.delay_us > last - commit(1) && r.delay_us < more[0] + 300 - commit(1),
        "{r:?}"
    );
    assert!(r.uncertainty_us < 20 * MS, "{r:?}");
    assert_eq!(r.queries as usize, times.len() + 1, "every read counts");
}

#[test]
fn a_replica_without_the_heartbeat_table_gets_no_new_connection_and_no_hot_loop() {
    let mut h = Harness::new(ReaderMethod::Poll);
    h.announce(commit(1) + 5 * MS, 1, false);
    let at = commit(1) + 5 * MS;
    h.tick(at);
    let c = h.feed(
        at + MS,
        Event::ReadFailed {
            why: "Table 'millilag.heartbeat' doesn't exist".into(),
            connection_lost: false,
        },
    );
    assert!(
        c.is_empty(),
        "the connection works: no reconnect, no new session: {c:?}"
    );
    let next = h.next_read().unwrap();
    assert!(
        next - (at + MS) >= 200 * MS,
        "backed off, not read again at poll_interval"
    );
    // Every later heartbeat waits for the backoff too.
    h.announce(commit(2) + 5 * MS, 2, false);
    assert!(reads(&h.tick(commit(2) + 5 * MS)) == 0);
    // At the deadline both are reported, not lost.
    let deadline = commit(1) + 2 * S;
    let mut c = h.tick(deadline);
    c.retain(|c| matches!(c, Command::CheckStatus));
    assert_eq!(c.len(), 1);
    h.feed(
        deadline,
        Event::StatusReturned {
            replication_stopped: false,
        },
    );
    assert_eq!(h.record(1).status, MeasureStatus::Timeout);
}

#[test]
fn an_unreachable_replica_reports_what_it_owed_and_reconnects_with_backoff() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    h.announce(commit(1) + 5 * MS, 1, true);
    // The wait's connection dies: one fresh connection is tried first.
    let c = h.wait_returned(
        1,
        commit(1) + 5 * MS,
        commit(1) + 6 * MS,
        WaitOutcome::Failed("gone".into()),
    );
    assert!(matches!(c.as_slice(), [Command::Connect]), "{c:?}");
    let c = h.feed(
        commit(1) + 7 * MS,
        Event::ConnectFailed {
            why: "refused".into(),
        },
    );
    assert!(matches!(c.as_slice(), [Command::Disconnect]), "{c:?}");
    assert_eq!(h.record(1).status, MeasureStatus::ReplicaUnreachable);
    // New heartbeats are reported at once while it is away.
    h.announce(commit(2) + 5 * MS, 2, true);
    assert_eq!(h.record(2).status, MeasureStatus::ReplicaUnreachable);
    let retry = h.wake().unwrap();
    assert!(
        retry > commit(1) + 7 * MS + 150 * MS,
        "backoff before reconnecting"
    );
    let c = h.tick(retry);
    assert!(matches!(c.as_slice(), [Command::Connect]), "{c:?}");
    h.feed(
        retry,
        Event::Connected {
            one_way_us: ONE_WAY,
        },
    );
    let c = h.announce(commit(3) + 5 * MS, 3, true);
    assert!(armed(&c).contains(&3), "measured again: {:?}", armed(&c));
}

#[test]
fn more_heartbeats_than_max_in_flight_supersede_the_oldest() {
    let mut s = settings(ReaderMethod::GtidWait);
    s.max_in_flight = 3;
    let mut h = Harness::with(s);
    for seq in 1..=5 {
        h.announce(commit(seq) + 5 * MS, seq, true);
    }
    assert_eq!(h.t.awaited(), 3);
    assert_eq!(h.record(1).status, MeasureStatus::Skipped);
    assert_eq!(h.record(2).status, MeasureStatus::Skipped);
    assert_eq!(h.record(1).method, MeasureMethod::GtidWait);
}

#[test]
fn waits_never_exceed_the_wait_connections() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    let mut total = 0;
    for seq in 1..=20 {
        total += armed(&h.announce(commit(seq) + 5 * MS, seq, true)).len();
    }
    assert_eq!(
        total,
        h.t.wait_slots(),
        "armed until every wait connection is busy"
    );
}

#[test]
fn a_reader_started_late_reports_the_backlog_as_upper_bounds_not_as_lag() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    // Heartbeats 1..=5 were committed and applied long ago; the reader starts 1 s later and
    // gets them in one batch.
    let start = commit(5) + S;
    for seq in 1..=5 {
        h.announce(start, seq, true);
    }
    // Before the first answer, the backlog is not lag: nothing says the replica lacks it.
    assert_eq!(h.t.lag_us(), 0);
    // The first wait answers at once: the replica is far past it. The tracker catches up by
    // reading: the row shows 5 (nothing new since).
    let c = h.wait_returned(1, start, start + 200, AT_ONCE);
    assert_eq!(reads(&c), 1);
    h.read(start + 200, start + 300, 5);
    // The other waits answered at once too.
    for n in 2..=4 {
        h.wait_returned(n, start, start + 300 + n as i64 * 10, AT_ONCE);
    }
    h.run_until(start + 50 * MS, 5, false);
    assert_eq!(h.tickets(), 5);
    assert!(
        h.samples().is_empty(),
        "no lag published for heartbeats never seen missing"
    );
    for seq in 1..=5 {
        let r = h.record(seq);
        assert!(
            r.upper_bound,
            "seq {seq} was already visible at the first look: only an upper bound, never ~1 s of lag: {r:?}"
        );
    }
}

#[test]
fn a_wait_rearmed_after_its_timeout_still_brackets_the_moment_the_replica_shows_it() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    h.announce(commit(1) + 5 * MS, 1, true);
    // The wait gives up at 2 s; the replica applies the heartbeat just before the re-armed
    // wait reaches the server, so the new wait answers at once.
    let gave_up = commit(1) + 2 * S;
    h.wait_returned(1, commit(1) + 5 * MS, gave_up, WaitOutcome::TimedOut);
    h.wait_returned(1, gave_up + 100, gave_up + 400, AT_ONCE);
    let r = h.record(1);
    assert!(
        !r.upper_bound,
        "not shown when the first wait gave up: {r:?}"
    );
    assert!((r.delay_us - 2 * S).abs() < MS, "{r:?}");
    assert!(r.uncertainty_us < MS, "{r:?}");
}

#[test]
fn a_heartbeat_waits_for_its_own_wait_rather_than_a_neighbours() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    h.announce(commit(1) + 5 * MS, 1, true);
    h.announce(commit(2) + 5 * MS, 2, true);
    // Stalled: both waits give up and are armed again.
    let gave_up = commit(2) + 2 * S;
    for n in 1..=2 {
        h.wait_returned(n, commit(n as i64), gave_up, WaitOutcome::TimedOut);
    }
    // Replication resumes; the wait for 2 happens to answer a few microseconds before 1's.
    let end = commit(1) + 3 * S;
    h.wait_returned(2, gave_up + 100, end + 20, BLOCKED);
    assert!(
        h.published
            .iter()
            .all(|(r, _)| r.seq != 1 || r.status == MeasureStatus::Pending),
        "1 is left to its own wait"
    );
    h.wait_returned(1, gave_up + 100, end, BLOCKED);
    let r = h.record(1);
    assert!(!r.upper_bound, "{r:?}");
    assert_eq!(r.delay_us, 3 * S - ONE_WAY);
}

#[test]
fn the_replica_times_its_waits_and_reads_when_its_clock_is_known() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    // The replica's clock runs 3 ms ahead of ours (sampled within 40 us).
    const REPLICA_AHEAD: i64 = 3 * MS;
    h.t.set_replica_clock(Some(ClockOffset {
        offset_us: REPLICA_AHEAD,
        uncertainty_us: 40,
    }));
    let on_replica = |primary: i64| local(primary) + REPLICA_AHEAD;
    h.announce(commit(1) + 5 * MS, 1, true);
    h.wait_returned(1, commit(1) + 5 * MS, commit(1) + 5 * MS + 200, AT_ONCE);
    h.announce(commit(2) + 5 * MS, 2, true);
    // Heartbeat 3, armed ahead, woke on the replica 1.5 ms after its commit; the reader was
    // busy and stamped the answer 8 ms late. The replica's word counts.
    let woke = commit(3) + 1_500;
    let c = h.feed(
        woke + 8 * MS,
        Event::WaitReturned {
            key: key(3),
            armed_at: local(commit(2) + 6 * MS),
            returned_at: local(woke + 8 * MS),
            server: Some(ServerTimes {
                began_us: on_replica(commit(2) + 6 * MS),
                woke_us: on_replica(woke),
                position: None,
            }),
            outcome: BLOCKED,
        },
    );
    drop(c);
    h.announce(commit(3) + 9 * MS, 3, true);
    let r = h.record(3);
    assert!(!r.upper_bound);
    assert_eq!(
        r.delay_us, 1_500,
        "the replica's wake-up, not the reader's late stamp"
    );
    assert_eq!(r.uncertainty_us, 20 + 40, "both clock estimates' bounds");
    // Reads too: a stall, two reads 1 ms apart on the replica's clock bracket 4.
    h.announce(commit(4) + 5 * MS, 4, true);
    h.announce(commit(5) + 5 * MS, 5, true);
    let end = commit(4) + 300 * MS;
    h.wait_returned(4, commit(3), end, BLOCKED);
    h.feed(
        end + 5 * MS,
        Event::ReadReturned {
            sent_at: local(end),
            returned_at: local(end + 5 * MS),
            seq: 5,
            server_at: Some(on_replica(end + MS)),
        },
    );
    let r5 = h.record(5);
    assert!(!r5.upper_bound);
    assert!(
        r5.uncertainty_us < MS,
        "bracketed by the replica's own times, not a 5 ms round trip: {r5:?}"
    );
}

#[test]
fn a_stale_replica_clock_estimate_is_held_to_the_round_trip() {
    let mut h = Harness::new(ReaderMethod::GtidWait);
    // The estimate says the replica's clock is level with ours; it has stepped 5 ms ahead.
    h.t.set_replica_clock(Some(ClockOffset {
        offset_us: 0,
        uncertainty_us: 40,
    }));
    const STEPPED: i64 = 5 * MS;
    h.announce(commit(1) + 5 * MS, 1, true);
    let woke = commit(1) + 2 * MS;
    let c = h.feed(
        woke + 300,
        Event::WaitReturned {
            key: key(1),
            armed_at: local(commit(1) - MS),
            returned_at: local(woke + 300),
            server: Some(ServerTimes {
                began_us: local(commit(1) - MS) + 100 + STEPPED,
                woke_us: local(woke) + STEPPED,
                position: None,
            }),
            outcome: BLOCKED,
        },
    );
    drop(c);
    let r = h.record(1);
    assert!(
        (2 * MS..=2 * MS + 300).contains(&r.delay_us),
        "no later than the answer arrived, not 5 ms late: {r:?}"
    );
}

#[test]
fn one_wait_per_replica_arms_the_next_heartbeat_when_the_last_announced_committed_late() {
    let mut s = settings(ReaderMethod::GtidWait);
    s.prearm_depth = 1;
    let mut h = Harness::with(s);
    h.announce(commit(1) + 5 * MS, 1, true);
    h.wait_returned(1, commit(1) + 5 * MS, commit(1) + 5 * MS + 150, AT_ONCE);
    // Heartbeat 2's commit took 1.5 ms longer than usual: the next one comes less than a whole
    // interval after it.
    let mut late = (*heartbeat(2, true)).clone();
    late.committed_at_us += 1_500;
    let c = h.feed(commit(2) + 5 * MS, Event::announced(Arc::new(late), 2));
    assert_eq!(armed(&c), vec![2], "its own wait: one wait per replica");
    let c = h.wait_returned(2, commit(2) + 5 * MS, commit(2) + 5 * MS + 150, AT_ONCE);
    assert_eq!(armed(&c), vec![3]);
    // The replica applies 3 on time, 8.8 ms after 2's late commit: 4 is armed at once, before
    // it is written, so the replica's wake-up times it.
    let c = h.wait_returned(3, commit(2) + 6 * MS, commit(3) + 300, BLOCKED);
    assert_eq!(
        armed(&c),
        vec![4],
        "armed within the interval 4 is written in"
    );
    let c = h.wait_returned(4, commit(3) + 300, commit(4) + 300, BLOCKED);
    assert_eq!(armed(&c), vec![5]);
    for seq in 3..=4 {
        h.announce(commit(4) + 2 * MS, seq, true);
        let r = h.record(seq);
        assert!(!r.upper_bound, "seq {seq} timed by its own wait: {r:?}");
    }
}

/// A replica that applies every heartbeat 1 ms after its commit, seen through a round trip
/// longer than the heartbeat interval (6 ms each way), with the events arriving 300 ms after
/// the commits (a slow broker): the first wait is armed far behind the replica, and each wait
/// reaches it after the next heartbeat was applied. Every wait's start tells where the replica
/// is, so the next one is armed there, not one number on: armed one number at a time, the
/// chain fell further behind with every wait (~2 ms a heartbeat), and every record became an
/// upper bound hundreds of ms too high. Records stay within a round trip of the truth.
#[test]
fn a_wait_chain_behind_the_replica_moves_to_where_the_replica_is() {
    const HALF_RTT: i64 = 6 * MS;
    const EVENT_LATE: i64 = 300 * MS;
    const LAST: i64 = 100;
    let mut s = settings(ReaderMethod::GtidWait);
    s.prearm_depth = 1;
    let mut h = Harness::with(s);
    // The replica's clock is the reader's.
    h.t.set_replica_clock(Some(ClockOffset {
        offset_us: 0,
        uncertainty_us: 0,
    }));
    let applied = |k: i64| commit(k) + MS;
    let position_at = |t: i64| ((t - T0 - 2 * MS).max(0) / INTERVAL) as u64;
    let mut next_announce = 1;
    let end = commit(LAST) + EVENT_LATE + 100 * MS;
    loop {
        // The earliest of: the next announcement, a wait's answer, a wake-up the tracker asked.
        let announce_at = (next_announce <= LAST).then(|| commit(next_announce) + EVENT_LATE);
        let answer = h
            .waits
            .iter()
            .map(|&(n, armed, _)| {
                let began = armed + HALF_RTT;
                let at_start = position_at(began);
                let woke = if at_start >= n {
                    began
                } else {
                    applied(n as i64).max(began)
                };
                (woke + HALF_RTT, n, armed, began, woke, at_start)
            })
            .min();
        let wake = h.wake();
        let at = [announce_at, answer.map(|a| a.0), wake]
            .into_iter()
            .flatten()
            .min()
            .expect("something to do");
        if at > end {
            break;
        }
        if Some(at) == announce_at {
            h.announce(at, next_announce, true);
            next_announce += 1;
        } else if let Some((returned, n, armed, began, woke, at_start)) =
            answer.filter(|a| a.0 == at)
        {
            h.waits.retain(|w| w.0 != n);
            h.feed(
                returned,
                Event::WaitReturned {
                    key: key(n),
                    armed_at: local(armed),
                    returned_at: local(returned),
                    server: Some(ServerTimes {
                        began_us: local(began),
                        woke_us: local(woke),
                        position: Some(at_start),
                    }),
                    outcome: WaitOutcome::Reached {
                        already: Some(at_start >= n),
                    },
                },
            );
        } else {
            h.tick(at);
        }
    }
    // The first wait went out when the first event arrived, 300 ms after heartbeat 1: the
    // ones before it were first seen by it, upper bounds that far off (a reader that starts
    // late can do no better). Those written since are seen within a round trip.
    let truth = MS;
    let first_look = commit(1) + EVENT_LATE + HALF_RTT;
    for seq in (1..=LAST).filter(|s| commit(*s) > first_look) {
        let r = h.record(seq);
        assert_eq!(r.status, MeasureStatus::Ok, "{r:?}");
        assert!(
            (r.delay_us - truth).abs() <= 2 * HALF_RTT,
            "seq {seq} within a round trip of its true delay: {r:?}"
        );
    }
}
