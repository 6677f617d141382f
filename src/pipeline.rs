//! What runs after new events reach the log: the diff module (which may append flags), then the
//! projections (which apply the new events and the flags), then the alert outbox (which queues
//! emails; sending them is `alert::deliver`, run by the daemon and `alerts send`). Callers (ingest, fetch, the daemon)
//! run it after every append, so views and flags are never behind the log for long; a crash in
//! between is caught up by the next run, since both stages resume from their checkpoints.

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
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    pub diff: DiffReport,
    pub project: ProjectReport,
    pub alerts: alert::DeriveReport,
}

/// Events read from the log per pass: each batch is read and decoded once, then handed to the
/// diff module, the projections and the outbox in turn.
const BATCH: usize = 1000;

/// Brings flags and views up to the log's head.
///
/// The three consumers keep their own checkpoints (a crash can leave them at different events),
/// so each batch starts at the earliest of them and each consumer skips what it has already
/// applied. Flags the diff module appends land after the current batch and are read by a later
/// pass, in log order, exactly as `rebuild` replays them.
pub fn derive(log: &mut EventLog, config: &Config) -> Result<DeriveReport, PipelineError> {
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let mut diff = diff::DiffConsumer::open(log, &settings)?;
    let mut project = project::ProjectConsumer::open(log, &config.topics)?;
    let mut alerts = alert::AlertConsumer::open(log, config)?;
    loop {
        let head = log.head()?;
        let from = diff
            .checkpoint()
            .min(project.checkpoint())
            .min(alerts.checkpoint())
            + 1;
        if from > head {
            break;
        }
        let batch = log.read_batch(from, head, BATCH)?;
        if batch.is_empty() {
            break;
        }
        diff.apply(log, &batch)?;
        project.apply(&batch)?;
        alerts.apply(log, &batch)?;
    }
    let report = DeriveReport {
        diff: diff.finish(),
        project: project.finish(),
        alerts: alerts.finish()?,
    };
    log.flush()?;
    Ok(report)
}
