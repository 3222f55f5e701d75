//! A MariaDB primary and N replicas with GTID replication, from Debian's mariadbd.
//!
//! Start-up copies a datadir that `mariadb-install-db` made once per machine (a template under
//! the temp dir, built under a file lock), so a cluster is up in about a second. Every instance
//! has its own port, socket, tmpdir and datadir (parallel install-db runs sharing /tmp collide).
//! The users the services use are created on the primary and replicate: replicas start from
//! the primary's first binlog.
//!
//! [`Cluster::start_tls`] gives every server a certificate from a test [`crate::tls::Pki`]
//! (`ssl_cert`, `ssl_key`, `ssl_ca`) and creates the service user `REQUIRE SSL` (and
//! [`X509_USER`] `REQUIRE X509`), so plaintext logins fail as on a TLS-only production server.
//!
//! Ground truth for accuracy tests, owing nothing to millilag's own stamps:
//! [`Cluster::install_truth_probe`] adds AFTER triggers on a replica's heartbeat table that
//! record `SYSDATE(6)` (the replica's wall clock at apply; NOW(6) would be the primary's
//! timestamp replayed) and the seq into a side table, and [`Cluster::install_primary_truth`] the
//! same on the primary when the writer changes the row. The primary's trigger DDL is not
//! binlogged (`sql_log_bin = 0`), its side table lives in `millilag_truth`, which the primary
//! does not binlog (`binlog-ignore-db`), and the replicas run their own triggers for row events
//! whatever the primary ran (`slave_run_triggers_for_rbr = ENFORCE`; with YES they skip them for
//! events whose primary ran a trigger). All instances run on this host, so there is one clock:
//! true delay = replica row change - primary row change.

use crate::process::Guard;
use crate::{free_port, wait_for};
use anyhow::{bail, Context, Result};
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The user the services connect as (TCP, 127.0.0.1), with the privileges the README documents.
pub const USER: &str = "millilag";
pub const PASSWORD: &str = "millilag-pw";
/// A TCP user with every privilege, for tools like pt-heartbeat.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-pw";
/// On TLS clusters: a user that must present a client certificate signed by the test CA.
pub const X509_USER: &str = "millilag_x509";
const REPL_USER: &str = "repl";
const REPL_PASSWORD: &str = "repl-pw";
/// Where the truth triggers record row-change times (never replicated: the primary runs with
/// `binlog-ignore-db` for it).
pub const TRUTH_DB: &str = "millilag_truth";
/// Bump when the install options change, so stale templates are not reused.
const TEMPLATE_VERSION: &str = "v1";

/// Small footprint; flush_log_at_trx_commit=2 keeps the gap between a replica applying a row
/// (ground truth) and committing it (visibility) at microseconds instead of an fsync.
const COMMON_OPTS: &[&str] = &[
    "--innodb-buffer-pool-size=16M",
    "--innodb-log-file-size=4M",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--skip-name-resolve",
    "--character-set-server=utf8mb4",
    "--max-connections=500",
];

pub struct Server {
    pub name: String,
    pub port: u16,
    pub server_id: u32,
    dir: PathBuf,
    extra_args: Vec<String>,
    guard: Option<Guard>,
    /// The CA of a TLS cluster: [`Server::connect`] verifies the server with it.
    tls_ca: Option<PathBuf>,
}

