//! Opening after a crash: the logs left behind are replayed into the cache and merged.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::format::{self, LOG_DIR, Record};
use super::{OpenError, S3Volume};
use crate::s3::ObjectError;

impl S3Volume {
    // ---- recovery ----

    /// Replays the logs left by a crash: records newer than their chunk's stamp go into the
    /// cache, every touched chunk is merged, and the logs are deleted.
    pub(super) async fn recover(&self) -> Result<(), OpenError> {
        let unavailable = OpenError::Unavailable;
        let prefix = self.url.key(LOG_DIR);
        let mut logs: Vec<(u64, String)> = crate::s3::list_all(&*self.store, &prefix)
            .await
            .map_err(|e| unavailable(format!("cannot list {prefix}: {e}")))?
            .into_iter()
            .filter_map(|(k, _)| Some((u64::from_str_radix(&k[prefix.len()..], 16).ok()?, k)))
            .collect();
        if logs.is_empty() {
            return Ok(());
        }
        logs.sort();
        tracing::info!(volume = %self.url, logs = logs.len(), "replaying the log");
        let mut stamps: BTreeMap<u64, u64> = BTreeMap::new();
        let now = self.clock.now();
        for (seq, key) in &logs {
            let out = self.store.get(key, None).await.map_err(|e| unavailable(format!("cannot read {key}: {e}")))?;
            let records = format::parse_log(&out.body, out.meta.metadata.get(format::CRC_METADATA))
                .map_err(|e| OpenError::Refused(format!("{key} is damaged: {e}; refusing to open the volume")))?;
            for record in records {
                let (offset, len) = match &record {
                    Record::Data { offset, data } => (*offset, data.len() as u64),
                    Record::Zero { offset, len } => (*offset, *len),
                };
                if offset + len > self.capacity.load(Ordering::Relaxed) {
                    return Err(OpenError::Refused(format!("{key} writes beyond the end of the volume")));
                }
                let mut at = offset;
                while at < offset + len {
                    let c = at / self.chunk_size;
                    let n = (self.chunk_size - at % self.chunk_size).min(offset + len - at);
                    let stamp = match stamps.get(&c) {
                        Some(s) => *s,
                        None => {
                            let s = self.chunk_stamp(c).await.map_err(unavailable)?;
                            stamps.insert(c, s);
                            s
                        }
                    };
                    if *seq > stamp {
                        let piece = match &record {
                            Record::Data { data, .. } => data.slice((at - offset) as usize..(at - offset + n) as usize),
                            Record::Zero { .. } => Bytes::from(vec![0u8; n as usize]),
                        };
                        let mut cache = self.cache();
                        self.write_piece(&mut cache, c, at % self.chunk_size, &piece, now, false);
                    }
                    at += n;
                }
            }
        }
        let touched: Vec<u64> = stamps.keys().copied().collect();
        self.merge_chunks(&touched).await.map_err(|e| unavailable(format!("cannot merge the replayed log: {e}")))?;
        for (_, key) in &logs {
            self.store.delete(key).await.map_err(|e| unavailable(format!("cannot delete {key}: {e}")))?;
        }
        tracing::info!(volume = %self.url, chunks = touched.len(), "log replayed");
        Ok(())
    }

    /// The log sequence number a chunk object includes (0 when it does not exist).
    pub(super) async fn chunk_stamp(&self, c: u64) -> Result<u64, String> {
        if !self.cache().exists.contains(&c) {
            return Ok(0);
        }
        match self.store.head(&format::chunk_key(&self.url, c)).await {
            Ok(meta) => Ok(format::chunk_stamp(&meta.metadata)),
            Err(ObjectError::NotFound) => Ok(0),
            Err(e) => Err(format!("cannot read chunk {c}: {e}")),
        }
    }
}
