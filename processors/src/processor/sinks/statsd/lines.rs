//! The statsd line format, without I/O: names, values in milliseconds, and the lines of a
//! window (gauges) or of one measurement (a timer).
//!
//! | | `statsd` | `dogstatsd` |
//! |---|---|---|
//! | window | `<prefix>.<cluster>.<replica>.<window>.<field>:<v>\|g` | `<prefix>.<field>:<v>\|g\|#cluster:<c>,replica:<r>,window:<w>` |
//! | timer | `<prefix>.<cluster>.<replica>.delay:<ms>\|ms\|@<rate>` | `<prefix>.delay:<ms>\|ms\|@<rate>\|#cluster:<c>,replica:<r>` |
//!
//! Fields: `count`, `missing`, `p50_ms`, `p90_ms`, `p99_ms`, `max_ms` (the four delays only when
//! the window has a measurement). Names are sanitised as for Graphite (`.`, `:`, `/`, spaces
//! become `_`), and so are the statsd delimiters `|`, `@`, `#`, `,`.
//!
//! A negative gauge value (a delay can come out a little below zero when the reader's clock
//! offset estimate is off) would read as a decrement in statsd, so it is sent as the pair
//! `name:0|g` + `name:-v|g` — one unit that a packet never splits.

use super::super::{path_safe, window_label};
use millilag_core::config::StatsdProtocol;
use millilag_core::events::DelayWindow;
use std::fmt::Write as _;

