//! The checks the cargo-fuzz targets (`fuzz/fuzz_targets/`) run on each input, kept here so that
//! `tests/fuzz_corpus.rs` replays the saved corpus through exactly the same code on stable Rust.
//!
//! Each function feeds one input to a parser or decoder and checks what came out against the
//! promises its module doc makes (nothing dropped, errors typed, output bounded). A broken
//! promise is a [`Violation`], never a panic, so the library stays panic-free; the fuzz targets
//! turn a violation into a panic (what libFuzzer records as a crash) and the test fails on it. A
//! panic inside the parser under test propagates as it would in production.
//!
//! Not part of the API: hidden from the docs and free to change with the fuzz targets.

use crate::event::Envelope;
use crate::log::{decode_envelope, LogError};
use crate::parse::api::{
    decode_line, decode_list_page, decode_raw_item, decode_recorded, decode_single,
    looks_truncated, split_list_page, ApiItem, PageError,
};
use crate::parse::html::parse_answer_html;
use crate::parse::{parse_text_dump, Outcome, ParsedItem, MAX_PADDED_COLUMNS};
use crate::record::{AnswerBody, Block, Cell, FeedOrder, FeedPosition, SourceFormat};

/// A promise a parser or decoder broke on one input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{target}: {problem}")]
pub struct Violation {
    pub target: &'static str,
    pub problem: String,
}

/// Returns a [`Violation`] of `$target` unless `$cond` holds.
macro_rules! ensure {
    ($target:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Violation {
                target: $target,
                problem: format!($($fmt)+),
            });
        }
    };
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

// ---------------------------------------------------------------------------------------------
// text_parser
// ---------------------------------------------------------------------------------------------

/// What the text parser made of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextSummary {
    pub records: usize,
    pub quarantined: usize,
}

const TEXT: &str = "text_parser";

/// The plain-text dump parser on arbitrary bytes, in both feed orders: one item per chunk (a
/// chunk starts at every line that begins `Asked by:`, and junk before the first one is a chunk
/// of its own unless it is blank), each a parsed record or a quarantine holding the chunk's exact
/// bytes and a reason; the feed order changes positions only; a parsed answer is no bigger than
/// its record's bytes allow (the bounds [`html_answer`] checks).
pub fn text_parser(data: &[u8]) -> Result<TextSummary, Violation> {
    let bytes = data.strip_prefix(BOM).unwrap_or(data);
    // Worked out apart from the parser, so a splitting bug cannot hide behind itself.
    let starts = expected_chunk_starts(bytes);
    let newest = parse_text_dump(data, FeedOrder::NewestFirst);
    let oldest = parse_text_dump(data, FeedOrder::OldestFirst);
    let summary = check_text_items(&newest, bytes, &starts, FeedOrder::NewestFirst)?;
    check_text_items(&oldest, bytes, &starts, FeedOrder::OldestFirst)?;
    for (a, b) in newest.iter().zip(&oldest) {
        ensure!(TEXT, a.line == b.line, "order changed a line number");
        let same = match (&a.outcome, &b.outcome) {
            (Outcome::Parsed(x), Outcome::Parsed(y)) => {
                let mut y = y.clone();
                y.feed_position = x.feed_position;
                **x == *y
            }
            (Outcome::Quarantined(x), Outcome::Quarantined(y)) => x == y,
            _ => false,
        };
        ensure!(
            TEXT,
            same,
            "the item at line {} differs between feed orders",
            a.line
        );
    }
    Ok(summary)
}

/// Where the items of `bytes` (a BOM already stripped) must start, worked out apart from the
/// parser: at every "Asked by:" that begins a line, and at 0 when the text before the first of
/// those is not just whitespace. Shared with the parser's property tests.
pub(crate) fn expected_chunk_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts: Vec<usize> = (0..bytes.len())
        .filter(|&p| (p == 0 || bytes[p - 1] == b'\n') && bytes[p..].starts_with(b"Asked by:"))
        .collect();
    let first = starts.first().copied().unwrap_or(bytes.len());
    if !bytes[..first].iter().all(u8::is_ascii_whitespace) {
        starts.insert(0, 0);
    }
    starts
}

