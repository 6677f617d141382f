//! The CLI's commands as library functions: an open log and options in, text on a writer out.
//!
//! `main.rs` only parses arguments and calls these, so every command is testable without the
//! binary. Human output is for reading; `--json` output is one JSON object per line, stable for
//! scripts.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::event::{Envelope, Event};
use crate::ingest::{self, FileSummary, IngestError, IngestOptions};
use crate::log::{EventLog, LogError, StoreOptions};
use crate::record::{AnswerRecord, Block, FeedOrder};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
}

/// `answerfeed ingest FILE...`. All files are checked for readability before any is ingested, so
/// a typo in the last name does not leave the first files half-way through a run.
pub fn ingest(
    log: &mut EventLog,
    paths: &[PathBuf],
    options: IngestOptions,
    json: bool,
    out: &mut dyn Write,
) -> Result<Vec<FileSummary>, CommandError> {
    for path in paths {
        std::fs::File::open(path).map_err(|source| IngestError::Read {
            path: path.clone(),
            source,
        })?;
    }
    let mut summaries = Vec::with_capacity(paths.len());
    for path in paths {
        let summary = ingest::ingest_file(log, path, options)?;
        print_summary(&summary, json, out)?;
        summaries.push(summary);
    }
    Ok(summaries)
}

fn print_summary(s: &FileSummary, json: bool, out: &mut dyn Write) -> std::io::Result<()> {
    if json {
        let notes: Vec<_> = s
            .quarantine_notes
            .iter()
            .map(|n| json!({"index": n.index, "line": n.line, "reason": n.reason, "new": n.new}))
            .collect();
        let value = json!({
            "source": s.source,
            "records": s.records,
            "appended": s.appended(),
            "new_answers": s.new_answers,
            "revisions": s.revisions,
            "known": s.known,
            "quarantined": s.quarantined,
            "quarantine": notes,
            "unknown_forces": s.unknown_forces,
        });
        return writeln!(out, "{value}");
    }
    writeln!(
        out,
        "{}: {} records: {} appended ({} new answers, {} revisions, {} quarantined), {} already known",
        s.source,
        s.records,
        s.appended(),
        s.new_answers,
        s.revisions,
        s.quarantined,
        s.known
    )?;
    for note in &s.quarantine_notes {
        writeln!(
            out,
            "  quarantined record {} (line {}){}: {}",
            note.index,
            note.line,
            if note.new { "" } else { " [already kept]" },
            note.reason
        )?;
    }
    if !s.unknown_forces.is_empty() {
        writeln!(
            out,
            "  not a known police force, kept as written: {}",
            s.unknown_forces.join("; ")
        )?;
    }
    Ok(())
}

/// `answerfeed events [--from SEQ] [--limit N]`.
pub fn events(
    log: &EventLog,
    from: u64,
    limit: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    for envelope in log.events_from(from).take(limit.unwrap_or(usize::MAX)) {
        let envelope = envelope?;
        if json {
            serde_json::to_writer(&mut *out, &envelope).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", event_line(&envelope))?;
        }
    }
    Ok(())
}

fn event_line(e: &Envelope) -> String {
    let what = match (&e.event, e.event.question(), e.event.record()) {
        (Event::RecordQuarantined { reason, .. }, _, _) => reason.clone(),
        (event, Some(question), Some(record)) => match event.previous_seq() {
            Some(previous) => format!("{question}  after #{previous}  {}", record_line(record)),
            None => format!("{question}  {}", record_line(record)),
        },
        (event, _, _) => event.kind().to_string(),
    };
    let place = match (e.source.position, e.source.line) {
        (_, Some(line)) => format!("{}:{line}", e.source.uri),
        (Some(pos), None) => format!("{}#{pos}", e.source.uri),
        (None, None) => e.source.uri.clone(),
    };
    format!(
        "#{:<6} {}  {:<18} {}  [{}]",
        e.seq,
        e.recorded_at,
        e.event.kind(),
        what,
        place
    )
}

fn record_line(r: &AnswerRecord) -> String {
    format!(
        "{}: {} -> {}",
        r.answering_body, r.asking_member.name, r.answering_member.name
    )
}

