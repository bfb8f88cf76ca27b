//! Third-party copy within a target (SPC-4 §6.4, LID1): EXTENDED COPY with
//! identification-descriptor target descriptors (0xE4) and block-to-block segments (0x02),
//! RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS), and the Third-party Copy VPD page
//! (0x8F). The copy manager copies within the logical unit that received the command or between
//! it and the other logical units of its target that the initiator sees (by NAA designator), so
//! VMware's XCOPY clones a disk within a datastore or moves it to another LUN without the data
//! crossing the network. A descriptor naming anything else, or another logical unit that could
//! not serve the initiator the same access itself (not ready, standby, write-protected,
//! reserved by someone else), is refused: COPY ABORTED, UNREACHABLE COPY TARGET, and the
//! initiator copies through the host instead.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome, store_sense};
use super::ops::Op;
use super::sense::{FieldPointer, Sense, asc, key};
use super::spc::truncate;
use crate::scsi::Nexus;

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

/// The other logical units of a target, as an EXTENDED COPY may name them.
pub trait CopyPeers: Sync {
    /// The logical unit with this NAA designator that `initiator` sees (LUN masking holds).
    fn by_naa(&self, naa: u64, initiator: &str) -> Option<Arc<LogicalUnit>>;
}

/// No other logical units: copies stay within the one that received the command.
pub struct NoPeers;

impl CopyPeers for NoPeers {
    fn by_naa(&self, _: u64, _: &str) -> Option<Arc<LogicalUnit>> {
        None
    }
}

/// A copy source or destination: the logical unit that received the command, or another one.
enum CopyTarget {
    Me,
    Peer(Arc<LogicalUnit>),
}

impl CopyTarget {
    fn lu<'a>(&'a self, me: &'a LogicalUnit) -> &'a LogicalUnit {
        match self {
            CopyTarget::Me => me,
            CopyTarget::Peer(lu) => lu,
        }
    }
}

/// One block-to-block segment, checked: indices into the resolved copy targets.
struct Segment {
    from: usize,
    to: usize,
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
    fn named_by(&self, d: &[u8]) -> bool {
        let block_size = u32::from_be_bytes([0, d[29], d[30], d[31]]);
        designated_naa(d) == Some(self.config.identity.naa) && block_size == self.block_size()
    }

    /// The logical unit a target descriptor names: this one, or another of the target that
    /// would let `nexus` do the same itself (`access`: read from it or write to it).
    fn copy_target(&self, d: &[u8], peers: &dyn CopyPeers, nexus: &Nexus, access: Op) -> Option<CopyTarget> {
        // NUL and non-block devices (PERIPHERAL DEVICE TYPE) are not copy targets.
        if d[1] & 0x20 != 0 || d[1] & 0x1f != 0 {
            return None;
        }
        if self.named_by(d) {
            return Some(CopyTarget::Me);
        }
        let peer = peers.by_naa(designated_naa(d)?, &nexus.initiator_name).filter(|lu| lu.named_by(d))?;
        let serves = peer.store.ready().is_ok()
            && !peer.is_standby()
            && !peer.reservation_conflict(nexus.id, access)
            && (access != Op::Write || peer.check_writable().is_ok());
        serves.then_some(CopyTarget::Peer(peer))
    }

