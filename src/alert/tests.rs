//! The outbox state machine, with an in-memory transport standing in for the mail server (the
//! real SMTP path is tested end to end in tests/alerts.rs against a server on 127.0.0.1).

use std::cell::RefCell;

use super::*;
use crate::event::Source;
use crate::log::StoreOptions;

struct Recorder {
    sent: RefCell<Vec<(String, String)>>,
    fail: RefCell<Option<SendError>>,
}

impl Recorder {
    fn new() -> Recorder {
        Recorder {
            sent: RefCell::new(Vec::new()),
            fail: RefCell::new(None),
        }
    }
}

impl MailTransport for Recorder {
    fn send(&self, message: &lettre::Message) -> Result<(), SendError> {
        if let Some(e) = self.fail.borrow().clone() {
            return Err(e);
        }
        let headers = message.headers();
        let id = headers
            .get_raw("Message-ID")
            .unwrap_or_default()
            .to_string();
        let to = headers.get_raw("To").unwrap_or_default().to_string();
        self.sent.borrow_mut().push((id, to));
        Ok(())
    }
}

fn config(extra: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!(
            "[smtp]\ninitial_backoff_secs = 0\n[[subscriptions]]\nname = \"desk\"\nrecipients = [\"a@example.org\", \"b@example.org\"]\ntopics = [\"policing\"]\nsince = \"2020-01-01\"\n{extra}"
        ),
    )
    .unwrap();
    Config::load(&path).unwrap()
}

fn ingest_sample(log: &mut EventLog) {
    crate::ingest::ingest_text(
        log,
        "sample",
        crate::BUNDLED_SAMPLE,
        crate::record::FeedOrder::NewestFirst,
    )
    .unwrap();
}

fn open() -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
    (dir, log)
}

#[test]
fn each_matching_answer_is_queued_once_per_recipient() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let items = outbox(&log).unwrap();
    // Every sample answer is about policing; flags are not asked for.
    assert_eq!(items.len(), 20);
    assert!(items
        .iter()
        .all(|i| i.kind == "answer" && i.state == ItemState::Pending));
    let ids: std::collections::BTreeSet<&str> =
        items.iter().map(|i| i.message_id.as_str()).collect();
    assert_eq!(ids.len(), 20, "a Message-ID per recipient and answer");
    // Deriving again, or re-ingesting, queues nothing.
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    assert_eq!(outbox(&log).unwrap().len(), 20);
}

/// A flag is matched against the answer it was raised on: here the two tracked-list flags (on
/// answers about protection orders) are queued, the duplicate flag (on one that is not) and the answers
/// themselves (not asked for) are not.
#[test]
fn a_flag_is_queued_when_the_answer_it_was_raised_on_matches() {
    let (_dir, mut log) = open();
    let config = config(
        "answer_events = []\nflag_kinds = [\"tracked_list_changed\", \"duplicate_answer\"]\nkeywords = [\"Domestic Abuse Protection\"]\n",
    );
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let flags: Vec<(u64, String)> = log
        .events_from(1)
        .filter_map(|e| match e.unwrap() {
            Envelope {
                seq,
                event: Event::FlagRaised { flag },
                ..
            } => Some((seq, flag.detail.kind().to_string())),
            _ => None,
        })
        .collect();
    let kinds: Vec<&str> = flags.iter().map(|(_, k)| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "duplicate_answer",
            "tracked_list_changed",
            "tracked_list_changed"
        ]
    );
    let mut queued: Vec<(u64, &str)> = Vec::new();
    let items = outbox(&log).unwrap();
    for item in &items {
        assert_eq!(item.kind, "flag");
        queued.push((item.seqs[0], item.recipient.as_str()));
    }
    queued.sort();
    let (tracked_a, tracked_b) = (flags[1].0, flags[2].0);
    assert_eq!(
        queued,
        [
            (tracked_a, "a@example.org"),
            (tracked_a, "b@example.org"),
            (tracked_b, "a@example.org"),
            (tracked_b, "b@example.org"),
        ]
    );
}

#[test]
fn delivery_records_each_alert_in_the_log_and_never_sends_it_again() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let transport = Recorder::new();
    let report = deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert_eq!(report.sent, 20);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let again = deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert_eq!(again.sent, 0);
    assert_eq!(transport.sent.borrow().len(), 20);
    let recorded = log
        .events_from(1)
        .filter(|e| matches!(e.as_ref().unwrap().event, Event::AlertSent { .. }))
        .count();
    assert_eq!(recorded, 20);
}

#[test]
fn an_unreachable_server_keeps_everything_waiting_then_delivers_it_once() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let transport = Recorder::new();
    *transport.fail.borrow_mut() = Some(SendError {
        message: "connection refused".into(),
        unreachable: true,
    });
    let down = deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert_eq!((down.sent, down.failed, down.waiting), (0, 1, 19));
    let items = outbox(&log).unwrap();
    assert!(items.iter().all(|i| i.state == ItemState::Pending));
    assert_eq!(items.iter().filter(|i| i.attempts == 1).count(), 1);
    *transport.fail.borrow_mut() = None;
    let up = deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert_eq!(up.sent, 20);
    let mut ids: Vec<String> = transport
        .sent
        .borrow()
        .iter()
        .map(|s| s.0.clone())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

