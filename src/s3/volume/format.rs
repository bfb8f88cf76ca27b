//! The volume's format on the object store: object names, the metadata object, chunk
//! checksums and stamps, and the log encoding. Pure: no I/O, no clocks, so the parsers can be
//! fuzzed and every rule here is checked by unit tests.
//!
//! Layout under `s3://bucket/prefix/`:
//! * `rtgt-volume.json`: [`VolumeMeta`], created with `If-None-Match: *`.
//! * `rtgt-lease.json`: the single-writer lease (see `lease.rs`).
//! * `chunks/<index, 16 hex digits>/<version, 16 hex digits>` (format 3): the versions of a
//!   chunk holding non-zero data, each written once and never overwritten; the newest is the
//!   chunk's data, older ones are garbage (see `chunk_map.rs`). Formats 1 and 2 keep one object
//!   per chunk, `chunks/<index>`, overwritten in place. Either way a chunk object has the
//!   CRC32C of each segment ([`CRC_METADATA`]) and the log sequence number it includes
//!   ([`SEQ_METADATA`]) in its metadata, and a missing chunk reads as zeros.
//! * `log/<seq, 16 hex digits>`: [`Record`]s of writes and zeroed ranges made durable by a
//!   SYNCHRONIZE CACHE (or FUA, or age) before their chunks are rewritten ("merged").

use std::collections::BTreeMap;

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::s3::url::S3Url;

/// The first format: one object per chunk, overwritten in place; plaintext. Read, not written.
pub const FLAT_FORMAT_VERSION: u32 = 1;
/// Format 1 encrypted: its chunks and logs are sealed (`sealing.rs`), which an rtgt that knows
/// only format 1 must not read as plaintext. Read, not written.
pub const ENCRYPTED_FORMAT_VERSION: u32 = 2;
/// The format this rtgt writes: chunk objects are immutable versions (encrypted or not, as
/// [`VolumeMeta::encryption`] says), which an rtgt that knows only formats 1 and 2 would
/// not find (it would read zeros).
pub const FORMAT_VERSION: u32 = 3;
/// Format 3 whose chunks read through to a snapshot of another volume until written
/// ([`VolumeMeta::parent`]): a clone, which an rtgt that knows only format 3 would read as
/// zeros where it has not written.
pub const CLONE_FORMAT_VERSION: u32 = 4;
/// Format 3 or 4 whose chunks are compressed ([`VolumeMeta::compression`]), which an rtgt that
/// knows only formats 3 and 4 would read as garbage.
pub const COMPRESSED_FORMAT_VERSION: u32 = 5;
pub const META_NAME: &str = "rtgt-volume.json";
pub const LEASE_NAME: &str = "rtgt-lease.json";
/// The persistent reservations of the volume's logical unit (APTPL), beside it.
pub const RESERVATIONS_NAME: &str = "rtgt-reservations.json";
pub const CHUNKS_DIR: &str = "chunks/";
pub const LOG_DIR: &str = "log/";
/// Object metadata: base64 of the big-endian CRC32C of each segment (chunks) or of the body (logs).
pub const CRC_METADATA: &str = "rtgt-crc32c";
/// Object metadata of a chunk: the highest log sequence number whose records it includes.
pub const SEQ_METADATA: &str = "rtgt-seq";
/// Most CRC segments per chunk (their CRCs travel in object metadata, limited to 2 KiB).
pub const SEGMENTS_MAX: u64 = 64;
/// Sequence numbers are `epoch << EPOCH_SHIFT | counter`.
pub const EPOCH_SHIFT: u32 = 40;
/// Logs of format 1 (read, no longer written).
const LOG_MAGIC: &[u8; 8] = b"RTGTLOG1";
const LOG2_MAGIC: &[u8; 8] = b"RTGTLOG2";
/// Bytes of a format 1 log's header: magic, sequence number, record count.
const LOG_HEADER: usize = 20;
/// Bytes of a format 2 log's header: magic, sequence number, record count, object length.
const LOG2_HEADER: usize = 28;
/// Bytes of a record's header: kind, offset, length.
const RECORD_HEADER: usize = 17;

