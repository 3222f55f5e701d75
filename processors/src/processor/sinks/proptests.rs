//! Property tests of the sinks' text formats: whatever the names and numbers of a window, the
//! InfluxDB encoder writes one point on one line that reads back to the same tags and fields,
//! and Graphite and statsd names stay single path elements. A name the processor refuses at
//! ingest (`millilag_core::names`) cannot reach an encoder; if it did, it reads back with the
//! documented substitutions (`_` for an empty name, a control character or a backslash).

use super::statsd::lines::{name_safe, Namer};
use super::{fields, graphite, influx, path_safe, window_label};
use millilag_core::config::StatsdProtocol;
use millilag_core::events::DelayWindow;
use millilag_core::names::name_problem;
use proptest::prelude::*;

/// Names: ordinary ones, ones full of what line protocol and paths treat specially, anything.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.:_-]{1,16}",
        "[ ,=\"'\\\\\n\r\t;:./#|@a-z\u{e9}\u{2028}]{0,12}",
        any::<String>(),
    ]
}

fn window() -> impl Strategy<Value = DelayWindow> {
    let delays = prop::array::uniform5(any::<Option<i64>>());
    let counts = prop::array::uniform8(any::<i64>());
    let window_us = prop_oneof![
        Just(1_000_000i64),
        Just(90_000_000),
        Just(3_723_000_001),
        any::<i64>()
    ];
    (name(), name(), any::<i64>(), window_us, delays, counts).prop_map(
        |(cluster, replica, window_start_us, window_us, d, c)| DelayWindow {
            cluster,
            replica,
            window_start_us,
            window_us,
            count: c[0],
            missing: c[1],
            min_us: d[0],
            p50_us: d[1],
            p90_us: d[2],
            p99_us: d[3],
            max_us: d[4],
            timeouts: c[2],
            unreachable: c[3],
            replication_stopped: c[4],
            skipped: c[5],
            upper_bounds: c[6],
            duplicates: c[7],
        },
    )
}

/// What a name reads back as: itself when the processor accepts it, else the substitutions.
fn read_back_as(name: &str) -> String {
    if name_problem(name).is_none() {
        return name.to_string();
    }
    if name.is_empty() {
        return "_".into();
    }
    name.chars()
        .map(|c| if c.is_control() || c == '\\' { '_' } else { c })
        .collect()
}

/// One point of line protocol, as InfluxDB's scanner reads it: a backslash escapes the next
/// character; unescaped ',' separates tags, '=' key from value, ' ' the three sections.
struct Point {
    measurement: String,
    tags: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    timestamp: String,
}

/// Split `s` at unescaped `sep`, unescaping the pieces.
fn split_unescaped(s: &str, sep: char) -> Vec<(String, String)> {
    let mut parts = vec![(String::new(), String::new())];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        let (raw, text) = parts.last_mut().unwrap();
        if c == '\\' {
            let next = chars.next().unwrap_or('\\');
            raw.push(c);
            raw.push(next);
            text.push(next);
        } else if c == sep {
            parts.push((String::new(), String::new()));
        } else {
            raw.push(c);
            text.push(c);
        }
    }
    parts
}

