//! The near-duplicate candidate index: MinHash band buckets in memory, persisted compactly.
//!
//! sled charges a B-tree write per key, and a bucket per band per answer made duplicate search
//! cost 32 writes an answer (most of the diff module's time). Here the buckets live in memory as
//! sorted packed arrays per band (about five bytes an entry, no per-bucket allocation) with a
//! directory by the bucket's top bits, in three tiers: the newest entries in a small hash map,
//! merged every [`FRESH_AT`] answers into a small sorted run of the recent ones, which is merged
//! every [`RECENT_AT`] answers into the run of all the others. A merge rewrites its target, so
//! the small run keeps the big one's merges as rare as one tier did, while the hash map, the
//! costliest entries by far, stays small.
//! What the diff module persists is one sled value per committed batch holding that batch's
//! entries ([`LshIndex::take_chunk`]), written in the same atomic batch as the diff checkpoint,
//! so the index loaded after a crash is exactly the index as of the checkpoint.
//!
//! Lookups see, per bucket, its latest [`BUCKET_LIMIT`] members, as the per-bucket keys of the
//! first format did; results do not depend on when merges happen. Each entry also carries a
//! 128-bit digest of the answer's normalised text, so exact duplicates are found in memory too
//! (the first answer with a text is the one every later copy is flagged against; the map keeps
//! the digest's top 64 bits and the diff module compares the texts).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

/// A map keyed by values that are hashes already (band buckets, a text digest's top bits). The
/// standard SipHash, keyed per process against chosen collisions, cost more than the lookups in
/// the fresh buckets themselves (about 1.4% of a backfill's CPU with the map's inserts); one
/// multiply spreads such keys over the table. The keys come from answer texts through fixed
/// hashes, so collisions could be chosen by whoever writes the answers: they would slow the
/// diff module, never change what it finds.
type MixMap<K, V> = HashMap<K, V, BuildHasherDefault<MixHasher>>;

#[derive(Debug, Default, Clone, Copy)]
struct MixHasher(u64);

