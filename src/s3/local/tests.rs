use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const ROOT: &str = "/store";

fn open(fs: &CrashFs) -> Result<Arc<LocalRoot>, String> {
    LocalRoot::open(
        Arc::new(fs.clone()),
        Path::new(ROOT),
        LocalOptions { offload: Offload::Inline, etag_seed: 1, durable: true, remember_clean_close: true },
    )
}

/// The process is killed: no destructor runs, so the store cannot pass for closed cleanly.
fn kill<T>(store: T, fs: &CrashFs) {
    std::mem::forget(store);
    fs.process_crash();
}

/// Temporary files anywhere in the store.
fn temporaries(fs: &CrashFs) -> Vec<PathBuf> {
    fs.files(Path::new(ROOT)).into_keys().filter(|p| p.to_string_lossy().contains(TEMP_PREFIX)).collect()
}

fn bucket(fs: &CrashFs) -> LocalStore {
    let root = open(fs).unwrap();
    root.create_bucket("bkt").unwrap();
    root.bucket("bkt").unwrap()
}

fn meta(v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("m".to_string(), v.to_string())])
}

#[tokio::test]
async fn objects_round_trip_with_ranges_conditions_and_listing() {
    let fs = CrashFs::new();
    let s = bucket(&fs);
    let body = Bytes::from((0..10_000u32).map(|i| i as u8).collect::<Vec<u8>>());
    let etag = s.put("vol/chunks/01", body.clone(), meta("x"), Condition::IfNoneMatch).await.unwrap().unwrap();
    assert_eq!(
        s.put("vol/chunks/01", Bytes::new(), BTreeMap::new(), Condition::IfNoneMatch).await,
        Err(ObjectError::PreconditionFailed)
    );
    let got = s.get("vol/chunks/01", None).await.unwrap();
    assert_eq!(got.body, body);
    assert_eq!(got.meta.metadata, meta("x"));
    assert_eq!(got.meta.etag.as_deref(), Some(etag.as_str()));
    assert_eq!(s.get("vol/chunks/01", Some(100..200)).await.unwrap().body, body.slice(100..200));
    assert_eq!(s.head("vol/chunks/01").await.unwrap().size, 10_000);

    let new = s.put("vol/chunks/01", Bytes::from_static(b"v2"), meta("y"), Condition::IfMatch(etag.clone())).await;
    let new_etag = new.unwrap();
    assert_eq!(
        s.put("vol/chunks/01", Bytes::new(), BTreeMap::new(), Condition::IfMatch(etag)).await,
        Err(ObjectError::PreconditionFailed),
        "the old entity tag no longer matches"
    );
    s.put("vol/log/02", Bytes::from_static(b"l"), BTreeMap::new(), Condition::None).await.unwrap();
    s.put("vol/meta", Bytes::from_static(b"m"), BTreeMap::new(), Condition::None).await.unwrap();
    let listed = s.list("vol/chunks/", None).await.unwrap();
    let listed_as = Listed { key: "vol/chunks/01".into(), size: 2, etag: new_etag };
    assert_eq!(listed.objects, vec![listed_as], "listed with the entity tag of its PUT");
    let all: Vec<String> = s.list("vol/", None).await.unwrap().objects.into_iter().map(|o| o.key).collect();
    assert_eq!(all, ["vol/chunks/01", "vol/log/02", "vol/meta"]);
    assert_eq!(s.list("vol/m", None).await.unwrap().objects.len(), 1);

    let results = s.delete_many(vec!["vol/chunks/01".into(), "vol/missing".into()]).await.unwrap();
    assert!(results.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(s.get("vol/chunks/01", None).await, Err(ObjectError::NotFound));
    s.delete("vol/chunks/01").await.unwrap();
}

#[tokio::test]
async fn bad_keys_and_a_second_process_are_refused() {
    let fs = CrashFs::new();
    let s = bucket(&fs);
    for key in ["", "a//b", "../x", "a/./b", "a/.rtgt-tmp-1", "dir/"] {
        assert!(s.put(key, Bytes::new(), BTreeMap::new(), Condition::None).await.is_err(), "{key:?}");
    }
    s.put("a", Bytes::new(), BTreeMap::new(), Condition::None).await.unwrap();
    let err = s.put("a/b", Bytes::new(), BTreeMap::new(), Condition::None).await.unwrap_err();
    assert!(err.to_string().contains("conflicts"), "{err}");
    let err = open(&fs).err().unwrap();
    assert!(err.contains("in use"), "{err}");
}

#[tokio::test]
async fn damage_is_an_error_never_other_data() {
    let fs = CrashFs::new();
    let s = bucket(&fs);
    s.put("k", Bytes::from(vec![7u8; 100]), BTreeMap::new(), Condition::None).await.unwrap();
    let path = Path::new(ROOT).join("bkt/k");
    let mut bytes = fs.files(Path::new(ROOT))[&path].clone();
    bytes[HEADER_BYTES + 5] ^= 1;
    fs.remove_file(&path).unwrap();
    fs.write_new(&path, &[&bytes], true).unwrap();
    let err = s.get("k", None).await.unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    bytes.truncate(HEADER_BYTES + 50);
    fs.remove_file(&path).unwrap();
    fs.write_new(&path, &[&bytes], true).unwrap();
    assert!(s.get("k", Some(0..10)).await.is_err(), "a short file is damage");
}

// ---------------------------------------------------------------- crash model

#[derive(Debug, Clone)]
enum Op {
    Put {
        key: usize,
        fill: u8,
        len: usize,
        create_only: bool,
    },
    Delete {
        key: usize,
    },
    DeleteMany,
    /// The process dies after `ops` more filesystem operations.
    Die {
        ops: u64,
    },
    /// The filesystem operation `ops` from now fails alone (an I/O error lived through), with
    /// its change made or not.
    Fault {
        ops: u64,
        applied: bool,
    },
    /// The process is killed (or dies) and starts again, after a power loss or not.
    Restart {
        power: bool,
    },
    /// The process closes the store and exits, then starts again, after a power loss or not.
    Close {
        power: bool,
    },
}

const KEYS: [&str; 4] = ["v/chunks/0", "v/chunks/1", "v/log/7", "v/meta"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..KEYS.len(), any::<u8>(), 0usize..3000, any::<bool>())
            .prop_map(|(key, fill, len, create_only)| Op::Put { key, fill, len, create_only }),
        2 => (0..KEYS.len()).prop_map(|key| Op::Delete { key }),
        1 => Just(Op::DeleteMany),
        1 => (0u64..8).prop_map(|ops| Op::Die { ops }),
        1 => (0u64..8, any::<bool>()).prop_map(|(ops, applied)| Op::Fault { ops, applied }),
        1 => any::<bool>().prop_map(|power| Op::Restart { power }),
        1 => any::<bool>().prop_map(|power| Op::Close { power }),
    ]
}

