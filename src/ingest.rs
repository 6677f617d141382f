//! Local ingest: files in, parsed by the right parser, appended to the log; a summary out.
//!
//! This is the file-based source beside the fetcher: it reads bytes, hands them to `parse`, turns
//! every parse outcome (records and quarantined input alike) into an observation, and appends them
//! in batches. Records are appended oldest first, so the log's order follows the feed's time order
//! even though dumps list newest first.

use std::path::{Path, PathBuf};

use crate::event::{Observation, Payload, Source};
use crate::log::{Appended, EventLog, LogError};
use crate::parse::{self, Outcome, ParsedItem};
use crate::record::FeedOrder;

/// Observations appended per atomic, flushed batch: big enough to amortise the flush, small enough
/// to bound memory on a large file.
pub const BATCH_SIZE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The plain-text dump format.
    Text,
    /// Decide from the content.
    Auto,
}

#[derive(Debug, Clone, Copy)]
pub struct IngestOptions {
    pub format: Format,
    pub order: FeedOrder,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            format: Format::Auto,
            order: FeedOrder::NewestFirst,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: cannot tell its format ({why}); pass --format text to read it as a text dump"
    )]
    UnknownFormat { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Log {
        path: PathBuf,
        #[source]
        source: LogError,
    },
}

/// One record that went to quarantine, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineNote {
    pub index: u32,
    pub line: u32,
    pub reason: String,
    /// False when the same bytes were quarantined before (nothing new appended).
    pub new: bool,
}

/// What ingesting one file did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileSummary {
    pub source: String,
    /// Records in the file, parsed or not.
    pub records: usize,
    pub new_answers: usize,
    pub revisions: usize,
    /// Records already in the log with the same content: nothing appended.
    pub known: usize,
    /// New quarantine events (the same bad bytes are quarantined once).
    pub quarantined: usize,
    pub quarantine_notes: Vec<QuarantineNote>,
    /// Names in force columns that are not a force we know, kept as written in the records.
    pub unknown_forces: Vec<String>,
    /// Sequence numbers of the events appended, in order.
    pub appended_seqs: Vec<u64>,
}

impl FileSummary {
    pub fn appended(&self) -> usize {
        self.new_answers + self.revisions + self.quarantined
    }
}

/// Reads and ingests one file.
pub fn ingest_file(
    log: &mut EventLog,
    path: &Path,
    options: IngestOptions,
) -> Result<FileSummary, IngestError> {
    let bytes = std::fs::read(path).map_err(|source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if options.format == Format::Auto {
        detect_format(&bytes).map_err(|why| IngestError::UnknownFormat {
            path: path.to_path_buf(),
            why,
        })?;
    }
    ingest_text(log, &path.display().to_string(), &bytes, options.order).map_err(|source| {
        IngestError::Log {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Only the text format exists so far; JSON is recognised so that it gets a clear message.
fn detect_format(bytes: &[u8]) -> Result<Format, String> {
    let first = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(bytes)
        .iter()
        .find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err("the file is empty".to_string()),
        Some(b'{') | Some(b'[') => {
            Err("it looks like JSON, which this version does not read".to_string())
        }
        Some(_) if contains(bytes, b"Asked by:") => Ok(Format::Text),
        Some(_) => Err("no 'Asked by:' record in it".to_string()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Parses a text dump already in memory and appends it. `source` names it in the events.
pub fn ingest_text(
    log: &mut EventLog,
    source: &str,
    bytes: &[u8],
    order: FeedOrder,
) -> Result<FileSummary, LogError> {
    let mut items = parse::parse_text_dump(bytes, order);
    items.sort_by_key(|item| item.position.chronological_rank());
    let recorded_at = now_rfc3339();
    let mut summary = FileSummary {
        source: source.to_string(),
        records: items.len(),
        ..FileSummary::default()
    };
    for item in &items {
        if let Outcome::Parsed(record) = &item.outcome {
            for name in &record.unknown_forces {
                if !summary.unknown_forces.contains(name) {
                    summary.unknown_forces.push(name.clone());
                }
            }
        }
    }
    for batch in items.chunks(BATCH_SIZE) {
        let observations: Vec<Observation> =
            batch.iter().map(|item| observation(source, item)).collect();
        let report = log.append(observations, &recorded_at)?;
        for (item, outcome) in batch.iter().zip(&report.outcomes) {
            let is_new = matches!(outcome, Appended::New { .. });
            match outcome {
                Appended::New { seq, kind } => {
                    summary.appended_seqs.push(*seq);
                    match *kind {
                        "answer_observed" => summary.new_answers += 1,
                        "answer_revised" => summary.revisions += 1,
                        _ => summary.quarantined += 1,
                    }
                }
                Appended::Known { .. } => summary.known += 1,
            }
            if let Outcome::Quarantined(q) = &item.outcome {
                summary.quarantine_notes.push(QuarantineNote {
                    index: item.position.index,
                    line: item.line,
                    reason: q.reason.clone(),
                    new: is_new,
                });
            }
        }
    }
    summary.quarantine_notes.sort_by_key(|n| n.index);
    for note in summary.quarantine_notes.iter().filter(|n| n.new) {
        tracing::warn!(source, line = note.line, reason = %note.reason, "record quarantined");
    }
    tracing::info!(
        source,
        records = summary.records,
        new_answers = summary.new_answers,
        revisions = summary.revisions,
        quarantined = summary.quarantined,
        known = summary.known,
        "ingested"
    );
    Ok(summary)
}

fn observation(source: &str, item: &ParsedItem) -> Observation {
    let payload = match &item.outcome {
        Outcome::Parsed(record) => Payload::Answer(record.clone()),
        Outcome::Quarantined(q) => Payload::Unparseable {
            reason: q.reason.clone(),
            raw: q.raw.clone(),
        },
    };
    Observation {
        source: Source {
            uri: source.to_string(),
            position: Some(item.position.index),
            line: Some(item.line),
        },
        payload,
    }
}

/// The current time as the log records it.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
