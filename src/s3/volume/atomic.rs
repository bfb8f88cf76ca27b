//! WRITE ATOMIC on an S3 volume. A plain write becomes durable with whatever else is unlogged
//! when the next flush comes, and a flush may cut the chunks it covers into several logs and
//! merges: a write across two chunks can be half durable when the power goes. An atomic write
//! is therefore logged first, whole, in a log object of its own, and only then copied into the
//! cache (where it is logged or merged again later, like any write). Its chunks stay claimed
//! from before its sequence number is taken until the copy, so no merge can stamp them past the
//! log without the data. Room in the cache is made before the claim (room merges may need those
//! chunks); the copy then goes in whatever came meanwhile, so the cache may overshoot its limit
//! by one atomic write (its caller admits no other write to the volume meanwhile).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::S3Volume;
use super::cache::LogInfo;
use super::format::LogBuilder;
use super::log::Unfinished;
use crate::storage::{StoreError, StoreResult, is_zero};

impl S3Volume {
    pub(super) async fn write_atomic_impl(&self, offset: u64, data: Bytes) -> StoreResult<()> {
        self.whole_blocks(offset, data.len() as u64).map_err(StoreError::Write)?;
        if data.is_empty() {
            return Ok(());
        }
        let deadline = self.command_deadline();
        self.may_serve_by("an atomic write", deadline).await?;
        if crate::mutants::active(crate::mutants::Mutant::AtomicWriteWithoutItsLog) {
            self.write_within_limit(offset, &data, deadline).await?;
            return self.flush_all_by(deadline).await;
        }
        // From its room until the copy (after its log): a snapshot has all of it or none.
        let _gate = self.snapshot_gate.read().await;
        let (first, last) = (offset / self.chunk_size, (offset + data.len() as u64 - 1) / self.chunk_size);
        let chunks: Vec<u64> = (first..=last).collect();
        self.wait_for_room(offset, data.len() as u64, deadline).await?;
        let _claim = self.claim(&chunks).await;
        self.patiently_by("an atomic write", deadline, || self.log_whole(offset, &data, &chunks)).await?;
        self.copy_write(&mut self.cache(), offset, &data);
        Ok(())
    }

    /// Writes one log object holding exactly this write, registered as unsettled on `chunks`.
    async fn log_whole(&self, offset: u64, data: &[u8], chunks: &[u64]) -> StoreResult<()> {
        let _serial = self.log_lock.lock().await;
        self.lease.check("an atomic write's log")?;
        let mut log = LogBuilder::new();
        if is_zero(data) {
            log.zero(offset, data.len() as u64);
        } else {
            log.data(offset, data.len()).copy_from_slice(data);
        }
        let seq = {
            let mut cache = self.cache();
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            cache.logs.insert(seq, LogInfo::for_store(chunks.iter().copied().collect()));
            seq
        };
        let mut unfinished = Unfinished { volume: self, seqs: vec![seq] };
        let written = self.append_log(seq, log.finish(seq)).await;
        unfinished.done(seq);
        written
    }
}
