//! The diff module: log events in, flag events appended to the log out.
//!
//! A consumer of the log with its own checkpoint and state (sled tree `diff`). For each answer
//! event after the checkpoint it looks for: a changed answer text (word diff with `similar`, no
//! deadline, so the same texts always give the same diff); a tracked list whose set of places
//! changed; an exact or near duplicate of an answer to another question (MinHash + LSH for
//! candidates, confirmed by similar's ratio); a figure reported differently than before; a total
//! row that does not add up. Flags are appended as `flag_raised` events.
//!
//! Deterministic however the log is split into batches and wherever a crash falls: events are
//! handled in sequence with the batch's state changes visible to later events of the batch; the
//! flags are appended (idempotently: a flag's identity is its content and the event that raised
//! it) before the state and checkpoint are committed together. A crash in between re-derives the
//! same flags from the same state, and the log appends nothing twice.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use similar::{Algorithm, ChangeTag, TextDiff};

use crate::config::{DiffConfig, TrackerConfig};
use crate::event::{
    normalise_text, Envelope, Event, Flag, FlagDetail, Observation, Payload, QuestionKey, Source,
    WordChange,
};
use crate::gazetteer::Gazetteer;
use crate::log::{Appended, EventLog, LogError};
use crate::overlay::{Overlay, OverlayError};
use crate::record::AnswerRecord;
use crate::stats;

mod figures;
mod lsh;
use figures::{Figures, SeenFigure, Sightings};
use lsh::LshIndex;

const TREE: &str = "diff";
const CHECKPOINT: &[u8] = b"checkpoint";
/// Events handled per committed batch.
const BATCH: usize = 500;
/// Word diffs of texts longer than this many words fall back to a line diff, which bounds the
/// time a diff can take without a clock (a deadline would make output depend on machine speed).
const MAX_WORDS_FOR_WORD_DIFF: usize = 20_000;
const MINHASH_HASHES: usize = 128;
const LSH_ROWS: usize = MINHASH_HASHES / lsh::BANDS;
/// The state's format: "5" keeps the LSH index (band buckets by `band_buckets`), with each
/// answer's exact-text digest, as one chunk per committed batch (`L` + seq), and the figures'
/// last sightings as chunks too (`F` + seq, see `figures`). Format "4" (a key per figure) is
/// upgraded on open; state without a marker is derived again.
const FORMAT_KEY: &[u8] = b"\x00format";
const FORMAT: &[u8] = b"5";
const FORMAT_4: &[u8] = b"4";
const LSH_CHUNK_PREFIX: &[u8] = b"L";

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("diff state: {0}")]
    State(String),
    #[error("diff state: {0}")]
    Overlay(#[from] OverlayError),
}

