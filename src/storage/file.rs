//! A regular file or block device, with positioned I/O on a few threads of its own
//! ([`IoPool`]) so that the async workers never wait on the disk. A read first tries
//! `preadv2(RWF_NOWAIT)` on the calling task: data already in the page cache is copied at once,
//! without a thread handoff; only what would block goes to the pool. UNMAP punches holes; flush
//! is fdatasync; FUA writes use `pwritev2(RWF_DSYNC)`.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::atomic_intent::IntentLog;
use super::inline_writes::InlineWrites;
use super::io_pool::IoPool;
use super::small_folios::SmallFolios;
use super::stats::FileStats;
use super::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult, StoreStats};

/// I/O threads per file store, for reads that miss the page cache, syncs, FUA writes, UNMAP.
pub const IO_THREADS: usize = 4;

pub struct FileStore {
    file: Arc<File>,
    path: PathBuf,
    capacity: AtomicU64,
    block_device: bool,
    /// Cleared once the filesystem refuses to punch holes; unmap then writes zeros.
    punch_hole: Arc<AtomicBool>,
    /// Cleared once the kernel refuses `RWF_NOWAIT` reads; every read then goes to the pool.
    nowait_reads: AtomicBool,
    /// Reads served wholly from the page cache on the calling task, and reads that went (at
    /// least in part) to the pool: their ratio is the cache hit rate.
    cached_reads: AtomicU64,
    pool_reads: AtomicU64,
    pool: IoPool,
    /// One thread for the plain (write-back) writes to a regular file. The filesystem holds the
    /// inode lock for the whole of such a write, so they run one at a time whatever we do; more
    /// threads only spin and sleep on that lock (a fifth of the CPU at queue depth 32 on ext4).
    /// FUA writes and syncs stay on `pool`: their wait for the disk is outside the lock and
    /// overlaps. A block device has no such lock; its writes use `pool`.
    writer: IoPool,
    /// Regular files: their page cache kept in small folios (`small_folios.rs`).
    folios: Option<Arc<SmallFolios>>,
    /// Plain writes to a regular file made on the calling task while cheap (`inline_writes.rs`).
    inline: InlineWrites,
    /// Where atomic writes are recorded before they are made in place; none: no atomic writes.
    intents: Option<Arc<IntentLog>>,
}

/// How to open a file-backed LUN.
#[derive(Debug, Clone)]
pub struct FileOptions {
    /// Capacity in bytes. Required to create a file; optional otherwise (the file's size).
    pub size: Option<u64>,
    /// Create the file (sparse) if it does not exist.
    pub create: bool,
    /// How long an I/O thread looks for the next request before it sleeps
    /// (`server.busy_poll_us`).
    pub busy_poll: Duration,
    /// The directory of the intent files that make WRITE ATOMIC all-or-nothing
    /// (`atomic_intent.rs`), one per backing file, replayed at open. None: no atomic writes.
    pub atomic_intents: Option<PathBuf>,
}

impl FileOptions {
    /// An existing file at its own size, with threads that sleep as soon as they are idle.
    pub fn existing() -> FileOptions {
        FileOptions { size: None, create: false, busy_poll: Duration::ZERO, atomic_intents: None }
    }
}

