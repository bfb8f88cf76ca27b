//! SPC-4 primary commands: INQUIRY and VPD pages, REQUEST SENSE, REPORT SUPPORTED OPERATION
//! CODES, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, RESERVE/RELEASE(6).

use bytes::{BufMut, Bytes, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome};
use super::ops::{self, OpSpec};
use super::sense::{Sense, asc};

/// Truncates response data to the allocation length.
pub(super) fn truncate(data: BytesMut, alloc_len: usize) -> Bytes {
    let mut data = data.freeze();
    data.truncate(alloc_len);
    data
}

/// T10 version descriptors: SAM-5, SPC-4, SBC-3, iSCSI.
const VERSION_DESCRIPTORS: [u16; 4] = [0x00a0, 0x0460, 0x04c0, 0x0960];

/// VPD pages we implement, sorted.
const VPD_PAGES: [u8; 7] = [0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2];

/// Designator header: code set, PIV/association/type, length.
fn designator(out: &mut BytesMut, proto_codeset: u8, piv_assoc_type: u8, value: &[u8]) {
    out.put_slice(&[proto_codeset, piv_assoc_type, 0, value.len() as u8]);
    out.put_slice(value);
}

/// A SCSI name string: NUL-terminated, padded to a multiple of four bytes.
fn scsi_name_string(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    while !v.len().is_multiple_of(4) {
        v.push(0);
    }
    v
}

fn padded(s: &str, len: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(len).collect();
    v.resize(len, b' ');
    v
}

impl LogicalUnit {
    pub(super) fn inquiry(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let evpd = ctx.cdb.bit(1, 0x01);
        if ctx.cdb.bit(1, 0x02) {
            return Err(Sense::invalid_cdb(1, Some(1))); // CmdDt is obsolete
        }
        let page = ctx.cdb.u8(2);
        let alloc = ctx.cdb.u16(3) as usize;
        if !evpd {
            if page != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            let mut out = self.standard_inquiry(0x00);
            claim_iscsi_version(&mut out, ctx.nexus);
            return Ok(truncate(out, alloc));
        }
        let data = match page {
            0x00 => self.vpd_supported_pages(),
            0x80 => self.vpd_unit_serial(),
            0x83 => self.vpd_device_identification(ctx),
            0x8f => self.vpd_third_party_copy(),
            0xb0 => self.vpd_block_limits(),
            0xb1 => self.vpd_block_device_characteristics(),
            0xb2 => self.vpd_logical_block_provisioning(),
            _ => return Err(Sense::invalid_cdb(2, None)),
        };
        Ok(truncate(data, alloc))
    }

    /// Standard INQUIRY data (SPC-4 §6.4.2) with the given peripheral qualifier.
    pub(super) fn standard_inquiry(&self, qualifier: u8) -> BytesMut {
        let mut out = standard_inquiry_data(
            qualifier,
            0x00,
            &self.config.identity.vendor,
            &self.config.identity.product,
            &self.config.identity.revision,
        );
        out[5] |= 0x30; // TPGS 11b: implicit and explicit (SET TARGET PORT GROUPS) asymmetric access
        out[5] |= 0x08; // 3PC: third-party copy (EXTENDED COPY)
        out
    }

