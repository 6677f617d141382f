//! Throughput benchmark: `cargo bench --bench throughput` (release build).
//!
//! Generates realistic synthetic API records (HTML answers with paragraphs and tables, members,
//! bodies, 1-3 KB each, a share of corrections, holding answers and near-duplicates), then
//! measures, each on a fresh data dir:
//!   - ingest of recorded API data from a local file (parse + log append), answers/s;
//!   - a full backfill over HTTP from a local API server (fetch cycle), answers/s;
//!   - deriving flags, views and the outbox over the whole log;
//!   - `rebuild` of the views;
//!   - duplicate detection alone at N/4, N/2 and N (to show how it grows);
//!   - an idle cycle (nothing new): CPU time and bytes written;
//!   - peak RSS and log bytes per answer.
//!
//! `BENCH_N` sets the number of answers (default 20,000; the README reports 200,000 runs).
//! Prints one line per figure; run it a few times and take the median.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use answerfeed::config::Config;
use answerfeed::fetch::{self, ApiClient, CycleOptions};
use answerfeed::log::{EventLog, StoreOptions};
use answerfeed::shutdown::Shutdown;

// The same allocator, with the same options, as the binary, so the figures are the binary's.
#[path = "../src/allocator.rs"]
#[allow(dead_code)]
mod allocator;

fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!(
        "answerfeed throughput benchmark, {n} answers, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    let records = generate(n);
    let total_bytes: usize = records.iter().map(|r| r.json.len()).sum();
    println!(
        "generated: {} records, {:.1} MB of JSON ({} bytes/record)",
        n,
        total_bytes as f64 / 1e6,
        total_bytes / n.max(1)
    );
    // For process-level figures (peak RSS of the real binary; see README): write the records
    // as JSON lines, or serve them, instead of benchmarking.
    if let Ok(path) = std::env::var("BENCH_DUMP") {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("dump file"));
        for r in &records {
            f.write_all(r.json.as_bytes()).expect("write");
            f.write_all(b"\n").expect("write");
        }
        f.flush().expect("flush");
        println!("wrote {n} records to {path}");
        return;
    }
    if std::env::var("BENCH_SERVE").is_ok() {
        let server = BenchServer::start(records);
        println!("serving {n} records at {}", server.base_url);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let config = Config::defaults().expect("defaults");

    let tmp = tempfile::tempdir().expect("tempdir");
    if phase("ingest") {
        // 1. Ingest from a local file.
        let file = tmp.path().join("records.jsonl");
        {
            let mut f = std::fs::File::create(&file).expect("file");
            for r in &records {
                f.write_all(r.json.as_bytes()).expect("write");
                f.write_all(b"\n").expect("write");
            }
        }
        // As `answerfeed ingest` does it (without the views following): JSON lines streamed,
        // the next batches decoded while one is appended.
        let dir = tmp.path().join("ingest");
        let mut log = EventLog::open(&dir, store_options()).expect("open");
        settle_disk();
        let started = Instant::now();
        let summary = answerfeed::ingest::ingest_file(
            &mut log,
            &file,
            answerfeed::ingest::IngestOptions::default(),
        )
        .expect("ingest");
        let ingest = started.elapsed();
        report("ingest (file -> parse -> log)", n, ingest);
        assert_eq!(summary.records, n);
        // On one thread, for comparison: the whole file decoded, then appended (after the
        // ingest above: a phase run right after another's gigabytes of writes is slower, even
        // after a sync).
        {
            let dir = tmp.path().join("ingest-one-thread");
            let mut log = EventLog::open(&dir, store_options()).expect("open");
            settle_disk();
            let started = Instant::now();
            let bytes = std::fs::read(&file).expect("read");
            let items = answerfeed::parse::api::decode_recorded(&bytes).expect("decode");
            let parsed = started.elapsed();
            let summary =
                answerfeed::ingest::ingest_api_items(&mut log, "bench", items).expect("ingest");
            let took = started.elapsed();
            report(
                "ingest on one thread (decode the file, then append)",
                n,
                took,
            );
            println!(
                "  of which reading and decoding {:.2} s, appending {:.2} s",
                parsed.as_secs_f64(),
                (took - parsed).as_secs_f64()
            );
            assert_eq!(summary.records, n);
        }
        settle_disk();
        let started = Instant::now();
        let derived = answerfeed::pipeline::derive(&mut log, &config).expect("derive");
        let derive = started.elapsed();
        report("derive (flags + views + outbox)", n, derive);
        println!("  flags raised: {}", derived.diff.flags_raised);
        let views = answerfeed::project::Views::open(&log).expect("views");
        for kind in answerfeed::event::FLAG_KINDS {
            println!(
                "    {kind}: {}",
                views.flag_seqs(Some(kind)).map(|s| s.len()).unwrap_or(0)
            );
        }
        settle_disk();
        let started = Instant::now();
        let (before, after, _) =
            answerfeed::project::rebuild(&log, &config.topics).expect("rebuild");
        println!(
            "rebuild of the views: {:.2} s (identical: {})",
            started.elapsed().as_secs_f64(),
            before == after
        );
        let disk = answerfeed::ops::dir_bytes(&dir);
        println!(
            "log on disk: {:.1} MB, {} bytes per answer",
            disk as f64 / 1e6,
            disk / n as u64
        );
        drop(log);
    }

    if phase("dups") {
        // 2. Duplicate detection alone, at three sizes.
        for size in [n / 4, n / 2, n] {
            let dir = tmp.path().join(format!("dups-{size}"));
            let mut log = EventLog::open(&dir, store_options()).expect("open");
            let items =
                answerfeed::parse::api::decode_recorded(&join(&records[..size])).expect("decode");
            answerfeed::ingest::ingest_api_items(&mut log, "bench", items).expect("ingest");
            let settings = answerfeed::diff::DiffSettings::new(&config.diff, &[]);
            settle_disk();
            let started = Instant::now();
            answerfeed::diff::run(&mut log, &settings).expect("diff");
            let took = started.elapsed();
            println!(
                "duplicate detection over {size} answers: {:.2} s ({:.1} µs/answer)",
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / size.max(1) as f64
            );
        }
    }

    if !phase("http") {
        return;
    }
    // 3. A full backfill over HTTP.
    let server = BenchServer::start(records);
    let dir = tmp.path().join("http");
    let mut log = EventLog::open(&dir, store_options()).expect("open");
    let mut fetch_config = config.fetch.clone();
    fetch_config.base_url = server.base_url.clone();
    fetch_config.window_days = 31;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let shutdown = Shutdown::new();
    let client = ApiClient::new(&fetch_config, shutdown.clone()).expect("client");
    let options = CycleOptions {
        since: chrono::NaiveDate::from_ymd_opt(2020, 1, 1),
        until: chrono::NaiveDate::from_ymd_opt(2025, 12, 31),
        progress: false,
    };
    let rss_before = peak_rss_kb();
    settle_disk();
    let started = Instant::now();
    // As `fetch --once` and the daemon run it: flags and views derived on a second thread while
    // pages arrive.
    let follower = answerfeed::pipeline::Follower::start(&mut log, &config);
    let (cycle, result) = runtime.block_on(fetch::run_cycle(
        &mut log,
        &client,
        &fetch_config,
        &options,
        &shutdown,
    ));
    result.expect("cycle");
    let fetched = started.elapsed();
    let derived = follower.finish().expect("derive");
    let backfill = started.elapsed();
    report(
        "backfill over HTTP (fetch -> parse -> log, flags + views + outbox derived alongside)",
        n,
        backfill,
    );
    println!(
        "  pages {}, records seen {}, appended {}; the fetch ended at {:.2} s, derive caught up at {:.2} s ({} flags)",
        cycle.pages,
        cycle.records_seen,
        cycle.appended,
        fetched.as_secs_f64(),
        backfill.as_secs_f64(),
        derived.diff.flags_raised
    );
    println!(
        "peak RSS: {} MB (before the backfill: {} MB)",
        peak_rss_kb() / 1024,
        rss_before / 1024
    );

    // 4. Idle cycles: nothing new. The first after a backfill records the new range (from the
    // watermark, no longer the backfill's `since`); the second is the daemon's steady state.
    // sled's background flusher first writes out what the derive left dirty, so that it is not
    // counted against the idle cycle.
    let options = CycleOptions {
        since: None,
        until: chrono::NaiveDate::from_ymd_opt(2025, 12, 31),
        progress: false,
    };
    let idle = |log: &mut EventLog| {
        let follower = answerfeed::pipeline::Follower::start(log, &config);
        let (cycle, result) = runtime.block_on(fetch::run_cycle(
            log,
            &client,
            &fetch_config,
            &options,
            &shutdown,
        ));
        result.expect("idle cycle");
        follower.finish().expect("derive");
        cycle
    };
    idle(&mut log);
    // sled goes on rewriting pages in the background for a while after heavy writing (segment
    // cleaning, every 500 ms); that is the backfill's cost, not the idle cycle's, so wait for it
    // to settle (up to a minute) before measuring.
    let settle = Instant::now();
    let mut last = written_bytes();
    while settle.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1500));
        let now = written_bytes();
        if now == last {
            break;
        }
        last = now;
    }
    println!(
        "  (sled's background writes settled after {:.1} s)",
        settle.elapsed().as_secs_f64()
    );
    // `BENCH_IDLE_REPEAT` runs the measured idle cycle k times (for profiling); the figures
    // are per cycle.
    let repeat: u32 = std::env::var("BENCH_IDLE_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let (cpu0, io0, server0, faults0) = (
        cpu_time(),
        written_bytes(),
        server_cpu_time(),
        minor_faults(),
    );
    // Cycles run apart, as the daemon's do (a cron schedule), unless `BENCH_IDLE_GAP_MS=0`:
    // back to back they find caches warm and memory not yet given back.
    let gap = Duration::from_millis(
        std::env::var("BENCH_IDLE_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000),
    );
    let mut wall = Duration::ZERO;
    let mut last = None;
    for i in 0..repeat {
        if i > 0 {
            std::thread::sleep(gap);
        }
        let started = Instant::now();
        last = Some(idle(&mut log));
        wall += started.elapsed();
    }
    let wall = wall / repeat;
    // What sled writes in the background after the cycle (its flusher runs every 500 ms)
    // counts too.
    std::thread::sleep(Duration::from_millis(1500));
    let server = server_cpu_time() - server0;
    let cpu = (cpu_time() - cpu0).saturating_sub(server);
    println!(
        "idle cycle (7-day overlap re-read, nothing new): {:.1} ms wall, {:.1} ms CPU (the in-process API server's {:.1} ms not counted), {} bytes written, {} page faults",
        wall.as_secs_f64() * 1e3,
        cpu.as_secs_f64() * 1e3 / f64::from(repeat),
        server.as_secs_f64() * 1e3 / f64::from(repeat),
        written_bytes().saturating_sub(io0) / u64::from(repeat),
        minor_faults().saturating_sub(faults0) / u64::from(repeat)
    );
    if let Some(cycle) = last {
        println!(
            "  (the last idle cycle: {} pages, {} unchanged; {} records seen, {} not decoded; {} appended)",
            cycle.pages, cycle.pages_unchanged, cycle.records_seen, cycle.unchanged, cycle.appended
        );
    }
}

