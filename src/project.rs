//! Projections: log events in, current views out (sled tree `views`), checkpointed.
//!
//! Views are pure functions of the log (and the topic rules in config): applying new events
//! incrementally after every ingest or fetch gives byte for byte what `rebuild` (drop everything,
//! replay from event 1) gives. Each batch of events and the checkpoint land in one atomic write.
//!
//! Keys (UTF-8, parts separated by U+001F):
//!
//! | key | value |
//! |---|---|
//! | `q` question | [`QuestionView`] JSON |
//! | `o` block | posting block of (latest seq, question): recency order |
//! | `b` body (lower case) block, `m` member (lower case) block, `t` topic block, `f` force block | posting block of (latest seq, question) |
//! | `a` api-id (20 digits) | question (only when the question is not keyed `api:` + that id) |
//! | `s` force block | posting block of (seq, the rows that answer gives for the force: `StoredStats` JSON) |
//! | `k` flag-kind block | posting block of flag seqs: flags by kind |
//! | `d` group question | [`DuplicateMember`] JSON |
//! | `\0format` | the layout version (views without it are rebuilt) |
//!
//! A block is a sequence number divided by [`postings::BLOCK`] ([`postings::MEMBER_BLOCK`] for
//! `m`), as 20 digits; a posting block holds the entries of its index value whose seq falls in
//! it (see [`postings`]).

use std::borrow::Borrow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::TopicConfig;
use crate::event::{Envelope, Event, FlagDetail, QuestionKey};
use crate::log::{EventLog, LogError};
use crate::overlay::{Overlay, OverlayError};
use crate::record::AnswerRecord;
use crate::stats;

mod postings;

const TREE: &str = "views";
const CHECKPOINT: &[u8] = b"\x00checkpoint";
/// The views' layout: "9" keeps the indexes and statistics rows (`StoredStats`) in posting
/// blocks of 128 seqs, members' in wider ones ("3" had a key per entry, "4" blocks of indexes
/// only, "5" member blocks as narrow as the others, "6" blocks of 1,024 seqs, "7" statistics
/// rows stored whole, "8" a "Year" column of numbers read as figures). Views without this
/// marker are rebuilt, so that they stay what a rebuild gives.
const FORMAT_KEY: &[u8] = b"\x00format";
const FORMAT: &[u8] = b"9";
const BATCH: usize = 1000;
const SEP: char = '\u{1f}';

#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("views: {0}")]
    Overlay(#[from] OverlayError),
}

impl From<sled::Error> for ProjectError {
    fn from(e: sled::Error) -> Self {
        ProjectError::Log(LogError::Storage(e))
    }
}

/// The current state of one question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionView {
    pub question: QuestionKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_answered: Option<String>,
    pub answering_body: String,
    pub asking_member: String,
    pub answering_member: String,
    /// Kind of the latest content event.
    pub kind: String,
    pub latest_seq: u64,
    pub history: Vec<HistoryEntry>,
    pub topics: Vec<String>,
    pub forces: Vec<String>,
    /// The forces its statistics rows are about (where its rows are stored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stat_forces: Vec<String>,
    /// Sequence numbers of the flags raised about this question.
    pub flags: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub seq: u64,
    pub kind: String,
    pub recorded_at: String,
}

/// One statistic with the answer it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatRow {
    #[serde(flatten)]
    pub stat: stats::Statistic,
    pub question: QuestionKey,
    pub seq: u64,
}

/// How the rows one answer gives for one force are stored in a statistics block: the question
/// and the force's name once, each row as `[period, measure, value, table, row]`; the force id
/// is in the block's key and the seq in the entry. Rows written out whole, as `StatRow`s, made
/// the statistics blocks four times bigger (75 MB at 200k answers), rewritten at every batch.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct StoredStats {
    question: QuestionKey,
    force: String,
    rows: Vec<(String, String, f64, usize, usize)>,
}

