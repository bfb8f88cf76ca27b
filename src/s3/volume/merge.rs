//! Merging: a chunk object is rewritten with everything the cache holds for it (or deleted
//! when it is all zeros), with the chunk claimed.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cache::{Bits, Cache, PAGE};
use super::chunk_map::Landed;
use super::log::needs_naming;
use super::{MERGE_PARALLEL, S3Volume, store_err};
use super::{disk_cache, steps};
use crate::s3::{Condition, ObjectError};
use crate::storage::{StoreError, StoreResult, is_zero};

/// What a merge is for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Merge {
    /// Make the cache's data durable in the chunk's object, stamped with the newest sequence
    /// number.
    Normal,
    /// Replay after a crash, midway: the chunk holds every record of the logs up to `stamp`;
    /// a chunk found zero is not deleted yet (see `recovery.rs`).
    Replaying { stamp: u64 },
}

/// How one merge attempt ended.
enum Merged {
    Done,
    /// The chunk was found zero but written since: merge it again.
    Superseded,
}

impl S3Volume {
    // ---- merging ----

    /// Rewrites chunk `c` with everything the cache holds for it: one PUT of the whole chunk,
    /// or a DELETE if it is all zeros (after a zero record in the log, when logs may still
    /// hold older records for it).
    pub(super) async fn merge_chunk(&self, c: u64) -> StoreResult<()> {
        self.merge_chunk_as(c, Merge::Normal).await
    }

    /// [`S3Volume::merge_chunk`] as `how` says. On return what the cache held of the chunk when
    /// it was called is in the chunk's object (or the chunk is deleted, or, replaying, kept as
    /// zeros): a merge that found the chunk zero but written since starts over.
    pub(super) async fn merge_chunk_as(&self, c: u64, how: Merge) -> StoreResult<()> {
        loop {
            match self.merge_once(c, how).await? {
                Merged::Done => return Ok(()),
                Merged::Superseded => continue,
            }
        }
    }

