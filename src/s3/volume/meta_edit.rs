//! Rewriting the metadata of an open volume (its size, its wrapped key, its settled-log
//! floor): one rewrite at a time, each a PUT conditional on the version this open last saw.
//! After an uncertain PUT, or a condition that failed, the metadata is read again: if it is
//! still this open's (same volume, same epoch) the edit is applied to what was read and tried
//! again; if another holder has bumped the epoch, the volume is not ours any more.

use super::format::VolumeMeta;
use super::{META_NAME, S3Volume, store_err};
use crate::s3::ObjectError;
use crate::storage::StoreError;

/// Tries of one edit before giving up (each after a failed condition or an unknown outcome).
const TRIES: usize = 4;

/// Why an edit of the metadata did not happen.
#[derive(Debug)]
pub(super) enum MetaEditError {
    /// The edit itself refused (in words); nothing was written.
    Refused(String),
    /// The store failed, or another holder took the volume (`ObjectError::Fenced`).
    Store(ObjectError),
}

impl From<MetaEditError> for StoreError {
    /// A refusal is the write's error; a store failure is classified as any write's is.
    fn from(e: MetaEditError) -> StoreError {
        match e {
            MetaEditError::Refused(why) => StoreError::Write(why),
            MetaEditError::Store(e) => store_err(e, true),
        }
    }
}

impl std::fmt::Display for MetaEditError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaEditError::Refused(why) => f.write_str(why),
            MetaEditError::Store(e) => write!(f, "cannot update the metadata: {e}"),
        }
    }
}

impl S3Volume {
    /// Applies `edit` to the metadata and writes it back. `edit` returns whether it changed
    /// anything (nothing is written if not), or why it refuses.
    pub(super) async fn edit_meta(
        &self,
        edit: impl Fn(&mut VolumeMeta) -> Result<bool, String>,
    ) -> Result<(), MetaEditError> {
        let _one_at_a_time = self.meta_edits.lock().await;
        for _ in 0..TRIES {
            let (mut meta, etag) = self.meta.lock().expect("poisoned").clone();
            if !edit(&mut meta).map_err(MetaEditError::Refused)? {
                return Ok(());
            }
            match self.put_meta(&meta, etag).await {
                Ok(etag) => {
                    *self.meta.lock().expect("poisoned") = (meta, etag);
                    return Ok(());
                }
                Err(ObjectError::Indeterminate(_) | ObjectError::PreconditionFailed) => {
                    self.read_own_meta(&meta).await.map_err(MetaEditError::Store)?
                }
                Err(e) => return Err(MetaEditError::Store(e)),
            }
        }
        Err(MetaEditError::Store(ObjectError::Determinate {
            message: format!("{}/{META_NAME} keeps changing", self.url),
            retryable: true,
        }))
    }

    /// Reads the metadata again after a rewrite of `ours` that may not have landed: kept if it
    /// is still this open's.
    async fn read_own_meta(&self, ours: &VolumeMeta) -> Result<(), ObjectError> {
        let found = S3Volume::read_meta(&*self.store, &self.url)
            .await
            .map_err(|e| ObjectError::Determinate { message: e, retryable: true })?;
        match found {
            Some((found, etag)) if found.uuid == ours.uuid && found.epoch == ours.epoch => {
                *self.meta.lock().expect("poisoned") = (found, etag);
                Ok(())
            }
            _ => Err(ObjectError::Fenced(format!("{} was taken over or replaced by another holder", self.url))),
        }
    }

    /// Records in the metadata that every log numbered below `to` is settled: the next open
    /// deletes any such log it finds (one that landed after its writer gave up) unread.
    pub(super) async fn raise_settled_floor(&self, to: u64) -> Result<(), MetaEditError> {
        self.edit_meta(|meta| {
            let raise = meta.logs_settled_below < to;
            if raise {
                meta.logs_settled_below = to;
            }
            Ok(raise)
        })
        .await
    }
}