/// Per key: what it held when the last operation on it was acknowledged, and what operations
/// since may have done (failed ones, and the one a crash cut short).
#[derive(Debug, Clone, Default)]
struct KeyModel {
    acked: Option<Vec<u8>>,
    maybe: Vec<Option<Vec<u8>>>,
}

impl KeyModel {
    fn ack(&mut self, v: Option<Vec<u8>>) {
        self.acked = v;
        self.maybe.clear();
    }
    fn possible(&self) -> Vec<Option<Vec<u8>>> {
        let mut all = vec![self.acked.clone()];
        all.extend(self.maybe.iter().cloned());
        all
    }
}

async fn run_crash_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let fs = CrashFs::new();
    let mut store = bucket(&fs);
    let mut model = vec![KeyModel::default(); KEYS.len()];
    let mut faulty = false;
    for op in ops {
        match op {
            Op::Put { key, fill, len, create_only } => {
                let body = vec![fill; len];
                let cond = if create_only { Condition::IfNoneMatch } else { Condition::None };
                let r = store.put(KEYS[key], Bytes::from(body.clone()), meta(&fill.to_string()), cond).await;
                match r {
                    Ok(_) => model[key].ack(Some(body)),
                    Err(ObjectError::PreconditionFailed) => {
                        prop_assert!(model[key].acked.is_some() || !model[key].maybe.is_empty());
                    }
                    Err(e) => {
                        prop_assert!(faulty, "put failed without a crash or a fault: {e}");
                        model[key].maybe.push(Some(body));
                    }
                }
            }
            Op::Delete { key } => match store.delete(KEYS[key]).await {
                Ok(()) => model[key].ack(None),
                Err(e) => {
                    prop_assert!(faulty, "delete failed without a crash or a fault: {e}");
                    model[key].maybe.push(None);
                }
            },
            Op::DeleteMany => {
                let results = store.delete_many(KEYS.iter().map(|k| k.to_string()).collect()).await;
                match results {
                    Ok(results) => {
                        for (i, (_, r)) in results.into_iter().enumerate() {
                            match r {
                                Ok(()) => model[i].ack(None),
                                Err(_) => model[i].maybe.push(None),
                            }
                        }
                    }
                    Err(_) => model.iter_mut().for_each(|m| m.maybe.push(None)),
                }
            }
            Op::Die { ops } => {
                fs.die_after(ops);
                faulty = true;
            }
            Op::Fault { ops, applied } => {
                match applied {
                    true => fs.fail_once_after_applying(ops),
                    false => fs.fail_once_after(ops),
                }
                faulty = true;
            }
            Op::Restart { power } | Op::Close { power } => {
                match op {
                    Op::Close { .. } => {
                        drop(store);
                        let marker = fs.exists(&Path::new(ROOT).join(CLEAN_CLOSE_MARKER));
                        prop_assert!(marker || faulty, "a close with nothing failed leaves its marker");
                    }
                    _ => kill(store, &fs),
                }
                if power {
                    fs.power_loss();
                } else {
                    fs.process_crash();
                }
                faulty = false;
                store = bucket(&fs);
                prop_assert_eq!(temporaries(&fs), Vec::<PathBuf>::new(), "temporary files left after the open");
                check_against(&store, &mut model).await?;
            }
        }
    }
    Ok(())
}

