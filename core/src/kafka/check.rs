//! Reaching the brokers once at start, so that a TLS or SASL mistake stops the service with a
//! sentence naming the key to fix instead of a timeout much later.
//!
//! librdkafka reports a failed TLS handshake or SASL exchange through its error callback and
//! keeps retrying; this check listens to that callback while it asks for metadata. After start
//! the same errors reach the log through rdkafka's `tracing` feature, and librdkafka keeps
//! reconnecting with backoff (`reconnect.backoff.max.ms`).

use super::client_config;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the brokers may take to answer at start.
pub const REACH_TIMEOUT: Duration = Duration::from_secs(10);

/// One metadata request's wait; between two, the captured errors are looked at.
const ATTEMPT: Duration = Duration::from_millis(500);

/// How long each round serves librdkafka's queued events.
const EVENTS: Duration = Duration::from_millis(50);

/// Keeps what librdkafka reports while the check runs.
#[derive(Clone, Default)]
struct Capture {
    /// (error code, librdkafka's sentence), newest last.
    errors: Arc<Mutex<Vec<(RDKafkaErrorCode, String)>>>,
}

impl ClientContext for Capture {
    // librdkafka says "connecting to a SSL listener?" only in a log line, not an error event.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", "librdkafka: {fac} {message}")
            }
            _ => tracing::debug!(target: "librdkafka", "librdkafka: {fac} {message}"),
        }
        // A connection's failure, in more words than the error event's "brokers are down".
        if fac == "FAIL" {
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            errors.push((RDKafkaErrorCode::Fail, message.to_string()));
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = error.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.push((code, reason.to_string()));
    }
}

// A producer only because its poll() serves librdkafka's main queue, where errors and log
// lines arrive as events; nothing is produced.
impl ProducerContext for Capture {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

impl Capture {
    /// The first error that retrying will not cure: TLS, SASL, a protocol mismatch.
    fn definitive(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let first_request_refused = errors
            .iter()
            .filter(|(_, r)| refused_first_request(r))
            .count();
        errors
            .iter()
            .find(|(code, reason)| {
                is_definitive(*code, reason)
                    // Once could be a broker going down; again and again is a TLS listener.
                    || (first_request_refused >= 2 && refused_first_request(reason))
            })
            .map(|(_, r)| r.clone())
    }

    /// The most telling error seen: a connection's own failure rather than "all brokers are
    /// down".
    fn most_telling(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors
            .iter()
            .find(|(code, _)| *code == RDKafkaErrorCode::Fail)
            .or_else(|| {
                errors
                    .iter()
                    .find(|(code, _)| *code != RDKafkaErrorCode::AllBrokersDown)
            })
            .or(errors.first())
            .map(|(_, r)| r.clone())
    }
}

fn is_definitive(code: RDKafkaErrorCode, reason: &str) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::SSL
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
    ) || reason.contains("security.protocol")
}

/// The broker hung up on the first request of a connection (ApiVersion): what a TLS listener
/// does to a plaintext client (librdkafka adds "connecting to a SSL listener?" when the close
/// is clean, not when it is a reset).
fn refused_first_request(reason: &str) -> bool {
    reason.contains("Disconnected") && reason.contains("APIVERSION_QUERY")
}

