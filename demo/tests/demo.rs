//! The README's demo command (`scripts/demo` runs this binary): live delays in the terminal, and
//! Ctrl-C leaves nothing behind. Beside the demo rather than in tests/e2e/: cargo builds a
//! package's binary, and names it in `CARGO_BIN_EXE_*`, only for that package's own tests.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_millilag-demo");

/// The demo must not outlive a failed test (it would keep its services running).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_shows_a_stalled_replica_lagging_and_ctrl_c_stops_everything() {
    let mut child = KillOnDrop(
        Command::new(BIN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut ports = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    // Until the stall longer than the reader's timeout is over: replica1's windows show the
    // stalls while replica2 stays healthy, and the lag alert fires while the long stall lasts.
    let mut stalled = false;
    let mut lagging = false;
    let mut replica2_ok = false;
    let mut in_long_stall = false;
    let mut fired_during_long_stall = false;
    let mut live_lag_shown = false;
    let mut long_stall_over = false;
    while !(stalled && lagging && replica2_ok && long_stall_over) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("demo output so far:\n{}", lines.join("\n")));
        if let Some(port) = line
            .split_whitespace()
            .find_map(|w| w.split_once("127.0.0.1:").map(|(_, p)| p))
            .and_then(|p| p.split('/').next())
            .and_then(|p| p.parse::<u16>().ok())
        {
            ports.push(port);
        }
        assert!(
            stalled || !line.contains("FIRING"),
            "no alert before any stall (a reader starting is not lag): {line}\n{}",
            lines.join("\n")
        );
        stalled |= line.contains("stalling replica1");
        lagging |= stalled && line.contains("replica1") && line.ends_with("LAGGING");
        replica2_ok |= stalled && line.contains("replica2") && line.ends_with(" ok");
        if line.contains("stalling replica1's SQL thread for 5000 ms") {
            in_long_stall = true;
        }
        if in_long_stall {
            fired_during_long_stall |= line.contains("FIRING on replica1");
            live_lag_shown |= line.contains("replica1 live lag");
            if line.contains("runs again") {
                in_long_stall = false;
                long_stall_over = true;
                assert!(
                    fired_during_long_stall && live_lag_shown,
                    "the lag alert and the live lag show while the stall lasts:\n{}",
                    lines.join("\n")
                );
            }
        }
        lines.push(line);
    }
    assert!(
        lines.iter().any(|l| l.contains("/vmui")),
        "says where the graphs are"
    );
    assert!(
        ports.len() >= 5,
        "primary, 2 replicas, broker, VictoriaMetrics: {ports:?}"
    );

    // Ctrl-C.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.0.id() as i32, libc::SIGINT);
    }
    let status = child.0.wait().unwrap();
    assert!(status.success(), "clean exit on Ctrl-C: {status:?}");
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open after the demo stopped"
        );
    }
}
