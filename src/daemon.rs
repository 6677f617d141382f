//! The daemon: a cron schedule in, fetch cycles out, one at a time, until a signal asks it to stop.
//!
//! The cron crate only computes times; this loop sleeps until the next one, runs the cycle to the
//! end (so two never overlap), and computes the next time from when the cycle *finished*, so a
//! cycle that overruns makes the next tick wait instead of piling up. SIGINT/SIGTERM end a sleep
//! at once and end a cycle after its current page, flushed.

use chrono::Utc;

use crate::config::Config;
use crate::fetch::{self, ApiClient, CycleOptions, FetchError};
use crate::log::{ClosableLog, EventLog};
use crate::ops::OpsState;
use crate::shutdown::Shutdown;

pub use crate::schedule::Schedule;

/// How often the daemon wakes between fetch cycles while the log is open: to send alerts that
/// are due, and to close the log again after a query has opened it.
const WAKE_WHILE_OPEN: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Alert(#[from] crate::alert::AlertError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Ops(#[from] crate::ops::OpsError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// Runs cycles on the schedule until shutdown. A failed cycle is logged (its report, with the
/// watermark unchanged, is stored for `status`) and the daemon waits for the next tick. Between
/// cycles at least `store.close_if_idle_secs` apart the log is closed (see [`ClosableLog`]),
/// then `release_memory` is called: the allocator is the binary's choice, and so is how to
/// hand freed memory back to the OS.
pub async fn run(
    log: EventLog,
    client: &ApiClient,
    full_config: &Config,
    schedule: &Schedule,
    shutdown: &Shutdown,
    ops_listener: Option<tokio::net::TcpListener>,
    release_memory: fn(),
) -> Result<(), DaemonError> {
    let config = &full_config.fetch;
    let metrics = std::sync::Arc::new(crate::ops::Metrics::default());
    let ops = std::sync::Arc::new(OpsState::new(
        std::sync::Arc::new(ClosableLog::new(log)),
        full_config.clone(),
        metrics.clone(),
        schedule.clone(),
    ));
    let server = ops_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "ops endpoint listening");
        }
        tokio::spawn(crate::ops::serve(listener, ops.clone(), shutdown.clone()))
    });
    tracing::info!(schedule = %config.schedule, timezone = %config.timezone, "daemon started");
    let mailer = if full_config.subscriptions.is_empty() {
        None
    } else {
        Some(crate::alert::SmtpMailer::new(&full_config.smtp)?)
    };
    let close_if_idle = std::time::Duration::from_secs(full_config.store.close_if_idle_secs);
    let mut next_cycle = schedule.next_after(Utc::now());
    loop {
        let Some(next) = next_cycle else {
            tracing::warn!("the schedule has no further times; stopping");
            break;
        };
        // Wake at the next cycle, or sooner to send alerts that are due (retries, digests) or
        // to close the log once a query has opened it again.
        let until_cycle = (next - Utc::now()).to_std().unwrap_or_default();
        let wait = if ops.log.is_open() && (mailer.is_some() || !close_if_idle.is_zero()) {
            until_cycle.min(WAKE_WHILE_OPEN)
        } else {
            until_cycle
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => break,
        }
        if Utc::now() >= next {
            let mut log = ops.open_log()?;
            let options = CycleOptions::default();
            // Flags and views are derived on a second thread while pages arrive; whatever
            // reached the log, even in a failed cycle, is flagged and projected by the end.
            let follower = crate::pipeline::Follower::start(&mut log, full_config);
            let (report, result) =
                fetch::run_cycle(&mut log, client, config, &options, shutdown).await;
            follower.finish()?;
            // Counted once its events are in the views, so a cycle seen in /metrics is queryable.
            metrics.record_cycle(&report);
            match result {
                Ok(()) => {}
                Err(FetchError::Interrupted) => break,
                // A lost log is not something the next tick can fix.
                Err(FetchError::Log(e)) => return Err(FetchError::Log(e).into()),
                Err(_) => {}
            }
            // Computed from when the cycle ended: an overrun makes the next tick wait.
            next_cycle = schedule.next_after(Utc::now());
        }
        // While the log is closed nothing waits in the outbox: it was empty when the log was
        // closed, and only a cycle adds to it.
        let mut outbox_empty = true;
        if let (Some(mailer), true) = (&mailer, ops.log.is_open()) {
            let mut log = ops.open_log()?;
            let delivered = crate::alert::deliver(&mut log, full_config, mailer, Utc::now());
            if let Ok(report) = &delivered {
                metrics.record_delivery(report);
                if report.sent > 0 {
                    // Record the deliveries in the outbox's view of the log right away.
                    crate::pipeline::derive(&mut log, full_config)?;
                }
            }
            match delivered {
                Ok(report) if report.sent + report.failed > 0 => tracing::info!(
                    sent = report.sent,
                    failed = report.failed,
                    waiting = report.waiting,
                    "alerts"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "alert delivery failed"),
            }
            outbox_empty = crate::alert::nothing_waiting(&log).unwrap_or(false);
        }
        if shutdown.is_requested() {
            break;
        }
        let idle = next_cycle
            .and_then(|next| (next - Utc::now()).to_std().ok())
            .is_none_or(|until| until >= close_if_idle);
        if !close_if_idle.is_zero() && idle && outbox_empty && ops.log.is_open() {
            match ops.close_log() {
                Ok(true) => {
                    release_memory();
                    tracing::debug!("log closed until the next cycle");
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot close the log; it stays open"),
            }
        }
    }
    if ops.log.is_open() {
        ops.open_log()?.flush().map_err(FetchError::from)?;
    }
    shutdown.request();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("daemon stopped");
    Ok(())
}