    /// One attempt of [`S3Volume::merge_chunk_as`].
    async fn merge_once(&self, c: u64, how: Merge) -> StoreResult<Merged> {
        let stamp = match how {
            Merge::Normal => None,
            Merge::Replaying { stamp } => Some(stamp),
        };
        // Every merge holds two chunk buffers: a bounded number at once.
        let _slot = self.merge_slots.acquire().await.expect("never closed");
        let _claim = self.claim(&[c]).await;
        self.lease.check("a merge")?;
        let started = self.clock.now();
        let chunk_len = self.chunk_len(c) as usize;
        let n = (chunk_len as u64 / self.block_size) as usize;
        // A version of data no log holds is named in a log first (`log.rs`), before the
        // snapshot, so that the merge's stamp settles that log; the object a partial chunk is
        // filled from is read meanwhile (the claim keeps it as it is). Most chunks were named
        // ahead, by the log of an earlier merge.
        let (mut early_old, mut _early_buffer) = (None, None);
        if matches!(how, Merge::Normal) && needs_naming(&self.cache(), c) {
            let needs_old = {
                let cache = self.cache();
                cache.exists.contains(&c)
                    && cache.entries.get(&c).is_some_and(|e| !e.is_clean() && e.valid.count(n) < n)
            };
            _early_buffer = needs_old.then(|| self.buffers(chunk_len as u64));
            let fetch_old = async {
                match needs_old {
                    true => Some(self.fetch(c, 0, chunk_len as u64).await),
                    false => None,
                }
            };
            let (named, old) = tokio::join!(self.name_in_log(c), fetch_old);
            named.map_err(|e| self.flush_failed(c, e))?;
            early_old = old;
        }
        // The entry's pages are shared copy-on-write: taken under the lock without a copy,
        // composed outside it, in steps (`steps.rs`).
        let snapshot = {
            let cache = self.cache();
            match cache.entries.get(&c) {
                Some(e) if !e.is_clean() => {
                    let stamp = stamp.unwrap_or_else(|| self.current_seq());
                    Some((e.generation, e.pages.clone(), e.valid.clone(), cache.exists.contains(&c), stamp))
                }
                _ => None,
            }
        };
        let Some((generation, pages, valid, exists, stamp)) = snapshot else { return Ok(Merged::Done) };
        let _buffers = self.buffers(2 * chunk_len as u64);
        let mut full = steps::compose(&pages, chunk_len).await;
        drop(pages);
        // Blocks the cache does not hold come from the object (or are zeros).
        if valid.count(n) < n {
            let fetched = match early_old.take() {
                Some(fetched) => Some(fetched),
                None if exists => Some(self.fetch(c, 0, chunk_len as u64).await),
                None => None,
            };
            let old = match fetched {
                None => None,
                Some(Ok(old)) => Some(old),
                // Only maybe there (a PUT that never landed): zeros.
                Some(Err(ObjectError::NotFound)) if !self.cache().known.contains(&c) => None,
                Some(Err(e)) => return Err(self.flush_failed(c, store_err(e, true))),
            };
            if let Some(old) = old {
                steps::fill(&mut full, &old, self.block_size as usize, |b| valid.get(b)).await;
            }
            let blocks_per_step = steps::STEP / self.block_size as usize;
            for first in (0..n).step_by(blocks_per_step) {
                if first > 0 {
                    tokio::task::yield_now().await;
                }
                self.install_blocks(c, &full, first..(first + blocks_per_step).min(n));
            }
        }
        let zero = steps::is_zero(&full).await;
        if zero && matches!(how, Merge::Replaying { .. }) {
            // Older logs may still hold data for it, and no zero record can be numbered
            // between them: keep it as zeros (no pages) until every log is applied.
            self.drop_zero_pages(c);
            return Ok(Merged::Done);
        }
        // A zero chunk has no data object to carry a stamp (a tombstone carries none): a zero
        // record in the log keeps older records from resurrecting its data after a crash. The
        // log lock is held until its tombstone landed, so no log with older records can appear
        // behind it.
        let serial = if zero { Some(self.log_lock.lock().await) } else { None };
        let mut settle_at = stamp;
        let result = if zero {
            let (seq, still_zero) = self.log_zeros(&[(c, generation)]).await.map_err(|e| self.flush_failed(c, e))?;
            if still_zero.is_empty() {
                // Written meanwhile (and maybe logged): no zero record may come after that.
                return Ok(Merged::Superseded);
            }
            settle_at = seq;
            if exists { self.zero_chunk_objects(&[c]).await.and_then(first_error).map(|()| None) } else { Ok(None) }
        } else {
            let metadata = steps::chunk_metadata(&full, self.segment, stamp).await;
            // From now on the object may exist, even if this merge is cancelled mid-PUT.
            self.cache().exists.insert(c);
            let (key, version) = self.new_chunk_key(c);
            let put = self.store.put(&key, Bytes::from(full), metadata, Condition::None);
            // A merge cancelled mid-PUT leaves a version that may be there.
            let maybe = MaybeVersion { volume: self, c, version };
            let result = put.await;
            maybe.ended(&result);
            result
        };
        drop(serial);
        self.record_flush_latency(started);
        self.stats.merges.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(etag) => {
                let mut cache = self.cache();
                if zero {
                    cache.known.remove(&c);
                    if cache.exists.remove(&c) {
                        self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    cache.exists.insert(c);
                    cache.known.insert(c);
                    // (The version was noted by `MaybeVersion`.)
                    if let Some(etag) = etag {
                        cache.versions.insert(c, disk_cache::version_of(&etag));
                    }
                }
                self.settle_merged(&mut cache, c, settle_at, generation);
                Ok(Merged::Done)
            }
            Err(e) => {
                if matches!(e, ObjectError::Indeterminate(_)) {
                    self.cache().exists.insert(c); // the PUT (or a failed DELETE) may have landed
                }
                Err(self.flush_failed(c, store_err(e, true)))
            }
        }
    }

