//! The fetcher: the Parliament written questions API in, observations appended to the log out.
//!
//! One *cycle* reads every answer in a date range, from the watermark minus an overlap window up
//! to today, in windows of `window_days`, oldest first. Each window is read twice, by answer date
//! and by correction date, page by page; records the list endpoint cut short are completed by id
//! before they are logged. The pages' observations are appended a few pages at a time, on a
//! blocking thread while the next pages are requested and decoded (see [`Appender`]); a page is
//! recorded as read only once its records are in the log. The watermark is stored beside the log
//! and advanced only after a window's pages are all in the log, so a failed or interrupted cycle
//! resumes where it stopped, and idempotency makes the re-read free of duplicates.
//!
//! Paging is by `skip`/`take`, which shifts when answers arrive or disappear while we page. Each
//! page overlaps the previous by one record; if that record is not where it should be, or the
//! total changed, the window is swept again (bounded), so nothing is skipped.

pub mod client;

use std::collections::HashSet;
use std::io::IsTerminal;

use chrono::{Days, NaiveDate};
use futures_util::{stream, StreamExt};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::event::{Observation, Payload, Source};
use crate::log::{AppendReport, Appended, EventLog, LogError};
use crate::parse::api::ApiItem;
use crate::shutdown::Shutdown;

pub use client::{ApiClient, DateField, ListQuery};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad base URL {url:?}: {why}")]
    BadBaseUrl { url: String, why: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: malformed page: {why}")]
    MalformedPage { url: String, why: String },
    #[error("{url}: the record by id is still cut short or unusable: {why}")]
    Incomplete { url: String, why: String },
    #[error("interrupted by shutdown")]
    Interrupted,
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("fetch state: {0}")]
    State(String),
}

const STATE_TREE: &str = "fetch_state";
/// Sweeps of one window before accepting that the source keeps changing under us.
const MAX_SWEEPS: u32 = 3;
/// List pages handled before, by the window's last day and the page URL: a digest of the body,
/// its total, and each record's id and digest of its raw JSON. A page that comes back byte for
/// byte is not decoded at all, and a record that comes back byte for byte on any page of the
/// same window is counted known without parsing: re-reading the overlap window with nothing new
/// costs requests and hashing only. A cache beside the log, written after the page's records are
/// in the log (so losing it costs a parse, never an answer); records the list cut short carry no
/// digest and a page holding one is never skipped whole, since a change to their tail shows only
/// in the record by id. Entries of windows before a cycle's start are dropped at its end, so the
/// tree holds about the overlap window.
const PAGES_TREE: &str = "fetch_pages";
/// Part of every record digest: bumping it has every record read again (e.g. should what a
/// record's identity is made of ever change; parser improvements alone do not need it, since the
/// content hash covers the record as received, so re-reading it would append nothing).
const RECORD_DIGEST_VERSION: u64 = 1;

/// What is stored per source: how far it is complete, and the last cycle's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceState {
    /// Every answer up to and including this date has been read (modulo late corrections, which
    /// the overlap window catches).
    #[serde(default)]
    pub watermark: Option<NaiveDate>,
    #[serde(default)]
    pub last_cycle: Option<CycleReport>,
}

/// Options for one cycle.
#[derive(Debug, Clone, Default)]
pub struct CycleOptions {
    /// Read from this date instead of the watermark minus the overlap (a backfill).
    pub since: Option<NaiveDate>,
    /// Read up to this date instead of today.
    pub until: Option<NaiveDate>,
    /// Show a progress bar on stderr when it is a terminal.
    pub progress: bool,
}

/// Figures of one cycle, also logged in its span.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CycleReport {
    /// The source read (see [`source_id`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    pub started_at: String,
    pub finished_at: String,
    /// "ok", "interrupted" or "failed: ...".
    pub outcome: String,
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub windows_completed: u32,
    pub pages: u64,
    pub records_seen: u64,
    pub completed_by_id: u64,
    pub appended: u64,
    pub already_known: u64,
    /// Of `already_known`: records read byte for byte as a cycle logged them before, so not
    /// decoded again.
    #[serde(default)]
    pub unchanged: u64,
    /// Of `pages`: pages that came back byte for byte as handled before, not decoded at all.
    #[serde(default)]
    pub pages_unchanged: u64,
    pub quarantined: u64,
    pub retries: u64,
    pub sweeps_repeated: u64,
    pub watermark: Option<NaiveDate>,
    /// Events appended, by kind.
    #[serde(default)]
    pub appended_by_kind: std::collections::BTreeMap<String, u64>,
    #[serde(default)]
    pub duration_ms: u64,
}

/// The key under which a source's state is kept: the base URL and the filters, so that a
/// different house or body filter has a watermark of its own.
pub fn source_id(client: &ApiClient, config: &crate::config::FetchConfig) -> String {
    let mut bodies = config.answering_bodies.clone();
    bodies.sort_unstable();
    format!(
        "api {} house={} bodies={:?}",
        client.base_url().as_str().trim_end_matches('/'),
        config.house,
        bodies
    )
}

