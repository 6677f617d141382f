use super::*;
use crate::event::Source;
use crate::record::{
    AnswerBody, AnswerRecord, AnswerSource, AnsweringMember, AskingMember, Block, SourceFormat,
};

fn record(question: &str, answer: &str) -> AnswerRecord {
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
        question_text: question.into(),
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

pub(crate) fn answer(question: &str, text: &str) -> Observation {
    Observation {
        source: Source {
            uri: "test".into(),
            position: Some(0),
            line: None,
        },
        payload: Payload::Answer(Box::new(record(question, text))),
    }
}

fn broken(raw: &[u8]) -> Observation {
    Observation {
        source: Source {
            uri: "test".into(),
            position: Some(1),
            line: Some(7),
        },
        payload: Payload::Unparseable {
            reason: "no 'Answered by' line".into(),
            raw: raw.to_vec(),
        },
    }
}

pub(crate) const NOW: &str = "2026-11-29T00:00:00.000Z";

fn open(dir: &Path) -> EventLog {
    EventLog::open(dir, StoreOptions::default()).unwrap()
}

#[test]
fn empty_log_has_head_zero_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert_eq!(log.head().unwrap(), 0);
    assert_eq!(log.events_from(1).count(), 0);
    let report = log.verify().unwrap();
    assert_eq!(report.good, 0);
    assert_eq!(report.first_bad, None);
}

#[test]
fn appending_the_same_observations_twice_appends_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let batch = || vec![answer("Q1", "A1"), answer("Q2", "A2"), broken(b"junk")];
    let first = log.append(batch(), NOW).unwrap();
    assert_eq!(
        first.outcomes,
        vec![
            Appended::New {
                seq: 1,
                kind: "answer_observed",
                revises: false
            },
            Appended::New {
                seq: 2,
                kind: "answer_observed",
                revises: false
            },
            Appended::New {
                seq: 3,
                kind: "record_quarantined",
                revises: false
            },
        ]
    );
    let second = log.append(batch(), NOW).unwrap();
    assert_eq!(
        second.outcomes,
        vec![
            Appended::Known { seq: 1 },
            Appended::Known { seq: 2 },
            Appended::Known { seq: 3 }
        ]
    );
    assert_eq!(log.head().unwrap(), 3);
}

#[test]
fn whitespace_only_changes_are_not_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "The answer.")], NOW).unwrap();
    let again = log
        .append(vec![answer("Q1", "  The   answer. ")], NOW)
        .unwrap();
    assert_eq!(again.outcomes, vec![Appended::Known { seq: 1 }]);
}

#[test]
fn a_changed_answer_appends_exactly_one_revision_pointing_at_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "Old answer.")], NOW).unwrap();
    let report = log
        .append(
            vec![answer("Q1", "New answer."), answer("Q1", "New answer.")],
            NOW,
        )
        .unwrap();
    assert_eq!(
        report.outcomes,
        vec![
            Appended::New {
                seq: 2,
                kind: "answer_revised",
                revises: true
            },
            Appended::Known { seq: 2 }
        ]
    );
    let first = log.get(1).unwrap().unwrap();
    let revision = log.get(2).unwrap().unwrap();
    match &revision.event {
        Event::AnswerRevised {
            question,
            previous_hash,
            previous_seq,
            record,
        } => {
            assert_eq!(Some(question), first.event.question());
            assert_eq!(previous_hash, &first.content_hash);
            assert_eq!(*previous_seq, 1);
            assert_eq!(record.answer.plain_text(), "New answer.");
        }
        other => panic!("expected a revision, got {other:?}"),
    }
    let head = log.question_head(question_of(&first)).unwrap().unwrap();
    assert_eq!(head.seq, 2);
    assert_eq!(head.content_hash, revision.content_hash);
    // Going back to the old text is content already in the log: nothing appended.
    let back = log.append(vec![answer("Q1", "Old answer.")], NOW).unwrap();
    assert_eq!(back.outcomes, vec![Appended::Known { seq: 1 }]);
}

fn question_of(e: &Envelope) -> &QuestionKey {
    e.event.question().unwrap()
}

#[test]
fn revisions_within_one_batch_chain_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let report = log
        .append(
            vec![answer("Q1", "v1"), answer("Q1", "v2"), answer("Q1", "v3")],
            NOW,
        )
        .unwrap();
    assert_eq!(report.appended(), 3);
    assert_eq!(report.appended_of_kind("answer_revised"), 2);
    match log.get(3).unwrap().unwrap().event {
        Event::AnswerRevised { previous_seq, .. } => assert_eq!(previous_seq, 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(log.question_heads().count(), 1);
    assert!(log.verify().unwrap().first_bad.is_none());
}

#[test]
fn events_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = open(dir.path());
        log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
            .unwrap();
    }
    let mut log = open(dir.path());
    assert_eq!(log.head().unwrap(), 2);
    let seqs: Vec<u64> = log.events_from(1).map(|e| e.unwrap().seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    let report = log
        .append(vec![answer("Q2", "A2"), answer("Q3", "A3")], NOW)
        .unwrap();
    assert_eq!(
        report.outcomes,
        vec![
            Appended::Known { seq: 2 },
            Appended::New {
                seq: 3,
                kind: "answer_observed",
                revises: false
            }
        ]
    );
    let from_two: Vec<u64> = log.events_from(2).map(|e| e.unwrap().seq).collect();
    assert_eq!(from_two, vec![2, 3]);
}

