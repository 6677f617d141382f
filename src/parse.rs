//! The plain-text parser: a dump of written answers (bytes) in, one parse outcome per record out.
//!
//! The format is the one the Parliament site prints and `tests/fixtures/written-answers-sample.txt`
//! holds: records start at `Asked by:`, then `Question to the BODY:`, the question, `Answered by
//! NAME[ - TITLE]`, and the answer up to the next record, one paragraph a line, with tables as runs
//! of `|`-separated lines. Dumps carry no dates and list newest first.
//!
//! Nothing is dropped: a record that does not parse (or bytes that are not UTF-8, or text before the
//! first record) comes out as [`Outcome::Quarantined`] with the reason and the raw bytes, and the
//! rest of the file still parses. The parser never panics on any input (a property test holds it
//! to that).

use crate::forces;
use crate::record::{
    AnswerBody, AnswerRecord, AnswerSource, AnsweringMember, AskingMember, Block, Cell, FeedOrder,
    FeedPosition, ForceRef, House, Row, SourceFormat, Table,
};

/// One record of a dump, parsed or not.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedItem {
    pub position: FeedPosition,
    /// 1-based line where the record starts in the file.
    pub line: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Parsed(Box<AnswerRecord>),
    Quarantined(Quarantine),
}

/// A record kept as written because it could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantine {
    pub reason: String,
    /// The record's bytes exactly as they were in the file.
    pub raw: Vec<u8>,
}

const RECORD_START: &[u8] = b"Asked by:";

/// Parses a whole text dump. `order` says which end of the file is the newest record.
pub fn parse_text_dump(bytes: &[u8], order: FeedOrder) -> Vec<ParsedItem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let chunks = split_records(bytes);
    let of = u32::try_from(chunks.len()).unwrap_or(u32::MAX);
    chunks
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            let position = FeedPosition {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                of,
                order,
            };
            let outcome = match parse_chunk(&chunk) {
                Ok(mut record) => {
                    record.feed_position = Some(position);
                    Outcome::Parsed(Box::new(record))
                }
                Err(reason) => Outcome::Quarantined(Quarantine {
                    reason,
                    raw: chunk.raw.to_vec(),
                }),
            };
            ParsedItem {
                position,
                line: chunk.first_line,
                outcome,
            }
        })
        .collect()
}

/// The bytes of one record (or of junk before the first record) and where it starts.
struct Chunk<'a> {
    first_line: u32,
    raw: &'a [u8],
    /// Whether the chunk starts with `Asked by:` (junk before the first record does not).
    is_record: bool,
}

fn split_records(bytes: &[u8]) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1u32;
    let mut offset = 0usize;
    let mut line_no = 1u32;
    while offset < bytes.len() {
        let line_end = memchr_newline(&bytes[offset..]).map_or(bytes.len(), |i| offset + i + 1);
        if offset > start && bytes[offset..].starts_with(RECORD_START) {
            push_chunk(&mut chunks, &bytes[start..offset], start_line);
            start = offset;
            start_line = line_no;
        }
        offset = line_end;
        line_no = line_no.saturating_add(1);
    }
    if start < bytes.len() {
        push_chunk(&mut chunks, &bytes[start..], start_line);
    }
    chunks
}

fn push_chunk<'a>(chunks: &mut Vec<Chunk<'a>>, raw: &'a [u8], first_line: u32) {
    let is_record = raw.starts_with(RECORD_START);
    // Blank lines before the first record are layout, not data.
    if !is_record && raw.iter().all(|b| b.is_ascii_whitespace()) {
        return;
    }
    chunks.push(Chunk {
        first_line,
        raw,
        is_record,
    });
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

