//! Avro single-object encoding: `C3 01`, the writer schema's 8-byte CRC-64-AVRO fingerprint,
//! then the Avro datum.
//!
//! Encoding always uses the current schema. Decoding looks the fingerprint up among the current
//! and historic versions of the record's schema and decodes with that writer schema; serde fills
//! fields the writer did not have from their defaults. Anything else is a typed [`DecodeError`],
//! never a panic: records come from outside.

use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::ser::SerializerConfig;
use serde_avro_fast::Schema;

const MAGIC: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

/// A record type of the contract, bound to its `.avsc` file and the file's history.
pub trait Record: Serialize + DeserializeOwned + 'static {
    /// The topic suffix and the name used in errors ("replica-delay").
    const NAME: &'static str;
    /// The current schema (the `.avsc` file's text).
    const SCHEMA: &'static str;
    /// Earlier published versions, oldest first.
    const HISTORY: &'static [&'static str];
    fn codec() -> &'static Codec;

    fn encode(&self) -> Result<Vec<u8>, crate::Error> {
        Self::codec().encode(self)
    }
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::codec().decode(bytes)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DecodeError {
    #[error("{record}: {len} bytes is shorter than the 10-byte single-object header")]
    Truncated { record: &'static str, len: usize },
    #[error(
        "{record}: not Avro single-object encoding (first bytes {found:02x?}, expected c3 01)"
    )]
    BadMagic {
        record: &'static str,
        found: [u8; 2],
    },
    #[error("{record}: schema fingerprint {fingerprint} is not a known version of this record (written by a newer or different producer?)")]
    UnknownFingerprint {
        record: &'static str,
        fingerprint: String,
    },
    #[error("{record}: body does not decode with writer schema {fingerprint}: {message}")]
    Body {
        record: &'static str,
        fingerprint: String,
        message: String,
    },
}

/// The schemas of one record type, parsed once.
pub struct Codec {
    name: &'static str,
    current: Schema,
    /// Every version a record may have been written with, the current one first.
    versions: Vec<Schema>,
}

impl Codec {
    pub(crate) fn for_record<R: Record>() -> Codec {
        // The schema texts are compiled in and covered by tests, so a parse failure is a bug
        // in this repository, not bad input.
        let parse = |text: &str| -> Schema {
            text.parse()
                .unwrap_or_else(|e| panic!("schemas/ file for {} does not parse: {e}", R::NAME))
        };
        let current = parse(R::SCHEMA);
        let mut versions = vec![parse(R::SCHEMA)];
        versions.extend(R::HISTORY.iter().map(|t| parse(t)));
        Codec {
            name: R::NAME,
            current,
            versions,
        }
    }

    pub fn schema(&self) -> &Schema {
        &self.current
    }

    /// The current schema's fingerprint, as hex (what a consumer sees in headers and errors).
    pub fn fingerprint_hex(&self) -> String {
        hex(self.current.rabin_fingerprint())
    }

    pub fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, crate::Error> {
        self.encode_with(&self.current, value)
    }

    /// Encode with a given (e.g. historic) schema; tests use it to play an older producer.
    pub fn encode_with<T: Serialize>(
        &self,
        schema: &Schema,
        value: &T,
    ) -> Result<Vec<u8>, crate::Error> {
        let mut out = Vec::with_capacity(128);
        serde_avro_fast::to_single_object(value, &mut out, &mut SerializerConfig::new(schema))
            .map_err(|e| crate::Error::Encode {
                record: self.name,
                message: e.to_string(),
            })?;
        Ok(out)
    }

    pub fn versions(&self) -> &[Schema] {
        &self.versions
    }

    pub fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, DecodeError> {
        let header: &[u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::Truncated {
                record: self.name,
                len: bytes.len(),
            })?;
        if header[..2] != MAGIC {
            return Err(DecodeError::BadMagic {
                record: self.name,
                found: [header[0], header[1]],
            });
        }
        let fingerprint = &header[2..];
        let writer = self
            .versions
            .iter()
            .find(|s| s.rabin_fingerprint()[..] == *fingerprint)
            .ok_or_else(|| DecodeError::UnknownFingerprint {
                record: self.name,
                fingerprint: hex(fingerprint),
            })?;
        serde_avro_fast::from_datum_slice(&bytes[HEADER_LEN..], writer).map_err(|e| {
            DecodeError::Body {
                record: self.name,
                fingerprint: hex(fingerprint),
                message: e.to_string(),
            }
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