#[test]
fn a_second_open_of_the_same_dir_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let _log = open(dir.path());
    let err = EventLog::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("in use by another answerfeed process"),
        "{message}"
    );
    assert!(
        message.contains(&std::process::id().to_string()),
        "{message}"
    );
}

#[test]
fn quarantined_bytes_that_are_not_utf8_are_kept_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let raw = b"Asked by: X\n\xff\xfe bad bytes\n".to_vec();
    log.append(vec![broken(&raw)], NOW).unwrap();
    match log.get(1).unwrap().unwrap().event {
        Event::RecordQuarantined {
            raw: text,
            raw_base64: Some(encoded),
            reason,
        } => {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .unwrap();
            assert_eq!(decoded, raw);
            assert!(text.contains("bad bytes"));
            assert_eq!(reason, "no 'Answered by' line");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn verify_names_an_event_altered_behind_the_logs_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(
        vec![answer("Q1", "A1"), answer("Q2", "A2"), answer("Q3", "A3")],
        NOW,
    )
    .unwrap();
    let mut stored = log.stored_for_test();
    let value = &mut stored[1].1;
    let at = value.len() - 10;
    value[at] ^= 0x01;
    log.replace_stored_for_test(stored);
    let report = log.verify().unwrap();
    assert_eq!(report.good, 1);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 2);
    assert!(bad.problem.contains("checksum"), "{}", bad.problem);
    // Reading the bad event is an error naming it, not a panic or silent garbage.
    let err = log.get(2).unwrap_err().to_string();
    assert!(err.starts_with("event 2 is corrupt"), "{err}");
}

#[test]
fn verify_finds_a_gap_and_a_misplaced_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(
        vec![answer("Q1", "A1"), answer("Q2", "A2"), answer("Q3", "A3")],
        NOW,
    )
    .unwrap();
    let stored = log.stored_for_test();
    let moved = stored[1].1.clone();
    log.remove_events_for_test(2..=2);
    let report = log.verify().unwrap();
    assert_eq!(report.first_bad.as_ref().map(|b| b.seq), Some(2));
    let problem = report.first_bad.unwrap().problem;
    assert!(
        problem.contains("missing: the log jumps from event 1 to 3"),
        "{problem}"
    );
    // Event 2's bytes stored as event 3 as well: it says it is event 2.
    log.replace_stored_for_test(vec![stored[0].clone(), (2, moved.clone()), (3, moved)]);
    let report = log.verify().unwrap();
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 3);
    assert!(
        bad.problem.contains("says it is event 2"),
        "{}",
        bad.problem
    );
}

#[test]
fn verify_finds_an_event_the_index_does_not_know() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1")], NOW).unwrap();
    log.append(vec![broken(b"not an answer")], NOW).unwrap();
    let envelope = log.get(1).unwrap().unwrap();
    let question = envelope.event.question().unwrap().clone();
    log.raw_tree().remove(question_key(&question)).unwrap();
    let bad = log.verify().unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, 1);
    assert!(bad.problem.contains("index"), "{}", bad.problem);

    // Records without a question are indexed by their identity alone.
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1"), broken(b"not an answer")], NOW)
        .unwrap();
    let envelope = log.get(2).unwrap().unwrap();
    log.raw_tree()
        .remove(identity_key(
            &envelope.event.identity_question(),
            &envelope.content_hash,
        ))
        .unwrap();
    let report = log.verify().unwrap();
    assert_eq!(report.good, 1);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 2);
    assert!(bad.problem.contains("index"), "{}", bad.problem);
}

#[test]
fn a_damaged_question_entry_is_named_by_verify_and_refuses_appends_to_that_question() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    let envelope = log.get(2).unwrap().unwrap();
    let question = envelope.event.question().unwrap().clone();
    let key = question_key(&question);
    let mut value = log.raw_tree().get(&key).unwrap().unwrap().to_vec();
    value.truncate(value.len() - 3);
    log.raw_tree().insert(&key, value).unwrap();

    let report = log.verify().unwrap();
    assert_eq!(report.good, 1);
    let bad = report.first_bad.unwrap();
    assert_eq!(bad.seq, 2);
    assert!(bad.problem.contains("malformed"), "{}", bad.problem);
    let err = log
        .append(vec![answer("Q2", "A2, revised")], NOW)
        .unwrap_err()
        .to_string();
    assert!(err.contains("malformed"), "{err}");
    assert_eq!(
        log.head().unwrap(),
        2,
        "nothing of the refused append is written"
    );
    // Other questions are unaffected.
    let report = log.append(vec![answer("Q1", "A1, revised")], NOW).unwrap();
    assert_eq!(report.appended_of_kind("answer_revised"), 1);
}

