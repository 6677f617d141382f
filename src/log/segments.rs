//! Where the events themselves are stored: append-only segment files beside sled, and the
//! batch entries in the log's tree that say which events each append wrote and where.
//!
//! In: the stored frames of an append's new events (already numbered). Out: the same bytes,
//! by sequence number or in ranges, read with one `pread` per batch.
//!
//! Why not sled: the events are most of the log's bytes (about 1.6 KB an answer, compressed),
//! and sled 0.34 rewrites a leaf with every value in it as it consolidates and splits, copies
//! each value into its page cache, and serializes its writers on one process-wide lock. With the
//! events in sled, its writes and page copies were about a third of a backfill's CPU. A file
//! written once, in order, costs one `write` and one `fdatasync` an append.
//!
//! Segment file `events/NNNNNNNN.seg`: records one after another, each the event's sequence
//! number (u64 big-endian), the stored frame's length (u32 big-endian) and the stored frame (the
//! same bytes sled held before: version byte, checksum, JSON compressed or not). A new segment is
//! begun once one passes [`SEGMENT_BYTES`]; an append's records never straddle two.
//!
//! Batch entry, key `B` + the append's first seq (u64 big-endian), in the log's tree: a version
//! byte, the segment number (u32 BE), the offset of the first record (u64 BE), then each
//! record's whole length (u32 BE), in order. It is written in the same sled batch as the
//! idempotency entries, after the records are on disk: sled's atomic batch is the commit. Bytes
//! after the last committed record (an append cut short by a crash or a full disk) are not
//! events; the next append truncates them and writes over them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

pub(super) const BATCH_PREFIX: u8 = b'B';
const ENTRY_V1: u8 = 1;
/// A new segment is begun by the first append after a segment reaches this size: files stay a
/// size that copies, backups and filesystems handle well, whatever the log's age. Small in unit
/// tests, so that their few events span several segments.
#[cfg(not(test))]
pub(super) const SEGMENT_BYTES: u64 = 256 * 1024 * 1024;
#[cfg(test)]
pub(super) const SEGMENT_BYTES: u64 = 2048;
/// seq (u64) and stored length (u32) before each stored frame.
pub(super) const RECORD_HEADER: usize = 12;
const DIR: &str = "events";

pub(super) fn batch_key(first: u64) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = BATCH_PREFIX;
    key[1..].copy_from_slice(&first.to_be_bytes());
    key
}

/// Appends one record (header and stored frame) to `out`; its whole length is returned.
pub(super) fn push_record(out: &mut Vec<u8>, seq: u64, stored: &[u8]) -> Option<u32> {
    let len = u32::try_from(stored.len()).ok()?;
    let whole = u32::try_from(RECORD_HEADER + stored.len()).ok()?;
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(stored);
    Some(whole)
}

/// One append's events: where they are and how long each record is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BatchEntry {
    pub first: u64,
    pub segment: u32,
    pub offset: u64,
    pub lens: Vec<u32>,
}

impl BatchEntry {
    pub fn last(&self) -> u64 {
        self.first + self.lens.len() as u64 - 1
    }

    /// The offset just after the last record.
    pub fn end(&self) -> u64 {
        self.offset + self.lens.iter().map(|l| u64::from(*l)).sum::<u64>()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(13 + 4 * self.lens.len());
        value.push(ENTRY_V1);
        value.extend_from_slice(&self.segment.to_be_bytes());
        value.extend_from_slice(&self.offset.to_be_bytes());
        for len in &self.lens {
            value.extend_from_slice(&len.to_be_bytes());
        }
        value
    }