/// An odd constant with bits spread over the word (2^64 / the golden ratio).
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl std::hash::Hasher for MixHasher {
    fn finish(&self) -> u64 {
        // The table takes its slot from the low bits and a tag from the top seven: fold the
        // product's well-mixed top half down.
        self.0 ^ (self.0 >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(MIX);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(MIX);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(MIX);
    }
}

/// Bands of the MinHash signature, each hashed to one bucket.
pub const BANDS: usize = 32;
/// Members kept per bucket (the most recent): boilerplate fills buckets, and a cap keeps each
/// lookup bounded.
pub const BUCKET_LIMIT: usize = 64;
/// Fresh entries (per band) are merged into the recent run once this many answers are waiting.
/// A fresh entry takes about 26 bytes (a hash map slot and a chain link; 32 entries an answer)
/// against about 5 merged. With fresh entries merged straight into the big run, this bound had
/// to be 16,384 answers (13.6 MB of fresh entries at its top): half of it took duplicate
/// detection at 200,000 answers from 9.1 / 9.4 s to 10.1 / 9.8 s.
const FRESH_AT: usize = 2_048;
/// The recent run is merged into the big one once it holds this many answers (2.6 MB at most).
const RECENT_AT: usize = 16_384;
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
    /// Per band, `bucket << 32 | member`, sorted, with a directory into it: all but the recent
    /// and fresh entries.
    sorted: Vec<SortedBand>,
    /// Per band, the entries merged from `fresh` since the last merge into `sorted`.
    recent: Vec<SortedBand>,
    recent_answers: usize,
    /// Per band, the entries added since the last merge into `recent`.
    fresh: Vec<Fresh>,
    fresh_answers: usize,
    /// The top 64 bits of the digest of the normalised text -> the first member with such a
    /// text (exact duplicates; the caller compares the texts). Half the memory of the whole
    /// digest as key.
    exact: MixMap<u64, u32>,
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
            recent: (0..BANDS).map(|_| SortedBand::default()).collect(),
            fresh: (0..BANDS).map(|_| Fresh::default()).collect(),
            ..LshIndex::default()
        }
    }

    /// Builds the index from persisted chunks (name, bytes), oldest first.
    ///
    /// One band at a time: the bands' unpacked entries all at once took 8 bytes an entry
    /// (51 MB at 200,000 answers) on top of the packed index, at every load.
    pub fn load<C: AsRef<[u8]>>(chunks: &[(String, C)]) -> Result<LshIndex, ChunkError> {
        let mut index = LshIndex::new();
        let mut bodies: Vec<&[u8]> = Vec::with_capacity(chunks.len());
        for (name, bytes) in chunks {
            let bad = |why: String| ChunkError {
                chunk: name.clone(),
                why,
            };
            let Some((&version, body)) = bytes.as_ref().split_first() else {
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
                let (seq, tag, digest) = decode_entry_head(entry);
                let member = index.push_member(seq, tag).map_err(bad)?;
                index.exact.entry(exact_key(digest)).or_insert(member);
            }
            bodies.push(body);
        }
        let mut entries: Vec<u64> = Vec::with_capacity(index.members.len());
        for (band, sorted) in index.sorted.iter_mut().enumerate() {
            entries.clear();
            // Members are numbered in load order, as in the first pass.
            let all = bodies
                .iter()
                .flat_map(|body| body.chunks_exact(ENTRY_BYTES));
            for (member, entry) in all.enumerate() {
                let bucket = entry_bucket(entry, band);
                entries.push(u64::from(bucket) << 32 | member as u64);
            }
            entries.sort_unstable();
            prune(&mut entries);
            *sorted = SortedBand::new(&entries);
        }
        Ok(index)
    }

    /// Answers in the index.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Votes per earlier answer (by event seq) sharing a bucket with `buckets`, leaving out
    /// answers to the question tagged `own`: (seq, votes), ascending by seq.
    pub fn candidates(&self, buckets: &Buckets, own: u64) -> Vec<(u64, usize)> {
        // Each band's lookup is a cache miss or two; taken band by band, each waited for the
        // last. In stages, the 32 directory reads (then the 32 entry searches, then the 32
        // fresh buckets' heads) are independent and the processor overlaps them.
        let near: [std::ops::Range<usize>; BANDS] =
            std::array::from_fn(|band| self.sorted[band].near(buckets[band]));
        let near_recent: [std::ops::Range<usize>; BANDS] =
            std::array::from_fn(|band| self.recent[band].near(buckets[band]));
        let old: [std::ops::Range<usize>; BANDS] = std::array::from_fn(|band| {
            self.sorted[band].bucket_in(near[band].clone(), buckets[band])
        });
        let recent: [std::ops::Range<usize>; BANDS] = std::array::from_fn(|band| {
            self.recent[band].bucket_in(near_recent[band].clone(), buckets[band])
        });
        let fresh: [u32; BANDS] = std::array::from_fn(|band| self.fresh[band].head(buckets[band]));
        // One seq per vote, then counted in one sorted pass: boilerplate (holding answers) fills
        // all 32 buckets to the limit, and a map entry per vote was half of this function.
        let mut seqs: Vec<u64> = Vec::with_capacity(BANDS * BUCKET_LIMIT);
        for band in 0..BANDS {
            let (sorted, sorted_recent) = (&self.sorted[band], &self.recent[band]);
            let (old, recent) = (old[band].clone(), recent[band].clone());
            let mut latest = [0u32; BUCKET_LIMIT];
            let new = self.fresh[band].latest_from(fresh[band], &mut latest);
            // Latest BUCKET_LIMIT of old ++ recent ++ new (each ascending, each newer than the
            // one before).
            let from_new = new.len().min(BUCKET_LIMIT);
            let from_recent = (BUCKET_LIMIT - from_new).min(recent.len());
            let from_old = (BUCKET_LIMIT - from_new - from_recent).min(old.len());
            let members = (old.end - from_old..old.end)
                .map(|i| sorted.member(i))
                .chain((recent.end - from_recent..recent.end).map(|i| sorted_recent.member(i)))
                .chain(new[new.len() - from_new..].iter().copied());
            for member in members {
                if let Some(&(seq, tag)) = self.members.get(member as usize) {
                    if tag != own {
                        seqs.push(seq);
                    }
                }
            }
        }
        seqs.sort_unstable();
        let mut votes: Vec<(u64, usize)> = Vec::new();
        for seq in seqs {
            match votes.last_mut() {
                Some((last, count)) if *last == seq => *count += 1,
                _ => votes.push((seq, 1)),
            }
        }
        votes
    }

    /// The first answer (seq, question tag) whose normalised text may be the one with this
    /// digest: only the digest's top 64 bits are kept, so the caller compares the texts.
    pub fn exact(&self, digest: u128) -> Option<(u64, u64)> {
        self.exact
            .get(&exact_key(digest))
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
        self.exact.entry(exact_key(digest)).or_insert(member);
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
        if self.fresh_answers >= FRESH_AT {
            self.merge_fresh();
            if self.recent_answers >= RECENT_AT {
                self.merge_recent();
            }
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

    /// The fresh entries into the recent run.
    fn merge_fresh(&mut self) {
        for (band, fresh) in self.recent.iter_mut().zip(&mut self.fresh) {
            let mut add = fresh.drain();
            add.sort_unstable();
            let newest = add.iter().map(|e| *e as u32).max().unwrap_or(0);
            *band = merged(band, add.len(), add.into_iter(), newest);
        }
        self.recent_answers += self.fresh_answers;
        self.fresh_answers = 0;
    }

    /// The recent run into the big one (after the fresh entries into the recent run).
    fn merge_recent(&mut self) {
        for (band, recent) in self.sorted.iter_mut().zip(&mut self.recent) {
            let recent = std::mem::take(recent);
            *band = merged(band, recent.len, recent.iter(), recent.max_member);
        }
        self.recent_answers = 0;
    }
}

/// `run` with `add` merged in (`add_len` entries, ascending, their members newer than the run's
/// and at most `add_max`), keeping each bucket's latest BUCKET_LIMIT members.
///
/// In one pass from packed entries to packed entries: unpacking the run into a vector, merging
/// into another and packing that (the big run's 200,000 entries a band, 32 bands, every
/// [`RECENT_AT`] answers) was a tenth of the diff thread's time in a backfill, much of it the
/// kernel zeroing the vectors' fresh pages.
fn merged(
    run: &SortedBand,
    add_len: usize,
    add: impl Iterator<Item = u64>,
    add_max: u32,
) -> SortedBand {
    let mut out = PackedBuilder::new(run.len + add_len, run.max_member.max(add_max));
    let mut old = run.iter().peekable();
    let mut add = add.peekable();
    // One bucket's merged entries, of which the latest BUCKET_LIMIT are kept.
    let mut bucket_entries: Vec<u64> = Vec::with_capacity(BUCKET_LIMIT);
    loop {
        let next = match (old.peek(), add.peek()) {
            (Some(a), Some(b)) if a <= b => old.next(),
            (Some(_), Some(_)) | (None, Some(_)) => add.next(),
            (Some(_), None) => old.next(),
            (None, None) => None,
        };
        let ends_bucket = match (next, bucket_entries.last()) {
            (Some(entry), Some(last)) => entry >> 32 != last >> 32,
            (None, _) => true,
            (Some(_), None) => false,
        };
        if ends_bucket {
            let keep_from = bucket_entries.len().saturating_sub(BUCKET_LIMIT);
            for entry in &bucket_entries[keep_from..] {
                out.push(*entry);
            }
            bucket_entries.clear();
        }
        match next {
            Some(entry) => bucket_entries.push(entry),
            None => break,
        }
    }
    out.finish()
}

/// Packs entries given in ascending order into a [`SortedBand`], building its directory as they
/// come.
struct PackedBuilder {
    /// The band so far: its directory covers the slots up to the last entry's.
    band: SortedBand,
    slots: usize,
}

impl PackedBuilder {
    /// For at most `capacity` entries (the directory's size follows it), whose members are at
    /// most `max_member`.
    fn new(capacity: usize, max_member: u32) -> PackedBuilder {
        // About four entries a slot: log2(len) - 2 bits, up to 24.
        let bits = match capacity {
            0..=7 => 0,
            n => (usize::BITS - 1 - n.leading_zeros() - 2).min(24),
        };
        let member_bits = (u32::BITS - max_member.leading_zeros()).max(1);
        let width = ((32 - bits + member_bits) as usize).div_ceil(8);
        let slots = 1usize << bits;
        PackedBuilder {
            band: SortedBand {
                packed: Vec::with_capacity(capacity * width + PAD),
                len: 0,
                width,
                member_bits,
                max_member,
                directory: Vec::with_capacity(slots + 1),
                bits,
            },
            slots,
        }
    }

    /// `entry` (`bucket << 32 | member`) is not below the last one pushed.
    fn push(&mut self, entry: u64) {
        let band = &mut self.band;
        let slot = SortedBand::slot(entry >> 32, band.bits) as usize;
        // Fewer entries than u32::MAX: a band holds one entry per answer at most.
        while band.directory.len() <= slot {
            band.directory.push(band.len as u32);
        }
        let value = ((entry >> 32) & SortedBand::low_mask(band.bits)) << band.member_bits
            | (entry & 0xffff_ffff);
        band.packed
            .extend_from_slice(&value.to_le_bytes()[..band.width]);
        band.len += 1;
    }

    fn finish(self) -> SortedBand {
        let mut band = self.band;
        while band.directory.len() <= self.slots {
            band.directory.push(band.len as u32);
        }
        band.packed.resize(band.len * band.width + PAD, 0);
        // Sized before pruning: a band whose buckets overflowed would keep the room.
        if band.packed.capacity() - band.packed.len() > band.packed.len() / 8 {
            band.packed.shrink_to_fit();
        }
        band
    }
}

/// A band's merged entries, ascending by (bucket, member), packed, with a directory by the
/// bucket's top bits: `directory[k]` is the first entry whose bucket starts with `k`. A plain
/// binary search over a band of 200,000 entries missed the cache at nearly every step, 64
/// searches an answer, and was over half of the diff module's time; buckets are hashes, so each
/// directory slot holds a few entries and a lookup touches two or three cache lines.
///
/// The index is the one structure of the diff module that grows with the whole history, so an
/// entry keeps only what the directory does not already say: the bucket's low `32 - bits` bits
/// and the member, in as few bytes as they need (five from about 10,000 to 4 million answers,
/// against eight for `bucket << 32 | member`). Within a slot the packed values sort as the
/// (bucket, member) pairs do, since they share the top bits.
#[derive(Debug, Default)]
struct SortedBand {
    /// `len` entries of `width` bytes each, little-endian, then [`PAD`] zero bytes so that
    /// every entry can be read with one 8-byte load.
    packed: Vec<u8>,
    len: usize,
    width: usize,
    member_bits: u32,
    /// The newest member held (the width of the next merge's entries follows it).
    max_member: u32,
    directory: Vec<u32>,
    /// How many top bits of a bucket the directory is indexed by.
    bits: u32,
}

/// Bytes after the last entry, for its 8-byte load.
const PAD: usize = 8;

impl SortedBand {
    /// `entries`: `bucket << 32 | member`, ascending.
    fn new(entries: &[u64]) -> SortedBand {
        let max_member = entries.iter().map(|e| *e as u32).max().unwrap_or(0);
        let mut builder = PackedBuilder::new(entries.len(), max_member);
        for entry in entries {
            builder.push(*entry);
        }
        builder.finish()
    }

    fn slot(bucket: u64, bits: u32) -> u64 {
        bucket >> (32 - bits)
    }

    fn low_mask(bits: u32) -> u64 {
        (1u64 << (32 - bits)) - 1
    }

    /// The packed value of entry `i` (in range).
    fn value(&self, i: usize) -> u64 {
        let at = i * self.width;
        let mut word = [0u8; 8];
        if let Some(bytes) = self.packed.get(at..at + 8) {
            word.copy_from_slice(bytes);
        }
        let value = u64::from_le_bytes(word);
        if self.width == 8 {
            value
        } else {
            value & ((1u64 << (self.width * 8)) - 1)
        }
    }

    fn member_mask(&self) -> u64 {
        // member_bits <= 32.
        (1u64 << self.member_bits) - 1
    }

    /// The member of entry `i`.
    fn member(&self, i: usize) -> u32 {
        (self.value(i) & self.member_mask()) as u32
    }

    /// Entry `i`, which lies in directory slot `slot`, as `bucket << 32 | member`.
    fn unpack(&self, slot: usize, i: usize) -> u64 {
        let value = self.value(i);
        let high = if self.bits == 0 {
            0
        } else {
            (slot as u64) << (32 - self.bits)
        };
        let bucket = high | value >> self.member_bits;
        bucket << 32 | (value & self.member_mask())
    }

    /// Entry `i` as `bucket << 32 | member`.
    #[cfg(test)]
    fn entry(&self, i: usize) -> u64 {
        let slot = self
            .directory
            .partition_point(|first| *first as usize <= i)
            .saturating_sub(1);
        self.unpack(slot, i)
    }

    /// Every entry as `bucket << 32 | member`, ascending.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let len = self.len;
        self.directory
            .windows(2)
            .enumerate()
            .flat_map(move |(slot, bounds)| {
                (bounds[0] as usize..(bounds[1] as usize).min(len))
                    .map(move |i| self.unpack(slot, i))
            })
    }

    /// Every entry as `bucket << 32 | member`, ascending.
    #[cfg(test)]
    fn entries(&self) -> Vec<u64> {
        self.iter().collect()
    }

    /// The entries of one bucket, as `bucket << 32 | member`, ascending.
    #[cfg(test)]
    fn bucket(&self, bucket: u32) -> Vec<u64> {
        let near = self.near(bucket);
        self.bucket_in(near, bucket)
            .map(|i| self.entry(i))
            .collect()
    }

    /// The index range of the entries in the bucket's directory slot (a few, around it).
    fn near(&self, bucket: u32) -> std::ops::Range<usize> {
        let slot = Self::slot(u64::from(bucket), self.bits) as usize;
        let (Some(&from), Some(&to)) = (self.directory.get(slot), self.directory.get(slot + 1))
        else {
            return 0..0;
        };
        let (from, to) = (from as usize, (to as usize).min(self.len));
        from..to.max(from)
    }

    /// The index range of the bucket's entries among `near`.
    fn bucket_in(&self, near: std::ops::Range<usize>, bucket: u32) -> std::ops::Range<usize> {
        let low = u64::from(bucket) & Self::low_mask(self.bits);
        let key = |i: usize| self.value(i) >> self.member_bits;
        let start = first_where(near.clone(), |i| key(i) >= low);
        let end = first_where(start..near.end, |i| key(i) > low);
        start..end
    }

    /// Heap bytes held.
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.packed.capacity() + 4 * self.directory.capacity()
    }
}