impl StoredStats {
    /// The statistics of one answer for one force, which all carry that force's canonical name.
    fn of(question: &QuestionKey, stats: impl Iterator<Item = stats::Statistic>) -> StoredStats {
        let mut stored = StoredStats {
            question: question.clone(),
            force: String::new(),
            rows: Vec::new(),
        };
        for stat in stats {
            stored.force = stat.force;
            stored
                .rows
                .push((stat.period, stat.measure, stat.value, stat.table, stat.row));
        }
        stored
    }

    fn encode(&self) -> String {
        // Plain strings, numbers and a derived map key: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn rows(self, force_id: &str, seq: u64) -> impl Iterator<Item = StatRow> + '_ {
        let StoredStats {
            question,
            force,
            rows,
        } = self;
        rows.into_iter()
            .map(move |(period, measure, value, table, row)| StatRow {
                stat: stats::Statistic {
                    force_id: force_id.to_string(),
                    force: force.clone(),
                    period,
                    measure,
                    value,
                    table,
                    row,
                },
                question: question.clone(),
                seq,
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DuplicateMember {
    pub question: QuestionKey,
    pub seq: u64,
    pub exact: bool,
    pub ratio: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectReport {
    pub events_applied: u64,
    pub checkpoint: u64,
}

fn key(parts: &[&str]) -> Vec<u8> {
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push(SEP);
        }
        s.push_str(p);
    }
    s.into_bytes()
}

fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = key(parts);
    let mut sep = [0u8; 1];
    SEP.encode_utf8(&mut sep);
    k.push(sep[0]);
    k
}

fn seq_text(seq: u64) -> String {
    format!("{seq:020}")
}

fn read_checkpoint(tree: &sled::Tree) -> Result<u64, ProjectError> {
    Ok(crate::overlay::read_checkpoint(tree, CHECKPOINT)?)
}

/// The views' checkpoint: the last event applied.
pub fn checkpoint(log: &EventLog) -> Result<u64, ProjectError> {
    read_checkpoint(&log.db().open_tree(TREE)?)
}

/// Applies every event after the checkpoint.
pub fn run(log: &EventLog, topics: &[TopicConfig]) -> Result<ProjectReport, ProjectError> {
    let mut consumer = ProjectConsumer::open(log, topics)?;
    let head = log.head()?;
    log.for_each_batch(consumer.checkpoint() + 1, head, BATCH, |batch| {
        consumer.apply(&batch)
    })?;
    let report = consumer.finish();
    if report.events_applied > 0 {
        log.flush()?;
    }
    Ok(report)
}

/// The projections as a consumer of batches of events read by someone else (the pipeline reads
/// each batch once for all consumers). Events at or before its checkpoint are skipped.
pub struct ProjectConsumer<'t> {
    topics: &'t [TopicConfig],
    tree: sled::Tree,
    report: ProjectReport,
}

impl<'t> ProjectConsumer<'t> {
    pub fn open(
        log: &EventLog,
        topics: &'t [TopicConfig],
    ) -> Result<ProjectConsumer<'t>, ProjectError> {
        let mut tree = log.db().open_tree(TREE)?;
        let mut checkpoint = read_checkpoint(&tree)?;
        if checkpoint > 0 && tree.get(FORMAT_KEY)?.as_deref() != Some(FORMAT) {
            // Views in an older layout: replayed from the log (they are a function of it).
            tracing::info!(
                checkpoint,
                "views are in an older layout; rebuilding them from the log"
            );
            drop(tree);
            log.db().drop_tree(TREE)?;
            tree = log.db().open_tree(TREE)?;
            checkpoint = 0;
        }
        Ok(ProjectConsumer {
            topics,
            tree,
            report: ProjectReport {
                events_applied: 0,
                checkpoint,
            },
        })
    }

    pub fn checkpoint(&self) -> u64 {
        self.report.checkpoint
    }

