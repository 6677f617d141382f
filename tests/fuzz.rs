//! Property-based fuzzing on stable (the cargo-fuzz targets in fuzz/ need nightly; their corpus
//! replays in tests/fuzz_corpus.rs): the HTML answer parser, the API JSON decoder and the stored-event decoder must
//! never panic, whatever bytes they are given, and must keep or refuse input, never lose it.
//! The text parser's property tests live beside it (src/parse/tests.rs).

use answerfeed::log::decode_envelope;
use answerfeed::parse::api::{decode_list_page, decode_recorded, ApiItem};
use answerfeed::parse::html::parse_answer_html;
use proptest::prelude::*;

const PAGE: &str = include_str!("fixtures/api/page-1.json");

fn html_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("<p>".to_string()),
        Just("</p>".to_string()),
        Just("<table>".to_string()),
        Just("</table>".to_string()),
        Just("<tr>".to_string()),
        Just("<td colspan=\"3\">".to_string()),
        Just("<th>".to_string()),
        Just("</td>".to_string()),
        Just("<ul><li>".to_string()),
        Just("</li>".to_string()),
        Just("<br/>".to_string()),
        Just("<!-- c".to_string()),
        Just("-->".to_string()),
        Just("<script>".to_string()),
        Just("</script>".to_string()),
        Just("&amp;".to_string()),
        Just("&#x1F600;".to_string()),
        Just("&#99999999;".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("\"".to_string()),
        Just("Metropolitan Police".to_string()),
        Just("1,234".to_string()),
        "[a-zA-Z0-9 ,.|&;#<>/\"'=-]{0,12}",
        any::<String>(),
    ]
}

/// A real event's JSON, as a log of schema version 1 stored it (the fixture's second line).
fn stored_event_json() -> &'static [u8] {
    let line = include_str!("fixtures/events/schema-v1.jsonl")
        .lines()
        .nth(1);
    line.expect("the fixture has a second event").as_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn html_never_panics_and_keeps_its_words(pieces in proptest::collection::vec(html_piece(), 0..40)) {
        let html = pieces.concat();
        let body = parse_answer_html(&html);
        let text = body.plain_text();
        // Text outside tags and scripts survives somewhere in the output.
        if !html.contains('<') && !html.contains('&') {
            let words: Vec<&str> = html.split_whitespace().collect();
            for w in words {
                prop_assert!(text.contains(w), "{w:?} lost from {html:?}");
            }
        }
    }

    #[test]
    fn api_pages_never_panic_when_mutated(
        cut in 0usize..PAGE.len(),
        flips in proptest::collection::vec((0usize..PAGE.len(), any::<u8>()), 0..8),
    ) {
        let mut bytes = PAGE.as_bytes().to_vec();
        for (at, b) in flips {
            bytes[at] = b;
        }
        let _ = decode_list_page(&bytes);
        let _ = decode_recorded(&bytes);
        let _ = decode_list_page(&bytes[..cut]);
        let _ = decode_recorded(&bytes[..cut]);
    }

    #[test]
    fn any_record_is_decoded_or_quarantined_with_its_bytes(value in any::<String>(), key in "[a-zA-Z]{1,12}") {
        let record = serde_json::json!({"id": 5, key.clone(): value, "answeringBodyName": "Home Office", "questionText": "Q"});
        let text = serde_json::to_string(&serde_json::json!({"results": [{"value": record}], "totalResults": 1})).unwrap();
        let page = decode_list_page(text.as_bytes()).unwrap();
        prop_assert_eq!(page.items.len(), 1);
        if let ApiItem::Quarantined { raw, .. } = &page.items[0] {
            prop_assert!(raw.contains("Home Office"));
        }
    }

    #[test]
    fn stored_events_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..200), seq in any::<u64>()) {
        let _ = decode_envelope(seq, &bytes);
    }

    #[test]
    fn a_flipped_byte_in_a_stored_event_is_always_caught(at in 0usize..400, bit in 0u8..8) {
        let json = stored_event_json();
        let mut value = vec![1u8];
        value.extend_from_slice(&crc32(json).to_be_bytes());
        value.extend_from_slice(json);
        prop_assert!(decode_envelope(10, &value).is_ok());
        let at = 5 + at % json.len();
        value[at] ^= 1 << bit;
        prop_assert!(decode_envelope(10, &value).is_err());
    }

    #[test]
    fn compressed_frames_never_panic_on_garbage(block in proptest::collection::vec(any::<u8>(), 0..200), length in any::<u32>(), seq in any::<u64>()) {
        let mut value = vec![2u8, 0, 0, 0, 0];
        value.extend_from_slice(&length.to_be_bytes());
        value.extend_from_slice(&block);
        prop_assert!(decode_envelope(seq, &value).is_err());
    }

    #[test]
    fn a_flipped_bit_in_a_compressed_event_is_caught_or_changes_nothing(at in 0usize..4000, bit in 0u8..8) {
        let json = stored_event_json();
        let mut value = vec![2u8];
        value.extend_from_slice(&crc32(json).to_be_bytes());
        value.extend_from_slice(&(json.len() as u32).to_be_bytes());
        value.extend_from_slice(&lz4_flex::block::compress(json));
        let event = decode_envelope(10, &value).unwrap();
        let at = at % value.len();
        value[at] ^= 1 << bit;
        // A flip can move a match to another copy of the same bytes: the event is then intact.
        if let Ok(read) = decode_envelope(10, &value) {
            prop_assert!(at >= 9);
            prop_assert_eq!(read, event);
        }
    }
}

/// CRC-32 (IEEE), as the log frames events.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for b in bytes {
        crc ^= u32::from(*b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
