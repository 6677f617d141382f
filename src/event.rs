//! Events: what the log stores. Observations in (from the parsers), versioned envelopes out.
//!
//! An [`Envelope`] wraps every [`Event`] with the sequence number the log assigned, when it was
//! recorded, where it came from, and the content hash that makes appends idempotent. Events are
//! plain serde data tagged by `kind`; every field added after schema 1 must carry
//! `#[serde(default)]` so that every event ever stored stays readable (a test decodes events stored
//! on the day schema 1 shipped, `tests/fixtures/events/`).
//!
//! The content hash is computed from an explicit, versioned fingerprint of the record (not from
//! its serde form), so adding a field to the record later does not change the hash of an answer
//! that did not change, and re-fetching an old answer stays a no-op.

use serde::{Deserialize, Serialize};

mod decode;
use sha2::{Digest, Sha256};

use crate::record::{AnswerRecord, SourceFormat};

/// The schema version written into every new envelope.
pub const SCHEMA_VERSION: u32 = 1;

/// A stored event with its metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub schema: u32,
    /// Position in the log: 1, 2, 3, ... without gaps.
    pub seq: u64,
    /// RFC 3339 time (UTC) at which the log recorded the event.
    pub recorded_at: String,
    pub source: Source,
    /// Hex SHA-256 of the normalised payload (see [`fingerprint_answer`]).
    pub content_hash: String,
    pub event: Event,
}

/// Where an observation came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The file path as given to `ingest`, or the API URL.
    pub uri: String,
    /// 0-based index of the record in that file or page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// 1-based line where the record starts, for text files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

/// A question's identity across sources and re-fetches.
///
/// `api:{id}` when the Parliament API's id is known; for text dumps, `txt:` and a digest of the
/// asking member, answering body and question text (normalised), so that the same question in two
/// dumps is one question.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct QuestionKey(pub String);

impl QuestionKey {
    pub fn of(record: &AnswerRecord) -> QuestionKey {
        if let Some(id) = record.api_id {
            return QuestionKey(format!("api:{id}"));
        }
        let mut hasher = Sha256::new();
        for part in [
            &record.asking_member.name,
            &record.answering_body,
            &record.question_text,
        ] {
            hasher.update(normalise_text(part).as_bytes());
            hasher.update([0x1f]);
        }
        let digest = hex(&hasher.finalize());
        QuestionKey(format!("txt:{}", &digest[..32]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for QuestionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What happened. New kinds are added as new variants; existing ones never change meaning.
/// Stored as JSON with `kind` first; read back by `decode.rs` (tag first, without buffering).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A question and its answer, seen for the first time.
    AnswerObserved {
        question: QuestionKey,
        record: Box<AnswerRecord>,
    },
    /// A question seen before, now with different content.
    AnswerRevised {
        question: QuestionKey,
        previous_hash: String,
        previous_seq: u64,
        record: Box<AnswerRecord>,
    },
    /// The API gave a holding answer ("I will reply as soon as possible"), not yet the substantive
    /// one. `previous_*` are set when the question was seen before.
    HoldingAnswerGiven {
        question: QuestionKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_hash: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_seq: Option<u64>,
        record: Box<AnswerRecord>,
    },
    /// The API marks the answer as a correction; the text before it is kept.
    AnswerCorrected {
        question: QuestionKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_hash: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_seq: Option<u64>,
        /// The answer before the correction, as the API gives it (HTML).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        original_answer_text: Option<String>,
        record: Box<AnswerRecord>,
    },
    /// The question was withdrawn.
    QuestionWithdrawn {
        question: QuestionKey,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_hash: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous_seq: Option<u64>,
        record: Box<AnswerRecord>,
    },
    /// An alert email was accepted by the mail server.
    AlertSent { alert: AlertSent },
    /// Something the diff module noticed (a correction's word diff, a tracked list that changed, a
    /// duplicate, a figure that changed, a total that does not add up).
    FlagRaised { flag: Flag },
    /// Input that could not be parsed, kept whole with the reason.
    RecordQuarantined {
        reason: String,
        /// The raw input as text (invalid UTF-8 replaced by U+FFFD).
        raw: String,
        /// The exact raw bytes, base64, when they were not valid UTF-8 (so nothing is lost).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        raw_base64: Option<String>,
    },
}

/// Every `kind` an event can have, for reports that count by kind.
pub const KINDS: &[&str] = &[
    "answer_observed",
    "answer_revised",
    "holding_answer_given",
    "answer_corrected",
    "question_withdrawn",
    "flag_raised",
    "alert_sent",
    "record_quarantined",
];

/// The record of one delivered alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertSent {
    /// The outbox item's id (subscription, events, recipient).
    pub id: String,
    pub subscription: String,
    pub recipient: String,
    pub message_id: String,
    /// The events the email was about.
    pub covers: Vec<u64>,
}

/// A flag raised by the diff module about one or more events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    /// The event whose arrival raised the flag.
    pub derived_from: u64,
    /// The question the flag is about, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question: Option<QuestionKey>,
    #[serde(flatten)]
    pub detail: FlagDetail,
}

/// One word-diff operation, as stored with a correction flag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WordChange {
    /// "equal", "delete" or "insert".
    pub op: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "flag", rename_all = "snake_case")]
