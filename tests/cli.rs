//! End-to-end: the built `answerfeed` binary against a real sled data dir in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/written-answers-sample.txt"
);

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_answerfeed"));
    cmd.env_remove("ANSWERFEED_DATA_DIR")
        .env_remove("ANSWERFEED_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    cmd
}

fn run(dir: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn events(dir: &Path) -> Vec<serde_json::Value> {
    json_lines(&ok(run(dir, &["events", "--json"])))
}

fn ingest_json(dir: &Path, files: &[&Path]) -> serde_json::Value {
    let mut args = vec!["ingest".to_string(), "--json".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(run(dir, &args));
    let mut lines = json_lines(&out);
    assert_eq!(lines.len(), files.len());
    lines.remove(0)
}

/// Writes `text` into the temp dir as a file and returns its path.
fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn ingest_twice_appends_once() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = ok(run(&data, &["ingest", SAMPLE]));
    let text = stdout(&first);
    assert!(
        text.contains(": 10 records: 10 appended (10 new answers, 0 revisions, 0 quarantined), 0 already known"),
        "{text}"
    );
    let after_first = events(&data);
    // Ten answers, then the three flags the diff module raised about them.
    assert_eq!(after_first.len(), 13);
    let seqs: Vec<u64> = after_first
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=13).collect::<Vec<_>>());
    assert!(after_first.iter().all(|e| e["schema"] == 1));
    assert!(after_first[..10]
        .iter()
        .all(|e| e["event"]["kind"] == "answer_observed"));
    assert!(after_first[10..]
        .iter()
        .all(|e| e["event"]["kind"] == "flag_raised"));

    let second = ingest_json(&data, &[Path::new(SAMPLE)]);
    assert_eq!(second["appended"], 0);
    assert_eq!(second["known"], 10);
    assert_eq!(events(&data), after_first, "the log is unchanged");
}

#[test]
fn dumps_are_appended_oldest_first_and_keep_their_positions() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let all = events(&data);
    // The dump lists newest first, so the log starts with its last record.
    let first = &all[0];
    assert_eq!(first["source"]["position"], 9);
    assert_eq!(first["event"]["record"]["feed_position"]["index"], 9);
    assert_eq!(
        first["event"]["record"]["feed_position"]["order"],
        "newest_first"
    );
    assert_eq!(all[9]["source"]["line"], 1);

    let reversed = tmp.path().join("reversed");
    ok(run(&reversed, &["ingest", "--oldest-first", SAMPLE]));
    let all = events(&reversed);
    assert_eq!(all[0]["source"]["position"], 0);
    assert_eq!(
        all[0]["event"]["record"]["feed_position"]["order"],
        "oldest_first"
    );
    assert_eq!(
        all[0]["event"]["record"]["asking_member"]["name"],
        "Adrian Ramsay"
    );
}

#[test]
fn a_changed_answer_appends_one_revision() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let sample = std::fs::read_to_string(SAMPLE).unwrap();
    let changed = sample.replacen(
        "punishable by up to 5 years’ imprisonment",
        "punishable by up to five years’ imprisonment",
        1,
    );
    assert_ne!(changed, sample);
    let changed = write(tmp.path(), "changed.txt", changed.as_bytes());

    let summary = ingest_json(&data, &[&changed]);
    assert_eq!(summary["appended"], 1);
    assert_eq!(summary["revisions"], 1);
    assert_eq!(summary["known"], 9);

    let all = events(&data);
    // The revision, then the flag with its word diff.
    assert_eq!(all.len(), 15);
    let revision = &all[13];
    assert_eq!(all[14]["event"]["flag"]["flag"], "answer_changed");
    assert_eq!(revision["event"]["kind"], "answer_revised");
    let previous_seq = revision["event"]["previous_seq"].as_u64().unwrap();
    let previous = &all[(previous_seq - 1) as usize];
    assert_eq!(previous["event"]["question"], revision["event"]["question"]);
    assert_eq!(
        revision["event"]["previous_hash"], previous["content_hash"],
        "the revision carries the old hash"
    );
    assert_ne!(revision["content_hash"], previous["content_hash"]);

    // Ingesting the changed copy again is a no-op too.
    assert_eq!(ingest_json(&data, &[&changed])["appended"], 0);

    // `questions` shows the revised text for that question, once.
    let questions = json_lines(&ok(run(&data, &["questions", "--json"])));
    assert_eq!(questions.len(), 10);
    let revised: Vec<_> = questions
        .iter()
        .filter(|q| q["question"] == revision["event"]["question"])
        .collect();
    assert_eq!(revised.len(), 1);
    assert_eq!(revised[0]["kind"], "answer_revised");
    assert!(revised[0]["record"]
        .to_string()
        .contains("up to five years"));
}

