//! Alerts: log events in, emails out, each recorded once in the log as `alert_sent`.
//!
//! Two steps. [`AlertConsumer`] is a consumer of the log with its own checkpoint (tree `alerts`): it
//! matches new answer and flag events against the subscriptions and puts what is due into a
//! durable outbox (or a subscription's digest queue); it also marks outbox items sent when it
//! meets their `alert_sent` events, so the outbox can be rebuilt from the log. [`deliver`] sends
//! what is due: digests whose schedule has come round, then outbox items, oldest first.
//!
//! The guarantee, honestly: every alert is delivered at least once and never dropped (failures
//! wait in the outbox with backoff). Before sending, an item is marked `sending` (flushed); after
//! the server accepts it, `alert_sent` is appended (flushed) and the item marked `sent`. A crash
//! after the server accepted the message but before `alert_sent` was flushed leaves the item in
//! `sending`; it is sent once more, with the same deterministic Message-ID, which mail systems
//! use to drop the duplicate. So a recipient can see at most one extra copy per crash in that
//! window, never more, and none otherwise.

use chrono::{DateTime, Days, NaiveDate, Utc};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Borrow;

use crate::config::{Config, SmtpConfig, SubscriptionConfig, TopicConfig};
use crate::event::{AlertSent, Envelope, Event, Flag, FlagDetail, Observation, Payload, Source};
use crate::log::{EventLog, LogError};
use crate::overlay::{Overlay, OverlayError};
use crate::record::{AnswerRecord, Block, Cell, Table};

const TREE: &str = "alerts";
const CHECKPOINT: &[u8] = b"\x00checkpoint";
/// Answers dated this long before a subscription started still alert (late publication).
const START_GRACE_DAYS: u64 = 7;
/// Plain-text answers longer than this are trimmed in emails (the link has the rest).
const MAX_ANSWER_CHARS: usize = 4000;

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("alert state: {0}")]
    Overlay(#[from] OverlayError),
    #[error("alert {id}: {why}")]
    Render { id: String, why: String },
    #[error("no alert {0:?} in the outbox")]
    Unknown(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("SMTP password: {0}")]
    Password(String),
}

impl From<sled::Error> for AlertError {
    fn from(e: sled::Error) -> Self {
        AlertError::Log(LogError::Storage(e))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemState {
    Pending,
    /// Handed to the mail server; not yet known to be accepted.
    Sending,
    Sent,
}

/// One email to one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    pub id: String,
    pub subscription: String,
    pub recipient: String,
    /// "answer", "flag" or "digest".
    pub kind: String,
    /// The events the email is about.
    pub seqs: Vec<u64>,
    pub created_at: String,
    pub state: ItemState,
    pub attempts: u32,
    #[serde(default)]
    pub next_attempt_at: Option<String>,
    #[serde(default)]
    pub last_error: Option<String>,
    pub message_id: String,
}

impl OutboxItem {
    /// The state as `status`, `/metrics` and `alerts list` name it: a pending item that has
    /// failed before is "retrying".
    pub fn state_name(&self) -> &'static str {
        match self.state {
            ItemState::Pending if self.attempts > 0 => "retrying",
            ItemState::Pending => "pending",
            ItemState::Sending => "sending",
            ItemState::Sent => "sent",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    pub events_read: u64,
    pub queued: u64,
    /// Subscriptions whose start time was recorded by this run.
    pub started: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub sent: u64,
    pub failed: u64,
    pub waiting: u64,
    pub digests_made: u64,
}

/// A sender of finished messages. The real one is SMTP; its errors say whether a retry may help.
pub trait MailTransport {
    fn send(&self, message: &lettre::Message) -> Result<(), SendError>;
}

#[derive(Debug, Clone)]
pub struct SendError {
    pub message: String,
    /// The server could not be reached at all: later items would fail the same way.
    pub unreachable: bool,
}

/// `since` in config: a date or an RFC 3339 time.
pub fn parse_since(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

fn key(parts: &[&str]) -> Vec<u8> {
    parts.join("\u{1f}").into_bytes()
}

fn prefix(parts: &[&str]) -> Vec<u8> {
    let mut k = key(parts);
    k.push(0x1f);
    k
}

fn short_hash(text: &str) -> String {
    crate::event::hex(&Sha256::digest(text.as_bytes())[..6])
}

fn from_domain(smtp: &SmtpConfig) -> String {
    smtp.from
        .parse::<Mailbox>()
        .ok()
        .map(|m| m.email.domain().to_string())
        .unwrap_or_else(|| "answerfeed.invalid".to_string())
}

/// The Message-ID for an item: the same every time the item is sent.
fn message_id(item_id: &str, smtp: &SmtpConfig) -> String {
    let local: String = item_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '.'
            }
        })
        .collect();
    format!("<answerfeed.{local}@{}>", from_domain(smtp))
}