/// Every key holds one of the values its model allows, whole, with its metadata; the listing
/// agrees; afterwards the model knows which.
async fn check_against(store: &LocalStore, model: &mut [KeyModel]) -> Result<(), TestCaseError> {
    let listed: BTreeSet<String> = store.list("v/", None).await.unwrap().objects.into_iter().map(|o| o.key).collect();
    for (i, key) in KEYS.iter().enumerate() {
        let found = match store.get(key, None).await {
            Ok(out) => {
                if let Some(&fill) = out.body.first() {
                    prop_assert_eq!(out.meta.metadata, meta(&fill.to_string()), "metadata of {}", key);
                }
                Some(out.body.to_vec())
            }
            Err(ObjectError::NotFound) => None,
            Err(e) => return Err(TestCaseError::fail(format!("{key} is unreadable after a crash: {e}"))),
        };
        prop_assert_eq!(listed.contains(*key), found.is_some(), "listing of {}", key);
        let possible = model[i].possible();
        prop_assert!(
            possible.contains(&found),
            "{} holds {:?} bytes, not one of the {} possible values",
            key,
            found.as_ref().map(Vec::len),
            possible.len()
        );
        model[i].ack(found);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// An acknowledged PUT or DELETE survives a process crash and a power loss; an
    /// unacknowledged one is all there or not at all; a crash never leaves damage.
    #[test]
    fn acknowledged_objects_survive_crashes_and_power_loss(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(run_crash_model(ops))?;
    }
}

#[tokio::test]
async fn an_acknowledged_put_survives_a_power_loss() {
    let fs = CrashFs::new();
    let root = LocalRoot::open(
        Arc::new(fs.clone()),
        Path::new(ROOT),
        LocalOptions { offload: Offload::Inline, etag_seed: 1, durable: true, remember_clean_close: false },
    )
    .unwrap();
    root.create_bucket("bkt").unwrap();
    let s = root.bucket("bkt").unwrap();
    s.put("v/meta", Bytes::from_static(b"durable"), BTreeMap::new(), Condition::None).await.unwrap();
    drop((s, root));
    fs.power_loss();
    assert_eq!(bucket(&fs).get("v/meta", None).await.unwrap().body, Bytes::from_static(b"durable"));
}

/// A filesystem whose writes of bodies holding `stall` wait until released (a stalled disk).
#[derive(Clone)]
struct StallFs {
    inner: CrashFs,
    stall: Arc<(std::sync::Mutex<Option<Vec<u8>>>, std::sync::Condvar)>,
    /// Stalled writes that went on after their release.
    resumed: Arc<std::sync::atomic::AtomicUsize>,
    /// Writes in progress (stalled or not), and the most there were at once.
    running: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
}

impl StallFs {
    fn new() -> StallFs {
        StallFs {
            inner: CrashFs::new(),
            stall: Arc::new((std::sync::Mutex::new(None), std::sync::Condvar::new())),
            resumed: Arc::default(),
            running: Arc::default(),
            most: Arc::default(),
        }
    }

    /// Writes of a body holding the stalled bytes wait until [`StallFs::release`].
    fn stall_on(&self, bytes: &[u8]) {
        *self.stall.0.lock().unwrap() = Some(bytes.to_vec());
    }

    fn release(&self) {
        *self.stall.0.lock().unwrap() = None;
        self.stall.1.notify_all();
    }

    fn write_when_released(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let (lock, cond) = &*self.stall;
        let mut stall = lock.lock().unwrap();
        let mut stalled = false;
        while stall.as_ref().is_some_and(|s| parts.iter().any(|p| p.windows(s.len()).any(|w| w == s.as_slice()))) {
            stalled = true;
            stall = cond.wait(stall).unwrap();
        }
        drop(stall);
        let written = self.inner.write_new(path, parts, sync);
        if stalled {
            self.resumed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        written
    }
}

impl Fs for StallFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.create_dir(path)
    }
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        let written = self.write_when_released(path, parts, sync);
        self.running.fetch_sub(1, SeqCst);
        written
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.inner.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.inner.sync_dir(path)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        self.inner.open(path)
    }
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn super::WriteAt>> {
        self.inner.open_rw(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        self.inner.read_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.inner.exists(path)
    }
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        self.inner.lock(path)
    }
}

