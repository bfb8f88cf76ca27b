//! The iSCSI wire format (RFC 7143 §11): basic header segments of every opcode, additional
//! header segments, padding, CRC32C digests, and the text key=value codec.
//!
//! Pure code: no I/O, no clocks. [`Pdu::decode`] parses from a byte buffer in the style of
//! mini-redis's frame parser: it returns `Ok(None)` ("need more bytes") until a whole PDU is
//! buffered and a typed [`PduError`] on malformed input; it never panics and never allocates more
//! than the caller's [`Limits`] allow.

pub mod bhs;
pub mod text;

pub use bhs::*;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;
/// Length of one CRC32C digest on the wire.
pub const DIGEST_LEN: usize = 4;
/// Largest AHS total length the wire format can express (TotalAHSLength is a byte of words).
pub const AHS_LEN_MAX: usize = 255 * 4;

/// Which digests are in force on a connection (negotiated at login; None during login).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// Bounds applied while decoding untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest data segment accepted (our declared MaxRecvDataSegmentLength).
    pub data_segment_len_max: u32,
}

impl Default for Limits {
    fn default() -> Self {
        // RFC 7143 §13.12: the default MaxRecvDataSegmentLength, in force during login.
        Limits { data_segment_len_max: 8192 }
    }
}

/// Why a PDU could not be decoded. Each variant implies the receiver's recovery action.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PduError {
    /// The header digest does not match: the length fields cannot be trusted, so the connection
    /// must be closed (RFC 7143 §7.8).
    #[error("header digest mismatch (expected {expected:#010x}, got {got:#010x})")]
    HeaderDigest { expected: u32, got: u32 },
    /// The data digest does not match. The header is intact and the PDU was consumed: answer
    /// with a Reject (reason DataDigestError) and carry on (RFC 7143 §7.8).
    #[error("data digest mismatch on {opcode:?}")]
    DataDigest { opcode: Opcode, header: Box<[u8; BHS_LEN]> },
    /// The data segment is longer than we declared we accept: a protocol error; close.
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataSegmentTooLong { len: u32, max: u32 },
    /// The opcode is not one the receiving side accepts. The PDU was consumed: Reject it.
    #[error("unsupported opcode {opcode:#04x}")]
    UnknownOpcode { opcode: u8, header: Box<[u8; BHS_LEN]> },
    /// The header is structurally invalid (e.g. a malformed AHS). The PDU was consumed.
    #[error("malformed {opcode:?} PDU: {reason}")]
    Malformed { opcode: Opcode, reason: &'static str, header: Box<[u8; BHS_LEN]> },
}

impl PduError {
    /// The offending header, when the PDU framing survived and a Reject can quote it.
    pub fn rejectable_header(&self) -> Option<&[u8; BHS_LEN]> {
        match self {
            PduError::DataDigest { header, .. }
            | PduError::UnknownOpcode { header, .. }
            | PduError::Malformed { header, .. } => Some(header),
            PduError::HeaderDigest { .. } | PduError::DataSegmentTooLong { .. } => None,
        }
    }
}

/// An additional header segment (RFC 7143 §11.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahs {
    pub ahs_type: u8,
    pub specific: u8,
    /// The AHS payload (AHSLength bytes, without padding).
    pub data: Bytes,
}

/// AHS type: extended CDB (bytes of the CDB beyond the 16 carried in the BHS).
pub const AHS_EXTENDED_CDB: u8 = 1;
/// AHS type: bidirectional read expected data transfer length.
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// One iSCSI PDU: a typed header, its AHSs and its data segment (without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    pub bhs: Bhs,
    pub ahs: Vec<Ahs>,
    pub data: Bytes,
}

/// A PDU encoded for the wire as up to three slices, written with one vectored write:
/// header (BHS, AHS, header digest), data segment, and trailer (padding and data digest).
#[derive(Debug, Clone)]
pub struct EncodedPdu {
    pub header: Bytes,
    pub data: Bytes,
    pub trailer: [u8; 3 + DIGEST_LEN],
    pub trailer_len: u8,
}

impl EncodedPdu {
    pub fn trailer(&self) -> &[u8] {
        &self.trailer[..self.trailer_len as usize]
    }

    pub fn len(&self) -> usize {
        self.header.len() + self.data.len() + self.trailer_len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The PDU as one contiguous buffer (tests, fuzzing, small control PDUs).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len());
        v.extend_from_slice(&self.header);
        v.extend_from_slice(&self.data);
        v.extend_from_slice(self.trailer());
        v
    }
}

/// Number of pad bytes that bring `len` to a multiple of four.
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

fn data_digest(data: &[u8]) -> u32 {
    let pad = [0u8; 3];
    crc32c::crc32c_append(crc32c::crc32c(data), &pad[..pad_len(data.len())])
}

impl Pdu {
    pub fn new(bhs: impl Into<Bhs>) -> Self {
        Pdu { bhs: bhs.into(), ahs: Vec::new(), data: Bytes::new() }
    }

    pub fn with_data(bhs: impl Into<Bhs>, data: Bytes) -> Self {
        Pdu { bhs: bhs.into(), ahs: Vec::new(), data }
    }

