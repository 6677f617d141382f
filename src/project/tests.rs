use proptest::prelude::*;

use super::*;
use crate::config::Config;
use crate::diff::{self, DiffSettings};
use crate::event::{Observation, Payload, Source};
use crate::log::StoreOptions;
use crate::parse::parse_answer_lines;
use crate::record::{AnswerSource, AnsweringMember, AskingMember, SourceFormat};

const BODIES: &[&str] = &["Home Office", "Attorney General", "Ministry of Justice"];
const TEXTS: &[&str] = &[
    "Domestic Abuse Protection Orders are live in Greater Manchester, Croydon and Gwent.",
    "Domestic Abuse Protection Orders are live in Greater Manchester and Croydon, and with the British Transport Police.",
    "The Metropolitan Police and Kent Police collaborate on this matter, as the answer given on many occasions before explains in full detail here.",
    "The Metropolitan Police and Kent Police collaborate on this matter, as the answer given on several occasions before explains in full detail here.",
    "Year | Police force | Count |\n2023 | Kent | 10 |\n2023 | Essex | 5 |\n2023 | Total | 16 |",
    "Year | Police force | Count |\n2023 | Kent | 12 |\n2023 | Essex | 5 |",
];

fn record(question: usize, text: usize, body: usize) -> AnswerRecord {
    let lines: Vec<&str> = TEXTS[text].lines().collect();
    let answer = parse_answer_lines(&lines);
    let (forces, unknown_forces) = crate::parse::forces_of(&answer);
    AnswerRecord {
        api_id: None,
        house: None,
        asking_member: AskingMember {
            name: format!("Member {question}"),
            party: None,
            constituency: None,
            peerage: None,
        },
        answering_body: BODIES[body].to_string(),
        question_text: format!("To ask question number {question} about domestic abuse."),
        answering_member: AnsweringMember {
            name: "A Minister".into(),
            title: None,
        },
        answer,
        answer_source: AnswerSource {
            format: SourceFormat::Text,
            text: TEXTS[text].to_string(),
        },
        forces,
        unknown_forces,
        feed_position: None,
        api: None,
    }
}

#[derive(Debug, Clone)]
enum Op {
    Answer {
        question: usize,
        text: usize,
        body: usize,
    },
    Broken(Vec<u8>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0usize..5, 0usize..TEXTS.len(), 0usize..BODIES.len())
            .prop_map(|(question, text, body)| Op::Answer { question, text, body }),
        1 => proptest::collection::vec(any::<u8>(), 1..20).prop_map(Op::Broken),
    ]
}

fn observation(op: &Op) -> Observation {
    let payload = match op {
        // The asking member is part of a question's identity; keep it stable per question so that
        // changed texts are revisions.
        Op::Answer {
            question,
            text,
            body,
        } => Payload::Answer(Box::new(record(*question, *text, *body))),
        Op::Broken(bytes) => Payload::Unparseable {
            reason: "test".into(),
            raw: bytes.clone(),
        },
    };
    Observation {
        source: Source {
            uri: "proptest".into(),
            position: None,
            line: None,
        },
        payload,
    }
}