pub enum FlagDetail {
    /// The answer's text changed (a revision or correction), with the word diff.
    AnswerChanged {
        previous_seq: u64,
        previous_kind: String,
        /// similar's ratio of the two texts (1.0 = identical).
        ratio: f64,
        changes: Vec<WordChange>,
    },
    /// A tracked list of entities differs from the previous answer on the subject.
    TrackedListChanged {
        tracker: String,
        title: String,
        previous_question: QuestionKey,
        previous_seq: u64,
        added: Vec<String>,
        removed: Vec<String>,
        /// The whole list now.
        set: Vec<String>,
        /// The answer arrived after a later-dated one (it is compared with its predecessor in
        /// date order, not with the latest).
        #[serde(default)]
        late: bool,
    },
    /// The answer repeats (exactly or nearly) an answer to a different question.
    DuplicateAnswer {
        of_question: QuestionKey,
        of_seq: u64,
        /// The first question of the group of answers that repeat each other.
        group: QuestionKey,
        exact: bool,
        ratio: f64,
    },
    /// The same figure (force, period, measure) with a different value than an earlier answer.
    FigureChanged {
        force_id: String,
        force: String,
        period: String,
        measure: String,
        previous_value: f64,
        value: f64,
        previous_question: QuestionKey,
        previous_seq: u64,
    },
    /// A table's total row is not the sum of the rows it totals.
    TotalMismatch {
        table: usize,
        row: usize,
        column: String,
        group: String,
        stated: f64,
        summed: f64,
    },
}

impl FlagDetail {
    pub fn kind(&self) -> &'static str {
        match self {
            FlagDetail::AnswerChanged { .. } => "answer_changed",
            FlagDetail::TrackedListChanged { .. } => "tracked_list_changed",
            FlagDetail::DuplicateAnswer { .. } => "duplicate_answer",
            FlagDetail::FigureChanged { .. } => "figure_changed",
            FlagDetail::TotalMismatch { .. } => "total_mismatch",
        }
    }
}

/// Every flag kind, for `flags --kind`.
pub const FLAG_KINDS: &[&str] = &[
    "answer_changed",
    "tracked_list_changed",
    "duplicate_answer",
    "figure_changed",
    "total_mismatch",
];

