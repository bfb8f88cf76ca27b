use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::clock::TokioClock;
use crate::s3::MemObjectStore;
use crate::s3::volume::{CreateSpec, S3Volume, VolumeOptions};
use crate::storage::BlockStore;

const CHUNK: u64 = 64 * 1024;

fn options(holder: &str) -> VolumeOptions {
    VolumeOptions {
        create: Some(CreateSpec { size: 8 * CHUNK, block_size: 512, chunk_size: CHUNK }),
        holder: holder.into(),
        ..VolumeOptions::default()
    }
}

async fn volume_with_data(mem: &Arc<MemObjectStore>, url: &S3Url, holder: &str) -> Arc<S3Volume> {
    let v = S3Volume::open(mem.clone(), url.clone(), options(holder), Arc::new(TokioClock::new())).await.unwrap();
    v.write(0, Bytes::from(vec![7u8; 2 * CHUNK as usize]), false).await.unwrap();
    v.write(5 * CHUNK + 512, Bytes::from(vec![9u8; 512]), true).await.unwrap();
    v
}

fn keys_under(mem: &MemObjectStore, prefix: &str) -> Vec<String> {
    mem.objects().into_keys().filter(|k| k.starts_with(prefix)).collect()
}

#[tokio::test(start_paused = true)]
async fn a_deleted_volume_leaves_nothing_and_its_neighbours_alone() {
    let mem = Arc::new(MemObjectStore::new());
    let url = S3Url::parse("s3://bucket/vol").unwrap();
    let neighbour = S3Url::parse("s3://bucket/vol2").unwrap();
    volume_with_data(&mem, &url, "a").await.close().await.unwrap();
    let v = volume_with_data(&mem, &neighbour, "a").await;
    v.flush().await.unwrap();
    let before = keys_under(&mem, "vol2/");
    let deleted = delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await.unwrap();
    assert!(deleted.chunks >= 3 && deleted.bytes > 0, "{deleted:?}");
    assert_eq!(keys_under(&mem, "vol/"), Vec::<String>::new());
    assert_eq!(keys_under(&mem, "vol2/"), before);
    let again = delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await;
    assert_eq!(again.unwrap_err(), "no volume at s3://bucket/vol");
}

#[tokio::test(start_paused = true)]
async fn a_volume_a_target_serves_is_deleted_only_by_force() {
    let mem = Arc::new(MemObjectStore::new());
    let url = S3Url::parse("s3://bucket/vol").unwrap();
    let _served = volume_with_data(&mem, &url, "a").await;
    let err = delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await.unwrap_err();
    assert!(err.contains("is served by a") && err.contains("--force"), "{err}");
    assert!(!keys_under(&mem, "vol/chunks/").is_empty(), "nothing deleted");
    delete_volume(mem.clone(), &url, true, Arc::new(TokioClock::new()), "cli".into()).await.unwrap();
    assert_eq!(keys_under(&mem, "vol/"), Vec::<String>::new());
}

#[tokio::test(start_paused = true)]
async fn a_volume_with_snapshots_is_deleted_only_by_force_and_its_snapshots_with_it() {
    let mem = Arc::new(MemObjectStore::new());
    let url = S3Url::parse("s3://bucket/vol").unwrap();
    let v = volume_with_data(&mem, &url, "a").await;
    v.create_snapshot(crate::storage::snapshots::SnapshotName::parse("keep").unwrap()).await.unwrap();
    v.close().await.unwrap();
    let err = delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await.unwrap_err();
    assert!(err.contains("has snapshots (keep)") && err.contains("--force"), "{err}");
    assert!(!keys_under(&mem, "vol/chunks/").is_empty(), "nothing deleted");
    let deleted = delete_volume(mem.clone(), &url, true, Arc::new(TokioClock::new()), "cli".into()).await.unwrap();
    assert_eq!(deleted.snapshots, 1);
    assert_eq!(keys_under(&mem, "vol/"), Vec::<String>::new());
}

/// A deletion cut short (here: the chunks' DELETEs refused) leaves a volume that refuses to open,
/// saying how to finish, instead of one that reads with some chunks gone; run again, it finishes.
#[tokio::test(start_paused = true)]
async fn a_deletion_cut_short_leaves_a_volume_that_refuses_to_open_until_it_is_finished() {
    let mem = Arc::new(MemObjectStore::new());
    let url = S3Url::parse("s3://bucket/vol").unwrap();
    volume_with_data(&mem, &url, "a").await.close().await.unwrap();
    mem.refuse_deletes(Some("vol/chunks/"));
    let cut = delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await;
    assert!(cut.is_err(), "the chunks could not be deleted");
    mem.refuse_deletes(None);
    let open = S3Volume::open(mem.clone(), url.clone(), options("a"), Arc::new(TokioClock::new())).await;
    let err = open.err().expect("refused").to_string();
    assert!(err.contains("deletion of this volume began") && err.contains("rtgt volume delete"), "{err}");
    // The lease the cut deletion took expires; the next deletion finishes.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    delete_volume(mem.clone(), &url, false, Arc::new(TokioClock::new()), "cli".into()).await.unwrap();
    assert_eq!(keys_under(&mem, "vol/"), Vec::<String>::new());
}
