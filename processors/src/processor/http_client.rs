//! The HTTP client of the InfluxDB sinks and the webhooks: rustls, verifying against the
//! system's trust store or one CA file (`tls_ca_file`), the configured `Authorization`, and
//! error text that never carries the URL (a webhook's URL can be its secret).
//!
//! At start, [`preflight`] makes one request to every https endpoint: a certificate that is
//! not trusted or does not name the host stops the processor with a sentence naming the key to
//! fix; an endpoint that is merely down is left to the sinks' and webhooks' retries.

use anyhow::Context;
use millilag_core::config::{HttpAuth, HttpUrl};
use millilag_core::Config;
use std::path::Path;
use std::time::Duration;

/// A client for one sink or webhook. `key` names it in errors (`sink.influxdb[0]`).
pub fn client(
    key: &str,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca)
            .with_context(|| format!("{key}.tls_ca_file: cannot read {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{key}.tls_ca_file: {} is not PEM", ca.display()))?;
        // Only this CA: a private CA file means "trust what it signed", not the whole web.
        b = b.tls_built_in_root_certs(false);
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build()
        .with_context(|| format!("{key}: building the HTTP client"))
}

/// Adds the configured `Authorization` header.
pub fn authorize(req: reqwest::RequestBuilder, auth: Option<&HttpAuth>) -> reqwest::RequestBuilder {
    match auth {
        Some(HttpAuth::Basic { username, password }) => {
            req.basic_auth(username, Some(password.expose()))
        }
        Some(HttpAuth::Bearer { token }) => req.bearer_auth(token.expose()),
        None => req,
    }
}

/// An error of a request as it may be logged: without the URL, with every cause (reqwest's
/// own text is only "error sending request"), and with what to fix when TLS says, or when a
/// plaintext request was hung up on (what an https-only server does).
pub fn describe(e: reqwest::Error, key: &str, https: bool) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    if let Some(hint) = millilag_core::tls::find_rustls_error(&e)
        .and_then(|r| millilag_core::tls::certificate_hint(r, &format!("{key}.tls_ca_file")))
    {
        text.push_str("; ");
        text.push_str(&hint);
    } else if !https && (text.contains("connection closed") || text.contains("reset by peer")) {
        text.push_str(&format!(
            "; if the server accepts https only, use an https:// url in {key}.url"
        ));
    }
    text
}

/// One request to `url` (HEAD, which has no effect on a receiver) to see whether TLS works.
/// Err only for a certificate problem, which retrying will not fix; a refused connection or a
/// timeout is logged and left to the retries.
pub async fn preflight(client: &reqwest::Client, key: &str, url: &HttpUrl) -> anyhow::Result<()> {
    if !url.is_https() {
        return Ok(());
    }
    match client.head(url.expose()).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let certificate = millilag_core::tls::find_rustls_error(&e)
                .is_some_and(millilag_core::tls::is_certificate_error);
            let text = describe(e, key, true);
            if certificate {
                anyhow::bail!("{key}.url ({url}): {text}");
            }
            tracing::warn!(endpoint = %key, url = %url, error = %text, "Endpoint not reachable at start; its writes will be retried.");
            Ok(())
        }
    }
}

/// [`preflight`] for every https sink and webhook of the config.
pub async fn check_endpoints(config: &Config) -> anyhow::Result<()> {
    let sinks = config.sink.influxdb.iter().enumerate().map(|(i, s)| {
        (
            format!("sink.influxdb[{i}]"),
            &s.url,
            s.timeout.0,
            s.tls_ca_file.as_deref(),
        )
    });
    let hooks = config.webhooks.iter().enumerate().map(|(i, w)| {
        (
            format!("webhook[{i}]"),
            &w.url,
            w.timeout.0,
            w.tls_ca_file.as_deref(),
        )
    });
    for (key, url, timeout, ca) in sinks.chain(hooks) {
        if url.is_https() {
            preflight(&client(&key, timeout, ca)?, &key, url).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_never_carry_the_url() {
        // Nothing listens on port 1: a refused connection, reported without the secret path.
        let url = "http://u:pw@127.0.0.1:1/hooks/T0/B0/SECRETPATH?token=SECRETQUERY";
        let c = client("webhook[0]", Duration::from_secs(2), None).unwrap();
        let e = c.post(url).send().await.unwrap_err();
        let text = describe(e, "webhook[0]", false);
        for secret in ["SECRETPATH", "SECRETQUERY", "pw@"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("onnect"), "the cause is kept: {text}");
    }

    #[test]
    fn a_ca_file_that_is_not_pem_names_the_key() {
        let dir = std::env::temp_dir().join(format!("millilag-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = client("sink.influxdb[1]", Duration::from_secs(1), Some(&missing)).unwrap_err();
        assert!(
            format!("{e:#}").starts_with("sink.influxdb[1].tls_ca_file: cannot read"),
            "{e:#}"
        );
    }
}
