//! Ops: the data dir and the daemon's figures in; status, Prometheus metrics, the local HTTP
//! endpoint, backups and compaction out.
//!
//! sled lets one process open a data dir, so while the daemon runs, read-only commands
//! (`status`, `questions`, `flags`, `backup`, ...) are sent to it over its loopback endpoint and
//! run there by the same functions, so their output is the same as with the daemon stopped.
//! Nothing here changes the data dir: the endpoint has no route that writes to it (`backup`
//! writes a new, separate directory).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::commands::{self, CommandError};
use crate::config::Config;
use crate::event::Style;
use crate::fetch::{CycleReport, SourceState};
use crate::log::{ClosableLog, EventLog, LogError, MemoOrHandle, StoreOptions};
use crate::project::{QuestionFilter, Views};
use crate::schedule::Schedule;

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("backup: {0}")]
    Backup(String),
    #[error("the daemon at {addr}: {why}")]
    Daemon { addr: String, why: String },
}

impl From<sled::Error> for OpsError {
    fn from(e: sled::Error) -> Self {
        OpsError::Log(LogError::Storage(e))
    }
}

/// Everything `status` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub data_dir: String,
    pub log_head: u64,
    pub sources: Vec<SourceStatus>,
    pub events_by_kind: BTreeMap<String, u64>,
    pub quarantined: u64,
    pub checkpoints: BTreeMap<String, u64>,
    pub outbox: BTreeMap<String, u64>,
    pub data_dir_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceStatus {
    pub source: String,
    pub watermark: Option<chrono::NaiveDate>,
    /// Days between the watermark and today.
    pub lag_days: Option<i64>,
    pub last_cycle: Option<CycleReport>,
}

/// Bytes used by a directory tree.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The newer of the stored last cycle and the running daemon's (idle cycles are not stored).
fn latest_cycle(stored: Option<CycleReport>, live: Option<&CycleReport>) -> Option<CycleReport> {
    match (stored, live) {
        (Some(s), Some(l)) if l.source == s.source && l.finished_at > s.finished_at => {
            Some(l.clone())
        }
        (stored, _) => stored,
    }
}

/// The data dir's state; `live` is the running daemon's latest cycle, when there is one.
pub fn status(log: &EventLog, live: Option<&CycleReport>) -> Result<StatusReport, OpsError> {
    let today = chrono::Utc::now().date_naive();
    let sources = crate::fetch::all_states(log)
        .map_err(|e| OpsError::Backup(e.to_string()))?
        .into_iter()
        .map(|(source, state): (String, SourceState)| SourceStatus {
            lag_days: state.watermark.map(|w| (today - w).num_days()),
            watermark: state.watermark,
            last_cycle: latest_cycle(state.last_cycle, live),
            source,
        })
        .collect();
    let views = Views::open(log).map_err(CommandError::from)?;
    let events_by_kind: BTreeMap<String, u64> = views
        .counts_by_kind()
        .map_err(CommandError::from)?
        .into_iter()
        .collect();
    let quarantined = events_by_kind
        .get("record_quarantined")
        .copied()
        .unwrap_or(0);
    let mut checkpoints = BTreeMap::new();
    checkpoints.insert(
        "views".to_string(),
        crate::project::checkpoint(log).map_err(CommandError::from)?,
    );
    checkpoints.insert(
        "diff".to_string(),
        crate::diff::checkpoint(log)
            .map_err(|e| CommandError::Pipeline(crate::pipeline::PipelineError::Diff(e)))?,
    );
    checkpoints.insert(
        "alerts".to_string(),
        crate::alert::checkpoint(log).map_err(CommandError::from)?,
    );
    // Read from the unsent index and the item count: the sent history is never scanned.
    let outbox = crate::alert::counts_by_state(log).map_err(CommandError::from)?;
    Ok(StatusReport {
        data_dir: log.dir().display().to_string(),
        log_head: log.head()?,
        sources,
        events_by_kind,
        quarantined,
        checkpoints,
        outbox,
        data_dir_bytes: dir_bytes(log.dir()),
    })
}

