//! How a snapshot takes what the cache holds without making writes wait for the store: under
//! the snapshot gate (writes wait) it takes the pages of every dirty chunk (shared: a change
//! copies the chunk's map of pages, a write the page it changes; the gate copies nothing),
//! numbers a version
//! for each and holds the versions their other blocks come from; then writes go on, and the
//! copies are written as those versions, each composed like a merge (the cached blocks over
//! the held base). A version numbered under the gate is older than any merge that follows, so
//! it never passes for newer data; were it the newest after a crash, it is a merge as of the
//! gate, and the logs newer than its stamp replay over it. Written with the chunk claimed, like
//! a merge; and if the chunk did not change meanwhile it is one: the chunk's data from then on,
//! its cache entry clean, so the next snapshot holds the same version.

use bytes::Bytes;

use super::S3Volume;
use super::cache::{Bits, Cache, Pages};
use super::chunk_map::Landed;
use super::{format, steps};
use crate::s3::{Condition, ObjectError};
use crate::storage::snapshots::SnapshotError;

/// A dirty chunk as the snapshot found it.
pub(super) struct Captured {
    pub(super) c: u64,
    /// What the cache held of the chunk (blocks outside `valid` are zeros there): its pages,
    /// shared with the cache until a write changes them.
    pub(super) pages: Pages,
    valid: Bits,
    /// Where the other blocks were: the chunk's object then (None: zeros), and whether it
    /// surely existed (one whose PUT may never have landed reads as zeros when missing).
    base: Option<String>,
    base_known: bool,
    /// The version it becomes, numbered under the gate, and the log sequence it includes.
    pub(super) version: u64,
    stamp: u64,
    /// The cache entry's generation when captured.
    generation: u64,
}

impl S3Volume {
    /// Copies every dirty chunk out of the cache (the caller holds the snapshot gate and the
    /// cache lock), numbering its version. From now on each may have an object (its version
    /// may land): a chunk zeroed later is deleted or gets a tombstone, never forgotten.
    pub(super) fn capture_dirty(&self, cache: &mut Cache) -> Vec<Captured> {
        let stamp = self.current_seq();
        let captured: Vec<Captured> = cache
            .entries
            .iter()
            .filter(|(_, e)| !e.is_clean())
            .map(|(&c, e)| {
                let (_, version) = self.new_chunk_key(c);
                Captured {
                    c,
                    pages: e.pages.clone(),
                    valid: e.valid.clone(),
                    base: cache.exists.contains(&c).then(|| self.chunk_key_now(cache, c)).flatten(),
                    base_known: cache.known.contains(&c),
                    version: version.expect("snapshots are of the versioned layout"),
                    stamp,
                    generation: e.generation,
                }
            })
            .collect();
        cache.exists.extend(captured.iter().map(|k| k.c));
        captured
    }

    /// Writes a captured chunk as its version; None if it holds only zeros (no object). Its
    /// composition (4 MiB of copies and checksums) is done in steps (`steps.rs`): the snapshot
    /// writes every dirty chunk while writes go on, and a task that kept a worker for a whole
    /// chunk stalled the commands queued behind it (up to 90 ms in `cargo xtask bench s3
    /// --snapshot`).
    pub(super) async fn write_captured(&self, k: &Captured) -> Result<Option<u64>, SnapshotError> {
        let failed = |why: String| SnapshotError::Failed(format!("chunk {} of {}: {why}", k.c, self.url));
        let _claim = self.claim(&[k.c]).await;
        // A version of data no log holds: named in a log first (`log.rs`).
        self.name_in_log(k.c).await.map_err(|e| failed(e.to_string()))?;
        let len = self.chunk_len(k.c) as usize;
        let bs = self.block_size as usize;
        let n = len / bs;
        let mut full = steps::compose(&k.pages, len).await;
        if k.valid.count(n) < n
            && let Some(key) = &k.base
        {
            match self.store.get(key, None).await {
                Ok(got) => {
                    format::verify_segments(&got, len as u64, 0..len as u64, self.segment).map_err(failed)?;
                    tokio::task::yield_now().await;
                    steps::fill(&mut full, &got.body, bs, |b| k.valid.get(b)).await;
                }
                Err(ObjectError::NotFound) if !k.base_known => {}
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        if steps::is_zero(&full).await {
            return Ok(None);
        }
        let metadata = steps::chunk_metadata(&full, self.segment, k.stamp).await;
        let key = format::chunk_version_key(&self.url, k.c, k.version);
        self.store.put(&key, Bytes::from(full), metadata, Condition::None).await.map_err(|e| failed(e.to_string()))?;
        let mut cache = self.cache();
        // Nothing newer landed, nothing changed in the cache: it is a merge of the chunk.
        let newest = cache.live.get(&k.c).is_none_or(|&live| live < k.version);
        if newest && cache.entries.get(&k.c).is_none_or(|e| e.generation == k.generation) {
            cache.known.insert(k.c);
            self.note_chunk_put(&mut cache, k.c, Some(k.version), Landed::Yes);
            self.settle_merged(&mut cache, k.c, k.stamp, k.generation);
        }
        Ok(Some(k.version))
    }
}
