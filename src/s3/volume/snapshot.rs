//! Snapshots of a volume of the versioned layout: a snapshot is a manifest (`manifest.rs`)
//! naming the chunk versions that held the volume's data when it was taken. Taking one copies
//! no object: writes wait while the pages of the dirty chunks are taken from the cache
//! (`snapshot_capture.rs`), then go on while those copies are written as chunk versions, and
//! the manifest is written. The versions a
//! snapshot names are never swept while it exists; deleting it makes them garbage.
//!
//! Crash consistency: every write acknowledged before the snapshot began is in a chunk version
//! it names; no write that began after it is. A crash before the manifest lands leaves no
//! snapshot (its versions are garbage at the next open).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use super::format::ChunkLayout;
use super::manifest::{MANIFEST_FORMAT, Manifest, SNAPSHOTS_DIR, SnapshotName};
use super::snapshot_capture::Captured;
use super::{S3Volume, chunk_map};
use crate::s3::url::S3Url;
use crate::s3::{Condition, ObjectError, ObjectStore};
use crate::storage::BoxFuture;
pub use crate::storage::snapshots::{SnapshotError, SnapshotSummary, Snapshots};

impl From<&Manifest> for SnapshotSummary {
    fn from(m: &Manifest) -> SnapshotSummary {
        SnapshotSummary {
            name: m.name.clone(),
            created_unix_secs: m.created_unix_secs,
            size: m.size,
            chunks: m.holding(),
        }
    }
}

/// Why the snapshots beside a volume could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    /// The store did not list them (nothing is known of any).
    #[error("cannot list {dir}: {error}")]
    List { dir: String, error: ObjectError },
    /// One could not be read, or is not a manifest of this volume.
    #[error("snapshot {name}: {why}")]
    Unreadable { name: String, why: String },
}

impl From<ManifestsError> for String {
    fn from(e: ManifestsError) -> String {
        e.to_string()
    }
}

/// The snapshots beside the volume at `url` (of uuid `uuid`), read without opening it; an
/// unreadable manifest is an error.
pub async fn read_manifests(store: &dyn ObjectStore, url: &S3Url, uuid: &str) -> Result<Vec<Manifest>, ManifestsError> {
    let dir = url.key(SNAPSHOTS_DIR);
    let listed =
        crate::s3::list_all(store, &dir).await.map_err(|error| ManifestsError::List { dir: dir.clone(), error })?;
    let mut out = Vec::new();
    for object in listed {
        let Some(name) = Manifest::name_of_key(&object.key, &dir) else { continue };
        let unreadable = |why: String| ManifestsError::Unreadable { name: name.to_string(), why };
        let got = store.get(&object.key, None).await.map_err(|e| unreadable(format!("cannot read it: {e}")))?;
        let manifest = Manifest::parse(&got.body, &got.meta.metadata, uuid).map_err(|e| unreadable(e.to_string()))?;
        if manifest.name != name {
            return Err(unreadable(format!("its manifest names {}", manifest.name)));
        }
        out.push(manifest);
    }
    Ok(out)
}

impl S3Volume {
    /// Loads the snapshots at open, before the chunk list (whose older versions are garbage
    /// only if no snapshot holds them). A manifest that cannot be read stops every sweep.
    pub(super) async fn load_snapshots(&self) -> Result<(), String> {
        if self.layout == ChunkLayout::Flat {
            return Ok(());
        }
        match read_manifests(&*self.store, &self.url, &self.uuid).await {
            Ok(manifests) => {
                let mut cache = self.cache();
                for m in manifests {
                    cache.snapshots.insert(m.name.clone(), Arc::new(m));
                }
                retain(&mut cache);
                Ok(())
            }
            Err(e @ ManifestsError::List { .. }) => Err(e.to_string()),
            Err(e @ ManifestsError::Unreadable { .. }) => {
                tracing::warn!(volume = %self.url, error = %e, "a snapshot is unreadable: nothing is swept until it is mended or deleted");
                self.cache().sweep_blocked = true;
                Ok(())
            }
        }
    }

    /// The volume's snapshots, oldest name first.
    pub fn snapshots(&self) -> Vec<SnapshotSummary> {
        self.cache().snapshots.values().map(|m| SnapshotSummary::from(&**m)).collect()
    }