/// A PUT whose caller gave up (timed out, cancelled) while its write was stalled changes
/// nothing when the write finally completes: it must not land over a later PUT of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_caller_gave_up_never_lands_later() {
    let fs = StallFs::new();
    let s = pooled_bucket(&fs);
    fs.stall_on(b"first");
    let first = s.put("k", Bytes::from_static(b"first"), BTreeMap::new(), Condition::None);
    assert!(tokio::time::timeout(Duration::from_millis(50), first).await.is_err(), "the first PUT stalls");
    s.put("k", Bytes::from_static(b"second"), BTreeMap::new(), Condition::None).await.unwrap();
    fs.release();
    // The stalled job finishes its write, finds its caller gone and removes its temporary file.
    let dir = Path::new(ROOT).join("bkt");
    let temporaries = || fs.inner.files(&dir).keys().filter(|p| p.to_string_lossy().contains(TEMP_PREFIX)).count();
    while fs.resumed.load(std::sync::atomic::Ordering::SeqCst) == 0 || temporaries() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(s.get("k", None).await.unwrap().body, Bytes::from_static(b"second"));
}

fn pooled_bucket(fs: &StallFs) -> LocalStore {
    let options =
        LocalOptions { offload: Offload::BlockingPool, etag_seed: 1, durable: true, remember_clean_close: false };
    let root = LocalRoot::open(Arc::new(fs.clone()), Path::new(ROOT), options).unwrap();
    root.create_bucket("bkt").unwrap();
    root.bucket("bkt").unwrap()
}

