//! The near-duplicate candidate index: MinHash band buckets in memory, persisted compactly.
//!
//! sled charges a B-tree write per key, and a bucket per band per answer made duplicate search
//! cost 32 writes an answer (most of the diff module's time). Here the buckets live in memory as
//! one sorted `Vec<u64>` per band (`bucket << 32 | member`, 8 bytes an entry, no per-bucket
//! allocation) with a directory by the bucket's top bits, with a small hash map of the newest entries that is merged in from time to time.
//! What the diff module persists is one sled value per committed batch holding that batch's
//! entries ([`LshIndex::take_chunk`]), written in the same atomic batch as the diff checkpoint,
//! so the index loaded after a crash is exactly the index as of the checkpoint.
//!
//! Lookups see, per bucket, its latest [`BUCKET_LIMIT`] members, as the per-bucket keys of the
//! first format did; results do not depend on when merges happen. Each entry also carries a
//! 128-bit digest of the answer's normalised text, so exact duplicates are found in memory too
//! (the first answer with a text is the one every later copy is flagged against).

use std::collections::{BTreeMap, HashMap};

/// Bands of the MinHash signature, each hashed to one bucket.
pub const BANDS: usize = 32;
/// Members kept per bucket (the most recent): boilerplate fills buckets, and a cap keeps each
/// lookup bounded.
pub const BUCKET_LIMIT: usize = 64;
/// Fresh entries (per band) merged into the sorted runs once this many answers are waiting. A
/// merge copies the sorted runs, so fewer merges cost less time; the fresh entries take about 17
/// bytes each (32 per answer), about 9 MB at this bound.
const MERGE_AT: usize = 16_384;
/// No earlier entry in a fresh bucket's chain.
const NONE: u32 = u32::MAX;
/// Chunk encoding version (the first byte of every persisted chunk).
const CHUNK_V2: u8 = 2;
/// seq, question tag, exact-text digest, one bucket per band.
const ENTRY_BYTES: usize = 8 + 8 + 16 + 4 * BANDS;

/// A band's bucket for each band of one answer.
pub type Buckets = [u32; BANDS];

#[derive(Debug, Default)]
pub struct LshIndex {
    /// Member number -> (event seq, question tag), in the order answers were added.
    members: Vec<(u64, u64)>,
    /// Per band, `bucket << 32 | member`, sorted, with a directory into it.
    sorted: Vec<SortedBand>,
    /// Per band, the entries added since the last merge.
    fresh: Vec<Fresh>,
    fresh_answers: usize,
    /// Digest of the normalised text -> the first member with that text (exact duplicates).
    exact: HashMap<u128, u32>,
    /// Entries added since the last [`LshIndex::take_chunk`], encoded.
    pending: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
#[error("near-duplicate index chunk {chunk}: {why}")]
pub struct ChunkError {
    pub chunk: String,
    pub why: String,
}

impl LshIndex {
    pub fn new() -> LshIndex {
        LshIndex {
            sorted: (0..BANDS).map(|_| SortedBand::default()).collect(),
            fresh: (0..BANDS).map(|_| Fresh::default()).collect(),
            ..LshIndex::default()
        }
    }

    /// Builds the index from persisted chunks, oldest first.
    pub fn load<'a>(
        chunks: impl Iterator<Item = Result<(String, &'a [u8]), ChunkError>>,
    ) -> Result<LshIndex, ChunkError> {
        let mut index = LshIndex::new();
        let mut loaded: Vec<Vec<u64>> = vec![Vec::new(); BANDS];
        for chunk in chunks {
            let (name, bytes) = chunk?;
            let bad = |why: String| ChunkError {
                chunk: name.clone(),
                why,
            };
            let Some((&version, body)) = bytes.split_first() else {
                return Err(bad("empty".into()));
            };
            if version != CHUNK_V2 {
                return Err(bad(format!("unknown version {version}")));
            }
            if body.len() % ENTRY_BYTES != 0 {
                return Err(bad(format!(
                    "{} bytes is not a whole number of {ENTRY_BYTES}-byte entries",
                    body.len()
                )));
            }
            for entry in body.chunks_exact(ENTRY_BYTES) {
                let (seq, tag, digest, buckets) = decode_entry(entry);
                let member = index.push_member(seq, tag).map_err(bad)?;
                index.exact.entry(digest).or_insert(member);
                for (band, bucket) in buckets.iter().enumerate() {
                    loaded[band].push(u64::from(*bucket) << 32 | u64::from(member));
                }
            }
        }
        for (band, mut entries) in index.sorted.iter_mut().zip(loaded) {
            entries.sort_unstable();
            prune(&mut entries);
            *band = SortedBand::new(entries);
        }
        Ok(index)
    }

