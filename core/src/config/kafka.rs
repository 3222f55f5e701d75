//! `[kafka]`: the brokers, topic names and librdkafka properties every service shares, and the
//! TLS/SASL secrets, which come from the environment or files, never from the config file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::{resolve_secret, EnvUnset, Sensitive, MASK};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated (librdkafka `bootstrap.servers`).
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Prefix of every topic name: `<prefix>heartbeat-set`, `<prefix>replica-delay`, ...
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Create missing topics at start (admin API). Off where topics are managed elsewhere.
    #[serde(default = "super::default_true")]
    pub create_topics: bool,
    /// Partitions for topics millilag creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor for topics millilag creates. -1 (the default) takes the broker's
    /// `default.replication.factor` (Kafka 2.4+, KIP-464); set it to pin one (3 in production).
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Passed to librdkafka as-is (TLS, SASL, tuning): `security.protocol`, `ssl.ca.location`,
    /// `ssl.certificate.location`, `ssl.key.location`, `sasl.mechanisms`, `sasl.username`...
    /// Passwords do not go here (see `sasl_password_env`); values of keys that carry secrets
    /// (`*password*`, `*secret*`, `*token*`, `ssl.key.pem`, `sasl.oauthbearer.config`) print as
    /// `***`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Environment variable holding the SASL password (librdkafka `sasl.password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_env: Option<String>,
    /// File holding the SASL password (wins over `sasl_password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password_file: Option<PathBuf>,
    /// Environment variable holding the password of an encrypted `ssl.key.location`
    /// (librdkafka `ssl.key.password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_key_password_env: Option<String>,
    /// File holding that key password (wins over `ssl_key_password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_key_password_file: Option<PathBuf>,
    /// Resolved SASL password.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<Sensitive>,
    /// Resolved key password.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub ssl_key_password: Option<Sensitive>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("properties", &self.masked_properties())
            .field("sasl_password", &self.sasl_password)
            .field("ssl_key_password", &self.ssl_key_password)
            .finish_non_exhaustive()
    }
}

/// SASL mechanisms this build of librdkafka has (PLAIN and SCRAM are built in; SCRAM needs the
/// OpenSSL that the `ssl` feature links). GSSAPI (Kerberos) would need libsasl2: not built.
pub const SASL_MECHANISMS: [&str; 4] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// The `security.protocol` values librdkafka knows.
const SECURITY_PROTOCOLS: [&str; 4] = ["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"];

/// Properties whose value must not be in the config file, with the key that supplies it.
const PASSWORD_PROPERTIES: [(&str, &str); 2] = [
    ("sasl.password", "sasl_password_env or sasl_password_file"),
    (
        "ssl.key.password",
        "ssl_key_password_env or ssl_key_password_file",
    ),
];

/// Properties naming files librdkafka reads; a missing one is a problem at load, not a
/// connection that never comes up.
const FILE_PROPERTIES: [&str; 4] = [
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.crl.location",
];

// librdkafka's own default for bootstrap.servers is empty; a local broker is the useful one.
fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topic_prefix() -> String {
    "millilag.".into()
}
const fn default_partitions() -> i32 {
    6
}
// -1: "the broker's default" in CreateTopics (KIP-464), as kafka-topics.sh does unless told.
const fn default_replication_factor() -> i32 {
    -1
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: default_brokers(),
            topic_prefix: default_topic_prefix(),
            create_topics: true,
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            properties: BTreeMap::new(),
            sasl_password_env: None,
            sasl_password_file: None,
            ssl_key_password_env: None,
            ssl_key_password_file: None,
            sasl_password: None,
            ssl_key_password: None,
        }
    }
}

impl KafkaConfig {
    pub(super) fn validate(&self, p: &mut Vec<String>) {
        if self.brokers.trim().is_empty() {
            p.push("kafka.brokers: empty; set it to host:port[,host:port]".into());
        }
        for (k, v) in &self.properties {
            if let Some(why) = reserved_property(k) {
                p.push(format!(
                    "kafka.properties.\"{k}\" ({v:?}): millilag sets it itself ({why}); remove it"
                ));
            }
        }
        if self.replication_factor == 0 || self.replication_factor < -1 {
            p.push(format!(
                "kafka.replication_factor ({}) must be -1 (the broker's default) or at least 1",
                self.replication_factor
            ));
        }
        if self.partitions < 1 {
            p.push(format!(
                "kafka.partitions ({}) must be at least 1",
                self.partitions
            ));
        }
        for (prop, fix) in PASSWORD_PROPERTIES {
            if self.properties.contains_key(prop) {
                p.push(format!(
                    "kafka.properties.{prop:?}: a password does not belong in the config file; \
                     remove it and set kafka.{fix}"
                ));
            }
        }
        let protocol = self.security_protocol();
        if !SECURITY_PROTOCOLS.contains(&protocol.as_str()) {
            p.push(format!(
                "kafka.properties.\"security.protocol\" ({protocol:?}) must be one of {}",
                SECURITY_PROTOCOLS.join(", ")
            ));
        }
        if let Some(mech) = self.sasl_mechanism() {
            if !SASL_MECHANISMS.contains(&mech.as_str()) {
                p.push(format!(
                    "kafka.properties.\"sasl.mechanisms\" ({mech:?}; librdkafka's default is GSSAPI): \
                     this build supports {}; GSSAPI/Kerberos is not compiled in",
                    SASL_MECHANISMS.join(", ")
                ));
            }
            if mech != "OAUTHBEARER" && !self.properties.contains_key("sasl.username") {
                p.push(format!(
                    "kafka.properties.\"sasl.username\": security.protocol = {protocol:?} with {mech} needs a user name"
                ));
            }
        } else if self.sasl_password_env.is_some() || self.sasl_password_file.is_some() {
            p.push(format!(
                "kafka.sasl_password_env/sasl_password_file is set but security.protocol is {protocol:?}; \
                 set \"security.protocol\" = \"sasl_ssl\" (or remove the password)"
            ));
        }
        for prop in FILE_PROPERTIES {
            if let Some(path) = self.properties.get(prop) {
                // librdkafka's "probe" searches the system's CA locations itself.
                if prop == "ssl.ca.location" && path == "probe" {
                    continue;
                }
                if let Err(e) = std::fs::File::open(Path::new(path)) {
                    p.push(format!(
                        "kafka.properties.{prop:?}: cannot read {path}: {e}"
                    ));
                }
            }
        }
    }

