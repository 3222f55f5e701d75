//! The source against librdkafka's in-process mock broker, with no external service: what a
//! real consumer group does on a rebalance, and dead letters the broker refuses.

use super::*;
use millilag_core::events::{DeadLetter, Record};
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use std::time::Duration;

/// Longest wait for anything the group does (joins and rebalances take a heartbeat or two).
const GROUP_WAIT: Duration = Duration::from_secs(30);

struct Group {
    // Dropping it stops the broker.
    mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    config: Config,
    producer: FutureProducer,
}

impl Group {
    fn start(partitions: i32) -> Group {
        Self::with_properties(partitions, "")
    }

    /// `properties`: lines for `[kafka.properties]`, the services' librdkafka settings.
    fn with_properties(partitions: i32, properties: &str) -> Group {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t.replica-delay", partitions, 1)
            .expect("topic");
        mock.create_topic("t.dead-letter", 1, 1).expect("topic");
        let toml = format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"t.\"\n\n[kafka.properties]\n{properties}\n",
            mock.bootstrap_servers()
        );
        let config = Config::from_toml_with_env(&toml, "test", Vec::new()).expect("config");
        // The test's own producer, with librdkafka's default limits.
        let producer = ClientConfig::new()
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("linger.ms", "0")
            .create()
            .expect("producer");
        Group {
            mock,
            config,
            producer,
        }
    }

    fn member(&self) -> Source {
        self.member_counting(DeadLetterMetrics::default())
    }

    fn member_counting(&self, metrics: DeadLetterMetrics) -> Source {
        let producer = kafka::producer(&self.config.kafka, 0).expect("producer");
        Source::subscribe(
            &self.config,
            "test",
            "group",
            "replica-delay",
            10,
            producer,
            metrics,
        )
        .expect("subscribe")
    }

    async fn send(&self, partition: i32, payload: &str) {
        self.producer
            .send(
                FutureRecord::to("t.replica-delay")
                    .partition(partition)
                    .key("k")
                    .payload(payload),
                Duration::from_secs(5),
            )
            .await
            .expect("produced");
    }
}

/// The next record's (partition, payload) within [`GROUP_WAIT`].
async fn next(source: &Source) -> (i32, String) {
    let m = tokio::time::timeout(GROUP_WAIT, source.recv())
        .await
        .expect("a record in time")
        .expect("no consumer error");
    let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
    (m.partition(), payload)
}