    /// Answers in the index.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Votes per earlier answer (by event seq) sharing a bucket with `buckets`, leaving out
    /// answers to the question tagged `own`.
    pub fn candidates(&self, buckets: &Buckets, own: u64) -> BTreeMap<u64, usize> {
        // Each band's lookup is a cache miss or two; taken band by band, each waited for the
        // last. In stages, the 32 directory reads (then the 32 entry searches) are independent
        // and the processor overlaps them.
        let near: [&[u64]; BANDS] =
            std::array::from_fn(|band| self.sorted[band].near(buckets[band]));
        let old: [&[u64]; BANDS] =
            std::array::from_fn(|band| SortedBand::bucket_in(near[band], buckets[band]));
        let mut votes: BTreeMap<u64, usize> = BTreeMap::new();
        for (band, bucket) in buckets.iter().enumerate() {
            let old = old[band];
            let mut latest = [0u32; BUCKET_LIMIT];
            let new = self.fresh[band].latest(*bucket, &mut latest);
            // Latest BUCKET_LIMIT of old ++ new (both ascending).
            let from_new = new.len().min(BUCKET_LIMIT);
            let from_old = (BUCKET_LIMIT - from_new).min(old.len());
            let members = old[old.len() - from_old..]
                .iter()
                .map(|e| (*e & 0xffff_ffff) as u32)
                .chain(new[new.len() - from_new..].iter().copied());
            for member in members {
                if let Some(&(seq, tag)) = self.members.get(member as usize) {
                    if tag != own {
                        *votes.entry(seq).or_default() += 1;
                    }
                }
            }
        }
        votes
    }

    /// The first answer (seq, question tag) whose normalised text has this digest.
    pub fn exact(&self, digest: u128) -> Option<(u64, u64)> {
        self.exact
            .get(&digest)
            .and_then(|m| self.members.get(*m as usize).copied())
    }

    /// Adds an answer (after looking up its candidates).
    pub fn insert(
        &mut self,
        seq: u64,
        tag: u64,
        buckets: &Buckets,
        digest: u128,
    ) -> Result<(), String> {
        let member = self.push_member(seq, tag)?;
        self.exact.entry(digest).or_insert(member);
        for (band, bucket) in buckets.iter().enumerate() {
            self.fresh[band].push(*bucket, member);
        }
        if self.pending.is_empty() {
            self.pending.push(CHUNK_V2);
        }
        self.pending.extend_from_slice(&seq.to_be_bytes());
        self.pending.extend_from_slice(&tag.to_be_bytes());
        self.pending.extend_from_slice(&digest.to_be_bytes());
        for bucket in buckets {
            self.pending.extend_from_slice(&bucket.to_be_bytes());
        }
        self.fresh_answers += 1;
        if self.fresh_answers >= MERGE_AT {
            self.merge();
        }
        Ok(())
    }

    /// The encoded entries added since the last call, to persist with the checkpoint.
    pub fn take_chunk(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    fn push_member(&mut self, seq: u64, tag: u64) -> Result<u32, String> {
        let member = u32::try_from(self.members.len())
            .map_err(|_| "more than 4 billion answers in the index".to_string())?;
        self.members.push((seq, tag));
        Ok(member)
    }

    fn merge(&mut self) {
        for (band, fresh) in self.sorted.iter_mut().zip(&mut self.fresh) {
            let sorted = &band.entries;
            let mut add = fresh.drain();
            add.sort_unstable();
            let mut merged = Vec::with_capacity(sorted.len() + add.len());
            let (mut i, mut j) = (0, 0);
            while i < sorted.len() && j < add.len() {
                if sorted[i] <= add[j] {
                    merged.push(sorted[i]);
                    i += 1;
                } else {
                    merged.push(add[j]);
                    j += 1;
                }
            }
            merged.extend_from_slice(&sorted[i..]);
            merged.extend_from_slice(&add[j..]);
            prune(&mut merged);
            *band = SortedBand::new(merged);
        }
        self.fresh_answers = 0;
    }
}

/// A band's merged entries, `bucket << 32 | member` ascending, and a directory by the bucket's top
/// bits: `directory[k]` is the first entry whose bucket starts with `k`. A plain binary search
/// over a band of 200,000 entries missed the cache at nearly every step, 64 searches an answer,
/// and was over half of the diff module's time; buckets are hashes, so each directory slot
/// holds a few entries and a lookup touches two or three cache lines. The directory costs about
/// half a byte per entry against the entries' eight.
#[derive(Debug, Default)]
struct SortedBand {
    entries: Vec<u64>,
    directory: Vec<u32>,
    /// How many top bits of a bucket the directory is indexed by.
    bits: u32,
}

impl SortedBand {
    fn new(entries: Vec<u64>) -> SortedBand {
        // About four entries a slot: log2(len) - 2 bits, up to 24.
        let bits = match entries.len() {
            0..=7 => 0,
            n => (usize::BITS - 1 - n.leading_zeros() - 2).min(24),
        };
        let slots = 1usize << bits;
        let mut directory = Vec::with_capacity(slots + 1);
        // Fewer entries than u32::MAX: a band holds one entry per answer at most.
        let mut at = 0usize;
        for slot in 0..slots as u64 {
            while at < entries.len() && Self::slot(entries[at] >> 32, bits) < slot {
                at += 1;
            }
            directory.push(at as u32);
        }
        directory.push(entries.len() as u32);
        SortedBand {
            entries,
            directory,
            bits,
        }
    }

