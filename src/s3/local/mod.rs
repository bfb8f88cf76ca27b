//! The local object store: the embedded default's store, reached in-process by `rtgt serve`
//! and over HTTP by `rtgt s3-server` (see `serve.rs`).
//!
//! Crash safety is its point. An object is one file (`object_file.rs`: header with metadata,
//! then the body) at `<root>/<bucket>/<key>`. A PUT writes a temporary file beside it, fsyncs
//! it, renames it over the key and fsyncs the directory before it answers, so an acknowledged
//! object is durable with its metadata, and a torn or unacknowledged one is never visible (a
//! leftover temporary file is removed at the next open). A DELETE answers after the directory
//! fsync. Conditional PUTs compare and rename under one lock; the root is locked against a
//! second process. Directories created for keys are made durable in their parents.
//!
//! An open after a crash removes leftover temporary files and fsyncs every directory, which
//! costs one fsync per directory of the store (1.5 s for a 100 GiB volume). A store closed with
//! nothing in flight and nothing failed leaves a marker saying there is nothing to do, and the
//! next open skips the walk (see [`LocalOptions::remember_clean_close`]).

mod crash_fs;
mod fs;
mod legacy;
#[doc(hidden)] // public for the fuzz target of its header parser
pub mod object_file;
mod segment_record;
mod segment_store;

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

pub use crash_fs::CrashFs;
pub use fs::{DirEntry, Fs, ReadAt, StdFs, WriteAt};
use object_file::{Description, HEADER_BYTES};
pub use segment_store::{SEGMENT_BYTES, SegmentOptions, SegmentStore};

use super::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, Listed, ObjResult, ObjectError, ObjectMeta, ObjectStore,
};

/// Names inside the store's directories that are never objects.
const RESERVED_PREFIX: &str = ".rtgt-";
const TEMP_PREFIX: &str = ".rtgt-tmp-";
/// The lock file of a store (held by the process that has it open).
pub const LOCK_NAME: &str = ".rtgt-store.lock";
/// Written once every object is in this store's format (legacy s3s-fs files converted).
const FORMAT_MARKER: &str = ".rtgt-store-v1";
/// Written when the store closes settled: no temporary file left, every directory durable.
/// The open that finds it removes it, durably, before anything else changes.
pub const CLEAN_CLOSE_MARKER: &str = ".rtgt-store-closed-cleanly";
/// The longest key S3 allows.
const KEY_BYTES_MAX: usize = 1024;

/// How the store runs its blocking file operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// On tokio's blocking pool (production: file I/O never blocks an async worker).
    BlockingPool,
    /// On the calling task (tests and the simulation, where the filesystem is in memory).
    Inline,
}

/// How many PUTs and DELETEs run on the blocking pool at once: one per CPU. Each PUT of a
/// chunk copies megabytes into the page cache and syncs them; a volume's merges send eight at
/// once, and as many threads doing that took the CPUs from the async workers serving commands
/// (their polls were off the CPU for 10-20 ms at a time). 4 KiB random writes at QD32 to an
/// S3 LUN on the embedded store, cache holding the LUN, 2 CPUs: longest command 11-14 ms
/// unbounded, 8.3-9.3 ms with 4 at once, 5.1-5.8 ms with 2, 3.9-4.3 ms with 1 (p99 1.1-1.9 ms
/// in all). The price: when writes outrun the store and wait for merges to make room in the
/// cache (256 MiB), the longest wait grows (258-303 ms with 8, 296-307 with 4, 353-444 with 2;
/// IOPS the same). Reads are not bounded: commands wait for them.
fn writers_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).max(2)
}

/// What a blocking job does, which says whether it waits for [`writers_at_once`].
#[derive(Debug, Clone, Copy)]
enum Job {
    Read,
    Mutation,
}

