//! Bounded concurrency, per-attempt timeouts, and retries with jittered exponential backoff
//! inside a total budget shorter than an initiator's command timeout. Wraps any
//! [`ObjectStore`], so the simulation exercises the same retry logic as production.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, ObjResult, ObjectError, ObjectMeta, ObjectStore, S3Stats,
};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// One attempt that takes longer is abandoned (and counts as indeterminate).
    pub attempt_timeout: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    pub budget: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Requests in flight at once.
    pub concurrency: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        // Linux gives a SCSI command 30 s; our retries end well before.
        RetryPolicy {
            attempt_timeout: Duration::from_secs(5),
            budget: Duration::from_secs(15),
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            concurrency: 64,
        }
    }
}

pub struct Resilient<S> {
    inner: S,
    policy: RetryPolicy,
    permits: Semaphore,
    rng: Mutex<Rng>,
    stats: Arc<S3Stats>,
}

impl<S: ObjectStore> Resilient<S> {
    pub fn new(inner: S, policy: RetryPolicy, seed: u64) -> Resilient<S> {
        Resilient::with_stats(inner, policy, seed, Arc::new(S3Stats::default()))
    }

    /// A retry layer that counts into `stats` (shared with other layers over the same store).
    pub fn with_stats(inner: S, policy: RetryPolicy, seed: u64, stats: Arc<S3Stats>) -> Resilient<S> {
        let permits = Semaphore::new(policy.concurrency.max(1));
        Resilient { inner, policy, permits, rng: Mutex::new(Rng::seeded(seed)), stats }
    }

    pub fn stats(&self) -> Arc<S3Stats> {
        self.stats.clone()
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.policy.base_backoff.saturating_mul(1 << attempt.min(16)).min(self.policy.max_backoff);
        // Full jitter in [exp/2, exp].
        let jitter = self.rng.lock().expect("rng poisoned").below(1000);
        exp / 2 + exp / 2 * jitter as u32 / 1000
    }

    async fn retry<'a, T>(&'a self, counter: &AtomicU64, op: impl Fn() -> BoxFuture<'a, ObjResult<T>>) -> ObjResult<T> {
        let start = tokio::time::Instant::now();
        let mut uncertain = false;
        let mut attempt = 0;
        loop {
            let result = {
                let _permit = self.permits.acquire().await.expect("semaphore never closed");
                counter.fetch_add(1, Ordering::Relaxed);
                match tokio::time::timeout(self.policy.attempt_timeout, op()).await {
                    Ok(r) => r,
                    Err(_) => Err(ObjectError::Indeterminate("attempt timed out".into())),
                }
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.retryable() => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    uncertain |= matches!(e, ObjectError::Indeterminate(_));
                    let wait = self.backoff(attempt);
                    if start.elapsed() + wait > self.policy.budget {
                        tracing::warn!(error = %e, attempts = attempt + 1, "object store request failed; retry budget spent");
                        return Err(if uncertain { ObjectError::Indeterminate(e.to_string()) } else { e });
                    }
                    tracing::debug!(error = %e, attempt, "object store request failed; retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                // An earlier attempt may have done it: the caller must find out.
                Err(e) if uncertain && e != ObjectError::NotFound => {
                    return Err(ObjectError::Indeterminate(format!("{e} after an uncertain attempt")));
                }
                Err(e) => {
                    if e != ObjectError::NotFound {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl<S: ObjectStore> ObjectStore for Resilient<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(async move {
            let out = self.retry(&self.stats.get, || self.inner.get(&key, range.clone())).await?;
            self.stats.bytes_down.fetch_add(out.body.len() as u64, Ordering::Relaxed);
            Ok(out)
        })
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move {
            self.retry(&self.stats.put, || {
                self.stats.bytes_up.fetch_add(body.len() as u64, Ordering::Relaxed);
                self.inner.put(&key, body.clone(), metadata.clone(), condition.clone())
            })
            .await
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        let key = key.to_string();
        Box::pin(async move { self.retry(&self.stats.delete, || self.inner.delete(&key)).await })
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        Box::pin(async move { self.retry(&self.stats.delete_many, || self.inner.delete_many(keys.clone())).await })
    }

    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.retry(&self.stats.list, || self.inner.list(&prefix, continuation.clone())).await })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let key = key.to_string();
        Box::pin(async move { self.retry(&self.stats.head, || self.inner.head(&key)).await })
    }
}

impl<S: ObjectStore + ?Sized> ObjectStore for Arc<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        (**self).get(key, range)
    }
    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        (**self).put(key, body, metadata, condition)
    }
    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        (**self).delete(key)
    }
    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        (**self).delete_many(keys)
    }
    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        (**self).list(prefix, continuation)
    }
    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        (**self).head(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::MemObjectStore;
    use crate::s3::mem::Faults;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(1),
            budget: Duration::from_secs(5),
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(10),
            concurrency: 4,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_failures_and_counts() {
        let mem = MemObjectStore::with_faults(Faults { fail: 0.5, ..Faults::default() }, 3);
        let r = Resilient::new(mem, fast(), 1);
        for i in 0..20 {
            r.put(&format!("k{i}"), Bytes::from_static(b"x"), BTreeMap::new(), Condition::None).await.unwrap();
        }
        assert!(r.stats().retries.load(Ordering::Relaxed) > 0);
        assert_eq!(r.inner().objects().len(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn conditional_put_after_an_uncertain_attempt_is_indeterminate() {
        let mem = MemObjectStore::with_faults(Faults { apply_then_fail: 1.0, ..Faults::default() }, 3);
        let r = Resilient::new(mem, fast(), 1);
        let err = r.put("lease", Bytes::from_static(b"x"), BTreeMap::new(), Condition::IfNoneMatch).await.unwrap_err();
        assert!(matches!(err, ObjectError::Indeterminate(_)), "{err:?}");
        assert_eq!(r.inner().objects().len(), 1, "it was applied");
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_within_the_budget() {
        let mem = MemObjectStore::with_faults(Faults { fail: 1.0, ..Faults::default() }, 3);
        let r = Resilient::new(mem, fast(), 1);
        let start = tokio::time::Instant::now();
        assert!(r.get("x", None).await.is_err());
        assert!(start.elapsed() <= Duration::from_secs(5));
    }
}
