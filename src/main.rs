//! The `answerfeed` binary: parses arguments, sets up logging, calls the library.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use answerfeed::commands::{self, CommandError};
use answerfeed::config::{Config, LogFormat};
use answerfeed::ingest::{Format, IngestOptions};
use answerfeed::log::{EventLog, StoreOptions};
use answerfeed::record::FeedOrder;

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
    /// The answers currently known: the latest content of each question
    Questions {
        /// Print at most N questions
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Check every stored event: checksum, sequence continuity, decoding, index
    Verify,
    /// Ingest the bundled sample into a fresh data dir and show what was found
    Demo,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum FormatArg {
    /// Decide from the content
    Auto,
    /// The plain-text dump format ("Asked by: ...")
    Text,
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
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::defaults()?,
    };
    init_tracing(&config, cli.verbose);
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.clone());
    let store = StoreOptions {
        cache_bytes: config.store.cache_mb * 1024 * 1024,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();

    let code = match cli.command {
        Command::Ingest {
            files,
            format,
            oldest_first,
        } => {
            let mut log = EventLog::open(&data_dir, store)?;
            let options = IngestOptions {
                format: match format {
                    FormatArg::Auto => Format::Auto,
                    FormatArg::Text => Format::Text,
                },
                order: if oldest_first {
                    FeedOrder::OldestFirst
                } else {
                    FeedOrder::NewestFirst
                },
            };
            commands::ingest(&mut log, &files, options, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Events { from, limit } => {
            let log = EventLog::open(&data_dir, store)?;
            commands::events(&log, from, limit, cli.json, &mut out)?;
            ExitCode::SUCCESS
        }
        Command::Questions { limit } => {
            let log = EventLog::open(&data_dir, store)?;
            commands::questions(&log, limit, cli.json, &mut out)?;
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
        Command::Demo => {
            let dir = match cli.data_dir {
                Some(dir) => dir,
                None => fresh_demo_dir()?,
            };
            match commands::demo(&dir, store, &mut out) {
                Err(CommandError::Usage(message)) => anyhow::bail!(message),
                other => other?,
            }
            ExitCode::SUCCESS
        }
    };
    out.flush()?;
    Ok(code)
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