    /// Takes a snapshot named `name`: atomic writes and UNMAPs wait while the dirty chunks are
    /// captured (plain writes only for the cache lock; see `S3Volume::snapshot_gate`).
    pub async fn create_snapshot(&self, name: SnapshotName) -> Result<SnapshotSummary, SnapshotError> {
        self.snapshots_possible()?;
        if self.cache().snapshots.contains_key(&name) {
            return Err(SnapshotError::Exists { store: self.url.to_string(), name });
        }
        // Atomic writes and UNMAPs wait from the moment the gate is asked for (it is fair)
        // until it is let go.
        let gate_asked = self.clock.now();
        let (provisional, captured) = {
            let _writes_wait = self.snapshot_gate.write().await;
            self.lease.check("a snapshot").map_err(|e| SnapshotError::Failed(e.to_string()))?;
            let mut cache = self.cache();
            let planted = crate::mutants::active(crate::mutants::Mutant::SnapshotSkipsMerge);
            let captured = if planted { Vec::new() } else { self.capture_dirty(&mut cache) };
            let dirty: BTreeSet<u64> = captured.iter().map(|k| k.c).collect();
            let mut chunks: BTreeMap<u64, u64> = cache
                .live
                .iter()
                .filter(|(c, _)| cache.exists.contains(c) && !dirty.contains(c))
                .map(|(&c, &v)| (c, v))
                .collect();
            chunks.extend(captured.iter().map(|k| (k.c, k.version)));
            // A clone's chunks it has not written (nor zeroed) are its ancestors'.
            let inherited = cache
                .inherited
                .iter()
                .filter(|(c, _)| !chunks.contains_key(c) && !cache.tombstones.contains_key(c))
                .map(|(&c, i)| (c, i.clone()))
                .collect();
            let manifest = Arc::new(Manifest {
                format: MANIFEST_FORMAT,
                name: name.clone(),
                volume_uuid: self.uuid.clone(),
                created_unix_secs: self.clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
                size: self.capacity.load(std::sync::atomic::Ordering::Relaxed),
                chunks,
                inherited,
            });
            // Held from now on, with the versions the captured chunks compose over: the merges
            // of the writes that go on must not sweep them.
            let bases = captured.iter().filter_map(|k| Some((k.c, *cache.live.get(&k.c)?))).collect();
            cache.holding.insert(name.clone(), bases);
            cache.snapshots.insert(name.clone(), manifest.clone());
            retain(&mut cache);
            (manifest, captured)
        };
        let writes_waited = self.clock.now().saturating_sub(gate_asked);
        // Writes go on while the captured chunks are written.
        let mut unfinished = Unfinished { volume: self, name: Some(name.clone()) };
        let mut zero = BTreeSet::new();
        let captured_chunks = captured.len();
        if let Err(e) = self.write_all_captured(captured, &mut zero).await {
            self.forget(&name);
            return Err(e);
        }
        let manifest = {
            let mut chunks = provisional.chunks.clone();
            chunks.retain(|c, _| !zero.contains(c));
            let manifest = Arc::new(Manifest { chunks, ..(*provisional).clone() });
            let mut cache = self.cache();
            cache.snapshots.insert(name.clone(), manifest.clone());
            let bases = cache.holding.remove(&name).unwrap_or_default();
            retain(&mut cache);
            release(&mut cache, bases.into_iter().chain(zero.iter().map(|&c| (c, provisional.chunks[&c]))));
            manifest
        };
        let (body, metadata) = manifest.encode();
        let key = Manifest::key(&self.url, &name);
        // From here a manifest may land, dropped or not.
        unfinished.name = None;
        match self.store.put(&key, body, metadata, Condition::IfNoneMatch).await {
            Ok(_) => {
                tracing::info!(
                    volume = %self.url,
                    snapshot = %name,
                    chunks = manifest.chunks.len(),
                    captured = captured_chunks,
                    writes_waited_us = writes_waited.as_micros() as u64,
                    "snapshot taken"
                );
                Ok(SnapshotSummary::from(&*manifest))
            }
            Err(e) => {
                // Another holder wrote that name (or maybe ours landed): keep the versions
                // until the next open knows for sure.
                if !matches!(e, ObjectError::Indeterminate(_)) {
                    self.forget(&name);
                }
                Err(match e {
                    ObjectError::PreconditionFailed => SnapshotError::Exists { store: self.url.to_string(), name },
                    e => SnapshotError::Failed(format!("cannot write the manifest: {e}")),
                })
            }
        }
    }

