//! Clones: a new volume made at once from a snapshot of another in the same bucket, reading
//! through to the snapshot's chunk versions until it writes its own (`chunk_map.rs`). Nothing
//! is copied. The parent's snapshot records the clone (`snapshots/<name>.clones/<uuid>`) and
//! cannot be deleted while it exists, so what the clone reads through to stays.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::format::{ChunkLayout, ParentRef};
use super::manifest::{Inherited, Manifest, SNAPSHOTS_DIR, SnapshotName};
use super::{CreateError, OpenError, S3Volume, VolumeMeta};
use crate::clock::Clock;
use crate::s3::url::S3Url;
use crate::s3::{Condition, ObjectError, ObjectStore};

/// Where the clones of snapshot `name` of the volume whose key prefix is `prefix` are
/// recorded.
pub fn clones_dir(prefix: &str, name: &SnapshotName) -> String {
    format!("{prefix}{SNAPSHOTS_DIR}{name}.clones/")
}

/// Makes a clone at `child` of snapshot `name` of the volume at `parent`: a new volume of
/// the snapshot's size and the parent's geometry and encryption (the same data key, wrapped by
/// the same key), which reads the snapshot's data until it writes its own.
pub async fn clone_volume(
    store: &dyn ObjectStore,
    parent: &S3Url,
    name: &SnapshotName,
    child: &S3Url,
    clock: &dyn Clock,
    seed: u64,
) -> Result<VolumeMeta, CreateError> {
    let failed = |why: String| CreateError::Failed(why);
    if parent.bucket != child.bucket {
        return Err(failed(format!("a clone lives in its parent's bucket: {child} is not in {}", parent.bucket)));
    }
    let (parent_meta, _) = S3Volume::read_meta(store, parent)
        .await
        .map_err(failed)?
        .ok_or_else(|| failed(format!("no volume at {parent}")))?;
    if parent_meta.layout() == ChunkLayout::Flat {
        return Err(failed(format!("{parent} is of format {}: it has no snapshots", parent_meta.format_version)));
    }
    let manifest =
        read_manifest(store, &parent.key(""), &parent_meta.uuid, name).await.map_err(|e| failed(e.to_string()))?;
    let spec = super::CreateSpec { size: manifest.size, ..parent_meta.spec() };
    let meta = VolumeMeta {
        format_version: VolumeMeta::version_for(true, parent_meta.compression.is_some()),
        encryption: parent_meta.encryption.clone(),
        compression: parent_meta.compression,
        parent: Some(ParentRef { prefix: parent.key(""), uuid: parent_meta.uuid.clone(), snapshot: name.clone() }),
        ..S3Volume::new_meta(&spec, clock, seed)
    };
    // The clone's metadata first, marked as being made (it does not open yet), then the
    // record that keeps the snapshot: a record is never without its volume, so gc, which
    // removes the records of clones that are not there, never removes one being made.
    let etag = S3Volume::put_new_meta(store, child, &VolumeMeta { making: true, ..meta.clone() }).await?;
    let record = format!("{}{}", clones_dir(&parent.key(""), name), meta.uuid);
    let created = clock.wall().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let stamp = BTreeMap::from([(RECORD_CREATED.to_string(), created.to_string())]);
    let finished = match store.put(&record, Bytes::from(child.to_string()), stamp, Condition::None).await {
        // Then look again: a deletion of the snapshot or of its volume that began before the
        // record was there did not see it, and says so before it looks for clones (a marker,
        // the volume's `deleting`), so one of the two always sees the other.
        Ok(_) => match snapshot_stays(store, parent, &parent_meta.uuid, name).await {
            Ok(()) => finish_making(store, child, &meta, etag).await,
            Err(why) => Err(why),
        },
        Err(e) => Err(format!("cannot record the clone beside {parent}: {e}")),
    };
    match finished {
        Ok(()) => Ok(meta),
        Err(why) => {
            undo_making(store, child, &meta.uuid, &record).await;
            Err(failed(why))
        }
    }
}

