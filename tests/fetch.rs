//! End-to-end: the built binary fetching from a real HTTP server on 127.0.0.1 that serves the
//! recorded API fixtures (`tests/fixtures/api/`) and misbehaves on command.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api_server::{ApiServer, Fault};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api");

fn fixture(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(FIXTURES).join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Env {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    config: PathBuf,
}

/// A data dir and a config for fast tests: small pages, short backoff and timeouts. `extra` is
/// `key = value` lines for the `[fetch]` section that replace these.
fn env(extra: &str) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("answerfeed.toml");
    let mut settings: Vec<(String, String)> = [
        ("page_size", "3"),
        ("window_days", "31"),
        ("initial_backoff_ms", "20"),
        ("max_backoff_secs", "1"),
        ("max_attempts", "4"),
        ("read_timeout_secs", "1"),
        ("connect_timeout_secs", "2"),
        ("timezone", "\"UTC\""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in extra.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once('=').unwrap();
        let key = key.trim().to_string();
        settings.retain(|(k, _)| *k != key);
        settings.push((key, value.trim().to_string()));
    }
    let body: String = settings
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    std::fs::write(&config, format!("[fetch]\n{body}")).unwrap();
    Env {
        _tmp: tmp,
        data,
        config,
    }
}

fn bin(env: &Env) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_answerfeed"));
    cmd.env_remove("ANSWERFEED_DATA_DIR")
        .env_remove("ANSWERFEED_CONFIG")
        .env_remove("RUST_LOG")
        .arg("--config")
        .arg(&env.config)
        .arg("--data-dir")
        .arg(&env.data)
        .stdin(Stdio::null());
    cmd
}

fn run(env: &Env, args: &[&str]) -> Output {
    bin(env).args(args).output().expect("the binary runs")
}

fn fetch(env: &Env, server: &ApiServer, extra: &[&str]) -> Output {
    fetch_command(env, server, extra)
        .output()
        .expect("the binary runs")
}

/// The command [`fetch`] runs, for a test to add to (an environment variable).
fn fetch_command(env: &Env, server: &ApiServer, extra: &[&str]) -> Command {
    let base = server.base_url();
    let mut args = vec!["fetch", "--once", "--json", "--base-url", base.as_str()];
    // The fixtures end in March 2025; cycles end there unless a test says otherwise.
    if !extra.contains(&"--until") {
        args.extend_from_slice(&["--until", "2025-03-31"]);
    }
    args.extend_from_slice(extra);
    let mut cmd = bin(env);
    cmd.args(&args);
    cmd
}

