//! The daemon: a cron schedule in, fetch cycles out, one at a time, until a signal asks it to stop.
//!
//! The cron crate only computes times; this loop sleeps until the next one, runs the cycle to the
//! end (so two never overlap), and computes the next time from when the cycle *finished*, so a
//! cycle that overruns makes the next tick wait instead of piling up. SIGINT/SIGTERM end a sleep
//! at once and end a cycle after its current page, flushed.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::fetch::{self, ApiClient, CycleOptions, FetchError};
use crate::log::{ClosableLog, EventLog};
use crate::ops::OpsState;
use crate::shutdown::Shutdown;

pub use crate::schedule::Schedule;

/// How often the daemon wakes between fetch cycles (with alerts, or closing the log): to send
/// alerts that are due, and to close the log again after a command has opened it.
const POLL: std::time::Duration = std::time::Duration::from_secs(15);

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
    let closing = !close_if_idle.is_zero();
    // Digests are made at their slots by a delivery run: one must run at each slot even while
    // the log is closed, or the next answer would be sent at once, alone, instead of at the
    // next slot.
    let digest_schedules: Vec<Schedule> = full_config
        .subscriptions
        .iter()
        .filter(|s| s.mode == "digest")
        .filter_map(|s| Schedule::parse(&s.digest_schedule, &config.timezone).ok())
        .collect();
    let next_digest_after = |t| {
        digest_schedules
            .iter()
            .filter_map(|s| s.next_after(t))
            .min()
    };
    let mut next_digest = next_digest_after(Utc::now());
    let mut next_cycle = schedule.next_after(Utc::now());
    loop {
        let Some(next) = next_cycle else {
            tracing::warn!("the schedule has no further times; stopping");
            break;
        };
        // Wake at the next cycle or digest slot, and every 15 s to send alerts that are due
        // (retries) or to close the log again after a command opened it.
        let poll = mailer.is_some() || closing;
        let wait = wait_until(Utc::now(), next, next_digest, poll);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.requested() => break,
        }
        if Utc::now() >= next {
            next_cycle = schedule.next_after(Utc::now());
            let mut log = match ops.open_log() {
                Ok(log) => log,
                Err(e) => {
                    // Reopening can fail for a moment (sled's lock still held, no file
                    // descriptors left): the next tick tries again, and /readyz says so.
                    tracing::error!(error = %e, "cannot open the log for the cycle");
                    let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    metrics.record_cycle(&fetch::CycleReport {
                        source: fetch::source_id(client, config),
                        started_at: now.clone(),
                        finished_at: now,
                        outcome: format!("failed: {e}"),
                        ..fetch::CycleReport::default()
                    });
                    continue;
                }
            };
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
        // While the log is closed nothing waits in the outbox (it was empty when the log was
        // closed, and only a cycle adds to it) until a digest slot comes.
        let digest_due = next_digest.is_some_and(|t| Utc::now() >= t);
        let mut outbox_empty = true;
        if let (Some(mailer), true) = (&mailer, ops.log.is_open() || digest_due) {
            match ops.open_log() {
                Ok(mut log) => {
                    deliver(&mut log, full_config, mailer, &metrics)?;
                    if closing {
                        outbox_empty =
                            crate::alert::nothing_waiting(&log, full_config).unwrap_or(false);
                    }
                    next_digest = next_digest_after(Utc::now());
                }
                Err(e) => tracing::error!(error = %e, "cannot open the log to send alerts"),
            }
        }
        if shutdown.is_requested() {
            break;
        }
        if closing
            && outbox_empty
            && ops.log.is_open()
            && far_enough(Utc::now(), next_cycle, next_digest, close_if_idle)
        {
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

/// Sends the alerts that are due and records the deliveries.
fn deliver(
    log: &mut EventLog,
    config: &Config,
    mailer: &crate::alert::SmtpMailer,
    metrics: &crate::ops::Metrics,
) -> Result<(), DaemonError> {
    let delivered = crate::alert::deliver(log, config, mailer, Utc::now());
    if let Ok(report) = &delivered {
        metrics.record_delivery(report);
        if report.sent > 0 {
            // Record the deliveries in the outbox's view of the log right away.
            crate::pipeline::derive(log, config)?;
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
    Ok(())
}

/// How long to sleep: until the next cycle or digest slot, and at most [`POLL`] when polling.
fn wait_until(
    now: DateTime<Utc>,
    next_cycle: DateTime<Utc>,
    next_digest: Option<DateTime<Utc>>,
    poll: bool,
) -> std::time::Duration {
    let until = |t: DateTime<Utc>| (t - now).to_std().unwrap_or_default();
    let mut wait = until(next_cycle);
    if let Some(digest) = next_digest {
        wait = wait.min(until(digest));
    }
    if poll {
        wait = wait.min(POLL);
    }
    wait
}

/// Whether the next cycle and the next digest slot are both at least `min` away (an overdue one
/// is not): only then is closing the log worth opening it again.
fn far_enough(
    now: DateTime<Utc>,
    next_cycle: Option<DateTime<Utc>>,
    next_digest: Option<DateTime<Utc>>,
    min: std::time::Duration,
) -> bool {
    let far = |t: Option<DateTime<Utc>>| {
        t.is_none_or(|t| (t - now).to_std().is_ok_and(|until| until >= min))
    };
    far(next_cycle) && far(next_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_loop_wakes_at_the_next_cycle_or_digest_slot_and_polls_when_asked() {
        let now = at("2026-11-30T07:59:00Z");
        let cycle = at("2026-11-30T09:00:00Z");
        let digest = at("2026-11-30T08:00:00Z");
        let secs = |d: std::time::Duration| d.as_secs();
        assert_eq!(secs(wait_until(now, cycle, None, false)), 3660);
        assert_eq!(secs(wait_until(now, cycle, Some(digest), false)), 60);
        assert_eq!(secs(wait_until(now, cycle, Some(digest), true)), 15);
        // Overdue: at once.
        assert_eq!(
            secs(wait_until(now, at("2026-11-30T07:00:00Z"), None, true)),
            0
        );
    }

    #[test]
    fn the_log_is_closed_only_when_the_next_cycle_and_digest_slot_are_far_enough() {
        let now = at("2026-11-30T07:59:00Z");
        let min = std::time::Duration::from_secs(60);
        let cycle = Some(at("2026-11-30T09:00:00Z"));
        assert!(far_enough(now, cycle, None, min));
        assert!(far_enough(now, None, None, min), "no further cycle");
        assert!(far_enough(
            now,
            cycle,
            Some(at("2026-11-30T08:00:00Z")),
            min
        ));
        assert!(!far_enough(
            now,
            cycle,
            Some(at("2026-11-30T07:59:30Z")),
            min
        ));
        assert!(!far_enough(
            now,
            Some(at("2026-11-30T07:59:59Z")),
            None,
            min
        ));
        // An overdue cycle (a slow delivery ran past it) is not far: it runs next.
        assert!(!far_enough(
            now,
            Some(at("2026-11-30T07:58:00Z")),
            None,
            min
        ));
    }
}