/// The metadata object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMeta {
    pub format_version: u32,
    pub size: u64,
    pub block_size: u32,
    pub chunk_size: u64,
    pub uuid: String,
    pub created_unix_secs: u64,
    /// Bumped at every open, so that log sequence numbers only ever grow.
    #[serde(default)]
    pub epoch: u64,
    /// The node whose local journal the last open wrote to (`durability = "local"`); None if
    /// the last open kept no journal. A journal is replayed only by the next open of its own
    /// node: once anyone else opened the volume, it is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_node: Option<String>,
    /// How the volume's data objects are encrypted (format 2); None: they are plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<super::keys::Encryption>,
    /// A clone (format 4): the snapshot it was made from, read where it has not written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
    /// How the chunks are compressed (format 5); None: they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<super::compression::Compression>,
    /// Every log numbered below this was settled by an open's recovery: one found later is a
    /// PUT that landed after its writer gave up on it (a request held on its way), never to be
    /// replayed over what was written since. 0: no floor (older volumes).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub logs_settled_below: u64,
    /// A deletion of the volume began (`rtgt volume delete`): its objects may be partly gone, so
    /// it opens no more; a deletion run again finishes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleting: bool,
    /// A clone being made (`clone.rs`): written before the record that keeps its snapshot, so
    /// that a record is never without its volume; it opens only once made. A making cut short
    /// leaves it so, and `rtgt volume delete` removes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub making: bool,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

/// The snapshot a clone was made from, in the same bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentRef {
    /// The parent volume's key prefix ("" or "prefix/").
    pub prefix: String,
    pub uuid: String,
    pub snapshot: super::manifest::SnapshotName,
}

impl VolumeMeta {
    /// Parses and checks a metadata object: its format version and geometry.
    pub fn parse(body: &[u8]) -> Result<VolumeMeta, String> {
        let meta: VolumeMeta = serde_json::from_slice(body).map_err(|e| format!("not volume metadata: {e}"))?;
        let known = matches!(
            (meta.format_version, &meta.encryption, &meta.parent, &meta.compression),
            (FLAT_FORMAT_VERSION, None, None, None)
                | (ENCRYPTED_FORMAT_VERSION, Some(_), None, None)
                | (FORMAT_VERSION, _, None, None)
                | (CLONE_FORMAT_VERSION, _, Some(_), None)
                | (COMPRESSED_FORMAT_VERSION, _, _, Some(_))
        );
        if !known {
            return Err(format!(
                "volume format version {}{}{}{}, this rtgt reads versions {FLAT_FORMAT_VERSION} (plain), \
                 {ENCRYPTED_FORMAT_VERSION} (encrypted), {FORMAT_VERSION}, {CLONE_FORMAT_VERSION} (a clone) \
                 and {COMPRESSED_FORMAT_VERSION} (compressed)",
                meta.format_version,
                if meta.encryption.is_some() { " (encrypted)" } else { "" },
                if meta.parent.is_some() { " (with a parent)" } else { "" },
                if meta.compression.is_some() { " (compressed)" } else { "" },
            ));
        }
        meta.spec().validate().map_err(|e| format!("invalid metadata: {e}"))?;
        Ok(meta)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec_pretty(self).expect("metadata serializes"))
    }

    pub fn spec(&self) -> CreateSpec {
        CreateSpec { size: self.size, block_size: self.block_size, chunk_size: self.chunk_size }
    }

    /// How the volume keeps its chunk objects.
    pub fn layout(&self) -> ChunkLayout {
        if self.format_version >= FORMAT_VERSION { ChunkLayout::Versioned } else { ChunkLayout::Flat }
    }

    /// The format version of a volume of format 3 with these parent and compression.
    pub fn version_for(parent: bool, compressed: bool) -> u32 {
        match (parent, compressed) {
            (_, true) => COMPRESSED_FORMAT_VERSION,
            (true, false) => CLONE_FORMAT_VERSION,
            (false, false) => FORMAT_VERSION,
        }
    }

    /// The first sequence number of this epoch.
    pub fn first_seq(&self) -> u64 {
        (self.epoch << EPOCH_SHIFT) + 1
    }
}

