//! The `MILLILAG_*` environment layer: each `MILLILAG_A__B__C=value` replaces `a.b.c` in the
//! parsed TOML tree before it is deserialized, so overrides go through the same checks as the file.

use std::collections::BTreeMap;

use super::ENV_PREFIX;

/// Separates levels in a variable name: `MILLILAG_CLUSTER__0__PRIMARY`.
const LEVEL_SEPARATOR: &str = "__";

/// An override whose text parsed as a TOML number, boolean, date or array: if the key turns
/// out to want a string, [`Retyped::as_string`] puts the text back as one.
#[derive(Debug, Clone)]
pub(super) struct Retyped {
    /// `reader.group`, `cluster[0].name`: how serde_path_to_error names the key.
    pub key: String,
    path: Vec<String>,
    raw: String,
}

impl Retyped {
    pub(super) fn as_string(&self, tree: &mut toml::Table) -> Result<(), String> {
        set_path(tree, &self.path, toml::Value::String(self.raw.clone()))
    }
}

/// Applies `MILLILAG_A__B__C=value` to `a.b.c`. Variables without `__` (like
/// `MILLILAG_DB_PASSWORD`) are not overrides. Values parse as TOML where they can ("true",
/// "5", "[\"1s\"]"), otherwise they are strings ("10ms", "127.0.0.1:9092"); the ones that
/// parsed as something else are returned, so that a key wanting a string gets the text as
/// written (`MILLILAG_READER__GROUP=2024` is the group "2024").
pub(super) fn apply_env_overrides(
    tree: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Retyped>, String> {
    let mut retyped = Vec::new();
    for (name, raw) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains(LEVEL_SEPARATOR) {
            continue;
        }
        let path: Vec<String> = rest
            .split(LEVEL_SEPARATOR)
            .map(|s| s.to_ascii_lowercase())
            .collect();
        let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(raw.clone()));
        if !value.is_str() {
            retyped.push(Retyped {
                key: serde_key(&path),
                path: path.clone(),
                raw: raw.clone(),
            });
        }
        set_path(tree, &path, value).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(retyped)
}

/// `["cluster", "0", "name"]` as serde_path_to_error prints it: `cluster[0].name`.
fn serde_key(path: &[String]) -> String {
    let mut key = String::new();
    for seg in path {
        if seg.parse::<usize>().is_ok() {
            key.push_str(&format!("[{seg}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(seg);
        }
    }
    key
}

/// Sets `value` at `path`, creating tables on the way; an array item must already exist in the file.
fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut node: &mut toml::Value = tree
        .entry(parents.first().unwrap_or(last).clone())
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if parents.is_empty() {
        *node = value;
        return Ok(());
    }
    for seg in parents[1..].iter().chain(std::iter::once(last)) {
        let is_last = std::ptr::eq(seg, last);
        node = match node {
            toml::Value::Table(t) => {
                if is_last {
                    t.insert(seg.clone(), value);
                    return Ok(());
                }
                t.entry(seg.clone())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
            }
            toml::Value::Array(a) => {
                let idx: usize = seg
                    .parse()
                    .map_err(|_| format!("{seg:?} is not an index into an array"))?;
                let len = a.len();
                let slot = a
                    .get_mut(idx)
                    .ok_or(format!("index {idx} is beyond the {len} items in the file"))?;
                if is_last {
                    *slot = value;
                    return Ok(());
                }
                slot
            }
            _ => return Err(format!("cannot set {seg:?} inside a plain value")),
        };
    }
    Ok(())
}
