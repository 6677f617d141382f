//! Replays the cargo-fuzz corpus on stable Rust: every file in `tests/fixtures/fuzz/<target>/`
//! (the minimised corpus each target built) and in `tests/fixtures/fuzz/crashes/` (inputs that
//! once broke a target, named `<target>-<what>`) goes through `answerfeed::fuzzing`, the very
//! checks the fuzz targets in `fuzz/fuzz_targets/` run, and must pass them. On top of that, each
//! corpus as a whole must still reach the outcomes it was kept for (records and quarantines,
//! accepted and refused pages and events), so a corpus emptied or swapped for trivia fails.

use std::path::{Path, PathBuf};

use answerfeed::fuzzing::{self, ApiSummary, EventSummary, HtmlSummary, TextSummary, Violation};

const TARGETS: [&str; 4] = ["text_parser", "html_answer", "api_decode", "event_decode"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz")
}

/// Every file of a corpus directory, sorted; fails when the directory is missing or empty.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut paths: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    assert!(
        !paths.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    paths
        .into_iter()
        .map(|path| {
            let data = std::fs::read(&path).expect("a readable corpus file");
            (path, data)
        })
        .collect()
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(&fuzz_dir().join(target))
}

fn pass<T>(path: &Path, outcome: Result<T, Violation>) -> T {
    outcome.unwrap_or_else(|v| panic!("{}: {v}", path.display()))
}

#[test]
fn text_parser_corpus_holds_its_invariants() {
    let mut total = TextSummary::default();
    let files = corpus("text_parser");
    for (path, data) in &files {
        let s = pass(path, fuzzing::text_parser(data));
        total.records += s.records;
        total.quarantined += s.quarantined;
    }
    assert!(total.records > 0, "no input parses: {total:?}");
    assert!(total.quarantined > 0, "no input is quarantined: {total:?}");
}

#[test]
fn html_answer_corpus_holds_its_invariants() {
    let mut total = HtmlSummary::default();
    for (path, data) in &corpus("html_answer") {
        let s = pass(path, fuzzing::html_answer(data));
        total.blocks += s.blocks;
        total.tables += s.tables;
        total.cells += s.cells;
        total.text_bytes += s.text_bytes;
    }
    assert!(total.tables > 0 && total.cells > 0, "no tables: {total:?}");
    assert!(total.blocks > total.tables, "no paragraphs: {total:?}");
}

#[test]
fn api_decode_corpus_holds_its_invariants() {
    let mut pages_decoded = 0;
    let mut pages_refused = 0;
    let mut records = 0;
    let mut quarantined = 0;
    for (path, data) in &corpus("api_decode") {
        let s: ApiSummary = pass(path, fuzzing::api_decode(data));
        match s.list_page {
            Some((r, q)) => {
                pages_decoded += 1;
                records += r;
                quarantined += q;
            }
            None => pages_refused += 1,
        }
        if let Some((r, q)) = s.recorded {
            records += r;
            quarantined += q;
        }
        quarantined += s.lines_quarantined;
    }
    assert!(pages_decoded > 0, "no page decodes");
    assert!(pages_refused > 0, "no page is refused");
    assert!(records > 0, "no record decodes");
    assert!(quarantined > 0, "no record is quarantined");
}

#[test]
fn event_decode_corpus_holds_its_invariants() {
    let mut total = EventSummary::default();
    let mut stored_refused = 0;
    let mut compressed_accepted = 0;
    for (path, data) in &corpus("event_decode") {
        let s = pass(path, fuzzing::event_decode(data));
        total.stored_accepted |= s.stored_accepted;
        // Frame version 2 (LZ4): the seeds cut from the schema-1 events.
        compressed_accepted += usize::from(s.stored_accepted && data.first() == Some(&2));
        total.reframed_accepted |= s.reframed_accepted;
        total.flips_refused += s.flips_refused;
        stored_refused += usize::from(!s.stored_accepted);
    }
    assert!(total.stored_accepted, "no stored event is accepted");
    assert!(
        compressed_accepted >= 5,
        "{compressed_accepted} compressed stored events accepted"
    );
    assert!(stored_refused > 0, "no stored value is refused");
    assert!(total.flips_refused > 0, "no corrupted copy was checked");
}

/// Inputs that once broke a target: each replays through the target its name starts with, and
/// every one that breaks it again is listed.
#[test]
fn crash_inputs_stay_fixed() {
    let mut broken = Vec::new();
    for (path, data) in files(&fuzz_dir().join("crashes")) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 file name");
        let target = TARGETS
            .iter()
            .find(|t| name.starts_with(&format!("{t}-")))
            .unwrap_or_else(|| panic!("{name}: not named <target>-<what>"));
        let outcome = match *target {
            "text_parser" => fuzzing::text_parser(&data).map(drop),
            "html_answer" => fuzzing::html_answer(&data).map(drop),
            "api_decode" => fuzzing::api_decode(&data).map(drop),
            _ => fuzzing::event_decode(&data).map(drop),
        };
        if let Err(violation) = outcome {
            broken.push(format!("{name}: {violation}"));
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

/// The fuzz targets must run the same checks as this test, not copies that could drift.
#[test]
fn every_fuzz_target_calls_the_shared_check() {
    let targets = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for target in TARGETS {
        let source = std::fs::read_to_string(targets.join(format!("{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz target {target}: {e}"));
        assert!(
            source.contains(&format!("answerfeed::fuzzing::{target}(data)")),
            "fuzz/fuzz_targets/{target}.rs does not call answerfeed::fuzzing::{target}"
        );
    }
}
