//! Reading a millilag service's /metrics from outside, as Prometheus would (no HTTP client:
//! one bare HTTP/1.0 request), for benchmarks and the demo.

use std::time::Duration;

/// The /metrics body of the service listening on `addr`; None when it does not answer within
/// 2 s.
pub async fn metrics(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.ok()?;
        buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .ok()
        .flatten()
}

/// The sum of metric `name`'s samples (e.g. `millilag_reader_measurements_total`, over all its
/// label sets) whose labels contain every one of `labels` (e.g. `status="ok"`); None when it
/// has none.
pub fn sum(body: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let values: Vec<f64> = body
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with([' ', '{']))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_one_metric_over_its_matching_label_sets() {
        let body = "# HELP x\n\
                    millilag_reader_measurements_total{replica=\"a\",status=\"ok\"} 3\n\
                    millilag_reader_measurements_total{replica=\"b\",status=\"ok\"} 4\n\
                    millilag_reader_measurements_total{replica=\"b\",status=\"timeout\"} 5\n\
                    millilag_reader_measurements_total_other 100\n\
                    millilag_reader_publish_queue 7\n";
        let name = "millilag_reader_measurements_total";
        assert_eq!(sum(body, name, &[]), Some(12.0));
        assert_eq!(sum(body, name, &["status=\"ok\""]), Some(7.0));
        assert_eq!(sum(body, "millilag_reader_publish_queue", &[]), Some(7.0));
        assert_eq!(sum(body, "millilag_reader_paused", &[]), None);
    }
}
