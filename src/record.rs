//! The typed answer record: what the parsers produce and what observation events carry.
//!
//! Nothing here does I/O. The record is plain serde data; fields added later must be optional
//! (`#[serde(default)]`) so that every event ever stored stays readable.

use serde::{Deserialize, Serialize};

/// The member who asked the question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AskingMember {
    pub name: String,
    /// Party as printed ("Green Party", "Conservative", "Bishops", "Non-affiliated").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub party: Option<String>,
    /// Commons constituency ("Waveney Valley"), for MPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constituency: Option<String>,
    /// Kind of peerage ("Life peer", "Bishops"), for members of the Lords.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peerage: Option<String>,
}

/// The member who answered, with their ministerial title when the source gives one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnsweringMember {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

/// Which House the question was asked in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum House {
    Commons,
    Lords,
}

/// Where a record sits in a feed that carries no dates. The Parliament site lists newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedOrder {
    NewestFirst,
    OldestFirst,
}

/// A record's place in the feed it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPosition {
    /// 0-based index of the record in its file, as written.
    pub index: u32,
    /// How many records the file held (parsed and quarantined alike).
    pub of: u32,
    pub order: FeedOrder,
}

impl FeedPosition {
    /// 0 for the oldest record of the feed, rising towards the newest.
    pub fn chronological_rank(&self) -> u32 {
        match self.order {
            FeedOrder::OldestFirst => self.index,
            FeedOrder::NewestFirst => self.of.saturating_sub(1).saturating_sub(self.index),
        }
    }
}

/// A question with its answer, as one source showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRecord {
    /// The Parliament API's question id, when the record came from the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub house: Option<House>,
    pub asking_member: AskingMember,
    /// "Home Office", "Attorney General", ...
    pub answering_body: String,
    pub question_text: String,
    pub answering_member: AnsweringMember,
    pub answer: AnswerBody,
    /// The answer exactly as the source gave it. `answer` is derived from it; the content hash
    /// covers this, not `answer`, so a better parser never makes an unchanged answer look revised.
    pub answer_source: AnswerSource,
    /// Police forces the answer names, canonical, without repeats, in order of first mention.
    #[serde(default)]
    pub forces: Vec<ForceRef>,
    /// Names that stood where a force was expected (a table's force column) but are not a force
    /// we know. Kept as written so nobody loses them; reported by `ingest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unknown_forces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_position: Option<FeedPosition>,
    /// What the Parliament API says beyond the common fields (dates, status, grouping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiDetails>,
}

/// Fields only the API gives. Dates are as the API wrote them (`2024-01-05T00:00:00`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ApiDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_tabled: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_for_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_answered: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asking_member_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answering_member_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answering_body_id: Option<u64>,
    #[serde(default)]
    pub is_holding: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_holding_answer: Option<String>,
    #[serde(default)]
    pub is_correction: bool,
    /// The answer's text before the correction (HTML), when corrected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_answer_text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date_answer_corrected: Option<String>,
    #[serde(default)]
    pub is_withdrawn: bool,
    /// UINs of the questions answered together with this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grouped_questions: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The question's page on the Parliament site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_type: Option<String>,
}

impl ApiDetails {
    /// The date that orders this record in time: answered, else corrected, else tabled.
    pub fn effective_date(&self) -> Option<&str> {
        self.date_answered
            .as_deref()
            .or(self.date_answer_corrected.as_deref())
            .or(self.date_tabled.as_deref())
    }
}

/// The answer as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerSource {
    pub format: SourceFormat,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    /// Lines of a plain-text dump (tables as `|` lines).
    Text,
    /// The API's `answerText` HTML.
    Html,
}

/// A canonical force as stored in a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForceRef {
    pub id: String,
    pub name: String,
}

impl From<&crate::forces::Force> for ForceRef {
    fn from(force: &crate::forces::Force) -> Self {
        ForceRef {
            id: force.id.to_string(),
            name: force.name.to_string(),
        }
    }
}

/// The answer, as paragraphs and tables in the order they were written.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnswerBody {
    pub blocks: Vec<Block>,
}

impl AnswerBody {
    /// The answer as plain text: paragraphs separated by blank lines, tables as `|` rows.
    pub fn plain_text(&self) -> String {
        let mut out = String::new();
        self.write_plain_text(&mut out);
        out
    }

