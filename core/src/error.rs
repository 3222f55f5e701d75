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
}
