//! Where each chunk's data lives. A volume of the versioned layout (format 3) never
//! overwrites a chunk object: every merge writes a new version, `chunks/<index>/<version>`,
//! and the newest version of a chunk is its data. Versions are `epoch << EPOCH_SHIFT |
//! counter`, so a later open (or a taker of the lease) always writes newer ones than an
//! earlier holder. Older versions are garbage, deleted in batches in the background, unless a
//! snapshot holds them (`snapshot.rs`). Volumes of formats 1 and 2 keep one object per chunk,
//! `chunks/<index>`, overwritten in place.
//!
//! A chunk that becomes all zeros gets a tombstone, an empty version that reads as zeros, as
//! its newest; what it replaces is garbage. The newest version of a chunk is never deleted
//! while it is the newest (a tombstone goes only once a newer version has landed): a PUT of an
//! older version may still land (sent by an attempt that timed out, or by a holder that died),
//! and it must land behind a newer one, never over nothing, where it would be the data again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::StreamExt;

use super::S3Volume;
use super::cache::Cache;
use super::format::{self, ChunkLayout, EPOCH_SHIFT};
use crate::s3::{Condition, ObjectError};

/// Objects deleted by one request.
const SWEEP_BATCH: usize = 1000;

/// Tombstones PUT at once (empty objects: the requests' round trips are their cost; an UNMAP
/// of 512 MiB, 128 chunks, waits for four rounds of them).
const TOMBSTONES_AT_ONCE: usize = 32;

/// How a chunk object's PUT ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Landed {
    Yes,
    /// Indeterminate: it may be there.
    Maybe,
}

/// An object of a chunk: the chunk's index, the object's key.
type ChunkKey = (u64, String);

/// Per chunk, how making it zero in the store (its tombstone, or its deletion) ended.
pub(super) type Deletions = Vec<(u64, Result<(), ObjectError>)>;

impl S3Volume {
    /// The version numbers of this open begin after its epoch's.
    pub(super) fn start_versions(&self, epoch: u64) {
        self.next_version.store(epoch << EPOCH_SHIFT, Ordering::SeqCst);
    }

    /// The key a new object of chunk `c` goes to: a new version, or the chunk's one key.
    pub(super) fn new_chunk_key(&self, c: u64) -> (String, Option<u64>) {
        match self.layout {
            ChunkLayout::Flat => (format::chunk_key(&self.url, c), None),
            ChunkLayout::Versioned => {
                let version = self.next_version.fetch_add(1, Ordering::SeqCst) + 1;
                (format::chunk_version_key(&self.url, c, version), Some(version))
            }
        }
    }

    /// The key that holds chunk `c`'s data now (None: no object holds it): the chunk's own
    /// newest version, or in a clone the ancestor's it reads through to.
    pub(super) fn chunk_key_now(&self, cache: &Cache, c: u64) -> Option<String> {
        match self.layout {
            ChunkLayout::Flat => Some(format::chunk_key(&self.url, c)),
            ChunkLayout::Versioned => self.own_key_now(cache, c).or_else(|| {
                let i = cache.inherited.get(&c).filter(|_| !cache.tombstones.contains_key(&c))?;
                Some(format::chunk_version_key_in(&i.prefix, c, i.version))
            }),
        }
    }

    /// The key of chunk `c`'s own newest data version, if it has one.
    pub(super) fn own_key_now(&self, cache: &Cache, c: u64) -> Option<String> {
        match self.layout {
            ChunkLayout::Flat => Some(format::chunk_key(&self.url, c)),
            ChunkLayout::Versioned => cache.live.get(&c).map(|&v| format::chunk_version_key(&self.url, c, v)),
        }
    }

    /// Records that a PUT of data `version` of chunk `c` ended as `landed`. A version that
    /// landed is the chunk's data from now on, and what it replaced is garbage (unless a
    /// snapshot holds it); one that may have landed is garbage (the cache still holds what it
    /// has), unless the chunk had no object.
    pub(super) fn note_chunk_put(&self, cache: &mut Cache, c: u64, version: Option<u64>, landed: Landed) {
        let Some(version) = version else { return };
        match landed {
            Landed::Yes => {
                if let Some(old) = cache.live.insert(c, version) {
                    supersede(cache, c, old);
                }
                if let Some(tombstone) = cache.tombstones.remove(&c) {
                    supersede(cache, c, tombstone);
                }
            }
            Landed::Maybe if cache.live.contains_key(&c) => supersede(cache, c, version),
            Landed::Maybe => {
                cache.live.insert(c, version);
            }
        }
    }

