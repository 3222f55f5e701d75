//! Debian's InfluxDB 1.6 (`influxd run -config C`) with its own meta/data/wal dirs and ports,
//! and a database created through `POST /query`. Read back with InfluxQL (`GET /query`,
//! epoch=ms). [`Influx::kill`] / [`Influx::restart`] keep the ports and data.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct Influx {
    pub port: u16,
    rpc_port: u16,
    pub database: String,
    dir: tempfile::TempDir,
    guard: Option<Guard>,
    client: reqwest::Client,
}

fn binary() -> Result<PathBuf> {
    crate::find_binary("influxd", "MILLILAG_INFLUXD", &[PathBuf::from("/usr/bin")])
}

impl Influx {
    /// Start with database `database` created.
    pub async fn start(database: &str) -> Result<Influx> {
        let mut last = None;
        for _ in 0..3 {
            let mut i = Influx {
                port: free_port(),
                rpc_port: free_port(),
                database: database.to_string(),
                dir: tempfile::Builder::new()
                    .prefix("millilag-influx-")
                    .tempdir()?,
                guard: None,
                client: reqwest::Client::new(),
            };
            let started = async {
                i.spawn_and_wait().await?;
                i.query_post(&format!("CREATE DATABASE \"{database}\""))
                    .await
            };
            match started.await {
                Ok(_) => return Ok(i),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("influxd did not start")))
    }

    fn write_config(&self) -> Result<PathBuf> {
        let d = self.dir.path();
        let conf = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
"#,
            rpc = self.rpc_port,
            port = self.port,
            d = d.display()
        );
        let path = d.join("influxdb.conf");
        std::fs::write(&path, conf)?;
        Ok(path)
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        let conf = self.write_config()?;
        let mut cmd = Command::new(binary()?);
        cmd.arg("run").arg("-config").arg(&conf);
        self.guard = Some(Guard::spawn(
            "influxd",
            cmd,
            &self.dir.path().join("influxd.log"),
        )?);
        let url = format!("{}/ping", self.url());
        let client = self.client.clone();
        let ready = wait_for("influxd /ping", Duration::from_secs(20), || {
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
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_and_wait().await
    }

    async fn query_post(&self, q: &str) -> Result<serde_json::Value> {
        let resp = self
            .client
            .post(format!("{}/query", self.url()))
            .form(&[("q", q)])
            .send()
            .await
            .context("POST /query")?;
        let status = resp.status();
        let v: serde_json::Value =
            serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{q}: {status}: {v}");
        Ok(v)
    }

    /// Run InfluxQL against the database; the rows of the first series as
    /// (column name -> value) maps, times in epoch milliseconds.
    pub async fn query(&self, q: &str) -> Result<Vec<serde_json::Map<String, serde_json::Value>>> {
        let resp = self
            .client
            .get(format!("{}/query", self.url()))
            .query(&[("db", self.database.as_str()), ("q", q), ("epoch", "ms")])
            .send()
            .await
            .context("GET /query")?;
        let status = resp.status();
        let v: serde_json::Value =
            serde_json::from_str(&resp.text().await.unwrap_or_default()).unwrap_or_default();
        anyhow::ensure!(status.is_success(), "{q}: {status}: {v}");
        let mut rows = Vec::new();
        for series in v["results"][0]["series"].as_array().into_iter().flatten() {
            let cols: Vec<String> = series["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c.as_str().unwrap_or_default().to_string())
                .collect();
            for row in series["values"].as_array().into_iter().flatten() {
                let mut m = serde_json::Map::new();
                if let Some(series_tags) = series["tags"].as_object() {
                    m.extend(series_tags.clone());
                }
                for (c, val) in cols.iter().zip(row.as_array().into_iter().flatten()) {
                    m.insert(c.clone(), val.clone());
                }
                rows.push(m);
            }
        }
        Ok(rows)
    }
}