    fn slot(bucket: u64, bits: u32) -> u64 {
        bucket >> (32 - bits)
    }

    /// The entries of one bucket, ascending.
    #[cfg(test)]
    fn bucket(&self, bucket: u32) -> &[u64] {
        Self::bucket_in(self.near(bucket), bucket)
    }

    /// The entries in the bucket's directory slot (a few, around it).
    fn near(&self, bucket: u32) -> &[u64] {
        let slot = Self::slot(u64::from(bucket), self.bits) as usize;
        let (Some(&from), Some(&to)) = (self.directory.get(slot), self.directory.get(slot + 1))
        else {
            return &[];
        };
        self.entries.get(from as usize..to as usize).unwrap_or(&[])
    }

    /// The bucket's entries among `near`.
    fn bucket_in(near: &[u64], bucket: u32) -> &[u64] {
        let bucket = u64::from(bucket);
        let start = near.partition_point(|e| *e >> 32 < bucket);
        let end = near.partition_point(|e| *e >> 32 <= bucket);
        &near[start..end]
    }
}

/// A band's entries since the last merge: per bucket a chain through `links`, newest first. Flat
/// arrays rather than a `Vec` per bucket: most buckets hold one member, and a vector each cost
/// several times the entry.
#[derive(Debug, Default)]
struct Fresh {
    /// Bucket -> index in `links` of its newest entry.
    heads: HashMap<u32, u32>,
    /// (member, index of the bucket's previous entry or [`NONE`]).
    links: Vec<(u32, u32)>,
}

impl Fresh {
    fn push(&mut self, bucket: u32, member: u32) {
        // Fewer than MERGE_AT * BANDS entries, far below u32::MAX.
        let at = self.links.len() as u32;
        let previous = self.heads.insert(bucket, at).unwrap_or(NONE);
        self.links.push((member, previous));
    }

    /// The bucket's latest members (at most BUCKET_LIMIT), ascending, written into `out`.
    fn latest<'o>(&self, bucket: u32, out: &'o mut [u32; BUCKET_LIMIT]) -> &'o [u32] {
        let mut n = 0;
        let mut at = self.heads.get(&bucket).copied().unwrap_or(NONE);
        while at != NONE && n < BUCKET_LIMIT {
            let Some(&(member, previous)) = self.links.get(at as usize) else {
                break;
            };
            out[BUCKET_LIMIT - 1 - n] = member;
            n += 1;
            at = previous;
        }
        &out[BUCKET_LIMIT - n..]
    }

    /// Every entry as `bucket << 32 | member` (unsorted); leaves the band empty.
    fn drain(&mut self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.links.len());
        for (bucket, head) in self.heads.drain() {
            let mut at = head;
            while let Some(&(member, previous)) = self.links.get(at as usize) {
                out.push(u64::from(bucket) << 32 | u64::from(member));
                at = previous;
            }
        }
        self.links.clear();
        out
    }
}

/// Keeps only the latest BUCKET_LIMIT members of each bucket: older ones are never looked at.
fn prune(sorted: &mut Vec<u64>) {
    let mut out = 0;
    let mut i = 0;
    while i < sorted.len() {
        let bucket = sorted[i] >> 32;
        let mut end = i;
        while end < sorted.len() && sorted[end] >> 32 == bucket {
            end += 1;
        }
        let keep_from = end.saturating_sub(BUCKET_LIMIT).max(i);
        for k in keep_from..end {
            sorted[out] = sorted[k];
            out += 1;
        }
        i = end;
    }
    sorted.truncate(out);
    sorted.shrink_to_fit();
}

