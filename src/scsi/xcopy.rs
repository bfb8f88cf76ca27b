//! Third-party copy within a logical unit (SPC-4 §6.4, LID1): EXTENDED COPY with
//! identification-descriptor target descriptors (0xE4) and block-to-block segments (0x02),
//! RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS), and the Third-party Copy VPD page
//! (0x8F). The copy manager copies inside the logical unit that received the command: VMware's
//! XCOPY clones a disk within a datastore without the data crossing the network. A target
//! descriptor naming another logical unit is refused (COPY ABORTED, UNREACHABLE COPY TARGET).

use bytes::{BufMut, Bytes, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome, store_sense};
use super::sense::{FieldPointer, Sense, asc, key};
use super::spc::truncate;

/// Target (CSCD) descriptors one list may hold.
pub(super) const TARGET_DESCRIPTORS_MAX: u16 = 2;
/// Segment descriptors one list may hold.
pub(super) const SEGMENT_DESCRIPTORS_MAX: u16 = 8;
/// Bytes of target and segment descriptors together.
pub(super) const DESCRIPTOR_LIST_BYTES_MAX: u32 = 1024;
/// Bytes one segment may copy.
pub(super) const SEGMENT_BYTES_MAX: u32 = 16 << 20;
/// Copy results kept per I_T nexus (LIST ID USAGE = HOLD); the oldest go first.
pub(super) const RESULTS_PER_NEXUS_MAX: usize = 16;

const HEADER_BYTES: usize = 16;
const TARGET_DESCRIPTOR_BYTES: usize = 32;
const IDENTIFICATION_DESCRIPTOR: u8 = 0xe4;
const BLOCK_TO_BLOCK: u8 = 0x02;
/// Bytes copied at once (one read, one write).
const PIECE_BYTES: u64 = 1 << 20;

/// TOO MANY TARGET/SEGMENT DESCRIPTORS, UNSUPPORTED TARGET/SEGMENT DESCRIPTOR TYPE CODE.
const TOO_MANY_TARGET_DESCRIPTORS: (u8, u8) = (0x26, 0x06);
const UNSUPPORTED_TARGET_DESCRIPTOR: (u8, u8) = (0x26, 0x07);
const TOO_MANY_SEGMENT_DESCRIPTORS: (u8, u8) = (0x26, 0x08);
const UNSUPPORTED_SEGMENT_DESCRIPTOR: (u8, u8) = (0x26, 0x09);
/// UNREACHABLE COPY TARGET.
const UNREACHABLE_COPY_TARGET: (u8, u8) = (0x08, 0x04);

/// What a finished copy left for RECEIVE COPY RESULTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CopyResult {
    pub list_id: u8,
    pub segments: u16,
    pub bytes: u64,
}

/// One block-to-block segment, checked.
struct Segment {
    blocks: u64,
    source: u64,
    destination: u64,
}

fn invalid_param(byte: usize) -> Sense {
    Sense::invalid_param(byte as u16)
}

fn copy_aborted(code: (u8, u8)) -> Sense {
    Sense::new(key::COPY_ABORTED, code)
}

impl LogicalUnit {
    /// Whether a target descriptor names this logical unit: its NAA designator, and its
    /// block size.
    fn names_me(&self, d: &[u8]) -> bool {
        let designator_type = d[5] & 0x0f;
        let len = d[7] as usize;
        let naa = self.config.identity.naa.to_be_bytes();
        let block_size = u32::from_be_bytes([0, d[29], d[30], d[31]]);
        designator_type == 0x03 && len == naa.len() && d[8..8 + len] == naa && block_size == self.block_size()
    }

