//! Opening after a crash: the logs left behind are replayed into the cache and merged, within
//! the cache limit, then deleted.
//!
//! Logs are replayed oldest first; a record goes into the cache if its log is newer than its
//! chunk's stamp. When the cache would overflow, the chunks replayed so far are merged and
//! evicted, each stamped with the last log whose records for it are all applied: should the
//! process die before the logs are deleted, the next replay applies everything newer again,
//! and applying records in order is the same however often it is repeated. A chunk found zero
//! midway is not deleted then (its object may be all that keeps older log records from coming
//! back, and no zero record can be numbered between the old logs): it stays in the cache, as
//! zeros, which take no pages. Once every log is applied the old logs become the volume's own,
//! the chunks are merged as usual (zero ones deleted after a zero record numbered after all the
//! old logs), and the logs, all settled, are deleted oldest first.
//!
//! A log that fails its checks is replayed if it proves it is whole anyway (a log of an older
//! rtgt whose metadata the old store lost), dropped with a warning if it provably was never
//! acknowledged (cut short, and the newest of its epoch: the one write in flight at a crash),
//! and otherwise stops the open: it may hold acknowledged writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cache::PAGE;
use super::format::{self, LOG_DIR, LogDamage, Record};
use super::journal::JournalFound;
use super::merge::Merge;
use super::{OpenError, S3Volume};
use crate::s3::{ObjectError, ObjectStore};

/// Where the copies of one log are.
#[derive(Debug, Default)]
struct Copies {
    store: Option<String>,
    journal: Option<String>,
}

impl Copies {
    /// A name for messages.
    fn name(&self) -> String {
        match (&self.store, &self.journal) {
            (Some(key), _) => key.clone(),
            (None, Some(key)) => format!("journal:{key}"),
            (None, None) => String::new(),
        }
    }
}

impl S3Volume {
    /// Replays the logs left by a crash (the object store's, and with `journal` the local
    /// journal's, as one sequence) and deletes them.
    pub(super) async fn recover(&self, journal: JournalFound) -> Result<(), OpenError> {
        let unavailable = OpenError::Unavailable;
        let prefix = self.url.key(LOG_DIR);
        let mut copies: BTreeMap<u64, Copies> = BTreeMap::new();
        for crate::s3::Listed { key, .. } in crate::s3::list_all(&*self.store, &prefix)
            .await
            .map_err(|e| unavailable(format!("cannot list {prefix}: {e}")))?
        {
            if let Some(seq) = format::key_number(&key, &prefix) {
                copies.entry(seq).or_default().store = Some(key);
            }
        }
        if journal == JournalFound::Replay
            && let Some(options) = &self.opts.journal
        {
            for (seq, key) in self.journal_logs(&*options.store).await? {
                copies.entry(seq).or_default().journal = Some(key);
            }
        }
        // Logs below the floor were settled before (by an earlier open, or as they settled):
        // these came back (a PUT that landed after its writer gave up) or were not deleted yet
        // when the target died, and hold nothing to replay: deleted unread, wherever they are.
        let kept = copies.split_off(&self.meta().logs_settled_below);
        let stale = std::mem::replace(&mut copies, kept);
        self.delete_stale_logs(stale).await?;
        if copies.is_empty() {
            return self.settle_earlier_epochs().await;
        }
        let logs: Vec<(u64, Copies)> = copies.into_iter().collect();
        tracing::info!(volume = %self.url, logs = logs.len(), "replaying the log");
        // Per chunk: the stamp of its object, and the last log whose records for it are all in
        // the cache (or merged).
        let mut stamps: BTreeMap<u64, u64> = BTreeMap::new();
        let mut through: BTreeMap<u64, u64> = BTreeMap::new();
        let mut replayed: Vec<(u64, BTreeSet<u64>)> = Vec::new();
        let homes: BTreeMap<u64, (bool, bool)> =
            logs.iter().map(|(seq, c)| (*seq, (c.store.is_some(), c.journal.is_some()))).collect();
        for (i, (seq, copies)) in logs.iter().enumerate() {
            let newest_of_epoch =
                logs.get(i + 1).is_none_or(|(next, _)| format::epoch_of(*next) != format::epoch_of(*seq));
            let key = copies.name();
            let Some(records) = self.read_copies(*seq, copies, newest_of_epoch).await? else {
                // Dropped: nothing of it is applied; it is deleted with the others.
                replayed.push((*seq, BTreeSet::new()));
                continue;
            };
            let mut touched = BTreeSet::new();
            for record in records {
                self.replay(*seq, &key, &record, &mut stamps, &through, &mut touched).await?;
            }
            for &c in &touched {
                through.insert(c, *seq);
            }
            replayed.push((*seq, touched));
        }
        // Every log is applied: they are this volume's logs now, settled as their chunks merge.
        {
            let dirty: BTreeSet<u64> = self.dirty_chunks().into_iter().collect();
            let mut cache = self.cache();
            // A chunk these logs wrote may have a version on its way from the holder that wrote
            // them (a merge its end cut short): whatever the chunk holds now must be written as
            // a newer version, a tombstone if it is zero, never left with no object.
            cache.exists.extend(through.keys().copied());
            for (seq, touched) in replayed {
                let unsettled = touched.intersection(&dirty).copied().collect();
                let (in_store, in_journal) = homes[&seq];
                let info =
                    super::cache::LogInfo { unsettled, in_store, in_journal, landed: in_store, ..Default::default() };
                cache.logs.insert(seq, info);
            }
        }
        let dirty = self.dirty_chunks();
        let merged = self.merge_chunks(&dirty).await;
        merged.map_err(|e| unavailable(format!("cannot merge the replayed log: {e}")))?;
        let deleted = self.delete_settled_logs().await;
        deleted.map_err(|e| unavailable(format!("cannot delete the replayed logs: {e}")))?;
        if let Some(seq) = self.cache().logs.keys().next() {
            return Err(unavailable(format!("log {seq:x} is still needed after the replay")));
        }
        tracing::info!(volume = %self.url, chunks = through.len(), "log replayed");
        self.settle_earlier_epochs().await
    }

