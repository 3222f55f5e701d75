//! TLS to the databases beyond what mysql_async does itself: verify-ca, and the hints that turn
//! a refused connection into the config key to change.
//!
//! verify-ca (the certificate must chain to the CA, whatever name it carries): mysql_async
//! 0.37's switch for skipping the name check does not work with rustls 0.23
//! (blackbeam/mysql_async#404). When the CA-verified certificate names another host, the
//! connect is repeated verifying against a name the certificate lists (rustls reports them with
//! the mismatch, after the chain was verified), so the connection stays bound to a certificate
//! the CA signed. The name is remembered per server, so this costs one extra handshake per
//! server and process.

use crate::config::{DbUrl, TlsMode};
use crate::error::Error;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// verify-ca: per server address, the certificate name its connections are verified against.
static VERIFY_CA_NAMES: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());

/// The name learned for this server, if any.
pub(super) fn learned_name(url: &DbUrl) -> Option<String> {
    VERIFY_CA_NAMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&url.address())
        .cloned()
}

/// After a name mismatch on a CA-verified certificate: the first name it carries, remembered
/// for this server. None for any other failure.
pub(super) fn learn_name(url: &DbUrl, e: &Error) -> Option<String> {
    let name = crate::tls::find_rustls_error(e)
        .map(crate::tls::presented_names)?
        .into_iter()
        .next()?;
    VERIFY_CA_NAMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(url.address(), name.clone());
    Some(name)
}

/// What to fix, naming the cluster's keys, for the failures TLS explains; None for the rest.
pub(super) fn hint(url: &DbUrl, e: &Error) -> Option<String> {
    let tls = url.tls();
    let key = if tls.key.is_empty() {
        "cluster[..]"
    } else {
        tls.key.as_str()
    };
    if let Some(r) = crate::tls::find_rustls_error(e) {
        let what = crate::tls::certificate_hint(r, &format!("{key}.tls_ca_file"))
            .unwrap_or_else(|| "the TLS handshake failed".into());
        return Some(format!(
            "{what} ({key}.tls = \"{}\"; \"require\" encrypts without checking the certificate)",
            tls.mode.as_str()
        ));
    }
    let Error::Database { source, .. } = e else {
        return None;
    };
    match source {
        mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer) => {
            Some(format!(
                "the server does not offer TLS: enable it there (ssl_cert, ssl_key) or set {key}.tls = \"off\""
            ))
        }
        // 3159: MySQL's require_secure_transport; 1045: access denied, which is also what an
        // account with REQUIRE SSL gets over plaintext.
        mysql_async::Error::Server(s) if tls.mode == TlsMode::Off && s.code == 3159 => Some(format!(
            "the server accepts TLS connections only: set {key}.tls (and {key}.tls_ca_file)"
        )),
        mysql_async::Error::Server(s) if tls.mode == TlsMode::Off && s.code == 1045 => Some(format!(
            "if the account requires TLS (REQUIRE SSL/X509) or the server has \
             require_secure_transport, set {key}.tls (and {key}.tls_ca_file)"
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DbTls;

    fn url(mode: TlsMode) -> DbUrl {
        let mut u = DbUrl::parse("mysql://u@db1:3306").unwrap();
        u.set_tls(DbTls {
            mode,
            ssl: None,
            key: "cluster[2]".into(),
        });
        u
    }

    fn server(code: u16) -> Error {
        Error::database(
            "db1:3306",
            mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }),
        )
    }

    #[test]
    fn hints_name_the_clusters_tls_keys() {
        let no_tls = Error::database(
            "db1:3306",
            mysql_async::Error::Driver(mysql_async::DriverError::NoClientSslFlagFromServer),
        );
        let h = hint(&url(TlsMode::VerifyIdentity), &no_tls).unwrap();
        assert!(h.contains("set cluster[2].tls = \"off\""), "{h}");
        let h = hint(&url(TlsMode::Off), &server(3159)).unwrap();
        assert!(
            h.contains("TLS connections only: set cluster[2].tls"),
            "{h}"
        );
        let h = hint(&url(TlsMode::Off), &server(1045)).unwrap();
        assert!(
            h.contains("REQUIRE SSL") && h.contains("cluster[2].tls"),
            "{h}"
        );
        // With TLS on, access denied is about the password: no TLS hint.
        assert_eq!(hint(&url(TlsMode::VerifyIdentity), &server(1045)), None);
        assert_eq!(hint(&url(TlsMode::Off), &server(1142)), None);
    }
}
