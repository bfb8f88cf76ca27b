//! The single-writer lease, and the fence that makes it hold.
//!
//! A lease only protects if its holder fences itself. The holder may change the volume's
//! objects only until `renewal start + duration - margin`, measured on its own monotonic clock
//! from the start of its last successful renewal ([`LeaseState`]); every mutating request is
//! checked against that just before it is sent (`fence.rs`), writes and flushes get a
//! retryable NOT READY once it has passed, and renewals run on their own task with their own
//! request slots ([`keep`]), so no flush or merge can starve them.
//!
//! A taker waits the lease out: it watches the lease object not change for `duration` plus the
//! longest a request may take to land (`request_lifetime`, the attempt timeout), measured on
//! its own clock, before it takes it; a holder that renews meanwhile is alive and keeps it.
//! `force` takes it at once but still waits that long before its first write. A lease of this
//! node ([`crate::node`]) is taken back at once: this process holds the node's lock, so the
//! process that held the lease is dead.
//!
//! Clock assumption: the monotonic clocks of holder and taker run at rates that differ by less
//! than `margin / duration` (5% by default); nothing compares wall clocks across hosts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::watch;

use super::format::LeaseRecord;
use crate::clock::Clock;
use crate::node::NodeId;
use crate::s3::{Condition, ObjectError, ObjectStore};
use crate::storage::{StoreError, StoreResult};

/// How long a lease lasts and how its holder and takers time themselves.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub duration: Duration,
    /// The holder stops writing this long before its lease could expire.
    pub margin: Duration,
    /// The longest a request sent by a holder may take to land (its attempt timeout).
    pub request_lifetime: Duration,
}

impl LeaseTiming {
    pub fn new(duration: Duration, request_lifetime: Duration) -> LeaseTiming {
        LeaseTiming { duration, margin: duration / 10, request_lifetime }
    }

    fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// How long a taker watches an unchanged lease before it is free.
    fn wait_out(&self) -> Duration {
        self.duration + self.request_lifetime
    }

    /// How often a taker looks at a lease it is waiting out.
    fn poll(&self) -> Duration {
        (self.duration / 6).max(Duration::from_millis(100))
    }
}

/// Who takes the lease.
#[derive(Debug, Clone)]
pub struct Identity {
    /// This process ("<node>/<pid>/<random>").
    pub holder: String,
    /// The node, held locked by this process; None: no lease is known to be ours after a crash.
    pub node: Option<NodeId>,
}

/// Why the lease could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Another target holds it and keeps renewing it.
    #[error("in use by {holder}, which keeps renewing its lease; stop that target, or take the volume over with force")]
    Held { holder: String },
    #[error("cannot take the lease: {0}")]
    Store(String),
}

/// What the holder knows of its lease, shared by the renewal task, the fence on every mutating
/// request, and the volume's writes and flushes. Times are the clock's monotonic `now()`.
pub struct LeaseState {
    clock: Arc<dyn Clock>,
    timing: LeaseTiming,
    /// Nanoseconds: no mutation from here on unless a renewal moves it.
    valid_until: AtomicU64,
    /// Nanoseconds: no mutation before (a forced takeover waits out the old holder).
    writable_from: AtomicU64,
    /// Set once the lease ended for this holder.
    ended: watch::Sender<Option<Ended>>,
}

/// Why a holder may never write again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Another target took the lease (the string names it).
    TakenBy(String),
    /// The volume was closed, or its process "crashed" in a model test.
    Closed,
}

/// Where the holder stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    Valid,
    /// Not renewed in time (the store may be unreachable): no writes until a renewal succeeds.
    Expired,
    /// Waiting out the previous holder after a forced takeover.
    NotYet,
    /// Another target holds the lease now, or the volume is closed.
    Ended(Ended),
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

impl LeaseState {
    pub fn new(clock: Arc<dyn Clock>, timing: LeaseTiming) -> LeaseState {
        LeaseState {
            clock,
            timing,
            valid_until: AtomicU64::new(0),
            writable_from: AtomicU64::new(0),
            ended: watch::channel(None).0,
        }
    }

    pub fn standing(&self) -> Standing {
        if let Some(ended) = self.ended.borrow().clone() {
            return Standing::Ended(ended);
        }
        let now = nanos(self.clock.now());
        if crate::mutants::active(crate::mutants::Mutant::HolderDoesNotFence) {
            return Standing::Valid;
        }
        if now < self.writable_from.load(Ordering::SeqCst) {
            Standing::NotYet
        } else if now >= self.valid_until.load(Ordering::SeqCst) {
            Standing::Expired
        } else {
            Standing::Valid
        }
    }

