//! An S3 service in memory with seeded faults, served to the target's aws-sdk-s3 client
//! through the testkit's in-process connector (`InProcessS3`), so the real S3 client path runs in the simulation.
//! Its objects live outside the target host: they survive target crashes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use rtgt::rng::Rng;
use rtgt::s3::http::collect;

/// Fault probabilities per request, and latency.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct S3Faults {
    /// 500 InternalError before doing anything.
    pub internal_error: f64,
    /// 503 SlowDown before doing anything.
    pub slow_down: f64,
    /// A request that hangs past the client's attempt timeout (not applied).
    pub timeout: f64,
    /// A PUT or DELETE that is applied and then answered 500: indeterminate for the client.
    pub apply_then_fail: f64,
    /// A PUT or DELETE held on its way (by a proxy, a load balancer retrying it): never
    /// answered, so the client times out, and it lands anyway up to [`LATE_BY`] after it was
    /// sent, whether its sender still lives or not (a zombie request).
    pub late_landing: f64,
    /// Added latency, uniformly up to this much.
    pub latency_max: Duration,
}

/// The longest a request with [`S3Faults::late_landing`] takes to land.
pub const LATE_BY: Duration = Duration::from_secs(20);

/// A mutation held on its way, and when it lands.
struct Late {
    at: Duration,
    host: &'static str,
    mutation: Mutation,
}

enum Mutation {
    Put(Put),
    Delete { bucket: String, keys: Vec<String> },
}

/// A PUT as the store applies it (its conditions checked when it lands).
struct Put {
    bucket: String,
    key: String,
    body: Bytes,
    metadata: BTreeMap<String, String>,
    if_none_match: Option<ETagCondition>,
    if_match: Option<ETagCondition>,
}

#[derive(Debug, Clone)]
struct Object {
    body: Bytes,
    metadata: BTreeMap<String, String>,
    etag: u64,
    /// Put by a PUT that landed after its sender gave up on it.
    landed_late: bool,
}

/// What a host's requests cannot reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Nothing: every request hangs past the client's timeout, unapplied.
    All,
    /// The lease object only (its renewals cannot get through; its data can).
    Lease,
}

/// A mutation that landed: when (simulated time), from which host, which key.
#[derive(Debug, Clone)]
pub struct Landed {
    pub at: Duration,
    pub host: &'static str,
    pub key: String,
}

struct State {
    buckets: BTreeMap<String, BTreeMap<String, Object>>,
    faults: S3Faults,
    rng: Rng,
    next_etag: u64,
    requests: u64,
    cuts: BTreeMap<&'static str, Cut>,
    landed: Vec<Landed>,
    /// Mutations held on their way, in the order they arrived.
    late: Vec<Late>,
    /// Every request takes up to this long, faults or not (a store is never instant).
    base_latency: Duration,
}

/// The shared store; clone the `Arc` into each incarnation of the target. A view for a host
/// ([`MemS3::view`]) knows who sends its requests.
#[derive(Clone)]
pub struct MemS3 {
    state: Arc<Mutex<State>>,
    host: &'static str,
}

enum Fault {
    None,
    Error(S3Error),
    Hang,
    ApplyThenFail,
    /// Not answered; applied later ([`S3Faults::late_landing`]).
    LandLate,
}

fn error(code: S3ErrorCode, status: u16) -> S3Error {
    let mut e = S3Error::new(code);
    e.set_status_code(http::StatusCode::from_u16(status).expect("status"));
    e
}

impl MemS3 {
    pub fn new(seed: u64) -> MemS3 {
        let state = State {
            buckets: BTreeMap::new(),
            faults: S3Faults::default(),
            rng: Rng::seeded(seed),
            next_etag: 1,
            requests: 0,
            cuts: BTreeMap::new(),
            landed: Vec::new(),
            late: Vec::new(),
            base_latency: Duration::ZERO,
        };
        MemS3 { state: Arc::new(Mutex::new(state)), host: "target" }
    }

    /// Every request takes up to `max`, uniformly, on top of any fault's latency.
    pub fn set_base_latency(&self, max: Duration) {
        self.lock().base_latency = max;
    }

    /// The same store as seen by `host`.
    pub fn view(&self, host: &'static str) -> MemS3 {
        MemS3 { state: self.state.clone(), host }
    }

    /// Cuts `host` off (or heals it with None).
    pub fn cut(&self, host: &'static str, cut: Option<Cut>) {
        let mut st = self.lock();
        match cut {
            Some(c) => st.cuts.insert(host, c),
            None => st.cuts.remove(host),
        };
    }

