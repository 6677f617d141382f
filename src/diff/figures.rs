//! The last sighting of every table figure (force, period, measure), in memory, persisted as
//! chunks.
//!
//! A figure seen again with another value is flagged against its last sighting, so every
//! sighting replaces the one before. As a sled key per figure that was a rewrite of about 1,800
//! keys per committed batch in a backfill, a quarter of the diff module's time (sled charges a
//! B-tree write per key). Here the sightings live in a map, and what a commit persists is one
//! value holding the sightings of its batch (`F` + the batch's last seq), written in the same
//! atomic batch as the diff checkpoint. So the map loaded after a crash is the map as of the
//! checkpoint. Every [`CHUNKS_BEFORE_SNAPSHOT`] chunks, a commit writes the whole map as one
//! chunk instead and removes the older ones, which bounds what a load reads.

use std::collections::{BTreeMap, HashMap};

use crate::event::QuestionKey;

use super::{chunk_name, DiffError};

/// Chunks of sightings sort by the checkpoint they were committed with, so they load oldest
/// first and the later sighting of a figure wins.
const CHUNK_PREFIX: &[u8] = b"F";
/// Where format 4 of the state kept each figure's sighting, as JSON (upgraded on open).
const LEGACY_PREFIX: &[u8] = b"f/";
/// Chunk encoding version (the first byte of every chunk).
const CHUNK_V1: u8 = 1;
/// The longest key or question a chunk holds (their lengths are written as u16).
const MAX_FIELD: usize = u16::MAX as usize;
/// Chunks loaded at most before a commit rewrites them as one.
const CHUNKS_BEFORE_SNAPSHOT: usize = 32;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct SeenFigure {
    pub value: f64,
    pub question: QuestionKey,
    pub seq: u64,
}

/// Sightings analysed and not yet committed, by figure key.
pub(super) type Pending = BTreeMap<Vec<u8>, SeenFigure>;

/// The committed sightings, loaded on first need (a run that meets no table never reads them).
#[derive(Default)]
pub(super) struct Figures {
    loaded: Option<Loaded>,
}

struct Loaded {
    latest: HashMap<Vec<u8>, SeenFigure>,
    /// The keys of the chunks in the tree, oldest first.
    chunks: Vec<Vec<u8>>,
}

/// What a commit writes, kept until its batch is applied and then folded into the map.
pub(super) struct Staged {
    pending: Pending,
    chunk: Vec<u8>,
    snapshot: bool,
}

/// The committed sightings and those of the batch being analysed, as its analysis sees them.
pub(super) struct Sightings<'a> {
    pub committed: &'a mut Figures,
    pub pending: &'a mut Pending,
}

impl Sightings<'_> {
    /// The last sighting of the figure `key`.
    pub fn last(
        &mut self,
        tree: &sled::Tree,
        key: &[u8],
    ) -> Result<Option<&SeenFigure>, DiffError> {
        self.committed.seen(tree, self.pending, key)
    }

    /// The figure `key` seen now, as `seen`. A key or question longer than a chunk can hold
    /// (65,535 bytes; a key is a force, a measure and a period) is not recorded: kept in memory
    /// but cut on disk, the figure's flags would depend on whether the process restarted.
    pub fn record(&mut self, key: Vec<u8>, seen: SeenFigure) {
        if fits(&key, &seen) {
            self.pending.insert(key, seen);
        }
    }
}