    /// Fills the blocks `blocks` of an entry that it does not hold with a composed chunk (what
    /// the object holds there), so that a later merge needs no fetch, if the cache has room for
    /// them. Zeros need no room. Either way reads stay right while the replacement is in flight:
    /// the blocks not in the cache are the same in the old object and the new.
    fn install_blocks(&self, c: u64, full: &[u8], blocks: std::ops::Range<usize>) {
        let mut cache = self.cache();
        let bs = self.block_size as usize;
        let zero = is_zero(&full[blocks.start * bs..blocks.end * bs]);
        let Some(e) = cache.entries.get(&c) else { return };
        let missing: Vec<usize> = blocks.clone().filter(|&b| !e.valid.get(b)).collect();
        let need = (missing.len() * bs).div_ceil(PAGE) as u64 * PAGE as u64 + PAGE as u64;
        if !zero && cache.page_bytes.saturating_add(need) > self.cache_limit {
            self.evict_clean(&mut cache, need);
            if cache.page_bytes.saturating_add(need) > self.cache_limit {
                return;
            }
        }
        let e = cache.entries.get_mut(&c).expect("present");
        let mut allocated = 0;
        for b in missing {
            allocated += e.copy_in(b * bs, &full[b * bs..(b + 1) * bs]);
        }
        let n = full.len() / bs;
        e.valid.set_range(blocks.start, blocks.end, n);
        cache.page_bytes += (allocated * PAGE) as u64;
        self.note_cache(&cache);
    }

    /// Frees the pages of a chunk entry that hold only zeros (zeros need none).
    fn drop_zero_pages(&self, c: u64) {
        let mut cache = self.cache();
        let Some(e) = cache.entries.get_mut(&c) else { return };
        let before = e.pages.len();
        if e.pages.values().any(|p| is_zero(&p[..])) {
            std::sync::Arc::make_mut(&mut e.pages).retain(|_, p| !is_zero(&p[..]));
        }
        let freed = (before - e.pages.len()) * PAGE;
        cache.page_bytes -= freed as u64;
    }

    pub(super) fn mark_merged(&self, cache: &mut Cache, c: u64, generation: u64) {
        if let Some(e) = cache.entries.get_mut(&c)
            && e.generation == generation
        {
            e.unmerged = Bits::Empty;
            e.unlogged = Bits::Empty;
            e.unmerged_since = None;
            e.unlogged_since = None;
            if e.pages.is_empty() {
                cache.entries.remove(&c); // a zero chunk needs no entry
            }
        }
    }

    pub(super) fn flush_failed(&self, c: u64, e: StoreError) -> StoreError {
        self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(volume = %self.url, chunk = c, error = %e, "flush failed; the data stays in the cache");
        e
    }

    /// Keeps a background failure for the next SYNCHRONIZE CACHE to report. Transient ones
    /// (the store unreachable, the lease not renewed) are not kept: the data stays in the cache
    /// and that SYNCHRONIZE CACHE retries it itself.
    pub(super) fn note_background_error(&self, e: &StoreError) {
        if matches!(e, StoreError::Transient(_) | StoreError::NotReady(_)) {
            return;
        }
        self.sticky_error.lock().expect("poisoned").get_or_insert_with(|| e.to_string());
    }

    pub(super) async fn merge_chunks(&self, chunks: &[u64]) -> StoreResult<()> {
        let mut first_error = None;
        for group in chunks.chunks(MERGE_PARALLEL) {
            let results = futures::future::join_all(group.iter().map(|&c| self.merge_chunk(c))).await;
            for r in results {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The first failure of a deletion of chunk objects.
fn first_error(results: Vec<(u64, Result<(), ObjectError>)>) -> Result<(), ObjectError> {
    results.into_iter().try_for_each(|(_, r)| r)
}

/// A chunk version being PUT: noted in the chunk map when the PUT ends, or as one that may
/// be there if the merge is dropped first.
struct MaybeVersion<'a> {
    volume: &'a S3Volume,
    c: u64,
    version: Option<u64>,
}

impl MaybeVersion<'_> {
    fn ended(mut self, result: &Result<Option<String>, ObjectError>) {
        // Any failure may hide an attempt that landed (a retried PUT): the version is noted
        // as one that may be there, so that nothing ever forgets to delete it.
        let landed = if result.is_ok() { Landed::Yes } else { Landed::Maybe };
        self.volume.note_chunk_put(&mut self.volume.cache(), self.c, self.version, landed);
        self.version = None;
    }
}

impl Drop for MaybeVersion<'_> {
    fn drop(&mut self) {
        if self.version.is_some() {
            self.volume.note_chunk_put(&mut self.volume.cache(), self.c, self.version, Landed::Maybe);
        }
    }
}