fn check_text_items(
    items: &[ParsedItem],
    bytes: &[u8],
    starts: &[usize],
    order: FeedOrder,
) -> Result<TextSummary, Violation> {
    ensure!(
        TEXT,
        items.len() == starts.len(),
        "{} items for {} chunks",
        items.len(),
        starts.len()
    );
    let of = u32::try_from(starts.len()).unwrap_or(u32::MAX);
    let mut summary = TextSummary::default();
    for (i, (item, &start)) in items.iter().zip(starts).enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(bytes.len());
        let position = FeedPosition {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            of,
            order,
        };
        ensure!(TEXT, item.position == position, "item {i}: wrong position");
        let line = 1 + bytes[..start].iter().filter(|&&b| b == b'\n').count();
        ensure!(
            TEXT,
            item.line as usize == line,
            "item {i}: line {} for a chunk starting on line {line}",
            item.line
        );
        match &item.outcome {
            Outcome::Parsed(record) => {
                summary.records += 1;
                ensure!(
                    TEXT,
                    bytes[start..].starts_with(b"Asked by:"),
                    "item {i}: a record parsed from text that does not start 'Asked by:'"
                );
                ensure!(
                    TEXT,
                    record.feed_position == Some(position),
                    "item {i}: record's feed position differs from the item's"
                );
                ensure!(
                    TEXT,
                    !record.asking_member.name.is_empty()
                        && !record.answering_body.is_empty()
                        && !record.question_text.is_empty()
                        && !record.answering_member.name.is_empty()
                        && !record.answer_source.text.is_empty(),
                    "item {i}: a parsed record has an empty required field"
                );
                ensure!(
                    TEXT,
                    record.answer_source.format == SourceFormat::Text
                        && record.api_id.is_none()
                        && record.api.is_none(),
                    "item {i}: a text record claims to come from the API"
                );
                // The same table model as HTML answers, so the same bounds, per record.
                check_answer(TEXT, &record.answer, end - start)?;
            }
            Outcome::Quarantined(q) => {
                summary.quarantined += 1;
                ensure!(
                    TEXT,
                    !q.reason.is_empty(),
                    "item {i}: quarantined, no reason"
                );
                ensure!(
                    TEXT,
                    q.raw == bytes[start..end],
                    "item {i}: quarantined bytes are not the chunk's bytes"
                );
            }
        }
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------------
// html_answer
// ---------------------------------------------------------------------------------------------

/// What the HTML answer parser made of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HtmlSummary {
    pub blocks: usize,
    pub tables: usize,
    pub cells: usize,
    pub text_bytes: usize,
}

const HTML: &str = "html_answer";

/// Cells one input byte may turn into: `colspan` is clamped at 64, and no other markup makes more
/// than one cell per byte. More than this is an amplification a hostile answer could exploit.
pub const MAX_CELLS_PER_BYTE: usize = 64;

/// The HTML answer parser on arbitrary text (bytes read as lossy UTF-8): never panics; output no
/// bigger than the input allows (blocks, text and cells bounded by its length); text collapsed;
/// tables well formed; and plain words with no markup around them all kept.
pub fn html_answer(data: &[u8]) -> Result<HtmlSummary, Violation> {
    let html = String::from_utf8_lossy(data);
    let body = parse_answer_html(&html);
    let (summary, plain) = check_answer(HTML, &body, html.len())?;
    // Text outside any markup reaches the output word for word (as tests/fuzz.rs checks).
    if !html.contains('<') && !html.contains('&') {
        for word in html.split_whitespace() {
            ensure!(HTML, plain.contains(word), "word {word:?} lost");
        }
    }
    Ok(summary)
}

/// Checks an answer parsed from `n` bytes (of HTML or of a text record) and returns its size and
/// its plain text. Both parsers share the table model, so both are held to the same bounds.
fn check_answer(
    target: &'static str,
    body: &AnswerBody,
    n: usize,
) -> Result<(HtmlSummary, String), Violation> {
    let summary = measure(target, body)?;
    ensure!(
        target,
        summary.blocks <= n,
        "{} blocks from {n} bytes",
        summary.blocks
    );
    // Entities and collapsing only shrink text; separators joining pieces add at most one byte
    // per piece, and every piece holds at least one byte of input.
    ensure!(
        target,
        summary.text_bytes <= 2 * n,
        "{} bytes of text from {n} bytes",
        summary.text_bytes
    );
    ensure!(
        target,
        summary.cells <= MAX_CELLS_PER_BYTE * n,
        "{} table cells from {n} bytes",
        summary.cells
    );
    // `plain_text` adds `" | "` between cells, a line per row and a blank line per block.
    let plain = body.plain_text();
    ensure!(
        target,
        plain.len() <= 2 * summary.text_bytes + 4 * (summary.cells + summary.blocks),
        "plain text of {} bytes from {n} bytes",
        plain.len()
    );
    Ok((summary, plain))
}