impl FileStore {
    pub fn open(path: &Path, opts: &FileOptions) -> Result<FileStore, String> {
        let exists = path.exists();
        if !exists && !opts.create {
            return Err(format!("{} does not exist (set create = true to create it)", path.display()));
        }
        if !exists && opts.size.is_none() {
            return Err(format!("{} does not exist and no size was given to create it", path.display()));
        }
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !exists) {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(opts.create)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file.metadata().map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
        let block_device = meta.file_type().is_block_device();
        let current = if block_device { block_device_size(&file)? } else { meta.len() };
        let capacity = match opts.size {
            None => current,
            Some(size) if block_device && size > current => {
                return Err(format!("{}: size {size} exceeds the device's {current} bytes", path.display()));
            }
            Some(size) if block_device => size,
            Some(size) if size < current => {
                return Err(format!(
                    "{} holds {current} bytes, more than the configured size {size}; refusing to hide data \
                     (grow the size or use another file)",
                    path.display()
                ));
            }
            Some(size) => {
                if size > current {
                    // Growing a file is sparse and keeps its contents.
                    file.set_len(size).map_err(|e| format!("cannot size {}: {e}", path.display()))?;
                }
                size
            }
        };
        if capacity == 0 {
            return Err(format!("{} has zero size", path.display()));
        }
        let folios = (!block_device).then(|| Arc::new(SmallFolios::new(&file, capacity)));
        let intents = match &opts.atomic_intents {
            Some(dir) => open_intents(dir, &file, capacity, path)?.map(Arc::new),
            None => None,
        };
        Ok(FileStore {
            file: Arc::new(file),
            path: path.to_path_buf(),
            capacity: AtomicU64::new(capacity),
            block_device,
            punch_hole: Arc::new(AtomicBool::new(true)),
            nowait_reads: AtomicBool::new(true),
            cached_reads: AtomicU64::new(0),
            pool_reads: AtomicU64::new(0),
            pool: IoPool::new("rtgt-file-io", IO_THREADS, opts.busy_poll),
            writer: IoPool::new("rtgt-file-write", 1, opts.busy_poll),
            folios,
            inline: InlineWrites::default(),
            intents,
        })
    }

    /// Runs blocking file I/O off the async workers. (The simulation uses its own disk
    /// behind the BlockStore seam, never this backend.)
    async fn blocking<T: Send + 'static>(
        &self,
        writing: bool,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.blocking_on(&self.pool, writing, f).await
    }

    async fn blocking_on<T: Send + 'static>(
        &self,
        pool: &IoPool,
        writing: bool,
        f: impl FnOnce(&File) -> std::io::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let file = self.file.clone();
        match pool.run(move || f(&file)).await {
            Ok(result) => result.map_err(|e| StoreError::from_io(e, writing)),
            Err(failed) => Err(StoreError::Transient(failed.0)),
        }
    }

    /// A plain write into prepared regions of a regular file, made here on the calling task
    /// (`inline_writes.rs`), timed so that a slow one sends the next writes to the thread.
    /// Threads and the real clock are the production I/O seam (the simulation never opens a
    /// file store).
    #[allow(clippy::disallowed_methods)]
    fn write_inline(&self, data: &[u8], offset: u64) -> StoreResult<()> {
        let started = std::time::Instant::now();
        let written = SmallFolios::write_in_pieces(&self.file, data, offset);
        self.inline.made(started.elapsed());
        written.map_err(|e| StoreError::from_io(e, true))
    }

    /// Fills `buf` (up to `len` bytes) from the page cache without blocking; stops at the
    /// first byte that would need the disk. Turns the fast path off for good if the kernel or
    /// filesystem does not support `RWF_NOWAIT`.
    pub(super) fn read_cached(&self, buf: &mut BytesMut, offset: u64, len: usize) {
        if !self.nowait_reads.load(Ordering::Relaxed) {
            return;
        }
        while buf.len() < len {
            let want = len - buf.len();
            let spare = &mut buf.spare_capacity_mut()[..want];
            let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: spare.len() };
            let at = offset + buf.len() as u64;
            // SAFETY: the iovec covers spare capacity of `buf`, valid for writes of its length.
            let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, at as libc::off_t, libc::RWF_NOWAIT) };
            if n > 0 {
                // SAFETY: the kernel initialized the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n as usize) };
                continue;
            }
            let errno = std::io::Error::last_os_error().raw_os_error();
            match errno {
                _ if n == 0 => return, // end of file: the pool's read reports it
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    // No RWF_NOWAIT here (old kernel, this filesystem): stop trying inline.
                    self.nowait_reads.store(false, Ordering::Relaxed);
                    return;
                }
                // EAGAIN (not cached), or an error the pool's read will meet and report.
                _ => return,
            }
        }
    }
}

fn block_device_size(file: &File) -> Result<u64, String> {
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if rc != 0 {
        return Err(format!("BLKGETSIZE64 failed: {}", std::io::Error::last_os_error()));
    }
    Ok(size)
}

/// Writes all of `data` at `offset` with `pwritev2` flags (RWF_DSYNC for FUA).
fn pwrite_all_flags(file: &File, mut data: &[u8], mut offset: u64, flags: libc::c_int) -> std::io::Result<()> {
    while !data.is_empty() {
        let iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
        // SAFETY: the iovec points into `data`, which outlives the call.
        let n = unsafe { libc::pwritev2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, flags) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "pwritev2 wrote nothing"));
        }
        data = &data[n as usize..];
        offset += n as u64;
    }
    Ok(())
}

