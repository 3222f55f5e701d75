use super::*;

const MS: i64 = 1_000;
const INTERVAL: i64 = 10 * MS;

fn primary(seq: u64, ts_us: i64) -> PrimaryRow {
    PrimaryRow {
        server_id: 1,
        seq,
        ts_us,
        read_at_us: ts_us + 2 * MS,
    }
}

fn row(seq: u64, ts_us: i64, at: i64) -> ReplicaRead {
    ReplicaRead::Row {
        seq,
        ts_us,
        at_primary_us: at,
        uncertainty_us: 300,
    }
}

fn obs(replica: &str, read: ReplicaRead) -> ReplicaObs {
    ReplicaObs {
        replica: replica.into(),
        read,
        stopped: None,
    }
}

const T: Thresholds = Thresholds {
    critical_us: 500 * MS,
    warning_us: Some(100 * MS),
};

#[test]
fn live_lag_is_zero_when_caught_up_exact_one_behind_and_interpolated_further() {
    let p = primary(100, 1_000 * MS);
    assert_eq!(
        live_lag_us(&p, 100, 1_000 * MS, 1_003 * MS, INTERVAL),
        (0, Basis::CaughtUp)
    );
    // It already shows a heartbeat newer than the primary read: still caught up.
    assert_eq!(live_lag_us(&p, 101, 1_010 * MS, 1_013 * MS, INTERVAL).0, 0);
    // One behind: the missing heartbeat is the primary's newest, its ts is known.
    assert_eq!(
        live_lag_us(&p, 99, 990 * MS, 1_004 * MS, INTERVAL),
        (4 * MS, Basis::NextIsNewest)
    );
    // A 2 s stall: the replica's newest is seq 0 + ... at 0.990 s before; next due 10 ms later.
    let p = primary(300, 3_000 * MS);
    assert_eq!(
        live_lag_us(&p, 100, 1_000 * MS, 3_002 * MS, INTERVAL),
        (1_992 * MS, Basis::Interpolated)
    );
    // Never later than the primary's newest, never negative.
    assert_eq!(
        live_lag_us(&p, 298, 2_999 * MS, 3_002 * MS, 50 * MS).0,
        2 * MS
    );
    assert_eq!(live_lag_us(&p, 99, 990 * MS, 900 * MS, INTERVAL).0, 0);
}

#[test]
fn pt_heartbeat_rows_without_seq_fall_back_to_the_age_of_ts() {
    let p = primary(0, 1_000 * MS);
    assert_eq!(
        live_lag_us(&p, 0, 700 * MS, 1_001 * MS, INTERVAL),
        (301 * MS, Basis::Timestamp)
    );
}

