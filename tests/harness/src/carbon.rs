//! carbon-cache (Graphite's writer) in the foreground, every directory under a temp dir,
//! whisper retention `1s:1h,60s:1d`, tagged series (`name;tag=value`) in files named after the
//! series rather than its hash. Read back from the whisper files with `whisper-fetch`
//! (files appear about a second after the first line; poll).

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub struct Carbon {
    pub port: u16,
    dir: tempfile::TempDir,
    _guard: Guard,
}

impl Carbon {
    pub async fn start() -> Result<Carbon> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("carbon-cache did not start")))
    }

    async fn try_start() -> Result<Carbon> {
        let dir = tempfile::Builder::new()
            .prefix("millilag-carbon-")
            .tempdir()?;
        let d = dir.path();
        for sub in ["whisper", "log", "run", "lists"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let port = free_port();
        let conf = format!(
            "[cache]
STORAGE_DIR = {d}
LOCAL_DATA_DIR = {d}/whisper
WHITELISTS_DIR = {d}/lists
CONF_DIR = {d}
LOG_DIR = {d}/log
PID_DIR = {d}/run
USER =
MAX_CACHE_SIZE = inf
MAX_UPDATES_PER_SECOND = inf
MAX_CREATES_PER_MINUTE = inf
LINE_RECEIVER_INTERFACE = 127.0.0.1
LINE_RECEIVER_PORT = {port}
ENABLE_UDP_LISTENER = False
PICKLE_RECEIVER_INTERFACE = 127.0.0.1
PICKLE_RECEIVER_PORT = {pickle}
CACHE_QUERY_INTERFACE = 127.0.0.1
CACHE_QUERY_PORT = {query}
LOG_LISTENER_CONNECTIONS = False
LOG_UPDATES = False
LOG_CREATES = False
ENABLE_LOGROTATION = False
TAG_HASH_FILENAMES = False
",
            d = d.display(),
            pickle = free_port(),
            query = free_port(),
        );
        std::fs::write(d.join("carbon.conf"), conf)?;
        std::fs::write(
            d.join("storage-schemas.conf"),
            "[default]\npattern = .*\nretentions = 1s:1h,60s:1d\n",
        )?;
        let mut cmd = Command::new(crate::find_binary(
            "carbon-cache",
            "MILLILAG_CARBON_CACHE",
            &[PathBuf::from("/usr/bin")],
        )?);
        cmd.arg(format!("--config={}", d.join("carbon.conf").display()))
            .arg(format!("--pidfile={}", d.join("run/carbon.pid").display()))
            .arg(format!("--logdir={}", d.join("log").display()))
            .arg("--nodaemon")
            .arg("start");
        let mut guard = Guard::spawn("carbon-cache", cmd, &d.join("carbon.out"))?;
        let addr = format!("127.0.0.1:{port}");
        let ready = wait_for(
            "carbon-cache line receiver",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
            },
        )
        .await;
        if let Err(e) = ready {
            let running = guard.is_running();
            anyhow::bail!("{e} (running: {running}); log:\n{}", guard.log_tail(20));
        }
        Ok(Carbon {
            port,
            dir,
            _guard: guard,
        })
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The whisper file of a metric path (a.b.c -> whisper/a/b/c.wsp).
    pub fn whisper_file(&self, path: &str) -> PathBuf {
        let mut p = self.dir.path().join("whisper");
        for part in path.split('.') {
            p.push(part);
        }
        p.set_extension("wsp");
        p
    }

    /// The whisper file of a tagged series (`name;tag=value;...`, tags sorted by name):
    /// carbon keeps those under `_tagged/<3 hex>/<3 hex>/` (a hash of the series) with the dots
    /// of the series as `_DOT_`. Found by name, so the test need not compute the hash.
    pub fn tagged_file(&self, series: &str) -> Option<PathBuf> {
        let name = format!("{}.wsp", series.replace('.', "_DOT_"));
        let top = self.dir.path().join("whisper/_tagged");
        for a in std::fs::read_dir(top).ok()?.flatten() {
            for b in std::fs::read_dir(a.path()).ok()?.flatten() {
                let f = b.path().join(&name);
                if f.is_file() {
                    return Some(f);
                }
            }
        }
        None
    }

    /// Non-empty (timestamp seconds, value) points of `path` in [from, until), or None while
    /// the file does not exist yet.
    pub fn fetch(&self, path: &str, from: i64, until: i64) -> Result<Option<Vec<(i64, f64)>>> {
        let file = self.whisper_file(path);
        if !file.exists() {
            return Ok(None);
        }
        self.fetch_file(&file, from, until).map(Some)
    }

    /// [`Carbon::fetch`] for a tagged series ([`Carbon::tagged_file`]).
    pub fn fetch_tagged(
        &self,
        series: &str,
        from: i64,
        until: i64,
    ) -> Result<Option<Vec<(i64, f64)>>> {
        match self.tagged_file(series) {
            Some(file) => self.fetch_file(&file, from, until).map(Some),
            None => Ok(None),
        }
    }

    fn fetch_file(&self, file: &std::path::Path, from: i64, until: i64) -> Result<Vec<(i64, f64)>> {
        let out = Command::new(crate::find_binary(
            "whisper-fetch",
            "MILLILAG_WHISPER_FETCH",
            &[PathBuf::from("/usr/bin")],
        )?)
        .arg(format!("--from={from}"))
        .arg(format!("--until={until}"))
        .arg(file)
        .output()
        .context("running whisper-fetch")?;
        anyhow::ensure!(
            out.status.success(),
            "whisper-fetch {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut points = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut it = line.split_whitespace();
            if let (Some(t), Some(v)) = (it.next(), it.next()) {
                if let (Ok(t), Ok(v)) = (t.parse::<i64>(), v.parse::<f64>()) {
                    points.push((t, v));
                }
            }
        }
        Ok(points)
    }
}