/// `answerfeed questions`: the latest content of every question, most recently changed first.
pub fn questions(
    log: &EventLog,
    limit: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    // Only the index entries (key, seq, hash) are gathered to sort; records are read one by one.
    let mut heads = log.question_heads().collect::<Result<Vec<_>, _>>()?;
    heads.sort_by_key(|h| std::cmp::Reverse(h.seq));
    for head in heads.into_iter().take(limit.unwrap_or(usize::MAX)) {
        let envelope = log.get(head.seq)?.ok_or_else(|| LogError::Corrupt {
            seq: head.seq,
            problem: format!("the question index points at it for {}", head.question),
        })?;
        let Some(record) = envelope.event.record() else {
            continue;
        };
        if json {
            let value = json!({
                "question": head.question,
                "seq": head.seq,
                "kind": envelope.event.kind(),
                "content_hash": head.content_hash,
                "record": record,
            });
            writeln!(out, "{value}")?;
        } else {
            write_question(&head.question.to_string(), &envelope, record, out)?;
        }
    }
    Ok(())
}

fn write_question(
    key: &str,
    envelope: &Envelope,
    r: &AnswerRecord,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let member = &r.asking_member;
    let affiliation: Vec<&str> = [
        member.party.as_deref(),
        member.constituency.as_deref().or(member.peerage.as_deref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    let revised = match envelope.event.kind() {
        "answer_observed" => String::new(),
        kind => format!(" ({})", kind.replace('_', " ")),
    };
    writeln!(
        out,
        "{key}  #{}{revised}  {}",
        envelope.seq, r.answering_body
    )?;
    writeln!(
        out,
        "  asked by {} ({}); answered by {}{}",
        member.name,
        affiliation.join(" - "),
        r.answering_member.name,
        r.answering_member
            .title
            .as_deref()
            .map(|t| format!(" - {t}"))
            .unwrap_or_default()
    )?;
    writeln!(out, "  Q: {}", clip(&r.question_text, 160))?;
    let first = r.answer.paragraphs().next().unwrap_or("");
    writeln!(out, "  A: {}", clip(first, 160))?;
    let tables: Vec<String> = r
        .answer
        .tables()
        .map(|t| format!("{} rows x {} columns", t.rows.len(), t.header.len()))
        .collect();
    if !tables.is_empty() {
        writeln!(out, "  tables: {}", tables.join(", "))?;
    }
    if !r.forces.is_empty() {
        let names: Vec<&str> = r.forces.iter().map(|f| f.name.as_str()).collect();
        writeln!(out, "  forces: {}", names.join(", "))?;
    }
    Ok(())
}

fn clip(s: &str, max_chars: usize) -> String {
    let mut clipped: String = s.chars().take(max_chars).collect();
    if clipped.len() < s.len() {
        clipped.push('…');
    }
    clipped
}

/// `answerfeed verify`. Returns whether the log is good; prints what it found either way.
pub fn verify(log: &EventLog, json: bool, out: &mut dyn Write) -> Result<bool, CommandError> {
    let report = log.verify()?;
    if json {
        let bad = report
            .first_bad
            .as_ref()
            .map(|b| json!({"seq": b.seq, "problem": b.problem}));
        writeln!(
            out,
            "{}",
            json!({"ok": bad.is_none(), "good": report.good, "first_bad": bad})
        )?;
    } else {
        match &report.first_bad {
            None => writeln!(
                out,
                "ok: {} events, checksums, sequence and index good",
                report.good
            )?,
            Some(bad) => writeln!(
                out,
                "bad: event {}: {} ({} events before it are good)",
                bad.seq, bad.problem, report.good
            )?,
        }
    }
    Ok(report.first_bad.is_none())
}

/// `answerfeed demo`: ingests the bundled sample into `dir` (which must be new or empty), ingests
/// it again to show that nothing is appended twice, verifies the log and describes what it found.
pub fn demo(dir: &Path, store: StoreOptions, out: &mut dyn Write) -> Result<(), CommandError> {
    if let Ok(mut entries) = std::fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(CommandError::Usage(format!(
                "demo needs a new or empty data dir, and {} is not empty",
                dir.display()
            )));
        }
    }
    let mut log = EventLog::open(dir, store)?;
    let source = "bundled:written-answers-sample.txt";
    let first = ingest::ingest_text(
        &mut log,
        source,
        crate::BUNDLED_SAMPLE,
        FeedOrder::NewestFirst,
    )?;
    writeln!(
        out,
        "answerfeed demo: the bundled sample into {}",
        dir.display()
    )?;
    writeln!(out)?;
    print_summary(&first, false, out)?;
    writeln!(out)?;
    writeln!(out, "Records, newest first as the dump lists them:")?;
    let mut records: Vec<(u32, AnswerRecord)> = Vec::new();
    for envelope in log.events_from(1) {
        let envelope = envelope?;
        if let Some(record) = envelope.event.record() {
            let index = record.feed_position.map_or(u32::MAX, |p| p.index);
            records.push((index, record.clone()));
        }
    }
    records.sort_by_key(|(index, _)| *index);
    for (index, r) in &records {
        let seat = r
            .asking_member
            .constituency
            .as_deref()
            .or(r.asking_member.peerage.as_deref())
            .unwrap_or("");
        writeln!(
            out,
            "  [{index}] {} ({}, {seat}) asked the {}; {} answered",
            r.asking_member.name,
            r.asking_member.party.as_deref().unwrap_or("no party"),
            r.answering_body,
            r.answering_member.name,
        )?;
        writeln!(out, "      Q: {}", clip(&r.question_text, 110))?;
        let paragraphs = r.answer.paragraphs().count();
        writeln!(
            out,
            "      {paragraphs} paragraphs; forces named: {}",
            r.forces.len()
        )?;
        for block in &r.answer.blocks {
            if let Block::Table(t) = block {
                let totals = t.rows.iter().filter(|row| row.total).count();
                let with_force = t.rows.iter().filter(|row| row.force.is_some()).count();
                writeln!(
                    out,
                    "      table{}: header [{}], {} rows ({} total rows, {} rows naming a force)",
                    t.title
                        .as_deref()
                        .map(|title| format!(" \"{title}\""))
                        .unwrap_or_default(),
                    t.header.join(" | "),
                    t.rows.len(),
                    totals,
                    with_force
                )?;
            }
        }
    }
    writeln!(out)?;
    let again = ingest::ingest_text(
        &mut log,
        source,
        crate::BUNDLED_SAMPLE,
        FeedOrder::NewestFirst,
    )?;
    writeln!(
        out,
        "Ingested again: {} appended, {} already known (idempotent).",
        again.appended(),
        again.known
    )?;
    verify(&log, false, out)?;
    writeln!(out)?;
    writeln!(out, "Explore it:")?;
    let d = dir.display();
    writeln!(out, "  answerfeed --data-dir {d} events")?;
    writeln!(out, "  answerfeed --data-dir {d} questions")?;
    writeln!(out, "  answerfeed --data-dir {d} events --json --limit 1")?;
    Ok(())
}

