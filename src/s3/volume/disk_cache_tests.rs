//! The disk cache tier: reads after a restart need no request, a chunk replaced since (by
//! this holder or another) is never served from an older entry, a damaged entry is a miss,
//! and the tier keeps within its size.

use super::*;

const CHUNK_64K: u64 = 64 * 1024;

fn with_disk(h: &Harness, disk: &Arc<MemObjectStore>, chunks: u64, bytes_max: u64) -> VolumeOptions {
    VolumeOptions {
        disk_cache: Some(DiskCacheOptions { store: disk.clone(), bytes_max }),
        ..h.options(CHUNK_64K, chunks, "a")
    }
}

fn gets(v: &S3Volume) -> u64 {
    v.s3_stats().get.load(Ordering::Relaxed)
}

fn disk_bytes(disk: &MemObjectStore) -> u64 {
    disk.objects().values().map(|b| b.len() as u64).sum()
}

async fn settled(v: &S3Volume) {
    v.disk.get().expect("a disk cache").settled().await;
}

/// Chunk `c` of a volume of `chunks` filled with `c + 1`, merged and closed.
async fn fill(h: &Harness, chunks: u64) {
    let v = h.open(CHUNK_64K, chunks, "a").await.unwrap();
    for c in 0..chunks {
        v.write(c * CHUNK_64K, Bytes::from(vec![c as u8 + 1; CHUNK_64K as usize]), false).await.unwrap();
    }
    v.close().await.unwrap();
}

/// Reads chunk `c` and checks it holds `fill`.
async fn read_chunk(v: &S3Volume, c: u64, fill: u8) {
    let data = v.read(c * CHUNK_64K, CHUNK_64K as usize).await.unwrap();
    assert!(data.iter().all(|&b| b == fill), "chunk {c}: read {} where {fill} was written", data[0]);
}

/// Four chunks filled, then each read once by a volume with a disk cache (of 1 MiB), which
/// then holds them all: that volume (open) and the disk cache's store.
async fn four_chunks_on_disk(h: &Harness) -> (Arc<S3Volume>, Arc<MemObjectStore>) {
    let disk = Arc::new(MemObjectStore::new());
    fill(h, 4).await;
    let v = h.open_with(with_disk(h, &disk, 4, 1 << 20)).await.unwrap();
    for c in 0..4 {
        read_chunk(&v, c, c as u8 + 1).await;
    }
    settled(&v).await;
    assert_eq!(v.disk.get().unwrap().bytes(), 4 * CHUNK_64K);
    (v, disk)
}

#[tokio::test(start_paused = true)]
async fn reads_after_a_restart_come_from_the_disk_cache() {
    let h = Harness::new();
    let (v, disk) = four_chunks_on_disk(&h).await;
    v.close().await.unwrap();
    drop(v);

    let v = h.open_with(with_disk(&h, &disk, 4, 1 << 20)).await.unwrap();
    let before = gets(&v);
    for c in 0..4 {
        read_chunk(&v, c, c as u8 + 1).await;
    }
    assert_eq!(gets(&v), before, "no GET: every piece came from the disk cache");
    assert_eq!(v.stats.read_bytes_disk.load(Ordering::Relaxed), 4 * CHUNK_64K);
}

#[tokio::test(start_paused = true)]
async fn a_chunk_replaced_since_is_read_from_the_store() {
    let h = Harness::new();
    let (v, disk) = four_chunks_on_disk(&h).await;
    // Replaced by this holder: a merge's PUT makes the entry of the old version useless.
    v.write(2 * CHUNK_64K, Bytes::from(vec![0x77; CHUNK_64K as usize]), false).await.unwrap();
    v.flush().await.unwrap();
    v.evict_clean(&mut v.cache(), u64::MAX);
    let before = gets(&v);
    read_chunk(&v, 2, 0x77).await;
    assert_eq!(gets(&v), before + 1, "the new version from the store, not the old one from the disk");
    // ...and kept on the disk in its turn.
    settled(&v).await;
    v.close().await.unwrap();
    drop(v);

    // Replaced by another holder (one without a disk cache) while this one was away.
    let other = h.open(CHUNK_64K, 4, "b").await.unwrap();
    other.write(CHUNK_64K, Bytes::from(vec![0xee; CHUNK_64K as usize]), true).await.unwrap();
    other.close().await.unwrap();
    drop(other);

    let v = h.open_with(with_disk(&h, &disk, 4, 1 << 20)).await.unwrap();
    let before = gets(&v);
    for (c, fill) in [(0, 1), (1, 0xee), (2, 0x77), (3, 4)] {
        read_chunk(&v, c, fill).await;
    }
    assert_eq!(gets(&v), before + 1, "chunk 1 from the store");
    assert_eq!(v.stats.read_bytes_disk.load(Ordering::Relaxed), 3 * CHUNK_64K, "chunks 0, 2 and 3 from the disk");
}

