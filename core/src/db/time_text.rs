//! Server time text: `UNIX_TIMESTAMP(...)` answers and pt-heartbeat's `ts` column, converted
//! exactly (no float) to and from Unix microseconds.

/// `UNIX_TIMESTAMP(...)` text ("1763000000.123456") as microseconds, exactly (no float).
/// Called twice for every GTID wait a reader runs: no allocation.
pub fn unix_text_to_us(s: &str) -> Option<i64> {
    let s = s.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut micros: i64 = 0;
    let mut digits = 0;
    for c in frac.chars().take(6) {
        micros = micros * 10 + i64::from(c.to_digit(10)?);
        digits += 1;
    }
    for _ in digits..6 {
        micros *= 10;
    }
    Some(secs * 1_000_000 + micros)
}

/// pt-heartbeat's `ts` format for a microsecond Unix time: `2026-11-23T01:02:03.456789`, UTC.
pub fn pt_heartbeat_ts(us: i64) -> String {
    let secs = us.div_euclid(1_000_000);
    let micros = us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Howard Hinnant's days-from-civil inverse: proleptic Gregorian date of a Unix day number.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The inverse of [`pt_heartbeat_ts`]: a heartbeat row's `ts` (UTC; 'T' or ' ' between date and
/// time; zero to six fraction digits, as pt-heartbeat and millilag write it) in Unix microseconds.
pub fn parse_pt_heartbeat_ts(ts: &str) -> Option<i64> {
    let ts = ts.trim();
    let (date, time) = ts.split_once(['T', ' '])?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    if frac.len() > 6 || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let micros = format!("{frac:0<6}").parse::<i64>().ok()?;
    let secs = days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60 + sec;
    Some(secs * 1_000_000 + micros)
}

/// Howard Hinnant's days_from_civil: the Unix day number of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_text() {
        assert_eq!(
            unix_text_to_us("1763000000.123456"),
            Some(1_763_000_000_123_456)
        );
        assert_eq!(unix_text_to_us("1763000000.1"), Some(1_763_000_000_100_000));
        assert_eq!(unix_text_to_us("1763000000"), Some(1_763_000_000_000_000));
        assert_eq!(
            unix_text_to_us(" 1763000000.1234567 "),
            Some(1_763_000_000_123_456),
            "microseconds: further digits are cut"
        );
        assert_eq!(unix_text_to_us("1763000000.12a"), None);
        assert_eq!(unix_text_to_us("x"), None);
    }

    #[test]
    fn heartbeat_ts_parses_back_exactly() {
        for us in [
            0,
            1_795_395_723_456_789,
            951_782_400_000_001,
            1_709_164_800_000_000 - 1,
        ] {
            assert_eq!(
                parse_pt_heartbeat_ts(&pt_heartbeat_ts(us)),
                Some(us),
                "{us}"
            );
        }
        // pt-heartbeat's own forms: a space, fewer fraction digits, none.
        assert_eq!(
            parse_pt_heartbeat_ts("1970-01-02 00:00:01.5"),
            Some(86_401_500_000)
        );
        assert_eq!(
            parse_pt_heartbeat_ts("1970-01-01T00:00:07"),
            Some(7_000_000)
        );
        for bad in [
            "",
            "2026-13-01T00:00:00",
            "2026-01-01",
            "2026-01-01T25:00:00",
            "x-y-zT1:2:3",
            "2026-01-01T00:00:00.1234567",
        ] {
            assert_eq!(parse_pt_heartbeat_ts(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn pt_heartbeat_format() {
        assert_eq!(pt_heartbeat_ts(0), "1970-01-01T00:00:00.000000");
        // 2026-11-23T01:02:03.456789Z
        assert_eq!(
            pt_heartbeat_ts(1_795_395_723_456_789),
            "2026-11-23T01:02:03.456789"
        );
        assert_eq!(
            pt_heartbeat_ts(951_782_400_000_001),
            "2000-02-29T00:00:00.000001"
        );
    }
}
