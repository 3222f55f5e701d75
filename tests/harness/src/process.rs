//! Child processes that cannot outlive their owner.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A spawned service. Drop sends SIGKILL to its PID and reaps it. The child also gets
/// PR_SET_PDEATHSIG, so it dies with the thread that started it even if the test panics in a
/// way that skips destructors (e.g. an abort).
pub struct Guard {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Guard {
    /// Start `cmd` with stdout and stderr going to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Guard> {
        use anyhow::Context;
        use std::os::unix::process::CommandExt;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Guard {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Still running?
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last lines of the service's log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Send a signal (e.g. SIGTERM for a clean-shutdown test) without waiting.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: plain kill(2) on our own child's PID.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Wait for the process to exit (after a signal); returns its exit status.
    pub fn wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.wait().ok())
    }

    /// SIGKILL and reap now.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// User + system CPU seconds of process `pid`, from /proc/<pid>/stat (0 once it is gone).
/// For benchmarks that charge each process its own CPU.
pub fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_user_system(pid);
    user + system
}

/// CPU seconds process `pid` has used so far in user and in kernel mode, from /proc/<pid>/stat
/// ((0, 0) once it is gone). On loopback the kernel part includes the receiving side's network
/// stack, which runs in the sender's time.
pub fn cpu_user_system(pid: u32) -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> f64 { f.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // SAFETY: sysconf has no preconditions.
    let hz = (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0);
    (ticks(11) / hz, ticks(12) / hz)
}

/// Resident memory of process `pid` in MiB, from /proc/<pid>/status (0 once it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}
