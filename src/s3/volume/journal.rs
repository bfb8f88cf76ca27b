//! The local journal (`durability = "local"`): a SYNCHRONIZE CACHE or FUA write is durable once
//! its unlogged blocks are in a log object in a local, crash-safe store (written, fsynced and
//! renamed into place before it answers), without waiting for the object store. The background
//! uploads journal logs to the object store under the same sequence numbers and drops their
//! local copies.
//!
//! A journal log is a log like any other: numbered in the one sequence (taken with the data,
//! under the log lock), settled by merges, deleted oldest first wherever its copies are. So
//! recovery replays the union of both stores' logs in sequence order, and every rule that keeps
//! the object store's logs right keeps these right too.
//!
//! A journal is only replayed by the next open of its own node. The volume's metadata names
//! the node whose journal the last open wrote (`journal_node`); once anyone else has opened the
//! volume, that node's journal holds writes the volume moved on from, and it is set aside
//! (kept, under `stale-EPOCH/`, never replayed).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cache::Cache;
use super::format::{self, VolumeMeta};
use super::log::{LogHome, Unfinished};
use super::{OpenError, S3Volume, store_err};
use crate::s3::{Condition, ObjectError, ObjectStore};
use crate::storage::{StoreError, StoreResult};

/// Where a volume keeps its journal, and how much it may hold.
#[derive(Clone)]
pub struct JournalOptions {
    /// A crash-safe local store (its PUT is durable when it answers): the `journal` bucket of
    /// a [`crate::s3::local::LocalRoot`] in production.
    pub store: Arc<dyn ObjectStore>,
    /// Bytes of logs the journal holds at most; beyond it, syncs go to the object store (so
    /// that a long outage fills the journal, then waits like `durability = "s3"`).
    pub bytes_max: u64,
}

impl std::fmt::Debug for JournalOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalOptions")
            .field("store", &self.store.describe())
            .field("bytes_max", &self.bytes_max)
            .finish()
    }
}

/// The block-store error of a failed journal request: as the object store's (a transient
/// fault stays retryable), with what failed.
fn journal_err(what: &str, e: ObjectError) -> StoreError {
    match store_err(e, true) {
        StoreError::Transient(m) => StoreError::Transient(format!("{what}: {m}")),
        StoreError::NotReady(m) => StoreError::NotReady(format!("{what}: {m}")),
        other => StoreError::Write(format!("{what}: {other}")),
    }
}

/// What opening found in a journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum JournalFound {
    /// No journal configured, or an empty one.
    Nothing,
    /// Logs this node left: replay them.
    Replay,
}

/// Marks a journal log as being uploaded while alive.
/// Journal logs uploaded at once.
const UPLOADS_PARALLEL: usize = 32;

struct Uploading<'a> {
    volume: &'a S3Volume,
    seq: u64,
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        if let Some(info) = self.volume.cache().logs.get_mut(&self.seq) {
            info.uploading = false;
        }
    }
}

impl S3Volume {
    fn journal(&self) -> Option<&JournalOptions> {
        self.opts.journal.as_ref()
    }

    pub(super) fn journal_key(&self, seq: u64) -> String {
        format::journal_key(&self.uuid, seq)
    }

    /// Bytes of logs that have a journal copy.
    pub(super) fn journal_bytes(&self, cache: &Cache) -> u64 {
        cache.logs.values().filter(|l| l.in_journal).map(|l| l.bytes).sum()
    }

    /// Logs that have a journal copy.
    pub(super) fn journal_copies(&self, cache: &Cache) -> u64 {
        cache.logs.values().filter(|l| l.in_journal).count() as u64
    }

    /// Whether unlogged data can be made durable in the journal now.
    pub(super) fn journal_has_room(&self) -> bool {
        self.journal().is_some_and(|j| self.journal_bytes(&self.cache()) < j.bytes_max)
    }

    /// Makes every unlogged block durable: in the journal when there is one with room (and in
    /// the object store if the journal fails), in the object store otherwise.
    pub(super) async fn make_unlogged_durable(&self) -> StoreResult<()> {
        if self.journal_has_room() {
            match self.journal_unlogged().await {
                Ok(()) => return Ok(()),
                Err(e @ StoreError::NotReady(_)) => return Err(e),
                Err(e) => {
                    tracing::warn!(volume = %self.url, error = %e, "the local journal failed: syncing to the object store");
                }
            }
        }
        self.log_unlogged().await
    }

