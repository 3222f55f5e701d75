//! What the reader accepts from the heartbeat-set topic: a record decodes and its numbers are
//! ones a writer announces. Anything else goes to dead-letter with the reason before any
//! arithmetic sees it (a seq, commit time or GTID number near the ends of i64 would wrap).

use super::gtid::GtidKey;
use millilag_core::events::{HeartbeatSet, Record};

/// 2000-01-01: no heartbeat was committed before.
const EARLIEST_COMMIT_US: i64 = 946_684_800_000_000;
/// How far ahead of the reader's clock a commit time may be: clocks are NTP-kept; beyond a day
/// a writer's clock is broken, not skewed.
const MAX_AHEAD_US: i64 = 86_400_000_000;
/// The writer's interval is at most 60 s; 0 is "unknown" (records from before the field).
const MAX_INTERVAL_US: i64 = 3_600_000_000;
/// Seqs and GTID numbers count heartbeats: 2^53 at 1 ms lasts 285,000 years.
const MAX_COUNT: i64 = 1 << 53;

/// Decode a heartbeat-set record and refuse numbers no writer announces.
pub fn decode_heartbeat(bytes: &[u8], now_us: i64) -> Result<HeartbeatSet, String> {
    let e = HeartbeatSet::decode(bytes).map_err(|e| e.to_string())?;
    match heartbeat_problem(&e, now_us) {
        Some(why) => Err(why),
        None => Ok(e),
    }
}

/// Why `e` cannot be measured, if it cannot.
pub fn heartbeat_problem(e: &HeartbeatSet, now_us: i64) -> Option<String> {
    if !(1..=MAX_COUNT).contains(&e.seq) {
        return Some(format!("seq {} is outside 1..2^53", e.seq));
    }
    if e.committed_at_us < EARLIEST_COMMIT_US
        || e.committed_at_us > now_us.saturating_add(MAX_AHEAD_US)
    {
        return Some(format!(
            "commit time {} us is before 2000 or more than a day ahead of the reader's clock ({now_us} us): the primary's clock is wrong",
            e.committed_at_us
        ));
    }
    if !(0..=MAX_INTERVAL_US).contains(&e.interval_us) {
        return Some(format!("interval {} us is outside 0..1h", e.interval_us));
    }
    if let Some(g) = e.gtid.as_deref() {
        if let Some(k) = GtidKey::parse(g) {
            if k.n == 0 || k.n > MAX_COUNT as u64 {
                return Some(format!("GTID {g}: its number is outside 1..2^53"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_000_000_000_000;

    fn ok() -> HeartbeatSet {
        HeartbeatSet {
            cluster: "main".into(),
            primary: "db1:3306".into(),
            server_id: 1,
            writer_id: "w1".into(),
            writer_epoch: 1,
            seq: 5,
            committed_at_us: NOW,
            gtid: Some("77-1-5".into()),
            binlog_file: None,
            binlog_pos: None,
            interval_us: 10_000,
            commit_rtt_us: 500,
        }
    }

    #[test]
    fn numbers_no_writer_announces_are_refused_with_the_reason() {
        assert_eq!(heartbeat_problem(&ok(), NOW), None);
        type Spoil = fn(&mut HeartbeatSet);
        let cases: [(Spoil, &str); 6] = [
            (|e| e.seq = 0, "seq 0"),
            (|e| e.seq = i64::MAX, "seq 9223372036854775807"),
            (|e| e.committed_at_us = i64::MIN, "before 2000"),
            (
                |e| e.committed_at_us = NOW + 2 * 86_400_000_000,
                "a day ahead",
            ),
            (|e| e.interval_us = -1, "interval -1"),
            (
                |e| e.gtid = Some("77-1-18446744073709551615".into()),
                "GTID 77-1-",
            ),
        ];
        for (spoil, said) in cases {
            let mut e = ok();
            spoil(&mut e);
            let why = heartbeat_problem(&e, NOW).expect("refused");
            assert!(why.contains(said), "{why:?} should say {said:?}");
        }
    }
}
