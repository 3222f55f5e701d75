//! `millilag processor`: windows `replica-delay` records, writes every closed window to the
//! sinks, evaluates alert rules and posts webhooks.
//!
//! Data flow: one run loop (`run_loop.rs`) and a task per sink, the state writer and the alert
//! publisher.
//!
//! ```text
//! replica-delay ─► Source (consumer/) ─► decode (input.rs, borrowed) ─► Windows (window/)
//!                    │ poison ─► dead-letter                                │ closed windows
//!                    │                                                      ▼
//!                    │       alert, alert-state, webhooks ◄── alerts/ ◄── Dispatch (dispatch.rs)
//!                    │                                                      │ one batch
//!                    │                                 every sink (sinks/) ◄┤
//!                    │   decoded records ─► statsd timers ─► statsd (best effort) ◄┘
//!                    │                                        │ all acked
//!                    │                          processor-state (state.rs) ─► ack
//!                    └─ offsets.rs: store per partition the lowest offset still held by an
//!                       open window or an unfinished batch; commit synchronously on shutdown
//! ```
//!
//! Partitions revoked or assigned by the consumer group are handled in `rebalance.rs` (open
//! incidents follow them); when the sinks fall behind, `backpressure.rs` pauses consumption.
//! Nothing is dropped: a sink outage only delays. Silence is not health: `heartbeats.rs`
//! follows `heartbeat-set` and `alerts/stale.rs` alerts when a cluster stops announcing or a
//! replica stops being measured.

pub mod alerts;
mod backpressure;
mod dispatch;
mod heartbeats;
pub mod http_client;
pub mod input;
mod liveness;
pub mod metrics;
pub mod offsets;
mod rebalance;
mod run_loop;
pub mod sinks;
pub mod state;
pub mod window;
mod window_gauges;

use crate::consumer::Source;
use alerts::webhook::Webhooks;
use alerts::{AlertEngine, AlertPublisher, Dormant, StaleRules};
use anyhow::Context;
use backpressure::Backpressure;
use dispatch::Dispatch;
use metrics::Metrics;
use millilag_core::http::{bind_and_serve, Health};
use millilag_core::kafka::{self, topics};
use millilag_core::shutdown::Shutdown;
use millilag_core::Config;
use offsets::OffsetTracker;
use prometheus_client::registry::Registry;
use rdkafka::producer::FutureProducer;
use run_loop::RunLoop;
use sinks::rejected::DeadLetterTopic;
use sinks::statsd::timings::Timings;
use sinks::SinkHandle;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tracing::{info, warn};
use window::{Spec, Windows};

/// librdkafka fetch.wait.max.ms: Tansu answers a fetch only when it expires, so keep it low
/// enough for the end-to-end latency target; real Kafka answers as soon as records arrive.
const FETCH_WAIT_MS: u32 = 10;

