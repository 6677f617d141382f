//! answerfeed: watches the UK Parliament's written questions and answers and keeps an exact,
//! replayable history of them.
//!
//! Data flows one way: sources (`ingest` for files) -> `parse` -> `log`. The log is the only
//! source of truth; see ARCHITECTURE.md for the codemap and the invariants.

pub mod alert;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod diff;
pub mod event;
pub mod fetch;
pub mod forces;
/// The checks the fuzz targets run, shared with the test that replays their corpus.
#[doc(hidden)]
pub mod fuzzing;
pub mod gazetteer;
pub mod ingest;
pub mod log;
pub mod ops;
pub mod overlay;
pub mod parse;
pub mod pipeline;
pub mod project;
pub mod record;
pub mod schedule;
pub mod shutdown;
pub mod stats;
pub mod text;

/// The sample dump bundled with the binary for `answerfeed demo` (public parliamentary data).
pub const BUNDLED_SAMPLE: &[u8] = include_bytes!("../tests/fixtures/written-answers-sample.txt");
