//! Bounded concurrency, per-attempt timeouts sized to the payload, a window of bytes in flight
//! that adapts to the link, and retries with jittered exponential backoff inside a total
//! budget. Wraps any [`ObjectStore`], so the simulation exercises the same retry logic as
//! production.
//!
//! Sizing: an attempt may take `attempt_timeout` plus its bytes at `min_rate`, so a big PUT on
//! a slow link is not abandoned while a small one still times out quickly. The window keeps
//! the requests in flight from sharing the link so thinly that none of them meets that rate:
//! it halves when attempts time out or are refused (additive-increase, multiplicative-decrease
//! as TCP does) and grows back with every success.

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
    /// The slowest transfer rate an attempt is given time for, in bytes per second, beyond
    /// `attempt_timeout`.
    pub min_rate: u64,
    /// The size assumed for a GET of a whole object, whose size is not known before.
    pub whole_object_bytes: u64,
    /// The most bytes in flight at once; the window adapts below it.
    pub max_bytes_in_flight: u64,
}

impl RetryPolicy {
    /// How long one attempt moving `bytes` may take.
    pub fn attempt_timeout_for(&self, bytes: u64) -> Duration {
        let bytes = bytes.min(self.whole_object_bytes);
        self.attempt_timeout + Duration::from_millis(bytes.saturating_mul(1000) / self.min_rate.max(1))
    }

    /// The longest any attempt may take, and so the longest a request may take to land.
    pub fn longest_attempt(&self) -> Duration {
        self.attempt_timeout_for(self.whole_object_bytes)
    }
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
            min_rate: 2 << 20,
            whole_object_bytes: 16 << 20,
            max_bytes_in_flight: 64 << 20,
        }
    }
}

pub struct Resilient<S> {
    inner: S,
    policy: RetryPolicy,
    permits: Semaphore,
    window: Window,
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
        let window = Window::new(policy.max_bytes_in_flight);
        Resilient { inner, policy, permits, window, rng: Mutex::new(Rng::seeded(seed)), stats }
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

    /// Runs `op` (which moves `bytes`) until it succeeds, fails for good, or the budget is spent.
    async fn retry<'a, T>(
        &'a self,
        counter: &AtomicU64,
        bytes: u64,
        op: impl Fn() -> BoxFuture<'a, ObjResult<T>>,
    ) -> ObjResult<T> {
        let start = tokio::time::Instant::now();
        let mut uncertain = false;
        let mut attempt = 0;
        let timeout = self.policy.attempt_timeout_for(bytes);
        loop {
            let result = {
                let _permit = self.permits.acquire().await.expect("semaphore never closed");
                let _bytes = self.window.enter(bytes).await;
                counter.fetch_add(1, Ordering::Relaxed);
                let result = match tokio::time::timeout(timeout, op()).await {
                    Ok(r) => r,
                    Err(_) => Err(ObjectError::Indeterminate("attempt timed out".into())),
                };
                match &result {
                    Ok(_) => self.window.grow(bytes),
                    Err(e) if e.retryable() => self.window.shrink(self.policy.attempt_timeout),
                    Err(_) => {}
                }
                result
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
            let bytes = range.as_ref().map_or(self.policy.whole_object_bytes, |r| r.end.saturating_sub(r.start));
            let out = self.retry(&self.stats.get, bytes, || self.inner.get(&key, range.clone())).await?;
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
            self.retry(&self.stats.put, body.len() as u64, || {
                self.stats.bytes_up.fetch_add(body.len() as u64, Ordering::Relaxed);
                self.inner.put(&key, body.clone(), metadata.clone(), condition.clone())
            })
            .await
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        let key = key.to_string();
        Box::pin(async move { self.retry(&self.stats.delete, 0, || self.inner.delete(&key)).await })
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        Box::pin(async move { self.retry(&self.stats.delete_many, 0, || self.inner.delete_many(keys.clone())).await })
    }

    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        Box::pin(
            async move { self.retry(&self.stats.list, 0, || self.inner.list(&prefix, continuation.clone())).await },
        )
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let key = key.to_string();
        Box::pin(async move { self.retry(&self.stats.head, 0, || self.inner.head(&key)).await })
    }
}

