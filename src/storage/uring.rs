//! A regular file or block device driven through io_uring. One ring per store, owned by a
//! dedicated OS thread: async callers hand requests over a channel and wake the thread through an
//! eventfd that the ring itself reads, so the thread sleeps in one place (`submit_and_wait`) for
//! either new requests or completions, and never spins. Answers go back over oneshot channels.
//!
//! Semantics are those of [`FileStore`] (it opens, validates and sizes the file, and serves the
//! rare metadata operations: extents, resize): flush is fdatasync, FUA writes carry `RWF_DSYNC`
//! (or are followed by fdatasync where the kernel refuses the flag), UNMAP punches a hole and
//! writes zeros where the filesystem cannot. Short transfers are resubmitted for the remainder;
//! a read past end of file returns zeros for the tail.
//!
//! Where io_uring is unavailable (old kernel, seccomp, `io_uring_disabled`),
//! [`UringStore::open_or_fallback`] logs one warning and returns the positioned-I/O `FileStore`.

use std::alloc::Layout;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use io_uring::{IoUring, Probe, opcode, squeue, types};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use super::file::{FileOptions, FileStore};
use super::stats::UringStats;
use super::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult, StoreStats};

/// Ring entries (and in-flight requests) when not configured otherwise.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;
/// Buffer alignment with `direct`.
const ALIGN: usize = 4096;
/// The zero buffer UNMAP writes where holes cannot be punched.
const ZERO_PIECE: usize = 1 << 20;
/// The longest single submission (results are `i32`).
const MAX_PIECE: usize = 1 << 30;
/// `user_data` of the eventfd read that wakes the ring thread.
const WAKE: u64 = u64::MAX;

/// How to open an io_uring LUN.
#[derive(Debug, Clone)]
pub struct UringOptions {
    /// Size and creation, exactly as for a file LUN.
    pub file: FileOptions,
    /// Ring entries, which is also the bound on requests in flight (default 128).
    pub queue_depth: u32,
    /// Open with `O_DIRECT` (bypassing the page cache). Buffers are then 4096-aligned copies, and
    /// offsets and lengths must be multiples of the device's logical block size.
    pub direct: bool,
}

impl UringOptions {
    pub fn new(file: FileOptions) -> UringOptions {
        UringOptions { file, queue_depth: DEFAULT_QUEUE_DEPTH, direct: false }
    }
}

pub struct UringStore {
    /// Opens, validates and sizes the file; serves extents, resize and capacity.
    meta: FileStore,
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    wake: Arc<EventFd>,
    /// Bounds the requests queued for or in the ring (in flight plus one ring's worth waiting).
    permits: Arc<Semaphore>,
    direct: bool,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Set by `shutdown`: the ring is gone, and the page-cache read path must refuse too.
    stopped: AtomicBool,
}

impl UringStore {
    /// Opens the file and starts its ring. Fails if io_uring is unavailable.
    pub fn open(path: &Path, opts: &UringOptions) -> Result<UringStore, String> {
        let meta = FileStore::open(path, &opts.file)?;
        let ring = new_ring(opts.queue_depth).map_err(|e| format!("io_uring unavailable: {e}"))?;
        UringStore::start(meta, ring, path, opts)
    }

    /// Opens the file through io_uring, or, if the kernel will not give us a ring, through
    /// positioned I/O ([`FileStore`]) after one warning.
    pub fn open_or_fallback(path: &Path, opts: &UringOptions) -> Result<Arc<dyn BlockStore>, String> {
        let meta = FileStore::open(path, &opts.file)?;
        match new_ring(opts.queue_depth) {
            Ok(ring) => Ok(Arc::new(UringStore::start(meta, ring, path, opts)?)),
            Err(e) => {
                tracing::warn!("io_uring is unavailable ({e}); {} uses positioned I/O instead", path.display());
                Ok(Arc::new(meta))
            }
        }
    }

    fn start(meta: FileStore, ring: IoUring, path: &Path, opts: &UringOptions) -> Result<UringStore, String> {
        let mut open = OpenOptions::new();
        open.read(true).write(true);
        if opts.direct {
            open.custom_flags(libc::O_DIRECT);
        }
        let file = open.open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let wake = Arc::new(EventFd::new().map_err(|e| format!("eventfd: {e}"))?);
        let depth = opts.queue_depth as usize;
        let (tx, rx) = mpsc::channel();
        let worker = Worker::new(ring, file, wake.clone(), depth);
        let thread = spawn_ring_thread(worker, rx).map_err(|e| format!("cannot start the io_uring thread: {e}"))?;
        Ok(UringStore {
            meta,
            path: path.to_path_buf(),
            tx,
            wake,
            permits: Arc::new(Semaphore::new(depth * 2)),
            direct: opts.direct,
            thread: Mutex::new(Some(thread)),
            stopped: AtomicBool::new(false),
        })
    }

