//! Keeps a LUN served: opens its logical unit in the background, answering NOT READY (with a
//! placeholder logical unit) until it is open, retrying with backoff; and when an open store
//! fails for good (an S3 volume whose lease another target took), puts the placeholder back
//! and opens it anew. So a LUN that cannot open never stops the target, and the target's name
//! and LUNs are known (logins succeed, INQUIRY answers) from the start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::scsi::{LogicalUnit, LuConfig, ScsiTarget};
use crate::storage::{BoxFuture, PendingStore};

/// Opens the logical unit of a LUN (a new one at every call).
pub type Opener = Arc<dyn Fn() -> BoxFuture<'static, Result<Arc<LogicalUnit>, LunOpenError>> + Send + Sync>;

/// Why a LUN did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LunOpenError {
    /// Another target serves the LUN's volume and keeps its lease: this target is its standby
    /// (ALUA standby until the other goes away).
    #[error("{0}")]
    Standby(String),
    #[error("{0}")]
    Failed(String),
}

impl From<String> for LunOpenError {
    fn from(why: String) -> LunOpenError {
        LunOpenError::Failed(why)
    }
}

impl From<&str> for LunOpenError {
    fn from(why: &str) -> LunOpenError {
        LunOpenError::Failed(why.to_string())
    }
}

/// The logical unit served while the real one is not open.
#[derive(Clone)]
pub struct Placeholder {
    pub lu: Arc<LogicalUnit>,
    store: Arc<PendingStore>,
}

impl Placeholder {
    /// A placeholder with the identity and block size the LUN will have.
    pub fn new(config: LuConfig, capacity: Option<u64>, why: &str) -> Result<Placeholder, String> {
        let bs = config.block_size as u64;
        let capacity = capacity.filter(|c| *c >= bs && c.is_multiple_of(bs)).unwrap_or(bs);
        let store = Arc::new(PendingStore::new(capacity, why));
        let lu = Arc::new(LogicalUnit::new(store.clone(), config)?);
        Ok(Placeholder { lu, store })
    }

    /// Why the last attempt failed; a standby's placeholder tells initiators (ALUA) that the
    /// volume is served through another target.
    pub fn failed(&self, why: &LunOpenError) {
        self.store.set_reason(&why.to_string());
        self.lu.set_standby(matches!(why, LunOpenError::Standby(_)));
    }

    /// Opening again after the open logical unit failed.
    pub fn reopening(&self, why: &str) {
        self.store.set_reason(why);
        self.lu.set_standby(false);
    }
}

/// How long to wait before another attempt after `failures` failed ones: 1 s, doubling, at
/// most 10 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(4)).min(Duration::from_secs(10))
}