/// The epoch a sequence number was taken in.
pub fn epoch_of(seq: u64) -> u64 {
    seq >> EPOCH_SHIFT
}

/// How a volume keeps its chunk objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkLayout {
    /// Formats 1 and 2: `chunks/<index>`, overwritten by every merge.
    Flat,
    /// Format 3: `chunks/<index>/<version>`, a new object for every merge.
    Versioned,
}

/// Geometry of a new volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreateSpec {
    pub size: u64,
    pub block_size: u32,
    pub chunk_size: u64,
}

impl CreateSpec {
    pub fn validate(&self) -> Result<(), String> {
        let bs = self.block_size as u64;
        if bs != 512 && bs != 4096 {
            return Err(format!("block size {bs} is not supported (512 or 4096)"));
        }
        if !self.chunk_size.is_power_of_two() || self.chunk_size > 256 << 20 {
            return Err(format!("chunk size {} must be a power of two of at most 256MiB", self.chunk_size));
        }
        if self.chunk_size < bs {
            return Err("chunk size is smaller than the block size".into());
        }
        if self.size == 0 || !self.size.is_multiple_of(bs) {
            return Err(format!("size {} must be a non-zero multiple of the block size {bs}", self.size));
        }
        Ok(())
    }
}

/// The lease object: who may write the volume. Its holder renews it (a conditional PUT on its
/// entity tag, `renewals` bumped so that every version differs) and lets it go at a clean close
/// (`released`). Nobody compares `expires_unix_ms` with a clock: a taker measures the lease's
/// `duration_ms` on its own monotonic clock, watching the object not change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// This process: "<node>/<pid>/<random>".
    pub holder: String,
    /// The node the holder runs on (see `node.rs`); absent in leases of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default)]
    pub renewals: u64,
    #[serde(default = "default_lease_ms")]
    pub duration_ms: u64,
    #[serde(default)]
    pub released: bool,
    /// For people reading the object (wall clock at the renewal plus the duration; 0 when
    /// released by an older version).
    pub expires_unix_ms: u64,
}

fn default_lease_ms() -> u64 {
    30_000
}

impl LeaseRecord {
    pub fn parse(body: &[u8]) -> Result<LeaseRecord, String> {
        let mut record: LeaseRecord = serde_json::from_slice(body).map_err(|e| format!("unreadable lease: {e}"))?;
        // Older versions released a lease by writing an expiry of zero.
        record.released |= record.expires_unix_ms == 0;
        Ok(record)
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("lease serializes"))
    }
}

/// The key of chunk `index` in a volume of the flat layout.
pub fn chunk_key(url: &S3Url, index: u64) -> String {
    url.key(&format!("{CHUNKS_DIR}{index:016x}"))
}

/// The key of version `version` of chunk `index` in a volume of the versioned layout.
pub fn chunk_version_key(url: &S3Url, index: u64, version: u64) -> String {
    url.key(&format!("{CHUNKS_DIR}{index:016x}/{version:016x}"))
}

/// The key of version `version` of chunk `index` of the volume whose key prefix is `prefix`
/// ("" or "prefix/": a clone's parent).
pub fn chunk_version_key_in(prefix: &str, index: u64, version: u64) -> String {
    format!("{prefix}{CHUNKS_DIR}{index:016x}/{version:016x}")
}

/// The chunk index and, in the versioned layout, the version that a key below `chunks`
/// (the volume's `chunks/` prefix) names; None for a key that names no chunk.
pub fn parse_chunk_key(key: &str, chunks: &str, layout: ChunkLayout) -> Option<(u64, Option<u64>)> {
    let rest = key.strip_prefix(chunks)?;
    let hex = |digits: &str| (digits.len() == 16).then(|| u64::from_str_radix(digits, 16).ok()).flatten();
    match layout {
        ChunkLayout::Flat => Some((hex(rest)?, None)),
        ChunkLayout::Versioned => {
            let (index, version) = rest.split_once('/')?;
            Some((hex(index)?, Some(hex(version)?)))
        }
    }
}

