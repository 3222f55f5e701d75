//! Which cluster and replica names can become points.
//!
//! A name becomes an InfluxDB tag value, a Graphite or statsd path element and a Kafka key.
//! Commas, spaces, `=` and quotes are fine: the InfluxDB sink escapes them and the Graphite and
//! statsd sinks replace what would split a path. Three things no sink can carry faithfully are
//! refused where a name enters: at config load (`cluster[i].name`) and, for records from Kafka,
//! by the processor, which dead-letters them with the reason from [`name_problem`].

/// Why `name` cannot name a cluster or replica in the sinks, if it cannot.
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        // InfluxDB refuses a whole request with one empty tag value ("missing tag value").
        return Some("is empty; every point needs a cluster and a replica name");
    }
    if name.chars().any(char::is_control) {
        return Some(
            "contains a control character (a newline, tab, ...), which InfluxDB line protocol cannot carry",
        );
    }
    if name.contains('\\') {
        // InfluxDB 1.x keeps `\\` as two backslashes and cannot end a tag value with one;
        // InfluxDB 2.x and VictoriaMetrics read `\\` as one: no escaping reads back the same.
        return Some(
            "contains a backslash, which InfluxDB 1.x and 2.x/VictoriaMetrics unescape differently",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_control_characters_and_backslashes_are_refused() {
        for ok in ["main", "127.0.0.1:3307", "db 2,x=1", "eu/\"west\"", "ü"] {
            assert_eq!(name_problem(ok), None, "{ok:?}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("db\n2", "control"),
            ("db\t2", "control"),
            ("db\r", "control"),
            ("db\\2", "backslash"),
        ] {
            let got = name_problem(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad:?}: {got}");
        }
    }

    #[test]
    fn config_refuses_such_names_naming_the_key() {
        let example = include_str!("../../config/millilag.example.toml");
        let env = [
            ("INFLUX_TOKEN", "t"),
            ("MILLILAG_WEBHOOK_SECRET", "s"),
            ("MILLILAG_DB_PASSWORD", "p"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let load = |text: &str| {
            crate::Config::from_toml_with_env(text, "t.toml", env.clone())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert_eq!(load(example), "");
        for (name, why) in [
            (r#""""#, "cluster[0].name (\"\") is empty"),
            (
                r#""a\nb""#,
                "cluster[0].name (\"a\\nb\") contains a control character",
            ),
            (r#""a\\b""#, "contains a backslash"),
            (r#""a/b""#, "must contain no '/'"),
        ] {
            let text = example.replacen("name = \"main\"", &format!("name = {name}"), 1);
            assert!(load(&text).contains(why), "{name}: {}", load(&text));
        }
        let text = example.replace(
            "[[sink.influxdb]]",
            "[[sink.influxdb]]\nmeasurement = \"#x\"",
        );
        assert!(
            load(&text).contains("sink.influxdb[0].measurement (\"#x\") must not start with '#'")
        );
    }
}
