//! Field access on CDBs and the decoding shared by the read/write command families.

/// Big-endian field access on a CDB. Out-of-range reads return zero: the dispatcher checks the
/// CDB is at least as long as the opcode's CDB length before any handler runs.
#[derive(Clone, Copy)]
pub struct Cdb<'a>(pub &'a [u8]);

impl Cdb<'_> {
    pub fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.u8(at), self.u8(at + 1)])
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_be_bytes([self.u8(at), self.u8(at + 1), self.u8(at + 2), self.u8(at + 3)])
    }
    pub fn u64(&self, at: usize) -> u64 {
        (self.u32(at) as u64) << 32 | self.u32(at + 4) as u64
    }
    pub fn bit(&self, at: usize, mask: u8) -> bool {
        self.u8(at) & mask != 0
    }
    pub fn opcode(&self) -> u8 {
        self.u8(0)
    }
    pub fn service_action(&self) -> u16 {
        (self.u8(1) & 0x1f) as u16
    }
    /// The control byte, last byte of the CDB for the opcode's length.
    pub fn control(&self, cdb_len: usize) -> u8 {
        self.u8(cdb_len - 1)
    }
}

/// LBA, length and flags of a READ/WRITE/VERIFY-family CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub lba: u64,
    pub blocks: u32,
    /// Byte 1 of the CDB: protect field, DPO, FUA, BYTCHK and friends.
    pub flags: u8,
}

impl BlockRange {
    pub fn fua(&self) -> bool {
        self.flags & 0x08 != 0
    }
    /// RDPROTECT / WRPROTECT / VRPROTECT / ORPROTECT.
    pub fn protect(&self) -> u8 {
        self.flags >> 5
    }
}

/// Decodes the LBA and transfer length of a 6, 10, 12 or 16 byte CDB of the block families.
pub fn block_range(cdb: Cdb<'_>) -> BlockRange {
    let flags = cdb.u8(1);
    match cdb.opcode() >> 5 {
        // Group 0: 6-byte CDBs. A transfer length of 0 means 256 blocks for READ/WRITE(6).
        0 => {
            let lba = ((cdb.u8(1) & 0x1f) as u64) << 16 | cdb.u16(2) as u64;
            let blocks = match cdb.u8(4) {
                0 => 256,
                n => n as u32,
            };
            BlockRange { lba, blocks, flags: 0 }
        }
        // Groups 1 and 2: 10-byte CDBs.
        1 | 2 => BlockRange { lba: cdb.u32(2) as u64, blocks: cdb.u16(7) as u32, flags },
        // Group 5: 12-byte CDBs.
        5 => BlockRange { lba: cdb.u32(2) as u64, blocks: cdb.u32(6), flags },
        // Group 4: 16-byte CDBs.
        _ => BlockRange { lba: cdb.u64(2), blocks: cdb.u32(10), flags },
    }
}

#[cfg(test)]
/// The length of a CDB as implied by its opcode's group code (SPC-4 §4.2.5.1).
pub fn cdb_len_for_opcode(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_cdb_size() {
        let r6 = block_range(Cdb(&[0x08, 0x1f, 0xff, 0xfe, 0, 0]));
        assert_eq!((r6.lba, r6.blocks), (0x1f_fffe, 256));
        let r10 = block_range(Cdb(&[0x28, 0x08, 0, 0, 1, 0, 0, 0, 8, 0]));
        assert_eq!((r10.lba, r10.blocks, r10.fua()), (256, 8, true));
        let r12 = block_range(Cdb(&[0xa8, 0x60, 0, 0, 0, 9, 0, 1, 0, 0, 0, 0]));
        assert_eq!((r12.lba, r12.blocks, r12.protect()), (9, 65536, 3));
        let mut c16 = [0u8; 16];
        c16[0] = 0x88;
        c16[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
        c16[10..14].copy_from_slice(&7u32.to_be_bytes());
        let r16 = block_range(Cdb(&c16));
        assert_eq!((r16.lba, r16.blocks), (1 << 40, 7));
    }
}
