//! `[[alert]]` rules, and their conditions as written in the config: `p99 > 500ms`,
//! `missing > 0`, `status = replica_unreachable`. Parsed at load, so a typo fails at start, not
//! at 3 a.m.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ProcessorConfig;
use crate::duration::HumanDuration;
use crate::events::{DelayWindow, MeasureStatus};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleConfig {
    /// Rule name (the alertname label).
    pub name: String,
    /// Condition on a closed window: `p99 > 500ms`, `max >= 2s`, `missing > 0`,
    /// `status = replica_unreachable`.
    pub when: String,
    /// Which window length the rule reads (one of processor.windows).
    #[serde(default = "default_alert_window")]
    pub window: HumanDuration,
    /// How long the condition must hold before the alert fires.
    #[serde(default, rename = "for")]
    pub for_: HumanDuration,
    /// How long the condition must be false (with hysteresis) before the alert resolves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolve_for: Option<HumanDuration>,
    /// Fraction below the threshold a value must fall to count as recovered (0.1 = 10%), so
    /// a value hovering at the threshold does not flap.
    #[serde(default)]
    pub hysteresis: f64,
    /// Severity label.
    #[serde(default = "default_severity")]
    pub severity: String,
    /// Only this cluster (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Extra labels on the alert.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

fn default_alert_window() -> HumanDuration {
    HumanDuration::from_secs(10)
}
fn default_severity() -> String {
    "warning".into()
}

impl AlertRuleConfig {
    /// A rule reads windows the processor computes, so the processor's part comes in too.
    pub(super) fn validate(&self, i: usize, processor: &ProcessorConfig, p: &mut Vec<String>) {
        let key = format!("alert[{i}] ({})", self.name);
        if let Err(e) = self.when.parse::<AlertCondition>() {
            p.push(format!("{key}.when: {e}"));
        }
        if !processor.windows.contains(&self.window) {
            p.push(format!(
                "{key}.window ({}) is not one of processor.windows ({}); add it there or pick one",
                self.window,
                processor
                    .windows
                    .iter()
                    .map(|w| w.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if !(0.0..1.0).contains(&self.hysteresis) {
            p.push(format!(
                "{key}.hysteresis ({}) must be in [0, 1)",
                self.hysteresis
            ));
        }
    }
}

/// What a condition reads from a closed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertMetric {
    Min,
    P50,
    P90,
    P99,
    Max,
    Count,
    Missing,
    /// Records with this status in the window.
    Status(MeasureStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Gt,
    Ge,
    Lt,
    Le,
}

/// A parsed `when`. Delay thresholds are kept in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertCondition {
    pub metric: AlertMetric,
    pub op: Comparison,
    pub threshold: f64,
}

impl AlertMetric {
    fn is_delay(&self) -> bool {
        matches!(
            self,
            AlertMetric::Min
                | AlertMetric::P50
                | AlertMetric::P90
                | AlertMetric::P99
                | AlertMetric::Max
        )
    }

    /// The window's value for this metric; `None` when a delay quantile has no data (no ok
    /// measurement in the window), which never satisfies a condition.
    pub fn value(&self, w: &DelayWindow) -> Option<f64> {
        let v = match self {
            AlertMetric::Min => w.min_us?,
            AlertMetric::P50 => w.p50_us?,
            AlertMetric::P90 => w.p90_us?,
            AlertMetric::P99 => w.p99_us?,
            AlertMetric::Max => w.max_us?,
            AlertMetric::Count => w.count,
            AlertMetric::Missing => w.missing,
            AlertMetric::Status(s) => match s {
                MeasureStatus::Ok => w.count,
                MeasureStatus::Timeout => w.timeouts,
                MeasureStatus::ReplicaUnreachable => w.unreachable,
                MeasureStatus::ReplicationStopped => w.replication_stopped,
                MeasureStatus::Skipped => w.skipped,
                // Refused by the parser: live-lag samples are not counted in windows.
                MeasureStatus::Pending => return None,
            },
        };
        Some(v as f64)
    }
}

impl AlertCondition {
    /// Does the value meet the condition? With `hysteresis` h > 0, a firing alert counts as
    /// still met until the value has moved past the threshold by the fraction h.
    pub fn holds(&self, value: f64, firing: bool, hysteresis: f64) -> bool {
        let margin = if firing {
            self.threshold.abs() * hysteresis
        } else {
            0.0
        };
        match self.op {
            Comparison::Gt => value > self.threshold - margin,
            Comparison::Ge => value >= self.threshold - margin,
            Comparison::Lt => value < self.threshold + margin,
            Comparison::Le => value <= self.threshold + margin,
        }
    }
}

impl FromStr for AlertCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let hint =
            "write e.g. \"p99 > 500ms\", \"missing > 0\" or \"status = replica_unreachable\"";
        if let Some(rest) = s.strip_prefix("status") {
            let status = rest
                .trim_start()
                .strip_prefix('=')
                .ok_or(format!("{s:?}: expected '=' after status; {hint}"))?
                .trim()
                .trim_matches('"');
            let status = MeasureStatus::ALL
                .into_iter()
                .filter(|m| *m != MeasureStatus::Pending)
                .find(|m| m.as_str() == status)
                .ok_or(format!(
                    "{s:?}: unknown status {status:?}; one of timeout, replica_unreachable, replication_stopped, skipped"
                ))?;
            return Ok(AlertCondition {
                metric: AlertMetric::Status(status),
                op: Comparison::Gt,
                threshold: 0.0,
            });
        }
        let mut parts = s.split_whitespace();
        let (Some(metric), Some(op), Some(value), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("{s:?}: expected <metric> <op> <value>; {hint}"));
        };
        let metric = match metric {
            "min" => AlertMetric::Min,
            "p50" => AlertMetric::P50,
            "p90" => AlertMetric::P90,
            "p99" => AlertMetric::P99,
            "max" => AlertMetric::Max,
            "count" => AlertMetric::Count,
            "missing" => AlertMetric::Missing,
            other => {
                return Err(format!(
                    "{s:?}: unknown metric {other:?}; one of min, p50, p90, p99, max, count, missing, status"
                ))
            }
        };
        let op = match op {
            ">" => Comparison::Gt,
            ">=" => Comparison::Ge,
            "<" => Comparison::Lt,
            "<=" => Comparison::Le,
            other => {
                return Err(format!(
                    "{s:?}: unknown comparison {other:?}; one of > >= < <="
                ))
            }
        };
        let threshold = if metric.is_delay() {
            value
                .parse::<HumanDuration>()
                .map_err(|e| format!("{s:?}: {e}"))?
                .as_micros_i64() as f64
        } else {
            value
                .parse::<f64>()
                .map_err(|_| format!("{s:?}: {value:?} is not a number"))?
        };
        Ok(AlertCondition {
            metric,
            op,
            threshold,
        })
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Comparison::Gt => ">",
            Comparison::Ge => ">=",
            Comparison::Lt => "<",
            Comparison::Le => "<=",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        let c: AlertCondition = "p99 > 500ms".parse().unwrap();
        assert_eq!(
            (c.metric, c.op, c.threshold),
            (AlertMetric::P99, Comparison::Gt, 500_000.0)
        );
        let c: AlertCondition = "missing >= 3".parse().unwrap();
        assert_eq!((c.metric, c.threshold), (AlertMetric::Missing, 3.0));
        let c: AlertCondition = "status = \"replica_unreachable\"".parse().unwrap();
        assert_eq!(
            c.metric,
            AlertMetric::Status(MeasureStatus::ReplicaUnreachable)
        );
    }

    #[test]
    fn rejects_with_a_hint() {
        for bad in [
            "p98 > 1s",
            "p99 > 500",
            "p99 => 1s",
            "status = exploded",
            "p99",
        ] {
            let e = bad.parse::<AlertCondition>().unwrap_err();
            assert!(e.contains(bad.split_whitespace().next().unwrap()), "{e}");
        }
    }

    #[test]
    fn hysteresis_keeps_firing_near_threshold() {
        let c: AlertCondition = "p99 > 100ms".parse().unwrap();
        assert!(!c.holds(95_000.0, false, 0.1));
        assert!(
            c.holds(95_000.0, true, 0.1),
            "within 10% below: still firing"
        );
        assert!(!c.holds(89_000.0, true, 0.1));
    }
}