#[derive(Debug, Clone)]
pub struct LocalOptions {
    pub offload: Offload,
    /// Start of the counter that makes entity tags unique across restarts.
    pub etag_seed: u64,
    /// Whether an acknowledged PUT or DELETE is durable (fsync of the file and its directory).
    /// A cache whose entries are checked when read may do without.
    pub durable: bool,
    /// Whether closing a durable store (dropping it: every operation holds it, so none is in
    /// flight) with no mutation failed leaves [`CLEAN_CLOSE_MARKER`], which lets the next open
    /// skip the crash clean-up. A killed process runs no destructors and leaves none. Off in
    /// the simulation, whose crashed hosts are dropped as if closed.
    pub remember_clean_close: bool,
}

/// A directory of buckets, locked by this process.
pub struct LocalRoot {
    fs: Arc<dyn Fs>,
    root: PathBuf,
    offload: Offload,
    /// Bounds the PUTs and DELETEs on the blocking pool at once (see [`writers_at_once`]).
    writers: Arc<tokio::sync::Semaphore>,
    /// See [`LocalOptions::durable`].
    durable: bool,
    /// See [`LocalOptions::remember_clean_close`].
    remember_clean_close: bool,
    /// Set when a mutation failed in a way that may leave a temporary file or a change not yet
    /// durable: the next open must clean up whatever the close.
    unsettled: AtomicBool,
    /// Conditional checks and renames happen under it.
    mutate: Mutex<()>,
    next_etag: AtomicU64,
    next_temp: AtomicU64,
    /// Directories known to exist durably.
    known_dirs: Mutex<BTreeSet<PathBuf>>,
    _lock: Box<dyn Any + Send + Sync>,
}

/// One bucket of a [`LocalRoot`]: an [`ObjectStore`].
#[derive(Clone)]
pub struct LocalStore {
    root: Arc<LocalRoot>,
    bucket: String,
}

fn io_err(e: io::Error, what: &str) -> ObjectError {
    ObjectError::failed(format!("{what}: {e}"))
}

/// Whether `name` is a valid bucket name (the S3 rules, as `s3://` URLs check them).
pub fn valid_bucket(name: &str) -> bool {
    crate::s3::url::S3Url::parse(&format!("s3://{name}")).is_ok_and(|u| u.bucket == name)
}

