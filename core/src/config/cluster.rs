//! `[[cluster]]`: one primary (or several candidates for it) and the replicas to measure, where
//! the heartbeat table lives, the database password, and the bounds on every database call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::db_url::{DbTls, TlsMode};
use super::{DbUrl, ENV_PREFIX};
use crate::db::DbTimeouts;
use crate::duration::HumanDuration;
use crate::secret::{resolve_secret, EnvUnset, Sensitive};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name: the Kafka key of its heartbeats and a tag on every point.
    pub name: String,
    /// The primary, as `mysql://user[:password]@host:port`; or a list of candidates
    /// (`["mysql://u@db1:3306", "mysql://u@db2:3306"]`) of which the writer uses the writable one
    /// (`@@read_only = 0`), following it across a switchover. A VIP works as one URL.
    #[serde(
        rename = "primary",
        deserialize_with = "one_or_many",
        serialize_with = "one_or_many_out"
    )]
    pub primaries: Vec<DbUrl>,
    /// Replicas to measure, same form as `primary`.
    #[serde(default)]
    pub replicas: Vec<DbUrl>,
    /// Also measure the replicas the primary reports (SHOW SLAVE HOSTS / SHOW REPLICAS),
    /// picked up without a restart. They are reached with the primary's user and password.
    #[serde(default)]
    pub discover_replicas: bool,
    /// Database of the heartbeat table.
    #[serde(default = "default_database")]
    pub database: String,
    /// Heartbeat table name (pt-heartbeat compatible superset).
    #[serde(default = "default_table")]
    pub table: String,
    /// Environment variable holding the database password (when the URL has none and no
    /// `password_file` is set). Unset is an error; `""` means the user has no password.
    #[serde(default = "default_password_env")]
    pub password_env: String,
    /// File holding the database password (wins over `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Longest a connection attempt may take before the server counts as unreachable.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Longest any one statement may take (GTID waits: their own wait plus this). A leading
    /// writer whose heartbeat takes longer steps down and reconnects.
    #[serde(default = "default_query_timeout")]
    pub query_timeout: HumanDuration,
    /// TLS to the primary and every replica (discovered ones too): `off`, `require` (encrypted,
    /// certificate not checked), `verify-ca` (signed by `tls_ca_file`), `verify-identity` (and
    /// naming the host in the URL). MySQL's `--ssl-mode` meanings.
    #[serde(default)]
    pub tls: TlsMode,
    /// CA certificate(s), PEM, the servers' certificates must chain to. Absent: the built-in
    /// web roots (Mozilla's), which do not hold RDS's or a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM chain) for servers that want one (`REQUIRE X509`); with
    /// `tls_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Resolved at load time from the URL, `password_file` or `password_env`.
    #[serde(skip_deserializing, skip_serializing_if = "Option::is_none")]
    pub password: Option<Sensitive>,
}

fn default_database() -> String {
    "millilag".into()
}
// pt-heartbeat's default table name, so its tools find the row too.
fn default_table() -> String {
    "heartbeat".into()
}
fn default_password_env() -> String {
    format!("{ENV_PREFIX}DB_PASSWORD")
}
// The MySQL client library's own connect timeout is the OS's (minutes); a monitor wants seconds.
fn default_connect_timeout() -> HumanDuration {
    HumanDuration(DbTimeouts::DEFAULT.connect)
}
fn default_query_timeout() -> HumanDuration {
    HumanDuration(DbTimeouts::DEFAULT.query)
}

/// The accepted range of `connect_timeout` and `query_timeout`.
const MIN_DB_TIMEOUT: Duration = Duration::from_millis(10);
const MAX_DB_TIMEOUT: Duration = Duration::from_secs(600);