/// Runs the LUN until aborted. `serving`: a logical unit already open (watched for failure);
/// otherwise the placeholder is in the LUN map and the first attempt starts at once. `first`
/// learns how the first attempt went.
pub async fn supervise(
    target: Arc<ScsiTarget>,
    lun: u16,
    open: Opener,
    placeholder: Placeholder,
    mut serving: Option<Arc<LogicalUnit>>,
    first: Option<oneshot::Sender<Result<(), String>>>,
    clock: Arc<dyn Clock>,
) {
    let mut first = first;
    let mut failures = 0u32;
    loop {
        let lu = match serving.take() {
            Some(lu) => lu,
            None => match open().await {
                Ok(lu) => {
                    target.replace_lun(lun, lu.clone());
                    if failures > 0 {
                        tracing::info!(target = %target.name, lun, "LUN open after {failures} failed attempts");
                    }
                    lu
                }
                Err(why) => {
                    let was_standby = placeholder.lu.is_standby();
                    placeholder.failed(&why);
                    if let Some(tx) = first.take() {
                        let _ = tx.send(Err(why.to_string()));
                    }
                    // A standby's attempts watch the other target's lease for as long as it
                    // keeps renewing it: the next one starts at once, so the standby takes over
                    // one lease after the last renewal, not a backoff later.
                    if let LunOpenError::Standby(_) = why {
                        if !was_standby {
                            tracing::info!(target = %target.name, lun, holder = %why, "standby: another target serves the volume");
                        }
                        failures = 0;
                        continue;
                    }
                    let wait = backoff(failures);
                    failures += 1;
                    tracing::warn!(target = %target.name, lun, error = %why, retry_in = ?wait, "LUN not ready");
                    clock.sleep_until(clock.now() + wait).await;
                    continue;
                }
            },
        };
        if let Some(tx) = first.take() {
            let _ = tx.send(Ok(()));
        }
        failures = 0;
        let why = lu.store().failed().await;
        tracing::error!(target = %target.name, lun, error = %why, "LUN store failed: opening it again");
        placeholder.reopening(&why);
        target.replace_lun(lun, placeholder.lu.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use crate::scsi::LuIdentity;
    use crate::storage::MemoryStore;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_lun_is_not_ready_until_open_and_retried_with_backoff() {
        let target = Arc::new(ScsiTarget::new("t"));
        let config = LuConfig::new(512, LuIdentity::derived("t/0"));
        let placeholder = Placeholder::new(config.clone(), Some(1 << 20), "opening").unwrap();
        target.add_lun(0, placeholder.lu.clone()).unwrap();
        let attempts = Arc::new(AtomicU32::new(0));
        let open: Opener = {
            let attempts = attempts.clone();
            Arc::new(move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                Box::pin(async move {
                    if n < 3 {
                        return Err(format!("attempt {n} failed").into());
                    }
                    Ok(Arc::new(LogicalUnit::new(Arc::new(MemoryStore::new(1 << 20)), config)?))
                })
            })
        };
        let (tx, rx) = oneshot::channel();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(supervise(
            target.clone(),
            0,
            open,
            placeholder.clone(),
            None,
            Some(tx),
            Arc::new(TokioClock::new()),
        ));
        assert_eq!(rx.await.unwrap(), Err("attempt 0 failed".into()));
        assert!(target.lun(0).unwrap().store().ready().is_err(), "not ready meanwhile");
        while attempts.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::task::yield_now().await;
        assert!(target.lun(0).unwrap().store().ready().is_ok());
        assert!(started.elapsed() >= Duration::from_secs(7), "1 + 2 + 4 s of backoff");
        task.abort();
    }

    /// A store that fails for good when told to (as an S3 volume whose lease was taken).
    struct Doomed {
        inner: MemoryStore,
        doom: Arc<tokio::sync::Notify>,
    }

    impl crate::storage::BlockStore for Doomed {
        fn describe(&self) -> String {
            "doomed".into()
        }
        fn capacity(&self) -> u64 {
            self.inner.capacity()
        }
        fn caps(&self) -> crate::storage::StoreCaps {
            self.inner.caps()
        }
        fn read(&self, offset: u64, len: usize) -> BoxFuture<'_, crate::storage::StoreResult<bytes::Bytes>> {
            self.inner.read(offset, len)
        }
        fn write(&self, offset: u64, data: bytes::Bytes, fua: bool) -> BoxFuture<'_, crate::storage::StoreResult<()>> {
            self.inner.write(offset, data, fua)
        }
        fn write_atomic(
            &self,
            offset: u64,
            data: bytes::Bytes,
            fua: bool,
        ) -> BoxFuture<'_, crate::storage::StoreResult<()>> {
            self.inner.write_atomic(offset, data, fua)
        }
        fn flush(&self) -> BoxFuture<'_, crate::storage::StoreResult<()>> {
            self.inner.flush()
        }
        fn unmap(&self, offset: u64, len: u64) -> BoxFuture<'_, crate::storage::StoreResult<()>> {
            self.inner.unmap(offset, len)
        }
        fn failed(&self) -> BoxFuture<'_, String> {
            Box::pin(async move {
                self.doom.notified().await;
                "taken over".to_string()
            })
        }
    }

    /// A supervised LUN whose store fails when told to, and whose opens after the first
    /// answer `failure(n)` (None: open).
    fn doomed_lun(
        failure: impl Fn(u32) -> Option<LunOpenError> + Send + Sync + 'static,
    ) -> (Arc<ScsiTarget>, Opener, Arc<tokio::sync::Notify>, Arc<AtomicU32>, Placeholder) {
        let target = Arc::new(ScsiTarget::new("t"));
        let config = LuConfig::new(512, LuIdentity::derived("t/0"));
        let placeholder = Placeholder::new(config.clone(), Some(1 << 20), "opening").unwrap();
        let doom = Arc::new(tokio::sync::Notify::new());
        let opens = Arc::new(AtomicU32::new(0));
        let failure = Arc::new(failure);
        let open: Opener = {
            let (doom, opens, config) = (doom.clone(), opens.clone(), config.clone());
            Arc::new(move || {
                let n = opens.fetch_add(1, Ordering::SeqCst);
                let store = Doomed { inner: MemoryStore::new(1 << 20), doom: doom.clone() };
                let (config, failure) = (config.clone(), failure.clone());
                Box::pin(async move {
                    if let Some(e) = failure(n) {
                        // As an S3 volume's open does, watching the lease for a while.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return Err(e);
                    }
                    Ok(Arc::new(LogicalUnit::new(Arc::new(store), config)?))
                })
            })
        };
        (target, open, doom, opens, placeholder)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_store_is_not_ready_until_opened_again() {
        let (target, open, doom, opens, placeholder) =
            doomed_lun(|n| (n == 1).then(|| LunOpenError::Failed("cannot reach the store".into())));
        let first = open().await.unwrap();
        target.add_lun(0, first.clone()).unwrap();
        let clock = Arc::new(TokioClock::new());
        let task = tokio::spawn(supervise(target.clone(), 0, open, placeholder, Some(first), None, clock));
        tokio::task::yield_now().await;
        doom.notify_waiters();
        tokio::task::yield_now().await;
        assert!(target.lun(0).unwrap().store().ready().is_err(), "NOT READY once the store failed");
        tokio::time::sleep(Duration::from_millis(1400)).await;
        assert_eq!(opens.load(Ordering::SeqCst), 2, "tried again at once, then waits a second");
        assert!(!target.lun(0).unwrap().is_standby(), "a failure is no standby");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(opens.load(Ordering::SeqCst), 3);
        assert!(target.lun(0).unwrap().store().ready().is_ok(), "open again");
        task.abort();
    }

    /// Opens that find the volume served by another target make the LUN a standby, and the
    /// next attempt starts at once (it watches the other's lease meanwhile).
    #[tokio::test(start_paused = true)]
    async fn a_standby_watches_without_backoff_and_serves_once_open() {
        let standby = |n| (1..=3).contains(&n).then(|| LunOpenError::Standby("in use by b".into()));
        let (target, open, doom, opens, placeholder) = doomed_lun(standby);
        let first = open().await.unwrap();
        target.add_lun(0, first.clone()).unwrap();
        let clock = Arc::new(TokioClock::new());
        let task = tokio::spawn(supervise(target.clone(), 0, open, placeholder, Some(first), None, clock));
        tokio::task::yield_now().await;
        doom.notify_waiters();
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!target.lun(0).unwrap().is_standby(), "opening again: not known to be served elsewhere yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(target.lun(0).unwrap().is_standby(), "the other target holds the volume: standby");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(opens.load(Ordering::SeqCst), 5, "three attempts of half a second, one after the other");
        assert!(target.lun(0).unwrap().store().ready().is_ok(), "open: serving");
        assert!(!target.lun(0).unwrap().is_standby());
        task.abort();
    }
}
