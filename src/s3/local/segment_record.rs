//! The records of a segment file ([`super::segment_store`]): a PUT of an object or a DELETE of
//! keys, each self-checking, stamped with the generation of the segment it was written to.
//!
//! ```text
//! magic u32 | kind u8 | generation u64 | payload length u32 | crc32c u32 | payload
//! PUT payload:    key (u16 length + bytes) | entity tag (u16 + bytes) |
//!                 metadata count u16, each (u16 + name, u32 + value) | body (the rest)
//! DELETE payload: count u32, each key (u16 length + bytes)
//! ```
//!
//! The checksum covers the kind, generation, length and payload. Reading a segment stops at the
//! first record that does not check or belongs to another generation: the end of what was
//! written (zeros of a new file, a torn write, or an older generation's records in a recycled
//! file).

use std::collections::BTreeMap;

/// "RTS1", little endian.
const MAGIC: u32 = 0x3153_5452;
pub const HEADER_BYTES: usize = 4 + 1 + 8 + 4 + 4;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Put {
        key: String,
        etag: String,
        metadata: BTreeMap<String, String>,
        /// Where the body starts in the record, and its length.
        body_at: usize,
        body_len: usize,
    },
    Delete {
        keys: Vec<String>,
    },
}

fn put_str16(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn finish(kind: u8, generation: u64, payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[4..]), &payload);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The bytes of a PUT record, and where its body starts in them. Keys, entity tags and
/// metadata must fit their length fields (the store checks keys; the rest is its own).
pub fn encode_put(
    generation: u64,
    key: &str,
    etag: &str,
    metadata: &BTreeMap<String, String>,
    body: &[u8],
) -> (Vec<u8>, usize) {
    let mut payload = Vec::with_capacity(body.len() + key.len() + 64);
    put_str16(&mut payload, key);
    put_str16(&mut payload, etag);
    payload.extend_from_slice(&(metadata.len() as u16).to_le_bytes());
    for (name, value) in metadata {
        put_str16(&mut payload, name);
        payload.extend_from_slice(&(value.len() as u32).to_le_bytes());
        payload.extend_from_slice(value.as_bytes());
    }
    let body_at = HEADER_BYTES + payload.len();
    payload.extend_from_slice(body);
    (finish(KIND_PUT, generation, payload), body_at)
}

/// The length of the PUT record `encode_put` makes, without making it.
pub fn put_len(key: &str, etag: &str, metadata: &BTreeMap<String, String>, body_len: usize) -> usize {
    let metadata_len: usize = metadata.iter().map(|(name, value)| 2 + name.len() + 4 + value.len()).sum();
    HEADER_BYTES + 2 + key.len() + 2 + etag.len() + 2 + metadata_len + body_len
}

/// The length of the DELETE record `encode_delete` makes, without making it.
pub fn delete_len(keys: &[String]) -> usize {
    HEADER_BYTES + 4 + keys.iter().map(|key| 2 + key.len()).sum::<usize>()
}

pub fn encode_delete(generation: u64, keys: &[String]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for key in keys {
        put_str16(&mut payload, key);
    }
    finish(KIND_DELETE, generation, payload)
}

/// A cursor over a payload; every read is bounds-checked (the checksum passed, but a record
/// is still input).
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(out)
    }

    fn u16(&mut self) -> Option<usize> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?) as usize)
    }

    fn u32(&mut self) -> Option<usize> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize)
    }

    fn string(&mut self, len: usize) -> Option<String> {
        String::from_utf8(self.take(len)?.to_vec()).ok()
    }
}

/// The record at the start of `bytes` if it is whole, checks and belongs to `generation`,
/// with its length in bytes.
pub fn decode(bytes: &[u8], generation: u64) -> Option<(Record, usize)> {
    let header = bytes.get(..HEADER_BYTES)?;
    if u32::from_le_bytes(header[0..4].try_into().ok()?) != MAGIC
        || u64::from_le_bytes(header[5..13].try_into().ok()?) != generation
    {
        return None;
    }
    let kind = header[4];
    let len = u32::from_le_bytes(header[13..17].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[17..21].try_into().ok()?);
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES.checked_add(len)?)?;
    if crc32c::crc32c_append(crc32c::crc32c(&header[4..17]), payload) != crc {
        return None;
    }
    let mut c = Cursor { bytes: payload, at: 0 };
    let record = match kind {
        KIND_PUT => {
            let key_len = c.u16()?;
            let key = c.string(key_len)?;
            let etag_len = c.u16()?;
            let etag = c.string(etag_len)?;
            let mut metadata = BTreeMap::new();
            for _ in 0..c.u16()? {
                let name_len = c.u16()?;
                let name = c.string(name_len)?;
                let value_len = c.u32()?;
                metadata.insert(name, c.string(value_len)?);
            }
            Record::Put { key, etag, metadata, body_at: HEADER_BYTES + c.at, body_len: len - c.at }
        }
        KIND_DELETE => {
            let mut keys = Vec::new();
            for _ in 0..c.u32()? {
                let key_len = c.u16()?;
                keys.push(c.string(key_len)?);
            }
            Record::Delete { keys }
        }
        _ => return None,
    };
    Some((record, HEADER_BYTES + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_and_damage_ends_the_segment() {
        let meta = BTreeMap::from([("crc".to_string(), "12".to_string())]);
        let (put, body_at) = encode_put(7, "u/log/1", "e1", &meta, b"body");
        assert_eq!(put_len("u/log/1", "e1", &meta, 4), put.len());
        let (record, len) = decode(&put, 7).expect("a whole record");
        assert_eq!(len, put.len());
        assert_eq!(
            record,
            Record::Put { key: "u/log/1".into(), etag: "e1".into(), metadata: meta, body_at, body_len: 4 }
        );
        assert_eq!(&put[body_at..], b"body");
        assert_eq!(decode(&put, 8), None, "another generation's record ends the segment");
        assert_eq!(decode(&put[..put.len() - 1], 7), None, "a torn record ends it");
        let mut flipped = put.clone();
        flipped[body_at] ^= 1;
        assert_eq!(decode(&flipped, 7), None, "a damaged record ends it");
        assert_eq!(decode(&[0; 64], 7), None, "zeros end it");
        let delete = encode_delete(7, &["a".into(), "b".into()]);
        assert_eq!(delete_len(&["a".into(), "b".into()]), delete.len());
        assert_eq!(decode(&delete, 7), Some((Record::Delete { keys: vec!["a".into(), "b".into()] }, delete.len())));
    }
}