/// PUTs on the blocking pool run a bounded number at a time (the rest wait their turn, and
/// all complete): many at once took the CPUs from the workers serving commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puts_on_the_blocking_pool_run_a_bounded_number_at_once() {
    use std::sync::atomic::Ordering::SeqCst;
    let bound = writers_at_once();
    let fs = StallFs::new();
    let s = pooled_bucket(&fs);
    fs.stall_on(b"held");
    let puts: Vec<_> = (0..bound + 3)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.put(&format!("k{i}"), Bytes::from(format!("held {i}")), BTreeMap::new(), Condition::None).await
            })
        })
        .collect();
    while fs.running.load(SeqCst) < bound {
        tokio::task::yield_now().await;
    }
    fs.release();
    for put in puts {
        put.await.unwrap().unwrap();
    }
    assert_eq!(fs.most.load(SeqCst), bound, "PUTs running at once");
    let listed = s.list("k", None).await.unwrap();
    assert_eq!(listed.objects.len(), bound + 3);
}

/// Mutating filesystem operations the open of the store did.
fn ops_to_open(fs: &CrashFs) -> u64 {
    let before = fs.ops();
    drop(open(fs).unwrap());
    fs.ops() - before
}

/// A store closed cleanly opens without its crash clean-up (a walk and an fsync of every
/// directory: 1.5 s for a 100 GiB volume); a killed one, or one whose directory fsync failed
/// (a change visible but maybe not durable), gets it.
#[tokio::test]
async fn only_a_clean_close_spares_the_next_open_its_clean_up() {
    let empty = CrashFs::new();
    drop(bucket(&empty));
    let fs = CrashFs::new();
    let s = bucket(&fs);
    for i in 0..20 {
        s.put(&format!("v/chunks/{i}/0"), Bytes::from_static(b"x"), BTreeMap::new(), Condition::None).await.unwrap();
    }
    drop(s);
    let marker = Path::new(ROOT).join(CLEAN_CLOSE_MARKER);
    assert!(fs.exists(&marker), "a clean close leaves its marker");
    assert_eq!(ops_to_open(&fs), ops_to_open(&empty), "20 directories cost nothing at the open");
    // That open (above) removed the marker and closed cleanly again: a kill now leaves none.
    kill(bucket(&fs), &fs);
    assert!(!fs.exists(&marker));
    let settling = ops_to_open(&fs);
    assert!(settling > 20, "a crash is followed by the walk: {settling} operations");

    let s = bucket(&fs);
    s.put("v/chunks/3/0", Bytes::from_static(b"x"), BTreeMap::new(), Condition::None).await.unwrap();
    // The next PUT's rename lands, its directory fsync fails: visible, maybe not durable.
    fs.fail_once_after(2);
    let r = s.put("v/chunks/3/0", Bytes::from_static(b"y"), BTreeMap::new(), Condition::None).await;
    assert!(matches!(r, Err(ObjectError::Indeterminate(_))), "{r:?}");
    drop(s);
    assert!(!fs.exists(&marker), "a store with a failed fsync does not pass for settled");
    let s = bucket(&fs);
    assert_eq!(s.get("v/chunks/3/0", None).await.unwrap().body, Bytes::from_static(b"y"));
    drop(s);
    fs.power_loss();
    let s = bucket(&fs);
    assert_eq!(s.get("v/chunks/3/0", None).await.unwrap().body, Bytes::from_static(b"y"), "made durable by the walk");
}

/// An open whose clean-up fails leaves no marker when it gives up: the next open cleans up.
#[tokio::test]
async fn an_open_whose_clean_up_fails_does_not_pass_for_a_clean_close() {
    let fs = CrashFs::new();
    let s = bucket(&fs);
    // The PUT writes its temporary file, then the process dies before the rename.
    fs.die_after(1);
    assert!(s.put("meta", Bytes::from_static(b"x"), BTreeMap::new(), Condition::None).await.is_err());
    kill(s, &fs);
    assert_eq!(temporaries(&fs).len(), 1);
    // The open's second operation is the clean-up's first fsync (after its root's, made sure of).
    fs.fail_once_after(1);
    let opened = open(&fs);
    assert!(opened.as_ref().is_err_and(|e| e.contains("cannot clean")), "{:?}", opened.err());
    assert!(!fs.exists(&Path::new(ROOT).join(CLEAN_CLOSE_MARKER)), "a failed open is no clean close");
    drop(bucket(&fs));
    assert_eq!(temporaries(&fs), Vec::<PathBuf>::new(), "the next open cleaned up");
}