/// The intent file of a backing file: named by a digest of its canonical path, so the same file
/// finds its record whatever name the configuration used.
fn intent_path(dir: &Path, path: &Path) -> Result<PathBuf, String> {
    use sha2::Digest;
    let canonical = path.canonicalize().map_err(|e| format!("cannot resolve {}: {e}", path.display()))?;
    let digest = sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    let name: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    Ok(dir.join(format!("{name}.intent")))
}

/// Opens the intent file of atomic writes and finishes the write a crash interrupted, if any.
/// An intent file that cannot be opened (a read-only data directory) leaves the store without
/// atomic writes; one that holds a record that cannot be finished keeps the store closed.
fn open_intents(dir: &Path, file: &File, capacity: u64, path: &Path) -> Result<Option<IntentLog>, String> {
    let at = intent_path(dir, path)?;
    let intents = match IntentLog::open(&at) {
        Ok(intents) => intents,
        Err(e) => {
            tracing::warn!(file = %path.display(), intents = %at.display(), error = %e, "no atomic writes: the intent file cannot be opened");
            return Ok(None);
        }
    };
    match intents.recover(file, capacity) {
        Ok(Some((offset, len))) => {
            tracing::info!(file = %path.display(), offset, len, "finished an atomic write a crash interrupted")
        }
        Ok(None) => {}
        Err(e) => return Err(format!("cannot finish the atomic write recorded in {}: {e}", at.display())),
    }
    Ok(Some(intents))
}

fn write_fua(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    match pwrite_all_flags(file, data, offset, libc::RWF_DSYNC) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) || e.raw_os_error() == Some(libc::ENOSYS) => {
            file.write_all_at(data, offset)?;
            file.sync_data()
        }
        other => other,
    }
}

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate takes plain integers.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn write_zeros_sync(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (1 << 20).min(len) as usize];
    let mut at = offset;
    while at < offset + len {
        let n = (zeros.len() as u64).min(offset + len - at) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// `lseek(SEEK_DATA / SEEK_HOLE)`; `None` when past the last data (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek takes plain integers.
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(err) }
}

