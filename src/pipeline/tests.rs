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

/// A log in a temporary dir holding `n` answers, and its events as read back.
fn log_of(n: usize) -> (tempfile::TempDir, EventLog, Vec<Envelope>) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    log.append(
        (0..n).map(|i| answer(i, i)).collect(),
        "2026-11-29T00:00:00Z",
    )
    .unwrap();
    let events = log.read_batch(1, n as u64, usize::MAX).unwrap();
    (dir, log, events)
}

/// Appends `batches` through a follower grouping appends of `group_events` new events, pausing
/// after each append as `pause` says, and returns the log (without the times of recording) and
/// each append's new seqs.
fn follow(
    batches: &[Vec<Observation>],
    group_events: usize,
    pause: impl Fn(usize) -> std::time::Duration,
) -> (Vec<serde_json::Value>, Vec<Vec<u64>>) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let follower = Follower::start_grouped(&mut log, &config, group_events);
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
/// timing: a group's flags right after the append that follows the group (the last group's at
/// the end), with groups of one append and of several.
#[test]
fn followed_appends_get_their_flags_at_fixed_places_whatever_the_timing() {
    for group_events in [1, 3, 4, 100] {
        flags_at_fixed_places(group_events);
    }
}

fn flags_at_fixed_places(group_events: usize) {
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
    let (first, appends) = follow(&batches, group_events, |_| ms(0));
    for pause in [
        &(|_| ms(40)) as &dyn Fn(usize) -> std::time::Duration,
        &|i| if i % 2 == 0 { ms(0) } else { ms(40) },
    ] {
        assert_eq!(
            follow(&batches, group_events, pause).0,
            first,
            "groups of {group_events}"
        );
    }
    // The append that ends each append's group: the first at which the group's new events reach
    // `group_events`, or the last append.
    let mut group_end = vec![appends.len() - 1; appends.len()];
    let (mut start, mut events) = (0, 0);
    for (k, seqs) in appends.iter().enumerate() {
        events += seqs.len();
        if events >= group_events {
            group_end[start..=k].fill(k);
            (start, events) = (k + 1, 0);
        }
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
        let end = group_end[k];
        let seq = seq_of(event);
        let last_seq_of_log = seq_of(first.last().unwrap());
        match appends.get(end + 1) {
            Some(place) => assert!(
                seq > *place.last().unwrap(),
                "groups of {group_events}: flag {seq} after append {}",
                end + 1
            ),
            // The last group's flags: at the end.
            None => assert!(seq > *appends[end].last().unwrap() && seq <= last_seq_of_log),
        }
        if let Some(after_place) = appends.get(end + 2) {
            assert!(
                seq < after_place[0],
                "groups of {group_events}: flag {seq} before append {}",
                end + 2
            );
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

fn events_without_times(log: &EventLog) -> Vec<serde_json::Value> {
    log.events_from(1)
        .map(|e| {
            let mut value = serde_json::to_value(e.unwrap()).unwrap();
            value.as_object_mut().unwrap().remove("recorded_at");
            value
        })
        .collect()
}

/// A follower started with flags to catch up on starts its threads at once (the diff module
/// catches up before the first append goes in); one started with none starts them at the first
/// append. The log is the same either way.
#[test]
fn a_follower_started_with_a_backlog_gives_the_log_a_derive_first_would() {
    let config = Config::defaults().unwrap();
    let earlier = vec![answer(1, 1), answer(2, 1), answer(3, 2)];
    let later = [
        vec![answer(4, 2), answer(5, 3)],
        vec![answer(6, 1), answer(7, 3)],
    ];
    let run = |derive_first: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
        log.append(earlier.clone(), "2026-11-29T00:00:00Z").unwrap();
        if derive_first {
            // Twice: the flags the first run appends are after its checkpoint until the
            // second reads them.
            derive(&mut log, &config).unwrap();
            derive(&mut log, &config).unwrap();
        }
        assert_eq!(
            diff::up_to_date(&log).unwrap().is_some(),
            derive_first,
            "the follower starts {}",
            if derive_first { "lazily" } else { "at once" }
        );
        let follower = Follower::start_grouped(&mut log, &config, 2);
        for batch in &later {
            log.append(batch.clone(), "2026-11-29T00:00:00Z").unwrap();
        }
        follower.finish().unwrap();
        events_without_times(&log)
    };
    let at_once = run(false);
    assert!(at_once
        .iter()
        .any(|e| e["event"]["kind"] == "flag_raised" && e["event"]["flag"]["derived_from"] == 2));
    assert_eq!(at_once, run(true));
}

/// A follower that saw no append starts nothing, and after `finish` appends through the same
/// handle start nothing either: their flags wait for the next derive, none lands between them.
#[test]
fn appends_after_a_follower_finished_start_no_thread() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::defaults().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    log.append(vec![answer(1, 1)], "2026-11-29T00:00:00Z")
        .unwrap();
    derive(&mut log, &config).unwrap();
    let follower = Follower::start_grouped(&mut log, &config, 1);
    let report = follower.finish().unwrap();
    assert_eq!(report.diff.checkpoint, 1);
    // Three appends with groups of one append: a running diff module would put the first's
    // flag (a duplicate of question 1) right after the second, and the third would wait for it.
    for (question, text) in [(2, 1), (3, 5), (4, 7)] {
        log.append(vec![answer(question, text)], "2026-11-29T00:00:00Z")
            .unwrap();
    }
    assert_eq!(log.head().unwrap(), 4, "no flag appended");
    assert_eq!(diff::up_to_date(&log).unwrap(), None);
    // Answer 2 repeats answer 1's text; answers 3 and 4 differ from it by a word.
    let derived = derive(&mut log, &config).unwrap();
    assert_eq!(derived.diff.flags_raised, 3);
}

/// The diff module takes an append's events as the append handed them over, reading from the
/// log only what comes before them; events that do not line up with the range are not trusted,
/// and the range is read from the log instead.
#[test]
fn handed_events_are_used_only_where_they_line_up_with_the_log() {
    let (_dir, log, stored) = log_of(6);
    // What the diff module prepares: the events read, then the handed ones if trusted.
    let joined = |from: u64, handed: Vec<Envelope>| {
        let (mut events, handed) = appended_events(&log, from, 6, Some(Arc::new(handed))).unwrap();
        events.extend(handed.iter().flat_map(|h| h.iter().cloned()));
        events
    };
    // Handed 4..=6: 1..=3 read from the log, the rest as handed.
    let (read, handed) = appended_events(&log, 1, 6, Some(Arc::new(stored[3..].to_vec()))).unwrap();
    assert_eq!(read, stored[..3]);
    assert_eq!(handed.as_deref(), Some(&stored[3..].to_vec()));
    // A stand-in for event 5 that differs from the log's: trusted only when the handed events
    // line up, and here they do not (5 is missing), so everything is read.
    let mut with_gap = vec![stored[3].clone(), stored[5].clone()];
    with_gap[0].recorded_at = "not what the log holds".into();
    assert_eq!(joined(1, with_gap), stored);
    // Handed events that start before the range, or end elsewhere: read.
    let mut early = stored[1..].to_vec();
    early[0].recorded_at = "not what the log holds".into();
    assert_eq!(joined(3, early), stored[2..]);
    assert_eq!(joined(1, stored[3..5].to_vec()), stored);
    assert_eq!(joined(1, Vec::new()), stored);
    assert_eq!(appended_events(&log, 1, 6, None).unwrap(), (stored, None));
}

/// The views' thread takes the appends it is handed, reads from the log only the events
/// between them (the diff module's flags) and those it was not handed, and holds at most
/// RECENT_EVENTS events.
#[test]
fn the_views_read_from_the_log_only_what_they_were_not_handed() {
    let (_dir, log, stored) = log_of(10);
    // Handed 3..=4 and 7..=8, each marked so that a copy taken from them can be told apart.
    let marked = |range: std::ops::Range<usize>| {
        let mut events = stored[range].to_vec();
        for e in &mut events {
            e.recorded_at = format!("handed {}", e.seq);
        }
        events
    };
    let recent = RecentAppends::default();
    recent.push(Arc::new(marked(2..4)));
    recent.push(Arc::new(marked(6..8)));
    // Not consecutive: never held.
    recent.push(Arc::new(vec![
        stored[8].clone(),
        stored[9].clone(),
        stored[8].clone(),
    ]));
    let events = |from, upto| -> Vec<Envelope> {
        let parts = recent.events(&log, from, upto).unwrap();
        parts
            .iter()
            .flat_map(|p| p.events().iter().cloned())
            .collect()
    };
    let mut expected = stored.clone();
    expected.splice(2..4, marked(2..4));
    expected.splice(6..8, marked(6..8));
    assert_eq!(events(1, 10), expected);
    // A held append past the head (made after the head was read) is left for later.
    let mut upto_7 = expected[..4].to_vec();
    upto_7.extend_from_slice(&stored[4..7]);
    assert_eq!(events(1, 7), upto_7);
    // Appends that end before `from` are let go.
    assert_eq!(events(6, 10), expected[5..]);
    assert_eq!(recent.lock().appends.len(), 1);
    // The oldest appends go once more than RECENT_EVENTS events are held.
    for _ in 0..RECENT_EVENTS {
        recent.push(Arc::new(marked(9..10)));
    }
    let held: usize = recent.lock().appends.iter().map(|(_, _, a)| a.len()).sum();
    assert_eq!(recent.lock().count, held);
    assert_eq!(held, RECENT_EVENTS);
    assert!(recent
        .lock()
        .appends
        .iter()
        .all(|(first, _, _)| *first == 10));
}

/// Once the diff thread has stopped (a failure), nothing takes from its queue: later appends
/// must not pile their events up there until the follower finishes.
#[test]
fn a_stopped_diff_gate_keeps_no_events() {
    let (_dir, _log, events) = log_of(3);
    let gate = DiffGate::new(1);
    gate.appended(Arc::new(events[..1].to_vec()));
    gate.stop();
    for _ in 0..100 {
        gate.appended(Arc::new(events.clone()));
    }
    assert_eq!(gate.lock().appends.len(), 1);
    // What was queued before the stop is still handed out.
    assert_eq!(
        gate.take_append(0)
            .map(|(last, e)| (last, e.map_or(0, |e| e.len()))),
        Some((1, 1))
    );
    assert_eq!(gate.take_append(1), None);
}

/// The views' thread, handed some appends and trailing the head by more than RECENT_EVENTS,
/// derives in steps of at most RECENT_EVENTS from what it holds and what it reads, and ends with
/// the views a rebuild gives.
#[test]
fn views_taken_from_held_appends_and_the_log_equal_a_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let config = Config::defaults().unwrap();
    let total = RECENT_EVENTS * 2 + 100;
    // Every third question answered twice (a revision), so views are replaced as well as added.
    let observations: Vec<Observation> = (0..total)
        .map(|i| answer(if i % 3 == 0 { i / 2 } else { i }, i))
        .collect();
    let mut appended = Vec::new();
    for batch in observations.chunks(97) {
        let report = log.append(batch.to_vec(), "2026-11-29T00:00:00Z").unwrap();
        let seqs: Vec<u64> = report
            .outcomes
            .iter()
            .filter_map(|o| match o {
                Appended::New { seq, .. } => Some(*seq),
                _ => None,
            })
            .collect();
        if let (Some(first), Some(last)) = (seqs.first(), seqs.last()) {
            appended.push(log.read_batch(*first, *last, usize::MAX).unwrap());
        }
    }
    // Held: every other append from the middle on (the views were handed the rest too late).
    let recent = RecentAppends::default();
    for events in appended.iter().skip(appended.len() / 2).step_by(2) {
        recent.push(Arc::new(events.clone()));
    }
    let head = log.head().unwrap();
    assert!(head as usize > RECENT_EVENTS * 2);
    let report = derive_views_with(&log, &config, Some(&recent), false).unwrap();
    assert_eq!(report.project.checkpoint, head);
    assert_eq!(report.project.events_applied, head);
    let incremental = project::digest(&log).unwrap();
    let (_, rebuilt, _) = project::rebuild(&log, &config.topics).unwrap();
    assert_eq!(incremental, rebuilt);
}