/// When a subscription's alerts begin: its configured `since`, or when it was first seen.
fn subscription_start(
    state: &mut Overlay<'_>,
    sub: &SubscriptionConfig,
    now: &str,
) -> Result<DateTime<Utc>, AlertError> {
    if let Some(since) = parse_since(&sub.since) {
        return Ok(since);
    }
    let k = key(&["start", &sub.name]);
    let start = match state.get(&k)? {
        Some(v) => String::from_utf8_lossy(&v).into_owned(),
        None => {
            state.put(k, now.as_bytes().to_vec());
            now.to_string()
        }
    };
    Ok(parse_since(&start).unwrap_or_else(Utc::now))
}

/// Whether a record is one the subscription asks about.
pub fn matches(sub: &SubscriptionConfig, topics: &[TopicConfig], record: &AnswerRecord) -> bool {
    let any_or_empty = |list: &[String], test: &dyn Fn(&str) -> bool| {
        list.is_empty() || list.iter().any(|x| test(x))
    };
    let topic_ok = any_or_empty(&sub.topics, &|name| {
        topics
            .iter()
            .find(|t| t.name == name)
            .is_some_and(|t| crate::project::topic_matches(t, record))
    });
    let body_ok = any_or_empty(&sub.answering_bodies, &|b| {
        b.eq_ignore_ascii_case(&record.answering_body)
    });
    let member_ok = any_or_empty(&sub.members, &|m| {
        m.eq_ignore_ascii_case(&record.asking_member.name)
    });
    let force_ok = any_or_empty(&sub.forces, &|f| {
        crate::forces::lookup(f).is_some_and(|force| record.forces.iter().any(|r| r.id == force.id))
    });
    let keyword_ok = sub.keywords.is_empty() || {
        let text = crate::project::SearchText::of(record);
        sub.keywords
            .iter()
            .any(|k| text.contains_word(&k.to_lowercase()))
    };
    topic_ok && body_ok && member_ok && force_ok && keyword_ok
}

/// Whether an event falls inside a subscription's time: recorded after it started, and (for
/// answers that carry a date) not dated long before it started.
fn in_time(start: DateTime<Utc>, recorded_at: &str, record: Option<&AnswerRecord>) -> bool {
    let recorded_ok = parse_since(recorded_at).is_none_or(|t| t >= start);
    let earliest = start
        .date_naive()
        .checked_sub_days(Days::new(START_GRACE_DAYS))
        .unwrap_or(start.date_naive());
    let dated_ok = record
        .and_then(|r| r.api.as_ref())
        .and_then(|a| a.effective_date())
        .and_then(|d| d.get(..10))
        .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        .is_none_or(|d| d >= earliest);
    recorded_ok && dated_ok
}

/// The outbox as a consumer of batches of events read by someone else (the pipeline reads each
/// batch once for all consumers). Events at or before its checkpoint are skipped.
pub struct AlertConsumer<'c> {
    config: &'c Config,
    tree: sled::Tree,
    checkpoint: u64,
    now: String,
    report: DeriveReport,
}