fn extents_sync(file: &File, offset: u64, len: u64) -> std::io::Result<Vec<Extent>> {
    let end = offset + len;
    let mut out = Vec::new();
    let mut at = offset;
    while at < end {
        let data = seek(file, at, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        if data > at {
            out.push(Extent { offset: at, len: data - at, mapped: false });
            at = data;
            continue;
        }
        let hole = seek(file, at, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        out.push(Extent { offset: at, len: hole - at, mapped: true });
        at = hole;
    }
    Ok(out)
}

impl BlockStore for FileStore {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn capacity(&self) -> u64 {
        self.capacity.load(Ordering::Relaxed)
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: true,
            volatile_cache: true,
            unmap_granularity: 4096,
            optimal_transfer: 0,
            atomic_write_max: if self.intents.is_some() { super::ATOMIC_WRITE_MAX } else { 0 },
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        Box::pin(async move {
            let mut buf = BytesMut::with_capacity(len);
            self.read_cached(&mut buf, offset, len);
            if buf.len() == len {
                self.cached_reads.fetch_add(1, Ordering::Relaxed);
                return Ok(buf.freeze());
            }
            self.pool_reads.fetch_add(1, Ordering::Relaxed);
            self.blocking(false, move |f| {
                let cached = buf.len();
                buf.resize(len, 0);
                f.read_exact_at(&mut buf[cached..], offset + cached as u64)?;
                Ok(buf.freeze())
            })
            .await
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        let prepared = self.folios.as_ref().is_some_and(|folios| folios.prepared(offset, data.len() as u64));
        if !fua && prepared && self.inline.admit(offset, data.len()) {
            return Box::pin(std::future::ready(self.write_inline(&data, offset)));
        }
        let folios = self.folios.clone();
        let prepare = move |f: &File| {
            if let Some(folios) = &folios {
                folios.before_write(f, offset, data.len() as u64);
            }
            data
        };
        if fua {
            return Box::pin(self.blocking(true, move |f| write_fua(f, &prepare(f), offset)));
        }
        match self.folios {
            None => Box::pin(self.blocking(true, move |f| f.write_all_at(&prepare(f), offset))),
            Some(_) => Box::pin(
                self.blocking_on(&self.writer, true, move |f| SmallFolios::write_in_pieces(f, &prepare(f), offset)),
            ),
        }
    }

    fn write_atomic(&self, offset: u64, data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        let Some(intents) = self.intents.clone() else {
            return Box::pin(async { Err(StoreError::Write("this file store offers no atomic writes".into())) });
        };
        let folios = self.folios.clone();
        // Durable on return, so FUA or not makes no difference.
        Box::pin(self.blocking(true, move |f| {
            if let Some(folios) = &folios {
                folios.before_write(f, offset, data.len() as u64);
            }
            intents.write(f, offset, &data)
        }))
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.blocking(true, |f| f.sync_data()))
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        let punch = self.punch_hole.clone();
        Box::pin(self.blocking(true, move |f| {
            if punch.load(Ordering::Relaxed) {
                match punch_hole(f, offset, len) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                        tracing::warn!("hole punching unsupported here; UNMAP writes zeros instead");
                        punch.store(false, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
            write_zeros_sync(f, offset, len)
        }))
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        if self.block_device {
            return Box::pin(async move { Ok(vec![Extent { offset, len, mapped: true }]) });
        }
        Box::pin(self.blocking(false, move |f| extents_sync(f, offset, len)))
    }

    fn stats(&self) -> StoreStats {
        let (inline_writes, slow_inline_writes) = self.inline.counts();
        StoreStats::File(FileStats {
            cached_reads: self.cached_reads.load(Ordering::Relaxed),
            pool_reads: self.pool_reads.load(Ordering::Relaxed),
            inline_writes,
            slow_inline_writes,
        })
    }

    fn resize(&self, capacity: u64) -> BoxFuture<'_, StoreResult<()>> {
        if self.block_device {
            return Box::pin(async { Err(StoreError::Write("a block device cannot be resized".into())) });
        }
        Box::pin(async move {
            if capacity < self.capacity() {
                return Err(StoreError::Write("shrinking would lose data".into()));
            }
            self.blocking(true, move |f| f.set_len(capacity)).await?;
            self.capacity.store(capacity, Ordering::Relaxed);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inline_writes(store: &FileStore) -> u64 {
        match store.stats() {
            StoreStats::File(f) => f.inline_writes,
            other => panic!("not a file store's statistics: {other:?}"),
        }
    }

    /// Plain page-aligned writes of up to 256 KiB into a region already prepared are made on the
    /// calling task; the first write into a region, unaligned, large and FUA writes go to the
    /// threads. Every one of them lands.
    #[tokio::test]
    async fn small_aligned_writes_into_prepared_regions_are_made_inline() {
        let dir = tempfile::tempdir().unwrap();
        let opts = FileOptions { size: Some(8 << 20), create: true, busy_poll: Duration::ZERO, atomic_intents: None };
        let s = FileStore::open(&dir.path().join("disk.img"), &opts).unwrap();
        let mut model = vec![0u8; 8 << 20];
        let writes: [(u64, usize, bool, u64); 6] = [
            (0, 4096, false, 0),                // the region's first write: prepared on the thread
            (4096, 8192, false, 1),             // aligned, prepared: inline
            (512, 512, false, 1),               // unaligned: could read a partial page
            (16384, 512 << 10, false, 1),       // larger than 256 KiB
            (8192, 4096, true, 1),              // FUA: waits for the disk
            ((2 << 20) + 4096, 4096, false, 1), // another region's first write
        ];
        for (i, (offset, len, fua, inline_after)) in writes.into_iter().enumerate() {
            let data = vec![i as u8 + 1; len];
            model[offset as usize..offset as usize + len].copy_from_slice(&data);
            s.write(offset, Bytes::from(data), fua).await.unwrap();
            assert_eq!(inline_writes(&s), inline_after, "after write {i} at {offset}");
        }
        // (An inline write above that took long on a busy machine would send this one to the
        // thread: what is checked here is where a prepared region's write goes.)
        s.inline.end_backoff();
        s.write((2 << 20) + 65536, Bytes::from(vec![9u8; 65536]), false).await.unwrap();
        model[(2 << 20) + 65536..(2 << 20) + 131072].fill(9);
        assert_eq!(inline_writes(&s), 2, "the second region is prepared now");
        assert_eq!(&s.read(0, 8 << 20).await.unwrap()[..], &model[..]);
    }

    #[tokio::test]
    async fn file_store_round_trip_fua_unmap_and_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/disk.img");
        let s = FileStore::open(
            &path,
            &FileOptions {
                size: Some(4 << 20),
                create: true,
                busy_poll: Duration::from_micros(50),
                atomic_intents: None,
            },
        )
        .unwrap();
        assert_eq!(s.capacity(), 4 << 20);
        // Without its intent file, a file store offers no atomic writes (so the SCSI layer
        // offers no WRITE ATOMIC: `a_store_without_atomic_writes_offers_no_write_atomic`).
        assert_eq!(s.caps().atomic_write_max, 0);
        assert!(s.write_atomic(0, Bytes::from(vec![1u8; 4096]), false).await.is_err());
        s.write(8192, Bytes::from(vec![7u8; 8192]), true).await.unwrap();
        s.write(1 << 20, Bytes::from(vec![9u8; 4096]), false).await.unwrap();
        s.flush().await.unwrap();
        assert_eq!(s.read(8192, 8192).await.unwrap(), vec![7u8; 8192]);
        let ext = s.mapped_extents(0, 4 << 20).await.unwrap();
        assert!(ext.iter().any(|e| e.mapped && e.offset <= 8192 && e.offset + e.len >= 16384), "{ext:?}");
        assert!(!ext[0].mapped);
        s.unmap(8192, 8192).await.unwrap();
        assert_eq!(s.read(8192, 8192).await.unwrap(), vec![0u8; 8192]);
        drop(s);
        // Reopening keeps size and data; a smaller configured size is refused.
        let s = FileStore::open(&path, &FileOptions::existing()).unwrap();
        assert_eq!(s.capacity(), 4 << 20);
        assert_eq!(s.read(1 << 20, 4096).await.unwrap(), vec![9u8; 4096]);
        assert!(
            FileStore::open(
                &path,
                &FileOptions { size: Some(1 << 20), create: false, busy_poll: Duration::ZERO, atomic_intents: None }
            )
            .is_err()
        );
        assert!(FileStore::open(&dir.path().join("missing"), &FileOptions::existing()).is_err());
    }

    /// Reads that the page cache holds only in part are finished by the pool; every read is
    /// counted once; plain and FUA writes through both lanes land.
    #[tokio::test]
    async fn reads_partly_out_of_cache_and_concurrent_writes_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let s = std::sync::Arc::new(
            FileStore::open(
                &path,
                &FileOptions {
                    size: Some(1 << 20),
                    create: true,
                    busy_poll: Duration::from_micros(50),
                    atomic_intents: None,
                },
            )
            .unwrap(),
        );
        let pattern = |i: u64| Bytes::from((0..4096u64).map(|b| (i * 7 + b) as u8).collect::<Vec<u8>>());
        let writes = (0..64u64).map(|i| {
            let s = s.clone();
            async move { s.write(i * 4096, pattern(i), i % 5 == 0).await }
        });
        for done in futures::future::join_all(writes).await {
            done.unwrap();
        }
        s.flush().await.unwrap();
        // Drop the second half of the written range from the page cache (clean after flush).
        let file = File::open(&path).unwrap();
        // SAFETY: posix_fadvise takes plain integers.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 128 << 10, 128 << 10, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let all = s.read(0, 256 << 10).await.unwrap();
        for i in 0..64u64 {
            assert_eq!(all.slice(i as usize * 4096..(i as usize + 1) * 4096), pattern(i), "block {i}");
        }
        for i in [3u64, 40, 63] {
            assert_eq!(s.read(i * 4096, 4096).await.unwrap(), pattern(i), "block {i}");
        }
        let StoreStats::File(stats) = s.stats() else { panic!("a file store reports file counters") };
        assert_eq!(stats.cached_reads + stats.pool_reads, 4, "{stats:?}");
    }
}