impl Server {
    /// host:port, as the services name this server in records.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL a service config uses (user millilag, password inline).
    pub fn url(&self) -> String {
        format!("mysql://{USER}:{PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// Same user, no password in the URL (for configs that take it from the environment).
    pub fn url_without_password(&self) -> String {
        format!("mysql://{USER}@127.0.0.1:{}", self.port)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    pub fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(|g| g.pid())
    }

    /// root over the unix socket: the admin channel for tests (STOP SLAVE, triggers, reads).
    pub async fn admin(&self) -> Result<Conn> {
        let opts = OptsBuilder::default()
            .socket(Some(self.socket().to_string_lossy().into_owned()))
            .user(Some("root"))
            .prefer_socket(true);
        Conn::new(opts)
            .await
            .with_context(|| format!("connecting to {} as root over its socket", self.name))
    }

    /// A TCP connection as the service user (over TLS on a TLS cluster).
    pub async fn connect(&self) -> Result<Conn> {
        let mut opts = OptsBuilder::default()
            .ip_or_hostname("127.0.0.1")
            .tcp_port(self.port)
            .user(Some(USER))
            .pass(Some(PASSWORD))
            .prefer_socket(false);
        if let Some(ca) = &self.tls_ca {
            opts = opts.ssl_opts(
                mysql_async::SslOpts::default()
                    .with_root_certs(vec![ca.clone().into()])
                    .with_disable_built_in_roots(true),
            );
        }
        Conn::new(opts)
            .await
            .with_context(|| format!("connecting to {} as {USER}", self.name))
    }

    fn command(&self) -> Result<Command> {
        let mut cmd = Command::new(mariadbd()?);
        // --no-defaults must come first; --user=root is required when running as root.
        cmd.arg("--no-defaults")
            .arg("--user=root")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--tmpdir={}", self.dir.join("tmp").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!(
                "--pid-file={}",
                self.dir.join("mysqld.pid").display()
            ))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .arg(format!("--server-id={}", self.server_id))
            .args(COMMON_OPTS)
            .args(&self.extra_args);
        Ok(cmd)
    }