impl Event {
    /// The event for a question's content that is not yet in the log. `previous` is the
    /// question's latest (seq, content hash) when it was seen before. What the API says about the
    /// question's state decides the kind; otherwise it is a first observation or a revision.
    pub fn for_answer(
        question: QuestionKey,
        record: Box<AnswerRecord>,
        previous: Option<(u64, String)>,
    ) -> Event {
        let api = record.api.as_ref();
        let (previous_seq, previous_hash) = match previous {
            Some((seq, hash)) => (Some(seq), Some(hash)),
            None => (None, None),
        };
        if api.is_some_and(|a| a.is_withdrawn) {
            return Event::QuestionWithdrawn {
                question,
                previous_hash,
                previous_seq,
                record,
            };
        }
        if api.is_some_and(|a| a.is_holding) {
            return Event::HoldingAnswerGiven {
                question,
                previous_hash,
                previous_seq,
                record,
            };
        }
        if let Some(api) = api.filter(|a| a.is_correction) {
            return Event::AnswerCorrected {
                question,
                previous_hash,
                previous_seq,
                original_answer_text: api.original_answer_text.clone(),
                record,
            };
        }
        match (previous_seq, previous_hash) {
            (Some(previous_seq), Some(previous_hash)) => Event::AnswerRevised {
                question,
                previous_hash,
                previous_seq,
                record,
            },
            _ => Event::AnswerObserved { question, record },
        }
    }

    /// The `kind` tag as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AnswerObserved { .. } => "answer_observed",
            Event::AnswerRevised { .. } => "answer_revised",
            Event::HoldingAnswerGiven { .. } => "holding_answer_given",
            Event::AnswerCorrected { .. } => "answer_corrected",
            Event::QuestionWithdrawn { .. } => "question_withdrawn",
            Event::FlagRaised { .. } => "flag_raised",
            Event::AlertSent { .. } => "alert_sent",
            Event::RecordQuarantined { .. } => "record_quarantined",
        }
    }

    /// The question part of the identity the log's idempotency index keeps for this event.
    pub fn identity_question(&self) -> QuestionKey {
        match self {
            Event::FlagRaised { .. } => QuestionKey(FLAG_IDENTITY.to_string()),
            Event::AlertSent { .. } => QuestionKey(ALERT_IDENTITY.to_string()),
            Event::RecordQuarantined { .. } => QuestionKey(QUARANTINE_IDENTITY.to_string()),
            other => other
                .question()
                .cloned()
                .unwrap_or_else(|| QuestionKey(QUARANTINE_IDENTITY.to_string())),
        }
    }

    pub fn question(&self) -> Option<&QuestionKey> {
        match self {
            Event::AnswerObserved { question, .. }
            | Event::AnswerRevised { question, .. }
            | Event::HoldingAnswerGiven { question, .. }
            | Event::AnswerCorrected { question, .. }
            | Event::QuestionWithdrawn { question, .. } => Some(question),
            Event::FlagRaised { .. }
            | Event::AlertSent { .. }
            | Event::RecordQuarantined { .. } => None,
        }
    }

    pub fn record(&self) -> Option<&AnswerRecord> {
        match self {
            Event::AnswerObserved { record, .. }
            | Event::AnswerRevised { record, .. }
            | Event::HoldingAnswerGiven { record, .. }
            | Event::AnswerCorrected { record, .. }
            | Event::QuestionWithdrawn { record, .. } => Some(record),
            Event::FlagRaised { .. }
            | Event::AlertSent { .. }
            | Event::RecordQuarantined { .. } => None,
        }
    }

    /// The sequence number of the question's previous content, for kinds that follow one.
    pub fn previous_seq(&self) -> Option<u64> {
        match self {
            Event::AnswerRevised { previous_seq, .. } => Some(*previous_seq),
            Event::HoldingAnswerGiven { previous_seq, .. }
            | Event::AnswerCorrected { previous_seq, .. }
            | Event::QuestionWithdrawn { previous_seq, .. } => *previous_seq,
            Event::AnswerObserved { .. }
            | Event::FlagRaised { .. }
            | Event::AlertSent { .. }
            | Event::RecordQuarantined { .. } => None,
        }
    }
}

/// Something seen in a source, before the log decides whether it is new.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub source: Source,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Answer(Box<AnswerRecord>),
    Unparseable { reason: String, raw: Vec<u8> },
    Flag(Box<Flag>),
    AlertSent(AlertSent),
}

const QUARANTINE_IDENTITY: &str = "quarantine";
const FLAG_IDENTITY: &str = "flag";
const ALERT_IDENTITY: &str = "alert";