impl LocalRoot {
    /// Opens (creating it if needed) the store at `root`: takes its lock, converts objects left
    /// by s3s-fs (the embedded store of earlier versions), removes leftover temporary files.
    pub fn open(fs: Arc<dyn Fs>, root: &Path, opts: LocalOptions) -> Result<Arc<LocalRoot>, String> {
        let shown = root.display();
        let mut known = BTreeSet::new();
        ensure_dirs(&*fs, root, &mut known).map_err(|e| format!("cannot create {shown}: {e}"))?;
        let lock = fs.lock(&root.join(LOCK_NAME)).map_err(|e| {
            format!("the object store {shown} is in use by another process ({e}); stop it, or use another directory")
        })?;
        let store = Arc::new(LocalRoot {
            fs,
            root: root.to_path_buf(),
            offload: opts.offload,
            writers: Arc::new(tokio::sync::Semaphore::new(writers_at_once())),
            durable: opts.durable,
            remember_clean_close: opts.remember_clean_close,
            // Until the open below has settled the store: an open that fails leaves no marker.
            unsettled: AtomicBool::new(true),
            mutate: Mutex::new(()),
            next_etag: AtomicU64::new(opts.etag_seed),
            next_temp: AtomicU64::new(0),
            known_dirs: Mutex::new(known),
            _lock: lock,
        });
        // A clean close's marker goes, durably, before anything changes (a conversion too): from
        // now on a crash must be found.
        let marker = root.join(CLEAN_CLOSE_MARKER);
        let closed_cleanly = store.fs.exists(&marker);
        if closed_cleanly {
            store
                .fs
                .remove_file(&marker)
                .and_then(|()| store.fs.sync_dir(root))
                .map_err(|e| format!("cannot remove {}: {e}", marker.display()))?;
        }
        if !store.fs.exists(&root.join(FORMAT_MARKER)) {
            legacy::convert(&store).map_err(|e| format!("cannot convert the objects in {shown}: {e}"))?;
            store
                .fs
                .write_new(&root.join(FORMAT_MARKER), &[b"rtgt local object store, format 1\n"], true)
                .and_then(|()| store.fs.sync_dir(root))
                .map_err(|e| format!("cannot write {}: {e}", root.join(FORMAT_MARKER).display()))?;
        }
        if !closed_cleanly {
            store.settle_after_crash().map_err(|e| format!("cannot clean {shown}: {e}"))?;
        }
        store.unsettled.store(false, Ordering::SeqCst);
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Every object of a bucket and its body, read without taking the store's lock (checks
    /// of a store another party holds: the simulation's oracles). Damaged objects are left out.
    pub fn inspect(fs: &dyn Fs, root: &Path, bucket: &str) -> BTreeMap<String, Bytes> {
        let bucket_dir = root.join(bucket);
        let mut out = BTreeMap::new();
        let mut dirs = vec![bucket_dir.clone()];
        while let Some(dir) = dirs.pop() {
            for e in fs.read_dir(&dir).unwrap_or_default() {
                let path = dir.join(&e.name);
                if e.is_dir {
                    dirs.push(path);
                    continue;
                }
                if e.name.starts_with(RESERVED_PREFIX) {
                    continue;
                }
                let Ok(file) = fs.open(&path) else { continue };
                let Ok(bytes) = fs::read_exact_at(&*file, 0, file.size() as usize) else { continue };
                if object_file::parse_header(&bytes[..bytes.len().min(HEADER_BYTES)]).is_ok() {
                    let key = path.strip_prefix(&bucket_dir).expect("below").to_string_lossy().into_owned();
                    out.insert(key, Bytes::copy_from_slice(&bytes[HEADER_BYTES..]));
                }
            }
        }
        out
    }

    /// A bucket of this store (it must exist).
    pub fn bucket(self: &Arc<Self>, name: &str) -> Result<LocalStore, String> {
        if !valid_bucket(name) || !self.fs.exists(&self.root.join(name)) {
            return Err(format!("no bucket {name:?} in {}", self.root.display()));
        }
        Ok(LocalStore { root: self.clone(), bucket: name.to_string() })
    }

    /// Creates a bucket (an existing one is fine).
    pub fn create_bucket(&self, name: &str) -> Result<(), String> {
        if !valid_bucket(name) {
            return Err(format!("{name:?} is not a valid bucket name (3-63 lowercase letters, digits, '-', '.')"));
        }
        let dir = self.root.join(name);
        self.ensure_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))
    }

    /// The buckets, in name order.
    pub fn buckets(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .fs
            .read_dir(&self.root)
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.is_dir && valid_bucket(&e.name))
            .map(|e| e.name)
            .collect();
        out.sort();
        out
    }

    /// [`ensure_dirs`] against the directories this process made sure of, without holding
    /// their lock across the file operations.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        let missing = unknown_ancestors(dir, &self.known_dirs.lock().expect("poisoned"));
        if missing.is_empty() {
            return Ok(());
        }
        make_durable(&*self.fs, &missing)?;
        self.known_dirs.lock().expect("poisoned").extend(missing);
        Ok(())
    }

    /// Notes that a mutation failed in a way that may leave the store unsettled.
    fn note_failure<T>(&self, result: io::Result<T>) -> io::Result<T> {
        if result.is_err() {
            self.mark_unsettled();
        }
        result
    }

    /// The next open must settle the store (no clean-close marker is left).
    fn mark_unsettled(&self) {
        self.unsettled.store(true, Ordering::SeqCst);
    }

    fn temp_name(&self) -> String {
        format!("{TEMP_PREFIX}{}", self.next_temp.fetch_add(1, Ordering::Relaxed))
    }

    /// Removes temporary files left by a crash, and makes every directory durable: what a
    /// crashed process changed without its fsync may be visible now, and must not vanish at a
    /// later power loss after this process has relied on it.
    fn settle_after_crash(&self) -> io::Result<()> {
        self.fs.sync_dir(&self.root)?;
        for bucket in self.buckets() {
            let mut dirs = vec![self.root.join(bucket)];
            while let Some(dir) = dirs.pop() {
                for e in self.fs.read_dir(&dir)? {
                    if e.is_dir {
                        dirs.push(dir.join(&e.name));
                    } else if e.name.starts_with(TEMP_PREFIX) {
                        self.fs.remove_file(&dir.join(&e.name))?;
                    }
                }
                self.fs.sync_dir(&dir)?;
                self.known_dirs.lock().expect("poisoned").insert(dir);
            }
        }
        Ok(())
    }

    /// Runs a read (GET, HEAD, LIST) as [`Offload`] says: reads are what commands wait for,
    /// and run at once.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&LocalRoot, &Caller) -> ObjResult<T> + Send + 'static,
    ) -> ObjResult<T> {
        self.run_as(Job::Read, job).await
    }

    /// Runs a PUT or DELETE as [`Offload`] says, at most [`writers_at_once`] of them on the
    /// blocking pool at once.
    async fn run_mutation<T: Send + 'static>(
        self: &Arc<Self>,
        job: impl FnOnce(&LocalRoot, &Caller) -> ObjResult<T> + Send + 'static,
    ) -> ObjResult<T> {
        self.run_as(Job::Mutation, job).await
    }

    async fn run_as<T: Send + 'static>(
        self: &Arc<Self>,
        kind: Job,
        job: impl FnOnce(&LocalRoot, &Caller) -> ObjResult<T> + Send + 'static,
    ) -> ObjResult<T> {
        let job = move |root: &LocalRoot, caller: &Caller| {
            let _unsettled_if_it_panics = PanicGuard(&root.unsettled);
            job(root, caller)
        };
        match self.offload {
            Offload::Inline => job(self, &Caller::default()),
            Offload::BlockingPool => {
                let permit = match kind {
                    Job::Read => None,
                    Job::Mutation => Some(self.writers.clone().acquire_owned().await.expect("never closed")),
                };
                let me = self.clone();
                let caller = Caller::default();
                let gone = GoneOnDrop(caller.clone());
                // The production adapter: file I/O runs off the async workers. The job goes on
                // if its caller goes away (timed out, cancelled), but changes nothing visible
                // after that: a retry that came later must not be overtaken by it. It holds
                // its permit until it ends, whether its caller waits or not.
                #[allow(clippy::disallowed_methods)]
                let handle = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    job(&me, &caller)
                });
                let result =
                    handle.await.map_err(|e| ObjectError::failed(format!("local store operation failed: {e}")))?;
                std::mem::forget(gone);
                result
            }
        }
    }

    /// Reads the header of an object file; `None` if there is no object.
    fn read_description(&self, path: &Path) -> ObjResult<Option<(Box<dyn ReadAt>, Description)>> {
        let file = match self.fs.open(path) {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err(e, "cannot open the object")),
        };
        let header = fs::read_exact_at(&*file, 0, HEADER_BYTES).map_err(|e| io_err(e, "cannot read the object"))?;
        let desc =
            object_file::parse_header(&header).map_err(|e| ObjectError::failed(format!("{}: {e}", path.display())))?;
        if file.size() != HEADER_BYTES as u64 + desc.size {
            return Err(ObjectError::failed(format!(
                "{}: the file holds {} bytes of body, its header says {}",
                path.display(),
                file.size().saturating_sub(HEADER_BYTES as u64),
                desc.size
            )));
        }
        Ok(Some((file, desc)))
    }

    /// Writes a new object file for `path` and renames it into place if `condition` holds.
    fn put_file(
        &self,
        path: &Path,
        body: &[u8],
        metadata: BTreeMap<String, String>,
        condition: &Condition,
        caller: &Caller,
    ) -> ObjResult<Option<String>> {
        let dir = path.parent().expect("object paths have a parent");
        self.note_failure(self.ensure_dir(dir)).map_err(|e| conflict_or(e, "cannot create the key's directory"))?;
        let crc32c = crc32c::crc32c(body);
        let etag = format!("\"{crc32c:08x}{:016x}\"", self.next_etag.fetch_add(1, Ordering::Relaxed));
        let desc = Description { etag: etag.clone(), size: body.len() as u64, crc32c, metadata };
        let header = object_file::encode_header(&desc).map_err(|e| ObjectError::failed(e.to_string()))?;
        let temp = dir.join(self.temp_name());
        let sync = self.durable && !crate::mutants::active(crate::mutants::Mutant::LocalStoreNoSync);
        self.note_failure(self.fs.write_new(&temp, &[&header, body], sync))
            .map_err(|e| conflict_or(e, "cannot write the object"))?;
        let renamed = {
            let _serial = self.mutate.lock().expect("poisoned");
            caller.waiting().and_then(|()| self.check(path, condition)).and_then(|()| {
                self.fs.rename(&temp, path).map_err(|e| conflict_or(e, "cannot rename the object into place"))
            })
        };
        if let Err(e) = renamed {
            // Removed durably: another PUT's directory fsync may have made the temporary file's
            // entry durable, and a power loss must not bring it back after a clean close. Left
            // behind, it is removed at the next open.
            let removed = self.fs.remove_file(&temp).and_then(|()| match sync {
                true => self.fs.sync_dir(dir),
                false => Ok(()),
            });
            let _ = self.note_failure(removed);
            return Err(e);
        }
        if sync {
            // Visible now; acknowledged only once durable. A failure here leaves it uncertain.
            self.note_failure(self.fs.sync_dir(dir))
                .map_err(|e| ObjectError::Indeterminate(format!("cannot sync the directory: {e}")))?;
        }
        Ok(Some(etag))
    }

    /// Checks a PUT's condition against the object now at `path`.
    fn check(&self, path: &Path, condition: &Condition) -> ObjResult<()> {
        let current = || self.read_description(path).map(|d| d.map(|(_, desc)| desc.etag));
        match condition {
            Condition::None => Ok(()),
            Condition::IfNoneMatch => match current()? {
                None => Ok(()),
                Some(_) => Err(ObjectError::PreconditionFailed),
            },
            Condition::IfMatch(want) => match current()? {
                Some(have) if have.trim_matches('"') == want.trim_matches('"') => Ok(()),
                _ => Err(ObjectError::PreconditionFailed),
            },
        }
    }

    /// Removes objects, then makes each directory's state durable: a key found missing may be
    /// one whose removal a crash left unsynced. Per key: the result.
    fn remove_files(&self, paths: &[(String, ObjResult<PathBuf>)], caller: &Caller) -> DeleteResults {
        let mut results: Vec<(String, ObjResult<()>)> = Vec::new();
        let mut dirs: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        {
            let _serial = self.mutate.lock().expect("poisoned");
            for (key, path) in paths {
                let result = caller.waiting().and(path.clone()).and_then(|path| {
                    let dir = path.parent().expect("has a parent");
                    match self.fs.remove_file(&path) {
                        // The entry may be gone all the same, visible and not durable: the next
                        // open must settle the store.
                        Err(e) if !is_absent(&e) => {
                            self.mark_unsettled();
                            return Err(io_err(e, "cannot delete the object"));
                        }
                        _ if !self.fs.exists(dir) => {}
                        _ => dirs.entry(dir.to_path_buf()).or_default().push(results.len()),
                    }
                    Ok(())
                });
                results.push((key.clone(), result));
            }
        }
        let sync = self.durable && !crate::mutants::active(crate::mutants::Mutant::LocalStoreNoSync);
        for (dir, removed) in dirs.into_iter().filter(|_| sync) {
            if let Err(e) = self.note_failure(self.fs.sync_dir(&dir)) {
                for i in removed {
                    results[i].1 = Err(ObjectError::Indeterminate(format!("cannot sync the directory: {e}")));
                }
            }
        }
        results
    }

    /// Every object under `dir` whose key starts with `prefix`: (key, size).
    fn walk(&self, bucket_dir: &Path, dir: &Path, prefix: &str, out: &mut Vec<Listed>) -> io::Result<()> {
        let entries = match self.fs.read_dir(dir) {
            Ok(e) => e,
            Err(e) if is_absent(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            if e.name.starts_with(RESERVED_PREFIX) {
                continue;
            }
            let path = dir.join(&e.name);
            let key = path.strip_prefix(bucket_dir).expect("below the bucket").to_string_lossy().into_owned();
            if e.is_dir {
                let as_dir = format!("{key}/");
                if as_dir.starts_with(prefix) || prefix.starts_with(&as_dir) {
                    self.walk(bucket_dir, &path, prefix, out)?;
                }
            } else if key.starts_with(prefix) {
                // The entity tag is in the header; an object whose header cannot be read is
                // listed without one (a GET reports what is wrong with it).
                let etag = self.read_description(&path).ok().flatten().map(|(_, d)| d.etag);
                out.push(Listed { key, size: e.len.saturating_sub(HEADER_BYTES as u64), etag });
            }
        }
        Ok(())
    }
}

