//! The CLI's commands as library functions: an open log and options in, text on a writer out.
//!
//! `main.rs` only parses arguments and calls these, so every command is testable without the
//! binary. Human output is for reading; `--json` output is one JSON object per line, stable for
//! scripts.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::event::{describe_flag, render_word_diff, FlagDetail, Style};
use crate::event::{Envelope, Event};
use crate::ingest::{self, FileSummary, IngestError, IngestOptions};
use crate::log::{EventLog, LogError, StoreOptions};
use crate::project::{QuestionFilter, Views};
use crate::record::{AnswerRecord, Block, FeedOrder};

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::PipelineError),
    #[error(transparent)]
    Project(#[from] crate::project::ProjectError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("{0}")]
    Output(#[from] std::io::Error),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Alert(#[from] crate::alert::AlertError),
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

/// `answerfeed questions`: the latest content of every question matching the filters, most
/// recently changed first, from the views.
pub fn questions(
    log: &EventLog,
    filter: &QuestionFilter,
    limit: Option<usize>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let views = Views::open(log)?;
    for view in views.questions(filter).take(limit.unwrap_or(usize::MAX)) {
        let view = view?;
        let envelope = log.get(view.latest_seq)?.ok_or_else(|| LogError::Corrupt {
            seq: view.latest_seq,
            problem: format!("the views point at it for {}", view.question),
        })?;
        let Some(record) = envelope.event.record() else {
            continue;
        };
        if json {
            let value = json!({
                "question": view.question,
                "seq": view.latest_seq,
                "kind": envelope.event.kind(),
                "content_hash": envelope.content_hash,
                "topics": view.topics,
                "revisions": view.history.len().saturating_sub(1),
                "flags": view.flags,
                "record": record,
            });
            writeln!(out, "{value}")?;
        } else {
            write_question(view.question.as_str(), &envelope, record, out)?;
            let mut extra = Vec::new();
            if !view.topics.is_empty() {
                extra.push(format!("topics: {}", view.topics.join(", ")));
            }
            if view.history.len() > 1 {
                extra.push(format!("{} versions", view.history.len()));
            }
            if !view.flags.is_empty() {
                extra.push(format!("{} flags", view.flags.len()));
            }
            if !extra.is_empty() {
                writeln!(out, "  {}", extra.join("; "))?;
            }
        }
    }
    Ok(())
}

/// Resolves a force name as users type it ("Met", "Kent Police", "gwent") to its id.
pub fn resolve_force(name: &str) -> Result<&'static crate::forces::Force, CommandError> {
    crate::forces::lookup(name)
        .or_else(|| crate::forces::by_id(name))
        .ok_or_else(|| {
            CommandError::Usage(format!("{name:?} is not a police force answerfeed knows"))
        })
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
pub fn demo(
    dir: &Path,
    store: StoreOptions,
    config: &crate::config::Config,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
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
    let derived = crate::pipeline::derive(&mut log, config)?;
    writeln!(
        out,
        "Flags raised by the diff module ({}):",
        derived.diff.flags_raised
    )?;
    let views = Views::open(&log)?;
    for seq in views.flag_seqs(None)? {
        if let Some(Envelope {
            event: Event::FlagRaised { flag },
            ..
        }) = log.get(seq)?
        {
            writeln!(
                out,
                "  #{seq} {}: {}",
                flag.detail.kind(),
                describe_flag(&flag)
            )?;
        }
    }
    writeln!(out)?;
    let again = ingest::ingest_text(
        &mut log,
        source,
        crate::BUNDLED_SAMPLE,
        FeedOrder::NewestFirst,
    )?;
    let derived_again = crate::pipeline::derive(&mut log, config)?;
    writeln!(
        out,
        "Ingested again: {} appended, {} already known, {} new flags (idempotent).",
        again.appended(),
        again.known,
        derived_again.diff.flags_raised
    )?;
    verify(&log, false, out)?;
    writeln!(out)?;
    writeln!(out, "Explore it:")?;
    let d = dir.display();
    writeln!(out, "  answerfeed --data-dir {d} events")?;
    writeln!(out, "  answerfeed --data-dir {d} questions")?;
    writeln!(
        out,
        "  answerfeed --data-dir {d} questions --topic domestic-abuse"
    )?;
    writeln!(
        out,
        "  answerfeed --data-dir {d} stats --force Metropolitan"
    )?;
    writeln!(out, "  answerfeed --data-dir {d} flags")?;
    writeln!(out, "  answerfeed --data-dir {d} duplicates")?;
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
        "fetch {range}: {}; {} pages, {} records seen ({} completed by id), {} events appended, {} already known ({} unchanged, not decoded), {} quarantined, {} retries; watermark {}",
        report.outcome,
        report.pages,
        report.records_seen,
        report.completed_by_id,
        report.appended,
        report.already_known,
        report.unchanged,
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
    let schedule = crate::schedule::Schedule::parse(&config.fetch.schedule, &config.fetch.timezone)
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

/// `answerfeed flags [--kind K] [--since DATE]`.
pub fn flags(
    log: &EventLog,
    kind: Option<&str>,
    since: Option<chrono::NaiveDate>,
    json: bool,
    style: Style,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    if let Some(kind) = kind {
        if !crate::event::FLAG_KINDS.contains(&kind) {
            return Err(CommandError::Usage(format!(
                "unknown flag kind {kind:?}; kinds: {}",
                crate::event::FLAG_KINDS.join(", ")
            )));
        }
    }
    let views = Views::open(log)?;
    let since = since.map(|d| d.format("%Y-%m-%d").to_string());
    for seq in views.flag_seqs(kind)? {
        let Some(envelope) = log.get(seq)? else {
            continue;
        };
        if since
            .as_deref()
            .is_some_and(|s| envelope.recorded_at.as_str() < s)
        {
            continue;
        }
        let Event::FlagRaised { flag } = &envelope.event else {
            continue;
        };
        if json {
            serde_json::to_writer(&mut *out, &envelope).map_err(std::io::Error::from)?;
            writeln!(out)?;
            continue;
        }
        let day = &envelope.recorded_at[..envelope.recorded_at.len().min(10)];
        write_flag(out, &format!("#{seq} {day}"), flag, style)?;
    }
    Ok(())
}

/// One flag for reading: `label kind  description`, then the word diff of a changed answer.
fn write_flag(
    out: &mut dyn Write,
    label: &str,
    flag: &crate::event::Flag,
    style: Style,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{label} {}  {}",
        flag.detail.kind(),
        describe_flag(flag)
    )?;
    if let FlagDetail::AnswerChanged { changes, .. } = &flag.detail {
        writeln!(out, "    {}", render_word_diff(changes, style))?;
    }
    Ok(())
}

/// `answerfeed show ID`: a question's latest answer, its versions and its flags.
pub fn show(
    log: &EventLog,
    id: &str,
    json: bool,
    style: Style,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let views = Views::open(log)?;
    let view = views.resolve(id)?.ok_or_else(|| {
        CommandError::Usage(format!(
            "no question {id:?} (use a key from 'questions', or an API id)"
        ))
    })?;
    let envelope = log.get(view.latest_seq)?.ok_or_else(|| LogError::Corrupt {
        seq: view.latest_seq,
        problem: format!("the views point at it for {}", view.question),
    })?;
    let flag_events: Vec<Envelope> = view
        .flags
        .iter()
        .filter_map(|seq| log.get(*seq).transpose())
        .collect::<Result<_, _>>()?;
    if json {
        let value = json!({
            "view": view,
            "latest": envelope,
            "flags": flag_events,
        });
        writeln!(out, "{value}")?;
        return Ok(());
    }
    let Some(record) = envelope.event.record() else {
        return Ok(());
    };
    write_question(view.question.as_str(), &envelope, record, out)?;
    if let Some(url) = record.api.as_ref().and_then(|a| a.url.as_deref()) {
        writeln!(out, "  {url}")?;
    }
    writeln!(out)?;
    writeln!(out, "{}", record.answer.plain_text())?;
    writeln!(out)?;
    writeln!(out, "Versions:")?;
    for entry in &view.history {
        writeln!(out, "  #{} {} {}", entry.seq, entry.recorded_at, entry.kind)?;
    }
    if !flag_events.is_empty() {
        writeln!(out, "Flags:")?;
        for e in &flag_events {
            if let Event::FlagRaised { flag } = &e.event {
                write_flag(out, &format!("  #{}", e.seq), flag, style)?;
            }
        }
    }
    Ok(())
}

/// `answerfeed stats --force F [--measure M]`.
pub fn stats(
    log: &EventLog,
    force: &str,
    measure: Option<&str>,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let force = resolve_force(force)?;
    let views = Views::open(log)?;
    for row in views.stats(force.id, measure) {
        let row = row?;
        if json {
            serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
            writeln!(out)?;
        } else {
            writeln!(
                out,
                "{}\t{}\t{}\t{}\t{} #{}",
                row.stat.force,
                if row.stat.period.is_empty() {
                    "-"
                } else {
                    &row.stat.period
                },
                row.stat.measure,
                row.stat.value,
                row.question,
                row.seq
            )?;
        }
    }
    Ok(())
}

/// `answerfeed duplicates`: groups of answers given to more than one question.
pub fn duplicates(log: &EventLog, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let views = Views::open(log)?;
    for (group, members) in views.duplicate_groups()? {
        if json {
            writeln!(
                out,
                "{}",
                json!({"group": group, "count": members.len(), "members": members})
            )?;
            continue;
        }
        let heading = views
            .question(group.as_str())?
            .and_then(|v| v.heading.clone())
            .unwrap_or_default();
        writeln!(
            out,
            "this answer was given {} times{}",
            members.len(),
            if heading.is_empty() {
                String::new()
            } else {
                format!(" ({heading})")
            }
        )?;
        for m in &members {
            let how = if m.question == group {
                "first".to_string()
            } else if m.exact {
                "identical".to_string()
            } else {
                format!("similarity {:.3}", m.ratio)
            };
            let asked = views
                .question(m.question.as_str())?
                .map(|v| format!("{} to the {}", v.asking_member, v.answering_body))
                .unwrap_or_default();
            writeln!(out, "  {}  {how}  {asked}", m.question)?;
        }
    }
    Ok(())
}

/// `answerfeed export --format jsonl|csv --view questions|stats|flags`, streamed.
pub fn export(
    log: &EventLog,
    format: &str,
    view: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let views = Views::open(log)?;
    let csv = match format {
        "csv" => true,
        "jsonl" => false,
        other => {
            return Err(CommandError::Usage(format!(
                "unknown export format {other:?} (jsonl or csv)"
            )))
        }
    };
    match view {
        "questions" => {
            if csv {
                writeln!(out, "question,api_id,uin,date_answered,answering_body,asking_member,answering_member,kind,latest_seq,versions,topics,forces,flags,question_text,answer_text")?;
            }
            let filter = QuestionFilter::default();
            for v in views.questions(&filter) {
                let v = v?;
                let envelope = log.get(v.latest_seq)?;
                let record = envelope.as_ref().and_then(|e| e.event.record());
                if csv {
                    let fields = [
                        v.question.0.clone(),
                        v.api_id.map(|i| i.to_string()).unwrap_or_default(),
                        v.uin.clone().unwrap_or_default(),
                        v.date_answered.clone().unwrap_or_default(),
                        v.answering_body.clone(),
                        v.asking_member.clone(),
                        v.answering_member.clone(),
                        v.kind.clone(),
                        v.latest_seq.to_string(),
                        v.history.len().to_string(),
                        v.topics.join(";"),
                        v.forces.join(";"),
                        v.flags.len().to_string(),
                        record.map(|r| r.question_text.clone()).unwrap_or_default(),
                        record.map(|r| r.answer.plain_text()).unwrap_or_default(),
                    ];
                    writeln!(out, "{}", csv_line(&fields))?;
                } else {
                    writeln!(out, "{}", json!({"view": v, "record": record}))?;
                }
            }
        }
        "stats" => {
            if csv {
                writeln!(
                    out,
                    "force_id,force,period,measure,value,question,seq,table,row"
                )?;
            }
            for row in views.all_stats() {
                let row = row?;
                if csv {
                    let fields = [
                        row.stat.force_id.clone(),
                        row.stat.force.clone(),
                        row.stat.period.clone(),
                        row.stat.measure.clone(),
                        row.stat.value.to_string(),
                        row.question.0.clone(),
                        row.seq.to_string(),
                        row.stat.table.to_string(),
                        row.stat.row.to_string(),
                    ];
                    writeln!(out, "{}", csv_line(&fields))?;
                } else {
                    serde_json::to_writer(&mut *out, &row).map_err(std::io::Error::from)?;
                    writeln!(out)?;
                }
            }
        }
        "flags" => {
            if csv {
                writeln!(out, "seq,recorded_at,kind,question,derived_from,summary")?;
            }
            for seq in views.flag_seqs(None)? {
                let Some(envelope) = log.get(seq)? else {
                    continue;
                };
                let Event::FlagRaised { flag } = &envelope.event else {
                    continue;
                };
                if csv {
                    let fields = [
                        seq.to_string(),
                        envelope.recorded_at.clone(),
                        flag.detail.kind().to_string(),
                        flag.question
                            .as_ref()
                            .map(|q| q.0.clone())
                            .unwrap_or_default(),
                        flag.derived_from.to_string(),
                        describe_flag(flag),
                    ];
                    writeln!(out, "{}", csv_line(&fields))?;
                } else {
                    serde_json::to_writer(&mut *out, &envelope).map_err(std::io::Error::from)?;
                    writeln!(out)?;
                }
            }
        }
        other => {
            return Err(CommandError::Usage(format!(
                "unknown view {other:?} (questions, stats or flags)"
            )))
        }
    }
    Ok(())
}

/// One CSV record (RFC 4180: fields with commas, quotes or line breaks are quoted).
fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `answerfeed alerts list`.
pub fn alerts_list(log: &EventLog, json: bool, out: &mut dyn Write) -> Result<(), CommandError> {
    let mut items = crate::alert::outbox(log)?;
    items.reverse();
    for item in items {
        if json {
            serde_json::to_writer(&mut *out, &item).map_err(std::io::Error::from)?;
            writeln!(out)?;
            continue;
        }
        let state = item.state_name();
        writeln!(
            out,
            "{}  {state:<8} {} -> {}  events {:?}{}",
            item.id,
            item.kind,
            item.recipient,
            item.seqs,
            item.last_error
                .as_deref()
                .map(|e| format!("  (attempts {}, last error: {e})", item.attempts))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// `answerfeed alerts preview ID`: the email as it would be sent.
pub fn alerts_preview(
    log: &EventLog,
    config: &crate::config::Config,
    id: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let item = crate::alert::item(log, id)?.ok_or_else(|| {
        CommandError::Usage(format!("no alert {id:?} in the outbox (see 'alerts list')"))
    })?;
    let rendered = crate::alert::render(log, config, &item)?;
    writeln!(out, "To: {}", item.recipient)?;
    writeln!(out, "Subject: {}", rendered.subject)?;
    writeln!(out, "Message-ID: {}", item.message_id)?;
    writeln!(out, "\n--- text/plain ---\n{}", rendered.text)?;
    writeln!(out, "--- text/html ---\n{}", rendered.html)?;
    Ok(())
}

/// `answerfeed alerts send-test RECIPIENT`.
pub fn alerts_send_test(
    config: &crate::config::Config,
    mailer: &dyn crate::alert::MailTransport,
    recipient: &str,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let message = crate::alert::test_message(config, recipient)?;
    mailer
        .send(&message)
        .map_err(|e| crate::alert::AlertError::Smtp(e.message))?;
    writeln!(
        out,
        "test message sent to {recipient} via {}:{}",
        config.smtp.host, config.smtp.port
    )?;
    Ok(())
}

/// `answerfeed alerts send`: delivers what is due now.
pub fn alerts_send(
    log: &mut EventLog,
    config: &crate::config::Config,
    mailer: &dyn crate::alert::MailTransport,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let report = crate::alert::deliver(log, config, mailer, chrono::Utc::now())?;
    // What was just sent is in the log now: bring the outbox's view of it up to date.
    crate::pipeline::derive(log, config)?;
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_value(&report).map_err(std::io::Error::from)?
        )?;
    } else {
        writeln!(
            out,
            "alerts: {} sent, {} failed (will retry), {} waiting, {} digests made",
            report.sent, report.failed, report.waiting, report.digests_made
        )?;
    }
    Ok(())
}
