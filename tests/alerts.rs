//! End-to-end: alert emails from the built binary to a real SMTP server (aiosmtpd) on 127.0.0.1.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::api_server::ApiServer;
use support::binary::{bin, ok, run, Env};
use support::smtp::{ReceivedMessage, SmtpSink};

const API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api");

fn env(sink: &SmtpSink, subscription: &str, extra: &str) -> Env {
    let env = Env::new();
    env.write_config(&format!(
        "[fetch]\npage_size = 5\ntimezone = \"UTC\"\ninitial_backoff_ms = 20\n{extra}\n[smtp]\nhost = \"127.0.0.1\"\nport = {}\nsecurity = \"plain\"\nfrom = \"answerfeed <alerts@answerfeed.test>\"\ntimeout_secs = 5\ninitial_backoff_secs = 0\n\n[[subscriptions]]\n{subscription}\n",
        sink.port()
    ));
    env
}

/// SIGTERM, then the daemon must exit 0 within 20 s.
fn stop_cleanly(daemon: &mut std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the daemon did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

fn ingest_api(env: &Env, file: &str) {
    ok(run(
        env,
        &["ingest", Path::new(API).join(file).to_str().unwrap()],
    ));
}

fn message_ids(messages: &[ReceivedMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| m.header("Message-ID").unwrap_or_default().to_string())
        .collect()
}

const POLICING: &str = "name = \"desk\"\nrecipients = [\"desk@example.org\"]\ntopics = [\"policing\"]\nsince = \"2025-01-01\"";

#[test]
fn one_email_per_new_policing_answer_and_none_for_a_refetch() {
    let sink = SmtpSink::start();
    let server = ApiServer::start(support::api_server::fixture_records("questions.json"));
    let env = env(&sink, POLICING, "");
    let fetch = |env: &Env| {
        ok(run(
            env,
            &[
                "fetch",
                "--once",
                "--base-url",
                server.base_url().as_str(),
                "--since",
                "2025-01-01",
                "--until",
                "2025-03-31",
            ],
        ))
    };
    fetch(&env);
    let sent = ok(run(&env, &["alerts", "send"]));
    assert!(sent.starts_with("alerts: 10 sent, 0 failed"), "{sent}");
    let messages = sink.wait_for(10, Duration::from_secs(10));
    assert_eq!(messages.len(), 10);
    assert_eq!(
        message_ids(&messages).len(),
        10,
        "a distinct Message-ID each"
    );

    let dapo = messages
        .iter()
        .find(|m| m.subject().contains("Protection"))
        .unwrap_or_else(|| {
            panic!(
                "{:?}",
                messages.iter().map(|m| m.subject()).collect::<Vec<_>>()
            )
        });
    assert!(
        dapo.subject().starts_with("Home Office: "),
        "{}",
        dapo.subject()
    );
    assert_eq!(dapo.rcpt_tos, vec!["desk@example.org".to_string()]);
    let text = dapo.text_part().expect("a text/plain part");
    let html = dapo.html_part().expect("a text/html part");
    assert!(
        text.contains("Asked by Adrian Ramsay (Green Party - Waveney Valley)"),
        "{text}"
    );
    assert!(
        text.contains("Answered by Jess Phillips on 2025-03-28"),
        "{text}"
    );
    assert!(
        text.contains(
            "https://questions-statements.parliament.uk/written-questions/detail/2025-03-21/21001"
        ),
        "{text}"
    );
    assert!(html.contains("<a href=\"https://questions-statements.parliament.uk/written-questions/detail/2025-03-21/21001\">"), "{html}");
    // Tables are rendered as tables.
    let spit = messages
        .iter()
        .find(|m| {
            m.text_part()
                .unwrap_or_default()
                .contains("Spit and bite guard")
        })
        .unwrap();
    assert!(spit.html_part().unwrap().contains("<table"));

    // A re-fetch of the same answers sends nothing.
    fetch(&env);
    let again = ok(run(&env, &["alerts", "send"]));
    assert!(again.starts_with("alerts: 0 sent"), "{again}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.messages().len(), 10);

    // Every delivery is in the log.
    let events = ok(run(&env, &["events", "--json"]));
    assert_eq!(events.matches("\"kind\":\"alert_sent\"").count(), 10);
    let list = ok(run(&env, &["alerts", "list"]));
    assert_eq!(
        list.lines().filter(|l| l.contains(" sent ")).count(),
        10,
        "{list}"
    );
    // `status` counts the outbox from its unsent index and item count, not by reading it all.
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(
        status["outbox"],
        json!({"pending": 0, "retrying": 0, "sending": 0, "sent": 10}),
        "{status}"
    );
}

#[test]
fn digests_group_what_arrived_into_one_email_per_recipient() {
    let sink = SmtpSink::start();
    let env = env(
        &sink,
        "name = \"weekly\"\nrecipients = [\"a@example.org\", \"b@example.org\"]\ntopics = [\"domestic-abuse\"]\nmode = \"digest\"\ndigest_schedule = \"* * * * * *\"\nsince = \"2025-01-01\"",
        "",
    );
    ingest_api(&env, "page-1.json");
    std::thread::sleep(Duration::from_millis(1200));
    let sent = ok(run(&env, &["alerts", "send"]));
    assert!(sent.contains("2 sent"), "{sent}");
    assert!(sent.contains("2 digests made"), "{sent}");
    let messages = sink.wait_for(2, Duration::from_secs(10));
    assert_eq!(messages.len(), 2);
    let recipients: BTreeSet<String> = messages.iter().map(|m| m.rcpt_tos.join(",")).collect();
    assert_eq!(recipients.len(), 2);
    for m in &messages {
        assert_eq!(m.subject(), "answerfeed digest (weekly): 6 items");
        let text = m.text_part().unwrap();
        assert_eq!(text.matches("Asked by ").count(), 6, "{text}");
    }
    // The queue is empty now: the next tick sends nothing.
    std::thread::sleep(Duration::from_millis(1100));
    let again = ok(run(&env, &["alerts", "send"]));
    assert!(again.starts_with("alerts: 0 sent"), "{again}");
    // Digest items count like the others.
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(status["outbox"]["sent"], 2, "{status}");
}

#[test]
fn alerts_wait_while_the_server_is_down_and_are_delivered_once_when_it_is_back() {
    let mut sink = SmtpSink::start();
    let env = env(&sink, POLICING, "");
    ingest_api(&env, "page-1.json");
    sink.stop();
    let down = ok(run(&env, &["alerts", "send"]));
    assert!(
        down.contains("0 sent, 1 failed (will retry), 9 waiting"),
        "{down}"
    );
    let list = ok(run(&env, &["alerts", "list"]));
    assert!(list.contains("retrying"), "{list}");
    assert_eq!(list.lines().count(), 10, "nothing dropped: {list}");
    let status: Value = serde_json::from_str(&ok(run(&env, &["status", "--json"]))).unwrap();
    assert_eq!(
        status["outbox"],
        json!({"pending": 9, "retrying": 1, "sending": 0, "sent": 0}),
        "{status}"
    );

    sink.restart();
    let up = ok(run(&env, &["alerts", "send"]));
    assert!(up.starts_with("alerts: 10 sent"), "{up}");
    let messages = sink.wait_for(10, Duration::from_secs(10));
    assert_eq!(messages.len(), 10);
    assert_eq!(message_ids(&messages).len(), 10);
    let again = ok(run(&env, &["alerts", "send"]));
    assert!(again.starts_with("alerts: 0 sent"), "{again}");
}

#[test]
fn crafted_markup_in_an_answer_stays_text_in_the_email() {
    let sink = SmtpSink::start();
    let env = env(&sink, POLICING, "");
    let mut record = support::api_server::fixture_records("questions.json").remove(0);
    record["id"] = json!(1799001);
    record["answerText"] = json!("<p>The police said &lt;script&gt;alert('x')&lt;/script&gt; loudly.</p><p>See <a href=\"javascript:alert(1)\">the Parliament site</a> or <a href=\"https://evil.example/phish\">this page</a>.</p><script>document.write('gotcha')</script>");
    let file = env.data.parent().unwrap().join("crafted.json");
    std::fs::write(&file, serde_json::to_vec(&vec![record]).unwrap()).unwrap();
    ok(run(&env, &["ingest", file.to_str().unwrap()]));
    ok(run(&env, &["alerts", "send"]));
    let messages = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages.len(), 1);
    let html = messages[0].html_part().unwrap();
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script"), "{html}");
    assert!(!html.contains("javascript:"), "{html}");
    assert!(!html.contains("evil.example"), "{html}");
    assert!(!html.contains("gotcha"), "{html}");
    assert_eq!(
        html.matches("<a href=").count(),
        1,
        "only our own link: {html}"
    );
}

#[test]
fn list_preview_and_a_test_message() {
    let sink = SmtpSink::start();
    let env = env(&sink, POLICING, "");
    ingest_api(&env, "page-1.json");
    let list = ok(run(&env, &["alerts", "list", "--json"]));
    let items: Vec<Value> = list
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(items.len(), 10);
    assert!(items.iter().all(|i| i["state"] == "pending"));
    let id = items[0]["id"].as_str().unwrap();
    let preview = ok(run(&env, &["alerts", "preview", id]));
    assert!(preview.contains("To: desk@example.org"), "{preview}");
    assert!(preview.contains("--- text/plain ---"), "{preview}");
    assert!(preview.contains("--- text/html ---"), "{preview}");
    assert!(sink.messages().is_empty(), "a preview sends nothing");
    let missing = run(&env, &["alerts", "preview", "no-such-alert"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no alert \"no-such-alert\""));

    let test = ok(run(&env, &["alerts", "send-test", "me@example.org"]));
    assert!(
        test.contains("test message sent to me@example.org"),
        "{test}"
    );
    let messages = sink.wait_for(1, Duration::from_secs(10));
    assert_eq!(messages[0].subject(), "answerfeed test message");
}

#[test]
fn the_smtp_password_comes_from_the_environment_and_is_never_printed() {
    let sink = SmtpSink::start_with_auth("feed", "s3cret-pw");
    let env = env(&sink, POLICING, "");
    let config = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        config.replace(
            "security = \"plain\"",
            "security = \"plain\"\nusername = \"feed\"",
        ),
    )
    .unwrap();
    // No password anywhere: a clear error, not a panic and not an attempt without it.
    let missing = run(&env, &["alerts", "send-test", "me@example.org"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("ANSWERFEED_SMTP_PASSWORD"), "{err}");

    let out = bin(&env)
        .env("ANSWERFEED_SMTP_PASSWORD", "s3cret-pw")
        .args(["-vv", "alerts", "send-test", "me@example.org"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("s3cret-pw") && !stderr.contains("s3cret-pw"));
    assert_eq!(sink.wait_for(1, Duration::from_secs(10)).len(), 1);

    // The wrong password is refused by the server and reported on one line.
    let wrong = bin(&env)
        .env("ANSWERFEED_SMTP_PASSWORD", "nope")
        .args(["alerts", "send-test", "me@example.org"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&wrong.stderr).lines().count(), 1);
}

#[test]
fn the_daemon_fetches_and_emails_each_new_answer_once() {
    let sink = SmtpSink::start();
    let server = ApiServer::start(support::api_server::fixture_records("questions.json"));
    let env = env(
        &sink,
        POLICING,
        &format!(
            "schedule = \"* * * * * *\"\nfirst_run_days = {}\nwindow_days = 400\n",
            support::first_run_days()
        ),
    );
    let mut daemon = bin(&env)
        .args(["daemon", "--base-url", server.base_url().as_str()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let messages = sink.wait_for(10, Duration::from_secs(60));
    // A few more cycles: nothing is sent twice.
    std::thread::sleep(Duration::from_millis(2500));
    stop_cleanly(&mut daemon);
    assert_eq!(messages.len(), 10);
    let all = sink.messages();
    assert_eq!(all.len(), 10, "nothing sent twice");
    assert_eq!(message_ids(&all).len(), 10);
}

#[test]
fn a_daemon_that_closes_its_log_between_cycles_emails_each_new_answer_once() {
    let sink = SmtpSink::start();
    let mut records = support::api_server::fixture_records("questions.json");
    // Published later, answered today: the next cycle's window holds it.
    let mut late = records.pop().unwrap();
    late["dateAnswered"] =
        Value::String(chrono::Utc::now().format("%Y-%m-%dT00:00:00").to_string());
    let server = ApiServer::start(records);
    let env = env(
        &sink,
        POLICING,
        &format!(
            "schedule = \"*/2 * * * * *\"\nfirst_run_days = {}\nwindow_days = 400\n[store]\nclose_if_idle_secs = 1\n",
            support::first_run_days()
        ),
    );
    let log_file = env.tmp.path().join("daemon.log");
    let mut daemon = bin(&env)
        .args(["daemon", "--base-url", server.base_url().as_str()])
        .env("RUST_LOG", "info,answerfeed::daemon=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    sink.wait_for(9, Duration::from_secs(60));
    let closings = || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .matches("log closed until the next cycle")
            .count()
    };
    // The log is closed once the outbox is empty; the late answer arrives while it is closed.
    let started = Instant::now();
    while closings() == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "never closed");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.upsert(late);
    sink.wait_for(10, Duration::from_secs(60));
    let after_late = closings();
    // A few more cycles, each closing the log again: nothing is sent twice.
    let started = Instant::now();
    while closings() < after_late + 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not closed again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_cleanly(&mut daemon);
    let all = sink.messages();
    assert_eq!(all.len(), 10, "nothing sent twice");
    assert_eq!(message_ids(&all).len(), 10);
}
