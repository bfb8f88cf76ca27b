use super::*;
use crate::rng::Rng;
use crate::s3::MemObjectStore;

const CHUNK: u64 = 1 << 20;
const KEY: &str = "vol/chunks/0000000000000000/0000010000000001";

/// Text-like data: lines of words, as logs and databases hold.
fn text(len: usize, seed: u64) -> Vec<u8> {
    let words = ["volume", "chunk", "segment", "the", "of", "snapshot", "42", "lease", "2026-12-05", "ok"];
    let mut rng = Rng::seeded(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
        out.push(if rng.chance(0.1) { b'\n' } else { b' ' });
    }
    out.truncate(len);
    out
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::seeded(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn store(codec: Compression) -> (Arc<MemObjectStore>, CompressedStore) {
    let mem = Arc::new(MemObjectStore::new());
    let store = CompressedStore::over(mem.clone(), vec!["vol/".into()], codec, CHUNK);
    (mem, store)
}

/// A chunk half text, half random: the text segments shrink, the random ones are stored as is.
fn mixed() -> Vec<u8> {
    let mut plain = text(CHUNK as usize / 2, 1);
    plain.extend(random(CHUNK as usize / 2, 2));
    plain
}

#[tokio::test]
async fn chunks_round_trip_whole_and_by_range_with_either_codec() {
    for codec in [Compression::Zstd, Compression::Lz4] {
        let (mem, store) = store(codec);
        let plain = mixed();
        store.put(KEY, Bytes::from(plain.clone()), BTreeMap::new(), Condition::None).await.unwrap();
        let stored = mem.objects()[KEY].len();
        assert!(stored < plain.len() * 3 / 4, "{codec}: {stored} bytes stored for {}", plain.len());
        let whole = store.get(KEY, None).await.unwrap();
        assert_eq!((whole.body.as_ref(), whole.meta.size), (&plain[..], CHUNK), "{codec}");
        // Ranged reads, with the header remembered and without (another store's view).
        let cold = CompressedStore::over(mem.clone(), vec!["vol/".into()], codec, CHUNK);
        for range in [0..512, 65_536..131_072, 500_000..600_000, CHUNK - 512..CHUNK, 1000..CHUNK] {
            for s in [&store, &cold] {
                let got = s.get(KEY, Some(range.clone())).await.unwrap();
                assert_eq!(got.body.as_ref(), &plain[range.start as usize..range.end as usize], "{codec} {range:?}");
                assert_eq!(got.meta.size, CHUNK);
            }
        }
    }
}

#[tokio::test]
async fn a_text_like_chunk_is_stored_in_less_than_half_its_size() {
    let (mem, store) = store(Compression::Zstd);
    store.put(KEY, Bytes::from(text(CHUNK as usize, 3)), BTreeMap::new(), Condition::None).await.unwrap();
    let stored = mem.objects()[KEY].len() as u64;
    assert!(stored * 2 < CHUNK, "{stored} bytes stored for {CHUNK}");
}

#[tokio::test]
async fn tombstones_logs_and_other_volumes_objects_are_stored_as_they_are() {
    let (mem, store) = store(Compression::Lz4);
    let body = Bytes::from(text(4096, 4));
    for key in ["vol/log/0000000000000001", "other/chunks/0000000000000000/0000010000000001", "vol/rtgt-volume.json"] {
        store.put(key, body.clone(), BTreeMap::new(), Condition::None).await.unwrap();
        assert_eq!(mem.objects()[key], body, "{key}");
        assert_eq!(store.get(key, Some(0..10)).await.unwrap().body, body.slice(0..10), "{key}");
    }
    store.put(KEY, Bytes::new(), BTreeMap::new(), Condition::None).await.unwrap();
    assert!(mem.objects()[KEY].is_empty());
    assert!(store.get(KEY, None).await.unwrap().body.is_empty());
}

#[tokio::test]
async fn a_damaged_or_hostile_object_is_an_error_never_data_or_a_large_allocation() {
    let (mem, store) = store(Compression::Zstd);
    let plain = mixed();
    store.put(KEY, Bytes::from(plain), BTreeMap::new(), Condition::None).await.unwrap();
    let good = mem.objects()[KEY].clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("cut short", good[..good.len() / 3].to_vec()),
        ("not compressed", vec![7; CHUNK as usize]),
        ("a huge segment", {
            let mut b = good.to_vec();
            b[8..12].copy_from_slice(&(1u32 << 30).to_be_bytes());
            b
        }),
        ("longer than a chunk", {
            let mut b = good.to_vec();
            b[12..20].copy_from_slice(&(CHUNK * 4).to_be_bytes());
            b
        }),
        ("another codec", {
            let mut b = good.to_vec();
            b[4] = 2;
            b
        }),
        ("no segments at all", {
            let mut b = good[..Header::len_for(0)].to_vec();
            b[12..24].fill(0);
            b
        }),
        ("a garbled payload", {
            let mut b = good.to_vec();
            let first_payload = Header::len_for(16);
            b[first_payload..first_payload + 64].fill(0xff);
            b
        }),
    ];
    for (what, body) in cases {
        mem.put(KEY, Bytes::from(body), BTreeMap::new(), Condition::None).await.unwrap();
        let fresh = CompressedStore::over(mem.clone(), vec!["vol/".into()], Compression::Zstd, CHUNK);
        assert!(fresh.get(KEY, None).await.is_err(), "{what}: whole");
        assert!(fresh.get(KEY, Some(512..CHUNK)).await.is_err(), "{what}: ranged");
    }
}

#[test]
fn the_header_layout_is_stable() {
    // A later rtgt reads what this one wrote: the layout is a format, pinned byte for byte.
    let (stored, header) = compress_object(Compression::Lz4, &[0u8; 100], 64);
    assert_eq!(&stored[..4], b"RTZ1");
    assert_eq!(stored[4], 2, "lz4's code");
    assert_eq!(u32::from_be_bytes(stored[8..12].try_into().unwrap()), 64);
    assert_eq!(u64::from_be_bytes(stored[12..20].try_into().unwrap()), 100);
    assert_eq!(u32::from_be_bytes(stored[20..24].try_into().unwrap()), 2);
    assert_eq!(header.payloads.len(), 2);
    assert_eq!(header.payloads[0].0, Header::len_for(2) as u64);
    let (short, _) = compress_object(Compression::Zstd, &random(10, 1), 64);
    let word = u32::from_be_bytes(short[24..28].try_into().unwrap());
    assert_eq!(word, 10 | STORED_AS_IS, "incompressible: stored as is");
    assert_eq!(&short[28..], &random(10, 1)[..]);
}