impl From<sled::Error> for DiffError {
    fn from(e: sled::Error) -> Self {
        DiffError::Log(LogError::Storage(e))
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffReport {
    pub events_read: u64,
    pub flags_raised: u64,
    pub checkpoint: u64,
}

/// Settings the diff module reads from config.
#[derive(Debug, Clone)]
pub struct DiffSettings {
    pub near_duplicate_ratio: f64,
    pub min_words: usize,
    pub max_candidates: usize,
    pub trackers: Vec<Tracker>,
}

#[derive(Debug, Clone)]
pub struct Tracker {
    config: TrackerConfig,
    gazetteer: Gazetteer,
}

impl DiffSettings {
    pub fn new(diff: &DiffConfig, trackers: &[TrackerConfig]) -> DiffSettings {
        DiffSettings {
            near_duplicate_ratio: diff.near_duplicate_ratio,
            min_words: diff.min_words as usize,
            max_candidates: diff.max_candidates.max(1) as usize,
            trackers: trackers
                .iter()
                .map(|t| Tracker {
                    gazetteer: Gazetteer::standard(&t.extra_entities),
                    config: t.clone(),
                })
                .collect(),
        }
    }
}

/// Where an answer sits in time for tracked lists: its answer date when the API gave one, else
/// its place in the log (text dumps are appended oldest first).
fn order_key(record: &AnswerRecord, seq: u64) -> String {
    match record
        .api
        .as_ref()
        .and_then(|a| a.date_answered.as_deref())
        .filter(|d| d.len() >= 10 && d.is_char_boundary(10))
    {
        Some(date) => format!("d{}{seq:020}", &date[..10]),
        None => format!("s{seq:020}"),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TimelineEntry {
    question: QuestionKey,
    seq: u64,
    /// (entity id, label), sorted by id.
    set: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SeenAnswer {
    question: QuestionKey,
    seq: u64,
}

/// The checkpoint, when the flags are derived up to the log's head in the current format: then
/// [`run`] has nothing to do (a cheap check, so that an idle cycle starts no thread for it).
pub fn up_to_date(log: &EventLog) -> Result<Option<u64>, DiffError> {
    let tree = log.db().open_tree(TREE)?;
    let checkpoint = crate::overlay::read_checkpoint(&tree, CHECKPOINT)?;
    let current_format = checkpoint == 0 || tree.get(FORMAT_KEY)?.as_deref() == Some(FORMAT);
    Ok((current_format && checkpoint >= log.head()?).then_some(checkpoint))
}

/// Brings the flags up to the log's head. Returns what it did.
pub fn run(log: &mut EventLog, settings: &DiffSettings) -> Result<DiffReport, DiffError> {
    run_in_batches(log, settings, BATCH)
}

/// [`run`] with a chosen batch size: the flags must not depend on it (tests hold it to that).
pub fn run_in_batches(
    log: &mut EventLog,
    settings: &DiffSettings,
    batch_size: usize,
) -> Result<DiffReport, DiffError> {
    let mut consumer = DiffConsumer::open(log, settings)?;
    let head = log.head()?;
    // The consumer appends flags while the reader reads ahead: they land after `head`, which is
    // where this run stops; the next run reads them (and skips them: they are not answers).
    let reader = log.clone();
    reader.for_each_batch(consumer.checkpoint() + 1, head, batch_size, |batch| {
        consumer.apply(log, &batch)
    })?;
    let report = consumer.finish();
    if report.events_read > 0 {
        log.flush()?;
    }
    Ok(report)
}

/// The diff module as a consumer of batches of events read by someone else (the pipeline reads
/// each batch once for all consumers). Events at or before its checkpoint are skipped.
pub struct DiffConsumer<'s> {
    settings: &'s DiffSettings,
    tree: sled::Tree,
    checkpoint: u64,
    /// The near-duplicate index (loaded on first need: a run with no new answers never reads
    /// it) and the latest answers' texts.
    dups: DuplicateSearch,
    /// The figures' last sightings, committed (loaded on first need).
    figures: Figures,
    /// Analysed, not yet committed (see [`DiffConsumer::prepare`]).
    prepared: Option<Prepared>,
    report: DiffReport,
}

/// Flags as the observations that append them.
fn flag_observations(flags: &[Flag]) -> Vec<Observation> {
    flags
        .iter()
        .map(|flag| Observation {
            source: Source {
                uri: format!("diff:event/{}", flag.derived_from),
                position: None,
                line: None,
            },
            payload: Payload::Flag(Box::new(flag.clone())),
        })
        .collect()
}

/// The flags and state writes of the events analysed since the last commit (one batch, or the
/// several parts of one), held between `prepare` and `commit`.
struct Prepared {
    flags: Vec<Flag>,
    state: crate::overlay::Pending,
    figures: figures::Pending,
    last: u64,
    events: u64,
}

impl<'s> DiffConsumer<'s> {
    pub fn open(log: &EventLog, settings: &'s DiffSettings) -> Result<DiffConsumer<'s>, DiffError> {
        let tree = log.db().open_tree(TREE)?;
        let mut checkpoint = crate::overlay::read_checkpoint(&tree, CHECKPOINT)?;
        let format = tree.get(FORMAT_KEY)?;
        if checkpoint > 0 && format.as_deref() == Some(FORMAT_4) {
            // Format 4 kept a key per figure: the same sightings become one chunk.
            let figures = figures::upgrade_legacy_keys(&tree, checkpoint)?;
            tree.insert(FORMAT_KEY, FORMAT)?;
            tree.flush()?;
            tracing::info!(figures, "diff: figure sightings upgraded to chunks");
        } else if checkpoint > 0 && format.as_deref() != Some(FORMAT) {
            // State from the first format (a sled key per LSH bucket): derive it again from the
            // log. The flags it raised are already in the log, and appending them again appends
            // nothing, since a flag's identity is its content and the event that raised it.
            tracing::info!(
                checkpoint,
                "diff: state is in an older format; deriving it again from the log"
            );
            tree.clear()?;
            checkpoint = 0;
        }
        Ok(DiffConsumer {
            settings,
            tree,
            checkpoint,
            dups: DuplicateSearch::default(),
            figures: Figures::default(),
            prepared: None,
            report: DiffReport {
                checkpoint,
                ..DiffReport::default()
            },
        })
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Analyses the events of `batch` after the checkpoint, appends the flags they raise, then
    /// commits the state and the checkpoint in one write. On error the in-memory index is
    /// dropped (it may be ahead of what was committed) and is loaded again on next use.
    pub fn apply(&mut self, log: &mut EventLog, batch: &[Envelope]) -> Result<(), DiffError> {
        self.prepare(log, batch)?;
        self.commit(log)
    }

    /// The first half of [`DiffConsumer::apply`]: analyses the batch and holds its flags and
    /// state until [`DiffConsumer::commit`], so that a caller can choose where in the log the
    /// flags go. Nothing is written. A later batch prepared before the commit is added to this
    /// one: their flags go in together, in one append.
    pub fn prepare(&mut self, log: &EventLog, batch: &[Envelope]) -> Result<(), DiffError> {
        let result = self.prepare_inner(log, batch);
        if result.is_err() {
            self.dups.forget_state();
            self.prepared = None;
        }
        result
    }

    /// The last event analysed: the checkpoint, or the last event prepared since.
    pub fn analysed_to(&self) -> u64 {
        self.prepared
            .as_ref()
            .map_or(self.checkpoint, |prepared| prepared.last)
    }

    /// Appends the prepared flags, then commits the state and the checkpoint (the flags first:
    /// after a crash between the two the batch is analysed again, and appending the same flags
    /// again appends nothing).
    pub fn commit(&mut self, log: &mut EventLog) -> Result<(), DiffError> {
        self.commit_then(log, |_| {})
    }

    /// [`DiffConsumer::commit`], calling `flags_in` with the flags' new events once they are in
    /// the log (none when there were none, or all were there already), before the state is
    /// written: a follower lets the appends it holds back go on there, since only the flags'
    /// place in the log depends on when they go, and hands the events to the views.
    pub fn commit_then(
        &mut self,
        log: &mut EventLog,
        flags_in: impl FnOnce(Vec<Envelope>),
    ) -> Result<(), DiffError> {
        let result = self.commit_inner(log, flags_in);
        if result.is_err() {
            self.dups.forget_state();
        }
        result
    }

    /// Analyses the events of `batch` after those already analysed; a batch prepared before and
    /// not yet committed is added to, and goes in with this one.
    fn prepare_inner(&mut self, log: &EventLog, batch: &[Envelope]) -> Result<(), DiffError> {
        let from = self.analysed_to();
        let events: Vec<&Envelope> = batch.iter().filter(|e| e.seq > from).collect();
        let Some(last) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let (mut flags, pending, mut figures, analysed) = match self.prepared.take() {
            Some(prepared) => (
                prepared.flags,
                prepared.state,
                prepared.figures,
                prepared.events,
            ),
            None => (
                Vec::new(),
                crate::overlay::Pending::new(),
                BTreeMap::new(),
                0,
            ),
        };
        let mut overlay = Overlay::with_pending(&self.tree, pending);
        for envelope in &events {
            analyse(
                log,
                self.settings,
                envelope,
                &mut overlay,
                &mut self.dups,
                Sightings {
                    committed: &mut self.figures,
                    pending: &mut figures,
                },
                &mut flags,
            )?;
        }
        self.prepared = Some(Prepared {
            flags,
            state: overlay.into_pending(),
            figures,
            last,
            events: analysed + events.len() as u64,
        });
        Ok(())
    }

    fn commit_inner(
        &mut self,
        log: &mut EventLog,
        flags_in: impl FnOnce(Vec<Envelope>),
    ) -> Result<(), DiffError> {
        let Some(prepared) = self.prepared.take() else {
            flags_in(Vec::new());
            return Ok(());
        };
        if prepared.flags.is_empty() {
            flags_in(Vec::new());
        } else {
            let (appended, written) = log.append_returning(
                flag_observations(&prepared.flags),
                &crate::ingest::now_rfc3339(),
            )?;
            self.report.flags_raised += appended
                .outcomes
                .iter()
                .filter(|o| matches!(o, Appended::New { .. }))
                .count() as u64;
            flags_in(written);
        }
        self.commit_state(prepared)
    }

    fn commit_state(&mut self, prepared: Prepared) -> Result<(), DiffError> {
        let last = prepared.last;
        let mut extra: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (CHECKPOINT.to_vec(), last.to_be_bytes().to_vec()),
            (FORMAT_KEY.to_vec(), FORMAT.to_vec()),
        ];
        if let Some(chunk) = self.dups.index.as_mut().and_then(LshIndex::take_chunk) {
            extra.push((chunk_key(LSH_CHUNK_PREFIX, last), chunk));
        }
        let extra: Vec<(&[u8], Vec<u8>)> = extra
            .iter()
            .map(|(k, v)| (k.as_slice(), v.clone()))
            .collect();
        let mut state = Overlay::with_pending(&self.tree, prepared.state).into_batch(&extra);
        let figures = self
            .figures
            .stage(&self.tree, &mut state, last, prepared.figures)?;
        self.tree.apply_batch(state)?;
        if let Some(figures) = figures {
            self.figures.applied(figures);
        }
        self.report.events_read += prepared.events;
        self.checkpoint = prepared.last;
        self.report.checkpoint = prepared.last;
        Ok(())
    }

    /// What the consumer did, with a log line when it raised flags.
    pub fn finish(self) -> DiffReport {
        if self.report.flags_raised > 0 {
            tracing::info!(
                events = self.report.events_read,
                flags = self.report.flags_raised,
                "diff: flags raised"
            );
        }
        self.report
    }
}

/// A chunk's key: `prefix` and the checkpoint it was committed with, big-endian, so that chunks
/// (LSH and figure sightings) load oldest first.
fn chunk_key(prefix: &[u8], last: u64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&last.to_be_bytes());
    key
}

/// How errors name the chunk under `key`.
fn chunk_name(prefix: &[u8], key: &[u8]) -> String {
    match key
        .get(prefix.len()..)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
    {
        Some(seq) => format!("after event {}", u64::from_be_bytes(seq)),
        None => format!("{key:?}"),
    }
}

fn load_lsh(tree: &sled::Tree) -> Result<LshIndex, DiffError> {
    let mut raw = Vec::new();
    for entry in tree.scan_prefix(LSH_CHUNK_PREFIX) {
        let (k, v) = entry?;
        raw.push((chunk_name(LSH_CHUNK_PREFIX, &k), v));
    }
    let index = LshIndex::load(&raw).map_err(|e| DiffError::State(e.to_string()))?;
    tracing::debug!(answers = index.len(), "diff: near-duplicate index loaded");
    Ok(index)
}

fn analyse(
    log: &EventLog,
    settings: &DiffSettings,
    envelope: &Envelope,
    state: &mut Overlay<'_>,
    dups: &mut DuplicateSearch,
    mut figures: Sightings<'_>,
    flags: &mut Vec<Flag>,
) -> Result<(), DiffError> {
    let (Some(question), Some(record)) = (envelope.event.question(), envelope.event.record())
    else {
        return Ok(());
    };
    let seq = envelope.seq;
    let flag = |detail: FlagDetail| Flag {
        derived_from: seq,
        question: Some(question.clone()),
        detail,
    };
    let text = record.answer.plain_text();
    let api = record.api.as_ref();
    let is_holding = api.is_some_and(|a| a.is_holding);
    let is_withdrawn = api.is_some_and(|a| a.is_withdrawn);

    // A changed answer: the word diff against the question's previous content.
    if let Some(previous_seq) = envelope.event.previous_seq() {
        if let Some(previous) = log.get(previous_seq)? {
            if let Some(old) = previous.event.record() {
                let old_text = old.answer.plain_text();
                if normalise_text(&old_text) != normalise_text(&text) {
                    let (ratio, changes) = word_diff(&old_text, &text);
                    flags.push(flag(FlagDetail::AnswerChanged {
                        previous_seq,
                        previous_kind: previous.event.kind().to_string(),
                        ratio,
                        changes,
                    }));
                }
            }
        }
    }
    if is_withdrawn {
        return Ok(());
    }

    // Tracked lists.
    for tracker in &settings.trackers {
        let Some(set) = tracked_set(tracker, record) else {
            continue;
        };
        let prefix = format!("t/{}/", tracker.config.name).into_bytes();
        let mut key = prefix.clone();
        key.extend_from_slice(order_key(record, seq).as_bytes());
        let previous: Option<TimelineEntry> = match state.last_before(&prefix, &key)? {
            Some((_, bytes)) => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        let late = state.any_after(&prefix, &key)?;
        if let Some(previous) = previous.filter(|p| p.question != *question || p.seq != seq) {
            let before: BTreeSet<&(String, String)> = previous.set.iter().collect();
            let now: BTreeSet<&(String, String)> = set.iter().collect();
            let mut added: Vec<String> = now.difference(&before).map(|e| e.1.clone()).collect();
            let mut removed: Vec<String> = before.difference(&now).map(|e| e.1.clone()).collect();
            added.sort();
            removed.sort();
            if !added.is_empty() || !removed.is_empty() {
                flags.push(flag(FlagDetail::TrackedListChanged {
                    tracker: tracker.config.name.clone(),
                    title: tracker.config.title.clone(),
                    previous_question: previous.question.clone(),
                    previous_seq: previous.seq,
                    added,
                    removed,
                    set: {
                        let mut labels: Vec<String> = set.iter().map(|e| e.1.clone()).collect();
                        labels.sort();
                        labels
                    },
                    late,
                }));
            }
        }
        state.put_json(
            key,
            &TimelineEntry {
                question: question.clone(),
                seq,
                set,
            },
        );
    }

    // Duplicates, exact then near.
    let normalised = crate::text::into_lowercase(normalise_text(&text));
    let words = words_of(&normalised);
    if !is_holding && words.len() >= settings.min_words {
        duplicates(
            log,
            settings,
            state,
            dups,
            question,
            seq,
            &normalised,
            &words,
            flags,
        )?;
        // An `AnswerObserved` is a question's first answer by definition (a later one is a
        // revision); the correction kinds gained their `previous_seq` later, so theirs may be
        // missing on old events and prove nothing.
        if matches!(envelope.event, Event::AnswerObserved { .. }) {
            dups.groups.first_answer(question);
        }
    }

    // Figures reported before with another value, and totals that do not add up.
    for stat in stats::statistics(record) {
        let key = stat.key().into_bytes();
        if let Some(seen) = figures.last(state.tree(), &key)? {
            if seen.question != *question && (seen.value - stat.value).abs() > f64::EPSILON {
                flags.push(flag(FlagDetail::FigureChanged {
                    force_id: stat.force_id.clone(),
                    force: stat.force.clone(),
                    period: stat.period.clone(),
                    measure: stat.measure.clone(),
                    previous_value: seen.value,
                    value: stat.value,
                    previous_question: seen.question.clone(),
                    previous_seq: seen.seq,
                }));
            }
        }
        figures.record(
            key,
            SeenFigure {
                value: stat.value,
                question: question.clone(),
                seq,
            },
        );
    }
    for mismatch in stats::total_mismatches(record) {
        flags.push(flag(FlagDetail::TotalMismatch {
            table: mismatch.table,
            row: mismatch.row,
            column: mismatch.column,
            group: mismatch.group,
            stated: mismatch.stated,
            summed: mismatch.summed,
        }));
    }
    Ok(())
}

/// The places a tracker reads in this answer, or `None` when the answer is not on its subject or
/// names none of them in a sentence that says where.
fn tracked_set(tracker: &Tracker, record: &AnswerRecord) -> Option<Vec<(String, String)>> {
    let text = record.answer.paragraphs().collect::<Vec<_>>().join("\n");
    let lower = text.to_lowercase();
    let config = &tracker.config;
    if !config
        .subject
        .iter()
        .any(|s| lower.contains(&s.to_lowercase()))
    {
        return None;
    }
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    for sentence in sentences(&text) {
        let s = sentence.to_lowercase();
        let says_where = config
            .sentence
            .iter()
            .any(|p| s.contains(&p.to_lowercase()));
        let excluded = config.exclude.iter().any(|p| s.contains(&p.to_lowercase()));
        if !says_where || excluded {
            continue;
        }
        for entity in tracker.gazetteer.find(sentence) {
            set.insert(entity.id, entity.label);
        }
    }
    (!set.is_empty()).then(|| set.into_iter().collect())
}

/// The words of a normalised text (split at spaces). A byte loop: `split(' ')` looked for each
/// space with `memchr`, whose setup costs more than a word of five letters, and the split was
/// a twentieth of the diff thread's time in a backfill.
fn words_of(normalised: &str) -> Vec<&str> {
    let mut words = Vec::with_capacity(normalised.len() / 5);
    let mut start = 0;
    for (at, byte) in normalised.bytes().enumerate() {
        if byte == b' ' {
            if let Some(word) = normalised.get(start..at).filter(|w| !w.is_empty()) {
                words.push(word);
            }
            start = at + 1;
        }
    }
    if let Some(word) = normalised.get(start..).filter(|w| !w.is_empty()) {
        words.push(word);
    }
    words
}

/// Sentences: split after `.`, `!` or `?` followed by whitespace, and at line breaks.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut start = 0;
        let bytes = line.as_bytes();
        for i in 0..bytes.len() {
            if matches!(bytes[i], b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_some_and(|b| b.is_ascii_whitespace())
            {
                out.push(line[start..=i].trim());
                start = i + 1;
            }
        }
        if start < line.len() {
            out.push(line[start..].trim());
        }
    }
    out.into_iter().filter(|s| !s.is_empty()).collect()
}

/// similar's ratio and the word-level changes from `old` to `new`.
pub fn word_diff(old: &str, new: &str) -> (f64, Vec<WordChange>) {
    let big = old
        .split_whitespace()
        .count()
        .max(new.split_whitespace().count())
        > MAX_WORDS_FOR_WORD_DIFF;
    let mut config = TextDiff::configure();
    config.algorithm(Algorithm::Myers);
    let diff = if big {
        config.diff_lines(old, new)
    } else {
        config.diff_words(old, new)
    };
    let mut changes: Vec<WordChange> = Vec::new();
    for change in diff.iter_all_changes() {
        let op = match change.tag() {
            ChangeTag::Equal => "equal",
            ChangeTag::Delete => "delete",
            ChangeTag::Insert => "insert",
        };
        match changes.last_mut() {
            Some(last) if last.op == op => last.text.push_str(change.value()),
            _ => changes.push(WordChange {
                op: op.to_string(),
                text: change.value().to_string(),
            }),
        }
    }
    (f64::from(diff.ratio()), changes)
}

/// similar's word-level ratio of two texts.
pub fn similarity(a: &str, b: &str) -> f64 {
    word_diff(a, b).0
}

/// What duplicate search keeps from one answer to the next.
#[derive(Default)]
struct DuplicateSearch {
    /// Loaded on first need: a run with no new answers never reads it.
    index: Option<LshIndex>,
    recent: RecentTexts,
    groups: Groups,
}

impl DuplicateSearch {
    /// After a failed prepare or commit: what was derived from state that is now discarded
    /// (the index, the groups read or written) is read again from what was committed. The texts
    /// are the log's, which nothing discards.
    fn forget_state(&mut self) {
        self.index = None;
        self.groups.known.clear();
    }
}

/// Duplicate groups (`g/` keys of the diff state: question -> the question whose group it
/// joined), as read or written by this consumer. After the near-duplicate reads, reading these
/// from sled was where the diff thread waited on sled's process-wide lock (2.5 s of a
/// 200,000-answer backfill); only the diff module writes them, so what it saw stays true.
#[derive(Default)]
struct Groups {
    /// `None`: no group key (the question starts its own group).
    known: HashMap<QuestionKey, Option<QuestionKey>>,
}

/// Questions whose groups [`Groups`] keeps (about 1.5 MB); past this it starts again.
const KNOWN_GROUPS: usize = 16_384;

impl Groups {
    /// Records that an answer to `question` duplicates one to `of`, and returns the group it
    /// joins: `of`'s group, or `of` itself.
    fn join(
        &mut self,
        state: &mut Overlay<'_>,
        question: &QuestionKey,
        of: &QuestionKey,
    ) -> Result<QuestionKey, DiffError> {
        let group_key = |q: &QuestionKey| format!("g/{q}").into_bytes();
        let of_group = match self.known.get(of) {
            Some(known) => known.clone(),
            None => state.get_json::<QuestionKey>(&group_key(of))?,
        };
        let group = of_group.clone().unwrap_or_else(|| of.clone());
        state.put_json(group_key(question), &group);
        self.remember(of, of_group);
        self.remember(question, Some(group.clone()));
        Ok(group)
    }

    /// After the first answer to `question`: a group key is only ever written when an answer
    /// to its question is found to be a duplicate, so unless this one was, it has none. Later
    /// answers that duplicate it then need not look.
    fn first_answer(&mut self, question: &QuestionKey) {
        // Known already: it was just found a duplicate (its group is what `join` wrote), or
        // seen before. Checked before any clearing, which would forget that group.
        if !self.known.contains_key(question) {
            self.remember(question, None);
        }
    }

    /// Records a question's group, starting again when the bound is reached.
    fn remember(&mut self, question: &QuestionKey, group: Option<QuestionKey>) {
        if self.known.len() >= KNOWN_GROUPS && !self.known.contains_key(question) {
            self.known.clear();
        }
        self.known.insert(question.clone(), group);
    }
}

/// The normalised texts of the answers last added to the near-duplicate index, to confirm
/// candidates without reading them back from the log. In a 200,000-answer backfill four
/// candidates in five were among the last 256 events, and the reads from the log (candidates and
/// exact matches, about 10,000) waited on sled's process-wide lock whenever another thread was
/// applying a batch: 3.3 s of the diff thread's time. An event never changes, so an entry never
/// goes stale.
#[derive(Default)]
struct RecentTexts {
    /// (seq, question, normalised text), ascending by seq.
    entries: std::collections::VecDeque<(u64, QuestionKey, String)>,
}

/// Answers whose texts [`RecentTexts`] keeps (about 1 MB at 2 KB an answer). In the 200,000-answer
/// backfill 2,434 of about 3,000 candidates read were within 256 events of the answer, and 137
/// more within 1,024; 512 answers are about 660 events.
const RECENT_TEXTS: usize = 512;

impl RecentTexts {
    fn get(&self, seq: u64) -> Option<(&QuestionKey, &str)> {
        let at = self.entries.binary_search_by_key(&seq, |e| e.0).ok()?;
        self.entries.get(at).map(|(_, q, text)| (q, text.as_str()))
    }

    fn push(&mut self, seq: u64, question: &QuestionKey, text: &str) {
        // Analysed in seq order; anything else (not expected) starts the list afresh, so that
        // it stays sorted for the search.
        if self.entries.back().is_some_and(|last| last.0 >= seq) {
            self.entries.clear();
        }
        if self.entries.len() >= RECENT_TEXTS {
            self.entries.pop_front();
        }
        self.entries
            .push_back((seq, question.clone(), text.to_string()));
    }
}

#[allow(clippy::too_many_arguments)]
fn duplicates(
    log: &EventLog,
    settings: &DiffSettings,
    state: &mut Overlay<'_>,
    dups: &mut DuplicateSearch,
    question: &QuestionKey,
    seq: u64,
    normalised: &str,
    words: &[&str],
    flags: &mut Vec<Flag>,
) -> Result<(), DiffError> {
    let digest = {
        let d = Sha256::digest(normalised.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        u128::from_be_bytes(first)
    };
    let DuplicateSearch {
        index,
        recent,
        groups,
    } = dups;
    let index = match index {
        Some(index) => index,
        None => index.insert(load_lsh(state.tree())?),
    };
    let flag = |of: &SeenAnswer, group: QuestionKey, exact: bool, ratio: f64| Flag {
        derived_from: seq,
        question: Some(question.clone()),
        detail: FlagDetail::DuplicateAnswer {
            of_question: of.question.clone(),
            of_seq: of.seq,
            group,
            exact,
            ratio,
        },
    };
    let own = question_tag(question);
    if let Some((first, first_tag)) = exact_duplicate_of(log, index, recent, digest, normalised)? {
        if first_tag != own {
            let group = groups.join(state, question, &first.question)?;
            flags.push(flag(&first, group, true, 1.0));
        }
        return Ok(());
    }

    // Near duplicates: LSH buckets give candidates; each is confirmed on the full texts.
    let signature = minhash(words);
    let buckets = band_buckets(&signature);
    let mut candidates = index.candidates(&buckets, own);
    index
        .insert(seq, own, &buckets, digest)
        .map_err(DiffError::State)?;
    recent.push(seq, question, normalised);
    // Most shared bands first, then oldest: deterministic.
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut best: Option<(f64, SeenAnswer)> = None;
    for (other_seq, _) in candidates.into_iter().take(settings.max_candidates) {
        let Some((other_question, other_text)) = indexed_answer(log, recent, other_seq)? else {
            continue;
        };
        if other_question == *question {
            continue;
        }
        let ratio = similarity(&other_text, normalised);
        if ratio >= settings.near_duplicate_ratio && best.as_ref().is_none_or(|(r, _)| ratio > *r) {
            best = Some((
                ratio,
                SeenAnswer {
                    question: other_question,
                    seq: other_seq,
                },
            ));
        }
    }
    if let Some((ratio, of)) = best {
        let group = groups.join(state, question, &of.question)?;
        flags.push(flag(&of, group, false, ratio));
    }
    Ok(())
}

/// The first answer with this normalised text, and its question's tag. The index knows it by
/// the top 64 bits of the text's digest; the texts are compared, so a collision is never called
/// an exact duplicate.
fn exact_duplicate_of(
    log: &EventLog,
    index: &LshIndex,
    recent: &RecentTexts,
    digest: u128,
    normalised: &str,
) -> Result<Option<(SeenAnswer, u64)>, DiffError> {
    let Some((first_seq, first_tag)) = index.exact(digest) else {
        return Ok(None);
    };
    let Some((first_question, first_text)) = indexed_answer(log, recent, first_seq)? else {
        return Err(DiffError::State(format!(
            "the near-duplicate index names event {first_seq}, which is not an answer"
        )));
    };
    if first_text != normalised {
        return Ok(None);
    }
    let first = SeenAnswer {
        question: first_question,
        seq: first_seq,
    };
    Ok(Some((first, first_tag)))
}

/// The question and normalised text of the answer at `seq`, which the near-duplicate index
/// named: from the latest texts when held there, else read from the log (`None` when the event
/// is missing or not an answer).
fn indexed_answer<'r>(
    log: &EventLog,
    recent: &'r RecentTexts,
    seq: u64,
) -> Result<Option<(QuestionKey, std::borrow::Cow<'r, str>)>, DiffError> {
    if let Some((question, text)) = recent.get(seq) {
        return Ok(Some((question.clone(), text.into())));
    }
    let Some(envelope) = log.get(seq)? else {
        return Ok(None);
    };
    let (Some(question), Some(record)) = (envelope.event.question(), envelope.event.record())
    else {
        return Ok(None);
    };
    let text = crate::text::into_lowercase(normalise_text(&record.answer.plain_text()));
    Ok(Some((question.clone(), text.into())))
}

/// Each band of the signature hashed to a bucket (32 bits: a rare false collision only adds a
/// candidate, which is confirmed on the full texts like any other). The rows are already
/// well-mixed hash values, so a multiply-mix chain spreads them as well as SHA-256 did, at a
/// fraction of the cost (32 bands an answer).
fn band_buckets(signature: &[u64]) -> lsh::Buckets {
    std::array::from_fn(|band| {
        let mut h = mix64(band as u64);
        for r in &signature[band * LSH_ROWS..(band + 1) * LSH_ROWS] {
            h = mix64(h ^ r);
        }
        (h >> 32) as u32
    })
}

/// A question's 8-byte tag in LSH buckets (its own answers are not its duplicates).
fn question_tag(question: &QuestionKey) -> u64 {
    let digest = Sha256::digest(question.0.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]))
}

/// A 128-value MinHash signature over word 3-shingles by one-permutation hashing: each shingle
/// is hashed once and lands in one of 128 bins, which keeps its minimum; empty bins borrow a
/// filled bin's value, chosen by a fixed probe sequence (optimal densification, Shrivastava
/// 2017). Two texts agree in a bin with probability close to their shingles' Jaccard
/// similarity, as with 128 independent hash functions, at 1/128th of the hashing. No seeds
/// depend on the run, so results never vary.
fn minhash(words: &[&str]) -> Vec<u64> {
    const BIN_BITS: u32 = 7;
    let mut bins = [u64::MAX; MINHASH_HASHES];
    let mut filled = [false; MINHASH_HASHES];
    let mut add = |shingle: u64| {
        let h = mix64(shingle);
        let bin = (h >> (64 - BIN_BITS)) as usize;
        let value = h & (u64::MAX >> BIN_BITS);
        if value < bins[bin] {
            bins[bin] = value;
        }
        filled[bin] = true;
    };
    if words.len() < 3 {
        add(shingle_hash(words));
    } else {
        shingle_hashes(words, add);
    }
    if !filled.iter().any(|f| *f) {
        return bins.to_vec();
    }
    (0..MINHASH_HASHES)
        .map(|i| {
            if filled[i] {
                return bins[i];
            }
            let mut attempt = 0u64;
            loop {
                attempt += 1;
                let donor = (mix64((i as u64) << 32 | attempt) >> (64 - BIN_BITS)) as usize;
                if filled[donor] {
                    return bins[donor];
                }
            }
        })
        .collect()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// [`shingle_hash`] of every three consecutive words (`words` has at least three), handed to
/// `add` in no particular order.
///
/// FNV-1a is a chain of multiplies, a byte at a time, each waiting for the last, and every
/// word is hashed in three shingles: one by one, the chains were among the hottest lines of
/// duplicate search in a backfill's profile. Four shingles hashed side by side are four
/// independent chains, which the processor runs together.
fn shingle_hashes(words: &[&str], mut add: impl FnMut(u64)) {
    // The words joined by single spaces: each shingle is a slice of it.
    let mut joined: Vec<u8> = Vec::with_capacity(words.iter().map(|w| w.len() + 1).sum());
    let mut starts: Vec<usize> = Vec::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            joined.push(b' ');
        }
        starts.push(joined.len());
        joined.extend_from_slice(word.as_bytes());
    }
    let shingle = |i: usize| -> &[u8] {
        let end = starts.get(i + 3).map_or(joined.len(), |next| next - 1);
        joined.get(starts[i]..end).unwrap_or_default()
    };
    let count = words.len() - 2;
    let mut i = 0;
    while i + 4 <= count {
        let lanes = [shingle(i), shingle(i + 1), shingle(i + 2), shingle(i + 3)];
        let mut h = [FNV_OFFSET; 4];
        let common = lanes.iter().map(|l| l.len()).min().unwrap_or(0);
        for (((a, b), c), d) in lanes[0][..common]
            .iter()
            .zip(&lanes[1][..common])
            .zip(&lanes[2][..common])
            .zip(&lanes[3][..common])
        {
            h[0] = (h[0] ^ u64::from(*a)).wrapping_mul(FNV_PRIME);
            h[1] = (h[1] ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
            h[2] = (h[2] ^ u64::from(*c)).wrapping_mul(FNV_PRIME);
            h[3] = (h[3] ^ u64::from(*d)).wrapping_mul(FNV_PRIME);
        }
        for (lane, h) in lanes.iter().zip(h) {
            add(fnv_continue(h, &lane[common..]));
        }
        i += 4;
    }
    for rest in i..count {
        add(fnv_continue(FNV_OFFSET, shingle(rest)));
    }
}

/// FNV-1a from state `h` over `bytes`.
fn fnv_continue(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h = (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a of the words joined by single spaces, without building the joined string.
fn shingle_hash(words: &[&str]) -> u64 {
    let mut h = FNV_OFFSET;
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            h = fnv_continue(h, b" ");
        }
        h = fnv_continue(h, word.as_bytes());
    }
    h
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Puts the state back in format 4 (a key per figure), as an old data dir holds it.
#[cfg(test)]
pub(crate) fn downgrade_to_format_4(log: &EventLog) -> usize {
    let tree = log.db().open_tree(TREE).unwrap();
    let figures = figures::write_legacy_keys(&tree).unwrap();
    tree.insert(FORMAT_KEY, FORMAT_4).unwrap();
    figures
}

/// The diff module's checkpoint.
pub fn checkpoint(log: &EventLog) -> Result<u64, DiffError> {
    Ok(crate::overlay::read_checkpoint(
        &log.db().open_tree(TREE)?,
        CHECKPOINT,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two texts whose digests share their top 64 bits (the part the index keeps) are not
    /// exact duplicates: the texts are compared.
    #[test]
    fn a_digest_collision_is_not_an_exact_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), crate::log::StoreOptions::default()).unwrap();
        let first = "The figures are published quarterly.";
        log.append(
            vec![crate::log::tests::answer("Q1", first)],
            crate::log::tests::NOW,
        )
        .unwrap();
        let mut index = LshIndex::new();
        let digest = 0xABCD_u128 << 64 | 1;
        index.insert(1, 7, &[3; lsh::BANDS], digest).unwrap();
        let same = normalise_text(first).to_lowercase();
        let other = normalise_text("The figures are not held centrally.").to_lowercase();
        let colliding = 0xABCD_u128 << 64 | 2;
        // Read from the log, then from the latest texts (an empty log: nothing is read).
        let empty_dir = tempfile::tempdir().unwrap();
        let empty = EventLog::open(empty_dir.path(), crate::log::StoreOptions::default()).unwrap();
        let q1 = log
            .get(1)
            .unwrap()
            .unwrap()
            .event
            .question()
            .unwrap()
            .clone();
        let mut held = RecentTexts::default();
        held.push(1, &q1, &same);
        for (log, recent) in [(&log, &RecentTexts::default()), (&empty, &held)] {
            let found = exact_duplicate_of(log, &index, recent, digest, &same).unwrap();
            assert_eq!(
                found.map(|(a, tag)| (a.seq, a.question, tag)),
                Some((1, q1.clone(), 7))
            );
            // Same top 64 bits, another text: a collision, not a duplicate.
            assert!(exact_duplicate_of(log, &index, recent, colliding, &other)
                .unwrap()
                .is_none());
        }
    }

    #[test]
    fn groups_remembered_agree_with_groups_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("diff").unwrap();
        let q = |name: &str| QuestionKey(name.into());
        // B duplicates A, C duplicates B, D duplicates C: all join A's group.
        let mut groups = Groups::default();
        let mut state = Overlay::new(&tree);
        assert_eq!(groups.join(&mut state, &q("B"), &q("A")).unwrap(), q("A"));
        // B's first answer was the duplicate: what was learnt of its group stays.
        groups.first_answer(&q("B"));
        assert_eq!(groups.join(&mut state, &q("C"), &q("B")).unwrap(), q("A"));
        // G's first answer duplicated nothing: G starts its own group, read from nowhere.
        groups.first_answer(&q("G"));
        assert_eq!(groups.known.get(&q("G")), Some(&None));
        assert_eq!(groups.join(&mut state, &q("H"), &q("G")).unwrap(), q("G"));
        tree.apply_batch(state.into_batch(&[])).unwrap();
        // Remembered, and read back by a consumer that remembers nothing (as after a restart).
        for mut groups in [groups, Groups::default()] {
            let mut state = Overlay::new(&tree);
            assert_eq!(groups.join(&mut state, &q("D"), &q("C")).unwrap(), q("A"));
            assert_eq!(groups.join(&mut state, &q("F"), &q("E")).unwrap(), q("E"));
            assert_eq!(state.get_json::<QuestionKey>(b"g/D").unwrap(), Some(q("A")));
        }
    }

    /// A first answer that was a duplicate, joined when the cache is full to the bound: the
    /// group it joined stays known (a review found `first_answer` clearing the cache after
    /// `join` and recording no group).
    #[test]
    fn a_full_group_cache_keeps_the_group_a_first_answer_joined() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("diff").unwrap();
        let q = |name: String| QuestionKey(name);
        let mut groups = Groups::default();
        for n in 0..KNOWN_GROUPS - 2 {
            groups.first_answer(&q(format!("old {n}")));
        }
        let mut state = Overlay::new(&tree);
        let (question, of) = (q("new".into()), q("earlier".into()));
        assert_eq!(groups.join(&mut state, &question, &of).unwrap(), of);
        assert_eq!(groups.known.len(), KNOWN_GROUPS);
        groups.first_answer(&question);
        assert_eq!(groups.known.get(&question), Some(&Some(of.clone())));
        let later = q("later".into());
        assert_eq!(groups.join(&mut state, &later, &question).unwrap(), of);
    }

