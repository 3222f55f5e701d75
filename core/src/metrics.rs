//! Metric label sets, one type for every service's Prometheus families.

/// Label pairs of one series; the names are fixed in code, the values come from config or data.
pub type Labels = Vec<(&'static str, String)>;

/// Build a label set from borrowed values.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}