/// Rewrites the question index of `log` as answerfeed wrote it before the `Q` keys (an `I` key
/// per content, an `H` key per question with its latest), for the questions given.
fn write_old_question_index(log: &EventLog, questions: &[&QuestionKey]) {
    for question in questions {
        let key = question_key(question);
        let value = log.raw_tree().remove(&key).unwrap().unwrap();
        let contents = QuestionContents::decode(question, &value).unwrap();
        for (seq, hash) in &contents.entries {
            log.raw_tree()
                .insert(identity_key(question, hash), seq.to_be_bytes().to_vec())
                .unwrap();
        }
        let (seq, hash) = contents.latest().unwrap();
        let mut head_key = vec![HEAD_PREFIX];
        head_key.extend_from_slice(question.0.as_bytes());
        let mut head = seq.to_be_bytes().to_vec();
        head.extend_from_slice(hash.as_bytes());
        log.raw_tree().insert(head_key, head).unwrap();
    }
    log.flush().unwrap();
}

#[test]
fn a_question_index_in_the_old_layout_is_upgraded_on_open_even_after_an_interrupted_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(
        vec![
            answer("Q1", "v1"),
            answer("Q2", "only"),
            broken(b"garbage"),
            answer("Q1", "v2"),
        ],
        NOW,
    )
    .unwrap();
    log.append(vec![answer("Q1", "v3"), answer("Q3", "only")], NOW)
        .unwrap();
    let questions: Vec<QuestionKey> = [1, 2, 6]
        .iter()
        .map(|seq| {
            log.get(*seq)
                .unwrap()
                .unwrap()
                .event
                .question()
                .unwrap()
                .clone()
        })
        .collect();
    let before: Vec<_> = log.question_heads().map(|h| h.unwrap()).collect();
    let index_before: Vec<_> = log
        .raw_tree()
        .scan_prefix([QUESTION_PREFIX])
        .map(|kv| kv.unwrap())
        .collect();
    assert_eq!(index_before.len(), 3);
    // Q1 and Q2 in the old layout, Q3 already upgraded: an upgrade cut short looks like this.
    write_old_question_index(&log, &[&questions[0], &questions[1]]);
    assert!(log.raw_tree().scan_prefix([HEAD_PREFIX]).next().is_some());
    drop(log);

    let mut log = open(dir.path());
    assert!(log.raw_tree().scan_prefix([HEAD_PREFIX]).next().is_none());
    let index_after: Vec<_> = log
        .raw_tree()
        .scan_prefix([QUESTION_PREFIX])
        .map(|kv| kv.unwrap())
        .collect();
    assert_eq!(index_after, index_before);
    let identities: Vec<_> = log
        .raw_tree()
        .scan_prefix([IDENTITY_PREFIX])
        .map(|kv| kv.unwrap())
        .collect();
    assert_eq!(
        identities.len(),
        1,
        "only the quarantined record keeps an I key"
    );
    assert_eq!(
        log.question_heads().map(|h| h.unwrap()).collect::<Vec<_>>(),
        before
    );
    assert!(log.verify().unwrap().first_bad.is_none());
    // Idempotency and revisions work as before the upgrade.
    let report = log
        .append(
            vec![answer("Q1", "v1"), answer("Q1", "v4"), broken(b"garbage")],
            NOW,
        )
        .unwrap();
    assert_eq!(
        report.outcomes,
        vec![
            Appended::Known { seq: 1 },
            Appended::New {
                seq: 7,
                kind: "answer_revised",
                revises: true
            },
            Appended::Known { seq: 3 },
        ]
    );
    assert_eq!(log.get(7).unwrap().unwrap().event.previous_seq(), Some(5));
}

#[test]
fn an_append_with_nothing_new_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1")], NOW).unwrap();
    let before = log.raw_tree().len();
    let report = log.append(vec![answer("Q1", "A1")], NOW).unwrap();
    assert_eq!(report.appended(), 0);
    assert_eq!(log.raw_tree().len(), before);
}

#[test]
fn an_append_that_would_leave_less_than_the_free_space_floor_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .append(vec![answer("Q1", "A1")], NOW)
        .unwrap();
    // A floor no disk can keep: every append that writes is refused, before it writes.
    let greedy = StoreOptions {
        min_free_bytes: u64::MAX / 4,
        ..StoreOptions::default()
    };
    {
        let mut log = EventLog::open(dir.path(), greedy).unwrap();
        let known = log.append(vec![answer("Q1", "A1")], NOW).unwrap();
        assert_eq!(known.outcomes, vec![Appended::Known { seq: 1 }]);
        let err = log
            .append(vec![answer("Q2", "A2"), answer("Q3", "A3")], NOW)
            .unwrap_err();
        assert!(matches!(err, LogError::DiskFull { .. }), "{err}");
        let message = err.to_string();
        for needle in [
            &format!(
                "not enough free space for data dir {}",
                dir.path().display()
            ),
            "appending 2 events (events 2-3)",
            "nothing of it was written",
        ] {
            assert!(message.contains(needle), "{needle:?} not in: {message}");
        }
        assert_eq!(log.head().unwrap(), 1);
    }
    let log = open(dir.path());
    assert_eq!(log.head().unwrap(), 1);
    assert_eq!(log.verify().unwrap().good, 1);
}