impl<'c> AlertConsumer<'c> {
    pub fn open(log: &EventLog, config: &'c Config) -> Result<AlertConsumer<'c>, AlertError> {
        let tree = log.db().open_tree(TREE)?;
        ensure_indexes(&tree)?;
        let checkpoint = crate::overlay::read_checkpoint(&tree, CHECKPOINT)?;
        Ok(AlertConsumer {
            config,
            tree,
            checkpoint,
            now: crate::ingest::now_rfc3339(),
            report: DeriveReport::default(),
        })
    }

    pub fn checkpoint(&self) -> u64 {
        self.checkpoint
    }

    /// Queues what the events of `batch` after the checkpoint call for, with the checkpoint, in
    /// one write.
    pub fn apply<E: Borrow<Envelope>>(
        &mut self,
        log: &EventLog,
        batch: &[E],
    ) -> Result<(), AlertError> {
        let mut state = Overlay::new(&self.tree);
        let mut last = None;
        let checkpoint = self.checkpoint;
        for envelope in batch
            .iter()
            .map(Borrow::borrow)
            .filter(|e| e.seq > checkpoint)
        {
            self.report.queued += queue_event(log, self.config, &mut state, envelope, &self.now)?;
            last = Some(envelope.seq);
            self.report.events_read += 1;
        }
        if let Some(last) = last {
            self.tree
                .apply_batch(state.into_batch(&[(CHECKPOINT, last.to_be_bytes().to_vec())]))?;
            self.checkpoint = last;
        }
        Ok(())
    }

    /// What the consumer did so far (without recording subscription starts).
    pub fn report(&self) -> DeriveReport {
        self.report.clone()
    }

    /// Records the start of subscriptions added since the last event (only those not yet
    /// recorded: an idle run writes nothing).
    pub fn finish(self) -> Result<DeriveReport, AlertError> {
        let mut state = Overlay::new(&self.tree);
        for sub in &self.config.subscriptions {
            subscription_start(&mut state, sub, &self.now)?;
        }
        let mut report = self.report;
        if state.has_pending() {
            report.started = state.pending_len() as u64;
            self.tree.apply_batch(state.into_batch(&[]))?;
        }
        Ok(report)
    }
}

fn queue_event(
    log: &EventLog,
    config: &Config,
    state: &mut Overlay<'_>,
    envelope: &Envelope,
    now: &str,
) -> Result<u64, AlertError> {
    if let Event::AlertSent { alert } = &envelope.event {
        // A digest that was sent covers its events: they leave the queue (this matters when the
        // outbox is rebuilt from the log, e.g. after a restore).
        if alert.id.contains(".digest.") {
            for seq in &alert.covers {
                state.remove(key(&["dq", &alert.subscription, &format!("{seq:020}")]));
            }
        }
        let k = key(&["o", &alert.id]);
        if let Some(mut item) = state.get_json::<OutboxItem>(&k)? {
            item.state = ItemState::Sent;
            item.message_id = alert.message_id.clone();
            put_item(state, &item);
        }
        return Ok(0);
    }
    let (kind, flag_kind) = match &envelope.event {
        Event::FlagRaised { flag } => ("flag", Some(flag.detail.kind())),
        _ => ("answer", None),
    };
    let wanted = |sub: &&SubscriptionConfig| match flag_kind {
        Some(k) => sub.flag_kinds.iter().any(|f| f == k),
        None => sub.answer_events.iter().any(|e| e == envelope.event.kind()),
    };
    // Most events interest no subscription (and with none configured, none does): a flag's
    // answer is only read from the log, and an answer only matched, for a subscription that
    // wants this kind of event.
    if !config.subscriptions.iter().any(|sub| wanted(&sub)) {
        return Ok(0);
    }
    let flagged;
    let record = match &envelope.event {
        Event::FlagRaised { flag } => {
            if flag.question.is_none() {
                return Ok(0);
            }
            flagged = log.get(flag.derived_from)?;
            flagged.as_ref().and_then(|e| e.event.record())
        }
        event => event.record(),
    };
    let Some(record) = record else { return Ok(0) };
    let mut queued = 0;
    for sub in config.subscriptions.iter().filter(wanted) {
        if !matches(sub, &config.topics, record) {
            continue;
        }
        let start = subscription_start(state, sub, now)?;
        if !in_time(start, &envelope.recorded_at, Some(record)) {
            continue;
        }
        let seq = format!("{:020}", envelope.seq);
        if sub.mode == "digest" {
            state.put(key(&["dq", &sub.name, &seq]), Vec::new());
            queued += 1;
            continue;
        }
        for recipient in &sub.recipients {
            let id = format!("{}.{}.{}", sub.name, envelope.seq, short_hash(recipient));
            let k = key(&["o", &id]);
            if state.get(&k)?.is_some() {
                continue;
            }
            let item = OutboxItem {
                message_id: message_id(&id, &config.smtp),
                id,
                subscription: sub.name.clone(),
                recipient: recipient.clone(),
                kind: kind.to_string(),
                seqs: vec![envelope.seq],
                created_at: now.to_string(),
                state: ItemState::Pending,
                attempts: 0,
                next_attempt_at: None,
                last_error: None,
            };
            put_item(state, &item);
            let count = decode_count(state.get(ITEM_COUNT_KEY)?.as_deref());
            state.put(ITEM_COUNT_KEY.to_vec(), (count + 1).to_be_bytes().to_vec());
            queued += 1;
        }
    }
    Ok(queued)
}

/// The alert consumer's checkpoint.
pub fn checkpoint(log: &EventLog) -> Result<u64, AlertError> {
    Ok(crate::overlay::read_checkpoint(
        &log.db().open_tree(TREE)?,
        CHECKPOINT,
    )?)
}

/// Subscription start times, for backups (they are not in the log).
pub fn start_times(log: &EventLog) -> Result<Vec<crate::overlay::Entry>, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    let mut out = Vec::new();
    for entry in tree.scan_prefix(prefix(&["start"])) {
        let (k, v) = entry?;
        out.push((k.to_vec(), v.to_vec()));
    }
    Ok(out)
}

/// Writes subscription start times into a (restored) data dir.
pub fn restore_start_times(
    log: &EventLog,
    times: &[crate::overlay::Entry],
) -> Result<(), AlertError> {
    let tree = log.db().open_tree(TREE)?;
    for (k, v) in times {
        tree.insert(k.as_slice(), v.as_slice())?;
    }
    log.flush()?;
    Ok(())
}

/// An outbox item as stored under its `o` key.
fn decode_item((k, v): (sled::IVec, sled::IVec)) -> Result<OutboxItem, AlertError> {
    serde_json::from_slice(&v).map_err(|e| {
        AlertError::Overlay(OverlayError::Decode {
            key: String::from_utf8_lossy(&k).into_owned(),
            why: e.to_string(),
        })
    })
}

/// Every outbox item, oldest first.
pub fn outbox(log: &EventLog) -> Result<Vec<OutboxItem>, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    let mut items = Vec::new();
    for entry in tree.scan_prefix(prefix(&["o"])) {
        items.push(decode_item(entry?)?);
    }
    sort_items(&mut items);
    Ok(items)
}

fn sort_items(items: &mut [OutboxItem]) {
    items.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then_with(|| a.seqs.cmp(&b.seqs))
            .then_with(|| a.id.cmp(&b.id))
    });
}

