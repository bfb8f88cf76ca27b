//! An in-memory object store with optional fault injection, for model checks and tests.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;

use super::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, Listed, ObjResult, ObjectError, ObjectMeta, ObjectStore,
};
use crate::rng::Rng;

#[derive(Debug, Clone)]
struct Object {
    body: Bytes,
    metadata: BTreeMap<String, String>,
    etag: String,
}

/// Faults to inject, each a probability per request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Fail before applying (determinate, retryable).
    pub fail: f64,
    /// Apply, then report an indeterminate failure.
    pub apply_then_fail: f64,
    /// Fail without applying but report an indeterminate failure.
    pub lost_request: f64,
    /// Refuse mutations for good (like an access denied): determinate, not retryable.
    pub reject_writes: f64,
    /// Every GET, PUT and DELETE (and DeleteObjects) takes this long (a store at a distance).
    pub latency: std::time::Duration,
    /// A GET's answer arrives up to this long (uniformly) after it read the object: what it
    /// returns may have been replaced meanwhile, as with any store at a distance.
    pub response_delay: std::time::Duration,
}

struct State {
    objects: BTreeMap<String, Object>,
    next_etag: u64,
    faults: Faults,
    rng: Rng,
    /// Requests for keys under these prefixes wait until released.
    held: Vec<String>,
    /// GETs of keys under these prefixes read the object, then wait until released to answer.
    held_answers: Vec<String>,
    /// GETs waiting to answer now.
    answers_waiting: usize,
    /// GETs of keys under these prefixes wait until released, before they read the object.
    held_gets: Vec<String>,
    /// GETs waiting so now.
    gets_waiting: usize,
    /// DELETEs of keys under this prefix fail for good.
    undeletable: Option<String>,
    /// PUTs of keys under this prefix fail for good.
    unwritable: Option<String>,
    /// Every key a PUT was sent for, whether it landed or not.
    put_keys: BTreeSet<String>,
}

/// A bucket in memory. Listing pages hold at most `page_size` keys.
pub struct MemObjectStore {
    state: Mutex<State>,
    page_size: usize,
    /// Woken when held prefixes are released.
    released: tokio::sync::Notify,
}

enum Fault {
    None,
    Fail,
    ApplyThenFail,
    Lost,
    Reject,
}

impl MemObjectStore {
    pub fn new() -> MemObjectStore {
        MemObjectStore::with_faults(Faults::default(), 0)
    }

    pub fn with_faults(faults: Faults, seed: u64) -> MemObjectStore {
        MemObjectStore {
            state: Mutex::new(State {
                objects: BTreeMap::new(),
                next_etag: 1,
                faults,
                rng: Rng::seeded(seed),
                held: Vec::new(),
                held_answers: Vec::new(),
                held_gets: Vec::new(),
                gets_waiting: 0,
                answers_waiting: 0,
                undeletable: None,
                unwritable: None,
                put_keys: BTreeSet::new(),
            }),
            page_size: 1000,
            released: tokio::sync::Notify::new(),
        }
    }

    /// Makes GETs, PUTs and DELETEs of keys under `prefix` wait (a slow or stuck store) until
    /// [`MemObjectStore::release_all`].
    pub fn hold(&self, prefix: &str) {
        self.lock().held.push(prefix.to_string());
    }

    /// Makes DELETEs of keys under `prefix` fail (None: they work again).
    pub fn refuse_deletes(&self, prefix: Option<&str>) {
        self.lock().undeletable = prefix.map(str::to_string);
    }

    /// Makes PUTs of keys under `prefix` fail, unapplied (None: they work again).
    pub fn refuse_puts(&self, prefix: Option<&str>) {
        self.lock().unwritable = prefix.map(str::to_string);
    }

    /// Makes GETs of keys under `prefix` read their object at once but answer only after
    /// [`MemObjectStore::release_all`] (an answer slow on its way back).
    pub fn hold_answers(&self, prefix: &str) {
        self.lock().held_answers.push(prefix.to_string());
    }

