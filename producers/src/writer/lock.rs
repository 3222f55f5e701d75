//! Names of the writers' lock (`GET_LOCK`, one per cluster) and the SQL literal for the writer
//! id, both built from text we do not control (cluster names, hostnames).

/// GET_LOCK's limit on a lock name, in characters.
const MAX_LOCK_NAME: usize = 64;
/// How much of a long cluster name stays readable in its lock name, in bytes: with the prefix,
/// a dot and 16 hex digits of hash that is at most 57 bytes, so within the limit whatever the
/// characters.
const LOCK_NAME_CLUSTER_PREFIX: usize = 24;

/// `millilag.writer.<cluster>`, shortened with a hash when longer than GET_LOCK's 64 characters.
pub fn lock_name(cluster: &str) -> String {
    let name = format!("millilag.writer.{cluster}");
    if name.len() <= MAX_LOCK_NAME {
        return name;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher, so every writer of a
    // cluster agrees on the name.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in cluster.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    let prefix = prefix_within(cluster, LOCK_NAME_CLUSTER_PREFIX);
    format!("millilag.writer.{prefix}.{h:016x}")
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix_within(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A SQL string literal for values we generate ourselves (the writer id): quotes and
/// backslashes escaped, so even a strange hostname cannot break the statement.
pub(super) fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_fit_get_lock() {
        assert_eq!(lock_name("main"), "millilag.writer.main");
        let long = "c".repeat(100);
        let n = lock_name(&long);
        assert!(n.len() <= 64, "{n}");
        assert_ne!(n, lock_name(&"c".repeat(101)));
    }

    #[test]
    fn long_multibyte_cluster_names_are_cut_on_a_character_boundary() {
        // Byte 24 falls inside a character for each of these.
        for long in [
            format!("a{}", "日".repeat(30)),
            format!("ab{}", "🦀".repeat(20)),
            format!("{}é", "x".repeat(23)).repeat(3),
        ] {
            let n = lock_name(&long);
            assert!(n.chars().count() <= MAX_LOCK_NAME, "{n}");
            let kept = n
                .strip_prefix("millilag.writer.")
                .and_then(|r| r.rsplit_once('.'))
                .map(|(kept, _hash)| kept)
                .unwrap();
            assert!(!kept.is_empty() && long.starts_with(kept), "{n}");
            assert_ne!(n, lock_name(&format!("{long}x")));
        }
        assert_eq!(prefix_within("aé", 2), "a");
        assert_eq!(prefix_within("ab", 24), "ab");
    }

    #[test]
    fn writer_ids_are_quoted() {
        assert_eq!(sql_string("a'b\\c"), "'a''b\\\\c'");
    }
}