    /// Ok while this holder may change the volume; a retryable NOT READY otherwise.
    pub fn check(&self, what: &str) -> StoreResult<()> {
        match self.standing() {
            Standing::Valid => Ok(()),
            Standing::Expired => Err(StoreError::NotReady(format!(
                "{what}: the lease was not renewed in time (is the object store reachable?); waiting for a renewal"
            ))),
            Standing::NotYet => Err(StoreError::NotReady(format!("{what}: waiting out the previous holder's lease"))),
            Standing::Ended(Ended::TakenBy(who)) => {
                Err(StoreError::NotReady(format!("{what}: the lease was taken over by {who}")))
            }
            Standing::Ended(Ended::Closed) => Err(StoreError::NotReady(format!("{what}: the volume is closed"))),
        }
    }

    /// Ok unless this holder may never write again or still waits out a previous holder. An
    /// expired lease passes: what needs no request (a write into the cache, a cached read)
    /// goes on while the store is away, and the next renewal tells whether the lease is ours.
    pub fn check_held(&self, what: &str) -> StoreResult<()> {
        match self.standing() {
            Standing::Valid | Standing::Expired => Ok(()),
            _ => self.check(what),
        }
    }

    /// A renewal that started at `started` succeeded.
    fn renewed(&self, started: Duration) {
        let until = nanos(started + self.timing.duration.saturating_sub(self.timing.margin));
        self.valid_until.fetch_max(until, Ordering::SeqCst);
    }

    /// No mutation from now on, ever.
    pub fn end(&self, why: Ended) {
        self.ended.send_if_modified(|e| {
            let first = e.is_none();
            e.get_or_insert(why);
            first
        });
    }

    /// Resolves once another target took the lease; with its name.
    pub async fn taken_over(&self) -> String {
        let mut rx = self.ended.subscribe();
        let who = match rx.wait_for(|e| matches!(e, Some(Ended::TakenBy(_)))).await {
            Ok(e) => match &*e {
                Some(Ended::TakenBy(who)) => Some(who.clone()),
                _ => None,
            },
            Err(_) => None,
        };
        match who {
            Some(who) => who,
            None => std::future::pending().await,
        }
    }

    /// Waits until a forced takeover may write.
    pub async fn wait_until_writable(&self) {
        let from = Duration::from_nanos(self.writable_from.load(Ordering::SeqCst));
        if self.clock.now() < from {
            self.clock.sleep_until(from).await;
        }
    }
}

/// The lease as taken.
pub struct Taken {
    etag: Option<String>,
    renewals: u64,
}

fn record(me: &Identity, timing: &LeaseTiming, renewals: u64, released: bool, clock: &dyn Clock) -> LeaseRecord {
    let wall = clock.wall().duration_since(UNIX_EPOCH).unwrap_or_default();
    LeaseRecord {
        holder: me.holder.clone(),
        node: me.node.as_ref().map(|n| n.as_str().to_string()),
        renewals,
        duration_ms: timing.duration.as_millis() as u64,
        released,
        expires_unix_ms: if released { 0 } else { (wall + timing.duration).as_millis() as u64 },
    }
}

async fn read(store: &dyn ObjectStore, key: &str) -> Result<Option<(LeaseRecord, Option<String>)>, LeaseError> {
    match store.get(key, None).await {
        Ok(out) => Ok(Some((LeaseRecord::parse(&out.body).map_err(LeaseError::Store)?, out.meta.etag))),
        Err(ObjectError::NotFound) => Ok(None),
        Err(e) => Err(LeaseError::Store(format!("cannot read the lease: {e}"))),
    }
}

/// Whether the lease's holder is provably gone: it released the lease, or it is this process,
/// or it ran on this node (whose lock this process holds).
fn ours_to_take(current: &LeaseRecord, me: &Identity) -> bool {
    crate::mutants::active(crate::mutants::Mutant::StandbyIgnoresLease)
        || current.released
        || current.holder == me.holder
        || me.node.as_ref().is_some_and(|n| current.node.as_deref() == Some(n.as_str()))
}

