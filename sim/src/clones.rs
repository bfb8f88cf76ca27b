//! Clones under faults: now and then the target's host makes a clone of a snapshot it has
//! checked, writes some blocks of the clone, closes it, opens it again and reads it whole. The
//! oracle: each block holds the clone's own last write if it wrote one, and otherwise exactly
//! what the snapshot held (read through to the parent's versions, which the parent's sweep
//! must never delete while the snapshot exists). While a clone exists its snapshot cannot be
//! deleted; the clone is deleted at the end of its round, so that the snapshot can be.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rtgt::clock::{Clock, TokioClock};
use rtgt::s3::url::S3Url;
use rtgt::s3::volume::{S3Volume, VolumeOptions, clone};
use rtgt::storage::snapshots::SnapshotName;
use rtgt::storage::{BlockStore, StoreError};

use crate::model::{BLOCK, decode_block};
use crate::snapshots::Snapshotter;
use crate::world::sim_retry_policy;

/// The clones' volumes are `<bucket>/clone-<incarnation>-<n>`.
pub const CLONE_PREFIX: &str = "clone-";
/// Write ids of clone writes: far above the workload's.
const CLONE_IDS: u32 = 3_000_000_000;
/// A clone round that takes longer is given up (the store is away).
const PATIENCE: Duration = Duration::from_secs(20);

impl Snapshotter {
    /// Clones a checked snapshot, writes the clone, and checks what it reads.
    pub async fn clone_round(&mut self) {
        let checked: Vec<(SnapshotName, Vec<u32>)> =
            self.shared.borrow().snapshots.iter().filter_map(|t| Some((t.name.clone(), t.ids.clone()?))).collect();
        if checked.is_empty() {
            return;
        }
        let (name, held) = checked[self.rng.below(checked.len() as u64) as usize].clone();
        self.clones += 1;
        let child =
            S3Url::parse(&format!("s3://{}/{CLONE_PREFIX}{}-{}", self.url.bucket, self.incarnation, self.clones))
                .expect("a valid url");
        let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
        let made = clone::clone_volume(&*self.store, &self.url, &name, &child, &*clock, self.rng.next_u64());
        if !matches!(tokio::time::timeout(PATIENCE, made).await, Ok(Ok(_))) {
            return; // the store is away: maybe made, maybe not; deleted below either way
        }
        let written = match tokio::time::timeout(PATIENCE, self.write_clone(&child, &clock)).await {
            Ok(Ok(written)) => written,
            _ => return self.delete_clone(&child, &clock).await,
        };
        match tokio::time::timeout(PATIENCE, self.read_clone(&child, &clock)).await {
            Ok(Ok(data)) => {
                if let Err(what) = compare(&name, &held, &written, &data) {
                    self.violation(what);
                }
            }
            Ok(Err(StoreError::Read(e))) => self.violation(format!("clone of {name} cannot be read: {e}")),
            _ => {}
        }
        self.delete_clone(&child, &clock).await;
    }

    fn clone_options(&mut self) -> VolumeOptions {
        VolumeOptions {
            cache_bytes: 32 * 1024,
            retry: sim_retry_policy(),
            holder: format!("sim-clones/{}", self.incarnation),
            seed: self.rng.next_u64(),
            ..VolumeOptions::default()
        }
    }

    /// Writes a few blocks of the clone and closes it: which block holds which write.
    async fn write_clone(&mut self, child: &S3Url, clock: &Arc<dyn Clock>) -> Result<BTreeMap<u64, u32>, StoreError> {
        let opts = self.clone_options();
        let volume = S3Volume::open(self.store.clone(), child.clone(), opts, clock.clone())
            .await
            .map_err(|e| StoreError::Transient(e.to_string()))?;
        let mut written = BTreeMap::new();
        for _ in 0..1 + self.rng.below(6) {
            let lba = self.rng.below(self.blocks);
            self.clone_writes += 1;
            let id = CLONE_IDS + self.clone_writes;
            let data = crate::workload::data_for(id, lba, 1);
            volume.write(lba * BLOCK as u64, data, self.rng.chance(0.5)).await?;
            written.insert(lba, id);
        }
        volume.close().await?;
        Ok(written)
    }

    async fn read_clone(&mut self, child: &S3Url, clock: &Arc<dyn Clock>) -> Result<bytes::Bytes, StoreError> {
        let opts = self.clone_options();
        let volume = S3Volume::open(self.store.clone(), child.clone(), opts, clock.clone())
            .await
            .map_err(|e| StoreError::Transient(e.to_string()))?;
        let data = volume.read(0, (self.blocks * BLOCK as u64) as usize).await;
        let _ = volume.close().await; // a failed close leaves logs the delete removes
        data
    }

    async fn delete_clone(&mut self, child: &S3Url, clock: &Arc<dyn Clock>) {
        let holder = format!("sim-clones/{}", self.incarnation);
        let deleted = rtgt::s3::volume::delete_volume(self.store.clone(), child, true, clock.clone(), holder);
        let ok = matches!(tokio::time::timeout(PATIENCE, deleted).await, Ok(Ok(_)));
        self.shared.borrow_mut().event(crate::snapshots::sim_now(), "target", format!("clone {child} deleted: {ok}"));
    }
}

/// Checks what a clone of snapshot `name` read: its own writes where it wrote, the snapshot's
/// elsewhere.
fn compare(name: &SnapshotName, held: &[u32], written: &BTreeMap<u64, u32>, data: &[u8]) -> Result<(), String> {
    for (b, snapshot_id) in held.iter().enumerate() {
        let block = &data[b * BLOCK..(b + 1) * BLOCK];
        let got = decode_block(b as u64, block).map_err(|e| format!("clone of {name}: {e}"))?;
        let want = written.get(&(b as u64)).copied().unwrap_or(*snapshot_id);
        if got != want {
            return Err(format!("clone of {name}: block {b} holds write {got}, not {want}"));
        }
    }
    Ok(())
}
