//! Property tests of the Avro decoders of every record type: arbitrary bytes, arbitrary bodies
//! behind a valid header (every published schema version), and valid records with bytes
//! changed, cut, inserted or removed. Decoding never panics; it returns the record or the
//! [`DecodeError`] the input's shape calls for, naming the record type.

use super::tests::{alert, dead_letter, delay, heartbeat, window};
use super::*;
use proptest::prelude::*;
use proptest::sample::Index;
use std::fmt::Debug;

/// What the decoder must say about `bytes`: the first rule of the format they break.
fn expected_error<R: Record>(bytes: &[u8]) -> &'static str {
    if bytes.len() < 10 {
        "Truncated"
    } else if bytes[..2] != [0xC3, 0x01] {
        "BadMagic"
    } else if !R::codec()
        .versions()
        .iter()
        .any(|s| s.rabin_fingerprint()[..] == bytes[2..10])
    {
        "UnknownFingerprint"
    } else {
        "Body"
    }
}

fn check<R: Record + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(e) = R::decode(bytes) {
        let kind = match &e {
            DecodeError::Truncated { .. } => "Truncated",
            DecodeError::BadMagic { .. } => "BadMagic",
            DecodeError::UnknownFingerprint { .. } => "UnknownFingerprint",
            DecodeError::Body { .. } => "Body",
        };
        prop_assert_eq!(kind, expected_error::<R>(bytes), "{}", e);
        prop_assert!(e.to_string().starts_with(R::NAME), "{}", e);
    }
    Ok(())
}

fn check_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    check::<HeartbeatSet>(bytes)?;
    check::<ReplicaDelay>(bytes)?;
    check::<DelayWindow>(bytes)?;
    check::<Alert>(bytes)?;
    check::<DeadLetter>(bytes)
}

/// Every version's header followed by `body`, checked as that record type.
fn check_behind_headers<R: Record + Debug>(body: &[u8]) -> Result<(), TestCaseError> {
    for schema in R::codec().versions() {
        let mut bytes = vec![0xC3, 0x01];
        bytes.extend_from_slice(schema.rabin_fingerprint());
        bytes.extend_from_slice(body);
        check::<R>(&bytes)?;
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(Index, u8),
    FlipBit(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Remove(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Set(i, b) => {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        Mutation::FlipBit(i, bit) => {
            let i = i.index(bytes.len());
            bytes[i] ^= 1 << bit;
        }
        Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
        Mutation::Insert(i, more) => {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, more.iter().copied());
        }
        Mutation::Remove(i) => {
            bytes.remove(i.index(bytes.len()));
        }
    }
}

/// Mutate a valid encoding of `sample`; the mutated bytes are checked as every record type.
fn check_mutated<R: Record>(sample: &R, mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let mut bytes = sample
        .encode()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for m in mutations {
        mutate(&mut bytes, m);
    }
    check_all(&bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
        check_all(&bytes)?;
    }

    #[test]
    fn any_body_behind_a_known_header_never_panics(
        body in prop::collection::vec(any::<u8>(), 0..160),
    ) {
        check_behind_headers::<HeartbeatSet>(&body)?;
        check_behind_headers::<ReplicaDelay>(&body)?;
        check_behind_headers::<DelayWindow>(&body)?;
        check_behind_headers::<Alert>(&body)?;
        check_behind_headers::<DeadLetter>(&body)?;
    }

    #[test]
    fn mutated_valid_records_never_panic(
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        check_mutated(&heartbeat(), &mutations)?;
        check_mutated(&delay(), &mutations)?;
        check_mutated(&window(), &mutations)?;
        check_mutated(&alert(), &mutations)?;
        check_mutated(&dead_letter(), &mutations)?;
    }
}
