//! From observations to a delay: the one place that decides what a measurement means.
//!
//! Every method reduces to two facts about a heartbeat on a replica: a moment it was *not yet*
//! visible (a GTID wait that blocked, a read that saw an older seq) and a moment it *was* (the
//! wait returned, the read saw it). Visibility lies between them, and never before the commit.
//! The estimate is the middle of that interval and the uncertainty its half-width. When no look
//! after the commit saw it missing and the interval is not tight (the first look after the
//! commit already saw it, e.g. a wait started only when the Kafka event arrived), only the upper
//! end means anything: the delay is reported as that upper bound and flagged.
//!
//! All times here are primary-clock microseconds (the caller converts local readings with the
//! clock-offset estimate and passes that estimate's uncertainty).

/// What a method saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Latest moment the replica was seen not to show the heartbeat, if any.
    pub not_yet_at_us: Option<i64>,
    /// Moment the replica was seen to show it.
    pub seen_at_us: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Measured {
    pub delay_us: i64,
    pub uncertainty_us: i64,
    pub upper_bound: bool,
}

/// Delay of a heartbeat committed at `committed_at_us`, with `clock_uncertainty_us` from the
/// offset estimate. An interval that starts at the commit counts as measured when it is at most
/// `tight_us` wide (reads that were already running when the heartbeat was written).
pub fn measure(
    committed_at_us: i64,
    obs: Observation,
    clock_uncertainty_us: i64,
    tight_us: i64,
) -> Measured {
    let seen = obs.seen_at_us.max(committed_at_us);
    let bracketed = match obs.not_yet_at_us {
        Some(not_yet) => not_yet > committed_at_us || seen - committed_at_us <= tight_us,
        None => false,
    };
    if !bracketed {
        return Measured {
            delay_us: seen - committed_at_us,
            uncertainty_us: clock_uncertainty_us,
            upper_bound: true,
        };
    }
    let lower = obs
        .not_yet_at_us
        .unwrap_or(committed_at_us)
        .clamp(committed_at_us, seen);
    let half = (seen - lower) / 2;
    Measured {
        delay_us: lower + half - committed_at_us,
        uncertainty_us: half + clock_uncertainty_us,
        upper_bound: false,
    }
}

/// A GTID wait armed at `armed_at_us` that returned at `returned_at_us`, `one_way_us` being
/// half the replica's fastest round trip. The replica wakes the wait when it applies the
/// transaction, so the return marks visibility, as long as the wait really blocked. The server
/// says so (`already`: the replica's position just before waiting already had it, see
/// `Dialect::gtid_included`); when it cannot tell, only a wait armed before the commit
/// (nothing is visible before its commit) counts as blocked. How long the answer took proves
/// nothing: on a busy host an immediate answer can take milliseconds to be handled.
pub fn gtid_wait_observation(
    committed_at_us: i64,
    armed_at_us: i64,
    returned_at_us: i64,
    one_way_us: i64,
    already: Option<bool>,
) -> Observation {
    let seen = returned_at_us - one_way_us;
    let blocked = match already {
        Some(already) => !already,
        None => armed_at_us + one_way_us <= committed_at_us,
    };
    Observation {
        not_yet_at_us: blocked.then_some(seen),
        seen_at_us: seen,
    }
}

/// A read that saw the heartbeat at `seen_read_us` (middle of its round trip), after a read that
/// did not, at `not_yet_read_us`: consecutive reads always bracket the moment it appeared.
pub fn read_observation(not_yet_read_us: Option<i64>, seen_read_us: i64) -> Observation {
    Observation {
        not_yet_at_us: not_yet_read_us,
        seen_at_us: seen_read_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIGHT: i64 = 5_000;

    #[test]
    fn blocked_wait_measures_exactly() {
        // Armed 8 ms before the commit, returned 2 ms after it (+60 us one way).
        let obs = gtid_wait_observation(10_000, 2_000, 12_060, 60, None);
        assert_eq!(obs.not_yet_at_us, Some(12_000));
        let m = measure(10_000, obs, 40, TIGHT);
        assert_eq!(
            m,
            Measured {
                delay_us: 2_000,
                uncertainty_us: 40,
                upper_bound: false
            }
        );
    }

    #[test]
    fn immediate_wait_after_commit_is_an_upper_bound() {
        // Armed 5 ms after the commit (event-triggered), answered at once.
        let obs = gtid_wait_observation(10_000, 15_000, 15_150, 60, Some(true));
        assert_eq!(obs.not_yet_at_us, None);
        let m = measure(10_000, obs, 40, TIGHT);
        assert!(m.upper_bound);
        assert_eq!(m.delay_us, 5_090);
    }

    #[test]
    fn wait_armed_after_commit_that_blocks_is_exact() {
        // Armed 5 ms after the commit but the replica was stalled: returned 200 ms later.
        let obs = gtid_wait_observation(10_000, 15_000, 215_060, 60, Some(false));
        let m = measure(10_000, obs, 40, TIGHT);
        assert!(!m.upper_bound);
        assert_eq!(m.delay_us, 205_000);
    }

    #[test]
    fn a_slow_answer_is_not_a_wait_that_blocked() {
        // Armed after the commit, answered 30 ms later by a busy reader: the server says the
        // replica already had it, so it is an upper bound, not 25 ms of lag.
        let obs = gtid_wait_observation(10_000, 15_000, 45_000, 60, Some(true));
        assert!(measure(10_000, obs, 40, TIGHT).upper_bound);
        // Without the server's word, only arming before the commit counts.
        let obs = gtid_wait_observation(10_000, 15_000, 45_000, 60, None);
        assert!(measure(10_000, obs, 40, TIGHT).upper_bound);
    }

    #[test]
    fn reads_bracket_visibility() {
        // Missed at 11.0 ms, seen at 12.0 ms, commit at 10 ms: visibility in (11, 12].
        let m = measure(10_000, read_observation(Some(11_000), 12_000), 30, TIGHT);
        assert_eq!(
            m,
            Measured {
                delay_us: 1_500,
                uncertainty_us: 530,
                upper_bound: false
            }
        );
        // Missed just before the commit, seen 0.8 ms after it: (commit, 10.8], tight.
        let m = measure(10_000, read_observation(Some(9_000), 10_800), 0, TIGHT);
        assert_eq!(
            (m.delay_us, m.uncertainty_us, m.upper_bound),
            (400, 400, false)
        );
        // A stalled replica, missed long after the commit and seen 100 ms later: a wide but
        // real bracket.
        let m = measure(10_000, read_observation(Some(150_000), 250_000), 0, TIGHT);
        assert_eq!((m.delay_us, m.upper_bound), (190_000, false));
        // The first read after the commit came 20 ms later and saw it: only an upper bound.
        let m = measure(10_000, read_observation(Some(1_000), 30_000), 0, TIGHT);
        assert!(m.upper_bound);
        assert_eq!(m.delay_us, 20_000);
    }

    #[test]
    fn never_negative() {
        // Clock offset error can put the sighting before the commit.
        let obs = Observation {
            not_yet_at_us: Some(9_900),
            seen_at_us: 9_950,
        };
        let m = measure(10_000, obs, 100, TIGHT);
        assert_eq!(m.delay_us, 0);
        assert!(m.uncertainty_us >= 100);
    }
}