#[test]
fn broken_records_are_quarantined_and_the_rest_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut bytes = b"Some junk that is not a record\n".to_vec();
    bytes.extend_from_slice(
        b"Asked by: Good One (Labour - Somewhere)\nQuestion to the Home Office:\nTo ask about one thing.\nAnswered by A Minister - Minister of State (Home Office)\nThe first answer.\n",
    );
    bytes.extend_from_slice(
        b"Asked by: No Answer (Labour - Elsewhere)\nQuestion to the Home Office:\nTo ask about nothing.\n",
    );
    bytes.extend_from_slice(
        b"Asked by: Bad Bytes (Labour - Nowhere)\nQuestion to the Home Office:\nTo ask \xff\xfe about bytes.\nAnswered by A Minister\nAn answer.\n",
    );
    bytes.extend_from_slice(
        b"Asked by: Good Two (Green Party - Somewhere Else)\nQuestion to the Attorney General:\nTo ask about another thing.\nAnswered by Another Minister\nThe second answer.\n",
    );
    let broken = write(tmp.path(), "broken.txt", &bytes);

    let out = ok(run(&data, &["ingest", broken.to_str().unwrap()]));
    let text = stdout(&out);
    assert!(
        text.contains("5 records: 5 appended (2 new answers, 0 revisions, 3 quarantined)"),
        "{text}"
    );
    assert!(
        text.contains("line 1): text that is not a record"),
        "{text}"
    );
    assert!(text.contains("has no 'Answered by' line"), "{text}");
    assert!(text.contains("invalid UTF-8 on line 12"), "{text}");

    let all = events(&data);
    let kinds: Vec<&str> = all
        .iter()
        .map(|e| e["event"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "answer_observed").count(), 2);
    assert_eq!(
        kinds.iter().filter(|k| **k == "record_quarantined").count(),
        3
    );
    let bad_bytes = all
        .iter()
        .find(|e| {
            e["event"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("UTF-8"))
        })
        .unwrap();
    assert!(
        bad_bytes["event"]["raw_base64"].is_string(),
        "raw bytes kept"
    );

    // The same broken file again: nothing new, quarantined records included.
    let again = ingest_json(&data, &[&broken]);
    assert_eq!(again["appended"], 0);
    assert_eq!(again["known"], 5);
    ok(run(&data, &["verify"]));
}

