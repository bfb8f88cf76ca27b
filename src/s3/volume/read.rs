//! Reads, and the read cache: what a read fetches from a chunk object stays in the cache as
//! clean blocks (whole CRC segments, since they were fetched anyway), and a sequential stream
//! fetches the next chunks ahead. The one hazard of keeping fetched data is keeping it stale:
//! a GET that read a chunk object before a merge or a delete replaced it, and answered after.
//! Every mutation of a chunk object happens with the chunk claimed, and a claim (taken and
//! released) bumps the chunk's change stamp; fetched data is kept only if the stamp read when
//! the fetch was planned is unchanged and the chunk is not claimed when it lands, so no
//! mutation overlapped the GET. Blocks the cache already holds are never overwritten: the cache
//! holds their newest contents.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use super::cache::{Cache, Entry, PAGE};
use super::{ChunkPiece, S3Volume, format, store_err};
use crate::s3::ObjectError;
use crate::storage::{StoreError, StoreResult};

/// A sequential stream reads this far ahead, and at most a quarter of the cache (more would
/// evict what it fetched before it is read).
const READAHEAD_BYTES: u64 = 64 << 20;
/// Readahead fetches pieces of this size (ranged GETs of whole segments): many requests in
/// parallel fill a link with a long round trip sooner than a few big ones.
pub(super) const READAHEAD_PIECE: u64 = 1 << 20;
/// Readahead GETs in flight at once, per volume (each holds one piece's buffer).
pub(super) const READAHEAD_PARALLEL: usize = 32;
/// Reads ending where a new read starts make a stream: the ends of this many recent reads are
/// remembered (several streams, or one stream read at a queue depth above one).
const STREAM_ENDS: usize = 16;

/// A piece of a read that the cache does not hold.
struct Fetch {
    chunk: u64,
    /// Byte range within the chunk.
    from: u64,
    to: u64,
    /// Where it goes in the command's buffer.
    dst: usize,
    /// The chunk's change stamp when the fetch was planned.
    stamp: u64,
}

/// Verified bytes of a chunk object: `data` starts `at` bytes into the chunk (whole segments
/// from the store; whole 16 KiB units from the disk cache).
pub(super) struct Fetched {
    pub(super) at: u64,
    pub(super) data: Bytes,
    /// The entity tag of the object version they are from, if known.
    pub(super) version: Option<String>,
}

impl S3Volume {
    pub(super) async fn read_impl(&self, offset: u64, len: usize) -> StoreResult<Bytes> {
        self.whole_blocks(offset, len as u64).map_err(StoreError::Read)?;
        // In a failover pair, a read waits for a valid lease like any command. Elsewhere reads
        // are not held back: a volume taken over fails, and its supervisor replaces it.
        if !self.serves_lapsed() {
            self.may_serve("a read").await?;
        }
        let mut out = BytesMut::zeroed(len);
        self.wait_for_readahead(offset, len as u64).await;
        let (fetches, ahead) = {
            let mut cache = self.cache();
            let fetches = self.copy_cached(&mut cache, offset, &mut out);
            let ahead = self.plan_readahead(&mut cache, offset, len as u64);
            (fetches, ahead)
        };
        self.start_readahead(ahead);
        let fetched_bytes: u64 = fetches.iter().map(|f| f.to - f.from).sum();
        self.stats.read_bytes_cached.fetch_add(len as u64 - fetched_bytes, Ordering::Relaxed);
        self.stats.read_bytes_fetched.fetch_add(fetched_bytes, Ordering::Relaxed);
        // The pieces of one command are fetched at once, each waiting out a store that is away.
        let fetched =
            futures::future::join_all(fetches.iter().map(|f| self.patiently("a read", move || self.fetch_piece(f))))
                .await;
        for (f, got) in fetches.iter().zip(fetched) {
            if let Some(got) = got? {
                let data = &got.data[(f.from - got.at) as usize..(f.to - got.at) as usize];
                out[f.dst..f.dst + data.len()].copy_from_slice(data);
                self.keep_fetched(f.chunk, &got, f.stamp);
            }
        }
        Ok(out.freeze())
    }

