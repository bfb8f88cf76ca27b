//! Compression of a compressed volume's chunk objects: an object store over the real one (and
//! over the sealing of an encrypted volume: data is compressed before it is encrypted) that
//! compresses the chunks the volume puts and decompresses the chunks it gets, so the rest of
//! the volume sees whole chunks.
//!
//! A chunk is compressed segment by segment (the CRC segments of [`format::segment_size`]),
//! so a ranged read fetches and decompresses only the segments it covers. A compressed chunk
//! object is a header and the segments' payloads, in order:
//!
//! ```text
//! "RTZ1" | codec u8 | 0 u8 x3 | segment bytes u32 | plain length u64 | segments u32
//!        | per segment: stored length u32 (high bit: stored as is, compression did not help)
//!        | payloads
//! ```
//!
//! (big-endian). A ranged read needs the header first: one GET of its largest possible length,
//! then one of the segments; headers of chunks written or read before are remembered (chunk
//! versions are immutable, so a remembered header never goes stale). A segment decompresses to
//! at most its own length, whatever the object says: a hostile or damaged object costs no more
//! memory than a plain one. Logs, tombstones (empty chunk objects) and the volume's other
//! objects are stored as they are.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::format::{self, CHUNKS_DIR};
use crate::s3::{Condition, DeleteResults, GetOutput, ListPage, ObjResult, ObjectError, ObjectMeta, ObjectStore};
use crate::storage::BoxFuture;

/// How a volume's chunks are compressed, chosen when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd at level 3: about half the size of lz4's output on text, at a few times its CPU.
    Zstd,
    /// LZ4: the fastest, where CPU matters more than stored bytes.
    Lz4,
}

impl Compression {
    fn code(self) -> u8 {
        match self {
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    /// `plain` compressed; None if that saves nothing.
    fn compress(self, plain: &[u8]) -> Option<Vec<u8>> {
        let packed = match self {
            Compression::Zstd => ZSTD_COMPRESSOR.with_borrow_mut(|c| {
                let c = match c {
                    Some(c) => c,
                    None => c.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).ok()?),
                };
                c.compress(plain).ok()
            })?,
            Compression::Lz4 => lz4_flex::block::compress(plain),
        };
        (packed.len() < plain.len()).then_some(packed)
    }

