//! Durations written as strings in the config ("10ms", "1m30s"), so a unit is never guessed.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The longest duration any key accepts: far beyond every sensible setting, and far enough
/// below what `Instant + Duration` or microsecond arithmetic in i64 can hold that no sum of a
/// few of them overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A `std::time::Duration` that (de)serializes as a humantime string, at most [`MAX_DURATION`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }
    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
    pub fn as_micros_i64(&self) -> i64 {
        i64::try_from(self.0.as_micros()).unwrap_or(i64::MAX)
    }
}

impl std::ops::Deref for HumanDuration {
    type Target = Duration;
    fn deref(&self) -> &Duration {
        &self.0
    }
}

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let d = humantime::parse_duration(s.trim()).map_err(|e| {
            format!(
                "invalid duration {s:?} ({e}); write it with a unit, e.g. \"10ms\", \"2s\", \"1m\""
            )
        })?;
        if d > MAX_DURATION {
            return Err(format!(
                "duration {s:?} is too long; at most {}",
                humantime::format_duration(MAX_DURATION)
            ));
        }
        Ok(HumanDuration(d))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string with a unit, e.g. \"10ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_rejects_bare_numbers() {
        assert_eq!(
            "10ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(10)
        );
        assert_eq!(
            "1m30s".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "250us".parse::<HumanDuration>().unwrap().0,
            Duration::from_micros(250)
        );
        let err = "10".parse::<HumanDuration>().unwrap_err();
        assert!(err.contains("with a unit"), "{err}");
    }

    #[test]
    fn overflowing_and_huge_durations_are_refused() {
        for huge in ["18446744073709551616s", "1000000000y", "366d"] {
            let err = huge.parse::<HumanDuration>().unwrap_err();
            assert!(err.contains(huge), "{err}");
        }
        assert_eq!("365d".parse::<HumanDuration>().unwrap().0, MAX_DURATION);
    }

    #[test]
    fn displays_round_trip() {
        let d: HumanDuration = "1s500ms".parse().unwrap();
        assert_eq!(d.to_string().parse::<HumanDuration>().unwrap(), d);
    }
}