/// A band's entries since the last merge: per bucket a chain through `links`, newest first. Flat
/// arrays rather than a `Vec` per bucket: most buckets hold one member, and a vector each cost
/// several times the entry.
#[derive(Debug, Default)]
struct Fresh {
    /// Bucket -> index in `links` of its newest entry.
    heads: MixMap<u32, u32>,
    /// (member, index of the bucket's previous entry or [`NONE`]).
    links: Vec<(u32, u32)>,
}

impl Fresh {
    fn push(&mut self, bucket: u32, member: u32) {
        // Fewer than FRESH_AT * BANDS entries, far below u32::MAX.
        let at = self.links.len() as u32;
        let previous = self.heads.insert(bucket, at).unwrap_or(NONE);
        self.links.push((member, previous));
    }

    /// Where the bucket's chain starts ([`NONE`] for an empty bucket), for [`Fresh::latest_from`]:
    /// apart, so that a lookup can find the 32 bands' heads before it walks any chain.
    fn head(&self, bucket: u32) -> u32 {
        self.heads.get(&bucket).copied().unwrap_or(NONE)
    }

    /// The latest members (at most BUCKET_LIMIT) of the chain from `head`, ascending, written
    /// into `out`.
    fn latest_from<'o>(&self, head: u32, out: &'o mut [u32; BUCKET_LIMIT]) -> &'o [u32] {
        let mut n = 0;
        let mut at = head;
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