fn measure(target: &'static str, body: &AnswerBody) -> Result<HtmlSummary, Violation> {
    let mut s = HtmlSummary {
        blocks: body.blocks.len(),
        ..HtmlSummary::default()
    };
    for block in &body.blocks {
        match block {
            Block::Paragraph { text } | Block::ListItem { text } => {
                ensure!(target, !text.is_empty(), "an empty paragraph");
                ensure!(
                    target,
                    *text == collapse(text),
                    "paragraph whitespace not collapsed: {text:?}"
                );
                s.text_bytes += text.len();
            }
            Block::Table(table) => {
                s.tables += 1;
                ensure!(
                    target,
                    table.header.iter().filter(|c| !c.is_empty()).count() >= 2,
                    "a table whose header has fewer than two filled cells"
                );
                let width = table.rows.iter().map(|r| r.cells.len()).max().unwrap_or(0);
                ensure!(
                    target,
                    table.force_column.is_none_or(|c| c < width),
                    "force column outside the table"
                );
                s.cells += table.header.len();
                s.text_bytes += table.title.as_ref().map_or(0, String::len);
                s.text_bytes += table.header.iter().map(String::len).sum::<usize>();
                s.text_bytes += table.notes.iter().map(String::len).sum::<usize>();
                let padded = table.header.len().min(MAX_PADDED_COLUMNS);
                for row in &table.rows {
                    ensure!(
                        target,
                        row.cells.len() >= padded,
                        "a row of {} cells under a header of {}",
                        row.cells.len(),
                        table.header.len()
                    );
                    s.cells += row.cells.len();
                    s.text_bytes += row.cells.iter().map(|c| c.to_text().len()).sum::<usize>();
                    let filled = row
                        .cells
                        .iter()
                        .filter(|c| !matches!(c, Cell::Empty))
                        .count();
                    ensure!(target, filled >= 2, "a data row with fewer than two cells");
                }
            }
        }
    }
    Ok(s)
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

// ---------------------------------------------------------------------------------------------
// api_decode
// ---------------------------------------------------------------------------------------------

/// What the API decoders made of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiSummary {
    /// `decode_list_page`: `Some((records, quarantined))`, or `None` for an error.
    pub list_page: Option<(usize, usize)>,
    /// `decode_recorded`: the same.
    pub recorded: Option<(usize, usize)>,
    /// `decode_single` accepted the input.
    pub single: bool,
    /// Non-blank lines given to `decode_line`, and how many of those were quarantined.
    pub lines: usize,
    pub lines_quarantined: usize,
}

const API: &str = "api_decode";