/// Ask the brokers for metadata until they answer, `timeout` passes, or librdkafka reports a
/// failure that retrying will not cure.
pub async fn reach(kafka: &KafkaConfig, timeout: Duration) -> Result<()> {
    let ctx = Capture::default();
    let mut config = client_config(kafka);
    // Info: the level of the "connecting to a SSL listener?" line, whatever the log filter.
    config.set_log_level(RDKafkaLogLevel::Info);
    let client: Arc<BaseProducer<Capture>> = Arc::new(config.create_with_context(ctx.clone())?);
    let started = Instant::now();
    let protocol = kafka.security_protocol();
    loop {
        let c = client.clone();
        let answered = tokio::task::spawn_blocking(move || {
            let r = c.client().fetch_metadata(None, ATTEMPT).map(|_| ());
            // Deliver the attempt's error events to Capture (poll serves them until its
            // deadline; with zero it would take one).
            c.poll(EVENTS);
            r
        })
        .await
        .map_err(|e| Error::Internal(format!("metadata request task: {e}")))?;
        if answered.is_ok() {
            return Ok(());
        }
        let definitive = ctx.definitive();
        if definitive.is_some() || started.elapsed() >= timeout {
            let reason = definitive
                .or_else(|| ctx.most_telling())
                .or_else(|| answered.err().map(|e| e.to_string()))
                .unwrap_or_else(|| "no answer".into());
            return Err(Error::Unreachable(format!(
                "cannot reach Kafka at {} (security.protocol = {protocol}) within {timeout:?}: {reason}{}",
                kafka.brokers,
                hint(&protocol, &reason)
                    .map(|h| format!("; {h}"))
                    .unwrap_or_default()
            )));
        }
    }
}

/// What to fix for a librdkafka connection error, naming the config key.
pub fn hint(protocol: &str, reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    let tls = protocol.ends_with("ssl");
    if !tls
        && (r.contains("connecting to a ssl listener")
            || r.contains("security.protocol")
            || refused_first_request(reason))
    {
        return Some(
            "the broker seems to expect TLS: set kafka.properties.\"security.protocol\" = \"ssl\" \
             (or \"sasl_ssl\") and \"ssl.ca.location\"",
        );
    }
    // OpenSSL says the same for an unknown CA and for a certificate of another host.
    if r.contains("certificate verify failed") || r.contains("could not be verified") {
        return Some(
            "the brokers' certificate is not trusted or does not name the host connected to: set \
             kafka.properties.\"ssl.ca.location\" to the CA (PEM) that signed it, and check that \
             the certificate names the bootstrap and advertised hosts \
             (\"ssl.endpoint.identification.algorithm\" = \"none\" skips the name check, at a cost)",
        );
    }
    if r.contains("sasl") || r.contains("authentication") {
        return Some(
            "SASL authentication failed: check kafka.properties.\"sasl.mechanisms\" and \
             \"sasl.username\", and the password (kafka.sasl_password_env or \
             kafka.sasl_password_file)",
        );
    }
    if tls && (r.contains("ssl") || r.contains("handshake")) {
        return Some(
            "the TLS handshake failed: is the port a TLS listener? (security.protocol = \"ssl\" \
             needs one)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_sentences_get_the_key_to_fix() {
        // Sentences as librdkafka 2.12 writes them.
        let cases = [
            (
                "plaintext",
                "127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10",
                "\"security.protocol\" = \"ssl\"",
            ),
            (
                "ssl",
                "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed",
                "ssl.ca.location",
            ),
            (
                "sasl_ssl",
                "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
                "kafka.sasl_password_env",
            ),
            (
                "ssl",
                "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::wrong version number",
                "is the port a TLS listener",
            ),
        ];
        for (protocol, reason, want) in cases {
            let h = hint(protocol, reason).unwrap_or_default();
            assert!(h.contains(want), "{reason}\n=> {h}");
        }
        assert_eq!(hint("plaintext", "Connection refused"), None);
        // A socat or stunnel terminator resets instead of closing.
        let reset = "sasl_plaintext://127.0.0.1:1/bootstrap: Disconnected: connection reset by peer (after 0ms in state APIVERSION_QUERY)";
        assert!(hint("sasl_plaintext", reset)
            .unwrap()
            .contains("\"security.protocol\" = \"ssl\""));
    }

    #[test]
    fn tls_and_sasl_failures_end_the_wait() {
        assert!(is_definitive(RDKafkaErrorCode::SSL, "x"));
        assert!(is_definitive(RDKafkaErrorCode::Authentication, "x"));
        assert!(!is_definitive(RDKafkaErrorCode::AllBrokersDown, "x"));
        assert!(!is_definitive(
            RDKafkaErrorCode::BrokerTransportFailure,
            "Connect to ipv4#127.0.0.1:1 failed: Connection refused"
        ));
    }
}