/// The summary of a fetch cycle.
pub fn print_cycle(
    report: &crate::fetch::CycleReport,
    json: bool,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if json {
        let value = serde_json::to_value(report).map_err(std::io::Error::from)?;
        return writeln!(out, "{value}");
    }
    let range = match (report.from, report.to) {
        (Some(from), Some(to)) => format!("{from}..{to}"),
        _ => "-".to_string(),
    };
    writeln!(
        out,
        "fetch {range}: {}; {} pages, {} records seen ({} completed by id), {} events appended, {} already known, {} quarantined, {} retries; watermark {}",
        report.outcome,
        report.pages,
        report.records_seen,
        report.completed_by_id,
        report.appended,
        report.already_known,
        report.quarantined,
        report.retries,
        report
            .watermark
            .map_or("none".to_string(), |w| w.to_string())
    )
}

/// `answerfeed check-config`: what the configuration means, including the next run times.
pub fn check_config(
    config: &crate::config::Config,
    origin: &str,
    data_dir: &Path,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let schedule = crate::daemon::Schedule::parse(&config.fetch.schedule, &config.fetch.timezone)
        .map_err(CommandError::Usage)?;
    let mut next = Vec::new();
    let mut at = chrono::Utc::now();
    for _ in 0..3 {
        match schedule.next_after(at) {
            Some(t) => {
                next.push(t.to_rfc3339());
                at = t;
            }
            None => break,
        }
    }
    if json {
        let value = json!({
            "ok": true,
            "origin": origin,
            "data_dir": data_dir,
            "base_url": config.fetch.base_url,
            "schedule": config.fetch.schedule,
            "timezone": config.fetch.timezone,
            "next_runs_utc": next,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    writeln!(out, "config ok ({origin})")?;
    writeln!(out, "  data dir:  {}", data_dir.display())?;
    writeln!(out, "  API:       {}", config.fetch.base_url)?;
    writeln!(
        out,
        "  schedule:  {} ({}); next runs (UTC): {}",
        config.fetch.schedule,
        config.fetch.timezone,
        next.join(", ")
    )?;
    writeln!(
        out,
        "  each cycle re-reads {} days behind the watermark; first run reaches back {} days",
        config.fetch.overlap_days, config.fetch.first_run_days
    )?;
    Ok(())
}
