//! What runs after new events reach the log: the diff module (which may append flags), then the
//! projections (which apply the new events and the flags), then the alert outbox (which queues
//! emails; sending them is `alert::deliver`, run by the daemon and `alerts send`). Callers (ingest, fetch, the daemon)
//! run it after every append, so views and flags are never behind the log for long; a crash in
//! between is caught up by the next run, since both stages resume from their checkpoints.

use crate::alert::{self, AlertError};
use crate::config::Config;
use crate::diff::{self, DiffError, DiffReport, DiffSettings};
use crate::log::EventLog;
use crate::project::{self, ProjectError, ProjectReport};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("diff: {0}")]
    Diff(#[from] DiffError),
    #[error("projections: {0}")]
    Project(#[from] ProjectError),
    #[error("alerts: {0}")]
    Alert(#[from] AlertError),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    pub diff: DiffReport,
    pub project: ProjectReport,
    pub alerts: alert::DeriveReport,
}

/// Brings flags and views up to the log's head.
pub fn derive(log: &mut EventLog, config: &Config) -> Result<DeriveReport, PipelineError> {
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let diff = diff::run(log, &settings)?;
    let project = project::run(log, &config.topics)?;
    let alerts = alert::derive(log, config)?;
    Ok(DeriveReport {
        diff,
        project,
        alerts,
    })
}