/// `primary = "mysql://..."` or `primary = ["mysql://...", ...]`; a bad URL keeps its own
/// message (an untagged enum would only say that nothing matched).
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<DbUrl>, D::Error> {
    struct V;
    impl<'de> de::Visitor<'de> for V {
        type Value = Vec<DbUrl>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mysql:// URL or a list of them")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<DbUrl>, E> {
            DbUrl::parse(v).map(|u| vec![u]).map_err(E::custom)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<DbUrl>, A::Error> {
            let mut out = Vec::new();
            while let Some(u) = seq.next_element::<DbUrl>()? {
                out.push(u);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// Printed back the way it is usually written: one URL as a string.
fn one_or_many_out<S: Serializer>(v: &[DbUrl], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => one.serialize(s),
        many => many.serialize(s),
    }
}

impl ClusterConfig {
    /// The first primary candidate: the one to name in messages, and the only one for a
    /// cluster configured with a single URL.
    pub fn primary(&self) -> &DbUrl {
        // validate_all refuses an empty list, so a loaded config always has one.
        &self.primaries[0]
    }

    /// The bounds on this cluster's database calls.
    pub fn db_timeouts(&self) -> DbTimeouts {
        DbTimeouts {
            connect: self.connect_timeout.0,
            query: self.query_timeout.0,
        }
    }

    /// The rules on every cluster; names must also be unique across them.
    pub(super) fn validate_all(clusters: &[ClusterConfig], p: &mut Vec<String>) {
        let mut names = BTreeSet::new();
        for (i, c) in clusters.iter().enumerate() {
            let key = format!("cluster[{i}]");
            if let Some(why) = crate::names::name_problem(&c.name) {
                p.push(format!("{key}.name ({:?}) {why}", c.name));
            } else if c.name.contains('/') {
                // '/' separates cluster and replica in the Kafka keys.
                p.push(format!("{key}.name ({:?}) must contain no '/'", c.name));
            }
            if !names.insert(c.name.as_str()) {
                p.push(format!(
                    "{key}.name ({:?}) is used twice; cluster names must be unique",
                    c.name
                ));
            }
            for (field, v) in [("database", &c.database), ("table", &c.table)] {
                if let Err(e) = validate_identifier(v) {
                    p.push(format!("{key}.{field} ({v:?}): {e}"));
                }
            }
            if c.primaries.is_empty() {
                p.push(format!(
                    "{key}.primary: empty list; give the primary's URL or a list of candidates"
                ));
            }
            let mut seen = BTreeSet::new();
            for u in &c.primaries {
                if !seen.insert(u.address()) {
                    p.push(format!(
                        "{key}.primary lists {} twice; list each candidate once",
                        u.address()
                    ));
                }
            }
            for (field, d) in [
                ("connect_timeout", c.connect_timeout),
                ("query_timeout", c.query_timeout),
            ] {
                if !(MIN_DB_TIMEOUT..=MAX_DB_TIMEOUT).contains(&d.0) {
                    p.push(format!("{key}.{field} ({d}) must be between 10ms and 10m"));
                }
            }
            if c.replicas.is_empty() && !c.discover_replicas {
                p.push(format!(
                    "{key}.replicas: none listed and discover_replicas = false; list replicas or enable discovery"
                ));
            }
        }
    }

    /// Reads and checks the TLS files, then gives every server URL of the cluster the
    /// resulting settings.
    pub(super) fn resolve_tls(&mut self, key: &str, p: &mut Vec<String>) {
        let before = p.len();
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        if self.tls == TlsMode::Off {
            for (name, f) in files {
                if f.is_some() {
                    p.push(format!(
                        "{key}.{name} is set but {key}.tls = \"off\"; set tls = \"verify-identity\" \
                         (or \"verify-ca\", \"require\") or remove {name}"
                    ));
                }
            }
            // Plaintext, but errors can still say which key turns TLS on.
            self.set_tls(DbTls {
                mode: TlsMode::Off,
                ssl: None,
                key: key.to_string(),
            });
            return;
        }
        if let Some(ca) = &self.tls_ca_file {
            if let Err(e) = crate::tls::read_ca_file(&format!("{key}.tls_ca_file"), ca) {
                p.push(e);
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(k)) => {
                if let Err(e) = crate::tls::read_certificates(&format!("{key}.tls_cert_file"), cert)
                {
                    p.push(e);
                }
                if let Err(e) = crate::tls::check_private_key(&format!("{key}.tls_key_file"), k) {
                    p.push(e);
                }
            }
            (Some(_), None) => p.push(format!(
                "{key}.tls_cert_file is set without tls_key_file; set both or neither"
            )),
            (None, Some(_)) => p.push(format!(
                "{key}.tls_key_file is set without tls_cert_file; set both or neither"
            )),
            (None, None) => {}
        }
        if p.len() > before {
            return;
        }
        self.set_tls(DbTls {
            mode: self.tls,
            ssl: Some(self.ssl_opts()),
            key: key.to_string(),
        });
    }

    fn set_tls(&mut self, tls: DbTls) {
        for r in self.primaries.iter_mut().chain(&mut self.replicas) {
            r.set_tls(tls.clone());
        }
    }

    /// mysql_async's options for `tls`. The files are given as paths: read at each connect, so
    /// rotated certificates are picked up.
    fn ssl_opts(&self) -> mysql_async::SslOpts {
        let mut ssl = mysql_async::SslOpts::default();
        if let Some(ca) = &self.tls_ca_file {
            // A private CA replaces the web roots rather than adding to them.
            ssl = ssl
                .with_root_certs(vec![ca.clone().into()])
                .with_disable_built_in_roots(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            ssl = ssl.with_client_identity(Some(mysql_async::ClientIdentity::new(
                cert.clone().into(),
                key.clone().into(),
            )));
        }
        match self.tls {
            TlsMode::Require => ssl.with_danger_accept_invalid_certs(true),
            // Name checks are skipped in db::connect (mysql_async 0.37's own switch for it
            // does not work with rustls 0.23: blackbeam/mysql_async#404).
            TlsMode::Off | TlsMode::VerifyCa | TlsMode::VerifyIdentity => ssl,
        }
    }

    /// The password from the primary's URL, else `password_file`, else `password_env`. An unset
    /// `password_env` is a start error, like an unset token: a forgotten secret would otherwise
    /// surface as "access denied" on every server. `password_env = ""` opts out (no password).
    pub(super) fn resolve_password(
        &mut self,
        key: &str,
        env: &BTreeMap<String, String>,
        p: &mut Vec<String>,
    ) {
        let url_password = self.primaries.first().and_then(DbUrl::password);
        self.password = match url_password {
            Some(pw) => Some(Sensitive::new(pw)),
            None => resolve_secret(
                &format!("{key}.password"),
                Some(self.password_env.as_str()).filter(|n| !n.is_empty()),
                self.password_file.as_deref(),
                env,
                EnvUnset::Problem(
                    "export it, set password_file, or put the password in the URL (password_env = \"\" for a user without a password)",
                ),
            )
            .unwrap_or_else(|e| {
                p.push(e);
                None
            }),
        };
    }
}

/// Longest MySQL identifier.
const MAX_IDENTIFIER_LEN: usize = 64;

/// MySQL identifiers we interpolate into SQL (database, table): only what needs no quoting.
pub fn validate_identifier(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_IDENTIFIER_LEN {
        return Err(format!("must be 1 to {MAX_IDENTIFIER_LEN} characters"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    {
        return Err("may contain only letters, digits, '_' and '$'".into());
    }
    if s.chars().all(|c| c.is_ascii_digit()) {
        return Err("must not be all digits".into());
    }
    Ok(())
}
