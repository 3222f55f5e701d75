//! Decoding `replica-delay` records on the hot path without allocating.
//!
//! [`ReplicaDelay`](millilag_core::events::ReplicaDelay) owns four Strings; the processor needs
//! only the two names (to look up an interned key) and a few numbers. [`DelayView`] borrows the
//! names straight from the Kafka payload. It decodes with the same writer-schema lookup as the
//! core codec (single-object header, current schema or any published version), so a record the
//! core codec accepts is accepted here with the same values (`view_matches_the_core_codec`).

use millilag_core::events::{DecodeError, MeasureStatus, Record, ReplicaDelay};
use serde::Deserialize;

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// The fields of a `replica-delay` record that windows need, borrowing from the payload.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct DelayView<'a> {
    #[serde(borrow)]
    pub cluster: &'a str,
    #[serde(borrow)]
    pub replica: &'a str,
    pub seq: i64,
    #[serde(default)]
    pub committed_at_us: i64,
    pub delay_us: i64,
    pub status: MeasureStatus,
    #[serde(default)]
    pub upper_bound: bool,
    pub observed_at_us: i64,
}

impl DelayView<'_> {
    /// Same rule as [`ReplicaDelay::event_time_us`]: the primary-clock commit time, or for v1
    /// records observation time minus delay.
    pub fn event_time_us(&self) -> i64 {
        if self.committed_at_us != 0 {
            self.committed_at_us
        } else {
            self.observed_at_us.saturating_sub(self.delay_us)
        }
    }
}

/// Why a record's cluster or replica name cannot become a point, if it cannot: empty, or
/// holding what line protocol cannot carry (see [`millilag_core::names`]). Such a record is
/// dead-lettered with this reason where it enters, instead of breaking a sink's request.
pub fn name_problem(r: &DelayView<'_>) -> Option<String> {
    [("cluster", r.cluster), ("replica", r.replica)]
        .into_iter()
        .find_map(|(what, name)| {
            millilag_core::names::name_problem(name)
                .map(|why| format!("{what} name {name:?} {why}"))
        })
}

/// Why a record's times cannot be trusted, if they cannot. Its commit time is more than
/// `max_skew_us` ahead of the processor's clock (`now_us`): the primary's clock is ahead. Or
/// older than `max_age_us`. Or more than `max_skew_us` behind the newest commit time already
/// seen for its replica (`newest_us`) although the reader published it just now
/// (`published_ms`, its Kafka timestamp, within `max_skew_us` of `now_us`): the primary's clock
/// stepped back (a backlog read late has old Kafka timestamps, and a reader publishes a
/// replica's records in order). Applied, such a record would move a watermark hours ahead or
/// fall in windows closed long ago; refused, the replica shows as missing instead.
pub fn time_problem(
    r: &DelayView<'_>,
    published_ms: Option<i64>,
    newest_us: Option<i64>,
    now_us: i64,
    max_skew_us: i64,
    max_age_us: i64,
) -> Option<String> {
    let t = r.event_time_us();
    if t > now_us.saturating_add(max_skew_us) {
        return Some(format!(
            "commit time {t} is {} ahead of the processor's clock (processor.max_clock_skew {}): the primary's clock is wrong",
            secs(t - now_us),
            secs(max_skew_us)
        ));
    }
    if now_us.saturating_sub(t) > max_age_us {
        return Some(format!(
            "commit time {t} is {} old, beyond processor.max_event_age {}",
            secs(now_us - t),
            secs(max_age_us)
        ));
    }
    let newest = newest_us?;
    let published_us = published_ms?.saturating_mul(1000);
    let behind = newest.saturating_sub(t);
    let fresh = now_us.saturating_sub(published_us).abs() <= max_skew_us;
    (behind > max_skew_us && fresh).then(|| {
        format!(
            "commit time {t} is {} behind this replica's newest ({newest}) yet published just now (processor.max_clock_skew {}): the primary's clock stepped back",
            secs(behind),
            secs(max_skew_us)
        )
    })
}

fn secs(us: i64) -> String {
    format!("{:.3}s", us as f64 / 1e6)
}