    /// Builds the chunk map from the listed versions `(chunk, version, is a tombstone)`: the
    /// newest version of each chunk is its data (or its zeros), the others are garbage unless
    /// a snapshot holds them. Returns the chunks that hold data.
    pub(super) fn note_listed(&self, cache: &mut Cache, listed: Vec<(u64, u64, bool)>) -> BTreeSet<u64> {
        let mut newest: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let mut older: Vec<(u64, u64)> = Vec::new();
        for (c, v, tombstone) in listed {
            match newest.get(&c) {
                Some(&(n, _)) if n > v => older.push((c, v)),
                Some(&(n, _)) => {
                    older.push((c, n));
                    newest.insert(c, (v, tombstone));
                }
                None => {
                    newest.insert(c, (v, tombstone));
                }
            }
        }
        for (c, v) in older {
            supersede(cache, c, v);
        }
        let mut data = BTreeSet::new();
        for (c, (v, tombstone)) in newest {
            if tombstone {
                cache.tombstones.insert(c, v);
            } else {
                cache.live.insert(c, v);
                data.insert(c);
            }
        }
        data
    }

    /// Makes the chunks `chunks` (zero now) read as zeros in the store: in the versioned
    /// layout each gets a tombstone (a PUT each, several at once); in the flat layout its object
    /// is deleted.
    pub(super) async fn zero_chunk_objects(&self, chunks: &[u64]) -> Result<Deletions, ObjectError> {
        if self.layout == ChunkLayout::Flat {
            return self.delete_all_versions(chunks).await;
        }
        let (deleted, buried) = self.planted_deletions(chunks);
        let mut outcome = self.delete_all_versions(&deleted).await?;
        // A stream, not groups in lockstep: each PUT that ends lets the next begin, so one slow
        // request holds up only its own chunk.
        let buried = futures::stream::iter(buried).map(|c| async move { (c, self.put_tombstone(c).await) });
        outcome.extend(buried.buffer_unordered(TOMBSTONES_AT_ONCE).collect::<Vec<_>>().await);
        Ok(outcome)
    }

    /// The chunks to delete every version of, and those to bury under a tombstone: all buried,
    /// unless the planted mutant deletes those no snapshot or ancestor holds (as before the
    /// tombstone rule).
    fn planted_deletions(&self, chunks: &[u64]) -> (Vec<u64>, Vec<u64>) {
        if !crate::mutants::active(crate::mutants::Mutant::ZeroDeletesNewest) {
            return (Vec::new(), chunks.to_vec());
        }
        let cache = self.cache();
        let held = |c: &u64| cache.retained.get(c).is_some_and(|v| !v.is_empty()) || cache.inherited.contains_key(c);
        chunks.iter().partition(|c| !held(c))
    }

    /// Deletes every version of `chunks`, older ones first, then the newest: the flat layout's
    /// one object each (in the versioned layout, only the planted mutant does this).
    async fn delete_all_versions(&self, chunks: &[u64]) -> Result<Deletions, ObjectError> {
        let (older, newest): (Vec<ChunkKey>, Vec<ChunkKey>) = {
            let cache = self.cache();
            let key = |c: u64, v: u64| (c, format::chunk_version_key(&self.url, c, v));
            let older = chunks
                .iter()
                .flat_map(|&c| cache.garbage.get(&c).into_iter().flatten().map(move |&v| key(c, v)))
                .collect();
            let newest = chunks
                .iter()
                .flat_map(|&c| {
                    let tombstone = cache.tombstones.get(&c).map(|&v| key(c, v));
                    self.own_key_now(&cache, c).map(|k| (c, k)).into_iter().chain(tombstone)
                })
                .collect();
            (older, newest)
        };
        let mut outcome: Deletions = Vec::new();
        let mut failed: BTreeSet<u64> = BTreeSet::new();
        for (c, result) in self.delete_keys(older).await? {
            if let Err(e) = result
                && failed.insert(c)
            {
                outcome.push((c, Err(e)));
            }
        }
        for &c in chunks.iter().filter(|c| !failed.contains(c)) {
            self.cache().garbage.remove(&c);
        }
        let newest: Vec<(u64, String)> = newest.into_iter().filter(|(c, _)| !failed.contains(c)).collect();
        for (c, result) in self.delete_keys(newest).await? {
            if let Err(e) = result
                && failed.insert(c)
            {
                outcome.push((c, Err(e)));
            }
        }
        let mut cache = self.cache();
        for &c in chunks.iter().filter(|c| !failed.contains(c)) {
            cache.live.remove(&c);
            cache.tombstones.remove(&c);
            outcome.push((c, Ok(())));
        }
        Ok(outcome)
    }

