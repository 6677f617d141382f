//! Crash and fault tests, bounded in time: kill -9 during a backfill, an API that misbehaves at
//! random, and an SMTP server that dies during delivery. Everything on 127.0.0.1.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api_server::{fixture_records, ApiServer, Fault};
use support::binary::{bin, ok, Env};
use support::smtp::SmtpSink;

/// `n` distinct answers made from the fixtures, dated across the first half of 2025.
fn synthetic(n: usize) -> Vec<Value> {
    let base = fixture_records("questions.json");
    (0..n)
        .map(|i| {
            let mut r = base[i % base.len()].clone();
            let day = 1 + (i * 180 / n.max(1)) as u64;
            let date = chrono::NaiveDate::from_ymd_opt(2025, 1, 1)
                .unwrap()
                .checked_add_days(chrono::Days::new(day))
                .unwrap();
            r["id"] = json!(1_900_000 + i as u64);
            r["uin"] = json!(format!("{}", 50_000 + i));
            r["dateAnswered"] = json!(format!("{date}T00:00:00"));
            r["dateTabled"] = json!(format!("{date}T00:00:00"));
            r["questionText"] = json!(format!(
                "To ask question {i}: {}",
                r["questionText"].as_str().unwrap()
            ));
            r["answerText"] = json!(format!(
                "<p>Answer number {i}.</p>{}",
                r["answerText"].as_str().unwrap()
            ));
            r
        })
        .collect()
}

fn env(extra: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[fetch]\ntimezone = \"UTC\"\ninitial_backoff_ms = 5\nmax_backoff_secs = 1\nread_timeout_secs = 1\n{extra}\n"
    ));
    env
}

