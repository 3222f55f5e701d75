//! InfluxDB sink: v2 through the `influxdb2` client (org, bucket, token), v1 as a plain
//! `POST /write?db=...&precision=ms` with line protocol. Both write the same lines; see the
//! table in `sinks/mod.rs` for names.

use super::{fields, Sink};
use anyhow::{bail, Context};
use millilag_core::config::{InfluxApi, InfluxSinkConfig};
use millilag_core::events::DelayWindow;
use std::fmt::Write as _;
use std::time::Duration;

enum Api {
    V1 {
        client: reqwest::Client,
        url: reqwest::Url,
        auth: Option<(String, String)>,
    },
    V2 {
        client: influxdb2::Client,
        org: String,
        bucket: String,
    },
}

pub struct InfluxSink {
    api: Api,
    measurement: String,
    timeout: Duration,
    body: String,
}

impl InfluxSink {
    pub fn new(c: &InfluxSinkConfig) -> anyhow::Result<InfluxSink> {
        let base = reqwest::Url::parse(&c.url).with_context(|| format!("url {:?}", c.url))?;
        let token = c.token.as_ref().map(|t| t.expose().to_string());
        let api = match c.api {
            InfluxApi::V1 => {
                let mut url = base.join("write")?;
                url.query_pairs_mut()
                    .append_pair("db", c.database.as_deref().unwrap_or_default())
                    .append_pair("precision", "ms");
                Api::V1 {
                    client: reqwest::Client::builder()
                        .timeout(c.timeout.0)
                        .build()
                        .context("building the HTTP client")?,
                    url,
                    auth: c
                        .username
                        .as_ref()
                        .map(|u| (u.clone(), token.clone().unwrap_or_default())),
                }
            }
            InfluxApi::V2 => Api::V2 {
                client: influxdb2::ClientBuilder::new(
                    base.as_str(),
                    c.org.clone().unwrap_or_default(),
                    token.unwrap_or_default(),
                )
                .build()
                .context("building the InfluxDB v2 client")?,
                org: c.org.clone().unwrap_or_default(),
                bucket: c.bucket.clone().unwrap_or_default(),
            },
        };
        Ok(InfluxSink {
            api,
            measurement: c.measurement.clone(),
            timeout: c.timeout.0,
            body: String::new(),
        })
    }
}

impl Sink for InfluxSink {
    async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> anyhow::Result<()> {
        self.body.clear();
        for w in windows {
            line(&mut self.body, &self.measurement, w);
        }
        match &self.api {
            Api::V1 { client, url, auth } => {
                let mut req = client.post(url.clone()).body(self.body.clone());
                if let Some((u, p)) = auth {
                    req = req.basic_auth(u, Some(p));
                }
                let resp = req.send().await.context("POST /write")?;
                let status = resp.status();
                if !status.is_success() {
                    let text = resp.text().await.unwrap_or_default();
                    bail!("POST /write: {status}: {}", text.trim());
                }
                Ok(())
            }
            Api::V2 {
                client,
                org,
                bucket,
            } => {
                let write = client.write_line_protocol_with_precision(
                    org,
                    bucket,
                    self.body.clone(),
                    influxdb2::api::write::TimestampPrecision::Milliseconds,
                );
                tokio::time::timeout(self.timeout, write)
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("POST /api/v2/write: no answer in {:?}", self.timeout)
                    })?
                    .context("POST /api/v2/write")
            }
        }
    }
}

/// Tag values: commas, spaces and equals signs are escaped (line protocol).
fn escape_tag(out: &mut String, s: &str) {
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// One line of line protocol for a window, timestamp in milliseconds.
pub fn line(out: &mut String, measurement: &str, w: &DelayWindow) {
    escape_tag(out, measurement);
    out.push_str(",cluster=");
    escape_tag(out, &w.cluster);
    out.push_str(",replica=");
    escape_tag(out, &w.replica);
    out.push_str(",window=");
    out.push_str(&super::window_label(w.window_us));
    for (i, (k, v)) in fields(w).enumerate() {
        out.push(if i == 0 { ' ' } else { ',' });
        let _ = write!(out, "{k}={v}i");
    }
    let _ = writeln!(out, " {}", w.window_start_us.div_euclid(1000));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_protocol_has_tags_integer_fields_and_ms_timestamp() {
        let mut w = crate::processor::sinks::tests::window(1_763_000_001_000_000);
        w.replica = "db 2,x=1".into();
        w.p99_us = Some(4_000);
        let mut out = String::new();
        line(&mut out, "replica_delay", &w);
        assert_eq!(
            out,
            "replica_delay,cluster=main,replica=db\\ 2\\,x\\=1,window=1s \
             count=1i,missing=0i,min_us=1i,p50_us=1i,p90_us=1i,p99_us=4000i,max_us=1i,\
             timeouts=0i,unreachable=0i,replication_stopped=0i,skipped=0i,upper_bounds=0i,\
             duplicates=0i 1763000001000\n"
        );
    }
}