    /// Writes a tombstone as chunk `c`'s newest version; what it replaces is garbage unless
    /// a snapshot holds it.
    async fn put_tombstone(&self, c: u64) -> Result<(), ObjectError> {
        let (key, version) = self.new_chunk_key(c);
        let version = version.expect("versioned layout: only its snapshots hold versions");
        let result = self.store.put(&key, Bytes::new(), BTreeMap::new(), Condition::None).await;
        let mut cache = self.cache();
        match &result {
            Ok(_) => {
                if let Some(old) = cache.live.remove(&c) {
                    supersede(&mut cache, c, old);
                }
                if let Some(old) = cache.tombstones.insert(c, version) {
                    supersede(&mut cache, c, old);
                }
            }
            // It may be there (a failure may hide an attempt that landed): garbage. The chunk
            // stays dirty and zero in the cache, with its zero record in a log.
            Err(_) => supersede(&mut cache, c, version),
        }
        result.map(|_| ())
    }

    /// Deletes `keys` (each labelled: a chunk's index, a log's sequence number) in batches of
    /// [`SWEEP_BATCH`]; a key already gone is deleted. Answers in the order asked.
    pub(super) async fn delete_keys(&self, keys: Vec<(u64, String)>) -> Result<Deletions, ObjectError> {
        let mut out = Vec::with_capacity(keys.len());
        for batch in keys.chunks(SWEEP_BATCH) {
            let names: Vec<String> = batch.iter().map(|(_, k)| k.clone()).collect();
            let mut results: BTreeMap<String, Result<(), ObjectError>> =
                self.store.delete_many(names).await?.into_iter().collect();
            for (c, key) in batch {
                let result =
                    results.remove(key).unwrap_or_else(|| Err(ObjectError::failed(format!("{key}: no answer"))));
                out.push((*c, result.or_else(|e| if matches!(e, ObjectError::NotFound) { Ok(()) } else { Err(e) })));
            }
        }
        Ok(out)
    }

    /// Deletes the garbage versions known now (a superseded tombstone among them), in batches.
    /// A failure leaves them for the next sweep: garbage costs storage, never correctness.
    pub(super) async fn sweep_garbage(&self) {
        if self.cache().sweep_blocked || self.lease.check("a sweep").is_err() {
            return;
        }
        let versions: Vec<(u64, u64)> = {
            let cache = self.cache();
            // Only versions older than one that surely holds the chunk: a version that may
            // have landed after it is what a taker of the lease would find newest, and a
            // DELETE of it still on its way when this holder dies would land after the
            // taker listed it.
            let superseded = |c: u64, v: u64| {
                cache.live.get(&c).is_some_and(|&l| l > v) || cache.tombstones.get(&c).is_some_and(|&t| t > v)
            };
            cache
                .garbage
                .iter()
                .flat_map(|(&c, versions)| versions.iter().map(move |&v| (c, v)))
                .filter(|&(c, v)| superseded(c, v))
                .collect()
        };
        self.sweep(versions).await;
    }

    /// Deletes the garbage known now (`rtgt volume gc`: the open that precedes it listed every
    /// version); returns how many objects went, and how many are left (a failure, or an
    /// unreadable manifest that stops the sweep).
    pub async fn collect_garbage(&self) -> (u64, u64) {
        let before = self.stats.versions_swept.load(Ordering::Relaxed);
        self.sweep_garbage().await;
        let swept = self.stats.versions_swept.load(Ordering::Relaxed) - before;
        let cache = self.cache();
        let left = cache.garbage.values().map(|v| v.len() as u64).sum::<u64>();
        (swept, left)
    }

    async fn sweep(&self, versions: Vec<(u64, u64)>) {
        for batch in versions.chunks(SWEEP_BATCH) {
            let keys = batch.iter().map(|&(c, v)| (c, format::chunk_version_key(&self.url, c, v))).collect();
            let results = match self.delete_keys(keys).await {
                Ok(results) => results,
                Err(e) => {
                    tracing::debug!(volume = %self.url, error = %e, "garbage sweep failed; retried later");
                    return;
                }
            };
            let mut cache = self.cache();
            for (&(c, v), (_, result)) in batch.iter().zip(results) {
                if result.is_err() {
                    continue;
                }
                self.stats.versions_swept.fetch_add(1, Ordering::Relaxed);
                if let Some(left) = cache.garbage.get_mut(&c) {
                    left.remove(&v);
                    if left.is_empty() {
                        cache.garbage.remove(&c);
                    }
                }
            }
        }
    }
}

/// Version `v` of chunk `c` no longer holds the chunk's data: garbage, unless a snapshot
/// holds it.
pub(super) fn supersede(cache: &mut Cache, c: u64, v: u64) {
    let planted = crate::mutants::active(crate::mutants::Mutant::SweepHeldVersions);
    if planted || !cache.retained.get(&c).is_some_and(|held| held.contains(&v)) {
        cache.garbage.entry(c).or_default().insert(v);
    }
}
