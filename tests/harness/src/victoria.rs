//! VictoriaMetrics: accepts InfluxDB line protocol on `/write` and `/api/v2/write` and Graphite
//! plaintext, read back with `/api/v1/export` (raw samples, no query-time lookback).
//!
//! Started with `-search.latencyOffset=1s` (fresh points visible sooner), `-search.disableCache`
//! (a selector polled before its series exists must not cache the miss) and
//! `-dedup.minScrapeInterval=1ms` (a point written twice — a replay — counts once, as in
//! InfluxDB). [`Victoria::kill`] and [`Victoria::restart`] keep the ports and data dir.
//! [`Victoria::start_tls`] serves https only (`-tls`), with a certificate from a test CA.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct Victoria {
    pub http_port: u16,
    pub graphite_port: u16,
    dir: tempfile::TempDir,
    guard: Option<Guard>,
    client: reqwest::Client,
    /// https with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
}

/// One series from /api/v1/export.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Series {
    pub metric: BTreeMap<String, String>,
    pub values: Vec<f64>,
    pub timestamps: Vec<i64>,
}

impl Series {
    /// (timestamp ms, value) pairs, sorted by time.
    pub fn points(&self) -> Vec<(i64, f64)> {
        let mut p: Vec<_> = self
            .timestamps
            .iter()
            .copied()
            .zip(self.values.iter().copied())
            .collect();
        p.sort_by_key(|(t, _)| *t);
        p
    }
}

fn binary() -> Result<PathBuf> {
    crate::find_binary(
        "victoria-metrics",
        "MILLILAG_VICTORIA_METRICS",
        &[PathBuf::from("/usr/bin")],
    )
}

impl Victoria {
    pub async fn start() -> Result<Victoria> {
        Self::start_with(None).await
    }

    /// https only, with `pki`'s server certificate; the harness's own client trusts its CA.
    pub async fn start_tls(pki: &crate::tls::Pki) -> Result<Victoria> {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&crate::tls::Pki>) -> Result<Victoria> {
        let mut client = reqwest::Client::builder();
        if let Some(pki) = pki {
            let pem = std::fs::read(pki.ca())?;
            client = client
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let client = client.build()?;
        let mut last = None;
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("millilag-vm-").tempdir()?;
            let mut vm = Victoria {
                http_port: free_port(),
                graphite_port: free_port(),
                dir,
                guard: None,
                client: client.clone(),
                tls: pki.map(|p| (p.server_cert(), p.server_key())),
            };
            match vm.spawn_and_wait().await {
                Ok(()) => return Ok(vm),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("victoria-metrics did not start")))
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let mut cmd = Command::new(binary()?);
        cmd.arg(format!(
            "-storageDataPath={}",
            self.dir.path().join("data").display()
        ))
        .arg(format!("-httpListenAddr=127.0.0.1:{}", self.http_port))
        .arg(format!(
            "-graphiteListenAddr=127.0.0.1:{}",
            self.graphite_port
        ))
        .arg("-retentionPeriod=1d")
        .arg("-search.latencyOffset=1s")
        .arg("-search.disableCache")
        .arg("-dedup.minScrapeInterval=1ms")
        .arg("-loggerLevel=WARN");
        if let Some((cert, key)) = &self.tls {
            cmd.arg("-tls")
                .arg(format!("-tlsCertFile={}", cert.display()))
                .arg(format!("-tlsKeyFile={}", key.display()));
        }
        let guard = Guard::spawn("victoria-metrics", cmd, &self.dir.path().join("vm.log"))?;
        self.guard = Some(guard);
        let url = format!("{}/health", self.url());
        let client = self.client.clone();
        let ready = wait_for("victoria-metrics /health", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            let log = self
                .guard
                .as_ref()
                .map(|g| g.log_tail(20))
                .unwrap_or_default();
            self.kill();
            anyhow::bail!("{e}; log:\n{log}");
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }

    pub fn graphite_address(&self) -> String {
        format!("127.0.0.1:{}", self.graphite_port)
    }

    /// SIGKILL (an outage, as far as clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    /// Start again on the same ports and data dir.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }

    /// Every series matching `selector` (e.g. `{__name__="replica_delay_count"}`), raw samples.
    pub async fn export(&self, selector: &str) -> Result<Vec<Series>> {
        let resp = self
            .client
            .get(format!("{}/api/v1/export", self.url()))
            .query(&[("match[]", selector)])
            .send()
            .await
            .context("GET /api/v1/export")?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "export: {status}: {text}");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).with_context(|| format!("export line {l}")))
            .collect()
    }
}