    fn vpd_supported_pages(&self) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_slice(&[0x00, 0x00, 0x00, VPD_PAGES.len() as u8]);
        out.put_slice(&VPD_PAGES);
        out
    }

    fn vpd_unit_serial(&self) -> BytesMut {
        let serial = self.config.identity.serial.as_bytes();
        let mut out = BytesMut::new();
        out.put_slice(&[0x00, 0x80, 0x00, serial.len() as u8]);
        out.put_slice(serial);
        out
    }

    fn vpd_device_identification(&self, ctx: &Ctx<'_>) -> BytesMut {
        let id = &self.config.identity;
        let mut body = BytesMut::new();
        // Logical unit: NAA (binary) and T10 vendor id (ASCII).
        designator(&mut body, 0x01, 0x03, &id.naa.to_be_bytes());
        let mut t10 = padded(&id.vendor, 8);
        t10.extend_from_slice(id.serial.as_bytes());
        designator(&mut body, 0x02, 0x01, &t10);
        // Target port (association 01b, PIV=1, protocol iSCSI = 5): relative port and name.
        let port = ctx.nexus.relative_port.to_be_bytes();
        designator(&mut body, 0x51, 0x94, &[0, 0, port[0], port[1]]);
        // Its target port group (association 01b, type 5): the portal group, like the port.
        designator(&mut body, 0x01, 0x15, &[0, 0, port[0], port[1]]);
        designator(&mut body, 0x53, 0x98, &scsi_name_string(&ctx.nexus.target_port_name()));
        // Target device (association 10b): the target's name.
        designator(&mut body, 0x53, 0xa8, &scsi_name_string(&ctx.nexus.target_name));
        let mut out = BytesMut::new();
        out.put_slice(&[0x00, 0x83]);
        out.put_u16(body.len() as u16);
        out.put_slice(&body);
        out
    }

    /// The largest UNMAP / WRITE SAME range one command may cover, in blocks.
    pub(super) fn max_unmap_blocks(&self) -> u32 {
        // At most 1 GiB and 2^20 blocks (libiscsi checks the latter bound).
        ((1u64 << 30) / self.config.block_size as u64).min(1 << 20) as u32
    }

    pub(super) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
    pub(super) const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;

    pub(super) fn max_transfer_blocks(&self) -> u32 {
        self.config.max_transfer_bytes / self.config.block_size
    }

    fn vpd_block_limits(&self) -> BytesMut {
        let caps = self.store.caps();
        let bs = self.config.block_size as u64;
        let mut out = BytesMut::zeroed(64);
        out[1] = 0xb0;
        out[3] = 0x3c;
        // WSNZ 0: a WRITE SAME of zero blocks writes to the end (within the maximum length).
        out[5] = Self::MAX_COMPARE_AND_WRITE_BLOCKS;
        out[6..8].copy_from_slice(&1u16.to_be_bytes());
        out[8..12].copy_from_slice(&self.max_transfer_blocks().to_be_bytes());
        let optimal = (caps.optimal_transfer / bs) as u32;
        out[12..16].copy_from_slice(&optimal.to_be_bytes());
        out[16..20].copy_from_slice(&self.max_transfer_blocks().to_be_bytes());
        if caps.thin {
            out[20..24].copy_from_slice(&self.max_unmap_blocks().to_be_bytes());
            out[24..28].copy_from_slice(&Self::MAX_UNMAP_DESCRIPTORS.to_be_bytes());
            let granularity = (caps.unmap_granularity / bs).max(1) as u32;
            out[28..32].copy_from_slice(&granularity.to_be_bytes());
            out[32..36].copy_from_slice(&0x8000_0000u32.to_be_bytes()); // UGAVALID, alignment 0
        }
        out[36..44].copy_from_slice(&(self.max_unmap_blocks() as u64).to_be_bytes());
        // MAXIMUM ATOMIC TRANSFER LENGTH; alignment and granularity 0: any LBA, any length.
        out[44..48].copy_from_slice(&self.max_atomic_blocks().to_be_bytes());
        out
    }

    fn vpd_block_device_characteristics(&self) -> BytesMut {
        let mut out = BytesMut::zeroed(64);
        out[1] = 0xb1;
        out[3] = 0x3c;
        out[5] = 0x01; // MEDIUM ROTATION RATE: non-rotating medium
        if self.store.caps().thin {
            out[7] = 0x40; // WABEREQ 01b: a read after SANITIZE BLOCK ERASE succeeds (zeros)
        }
        out
    }

    fn vpd_logical_block_provisioning(&self) -> BytesMut {
        let thin = self.store.caps().thin;
        let mut out = BytesMut::zeroed(8);
        out[1] = 0xb2;
        out[3] = 0x04;
        if thin {
            // LBPU, LBPWS, LBPWS10 and LBPRZ; provisioning type 2 (thin).
            out[5] = 0x80 | 0x40 | 0x20 | 0x04;
            out[6] = 0x02;
        }
        out
    }

    pub(super) fn request_sense(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let desc = ctx.cdb.bit(1, 0x01);
        let alloc = ctx.cdb.u8(4) as usize;
        let sense = match self.take_unit_attention(ctx.nexus.id, true) {
            Some(code) => Sense::new(super::sense::key::UNIT_ATTENTION, code),
            None => Sense::new(super::sense::key::NO_SENSE, asc::NO_ADDITIONAL),
        };
        let data = sense.encode(desc);
        Ok(data.slice(..data.len().min(alloc)))
    }

    pub(super) fn report_supported_opcodes(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let rctd = ctx.cdb.bit(2, 0x80);
        let options = ctx.cdb.u8(2) & 0x07;
        let opcode = ctx.cdb.u8(3);
        let service_action = ctx.cdb.u16(4);
        let alloc = ctx.cdb.u32(6) as usize;
        let mut out = BytesMut::new();
        match options {
            0 => {
                out.put_u32(0);
                for spec in ops::commands().iter().filter(|s| self.supports(s)) {
                    out.put_u8(spec.opcode);
                    out.put_u8(0);
                    out.put_u16(spec.service_action.unwrap_or(0));
                    out.put_u8(0);
                    out.put_u8(if rctd { 0x02 } else { 0 } | spec.service_action.is_some() as u8);
                    out.put_u16(spec.cdb_len() as u16);
                    if rctd {
                        put_timeouts(&mut out);
                    }
                }
                let len = (out.len() - 4) as u32;
                out[..4].copy_from_slice(&len.to_be_bytes());
            }
            1..=3 => {
                let with_sa = ops::has_service_actions(opcode);
                let found: Option<&OpSpec> = match options {
                    1 if with_sa => return Err(Sense::invalid_cdb(2, Some(0))),
                    2 if !with_sa => return Err(Sense::invalid_cdb(2, Some(0))),
                    _ => ops::commands()
                        .iter()
                        .find(|s| s.opcode == opcode && (!with_sa || s.service_action == Some(service_action)))
                        .filter(|s| self.supports(s)),
                };
                match found {
                    Some(spec) => {
                        out.put_u8(0);
                        out.put_u8(if rctd { 0x80 } else { 0 } | 0x03); // supported per standard
                        out.put_u16(spec.cdb_len() as u16);
                        out.put_slice(spec.usage);
                        if rctd {
                            put_timeouts(&mut out);
                        }
                    }
                    None => out.put_slice(&[0, 0x01, 0, 0]), // not supported
                }
            }
            _ => return Err(Sense::invalid_cdb(2, Some(0))),
        }
        Ok(truncate(out, alloc))
    }

    pub(super) fn start_stop_unit(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let power_condition = ctx.cdb.u8(4) >> 4;
        let loej = ctx.cdb.bit(4, 0x02);
        // The medium is not removable: loading and ejecting are not possible.
        if loej && power_condition == 0 {
            return Err(Sense::invalid_cdb(4, Some(1)));
        }
        Ok(Bytes::new())
    }

    pub(super) fn prevent_allow(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let prevent = ctx.cdb.u8(4) & 0x03;
        let mut st = self.state();
        if prevent & 0x01 != 0 {
            st.prevent.insert(ctx.nexus.id);
        } else {
            st.prevent.remove(&ctx.nexus.id);
        }
        Ok(Bytes::new())
    }

    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-4 §6.40): what the iSCSI layer answers
    /// (`iscsi::conn`): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET and
    /// the target resets.
    pub(super) fn report_supported_tmfs(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let alloc = ctx.cdb.u32(6) as usize;
        let extended = ctx.cdb.bit(2, 0x80); // REPD: the 16-byte form
        let mut out = BytesMut::zeroed(if extended { 16 } else { 4 });
        out[0] = 0x80 | 0x40 | 0x10 | 0x08 | 0x04 | 0x02; // ATS, ATSS, CTSS, LURS, QTS, TRS
        out[1] = 0x04 | 0x02 | 0x01; // QAES, QTSS, ITNRS (RFC 7144, at iSCSIProtocolLevel 2)
        if extended {
            out[3] = 0x0c; // additional data length
        }
        Ok(truncate(out, alloc))
    }

    pub(super) fn reserve(&self, ctx: &mut Ctx<'_>) -> Outcome {
        // Third-party and extent reservations are not supported.
        if ctx.cdb.u8(1) & 0x1f != 0 {
            return Err(Sense::invalid_cdb(1, None));
        }
        let mut st = self.state();
        // A persistent reservation or registration makes RESERVE conflict (SPC-4 §5.13.3).
        if st.pr.active() {
            ctx.status = super::sense::status::RESERVATION_CONFLICT;
            return Ok(Bytes::new());
        }
        st.reserved_by = Some(ctx.nexus.id);
        Ok(Bytes::new())
    }

    pub(super) fn release(&self, ctx: &mut Ctx<'_>) -> Outcome {
        if ctx.cdb.u8(1) & 0x1f != 0 {
            return Err(Sense::invalid_cdb(1, None));
        }
        let mut st = self.state();
        // Releasing a reservation held by another nexus succeeds and changes nothing; so does
        // RELEASE while persistent reservations are in use (they hold no SPC-2 reservation).
        if st.reserved_by == Some(ctx.nexus.id) {
            st.reserved_by = None;
        }
        Ok(Bytes::new())
    }
}