/// The views' thread wakes once WAKE_EVENTS events have been handed over (not only at its next
/// look), and at once when the follower stops.
#[test]
fn the_views_thread_wakes_for_enough_new_events_and_for_the_stop() {
    let (_dir, _log, events) = log_of(3);
    let recent = Arc::new(RecentAppends::default());
    let long = std::time::Duration::from_secs(600);
    // Too few events: the wait lasts its interval.
    recent.push(Arc::new(events.clone()));
    assert!(!recent.wait(std::time::Duration::from_millis(10)));
    // Enough, handed over while the thread waits: it wakes long before the interval.
    let waiter = {
        let recent = Arc::clone(&recent);
        std::thread::spawn(move || recent.wait(long))
    };
    for _ in 0..WAKE_EVENTS.div_ceil(events.len()) {
        recent.push(Arc::new(events.clone()));
    }
    assert!(!waiter.join().unwrap());
    // The count starts again after each wake; a stop ends the wait at once, and every later one.
    let waiter = {
        let recent = Arc::clone(&recent);
        std::thread::spawn(move || recent.wait(long))
    };
    recent.stop();
    assert!(waiter.join().unwrap());
    assert!(recent.wait(long));
}

/// A gap in the sequence longer than RECENT_EVENTS (damage `verify` reports) does not stall the
/// views' thread: it reads on from the next event there is, as a replay does.
#[test]
fn the_views_thread_reads_past_a_gap_in_the_log() {
    let total = RECENT_EVENTS + 50;
    let (_dir, log, _) = log_of(total);
    log.remove_events_for_test(2..=RECENT_EVENTS as u64 + 10);
    let config = Config::defaults().unwrap();
    let report = derive_views_with(&log, &config, Some(&RecentAppends::default()), false).unwrap();
    assert_eq!(report.project.checkpoint, total as u64);
    assert_eq!(
        report.project.events_applied,
        (total - RECENT_EVENTS - 9) as u64
    );
}