    fn spawn(&mut self) -> Result<()> {
        let cmd = self.command()?;
        self.guard = Some(Guard::spawn(&self.name, cmd, &self.dir.join("stdout.log"))?);
        Ok(())
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let res = wait_for(
            &format!("mariadbd {}", self.name),
            Duration::from_secs(60),
            || async {
                let mut c = self.admin().await.ok()?;
                // A real query: install-db races can leave a server that pings but has no grants.
                let one: Option<i64> = c
                    .query_first("SELECT 1 FROM mysql.global_priv LIMIT 1")
                    .await
                    .ok()?;
                let _ = c.disconnect().await;
                one
            },
        )
        .await;
        if res.is_err() {
            let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            bail!(
                "{} did not become ready; error.log ends with:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    /// SIGKILL the server (a crash, as far as clients can tell).
    pub fn kill(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.kill();
        }
    }

    /// Start it again on the same port and datadir and wait until it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        self.wait_ready().await
    }

    /// Restart it listening on every address in `addresses` (127.0.0.x aliases), so one
    /// server can stand for many replicas, each address a distinct host:port to a client.
    pub async fn restart_listening_on(&mut self, addresses: &[String]) -> Result<()> {
        self.extra_args
            .push(format!("--bind-address={}", addresses.join(",")));
        self.restart().await
    }

    pub fn is_running(&mut self) -> bool {
        self.guard.as_mut().is_some_and(|g| g.is_running())
    }

    /// SIGSTOP the server: connections stay open and nothing answers, as when a host hangs or
    /// the network between it and its clients drops packets. [`Server::thaw`] resumes it (and
    /// the guard's SIGKILL works on a stopped process too).
    /// Returns once the kernel reports the process stopped (a signal is delivered
    /// asynchronously: a query sent right after kill(2) could still be answered).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let stat = format!("/proc/{pid}/stat");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            // "pid (comm) S ...": the state follows the last ')'.
            let state = std::fs::read_to_string(&stat)
                .ok()
                .and_then(|t| {
                    t.rsplit_once(')')
                        .map(|(_, r)| r.trim_start().chars().next())
                })
                .flatten();
            if matches!(state, Some('T' | 't') | None) {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Server::freeze`].
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: i32) {
        if let Some(g) = &self.guard {
            g.signal(sig);
        }
    }

    /// `SET GLOBAL read_only`, as root.
    pub async fn set_read_only(&self, on: bool) -> Result<()> {
        let mut c = self.admin().await?;
        c.query_drop(format!("SET GLOBAL read_only = {}", u8::from(on)))
            .await?;
        Ok(())
    }

    /// A `SHOW GLOBAL STATUS` counter, e.g. "Connections" (every connection attempt the server
    /// accepted, this one included) or "Com_create_table".
    pub async fn global_status(&self, name: &str) -> Result<i64> {
        let mut c = self.admin().await?;
        let row: Option<(String, String)> = c
            .exec_first("SHOW GLOBAL STATUS WHERE Variable_name = ?", (name,))
            .await?;
        let (_, v) = row.with_context(|| format!("no status variable {name}"))?;
        Ok(v.parse()?)
    }
}

pub struct Cluster {
    pub primary: Server,
    pub replicas: Vec<Server>,
    // Dropped last: the servers are killed before their files go.
    _dir: tempfile::TempDir,
}

/// When a stall started and ended (local clock, microseconds).
#[derive(Debug, Clone, Copy)]
pub struct Stall {
    pub stopped_at_us: i64,
    pub started_at_us: i64,
}

fn mariadbd() -> Result<PathBuf> {
    crate::find_binary(
        "mariadbd",
        "MILLILAG_MARIADBD",
        &[PathBuf::from("/usr/sbin")],
    )
}

fn install_db() -> Result<PathBuf> {
    crate::find_binary(
        "mariadb-install-db",
        "MILLILAG_MARIADB_INSTALL_DB",
        &[PathBuf::from("/usr/bin")],
    )
}

/// The template datadir, made once per machine. A file lock serialises parallel test
/// processes; the directory is renamed into place only when complete.
fn template_datadir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let ready = base.join(format!("millilag-mariadb-template-{TEMPLATE_VERSION}"));
    if ready.join("data/mysql/global_priv.MAI").exists() {
        return Ok(ready);
    }
    let lock_path = base.join(format!("millilag-mariadb-template-{TEMPLATE_VERSION}.lock"));
    let lock = std::fs::File::create(&lock_path)?;
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a file descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        bail!("locking {}", lock_path.display());
    }
    if ready.join("data/mysql/global_priv.MAI").exists() {
        return Ok(ready);
    }
    let work = tempfile::Builder::new()
        .prefix("millilag-template-")
        .tempdir_in(&base)?;
    std::fs::create_dir_all(work.path().join("data"))?;
    std::fs::create_dir_all(work.path().join("tmp"))?;
    let out = Command::new(install_db()?)
        .arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", work.path().join("data").display()))
        .arg(format!("--tmpdir={}", work.path().join("tmp").display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .args(COMMON_OPTS)
        .output()
        .context("running mariadb-install-db")?;
    if !out.status.success() || !work.path().join("data/mysql/global_priv.MAI").exists() {
        bail!(
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&ready);
    std::fs::rename(work.keep(), &ready)?;
    Ok(ready)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()?;
    if !status.success() {
        bail!("copying {} to {}", from.display(), to.display());
    }
    Ok(())
}

impl Cluster {
    /// A primary and `replicas` replicas replicating with GTIDs, users created, replication
    /// proven by a row written on the primary and read on every replica.
    pub async fn start(replicas: usize) -> Result<Cluster> {
        Self::start_with(replicas, None).await
    }

    /// [`Cluster::start`] with TLS on every server, certificates from `pki`; the service user
    /// can log in only over TLS (see the module doc).
    pub async fn start_tls(replicas: usize, pki: &crate::tls::Pki) -> Result<Cluster> {
        Self::start_with(replicas, Some(pki)).await
    }

    async fn start_with(replicas: usize, pki: Option<&crate::tls::Pki>) -> Result<Cluster> {
        // Blocking, once per machine (then a cached stat): fine on any runtime flavour.
        let template = template_datadir()?;
        let dir = tempfile::Builder::new()
            .prefix("millilag-mariadb-")
            .tempdir()?;
        let make = |name: &str, server_id: u32, extra: Vec<String>| -> Result<Server> {
            let sdir = dir.path().join(name);
            std::fs::create_dir_all(sdir.join("data"))?;
            std::fs::create_dir_all(sdir.join("tmp"))?;
            copy_dir(&template.join("data"), &sdir.join("data"))?;
            Ok(Server {
                name: name.to_string(),
                port: free_port(),
                server_id,
                dir: sdir,
                extra_args: extra,
                guard: None,
                tls_ca: pki.map(|p| p.ca()),
            })
        };
        let tls_args: Vec<String> = pki
            .map(|p| {
                vec![
                    format!("--ssl-ca={}", p.ca().display()),
                    format!("--ssl-cert={}", p.server_cert().display()),
                    format!("--ssl-key={}", p.server_key().display()),
                ]
            })
            .unwrap_or_default();
        let pdir = dir.path().join("primary");
        let mut primary = make(
            "primary",
            1,
            vec![
                format!("--log-bin={}", pdir.join("data/primary-bin").display()),
                "--binlog-format=ROW".into(),
                // The primary's truth table stays on the primary (see the module doc).
                format!("--binlog-ignore-db={TRUTH_DB}"),
            ],
        )?;
        primary.extra_args.extend(tls_args.iter().cloned());
        let mut reps = Vec::new();
        for i in 0..replicas {
            let name = format!("replica{}", i + 1);
            let rdir = dir.path().join(&name);
            let mut s = make(&name, 2 + i as u32, vec![])?;
            s.extra_args = vec![
                format!("--relay-log={}", rdir.join("data/relay-bin").display()),
                "--read-only=0".into(),
                // Triggers on the replica fire for every row event, including those whose
                // primary ran its own truth trigger: the ground-truth probes need it.
                "--slave-run-triggers-for-rbr=ENFORCE".into(),
                "--report-host=127.0.0.1".into(),
                format!("--report-port={}", s.port),
            ];
            s.extra_args.extend(tls_args.iter().cloned());
            reps.push(s);
        }
        primary.spawn()?;
        for r in reps.iter_mut() {
            r.spawn()?;
        }
        primary.wait_ready().await?;
        for r in reps.iter_mut() {
            r.wait_ready().await?;
        }
        let cluster = Cluster {
            primary,
            replicas: reps,
            _dir: dir,
        };
        cluster.setup_replication(pki.is_some()).await?;
        Ok(cluster)
    }

    async fn setup_replication(&self, tls: bool) -> Result<()> {
        let mut p = self.primary.admin().await?;
        let require = if tls { " REQUIRE SSL" } else { "" };
        if tls {
            p.query_drop(format!(
                "CREATE USER '{X509_USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}' REQUIRE X509;
                 GRANT SELECT, INSERT, UPDATE, CREATE ON `millilag`.* TO '{X509_USER}'@'127.0.0.1';
                 GRANT BINLOG REPLAY, SLAVE MONITOR, REPLICATION MASTER ADMIN ON *.* TO '{X509_USER}'@'127.0.0.1';"
            ))
            .await
            .context("creating the X509 user on the primary")?;
        }
        // The privileges the README documents for each service, nothing more: tests prove they
        // are enough. BINLOG REPLAY lets the writer set gtid_domain_id; SLAVE MONITOR lets the
        // reader read replica status; REPLICATION MASTER ADMIN allows SHOW SLAVE HOSTS.
        // Created before replication starts (the replica's IO thread needs repl to exist);
        // they still reach the replicas, which start from the primary's first binlog.
        p.query_drop(format!(
            "CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}';
             GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1';
             CREATE USER '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'{require};
             GRANT SELECT, INSERT, UPDATE, CREATE ON `millilag`.* TO '{USER}'@'127.0.0.1';
             GRANT BINLOG REPLAY, SLAVE MONITOR, REPLICATION MASTER ADMIN ON *.* TO '{USER}'@'127.0.0.1';
             CREATE USER '{ADMIN_USER}'@'127.0.0.1' IDENTIFIED BY '{ADMIN_PASSWORD}';
             GRANT ALL ON *.* TO '{ADMIN_USER}'@'127.0.0.1' WITH GRANT OPTION;
             CREATE DATABASE harness;
             CREATE TABLE harness.marker (id INT PRIMARY KEY);
             INSERT INTO harness.marker VALUES (1);"
        ))
        .await
        .context("creating users on the primary")?;
        for r in &self.replicas {
            let mut c = r.admin().await?;
            c.query_drop(format!(
                "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='{REPL_USER}', \
                 MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1; \
                 START SLAVE",
                self.primary.port
            ))
            .await
            .with_context(|| format!("starting replication on {}", r.name))?;
        }
        for r in &self.replicas {
            let ok = wait_for(
                &format!("replication to {}", r.name),
                Duration::from_secs(30),
                || async {
                    let mut root = r.admin().await.ok()?;
                    let v: Option<i64> = root
                        .query_first("SELECT id FROM harness.marker")
                        .await
                        .ok()?;
                    // The service user arrived too and can log in over TCP.
                    let mut user = r.connect().await.ok()?;
                    user.query_drop("SELECT 1").await.ok()?;
                    let _ = user.disconnect().await;
                    v
                },
            )
            .await;
            if let Err(e) = ok {
                let mut c = r.admin().await?;
                let status: Option<mysql_async::Row> = c.query_first("SHOW SLAVE STATUS").await?;
                let errors = status
                    .map(|row| {
                        let s = millilag_core::db::parse_replica_status(Some(&row));
                        format!(
                            "io={} sql={} error={:?}",
                            s.io_running, s.sql_running, s.last_error
                        )
                    })
                    .unwrap_or_else(|| "no replica status".into());
                bail!("{e}: {errors}");
            }
        }
        Ok(())
    }

    pub fn replica(&self, i: usize) -> &Server {
        &self.replicas[i]
    }

    /// A switchover: the primary stops taking writes (`read_only = 1`), replica `i` applies
    /// everything it had written, stops replicating and becomes writable. The other replicas
    /// keep following the old primary (repointing them is not needed by the tests).
    pub async fn promote(&self, i: usize) -> Result<()> {
        self.primary.set_read_only(true).await?;
        let mut p = self.primary.admin().await?;
        let pos: String = p
            .query_first("SELECT @@gtid_binlog_pos")
            .await?
            .context("@@gtid_binlog_pos")?;
        let r = &self.replicas[i];
        let mut c = r.admin().await?;
        let reached: Option<i64> = c
            .exec_first("SELECT MASTER_GTID_WAIT(?, 30)", (&pos,))
            .await?;
        if reached != Some(0) {
            bail!("{} did not reach the primary's {pos} within 30 s", r.name);
        }
        c.query_drop("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0")
            .await
            .with_context(|| format!("promoting {}", r.name))?;
        Ok(())
    }

    /// The highest heartbeat seq millilag's writer has committed on the primary (0 before the
    /// first; an error before the writer created its table).
    pub async fn heartbeat_seq(&self) -> Result<i64> {
        let mut c = self.primary.admin().await?;
        let seq: Option<Option<i64>> = c
            .query_first("SELECT CAST(MAX(seq) AS SIGNED) FROM millilag.heartbeat")
            .await?;
        Ok(seq.flatten().unwrap_or(0))
    }

    /// Stop a replica's SQL thread for `for_`, then start it again: the replica falls behind by
    /// exactly the heartbeats committed meanwhile.
    pub async fn stall(&self, replica: usize, for_: Duration) -> Result<Stall> {
        let mut c = self.replicas[replica].admin().await?;
        c.query_drop("STOP SLAVE SQL_THREAD").await?;
        let stopped_at_us = millilag_core::clock::now_us();
        tokio::time::sleep(for_).await;
        c.query_drop("START SLAVE SQL_THREAD").await?;
        let started_at_us = millilag_core::clock::now_us();
        Ok(Stall {
            stopped_at_us,
            started_at_us,
        })
    }

    /// Record each heartbeat's apply time on `replica` (see the module doc). Waits until the
    /// heartbeat table has replicated there.
    pub async fn install_truth_probe(&self, replica: usize, db: &str, table: &str) -> Result<()> {
        install_truth_log(&self.replicas[replica], db, table, "applied", TruthKey::SEQ).await
    }

    /// The truth triggers on the primary and every replica (see the module doc).
    pub async fn install_truth(&self, db: &str, table: &str) -> Result<()> {
        self.install_primary_truth(db, table).await?;
        for i in 0..self.replicas.len() {
            self.install_truth_probe(i, db, table).await?;
        }
        Ok(())
    }

    /// Record when the primary changes each heartbeat row (see the module doc): the start of
    /// every true delay. Waits until the table exists.
    pub async fn install_primary_truth(&self, db: &str, table: &str) -> Result<()> {
        install_truth_log(&self.primary, db, table, "changed", TruthKey::SEQ).await
    }

    /// seq -> row-change time on the primary (local clock, microseconds).
    pub async fn primary_truth(&self, from_seq: i64) -> Result<BTreeMap<i64, i64>> {
        read_truth(&self.primary, "changed", from_seq).await
    }

    /// seq -> true delay on `replica` (replica row change - primary row change, microseconds),
    /// for heartbeats both triggers saw.
    pub async fn true_delays(&self, replica: usize, from_seq: i64) -> Result<BTreeMap<i64, i64>> {
        let changed = self.primary_truth(from_seq).await?;
        let applied = self.truth(replica, from_seq).await?;
        Ok(applied
            .into_iter()
            .filter_map(|(seq, at)| Some((seq, at - changed.get(&seq)?)))
            .collect())
    }

    /// seq -> apply time (local clock, microseconds) for heartbeats applied on `replica`.
    pub async fn truth(&self, replica: usize, from_seq: i64) -> Result<BTreeMap<i64, i64>> {
        read_truth(&self.replicas[replica], "applied", from_seq).await
    }
}

/// The column of a heartbeat row that keys its truth log, and the log's type for it.
#[derive(Clone, Copy)]
pub struct TruthKey {
    pub column: &'static str,
    pub sql_type: &'static str,
}

impl TruthKey {
    /// millilag's heartbeat rows.
    pub const SEQ: TruthKey = TruthKey {
        column: "seq",
        sql_type: "BIGINT UNSIGNED",
    };
}

/// AFTER UPDATE and INSERT triggers on `db.table` of `server` recording (the row's `key`,
/// `SYSDATE(6)`) into `millilag_truth.<log>`, none of it binlogged. Waits until the table exists
/// there. The bench keys pt-heartbeat's rows by their `ts`.
pub async fn install_truth_log(
    server: &Server,
    db: &str,
    table: &str,
    log: &str,
    key: TruthKey,
) -> Result<()> {
    let t = millilag_core::db::qualified_table(db, table)?;
    wait_for(
        &format!("{t} on {}", server.name),
        Duration::from_secs(30),
        || async {
            let mut c = server.admin().await.ok()?;
            c.query_first::<i64, _>(format!("SELECT COUNT(*) FROM {t}"))
                .await
                .ok()
                .flatten()
        },
    )
    .await?;
    let mut c = server.admin().await?;
    let trig = |kind: &str| {
        format!(
            "CREATE TRIGGER IF NOT EXISTS `{db}`.`millilag_truth_{k}` AFTER {kind} ON {t} FOR EACH ROW \
             REPLACE INTO {TRUTH_DB}.{log} VALUES (NEW.{column}, ROUND(UNIX_TIMESTAMP(SYSDATE(6)) * 1000000))",
            k = kind.to_lowercase(),
            column = key.column,
        )
    };
    c.query_drop(format!(
        "SET SESSION sql_log_bin = 0;
         CREATE DATABASE IF NOT EXISTS {TRUTH_DB};
         CREATE TABLE IF NOT EXISTS {TRUTH_DB}.{log} ({} {} PRIMARY KEY, at_us BIGINT NOT NULL);
         {}; {};",
        key.column,
        key.sql_type,
        trig("UPDATE"),
        trig("INSERT")
    ))
    .await
    .with_context(|| format!("installing the truth triggers on {}", server.name))?;
    Ok(())
}

async fn read_truth(server: &Server, log: &str, from_seq: i64) -> Result<BTreeMap<i64, i64>> {
    let mut c = server.admin().await?;
    let rows: Vec<(i64, i64)> = c
        .exec(
            format!("SELECT seq, at_us FROM {TRUTH_DB}.{log} WHERE seq >= ? ORDER BY seq"),
            (from_seq,),
        )
        .await?;
    Ok(rows.into_iter().collect())
}
