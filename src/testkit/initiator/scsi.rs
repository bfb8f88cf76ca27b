//! The block helpers of a session: READ(16), WRITE(16) (with FUA), WRITE ATOMIC(16),
//! SYNCHRONIZE CACHE, UNMAP, READ CAPACITY, and clearing unit attentions.

use bytes::Bytes;

use super::{Error, Result, Session};

impl Session {
    pub async fn read(&self, lun: u16, lba: u64, blocks: u32, block_size: u32) -> Result<Bytes> {
        let r = self.command(lun, &rw16(0x88, lba, blocks, 0), Bytes::new(), blocks * block_size).await?.ok()?;
        Ok(r.data)
    }

    pub async fn write(&self, lun: u16, lba: u64, data: Bytes, block_size: u32, fua: bool) -> Result<()> {
        let blocks = (data.len() / block_size as usize) as u32;
        self.command(lun, &rw16(0x8a, lba, blocks, if fua { 0x08 } else { 0 }), data, 0).await?.ok()?;
        Ok(())
    }

    /// WRITE ATOMIC(16): all of `data` or none of it, durable when acknowledged. Its
    /// two-byte TRANSFER LENGTH is the low half of WRITE(16)'s field.
    pub async fn write_atomic(&self, lun: u16, lba: u64, data: Bytes, block_size: u32) -> Result<()> {
        let blocks = (data.len() / block_size as usize) as u32;
        self.command(lun, &rw16(0x9c, lba, blocks, 0), data, 0).await?.ok()?;
        Ok(())
    }

    /// SYNCHRONIZE CACHE(16) of the whole LU.
    pub async fn flush(&self, lun: u16) -> Result<()> {
        self.command(lun, &rw16(0x91, 0, 0, 0), Bytes::new(), 0).await?.ok()?;
        Ok(())
    }

    /// UNMAP of (lba, blocks) ranges.
    pub async fn unmap(&self, lun: u16, ranges: &[(u64, u32)]) -> Result<()> {
        let mut param = Vec::with_capacity(8 + 16 * ranges.len());
        param.extend_from_slice(&((6 + 16 * ranges.len()) as u16).to_be_bytes());
        param.extend_from_slice(&((16 * ranges.len()) as u16).to_be_bytes());
        param.extend_from_slice(&[0; 4]);
        for (lba, blocks) in ranges {
            param.extend_from_slice(&lba.to_be_bytes());
            param.extend_from_slice(&blocks.to_be_bytes());
            param.extend_from_slice(&[0; 4]);
        }
        let len = param.len() as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x42;
        cdb[7..9].copy_from_slice(&len.to_be_bytes());
        self.command(lun, &cdb, Bytes::from(param), 0).await?.ok()?;
        Ok(())
    }

    /// READ CAPACITY(16): (number of blocks, block size).
    pub async fn capacity(&self, lun: u16) -> Result<(u64, u32)> {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[13] = 32;
        let r = self.command(lun, &cdb, Bytes::new(), 32).await?.ok()?;
        if r.data.len() < 12 {
            return Err(Error::Protocol("short READ CAPACITY(16) data".into()));
        }
        let last = u64::from_be_bytes(r.data[..8].try_into().expect("8"));
        Ok((last + 1, u32::from_be_bytes(r.data[8..12].try_into().expect("4"))))
    }

    /// TEST UNIT READY until it stops reporting unit attentions (at most 10 times).
    pub async fn clear_unit_attentions(&self, lun: u16) -> Result<()> {
        for _ in 0..10 {
            let r = self.command(lun, &[0; 6], Bytes::new(), 0).await?;
            if r.sense_code().map(|s| s.0) != Some(0x6) {
                r.ok()?;
                return Ok(());
            }
        }
        Err(Error::Protocol("unit attentions keep coming".into()))
    }
}

/// A 16-byte READ/WRITE-family CDB.
pub fn rw16(opcode: u8, lba: u64, blocks: u32, flags: u8) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = opcode;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}
