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
use sha2::{Digest, Sha256};

use crate::record::{AnswerRecord, Block, Cell};

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

impl Event {
    /// The `kind` tag as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AnswerObserved { .. } => "answer_observed",
            Event::AnswerRevised { .. } => "answer_revised",
            Event::RecordQuarantined { .. } => "record_quarantined",
        }
    }

    pub fn question(&self) -> Option<&QuestionKey> {
        match self {
            Event::AnswerObserved { question, .. } | Event::AnswerRevised { question, .. } => {
                Some(question)
            }
            Event::RecordQuarantined { .. } => None,
        }
    }

    pub fn record(&self) -> Option<&AnswerRecord> {
        match self {
            Event::AnswerObserved { record, .. } | Event::AnswerRevised { record, .. } => {
                Some(record)
            }
            Event::RecordQuarantined { .. } => None,
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
}

impl Observation {
    /// The identity under which idempotency is decided, and the content hash.
    ///
    /// Quarantined input is identified by its bytes alone: the same broken record ingested twice
    /// is kept once.
    pub fn identity(&self) -> (QuestionKey, String) {
        match &self.payload {
            Payload::Answer(record) => (QuestionKey::of(record), fingerprint_answer(record)),
            Payload::Unparseable { raw, .. } => (
                QuestionKey("quarantine".to_string()),
                hex(&Sha256::digest(raw)),
            ),
        }
    }
}

/// Whitespace runs as one space, curly quotes and dashes as plain ones, trimmed: differences
/// that sources introduce without the answer changing.
pub fn normalise_text(s: &str) -> String {
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

/// Content hash of an answer, version 1. Covers what a reader would call the answer's content:
/// who asked, of whom, what, who answered and the answer itself (paragraph text and table cells).
/// Not covered: where or when it was seen (feed position, source), and derived data (forces),
/// which are functions of the covered fields.
pub fn fingerprint_answer(record: &AnswerRecord) -> String {
    let mut h = Sha256::new();
    let mut field = |label: &str, value: &str| {
        h.update(label.as_bytes());
        h.update([0x1e]);
        h.update(normalise_text(value).as_bytes());
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
    for block in &record.answer.blocks {
        match block {
            Block::Paragraph { text } => field("p", text),
            Block::Table(table) => {
                field("table", table.title.as_deref().unwrap_or(""));
                field("header", &table.header.join("\u{1d}"));
                for row in &table.rows {
                    let cells: Vec<String> = row.cells.iter().map(cell_fingerprint).collect();
                    field("row", &cells.join("\u{1d}"));
                }
                for note in &table.notes {
                    field("note", note);
                }
            }
        }
    }
    hex(&h.finalize())
}

fn cell_fingerprint(cell: &Cell) -> String {
    match cell {
        Cell::Empty => String::new(),
        Cell::Int(n) => format!("i{n}"),
        Cell::Decimal(d) => format!("d{d}"),
        Cell::Text(t) => format!("t{t}"),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{AnswerBody, AnsweringMember, AskingMember};

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
            forces: vec![],
            unknown_forces: vec![],
            feed_position: None,
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
            "a4a23c6f2c3594861bb1a63296c669a1d83af1164ab78b258f73c38597c8632b"
        );
    }

    #[test]
    fn api_id_is_the_identity_when_known() {
        let mut r = record("x");
        r.api_id = Some(1234);
        assert_eq!(QuestionKey::of(&r).as_str(), "api:1234");
    }
}
