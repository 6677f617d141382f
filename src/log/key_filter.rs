//! Which keys of the log's `Q` and `I` indexes may be present: a Bloom filter per index, which
//! the writer keeps once a process has looked up enough keys, so that an answer to a question
//! never seen before, or a flag never raised before, is known to be new without a read.
//!
//! In: index keys (without their prefix byte), as an append looks them up and as it writes them.
//! Out: "certainly not in the index" or "may be" (then the index is read, as without the filter).
//!
//! Why: every answer appended reads its question's index entry first, every other record (a
//! flag, an alert's delivery, a quarantined record) its identity's, and sled 0.34 makes each
//! read wait while any thread applies a batch (one process-wide lock). In a 200,000-answer
//! backfill the fetching thread waited about 3 s on the question reads, nearly all of them for
//! questions the log had never seen, while the views and the diff module applied theirs; the
//! identity reads of the diff module's 60,000 flags were a twentieth of its thread's time.
//!
//! A filter holds every key of its index: it is built from a scan of the index's keys under the
//! writer mutex, and every key an append writes is added before the append is applied, so an
//! append that then fails leaves only a false positive (a read). It lives as long as the open
//! log; a copy into the log drops it.

use xxhash_rust::xxh3::xxh3_128;

/// Lookups before the filter is built: an idle cycle or an append of a few answers reads the
/// index as before, and only a backfill pays for the scan (about 0.2 s at 200,000 questions). Small in unit tests, so that their appends go through the filter.
#[cfg(not(test))]
const BUILD_AFTER: u64 = 2_000;
#[cfg(test)]
const BUILD_AFTER: u64 = 3;
/// Bits a key, at least, when the filter is built: about 0.3% false positives with
/// [`PROBES`] probes. Once the keys added bring it under [`MIN_BITS_PER_KEY`], it is built
/// again, larger.
const BITS_PER_KEY: usize = 16;
const MIN_BITS_PER_KEY: usize = 10;
const PROBES: u32 = 6;
/// The smallest filter: 128 KiB, a backfill's first 65,536 keys.
const MIN_BITS: usize = 1 << 20;

#[derive(Debug, Default)]
pub(super) struct KeyFilter {
    lookups: u64,
    bloom: Option<Bloom>,
}

impl KeyFilter {
    /// Counts a lookup; true when the filter should be built ([`KeyFilter::start`]) before
    /// answering it.
    pub fn wants_build(&mut self) -> bool {
        self.lookups = self.lookups.saturating_add(1);
        self.bloom.is_none() && self.lookups >= BUILD_AFTER
    }

    /// Starts the filter for about `expected` keys; every key the index holds is then
    /// [`KeyFilter::add`]ed.
    pub fn start(&mut self, expected: usize) {
        self.bloom = Some(Bloom::for_keys(expected));
    }

    /// A key the index holds, while building.
    pub fn add(&mut self, key: &[u8]) {
        if let Some(bloom) = &mut self.bloom {
            bloom.insert(key);
        }
    }

    /// False when `key` is certainly not in the index; true when it may be (or no filter).
    pub fn may_hold(&self, key: &[u8]) -> bool {
        self.bloom.as_ref().is_none_or(|b| b.may_contain(key))
    }

    /// A key about to be written to the index.
    pub fn insert(&mut self, key: &[u8]) {
        let Some(bloom) = &mut self.bloom else {
            return;
        };
        bloom.insert(key);
        if bloom.items.saturating_mul(MIN_BITS_PER_KEY) > bloom.bits.len() * 64 {
            // Too full to be worth its probes: built again, larger, at the next lookup.
            self.bloom = None;
            self.lookups = BUILD_AFTER.saturating_sub(1);
        }
    }

    /// Forgets the filter (the index changed other than through appends).
    pub fn reset(&mut self) {
        *self = KeyFilter::default();
    }

    #[cfg(test)]
    pub fn is_built(&self) -> bool {
        self.bloom.is_some()
    }
}

#[derive(Debug)]
struct Bloom {
    /// A power of two of bits.
    bits: Vec<u64>,
    items: usize,
}

impl Bloom {
    fn for_keys(keys: usize) -> Bloom {
        let bits = keys
            .saturating_mul(BITS_PER_KEY)
            .max(MIN_BITS)
            .checked_next_power_of_two()
            .unwrap_or(MIN_BITS);
        Bloom {
            bits: vec![0; bits / 64],
            items: 0,
        }
    }

    /// The probe positions (double hashing over one 128-bit hash); they borrow nothing, so an
    /// insert sets them as it goes.
    fn probes(&self, key: &[u8]) -> impl Iterator<Item = usize> + use<> {
        let hash = xxh3_128(key);
        let (a, b) = (hash as u64, ((hash >> 64) as u64) | 1);
        let mask = (self.bits.len() * 64 - 1) as u64;
        (0..u64::from(PROBES)).map(move |i| (a.wrapping_add(i.wrapping_mul(b)) & mask) as usize)
    }

    fn insert(&mut self, key: &[u8]) {
        for bit in self.probes(key) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.items += 1;
    }

    fn may_contain(&self, key: &[u8]) -> bool {
        self.probes(key)
            .all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: usize) -> Vec<u8> {
        format!("api:{}", 3_000_000 + i).into_bytes()
    }

    #[test]
    fn no_question_indexed_is_ever_missed_and_few_others_are_read() {
        let mut filter = KeyFilter::default();
        assert!(
            filter.may_hold(b"anything"),
            "no filter: every question is read"
        );
        let indexed: Vec<Vec<u8>> = (0..50_000).map(key).collect();
        filter.start(indexed.len());
        indexed.iter().for_each(|k| filter.add(k));
        // Questions added later, enough to make it build itself again larger.
        let added: Vec<Vec<u8>> = (50_000..120_000).map(key).collect();
        let mut rebuilt = false;
        for k in &added {
            filter.insert(k);
            rebuilt |= !filter.is_built();
            if !filter.is_built() {
                assert!(filter.wants_build());
                filter.start(indexed.len() + added.len());
                indexed.iter().chain(&added).for_each(|k| filter.add(k));
            }
        }
        assert!(
            rebuilt,
            "120,000 questions are more than a filter of 2^20 bits holds"
        );
        for k in indexed.iter().chain(&added) {
            assert!(filter.may_hold(k), "{}", String::from_utf8_lossy(k));
        }
        let others = (200_000..300_000)
            .filter(|i| filter.may_hold(&key(*i)))
            .count();
        assert!(
            others < 1_000,
            "{others} of 100,000 unseen questions would be read"
        );
    }

    #[test]
    fn the_filter_is_built_only_after_enough_lookups() {
        let mut filter = KeyFilter::default();
        let wanted: Vec<bool> = (0..BUILD_AFTER).map(|_| filter.wants_build()).collect();
        assert_eq!(wanted.iter().filter(|w| **w).count(), 1);
        assert!(wanted[BUILD_AFTER as usize - 1]);
        filter.start(0);
        assert!(!filter.wants_build());
        assert!(!filter.may_hold(b"api:1"));
        filter.insert(b"api:1");
        assert!(filter.may_hold(b"api:1"));
        filter.reset();
        assert!(!filter.is_built());
    }
}