    #[test]
    fn recent_texts_keep_the_latest_answers_in_order() {
        let mut recent = RecentTexts::default();
        let question = QuestionKey("Q".into());
        for seq in 1..=(RECENT_TEXTS as u64 + 10) {
            recent.push(seq * 2, &question, &format!("text {seq}"));
        }
        assert_eq!(recent.entries.len(), RECENT_TEXTS);
        assert_eq!(recent.get(2 * 10), None, "evicted");
        assert_eq!(recent.get(2 * 11).map(|(_, t)| t), Some("text 11"));
        assert_eq!(recent.get(2 * 11 + 1), None, "never held");
        let last = RECENT_TEXTS as u64 + 10;
        assert_eq!(
            recent.get(2 * last).map(|(_, t)| t),
            Some(format!("text {last}").as_str())
        );
        // Out of order (a new run from an earlier checkpoint): only the new entry is kept.
        recent.push(4, &question, "again");
        assert_eq!(recent.entries.len(), 1);
        assert_eq!(recent.get(4).map(|(_, t)| t), Some("again"));
    }

    #[test]
    fn word_diffs_show_what_changed() {
        let (ratio, changes) = word_diff(
            "Breach is punishable by up to 5 years imprisonment.",
            "Breach is punishable by up to five years imprisonment.",
        );
        assert!(ratio > 0.8 && ratio < 1.0, "{ratio}");
        let changed: Vec<(&str, &str)> = changes
            .iter()
            .filter(|c| c.op != "equal")
            .map(|c| (c.op.as_str(), c.text.as_str()))
            .collect();
        assert_eq!(changed, vec![("delete", "5"), ("insert", "five")]);
    }