    /// Waits (a while at most) for the readahead of pieces `[offset, offset + len)` overlaps,
    /// so that a stream reads what readahead fetched rather than fetching it a second time.
    async fn wait_for_readahead(&self, offset: u64, len: u64) {
        let piece = self.readahead_piece();
        let overlapping = offset.saturating_sub(piece - 1)..offset + len;
        let deadline = self.clock.now() + self.opts.command_deadline / 4;
        loop {
            let released = self.released.notified();
            if self.cache().reading_ahead.range(overlapping.clone()).next().is_none() {
                return;
            }
            tokio::select! {
                _ = released => {}
                _ = self.clock.sleep_until(deadline) => return,
            }
        }
    }

    /// Copies what the cache holds of `[offset, offset + out.len())` into `out`; returns the
    /// pieces to fetch. What neither the cache nor an object holds stays zero.
    fn copy_cached(&self, cache: &mut Cache, offset: u64, out: &mut [u8]) -> Vec<Fetch> {
        let bs = self.block_size;
        let mut fetches = Vec::new();
        cache.tick += 1;
        let tick = cache.tick;
        for ChunkPiece { chunk: c, within, len: n, pos } in self.chunk_pieces(offset, out.len() as u64) {
            let exists = cache.exists.contains(&c);
            let stamp = cache.change_stamp(c);
            match cache.entries.get_mut(&c) {
                None if exists => fetches.push(Fetch { chunk: c, from: within, to: within + n, dst: pos, stamp }),
                None => {}
                Some(e) => {
                    e.last_used = tick;
                    // Runs of blocks: cached ones are copied, the others fetched or zero.
                    let mut b = within / bs;
                    let last = (within + n) / bs;
                    while b < last {
                        let valid = e.valid.get(b as usize);
                        let mut run_end = b + 1;
                        while run_end < last && e.valid.get(run_end as usize) == valid {
                            run_end += 1;
                        }
                        let (from, to) = (b * bs, run_end * bs);
                        let dst = pos + (from - within) as usize;
                        if valid {
                            e.copy_out(from as usize, &mut out[dst..dst + (to - from) as usize]);
                        } else if exists {
                            fetches.push(Fetch { chunk: c, from, to, dst, stamp });
                        }
                        b = run_end;
                    }
                }
            }
        }
        fetches
    }

    /// A piece from the store (whole segments around it); None: zeros.
    async fn fetch_piece(&self, f: &Fetch) -> StoreResult<Option<Fetched>> {
        let c = f.chunk;
        match self.fetch_segments(c, f.from, f.to).await {
            Ok(got) => Ok(Some(got)),
            Err(ObjectError::NotFound) => {
                let cache = self.cache();
                // A chunk deleted while the read was under way (UNMAP, or a merge that found
                // it zero: zeros either way), or a PUT that never landed: zeros. Missing
                // otherwise.
                let deleted_meanwhile = cache.change_stamp(c) != f.stamp || cache.inflight.contains(&c);
                match deleted_meanwhile || !cache.known.contains(&c) {
                    true => Ok(None),
                    false => Err(StoreError::Read(format!("chunk {c} of {} is missing", self.url))),
                }
            }
            Err(e) => Err(store_err(e, false)),
        }
    }

    /// Fetches `[from, to)` of chunk `c`, verified.
    pub(super) async fn fetch(&self, c: u64, from: u64, to: u64) -> Result<Bytes, ObjectError> {
        let got = self.fetch_segments(c, from, to).await?;
        Ok(got.data.slice((from - got.at) as usize..(to - got.at) as usize))
    }