/// The API decoders on arbitrary bytes: never panic; a page is decoded (every record of it a
/// record or a quarantine holding its raw JSON, none dropped: as many items as documents) or
/// refused with a typed error; records carry what the log needs.
pub fn api_decode(data: &[u8]) -> Result<ApiSummary, Violation> {
    let text = String::from_utf8_lossy(data);
    let mut summary = ApiSummary::default();

    match decode_list_page(data) {
        Ok(page) => {
            let value: Option<serde_json::Value> = serde_json::from_slice(data).ok();
            // serde_json::Value refuses numbers out of f64 range that the raw page accepts; then
            // there is nothing independent to count against.
            if let Some(expected) = value
                .as_ref()
                .and_then(|v| v.get("results"))
                .and_then(serde_json::Value::as_array)
            {
                ensure!(
                    API,
                    page.items.len() == expected.len(),
                    "list page: {} items for {} results",
                    page.items.len(),
                    expected.len()
                );
            }
            summary.list_page = Some(check_items(&page.items, &text, "list page")?);
            // The fetcher splits pages and decodes records one by one (skipping those seen
            // before): that must give the same items.
            match split_list_page(data) {
                Ok(split) => {
                    let items: Vec<ApiItem> =
                        split.items.iter().map(|r| decode_raw_item(r)).collect();
                    ensure!(
                        API,
                        items == page.items && split.total_results == page.total_results,
                        "split page: decodes differently from the whole page"
                    );
                }
                Err(e) => ensure!(
                    API,
                    false,
                    "split page: refused ({e}) what the whole page accepted"
                ),
            }
        }
        Err(e) => {
            check_page_error(&e, "list page")?;
            ensure!(
                API,
                split_list_page(data).is_err(),
                "split page: accepted what the whole page refused ({e})"
            );
        }
    }

    let recorded = decode_recorded(data);
    match (&recorded, expected_documents(data)) {
        (Ok(items), Expected::Exactly(n) | Expected::ExactlyOrRefused(n)) => ensure!(
            API,
            items.len() == n,
            "recorded: {} items for {n} documents",
            items.len()
        ),
        (Ok(items), Expected::Refused) => {
            return Err(Violation {
                target: API,
                problem: format!(
                    "recorded: {} items from input that is not data",
                    items.len()
                ),
            })
        }
        (Err(e), Expected::Exactly(n)) => {
            return Err(Violation {
                target: API,
                problem: format!("recorded: refused ({e}) input holding {n} documents"),
            })
        }
        (Err(_), Expected::Refused | Expected::ExactlyOrRefused(_)) => {}
    }
    match recorded {
        Ok(items) => summary.recorded = Some(check_items(&items, &text, "recorded")?),
        Err(e) => check_page_error(&e, "recorded")?,
    }

    match decode_single(data) {
        Ok(item) => {
            check_items(std::slice::from_ref(&item), &text, "single")?;
            summary.single = true;
        }
        Err(e) => check_page_error(&e, "single")?,
    }

    // The JSON-lines path of `ingest` hands every non-blank line to `decode_line`, as text.
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        summary.lines += 1;
        let item = decode_line(line, i + 1);
        if let ApiItem::Quarantined { reason, raw } = &item {
            summary.lines_quarantined += 1;
            ensure!(
                API,
                raw == line,
                "line {}: quarantined text is not the line",
                i + 1
            );
            let is_json = serde_json::from_str::<&serde_json::value::RawValue>(line).is_ok();
            ensure!(
                API,
                is_json != reason.starts_with("JSON line"),
                "line {}: quarantined as {:?}",
                i + 1,
                reason
            );
        }
        check_items(std::slice::from_ref(&item), line, "line")?;
    }
    Ok(summary)
}

/// How many items `decode_recorded` owes for an input, worked out from the module doc.
enum Expected {
    Exactly(usize),
    /// Not data: must be an error.
    Refused,
    /// A list envelope: its `results`, unless the strict page decoder refuses its other fields
    /// (`totalResults` that is not a count, a key given twice).
    ExactlyOrRefused(usize),
}

fn expected_documents(data: &[u8]) -> Expected {
    let Ok(text) = std::str::from_utf8(data.strip_prefix(BOM).unwrap_or(data)) else {
        return Expected::Refused;
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) => Expected::Exactly(items.len()),
        Ok(serde_json::Value::Object(map)) if map.contains_key("results") => {
            match map.get("results").and_then(serde_json::Value::as_array) {
                Some(results) => Expected::ExactlyOrRefused(results.len()),
                None => Expected::Refused,
            }
        }
        Ok(_) => Expected::Exactly(1),
        // Several documents, one a line; fewer than two lines is one broken document.
        Err(_) => match text.lines().filter(|l| !l.trim().is_empty()).count() {
            n if n >= 2 => Expected::Exactly(n),
            _ => Expected::Refused,
        },
    }
}

fn check_page_error(e: &PageError, what: &str) -> Result<(), Violation> {
    let message = match e {
        PageError::Truncated(m) | PageError::Malformed(m) => m,
    };
    ensure!(API, !message.is_empty(), "{what}: an error with no message");
    Ok(())
}