    #[test]
    fn shingles_hashed_four_at_a_time_are_the_shingles_hashed_one_by_one() {
        let vocabulary = [
            "",
            "a",
            "police",
            "Gwent",
            "Môn",
            "two words",
            "£5",
            "abcdefghijklmnop",
        ];
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..2_000 {
            let words: Vec<&str> = (0..3 + rng.usize(..20))
                .map(|_| vocabulary[rng.usize(..vocabulary.len())])
                .collect();
            let mut one_by_one: Vec<u64> = words.windows(3).map(shingle_hash).collect();
            let mut together = Vec::new();
            shingle_hashes(&words, |h| together.push(h));
            one_by_one.sort_unstable();
            together.sort_unstable();
            assert_eq!(together, one_by_one, "{words:?}");
        }
    }

    #[test]
    fn minhash_is_deterministic_and_close_for_close_texts() {
        let a: Vec<&str> = "the quick brown fox jumps over the lazy dog again and again today"
            .split(' ')
            .collect();
        let b: Vec<&str> = "the quick brown fox jumps over the lazy cat again and again today"
            .split(' ')
            .collect();
        assert_eq!(minhash(&a), minhash(&a));
        let same = minhash(&a)
            .iter()
            .zip(minhash(&b))
            .filter(|(x, y)| **x == *y)
            .count();
        assert!(same > 40, "{same}");
    }

