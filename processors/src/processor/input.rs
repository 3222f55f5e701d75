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
            self.observed_at_us - self.delay_us
        }
    }
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