fn check_items(items: &[ApiItem], input: &str, what: &str) -> Result<(usize, usize), Violation> {
    let (mut records, mut quarantined) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        match item {
            ApiItem::Record {
                id,
                record,
                truncated,
            } => {
                records += 1;
                ensure!(
                    API,
                    record.api_id == Some(*id) && record.api.is_some(),
                    "{what} item {i}: record without its API id and details"
                );
                ensure!(
                    API,
                    !record.answering_body.trim().is_empty() && !record.question_text.is_empty(),
                    "{what} item {i}: record with no answering body or question"
                );
                ensure!(
                    API,
                    record.answer_source.format == SourceFormat::Html,
                    "{what} item {i}: API answer not marked as HTML"
                );
                let cut = looks_truncated(&record.question_text)
                    || looks_truncated(&record.answer_source.text);
                ensure!(
                    API,
                    *truncated == cut,
                    "{what} item {i}: truncated is {truncated}"
                );
            }
            ApiItem::Quarantined { reason, raw } => {
                quarantined += 1;
                ensure!(API, !reason.is_empty(), "{what} item {i}: no reason");
                // Nothing lost: the quarantine holds the record's JSON as it was received.
                ensure!(
                    API,
                    input.contains(raw.as_str()),
                    "{what} item {i}: quarantined text is not part of the input"
                );
            }
        }
    }
    Ok((records, quarantined))
}

// ---------------------------------------------------------------------------------------------
// event_decode
// ---------------------------------------------------------------------------------------------

/// What the stored-event decoder made of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventSummary {
    /// The input, taken as a stored value, decoded.
    pub stored_accepted: bool,
    /// The input's JSON, framed with a correct checksum, decoded.
    pub reframed_accepted: bool,
    /// Single-bit corruptions of an accepted value, every one of them refused.
    pub flips_refused: usize,
}

const EVENT: &str = "event_decode";

/// First bytes of a stored event value, as `log.rs` writes them: version 1 (the JSON as it is)
/// and version 2 (the JSON LZ4-compressed, its length before the block).
const FRAME_V1: u8 = 1;
const FRAME_LZ4: u8 = 2;

/// Body bytes whose eight bits are each flipped: spread over the whole value, so that the check
/// stays cheap on large events.
const FLIP_POSITIONS: usize = 48;

/// `decode_envelope` on arbitrary bytes; on the same bytes' JSON framed with a correct checksum,
/// as it is and compressed (so the JSON decoder sees every mutation, not just the checksum
/// check); and on the bytes taken as a compressed block (so the decompressor sees them): never
/// panics; refuses with `LogError::Corrupt` for the sequence number asked; accepts only a frame
/// whose checksum matches the JSON it holds, holding the event asked for; what it accepts
/// encodes and decodes again; and a single flipped bit anywhere in an accepted value is refused.
pub fn event_decode(data: &[u8]) -> Result<EventSummary, Violation> {
    let mut summary = EventSummary::default();
    let framed_json = unframe(data);
    let body = framed_json.as_deref().unwrap_or(data);
    let seq = claimed_seq(body);

    match decode_envelope(seq, data) {
        Ok(envelope) => {
            let Some(json) = &framed_json else {
                return Err(Violation {
                    target: EVENT,
                    problem: "accepted a value that is not a well-formed frame".into(),
                });
            };
            ensure!(
                EVENT,
                data[1..5] == crc32fast::hash(json).to_be_bytes(),
                "accepted a value whose checksum does not match"
            );
            summary.flips_refused += check_accepted(seq, data, &envelope)?;
            summary.stored_accepted = true;
        }
        Err(e) => check_refusal(&e, seq, "stored value")?,
    }

    for (what, framed) in [
        ("framed JSON", frame(body)),
        ("compressed JSON", frame_compressed(body)),
    ] {
        match decode_envelope(seq, &framed) {
            Ok(envelope) => {
                summary.flips_refused += check_accepted(seq, &framed, &envelope)?;
                summary.reframed_accepted = true;
            }
            Err(e) => check_refusal(&e, seq, what)?,
        }
    }

    // The bytes as a compressed block, said to decompress to a few lengths around what they
    // could: whatever the decompressor makes of them is refused or checked, never a panic.
    for length in [data.len(), data.len().saturating_mul(3), data.len() / 2] {
        let claimed = u32::try_from(length).unwrap_or(u32::MAX);
        let mut value = vec![FRAME_LZ4, 0, 0, 0, 0];
        value.extend_from_slice(&claimed.to_be_bytes());
        value.extend_from_slice(data);
        match decode_envelope(seq, &value) {
            Ok(envelope) => {
                check_accepted(seq, &value, &envelope)?;
            }
            Err(e) => check_refusal(&e, seq, "bytes taken as a compressed block")?,
        }
    }
    Ok(summary)
}

