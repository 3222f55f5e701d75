//! A replica's database sessions: one control connection (row reads, replica status, pings)
//! and at most `max_waits` connections for GTID waits, never more, whatever fails.
//!
//! A connection whose query failed is dropped, never returned to the pool; after the replica
//! was declared unreachable ([`Connections::drop_all`]) the waits still running on the old
//! connections are left to finish and their connections are dropped (the generation tells
//! them apart).

use millilag_core::clock::now_us;
use millilag_core::config::DbUrl;
use millilag_core::db::{self, DbTimeouts, Dialect};
use millilag_core::secret::Sensitive;
use mysql_async::prelude::*;
use mysql_async::Conn;

pub(super) struct Connections {
    url: DbUrl,
    pub addr: String,
    password: Option<Sensitive>,
    pub dialect: Option<Dialect>,
    pub control: Option<Conn>,
    idle: Vec<Conn>,
    /// Wait connections of this generation: idle or running a wait.
    open_waits: usize,
    max_waits: usize,
    pub generation: u64,
    /// Every connect and statement is bounded by these (the cluster's).
    pub timeouts: DbTimeouts,
}

impl Connections {
    pub fn new(
        url: DbUrl,
        password: Option<Sensitive>,
        max_waits: usize,
        timeouts: DbTimeouts,
    ) -> Connections {
        Connections {
            addr: url.address(),
            url,
            password,
            dialect: None,
            control: None,
            idle: Vec::new(),
            open_waits: 0,
            max_waits,
            generation: 0,
            timeouts,
        }
    }

    async fn connect(&self) -> Result<Conn, String> {
        db::connect_with(
            &self.url,
            self.password.as_ref().map(|p| p.expose()),
            &self.timeouts,
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// A fresh control connection (the old one, if any, is dropped). Returns half its fastest
    /// ping: how long an answer takes to reach us.
    pub async fn connect_control(&mut self) -> Result<i64, String> {
        self.control = None;
        let mut c = self.connect().await?;
        let limit = self.timeouts.query;
        let dialect = db::dialect_within(&mut c, &self.addr, limit)
            .await
            .map_err(|e| e.to_string())?;
        let mut best = i64::MAX;
        for _ in 0..3 {
            let t0 = now_us();
            db::bounded(limit, &self.addr, c.query_drop("SELECT 1"))
                .await
                .map_err(|e| e.to_string())?;
            best = best.min(now_us() - t0);
        }
        self.dialect = Some(dialect);
        self.control = Some(c);
        Ok(best / 2)
    }

    /// The control connection, connected if needed.
    pub async fn control(&mut self) -> Result<&mut Conn, String> {
        if self.control.is_none() {
            self.connect_control().await?;
        }
        self.control
            .as_mut()
            .ok_or_else(|| "no control connection".to_string())
    }

    /// A connection for one wait: an idle one, or a new one while under the cap.
    pub async fn take_wait_conn(&mut self) -> Result<Conn, String> {
        if let Some(c) = self.idle.pop() {
            return Ok(c);
        }
        if self.open_waits >= self.max_waits {
            return Err(format!("all {} wait connections are busy", self.max_waits));
        }
        let c = self.connect().await?;
        self.open_waits += 1;
        Ok(c)
    }

    /// A wait finished: its connection goes back to the pool if it still works and belongs to
    /// this generation.
    pub fn wait_finished(&mut self, generation: u64, conn: Option<Conn>) {
        if generation != self.generation {
            return;
        }
        match conn {
            Some(c) => self.idle.push(c),
            None => self.open_waits = self.open_waits.saturating_sub(1),
        }
    }

    /// Drop every connection (the replica is unreachable).
    pub fn drop_all(&mut self) {
        if let Some(c) = self.control.take() {
            tokio::spawn(db::close(c));
        }
        for c in self.idle.drain(..) {
            tokio::spawn(db::close(c));
        }
        self.open_waits = 0;
        self.generation += 1;
    }
}