/// The keys an item's state lives under: the item, and its entry in the index of items not yet
/// sent (`u` id), which is what delivery reads, so that it never scans the sent history.
fn item_writes(item: &OutboxItem) -> [(Vec<u8>, Option<Vec<u8>>); 2] {
    [
        (
            key(&["o", &item.id]),
            Some(serde_json::to_vec(item).unwrap_or_default()),
        ),
        (
            key(&["u", &item.id]),
            (item.state != ItemState::Sent).then(Vec::new),
        ),
    ]
}

fn put_item(state: &mut Overlay<'_>, item: &OutboxItem) {
    for (k, v) in item_writes(item) {
        match v {
            Some(v) => state.put(k, v),
            None => state.remove(k),
        }
    }
}

fn save_item(tree: &sled::Tree, log: &EventLog, item: &OutboxItem) -> Result<(), AlertError> {
    let mut batch = sled::Batch::default();
    for (k, v) in item_writes(item) {
        match v {
            Some(v) => batch.insert(k, v),
            None => batch.remove(k),
        }
    }
    tree.apply_batch(batch)?;
    log.flush()?;
    Ok(())
}

const UNSENT_INDEX_KEY: &[u8] = b"\x00unsent-index";
/// Outbox items ever created (items are never removed), so that counting them needs no scan.
const ITEM_COUNT_KEY: &[u8] = b"\x00item-count";

fn decode_count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map_or(0, u64::from_be_bytes)
}

/// Data dirs from before the unsent index or the item count get them built once, from the
/// outbox.
fn ensure_indexes(tree: &sled::Tree) -> Result<(), AlertError> {
    let has_index = tree.contains_key(UNSENT_INDEX_KEY)?;
    if has_index && tree.contains_key(ITEM_COUNT_KEY)? {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    let mut count = 0u64;
    for entry in tree.scan_prefix(prefix(&["o"])) {
        let item = decode_item(entry?)?;
        count += 1;
        if !has_index && item.state != ItemState::Sent {
            batch.insert(key(&["u", &item.id]), Vec::new());
        }
    }
    batch.insert(UNSENT_INDEX_KEY, b"1".to_vec());
    batch.insert(ITEM_COUNT_KEY, count.to_be_bytes().to_vec());
    tree.apply_batch(batch)?;
    Ok(())
}

/// Whether nothing in the outbox waits to be sent or gathered into a digest: until new events
/// are derived, delivery has nothing to do, and the daemon may close the log.
pub fn nothing_waiting(log: &EventLog, config: &Config) -> Result<bool, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    // Only the configured digests: a queue left by a subscription since removed never drains.
    for sub in config.subscriptions.iter().filter(|s| s.mode == "digest") {
        if tree
            .scan_prefix(prefix(&["dq", &sub.name]))
            .next()
            .is_some()
        {
            return Ok(false);
        }
    }
    Ok(counts_by_state(log)?
        .iter()
        .all(|(state, count)| state == "sent" || *count == 0))
}

/// Outbox items by state ("pending", "retrying", "sending", "sent"), read from the unsent index
/// and the item count, without writing (a data dir from before those falls back to reading
/// every item).
pub fn counts_by_state(
    log: &EventLog,
) -> Result<std::collections::BTreeMap<String, u64>, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    let mut counts: std::collections::BTreeMap<String, u64> =
        ["pending", "retrying", "sending", "sent"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    let indexed = tree.contains_key(UNSENT_INDEX_KEY)? && tree.contains_key(ITEM_COUNT_KEY)?;
    let items = if indexed {
        unsent_items(&tree)?
    } else {
        outbox(log)?
    };
    let mut unsent = 0;
    for item in &items {
        if item.state != ItemState::Sent {
            unsent += 1;
        }
        *counts.entry(item.state_name().to_string()).or_default() += 1;
    }
    if indexed {
        let total = decode_count(tree.get(ITEM_COUNT_KEY)?.as_deref());
        counts.insert("sent".to_string(), total.saturating_sub(unsent));
    }
    Ok(counts)
}

/// One outbox item by id.
pub fn item(log: &EventLog, id: &str) -> Result<Option<OutboxItem>, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    Ok(Overlay::new(&tree).get_json::<OutboxItem>(&key(&["o", id]))?)
}

/// Items not yet sent, oldest first, read through the unsent index.
pub fn unsent(log: &EventLog) -> Result<Vec<OutboxItem>, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    ensure_indexes(&tree)?;
    unsent_items(&tree)
}

fn unsent_items(tree: &sled::Tree) -> Result<Vec<OutboxItem>, AlertError> {
    let state = Overlay::new(tree);
    let mut items = Vec::new();
    for entry in tree.scan_prefix(prefix(&["u"])) {
        let (k, _) = entry?;
        let id = String::from_utf8_lossy(&k[2..]).into_owned();
        if let Some(item) = state.get_json::<OutboxItem>(&key(&["o", &id]))? {
            items.push(item);
        }
    }
    sort_items(&mut items);
    Ok(items)
}