/// sled's cache as the daemon's default config sets it, or `BENCH_CACHE_MB`.
fn store_options() -> StoreOptions {
    match std::env::var("BENCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(mb) => StoreOptions {
            cache_bytes: mb * 1024 * 1024,
            ..StoreOptions::default()
        },
        None => StoreOptions::default(),
    }
}

/// Whether a phase is to run: all by default, or those named in `BENCH_PHASES`
/// (comma-separated: ingest, dups, http, idle).
fn phase(name: &str) -> bool {
    std::env::var("BENCH_PHASES").map_or(true, |p| p.split(',').any(|x| x.trim() == name))
}

fn report(what: &str, n: usize, took: Duration) {
    println!(
        "{what}: {:.2} s, {:.0} answers/s",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64().max(1e-9)
    );
}

fn join(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        out.extend_from_slice(r.json.as_bytes());
        out.push(b'\n');
    }
    out
}

struct Record {
    date: String,
    id: u64,
    json: String,
}

const FORCES: &[&str] = &[
    "Metropolitan Police",
    "Kent",
    "Essex",
    "Greater Manchester",
    "West Midlands",
    "Avon & Somerset",
    "Thames Valley",
    "Gwent",
    "Cleveland",
    "North Wales",
];
const BODIES: &[(&str, u32)] = &[
    ("Home Office", 1),
    ("Ministry of Justice", 54),
    ("Department for Education", 60),
    ("Attorney General", 2),
];
const SYLLABLES: &[&str] = &[
    "po", "li", "ce", "fun", "ding", "of", "fi", "cers", "go", "vern", "ment", "com", "mit", "ted",
    "tack", "ling", "crime", "sup", "port", "vic", "tims", "ac", "ross", "da", "ta", "pub", "lish",
    "ed", "an", "nu", "al", "ly", "sta", "tis", "tics", "for", "area", "pro", "gram", "me", "e",
    "va", "lu", "a", "tion", "re", "view",
];
const COMMON: &[&str] = &[
    "the",
    "is",
    "to",
    "and",
    "of",
    "in",
    "police",
    "government",
    "crime",
    "victims",
    "data",
    "force",
    "area",
    "England",
    "Wales",
];