    pub fn opcode(&self) -> Opcode {
        self.bhs.opcode()
    }

    /// Parses one PDU from the front of `buf`, removing it from the buffer.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole PDU (nothing is consumed). On
    /// error the PDU is consumed whenever its framing could be trusted, so that a caller that
    /// answers with a Reject can continue with the next PDU.
    pub fn decode(buf: &mut BytesMut, digests: Digests, limits: Limits) -> Result<Option<Pdu>, PduError> {
        if buf.len() < BHS_LEN {
            return Ok(None);
        }
        let ahs_len = buf[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]);
        let header_len = BHS_LEN + ahs_len;
        let header_total = header_len + if digests.header { DIGEST_LEN } else { 0 };
        if buf.len() < header_total {
            return Ok(None);
        }
        if digests.header {
            let expected = crc32c(&buf[..header_len]);
            let got = u32::from_le_bytes(buf[header_len..header_total].try_into().expect("4 bytes"));
            if expected != got {
                return Err(PduError::HeaderDigest { expected, got });
            }
        }
        if data_len > limits.data_segment_len_max {
            return Err(PduError::DataSegmentTooLong { len: data_len, max: limits.data_segment_len_max });
        }
        let data_len = data_len as usize;
        let data_total =
            if data_len == 0 { 0 } else { data_len + pad_len(data_len) + if digests.data { DIGEST_LEN } else { 0 } };
        if buf.len() < header_total + data_total {
            buf.reserve(header_total + data_total - buf.len());
            return Ok(None);
        }

        let mut frame = buf.split_to(header_total + data_total);
        let header = frame.split_to(header_len).freeze();
        frame.advance(header_total - header_len);
        let raw: [u8; BHS_LEN] = header[..BHS_LEN].try_into().expect("48 bytes");
        let data = if data_len == 0 {
            Bytes::new()
        } else {
            let data = frame.split_to(data_len).freeze();
            frame.advance(pad_len(data_len));
            if digests.data {
                let got = frame.get_u32_le();
                if data_digest(&data) != got {
                    return Err(PduError::DataDigest { opcode: Opcode::from_byte(raw[0]), header: Box::new(raw) });
                }
            }
            data
        };
        let bhs = Bhs::decode(&raw)?;
        let ahs = decode_ahs(header.slice(BHS_LEN..)).map_err(|reason| PduError::Malformed {
            opcode: bhs.opcode(),
            reason,
            header: Box::new(raw),
        })?;
        Ok(Some(Pdu { bhs, ahs, data }))
    }

    /// Encodes the PDU for the wire. Data segment bytes are shared, not copied.
    pub fn encode(&self, digests: Digests) -> EncodedPdu {
        let ahs_len: usize = self.ahs.iter().map(|a| 4 + a.data.len() + pad_len(a.data.len())).sum();
        debug_assert!(ahs_len <= AHS_LEN_MAX, "AHS too long to encode");
        let data_len = self.data.len();
        debug_assert!(data_len < 1 << 24, "data segment too long to encode");
        let mut header = BytesMut::with_capacity(BHS_LEN + ahs_len + DIGEST_LEN);
        header.put_slice(&self.bhs.encode());
        header[4] = (ahs_len / 4) as u8;
        header[5..8].copy_from_slice(&(data_len as u32).to_be_bytes()[1..]);
        for a in &self.ahs {
            // AHSLength counts the type-specific byte and the payload, not the padding (§11.2.2).
            header.put_u16((a.data.len() + 1) as u16);
            header.put_u8(a.ahs_type);
            header.put_u8(a.specific);
            header.put_slice(&a.data);
            header.put_bytes(0, pad_len(a.data.len()));
        }
        if digests.header {
            let digest = crc32c(&header);
            header.put_u32_le(digest);
        }
        let mut trailer = [0u8; 3 + DIGEST_LEN];
        let mut trailer_len = 0;
        if data_len > 0 {
            trailer_len = pad_len(data_len);
            if digests.data {
                trailer[trailer_len..trailer_len + DIGEST_LEN].copy_from_slice(&data_digest(&self.data).to_le_bytes());
                trailer_len += DIGEST_LEN;
            }
        }
        EncodedPdu { header: header.freeze(), data: self.data.clone(), trailer, trailer_len: trailer_len as u8 }
    }

    /// The extended CDB bytes carried in an AHS, if any.
    pub fn extended_cdb(&self) -> Option<&Bytes> {
        self.ahs.iter().find(|a| a.ahs_type == AHS_EXTENDED_CDB).map(|a| &a.data)
    }
}

fn decode_ahs(mut raw: Bytes) -> Result<Vec<Ahs>, &'static str> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 4 {
            return Err("truncated AHS header");
        }
        let len = u16::from_be_bytes([raw[0], raw[1]]) as usize;
        if len == 0 {
            return Err("AHS with zero length");
        }
        let ahs_type = raw[2];
        let specific = raw[3];
        let payload = len - 1;
        let total = 4 + payload + pad_len(payload);
        if raw.len() < total {
            return Err("AHS length beyond the header");
        }
        out.push(Ahs { ahs_type, specific, data: raw.slice(4..4 + payload) });
        raw.advance(total);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
