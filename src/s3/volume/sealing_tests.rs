use super::*;
use crate::s3::mem::MemObjectStore;
use crate::s3::url::S3Url;

/// Nonces 0, 1, 2, ... in each byte: known answers need known nonces.
fn counting_nonces() -> NonceSource {
    let next = std::sync::atomic::AtomicU8::new(0);
    Arc::new(move |buf: &mut [u8]| {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        buf.iter_mut().enumerate().for_each(|(i, b)| *b = n.wrapping_add(i as u8));
    })
}

fn sealed(unit: u64) -> (Arc<MemObjectStore>, SealedStore) {
    let mem = Arc::new(MemObjectStore::new());
    let url = S3Url::parse("s3://bucket/vol").unwrap();
    let sealer = Sealer::new(&DataKey::from_bytes([0x42; 32]), unit, counting_nonces());
    (mem.clone(), SealedStore::over(mem, vec![url.key("")], sealer))
}

fn bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i * 7 + i / 251) as u8).collect::<Vec<u8>>())
}

/// The seal of a unit as an independent implementation (libsodium's
/// crypto_aead_xchacha20poly1305_ietf_encrypt, through PyNaCl) computes it: key 42h x 32,
/// nonce 00..17h, associated data = name, unit index, plaintext length (both big-endian u64).
#[test]
fn a_unit_seals_as_libsodium_seals_it() {
    let sealer = Sealer::new(&DataKey::from_bytes([0x42; 32]), 64 << 10, counting_nonces());
    let out = sealer.seal("chunks/0000000000000001", b"hello, disk");
    let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "000102030405060708090a0b0c0d0e0f1011121314151617e499e88ba88de7a49b15cf3aa01df5db24f41a479baf8bc8359610"
    );
    assert_eq!(sealer.open("chunks/0000000000000001", &out, 0, 11).unwrap(), b"hello, disk");
}

#[tokio::test]
async fn data_objects_round_trip_whole_and_in_ranges_and_others_pass_through() {
    let (mem, store) = sealed(1000);
    for len in [0usize, 1, 999, 1000, 1001, 4500] {
        let key = format!("vol/chunks/{len:016x}");
        let body = bytes(len);
        let meta = BTreeMap::from([("rtgt-crc32c".to_string(), "x".to_string())]);
        store.put(&key, body.clone(), meta, Condition::None).await.unwrap();
        let raw = mem.get(&key, None).await.unwrap();
        assert_eq!(raw.body.len() as u64, len as u64 + (len as u64).div_ceil(1000) * UNIT_OVERHEAD);
        assert!(len < 16 || !raw.body.windows(16).any(|w| body.windows(16).any(|p| p == w)), "plaintext stored");
        let out = store.get(&key, None).await.unwrap();
        assert_eq!((&out.body, out.meta.size), (&body, len as u64));
        assert_eq!(out.meta.metadata.keys().collect::<Vec<_>>(), ["rtgt-crc32c"], "the volume's metadata, not ours");
        assert_eq!(store.head(&key).await.unwrap().size, len as u64);
        let listed = store.list("vol/chunks/", None).await.unwrap().objects;
        assert_eq!(listed.iter().find(|l| l.key == key).map(|l| l.size), Some(len as u64), "listed as plaintext");
        for (from, to) in [(0, 1), (0, 1000), (999, 1001), (1500, 4500), (2000, 9000), (4499, 4500)] {
            if from >= len {
                continue;
            }
            let out = store.get(&key, Some(from as u64..to as u64)).await.unwrap();
            assert_eq!(out.body, body.slice(from..to.min(len)), "{len}: {from}..{to}");
        }
    }
    let meta = "vol/rtgt-volume.json";
    store.put(meta, Bytes::from_static(b"{}"), BTreeMap::new(), Condition::None).await.unwrap();
    assert_eq!(mem.get(meta, None).await.unwrap().body, Bytes::from_static(b"{}"), "metadata stays readable");
    let log = "vol/log/0000000000000001";
    store.put(log, bytes(10), BTreeMap::new(), Condition::None).await.unwrap();
    assert_ne!(mem.get(log, None).await.unwrap().body, bytes(10), "logs are sealed");
}

/// A flipped bit, a unit moved to another object, an object cut short or one that was never
/// sealed: the read fails, whole or in the range that covers it, and never returns data.
#[tokio::test]
async fn a_modified_object_fails_to_read() {
    let (mem, store) = sealed(1000);
    let (a, b) = ("vol/chunks/000000000000000a", "vol/chunks/000000000000000b");
    for key in [a, b] {
        store.put(key, bytes(2500), BTreeMap::new(), Condition::None).await.unwrap();
    }
    let raw = |key: &str| {
        let mem = mem.clone();
        let key = key.to_string();
        async move { mem.get(&key, None).await.unwrap() }
    };
    let put_raw = |key: &str, body: Vec<u8>, meta: BTreeMap<String, String>| {
        let mem = mem.clone();
        let key = key.to_string();
        async move { mem.put(&key, Bytes::from(body), meta, Condition::None).await.unwrap() }
    };
    let original = raw(a).await;
    for at in [0usize, 30, 1039, 1040 + 500, original.body.len() - 1] {
        let mut body = original.body.to_vec();
        body[at] ^= 0x10;
        put_raw(a, body, original.meta.metadata.clone()).await;
        assert!(store.get(a, None).await.is_err(), "a bit flipped at {at}");
        let unit = (at as u64 / (1000 + UNIT_OVERHEAD)) * 1000;
        assert!(store.get(a, Some(unit..unit + 1)).await.is_err(), "the unit of byte {at}");
    }
    put_raw(a, original.body.to_vec(), original.meta.metadata.clone()).await;
    assert_eq!(store.get(a, Some(1000..1100)).await.unwrap().body, bytes(2500).slice(1000..1100));
    // b's first unit in a's place.
    let other = raw(b).await;
    let mut body = original.body.to_vec();
    body[..1040].copy_from_slice(&other.body[..1040]);
    put_raw(a, body, original.meta.metadata.clone()).await;
    assert!(store.get(a, Some(0..10)).await.is_err(), "a unit of another object");
    // Cut to two units, the recorded length with it.
    let mut meta = original.meta.metadata.clone();
    meta.insert(SEALED_LENGTH_METADATA.into(), "2000".into());
    put_raw(a, original.body[..2080].to_vec(), meta).await;
    assert!(store.get(a, None).await.is_err(), "an object cut short");
    put_raw(a, bytes(100).to_vec(), BTreeMap::new()).await;
    assert!(store.get(a, None).await.err().unwrap().to_string().contains("not sealed"));
}