impl Observation {
    /// The identity under which idempotency is decided, and the content hash.
    ///
    /// Quarantined input is identified by its bytes alone: the same broken record ingested twice
    /// is kept once.
    pub fn identity(&self) -> (QuestionKey, String) {
        match &self.payload {
            Payload::Answer(record) => (QuestionKey::of(record), fingerprint_answer(record)),
            Payload::Unparseable { raw, .. } => (
                QuestionKey(QUARANTINE_IDENTITY.to_string()),
                hex(&Sha256::digest(raw)),
            ),
            // A flag is identified by everything it says, including the event that raised it:
            // the diff module re-deriving it after a crash appends nothing.
            Payload::Flag(flag) => (
                QuestionKey(FLAG_IDENTITY.to_string()),
                hex(&Sha256::digest(
                    serde_json::to_vec(flag).unwrap_or_default(),
                )),
            ),
            // One delivery record per outbox item, whatever else differs.
            Payload::AlertSent(sent) => (
                QuestionKey(ALERT_IDENTITY.to_string()),
                hex(&Sha256::digest(sent.id.as_bytes())),
            ),
        }
    }
}

/// Whitespace runs as one space, curly quotes and dashes as plain ones, trimmed: differences
/// that sources introduce without the answer changing.
pub fn normalise_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    normalise_into(s, |piece| out.push_str(piece));
    out
}

/// [`normalise_text`] without building the string: the normalised text is handed to `sink` in
/// pieces (the content hash feeds them straight to SHA-256, which made hashing 3x cheaper than
/// allocating a mapped copy, a word list and the joined result).
fn normalise_into(s: &str, sink: impl FnMut(&str)) {
    let map = |c| match c {
        '\u{2018}' | '\u{2019}' | '\u{201B}' => '\'',
        '\u{201C}' | '\u{201D}' => '"',
        '\u{2013}' | '\u{2014}' => '-',
        '\u{00A0}' => ' ',
        other => other,
    };
    crate::text::collapse_whitespace_into(s, map, sink);
}

/// Content hash of an answer, version 1. Covers what a reader would call the answer's content:
/// who asked, of whom, what, who answered and the answer itself as the source gave it.
/// Not covered: where or when it was seen (feed position, source), and everything the parsers
/// derive (paragraphs, tables, forces), so improving a parser never changes a hash.
pub fn fingerprint_answer(record: &AnswerRecord) -> String {
    let mut h = Sha256::new();
    let mut field = |label: &str, value: &str| {
        h.update(label.as_bytes());
        h.update([0x1e]);
        normalise_into(value, |piece| h.update(piece.as_bytes()));
        h.update([0x1f]);
    };
    field("fingerprint", "answer-v1");
    if let Some(id) = record.api_id {
        field("api_id", &id.to_string());
    }
    let m = &record.asking_member;
    field("asking_member", &m.name);
    field("party", m.party.as_deref().unwrap_or(""));
    field("constituency", m.constituency.as_deref().unwrap_or(""));
    field("peerage", m.peerage.as_deref().unwrap_or(""));
    field("answering_body", &record.answering_body);
    field("question", &record.question_text);
    field("answering_member", &record.answering_member.name);
    field(
        "answering_title",
        record.answering_member.title.as_deref().unwrap_or(""),
    );
    field(
        "answer_format",
        match record.answer_source.format {
            SourceFormat::Text => "text",
            SourceFormat::Html => "html",
        },
    );
    field("answer", &record.answer_source.text);
    if let Some(api) = &record.api {
        let flag = |b: bool| if b { "1" } else { "0" };
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        field("api", "v1");
        field("uin", &opt(&api.uin));
        field("heading", &opt(&api.heading));
        field("date_tabled", &opt(&api.date_tabled));
        field("date_for_answer", &opt(&api.date_for_answer));
        field("date_answered", &opt(&api.date_answered));
        field("holding", flag(api.is_holding));
        field("date_holding_answer", &opt(&api.date_holding_answer));
        field("correction", flag(api.is_correction));
        field("original_answer", &opt(&api.original_answer_text));
        field("date_answer_corrected", &opt(&api.date_answer_corrected));
        field("withdrawn", flag(api.is_withdrawn));
        let mut grouped = api.grouped_questions.clone();
        grouped.sort();
        field("grouped", &grouped.join(","));
        for attachment in &api.attachments {
            field("attachment", &opt(&attachment.url));
            field("attachment_title", &opt(&attachment.title));
        }
    }
    hex(&h.finalize())
}

