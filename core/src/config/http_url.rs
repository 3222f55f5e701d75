//! `http://` and `https://` addresses of sinks and webhooks, validated at load and printed
//! without their credentials, and the HTTP authentication a sink or webhook sends.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

use crate::secret::{mask_url, Sensitive};

/// A sink or webhook URL. Prints (Display, Debug, Serialize: logs, spans, `check-config`) with
/// its password and credential-like query values masked, and without its path where the path is
/// the credential (Slack, Discord, Teams, Mattermost incoming webhooks); [`HttpUrl::expose`]
/// gives the real one.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    raw: String,
    masked: String,
}

impl HttpUrl {
    pub fn parse(raw: &str) -> Result<HttpUrl, String> {
        let masked = mask_url(raw, path_is_secret(raw));
        if !(raw.starts_with("http://") || raw.starts_with("https://")) {
            return Err(format!("{masked:?} must start with http:// or https://"));
        }
        Ok(HttpUrl {
            raw: raw.to_string(),
            masked,
        })
    }

    /// The URL to connect to. Never log it.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    pub fn is_https(&self) -> bool {
        self.raw.starts_with("https://")
    }

    /// Print without the path from now on (a `format = "slack"` webhook's URL is its secret).
    pub fn hide_path(&mut self) {
        self.masked = mask_url(&self.raw, true);
    }
}

/// Incoming-webhook URLs whose path is the credential.
fn path_is_secret(raw: &str) -> bool {
    let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    host == "hooks.slack.com"
        || host.ends_with(".webhook.office.com")
        || ((host == "discord.com" || host == "discordapp.com")
            && path.starts_with("/api/webhooks"))
        || path.contains("/hooks/")
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HttpUrl({})", self.masked)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HttpUrl::parse(&raw).map_err(de::Error::custom)
    }
}

/// The `Authorization` a sink or webhook sends, resolved from its keys at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpAuth {
    /// `Authorization: Basic base64(user:password)`.
    Basic {
        username: String,
        password: Sensitive,
    },
    /// `Authorization: Bearer <token>`.
    Bearer { token: Sensitive },
}

/// `<key>.tls_ca_file`: only with an https URL, and a readable PEM CA bundle.
pub(super) fn check_tls_ca(
    key: &str,
    url: &HttpUrl,
    ca_file: Option<&std::path::Path>,
    p: &mut Vec<String>,
) {
    let Some(ca) = ca_file else { return };
    if !url.is_https() {
        p.push(format!(
            "{key}.tls_ca_file is set but {key}.url ({url}) is not https://; use https:// or remove tls_ca_file"
        ));
    }
    if let Err(e) = crate::tls::read_ca_file(&format!("{key}.tls_ca_file"), ca) {
        p.push(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_print_without_their_secrets() {
        let cases = [
            (
                "https://hooks.slack.com/services/T00/B00/XXXXSECRET",
                "https://hooks.slack.com/***",
            ),
            (
                "https://discord.com/api/webhooks/1/SECRET",
                "https://discord.com/***",
            ),
            (
                "https://acme.webhook.office.com/webhookb2/SECRET",
                "https://acme.webhook.office.com/***",
            ),
            (
                "https://chat.example/hooks/SECRET",
                "https://chat.example/***",
            ),
            (
                "https://am:p@ss@am.example:9093/api/v2/alerts",
                "https://am:***@am.example:9093/api/v2/alerts",
            ),
            (
                "https://h.example/notify?token=SECRET",
                "https://h.example/notify?token=***",
            ),
        ];
        for (raw, want) in cases {
            let u = HttpUrl::parse(raw).unwrap();
            assert_eq!(u.to_string(), want);
            assert_eq!(format!("{u:?}"), format!("HttpUrl({want})"));
            assert_eq!(serde_json::to_string(&u).unwrap(), format!("\"{want}\""));
            assert_eq!(u.expose(), raw);
        }
        let mut u = HttpUrl::parse("https://relay.example/any/SECRET").unwrap();
        assert!(u.to_string().contains("SECRET"));
        u.hide_path();
        assert_eq!(u.to_string(), "https://relay.example/***");
    }

    #[test]
    fn only_http_and_https() {
        let e = HttpUrl::parse("ftp://u:pw@h/x").unwrap_err();
        assert!(e.contains("must start with http:// or https://"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
        assert!(HttpUrl::parse("https://h").unwrap().is_https());
    }
}
