//! SANITIZE (SBC-4 §5.30) with BLOCK ERASE, on thin stores: every block is unmapped, and reads
//! then return zeros (WABEREQ 01b in the Block Device Characteristics VPD); and with CRYPTO
//! ERASE, on stores that encrypt (an encrypted S3 volume): every block unmapped and the data
//! key replaced. OVERWRITE is not offered. The erase runs holding the logical unit's `atomic`
//! lock alone, so commands from other nexuses wait for it rather than seeing a half-erased
//! medium; it cannot fail part way in a way an exit from failure mode would mend.

use bytes::Bytes;

use super::lu::{Ctx, LogicalUnit, Outcome, store_sense};
use super::sense::Sense;
use crate::store::crypto_erase::EraseError;

/// SANITIZE service actions offered.
const BLOCK_ERASE: u8 = 0x02;
const CRYPTO_ERASE: u8 = 0x03;

/// The unmap of a whole medium goes to the store in pieces of this size.
const PIECE: u64 = 1 << 30;

impl LogicalUnit {
    pub(super) async fn sanitize(&self, ctx: &mut Ctx<'_>) -> Outcome {
        let param_len = ctx.cdb.u16(7);
        ctx.data_out_len = param_len as u32;
        reserved_fields(ctx)?;
        self.check_writable()?;
        // BLOCK ERASE and CRYPTO ERASE take no parameter list.
        if param_len != 0 {
            return Err(Sense::invalid_cdb(7, None));
        }
        let _exclusive = self.atomic.write().await;
        if ctx.cdb.u8(1) & 0x1f == CRYPTO_ERASE {
            return self.crypto_erase().await;
        }
        debug_assert_eq!(ctx.cdb.u8(1) & 0x1f, BLOCK_ERASE, "the table offers no other");
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

impl LogicalUnit {
    /// CRYPTO ERASE: the store unmaps and replaces its key; one that refuses in its state (an
    /// S3 volume with snapshots) leaves everything as it was: INVALID FIELD IN CDB on the
    /// service action.
    async fn crypto_erase(&self) -> Outcome {
        let Some(store) = self.store.crypto_erase() else {
            return Err(Sense::invalid_cdb(1, Some(4)));
        };
        match store.crypto_erase().await {
            Ok(()) => Ok(Bytes::new()),
            Err(EraseError::Refused(why)) => {
                tracing::warn!(why, "SANITIZE CRYPTO ERASE refused");
                Err(Sense::invalid_cdb(1, Some(4)))
            }
            Err(EraseError::Store(e)) => Err(store_sense(&e)),
        }
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
