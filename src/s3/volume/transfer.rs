//! Copying a whole volume to or from a local file or block device (`rtgt volume export` and
//! `import`). Sparse both ways: unmapped ranges of a volume are not read and stay holes in the
//! file; all-zero pieces of a file are not written to the volume. A few pieces are in flight at
//! once, since the store is a round trip away.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::S3Volume;
use crate::storage::BlockStore;

/// Bytes read or written at once.
const PIECE: u64 = 4 << 20;
/// Pieces in flight at once.
const PARALLEL: usize = 8;

/// Progress: bytes done of the whole.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// The pieces of `[0, len)`.
fn pieces(len: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(PIECE)).map(move |i| (i * PIECE, PIECE.min(len - i * PIECE)))
}

/// Writes the volume's mapped data into `file` (which must be empty or a device at least as
/// large); returns the bytes read from the volume.
pub async fn export_volume(volume: &S3Volume, file: &File, progress: Progress<'_>) -> Result<u64, String> {
    let size = volume.capacity();
    if file.metadata().map_err(|e| e.to_string())?.is_file() {
        file.set_len(size).map_err(|e| format!("cannot size the file: {e}"))?;
    }
    let extents = volume.mapped_extents(0, size).await.map_err(|e| format!("cannot map the volume: {e}"))?;
    let mapped: Vec<(u64, u64)> = extents
        .into_iter()
        .filter(|e| e.mapped)
        .flat_map(|e| pieces(e.len).map(move |(at, len)| (e.offset + at, len)))
        .collect();
    let total: u64 = mapped.iter().map(|(_, len)| len).sum();
    let done = std::sync::atomic::AtomicU64::new(0);
    let done = &done;
    futures::stream::iter(mapped)
        .map(|(offset, len)| async move {
            let data = volume.read(offset, len as usize).await.map_err(|e| format!("read at {offset}: {e}"))?;
            // Zeros read from a mapped range stay holes too.
            if data.iter().any(|&b| b != 0) {
                file.write_all_at(&data, offset).map_err(|e| format!("write at {offset}: {e}"))?;
            }
            let now = done.fetch_add(len, std::sync::atomic::Ordering::Relaxed) + len;
            progress(now, total);
            Ok::<(), String>(())
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    file.sync_all().map_err(|e| format!("cannot sync the file: {e}"))?;
    Ok(total)
}

/// Writes the non-zero pieces of `file` (`size` bytes) into the volume and makes them durable;
/// returns the bytes written.
pub async fn import_volume(volume: &S3Volume, file: &File, size: u64, progress: Progress<'_>) -> Result<u64, String> {
    if size > volume.capacity() {
        return Err(format!("{size} bytes do not fit the volume's {}", volume.capacity()));
    }
    let done = std::sync::atomic::AtomicU64::new(0);
    let written = std::sync::atomic::AtomicU64::new(0);
    futures::stream::iter(pieces(size))
        .map(|(offset, len)| {
            let (done, written) = (&done, &written);
            async move {
                let mut data = vec![0u8; len as usize];
                file.read_exact_at(&mut data, offset).map_err(|e| format!("read at {offset}: {e}"))?;
                if data.iter().any(|&b| b != 0) {
                    volume
                        .write(offset, Bytes::from(data), false)
                        .await
                        .map_err(|e| format!("write at {offset}: {e}"))?;
                    written.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                }
                let now = done.fetch_add(len, std::sync::atomic::Ordering::Relaxed) + len;
                progress(now, size);
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<()>()
        .await?;
    volume.flush().await.map_err(|e| format!("cannot make the import durable: {e}"))?;
    Ok(written.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::TokioClock;
    use crate::s3::MemObjectStore;
    use crate::s3::url::S3Url;
    use crate::s3::volume::{CreateSpec, VolumeOptions};

    const CHUNK: u64 = 64 * 1024;
    const SIZE: u64 = 40 * PIECE / 4; // 40 MiB: ten pieces

    async fn open(mem: &Arc<MemObjectStore>, name: &str) -> Arc<S3Volume> {
        let opts = VolumeOptions {
            create: Some(CreateSpec { size: SIZE, block_size: 512, chunk_size: CHUNK }),
            holder: "t".into(),
            ..VolumeOptions::default()
        };
        let url = S3Url::parse(&format!("s3://bucket/{name}")).unwrap();
        S3Volume::open(mem.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap()
    }

    /// A volume exported to a file and imported into another reads the same, and the file has
    /// holes where the volume has nothing.
    #[tokio::test]
    async fn export_then_import_round_trips_and_stays_sparse() {
        let mem = Arc::new(MemObjectStore::new());
        let v = open(&mem, "a").await;
        let pattern =
            |at: u64, len: usize| Bytes::from((0..len).map(|i| ((at + i as u64) % 251 + 1) as u8).collect::<Vec<u8>>());
        v.write(0, pattern(0, 1 << 20), false).await.unwrap();
        v.write(SIZE - 4096, pattern(SIZE - 4096, 4096), true).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let exported = export_volume(&v, &file, &|_, _| {}).await.unwrap();
        assert!(exported < SIZE / 2, "only mapped pieces are read: {exported}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < SIZE / 2, "the file is sparse");
        let w = open(&mem, "b").await;
        let written = import_volume(&w, &file, SIZE, &|_, _| {}).await.unwrap();
        assert!(written < SIZE / 2, "zero pieces are not written: {written}");
        for (at, len) in [(0, 1 << 20), (SIZE - 4096, 4096), (20 << 20, 4096)] {
            assert_eq!(w.read(at, len).await.unwrap(), v.read(at, len).await.unwrap(), "at {at}");
        }
    }
}
