//! MODE SENSE and MODE SELECT (6 and 10) with the Read-Write Error Recovery, Caching and
//! Control pages. Changeable bits: WCE (caching), D_SENSE and SWP (control).

use bytes::{BufMut, BytesMut};

use super::lu::{Ctx, LogicalUnit, Outcome};
use super::sense::{Sense, asc};
use super::spc::truncate;

const PAGE_RW_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0a;
const PAGE_ALL: u8 = 0x3f;
const PAGES: [u8; 3] = [PAGE_RW_ERROR_RECOVERY, PAGE_CACHING, PAGE_CONTROL];

/// Page control of MODE SENSE.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pc {
    Current,
    Changeable,
    Default,
}

impl LogicalUnit {
    /// One mode page as current, changeable-mask or default values.
    fn mode_page(&self, page: u8, pc: Pc) -> Vec<u8> {
        let (wce, d_sense, swp) = match pc {
            Pc::Current => {
                let st = self.state();
                (st.wce, st.d_sense, st.swp)
            }
            Pc::Changeable => (true, true, true),
            Pc::Default => (true, false, false),
        };
        let current = pc != Pc::Changeable;
        match page {
            PAGE_RW_ERROR_RECOVERY => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_RW_ERROR_RECOVERY;
                p[1] = 10;
                if current {
                    p[2] = 0xc0; // AWRE, ARRE
                }
                p
            }
            PAGE_CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = PAGE_CACHING;
                p[1] = 18;
                if wce {
                    p[2] |= 0x04;
                }
                p
            }
            PAGE_CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_CONTROL;
                p[1] = 10;
                if d_sense {
                    p[2] |= 0x04;
                }
                if swp {
                    p[4] |= 0x08;
                }
                if current {
                    p[2] |= 0x20; // TST 001b: a task set per I_T nexus (task attributes order its commands)
                    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                    p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
                }
                p
            }
            _ => unreachable!("unknown mode page {page:#x}"),
        }
    }

    pub(super) fn mode_sense(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let ten = ctx.cdb.opcode() == 0x5a;
        let dbd = ctx.cdb.bit(1, 0x08);
        let llbaa = ten && ctx.cdb.bit(1, 0x10);
        let pc = match ctx.cdb.u8(2) >> 6 {
            0 => Pc::Current,
            1 => Pc::Changeable,
            2 => Pc::Default,
            _ => return Err(Sense::illegal(asc::SAVING_PARAMETERS_NOT_SUPPORTED)),
        };
        let page = ctx.cdb.u8(2) & 0x3f;
        let subpage = ctx.cdb.u8(3);
        let alloc = if ten { ctx.cdb.u16(7) as usize } else { ctx.cdb.u8(4) as usize };
        let pages: Vec<u8> = match (page, subpage) {
            (PAGE_ALL, 0x00 | 0xff) => PAGES.to_vec(),
            (p, 0x00 | 0xff) if PAGES.contains(&p) => vec![p],
            (p, _) if PAGES.contains(&p) || p == PAGE_ALL => {
                return Err(Sense::invalid_cdb(3, None));
            }
            _ => return Err(Sense::invalid_cdb(2, Some(5))),
        };

        let blocks = self.num_blocks();
        let block_desc: Vec<u8> = if dbd {
            Vec::new()
        } else if llbaa {
            let mut d = vec![0u8; 16];
            d[..8].copy_from_slice(&blocks.to_be_bytes());
            d[12..16].copy_from_slice(&self.block_size().to_be_bytes());
            d
        } else {
            let mut d = vec![0u8; 8];
            d[..4].copy_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
            d[5..8].copy_from_slice(&self.block_size().to_be_bytes()[1..]);
            d
        };
        // Device-specific parameter: WP, DPOFUA.
        let write_protected = self.config.read_only || self.state().swp;
        let device_specific = if write_protected { 0x80 } else { 0 } | 0x10;
        let mut out = BytesMut::new();
        if ten {
            out.put_u16(0);
            out.put_u8(0);
            out.put_u8(device_specific);
            out.put_u8(llbaa as u8);
            out.put_u8(0);
            out.put_u16(block_desc.len() as u16);
        } else {
            out.put_u8(0);
            out.put_u8(0);
            out.put_u8(device_specific);
            out.put_u8(block_desc.len() as u8);
        }
        out.put_slice(&block_desc);
        for p in pages {
            out.put_slice(&self.mode_page(p, pc));
        }
        // MODE DATA LENGTH excludes itself.
        if ten {
            let len = (out.len() - 2) as u16;
            out[..2].copy_from_slice(&len.to_be_bytes());
        } else {
            out[0] = (out.len() - 1).min(255) as u8;
        }
        Ok(truncate(out, alloc))
    }

    pub(super) fn mode_select(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let ten = ctx.cdb.opcode() == 0x55;
        let pf = ctx.cdb.bit(1, 0x10);
        let sp = ctx.cdb.bit(1, 0x01);
        let len = if ten { ctx.cdb.u16(7) as usize } else { ctx.cdb.u8(4) as usize };
        ctx.data_out_len = len as u32;
        if sp {
            return Err(Sense::invalid_cdb(1, Some(0)));
        }
        if len == 0 {
            return Ok(bytes::Bytes::new());
        }
        if !pf {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        let data = ctx.data_out;
        if data.len() < len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let data = &data[..len];
        let header_len = if ten { 8 } else { 4 };
        if data.len() < header_len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let bd_len = if ten { u16::from_be_bytes([data[6], data[7]]) as usize } else { data[3] as usize };
        let mut at = header_len;
        if bd_len > 0 {
            let long = ten && data[4] & 0x01 != 0;
            let want = if long { 16 } else { 8 };
            if bd_len != want || data.len() < at + bd_len {
                return Err(Sense::invalid_param(if ten { 6 } else { 3 }));
            }
            let d = &data[at..at + bd_len];
            let block_len = if long {
                u32::from_be_bytes(d[12..16].try_into().expect("4"))
            } else {
                u32::from_be_bytes([0, d[5], d[6], d[7]])
            };
            if block_len != self.block_size() {
                return Err(Sense::invalid_param((at + if long { 12 } else { 5 }) as u16));
            }
            at += bd_len;
        }
        // Validate every page before applying any.
        let mut changes: Vec<(u8, Vec<u8>)> = Vec::new();
        while at < data.len() {
            if data.len() < at + 2 {
                return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
            }
            let code = data[at] & 0x3f;
            if data[at] & 0x40 != 0 || !PAGES.contains(&code) {
                return Err(Sense::invalid_param(at as u16));
            }
            let page = &data[at..(at + 2 + data[at + 1] as usize).min(data.len())];
            let current = self.mode_page(code, Pc::Current);
            let mask = self.mode_page(code, Pc::Changeable);
            if page.len() != current.len() || data[at + 1] as usize != current.len() - 2 {
                return Err(Sense::invalid_param(at as u16 + 1));
            }
            for i in 2..page.len() {
                if (page[i] ^ current[i]) & !mask[i] != 0 {
                    return Err(Sense::invalid_param((at + i) as u16));
                }
            }
            changes.push((code, page.to_vec()));
            at += page.len();
        }
        let mut changed = false;
        {
            let mut st = self.state();
            for (code, page) in changes {
                match code {
                    PAGE_CACHING => {
                        let wce = page[2] & 0x04 != 0;
                        changed |= wce != st.wce;
                        st.wce = wce;
                    }
                    PAGE_CONTROL => {
                        let (d_sense, swp) = (page[2] & 0x04 != 0, page[4] & 0x08 != 0);
                        changed |= d_sense != st.d_sense || swp != st.swp;
                        st.d_sense = d_sense;
                        st.swp = swp;
                    }
                    _ => {}
                }
            }
            self.store.set_write_cache(st.wce);
        }
        if changed {
            self.unit_attention_all(asc::MODE_PARAMETERS_CHANGED, Some(ctx.nexus.id));
        }
        Ok(bytes::Bytes::new())
    }
}
