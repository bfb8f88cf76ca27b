//! A filesystem in memory that forgets, at a power loss, everything not made durable: file
//! contents not fsynced, directory entries (creations, renames, removals) not followed by a
//! directory fsync. It can also stop at any operation, as a process killed there would. Tests
//! and the simulation run the local store on it to check what survives a crash.

use std::any::Any;
use std::collections::BTreeMap;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::fs::{DirEntry, Fs, ReadAt, WriteAt};

enum Node {
    File { data: Arc<Vec<u8>>, durable: Arc<Vec<u8>> },
    Dir { entries: BTreeMap<String, usize>, durable: BTreeMap<String, usize> },
}

struct State {
    nodes: Vec<Node>,
    /// Mutating operations so far.
    ops: u64,
    /// Operations from this one on fail, as if the process had died before it.
    dead_from: Option<u64>,
    /// Operations that fail alone, with an I/O error the process lives through: changing
    /// nothing, or (`true`) after their change.
    faults: BTreeMap<u64, bool>,
    /// Held locks, each with the number of the guard that holds it.
    locks: BTreeMap<PathBuf, u64>,
    next_lock: u64,
}

/// The shared filesystem; clones see the same files.
#[derive(Clone)]
pub struct CrashFs {
    state: Arc<Mutex<State>>,
}

impl Default for CrashFs {
    fn default() -> Self {
        CrashFs::new()
    }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn names(path: &Path) -> Vec<String> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect()
}

impl CrashFs {
    pub fn new() -> CrashFs {
        let root = Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() };
        CrashFs {
            state: Arc::new(Mutex::new(State {
                nodes: vec![root],
                ops: 0,
                dead_from: None,
                faults: BTreeMap::new(),
                locks: BTreeMap::new(),
                next_lock: 0,
            })),
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("CrashFs poisoned")
    }

    /// Mutating operations done so far.
    pub fn ops(&self) -> u64 {
        self.lock_state().ops
    }

    /// Makes the `n`-th mutating operation from now, and all after it, fail: the process died
    /// just before it.
    pub fn die_after(&self, n: u64) {
        let mut st = self.lock_state();
        st.dead_from = Some(st.ops + n);
    }

    /// Makes the `n`-th mutating operation from now fail with an I/O error, changing nothing;
    /// the operations after it succeed (a disk's transient error, a full disk).
    pub fn fail_once_after(&self, n: u64) {
        let mut st = self.lock_state();
        let at = st.ops + n;
        st.faults.insert(at, false);
    }

    /// Makes the `n`-th mutating operation from now fail with an I/O error after its change
    /// (a write that reached the file, then an error: what a real filesystem may leave).
    pub fn fail_once_after_applying(&self, n: u64) {
        let mut st = self.lock_state();
        let at = st.ops + n;
        st.faults.insert(at, true);
    }

    /// Power loss: every file holds what was last fsynced, every directory the entries it had
    /// at its last fsync. The process is alive again afterwards, with no locks held.
    pub fn power_loss(&self) {
        let mut st = self.lock_state();
        for node in &mut st.nodes {
            match node {
                Node::File { data, durable } => *data = durable.clone(),
                Node::Dir { entries, durable } => *entries = durable.clone(),
            }
        }
        st.dead_from = None;
        st.faults.clear();
        st.locks.clear();
    }

    /// A process crash without a power loss: what the page cache holds survives.
    pub fn process_crash(&self) {
        let mut st = self.lock_state();
        st.dead_from = None;
        st.faults.clear();
        st.locks.clear();
    }

    /// Every file under `dir` and its current contents (for checks).
    pub fn files(&self, dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let st = self.lock_state();
        let mut out = BTreeMap::new();
        if let Ok(n) = Self::resolve(&st, dir) {
            Self::collect(&st, n, dir.to_path_buf(), &mut out);
        }
        out
    }

    fn collect(st: &State, node: usize, path: PathBuf, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        match &st.nodes[node] {
            Node::File { data, .. } => {
                out.insert(path, data.to_vec());
            }
            Node::Dir { entries, .. } => {
                for (name, child) in entries {
                    Self::collect(st, *child, path.join(name), out);
                }
            }
        }
    }

