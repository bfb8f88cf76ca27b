//! A snapshot, read only: a block store over the chunk versions its manifest names (`rtgt
//! volume export s3://b/v@snap`, and a LUN that serves a snapshot). The versions never change,
//! so nothing is cached and no lease is taken; a version that is missing or damaged is a read
//! error, never zeros.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::format::{self, CreateSpec};
use super::keys::KeySource;
use super::manifest::{Manifest, SnapshotName};
use super::{OpenError, S3Volume};
use crate::s3::url::S3Url;
use crate::s3::{ObjectError, ObjectStore, Resilient, RetryPolicy};
use crate::storage::{BlockStore, BoxFuture, Extent, StoreCaps, StoreError, StoreResult};

/// Chunk reads in flight at once for one read.
const PARALLEL: usize = 8;

pub struct SnapshotView {
    store: Arc<dyn ObjectStore>,
    url: S3Url,
    manifest: Manifest,
    spec: CreateSpec,
    segment: u64,
}

impl SnapshotView {
    /// Opens snapshot `name` of the volume at `url`; `key` opens an encrypted volume.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        url: &S3Url,
        name: &SnapshotName,
        key: Option<&KeySource>,
    ) -> Result<SnapshotView, OpenError> {
        let store: Arc<dyn ObjectStore> = Arc::new(Resilient::new(store, RetryPolicy::default(), 0x5ee));
        let (meta, _) = S3Volume::read_meta(&*store, url)
            .await
            .map_err(OpenError::Unavailable)?
            .ok_or_else(|| OpenError::Refused(format!("no volume at {url}")))?;
        let got = match store.get(&Manifest::key(url, name), None).await {
            Ok(got) => got,
            Err(ObjectError::NotFound) => {
                return Err(OpenError::Refused(format!("{url} has no snapshot named {name}")));
            }
            Err(e) => return Err(OpenError::Unavailable(format!("cannot read snapshot {name} of {url}: {e}"))),
        };
        let manifest = Manifest::parse(&got.body, &got.meta.metadata, &meta.uuid)
            .map_err(|e| OpenError::Refused(format!("snapshot {name} of {url}: {e}")))?;
        let store = S3Volume::data_objects(store, url, manifest.ancestors(), &meta, key)?.store;
        let spec = CreateSpec { size: manifest.size, ..meta.spec() };
        Ok(SnapshotView { store, url: url.clone(), manifest, spec, segment: format::segment_size(meta.chunk_size) })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn chunk_len(&self, c: u64) -> u64 {
        self.spec.chunk_size.min(self.spec.size - c * self.spec.chunk_size)
    }

    /// Bytes `[within, within + len)` of chunk `c`: from the version the manifest names, or
    /// zeros.
    async fn read_chunk(&self, c: u64, within: u64, len: u64) -> StoreResult<Bytes> {
        let Some(key) = self.manifest.chunk_key(&self.url.key(""), c) else {
            return Ok(Bytes::from(vec![0u8; len as usize]));
        };
        let chunk_len = self.chunk_len(c);
        let from = within / self.segment * self.segment;
        let to = (within + len).div_ceil(self.segment).saturating_mul(self.segment).min(chunk_len);
        let failed = |why: String| StoreError::Read(format!("chunk {c} of snapshot {}: {why}", self.manifest.name));
        let got = match self.store.get(&key, Some(from..to)).await {
            Ok(got) => got,
            Err(ObjectError::NotFound) => return Err(failed("its version is missing".into())),
            Err(e) => return Err(super::store_err(e, false)),
        };
        format::verify_segments(&got, chunk_len, from..to, self.segment).map_err(failed)?;
        Ok(got.body.slice((within - from) as usize..(within - from + len) as usize))
    }

    async fn read_impl(&self, offset: u64, len: usize) -> StoreResult<Bytes> {
        let end = offset + len as u64;
        if end > self.spec.size {
            return Err(StoreError::Read(format!("read beyond the snapshot's {} bytes", self.spec.size)));
        }
        let chunk = self.spec.chunk_size;
        let pieces = (offset / chunk..end.div_ceil(chunk)).map(|c| {
            let start = (c * chunk).max(offset);
            let stop = ((c + 1) * chunk).min(end);
            (c, start - c * chunk, stop - start)
        });
        let parts: Vec<Bytes> = futures::stream::iter(pieces)
            .map(|(c, within, n)| self.read_chunk(c, within, n))
            .buffered(PARALLEL)
            .try_collect()
            .await?;
        Ok(Bytes::from(parts.concat()))
    }
}

fn read_only() -> StoreError {
    StoreError::Write("a snapshot is read-only".into())
}

impl BlockStore for SnapshotView {
    fn describe(&self) -> String {
        format!("s3:{}@{} (snapshot, read-only)", self.url, self.manifest.name)
    }

    fn capacity(&self) -> u64 {
        self.spec.size
    }

    fn formatted_block_size(&self) -> Option<u32> {
        Some(self.spec.block_size)
    }

    fn caps(&self) -> StoreCaps {
        StoreCaps {
            thin: true,
            volatile_cache: false,
            unmap_granularity: self.spec.chunk_size,
            optimal_transfer: self.spec.chunk_size,
            atomic_write_max: 0,
        }
    }

    fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, StoreResult<Bytes>> {
        Box::pin(self.read_impl(offset, len))
    }

    fn write(&self, _offset: u64, _data: Bytes, _fua: bool) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Err(read_only()) })
    }

    fn flush(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Ok(()) })
    }

    fn unmap(&self, _offset: u64, _len: u64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async { Err(read_only()) })
    }

    fn mapped_extents(&self, offset: u64, len: u64) -> BoxFuture<'_, StoreResult<Vec<Extent>>> {
        let chunk = self.spec.chunk_size;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        let mut at = offset;
        while at < end {
            let c = at / chunk;
            let stop = ((c + 1) * chunk).min(end);
            let mapped = self.manifest.chunks.contains_key(&c) || self.manifest.inherited.contains_key(&c);
            match out.last_mut() {
                Some(last) if last.mapped == mapped => last.len += stop - at,
                _ => out.push(Extent { offset: at, len: stop - at, mapped }),
            }
            at = stop;
        }
        Box::pin(async move { Ok(out) })
    }
}