/// The key of log `seq`.
pub fn log_key(url: &S3Url, seq: u64) -> String {
    url.key(&format!("{LOG_DIR}{seq:016x}"))
}

/// The bucket of a journal root that holds the journals of every volume using it.
pub const JOURNAL_BUCKET: &str = "journal";

/// Where a volume's journal logs live in [`JOURNAL_BUCKET`] (by volume uuid: a URL may change).
pub fn journal_prefix(uuid: &str) -> String {
    format!("{uuid}/{LOG_DIR}")
}

/// The journal key of log `seq`.
/// Which volume a journal under this uuid belongs to (its URL): see `S3Volume::claim_journal`.
pub fn journal_owner_key(uuid: &str) -> String {
    format!("{uuid}/volume")
}

pub fn journal_key(uuid: &str, seq: u64) -> String {
    format!("{}{seq:016x}", journal_prefix(uuid))
}

/// The number in a chunk or log key below `prefix` (16 hex digits).
pub fn key_number(key: &str, prefix: &str) -> Option<u64> {
    let digits = key.strip_prefix(prefix)?;
    (digits.len() == 16).then(|| u64::from_str_radix(digits, 16).ok()).flatten()
}

/// Segment size of a volume's chunks: CRCs cover segments, and ranged reads fetch whole ones.
pub fn segment_size(chunk_size: u64) -> u64 {
    (chunk_size / SEGMENTS_MAX).max(64 * 1024).min(chunk_size)
}

/// Base64 of the big-endian CRC32C of each `segment`-byte piece of `data`.
pub fn segment_checksums(data: &[u8], segment: u64) -> String {
    let crcs: Vec<u32> = data.chunks(segment as usize).map(crc32c::crc32c).collect();
    encode_checksums(&crcs)
}

