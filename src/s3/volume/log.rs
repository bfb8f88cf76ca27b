//! The log: unlogged blocks become durable in log objects, written one at a time in
//! sequence order; the oldest logs whose chunks are all settled are deleted together (the
//! settled floor raised first, so what is left of them after a crash is never replayed).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::cache::{Bits, Cache, LogInfo};
use super::format::{self, LogBuilder, Record};
use super::{LOG_BYTES_MAX, S3Volume, store_err};
use crate::s3::{Condition, ObjectError};
use crate::storage::StoreResult;

/// The background deletes settled logs at most this often (each deletion PUTs the metadata)...
pub(super) const LOG_DELETE_INTERVAL: Duration = Duration::from_secs(5);
/// ... unless this many settled logs wait.
pub(super) const LOG_DELETE_BACKLOG: usize = 64;

/// Dirty chunks not being merged that a naming log names along with those being merged (the
/// ones likely merged next, most pages first), so that their merges find them named and do
/// not wait for a log of their own.
const NAMED_AHEAD: usize = 2 * super::MERGE_PARALLEL;

/// Whether chunk `c` holds data no log in the object store holds, and no such log names it.
pub(super) fn needs_naming(cache: &Cache, c: u64) -> bool {
    cache.entries.get(&c).is_some_and(|e| !e.unlogged.is_empty())
        && !cache.logs.values().any(|l| l.landed && l.unsettled.contains(&c))
}

/// The chunks a naming log names: those being merged that need it, if any, and up to
/// [`NAMED_AHEAD`] other dirty chunks that need it.
fn to_name(cache: &Cache) -> BTreeSet<u64> {
    let mut named: BTreeSet<u64> = cache.inflight.iter().copied().filter(|&c| needs_naming(cache, c)).collect();
    if named.is_empty() {
        return named;
    }
    // (`needs_naming` for every entry, with the logs' chunks gathered once.)
    let named_by_logs: BTreeSet<u64> =
        cache.logs.values().filter(|l| l.landed).flat_map(|l| l.unsettled.iter().copied()).collect();
    let mut ahead: Vec<(std::cmp::Reverse<usize>, u64)> = cache
        .entries
        .iter()
        .filter(|(c, e)| !e.unlogged.is_empty() && !named.contains(c) && !named_by_logs.contains(c))
        .map(|(c, e)| (std::cmp::Reverse(e.pages.len()), *c))
        .collect();
    ahead.sort_unstable();
    named.extend(ahead.into_iter().take(NAMED_AHEAD).map(|(_, c)| c));
    named
}

/// Where a new log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LogHome {
    /// The object store: durable there once written.
    Store,
    /// The local journal (`durability = "local"`): uploaded later.
    Journal,
}

impl S3Volume {
    // ---- logging ----

    /// Makes every unlogged block durable (see [`S3Volume::make_chunks_durable`]).
    pub(super) async fn log_unlogged(&self) -> StoreResult<()> {
        let chunks: Vec<u64> =
            self.cache().entries.iter().filter(|(_, e)| !e.unlogged.is_empty()).map(|(c, _)| *c).collect();
        self.make_chunks_durable(&chunks).await
    }

    /// Makes the unlogged blocks of `chunks` durable in the object store: chunks mostly
    /// unlogged are merged (a whole-chunk PUT costs no more than logging them, and sending
    /// them to a log first would upload them twice), the rest go into log objects.
    pub(super) async fn make_chunks_durable(&self, chunks: &[u64]) -> StoreResult<()> {
        let n = self.blocks_per_chunk();
        let (to_merge, to_log): (Vec<u64>, Vec<u64>) = {
            let cache = self.cache();
            chunks.iter().copied().partition(|c| cache.entries.get(c).is_some_and(|e| 2 * e.unlogged.count(n) >= n))
        };
        let (merged, logged) = tokio::join!(self.merge_chunks(&to_merge), self.log_chunks(&to_log));
        merged.and(logged)
    }