/// Takes the lease at `key`: at once if it is free or provably ours, after waiting it out if
/// its holder went silent, and with `force` from a live holder (then writes wait, see
/// [`LeaseState::wait_until_writable`]). On success the state is valid from the request that
/// took it.
pub async fn acquire(
    store: &dyn ObjectStore,
    key: &str,
    me: &Identity,
    force: bool,
    state: &LeaseState,
) -> Result<Taken, LeaseError> {
    let clock = &*state.clock;
    let timing = state.timing;
    // The lease we are waiting out: its entity tag, since when, whose.
    let mut watching: Option<(Option<String>, Duration, String)> = None;
    let mut stole = false;
    for _ in 0..1000 {
        let started = clock.now();
        let found = read(store, key).await?;
        // The record read may have been written any time up to now: its age counts from here.
        let observed = clock.now();
        let (condition, renewals) = match found {
            None => (Condition::IfNoneMatch, 0),
            Some((current, etag)) => {
                let condition = etag.clone().map_or(Condition::None, Condition::IfMatch);
                let waited_out = matches!(&watching, Some((e, since, _)) if *e == etag
                    && clock.now().saturating_sub(*since) >= timing.wait_out());
                if ours_to_take(&current, me) || waited_out {
                    (condition, current.renewals)
                } else if force {
                    if !stole {
                        tracing::warn!(key, holder = %current.holder, "taking the lease over by force");
                    }
                    stole = true;
                    (condition, current.renewals)
                } else {
                    match &watching {
                        Some((e, _, _)) if *e != etag => return Err(LeaseError::Held { holder: current.holder }),
                        Some(_) => {}
                        None => {
                            tracing::info!(
                                key,
                                holder = %current.holder,
                                seconds = timing.wait_out().as_secs(),
                                "the lease is held by another target: waiting it out"
                            );
                            watching = Some((etag, observed, current.holder));
                        }
                    }
                    clock.sleep_until(clock.now() + timing.poll()).await;
                    continue;
                }
            }
        };
        let body = record(me, &timing, renewals + 1, false, clock).encode();
        match store.put(key, body, Default::default(), condition).await {
            Ok(etag) => {
                state.renewed(started);
                if stole {
                    // The old holder may write until its lease runs out.
                    let from = clock.now() + timing.wait_out();
                    state.writable_from.fetch_max(nanos(from), Ordering::SeqCst);
                }
                return Ok(Taken { etag, renewals: renewals + 1 });
            }
            // Changed meanwhile, or our own uncertain attempt landed: look again.
            Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => continue,
            Err(e) => return Err(LeaseError::Store(format!("cannot write the lease: {e}"))),
        }
    }
    Err(LeaseError::Store("the lease keeps changing".into()))
}

/// Renews the lease until `state` is lost (or the task is aborted). Failed renewals are retried
/// every second; the state expires by itself if none succeeds in time.
pub async fn keep(store: Arc<dyn ObjectStore>, key: String, me: Identity, state: Arc<LeaseState>, taken: Taken) {
    let clock = state.clock.clone();
    let timing = state.timing;
    let (mut etag, mut renewals) = (taken.etag, taken.renewals);
    let mut next = clock.now() + timing.renew_every();
    loop {
        clock.sleep_until(next).await;
        if let Standing::Ended(_) = state.standing() {
            return;
        }
        let started = clock.now();
        let body = record(&me, &timing, renewals + 1, false, &*clock).encode();
        let condition = etag.clone().map_or(Condition::None, Condition::IfMatch);
        let outcome = match store.put(&key, body, Default::default(), condition).await {
            Ok(new) => Some(new),
            // Renewed if the record read back is the one just sent; still ours but not renewed
            // if it is our previous one (the PUT did not land: try again with its tag); lost
            // otherwise.
            Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => {
                match read(&*store, &key).await {
                    Ok(Some((current, new))) if current.holder == me.holder && !current.released => {
                        if current.renewals == renewals + 1 {
                            Some(new)
                        } else {
                            etag = new;
                            renewals = current.renewals;
                            None
                        }
                    }
                    Ok(other) => {
                        let who =
                            other.map_or_else(|| "nobody (the lease object is gone)".to_string(), |(r, _)| r.holder);
                        tracing::error!(key, holder = %who, "lease lost: this target stops writing the volume");
                        state.end(Ended::TakenBy(who));
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(key, error = %e, "cannot check the lease");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::warn!(key, error = %e, "lease renewal failed; retrying");
                None
            }
        };
        match outcome {
            Some(new) => {
                etag = new;
                renewals += 1;
                state.renewed(started);
                next = started + timing.renew_every();
            }
            None => next = clock.now() + Duration::from_secs(1).min(timing.renew_every()),
        }
    }
}

/// Lets the lease go (clean close): the next target takes it at once.
pub async fn release(store: &dyn ObjectStore, key: &str, me: &Identity, state: &LeaseState) {
    for _ in 0..3 {
        let Ok(Some((current, etag))) = read(store, key).await else { return };
        if current.holder != me.holder {
            return;
        }
        let body = record(me, &state.timing, current.renewals + 1, true, &*state.clock).encode();
        let condition = etag.map_or(Condition::None, Condition::IfMatch);
        match store.put(key, body, Default::default(), condition).await {
            Ok(_) => return,
            Err(ObjectError::PreconditionFailed) | Err(ObjectError::Indeterminate(_)) => continue,
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot release the lease; the next target waits it out");
                return;
            }
        }
    }
}