/// Terminal colours for diffs, or none when output is not a terminal.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    fn deleted(&self, text: &str) -> String {
        if self.colour {
            format!("\x1b[31;9m{text}\x1b[0m")
        } else {
            format!("[-{text}-]")
        }
    }

    fn inserted(&self, text: &str) -> String {
        if self.colour {
            format!("\x1b[32m{text}\x1b[0m")
        } else {
            format!("{{+{text}+}}")
        }
    }
}

/// A word diff for reading: changes with a few words of context, long unchanged runs elided.
pub fn render_word_diff(changes: &[WordChange], style: Style) -> String {
    const CONTEXT: usize = 8;
    let mut out = String::new();
    let last = changes.len().saturating_sub(1);
    for (i, change) in changes.iter().enumerate() {
        match change.op.as_str() {
            "delete" => out.push_str(&style.deleted(&change.text)),
            "insert" => out.push_str(&style.inserted(&change.text)),
            _ => {
                let words: Vec<&str> = change.text.split_whitespace().collect();
                let keep_start = if i == 0 { 0 } else { CONTEXT };
                let keep_end = if i == last { 0 } else { CONTEXT };
                if words.len() <= keep_start + keep_end + 1 {
                    out.push_str(&change.text);
                } else {
                    let lead = if change.text.starts_with(char::is_whitespace) {
                        " "
                    } else {
                        ""
                    };
                    let trail = if change.text.ends_with(char::is_whitespace) {
                        " "
                    } else {
                        ""
                    };
                    out.push_str(lead);
                    if keep_start > 0 {
                        out.push_str(&words[..keep_start].join(" "));
                        out.push(' ');
                    }
                    out.push('…');
                    if keep_end > 0 {
                        out.push(' ');
                        out.push_str(&words[words.len() - keep_end..].join(" "));
                    }
                    out.push_str(trail);
                }
            }
        }
    }
    out
}

