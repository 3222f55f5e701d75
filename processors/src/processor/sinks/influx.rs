//! InfluxDB sink: v2 `POST /api/v2/write?org=..&bucket=..&precision=ms` with
//! `Authorization: Token <token>`, v1 `POST /write?db=...&precision=ms` with basic auth or a
//! bearer token. Both write the same lines; see the table in `sinks/mod.rs` for names. http or
//! https (rustls; `tls_ca_file` or the system's roots: `processor/http_client.rs`).
//!
//! An error status is an [`Error::HttpStatus`]: 4xx other than 408/429 is refused for good
//! (dead-lettered by the sink task), the rest retried. Names are escaped as line protocol says
//! (`,` `=` and space in tags, `,` and space in the measurement); what it cannot carry (empty
//! names, control characters, backslashes) is refused before it gets here
//! (`millilag_core::names`), and replaced by `_` should it get here anyway, so that a point
//! always stays on its line.

use super::{fields, Sink};
use crate::processor::http_client;
use anyhow::Context;
use millilag_core::config::{HttpAuth, InfluxApi, InfluxSinkConfig};
use millilag_core::events::DelayWindow;
use millilag_core::secret::Sensitive;
use millilag_core::Error;
use std::fmt::Write as _;

pub struct InfluxSink {
    /// `sink.influxdb[i]`, for error texts.
    key: String,
    client: reqwest::Client,
    /// The write endpoint with its query (never logged: the base URL may hold a password).
    url: reqwest::Url,
    /// What error texts call the request.
    shown: &'static str,
    auth: Authorization,
    measurement: String,
    body: String,
}

enum Authorization {
    None,
    /// v1: basic auth or a bearer token.
    Http(HttpAuth),
    /// v2: `Authorization: Token <token>` (InfluxDB 2's scheme).
    Token(Sensitive),
}

impl InfluxSink {
    pub fn new(key: &str, c: &InfluxSinkConfig) -> anyhow::Result<InfluxSink> {
        let mut base = reqwest::Url::parse(c.url.expose())
            .with_context(|| format!("{key}.url ({})", c.url))?;
        // A base behind a path prefix (https://proxy/influx) keeps it: join() would replace
        // the last segment without the trailing slash.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let (path, auth) = match c.api {
            InfluxApi::V1 => (
                "write",
                c.auth
                    .clone()
                    .map_or(Authorization::None, Authorization::Http),
            ),
            InfluxApi::V2 => (
                "api/v2/write",
                c.token
                    .clone()
                    .map_or(Authorization::None, Authorization::Token),
            ),
        };
        let mut url = base.join(path)?;
        {
            let mut q = url.query_pairs_mut();
            match c.api {
                InfluxApi::V1 => q.append_pair("db", c.database.as_deref().unwrap_or_default()),
                InfluxApi::V2 => q
                    .append_pair("org", c.org.as_deref().unwrap_or_default())
                    .append_pair("bucket", c.bucket.as_deref().unwrap_or_default()),
            };
            q.append_pair("precision", "ms");
        }
        Ok(InfluxSink {
            key: key.to_string(),
            client: http_client::client(key, c.timeout.0, c.tls_ca_file.as_deref())?,
            url,
            shown: match c.api {
                InfluxApi::V1 => "POST /write",
                InfluxApi::V2 => "POST /api/v2/write",
            },
            auth,
            measurement: c.measurement.clone(),
            body: String::new(),
        })
    }
}

impl Sink for InfluxSink {
    async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> Result<(), Error> {
        self.body.clear();
        for w in windows {
            line(&mut self.body, &self.measurement, w);
        }
        let req = self.client.post(self.url.clone()).body(self.body.clone());
        let req = match &self.auth {
            Authorization::None => req,
            Authorization::Http(a) => http_client::authorize(req, Some(a)),
            Authorization::Token(t) => req.header(
                reqwest::header::AUTHORIZATION,
                format!("Token {}", t.expose()),
            ),
        };
        let resp = req.send().await.map_err(|e| {
            Error::Unreachable(format!(
                "{}: {}",
                self.shown,
                http_client::describe(e, &self.key, self.url.scheme() == "https")
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(Error::http_status(self.shown, status.as_u16(), &text));
        }
        Ok(())
    }
}

/// A tag key or value: commas, spaces and equals signs escaped.
fn escape_tag(out: &mut String, s: &str) {
    escape(out, s, &[',', ' ', '=']);
}

/// The measurement: commas and spaces escaped (InfluxDB 1.x keeps `\=` there as two
/// characters).
fn escape_measurement(out: &mut String, s: &str) {
    escape(out, s, &[',', ' ']);
}

fn escape(out: &mut String, s: &str, special: &[char]) {
    if s.is_empty() {
        // An empty tag value makes InfluxDB refuse the whole request.
        out.push('_');
        return;
    }
    for c in s.chars() {
        if c.is_control() || c == '\\' {
            out.push('_');
            continue;
        }
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
}

/// One line of line protocol for a window, timestamp in milliseconds.
pub fn line(out: &mut String, measurement: &str, w: &DelayWindow) {
    escape_measurement(out, measurement);
    out.push_str(",cluster=");
    escape_tag(out, &w.cluster);
    out.push_str(",replica=");
    escape_tag(out, &w.replica);
    out.push_str(",window=");
    escape_tag(out, &super::window_label(w.window_us));
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
    fn write_urls_keep_a_path_prefix() {
        let load = |url: &str, api: &str| {
            let text = format!(
                "[[sink.influxdb]]\nurl = \"{url}\"\napi = \"{api}\"\norg = \"o\"\nbucket = \"b\"\n\
                 database = \"d\"\ntoken_env = \"T\"\n"
            );
            let env = [("T".to_string(), "t".to_string())];
            let c = millilag_core::Config::from_toml_with_env(&text, "t", env).unwrap();
            InfluxSink::new("sink.influxdb[0]", &c.sink.influxdb[0])
                .unwrap()
                .url
                .to_string()
        };
        assert_eq!(
            load("https://h:8086", "v2"),
            "https://h:8086/api/v2/write?org=o&bucket=b&precision=ms"
        );
        assert_eq!(
            load("https://proxy/influx", "v2"),
            "https://proxy/influx/api/v2/write?org=o&bucket=b&precision=ms"
        );
        assert_eq!(
            load("http://proxy/influx/", "v1"),
            "http://proxy/influx/write?db=d&precision=ms"
        );
    }

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