impl Figures {
    /// The last sighting of the figure `key`: this batch's own first, then the committed one.
    pub fn seen<'a>(
        &'a mut self,
        tree: &sled::Tree,
        pending: &'a Pending,
        key: &[u8],
    ) -> Result<Option<&'a SeenFigure>, DiffError> {
        if let Some(seen) = pending.get(key) {
            return Ok(Some(seen));
        }
        Ok(self.load(tree)?.latest.get(key))
    }

    /// Adds the chunk holding `pending` to `batch` (a snapshot of every sighting, replacing the
    /// older chunks, once there are enough of them). The map learns them in [`Figures::applied`],
    /// once the batch is in: it is never ahead of the tree.
    pub fn stage(
        &mut self,
        tree: &sled::Tree,
        batch: &mut sled::Batch,
        last: u64,
        pending: Pending,
    ) -> Result<Option<Staged>, DiffError> {
        if pending.is_empty() {
            return Ok(None);
        }
        let loaded = self.load(tree)?;
        let chunk = chunk_key(last);
        let snapshot = loaded.chunks.len() >= CHUNKS_BEFORE_SNAPSHOT;
        let bytes = if snapshot {
            let mut all: BTreeMap<&[u8], &SeenFigure> = loaded
                .latest
                .iter()
                .map(|(k, v)| (k.as_slice(), v))
                .collect();
            all.extend(pending.iter().map(|(k, v)| (k.as_slice(), v)));
            for old in &loaded.chunks {
                batch.remove(old.as_slice());
            }
            encode_chunk(all.into_iter())
        } else {
            encode_chunk(pending.iter().map(|(k, v)| (k.as_slice(), v)))
        };
        batch.insert(chunk.as_slice(), bytes);
        Ok(Some(Staged {
            pending,
            chunk,
            snapshot,
        }))
    }

    /// The staged batch is in the tree.
    pub fn applied(&mut self, staged: Staged) {
        let Some(loaded) = self.loaded.as_mut() else {
            return;
        };
        if staged.snapshot {
            loaded.chunks.clear();
        }
        loaded.chunks.push(staged.chunk);
        loaded.latest.extend(staged.pending);
    }

    fn load(&mut self, tree: &sled::Tree) -> Result<&mut Loaded, DiffError> {
        if self.loaded.is_none() {
            let mut loaded = Loaded {
                latest: HashMap::new(),
                chunks: Vec::new(),
            };
            for entry in tree.scan_prefix(CHUNK_PREFIX) {
                let (key, value) = entry?;
                decode_chunk(&chunk_name(CHUNK_PREFIX, &key), &value, |figure, seen| {
                    loaded.latest.insert(figure.to_vec(), seen);
                })?;
                loaded.chunks.push(key.to_vec());
            }
            tracing::debug!(
                figures = loaded.latest.len(),
                chunks = loaded.chunks.len(),
                "diff: figure sightings loaded"
            );
            self.loaded = Some(loaded);
        }
        match self.loaded.as_mut() {
            Some(loaded) => Ok(loaded),
            None => Err(DiffError::State("figure sightings not loaded".into())),
        }
    }
}

