//! Local ingest: files in, parsed by the right parser, appended to the log; a summary out.
//!
//! This is the file-based source beside the fetcher: it reads bytes, hands them to `parse`, turns
//! every parse outcome (records and quarantined input alike) into an observation, and appends them
//! in batches. Records are appended oldest first, so the log's order follows the feed's time order
//! even though dumps list newest first.

use std::io::Read;
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
    /// Recorded Parliament API data: a response envelope, a JSON array of records, or JSON lines.
    Api,
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
    #[error("{path}: cannot tell its format ({why}); pass --format text or --format api")]
    UnknownFormat { path: PathBuf, why: String },
    #[error("{path}: not API data: {why}")]
    NotApiData { path: PathBuf, why: String },
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

    /// Counts one append outcome; `quarantine` is (index, line, reason) for unparseable input.
    fn count(&mut self, outcome: &Appended, quarantine: Option<(u32, u32, String)>) {
        match outcome {
            Appended::New { seq, kind, revises } => {
                self.appended_seqs.push(*seq);
                match (*kind, revises) {
                    ("record_quarantined", _) => self.quarantined += 1,
                    (_, true) => self.revisions += 1,
                    (_, false) => self.new_answers += 1,
                }
            }
            Appended::Known { .. } => self.known += 1,
        }
        if let Some((index, line, reason)) = quarantine {
            self.quarantine_notes.push(QuarantineNote {
                index,
                line,
                reason,
                new: matches!(outcome, Appended::New { .. }),
            });
        }
    }

    fn add_unknown_forces(&mut self, record: &crate::record::AnswerRecord) {
        for name in &record.unknown_forces {
            if !self.unknown_forces.contains(name) {
                self.unknown_forces.push(name.clone());
            }
        }
    }

    /// Adds a later part of the same file.
    fn absorb(&mut self, part: FileSummary) {
        self.records += part.records;
        self.new_answers += part.new_answers;
        self.revisions += part.revisions;
        self.known += part.known;
        self.quarantined += part.quarantined;
        self.quarantine_notes.extend(part.quarantine_notes);
        for name in part.unknown_forces {
            if !self.unknown_forces.contains(&name) {
                self.unknown_forces.push(name);
            }
        }
        self.appended_seqs.extend(part.appended_seqs);
    }

    /// Orders the quarantine notes and logs the file's figures.
    fn finish(&mut self, what: &str) {
        self.quarantine_notes.sort_by_key(|n| n.index);
        for note in self.quarantine_notes.iter().filter(|n| n.new) {
            tracing::info!(source = %self.source, line = note.line, reason = %note.reason, "record quarantined");
        }
        tracing::info!(
            source = %self.source,
            records = self.records,
            new_answers = self.new_answers,
            revisions = self.revisions,
            quarantined = self.quarantined,
            known = self.known,
            "{what}"
        );
    }
}

/// Reads and ingests one file.
pub fn ingest_file(
    log: &mut EventLog,
    path: &Path,
    options: IngestOptions,
) -> Result<FileSummary, IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The start of the file decides the format, and whether it can be streamed.
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(HEAD_BYTES).read_to_end(&mut head))
        .map_err(read_error)?;
    let format = match options.format {
        Format::Auto => detect_format(&head).map_err(|why| IngestError::UnknownFormat {
            path: path.to_path_buf(),
            why,
        })?,
        other => other,
    };
    let source = path.display().to_string();
    let log_error = |source| IngestError::Log {
        path: path.to_path_buf(),
        source,
    };
    if format == Format::Api && crate::parse::api::looks_like_json_lines(&head) {
        return ingest_api_lines(log, path, &source);
    }
    let bytes = std::fs::read(path).map_err(read_error)?;
    match format {
        Format::Api => {
            let items = crate::parse::api::decode_recorded(&bytes).map_err(|e| {
                IngestError::NotApiData {
                    path: path.to_path_buf(),
                    why: e.to_string(),
                }
            })?;
            ingest_api_items(log, &source, items).map_err(log_error)
        }
        _ => ingest_text(log, &source, &bytes, options.order).map_err(log_error),
    }
}

/// How much of a file is read to decide its format.
const HEAD_BYTES: u64 = 64 * 1024;