pub fn load_state(log: &EventLog, source: &str) -> Result<SourceState, FetchError> {
    let tree = log.db().open_tree(STATE_TREE).map_err(LogError::from)?;
    match tree.get(source.as_bytes()).map_err(LogError::from)? {
        None => Ok(SourceState::default()),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| FetchError::State(format!("state of {source:?} does not decode: {e}"))),
    }
}

/// Every source's state, for `status`.
pub fn all_states(log: &EventLog) -> Result<Vec<(String, SourceState)>, FetchError> {
    let tree = log.db().open_tree(STATE_TREE).map_err(LogError::from)?;
    let mut states = Vec::new();
    for entry in tree.iter() {
        let (key, value) = entry.map_err(LogError::from)?;
        let state = serde_json::from_slice(&value)
            .map_err(|e| FetchError::State(format!("stored state does not decode: {e}")))?;
        states.push((String::from_utf8_lossy(&key).into_owned(), state));
    }
    Ok(states)
}

/// Whether a cycle only confirmed what the stored last cycle already says: it succeeded, as
/// that one did, appended and quarantined nothing, and left the watermark where it was.
fn is_idle_repeat(stored: Option<&CycleReport>, report: &CycleReport) -> bool {
    stored.is_some_and(|last| {
        last.outcome == "ok"
            && report.outcome == "ok"
            && report.appended == 0
            && report.quarantined == 0
            && last.watermark == report.watermark
            && last.from == report.from
            && last.to == report.to
    })
}

fn save_state(log: &EventLog, source: &str, state: &SourceState) -> Result<(), FetchError> {
    let tree = log.db().open_tree(STATE_TREE).map_err(LogError::from)?;
    let bytes = serde_json::to_vec(state).map_err(|e| FetchError::State(e.to_string()))?;
    tree.insert(source.as_bytes(), bytes)
        .map_err(LogError::from)?;
    // Acknowledged progress must survive a crash: flush before going on.
    log.flush()?;
    Ok(())
}

/// The windows a cycle reads, oldest first, each `window_days` long (the last may be shorter).
pub fn windows(from: NaiveDate, to: NaiveDate, window_days: u32) -> Vec<(NaiveDate, NaiveDate)> {
    let mut out = Vec::new();
    let mut start = from;
    let span = u64::from(window_days.max(1));
    while start <= to {
        let end = start
            .checked_add_days(Days::new(span - 1))
            .map_or(to, |e| e.min(to));
        out.push((start, end));
        match end.checked_add_days(Days::new(1)) {
            Some(next) => start = next,
            None => break,
        }
    }
    out
}

/// Runs one fetch cycle. Returns the report whatever the outcome; the error, if any, is in
/// `outcome` and also returned so callers can exit non-zero.
pub async fn run_cycle(
    log: &mut EventLog,
    client: &ApiClient,
    config: &crate::config::FetchConfig,
    options: &CycleOptions,
    shutdown: &Shutdown,
) -> (CycleReport, Result<(), FetchError>) {
    let source = source_id(client, config);
    let cycle_id = format!("{:08x}", fastrand::u32(..));
    let span = tracing::info_span!("cycle", id = %cycle_id, source = %source);
    cycle_with_report(log, client, config, options, shutdown, source)
        .instrument(span)
        .await
}

async fn cycle_with_report(
    log: &mut EventLog,
    client: &ApiClient,
    config: &crate::config::FetchConfig,
    options: &CycleOptions,
    shutdown: &Shutdown,
    source: String,
) -> (CycleReport, Result<(), FetchError>) {
    let mut report = CycleReport {
        source: source.clone(),
        started_at: crate::ingest::now_rfc3339(),
        ..CycleReport::default()
    };
    let clock = std::time::Instant::now();
    let retries_before = client
        .stats
        .retries
        .load(std::sync::atomic::Ordering::Relaxed);
    let result = cycle_inner(log, client, config, options, shutdown, &source, &mut report).await;
    report.retries = client
        .stats
        .retries
        .load(std::sync::atomic::Ordering::Relaxed)
        - retries_before;
    report.finished_at = crate::ingest::now_rfc3339();
    report.duration_ms = clock.elapsed().as_millis() as u64;
    report.outcome = match &result {
        Ok(()) => "ok".to_string(),
        Err(FetchError::Interrupted) => "interrupted".to_string(),
        Err(e) => format!("failed: {e}"),
    };
    // The last cycle's figures are kept even when it failed (the watermark is untouched then).
    // A cycle that found nothing new and ended as the stored one did writes nothing: an idle
    // daemon must not wear the disk every few minutes. The daemon keeps such a cycle's report in
    // memory for `status` and /readyz.
    let stored = load_state(log, &source).and_then(|mut state| {
        report.watermark = state.watermark;
        if is_idle_repeat(state.last_cycle.as_ref(), &report) {
            return Ok(());
        }
        state.last_cycle = Some(report.clone());
        save_state(log, &source, &state)
    });
    let result = result.and(stored);
    match &result {
        Ok(()) | Err(FetchError::Interrupted) => tracing::info!(
            outcome = %report.outcome,
            pages = report.pages,
            records = report.records_seen,
            appended = report.appended,
            known = report.already_known,
            quarantined = report.quarantined,
            retries = report.retries,
            watermark = ?report.watermark,
            "cycle finished"
        ),
        Err(e) => tracing::error!(
            error = %e,
            pages = report.pages,
            records = report.records_seen,
            appended = report.appended,
            retries = report.retries,
            "cycle failed"
        ),
    }
    (report, result)
}

