//! SANITIZE CRYPTO ERASE of an encrypted volume: refused with snapshots; then every block reads
//! zeros, no object of the old data is left (a tombstone each), the metadata holds a new data key (an object kept
//! from before opens under it no more), and the volume works on, through a reopen.

use super::*;
use crate::storage::crypto_erase::EraseError;

const CHUNK_64K: u64 = 64 * 1024;

fn data_key(meta: &VolumeMeta, key: &keys::KeySource) -> [u8; 32] {
    *keys::unwrap(meta.encryption.as_ref().unwrap(), key).unwrap().as_bytes()
}

#[tokio::test(start_paused = true)]
async fn a_crypto_erase_zeroes_the_volume_and_leaves_its_old_objects_unreadable() {
    let (h, dir) = (Harness::new(), tempfile::tempdir().unwrap());
    let opts = encrypted(&h, &dir, [7; 32], CHUNK_64K);
    let key = opts.encryption.clone().unwrap();
    let v = h.open_with(opts.clone()).await.unwrap();
    let eraser = BlockStore::crypto_erase(&*v).expect("an encrypted volume offers it");
    v.write(0, Bytes::from(vec![1u8; 2 * CHUNK_64K as usize]), true).await.unwrap();
    v.merge_chunk(0).await.unwrap();
    v.write(3 * CHUNK_64K, Bytes::from(vec![2u8; 4096]), true).await.unwrap(); // in a log
    let (old_key, old_object) = h.chunk_objects().into_iter().next().unwrap();

    let name = manifest::SnapshotName::parse("s").unwrap();
    v.create_snapshot(name.clone()).await.unwrap();
    assert!(matches!(eraser.crypto_erase().await, Err(EraseError::Refused(m)) if m.contains("snapshots")));
    assert_eq!(v.read(0, 512).await.unwrap(), Bytes::from(vec![1u8; 512]), "nothing erased");
    v.delete_snapshot(&name).await.unwrap();

    let before = data_key(&v.meta(), &key);
    eraser.crypto_erase().await.unwrap();
    let after = data_key(&v.meta(), &key);
    assert_ne!(before, after, "a new data key");
    assert_eq!(v.read(0, 4 * CHUNK_64K as usize).await.unwrap(), vec![0u8; 4 * CHUNK_64K as usize]);
    // Left: the zeroed chunks' tombstones (empty), which a late PUT of old data lands behind.
    let objects = h.mem.objects();
    let left: Vec<&String> = objects
        .iter()
        .filter(|(k, b)| k.contains("/log/") || k.contains("/chunks/") && !b.is_empty())
        .map(|(k, _)| k)
        .collect();
    assert!(left.is_empty(), "objects of the old data left: {left:?}");
    // A copy of an old object (a backup, a store that keeps deleted objects) opens no more.
    let name_in_volume = old_key.strip_prefix(&url().key("")).unwrap();
    let unit = v.meta().encryption.unwrap().unit;
    let sealer = |key| sealing::Sealer::new(&keys::DataKey::from_bytes(key), unit, sealing::os_nonces());
    let plain_len = sealer(after).plain_len_of(old_object.len() as u64);
    assert!(sealer(before).open(name_in_volume, &old_object, 0, plain_len).is_ok(), "the old key opened it");
    assert!(sealer(after).open(name_in_volume, &old_object, 0, plain_len).is_err());

    v.write(CHUNK_64K, Bytes::from(vec![3u8; 4096]), true).await.unwrap();
    v.close().await.unwrap();
    drop(v);
    let v = h.open_with(opts).await.unwrap();
    assert_eq!(v.read(CHUNK_64K, 4096).await.unwrap(), Bytes::from(vec![3u8; 4096]));
    assert_eq!(v.read(0, 512).await.unwrap(), Bytes::from(vec![0u8; 512]));
}

#[tokio::test(start_paused = true)]
async fn a_plain_volume_offers_no_crypto_erase() {
    let h = Harness::new();
    let v = h.open(CHUNK_64K, 4, "a").await.unwrap();
    assert!(BlockStore::crypto_erase(&*v).is_none());
}