/// The JSON a stored value frames, read as the harness understands the format (independently
/// of `log.rs`); `None` when it is not a well-formed frame.
fn unframe(data: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    match data {
        [FRAME_V1, _, _, _, _, json @ ..] => Some(std::borrow::Cow::Borrowed(json)),
        [FRAME_LZ4, _, _, _, _, a, b, c, d, block @ ..] => {
            let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            // LZ4 expands at most 255-fold: a larger claim is not a frame (and is not allocated).
            if length > block.len().saturating_mul(255) {
                return None;
            }
            let json = lz4_flex::block::decompress(block, length).ok()?;
            (json.len() == length).then_some(std::borrow::Cow::Owned(json))
        }
        _ => None,
    }
}

/// The sequence number the JSON says it has, so that a well-formed event is asked for under its
/// own number and decodes; 0 when there is none.
fn claimed_seq(json: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

fn frame(json: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(5 + json.len());
    value.push(FRAME_V1);
    value.extend_from_slice(&crc32fast::hash(json).to_be_bytes());
    value.extend_from_slice(json);
    value
}

fn frame_compressed(json: &[u8]) -> Vec<u8> {
    let mut value = vec![FRAME_LZ4];
    value.extend_from_slice(&crc32fast::hash(json).to_be_bytes());
    value.extend_from_slice(&u32::try_from(json.len()).unwrap_or(u32::MAX).to_be_bytes());
    value.extend_from_slice(&lz4_flex::block::compress(json));
    value
}

fn check_refusal(e: &LogError, seq: u64, what: &str) -> Result<(), Violation> {
    match e {
        LogError::Corrupt { seq: said, problem } => {
            ensure!(
                EVENT,
                *said == seq,
                "{what}: refusal names event {said}, not {seq}"
            );
            ensure!(EVENT, !problem.is_empty(), "{what}: refusal with no reason");
            Ok(())
        }
        other => Err(Violation {
            target: EVENT,
            problem: format!("{what}: refused with a non-corruption error: {other}"),
        }),
    }
}

/// Checks an accepted value; returns how many corrupted copies of it were refused.
fn check_accepted(seq: u64, value: &[u8], envelope: &Envelope) -> Result<usize, Violation> {
    ensure!(
        EVENT,
        envelope.seq == seq,
        "asked for event {seq}, got {}",
        envelope.seq
    );
    ensure!(
        EVENT,
        decode_envelope(seq.wrapping_add(1), value).is_err(),
        "event {seq} also accepted as event {}",
        seq.wrapping_add(1)
    );

    // What the log can read it must be able to write back (`copy_events_from` and a re-encode
    // after a schema change rely on it).
    let json = serde_json::to_vec(envelope).map_err(|e| Violation {
        target: EVENT,
        problem: format!("an accepted event does not encode: {e}"),
    })?;
    match decode_envelope(seq, &crate::log::frame_event(&json)) {
        Ok(again) => ensure!(
            EVENT,
            again.schema == envelope.schema
                && again.recorded_at == envelope.recorded_at
                && again.source == envelope.source
                && again.content_hash == envelope.content_hash
                && again.event.kind() == envelope.event.kind()
                && again.event.question() == envelope.event.question(),
            "an accepted event changed when encoded and decoded again"
        ),
        Err(e) => {
            return Err(Violation {
                target: EVENT,
                problem: format!("an accepted event, encoded again, is refused: {e}"),
            })
        }
    }

    // The frame and checksum must catch any single-bit corruption, wherever it falls.
    let header = if value.first() == Some(&FRAME_LZ4) {
        9
    } else {
        5
    };
    let mut positions: Vec<usize> = (0..value.len().min(header)).collect();
    let body_len = value.len().saturating_sub(header);
    let step = body_len.div_ceil(FLIP_POSITIONS).max(1);
    positions.extend((header..value.len()).step_by(step));
    let mut refused = 0;
    let mut corrupt = value.to_vec();
    // In a compressed block a flip can leave the JSON as it was (a match's offset moved to
    // another copy of the same bytes): accepted then, as nothing of the event changed.
    let original = unframe(value);
    for at in positions {
        for bit in 0..8 {
            corrupt[at] ^= 1 << bit;
            if decode_envelope(seq, &corrupt).is_ok() {
                ensure!(
                    EVENT,
                    at >= header && unframe(&corrupt) == original,
                    "event {seq} accepted with bit {bit} of byte {at} flipped"
                );
            } else {
                refused += 1;
            }
            corrupt[at] ^= 1 << bit;
        }
    }
    Ok(refused)
}