/// One cluster or replica name as a single path element or tag value.
pub fn name_safe(s: &str) -> String {
    path_safe(s)
        .chars()
        .map(|c| match c {
            '|' | '@' | '#' | ',' | '\r' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// Microseconds as milliseconds with up to three decimals, trailing zeros cut: 1873 -> "1.873",
/// 2000 -> "2", -500 -> "-0.5".
pub fn push_ms(out: &mut String, us: i64) {
    if us < 0 {
        out.push('-');
    }
    let abs = us.unsigned_abs();
    let (whole, frac) = (abs / 1000, abs % 1000);
    let _ = write!(out, "{whole}");
    if frac != 0 {
        let digits = format!("{frac:03}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
}

/// How one sink names its metrics.
#[derive(Debug, Clone)]
pub struct Namer {
    /// The prefix with its dot ("millilag."), or empty.
    prefix: String,
    protocol: StatsdProtocol,
    /// `|@<rate>` when timings are sampled, else empty.
    rate: String,
}

/// A timer's line around its value: `head` + ms + `tail`. Built once per replica.
#[derive(Debug, PartialEq, Eq)]
pub struct TimerName {
    pub head: String,
    pub tail: String,
}

impl Namer {
    pub fn new(prefix: &str, protocol: StatsdProtocol, sample_rate: f64) -> Namer {
        let prefix = prefix.trim_end_matches('.');
        Namer {
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}.")
            },
            protocol,
            rate: if sample_rate < 1.0 {
                format!("|@{sample_rate}")
            } else {
                String::new()
            },
        }
    }

    /// The gauges of one window, each a unit for [`super::packets::Packer::push`].
    pub fn window_units(&self, w: &DelayWindow, mut unit: impl FnMut(&str)) {
        let (c, r, win) = (
            name_safe(&w.cluster),
            name_safe(&w.replica),
            window_label(w.window_us),
        );
        let delays = [
            ("p50_ms", w.p50_us),
            ("p90_ms", w.p90_us),
            ("p99_ms", w.p99_us),
            ("max_ms", w.max_us),
        ];
        let mut line = String::with_capacity(128);
        let mut name = String::with_capacity(96);
        let mut value = String::with_capacity(16);
        let counts = [("count", w.count), ("missing", w.missing)];
        let fields = counts
            .into_iter()
            .map(|(f, n)| (f, Some(n), false))
            .chain(delays.into_iter().map(|(f, us)| (f, us, true)));
        for (field, v, is_us) in fields {
            let Some(v) = v else { continue };
            name.clear();
            match self.protocol {
                StatsdProtocol::Statsd => {
                    let _ = write!(name, "{}{c}.{r}.{win}.{field}", self.prefix);
                }
                StatsdProtocol::Dogstatsd => {
                    let _ = write!(name, "{}{field}", self.prefix);
                }
            }
            value.clear();
            if is_us {
                push_ms(&mut value, v);
            } else {
                let _ = write!(value, "{v}");
            }
            line.clear();
            if v < 0 {
                self.gauge(&mut line, &name, "0", &c, &r, &win);
                line.push('\n');
            }
            self.gauge(&mut line, &name, &value, &c, &r, &win);
            unit(&line);
        }
    }

    fn gauge(&self, out: &mut String, name: &str, value: &str, c: &str, r: &str, win: &str) {
        let _ = write!(out, "{name}:{value}|g");
        if self.protocol == StatsdProtocol::Dogstatsd {
            let _ = write!(out, "|#cluster:{c},replica:{r},window:{win}");
        }
    }

    /// The timer of a replica's measurements.
    pub fn timer(&self, cluster: &str, replica: &str) -> TimerName {
        let (c, r) = (name_safe(cluster), name_safe(replica));
        match self.protocol {
            StatsdProtocol::Statsd => TimerName {
                head: format!("{}{c}.{r}.delay:", self.prefix),
                tail: format!("|ms{}", self.rate),
            },
            StatsdProtocol::Dogstatsd => TimerName {
                head: format!("{}delay:", self.prefix),
                tail: format!("|ms{}|#cluster:{c},replica:{r}", self.rate),
            },
        }
    }
}

impl TimerName {
    /// The line of one measurement into `out` (cleared first).
    pub fn line(&self, out: &mut String, delay_us: i64) {
        out.clear();
        out.push_str(&self.head);
        push_ms(out, delay_us);
        out.push_str(&self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> DelayWindow {
        let mut w = crate::processor::sinks::tests::window(1_763_000_001_000_000);
        w.replica = "127.0.0.1:3307".into();
        w.count = 11;
        w.missing = 2;
        w.p50_us = Some(6_000);
        w.p90_us = Some(10_250);
        w.p99_us = Some(20_001);
        w.max_us = Some(20_001);
        w
    }

    fn units(n: &Namer, w: &DelayWindow) -> Vec<String> {
        let mut out = Vec::new();
        n.window_units(w, |u| out.push(u.to_string()));
        out
    }

    #[test]
    fn milliseconds_keep_microseconds_without_trailing_zeros() {
        let ms = |us| {
            let mut s = String::new();
            push_ms(&mut s, us);
            s
        };
        assert_eq!(ms(1_873), "1.873");
        assert_eq!(ms(2_000), "2");
        assert_eq!(ms(10_250), "10.25");
        assert_eq!(ms(5), "0.005");
        assert_eq!(ms(0), "0");
        assert_eq!(ms(-500), "-0.5");
        assert_eq!(ms(i64::MIN), "-9223372036854775.808");
    }

    #[test]
    fn statsd_names_carry_cluster_replica_and_window_in_the_path() {
        let n = Namer::new("millilag", StatsdProtocol::Statsd, 1.0);
        assert_eq!(
            units(&n, &window()),
            [
                "millilag.main.127_0_0_1_3307.1s.count:11|g",
                "millilag.main.127_0_0_1_3307.1s.missing:2|g",
                "millilag.main.127_0_0_1_3307.1s.p50_ms:6|g",
                "millilag.main.127_0_0_1_3307.1s.p90_ms:10.25|g",
                "millilag.main.127_0_0_1_3307.1s.p99_ms:20.001|g",
                "millilag.main.127_0_0_1_3307.1s.max_ms:20.001|g",
            ]
        );
        let t = n.timer("main", "127.0.0.1:3307");
        let mut line = String::new();
        t.line(&mut line, 1_873);
        assert_eq!(line, "millilag.main.127_0_0_1_3307.delay:1.873|ms");
    }

    #[test]
    fn dogstatsd_names_are_fixed_with_tags_and_sampled_timers_say_their_rate() {
        let n = Namer::new("millilag.", StatsdProtocol::Dogstatsd, 0.25);
        let u = units(&n, &window());
        assert_eq!(
            u[4],
            "millilag.p99_ms:20.001|g|#cluster:main,replica:127_0_0_1_3307,window:1s"
        );
        let mut line = String::new();
        n.timer("main", "db 2|x,y#z@w").line(&mut line, 2_000);
        assert_eq!(
            line,
            "millilag.delay:2|ms|@0.25|#cluster:main,replica:db_2_x_y_z_w"
        );
    }

    #[test]
    fn names_that_would_break_a_line_or_a_path_are_sanitised() {
        let n = Namer::new("", StatsdProtocol::Statsd, 1.0);
        let mut w = window();
        w.cluster = "eu/west 1".into();
        w.replica = "db|2:3306@x#y,z\n".into();
        let u = units(&n, &w);
        assert_eq!(u[0], "eu_west_1.db_2_3306_x_y_z_.1s.count:11|g");
        for line in &u {
            let (name, rest) = line.split_once(':').unwrap();
            assert!(
                !name.contains(['|', '@', '#', ',', ' ', '/', '\n']),
                "{line}"
            );
            assert_eq!(rest.matches('|').count(), 1, "{line}");
        }
    }

    #[test]
    fn empty_windows_send_counts_only_and_negative_gauges_are_set_not_decremented() {
        let n = Namer::new("m", StatsdProtocol::Statsd, 1.0);
        let mut w = window();
        w.count = 0;
        w.p50_us = None;
        w.p90_us = None;
        w.p99_us = None;
        w.max_us = None;
        assert_eq!(units(&n, &w).len(), 2);
        let mut w = window();
        w.p50_us = Some(-250);
        assert_eq!(
            units(&n, &w)[2],
            "m.main.127_0_0_1_3307.1s.p50_ms:0|g\nm.main.127_0_0_1_3307.1s.p50_ms:-0.25|g"
        );
    }
}
