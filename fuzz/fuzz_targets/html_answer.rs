//! `answerfeed::fuzzing::html_answer` on libFuzzer's inputs; the checks live in the library so that
//! `tests/fuzz_corpus.rs` replays the corpus through the same code on stable Rust.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = answerfeed::fuzzing::html_answer(data) {
        panic!("{violation}");
    }
});