#[test]
fn no_floor_means_no_free_space_check() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        min_free_bytes: 0,
        ..StoreOptions::default()
    };
    let mut log = EventLog::open(dir.path(), options).unwrap();
    assert_eq!(
        log.append(vec![answer("Q1", "A1")], NOW)
            .unwrap()
            .appended(),
        1
    );
}

#[test]
fn an_unfinished_sled_snapshot_does_not_stop_the_next_open() {
    // What sled leaves when the disk fills (or the process dies) while it writes a snapshot;
    // sled 0.34 would take it for the newest snapshot and refuse the data dir as corrupt.
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    let unfinished = dir.path().join("sled/snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"").unwrap();
    let log = open(dir.path());
    assert!(!unfinished.exists());
    assert_eq!(log.head().unwrap(), 2);
    assert_eq!(log.verify().unwrap().good, 2);
}

/// sled's lock on its own files can outlive a handle this process dropped (its IO threads
/// finish with it): opening the log waits for it rather than failing.
#[test]
fn open_waits_for_sled_to_let_go_of_its_files() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .append(vec![answer("Q1", "A1")], NOW)
        .unwrap();
    // sled itself, holding its files the way a handle being dropped still does.
    let held = sled::Config::new()
        .path(dir.path().join("sled"))
        .open()
        .unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let started = std::time::Instant::now();
    let log = open(dir.path());
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(log.head().unwrap(), 1);
    release.join().unwrap();
}

/// Keeps what an [`AppendGate`] is handed.
#[derive(Default)]
struct Handed(std::sync::Mutex<Vec<Envelope>>);

impl AppendGate for Handed {
    fn before_append(&self) {}
    fn appended(&self, events: Vec<Envelope>) {
        self.0.lock().unwrap().extend(events);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// The follower's diff module analyses the events an append hands its gate instead of reading
    /// them back: they must be exactly what the log gives back, decimals in tables included
    /// (however many digits: a float must parse back to the value written).
    #[test]
    fn the_events_handed_to_a_gate_are_those_the_log_reads_back(
        decimals in proptest::collection::vec(("[0-9]{1,12}", "[0-9]{1,25}"), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path());
        let handed = Arc::new(Handed::default());
        log.set_gate(Some(Arc::clone(&handed) as Arc<dyn AppendGate>));
        let mut lines = vec!["Figures below.".to_string(), "Police force | Rate |".to_string()];
        for (whole, frac) in &decimals {
            lines.push(format!("Kent | {whole}.{frac} |"));
        }
        let text = lines.join("\n");
        let mut table_answer = record("How many?", &text);
        table_answer.answer = crate::parse::parse_answer_lines(&lines.iter().map(String::as_str).collect::<Vec<_>>());
        let observations = vec![
            Observation {
                source: Source { uri: "test".into(), position: None, line: None },
                payload: Payload::Answer(Box::new(table_answer)),
            },
            answer("Another question?", "Another answer."),
            broken(b"\xff not a record"),
        ];
        log.append(observations, "2026-11-29T00:00:00Z").unwrap();
        let handed = handed.0.lock().unwrap().clone();
        proptest::prop_assert_eq!(handed.len(), 3);
        proptest::prop_assert!(handed[0].event.record().unwrap().answer.tables().next().is_some());
        for envelope in &handed {
            let read_back = log.get(envelope.seq).unwrap();
            proptest::prop_assert_eq!(Some(envelope), read_back.as_ref());
        }
    }
}

#[test]
fn a_closable_log_closes_only_when_unused_and_opens_again_with_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let shared: ClosableLog<u64> = ClosableLog::new(open(dir.path()));
    let head = |log: &EventLog| log.head();
    let mut log = shared.handle().unwrap();
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    // A handle in use (a query being answered) keeps it open.
    assert!(!shared.close_if_unused(head).unwrap());
    assert!(shared.is_open());
    assert!(matches!(shared.memo_or_handle(), MemoOrHandle::Handle(_)));
    drop(log);
    assert!(shared.close_if_unused(head).unwrap());
    assert!(!shared.is_open());
    assert!(matches!(shared.memo_or_handle(), MemoOrHandle::Memo(2)));
    assert!(!shared.is_open(), "reading the memo leaves it closed");
    assert!(
        shared.close_if_unused(head).unwrap(),
        "closing twice is fine"
    );
    // A memo that cannot be made leaves the log open.
    drop(shared.handle().unwrap());
    let failed = shared.close_if_unused(|_| -> Result<u64, LogError> {
        Err(LogError::Locked {
            dir: dir.path().to_path_buf(),
            holder: String::new(),
        })
    });
    assert!(failed.is_err());
    assert!(shared.is_open());
    assert!(shared.close_if_unused(head).unwrap());
    // Closed, the data dir stays locked to this log.
    let err = EventLog::open(dir.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, LogError::Locked { .. }), "{err}");

    // Opened again at once (sled's own file lock may still be held for a moment).
    let mut log = shared.handle().unwrap();
    assert!(shared.is_open());
    assert_eq!(log.head().unwrap(), 2);
    let report = log
        .append(vec![answer("Q2", "A2"), answer("Q3", "A3")], NOW)
        .unwrap();
    assert_eq!(report.outcomes[0], Appended::Known { seq: 2 });
    assert_eq!(log.head().unwrap(), 3);
    drop(log);
    for _ in 0..3 {
        assert!(shared.close_if_unused(head).unwrap());
        assert!(matches!(shared.memo_or_handle(), MemoOrHandle::Memo(3)));
        assert_eq!(shared.handle().unwrap().head().unwrap(), 3);
        assert!(matches!(shared.memo_or_handle(), MemoOrHandle::Handle(_)));
    }
    assert!(shared
        .handle()
        .unwrap()
        .verify()
        .unwrap()
        .first_bad
        .is_none());
    drop(shared);
    // Dropped, the lock is released.
    assert_eq!(open(dir.path()).head().unwrap(), 3);
}