/// The bytes allowed in flight: AIMD between one request and the policy's maximum.
struct Window {
    state: Mutex<WindowState>,
    changed: tokio::sync::Notify,
    max: u64,
}

struct WindowState {
    limit: u64,
    in_flight: u64,
    /// No second halving before this: the attempts that failed together count once.
    calm_until: Option<tokio::time::Instant>,
}

/// Releases a request's bytes from the window.
struct InFlight<'a> {
    window: &'a Window,
    bytes: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.window.state.lock().expect("window poisoned").in_flight -= self.bytes;
        self.window.changed.notify_waiters();
    }
}

/// The window never shrinks below this (one request always fits).
const MIN_WINDOW: u64 = 1 << 20;

impl Window {
    fn new(max: u64) -> Window {
        let max = max.max(MIN_WINDOW);
        let state = WindowState { limit: max, in_flight: 0, calm_until: None };
        Window { state: Mutex::new(state), changed: tokio::sync::Notify::new(), max }
    }

    /// Waits until `bytes` fit in the window (a request bigger than it goes alone).
    async fn enter(&self, bytes: u64) -> InFlight<'_> {
        loop {
            let changed = self.changed.notified();
            {
                let mut s = self.state.lock().expect("window poisoned");
                if s.in_flight == 0 || s.in_flight + bytes <= s.limit {
                    s.in_flight += bytes;
                    return InFlight { window: self, bytes };
                }
            }
            changed.await;
        }
    }

    /// A success: the window grows by a tenth of the bytes it moved.
    fn grow(&self, bytes: u64) {
        let mut s = self.state.lock().expect("window poisoned");
        s.limit = (s.limit + bytes.max(64 << 10) / 10).min(self.max);
        drop(s);
        self.changed.notify_waiters();
    }

    /// A timeout or refusal: the window halves, once per `calm`.
    fn shrink(&self, calm: Duration) {
        let now = tokio::time::Instant::now();
        let mut s = self.state.lock().expect("window poisoned");
        if s.calm_until.is_some_and(|t| now < t) {
            return;
        }
        s.calm_until = Some(now + calm);
        s.limit = (s.limit / 2).max(MIN_WINDOW);
        tracing::debug!(limit = s.limit, "object store window halved");
    }

    #[cfg(test)]
    fn limit(&self) -> u64 {
        self.state.lock().expect("window poisoned").limit
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
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn attempts_get_time_for_their_bytes_up_to_the_longest() {
        let p = RetryPolicy::default();
        assert_eq!(p.attempt_timeout_for(0), Duration::from_secs(5));
        assert_eq!(p.attempt_timeout_for(4 << 20), Duration::from_secs(7));
        assert_eq!(p.attempt_timeout_for(1 << 40), p.longest_attempt());
        assert_eq!(p.longest_attempt(), Duration::from_secs(13));
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_halves_on_failures_once_per_calm_and_grows_back() {
        let w = Window::new(64 << 20);
        w.shrink(Duration::from_secs(1));
        w.shrink(Duration::from_secs(1));
        assert_eq!(w.limit(), 32 << 20, "failures together count once");
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.shrink(Duration::from_secs(1));
        assert_eq!(w.limit(), 16 << 20);
        for _ in 0..1000 {
            w.grow(4 << 20);
        }
        assert_eq!(w.limit(), 64 << 20, "back to the maximum, not beyond");
        let one = w.enter(40 << 20).await;
        let waiting = w.enter(40 << 20);
        tokio::pin!(waiting);
        assert!(futures::poll!(&mut waiting).is_pending(), "it does not fit beside the first");
        drop(one);
        let _second = waiting.await;
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