pub fn print_status(report: &StatusReport, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        let value = serde_json::to_value(report).map_err(std::io::Error::from)?;
        return writeln!(out, "{value}");
    }
    writeln!(
        out,
        "data dir:     {} ({} bytes on disk)",
        report.data_dir, report.data_dir_bytes
    )?;
    writeln!(out, "log head:     #{}", report.log_head)?;
    let kinds: Vec<String> = report
        .events_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    writeln!(
        out,
        "events:       {}",
        if kinds.is_empty() {
            "none".to_string()
        } else {
            kinds.join(", ")
        }
    )?;
    writeln!(out, "quarantined:  {}", report.quarantined)?;
    let checkpoints: Vec<String> = report
        .checkpoints
        .iter()
        .map(|(k, n)| {
            format!(
                "{k} #{n}{}",
                if *n == report.log_head {
                    ""
                } else {
                    " (behind)"
                }
            )
        })
        .collect();
    writeln!(out, "checkpoints:  {}", checkpoints.join(", "))?;
    let outbox: Vec<String> = report
        .outbox
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    writeln!(out, "outbox:       {}", outbox.join(", "))?;
    if report.sources.is_empty() {
        writeln!(out, "fetch:        no cycle has run yet")?;
    }
    for s in &report.sources {
        writeln!(out, "source:       {}", s.source)?;
        writeln!(
            out,
            "  watermark:  {}{}",
            s.watermark.map_or("none".to_string(), |w| w.to_string()),
            s.lag_days
                .map(|d| format!(" ({d} days behind today)"))
                .unwrap_or_default()
        )?;
        if let Some(c) = &s.last_cycle {
            writeln!(
                out,
                "  last cycle: {} .. {}: {} ({} pages, {} records, {} events appended, {} quarantined, {} retries, {} ms)",
                c.started_at, c.finished_at, c.outcome, c.pages, c.records_seen, c.appended, c.quarantined, c.retries, c.duration_ms
            )?;
        }
    }
    Ok(())
}

/// Counters the daemon keeps for /metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    cycles_ok: AtomicU64,
    cycles_failed: AtomicU64,
    cycles_interrupted: AtomicU64,
    pages: AtomicU64,
    records: AtomicU64,
    retries: AtomicU64,
    quarantined: AtomicU64,
    alerts_sent: AtomicU64,
    alerts_failed: AtomicU64,
    appended: Mutex<BTreeMap<String, u64>>,
    durations: Mutex<Histogram>,
    /// This process's latest cycle: an idle cycle is not written to the data dir.
    last_cycle: Mutex<Option<CycleReport>>,
}