    /// Writes every unlogged block into journal logs, one at a time.
    async fn journal_unlogged(&self) -> StoreResult<()> {
        let journal = self.journal().expect("a journal is configured");
        let chunks: Vec<u64> =
            self.cache().entries.iter().filter(|(_, e)| !e.unlogged.is_empty()).map(|(c, _)| *c).collect();
        let _serial = self.log_lock.lock().await;
        // As plain writes: a holder that cannot renew still holds the volume until another
        // takes it, and a taker sees none of the journal anyway (see README).
        self.lease.check_held("a journal write")?;
        let mut rest = &chunks[..];
        while !rest.is_empty() {
            let Some((seq, body, covered, taken)) = self.next_log(rest, LogHome::Journal) else { break };
            rest = &rest[taken..];
            let len = body.len() as u64;
            let _buffer = self.buffers(len);
            let mut unfinished = Unfinished { volume: self, seqs: vec![seq] };
            let started = self.clock.now();
            let metadata = format::log_metadata(&body);
            let written = journal.store.put(&self.journal_key(seq), body, metadata, Condition::None).await;
            unfinished.done(seq);
            self.record_flush_latency(started);
            let mut cache = self.cache();
            // Failed or not, a copy may be there: the upload finds out.
            if let Some(info) = cache.logs.get_mut(&seq) {
                info.pending = false;
                info.bytes = len;
            }
            if let Err(e) = written {
                self.stats.flush_errors.fetch_add(1, Ordering::Relaxed);
                return Err(journal_err("cannot write to the local journal", e));
            }
            self.stats.journal_writes.fetch_add(1, Ordering::Relaxed);
            self.mark_logged(&mut cache, &covered);
        }
        Ok(())
    }