/// JSON lines are read and appended a batch at a time, so a backfill file of any size takes
/// memory for a few batches, not for the file. A reader thread reads and decodes the next batches
/// while this one appends (decoding is about half the work), in file order, so the log is the
/// same as a one-thread ingest would make.
fn ingest_api_lines(
    log: &mut EventLog,
    path: &Path,
    source: &str,
) -> Result<FileSummary, IngestError> {
    let read_error = |source| IngestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut summary = FileSummary {
        source: source.to_string(),
        ..FileSummary::default()
    };
    // One decoded batch may wait while the next is decoded: enough to keep both threads busy.
    let (batches, decoded) = std::sync::mpsc::sync_channel(1);
    std::thread::scope(|scope| {
        scope.spawn(move || decode_lines(file, &batches));
        // Ends when the reader is done (or failed, which it sends first); an error here drops
        // the receiver, which stops the reader at its next batch.
        for batch in decoded {
            let batch = batch.map_err(read_error)?;
            let offset = u32::try_from(summary.records).unwrap_or(u32::MAX);
            let part = ingest_api_items_at(log, source, batch, offset).map_err(|source| {
                IngestError::Log {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            summary.absorb(part);
        }
        Ok::<(), IngestError>(())
    })?;
    summary.finish("ingested API data");
    Ok(summary)
}

/// The reader thread of [`ingest_api_lines`]: decoded batches of [`BATCH_SIZE`] lines, in
/// order, then the end of the channel (or a read error as its last message).
fn decode_lines(
    file: std::fs::File,
    batches: &std::sync::mpsc::SyncSender<std::io::Result<Vec<crate::parse::api::ApiItem>>>,
) {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(file);
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = match reader.read_until(b'\n', &mut line) {
            Ok(read) => read,
            Err(e) => {
                let _ = batches.send(Err(e));
                return;
            }
        };
        if read > 0 {
            number += 1;
            let text = String::from_utf8_lossy(&line);
            if !text.trim().is_empty() {
                batch.push(crate::parse::api::decode_line(text.trim_end(), number));
            }
        }
        if batch.len() >= BATCH_SIZE || (read == 0 && !batch.is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_SIZE));
            if batches.send(Ok(full)).is_err() {
                // The appender stopped (an error it reports itself).
                return;
            }
        }
        if read == 0 {
            return;
        }
    }
}

/// Appends decoded API records, oldest first by their date. A record whose text the list endpoint
/// cut short cannot be completed offline: it is quarantined, never logged as if it were whole.
pub fn ingest_api_items(
    log: &mut EventLog,
    source: &str,
    items: Vec<crate::parse::api::ApiItem>,
) -> Result<FileSummary, LogError> {
    let mut summary = ingest_api_items_at(log, source, items, 0)?;
    summary.finish("ingested API data");
    Ok(summary)
}

/// [`ingest_api_items`] for records that start at position `offset` of their file.
fn ingest_api_items_at(
    log: &mut EventLog,
    source: &str,
    items: Vec<crate::parse::api::ApiItem>,
    offset: u32,
) -> Result<FileSummary, LogError> {
    use crate::parse::api::ApiItem;
    let mut summary = FileSummary {
        source: source.to_string(),
        records: items.len(),
        ..FileSummary::default()
    };
    let mut positioned: Vec<(u32, ApiItem)> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let item = match item {
                ApiItem::Record {
                    id,
                    truncated: true,
                    record,
                } => ApiItem::Quarantined {
                    reason: format!(
                        "question {id}: text cut short ('...'), as the list endpoint does; fetch it by id"
                    ),
                    raw: serde_json::to_string(&record).unwrap_or_default(),
                },
                other => other,
            };
            (
                offset.saturating_add(u32::try_from(i).unwrap_or(u32::MAX)),
                item,
            )
        })
        .collect();
    let date_of = |item: &ApiItem| match item {
        ApiItem::Record { record, id, .. } => (
            record
                .api
                .as_ref()
                .and_then(|a| a.effective_date())
                .map(str::to_string),
            *id,
        ),
        ApiItem::Quarantined { .. } => (None, 0),
    };
    positioned.sort_by_key(|(position, item)| (date_of(item), *position));
    for (_, item) in &positioned {
        if let ApiItem::Record { record, .. } = item {
            summary.add_unknown_forces(record);
        }
    }
    let recorded_at = now_rfc3339();
    while !positioned.is_empty() {
        let rest = positioned.split_off(positioned.len().min(BATCH_SIZE));
        let batch = std::mem::replace(&mut positioned, rest);
        let notes: Vec<Option<(u32, String)>> = batch
            .iter()
            .map(|(position, item)| match item {
                ApiItem::Quarantined { reason, .. } => Some((*position, reason.clone())),
                ApiItem::Record { .. } => None,
            })
            .collect();
        let observations: Vec<Observation> = batch
            .into_iter()
            .map(|(position, item)| crate::fetch::observation(source.to_string(), position, item))
            .collect();
        let report = log.append(observations, &recorded_at)?;
        for (outcome, note) in report.outcomes.iter().zip(notes) {
            summary.count(outcome, note.map(|(index, reason)| (index, 0, reason)));
        }
    }
    summary.quarantine_notes.sort_by_key(|n| n.index);
    Ok(summary)
}

/// JSON is API data; text with an `Asked by:` record is a dump; anything else is refused.
fn detect_format(bytes: &[u8]) -> Result<Format, String> {
    let first = bytes
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(bytes)
        .iter()
        .find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err("the file is empty".to_string()),
        Some(b'{') | Some(b'[') => Ok(Format::Api),
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
            summary.add_unknown_forces(record);
        }
    }
    for batch in items.chunks(BATCH_SIZE) {
        let observations: Vec<Observation> =
            batch.iter().map(|item| observation(source, item)).collect();
        let report = log.append(observations, &recorded_at)?;
        for (item, outcome) in batch.iter().zip(&report.outcomes) {
            let quarantine = match &item.outcome {
                Outcome::Quarantined(q) => Some((item.position.index, item.line, q.reason.clone())),
                Outcome::Parsed(_) => None,
            };
            summary.count(outcome, quarantine);
        }
    }
    summary.finish("ingested");
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
