//! End-to-end: projections and the diff module through the built binary, on the sample and on
//! crafted fixtures (`tests/fixtures/flags/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/written-answers-sample.txt"
);
const FLAGS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/flags");
const API: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/api");

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .env_remove("ANSWERFEED_DATA_DIR")
        .env_remove("ANSWERFEED_CONFIG")
        .env_remove("RUST_LOG")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the binary runs")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

fn flags(dir: &Path, kind: Option<&str>) -> Vec<Value> {
    let mut args = vec!["flags", "--json"];
    if let Some(kind) = kind {
        args.extend(["--kind", kind]);
    }
    lines(&ok(run(dir, &args)))
        .into_iter()
        .map(|e| e["event"]["flag"].clone())
        .collect()
}

fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    (tmp, data)
}

/// The question key of the sample record asked by `member` (and, for the two Lord Wasserman
/// questions, whose question contains `words`).
fn question_of(dir: &Path, member: &str, words: &str) -> String {
    let all = lines(&ok(run(dir, &["questions", "--json"])));
    let found: Vec<&Value> = all
        .iter()
        .filter(|q| {
            q["record"]["asking_member"]["name"] == member
                && q["record"]["question_text"]
                    .as_str()
                    .unwrap()
                    .contains(words)
        })
        .collect();
    assert_eq!(found.len(), 1, "{member} / {words}");
    found[0]["question"].as_str().unwrap().to_string()
}

#[test]
fn the_sample_raises_exactly_its_flags() {
    let (_tmp, data) = data_dir();
    ok(run(&data, &["ingest", SAMPLE]));
    let all = flags(&data, None);
    let kinds: Vec<&str> = all.iter().map(|f| f["flag"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        vec![
            "duplicate_answer",
            "tracked_list_changed",
            "tracked_list_changed"
        ],
        "{all:#?}"
    );

    // The DAPO areas: the oldest answer (Sarah Dines) has Gwent; the next (Laura Farris) drops it;
    // Luke Taylor's answer has the same set (no flag); the newest (Jess Phillips to Adrian
    // Ramsay) adds Cleveland and North Wales. County lines forces never enter the set.
    let dines = question_of(&data, "Navendu Mishra", "exclusion zones");
    let farris = question_of(&data, "Tanmanjeet Singh Dhesi", "domestic homicide");
    let taylor = question_of(&data, "Luke Taylor", "Sutton");
    let ramsay = question_of(&data, "Adrian Ramsay", "Domestic Abuse Protection Orders");
    let tracked = flags(&data, Some("tracked_list_changed"));
    assert_eq!(tracked[0]["tracker"], "dapo-areas");
    assert_eq!(tracked[0]["question"], farris.as_str());
    assert_eq!(tracked[0]["previous_question"], dines.as_str());
    assert_eq!(tracked[0]["removed"], serde_json::json!(["Gwent"]));
    assert_eq!(tracked[0]["added"], serde_json::json!([]));
    assert_eq!(
        tracked[0]["set"],
        serde_json::json!([
            "British Transport Police",
            "Bromley",
            "Croydon",
            "Greater Manchester",
            "Sutton"
        ])
    );
    assert_eq!(tracked[1]["question"], ramsay.as_str());
    assert_eq!(tracked[1]["previous_question"], taylor.as_str());
    assert_eq!(
        tracked[1]["added"],
        serde_json::json!(["Cleveland", "North Wales"])
    );
    assert_eq!(tracked[1]["removed"], serde_json::json!([]));
    for f in &tracked {
        let set = f["set"].to_string();
        assert!(
            !set.contains("Merseyside")
                && !set.contains("West Midlands")
                && !set.contains("Metropolitan"),
            "{set}"
        );
    }

    // The two Single Online Home answers are one answer given twice.
    let dup = &flags(&data, Some("duplicate_answer"))[0];
    let first = question_of(&data, "Lord Wasserman", "national governance");
    let second = question_of(&data, "Lord Wasserman", "extend the scope");
    let pair = [
        dup["question"].as_str().unwrap(),
        dup["of_question"].as_str().unwrap(),
    ];
    assert!(
        pair.contains(&first.as_str()) && pair.contains(&second.as_str()),
        "{dup}"
    );
    assert_eq!(dup["exact"], true);
    let groups = lines(&ok(run(&data, &["duplicates", "--json"])));
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["count"], 2);
    let human = ok(run(&data, &["duplicates"]));
    assert!(
        human.starts_with("this answer was given 2 times"),
        "{human}"
    );

    // No total in the sample's tables is wrong, and no figure is reported twice differently.
    assert!(flags(&data, Some("total_mismatch")).is_empty());
    assert!(flags(&data, Some("figure_changed")).is_empty());

    // Ingesting again raises nothing new.
    let again = ok(run(&data, &["ingest", SAMPLE]));
    assert!(!again.contains("flags raised"), "{again}");
    assert_eq!(flags(&data, None).len(), 3);
}

