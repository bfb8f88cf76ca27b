//! SANITIZE CRYPTO ERASE (SBC-4 §5.30), as a store that encrypts what it keeps offers it (an
//! encrypted S3 volume): the seam the SCSI layer uses, with no knowledge of keys.

use super::{BoxFuture, StoreError};

/// A store that can make everything written to it unreadable by replacing its data key.
pub trait CryptoErase: Send + Sync {
    /// Deallocates every block (they read as zeros), then replaces the data key, so that
    /// nothing written before can be decrypted again, wherever copies of it remain (objects
    /// not yet deleted, a backup of the bucket). Nothing is done if it is refused.
    fn crypto_erase(&self) -> BoxFuture<'_, Result<(), EraseError>>;
}

/// Why a crypto erase did not happen, or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum EraseError {
    /// Not in this state (snapshots hold data under the key): nothing was done.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}