async fn cycle_inner(
    log: &mut EventLog,
    client: &ApiClient,
    config: &crate::config::FetchConfig,
    options: &CycleOptions,
    shutdown: &Shutdown,
    source: &str,
    report: &mut CycleReport,
) -> Result<(), FetchError> {
    let mut state = load_state(log, source)?;
    let today = chrono::Utc::now().date_naive();
    let to = options.until.unwrap_or(today);
    let from = match (options.since, state.watermark) {
        (Some(since), _) => since,
        (None, Some(watermark)) => watermark
            .checked_sub_days(Days::new(u64::from(config.overlap_days)))
            .unwrap_or(watermark),
        (None, None) => to
            .checked_sub_days(Days::new(u64::from(config.first_run_days)))
            .unwrap_or(to),
    };
    report.from = Some(from);
    report.to = Some(to);
    let windows = windows(from, to, config.window_days);
    let pages = log.db().open_tree(PAGES_TREE).map_err(LogError::from)?;
    let bar = progress_bar(options.progress, windows.len() as u64);
    let mut appender = Appender::default();
    let read = read_windows(
        log,
        &pages,
        client,
        &windows,
        from,
        shutdown,
        source,
        &mut state,
        report,
        &bar,
        &mut appender,
    )
    .await;
    // Whatever ended the read, the pages decoded are appended before the cycle returns; a
    // failure to append them is the one to report.
    let drained = appender.drain(log, &pages, report, &bar).await;
    if let (Err(_), Err(read_error)) = (&drained, &read) {
        tracing::warn!(error = %read_error, "the read had failed before the append did");
    }
    drained.and(read)?;
    bar.finish_and_clear();
    forget_pages_before(&pages, from)?;
    Ok(())
}

/// Reads `windows` in order, moving the watermark past each once all its pages are in the log.
#[allow(clippy::too_many_arguments)]
async fn read_windows(
    log: &EventLog,
    pages: &sled::Tree,
    client: &ApiClient,
    windows: &[(NaiveDate, NaiveDate)],
    from: NaiveDate,
    shutdown: &Shutdown,
    source: &str,
    state: &mut SourceState,
    report: &mut CycleReport,
    bar: &indicatif::ProgressBar,
    appender: &mut Appender,
) -> Result<(), FetchError> {
    // Loaded on the first page that is not skipped whole (an idle cycle never needs it).
    let before = std::cell::OnceCell::new();
    for &(start, end) in windows {
        // Records known from earlier cycles, and those handled in this window (kept only for
        // the window: a backfill must not hold every record's digest).
        let mut known = Known {
            pages,
            from,
            before: &before,
            here: KnownRecords::new(),
        };
        for field in [DateField::Answered, DateField::Corrected] {
            let query = ListQuery {
                field,
                from: start,
                to: end,
            };
            read_window(
                log, pages, &mut known, client, &query, shutdown, report, bar, appender,
            )
            .await?;
        }
        appender.drain(log, pages, report, bar).await?;
        report.windows_completed += 1;
        if state.watermark.is_none_or(|w| w < end) {
            state.watermark = Some(end);
            save_state(log, source, state)?;
        }
        bar.inc(1);
        if shutdown.is_requested() {
            return Err(FetchError::Interrupted);
        }
    }
    Ok(())
}

/// A list page as handled (see [`PAGES_TREE`]).
#[derive(Debug, PartialEq)]
struct PageSummary {
    digest: [u8; 16],
    total: u64,
    ids: Vec<Option<u64>>,
    /// Per record, the digest of its raw JSON; none for a record the list cut short.
    records: Vec<Option<[u8; 16]>>,
}

/// First byte of a stored [`PageSummary`].
const PAGE_SUMMARY_V1: u8 = 1;

impl PageSummary {
    /// Whether the page may be skipped whole when its bytes come back.
    fn whole(&self) -> bool {
        self.records.iter().all(Option::is_some)
    }

