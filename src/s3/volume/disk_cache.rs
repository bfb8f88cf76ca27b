//! The disk cache tier (`cache_disk_size`): verified pieces of chunk objects kept in a local
//! object store (under `cache_dir`), so that reads after a restart, or beyond the memory
//! cache, need no request to S3.
//!
//! An entry is a piece of whole CRC segments of one version of one chunk object, stored with
//! that version's entity tag and a CRC per 16 KiB ([`CRC_UNIT`]: a 4 KiB read reads and checks
//! 16 KiB, not the 64 KiB segment). It answers a read only while the volume
//! knows that version to be the chunk's current one ([`Cache::versions`](super::cache::Cache),
//! from the LIST at open, PUT answers and GETs), and only if its bytes match the CRCs when read
//! back. So a chunk replaced by anyone (this holder's merge, another holder after a takeover)
//! is never served from an older entry, and a torn, truncated or rotten file is a miss (and is
//! deleted), never wrong data. Entries of other versions are deleted when the volume opens.
//! Writes to the tier happen on tasks of their own, a few at a time, behind a queue of bounded
//! bytes; a piece that finds the queue full is not kept (the tier never slows a read down nor
//! holds unbounded memory).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::format;
use crate::s3::{Condition, ObjectStore};

/// The bucket of the local store in `cache_dir` that holds disk cache entries.
pub const DISK_CACHE_BUCKET: &str = "read-cache";
/// Pieces being written to the tier at once.
const WRITES_PARALLEL: usize = 4;
/// Bytes of pieces waiting to be written, at most: a piece that finds no room is not kept.
pub(super) const QUEUED_BYTES: u64 = 32 << 20;
/// The queue's unit.
const QUEUE_UNIT: u64 = 4096;
/// Entries carry a CRC per this many bytes (finer than the chunk's 64 KiB segments, so that a
/// small read reads and checks little; 256 CRCs for a 4 MiB piece fit an entry's header).
pub(super) const CRC_UNIT: u64 = 16 << 10;
/// Object metadata of an entry: [`CRC_UNIT`], so that a later change reads as a miss.
const UNIT_METADATA: &str = "rtgt-crc-unit";
/// Object metadata of an entry: the entity tag of the chunk object version it holds.
const VERSION_METADATA: &str = "rtgt-version";

/// How to open a volume's disk cache.
#[derive(Clone)]
pub struct DiskCacheOptions {
    /// Where entries are kept (a bucket of the local store in `cache_dir`).
    pub store: Arc<dyn ObjectStore>,
    /// Bytes of entries kept at most (least recently used go first).
    pub bytes_max: u64,
}

impl std::fmt::Debug for DiskCacheOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCacheOptions")
            .field("store", &self.store.describe())
            .field("bytes_max", &self.bytes_max)
            .finish()
    }
}

/// One entry: bytes `[from, to)` of a chunk, of one version of its object.
#[derive(Debug, Clone)]
struct Piece {
    to: u64,
    version: String,
    key: String,
    last_used: u64,
}

#[derive(Default)]
struct Index {
    /// By (chunk, from).
    pieces: BTreeMap<(u64, u64), Piece>,
    bytes: u64,
    tick: u64,
}

pub(super) struct DiskCache {
    store: Arc<dyn ObjectStore>,
    /// This volume's entries are under it (`<volume uuid>/`).
    prefix: String,
    bytes_max: u64,
    index: Mutex<Index>,
    /// Units of [`QUEUED_BYTES`] free.
    queue: Arc<tokio::sync::Semaphore>,
    writes: tokio::sync::Semaphore,
}

