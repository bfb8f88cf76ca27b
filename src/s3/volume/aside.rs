//! Small objects kept beside a volume's data (`prefix/NAME`): the persistent reservations of
//! its logical unit. Written through the fenced store, so only the lease holder changes them;
//! read by whoever opens the volume next, on this node or another.

use bytes::Bytes;

use super::{S3Volume, store_err};
use crate::s3::{Condition, ObjectError};
use crate::storage::StoreResult;

impl S3Volume {
    /// The object `name` beside the volume, if there is one.
    pub async fn read_aside(&self, name: &str) -> StoreResult<Option<Bytes>> {
        match self.store.get(&self.url.key(name), None).await {
            Ok(out) => Ok(Some(out.body)),
            Err(ObjectError::NotFound) => Ok(None),
            Err(e) => Err(store_err(e, false)),
        }
    }

    /// Replaces (or with `None`, deletes) the object `name` beside the volume.
    pub async fn write_aside(&self, name: &str, body: Option<Bytes>) -> StoreResult<()> {
        let key = self.url.key(name);
        let done = match body {
            Some(body) => self.store.put(&key, body, Default::default(), Condition::None).await.map(|_| ()),
            None => match self.store.delete(&key).await {
                Err(ObjectError::NotFound) => Ok(()),
                other => other,
            },
        };
        done.map_err(|e| store_err(e, true))
    }
}