/// Turns due digest queues into outbox items (one per recipient).
fn make_digests(log: &EventLog, config: &Config, now: DateTime<Utc>) -> Result<u64, AlertError> {
    let tree = log.db().open_tree(TREE)?;
    ensure_indexes(&tree)?;
    let mut made = 0;
    for sub in config.subscriptions.iter().filter(|s| s.mode == "digest") {
        let Ok(schedule) =
            crate::schedule::Schedule::parse(&sub.digest_schedule, &config.fetch.timezone)
        else {
            continue;
        };
        let last_key = key(&["dl", &sub.name]);
        let last = match tree.get(&last_key)? {
            Some(v) => parse_since(&String::from_utf8_lossy(&v)),
            None => None,
        };
        let baseline = match last {
            Some(t) => t,
            None => {
                let start = tree
                    .get(key(&["start", &sub.name]))?
                    .and_then(|v| parse_since(&String::from_utf8_lossy(&v)))
                    .or_else(|| parse_since(&sub.since))
                    .unwrap_or(now);
                start
            }
        };
        let due = schedule.next_after(baseline).is_some_and(|t| t <= now);
        if !due {
            continue;
        }
        let mut seqs = Vec::new();
        let mut queue_keys = Vec::new();
        for entry in tree.scan_prefix(prefix(&["dq", &sub.name])) {
            let (k, _) = entry?;
            if let Some(seq) = String::from_utf8_lossy(&k)
                .rsplit('\u{1f}')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            {
                seqs.push(seq);
            }
            queue_keys.push(k);
        }
        let mut batch = sled::Batch::default();
        let mut created = 0;
        if let (Some(first), Some(last_seq)) = (seqs.first(), seqs.last()) {
            for recipient in &sub.recipients {
                let id = format!(
                    "{}.digest.{first}-{last_seq}.{}",
                    sub.name,
                    short_hash(recipient)
                );
                let item = OutboxItem {
                    message_id: message_id(&id, &config.smtp),
                    id: id.clone(),
                    subscription: sub.name.clone(),
                    recipient: recipient.clone(),
                    kind: "digest".to_string(),
                    seqs: seqs.clone(),
                    created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    state: ItemState::Pending,
                    attempts: 0,
                    next_attempt_at: None,
                    last_error: None,
                };
                if !tree.contains_key(key(&["o", &id]))? {
                    created += 1;
                }
                for (k, v) in item_writes(&item) {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                made += 1;
            }
        }
        if created > 0 {
            let count = decode_count(tree.get(ITEM_COUNT_KEY)?.as_deref());
            batch.insert(ITEM_COUNT_KEY, (count + created).to_be_bytes().to_vec());
        }
        for k in queue_keys {
            batch.remove(k);
        }
        batch.insert(
            last_key,
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into_bytes(),
        );
        // The queue becomes outbox items in one atomic write: none lost, none twice.
        tree.apply_batch(batch)?;
        log.flush()?;
    }
    Ok(made)
}

/// Sends what is due. Stops early when the server cannot be reached (the rest waits).
pub fn deliver(
    log: &mut EventLog,
    config: &Config,
    transport: &dyn MailTransport,
    now: DateTime<Utc>,
) -> Result<DeliveryReport, AlertError> {
    let mut report = DeliveryReport {
        digests_made: make_digests(log, config, now)?,
        ..DeliveryReport::default()
    };
    let tree = log.db().open_tree(TREE)?;
    let mut unreachable = false;
    for mut item in unsent(log)? {
        if item.state == ItemState::Sent {
            continue;
        }
        let due = item
            .next_attempt_at
            .as_deref()
            .and_then(parse_since)
            .is_none_or(|t| t <= now);
        if unreachable || !due {
            report.waiting += 1;
            continue;
        }
        let message = render(log, config, &item)?;
        item.state = ItemState::Sending;
        item.attempts += 1;
        save_item(&tree, log, &item)?;
        match transport.send(&message.message) {
            Ok(()) => {
                let sent = AlertSent {
                    id: item.id.clone(),
                    subscription: item.subscription.clone(),
                    recipient: item.recipient.clone(),
                    message_id: item.message_id.clone(),
                    covers: item.seqs.clone(),
                };
                log.append(
                    vec![Observation {
                        source: Source {
                            uri: format!("smtp:{}:{}", config.smtp.host, config.smtp.port),
                            position: None,
                            line: None,
                        },
                        payload: Payload::AlertSent(sent),
                    }],
                    &crate::ingest::now_rfc3339(),
                )?;
                item.state = ItemState::Sent;
                item.last_error = None;
                item.next_attempt_at = None;
                save_item(&tree, log, &item)?;
                report.sent += 1;
                tracing::info!(alert = %item.id, recipient = %item.recipient, "alert sent");
            }
            Err(e) => {
                let wait = backoff(&config.smtp, item.attempts);
                item.state = ItemState::Pending;
                item.last_error = Some(e.message.clone());
                item.next_attempt_at = Some(
                    (now + chrono::Duration::from_std(wait).unwrap_or_default())
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                );
                save_item(&tree, log, &item)?;
                report.failed += 1;
                unreachable = e.unreachable;
                tracing::warn!(alert = %item.id, attempts = item.attempts, error = %e.message, wait_secs = wait.as_secs(), "alert not delivered; will retry");
            }
        }
    }
    Ok(report)
}

fn backoff(smtp: &SmtpConfig, attempts: u32) -> std::time::Duration {
    let secs = smtp
        .initial_backoff_secs
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(smtp.max_backoff_secs);
    std::time::Duration::from_secs(secs)
}

/// A rendered alert: the message, and its parts for `alerts preview`.
pub struct Rendered {
    pub message: lettre::Message,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Renders an outbox item to its email.
pub fn render(log: &EventLog, config: &Config, item: &OutboxItem) -> Result<Rendered, AlertError> {
    let err = |why: String| AlertError::Render {
        id: item.id.clone(),
        why,
    };
    let mut sections = Vec::new();
    for seq in &item.seqs {
        let envelope = log
            .get(*seq)?
            .ok_or_else(|| err(format!("event {seq} is not in the log")))?;
        sections.push(section(log, &envelope)?);
    }
    let subject = match (item.kind.as_str(), sections.first()) {
        ("digest", _) => format!(
            "answerfeed digest ({}): {} item{}",
            item.subscription,
            sections.len(),
            if sections.len() == 1 { "" } else { "s" }
        ),
        (_, Some(first)) => first.subject.clone(),
        (_, None) => return Err(err("no events".to_string())),
    };
    let mut text = String::new();
    let mut html = String::from("<!DOCTYPE html><html><body style=\"font-family: sans-serif\">");
    for (i, s) in sections.iter().enumerate() {
        if i > 0 {
            text.push_str("\n----------------------------------------\n\n");
            html.push_str("<hr>");
        }
        text.push_str(&s.text);
        html.push_str(&s.html);
    }
    text.push_str(&format!(
        "\n--\nSent by answerfeed for subscription \"{}\".\n",
        item.subscription
    ));
    html.push_str(&format!(
        "<p style=\"color:#666\">Sent by answerfeed for subscription &quot;{}&quot;.</p></body></html>",
        escape(&item.subscription)
    ));
    let from: Mailbox = config
        .smtp
        .from
        .parse()
        .map_err(|e| err(format!("smtp.from: {e}")))?;
    let to: Mailbox = item
        .recipient
        .parse()
        .map_err(|e| err(format!("recipient {:?}: {e}", item.recipient)))?;
    let message = lettre::Message::builder()
        .from(from)
        .to(to)
        .subject(subject.clone())
        .message_id(Some(item.message_id.clone()))
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html.clone()),
                ),
        )
        .map_err(|e| err(format!("building the message: {e}")))?;
    Ok(Rendered {
        message,
        subject,
        text,
        html,
    })
}