    /// Version, digest, total, count, then per record: presence bits, id, digest. Binary, since
    /// an idle cycle reads one per page.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(29 + 25 * self.ids.len());
        out.push(PAGE_SUMMARY_V1);
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&(self.ids.len() as u32).to_be_bytes());
        for (id, digest) in self.ids.iter().zip(&self.records) {
            out.push(u8::from(id.is_some()) | (u8::from(digest.is_some()) << 1));
            out.extend_from_slice(&id.unwrap_or(0).to_be_bytes());
            out.extend_from_slice(&digest.unwrap_or([0; 16]));
        }
        out
    }

    /// None for anything malformed or of another version: a cache miss, nothing worse.
    fn decode(bytes: &[u8]) -> Option<PageSummary> {
        let (&version, rest) = bytes.split_first()?;
        if version != PAGE_SUMMARY_V1 || rest.len() < 28 {
            return None;
        }
        let digest: [u8; 16] = rest[..16].try_into().ok()?;
        let total = u64::from_be_bytes(rest[16..24].try_into().ok()?);
        let n = u32::from_be_bytes(rest[24..28].try_into().ok()?) as usize;
        let body = &rest[28..];
        if body.len() != n.checked_mul(25)? {
            return None;
        }
        let mut ids = Vec::with_capacity(n);
        let mut records = Vec::with_capacity(n);
        for entry in body.chunks_exact(25) {
            let present = entry[0];
            let id = u64::from_be_bytes(entry[1..9].try_into().ok()?);
            let digest: [u8; 16] = entry[9..25].try_into().ok()?;
            ids.push((present & 1 != 0).then_some(id));
            records.push((present & 2 != 0).then_some(digest));
        }
        Some(PageSummary {
            digest,
            total,
            ids,
            records,
        })
    }
}

fn page_key(query: &ListQuery, url: &url::Url) -> Vec<u8> {
    format!("{} {url}", window_prefix(query)).into_bytes()
}

/// What the keys of a window's pages start with (both date fields).
fn window_prefix(query: &ListQuery) -> String {
    format!("{}/{}", query.to, query.from)
}

/// Raw record digest -> API id (none for a quarantined record).
type KnownRecords = std::collections::HashMap<[u8; 16], Option<u64>>;

/// Records known byte for byte: from earlier cycles, and handled in this window.
struct Known<'b> {
    pages: &'b sled::Tree,
    from: NaiveDate,
    before: &'b std::cell::OnceCell<KnownRecords>,
    here: KnownRecords,
}

impl Known<'_> {
    fn get(&self, digest: &[u8; 16]) -> Result<Option<Option<u64>>, FetchError> {
        if let Some(id) = self.here.get(digest) {
            return Ok(Some(*id));
        }
        if self.before.get().is_none() {
            let _ = self.before.set(known_records(self.pages, self.from)?);
        }
        Ok(self.before.get().and_then(|b| b.get(digest)).copied())
    }
}

/// Records of the pages handled before in windows ending on or after `from` (what is left after
/// the previous cycle's pruning: about the overlap window), wherever the window boundaries fall
/// this time.
fn known_records(pages: &sled::Tree, from: NaiveDate) -> Result<KnownRecords, FetchError> {
    let mut known = KnownRecords::new();
    for entry in pages.range(from.to_string().as_bytes()..) {
        let (_, value) = entry.map_err(LogError::from)?;
        let Some(summary) = PageSummary::decode(&value) else {
            continue;
        };
        for (digest, id) in summary.records.into_iter().zip(summary.ids) {
            if let Some(digest) = digest {
                known.insert(digest, id);
            }
        }
    }
    Ok(known)
}

fn load_page(pages: &sled::Tree, key: &[u8]) -> Result<Option<PageSummary>, FetchError> {
    // An entry that does not decode is only a cache miss.
    Ok(pages
        .get(key)
        .map_err(LogError::from)?
        .and_then(|v| PageSummary::decode(&v)))
}

/// Drops the entries of windows that end before `from`: later cycles start at or after it.
fn forget_pages_before(pages: &sled::Tree, from: NaiveDate) -> Result<(), FetchError> {
    let end = from.to_string();
    let mut batch = sled::Batch::default();
    let mut any = false;
    for key in pages.range(..end.as_bytes()).keys() {
        batch.remove(key.map_err(LogError::from)?);
        any = true;
    }
    if any {
        pages.apply_batch(batch).map_err(LogError::from)?;
    }
    Ok(())
}

