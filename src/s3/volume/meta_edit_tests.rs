//! Rewrites of an open volume's metadata (`meta_edit.rs`) when the object changed behind the
//! open's back: the same epoch's (an earlier PUT of its own that landed late) is edited again;
//! another holder's is left alone.

use super::*;

/// The metadata object as stored now.
async fn stored_meta(h: &Harness) -> VolumeMeta {
    S3Volume::read_meta(&*h.mem, &url()).await.unwrap().expect("a volume").0
}

/// Puts `meta` over the metadata object unconditionally (a new entity tag).
async fn put_behind_its_back(h: &Harness, meta: &VolumeMeta) {
    h.mem.put(&url().key(META_NAME), meta.encode(), BTreeMap::new(), Condition::None).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_over_a_changed_entity_tag_of_the_same_epoch_reads_again_and_lands() {
    let h = Harness::new();
    let v = h.open(8 * 1024, 4, "a").await.unwrap();
    // The same content under a new entity tag: the conditional PUT's condition fails once.
    put_behind_its_back(&h, &stored_meta(&h).await).await;
    v.resize(64 * 1024).await.unwrap();
    assert_eq!(stored_meta(&h).await.size, 64 * 1024);
    assert_eq!(v.meta().size, 64 * 1024);
}

#[tokio::test(start_paused = true)]
async fn a_rewrite_after_another_holder_bumped_the_epoch_is_refused_and_writes_nothing() {
    let h = Harness::new();
    let v = h.open(8 * 1024, 4, "a").await.unwrap();
    let mut taken = stored_meta(&h).await;
    taken.epoch += 1;
    put_behind_its_back(&h, &taken).await;
    let err = v.resize(64 * 1024).await.unwrap_err();
    assert!(matches!(&err, StoreError::NotReady(m) if m.contains("taken over")), "{err:?}");
    assert_eq!(stored_meta(&h).await, taken, "the taker's metadata is left alone");
}