    fn resolve(st: &State, path: &Path) -> io::Result<usize> {
        let mut node = 0;
        for name in names(path) {
            match &st.nodes[node] {
                Node::Dir { entries, .. } => node = *entries.get(&name).ok_or_else(not_found)?,
                Node::File { .. } => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
            }
        }
        Ok(node)
    }

    /// The directory holding `path` and the last name of `path`.
    fn parent(st: &State, path: &Path) -> io::Result<(usize, String)> {
        let mut all = names(path);
        let last = all.pop().ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let dir = Self::resolve(st, &all.iter().collect::<PathBuf>())?;
        match st.nodes[dir] {
            Node::Dir { .. } => Ok((dir, last)),
            Node::File { .. } => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn entries(st: &mut State, dir: usize) -> &mut BTreeMap<String, usize> {
        match &mut st.nodes[dir] {
            Node::Dir { entries, .. } => entries,
            Node::File { .. } => unreachable!("checked to be a directory"),
        }
    }

    /// Counts a mutating operation; fails once the process is dead.
    fn mutate(st: &mut State) -> io::Result<()> {
        if st.dead_from.is_some_and(|d| st.ops >= d) {
            return Err(io::Error::other("CrashFs: the process died"));
        }
        st.ops += 1;
        match st.faults.get(&(st.ops - 1)) {
            Some(false) => {
                st.faults.remove(&(st.ops - 1));
                Err(io::Error::other("CrashFs: an I/O error"))
            }
            _ => Ok(()),
        }
    }

    /// Ends a mutating operation whose change is made: fails if it was to fail after it.
    fn applied(st: &mut State) -> io::Result<()> {
        match st.faults.remove(&(st.ops - 1)) {
            Some(true) => Err(io::Error::other("CrashFs: an I/O error after the change")),
            _ => Ok(()),
        }
    }
}

struct Snapshot(Arc<Vec<u8>>);

impl ReadAt for Snapshot {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }
}

/// A file open for writing in place: reads and writes see its current contents.
struct OpenFile(CrashFs, usize);

impl OpenFile {
    fn data(&self) -> Arc<Vec<u8>> {
        match &self.0.lock_state().nodes[self.1] {
            Node::File { data, .. } => data.clone(),
            Node::Dir { .. } => unreachable!("opened as a file"),
        }
    }
}

impl ReadAt for OpenFile {
    fn size(&self) -> u64 {
        self.data().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Snapshot(self.data()).read_at(offset, buf)
    }
}

impl WriteAt for OpenFile {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.0.lock_state();
        CrashFs::mutate(&mut st)?;
        let Node::File { data, .. } = &mut st.nodes[self.1] else { unreachable!("opened as a file") };
        let data = Arc::make_mut(data);
        let end = offset as usize + bytes.len();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[offset as usize..end].copy_from_slice(bytes);
        CrashFs::applied(&mut st)
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.0.lock_state();
        CrashFs::mutate(&mut st)?;
        let Node::File { data, durable } = &mut st.nodes[self.1] else { unreachable!("opened as a file") };
        *durable = data.clone();
        CrashFs::applied(&mut st)
    }
}

struct Lock(CrashFs, PathBuf, u64);

impl Drop for Lock {
    fn drop(&mut self) {
        let mut st = self.0.lock_state();
        // A guard of a crashed process may go after the next process took the lock.
        if st.locks.get(&self.1) == Some(&self.2) {
            st.locks.remove(&self.1);
        }
    }
}