#[test]
fn states_follow_thresholds_stopped_threads_and_failures() {
    let reading = ClusterReading {
        cluster: "main".into(),
        primary: Ok(primary(1000, 10_000 * MS)),
        replicas: vec![
            obs("r-ok", row(1000, 10_000 * MS, 10_003 * MS)),
            obs("r-warn", row(980, 9_800 * MS, 10_003 * MS)),
            obs("r-crit", row(900, 9_000 * MS, 10_003 * MS)),
            ReplicaObs {
                stopped: Some("SQL thread not running".into()),
                ..obs("r-stopped", row(999, 9_990 * MS, 10_003 * MS))
            },
            obs(
                "r-down",
                ReplicaRead::Unreachable("connection refused".into()),
            ),
            obs("r-norow", ReplicaRead::NoRow),
        ],
        interval_us: INTERVAL,
    };
    let lines = assess(&reading, T);
    let got: Vec<(&str, Option<i64>, State)> = lines
        .iter()
        .map(|l| (l.replica.as_str(), l.delay_us, l.state))
        .collect();
    assert_eq!(
        got,
        [
            ("r-ok", Some(0), State::Ok),
            ("r-warn", Some(193 * MS), State::Warning),
            ("r-crit", Some(993 * MS), State::Critical),
            ("r-stopped", Some(3 * MS), State::Critical),
            ("r-down", None, State::Critical),
            ("r-norow", None, State::Critical),
        ]
    );
    assert!(lines[3].detail.contains("replication stopped: SQL thread"));
    assert!(lines[5].detail.contains("server_id 1"));

    let (state, text) = report(&lines, T);
    assert_eq!(state, State::Critical);
    let first = text.lines().next().unwrap();
    assert!(
        first.starts_with("MILLILAG CRITICAL - 5 of 6 replicas: main/r-warn 0.193s WARNING, main/r-crit 0.993s CRITICAL"),
        "{first}"
    );
    assert!(
        first.ends_with("'main/r-ok'=0.000000s;0.100000;0.500000;0 'main/r-warn'=0.193000s;0.100000;0.500000;0 'main/r-crit'=0.993000s;0.100000;0.500000;0 'main/r-stopped'=0.003000s;0.100000;0.500000;0"),
        "{first}"
    );
    assert_eq!(
        text.lines().nth(1).unwrap(),
        "main r-ok 0.000s ±0.3ms OK caught up (seq 1000)"
    );
    assert_eq!(
        text.lines().nth(5).unwrap(),
        "main r-down - - CRITICAL unreachable: connection refused"
    );
}

#[test]
fn all_ok_reports_the_highest_delay_and_exit_0() {
    let reading = ClusterReading {
        cluster: "main".into(),
        primary: Ok(primary(10, 100 * MS)),
        replicas: vec![
            obs("a", row(10, 100 * MS, 101 * MS)),
            obs("b", row(9, 90 * MS, 103 * MS)),
        ],
        interval_us: INTERVAL,
    };
    let t = Thresholds {
        critical_us: 500 * MS,
        warning_us: None,
    };
    let (state, text) = report(&assess(&reading, t), t);
    assert_eq!((state, state.exit_code()), (State::Ok, 0));
    assert!(
        text.starts_with("MILLILAG OK - 2 replicas, highest delay 0.003s (main/b) | 'main/a'=0.000000s;;0.500000;0"),
        "{text}"
    );
}

#[test]
fn no_primary_or_a_stale_heartbeat_is_unknown() {
    let mut reading = ClusterReading {
        cluster: "main".into(),
        primary: Err("primary 127.0.0.1:3306 unreachable: refused".into()),
        replicas: vec![obs("a", row(10, 100 * MS, 101 * MS))],
        interval_us: INTERVAL,
    };
    let lines = assess(&reading, T);
    assert_eq!(lines[0].state, State::Unknown);
    assert!(lines[0].detail.contains("unreachable"));
    assert_eq!(report(&lines, T).0.exit_code(), 3);

    // The writer stopped 5 s ago: the replica looks caught up, but nobody knows.
    let mut p = primary(10, 100 * MS);
    p.read_at_us = p.ts_us + 5_000 * MS;
    reading.primary = Ok(p);
    let lines = assess(&reading, T);
    assert_eq!(lines[0].state, State::Unknown);
    assert!(
        lines[0].detail.contains("5.000s old"),
        "{}",
        lines[0].detail
    );
    assert_eq!(stale_after_us(INTERVAL), 1_000 * MS);
    assert_eq!(stale_after_us(1_000 * MS), 10_000 * MS);
}

#[test]
fn the_worst_state_wins_critical_over_warning_over_unknown() {
    use State::*;
    assert_eq!(State::worst([Ok, Unknown, Warning]), Warning);
    assert_eq!(State::worst([Unknown, Critical, Warning]), Critical);
    assert_eq!(State::worst([Ok, Unknown]), Unknown);
    assert_eq!(State::worst([Ok, Ok]), Ok);
    assert_eq!(State::worst([]), Unknown);
    assert_eq!(
        [Ok, Warning, Critical, Unknown].map(State::exit_code),
        [0, 1, 2, 3]
    );
}