/// A version's entity tag as compared: stores differ in quoting it.
pub(super) fn version_of(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

impl DiskCache {
    /// Opens the tier of volume `uuid`: keeps the entries of the versions `current` names
    /// (chunk → entity tag), deletes the others.
    pub(super) async fn open(
        opts: &DiskCacheOptions,
        uuid: &str,
        current: &BTreeMap<u64, String>,
    ) -> Result<DiskCache, String> {
        let prefix = format!("{uuid}/");
        let listed = crate::s3::list_all(&*opts.store, &prefix).await.map_err(|e| format!("the disk cache: {e}"))?;
        let mut index = Index::default();
        let mut stale = Vec::new();
        for o in listed {
            match parse_key(&o.key[prefix.len()..]) {
                // An entry of another size than its name says (cut short by a power loss: the
                // cache is never synced) goes with the stale ones; the index counts each
                // piece as its name does, as eviction subtracts it.
                Some((c, from, to, hash))
                    if current.get(&c).is_some_and(|v| version_hash(v) == hash) && o.size == to - from =>
                {
                    index.bytes += to - from;
                    let piece = Piece { to, version: current[&c].clone(), key: o.key, last_used: 0 };
                    index.pieces.insert((c, from), piece);
                }
                _ => stale.push(o.key),
            }
        }
        for keys in stale.chunks(1000) {
            opts.store.delete_many(keys.to_vec()).await.map_err(|e| format!("the disk cache: {e}"))?;
        }
        let cache = DiskCache {
            store: opts.store.clone(),
            prefix,
            bytes_max: opts.bytes_max,
            index: Mutex::new(index),
            queue: Arc::new(tokio::sync::Semaphore::new((QUEUED_BYTES / QUEUE_UNIT) as usize)),
            writes: tokio::sync::Semaphore::new(WRITES_PARALLEL),
        };
        let excess = cache.evict_for(0);
        cache.delete(excess).await;
        Ok(cache)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().expect("poisoned")
    }

    /// Bytes of entries held.
    pub(super) fn bytes(&self) -> u64 {
        self.index().bytes
    }

    /// Waits until no piece waits or is being written (tests).
    #[cfg(test)]
    pub(super) async fn settled(&self) {
        let _all = self.queue.acquire_many((QUEUED_BYTES / QUEUE_UNIT) as u32).await.expect("never closed");
    }

    /// Bytes `[from, to)` of chunk `c` as `version` holds them, if an entry has them and they
    /// match their CRCs: the whole [`CRC_UNIT`]s around them, with their offset in the chunk.
    pub(super) async fn get(&self, c: u64, version: &str, from: u64, to: u64) -> Option<(u64, Bytes)> {
        let (start, end, key) = {
            let mut index = self.index();
            index.tick += 1;
            let tick = index.tick;
            let (&(_, start), piece) = index.pieces.range_mut((c, 0)..=(c, from)).next_back()?;
            if piece.to < to || (piece.version != version && !ignores_version()) {
                return None;
            }
            piece.last_used = tick;
            (start, piece.to, piece.key.clone())
        };
        // Entries start at a segment boundary, a multiple of the unit.
        let unit_from = (from - start) / CRC_UNIT * CRC_UNIT;
        let unit_to = ((to - start).div_ceil(CRC_UNIT) * CRC_UNIT).min(end - start);
        match self.read_verified(&key, version, unit_from, unit_to).await {
            Some(data) => Some((start + unit_from, data)),
            None => {
                // Torn, rotten or gone: never again.
                self.forget(c, start, &key).await;
                None
            }
        }
    }

    /// Reads `[from, to)` of the entry at `key` (offsets within the entry, `from` a multiple
    /// of [`CRC_UNIT`]), checked against the entry's version and CRCs.
    async fn read_verified(&self, key: &str, version: &str, from: u64, to: u64) -> Option<Bytes> {
        let out = self.store.get(key, Some(from..to)).await.ok()?;
        let meta = &out.meta.metadata;
        if meta.get(VERSION_METADATA).map(String::as_str) != Some(version) && !ignores_version() {
            return None;
        }
        if meta.get(UNIT_METADATA) != Some(&CRC_UNIT.to_string()) || out.body.len() as u64 != to - from {
            return None;
        }
        let crcs = format::parse_checksums(meta.get(format::CRC_METADATA)?)?;
        let first = (from / CRC_UNIT) as usize;
        let verified = out
            .body
            .chunks(CRC_UNIT as usize)
            .enumerate()
            .all(|(i, seg)| crcs.get(first + i).copied() == Some(crc32c::crc32c(seg)));
        verified.then_some(out.body)
    }

    /// Keeps `data`, verified bytes `[at, at + len)` of chunk `c` as `version` holds them
    /// (whole segments, `at` a segment boundary), on a task of its own, if the queue has room.
    pub(super) fn keep(self: &Arc<Self>, c: u64, version: String, at: u64, data: Bytes) {
        if data.is_empty() || data.len() as u64 > self.bytes_max {
            return;
        }
        let units = (data.len() as u64).div_ceil(QUEUE_UNIT) as u32;
        let Ok(queued) = self.queue.clone().try_acquire_many_owned(units) else { return };
        let me = self.clone();
        tokio::spawn(async move {
            let _queued = queued;
            let _writing = me.writes.acquire().await.expect("never closed");
            me.write(c, version, at, data).await;
        });
    }

    async fn write(&self, c: u64, version: String, at: u64, data: Bytes) {
        let to = at + data.len() as u64;
        let len = data.len() as u64;
        let key = format!("{}{}", self.prefix, entry_key(c, at, to, &version));
        let metadata = BTreeMap::from([
            (VERSION_METADATA.to_string(), version.clone()),
            (format::CRC_METADATA.to_string(), format::segment_checksums(&data, CRC_UNIT)),
            (UNIT_METADATA.to_string(), CRC_UNIT.to_string()),
        ]);
        let excess = self.evict_for(len);
        self.delete(excess).await;
        if self.store.put(&key, data, metadata, Condition::None).await.is_err() {
            tracing::debug!(key, "the disk cache could not keep a piece");
            return;
        }
        let replaced = {
            let mut index = self.index();
            index.tick += 1;
            let piece = Piece { to, version, key: key.clone(), last_used: index.tick };
            index.bytes += len;
            let old = index.pieces.insert((c, at), piece);
            if let Some(old) = &old {
                index.bytes -= old.to - at;
            }
            old.filter(|old| old.key != key).map(|old| old.key)
        };
        self.delete(replaced.into_iter().collect()).await;
    }

    /// Takes out of the index, least recently used first, entries until `len` more bytes fit;
    /// returns their keys.
    fn evict_for(&self, len: u64) -> Vec<String> {
        let mut index = self.index();
        if index.bytes + len <= self.bytes_max {
            return Vec::new();
        }
        let mut by_age: Vec<(u64, (u64, u64))> = index.pieces.iter().map(|(k, p)| (p.last_used, *k)).collect();
        by_age.sort_unstable();
        let mut keys = Vec::new();
        for (_, at) in by_age {
            if index.bytes + len <= self.bytes_max {
                break;
            }
            let piece = index.pieces.remove(&at).expect("listed");
            index.bytes -= piece.to - at.1;
            keys.push(piece.key);
        }
        keys
    }

    async fn forget(&self, c: u64, start: u64, key: &str) {
        {
            let mut index = self.index();
            if index.pieces.get(&(c, start)).is_some_and(|p| p.key == key) {
                let piece = index.pieces.remove(&(c, start)).expect("present");
                index.bytes -= piece.to - start;
            }
        }
        self.delete(vec![key.to_string()]).await;
    }

    /// Deletes entries' objects (a failure leaves a file that the next open deletes).
    /// Deletes every entry, once the pieces queued are written (a crypto erase: they hold
    /// plaintext of versions now gone).
    pub(super) async fn clear(&self) {
        let _queue = self.queue.acquire_many((QUEUED_BYTES / QUEUE_UNIT) as u32).await.expect("never closed");
        let pieces = {
            let mut index = self.index();
            index.bytes = 0;
            std::mem::take(&mut index.pieces)
        };
        let keys: Vec<String> = pieces.into_values().map(|p| p.key).collect();
        for batch in keys.chunks(1000) {
            self.delete(batch.to_vec()).await;
        }
    }

    async fn delete(&self, keys: Vec<String>) {
        if !keys.is_empty() && self.store.delete_many(keys).await.is_err() {
            tracing::debug!("the disk cache could not delete entries");
        }
    }
}

/// The planted bug of the simulation's mutation check.
fn ignores_version() -> bool {
    crate::mutants::active(crate::mutants::Mutant::DiskCacheIgnoresVersion)
}

/// `<chunk>/<from>-<to>-<version hash>`, in hex.
fn entry_key(c: u64, from: u64, to: u64, version: &str) -> String {
    format!("{c:016x}/{from:08x}-{to:08x}-{:016x}", version_hash(version))
}

fn parse_key(rest: &str) -> Option<(u64, u64, u64, u64)> {
    let (c, name) = rest.split_once('/')?;
    let mut parts = name.split('-');
    let from = u64::from_str_radix(parts.next()?, 16).ok()?;
    let to = u64::from_str_radix(parts.next()?, 16).ok()?;
    let hash = u64::from_str_radix(parts.next()?, 16).ok()?;
    (parts.next().is_none() && from < to).then_some((u64::from_str_radix(c, 16).ok()?, from, to, hash))
}

/// FNV-1a of a version's entity tag: names the entry's file (the exact tag is in its
/// metadata and compared on every read).
fn version_hash(version: &str) -> u64 {
    crate::fnv::fnv1a(version.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = entry_key(0x2a, 0x10000, 0x20000, "\"abc\"");
        assert_eq!(parse_key(&key), Some((0x2a, 0x10000, 0x20000, version_hash("\"abc\""))));
        assert_eq!(parse_key("2a/10000-20000"), None);
        assert_eq!(parse_key("2a/20000-10000-0"), None);
    }
}