#[test]
fn a_closable_log_is_not_closed_after_a_failed_write() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    // What a failed sled write sets (see `Drop`): closing would flush what was not written.
    log.poisoned.store(true, Ordering::SeqCst);
    let shared: ClosableLog<()> = ClosableLog::new(log);
    assert!(!shared.close_if_unused(|_| Ok::<_, LogError>(())).unwrap());
    assert!(shared.is_open());
    if let Ok(log) = shared.handle() {
        log.poisoned.store(false, Ordering::SeqCst);
    }
}

/// A log of two answers: Q1's long enough to compress well (the text is returned), Q2's not.
fn log_with_a_long_and_a_short_answer() -> (tempfile::TempDir, EventLog, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let long = "The Home Office publishes police workforce statistics twice a year. ".repeat(20);
    log.append(vec![answer("Q1", &long), answer("Q2", "A2")], NOW)
        .unwrap();
    (dir, log, long)
}

/// The two events of [`log_with_a_long_and_a_short_answer`] verify, and appending the same
/// answers again appends nothing: the index knows both contents.
fn verifies_and_knows_both_answers(log: &mut EventLog, long: &str) {
    let report = log.verify().unwrap();
    assert_eq!(report.good, 2);
    assert!(report.first_bad.is_none());
    let again = log
        .append(vec![answer("Q1", long), answer("Q2", "A2")], NOW)
        .unwrap();
    assert_eq!(again.appended(), 0);
}

/// An event's stored value as versions before compression wrote it: the JSON as it is.
fn version_1_frame(json: &[u8]) -> Vec<u8> {
    let mut value = vec![FRAME_V1];
    value.extend_from_slice(&crc32fast::hash(json).to_be_bytes());
    value.extend_from_slice(json);
    value
}

#[test]
fn events_are_stored_compressed_and_version_1_frames_still_read() {
    let (_dir, mut log, long) = log_with_a_long_and_a_short_answer();
    let mut all = log.stored_for_test();
    let stored = all[0].1.clone();
    let event = log.get(1).unwrap().unwrap();
    let json = serde_json::to_vec(&event).unwrap();
    assert_eq!(stored[0], FRAME_LZ4);
    assert!(
        stored.len() * 2 < json.len(),
        "{} bytes stored for {} of JSON",
        stored.len(),
        json.len()
    );

    // Event 2 rewritten as version 1 framed it (the JSON as it is): read, verified and indexed
    // exactly as before.
    let second = log.get(2).unwrap().unwrap();
    let json = serde_json::to_vec(&second).unwrap();
    all[1].1 = version_1_frame(&json);
    log.replace_stored_for_test(all);
    assert_eq!(log.get(2).unwrap().unwrap(), second);
    let read: Vec<Envelope> = log.events_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(read, vec![event, second]);
    verifies_and_knows_both_answers(&mut log, &long);
}

/// A copy (`backup`, `compact`) compresses events an older version stored as they were, and
/// reads back the same events, verified.
#[test]
fn a_copy_compresses_version_1_events_and_keeps_their_json() {
    let (_dir, log, long) = log_with_a_long_and_a_short_answer();
    let first = log.get(1).unwrap().unwrap();
    let json = serde_json::to_vec(&first).unwrap();
    let mut all = log.stored_for_test();
    all[0].1 = version_1_frame(&json);
    let second_stored = all[1].1.clone();
    log.replace_stored_for_test(all);

    let copy_dir = tempfile::tempdir().unwrap();
    let mut copy = open(copy_dir.path());
    assert_eq!(copy.copy_events_from(&log, 2).unwrap(), 2);
    let copied = copy.stored_for_test();
    let stored = &copied[0].1;
    assert_eq!(stored[0], FRAME_LZ4);
    assert!(stored.len() < json.len());
    assert_eq!(
        copied[1].1, second_stored,
        "an event already compressed is copied as it is"
    );
    let original: Vec<Envelope> = log.events_from(1).map(|e| e.unwrap()).collect();
    let copied: Vec<Envelope> = copy.events_from(1).map(|e| e.unwrap()).collect();
    assert_eq!(copied, original);
    verifies_and_knows_both_answers(&mut copy, &long);
}