/// [`segment_checksums`] of pieces whose CRC32Cs are `crcs`.
fn encode_checksums(crcs: &[u32]) -> String {
    let bytes: Vec<u8> = crcs.iter().flat_map(|c| c.to_be_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes [`segment_checksums`].
pub fn parse_checksums(value: &str) -> Option<Vec<u32>> {
    let raw = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    if !raw.len().is_multiple_of(4) {
        return None;
    }
    Some(raw.chunks(4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).collect())
}

/// The metadata of a chunk object composed at log sequence `stamp`.
pub fn chunk_metadata(data: &[u8], segment: u64, stamp: u64) -> BTreeMap<String, String> {
    let crcs: Vec<u32> = data.chunks(segment as usize).map(crc32c::crc32c).collect();
    chunk_metadata_of(&crcs, stamp)
}

/// [`chunk_metadata`] of a chunk whose segments' CRC32Cs are `crcs`.
pub fn chunk_metadata_of(crcs: &[u32], stamp: u64) -> BTreeMap<String, String> {
    BTreeMap::from([(CRC_METADATA.to_string(), encode_checksums(crcs)), (SEQ_METADATA.to_string(), stamp.to_string())])
}

/// Checks what a GET of bytes `range` of a chunk object of `chunk_len` bytes returned: its
/// lengths, and the CRC32C of every segment (of `segment` bytes) it holds; `range` covers
/// whole segments.
pub fn verify_segments(
    got: &crate::s3::GetOutput,
    chunk_len: u64,
    range: std::ops::Range<u64>,
    segment: u64,
) -> Result<(), String> {
    if got.body.len() as u64 != range.end - range.start {
        return Err(format!("expected {} bytes, got {}", range.end - range.start, got.body.len()));
    }
    if got.meta.size != chunk_len {
        return Err(format!("object is {} bytes, chunks are {chunk_len}", got.meta.size));
    }
    let crcs = got
        .meta
        .metadata
        .get(CRC_METADATA)
        .and_then(|v| parse_checksums(v))
        .ok_or_else(|| "missing or unreadable checksums".to_string())?;
    let mut at = range.start;
    while at < range.end {
        let i = (at / segment) as usize;
        let n = segment.min(range.end - at);
        let piece = &got.body[(at - range.start) as usize..(at - range.start + n) as usize];
        if crcs.get(i).copied() != Some(crc32c::crc32c(piece)) {
            return Err(format!("checksum mismatch in segment {i}"));
        }
        at += n;
    }
    Ok(())
}

/// The stamp of a chunk object (0 when absent or unreadable: every log record is newer).
pub fn chunk_stamp(metadata: &BTreeMap<String, String>) -> u64 {
    metadata.get(SEQ_METADATA).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// One record of a log object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Data { offset: u64, data: Bytes },
    Zero { offset: u64, len: u64 },
}

impl Record {
    /// The byte range the record covers.
    pub fn extent(&self) -> (u64, u64) {
        match self {
            Record::Data { offset, data } => (*offset, data.len() as u64),
            Record::Zero { offset, len } => (*offset, *len),
        }
    }
}

/// Serializes log records (format 2): magic, sequence number, record count, the length of the
/// whole object, then for each record its kind (0 data, 1 zero), offset, length and, for data,
/// the bytes; last the CRC32C of everything before it. The object checks itself: a log whose
/// metadata got lost still proves it is whole, and a cut one proves it is cut.
pub fn encode_log(seq: u64, records: &[Record]) -> Bytes {
    let mut log = LogBuilder::new();
    for r in records {
        match r {
            Record::Data { offset, data } => log.data(*offset, data.len()).copy_from_slice(data),
            Record::Zero { offset, len } => log.zero(*offset, *len),
        }
    }
    log.finish(seq)
}

/// Builds a log object in place: records are copied once, straight into the body.
pub struct LogBuilder {
    body: BytesMut,
    count: u32,
}

impl Default for LogBuilder {
    fn default() -> Self {
        LogBuilder::new()
    }
}

impl LogBuilder {
    pub fn new() -> LogBuilder {
        let mut body = BytesMut::new();
        body.resize(LOG2_HEADER, 0);
        LogBuilder { body, count: 0 }
    }

    /// Bytes of data so far.
    pub fn len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a data record of `len` bytes at `offset`; returns where its bytes go.
    pub fn data(&mut self, offset: u64, len: usize) -> &mut [u8] {
        self.count += 1;
        self.body.put_u8(0);
        self.body.put_u64(offset);
        self.body.put_u64(len as u64);
        let at = self.body.len();
        self.body.resize(at + len, 0);
        &mut self.body[at..]
    }

    pub fn zero(&mut self, offset: u64, len: u64) {
        self.count += 1;
        self.body.put_u8(1);
        self.body.put_u64(offset);
        self.body.put_u64(len);
    }

    pub fn finish(mut self, seq: u64) -> Bytes {
        let body_len = self.body.len() as u64 + 4;
        self.body[..8].copy_from_slice(LOG2_MAGIC);
        self.body[8..16].copy_from_slice(&seq.to_be_bytes());
        self.body[16..20].copy_from_slice(&self.count.to_be_bytes());
        self.body[20..28].copy_from_slice(&body_len.to_be_bytes());
        let crc = crc32c::crc32c(&self.body);
        self.body.put_u32(crc);
        self.body.freeze()
    }
}

/// The object metadata of a log body: its CRC32C.
pub fn log_metadata(body: &[u8]) -> BTreeMap<String, String> {
    let crc = base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(body).to_be_bytes());
    BTreeMap::from([(CRC_METADATA.to_string(), crc)])
}

/// Why a log object cannot be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogDamage {
    /// Shorter than it says it is: a write cut short (by a crash, on a store that lets a
    /// partial object be seen).
    #[error("truncated: {0}")]
    Truncated(String),
    /// Whole, but not what was written.
    #[error("corrupt: {0}")]
    Corrupt(String),
}

/// A parsed log object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedLog {
    pub records: Vec<Record>,
    /// A format 1 log without its metadata checksum, whose structure alone was checked.
    pub unverified: bool,
}

