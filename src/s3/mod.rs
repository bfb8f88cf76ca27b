//! S3-compatible object storage: the [`ObjectStore`] seam, its implementations (AWS SDK, the
//! crash-safe local store of the embedded default, in-memory), a resilience wrapper (bounded
//! concurrency, timeouts, retries), the local store over HTTP, and the chunked sparse volume
//! that turns a bucket prefix into a block store.

pub mod aws;
pub mod embedded;
pub mod http;
pub mod local;
pub mod mem;
pub mod resilient;
pub mod url;
pub mod volume;

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use thiserror::Error;

pub use crate::storage::BoxFuture;
use crate::storage::stats::{ObjectStoreStats, RequestCounts};
pub use mem::MemObjectStore;
pub use resilient::{Resilient, RetryPolicy};
pub use volume::{S3Volume, VolumeOptions};

/// Why an object operation failed. The variant says what the caller may assume.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectError {
    #[error("no such object")]
    NotFound,
    /// A conditional request's condition did not hold; nothing changed.
    #[error("precondition failed")]
    PreconditionFailed,
    /// The key is not one this store can hold (why, in words); nothing changed.
    #[error("invalid key {key:?}: {why}")]
    InvalidKey { key: String, why: String },
    /// A ranged read that starts past the object's end.
    #[error("range not satisfiable")]
    RangeNotSatisfiable,
    /// The request certainly had no effect. `retryable`: trying again may succeed.
    #[error("request failed: {message}")]
    Determinate { message: String, retryable: bool },
    /// The request may or may not have taken effect (a timeout after sending, a lost reply).
    #[error("request outcome unknown: {0}")]
    Indeterminate(String),
    /// Not sent: this writer may not change the volume now (its lease could have expired).
    #[error("not sent: {0}")]
    Fenced(String),
}

impl ObjectError {
    pub fn retryable(&self) -> bool {
        match self {
            ObjectError::Determinate { retryable, .. } => *retryable,
            ObjectError::Indeterminate(_) => true,
            _ => false,
        }
    }

    pub fn failed(message: impl Into<String>) -> ObjectError {
        ObjectError::Determinate { message: message.into(), retryable: false }
    }

    pub fn transient(message: impl Into<String>) -> ObjectError {
        ObjectError::Determinate { message: message.into(), retryable: true }
    }
}

pub type ObjResult<T> = Result<T, ObjectError>;

/// The outcome of a batch delete, per key.
pub type DeleteResults = Vec<(String, ObjResult<()>)>;

/// Size, entity tag and user metadata of an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectMeta {
    pub size: u64,
    pub etag: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOutput {
    /// The requested bytes (the whole object, or the range).
    pub body: Bytes,
    pub meta: ObjectMeta,
}

/// Conditions of a PUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    None,
    /// `If-None-Match: *`: only create.
    IfNoneMatch,
    /// `If-Match: <etag>`: only replace this version.
    IfMatch(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// In lexicographic order of keys.
    pub objects: Vec<Listed>,
    pub next: Option<String>,
}

/// One object of a listing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub key: String,
    pub size: u64,
    /// The entity tag of the version listed, if the store reports one.
    pub etag: Option<String>,
}

/// DELETE of one key as a batch of one, for stores whose batch deletion is the primitive.
pub fn delete_as_batch<'a>(store: &'a dyn ObjectStore, key: &str) -> BoxFuture<'a, ObjResult<()>> {
    let keys = vec![key.to_string()];
    Box::pin(async move {
        let mut results = store.delete_many(keys).await?;
        results.pop().expect("one result per key").1
    })
}

/// The object storage seam.
pub trait ObjectStore: Send + Sync + 'static {
    fn describe(&self) -> String;
    /// Reads an object, or the byte range of it.
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>>;
    /// Writes a whole object; returns its entity tag if the store reports one.
    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>>;
    /// Deletes an object; deleting a missing object succeeds.
    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>>;
    /// Deletes up to 1000 objects in one request, with a result per key.
    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>>;
    /// One page of the keys under a prefix.
    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>>;
    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>>;
}

/// Lists every key under a prefix, following continuation tokens.
pub async fn list_all(store: &dyn ObjectStore, prefix: &str) -> ObjResult<Vec<Listed>> {
    let mut out = Vec::new();
    let mut next = None;
    loop {
        let page = store.list(prefix, next).await?;
        out.extend(page.objects);
        match page.next {
            Some(token) => next = Some(token),
            None => return Ok(out),
        }
    }
}

/// Request counters of an object store, shared with logs and the management API.
#[derive(Debug, Default)]
pub struct S3Stats {
    pub get: AtomicU64,
    pub put: AtomicU64,
    pub delete: AtomicU64,
    /// DeleteObjects requests (each deletes many keys).
    pub delete_many: AtomicU64,
    pub list: AtomicU64,
    pub head: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub errors: AtomicU64,
    pub retries: AtomicU64,
}

impl S3Stats {
    pub fn requests(&self) -> u64 {
        [&self.get, &self.put, &self.delete, &self.delete_many, &self.list, &self.head]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn snapshot(&self) -> ObjectStoreStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ObjectStoreStats {
            requests: RequestCounts {
                get: l(&self.get),
                put: l(&self.put),
                delete: l(&self.delete),
                delete_many: l(&self.delete_many),
                list: l(&self.list),
                head: l(&self.head),
            },
            bytes_up: l(&self.bytes_up),
            bytes_down: l(&self.bytes_down),
            errors: l(&self.errors),
            retries: l(&self.retries),
        }
    }
}