fn progress_bar(wanted: bool, windows: u64) -> indicatif::ProgressBar {
    if !wanted || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(windows);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} windows  {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The observations of at least this many records (or all those of a window, when fewer) are
/// appended together: each append waits for two syncs and takes sled's lock, and a page holds
/// about a hundred. Counted in records, not in time, so that where the diff module's flags land
/// depends only on the input. A backfill of 200,000 answers (README, stop 24) took 20.5 s at
/// 250 and 19-20 s at 500, but peaked at 149-160 MB resident against 143-148 MB: two batches of
/// decoded records are held at once, one waiting and one being appended.
const APPEND_RECORDS: usize = 250;

/// A decoded page whose observations are waiting to be appended or are being appended; it is
/// recorded as handled (its summary written to [`PAGES_TREE`]) once they are in the log.
struct DecodedPage {
    url: url::Url,
    key: Vec<u8>,
    summary: PageSummary,
    query: ListQuery,
    span: tracing::Span,
}

/// Appends a window's pages a few at a time, each append on a blocking thread while the next
/// pages are requested and decoded: the log's syncs and the wait for the diff module's flags
/// then overlap the requests rather than take turns with them. At most one append is in flight,
/// and [`Appender::drain`] lands it (its outcome counted, its pages' summaries written) and
/// appends what is left; the cycle drains before the watermark moves and before it returns,
/// whatever ends it.
#[derive(Default)]
struct Appender {
    observations: Vec<Observation>,
    pages: Vec<DecodedPage>,
    in_flight: Option<InFlight>,
    /// An append failed: nothing more is appended or recorded. Pages waiting behind it may have
    /// left records out as known from the failed batch (each page opens with the previous
    /// page's last record), so recording them as read could hide those records for good.
    failed: bool,
}

struct InFlight {
    /// None when the pages held nothing to append.
    task: Option<tokio::task::JoinHandle<Result<AppendReport, LogError>>>,
    pages: Vec<DecodedPage>,
}

impl Appender {
    /// Adds a decoded page, starting an append once enough records wait.
    async fn add(
        &mut self,
        log: &EventLog,
        observations: Vec<Observation>,
        page: DecodedPage,
        sled_pages: &sled::Tree,
        report: &mut CycleReport,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        if self.failed {
            return Err(FetchError::State(
                "a page was read after an append failed".to_string(),
            ));
        }
        self.observations.extend(observations);
        self.pages.push(page);
        if self.observations.len() >= APPEND_RECORDS {
            self.land(sled_pages, report, bar).await?;
            self.start(log);
        }
        Ok(())
    }

    /// Starts appending what waits, through a stand-in for `log` (same gate, same order). Pages
    /// with nothing new start no thread.
    fn start(&mut self, log: &EventLog) {
        let observations = std::mem::take(&mut self.observations);
        let pages = std::mem::take(&mut self.pages);
        let task = (!observations.is_empty()).then(|| {
            let mut appender = log.stand_in();
            let recorded_at = crate::ingest::now_rfc3339();
            // The append's own log lines belong to the cycle, as when it ran on this thread.
            let span = tracing::Span::current();
            tokio::task::spawn_blocking(move || {
                let _cycle = span.enter();
                appender.append(observations, &recorded_at)
            })
        });
        self.in_flight = Some(InFlight { task, pages });
    }

    /// Waits for the append in flight, if any, counts what it did, and only then records its
    /// pages as handled.
    async fn land(
        &mut self,
        sled_pages: &sled::Tree,
        report: &mut CycleReport,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(());
        };
        let result = Self::finish(in_flight, sled_pages, report, bar).await;
        if result.is_err() {
            self.failed = true;
            self.observations.clear();
            self.pages.clear();
        }
        result
    }

    async fn finish(
        in_flight: InFlight,
        sled_pages: &sled::Tree,
        report: &mut CycleReport,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        let appended = match in_flight.task {
            Some(task) => task.await.map_err(|e| {
                let first = in_flight.pages.first().map(|p| p.url.to_string());
                FetchError::State(format!(
                    "appending the records of {}: {e}",
                    first.unwrap_or_default()
                ))
            })??,
            None => AppendReport::default(),
        };
        for outcome in &appended.outcomes {
            match outcome {
                Appended::New { kind, .. } => {
                    report.appended += 1;
                    *report.appended_by_kind.entry(kind.to_string()).or_default() += 1;
                    if *kind == "record_quarantined" {
                        report.quarantined += 1;
                    }
                }
                Appended::Known { .. } => report.already_known += 1,
            }
        }
        // Every record of these pages is in the log now: only from here on may a later cycle
        // skip decoding them.
        let mut batch = sled::Batch::default();
        for page in &in_flight.pages {
            batch.insert(page.key.as_slice(), page.summary.encode());
        }
        sled_pages.apply_batch(batch).map_err(LogError::from)?;
        for page in &in_flight.pages {
            let count = page.summary.ids.len() as u64;
            page_done(
                bar,
                &page.query,
                report,
                &page.span,
                &page.url,
                count,
                page.summary.total,
            );
        }
        Ok(())
    }

    /// Lands the append in flight, then appends whatever still waits and lands that too. After
    /// a failed append it does nothing: the cycle is failing, and what waits is read again by
    /// the next one.
    async fn drain(
        &mut self,
        log: &EventLog,
        sled_pages: &sled::Tree,
        report: &mut CycleReport,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), FetchError> {
        self.land(sled_pages, report, bar).await?;
        if !self.failed && !self.pages.is_empty() {
            self.start(log);
            self.land(sled_pages, report, bar).await?;
        }
        Ok(())
    }
}