    /// Applies the events of `batch` after the checkpoint, with the checkpoint, in one write.
    /// The events may be borrowed from several places (the log, or appends held in memory).
    pub fn apply<E: Borrow<Envelope>>(&mut self, batch: &[E]) -> Result<(), ProjectError> {
        let mut overlay = Overlay::new(&self.tree);
        let mut last = None;
        let checkpoint = self.report.checkpoint;
        for envelope in batch
            .iter()
            .map(Borrow::borrow)
            .filter(|e| e.seq > checkpoint)
        {
            apply(&mut overlay, self.topics, envelope)?;
            last = Some(envelope.seq);
            self.report.events_applied += 1;
        }
        if let Some(last) = last {
            self.tree.apply_batch(overlay.into_batch(&[
                (CHECKPOINT, last.to_be_bytes().to_vec()),
                (FORMAT_KEY, FORMAT.to_vec()),
            ]))?;
            self.report.checkpoint = last;
        }
        Ok(())
    }

    pub fn finish(self) -> ProjectReport {
        self.report
    }
}

/// Drops every view and replays the whole log. Returns the digest of the views before and after.
pub fn rebuild(
    log: &EventLog,
    topics: &[TopicConfig],
) -> Result<(String, String, ProjectReport), ProjectError> {
    let tree = log.db().open_tree(TREE)?;
    let before = crate::overlay::tree_digest(&tree)?;
    drop(tree);
    // Dropping the tree frees its pages at once; `clear` removes key by key.
    log.db().drop_tree(TREE)?;
    log.flush()?;
    let tree = log.db().open_tree(TREE)?;
    let report = run(log, topics)?;
    let after = crate::overlay::tree_digest(&tree)?;
    Ok((before, after, report))
}

/// The digest of the views as they stand.
pub fn digest(log: &EventLog) -> Result<String, ProjectError> {
    Ok(crate::overlay::tree_digest(&log.db().open_tree(TREE)?)?)
}

fn apply(
    state: &mut Overlay<'_>,
    topics: &[TopicConfig],
    envelope: &Envelope,
) -> Result<(), ProjectError> {
    let counter = key(&["n", envelope.event.kind()]);
    let count = state
        .get(&counter)?
        .and_then(|v| {
            v.get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        })
        .unwrap_or(0);
    state.put(counter, (count + 1).to_be_bytes().to_vec());
    match &envelope.event {
        Event::FlagRaised { flag } => {
            let block = seq_text(postings::block_of(envelope.seq));
            let k = key(&["k", flag.detail.kind(), &block]);
            state.modify(k.clone(), |b| postings::insert(&k, b, envelope.seq, ""))?;
            if let Some(question) = &flag.question {
                let qkey = key(&["q", question.as_str()]);
                if let Some(mut view) = state.get_json::<QuestionView>(&qkey)? {
                    view.flags.push(envelope.seq);
                    state.put_json(qkey, &view);
                }
                if let FlagDetail::DuplicateAnswer {
                    of_question,
                    of_seq,
                    group,
                    exact,
                    ratio,
                } = &flag.detail
                {
                    let root = key(&["d", group.as_str(), group.as_str()]);
                    if state.get(&root)?.is_none() {
                        let root_seq = if of_question == group { *of_seq } else { 0 };
                        state.put_json(
                            root,
                            &DuplicateMember {
                                question: group.clone(),
                                seq: root_seq,
                                exact: true,
                                ratio: 1.0,
                            },
                        );
                    }
                    state.put_json(
                        key(&["d", group.as_str(), question.as_str()]),
                        &DuplicateMember {
                            question: question.clone(),
                            seq: envelope.seq,
                            exact: *exact,
                            ratio: *ratio,
                        },
                    );
                }
            }
        }
        Event::RecordQuarantined { .. } | Event::AlertSent { .. } => {}
        event => {
            let (Some(question), Some(record)) = (event.question(), event.record()) else {
                return Ok(());
            };
            apply_answer(state, topics, envelope, question, record)?;
        }
    }
    Ok(())
}

