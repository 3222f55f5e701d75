//! GTIDs as "a number in a sequence": MariaDB `domain-server-n` and MySQL `uuid[:tag]:n`.
//!
//! Waiting for number n of a sequence means waiting for the replica to reach it; with the
//! writer's dedicated domain (MariaDB) or tag (MySQL 8.3+), consecutive heartbeats are
//! consecutive numbers, which is what lets the reader arm waits for heartbeats not written yet.

use std::sync::Arc;

/// A GTID split into its sequence and number.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GtidKey {
    /// Everything before the number: "77-1-" or "uuid:millilag:". Identifies the sequence.
    /// Shared: every wait armed and every answer carries a key, and copying the text each
    /// time was an allocation per measurement.
    pub sequence: Arc<str>,
    pub n: u64,
}

impl GtidKey {
    pub fn parse(gtid: &str) -> Option<GtidKey> {
        let gtid = gtid.trim();
        if gtid.contains(',') {
            return None;
        }
        // MariaDB d-s-n: all three numeric.
        let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        let mut dash = gtid.splitn(3, '-');
        if let (Some(d), Some(s), Some(n)) = (dash.next(), dash.next(), dash.next()) {
            if numeric(d) && numeric(s) && numeric(n) {
                return Some(GtidKey {
                    // The prefix up to and including the second dash.
                    sequence: gtid[..d.len() + s.len() + 2].into(),
                    n: n.parse().ok()?,
                });
            }
        }
        // MySQL uuid:n or uuid:tag:n (a single transaction, not a range).
        let (prefix, n) = gtid.rsplit_once(':')?;
        if prefix.is_empty() || n.contains('-') {
            return None;
        }
        Some(GtidKey {
            sequence: gtid[..prefix.len() + 1].into(),
            n: n.parse().ok()?,
        })
    }

    #[cfg(test)]
    pub fn with_n(&self, n: u64) -> GtidKey {
        GtidKey {
            sequence: self.sequence.clone(),
            n,
        }
    }
}

impl std::fmt::Display for GtidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.sequence, self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_dialects_and_formats_back() {
        let k = GtidKey::parse("77-1-42").unwrap();
        assert_eq!((&*k.sequence, k.n), ("77-1-", 42));
        assert_eq!(k.with_n(43).to_string(), "77-1-43");
        let u = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let k = GtidKey::parse(&format!("{u}:millilag:9")).unwrap();
        assert_eq!(k.to_string(), format!("{u}:millilag:9"));
        assert_eq!(GtidKey::parse(&format!("{u}:9")).unwrap().n, 9);
    }

    #[test]
    fn rejects_sets_and_ranges() {
        assert_eq!(GtidKey::parse("0-1-2,77-1-3"), None);
        assert_eq!(GtidKey::parse("uuid:1-5"), None);
        assert_eq!(GtidKey::parse(""), None);
        assert_eq!(GtidKey::parse("1-2"), None);
    }
}
