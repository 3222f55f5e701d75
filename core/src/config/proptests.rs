//! Property tests of the loader: whatever the file and the environment hold, loading returns a
//! config or a [`ConfigError`] listing problems, and never panics.
//!
//! Three kinds of input: arbitrary text; the example config with one value (anywhere in the
//! tree) replaced by a random TOML value of any type, including durations and URLs at the edges;
//! and random `MILLILAG_*` overrides, well-formed or not.

use super::*;
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../../config/millilag.example.toml");

/// The example's secrets, so that an unchanged example loads.
fn base_env() -> Vec<(String, String)> {
    [
        ("INFLUX_TOKEN", "t"),
        ("MILLILAG_WEBHOOK_SECRET", "s"),
        ("MILLILAG_DB_PASSWORD", "p"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Loads and checks the outcome's shape: a config (printable) or a non-empty list of
/// non-empty problems.
fn load_checked(text: &str, env: Vec<(String, String)>) -> Result<(), TestCaseError> {
    match Config::from_toml_with_env(text, "prop.toml", env) {
        Ok(c) => {
            let _ = c.to_masked_toml();
        }
        Err(e) => {
            prop_assert!(!e.problems.is_empty());
            prop_assert!(e.problems.iter().all(|p| !p.trim().is_empty()), "{e}");
            prop_assert!(e.to_string().starts_with("invalid config prop.toml:"));
        }
    }
    Ok(())
}

/// Every path to a leaf value in a TOML tree (array items by index).
fn leaf_paths(v: &toml::Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                let mut p = prefix.clone();
                p.push(k.clone());
                leaf_paths(child, p, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, child) in a.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(i.to_string());
                leaf_paths(child, p, out);
            }
        }
        _ => out.push(prefix),
    }
}

fn set_at(v: &mut toml::Value, path: &[String], new: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = new;
        return;
    };
    let child = match v {
        toml::Value::Table(t) => t.get_mut(first),
        toml::Value::Array(a) => first.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    };
    if let Some(c) = child {
        set_at(c, rest, new);
    }
}

/// Strings a config value is likely to be, edges included.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{0,25}(ns|us|ms|s|m|h|d|w|y|M|years|)",
        "[0-9]{1,3}(ms|s) ?[0-9]{0,3}(ms|s|)",
        "mysql://[a-z]{0,5}(:[a-z]{0,3})?@?[a-z0-9.]{0,10}(:[0-9]{0,6})?",
        "https?://[a-z0-9.:/]{0,20}",
        "(p50|p90|p99|max|min|missing|status) ?(>|<|>=|=|==)? ?[0-9.]{0,6}(ms|s|us)?",
        "[a-z_$`; ]{0,70}",
        any::<String>(),
    ]
}

fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        tricky_string().prop_map(toml::Value::String),
        any::<i64>().prop_map(toml::Value::Integer),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// `MILLILAG_` variables: known sections and keys, indexes, junk and empty segments.
fn env_override() -> impl Strategy<Value = (String, String)> {
    let segment = prop_oneof![
        Just("WRITER".to_string()),
        Just("READER".to_string()),
        Just("CLUSTER".to_string()),
        Just("KAFKA".to_string()),
        Just("PROPERTIES".to_string()),
        Just("INTERVAL".to_string()),
        Just("PRIMARY".to_string()),
        Just("TIMEOUT".to_string()),
        "[0-9]{1,20}",
        "[A-Za-z_.]{0,6}",
    ];
    (
        prop::collection::vec(segment, 1..5),
        prop_oneof![tricky_string(), "\\[.{0,20}\\]", "\\{.{0,20}\\}"],
    )
        .prop_map(|(segs, v)| (format!("MILLILAG_{}", segs.join("__")), v))
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        load_checked(&text, base_env())?;
    }

    #[test]
    fn toml_ish_text_never_panics(
        lines in prop::collection::vec(
            prop_oneof![
                "\\[\\[?(kafka|cluster|writer|reader|processor|sink|alert|webhook|log|sink\\.influxdb|sink\\.graphite|kafka\\.properties)\\]\\]?",
                "[a-z_]{1,20} = (\"[^\"\\\\]{0,20}\"|[0-9-]{1,22}|true|false|\\[\\]|\\[\"[a-z0-9:/@.]{0,20}\"\\])",
                ".{0,30}",
            ],
            0..20,
        )
    ) {
        load_checked(&lines.join("\n"), base_env())?;
    }

    #[test]
    fn any_value_anywhere_in_the_example_never_panics(
        pick in any::<prop::sample::Index>(),
        value in toml_value(),
    ) {
        let mut tree: toml::Value = toml::from_str(EXAMPLE).unwrap();
        let mut paths = Vec::new();
        leaf_paths(&tree, Vec::new(), &mut paths);
        let path: &Vec<String> = pick.get(&paths);
        set_at(&mut tree, path, value);
        // toml cannot print every tree (e.g. a table after plain values in an array); such a
        // case says nothing about the loader.
        if let Ok(text) = toml::to_string(&tree) {
            load_checked(&text, base_env())?;
        }
    }

    #[test]
    fn any_environment_override_never_panics(
        overrides in prop::collection::vec(env_override(), 0..6),
    ) {
        let mut env = base_env();
        env.extend(overrides);
        load_checked(EXAMPLE, env)?;
    }
}