    /// The segments of an EXTENDED COPY parameter list, checked in SPC-4's order: lengths,
    /// counts, types, then whether each target is this logical unit and each range fits it.
    fn copy_segments(&self, p: &[u8]) -> Result<Vec<Segment>, Sense> {
        if p.len() < HEADER_BYTES {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let targets_len = u16::from_be_bytes([p[2], p[3]]) as usize;
        let segments_len = u32::from_be_bytes([p[8], p[9], p[10], p[11]]) as usize;
        let inline_len = u32::from_be_bytes([p[12], p[13], p[14], p[15]]) as usize;
        let listed = targets_len as u64 + segments_len as u64;
        if listed > DESCRIPTOR_LIST_BYTES_MAX as u64
            || HEADER_BYTES as u64 + listed + inline_len as u64 > p.len() as u64
        {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        if inline_len != 0 {
            return Err(invalid_param(12));
        }
        if !targets_len.is_multiple_of(TARGET_DESCRIPTOR_BYTES) {
            return Err(invalid_param(2));
        }
        let targets = &p[HEADER_BYTES..HEADER_BYTES + targets_len];
        if targets.len() / TARGET_DESCRIPTOR_BYTES > TARGET_DESCRIPTORS_MAX as usize {
            return Err(Sense::illegal(TOO_MANY_TARGET_DESCRIPTORS));
        }
        let segments = &p[HEADER_BYTES + targets_len..HEADER_BYTES + targets_len + segments_len];
        let mut found = Vec::new();
        let mut at = 0;
        while at < segments.len() {
            let d = &segments[at..];
            if d.len() < 4 {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let len = 4 + u16::from_be_bytes([d[2], d[3]]) as usize;
            if found.len() == SEGMENT_DESCRIPTORS_MAX as usize {
                return Err(Sense::illegal(TOO_MANY_SEGMENT_DESCRIPTORS));
            }
            found.push((HEADER_BYTES + targets_len + at, d[0], &d[..len.min(d.len())]));
            at += len;
        }
        for (i, d) in targets.chunks(TARGET_DESCRIPTOR_BYTES).enumerate() {
            // LU ID TYPE is ignored (SPC-4); NUL and non-block devices are not copy targets.
            if d[0] != IDENTIFICATION_DESCRIPTOR {
                let field = FieldPointer {
                    in_cdb: false,
                    byte: (HEADER_BYTES + i * TARGET_DESCRIPTOR_BYTES) as u16,
                    bit: None,
                };
                return Err(Sense { field: Some(field), ..Sense::illegal(UNSUPPORTED_TARGET_DESCRIPTOR) });
            }
        }
        let mut out = Vec::new();
        for (offset, kind, d) in found {
            if kind != BLOCK_TO_BLOCK {
                return Err(Sense::illegal(UNSUPPORTED_SEGMENT_DESCRIPTOR));
            }
            if d.len() != 28 {
                return Err(invalid_param(offset + 2));
            }
            // DC (bit 1 of byte 1): the count is in destination blocks; ours are the same size.
            let target = |index: u16| -> Result<(), Sense> {
                let d = targets.chunks(TARGET_DESCRIPTOR_BYTES).nth(index as usize);
                match d {
                    Some(d) if d[1] & 0x20 == 0 && d[1] & 0x1f == 0 && self.names_me(d) => Ok(()),
                    _ => Err(copy_aborted(UNREACHABLE_COPY_TARGET)),
                }
            };
            target(u16::from_be_bytes([d[4], d[5]]))?;
            target(u16::from_be_bytes([d[6], d[7]]))?;
            let segment = Segment {
                blocks: u16::from_be_bytes([d[10], d[11]]) as u64,
                source: u64::from_be_bytes(d[12..20].try_into().expect("8 bytes")),
                destination: u64::from_be_bytes(d[20..28].try_into().expect("8 bytes")),
            };
            if segment.blocks * self.block_size() as u64 > SEGMENT_BYTES_MAX as u64 {
                return Err(invalid_param(offset + 10));
            }
            let fits = |lba: u64| lba.checked_add(segment.blocks).is_some_and(|end| end <= self.num_blocks());
            if !fits(segment.source) || !fits(segment.destination) {
                return Err(copy_aborted(asc::NO_ADDITIONAL));
            }
            out.push(segment);
        }
        Ok(out)
    }

    pub(super) async fn extended_copy(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let len = ctx.cdb.u32(10) as usize;
        ctx.data_out_len = len as u32;
        if len == 0 {
            return Ok(Bytes::new());
        }
        if ctx.data_out.len() < len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let p = &ctx.data_out[..len];
        let list_id = p[0];
        // LIST ID USAGE: 00b hold the results, 10b discard them, 11b no list identifier.
        let hold = match (p[1] >> 3) & 0x03 {
            0b00 => true,
            0b10 | 0b11 => false,
            _ => return Err(invalid_param(1)),
        };
        self.check_writable()?;
        let segments = self.copy_segments(p)?;
        let bs = self.block_size() as u64;
        let mut bytes = 0;
        let _shared = self.atomic.read().await;
        for s in &segments {
            let (mut from, mut to) = (s.source * bs, s.destination * bs);
            let end = from + s.blocks * bs;
            // Forward in pieces; an overlapping copy towards higher addresses goes backward.
            let backward = to > from && to < end;
            let mut left = s.blocks * bs;
            while left > 0 {
                let n = left.min(PIECE_BYTES);
                let (src, dst) = match backward {
                    true => (from + left - n, to + left - n),
                    false => (from, to),
                };
                let data = self.store.read(src, n as usize).await.map_err(|e| store_sense(&e))?;
                self.store.write(dst, data, self.effective_fua(false)).await.map_err(|e| store_sense(&e))?;
                if !backward {
                    from += n;
                    to += n;
                }
                left -= n;
                bytes += n;
            }
        }
        if hold {
            let result = CopyResult { list_id, segments: segments.len() as u16, bytes };
            let mut st = self.state();
            let kept = st.copy_results.entry(ctx.nexus.id).or_default();
            kept.retain(|r| r.list_id != list_id);
            if kept.len() == RESULTS_PER_NEXUS_MAX {
                kept.remove(0);
            }
            kept.push(result);
        }
        Ok(Bytes::new())
    }

    pub(super) fn receive_copy_results(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let alloc = ctx.cdb.u32(10) as usize;
        let data = match ctx.cdb.service_action() {
            0x00 => {
                let list_id = ctx.cdb.u8(2);
                let st = self.state();
                let found = st.copy_results.get(&ctx.nexus.id).and_then(|r| r.iter().find(|r| r.list_id == list_id));
                let Some(r) = found.copied() else { return Err(Sense::invalid_cdb(2, None)) };
                let mut out = BytesMut::new();
                out.put_u32(8);
                out.put_u8(0x00); // HDD 0; copy manager status: completed without errors
                out.put_u16(r.segments);
                out.put_u8(0x00); // transfer count units: bytes
                out.put_u32(r.bytes.min(u32::MAX as u64) as u32);
                out
            }
            _ => self.operating_parameters(),
        };
        Ok(truncate(data, alloc))
    }

    fn operating_parameters(&self) -> BytesMut {
        const IMPLEMENTED: [u8; 2] = [BLOCK_TO_BLOCK, IDENTIFICATION_DESCRIPTOR];
        let mut out = BytesMut::new();
        out.put_u32(40 + IMPLEMENTED.len() as u32);
        out.put_u8(0x01); // SNLID: lists without an identifier are accepted
        out.put_slice(&[0, 0, 0]);
        out.put_u16(TARGET_DESCRIPTORS_MAX);
        out.put_u16(SEGMENT_DESCRIPTORS_MAX);
        out.put_u32(DESCRIPTOR_LIST_BYTES_MAX);
        out.put_u32(SEGMENT_BYTES_MAX);
        out.put_u32(0); // maximum inline data length
        out.put_u32(0); // held data limit
        out.put_u32(0); // maximum stream device transfer size
        out.put_u16(0);
        out.put_u16(1); // total concurrent copies
        out.put_u8(1); // maximum concurrent copies
        out.put_u8(self.block_size().trailing_zeros() as u8); // data segment granularity (log2)
        out.put_u8(0); // inline data granularity
        out.put_u8(0); // held data granularity
        out.put_slice(&[0, 0, 0]);
        out.put_u8(IMPLEMENTED.len() as u8);
        out.put_slice(&IMPLEMENTED);
        out
    }

    /// Third-party Copy VPD page (SPC-4 §7.8.17): the commands supported.
    pub(super) fn vpd_third_party_copy(&self) -> BytesMut {
        // EXTENDED COPY (LID1); RECEIVE COPY RESULTS: COPY STATUS, OPERATING PARAMETERS.
        let commands: [u8; 7] = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
        let mut descriptor = BytesMut::new();
        descriptor.put_u8(commands.len() as u8);
        descriptor.put_slice(&commands);
        descriptor.resize(descriptor.len().div_ceil(4) * 4, 0);
        let mut out = BytesMut::new();
        out.put_slice(&[0x00, 0x8f]);
        out.put_u16(4 + descriptor.len() as u16);
        out.put_u16(0x0001); // Supported Commands
        out.put_u16(descriptor.len() as u16);
        out.put_slice(&descriptor);
        out
    }
}