const BUCKETS: &[f64] = &[0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; 8],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// The latest cycle this process ran.
    pub fn last_cycle(&self) -> Option<CycleReport> {
        self.last_cycle.lock().ok().and_then(|c| c.clone())
    }

    pub fn record_cycle(&self, report: &CycleReport) {
        if let Ok(mut last) = self.last_cycle.lock() {
            *last = Some(report.clone());
        }
        let counter = match report.outcome.as_str() {
            "ok" => &self.cycles_ok,
            "interrupted" => &self.cycles_interrupted,
            _ => &self.cycles_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.pages.fetch_add(report.pages, Ordering::Relaxed);
        self.records
            .fetch_add(report.records_seen, Ordering::Relaxed);
        self.retries.fetch_add(report.retries, Ordering::Relaxed);
        self.quarantined
            .fetch_add(report.quarantined, Ordering::Relaxed);
        if let Ok(mut appended) = self.appended.lock() {
            for (kind, n) in &report.appended_by_kind {
                *appended.entry(kind.clone()).or_default() += n;
            }
        }
        if let Ok(mut h) = self.durations.lock() {
            let secs = report.duration_ms as f64 / 1000.0;
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn record_delivery(&self, report: &crate::alert::DeliveryReport) {
        self.alerts_sent.fetch_add(report.sent, Ordering::Relaxed);
        self.alerts_failed
            .fetch_add(report.failed, Ordering::Relaxed);
    }

    /// The Prometheus text format; `status` is the data dir's, when it could be read.
    pub fn render(&self, status: Option<&StatusReport>, log_open: bool) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in lines {
                out.push_str(&format!("{name}{labels} {value}\n"));
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "answerfeed_cycles_total",
            "counter",
            "Fetch cycles run by this process, by outcome.",
            vec![
                ("{outcome=\"ok\"}".into(), load(&self.cycles_ok)),
                ("{outcome=\"failed\"}".into(), load(&self.cycles_failed)),
                (
                    "{outcome=\"interrupted\"}".into(),
                    load(&self.cycles_interrupted),
                ),
            ],
        );
        metric(
            "answerfeed_pages_total",
            "counter",
            "API pages read.",
            vec![(String::new(), load(&self.pages))],
        );
        metric(
            "answerfeed_records_total",
            "counter",
            "API records seen.",
            vec![(String::new(), load(&self.records))],
        );
        metric(
            "answerfeed_retries_total",
            "counter",
            "HTTP requests retried.",
            vec![(String::new(), load(&self.retries))],
        );
        metric(
            "answerfeed_quarantined_total",
            "counter",
            "Records quarantined by fetch cycles.",
            vec![(String::new(), load(&self.quarantined))],
        );
        let appended: Vec<(String, String)> = self
            .appended
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (format!("{{kind=\"{k}\"}}"), v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        metric(
            "answerfeed_events_appended_total",
            "counter",
            "Events appended by fetch cycles, by kind.",
            appended,
        );
        metric(
            "answerfeed_alerts_total",
            "counter",
            "Alert emails, by result.",
            vec![
                ("{result=\"sent\"}".into(), load(&self.alerts_sent)),
                ("{result=\"failed\"}".into(), load(&self.alerts_failed)),
            ],
        );
        let mut lines = Vec::new();
        if let Ok(h) = self.durations.lock() {
            for (i, bound) in BUCKETS.iter().enumerate() {
                lines.push((
                    format!("_bucket{{le=\"{bound}\"}}"),
                    h.counts[i].to_string(),
                ));
            }
            lines.push(("_bucket{le=\"+Inf\"}".into(), h.count.to_string()));
            lines.push(("_sum".into(), format!("{:.3}", h.sum)));
            lines.push(("_count".into(), h.count.to_string()));
        }
        metric(
            "answerfeed_cycle_duration_seconds",
            "histogram",
            "Fetch cycle duration.",
            lines,
        );
        metric(
            "answerfeed_log_open",
            "gauge",
            "1 while the daemon has the log open, 0 while it is closed between cycles.",
            vec![(String::new(), u8::from(log_open).to_string())],
        );
        metric(
            "answerfeed_status_up",
            "gauge",
            "1 when this scrape could read the log's status, 0 when it could not (the daemon logs why).",
            vec![(String::new(), u8::from(status.is_some()).to_string())],
        );
        // Without a status there is no head to report: no sample, rather than a 0 that reads
        // as an emptied log.
        let head = status.map(|s| s.log_head);
        metric(
            "answerfeed_log_head",
            "gauge",
            "Sequence number of the last event in the log.",
            head.iter()
                .map(|h| (String::new(), h.to_string()))
                .collect(),
        );
        if let (Some(report), Some(head)) = (status, head) {
            let outbox: Vec<(String, String)> = report
                .outbox
                .iter()
                .map(|(k, v)| (format!("{{state=\"{k}\"}}"), v.to_string()))
                .collect();
            metric(
                "answerfeed_outbox",
                "gauge",
                "Alert outbox items, by state.",
                outbox,
            );
            let watermark: Vec<(String, String)> = report
                .sources
                .iter()
                .filter_map(|s| s.lag_days.map(|d| (String::new(), d.to_string())))
                .take(1)
                .collect();
            metric(
                "answerfeed_watermark_lag_days",
                "gauge",
                "Days between the fetch watermark and today.",
                watermark,
            );
            let checkpoints: Vec<(String, String)> = report
                .checkpoints
                .iter()
                .map(|(k, v)| {
                    (
                        format!("{{consumer=\"{k}\"}}"),
                        head.saturating_sub(*v).to_string(),
                    )
                })
                .collect();
            metric(
                "answerfeed_consumer_lag_events",
                "gauge",
                "Events the consumers have yet to read.",
                checkpoints,
            );
        }
        out
    }
}

/// A read-only command sent to the running daemon.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Remote {
    Status,
    Events {
        from: u64,
        limit: Option<usize>,
    },
    Questions {
        topic: Option<String>,
        body: Option<String>,
        member: Option<String>,
        force: Option<String>,
        limit: Option<usize>,
    },
    Show {
        id: String,
    },
    Stats {
        force: String,
        measure: Option<String>,
    },
    Flags {
        kind: Option<String>,
        since: Option<chrono::NaiveDate>,
    },
    Duplicates,
    Export {
        format: String,
        view: String,
    },
    Verify,
    AlertsList,
    AlertsPreview {
        id: String,
    },
    Backup {
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteRequest {
    pub command: Remote,
    pub json: bool,
    pub colour: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoteResponse {
    pub stdout: String,
    /// The error line, when the command failed.
    pub error: Option<String>,
    pub exit_code: u8,
}

/// Runs a read-only command against an open log, as the CLI would with the daemon stopped.
pub fn execute(
    log: &EventLog,
    config: &Config,
    live: Option<&CycleReport>,
    request: &RemoteRequest,
) -> RemoteResponse {
    let mut out: Vec<u8> = Vec::new();
    let json = request.json;
    let style = Style {
        colour: request.colour,
    };
    let result: Result<u8, OpsError> = (|| {
        match &request.command {
            Remote::Status => print_status(&status(log, live)?, json, &mut out)?,
            Remote::Events { from, limit } => commands::events(log, *from, *limit, json, &mut out)?,
            Remote::Questions {
                topic,
                body,
                member,
                force,
                limit,
            } => {
                let force = match force {
                    Some(name) => Some(commands::resolve_force(name)?.id.to_string()),
                    None => None,
                };
                let filter = QuestionFilter {
                    topic: topic.clone(),
                    body: body.clone(),
                    member: member.clone(),
                    force,
                };
                commands::questions(log, &filter, *limit, json, &mut out)?
            }
            Remote::Show { id } => commands::show(log, id, json, style, &mut out)?,
            Remote::Stats { force, measure } => {
                commands::stats(log, force, measure.as_deref(), json, &mut out)?
            }
            Remote::Flags { kind, since } => {
                commands::flags(log, kind.as_deref(), *since, json, style, &mut out)?
            }
            Remote::Duplicates => commands::duplicates(log, json, &mut out)?,
            Remote::Export { format, view } => commands::export(log, format, view, &mut out)?,
            Remote::Verify => {
                if !commands::verify(log, json, &mut out)? {
                    return Ok(1);
                }
            }
            Remote::AlertsList => commands::alerts_list(log, json, &mut out)?,
            Remote::AlertsPreview { id } => commands::alerts_preview(log, config, id, &mut out)?,
            Remote::Backup { dir } => {
                let report = backup(log, dir)?;
                print_backup(&report, json, &mut out)?;
            }
        }
        Ok(0)
    })();
    let (error, exit_code) = match result {
        Ok(code) => (None, code),
        Err(e) => (Some(e.to_string().replace('\n', " ")), 1),
    };
    RemoteResponse {
        stdout: String::from_utf8_lossy(&out).into_owned(),
        error,
        exit_code,
    }
}

/// Sends a read-only command to the daemon listening at `addr`.
pub async fn forward(addr: &str, request: &RemoteRequest) -> Result<RemoteResponse, OpsError> {
    let daemon_err = |why: String| OpsError::Daemon {
        addr: addr.to_string(),
        why,
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(600))
        .build()
        .map_err(|e| daemon_err(e.to_string()))?;
    let body = serde_json::to_vec(request).map_err(|e| daemon_err(e.to_string()))?;
    let response = client
        .post(format!("http://{addr}/v1/command"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| daemon_err(format!("cannot reach it ({e})")))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| daemon_err(e.to_string()))?;
    if !status.is_success() {
        return Err(daemon_err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes).map_err(|e| daemon_err(format!("unreadable answer: {e}")))
}

/// What the HTTP handlers share with the daemon's loop. The log's memo, kept as it is closed,
/// is its status: only the daemon writes to the log, and it opens it first, so while the log is
/// closed that status is current, and /metrics and /readyz answer from it instead of opening
/// the log for every scrape.
pub struct OpsState {
    pub log: Arc<ClosableLog<StatusReport>>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub schedule: Schedule,
}

impl OpsState {
    pub fn new(
        log: Arc<ClosableLog<StatusReport>>,
        config: Config,
        metrics: Arc<Metrics>,
        schedule: Schedule,
    ) -> OpsState {
        OpsState {
            log,
            config,
            metrics,
            schedule,
        }
    }

    /// Closes the log if no query is using it, keeping its status. Returns whether the log is
    /// closed.
    pub fn close_log(&self) -> Result<bool, OpsError> {
        self.log
            .close_if_unused(|log| status(log, self.metrics.last_cycle().as_ref()))
    }

    /// A handle on the log for a cycle or a query, opening it if it is closed.
    pub fn open_log(&self) -> Result<EventLog, OpsError> {
        Ok(self.log.handle()?)
    }

    /// The data dir's status: read from the log when it is open, else as it was closed (the
    /// watermark lag counted to today).
    pub fn status(&self) -> Result<StatusReport, OpsError> {
        match self.log.memo_or_handle() {
            MemoOrHandle::Handle(log) => status(&log, self.metrics.last_cycle().as_ref()),
            MemoOrHandle::Memo(mut report) => {
                let today = chrono::Utc::now().date_naive();
                for source in &mut report.sources {
                    source.lag_days = source.watermark.map(|w| (today - w).num_days());
                }
                Ok(report)
            }
        }
    }

    /// Ready: the last fetch cycle succeeded, recently enough for the schedule.
    pub fn readiness(&self) -> Result<String, String> {
        let stored: Vec<CycleReport> = match self.log.memo_or_handle() {
            MemoOrHandle::Memo(report) => report
                .sources
                .into_iter()
                .filter_map(|s| s.last_cycle)
                .collect(),
            MemoOrHandle::Handle(log) => crate::fetch::all_states(&log)
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|(_, s)| s.last_cycle)
                .collect(),
        };
        let live = self.metrics.last_cycle();
        let last = stored
            .into_iter()
            .chain(live)
            .max_by(|a, b| a.finished_at.cmp(&b.finished_at))
            .ok_or_else(|| "no fetch cycle has finished yet".to_string())?;
        if last.outcome != "ok" && last.outcome != "interrupted" {
            return Err(format!("the last fetch cycle failed: {}", last.outcome));
        }
        let now = chrono::Utc::now();
        let interval = self
            .schedule
            .next_after(now)
            .and_then(|a| self.schedule.next_after(a).map(|b| b - a))
            .unwrap_or(chrono::Duration::minutes(15));
        let window = interval * self.config.ops.ready_intervals.max(1) as i32
            + chrono::Duration::seconds(60);
        let finished = crate::alert::parse_since(&last.finished_at)
            .ok_or_else(|| "the last cycle has no finish time".to_string())?;
        if now - finished > window {
            return Err(format!(
                "the last fetch cycle finished at {}, longer ago than {} s",
                last.finished_at,
                window.num_seconds()
            ));
        }
        Ok(format!(
            "ready: last cycle {} at {}",
            last.outcome, last.finished_at
        ))
    }
}

/// Serves /healthz, /readyz, /metrics and /v1/command until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<OpsState>,
    shutdown: crate::shutdown::Shutdown,
) -> std::io::Result<()> {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Json;

    async fn healthz() -> &'static str {
        "ok\n"
    }
    async fn readyz(State(state): State<Arc<OpsState>>) -> (StatusCode, String) {
        let s = state.clone();
        match tokio::task::spawn_blocking(move || s.readiness()).await {
            Ok(Ok(text)) => (StatusCode::OK, format!("{text}\n")),
            Ok(Err(why)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        }
    }
    async fn metrics(
        State(state): State<Arc<OpsState>>,
    ) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        let s = state.clone();
        let text = tokio::task::spawn_blocking(move || {
            let status = s
                .status()
                .inspect_err(|e| tracing::warn!(error = %e, "metrics: no status for this scrape"))
                .ok();
            s.metrics.render(status.as_ref(), s.log.is_open())
        })
        .await
        .unwrap_or_default();
        (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            text,
        )
    }
    async fn command(
        State(state): State<Arc<OpsState>>,
        Json(request): Json<RemoteRequest>,
    ) -> (StatusCode, Json<RemoteResponse>) {
        let s = state.clone();
        match tokio::task::spawn_blocking(move || match s.open_log() {
            Ok(log) => execute(&log, &s.config, s.metrics.last_cycle().as_ref(), &request),
            Err(e) => RemoteResponse {
                stdout: String::new(),
                error: Some(e.to_string()),
                exit_code: 1,
            },
        })
        .await
        {
            Ok(response) => (StatusCode::OK, Json(response)),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(RemoteResponse {
                    stdout: String::new(),
                    error: Some(e.to_string()),
                    exit_code: 1,
                }),
            ),
        }
    }

    let app = axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/command", post(command))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.requested().await })
        .await
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReport {
    pub dir: String,
    pub events: u64,
    pub bytes: u64,
}

pub fn print_backup(report: &BackupReport, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        let value = serde_json::to_value(report).map_err(std::io::Error::from)?;
        return writeln!(out, "{value}");
    }
    writeln!(
        out,
        "backup of {} events written to {} ({} bytes); it is a data dir: 'answerfeed --data-dir {} verify'",
        report.events, report.dir, report.bytes, report.dir
    )
}

/// A consistent copy of the data dir into `dir` (new or empty), safe while the log is being
/// appended to: fetch watermarks and subscription start times are read first, then the head, and
/// the log is copied up to that head (so no watermark runs ahead of the copied events). Views,
/// flags state and the outbox are derived again from the copied log when it is first used.
pub fn backup(log: &EventLog, dir: &Path) -> Result<BackupReport, OpsError> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(OpsError::Backup(format!(
                "{} exists and is not empty",
                dir.display()
            )));
        }
    }
    if dir.starts_with(log.dir()) {
        return Err(OpsError::Backup(
            "the backup cannot go inside the data dir".to_string(),
        ));
    }
    let fetch_state: Vec<(Vec<u8>, Vec<u8>)> = log
        .db()
        .open_tree("fetch_state")?
        .iter()
        .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())))
        .collect::<Result<_, _>>()?;
    let starts = crate::alert::start_times(log).map_err(CommandError::from)?;
    let head = log.head()?;
    let written = (|| -> Result<u64, OpsError> {
        let mut copy = EventLog::open(dir, StoreOptions::default())?;
        let events = copy.copy_events_from(log, head)?;
        let tree = copy.db().open_tree("fetch_state")?;
        for (k, v) in fetch_state {
            tree.insert(k, v)?;
        }
        crate::alert::restore_start_times(&copy, &starts).map_err(CommandError::from)?;
        copy.flush()?;
        let verified = copy.verify()?;
        if let Some(bad) = verified.first_bad {
            return Err(OpsError::Backup(format!(
                "the copy does not verify: event {}: {}",
                bad.seq, bad.problem
            )));
        }
        Ok(events)
    })();
    // A failed backup leaves nothing behind that could be mistaken for a good one.
    let events = match written {
        Ok(events) => events,
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
    };
    Ok(BackupReport {
        dir: dir.display().to_string(),
        events,
        bytes: dir_bytes(dir),
    })
}

