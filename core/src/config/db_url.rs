//! `mysql://user[:password]@host:port` addresses, validated at load and printed without the password.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    raw: String,
    opts: mysql_async::Opts,
    /// How connections to this server are secured (the cluster's `tls` keys).
    tls: DbTls,
}

/// `[[cluster]] tls`: how connections to the primary and every replica are secured. The names
/// and meanings are MySQL's `--ssl-mode` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plaintext.
    #[default]
    Off,
    /// Encrypted; the server's certificate is not checked (protects from eavesdropping only).
    Require,
    /// Encrypted; the certificate must chain to `tls_ca_file` (or to the built-in web roots),
    /// whatever name it carries.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host in the URL (the safe choice).
    VerifyIdentity,
}

impl TlsMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyIdentity => "verify-identity",
        }
    }
}

/// The TLS settings a [`DbUrl`] connects with, and the config key they came from (for hints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbTls {
    pub mode: TlsMode,
    pub ssl: Option<mysql_async::SslOpts>,
    /// `cluster[0]`: the prefix of the keys a hint names.
    pub key: String,
}

impl DbUrl {
    pub fn parse(raw: &str) -> Result<DbUrl, String> {
        if !raw.starts_with("mysql://") {
            return Err(format!(
                "{:?} must look like mysql://user@host:port",
                mask(raw)
            ));
        }
        let opts = mysql_async::Opts::from_url(raw)
            .map_err(|e| format!("{:?} is not a MySQL URL: {e}", mask(raw)))?;
        Ok(DbUrl {
            raw: raw.to_string(),
            opts,
            tls: DbTls::default(),
        })
    }

    /// Connect with these TLS settings (set once at load from the cluster's `tls` keys; kept by
    /// [`DbUrl::with_address`], so discovered replicas are secured like the listed ones).
    pub fn set_tls(&mut self, tls: DbTls) {
        self.tls = tls;
    }

    pub fn tls(&self) -> &DbTls {
        &self.tls
    }

    /// host:port: how this server is named in records, tags and logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.opts.ip_or_hostname(), self.opts.tcp_port())
    }

    pub fn host(&self) -> String {
        self.opts.ip_or_hostname().to_string()
    }

    pub fn port(&self) -> u16 {
        self.opts.tcp_port()
    }

    pub fn user(&self) -> Option<&str> {
        self.opts.user()
    }

    pub fn password(&self) -> Option<&str> {
        self.opts.pass()
    }

    /// Connection options with the resolved password. TCP even for 127.0.0.1 (mysql_async would
    /// otherwise switch to the server's socket), no default database (the heartbeat table is
    /// always qualified), Nagle off (heartbeats are tiny and latency is the product) and TCP
    /// keepalive on (a vanished server is noticed on an idle connection too).
    pub fn opts(&self, password: Option<&str>) -> mysql_async::Opts {
        self.opts_with_server_name(password, None)
    }

    /// [`DbUrl::opts`], verifying the server's certificate against `server_name` instead of the
    /// host connected to (how verify-ca accepts any name its CA signed; see `db::connect`).
    pub fn opts_with_server_name(
        &self,
        password: Option<&str>,
        server_name: Option<&str>,
    ) -> mysql_async::Opts {
        let mut b = mysql_async::OptsBuilder::from_opts(self.opts.clone())
            .prefer_socket(false)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(crate::db::TCP_KEEPALIVE))
            .stmt_cache_size(32);
        if let Some(ssl) = &self.tls.ssl {
            let ssl = match server_name {
                Some(name) => ssl
                    .clone()
                    .with_danger_tls_hostname_override(Some(name.to_string())),
                None => ssl.clone(),
            };
            b = b.ssl_opts(ssl);
        }
        if self.opts.pass().is_none() {
            b = b.pass(password.map(str::to_string));
        }
        b.into()
    }

    /// A sibling on another host:port with the same user (for discovered replicas).
    pub fn with_address(&self, host: &str, port: u16) -> DbUrl {
        let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(self.opts.clone())
            .ip_or_hostname(host.to_string())
            .tcp_port(port)
            .into();
        let user = self.user().map(|u| format!("{u}@")).unwrap_or_default();
        DbUrl {
            raw: format!("mysql://{user}{host}:{port}"),
            opts,
            tls: self.tls.clone(),
        }
    }
}

/// The URL with any password replaced by `***` (the whole password, '@' and all).
fn mask(raw: &str) -> String {
    crate::secret::mask_url(raw, false)
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.raw))
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DbUrl({})", mask(&self.raw))
    }
}

impl Serialize for DbUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&mask(&self.raw))
    }
}

impl<'de> Deserialize<'de> for DbUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        DbUrl::parse(&raw).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_password_everywhere() {
        let u = DbUrl::parse("mysql://mon:pa55@10.0.0.1:3307").unwrap();
        assert_eq!(u.to_string(), "mysql://mon:***@10.0.0.1:3307");
        assert!(!format!("{u:?}").contains("pa55"));
        assert_eq!(u.address(), "10.0.0.1:3307");
        assert_eq!(u.password(), Some("pa55"));
    }

    #[test]
    fn a_password_with_at_signs_is_masked_whole_and_still_used() {
        let u = DbUrl::parse("mysql://mon:p@ss:w@rd@10.0.0.1:3307").unwrap();
        assert_eq!(u.to_string(), "mysql://mon:***@10.0.0.1:3307");
        assert_eq!(u.address(), "10.0.0.1:3307");
        assert_eq!(u.password(), Some("p@ss:w@rd"));
    }

    #[test]
    fn rejects_other_schemes() {
        assert!(DbUrl::parse("postgres://x@y:1").is_err());
        assert!(DbUrl::parse("127.0.0.1:3306").is_err());
    }

    #[test]
    fn connections_keep_alive_and_use_tcp() {
        let o = DbUrl::parse("mysql://mon@127.0.0.1:3306")
            .unwrap()
            .opts(Some("pw"));
        assert_eq!(o.tcp_keepalive(), Some(crate::db::TCP_KEEPALIVE));
        assert!(!o.prefer_socket());
        assert_eq!(o.pass(), Some("pw"));
    }

    #[test]
    fn sibling_keeps_user() {
        let u = DbUrl::parse("mysql://mon@10.0.0.1:3306").unwrap();
        let s = u.with_address("10.0.0.2", 3310);
        assert_eq!(s.address(), "10.0.0.2:3310");
        assert_eq!(s.user(), Some("mon"));
    }

    #[test]
    fn siblings_keep_the_tls_settings() {
        let mut u = DbUrl::parse("mysql://mon@10.0.0.1:3306").unwrap();
        u.set_tls(DbTls {
            mode: TlsMode::VerifyIdentity,
            ssl: Some(mysql_async::SslOpts::default()),
            key: "cluster[0]".into(),
        });
        let s = u.with_address("10.0.0.2", 3310);
        assert_eq!(s.tls().mode, TlsMode::VerifyIdentity);
        assert!(s.opts(None).ssl_opts().is_some());
        let plain = DbUrl::parse("mysql://mon@10.0.0.1:3306").unwrap();
        assert!(plain.opts(None).ssl_opts().is_none());
    }
}