/// While following, the views' thread is handed every event but those the log held before: the
/// appends, and the diff module's flags (handed over before the next append goes). Without the
/// flags handed over, 159 of 199 were read back. A look at the log between an append's return
/// and its hand-over can still read that one append back, so the bound is loose. (Following only
/// up to the acknowledged head matters when flushes are slow: 56,000 events read back in a
/// 200,000-answer backfill without it, none with it; here the flushes are too quick to tell.)
/// The views end as a rebuild gives them.
#[test]
fn the_views_are_handed_the_flags_and_the_appends_that_returned() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let config = Config::defaults().unwrap();
    let follower = Follower::start_grouped(&mut log, &config, 1);
    let mut recent = None;
    let mut question = 0;
    for batch in 0..40 {
        // Three texts over and over: every answer after the first three is a duplicate.
        let answers: Vec<Observation> = (0..5)
            .map(|_| {
                question += 1;
                answer(question, question % 3)
            })
            .collect();
        log.append(answers, "2026-11-29T00:00:00Z").unwrap();
        if let Following::Running(threads) = &*follower.gate.lock() {
            recent.get_or_insert_with(|| Arc::clone(&threads.recent));
        }
        if batch % 4 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let recent = recent.expect("the first append started the threads");
    let report = follower.finish().unwrap();
    let head = log.head().unwrap();
    assert!(report.diff.flags_raised >= 150, "{report:?}");
    assert_eq!(report.project.checkpoint, head);
    let read_back = recent.lock().read_back;
    assert!(
        read_back * 4 < report.diff.flags_raised,
        "{read_back} events read back from the log, {} flags raised",
        report.diff.flags_raised
    );
    let incremental = project::digest(&log).unwrap();
    let (_, rebuilt, _) = project::rebuild(&log, &config.topics).unwrap();
    assert_eq!(incremental, rebuilt);
}
