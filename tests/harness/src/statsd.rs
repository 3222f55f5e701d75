//! Etsy statsd (the npm package, pinned to [`VERSION`]; `scripts/setup` installs it under
//! `~/.cache/millilag/`) listening for UDP on a free port and flushing every `flush` to a
//! carbon-cache through its Graphite backend, new namespace (`stats.gauges.<name>`,
//! `stats.timers.<name>.<stat>`), percentiles 50/90/99. Its management port answers
//! `gauges`, `timers`, `health`. Killed by PID on drop.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The statsd release the tests run against (also in scripts/setup).
pub const VERSION: &str = "0.9.0";

pub struct Statsd {
    /// UDP port for metrics.
    pub port: u16,
    /// TCP management port.
    pub mgmt_port: u16,
    _dir: tempfile::TempDir,
    guard: Guard,
}

/// Where scripts/setup installs statsd's launcher.
fn default_bin() -> PathBuf {
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(format!(
        ".cache/millilag/statsd-{VERSION}/node_modules/statsd/bin/statsd"
    ))
}

/// A UDP port that was free a moment ago (statsd's listener is UDP).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 (UDP) to find a free port")
}

impl Statsd {
    /// Start, flushing to the carbon plaintext listener at `graphite` (host:port).
    pub async fn start(graphite: &str, flush: Duration) -> Result<Statsd> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(graphite, flush).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("statsd did not start")))
    }

    async fn try_start(graphite: &str, flush: Duration) -> Result<Statsd> {
        let bin = match std::env::var_os("MILLILAG_STATSD") {
            Some(p) => PathBuf::from(p),
            None => default_bin(),
        };
        anyhow::ensure!(
            bin.is_file(),
            "statsd {VERSION} not found at {}; run scripts/setup (or set MILLILAG_STATSD)",
            bin.display()
        );
        let node = crate::find_binary("node", "MILLILAG_NODE", &[PathBuf::from("/usr/bin")])?;
        let (host, gport) = graphite
            .rsplit_once(':')
            .context("graphite address must be host:port")?;
        let dir = tempfile::Builder::new()
            .prefix("millilag-statsd-")
            .tempdir()?;
        let (port, mgmt_port) = (free_udp_port(), free_port());
        // JSON is a valid statsd config (it is read as a JS object literal).
        let conf = serde_json::json!({
            "address": "127.0.0.1",
            "port": port,
            "mgmt_address": "127.0.0.1",
            "mgmt_port": mgmt_port,
            "graphiteHost": host,
            "graphitePort": gport.parse::<u16>()?,
            "flushInterval": flush.as_millis() as u64,
            "percentThreshold": [50, 90, 99],
            "backends": ["./backends/graphite"],
            "graphite": { "legacyNamespace": false },
            "automaticConfigReload": false,
            "title": false,
        });
        let conf_path = dir.path().join("config.js");
        std::fs::write(&conf_path, serde_json::to_string_pretty(&conf)?)?;
        let mut cmd = Command::new(node);
        cmd.arg(&bin).arg(&conf_path);
        let mut guard = Guard::spawn("statsd", cmd, &dir.path().join("statsd.out"))?;
        let mgmt = format!("127.0.0.1:{mgmt_port}");
        // The management port opens after the UDP listener is bound (same start-up callback).
        let ready = wait_for("statsd management port", Duration::from_secs(30), || {
            let mgmt = mgmt.clone();
            async move {
                let out = command(&mgmt, "health").await.ok()?;
                out.contains("health: up").then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            let running = guard.is_running();
            anyhow::bail!("{e} (running: {running}); log:\n{}", guard.log_tail(20));
        }
        Ok(Statsd {
            port,
            mgmt_port,
            _dir: dir,
            guard,
        })
    }

    /// The UDP address millilag sends to.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A management command's reply (up to `END`).
    pub async fn admin(&self, cmd: &str) -> Result<String> {
        command(&format!("127.0.0.1:{}", self.mgmt_port), cmd).await
    }

    /// Every gauge statsd holds now, by its (sanitised, tagged) key.
    pub async fn gauges(&self) -> Result<BTreeMap<String, f64>> {
        Ok(parse_inspect(&self.admin("gauges").await?))
    }

    /// The daemon's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.guard.log_tail(lines)
    }
}

/// Send one management command and read until `END` (or `health: ...`), bounded.
async fn command(addr: &str, cmd: &str) -> Result<String> {
    let talk = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(format!("{cmd}\n").as_bytes()).await?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if text.contains("END\n") || text.starts_with("health:") && text.ends_with('\n') {
                break;
            }
        }
        anyhow::Ok(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), talk)
        .await
        .map_err(|_| anyhow::anyhow!("statsd management {addr} {cmd}: timed out"))?
}

/// Node's `util.inspect` of a flat object of numbers: `{ 'a.b': 1, c: 2.5 }`, one entry per
/// line when long.
fn parse_inspect(text: &str) -> BTreeMap<String, f64> {
    let body = text.split("END").next().unwrap_or_default();
    let body = body.trim().trim_start_matches('{').trim_end_matches('}');
    body.split(',')
        .filter_map(|entry| {
            let (k, v) = entry.trim().rsplit_once(':')?;
            let key = k.trim().trim_matches('\'').to_string();
            Some((key, v.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_node_inspect_output() {
        let m = super::parse_inspect(
            "{\n  'statsd.timestamp_lag': 0,\n  'dd.p99_ms;cluster=main;window=1s': 20.5,\n  x: -1\n}\nEND\n\n",
        );
        assert_eq!(m["statsd.timestamp_lag"], 0.0);
        assert_eq!(m["dd.p99_ms;cluster=main;window=1s"], 20.5);
        assert_eq!(m["x"], -1.0);
        assert!(super::parse_inspect("{}\nEND\n\n").is_empty());
    }
}
