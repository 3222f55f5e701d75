//! The `MILLILAG_*` environment layer: each `MILLILAG_A__B__C=value` replaces `a.b.c` in the
//! parsed TOML tree before it is deserialized, so overrides go through the same checks as the file.

use std::collections::BTreeMap;

use super::ENV_PREFIX;

/// Separates levels in a variable name: `MILLILAG_CLUSTER__0__PRIMARY`.
const LEVEL_SEPARATOR: &str = "__";

/// Applies `MILLILAG_A__B__C=value` to `a.b.c`. Variables without `__` (like
/// `MILLILAG_DB_PASSWORD`) are not overrides. Values parse as TOML where they can ("true",
/// "5", "[\"1s\"]"), otherwise they are strings ("10ms", "127.0.0.1:9092").
pub(super) fn apply_env_overrides(
    tree: &mut toml::Table,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
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
        set_path(tree, &path, value).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
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