fn apply_answer(
    state: &mut Overlay<'_>,
    topics: &[TopicConfig],
    envelope: &Envelope,
    question: &QuestionKey,
    record: &AnswerRecord,
) -> Result<(), ProjectError> {
    let q = question.as_str();
    let qkey = key(&["q", q]);
    let previous = state.get_json::<QuestionView>(&qkey)?;
    // The previous content's index entries and statistics go; the new content's come. The
    // view names all of them.
    if let Some(view) = &previous {
        for k in index_keys(view) {
            state.modify(k.clone(), |b| postings::remove(&k, b, view.latest_seq, q))?;
        }
        for k in stat_keys(view) {
            state.modify(k.clone(), |b| postings::remove_seq(&k, b, view.latest_seq))?;
        }
        if let Some(k) = api_id_key(view) {
            state.remove(k);
        }
    }
    let api = record.api.as_ref();
    let topic_names = matching_topics(topics, record);
    let force_ids: Vec<String> = record.forces.iter().map(|f| f.id.clone()).collect();
    let seq = envelope.seq;
    // Per force, the rows in the order of the statistics query; a row repeating another's
    // place (measure, period, table, row) replaces it.
    type Place = (String, String, usize, usize);
    let mut by_force: BTreeMap<String, BTreeMap<Place, stats::Statistic>> = BTreeMap::new();
    for stat in stats::statistics(record) {
        let place = (
            stats::normalise_measure(&stat.measure),
            stat.period.clone(),
            stat.table,
            stat.row,
        );
        by_force
            .entry(stat.force_id.clone())
            .or_default()
            .insert(place, stat);
    }
    let block = seq_text(postings::block_of(seq));
    let mut stat_forces = Vec::with_capacity(by_force.len());
    for (force, rows) in by_force {
        let payload = StoredStats::of(question, rows.into_values()).encode();
        let k = key(&["s", &force, &block]);
        state.modify(k.clone(), |b| postings::insert(&k, b, seq, &payload))?;
        stat_forces.push(force);
    }

    let mut history = previous
        .as_ref()
        .map(|v| v.history.clone())
        .unwrap_or_default();
    history.push(HistoryEntry {
        seq,
        kind: envelope.event.kind().to_string(),
        recorded_at: envelope.recorded_at.clone(),
    });
    let view = QuestionView {
        question: question.clone(),
        api_id: record.api_id,
        uin: api.and_then(|a| a.uin.clone()),
        heading: api.and_then(|a| a.heading.clone()),
        date_answered: api.and_then(|a| a.date_answered.clone()),
        answering_body: record.answering_body.clone(),
        asking_member: record.asking_member.name.clone(),
        answering_member: record.answering_member.name.clone(),
        kind: envelope.event.kind().to_string(),
        latest_seq: seq,
        history,
        topics: topic_names,
        forces: force_ids,
        stat_forces,
        flags: previous.map(|v| v.flags).unwrap_or_default(),
    };
    for k in index_keys(&view) {
        state.modify(k.clone(), |b| postings::insert(&k, b, seq, q))?;
    }
    if let Some(k) = api_id_key(&view) {
        state.put(k, q.as_bytes().to_vec());
    }
    state.put_json(qkey, &view);
    Ok(())
}

/// The posting blocks a question's view has an entry `(latest seq, question)` in: recency
/// (`o`), body, member, topics and forces, each in the block of its latest seq.
fn index_keys(view: &QuestionView) -> Vec<Vec<u8>> {
    let block = seq_text(postings::block_of(view.latest_seq));
    let member_block = seq_text(postings::member_block_of(view.latest_seq));
    let mut keys = vec![
        key(&["o", &block]),
        key(&["b", &view.answering_body.to_lowercase(), &block]),
        key(&["m", &view.asking_member.to_lowercase(), &member_block]),
    ];
    for topic in &view.topics {
        keys.push(key(&["t", topic, &block]));
    }
    for force in &view.forces {
        keys.push(key(&["f", force, &block]));
    }
    keys
}

/// The statistics blocks a question's view has an entry in: one per force its rows are about.
fn stat_keys(view: &QuestionView) -> Vec<Vec<u8>> {
    let block = seq_text(postings::block_of(view.latest_seq));
    view.stat_forces
        .iter()
        .map(|force| key(&["s", force, &block]))
        .collect()
}