fn parse_line(line: &str) -> Result<Point, String> {
    let sections = split_unescaped(line, ' ');
    let [key, fields, ts] = &sections[..] else {
        return Err(format!("{} sections, not 3: {line:?}", sections.len()));
    };
    let mut series = split_unescaped(&key.0, ',').into_iter();
    let measurement = series.next().map(|m| m.1).unwrap_or_default();
    let mut tags = Vec::new();
    for (raw, _) in series {
        let kv = split_unescaped(&raw, '=');
        let [k, v] = &kv[..] else {
            return Err(format!("tag {raw:?} is not key=value"));
        };
        if v.1.is_empty() {
            return Err(format!("tag {raw:?} has an empty value"));
        }
        tags.push((k.1.clone(), v.1.clone()));
    }
    let fields = fields
        .1
        .split(',')
        .map(|f| {
            f.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| format!("fields {:?}", fields.1))?;
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp: ts.1.clone(),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn an_influx_point_is_one_line_that_reads_back_to_the_same_tags_and_fields(
        w in window(),
        measurement in prop_oneof![Just("replica_delay".to_string()), "[a-z_ ,=\"]{1,12}"],
    ) {
        let mut out = String::new();
        influx::line(&mut out, &measurement, &w);
        prop_assert!(out.ends_with('\n'), "{out:?}");
        let line = &out[..out.len() - 1];
        prop_assert!(!line.chars().any(char::is_control), "a raw control character: {out:?}");
        let p = parse_line(line).map_err(TestCaseError::fail)?;
        prop_assert_eq!(p.measurement, measurement);
        let label = window_label(w.window_us);
        prop_assert!(!label.contains(' '), "{label:?}");
        let want = vec![
            ("cluster".to_string(), read_back_as(&w.cluster)),
            ("replica".to_string(), read_back_as(&w.replica)),
            ("window".to_string(), label),
        ];
        prop_assert_eq!(p.tags, want);
        let want: Vec<(String, String)> =
            fields(&w).map(|(k, v)| (k.to_string(), format!("{v}i"))).collect();
        prop_assert_eq!(p.fields, want);
        prop_assert_eq!(p.timestamp, w.window_start_us.div_euclid(1000).to_string());
    }

    #[test]
    fn graphite_lines_are_one_metric_each_with_one_path_element_per_name(
        w in window(),
        prefix in "([a-z]{1,6}(\\.[a-z]{1,4})?)?",
    ) {
        let mut out = String::new();
        graphite::lines(&mut out, &prefix, &w);
        let lines: Vec<&str> = out.lines().collect();
        prop_assert_eq!(lines.len(), fields(&w).count());
        prop_assert_eq!(out.matches('\n').count(), lines.len(), "one line per metric");
        let mut want_path: Vec<String> = prefix
            .split('.')
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect();
        want_path.extend([path_safe(&w.cluster), path_safe(&w.replica), window_label(w.window_us)]);
        for (line, (field, value)) in lines.iter().zip(fields(&w)) {
            let parts: Vec<&str> = line.split(' ').collect();
            prop_assert_eq!(parts.len(), 3, "{:?}", line);
            let path = parts[0];
            prop_assert!(
                !path.chars().any(|c| c == ';' || c.is_whitespace() || c.is_control()),
                "{:?}", path
            );
            let elements: Vec<&str> = path.split('.').collect();
            prop_assert!(elements.iter().all(|e| !e.is_empty()), "{:?}", path);
            let mut want = want_path.clone();
            want.push(field.to_string());
            prop_assert_eq!(elements, want);
            prop_assert_eq!(parts[1], value.to_string());
            prop_assert_eq!(parts[2], w.window_start_us.div_euclid(1_000_000).to_string());
        }
    }

    #[test]
    fn statsd_names_are_single_elements_without_delimiters(w in window(), dog in any::<bool>()) {
        for n in [&w.cluster, &w.replica] {
            let safe = name_safe(n);
            prop_assert!(!safe.is_empty());
            prop_assert!(
                !safe.chars().any(|c| ".:/;|@#,".contains(c) || c.is_whitespace() || c.is_control()),
                "{:?} -> {:?}", n, safe
            );
        }
        let protocol = if dog { StatsdProtocol::Dogstatsd } else { StatsdProtocol::Statsd };
        let namer = Namer::new("millilag", protocol, 1.0);
        let mut units = Vec::new();
        namer.window_units(&w, |u| units.push(u.to_string()));
        for unit in &units {
            for line in unit.lines() {
                let (name, rest) = line.split_once(':').ok_or_else(|| TestCaseError::fail("no ':'"))?;
                prop_assert!(!name.contains(['|', '@', '#', ',', ' ', '/']), "{:?}", line);
                let sections = rest.split('|').count();
                prop_assert_eq!(sections, if dog { 3 } else { 2 }, "{:?}", line);
            }
        }
    }
}