fn parse_chunk(chunk: &Chunk<'_>) -> Result<AnswerRecord, String> {
    let text = match std::str::from_utf8(chunk.raw) {
        Ok(text) => text,
        Err(e) => {
            let bad_line = chunk.first_line as usize
                + chunk.raw[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
            return Err(format!("invalid UTF-8 on line {bad_line}"));
        }
    };
    if !chunk.is_record {
        return Err(format!(
            "text that is not a record (no 'Asked by:') at line {}",
            chunk.first_line
        ));
    }
    let lines: Vec<(u32, &str)> = text
        .split('\n')
        .enumerate()
        .map(|(i, l)| {
            (
                chunk
                    .first_line
                    .saturating_add(u32::try_from(i).unwrap_or(u32::MAX)),
                l.strip_suffix('\r').unwrap_or(l),
            )
        })
        .collect();
    if let Some((line_no, _)) = lines.iter().find(|(_, l)| has_control_chars(l)) {
        return Err(format!("control characters on line {line_no}"));
    }
    let mut rest = lines
        .iter()
        .copied()
        .filter(|(_, l)| !l.trim().is_empty())
        .peekable();

    let (asked_line, asked) = rest.next().ok_or_else(|| "empty record".to_string())?;
    let asking_member = parse_asked_by(asked.trim_start_matches("Asked by:").trim())
        .map_err(|e| format!("{e} on line {asked_line}"))?;

    let (body_line, body) = rest
        .next()
        .ok_or_else(|| format!("record at line {asked_line} ends before 'Question to the ...:'"))?;
    let answering_body = parse_question_to(body).ok_or_else(|| {
        format!(
            "expected 'Question to the ...:' on line {body_line}, found {:?}",
            clip(body)
        )
    })?;

    let mut question_lines = Vec::new();
    let mut answered = None;
    for (line_no, line) in rest.by_ref() {
        if let Some(answered_by) = line.trim_start().strip_prefix("Answered by") {
            answered = Some((line_no, answered_by));
            break;
        }
        question_lines.push(line.trim());
    }
    let (answered_line, answered_by) =
        answered.ok_or_else(|| format!("record at line {asked_line} has no 'Answered by' line"))?;
    let question_text = question_lines.join(" ");
    if question_text.is_empty() {
        return Err(format!("record at line {asked_line} has no question text"));
    }
    let answering_member = parse_answered_by(answered_by)
        .ok_or_else(|| format!("no member named after 'Answered by' on line {answered_line}"))?;

    let body_lines: Vec<&str> = rest.map(|(_, l)| l.trim()).collect();
    let answer_source = AnswerSource {
        format: SourceFormat::Text,
        text: body_lines.join("\n"),
    };
    if body_lines.is_empty() {
        return Err(format!(
            "record at line {asked_line} has no answer text after 'Answered by'"
        ));
    }
    let answer = parse_answer_lines(&body_lines);
    let (forces, unknown_forces) = forces_of(&answer);
    let house = if asking_member.peerage.is_some() {
        Some(House::Lords)
    } else if asking_member.constituency.is_some() {
        Some(House::Commons)
    } else {
        None
    };

    Ok(AnswerRecord {
        api_id: None,
        house,
        asking_member,
        answering_body,
        question_text,
        answering_member,
        answer,
        answer_source,
        forces,
        unknown_forces,
        feed_position: None,
        api: None,
    })
}

fn has_control_chars(line: &str) -> bool {
    line.chars()
        .any(|c| (c.is_control() && c != '\t') || c == '\u{FFFD}')
}

fn clip(s: &str) -> String {
    let mut clipped: String = s.chars().take(60).collect();
    if clipped.len() < s.len() {
        clipped.push('…');
    }
    clipped
}

/// `Adrian Ramsay (Green Party - Waveney Valley)`, `Lord Bishop of St Albans (Bishops - Bishops)`.
fn parse_asked_by(s: &str) -> Result<AskingMember, String> {
    let (name, inside) = match (s.strip_suffix(')'), s.rfind('(')) {
        (Some(without_close), Some(open)) => (s[..open].trim(), Some(&without_close[open + 1..])),
        _ => (s, None),
    };
    if name.is_empty() {
        return Err("no member named after 'Asked by:'".to_string());
    }
    let mut member = AskingMember {
        name: name.to_string(),
        party: None,
        constituency: None,
        peerage: None,
    };
    if let Some(inside) = inside {
        let (party, seat) = match inside.split_once(" - ") {
            Some((party, seat)) => (party.trim(), Some(seat.trim())),
            None => (inside.trim(), None),
        };
        member.party = (!party.is_empty()).then(|| party.to_string());
        if let Some(seat) = seat.filter(|s| !s.is_empty()) {
            let lower = seat.to_lowercase();
            let is_peerage =
                lower.contains("peer") || lower.contains("hereditary") || lower == "bishops";
            if is_peerage {
                member.peerage = Some(seat.to_string());
            } else {
                member.constituency = Some(seat.to_string());
            }
        }
    }
    Ok(member)
}

fn parse_question_to(line: &str) -> Option<String> {
    let body = line
        .trim()
        .strip_prefix("Question to")?
        .trim()
        .strip_suffix(':')?
        .trim();
    let body = if body == "the" {
        ""
    } else {
        body.strip_prefix("the ").unwrap_or(body).trim()
    };
    (!body.is_empty()).then(|| body.to_string())
}

/// ` Jess Phillips - Parliamentary Under-Secretary (Home Office)` or ` Laura Farris`.
fn parse_answered_by(s: &str) -> Option<AnsweringMember> {
    let s = s.trim().trim_start_matches(':').trim();
    // "Answered by - Minister of State": a title with no name.
    if s.starts_with('-') {
        return None;
    }
    let (name, title) = match s.split_once(" - ") {
        Some((name, title)) => (name.trim(), Some(title.trim())),
        None => (s, None),
    };
    if name.is_empty() {
        return None;
    }
    Some(AnsweringMember {
        name: name.to_string(),
        title: title.filter(|t| !t.is_empty()).map(str::to_string),
    })
}

/// Groups answer lines into paragraphs (one a line) and tables (runs of lines holding `|`).
pub(crate) fn parse_answer_lines(lines: &[&str]) -> AnswerBody {
    let mut blocks = Vec::new();
    let mut table_run: Vec<&str> = Vec::new();
    for line in lines {
        if line.contains('|') {
            table_run.push(line);
            continue;
        }
        if !table_run.is_empty() {
            push_table(&mut blocks, &table_run);
            table_run.clear();
        }
        let text = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() {
            blocks.push(Block::Paragraph { text });
        }
    }
    if !table_run.is_empty() {
        push_table(&mut blocks, &table_run);
    }
    AnswerBody { blocks }
}

fn push_table(blocks: &mut Vec<Block>, lines: &[&str]) {
    match build_table(lines) {
        Some(table) => blocks.push(Block::Table(table)),
        // A lone line with a `|` but no columns is prose with a stray bar, not a table.
        None => {
            for line in lines {
                let text = line.split_whitespace().collect::<Vec<_>>().join(" ");
                if !text.replace('|', "").trim().is_empty() {
                    blocks.push(Block::Paragraph { text });
                }
            }
        }
    }
}

/// Cells of one `|` line, trimmed, with trailing empty cells (decoration such as `|||`) dropped.
/// Leading empty cells are kept: they hold columns in place (`| 2022 | 2023 |` under a label column).
fn split_cells(line: &str) -> Vec<&str> {
    let mut cells: Vec<&str> = line.split('|').map(str::trim).collect();
    while cells.last().is_some_and(|c| c.is_empty()) {
        cells.pop();
    }
    cells
}

fn build_table(lines: &[&str]) -> Option<Table> {
    table_from_rows(
        lines
            .iter()
            .map(|line| split_cells(line).into_iter().map(str::to_string).collect())
            .collect(),
    )
}

/// Short rows are padded with empty cells up to the header's width, but never past this many
/// columns: padding every row to an arbitrarily wide header made the output grow with rows times
/// header width, so a 24 KB dump became a 1 GB record (it broke the output bound the fuzz targets
/// check; inputs in `tests/fixtures/fuzz/crashes/`). Answer tables are nowhere near this wide.
pub(crate) const MAX_PADDED_COLUMNS: usize = 64;

/// Builds a table from rows of cell text, the same way for text dumps and HTML: rows with one
/// filled cell above the header are its title, the first row with two or more filled cells is the
/// header, rows with one filled cell below it are notes, and the rest are typed data rows.
/// `None` when no row has two filled cells (that is layout, not a table).
pub(crate) fn table_from_rows(raw_rows: Vec<Vec<String>>) -> Option<Table> {
    let mut title_parts = Vec::new();
    let mut header: Option<Vec<String>> = None;
    let mut rows: Vec<Row> = Vec::new();
    let mut notes = Vec::new();
    for cells in &raw_rows {
        let filled: Vec<&str> = cells
            .iter()
            .map(String::as_str)
            .filter(|c| !c.is_empty())
            .collect();
        match (&header, filled.len()) {
            (_, 0) => {}
            (None, 1) => title_parts.push(filled[0].to_string()),
            (None, _) => header = Some(cells.clone()),
            (Some(_), 1) => notes.push(filled[0].to_string()),
            (Some(h), _) => {
                let mut typed: Vec<Cell> = cells.iter().map(|c| Cell::parse(c)).collect();
                while typed.len() < h.len().min(MAX_PADDED_COLUMNS) {
                    typed.push(Cell::Empty);
                }
                let total = typed.iter().any(|c| {
                    c.as_text()
                        .is_some_and(|t| t.split_whitespace().any(is_total_word))
                });
                rows.push(Row {
                    cells: typed,
                    total,
                    force: None,
                });
            }
        }
    }
    let header = header?;
    let mut table = Table {
        title: (!title_parts.is_empty()).then(|| title_parts.join(" ")),
        header,
        rows,
        notes,
        force_column: None,
    };
    assign_forces(&mut table);
    Some(table)
}

/// "Total", "Totals", "Total:" and the like mark a total row.
fn is_total_word(word: &str) -> bool {
    let bare = word
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    bare == "total" || bare == "totals" || bare == "subtotal"
}

/// Finds the column that names police forces (most cells resolving to a known force, at least half
/// of the non-total rows) and tags each row with its canonical force.
fn assign_forces(table: &mut Table) {
    let width = table.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
    let candidates = table.rows.iter().filter(|r| !r.total).count();
    let mut best: Option<(usize, usize)> = None;
    for column in 0..width {
        let hits = table
            .rows
            .iter()
            .filter(|r| !r.total)
            .filter(|r| {
                r.cells
                    .get(column)
                    .and_then(Cell::as_text)
                    .and_then(forces::lookup)
                    .is_some()
            })
            .count();
        if hits > 0 && hits * 2 >= candidates && best.is_none_or(|(_, b)| hits > b) {
            best = Some((column, hits));
        }
    }
    let Some((column, _)) = best else { return };
    table.force_column = Some(column);
    for row in &mut table.rows {
        row.force = row
            .cells
            .get(column)
            .and_then(Cell::as_text)
            .and_then(forces::lookup)
            .map(ForceRef::from);
    }
}

/// Forces the answer names (table rows first where they come first, then running text), and the
/// names in force columns that are not forces we know.
pub(crate) fn forces_of(answer: &AnswerBody) -> (Vec<ForceRef>, Vec<String>) {
    let mut known: Vec<ForceRef> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    let mut add = |force: ForceRef| {
        if !known.iter().any(|k| k.id == force.id) {
            known.push(force);
        }
    };
    for block in &answer.blocks {
        match block {
            Block::Paragraph { text } | Block::ListItem { text } => {
                for mention in forces::mentions_in(text) {
                    add(ForceRef::from(mention.force));
                }
            }
            Block::Table(table) => {
                let Some(column) = table.force_column else {
                    continue;
                };
                for row in &table.rows {
                    match (&row.force, row.cells.get(column).and_then(Cell::as_text)) {
                        (Some(force), _) => add(force.clone()),
                        (None, Some(name)) if !row.total && !unknown.iter().any(|u| u == name) => {
                            unknown.push(name.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    (known, unknown)
}

pub mod api;
pub mod html;

#[cfg(test)]
mod tests;
