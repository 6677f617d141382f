//! The event log: observations in, durable numbered events out. The only source of truth.
//!
//! The events are records in append-only segment files (see `segments`); sled's tree `log`
//! holds the indexes that make appends idempotent and, per append, the batch entry that commits
//! its records. An append writes its records and waits for them to be on disk, then applies the
//! batch entry and its index entries as one atomic `apply_batch`, flushed before `append`
//! returns. Keys:
//!
//! | key                                  | value                                            |
//! |--------------------------------------|--------------------------------------------------|
//! | `B` first seq (u64 big-endian)       | where one append's records are: see `segments`   |
//! | `E` seq (u64 big-endian)             | data dirs from before the segment files: the stored frame, `2` crc32 (BE) of the event JSON, its length (u32 BE), the JSON LZ4-compressed (block format); or `1` crc32 (BE) event JSON |
//! | `Q` question-key                     | every content the question has had, oldest first: |
//! |                                      | seq (BE), hash length (u16 BE), hash; the last is the latest |
//! | `I` identity `\0` content-hash       | seq of the event that first had it (flags, alerts, quarantined records) |
//!
//! Events are never rewritten or deleted. Idempotency and revision detection are point lookups
//! in the `Q` and `I` indexes, never scans, so an append costs the same with ten events in the log
//! or ten million. An answer costs one key, its question's entry (a question has one content, or
//! a few when it is revised), and four bytes of its append's batch entry. One process at a time
//! may open a data dir: a lock file says who has it.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::event::{Envelope, Event, Observation, Payload, QuestionKey, SCHEMA_VERSION};

mod key_filter;
mod segments;
use key_filter::KeyFilter;
use segments::{batch_key, push_record, BatchEntry, Segments, SEGMENT_BYTES};

const EVENT_PREFIX: u8 = b'E';
const IDENTITY_PREFIX: u8 = b'I';
const QUESTION_PREFIX: u8 = b'Q';
/// Data dirs written before the `Q` index kept an `I` key for every answer content too, and an
/// `H` key per question with its latest: `upgrade_question_index` converts them on open.
const HEAD_PREFIX: u8 = b'H';
/// First byte of every stored event value; a different framing gets a different byte, and every
/// framing stays readable. `1`: the event JSON as it is.
const FRAME_V1: u8 = 1;
/// The event JSON LZ4-compressed. Stored events are most of what sled writes, and sled rewrites
/// each value several times as it splits and consolidates leaves, so halving them halves most of
/// the disk writes of an ingest (and the bytes its cache holds).
const FRAME_LZ4: u8 = 2;
/// LZ4 cannot expand data by more than this factor (a match's length grows by at most 255 per
/// byte), so a stored length claiming more is corruption, refused before anything is allocated.
const LZ4_MAX_RATIO: usize = 255;
const TREE: &str = "log";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("data dir {dir} is in use by another answerfeed process{holder} (only one process may open it at a time)")]
    Locked { dir: PathBuf, holder: String },
    #[error("cannot use data dir {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // The sled errors are not `#[source]`s: the messages already say what they are, in words
    // (sled shows a full disk as a `Debug` dump of the OS error).
    #[error("cannot open the log in {dir}: {}", open_problem(.error))]
    Open { dir: PathBuf, error: sled::Error },
    #[error("cannot write to the log in {dir}: {}", storage_problem(.error))]
    Write { dir: PathBuf, error: sled::Error },
    #[error("log storage error: {}", storage_problem(.0))]
    Storage(sled::Error),
    /// Refused before writing anything: the write would leave less than the configured free space.
    #[error(
        "not enough free space for data dir {dir}: {} free, and {doing} needs {} (store.min_free_mb = {} MiB stays free, because sled cannot recover from a write that fills the disk); nothing of it was written and the log is intact; free some space, then run the same command again to resume",
        mib(*available), mib(*needed), min_free_bytes / MIB
    )]
    DiskFull {
        dir: PathBuf,
        available: u64,
        needed: u64,
        min_free_bytes: u64,
        doing: String,
    },
    #[error("event {seq} is corrupt: {problem}")]
    Corrupt { seq: u64, problem: String },
    #[error("event {seq} is {bytes} bytes stored, more than a log record can hold (4 GiB)")]
    TooLarge { seq: u64, bytes: usize },
    #[error("cannot encode event {seq}: {source}")]
    Encode {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
}

impl From<sled::Error> for LogError {
    fn from(error: sled::Error) -> Self {
        LogError::Storage(error)
    }
}

const MIB: u64 = 1024 * 1024;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// What is full, when sled failed because the disk (or the user's quota) is.
fn full_disk(error: &sled::Error) -> Option<&'static str> {
    match error {
        sled::Error::Io(e) => match e.kind() {
            std::io::ErrorKind::StorageFull => Some("no space left on device"),
            std::io::ErrorKind::QuotaExceeded => Some("disk quota exceeded"),
            _ => None,
        },
        _ => None,
    }
}

fn storage_problem(error: &sled::Error) -> String {
    match full_disk(error) {
        Some(what) => format!(
            "{what}; free some space, check the log with 'answerfeed verify', then run the command again"
        ),
        None => error.to_string(),
    }
}

/// sled writes whenever it opens a data dir, so a full disk stops even commands that only read.
fn open_problem(error: &sled::Error) -> String {
    match full_disk(error) {
        Some(what) => format!(
            "{what}: sled writes to the data dir whenever it opens it (a snapshot of its page table), even for a command that only reads; nothing in the log was changed; free some space, then run the command again"
        ),
        None => error.to_string(),
    }
}

/// How many bytes an append may cost on disk, at most, per byte it appends (records and index
/// entries). Measured with batches of 1,000 answers of 1 to 14 KB when the events were in sled,
/// which logs each value and then rewrites the pages that hold it: 2.7 to 4.4 times. The records
/// now go to segment files once, but the views, flags and indexes derived from them still go to
/// sled after them, and sled must never meet a full disk: the reserve stays what it was (a
/// disk-full test found sled failing its writes on a full tmpfs with records counted once).
const WRITE_AMPLIFICATION: u64 = 6;

/// The outcome of appending one observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// A new event, with its sequence number and kind; `revises` when it follows earlier content
    /// of the same question.
    New {
        seq: u64,
        kind: &'static str,
        revises: bool,
    },
    /// Already in the log (same question, same content): nothing appended.
    Known { seq: u64 },
}

/// What one `append` did, observation by observation, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppendReport {
    pub outcomes: Vec<Appended>,
}

impl AppendReport {
    pub fn appended(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Appended::New { .. }))
            .count()
    }

    pub fn known(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Appended::Known { .. }))
            .count()
    }

    pub fn appended_of_kind(&self, kind: &str) -> usize {
        self.outcomes
            .iter()
            .filter(|o| matches!(o, Appended::New { kind: k, .. } if *k == kind))
            .count()
    }
}

/// The latest content of one question, from the `Q` index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuestionHead {
    pub question: QuestionKey,
    pub seq: u64,
    pub content_hash: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked and found good, in order, before the first bad one.
    pub good: u64,
    pub first_bad: Option<BadRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The sequence number of the bad record (or the one expected where there is a gap).
    pub seq: u64,
    pub problem: String,
}

/// Tuning that does not change what is stored.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// sled's page cache, bytes.
    pub cache_bytes: u64,
    /// Free space kept on the data dir's filesystem: an append that would leave less is refused
    /// with [`LogError::DiskFull`] before anything is written. 0 turns the check off.
    pub min_free_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        // sled's default is 1 GiB; a daemon that should sit in tens of MB wants far less.
        StoreOptions {
            cache_bytes: 16 * 1024 * 1024,
            min_free_bytes: 64 * MIB,
        }
    }
}