    /// Writes the captured chunks, [`super::MERGE_PARALLEL`] at a time, each on a task of its
    /// own (so that their copies and checksums spread over the workers between commands, not
    /// in one poll); notes those found all zeros in `zero`. Dropped, it stops them.
    async fn write_all_captured(&self, captured: Vec<Captured>, zero: &mut BTreeSet<u64>) -> Result<(), SnapshotError> {
        let Some(me) = self.me.upgrade() else {
            return Err(SnapshotError::Failed(format!("{} is closing", self.url)));
        };
        let mut captured = captured.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < super::MERGE_PARALLEL
                && let Some(k) = captured.next()
            {
                let me = me.clone();
                running.spawn(async move { (k.c, me.write_captured(&k).await) });
            }
            let Some(ended) = running.join_next().await else { return Ok(()) };
            match ended.map_err(|e| SnapshotError::Failed(format!("a chunk's write ended: {e}")))? {
                (_, Ok(Some(_))) => {}
                (c, Ok(None)) => _ = zero.insert(c),
                (_, Err(e)) => return Err(e),
            }
        }
    }

    /// Deletes the snapshot `name`: its versions that hold no data now become garbage.
    pub async fn delete_snapshot(&self, name: &SnapshotName) -> Result<(), SnapshotError> {
        self.snapshots_possible()?;
        let Some(manifest) = self.cache().snapshots.get(name).cloned() else {
            return Err(SnapshotError::NotFound { store: self.url.to_string(), name: name.clone() });
        };
        self.lease.check("a snapshot deletion").map_err(|e| SnapshotError::Failed(e.to_string()))?;
        // Say so before looking for clones: a clone being made looks for this marker after
        // its record is there, so one of the two sees the other.
        let marker = super::clone::deleting_marker(&self.url.key(""), name);
        let failed = |what: &str, e: ObjectError| SnapshotError::Failed(format!("cannot {what}: {e}"));
        let body = super::clone::deleting_mark(&manifest);
        self.store
            .put(&marker, body, Default::default(), Condition::None)
            .await
            .map_err(|e| failed("mark the deletion", e))?;
        match super::clone::clones_of(&*self.store, &self.url.key(""), name).await {
            Ok(clones) if clones.is_empty() => {}
            found => {
                self.store.delete(&marker).await.map_err(|e| failed("remove the deletion's marker", e))?;
                let clones = found.map_err(SnapshotError::Failed)?;
                let (store, name) = (self.url.to_string(), name.clone());
                return Err(SnapshotError::HasClones { store, name, clones: clones.join(", ") });
            }
        }
        // The manifest first: once it is gone, nothing holds the versions.
        match self.store.delete(&Manifest::key(&self.url, name)).await {
            Ok(()) | Err(ObjectError::NotFound) => {}
            Err(e) => return Err(failed("delete the manifest", e)),
        }
        self.forget(name);
        match self.store.delete(&marker).await {
            Ok(()) | Err(ObjectError::NotFound) => {}
            Err(e) => {
                tracing::warn!(volume = %self.url, marker, error = %e, "cannot remove a deleted snapshot's marker")
            }
        }
        tracing::info!(volume = %self.url, snapshot = %name, "snapshot deleted");
        Ok(())
    }

    fn snapshots_possible(&self) -> Result<(), SnapshotError> {
        match self.layout {
            ChunkLayout::Versioned => Ok(()),
            ChunkLayout::Flat => Err(SnapshotError::Unsupported(format!(
                "{} is of format {} (made by an older rtgt), whose chunks are overwritten in place: \
                 snapshots need format 3 (export the volume and import it into a new one)",
                self.url,
                self.meta().format_version
            ))),
        }
    }

    /// Drops a snapshot from memory: the versions only it held and that hold no data now
    /// become garbage.
    fn forget(&self, name: &SnapshotName) {
        let mut cache = self.cache();
        let Some(manifest) = cache.snapshots.remove(name) else { return };
        let bases = cache.holding.remove(name).unwrap_or_default();
        retain(&mut cache);
        release(&mut cache, manifest.chunks.iter().map(|(&c, &v)| (c, v)).chain(bases));
    }
}

impl Snapshots for S3Volume {
    fn create_snapshot(&self, name: SnapshotName) -> BoxFuture<'_, Result<SnapshotSummary, SnapshotError>> {
        Box::pin(S3Volume::create_snapshot(self, name))
    }

    fn delete_snapshot<'a>(&'a self, name: &'a SnapshotName) -> BoxFuture<'a, Result<(), SnapshotError>> {
        Box::pin(S3Volume::delete_snapshot(self, name))
    }

    fn snapshots(&self) -> Vec<SnapshotSummary> {
        S3Volume::snapshots(self)
    }
}

/// A snapshot being taken, forgotten if its taking is dropped (a client gone) before its
/// manifest is sent: it would be held in memory, and its versions, for nothing.
struct Unfinished<'a> {
    volume: &'a S3Volume,
    name: Option<SnapshotName>,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.volume.forget(&name);
        }
    }
}

/// Recomputes the versions the snapshots hold.
fn retain(cache: &mut super::cache::Cache) {
    let mut retained: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    let held = cache.snapshots.values().flat_map(|m| m.chunks.iter().map(|(&c, &v)| (c, v)));
    for (c, v) in held.chain(cache.holding.values().flatten().copied()) {
        retained.entry(c).or_default().insert(v);
    }
    cache.retained = retained;
}

/// Versions no longer held by what held them: garbage, unless they hold a chunk's data or
/// something else holds them.
fn release(cache: &mut super::cache::Cache, versions: impl Iterator<Item = (u64, u64)>) {
    for (c, v) in versions {
        if cache.live.get(&c) != Some(&v) {
            chunk_map::supersede(cache, c, v);
        }
    }
}