#[test]
fn an_item_caught_mid_send_by_a_crash_is_sent_again_once_with_the_same_message_id() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    // The process died after handing this item to the server, before recording it.
    let tree = log.db().open_tree(TREE).unwrap();
    let mut item = outbox(&log).unwrap().remove(0);
    item.state = ItemState::Sending;
    item.attempts = 1;
    save_item(&tree, &log, &item).unwrap();
    let transport = Recorder::new();
    deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    let resent: Vec<_> = transport
        .sent
        .borrow()
        .iter()
        .filter(|(id, _)| *id == item.message_id)
        .cloned()
        .collect();
    assert_eq!(resent.len(), 1);
    crate::pipeline::derive(&mut log, &config).unwrap();
    deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert_eq!(transport.sent.borrow().len(), 20);
}

#[test]
fn an_item_whose_delivery_is_in_the_log_is_not_sent_again_after_a_crash() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let tree = log.db().open_tree(TREE).unwrap();
    let mut item = outbox(&log).unwrap().remove(0);
    // The process died after recording the delivery, before marking the item sent.
    log.append(
        vec![Observation {
            source: Source {
                uri: "smtp:test".into(),
                position: None,
                line: None,
            },
            payload: Payload::AlertSent(AlertSent {
                id: item.id.clone(),
                subscription: item.subscription.clone(),
                recipient: item.recipient.clone(),
                message_id: item.message_id.clone(),
                covers: item.seqs.clone(),
            }),
        }],
        "2026-01-01T00:00:00.000Z",
    )
    .unwrap();
    item.state = ItemState::Sending;
    save_item(&tree, &log, &item).unwrap();
    crate::pipeline::derive(&mut log, &config).unwrap();
    let transport = Recorder::new();
    deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    assert!(transport
        .sent
        .borrow()
        .iter()
        .all(|(id, _)| *id != item.message_id));
    assert_eq!(transport.sent.borrow().len(), 19);
}

#[test]
fn a_first_backfill_sends_no_flood() {
    let (_dir, mut log) = open();
    let config = config("");
    let mut no_since = config.clone();
    no_since.subscriptions[0].since = String::new();
    crate::pipeline::derive(&mut log, &no_since).unwrap();
    // API answers dated 2025 arrive after the subscription started: history, not news.
    let page = include_bytes!("../../tests/fixtures/api/page-1.json");
    let items = crate::parse::api::decode_recorded(page).unwrap();
    crate::ingest::ingest_api_items(&mut log, "page-1", items).unwrap();
    crate::pipeline::derive(&mut log, &no_since).unwrap();
    assert!(outbox(&log).unwrap().is_empty());
}

#[test]
fn upstream_markup_never_becomes_active_in_the_email() {
    let (_dir, mut log) = open();
    let config = config("");
    let text = "Asked by: A Member (Labour - Somewhere)\nQuestion to the Home Office:\nTo ask about police <b>markup</b>.\nAnswered by A Minister\nThe police said <script>alert('x')</script> and <a href=\"javascript:alert(1)\">click</a> & more.\n";
    crate::ingest::ingest_text(
        &mut log,
        "crafted",
        text.as_bytes(),
        crate::record::FeedOrder::NewestFirst,
    )
    .unwrap();
    crate::pipeline::derive(&mut log, &config).unwrap();
    let item = outbox(&log).unwrap().remove(0);
    let rendered = render(&log, &config, &item).unwrap();
    assert!(!rendered.html.contains("<script"), "{}", rendered.html);
    assert!(
        !rendered.html.contains("<a href=\"javascript"),
        "{}",
        rendered.html
    );
    assert!(!rendered.html.contains("<b>"), "{}", rendered.html);
    assert!(rendered
        .html
        .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"));
    assert!(rendered.html.contains("&amp; more"));
    assert!(
        rendered.text.contains("<script>alert('x')</script>"),
        "plain text keeps it as text"
    );
}

#[test]
fn outbox_counts_come_from_the_index_and_older_data_dirs_are_counted_once() {
    let (_dir, mut log) = open();
    let config = config("");
    ingest_sample(&mut log);
    crate::pipeline::derive(&mut log, &config).unwrap();
    let transport = Recorder::new();
    let before = counts_by_state(&log).unwrap();
    assert_eq!(before["pending"], 20);
    assert_eq!(before["sent"], 0);
    deliver(&mut log, &config, &transport, Utc::now()).unwrap();
    crate::pipeline::derive(&mut log, &config).unwrap();
    let after = counts_by_state(&log).unwrap();
    assert_eq!((after["pending"], after["sent"]), (0, 20));

    // A data dir from before the item count (and the unsent index): counted by reading every
    // item, without writing; the consumer then builds both once, and the counts agree.
    let tree = log.db().open_tree(TREE).unwrap();
    tree.remove(ITEM_COUNT_KEY).unwrap();
    tree.remove(UNSENT_INDEX_KEY).unwrap();
    assert_eq!(counts_by_state(&log).unwrap(), after);
    assert!(!tree.contains_key(ITEM_COUNT_KEY).unwrap());
    AlertConsumer::open(&log, &config).unwrap();
    assert_eq!(
        decode_count(tree.get(ITEM_COUNT_KEY).unwrap().as_deref()),
        20
    );
    assert_eq!(counts_by_state(&log).unwrap(), after);
}