    /// Fetches the CRC segments of chunk `c` that cover `[from, to)`, verified: from the disk
    /// cache if it holds them for the chunk's current version, from the store otherwise (and
    /// then into the disk cache).
    async fn fetch_segments(&self, c: u64, from: u64, to: u64) -> Result<Fetched, ObjectError> {
        let chunk_len = self.chunk_len(c);
        let seg_from = from / self.segment * self.segment;
        let seg_to = to.div_ceil(self.segment).saturating_mul(self.segment).min(chunk_len);
        let disk = self.disk.get();
        if let Some(disk) = disk {
            let version = self.cache().versions.get(&c).cloned();
            if let Some(version) = version
                && let Some((at, data)) = disk.get(c, &version, from, to).await
            {
                self.stats.read_bytes_disk.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Ok(Fetched { at, data, version: Some(version) });
            }
        }
        let got = self.fetch_from_store(c, seg_from, seg_to).await?;
        if let (Some(disk), Some(version)) = (disk, &got.version) {
            disk.keep(c, version.clone(), got.at, got.data.clone());
        }
        Ok(got)
    }

    /// GETs (part of) the object that holds chunk `c` now. A version superseded and swept
    /// while the GET was on its way is gone: then the newer one is read.
    async fn get_chunk(
        &self,
        c: u64,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<crate::s3::GetOutput, ObjectError> {
        let mut key = self.chunk_key_now(&self.cache(), c).ok_or(ObjectError::NotFound)?;
        loop {
            match self.store.get(&key, range.clone()).await {
                Err(ObjectError::NotFound) => match self.chunk_key_now(&self.cache(), c) {
                    Some(now) if now != key => key = now,
                    _ => return Err(ObjectError::NotFound),
                },
                got => return got,
            }
        }
    }

    /// Fetches whole segments `[seg_from, seg_to)` of chunk `c` from the store, and verifies
    /// them.
    async fn fetch_from_store(&self, c: u64, seg_from: u64, seg_to: u64) -> Result<Fetched, ObjectError> {
        let chunk_len = self.chunk_len(c);
        let whole = seg_from == 0 && seg_to == chunk_len;
        let range = if whole { None } else { Some(seg_from..seg_to) };
        let out = self.get_chunk(c, range).await?;
        format::verify_segments(&out, chunk_len, seg_from..seg_to, self.segment)
            .map_err(|why| ObjectError::failed(format!("chunk {c} of {}: {why}", self.url)))?;
        let version = out.meta.etag.as_deref().map(super::disk_cache::version_of);
        Ok(Fetched { at: seg_from, data: out.body, version })
    }

    /// Keeps fetched blocks of chunk `c` in the cache, as clean blocks, if no mutation of the
    /// chunk's object overlapped the fetch (its change stamp is still `stamp` and no claim is
    /// held) and they fit without evicting anything dirty. Blocks the cache holds stay.
    pub(super) fn keep_fetched(&self, c: u64, got: &Fetched, stamp: u64) {
        let mut cache = self.cache();
        let unchanged = cache.change_stamp(c) == stamp && !cache.inflight.contains(&c);
        if !unchanged && !crate::mutants::active(crate::mutants::Mutant::ReadCacheKeepsStale) {
            return;
        }
        // No mutation overlapped the GET: the version it read is the chunk's current one.
        if let Some(version) = &got.version {
            cache.versions.insert(c, version.clone());
        }
        let need = (got.data.len() as u64).div_ceil(PAGE as u64) * PAGE as u64 + PAGE as u64;
        if cache.page_bytes + need > self.cache_limit {
            self.evict_clean(&mut cache, need);
            if cache.page_bytes + need > self.cache_limit {
                return;
            }
        }
        cache.tick += 1;
        let tick = cache.tick;
        let bs = self.block_size as usize;
        let n = self.blocks_per_chunk();
        let first = got.at as usize / bs;
        let e = cache.entries.entry(c).or_insert_with(Entry::empty);
        e.last_used = tick;
        let mut allocated = 0;
        let blocks = got.data.len() / bs;
        let mut b = 0;
        while b < blocks {
            if e.valid.get(first + b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < blocks && !e.valid.get(first + b) {
                b += 1;
            }
            allocated += e.copy_in((first + start) * bs, &got.data[start * bs..b * bs]);
            e.valid.set_range(first + start, first + b, n);
        }
        cache.page_bytes += (allocated * PAGE) as u64;
        self.note_cache(&cache);
    }

    /// The unit of readahead: whole segments, at most [`READAHEAD_PIECE`] unless a segment is
    /// bigger, never more than a chunk.
    fn readahead_piece(&self) -> u64 {
        READAHEAD_PIECE.min(self.chunk_size).max(self.segment)
    }

    /// Notes where this read ends; if it continues a stream, claims for readahead the pieces
    /// after it (up to [`READAHEAD_BYTES`] ahead) of chunks that exist, that the cache does not
    /// hold and no readahead fetches yet. Returns their volume offsets.
    fn plan_readahead(&self, cache: &mut Cache, offset: u64, len: u64) -> Vec<u64> {
        let end = offset + len;
        let sequential = offset > 0 && cache.stream_ends.contains(&offset);
        if cache.stream_ends.len() == STREAM_ENDS {
            cache.stream_ends.pop_front();
        }
        cache.stream_ends.push_back(end);
        if !sequential || len == 0 {
            return Vec::new();
        }
        let piece = self.readahead_piece();
        let window = READAHEAD_BYTES.min(self.cache_limit / 4).max(piece);
        let capacity = self.capacity.load(Ordering::Relaxed);
        let first = end.div_ceil(piece) * piece;
        let wanted: Vec<u64> = (first..(end + window).min(capacity))
            .step_by(piece as usize)
            .filter(|&at| !cache.reading_ahead.contains(&at) && self.worth_reading_ahead(cache, at, piece))
            .collect();
        cache.reading_ahead.extend(wanted.iter().copied());
        wanted
    }

    /// Whether the piece at `at` is in a chunk that exists and has blocks the cache lacks.
    fn worth_reading_ahead(&self, cache: &Cache, at: u64, piece: u64) -> bool {
        let c = at / self.chunk_size;
        if !cache.exists.contains(&c) {
            return false;
        }
        let Some(e) = cache.entries.get(&c) else { return true };
        let within = at % self.chunk_size;
        let (b0, b1) = (within / self.block_size, (within + piece).min(self.chunk_len(c)) / self.block_size);
        !(b0..b1).all(|b| e.valid.get(b as usize))
    }

    /// Fetches the pieces at `offsets` into the cache in the background, a few at a time.
    fn start_readahead(&self, offsets: Vec<u64>) {
        if offsets.is_empty() {
            return;
        }
        let Some(me) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            let all = offsets.iter().map(|&at| me.read_ahead(at));
            futures::future::join_all(all).await;
        });
    }

    /// Fetches the piece at volume offset `at` into the cache (speculative: failures are only
    /// logged; a read that needs the data fetches it itself).
    async fn read_ahead(self: &Arc<Self>, at: u64) {
        let _slot = self.readahead_slots.acquire().await.expect("never closed");
        let c = at / self.chunk_size;
        let from = at % self.chunk_size;
        let to = (from + self.readahead_piece()).min(self.chunk_len(c));
        let stamp = self.cache().change_stamp(c);
        let _buffers = self.buffers(to - from);
        match self.fetch_segments(c, from, to).await {
            Ok(got) => {
                self.stats.readahead_bytes.fetch_add(to - from, Ordering::Relaxed);
                self.keep_fetched(c, &got, stamp);
            }
            Err(e) => tracing::debug!(volume = %self.url, chunk = c, error = %e, "readahead failed"),
        }
        self.cache().reading_ahead.remove(&at);
        self.released.notify_waiters();
    }
}