/// Something that must happen between the appends made through one handle: `before_append`
/// runs before an append takes the writer mutex (it may wait), `appended` once an append's new
/// events are on disk, with those events. The pipeline uses it to keep
/// the diff module just behind a fetch or an ingest, with its flags at fixed places in the log.
pub trait AppendGate: Send + Sync {
    fn before_append(&self);
    /// The new events the append wrote (at least one, in sequence order), as they were encoded:
    /// a follower analyses them without reading them back.
    fn appended(&self, events: Vec<Envelope>);
}

/// The log. Clones share the same open database, lock and writer mutex: the fetcher and the
/// derive thread (whose diff module appends flags) may append from two threads, and sequence
/// numbers are assigned under the mutex. A handle's [`AppendGate`] is its own: clones have none.
pub struct EventLog {
    dir: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    options: StoreOptions,
    min_free_bytes: u64,
    /// Set when sled failed to write: see `Drop`.
    poisoned: Arc<AtomicBool>,
    /// Held for the life of the log: the OS releases it if the process dies.
    _lock: Arc<File>,
    /// Held while an append reads the head and writes after it. It holds the head as of this
    /// process's last append (`None`: not known, read from the tree), since only this process
    /// appends (the lock file) and only under this mutex: reading the head from the tree took a
    /// shared sled lock, which waited while any other thread applied a batch (1.1 s of the
    /// fetching thread's time in a 200,000-answer backfill).
    writer: Arc<std::sync::Mutex<Writer>>,
    /// The last event of the latest append of this process to have returned (0: none yet); see
    /// [`EventLog::acknowledged_head`].
    acknowledged: Arc<AtomicU64>,
    gate: Option<Arc<dyn AppendGate>>,
    /// The files the events are stored in (see `segments`).
    segments: Arc<Segments>,
    /// The last event stored in the tree (`E` keys), as data dirs before the segment files
    /// stored every event; 0 for a log begun since. Those keys are never written again.
    tree_head: u64,
}

/// What the writer mutex guards.
#[derive(Debug, Default)]
struct Writer {
    /// Where the log ends, as of this process's last append (`None`: not known, read from the
    /// tree).
    tail: Option<Tail>,
    /// Which questions the `Q` index may hold.
    questions: KeyFilter,
    /// Which identities the `I` index may hold (records without a question: flags, alerts'
    /// deliveries, quarantined records).
    identities: KeyFilter,
    /// The last append's buffers, for the next: an append of a thousand answers builds a
    /// couple of megabytes of records, and a fresh vector each time grew by doubling, every
    /// page of it new (faulted in, then handed back to the OS after the append).
    records: Vec<u8>,
    scratch: EncodeScratch,
}

/// The most room kept for the next append, for the records and (apart) for the two encode
/// buffers together: an append of unusually large events does not leave its room held.
const RECORDS_KEPT: usize = 8 * 1024 * 1024;

/// Where the log ends: its head, and the end of the last committed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tail {
    head: u64,
    segment: u32,
    end: u64,
}

impl Clone for EventLog {
    fn clone(&self) -> Self {
        EventLog {
            dir: self.dir.clone(),
            db: self.db.clone(),
            tree: self.tree.clone(),
            options: self.options,
            min_free_bytes: self.min_free_bytes,
            poisoned: Arc::clone(&self.poisoned),
            _lock: Arc::clone(&self._lock),
            writer: Arc::clone(&self.writer),
            acknowledged: Arc::clone(&self.acknowledged),
            segments: Arc::clone(&self.segments),
            tree_head: self.tree_head,
            // The gate orders this handle's appends against another thread's; that thread
            // appends through a clone, which must not wait for itself.
            gate: None,
        }
    }
}

impl Drop for EventLog {
    /// After a failed write, sled's own drop (which flushes) can wait forever for the buffer it
    /// could not write (seen with a full disk), and whatever it still holds in memory is exactly
    /// what was reported as not written. So the database is left unflushed: what is on disk is
    /// what the last successful flush put there.
    fn drop(&mut self) {
        if self.poisoned.load(Ordering::SeqCst) {
            std::mem::forget(self.db.clone());
        }
    }
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog").field("dir", &self.dir).finish()
    }
}