    /// Makes GETs of keys under `prefix` wait, before they read the object, until released
    /// (other requests go on).
    pub fn hold_gets(&self, prefix: &str) {
        self.lock().held_gets.push(prefix.to_string());
    }

    /// GETs held by [`MemObjectStore::hold_gets`] now.
    pub fn gets_waiting(&self) -> usize {
        self.lock().gets_waiting
    }

    /// GETs that read their object and wait to answer.
    pub fn answers_waiting(&self) -> usize {
        self.lock().answers_waiting
    }

    /// Lets go of the requests held under `prefix` by [`MemObjectStore::hold`] (others stay
    /// held).
    pub fn release(&self, prefix: &str) {
        self.lock().held.retain(|p| p != prefix);
        self.released.notify_waiters();
    }

    pub fn release_all(&self) {
        let mut st = self.lock();
        st.held.clear();
        st.held_answers.clear();
        st.held_gets.clear();
        drop(st);
        self.released.notify_waiters();
    }

    /// Waits while `key` is held.
    async fn wait_if_held(&self, key: &str) {
        self.wait_while(key, |st| &st.held).await
    }

    /// Waits while `key` is under one of the prefixes `list` picks from the state.
    async fn wait_while(&self, key: &str, list: impl Fn(&State) -> &Vec<String>) {
        loop {
            let released = self.released.notified();
            if !list(&self.lock()).iter().any(|p| key.starts_with(p.as_str())) {
                return;
            }
            released.await;
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("mem store poisoned")
    }

    /// Every key a PUT was sent for (landed, failed or lost), for checks.
    pub fn put_keys(&self) -> BTreeSet<String> {
        self.lock().put_keys.clone()
    }

    /// Every key and its body, for checks.
    pub fn objects(&self) -> BTreeMap<String, Bytes> {
        self.lock().objects.iter().map(|(k, o)| (k.clone(), o.body.clone())).collect()
    }

    fn roll(st: &mut State, mutating: bool) -> Fault {
        let f = st.faults;
        if st.rng.chance(f.fail) {
            return Fault::Fail;
        }
        if mutating && st.rng.chance(f.reject_writes) {
            return Fault::Reject;
        }
        if mutating && st.rng.chance(f.apply_then_fail) {
            return Fault::ApplyThenFail;
        }
        if st.rng.chance(f.lost_request) {
            return Fault::Lost;
        }
        Fault::None
    }

    async fn wait_latency(&self) {
        let latency = self.lock().faults.latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    async fn wait_response_delay(&self) {
        let delay = {
            let mut st = self.lock();
            let max = st.faults.response_delay.as_micros() as u64;
            if max == 0 { 0 } else { st.rng.below(max + 1) }
        };
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_micros(delay)).await;
        }
    }

    fn put_sync(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        cond: Condition,
    ) -> ObjResult<Option<String>> {
        let mut st = self.lock();
        st.put_keys.insert(key.to_string());
        if st.unwritable.as_ref().is_some_and(|p| key.starts_with(p.as_str())) {
            return Err(ObjectError::failed("refused put"));
        }
        let fault = Self::roll(&mut st, true);
        match fault {
            Fault::Fail => return Err(ObjectError::transient("injected failure")),
            Fault::Lost => return Err(ObjectError::Indeterminate("injected lost request".into())),
            Fault::Reject => return Err(ObjectError::failed("injected rejection")),
            _ => {}
        }
        let current = st.objects.get(key).map(|o| o.etag.clone());
        match (&cond, &current) {
            (Condition::IfNoneMatch, Some(_)) => return Err(ObjectError::PreconditionFailed),
            (Condition::IfMatch(want), Some(have)) if want != have => return Err(ObjectError::PreconditionFailed),
            (Condition::IfMatch(_), None) => return Err(ObjectError::PreconditionFailed),
            _ => {}
        }
        let etag = format!("\"{}\"", st.next_etag);
        st.next_etag += 1;
        st.objects.insert(key.to_string(), Object { body, metadata, etag: etag.clone() });
        if let Fault::ApplyThenFail = fault {
            return Err(ObjectError::Indeterminate("injected failure after applying".into()));
        }
        Ok(Some(etag))
    }