    /// Writes the unlogged blocks of `chunks` into log objects, one at a time.
    pub(super) async fn log_chunks(&self, chunks: &[u64]) -> StoreResult<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        let _serial = self.log_lock.lock().await;
        self.lease.check("a log write")?;
        let mut rest = chunks;
        while !rest.is_empty() {
            let Some((seq, body, covered, taken)) = self.next_log(rest, LogHome::Store) else { break };
            rest = &rest[taken..];
            let _buffer = self.buffers(body.len() as u64);
            let mut unfinished = Unfinished { volume: self, seqs: vec![seq] };
            let written = self.append_log(seq, body).await;
            unfinished.done(seq);
            written?;
            self.mark_logged(&mut self.cache(), &covered);
        }
        Ok(())
    }

    /// Before a version of chunk `c` holding data no log holds (writes not synced yet) is
    /// sent: a log naming the chunk (with one of those blocks), unless a log in the object
    /// store names it already. Should the holder die with that PUT on its way, the recovery
    /// that follows finds the chunk named and writes it again, so that the PUT, landing late,
    /// lands behind (the tombstone rule); without the log no one would know to. One log names
    /// every chunk being merged that needs it, and the dirty chunks likely merged next, so
    /// that merges waiting for the log lock, or starting soon, find theirs named.
    pub(super) async fn name_in_log(&self, c: u64) -> StoreResult<()> {
        if !needs_naming(&self.cache(), c) || crate::mutants::active(crate::mutants::Mutant::MergeUnnamed) {
            return Ok(());
        }
        let _serial = self.log_lock.lock().await;
        self.lease.check("a log write")?;
        let Some((seq, body)) = self.next_naming_log() else { return Ok(()) };
        let _buffer = self.buffers(body.len() as u64);
        let mut unfinished = Unfinished { volume: self, seqs: vec![seq] };
        let written = self.append_log(seq, body).await;
        unfinished.done(seq);
        written
    }

    /// Snapshots a log holding the first unlogged block of every chunk [`to_name`] names,
    /// registered as pending: its sequence number and body. None if no chunk being changed in
    /// the store (claimed) needs naming.
    fn next_naming_log(&self) -> Option<(u64, Bytes)> {
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        let mut cache = self.cache();
        let named = to_name(&cache);
        if named.is_empty() {
            return None;
        }
        let mut log = LogBuilder::new();
        for &c in &named {
            let e = &cache.entries[&c];
            let (first, _) = e.unlogged.runs(n)[0];
            let from = first as u64 * bs;
            let offset = c * self.chunk_size + from;
            if e.is_zero(from as usize, bs as usize) {
                log.zero(offset, bs);
            } else {
                e.copy_out(from as usize, log.data(offset, bs as usize));
            }
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        cache.logs.insert(seq, LogInfo::for_store(named));
        drop(cache);
        Some((seq, log.finish(seq)))
    }

    /// Clears the unlogged blocks of the chunks a log covered, unless written since.
    pub(super) fn mark_logged(&self, cache: &mut Cache, covered: &[(u64, u64)]) {
        for &(c, generation) in covered {
            if let Some(e) = cache.entries.get_mut(&c)
                && e.generation == generation
            {
                e.unlogged = Bits::Empty;
                e.unlogged_since = None;
            }
        }
    }

    /// Snapshots the next log of at most [`LOG_BYTES_MAX`] of data from the front of `chunks`
    /// and registers it as pending in `home`: its sequence number, body, the chunks it covers (with
    /// their generations) and how many of `chunks` it consumed. None if nothing is unlogged.
    ///
    /// The sequence number is taken in the same critical section as the data: a merge that
    /// snapshots later stamps its chunk with at least this number, one that snapshotted
    /// earlier with less.
    #[allow(clippy::type_complexity)]
    pub(super) fn next_log(&self, chunks: &[u64], home: LogHome) -> Option<(u64, Bytes, Vec<(u64, u64)>, usize)> {
        let bs = self.block_size;
        let n = self.blocks_per_chunk();
        let mut cache = self.cache();
        let mut log = LogBuilder::new();
        let mut covered = Vec::new();
        let mut taken = 0;
        for &c in chunks {
            if log.len() >= LOG_BYTES_MAX {
                break;
            }
            taken += 1;
            let Some(e) = cache.entries.get(&c) else { continue };
            if e.unlogged.is_empty() {
                continue;
            }
            for (b0, b1) in e.unlogged.runs(n) {
                let (from, to) = (b0 as u64 * bs, b1 as u64 * bs);
                let offset = c * self.chunk_size + from;
                if e.is_zero(from as usize, (to - from) as usize) {
                    log.zero(offset, to - from);
                } else {
                    e.copy_out(from as usize, log.data(offset, (to - from) as usize));
                }
            }
            covered.push((c, e.generation));
        }
        if covered.is_empty() {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        let unsettled = covered.iter().map(|(c, _)| *c).collect();
        let info = match home {
            LogHome::Store => LogInfo::for_store(unsettled),
            LogHome::Journal => LogInfo::for_journal(unsettled),
        };
        cache.logs.insert(seq, info);
        // Its checksum outside the lock: writes wait for the cache while it is held.
        drop(cache);
        Some((seq, log.finish(seq), covered, taken))
    }

    /// Writes one log object registered as pending. The caller holds `log_lock`.
    pub(super) async fn append_log(&self, seq: u64, body: Bytes) -> StoreResult<()> {
        let len = body.len() as u64;
        let started = self.clock.now();
        let metadata = format::log_metadata(&body);
        let result = self.store.put(&format::log_key(&self.url, seq), body, metadata, Condition::None).await;
        self.record_flush_latency(started);
        let mut cache = self.cache();
        match result {
            Ok(_) => {
                self.stats.logs_written.fetch_add(1, Ordering::Relaxed);
                self.stats.log_bytes.fetch_add(len, Ordering::Relaxed);
                if let Some(info) = cache.logs.get_mut(&seq) {
                    info.pending = false;
                    info.bytes = len;
                    info.landed = true;
                }
                Ok(())
            }
            Err(e) => {
                match &e {
                    // It may exist: keep tracking it so that it is deleted.
                    ObjectError::Indeterminate(_) => {
                        if let Some(info) = cache.logs.get_mut(&seq) {
                            info.pending = false;
                            info.bytes = len;
                        }
                    }
                    _ => {
                        cache.logs.remove(&seq);
                    }
                }
                self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                Err(store_err(e, true))
            }
        }
    }

    /// Writes a zero record for chunks about to be deleted, when logs may hold older records
    /// for them (which must not resurrect their data after a crash). The caller holds
    /// `log_lock`, and keeps holding it until the deletes are done.
    ///
    /// `chunks` are (chunk, generation of the snapshot found zero). A chunk written since is
    /// left out: a log of that write may already exist, and a zero record numbered after it
    /// would erase it at replay. Returns the sequence number that settles the chunks, and the
    /// chunks still zero (to delete).
    pub(super) async fn log_zeros(&self, chunks: &[(u64, u64)]) -> StoreResult<(u64, Vec<u64>)> {
        let (seq, zero) = {
            let mut cache = self.cache();
            let planted = crate::mutants::active(crate::mutants::Mutant::ZeroMergeSettlesNewerLogs);
            let zero: Vec<u64> = chunks
                .iter()
                .filter(|(c, generation)| planted || cache.entries.get(c).is_some_and(|e| e.generation == *generation))
                .map(|(c, _)| *c)
                .collect();
            if zero.is_empty() || cache.logs.is_empty() {
                return Ok((self.current_seq(), zero));
            }
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            let unsettled = zero.iter().copied().collect();
            cache.logs.insert(seq, LogInfo::for_store(unsettled));
            (seq, zero)
        };
        let records: Vec<Record> =
            zero.iter().map(|c| Record::Zero { offset: c * self.chunk_size, len: self.chunk_len(*c) }).collect();
        let mut unfinished = Unfinished { volume: self, seqs: vec![seq] };
        let written = self.append_log(seq, format::encode_log(seq, &records)).await;
        unfinished.done(seq);
        written?;
        Ok((seq, zero))
    }

    pub(super) fn record_flush_latency(&self, started: Duration) {
        let micros = self.clock.now().saturating_sub(started).as_micros() as u64;
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.stats.flush_micros_total.fetch_add(micros, Ordering::Relaxed);
        self.stats.flush_micros_max.fetch_max(micros, Ordering::Relaxed);
    }

    /// Settles chunk `c` against every log up to `seq`.
    pub(super) fn settle(&self, cache: &mut Cache, c: u64, seq: u64) {
        for (_, info) in cache.logs.range_mut(..=seq) {
            info.unsettled.remove(&c);
        }
    }

    /// Records that chunk `c` was merged from its snapshot at `generation` and that the logs up
    /// to `seq` are settled for it. If nothing changed since the snapshot, every log is: any
    /// record for it, even one logged after the snapshot, holds what was merged.
    pub(super) fn settle_merged(&self, cache: &mut Cache, c: u64, seq: u64, generation: u64) {
        let unchanged = cache.entries.get(&c).is_none_or(|e| e.generation == generation);
        self.settle(cache, c, if unchanged { u64::MAX } else { seq });
        self.mark_merged(cache, c, generation);
    }

    /// The background's deletion of settled logs. Each deletion costs a PUT of the metadata
    /// (the settled floor, raised first), so it runs at most every [`LOG_DELETE_INTERVAL`]
    /// unless [`LOG_DELETE_BACKLOG`] settled logs wait. Settled logs left meanwhile cost a little
    /// storage, and replaying them after a crash changes nothing (they are a suffix).
    pub(super) async fn delete_settled_logs_when_due(&self) -> StoreResult<()> {
        let now = self.clock.now().as_nanos() as u64;
        let last = self.logs_deleted_at.load(Ordering::Relaxed);
        let backlog = self.cache().logs.values().take_while(|info| info.deletable()).count() >= LOG_DELETE_BACKLOG;
        if !backlog && last != 0 && now.saturating_sub(last) < LOG_DELETE_INTERVAL.as_nanos() as u64 {
            return Ok(());
        }
        self.logs_deleted_at.store(now.max(1), Ordering::Relaxed);
        self.delete_settled_logs().await
    }

    /// Deletes the oldest logs whose chunks are all settled, wherever their copies are. The
    /// settled floor goes up first, so the order of the deletes does not matter: a log below it
    /// is never replayed. They go a thousand to a request (`delete_keys`), the log lock held (so no log is
    /// written meanwhile): one at a time, a store 40 ms away took a minute over 700 of them,
    /// and every FUA write and SYNCHRONIZE CACHE waited out its deadline.
    pub(super) async fn delete_settled_logs(&self) -> StoreResult<()> {
        let _serial = self.log_lock.lock().await;
        let settled: Vec<(u64, bool, bool)> = {
            let cache = self.cache();
            cache
                .logs
                .iter()
                .take_while(|(_, info)| info.deletable())
                .map(|(seq, info)| (*seq, info.in_store, info.in_journal))
                .collect()
        };
        if let Some(&(last, ..)) = settled.last() {
            // First: a PUT of one of these logs still on its way may land after its delete, and
            // the next open must not replay it over what was written since.
            self.raise_settled_floor(last + 1).await?;
        }
        let in_store: Vec<(u64, String)> = settled
            .iter()
            .filter(|(_, in_store, _)| *in_store)
            .map(|&(seq, ..)| (seq, format::log_key(&self.url, seq)))
            .collect();
        let mut failed = None;
        let gone: BTreeSet<u64> = (self.delete_keys(in_store).await.map_err(|e| store_err(e, true))?)
            .into_iter()
            .filter_map(|(seq, deleted)| match deleted {
                Ok(()) => Some(seq),
                Err(e) => {
                    failed.get_or_insert(store_err(e, true));
                    None
                }
            })
            .collect();
        // A journal copy goes once its store copy is gone (or if it had none).
        let gone_from_store = |&(seq, in_store, _): &(u64, bool, bool)| !in_store || gone.contains(&seq);
        let journaled: Vec<u64> = settled.iter().filter(|s| s.2 && gone_from_store(s)).map(|(seq, ..)| *seq).collect();
        let journal_result = self.delete_from_journal(&journaled).await;
        let mut cache = self.cache();
        for (seq, ..) in settled.iter().filter(|s| gone_from_store(s)) {
            // Its journal copy is gone too (`delete_from_journal` notes each one it deleted).
            if cache.logs.get(seq).is_some_and(|info| !info.in_journal) {
                cache.logs.remove(seq);
            }
        }
        drop(cache);
        failed.map_or(Ok(()), Err)?;
        journal_result
    }
}

/// Logs registered as pending whose PUTs have not finished. When the future writing them is
/// dropped (a command cancelled by a session teardown), they count as written: they may be,
/// and a log left pending would keep every later log from ever being deleted.
pub(super) struct Unfinished<'a> {
    pub(super) volume: &'a S3Volume,
    pub(super) seqs: Vec<u64>,
}

impl Unfinished<'_> {
    pub(super) fn done(&mut self, seq: u64) {
        self.seqs.retain(|s| *s != seq);
    }
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.seqs.is_empty() {
            return;
        }
        let mut cache = self.volume.cache();
        for seq in &self.seqs {
            if let Some(info) = cache.logs.get_mut(seq) {
                info.pending = false;
            }
        }
    }
}