    /// [`AnswerBody::plain_text`], appended to `out`. Written in place: a string per block,
    /// per table line and per cell, then joined, made it a few percent of both the diff and
    /// the views' threads in a backfill.
    pub fn write_plain_text(&self, out: &mut String) {
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                out.push_str("\n\n");
            }
            match block {
                Block::Paragraph { text } => out.push_str(text),
                Block::ListItem { text } => {
                    out.push_str("- ");
                    out.push_str(text);
                }
                Block::Table(table) => table.write_pipe_text(out),
            }
        }
    }

    pub fn tables(&self) -> impl Iterator<Item = &Table> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Table(t) => Some(t),
            Block::Paragraph { .. } | Block::ListItem { .. } => None,
        })
    }

    /// The running text: paragraphs and list items, in order.
    pub fn paragraphs(&self) -> impl Iterator<Item = &str> {
        self.blocks.iter().filter_map(|b| match b {
            Block::Paragraph { text } | Block::ListItem { text } => Some(text.as_str()),
            Block::Table(_) => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Paragraph {
        text: String,
    },
    /// An item of a bulleted or numbered list (HTML answers).
    ListItem {
        text: String,
    },
    Table(Table),
}

/// A table from an answer. Rows hold data only: titles, decorative lines and notes are kept apart.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Table {
    /// A caption written as a row of its own above the header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Column names; an empty string where the source left the column unnamed.
    pub header: Vec<String>,
    pub rows: Vec<Row>,
    /// Lines below the data that are not rows ("Data Source: ...").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The column whose cells name police forces, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_column: Option<usize>,
}

impl Table {
    /// The title (if any), the header and each row with cells between `" | "`, then the
    /// notes, a line each.
    fn write_pipe_text(&self, out: &mut String) {
        if let Some(title) = &self.title {
            out.push_str(title);
            out.push('\n');
        }
        write_joined(out, self.header.iter(), |out, name| out.push_str(name));
        for row in &self.rows {
            out.push('\n');
            write_joined(out, row.cells.iter(), |out, cell| cell.write_text(out));
        }
        for note in &self.notes {
            out.push('\n');
            out.push_str(note);
        }
    }
}

/// Each item written by `write`, with `" | "` between them.
fn write_joined<T>(
    out: &mut String,
    items: impl Iterator<Item = T>,
    mut write: impl FnMut(&mut String, T),
) {
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        write(out, item);
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub cells: Vec<Cell>,
    /// A total or subtotal row ("Total England and Wales", "44 Police Force Areas Total").
    #[serde(default, skip_serializing_if = "is_false")]
    pub total: bool,
    /// The canonical force this row is about, when the table has a force column and the cell
    /// names a force we know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<ForceRef>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A typed table cell. `8,281` is the integer 8281; `2021/22` stays text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    Empty,
    Int(i64),
    Decimal(f64),
    Text(String),
}

impl Cell {
    /// Types a cell as written: thousands separators are accepted only in their proper places.
    pub fn parse(written: &str) -> Cell {
        let s = written.trim();
        if s.is_empty() {
            return Cell::Empty;
        }
        if let Some(n) = parse_grouped_int(s) {
            return Cell::Int(n);
        }
        if let Some(d) = parse_decimal(s) {
            return Cell::Decimal(d);
        }
        Cell::Text(s.to_string())
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Cell::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_text(&self) -> Option<&str> {
        match self {
            Cell::Text(s) => Some(s),
            _ => None,
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_text(&mut out);
        out
    }

    /// [`Cell::to_text`], appended to `out`.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        // Writing to a `String` cannot fail.
        let _ = match self {
            Cell::Empty => Ok(()),
            Cell::Int(n) => write!(out, "{n}"),
            Cell::Decimal(d) => write!(out, "{d}"),
            Cell::Text(s) => {
                out.push_str(s);
                Ok(())
            }
        };
    }
}

fn parse_grouped_int(s: &str) -> Option<i64> {
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if digits.is_empty() {
        return None;
    }
    if digits.contains(',') {
        let groups: Vec<&str> = digits.split(',').collect();
        let first_ok = (1..=3).contains(&groups[0].len());
        let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
        let all_digits = groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()));
        if !(first_ok && rest_ok && all_digits) {
            return None;
        }
    } else if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = digits.replace(',', "").parse().ok()?;
    Some(if negative { -n } else { n })
}