#[test]
fn what_does_not_compress_is_stored_as_it_is() {
    let json = br#"{"a":1}"#;
    let value = frame_event(json);
    assert_eq!(value[0], FRAME_V1);
    assert_eq!(&value[5..], json);
    let long = br#"{"text":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
    assert_eq!(frame_event(long)[0], FRAME_LZ4);
}

#[test]
fn a_damaged_compressed_event_is_corrupt_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let long = "Figures for each police force area are given in the table below. ".repeat(20);
    log.append(vec![answer("Q1", &long)], NOW).unwrap();
    let good = log.stored_for_test()[0].1.clone();
    assert_eq!(good[0], FRAME_LZ4);
    let problem = |value: &[u8]| match decode_envelope(1, value) {
        Err(LogError::Corrupt { seq: 1, problem }) => problem,
        other => panic!("expected event 1 to be corrupt, got {other:?}"),
    };

    // A length no block of this size can give: refused before anything is allocated.
    let mut huge = good.clone();
    huge[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(
        problem(&huge).contains("more than LZ4 can give"),
        "{}",
        problem(&huge)
    );
    // A length one short or one long of the real one.
    let length = u32::from_be_bytes([good[5], good[6], good[7], good[8]]);
    for wrong in [length - 1, length + 1] {
        let mut value = good.clone();
        value[5..9].copy_from_slice(&wrong.to_be_bytes());
        let why = problem(&value);
        assert!(why.contains("decompress"), "{why}");
    }
    // The block cut short, and a header with no block.
    assert!(problem(&good[..good.len() - 7]).contains("decompress"));
    assert!(problem(&good[..7]).contains("bytes long"));
    // A byte of the block changed: the checksum of what it decompresses to, or the
    // decompression itself, says so; verify names the event.
    let mut damaged = good.clone();
    let at = good.len() - 20;
    damaged[at] ^= 0x55;
    let why = problem(&damaged);
    assert!(
        why.contains("checksum") || why.contains("decompress"),
        "{why}"
    );
    log.replace_stored_for_test(vec![(1, damaged)]);
    let bad = log.verify().unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, 1);
}

#[test]
fn appends_through_clones_take_consecutive_seqs_from_the_head_they_share() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let mut other = log.clone();
    for round in 0..5 {
        let mine = log
            .append(vec![answer(&format!("A{round}"), "text a")], NOW)
            .unwrap();
        let theirs = other
            .append(
                vec![
                    answer(&format!("B{round}"), "text b"),
                    answer(&format!("C{round}"), "text c"),
                ],
                NOW,
            )
            .unwrap();
        assert_eq!(mine.appended(), 1);
        assert_eq!(theirs.appended(), 2);
        assert_eq!(log.head().unwrap(), 3 * (round + 1));
    }
    // Events removed behind the log's back (as damage would): the next append reads the head.
    log.remove_events_for_test(15..=15);
    log.append(vec![answer("D", "text d")], NOW).unwrap();
    assert!(
        log.get(15).unwrap().is_some(),
        "the freed seq is taken again"
    );
    assert_eq!(log.head().unwrap(), 15);
    assert!(log.verify().unwrap().first_bad.is_none());
}

fn texts(log: &EventLog) -> Vec<(u64, String)> {
    log.events_from(1)
        .map(|e| {
            let e = e.unwrap();
            (e.seq, format!("{:?}", e.event))
        })
        .collect()
}

#[test]
fn events_span_segments_and_read_back_in_any_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    for round in 0..12 {
        let batch = (0..3)
            .map(|i| {
                answer(
                    &format!("Q{round}-{i}"),
                    &format!("answer {round} {i} ").repeat(20),
                )
            })
            .collect();
        log.append(batch, NOW).unwrap();
    }
    let segments = std::fs::read_dir(dir.path().join("events"))
        .unwrap()
        .count();
    assert!(segments >= 3, "{segments} segment files");
    let all = texts(&log);
    assert_eq!(all.len(), 36);
    assert!(all
        .iter()
        .enumerate()
        .all(|(i, (seq, _))| *seq == i as u64 + 1));
    // Any window, across batch and segment boundaries, reads the same events.
    for from in [1, 2, 3, 4, 17, 35, 36] {
        for limit in [1, 2, 5, 100] {
            let batch = log.read_batch(from, 30, limit).unwrap();
            let expected: Vec<u64> = (from..=30).take(limit).collect();
            assert_eq!(batch.iter().map(|e| e.seq).collect::<Vec<_>>(), expected);
        }
    }
    assert!(log.get(37).unwrap().is_none());
    assert!(log.get(0).unwrap().is_none());
    assert_eq!(log.get(20).unwrap().unwrap().seq, 20);
    assert_eq!(log.verify().unwrap().good, 36);
    drop(log);
    let log = open(dir.path());
    assert_eq!(texts(&log), all);
    assert_eq!(log.head().unwrap(), 36);
}

