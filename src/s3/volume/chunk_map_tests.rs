//! The versioned layout: every merge writes a new version of its chunk, the newest version is
//! the chunk's data (after a crash too), superseded ones are swept, a zeroed chunk keeps a
//! tombstone that a late version lands behind, and a read that raced a sweep reads the newer
//! version, never zeros.

use super::*;

const CHUNK_64K: u64 = 64 * 1024;

fn fill(byte: u8) -> Bytes {
    Bytes::from(vec![byte; CHUNK_64K as usize])
}

/// The keys of chunk `c`'s versions in the store, oldest first.
fn versions(h: &Harness, c: u64) -> Vec<String> {
    let prefix = format!("{}/", format::chunk_key(&url(), c));
    h.chunk_objects().into_keys().filter(|k| k.starts_with(&prefix)).collect()
}

/// Writes chunk 0 full of `byte` and merges it.
async fn merged(v: &S3Volume, byte: u8) {
    v.write(0, fill(byte), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_merge_writes_a_new_version_and_the_sweep_deletes_the_old() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    assert_eq!(v.meta().layout(), format::ChunkLayout::Versioned);
    merged(&v, 1).await;
    let first = versions(&h, 0);
    assert_eq!(first.len(), 1);
    merged(&v, 2).await;
    let both = versions(&h, 0);
    assert_eq!(both.len(), 2, "the older version is garbage until swept");
    assert_eq!(both[0], first[0], "versions grow: the new one sorts last");
    assert!(h.mem.objects()[&first[0]] == fill(1), "a version is never overwritten");
    v.sweep_garbage().await;
    assert_eq!(versions(&h, 0), both[1..]);
    assert!(v.read(0, CHUNK_64K as usize).await.unwrap() == fill(2), "read back other data");
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_newest_version_wins_after_a_crash_and_the_rest_is_swept() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    merged(&v, 1).await;
    merged(&v, 2).await;
    v.abandon();
    drop(v);
    assert_eq!(versions(&h, 0).len(), 2, "the crash left the older version behind");
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    assert_eq!(v.collect_garbage().await, (1, 0), "gc deletes what the crash left");
    assert_eq!(versions(&h, 0).len(), 1);
    assert!(v.read(0, CHUNK_64K as usize).await.unwrap() == fill(2), "read back other data");
    // A version taken by this open sorts after every version of the last.
    merged(&v, 3).await;
    v.sweep_garbage().await;
    let left = versions(&h, 0);
    assert_eq!(left.len(), 1);
    assert!(h.mem.objects()[&left[0]] == fill(3), "the newest version holds other data");
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_zeroed_chunk_gets_a_tombstone_and_older_versions_never_resurface() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    merged(&v, 1).await;
    merged(&v, 2).await;
    let before = versions(&h, 0);
    // A FUA write of zeros: a zero record in a log, then the tombstone (which fails).
    h.mem.refuse_puts(Some("vol/chunks/"));
    assert!(v.write(0, Bytes::from(vec![0u8; CHUNK_64K as usize]), true).await.is_err());
    assert_eq!(versions(&h, 0), before, "nothing is deleted before the tombstone lands");
    v.abandon();
    drop(v);
    h.mem.refuse_puts(None);
    // The write failed: the chunk reads as before it or as zeros, never as the older version.
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let read = v.read(0, CHUNK_64K as usize).await.unwrap();
    assert!(read == fill(2) || read.iter().all(|&b| b == 0), "read {} after the crash", read[0]);
    v.write(0, Bytes::from(vec![0u8; CHUNK_64K as usize]), true).await.unwrap();
    v.close().await.unwrap();
    let left = versions(&h, 0);
    assert_eq!(left.len(), 1, "only the tombstone is left: {left:?}");
    assert!(h.mem.objects()[&left[0]].is_empty());
}

/// A PUT of a version may land after the chunk was zeroed (a request that timed out, held on
/// its way): behind the tombstone, it never becomes the chunk's data again. When the zeroed
/// chunk's versions were deleted instead, it came back at the next open.
#[tokio::test(start_paused = true)]
async fn a_version_landing_again_after_its_chunk_was_zeroed_stays_behind_the_tombstone() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    merged(&v, 1).await;
    let first = versions(&h, 0)[0].clone();
    let late = h.mem.get(&first, None).await.unwrap();
    v.unmap(0, CHUNK_64K).await.unwrap();
    v.sweep_garbage().await;
    assert!(!versions(&h, 0).contains(&first), "the zeroed chunk's data version is swept");
    h.mem.put(&first, late.body, late.meta.metadata, Condition::None).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let read = v.read(0, CHUNK_64K as usize).await.unwrap();
    assert!(read.iter().all(|&b| b == 0), "the unmapped data came back as {}", read[0]);
    v.close().await.unwrap();
}