/// Removes what a clone that was not made wrote: its record, and its metadata if it is still
/// its own (a volume made there since is not touched).
async fn undo_making(store: &dyn ObjectStore, child: &S3Url, uuid: &str, record: &str) {
    let undo = async {
        store.delete(record).await.map_err(|e| e.to_string())?;
        match S3Volume::read_meta(store, child).await? {
            Some((meta, _)) if meta.uuid == uuid => {
                store.delete(&child.key(super::format::META_NAME)).await.map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    };
    if let Err(error) = undo.await {
        tracing::warn!(%child, record, error, "cannot remove what a clone that was not made left");
    }
}

/// Writes the clone's metadata without its making mark, over the version `etag` written
/// marked: a clone deleted meanwhile is not made again.
async fn finish_making(
    store: &dyn ObjectStore,
    child: &S3Url,
    meta: &VolumeMeta,
    etag: Option<String>,
) -> Result<(), String> {
    let put = S3Volume::put_meta_over(store, child, meta, etag).await;
    put.map(|_| ()).map_err(|e| format!("cannot finish the clone at {child}: {e}"))
}

/// The metadata key of a clone's record that says when it was made (unix seconds).
const RECORD_CREATED: &str = "created-unix";

/// The marker a snapshot deletion puts before it looks for clones.
pub(super) fn deleting_marker(prefix: &str, name: &SnapshotName) -> String {
    format!("{prefix}{SNAPSHOTS_DIR}{name}.deleting")
}

/// What a deletion's marker holds: its manifest's checksum, so that a marker a deletion cut
/// short left behind does not stop clones of a later snapshot of the same name.
pub(super) fn deleting_mark(manifest: &Manifest) -> Bytes {
    let (_, metadata) = manifest.encode();
    Bytes::from(metadata.get(super::format::CRC_METADATA).cloned().unwrap_or_default())
}

/// Whether snapshot `name` of the volume at `parent` (of uuid `uuid`) stays: its volume is
/// there and not being deleted, its manifest is there and no deletion of it has begun.
async fn snapshot_stays(
    store: &dyn ObjectStore,
    parent: &S3Url,
    uuid: &str,
    name: &SnapshotName,
) -> Result<(), String> {
    match S3Volume::read_meta(store, parent).await? {
        Some((meta, _)) if meta.uuid == uuid && !meta.deleting => {}
        _ => return Err(format!("{parent} is being deleted, or is gone: no clone of it is made")),
    }
    let manifest = read_manifest(store, &parent.key(""), uuid, name).await.map_err(|e| e.to_string())?;
    match store.get(&deleting_marker(&parent.key(""), name), None).await {
        Ok(marker) if marker.body == deleting_mark(&manifest) => {
            Err(format!("snapshot {name} of {parent} is being deleted: no clone of it is made"))
        }
        Ok(_) | Err(ObjectError::NotFound) => Ok(()),
        Err(e) => Err(format!("cannot check snapshot {name} of {parent}: {e}")),
    }
}

/// Reads snapshot `name` of the volume (of uuid `uuid`) whose key prefix is `prefix`.
pub(super) async fn read_manifest(
    store: &dyn ObjectStore,
    prefix: &str,
    uuid: &str,
    name: &SnapshotName,
) -> Result<Manifest, OpenError> {
    let key = format!("{prefix}{SNAPSHOTS_DIR}{name}.json");
    let got = match store.get(&key, None).await {
        Ok(got) => got,
        Err(ObjectError::NotFound) => return Err(OpenError::Refused(format!("no snapshot {name} at {key}"))),
        Err(e) => return Err(OpenError::Unavailable(format!("cannot read {key}: {e}"))),
    };
    Manifest::parse(&got.body, &got.meta.metadata, uuid).map_err(|e| OpenError::Refused(format!("{key}: {e}")))
}

/// What a clone reads through to, per chunk (nothing for a volume that is no clone).
pub(super) async fn inherited(
    store: &dyn ObjectStore,
    meta: &VolumeMeta,
) -> Result<BTreeMap<u64, Inherited>, OpenError> {
    let Some(parent) = &meta.parent else { return Ok(BTreeMap::new()) };
    let manifest = read_manifest(store, &parent.prefix, &parent.uuid, &parent.snapshot).await?;
    Ok(manifest.as_inherited(&parent.prefix))
}

/// The uuids of the clones made from snapshot `name` of the volume whose key prefix is
/// `prefix`.
pub async fn clones_of(store: &dyn ObjectStore, prefix: &str, name: &SnapshotName) -> Result<Vec<String>, String> {
    let dir = clones_dir(prefix, name);
    let listed = crate::s3::list_all(store, &dir).await.map_err(|e| format!("cannot list {dir}: {e}"))?;
    Ok(listed.into_iter().map(|o| o.key[dir.len()..].to_string()).collect())
}

/// Deletes the records of clones of the volume at `url` (of uuid `uuid`) that do not exist
/// (a clone whose creation was cut short, or deleted by hand): they would keep their
/// snapshots forever. Returns how many went.
pub async fn forget_missing_clones(store: &dyn ObjectStore, url: &S3Url, uuid: &str) -> Result<u64, String> {
    let mut forgotten = 0;
    for manifest in super::snapshot::read_manifests(store, url, uuid).await? {
        let dir = clones_dir(&url.key(""), &manifest.name);
        for record in crate::s3::list_all(store, &dir).await.map_err(|e| format!("cannot list {dir}: {e}"))? {
            let clone_uuid = &record.key[dir.len()..];
            let got = store.get(&record.key, None).await.map_err(|e| format!("cannot read {}: {e}", record.key))?;
            let child = String::from_utf8_lossy(&got.body).to_string();
            let exists = match S3Url::parse(&child) {
                Ok(child) => S3Volume::read_meta(store, &child).await?.is_some_and(|(m, _)| m.uuid == clone_uuid),
                Err(_) => false,
            };
            if !exists {
                store.delete(&record.key).await.map_err(|e| format!("cannot delete {}: {e}", record.key))?;
                forgotten += 1;
            }
        }
    }
    Ok(forgotten)
}