/// An append cut short after its records were written but before the batch entry that commits
/// them (a crash, a full disk): the bytes are not events, and the next append writes over them.
#[test]
fn records_no_batch_entry_commits_are_not_events_and_are_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    let before = texts(&log);
    drop(log);
    // What a cut-short append leaves: a record after the end, and a later segment begun.
    let events = dir.path().join("events");
    let first = events.join("00000000.seg");
    let mut bytes = std::fs::read(&first).unwrap();
    let committed = bytes.len();
    segments::push_record(&mut bytes, 3, b"not committed").unwrap();
    std::fs::write(&first, &bytes).unwrap();
    std::fs::write(events.join("00000001.seg"), b"torn").unwrap();

    let mut log = open(dir.path());
    assert_eq!(log.head().unwrap(), 2);
    assert_eq!(texts(&log), before);
    assert!(log.verify().unwrap().first_bad.is_none());
    log.append(vec![answer("Q3", "A3")], NOW).unwrap();
    assert!(!events.join("00000001.seg").exists());
    assert_eq!(log.get(3).unwrap().unwrap().seq, 3);
    let again = log.append(vec![answer("Q3", "A3")], NOW).unwrap();
    assert_eq!(again.outcomes, vec![Appended::Known { seq: 3 }]);
    assert!(std::fs::metadata(&first).unwrap().len() > committed as u64);
    assert_eq!(log.verify().unwrap().good, 3);
}

#[test]
fn a_segment_cut_short_or_missing_is_named_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    drop(log);
    let segment = dir.path().join("events").join("00000000.seg");
    let length = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(length - 3)
        .unwrap();
    let log = open(dir.path());
    let bad = log.verify().unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, 1, "one read holds both: the first of it is named");
    assert!(bad.problem.contains("00000000.seg"), "{}", bad.problem);
    let err = log.get(2).unwrap_err().to_string();
    assert!(err.starts_with("event 2 is corrupt"), "{err}");
    assert!(log.get(1).unwrap().is_some(), "what is whole still reads");
    drop(log);

    std::fs::remove_file(&segment).unwrap();
    let log = open(dir.path());
    let err = log.read_batch(1, 2, 10).unwrap_err().to_string();
    assert!(err.contains("cannot open"), "{err}");
    assert_eq!(log.verify().unwrap().first_bad.unwrap().seq, 1);
}

/// Data dirs from before the segment files keep every event in the tree: they read as before,
/// new events go to segments after them, and a copy (`backup`, `compact`) moves all into segments.
#[test]
fn events_stored_in_the_tree_by_older_versions_read_and_are_followed_by_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    log.store_events_in_tree_for_test();
    drop(log);
    assert!(!dir.path().join("events").exists());

    let mut log = open(dir.path());
    let old = texts(&log);
    assert_eq!(old.len(), 2);
    assert_eq!(log.head().unwrap(), 2);
    let again = log
        .append(vec![answer("Q1", "A1"), answer("Q3", "A3")], NOW)
        .unwrap();
    assert_eq!(again.appended(), 1);
    assert_eq!(again.known(), 1);
    assert!(dir.path().join("events").join("00000000.seg").exists());
    let all = texts(&log);
    assert_eq!(&all[..2], &old[..]);
    assert_eq!(all.len(), 3);
    assert_eq!(
        log.read_batch(2, 3, 10)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(log.verify().unwrap().good, 3);

    let copy_dir = tempfile::tempdir().unwrap();
    let mut copy = open(copy_dir.path());
    assert_eq!(copy.copy_events_from(&log, 3).unwrap(), 3);
    assert_eq!(copy.raw_tree().scan_prefix([EVENT_PREFIX]).count(), 0);
    assert_eq!(texts(&copy), all);
    assert_eq!(copy.verify().unwrap().good, 3);
    let next = copy.append(vec![answer("Q4", "A4")], NOW).unwrap();
    assert_eq!(
        next.outcomes,
        vec![Appended::New {
            seq: 4,
            kind: "answer_observed",
            revises: false
        }]
    );
}

