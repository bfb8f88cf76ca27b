//! UNMAP: partial chunks are zeroed through the write path, whole chunks in batches (each gets
//! a tombstone, or in the flat layout loses its object: `chunk_map.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cache::{Bits, Entry, PAGE};
use super::{DELETE_BATCH, S3Volume, store_err};
use crate::storage::{StoreError, StoreResult};

impl S3Volume {
    // ---- unmap ----

    pub(super) async fn unmap_impl(&self, offset: u64, len: u64) -> StoreResult<()> {
        self.lease.check("UNMAP")?;
        let end = offset + len;
        let first_full = offset.div_ceil(self.chunk_size);
        let last_full = end / self.chunk_size; // exclusive
        // Partial chunks at either end: zeros through the write path.
        let head_end = (first_full * self.chunk_size).min(end);
        if head_end > offset && !crate::mutants::active(crate::mutants::Mutant::UnmapPartialStale) {
            self.write_impl(offset, Bytes::from(vec![0u8; (head_end - offset) as usize]), false).await?;
        }
        let tail_start = (last_full * self.chunk_size).max(head_end);
        if end > tail_start && last_full >= first_full {
            self.write_impl(tail_start, Bytes::from(vec![0u8; (end - tail_start) as usize]), false).await?;
        }
        if last_full <= first_full {
            return Ok(());
        }
        // Whole chunks: drop their cache entries; those that have (or may get, from a mutation
        // in flight) an object become zero entries, deleted in batches.
        let to_delete: Vec<u64> = {
            let now = self.clock.now();
            let mut cache = self.cache();
            let cached: Vec<u64> = cache.entries.range(first_full..last_full).map(|(c, _)| *c).collect();
            for c in cached {
                let e = cache.entries.remove(&c).expect("listed");
                cache.page_bytes -= (e.pages.len() * PAGE) as u64;
            }
            // Chunks with an object, a mutation in flight, or records in a log.
            let mut existing: BTreeSet<u64> = cache.exists.range(first_full..last_full).copied().collect();
            existing.extend(cache.inflight.range(first_full..last_full).copied());
            for info in cache.logs.values() {
                existing.extend(info.unsettled.range(first_full..last_full).copied());
            }
            let existing: Vec<u64> = existing.into_iter().collect();
            for &c in &existing {
                cache.tick += 1;
                let generation = cache.tick;
                let mut e = Entry::empty();
                e.valid = Bits::Full;
                e.unmerged = Bits::Full;
                // Not durable until deleted (or logged): a failed DELETE leaves it for the next
                // SYNCHRONIZE CACHE.
                e.unlogged = Bits::Full;
                e.generation = generation;
                e.unmerged_since = Some(now);
                e.unlogged_since = Some(now);
                e.last_used = generation;
                cache.entries.insert(c, e);
            }
            // Counted as a write: a SYNCHRONIZE CACHE after an UNMAP whose deletions failed
            // must make its zeros durable, not find every write durable already.
            if !existing.is_empty() {
                cache.writes += 1;
            }
            existing
        };
        self.released.notify_waiters();
        let batches: Vec<&[u64]> = to_delete.chunks(DELETE_BATCH).collect();
        let results = futures::future::join_all(batches.into_iter().map(|b| self.delete_batch(b))).await;
        results.into_iter().collect::<StoreResult<Vec<()>>>().map(|_| ())
    }

    /// Zeroes whole chunks in the store: one zero record in the log (when logs may hold older
    /// records for them), then a tombstone for each that has (or may have) an object.
    pub(super) async fn delete_batch(&self, chunks: &[u64]) -> StoreResult<()> {
        let _claim = self.claim(chunks).await;
        self.lease.check("UNMAP")?;
        // Only chunks still zero and unmerged (no write came in since) are deleted.
        let zeroed: Vec<(u64, u64)> = {
            let cache = self.cache();
            chunks
                .iter()
                .filter_map(|c| {
                    let e = cache.entries.get(c)?;
                    (e.pages.is_empty() && e.valid.is_full() && !e.is_clean()).then_some((*c, e.generation))
                })
                .collect()
        };
        if zeroed.is_empty() {
            return Ok(());
        }
        let _serial = self.log_lock.lock().await;
        let (settle_at, still_zero) = self.log_zeros(&zeroed).await?;
        let zeroed: Vec<(u64, u64)> = zeroed.into_iter().filter(|(c, _)| still_zero.contains(c)).collect();
        let present: Vec<u64> = {
            let cache = self.cache();
            zeroed.iter().map(|(c, _)| *c).filter(|c| cache.exists.contains(c)).collect()
        };
        let mut failed: BTreeMap<u64, StoreError> = BTreeMap::new();
        if !present.is_empty() {
            let results = self.zero_chunk_objects(&present).await.map_err(|e| store_err(e, true))?;
            for (c, r) in results {
                match r {
                    Ok(()) => {
                        self.stats.chunks_deleted.fetch_add(1, Ordering::Relaxed);
                        let mut cache = self.cache();
                        cache.exists.remove(&c);
                        cache.known.remove(&c);
                    }
                    Err(e) => {
                        failed.insert(c, store_err(e, true));
                    }
                }
            }
        }
        let mut cache = self.cache();
        for (c, generation) in zeroed {
            if !failed.contains_key(&c) {
                self.settle_merged(&mut cache, c, settle_at, generation);
            }
        }
        failed.into_values().next().map_or(Ok(()), Err)
    }
}