/// Format 4 kept a key per figure (`f/` + its key, a JSON [`SeenFigure`]): writes one chunk
/// holding them all, at the checkpoint, then removes the keys. Returns how many there were.
///
/// In steps rather than one atomic batch (sled held about 200 MB for one of 32,000 removals at
/// 200,000 answers): the chunk first, then the keys a thousand at a time. Interrupted, it starts
/// again on the next open (the caller marks the format only once it is done); a chunk already
/// under the checkpoint was written by the interrupted run and holds every sighting.
pub(super) fn upgrade_legacy_keys(tree: &sled::Tree, checkpoint: u64) -> Result<usize, DiffError> {
    let chunk = chunk_key(checkpoint);
    let mut count = 0;
    if tree.get(&chunk)?.is_none() {
        let mut all = BTreeMap::new();
        for entry in tree.scan_prefix(LEGACY_PREFIX) {
            let (key, value) = entry?;
            let seen: SeenFigure = serde_json::from_slice(&value).map_err(|e| {
                DiffError::State(format!(
                    "figure {} does not decode: {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            let figure = &key[LEGACY_PREFIX.len()..];
            // As `Sightings::record` would have it: an overlong figure is not tracked.
            if fits(figure, &seen) {
                all.insert(figure.to_vec(), seen);
            }
        }
        if !all.is_empty() {
            count = all.len();
            tree.insert(
                chunk,
                encode_chunk(all.iter().map(|(k, v)| (k.as_slice(), v))),
            )?;
            // On disk before any key goes: the removals must never survive a crash without it.
            tree.flush()?;
        }
    }
    loop {
        let keys: Vec<sled::IVec> = tree
            .scan_prefix(LEGACY_PREFIX)
            .keys()
            .take(1000)
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            break;
        }
        let mut batch = sled::Batch::default();
        for key in keys {
            batch.remove(key);
        }
        tree.apply_batch(batch)?;
    }
    Ok(count)
}

fn chunk_key(last: u64) -> Vec<u8> {
    super::chunk_key(CHUNK_PREFIX, last)
}

/// Whether a chunk can hold the sighting (its lengths are written as u16).
fn fits(key: &[u8], seen: &SeenFigure) -> bool {
    key.len() <= MAX_FIELD && seen.question.0.len() <= MAX_FIELD
}

/// Version byte, then per sighting: key length (u16) and key, value (f64 bits), seq, question
/// length (u16) and question. Sightings that do not [`fits`] are never recorded; were one
/// here, it would be left out rather than break the chunk.
fn encode_chunk<'a>(entries: impl Iterator<Item = (&'a [u8], &'a SeenFigure)>) -> Vec<u8> {
    let mut out = vec![CHUNK_V1];
    for (key, seen) in entries.filter(|(key, seen)| fits(key, seen)) {
        let question = seen.question.0.as_bytes();
        out.extend_from_slice(&(key.len() as u16).to_be_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&seen.value.to_bits().to_be_bytes());
        out.extend_from_slice(&seen.seq.to_be_bytes());
        out.extend_from_slice(&(question.len() as u16).to_be_bytes());
        out.extend_from_slice(question);
    }
    out
}

fn decode_chunk(
    name: &str,
    bytes: &[u8],
    mut each: impl FnMut(&[u8], SeenFigure),
) -> Result<(), DiffError> {
    let bad = |why: String| DiffError::State(format!("figure chunk {name}: {why}"));
    let Some((&version, rest)) = bytes.split_first() else {
        return Err(bad("empty".into()));
    };
    if version != CHUNK_V1 {
        return Err(bad(format!("unknown version {version}")));
    }
    let mut cursor = Cursor { rest };
    while !cursor.rest.is_empty() {
        let key_len = cursor.u16("key length").map_err(bad)?;
        let key = cursor.take(key_len, "key").map_err(bad)?;
        let value = f64::from_bits(cursor.u64("value").map_err(bad)?);
        let seq = cursor.u64("seq").map_err(bad)?;
        let question_len = cursor.u16("question length").map_err(bad)?;
        let question = std::str::from_utf8(cursor.take(question_len, "question").map_err(bad)?)
            .map_err(|e| bad(format!("a question is not UTF-8: {e}")))?;
        each(
            key,
            SeenFigure {
                value,
                question: QuestionKey(question.to_string()),
                seq,
            },
        );
    }
    Ok(())
}

struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.rest.len() < n {
            return Err(format!(
                "cut short in a {what} ({} of {n} bytes)",
                self.rest.len()
            ));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self, what: &str) -> Result<usize, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_be_bytes(word))
    }
}