impl Drop for LocalRoot {
    /// The store closes: every operation holds it, so none is in flight.
    fn drop(&mut self) {
        let settled = !self.unsettled.load(Ordering::SeqCst) && !std::thread::panicking();
        if !(self.remember_clean_close && self.durable && settled) {
            return;
        }
        // What the marker says holds whether or not the marker itself becomes durable.
        let marker = self.root.join(CLEAN_CLOSE_MARKER);
        let written = self.fs.write_new(&marker, &[b"closed cleanly: nothing to clean up at the next open\n"], true);
        if let Err(e) = written.and_then(|()| self.fs.sync_dir(&self.root)) {
            tracing::warn!(marker = %marker.display(), error = %e, "the next open of the store will check every directory");
        }
    }
}

/// Marks the store unsettled when a job panics (a temporary file may be left).
struct PanicGuard<'a>(&'a AtomicBool);

impl Drop for PanicGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Creates `dir` and its missing ancestors, and makes each durable in its parent: a directory
/// that exists may still be one a crash created without its parent's fsync, so every one this
/// process has not made durable yet gets that fsync (once).
fn ensure_dirs(fs: &dyn Fs, dir: &Path, known: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    let missing = unknown_ancestors(dir, known);
    make_durable(fs, &missing)?;
    known.extend(missing);
    Ok(())
}