    /// `problem` names what is wrong when the key or value is malformed.
    pub fn decode(key: &[u8], value: &[u8]) -> Result<BatchEntry, String> {
        let first = match key {
            [BATCH_PREFIX, rest @ ..] if rest.len() == 8 => {
                u64::from_be_bytes(rest.try_into().map_err(|_| "malformed key")?)
            }
            _ => return Err(format!("malformed batch entry key {key:?}")),
        };
        let bad = |why: &str| format!("the batch entry of events from {first} {why}");
        let (version, rest) = value.split_first().ok_or_else(|| bad("is empty"))?;
        if *version != ENTRY_V1 {
            return Err(bad(&format!("has unknown version {version}")));
        }
        if rest.len() < 12 || !(rest.len() - 12).is_multiple_of(4) || rest.len() == 12 {
            return Err(bad(&format!("is {} bytes long", value.len())));
        }
        let segment = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&rest[4..12]);
        let lens: Vec<u32> = rest[12..]
            .chunks_exact(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if lens.iter().any(|l| (*l as usize) < RECORD_HEADER) || first == 0 {
            return Err(bad("is malformed"));
        }
        let offset = u64::from_be_bytes(offset);
        // Damage must not make the arithmetic on it wrap: the seq after the last, the byte after
        // the last record and the next segment's number all exist.
        let fits = first.checked_add(lens.len() as u64).is_some()
            && lens
                .iter()
                .try_fold(offset, |at, l| at.checked_add(u64::from(*l)))
                .is_some()
            && segment < u32::MAX;
        if !fits {
            return Err(bad("is out of range"));
        }
        Ok(BatchEntry {
            first,
            segment,
            offset,
            lens,
        })
    }

    /// The whole lengths of the records of `from..=upto` (both within the entry).
    pub fn lens_of(&self, from: u64, upto: u64) -> &[u32] {
        let skip = (from - self.first) as usize;
        &self.lens[skip..=skip + (upto - from) as usize]
    }

    /// The byte range (offset, length) in the segment of the records of `from..=upto` (both
    /// within the entry).
    pub fn span(&self, from: u64, upto: u64) -> (u64, usize) {
        let skip = (from - self.first) as usize;
        let take = (upto - from) as usize + 1;
        let before: u64 = self.lens[..skip].iter().map(|l| u64::from(*l)).sum();
        let length: usize = self.lens[skip..skip + take]
            .iter()
            .map(|l| *l as usize)
            .sum();
        (self.offset + before, length)
    }
}

/// The stored frames of consecutive records `from..` in `bytes` (as read for [`BatchEntry::span`]):
/// each header must carry the expected seq and a length that fits.
pub(super) fn records(
    bytes: &[u8],
    from: u64,
    lens: &[u32],
    mut visit: impl FnMut(u64, Result<&[u8], String>) -> bool,
) {
    let mut rest = bytes;
    let mut seq = from;
    let mut lens = lens.iter();
    while !rest.is_empty() {
        let expected = lens.next().map(|l| *l as usize);
        let header = rest.get(..RECORD_HEADER).and_then(|h| {
            let stored_seq = u64::from_be_bytes(h[..8].try_into().ok()?);
            let len = u32::from_be_bytes(h[8..12].try_into().ok()?) as usize;
            Some((stored_seq, len))
        });
        let result = match header {
            None => Err(format!(
                "its record is cut short ({} bytes where a header needs {RECORD_HEADER})",
                rest.len()
            )),
            Some((stored_seq, _)) if stored_seq != seq => Err(format!(
                "the segment holds event {stored_seq} where the index puts event {seq}"
            )),
            Some((_, len)) if Some(RECORD_HEADER + len) != expected => Err(format!(
                "its record says {len} bytes where the index gives it {}",
                expected.map_or(0, |e| e.saturating_sub(RECORD_HEADER))
            )),
            Some((_, len)) => match rest.get(RECORD_HEADER..RECORD_HEADER + len) {
                Some(stored) => {
                    let stored: &[u8] = stored;
                    Ok((stored, RECORD_HEADER + len))
                }
                None => Err(format!(
                    "its record says {len} bytes, more than the index gives it"
                )),
            },
        };
        match result {
            Ok((stored, whole)) => {
                if !visit(seq, Ok(stored)) {
                    return;
                }
                rest = &rest[whole..];
            }
            Err(problem) => {
                visit(seq, Err(problem));
                return;
            }
        }
        seq += 1;
    }
}

/// The open segment files of one data dir, shared by every handle of the log.
#[derive(Debug)]
pub(super) struct Segments {
    dir: PathBuf,
    /// Open files by segment, and whether each was opened for writing.
    files: RwLock<HashMap<u32, (Arc<File>, bool)>>,
}

impl Segments {
    pub fn new(data_dir: &Path) -> Segments {
        Segments {
            dir: data_dir.join(DIR),
            files: RwLock::new(HashMap::new()),
        }
    }

