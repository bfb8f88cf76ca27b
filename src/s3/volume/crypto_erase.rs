//! SANITIZE CRYPTO ERASE of an encrypted volume: every block unmapped and settled (merged,
//! no log left), then a new data key, wrapped by the same key-encryption key, replaces the old
//! one in the metadata and in the sealing layer. What was written before is then unreadable
//! wherever a copy of it remains (a version not yet swept, a backup of the bucket, a store that
//! keeps deleted objects), since the old data key is gone with it.
//!
//! Refused while the volume has snapshots (they hold data under the old key) and with a local
//! journal (its logs are not sealed and would outlive the key). The order makes a crash at any
//! point safe: the blocks are zeros in the object store before the key changes, and no object
//! the volume still needs is sealed under the old key once it has.

use super::{MERGE_PARALLEL, S3Volume, keys, sealing};
use crate::storage::crypto_erase::{CryptoErase, EraseError};
use crate::storage::{BlockStore, BoxFuture, StoreError};

/// The unmap of the whole volume goes in pieces of this size.
const PIECE: u64 = 1 << 30;

impl S3Volume {
    /// Whether this volume can be crypto erased: encrypted, with no local journal.
    pub(super) fn offers_crypto_erase(&self) -> bool {
        self.sealing.is_some() && self.opts.journal.is_none()
    }

    async fn crypto_erase_impl(&self) -> Result<(), EraseError> {
        let (Some(sealing), Some(source)) = (&self.sealing, &self.opts.encryption) else {
            return Err(EraseError::Refused(format!("{} is not encrypted", self.url)));
        };
        if self.opts.journal.is_some() {
            return Err(EraseError::Refused(format!("{}: its local journal is not encrypted", self.url)));
        }
        if !self.cache().snapshots.is_empty() {
            return Err(EraseError::Refused(format!(
                "{} has snapshots, which hold data under its key: delete them first",
                self.url
            )));
        }
        self.lease.check("crypto erase")?;
        let capacity = self.capacity();
        let mut at = 0;
        while at < capacity {
            let n = PIECE.min(capacity - at);
            self.unmap(at, n).await?;
            at += n;
        }
        self.settle_everything().await?;
        // No merge or log write from here on: nothing may be sealed under the old key after
        // the new one is in the metadata.
        let _merges = self.merge_slots.acquire_many(MERGE_PARALLEL as u32).await.expect("never closed");
        let _logs = self.log_lock.lock().await;
        {
            let cache = self.cache();
            if !cache.logs.is_empty() || cache.entries.values().any(|e| !e.unlogged.is_empty()) {
                return Err(StoreError::Transient(format!("{}: writes arrived during the erase", self.url)).into());
            }
        }
        let (encryption, data_key) = keys::new_encryption(source).map_err(|e| StoreError::Write(e.to_string()))?;
        let unit = encryption.unit;
        let _no_other_edit = self.meta_edits.lock().await;
        let (mut meta, etag) = self.meta.lock().expect("poisoned").clone();
        meta.encryption = Some(encryption);
        match self.put_meta(&meta, etag).await {
            Ok(etag) => *self.meta.lock().expect("poisoned") = (meta, etag),
            Err(e) => {
                // Maybe it landed: the key the metadata holds is the one writes must use.
                let found = S3Volume::read_meta(&*self.control, &self.url).await.ok().flatten();
                match found {
                    Some((found, etag)) if found.encryption == meta.encryption => {
                        *self.meta.lock().expect("poisoned") = (found, etag)
                    }
                    Some(_) => return Err(super::store_err(e, true).into()), // not replaced
                    None => {
                        // Unknown which key is in force: serve nothing until reopened.
                        self.lease.end(super::lease::Ended::Closed);
                        return Err(StoreError::NotReady(format!(
                            "{}: the new data key may or may not be in the metadata: reopen the volume",
                            self.url
                        ))
                        .into());
                    }
                }
            }
        }
        sealing.replace_sealer(sealing::Sealer::new(&data_key, unit, sealing::os_nonces()));
        if let Some(disk) = self.disk.get() {
            // Its entries are plaintext of versions now deleted.
            disk.clear().await;
        }
        tracing::warn!(volume = %self.url, "crypto erased: every block unmapped, the data key replaced");
        Ok(())
    }
}

impl CryptoErase for S3Volume {
    fn crypto_erase(&self) -> BoxFuture<'_, Result<(), EraseError>> {
        Box::pin(self.crypto_erase_impl())
    }
}
