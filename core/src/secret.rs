//! Secrets (passwords, tokens, HMAC keys) that must never reach a log line or a printed config.

use serde::{Serialize, Serializer};
use std::fmt;

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
        f.write_str("***")
    }
}

impl fmt::Display for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Sensitive {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// Where a secret comes from: an environment variable or a file (Kubernetes secret mounts).
/// Resolved once at start; a named source that is missing is a config error.
pub fn resolve_secret(
    key: &str,
    env_name: Option<&str>,
    file: Option<&std::path::Path>,
) -> Result<Option<Sensitive>, String> {
    if let Some(name) = env_name {
        if let Ok(v) = std::env::var(name) {
            return Ok(Some(Sensitive::new(v)));
        }
        if file.is_none() {
            return Err(format!(
                "{key}: environment variable {name} is not set; export it or set {key}_file"
            ));
        }
    }
    if let Some(path) = file {
        return std::fs::read_to_string(path)
            .map(|s| Some(Sensitive::new(s.trim_end_matches(['\n', '\r']))))
            .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()));
    }
    Ok(None)
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
    fn reads_files_and_names_missing_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let got = resolve_secret("x", None, Some(&p)).unwrap().unwrap();
        assert_eq!(got.expose(), "s3cret");
        let err = resolve_secret("token", Some("MILLILAG_TEST_SURELY_UNSET"), None).unwrap_err();
        assert!(err.contains("MILLILAG_TEST_SURELY_UNSET"), "{err}");
    }
}
