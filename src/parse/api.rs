//! Parliament written questions API JSON in, typed records out.
//!
//! Accepts the list envelope (`{results: [{value, links}], totalResults}`), the single-record
//! envelope (`{value, links}`), a bare record, a JSON array of either, or JSON lines of either, so
//! that recorded data replays through the same path as live pages. Each record is decoded on its
//! own: one malformed record is quarantined with its raw JSON and the reason, and the rest of the
//! page still decodes. A page that is not JSON at all is an error, told apart as truncated (the
//! body ended early: worth retrying) or malformed.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::record::{
    AnswerRecord, AnswerSource, AnsweringMember, ApiDetails, AskingMember, Attachment, House,
    SourceFormat,
};

/// The Parliament site's page for a question.
pub const PUBLIC_SITE: &str = "https://questions-statements.parliament.uk";

/// One record of a page, decoded or not.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiItem {
    Record {
        id: u64,
        record: Box<AnswerRecord>,
        /// The list endpoint cut `questionText` or `answerText` short (it ends in `...`): the
        /// whole record must be fetched by id before it is logged.
        truncated: bool,
    },
    Quarantined {
        reason: String,
        /// The record's JSON exactly as received.
        raw: String,
    },
}

/// A decoded list page.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiPage {
    pub total_results: Option<u64>,
    pub items: Vec<ApiItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("truncated JSON: {0}")]
    Truncated(String),
    #[error("malformed JSON: {0}")]
    Malformed(String),
}

impl PageError {
    fn from_json(e: serde_json::Error) -> PageError {
        let at = format!("{e}");
        if e.is_eof() {
            PageError::Truncated(at)
        } else {
            PageError::Malformed(at)
        }
    }
}

#[derive(Deserialize)]
struct ListEnvelope<'a> {
    #[serde(borrow)]
    results: Vec<&'a RawValue>,
    #[serde(rename = "totalResults", default)]
    total_results: Option<u64>,
}

/// Decodes a page of the list endpoint.
pub fn decode_list_page(body: &[u8]) -> Result<ApiPage, PageError> {
    let envelope: ListEnvelope<'_> = serde_json::from_slice(body).map_err(PageError::from_json)?;
    Ok(ApiPage {
        total_results: envelope.total_results,
        items: envelope
            .results
            .iter()
            .map(|raw| decode_item(raw.get()))
            .collect(),
    })
}

/// A page of the list endpoint split into its records, each still raw JSON, so that a caller can
/// skip decoding the ones it has seen byte for byte before.
#[derive(Debug)]
pub struct RawListPage {
    pub total_results: Option<u64>,
    pub items: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct OwnedListEnvelope {
    results: Vec<Box<RawValue>>,
    #[serde(rename = "totalResults", default)]
    total_results: Option<u64>,
}

/// Splits a page of the list endpoint into raw records (decode each with [`decode_raw_item`]).
pub fn split_list_page(body: &[u8]) -> Result<RawListPage, PageError> {
    let envelope: OwnedListEnvelope = serde_json::from_slice(body).map_err(PageError::from_json)?;
    Ok(RawListPage {
        total_results: envelope.total_results,
        items: envelope.results,
    })
}

/// Decodes one raw record of a page split by [`split_list_page`]: exactly what
/// [`decode_list_page`] gives for it.
pub fn decode_raw_item(raw: &RawValue) -> ApiItem {
    decode_item(raw.get())
}

/// Decodes the by-id endpoint's `{value, links}`.
pub fn decode_single(body: &[u8]) -> Result<ApiItem, PageError> {
    let text =
        std::str::from_utf8(body).map_err(|e| PageError::Malformed(format!("not UTF-8: {e}")))?;
    // Checked as JSON first so that a cut-off body is an error to retry, not a quarantine.
    serde_json::from_str::<&RawValue>(text).map_err(PageError::from_json)?;
    Ok(decode_item(text))
}

/// Decodes recorded API data in any of the accepted shapes (see the module doc).
pub fn decode_recorded(bytes: &[u8]) -> Result<Vec<ApiItem>, PageError> {
    let text = std::str::from_utf8(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        .map_err(|e| PageError::Malformed(format!("not UTF-8: {e}")))?;
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(_)) => {
            let items: Vec<&RawValue> = serde_json::from_str(text).map_err(PageError::from_json)?;
            Ok(items.iter().map(|raw| decode_item(raw.get())).collect())
        }
        Ok(serde_json::Value::Object(map)) if map.contains_key("results") => {
            Ok(decode_list_page(text.as_bytes())?.items)
        }
        Ok(_) => Ok(vec![decode_item(text.trim())]),
        Err(whole) => {
            // Several documents, one a line (JSON lines); one bad line is one quarantined record.
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() < 2 {
                return Err(PageError::from_json(whole));
            }
            Ok(lines
                .into_iter()
                .enumerate()
                .map(|(i, line)| decode_line(line, i + 1))
                .collect())
        }
    }
}