/// One line saying what a flag found.
pub fn describe_flag(flag: &Flag) -> String {
    let about = flag
        .question
        .as_ref()
        .map(|q| format!("{q}: "))
        .unwrap_or_default();
    let what = match &flag.detail {
        FlagDetail::AnswerChanged {
            previous_seq,
            ratio,
            changes,
            ..
        } => {
            let deleted = changes.iter().filter(|c| c.op == "delete").count();
            let inserted = changes.iter().filter(|c| c.op == "insert").count();
            format!(
                "answer changed since #{previous_seq} ({deleted} deletions, {inserted} insertions, similarity {ratio:.3})"
            )
        }
        FlagDetail::TrackedListChanged {
            title,
            added,
            removed,
            set,
            previous_seq,
            late,
            ..
        } => {
            let mut parts = Vec::new();
            if !removed.is_empty() {
                parts.push(format!("removed {}", removed.join(", ")));
            }
            if !added.is_empty() {
                parts.push(format!("added {}", added.join(", ")));
            }
            format!(
                "{title}: {} since #{previous_seq}{}; now {}",
                parts.join("; "),
                if *late { " (arrived late)" } else { "" },
                set.join(", ")
            )
        }
        FlagDetail::DuplicateAnswer {
            of_question,
            of_seq,
            exact,
            ratio,
            ..
        } => {
            if *exact {
                format!("same answer as {of_question} (#{of_seq})")
            } else {
                format!("nearly the same answer as {of_question} (#{of_seq}, similarity {ratio:.3})")
            }
        }
        FlagDetail::FigureChanged {
            force,
            period,
            measure,
            previous_value,
            value,
            previous_question,
            previous_seq,
            ..
        } => format!(
            "{force}, {period}, {measure}: {value} here, {previous_value} in {previous_question} (#{previous_seq})"
        ),
        FlagDetail::TotalMismatch {
            table,
            column,
            group,
            stated,
            summed,
            ..
        } => format!(
            "table {}: the total{} of column {column:?} says {stated} but its rows sum to {summed}",
            table + 1,
            if group.is_empty() {
                String::new()
            } else {
                format!(" for {group}")
            }
        ),
    };
    format!("{about}{what}")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    // A table rather than `write!` a byte: formatting was an eighth of the content hash's time
    // (a hash an answer appended).
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff, 0x10]), "000fa5ff10");
        assert_eq!(hex(&[]), "");
    }
    use crate::record::{AnswerBody, AnswerSource, AnsweringMember, AskingMember, Block};

    /// The first implementation, kept as the reference: the streaming one must give the same
    /// text, or every stored content hash would change.
    fn normalise_reference(s: &str) -> String {
        let mapped: String = s
            .chars()
            .map(|c| match c {
                '\u{2018}' | '\u{2019}' | '\u{201B}' => '\'',
                '\u{201C}' | '\u{201D}' => '"',
                '\u{2013}' | '\u{2014}' => '-',
                '\u{00A0}' => ' ',
                other => other,
            })
            .collect();
        mapped.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    proptest::proptest! {
        #[test]
        fn normalising_matches_the_reference(
            s in "([ \t\r\n\u{0b}\u{0c}\u{a0}\u{2003}\u{2018}\u{2019}\u{201b}\u{201c}\u{201d}\u{2013}\u{2014}]|[a-zé€]){0,40}"
        ) {
            proptest::prop_assert_eq!(normalise_text(&s), normalise_reference(&s));
        }

        #[test]
        fn normalising_prose_matches_the_reference(
            s in "([A-Za-z0-9.,;]{1,6}( |  |\n|\t| \n|\u{a0}|\u{2003}| \u{2019}|\u{2014} )?){0,30} ?"
        ) {
            proptest::prop_assert_eq!(normalise_text(&s), normalise_reference(&s));
        }

        #[test]
        fn normalising_any_string_matches_the_reference(s in proptest::prelude::any::<String>()) {
            proptest::prop_assert_eq!(normalise_text(&s), normalise_reference(&s));
        }
    }

    fn record(answer: &str) -> AnswerRecord {
        AnswerRecord {
            api_id: None,
            house: None,
            asking_member: AskingMember {
                name: "A Member".into(),
                party: Some("Party".into()),
                constituency: Some("Somewhere".into()),
                peerage: None,
            },
            answering_body: "Home Office".into(),
            question_text: "To ask the Secretary of State, what?".into(),
            answering_member: AnsweringMember {
                name: "A Minister".into(),
                title: None,
            },
            answer: AnswerBody {
                blocks: vec![Block::Paragraph {
                    text: answer.into(),
                }],
            },
            answer_source: AnswerSource {
                format: SourceFormat::Text,
                text: answer.into(),
            },
            forces: vec![],
            unknown_forces: vec![],
            feed_position: None,
            api: None,
        }
    }

    #[test]
    fn identity_ignores_answer_and_whitespace_but_hash_does_not() {
        let a = record("The answer.");
        let mut b = record("A different answer.");
        b.question_text = "To ask the  Secretary of State,\nwhat?".into();
        assert_eq!(QuestionKey::of(&a), QuestionKey::of(&b));
        assert_ne!(fingerprint_answer(&a), fingerprint_answer(&b));
        let mut c = record("The   answer.");
        c.feed_position = Some(crate::record::FeedPosition {
            index: 3,
            of: 9,
            order: crate::record::FeedOrder::NewestFirst,
        });
        assert_eq!(fingerprint_answer(&a), fingerprint_answer(&c));
    }

    #[test]
    fn fingerprint_v1_is_frozen() {
        // If this changes, every stored answer would look revised on its next re-fetch.
        assert_eq!(
            fingerprint_answer(&record("The answer.")),
            "5db1eb16808390cdad05dbe5627f87ded750b5760f81525314c81c7be1682aa2"
        );
    }

    #[test]
    fn api_id_is_the_identity_when_known() {
        let mut r = record("x");
        r.api_id = Some(1234);
        assert_eq!(QuestionKey::of(&r).as_str(), "api:1234");
    }
}
