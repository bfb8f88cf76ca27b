//! Commands wait out an object store that is away. A transient fault (a timeout, a refused
//! connection, a 503) or an expired lease waiting for its renewal makes a command try again
//! until its deadline ([`VolumeOptions::command_deadline`](super::VolumeOptions)), and then
//! answers NOT READY, which initiators retry; never a medium or write error. Data waiting in
//! the cache stays there and is flushed once the store is back.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::S3Volume;
use super::lease::Standing;
use crate::storage::{StoreError, StoreResult};

/// First wait between attempts; doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// When a command stops waiting for the store and answers NOT READY: one for the whole
/// command, however many waits it goes through (a FUA write waits for the lease, for room in
/// the cache and for its flush: 20 s each took it to 40 s, past Linux's 30 s command timeout).
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline(Duration);

impl S3Volume {
    /// The deadline of a command starting now.
    pub(super) fn command_deadline(&self) -> Deadline {
        Deadline(self.clock.now() + self.opts.command_deadline)
    }

    /// Runs `attempt` until it succeeds, fails for good, or a deadline of its own passes (see
    /// [`S3Volume::patiently_by`]).
    pub(super) async fn patiently<T, F, Fut>(&self, what: &str, attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        self.patiently_by(what, self.command_deadline(), attempt).await
    }

    /// Runs `attempt` until it succeeds, fails for good, or `deadline` passes. An attempt
    /// still running at the deadline is dropped (every path of the volume tolerates a dropped
    /// request: its effect may or may not land).
    pub(super) async fn patiently_by<T, F, Fut>(&self, what: &str, deadline: Deadline, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let Deadline(deadline) = deadline;
        let mut pause = FIRST_PAUSE;
        loop {
            let outcome = tokio::select! {
                biased;
                r = attempt() => Some(r),
                _ = self.clock.sleep_until(deadline) => None,
            };
            let error = match outcome {
                Some(Ok(v)) => {
                    self.note_reachable();
                    return Ok(v);
                }
                Some(Err(e)) if self.worth_waiting(&e) => e,
                Some(Err(e)) => return Err(e),
                None => StoreError::NotReady("the last attempt did not finish".into()),
            };
            self.note_unreachable(&error);
            if self.clock.now() + pause >= deadline {
                return Err(StoreError::NotReady(format!(
                    "{what}: not done within {:?} (last: {error}); {} bytes wait in the cache",
                    self.opts.command_deadline,
                    self.unlogged_bytes()
                )));
            }
            self.clock.sleep_until(self.clock.now() + pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Whether an error may go away by itself: a transient fault, or a lease that waits for its
    /// renewal (not one taken over or closed).
    pub(super) fn worth_waiting(&self, e: &StoreError) -> bool {
        match e {
            StoreError::Transient(_) => true,
            StoreError::NotReady(_) => matches!(self.lease.standing(), Standing::Valid | Standing::Expired),
            _ => false,
        }
    }

    /// The store answered: if it had been away, say so once.
    pub(super) fn note_reachable(&self) {
        // A load first: this runs after every command that reached the store.
        if self.unreachable_since.load(Ordering::Relaxed) == 0 {
            return;
        }
        let since = self.unreachable_since.swap(0, Ordering::SeqCst);
        if since != 0 {
            let away = self.clock.now().saturating_sub(Duration::from_nanos(since));
            tracing::info!(volume = %self.url, away_ms = away.as_millis() as u64, "object store reachable again");
        }
    }

    /// A request failed in a way that may pass: the first one since the store was last reachable
    /// logs how much waits in the cache.
    pub(super) fn note_unreachable(&self, error: &StoreError) {
        let now = (self.clock.now().as_nanos() as u64).max(1);
        if self.unreachable_since.compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            tracing::warn!(
                volume = %self.url,
                %error,
                unlogged_bytes = self.unlogged_bytes(),
                dirty_bytes = self.dirty_bytes(),
                "object store unreachable or too slow: writes wait in the cache, commands that need it wait up to {:?}",
                self.opts.command_deadline
            );
        }
    }

    /// How long the store has been away (zero while reachable).
    pub fn unreachable_for(&self) -> Duration {
        match self.unreachable_since.load(Ordering::SeqCst) {
            0 => Duration::ZERO,
            since => self.clock.now().saturating_sub(Duration::from_nanos(since)),
        }
    }
}