/// The API id's key (`a`, valued with the question), only when the question's key is not
/// already `api:` and the id.
fn api_id_key(view: &QuestionView) -> Option<Vec<u8>> {
    let id = view.api_id?;
    (view.question.as_str() != format!("api:{id}")).then(|| key(&["a", &seq_text(id)]))
}

/// Whether a record belongs to a topic (see config/default.toml).
pub fn topic_matches(topic: &TopicConfig, record: &AnswerRecord) -> bool {
    topic_matches_with(topic, record, &std::cell::OnceCell::new())
}

/// The names of the topics a record belongs to.
pub fn matching_topics(topics: &[TopicConfig], record: &AnswerRecord) -> Vec<String> {
    // The text to search is made once for all topics, and only if a keyword needs it.
    let text = std::cell::OnceCell::new();
    topics
        .iter()
        .filter(|t| topic_matches_with(t, record, &text))
        .map(|t| t.name.clone())
        .collect()
}

fn topic_matches_with(
    topic: &TopicConfig,
    record: &AnswerRecord,
    text: &std::cell::OnceCell<SearchText>,
) -> bool {
    if topic.any_police_force && !record.forces.is_empty() {
        return true;
    }
    if topic
        .answering_bodies
        .iter()
        .any(|b| b.eq_ignore_ascii_case(&record.answering_body))
    {
        return true;
    }
    if topic.keywords.is_empty() {
        return false;
    }
    let text = text.get_or_init(|| SearchText::of(record));
    topic
        .keywords
        .iter()
        .any(|k| text.contains_word(&k.to_lowercase()))
}

/// A record's question and answer text, lower-cased, for keywords.
///
/// Searched a keyword at a time with `memchr::memmem` (vectorised). It used to carry a Bloom
/// filter of the text's words, so that most keywords were settled without `str::find`; building
/// the filter, a byte at a time over every answer, became a tenth of the views' thread's time
/// in a backfill, more than the searches it saved once they were vectorised.
pub struct SearchText {
    text: String,
}

impl SearchText {
    pub fn of(record: &AnswerRecord) -> SearchText {
        let mut text =
            String::with_capacity(record.question_text.len() + 1 + record.answer_source.text.len());
        text.push_str(&record.question_text);
        text.push('\n');
        record.answer.write_plain_text(&mut text);
        SearchText::new(crate::text::into_lowercase(text))
    }

    /// `text` already lower-cased.
    pub fn new(text: String) -> SearchText {
        SearchText { text }
    }

    /// [`contains_word`] on the text, for a lower-cased `keyword`.
    pub fn contains_word(&self, keyword: &str) -> bool {
        contains_word(&self.text, keyword)
    }
}

/// Whether `word` occurs in `text` with no letter or digit (`char::is_alphanumeric`) either
/// side. Occurrences are tried leftmost first, each search going on after the last one.
pub fn contains_word(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    // A match of a whole UTF-8 string in another starts and ends at character boundaries.
    memchr::memmem::find_iter(text.as_bytes(), word.as_bytes()).any(|start| {
        let end = start + word.len();
        match (text.get(..start), text.get(end..)) {
            (Some(before), Some(after)) => {
                boundary(before.chars().next_back()) && boundary(after.chars().next())
            }
            _ => false,
        }
    })
}

/// Read access to the views, for the CLI.
pub struct Views {
    tree: sled::Tree,
}

/// Filters for `questions`.
#[derive(Debug, Clone, Default)]
pub struct QuestionFilter {
    pub topic: Option<String>,
    pub body: Option<String>,
    pub member: Option<String>,
    /// A force id (resolve names with `forces::lookup` first).
    pub force: Option<String>,
}

impl Views {
    pub fn open(log: &EventLog) -> Result<Views, ProjectError> {
        Ok(Views {
            tree: log.db().open_tree(TREE)?,
        })
    }

    pub fn question(&self, question: &str) -> Result<Option<QuestionView>, ProjectError> {
        let overlay = Overlay::new(&self.tree);
        Ok(overlay.get_json(&key(&["q", question]))?)
    }

