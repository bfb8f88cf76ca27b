//! Snapshots: a snapshot holds exactly what was written before it, through later writes,
//! UNMAP, sweeps, crashes and reopens; writes wait while it is taken; deleting it frees its
//! versions.

use super::manifest::{Manifest, SnapshotName};
use super::snapshot::SnapshotError;
use super::*;

const CHUNK_64K: u64 = 64 * 1024;

fn fill(byte: u8) -> Bytes {
    Bytes::from(vec![byte; CHUNK_64K as usize])
}

fn name(n: &str) -> SnapshotName {
    SnapshotName::parse(n).unwrap()
}

/// The manifest of snapshot `n` as stored.
async fn stored_manifest(h: &Harness, v: &S3Volume, n: &str) -> Manifest {
    let got = h.mem.get(&Manifest::key(&url(), &name(n)), None).await.unwrap();
    Manifest::parse(&got.body, &got.meta.metadata, &v.meta().uuid).unwrap()
}

/// What the snapshot holds of chunk `c`: the bytes of the version it names, or None (zeros).
fn held(h: &Harness, m: &Manifest, c: u64) -> Option<Bytes> {
    let v = *m.chunks.get(&c)?;
    Some(h.mem.objects()[&format::chunk_version_key(&url(), c, v)].clone())
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_holds_what_was_written_before_it_through_writes_unmaps_and_sweeps() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    v.write(CHUNK_64K, fill(2), false).await.unwrap(); // acknowledged, only in the cache
    v.write(2 * CHUNK_64K, fill(3), true).await.unwrap(); // in a log
    let s = v.create_snapshot(name("s1")).await.unwrap();
    assert_eq!((s.chunks, s.size), (3, 4 * CHUNK_64K));
    // Later changes: an overwrite, an UNMAP, a write to a chunk that had none.
    v.write(0, fill(4), false).await.unwrap();
    v.unmap(CHUNK_64K, CHUNK_64K).await.unwrap();
    v.write(3 * CHUNK_64K, fill(5), false).await.unwrap();
    v.flush().await.unwrap();
    v.merge_chunks(&v.dirty_chunks()).await.unwrap();
    v.sweep_garbage().await;
    let m = stored_manifest(&h, &v, "s1").await;
    let holds: Vec<Option<u8>> = (0..4).map(|c| held(&h, &m, c).map(|b| b[0])).collect();
    assert_eq!(holds, [Some(1), Some(2), Some(3), None]);
    assert!((0..3).all(|c| held(&h, &m, c) == Some(fill(c as u8 + 1))), "a held version holds other data");
    // The volume reads its own data: chunk 1's newest version is a tombstone.
    assert!(
        v.read(CHUNK_64K, CHUNK_64K as usize).await.unwrap().iter().all(|&b| b == 0),
        "the unmapped chunk is not zeros"
    );
    // Through a crash and a reopen, with its sweeps.
    v.abandon();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.sweep_garbage().await;
    assert_eq!(v.snapshots().len(), 1);
    assert!(held(&h, &m, 1) == Some(fill(2)), "swept while held");
    assert!(v.read(0, CHUNK_64K as usize).await.unwrap() == fill(4), "read back other data");
    assert!(
        v.read(CHUNK_64K, CHUNK_64K as usize).await.unwrap().iter().all(|&b| b == 0),
        "the unmapped chunk is not zeros"
    );
    assert!(v.read(3 * CHUNK_64K, CHUNK_64K as usize).await.unwrap() == fill(5), "read back other data");
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn deleting_a_snapshot_sweeps_what_only_it_held() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    v.write(CHUNK_64K, fill(2), false).await.unwrap();
    v.create_snapshot(name("s1")).await.unwrap();
    // Nothing changed: the copies s1 wrote are the chunks' data, and s2 holds the same.
    assert!(v.dirty_chunks().is_empty());
    v.create_snapshot(name("s2")).await.unwrap();
    v.write(0, fill(3), false).await.unwrap();
    v.unmap(CHUNK_64K, CHUNK_64K).await.unwrap();
    v.merge_chunks(&v.dirty_chunks()).await.unwrap();
    let before = h.chunk_objects().len();
    v.delete_snapshot(&name("s1")).await.unwrap();
    v.sweep_garbage().await;
    assert_eq!(h.chunk_objects().len(), before, "s2 still holds the same versions");
    assert!(matches!(v.delete_snapshot(&name("s1")).await, Err(SnapshotError::NotFound { .. })));
    v.delete_snapshot(&name("s2")).await.unwrap();
    v.sweep_garbage().await;
    // Left: chunk 0's newest version and chunk 1's tombstone (a chunk's newest version stays).
    let left: Vec<String> = h.chunk_objects().into_keys().collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(h.chunk_objects()[&left[0]] == fill(3), "the newest version holds other data");
    assert!(h.chunk_objects()[&left[1]].is_empty(), "chunk 1's tombstone");
    assert!(h.mem.objects().keys().all(|k| !k.contains("/snapshots/")));
    v.close().await.unwrap();
}