/// One line of a JSON-lines file (`number` is 1-based, for the quarantine reason).
pub fn decode_line(line: &str, number: usize) -> ApiItem {
    match serde_json::from_str::<&RawValue>(line) {
        Ok(_) => decode_item(line),
        Err(e) => ApiItem::Quarantined {
            reason: format!("JSON line {number}: {e}"),
            raw: line.to_string(),
        },
    }
}

/// Whether `head` (the start of a file) opens JSON lines of records rather than one document:
/// its first line is a complete JSON object that is not a list envelope.
pub fn looks_like_json_lines(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head));
    let Some(first) = text.lines().find(|l| !l.trim().is_empty()) else {
        return false;
    };
    matches!(
        serde_json::from_str::<serde_json::Value>(first),
        Ok(serde_json::Value::Object(map)) if !map.contains_key("results")
    )
}

/// One `{value, links}` wrapper or bare record.
fn decode_item(raw: &str) -> ApiItem {
    match decode_item_direct(raw) {
        Some((id, record, truncated)) => ApiItem::Record {
            id,
            record: Box::new(record),
            truncated,
        },
        None => decode_item_via_tree(raw),
    }
}

/// [`decode_item`] straight from the text into the typed question, without the JSON tree
/// (with the clone below, 14% of an ingest's allocation calls); `None` for anything it
/// does not decode cleanly (a bad id, a type error, a duplicate key, a record to quarantine),
/// which then takes the tree path, so the outcome and the quarantine reasons are the same.
fn decode_item_direct(raw: &str) -> Option<(u64, AnswerRecord, bool)> {
    #[derive(Deserialize)]
    struct Wrapper<'a> {
        #[serde(borrow, default)]
        value: Option<&'a RawValue>,
    }
    // serde reads a struct from an array too (fields by position); the tree path takes only
    // an object as a record.
    if !raw.trim_start().starts_with('{') {
        return None;
    }
    let wrapper: Wrapper = serde_json::from_str(raw).ok()?;
    let record = match wrapper.value {
        Some(inner) if inner.get().trim_start().starts_with('{') => inner.get(),
        _ => raw,
    };
    let question: ApiQuestion = serde_json::from_str(record).ok()?;
    let id = question.id?;
    record_from_question(id, question).ok()
}