#[test]
fn verify_passes_a_good_log_and_names_an_altered_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let good = ok(run(&data, &["verify"]));
    assert_eq!(
        stdout(&good).trim(),
        "ok: 13 events, checksums, sequence and index good"
    );

    // Alter event 4 behind the log's back, in its segment file: records are the event's seq
    // (u64 BE), the stored frame's length (u32 BE), then the frame: a version byte, the JSON's
    // CRC-32, its length, the JSON LZ4-compressed. One bit of the stored checksum flipped.
    {
        let segment = data.join("events").join("00000000.seg");
        let mut bytes = std::fs::read(&segment).unwrap();
        let mut at = 0usize;
        loop {
            let seq = u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let len = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap()) as usize;
            if seq == 4 {
                assert_eq!(bytes[at + 12], 2, "stored as frame 2");
                bytes[at + 13] ^= 0x01;
                break;
            }
            at += 12 + len;
        }
        std::fs::write(&segment, bytes).unwrap();
    }
    let bad = run(&data, &["verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(
        text.starts_with("bad: event 4: checksum mismatch"),
        "{text}"
    );
    assert!(text.contains("3 events before it are good"), "{text}");

    let json = run(&data, &["verify", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let report = &json_lines(&json)[0];
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_bad"]["seq"], 4);

    // Reading the log past the bad event is a clear error, not a panic.
    let read = run(&data, &["events", "--from", "4"]);
    assert_eq!(read.status.code(), Some(1));
    assert!(
        stderr(&read).starts_with("error: event 4 is corrupt"),
        "{}",
        stderr(&read)
    );
}

#[test]
fn a_second_process_gets_a_clear_error_not_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let _held = answerfeed::log::EventLog::open(&data, Default::default()).unwrap();

    let started = Instant::now();
    let mut child = bin()
        .arg("--data-dir")
        .arg(&data)
        .args(["ingest", SAMPLE])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the second process hung on the locked data dir");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    assert_eq!(status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("which a running answerfeed"), "{err}");
    assert!(err.contains(&std::process::id().to_string()), "{err}");
}

#[test]
fn wrong_flags_and_missing_files_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["ingest", "--bogus", SAMPLE],
            2,
            "unexpected argument '--bogus'",
        ),
        (&["frobnicate"], 2, "unrecognized subcommand 'frobnicate'"),
        (&["ingest"], 2, "required"),
        (
            &["ingest", "--format", "pdf", SAMPLE],
            2,
            "invalid value 'pdf'",
        ),
        (
            &["events", "--from", "minus-one"],
            2,
            "invalid value 'minus-one'",
        ),
        (
            &["ingest", "/no/such/file.txt"],
            1,
            "cannot read /no/such/file.txt",
        ),
    ];
    for (args, code, needle) in cases {
        let out = run(&data, args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // A missing file among good ones: nothing is ingested at all.
    let out = run(&data, &["ingest", SAMPLE, "/no/such/file.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(events(&data).len(), 0);
}

#[test]
fn a_file_that_is_not_a_dump_is_refused_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let notes = write(tmp.path(), "notes.txt", b"Shopping list:\nmilk\n");
    let out = run(&data, &["ingest", notes.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("notes.txt: cannot tell its format"), "{err}");
    assert!(err.contains("no 'Asked by:' record"), "{err}");
    assert_eq!(err.lines().count(), 1);

    // Forced as text, it is kept whole in quarantine rather than lost.
    let forced = ok(run(
        &data,
        &["ingest", "--format", "text", notes.to_str().unwrap()],
    ));
    assert!(
        stdout(&forced).contains("1 quarantined"),
        "{}",
        stdout(&forced)
    );

    // Broken JSON is named with its position, and nothing is appended.
    let broken = write(tmp.path(), "page.json", b"{\"results\": [{\"value\": ");
    let out = run(&data, &["ingest", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("page.json: not API data: truncated JSON"),
        "{err}"
    );
    assert_eq!(events(&data).len(), 1);
}

#[test]
fn a_bad_config_is_a_one_line_error() {
    let tmp = tempfile::tempdir().unwrap();
    let config = write(
        tmp.path(),
        "answerfeed.toml",
        b"[store]\ncache_mb = 8\ncolour = 3\n",
    );
    let out = bin()
        .arg("--config")
        .arg(&config)
        .args([
            "--data-dir",
            tmp.path().join("d").to_str().unwrap(),
            "verify",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("answerfeed.toml"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn events_from_and_limit_page_through_the_log() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let page = json_lines(&ok(run(
        &data,
        &["events", "--json", "--from", "4", "--limit", "3"],
    )));
    let seqs: Vec<u64> = page.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![4, 5, 6]);
    let human = stdout(&ok(run(&data, &["events", "--limit", "2"])));
    assert_eq!(human.lines().count(), 2);
    assert!(human.starts_with("#1 "), "{human}");
    assert!(human.contains("answer_observed"), "{human}");
}

#[test]
fn questions_lists_every_answer_with_tables_and_forces() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let questions = json_lines(&ok(run(&data, &["questions", "--json"])));
    assert_eq!(questions.len(), 10);
    let spit = questions
        .iter()
        .find(|q| q["record"]["asking_member"]["name"] == "Lord Porter of Spalding")
        .unwrap();
    let table = spit["record"]["answer"]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "table")
        .unwrap();
    assert_eq!(table["rows"].as_array().unwrap().len(), 133);
    assert_eq!(
        table["rows"][0]["cells"][3],
        serde_json::json!({"int": 8281})
    );

    let human = stdout(&ok(run(&data, &["questions"])));
    assert!(human.contains("asked by Adrian Ramsay (Green Party - Waveney Valley); answered by Jess Phillips - Parliamentary Under-Secretary (Home Office)"), "{human}");
    assert!(human.contains("tables: 133 rows x 4 columns"), "{human}");
    assert!(human.contains("forces: Greater Manchester Police, Cleveland Police, North Wales Police, British Transport Police"), "{human}");
}

#[test]
fn demo_runs_on_a_fresh_dir_and_refuses_a_used_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let out = ok(run(&data, &["demo"]));
    let text = stdout(&out);
    assert!(
        text.contains("10 records: 10 appended (10 new answers, 0 revisions, 0 quarantined)"),
        "{text}"
    );
    assert!(
        text.contains("Ingested again: 0 appended, 10 already known"),
        "{text}"
    );
    assert!(text.contains("ok: 13 events"), "{text}");
    assert!(text.contains("removed Gwent"), "{text}");
    assert!(text.contains("added Cleveland, North Wales"), "{text}");
    assert!(text.contains("table \"Drunken or Drug Influenced Driving Offence Volumes\": header [ | 2022 | 2023 | 2024], 45 rows (1 total rows, 44 rows naming a force)"), "{text}");
    // The demo's data dir is a normal one afterwards.
    assert_eq!(events(&data).len(), 13);

    let again = run(&data, &["demo"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("is not empty"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn output_into_a_closed_pipe_is_not_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    ok(run(&data, &["ingest", SAMPLE]));
    let mut child = bin()
        .arg("--data-dir")
        .arg(&data)
        .args(["events", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn unknown_force_names_are_kept_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dump = write(
        tmp.path(),
        "forces.txt",
        "Asked by: A Member (Labour - Somewhere)\nQuestion to the Home Office:\nTo ask how many arrests each force made.\nAnswered by A Minister\nThe figures are below.\nForce | Arrests |\nMPS | 1,200 |\nKent Police | 300 |\nPolice Scotland | 50 |\nTotal | 1,550 |\n"
            .as_bytes(),
    );
    let out = ok(run(&data, &["ingest", dump.to_str().unwrap()]));
    assert!(
        stdout(&out).contains("not a known police force, kept as written: Police Scotland"),
        "{}",
        stdout(&out)
    );
    let record = &events(&data)[0]["event"]["record"];
    assert_eq!(
        record["unknown_forces"],
        serde_json::json!(["Police Scotland"])
    );
    let rows = &record["answer"]["blocks"][1]["rows"];
    assert_eq!(rows[0]["force"]["id"], "metropolitan");
    assert_eq!(rows[1]["force"]["id"], "kent");
    assert_eq!(
        rows[2]["cells"][0],
        serde_json::json!({"text": "Police Scotland"})
    );
    assert!(rows[2]["force"].is_null());
    assert_eq!(rows[3]["total"], true);
    assert_eq!(rows[3]["cells"][1], serde_json::json!({"int": 1550}));
}
