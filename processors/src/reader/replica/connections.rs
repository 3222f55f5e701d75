//! A replica's database sessions: one control connection (row reads, replica status, pings)
//! and at most `max_waits` connections for GTID waits, never more, whatever fails.
//!
//! A connection whose query failed is dropped, never returned to the pool; after the replica
//! was declared unreachable ([`Connections::drop_all`]) the waits still running on the old
//! connections are left to finish and their connections are dropped (the generation tells
//! them apart).

use millilag_core::clock::{sample_offset, OffsetEstimator, OffsetSample};
use millilag_core::config::DbUrl;
use millilag_core::db::{self, DbTimeouts, Dialect, WaitSession};
use millilag_core::secret::Sensitive;
use mysql_async::Conn;
use std::sync::Arc;

/// A wait's connection: pooled, or to be opened by the wait itself.
pub(super) enum WaitConn {
    Idle(WaitSession),
    New(Box<Connector>),
}

/// What opening one more connection to the replica takes.
pub(super) struct Connector {
    url: DbUrl,
    password: Option<Sensitive>,
    timeouts: DbTimeouts,
}

impl Connector {
    pub async fn connect(&self) -> Result<Conn, String> {
        db::connect_with(
            &self.url,
            self.password.as_ref().map(|p| p.expose()),
            &self.timeouts,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

impl WaitConn {
    pub async fn open(self) -> Result<WaitSession, String> {
        match self {
            WaitConn::Idle(s) => Ok(s),
            WaitConn::New(c) => c.connect().await.map(WaitSession::new),
        }
    }
}

/// Replica clock samples kept (the fastest round trip of these is used).
/// Samples of the replica's clock kept: every wait and read adds one, so this is about the last
/// second at 100 heartbeats/s, with the fastest exchange in it answering.
const CLOCK_SAMPLES: usize = 64;

pub(super) struct Connections {
    url: DbUrl,
    /// Shared: every wait carries it (for its errors), and a copy was an allocation each.
    pub addr: Arc<str>,
    password: Option<Sensitive>,
    pub dialect: Option<Dialect>,
    pub control: Option<Conn>,
    idle: Vec<WaitSession>,
    /// Wait connections of this generation: idle or running a wait.
    open_waits: usize,
    max_waits: usize,
    pub generation: u64,
    /// Every connect and statement is bounded by these (the cluster's).
    pub timeouts: DbTimeouts,
    /// The replica's clock against the local one (NTP-style, lowest round trips kept).
    clock: OffsetEstimator,
}

impl Connections {
    pub fn new(
        url: DbUrl,
        password: Option<Sensitive>,
        max_waits: usize,
        timeouts: DbTimeouts,
    ) -> Connections {
        Connections {
            addr: url.address().into(),
            url,
            password,
            dialect: None,
            control: None,
            idle: Vec::new(),
            open_waits: 0,
            max_waits,
            generation: 0,
            timeouts,
            clock: OffsetEstimator::new(CLOCK_SAMPLES),
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

    /// A fresh control connection (the old one, if any, is dropped), with a few samples of
    /// the replica's clock. Returns half its fastest round trip: how long an answer takes to
    /// reach us.
    pub async fn connect_control(&mut self) -> Result<i64, String> {
        self.control = None;
        let mut c = self.connect().await?;
        let limit = self.timeouts.query;
        let dialect = db::dialect_within(&mut c, &self.addr, limit)
            .await
            .map_err(|e| e.to_string())?;
        let mut best = i64::MAX;
        for _ in 0..3 {
            let sample = db::bounded(limit, &self.addr, sample_offset(&mut c))
                .await
                .map_err(|e| e.to_string())?;
            best = best.min(sample.rtt_us);
            self.clock.add(sample);
        }
        self.dialect = Some(dialect);
        self.control = Some(c);
        Ok(best / 2)
    }

    /// One more sample of the replica's clock on the control connection (a failure is left to
    /// the next read to notice).
    pub async fn sample_clock(&mut self) {
        let limit = self.timeouts.query;
        let Some(c) = self.control.as_mut() else {
            return;
        };
        if let Ok(s) = db::bounded(limit, &self.addr, sample_offset(c)).await {
            self.clock.add(s);
        }
    }

    /// A statement that reported the replica's clock was also a sample of it.
    pub fn add_clock_sample(&mut self, sample: OffsetSample) {
        self.clock.add(sample);
    }

    /// The replica's clock against the local one (replica = local + offset), once sampled.
    pub fn replica_clock(&self) -> Option<super::ClockOffset> {
        let e = self.clock.estimate(millilag_core::clock::now_us());
        e.known.then_some(super::ClockOffset {
            offset_us: e.offset_us,
            uncertainty_us: e.uncertainty_us,
        })
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

    /// A connection for one wait: an idle one, or the means to open a new one while under the
    /// cap (opened by the wait itself, beside the replica's loop, which never waits for a connect).
    pub fn take_wait_conn(&mut self) -> Result<WaitConn, String> {
        if let Some(c) = self.idle.pop() {
            return Ok(WaitConn::Idle(c));
        }
        if self.open_waits >= self.max_waits {
            return Err(format!("all {} wait connections are busy", self.max_waits));
        }
        self.open_waits += 1;
        Ok(WaitConn::New(Box::new(Connector {
            url: self.url.clone(),
            password: self.password.clone(),
            timeouts: self.timeouts,
        })))
    }

    /// A wait finished: its connection goes back to the pool if it still works and belongs to
    /// this generation.
    pub fn wait_finished(&mut self, generation: u64, session: Option<WaitSession>) {
        if generation != self.generation {
            return;
        }
        match session {
            Some(s) => self.idle.push(s),
            None => self.open_waits = self.open_waits.saturating_sub(1),
        }
    }

    /// Drop every connection (the replica is unreachable).
    pub fn drop_all(&mut self) {
        if let Some(c) = self.control.take() {
            tokio::spawn(db::close(c));
        }
        for s in self.idle.drain(..) {
            tokio::spawn(db::close(s.into_conn()));
        }
        self.open_waits = 0;
        self.generation += 1;
    }
}