/// Rewrites the data dir through a backup, which leaves sled's garbage behind. The daemon must be
/// stopped. The old dir is kept beside the new one until the operator removes it.
pub fn compact(data_dir: &Path, config: &Config, out: &mut dyn Write) -> Result<(), OpsError> {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".to_string());
    let parent = data_dir.parent().unwrap_or(Path::new("."));
    let fresh = parent.join(format!("{name}.compacting-{stamp}"));
    let old = parent.join(format!("{name}.before-compact-{stamp}"));
    let before = dir_bytes(data_dir);
    {
        let log = EventLog::open(data_dir, StoreOptions::default())?;
        backup(&log, &fresh)?;
    }
    {
        let mut log = EventLog::open(&fresh, StoreOptions::default())?;
        crate::pipeline::derive(&mut log, config).map_err(CommandError::from)?;
    }
    std::fs::rename(data_dir, &old)?;
    std::fs::rename(&fresh, data_dir)?;
    writeln!(
        out,
        "compacted {}: {} bytes before, {} after; the old copy is {} (remove it once you are satisfied)",
        data_dir.display(),
        before,
        dir_bytes(data_dir),
        old.display()
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_log_is_not_opened_for_metrics_readiness_or_status() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), StoreOptions::default()).unwrap();
        let config = Config::defaults().unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.record_cycle(&CycleReport {
            source: "api https://example.invalid".into(),
            outcome: "ok".into(),
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..CycleReport::default()
        });
        let schedule = Schedule::parse("0 */15 * * * *", "UTC").unwrap();
        let state = OpsState::new(Arc::new(ClosableLog::new(log)), config, metrics, schedule);
        let open_status = state.status().unwrap();
        let ready = state.readiness().unwrap();
        assert!(ready.starts_with("ready: last cycle ok"), "{ready}");

        assert!(state.close_log().unwrap());
        assert!(!state.log.is_open());
        let closed_status = state.status().unwrap();
        assert_eq!(
            serde_json::to_value(&closed_status).unwrap(),
            serde_json::to_value(&open_status).unwrap()
        );
        let ready = state.readiness().unwrap();
        assert!(ready.starts_with("ready: last cycle ok"), "{ready}");
        let text = state
            .metrics
            .render(Some(&closed_status), state.log.is_open());
        assert!(text.contains("\nanswerfeed_log_open 0\n"), "{text}");
        assert!(text.contains("\nanswerfeed_status_up 1\n"), "{text}");
        assert!(
            text.contains(&format!(
                "\nanswerfeed_log_head {}\n",
                closed_status.log_head
            )),
            "{text}"
        );
        assert!(
            !state.log.is_open(),
            "status, readiness and metrics left it closed"
        );
        // A scrape that could not read the status says so, and reports no head (a 0 would read
        // as an emptied log) and no lags.
        let text = state.metrics.render(None, false);
        assert!(text.contains("\nanswerfeed_status_up 0\n"), "{text}");
        assert!(
            text.contains("# TYPE answerfeed_log_head gauge\n"),
            "{text}"
        );
        assert!(!text.contains("\nanswerfeed_log_head "), "{text}");
        assert!(!text.contains("answerfeed_consumer_lag_events{"), "{text}");

        // A query opens it; its status is read from the log again.
        let log = state.open_log().unwrap();
        assert!(state.log.is_open());
        assert!(matches!(
            state.log.memo_or_handle(),
            MemoOrHandle::Handle(_)
        ));
        // In use, it stays open.
        assert!(!state.close_log().unwrap());
        assert!(state.log.is_open());
        drop(log);
        assert!(state.close_log().unwrap());
        assert!(!state.log.is_open());
    }
}