    /// Decompresses a segment of exactly `len` plain bytes.
    fn decompress(self, packed: &[u8], len: usize) -> Result<Vec<u8>, String> {
        let plain = match self {
            Compression::Zstd => ZSTD_DECOMPRESSOR.with_borrow_mut(|d| {
                let d = match d {
                    Some(d) => d,
                    None => d.insert(zstd::bulk::Decompressor::new().map_err(|e| e.to_string())?),
                };
                d.decompress(packed, len).map_err(|e| e.to_string())
            })?,
            Compression::Lz4 => lz4_flex::block::decompress(packed, len).map_err(|e| e.to_string())?,
        };
        match plain.len() == len {
            true => Ok(plain),
            false => Err(format!("{} plain bytes where {len} were written", plain.len())),
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

const ZSTD_LEVEL: i32 = 3;

thread_local! {
    // A zstd context costs an allocation of hundreds of KiB and its clearing: one per thread,
    // not one per segment.
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static ZSTD_DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}
const MAGIC: &[u8; 4] = b"RTZ1";
/// Header bytes before the table of stored lengths.
const FIXED: usize = 24;
/// A stored length's flag: the segment is stored as is.
const STORED_AS_IS: u32 = 1 << 31;
/// Headers remembered (a few hundred bytes each).
const HEADERS_KEPT: usize = 8192;

/// A compressed chunk object's header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    codec: u8,
    segment: u64,
    plain_len: u64,
    /// Per segment: where its payload starts in the object, its stored length, and whether it
    /// is stored as is.
    payloads: Vec<(u64, u32, bool)>,
}

impl Header {
    fn len_for(segments: usize) -> usize {
        FIXED + 4 * segments
    }

    fn parse(bytes: &[u8]) -> Result<Header, String> {
        if bytes.len() < FIXED || &bytes[..4] != MAGIC {
            return Err("not a compressed chunk".into());
        }
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let codec = bytes[4];
        let segment = u32_at(8) as u64;
        let plain_len = u64::from_be_bytes(bytes[12..20].try_into().expect("8 bytes"));
        let count = u32_at(20) as usize;
        if segment == 0 || plain_len.div_ceil(segment) != count as u64 || bytes.len() < Header::len_for(count) {
            return Err(format!("a damaged header ({count} segments of {segment} bytes for {plain_len})"));
        }
        let mut at = Header::len_for(count) as u64;
        let mut payloads = Vec::with_capacity(count);
        for i in 0..count {
            let word = u32_at(FIXED + 4 * i);
            let (len, as_is) = (word & !STORED_AS_IS, word & STORED_AS_IS != 0);
            payloads.push((at, len, as_is));
            at += len as u64;
        }
        Ok(Header { codec, segment, plain_len, payloads })
    }

    /// The plain length of segment `i`.
    fn plain_of(&self, i: usize) -> usize {
        self.segment.min(self.plain_len - i as u64 * self.segment) as usize
    }

    /// The stored bytes of segments `first..=last`.
    fn stored(&self, first: usize, last: usize) -> Range<u64> {
        let (end_at, end_len, _) = self.payloads[last];
        self.payloads[first].0..end_at + end_len as u64
    }
}

/// `plain` as a compressed chunk object of `segment`-byte segments, and its header.
fn compress_object(codec: Compression, plain: &[u8], segment: u64) -> (Bytes, Header) {
    let pieces: Vec<(Option<Vec<u8>>, &[u8])> =
        plain.chunks(segment as usize).map(|piece| (codec.compress(piece), piece)).collect();
    let head_len = Header::len_for(pieces.len());
    let stored: usize = pieces.iter().map(|(packed, piece)| packed.as_ref().map_or(piece.len(), Vec::len)).sum();
    let mut out = BytesMut::with_capacity(head_len + stored);
    out.put_slice(MAGIC);
    out.put_u8(codec.code());
    out.put_slice(&[0; 3]);
    out.put_u32(segment as u32);
    out.put_u64(plain.len() as u64);
    out.put_u32(pieces.len() as u32);
    for (packed, piece) in &pieces {
        match packed {
            Some(p) => out.put_u32(p.len() as u32),
            None => out.put_u32(piece.len() as u32 | STORED_AS_IS),
        }
    }
    for (packed, piece) in &pieces {
        out.put_slice(packed.as_deref().unwrap_or(piece));
    }
    let out = out.freeze();
    let header = Header::parse(&out[..head_len]).expect("a header just written parses");
    (out, header)
}

/// An object store that compresses the chunk objects of one volume (and of the volumes a clone
/// reads through to, which share its compression).
pub struct CompressedStore {
    inner: Arc<dyn ObjectStore>,
    chunks: ChunkCodec,
    /// The longest header a chunk of this volume has.
    header_max: u64,
    volumes: Vec<String>,
    headers: Mutex<Headers>,
}

/// How one volume's chunk objects are compressed: its codec and geometry, which bound what an
/// object may claim.
#[derive(Debug, Clone, Copy)]
pub struct ChunkCodec {
    codec: Compression,
    segment: u64,
    chunk_size: u64,
}

impl ChunkCodec {
    pub fn new(codec: Compression, chunk_size: u64) -> ChunkCodec {
        ChunkCodec { codec, segment: format::segment_size(chunk_size), chunk_size }
    }

    /// Parses a header and checks it against the volume's geometry (which bounds what a
    /// segment may decompress to).
    fn header(&self, key: &str, bytes: &[u8]) -> ObjResult<Header> {
        let header = Header::parse(bytes).map_err(|e| damaged(key, e))?;
        // An empty chunk (a tombstone) is never compressed: a header holds one segment at least.
        if header.segment != self.segment || header.plain_len > self.chunk_size || header.plain_len == 0 {
            return Err(damaged(
                key,
                format!("{} bytes in segments of {}: not a chunk of this volume", header.plain_len, header.segment),
            ));
        }
        Ok(header)
    }

    /// Decompresses segments `first..` whose stored bytes are `stored`.
    fn decompress(&self, key: &str, header: &Header, first: usize, stored: &[u8]) -> ObjResult<Vec<u8>> {
        if header.codec != self.codec.code() {
            return Err(damaged(key, format!("compressed by codec {}, not {}", header.codec, self.codec)));
        }
        let base = header.payloads[first].0;
        let mut plain = Vec::with_capacity(stored.len().max(self.segment as usize));
        for (i, &(at, len, as_is)) in header.payloads.iter().enumerate().skip(first) {
            let from = (at - base) as usize;
            if from >= stored.len() {
                break;
            }
            let Some(payload) = stored.get(from..from + len as usize) else {
                return Err(damaged(key, format!("segment {i} is cut short")));
            };
            let want = header.plain_of(i);
            match as_is {
                true if payload.len() == want => plain.extend_from_slice(payload),
                true => return Err(damaged(key, format!("segment {i} has the wrong length"))),
                false => plain.extend(
                    self.codec.decompress(payload, want).map_err(|e| damaged(key, format!("segment {i}: {e}")))?,
                ),
            }
        }
        Ok(plain)
    }

    /// The plain bytes of a whole chunk object (an empty one, a tombstone, is empty), and its
    /// header.
    pub fn decompress_whole(&self, key: &str, body: &[u8]) -> ObjResult<Vec<u8>> {
        self.whole(key, body).map(|(plain, _)| plain)
    }

    fn whole(&self, key: &str, body: &[u8]) -> ObjResult<(Vec<u8>, Option<Header>)> {
        if body.is_empty() {
            return Ok((Vec::new(), None));
        }
        let header = self.header(key, body)?;
        let head_len = Header::len_for(header.payloads.len());
        let plain = self.decompress(key, &header, 0, &body[head_len..])?;
        match plain.len() as u64 == header.plain_len {
            true => Ok((plain, Some(header))),
            false => Err(damaged(key, "fewer segments than its length says")),
        }
    }
}

fn damaged(key: &str, why: impl std::fmt::Display) -> ObjectError {
    ObjectError::failed(format!("{key}: {why}"))
}

/// Headers of chunk objects seen, the oldest forgotten first.
#[derive(Default)]
struct Headers {
    by_key: HashMap<String, Arc<Header>>,
    order: VecDeque<String>,
}

impl Headers {
    fn insert(&mut self, key: String, header: Arc<Header>) {
        if self.by_key.insert(key.clone(), header).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > HEADERS_KEPT {
            let oldest = self.order.pop_front().expect("longer than the limit");
            self.by_key.remove(&oldest);
        }
    }
}

impl CompressedStore {
    /// A compressed store over the volumes whose key prefixes are `volumes`, of chunks of
    /// `chunk_size` bytes.
    pub fn over(
        inner: Arc<dyn ObjectStore>,
        volumes: Vec<String>,
        codec: Compression,
        chunk_size: u64,
    ) -> CompressedStore {
        let chunks = ChunkCodec::new(codec, chunk_size);
        let header_max = Header::len_for(chunk_size.div_ceil(chunks.segment) as usize) as u64;
        CompressedStore { inner, chunks, header_max, volumes, headers: Mutex::default() }
    }

    fn is_chunk(&self, key: &str) -> bool {
        self.volumes.iter().filter_map(|v| key.strip_prefix(v.as_str())).any(|name| name.starts_with(CHUNKS_DIR))
    }

    fn known_header(&self, key: &str) -> Option<Arc<Header>> {
        self.headers.lock().expect("poisoned").by_key.get(key).cloned()
    }

    fn remember(&self, key: &str, header: Arc<Header>) {
        self.headers.lock().expect("poisoned").insert(key.to_string(), header);
    }

    async fn get_whole(&self, key: &str) -> ObjResult<GetOutput> {
        let mut out = self.inner.get(key, None).await?;
        if let (plain, Some(header)) = self.chunks.whole(key, &out.body)? {
            out.meta.size = header.plain_len;
            out.body = Bytes::from(plain);
            self.remember(key, Arc::new(header));
        }
        Ok(out)
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> ObjResult<GetOutput> {
        let header = match self.known_header(key) {
            Some(h) => h,
            None => {
                let head = self.inner.get(key, Some(0..self.header_max)).await?;
                let header = Arc::new(self.chunks.header(key, &head.body)?);
                self.remember(key, header.clone());
                header
            }
        };
        if range.start >= header.plain_len || range.end <= range.start {
            return Err(ObjectError::RangeNotSatisfiable);
        }
        let first = (range.start / header.segment) as usize;
        let last = ((range.end.min(header.plain_len) - 1) / header.segment) as usize;
        let mut out = self.inner.get(key, Some(header.stored(first, last))).await?;
        let plain = self.chunks.decompress(key, &header, first, &out.body)?;
        let from = (range.start - first as u64 * header.segment) as usize;
        let to = (range.end.min(header.plain_len) - first as u64 * header.segment) as usize;
        if to > plain.len() {
            return Err(damaged(key, "fewer segments than its header says"));
        }
        out.meta.size = header.plain_len;
        out.body = Bytes::from(plain).slice(from..to);
        Ok(out)
    }
}

impl ObjectStore for CompressedStore {
    fn describe(&self) -> String {
        format!("{} ({}-compressed)", self.inner.describe(), self.chunks.codec)
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(async move {
            match (self.is_chunk(&key), range) {
                (false, range) => self.inner.get(&key, range).await,
                (true, None) => self.get_whole(&key).await,
                (true, Some(range)) => self.get_range(&key, range).await,
            }
        })
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move {
            if !self.is_chunk(&key) || body.is_empty() {
                return self.inner.put(&key, body, metadata, condition).await;
            }
            let (stored, header) = compress_object(self.chunks.codec, &body, self.chunks.segment);
            let etag = self.inner.put(&key, stored, metadata, condition).await?;
            self.remember(&key, Arc::new(header));
            Ok(etag)
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        self.inner.delete(key)
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        self.inner.delete_many(keys)
    }

    /// Listed sizes are stored sizes: a compressed volume does not check chunk sizes by them.
    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        self.inner.list(prefix, continuation)
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        self.inner.head(key)
    }
}

#[cfg(test)]
#[path = "compression_tests.rs"]
mod tests;