    /// Banding favours recall (see ../shared/pitfalls.md): pairs at the confirmation threshold
    /// must nearly always share a band, so that the exact check gets to see them.
    #[test]
    fn pairs_at_the_threshold_share_a_band() {
        let vocabulary: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut at_threshold, mut found) = (0, 0);
        for _ in 0..300 {
            let len = 40 + rng.usize(..200);
            let a: Vec<&str> = (0..len)
                .map(|_| vocabulary[rng.usize(..vocabulary.len())].as_str())
                .collect();
            let mut b = a.clone();
            // Scattered substitutions: the hardest case for shingles.
            for _ in 0..(len * (5 + rng.usize(..6)) / 100).max(1) {
                let at = rng.usize(..len);
                b[at] = "changed";
            }
            let ratio = similarity(&a.join(" "), &b.join(" "));
            if ratio < 0.9 {
                continue;
            }
            at_threshold += 1;
            let (sa, sb) = (band_buckets(&minhash(&a)), band_buckets(&minhash(&b)));
            if sa.iter().zip(sb.iter()).any(|(x, y)| x == y) {
                found += 1;
            }
        }
        assert!(at_threshold > 200, "{at_threshold}");
        assert!(
            found as f64 >= 0.97 * at_threshold as f64,
            "{found} of {at_threshold} pairs at ratio >= 0.9 became candidates"
        );
    }

    #[test]
    fn words_are_split_at_spaces_as_split_gives_them() {
        for text in [
            "",
            " ",
            "one",
            "one two",
            "  one  two ",
            "caf\u{e9} na\u{ef}ve  \u{2014} x",
        ] {
            let expected: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
            assert_eq!(words_of(text), expected, "{text:?}");
        }
    }

    #[test]
    fn sentences_split_without_breaking_urls() {
        assert_eq!(
            sentences("One in Gwent. Two (GOV.UK (www.gov.uk)). Three?"),
            vec!["One in Gwent.", "Two (GOV.UK (www.gov.uk)).", "Three?"]
        );
    }
}