    pub fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(format!("{segment:08}.seg"))
    }

    fn file(&self, segment: u32, create: bool) -> std::io::Result<Arc<File>> {
        if let Ok(files) = self.files.read() {
            if let Some((file, writable)) = files.get(&segment) {
                if *writable || !create {
                    return Ok(Arc::clone(file));
                }
            }
        }
        let path = self.path(segment);
        let (file, writable) = if create {
            let made_dir = !self.dir.exists();
            std::fs::create_dir_all(&self.dir)?;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)?;
            // The file's name (and the dir's, when new) must be on disk before any record in it
            // is acknowledged. Synced at every first open for writing, not only at creation: a
            // crash between creating the file and syncing would leave a name never synced.
            File::open(&self.dir)?.sync_all()?;
            if made_dir {
                if let Some(data_dir) = self.dir.parent() {
                    File::open(data_dir)?.sync_all()?;
                }
            }
            (file, true)
        } else {
            match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => (file, true),
                Err(_) => (File::open(&path)?, false),
            }
        };
        let file = Arc::new(file);
        if let Ok(mut files) = self.files.write() {
            files.insert(segment, (Arc::clone(&file), writable));
        }
        Ok(file)
    }

    /// Exactly `len` bytes at `offset` of `segment`.
    pub fn read(&self, segment: u32, offset: u64, len: usize) -> Result<Vec<u8>, String> {
        let path = || self.path(segment).display().to_string();
        // Checked before allocating: a damaged index can claim any length.
        let file = self.file_holding(segment, offset, len as u64)?;
        let mut bytes = vec![0; len];
        file.read_exact_at(&mut bytes, offset)
            .map_err(|e| format!("cannot read {len} bytes at {offset} of {}: {e}", path()))?;
        Ok(bytes)
    }

    /// The segment's file, once it is known to hold `len` bytes at `offset`.
    fn file_holding(&self, segment: u32, offset: u64, len: u64) -> Result<Arc<File>, String> {
        let path = || self.path(segment).display().to_string();
        let file = self
            .file(segment, false)
            .map_err(|e| format!("cannot open {}: {e}", path()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("cannot read {}: {e}", path()))?
            .len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(format!(
                "{} is {size} bytes long, and the index puts {len} bytes at {offset}",
                path()
            ));
        }
        Ok(file)
    }

    /// Whether the last committed append's records are where its batch entry says: the first
    /// record's header at its offset, the file long enough for all of them. Checked before
    /// the first append of a process truncates what follows them, so that a damaged entry
    /// stops appends instead of cutting good records.
    pub fn check_committed(&self, entry: &BatchEntry) -> Result<(), String> {
        let header = self.read(entry.segment, entry.offset, RECORD_HEADER)?;
        let seq = u64::from_be_bytes(header[..8].try_into().map_err(|_| "short header")?);
        if seq != entry.first {
            return Err(format!(
                "{} holds event {seq} where the index puts event {}",
                self.path(entry.segment).display(),
                entry.first
            ));
        }
        self.file_holding(entry.segment, entry.offset, entry.end() - entry.offset)
            .map(|_| ())
    }

    /// Writes `bytes` at `offset` of `segment` (creating it) and waits until they are on disk.
    pub fn write(&self, segment: u32, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let file = self.file(segment, true)?;
        file.write_all_at(bytes, offset)?;
        file.sync_data()
    }

    /// Drops what lies after the committed records: bytes after `end` in `segment` and any later
    /// segment (an append cut short by a crash or a full disk wrote them; no index points there).
    pub fn truncate_after(&self, segment: u32, end: u64) -> std::io::Result<()> {
        if let Ok(file) = OpenOptions::new().write(true).open(self.path(segment)) {
            if file.metadata()?.len() > end {
                file.set_len(end)?;
                file.sync_all()?;
            }
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let later = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > segment);
            if later {
                if let Ok(mut files) = self.files.write() {
                    files.retain(|s, _| *s <= segment);
                }
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_entry_round_trips_and_spans_its_records() {
        let entry = BatchEntry {
            first: 7,
            segment: 2,
            offset: 100,
            lens: vec![20, 30, 40],
        };
        let key = batch_key(7);
        assert_eq!(BatchEntry::decode(&key, &entry.encode()).unwrap(), entry);
        assert_eq!(entry.last(), 9);
        assert_eq!(entry.end(), 190);
        assert_eq!(entry.span(7, 9), (100, 90));
        assert_eq!(entry.span(8, 8), (120, 30));
        assert_eq!(entry.span(9, 9), (150, 40));
    }

    #[test]
    fn malformed_batch_entries_are_named_not_trusted() {
        let key = batch_key(3);
        let good = BatchEntry {
            first: 3,
            segment: 0,
            offset: 0,
            lens: vec![12],
        }
        .encode();
        assert!(BatchEntry::decode(&key, &good[..good.len() - 1])
            .unwrap_err()
            .contains("events from 3"));
        assert!(BatchEntry::decode(&key, &[]).is_err());
        let mut version = good.clone();
        version[0] = 9;
        assert!(BatchEntry::decode(&key, &version)
            .unwrap_err()
            .contains("unknown version 9"));
        // A record shorter than its header.
        let mut short = good.clone();
        let at = short.len() - 4;
        short[at..].copy_from_slice(&3u32.to_be_bytes());
        assert!(BatchEntry::decode(&key, &short).is_err());
        assert!(BatchEntry::decode(b"B123", &good).is_err());
    }

    #[test]
    fn an_entry_whose_arithmetic_would_wrap_is_refused() {
        let entry = |first: u64, segment: u32, offset: u64, lens: Vec<u32>| {
            let key = batch_key(first);
            BatchEntry::decode(
                &key,
                &BatchEntry {
                    first,
                    segment,
                    offset,
                    lens,
                }
                .encode(),
            )
        };
        assert!(entry(u64::MAX - 1, 0, 0, vec![12, 12])
            .unwrap_err()
            .contains("out of range"));
        assert!(entry(1, 0, u64::MAX - 20, vec![12, 12]).is_err());
        assert!(entry(1, u32::MAX, 0, vec![12]).is_err());
        assert!(entry(u64::MAX - 2, 7, 1 << 40, vec![u32::MAX, 12]).is_ok());
    }

    #[test]
    fn a_record_longer_or_shorter_than_its_index_entry_is_named() {
        let mut bytes = Vec::new();
        push_record(&mut bytes, 1, b"one").unwrap();
        push_record(&mut bytes, 2, b"two").unwrap();
        // The first header claims both records' bytes: it would swallow event 2.
        bytes[8..12].copy_from_slice(&(3u32 + 15).to_be_bytes());
        let mut seen = Vec::new();
        records(&bytes, 1, &[15, 15], |seq, stored| {
            seen.push((seq, stored.map(|s| s.len())));
            true
        });
        assert_eq!(seen.len(), 1);
        let problem = seen[0].1.clone().unwrap_err();
        assert!(problem.contains("where the index gives it 3"), "{problem}");
    }

    #[test]
    fn records_are_read_back_and_a_wrong_seq_or_a_cut_is_named() {
        let mut bytes = Vec::new();
        push_record(&mut bytes, 5, b"five").unwrap();
        push_record(&mut bytes, 6, b"six!!").unwrap();
        let mut seen = Vec::new();
        records(&bytes, 5, &[16, 17], |seq, stored| {
            seen.push((seq, stored.map(|s| s.to_vec())));
            true
        });
        assert_eq!(
            seen,
            vec![(5, Ok(b"five".to_vec())), (6, Ok(b"six!!".to_vec()))]
        );

        let mut seen = Vec::new();
        records(&bytes, 4, &[16, 17], |seq, stored| {
            seen.push((seq, stored.is_ok()));
            true
        });
        assert_eq!(seen, vec![(4, false)]);

        let mut problems = Vec::new();
        records(&bytes[..bytes.len() - 1], 5, &[16, 17], |_, stored| {
            if let Err(p) = stored {
                problems.push(p);
            }
            true
        });
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("more than the index gives it"),
            "{problems:?}"
        );
    }

    #[test]
    fn bytes_after_the_committed_end_and_later_segments_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::new(dir.path());
        segments.write(0, 0, b"committed+garbage").unwrap();
        segments.write(1, 0, b"garbage").unwrap();
        segments.truncate_after(0, 9).unwrap();
        assert_eq!(std::fs::read(segments.path(0)).unwrap(), b"committed");
        assert!(!segments.path(1).exists());
        assert_eq!(segments.read(0, 0, 9).unwrap(), b"committed");
        assert!(segments.read(0, 5, 9).unwrap_err().contains("00000000.seg"));
    }
}