/// The progress bar and the log line of a handled page.
fn page_done(
    bar: &indicatif::ProgressBar,
    query: &ListQuery,
    report: &CycleReport,
    span: &tracing::Span,
    url: &url::Url,
    count: u64,
    total: u64,
) {
    bar.set_message(format!(
        "{} {}..{}: {} pages, {} appended",
        query.field.name(),
        query.from,
        query.to,
        report.pages,
        report.appended
    ));
    span.in_scope(
        || tracing::info!(url = %url, records = count, total, appended = report.appended, "page"),
    );
}

/// Reads one window on one date field, page by page, sweeping again if the list shifted. The
/// pages it decoded may still wait in `appender` when it returns; the caller drains it.
#[allow(clippy::too_many_arguments)]
async fn read_window(
    log: &EventLog,
    pages: &sled::Tree,
    known: &mut Known<'_>,
    client: &ApiClient,
    query: &ListQuery,
    shutdown: &Shutdown,
    report: &mut CycleReport,
    bar: &indicatif::ProgressBar,
    appender: &mut Appender,
) -> Result<(), FetchError> {
    // Ids already handled in this window: a re-sweep only pays for requests, not for work.
    let mut done: HashSet<u64> = HashSet::new();
    for sweep in 1..=MAX_SWEEPS {
        let mut skip = 0u64;
        let mut first_total = None;
        let mut stable = true;
        let mut previous_last: Option<u64> = None;
        loop {
            if shutdown.is_requested() {
                return Err(FetchError::Interrupted);
            }
            let page_span =
                tracing::info_span!("page", field = query.field.name(), from = %query.from, skip);
            let key = page_key(query, &client.list_url(query, skip));
            let previous = load_page(pages, &key)?.filter(PageSummary::whole);
            let (url, digest, page) = client
                .list_page(query, skip, previous.as_ref().map(|p| &p.digest))
                .instrument(page_span.clone())
                .await?;
            report.pages += 1;
            let (total, ids, items) = match (page, previous) {
                (Some(page), _) => {
                    let total = page.total_results.unwrap_or(0);
                    let items = triage(known, page.items)?;
                    let ids: Vec<Option<u64>> = items.iter().map(PageItem::id).collect();
                    (total, ids, Some(items))
                }
                (None, Some(previous)) => (previous.total, previous.ids, None),
                (None, None) => {
                    return Err(FetchError::State(format!(
                        "{url}: page skipped without a stored digest"
                    )))
                }
            };
            if *first_total.get_or_insert(total) != total {
                stable = false;
            }
            if let Some(last) = previous_last {
                // The overlap record should open this page; anywhere else, the list moved.
                if ids.first().copied().flatten() != Some(last) {
                    stable = false;
                }
            }
            let count = ids.len() as u64;
            match items {
                Some(items) => {
                    let records: Vec<Option<[u8; 16]>> =
                        items.iter().map(PageItem::digest).collect();
                    let observations =
                        page_observations(client, &url, items, skip, &mut done, report)
                            .instrument(page_span.clone())
                            .await?;
                    // Later pages are decoded before these are in the log; should the append
                    // fail, the cycle stops there and nothing more is appended or recorded
                    // (`Appender::failed`), so nothing this spares decoding is used.
                    for (digest, id) in records.iter().zip(&ids) {
                        if let Some(digest) = digest {
                            known.here.insert(*digest, *id);
                        }
                    }
                    let summary = PageSummary {
                        digest,
                        total,
                        ids: ids.clone(),
                        records,
                    };
                    let page = DecodedPage {
                        url,
                        key,
                        summary,
                        query: query.clone(),
                        span: page_span,
                    };
                    appender
                        .add(log, observations, page, pages, report, bar)
                        .await?;
                }
                None => {
                    // The same bytes as a page whose records are all in the log.
                    report.pages_unchanged += 1;
                    report.records_seen += count;
                    for id in &ids {
                        count_unchanged(*id, &mut done, report);
                    }
                    page_done(bar, query, report, &page_span, &url, count, total);
                }
            }
            if count == 0 || skip + count >= total {
                break;
            }
            previous_last = ids.last().copied().flatten();
            // Step back one so each page starts with the previous page's last record.
            skip += if count > 1 && previous_last.is_some() {
                count - 1
            } else {
                count
            };
        }
        if stable {
            return Ok(());
        }
        report.sweeps_repeated += 1;
        tracing::info!(field = query.field.name(), from = %query.from, to = %query.to, sweep, "the list changed while paging; reading the window again");
    }
    tracing::warn!(field = query.field.name(), from = %query.from, to = %query.to, "the list kept changing; the next cycle's overlap will read this window again");
    Ok(())
}

/// A record of a page: seen byte for byte before (not decoded), or decoded.
enum PageItem {
    Seen {
        id: Option<u64>,
        digest: [u8; 16],
    },
    Fresh {
        item: ApiItem,
        /// None for a record the list cut short: it is never skipped.
        digest: Option<[u8; 16]>,
    },
}