    fn delete_sync(&self, key: &str) -> ObjResult<()> {
        let mut st = self.lock();
        if st.undeletable.as_ref().is_some_and(|p| key.starts_with(p.as_str())) {
            return Err(ObjectError::failed("refused delete"));
        }
        let fault = Self::roll(&mut st, true);
        match fault {
            Fault::Fail => return Err(ObjectError::transient("injected failure")),
            Fault::Lost => return Err(ObjectError::Indeterminate("injected lost request".into())),
            Fault::Reject => return Err(ObjectError::failed("injected rejection")),
            _ => {}
        }
        st.objects.remove(key);
        if let Fault::ApplyThenFail = fault {
            return Err(ObjectError::Indeterminate("injected failure after applying".into()));
        }
        Ok(())
    }

    fn get_sync(&self, key: &str, range: Option<Range<u64>>) -> ObjResult<GetOutput> {
        let mut st = self.lock();
        match Self::roll(&mut st, false) {
            Fault::Fail => return Err(ObjectError::transient("injected failure")),
            Fault::Lost => return Err(ObjectError::Indeterminate("injected timeout".into())),
            _ => {}
        }
        let o = st.objects.get(key).ok_or(ObjectError::NotFound)?;
        let size = o.body.len() as u64;
        let body = match range {
            None => o.body.clone(),
            Some(r) if r.start < size => o.body.slice(r.start as usize..r.end.min(size) as usize),
            Some(_) => return Err(ObjectError::RangeNotSatisfiable),
        };
        Ok(GetOutput { body, meta: ObjectMeta { size, etag: Some(o.etag.clone()), metadata: o.metadata.clone() } })
    }
}

impl Default for MemObjectStore {
    fn default() -> Self {
        MemObjectStore::new()
    }
}

impl ObjectStore for MemObjectStore {
    fn describe(&self) -> String {
        "memory object store".into()
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(async move {
            self.wait_if_held(&key).await;
            self.lock().gets_waiting += 1;
            self.wait_while(&key, |st| &st.held_gets).await;
            self.lock().gets_waiting -= 1;
            self.wait_latency().await;
            let answer = self.get_sync(&key, range);
            self.wait_response_delay().await;
            self.lock().answers_waiting += 1;
            self.wait_while(&key, |st| &st.held_answers).await;
            self.lock().answers_waiting -= 1;
            answer
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
            self.wait_if_held(&key).await;
            self.wait_latency().await;
            self.put_sync(&key, body, metadata, condition)
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        let key = key.to_string();
        Box::pin(async move {
            self.wait_if_held(&key).await;
            self.wait_latency().await;
            self.delete_sync(&key)
        })
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        Box::pin(async move {
            // One request, one round trip, however many keys.
            self.wait_latency().await;
            let mut out = Vec::new();
            for k in keys {
                self.wait_if_held(&k).await;
                let r = self.delete_sync(&k);
                out.push((k, r));
            }
            Ok(out)
        })
    }

    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let st = self.lock();
        let start = continuation.unwrap_or_else(|| prefix.to_string());
        let mut objects: Vec<Listed> = st
            .objects
            .range(start..)
            // Keys with the prefix are contiguous from the prefix on.
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(self.page_size + 1)
            .map(|(k, o)| Listed { key: k.clone(), size: o.body.len() as u64, etag: Some(o.etag.clone()) })
            .collect();
        let mut next = None;
        if objects.len() > self.page_size {
            next = objects.pop().map(|o| o.key);
        }
        Box::pin(async move { Ok(ListPage { objects, next }) })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let r = self.get_sync(key, None).map(|g| g.meta);
        Box::pin(async move { r })
    }
}
