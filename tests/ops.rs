//! End-to-end ops: status, /healthz, /readyz, /metrics, commands while the daemon runs, backup
//! and restore, compaction. Everything on 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api_server::{fixture_records, ApiServer, Fault};
use support::binary::{bin, ok, run, Env};

fn env(extra_fetch: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[fetch]\npage_size = 5\ntimezone = \"UTC\"\ninitial_backoff_ms = 10\nmax_backoff_secs = 1\nmax_attempts = 2\nread_timeout_secs = 2\n{extra_fetch}\n[ops]\nlisten = \"127.0.0.1:{}\"\nready_intervals = 3\n",
        env.ops_port
    ));
    env
}

/// A plain HTTP/1.1 GET on loopback: (status, body).
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of a Prometheus sample (`name{labels}`), from /metrics text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn start_daemon(env: &Env, base_url: &str) -> Child {
    let child = bin(env)
        .args(["daemon", "--base-url", base_url])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while get(env.ops_port, "/healthz").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the ops endpoint never came up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn stop(mut child: Child) {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_metric(port: u16, name: &str, at_least: f64) -> String {
    wait_for_metrics(port, &format!("{name} >= {at_least}"), |text| {
        sample(text, name).is_some_and(|v| v >= at_least)
    })
}

/// `fetch --once` of the fixture's answers (January to March 2025).
fn fetch_first_quarter(env: &Env, server: &ApiServer) {
    ok(run(
        env,
        &[
            "fetch",
            "--once",
            "--base-url",
            &server.base_url(),
            "--since",
            "2025-01-01",
            "--until",
            "2025-03-31",
        ],
    ));
}

/// Every second, reaching back before the fixtures' dates.
fn daemon_config() -> String {
    format!(
        "schedule = \"* * * * * *\"\nfirst_run_days = {}\nwindow_days = 400\n",
        support::first_run_days()
    )
}

#[test]
fn status_after_a_fetch_reports_the_cycle_the_log_and_the_consumers() {
    let server = ApiServer::start(fixture_records("questions.json"));
    let env = env("");
    fetch_first_quarter(&env, &server);
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(status["events_by_kind"]["answer_observed"], 10);
    let flags = status["events_by_kind"]["flag_raised"].as_u64().unwrap();
    assert!(flags >= 3, "{status}");
    let head = status["log_head"].as_u64().unwrap();
    assert_eq!(head, 10 + flags);
    for consumer in ["views", "diff", "alerts"] {
        assert_eq!(status["checkpoints"][consumer], head, "{consumer}");
    }
    assert_eq!(status["quarantined"], 0);
    assert_eq!(status["outbox"]["pending"], 0);
    assert!(status["data_dir_bytes"].as_u64().unwrap() > 0);
    let source = &status["sources"][0];
    assert_eq!(source["watermark"], "2025-03-31");
    assert!(source["lag_days"].as_i64().unwrap() > 500);
    let cycle = &source["last_cycle"];
    assert_eq!(cycle["outcome"], "ok");
    assert_eq!(cycle["appended"], 10);
    assert_eq!(cycle["appended_by_kind"]["answer_observed"], 10);
    assert!(cycle["pages"].as_u64().unwrap() >= 2);
    let human = ok(run(&env, &["status"]));
    assert!(human.contains("log head:     #"), "{human}");
    assert!(human.contains("watermark:  2025-03-31"), "{human}");
    assert!(human.contains("last cycle: "), "{human}");
}

#[test]
fn metrics_and_readiness_follow_the_daemons_cycles() {
    let server = ApiServer::start(fixture_records("questions.json"));
    let env = env(&daemon_config());
    let daemon = start_daemon(&env, &server.base_url());
    let metrics = wait_for_metric(env.ops_port, "answerfeed_cycles_total{outcome=\"ok\"}", 1.0);
    assert_eq!(
        sample(
            &metrics,
            "answerfeed_events_appended_total{kind=\"answer_observed\"}"
        ),
        Some(10.0),
        "{metrics}"
    );
    assert!(sample(&metrics, "answerfeed_pages_total").unwrap() >= 2.0);
    assert!(sample(&metrics, "answerfeed_records_total").unwrap() >= 10.0);
    assert!(sample(&metrics, "answerfeed_log_head").unwrap() >= 10.0);
    assert!(sample(&metrics, "answerfeed_cycle_duration_seconds_count").unwrap() >= 1.0);
    assert_eq!(get(env.ops_port, "/healthz").map(|r| r.0), Some(200));
    let (code, body) = get(env.ops_port, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");

    // The API starts failing: cycles fail, and the daemon says it is not ready.
    for _ in 0..200 {
        server.push_fault(Fault::Status(503));
    }
    let started = Instant::now();
    let body = loop {
        let (code, body) = get(env.ops_port, "/readyz").unwrap();
        if code == 503 {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "still ready: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.contains("the last fetch cycle failed"), "{body}");
    let metrics = wait_for_metric(
        env.ops_port,
        "answerfeed_cycles_total{outcome=\"failed\"}",
        1.0,
    );
    assert!(sample(&metrics, "answerfeed_retries_total").unwrap() >= 1.0);
    assert_eq!(
        get(env.ops_port, "/healthz").map(|r| r.0),
        Some(200),
        "up, though not ready"
    );
    stop(daemon);
}

#[test]
fn read_commands_work_while_the_daemon_runs_and_writes_are_refused_clearly() {
    let server = ApiServer::start(fixture_records("questions.json"));
    let env = env(&daemon_config());
    let daemon = start_daemon(&env, &server.base_url());
    wait_for_metric(env.ops_port, "answerfeed_cycles_total{outcome=\"ok\"}", 1.0);
    let running: Vec<String> = [
        vec!["questions", "--json"],
        vec!["flags", "--json"],
        vec!["questions", "--force", "Gwent"],
        vec!["stats", "--force", "Met"],
        vec!["duplicates"],
        vec!["verify"],
    ]
    .iter()
    .map(|args| ok(run(&env, args)))
    .collect();
    let status = ok(run(&env, &["status"]));
    assert!(
        status.contains("events:       answer_observed 10"),
        "{status}"
    );

    let write = run(&env, &["ingest", "/dev/null"]);
    assert_eq!(write.status.code(), Some(1));
    let err = String::from_utf8_lossy(&write.stderr);
    assert!(err.contains("'ingest' writes to the data dir"), "{err}");
    assert!(err.contains("stop it first"), "{err}");
    assert_eq!(err.lines().count(), 1);

    stop(daemon);
    let stopped: Vec<String> = [
        vec!["questions", "--json"],
        vec!["flags", "--json"],
        vec!["questions", "--force", "Gwent"],
        vec!["stats", "--force", "Met"],
        vec!["duplicates"],
        vec!["verify"],
    ]
    .iter()
    .map(|args| ok(run(&env, args)))
    .collect();
    assert_eq!(running, stopped, "the same output, daemon running or not");
}

#[test]
fn a_backup_taken_while_the_daemon_runs_restores_to_the_same_log_and_views() {
    let server = ApiServer::start(fixture_records("questions.json"));
    let env = env(&daemon_config());
    let daemon = start_daemon(&env, &server.base_url());
    wait_for_metric(env.ops_port, "answerfeed_cycles_total{outcome=\"ok\"}", 1.0);
    let backup = env.tmp.path().join("backup");
    let out = ok(run(&env, &["backup", backup.to_str().unwrap()]));
    assert!(out.starts_with("backup of "), "{out}");
    // A backup never overwrites anything.
    let again = run(&env, &["backup", backup.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("is not empty"));
    stop(daemon);

    let restored = env.tmp.path().join("restored");
    let restore = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .args([
            "--config",
            env.config.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ])
        .args(["restore", backup.to_str().unwrap()])
        .output()
        .unwrap();
    let text = ok(restore);
    assert!(text.starts_with("restored "), "{text}");
    let in_restored = |args: &[&str]| {
        ok(Command::new(env!("CARGO_BIN_EXE_answerfeed"))
            .args([
                "--config",
                env.config.to_str().unwrap(),
                "--data-dir",
                restored.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap())
    };
    assert!(in_restored(&["verify"]).starts_with("ok: "));
    let rebuilt: Value = serde_json::from_str(&in_restored(&["rebuild", "--json"])).unwrap();
    assert_eq!(rebuilt["identical"], true);
    // The restored data dir answers like the original (taken at the backup's head).
    let head_of = |text: &str| -> u64 {
        let v: Value = serde_json::from_str(text).unwrap();
        v["log_head"].as_u64().unwrap()
    };
    let restored_head = head_of(&in_restored(&["status", "--json"]));
    let original_head = head_of(&ok(run(&env, &["status", "--json"])));
    assert_eq!(
        restored_head, original_head,
        "nothing was appended after the backup here"
    );
    assert_eq!(
        in_restored(&["export", "--view", "questions"]),
        ok(run(&env, &["export", "--view", "questions"]))
    );
    assert_eq!(
        in_restored(&["export", "--view", "flags", "--format", "csv"])
            .lines()
            .count(),
        ok(run(&env, &["export", "--view", "flags", "--format", "csv"]))
            .lines()
            .count()
    );
    let watermark = |text: &str| -> Value {
        let v: Value = serde_json::from_str(text).unwrap();
        v["sources"][0]["watermark"].clone()
    };
    assert_eq!(
        watermark(&in_restored(&["status", "--json"])),
        watermark(&ok(run(&env, &["status", "--json"])))
    );
}

#[test]
fn compaction_keeps_everything_and_the_old_copy() {
    let env = env("");
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/written-answers-sample.txt");
    ok(run(&env, &["ingest", sample.to_str().unwrap()]));
    let before = ok(run(&env, &["export", "--view", "questions"]));
    let out = ok(run(&env, &["compact"]));
    assert!(out.starts_with("compacted "), "{out}");
    assert!(ok(run(&env, &["verify"])).starts_with("ok: 13 events"));
    assert_eq!(ok(run(&env, &["export", "--view", "questions"])), before);
    let kept = std::fs::read_dir(env.tmp.path())
        .unwrap()
        .flatten()
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("data.before-compact-")
        });
    assert!(kept);
}

#[test]
fn the_shipped_deploy_files_are_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let production = root.join("deploy/production.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .env_remove("ANSWERFEED_CONFIG")
        .args(["--config", production.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(root.join("deploy/answerfeed.service")).unwrap();
    for line in [
        "User=answerfeed",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/answerfeed",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing from the unit"
        );
    }
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.matches("FROM ").count() >= 2, "multi-stage");
    assert!(dockerfile.contains("USER answerfeed"), "non-root");
}

/// Polls /metrics until `ready` holds for the text.
fn wait_for_metrics(port: u16, what: &str, ready: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        if let Some((200, text)) = get(port, "/metrics") {
            if ready(&text) {
                return text;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_closes_the_log_between_cycles_and_still_answers_and_fetches() {
    let mut records = fixture_records("questions.json");
    // Published later, answered today: the next cycle's window holds it.
    let mut late = records.pop().unwrap();
    late["dateAnswered"] =
        Value::String(chrono::Utc::now().format("%Y-%m-%dT00:00:00").to_string());
    let server = ApiServer::start(records);
    let env = env(
        &format!(
            "schedule = \"*/3 * * * * *\"\nfirst_run_days = {}\nwindow_days = 400\n[store]\nclose_if_idle_secs = 1\n",
            support::first_run_days()
        ),
    );
    let daemon = start_daemon(&env, &server.base_url());
    let open = |text: &str| sample(text, "answerfeed_log_open");
    let ok_cycles = |text: &str| sample(text, "answerfeed_cycles_total{outcome=\"ok\"}");

    // After its first cycle the daemon closes the log; /metrics and /readyz answer from the
    // status kept as it was closed (that they do not open it is a unit test in `ops`).
    let metrics = wait_for_metrics(env.ops_port, "closed after a cycle", |t| {
        ok_cycles(t) >= Some(1.0) && open(t) == Some(0.0)
    });
    let head = sample(&metrics, "answerfeed_log_head").unwrap();
    assert!(head >= 9.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "answerfeed_consumer_lag_events{consumer=\"views\"}"
        ),
        Some(0.0),
        "{metrics}"
    );
    let (code, body) = get(env.ops_port, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");

    // A query opens it again and gets the same answer as with the daemon stopped.
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(status["events_by_kind"]["answer_observed"], 9, "{status}");
    // Another process still cannot take the data dir, open or closed.
    wait_for_metrics(env.ops_port, "closed again", |t| open(t) == Some(0.0));
    let write = run(&env, &["ingest", "/dev/null"]);
    assert_eq!(write.status.code(), Some(1));
    let err = String::from_utf8_lossy(&write.stderr);
    assert!(err.contains("stop it first"), "{err}");

    // An answer published while the log is closed is fetched by the next cycle.
    server.upsert(late);
    wait_for_metrics(env.ops_port, "the late answer appended", |t| {
        sample(
            t,
            "answerfeed_events_appended_total{kind=\"answer_observed\"}",
        ) >= Some(10.0)
            && open(t) == Some(0.0)
    });
    let questions = ok(run(&env, &["questions", "--json"]));
    assert_eq!(questions.lines().count(), 10, "{questions}");
    let verify = ok(run(&env, &["verify"]));
    stop(daemon);
    assert_eq!(ok(run(&env, &["verify"])), verify);
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(status["events_by_kind"]["answer_observed"], 10, "{status}");
    for consumer in ["views", "diff", "alerts"] {
        assert_eq!(
            status["checkpoints"][consumer], status["log_head"],
            "{consumer}"
        );
    }
}

#[test]
fn a_command_sent_while_the_log_is_closed_opens_it_and_the_daemon_closes_it_again() {
    let server = ApiServer::start(fixture_records("questions.json"));
    // A yearly schedule: no cycle will close the log, only the daemon's poll.
    let env = env("schedule = \"0 0 0 1 1 *\"\n[store]\nclose_if_idle_secs = 1\n");
    fetch_first_quarter(&env, &server);
    let daemon = start_daemon(&env, &server.base_url());
    let open = |text: &str| sample(text, "answerfeed_log_open");
    wait_for_metrics(env.ops_port, "closed after start", |t| open(t) == Some(0.0));
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(status["events_by_kind"]["answer_observed"], 10, "{status}");
    let metrics = get(env.ops_port, "/metrics").unwrap().1;
    assert_eq!(
        open(&metrics),
        Some(1.0),
        "the command opened it: {metrics}"
    );
    wait_for_metrics(env.ops_port, "closed again", |t| open(t) == Some(0.0));
    stop(daemon);
}