struct Section {
    subject: String,
    text: String,
    html: String,
}

fn section(log: &EventLog, envelope: &Envelope) -> Result<Section, AlertError> {
    match &envelope.event {
        Event::FlagRaised { flag } => {
            let answer = match log.get(flag.derived_from)? {
                Some(e) => e.event.record().cloned(),
                None => None,
            };
            let mut s = match &answer {
                Some(r) => answer_section(r, "flagged"),
                None => Section {
                    subject: String::new(),
                    text: String::new(),
                    html: String::new(),
                },
            };
            let (flag_text, flag_html) = flag_parts(flag);
            s.subject = format!(
                "Flag: {} — {}",
                flag.detail.kind().replace('_', " "),
                answer.as_ref().map(headline).unwrap_or_default()
            );
            s.text = format!("{flag_text}\n\n{}", s.text);
            s.html = format!("{flag_html}{}", s.html);
            Ok(s)
        }
        event => match event.record() {
            Some(record) => {
                let label = match event.kind() {
                    "answer_corrected" => "corrected",
                    "answer_revised" => "revised",
                    "holding_answer_given" => "holding answer",
                    "question_withdrawn" => "withdrawn",
                    _ => "new answer",
                };
                Ok(answer_section(record, label))
            }
            None => Ok(Section {
                subject: event.kind().to_string(),
                text: String::new(),
                html: String::new(),
            }),
        },
    }
}

fn headline(r: &AnswerRecord) -> String {
    let topic = r
        .api
        .as_ref()
        .and_then(|a| a.heading.clone())
        .unwrap_or_else(|| {
            let words: Vec<&str> = r.question_text.split_whitespace().take(12).collect();
            format!("{}…", words.join(" "))
        });
    format!("{}: {}", r.answering_body, topic)
}

/// Only links we build ourselves from the question's date and UIN, on the Parliament site.
fn safe_link(r: &AnswerRecord) -> Option<String> {
    let url = r.api.as_ref()?.url.clone()?;
    let parsed = url::Url::parse(&url).ok()?;
    let ok = parsed.scheme() == "https"
        && parsed.host_str() == Some("questions-statements.parliament.uk")
        && parsed
            .path()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_".contains(c));
    ok.then(|| parsed.to_string())
}