    /// Uploads the journal's logs to the object store, oldest first, up to
    /// [`UPLOADS_PARALLEL`] at a time (a log is small and the store may be a round trip away),
    /// and drops the journal copies of each batch in one deletion (one directory sync, which
    /// the journal writes of FUA commands would otherwise queue behind, one per log).
    pub(super) async fn upload_journal(&self) -> StoreResult<()> {
        if self.journal().is_none() {
            return Ok(());
        }
        let _serial = self.upload_lock.lock().await;
        let waiting: Vec<u64> = {
            let cache = self.cache();
            cache.logs.iter().filter(|(_, l)| l.in_journal && l.at_rest()).map(|(seq, _)| *seq).collect()
        };
        for batch in waiting.chunks(UPLOADS_PARALLEL) {
            let mut claimed = Vec::new();
            {
                let mut cache = self.cache();
                for &seq in batch {
                    match cache.logs.get_mut(&seq) {
                        Some(info) if info.in_journal && info.at_rest() => {
                            info.uploading = true;
                            claimed.push(seq);
                        }
                        _ => {} // deleted (settled) or uploaded meanwhile
                    }
                }
            }
            let _uploading: Vec<Uploading> = claimed.iter().map(|&seq| Uploading { volume: self, seq }).collect();
            let results = futures::future::join_all(claimed.iter().map(|&seq| self.upload_copy(seq))).await;
            let mut uploaded = Vec::new();
            let mut first_error = None;
            for (seq, result) in claimed.iter().zip(results) {
                match result {
                    Ok(true) => uploaded.push(*seq),
                    Ok(false) => {}
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            self.delete_from_journal(&uploaded).await?;
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Copies one journal log to the object store. Ok(true): uploaded, its journal copy may
    /// go; Ok(false): there was no journal copy (a journal write that failed before it landed).
    async fn upload_copy(&self, seq: u64) -> StoreResult<bool> {
        let journal = self.journal().expect("a journal is configured");
        let key = self.journal_key(seq);
        let body = match journal.store.get(&key, None).await {
            Ok(out) => out.body,
            Err(ObjectError::NotFound) => {
                let mut cache = self.cache();
                if let Some(info) = cache.logs.get_mut(&seq) {
                    info.in_journal = false;
                    if !info.in_store {
                        cache.logs.remove(&seq);
                    }
                }
                return Ok(false);
            }
            Err(e) => return Err(journal_err(&format!("cannot read journal log {seq:x}"), e)),
        };
        // Never upload a damaged log under a fresh checksum.
        if let Err(damage) = format::parse_log(&body, None) {
            return Err(StoreError::Write(format!("journal log {seq:x} is damaged ({damage}); kept in the journal")));
        }
        let metadata = format::log_metadata(&body);
        // From now on a copy may exist in the object store.
        if let Some(info) = self.cache().logs.get_mut(&seq) {
            info.in_store = true;
        }
        if !crate::mutants::active(crate::mutants::Mutant::JournalDroppedUnuploaded) {
            let put = self.store.put(&format::log_key(&self.url, seq), body, metadata, Condition::None).await;
            put.map_err(|e| store_err(e, true))?;
        }
        self.stats.journal_uploads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Deletes the journal copies of logs, at once.
    pub(super) async fn delete_from_journal(&self, seqs: &[u64]) -> StoreResult<()> {
        let Some(journal) = self.journal() else { return Ok(()) };
        if seqs.is_empty() {
            return Ok(());
        }
        let keys = seqs.iter().map(|&seq| self.journal_key(seq)).collect();
        let results =
            journal.store.delete_many(keys).await.map_err(|e| journal_err("cannot delete journal logs", e))?;
        let mut failed = None;
        let mut cache = self.cache();
        for (&seq, (key, result)) in seqs.iter().zip(results) {
            match result {
                Ok(()) | Err(ObjectError::NotFound) => {
                    if let Some(info) = cache.logs.get_mut(&seq) {
                        info.in_journal = false;
                    }
                }
                Err(e) => {
                    failed.get_or_insert(journal_err(&format!("cannot delete journal log {key}"), e));
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// At open, before the epoch is bumped: what the journal holds for the last open (`previous`
    /// is the metadata it left). A journal another node's open has superseded is set aside.
    pub(super) async fn check_journal(&self, previous: &VolumeMeta) -> Result<JournalFound, OpenError> {
        let ours = self.opts.node.as_ref().map(|n| n.as_str().to_string());
        let Some(journal) = self.journal() else {
            if let Some(node) = &previous.journal_node {
                tracing::warn!(
                    volume = %self.url,
                    node,
                    "the last holder kept a local journal (durability = \"local\"): writes it acknowledged and never \
                     uploaded are not in the object store, and are not here"
                );
            }
            return Ok(JournalFound::Nothing);
        };
        self.claim_journal(&*journal.store).await?;
        let logs = self.journal_logs(&*journal.store).await?;
        if logs.is_empty() {
            return Ok(JournalFound::Nothing);
        }
        if previous.journal_node.is_some() && previous.journal_node == ours {
            return Ok(JournalFound::Replay);
        }
        let aside = format!("{}/stale-{:x}/", self.uuid, previous.epoch);
        tracing::error!(
            volume = %self.url,
            logs = logs.len(),
            last_opened_by = previous.journal_node.as_deref().unwrap_or("a node without a journal"),
            kept_under = aside,
            "the local journal holds writes this node acknowledged but never uploaded, and the volume was opened \
             elsewhere since: they are lost to it. Setting them aside, not replaying them over newer data"
        );
        for (_, key) in logs {
            let unavailable =
                |e: ObjectError| OpenError::Unavailable(format!("cannot set aside journal log {key}: {e}"));
            let out = journal.store.get(&key, None).await.map_err(unavailable)?;
            let name = key.rsplit('/').next().unwrap_or(&key);
            let to = format!("{aside}{}{name}", format::LOG_DIR);
            journal.store.put(&to, out.body, out.meta.metadata, Condition::None).await.map_err(unavailable)?;
            journal.store.delete(&key).await.map_err(unavailable)?;
        }
        Ok(JournalFound::Nothing)
    }

    /// A journal is kept under its volume's uuid. Two volumes with one uuid (every volume
    /// `rtgt volume import` made had the same one until 2026-12-07) sharing a cache_dir would
    /// write and replay each other's logs: the first to open claims the journal with its URL,
    /// and another is refused.
    async fn claim_journal(&self, store: &dyn ObjectStore) -> Result<(), OpenError> {
        let key = format::journal_owner_key(&self.uuid);
        let ours = self.url.to_string();
        let unavailable =
            |e: ObjectError| OpenError::Unavailable(format!("cannot read the local journal's owner: {e}"));
        for _ in 0..2 {
            match store.get(&key, None).await {
                Ok(out) if out.body == ours.as_bytes() => return Ok(()),
                Ok(out) => {
                    return Err(OpenError::Refused(format!(
                        "{ours}: its uuid {} is also that of {}, whose local journal is in this cache_dir; give one \
                         of them a cache_dir of its own (volumes imported by rtgt before 2026-12-07 share one uuid)",
                        self.uuid,
                        String::from_utf8_lossy(&out.body)
                    )));
                }
                Err(ObjectError::NotFound) => {}
                Err(e) => return Err(unavailable(e)),
            }
            let claim = bytes::Bytes::from(ours.clone());
            match store.put(&key, claim, Default::default(), Condition::IfNoneMatch).await {
                Ok(_) => return Ok(()),
                // Claimed meanwhile: read whose it is.
                Err(ObjectError::PreconditionFailed) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(OpenError::Unavailable(format!("cannot claim the local journal {key}")))
    }

    /// The journal's logs of this volume: (sequence number, key).
    pub(super) async fn journal_logs(&self, store: &dyn ObjectStore) -> Result<Vec<(u64, String)>, OpenError> {
        let prefix = format::journal_prefix(&self.uuid);
        let keys = crate::s3::list_all(store, &prefix)
            .await
            .map_err(|e| OpenError::Unavailable(format!("cannot list the local journal: {e}")))?;
        Ok(keys.into_iter().filter_map(|o| Some((format::key_number(&o.key, &prefix)?, o.key))).collect())
    }
}
