//! Where a logical unit's persistent reservations are kept (see `scsi/pr_keeper.rs`): for file
//! and block device LUNs, a file in the data directory when an initiator asks for them to
//! outlive a restart (APTPL); for S3 volumes, an object beside the volume, written at every
//! change, so that whichever node opens the volume next (a failover) has them.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::s3::volume::S3Volume;
use crate::s3::volume::format::RESERVATIONS_NAME;
use crate::scsi::ReservationKeeper;
use crate::storage::BoxFuture;

/// A file, replaced whole (`write_atomically`: written beside, fsynced, renamed over, its
/// directory fsynced).
pub struct FileKeeper {
    path: PathBuf,
}

impl FileKeeper {
    pub fn new(path: PathBuf) -> FileKeeper {
        FileKeeper { path }
    }

    fn save_now(&self, saved: Option<Vec<u8>>) -> std::io::Result<()> {
        match saved {
            Some(bytes) => crate::api::write_atomically(&self.path, &bytes),
            None => match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
                Ok(()) => std::fs::File::open(self.path.parent().expect("a file in a directory"))?.sync_all(),
            },
        }
    }
}

impl ReservationKeeper for FileKeeper {
    fn load(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            match std::fs::read(&self.path) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn save(&self, saved: Option<Vec<u8>>) -> BoxFuture<'_, Result<(), String>> {
        // Rare and small (a PERSISTENT RESERVE OUT with APTPL): done in place.
        Box::pin(async move { self.save_now(saved).map_err(|e| e.to_string()) })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// An object beside an S3 volume, written by the lease holder only.
pub struct VolumeKeeper {
    volume: Arc<S3Volume>,
}

impl VolumeKeeper {
    pub fn new(volume: Arc<S3Volume>) -> VolumeKeeper {
        VolumeKeeper { volume }
    }
}

impl ReservationKeeper for VolumeKeeper {
    fn load(&self) -> BoxFuture<'_, Result<Option<Vec<u8>>, String>> {
        Box::pin(async move {
            let saved = self.volume.read_aside(RESERVATIONS_NAME).await.map_err(|e| e.to_string())?;
            Ok(saved.map(|b| b.to_vec()))
        })
    }

    fn save(&self, saved: Option<Vec<u8>>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.volume.write_aside(RESERVATIONS_NAME, saved.map(Bytes::from)).await.map_err(|e| e.to_string())
        })
    }

    fn describe(&self) -> String {
        self.volume.url().key(RESERVATIONS_NAME)
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::s3::MemObjectStore;
    use crate::s3::url::S3Url;
    use crate::s3::volume::{CreateSpec, VolumeOptions};

    async fn round_trip(keeper: &dyn ReservationKeeper) {
        assert_eq!(keeper.load().await, Ok(None));
        keeper.save(Some(b"one".to_vec())).await.unwrap();
        keeper.save(Some(b"two".to_vec())).await.unwrap();
        assert_eq!(keeper.load().await, Ok(Some(b"two".to_vec())));
        keeper.save(None).await.unwrap();
        keeper.save(None).await.unwrap();
        assert_eq!(keeper.load().await, Ok(None));
    }

    #[tokio::test]
    async fn a_file_keeps_what_was_saved_last() {
        let dir = tempfile::tempdir().unwrap();
        round_trip(&FileKeeper::new(dir.path().join("reservations/x.json"))).await;
    }

    #[tokio::test]
    async fn an_object_beside_the_volume_keeps_what_was_saved_last() {
        let mem = Arc::new(MemObjectStore::new());
        let opts = VolumeOptions {
            create: Some(CreateSpec { size: 1 << 20, block_size: 512, chunk_size: 64 << 10 }),
            holder: "a".into(),
            ..VolumeOptions::default()
        };
        let url = S3Url::parse("s3://bucket/vol").unwrap();
        let volume = S3Volume::open(mem.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap();
        let keeper = VolumeKeeper::new(volume);
        round_trip(&keeper).await;
        keeper.save(Some(b"kept".to_vec())).await.unwrap();
        assert_eq!(mem.objects().get("vol/rtgt-reservations.json").map(|b| &b[..]), Some(&b"kept"[..]));
    }
}