    /// The segments of an EXTENDED COPY parameter list and the copy targets they name,
    /// checked in SPC-4's order: lengths, counts, types, then whether each target is reachable
    /// and each range fits it.
    fn copy_segments(
        &self,
        p: &[u8],
        peers: &dyn CopyPeers,
        nexus: &Nexus,
    ) -> Result<(Vec<CopyTarget>, Vec<Segment>), Sense> {
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
        let mut resolved = Vec::new();
        let mut out = Vec::new();
        for (offset, kind, d) in found {
            if kind != BLOCK_TO_BLOCK {
                return Err(Sense::illegal(UNSUPPORTED_SEGMENT_DESCRIPTOR));
            }
            if d.len() != 28 {
                return Err(invalid_param(offset + 2));
            }
            let mut target = |index: u16, access: Op| -> Result<usize, Sense> {
                let d = targets.chunks(TARGET_DESCRIPTOR_BYTES).nth(index as usize);
                let found = d.and_then(|d| self.copy_target(d, peers, nexus, access));
                resolved.push(found.ok_or(copy_aborted(UNREACHABLE_COPY_TARGET))?);
                Ok(resolved.len() - 1)
            };
            let from = target(u16::from_be_bytes([d[4], d[5]]), Op::Read)?;
            let to = target(u16::from_be_bytes([d[6], d[7]]), Op::Write)?;
            let (source_lu, destination_lu) = (resolved[from].lu(self), resolved[to].lu(self));
            // DC (bit 1 of byte 1): the count is in destination blocks; both must be one size.
            if source_lu.block_size() != destination_lu.block_size() {
                return Err(invalid_param(offset + 6));
            }
            let segment = Segment {
                from,
                to,
                blocks: u16::from_be_bytes([d[10], d[11]]) as u64,
                source: u64::from_be_bytes(d[12..20].try_into().expect("8 bytes")),
                destination: u64::from_be_bytes(d[20..28].try_into().expect("8 bytes")),
            };
            if segment.blocks * source_lu.block_size() as u64 > SEGMENT_BYTES_MAX as u64 {
                return Err(invalid_param(offset + 10));
            }
            let fits =
                |lu: &LogicalUnit, lba: u64| lba.checked_add(segment.blocks).is_some_and(|end| end <= lu.num_blocks());
            if !fits(source_lu, segment.source) || !fits(destination_lu, segment.destination) {
                return Err(copy_aborted(asc::NO_ADDITIONAL));
            }
            out.push(segment);
        }
        Ok((resolved, out))
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
        let (targets, segments) = self.copy_segments(p, ctx.peers, ctx.nexus)?;
        // Written to, this logical unit must be writable (another one that is not was found
        // unreachable above); a copy only out of it may read a write-protected one.
        if segments.iter().any(|s| matches!(targets[s.to], CopyTarget::Me)) {
            self.check_writable()?;
        }
        // No command sees part of an atomic write or a sanitize of any logical unit the copy
        // touches. Locks are taken in one order (by address), so two copies between the same
        // two logical units in opposite directions cannot wait on each other.
        let mut involved: Vec<&LogicalUnit> = std::iter::once(self).chain(targets.iter().map(|t| t.lu(self))).collect();
        involved.sort_by_key(|lu| *lu as *const LogicalUnit as usize);
        involved.dedup_by_key(|lu| *lu as *const LogicalUnit as usize);
        let mut _shared = Vec::with_capacity(involved.len());
        for lu in involved {
            _shared.push(lu.atomic.read().await);
        }
        let mut bytes = 0;
        for s in &segments {
            bytes += self.copy_segment(targets[s.from].lu(self), targets[s.to].lu(self), s).await?;
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

    /// Copies one segment in pieces; the bytes copied.
    async fn copy_segment(&self, source: &LogicalUnit, destination: &LogicalUnit, s: &Segment) -> Result<u64, Sense> {
        let bs = source.block_size() as u64;
        let (mut from, mut to) = (s.source * bs, s.destination * bs);
        let end = from + s.blocks * bs;
        // Forward in pieces; an overlapping copy within one logical unit towards higher
        // addresses goes backward.
        let same = std::ptr::eq(source, destination);
        let backward = same && to > from && to < end;
        let mut left = s.blocks * bs;
        while left > 0 {
            let n = left.min(PIECE_BYTES);
            let (src, dst) = match backward {
                true => (from + left - n, to + left - n),
                false => (from, to),
            };
            let data = source.store.read(src, n as usize).await.map_err(|e| store_sense(&e))?;
            let fua = destination.effective_fua(false);
            destination.store.write(dst, data, fua).await.map_err(|e| store_sense(&e))?;
            if !backward {
                from += n;
                to += n;
            }
            left -= n;
        }
        Ok(s.blocks * bs)
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

/// The NAA designator of an identification target descriptor (designator type 3, 8 bytes).
fn designated_naa(d: &[u8]) -> Option<u64> {
    let (designator_type, len) = (d[5] & 0x0f, d[7] as usize);
    match designator_type == 0x03 && len == 8 {
        true => Some(u64::from_be_bytes(d[8..16].try_into().expect("8 bytes"))),
        false => None,
    }
}
