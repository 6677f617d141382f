//! Posting blocks: the views' indexes (recency, body, member, topic, force, flags by kind) and
//! statistics rows as a few sled values instead of a key per entry.
//!
//! An entry is a `(seq, payload)` pair. In an index the seq is a question's latest content event
//! (or a flag) and the payload the question; for statistics, the payload is the rows one
//! answer gives for one force. One seq has at most one entry in a block.
//! Entries are grouped by index value and by *block*, the sequence number divided by
//! [`BLOCK`], and each block is one value holding its entries in sequence order. A block's
//! content is a function of which entries exist, never of the order or batching in which they
//! came, so views applied incrementally equal a rebuild byte for byte. Reading the blocks in
//! reverse key order, each from its end, gives the entries newest first.
//!
//! Why: sled 0.34 costs several microseconds and a share of resident metadata per key, and the
//! indexes were over half the views' keys (about five per answer). A batch of 1,000 answers now
//! edits a few hundred block values instead of writing five thousand keys.
//!
//! Encoding of a block: entries one after another, each the payload's UTF-8 bytes, their
//! length (4 bytes, big-endian) and `seq` (8 bytes, big-endian). Flag blocks carry no payload
//! (length 0). The block reads backward from its end: newest first, which is what queries want,
//! and a new entry (almost always the newest) is added after a look at the last one only.

use crate::overlay::OverlayError;

/// Sequence numbers per block. Small in unit tests so that their few events span many blocks.
/// sled rewrites a whole value to add an entry, and keeps what it wrote in its cache: at 1,024
/// the blocks of busy index values (recency, statistics of the big forces) grew to tens of KB,
/// each rewritten at every batch that touched it (most of the backfill's blob writes). 128 keeps
/// them to a few KB, for 35,000 more keys at 200k answers (views 228k -> 263k keys).
#[cfg(not(test))]
pub const BLOCK: u64 = 128;
#[cfg(test)]
pub const BLOCK: u64 = 4;

const TRAILER: usize = 12;

pub fn block_of(seq: u64) -> u64 {
    seq / BLOCK
}

/// Sequence numbers per block of the member index. A member asks a question or two per 1,024
/// events, so blocks that narrow were nearly a key per entry again (96k member keys at 200k
/// answers).
#[cfg(not(test))]
pub const MEMBER_BLOCK: u64 = 16 * 1024;
#[cfg(test)]
pub const MEMBER_BLOCK: u64 = 8;

pub fn member_block_of(seq: u64) -> u64 {
    seq / MEMBER_BLOCK
}

/// One decoded entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting<'a> {
    pub seq: u64,
    pub payload: &'a str,
}

/// The entries of a block, newest (highest seq) first; an entry that does not decode is an
/// error naming the block's key.
pub fn entries<'a>(key: &'a [u8], block: &'a [u8]) -> Entries<'a> {
    Entries {
        key,
        rest: block,
        failed: false,
    }
}

pub struct Entries<'a> {
    key: &'a [u8],
    /// The entries not yet read: the last of them is the next.
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Entries<'a> {
    fn error(&mut self, why: &str) -> Option<Result<Posting<'a>, OverlayError>> {
        self.failed = true;
        Some(Err(OverlayError::Decode {
            key: String::from_utf8_lossy(self.key).into_owned(),
            why: why.to_string(),
        }))
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Posting<'a>, OverlayError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let Some((head, trailer)) = self.rest.split_last_chunk::<TRAILER>() else {
            return self.error("posting block cut short in an entry's trailer");
        };
        let (len, seq) = trailer.split_at(4);
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        let Some(start) = head.len().checked_sub(len) else {
            return self.error("posting block cut short in an entry's payload");
        };
        let (rest, payload) = head.split_at(start);
        let Ok(payload) = std::str::from_utf8(payload) else {
            return self.error("posting block holds a payload that is not UTF-8");
        };
        self.rest = rest;
        Some(Ok(Posting { seq, payload }))
    }
}