impl EventLog {
    /// Opens (creating if needed) the log in `dir`. Fails at once, without waiting, if another
    /// process has the data dir open.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<EventLog, LogError> {
        let io_err = |source| LogError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = Arc::new(take_lock(dir)?);
        EventLog::open_locked(dir, options, lock)
    }

    /// Opens the log in `dir`, whose lock file this process already holds.
    fn open_locked(
        dir: &Path,
        options: StoreOptions,
        lock: Arc<File>,
    ) -> Result<EventLog, LogError> {
        remove_unfinished_snapshots(&dir.join("sled"));
        let config = sled::Config::new()
            .path(dir.join("sled"))
            .cache_capacity(options.cache_bytes)
            // No background flusher: every write that matters is flushed explicitly before it
            // is acknowledged (see `append`), and the flusher's idle-time page GC kept an idle
            // daemon writing to disk for minutes after a backfill.
            .flush_every_ms(None);
        let db = open_sled(&config).map_err(|error| LogError::Open {
            dir: dir.to_path_buf(),
            error,
        })?;
        let tree = db.open_tree(TREE)?;
        let tree_head = match tree.range(event_key(0)..=event_key(u64::MAX)).next_back() {
            None => 0,
            Some(entry) => {
                let (key, _) = entry?;
                decode_event_key(&key).ok_or_else(|| LogError::Corrupt {
                    seq: 0,
                    problem: format!("malformed event key {key:?}"),
                })?
            }
        };
        let log = EventLog {
            dir: dir.to_path_buf(),
            db,
            tree,
            options,
            min_free_bytes: options.min_free_bytes,
            poisoned: Arc::new(AtomicBool::new(false)),
            _lock: lock,
            writer: Arc::new(std::sync::Mutex::new(Writer::default())),
            acknowledged: Arc::new(AtomicU64::new(0)),
            gate: None,
            segments: Arc::new(Segments::new(dir)),
            tree_head,
        };
        log.upgrade_question_index()?;
        Ok(log)
    }

    /// Converts a question index written before the `Q` keys (an `I` key per answer content and
    /// an `H` key per question) into one `Q` key per question. Each question moves in one atomic
    /// batch (its `Q` written, its `I` and `H` keys removed), so an upgrade cut short resumes
    /// from the `H` keys left on the next open; events are not touched.
    fn upgrade_question_index(&self) -> Result<(), LogError> {
        if self.tree.scan_prefix([HEAD_PREFIX]).next().is_none() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut upgraded = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut batch_bytes = 0u64;
            let mut in_batch = 0u64;
            for head in self.tree.scan_prefix([HEAD_PREFIX]).take(1000) {
                let (head_key, _) = head?;
                let question =
                    QuestionKey(String::from_utf8(head_key[1..].to_vec()).map_err(|_| {
                        LogError::Corrupt {
                            seq: 0,
                            problem: "question index key is not UTF-8".to_string(),
                        }
                    })?);
                let prefix = identity_key(&question, "");
                let mut contents = QuestionContents::default();
                for identity in self.tree.scan_prefix(&prefix) {
                    let (key, value) = identity?;
                    let corrupt = || LogError::Corrupt {
                        seq: 0,
                        problem: format!("idempotency index entry for {question} is malformed"),
                    };
                    let hash =
                        String::from_utf8(key[prefix.len()..].to_vec()).map_err(|_| corrupt())?;
                    let seq = decode_u64(&value).ok_or_else(corrupt)?;
                    contents.entries.push((seq, hash));
                    batch_bytes += key.len() as u64;
                    batch.remove(key);
                }
                contents.entries.sort_by_key(|(seq, _)| *seq);
                if !contents.entries.is_empty() {
                    let value = contents.encode();
                    batch_bytes += value.len() as u64;
                    batch.insert(question_key(&question), value);
                }
                batch.remove(head_key);
                in_batch += 1;
            }
            if in_batch == 0 {
                break;
            }
            self.ensure_space(batch_bytes.saturating_mul(WRITE_AMPLIFICATION), || {
                "upgrading the log's question index".to_string()
            })?;
            self.tree
                .apply_batch(batch)
                .map_err(|e| self.write_failed(e))?;
            upgraded += in_batch;
        }
        self.db.flush().map_err(|e| self.write_failed(e))?;
        tracing::info!(
            questions = upgraded,
            took_ms = started.elapsed().as_millis() as u64,
            "log: question index upgraded to one key per question"
        );
        Ok(())
    }

    /// Sets (or, with `None`, removes) this handle's [`AppendGate`].
    pub fn set_gate(&mut self, gate: Option<Arc<dyn AppendGate>>) {
        self.gate = gate;
    }

    /// A handle that appends in this one's place, through the same [`AppendGate`] (a clone has
    /// none): for running this handle's appends on another thread, one at a time, while this
    /// one does not append.
    pub fn stand_in(&self) -> EventLog {
        let mut handle = self.clone();
        handle.gate = self.gate.clone();
        handle
    }

    /// Refuses a write of about `bytes` that would leave less than the configured free space on
    /// the data dir's filesystem. sled 0.34 does not survive a write that hits a full disk: it can
    /// keep part of an atomic batch and lose the rest, or hang, so it must never get there.
    fn ensure_space(&self, bytes: u64, doing: impl FnOnce() -> String) -> Result<(), LogError> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let available = match fs2::available_space(&self.dir) {
            Ok(available) => available,
            Err(e) => {
                // Not knowing is no reason to stop: the write goes ahead as it did before.
                tracing::debug!(dir = %self.dir.display(), error = %e, "free space unknown");
                return Ok(());
            }
        };
        let needed = self.min_free_bytes.saturating_add(bytes);
        tracing::debug!(dir = %self.dir.display(), available, needed, "free space");
        if available < needed {
            return Err(LogError::DiskFull {
                dir: self.dir.clone(),
                available,
                needed,
                min_free_bytes: self.min_free_bytes,
                doing: doing(),
            });
        }
        Ok(())
    }

    /// A sled write failed: this handle must not flush again (see `Drop`).
    fn write_failed(&self, error: sled::Error) -> LogError {
        self.poisoned.store(true, Ordering::SeqCst);
        LogError::Write {
            dir: self.dir.clone(),
            error,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying database, for stages that keep their own trees beside the log (projections).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The sequence number of the last event, 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        Ok(self.tail()?.head)
    }

    /// The head as of the latest append of this process to have returned, or [`EventLog::head`]
    /// before any has. An append's events are in the log (its head moved) for as long as its
    /// flush takes before it returns and hands them on: a reader that follows the appends (the
    /// views' thread) waits for them up to here rather than read them back from the log, which
    /// it did for 56,000 events of a 200,000-answer backfill.
    pub fn acknowledged_head(&self) -> Result<u64, LogError> {
        match self.acknowledged.load(Ordering::Acquire) {
            0 => self.head(),
            head => Ok(head),
        }
    }

    /// The head and the end of the last committed record, from the last batch entry.
    fn tail(&self) -> Result<Tail, LogError> {
        Ok(match self.last_batch()? {
            None => Tail {
                head: self.tree_head,
                segment: 0,
                end: 0,
            },
            Some(entry) => Tail {
                head: entry.last(),
                segment: entry.segment,
                end: entry.end(),
            },
        })
    }

    fn last_batch(&self) -> Result<Option<BatchEntry>, LogError> {
        let last = self
            .tree
            .range(batch_key(0)..=batch_key(u64::MAX))
            .next_back();
        let Some(entry) = last else {
            return Ok(None);
        };
        let (key, value) = entry?;
        BatchEntry::decode(&key, &value)
            .map(Some)
            .map_err(|problem| LogError::Corrupt { seq: 0, problem })
    }

    /// Writes an append's records where the log ends (dropping whatever an append cut short left
    /// there when `tail` was read from the tree rather than known), on disk before it returns.
    fn write_records(
        &self,
        tail: Tail,
        known: bool,
        first: u64,
        records: &[u8],
        lens: Vec<u32>,
    ) -> Result<BatchEntry, LogError> {
        let (segment, offset) = if tail.end >= SEGMENT_BYTES {
            (tail.segment + 1, 0)
        } else {
            (tail.segment, tail.end)
        };
        let failed = |source: std::io::Error| LogError::Write {
            dir: self.dir.clone(),
            error: sled::Error::Io(source),
        };
        if !known {
            if let Some(entry) = self.last_batch()? {
                self.segments
                    .check_committed(&entry)
                    .map_err(|problem| LogError::Corrupt {
                        seq: entry.first,
                        problem: format!("{problem}; nothing appended (run 'answerfeed verify')"),
                    })?;
            }
            self.segments
                .truncate_after(tail.segment, tail.end)
                .map_err(failed)?;
        }
        self.segments
            .write(segment, offset, records)
            .map_err(failed)?;
        Ok(BatchEntry {
            first,
            segment,
            offset,
            lens,
        })
    }

    /// [`EventLog::append`], also returning the new envelopes as they were written, in log
    /// order: for a caller that hands them on rather than have them read back from the log.
    pub fn append_returning(
        &mut self,
        observations: Vec<Observation>,
        recorded_at: &str,
    ) -> Result<(AppendReport, Vec<Envelope>), LogError> {
        self.append_through_gate(observations, recorded_at, true)
    }

    /// Appends the observations that are not already in the log, atomically, and returns only
    /// once they are on disk. `recorded_at` is the RFC 3339 time written into the new envelopes.
    pub fn append(
        &mut self,
        observations: Vec<Observation>,
        recorded_at: &str,
    ) -> Result<AppendReport, LogError> {
        self.append_through_gate(observations, recorded_at, false)
            .map(|(report, _)| report)
    }

    /// The append, waited for and handed to this handle's gate if it has one; the new envelopes
    /// are also returned when `keep` (otherwise none are).
    fn append_through_gate(
        &mut self,
        observations: Vec<Observation>,
        recorded_at: &str,
        keep: bool,
    ) -> Result<(AppendReport, Vec<Envelope>), LogError> {
        let gate = self.gate.clone();
        if gate.is_none() && !keep {
            let report = self.append_batch(observations, recorded_at, None)?;
            return Ok((report, Vec::new()));
        }
        if let Some(gate) = &gate {
            gate.before_append();
        }
        let mut written = Vec::new();
        let report = self.append_batch(observations, recorded_at, Some(&mut written))?;
        if let Some(gate) = gate.filter(|_| !written.is_empty()) {
            gate.appended(if keep {
                written.clone()
            } else {
                std::mem::take(&mut written)
            });
        }
        Ok((report, written))
    }

    /// `written`, when given, receives the new envelopes once they are on disk.
    fn append_batch(
        &mut self,
        observations: Vec<Observation>,
        recorded_at: &str,
        written: Option<&mut Vec<Envelope>>,
    ) -> Result<AppendReport, LogError> {
        let writer = Arc::clone(&self.writer);
        let mut writing = lock_writer(&writer);
        let (tail, known) = match writing.tail {
            Some(tail) => (tail, true),
            None => (self.tail()?, false),
        };
        let head = tail.head;
        let mut next = head + 1;
        let mut records = std::mem::take(&mut writing.records);
        records.clear();
        let mut scratch = std::mem::take(&mut writing.scratch);
        let mut lens = Vec::new();
        let mut batch = sled::Batch::default();
        let mut report = AppendReport::default();
        // Bytes of keys and values in the batch, for the free-space check.
        let mut batch_bytes = 0u64;
        // Index entries read or written earlier in this same batch (those written are not yet
        // visible in the tree); a question's entry is written once, with all its new contents.
        let mut identities: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut new_envelopes = Vec::new();
        let mut questions: HashMap<QuestionKey, (QuestionContents, bool)> = HashMap::new();

        for observation in observations {
            let (question, hash) = observation.identity();
            let seq = next;
            let event = match observation.payload {
                Payload::Answer(record) => {
                    let (contents, changed) = match questions.entry(question.clone()) {
                        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                        std::collections::hash_map::Entry::Vacant(entry) => {
                            if writing.questions.wants_build() {
                                self.build_filter(&mut writing.questions, QUESTION_PREFIX, head)?;
                            }
                            let stored = if writing.questions.may_hold(question.0.as_bytes()) {
                                self.question_contents(&question)?
                            } else {
                                None
                            };
                            entry.insert((stored.unwrap_or_default(), false))
                        }
                    };
                    if let Some(seq) = contents.seq_of(&hash) {
                        report.outcomes.push(Appended::Known { seq });
                        continue;
                    }
                    let previous = contents.latest().cloned();
                    contents.entries.push((seq, hash.clone()));
                    *changed = true;
                    Event::for_answer(question, record, previous)
                }
                payload => {
                    let identity = identity_key(&question, &hash);
                    let known = match identities.get(&identity) {
                        Some(seq) => Some(*seq),
                        None => {
                            if writing.identities.wants_build() {
                                self.build_filter(&mut writing.identities, IDENTITY_PREFIX, head)?;
                            }
                            if writing.identities.may_hold(&identity[1..]) {
                                self.tree
                                    .get(&identity)?
                                    .map(|v| decode_u64(&v).unwrap_or(0))
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(seq) = known {
                        report.outcomes.push(Appended::Known { seq });
                        continue;
                    }
                    batch_bytes += 2 * identity.len() as u64;
                    batch.insert(identity.clone(), seq.to_be_bytes().to_vec());
                    identities.insert(identity, seq);
                    match payload {
                        Payload::Unparseable { reason, raw } => quarantined(reason, raw),
                        Payload::Flag(flag) => Event::FlagRaised { flag: *flag },
                        Payload::AlertSent(alert) => Event::AlertSent { alert },
                        Payload::Answer(_) => unreachable!("answers are matched above"),
                    }
                }
            };
            let kind = event.kind();
            let revises = event.previous_seq().is_some();
            let envelope = Envelope {
                schema: SCHEMA_VERSION,
                seq,
                recorded_at: recorded_at.to_string(),
                source: observation.source,
                content_hash: hash,
                event,
            };
            encode_envelope(&envelope, &mut scratch)?;
            lens.push(push_record(&mut records, seq, &scratch.framed).ok_or(
                LogError::TooLarge {
                    seq,
                    bytes: scratch.framed.len(),
                },
            )?);
            if written.is_some() {
                new_envelopes.push(envelope);
            }
            report.outcomes.push(Appended::New { seq, kind, revises });
            next += 1;
        }
        if scratch.json.capacity() + scratch.framed.capacity() <= RECORDS_KEPT {
            writing.scratch = scratch;
        }
        // After the loop, which may have built the filter from the tree without this batch's
        // keys; before the batch is applied: should it fail, a false positive, never a miss.
        for identity in identities.keys() {
            writing.identities.insert(&identity[1..]);
        }
        for (question, (contents, changed)) in questions {
            if changed {
                // Before the batch is applied: should it fail, a false positive, never a miss.
                writing.questions.insert(question.0.as_bytes());
                let value = contents.encode();
                batch_bytes += (value.len() + question.0.len()) as u64;
                batch.insert(question_key(&question), value);
            }
        }

        if report.appended() > 0 {
            let appended = report.appended();
            batch_bytes += (records.len() + 13 + 4 * lens.len()) as u64;
            self.ensure_space(batch_bytes.saturating_mul(WRITE_AMPLIFICATION), || {
                let first = next - appended as u64;
                match appended {
                    1 => format!("appending 1 event (event {first})"),
                    n => format!("appending {n} events (events {first}-{})", next - 1),
                }
            })?;
            // Not known while the batch may be half-way (an error returns, a panic leaves the
            // mutex poisoned): the next append reads it again.
            writing.tail = None;
            // The records are on disk before the batch entry that commits them is written.
            let entry = self.write_records(tail, known, head + 1, &records, lens)?;
            let end = entry.end();
            batch.insert(&batch_key(entry.first)[..], entry.encode());
            self.tree
                .apply_batch(batch)
                .map_err(|e| self.write_failed(e))?;
            writing.tail = Some(Tail {
                head: next - 1,
                segment: entry.segment,
                end,
            });
            // Nothing is reported as appended until it is on disk (sled otherwise syncs every 500 ms).
            self.db.flush().map_err(|e| self.write_failed(e))?;
            self.acknowledged.fetch_max(next - 1, Ordering::Release);
            if let Some(written) = written {
                *written = new_envelopes;
            }
        }
        if records.capacity() <= RECORDS_KEPT {
            writing.records = records;
        }
        tracing::debug!(
            appended = report.appended(),
            known = report.known(),
            head = next - 1,
            "log append"
        );
        Ok(report)
    }

    /// Visits the stored frames of the events `from..=upto`, at most `limit` of them, in order:
    /// those a data dir from before the segment files holds in the tree, then those in segment
    /// files, one read per append's records. A record the index and the segment disagree about
    /// is [`LogError::Corrupt`]; so is whatever `visit` returns, which stops the walk. Returns how
    /// many were visited.
    fn visit_stored(
        &self,
        from: u64,
        upto: u64,
        limit: usize,
        mut visit: impl FnMut(u64, &[u8]) -> Result<(), LogError>,
    ) -> Result<usize, LogError> {
        let limit = limit.max(1);
        let mut visited = 0usize;
        let mut next = from.max(1);
        if next > upto {
            return Ok(0);
        }
        if next <= self.tree_head {
            for entry in self
                .tree
                .range(event_key(next)..=event_key(upto.min(self.tree_head)))
            {
                let (key, value) = entry?;
                let seq = decode_event_key(&key).ok_or_else(|| LogError::Corrupt {
                    seq: next,
                    problem: format!("malformed event key {key:?}"),
                })?;
                visit(seq, &value)?;
                visited += 1;
                next = seq + 1;
                if visited == limit {
                    return Ok(visited);
                }
            }
            next = next.max(self.tree_head + 1);
        }
        // The entry holding `next`, then those after it.
        let holding = self.tree.range(batch_key(0)..=batch_key(next)).next_back();
        let after = self
            .tree
            .range(batch_key(next.saturating_add(1))..=batch_key(upto));
        for item in holding.into_iter().chain(after) {
            if visited == limit || next > upto {
                break;
            }
            let (key, value) = item?;
            let entry = BatchEntry::decode(&key, &value)
                .map_err(|problem| LogError::Corrupt { seq: next, problem })?;
            if entry.last() < next {
                continue;
            }
            let start = entry.first.max(next);
            if start > upto {
                break;
            }
            let end = entry
                .last()
                .min(upto)
                .min(start.saturating_add((limit - visited) as u64 - 1));
            let (offset, len) = entry.span(start, end);
            let bytes = self
                .segments
                .read(entry.segment, offset, len)
                .map_err(|problem| LogError::Corrupt {
                    seq: start,
                    problem,
                })?;
            let mut failed = None;
            segments::records(&bytes, start, entry.lens_of(start, end), |seq, stored| {
                let result = stored
                    .map_err(|problem| LogError::Corrupt { seq, problem })
                    .and_then(|stored| visit(seq, stored));
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            visited += (end - start + 1) as usize;
            next = end + 1;
        }
        Ok(visited)
    }

    /// The event with this sequence number.
    pub fn get(&self, seq: u64) -> Result<Option<Envelope>, LogError> {
        let mut found = None;
        self.visit_stored(seq, seq, 1, |at, stored| {
            if at == seq {
                found = Some(decode_envelope(seq, stored)?);
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Events from `from` (inclusive) on, in order, read lazily from disk a few hundred at a
    /// time. An event that does not decode is an error in its place; the walk goes on after it,
    /// unless the stored records themselves are damaged.
    pub fn events_from(&self, from: u64) -> impl Iterator<Item = Result<Envelope, LogError>> {
        let log = self.clone();
        let mut next = from;
        let mut buffer = std::collections::VecDeque::new();
        let mut done = false;
        std::iter::from_fn(move || {
            if buffer.is_empty() && !done {
                let read = log.visit_stored(next, u64::MAX, 256, |seq, stored| {
                    buffer.push_back(decode_envelope(seq, stored));
                    next = seq + 1;
                    Ok(())
                });
                match read {
                    Ok(0) => done = true,
                    Ok(_) => {}
                    Err(e) => {
                        done = true;
                        buffer.push_back(Err(e));
                    }
                }
            }
            buffer.pop_front()
        })
    }

    /// Up to `limit` events from `from` (inclusive) to `upto` (inclusive), decoded once: the
    /// log's consumers share one read of each batch.
    pub fn read_batch(
        &self,
        from: u64,
        upto: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let mut events = Vec::new();
        self.visit_stored(from, upto, limit, |seq, stored| {
            events.push(decode_envelope(seq, stored)?);
            Ok(())
        })?;
        Ok(events)
    }

    /// Hands `apply` the events `from..=upto` in batches of up to `limit`, in order, while the
    /// next batch is read and decoded on a second thread (decoding is a good part of a replay's
    /// cost). Stops at the first error, from the read or from `apply`.
    pub fn for_each_batch<E: From<LogError>>(
        &self,
        from: u64,
        upto: u64,
        limit: usize,
        mut apply: impl FnMut(Vec<Envelope>) -> Result<(), E>,
    ) -> Result<(), E> {
        if from > upto {
            return Ok(());
        }
        if upto - from < limit as u64 {
            // One batch at most (the diff module following appends reads one page at a time):
            // no reader thread to start.
            let batch = self.read_batch(from, upto, limit)?;
            if !batch.is_empty() {
                apply(batch)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            // Two batches ahead at most: memory stays a few batches whatever the log's size.
            let (batches, incoming) =
                std::sync::mpsc::sync_channel::<Result<Vec<Envelope>, LogError>>(2);
            let reader = std::thread::Builder::new()
                .name("log-reader".into())
                .spawn_scoped(scope, move || {
                    let mut next = from;
                    while next <= upto {
                        let batch = self.read_batch(next, upto, limit);
                        let last = match &batch {
                            Ok(b) => b.last().map(|e| e.seq),
                            Err(_) => None,
                        };
                        let stop = last.is_none();
                        // The receiver gone means `apply` failed: nothing more to read.
                        if batches.send(batch).is_err() || stop {
                            return;
                        }
                        next = last.map_or(u64::MAX, |l| l + 1);
                    }
                });
            match reader {
                Ok(_) => {
                    for batch in incoming {
                        let batch = batch?;
                        if batch.is_empty() {
                            break;
                        }
                        apply(batch)?;
                    }
                    Ok(())
                }
                // No thread to be had: read in turn.
                Err(_) => {
                    let mut next = from;
                    while next <= upto {
                        let batch = self.read_batch(next, upto, limit)?;
                        let Some(last) = batch.last().map(|e| e.seq) else {
                            break;
                        };
                        apply(batch)?;
                        next = last + 1;
                    }
                    Ok(())
                }
            }
        })
    }

    /// Every content recorded for a question, oldest first.
    fn question_contents(
        &self,
        question: &QuestionKey,
    ) -> Result<Option<QuestionContents>, LogError> {
        match self.tree.get(question_key(question))? {
            None => Ok(None),
            Some(value) => QuestionContents::decode(question, &value).map(Some),
        }
    }

    /// Builds one of the writer's filters from every key of the index under `prefix` (under
    /// the writer mutex, so no append adds one meanwhile).
    fn build_filter(&self, filter: &mut KeyFilter, prefix: u8, head: u64) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        // Each key was written with an event: no more keys than events.
        filter.start(usize::try_from(head).unwrap_or(usize::MAX));
        let mut keys = 0u64;
        for entry in self.tree.scan_prefix([prefix]) {
            match entry {
                Ok((key, _)) => filter.add(&key[1..]),
                Err(e) => {
                    filter.reset();
                    return Err(e.into());
                }
            }
            keys += 1;
        }
        tracing::debug!(
            index = %char::from(prefix),
            keys,
            took_ms = started.elapsed().as_millis() as u64,
            "log: index filter built"
        );
        Ok(())
    }

    /// The latest content recorded for a question.
    pub fn question_head(&self, question: &QuestionKey) -> Result<Option<QuestionHead>, LogError> {
        Ok(self
            .question_contents(question)?
            .and_then(|contents| contents.head(question.clone())))
    }

    /// Every question's latest content, in question-key order, read lazily from the index.
    pub fn question_heads(&self) -> impl Iterator<Item = Result<QuestionHead, LogError>> {
        self.tree
            .scan_prefix([QUESTION_PREFIX])
            .filter_map(|entry| {
                let (key, value) = match entry {
                    Ok(entry) => entry,
                    Err(e) => return Some(Err(e.into())),
                };
                let question = match String::from_utf8(key[1..].to_vec()) {
                    Ok(question) => QuestionKey(question),
                    Err(_) => {
                        return Some(Err(LogError::Corrupt {
                            seq: 0,
                            problem: "question index key is not UTF-8".to_string(),
                        }))
                    }
                };
                match QuestionContents::decode(&question, &value) {
                    Ok(contents) => contents.head(question).map(Ok),
                    Err(e) => Some(Err(e)),
                }
            })
    }

    /// Walks the whole log in order: every event must decode, match its checksum, carry its own
    /// sequence number, follow its predecessor without a gap, and be findable through the
    /// idempotency index. Stops at the first bad record.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let mut expected = 1u64;
        loop {
            let walked = self.visit_stored(expected, u64::MAX, 1000, |seq, stored| {
                let bad = |problem: String| LogError::Corrupt {
                    seq: expected,
                    problem,
                };
                if seq != expected {
                    return Err(bad(format!(
                        "missing: the log jumps from event {} to {seq}",
                        expected - 1
                    )));
                }
                let envelope = decode_envelope(seq, stored)?;
                let indexed = match envelope.event.question() {
                    Some(question) => self
                        .question_contents(question)?
                        .and_then(|c| c.seq_of(&envelope.content_hash)),
                    None => self
                        .tree
                        .get(identity_key(
                            &envelope.event.identity_question(),
                            &envelope.content_hash,
                        ))?
                        .and_then(|v| decode_u64(&v)),
                };
                if indexed != Some(seq) {
                    return Err(bad(format!(
                        "the idempotency index does not point at this event (points at {indexed:?})"
                    )));
                }
                expected += 1;
                Ok(())
            });
            match walked {
                Ok(0) => break,
                Ok(_) => {}
                Err(LogError::Corrupt { problem, .. }) => {
                    return Ok(VerifyReport {
                        good: expected - 1,
                        first_bad: Some(BadRecord {
                            seq: expected,
                            problem,
                        }),
                    })
                }
                Err(other) => return Err(other),
            }
        }
        Ok(VerifyReport {
            good: expected - 1,
            first_bad: None,
        })
    }

    /// Writes everything to disk now (appends already do; this is for clean shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.db.flush().map_err(|e| self.write_failed(e))?;
        Ok(())
    }

    /// Copies events `1..=upto` of `source` into this (empty) log, each event's JSON byte for
    /// byte with its checksum, and rebuilds the indexes from them. Events an older version stored
    /// uncompressed (frame 1) are compressed on the way, so `compact` and `backup` shrink an old
    /// data dir; the JSON, and so every read, stays the same. The copy of an append-only log up
    /// to a head read beforehand is consistent even while the source is being appended to.
    pub fn copy_events_from(&mut self, source: &EventLog, upto: u64) -> Result<u64, LogError> {
        // Held throughout: no append between, and the next one reads the head the copy left.
        let writer = Arc::clone(&self.writer);
        let mut writing = lock_writer(&writer);
        writing.tail = None;
        writing.questions.reset();
        writing.identities.reset();
        let mut tail = self.tail()?;
        if tail.head != 0 {
            return Err(LogError::Corrupt {
                seq: 0,
                problem: "copy target is not empty".to_string(),
            });
        }
        let mut known = false;
        let mut copied = 0u64;
        let mut next = 1u64;
        while next <= upto {
            let mut records = Vec::new();
            // Runs of consecutive events (a gap in the source starts another), as (first, lens).
            let mut runs: Vec<(u64, Vec<u32>)> = Vec::new();
            let mut batch = sled::Batch::default();
            let mut batch_bytes = 0u64;
            let mut questions: HashMap<QuestionKey, QuestionContents> = HashMap::new();
            let visited = source.visit_stored(next, upto, 1000, |seq, value| {
                let envelope = decode_envelope(seq, value)?;
                // Checked just above: the frame is whole and the JSON matches its checksum.
                let stored = match value.split_first() {
                    Some((&FRAME_V1, [_, _, _, _, json @ ..])) => frame_event(json),
                    _ => value.to_vec(),
                };
                let whole = push_record(&mut records, seq, &stored).ok_or(LogError::TooLarge {
                    seq,
                    bytes: stored.len(),
                })?;
                match runs.last_mut() {
                    Some((first, lens)) if *first + lens.len() as u64 == seq => lens.push(whole),
                    _ => runs.push((seq, vec![whole])),
                }
                match envelope.event.question() {
                    Some(question) => {
                        let contents = match questions.entry(question.clone()) {
                            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                            std::collections::hash_map::Entry::Vacant(entry) => {
                                entry.insert(self.question_contents(question)?.unwrap_or_default())
                            }
                        };
                        if contents.seq_of(&envelope.content_hash).is_none() {
                            contents.entries.push((seq, envelope.content_hash));
                        }
                    }
                    None => {
                        let key = identity_key(
                            &envelope.event.identity_question(),
                            &envelope.content_hash,
                        );
                        batch_bytes += key.len() as u64 + 8;
                        batch.insert(key, seq.to_be_bytes().to_vec());
                    }
                }
                next = seq + 1;
                Ok(())
            })?;
            if visited == 0 {
                break;
            }
            for (question, contents) in questions.drain() {
                let value = contents.encode();
                batch_bytes += (value.len() + question.0.len()) as u64;
                batch.insert(question_key(&question), value);
            }
            batch_bytes += records.len() as u64;
            batch_bytes += runs
                .iter()
                .map(|(_, l)| 13 + 4 * l.len() as u64)
                .sum::<u64>();
            self.ensure_space(batch_bytes.saturating_mul(WRITE_AMPLIFICATION), || {
                format!("copying {visited} events (up to event {})", next - 1)
            })?;
            let mut entries = Vec::with_capacity(runs.len());
            for (first, lens) in runs {
                // One write for all the runs: they follow each other in the same segment.
                let entry = if entries.is_empty() {
                    self.write_records(tail, known, first, &records, lens)?
                } else {
                    let previous: &BatchEntry =
                        entries.last().ok_or_else(|| LogError::Corrupt {
                            seq: first,
                            problem: "no run before it".to_string(),
                        })?;
                    BatchEntry {
                        first,
                        segment: previous.segment,
                        offset: previous.end(),
                        lens,
                    }
                };
                entries.push(entry);
            }
            for entry in &entries {
                batch.insert(&batch_key(entry.first)[..], entry.encode());
            }
            self.tree
                .apply_batch(batch)
                .map_err(|e| self.write_failed(e))?;
            if let Some(last) = entries.last() {
                tail = Tail {
                    head: last.last(),
                    segment: last.segment,
                    end: last.end(),
                };
                known = true;
            }
            copied += visited as u64;
        }
        self.db.flush().map_err(|e| self.write_failed(e))?;
        // Known only once this copy wrote: otherwise the next append checks and truncates.
        writing.tail = known.then_some(tail);
        Ok(copied)
    }

    /// Every stored frame, by seq (tests that alter the log behind its back).
    #[cfg(test)]
    pub(crate) fn stored_for_test(&self) -> Vec<(u64, Vec<u8>)> {
        let mut all = Vec::new();
        self.visit_stored(1, u64::MAX, usize::MAX, |seq, stored| {
            all.push((seq, stored.to_vec()));
            Ok(())
        })
        .unwrap();
        all
    }

    /// Replaces the stored events with `events` (seq, stored frame), as damage would: written to
    /// a new segment, one batch entry per run of consecutive seqs.
    #[cfg(test)]
    pub(crate) fn replace_stored_for_test(&self, events: Vec<(u64, Vec<u8>)>) {
        lock_writer(&self.writer).tail = None;
        let tail = self.tail().unwrap();
        for item in self.tree.scan_prefix([segments::BATCH_PREFIX]) {
            self.tree.remove(item.unwrap().0).unwrap();
        }
        let segment = tail.segment + 1;
        let mut records = Vec::new();
        let mut runs: Vec<BatchEntry> = Vec::new();
        for (seq, stored) in events {
            let offset = records.len() as u64;
            let whole = push_record(&mut records, seq, &stored).unwrap();
            match runs.last_mut() {
                Some(run) if run.last() + 1 == seq => run.lens.push(whole),
                _ => runs.push(BatchEntry {
                    first: seq,
                    segment,
                    offset,
                    lens: vec![whole],
                }),
            }
        }
        self.segments.write(segment, 0, &records).unwrap();
        for run in runs {
            self.tree
                .insert(batch_key(run.first), run.encode())
                .unwrap();
        }
    }

    /// Removes events, as damage would (for tests of what reads a damaged log).
    #[cfg(test)]
    pub(crate) fn remove_events_for_test(&self, seqs: std::ops::RangeInclusive<u64>) {
        let kept = self
            .stored_for_test()
            .into_iter()
            .filter(|(seq, _)| !seqs.contains(seq))
            .collect();
        self.replace_stored_for_test(kept);
    }

    /// Moves every event into the tree, where data dirs before the segment files kept them (the
    /// log reads them so once opened again).
    #[cfg(test)]
    pub(crate) fn store_events_in_tree_for_test(&self) {
        for (seq, stored) in self.stored_for_test() {
            self.tree.insert(event_key(seq), stored).unwrap();
        }
        for item in self.tree.scan_prefix([segments::BATCH_PREFIX]) {
            self.tree.remove(item.unwrap().0).unwrap();
        }
        self.db.flush().unwrap();
        std::fs::remove_dir_all(self.dir.join("events")).unwrap();
    }

    /// Raw access to the stored bytes of an event, for tests that simulate corruption.
    #[doc(hidden)]
    pub fn raw_tree(&self) -> &sled::Tree {
        &self.tree
    }
}

fn quarantined(reason: String, raw: Vec<u8>) -> Event {
    let (raw_text, raw_base64) = match String::from_utf8(raw) {
        Ok(text) => (text, None),
        Err(e) => {
            use base64::Engine;
            let bytes = e.into_bytes();
            (
                String::from_utf8_lossy(&bytes).into_owned(),
                Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            )
        }
    };
    Event::RecordQuarantined {
        reason,
        raw: raw_text,
        raw_base64,
    }
}

/// The daemon's log: open while a cycle, a delivery or a query uses it, closed in between. An
/// open sled holds memory in proportion to the log (its table of page locations and the pages
/// read since: about 60 MB at 200,000 answers), which a daemon waiting for its next cycle has no
/// use for; closed, the process keeps about 15-30 MB. The data dir's lock file stays held while
/// the log is closed, so no other process takes the data dir between cycles.
///
/// Closing keeps a memo of the log (`M`, computed from it just before): nothing changes a
/// closed log, so what was read then still holds, and readers that only need that (the ops
/// endpoint's status) need not open it. Memo and state change under one lock, so a memo is
/// never served for a log that has been opened since.
pub struct ClosableLog<M> {
    slot: std::sync::Mutex<Slot<M>>,
}

enum Slot<M> {
    Open(EventLog),
    Closed {
        dir: PathBuf,
        options: StoreOptions,
        lock: Arc<File>,
        memo: M,
    },
}

/// What [`ClosableLog::memo_or_handle`] gives.
pub enum MemoOrHandle<M> {
    /// The log is closed: its memo.
    Memo(M),
    /// The log is open: a handle on it.
    Handle(EventLog),
}

impl<M: Clone> ClosableLog<M> {
    pub fn new(log: EventLog) -> ClosableLog<M> {
        ClosableLog {
            slot: std::sync::Mutex::new(Slot::Open(log)),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot<M>> {
        // A panic elsewhere while the slot was held leaves it whole: each change is one assignment.
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle on the log, opening it again if it is closed.
    pub fn handle(&self) -> Result<EventLog, LogError> {
        let mut slot = self.slot();
        let log = match &*slot {
            Slot::Open(log) => return Ok(log.clone()),
            Slot::Closed {
                dir, options, lock, ..
            } => {
                let started = std::time::Instant::now();
                let log = EventLog::open_locked(dir, *options, Arc::clone(lock))?;
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "log opened again"
                );
                log
            }
        };
        *slot = Slot::Open(log.clone());
        Ok(log)
    }

    /// The memo if the log is closed, else a handle on it; never opens it.
    pub fn memo_or_handle(&self) -> MemoOrHandle<M> {
        match &*self.slot() {
            Slot::Open(log) => MemoOrHandle::Handle(log.clone()),
            Slot::Closed { memo, .. } => MemoOrHandle::Memo(memo.clone()),
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(&*self.slot(), Slot::Open(_))
    }

    /// Flushes and closes the log, keeping `memo` of it, unless a handle on it is still in use
    /// (a query being answered) or a write has failed (sled could not be closed cleanly: see
    /// `Drop`). Returns whether the log is closed now.
    pub fn close_if_unused<E: From<LogError>>(
        &self,
        memo: impl FnOnce(&EventLog) -> Result<M, E>,
    ) -> Result<bool, E> {
        let mut slot = self.slot();
        let Slot::Open(log) = &*slot else {
            return Ok(true);
        };
        // Every handle shares the writer mutex: one owner means no handle but the slot's.
        if Arc::strong_count(&log.writer) > 1 || log.poisoned.load(Ordering::SeqCst) {
            return Ok(false);
        }
        let memo = memo(log)?;
        log.flush()?;
        let closed = Slot::Closed {
            dir: log.dir.clone(),
            options: log.options,
            lock: Arc::clone(&log._lock),
            memo,
        };
        // Dropping the last handle closes sled (its threads finish with the files shortly
        // after, which `open_sled` waits for).
        *slot = closed;
        release_deferred_frees();
        Ok(true)
    }
}

/// sled frees much of its memory (pages read, IO buffers, its table of page locations) through
/// crossbeam-epoch: a free is deferred until every thread has moved past the epoch in which the
/// memory was last visible, and epochs only move when a thread pins one, a few deferred batches
/// collected per pin. Once the log is closed nothing pins, so those frees would wait until it is
/// opened again (about 9 MB at 200,000 answers, by heaptrack). Pinning and flushing here runs
/// them: 2,000 rounds take about 2 ms and leave nothing of sled's behind but its global metrics.
fn release_deferred_frees() {
    for _ in 0..2000 {
        crossbeam_epoch::pin().flush();
    }
}

/// How long `open` waits for sled's own lock on its files.
const SLED_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens sled, waiting a little for its lock. Our lock file says no other answerfeed process has
/// the data dir, but sled's lock on its own file can outlive a handle this process has just
/// dropped, for as long as sled's IO threads finish with it (sled's own tests block on that
/// lock for the same reason); a reopen at that moment would fail for nothing.
/// The writer mutex, held. A panic elsewhere while holding it leaves nothing half-done (a batch
/// is applied atomically or not at all, and the head it holds was unset before), so a poisoned
/// mutex is still usable.
fn lock_writer(writer: &std::sync::Mutex<Writer>) -> std::sync::MutexGuard<'_, Writer> {
    writer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open_sled(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + SLED_LOCK_WAIT;
    loop {
        match config.open() {
            Err(sled::Error::Io(e))
                if e.to_string().starts_with("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Removes `snap.*.generating` files from the sled dir. sled writes a snapshot there, syncs it,
/// then renames it; one that is left (the disk filled up or the process died while writing it) is
/// incomplete by construction, yet sled 0.34 picks it as the newest snapshot on the next open and
/// refuses the whole data dir as corrupt. Without it, sled recovers from the previous snapshot
/// or the log itself, as after any crash.
fn remove_unfinished_snapshots(sled_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(sled_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => {
                    tracing::info!(file = %entry.path().display(), "removed an unfinished sled snapshot")
                }
                Err(e) => {
                    tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an unfinished sled snapshot")
                }
            }
        }
    }
}

fn take_lock(dir: &Path) -> Result<File, LogError> {
    let path = dir.join("answerfeed.lock");
    let io_err = |source| LogError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LogError::Locked {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                },
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
    }
    // The pid is only a hint for the error message above; the lock itself is what protects.
    file.set_len(0).map_err(io_err)?;
    file.rewind().map_err(io_err)?;
    write!(file, "{}", std::process::id()).map_err(io_err)?;
    Ok(file)
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = EVENT_PREFIX;
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn decode_event_key(key: &[u8]) -> Option<u64> {
    if key.len() != 9 || key[0] != EVENT_PREFIX {
        return None;
    }
    decode_u64(&key[1..])
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    bytes.get(..8)?.try_into().ok().map(u64::from_be_bytes)
}

fn identity_key(question: &QuestionKey, hash: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + question.0.len() + hash.len());
    key.push(IDENTITY_PREFIX);
    key.extend_from_slice(question.0.as_bytes());
    key.push(0);
    key.extend_from_slice(hash.as_bytes());
    key
}

fn question_key(question: &QuestionKey) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + question.0.len());
    key.push(QUESTION_PREFIX);
    key.extend_from_slice(question.0.as_bytes());
    key
}

/// Every content a question has had, oldest first, with the event that first had each: the
/// value of its `Q` key. The last is the question's latest content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct QuestionContents {
    entries: Vec<(u64, String)>,
}

impl QuestionContents {
    fn seq_of(&self, hash: &str) -> Option<u64> {
        self.entries
            .iter()
            .find(|(_, h)| h == hash)
            .map(|(seq, _)| *seq)
    }

    fn latest(&self) -> Option<&(u64, String)> {
        self.entries.last()
    }

    fn head(&self, question: QuestionKey) -> Option<QuestionHead> {
        self.latest().map(|(seq, hash)| QuestionHead {
            question,
            seq: *seq,
            content_hash: hash.clone(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(self.entries.iter().map(|(_, h)| 10 + h.len()).sum());
        for (seq, hash) in &self.entries {
            // Content hashes are 64 hex digits; a longer one would be cut at 65,535 bytes and
            // no longer match, which costs a duplicate event, never a lost one.
            let hash = &hash.as_bytes()[..hash.len().min(u16::MAX as usize)];
            value.extend_from_slice(&seq.to_be_bytes());
            value.extend_from_slice(&(hash.len() as u16).to_be_bytes());
            value.extend_from_slice(hash);
        }
        value
    }

    fn decode(question: &QuestionKey, mut value: &[u8]) -> Result<QuestionContents, LogError> {
        let corrupt = || LogError::Corrupt {
            seq: 0,
            problem: format!("question index entry for {question} is malformed"),
        };
        let mut entries = Vec::with_capacity(1);
        while !value.is_empty() {
            let seq = decode_u64(value).ok_or_else(corrupt)?;
            let len = value
                .get(8..10)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .ok_or_else(corrupt)?;
            let hash = value.get(10..10 + len).ok_or_else(corrupt)?;
            let hash = std::str::from_utf8(hash).map_err(|_| corrupt())?;
            entries.push((seq, hash.to_string()));
            value = &value[10 + len..];
        }
        if entries.is_empty() {
            return Err(corrupt());
        }
        Ok(QuestionContents { entries })
    }
}

/// The buffers an append encodes its events in, one event after another. Fresh vectors an
/// event (the JSON grown from 128 bytes by doubling, then the frame) were a tenth of the
/// appending thread's time in a backfill, in reallocation and the page faults of new pages.
#[derive(Debug, Default)]
struct EncodeScratch {
    json: Vec<u8>,
    /// The stored value of the last event encoded.
    framed: Vec<u8>,
}

/// Encodes `envelope` into `scratch.framed` (its stored value, as [`frame_event`] gives it).
fn encode_envelope(envelope: &Envelope, scratch: &mut EncodeScratch) -> Result<(), LogError> {
    scratch.json.clear();
    serde_json::to_writer(&mut scratch.json, envelope).map_err(|source| LogError::Encode {
        seq: envelope.seq,
        source,
    })?;
    frame_event_into(&scratch.json, &mut scratch.framed);
    Ok(())
}

/// The stored value for an event's JSON: compressed, unless that does not make it smaller (or
/// it is too long for the length field), when it is kept as it is.
pub(crate) fn frame_event(json: &[u8]) -> Vec<u8> {
    let mut value = Vec::new();
    frame_event_into(json, &mut value);
    value
}

/// [`frame_event`] into `value`, which is cleared first (and keeps its room for the next).
fn frame_event_into(json: &[u8], value: &mut Vec<u8>) {
    value.clear();
    let crc = crc32fast::hash(json).to_be_bytes();
    if let Ok(length) = u32::try_from(json.len()) {
        let header = 1 + crc.len() + 4;
        value.resize(
            header + lz4_flex::block::get_maximum_output_size(json.len()),
            0,
        );
        if let Ok(written) = lz4_flex::block::compress_into(json, &mut value[header..]) {
            if written < json.len() {
                value[0] = FRAME_LZ4;
                value[1..5].copy_from_slice(&crc);
                value[5..9].copy_from_slice(&length.to_be_bytes());
                value.truncate(header + written);
                return;
            }
        }
        value.clear();
    }
    value.reserve(5 + json.len());
    value.push(FRAME_V1);
    value.extend_from_slice(&crc);
    value.extend_from_slice(json);
}

/// Checks the frame and checksum of a stored event and decodes it.
pub fn decode_envelope(seq: u64, value: &[u8]) -> Result<Envelope, LogError> {
    let corrupt = |problem: String| LogError::Corrupt { seq, problem };
    let too_short = || corrupt(format!("stored value is {} bytes long", value.len()));
    let (frame, stored_crc, body) = match value {
        [frame, a, b, c, d, body @ ..] => (*frame, u32::from_be_bytes([*a, *b, *c, *d]), body),
        _ => return Err(too_short()),
    };
    let decompressed;
    let json = match frame {
        FRAME_V1 => body,
        FRAME_LZ4 => {
            let [a, b, c, d, block @ ..] = body else {
                return Err(too_short());
            };
            let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            if length > block.len().saturating_mul(LZ4_MAX_RATIO) {
                return Err(corrupt(format!(
                    "says it decompresses to {length} bytes, more than LZ4 can give from {} bytes",
                    block.len()
                )));
            }
            let mut json = vec![0; length];
            let written = lz4_flex::block::decompress_into(block, &mut json)
                .map_err(|e| corrupt(format!("does not decompress: {e}")))?;
            if written != length {
                return Err(corrupt(format!(
                    "decompresses to {written} bytes, not the {length} it says"
                )));
            }
            decompressed = json;
            &decompressed[..]
        }
        other => return Err(corrupt(format!("unknown frame version {other}"))),
    };
    let actual_crc = crc32fast::hash(json);
    if stored_crc != actual_crc {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored_crc:08x}, computed {actual_crc:08x})"
        )));
    }
    let envelope: Envelope =
        serde_json::from_slice(json).map_err(|e| corrupt(format!("does not decode: {e}")))?;
    if envelope.seq != seq {
        return Err(corrupt(format!(
            "stored under {seq} but says it is event {}",
            envelope.seq
        )));
    }
    Ok(envelope)
}

#[cfg(test)]
pub(crate) mod tests;
