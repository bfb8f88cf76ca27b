//! SBC-3 block commands: READ CAPACITY, READ/WRITE (6/10/12/16), WRITE AND VERIFY, VERIFY,
//! PRE-FETCH, SYNCHRONIZE CACHE, WRITE SAME, UNMAP, GET LBA STATUS, ORWRITE, COMPARE AND WRITE.

use bytes::{BufMut, Bytes, BytesMut};

use super::cdb::{BlockRange, block_range};
use super::lu::{Ctx, LogicalUnit, Outcome, store_sense};
use super::sense::{Sense, asc, key, status};
use super::spc::truncate;

/// Byte offset of the transfer length field, for field pointers.
fn length_field(opcode: u8) -> u16 {
    match opcode >> 5 {
        0 => 4,
        1 | 2 => 7,
        5 => 6,
        _ => 10,
    }
}

impl LogicalUnit {
    /// Byte offset and length of a block range. Saturates: callers check the range against
    /// the medium before any I/O, and hostile LBAs must not overflow on the way.
    fn byte_range(&self, lba: u64, blocks: u64) -> (u64, u64) {
        let bs = self.block_size() as u64;
        (lba.saturating_mul(bs), blocks.saturating_mul(bs))
    }

    /// LBA OUT OF RANGE unless `[lba, lba + blocks)` lies within the medium.
    pub(super) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        let n = self.num_blocks();
        if lba > n || blocks > n - lba {
            return Err(Sense::illegal(asc::LBA_OUT_OF_RANGE));
        }
        Ok(())
    }

    /// Common checks of the read/write families: protection field, transfer length, range.
    fn check_rw(&self, ctx: &Ctx<'_>, r: &BlockRange) -> Result<(), Sense> {
        if r.protect() != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        if r.blocks > self.max_transfer_blocks() {
            return Err(Sense::invalid_cdb(length_field(ctx.cdb.opcode()), None));
        }
        self.check_range(r.lba, r.blocks as u64)
    }

    /// DATA PROTECT for a LUN configured read-only, or write-protected by MODE SELECT (SWP).
    pub(super) fn check_writable(&self) -> Result<(), Sense> {
        if self.config.read_only {
            return Err(Sense::new(key::DATA_PROTECT, asc::WRITE_PROTECTED));
        }
        if self.state().swp {
            return Err(Sense::new(key::DATA_PROTECT, asc::SOFTWARE_WRITE_PROTECTED));
        }
        Ok(())
    }

    /// The data-out of a parameter-list or single-block command: exactly `len` bytes.
    fn data_out(&self, ctx: &mut Ctx<'_>, len: u64) -> Result<Bytes, Sense> {
        ctx.data_out_len = len as u32;
        if (ctx.data_out.len() as u64) < len {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        Ok(ctx.data_out.slice(..len as usize))
    }

    /// The blocks a WRITE-family command really writes. When the initiator's expected length
    /// is shorter than the CDB's, only the whole blocks it sent are written and the residual
    /// tells the initiator (FCP-4 rule a); a partial block is refused with INVALID FIELD IN
    /// INFORMATION UNIT and nothing written (rule b).
    fn write_payload(&self, ctx: &mut Ctx<'_>, blocks: u32) -> Result<(u32, Bytes), Sense> {
        let bs = self.block_size() as u64;
        let wanted = blocks as u64 * bs;
        ctx.data_out_len = wanted as u32;
        let sent = ctx.data_out.len() as u64;
        if sent >= wanted {
            return Ok((blocks, ctx.data_out.slice(..wanted as usize)));
        }
        if !sent.is_multiple_of(bs) {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_INFORMATION_UNIT));
        }
        Ok(((sent / bs) as u32, ctx.data_out.slice(..sent as usize)))
    }

    /// FUA when asked, or always when the write cache is disabled.
    pub(super) fn effective_fua(&self, fua: bool) -> bool {
        fua || (self.store.caps().volatile_cache && !self.write_cache_enabled())
    }

    pub(super) fn read_capacity10(&self, _ctx: &mut Ctx<'_>) -> Outcome {
        let last = self.num_blocks() - 1;
        let mut out = BytesMut::with_capacity(8);
        out.put_u32(last.min(0xffff_ffff) as u32);
        out.put_u32(self.block_size());
        Ok(out.freeze())
    }

    pub(super) fn read_capacity16(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let alloc = ctx.cdb.u32(10) as usize;
        let mut out = BytesMut::zeroed(32);
        out[..8].copy_from_slice(&(self.num_blocks() - 1).to_be_bytes());
        out[8..12].copy_from_slice(&self.block_size().to_be_bytes());
        if self.store.caps().thin {
            out[14] = 0x80 | 0x40; // LBPME, LBPRZ
        }
        Ok(truncate(out, alloc))
    }

    pub(super) async fn read(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let r = block_range(ctx.cdb);
        self.check_rw(ctx, &r)?;
        if r.blocks == 0 {
            return Ok(Bytes::new());
        }
        let (offset, len) = self.byte_range(r.lba, r.blocks as u64);
        // Only what the transport delivers is read: an initiator asking for 64 MiB with an
        // expected length of 512 bytes must not make us allocate 64 MiB.
        let bs = self.block_size() as u64;
        let delivered = (ctx.data_in_max as u64).div_ceil(bs) * bs;
        if delivered < len {
            ctx.data_in_called_for = Some(len);
        }
        // Shared with writes, so an atomic write (which holds it alone) is seen whole or not.
        let _shared = self.atomic.read().await;
        self.store.read(offset, len.min(delivered) as usize).await.map_err(|e| store_sense(&e))
    }

    pub(super) async fn write(&self, ctx: &mut Ctx<'_>, verify: bool) -> Outcome {
        let r = block_range(ctx.cdb);
        ctx.data_out_len = r.blocks.saturating_mul(self.block_size());
        self.check_writable()?;
        self.check_rw(ctx, &r)?;
        let (blocks, data) = self.write_payload(ctx, r.blocks)?;
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        let (offset, _) = self.byte_range(r.lba, blocks as u64);
        // WRITE AND VERIFY has no FUA bit and, like a WRITE, may complete in the write cache:
        // what it reads back to verify is the data just written, so the comparison cannot fail.
        let fua = !verify && r.fua();
        let _shared = self.atomic.read().await;
        self.store.write(offset, data, self.effective_fua(fua)).await.map_err(|e| store_sense(&e))?;
        Ok(Bytes::new())
    }

    /// The most blocks one WRITE ATOMIC may write (Block Limits VPD); 0: no atomic writes.
    pub(super) fn max_atomic_blocks(&self) -> u32 {
        let most = self.store.caps().atomic_write_max / self.block_size() as u64;
        most.min(self.max_transfer_blocks() as u64) as u32
    }

    /// WRITE ATOMIC(16) (SBC-4 §5.48): all the blocks or none, through a crash too, and never
    /// seen in part by a concurrent command.
    pub(super) async fn write_atomic(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let lba = ctx.cdb.u64(2);
        let blocks = ctx.cdb.u16(12) as u64;
        let bs = self.block_size() as u64;
        ctx.data_out_len = (blocks * bs) as u32;
        self.check_writable()?;
        if ctx.cdb.u8(1) >> 5 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7))); // WRPROTECT: no protection information
        }
        self.check_range(lba, blocks)?;
        if blocks > self.max_atomic_blocks() as u64 {
            return Err(Sense::invalid_cdb(12, None));
        }
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        // Part of an atomic write is not what was asked for: a short data-out writes nothing.
        if (ctx.data_out.len() as u64) < blocks * bs {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_INFORMATION_UNIT));
        }
        let data = ctx.data_out.slice(..(blocks * bs) as usize);
        let (offset, _) = self.byte_range(lba, blocks);
        let fua = self.effective_fua(ctx.cdb.bit(1, 0x08));
        let _exclusive = self.atomic.write().await;
        self.store.write_atomic(offset, data, fua).await.map_err(|e| store_sense(&e))?;
        Ok(Bytes::new())
    }

    pub(super) async fn verify(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let r = block_range(ctx.cdb);
        let bytchk = (ctx.cdb.u8(1) >> 1) & 0x03;
        let bs = self.block_size() as u64;
        let (offset, len) = self.byte_range(r.lba, r.blocks as u64);
        ctx.data_out_len = match bytchk {
            0 => 0,
            1 => len.min(u32::MAX as u64) as u32,
            3 => bs as u32,
            _ => return Err(Sense::invalid_cdb(1, Some(2))),
        };
        self.check_rw(ctx, &r)?;
        if bytchk == 0 || r.blocks == 0 {
            // Medium verification: our media have no latent errors to find.
            return Ok(Bytes::new());
        }
        let expected = self.data_out(ctx, ctx.data_out_len as u64)?;
        let mismatch = if bytchk == 1 {
            // As long as the data-out the initiator sent: bounded by its expected length.
            let medium = self.store.read(offset, len as usize).await.map_err(|e| store_sense(&e))?;
            first_difference(&medium, &expected)
        } else {
            // One block sent for the whole range: read it a bounded piece at a time.
            const PIECE: u64 = 1 << 20;
            let mut found = None;
            let mut at = 0;
            while at < len && found.is_none() {
                let n = (PIECE / bs * bs).max(bs).min(len - at);
                let medium = self.store.read(offset + at, n as usize).await.map_err(|e| store_sense(&e))?;
                found = medium
                    .chunks(bs as usize)
                    .enumerate()
                    .find_map(|(i, block)| first_difference(block, &expected).map(|d| at + i as u64 * bs + d));
                at += n;
            }
            found
        };
        match mismatch {
            Some(at) => Err(Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(at)),
            None => Ok(Bytes::new()),
        }
    }

    pub(super) fn pre_fetch(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let r = block_range(ctx.cdb);
        self.check_range(r.lba, r.blocks as u64)?;
        // Nothing is cached ahead; the blocks would fit, so report CONDITION MET.
        ctx.status = status::CONDITION_MET;
        Ok(Bytes::new())
    }

    pub(super) async fn synchronize_cache(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let r = block_range(ctx.cdb);
        self.check_range(r.lba, r.blocks as u64)?;
        if crate::mutants::active(crate::mutants::Mutant::SyncBeforeFlush) {
            return Ok(Bytes::new());
        }
        // The whole store is flushed: narrower ranges are not worth tracking.
        self.store.flush().await.map_err(|e| store_sense(&e))?;
        Ok(Bytes::new())
    }

    pub(super) async fn write_same(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let sixteen = ctx.cdb.opcode() == 0x93;
        let (lba, blocks) = if sixteen {
            (ctx.cdb.u64(2), ctx.cdb.u32(10) as u64)
        } else {
            (ctx.cdb.u32(2) as u64, ctx.cdb.u16(7) as u64)
        };
        let flags = ctx.cdb.u8(1);
        let unmap = flags & 0x08 != 0;
        let anchor = flags & 0x10 != 0;
        let ndob = sixteen && flags & 0x01 != 0;
        let bs = self.block_size() as u64;
        ctx.data_out_len = if ndob { 0 } else { bs as u32 };
        self.check_writable()?;
        if flags >> 5 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        if anchor {
            return Err(Sense::invalid_cdb(1, Some(4)));
        }
        // WSNZ=0: zero blocks means every block from the LBA to the end, which must then be
        // within MAXIMUM WRITE SAME LENGTH as any other count.
        let blocks = match blocks {
            0 => self.num_blocks().checked_sub(lba).ok_or_else(|| Sense::illegal(asc::LBA_OUT_OF_RANGE))?,
            n => n,
        };
        if blocks > self.max_unmap_blocks() as u64 {
            return Err(Sense::invalid_cdb(length_field(ctx.cdb.opcode()), None));
        }
        if (unmap || ndob) && !self.store.caps().thin {
            return Err(Sense::invalid_cdb(1, Some(3)));
        }
        self.check_range(lba, blocks)?;
        let expected_len = if ndob { 0 } else { bs };
        if ctx.data_out.len() as u64 != expected_len {
            return Err(Sense::illegal(asc::INVALID_FIELD_IN_INFORMATION_UNIT));
        }
        let block = if ndob { Bytes::from(vec![0u8; bs as usize]) } else { ctx.data_out.clone() };
        let (offset, len) = self.byte_range(lba, blocks);
        let _shared = self.atomic.read().await;
        // UNMAP set: the blocks are unmapped whatever the block sent (SBC-4 §5.50: an unmap
        // operation; they then read as zeros, LBPRZ), as LIO and tgt do.
        if unmap || ndob {
            self.store.unmap(offset, len).await.map_err(|e| store_sense(&e))?;
            return Ok(Bytes::new());
        }
        // Replicate the block into a bounded buffer and write it piece by piece.
        const PIECE: u64 = 1 << 20;
        let per_piece = (PIECE / bs).max(1);
        let mut buf = BytesMut::with_capacity((per_piece * bs).min(len) as usize);
        for _ in 0..per_piece.min(blocks) {
            buf.put_slice(&block);
        }
        let buf = buf.freeze();
        let fua = self.effective_fua(false);
        let mut at = offset;
        while at < offset + len {
            let n = (buf.len() as u64).min(offset + len - at);
            self.store.write(at, buf.slice(..n as usize), fua).await.map_err(|e| store_sense(&e))?;
            at += n;
        }
        Ok(Bytes::new())
    }

    pub(super) async fn unmap(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let param_len = ctx.cdb.u16(7) as usize;
        ctx.data_out_len = param_len as u32;
        self.check_writable()?;
        if ctx.cdb.bit(1, 0x01) {
            return Err(Sense::invalid_cdb(1, Some(0))); // ANCHOR
        }
        if param_len == 0 {
            return Ok(Bytes::new());
        }
        let data = self.data_out(ctx, param_len as u64)?;
        if param_len < 8 {
            return Err(Sense::illegal(asc::PARAMETER_LIST_LENGTH_ERROR));
        }
        let desc_len = u16::from_be_bytes([data[2], data[3]]) as usize;
        let desc_len = desc_len.min(param_len - 8) / 16 * 16;
        let count = desc_len / 16;
        if count as u32 > Self::MAX_UNMAP_DESCRIPTORS {
            return Err(Sense::invalid_param(2));
        }
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let d = &data[8 + i * 16..8 + (i + 1) * 16];
            let lba = u64::from_be_bytes(d[..8].try_into().expect("8"));
            let blocks = u32::from_be_bytes(d[8..12].try_into().expect("4")) as u64;
            if blocks > self.max_unmap_blocks() as u64 {
                return Err(Sense::invalid_param((8 + i * 16 + 8) as u16));
            }
            self.check_range(lba, blocks)?;
            if blocks > 0 {
                ranges.push(self.byte_range(lba, blocks));
            }
        }
        let _shared = self.atomic.read().await;
        for (offset, len) in ranges {
            self.store.unmap(offset, len).await.map_err(|e| store_sense(&e))?;
        }
        Ok(Bytes::new())
    }

    pub(super) async fn get_lba_status(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let lba = ctx.cdb.u64(2);
        let alloc = ctx.cdb.u32(10) as usize;
        if lba >= self.num_blocks() {
            return Err(Sense::illegal(asc::LBA_OUT_OF_RANGE));
        }
        let bs = self.block_size() as u64;
        // Report at most what fits the allocation length, from a bounded window.
        let descriptors_max = (alloc.saturating_sub(8) / 16).clamp(1, 1024);
        let window = (self.num_blocks() - lba).min(self.max_unmap_blocks() as u64);
        let extents = self.store.mapped_extents(lba * bs, window * bs).await.map_err(|e| store_sense(&e))?;
        let mut out = BytesMut::new();
        out.put_u32(0);
        out.put_u32(0);
        // The first descriptor starts at the LBA asked for (SBC-4 §5.8), whatever granule of
        // the store's the extent began in.
        let from = lba * bs;
        for e in extents.iter().filter(|e| e.offset + e.len > from).take(descriptors_max) {
            let start = e.offset.max(from);
            out.put_u64(start / bs);
            out.put_u32(((e.offset + e.len - start) / bs).min(u32::MAX as u64) as u32);
            out.put_u8(if e.mapped { 0 } else { 1 });
            out.put_slice(&[0, 0, 0]);
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        Ok(truncate(out, alloc))
    }

    pub(super) async fn or_write(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let r = block_range(ctx.cdb);
        ctx.data_out_len = r.blocks.saturating_mul(self.block_size());
        self.check_writable()?;
        self.check_rw(ctx, &r)?;
        let (blocks, data) = self.write_payload(ctx, r.blocks)?;
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        let (offset, len) = self.byte_range(r.lba, blocks as u64);
        let _exclusive = self.atomic.write().await;
        let old = self.store.read(offset, len as usize).await.map_err(|e| store_sense(&e))?;
        let merged: Vec<u8> = old.iter().zip(data.iter()).map(|(a, b)| a | b).collect();
        self.store
            .write(offset, Bytes::from(merged), self.effective_fua(r.fua()))
            .await
            .map_err(|e| store_sense(&e))?;
        Ok(Bytes::new())
    }

    pub(super) async fn compare_and_write(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let lba = ctx.cdb.u64(2);
        let blocks = ctx.cdb.u8(13);
        let flags = ctx.cdb.u8(1);
        let (offset, len) = self.byte_range(lba, blocks as u64);
        ctx.data_out_len = 2 * len as u32;
        self.check_writable()?;
        if flags >> 5 != 0 {
            return Err(Sense::invalid_cdb(1, Some(7)));
        }
        // NUMBER OF LOGICAL BLOCKS is one byte, so it never exceeds the advertised maximum (255).
        self.check_writable()?;
        self.check_range(lba, blocks as u64)?;
        // The data-out must hold exactly the compare and the write data.
        if ctx.data_out.len() as u64 != 2 * len {
            return Err(Sense::invalid_cdb(13, None));
        }
        let data = ctx.data_out.clone();
        if blocks == 0 {
            return Ok(Bytes::new());
        }
        let (verify, write) = data.split_at(len as usize);
        let _exclusive = self.atomic.write().await;
        let current = self.store.read(offset, len as usize).await.map_err(|e| store_sense(&e))?;
        if let Some(at) = first_difference(&current, verify) {
            return Err(Sense::new(key::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(at));
        }
        let fua = self.effective_fua(flags & 0x08 != 0);
        self.store.write(offset, data.slice(len as usize..), fua).await.map_err(|e| store_sense(&e))?;
        debug_assert_eq!(write.len() as u64, len);
        Ok(Bytes::new())
    }
}

impl LogicalUnit {
    /// READ DEFECT DATA (10/12): our media have no defect lists; an empty list of the
    /// requested format.
    pub(super) fn read_defect_data(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let twelve = ctx.cdb.opcode() == 0xb7;
        let (format, alloc) =
            if twelve { (ctx.cdb.u8(1), ctx.cdb.u32(6) as usize) } else { (ctx.cdb.u8(2), ctx.cdb.u16(7) as usize) };
        let mut out = BytesMut::zeroed(if twelve { 8 } else { 4 });
        out[1] = format & 0x1f;
        Ok(truncate(out, alloc))
    }
}

/// Offset of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> Option<u64> {
    a.iter().zip(b).position(|(x, y)| x != y).map(|p| p as u64)
}
