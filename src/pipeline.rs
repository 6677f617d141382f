//! What runs after new events reach the log: the diff module (which may append flags), the
//! projections and the alert outbox (which queues emails; sending them is `alert::deliver`, run
//! by the daemon and `alerts send`). `derive` runs the diff module on its own thread beside the
//! views and the outbox, then lets those apply the flags; `Follower` keeps all three up with the
//! log while a fetch or an ingest appends. Each stage resumes from its own
//! checkpoint, so a crash anywhere is caught up by the next run.

use crate::alert::{self, AlertError};
use crate::config::Config;
use std::sync::Arc;

use crate::diff::{self, DiffConsumer, DiffError, DiffReport, DiffSettings};
use crate::event::Envelope;
use crate::log::{AppendGate, EventLog, LogError};
use crate::project::{self, ProjectError, ProjectReport};

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("diff: {0}")]
    Diff(#[from] DiffError),
    #[error("projections: {0}")]
    Project(#[from] ProjectError),
    #[error("alerts: {0}")]
    Alert(#[from] AlertError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("the derive thread stopped: {0}")]
    Worker(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeriveReport {
    pub diff: DiffReport,
    pub project: ProjectReport,
    pub alerts: alert::DeriveReport,
}

impl DeriveReport {
    /// Adds a later run's figures to these.
    fn absorb(&mut self, later: DeriveReport) {
        self.diff.events_read += later.diff.events_read;
        self.diff.flags_raised += later.diff.flags_raised;
        self.diff.checkpoint = self.diff.checkpoint.max(later.diff.checkpoint);
        self.project.events_applied += later.project.events_applied;
        self.project.checkpoint = self.project.checkpoint.max(later.project.checkpoint);
        self.alerts.events_read += later.alerts.events_read;
        self.alerts.queued += later.alerts.queued;
        self.alerts.started += later.alerts.started;
    }
}

/// Derives while the caller appends (a fetch cycle, an ingest), so that the work uses both
/// cores: the views and the outbox follow the log on one thread, and the diff module follows the
/// caller's appends on another. [`Follower::finish`] then derives what is left.
///
/// The diff module appends flags, and where they land must not depend on how the threads were
/// timed (the same input gives the same log, sequence numbers included). So it follows through
/// the caller's handle's [`AppendGate`]: each append is handed to the diff module, which analyses
/// it while the caller fetches and writes the next. The appends are taken in groups of at least
/// [`FLAG_GROUP_EVENTS`] new events (a group ends with the append that reaches it); a group's
/// flags are appended together right after the append that follows the group, and the append
/// after that waits until they are in. The log reads: group 1, the next append, group 1's flags,
/// ... One flag append per group rather than per append: each append waits for its flush.
/// The consumers and their checkpoints are [`derive`]'s, so a crash at any point leaves the
/// state it would leave there.
pub struct Follower {
    gate: Arc<FollowerGate>,
}

/// The new events a group of followed appends holds at least before its flags go in (a fetch
/// appends a few pages, at least 250 answers, at a time, an ingest a thousand). It bounds how
/// far the appends run ahead of the diff module, so the decoded events held between the two:
/// once the fetcher appended a few pages at a time (README, stop 24), a 200,000-answer
/// `fetch --once` peaked at 144-152 MB resident with groups of 1,000 and 141-149 MB with 500,
/// in the same times within the noise.
pub const FLAG_GROUP_EVENTS: usize = 500;

/// How often the derive thread looks for new events when nothing wakes it.
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Follower {
    /// Starts following the appends made through `log` (this handle, not its clones).
    pub fn start(log: &mut EventLog, config: &Config) -> Follower {
        Follower::start_grouped(log, config, FLAG_GROUP_EVENTS)
    }

    /// [`Follower::start`] with groups of at least `group_events` new events (tests use small
    /// groups, to see many of them).
    ///
    /// When the diff module is already at the log's head, the threads are only started by the
    /// first append: a cycle that finds nothing new (most of a daemon's) then starts no thread
    /// and builds no gazetteer, and [`Follower::finish`] derives in one pass. With a backlog they
    /// start at once, to catch up while the first page is requested.
    pub fn start_grouped(log: &mut EventLog, config: &Config, group_events: usize) -> Follower {
        let gate = Arc::new(FollowerGate {
            log: log.clone(),
            config: config.clone(),
            group_events,
            state: std::sync::Mutex::new(Following::Waiting),
        });
        if !matches!(diff::up_to_date(log), Ok(Some(_))) {
            gate.diff_gate();
        }
        log.set_gate(Some(Arc::clone(&gate) as Arc<dyn AppendGate>));
        Follower { gate }
    }

    /// Stops following, derives up to the head, and returns what all runs did. The handle given
    /// to `start` keeps a gate that no longer waits (the next `start` replaces it).
    pub fn finish(self) -> Result<DeriveReport, PipelineError> {
        match self.gate.close() {
            Some(threads) => threads.finish(),
            // No append started the threads, or they could not be started: derive it all now.
            None => derive(&mut self.gate.log.clone(), &self.gate.config),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // Dropped without `finish` (an error path): stop the threads and wait for them, so that
        // they never outlive the caller's use of the data dir.
        drop(self.gate.close());
    }
}

/// The two threads of a [`Follower`]: the diff module, following the appends through `gate`,
/// and the views and the outbox, following the log.
struct Threads {
    worker: Option<std::thread::JoinHandle<Result<DeriveReport, PipelineError>>>,
    gate: Arc<DiffGate>,
    /// The appends the views' thread has not derived yet.
    recent: Arc<RecentAppends>,
    diff_worker: Option<std::thread::JoinHandle<Result<DiffReport, PipelineError>>>,
}

impl Threads {
    /// `None` when a thread could not be started (none is left running).
    fn spawn(log: &EventLog, config: &Config, group_events: usize) -> Option<Threads> {
        let gate = Arc::new(DiffGate::new(group_events));
        let recent = Arc::new(RecentAppends::default());
        let diff_log = log.clone();
        let diff_gate = Arc::clone(&gate);
        let diff_recent = Arc::clone(&recent);
        let settings = DiffSettings::new(&config.diff, &config.trackers);
        let Ok(diff_worker) = std::thread::Builder::new()
            .name("diff".into())
            .spawn(move || follow_appends(diff_log, &settings, diff_gate, &diff_recent))
        else {
            return None;
        };
        let mut thread_log = log.clone();
        let thread_config = config.clone();
        let thread_recent = Arc::clone(&recent);
        let spawned = std::thread::Builder::new()
            .name("derive".into())
            .spawn(move || {
                let mut total = DeriveReport::default();
                loop {
                    if thread_recent.wait(FOLLOW_INTERVAL) {
                        total.absorb(derive(&mut thread_log, &thread_config)?);
                        return Ok(total);
                    }
                    total.absorb(derive_views_with(
                        &thread_log,
                        &thread_config,
                        Some(&thread_recent),
                        false,
                    )?);
                }
            });
        let Ok(worker) = spawned else {
            gate.stop();
            let _ = diff_worker.join();
            return None;
        };
        Some(Threads {
            worker: Some(worker),
            gate,
            recent,
            diff_worker: Some(diff_worker),
        })
    }

    fn finish(mut self) -> Result<DeriveReport, PipelineError> {
        // The diff module first: the final derive runs it again, from its checkpoint.
        let diff = self.stop_diff();
        self.recent.stop();
        let mut report = match self.worker.take() {
            Some(worker) => worker
                .join()
                .map_err(|_| PipelineError::Worker("it panicked".into()))??,
            None => DeriveReport::default(),
        };
        let diff = diff?;
        report.diff.events_read += diff.events_read;
        report.diff.flags_raised += diff.flags_raised;
        report.diff.checkpoint = report.diff.checkpoint.max(diff.checkpoint);
        Ok(report)
    }

    fn stop_diff(&mut self) -> Result<DiffReport, PipelineError> {
        self.gate.stop();
        match self.diff_worker.take() {
            Some(worker) => worker
                .join()
                .map_err(|_| PipelineError::Worker("the diff thread panicked".into()))?,
            None => Ok(DiffReport::default()),
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        let _ = self.stop_diff();
        self.recent.stop();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The gate a [`Follower`] puts on the caller's handle: it starts the threads (at once, or at
/// the first append) and hands each append on to the diff module's [`DiffGate`].
struct FollowerGate {
    log: EventLog,
    config: Config,
    group_events: usize,
    state: std::sync::Mutex<Following>,
}

enum Following {
    Waiting,
    Running(Threads),
    /// The threads could not be started: the appends go ahead and `finish` derives.
    Failed,
    /// Finished: later appends through the handle start nothing.
    Closed,
}

impl FollowerGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Following> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The diff module's gate, the threads started if they are waiting.
    fn diff_gate(&self) -> Option<Arc<DiffGate>> {
        let mut state = self.lock();
        if matches!(*state, Following::Waiting) {
            *state = match Threads::spawn(&self.log, &self.config, self.group_events) {
                Some(threads) => Following::Running(threads),
                None => {
                    tracing::warn!("no derive thread; deriving after the append instead");
                    Following::Failed
                }
            };
        }
        match &*state {
            Following::Running(threads) => Some(Arc::clone(&threads.gate)),
            _ => None,
        }
    }

    /// No more appends: the threads, if they were started.
    fn close(&self) -> Option<Threads> {
        match std::mem::replace(&mut *self.lock(), Following::Closed) {
            Following::Running(threads) => Some(threads),
            _ => None,
        }
    }
}

impl AppendGate for FollowerGate {
    fn before_append(&self) {
        // The gate is cloned out first: waiting for the diff module holds no lock of ours.
        if let Some(gate) = self.diff_gate() {
            gate.before_append();
        }
    }

    fn appended(&self, events: Vec<Envelope>) {
        let followers = match &*self.lock() {
            Following::Running(threads) => {
                Some((Arc::clone(&threads.gate), Arc::clone(&threads.recent)))
            }
            _ => None,
        };
        if let Some((gate, recent)) = followers {
            // One copy for both threads: each reads it, neither decodes it from the log.
            let events = Arc::new(events);
            recent.push(Arc::clone(&events));
            gate.appended(events);
        }
    }
}

/// Where the diff module following the appends is, shared by the appending thread and the diff
/// thread.
struct DiffGate {
    state: std::sync::Mutex<GateState>,
    changed: std::sync::Condvar,
}

/// One append followed by the diff module.
struct Append {
    /// Its last event.
    last: u64,
    /// How many new events it wrote.
    count: usize,
    /// Those events, until the diff thread takes them.
    events: Option<Written>,
}

#[derive(Default)]
struct GateState {
    /// The diff module is still reading what the log held when the follower started.
    catching_up: bool,
    /// The appends whose flags are not in the log yet, oldest first.
    appends: std::collections::VecDeque<Append>,
    /// New events a group of appends holds at least.
    group_events: usize,
    /// No more appends: the diff thread finishes what it was given and stops (or has stopped,
    /// and nothing waits for it).
    stopped: bool,
}

impl DiffGate {
    fn new(group_events: usize) -> DiffGate {
        DiffGate {
            state: std::sync::Mutex::new(GateState {
                catching_up: true,
                group_events: group_events.max(1),
                ..GateState::default()
            }),
            changed: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        // The state is plain values, valid whatever a panicking holder was doing.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait_while(
        &self,
        mut blocked: impl FnMut(&GateState) -> bool,
    ) -> std::sync::MutexGuard<'_, GateState> {
        let mut state = self.lock();
        while blocked(&state) {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state
    }

    fn update(&self, change: impl FnOnce(&mut GateState)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }

    fn stop(&self) {
        self.update(|state| state.stopped = true);
    }

    /// The append at `index` in the queue (the last event it wrote, and its events, taken from
    /// the queue), once it has been made; `None` once stopped without it.
    fn take_append(&self, index: usize) -> Option<(u64, Option<Written>)> {
        let mut state = self.wait_while(|s| s.appends.len() <= index && !s.stopped);
        state
            .appends
            .get_mut(index)
            .map(|append| (append.last, append.events.take()))
    }

    /// Waits for the place where the flags of the group ending with the append at `index` go:
    /// after the append that follows it, or at the end.
    fn wait_for_place(&self, index: usize) {
        drop(self.wait_while(|s| s.appends.len() < index + 2 && !s.stopped));
    }

    /// The flags of the first `count` appends are in the log.
    fn committed(&self, count: usize) {
        self.update(|state| {
            let count = count.min(state.appends.len());
            state.appends.drain(..count);
        });
    }
}

impl GateState {
    /// The index of the append that ends the oldest group, once it has been made.
    fn group_end(&self) -> Option<usize> {
        let mut events = 0;
        self.appends.iter().position(|append| {
            events += append.count;
            events >= self.group_events
        })
    }
}

impl DiffGate {
    /// An append waits while a group's flags are due before it (their place, the append after
    /// the group, has been made) and are not in the log.
    fn before_append(&self) {
        drop(self.wait_while(|s| {
            !s.stopped
                && (s.catching_up || s.group_end().is_some_and(|end| s.appends.len() > end + 1))
        }));
    }

    fn appended(&self, events: Written) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        self.update(|state| {
            // Stopped, nothing takes from the queue any more: kept, the envelopes of every later
            // append would pile up until the follower finishes (a whole backfill after a failed
            // diff thread).
            if !state.stopped {
                state.appends.push_back(Append {
                    last,
                    count: events.len(),
                    events: Some(events),
                });
            }
        });
    }
}

/// The diff thread of a [`Follower`]. First it reads what the log held when it started (the
/// appends wait). Then it analyses each append's events as the append is made; at the end of a
/// group, once the append after it is in the log (or the follower is stopping), it appends the
/// group's flags and commits, and only then may the append after that go ahead. So the log is
/// the same whatever the timing. However the thread ends (an error, a panic), the gate is
/// stopped so that no append waits for it.
fn follow_appends(
    mut log: EventLog,
    settings: &DiffSettings,
    gate: Arc<DiffGate>,
    recent: &RecentAppends,
) -> Result<DiffReport, PipelineError> {
    struct StopOnExit(Arc<DiffGate>);
    impl Drop for StopOnExit {
        fn drop(&mut self) {
            self.0.stop();
        }
    }
    let _stop_on_exit = StopOnExit(Arc::clone(&gate));
    let mut consumer = DiffConsumer::open(&log, settings)?;
    let started_at = consumer.checkpoint();
    let reader = log.clone();
    let backlog = log.head()?;
    reader.for_each_batch(consumer.checkpoint() + 1, backlog, BATCH, |batch| {
        consumer.apply(&mut log, &batch)
    })?;
    gate.update(|state| state.catching_up = false);
    // Appends of the queue analysed and not committed.
    let mut analysed = 0;
    loop {
        let Some((last, written)) = gate.take_append(analysed) else {
            // Stopped: what is left is the last group, its flags at the end.
            consumer.commit_then(&mut log, |flags| recent.push(Arc::new(flags)))?;
            gate.committed(analysed);
            break;
        };
        // One append's events (after any flags placed just before them), added to its group:
        // preparing in two steps is preparing the two together.
        let (before, written) =
            appended_events(&reader, consumer.analysed_to() + 1, last, written)?;
        consumer.prepare(&log, &before)?;
        if let Some(written) = written {
            consumer.prepare(&log, &written)?;
        }
        analysed += 1;
        if gate.lock().group_end() == Some(analysed - 1) {
            gate.wait_for_place(analysed - 1);
            // The appends held back wait for the flags only, not for the state written after
            // them (a crash between the two re-derives the same flags, which append nothing).
            // The flags go to the views first, so that they are held in log order: the next
            // append waits for `committed`. Read back from the log, their 60,000 events in a
            // 200,000-answer backfill were a tenth of the views' thread's time.
            consumer.commit_then(&mut log, |flags| {
                recent.push(Arc::new(flags));
                gate.committed(analysed);
            })?;
            analysed = 0;
        }
    }
    let wrote = consumer.checkpoint() != started_at;
    let report = consumer.finish();
    if wrote {
        log.flush()?;
    }
    Ok(report)
}

/// The events `from..=last` of the log, given `written`, the events of the append that ends at
/// `last`, as the appending thread encoded them: only what comes before those (the flags the
/// diff module put in just before the append, if any) is read from the log, and returned
/// first, then `written`. Decoding the events read back was an eighth of the diff thread's
/// time in a backfill. What was encoded decodes to the same values (serde_json parses floats
/// exactly: `float_roundtrip`), so the flags are those a read would give; anything unexpected
/// is read from the log.
fn appended_events(
    reader: &EventLog,
    from: u64,
    last: u64,
    written: Option<Written>,
) -> Result<(Vec<Envelope>, Option<Written>), LogError> {
    match written {
        Some(written)
            if spans(&written).is_some_and(|(first, end)| first >= from && end == last) =>
        {
            let first = written.first().map_or(from, |e| e.seq);
            let before = if first > from {
                reader.read_batch(from, first - 1, usize::MAX)?
            } else {
                Vec::new()
            };
            Ok((before, Some(written)))
        }
        _ => Ok((reader.read_batch(from, last, usize::MAX)?, None)),
    }
}

/// An append's events, shared by the threads that follow it.
type Written = Arc<Vec<Envelope>>;

/// The first and last seq of `events` when they are consecutive (as one append writes them).
fn spans(events: &[Envelope]) -> Option<(u64, u64)> {
    let (first, last) = (events.first()?.seq, events.last()?.seq);
    let consecutive = events.windows(2).all(|w| w[1].seq == w[0].seq + 1);
    consecutive.then_some((first, last))
}

/// The appends a [`Follower`]'s views thread has not derived yet, as the appending thread
/// encoded them, so that it reads from the log only what is not here (the diff module's flags,
/// or appends it fell too far behind to find): reading and decoding the events was over a
/// fifth of that thread's time in a backfill. At most [`RECENT_EVENTS`] events are held: the
/// oldest appends go first.
///
/// It also wakes the views' thread: once [`WAKE_EVENTS`] events have been handed over, rather
/// than at its next look ([`FOLLOW_INTERVAL`]), so that it works while the appending or the
/// diff thread waits for the other rather than in bursts beside both.
#[derive(Default)]
struct RecentAppends {
    held: std::sync::Mutex<Held>,
    arrived: std::sync::Condvar,
}

#[derive(Default)]
struct Held {
    /// Each append's first and last seq (checked consecutive when it came), and its events.
    appends: std::collections::VecDeque<(u64, u64, Written)>,
    /// Events in `appends`.
    count: usize,
    /// Events handed over since the views' thread last woke.
    unseen: usize,
    /// No more appends: the views' thread derives what is left and ends.
    stopped: bool,
    /// Events of `from..=upto` ranges not held here, read back from the log instead.
    read_back: u64,
}

/// New events that wake the views' thread before its next look (about five pages of a fetch).
/// At 200 the views wrote 1.5% more in a 200,000-answer backfill (smaller batches) for the same
/// peak memory (130-135 MB, against 135-142 MB waking only every `FOLLOW_INTERVAL`).
const WAKE_EVENTS: usize = 500;

/// Events [`RecentAppends`] holds at most, and the most the views' thread applies at a time.
/// Over a backfill of 200,000 answers the views trailed the log's head by about 300 events
/// (median), 1,100 (90th percentile) and 1,600 at most; what they fall further behind on is
/// read from the log. A held event costs its decoded size (a few KB): twice this bound peaked
/// 4-6 MB higher in a 200,000-answer `fetch --once`.
const RECENT_EVENTS: usize = 1024;

impl RecentAppends {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Plain values, valid whatever a panicking holder was doing.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, events: Written) {
        let Some((first, last)) = spans(&events) else {
            return;
        };
        let mut held = self.lock();
        held.unseen += events.len();
        let wake = held.unseen >= WAKE_EVENTS;
        held.count += events.len();
        held.appends.push_back((first, last, events));
        while held.count > RECENT_EVENTS {
            let Some((_, _, oldest)) = held.appends.pop_front() else {
                break;
            };
            held.count -= oldest.len();
        }
        drop(held);
        if wake {
            self.arrived.notify_all();
        }
    }

    /// Waits until [`WAKE_EVENTS`] events have been handed over since the last wait, `interval`
    /// has passed, or the follower stops; returns whether it stopped.
    fn wait(&self, interval: std::time::Duration) -> bool {
        let held = self.lock();
        let (mut held, _) = self
            .arrived
            .wait_timeout_while(held, interval, |h| !h.stopped && h.unseen < WAKE_EVENTS)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        held.unseen = 0;
        held.stopped
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.arrived.notify_all();
    }

    /// The events `from..=upto` (all in the log), in order: the appends held here, the rest
    /// read from the log. Appends that end before `from` are let go.
    fn events(&self, log: &EventLog, from: u64, upto: u64) -> Result<Vec<EventsPart>, LogError> {
        let held: Vec<(u64, u64, Written)> = {
            let mut held = self.lock();
            while let Some((_, last, _)) = held.appends.front() {
                if *last >= from {
                    break;
                }
                if let Some((_, _, gone)) = held.appends.pop_front() {
                    held.count -= gone.len();
                }
            }
            held.appends.iter().cloned().collect()
        };
        let mut parts = Vec::new();
        let mut next = from;
        for (first, last, append) in held {
            // Held appends are in log order; one past `upto` was made after the head was read.
            if last > upto {
                break;
            }
            if first > next {
                parts.push(EventsPart::Read(log.read_batch(
                    next,
                    first - 1,
                    usize::MAX,
                )?));
            }
            next = next.max(last + 1);
            parts.push(EventsPart::Held(append));
        }
        if next <= upto {
            parts.push(EventsPart::Read(log.read_batch(next, upto, usize::MAX)?));
        }
        let read: usize = parts
            .iter()
            .map(|part| match part {
                EventsPart::Read(events) => events.len(),
                EventsPart::Held(_) => 0,
            })
            .sum();
        if read > 0 {
            self.lock().read_back += read as u64;
            tracing::debug!(
                from,
                upto,
                read,
                "views: events not handed over read from the log"
            );
        }
        Ok(parts)
    }
}

/// Events for the views: held from an append, or read from the log.
enum EventsPart {
    Held(Written),
    Read(Vec<Envelope>),
}

impl EventsPart {
    fn events(&self) -> &[Envelope] {
        match self {
            EventsPart::Held(events) => events,
            EventsPart::Read(events) => events,
        }
    }
}

/// Brings the views and the outbox (not the flags) up to the log's head: the part of
/// [`derive`] that never appends to the log. `finish` also records the start of new
/// subscriptions (a write even when no event is new).
fn derive_views(
    log: &EventLog,
    config: &Config,
    finish: bool,
) -> Result<DeriveReport, PipelineError> {
    derive_views_with(log, config, None, finish)
}

/// [`derive_views`], taking the events from `recent` where it holds them (a [`Follower`]'s
/// views thread).
fn derive_views_with(
    log: &EventLog,
    config: &Config,
    recent: Option<&RecentAppends>,
    finish: bool,
) -> Result<DeriveReport, PipelineError> {
    let mut project = project::ProjectConsumer::open(log, &config.topics)?;
    let mut alerts = alert::AlertConsumer::open(log, config)?;
    loop {
        // Following the appends: those that have not returned yet are handed over when they do.
        let head = match recent {
            Some(_) => log.acknowledged_head()?,
            None => log.head()?,
        };
        let from = project.checkpoint().min(alerts.checkpoint()) + 1;
        if from > head {
            break;
        }
        let mut apply = |batch: &[&Envelope]| -> Result<(), PipelineError> {
            project.apply(batch)?;
            alerts.apply(log, batch)?;
            Ok(())
        };
        // Up to RECENT_EVENTS at a time, each in one write per consumer. Behind by more, the
        // oldest are read from the log here, not ahead on a reader thread: the views only fall
        // behind when both cores are busy, and what a reader holds would come on top of the
        // held appends.
        let applied = match recent {
            Some(recent) => {
                let upto = head.min(from.saturating_add(RECENT_EVENTS as u64 - 1));
                let parts = recent.events(log, from, upto)?;
                let batch: Vec<&Envelope> = parts.iter().flat_map(|p| p.events()).collect();
                if !batch.is_empty() {
                    apply(&batch)?;
                }
                !batch.is_empty()
            }
            None => false,
        };
        // Not following appends, or nothing in `from..=upto` (a gap in the sequence, which
        // `verify` reports): the log, read on from the next event there is.
        if !applied {
            log.for_each_batch(from, head, BATCH, |batch| {
                apply(&batch.iter().collect::<Vec<_>>())
            })?;
        }
    }
    let alerts = if finish {
        alerts.finish()?
    } else {
        alerts.report()
    };
    Ok(DeriveReport {
        diff: diff::DiffReport::default(),
        project: project.finish(),
        alerts,
    })
}

/// Events read from the log per batch.
const BATCH: usize = 1000;

/// Brings flags, views and the outbox up to the log's head.
///
/// The diff module runs on a thread of its own while the views and the outbox follow the log
/// on this one; then they apply the flags it appended. Each consumer keeps its own checkpoint,
/// so a crash anywhere leaves each to resume where it stopped. Only the diff module appends, so
/// the log it leaves is the same however the threads were timed, and the views, replayed in log
/// order, are what `rebuild` gives.
pub fn derive(log: &mut EventLog, config: &Config) -> Result<DeriveReport, PipelineError> {
    let report = match diff::up_to_date(log)? {
        // No flags to derive (an idle cycle): the views and the outbox in one pass, no thread.
        Some(checkpoint) => {
            let mut report = derive_views(log, config, true)?;
            report.diff.checkpoint = checkpoint;
            report
        }
        None => derive_beside_diff(log, config)?,
    };
    let wrote =
        report.project.events_applied + report.alerts.events_read + report.alerts.started > 0;
    // sled rewrites the tail of its current segment on every flush, even with nothing new: an
    // idle run must not flush. (The diff module flushes its own writes.)
    if wrote {
        log.flush()?;
    }
    Ok(report)
}

/// The diff module on a thread of its own while the views and the outbox follow the log on
/// this one; then those apply the flags it appended.
fn derive_beside_diff(log: &mut EventLog, config: &Config) -> Result<DeriveReport, PipelineError> {
    let settings = DiffSettings::new(&config.diff, &config.trackers);
    let diff_log = log.clone();
    let (diff, views) = std::thread::scope(|scope| {
        let diff_thread = std::thread::Builder::new()
            .name("diff".into())
            .spawn_scoped(scope, || {
                let mut diff_log = diff_log;
                diff::run(&mut diff_log, &settings)
            });
        match diff_thread {
            Ok(thread) => {
                let views = derive_views(log, config, false);
                let diff = thread
                    .join()
                    .map_err(|_| PipelineError::Worker("the diff thread panicked".into()))
                    .and_then(|d| d.map_err(PipelineError::from));
                (diff, views)
            }
            // No thread to be had: one after the other.
            Err(_) => (
                diff::run(&mut log.clone(), &settings).map_err(PipelineError::from),
                Ok(DeriveReport::default()),
            ),
        }
    });
    let mut report = views?;
    report.diff = diff?;
    // The flags the diff module appended, and anything that came meanwhile.
    report.absorb(derive_views(log, config, true)?);
    Ok(report)
}

/// `answerfeed rebuild`: flags first (the views include them), then the views dropped and
/// replayed, then the other consumers brought up to date. The views' incremental path is not
/// run first, so damaged views are replaced rather than read. Returns the views' digest before
/// and after.
pub fn rebuild_views(
    log: &mut EventLog,
    config: &Config,
) -> Result<(String, String, ProjectReport), PipelineError> {
    diff::run(log, &DiffSettings::new(&config.diff, &config.trackers))?;
    let rebuilt = project::rebuild(log, &config.topics)?;
    derive(log, config)?;
    Ok(rebuilt)
}

#[cfg(test)]
mod tests;
