//! The filesystem seam of the local store: the few operations it needs, so that a test can
//! stand in a filesystem that loses what was not synced ([`super::crash_fs::CrashFs`]).

use std::any::Any;
use std::io;
use std::path::Path;

/// A file opened for reading: reads see the file as it was when it was opened, even if it is
/// replaced meanwhile.
pub trait ReadAt: Send {
    fn size(&self) -> u64;
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
}

/// A file opened for writing in place (segment files written by appending to a file of
/// known size): writes are visible to reads through the same handle at once, and durable
/// after [`WriteAt::sync_data`].
pub trait WriteAt: ReadAt + Sync {
    /// Writes all of `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the file's contents durable (fdatasync: a write within the file's size changes
    /// no metadata, so this is one device flush).
    fn sync_data(&self) -> io::Result<()>;
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    /// Bytes, for files.
    pub len: u64,
}

pub trait Fs: Send + Sync + 'static {
    /// Creates a directory whose parent exists (an existing one is fine).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates `path`, which must not exist, holding the concatenation of `parts`; with `sync`,
    /// the contents are durable on return (fsync).
    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()>;
    /// Replaces `to` with `from` atomically (visible at once; durable after [`Fs::sync_dir`]).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of a directory (creations, renames, removals) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>>;
    /// Opens an existing file for reading and writing in place.
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WriteAt>>;
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;
    fn exists(&self, path: &Path) -> bool;
    /// Takes an exclusive lock on `path` (created if missing) for as long as the returned
    /// guard lives; fails at once if another process holds it.
    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>>;
}

/// Reads all of `[offset, offset + len)`, or up to the end of the file.
pub fn read_exact_at(file: &dyn ReadAt, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = file.read_at(offset + done as u64, &mut buf[done..])?;
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    Ok(buf)
}

/// The real filesystem.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdFs;

struct StdFile(std::fs::File, u64);

impl ReadAt for StdFile {
    fn size(&self) -> u64 {
        self.1
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        std::os::unix::fs::FileExt::read_at(&self.0, buf, offset)
    }
}

impl WriteAt for StdFile {
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

impl Fs for StdFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            other => other,
        }
    }

    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
        for part in parts {
            f.write_all(part)?;
        }
        if sync {
            f.sync_data()?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        Ok(Box::new(StdFile(f, len)))
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WriteAt>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let len = f.metadata()?.len();
        Ok(Box::new(StdFile(f, len)))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else { continue };
            let meta = entry.metadata()?;
            out.push(DirEntry { name, is_dir: meta.is_dir(), len: meta.len() });
        }
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        Ok(Box::new(crate::node::lock_file(path)?))
    }
}