/// Writes wait only while the snapshot copies the dirty chunks out of the cache: the one that
/// comes while a copy is being written (its base held up) goes on, and is not in it.
#[tokio::test(start_paused = true)]
async fn writes_go_on_while_a_snapshot_is_written_and_are_not_in_it() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap(); // nothing cached
    v.write(0, block(5), false).await.unwrap(); // a partial write: its merge reads the chunk
    let old = h.chunk_objects().into_keys().next().unwrap();
    h.mem.hold_gets(&old);
    let snapshot = tokio::spawn({
        let v = v.clone();
        async move { v.create_snapshot(name("s")).await }
    });
    while h.mem.gets_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    v.write(0, block(9), false).await.unwrap();
    assert!(!snapshot.is_finished());
    h.mem.release_all();
    snapshot.await.unwrap().unwrap();
    let m = stored_manifest(&h, &v, "s").await;
    let chunk = held(&h, &m, 0).unwrap();
    assert_eq!(&chunk[..BS as usize], &block(5)[..]);
    assert!(chunk[BS as usize..].iter().all(|&b| b == 1));
    assert!(v.read(0, BS as usize).await.unwrap() == block(9), "read back other data");
    v.close().await.unwrap();
}

/// Whether `done` holds within a few thousand turns of the other tasks.
async fn soon(done: impl Fn() -> bool) -> bool {
    for _ in 0..10_000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    false
}

/// A plain write waiting for room in a full cache (its merges held up by the store) does not
/// hold up a snapshot: the snapshot captures what was acknowledged, the write goes in after.
#[tokio::test(start_paused = true)]
async fn a_write_waiting_for_room_does_not_hold_up_a_snapshot() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap(); // room for three chunks' pages, less a few
    v.write(0, fill(1), false).await.unwrap();
    v.write(CHUNK_64K, fill(2), false).await.unwrap();
    h.mem.hold("vol/chunks/");
    let waiting = tokio::spawn({
        let v = v.clone();
        async move { v.write(2 * CHUNK_64K, fill(3), false).await }
    });
    let waited = soon(|| v.room_waiters.load(Ordering::SeqCst) == 1).await;
    assert!(waited, "the third write never waited for room");
    let snapshot = tokio::spawn({
        let v = v.clone();
        async move { v.create_snapshot(name("s")).await }
    });
    let captured = soon(|| v.cache().snapshots.contains_key(&name("s"))).await;
    assert!(captured, "the snapshot waited for a write waiting for room");
    assert!(!waiting.is_finished(), "the write found room with its merges held");
    h.mem.release_all();
    waiting.await.unwrap().unwrap();
    snapshot.await.unwrap().unwrap();
    let m = stored_manifest(&h, &v, "s").await;
    assert_eq!(held(&h, &m, 0), Some(fill(1)));
    assert_eq!(held(&h, &m, 1), Some(fill(2)));
    assert_eq!(held(&h, &m, 2), None, "a write acknowledged after the snapshot is in it");
    assert!(v.read(2 * CHUNK_64K, CHUNK_64K as usize).await.unwrap() == fill(3));
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn names_are_unique_and_a_flat_volume_has_no_snapshots() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.create_snapshot(name("s")).await.unwrap();
    assert!(matches!(v.create_snapshot(name("s")).await, Err(SnapshotError::Exists { .. })));
    v.close().await.unwrap();

    let h = Harness::new();
    h.put_flat_volume(CHUNK_64K, 4).await;
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    let err = v.create_snapshot(name("s")).await.unwrap_err();
    assert!(err.to_string().contains("format 3"), "{err}");
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_damaged_manifest_stops_every_sweep() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    v.create_snapshot(name("s")).await.unwrap();
    v.write(0, fill(2), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    v.abandon();
    drop(v);
    let key = Manifest::key(&url(), &name("s"));
    let mut body = h.mem.objects()[&key].to_vec();
    body[20] ^= 1;
    let meta = h.mem.get(&key, None).await.unwrap().meta.metadata;
    h.mem.put(&key, Bytes::from(body), meta, Condition::None).await.unwrap();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.sweep_garbage().await;
    assert_eq!(h.chunk_objects().len(), 2, "a version was swept while an unreadable manifest may hold it");
    assert!(v.read(0, CHUNK_64K as usize).await.unwrap() == fill(2), "read back other data");
    v.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_view_reads_its_point_in_time_and_a_missing_version_is_an_error() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(CHUNK_64K, fill(1), false).await.unwrap();
    v.create_snapshot(name("s")).await.unwrap();
    v.write(CHUNK_64K, fill(2), false).await.unwrap();
    v.write(0, fill(3), false).await.unwrap();
    v.merge_chunks(&v.dirty_chunks()).await.unwrap();
    let view = SnapshotView::open(h.mem.clone(), &url(), &name("s"), None).await.unwrap();
    assert_eq!(view.capacity(), 4 * CHUNK_64K);
    let all = view.read(0, 2 * CHUNK_64K as usize).await.unwrap();
    assert!(all[..CHUNK_64K as usize].iter().all(|&b| b == 0), "a chunk written after the snapshot shows");
    assert!(all[CHUNK_64K as usize..].iter().all(|&b| b == 1), "the snapshot's chunk reads other data");
    let extents = view.mapped_extents(0, 4 * CHUNK_64K).await.unwrap();
    let mapped: Vec<(u64, bool)> = extents.iter().map(|e| (e.offset, e.mapped)).collect();
    assert_eq!(mapped, [(0, false), (CHUNK_64K, true), (2 * CHUNK_64K, false)]);
    assert!(view.write(0, block(1), false).await.is_err() && view.unmap(0, CHUNK_64K).await.is_err());
    assert!(SnapshotView::open(h.mem.clone(), &url(), &name("other"), None).await.is_err());
    // The version gone (damage outside rtgt): a read error, never zeros.
    let m = stored_manifest(&h, &v, "s").await;
    h.mem.delete(&format::chunk_version_key(&url(), 1, m.chunks[&1])).await.unwrap();
    let err = view.read(CHUNK_64K, 4096).await.unwrap_err();
    assert!(matches!(err, StoreError::Read(_)) && err.to_string().contains("missing"), "{err}");
    v.close().await.unwrap();
}

