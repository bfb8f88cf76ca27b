//! An object store in append-only segment files, for small objects that live briefly: the
//! local journal of `durability = "local"`. A PUT appends one record to the current segment
//! and answers after one `fdatasync` (about 0.1 ms on a local disk, where the one-file-per-
//! object store needs a file fsync, a rename and a directory fsync: 0.35 ms and more). A
//! DELETE appends a record naming the keys, synced the same way. The index lives in memory
//! and is rebuilt at open by reading the segments in order.
//!
//! Segments are files of a fixed size written full of zeros when created, so that appending
//! never changes a file's size and a sync is one device flush. A segment whose records are all
//! superseded is reused for a later generation (renamed, then the directory synced) or removed,
//! oldest first, so that a crash never brings back an object whose deletion is in a segment
//! already gone. When the oldest segment still holds a few live objects (a journal log set
//! aside, an upload that keeps failing), they are copied forward into the new segment, so that
//! the files stay about as large as what is live. Records carry their segment's generation:
//! reading stops at the first record that does not check or is of an older generation (see
//! [`super::segment_record`]).

use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::fs::{self, Fs, WriteAt};
use super::segment_record::{self as record, Record};
use super::{Caller, GoneOnDrop, KEY_BYTES_MAX, Offload, ensure_dirs, io_err};
use crate::s3::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, Listed, ObjResult, ObjectError, ObjectMeta, ObjectStore,
};

const LOCK_NAME: &str = ".rtgt-segments.lock";
const TEMP_NAME: &str = ".rtgt-tmp-segment";
const SEGMENT_PREFIX: &str = "segment-";
/// Bytes of a segment unless an object needs more.
pub const SEGMENT_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone)]
pub struct SegmentOptions {
    pub offload: Offload,
    /// Start of the counter that makes entity tags unique across restarts.
    pub etag_seed: u64,
    /// Bytes of a new segment (at least the largest record).
    pub segment_bytes: u64,
}

/// The store: a directory of segments, locked by this process.
#[derive(Clone)]
pub struct SegmentStore {
    inner: Arc<Inner>,
}

struct Inner {
    fs: Arc<dyn Fs>,
    dir: PathBuf,
    offload: Offload,
    segment_bytes: u64,
    state: Mutex<State>,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

struct Segment {
    file: Box<dyn WriteAt>,
    size: u64,
    /// Objects whose current version is here, and their bytes.
    live: usize,
    live_bytes: u64,
}

/// Where an object's current version is.
#[derive(Debug, Clone)]
struct Entry {
    generation: u64,
    /// Offset of the body in the segment.
    at: u64,
    len: u64,
    crc: u32,
    etag: String,
    metadata: BTreeMap<String, String>,
}

struct State {
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to, and where its next record goes.
    current: u64,
    tail: u64,
    objects: BTreeMap<String, Entry>,
    next_etag: u64,
}

fn segment_name(generation: u64) -> String {
    format!("{SEGMENT_PREFIX}{generation:016x}")
}

fn segment_generation(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(SEGMENT_PREFIX)?;
    (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok()).flatten()
}

/// Applies the records of one segment to `objects`; where its records end.
fn replay_segment(objects: &mut BTreeMap<String, Entry>, generation: u64, bytes: &[u8]) -> u64 {
    let mut at = 0;
    while let Some((record, len)) = record::decode(&bytes[at..], generation) {
        match record {
            Record::Put { key, etag, metadata, body_at, body_len } => {
                let body = &bytes[at + body_at..at + body_at + body_len];
                let entry = Entry {
                    generation,
                    at: (at + body_at) as u64,
                    len: body_len as u64,
                    crc: crc32c::crc32c(body),
                    etag,
                    metadata,
                };
                objects.insert(key, entry);
            }
            Record::Delete { keys } => {
                for key in keys {
                    objects.remove(&key);
                }
            }
        }
        at += len;
    }
    at as u64
}

/// The segments in `dir` by generation, oldest first.
fn segment_names(fs: &dyn Fs, dir: &Path) -> io::Result<Vec<u64>> {
    let mut generations: Vec<u64> =
        fs.read_dir(dir)?.into_iter().filter(|e| !e.is_dir).filter_map(|e| segment_generation(&e.name)).collect();
    generations.sort_unstable();
    Ok(generations)
}

/// One segment's contents.
fn read_segment(fs: &dyn Fs, dir: &Path, generation: u64) -> io::Result<Vec<u8>> {
    let file = fs.open(&dir.join(segment_name(generation)))?;
    fs::read_exact_at(&*file, 0, file.size() as usize)
}

impl SegmentStore {
    /// Opens (creating it if needed) the store in `dir`: takes its lock, reads the segments,
    /// and starts a new one (the last may end in a torn record).
    pub fn open(fs: Arc<dyn Fs>, dir: &Path, opts: SegmentOptions) -> Result<SegmentStore, String> {
        let shown = dir.display();
        ensure_dirs(&*fs, dir, &mut Default::default()).map_err(|e| format!("cannot create {shown}: {e}"))?;
        let lock = fs.lock(&dir.join(LOCK_NAME)).map_err(|e| {
            format!("the journal {shown} is in use by another process ({e}); stop it, or use another directory")
        })?;
        let opened = || -> io::Result<State> {
            if fs.exists(&dir.join(TEMP_NAME)) {
                fs.remove_file(&dir.join(TEMP_NAME))?;
            }
            // One segment in memory at a time: the index keeps offsets, not bodies.
            let mut objects = BTreeMap::new();
            let mut segments = BTreeMap::new();
            for generation in segment_names(&*fs, dir)? {
                let bytes = read_segment(&*fs, dir, generation)?;
                replay_segment(&mut objects, generation, &bytes);
                let file = fs.open_rw(&dir.join(segment_name(generation)))?;
                segments.insert(generation, Segment { file, size: bytes.len() as u64, live: 0, live_bytes: 0 });
            }
            for entry in objects.values() {
                let segment = segments.get_mut(&entry.generation).expect("read from a segment");
                segment.live += 1;
                segment.live_bytes += entry.len;
            }
            let current = segments.keys().next_back().copied().unwrap_or(0);
            Ok(State { segments, current, tail: u64::MAX, objects, next_etag: opts.etag_seed })
        };
        let state = opened().map_err(|e| format!("cannot read the journal {shown}: {e}"))?;
        let inner = Inner {
            fs,
            dir: dir.to_path_buf(),
            offload: opts.offload,
            segment_bytes: opts.segment_bytes,
            state: Mutex::new(state),
            _lock: lock,
        };
        Ok(SegmentStore { inner: Arc::new(inner) })
    }

