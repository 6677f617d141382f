//! Events stored by schema 1 (the day it shipped) must stay readable by every later version.
//! `tests/fixtures/events/schema-v1.jsonl` holds events exactly as `answerfeed events --json`
//! printed them then; never regenerate it, only add files for newer schemas beside it.

use answerfeed::event::{Envelope, Event};

const STORED: &str = include_str!("fixtures/events/schema-v1.jsonl");

fn stored() -> Vec<Envelope> {
    STORED
        .lines()
        .map(|line| serde_json::from_str(line).expect("a schema-1 event decodes"))
        .collect()
}

#[test]
fn schema_1_events_decode_with_their_content() {
    let events = stored();
    assert_eq!(events.len(), 5);
    assert!(events.iter().all(|e| e.schema == 1));

    let table_answer = &events[0];
    assert_eq!(table_answer.seq, 7);
    let record = table_answer.event.record().expect("an answer");
    assert_eq!(record.asking_member.name, "Lord Bourne of Aberystwyth");
    assert_eq!(record.answering_body, "Attorney General");
    let table = record.answer.tables().next().expect("the table survives");
    assert_eq!(table.rows.len(), 45);
    assert_eq!(record.forces.len(), 44);

    match &events[2].event {
        Event::AnswerRevised {
            previous_seq,
            previous_hash,
            ..
        } => {
            assert_eq!(*previous_seq, 10);
            assert_eq!(previous_hash, &events[1].content_hash);
        }
        other => panic!("expected a revision, got {other:?}"),
    }
    match &events[4].event {
        Event::RecordQuarantined {
            reason, raw_base64, ..
        } => {
            assert_eq!(reason, "invalid UTF-8 on line 3");
            assert!(raw_base64.is_some());
        }
        other => panic!("expected a quarantine, got {other:?}"),
    }
}

#[test]
fn schema_1_events_keep_their_content_hash() {
    // The hash is what makes re-ingesting an old answer a no-op: it must not drift.
    for envelope in stored() {
        if let Some(record) = envelope.event.record() {
            assert_eq!(
                answerfeed::event::fingerprint_answer(record),
                envelope.content_hash,
                "event {}",
                envelope.seq
            );
        }
    }
}

#[test]
fn schema_1_events_reencode_to_the_same_json() {
    // Decoding and encoding again loses nothing that was stored.
    for line in STORED.lines() {
        let envelope: Envelope = serde_json::from_str(line).unwrap();
        let again: serde_json::Value = serde_json::to_value(&envelope).unwrap();
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(again, original);
    }
}