    /// A question by its key (`api:…`, `txt:…`) or by the API's numeric id.
    pub fn resolve(&self, id: &str) -> Result<Option<QuestionView>, ProjectError> {
        if let Ok(n) = id.parse::<u64>() {
            // Questions from the API are keyed by their id; the `a` index holds the others.
            if let Some(view) = self.question(&format!("api:{n}"))? {
                return Ok(Some(view));
            }
            if let Some(q) = self.tree.get(key(&["a", &seq_text(n)]))? {
                return self.question(&String::from_utf8_lossy(&q));
            }
            return Ok(None);
        }
        self.question(id)
    }

    /// Questions matching every filter given, most recently changed first, streamed. One index
    /// drives (member, force, topic or body, the likeliest to be narrow first; recency when no
    /// filter is given) and the view is checked against the other filters.
    pub fn questions<'a>(
        &'a self,
        filter: &'a QuestionFilter,
    ) -> impl Iterator<Item = Result<QuestionView, ProjectError>> + 'a {
        let lower = |v: &Option<String>| v.as_ref().map(|v| v.to_lowercase());
        let body = lower(&filter.body);
        let member = lower(&filter.member);
        let driving = match (&member, &filter.force, &filter.topic, &body) {
            (Some(member), ..) => prefix(&["m", member]),
            (None, Some(force), ..) => prefix(&["f", force]),
            (None, None, Some(topic), _) => prefix(&["t", topic]),
            (None, None, None, Some(body)) => prefix(&["b", body]),
            (None, None, None, None) => prefix(&["o"]),
        };
        self.tree
            .scan_prefix(driving)
            .rev()
            .flat_map(|entry| -> Vec<Result<(u64, String), ProjectError>> {
                let (k, block) = match entry {
                    Ok(kv) => kv,
                    Err(e) => return vec![Err(e.into())],
                };
                postings::entries(&k, &block)
                    .map(|p| {
                        p.map(|p| (p.seq, p.payload.to_string()))
                            .map_err(ProjectError::from)
                    })
                    .collect()
            })
            .filter_map(move |entry| {
                let result = (|| -> Result<Option<QuestionView>, ProjectError> {
                    let (seq, q) = entry?;
                    let Some(view) = self.question(&q)? else {
                        return Ok(None);
                    };
                    let matches = view.latest_seq == seq
                        && body
                            .as_ref()
                            .is_none_or(|b| view.answering_body.to_lowercase() == *b)
                        && member
                            .as_ref()
                            .is_none_or(|m| view.asking_member.to_lowercase() == *m)
                        && filter
                            .topic
                            .as_ref()
                            .is_none_or(|t| view.topics.contains(t))
                        && filter
                            .force
                            .as_ref()
                            .is_none_or(|f| view.forces.contains(f));
                    Ok(matches.then_some(view))
                })();
                result.transpose()
            })
    }

    /// Statistics for a force (by id), optionally only measures containing `measure`, ordered
    /// by measure, period, question, table and row. Holds one force's rows at a time.
    pub fn stats<'a>(
        &'a self,
        force_id: &str,
        measure: Option<&'a str>,
    ) -> impl Iterator<Item = Result<StatRow, ProjectError>> + 'a {
        let measure = measure.map(|m| m.to_lowercase());
        let rows = self.force_rows(force_id);
        let rows = match rows {
            Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(e) => vec![Err(e)],
        };
        rows.into_iter().filter(move |row| match (row, &measure) {
            (Ok(r), Some(m)) => r.stat.measure.to_lowercase().contains(m.as_str()),
            _ => true,
        })
    }

    /// Every statistic, force by force (each force's rows as [`Views::stats`] orders them).
    pub fn all_stats(&self) -> impl Iterator<Item = Result<StatRow, ProjectError>> + '_ {
        // Forces in key order, found by skipping past each force's blocks.
        let mut next_from = prefix(&["s"]);
        let mut done = false;
        std::iter::from_fn(move || {
            if done {
                return None;
            }
            let found = self.tree.range(next_from.clone()..).next();
            let force = match found {
                Some(Ok((k, _))) if k.starts_with(&prefix(&["s"])) => {
                    let text = String::from_utf8_lossy(&k).into_owned();
                    text.split(SEP).nth(1).unwrap_or_default().to_string()
                }
                Some(Err(e)) => {
                    done = true;
                    return Some(vec![Err(ProjectError::from(e))]);
                }
                _ => return None,
            };
            next_from = prefix(&["s", &force]);
            next_from.push(0xff);
            Some(match self.force_rows(&force) {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => {
                    done = true;
                    vec![Err(e)]
                }
            })
        })
        .flatten()
    }

    /// The rows of a force's statistics blocks, in the statistics order.
    fn force_rows(&self, force_id: &str) -> Result<Vec<StatRow>, ProjectError> {
        let mut rows = Vec::new();
        for entry in self.tree.scan_prefix(prefix(&["s", force_id])) {
            let (k, block) = entry?;
            for posting in postings::entries(&k, &block) {
                let posting = posting?;
                let stored: StoredStats = serde_json::from_str(posting.payload).map_err(|e| {
                    ProjectError::Overlay(OverlayError::Decode {
                        key: String::from_utf8_lossy(&k).into_owned(),
                        why: e.to_string(),
                    })
                })?;
                rows.extend(stored.rows(force_id, posting.seq));
            }
        }
        let mut keyed: Vec<_> = rows
            .into_iter()
            .map(|r| (stats::normalise_measure(&r.stat.measure), r))
            .collect();
        keyed.sort_by(|(ma, a), (mb, b)| {
            (ma, &a.stat.period, &a.question.0, a.stat.table, a.stat.row).cmp(&(
                mb,
                &b.stat.period,
                &b.question.0,
                b.stat.table,
                b.stat.row,
            ))
        });
        Ok(keyed.into_iter().map(|(_, r)| r).collect())
    }

    /// How many events of each kind the log holds (as far as the views have read it).
    pub fn counts_by_kind(&self) -> Result<Vec<(String, u64)>, ProjectError> {
        let mut counts = Vec::new();
        for entry in self.tree.scan_prefix(prefix(&["n"])) {
            let (k, v) = entry?;
            let kind = String::from_utf8_lossy(&k)
                .rsplit(SEP)
                .next()
                .unwrap_or_default()
                .to_string();
            let n = v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            counts.push((kind, n));
        }
        Ok(counts)
    }

    /// Sequence numbers of flags, of one kind or all, in log order.
    pub fn flag_seqs(&self, kind: Option<&str>) -> Result<Vec<u64>, ProjectError> {
        let p = match kind {
            Some(kind) => prefix(&["k", kind]),
            None => prefix(&["k"]),
        };
        let mut seqs = Vec::new();
        for entry in self.tree.scan_prefix(p) {
            let (k, block) = entry?;
            for posting in postings::entries(&k, &block) {
                seqs.push(posting?.seq);
            }
        }
        seqs.sort_unstable();
        Ok(seqs)
    }

    /// Groups of answers that repeat each other: (group, members including the first).
    pub fn duplicate_groups(
        &self,
    ) -> Result<Vec<(QuestionKey, Vec<DuplicateMember>)>, ProjectError> {
        let mut groups: Vec<(QuestionKey, Vec<DuplicateMember>)> = Vec::new();
        for entry in self.tree.scan_prefix(prefix(&["d"])) {
            let (k, v) = entry?;
            let text = String::from_utf8_lossy(&k).into_owned();
            let group = text.split(SEP).nth(1).unwrap_or_default().to_string();
            let member: DuplicateMember = serde_json::from_slice(&v).map_err(|e| {
                ProjectError::Overlay(OverlayError::Decode {
                    key: text.clone(),
                    why: e.to_string(),
                })
            })?;
            match groups.last_mut() {
                Some((g, members)) if g.0 == group => members.push(member),
                _ => groups.push((QuestionKey(group), vec![member])),
            }
        }
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(groups)
    }
}

#[cfg(test)]
mod tests;