impl Fs for CrashFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        let (dir, name) = Self::parent(&st, path)?;
        if let Some(&existing) = Self::entries(&mut st, dir).get(&name) {
            return match st.nodes[existing] {
                Node::Dir { .. } => Ok(()),
                Node::File { .. } => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            };
        }
        Self::mutate(&mut st)?;
        st.nodes.push(Node::Dir { entries: BTreeMap::new(), durable: BTreeMap::new() });
        let id = st.nodes.len() - 1;
        Self::entries(&mut st, dir).insert(name, id);
        Self::applied(&mut st)
    }

    fn write_new(&self, path: &Path, parts: &[&[u8]], sync: bool) -> io::Result<()> {
        let mut st = self.lock_state();
        let (dir, name) = Self::parent(&st, path)?;
        if Self::entries(&mut st, dir).contains_key(&name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        Self::mutate(&mut st)?;
        let data = Arc::new(parts.concat());
        let durable = if sync { data.clone() } else { Arc::new(Vec::new()) };
        st.nodes.push(Node::File { data, durable });
        let id = st.nodes.len() - 1;
        Self::entries(&mut st, dir).insert(name, id);
        Self::applied(&mut st)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        let (from_dir, from_name) = Self::parent(&st, from)?;
        let (to_dir, to_name) = Self::parent(&st, to)?;
        let node = *Self::entries(&mut st, from_dir).get(&from_name).ok_or_else(not_found)?;
        Self::mutate(&mut st)?;
        Self::entries(&mut st, from_dir).remove(&from_name);
        Self::entries(&mut st, to_dir).insert(to_name, node);
        Self::applied(&mut st)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        let (dir, name) = Self::parent(&st, path)?;
        let node = *Self::entries(&mut st, dir).get(&name).ok_or_else(not_found)?;
        if let Node::Dir { .. } = st.nodes[node] {
            return Err(io::Error::from(io::ErrorKind::IsADirectory));
        }
        Self::mutate(&mut st)?;
        Self::entries(&mut st, dir).remove(&name);
        Self::applied(&mut st)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock_state();
        let dir = Self::resolve(&st, path)?;
        Self::mutate(&mut st)?;
        match &mut st.nodes[dir] {
            Node::Dir { entries, durable } => *durable = entries.clone(),
            Node::File { .. } => return Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
        Self::applied(&mut st)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn ReadAt>> {
        let st = self.lock_state();
        match &st.nodes[Self::resolve(&st, path)?] {
            Node::File { data, .. } => Ok(Box::new(Snapshot(data.clone()))),
            Node::Dir { .. } => Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WriteAt>> {
        let st = self.lock_state();
        let node = Self::resolve(&st, path)?;
        match &st.nodes[node] {
            Node::File { .. } => Ok(Box::new(OpenFile(self.clone(), node))),
            Node::Dir { .. } => Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let st = self.lock_state();
        match &st.nodes[Self::resolve(&st, path)?] {
            Node::Dir { entries, .. } => Ok(entries
                .iter()
                .map(|(name, &n)| match &st.nodes[n] {
                    Node::File { data, .. } => DirEntry { name: name.clone(), is_dir: false, len: data.len() as u64 },
                    Node::Dir { .. } => DirEntry { name: name.clone(), is_dir: true, len: 0 },
                })
                .collect()),
            Node::File { .. } => Err(io::Error::from(io::ErrorKind::NotADirectory)),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        Self::resolve(&self.lock_state(), path).is_ok()
    }

    fn lock(&self, path: &Path) -> io::Result<Box<dyn Any + Send + Sync>> {
        let mut st = self.lock_state();
        if st.locks.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked by another process"));
        }
        st.next_lock += 1;
        let n = st.next_lock;
        st.locks.insert(path.to_path_buf(), n);
        Ok(Box::new(Lock(self.clone(), path.to_path_buf(), n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_data_and_entries_survive_a_power_loss() {
        let fs = CrashFs::new();
        let d = Path::new("/d");
        fs.create_dir(d).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        fs.write_new(&d.join("synced"), &[b"one"], true).unwrap();
        fs.write_new(&d.join("unsynced"), &[b"two"], false).unwrap();
        fs.sync_dir(d).unwrap();
        fs.write_new(&d.join("late"), &[b"three"], true).unwrap();
        fs.power_loss();
        let files = fs.files(d);
        assert_eq!(files[&d.join("synced")], b"one");
        assert_eq!(files[&d.join("unsynced")], b"", "its contents were never synced");
        assert!(!files.contains_key(&d.join("late")), "its entry was never synced");
    }

    #[test]
    fn a_dead_process_changes_nothing_more() {
        let fs = CrashFs::new();
        fs.die_after(1);
        fs.create_dir(Path::new("/a")).unwrap();
        assert!(fs.create_dir(Path::new("/b")).is_err());
        fs.process_crash();
        fs.create_dir(Path::new("/b")).unwrap();
        assert!(fs.exists(Path::new("/a")) && fs.exists(Path::new("/b")));
    }
}
