//! Batched writes over a sled tree that later reads in the same batch already see.
//!
//! Consumers of the log (projections, the diff module) handle events one by one but commit in
//! batches: an event must see what the events before it in the same batch wrote, and the whole
//! batch, with its checkpoint, must land atomically (one `apply_batch`).

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Serialize};

/// A stored key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Writes not yet applied to the tree; `None` is a pending removal.
pub type Pending = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

pub struct Overlay<'a> {
    tree: &'a sled::Tree,
    pending: Pending,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("stored value under {key} does not decode: {why}")]
    Decode { key: String, why: String },
}

impl<'a> Overlay<'a> {
    pub fn new(tree: &'a sled::Tree) -> Overlay<'a> {
        Overlay::with_pending(tree, Pending::new())
    }

    /// An overlay that goes on from the writes an earlier one left pending (a batch analysed in
    /// several parts, committed once).
    pub fn with_pending(tree: &'a sled::Tree, pending: Pending) -> Overlay<'a> {
        Overlay { tree, pending }
    }

    /// The pending writes, to go on with in [`Overlay::with_pending`].
    pub fn into_pending(self) -> Pending {
        self.pending
    }

    /// The tree under the overlay (for reads that bypass the pending writes).
    pub fn tree(&self) -> &'a sled::Tree {
        self.tree
    }

    /// How many keys are waiting to be written or removed.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether anything is waiting to be written.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, OverlayError> {
        if let Some(v) = self.pending.get(key) {
            return Ok(v.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    pub fn get_json<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, OverlayError> {
        match self.get(key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| OverlayError::Decode {
                        key: String::from_utf8_lossy(key).into_owned(),
                        why: e.to_string(),
                    })
            }
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) {
        self.put(key, serde_json::to_vec(value).unwrap_or_default());
    }

    pub fn remove(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// Changes a value in place (an absent one starts empty); a value left empty is removed.
    /// For values many events of a batch add to, such as posting blocks: the value is read
    /// from the tree once per batch and edited without copying.
    pub fn modify(
        &mut self,
        key: Vec<u8>,
        change: impl FnOnce(&mut Vec<u8>) -> Result<(), OverlayError>,
    ) -> Result<(), OverlayError> {
        let slot = match self.pending.entry(key) {
            std::collections::btree_map::Entry::Occupied(slot) => slot.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let stored = self.tree.get(slot.key())?.map(|v| v.to_vec());
                slot.insert(stored)
            }
        };
        let mut value = slot.take().unwrap_or_default();
        let result = change(&mut value);
        *slot = (!value.is_empty()).then_some(value);
        result
    }

    /// The greatest live key in `[prefix, before)`, with its value.
    pub fn last_before(&self, prefix: &[u8], before: &[u8]) -> Result<Option<Entry>, OverlayError> {
        let mut upper = before.to_vec();
        loop {
            let committed = match self.tree.range(prefix.to_vec()..upper.clone()).next_back() {
                Some(entry) => {
                    let (k, v) = entry?;
                    Some((k.to_vec(), Some(v.to_vec())))
                }
                None => None,
            };
            let pending = self
                .pending
                .range(prefix.to_vec()..upper.clone())
                .next_back()
                .map(|(k, v)| (k.clone(), v.clone()));
            let candidate = match (committed, pending) {
                (Some(c), Some(p)) => Some(if p.0 >= c.0 { p } else { c }),
                (c, p) => c.or(p),
            };
            match candidate {
                None => return Ok(None),
                Some((key, value)) => {
                    // A committed key may have been removed in this batch.
                    let value = match self.pending.get(&key) {
                        Some(v) => v.clone(),
                        None => value,
                    };
                    match value {
                        Some(v) => return Ok(Some((key, v))),
                        None => upper = key,
                    }
                }
            }
        }
    }

    /// Whether a live key sorts after `after` under `prefix`.
    pub fn any_after(&self, prefix: &[u8], after: &[u8]) -> Result<bool, OverlayError> {
        let mut end = prefix.to_vec();
        end.push(0xff);
        let mut start = after.to_vec();
        start.push(0);
        if self
            .pending
            .range(start.clone()..end.clone())
            .any(|(_, v)| v.is_some())
        {
            return Ok(true);
        }
        for entry in self.tree.range(start..end) {
            let (k, _) = entry?;
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The batch to apply, with `extra` (the checkpoint) in the same atomic write.
    pub fn into_batch(self, extra: &[(&[u8], Vec<u8>)]) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        for (k, v) in extra {
            batch.insert(*k, v.clone());
        }
        batch
    }
}

/// A consumer's checkpoint (the last event it applied) stored under `key`; 0 when absent.
pub fn read_checkpoint(tree: &sled::Tree, key: &[u8]) -> Result<u64, sled::Error> {
    Ok(tree
        .get(key)?
        .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// A digest of every key and value of a tree, in order: two trees with the same digest hold the
/// same bytes.
pub fn tree_digest(tree: &sled::Tree) -> Result<String, sled::Error> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for entry in tree.iter() {
        let (k, v) = entry?;
        h.update((k.len() as u64).to_be_bytes());
        h.update(&k);
        h.update((v.len() as u64).to_be_bytes());
        h.update(&v);
    }
    Ok(crate::event::hex(&h.finalize()))
}