fn report(o: &Output) -> Value {
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no report; stderr:\n{}", String::from_utf8_lossy(&o.stderr)));
    serde_json::from_str(line).unwrap()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// The log's events other than the diff module's flags (those are tested in tests/flags.rs).
fn events(env: &Env) -> Vec<Value> {
    let out = ok(run(env, &["events", "--json"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["event"]["kind"] != "flag_raised")
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap().to_string())
        .collect()
}

fn answer_ids(events: &[Value]) -> Vec<u64> {
    let mut ids: Vec<u64> = events
        .iter()
        .filter_map(|e| e["event"]["record"]["api_id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// A first backfill logs every answer once, whole, in date order.
#[test]
fn first_backfill_then_a_cycle_with_nothing_new() {
    let questions = fixture("questions.json");
    let server = ApiServer::start(questions.clone());
    server.set_truncate_list_text_over(Some(200));
    let env = env("");

    let first = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["appended"], 10);
    assert_eq!(first["quarantined"], 0);
    assert!(first["completed_by_id"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["watermark"], "2025-03-31");

    let all = events(&env);
    assert_eq!(all.len(), 10);
    assert!(kinds(&all).iter().all(|k| k == "answer_observed"));
    // Nothing cut short entered the log: every answer is the fixture's whole text.
    for event in &all {
        let record = &event["event"]["record"];
        let id = record["api_id"].as_u64().unwrap();
        let original = questions.iter().find(|q| q["id"] == id).unwrap();
        assert_eq!(record["answer_source"]["text"], original["answerText"]);
        assert_eq!(record["question_text"], original["questionText"]);
    }
    // Windows are read oldest first, so the log follows time window by window.
    let start = chrono::NaiveDate::from_ymd_opt(2025, 1, 1).unwrap();
    let windows: Vec<i64> = all
        .iter()
        .map(|e| {
            let date = &e["event"]["record"]["api"]["date_answered"]
                .as_str()
                .unwrap()[..10];
            let date = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").unwrap();
            (date - start).num_days() / 31
        })
        .collect();
    assert!(windows.windows(2).all(|w| w[0] <= w[1]), "{windows:?}");
    assert_eq!(windows.first(), Some(&0));

    // A polite client: it names itself and accepts gzip.
    let requests = server.requests();
    let first_request = &requests[0];
    assert!(first_request
        .header("user-agent")
        .is_some_and(|ua| ua.starts_with("answerfeed/")));
    assert!(first_request
        .header("accept-encoding")
        .is_some_and(|ae| ae.contains("gzip")));
    assert_eq!(first_request.param("expandMember"), Some("true"));

    // The second cycle starts from the watermark minus the overlap, and appends nothing.
    let before = server.requests().len();
    let second = report(&ok(fetch(&env, &server, &[])));
    assert_eq!(second["appended"], 0);
    assert!(second["already_known"].as_u64().unwrap() > 0, "{second}");
    assert_eq!(events(&env).len(), 10);
    let second_requests = &server.requests()[before..];
    assert_eq!(
        second_requests[0].param("answeredWhenFrom"),
        Some("2025-03-24")
    );
    assert_eq!(second["from"], "2025-03-24");

    let verify = ok(run(&env, &["verify"]));
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("ok: "));
    // The fetched answers are flagged like the sample: the Single Online Home answer given twice,
    // and the DAPO areas changing, now in answer-date order.
    let flags = ok(run(&env, &["flags", "--json"]));
    let flags = String::from_utf8_lossy(&flags.stdout);
    assert!(flags.contains("\"flag\":\"duplicate_answer\""), "{flags}");
    assert!(flags.contains("\"removed\":[\"Gwent\"]"), "{flags}");
}

/// A window's pages go into the log a few at a time (an append holds at least 250 records, so
/// that a backfill waits for far fewer syncs), in the order the API lists them, each record
/// once; the pages are recorded as read with their records, so the next cycle reads them all
/// back without decoding one, and what a rerun finds is exactly what was logged.
#[test]
fn a_windows_pages_are_appended_a_few_at_a_time_in_list_order() {
    let base = fixture("questions.json");
    let records: Vec<Value> = (0..300usize)
        .map(|i| {
            let mut r = base[i % base.len()].clone();
            let day = 1 + i % 28;
            r["id"] = json!(1_800_000 + i as u64);
            r["uin"] = json!(format!("{}", 70_000 + i));
            r["dateAnswered"] = json!(format!("2025-01-{day:02}T00:00:00"));
            r["questionText"] = json!(format!("To ask question {i}: {}", r["questionText"]));
            r["answerText"] = json!(format!("<p>Answer {i}.</p>{}", r["answerText"]));
            r
        })
        .collect();
    let server = ApiServer::start(records);
    let env = env("page_size = 20");
    let out = ok(fetch_command(
        &env,
        &server,
        &["--since", "2025-01-01", "--until", "2025-01-31"],
    )
    .env("RUST_LOG", "answerfeed::log=debug")
    .output()
    .expect("the binary runs"));
    let first = report(&out);
    assert_eq!(first["appended"], 300, "{first}");
    let pages = first["pages"].as_u64().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let appends = stderr.lines().filter(|l| l.contains("log append")).count() as u64;
    // 300 answers in pages of 20 (each overlapping the last by one): 16 pages, in one append of
    // at least 250 records and one of the window's rest (and the diff module's flags in one).
    assert!(
        (2..pages / 2).contains(&appends),
        "{appends} appends for {pages} pages"
    );

    // The log holds the list's order: newest answer date first, then the highest id.
    let logged: Vec<u64> = events(&env)
        .iter()
        .filter_map(|e| e["event"]["record"]["api_id"].as_u64())
        .collect();
    let mut listed: Vec<(String, u64)> = server
        .records()
        .iter()
        .map(|r| {
            (
                r["dateAnswered"].as_str().unwrap().to_string(),
                r["id"].as_u64().unwrap(),
            )
        })
        .collect();
    listed.sort_by(|a, b| b.cmp(a));
    let listed: Vec<u64> = listed.into_iter().map(|(_, id)| id).collect();
    assert_eq!(logged, listed);

    let again = report(&ok(fetch(
        &env,
        &server,
        &["--since", "2025-01-01", "--until", "2025-01-31"],
    )));
    assert_eq!(again["appended"], 0, "{again}");
    assert_eq!(again["pages_unchanged"], again["pages"], "{again}");
    assert_eq!(events(&env).len(), 300);
}

/// A cycle does not decode again what it logged before byte for byte; what the list cuts short
/// is still completed by id every time, and a record that changed is decoded and logged.
#[test]
fn records_read_again_unchanged_are_not_decoded_again() {
    let server = ApiServer::start(fixture("questions.json"));
    // Cuts the six longest answers (the corrected one stays whole).
    server.set_truncate_list_text_over(Some(1600));
    let env = env("");
    let first = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(first["appended"], 10);
    assert_eq!(first["unchanged"], 0, "{first}");
    let cut = first["completed_by_id"].as_u64().unwrap();
    assert_eq!(cut, 6, "{first}");

    let again = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(again["appended"], 0, "{again}");
    // Every record the list gave whole is skipped; the cut ones are fetched by id again.
    assert_eq!(again["unchanged"].as_u64().unwrap(), 10 - cut, "{again}");
    assert_eq!(again["completed_by_id"].as_u64().unwrap(), cut, "{again}");
    assert_eq!(again["already_known"], 10, "{again}");

    // A changed record (a correction, short enough to come whole) is read and logged.
    for record in fixture("correction.json") {
        server.upsert(record);
    }
    server.set_truncate_list_text_over(None);
    let changed = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(changed["appended"], 1, "{changed}");
    // Records first logged from their by-id text were never entered as seen: now whole in the
    // list, they are decoded once, found known, and entered. Unchanged: the three other whole
    // ones, and the correction itself when the correction-date query reads it a second time.
    assert_eq!(
        changed["unchanged"].as_u64().unwrap(),
        10 - cut - 1 + 1,
        "{changed}"
    );
    assert_eq!(changed["already_known"], 10, "{changed}");
    let last = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(last["appended"], 0, "{last}");
    // Ten answers, the corrected one read by both queries: all eleven skipped.
    assert_eq!(last["unchanged"], 11, "{last}");
    assert_eq!(last["already_known"], 11, "{last}");
    // Nothing was cut short this time, so every page was entered whole: now none is decoded.
    assert_eq!(last["pages_unchanged"], last["pages"], "{last}");
    // Before that, only the two pages that held neither a cut record nor the correction.
    assert_eq!(changed["pages_unchanged"], 2, "{changed}");
    assert_eq!(last["completed_by_id"], 0, "{last}");
    let verify = ok(run(&env, &["verify"]));
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("ok: "));
}

#[test]
fn a_corrected_answer_appends_one_correction_with_the_original_text() {
    let server = ApiServer::start(fixture("questions.json"));
    let env = env("");
    ok(fetch(&env, &server, &["--since", "2025-01-01"]));
    for record in fixture("correction.json") {
        server.upsert(record);
    }
    let r = report(&ok(fetch(&env, &server, &[])));
    assert_eq!(r["appended"], 1, "{r}");
    let all = events(&env);
    let last = all.last().unwrap();
    assert_eq!(last["event"]["kind"], "answer_corrected");
    assert!(last["event"]["original_answer_text"]
        .as_str()
        .unwrap()
        .contains("up to 5 years"));
    assert!(last["event"]["record"]["answer_source"]["text"]
        .as_str()
        .unwrap()
        .contains("up to five years"));
    let previous = last["event"]["previous_seq"].as_u64().unwrap();
    // Found by seq: flags sit between the answers.
    let original = all.iter().find(|e| e["seq"] == previous).unwrap();
    assert_eq!(
        original["event"]["record"]["api_id"],
        last["event"]["record"]["api_id"]
    );
    assert_eq!(report(&ok(fetch(&env, &server, &[])))["appended"], 0);
}

#[test]
fn a_holding_answer_then_the_substantive_one() {
    let server = ApiServer::start(fixture("questions.json"));
    let env = env("");
    let holding = fixture("holding.json");
    server.upsert(holding[0].clone());
    ok(fetch(&env, &server, &["--since", "2025-01-01"]));
    let all = events(&env);
    let held: Vec<&Value> = all
        .iter()
        .filter(|e| e["event"]["record"]["api_id"] == 1700011)
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["event"]["kind"], "holding_answer_given");

    server.upsert(holding[1].clone());
    let r = report(&ok(fetch(&env, &server, &[])));
    assert_eq!(r["appended"], 1, "{r}");
    let last = events(&env).pop().unwrap();
    assert_eq!(last["event"]["kind"], "answer_revised");
    assert_eq!(last["event"]["record"]["api_id"], 1700011);
    assert_eq!(last["event"]["previous_seq"], held[0]["seq"]);
    let forces: Vec<&str> = last["event"]["record"]["forces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(forces.contains(&"cleveland"), "{forces:?}");
}

#[test]
fn a_withdrawn_question() {
    let server = ApiServer::start(fixture("questions.json"));
    let env = env("");
    ok(fetch(&env, &server, &["--since", "2025-01-01"]));
    for record in fixture("withdrawn.json") {
        server.upsert(record);
    }
    // Withdrawn after the overlap window had passed it: a backfill of the month sees it.
    assert_eq!(
        report(&ok(fetch(&env, &server, &["--since", "2025-03-01"])))["appended"],
        1
    );
    let last = events(&env).pop().unwrap();
    assert_eq!(last["event"]["kind"], "question_withdrawn");
    assert_eq!(last["event"]["record"]["api"]["is_withdrawn"], true);
}

/// Answers published while we page shift `skip` under us; none may be missed.
#[test]
fn records_inserted_during_paging_are_not_skipped() {
    let questions = fixture("questions.json");
    let server = ApiServer::start(questions.clone());
    let mut inserted = 0;
    let template = questions[0].clone();
    server.on_list_request(Box::new(move |records: &mut Vec<Value>, request| {
        // On the second page request, three new answers appear at the top of the list.
        if request.param("skip") != Some("0") && inserted == 0 {
            for n in 0..3u64 {
                let mut record = template.clone();
                record["id"] = json!(1800000 + n);
                record["uin"] = json!(format!("9900{n}"));
                record["questionText"] = json!(format!("To ask a late question number {n}."));
                record["dateAnswered"] = json!("2025-03-29T00:00:00");
                records.push(record);
            }
            inserted = 3;
        }
    }));
    // One window over all the fixtures, two records a page: five pages to shift under.
    let env = env("page_size = 2\nwindow_days = 90\n");
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert!(r["sweeps_repeated"].as_u64().unwrap() >= 1, "{r}");
    let ids = answer_ids(&events(&env));
    let mut expected: Vec<u64> = questions
        .iter()
        .map(|q| q["id"].as_u64().unwrap())
        .collect();
    expected.extend([1800000, 1800001, 1800002]);
    expected.sort_unstable();
    assert_eq!(ids, expected, "every answer exactly once");
}

/// An answer corrected while we page, after its page was read, comes back with new bytes when
/// the window is swept again: its new text is logged then, not taken as read (which would hide
/// it from every later cycle while the bytes stay the same).
#[test]
fn an_answer_changed_between_sweeps_is_logged() {
    let questions = fixture("questions.json");
    let server = ApiServer::start(questions.clone());
    let template = questions[0].clone();
    let newest = questions
        .iter()
        .map(|q| {
            (
                q["dateAnswered"].as_str().unwrap().to_string(),
                q["id"].as_u64().unwrap(),
            )
        })
        .max()
        .unwrap()
        .1;
    let mut changed = false;
    server.on_list_request(Box::new(move |records: &mut Vec<Value>, request| {
        // On the second page request: the first page's first answer is corrected, and a new
        // answer at the top of the list shifts it, so the window is swept again.
        if request.param("skip") != Some("0") && !changed {
            for record in records.iter_mut() {
                if record["id"] == newest {
                    record["answerText"] = json!("<p>Corrected while the list was read.</p>");
                }
            }
            let mut record = template.clone();
            record["id"] = json!(1_810_000);
            record["uin"] = json!("99100");
            record["questionText"] = json!("To ask a late question.");
            record["dateAnswered"] = json!("2025-03-30T00:00:00");
            records.push(record);
            changed = true;
        }
    }));
    let env = env("page_size = 2\nwindow_days = 90\n");
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert!(r["sweeps_repeated"].as_u64().unwrap() >= 1, "{r}");
    let latest = events(&env)
        .into_iter()
        .rfind(|e| e["event"]["record"]["api_id"] == newest)
        .unwrap();
    assert_eq!(
        latest["event"]["record"]["answer_source"]["text"],
        "<p>Corrected while the list was read.</p>",
        "{latest}"
    );
    let again = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(again["appended"], 0, "{again}");
}

/// Answers that disappear while we page shift the list forward: the overlap notices, and the
/// window is read again, so nothing behind the gap is skipped.
#[test]
fn records_removed_during_paging_do_not_make_us_skip() {
    let questions = fixture("questions.json");
    let server = ApiServer::start(questions.clone());
    let mut removed = false;
    server.on_list_request(Box::new(move |records: &mut Vec<Value>, request| {
        if request.param("skip") == Some("2") && !removed {
            // The two newest answers vanish after the first page was read.
            records.sort_by(|a, b| b["dateAnswered"].as_str().cmp(&a["dateAnswered"].as_str()));
            records.drain(..2);
            removed = true;
        }
    }));
    let env = env("page_size = 3\nwindow_days = 90\n");
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert!(r["sweeps_repeated"].as_u64().unwrap() >= 1, "{r}");
    let mut expected: Vec<u64> = questions
        .iter()
        .map(|q| q["id"].as_u64().unwrap())
        .collect();
    expected.sort_unstable();
    assert_eq!(answer_ids(&events(&env)), expected);
}

#[test]
fn server_errors_are_retried_then_succeed() {
    let server = ApiServer::start(fixture("questions.json"));
    server.push_fault(Fault::Status(500));
    server.push_fault(Fault::Status(503));
    server.push_fault(Fault::Reset);
    server.push_fault(Fault::TruncatedBody);
    let env = env("max_attempts = 6\n");
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(r["retries"], 4, "{r}");
    assert_eq!(r["appended"], 10);
}

#[test]
fn too_many_requests_honours_retry_after() {
    let server = ApiServer::start(fixture("questions.json"));
    server.push_fault(Fault::TooManyRequests {
        retry_after_secs: 2,
    });
    let env = env("");
    let started = Instant::now();
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-03-01"])));
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "waited only {:?}",
        started.elapsed()
    );
    assert_eq!(r["retries"], 1);
    let requests = server.requests();
    assert_eq!(requests[0].param("skip"), requests[1].param("skip"));
}

#[test]
fn a_hang_past_the_read_timeout_is_abandoned_and_retried() {
    let server = ApiServer::start(fixture("questions.json"));
    server.push_fault(Fault::Hang(Duration::from_secs(5)));
    let env = env("");
    let started = Instant::now();
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-03-01"])));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r["retries"], 1, "{r}");
}

#[test]
fn giving_up_leaves_the_watermark_and_the_next_cycle_resumes() {
    let server = ApiServer::start(fixture("questions.json"));
    let env = env("max_attempts = 3\n");
    ok(fetch(
        &env,
        &server,
        &["--since", "2025-01-01", "--until", "2025-01-31"],
    ));
    let watermark = report(&ok(fetch(
        &env,
        &server,
        &["--since", "2025-01-01", "--until", "2025-01-31"],
    )))["watermark"]
        .clone();
    assert_eq!(watermark, "2025-01-31");
    for _ in 0..3 {
        server.push_fault(Fault::Status(502));
    }
    let failed = fetch(&env, &server, &[]);
    assert_eq!(failed.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(stderr.contains("gave up after 3 attempts"), "{stderr}");
    let r = report(&failed);
    assert!(r["outcome"].as_str().unwrap().starts_with("failed"));
    assert_eq!(r["watermark"], "2025-01-31", "unchanged");
    // The next cycle resumes from the same place and completes.
    let resumed = report(&ok(fetch(&env, &server, &[])));
    assert_eq!(resumed["from"], "2025-01-24");
    assert_eq!(resumed["watermark"], "2025-03-31");
    assert_eq!(answer_ids(&events(&env)).len(), 10);
}

/// When a page's request fails, the page before it is in the log and recorded as read (the next
/// cycle skips it undecoded).
#[test]
fn the_page_before_a_failed_request_is_kept_and_recorded() {
    let server = ApiServer::start(fixture("questions.json"));
    // The first request is served; the second (the next list page) gets a body that is not JSON.
    server.fail_between_successes(vec![Fault::MalformedBody]);
    let env = env("");
    let failed = fetch(&env, &server, &["--since", "2025-01-01"]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("malformed page"));
    let r = report(&failed);
    assert_eq!(r["pages"], 1, "{r}");
    // page_size is 3: the first page's three answers went in.
    assert_eq!(r["appended"], 3, "{r}");
    assert_eq!(answer_ids(&events(&env)).len(), 3);
    let again = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(again["appended"], 7, "{again}");
    assert!(again["pages_unchanged"].as_u64().unwrap() >= 1, "{again}");
    assert_eq!(answer_ids(&events(&env)).len(), 10);
}

/// A fetch from 2025-01-01 where every append is refused (more free space required than any
/// disk has): it fails with one error, the log's, and nothing written.
fn fetch_refused(env: &Env, server: &ApiServer) -> Output {
    let out = fetch_command(env, server, &["--since", "2025-01-01"])
        .env("ANSWERFEED_STORE_MIN_FREE_MB", "1048576")
        .output()
        .expect("the binary runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("not enough free space"), "{stderr}");
    assert!(events(env).is_empty());
    out
}

/// A refused append is the one error reported, and the cycle stops there: no later window is
/// requested (a log error is what stops a daemon; a page's request failing is not). A window's
/// pages are appended together once read, so its own pages are all requested first.
#[test]
fn a_refused_append_stops_the_cycle_before_the_next_window() {
    let server = ApiServer::start(fixture("questions.json"));
    let env = env("");
    let out = fetch_refused(&env, &server);
    assert_eq!(report(&out)["appended"], 0);
    let lists: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_list())
        .collect();
    assert!(lists.len() >= 2, "{lists:?}");
    for request in &lists {
        let from = request
            .param("answeredWhenFrom")
            .or(request.param("correctedWhenFrom"));
        assert_eq!(
            from,
            Some("2025-01-01"),
            "a later window was requested: {request:?}"
        );
    }
}

/// When the pages of a window are read but a request fails, those read are appended before the
/// cycle reports the failure, and the error reported is the log's if appending them fails too.
#[test]
fn a_refused_append_is_reported_over_the_failed_request_after_it() {
    let server = ApiServer::start(fixture("questions.json"));
    server.fail_between_successes(vec![Fault::MalformedBody]);
    let env = env("");
    fetch_refused(&env, &server);
    assert_eq!(server.pending_faults(), 0, "the second page was requested");
}

#[test]
fn a_malformed_page_fails_the_cycle_without_advancing() {
    let server = ApiServer::start(fixture("questions.json"));
    server.push_fault(Fault::MalformedBody);
    let env = env("");
    let out = fetch(&env, &server, &["--since", "2025-03-01"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("malformed page"), "{stderr}");
    assert_eq!(
        stderr.lines().filter(|l| l.starts_with("error:")).count(),
        1
    );
    let r = report(&out);
    assert_eq!(r["watermark"], Value::Null);
    assert_eq!(r["retries"], 0);
}

#[test]
fn a_malformed_record_is_quarantined_and_the_page_goes_on() {
    let mut questions = fixture("questions.json");
    let mut broken = questions[0].clone();
    broken["id"] = json!(1799999);
    broken["answeringBodyName"] = Value::Null;
    broken["isWithdrawn"] = json!("maybe");
    questions.push(broken);
    let server = ApiServer::start(questions);
    let env = env("");
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(r["quarantined"], 1, "{r}");
    assert_eq!(r["appended"], 11);
    let all = events(&env);
    let quarantined: Vec<&Value> = all
        .iter()
        .filter(|e| e["event"]["kind"] == "record_quarantined")
        .collect();
    assert_eq!(quarantined.len(), 1);
    assert!(quarantined[0]["event"]["raw"]
        .as_str()
        .unwrap()
        .contains("1799999"));
    assert!(quarantined[0]["event"]["reason"]
        .as_str()
        .unwrap()
        .contains("question 1799999"));
    // Fetching again keeps it once.
    assert_eq!(report(&ok(fetch(&env, &server, &[])))["appended"], 0);
}

#[test]
fn recorded_api_data_replays_through_ingest_in_every_shape() {
    let env = env("");
    let page = Path::new(FIXTURES).join("page-1.json");
    let out = ok(run(&env, &["ingest", "--json", page.to_str().unwrap()]));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["new_answers"], 10);
    // The same records as JSON lines, and fetched over HTTP: all already known.
    let lines = Path::new(FIXTURES).join("questions.jsonl");
    let out = ok(run(
        &env,
        &[
            "ingest",
            "--format",
            "api",
            "--json",
            lines.to_str().unwrap(),
        ],
    ));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["known"], 10);
    assert_eq!(summary["appended"], 0);
    let server = ApiServer::start(fixture("questions.json"));
    let r = report(&ok(fetch(&env, &server, &["--since", "2025-01-01"])));
    assert_eq!(r["appended"], 0, "{r}");
}

#[test]
fn a_cut_short_record_in_a_recorded_file_is_quarantined_not_logged() {
    let env = env("");
    let mut record = fixture("questions.json").remove(0);
    let text = record["answerText"].as_str().unwrap().to_string();
    record["answerText"] = json!(format!("{}...", &text[..60]));
    let file = env.data.parent().unwrap().join("cut.json");
    std::fs::write(&file, serde_json::to_vec(&vec![record]).unwrap()).unwrap();
    let out = ok(run(&env, &["ingest", file.to_str().unwrap()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 quarantined"), "{text}");
    assert!(text.contains("cut short"), "{text}");
}

#[test]
fn check_config_validates_without_running() {
    let env = env("");
    let out = ok(run(&env, &["check-config"]));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok"));
    let bad = env.data.parent().unwrap().join("bad.toml");
    std::fs::write(&bad, "[fetch]\nschedule = \"*/5 * * * *\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .args(["--config", bad.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("\"0 */5 * * * *\""), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .args(["check-config"])
        .env("ANSWERFEED_FETCH_BASE_URL", "not a url")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    // The variable is named, not the built-in defaults it was read over.
    assert!(
        err.starts_with(
            "error: config environment variable ANSWERFEED_FETCH_BASE_URL: fetch.base_url:"
        ),
        "{err}"
    );
}

/// SIGTERM mid-cycle: the daemon finishes its page, flushes and exits 0; restarted, it goes on
/// with no gap and no duplicate.
#[test]
fn the_daemon_stops_cleanly_on_sigterm_and_resumes() {
    let questions = fixture("questions.json");
    let server = ApiServer::start(questions.clone());
    // Slow pages, so that the signal lands in the middle of a cycle.
    server.on_list_request(Box::new(|_records, _request| {
        std::thread::sleep(Duration::from_millis(150));
    }));
    let env = env(&format!(
        "schedule = \"* * * * * *\"\nfirst_run_days = {}\nwindow_days = 60\npage_size = 2\n",
        support::first_run_days()
    ));
    let spawn = || {
        bin(&env)
            .args(["daemon", "--base-url", server.base_url().as_str()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut daemon = spawn();
    let started = Instant::now();
    // Signal once it is paging through a window that holds answers.
    while !server
        .requests()
        .iter()
        .any(|r| r.param("skip").is_some_and(|skip| skip != "0"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the daemon never paged"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let waited = Instant::now();
    let exit = loop {
        if let Some(exit) = daemon.try_wait().unwrap() {
            break exit;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = daemon.wait_with_output().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(run(&env, &["verify"]));
    let partial = answer_ids(&events(&env)).len();
    assert!(
        partial < 10,
        "the signal should have landed mid-backfill ({partial} logged)"
    );

    // Restart and let it finish the backfill.
    let mut daemon = spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let reached_the_end = server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/questions"))
            .any(|r| {
                r.param("answeredWhenTo")
                    .is_some_and(|to| to >= "2026-11-01")
            });
        if reached_the_end || Instant::now() > deadline {
            break;
        }
    }
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let exit = daemon.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    ok(run(&env, &["verify"]));
    let ids = answer_ids(&events(&env));
    let mut expected: Vec<u64> = questions
        .iter()
        .map(|q| q["id"].as_u64().unwrap())
        .collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every answer exactly once after the restart");
}

#[test]
fn json_lines_are_streamed_and_a_broken_line_is_quarantined() {
    let env = env("");
    let questions = fixture("questions.json");
    let mut text = String::new();
    for (i, q) in questions.iter().enumerate() {
        text.push_str(&q.to_string());
        text.push('\n');
        if i == 4 {
            text.push_str("{\"id\": 17, \"broken\n");
        }
    }
    let file = env.data.parent().unwrap().join("records.jsonl");
    std::fs::write(&file, text).unwrap();
    let out = ok(run(&env, &["ingest", "--json", file.to_str().unwrap()]));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["records"], 11);
    assert_eq!(summary["new_answers"], 10);
    assert_eq!(summary["quarantined"], 1);
    assert_eq!(summary["quarantine"][0]["index"], 5);
    assert!(summary["quarantine"][0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("JSON line 6"));
}