fn exact_key(digest: u128) -> u64 {
    (digest >> 64) as u64
}

/// The first index in `range` where `past` holds (`past` is false, then true, along it).
fn first_where(range: std::ops::Range<usize>, past: impl Fn(usize) -> bool) -> usize {
    let (mut low, mut high) = (range.start, range.end.max(range.start));
    while low < high {
        let mid = low + (high - low) / 2;
        if past(mid) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    low
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
}

/// An entry's seq, question tag and exact-text digest (`entry` is ENTRY_BYTES long).
fn decode_entry_head(entry: &[u8]) -> (u64, u64, u128) {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&entry[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&entry[16..32]);
    (word(0), word(8), u128::from_be_bytes(digest))
}

/// An entry's bucket in `band` (`entry` is ENTRY_BYTES long, `band` below BANDS).
fn entry_bucket(entry: &[u8], band: usize) -> u32 {
    let at = 32 + band * 4;
    u32::from_be_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// The first format: one list per (band, bucket) keeping its latest BUCKET_LIMIT members.
    #[derive(Default)]
    struct Reference {
        buckets: HashMap<(usize, u32), Vec<(u64, u64)>>,
    }

    impl Reference {
        fn candidates(&self, buckets: &Buckets, own: u64) -> Vec<(u64, usize)> {
            let mut votes = BTreeMap::new();
            for (band, bucket) in buckets.iter().enumerate() {
                for (seq, tag) in self.buckets.get(&(band, *bucket)).into_iter().flatten() {
                    if *tag != own {
                        *votes.entry(*seq).or_default() += 1;
                    }
                }
            }
            votes.into_iter().collect()
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

    /// A digest per seed, differing in its top 64 bits (the part the index keeps).
    fn digest(seed: u32) -> u128 {
        u128::from(seed) << 64 | u128::from(seed)
    }

    /// Texts whose digests share their top 64 bits are offered as exact candidates (the diff
    /// module compares the texts): the first such answer.
    #[test]
    fn digests_sharing_their_top_bits_name_the_first_answer() {
        let mut index = LshIndex::new();
        index.insert(10, 1, &[7; BANDS], 5 << 64 | 1).unwrap();
        index.insert(12, 2, &[8; BANDS], 5 << 64 | 2).unwrap();
        assert_eq!(index.exact(5 << 64 | 3), Some((10, 1)));
        assert_eq!(index.exact(6 << 64 | 1), None);
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
            fold_every in 1usize..300,
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
                index.insert(seq, *tag, &buckets, digest(*bucket_seed)).unwrap();
                reference.insert(seq, *tag, &buckets);
                if i % merge_every == 0 {
                    index.merge_fresh();
                }
                if i % fold_every == 0 {
                    index.merge_recent();
                }
                if i % cut_every == 0 {
                    chunks.extend(index.take_chunk());
                }
            }
            chunks.extend(index.take_chunk());
            let named: Vec<(String, &[u8])> =
                chunks.iter().enumerate().map(|(i, c)| (i.to_string(), c.as_slice())).collect();
            let reloaded = LshIndex::load(&named).unwrap();
            prop_assert_eq!(reloaded.len(), answers.len());
            for seed in 0..6u32 {
                prop_assert_eq!(reloaded.exact(digest(seed)), index.exact(digest(seed)));
                let first = answers.iter().position(|(s, _)| *s == seed);
                prop_assert_eq!(
                    index.exact(digest(seed)).map(|(seq, _)| seq),
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
            let band = SortedBand::new(&entries);
            for probe in buckets.iter().copied().chain([0, 1, u32::MAX]) {
                let expected: Vec<u64> =
                    entries.iter().copied().filter(|e| *e >> 32 == u64::from(probe)).collect();
                prop_assert_eq!(band.bucket(probe), expected);
            }
            prop_assert_eq!(band.entries(), entries);
        }
    }

    proptest! {
        /// Packing keeps every entry whatever the members' and buckets' widths (up to the
        /// full 32 bits of each).
        #[test]
        fn packed_entries_unpack_exactly(
            raw in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..2000),
            member_cap in prop_oneof![Just(1u32), Just(300), Just(70_000), Just(u32::MAX)],
        ) {
            let mut entries: Vec<u64> = raw
                .iter()
                .map(|(b, m)| u64::from(*b) << 32 | u64::from(m % member_cap))
                .collect();
            entries.sort_unstable();
            entries.dedup();
            let band = SortedBand::new(&entries);
            prop_assert_eq!(band.entries(), entries.clone());
            for (i, e) in entries.iter().enumerate() {
                prop_assert_eq!(band.entry(i), *e);
                prop_assert_eq!(u64::from(band.member(i)), *e & 0xffff_ffff);
            }
        }
    }

    /// At the full-history size an entry takes five bytes and the directory about one, against
    /// eight and one unpacked.
    #[test]
    fn a_band_of_200_000_answers_packs_into_five_bytes_an_entry() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut entries: Vec<u64> = (0..200_000u64)
            .map(|member| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) << 32 | member
            })
            .collect();
        entries.sort_unstable();
        let band = SortedBand::new(&entries);
        assert_eq!(band.width, 5);
        let per_entry = band.heap_bytes() as f64 / entries.len() as f64;
        assert!(per_entry < 6.0, "{per_entry} bytes an entry");
    }

    #[test]
    fn bad_chunks_are_named() {
        let err = LshIndex::load(&[("L7".to_string(), &[2u8, 2, 3][..])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("L7") && err.contains("whole number"), "{err}");
        let err = LshIndex::load(&[("L8".to_string(), &[9u8][..])])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown version 9"), "{err}");
    }
}