#[test]
fn a_corrected_answer_is_flagged_with_its_word_diff() {
    let (tmp, data) = data_dir();
    ok(run(&data, &["ingest", SAMPLE]));
    let sample = std::fs::read_to_string(SAMPLE).unwrap();
    let changed = sample.replacen("up to 5 years’", "up to five years’", 1);
    let path = tmp.path().join("corrected.txt");
    std::fs::write(&path, changed).unwrap();
    let out = ok(run(&data, &["ingest", path.to_str().unwrap()]));
    assert!(out.contains("1 flags raised"), "{out}");
    let changed = flags(&data, Some("answer_changed"));
    assert_eq!(changed.len(), 1);
    let ops: Vec<(String, String)> = changed[0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["op"] != "equal")
        .map(|c| {
            (
                c["op"].as_str().unwrap().to_string(),
                c["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        vec![
            ("delete".to_string(), "5".to_string()),
            ("insert".to_string(), "five".to_string())
        ]
    );
    // Printed as a readable word diff, plain when not a terminal.
    let human = ok(run(&data, &["flags", "--kind", "answer_changed"]));
    assert!(human.contains("[-5-]{+five+}"), "{human}");
    assert!(!human.contains('\u{1b}'), "no colour codes in a pipe");
    // `show` has the answer, both versions and the flag.
    let question = changed[0]["question"].as_str().unwrap();
    let show = ok(run(&data, &["show", question]));
    assert!(show.contains("up to five years"), "{show}");
    assert!(show.contains("Versions:\n  #"), "{show}");
    assert!(show.contains("answer_revised"), "{show}");
    assert!(show.contains("[-5-]{+five+}"), "{show}");
    let view = &lines(&ok(run(&data, &["show", question, "--json"])))[0];
    assert_eq!(view["view"]["history"].as_array().unwrap().len(), 2);
}

#[test]
fn figure_changes_and_wrong_totals_are_flagged() {
    let (_tmp, data) = data_dir();
    let figures = Path::new(FLAGS).join("figures.txt");
    ok(run(&data, &["ingest", figures.to_str().unwrap()]));
    let changed = flags(&data, Some("figure_changed"));
    assert_eq!(changed.len(), 1, "{changed:#?}");
    let f = &changed[0];
    assert_eq!(f["force_id"], "metropolitan");
    assert_eq!(f["period"], "2021/22");
    assert_eq!(f["measure"], "Spit and bite guard: Total number of tactics");
    assert_eq!(f["previous_value"], 1557.0);
    assert_eq!(f["value"], 1601.0);
    assert_ne!(f["previous_question"], f["question"]);
    let totals = flags(&data, Some("total_mismatch"));
    assert_eq!(totals.len(), 1);
    assert_eq!(totals[0]["stated"], 1900.0);
    assert_eq!(totals[0]["summed"], 1826.0);
    assert_eq!(totals[0]["group"], "2021/22");

    // The stats view has both answers' figures for the Met, each with its source.
    let stats = lines(&ok(run(&data, &["stats", "--force", "MPS", "--json"])));
    let values: Vec<f64> = stats.iter().map(|s| s["value"].as_f64().unwrap()).collect();
    assert_eq!(values.len(), 2);
    assert!(values.contains(&1557.0) && values.contains(&1601.0));
    assert!(stats
        .iter()
        .all(|s| s["question"].is_string() && s["seq"].is_u64()));
}

#[test]
fn near_duplicates_just_above_the_threshold_are_flagged_and_just_below_are_not() {
    let (_tmp, data) = data_dir();
    let path = Path::new(FLAGS).join("near-duplicates.txt");
    ok(run(&data, &["ingest", path.to_str().unwrap()]));
    let dups = flags(&data, Some("duplicate_answer"));
    assert_eq!(dups.len(), 1, "{dups:#?}");
    let ratio = dups[0]["ratio"].as_f64().unwrap();
    assert!((0.9..0.92).contains(&ratio), "{ratio}");
    assert_eq!(dups[0]["exact"], false);
    let one = question_of(&data, "Member One", "evaluated");
    let two = question_of(&data, "Member Two", "evaluated");
    assert_eq!(dups[0]["question"], two.as_str());
    assert_eq!(dups[0]["of_question"], one.as_str());
    // Member Three's reworded copy (similarity ~0.89) stays unflagged.
    let three = question_of(&data, "Member Three", "completed");
    assert!(dups.iter().all(|d| d["question"] != three.as_str()));

    // A stricter threshold in config: nothing is near enough any more.
    let (tmp2, data2) = data_dir();
    let config = tmp2.path().join("strict.toml");
    std::fs::write(&config, "[diff]\nnear_duplicate_ratio = 0.95\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data2.to_str().unwrap(),
        ])
        .args(["ingest", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_answerfeed"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data2.to_str().unwrap(),
        ])
        .args(["flags", "--json"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

#[test]
fn views_filter_by_topic_body_member_and_force() {
    let (_tmp, data) = data_dir();
    ok(run(&data, &["ingest", SAMPLE]));
    let count = |args: &[&str]| {
        let mut all = vec!["questions", "--json"];
        all.extend_from_slice(args);
        lines(&ok(run(&data, &all))).len()
    };
    assert_eq!(count(&[]), 10);
    assert_eq!(count(&["--body", "Attorney General"]), 1);
    assert_eq!(count(&["--body", "home office"]), 9);
    assert_eq!(count(&["--member", "Lord Wasserman"]), 2);
    assert_eq!(count(&["--force", "Gwent"]), 5);
    assert_eq!(count(&["--force", "Met"]), 4);
    assert_eq!(count(&["--topic", "domestic-abuse"]), 6);
    assert_eq!(count(&["--topic", "policing"]), 10);
    assert_eq!(
        count(&["--topic", "policing", "--body", "Attorney General"]),
        1
    );
    let bad = run(&data, &["questions", "--force", "Gotham City"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a police force"));
}

#[test]
fn rebuild_gives_the_same_views_as_incremental_updates() {
    let (_tmp, data) = data_dir();
    // Several ingests, each updating the views incrementally, with revisions and flags between.
    ok(run(&data, &["ingest", SAMPLE]));
    ok(run(
        &data,
        &[
            "ingest",
            Path::new(FLAGS).join("figures.txt").to_str().unwrap(),
        ],
    ));
    ok(run(
        &data,
        &[
            "ingest",
            Path::new(API).join("page-1.json").to_str().unwrap(),
        ],
    ));
    for f in ["correction.json", "holding.json", "withdrawn.json"] {
        ok(run(
            &data,
            &["ingest", Path::new(API).join(f).to_str().unwrap()],
        ));
    }
    ok(run(
        &data,
        &[
            "ingest",
            Path::new(FLAGS)
                .join("near-duplicates.txt")
                .to_str()
                .unwrap(),
        ],
    ));
    let exports_before: Vec<String> = ["questions", "stats", "flags"]
        .iter()
        .map(|v| ok(run(&data, &["export", "--view", v])))
        .collect();
    let rebuilt = &lines(&ok(run(&data, &["rebuild", "--json"])))[0];
    assert_eq!(rebuilt["identical"], true, "{rebuilt}");
    assert_eq!(rebuilt["digest_before"], rebuilt["digest_after"]);
    let exports_after: Vec<String> = ["questions", "stats", "flags"]
        .iter()
        .map(|v| ok(run(&data, &["export", "--view", v])))
        .collect();
    assert_eq!(exports_before, exports_after);
    // The API fixtures' DAPO answers (same text as the sample's, dated) are tracked too, and the
    // correction to the newest one is flagged with its diff.
    assert!(!flags(&data, Some("answer_changed")).is_empty());
}

#[test]
fn exports_are_well_formed() {
    let (_tmp, data) = data_dir();
    ok(run(&data, &["ingest", SAMPLE]));
    let csv = ok(run(
        &data,
        &["export", "--format", "csv", "--view", "stats"],
    ));
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("force_id,force,period,measure,value,question,seq,table,row")
    );
    assert_eq!(rows.count(), 130 + 44 * 3);
    let questions = ok(run(
        &data,
        &["export", "--format", "csv", "--view", "questions"],
    ));
    // Answers with commas, quotes and line breaks stay one quoted field each.
    assert!(questions
        .lines()
        .next()
        .unwrap()
        .starts_with("question,api_id,uin"));
    let jsonl = ok(run(&data, &["export", "--view", "questions"]));
    assert_eq!(lines(&jsonl).len(), 10);
    let bad = run(&data, &["export", "--format", "xml"]);
    assert_eq!(bad.status.code(), Some(2));
}
