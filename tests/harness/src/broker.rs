//! Tansu, a Kafka-protocol broker, with sqlite storage in a temp dir.
//!
//! sqlite rather than memory: Tansu 0.6's memory engine never returns records to a consumer
//! that resumes from a committed offset inside a batch. Tansu 0.6 does not auto-create topics;
//! [`Broker::create_topics`] does it through the admin API, as the services do at start.
//!
//! [`Broker::start_secured`]: TLS through a socat terminator on the advertised port (Tansu
//! listens in plaintext on another), SASL through Tansu's `--authentication` with a SCRAM user.

use crate::process::Guard;
use crate::tls::{Pki, Terminator};
use crate::{free_port, wait_for};
use anyhow::{bail, Context, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Broker {
    /// The port clients bootstrap from (the TLS terminator's on a TLS broker).
    pub port: u16,
    /// Tansu's own (plaintext) listener.
    plain_port: u16,
    /// Tansu runs with `--authentication` (SASL required).
    authentication: bool,
    /// librdkafka properties a client needs (TLS, SASL), beyond bootstrap.servers.
    properties: BTreeMap<String, String>,
    guard: Guard,
    terminator: Option<Terminator>,
    _dir: tempfile::TempDir,
}

/// What a [`Broker`] requires from its clients.
#[derive(Default, Clone, Copy)]
pub struct Security<'a> {
    /// TLS on the advertised port (a socat terminator in front of Tansu; see `tls.rs`).
    pub tls: Option<&'a Pki>,
    /// SASL required (`tansu broker --authentication`), with this SCRAM-SHA-512 user created.
    /// Tansu 0.6 verifies SCRAM passwords against the stored credential; its PLAIN accepts
    /// any password.
    pub scram_user: Option<(&'a str, &'a str)>,
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
        Self::start_secured(Security::default()).await
    }

    /// A broker clients reach over TLS and/or SASL; [`Broker::properties`] are what they need.
    pub async fn start_secured(security: Security<'_>) -> Result<Broker> {
        let mut last_err = None;
        // The free port can be taken between picking and binding: try a few.
        for _ in 0..3 {
            match Self::try_start(security).await {
                Ok(b) => return Ok(b),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("tansu did not start")))
    }

    async fn try_start(security: Security<'_>) -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("millilag-tansu-")
            .tempdir()?;
        let plain_port = free_port();
        let port = if security.tls.is_some() {
            free_port()
        } else {
            plain_port
        };
        let mut properties = BTreeMap::new();
        let tls = security.tls.is_some();
        let sasl = security.scram_user.is_some();
        let protocol = match (tls, sasl) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        properties.insert("security.protocol".into(), protocol.into());
        if let Some(pki) = security.tls {
            properties.insert("ssl.ca.location".into(), pki.ca().display().to_string());
        }
        if let Some((user, password)) = security.scram_user {
            properties.insert("sasl.mechanisms".into(), "SCRAM-SHA-512".into());
            properties.insert("sasl.username".into(), user.into());
            properties.insert("sasl.password".into(), password.into());
            // SCRAM credentials live in Tansu's storage: create the user while no
            // authentication is required, then restart requiring it.
            let mut open = Self::spawn(dir.path(), plain_port, port, false, "tansu-setup.log")?;
            let created = wait_for("tansu user create", Duration::from_secs(20), || async {
                let out = tokio::process::Command::new(tansu_binary().ok()?)
                    .args(["user", "create", "--mechanism", "scram512", "--broker"])
                    .arg(format!("tcp://127.0.0.1:{plain_port}"))
                    .args([user, password])
                    .output()
                    .await
                    .ok()?;
                out.status.success().then_some(())
            })
            .await;
            if let Err(e) = created {
                bail!("{e}; log:\n{}", open.log_tail(20));
            }
            open.kill();
        }
        let guard = Self::spawn(dir.path(), plain_port, port, sasl, "tansu.log")?;
        let terminator = match security.tls {
            Some(pki) => Some(Terminator::start_on(pki, port, plain_port).await?),
            None => None,
        };
        let mut broker = Broker {
            port,
            plain_port,
            authentication: sasl,
            properties,
            guard,
            terminator,
            _dir: dir,
        };
        broker.wait_ready().await?;
        Ok(broker)
    }

    /// Tansu listening on `listen`, advertising `advertised`, with its sqlite storage in `dir`.
    fn spawn(dir: &Path, listen: u16, advertised: u16, auth: bool, log: &str) -> Result<Guard> {
        let mut cmd = Command::new(tansu_binary()?);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{listen}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .arg("--storage-engine")
            // Tansu reads the path after sqlite:// as relative (sqlite:///tmp/x opens ./tmp/x),
            // so run it inside its temp dir.
            .arg("sqlite://tansu.db")
            .current_dir(dir)
            .env("RUST_LOG", "warn");
        if auth {
            cmd.arg("--authentication");
        }
        Guard::spawn("tansu", cmd, &dir.join(log))
    }

    /// Until the broker answers a metadata request the way clients will ask (TLS, SASL).
    async fn wait_ready(&mut self) -> Result<()> {
        let config = self.client_config();
        let ready = wait_for("tansu metadata", Duration::from_secs(20), || {
            let config = config.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let c: BaseConsumer = config.create().ok()?;
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
            let alive = self.guard.is_running();
            anyhow::bail!("{e} (running: {alive}); log:\n{}", self.guard.log_tail(20));
        }
        Ok(())
    }

    /// librdkafka properties a client of this broker needs (security.protocol, CA, SASL).
    pub fn properties(&self) -> &BTreeMap<String, String> {
        &self.properties
    }

    /// bootstrap.servers plus [`Broker::properties`].
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers());
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Per partition `0..partitions` of `topic`: its end offset, and what `group` committed
    /// there (None before its first commit). Blocking (librdkafka's calls, 5 s each at most).
    pub fn group_offsets(
        &self,
        group: &str,
        topic: &str,
        partitions: i32,
    ) -> Result<Vec<(i64, Option<i64>)>> {
        let c: BaseConsumer = self.client_config().set("group.id", group).create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = c.committed_offsets(tpl, Duration::from_secs(5))?;
        (0..partitions)
            .map(|p| {
                let (_, end) = c.fetch_watermarks(topic, p, Duration::from_secs(5))?;
                let got = committed
                    .find_partition(topic, p)
                    .and_then(|e| match e.offset() {
                        rdkafka::Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                Ok((end, got))
            })
            .collect()
    }

    /// SIGKILL the broker (an outage; its storage stays).
    pub fn kill(&mut self) {
        self.guard.kill();
    }

    /// SIGSTOP the broker: its connections stay open and nothing answers, as when its host
    /// hangs. [`Broker::thaw`] resumes it.
    pub fn freeze(&self) {
        self.guard.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.guard.signal(libc::SIGCONT);
    }

    /// Start it again on the same port with the same storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.guard.kill();
        self.guard = Self::spawn(
            self._dir.path(),
            self.plain_port,
            self.port,
            self.authentication,
            "tansu-restarted.log",
        )?;
        self.wait_ready().await
    }

    /// The TLS terminator's PID, on a TLS broker.
    pub fn terminator_pid(&self) -> Option<u32> {
        self.terminator.as_ref().map(|t| t.pid())
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Create topics (1 partition unless given); existing ones are fine.
    pub async fn create_topics(&self, names: &[&str], partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = self.client_config().create()?;
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