impl PageItem {
    fn digest(&self) -> Option<[u8; 16]> {
        match self {
            PageItem::Seen { digest, .. } => Some(*digest),
            PageItem::Fresh { digest, .. } => *digest,
        }
    }

    fn id(&self) -> Option<u64> {
        match self {
            PageItem::Seen { id, .. } => *id,
            PageItem::Fresh {
                item: ApiItem::Record { id, .. },
                ..
            } => Some(*id),
            PageItem::Fresh { .. } => None,
        }
    }
}

fn raw_digest(raw: &str) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128_with_seed(raw.as_bytes(), RECORD_DIGEST_VERSION).to_be_bytes()
}

/// Decodes the records of a page that are not among those known byte for byte.
fn triage(
    known: &Known<'_>,
    raw_items: Vec<Box<serde_json::value::RawValue>>,
) -> Result<Vec<PageItem>, FetchError> {
    let mut items = Vec::with_capacity(raw_items.len());
    for raw in raw_items {
        let digest = raw_digest(raw.get());
        if let Some(id) = known.get(&digest)? {
            items.push(PageItem::Seen { id, digest });
            continue;
        }
        let item = crate::parse::api::decode_raw_item(&raw);
        let digest = match &item {
            ApiItem::Record {
                truncated: true, ..
            } => None,
            _ => Some(digest),
        };
        items.push(PageItem::Fresh { item, digest });
    }
    Ok(items)
}

/// A record read byte for byte as logged before: already known, as appending it again would
/// find (unless this window has handled its id already, which is not counted twice).
fn count_unchanged(id: Option<u64>, done: &mut HashSet<u64>, report: &mut CycleReport) {
    if id.is_none_or(|id| done.insert(id)) {
        report.already_known += 1;
        report.unchanged += 1;
    }
}

/// Completes cut-short records by id and turns the page into the observations to append.
async fn page_observations(
    client: &ApiClient,
    url: &url::Url,
    items: Vec<PageItem>,
    skip: u64,
    done: &mut HashSet<u64>,
    report: &mut CycleReport,
) -> Result<Vec<Observation>, FetchError> {
    report.records_seen += items.len() as u64;
    let mut pending: Vec<(u32, String, ApiItem)> = Vec::new();
    let mut to_complete: Vec<(usize, u64)> = Vec::new();
    for (index, page_item) in items.into_iter().enumerate() {
        let position = u32::try_from(skip + index as u64).unwrap_or(u32::MAX);
        let item = match page_item {
            PageItem::Seen { id, .. } => {
                count_unchanged(id, done, report);
                continue;
            }
            PageItem::Fresh { item, .. } => item,
        };
        match &item {
            // Completed by id once in this window already. A record read whole is not skipped
            // so: its bytes differ from those handled (the same bytes are `Seen`), so it
            // changed while we paged, and its digest goes into the page's summary.
            ApiItem::Record {
                id,
                truncated: true,
                ..
            } if done.contains(id) => continue,
            ApiItem::Record { id, truncated, .. } => {
                done.insert(*id);
                if *truncated {
                    to_complete.push((pending.len(), *id));
                }
            }
            ApiItem::Quarantined { .. } => {}
        }
        pending.push((position, url.to_string(), item));
    }
    let completed: Vec<Result<(url::Url, ApiItem), FetchError>> = stream::iter(to_complete.iter())
        .map(|(_, id)| client.record(*id))
        .buffered(client.max_concurrent())
        .collect()
        .await;
    for ((slot, id), result) in to_complete.iter().zip(completed) {
        let (record_url, item) = result?;
        if let ApiItem::Record {
            id: got, truncated, ..
        } = &item
        {
            if got != id {
                return Err(FetchError::Incomplete {
                    url: record_url.to_string(),
                    why: format!("asked for record {id}, got {got}"),
                });
            }
            if *truncated {
                tracing::debug!(
                    id,
                    "the full record still ends in '...'; taking it as the answer"
                );
            }
        }
        report.completed_by_id += 1;
        pending[*slot].1 = record_url.to_string();
        pending[*slot].2 = item;
    }
    Ok(pending
        .into_iter()
        .map(|(position, uri, item)| observation(uri, position, item))
        .collect())
}

