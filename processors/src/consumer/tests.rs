//! The source against librdkafka's in-process mock broker: what a real consumer group does on
//! a rebalance, with no external service.

use super::*;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use std::time::Duration;

/// Longest wait for anything the group does (joins and rebalances take a heartbeat or two).
const GROUP_WAIT: Duration = Duration::from_secs(30);

struct Group {
    // Kept alive for the test's length: dropping it stops the broker.
    _mock: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    config: Config,
    producer: FutureProducer,
}

impl Group {
    fn start(partitions: i32) -> Group {
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic("t.replica-delay", partitions, 1)
            .expect("topic");
        let toml = format!(
            "[kafka]\nbrokers = \"{}\"\ntopic_prefix = \"t.\"\n",
            mock.bootstrap_servers()
        );
        let config = Config::from_toml_with_env(&toml, "test", Vec::new()).expect("config");
        let producer = kafka::producer(&config.kafka, 0).expect("producer");
        Group {
            _mock: mock,
            config,
            producer,
        }
    }

    fn member(&self) -> Source {
        Source::subscribe(
            &self.config,
            "test",
            "group",
            "replica-delay",
            10,
            self.producer.clone(),
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