/// [`decode_item`] through the JSON tree, which names what is wrong.
fn decode_item_via_tree(raw: &str) -> ApiItem {
    let quarantine = |reason: String| ApiItem::Quarantined {
        reason,
        raw: raw.to_string(),
    };
    let value: serde_json::Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => return quarantine(format!("record is not JSON: {e}")),
    };
    let record = match value.get("value") {
        Some(inner) if inner.is_object() => inner,
        _ => &value,
    };
    match record_from_value(record) {
        Ok((id, record, truncated)) => ApiItem::Record {
            id,
            record: Box::new(record),
            truncated,
        },
        Err(reason) => quarantine(reason),
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ApiQuestion {
    id: Option<u64>,
    uin: Option<StringOrNumber>,
    house: Option<String>,
    date_tabled: Option<String>,
    date_for_answer: Option<String>,
    date_answered: Option<String>,
    asking_member_id: Option<u64>,
    asking_member: Option<ApiMember>,
    answering_body_id: Option<u64>,
    answering_body_name: Option<String>,
    answering_member_id: Option<u64>,
    answering_member: Option<ApiMember>,
    heading: Option<String>,
    question_text: Option<String>,
    answer_text: Option<String>,
    answer_is_holding: Option<bool>,
    date_holding_answer: Option<String>,
    answer_is_correction: Option<bool>,
    original_answer_text: Option<String>,
    date_answer_corrected: Option<String>,
    is_withdrawn: Option<bool>,
    grouped_questions: Option<Vec<StringOrNumber>>,
    attachments: Option<Vec<ApiAttachment>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ApiMember {
    name: Option<String>,
    party: Option<String>,
    member_from: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ApiAttachment {
    title: Option<String>,
    url: Option<String>,
    file_type: Option<String>,
}

/// UINs come as strings, grouped questions sometimes as numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Number(serde_json::Number),
}

impl StringOrNumber {
    fn into_string(self) -> String {
        match self {
            StringOrNumber::String(s) => s,
            StringOrNumber::Number(n) => n.to_string(),
        }
    }
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// Decodes one API record. Errors are the quarantine reason.
fn record_from_value(value: &serde_json::Value) -> Result<(u64, AnswerRecord, bool), String> {
    let id = value
        .get("id")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| "record has no numeric 'id'".to_string())?;
    // Deserialized from the borrowed value: `from_value` takes it by value, and heaptrack
    // listed about 140 allocations a record under cloning the tree for it.
    let q = ApiQuestion::deserialize(value)
        .map_err(|e| format!("question {id}: unexpected field type: {e}"))?;
    record_from_question(id, q)
}

/// The record from its decoded question. Errors are the quarantine reason.
fn record_from_question(id: u64, q: ApiQuestion) -> Result<(u64, AnswerRecord, bool), String> {
    let answering_body = non_empty(q.answering_body_name)
        .ok_or_else(|| format!("question {id}: no answeringBodyName"))?;
    let question_text =
        non_empty(q.question_text).ok_or_else(|| format!("question {id}: no questionText"))?;
    let house = match q.house.as_deref() {
        Some("Commons") => Some(House::Commons),
        Some("Lords") => Some(House::Lords),
        _ => None,
    };
    let asking = q.asking_member.unwrap_or_default();
    let member_from = non_empty(asking.member_from);
    let asking_member = AskingMember {
        name: non_empty(asking.name).unwrap_or_else(|| match q.asking_member_id {
            Some(member) => format!("member {member}"),
            None => "unknown member".to_string(),
        }),
        party: non_empty(asking.party),
        constituency: member_from.clone().filter(|_| house != Some(House::Lords)),
        peerage: member_from.filter(|_| house == Some(House::Lords)),
    };
    let answering_member = AnsweringMember {
        name: q
            .answering_member
            .and_then(|m| non_empty(m.name))
            .or_else(|| q.answering_member_id.map(|m| format!("member {m}")))
            .unwrap_or_default(),
        title: None,
    };
    let answer_html = q.answer_text.unwrap_or_default();
    let truncated = looks_truncated(&question_text) || looks_truncated(&answer_html);
    let answer = super::html::parse_answer_html(&answer_html);
    let (forces, unknown_forces) = super::forces_of(&answer);
    let uin = q.uin.map(StringOrNumber::into_string);
    let url = match (&q.date_tabled, &uin) {
        (Some(date), Some(uin)) if date.len() >= 10 && date.is_char_boundary(10) => Some(format!(
            "{PUBLIC_SITE}/written-questions/detail/{}/{uin}",
            &date[..10]
        )),
        _ => None,
    };
    let api = ApiDetails {
        uin,
        heading: non_empty(q.heading),
        date_tabled: q.date_tabled,
        date_for_answer: q.date_for_answer,
        date_answered: q.date_answered,
        asking_member_id: q.asking_member_id,
        answering_member_id: q.answering_member_id,
        answering_body_id: q.answering_body_id,
        is_holding: q.answer_is_holding.unwrap_or(false),
        date_holding_answer: q.date_holding_answer,
        is_correction: q.answer_is_correction.unwrap_or(false),
        original_answer_text: non_empty(q.original_answer_text),
        date_answer_corrected: q.date_answer_corrected,
        is_withdrawn: q.is_withdrawn.unwrap_or(false),
        grouped_questions: q
            .grouped_questions
            .unwrap_or_default()
            .into_iter()
            .map(StringOrNumber::into_string)
            .collect(),
        attachments: q
            .attachments
            .unwrap_or_default()
            .into_iter()
            .map(|a| Attachment {
                title: a.title,
                url: a.url,
                file_type: a.file_type,
            })
            .collect(),
        url,
    };
    let record = AnswerRecord {
        api_id: Some(id),
        house,
        asking_member,
        answering_body,
        question_text,
        answering_member,
        answer,
        answer_source: AnswerSource {
            format: SourceFormat::Html,
            text: answer_html,
        },
        forces,
        unknown_forces,
        feed_position: None,
        api: Some(api),
    };
    Ok((id, record, truncated))
}

/// The list endpoint ends cut-short text with `...` (sometimes inside the last tag).
pub fn looks_truncated(text: &str) -> bool {
    let mut t = text.trim_end();
    while t.ends_with('>') {
        match t.rfind('<') {
            Some(open) => t = t[..open].trim_end(),
            None => break,
        }
    }
    t.ends_with("...") || t.ends_with('\u{2026}')
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"id": 1679703, "askingMemberId": 4410,
        "askingMember": {"id": 4410, "name": "Adrian Ramsay", "party": "Green Party", "memberFrom": "Waveney Valley", "listAs": "Ramsay, Adrian"},
        "house": "Commons", "memberHasInterest": false, "dateTabled": "2025-01-06T00:00:00",
        "dateForAnswer": "2025-01-09T00:00:00", "uin": "21456",
        "questionText": "To ask the Secretary of State for the Home Department, what plans?",
        "answeringBodyId": 1, "answeringBodyName": "Home Office", "isWithdrawn": false,
        "groupedQuestions": ["21457", 21458], "answerIsHolding": false, "answerIsCorrection": false,
        "answeringMemberId": 4768, "answeringMember": {"name": "Jess Phillips", "party": "Labour"},
        "dateAnswered": "2025-01-13T00:00:00",
        "answerText": "<p>DAPOs are live in Greater Manchester and with the British Transport Police.</p>",
        "originalAnswerText": "", "dateAnswerCorrected": null, "dateHoldingAnswer": null,
        "attachmentCount": 0, "heading": "Domestic Abuse: Protection Orders", "attachments": [],
        "someFieldFromTheFuture": {"x": 1}}"#;

    /// The direct decoding (no JSON tree) gives what the tree path gives, for every record of
    /// the API fixtures and every input of the API decoder's fuzz corpus, each whole and each
    /// of its results.
    #[test]
    fn direct_decoding_equals_the_tree_path_on_the_fixtures_and_fuzz_corpus() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut inputs: Vec<String> = vec![RECORD.to_string()];
        for dir in ["api", "fuzz/api_decode"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for entry in entries.flatten() {
                let bytes = std::fs::read(entry.path()).unwrap();
                let text = String::from_utf8_lossy(&bytes).to_string();
                if let Ok(serde_json::Value::Object(page)) = serde_json::from_str(&text) {
                    if let Some(serde_json::Value::Array(results)) = page.get("results") {
                        inputs.extend(results.iter().map(|r| r.to_string()));
                    }
                }
                inputs.push(text);
            }
        }
        let mut direct = 0;
        for raw in &inputs {
            assert_eq!(decode_item(raw), decode_item_via_tree(raw), "{raw}");
            direct += usize::from(decode_item_direct(raw).is_some());
        }
        assert!(
            direct > 20,
            "only {direct} of {} decoded directly",
            inputs.len()
        );
    }

    proptest::proptest! {
        /// Records with fields of the wrong type, missing, null, repeated, wrapped or not: the
        /// direct decoding and the tree path agree, quarantine reasons included.
        #[test]
        fn direct_decoding_equals_the_tree_path_on_odd_records(
            id in proptest::prop_oneof![
                proptest::strategy::Just("1679703".to_string()),
                proptest::strategy::Just("\"1679703\"".to_string()),
                proptest::strategy::Just("1679703.0".to_string()),
                proptest::strategy::Just("-4".to_string()),
                proptest::strategy::Just("null".to_string()),
                proptest::strategy::Just("18446744073709551616".to_string()),
            ],
            body in proptest::prop_oneof![
                proptest::strategy::Just("\"Home Office\"".to_string()),
                proptest::strategy::Just("\"  \"".to_string()),
                proptest::strategy::Just("null".to_string()),
                proptest::strategy::Just("7".to_string()),
            ],
            uin in proptest::prop_oneof![
                proptest::strategy::Just("\"21456\"".to_string()),
                proptest::strategy::Just("21456".to_string()),
                proptest::strategy::Just("2.5e3".to_string()),
                proptest::strategy::Just("[1]".to_string()),
            ],
            text in ".{0,40}",
            repeat_id in proptest::bool::ANY,
            wrap in 0..5u8,
        ) {
            let text = serde_json::to_string(&text).unwrap();
            let dup = if repeat_id { r#""id": 5, "# } else { "" };
            let record = format!(
                r#"{{{dup}"id": {id}, "answeringBodyName": {body}, "uin": {uin},
                "dateTabled": "2025-01-06T00:00:00", "questionText": "To ask what?",
                "answerText": {text}, "groupedQuestions": [{uin}], "house": "Lords"}}"#
            );
            let raw = match wrap {
                0 => record,
                1 => format!(r#"{{"value": {record}, "links": []}}"#),
                2 => r#"{"value": null, "links": [], "id": 3}"#.to_string(),
                3 => format!(r#"{{"links": [], "value": [{record}]}}"#),
                _ => format!("[{record}]"),
            };
            proptest::prop_assert_eq!(decode_item(&raw), decode_item_via_tree(&raw));
        }
    }

    #[test]
    fn a_record_decodes_every_field_users_need() {
        let page =
            format!(r#"{{"results": [{{"value": {RECORD}, "links": []}}], "totalResults": 1}}"#);
        let page = decode_list_page(page.as_bytes()).unwrap();
        assert_eq!(page.total_results, Some(1));
        let ApiItem::Record {
            id,
            record,
            truncated,
        } = &page.items[0]
        else {
            panic!("{:?}", page.items[0]);
        };
        assert_eq!(*id, 1679703);
        assert!(!truncated);
        assert_eq!(record.api_id, Some(1679703));
        assert_eq!(record.house, Some(House::Commons));
        assert_eq!(record.asking_member.name, "Adrian Ramsay");
        assert_eq!(
            record.asking_member.constituency.as_deref(),
            Some("Waveney Valley")
        );
        assert_eq!(record.answering_member.name, "Jess Phillips");
        assert_eq!(record.answering_body, "Home Office");
        let api = record.api.as_ref().unwrap();
        assert_eq!(api.uin.as_deref(), Some("21456"));
        assert_eq!(api.grouped_questions, vec!["21457", "21458"]);
        assert_eq!(
            api.heading.as_deref(),
            Some("Domestic Abuse: Protection Orders")
        );
        assert_eq!(api.original_answer_text, None);
        assert_eq!(
            api.url.as_deref(),
            Some("https://questions-statements.parliament.uk/written-questions/detail/2025-01-06/21456")
        );
        let forces: Vec<&str> = record.forces.iter().map(|f| f.id.as_str()).collect();
        assert_eq!(
            forces,
            vec!["greater-manchester", "british-transport-police"]
        );
        assert_eq!(record.answer_source.format, SourceFormat::Html);
        assert!(record.answer_source.text.starts_with("<p>DAPOs"));
    }

    #[test]
    fn a_bad_record_is_quarantined_and_the_page_goes_on() {
        let page = format!(
            r#"{{"results": [{{"value": {{"id": "not a number"}}}}, {{"value": {RECORD}}}, {{"value": {{"id": 5, "answeringBodyName": "Home Office", "questionText": "Q", "isWithdrawn": "yes"}}}}], "totalResults": 3}}"#
        );
        let page = decode_list_page(page.as_bytes()).unwrap();
        assert_eq!(page.items.len(), 3);
        assert!(
            matches!(&page.items[0], ApiItem::Quarantined { reason, raw } if reason.contains("numeric 'id'") && raw.contains("not a number"))
        );
        assert!(matches!(
            &page.items[1],
            ApiItem::Record { id: 1679703, .. }
        ));
        assert!(
            matches!(&page.items[2], ApiItem::Quarantined { reason, .. } if reason.starts_with("question 5:"))
        );
    }

    #[test]
    fn a_split_page_decodes_item_by_item_as_the_whole_page_does() {
        let page = format!(
            r#"{{"results": [{{"value": {{"id": "not a number"}}}}, {{"value": {RECORD}}}, {{"value": {{"id": 5, "questionText": "Q"}}}}], "totalResults": 3}}"#
        );
        let whole = decode_list_page(page.as_bytes()).unwrap();
        let split = split_list_page(page.as_bytes()).unwrap();
        assert_eq!(split.total_results, Some(3));
        let items: Vec<ApiItem> = split.items.iter().map(|r| decode_raw_item(r)).collect();
        assert_eq!(items, whole.items);
        // The raw text is the record exactly as sent (it is what a digest is taken of).
        assert!(split.items[1]
            .get()
            .starts_with(r#"{"value": {"id": 1679703"#));
        let cut = &page[..page.len() - 20];
        assert!(matches!(
            split_list_page(cut.as_bytes()),
            Err(PageError::Truncated(_))
        ));
        assert!(matches!(
            split_list_page(b"<html>busy</html>"),
            Err(PageError::Malformed(_))
        ));
    }

    #[test]
    fn truncated_and_malformed_pages_are_told_apart() {
        let full = format!(r#"{{"results": [{{"value": {RECORD}}}], "totalResults": 1}}"#);
        let cut = &full.as_bytes()[..full.len() / 2];
        assert!(matches!(
            decode_list_page(cut),
            Err(PageError::Truncated(_))
        ));
        assert!(matches!(
            decode_list_page(b"<html>Service Unavailable</html>"),
            Err(PageError::Malformed(_))
        ));
        assert!(matches!(
            decode_list_page(b"{\"totalResults\": 3}"),
            Err(PageError::Malformed(_))
        ));
    }

    #[test]
    fn cut_short_text_is_detected() {
        assert!(looks_truncated("The Environment Agency (EA) are t..."));
        assert!(looks_truncated(
            "<p>The Environment Agency (EA) are t...</p>"
        ));
        assert!(!looks_truncated("<p>A whole answer.</p>"));
        let cut = RECORD.replace("Transport Police.</p>", "Transport Pol...");
        let item = decode_recorded(cut.as_bytes()).unwrap().remove(0);
        assert!(matches!(
            item,
            ApiItem::Record {
                truncated: true,
                ..
            }
        ));
    }

    #[test]
    fn recorded_data_in_every_shape_decodes() {
        let wrapped = format!(r#"{{"value": {RECORD}, "links": []}}"#);
        let one_line = RECORD.replace('\n', " ");
        let shapes = [
            RECORD.to_string(),
            wrapped.clone(),
            format!("[{wrapped}, {RECORD}]"),
            format!(r#"{{"results": [{wrapped}], "totalResults": 1}}"#),
            format!("{one_line}\n{}\n", wrapped.replace('\n', " ")),
        ];
        let counts: Vec<usize> = shapes
            .iter()
            .map(|s| decode_recorded(s.as_bytes()).unwrap().len())
            .collect();
        assert_eq!(counts, vec![1, 1, 2, 1, 2]);
        let lines = format!("{one_line}\n{{broken\n");
        let items = decode_recorded(lines.as_bytes()).unwrap();
        assert!(
            matches!(&items[1], ApiItem::Quarantined { reason, .. } if reason.starts_with("JSON line 2"))
        );
        assert!(decode_recorded(b"{\"value\": {").is_err());
    }
}