/// Poll `source` (rebalances are served by its polls) until its reports contain an assignment
/// that satisfies `done`; a record arriving meanwhile fails the test: it is paused.
async fn paused_until_assigned(source: &Source, done: impl Fn(&[i32]) -> bool) {
    let deadline = tokio::time::Instant::now() + GROUP_WAIT;
    loop {
        tokio::select! {
            m = source.recv() => {
                let m = m.expect("no consumer error");
                panic!("partition {} delivered offset {} while paused", m.partition(), m.offset());
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        let assigned = source.rebalanced().into_iter().any(|c| match c {
            Change::Assigned { partitions, .. } => done(&partitions),
            Change::Revoked(_) => false,
        });
        if assigned {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance within {GROUP_WAIT:?}"
        );
    }
}

/// Poll `a` and `b` until the group gave each one partition. Their records are skipped.
async fn split(a: &Source, b: &Source) -> (i32, i32) {
    let deadline = tokio::time::Instant::now() + GROUP_WAIT;
    loop {
        tokio::select! {
            _ = a.recv() => {}
            _ = b.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        a.rebalanced();
        b.rebalanced();
        let owned = |s: &Source| {
            s.state()
                .assignment
                .owned()
                .iter()
                .copied()
                .collect::<Vec<_>>()
        };
        if let ([pa], [pb]) = (&owned(a)[..], &owned(b)[..]) {
            return (*pa, *pb);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no split within {GROUP_WAIT:?}"
        );
    }
}

/// Close a member in the background (closing blocks while it leaves the group).
async fn leave(member: Source) {
    tokio::task::spawn_blocking(move || drop(member))
        .await
        .expect("member closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_assigned_while_paused_stay_paused_until_resumed() {
    let group = Group::start(2);
    let a = group.member();
    let b = group.member();
    let (_, pb) = split(&a, &b).await;

    // a pauses; b leaves and a is assigned b's partition, which it never paused itself.
    a.set_paused(true).expect("paused");
    group.send(0, "x").await;
    group.send(1, "x").await;
    leave(b).await;
    paused_until_assigned(&a, |ps| ps.contains(&pb)).await;
    // Nothing arrives for a moment (unpaused, the records waiting there come at once).
    tokio::select! {
        m = a.recv() => panic!("a record while paused: {:?}", m.map(|m| (m.partition(), m.offset()))),
        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
    }

    // Another member takes a partition away while a is paused, a resumes, the member leaves:
    // the partition comes back to a resumed, though a had paused it before losing it.
    let c = group.member();
    let (_, pc) = split(&a, &c).await;
    a.set_paused(false).expect("resumed");
    assert!(!a.paused());
    leave(c).await;
    group.send(pc, "back").await;
    let deadline = tokio::time::Instant::now() + GROUP_WAIT;
    loop {
        let (p, payload) = next(&a).await;
        if (p, payload.as_str()) == (pc, "back") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partition {pc} never delivered after it came back"
        );
    }
}

/// Consume the next record of `source` and hand it to [`Source::decode`] as undecodable.
async fn poison(source: &Source, shutdown: &Shutdown) -> Decoded<()> {
    let m = tokio::time::timeout(GROUP_WAIT, source.recv())
        .await
        .expect("a record in time")
        .expect("no consumer error");
    let decode = source.decode(&m, |_| Err::<(), _>("not avro"), shutdown);
    tokio::time::timeout(GROUP_WAIT, decode)
        .await
        .expect("the dead letter written or given up in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_too_large_for_the_producer_lands_truncated() {
    let group = Group::with_properties(1, "\"message.max.bytes\" = \"20000\"");
    let metrics = DeadLetterMetrics::default();
    let source = group.member_counting(metrics.clone());
    let big: Vec<u8> = (0..50_000).map(|i| (i % 251) as u8).collect();
    group
        .producer
        .send(
            FutureRecord::to("t.replica-delay").key("k").payload(&big),
            Duration::from_secs(5),
        )
        .await
        .expect("produced");
    let outcome = poison(&source, &Shutdown::never()).await;
    assert!(matches!(outcome, Decoded::Poison), "{outcome:?}");
    assert_eq!(metrics.truncated.get(), 1);

    let reader = kafka::consumer(&group.config.kafka, "verify", 10).expect("consumer");
    reader.subscribe(&["t.dead-letter"]).expect("subscribe");
    let m = tokio::time::timeout(GROUP_WAIT, reader.recv())
        .await
        .expect("a dead letter in time")
        .expect("no consumer error");
    assert!(m.payload_len() <= 20_000, "{} bytes", m.payload_len());
    let letter = DeadLetter::decode(m.payload().expect("payload")).expect("decodes");
    let kept = letter.payload.expect("payload kept").into_vec();
    assert!(kept.len() > 10_000, "most of it kept: {}", kept.len());
    assert_eq!(kept[..], big[..kept.len()], "a prefix of the record");
    assert_eq!(
        (letter.topic.as_str(), letter.partition, letter.offset),
        ("t.replica-delay", 0, 0)
    );
    assert!(
        letter.reason.starts_with("not avro")
            && letter
                .reason
                .contains(&format!("payload truncated from 50000 to {}", kept.len())),
        "{}",
        letter.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_topic_that_refuses_writes_is_given_up_and_counted() {
    let group = Group::start(1);
    let metrics = DeadLetterMetrics::default();
    let source = group.member_counting(metrics.clone());
    group.send(0, "garbage").await;
    // Every produce from now on is refused: not allowed to write the topic.
    group.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 100],
    );
    let started = std::time::Instant::now();
    let outcome = poison(&source, &Shutdown::never()).await;
    assert!(matches!(outcome, Decoded::Dropped), "{outcome:?}");
    let unauthorized = vec![("reason", "unauthorized".to_string())];
    assert_eq!(metrics.dropped.get_or_create(&unauthorized).get(), 1);
    // Five refusals, 0.1 + 0.2 + 0.4 + 0.8 s apart (with jitter).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_interrupts_a_dead_letter_the_broker_does_not_answer() {
    let group = Group::start(1);
    let source = group.member();
    group.send(0, "garbage").await;
    // Produce requests time out from now on: librdkafka keeps retrying the letter itself.
    group.mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 1000],
    );
    let m = tokio::time::timeout(GROUP_WAIT, source.recv())
        .await
        .expect("a record in time")
        .expect("no consumer error");
    let (trigger, shutdown) = millilag_core::shutdown::shutdown_pair();
    let stop = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        trigger.trigger();
        std::time::Instant::now()
    };
    let decode = tokio::time::timeout(
        GROUP_WAIT,
        source.decode(&m, |_| Err::<(), _>("not avro"), &shutdown),
    );
    let (outcome, triggered) = tokio::join!(decode, stop);
    let outcome = outcome.expect("interrupted in time");
    assert!(matches!(outcome, Decoded::Interrupted), "{outcome:?}");
    assert!(
        triggered.elapsed() < Duration::from_millis(500),
        "stopped {:?} after shutdown",
        triggered.elapsed()
    );
}