#[tokio::test(start_paused = true)]
async fn a_damaged_entry_is_a_miss_and_is_dropped() {
    let h = Harness::new();
    let (v, disk) = four_chunks_on_disk(&h).await;
    v.close().await.unwrap();
    drop(v);
    // One byte of each entry flips (a torn or rotten file), its metadata intact.
    for key in disk.objects().into_keys() {
        let got = disk.get(&key, None).await.unwrap();
        let mut body = got.body.to_vec();
        body[100] ^= 0xff;
        disk.put(&key, Bytes::from(body), got.meta.metadata, Condition::None).await.unwrap();
    }

    let v = h.open_with(with_disk(&h, &disk, 4, 1 << 20)).await.unwrap();
    let before = gets(&v);
    for c in 0..4 {
        read_chunk(&v, c, c as u8 + 1).await;
    }
    assert_eq!(gets(&v), before + 4, "every damaged piece was fetched again");
    assert_eq!(v.stats.read_bytes_disk.load(Ordering::Relaxed), 0);
}

/// An entry cut short (the cache is never synced: a power loss leaves such files) is dropped
/// at open and read from the store again; the cache's byte count stays exact, so evicting
/// every entry afterwards leaves it at zero (it once went below, and a debug build panicked).
#[tokio::test(start_paused = true)]
async fn an_entry_cut_short_is_dropped_at_open_and_the_count_stays_exact() {
    let h = Harness::new();
    let (v, disk) = four_chunks_on_disk(&h).await;
    v.close().await.unwrap();
    drop(v);
    let key = disk.objects().into_keys().next().expect("an entry");
    let got = disk.get(&key, None).await.unwrap();
    disk.put(&key, got.body.slice(..100), got.meta.metadata, Condition::None).await.unwrap();

    let v = h.open_with(with_disk(&h, &disk, 4, 1 << 20)).await.unwrap();
    let cache = v.disk.get().unwrap();
    assert_eq!(cache.bytes(), 3 * CHUNK_64K, "three whole entries are counted");
    assert!(!disk.objects().contains_key(&key), "the short entry was deleted");
    let before = gets(&v);
    for c in 0..4 {
        read_chunk(&v, c, c as u8 + 1).await;
    }
    assert_eq!(gets(&v), before + 1, "the short piece was fetched again");
    settled(&v).await;
    assert_eq!(cache.bytes(), 4 * CHUNK_64K);
    assert_eq!(disk_bytes(&disk), 4 * CHUNK_64K);
}

#[tokio::test(start_paused = true)]
async fn the_disk_cache_keeps_within_its_size() {
    let h = Harness::new();
    let disk = Arc::new(MemObjectStore::new());
    fill(&h, 8).await;
    let v = h.open_with(with_disk(&h, &disk, 8, 3 * CHUNK_64K)).await.unwrap();
    for c in 0..8 {
        read_chunk(&v, c, c as u8 + 1).await;
        settled(&v).await;
        assert!(disk_bytes(&disk) <= 3 * CHUNK_64K, "{} bytes on disk", disk_bytes(&disk));
    }
    assert_eq!(v.disk.get().unwrap().bytes(), 3 * CHUNK_64K);
    // The most recently read are the ones kept.
    v.evict_clean(&mut v.cache(), u64::MAX);
    let before = gets(&v);
    read_chunk(&v, 7, 8).await;
    assert_eq!(gets(&v), before);
}
