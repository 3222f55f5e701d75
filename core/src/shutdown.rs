//! Shutdown: one signal future (Ctrl-C or SIGTERM) and a cloneable token every task watches;
//! SIGHUP is caught and logged, never the default "terminate without flushing".

use tokio::sync::watch;

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` and systemd send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Catch SIGHUP for the rest of the process's life and log it: its default action would kill
/// the process without flushing Kafka or committing offsets, and a config reload is not
/// supported (restart the service to apply a changed config). Call inside the runtime, before
/// anything that must not be cut short.
pub fn ignore_hangups() {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::warn!("SIGHUP received and ignored: millilag does not reload its config; restart the service to apply a changed config.");
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "Cannot catch SIGHUP; a hangup would stop the service without flushing.")
        }
    }
}

/// "Stop now" for every task: cheap to clone, can be awaited or polled.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The side that triggers a [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

pub fn shutdown_pair() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger { tx }, Shutdown { rx })
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }
}

impl Shutdown {
    /// A token that never fires (tests, one-shot tools).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// A token that fires when `fut` resolves.
    pub fn from_future(fut: impl std::future::Future<Output = ()> + Send + 'static) -> Shutdown {
        let (trigger, token) = shutdown_pair();
        tokio::spawn(async move {
            fut.await;
            trigger.trigger();
        });
        token
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&mut self) {
        let _ = self.rx.wait_for(|v| *v).await;
    }

    /// Owned version for `select!` arms.
    pub async fn triggered(mut self) {
        self.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_every_clone() {
        let (t, s) = shutdown_pair();
        let a = s.clone();
        let h = tokio::spawn(a.triggered());
        assert!(!s.is_triggered());
        t.trigger();
        h.await.unwrap();
        assert!(s.is_triggered());
    }
}
