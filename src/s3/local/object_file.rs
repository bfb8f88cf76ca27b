//! The file of one object in the local store: a fixed 4 KiB header (magic, the length of a JSON
//! description, the description, and a CRC32C of all that), then the body. One file holds data
//! and metadata, so a single rename makes both visible at once. The body starts at a fixed
//! offset, so a listing learns sizes from file lengths alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 8] = b"RTGTOBJ1";
/// Bytes before the body.
pub const HEADER_BYTES: usize = 4096;
/// Magic, description length, and the trailing CRC of the header.
const FRAMING: usize = 8 + 4 + 4;

/// What the header says about the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    pub etag: String,
    pub size: u64,
    /// CRC32C of the body.
    pub crc32c: u32,
    pub metadata: BTreeMap<String, String>,
}

/// Why a file is not a readable object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("shorter than an object header")]
    Short,
    #[error("not an object file (no magic)")]
    NoMagic,
    #[error("object header is damaged: {0}")]
    Damaged(String),
    #[error("metadata too large: {0} bytes (at most {max})", max = HEADER_BYTES - FRAMING)]
    TooLarge(usize),
}

/// The header for a body with this description.
pub fn encode_header(desc: &Description) -> Result<Vec<u8>, HeaderError> {
    let json = serde_json::to_vec(desc).expect("descriptions serialize");
    if json.len() > HEADER_BYTES - FRAMING {
        return Err(HeaderError::TooLarge(json.len()));
    }
    let mut out = Vec::with_capacity(HEADER_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&crc32c::crc32c(&out).to_be_bytes());
    out.resize(HEADER_BYTES, 0);
    Ok(out)
}

/// Parses the first [`HEADER_BYTES`] of a file.
pub fn parse_header(header: &[u8]) -> Result<Description, HeaderError> {
    if header.len() < HEADER_BYTES {
        return Err(if header.starts_with(MAGIC) || header.len() < MAGIC.len() {
            HeaderError::Short
        } else {
            HeaderError::NoMagic
        });
    }
    if &header[..8] != MAGIC {
        return Err(HeaderError::NoMagic);
    }
    let len = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes")) as usize;
    if len > HEADER_BYTES - FRAMING {
        return Err(HeaderError::Damaged(format!("description length {len}")));
    }
    let crc_at = 12 + len;
    let want = u32::from_be_bytes(header[crc_at..crc_at + 4].try_into().expect("4 bytes"));
    if crc32c::crc32c(&header[..crc_at]) != want {
        return Err(HeaderError::Damaged("checksum mismatch".into()));
    }
    serde_json::from_slice(&header[12..crc_at]).map_err(|e| HeaderError::Damaged(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc() -> Description {
        Description {
            etag: "\"abc\"".into(),
            size: 5,
            crc32c: crc32c::crc32c(b"hello"),
            metadata: BTreeMap::from([("k".into(), "v".into())]),
        }
    }

    #[test]
    fn headers_round_trip() {
        let h = encode_header(&desc()).unwrap();
        assert_eq!(h.len(), HEADER_BYTES);
        assert_eq!(parse_header(&h).unwrap(), desc());
    }

    #[test]
    fn damage_is_detected_not_misread() {
        let h = encode_header(&desc()).unwrap();
        for i in [0, 9, 20, 40] {
            let mut bad = h.clone();
            bad[i] ^= 0x10;
            assert!(parse_header(&bad).is_err(), "byte {i}");
        }
        assert_eq!(parse_header(&h[..100]), Err(HeaderError::Short));
        assert_eq!(parse_header(&[7u8; HEADER_BYTES]), Err(HeaderError::NoMagic));
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let mut d = desc();
        d.metadata.insert("big".into(), "x".repeat(HEADER_BYTES));
        assert!(matches!(encode_header(&d), Err(HeaderError::TooLarge(_))));
    }
}