fn answer_section(r: &AnswerRecord, label: &str) -> Section {
    let member = &r.asking_member;
    let seat = member
        .constituency
        .as_deref()
        .or(member.peerage.as_deref())
        .unwrap_or("");
    let affiliation = [member.party.as_deref().unwrap_or(""), seat]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" - ");
    let answered_by = match &r.answering_member.title {
        Some(t) => format!("{} ({t})", r.answering_member.name),
        None => r.answering_member.name.clone(),
    };
    let date = r
        .api
        .as_ref()
        .and_then(|a| a.date_answered.as_deref())
        .map(|d| d.get(..10).unwrap_or(d).to_string());
    let link = safe_link(r);
    let subject = if label == "new answer" {
        headline(r)
    } else {
        format!("{} ({label})", headline(r))
    };

    let mut text = format!("{} [{label}]\n\n", headline(r));
    text.push_str(&format!(
        "Asked by {} ({affiliation})\nAnswered by {answered_by}{}\n",
        member.name,
        date.as_deref()
            .map(|d| format!(" on {d}"))
            .unwrap_or_default()
    ));
    if let Some(link) = &link {
        text.push_str(&format!("{link}\n"));
    }
    text.push_str(&format!("\nQ: {}\n\nA:\n", r.question_text));
    let mut answer_text = String::new();
    for block in &r.answer.blocks {
        match block {
            Block::Paragraph { text } => answer_text.push_str(&format!("{text}\n\n")),
            Block::ListItem { text } => answer_text.push_str(&format!("  - {text}\n")),
            Block::Table(t) => answer_text.push_str(&format!("{}\n", table_text(t))),
        }
    }
    if answer_text.chars().count() > MAX_ANSWER_CHARS {
        let cut: String = answer_text.chars().take(MAX_ANSWER_CHARS).collect();
        answer_text = format!("{cut}…\n[trimmed: the whole answer is at the link above]\n");
    }
    text.push_str(&answer_text);

    let mut html = format!(
        "<h2>{}</h2><p><em>{}</em></p>",
        escape(&headline(r)),
        escape(label)
    );
    html.push_str(&format!(
        "<p>Asked by <strong>{}</strong> ({})<br>Answered by <strong>{}</strong>{}</p>",
        escape(&member.name),
        escape(&affiliation),
        escape(&answered_by),
        date.as_deref()
            .map(|d| format!(" on {}", escape(d)))
            .unwrap_or_default()
    ));
    if let Some(link) = &link {
        html.push_str(&format!(
            "<p><a href=\"{}\">Read it on the Parliament site</a></p>",
            escape(link)
        ));
    }
    html.push_str(&format!(
        "<p><strong>Question:</strong> {}</p>",
        escape(&r.question_text)
    ));
    let mut shown = 0usize;
    let mut trimmed = false;
    let mut in_list = false;
    for block in &r.answer.blocks {
        if shown > MAX_ANSWER_CHARS {
            trimmed = true;
            break;
        }
        let is_item = matches!(block, Block::ListItem { .. });
        if in_list && !is_item {
            html.push_str("</ul>");
        }
        if !in_list && is_item {
            html.push_str("<ul>");
        }
        in_list = is_item;
        match block {
            Block::Paragraph { text } => {
                shown += text.len();
                html.push_str(&format!("<p>{}</p>", escape(text)));
            }
            Block::ListItem { text } => {
                shown += text.len();
                html.push_str(&format!("<li>{}</li>", escape(text)));
            }
            Block::Table(t) => {
                shown += t.rows.len() * 20;
                html.push_str(&table_html(t));
            }
        }
    }
    if in_list {
        html.push_str("</ul>");
    }
    if trimmed {
        html.push_str("<p><em>[trimmed: the whole answer is at the link above]</em></p>");
    }
    Section {
        subject,
        text,
        html,
    }
}

fn flag_parts(flag: &Flag) -> (String, String) {
    let description = crate::event::describe_flag(flag);
    let mut text = format!("FLAG {}: {description}", flag.detail.kind());
    let mut html = format!(
        "<p style=\"background:#fff4d6;padding:6px\"><strong>Flag ({}):</strong> {}</p>",
        escape(flag.detail.kind()),
        escape(&description)
    );
    if let FlagDetail::AnswerChanged { changes, .. } = &flag.detail {
        text.push_str(&format!(
            "\n{}",
            crate::event::render_word_diff(changes, crate::event::Style { colour: false })
        ));
        html.push_str("<p>");
        for change in changes {
            let t = escape(&change.text);
            match change.op.as_str() {
                "delete" => html.push_str(&format!("<del style=\"color:#a00\">{t}</del>")),
                "insert" => html.push_str(&format!("<ins style=\"color:#070\">{t}</ins>")),
                _ => html.push_str(&t),
            }
        }
        html.push_str("</p>");
    }
    (text, html)
}

fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Int(n) => {
            // Thousands separators back, as the answer printed them.
            let digits = n.unsigned_abs().to_string();
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            if *n < 0 {
                format!("-{out}")
            } else {
                out
            }
        }
        other => other.to_text(),
    }
}

