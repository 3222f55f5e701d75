//! Metric label sets, one type for every service's Prometheus families; histogram buckets
//! shared by the delay histograms; and what every /metrics adds ([`process`]).

pub mod process;

/// Label pairs of one series; the names are fixed in code, the values come from config or data.
pub type Labels = Vec<(&'static str, String)>;

/// Build a label set from borrowed values.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_string())).collect()
}

/// Upper bounds (seconds) of the delay histograms: 0.1 ms to 10 s, eight per decade
/// (1, 1.5, 2, 2.5, 3, 4, 5, 7.5). No step is wider than 1.5x, and the thresholds people
/// alert on (1 ms, 10 ms, 100 ms, 250 ms, 500 ms, 1 s, 2 s, 5 s) are bucket bounds, so
/// `histogram_quantile` and `le` counts are exact there.
pub fn delay_buckets() -> Vec<f64> {
    const PER_DECADE_US: [u64; 8] = [100, 150, 200, 250, 300, 400, 500, 750];
    let mut out: Vec<f64> = (0..5u32)
        .flat_map(|k| PER_DECADE_US.map(|m| (m * 10u64.pow(k)) as f64 / 1e6))
        .collect();
    out.push(10.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_buckets_span_a_tenth_of_a_millisecond_to_ten_seconds_finely() {
        let b = delay_buckets();
        assert_eq!((b[0], *b.last().unwrap()), (0.0001, 10.0));
        assert_eq!(b.len(), 41);
        for w in b.windows(2) {
            assert!(w[1] > w[0] && w[1] / w[0] <= 1.5 + 1e-9, "{w:?}");
        }
        for t in [0.001, 0.01, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0] {
            assert!(b.contains(&t), "{t} is a bound");
        }
        // Printed the way Prometheus shows `le`: no float noise.
        assert_eq!(b[1].to_string(), "0.00015");
        assert_eq!(b[15].to_string(), "0.0075");
    }
}
