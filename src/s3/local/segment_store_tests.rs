use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::s3::local::CrashFs;

const DIR: &str = "/cache/journal-segments";

fn open_with(fs: &CrashFs, segment_bytes: u64) -> Result<SegmentStore, String> {
    let opts = SegmentOptions { offload: Offload::Inline, etag_seed: 1, segment_bytes };
    SegmentStore::open(Arc::new(fs.clone()), Path::new(DIR), opts)
}

fn meta(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("crc".to_string(), v.to_string())])
}

fn body(n: u32, len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(n) as u8).collect::<Vec<u8>>())
}

async fn keys(s: &SegmentStore) -> Vec<String> {
    s.list("", None).await.unwrap().objects.into_iter().map(|o| o.key).collect()
}

#[tokio::test]
async fn objects_round_trip_with_ranges_conditions_listing_and_deletion() {
    let fs = CrashFs::new();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    let b = body(1, 10_000);
    let etag = s.put("u/log/01", b.clone(), meta("x"), Condition::IfNoneMatch).await.unwrap().unwrap();
    assert_eq!(
        s.put("u/log/01", Bytes::new(), BTreeMap::new(), Condition::IfNoneMatch).await,
        Err(ObjectError::PreconditionFailed)
    );
    let got = s.get("u/log/01", None).await.unwrap();
    assert_eq!((got.body, got.meta.metadata, got.meta.etag), (b.clone(), meta("x"), Some(etag.clone())));
    assert_eq!(s.get("u/log/01", Some(100..200)).await.unwrap().body, b.slice(100..200));
    assert_eq!(s.head("u/log/01").await.unwrap().size, 10_000);
    let replaced = s.put("u/log/01", body(2, 5), meta("y"), Condition::IfMatch(etag.clone())).await.unwrap();
    assert_ne!(replaced, Some(etag.clone()));
    assert_eq!(
        s.put("u/log/01", Bytes::new(), BTreeMap::new(), Condition::IfMatch(etag)).await,
        Err(ObjectError::PreconditionFailed)
    );
    s.put("u/log/02", body(3, 7), BTreeMap::new(), Condition::None).await.unwrap();
    s.put("v/log/01", body(4, 7), BTreeMap::new(), Condition::None).await.unwrap();
    let listed = s.list("u/", None).await.unwrap().objects;
    assert_eq!(listed[0], Listed { key: "u/log/01".into(), size: 5, etag: replaced });
    assert_eq!(keys(&s).await, ["u/log/01", "u/log/02", "v/log/01"]);
    let results = s.delete_many(vec!["u/log/01".into(), "u/log/09".into()]).await.unwrap();
    assert_eq!(results[0].1, Ok(()));
    assert_eq!(results[1].1, Err(ObjectError::NotFound));
    assert_eq!(s.get("u/log/01", None).await, Err(ObjectError::NotFound));
    assert_eq!(keys(&s).await, ["u/log/02", "v/log/01"]);
}

#[tokio::test]
async fn what_was_acknowledged_survives_a_power_loss_and_nothing_deleted_comes_back() {
    let fs = CrashFs::new();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    for n in 0..10 {
        s.put(&format!("log/{n:02}"), body(n, 4096), meta(&n.to_string()), Condition::None).await.unwrap();
    }
    s.delete_many((0..5).map(|n| format!("log/{n:02}")).collect()).await.unwrap();
    drop(s);
    fs.power_loss();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    assert_eq!(keys(&s).await, (5..10).map(|n| format!("log/{n:02}")).collect::<Vec<_>>());
    for n in 5..10 {
        let got = s.get(&format!("log/{n:02}"), None).await.unwrap();
        assert_eq!((got.body, got.meta.metadata), (body(n, 4096), meta(&n.to_string())));
    }
    assert_eq!(SegmentStore::inspect(&fs, Path::new(DIR)).len(), 5, "what the oracle reads is what opens");
}

#[tokio::test]
async fn a_torn_record_ends_the_segment_and_the_store_goes_on_after_it() {
    let fs = CrashFs::new();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    s.put("log/01", body(1, 100), BTreeMap::new(), Condition::None).await.unwrap();
    s.put("log/02", body(2, 100), BTreeMap::new(), Condition::None).await.unwrap();
    drop(s);
    // Tear the second record: its last byte changes.
    let file = fs.open_rw(&Path::new(DIR).join(segment_name(1))).unwrap();
    let mut bytes = vec![0; 4096];
    file.read_at(0, &mut bytes).unwrap();
    let (_, first) = record::decode(&bytes, 1).expect("the first record");
    let (_, second) = record::decode(&bytes[first..], 1).expect("the second record");
    let end = (first + second - 1) as u64;
    file.write_at(end, &[!bytes[end as usize]]).unwrap();
    file.sync_data().unwrap();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    assert_eq!(keys(&s).await, ["log/01"]);
    s.put("log/03", body(3, 100), BTreeMap::new(), Condition::None).await.unwrap();
    drop(s);
    fs.power_loss();
    let s = open_with(&fs, SEGMENT_BYTES).unwrap();
    assert_eq!(keys(&s).await, ["log/01", "log/03"], "written after the torn record, in a segment of its own");
}

