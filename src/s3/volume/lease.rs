//! The single-writer lease: who may write the volume, taken and renewed with conditional PUTs.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use super::S3Volume;
use super::format::LEASE_NAME;
use crate::s3::{Condition, ObjectError};
use crate::storage::{StoreError, StoreResult};

/// The single-writer lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseRecord {
    pub(super) holder: String,
    pub(super) expires_unix_ms: u64,
}

impl S3Volume {
    pub(super) fn now_unix_ms(&self) -> u64 {
        self.clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
    }

    pub(super) fn lease_body(&self, expires_unix_ms: u64) -> Bytes {
        let record = LeaseRecord { holder: self.opts.holder.clone(), expires_unix_ms };
        Bytes::from(serde_json::to_vec(&record).expect("lease serializes"))
    }

    pub(super) async fn read_lease(&self) -> Result<Option<(LeaseRecord, Option<String>)>, String> {
        match self.store.get(&self.url.key(LEASE_NAME), None).await {
            Ok(out) => {
                let record = serde_json::from_slice(&out.body).map_err(|e| format!("unreadable lease: {e}"))?;
                Ok(Some((record, out.meta.etag)))
            }
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(format!("cannot read the lease: {e}")),
        }
    }

    pub(super) async fn acquire_lease(&self) -> Result<(), String> {
        let key = self.url.key(LEASE_NAME);
        let expires = self.now_unix_ms() + self.opts.lease_duration.as_millis() as u64;
        for _ in 0..5 {
            let (condition, previous) = match self.read_lease().await? {
                None => (Condition::IfNoneMatch, None),
                Some((record, etag)) => {
                    let expired = record.expires_unix_ms < self.now_unix_ms();
                    if record.holder != self.opts.holder && !expired && !self.opts.force {
                        let left = record.expires_unix_ms.saturating_sub(self.now_unix_ms()) / 1000;
                        return Err(format!(
                            "{} is in use by {} (its lease runs {left} s more); stop that target, or open with \
                             force = true / --force to take the volume over",
                            self.url, record.holder
                        ));
                    }
                    if record.holder != self.opts.holder && !expired {
                        tracing::warn!(volume = %self.url, holder = %record.holder, "taking the volume over by force");
                    }
                    match etag {
                        Some(e) => (Condition::IfMatch(e), Some(record)),
                        None => (Condition::None, Some(record)),
                    }
                }
            };
            match self.store.put(&key, self.lease_body(expires), BTreeMap::new(), condition).await {
                Ok(etag) => {
                    *self.lease_etag.lock().expect("poisoned") = etag;
                    if let Some(p) = previous {
                        tracing::info!(volume = %self.url, previous = %p.holder, "lease taken");
                    }
                    return Ok(());
                }
                // Someone changed it meanwhile, or our own uncertain attempt landed: look again.
                Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => continue,
                Err(e) => return Err(format!("cannot take the lease of {}: {e}", self.url)),
            }
        }
        Err(format!("cannot take the lease of {}: it keeps changing", self.url))
    }

    /// Renews the lease; on losing it to another holder, fences the volume.
    pub(super) async fn renew_lease(&self) {
        if self.fenced.load(Ordering::Relaxed) {
            return;
        }
        let key = self.url.key(LEASE_NAME);
        let expires = self.now_unix_ms() + self.opts.lease_duration.as_millis() as u64;
        let etag = self.lease_etag.lock().expect("poisoned").clone();
        let condition = etag.map(Condition::IfMatch).unwrap_or(Condition::None);
        match self.store.put(&key, self.lease_body(expires), BTreeMap::new(), condition).await {
            Ok(etag) => *self.lease_etag.lock().expect("poisoned") = etag,
            Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => {
                // Ours if our uncertain renewal landed; someone else's otherwise.
                match self.read_lease().await {
                    Ok(Some((record, etag))) if record.holder == self.opts.holder => {
                        *self.lease_etag.lock().expect("poisoned") = etag;
                    }
                    Ok(other) => {
                        let holder = other.map(|(r, _)| r.holder).unwrap_or_else(|| "nobody".into());
                        tracing::error!(volume = %self.url, %holder, "lease lost: the volume is fenced, writes fail");
                        self.fenced.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(volume = %self.url, error = %e, "cannot check the lease"),
                }
            }
            Err(e) => tracing::warn!(volume = %self.url, error = %e, "lease renewal failed; will retry"),
        }
    }

    pub(super) async fn release_lease(&self) {
        let etag = self.lease_etag.lock().expect("poisoned").clone();
        if self.fenced.load(Ordering::Relaxed) {
            return;
        }
        if let Some(etag) = etag {
            // An expired lease lets the next target in without waiting.
            let key = self.url.key(LEASE_NAME);
            let _ = self.store.put(&key, self.lease_body(0), BTreeMap::new(), Condition::IfMatch(etag)).await;
        }
    }

    pub(super) fn check_fenced(&self) -> StoreResult<()> {
        if self.fenced.load(Ordering::Relaxed) {
            return Err(StoreError::Write(format!("{}: lease lost to another target", self.url)));
        }
        Ok(())
    }
}