/// [`entries`] with where each lies in the block: what adding and removing entries edit.
fn located<'a>(
    key: &'a [u8],
    block: &'a [u8],
) -> impl Iterator<Item = Result<(std::ops::Range<usize>, Posting<'a>), OverlayError>> + 'a {
    let mut newest_first = entries(key, block);
    std::iter::from_fn(move || {
        // The entry `next` returns ends where the unread bytes end.
        let end = newest_first.rest.len();
        let entry = newest_first.next()?;
        Some(entry.map(|posting| (newest_first.rest.len()..end, posting)))
    })
}

/// Adds an entry, keeping sequence order; an entry already there is not added twice. Entries
/// usually come newest, so this looks at the last entry and appends.
pub fn insert(
    key: &[u8],
    block: &mut Vec<u8>,
    seq: u64,
    payload: &str,
) -> Result<(), OverlayError> {
    let mut at = 0;
    for entry in located(key, block) {
        let (range, entry) = entry?;
        if entry.seq == seq && entry.payload == payload {
            return Ok(());
        }
        if entry.seq < seq || (entry.seq == seq && entry.payload < payload) {
            at = range.end;
            break;
        }
    }
    let len = u32::try_from(payload.len()).map_err(|_| OverlayError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        why: format!(
            "an entry of {} bytes is too long for a block",
            payload.len()
        ),
    })?;
    let mut encoded = Vec::with_capacity(payload.len() + TRAILER);
    encoded.extend_from_slice(payload.as_bytes());
    encoded.extend_from_slice(&len.to_be_bytes());
    encoded.extend_from_slice(&seq.to_be_bytes());
    block.splice(at..at, encoded);
    Ok(())
}

/// Removes an entry if present.
pub fn remove(
    key: &[u8],
    block: &mut Vec<u8>,
    seq: u64,
    payload: &str,
) -> Result<(), OverlayError> {
    remove_where(key, block, seq, |p| p == payload)
}

/// Removes the entry of `seq`, whatever its payload.
pub fn remove_seq(key: &[u8], block: &mut Vec<u8>, seq: u64) -> Result<(), OverlayError> {
    remove_where(key, block, seq, |_| true)
}

fn remove_where(
    key: &[u8],
    block: &mut Vec<u8>,
    seq: u64,
    matches: impl Fn(&str) -> bool,
) -> Result<(), OverlayError> {
    let mut found = None;
    for entry in located(key, block) {
        let (range, entry) = entry?;
        if entry.seq == seq && matches(entry.payload) {
            found = Some(range);
            break;
        }
        if entry.seq < seq {
            break;
        }
    }
    if let Some(range) = found {
        block.drain(range);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decoded(block: &[u8]) -> Vec<(u64, String)> {
        entries(b"k", block)
            .map(|e| e.map(|p| (p.seq, p.payload.to_string())).unwrap())
            .collect()
    }

    #[test]
    fn entries_read_newest_first_whatever_order_they_come_in() {
        let mut block = Vec::new();
        for (seq, q) in [(9, "api:9"), (3, "txt:ab"), (5, "api:5"), (3, "txt:ab")] {
            insert(b"k", &mut block, seq, q).unwrap();
        }
        assert_eq!(
            decoded(&block),
            vec![
                (9, "api:9".into()),
                (5, "api:5".into()),
                (3, "txt:ab".into())
            ]
        );
        remove(b"k", &mut block, 5, "api:5").unwrap();
        remove(b"k", &mut block, 5, "api:6").unwrap();
        assert_eq!(
            decoded(&block),
            vec![(9, "api:9".into()), (3, "txt:ab".into())]
        );
        remove(b"k", &mut block, 3, "txt:ab").unwrap();
        remove(b"k", &mut block, 9, "api:9").unwrap();
        assert!(block.is_empty());
    }

    #[test]
    fn a_damaged_block_is_an_error_naming_its_key() {
        let mut block = Vec::new();
        insert(b"k", &mut block, 1, "api:1").unwrap();
        block.remove(0);
        block.remove(0);
        let err = entries(b"t\x1fpolicing", &block)
            .last()
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("policing"), "{err}");
        assert!(insert(b"k", &mut block, 2, "api:2").is_err());
    }

    proptest! {
        /// Whatever the order of additions and removals, a block holds exactly the entries
        /// left, in sequence order: the same bytes as adding them in order.
        #[test]
        fn a_block_is_a_function_of_its_entries(
            ops in proptest::collection::vec((0u64..40, any::<bool>()), 0..120)
        ) {
            let mut block = Vec::new();
            let mut model = std::collections::BTreeSet::new();
            for (seq, add) in ops {
                let q = format!("api:{}", seq * 7);
                if add {
                    insert(b"k", &mut block, seq, &q).unwrap();
                    model.insert(seq);
                } else {
                    remove(b"k", &mut block, seq, &q).unwrap();
                    model.remove(&seq);
                }
            }
            let mut fresh = Vec::new();
            for seq in &model {
                insert(b"k", &mut fresh, *seq, &format!("api:{}", seq * 7)).unwrap();
            }
            prop_assert_eq!(&block, &fresh);
        }
    }
}
