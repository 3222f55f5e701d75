//! Prometheus (Debian's 2.42): scrapes the given targets every second and evaluates the given
//! rule files, read back through its HTTP API (`/api/v1/query`, `/api/v1/targets`,
//! `/api/v1/rules`).

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Prometheus {
    pub port: u16,
    _guard: Guard,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
}

fn binary() -> Result<PathBuf> {
    crate::find_binary(
        "prometheus",
        "MILLILAG_PROMETHEUS",
        &[PathBuf::from("/usr/bin")],
    )
}

impl Prometheus {
    /// Scrape `targets` (job name, host:port list) every second; load `rule_files` (copied
    /// into its directory, so relative names in them stay valid).
    pub async fn start(
        targets: &[(&str, Vec<String>)],
        rule_files: &[&Path],
    ) -> Result<Prometheus> {
        let dir = tempfile::Builder::new()
            .prefix("millilag-prom-")
            .tempdir()?;
        let mut rules = Vec::new();
        for f in rule_files {
            let name = f.file_name().context("rule file name")?;
            std::fs::copy(f, dir.path().join(name))
                .with_context(|| format!("copying {}", f.display()))?;
            rules.push(format!("  - {:?}\n", name.to_string_lossy()));
        }
        let mut scrape = String::new();
        for (job, addrs) in targets {
            let list: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
            scrape.push_str(&format!(
                "  - job_name: {job:?}\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             rule_files:\n{}scrape_configs:\n{scrape}",
            rules.concat()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port();
        let mut cmd = Command::new(binary()?);
        cmd.arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let guard = Guard::spawn("prometheus", cmd, &dir.path().join("prometheus.log"))?;
        let client = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/-/ready");
        let ready = wait_for("prometheus /-/ready", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        if let Err(e) = ready {
            anyhow::bail!("{e}; log:\n{}", guard.log_tail(20));
        }
        Ok(Prometheus {
            port,
            _guard: guard,
            _dir: dir,
            client,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// GET an API path; the `data` member of a successful answer.
    pub async fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let resp = self
            .client
            .get(format!("{}{path}", self.url()))
            .query(query)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        let text = resp.text().await.with_context(|| format!("{path}: body"))?;
        let body: Value =
            serde_json::from_str(&text).with_context(|| format!("{path}: JSON {text}"))?;
        anyhow::ensure!(body["status"] == "success", "{path}: {body}");
        Ok(body["data"].clone())
    }

    /// An instant query's result vector.
    pub async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", promql)]).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }
}