fn config() -> Config {
    Config::defaults().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Views updated after every batch equal views rebuilt from the whole log, byte for byte.
    #[test]
    fn rebuild_equals_incremental(
        ops in proptest::collection::vec(op(), 1..40),
        cuts in proptest::collection::vec(1usize..8, 1..10),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
        let config = config();
        let settings = DiffSettings::new(&config.diff, &config.trackers);
        let mut rest: &[Op] = &ops;
        let mut cut = cuts.iter().cycle();
        while !rest.is_empty() {
            let n = (*cut.next().unwrap()).min(rest.len());
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            log.append(batch.iter().map(observation).collect(), "2026-01-01T00:00:00.000Z").unwrap();
            diff::run(&mut log, &settings).unwrap();
            run(&log, &config.topics).unwrap();
        }
        let incremental = digest(&log).unwrap();
        let (before, after, _) = rebuild(&log, &config.topics).unwrap();
        prop_assert_eq!(&before, &incremental);
        prop_assert_eq!(&after, &incremental);
        prop_assert_eq!(checkpoint(&log).unwrap(), log.head().unwrap());

        // Every index answers what a look at every view would: newest first, nothing missed.
        let views = Views::open(&log).unwrap();
        let all: Vec<QuestionView> = views.questions(&QuestionFilter::default()).map(|v| v.unwrap()).collect();
        let stored = log.db().open_tree(TREE).unwrap().scan_prefix(prefix(&["q"])).count();
        prop_assert_eq!(all.len(), stored);
        let recency_entries: usize = log.db().open_tree(TREE).unwrap().scan_prefix(prefix(&["o"]))
            .map(|kv| { let (k, b) = kv.unwrap(); postings::entries(&k, &b).count() })
            .sum();
        prop_assert_eq!(recency_entries, stored, "no entry left behind by a revision");
        // Statistics rows belong to current content only, one force's rows together.
        let mut pairs = std::collections::BTreeSet::new();
        for row in views.all_stats() {
            let row = row.unwrap();
            let view = views.question(row.question.as_str()).unwrap().unwrap();
            prop_assert_eq!(view.latest_seq, row.seq);
            prop_assert!(view.stat_forces.contains(&row.stat.force_id));
            let by_force: Vec<_> = views.stats(&row.stat.force_id, None).map(|r| r.unwrap()).collect();
            prop_assert!(by_force.contains(&row));
            // In the order the statistics query has always given: measure, period, question,
            // table, row.
            let order = |r: &StatRow| (
                crate::stats::normalise_measure(&r.stat.measure),
                r.stat.period.clone(),
                r.question.0.clone(),
                r.stat.table,
                r.stat.row,
            );
            prop_assert!(by_force.windows(2).all(|w| order(&w[0]) < order(&w[1])));
            pairs.insert((row.question.0.clone(), row.stat.force_id.clone()));
        }
        prop_assert_eq!(pairs.len(), all.iter().map(|v| v.stat_forces.len()).sum::<usize>());
        prop_assert!(all.windows(2).all(|w| w[0].latest_seq > w[1].latest_seq));
        let filters = BODIES.iter().map(|b| QuestionFilter { body: Some(b.to_uppercase()), ..QuestionFilter::default() })
            .chain((0..5).map(|q| QuestionFilter { member: Some(format!("member {q}")), ..QuestionFilter::default() }))
            .chain(config.topics.iter().map(|t| QuestionFilter { topic: Some(t.name.clone()), ..QuestionFilter::default() }))
            .chain(all.iter().flat_map(|v| v.forces.clone()).map(|f| QuestionFilter { force: Some(f), body: Some(BODIES[0].into()), ..QuestionFilter::default() }));
        for filter in filters {
            let found: Vec<String> = views.questions(&filter).map(|v| v.unwrap().question.0).collect();
            let wanted: Vec<String> = all.iter().filter(|v| {
                filter.body.as_ref().is_none_or(|b| v.answering_body.eq_ignore_ascii_case(b))
                    && filter.member.as_ref().is_none_or(|m| v.asking_member.eq_ignore_ascii_case(m))
                    && filter.topic.as_ref().is_none_or(|t| v.topics.contains(t))
                    && filter.force.as_ref().is_none_or(|f| v.forces.contains(f))
            }).map(|v| v.question.0.clone()).collect();
            prop_assert_eq!(found, wanted, "{:?}", filter);
        }
    }
}

fn flags_after(log: &EventLog, from: u64) -> Vec<serde_json::Value> {
    log.events_from(from)
        .map(|e| {
            let e = e.unwrap();
            serde_json::json!({"seq": e.seq, "event": e.event, "hash": e.content_hash})
        })
        .collect()
}

fn log_with(ops: &[Op]) -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    log.append(
        ops.iter().map(observation).collect(),
        "2026-01-01T00:00:00.000Z",
    )
    .unwrap();
    (dir, log)
}