    /// Reads the SASL password and the key password from their files or environment variables.
    pub(super) fn resolve_secrets(&mut self, env: &BTreeMap<String, String>, p: &mut Vec<String>) {
        let fix = EnvUnset::Problem("export it or use the _file key");
        let mut get = |key: &str, env_name: &Option<String>, file: &Option<PathBuf>| {
            resolve_secret(key, env_name.as_deref(), file.as_deref(), env, fix).unwrap_or_else(
                |e| {
                    p.push(e);
                    None
                },
            )
        };
        self.sasl_password = get(
            "kafka.sasl_password",
            &self.sasl_password_env,
            &self.sasl_password_file,
        );
        self.ssl_key_password = get(
            "kafka.ssl_key_password",
            &self.ssl_key_password_env,
            &self.ssl_key_password_file,
        );
        let needs_password = self
            .sasl_mechanism()
            .filter(|m| m == "PLAIN" || m.starts_with("SCRAM-"));
        if let (Some(mech), None) = (needs_password, &self.sasl_password) {
            p.push(format!(
                "kafka.sasl_password_env: sasl.mechanisms = {mech:?} needs a password; \
                 set kafka.sasl_password_env or kafka.sasl_password_file"
            ));
        }
    }

    /// `security.protocol`, lower case; librdkafka's default when unset.
    pub fn security_protocol(&self) -> String {
        self.properties
            .get("security.protocol")
            .map(|v| v.to_ascii_lowercase())
            .unwrap_or_else(|| "plaintext".into())
    }

    /// The SASL mechanism (upper case) when `security.protocol` is `sasl_*`.
    pub fn sasl_mechanism(&self) -> Option<String> {
        if !self.security_protocol().starts_with("sasl_") {
            return None;
        }
        Some(
            self.properties
                .get("sasl.mechanisms")
                .or_else(|| self.properties.get("sasl.mechanism"))
                .map(|m| m.trim().to_ascii_uppercase())
                // librdkafka's default.
                .unwrap_or_else(|| "GSSAPI".into()),
        )
    }

    /// The librdkafka properties with the resolved secrets added (what clients are made from).
    pub fn librdkafka_properties(&self) -> BTreeMap<String, String> {
        let mut props = self.properties.clone();
        if let Some(pw) = &self.sasl_password {
            props.insert("sasl.password".into(), pw.expose().into());
        }
        if let Some(pw) = &self.ssl_key_password {
            props.insert("ssl.key.password".into(), pw.expose().into());
        }
        props
    }

    /// `properties` as they may be printed.
    pub fn masked_properties(&self) -> BTreeMap<String, String> {
        self.properties
            .iter()
            .map(|(k, v)| {
                let v = if is_secret_property(k) {
                    MASK.to_string()
                } else {
                    v.clone()
                };
                (k.clone(), v)
            })
            .collect()
    }
}

/// librdkafka properties millilag sets because its delivery guarantees depend on them, and
/// why; a user's value would silently win (properties are applied last), so they are refused.
pub fn reserved_property(key: &str) -> Option<&'static str> {
    Some(match key.trim().to_ascii_lowercase().as_str() {
        "enable.auto.commit" | "enable.auto.offset.store" => {
            "at-least-once: offsets are stored only after what a record produced was acknowledged"
        }
        "enable.idempotence" | "acks" => {
            "the idempotent, acks=all producer is what makes a retried record land once"
        }
        "transactional.id" => "millilag does not use Kafka transactions",
        "group.id" => "each service has its own group: set reader.group or processor.group",
        "bootstrap.servers" | "metadata.broker.list" => "set kafka.brokers instead",
        "enable.partition.eof" => "the consume loops do not expect end-of-partition events",
        _ => return None,
    })
}

/// librdkafka properties that carry credentials: passwords, secrets, tokens, an inline private
/// key (`ssl.key.pem`, alias `ssl_key`), the OAUTHBEARER config (it holds the token's claims).
pub fn is_secret_property(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.contains("password")
        || k.contains("secret")
        || k.contains("token")
        || k.ends_with(".key")
        || k.contains("key.pem")
        || k == "ssl_key"
        || k.starts_with("sasl.oauthbearer.config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_properties_are_recognised() {
        for k in [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "ssl_key",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.client.secret",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret_property(k), "{k}");
        }
        for k in [
            "security.protocol",
            "sasl.username",
            "sasl.mechanisms",
            "ssl.ca.location",
            "ssl.key.location",
            "ssl.certificate.location",
        ] {
            assert!(!is_secret_property(k), "{k}");
        }
    }
}
