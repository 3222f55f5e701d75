//! Whatever a heartbeat-set record from Kafka carries (seq, commit time, interval, GTID number
//! at the ends of i64) and whatever the clocks say, the tracker neither panics (debug overflow
//! checks) nor wraps (release), and what it keeps stays bounded.

use super::*;
use millilag_core::config::ReaderMethod;
use millilag_core::events::HeartbeatSet;
use proptest::prelude::*;

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1i64),
        Just(0i64),
        Just(1i64),
        Just(i64::MAX),
        1_700_000_000_000_000i64..1_700_000_100_000_000,
        any::<i64>(),
    ]
}

/// A clock reading (local or a server's): anything from 1970 to 2096, mostly around now.
fn time() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 1_700_000_000_000_000i64..1_700_000_100_000_000,
        1 => 0i64..4_000_000_000_000_000,
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Announce {
        seq: i64,
        committed_at_us: i64,
        interval_us: i64,
        gtid_n: Option<u64>,
    },
    WaitReturned {
        n: u64,
        armed_at: i64,
        returned_at: i64,
        server: Option<(i64, i64)>,
        reached: bool,
    },
    Read {
        sent_at: i64,
        returned_at: i64,
        seq: i64,
        server_at: Option<i64>,
    },
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (
            prop_oneof![3 => 1i64..60, 1 => extreme_i64()],
            prop_oneof![3 => time(), 1 => extreme_i64()],
            prop_oneof![3 => 0i64..100_000, 1 => extreme_i64()],
            proptest::option::of(prop_oneof![
                3 => 1u64..60,
                1 => prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]
            ])
        )
            .prop_map(
                |(seq, committed_at_us, interval_us, gtid_n)| Step::Announce {
                    seq,
                    committed_at_us,
                    interval_us,
                    gtid_n
                }
            ),
        (
            prop_oneof![Just(u64::MAX), any::<u64>(), 1u64..50],
            time(),
            time(),
            proptest::option::of((time(), time())),
            any::<bool>()
        )
            .prop_map(
                |(n, armed_at, returned_at, server, reached)| Step::WaitReturned {
                    n,
                    armed_at,
                    returned_at,
                    server,
                    reached
                }
            ),
        (time(), time(), extreme_i64(), proptest::option::of(time())).prop_map(
            |(sent_at, returned_at, seq, server_at)| Step::Read {
                sent_at,
                returned_at,
                seq,
                server_at
            }
        ),
        Just(Step::Tick),
    ]
}

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_numbers_from_kafka_or_the_clocks_never_panic(
        poll in any::<bool>(),
        steps in proptest::collection::vec((step(), time()), 1..60),
        clock in proptest::option::of((
            -4_000_000_000_000_000i64..4_000_000_000_000_000,
            0i64..4_000_000_000_000_000,
        )),
    ) {
        let method = if poll { ReaderMethod::Poll } else { ReaderMethod::GtidWait };
        let who = Identity {
            cluster: "main".into(),
            replica: "db2:3306".into(),
            reader_id: "r1".into(),
        };
        let mut t: Tracker<u32> = Tracker::new(settings(method), who, 1_700_000_000_000_000);
        if let Some((offset_us, uncertainty_us)) = clock {
            t.set_clock(ClockOffset { offset_us, uncertainty_us });
            t.set_replica_clock(Some(ClockOffset { offset_us: -offset_us, uncertainty_us }));
        }
        let _ = t.handle(1_700_000_000_000_000, Event::Connected { one_way_us: 50 }).count();
        for (i, (s, now)) in steps.into_iter().enumerate() {
            let event = match s {
                Step::Announce { seq, committed_at_us, interval_us, gtid_n } => {
                    let event = HeartbeatSet {
                        cluster: "main".into(),
                        primary: "db1:3306".into(),
                        server_id: 1,
                        writer_id: "w1".into(),
                        writer_epoch: 1,
                        seq,
                        committed_at_us,
                        gtid: gtid_n.map(|n| format!("77-1-{n}")),
                        binlog_file: None,
                        binlog_pos: None,
                        interval_us,
                        commit_rtt_us: 500,
                    };
                    // What the reader's input refuses never reaches the tracker.
                    if crate::reader::input::heartbeat_problem(&event, now).is_some() {
                        continue;
                    }
                    Event::announced(Arc::new(event), i as u32)
                }
                Step::WaitReturned { n, armed_at, returned_at, server, reached } => Event::WaitReturned {
                    key: GtidKey { sequence: "77-1-".into(), n },
                    armed_at,
                    returned_at,
                    server: server.map(|(began_us, woke_us)| ServerTimes { began_us, woke_us, position: None }),
                    outcome: if reached {
                        WaitOutcome::Reached { already: Some(false) }
                    } else {
                        WaitOutcome::TimedOut
                    },
                },
                Step::Read { sent_at, returned_at, seq, server_at } => Event::ReadReturned {
                    sent_at,
                    returned_at,
                    seq,
                    server_at,
                },
                Step::Tick => Event::Tick,
            };
            let _ = t.handle(now, event).count();
            let _ = t.next_wake();
            let _ = t.lag_us();
        }
    }
}