    /// Every mutation that landed, in order.
    pub fn landed(&self) -> Vec<Landed> {
        self.lock_landed().landed.clone()
    }

    /// How many mutations landed so far.
    pub fn landed_count(&self) -> usize {
        self.lock_landed().landed.len()
    }

    /// Whether this view's request for `key` is cut off.
    fn is_cut(&self, key: &str) -> bool {
        match self.lock().cuts.get(self.host) {
            Some(Cut::All) => true,
            Some(Cut::Lease) => key.ends_with(rtgt::s3::volume::LEASE_NAME),
            None => false,
        }
    }

    /// Records a mutation that landed.
    fn record(st: &mut State, host: &'static str, key: &str) {
        let at = crate::clock::now();
        st.landed.push(Landed { at, host, key: key.to_string() });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("MemS3 poisoned")
    }

    /// The state, with every held mutation that is due landed first.
    fn lock_landed(&self) -> std::sync::MutexGuard<'_, State> {
        let mut st = self.lock();
        if st.late.is_empty() {
            return st;
        }
        let now = crate::clock::now();
        while let Some(i) = st.late.iter().position(|l| l.at <= now) {
            let Late { host, mutation, .. } = st.late.remove(i);
            // Its answer went nowhere: whether it applied or not changes nothing else.
            let _ = match mutation {
                Mutation::Put(put) => Self::apply_put(&mut st, host, put, true).map(|_| ()),
                Mutation::Delete { bucket, keys } => Self::apply_delete(&mut st, host, &bucket, &keys),
            };
        }
        st
    }

    /// Holds `mutation` to land later, and never answers (the caller gives up first).
    async fn land_late(&self, mutation: Mutation) -> S3Error {
        let delay = Duration::from_micros(self.lock().rng.below(LATE_BY.as_micros() as u64));
        self.hold(crate::clock::now() + delay, mutation);
        tokio::time::sleep(Duration::from_secs(60)).await;
        error(S3ErrorCode::InternalError, 500)
    }

    /// Holds `mutation` to land at `at`.
    fn hold(&self, at: Duration, mutation: Mutation) {
        self.lock().late.push(Late { at, host: self.host, mutation });
    }

    /// Applies a PUT (its conditions checked now); the new object's entity tag.
    fn apply_put(st: &mut State, host: &'static str, put: Put, landed_late: bool) -> S3Result<u64> {
        let etag = st.next_etag;
        st.next_etag += 1;
        let bucket = Self::bucket(st, &put.bucket)?;
        let current = bucket.get(&put.key).map(|o| o.etag);
        if put.if_none_match.as_ref().is_some_and(|c| c.is_any()) && current.is_some() {
            return Err(error(S3ErrorCode::PreconditionFailed, 412));
        }
        if let Some(cond) = &put.if_match {
            let matches = match cond {
                ETagCondition::Any => current.is_some(),
                ETagCondition::ETag(e) => current.is_some_and(|c| e.value() == format!("{c:016x}")),
            };
            if !matches {
                return Err(error(S3ErrorCode::PreconditionFailed, 412));
            }
        }
        bucket.insert(put.key.clone(), Object { body: put.body, metadata: put.metadata, etag, landed_late });
        Self::record(st, host, &put.key);
        Ok(etag)
    }

    /// Applies a DELETE of `keys` (absent ones are no error).
    fn apply_delete(st: &mut State, host: &'static str, bucket: &str, keys: &[String]) -> S3Result<()> {
        let b = Self::bucket(st, bucket)?;
        for key in keys {
            b.remove(key);
        }
        for key in keys {
            Self::record(st, host, key);
        }
        Ok(())
    }

    pub fn create_bucket(&self, name: &str) {
        self.lock().buckets.entry(name.to_string()).or_default();
    }

    pub fn set_faults(&self, faults: S3Faults) {
        self.lock().faults = faults;
    }

    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Every object of a bucket: key and body.
    pub fn objects(&self, bucket: &str) -> BTreeMap<String, Bytes> {
        self.lock_landed()
            .buckets
            .get(bucket)
            .map(|b| b.iter().map(|(k, o)| (k.clone(), o.body.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether the object at `key` was put by a PUT that landed after its sender gave up.
    pub fn landed_late(&self, bucket: &str, key: &str) -> bool {
        self.lock_landed().buckets.get(bucket).and_then(|b| b.get(key)).is_some_and(|o| o.landed_late)
    }

    /// Every object of a bucket with its metadata.
    pub fn objects_with_metadata(&self, bucket: &str) -> BTreeMap<String, (Bytes, BTreeMap<String, String>)> {
        self.lock_landed()
            .buckets
            .get(bucket)
            .map(|b| b.iter().map(|(k, o)| (k.clone(), (o.body.clone(), o.metadata.clone()))).collect())
            .unwrap_or_default()
    }

    /// Rolls the faults of one request for `key` and sleeps its latency.
    async fn enter(&self, key: &str, mutating: bool) -> Fault {
        drop(self.lock_landed());
        if self.is_cut(key) {
            // Longer than the client's attempt timeout: the client gives up first.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Fault::Hang;
        }
        let (latency, fault) = {
            let mut st = self.lock();
            st.requests += 1;
            let f = st.faults;
            let max = f.latency_max + st.base_latency;
            let latency = if max.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_micros(st.rng.below(max.as_micros() as u64 + 1))
            };
            let fault = if st.rng.chance(f.internal_error) {
                Fault::Error(error(S3ErrorCode::InternalError, 500))
            } else if st.rng.chance(f.slow_down) {
                Fault::Error(error(S3ErrorCode::SlowDown, 503))
            } else if st.rng.chance(f.timeout) {
                Fault::Hang
            } else if mutating && st.rng.chance(f.apply_then_fail) {
                Fault::ApplyThenFail
            } else if mutating && f.late_landing > 0.0 && st.rng.chance(f.late_landing) {
                Fault::LandLate
            } else {
                Fault::None
            };
            (latency, fault)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Fault::Hang = fault {
            // Longer than the client's attempt timeout: the client gives up first.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
        fault
    }

    /// Sleeps up to the request latency: an answer on its way back.
    async fn in_transit(&self) {
        let delay = {
            let mut st = self.lock();
            let max = (st.faults.latency_max + st.base_latency).as_micros() as u64;
            if max == 0 { Duration::ZERO } else { Duration::from_micros(st.rng.below(max + 1)) }
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }

    fn bucket<'a>(st: &'a mut State, name: &str) -> S3Result<&'a mut BTreeMap<String, Object>> {
        st.buckets.get_mut(name).ok_or_else(|| S3Error::new(S3ErrorCode::NoSuchBucket))
    }
}

fn after_apply<T>(fault: Fault, ok: T) -> S3Result<T> {
    match fault {
        Fault::ApplyThenFail => Err(error(S3ErrorCode::InternalError, 500)),
        _ => Ok(ok),
    }
}

#[async_trait::async_trait]
impl S3 for MemS3 {
    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        Self::bucket(&mut self.lock(), &req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.create_bucket(&req.input.bucket);
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        if let Fault::Error(e) = self.enter(&req.input.key, false).await {
            return Err(e);
        }
        let input = req.input;
        let (body, content_range, metadata, etag) = {
            let mut st = self.lock_landed();
            let o = Self::bucket(&mut st, &input.bucket)?
                .get(&input.key)
                .ok_or_else(|| S3Error::new(S3ErrorCode::NoSuchKey))?;
            let len = o.body.len() as u64;
            let (body, content_range) = match input.range {
                None => (o.body.clone(), None),
                Some(range) => {
                    let r = range.check(len).map_err(|_| S3Error::new(S3ErrorCode::InvalidRange))?;
                    let content_range = format!("bytes {}-{}/{len}", r.start, r.end - 1);
                    (o.body.slice(r.start as usize..r.end as usize), Some(content_range))
                }
            };
            (body, content_range, o.metadata.clone(), o.etag)
        };
        // The answer travels back while the object may be replaced: a GET's data can be
        // older than a PUT that completed before the GET returned.
        self.in_transit().await;
        let output = GetObjectOutput {
            content_length: Some(body.len() as i64),
            content_range,
            metadata: Some(metadata.into_iter().collect()),
            e_tag: Some(ETag::Strong(format!("{etag:016x}"))),
            body: Some(StreamingBlob::from(s3s::Body::from(body))),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        if let Fault::Error(e) = self.enter(&req.input.key, false).await {
            return Err(e);
        }
        let input = req.input;
        let mut st = self.lock_landed();
        let o = Self::bucket(&mut st, &input.bucket)?
            .get(&input.key)
            .ok_or_else(|| S3Error::new(S3ErrorCode::NoSuchKey))?;
        let output = HeadObjectOutput {
            content_length: Some(o.body.len() as i64),
            metadata: Some(o.metadata.clone().into_iter().collect()),
            e_tag: Some(ETag::Strong(format!("{:016x}", o.etag))),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let fault = self.enter(&req.input.key, true).await;
        if let Fault::Error(e) = fault {
            return Err(e);
        }
        let input = req.input;
        let put = Put {
            body: collect(input.body).await?,
            bucket: input.bucket,
            key: input.key,
            metadata: input.metadata.unwrap_or_default().into_iter().collect(),
            if_none_match: input.if_none_match,
            if_match: input.if_match,
        };
        if let Fault::LandLate = fault {
            return Err(self.land_late(Mutation::Put(put)).await);
        }
        let etag = Self::apply_put(&mut self.lock(), self.host, put, false)?;
        after_apply(
            fault,
            S3Response::new(PutObjectOutput {
                e_tag: Some(ETag::Strong(format!("{etag:016x}"))),
                ..Default::default()
            }),
        )
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let fault = self.enter(&req.input.key, true).await;
        if let Fault::Error(e) = fault {
            return Err(e);
        }
        let input = req.input;
        let keys = vec![input.key];
        if let Fault::LandLate = fault {
            return Err(self.land_late(Mutation::Delete { bucket: input.bucket, keys }).await);
        }
        Self::apply_delete(&mut self.lock(), self.host, &input.bucket, &keys)?;
        after_apply(fault, S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let fault = self.enter("", true).await;
        if let Fault::Error(e) = fault {
            return Err(e);
        }
        let input = req.input;
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        if let Fault::LandLate = fault {
            return Err(self.land_late(Mutation::Delete { bucket: input.bucket, keys }).await);
        }
        Self::apply_delete(&mut self.lock(), self.host, &input.bucket, &keys)?;
        let deleted = keys.into_iter().map(|key| DeletedObject { key: Some(key), ..Default::default() }).collect();
        after_apply(fault, S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), ..Default::default() }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        if let Fault::Error(e) = self.enter("", false).await {
            return Err(e);
        }
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let mut st = self.lock_landed();
        let bucket = Self::bucket(&mut st, &input.bucket)?;
        let after = input.continuation_token.clone().unwrap_or_default();
        let mut contents: Vec<Object_> = bucket
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix) && **k > after)
            .take(max + 1)
            .map(|(k, o)| Object_ { key: Some(k.clone()), size: Some(o.body.len() as i64) })
            .collect();
        let truncated = contents.len() > max;
        contents.truncate(max);
        let next = if truncated { contents.last().and_then(|o| o.key.clone()) } else { None };
        let objects: Vec<s3s::dto::Object> =
            contents.into_iter().map(|o| s3s::dto::Object { key: o.key, size: o.size, ..Default::default() }).collect();
        let output = ListObjectsV2Output {
            key_count: Some(objects.len() as i32),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            contents: Some(objects),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            prefix: input.prefix,
            name: Some(input.bucket),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}

/// A listed object before conversion.
struct Object_ {
    key: Option<String>,
    size: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, body: &'static [u8], if_none_match: bool) -> Mutation {
        Mutation::Put(Put {
            bucket: "b".into(),
            key: key.into(),
            body: Bytes::from_static(body),
            metadata: BTreeMap::new(),
            if_none_match: if_none_match.then_some(ETagCondition::Any),
            if_match: None,
        })
    }

    #[test]
    fn held_mutations_land_when_due_with_their_conditions_checked_then() {
        crate::clock::reset();
        let s3 = MemS3::new(1);
        s3.create_bucket("b");
        let at = Duration::from_secs;
        s3.hold(at(5), put("k", b"second", true));
        s3.hold(at(3), put("k", b"first", false));
        s3.hold(at(7), Mutation::Delete { bucket: "b".into(), keys: vec!["k".into()] });
        crate::clock::now_or(at(2));
        assert!(s3.objects("b").is_empty(), "nothing lands early");
        crate::clock::now_or(at(3));
        assert_eq!(s3.objects("b").get("k").map(|b| &b[..]), Some(&b"first"[..]));
        crate::clock::now_or(at(6));
        assert_eq!(s3.objects("b").get("k").map(|b| &b[..]), Some(&b"first"[..]), "if-none-match refused on landing");
        crate::clock::now_or(at(7));
        assert!(s3.objects("b").is_empty(), "a late delete lands too");
        assert_eq!(s3.landed().len(), 2, "what landed is logged (the refused PUT did not land)");
    }
}