/// A vocabulary of a few thousand words, so that texts differ as real answers do.
fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = COMMON.iter().map(|w| w.to_string()).collect();
    for a in SYLLABLES {
        for b in SYLLABLES.iter().step_by(3) {
            words.push(format!("{a}{b}"));
        }
    }
    words
}

/// Deterministic synthetic records spread over 2020-2025.
fn generate(n: usize) -> Vec<Record> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |below: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % below.max(1)
    };
    let start = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).expect("date");
    let words_list = vocabulary();
    let word = |k: u64| words_list[(k as usize) % words_list.len()].as_str();
    let mut shared_answer: Option<String> = None;
    (0..n)
        .map(|i| {
            let date = start + chrono::Days::new(((i as u64) * 2190) / n.max(1) as u64);
            let (body, body_id) = BODIES[next(BODIES.len() as u64) as usize];
            let paragraphs = 2 + next(4);
            let mut html = String::new();
            for _ in 0..paragraphs {
                let words = 30 + next(60);
                // Zipf-like: common words often, the long tail rarely.
                let text: Vec<&str> = (0..words)
                    .map(|_| if next(3) == 0 { word(next(COMMON.len() as u64)) } else { word(next(words_list.len() as u64)) })
                    .collect();
                html.push_str(&format!("<p>{}.</p>", text.join(" ")));
            }
            if next(5) == 0 {
                html.push_str("<table><tr><th>Force</th><th>2023</th><th>2024</th></tr>");
                // The same heading, force and year give the same figure, bar the odd revision.
                let heading = i as u64 % 2000;
                for f in 0..(3 + next(6)) {
                    let a = (heading * 31 + f * 7 + 2023) % 5000 + u64::from(next(50) == 0);
                    let b = (heading * 31 + f * 7 + 2024) % 5000 + u64::from(next(50) == 0);
                    html.push_str(&format!("<tr><td>{}</td><td>{a}</td><td>{b}</td></tr>", FORCES[(f as usize) % FORCES.len()]));
                }
                html.push_str("</table>");
            }
            // Near-duplicates: one answer in twenty repeats a recent one, slightly reworded.
            if next(20) == 0 {
                if let Some(shared) = &shared_answer {
                    html = shared.replacen("the", "a", 1);
                }
            } else if next(50) == 0 {
                shared_answer = Some(html.clone());
            }
            let holding = next(100) == 0;
            let correction = !holding && next(100) == 0;
            let value = serde_json::json!({
                "id": 3_000_000 + i as u64,
                "uin": format!("{}", 100_000 + i),
                "house": if next(3) == 0 { "Lords" } else { "Commons" },
                "dateTabled": format!("{date}T00:00:00"),
                "dateAnswered": format!("{date}T00:00:00"),
                "askingMemberId": 4000 + next(600),
                "askingMember": {"name": format!("Member {}", next(600)), "party": "Labour", "memberFrom": "Somewhere"},
                "answeringBodyId": body_id,
                "answeringBodyName": body,
                "answeringMember": {"name": format!("Minister {}", next(40))},
                "heading": format!("Heading {}", i % 2000),
                "questionText": format!("To ask the Secretary of State, question number {i} about {}.", word(next(words_list.len() as u64))),
                "answerText": if holding { "<p>I will reply as soon as possible.</p>".to_string() } else { html },
                "answerIsHolding": holding,
                "answerIsCorrection": correction,
                "originalAnswerText": if correction { "<p>The original answer.</p>" } else { "" },
                "isWithdrawn": false,
                "groupedQuestions": [],
                "attachments": [],
            });
            Record {
                date: date.format("%Y-%m-%d").to_string(),
                id: 3_000_000 + i as u64,
                json: value.to_string(),
            }
        })
        .collect()
}

