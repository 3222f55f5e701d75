//! Tansu, a Kafka-protocol broker, with sqlite storage in a temp dir.
//!
//! sqlite rather than memory: Tansu 0.6's memory engine never returns records to a consumer
//! that resumes from a committed offset inside a batch. Tansu 0.6 does not auto-create topics;
//! [`Broker::create_topics`] does it through the admin API, as the services do at start.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Broker {
    pub port: u16,
    guard: Guard,
    _dir: tempfile::TempDir,
}

pub fn tansu_binary() -> Result<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin"))
        .into_iter()
        .collect::<Vec<_>>();
    crate::find_binary("tansu", "MILLILAG_TANSU", &cargo_bin)
}

impl Broker {
    pub async fn start() -> Result<Broker> {
        let mut last_err = None;
        // The free port can be taken between picking and binding: try a few.
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    async fn try_start() -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("millilag-tansu-")
            .tempdir()?;
        let port = free_port();
        let guard = Self::spawn(dir.path(), port, "tansu.log").await?;
        Ok(Broker {
            port,
            guard,
            _dir: dir,
        })
    }

    /// Tansu on `port` with its sqlite storage in `dir`, once it answers metadata requests.
    async fn spawn(dir: &Path, port: u16, log: &str) -> Result<Guard> {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tansu_binary()?);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(&url)
            .arg("--advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            // Tansu reads the path after sqlite:// as relative (sqlite:///tmp/x opens ./tmp/x),
            // so run it inside its temp dir.
            .arg("sqlite://tansu.db")
            .current_dir(dir)
            .env("RUST_LOG", "warn");
        let mut guard = Guard::spawn("tansu", cmd, &dir.join(log))?;
        let brokers = format!("127.0.0.1:{port}");
        let ready = wait_for("tansu metadata", Duration::from_secs(20), || {
            let brokers = brokers.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let c: BaseConsumer = ClientConfig::new()
                        .set("bootstrap.servers", &brokers)
                        .create()
                        .ok()?;
                    c.fetch_metadata(None, Duration::from_millis(500))
                        .ok()
                        .map(|_| ())
                })
                .await
                .ok()
                .flatten()
            }
        })
        .await;
        if let Err(e) = ready {
            let alive = guard.is_running();
            anyhow::bail!("{e} (running: {alive}); log:\n{}", guard.log_tail(20));
        }
        Ok(guard)
    }

    /// SIGKILL the broker (an outage; its storage stays).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// Start it again on the same port with the same storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        self.guard = Self::spawn(self._dir.path(), self.port, "tansu-restarted.log").await?;
        Ok(())
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Create topics (1 partition unless given); existing ones are fine.
    pub async fn create_topics(&self, names: &[&str], partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()?;
        let topics: Vec<NewTopic> = names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        let res = admin
            .create_topics(topics.iter(), &AdminOptions::new())
            .await
            .context("CreateTopics")?;
        for r in res {
            match r {
                Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => anyhow::bail!("creating topic {t}: {code}"),
            }
        }
        Ok(())
    }
}