/// `dir` and its ancestors up to the first in `known`, nearest first.
fn unknown_ancestors(dir: &Path, known: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    dir.ancestors().take_while(|d| !known.contains(*d)).map(Path::to_path_buf).collect()
}

/// Creates the directories of `missing` (nearest first), outermost first, each made durable in
/// its parent.
fn make_durable(fs: &dyn Fs, missing: &[PathBuf]) -> io::Result<()> {
    for dir in missing.iter().rev() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.create_dir(dir)?;
            fs.sync_dir(parent)?;
        }
    }
    Ok(())
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// Whether the caller of an operation still waits for it.
#[derive(Clone, Default)]
struct Caller(Arc<std::sync::atomic::AtomicBool>);

impl Caller {
    /// Ok while the caller waits; checked under the store's lock before anything becomes
    /// visible.
    fn waiting(&self) -> ObjResult<()> {
        match self.0.load(Ordering::SeqCst) {
            false => Ok(()),
            true => Err(ObjectError::failed("the caller gave up: nothing changed")),
        }
    }
}

/// Marks the caller gone when dropped (its future was cancelled or timed out).
struct GoneOnDrop(Caller);

impl Drop for GoneOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::SeqCst);
    }
}

/// A key that collides with another (a file where a directory is needed, or the reverse).
fn conflict_or(e: io::Error, what: &str) -> ObjectError {
    match e.kind() {
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory | io::ErrorKind::AlreadyExists => {
            ObjectError::failed(format!("{what}: the key conflicts with an existing object ({e})"))
        }
        _ => io_err(e, what),
    }
}

