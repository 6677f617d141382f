//! The `answerfeed` binary: parses arguments, sets up logging, calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use answerfeed::commands::{self, CommandError};
use answerfeed::config::{Config, LogFormat};
use answerfeed::fetch::{ApiClient, FetchError};
use answerfeed::ingest::{Format, IngestOptions};
use answerfeed::log::{EventLog, LogError, StoreOptions};
use answerfeed::ops::{Remote, RemoteRequest};
use answerfeed::project::QuestionFilter;
use answerfeed::record::FeedOrder;
use answerfeed::schedule::Schedule;
use answerfeed::shutdown::Shutdown;

mod allocator;

#[derive(Parser, Debug)]
#[command(
    name = "answerfeed",
    version,
    about = "Watches UK Parliament written answers and keeps an exact, replayable history of them"
)]
struct Cli {
    /// Data directory holding the event log [default: from config, "data"]
    #[arg(long, global = true, env = "ANSWERFEED_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Config file read over the built-in defaults (config/default.toml)
    #[arg(long, global = true, env = "ANSWERFEED_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Machine-readable output: one JSON object per line
    #[arg(long, global = true)]
    json: bool,

    /// More log output on stderr (-v info, -vv debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Parse files and append what is new to the log
    Ingest {
        /// Files to ingest
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// Input format
        #[arg(long, value_enum, default_value_t = FormatArg::Auto)]
        format: FormatArg,
        /// The file lists its oldest record first (dumps from the Parliament site list newest first)
        #[arg(long)]
        oldest_first: bool,
    },
    /// Print events from the log, in order
    Events {
        /// First sequence number to print
        #[arg(long, default_value_t = 1, value_name = "SEQ")]
        from: u64,
        /// Print at most N events
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// The answers currently known (latest content of each question), newest first
    Questions {
        /// Only questions in this topic (see [[topics]] in config)
        #[arg(long, value_name = "T")]
        topic: Option<String>,
        /// Only questions to this answering body ("Home Office")
        #[arg(long, value_name = "B")]
        body: Option<String>,
        /// Only questions asked by this member
        #[arg(long, value_name = "M")]
        member: Option<String>,
        /// Only answers naming this police force ("Met", "Kent Police", ...)
        #[arg(long, value_name = "F")]
        force: Option<String>,
        /// Print at most N questions
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// One question: its latest answer, its versions and its flags
    Show {
        /// A question key from 'questions' (api:..., txt:...) or an API id
        id: String,
    },
    /// Figures from answer tables for one police force
    Stats {
        /// The force ("Metropolitan", "MPS", "Kent Police", ...)
        #[arg(long, value_name = "F")]
        force: String,
        /// Only measures containing this text
        #[arg(long, value_name = "M")]
        measure: Option<String>,
    },
    /// What the diff module flagged: corrections, tracked lists, duplicates, figures, totals
    Flags {
        /// Only flags of this kind (answer_changed, tracked_list_changed, duplicate_answer,
        /// figure_changed, total_mismatch)
        #[arg(long, value_name = "K")]
        kind: Option<String>,
        /// Only flags recorded on or after this date (YYYY-MM-DD)
        #[arg(long, value_name = "DATE")]
        since: Option<chrono::NaiveDate>,
    },
    /// Groups of answers given to more than one question
    Duplicates,
    /// Export a view for analysts
    Export {
        #[arg(long, value_parser = ["jsonl", "csv"], default_value = "jsonl")]
        format: String,
        #[arg(long, value_parser = ["questions", "stats", "flags"], default_value = "questions")]
        view: String,
    },
    /// Drop every projection and replay the log; prints the views' digest before and after
    Rebuild,
    /// Alert emails: the outbox, previews, a test message, sending now
    Alerts {
        #[command(subcommand)]
        action: AlertsAction,
    },
    /// Check every stored event: checksum, sequence continuity, decoding, index
    Verify,
    /// Pull new and changed answers from the Parliament API: one cycle, then a summary
    Fetch {
        /// Run one cycle and exit (the daemon runs cycles on the schedule)
        #[arg(long)]
        once: bool,
        /// Read from this date (YYYY-MM-DD) instead of the watermark: a backfill
        #[arg(long, value_name = "DATE")]
        since: Option<chrono::NaiveDate>,
        /// Read up to this date (YYYY-MM-DD) instead of today
        #[arg(long, value_name = "DATE")]
        until: Option<chrono::NaiveDate>,
        /// The API's base URL [default: fetch.base_url from config]
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
    },
    /// Run fetch cycles on the configured cron schedule until SIGINT/SIGTERM
    Daemon {
        /// The API's base URL [default: fetch.base_url from config]
        #[arg(long, value_name = "URL")]
        base_url: Option<String>,
    },
    /// Validate the configuration (file, environment) and show what it means
    CheckConfig,
    /// The state of things: last cycle, watermark, log, consumers, outbox, disk use
    Status,
    /// Write a consistent copy of the data dir to DIR (new or empty); safe while the daemon runs
    Backup { dir: PathBuf },
    /// Restore a backup into the data dir (which must be new or empty)
    Restore { from: PathBuf },
    /// Rewrite the data dir compactly (the daemon must be stopped); keeps the old one beside it
    Compact,
    /// Ingest the bundled sample into a fresh data dir and show what was found
    Demo,
}

#[derive(Subcommand, Debug)]
enum AlertsAction {
    /// The outbox: alerts waiting, being sent and sent
    List,
    /// Render one alert (an id from 'alerts list') to stdout
    Preview { id: String },
    /// Send a test message through the configured SMTP server
    SendTest { recipient: String },
    /// Send the alerts that are due now (the daemon does this on its own)
    Send,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// Decide from the content
    Auto,
    /// The plain-text dump format ("Asked by: ...")
    Text,
    /// Recorded API data: a response envelope, a JSON array of records, or JSON lines
    Api,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// clap's errors span several lines; ours are one line, with a pointer to --help.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = e.print();
        return ExitCode::from(2);
    }
    let rendered = e.render().to_string();
    let first = rendered
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    eprintln!("error: {first} (see 'answerfeed --help')");
    ExitCode::from(2)
}

/// The error and its causes on one line; a cause already quoted by the message above it (our
/// errors name their cause) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::resolve(cli.config.as_deref(), &|name| std::env::var(name).ok())?;
    // The daemon's log is its only voice: it reports cycles at info unless told otherwise.
    let floor = if matches!(cli.command, Command::Daemon { .. }) {
        1
    } else {
        0
    };
    init_tracing(&config, cli.verbose.max(floor));
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    let store = StoreOptions {
        cache_bytes: config.store.cache_mb * 1024 * 1024,
        min_free_bytes: config.store.min_free_mb * 1024 * 1024,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();

    if let Some(remote) = remote_command(&cli.command) {
        match EventLog::open(&data_dir, store) {
            Ok(log) => drop(log),
            Err(LogError::Locked { .. }) => {
                return forward_to_daemon(&config, remote, cli.json, &mut out);
            }
            Err(e) => return Err(e.into()),
        }
    }
    let code = match cli.command {
        Command::Ingest {
            files,
            format,
            oldest_first,
        } => {
            let mut log = open_for_write(&data_dir, store, "ingest")?;
            let options = IngestOptions {
                format: match format {
                    FormatArg::Auto => Format::Auto,
                    FormatArg::Text => Format::Text,
                    FormatArg::Api => Format::Api,
                },
                order: if oldest_first {
                    FeedOrder::OldestFirst
                } else {
                    FeedOrder::NewestFirst
                },
            };
            // Flags and views are derived on a second thread while the files go in.
            let follower = answerfeed::pipeline::Follower::start(&mut log, &config);
            let ingested = commands::ingest(&mut log, &files, options, cli.json, &mut out);
            let derived = follower.finish()?;
            ingested?;
            if !cli.json && derived.diff.flags_raised > 0 {
                writeln!(
                    out,
                    "{} flags raised (see 'answerfeed flags')",
                    derived.diff.flags_raised
                )?;
            }
            ExitCode::SUCCESS
        }
        Command::Events { from, limit } => {
            let log = EventLog::open(&data_dir, store)?;
            commands::events(&log, from, limit, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Questions {
            topic,
            body,
            member,
            force,
            limit,
        } => {
            let log = open_derived(&data_dir, store, &config)?;
            let force = match force {
                Some(name) => Some(usage(commands::resolve_force(&name))?.id.to_string()),
                None => None,
            };
            let filter = QuestionFilter {
                topic,
                body,
                member,
                force,
            };
            commands::questions(&log, &filter, limit, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Show { id } => {
            let log = open_derived(&data_dir, store, &config)?;
            usage(commands::show(&log, &id, cli.json, style(), &mut out))?;
            ExitCode::SUCCESS
        }
        Command::Stats { force, measure } => {
            let log = open_derived(&data_dir, store, &config)?;
            usage(commands::stats(
                &log,
                &force,
                measure.as_deref(),
                cli.json,
                &mut out,
            ))?;
            ExitCode::SUCCESS
        }
        Command::Flags { kind, since } => {
            let log = open_derived(&data_dir, store, &config)?;
            usage(commands::flags(
                &log,
                kind.as_deref(),
                since,
                cli.json,
                style(),
                &mut out,
            ))?;
            ExitCode::SUCCESS
        }
        Command::Duplicates => {
            let log = open_derived(&data_dir, store, &config)?;
            commands::duplicates(&log, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Export { format, view } => {
            let log = open_derived(&data_dir, store, &config)?;
            usage(commands::export(&log, &format, &view, &mut out))?;
            ExitCode::SUCCESS
        }
        Command::Rebuild => {
            let mut log = open_for_write(&data_dir, store, "rebuild")?;
            let (before, after, report) = answerfeed::pipeline::rebuild_views(&mut log, &config)?;
            if cli.json {
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({"events": report.events_applied, "checkpoint": report.checkpoint, "digest_before": before, "digest_after": after, "identical": before == after})
                )?;
            } else {
                writeln!(
                    out,
                    "views rebuilt from {} events (checkpoint #{}); digest {} ({})",
                    report.events_applied,
                    report.checkpoint,
                    &after[..16],
                    if before == after {
                        "identical to the incremental views".to_string()
                    } else {
                        format!("the incremental views had {}", &before[..16])
                    }
                )?;
            }
            ExitCode::SUCCESS
        }
        Command::Verify => {
            let log = EventLog::open(&data_dir, store)?;
            if commands::verify(&log, cli.json, &mut out)? {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Fetch {
            once,
            since,
            until,
            base_url,
        } => {
            if !once {
                eprintln!(
                    "error: fetch runs one cycle and needs --once; use 'answerfeed daemon' to run on the schedule"
                );
                return Ok(ExitCode::from(2));
            }
            if let Some(url) = base_url {
                config.fetch.base_url = url;
            }
            let mut log = open_for_write(&data_dir, store, "fetch")?;
            let options = answerfeed::fetch::CycleOptions {
                since,
                until,
                progress: true,
            };
            // Flags and views are derived on a second thread while pages arrive.
            let follower = answerfeed::pipeline::Follower::start(&mut log, &config);
            let outcome = runtime()?.block_on(async {
                let shutdown = Shutdown::new();
                shutdown.install_signal_handlers()?;
                let client = ApiClient::new(&config.fetch, shutdown.clone())?;
                let (report, result) = answerfeed::fetch::run_cycle(
                    &mut log,
                    &client,
                    &config.fetch,
                    &options,
                    &shutdown,
                )
                .await;
                anyhow::Ok((report, result))
            })?;
            // What did reach the log is flagged and projected even when the cycle failed later.
            let derived = follower.finish();
            let (report, result) = outcome;
            derived?;
            commands::print_cycle(&report, cli.json, &mut out)?;
            out.flush()?;
            match result {
                Ok(()) | Err(FetchError::Interrupted) => ExitCode::SUCCESS,
                Err(e) => return Err(e.into()),
            }
        }
        Command::Daemon { base_url } => {
            if let Some(url) = base_url {
                config.fetch.base_url = url;
            }
            let schedule = Schedule::parse(&config.fetch.schedule, &config.fetch.timezone)
                .map_err(|e| anyhow::anyhow!("fetch.schedule: {e}"))?;
            let log = open_for_write(&data_dir, store, "daemon")?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(&config.ops.listen)
                    .await
                    .with_context(|| {
                        format!("cannot listen on ops.listen {}", config.ops.listen)
                    })?;
                let shutdown = Shutdown::new();
                shutdown.install_signal_handlers()?;
                let client = ApiClient::new(&config.fetch, shutdown.clone())?;
                answerfeed::daemon::run(
                    log,
                    &client,
                    &config,
                    &schedule,
                    &shutdown,
                    Some(listener),
                    allocator::return_freed_memory,
                )
                .await?;
                anyhow::Ok(())
            })?;
            ExitCode::SUCCESS
        }
        Command::Alerts { action } => {
            match action {
                AlertsAction::List => {
                    let log = open_derived(&data_dir, store, &config)?;
                    commands::alerts_list(&log, cli.json, &mut out)?;
                }
                AlertsAction::Preview { id } => {
                    let log = open_derived(&data_dir, store, &config)?;
                    usage(commands::alerts_preview(&log, &config, &id, &mut out))?;
                }
                AlertsAction::SendTest { recipient } => {
                    let mailer = answerfeed::alert::SmtpMailer::new(&config.smtp)?;
                    commands::alerts_send_test(&config, &mailer, &recipient, &mut out)?;
                }
                AlertsAction::Send => {
                    let mut log = open_for_write(&data_dir, store, "alerts send")?;
                    answerfeed::pipeline::derive(&mut log, &config)?;
                    let mailer = answerfeed::alert::SmtpMailer::new(&config.smtp)?;
                    commands::alerts_send(&mut log, &config, &mailer, cli.json, &mut out)?;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Status => {
            let log = open_derived(&data_dir, store, &config)?;
            answerfeed::ops::print_status(
                &answerfeed::ops::status(&log, None)?,
                cli.json,
                &mut out,
            )?;
            ExitCode::SUCCESS
        }
        Command::Backup { dir } => {
            let log = EventLog::open(&data_dir, store)?;
            let report = answerfeed::ops::backup(&log, &dir)?;
            answerfeed::ops::print_backup(&report, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Restore { from } => {
            if std::fs::read_dir(&data_dir).is_ok_and(|mut d| d.next().is_some()) {
                anyhow::bail!(
                    "restore needs a new or empty data dir, and {} is not empty",
                    data_dir.display()
                );
            }
            let source = EventLog::open(&from, store)
                .with_context(|| format!("cannot open the backup {}", from.display()))?;
            let report = answerfeed::ops::backup(&source, &data_dir)?;
            drop(source);
            let mut log = EventLog::open(&data_dir, store)?;
            answerfeed::pipeline::derive(&mut log, &config)?;
            writeln!(
                out,
                "restored {} events from {} into {}; views, flags and the outbox were derived again",
                report.events,
                from.display(),
                data_dir.display()
            )?;
            ExitCode::SUCCESS
        }
        Command::Compact => {
            drop(open_for_write(&data_dir, store, "compact")?);
            answerfeed::ops::compact(&data_dir, &config, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::CheckConfig => {
            let origin = cli
                .config
                .as_ref()
                .map_or("built-in defaults".to_string(), |p| p.display().to_string());
            commands::check_config(&config, &origin, &data_dir, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Demo => {
            let dir = match cli.data_dir {
                Some(dir) => dir,
                None => fresh_demo_dir()?,
            };
            match commands::demo(&dir, store, &config, &mut out) {
                Err(CommandError::Usage(message)) => anyhow::bail!(message),
                other => other?,
            }
            ExitCode::SUCCESS
        }
    };
    out.flush()?;
    Ok(code)
}

/// The read-only commands that can be answered by a running daemon.
fn remote_command(command: &Command) -> Option<Remote> {
    Some(match command {
        Command::Status => Remote::Status,
        Command::Events { from, limit } => Remote::Events {
            from: *from,
            limit: *limit,
        },
        Command::Questions {
            topic,
            body,
            member,
            force,
            limit,
        } => Remote::Questions {
            topic: topic.clone(),
            body: body.clone(),
            member: member.clone(),
            force: force.clone(),
            limit: *limit,
        },
        Command::Show { id } => Remote::Show { id: id.clone() },
        Command::Stats { force, measure } => Remote::Stats {
            force: force.clone(),
            measure: measure.clone(),
        },
        Command::Flags { kind, since } => Remote::Flags {
            kind: kind.clone(),
            since: *since,
        },
        Command::Duplicates => Remote::Duplicates,
        Command::Export { format, view } => Remote::Export {
            format: format.clone(),
            view: view.clone(),
        },
        Command::Verify => Remote::Verify,
        Command::Alerts {
            action: AlertsAction::List,
        } => Remote::AlertsList,
        Command::Alerts {
            action: AlertsAction::Preview { id },
        } => Remote::AlertsPreview { id: id.clone() },
        Command::Backup { dir } => Remote::Backup {
            // The daemon may run in another directory: give it an absolute path.
            dir: std::path::absolute(dir).unwrap_or_else(|_| dir.clone()),
        },
        _ => return None,
    })
}

/// Runs a read-only command in the daemon that holds the data dir, and prints its answer.
fn forward_to_daemon(
    config: &Config,
    command: Remote,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let request = RemoteRequest {
        command,
        json,
        colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let response = runtime()?
        .block_on(answerfeed::ops::forward(&config.ops.listen, &request))
        .context("the data dir is held by a running daemon, and asking it failed")?;
    out.write_all(response.stdout.as_bytes())?;
    out.flush()?;
    if let Some(error) = response.error {
        eprintln!("error: {error}");
    }
    Ok(ExitCode::from(response.exit_code))
}

/// Opens the log for a command that writes to it, with a clear word when the daemon holds it.
fn open_for_write(
    data_dir: &std::path::Path,
    store: StoreOptions,
    what: &str,
) -> anyhow::Result<EventLog> {
    match EventLog::open(data_dir, store) {
        Err(LogError::Locked { holder, .. }) => anyhow::bail!(
            "'{what}' writes to the data dir {}, which a running answerfeed{holder} holds; stop it first (the daemon fetches and sends alerts by itself)",
            data_dir.display()
        ),
        other => Ok(other?),
    }
}

/// Opens the log and brings flags and views up to its head, for commands that read views.
fn open_derived(
    data_dir: &std::path::Path,
    store: StoreOptions,
    config: &Config,
) -> anyhow::Result<EventLog> {
    let mut log = EventLog::open(data_dir, store)?;
    answerfeed::pipeline::derive(&mut log, config)?;
    Ok(log)
}

/// A command's own "you asked for something that is not there" becomes a plain error line.
fn usage<T>(result: Result<T, CommandError>) -> anyhow::Result<T> {
    match result {
        Err(CommandError::Usage(message)) => Err(anyhow::anyhow!(message)),
        other => Ok(other?),
    }
}

/// Colour diffs only for a person at a terminal.
fn style() -> answerfeed::event::Style {
    use std::io::IsTerminal;
    answerfeed::event::Style {
        colour: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    }
}

/// One thread is plenty: the work is one request at a time and the log is single-writer.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// A new directory under the system temp dir, so that `demo` never touches a real data dir.
fn fresh_demo_dir() -> anyhow::Result<PathBuf> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("answerfeed-demo-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create demo data dir {}", dir.display()))?;
    Ok(dir)
}

fn init_tracing(config: &Config, verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => config.logging.level.clone(),
        1 => "info".to_string(),
        _ => "debug".to_string(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (never expected) is harmless, so its error is ignored.
    let _ = match config.logging.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::allocator;
    use std::ffi::CStr;

    /// An option's value as jemalloc runs with it (`opt.<name>`), read as a `T` of the option's
    /// own C type.
    fn option<T: Copy + Default>(name: &CStr) -> Option<T> {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` and `len` are valid for writes of a T and its size; jemalloc refuses
        // (non-zero) a size that is not the option's.
        let rc = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&mut value as *mut T).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0).then_some(value)
    }

    /// The options compiled in by `src/allocator.rs` are the ones jemalloc runs with (the symbol
    /// was linked, and read: without it the decay would be jemalloc's default of 10 s), unless
    /// the environment changes them.
    #[test]
    fn jemalloc_runs_with_the_compiled_in_options() {
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return;
        }
        assert_eq!(option::<isize>(c"opt.dirty_decay_ms"), Some(10));
        assert_eq!(option::<isize>(c"opt.muzzy_decay_ms"), Some(0));
        assert_eq!(option::<u32>(c"opt.narenas"), Some(2));
        // Callable from any thread, with nothing to hand back or not.
        allocator::return_freed_memory();
    }
}
