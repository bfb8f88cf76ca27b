//! [`ObjectStore`] over aws-sdk-s3: AWS S3, MinIO, Ceph RGW and other S3-compatible stores.
//!
//! Compatibility choices: SDK request checksums and response validation only "when required"
//! (unless the standard AWS environment variables say otherwise), because the SDK's default
//! CRC32 on every PUT is refused by older MinIO and others; DeleteObjects carries Content-MD5
//! instead of the SDK's CRC32 header, and falls back to single DELETEs when a store refuses it.
//! The SDK does not retry: [`super::Resilient`] does, inside a budget.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use base64::Engine;
use bytes::Bytes;
use md5::{Digest, Md5};

use super::{
    BoxFuture, Condition, DeleteResults, GetOutput, ListPage, Listed, ObjResult, ObjectError, ObjectMeta, ObjectStore,
};

/// Where and how to reach an S3-compatible service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// A custom endpoint URL (MinIO, Ceph RGW, the embedded server); AWS when absent.
    pub url: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most non-AWS stores need.
    pub path_style: bool,
    /// Static credentials; the default chain (environment, profile, instance metadata) when
    /// absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

pub struct AwsStore {
    client: Client,
    bucket: String,
    /// Set once a store refuses DeleteObjects: single DELETEs from then on.
    single_deletes: AtomicBool,
}

/// Builds an SDK configuration builder for an endpoint (shared with the in-process tests).
pub async fn sdk_config(endpoint: &Endpoint) -> aws_sdk_s3::config::Builder {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &endpoint.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(id), Some(secret)) = (&endpoint.access_key_id, &endpoint.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "rtgt-config"));
    }
    let shared = loader.load().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared).force_path_style(endpoint.path_style);
    if shared.region().is_none() {
        builder = builder.region(Region::new("us-east-1"));
    }
    if let Some(url) = &endpoint.url {
        builder = builder.endpoint_url(url);
    }
    with_policies(builder)
}

/// rtgt's client policies: no SDK retries ([`super::Resilient`] retries and times attempts by
/// their size; the SDK's own attempt timeout is only a backstop far above that),
/// checksums only when required unless the standard environment variables say otherwise.
pub fn with_policies(mut builder: aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder {
    builder = builder.retry_config(RetryConfig::disabled()).timeout_config(
        TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(3))
            .operation_attempt_timeout(Duration::from_secs(120))
            .build(),
    );
    if std::env::var_os("AWS_REQUEST_CHECKSUM_CALCULATION").is_none() {
        builder = builder.request_checksum_calculation(RequestChecksumCalculation::WhenRequired);
    }
    if std::env::var_os("AWS_RESPONSE_CHECKSUM_VALIDATION").is_none() {
        builder = builder.response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    }
    builder
}

impl AwsStore {
    pub async fn connect(endpoint: &Endpoint, bucket: &str) -> AwsStore {
        let client = Client::from_conf(sdk_config(endpoint).await.build());
        AwsStore::with_client(client, bucket)
    }

