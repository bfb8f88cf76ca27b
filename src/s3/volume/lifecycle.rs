//! Deleting a volume (`rtgt volume delete`): everything rtgt keeps under its prefix, under the
//! volume's lease, so that no target opens it half deleted. A volume a live target holds, or
//! one with snapshots, is refused unless forced (the target is then fenced: its lease is taken;
//! the snapshots go with the volume).

use std::sync::Arc;
use std::time::Duration;

use super::format::{CHUNKS_DIR, LEASE_NAME, LOG_DIR, META_NAME, RESERVATIONS_NAME};
use super::lease::{self, Identity, LeaseError, LeaseState, LeaseTiming};
use super::manifest::{Manifest, SNAPSHOTS_DIR, SnapshotName};
use crate::clock::Clock;
use crate::s3::url::S3Url;
use crate::s3::{ObjectError, ObjectStore};

/// Objects deleted at once.
const DELETE_BATCH: usize = 1000;
/// Where `rtgt volume discard-log` sets damaged logs aside.
const DAMAGED_DIR: &str = "damaged/";

/// What a deletion removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Deleted {
    pub chunks: usize,
    pub logs: usize,
    pub snapshots: usize,
    pub bytes: u64,
}

/// Deletes the volume at `url`. `force`: take the lease from a live holder, and delete the
/// volume's snapshots, instead of refusing.
pub async fn delete_volume(
    store: Arc<dyn ObjectStore>,
    url: &S3Url,
    force: bool,
    clock: Arc<dyn Clock>,
    holder: String,
) -> Result<Deleted, String> {
    let (meta, _) = super::S3Volume::read_meta(&*store, url).await?.ok_or_else(|| format!("no volume at {url}"))?;
    let snapshots = snapshot_names(&*store, url).await?;
    refuse_if_cloned(&*store, url, &snapshots).await?;
    if !snapshots.is_empty() && !force {
        return Err(format!(
            "{url} has snapshots ({}): delete them first (rtgt volume snapshot delete), or delete them with the \
             volume with --force",
            snapshots.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    let key = url.key(LEASE_NAME);
    let timing = LeaseTiming::new(Duration::from_secs(30), Duration::from_secs(10));
    let state = Arc::new(LeaseState::new(clock, timing));
    let me = Identity { holder, node: None };
    let taken = match lease::acquire(&*store, &key, &me, force, &state).await {
        Ok(taken) => taken,
        Err(LeaseError::Held { holder }) => {
            return Err(format!(
                "{url} is served by {holder}: stop that target first, or take the volume from it with --force"
            ));
        }
        Err(e) => return Err(format!("{url}: {e}")),
    };
    let keeper = tokio::spawn(lease::keep(store.clone(), key.clone(), me, state, taken));
    let deleted = match mark_deleting(&*store, url, true).await {
        // Look for clones again once marked: a clone being made looks at the mark after its
        // record is there, so one of the two sees the other.
        Ok(()) => match refuse_if_cloned(&*store, url, &snapshot_names(&*store, url).await?).await {
            Ok(()) => delete_contents(&*store, url).await,
            Err(e) => {
                mark_deleting(&*store, url, false).await?;
                Err(e)
            }
        },
        Err(e) => Err(e),
    };
    keeper.abort();
    let deleted = deleted?;
    // The metadata last but one: until it goes, the volume is there (and leased); the lease
    // last, so that a target waiting for it finds no volume.
    delete_all(&*store, vec![url.key(META_NAME)]).await?;
    delete_all(&*store, vec![key]).await?;
    // A clone gone no longer keeps its parent's snapshot.
    if let Some(parent) = &meta.parent {
        let record = format!("{}{}", super::clone::clones_dir(&parent.prefix, &parent.snapshot), meta.uuid);
        delete_all(&*store, vec![record]).await?;
    }
    Ok(deleted)
}

/// A volume whose snapshots have clones is not deleted: they read through to it.
async fn refuse_if_cloned(store: &dyn ObjectStore, url: &S3Url, snapshots: &[SnapshotName]) -> Result<(), String> {
    for name in snapshots {
        let clones = super::clone::clones_of(store, &url.key(""), name).await?;
        if !clones.is_empty() {
            return Err(format!(
                "snapshot {name} of {url} has clones (volume uuids {}), which read through to it: delete them first",
                clones.join(", ")
            ));
        }
    }
    Ok(())
}

/// Marks the metadata as being deleted before anything goes, so that a deletion cut short
/// leaves a volume that refuses to open rather than one that reads with chunks missing
/// (`deleting` false: takes the mark back, for a deletion refused before anything went).
async fn mark_deleting(store: &dyn ObjectStore, url: &S3Url, deleting: bool) -> Result<(), String> {
    let (mut meta, etag) =
        super::S3Volume::read_meta(store, url).await?.ok_or_else(|| format!("no volume at {url}"))?;
    if meta.deleting == deleting {
        return Ok(());
    }
    meta.deleting = deleting;
    let put = super::S3Volume::put_meta_over(store, url, &meta, etag).await;
    put.map(|_| ()).map_err(|e| format!("cannot mark {url} as being deleted (nothing is deleted yet): {e}"))
}

async fn delete_contents(store: &dyn ObjectStore, url: &S3Url) -> Result<Deleted, String> {
    let listed = |dir: &str| {
        let prefix = url.key(dir);
        async move { crate::s3::list_all(store, &prefix).await.map_err(|e| format!("cannot list {prefix}: {e}")) }
    };
    // The manifests first: a deletion cut short leaves no snapshot naming deleted versions.
    let manifests = listed(SNAPSHOTS_DIR).await?;
    delete_all(store, manifests.iter().map(|o| o.key.clone()).collect()).await?;
    let chunks = listed(CHUNKS_DIR).await?;
    let logs = listed(LOG_DIR).await?;
    let damaged = listed(DAMAGED_DIR).await?;
    let deleted = Deleted {
        chunks: chunks.len(),
        logs: logs.len(),
        snapshots: manifests.len(),
        bytes: chunks.iter().chain(&logs).chain(&damaged).map(|o| o.size).sum(),
    };
    let mut keys: Vec<String> = chunks.into_iter().chain(logs).chain(damaged).map(|o| o.key).collect();
    keys.push(url.key(RESERVATIONS_NAME));
    keys.push(url.key(super::transfer::IMPORT_PROGRESS));
    delete_all(store, keys).await?;
    Ok(deleted)
}

/// The names of the volume's snapshots (by their manifests' keys).
async fn snapshot_names(store: &dyn ObjectStore, url: &S3Url) -> Result<Vec<SnapshotName>, String> {
    let dir = url.key(SNAPSHOTS_DIR);
    let listed = crate::s3::list_all(store, &dir).await.map_err(|e| format!("cannot list {dir}: {e}"))?;
    Ok(listed.iter().filter_map(|o| Manifest::name_of_key(&o.key, &dir)).collect())
}

/// Deletes `keys` in batches; a key already gone is fine.
async fn delete_all(store: &dyn ObjectStore, keys: Vec<String>) -> Result<(), String> {
    for batch in keys.chunks(DELETE_BATCH) {
        let results = store.delete_many(batch.to_vec()).await.map_err(|e| format!("cannot delete: {e}"))?;
        for (key, result) in results {
            match result {
                Ok(()) | Err(ObjectError::NotFound) => {}
                Err(e) => return Err(format!("cannot delete {key}: {e}")),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
