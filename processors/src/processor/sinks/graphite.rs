//! Graphite plaintext sink: `<prefix>.<cluster>.<replica>.<window>.<field> <value> <seconds>`
//! over TCP, one connection kept open and re-made after any failure. Plaintext has no
//! acknowledgement: a write counts as accepted once the kernel took the bytes.
//! Windows shorter than a second share a timestamp in Graphite (its resolution is seconds).
//! Plaintext has no way to refuse a metric either, so every error here is transient
//! ([`Error::Unreachable`]): retried, never dead-lettered.

use super::{fields, path_safe, window_label, Sink};
use millilag_core::config::GraphiteSinkConfig;
use millilag_core::events::DelayWindow;
use millilag_core::Error;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub struct GraphiteSink {
    address: String,
    prefix: String,
    timeout: Duration,
    conn: Option<TcpStream>,
    body: String,
}

impl GraphiteSink {
    pub fn new(c: &GraphiteSinkConfig) -> GraphiteSink {
        GraphiteSink {
            address: c.address.clone(),
            prefix: c.prefix.trim_end_matches('.').to_string(),
            timeout: c.timeout.0,
            conn: None,
            body: String::new(),
        }
    }

    async fn send(&mut self) -> Result<(), Error> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            Error::Unreachable(format!("{what} {}: {e}", self.address))
        };
        if self.conn.is_none() {
            let c = tokio::time::timeout(self.timeout, TcpStream::connect(&self.address))
                .await
                .map_err(|_| failed("connecting to", &"timed out"))?
                .map_err(|e| failed("connecting to", &e))?;
            c.set_nodelay(true)
                .map_err(|e| failed("connecting to", &e))?;
            self.conn = Some(c);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(failed("writing to", &"no connection"));
        };
        let write = async {
            conn.write_all(self.body.as_bytes()).await?;
            conn.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| failed("writing to", &"timed out"))?
            .map_err(|e| failed("writing to", &e))
    }
}

impl Sink for GraphiteSink {
    async fn write<'a>(&'a mut self, windows: &'a [&'a DelayWindow]) -> Result<(), Error> {
        self.body.clear();
        for w in windows {
            lines(&mut self.body, &self.prefix, w);
        }
        let r = self.send().await;
        if r.is_err() {
            // Reconnect on the next try.
            self.conn = None;
        }
        r
    }
}

/// The plaintext lines of one window.
pub fn lines(out: &mut String, prefix: &str, w: &DelayWindow) {
    let base = format!(
        "{}{}{}.{}.{}",
        prefix,
        if prefix.is_empty() { "" } else { "." },
        path_safe(&w.cluster),
        path_safe(&w.replica),
        window_label(w.window_us)
    );
    let ts = w.window_start_us.div_euclid(1_000_000);
    for (k, v) in fields(w) {
        let _ = writeln!(out, "{base}.{k} {v} {ts}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_seconds() {
        let mut w = crate::processor::sinks::tests::window(1_763_000_001_000_000);
        w.replica = "127.0.0.1:3307".into();
        let mut out = String::new();
        lines(&mut out, "millilag", &w);
        let first = out.lines().next().unwrap();
        assert_eq!(first, "millilag.main.127_0_0_1_3307.1s.count 1 1763000001");
        assert_eq!(out.lines().count(), 13);
    }
}
