//! TLS material named in the config (CA bundles, client certificates and keys), checked once at
//! start so a missing or malformed file is a config problem naming its key, and the TLS errors
//! of a connection explained in words that name the key to fix.
//!
//! The files are read again by the clients at each connect (mysql_async, reqwest, librdkafka),
//! so a rotated certificate is picked up without a restart.

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;

/// The certificates of a PEM bundle that can serve as trust anchors. `key` is the config key
/// that named the file (`cluster[0].tls_ca_file`), for the problem text.
pub fn read_ca_file(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = read_certificates(key, path)?;
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{key}: certificate {} in {} is not a usable CA certificate: {e}",
                i + 1,
                path.display()
            )
        })?;
    }
    Ok(certs)
}

/// Every `CERTIFICATE` section of a PEM file; at least one.
pub fn read_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{key}: cannot read {shown}: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {shown} is not valid PEM: {}", pem_error(&e)))?;
    if certs.is_empty() {
        return Err(format!(
            "{key}: {shown} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// Checks that a PEM file holds a private key (PKCS#8, PKCS#1 or SEC1).
pub fn check_private_key(key: &str, path: &Path) -> Result<(), String> {
    let shown = path.display();
    match PrivateKeyDer::from_pem_file(path) {
        Ok(_) => Ok(()),
        Err(pem::Error::NoItemsFound) => Err(format!(
            "{key}: {shown} holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
        )),
        Err(e @ pem::Error::Io(_)) => Err(format!("{key}: cannot read {shown}: {}", pem_error(&e))),
        Err(e) => Err(format!(
            "{key}: {shown} is not valid PEM: {}",
            pem_error(&e)
        )),
    }
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// The rustls error somewhere in an error's source chain. The TLS layers of mysql_async and
/// reqwest wrap it in `io::Error`s, sometimes two deep, whose `source()` skips the wrapped
/// error: those are looked into with `get_ref()`.
pub fn find_rustls_error<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        cur = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

/// The server's certificate was refused (by us): a trust or name problem, not an outage.
pub fn is_certificate_error(e: &rustls::Error) -> bool {
    matches!(e, rustls::Error::InvalidCertificate(_))
}

/// What to fix when the server's certificate was refused: the trust (`ca_key`) or the name.
pub fn certificate_hint(e: &rustls::Error, ca_key: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = e else {
        return None;
    };
    Some(match c {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "the server's certificate does not name the host connected to: connect by a name \
             it lists, or have the server's certificate list this one"
                .to_string()
        }
        C::UnknownIssuer | C::BadSignature => format!(
            "the server's certificate is not signed by a trusted CA: set {ca_key} to the CA \
             certificate (PEM) that signed it"
        ),
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            "the server's certificate is outside its validity period (or a clock is wrong)"
                .to_string()
        }
        _ => format!("the server's certificate was refused; check {ca_key}"),
    })
}

/// Names the certificate of a name mismatch says it is valid for (webpki renders them as
/// `DnsName("db.example")` and `IpAddress(10.0.0.1)`), as server names to verify against.
/// A wildcard `*.example` is returned as `millilag.example`, which it matches.
pub fn presented_names(e: &rustls::Error) -> Vec<String> {
    let rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
        presented,
        ..
    }) = e
    else {
        return Vec::new();
    };
    presented
        .iter()
        .filter_map(|p| {
            if let Some(dns) = p
                .strip_prefix("DnsName(\"")
                .and_then(|s| s.strip_suffix("\")"))
            {
                Some(match dns.strip_prefix("*.") {
                    Some(parent) => format!("millilag.{parent}"),
                    None => dns.to_string(),
                })
            } else {
                p.strip_prefix("IpAddress(")
                    .and_then(|s| s.strip_suffix(')'))
                    .map(str::to_string)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_A_CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    #[test]
    fn missing_empty_and_bogus_files_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = read_ca_file("cluster[0].tls_ca_file", &missing).unwrap_err();
        assert!(
            e.starts_with("cluster[0].tls_ca_file: cannot read") && e.contains("nope.pem"),
            "{e}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "hello\n").unwrap();
        let e = read_ca_file("k", &empty).unwrap_err();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(&bogus, NOT_A_CERT).unwrap();
        let e = read_ca_file("k", &bogus).unwrap_err();
        assert!(e.contains("not a usable CA certificate"), "{e}");
        let e = check_private_key("cluster[0].tls_key_file", &empty).unwrap_err();
        assert!(e.contains("holds no PEM private key"), "{e}");
    }

    #[test]
    fn finds_rustls_inside_nested_io_errors() {
        let r = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, r);
        let outer = std::io::Error::other(inner);
        assert!(find_rustls_error(&outer).is_some_and(is_certificate_error));
        let plain = std::io::Error::other("refused");
        assert!(find_rustls_error(&plain).is_none());
    }

    #[test]
    fn names_of_a_mismatch_become_server_names() {
        let e =
            rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
                presented: vec![
                    "DnsName(\"db1.example\")".into(),
                    "DnsName(\"*.db.example\")".into(),
                    "IpAddress(10.0.0.7)".into(),
                    "UniformResourceIdentifier(\"x\")".into(),
                ],
            });
        assert_eq!(
            presented_names(&e),
            ["db1.example", "millilag.db.example", "10.0.0.7"]
        );
        let hint = certificate_hint(&e, "k").unwrap();
        assert!(hint.contains("does not name the host"), "{hint}");
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert!(certificate_hint(&e, "sink.influxdb[0].tls_ca_file")
            .unwrap()
            .contains("set sink.influxdb[0].tls_ca_file"));
    }
}