    pub fn with_client(client: Client, bucket: &str) -> AwsStore {
        AwsStore { client, bucket: bucket.to_string(), single_deletes: AtomicBool::new(false) }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates the bucket if it does not exist.
    pub async fn ensure_bucket(&self) -> ObjResult<()> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.code(), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => Ok(()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn get_impl(&self, key: &str, range: Option<Range<u64>>) -> ObjResult<GetOutput> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(r) = &range {
            req = req.range(format!("bytes={}-{}", r.start, r.end.saturating_sub(1)));
        }
        let out = req.send().await.map_err(classify)?;
        let length = out.content_length().unwrap_or(-1);
        let total = match (out.content_range(), &range) {
            (Some(cr), Some(_)) => cr.rsplit('/').next().and_then(|t| t.parse().ok()).unwrap_or(0),
            _ => length.max(0) as u64,
        };
        let meta = ObjectMeta {
            size: total,
            etag: out.e_tag().map(str::to_string),
            metadata: out.metadata().cloned().unwrap_or_default().into_iter().collect(),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::transient(format!("reading the body of {key}: {e}")))?
            .into_bytes();
        if length >= 0 && body.len() as i64 != length {
            return Err(ObjectError::transient(format!("short body for {key}: {} of {length} bytes", body.len())));
        }
        Ok(GetOutput { body, meta })
    }

    async fn put_impl(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> ObjResult<Option<String>> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .set_metadata(Some(metadata.into_iter().collect()))
            .body(ByteStream::from(body));
        req = match condition {
            Condition::None => req,
            Condition::IfNoneMatch => req.if_none_match("*"),
            Condition::IfMatch(etag) => req.if_match(etag),
        };
        let out = req.send().await.map_err(classify_write)?;
        Ok(out.e_tag().map(str::to_string))
    }

    async fn delete_impl(&self, key: &str) -> ObjResult<()> {
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match classify_write(e) {
                ObjectError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn delete_many_impl(&self, keys: Vec<String>) -> ObjResult<DeleteResults> {
        if !self.single_deletes.load(Ordering::Relaxed) {
            let objects = keys
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build().map_err(|e| ObjectError::failed(e.to_string())))
                .collect::<ObjResult<Vec<_>>>()?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ObjectError::failed(e.to_string()))?;
            let sent = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .customize()
                .interceptor(ContentMd5)
                .send()
                .await;
            match sent {
                Ok(out) => {
                    let failed: BTreeMap<String, String> = out
                        .errors()
                        .iter()
                        .filter_map(|e| Some((e.key()?.to_string(), e.message().unwrap_or("failed").to_string())))
                        .collect();
                    return Ok(keys
                        .into_iter()
                        .map(|k| {
                            let r = match failed.get(&k) {
                                Some(msg) => Err(ObjectError::transient(msg.clone())),
                                None => Ok(()),
                            };
                            (k, r)
                        })
                        .collect());
                }
                Err(e) if matches!(status(&e), Some(400 | 501)) => {
                    tracing::warn!(error = %e, "the store refuses DeleteObjects: deleting one object at a time");
                    self.single_deletes.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(classify_write(e)),
            }
        }
        let results = futures::future::join_all(keys.iter().map(|k| self.delete_impl(k))).await;
        Ok(keys.into_iter().zip(results).collect())
    }

    async fn list_impl(&self, prefix: &str, continuation: Option<String>) -> ObjResult<ListPage> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(classify)?;
        let objects = out
            .contents()
            .iter()
            .filter_map(|o| {
                Some(Listed {
                    key: o.key()?.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                    etag: o.e_tag().map(str::to_string),
                })
            })
            .collect();
        let next =
            if out.is_truncated() == Some(true) { out.next_continuation_token().map(str::to_string) } else { None };
        Ok(ListPage { objects, next })
    }

    async fn head_impl(&self, key: &str) -> ObjResult<ObjectMeta> {
        let out = self.client.head_object().bucket(&self.bucket).key(key).send().await.map_err(classify)?;
        Ok(ObjectMeta {
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: out.e_tag().map(str::to_string),
            metadata: out.metadata().cloned().unwrap_or_default().into_iter().collect(),
        })
    }
}

fn status<E, R: HttpStatus>(e: &SdkError<E, R>) -> Option<u16> {
    e.raw_response().map(HttpStatus::status_code)
}

trait HttpStatus {
    fn status_code(&self) -> u16;
}

impl HttpStatus for aws_smithy_runtime_api::client::orchestrator::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

/// Maps an SDK error of a read-only request.
fn classify<E: std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> ObjectError {
    match classify_write(e) {
        // A read that did not complete had no effect: retrying is safe.
        ObjectError::Indeterminate(m) => ObjectError::transient(m),
        other => other,
    }
}

/// Maps an SDK error of a request that may change state.
fn classify_write<E: std::error::Error + Send + Sync + 'static>(
    e: SdkError<E, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> ObjectError {
    let message = format!("{}", aws_sdk_s3::error::DisplayErrorContext(&e));
    match &e {
        SdkError::ConstructionFailure(_) => ObjectError::failed(message),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ObjectError::Indeterminate(message),
        SdkError::DispatchFailure(d) if d.is_io() && !d.is_timeout() => {
            // Connection refused or reset before a response: the request may have been sent.
            ObjectError::Indeterminate(message)
        }
        SdkError::DispatchFailure(_) => ObjectError::Indeterminate(message),
        _ => match status(&e) {
            Some(404) => ObjectError::NotFound,
            Some(412) | Some(409) => ObjectError::PreconditionFailed,
            Some(416) => ObjectError::RangeNotSatisfiable,
            Some(429) | Some(503) => ObjectError::transient(message),
            // 500 may or may not have been applied.
            Some(s) if s >= 500 => ObjectError::Indeterminate(message),
            _ => ObjectError::failed(message),
        },
    }
}

/// Replaces the SDK's checksum header of DeleteObjects by Content-MD5, which every store
/// accepts (MinIO and s3proxy refuse the CRC32 header there).
#[derive(Debug)]
struct ContentMd5;

impl Intercept for ContentMd5 {
    fn name(&self) -> &'static str {
        "rtgt-content-md5"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request_mut();
        let Some(body) = request.body().bytes() else { return Ok(()) };
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body));
        let headers = request.headers_mut();
        let checksum_headers: Vec<String> = headers
            .iter()
            .map(|(k, _)| k.to_string())
            .filter(|k| k.starts_with("x-amz-checksum-") || k == "x-amz-sdk-checksum-algorithm")
            .collect();
        for h in checksum_headers {
            headers.remove(h);
        }
        headers.insert("content-md5", md5);
        Ok(())
    }
}

impl ObjectStore for AwsStore {
    fn describe(&self) -> String {
        format!("s3 bucket {}", self.bucket)
    }

    fn get(&self, key: &str, range: Option<Range<u64>>) -> BoxFuture<'_, ObjResult<GetOutput>> {
        let key = key.to_string();
        Box::pin(async move { self.get_impl(&key, range).await })
    }

    fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: BTreeMap<String, String>,
        condition: Condition,
    ) -> BoxFuture<'_, ObjResult<Option<String>>> {
        let key = key.to_string();
        Box::pin(async move { self.put_impl(&key, body, metadata, condition).await })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, ObjResult<()>> {
        let key = key.to_string();
        Box::pin(async move { self.delete_impl(&key).await })
    }

    fn delete_many(&self, keys: Vec<String>) -> BoxFuture<'_, ObjResult<DeleteResults>> {
        Box::pin(self.delete_many_impl(keys))
    }

    fn list(&self, prefix: &str, continuation: Option<String>) -> BoxFuture<'_, ObjResult<ListPage>> {
        let prefix = prefix.to_string();
        Box::pin(async move { self.list_impl(&prefix, continuation).await })
    }

    fn head(&self, key: &str) -> BoxFuture<'_, ObjResult<ObjectMeta>> {
        let key = key.to_string();
        Box::pin(async move { self.head_impl(&key).await })
    }
}