fn decode_entry(entry: &[u8]) -> (u64, u64, u128, Buckets) {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&entry[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&entry[16..32]);
    let mut buckets = [0u32; BANDS];
    for (band, bucket) in buckets.iter_mut().enumerate() {
        let at = 32 + band * 4;
        *bucket = u32::from_be_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]]);
    }
    (word(0), word(8), u128::from_be_bytes(digest), buckets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The first format: one list per (band, bucket) keeping its latest BUCKET_LIMIT members.
    #[derive(Default)]
    struct Reference {
        buckets: HashMap<(usize, u32), Vec<(u64, u64)>>,
    }

    impl Reference {
        fn candidates(&self, buckets: &Buckets, own: u64) -> BTreeMap<u64, usize> {
            let mut votes = BTreeMap::new();
            for (band, bucket) in buckets.iter().enumerate() {
                for (seq, tag) in self.buckets.get(&(band, *bucket)).into_iter().flatten() {
                    if *tag != own {
                        *votes.entry(*seq).or_default() += 1;
                    }
                }
            }
            votes
        }
        fn insert(&mut self, seq: u64, tag: u64, buckets: &Buckets) {
            for (band, bucket) in buckets.iter().enumerate() {
                let members = self.buckets.entry((band, *bucket)).or_default();
                if members.len() >= BUCKET_LIMIT {
                    members.remove(0);
                }
                members.push((seq, tag));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Same votes as the per-bucket lists, across merges and a reload from chunks taken at
        /// arbitrary points.
        #[test]
        fn matches_per_bucket_lists(
            answers in proptest::collection::vec((0u32..6, 0u64..5), 1..400),
            cut_every in 1usize..90,
            // Up to longer than BUCKET_LIMIT, so fresh chains overflow it between merges.
            merge_every in 1usize..200,
            // Small buckets all share the directory's first slot; spread ones use all slots.
            spread in prop_oneof![Just(1u32), Just(0x9E37_79B1u32)],
        ) {
            let mut index = LshIndex::new();
            let mut reference = Reference::default();
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            for (i, (bucket_seed, tag)) in answers.iter().enumerate() {
                // Few distinct buckets, so buckets overflow BUCKET_LIMIT.
                let buckets: Buckets = std::array::from_fn(|band| {
                    ((bucket_seed + band as u32 % 3) * 7 + band as u32).wrapping_mul(spread)
                });
                let seq = (i as u64 + 1) * 2;
                prop_assert_eq!(index.candidates(&buckets, *tag), reference.candidates(&buckets, *tag));
                index.insert(seq, *tag, &buckets, u128::from(*bucket_seed)).unwrap();
                reference.insert(seq, *tag, &buckets);
                if i % merge_every == 0 {
                    index.merge();
                }
                if i % cut_every == 0 {
                    chunks.extend(index.take_chunk());
                }
            }
            chunks.extend(index.take_chunk());
            let reloaded = LshIndex::load(
                chunks.iter().enumerate().map(|(i, c)| Ok((i.to_string(), c.as_slice()))),
            )
            .unwrap();
            prop_assert_eq!(reloaded.len(), answers.len());
            for seed in 0..6u32 {
                prop_assert_eq!(reloaded.exact(u128::from(seed)), index.exact(u128::from(seed)));
                let first = answers.iter().position(|(s, _)| *s == seed);
                prop_assert_eq!(
                    index.exact(u128::from(seed)).map(|(seq, _)| seq),
                    first.map(|i| (i as u64 + 1) * 2)
                );
            }
            for seed in 0..6u32 {
                let buckets: Buckets = std::array::from_fn(|band| {
                    ((seed + band as u32 % 3) * 7 + band as u32).wrapping_mul(spread)
                });
                prop_assert_eq!(reloaded.candidates(&buckets, 99), reference.candidates(&buckets, 99));
                prop_assert_eq!(index.candidates(&buckets, 99), reference.candidates(&buckets, 99));
            }
        }
    }

    proptest! {
        /// A bucket's entries through the directory are exactly those a scan finds, at every
        /// directory size.
        #[test]
        fn directory_finds_each_bucket(
            buckets in proptest::collection::vec(any::<u32>(), 0..3000),
            high in any::<bool>(),
        ) {
            // Some runs keep to a few buckets near the top of the range, some spread.
            let buckets: Vec<u32> = buckets
                .iter()
                .map(|b| if high { u32::MAX - b % 50 } else { *b })
                .collect();
            let mut entries: Vec<u64> = buckets
                .iter()
                .enumerate()
                .map(|(member, b)| u64::from(*b) << 32 | member as u64)
                .collect();
            entries.sort_unstable();
            let band = SortedBand::new(entries.clone());
            for probe in buckets.iter().copied().chain([0, 1, u32::MAX]) {
                let expected: Vec<u64> =
                    entries.iter().copied().filter(|e| *e >> 32 == u64::from(probe)).collect();
                prop_assert_eq!(band.bucket(probe), expected.as_slice());
            }
        }
    }

    #[test]
    fn bad_chunks_are_named() {
        let err = LshIndex::load([Ok(("L7".to_string(), &[2u8, 2, 3][..]))].into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("L7") && err.contains("whole number"), "{err}");
        let err = LshIndex::load([Ok(("L8".to_string(), &[9u8][..]))].into_iter())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown version 9"), "{err}");
    }
}