    /// Queues one operation for the ring thread and waits for its answer.
    async fn run<T>(
        &self,
        offset: u64,
        kind: Kind,
        reply: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Reply,
    ) -> StoreResult<T> {
        let writing = kind.writing();
        let stopped = |what: &str| {
            let msg = format!("{}: io_uring thread {what}", self.path.display());
            if writing { StoreError::Write(msg) } else { StoreError::Read(msg) }
        };
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| stopped("closed"))?;
        let (tx, rx) = oneshot::channel();
        let op = Op { offset, kind, reply: reply(tx), _permit: permit };
        self.tx.send(Msg::Op(op)).map_err(|_| stopped("stopped"))?;
        self.wake.signal();
        rx.await.unwrap_or_else(|_| Err(stopped("dropped the request")))
    }

    /// Refuses a range that does not fit in `off_t` before it reaches the ring thread. The kernel
    /// reads offset -1 as "at the file position" (block 0 here) and other negative offsets as
    /// errors, and `offset + done` overflowing would panic the ring thread. The SCSI core never
    /// asks for such a range (it checks against the capacity); this is defence in depth.
    fn out_of_range(&self, offset: u64, len: u64, writing: bool) -> Option<StoreError> {
        if offset.checked_add(len).is_some_and(|end| end <= i64::MAX as u64) {
            return None;
        }
        let msg = format!("{}: range {offset}+{len} is beyond any file", self.path.display());
        Some(if writing { StoreError::Write(msg) } else { StoreError::Read(msg) })
    }

    /// Stops the ring thread once the requests it holds have completed, and waits for it.
    fn stop(&self) {
        if self.tx.send(Msg::Stop(None)).is_ok() {
            self.wake.signal();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for UringStore {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ring of `depth` entries, refusing kernels without the operations we use.
fn new_ring(depth: u32) -> std::io::Result<IoUring> {
    let ring = IoUring::new(depth)?;
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    for (code, name) in [
        (opcode::Read::CODE, "READ"),
        (opcode::Write::CODE, "WRITE"),
        (opcode::Fsync::CODE, "FSYNC"),
        (opcode::Fallocate::CODE, "FALLOCATE"),
    ] {
        if !probe.is_supported(code) {
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, format!("no IORING_OP_{name}")));
        }
    }
    Ok(ring)
}

/// The ring thread. Production only: the simulation never opens io_uring LUNs (it has its own
/// disk behind the BlockStore seam), and the ring needs a thread that may block in the kernel.
#[allow(clippy::disallowed_methods)]
fn spawn_ring_thread(worker: Worker, rx: mpsc::Receiver<Msg>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("rtgt-uring".into()).spawn(move || worker.run(rx))
}

/// An eventfd: callers add to it after queueing a request; the ring thread reads it.
struct EventFd(OwnedFd);

impl EventFd {
    fn new() -> std::io::Result<EventFd> {
        // Blocking (no EFD_NONBLOCK): only the ring reads it, and io_uring polls it for us.
        // SAFETY: eventfd takes plain integers and returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds one; never blocks (the counter cannot come near overflow).
    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// A zeroed, 4096-aligned heap buffer (O_DIRECT transfers, the UNMAP zero buffer).
struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: the buffer is uniquely owned heap memory, like a Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access is read-only through `as_ref`.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn zeroed(len: usize) -> AlignedBuf {
        let size = len.max(1).next_multiple_of(ALIGN);
        let layout = Layout::from_size_align(size, ALIGN).expect("a transfer buffer fits in memory");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, layout }
    }

    fn copy_of(data: &[u8]) -> AlignedBuf {
        let mut buf = AlignedBuf::zeroed(data.len());
        buf.as_mut().copy_from_slice(data);
        buf
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `layout.size() >= len` initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for AlignedBuf {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`, and `&mut self` makes the access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// Where a read lands.
enum ReadBuf {
    Plain(BytesMut),
    Aligned(AlignedBuf),
}

impl ReadBuf {
    fn zeroed(len: usize, direct: bool) -> ReadBuf {
        if direct { ReadBuf::Aligned(AlignedBuf::zeroed(len)) } else { ReadBuf::Plain(BytesMut::zeroed(len)) }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            ReadBuf::Plain(b) => b,
            ReadBuf::Aligned(b) => b.as_mut(),
        }
    }

    fn freeze(self) -> Bytes {
        match self {
            ReadBuf::Plain(b) => b.freeze(),
            ReadBuf::Aligned(b) => Bytes::from_owner(b),
        }
    }
}

/// What a write sends; kept alive by its request until the kernel is done with it.
enum WriteBuf {
    Plain(Bytes),
    Aligned(AlignedBuf),
}

impl WriteBuf {
    fn as_slice(&self) -> &[u8] {
        match self {
            WriteBuf::Plain(b) => b,
            WriteBuf::Aligned(b) => b.as_ref(),
        }
    }
}

enum Msg {
    Op(Op),
    /// Finish what is queued before this, then stop (and say so, if asked).
    Stop(Option<oneshot::Sender<()>>),
}

struct Op {
    offset: u64,
    kind: Kind,
    reply: Reply,
    /// Released when the request completes, even if its caller has gone.
    _permit: OwnedSemaphorePermit,
}

enum Reply {
    Data(oneshot::Sender<StoreResult<Bytes>>),
    Done(oneshot::Sender<StoreResult<()>>),
}

/// A request and how far it has got.
enum Kind {
    Read {
        buf: ReadBuf,
        done: usize,
    },
    /// `dsync`: RWF_DSYNC on the write; `sync_after`: an fdatasync follows (FUA where the
    /// kernel refused the flag).
    Write {
        data: WriteBuf,
        done: usize,
        dsync: bool,
        sync_after: bool,
    },
    Sync,
    Punch {
        len: u64,
    },
    /// UNMAP where holes cannot be punched.
    Zero {
        len: u64,
        done: u64,
    },
}

impl Kind {
    fn writing(&self) -> bool {
        !matches!(self, Kind::Read { .. })
    }

    fn is_empty(&self) -> bool {
        match self {
            Kind::Read { buf, .. } => match buf {
                ReadBuf::Plain(b) => b.is_empty(),
                ReadBuf::Aligned(b) => b.len == 0,
            },
            Kind::Write { data, .. } => data.as_slice().is_empty(),
            Kind::Sync => false,
            Kind::Punch { len } | Kind::Zero { len, .. } => *len == 0,
        }
    }
}

impl Op {
    fn finish(self, result: std::io::Result<()>) {
        let writing = self.kind.writing();
        let result = result.map_err(|e| StoreError::from_io(e, writing));
        match (self.reply, self.kind) {
            (Reply::Data(tx), Kind::Read { buf, .. }) => {
                let _ = tx.send(result.map(|()| buf.freeze()));
            }
            (Reply::Data(tx), _) => {
                let _ = tx.send(Err(StoreError::Read("internal error: a read answered as a write".into())));
            }
            (Reply::Done(tx), _) => {
                let _ = tx.send(result);
            }
        }
    }
}

/// Builds an SQE on the store's file: registered (fixed) if registration worked, else by fd.
macro_rules! on_file {
    ($w:expr, $op:ident ( $($arg:expr),* ) $($rest:tt)*) => {
        if $w.fixed {
            opcode::$op::new(types::Fixed(0) $(, $arg)*) $($rest)* .build()
        } else {
            opcode::$op::new(types::Fd($w.fd) $(, $arg)*) $($rest)* .build()
        }
    };
}

/// The ring thread's state.
struct Worker {
    ring: IoUring,
    /// Keeps the descriptor the ring uses open.
    _file: File,
    fd: RawFd,
    fixed: bool,
    wake: Arc<EventFd>,
    /// Where the eventfd read lands; boxed so that it never moves while the read is armed.
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Requests in the ring, by `user_data`; `free` lists the empty slots.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    in_flight: usize,
    max_in_flight: usize,
    /// Cleared once the filesystem refuses to punch holes; UNMAP then writes zeros.
    punch: bool,
    zeros: Option<AlignedBuf>,
    reaped: Vec<(u64, i32)>,
}

impl Worker {
    fn new(ring: IoUring, file: File, wake: Arc<EventFd>, depth: usize) -> Worker {
        let fd = file.as_raw_fd();
        let fixed = ring.submitter().register_files(&[fd]).is_ok();
        Worker {
            ring,
            _file: file,
            fd,
            fixed,
            wake,
            wake_buf: Box::new(0),
            wake_armed: false,
            ops: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            max_in_flight: depth.max(1),
            punch: true,
            zeros: None,
            reaped: Vec::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut stopping = false;
        let mut kicked = false;
        let mut stopped_tx = Vec::new();
        loop {
            while !stopping && self.in_flight < self.max_in_flight {
                match rx.try_recv() {
                    Ok(Msg::Op(op)) => self.start(op),
                    Ok(Msg::Stop(tx)) => {
                        stopping = true;
                        stopped_tx.extend(tx);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => stopping = true,
                }
            }
            if !stopping && !self.wake_armed {
                self.arm_wake();
            }
            if stopping && self.in_flight == 0 {
                if !self.wake_armed {
                    break;
                }
                // Complete our own pending eventfd read so that its buffer is free to go.
                if !kicked {
                    self.wake.signal();
                    kicked = true;
                }
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => {
                    tracing::error!("io_uring_enter failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
            self.reap();
        }
        for tx in stopped_tx {
            let _ = tx.send(());
        }
    }

    fn arm_wake(&mut self) {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(self.wake.0.as_raw_fd()), buf.cast(), 8).build().user_data(WAKE);
        match self.push(&entry) {
            Ok(()) => self.wake_armed = true,
            Err(e) => tracing::error!("io_uring: cannot arm the wake-up read: {e}"),
        }
    }

    fn start(&mut self, mut op: Op) {
        if op.kind.is_empty() {
            return op.finish(Ok(()));
        }
        if let Kind::Punch { len } = op.kind
            && !self.punch
        {
            op.kind = Kind::Zero { len, done: 0 };
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        self.in_flight += 1;
        self.submit(slot, op);
    }

    /// Queues the next step of `op`, or fails it if the ring will not take it.
    fn submit(&mut self, slot: usize, mut op: Op) {
        let entry = self.entry(&mut op).user_data(slot as u64);
        // The op (and so its buffer) moves into its slot before the kernel sees the entry; the
        // buffer is heap memory, so the pointers in the entry stay valid.
        self.ops[slot] = Some(op);
        if let Err(e) = self.push(&entry)
            && let Some(op) = self.ops[slot].take()
        {
            self.release(slot);
            op.finish(Err(e));
        }
    }

    fn release(&mut self, slot: usize) {
        self.in_flight -= 1;
        self.free.push(slot);
    }

    fn push(&mut self, entry: &squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every buffer an entry points into is owned by a request in `ops` (or by
            // `self`), which is kept until the kernel has completed the entry.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn entry(&mut self, op: &mut Op) -> squeue::Entry {
        let offset = op.offset;
        match &mut op.kind {
            Kind::Read { buf, done } => {
                let rest = &mut buf.as_mut()[*done..];
                let n = rest.len().min(MAX_PIECE) as u32;
                on_file!(self, Read(rest.as_mut_ptr(), n).offset(offset + *done as u64))
            }
            Kind::Write { data, done, dsync, .. } => {
                let rest = &data.as_slice()[*done..];
                let n = rest.len().min(MAX_PIECE) as u32;
                let flags = if *dsync { libc::RWF_DSYNC } else { 0 };
                on_file!(self, Write(rest.as_ptr(), n).offset(offset + *done as u64).rw_flags(flags))
            }
            Kind::Sync => on_file!(self, Fsync().flags(types::FsyncFlags::DATASYNC)),
            Kind::Punch { len } => on_file!(
                self,
                Fallocate(*len).offset(offset).mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
            ),
            Kind::Zero { len, done } => {
                let zeros: &[u8] = (*self.zeros.get_or_insert_with(|| AlignedBuf::zeroed(ZERO_PIECE))).as_ref();
                let n = (*len - *done).min(zeros.len() as u64) as u32;
                let ptr = zeros.as_ptr();
                on_file!(self, Write(ptr, n).offset(offset + *done))
            }
        }
    }

    fn reap(&mut self) {
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(user_data, result) in &reaped {
            if user_data == WAKE {
                self.wake_armed = false;
            } else {
                self.complete(user_data as usize, result);
            }
        }
        reaped.clear();
        self.reaped = reaped;
    }

    fn complete(&mut self, slot: usize, result: i32) {
        let Some(mut op) = self.ops.get_mut(slot).and_then(Option::take) else {
            tracing::error!("io_uring: completion for unknown request {slot}");
            return;
        };
        match self.advance(&mut op, result) {
            None => self.submit(slot, op),
            Some(outcome) => {
                self.release(slot);
                op.finish(outcome);
            }
        }
    }

    /// Applies a completion to `op`: `None` if it has more to do, else its outcome.
    fn advance(&mut self, op: &mut Op, result: i32) -> Option<std::io::Result<()>> {
        if result == -libc::EINTR || result == -libc::EAGAIN {
            return None;
        }
        let err = || Some(Err(std::io::Error::from_raw_os_error(-result)));
        let n = result.max(0) as usize;
        match &mut op.kind {
            Kind::Read { buf, done } => {
                if result < 0 {
                    return err();
                }
                *done += n;
                // Zero bytes: end of file, and the rest of the buffer stays zeros.
                if n == 0 || *done >= buf.as_mut().len() { Some(Ok(())) } else { None }
            }
            Kind::Write { data, done, dsync, sync_after } => {
                if result == -libc::EOPNOTSUPP && *dsync {
                    // No RWF_DSYNC here: write, then fdatasync.
                    *dsync = false;
                    *sync_after = true;
                    return None;
                }
                if result < 0 {
                    return err();
                }
                if n == 0 {
                    return Some(Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "write wrote nothing")));
                }
                *done += n;
                if *done < data.as_slice().len() {
                    return None;
                }
                if *sync_after {
                    op.kind = Kind::Sync;
                    return None;
                }
                Some(Ok(()))
            }
            Kind::Sync => Some(if result < 0 { Err(std::io::Error::from_raw_os_error(-result)) } else { Ok(()) }),
            Kind::Punch { len } => {
                if result == -libc::EOPNOTSUPP {
                    tracing::warn!("hole punching unsupported here; UNMAP writes zeros instead");
                    self.punch = false;
                    op.kind = Kind::Zero { len: *len, done: 0 };
                    return None;
                }
                Some(if result < 0 { Err(std::io::Error::from_raw_os_error(-result)) } else { Ok(()) })
            }
            Kind::Zero { len, done } => {
                if result < 0 {
                    return err();
                }
                if n == 0 {
                    return Some(Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "write wrote nothing")));
                }
                *done += n as u64;
                if *done < *len { None } else { Some(Ok(())) }
            }
        }
    }
}

/// `run` returns only once nothing is in the kernel; this is for unwinding out of the ring thread
/// (a panic) with requests still there. Closing the ring does not wait for them, so the kernel
/// may still write into their buffers (or the eventfd read's): leak those rather than free them
/// under it, and answer the callers.
impl Drop for Worker {
    fn drop(&mut self) {
        if self.in_flight == 0 && !self.wake_armed {
            return;
        }
        for op in self.ops.drain(..).flatten() {
            let Op { kind, reply, _permit, .. } = op;
            let writing = kind.writing();
            std::mem::forget(kind);
            let msg = "io_uring thread failed with the request in flight".to_string();
            match reply {
                Reply::Data(tx) => {
                    let _ = tx.send(Err(StoreError::Read(msg)));
                }
                Reply::Done(tx) => {
                    let _ = tx.send(Err(if writing { StoreError::Write(msg) } else { StoreError::Read(msg) }));
                }
            }
        }
        std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
        std::mem::forget(self.zeros.take());
    }
}

impl BlockStore for UringStore {
    fn describe(&self) -> String {
        format!("uring:{}", self.path.display())
    }

    fn capacity(&self) -> u64 {
        self.meta.capacity()
    }

    fn caps(&self) -> StoreCaps {
        self.meta.caps()
    }

    fn write_atomic(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        // Rare: through the file store's threads and intent file, beside the ring. The caller
        // keeps other writes to these blocks away meanwhile.
        self.meta.write_atomic(offset, data, fua)
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        if let Some(e) = self.out_of_range(offset, len as u64, false) {
            return Box::pin(async { Err(e) });
        }
        Box::pin(async move {
            if !self.direct && !self.stopped.load(Ordering::Acquire) {
                // Data in the page cache is copied here, without a trip through the ring thread.
                let mut cached = BytesMut::with_capacity(len);
                self.meta.read_cached(&mut cached, offset, len);
                if cached.len() == len {
                    return Ok(cached.freeze());
                }
            }
            let buf = ReadBuf::zeroed(len, self.direct);
            self.run(offset, Kind::Read { buf, done: 0 }, Reply::Data).await
        })
    }

    fn write(&self, offset: u64, data: Bytes, fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        if let Some(e) = self.out_of_range(offset, data.len() as u64, true) {
            return Box::pin(async { Err(e) });
        }
        let aligned = (data.as_ptr() as usize).is_multiple_of(ALIGN) && data.len().is_multiple_of(ALIGN);
        let data =
            if self.direct && !aligned { WriteBuf::Aligned(AlignedBuf::copy_of(&data)) } else { WriteBuf::Plain(data) };
        let kind = Kind::Write { data, done: 0, dsync: fua, sync_after: false };
        Box::pin(self.run(offset, kind, Reply::Done))
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.run(0, Kind::Sync, Reply::Done))
    }

    fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<()>> {
        if let Some(e) = self.out_of_range(offset, len, true) {
            return Box::pin(async { Err(e) });
        }
        Box::pin(self.run(offset, Kind::Punch { len }, Reply::Done))
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        self.meta.mapped_extents(offset, len)
    }

    fn resize(&self, capacity: u64) -> BoxFuture<'_, StoreResult<()>> {
        self.meta.resize(capacity)
    }

    fn stats(&self) -> StoreStats {
        StoreStats::Uring(UringStats { direct: self.direct })
    }

    fn shutdown(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let flushed = self.flush().await;
            self.stopped.store(true, Ordering::Release);
            let (tx, rx) = oneshot::channel();
            if self.tx.send(Msg::Stop(Some(tx))).is_ok() {
                self.wake.signal();
                let _ = rx.await;
            }
            flushed
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opts(size: u64, queue_depth: u32) -> UringOptions {
        UringOptions {
            file: FileOptions { size: Some(size), create: true, busy_poll: Duration::ZERO, atomic_intents: None },
            queue_depth,
            direct: false,
        }
    }

    fn open(path: &Path, size: u64) -> UringStore {
        UringStore::open(path, &opts(size, DEFAULT_QUEUE_DEPTH)).unwrap()
    }

    /// Deterministic bytes for a test write.
    fn pattern(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn round_trip_at_unaligned_sizes_and_zeros_past_written_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/disk.img");
        let s = open(&path, 4 << 20);
        assert_eq!(s.describe(), format!("uring:{}", path.display()));
        assert_eq!(s.capacity(), 4 << 20);
        assert_eq!(s.read(0, 4096).await.unwrap(), vec![0u8; 4096]);
        for (i, (offset, len)) in
            [(0u64, 1usize), (1, 511), (513, 4097), (12345, 100_000), (3 << 20, 7)].iter().enumerate()
        {
            let data = pattern(i as u64, *len);
            s.write(*offset, Bytes::from(data.clone()), i % 2 == 0).await.unwrap();
            assert_eq!(s.read(*offset, *len).await.unwrap(), data, "at {offset}+{len}");
        }
        assert_eq!(s.read(1 << 20, 65536).await.unwrap(), vec![0u8; 65536]);
        assert!(s.read(0, 0).await.unwrap().is_empty());
        s.write(0, Bytes::new(), true).await.unwrap();
        s.flush().await.unwrap();
        drop(s);
        // Reopened (by io_uring or by the positioned-I/O store), the data is there.
        let s = UringStore::open(&path, &UringOptions::new(FileOptions::existing())).unwrap();
        assert_eq!(s.read(12345, 100_000).await.unwrap(), pattern(3, 100_000));
        let f = FileStore::open(&path, &FileOptions::existing()).unwrap();
        assert_eq!(f.read(513, 4097).await.unwrap(), pattern(2, 4097));
        assert!(UringStore::open(&path, &opts(1 << 20, 8)).is_err(), "a smaller size is refused");
        assert!(UringStore::open(&dir.path().join("missing"), &UringOptions::new(FileOptions::existing())).is_err());
    }

    #[tokio::test]
    async fn reads_past_end_of_file_are_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let s = open(&path, 1 << 20);
        s.write(0, Bytes::from(vec![5u8; 1000]), false).await.unwrap();
        // Shrink the file under the store: the tail of a read beyond end of file is zeros.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(600).unwrap();
        let got = s.read(500, 1000).await.unwrap();
        assert_eq!(&got[..100], &[5u8; 100][..]);
        assert_eq!(&got[100..], &[0u8; 900][..]);
    }

    #[tokio::test]
    async fn fua_flush_unmap_and_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let s = open(&path, 4 << 20);
        s.write(8192, Bytes::from(vec![7u8; 8192]), true).await.unwrap();
        s.write(1 << 20, Bytes::from(vec![9u8; 4096]), false).await.unwrap();
        s.flush().await.unwrap();
        let ext = s.mapped_extents(0, 4 << 20).await.unwrap();
        assert!(ext.iter().any(|e| e.mapped && e.offset <= 8192 && e.offset + e.len >= 16384), "{ext:?}");
        s.unmap(8192, 8192).await.unwrap();
        assert_eq!(s.read(8192, 8192).await.unwrap(), vec![0u8; 8192]);
        // An unaligned range is zeroed too (the filesystem zeroes partial blocks).
        s.unmap((1 << 20) + 100, 1000).await.unwrap();
        let got = s.read(1 << 20, 4096).await.unwrap();
        assert_eq!(&got[..100], &[9u8; 100][..]);
        assert_eq!(&got[100..1100], &[0u8; 1000][..]);
        assert_eq!(&got[1100..], &[9u8; 2996][..]);
        s.unmap(0, 0).await.unwrap();
        s.resize(8 << 20).await.unwrap();
        assert_eq!(s.capacity(), 8 << 20);
        s.write((8 << 20) - 10, Bytes::from(vec![1u8; 10]), true).await.unwrap();
        assert!(s.resize(1 << 20).await.is_err());
        s.shutdown().await.unwrap();
        assert!(s.read(0, 10).await.is_err(), "a store that was shut down refuses requests");
    }

    #[tokio::test]
    async fn unmap_writes_zeros_where_holes_cannot_be_punched() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir.path().join("disk.img"), 4 << 20);
        s.write(0, Bytes::from(vec![3u8; 3 << 20]), false).await.unwrap();
        let mut w =
            Worker::new(new_ring(4).unwrap(), File::open(dir.path().join("disk.img")).unwrap(), s.wake.clone(), 4);
        let mut op = Op {
            offset: 10,
            kind: Kind::Punch { len: 5 },
            reply: Reply::Done(oneshot::channel().0),
            _permit: s.permits.clone().acquire_owned().await.unwrap(),
        };
        // A refused punch turns into zero writes, and so do the UNMAPs after it.
        assert!(w.advance(&mut op, -libc::EOPNOTSUPP).is_none());
        assert!(matches!(op.kind, Kind::Zero { len: 5, done: 0 }));
        assert!(!w.punch);
        drop(w);
        // End to end through a store whose worker has given up on holes: done in pieces.
        let s2 = open(&dir.path().join("zero.img"), 4 << 20);
        s2.write(0, Bytes::from(vec![4u8; 3 << 20]), false).await.unwrap();
        let (tx, rx) = oneshot::channel();
        let kind = Kind::Zero { len: (2 << 20) + 5, done: 0 };
        let permit = s2.permits.clone().acquire_owned().await.unwrap();
        s2.tx.send(Msg::Op(Op { offset: 100, kind, reply: Reply::Done(tx), _permit: permit })).unwrap();
        s2.wake.signal();
        rx.await.unwrap().unwrap();
        let got = s2.read(0, 3 << 20).await.unwrap();
        assert_eq!(&got[..100], &[4u8; 100][..]);
        assert!(got[100..100 + (2 << 20) + 5].iter().all(|&b| b == 0));
        assert!(got[100 + (2 << 20) + 5..].iter().all(|&b| b == 4));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_concurrent_mixed_operations_match_a_model() {
        const TASKS: u64 = 8;
        const REGION: u64 = 256 * 1024;
        const OPS: u64 = 256;
        let dir = tempfile::tempdir().unwrap();
        // A small ring, so that requests queue behind a full one.
        let s = Arc::new(UringStore::open(&dir.path().join("disk.img"), &opts(TASKS * REGION, 16)).unwrap());
        let mut tasks = Vec::new();
        for t in 0..TASKS {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                // Each task owns one region and checks it against its own model.
                let base = t * REGION;
                let mut model = vec![0u8; REGION as usize];
                let mut rng = t * 7919 + 1;
                let mut next = |m: u64| {
                    rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (rng >> 33) % m
                };
                for i in 0..OPS / TASKS * 4 {
                    let at = next(REGION - 1);
                    let len = 1 + next((REGION - at).min(70_000));
                    match next(10) {
                        0..=3 => {
                            let data = pattern(t * 1000 + i, len as usize);
                            s.write(base + at, Bytes::from(data.clone()), next(4) == 0).await.unwrap();
                            model[at as usize..(at + len) as usize].copy_from_slice(&data);
                        }
                        4..=7 => {
                            let got = s.read(base + at, len as usize).await.unwrap();
                            assert!(got[..] == model[at as usize..(at + len) as usize], "task {t} op {i}");
                        }
                        8 => {
                            s.unmap(base + at, len).await.unwrap();
                            model[at as usize..(at + len) as usize].fill(0);
                        }
                        _ => s.flush().await.unwrap(),
                    }
                }
                let got = s.read(base, REGION as usize).await.unwrap();
                assert!(got[..] == model[..], "task {t} final");
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn cancelled_callers_leave_the_store_usable_and_drop_waits_for_in_flight_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let s = UringStore::open(&path, &opts(1 << 20, 2)).unwrap();
        for i in 0..20u64 {
            // Polled once and dropped: the request may already be in the ring.
            let fut = s.write(i * 4096, Bytes::from(vec![i as u8 + 1; 4096]), false);
            let _ = tokio::time::timeout(std::time::Duration::ZERO, fut).await;
        }
        s.write(0, Bytes::from(vec![0xaa; 10]), false).await.unwrap();
        assert_eq!(s.read(0, 10).await.unwrap(), vec![0xaa; 10]);
        drop(s);
    }

    #[tokio::test]
    async fn ranges_beyond_off_t_are_refused_before_the_ring() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(&dir.path().join("disk.img"), 1 << 20);
        s.write(0, Bytes::from(vec![6u8; 4096]), false).await.unwrap();
        // Offset -1 is "at the file position" to io_uring: it would land on block 0.
        assert!(s.write(u64::MAX, Bytes::from(vec![1u8; 4096]), true).await.is_err());
        assert!(s.write(1 << 63, Bytes::from_static(b"x"), false).await.is_err());
        // A short read there would overflow `offset + done` and take the ring thread down.
        assert!(s.read(u64::MAX, (2 << 20) + 1).await.is_err());
        assert!(s.read(u64::MAX - 10, usize::MAX).await.is_err(), "no allocation for an absurd length");
        assert!(s.unmap(u64::MAX - 1, 2).await.is_err());
        assert!(s.unmap(i64::MAX as u64, 1).await.is_err());
        // Nothing was touched, and the ring still serves.
        assert_eq!(s.read(0, 4096).await.unwrap(), vec![6u8; 4096]);
        s.write(4096, Bytes::from_static(b"ok"), true).await.unwrap();
        assert_eq!(s.read(4096, 2).await.unwrap(), &b"ok"[..]);
    }

    #[tokio::test]
    async fn a_worker_dropped_with_requests_in_the_kernel_answers_them_without_freeing_their_buffers() {
        // A pipe nobody writes to: a read of it stays in the kernel.
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors, owned by nothing else.
        let (r, w) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let wake = Arc::new(EventFd::new().unwrap());
        let mut worker = Worker::new(new_ring(4).unwrap(), r, wake, 4);
        worker.arm_wake();
        let (tx, rx) = oneshot::channel();
        let permits = Arc::new(Semaphore::new(1));
        let op = Op {
            offset: 0,
            kind: Kind::Read { buf: ReadBuf::zeroed(4096, false), done: 0 },
            reply: Reply::Data(tx),
            _permit: permits.clone().acquire_owned().await.unwrap(),
        };
        worker.start(op);
        worker.ring.submit().unwrap();
        assert_eq!(worker.in_flight, 1);
        // What unwinding out of the ring thread would do.
        drop(worker);
        assert!(matches!(rx.await, Ok(Err(StoreError::Read(_)))));
        assert_eq!(permits.available_permits(), 1, "the request's permit is returned");
        drop(w);
    }

    #[tokio::test]
    async fn falls_back_to_positioned_io_without_a_ring() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        // A ring of zero entries cannot be created: the same failure path as ENOSYS or EPERM.
        assert!(UringStore::open(&path, &opts(1 << 20, 0)).is_err());
        let s = UringStore::open_or_fallback(&path, &opts(1 << 20, 0)).unwrap();
        assert_eq!(s.describe(), format!("file:{}", path.display()));
        s.write(100, Bytes::from_static(b"hello"), true).await.unwrap();
        assert_eq!(s.read(100, 5).await.unwrap(), &b"hello"[..]);
        let s = UringStore::open_or_fallback(&path, &opts(1 << 20, 8)).unwrap();
        assert_eq!(s.describe(), format!("uring:{}", path.display()));
        assert_eq!(s.read(100, 5).await.unwrap(), &b"hello"[..]);
        // Configuration problems are errors, not fallbacks.
        assert!(
            UringStore::open_or_fallback(&dir.path().join("missing"), &UringOptions::new(FileOptions::existing()))
                .is_err()
        );
    }

    #[tokio::test]
    async fn direct_io_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut o = opts(1 << 20, 8);
        o.direct = true;
        let s = match UringStore::open(&path, &o) {
            Ok(s) => s,
            Err(e) => return eprintln!("O_DIRECT unavailable here: {e}"),
        };
        let data = pattern(9, 8192);
        // Not 4096-aligned in memory: copied into an aligned buffer.
        let unaligned = Bytes::from(data.clone()).slice(0..8192);
        match s.write(4096, unaligned, true).await {
            // Filesystems without O_DIRECT support refuse at the first transfer.
            Err(e) if e.to_string().contains("Invalid argument") => return eprintln!("O_DIRECT refused: {e}"),
            r => r.unwrap(),
        }
        assert_eq!(s.read(4096, 8192).await.unwrap(), data);
        s.unmap(4096, 4096).await.unwrap();
        assert_eq!(s.read(0, 12288).await.unwrap()[..8192], [0u8; 8192][..]);
    }
}
