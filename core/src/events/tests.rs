use super::*;
use std::collections::BTreeSet;

pub(super) fn heartbeat() -> HeartbeatSet {
    HeartbeatSet {
        cluster: "main".into(),
        primary: "127.0.0.1:3306".into(),
        server_id: 1,
        writer_id: "w1".into(),
        writer_epoch: 1_763_000_000_000_000,
        seq: 42,
        committed_at_us: 1_763_000_000_123_456,
        gtid: Some("77-1-42".into()),
        binlog_file: Some("primary-bin.000001".into()),
        binlog_pos: Some(4242),
        interval_us: 10_000,
        commit_rtt_us: 350,
    }
}

pub(super) fn delay() -> ReplicaDelay {
    ReplicaDelay {
        cluster: "main".into(),
        replica: "127.0.0.1:3307".into(),
        primary: "127.0.0.1:3306".into(),
        seq: 42,
        committed_at_us: 1_763_000_000_123_456,
        delay_us: 1_873,
        uncertainty_us: 120,
        method: MeasureMethod::GtidWait,
        status: MeasureStatus::Ok,
        upper_bound: true,
        observed_at_us: 1_763_000_000_125_329,
        reader_id: "r1".into(),
        queries: 1,
    }
}

pub(super) fn window() -> DelayWindow {
    DelayWindow {
        cluster: "main".into(),
        replica: "127.0.0.1:3307".into(),
        window_start_us: 1_763_000_000_000_000,
        window_us: 1_000_000,
        count: 99,
        missing: 1,
        min_us: Some(900),
        p50_us: Some(1_800),
        p90_us: Some(2_500),
        p99_us: Some(4_000),
        max_us: Some(4_100),
        timeouts: 1,
        unreachable: 0,
        replication_stopped: 0,
        skipped: 0,
        upper_bounds: 3,
        duplicates: 2,
    }
}

pub(super) fn alert() -> Alert {
    Alert {
        rule: "replica-lag-high".into(),
        cluster: "main".into(),
        replica: "127.0.0.1:3307".into(),
        state: AlertState::Firing,
        severity: "critical".into(),
        expression: "p99 > 500ms".into(),
        value: 612_000.0,
        threshold: 500_000.0,
        since_us: 1_763_000_000_000_000,
        at_us: 1_763_000_030_000_000,
        fingerprint: "abcd".into(),
        labels: [("team".to_string(), "dba".to_string())].into(),
    }
}

pub(super) fn dead_letter() -> DeadLetter {
    DeadLetter {
        topic: "millilag.heartbeat-set".into(),
        partition: 0,
        offset: 7,
        key: Some(serde_bytes::ByteBuf::from(b"main".to_vec())),
        payload: Some(serde_bytes::ByteBuf::from(vec![0, 1, 2])),
        reason: "bad magic".into(),
        service: "reader".into(),
        failed_at_us: 1,
    }
}

fn avsc_fields(text: &str) -> BTreeSet<String> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