/// Command timeouts descriptor (SPC-4 §6.35.4): no timeouts reported.
fn put_timeouts(out: &mut BytesMut) {
    out.put_u16(0x0a);
    out.put_u8(0);
    out.put_u8(0);
    out.put_u32(0);
    out.put_u32(0);
}

/// Puts the session's iSCSI version descriptor (the last of [`VERSION_DESCRIPTORS`]).
pub(super) fn claim_iscsi_version(out: &mut [u8], nexus: &super::Nexus) {
    let at = 58 + 2 * (VERSION_DESCRIPTORS.len() - 1);
    out[at..at + 2].copy_from_slice(&nexus.iscsi_version_descriptor().to_be_bytes());
}

/// Standard INQUIRY data for a direct-access device (or the "no LU" answer).
pub(super) fn standard_inquiry_data(
    qualifier: u8,
    device_type: u8,
    vendor: &str,
    product: &str,
    revision: &str,
) -> BytesMut {
    let mut out = BytesMut::zeroed(96);
    out[0] = (qualifier << 5) | device_type;
    out[2] = 0x06; // SPC-4
    out[3] = 0x12; // HISUP, response data format 2
    out[4] = (96 - 5) as u8;
    out[7] = 0x02; // CMDQUE
    out[8..16].copy_from_slice(&padded(vendor, 8));
    out[16..32].copy_from_slice(&padded(product, 16));
    out[32..36].copy_from_slice(&padded(revision, 4));
    for (i, d) in VERSION_DESCRIPTORS.iter().enumerate() {
        out[58 + 2 * i..60 + 2 * i].copy_from_slice(&d.to_be_bytes());
    }
    out
}
