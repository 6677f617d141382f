//! What runs after new events reach the log: the diff module (which may append flags), the
//! projections and the alert outbox (which queues emails; sending them is `alert::deliver`, run
//! by the daemon and `alerts send`). `derive` runs the diff module on its own thread beside the
//! views and the outbox, then lets those apply the flags; `Follower` keeps the views and the
//! outbox up with the log while a fetch or an ingest appends. Each stage resumes from its own
//! checkpoint, so a crash anywhere is caught up by the next run.

use crate::alert::{self, AlertError};
use crate::config::Config;
use crate::diff::{self, DiffError, DiffReport, DiffSettings};
use crate::log::{EventLog, LogError};
use crate::project::{self, ProjectError, ProjectReport};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("diff: {0}")]
    Diff(#[from] DiffError),
    #[error("projections: {0}")]
    Project(#[from] ProjectError),
    #[error("alerts: {0}")]
    Alert(#[from] AlertError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the derive thread stopped: {0}")]
    Worker(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    pub diff: DiffReport,
    pub project: ProjectReport,
    pub alerts: alert::DeriveReport,
}

impl DeriveReport {
    /// Adds a later run's figures to these.
    fn absorb(&mut self, later: DeriveReport) {
        self.diff.events_read += later.diff.events_read;
        self.diff.flags_raised += later.diff.flags_raised;
        self.diff.checkpoint = self.diff.checkpoint.max(later.diff.checkpoint);
        self.project.events_applied += later.project.events_applied;
        self.project.checkpoint = self.project.checkpoint.max(later.project.checkpoint);
        self.alerts.events_read += later.alerts.events_read;
        self.alerts.queued += later.alerts.queued;
        self.alerts.started += later.alerts.started;
    }
}

/// Keeps the views and the outbox up with the log on a thread of its own while the caller
/// appends (a fetch cycle, an ingest), so that the two use both cores; [`Follower::finish`]
/// then runs the diff module and derives what is left. The diff module is not run alongside
/// because it appends flags: run after the appends, it puts them after the answers, so the same
/// input always gives the same log, sequence numbers included, however the threads were timed.
/// The consumers and their checkpoints are [`derive`]'s, so a crash at any point leaves the
/// state it would leave there.
pub struct Follower {
    stop: Option<std::sync::mpsc::Sender<()>>,
    worker: Option<std::thread::JoinHandle<Result<DeriveReport, PipelineError>>>,
    /// Used when the thread could not be started: everything is derived at the end instead.
    fallback: Option<(EventLog, Config)>,
}

/// How often the derive thread looks for new events when nothing wakes it.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Follower {
    pub fn start(log: &EventLog, config: &Config) -> Follower {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let mut thread_log = log.clone();
        let thread_config = config.clone();
        let spawned = std::thread::Builder::new()
            .name("derive".into())
            .spawn(move || {
                let mut total = DeriveReport::default();
                loop {
                    let last = !matches!(
                        stopped.recv_timeout(FOLLOW_INTERVAL),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    );
                    if last {
                        total.absorb(derive(&mut thread_log, &thread_config)?);
                        return Ok(total);
                    }
                    total.absorb(derive_views(&thread_log, &thread_config, false)?);
                }
            });
        match spawned {
            Ok(worker) => Follower {
                stop: Some(stop),
                worker: Some(worker),
                fallback: None,
            },
            Err(e) => {
                tracing::warn!(error = %e, "no derive thread; deriving after the append instead");
                Follower {
                    stop: None,
                    worker: None,
                    fallback: Some((log.clone(), config.clone())),
                }
            }
        }
    }

    /// Stops following, derives up to the head, and returns what all runs did.
    pub fn finish(mut self) -> Result<DeriveReport, PipelineError> {
        if let Some((mut log, config)) = self.fallback.take() {
            return derive(&mut log, &config);
        }
        drop(self.stop.take());
        match self.worker.take() {
            Some(worker) => worker
                .join()
                .map_err(|_| PipelineError::Worker("it panicked".into()))?,
            None => Ok(DeriveReport::default()),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Dropped without `finish` (an error path): stop the thread and wait for it, so that it
        // never outlives the caller's use of the data dir.
        drop(self.stop.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Brings the views and the outbox (not the flags) up to the log's head: the part of
/// [`derive`] that never appends to the log. `finish` also records the start of new
/// subscriptions (a write even when no event is new).
fn derive_views(
    log: &EventLog,
    config: &Config,
    finish: bool,
) -> Result<DeriveReport, PipelineError> {
    let mut project = project::ProjectConsumer::open(log, &config.topics)?;
    let mut alerts = alert::AlertConsumer::open(log, config)?;
    loop {
        let head = log.head()?;
        let from = project.checkpoint().min(alerts.checkpoint()) + 1;
        if from > head {
            break;
        }
        log.for_each_batch(from, head, BATCH, |batch| -> Result<(), PipelineError> {
            project.apply(&batch)?;
            alerts.apply(log, &batch)?;
            Ok(())
        })?;
    }
    let alerts = if finish {
        alerts.finish()?
    } else {
        alerts.report()
    };
    Ok(DeriveReport {
        diff: diff::DiffReport::default(),
        project: project.finish(),
        alerts,
    })
}

/// Events read from the log per batch.
const BATCH: usize = 1000;

/// Brings flags, views and the outbox up to the log's head.
///
/// The diff module runs on a thread of its own while the views and the outbox follow the log
/// on this one; then they apply the flags it appended. Each consumer keeps its own checkpoint,
/// so a crash anywhere leaves each to resume where it stopped. Only the diff module appends, so
/// the log it leaves is the same however the threads were timed, and the views, replayed in log
/// order, are what `rebuild` gives.
pub fn derive(log: &mut EventLog, config: &Config) -> Result<DeriveReport, PipelineError> {
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let diff_log = log.clone();
    let (diff, views) = std::thread::scope(|scope| {
        let diff_thread = std::thread::Builder::new()
            .name("diff".into())
            .spawn_scoped(scope, || {
                let mut diff_log = diff_log;
                diff::run(&mut diff_log, &settings)
            });
        match diff_thread {
            Ok(thread) => {
                let views = derive_views(log, config, false);
                let diff = thread
                    .join()
                    .map_err(|_| PipelineError::Worker("the diff thread panicked".into()))
                    .and_then(|d| d.map_err(PipelineError::from));
                (diff, views)
            }
            // No thread to be had: one after the other.
            Err(_) => (
                diff::run(&mut log.clone(), &settings).map_err(PipelineError::from),
                Ok(DeriveReport::default()),
            ),
        }
    });
    let mut report = views?;
    report.diff = diff?;
    // The flags the diff module appended, and anything that came meanwhile.
    report.absorb(derive_views(log, config, true)?);
    let wrote =
        report.project.events_applied + report.alerts.events_read + report.alerts.started > 0;
    // sled rewrites the tail of its current segment on every flush, even with nothing new: an
    // idle run must not flush. (The diff module flushes its own writes.)
    if wrote {
        log.flush()?;
    }
    Ok(report)
}

/// `answerfeed rebuild`: flags first (the views include them), then the views dropped and
/// replayed, then the other consumers brought up to date. The views' incremental path is not
/// run first, so damaged views are replaced rather than read. Returns the views' digest before
/// and after.
pub fn rebuild_views(
    log: &mut EventLog,
    config: &Config,
) -> Result<(String, String, ProjectReport), PipelineError> {
    diff::run(log, &DiffSettings::new(&config.diff, &config.trackers))?;
    let rebuilt = project::rebuild(log, &config.topics)?;
    derive(log, config)?;
    Ok(rebuilt)
}
