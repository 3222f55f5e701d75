//! `mysql://user[:password]@host:port` addresses, validated at load and printed without the password.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    raw: String,
    opts: mysql_async::Opts,
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
        })
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
        let mut b = mysql_async::OptsBuilder::from_opts(self.opts.clone())
            .prefer_socket(false)
            .tcp_nodelay(true)
            .tcp_keepalive(Some(crate::db::TCP_KEEPALIVE))
            .stmt_cache_size(32);
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
        }
    }
}

/// The URL with any password replaced by `***`.
fn mask(raw: &str) -> String {
    let Some(rest) = raw.strip_prefix("mysql://") else {
        return raw.to_string();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("mysql://{user}:***@{host}"),
            None => raw.to_string(),
        },
        None => raw.to_string(),
    }
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
}