    /// Deletes logs found below the settled floor, unread.
    async fn delete_stale_logs(&self, stale: BTreeMap<u64, Copies>) -> Result<(), OpenError> {
        let mut in_journal = Vec::new();
        for (seq, copies) in stale {
            tracing::warn!(log = copies.name(), "a log settled before: deleted, not replayed");
            if let Some(key) = copies.store {
                match self.store.delete(&key).await {
                    Ok(()) | Err(ObjectError::NotFound) => {}
                    Err(e) => return Err(OpenError::Unavailable(format!("cannot delete {key}: {e}"))),
                }
            }
            if copies.journal.is_some() {
                in_journal.push(seq);
            }
        }
        let deleted = self.delete_from_journal(&in_journal).await;
        deleted.map_err(|e| OpenError::Unavailable(format!("cannot delete settled logs from the journal: {e}")))
    }

    /// Records that every log of the earlier epochs is settled (this open replayed, merged and
    /// deleted all it found), so that none of them that lands late is ever replayed.
    async fn settle_earlier_epochs(&self) -> Result<(), OpenError> {
        let first = self.meta().first_seq();
        self.raise_settled_floor(first).await.map_err(|e| OpenError::Unavailable(format!("{}: {e}", self.url)))
    }

    /// Reads and checks one log from its copies: the journal's first (local, and the store's
    /// may be a partial upload), the store's if the journal's is damaged.
    async fn read_copies(
        &self,
        seq: u64,
        copies: &Copies,
        newest_of_epoch: bool,
    ) -> Result<Option<Vec<Record>>, OpenError> {
        if let (Some(key), Some(options)) = (&copies.journal, &self.opts.journal) {
            match self.read_log(&*options.store, seq, key, newest_of_epoch).await {
                Ok(found) => return Ok(found),
                Err(e) if copies.store.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(log = key, error = %e, "the journal's copy failed: reading the object store's")
                }
            }
        }
        let key = copies.store.as_deref().expect("a log has a copy");
        self.read_log(&*self.store, seq, key, newest_of_epoch).await
    }

    /// Reads and checks one log: its records, or None if it is to be dropped.
    async fn read_log(
        &self,
        store: &dyn ObjectStore,
        seq: u64,
        key: &str,
        newest_of_epoch: bool,
    ) -> Result<Option<Vec<Record>>, OpenError> {
        let parsed = match store.get(key, None).await {
            Ok(out) => {
                self.note_buffer(out.body.len() as u64);
                format::parse_log(&out.body, out.meta.metadata.get(format::CRC_METADATA))
            }
            // The store itself finds the object damaged.
            Err(e) if !e.retryable() && e != ObjectError::NotFound => Err(LogDamage::Corrupt(e.to_string())),
            Err(e) => return Err(OpenError::Unavailable(format!("cannot read {key}: {e}"))),
        };
        match parsed {
            Ok(parsed) => {
                if parsed.unverified {
                    tracing::warn!(
                        log = key,
                        "a log without its checksum (its store lost the metadata) is whole: replayed"
                    );
                }
                Ok(Some(parsed.records))
            }
            Err(LogDamage::Truncated(why)) if newest_of_epoch => {
                tracing::warn!(
                    log = key,
                    %why,
                    "a log cut short, the last one its writer started: it was never acknowledged; dropped"
                );
                Ok(None)
            }
            Err(damage) => Err(OpenError::Refused(format!(
                "{key} is damaged ({damage}) and may hold acknowledged writes; refusing to open the volume. To open it \
                 without that log, losing what it holds: rtgt volume discard-log {} {seq:x}",
                self.url
            ))),
        }
    }

    /// Applies one record to the cache where its log is newer than the chunk's stamp.
    async fn replay(
        &self,
        seq: u64,
        key: &str,
        record: &Record,
        stamps: &mut BTreeMap<u64, u64>,
        through: &BTreeMap<u64, u64>,
        touched: &mut BTreeSet<u64>,
    ) -> Result<(), OpenError> {
        let (offset, len) = record.extent();
        if offset.checked_add(len).is_none_or(|end| end > self.capacity.load(Ordering::Relaxed)) {
            return Err(OpenError::Refused(format!("{key} writes beyond the end of the volume")));
        }
        let mut at = offset;
        while at < offset + len {
            let c = at / self.chunk_size;
            let n = (self.chunk_size - at % self.chunk_size).min(offset + len - at);
            let stamp = match stamps.get(&c) {
                Some(s) => *s,
                None => {
                    let s = self.chunk_stamp(c).await.map_err(OpenError::Unavailable)?;
                    stamps.insert(c, s);
                    s
                }
            };
            if seq > stamp {
                let piece = match record {
                    Record::Data { data, .. } => data.slice((at - offset) as usize..(at - offset + n) as usize),
                    Record::Zero { .. } => Bytes::from(vec![0u8; n as usize]),
                };
                let need = (n.div_ceil(PAGE as u64) + 1) * PAGE as u64;
                if self.cache().page_bytes + need > self.cache_limit {
                    let dirty = self.dirty_chunks();
                    self.merge_replayed(&dirty, stamps, through).await?;
                }
                let now = self.clock.now();
                let mut cache = self.cache();
                self.write_piece(&mut cache, c, at % self.chunk_size, &piece, now, false);
                touched.insert(c);
            }
            at += n;
        }
        Ok(())
    }

    /// Merges replayed chunks, each stamped with what it holds for sure, and evicts them.
    async fn merge_replayed(
        &self,
        chunks: &[u64],
        stamps: &BTreeMap<u64, u64>,
        through: &BTreeMap<u64, u64>,
    ) -> Result<(), OpenError> {
        for group in chunks.chunks(super::MERGE_PARALLEL) {
            let merges = group.iter().map(|&c| {
                let stamp = through.get(&c).or(stamps.get(&c)).copied().unwrap_or(0);
                self.merge_chunk_as(c, Merge::Replaying { stamp })
            });
            for r in futures::future::join_all(merges).await {
                r.map_err(|e| OpenError::Unavailable(format!("cannot merge the replayed log: {e}")))?;
            }
        }
        let mut cache = self.cache();
        self.evict_clean(&mut cache, u64::MAX);
        Ok(())
    }

    /// Chunks with data not in their objects.
    pub(super) fn dirty_chunks(&self) -> Vec<u64> {
        self.cache().entries.iter().filter(|(_, e)| !e.is_clean()).map(|(c, _)| *c).collect()
    }

    /// The log sequence number a chunk object includes (0 when it does not exist, or is an
    /// ancestor's that a clone reads through to: every log of the clone is newer).
    pub(super) async fn chunk_stamp(&self, c: u64) -> Result<u64, String> {
        let key = {
            let cache = self.cache();
            match cache.exists.contains(&c).then(|| self.own_key_now(&cache, c)).flatten() {
                Some(key) => key,
                None => return Ok(0),
            }
        };
        match self.store.head(&key).await {
            Ok(meta) => Ok(format::chunk_stamp(&meta.metadata)),
            Err(ObjectError::NotFound) => Ok(0),
            Err(e) => Err(format!("cannot read chunk {c}: {e}")),
        }
    }
}
