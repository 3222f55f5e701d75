//! What every service adds to its /metrics besides its own families: `millilag_build_info`
//! and the standard process metrics (`process_cpu_seconds_total`,
//! `process_resident_memory_bytes`, `process_open_fds`, `process_start_time_seconds`, ...),
//! under the names the Prometheus client libraries use, so existing dashboards and alerts on
//! them work unchanged. prometheus-client has no process collector: these are read from
//! /proc/self at each scrape (a few small reads; nothing runs between scrapes).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// The version of this build (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit of this build: `MILLILAG_GIT_COMMIT` at build time, else the repository's
/// HEAD for release builds, else "unknown" (see core/build.rs).
pub const GIT_COMMIT: &str = env!("MILLILAG_GIT_COMMIT");

/// A registry with `millilag_build_info` and the process collector (no prefix: the process
/// metrics keep their standard names).
pub fn registry() -> Registry {
    let mut r = Registry::default();
    r.register(
        "millilag_build",
        "The running build: version and git commit (always 1)",
        Info::new(vec![
            ("version".to_string(), VERSION.to_string()),
            ("git_commit".to_string(), GIT_COMMIT.to_string()),
        ]),
    );
    r.register_collector(Box::new(ProcessCollector));
    r
}

/// Reads /proc/self at each scrape.
#[derive(Debug)]
struct ProcessCollector;

/// One reading of the process, in Prometheus units.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub threads: i64,
    pub start_time_seconds: f64,
    pub virtual_memory_bytes: i64,
    pub resident_memory_bytes: i64,
}

/// Parses /proc/<pid>/stat. `ticks_per_second` is sysconf(_SC_CLK_TCK), `boot_time_seconds`
/// /proc/stat's btime. The command name (field 2) may contain spaces and parentheses, so the
/// fields are counted from its last ')'.
pub fn parse_stat(
    stat: &str,
    ticks_per_second: f64,
    page_size: i64,
    boot_time_seconds: f64,
) -> Option<ProcessStats> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // rest[0] is field 3 (state): field n is rest[n - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { f.get(n - 3)?.parse().ok() };
    Some(ProcessStats {
        cpu_seconds: (field(14)? + field(15)?) / ticks_per_second,
        threads: field(20)? as i64,
        start_time_seconds: boot_time_seconds + field(22)? / ticks_per_second,
        virtual_memory_bytes: field(23)? as i64,
        resident_memory_bytes: field(24)? as i64 * page_size,
    })
}

/// /proc/stat's `btime`: when the machine booted, seconds since the Unix epoch.
pub fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn read_stats() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
    // SAFETY: sysconf only reads configuration values.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    parse_stat(&stat, ticks as f64, page, boot)
}

fn open_fds() -> Option<i64> {
    // The directory handle read_dir holds is one of them, as in the Go client's count.
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

fn max_fds() -> Option<i64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0;
    ok.then(|| i64::try_from(lim.rlim_cur).unwrap_or(i64::MAX))
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // A reading that fails (no /proc) leaves the series out rather than failing the scrape.
        if let Some(s) = read_stats() {
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_memory_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_memory_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            )?;
            gauge(
                &mut encoder,
                "process_threads",
                "Number of OS threads in the process",
                s.threads,
            )?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                n,
            )?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of open file descriptors",
                n,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with spaces and a ')' must not shift the fields.
        let stat = "4242 (mill) lag x) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let s = parse_stat(stat, 100.0, 4096, 1_700_000_000.0).unwrap();
        assert_eq!(
            s,
            ProcessStats {
                cpu_seconds: 3.0,
                threads: 7,
                start_time_seconds: 1_700_000_010.0,
                virtual_memory_bytes: 123_456_789,
                resident_memory_bytes: 2048 * 4096,
            }
        );
        assert_eq!(parse_stat("garbage", 100.0, 4096, 0.0), None);
        assert_eq!(parse_stat("1 (x) S 1 2", 100.0, 4096, 0.0), None);
    }

    #[test]
    fn boot_time_comes_from_btime() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000.0)
        );
        assert_eq!(parse_boot_time("cpu 1\n"), None);
    }

    #[test]
    fn this_process_is_read_with_plausible_values() {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry()).unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
        };
        let now = crate::clock::now_us() as f64 / 1e6;
        let start = value("process_start_time_seconds");
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start}"
        );
        assert!(value("process_resident_memory_bytes") > 1e5);
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_max_fds") >= value("process_open_fds"));
        assert!(value("process_cpu_seconds_total") >= 0.0);
        assert!(value("process_threads") >= 1.0);
        assert!(
            text.contains(&format!(
                "millilag_build_info{{version=\"{VERSION}\",git_commit=\"{GIT_COMMIT}\"}} 1"
            )),
            "{text}"
        );
    }
}
