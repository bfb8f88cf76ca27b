//! Snapshots under faults: now and then the target's host takes a snapshot of LUN 1's volume,
//! reads it back through the object store alone, and checks it against the block model as a
//! read issued when the snapshot began and completed when it was taken (crash consistency:
//! every write acknowledged before it, nothing issued after it). Every later look at an earlier
//! snapshot must find the same writes: a snapshot never changes, and nothing it holds is swept
//! (a missing version is a read error). Some are deleted again, so that their versions are
//! swept among the others.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rtgt::rng::Rng;
use rtgt::s3::ObjectStore;
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::{S3Volume, SnapshotView};
use rtgt::storage::snapshots::SnapshotName;
use rtgt::storage::{BlockStore, StoreError};

use crate::model::{BLOCK, decode_block};
use crate::workload::Shared;

/// The volume LUN 1 serves now (set by its opener, again after every reopen).
pub type VolumeSlot = Arc<Mutex<Option<Weak<S3Volume>>>>;

/// A snapshot the run took.
pub struct Taken {
    pub name: SnapshotName,
    began: Duration,
    ended: Duration,
    /// The write each block holds, once read and checked.
    pub(crate) ids: Option<Vec<u32>>,
}

/// What the target's host needs to take and check snapshots.
pub struct Snapshotter {
    pub slot: VolumeSlot,
    pub store: Arc<dyn ObjectStore>,
    pub url: S3Url,
    pub blocks: u64,
    pub shared: Rc<RefCell<Shared>>,
    pub rng: Rng,
    /// The target's incarnation, and the snapshots it took: names are never reused.
    pub incarnation: u64,
    pub taken: u64,
    /// Clones made (`clones.rs`), and blocks written to them.
    pub clones: u64,
    pub clone_writes: u32,
}

/// Simulated time, as the model and the initiators see it (the target's clock starts with
/// each incarnation).
pub(crate) fn sim_now() -> Duration {
    crate::clock::now()
}

/// A snapshot that takes longer is given up (the store is away): the run goes on.
const PATIENCE: Duration = Duration::from_secs(10);

impl Snapshotter {
    /// Takes a snapshot, deletes one now and then, and checks every snapshot it can read.
    pub async fn round(&mut self) {
        let Some(volume) = self.slot.lock().expect("poisoned").as_ref().and_then(Weak::upgrade) else { return };
        self.taken += 1;
        let name = SnapshotName::parse(&format!("s{}-{}", self.incarnation, self.taken)).expect("a valid name");
        let began = sim_now();
        if let Ok(Ok(_)) = tokio::time::timeout(PATIENCE, volume.create_snapshot(name.clone())).await {
            let ended = sim_now();
            let what = format!("snapshot {name} taken ({:.3}s..{:.3}s)", began.as_secs_f64(), ended.as_secs_f64());
            self.shared.borrow_mut().event(ended, "target", what);
            self.shared.borrow_mut().snapshots.push(Taken { name, began, ended, ids: None });
        }
        if self.rng.chance(0.3) {
            self.delete_oldest(&volume).await;
        }
        drop(volume);
        // Those not checked yet, and one checked before (reading them all every round would
        // slow the run down as they pile up).
        let (unchecked, checked): (Vec<SnapshotName>, Vec<SnapshotName>) = {
            let shared = self.shared.borrow();
            let (a, b): (Vec<&Taken>, Vec<&Taken>) = shared.snapshots.iter().partition(|t| t.ids.is_none());
            (a.iter().map(|t| t.name.clone()).collect(), b.iter().map(|t| t.name.clone()).collect())
        };
        let again = (!checked.is_empty()).then(|| checked[self.rng.below(checked.len() as u64) as usize].clone());
        for name in unchecked.iter().chain(&again) {
            self.check(name).await;
        }
        if self.rng.chance(0.3) {
            self.clone_round().await;
        }
    }

    async fn delete_oldest(&mut self, volume: &S3Volume) {
        let Some(name) = self.shared.borrow().snapshots.first().map(|t| t.name.clone()) else { return };
        // Failed or not, it may be gone: no longer checked.
        self.shared.borrow_mut().snapshots.remove(0);
        let deleted = tokio::time::timeout(PATIENCE, volume.delete_snapshot(&name)).await;
        let what = format!("snapshot {name} deleted: {}", matches!(deleted, Ok(Ok(()))));
        self.shared.borrow_mut().event(sim_now(), "target", what);
    }

    /// Reads snapshot `name` through the store; the first time, checks it against the model,
    /// and later that it holds the same writes.
    async fn check(&mut self, name: &SnapshotName) {
        let view = match SnapshotView::open(self.store.clone(), &self.url, name, None).await {
            Ok(view) => view,
            Err(_) => return, // the store is away, or the manifest never landed
        };
        let data = match tokio::time::timeout(PATIENCE, view.read(0, (self.blocks * BLOCK as u64) as usize)).await {
            Ok(Ok(data)) => data,
            Ok(Err(StoreError::Read(e))) => return self.violation(format!("snapshot {name} cannot be read: {e}")),
            _ => return, // a transient fault: another round
        };
        if let Err(what) = self.compare(name, &data) {
            self.violation(what);
        }
    }

    /// Checks what snapshot `name` holds against the model (the first time it is read) or
    /// against what it held before.
    fn compare(&self, name: &SnapshotName, data: &[u8]) -> Result<(), String> {
        let mut shared = self.shared.borrow_mut();
        let Some(taken) = shared.snapshots.iter().position(|t| &t.name == name) else { return Ok(()) };
        let (began, ended) = (shared.snapshots[taken].began, shared.snapshots[taken].ended);
        let mut ids = Vec::with_capacity(self.blocks as usize);
        for b in 0..self.blocks {
            let block = &data[b as usize * BLOCK..(b as usize + 1) * BLOCK];
            ids.push(decode_block(b, block).map_err(|e| format!("snapshot {name}: {e}"))?);
            if shared.snapshots[taken].ids.is_none() {
                shared
                    .model
                    .check_read(1, b, block, began, ended)
                    .map_err(|e| format!("snapshot {name} (taken {began:?}..{ended:?}): {e}"))?;
            }
        }
        match &shared.snapshots[taken].ids {
            None => shared.snapshots[taken].ids = Some(ids),
            Some(recorded) => {
                if let Some(b) = (0..ids.len()).find(|&b| ids[b] != recorded[b]) {
                    return Err(format!(
                        "snapshot {name} changed: block {b} held write {}, now {}",
                        recorded[b], ids[b]
                    ));
                }
            }
        }
        Ok(())
    }

    pub(crate) fn violation(&self, what: String) {
        self.shared.borrow_mut().violation.get_or_insert(format!("snapshots: {what}"));
    }
}
