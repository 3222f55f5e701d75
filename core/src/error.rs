//! One error type for the library, saying whose fault a failure is and whether retrying can help.
//!
//! Services decide what to do from [`Error::retry_hint`]: retry with backoff (a database or broker
//! that went away), dead-letter and move on (a record that will never decode), or stop at start-up
//! (a config the user must fix).

use std::fmt;

/// Whose fault an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDomain {
    /// The user's config or environment: fix and restart.
    User,
    /// A database, broker or sink outside this process.
    External,
    /// The data itself (a record that does not decode).
    Data,
    /// A bug in millilag.
    Internal,
}

/// Whether doing the same thing again can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    Retry,
    NoRetry,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(String),
    #[error(transparent)]
    Decode(#[from] crate::events::DecodeError),
    #[error("encoding {record}: {message}")]
    Encode {
        record: &'static str,
        message: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("database {address}: {source}{}", hint.as_ref().map(|h| format!("; {h}")).unwrap_or_default())]
    Database {
        address: String,
        #[source]
        source: mysql_async::Error,
        /// What to fix, when the failure says (a TLS mismatch, a server that wants TLS).
        hint: Option<String>,
    },
    #[error("{0}")]
    Unsupported(String),
    /// A service that did not answer or refused us at start, with what to fix.
    #[error("{0}")]
    Unreachable(String),
    /// An HTTP endpoint (a sink, a webhook) answered with an error status; `body` is the start
    /// of its answer (see [`Error::http_status`]).
    #[error("{endpoint}: HTTP {status}{}", if body.is_empty() { String::new() } else { format!(": {body}") })]
    HttpStatus {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn database(address: impl Into<String>, source: mysql_async::Error) -> Self {
        Error::Database {
            address: address.into(),
            source,
            hint: None,
        }
    }

    /// An error status from `endpoint`, keeping at most [`HTTP_BODY_KEPT`] characters of the
    /// body: enough for InfluxDB's `{"error":"..."}`, bounded for logs and dead letters.
    pub fn http_status(endpoint: impl Into<String>, status: u16, body: &str) -> Self {
        let body = body.trim();
        let body = match body.char_indices().nth(HTTP_BODY_KEPT) {
            Some((cut, _)) => format!("{}...", &body[..cut]),
            None => body.to_string(),
        };
        Error::HttpStatus {
            endpoint: endpoint.into(),
            status,
            body,
        }
    }

    /// Adds what to fix to a [`Error::Database`]; other errors are returned as they are.
    pub fn with_hint(mut self, new: Option<String>) -> Self {
        if let Error::Database { hint, .. } = &mut self {
            *hint = new;
        }
        self
    }

    pub fn domain(&self) -> ErrorDomain {
        match self {
            Error::Config(_) | Error::Unsupported(_) => ErrorDomain::User,
            Error::Decode(_) => ErrorDomain::Data,
            Error::Kafka(_) | Error::Unreachable(_) => ErrorDomain::External,
            Error::HttpStatus { status, .. } => match status {
                s if is_transient_http_status(*s) => ErrorDomain::External,
                // Credentials, or a database/bucket/path that does not exist.
                401 | 403 | 404 => ErrorDomain::User,
                // The request's content: bad points, too large, outside a retention policy.
                _ => ErrorDomain::Data,
            },
            Error::Database { source, .. } => match source {
                // The server answered with an error: usually privileges or schema, the user's to
                // fix; the transient ones (shutting down, read-only in a failover, lock waits)
                // are the server's state, not a mistake.
                mysql_async::Error::Server(e) if !is_transient_server_error(e.code) => {
                    ErrorDomain::User
                }
                _ => ErrorDomain::External,
            },
            Error::Encode { .. } | Error::Internal(_) => ErrorDomain::Internal,
        }
    }

    /// The database server answered with an error (the statement was refused; the connection
    /// itself is fine).
    pub fn is_server_error(&self) -> bool {
        matches!(
            self,
            Error::Database {
                source: mysql_async::Error::Server(_),
                ..
            }
        )
    }

    pub fn retry_hint(&self) -> RetryHint {
        match self {
            Error::Kafka(_) | Error::Unreachable(_) => RetryHint::Retry,
            Error::HttpStatus { status, .. } if is_transient_http_status(*status) => {
                RetryHint::Retry
            }
            Error::Database { source, .. } => match source {
                mysql_async::Error::Server(e) if !is_transient_server_error(e.code) => {
                    RetryHint::NoRetry
                }
                _ => RetryHint::Retry,
            },
            _ => RetryHint::NoRetry,
        }
    }
}

/// Server error codes that a later attempt can get past: lock waits, deadlocks, a server
/// shutting down or in read-only mode during a failover, too many connections.
fn is_transient_server_error(code: u16) -> bool {
    matches!(code, 1040 | 1053 | 1205 | 1213 | 1290 | 1927 | 2006 | 2013)
}

/// How much of an HTTP error body [`Error::http_status`] keeps, in characters.
pub const HTTP_BODY_KEPT: usize = 300;

/// HTTP statuses a later attempt can get past: every 4xx refuses the request itself (bad
/// points, a wrong token, a missing database: sending it again gets the same answer) except
/// 408 (request timeout) and 429 (too many requests); 5xx and anything else is the server's
/// state.
pub fn is_transient_http_status(status: u16) -> bool {
    !(400..500).contains(&status) || status == 408 || status == 429
}

impl fmt::Display for ErrorDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorDomain::User => "user",
            ErrorDomain::External => "external",
            ErrorDomain::Data => "data",
            ErrorDomain::Internal => "internal",
        })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: u16) -> Error {
        let e = mysql_async::ServerError {
            code,
            message: "m".into(),
            state: "HY000".into(),
        };
        Error::database("db1:3306", mysql_async::Error::Server(e))
    }

    #[test]
    fn a_refusal_is_the_users_and_a_shutdown_is_the_servers() {
        // 1142: INSERT command denied; 1053: server shutdown in progress.
        let denied = server_error(1142);
        assert_eq!(
            (denied.domain(), denied.retry_hint()),
            (ErrorDomain::User, RetryHint::NoRetry)
        );
        let shutdown = server_error(1053);
        assert_eq!(
            (shutdown.domain(), shutdown.retry_hint()),
            (ErrorDomain::External, RetryHint::Retry)
        );
    }

    #[test]
    fn a_4xx_is_permanent_except_408_and_429() {
        let hint = |s| Error::http_status("sink", s, "").retry_hint();
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(hint(s), RetryHint::NoRetry, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 307] {
            assert_eq!(hint(s), RetryHint::Retry, "{s}");
        }
        assert_eq!(Error::http_status("s", 401, "").domain(), ErrorDomain::User);
        assert_eq!(Error::http_status("s", 400, "").domain(), ErrorDomain::Data);
    }

    #[test]
    fn an_http_error_keeps_the_start_of_the_body_on_a_char_boundary() {
        let long = "é".repeat(HTTP_BODY_KEPT + 10);
        let e = Error::http_status("influxdb[0]: POST /write", 400, &long);
        let Error::HttpStatus { body, .. } = &e else {
            unreachable!()
        };
        assert_eq!(body.chars().count(), HTTP_BODY_KEPT + 3);
        assert!(e
            .to_string()
            .starts_with("influxdb[0]: POST /write: HTTP 400: éé"));
        assert_eq!(
            Error::http_status("x", 404, " \n").to_string(),
            "x: HTTP 404"
        );
    }
}