/// Run until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut registry = Registry::with_prefix("millilag");
    let metrics = Metrics::new(&mut registry);
    let statsd_metrics = sinks::statsd::StatsdMetrics::new(&mut registry);
    let health = Health::starting();
    let server = bind_and_serve(
        config.processor.listen,
        Arc::new(registry),
        health.clone(),
        shutdown.clone(),
    )
    .await?;
    let rules = config
        .alerts
        .iter()
        .map(alerts::Rule::from_config)
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    // A wrong CA or name is a config mistake: say so now, not at the first window.
    http_client::check_endpoints(&config).await?;

    kafka::ensure_topics(
        &config,
        &[
            topics::REPLICA_DELAY,
            topics::DELAY_WINDOW,
            topics::ALERT,
            topics::ALERT_STATE,
            topics::PROCESSOR_STATE,
            topics::DEAD_LETTER,
        ],
    )
    .await
    .context("creating the processor's topics")?;
    let producer = kafka::producer(&config.kafka, 5).context("creating the Kafka producer")?;

    // State first: what was flushed, which incidents are open.
    health.set_not_ready("reading processor-state and alert-state");
    let flushed = state::load_flushed(&config, config.topic(topics::PROCESSOR_STATE))
        .await
        .context("reading the processor-state topic")?;
    let alert_state = state::load_alerts(&config, config.topic(topics::ALERT_STATE))
        .await
        .context("reading the alert-state topic")?;
    let specs: Vec<Spec> = config
        .processor
        .windows
        .iter()
        .map(|w| Spec::new(w.0))
        .collect();
    let mut windows = Windows::new(specs, config.processor.allowed_lateness.0);
    for f in &flushed {
        windows.restore_flushed(
            &f.cluster,
            &f.replica,
            f.window_us,
            f.window_start_us,
            f.last_seq,
        );
    }
    let engine = AlertEngine::new(rules);
    // Open incidents are taken over partition by partition as they are assigned.
    let mut dormant = Dormant::default();
    dormant.reload(alert_state, &Default::default());
    let restored_firing = dormant.len();

    // Sinks, the state writer, alerts and webhooks.
    let (ack_tx, sink_acks) = mpsc::unbounded_channel();
    let mut sink_handles = build_sinks(&config, &producer, &ack_tx, &metrics)?;
    drop(ack_tx);
    let (statsd_handles, taps): (Vec<_>, Vec<_>) = config
        .sink
        .statsd
        .iter()
        .enumerate()
        .map(|(i, c)| sinks::statsd::spawn(i, c, &statsd_metrics))
        .unzip();
    let (state_ack_tx, state_acks) = mpsc::unbounded_channel();
    let (state_tx, state_task) = state::spawn_state_writer(
        producer.clone(),
        config.topic(topics::PROCESSOR_STATE),
        state_ack_tx,
    );
    let generator_url = format!("http://{}/metrics", config.processor.listen);
    let webhooks = Webhooks::spawn(&config.webhooks, generator_url, metrics.clone())?;
    let alerts = AlertPublisher::spawn(
        producer.clone(),
        config.topic(topics::ALERT),
        config.topic(topics::ALERT_STATE),
        webhooks,
    );

    let source = Source::subscribe(
        &config,
        "processor",
        &config.processor.group,
        topics::REPLICA_DELAY,
        FETCH_WAIT_MS,
        producer.clone(),
        metrics.dead_letter.clone(),
    )?;
    health.set_ready();
    info!(
        topic = %source.topic(),
        group = %config.processor.group,
        windows = ?config.processor.windows,
        sinks = sink_handles.len(),
        statsd_sinks = config.sink.statsd.len(),
        rules = engine.rules().len(),
        restored_windows = flushed.len(),
        restored_firing,
        "Processor started."
    );

    let idle_us =
        i64::try_from(config.processor.idle_close_or_default().as_micros()).unwrap_or(i64::MAX);
    let partitions = partition_count(&source).await;
    let heartbeats = heartbeats::HeartbeatWatch::spawn(&config, shutdown.clone());
    let liveness = liveness::Liveness::spawn(
        source.consumer().clone(),
        source.topic().to_string(),
        shutdown.clone(),
    );
    let mut run_loop = RunLoop {
        config: &config,
        source: &source,
        metrics: metrics.clone(),
        windows,
        tracker: OffsetTracker::default(),
        closed: Vec::new(),
        dispatch: Dispatch {
            engine,
            stale: StaleRules::new(&config.processor.stale),
            sinks: &sink_handles,
            statsd: &statsd_handles,
            state_tx: &state_tx,
            alerts: &alerts,
            metrics,
        },
        backpressure: Backpressure::default(),
        sink_acks,
        state_acks,
        idle_us,
        dormant,
        partitions,
        owned: Default::default(),
        heartbeats,
        next_stale_at: 0,
        next_prune_at: 0,
        next_store_at: 0,
        now_us: millilag_core::clock::now_us(),
        liveness,
        health: health.clone(),
        timings: Timings(taps.into_iter().flatten().collect()),
    };
    run_loop.run(&shutdown).await;
    health.set_not_ready("shutting down");
    run_loop.drain().await;
    drop(run_loop);

    for h in sink_handles.drain(..) {
        let task = h.close();
        task.abort();
    }
    // Best effort, but the last windows and timings are worth a moment.
    for h in statsd_handles {
        let name = h.name.clone();
        if !h.close(Duration::from_secs(2)).await {
            warn!(sink = %name, "statsd sink did not finish sending within 2 s; stopped.");
        }
    }
    drop(state_tx);
    state_task.abort();
    alerts.close(Duration::from_secs(10)).await;
    let _ = server.await;
    info!("Processor stopped.");
    Ok(())
}

fn build_sinks(
    config: &Config,
    producer: &FutureProducer,
    acks: &mpsc::UnboundedSender<u64>,
    metrics: &Metrics,
) -> anyhow::Result<Vec<SinkHandle>> {
    let ctx = SinkContext {
        config,
        producer,
        acks,
        metrics,
    };
    let mut out = Vec::new();
    for (i, c) in config.sink.influxdb.iter().enumerate() {
        let name = format!("influxdb[{i}]");
        let sink = sinks::influx::InfluxSink::new(&format!("sink.{name}"), c)?;
        out.push(ctx.spawn(name, sink));
    }
    for (i, c) in config.sink.graphite.iter().enumerate() {
        let sink = sinks::graphite::GraphiteSink::new(c);
        out.push(ctx.spawn(format!("graphite[{i}]"), sink));
    }
    if config.sink.kafka.enabled {
        let sink =
            sinks::kafka::KafkaSink::new(producer.clone(), config.topic(topics::DELAY_WINDOW));
        out.push(ctx.spawn("kafka".to_string(), sink));
    }
    Ok(out)
}

/// What every sink task is started with.
struct SinkContext<'a> {
    config: &'a Config,
    /// Also carries every sink's refused windows to dead-letter.
    producer: &'a FutureProducer,
    acks: &'a mpsc::UnboundedSender<u64>,
    metrics: &'a Metrics,
}

impl SinkContext<'_> {
    fn spawn<S: sinks::Sink>(&self, name: String, sink: S) -> SinkHandle {
        let rejections = DeadLetterTopic::new(
            self.producer.clone(),
            self.config,
            &name,
            self.metrics.dead_letter.dropped.clone(),
        );
        let metrics = self.metrics.sink(&name);
        // A batch holds at least one window and consumption pauses past max_pending_windows,
        // so this never binds first; it bounds the queue whatever that bookkeeping says.
        let queue = self.config.processor.max_pending_windows;
        sinks::spawn(name, sink, rejections, self.acks.clone(), metrics, queue)
    }
}

/// replica-delay's partition count (0 when the broker does not say; only one processor can
/// then own incidents with certainty: every partition's).
async fn partition_count(source: &Source) -> i32 {
    let consumer = source.consumer().clone();
    let topic = source.topic().to_string();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(5))
            .ok()
            .and_then(|md| md.topics().first().map(|t| t.partitions().len() as i32))
            .unwrap_or(0)
    })
    .await
    .unwrap_or(0)
}
