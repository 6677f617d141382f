//! A shutdown request shared between the signal handler and the work it must stop cleanly.
//!
//! Long work checks [`Shutdown::is_requested`] at safe points (between pages); waits (the
//! schedule's sleep, retry backoff) race against [`Shutdown::requested`] so they end at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Clone, Default, Debug)]
pub struct Shutdown {
    flag: Arc<AtomicBool>,
    notify: Arc<Notify>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    pub fn request(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_requested(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Completes once shutdown has been requested (at once if it already was).
    pub async fn requested(&self) {
        loop {
            let notified = self.notify.notified();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }

    /// Requests shutdown on SIGINT or SIGTERM. Call once, inside a tokio runtime.
    pub fn install_signal_handlers(&self) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut terminate = signal(SignalKind::terminate())?;
            let mut interrupt = signal(SignalKind::interrupt())?;
            let this = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "shutting down after the current page"),
                    _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "shutting down after the current page"),
                }
                this.request();
            });
        }
        #[cfg(not(unix))]
        {
            let this = self.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    this.request();
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_on_request_and_late_waiters_return_at_once() {
        let shutdown = Shutdown::new();
        let waiter = {
            let s = shutdown.clone();
            tokio::spawn(async move { s.requested().await })
        };
        tokio::task::yield_now().await;
        shutdown.request();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), shutdown.requested())
            .await
            .unwrap();
        assert!(shutdown.is_requested());
    }
}