/// Rewrites the sightings as format 4 kept them (a JSON value per `f/` key, no chunks), as an
/// old data dir holds them. Returns how many.
#[cfg(test)]
pub(super) fn write_legacy_keys(tree: &sled::Tree) -> Result<usize, DiffError> {
    let mut figures = Figures::default();
    let loaded = figures.load(tree)?;
    let mut batch = sled::Batch::default();
    for chunk in &loaded.chunks {
        batch.remove(chunk.as_slice());
    }
    for (key, seen) in &loaded.latest {
        let json = serde_json::to_vec(seen).map_err(|e| DiffError::State(e.to_string()))?;
        batch.insert([LEGACY_PREFIX, key].concat(), json);
    }
    tree.apply_batch(batch)?;
    Ok(loaded.latest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(value: f64, question: &str, seq: u64) -> SeenFigure {
        SeenFigure {
            value,
            question: QuestionKey(question.into()),
            seq,
        }
    }

    fn tree() -> (tempfile::TempDir, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let tree = db.open_tree("diff").unwrap();
        (dir, tree)
    }

    /// Commits one batch of sightings, as the diff module does.
    fn commit(figures: &mut Figures, tree: &sled::Tree, last: u64, pending: Pending) {
        let mut batch = sled::Batch::default();
        let staged = figures.stage(tree, &mut batch, last, pending).unwrap();
        tree.apply_batch(batch).unwrap();
        if let Some(staged) = staged {
            figures.applied(staged);
        }
    }

    fn chunks(tree: &sled::Tree) -> usize {
        tree.scan_prefix(CHUNK_PREFIX).count()
    }

    /// Whatever the number of commits, a fresh load sees each figure's last sighting, and the
    /// chunks on disk stay bounded.
    #[test]
    fn loaded_sightings_are_the_last_of_each_figure_and_chunks_stay_few() {
        let (_dir, tree) = tree();
        let mut figures = Figures::default();
        for commit_no in 1..=100u64 {
            let mut pending = Pending::new();
            // Figure k is seen at commit k and at every multiple of k.
            for k in 1..=20u64 {
                if commit_no % k == 0 {
                    let key = format!("kent\u{1f}count\u{1f}{k}").into_bytes();
                    pending.insert(
                        key,
                        seen(commit_no as f64, &format!("q{commit_no}"), commit_no),
                    );
                }
            }
            commit(&mut figures, &tree, commit_no, pending);
            assert!(
                chunks(&tree) <= CHUNKS_BEFORE_SNAPSHOT + 1,
                "{}",
                chunks(&tree)
            );
        }
        let mut fresh = Figures::default();
        let empty = Pending::new();
        for k in 1..=20u64 {
            let last = 100 - 100 % k;
            let key = format!("kent\u{1f}count\u{1f}{k}").into_bytes();
            assert_eq!(
                fresh.seen(&tree, &empty, &key).unwrap(),
                Some(&seen(last as f64, &format!("q{last}"), last)),
                "figure {k}"
            );
        }
        assert_eq!(fresh.seen(&tree, &empty, b"never seen").unwrap(), None);
        // The map in use agrees with the one loaded.
        let loaded = fresh.load(&tree).unwrap().latest.clone();
        assert_eq!(figures.load(&tree).unwrap().latest, loaded);
    }

    /// The batch's own sightings come before the committed ones, and nothing is written or
    /// learnt for a batch without any.
    #[test]
    fn pending_sightings_come_first_and_an_empty_batch_writes_nothing() {
        let (_dir, tree) = tree();
        let mut figures = Figures::default();
        let mut pending = Pending::new();
        pending.insert(b"a".to_vec(), seen(1.0, "q1", 1));
        commit(&mut figures, &tree, 1, pending);
        let mut pending = Pending::new();
        pending.insert(b"a".to_vec(), seen(2.0, "q2", 2));
        assert_eq!(
            figures.seen(&tree, &pending, b"a").unwrap(),
            Some(&seen(2.0, "q2", 2))
        );
        assert_eq!(
            figures.seen(&tree, &Pending::new(), b"a").unwrap(),
            Some(&seen(1.0, "q1", 1))
        );
        let mut batch = sled::Batch::default();
        assert!(figures
            .stage(&tree, &mut batch, 2, Pending::new())
            .unwrap()
            .is_none());
        assert_eq!(chunks(&tree), 1);
    }

    #[test]
    fn format_4_keys_become_one_chunk_with_the_same_sightings() {
        let (_dir, tree) = tree();
        let mut figures = Figures::default();
        let mut pending = Pending::new();
        pending.insert(b"kent\x1fcount\x1f2023".to_vec(), seen(10.0, "q4", 6));
        pending.insert(b"essex\x1fcount\x1f2023".to_vec(), seen(5.5, "q\u{e9}", 7));
        commit(&mut figures, &tree, 7, pending.clone());
        assert_eq!(write_legacy_keys(&tree).unwrap(), 2);
        assert_eq!(chunks(&tree), 0);
        // Interrupted after the chunk and some of the removals: the next open finishes it.
        let legacy: Vec<(sled::IVec, sled::IVec)> = tree
            .scan_prefix(LEGACY_PREFIX)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(upgrade_legacy_keys(&tree, 9).unwrap(), 2);
        let (key, value) = legacy[0].clone();
        tree.insert(key, value).unwrap();
        assert_eq!(upgrade_legacy_keys(&tree, 9).unwrap(), 0);
        assert_eq!(tree.scan_prefix(LEGACY_PREFIX).count(), 0);
        assert_eq!(chunks(&tree), 1);
        let mut fresh = Figures::default();
        for (key, expected) in &pending {
            assert_eq!(
                fresh.seen(&tree, &Pending::new(), key).unwrap(),
                Some(expected)
            );
        }
    }

    /// A figure whose key a chunk cannot hold is not tracked at all, rather than tracked until
    /// the next restart.
    #[test]
    fn a_key_too_long_for_a_chunk_is_not_recorded() {
        let (_dir, tree) = tree();
        let mut figures = Figures::default();
        let mut pending = Pending::new();
        let long = vec![b'k'; MAX_FIELD + 1];
        let mut sightings = Sightings {
            committed: &mut figures,
            pending: &mut pending,
        };
        sightings.record(long.clone(), seen(1.0, "q1", 1));
        sightings.record(b"short".to_vec(), seen(2.0, "q1", 1));
        assert_eq!(sightings.last(&tree, &long).unwrap(), None);
        commit(&mut figures, &tree, 1, pending);
        assert_eq!(figures.seen(&tree, &Pending::new(), &long).unwrap(), None);
        let mut fresh = Figures::default();
        assert_eq!(fresh.seen(&tree, &Pending::new(), &long).unwrap(), None);
        assert_eq!(
            fresh.seen(&tree, &Pending::new(), b"short").unwrap(),
            Some(&seen(2.0, "q1", 1))
        );
    }

    #[test]
    fn a_damaged_chunk_is_an_error_naming_it() {
        let mut pending = Pending::new();
        pending.insert(b"kent".to_vec(), seen(3.0, "q1", 1));
        let good = encode_chunk(pending.iter().map(|(k, v)| (k.as_slice(), v)));
        for (bytes, expected) in [
            (Vec::new(), "empty"),
            (vec![9u8], "unknown version 9"),
            (good[..good.len() - 1].to_vec(), "cut short in a question"),
            (good[..10].to_vec(), "cut short in a value"),
            (good[..5].to_vec(), "cut short in a key"),
        ] {
            let (_dir, tree) = tree();
            tree.insert(chunk_key(42), bytes).unwrap();
            let error = Figures::default()
                .seen(&tree, &Pending::new(), b"kent")
                .unwrap_err()
                .to_string();
            assert!(
                error.contains("figure chunk after event 42") && error.contains(expected),
                "{error}"
            );
        }
    }

    proptest::proptest! {
        /// Any bytes decode to sightings or to an error, never a panic; and what is encoded
        /// decodes to itself.
        #[test]
        fn chunks_decode_without_panicking(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = decode_chunk("x", &bytes, |_, _| {});
            let mut chunk = vec![CHUNK_V1];
            chunk.extend_from_slice(&bytes);
            let _ = decode_chunk("x", &chunk, |_, _| {});
        }

        #[test]
        fn chunks_round_trip(entries in proptest::collection::btree_map(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            (proptest::prelude::any::<f64>(), ".{0,20}", proptest::prelude::any::<u64>()),
            0..20,
        )) {
            let pending: Pending = entries
                .into_iter()
                .map(|(k, (value, q, seq))| (k, SeenFigure { value, question: QuestionKey(q), seq }))
                .collect();
            let bytes = encode_chunk(pending.iter().map(|(k, v)| (k.as_slice(), v)));
            let mut decoded = Vec::new();
            decode_chunk("x", &bytes, |k, v| decoded.push((k.to_vec(), v))).unwrap();
            let expected: Vec<(Vec<u8>, SeenFigure)> = pending.into_iter().collect();
            proptest::prop_assert_eq!(decoded.len(), expected.len());
            for ((k, v), (ek, ev)) in decoded.iter().zip(&expected) {
                proptest::prop_assert_eq!(k, ek);
                proptest::prop_assert_eq!(v.value.to_bits(), ev.value.to_bits());
                proptest::prop_assert_eq!(&v.question, &ev.question);
                proptest::prop_assert_eq!(v.seq, ev.seq);
            }
        }
    }
}
