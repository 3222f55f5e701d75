//! `[[cluster]]`: one primary and the replicas to measure, where the heartbeat table lives, and
//! the database password.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{DbUrl, ENV_PREFIX};
use crate::secret::{resolve_secret, EnvUnset, Sensitive};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name: the Kafka key of its heartbeats and a tag on every point.
    pub name: String,
    /// The primary, as `mysql://user[:password]@host:port`.
    pub primary: DbUrl,
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

impl ClusterConfig {
    /// The rules on every cluster; names must also be unique across them.
    pub(super) fn validate_all(clusters: &[ClusterConfig], p: &mut Vec<String>) {
        let mut names = BTreeSet::new();
        for (i, c) in clusters.iter().enumerate() {
            let key = format!("cluster[{i}]");
            if c.name.is_empty() || c.name.contains('/') {
                p.push(format!(
                    "{key}.name ({:?}): must be non-empty and contain no '/'",
                    c.name
                ));
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
            if c.replicas.is_empty() && !c.discover_replicas {
                p.push(format!(
                    "{key}.replicas: none listed and discover_replicas = false; list replicas or enable discovery"
                ));
            }
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
        self.password = match self.primary.password() {
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