fn rust_fields<T: serde::Serialize>(value: &T) -> BTreeSet<String> {
    serde_json::to_value(value)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn check_in_step<R: Record + PartialEq + std::fmt::Debug>(sample: R) {
    assert_eq!(
        rust_fields(&sample),
        avsc_fields(R::SCHEMA),
        "{}: Rust fields and schemas/ fields differ",
        R::NAME
    );
    // Encoding checks every field's type against the schema, decoding checks it back.
    let bytes = sample.encode().unwrap();
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    assert_eq!(R::decode(&bytes).unwrap(), sample, "{} round trip", R::NAME);
}

#[test]
fn rust_types_match_the_avsc_files() {
    check_in_step(heartbeat());
    check_in_step(delay());
    check_in_step(window());
    check_in_step(alert());
    check_in_step(dead_letter());
}

#[test]
fn optional_fields_round_trip_as_null() {
    let mut h = heartbeat();
    h.gtid = None;
    h.binlog_file = None;
    h.binlog_pos = None;
    assert_eq!(HeartbeatSet::decode(&h.encode().unwrap()).unwrap(), h);
    let mut w = window();
    (w.count, w.min_us, w.p50_us, w.p90_us, w.p99_us, w.max_us) = (0, None, None, None, None, None);
    assert_eq!(DelayWindow::decode(&w.encode().unwrap()).unwrap(), w);
}

/// Plays an older producer: keeps only the fields its schema had, encodes with that schema,
/// and checks the current reader fills the rest from the defaults.
fn old_record_decodes<R: Record + std::fmt::Debug>(sample: &R, version: usize) -> R {
    let codec = R::codec();
    let old_schema = &codec.versions()[version];
    let old_fields = avsc_fields(R::HISTORY[version - 1]);
    let mut map = serde_json::to_value(sample).unwrap();
    map.as_object_mut()
        .unwrap()
        .retain(|k, _| old_fields.contains(k));
    let old: OldRecord = serde_json::from_value(map).unwrap();
    let bytes = codec.encode_with(old_schema, &old).unwrap();
    assert_ne!(
        &bytes[2..10],
        codec.schema().rabin_fingerprint(),
        "history version must have its own fingerprint"
    );
    R::decode(&bytes).unwrap()
}

/// A record as an ordered field map, so any old field subset can be written.
#[derive(serde::Serialize, serde::Deserialize)]
struct OldRecord(serde_json::Map<String, serde_json::Value>);

#[test]
fn record_written_with_v1_schema_decodes_with_defaults() {
    let got = old_record_decodes(&heartbeat(), 1);
    let want = HeartbeatSet {
        writer_epoch: 0,
        binlog_file: None,
        binlog_pos: None,
        interval_us: 0,
        commit_rtt_us: 0,
        ..heartbeat()
    };
    assert_eq!(got, want);

    // replica-delay v2 (no pending status yet) decodes whole; v1 with defaults.
    assert_eq!(old_record_decodes(&delay(), 1), delay());
    let got = old_record_decodes(&delay(), 2);
    assert_eq!(got.committed_at_us, 0);
    assert!(!got.upper_bound);
    assert_eq!(got.queries, 0);
    assert_eq!((got.seq, got.delay_us), (42, 1_873));
    // A v1 record still lands in the right window: commit time is derived.
    assert_eq!(got.event_time_us(), delay().committed_at_us);
}

fn decode_err<R: Record + std::fmt::Debug>(bytes: &[u8]) -> DecodeError {
    R::decode(bytes).expect_err("must not decode")
}

#[test]
fn bad_bytes_give_typed_errors() {
    assert!(matches!(
        decode_err::<ReplicaDelay>(&[0xC3]),
        DecodeError::Truncated { len: 1, .. }
    ));
    assert!(matches!(
        decode_err::<ReplicaDelay>(b"garbage bytes here"),
        DecodeError::BadMagic { .. }
    ));
    // A heartbeat-set record on the replica-delay topic: valid Avro, wrong record type.
    let wrong = heartbeat().encode().unwrap();
    let err = decode_err::<ReplicaDelay>(&wrong);
    assert!(
        matches!(err, DecodeError::UnknownFingerprint { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("replica-delay"), "{err}");
    // Right header, body cut short at every length: never a panic, always a Body error.
    let good = delay().encode().unwrap();
    for len in 10..good.len() {
        assert!(
            matches!(
                decode_err::<ReplicaDelay>(&good[..len]),
                DecodeError::Body { .. }
            ),
            "cut at {len}"
        );
    }
}

#[test]
fn random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let header = delay().encode().unwrap()[..10].to_vec();
    for _ in 0..2_000 {
        let len = rng.gen_range(0..80);
        let mut body: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let mut bytes = header.clone();
        bytes.append(&mut body);
        let _ = ReplicaDelay::decode(&bytes);
        let _ = HeartbeatSet::decode(&bytes);
    }
}

#[test]
fn every_record_has_a_distinct_fingerprint() {
    let fps = [
        HeartbeatSet::codec().fingerprint_hex(),
        ReplicaDelay::codec().fingerprint_hex(),
        DelayWindow::codec().fingerprint_hex(),
        Alert::codec().fingerprint_hex(),
        DeadLetter::codec().fingerprint_hex(),
    ];
    let unique: BTreeSet<_> = fps.iter().collect();
    assert_eq!(unique.len(), fps.len());
}