fn table_text(t: &Table) -> String {
    let mut rows: Vec<Vec<String>> = vec![t.header.clone()];
    rows.extend(
        t.rows
            .iter()
            .map(|r| r.cells.iter().map(cell_text).collect()),
    );
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; width];
    for row in &rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    if let Some(title) = &t.title {
        out.push_str(&format!("{title}\n"));
    }
    for row in &rows {
        let cells: Vec<String> = (0..width)
            .map(|i| {
                let c = row.get(i).cloned().unwrap_or_default();
                format!("{c:<w$}", w = widths[i])
            })
            .collect();
        out.push_str(cells.join(" | ").trim_end());
        out.push('\n');
    }
    for note in &t.notes {
        out.push_str(&format!("{note}\n"));
    }
    out
}

fn table_html(t: &Table) -> String {
    let mut html =
        String::from("<table border=\"1\" cellpadding=\"3\" style=\"border-collapse:collapse\">");
    if let Some(title) = &t.title {
        html.push_str(&format!("<caption>{}</caption>", escape(title)));
    }
    html.push_str("<tr>");
    for h in &t.header {
        html.push_str(&format!("<th>{}</th>", escape(h)));
    }
    html.push_str("</tr>");
    for row in &t.rows {
        html.push_str(if row.total {
            "<tr style=\"font-weight:bold\">"
        } else {
            "<tr>"
        });
        for c in &row.cells {
            html.push_str(&format!("<td>{}</td>", escape(&cell_text(c))));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    for note in &t.notes {
        html.push_str(&format!("<p><small>{}</small></p>", escape(note)));
    }
    html
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The SMTP password: `ANSWERFEED_SMTP_PASSWORD`, else the file named by `smtp.password_file`.
/// Never from the config file itself, and never logged.
pub fn smtp_password(smtp: &SmtpConfig) -> Result<Option<String>, AlertError> {
    if let Ok(p) = std::env::var("ANSWERFEED_SMTP_PASSWORD") {
        return Ok(Some(p));
    }
    if smtp.password_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&smtp.password_file)
        .map_err(|e| AlertError::Password(format!("cannot read {}: {e}", smtp.password_file)))?;
    Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()))
}

/// Mail through an SMTP server, as configured.
pub struct SmtpMailer {
    transport: lettre::SmtpTransport,
}

impl SmtpMailer {
    pub fn new(smtp: &SmtpConfig) -> Result<SmtpMailer, AlertError> {
        use lettre::transport::smtp::authentication::Credentials;
        let timeout = Some(std::time::Duration::from_secs(smtp.timeout_secs.max(1)));
        let builder = match smtp.security.as_str() {
            "tls" => lettre::SmtpTransport::relay(&smtp.host)
                .map_err(|e| AlertError::Smtp(e.to_string()))?,
            "starttls" => lettre::SmtpTransport::starttls_relay(&smtp.host)
                .map_err(|e| AlertError::Smtp(e.to_string()))?,
            _ => lettre::SmtpTransport::builder_dangerous(&smtp.host),
        };
        let mut builder = builder.port(smtp.port).timeout(timeout);
        if !smtp.username.is_empty() {
            let password = smtp_password(smtp)?.ok_or_else(|| {
                AlertError::Password(
                    "smtp.username is set but no password: set ANSWERFEED_SMTP_PASSWORD or smtp.password_file"
                        .to_string(),
                )
            })?;
            builder = builder.credentials(Credentials::new(smtp.username.clone(), password));
        }
        Ok(SmtpMailer {
            transport: builder.build(),
        })
    }
}

impl MailTransport for SmtpMailer {
    fn send(&self, message: &lettre::Message) -> Result<(), SendError> {
        use lettre::Transport;
        self.transport.send(message).map(|_| ()).map_err(|e| {
            // Permanent answers (5xx) and transient ones (4xx) come from a server that is up;
            // anything else (refused, timed out, TLS) means nothing will get through now.
            let answered = e.is_permanent() || e.is_transient();
            SendError {
                message: e.to_string(),
                unreachable: !answered,
            }
        })
    }
}

/// A test message to check the SMTP settings.
pub fn test_message(config: &Config, recipient: &str) -> Result<lettre::Message, AlertError> {
    let from: Mailbox = config
        .smtp
        .from
        .parse()
        .map_err(|e| AlertError::Smtp(format!("smtp.from: {e}")))?;
    let to: Mailbox = recipient
        .parse()
        .map_err(|e| AlertError::Smtp(format!("recipient {recipient:?}: {e}")))?;
    let now = crate::ingest::now_rfc3339();
    lettre::Message::builder()
        .from(from)
        .to(to)
        .subject("answerfeed test message")
        .message_id(Some(message_id(
            &format!("test.{}", short_hash(&now)),
            &config.smtp,
        )))
        .multipart(MultiPart::alternative_plain_html(
            format!("This is a test message from answerfeed, sent at {now}.\n"),
            format!(
                "<p>This is a test message from <strong>answerfeed</strong>, sent at {}.</p>",
                escape(&now)
            ),
        ))
        .map_err(|e| AlertError::Smtp(e.to_string()))
}

#[cfg(test)]
mod tests;