fn parse_decimal(s: &str) -> Option<f64> {
    let (int_part, frac) = s.split_once('.')?;
    if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole = parse_grouped_int(int_part)?;
    let value: f64 = format!("{whole}.{frac}").parse().ok()?;
    value.is_finite().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plain_text` as it was first written (a string per block, line and cell, then joined):
    /// the reference for the version written in place.
    fn plain_text_reference(body: &AnswerBody) -> String {
        let table = |t: &Table| {
            let mut lines = Vec::new();
            if let Some(title) = &t.title {
                lines.push(title.clone());
            }
            lines.push(t.header.join(" | "));
            for row in &t.rows {
                let cells: Vec<String> = row
                    .cells
                    .iter()
                    .map(|c| match c {
                        Cell::Empty => String::new(),
                        Cell::Int(n) => n.to_string(),
                        Cell::Decimal(d) => d.to_string(),
                        Cell::Text(s) => s.clone(),
                    })
                    .collect();
                lines.push(cells.join(" | "));
            }
            lines.extend(t.notes.iter().cloned());
            lines.join("\n")
        };
        let parts: Vec<String> = body
            .blocks
            .iter()
            .map(|b| match b {
                Block::Paragraph { text } => text.clone(),
                Block::ListItem { text } => format!("- {text}"),
                Block::Table(t) => table(t),
            })
            .collect();
        parts.join("\n\n")
    }

    #[test]
    fn plain_text_is_the_blocks_joined_as_before() {
        let mut rng = fastrand::Rng::with_seed(11);
        let words = ["", "Gwent", "a b", "£1.5m", "Ynys Môn", "-", "|", "\n"];
        let text = |rng: &mut fastrand::Rng| -> String {
            (0..rng.usize(..4))
                .map(|_| words[rng.usize(..words.len())])
                .collect::<Vec<_>>()
                .join(" ")
        };
        for _ in 0..2_000 {
            let blocks = (0..rng.usize(..5))
                .map(|_| match rng.u8(..3) {
                    0 => Block::Paragraph {
                        text: text(&mut rng),
                    },
                    1 => Block::ListItem {
                        text: text(&mut rng),
                    },
                    _ => Block::Table(Table {
                        title: rng.bool().then(|| text(&mut rng)),
                        header: (0..rng.usize(..4)).map(|_| text(&mut rng)).collect(),
                        rows: (0..rng.usize(..4))
                            .map(|_| Row {
                                cells: (0..rng.usize(..4))
                                    .map(|_| match rng.u8(..4) {
                                        0 => Cell::Empty,
                                        1 => Cell::Int(rng.i64(-100_000..100_000)),
                                        2 => Cell::Decimal(rng.f64() * 1e4 - 5e3),
                                        _ => Cell::Text(text(&mut rng)),
                                    })
                                    .collect(),
                                total: rng.bool(),
                                force: None,
                            })
                            .collect(),
                        notes: (0..rng.usize(..3)).map(|_| text(&mut rng)).collect(),
                        force_column: None,
                    }),
                })
                .collect();
            let body = AnswerBody { blocks };
            assert_eq!(body.plain_text(), plain_text_reference(&body), "{body:?}");
        }
    }

    #[test]
    fn cells_are_typed() {
        assert_eq!(Cell::parse(" 8,281 "), Cell::Int(8281));
        assert_eq!(Cell::parse("63,999"), Cell::Int(63999));
        assert_eq!(Cell::parse("1"), Cell::Int(1));
        assert_eq!(Cell::parse("-12"), Cell::Int(-12));
        assert_eq!(Cell::parse("12.5"), Cell::Decimal(12.5));
        assert_eq!(Cell::parse("2021/22"), Cell::Text("2021/22".into()));
        assert_eq!(Cell::parse("1,23"), Cell::Text("1,23".into()));
        assert_eq!(Cell::parse(""), Cell::Empty);
        assert_eq!(Cell::parse("-"), Cell::Text("-".into()));
        assert_eq!(
            Cell::parse("99999999999999999999999"),
            Cell::Text("99999999999999999999999".into())
        );
    }

    #[test]
    fn chronological_rank_follows_feed_order() {
        let newest_first = FeedPosition {
            index: 0,
            of: 10,
            order: FeedOrder::NewestFirst,
        };
        assert_eq!(newest_first.chronological_rank(), 9);
        let oldest_first = FeedPosition {
            order: FeedOrder::OldestFirst,
            ..newest_first
        };
        assert_eq!(oldest_first.chronological_rank(), 0);
    }
}
