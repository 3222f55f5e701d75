//! Whatever numbers a record from Kafka carries (seq, times, delays at the ends of i64), the
//! windows neither panic (debug: overflow checks) nor wrap (release), and stay bounded.

use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn extreme_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(-1i64),
        Just(0i64),
        Just(1i64),
        Just(i64::MAX - 1),
        Just(i64::MAX),
        // Plausible: around now, microseconds.
        1_700_000_000_000_000i64..1_800_000_000_000_000,
        any::<i64>(),
    ]
}

fn status() -> impl Strategy<Value = MeasureStatus> {
    prop_oneof![
        Just(MeasureStatus::Ok),
        Just(MeasureStatus::Timeout),
        Just(MeasureStatus::ReplicaUnreachable),
        Just(MeasureStatus::ReplicationStopped),
        Just(MeasureStatus::Skipped),
        Just(MeasureStatus::Pending),
    ]
}

#[derive(Debug, Clone)]
struct Rec {
    replica: u8,
    seq: i64,
    committed_at_us: i64,
    delay_us: i64,
    observed_at_us: i64,
    status: MeasureStatus,
    upper_bound: bool,
}

fn rec() -> impl Strategy<Value = Rec> {
    (
        0u8..3,
        extreme_i64(),
        extreme_i64(),
        extreme_i64(),
        extreme_i64(),
        status(),
        any::<bool>(),
    )
        .prop_map(
            |(replica, seq, committed_at_us, delay_us, observed_at_us, status, upper_bound)| Rec {
                replica,
                seq,
                committed_at_us,
                delay_us,
                observed_at_us,
                status,
                upper_bound,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_numbers_in_records_never_panic(
        recs in proptest::collection::vec(rec(), 1..40),
        nows in proptest::collection::vec(extreme_i64(), 1..4),
        interval in extreme_i64(),
    ) {
        let mut w = Windows::new(
            vec![Spec::new(Duration::from_secs(1)), Spec::new(Duration::from_secs(10))],
            Duration::from_millis(100),
        );
        let names = ["a", "b", "c"];
        let mut out = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            w.set_now(nows[i % nows.len()]);
            w.set_interval("main", interval);
            let v = DelayView {
                cluster: "main",
                replica: names[r.replica as usize],
                seq: r.seq,
                committed_at_us: r.committed_at_us,
                delay_us: r.delay_us,
                status: r.status,
                upper_bound: r.upper_bound,
                observed_at_us: r.observed_at_us,
            };
            w.apply(&v, 0, i as i64, &mut out);
            w.close_idle(nows[i % nows.len()], 5_000_000, &mut out);
            // Bounded: filling empty windows never runs away whatever the times.
            prop_assert!(out.len() < 1_000_000);
        }
        w.close_all(&mut out);
    }
}