/// Once the writer's question filter (`key_filter`) is built (after a few lookups in tests), an answer to a
/// question it holds is still looked up: known content is known, changed content a revision.
#[test]
fn questions_indexed_before_the_filter_are_never_taken_for_new() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let first: Vec<Observation> = (0..20)
        .map(|i| answer(&format!("Q{i}"), &format!("first answer {i}")))
        .collect();
    assert_eq!(log.append(first.clone(), NOW).unwrap().appended(), 20);
    drop(log);
    let mut log = open(dir.path());
    // New questions first, so that the filter is built from the index before the old ones come.
    let new: Vec<Observation> = (20..25)
        .map(|i| answer(&format!("Q{i}"), &format!("first answer {i}")))
        .collect();
    assert_eq!(log.append(new, NOW).unwrap().appended(), 5);
    assert!(lock_writer(&log.writer).questions.is_built());
    let again = log.append(first, NOW).unwrap();
    assert_eq!(again.known(), 20);
    let revised = log
        .append(vec![answer("Q3", "a corrected answer 3")], NOW)
        .unwrap();
    assert_eq!(
        revised.outcomes,
        vec![Appended::New {
            seq: 26,
            kind: "answer_revised",
            revises: true
        }]
    );
    assert!(log.verify().unwrap().first_bad.is_none());
}

/// The acknowledged head is the log's head until this process appends, then the last event of
/// its latest append to have returned, whichever handle made it.
#[test]
fn the_acknowledged_head_follows_the_appends_that_returned() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    assert_eq!(log.acknowledged_head().unwrap(), 0);
    log.append(vec![answer("Q1", "A1"), answer("Q2", "A2")], NOW)
        .unwrap();
    drop(log);
    let mut log = open(dir.path());
    assert_eq!(
        log.acknowledged_head().unwrap(),
        2,
        "the head, before any append"
    );
    let mut clone = log.clone();
    clone.append(vec![answer("Q3", "A3")], NOW).unwrap();
    assert_eq!(log.acknowledged_head().unwrap(), 3);
    log.append(vec![answer("Q3", "A3")], NOW).unwrap();
    assert_eq!(log.acknowledged_head().unwrap(), 3, "nothing new appended");
}

/// Likewise the identity filter, for records without a question (quarantined records here;
/// flags and alerts' deliveries go the same way): once it is built, a record the index held
/// before is still looked up and known, and one appended since is known too.
#[test]
fn identities_indexed_before_the_filter_are_never_taken_for_new() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    let garbage = |i: usize| broken(format!("unreadable record {i}").as_bytes());
    let first: Vec<Observation> = (0..20).map(garbage).collect();
    assert_eq!(log.append(first.clone(), NOW).unwrap().appended(), 20);
    drop(log);
    let mut log = open(dir.path());
    assert!(!lock_writer(&log.writer).identities.is_built());
    let new: Vec<Observation> = (20..25).map(garbage).collect();
    assert_eq!(log.append(new.clone(), NOW).unwrap().appended(), 5);
    assert!(lock_writer(&log.writer).identities.is_built());
    let again = log
        .append(first.into_iter().chain(new).collect(), NOW)
        .unwrap();
    assert_eq!((again.known(), again.appended()), (25, 0));
    assert_eq!(log.append(vec![garbage(99)], NOW).unwrap().appended(), 1);
    assert_eq!(log.head().unwrap(), 26);
    assert!(log.verify().unwrap().first_bad.is_none());
}

/// A batch entry damaged behind the log's back: reads and `verify` name it (no allocation of
/// what it claims), and the next append refuses to write rather than cut good records.
#[test]
fn a_damaged_batch_entry_is_named_and_stops_appends_before_they_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path());
    log.append(vec![answer("Q1", "A1")], NOW).unwrap();
    log.append(vec![answer("Q2", "A2"), answer("Q3", "A3")], NOW)
        .unwrap();
    let key = segments::batch_key(2);
    let value = log.raw_tree().get(key).unwrap().unwrap();
    let good = segments::BatchEntry::decode(&key, &value).unwrap();
    drop(log);

    // Lengths no segment holds: an error naming the event, not a 4 GiB allocation.
    let huge = segments::BatchEntry {
        lens: vec![u32::MAX; 2],
        ..good.clone()
    };
    let log = open(dir.path());
    log.raw_tree().insert(key, huge.encode()).unwrap();
    let bad = log.verify().unwrap().first_bad.unwrap();
    assert_eq!(bad.seq, 2);
    assert!(bad.problem.contains("bytes long"), "{}", bad.problem);
    assert!(log.get(3).is_err());

    // The last entry pointing at the wrong place: the first append of a process checks it
    // before truncating after it, and refuses.
    let moved = segments::BatchEntry {
        offset: 0,
        ..good.clone()
    };
    log.raw_tree().insert(key, moved.encode()).unwrap();
    drop(log);
    let mut log = open(dir.path());
    let err = log
        .append(vec![answer("Q4", "A4")], NOW)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("holds event 1 where the index puts event 2"),
        "{err}"
    );
    assert!(err.contains("nothing appended"), "{err}");
    // Put right, nothing was lost.
    log.raw_tree().insert(key, good.encode()).unwrap();
    assert_eq!(log.verify().unwrap().good, 3);
    log.append(vec![answer("Q4", "A4")], NOW).unwrap();
    assert_eq!(log.verify().unwrap().good, 4);
}