#[tokio::test]
async fn segments_are_reused_and_a_long_lived_object_is_carried_forward() {
    let fs = CrashFs::new();
    let segment = 64 * 1024;
    let s = open_with(&fs, segment).unwrap();
    s.put("aside/log/01", body(7, 3000), meta("aside"), Condition::None).await.unwrap();
    // 4 MiB of logs through 64 KiB segments, each deleted soon after its PUT.
    for n in 0..1000u32 {
        s.put(&format!("log/{n:04}"), body(n, 4096), BTreeMap::new(), Condition::None).await.unwrap();
        if n >= 4 {
            s.delete(&format!("log/{:04}", n - 4)).await.unwrap();
        }
        assert!(s.segment_count() <= 3, "{} segments after {n} logs", s.segment_count());
    }
    let files = fs.files(Path::new(DIR));
    assert!(files.len() <= 4, "segments (and the lock) only: {:?}", files.keys().collect::<Vec<_>>());
    drop(s);
    fs.power_loss();
    let s = open_with(&fs, segment).unwrap();
    let expected: Vec<String> =
        std::iter::once("aside/log/01".to_string()).chain((996..1000).map(|n| format!("log/{n:04}"))).collect();
    assert_eq!(keys(&s).await, expected);
    assert_eq!(s.get("aside/log/01", None).await.unwrap().body, body(7, 3000), "carried forward intact");
}

#[tokio::test]
async fn an_object_larger_than_a_segment_gets_a_segment_of_its_size() {
    let fs = CrashFs::new();
    let s = open_with(&fs, 8192).unwrap();
    s.put("big", body(9, 100_000), BTreeMap::new(), Condition::None).await.unwrap();
    s.put("small", body(1, 10), BTreeMap::new(), Condition::None).await.unwrap();
    drop(s);
    fs.power_loss();
    let s = open_with(&fs, 8192).unwrap();
    assert_eq!(s.get("big", None).await.unwrap().body, body(9, 100_000));
}

#[test]
fn a_second_process_cannot_open_the_same_journal() {
    let fs = CrashFs::new();
    let _first = open_with(&fs, SEGMENT_BYTES).unwrap();
    let err = open_with(&fs, SEGMENT_BYTES).err().expect("locked");
    assert!(err.contains("in use by another process"), "{err}");
}

/// One step of a crash test: PUT or DELETE of one of a few keys.
#[derive(Debug, Clone)]
enum Step {
    Put(u8, u16),
    Delete(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..6u8, 1..3000u16).prop_map(|(k, len)| Step::Put(k, len)),
        2 => (0..6u8).prop_map(Step::Delete),
    ]
}

/// Runs `steps` until the process dies (after `ops` filesystem operations), then loses power
/// and reopens. Every acknowledged step holds; the one that failed either happened or not.
async fn crash_at(steps: &[Step], ops: u64) -> Result<bool, TestCaseError> {
    let fs = CrashFs::new();
    let segment = 8192;
    let s = open_with(&fs, segment).map_err(TestCaseError::fail)?;
    fs.die_after(ops);
    let mut acknowledged: BTreeMap<String, Option<Bytes>> = BTreeMap::new();
    let mut uncertain = None;
    let mut died = false;
    for (i, st) in steps.iter().enumerate() {
        let (key, value) = match st {
            Step::Put(k, len) => (format!("log/{k}"), Some(body(i as u32, *len as usize))),
            Step::Delete(k) => (format!("log/{k}"), None),
        };
        let done = match &value {
            Some(b) => s.put(&key, b.clone(), BTreeMap::new(), Condition::None).await.map(|_| ()),
            None => s.delete(&key).await.or_else(|e| if e == ObjectError::NotFound { Ok(()) } else { Err(e) }),
        };
        if done.is_err() {
            uncertain = Some((key, value));
            died = true;
            break;
        }
        acknowledged.insert(key, value);
    }
    drop(s);
    fs.power_loss();
    let s = open_with(&fs, segment).map_err(TestCaseError::fail)?;
    for k in 0..6u8 {
        let key = format!("log/{k}");
        let found = match s.get(&key, None).await {
            Ok(out) => Some(out.body),
            Err(ObjectError::NotFound) => None,
            Err(e) => return Err(TestCaseError::fail(format!("{key}: {e}"))),
        };
        let before = acknowledged.get(&key).cloned().flatten();
        let allowed = match &uncertain {
            Some((k, after)) if *k == key => found == before || found == *after,
            _ => found == before,
        };
        prop_assert!(
            allowed,
            "{key} after a crash at op {ops}: found {:?} bytes, acknowledged {:?}",
            found.as_ref().map(|b| b.len()),
            before.as_ref().map(|b| b.len())
        );
    }
    Ok(died)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// A crash at every filesystem operation of a run that fills, reuses and carries segments.
    #[test]
    fn a_crash_at_any_operation_loses_nothing_acknowledged(steps in proptest::collection::vec(step(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        for ops in 0.. {
            if !rt.block_on(crash_at(&steps, ops))? {
                break;
            }
        }
    }
}