/// Parses and verifies a log object (either format; `crc` is the CRC of its metadata, if the
/// object kept any).
pub fn parse_log(body: &Bytes, crc: Option<&String>) -> Result<ParsedLog, LogDamage> {
    let corrupt = |why: &str| LogDamage::Corrupt(why.into());
    let want = crc
        .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
        .filter(|b| b.len() == 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    if body.starts_with(LOG2_MAGIC) {
        if body.len() < LOG2_HEADER + 4 {
            return Err(LogDamage::Truncated(format!("{} bytes", body.len())));
        }
        let declared = u64::from_be_bytes(body[20..28].try_into().expect("8 bytes"));
        if (body.len() as u64) < declared {
            return Err(LogDamage::Truncated(format!("{} of {declared} bytes", body.len())));
        }
        if body.len() as u64 != declared {
            return Err(corrupt("longer than it says"));
        }
        let (content, trailer) = body.split_at(body.len() - 4);
        if crc32c::crc32c(content) != u32::from_be_bytes(trailer.try_into().expect("4 bytes")) {
            return Err(corrupt("checksum mismatch"));
        }
        if want.is_some_and(|w| crc32c::crc32c(body) != w) {
            return Err(corrupt("checksum mismatch with its metadata"));
        }
        let records = parse_records(&body.slice(..body.len() - 4), LOG2_HEADER)?;
        return Ok(ParsedLog { records, unverified: false });
    }
    if body.starts_with(LOG_MAGIC) {
        return match want {
            Some(w) if crc32c::crc32c(body) != w => Err(corrupt("checksum mismatch")),
            Some(_) => Ok(ParsedLog { records: parse_records(body, LOG_HEADER)?, unverified: false }),
            // Written by an older rtgt whose store lost the metadata: the structure must hold
            // to the last byte.
            None => match parse_records(body, LOG_HEADER) {
                Ok(records) => Ok(ParsedLog { records, unverified: true }),
                Err(LogDamage::Corrupt(why)) if why == "truncated" => Err(LogDamage::Truncated("no checksum".into())),
                Err(e) => Err(e),
            },
        };
    }
    if body.len() < LOG2_MAGIC.len() && (LOG2_MAGIC.starts_with(body) || LOG_MAGIC.starts_with(body)) {
        return Err(LogDamage::Truncated(format!("{} bytes", body.len())));
    }
    Err(corrupt("not a log object"))
}

/// The records after a header, which must end exactly at the end of `body`.
fn parse_records(body: &Bytes, header: usize) -> Result<Vec<Record>, LogDamage> {
    let truncated = || LogDamage::Corrupt("truncated".into());
    if body.len() < header {
        return Err(truncated());
    }
    let count = u32::from_be_bytes(body[16..20].try_into().expect("4 bytes"));
    let mut at = header;
    let mut records = Vec::new();
    for _ in 0..count {
        if body.len() < at + RECORD_HEADER {
            return Err(truncated());
        }
        let kind = body[at];
        let offset = u64::from_be_bytes(body[at + 1..at + 9].try_into().expect("8 bytes"));
        let len = u64::from_be_bytes(body[at + 9..at + 17].try_into().expect("8 bytes"));
        at += RECORD_HEADER;
        match kind {
            0 => {
                let end = usize::try_from(len)
                    .ok()
                    .and_then(|len| at.checked_add(len))
                    .filter(|&e| e <= body.len())
                    .ok_or_else(truncated)?;
                records.push(Record::Data { offset, data: body.slice(at..end) });
                at = end;
            }
            1 => records.push(Record::Zero { offset, len }),
            _ => return Err(LogDamage::Corrupt(format!("unknown record kind {kind}"))),
        }
    }
    if at != body.len() {
        return Err(LogDamage::Corrupt("bytes after the last record".into()));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_round_trip_and_damage_is_detected() {
        let records = vec![
            Record::Data { offset: 4096, data: Bytes::from_static(b"hello") },
            Record::Zero { offset: 0, len: 512 },
        ];
        let body = encode_log(7, &records);
        let crc = log_metadata(&body)[CRC_METADATA].clone();
        let whole = ParsedLog { records: records.clone(), unverified: false };
        assert_eq!(parse_log(&body, Some(&crc)).unwrap(), whole);
        assert_eq!(parse_log(&body, None).unwrap(), whole, "the object checks itself");
        for cut in [1, 10, 30, body.len() - 1] {
            assert!(matches!(parse_log(&body.slice(..cut), None), Err(LogDamage::Truncated(_))), "cut at {cut}");
        }
        let mut bad = body.to_vec();
        bad[35] ^= 1;
        assert!(matches!(parse_log(&Bytes::from(bad), None), Err(LogDamage::Corrupt(_))));
        let mut longer = body.to_vec();
        longer.push(0);
        assert!(matches!(parse_log(&Bytes::from(longer), None), Err(LogDamage::Corrupt(_))));
    }

    /// Format 1, as earlier versions wrote it: verified by the CRC in its metadata, or, when the
    /// store lost that, by its structure alone.
    #[test]
    fn format_1_logs_are_read() {
        let mut v1 = BytesMut::new();
        v1.put_slice(LOG_MAGIC);
        v1.put_u64(3);
        v1.put_u32(1);
        v1.put_u8(0);
        v1.put_u64(512);
        v1.put_u64(2);
        v1.put_slice(b"hi");
        let v1 = v1.freeze();
        let crc = log_metadata(&v1)[CRC_METADATA].clone();
        let records = vec![Record::Data { offset: 512, data: Bytes::from_static(b"hi") }];
        assert_eq!(parse_log(&v1, Some(&crc)).unwrap().records, records);
        assert!(parse_log(&v1, None).unwrap().unverified);
        assert!(matches!(parse_log(&v1.slice(..v1.len() - 1), None), Err(LogDamage::Truncated(_))));
        let other = log_metadata(b"other")[CRC_METADATA].clone();
        assert!(matches!(parse_log(&v1, Some(&other)), Err(LogDamage::Corrupt(_))));
    }

    #[test]
    fn metadata_is_checked() {
        let meta = VolumeMeta {
            format_version: FORMAT_VERSION,
            size: 1 << 20,
            block_size: 512,
            chunk_size: 1 << 16,
            uuid: "u".into(),
            created_unix_secs: 1,
            epoch: 3,
            journal_node: Some("node-a".into()),
            encryption: None,
            parent: None,
            compression: None,
            logs_settled_below: (3 << EPOCH_SHIFT) + 1,
            deleting: true,
            making: true,
        };
        assert_eq!(VolumeMeta::parse(&meta.encode()).unwrap(), meta);
        assert_eq!(meta.layout(), ChunkLayout::Versioned);
        let newer = VolumeMeta { format_version: COMPRESSED_FORMAT_VERSION + 1, ..meta.clone() };
        let parent = ParentRef {
            prefix: "p/".into(),
            uuid: "u".into(),
            snapshot: super::super::manifest::SnapshotName::parse("s").unwrap(),
        };
        let clone = VolumeMeta { format_version: CLONE_FORMAT_VERSION, parent: Some(parent), ..meta.clone() };
        assert_eq!(VolumeMeta::parse(&clone.encode()).unwrap().layout(), ChunkLayout::Versioned);
        let orphan = VolumeMeta { parent: None, ..clone.clone() };
        assert!(VolumeMeta::parse(&orphan.encode()).unwrap_err().contains("version"));
        let unmarked = VolumeMeta { format_version: FORMAT_VERSION, ..clone };
        assert!(VolumeMeta::parse(&unmarked.encode()).unwrap_err().contains("with a parent"));
        assert!(VolumeMeta::parse(&newer.encode()).unwrap_err().contains("version"));
        let flat = VolumeMeta { format_version: FLAT_FORMAT_VERSION, ..meta.clone() };
        assert_eq!(VolumeMeta::parse(&flat.encode()).unwrap().layout(), ChunkLayout::Flat);
        // Format 2 is an encrypted volume, and an encrypted volume of the flat layout is format 2.
        let encryption = super::super::keys::Encryption {
            cipher: "xchacha20poly1305".into(),
            unit: 65536,
            wrapped_key: "k".into(),
            kdf: None,
        };
        let encrypted =
            VolumeMeta { format_version: ENCRYPTED_FORMAT_VERSION, encryption: Some(encryption), ..meta.clone() };
        assert_eq!(VolumeMeta::parse(&encrypted.encode()).unwrap(), encrypted);
        assert_eq!(encrypted.layout(), ChunkLayout::Flat);
        let unmarked = VolumeMeta { format_version: FLAT_FORMAT_VERSION, ..encrypted.clone() };
        assert!(VolumeMeta::parse(&unmarked.encode()).unwrap_err().contains("version"));
        let versioned = VolumeMeta { format_version: FORMAT_VERSION, ..encrypted.clone() };
        assert_eq!(VolumeMeta::parse(&versioned.encode()).unwrap(), versioned);
        let empty = VolumeMeta { format_version: ENCRYPTED_FORMAT_VERSION, ..meta.clone() };
        assert!(VolumeMeta::parse(&empty.encode()).unwrap_err().contains("version"));
        // Format 5 is a compressed volume (a clone or not), and a compressed volume is format 5.
        let zstd = Some(super::super::compression::Compression::Zstd);
        let compressed = VolumeMeta { format_version: COMPRESSED_FORMAT_VERSION, compression: zstd, ..meta.clone() };
        assert_eq!(VolumeMeta::parse(&compressed.encode()).unwrap(), compressed);
        assert!(compressed.encode().windows(6).any(|w| w == b"\"zstd\""), "named in the metadata");
        let unmarked = VolumeMeta { format_version: FORMAT_VERSION, ..compressed.clone() };
        assert!(VolumeMeta::parse(&unmarked.encode()).unwrap_err().contains("(compressed)"));
        let empty = VolumeMeta { format_version: COMPRESSED_FORMAT_VERSION, ..meta.clone() };
        assert!(VolumeMeta::parse(&empty.encode()).unwrap_err().contains("version"));
        let odd = VolumeMeta { block_size: 1000, ..meta };
        assert!(VolumeMeta::parse(&odd.encode()).is_err());
        assert!(VolumeMeta::parse(b"{").is_err());
    }

    #[test]
    fn leases_of_older_versions_parse() {
        let old = LeaseRecord::parse(br#"{"holder":"h/1/2","expires_unix_ms":0}"#).unwrap();
        assert!(old.released && old.node.is_none() && old.duration_ms == 30_000);
        let held = LeaseRecord::parse(br#"{"holder":"h/1/2","expires_unix_ms":5}"#).unwrap();
        assert!(!held.released);
        let new = LeaseRecord {
            holder: "n/1/2".into(),
            node: Some("n".into()),
            renewals: 3,
            duration_ms: 9,
            released: false,
            expires_unix_ms: 7,
        };
        assert_eq!(LeaseRecord::parse(&new.encode()).unwrap(), new);
        assert!(LeaseRecord::parse(b"[]").is_err());
    }

    #[test]
    fn keys_and_checksums() {
        let url = S3Url::parse("s3://bkt/v").unwrap();
        assert_eq!(chunk_key(&url, 255), "v/chunks/00000000000000ff");
        assert_eq!(key_number(&chunk_key(&url, 255), "v/chunks/"), Some(255));
        assert_eq!(chunk_version_key(&url, 255, 7), "v/chunks/00000000000000ff/0000000000000007");
        assert_eq!(chunk_version_key_in(&url.key(""), 255, 7), chunk_version_key(&url, 255, 7));
        let parse = |key: &str, layout| parse_chunk_key(key, "v/chunks/", layout);
        assert_eq!(parse(&chunk_version_key(&url, 255, 7), ChunkLayout::Versioned), Some((255, Some(7))));
        assert_eq!(parse(&chunk_key(&url, 255), ChunkLayout::Flat), Some((255, None)));
        assert_eq!(parse(&chunk_key(&url, 255), ChunkLayout::Versioned), None);
        assert_eq!(parse(&chunk_version_key(&url, 255, 7), ChunkLayout::Flat), None);
        assert_eq!(parse("v/chunks/00000000000000ff/7", ChunkLayout::Versioned), None);
        assert_eq!(key_number("v/chunks/ff", "v/chunks/"), None);
        let data = vec![1u8; 3 * 65536];
        let crcs = parse_checksums(&segment_checksums(&data, 65536)).unwrap();
        assert_eq!(crcs.len(), 3);
        assert_eq!(crcs[0], crc32c::crc32c(&data[..65536]));
    }
}
