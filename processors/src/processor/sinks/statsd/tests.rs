//! The statsd task against a UDP socket standing in for the daemon's listener (the real
//! daemon is in tests/e2e/statsd.rs): what arrives, in which datagrams, and that nothing waits.

use super::*;
use crate::processor::sinks::tests::window;
use millilag_core::config::StatsdProtocol;
use millilag_core::duration::HumanDuration;

fn config(address: String, mtu: usize, timings: bool) -> StatsdSinkConfig {
    StatsdSinkConfig {
        address,
        prefix: "millilag".into(),
        protocol: StatsdProtocol::Statsd,
        mtu,
        timings,
        sample_rate: None,
        timeout: HumanDuration(Duration::from_millis(500)),
    }
}

fn windows(n: usize) -> Arc<[DelayWindow]> {
    (0..n)
        .map(|i| {
            let mut w = window(i as i64 * 1_000_000);
            w.replica = format!("db{i}:3306");
            w
        })
        .collect::<Vec<_>>()
        .into()
}

/// Datagrams received until `lines` lines arrived.
async fn receive(socket: &UdpSocket, lines: usize) -> Vec<String> {
    let mut got = Vec::new();
    let mut n = 0;
    let mut buf = vec![0u8; 65_536];
    while n < lines {
        let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
            .await
            .expect("datagrams within 10 s")
            .unwrap();
        let d = String::from_utf8(buf[..len].to_vec()).unwrap();
        n += d.lines().count();
        got.push(d);
    }
    got
}

#[tokio::test]
async fn windows_and_timings_arrive_whole_in_datagrams_within_the_mtu() {
    let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let metrics = StatsdMetrics::new(&mut Registry::default());
    let (h, tap) = spawn(0, &config(addr, 200, true), &metrics);
    let mut timings = timings::Timings(vec![tap.unwrap()]);

    h.send(&windows(20));
    for seq in 1..=50 {
        let v = crate::processor::input::DelayView {
            cluster: "main",
            replica: "db1:3306",
            seq,
            committed_at_us: 0,
            delay_us: seq * 100,
            status: millilag_core::events::MeasureStatus::Ok,
            upper_bound: false,
            observed_at_us: 0,
        };
        timings.record(&v);
    }
    timings.flush();
    // 20 windows x 6 gauges, then 50 timers.
    let datagrams = receive(&listener, 170).await;
    let lines: Vec<&str> = datagrams.iter().flat_map(|d| d.lines()).collect();
    assert_eq!(lines.len(), 170);
    for d in &datagrams {
        assert!(d.len() <= 200, "{} bytes: {d}", d.len());
    }
    assert_eq!(lines[0], "millilag.main.db0_3306.1s.count:1|g");
    assert_eq!(lines[119], "millilag.main.db19_3306.1s.max_ms:0.001|g");
    assert_eq!(lines[120], "millilag.main.db1_3306.delay:0.1|ms");
    assert_eq!(lines[169], "millilag.main.db1_3306.delay:5|ms");
    assert!(
        datagrams.len() >= 170 * 30 / 200,
        "packed, not one line each"
    );

    drop(timings);
    assert!(
        h.close(Duration::from_secs(5)).await,
        "the task ends once both queues close"
    );
    assert_eq!(metrics.sent("statsd[0]", "windows").get(), 20);
    assert_eq!(metrics.sent("statsd[0]", "timings").get(), 50);
    assert_eq!(
        metrics.sent("statsd[0]", "datagrams").get(),
        datagrams.len() as u64
    );
    let bytes: usize = datagrams.iter().map(|d| d.len()).sum();
    assert_eq!(metrics.sent("statsd[0]", "bytes").get(), bytes as u64);
}

#[tokio::test]
async fn nobody_listening_costs_nothing_the_datagrams_are_sent_and_counted() {
    // A port nothing listens on: the kernel answers with ICMP port unreachable, which an
    // unconnected UDP socket never reports; the sink neither fails nor retries.
    let port = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics = StatsdMetrics::new(&mut Registry::default());
    let (h, _) = spawn(
        0,
        &config(format!("127.0.0.1:{port}"), 1432, false),
        &metrics,
    );
    for _ in 0..10 {
        h.send(&windows(3));
    }
    assert!(h.close(Duration::from_secs(5)).await);
    assert_eq!(metrics.sent("statsd[0]", "windows").get(), 30);
    assert!(metrics.sent("statsd[0]", "datagrams").get() >= 10);
    assert_eq!(
        metrics
            .dropped("statsd[0]", "datagrams", "send_failed")
            .get(),
        0
    );
}

#[tokio::test]
async fn an_unresolvable_address_drops_and_counts() {
    let metrics = StatsdMetrics::new(&mut Registry::default());
    // `.invalid` never resolves (RFC 6761).
    let (h, _) = spawn(
        0,
        &config("statsd.invalid:8125".into(), 1432, false),
        &metrics,
    );
    for _ in 0..5 {
        h.send(&windows(2));
    }
    assert!(h.close(Duration::from_secs(10)).await);
    assert_eq!(
        metrics.dropped("statsd[0]", "windows", "unresolved").get(),
        10
    );
    assert_eq!(metrics.sent("statsd[0]", "windows").get(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_windows_instead_of_waiting() {
    let metrics = StatsdMetrics::new(&mut Registry::default());
    // A task that never reads: the queue (capacity 1) fills at once.
    let (tx, _rx) = mpsc::channel(1);
    let h = StatsdHandle {
        name: "statsd[0]".into(),
        tx,
        dropped: metrics.dropped("statsd[0]", "windows", "queue_full"),
        task: tokio::spawn(std::future::pending()),
    };
    for _ in 0..4 {
        h.send(&windows(5));
    }
    assert_eq!(
        metrics.dropped("statsd[0]", "windows", "queue_full").get(),
        15
    );
    assert!(
        !h.close(Duration::from_millis(10)).await,
        "a stuck task is aborted"
    );
}
