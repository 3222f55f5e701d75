//! Secrets (passwords, tokens, HMAC keys) that must never reach a log line or a printed config.

use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

/// How every secret prints.
pub const MASK: &str = "***";

/// A secret value. `Debug`, `Display` and `Serialize` all print `***`; only [`Sensitive::expose`]
/// gives the value, so every use of it is greppable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Sensitive(String);

impl Sensitive {
    pub fn new(value: impl Into<String>) -> Self {
        Sensitive(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Sensitive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// Query parameters whose values are credentials (`?token=...`, `?api_key=...`, `?sig=...`).
fn is_secret_query_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "token",
        "key",
        "secret",
        "pass",
        "sig",
        "auth",
        "code",
        "credential",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// A URL as it may be printed: the password in `user:password@` becomes `***` and so do the
/// values of query parameters that look like credentials. The userinfo ends at the *last* `@`
/// before the path, as URL parsers read it, so a password containing `@` is masked whole.
/// With `hide_path`, everything after the host is `/***` too (Slack-style webhook URLs, whose
/// path is the credential).
pub fn mask_url(raw: &str, hide_path: bool) -> String {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => raw.split_at(i + 3),
        None => ("", raw),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(raw.len());
    out.push_str(scheme);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    if hide_path {
        if !tail.is_empty() {
            out.push('/');
            out.push_str(MASK);
        }
        return out;
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    out.push_str(path);
    if let Some(q) = query {
        let (q, fragment) = match q.split_once('#') {
            Some((q, f)) => (q, Some(f)),
            None => (q, None),
        };
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if is_secret_query_key(k) => {
                    out.push_str(k);
                    out.push('=');
                    out.push_str(MASK);
                }
                _ => out.push_str(pair),
            }
        }
        if let Some(f) = fragment {
            out.push('#');
            out.push_str(f);
        }
    }
    out
}

/// What a secret named by an environment variable that is not set means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvUnset {
    /// Nothing: the secret is optional (a database that needs no password).
    Optional,
    /// A config problem; the text says how to fix it, e.g. "export it or use token_file".
    Problem(&'static str),
}

/// Resolves one secret from a file (Kubernetes secret mounts; wins when both are set) or an
/// environment variable, once at start. `key` is the config key of the secret
/// (`sink.influxdb[0].token`): an unreadable file is a problem on `<key>`, an unset variable one
/// on `<key>_env`, each saying how to fix it.
pub fn resolve_secret(
    key: &str,
    env_name: Option<&str>,
    file: Option<&std::path::Path>,
    env: &BTreeMap<String, String>,
    if_unset: EnvUnset,
) -> Result<Option<Sensitive>, String> {
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(Sensitive::new(s.trim_end_matches(['\n', '\r']))))
            .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()));
    }
    let Some(name) = env_name else {
        return Ok(None);
    };
    match (env.get(name), if_unset) {
        (Some(v), _) => Ok(Some(Sensitive::new(v.as_str()))),
        (None, EnvUnset::Optional) => Ok(None),
        (None, EnvUnset::Problem(fix)) => Err(format!(
            "{key}_env: environment variable {name} is not set; {fix}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_the_value() {
        let s = Sensitive::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn urls_lose_passwords_and_secret_parameters() {
        let cases = [
            ("mysql://mon:pa55@db:3306", "mysql://mon:***@db:3306"),
            // The password has '@' (and ':') in it: masked whole, the host survives.
            (
                "mysql://mon:p@ss:w@rd@db:3306/x",
                "mysql://mon:***@db:3306/x",
            ),
            (
                "https://u:p@s@h:8086/write?db=m&u=x&p=1",
                "https://u:***@h:8086/write?db=m&u=x&p=1",
            ),
            (
                "https://h/api?token=abc&org=o",
                "https://h/api?token=***&org=o",
            ),
            (
                "https://h/x?api_key=abc#frag",
                "https://h/x?api_key=***#frag",
            ),
            ("https://user@h/", "https://user@h/"),
            ("http://h:9093/api/v2/alerts", "http://h:9093/api/v2/alerts"),
        ];
        for (raw, want) in cases {
            assert_eq!(mask_url(raw, false), want, "{raw}");
        }
        assert_eq!(
            mask_url("https://hooks.slack.com/services/T0/B0/XYZ", true),
            "https://hooks.slack.com/***"
        );
        assert_eq!(mask_url("https://a:b@h", true), "https://a:***@h");
    }

    #[test]
    fn reads_files_and_names_missing_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let none = BTreeMap::new();
        let got = resolve_secret("x", None, Some(&p), &none, EnvUnset::Optional)
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "s3cret");
        let fix = EnvUnset::Problem("export it");
        let err = resolve_secret(
            "token",
            Some("MILLILAG_TEST_SURELY_UNSET"),
            None,
            &none,
            fix,
        )
        .unwrap_err();
        assert!(err.contains("MILLILAG_TEST_SURELY_UNSET"), "{err}");
    }

    #[test]
    fn a_file_wins_and_an_optional_env_may_be_unset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tok");
        std::fs::write(&p, "from-file").unwrap();
        let env = BTreeMap::from([("TOK".to_string(), "from-env".to_string())]);
        let fix = EnvUnset::Problem("export it");
        let got = resolve_secret("t", Some("TOK"), Some(&p), &env, fix).unwrap();
        assert_eq!(got.unwrap().expose(), "from-file");
        let got = resolve_secret("t", Some("TOK"), None, &env, fix).unwrap();
        assert_eq!(got.unwrap().expose(), "from-env");
        let got = resolve_secret("t", Some("UNSET"), None, &env, EnvUnset::Optional).unwrap();
        assert!(got.is_none());
        let err = resolve_secret("t", None, Some(&dir.path().join("nope")), &env, fix).unwrap_err();
        assert!(err.starts_with("t: cannot read"), "{err}");
    }
}
