//! Shared by the tests of what millilag says when things break: the pipeline config a new user
//! would write, and collectors of webhook notices and delay-window records.

use crate::common::{next_record, unique, Env};
use millilag_core::clock::now_us;
use millilag_core::events::DelayWindow;
use millilag_core::Config;
use millilag_harness::alertmanager::WebhookReceiver;
use millilag_harness::free_port;
use std::sync::{Arc, Mutex};
use std::time::Duration;
/// Writer, reader and processor on 1 s windows, with the rules a new user would write (lag
/// `max > 300ms`, `missing > 50`, both `for = "0s"`), a json webhook, and the built-in rules.
pub fn pipeline_config(env: &Env, receiver: &WebhookReceiver, reader: &str) -> Config {
    env.config(
        "interval = \"10ms\"",
        reader,
        &format!(
            r#"
[processor]
windows = ["1s"]
allowed_lateness = "200ms"
group = "{group}"
listen = "127.0.0.1:{port}"

[processor.stale]
heartbeats_after = "3s"

[[alert]]
name = "lag"
when = "max > 300ms"
window = "1s"
for = "0s"

[[alert]]
name = "missing"
when = "missing > 50"
window = "1s"
for = "0s"

[[webhook]]
url = "{url}"
format = "json"
"#,
            group = unique("processor"),
            port = free_port(),
            url = receiver.url("/json")
        ),
    )
}

/// A webhook notification: (rule, replica, state, when it arrived).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub rule: String,
    pub replica: String,
    pub state: String,
    pub at_us: i64,
}

/// Every notification in the background, stamped on arrival.
#[derive(Clone, Default)]
pub struct Notices(Arc<Mutex<Vec<Notice>>>);

impl Notices {
    pub fn start(receiver: WebhookReceiver) -> Notices {
        let n = Notices::default();
        let sink = n.clone();
        tokio::spawn(async move {
            while let Some(r) = receiver.next(Duration::from_secs(3600)).await {
                let v = r.json();
                let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                sink.0.lock().unwrap().push(Notice {
                    rule: s("rule"),
                    replica: s("replica"),
                    state: s("state"),
                    at_us: now_us(),
                });
            }
        });
        n
    }

    pub fn all(&self) -> Vec<Notice> {
        self.0.lock().unwrap().clone()
    }

    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notice) -> bool,
    ) -> Notice {
        millilag_harness::wait_for(what, timeout, || async {
            self.all().into_iter().find(|n| pred(n))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; got {:?}", self.all()))
    }
}

/// Every delay-window record in the background, stamped on arrival.
#[derive(Clone, Default)]
pub struct Windows(Arc<Mutex<Vec<(DelayWindow, i64)>>>);

impl Windows {
    pub fn start(env: &Env) -> Windows {
        let w = Windows::default();
        let consumer = env.consumer("delay-window");
        let sink = w.clone();
        tokio::spawn(async move {
            while let Some((d, _)) =
                next_record::<DelayWindow>(&consumer, Duration::from_secs(3600)).await
            {
                sink.0.lock().unwrap().push((d, now_us()));
            }
        });
        w
    }

    pub fn all(&self) -> Vec<(DelayWindow, i64)> {
        self.0.lock().unwrap().clone()
    }

    pub async fn until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[(DelayWindow, i64)]) -> bool,
    ) {
        millilag_harness::wait_for(what, timeout, || async { pred(&self.all()).then_some(()) })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn count_for(all: &[(DelayWindow, i64)], replica: &str, after_us: i64) -> usize {
        all.iter()
            .filter(|(w, _)| w.replica == replica && w.window_start_us >= after_us)
            .count()
    }
}