fn events(env: &Env) -> Vec<Value> {
    ok(bin(env).args(["events", "--json"]).output().unwrap())
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// (kind, question, content hash) of every answer event, in log order.
fn answers(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .filter(|e| e["event"]["record"].is_object())
        .map(|e| {
            (
                e["event"]["kind"].as_str().unwrap().to_string(),
                e["event"]["question"].as_str().unwrap().to_string(),
                e["content_hash"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A small deterministic generator, so that a failing run can be repeated.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below.max(1)
    }
}

#[test]
fn kill_9_during_a_backfill_loses_and_duplicates_nothing() {
    let records = synthetic(240);
    let server = ApiServer::start(records.clone());
    // Slow pages, so that the kills land in the middle of cycles.
    server.on_list_request(Box::new(|_r, _q| {
        std::thread::sleep(Duration::from_millis(15))
    }));
    let env = env(&format!(
        "schedule = \"* * * * * *\"\nfirst_run_days = {}\nwindow_days = 20\npage_size = 10\n",
        support::first_run_days()
    ));
    let kills: u64 = std::env::var("ANSWERFEED_CRASH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(20);
    let mut rng = Lcg(42);
    let mut seen_progress = BTreeSet::new();
    for round in 0..kills {
        let mut daemon = bin(&env)
            .args(["daemon", "--base-url", &server.base_url()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + rng.next(1500)));
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        // The log must verify after every kill, not only at the end.
        let verify = bin(&env).arg("verify").output().unwrap();
        assert!(
            verify.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&verify.stdout)
        );
        seen_progress.insert(answers(&events(&env)).len());
    }
    assert!(
        seen_progress.len() > 1,
        "the kills should land at different points"
    );
    // Let one clean cycle finish whatever is left.
    ok(bin(&env)
        .args(["fetch", "--once", "--base-url", &server.base_url()])
        .output()
        .unwrap());
    let all = answers(&events(&env));
    let mut per_question: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, question, _) in &all {
        *per_question.entry(question.as_str()).or_default() += 1;
    }
    assert_eq!(per_question.len(), 240, "every answer is in the log");
    assert!(per_question.values().all(|n| *n == 1), "and only once");
    assert!(ok(bin(&env).arg("verify").output().unwrap()).starts_with("ok: "));
    let rebuilt: Value =
        serde_json::from_str(&ok(bin(&env).args(["rebuild", "--json"]).output().unwrap())).unwrap();
    assert_eq!(rebuilt["identical"], true, "views equal a fresh rebuild");
}

#[test]
fn an_api_misbehaving_at_random_gives_the_same_log_as_a_clean_run() {
    let records = synthetic(120);
    let clean_server = ApiServer::start(records.clone());
    let clean = env("page_size = 10\nwindow_days = 30\nmax_attempts = 12\n");
    ok(bin(&clean)
        .args([
            "fetch",
            "--once",
            "--base-url",
            &clean_server.base_url(),
            "--since",
            "2025-01-01",
            "--until",
            "2025-07-31",
        ])
        .output()
        .unwrap());

    let faulty_server = ApiServer::start(records);
    let faulty = env("page_size = 10\nwindow_days = 30\nmax_attempts = 12\n");
    // Faults drawn at random (seeded), each on the request after one served normally: failures
    // come as often as can be, yet always between successes.
    let mut rng = Lcg(7);
    let plan: Vec<Fault> = (0..16)
        .map(|_| match rng.next(11) {
            0 | 1 => Fault::Status(500),
            2 | 3 => Fault::Status(503),
            4 | 5 => Fault::TooManyRequests {
                retry_after_secs: 0,
            },
            6 | 7 => Fault::Reset,
            8 | 9 => Fault::TruncatedBody,
            _ => Fault::Hang(Duration::from_millis(1500)),
        })
        .collect();
    let planned = plan.len();
    faulty_server.fail_between_successes(plan);
    let out = ok(bin(&faulty)
        .args([
            "fetch",
            "--once",
            "--json",
            "--base-url",
            &faulty_server.base_url(),
            "--since",
            "2025-01-01",
            "--until",
            "2025-07-31",
        ])
        .output()
        .unwrap());
    let fired = planned - faulty_server.pending_faults();
    assert!(fired >= 10, "{fired} faults of {planned}");
    let report: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert!(report["retries"].as_u64().unwrap() >= 10, "{report}");
    assert_eq!(answers(&events(&clean)), answers(&events(&faulty)));
    let flags = |env: &Env| -> Vec<Value> {
        events(env)
            .into_iter()
            .filter(|e| e["event"]["kind"] == "flag_raised")
            .map(|e| e["event"].clone())
            .collect()
    };
    assert_eq!(flags(&clean), flags(&faulty));
}

#[test]
fn an_smtp_server_killed_during_delivery_still_gets_every_alert_once() {
    let mut sink = SmtpSink::start();
    let env = env("");
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\ninitial_backoff_secs = 0\ntimeout_secs = 5\n\n[[subscriptions]]\nname = \"all\"\nrecipients = [\"a@example.org\", \"b@example.org\", \"c@example.org\"]\nsince = \"2025-01-01\"\n",
        sink.port()
    ));
    std::fs::write(&env.config, config).unwrap();
    let page =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/api/page-1.json");
    ok(bin(&env)
        .args(["ingest", page.to_str().unwrap()])
        .output()
        .unwrap());

    // Deliver in the background and kill the server part-way through.
    let sender = bin(&env)
        .args(["alerts", "send"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while sink.messages().len() < 5 && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.stop();
    let first = sender.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let before = sink.messages().len();
    assert!(
        before < 30,
        "the server should have died mid-way ({before} delivered)"
    );

    sink.restart();
    let mut rounds = 0;
    loop {
        ok(bin(&env).args(["alerts", "send"]).output().unwrap());
        rounds += 1;
        let list = ok(bin(&env)
            .args(["alerts", "list", "--json"])
            .output()
            .unwrap());
        if list.lines().all(|l| l.contains("\"state\":\"sent\"")) || rounds > 5 {
            break;
        }
    }
    let messages = sink.wait_for(30, Duration::from_secs(10));
    let ids: BTreeSet<String> = messages
        .iter()
        .map(|m| m.header("Message-ID").unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 30, "every alert delivered");
    // A message the server stored just as it died may arrive twice, with the same Message-ID.
    assert!(messages.len() <= 31, "{} messages", messages.len());
    let recorded = events(&env)
        .iter()
        .filter(|e| e["event"]["kind"] == "alert_sent")
        .count();
    assert_eq!(recorded, 30, "each delivery recorded once");
}
