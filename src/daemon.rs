//! The daemon: a cron schedule in, fetch cycles out, one at a time, until a signal asks it to stop.
//!
//! The cron crate only computes times; this loop sleeps until the next one, runs the cycle to the
//! end (so two never overlap), and computes the next time from when the cycle *finished*, so a
//! cycle that overruns makes the next tick wait instead of piling up. SIGINT/SIGTERM end a sleep
//! at once and end a cycle after its current page, flushed.

use chrono::Utc;

use crate::config::Config;
use crate::fetch::{self, ApiClient, CycleOptions, FetchError};
use crate::log::EventLog;
use crate::shutdown::Shutdown;

pub use crate::schedule::Schedule;

/// How often the daemon looks for alerts to send between fetch cycles.
const ALERT_POLL: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Alert(#[from] crate::alert::AlertError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
}

/// Runs cycles on the schedule until shutdown. A failed cycle is logged (its report, with the
/// watermark unchanged, is stored for `status`) and the daemon waits for the next tick.
pub async fn run(
    log: &mut EventLog,
    client: &ApiClient,
    full_config: &Config,
    schedule: &Schedule,
    shutdown: &Shutdown,
    ops_listener: Option<tokio::net::TcpListener>,
) -> Result<(), DaemonError> {
    let config = &full_config.fetch;
    let metrics = std::sync::Arc::new(crate::ops::Metrics::default());
    let server = ops_listener.map(|listener| {
        let state = std::sync::Arc::new(crate::ops::OpsState {
            log: log.clone(),
            config: full_config.clone(),
            metrics: metrics.clone(),
            schedule: schedule.clone(),
        });
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "ops endpoint listening");
        }
        tokio::spawn(crate::ops::serve(listener, state, shutdown.clone()))
    });
    tracing::info!(schedule = %config.schedule, timezone = %config.timezone, "daemon started");
    let mailer = if full_config.subscriptions.is_empty() {
        None
    } else {
        Some(crate::alert::SmtpMailer::new(&full_config.smtp)?)
    };
    let mut next_cycle = schedule.next_after(Utc::now());
    loop {
        let Some(next) = next_cycle else {
            tracing::warn!("the schedule has no further times; stopping");
            break;
        };
        // Wake at the next cycle, or sooner to send alerts that are due (retries, digests).
        let until_cycle = (next - Utc::now()).to_std().unwrap_or_default();
        let wait = if mailer.is_some() {
            until_cycle.min(ALERT_POLL)
        } else {
            until_cycle
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => break,
        }
        if Utc::now() >= next {
            let options = CycleOptions::default();
            // Flags and views are derived on a second thread while pages arrive; whatever
            // reached the log, even in a failed cycle, is flagged and projected by the end.
            let follower = crate::pipeline::Follower::start(log, full_config);
            let (report, result) = fetch::run_cycle(log, client, config, &options, shutdown).await;
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
        if let Some(mailer) = &mailer {
            let delivered = crate::alert::deliver(log, full_config, mailer, Utc::now());
            if let Ok(report) = &delivered {
                metrics.record_delivery(report);
                if report.sent > 0 {
                    // Record the deliveries in the outbox's view of the log right away.
                    crate::pipeline::derive(log, full_config)?;
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
        }
        if shutdown.is_requested() {
            break;
        }
    }
    log.flush().map_err(FetchError::from)?;
    shutdown.request();
    if let Some(server) = server {
        let _ = server.await;
    }
    tracing::info!("daemon stopped");
    Ok(())
}