    /// Every object in the store in `dir` and its body, read without taking its lock (the
    /// simulation's oracles: what opening the store now would find).
    pub fn inspect(fs: &dyn Fs, dir: &Path) -> BTreeMap<String, Bytes> {
        let mut contents = BTreeMap::new();
        let mut objects = BTreeMap::new();
        for generation in segment_names(fs, dir).unwrap_or_default() {
            let bytes = read_segment(fs, dir, generation).unwrap_or_default();
            replay_segment(&mut objects, generation, &bytes);
            contents.insert(generation, bytes);
        }
        objects
            .into_iter()
            .map(|(key, e)| {
                (key, Bytes::copy_from_slice(&contents[&e.generation][e.at as usize..(e.at + e.len) as usize]))
            })
            .collect()
    }

    /// Segment files now (tests).
    #[doc(hidden)]
    pub fn segment_count(&self) -> usize {
        self.inner.state().segments.len()
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Inner, &Caller) -> ObjResult<T> + Send + 'static,
    ) -> ObjResult<T> {
        match self.inner.offload {
            Offload::Inline => job(&self.inner, &Caller::default()),
            Offload::BlockingPool => {
                let inner = self.inner.clone();
                let caller = Caller::default();
                let gone = GoneOnDrop(caller.clone());
                // As the local store: file I/O off the async workers, and nothing visible
                // changes once the caller has gone.
                #[allow(clippy::disallowed_methods)]
                let handle = tokio::task::spawn_blocking(move || job(&inner, &caller));
                let result = handle.await.map_err(|e| ObjectError::failed(format!("journal operation failed: {e}")))?;
                std::mem::forget(gone);
                result
            }
        }
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("segment store poisoned")
    }

    fn path(&self, generation: u64) -> PathBuf {
        self.dir.join(segment_name(generation))
    }

    /// Appends records and makes them durable. On failure the segment's end is uncertain: the
    /// next record goes to a new segment.
    fn append(&self, st: &mut State, bytes: &[u8]) -> ObjResult<()> {
        let segment = st.segments.get(&st.current).expect("the current segment exists");
        let written = segment.file.write_at(st.tail, bytes).and_then(|()| segment.file.sync_data());
        match written {
            Ok(()) => {
                st.tail += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                st.tail = u64::MAX;
                Err(ObjectError::Indeterminate(format!("cannot write to the journal: {e}")))
            }
        }
    }