impl LocalStore {
    pub fn root(&self) -> &Arc<LocalRoot> {
        &self.root
    }

    fn bucket_dir(&self) -> PathBuf {
        self.root.root.join(&self.bucket)
    }

    /// The file of a key; keys that are not plain relative paths are refused.
    fn path(&self, key: &str) -> ObjResult<PathBuf> {
        let invalid = |why: &str| Err(ObjectError::InvalidKey { key: key.to_string(), why: why.to_string() });
        if key.is_empty() || key.len() > KEY_BYTES_MAX {
            return invalid("empty or longer than 1024 bytes");
        }
        for part in key.split('/') {
            if part.is_empty() || part == "." || part == ".." {
                return invalid("empty, '.' or '..' path component");
            }
            if part.starts_with(RESERVED_PREFIX) || part.contains('\0') {
                return invalid("reserved name");
            }
        }
        Ok(self.bucket_dir().join(key))
    }
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local object store {}", self.bucket_dir().display())
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            self.root
                .run(move |root, _| {
                    let (file, desc) = root.read_description(&path)?.ok_or(ObjectError::NotFound)?;
                    let (from, to) = match range {
                        None => (0, desc.size),
                        Some(r) if r.start < desc.size || (r.start == 0 && desc.size == 0) => {
                            (r.start, r.end.min(desc.size))
                        }
                        Some(_) => return Err(ObjectError::RangeNotSatisfiable),
                    };
                    let body = fs::read_exact_at(&*file, HEADER_BYTES as u64 + from, (to - from) as usize)
                        .map_err(|e| io_err(e, "cannot read the object"))?;
                    if body.len() as u64 != to - from {
                        return Err(ObjectError::failed(format!("{}: short read", path.display())));
                    }
                    if from == 0 && to == desc.size && crc32c::crc32c(&body) != desc.crc32c {
                        return Err(ObjectError::failed(format!("{}: body checksum mismatch", path.display())));
                    }
                    let meta = ObjectMeta { size: desc.size, etag: Some(desc.etag), metadata: desc.metadata };
                    Ok(GetOutput { body: Bytes::from(body), meta })
                })
                .await
        })
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            self.root.run_mutation(move |root, caller| root.put_file(&path, &body, metadata, &condition, caller)).await
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        crate::s3::delete_as_batch(self, key)
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        let paths: Vec<(String, ObjResult<PathBuf>)> = keys.into_iter().map(|k| (k.clone(), self.path(&k))).collect();
        Box::pin(async move { self.root.run_mutation(move |root, caller| Ok(root.remove_files(&paths, caller))).await })
    }

    fn list(&self, prefix: &str, _continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        let bucket_dir = self.bucket_dir();
        Box::pin(async move {
            self.root
                .run(move |root, _| {
                    // Start at the deepest directory the prefix names.
                    let start = match prefix.rfind('/') {
                        Some(i) => bucket_dir.join(&prefix[..i]),
                        None => bucket_dir.clone(),
                    };
                    let mut objects = Vec::new();
                    root.walk(&bucket_dir, &start, &prefix, &mut objects)
                        .map_err(|e| io_err(e, "cannot list the bucket"))?;
                    objects.sort();
                    Ok(ListPage { objects, next: None })
                })
                .await
        })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let path = self.path(key);
        Box::pin(async move {
            let path = path?;
            self.root
                .run(move |root, _| {
                    let (_, desc) = root.read_description(&path)?.ok_or(ObjectError::NotFound)?;
                    Ok(ObjectMeta { size: desc.size, etag: Some(desc.etag), metadata: desc.metadata })
                })
                .await
        })
    }
}

#[cfg(test)]
mod tests;
