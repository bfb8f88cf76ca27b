//! Copying a whole volume to or from a local file or block device (`rtgt volume export` and
//! `import`). Sparse both ways: unmapped ranges of a volume are not read and stay holes in the
//! file; all-zero pieces of a file are not written to the volume. A few pieces are in flight at
//! once, since the store is a round trip away.

use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::S3Volume;
use crate::storage::{BlockStore, StoreError, is_zero};

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
pub async fn export_volume(volume: &dyn BlockStore, file: &File, progress: Progress<'_>) -> Result<u64, String> {
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
            if !is_zero(&data) {
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

/// Where an import is, kept beside the volume until it ends: the file's size and the bytes
/// of it (a prefix) that are durable in the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ImportProgress {
    size: u64,
    done: u64,
}

/// The record of an import in progress, beside the volume.
pub const IMPORT_PROGRESS: &str = "rtgt-import.json";
/// Pieces between two checkpoints of an import (256 MiB).
const CHECKPOINT_PIECES: u64 = 64;

/// Whether an interrupted import left its progress beside the volume, and where it is.
pub async fn import_progress(volume: &S3Volume) -> Result<Option<(u64, u64)>, String> {
    match volume.read_aside(IMPORT_PROGRESS).await.map_err(|e| e.to_string())? {
        None => Ok(None),
        Some(body) => {
            let p: ImportProgress = serde_json::from_slice(&body).map_err(|e| format!("{IMPORT_PROGRESS}: {e}"))?;
            Ok(Some((p.done, p.size)))
        }
    }
}

/// Writes the non-zero pieces of `file` (`size` bytes) from byte `from` on into the volume,
/// making them durable and recording the progress beside the volume every 256 MiB (so that an
/// interrupted import resumes there), and removes the record at the end. Returns the bytes
/// written.
pub async fn import_volume(
    volume: &S3Volume,
    file: &File,
    size: u64,
    from: u64,
    progress: Progress<'_>,
) -> Result<u64, String> {
    if size > volume.capacity() {
        return Err(format!("{size} bytes do not fit the volume's {}", volume.capacity()));
    }
    let done = std::sync::atomic::AtomicU64::new(from);
    let written = std::sync::atomic::AtomicU64::new(0);
    let all: Vec<(u64, u64)> = pieces(size).filter(|(offset, _)| *offset >= from).collect();
    for batch in all.chunks(CHECKPOINT_PIECES as usize) {
        futures::stream::iter(batch.iter().copied())
            .map(|(offset, len)| {
                let (done, written) = (&done, &written);
                async move {
                    let mut data = vec![0u8; len as usize];
                    file.read_exact_at(&mut data, offset).map_err(|e| format!("read at {offset}: {e}"))?;
                    if !is_zero(&data) {
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
        flush_while_the_store_keeps_up(volume).await?;
        let (last, len) = batch.last().copied().expect("a batch is not empty");
        let record = serde_json::to_vec(&ImportProgress { size, done: last + len }).expect("serializable");
        volume.write_aside(IMPORT_PROGRESS, Some(Bytes::from(record))).await.map_err(|e| e.to_string())?;
    }
    flush_while_the_store_keeps_up(volume).await?;
    volume.write_aside(IMPORT_PROGRESS, None).await.map_err(|e| e.to_string())?;
    Ok(written.into_inner())
}

/// Makes what was written durable, for as long as it takes while the store keeps up. A flush
/// answers NOT READY at the command deadline (20 s), which a checkpoint's 256 MiB outlasts on
/// a slow link (100 Mbit/s: 21 s); what it merged meanwhile stays merged, so the import tries
/// again while each attempt leaves less waiting than the one before.
async fn flush_while_the_store_keeps_up(volume: &S3Volume) -> Result<(), String> {
    let mut waiting = volume.unlogged_bytes();
    loop {
        let error = match volume.flush().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let now = volume.unlogged_bytes();
        if !matches!(error, StoreError::NotReady(_)) || now >= waiting {
            return Err(format!("cannot make the import durable: {error}"));
        }
        waiting = now;
        tracing::info!(volume = %volume.url(), waiting, "the store is slow: the import waits for it ({error})");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::clock::TokioClock;
    use crate::s3::MemObjectStore;
    use crate::s3::url::S3Url;
    use crate::s3::volume::{CreateSpec, VolumeOptions};

    const CHUNK: u64 = 64 * 1024;
    const SIZE: u64 = 40 * PIECE / 4; // 40 MiB: ten pieces
    /// Volumes of the tests: room for a few checkpoints.
    const VOLUME: u64 = 80 * PIECE;

    async fn open(mem: &Arc<MemObjectStore>, name: &str, size: u64) -> Arc<S3Volume> {
        let opts = VolumeOptions {
            create: Some(CreateSpec { size, block_size: 512, chunk_size: CHUNK }),
            holder: "t".into(),
            ..VolumeOptions::default()
        };
        let url = S3Url::parse(&format!("s3://bucket/{name}")).unwrap();
        S3Volume::open(mem.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap()
    }

    /// An import that stops (here: the file cannot be read past a point) leaves where it got to;
    /// resumed from there, the volume ends up whole.
    #[tokio::test]
    async fn an_interrupted_import_resumes_where_it_stopped() {
        let mem = Arc::new(MemObjectStore::new());
        let w = open(&mem, "c", VOLUME).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.img");
        let size = (CHECKPOINT_PIECES + 3) * PIECE;
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        file.set_len(size).unwrap();
        let mark = |at: u64| file.write_all_at(&at.to_be_bytes(), at).unwrap();
        for at in [0, PIECE, CHECKPOINT_PIECES * PIECE, size - PIECE] {
            mark(at);
        }
        // The file is cut short after the first checkpoint: reads past it fail.
        let short = File::options().read(true).write(true).create_new(true).open(dir.path().join("short.img")).unwrap();
        short.set_len(CHECKPOINT_PIECES * PIECE + 1).unwrap();
        short.write_all_at(&0u64.to_be_bytes(), 0).unwrap();
        short.write_all_at(&PIECE.to_be_bytes(), PIECE).unwrap();
        assert!(import_volume(&w, &short, size, 0, &|_, _| {}).await.is_err());
        assert_eq!(&w.read(PIECE, 512).await.unwrap()[..8], &PIECE.to_be_bytes(), "the first checkpoint's data");
        let (done, recorded) = import_progress(&w).await.unwrap().expect("progress kept");
        assert_eq!((done, recorded), (CHECKPOINT_PIECES * PIECE, size));
        import_volume(&w, &file, size, done, &|_, _| {}).await.unwrap();
        for at in [PIECE, CHECKPOINT_PIECES * PIECE, size - PIECE] {
            // Whole blocks: the volume reads and writes blocks.
            assert_eq!(&w.read(at, 512).await.unwrap()[..8], &at.to_be_bytes(), "at {at}");
        }
        assert_eq!(import_progress(&w).await.unwrap(), None);
    }

    /// An import into a store too slow to take a checkpoint's data within the command deadline
    /// (here 1 s, each request 200 ms away: 10 MiB of 64 KiB chunks) waits for it as long as the
    /// store keeps up, as a user importing over a slow link needs: a flush that runs out its
    /// deadline has still merged what it could. It used to fail with NOT READY.
    #[tokio::test(start_paused = true)]
    async fn an_import_waits_for_a_slow_store_while_it_keeps_up() {
        let mem = Arc::new(MemObjectStore::new());
        let opts = VolumeOptions {
            create: Some(CreateSpec { size: SIZE, block_size: 512, chunk_size: CHUNK }),
            holder: "t".into(),
            command_deadline: Duration::from_secs(1),
            ..VolumeOptions::default()
        };
        let url = S3Url::parse("s3://bucket/slow").unwrap();
        let v = S3Volume::open(mem.clone(), url, opts, Arc::new(TokioClock::new())).await.unwrap();
        mem.set_faults(crate::s3::mem::Faults { latency: Duration::from_millis(200), ..Default::default() });
        let dir = tempfile::tempdir().unwrap();
        let file = File::options().read(true).write(true).create_new(true).open(dir.path().join("img")).unwrap();
        let data: Vec<u8> = (0..10 << 20).map(|i: u32| (i % 251 + 1) as u8).collect();
        file.write_all_at(&data, 0).unwrap();
        let size = data.len() as u64;
        import_volume(&v, &file, size, 0, &|_, _| {}).await.expect("the import waits for the store");
        mem.set_faults(crate::s3::mem::Faults::default());
        assert_eq!(import_progress(&v).await.unwrap(), None);
        assert_eq!(v.unlogged_bytes(), 0);
        assert_eq!(v.read(0, size as usize).await.unwrap(), data);
    }

    /// A volume exported to a file and imported into another reads the same, and the file has
    /// holes where the volume has nothing.
    #[tokio::test]
    async fn export_then_import_round_trips_and_stays_sparse() {
        let mem = Arc::new(MemObjectStore::new());
        let v = open(&mem, "a", SIZE).await;
        let pattern =
            |at: u64, len: usize| Bytes::from((0..len).map(|i| ((at + i as u64) % 251 + 1) as u8).collect::<Vec<u8>>());
        v.write(0, pattern(0, 1 << 20), false).await.unwrap();
        v.write(SIZE - 4096, pattern(SIZE - 4096, 4096), true).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let file = File::options().read(true).write(true).create_new(true).open(&path).unwrap();
        let exported = export_volume(&*v, &file, &|_, _| {}).await.unwrap();
        assert!(exported < SIZE / 2, "only mapped pieces are read: {exported}");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), SIZE);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < SIZE / 2, "the file is sparse");
        let w = open(&mem, "b", SIZE).await;
        let written = import_volume(&w, &file, SIZE, 0, &|_, _| {}).await.unwrap();
        assert!(written < SIZE / 2, "zero pieces are not written: {written}");
        assert_eq!(import_progress(&w).await.unwrap(), None, "a finished import leaves no record");
        for (at, len) in [(0, 1 << 20), (SIZE - 4096, 4096), (20 << 20, 4096)] {
            assert_eq!(w.read(at, len).await.unwrap(), v.read(at, len).await.unwrap(), "at {at}");
        }
    }
}