    /// Room for `len` bytes of records in the current segment, starting a new one if needed.
    fn make_room(&self, st: &mut State, len: u64) -> ObjResult<()> {
        let room = st.segments.get(&st.current).map_or(0, |s| s.size.saturating_sub(st.tail.min(s.size)));
        if room >= len {
            return Ok(());
        }
        self.start_segment(st, len).map_err(|e| {
            st.tail = u64::MAX;
            io_err(e, "cannot start a journal segment")
        })
    }

    /// Starts the next generation's segment, of at least `needed` bytes: the oldest segment
    /// reused if no object lives in it, a new file otherwise. Dead segments beyond it go.
    fn start_segment(&self, st: &mut State, needed: u64) -> io::Result<()> {
        let generation = st.segments.keys().next_back().map_or(1, |g| g + 1);
        let size = self.segment_bytes.max(needed);
        let mut reused = None;
        // Oldest first, each change synced before the next: what a crash brings back is only
        // ever a run of the newest dead segments, whose deletions are in segments still there.
        while let Some((&oldest, segment)) = st.segments.first_key_value() {
            if segment.live > 0 && !crate::mutants::active(crate::mutants::Mutant::JournalSegmentReusedLive) {
                break;
            }
            let segment = st.segments.remove(&oldest).expect("just seen");
            if reused.is_none() && segment.size >= size {
                self.fs.rename(&self.path(oldest), &self.path(generation))?;
                reused = Some(segment);
            } else {
                self.fs.remove_file(&self.path(oldest))?;
            }
            self.fs.sync_dir(&self.dir)?;
        }
        let segment = match reused {
            Some(segment) => segment,
            None => {
                let temp = self.dir.join(TEMP_NAME);
                if self.fs.exists(&temp) {
                    self.fs.remove_file(&temp)?;
                }
                self.fs.write_new(&temp, &[&vec![0u8; size as usize]], true)?;
                self.fs.rename(&temp, &self.path(generation))?;
                self.fs.sync_dir(&self.dir)?;
                let file = self.fs.open_rw(&self.path(generation))?;
                Segment { file, size, live: 0, live_bytes: 0 }
            }
        };
        st.segments.insert(generation, segment);
        st.current = generation;
        st.tail = 0;
        self.carry_forward(st, size - needed)
    }

    /// Copies the live objects of the oldest segment into the current one when they are few
    /// (at most a quarter of a segment, and half of `room`), so that it can go at a later
    /// segment start. Synced before the copies become the current versions.
    fn carry_forward(&self, st: &mut State, room: u64) -> io::Result<()> {
        let Some((&oldest, segment)) = st.segments.first_key_value() else { return Ok(()) };
        if oldest == st.current || segment.live == 0 || segment.live_bytes > (self.segment_bytes / 4).min(room / 2) {
            return Ok(());
        }
        let moving: Vec<(String, Entry)> =
            st.objects.iter().filter(|(_, e)| e.generation == oldest).map(|(k, e)| (k.clone(), e.clone())).collect();
        let mut moved = Vec::new();
        for (key, entry) in moving {
            let body = fs::read_exact_at(segment_file(st, oldest), entry.at, entry.len as usize)?;
            let (bytes, body_at) = record::encode_put(st.current, &key, &entry.etag, &entry.metadata, &body);
            if st.tail + bytes.len() as u64 > st.segments[&st.current].size {
                break;
            }
            st.segments[&st.current].file.write_at(st.tail, &bytes)?;
            moved.push((key, Entry { generation: st.current, at: st.tail + body_at as u64, ..entry }));
            st.tail += bytes.len() as u64;
        }
        if moved.is_empty() {
            return Ok(());
        }
        st.segments[&st.current].file.sync_data()?;
        for (key, entry) in moved {
            place(st, key, entry);
        }
        Ok(())
    }
}

fn segment_file(st: &State, generation: u64) -> &dyn WriteAt {
    &*st.segments[&generation].file
}

/// Makes `entry` the current version of `key`, keeping the segments' live counts.
fn place(st: &mut State, key: String, entry: Entry) {
    if let Some(segment) = st.segments.get_mut(&entry.generation) {
        segment.live += 1;
        segment.live_bytes += entry.len;
    }
    if let Some(old) = st.objects.insert(key, entry) {
        unplace(st, &old);
    }
}

fn unplace(st: &mut State, old: &Entry) {
    if let Some(segment) = st.segments.get_mut(&old.generation) {
        segment.live -= 1;
        segment.live_bytes -= old.len;
    }
}

fn check_key(key: &str) -> ObjResult<()> {
    match key.is_empty() || key.len() > KEY_BYTES_MAX {
        true => Err(ObjectError::InvalidKey { key: key.to_string(), why: "empty or longer than 1024 bytes".into() }),
        false => Ok(()),
    }
}