/// Decode one payload. Errors are the core codec's, so dead-letter reasons read the same.
pub fn decode(bytes: &[u8]) -> Result<DelayView<'_>, DecodeError> {
    const NAME: &str = ReplicaDelay::NAME;
    let header: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(DecodeError::Truncated {
            record: NAME,
            len: bytes.len(),
        })?;
    if header[..2] != MAGIC {
        return Err(DecodeError::BadMagic {
            record: NAME,
            found: [header[0], header[1]],
        });
    }
    let fingerprint = &header[2..];
    let writer = ReplicaDelay::codec()
        .versions()
        .iter()
        .find(|s| s.rabin_fingerprint()[..] == *fingerprint)
        .ok_or_else(|| DecodeError::UnknownFingerprint {
            record: NAME,
            fingerprint: hex::encode(fingerprint),
        })?;
    serde_avro_fast::from_datum_slice(&bytes[HEADER_LEN..], writer).map_err(|e| DecodeError::Body {
        record: NAME,
        fingerprint: hex::encode(fingerprint),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use millilag_core::events::MeasureMethod;

    fn record(seq: i64, status: MeasureStatus) -> ReplicaDelay {
        ReplicaDelay {
            cluster: "main".into(),
            replica: "127.0.0.1:3307".into(),
            primary: "127.0.0.1:3306".into(),
            seq,
            committed_at_us: 1_763_000_000_123_456,
            delay_us: 1_873,
            uncertainty_us: 120,
            method: MeasureMethod::GtidWait,
            status,
            upper_bound: true,
            observed_at_us: 1_763_000_000_125_329,
            reader_id: "r1".into(),
            queries: 1,
        }
    }

    #[test]
    fn view_matches_the_core_codec() {
        for status in MeasureStatus::ALL {
            let r = record(42, status);
            let bytes = r.encode().unwrap();
            let v = decode(&bytes).unwrap();
            assert_eq!(v.cluster, r.cluster);
            assert_eq!(v.replica, r.replica);
            assert_eq!(v.seq, r.seq);
            assert_eq!(v.delay_us, r.delay_us);
            assert_eq!(v.status, r.status);
            assert_eq!(v.upper_bound, r.upper_bound);
            assert_eq!(v.event_time_us(), r.event_time_us());
        }
    }

    /// The v1 schema's fields, in order (no committed_at_us, upper_bound, queries).
    #[derive(serde::Serialize)]
    struct V1<'a> {
        cluster: &'a str,
        replica: &'a str,
        primary: &'a str,
        seq: i64,
        delay_us: i64,
        uncertainty_us: i64,
        method: MeasureMethod,
        status: MeasureStatus,
        observed_at_us: i64,
        reader_id: &'a str,
    }

    #[test]
    fn v1_records_decode_with_event_time_from_observation() {
        let codec = ReplicaDelay::codec();
        let r = record(7, MeasureStatus::Ok);
        let old = V1 {
            cluster: &r.cluster,
            replica: &r.replica,
            primary: &r.primary,
            seq: r.seq,
            delay_us: r.delay_us,
            uncertainty_us: r.uncertainty_us,
            method: r.method,
            status: r.status,
            observed_at_us: r.observed_at_us,
            reader_id: &r.reader_id,
        };
        let bytes = codec.encode_with(&codec.versions()[2], &old).unwrap();
        let v = decode(&bytes).unwrap();
        assert_eq!(v.committed_at_us, 0);
        assert!(!v.upper_bound);
        assert_eq!(v.event_time_us(), r.observed_at_us - r.delay_us);
        assert_eq!(v.seq, 7);
    }

    #[test]
    fn a_primary_clock_off_by_an_hour_either_way_is_refused() {
        const S: i64 = 1_000_000;
        let now = 1_763_000_000 * S;
        let (skew, age) = (60 * S, 7 * 24 * 3600 * S);
        let bytes = record(1, MeasureStatus::Ok).encode().unwrap();
        let mut r = decode(&bytes).unwrap();
        r.committed_at_us = now - 2 * S;
        r.observed_at_us = now - S;
        let published = Some((now - S + 300) / 1000);
        let newest = Some(now - 3 * S);
        assert_eq!(time_problem(&r, published, newest, now, skew, age), None);
        assert_eq!(time_problem(&r, None, None, now, skew, age), None);
        // Stepped forward an hour.
        let mut ahead = r;
        ahead.committed_at_us += 3_600 * S;
        let why = time_problem(&ahead, published, newest, now, skew, age).unwrap();
        assert!(why.contains("ahead of the processor's clock"), "{why}");
        // Stepped back an hour: an hour behind the replica's newest, published just now.
        let mut behind = r;
        behind.committed_at_us -= 3_600 * S;
        let why = time_problem(&behind, published, newest, now, skew, age).unwrap();
        assert!(why.contains("stepped back"), "{why}");
        // The same record read from a backlog an hour late, or late by less than the skew, is
        // not refused (the window rules count it late if it is).
        let old_publish = Some((now - 3_600 * S) / 1000);
        assert_eq!(
            time_problem(&behind, old_publish, newest, now, skew, age),
            None
        );
        let mut late = r;
        late.committed_at_us -= 30 * S;
        assert_eq!(time_problem(&late, published, newest, now, skew, age), None);
        let mut ancient = r;
        ancient.committed_at_us -= 8 * 24 * 3600 * S;
        let why = time_problem(&ancient, None, None, now, skew, age).unwrap();
        assert!(why.contains("max_event_age"), "{why}");
    }

    #[test]
    fn names_no_sink_can_carry_are_refused_naming_the_field() {
        let bytes = record(1, MeasureStatus::Ok).encode().unwrap();
        let ok = decode(&bytes).unwrap();
        assert_eq!(name_problem(&ok), None);
        let odd = DelayView {
            replica: "db 2,x=\"1\"",
            ..ok
        };
        assert_eq!(
            name_problem(&odd),
            None,
            "escaped by the sinks, not refused"
        );
        let empty = DelayView { replica: "", ..ok };
        let why = name_problem(&empty).unwrap();
        assert!(why.starts_with("replica name \"\" is empty"), "{why}");
        let newline = DelayView {
            cluster: "ma\nin",
            ..ok
        };
        let why = name_problem(&newline).unwrap();
        assert!(
            why.starts_with("cluster name \"ma\\nin\" contains a control"),
            "{why}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]

        /// The borrowing decoder agrees with the core codec on any body behind any published
        /// replica-delay header, and on valid records with bytes changed: what the codec
        /// accepts it reads with the same values, errors are of the same kind, never a panic.
        #[test]
        fn view_agrees_with_the_core_codec_on_any_bytes(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120),
            version in proptest::prelude::any::<proptest::sample::Index>(),
            changes in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                0..4,
            ),
        ) {
            let versions = ReplicaDelay::codec().versions();
            let mut arbitrary = vec![0xC3, 0x01];
            arbitrary.extend_from_slice(version.get(versions).rabin_fingerprint());
            arbitrary.extend_from_slice(&body);
            let mut changed = record(3, MeasureStatus::Timeout).encode().unwrap();
            for (i, b) in &changes {
                let i = i.index(changed.len());
                changed[i] = *b;
            }
            for bytes in [arbitrary, changed] {
                match (decode(&bytes), ReplicaDelay::decode(&bytes)) {
                    (Ok(v), Ok(r)) => {
                        proptest::prop_assert_eq!((v.cluster, v.replica), (&*r.cluster, &*r.replica));
                        proptest::prop_assert_eq!((v.seq, v.status), (r.seq, r.status));
                        proptest::prop_assert_eq!(v.event_time_us(), r.event_time_us());
                    }
                    // The view skips fields it does not need, so it may stumble later in
                    // the body: the same kind of error, not always the same words.
                    (Err(a), Err(b)) => proptest::prop_assert_eq!(
                        std::mem::discriminant(&a),
                        std::mem::discriminant(&b)
                    ),
                    // Fields the view skips are not checked (a `reader_id` that is not
                    // UTF-8, a `method` out of range): it may accept what the codec refuses,
                    // never the other way round.
                    (Ok(_), Err(_)) => {}
                    (Err(a), Ok(b)) => proptest::prop_assert!(false, "view {:?}, codec {:?}", a, b),
                }
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(b"xy"), Err(DecodeError::Truncated { .. })));
        assert!(matches!(
            decode(b"not avro at all"),
            Err(DecodeError::BadMagic { .. })
        ));
        let mut bytes = record(1, MeasureStatus::Ok).encode().unwrap();
        bytes.truncate(14);
        assert!(matches!(decode(&bytes), Err(DecodeError::Body { .. })));
    }
}
