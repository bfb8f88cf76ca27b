//! The text key=value codec of Login and Text PDUs (RFC 7143 §6.1).
//!
//! A text data segment is a sequence of `key=value` strings, each terminated by a NUL. A pair
//! may span PDUs when the C (continue) bit is set, so callers gather segments in a
//! [`TextBuffer`] and parse once the final segment arrived.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// RFC 7143 §6.1: key names are at most 63 bytes.
pub const KEY_LEN_MAX: usize = 63;
/// Longest value accepted. Ordinary values are at most 255 bytes; binary values (CHAP) may be
/// longer, up to 8192 encoded characters with their prefix.
pub const VALUE_LEN_MAX: usize = 8192 + 2;
/// Largest text (all PDUs of one request, C bit included) we gather before giving up.
pub const TEXT_LEN_MAX: usize = 64 * 1024;
/// Most pairs accepted in one request.
pub const PAIRS_MAX: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TextError {
    #[error("text is {0} bytes, more than the limit of {TEXT_LEN_MAX}")]
    TooLong(usize),
    #[error("more than {PAIRS_MAX} key=value pairs")]
    TooManyPairs,
    #[error("the last key=value pair is not NUL-terminated")]
    Unterminated,
    #[error("`{0}` is not of the form key=value")]
    MissingEquals(String),
    #[error("key `{0}` is invalid (empty, too long or with characters outside a-zA-Z0-9.-+@_)")]
    InvalidKey(String),
    #[error("the value of `{0}` is longer than {VALUE_LEN_MAX} bytes")]
    ValueTooLong(String),
    #[error("text is not valid UTF-8")]
    NotUtf8,
}

/// An ordered list of key=value pairs.
pub type Pairs = Vec<(String, String)>;

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= KEY_LEN_MAX
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+@".contains(&b))
}

/// Parses a complete text (all continued segments joined).
pub fn parse(data: &[u8]) -> Result<Pairs, TextError> {
    if data.len() > TEXT_LEN_MAX {
        return Err(TextError::TooLong(data.len()));
    }
    // Trailing NULs beyond the terminator are tolerated (some initiators pad with them).
    let end = match data.iter().rposition(|&b| b != 0) {
        None => return Ok(Vec::new()),
        Some(last) if last + 1 == data.len() => return Err(TextError::Unterminated),
        Some(last) => last + 1,
    };
    let mut pairs = Vec::new();
    for item in data[..end].split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if pairs.len() == PAIRS_MAX {
            return Err(TextError::TooManyPairs);
        }
        let item = std::str::from_utf8(item).map_err(|_| TextError::NotUtf8)?;
        let (key, value) = item.split_once('=').ok_or_else(|| TextError::MissingEquals(truncated(item)))?;
        if !valid_key(key) {
            return Err(TextError::InvalidKey(truncated(key)));
        }
        if value.len() > VALUE_LEN_MAX {
            return Err(TextError::ValueTooLong(key.to_string()));
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

fn truncated(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Encodes pairs as NUL-terminated `key=value` strings.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Bytes {
    let mut out = BytesMut::new();
    for (k, v) in pairs {
        out.put_slice(k.as_ref().as_bytes());
        out.put_u8(b'=');
        out.put_slice(v.as_ref().as_bytes());
        out.put_u8(0);
    }
    out.freeze()
}

/// Gathers the data segments of a multi-PDU text or login request (C bit), bounded.
#[derive(Debug, Default)]
pub struct TextBuffer {
    buf: BytesMut,
}

impl TextBuffer {
    pub fn push(&mut self, segment: &[u8]) -> Result<(), TextError> {
        let len = self.buf.len() + segment.len();
        if len > TEXT_LEN_MAX {
            return Err(TextError::TooLong(len));
        }
        self.buf.extend_from_slice(segment);
        Ok(())
    }

    /// Parses everything gathered and empties the buffer.
    pub fn finish(&mut self) -> Result<Pairs, TextError> {
        let data = std::mem::take(&mut self.buf);
        parse(&data)
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Splits an encoded response text into data segments of at most `segment_max` bytes; all but
/// the last are sent with the C bit set.
pub fn segments(text: &Bytes, segment_max: usize) -> Vec<Bytes> {
    assert!(segment_max > 0);
    if text.is_empty() {
        return vec![Bytes::new()];
    }
    (0..text.len()).step_by(segment_max).map(|at| text.slice(at..(at + segment_max).min(text.len()))).collect()
}