impl Inner {
    fn put(
        &self,
        key: String,
        body: &[u8],
        metadata: BTreeMap<String, String>,
        condition: &Condition,
        caller: &Caller,
    ) -> ObjResult<Option<String>> {
        check_key(&key)?;
        let mut st = self.state();
        caller.waiting()?;
        match (condition, st.objects.get(&key)) {
            (Condition::None, _) | (Condition::IfNoneMatch, None) => {}
            (Condition::IfMatch(etag), Some(e)) if *etag == e.etag => {}
            _ => return Err(ObjectError::PreconditionFailed),
        }
        let crc = crc32c::crc32c(body);
        let etag = format!("\"{crc:08x}{:016x}\"", st.next_etag);
        st.next_etag += 1;
        let len = record::put_len(&key, &etag, &metadata, body.len()) as u64;
        self.make_room(&mut st, len)?;
        let (bytes, body_at) = record::encode_put(st.current, &key, &etag, &metadata, body);
        let at = st.tail + body_at as u64;
        self.append(&mut st, &bytes)?;
        let entry = Entry { generation: st.current, at, len: body.len() as u64, crc, etag: etag.clone(), metadata };
        place(&mut st, key, entry);
        Ok(Some(etag))
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> ObjResult<GetOutput> {
        let st = self.state();
        let entry = st.objects.get(key).ok_or(ObjectError::NotFound)?;
        let (from, to) = match range {
            None => (0, entry.len),
            Some(r) if r.start < entry.len || (r.start == 0 && entry.len == 0) => (r.start, r.end.min(entry.len)),
            Some(_) => return Err(ObjectError::RangeNotSatisfiable),
        };
        let file = segment_file(&st, entry.generation);
        let body = fs::read_exact_at(file, entry.at + from, (to - from) as usize)
            .map_err(|e| io_err(e, "cannot read the journal"))?;
        if body.len() as u64 != to - from || (from == 0 && to == entry.len && crc32c::crc32c(&body) != entry.crc) {
            return Err(ObjectError::failed(format!("journal object {key}: damaged (checksum mismatch)")));
        }
        let meta = ObjectMeta { size: entry.len, etag: Some(entry.etag.clone()), metadata: entry.metadata.clone() };
        Ok(GetOutput { body: Bytes::from(body), meta })
    }

    fn delete_many(&self, keys: Vec<String>, caller: &Caller) -> ObjResult<DeleteResults> {
        let mut st = self.state();
        caller.waiting()?;
        let present: Vec<String> = keys.iter().filter(|k| st.objects.contains_key(*k)).cloned().collect();
        if !present.is_empty() {
            let len = record::delete_len(&present) as u64;
            self.make_room(&mut st, len)?;
            let bytes = record::encode_delete(st.current, &present);
            self.append(&mut st, &bytes)?;
            for key in &present {
                if let Some(old) = st.objects.remove(key) {
                    unplace(&mut st, &old);
                }
            }
        }
        Ok(keys
            .into_iter()
            .map(|key| {
                let result = match present.contains(&key) {
                    true => Ok(()),
                    false => Err(ObjectError::NotFound),
                };
                (key, result)
            })
            .collect())
    }

    fn list(&self, prefix: &str) -> ListPage {
        let st = self.state();
        let objects = st
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, e)| Listed { key: k.clone(), size: e.len, etag: Some(e.etag.clone()) })
            .collect();
        ListPage { objects, next: None }
    }
}

impl ObjectStore for SegmentStore {
    fn describe(&self) -> String {
        format!("journal segments in {}", self.inner.dir.display())
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(self.run(move |inner, _| inner.get(&key, range)))
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let key = key.to_string();
        Box::pin(self.run(move |inner, caller| inner.put(key, &body, metadata, &condition, caller)))
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        crate::s3::delete_as_batch(self, key)
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        Box::pin(self.run(move |inner, caller| inner.delete_many(keys, caller)))
    }

    fn list(&self, prefix: &str, _continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        Box::pin(self.run(move |inner, _| Ok(inner.list(&prefix))))
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let key = key.to_string();
        Box::pin(self.run(move |inner, _| {
            let st = inner.state();
            let e = st.objects.get(&key).ok_or(ObjectError::NotFound)?;
            Ok(ObjectMeta { size: e.len, etag: Some(e.etag.clone()), metadata: e.metadata.clone() })
        }))
    }
}

#[cfg(test)]
#[path = "segment_store_tests.rs"]
mod tests;
