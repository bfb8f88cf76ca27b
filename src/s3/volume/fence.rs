//! The fence: every request that changes the volume's objects is checked against the lease
//! just before it is sent (each retry too), so a holder whose lease could have expired sends
//! nothing more. It sits below the retry layer; reads pass.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use super::lease::LeaseState;
use crate::s3::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, ObjResult, ObjectError, ObjectMeta, ObjectStore,
};

pub struct Fenced {
    inner: Arc<dyn ObjectStore>,
    lease: Arc<LeaseState>,
}

impl Fenced {
    pub fn new(inner: Arc<dyn ObjectStore>, lease: Arc<LeaseState>) -> Fenced {
        Fenced { inner, lease }
    }

    fn permit(&self) -> ObjResult<()> {
        self.lease.check("a change to the volume").map_err(|e| ObjectError::Fenced(e.to_string()))
    }
}

impl ObjectStore for Fenced {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        self.inner.get(key, range)
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        match self.permit() {
            Ok(()) => self.inner.put(key, body, metadata, condition),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        match self.permit() {
            Ok(()) => self.inner.delete(key),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        match self.permit() {
            Ok(()) => self.inner.delete_many(keys),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        self.inner.list(prefix, continuation)
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        self.inner.head(key)
    }
}