/// An API item as an observation. `uri` is the page or record URL it came from.
pub fn observation(uri: String, position: u32, item: ApiItem) -> Observation {
    let payload = match item {
        ApiItem::Record { record, .. } => Payload::Answer(record),
        ApiItem::Quarantined { reason, raw } => Payload::Unparseable {
            reason,
            raw: raw.into_bytes(),
        },
    };
    Observation {
        source: Source {
            uri,
            position: Some(position),
            line: None,
        },
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    /// A page of `n` unparseable records (quarantined when appended).
    fn decoded_page(index: u64, n: usize) -> (Vec<Observation>, DecodedPage) {
        let url = url::Url::parse(&format!("http://127.0.0.1/list?skip={index}")).unwrap();
        let observations = (0..n)
            .map(|i| Observation {
                source: Source {
                    uri: url.to_string(),
                    position: Some(i as u32),
                    line: None,
                },
                payload: Payload::Unparseable {
                    reason: "test".into(),
                    raw: format!("record {index}/{i}").into_bytes(),
                },
            })
            .collect();
        let page = DecodedPage {
            key: format!("2025-01-31/2025-01-01 {url}").into_bytes(),
            url,
            summary: PageSummary {
                digest: [index as u8; 16],
                total: 1000,
                ids: vec![None; n],
                records: vec![Some([1; 16]); n],
            },
            query: ListQuery {
                field: DateField::Answered,
                from: d("2025-01-01"),
                to: d("2025-01-31"),
            },
            span: tracing::Span::none(),
        };
        (observations, page)
    }

    /// After a failed append the appender records no page as read and appends nothing more:
    /// the pages behind it may have left out records as known from the failed batch.
    #[test]
    fn a_failed_append_stops_the_appender() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::log::StoreOptions {
            min_free_bytes: u64::MAX / 8,
            ..crate::log::StoreOptions::default()
        };
        let log = EventLog::open(dir.path(), options).unwrap();
        let pages = log.db().open_tree(PAGES_TREE).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let mut report = CycleReport::default();
        let mut appender = Appender::default();
        runtime.block_on(async {
            let (observations, page) = decoded_page(0, APPEND_RECORDS);
            // Enough records: the first append starts (and will be refused).
            appender
                .add(&log, observations, page, &pages, &mut report, &bar)
                .await
                .unwrap();
            assert!(appender.in_flight.is_some());
            let (observations, page) = decoded_page(1, 10);
            appender
                .add(&log, observations, page, &pages, &mut report, &bar)
                .await
                .unwrap();
            let (observations, page) = decoded_page(2, APPEND_RECORDS);
            // Landing the first append before starting the next one: refused.
            let error = appender
                .add(&log, observations, page, &pages, &mut report, &bar)
                .await
                .unwrap_err();
            assert!(
                matches!(error, FetchError::Log(LogError::DiskFull { .. })),
                "{error}"
            );
            assert!(appender.failed);
            assert!(appender.pages.is_empty() && appender.observations.is_empty());
            // The cycle's drain then appends and records nothing.
            appender
                .drain(&log, &pages, &mut report, &bar)
                .await
                .unwrap();
            assert!(appender.in_flight.is_none());
            let (observations, page) = decoded_page(3, 1);
            assert!(appender
                .add(&log, observations, page, &pages, &mut report, &bar)
                .await
                .is_err());
        });
        assert_eq!(pages.len(), 0);
        assert_eq!(log.head().unwrap(), 0);
        assert_eq!(report.appended, 0);
    }

    #[test]
    fn page_summaries_round_trip_and_refuse_garbage() {
        let summary = PageSummary {
            digest: [7; 16],
            total: 1234,
            ids: vec![Some(1), None, Some(u64::MAX)],
            records: vec![Some([1; 16]), Some([2; 16]), None],
        };
        let bytes = summary.encode();
        assert_eq!(PageSummary::decode(&bytes), Some(summary));
        for cut in 0..bytes.len() {
            assert_eq!(PageSummary::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut other = bytes.clone();
        other[0] = 9;
        assert_eq!(PageSummary::decode(&other), None);
        let mut long = bytes;
        long.push(0);
        assert_eq!(PageSummary::decode(&long), None);
    }

    #[test]
    fn page_entries_of_windows_before_the_start_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let pages = db.open_tree(PAGES_TREE).unwrap();
        let url =
            url::Url::parse("http://127.0.0.1:1/api/writtenquestions/questions?skip=0").unwrap();
        for to in ["2025-01-31", "2025-03-23", "2025-03-24", "2025-03-31"] {
            let query = ListQuery {
                field: DateField::Answered,
                from: d("2025-01-01"),
                to: d(to),
            };
            pages.insert(page_key(&query, &url), b"x".to_vec()).unwrap();
        }
        forget_pages_before(&pages, d("2025-03-24")).unwrap();
        let left: Vec<String> = pages
            .iter()
            .keys()
            .map(|k| String::from_utf8(k.unwrap().to_vec()).unwrap()[..10].to_string())
            .collect();
        assert_eq!(left, ["2025-03-24", "2025-03-31"]);
    }

    #[test]
    fn windows_cover_the_range_without_gaps_or_overlaps() {
        let w = windows(d("2025-01-01"), d("2025-03-05"), 31);
        assert_eq!(
            w,
            vec![
                (d("2025-01-01"), d("2025-01-31")),
                (d("2025-02-01"), d("2025-03-03")),
                (d("2025-03-04"), d("2025-03-05")),
            ]
        );
        assert_eq!(windows(d("2025-01-01"), d("2025-01-01"), 7).len(), 1);
        assert!(windows(d("2025-01-02"), d("2025-01-01"), 7).is_empty());
    }
}