/// Starts a merge of chunk 0 whose PUT waits on its way: this open's versions of chunk 0 are
/// held (epoch 1: "000001...").
async fn merge_chunk_0_held(h: &Harness, v: &Arc<S3Volume>) -> tokio::task::JoinHandle<StoreResult<()>> {
    h.mem.hold(&format!("{}/000001", format::chunk_key(&url(), 0)));
    let merge = start({
        let v = v.clone();
        async move { v.merge_chunk(0).await }
    })
    .await;
    assert!(versions(h, 0).is_empty(), "the merge's PUT is on its way");
    merge
}

/// A holder that died with a chunk's first version on its way: the next open replays its logs,
/// in which the chunk ends as zeros, and must leave a tombstone newer than that version, though
/// it found no object of the chunk.
#[tokio::test(start_paused = true)]
async fn a_first_version_landing_after_its_writer_died_stays_behind_the_replayed_zeros() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, Bytes::from(vec![0x11u8; 4096]), true).await.unwrap();
    let merge = merge_chunk_0_held(&h, &v).await;
    v.write(0, Bytes::from(vec![0u8; 4096]), true).await.unwrap();
    v.abandon();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    h.mem.release_all();
    merge.await.unwrap().unwrap();
    assert!(h.mem.objects().values().any(|b| b[0] == 0x11), "the dead holder's version landed");
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let read = v.read(0, CHUNK_64K as usize).await.unwrap();
    assert!(read.iter().all(|&b| b == 0), "the overwritten data came back as {}", read[0]);
    v.close().await.unwrap();
}

/// The same for a version of data no log holds (a write not synced, merged straight into its
/// chunk): the holder dies with the PUT on its way, the next open reads the chunk without it,
/// and the PUT lands after that open listed the chunks. The merge named the chunk in a log
/// first, so that open wrote the chunk again and the late version lands behind: the open
/// after reads what the first one did (without the log, the unsynced data came back).
#[tokio::test(start_paused = true)]
async fn a_late_version_of_unlogged_data_stays_behind_what_the_next_open_read() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, Bytes::from(vec![0x11u8; 4096]), false).await.unwrap(); // not synced: no log
    let merge = merge_chunk_0_held(&h, &v).await;
    v.abandon();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let first = v.read(0, 4096).await.unwrap();
    h.mem.release_all();
    assert!(merge.await.unwrap().is_ok(), "the dead holder's PUT landed");
    assert!(h.mem.objects().values().any(|b| b.first() == Some(&0x11)), "the dead holder's version landed");
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let then = v.read(0, 4096).await.unwrap();
    assert!(then == first, "the chunk read {} after one open, {} after the next", first[0], then[0]);
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_read_that_raced_a_sweep_reads_the_newer_version() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    merged(&v, 1).await;
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap(); // nothing cached
    let old = versions(&h, 0).pop().unwrap();
    h.mem.hold_gets(&old);
    let reader = tokio::spawn({
        let v = v.clone();
        async move { v.read(0, 4096).await }
    });
    while h.mem.gets_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    merged(&v, 7).await;
    v.sweep_garbage().await;
    assert!(!h.mem.objects().contains_key(&old), "the version the read is after is gone");
    h.mem.release_all();
    let raced = reader.await.unwrap().unwrap();
    assert!(
        raced.iter().all(|&b| b == 1) || raced.iter().all(|&b| b == 7),
        "read {} (zeros: the retry is gone)",
        raced[0]
    );
    v.close().await.unwrap();
}

/// A volume of the flat layout (formats 1 and 2) keeps one object per chunk, overwritten.
#[tokio::test(start_paused = true)]
async fn a_flat_volume_keeps_one_object_per_chunk() {
    let h = Harness::new();
    h.put_flat_volume(CHUNK_64K, 4).await;
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    assert_eq!(v.meta().layout(), format::ChunkLayout::Flat);
    merged(&v, 1).await;
    merged(&v, 2).await;
    assert_eq!(h.chunk_objects().into_keys().collect::<Vec<_>>(), vec![format::chunk_key(&url(), 0)]);
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    assert!(v.read(0, CHUNK_64K as usize).await.unwrap() == fill(2), "read back other data");
    v.close().await.unwrap();
}
