use super::*;
use crate::event::{Observation, Payload, Source};
use crate::log::{Appended, StoreOptions};
use crate::record::{
    AnswerBody, AnswerRecord, AnswerSource, AnsweringMember, AskingMember, Block, SourceFormat,
};

fn answer(question: usize, text: usize) -> Observation {
    let words = format!(
        "The department has published figures number {text} for every police force area in \
         England and Wales and will update them each quarter"
    );
    Observation {
        source: Source {
            uri: "test".into(),
            position: Some(question as u32),
            line: None,
        },
        payload: Payload::Answer(Box::new(AnswerRecord {
            api_id: None,
            house: None,
            asking_member: AskingMember {
                name: "A Member".into(),
                party: None,
                constituency: None,
                peerage: None,
            },
            answering_body: "Home Office".into(),
            question_text: format!("Question {question}"),
            answering_member: AnsweringMember {
                name: "A Minister".into(),
                title: None,
            },
            answer: AnswerBody {
                blocks: vec![Block::Paragraph {
                    text: words.clone(),
                }],
            },
            answer_source: AnswerSource {
                format: SourceFormat::Text,
                text: words,
            },
            forces: vec![],
            unknown_forces: vec![],
            feed_position: None,
            api: None,
        })),
    }
}

/// Appends `batches` through a follower, pausing after each append as `pause` says, and returns
/// the log (without the times of recording) and each append's new seqs.
fn follow(
    batches: &[Vec<Observation>],
    pause: impl Fn(usize) -> std::time::Duration,
) -> (Vec<serde_json::Value>, Vec<Vec<u64>>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let follower = Follower::start(&mut log, &config);
    let mut appended = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let report = log.append(batch.clone(), "2026-11-29T00:00:00Z").unwrap();
        appended.push(
            report
                .outcomes
                .iter()
                .filter_map(|o| match o {
                    Appended::New { seq, .. } => Some(*seq),
                    Appended::Known { .. } => None,
                })
                .collect(),
        );
        std::thread::sleep(pause(i));
    }
    let report = follower.finish().unwrap();
    assert!(report.diff.flags_raised > 0, "the batches raise flags");
    let events = log
        .events_from(1)
        .map(|e| {
            let mut value = serde_json::to_value(e.unwrap()).unwrap();
            value.as_object_mut().unwrap().remove("recorded_at");
            value
        })
        .collect();
    (events, appended)
}

/// The diff module runs beside the appends, and its flags land at the same places whatever the
/// timing: each append's flags right after the append that follows it (the last two appends'
/// at the end, in order).
#[test]
fn followed_appends_get_their_flags_at_fixed_places_whatever_the_timing() {
    // Each answer's text repeats an earlier question's (exact duplicates), in the same append
    // or an earlier one, and one append raises none.
    let batches: Vec<Vec<Observation>> = vec![
        vec![answer(1, 1), answer(2, 1), answer(3, 2)],
        vec![answer(4, 2), answer(5, 3)],
        vec![answer(6, 4)],
        vec![answer(7, 1), answer(8, 3), answer(9, 9)],
        vec![answer(10, 9)],
        vec![answer(11, 4), answer(12, 2)],
    ];
    let ms = std::time::Duration::from_millis;
    // Appends racing ahead of the diff module; the diff module waiting for every append; mixed.
    let (first, appends) = follow(&batches, |_| ms(0));
    for pause in [
        &(|_| ms(40)) as &dyn Fn(usize) -> std::time::Duration,
        &|i| if i % 2 == 0 { ms(0) } else { ms(40) },
    ] {
        assert_eq!(follow(&batches, pause).0, first);
    }
    let seq_of = |e: &serde_json::Value| e["seq"].as_u64().unwrap();
    let mut flags = 0;
    for event in &first {
        if event["event"]["kind"] != "flag_raised" {
            continue;
        }
        flags += 1;
        let from = event["event"]["flag"]["derived_from"].as_u64().unwrap();
        let k = appends
            .iter()
            .position(|seqs| seqs.contains(&from))
            .unwrap();
        let seq = seq_of(event);
        if let Some(next) = appends.get(k + 1) {
            assert!(
                seq > *next.last().unwrap(),
                "flag {seq} after append {}",
                k + 1
            );
        }
        if let Some(after_next) = appends.get(k + 2) {
            assert!(seq < after_next[0], "flag {seq} before append {}", k + 2);
        }
    }
    assert!(flags >= 6, "{flags} flags");
    // What a derive after the fact finds: the same flags, none missing, none twice.
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    for batch in &batches {
        log.append(batch.clone(), "2026-11-29T00:00:00Z").unwrap();
    }
    let derived = derive(&mut log, &Config::defaults().unwrap()).unwrap();
    assert_eq!(derived.diff.flags_raised, flags);
}

/// A diff module that fails while following does not hold up the appends: they all go in, and
/// `finish` reports the failure.
#[test]
fn a_failing_diff_module_stops_following_without_holding_up_the_appends() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    // A damaged chunk of the near-duplicate index: the first answer long enough to need the
    // index fails the diff module.
    let chunk_key = [b"L".as_slice(), &1u64.to_be_bytes()].concat();
    log.db()
        .open_tree("diff")
        .unwrap()
        .insert(chunk_key, vec![9u8])
        .unwrap();
    let follower = Follower::start(&mut log, &config);
    let mut appended = 0;
    for i in 0..6 {
        appended += log
            .append(vec![answer(i, i)], "2026-11-29T00:00:00Z")
            .unwrap()
            .appended();
    }
    assert_eq!(appended, 6);
    let err = follower.finish().unwrap_err().to_string();
    assert!(err.contains("unknown version 9"), "{err}");
    assert_eq!(log.head().unwrap(), 6, "no flags, every answer");
}