/// A snapshot whose taking is dropped before its manifest is sent (the API client went away)
/// is forgotten: not listed, and its copies are garbage.
#[tokio::test(start_paused = true)]
async fn a_snapshot_dropped_while_taken_is_forgotten() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    v.evict_clean(&mut v.cache(), u64::MAX);
    v.write(0, block(2), false).await.unwrap(); // partial: its copy reads the base
    let base = h.chunk_objects().into_keys().next().unwrap();
    h.mem.hold_gets(&base);
    // The copy waits for its base; the caller gives up (a second of paused time) and drops it.
    let taking = tokio::time::timeout(Duration::from_secs(1), v.create_snapshot(name("gone"))).await;
    assert!(taking.is_err(), "the snapshot was taken with its base held");
    h.mem.release_all();
    assert!(v.snapshots().is_empty(), "a snapshot never written is listed");
    assert!(v.cache().retained.is_empty() && v.cache().holding.is_empty());
    v.create_snapshot(name("gone")).await.unwrap();
    v.close().await.unwrap();
}

/// A capture shares the cache's pages instead of copying them (the snapshot gate copies no
/// data), and a write after it copies what it changes: the capture keeps what the chunk held.
#[tokio::test(start_paused = true)]
async fn a_capture_shares_the_pages_and_a_later_write_copies_what_it_changes() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    v.write(0, fill(1), false).await.unwrap();
    let captured = v.capture_dirty(&mut v.cache());
    let [k] = captured.as_slice() else { panic!("{} chunks captured, not one", captured.len()) };
    let page = |pages: &super::cache::Pages, i: u32| pages[&i].clone();
    {
        let cache = v.cache();
        let entry = &cache.entries[&0];
        assert!(Arc::ptr_eq(&entry.pages, &k.pages), "the capture copied the chunk's map of pages");
    }
    v.write(4096, Bytes::from(vec![9u8; 4096]), false).await.unwrap();
    let cache = v.cache();
    let entry = &cache.entries[&0];
    assert!(!Arc::ptr_eq(&entry.pages, &k.pages), "the write changed the captured map");
    assert_eq!(page(&k.pages, 1)[..], [1u8; 4096][..], "the capture saw a later write");
    assert_eq!(page(&entry.pages, 1)[..], [9u8; 4096][..], "the cache lost the write");
    assert!(Arc::ptr_eq(&page(&entry.pages, 0), &page(&k.pages, 0)), "a page the write left was copied");
    assert!(!Arc::ptr_eq(&page(&entry.pages, 1), &page(&k.pages, 1)));
}
