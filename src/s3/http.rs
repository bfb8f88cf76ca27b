//! The local store over the S3 protocol (s3s): what `rtgt s3-server` and the embedded
//! default's HTTP endpoint serve. The subset of S3 the volume and common tools use: buckets,
//! GET (ranges), HEAD, PUT (If-None-Match, If-Match), DELETE, DeleteObjects, ListObjectsV2.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use s3s::dto::*;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};

use super::local::{LocalRoot, LocalStore};
use super::{Condition, Listed, ObjectError, ObjectStore};

/// The S3 service of a local store.
#[derive(Clone)]
pub struct LocalService {
    root: Arc<LocalRoot>,
}

impl LocalService {
    pub fn new(root: Arc<LocalRoot>) -> LocalService {
        LocalService { root }
    }

    fn bucket(&self, name: &str) -> S3Result<LocalStore> {
        self.root.bucket(name).map_err(|_| S3Error::new(S3ErrorCode::NoSuchBucket))
    }
}

fn error(code: S3ErrorCode, status: u16, message: String) -> S3Error {
    let mut e = S3Error::with_message(code, message);
    e.set_status_code(http::StatusCode::from_u16(status).expect("status"));
    e
}

fn s3_error(e: ObjectError) -> S3Error {
    match e {
        ObjectError::NotFound => S3Error::new(S3ErrorCode::NoSuchKey),
        ObjectError::PreconditionFailed => error(S3ErrorCode::PreconditionFailed, 412, "precondition failed".into()),
        e @ ObjectError::InvalidKey { .. } => error(S3ErrorCode::InvalidArgument, 400, e.to_string()),
        e @ ObjectError::RangeNotSatisfiable => error(S3ErrorCode::InvalidRange, 416, e.to_string()),
        other => error(S3ErrorCode::InternalError, 500, other.to_string()),
    }
}

fn etag(value: Option<String>) -> Option<ETag> {
    value.map(|v| ETag::Strong(v.trim_matches('"').to_string()))
}

/// Reads a request body whole (also for the simulation's in-memory S3 service).
pub async fn collect(body: Option<StreamingBlob>) -> S3Result<Bytes> {
    let mut out = Vec::new();
    if let Some(mut body) = body {
        while let Some(chunk) = body.next().await {
            out.extend_from_slice(&chunk.map_err(|_| S3Error::new(S3ErrorCode::IncompleteBody))?);
        }
    }
    Ok(Bytes::from(out))
}

#[async_trait::async_trait]
impl S3 for LocalService {
    async fn list_buckets(&self, _req: S3Request<ListBucketsInput>) -> S3Result<S3Response<ListBucketsOutput>> {
        let buckets =
            self.root.buckets().into_iter().map(|name| Bucket { name: Some(name), ..Default::default() }).collect();
        Ok(S3Response::new(ListBucketsOutput { buckets: Some(buckets), ..Default::default() }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn create_bucket(&self, req: S3Request<CreateBucketInput>) -> S3Result<S3Response<CreateBucketOutput>> {
        self.root.create_bucket(&req.input.bucket).map_err(|m| error(S3ErrorCode::InvalidBucketName, 400, m))?;
        Ok(S3Response::new(CreateBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.bucket(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let store = self.bucket(&input.bucket)?;
        let range = match input.range {
            None => None,
            Some(r) => {
                let size = store.head(&input.key).await.map_err(s3_error)?.size;
                let r = r.check(size).map_err(|_| S3Error::new(S3ErrorCode::InvalidRange))?;
                Some(r)
            }
        };
        let out = store.get(&input.key, range.clone()).await.map_err(s3_error)?;
        let size = out.meta.size;
        let content_range = range.map(|r| format!("bytes {}-{}/{size}", r.start, r.end.saturating_sub(1)));
        Ok(S3Response::new(GetObjectOutput {
            content_length: Some(out.body.len() as i64),
            content_range,
            metadata: Some(out.meta.metadata.into_iter().collect()),
            e_tag: etag(out.meta.etag),
            body: Some(StreamingBlob::from(s3s::Body::from(out.body))),
            ..Default::default()
        }))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let meta = self.bucket(&input.bucket)?.head(&input.key).await.map_err(s3_error)?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(meta.size as i64),
            metadata: Some(meta.metadata.into_iter().collect()),
            e_tag: etag(meta.etag),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let store = self.bucket(&input.bucket)?;
        let condition = match (&input.if_none_match, &input.if_match) {
            (Some(c), _) if c.is_any() => Condition::IfNoneMatch,
            (_, Some(ETagCondition::ETag(e))) => Condition::IfMatch(format!("\"{}\"", e.value())),
            (_, Some(ETagCondition::Any)) => match store.head(&input.key).await {
                Ok(meta) => Condition::IfMatch(meta.etag.unwrap_or_default()),
                Err(_) => return Err(error(S3ErrorCode::PreconditionFailed, 412, "no such object".into())),
            },
            _ => Condition::None,
        };
        let body = collect(input.body).await?;
        let metadata: BTreeMap<String, String> = input.metadata.unwrap_or_default().into_iter().collect();
        let tag = store.put(&input.key, body, metadata, condition).await.map_err(s3_error)?;
        Ok(S3Response::new(PutObjectOutput { e_tag: etag(tag), ..Default::default() }))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.bucket(&input.bucket)?.delete(&input.key).await.map_err(s3_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        let store = self.bucket(&input.bucket)?;
        let keys: Vec<String> = input.delete.objects.into_iter().map(|o| o.key).collect();
        let results = store.delete_many(keys).await.map_err(s3_error)?;
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for (key, r) in results {
            match r {
                Ok(()) => deleted.push(DeletedObject { key: Some(key), ..Default::default() }),
                Err(e) => errors.push(Error {
                    key: Some(key),
                    code: Some("InternalError".into()),
                    message: Some(e.to_string()),
                    ..Default::default()
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let store = self.bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input.max_keys.unwrap_or(1000).clamp(1, 1000) as usize;
        let after = input.continuation_token.clone().or(input.start_after.clone()).unwrap_or_default();
        let all = store.list(&prefix, None).await.map_err(s3_error)?.objects;
        let mut page: Vec<Listed> = all.into_iter().filter(|o| o.key > after).take(max + 1).collect();
        let truncated = page.len() > max;
        page.truncate(max);
        let next = if truncated { page.last().map(|o| o.key.clone()) } else { None };
        let objects: Vec<Object> = page
            .into_iter()
            .map(|o| Object { key: Some(o.key), size: Some(o.size as i64), e_tag: etag(o.etag), ..Default::default() })
            .collect();
        Ok(S3Response::new(ListObjectsV2Output {
            key_count: Some(objects.len() as i32),
            max_keys: Some(max as i32),
            is_truncated: Some(truncated),
            contents: Some(objects),
            continuation_token: input.continuation_token,
            next_continuation_token: next,
            prefix: input.prefix,
            name: Some(input.bucket),
            ..Default::default()
        }))
    }
}
