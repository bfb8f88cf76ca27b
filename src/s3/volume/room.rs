//! Room in the cache for writes. A write that finds the cache full of dirty data waits its
//! turn: writes that wait are served in the order they came, and one that arrives while others
//! wait queues behind them instead of taking the room their merges made. The first in line
//! keeps a few merges running (of the chunks that free the most pages) and takes the room they
//! free; merges run on tasks of their own, so the link stays busy between one write's room
//! and the next. Without the order, a writer passed over again and again waited out its
//! deadline while the store was merely slow.

use std::sync::atomic::Ordering;

use super::cache::{Cache, PAGE};
use super::patience::Deadline;
use super::{MERGE_PARALLEL, S3Volume, Waiting};
use crate::storage::StoreResult;

impl S3Volume {
    /// Puts a write into the cache once it fits under the limit: evicts clean entries, merges
    /// dirty chunks under pressure. The check and the copy happen under one lock, so concurrent
    /// writes cannot overshoot together. (A write bigger than the whole cache goes in once the
    /// cache is empty.) While the store is away, the write waits for room until its deadline.
    pub(super) async fn write_within_limit(&self, offset: u64, data: &[u8], deadline: Deadline) -> StoreResult<()> {
        self.within_limit(offset, data.len() as u64, Some(data), deadline).await
    }

    /// Waits, as a write would, until `len` bytes at `offset` fit, without taking the room: an
    /// atomic write makes its room before it claims its chunks (room merges may need them).
    pub(super) async fn wait_for_room(&self, offset: u64, len: u64, deadline: Deadline) -> StoreResult<()> {
        self.within_limit(offset, len, None, deadline).await
    }

    async fn within_limit(&self, offset: u64, len: u64, data: Option<&[u8]>, deadline: Deadline) -> StoreResult<()> {
        // Pages the write may allocate: every page it touches, in every chunk it spans.
        let pieces = (offset + len).div_ceil(self.chunk_size) - offset / self.chunk_size;
        let need = len.div_ceil(PAGE as u64) * PAGE as u64 + pieces * PAGE as u64;
        // The common case: room at once, and nobody waiting for it before this write.
        if (self.planted.writes_barge.load(Ordering::Relaxed) || self.room_waiters.load(Ordering::SeqCst) == 0)
            && self.copy_if_room(&mut self.cache(), need, offset, data)
        {
            return Ok(());
        }
        let _waiting = Waiting::count(&self.room_waiters);
        self.patiently_by("a write waiting for room in the cache", deadline, || async {
            let _turn = self.room_turn.lock().await;
            self.make_room_and_write(need, offset, data).await
        })
        .await
    }

    /// Copies the write in (if any) if `need` bytes of pages fit (after evicting clean
    /// entries).
    pub(super) fn copy_if_room(&self, cache: &mut Cache, need: u64, offset: u64, data: Option<&[u8]>) -> bool {
        if cache.page_bytes + need > self.cache_limit {
            self.evict_clean(cache, need);
        }
        if cache.page_bytes + need <= self.cache_limit || cache.page_bytes == 0 {
            if let Some(data) = data {
                self.copy_write(cache, offset, data);
            }
            return true;
        }
        false
    }

    /// First in line: keeps merges running until the write fits, then copies it in. A merge
    /// that failed ends the attempt with its error (the caller pauses or gives up as the
    /// error deserves).
    async fn make_room_and_write(&self, need: u64, offset: u64, data: Option<&[u8]>) -> StoreResult<()> {
        loop {
            let released = self.released.notified();
            if let Some(e) = self.room_error.lock().expect("poisoned").take() {
                return Err(e);
            }
            {
                let mut cache = self.cache();
                if self.copy_if_room(&mut cache, need, offset, data) {
                    return Ok(());
                }
                self.start_room_merges(&mut cache);
            }
            // A merge ending (its claim released) may have made room.
            released.await;
        }
    }

    /// Starts merges, up to [`MERGE_PARALLEL`] at once, of the dirty chunks whose merge frees
    /// the most pages (a merge costs a chunk's PUT however few blocks are dirty).
    fn start_room_merges(&self, cache: &mut Cache) {
        let free_slots = MERGE_PARALLEL.saturating_sub(cache.merging_for_room.len());
        if free_slots == 0 {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        let mut candidates: Vec<(std::cmp::Reverse<usize>, u64)> = cache
            .entries
            .iter()
            .filter(|(c, e)| {
                !e.is_clean()
                    && !e.pages.is_empty()
                    && !cache.inflight.contains(c)
                    && !cache.merging_for_room.contains(c)
            })
            .map(|(c, e)| (std::cmp::Reverse(e.pages.len()), *c))
            .collect();
        if candidates.len() > free_slots {
            candidates.select_nth_unstable(free_slots - 1);
            candidates.truncate(free_slots);
        }
        for (_, c) in candidates {
            cache.merging_for_room.insert(c);
            let me = me.clone();
            tokio::spawn(async move {
                let result = me.merge_chunk(c).await;
                me.cache().merging_for_room.remove(&c);
                match result {
                    Ok(()) => me.note_reachable(),
                    Err(e) => {
                        me.note_background_error(&e);
                        me.room_error.lock().expect("poisoned").get_or_insert(e);
                    }
                }
                me.released.notify_waiters();
            });
        }
    }
}
