//! The processes the benchmark runs and watches: millilag services, pt-heartbeat's updater and
//! monitors (under a pty), and their CPU from /proc.

use anyhow::{Context, Result};
use millilag_core::clock::now_us;
use millilag_harness::process::Guard;
use millilag_harness::{free_port, Cluster};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Password of every benchmark user (one user per client, so server counters tell them apart).
pub const PW: &str = "bench-pw";

pub use millilag_harness::process::cpu_seconds;

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The pids whose parent is `pid` (scanning /proc: /proc/<pid>/task/*/children needs a kernel
/// option that is not everywhere).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|c| {
            std::fs::read_to_string(format!("/proc/{c}/stat"))
                .ok()
                .and_then(|s| {
                    let rest = s.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

pub fn config_toml(
    cluster: &Cluster,
    brokers: &str,
    prefix: &str,
    user: &str,
    reader: &str,
) -> String {
    let url = |port: u16| format!("mysql://{user}:{PW}@127.0.0.1:{port}");
    let replicas: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| format!("\"{}\"", url(r.port)))
        .collect();
    // One consumer group for every reader of the run: a reader started later (the next tool,
    // or a restart) resumes from the offsets the previous one committed on SIGTERM, as a
    // restarted production reader does, instead of from the topic's start.
    format!(
        r#"
[kafka]
brokers = "{brokers}"
topic_prefix = "{prefix}"
partitions = 1
[[cluster]]
name = "bench"
primary = "{primary}"
replicas = [{replicas}]
[writer]
interval = "10ms"
listen = "127.0.0.1:{w}"
[reader]
listen = "127.0.0.1:{r}"
group = "bench-readers"
reader_id = "{user}"
{reader}
[log]
level = "warn"
"#,
        primary = url(cluster.primary.port),
        replicas = replicas.join(", "),
        w = free_port(),
        r = free_port(),
    )
}

pub fn spawn_millilag(
    bin: &Path,
    service: &str,
    config: &str,
    dir: &Path,
    name: &str,
) -> Result<Guard> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config)?;
    let mut cmd = Command::new(bin);
    cmd.arg(service).arg("--config").arg(&path);
    Guard::spawn(name, cmd, &dir.join(format!("{name}.log")))
}

/// pt-heartbeat's settings: `Some((interval, skew))`, or None for its defaults (1 s, 0.5 s).
pub type PtSettings = Option<(&'static str, &'static str)>;

fn pt_flags(settings: PtSettings, update: bool) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "-D".into(),
        "pt".into(),
        "--table".into(),
        "heartbeat".into(),
    ];
    // Both sides in UTC: the monitor then lets the server compute UNIX_TIMESTAMP(ts).
    v.push("--utc".into());
    if let Some((interval, skew)) = settings {
        v.extend(["--interval".into(), interval.into()]);
        // The updater ignores --skew (it uses 0 in --update mode); only the monitor gets it.
        if !update {
            v.extend(["--skew".into(), skew.into()]);
        }
    }
    v
}

/// `pt-heartbeat --update` on the primary.
pub fn spawn_pt_update(port: u16, settings: PtSettings, dir: &Path) -> Result<Guard> {
    let mut cmd = Command::new("pt-heartbeat");
    cmd.args(["--update", "--create-table"])
        .args(pt_flags(settings, true))
        .arg(format!("h=127.0.0.1,P={port},u=pt_update,p={PW}"));
    Guard::spawn("pt-update", cmd, &dir.join("pt-update.log"))
}

/// Lines of a process run under a pty, each stamped with the local clock when the bench's
/// thread read it.
pub type Lines = Arc<Mutex<Vec<(i64, String)>>>;

/// A command run under script(1): a pty makes perl line-buffer its stdout (into a pipe it
/// block-buffers, and --monitor's lines would arrive in 4 KiB bursts).
pub struct PtyProcess {
    script: Child,
    /// The process script(1) runs (`exec` replaces the shell with it): perl, for pt-heartbeat.
    pub inner: u32,
    pub lines: Lines,
}

impl PtyProcess {
    pub fn spawn(shell_cmd: &str, log: &Path) -> Result<PtyProcess> {
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &format!("exec {shell_cmd}"), "/dev/null"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log)?)
            .stdin(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut script = cmd.spawn().context("starting script(1)")?;
        let out = script.stdout.take().context("script stdout")?;
        let lines: Lines = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                // Stamped before taking the lock: the stamp is the arrival, not our bookkeeping.
                let at = now_us();
                sink.lock().unwrap().push((at, line));
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let inner = loop {
            if let Some(&c) = children(script.id()).first() {
                break c;
            }
            if std::time::Instant::now() > deadline {
                anyhow::bail!("script(1) started no child for {shell_cmd}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        Ok(PtyProcess {
            script,
            inner,
            lines,
        })
    }

    pub fn script_pid(&self) -> u32 {
        self.script.id()
    }

    pub fn kill(&mut self) {
        // SAFETY: kill(2) on the child of our own child, which we saw started.
        unsafe {
            libc::kill(self.inner as i32, libc::SIGKILL);
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

impl Drop for PtyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pt-heartbeat --monitor` on a replica, under a pty.
pub fn spawn_pt_monitor(
    port: u16,
    user: &str,
    settings: PtSettings,
    log: &Path,
) -> Result<PtyProcess> {
    let cmd = format!(
        "pt-heartbeat --monitor --master-server-id 1 {} h=127.0.0.1,P={port},u={user},p={PW}",
        pt_flags(settings, false).join(" ")
    );
    PtyProcess::spawn(&cmd, log)
}

/// "0.01s [  0.00s,  0.00s,  0.00s ]" -> 0.01
pub fn parse_pt_line(line: &str) -> Option<f64> {
    line.trim().split('s').next()?.trim().parse().ok()
}

/// The cost of stamping a line when it arrives instead of when perl printed it: perl prints
/// its own clock (Time::HiRes) every 10 ms through the same pty and script(1) path as
/// pt-heartbeat's lines; returns arrival - print, in microseconds, one per line.
pub fn calibrate_pty(secs: f64, dir: &Path) -> Result<Vec<i64>> {
    let n = (secs * 100.0) as usize;
    let cmd = format!(
        "perl -MTime::HiRes=time,sleep -e 'for (1..{n}) {{ printf(\"%.6f\\n\", time); sleep(0.01) }}'"
    );
    let mut p = PtyProcess::spawn(&cmd, &dir.join("pty-calibration.log"))?;
    std::thread::sleep(Duration::from_secs_f64(secs + 0.5));
    p.kill();
    let lines = p.lines.lock().unwrap();
    Ok(lines
        .iter()
        .filter_map(|(at, l)| {
            let printed: f64 = l.trim().parse().ok()?;
            Some(at - (printed * 1e6) as i64)
        })
        .collect())
}