fn mixed_ops() -> Vec<Op> {
    let mut ops = Vec::new();
    for (question, text) in [
        (0, 0),
        (1, 1),
        (2, 2),
        (3, 3),
        (0, 1),
        (4, 4),
        (1, 5),
        (2, 0),
    ] {
        ops.push(Op::Answer {
            question,
            text,
            body: question % 3,
        });
    }
    ops
}

#[test]
fn flags_do_not_depend_on_how_the_log_is_split_into_batches() {
    let config = config();
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let ops = mixed_ops();
    let (_a, mut one_by_one) = log_with(&ops);
    let (_b, mut all_at_once) = log_with(&ops);
    let head = one_by_one.head().unwrap();
    diff::run_in_batches(&mut one_by_one, &settings, 1).unwrap();
    diff::run_in_batches(&mut all_at_once, &settings, 1000).unwrap();
    let a = flags_after(&one_by_one, head + 1);
    let b = flags_after(&all_at_once, head + 1);
    assert!(!a.is_empty());
    assert_eq!(a, b);
    let kinds: Vec<&str> = a
        .iter()
        .map(|f| f["event"]["flag"]["flag"].as_str().unwrap())
        .collect();
    for kind in [
        "answer_changed",
        "tracked_list_changed",
        "duplicate_answer",
        "figure_changed",
        "total_mismatch",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
}

/// Format 4 of the diff state kept a key per figure: a data dir holding it is upgraded on open,
/// and a figure seen before the upgrade is flagged against that sighting, as without it.
#[test]
fn figure_sightings_kept_as_keys_by_format_4_are_upgraded_with_the_same_flags() {
    let config = config();
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let ops = mixed_ops();
    // The first part holds Kent's 10, the second Kent's 12.
    let (first, rest) = ops.split_at(6);
    let flags = |downgrade: bool| {
        let (_dir, mut log) = log_with(first);
        diff::run(&mut log, &settings).unwrap();
        if downgrade {
            assert!(diff::downgrade_to_format_4(&log) > 0);
            assert_eq!(diff::up_to_date(&log).unwrap(), None);
        }
        log.append(
            rest.iter().map(observation).collect(),
            "2026-01-02T00:00:00.000Z",
        )
        .unwrap();
        // Upgraded, not derived again from the start.
        let read = diff::run(&mut log, &settings).unwrap().events_read;
        let tree = log.db().open_tree("diff").unwrap();
        assert_eq!(tree.get(b"\x00format").unwrap().as_deref(), Some(&b"5"[..]));
        assert_eq!(
            tree.scan_prefix(b"f/").count(),
            0,
            "no key per figure is left"
        );
        (flags_after(&log, 1), read)
    };
    let (upgraded, read) = flags(true);
    let (current, read_current) = flags(false);
    assert_eq!(read, read_current, "events read after the upgrade");
    assert_eq!(upgraded, current);
    let figure_changed = upgraded
        .iter()
        .find(|e| e["event"]["flag"]["flag"] == "figure_changed")
        .expect("Kent's figure changed");
    assert_eq!(figure_changed["event"]["flag"]["previous_value"], 10.0);
}

#[test]
fn a_crash_before_the_diff_checkpoint_raises_nothing_twice() {
    let config = config();
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let (_dir, mut log) = log_with(&mixed_ops());
    diff::run(&mut log, &settings).unwrap();
    let head = log.head().unwrap();
    // As if the process died after appending the flags but before committing its state.
    log.db().open_tree("diff").unwrap().clear().unwrap();
    let again = diff::run(&mut log, &settings).unwrap();
    assert_eq!(again.flags_raised, 0);
    assert_eq!(log.head().unwrap(), head);
    assert!(log.verify().unwrap().first_bad.is_none());
}

/// A revision takes away every index entry the previous content put in, statistics included,
/// and puts in the new content's.
#[test]
fn a_revision_moves_the_question_between_index_entries() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let config = config();
    let with_api_id = |text: usize, body: usize| {
        let mut r = record(1, text, body);
        r.api_id = Some(77);
        Observation {
            source: Source {
                uri: "test".into(),
                position: None,
                line: None,
            },
            payload: Payload::Answer(Box::new(r)),
        }
    };
    // First: a table of Kent and Essex figures, answered by the Home Office.
    log.append(vec![with_api_id(4, 0)], "2026-01-01T00:00:00.000Z")
        .unwrap();
    run(&log, &config.topics).unwrap();
    let views = Views::open(&log).unwrap();
    let by = |filter: QuestionFilter| -> Vec<String> {
        views
            .questions(&filter)
            .map(|v| v.unwrap().question.0)
            .collect()
    };
    let body = |b: usize| QuestionFilter {
        body: Some(BODIES[b].to_string()),
        ..QuestionFilter::default()
    };
    let kent = crate::forces::lookup("Kent").unwrap().id.to_string();
    let force = QuestionFilter {
        force: Some(kent.clone()),
        ..QuestionFilter::default()
    };
    assert_eq!(by(body(0)), vec!["api:77"]);
    assert_eq!(by(force.clone()), vec!["api:77"]);
    assert!(views.stats(&kent, None).count() > 0);

    // Then: revised to a text without a table, by another department.
    log.append(vec![with_api_id(0, 1)], "2026-01-02T00:00:00.000Z")
        .unwrap();
    run(&log, &config.topics).unwrap();
    assert!(by(body(0)).is_empty());
    assert_eq!(by(body(1)), vec!["api:77"]);
    assert!(by(force).is_empty());
    assert_eq!(views.stats(&kent, None).count(), 0);
    let tree = log.db().open_tree(TREE).unwrap();
    assert_eq!(
        tree.scan_prefix(prefix(&["s"])).count(),
        0,
        "no statistics block left behind by the revision"
    );
    let recency: Vec<(u64, String)> = tree
        .scan_prefix(prefix(&["o"]))
        .flat_map(|kv| {
            let (k, block) = kv.unwrap();
            postings::entries(&k, &block)
                .map(|p| p.map(|p| (p.seq, p.payload.to_string())).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        recency,
        vec![(2, "api:77".to_string())],
        "one recency entry per question, at its latest content"
    );
    assert_eq!(views.resolve("77").unwrap().unwrap().history.len(), 2);
}

/// Derived state from an older layout (no format marker) is derived again from the log on
/// first use: the views equal a rebuild, and the diff module appends no flag twice.
/// Statistics are stored without what the block's key and entry already say: what comes back
/// is every row `stats::statistics` gives, field for field (values, force names, places).
#[test]
fn statistics_come_back_field_for_field_from_their_compact_form() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    let config = config();
    let table = record(3, 4, 0);
    let question = QuestionKey::of(&table);
    let mut wanted: Vec<StatRow> = crate::stats::statistics(&table)
        .into_iter()
        .map(|stat| StatRow {
            stat,
            question: question.clone(),
            seq: 1,
        })
        .collect();
    assert!(wanted.len() >= 2, "the fixture has figures for two forces");
    log.append(
        vec![Observation {
            source: Source {
                uri: "test".into(),
                position: None,
                line: None,
            },
            payload: Payload::Answer(Box::new(table)),
        }],
        "2026-01-01T00:00:00.000Z",
    )
    .unwrap();
    run(&log, &config.topics).unwrap();
    let views = Views::open(&log).unwrap();
    let mut found: Vec<StatRow> = views.all_stats().map(|r| r.unwrap()).collect();
    let order = |r: &StatRow| {
        (
            r.stat.force_id.clone(),
            r.stat.table,
            r.stat.row,
            r.stat.measure.clone(),
        )
    };
    wanted.sort_by_key(order);
    found.sort_by_key(order);
    assert_eq!(found, wanted);
    assert!(found
        .iter()
        .all(|r| !r.stat.force.is_empty() && r.stat.force != r.stat.force_id));
}

#[test]
fn state_in_an_older_layout_is_derived_again() {
    let (_dir, mut log) = log_with(&mixed_ops());
    let config = config();
    crate::pipeline::derive(&mut log, &config).unwrap();
    // Again, so that the diff module has read its own flags too: nothing left for it to do but
    // notice the missing format marker.
    crate::pipeline::derive(&mut log, &config).unwrap();
    let head = log.head().unwrap();
    assert_eq!(diff::up_to_date(&log).unwrap(), Some(head));
    let views = log.db().open_tree(TREE).unwrap();
    let digest_before = digest(&log).unwrap();
    views.remove(FORMAT_KEY).unwrap();
    views.insert(b"zz-left-over", b"x".to_vec()).unwrap();
    let diff_state = log.db().open_tree("diff").unwrap();
    diff_state.remove(b"\x00format").unwrap();
    diff_state.insert(b"b/00/left-over", b"x".to_vec()).unwrap();

    crate::pipeline::derive(&mut log, &config).unwrap();
    assert_eq!(log.head().unwrap(), head, "no flag appended twice");
    assert_eq!(digest(&log).unwrap(), digest_before);
    assert!(diff_state.get(b"b/00/left-over").unwrap().is_none());
    assert_eq!(diff::checkpoint(&log).unwrap(), head);
}

/// A damaged posting block is an error naming it, never a wrong answer; `rebuild` replaces it
/// without reading it.
#[test]
fn a_damaged_index_block_is_reported_and_rebuild_replaces_it() {
    let (_dir, mut log) = log_with(&mixed_ops());
    let config = config();
    crate::pipeline::derive(&mut log, &config).unwrap();
    let good = digest(&log).unwrap();
    let tree = log.db().open_tree(TREE).unwrap();
    let (k, mut block) = tree.scan_prefix(prefix(&["o"])).next().unwrap().unwrap();
    let mut damaged = block.to_vec();
    damaged.truncate(damaged.len() - 3);
    block = damaged.into();
    tree.insert(&k, block).unwrap();

    let views = Views::open(&log).unwrap();
    let err = views
        .questions(&QuestionFilter::default())
        .find_map(|v| v.err())
        .expect("the damaged block is reported");
    assert!(
        err.to_string()
            .contains(&String::from_utf8_lossy(&k).into_owned()),
        "{err}"
    );
    let (_, after, _) = crate::pipeline::rebuild_views(&mut log, &config).unwrap();
    assert_eq!(after, good);
}

proptest! {
    /// The vectorised search finds a keyword exactly where the first implementation (`str::find`,
    /// kept here as the reference) did, with words of several scripts, digits and punctuation,
    /// keywords cut from the text anywhere (so they often match) and keywords made up (so they
    /// often do not).
    #[test]
    fn keywords_match_where_the_first_search_found_them(
        text in "([a-cé1ßİ]{1,4}[ .,’\\-\n]{1,2}){0,30}",
        keyword in "[a-cé1ß .’\\-]{0,8}",
        start in 0usize..200,
        len in 0usize..12,
    ) {
        let text = text.to_lowercase();
        let mut keywords = vec![keyword.to_lowercase()];
        let chars: Vec<char> = text.chars().collect();
        if !chars.is_empty() {
            let from = start % chars.len();
            keywords.push(chars[from..(from + len).min(chars.len())].iter().collect());
        }
        let search = SearchText::new(text.clone());
        for keyword in keywords {
            prop_assert_eq!(
                search.contains_word(&keyword),
                contains_word_reference(&text, &keyword),
                "{:?} in {:?}",
                keyword,
                text
            );
        }
    }
}

/// `contains_word` as first written: `str::find`, going on after each occurrence.
fn contains_word_reference(text: &str, word: &str) -> bool {
    if word.is_empty() {
        return false;
    }
    let boundary = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        if boundary(text[..start].chars().next_back()) && boundary(text[end..].chars().next()) {
            return true;
        }
        from = start + word.len().max(1);
        while from < text.len() && !text.is_char_boundary(from) {
            from += 1;
        }
    }
    false
}
