//! This node's identity: an id kept in the data directory and held under an exclusive lock for
//! as long as the process runs. A lease on an S3 volume names the node that holds it; a later
//! process of the same node holds the lock, so the holder of such a lease is provably dead and
//! the lease is taken back at once (no `--force`, no waiting out the lease).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The id of a node: stable across restarts of rtgt on one data directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// An id from its text (the simulation and tests name their nodes).
    pub fn new(id: impl Into<String>) -> NodeId {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A file locked with `flock(LOCK_EX)`, released when dropped (or when the process dies).
#[derive(Debug)]
pub struct LockedFile {
    _file: File,
}

/// Locks `path` (creating it) without waiting, and writes this process's id into it. An error
/// of kind `WouldBlock` means another process holds it; its message names that process.
pub fn lock_file(path: &Path) -> io::Result<LockedFile> {
    use std::os::fd::AsRawFd;
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let who = if holder.is_empty() { String::new() } else { format!(" (pid {holder})") };
            return Err(io::Error::new(io::ErrorKind::WouldBlock, format!("locked by another process{who}")));
        }
        return Err(err);
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    Ok(LockedFile { _file: file })
}

/// The node identity of a data directory, held locked.
#[derive(Debug)]
pub struct NodeIdentity {
    pub id: NodeId,
    pub dir: PathBuf,
    _lock: LockedFile,
}

const ID_FILE: &str = "node-id";
const LOCK_FILE: &str = "rtgt.lock";

impl NodeIdentity {
    /// Takes the identity of `dir` (creating the directory and the id the first time). Fails if
    /// another process holds it.
    pub fn open(dir: &Path) -> Result<NodeIdentity, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let lock = lock_file(&dir.join(LOCK_FILE)).map_err(|e| {
            format!(
                "the data directory {} is in use: {e}; stop that rtgt, or give this one its own --data-dir",
                dir.display()
            )
        })?;
        let id_path = dir.join(ID_FILE);
        let id = match std::fs::read_to_string(&id_path) {
            Ok(text) if !text.trim().is_empty() => text.trim().to_string(),
            Ok(_) => return Err(format!("{} is empty; remove it to make a new node id", id_path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = new_id();
                crate::api::write_atomically(&id_path, format!("{id}\n").as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", id_path.display()))?;
                id
            }
            Err(e) => return Err(format!("cannot read {}: {e}", id_path.display())),
        };
        Ok(NodeIdentity { id: NodeId(id), dir: dir.to_path_buf(), _lock: lock })
    }
}

/// A fresh random node id: host name and 64 random bits.
fn new_id() -> String {
    let host = crate::config::hostname();
    format!("{host}-{:016x}", crate::rng::Rng::seeded(crate::rng::os_seed()).next_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_kept_and_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeIdentity::open(dir.path()).unwrap();
        let err = NodeIdentity::open(dir.path()).unwrap_err();
        assert!(err.contains("in use") && err.contains(&format!("pid {}", std::process::id())), "{err}");
        let id = first.id.clone();
        drop(first);
        let again = NodeIdentity::open(dir.path()).unwrap();
        assert_eq!(again.id, id, "the id survives restarts");
    }
}