/// A minimal API server for the benchmark: records sorted by date, pages cut with binary search
/// and served from pre-serialised JSON, so the server is never the bottleneck being measured.
struct BenchServer {
    base_url: String,
}

impl BenchServer {
    fn start(mut records: Vec<Record>) -> BenchServer {
        records.sort_by(|a, b| b.date.cmp(&a.date).then(b.id.cmp(&a.id)));
        let records = Arc::new(records);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let records = records.clone();
                std::thread::spawn(move || {
                    serve(stream, &records);
                    // Each connection has a thread of its own: its CPU time is the server's.
                    SERVER_CPU_NS.fetch_add(
                        thread_cpu_time().as_nanos() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                });
            }
        });
        BenchServer { base_url }
    }
}

fn serve(mut stream: std::net::TcpStream, records: &[Record]) {
    let mut buf = [0u8; 8192];
    let mut request = Vec::new();
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&request);
    let target = text.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(str::to_string)
    };
    let body = if path.ends_with("/questions") {
        let (from, to) = match (param("answeredWhenFrom"), param("answeredWhenTo")) {
            (Some(f), Some(t)) => (f, t),
            // Correction queries: the synthetic corrections are not dated separately.
            _ => ("9999".to_string(), "0000".to_string()),
        };
        // Records are sorted newest first: the window is a contiguous slice.
        let lo = records.partition_point(|r| r.date.as_str() > to.as_str());
        let hi = records.partition_point(|r| r.date.as_str() >= from.as_str());
        let matching = if lo < hi { &records[lo..hi] } else { &[][..] };
        let skip: usize = param("skip").and_then(|s| s.parse().ok()).unwrap_or(0);
        let take: usize = param("take").and_then(|s| s.parse().ok()).unwrap_or(20);
        let page: Vec<String> = matching
            .iter()
            .skip(skip)
            .take(take)
            .map(|r| format!("{{\"value\":{},\"links\":[]}}", r.json))
            .collect();
        format!(
            "{{\"results\":[{}],\"totalResults\":{}}}",
            page.join(","),
            matching.len()
        )
    } else {
        "{}".to_string()
    };
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    );
}

/// Waits for the kernel to write back what earlier phases left dirty: otherwise a phase pays
/// for the previous one's 2-4 GB of writes (the same ingest took 6.9 s first and 9.1 s right
/// after the one-thread ingest).
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn peak_rss_kb() -> u64 {
    proc_field("/proc/self/status", "VmHWM:")
}

fn written_bytes() -> u64 {
    proc_field("/proc/self/io", "write_bytes:")
}

fn proc_field(file: &str, field: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time spent by the in-process API server (so that it is not counted as answerfeed's).
static SERVER_CPU_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn server_cpu_time() -> Duration {
    Duration::from_nanos(SERVER_CPU_NS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Minor page faults of this process so far (the in-process API server's included): memory
/// given back to the system between cycles and touched again shows up here.
fn minor_faults() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_SELF is always valid.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return 0;
    }
    u64::try_from(usage.ru_minflt).unwrap_or(0)
}

/// CPU time of the calling thread.
fn thread_cpu_time() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// User + system CPU time of this process, all threads (those that ended included), to the
/// nanosecond: /proc's 10 ms ticks are too coarse for an idle cycle.
fn cpu_time() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
