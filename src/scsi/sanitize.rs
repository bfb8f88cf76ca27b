//! SANITIZE (SBC-4 §5.30) with BLOCK ERASE, on thin stores: every block is unmapped, and reads
//! then return zeros (WABEREQ 01b in the Block Device Characteristics VPD). OVERWRITE and
//! CRYPTO ERASE are not offered (no store encrypts yet). The erase runs holding the logical
//! unit's `atomic` lock alone, so commands from other nexuses wait for it rather than seeing a
//! half-erased medium; it cannot fail part way in a way an exit from failure mode would mend.

use bytes::Bytes;

use super::lu::{Ctx, LogicalUnit, Outcome, store_sense};
use super::sense::Sense;

/// The unmap of a whole medium goes to the store in pieces of this size.
const PIECE: u64 = 1 << 30;

impl LogicalUnit {
    pub(super) async fn sanitize(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let param_len = ctx.cdb.u16(7);
        ctx.data_out_len = param_len as u32;
        reserved_fields(ctx)?;
        self.check_writable()?;
        // BLOCK ERASE takes no parameter list.
        if param_len != 0 {
            return Err(Sense::invalid_cdb(7, None));
        }
        let _exclusive = self.atomic.write().await;
        let capacity = self.store.capacity();
        let mut at = 0;
        while at < capacity {
            let n = PIECE.min(capacity - at);
            self.store.unmap(at, n).await.map_err(|e| store_sense(&e))?;
            at += n;
        }
        Ok(Bytes::new())
    }
}

/// INVALID FIELD IN CDB for the first reserved bit set: byte 1 bit 6, bytes 2 to 6.
fn reserved_fields(ctx: &Ctx<'_>) -> Result<(), Sense> {
    if ctx.cdb.bit(1, 0x40) {
        return Err(Sense::invalid_cdb(1, Some(6)));
    }
    match (2..=6).find(|&i| ctx.cdb.u8(i) != 0) {
        Some(i) => Err(Sense::invalid_cdb(i as u16, None)),
        None => Ok(()),
    }
}
